//! `bench`: the benchmarks behind BENCHMARKS.md. Criterion benches live in `benches/`; this
//! library holds the fixtures they share, the end-to-end scaling scenario ([`scale`]) and the
//! generator of BENCHMARKS.md's tables ([`tables`]); `src/main.rs` is the `bench` binary.
#![warn(missing_docs)]

pub mod scale;
pub mod tables;

use circuits::{sample, Fr, ModelKind, Shape, Slots};
use prover::{prove, setup, UpdateProof, UpdateProvingKey, UpdateVerifyingKey};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// A deterministic RNG for fixtures (benchmarks only; never for keys in production).
pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Development keys for `kind` at `t` slots.
pub fn keys(kind: ModelKind, t: usize) -> (UpdateProvingKey, UpdateVerifyingKey) {
    setup(Shape { kind, slots: Slots::new(t).expect("valid T") }, &mut rng(t as u64)).expect("setup")
}

/// `n` valid proofs under `pk`, from distinct sample schedules and iterations.
pub fn proofs(pk: &UpdateProvingKey, n: usize) -> Vec<(UpdateProof, Vec<Fr>)> {
    let shape = pk.shape();
    let mut r = rng(99);
    // Proving dominates fixture time: make at most 16 distinct proofs and repeat them.
    let distinct: Vec<_> = (0..n.min(16)).map(|i| prove(pk, sample::witness(shape.kind, shape.slots, 1, i as u32, i as u16), &mut r).expect("prove")).collect();
    (0..n).map(|i| distinct[i % distinct.len()].clone()).collect()
}

/// A `gateway.toml` with one EV (Deferrable, 7.4 kW, 20–40 kWh, plugged in during
/// `windows`) on `validators` local validators whose QUIC ports start at `port`; key, state,
/// genesis and keys directory relative to the file (`gw.key`, `gw-state.json`,
/// `genesis.bin`, `keys/`).
pub fn gateway_toml(validators: u16, port: u16, windows: &str) -> String {
    let validators: String = (0..validators).map(|i| format!("[[validators]]\nindex = {i}\naddr = \"127.0.0.1:{}\"\n\n", port + i)).collect();
    format!(
        "key_file = \"gw.key\"\nstate_file = \"gw-state.json\"\ngenesis_file = \"genesis.bin\"\nkeys_dir = \"keys\"\n\n{validators}\
         [[appliances]]\nname = \"ev\"\n[appliances.spec]\nmodel = \"deferrable\"\nmax_power_kw = 7.4\nenergy_min_kwh = 20.0\nenergy_max_kwh = 40.0\nwindows = {windows}\n"
    )
}

/// The enrollment authority of the benchmarks' markets (it attests every benchmark device).
pub fn authority() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[170; 32])
}
