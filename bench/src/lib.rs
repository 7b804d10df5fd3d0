//! `bench`: the benchmarks behind BENCHMARKS.md. Criterion benches live in `benches/`; this
//! library holds the fixtures they share.
#![warn(missing_docs)]

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
    let distinct: Vec<_> = (0..n.min(16))
        .map(|i| prove(pk, sample::witness(shape.kind, shape.slots, 1, i as u32, i as u16), &mut r).expect("prove"))
        .collect();
    (0..n).map(|i| distinct[i % distinct.len()].clone()).collect()
}

/// Starts `keys.len()` validators in this process (QUIC on 127.0.0.1 from `port`, HTTP from
/// `port + 100`, RocksDB under `dir`), all on `genesis`, with the verifying keys in
/// `dir/keys`.
pub async fn cluster(dir: &std::path::Path, genesis: &protocol::entry::Entry, keys: &[ed25519_dalek::SigningKey], port: u16) -> Vec<verifier_node::host::Running> {
    use verifier_node::config::{Config, NodeFile, PeerFile};
    let protocol::entry::Body::Genesis(g) = &genesis.body else { panic!("not a genesis entry") };
    let vks = verifier_node::config::read_verifying_keys(&dir.join("keys"), &g.verifying_keys).expect("verifying keys");
    let addr = |p: u16| -> std::net::SocketAddr { std::net::SocketAddr::from(([127, 0, 0, 1], p)) };
    let n = keys.len() as u16;
    let mut running = vec![];
    for i in 0..n {
        let file = NodeFile {
            index: i,
            key_file: "unused".into(),
            genesis_file: "unused".into(),
            keys_dir: dir.join("keys"),
            db: dir.join(format!("db{i}")),
            listen: addr(port + i),
            http: addr(port + 100 + i),
            peers: (0..n).filter(|&j| j != i).map(|j| PeerFile { index: j, addr: addr(port + j) }).collect(),
        };
        let cfg = Config { file, key: keys[i as usize].clone(), genesis: genesis.clone(), keys: vks.clone() };
        running.push(verifier_node::host::start(cfg).await.expect("validator starts"));
    }
    running
}
