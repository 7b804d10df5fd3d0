//! Prints the constraint count of every model's update circuit for T ∈ {24, 96, 288} as the
//! Markdown table kept in `circuits/README.md`.
//!
//! Run: `cargo run --release -p circuits --example constraint_report`

use circuits::statement::constraint_count;
use circuits::{ModelKind, Shape, Slots};

fn main() {
    println!("| model | T | constraints | per slot | public inputs |");
    println!("|---|---:|---:|---:|---:|");
    for kind in ModelKind::ALL {
        for t in [24, 96, 288] {
            let shape = Shape { kind, slots: Slots::new(t).expect("valid T") };
            match constraint_count(shape) {
                Ok(n) => println!("| {kind} | {t} | {n} | {:.1} | {} |", n as f64 / t as f64, shape.num_public_inputs()),
                Err(e) => {
                    eprintln!("error: synthesising {kind} T = {t}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}
