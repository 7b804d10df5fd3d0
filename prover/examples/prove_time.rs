//! Mean time of `prover::prove` per model (10 proofs each, after one warm-up that also
//! builds the key's cached R1CS matrices), at T slots.
//!
//! `cargo run --release -p prover --example prove_time -- 24`

use std::time::Instant;

use circuits::{sample, ModelKind, Shape, Slots};
use rand::SeedableRng;

fn main() {
    let t: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(96);
    let slots = Slots::new(t).expect("T between 1 and 288");
    for kind in ModelKind::ALL {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let (pk, _) = prover::setup(Shape { kind, slots }, &mut rng).expect("setup");
        let witness = sample::witness(kind, slots, 1, 1, 0);
        prover::prove(&pk, witness.clone(), &mut rng).expect("prove");
        let start = Instant::now();
        for _ in 0..10 {
            prover::prove(&pk, witness.clone(), &mut rng).expect("prove");
        }
        println!("{kind} T = {t}: {:.1} ms per proof", start.elapsed().as_secs_f64() * 100.0);
    }
}
