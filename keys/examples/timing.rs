//! Times the ceremony steps at a given power and shape.
//!
//! `cargo run --release -p keys --example timing -- [power] [T]`

use std::time::Instant;

use circuits::{ModelKind, Shape, Slots};
use keys::lagrange::Prepared;
use keys::phase1::Phase1;
use keys::phase2::Phase2;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let power: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(12);
    let t: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(24);
    let mut rng = rand::rngs::OsRng;
    let mut p1 = Phase1::new(power).unwrap();
    let s = Instant::now();
    p1.contribute("a", b"", &mut rng);
    println!("phase 1 contribution at 2^{power}: {:?}", s.elapsed());
    let s = Instant::now();
    p1.verify().unwrap();
    println!("phase 1 verify: {:?}", s.elapsed());
    let shape = Shape { kind: ModelKind::Deferrable, slots: Slots::new(t).unwrap() };
    let d = keys::phase2::domain_power(shape).unwrap();
    let s = Instant::now();
    let prepared = Prepared::prepare(p1.clone(), &[d]).unwrap();
    println!("prepare the Lagrange bases of 2^{d}: {:?}", s.elapsed());
    let s = Instant::now();
    let mut p2 = Phase2::new(&prepared, shape).unwrap();
    println!("phase 2 new (deferrable T = {t}), prepared: {:?}", s.elapsed());
    let s = Instant::now();
    p2.contribute("b", b"", &mut rng);
    println!("phase 2 contribution: {:?}", s.elapsed());
    let s = Instant::now();
    p2.verify(&prepared).unwrap();
    println!("phase 2 verify, prepared: {:?}", s.elapsed());
}
