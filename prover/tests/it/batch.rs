//! Batch verification agrees with single verification on mixes of valid and invalid proofs
//! and names exactly the invalid ones.

use std::sync::OnceLock;

use circuits::{commitment, public_inputs, sample, Context, Fr, ModelKind, Shape, Slots};
use proptest::prelude::*;
use prover::{batch_verify, prove, setup, verify, BatchItem, UpdateProof, UpdateVerifyingKey};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

struct Pool {
    vk: UpdateVerifyingKey,
    proofs: Vec<(UpdateProof, Vec<Fr>)>,
}

/// Eight valid proofs (different schedules) under one T = 24 deferrable key.
fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let slots = Slots::new(24).unwrap();
        let (pk, vk) = setup(Shape { kind: ModelKind::Deferrable, slots }, &mut rng).unwrap();
        let proofs = (0..8).map(|v| prove(&pk, sample::witness(ModelKind::Deferrable, slots, 9, 2, v), &mut rng).unwrap()).collect();
        Pool { vk, proofs }
    })
}

/// How an item is made invalid.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    /// The public inputs of another iteration.
    OtherIteration,
    /// Another item's proof.
    SwappedProof,
    /// A tampered schedule limb.
    TamperedLimb,
    /// One input too few.
    ShortInputs,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        6 => Just(Fault::None),
        1 => Just(Fault::OtherIteration),
        1 => Just(Fault::SwappedProof),
        1 => Just(Fault::TamperedLimb),
        1 => Just(Fault::ShortInputs),
    ]
}

fn make_items(spec: &[(usize, Fault)]) -> Vec<(UpdateProof, Vec<Fr>)> {
    let p = pool();
    spec.iter()
        .map(|&(k, fault)| {
            let (proof, inputs) = p.proofs[k % p.proofs.len()].clone();
            match fault {
                Fault::None => (proof, inputs),
                Fault::OtherIteration => {
                    let w = sample::witness(ModelKind::Deferrable, Slots::new(24).unwrap(), 9, 2, (k % 8) as u16);
                    let ctx = Context { iteration: 3, ..w.context };
                    (proof, public_inputs(commitment(&w.opening), &ctx, &w.limits, &w.schedule).unwrap())
                }
                Fault::SwappedProof => (p.proofs[(k + 1) % p.proofs.len()].0.clone(), inputs),
                Fault::TamperedLimb => {
                    let mut i = inputs;
                    i[2] += Fr::from(1u64);
                    (proof, i)
                }
                Fault::ShortInputs => (proof, inputs[..inputs.len() - 1].to_vec()),
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn batch_reports_exactly_the_invalid_items(spec in proptest::collection::vec((0usize..8, fault()), 1..24), seed in any::<u64>()) {
        let items = make_items(&spec);
        let batch: Vec<BatchItem> = items.iter().map(|(p, i)| BatchItem { public_inputs: i, proof: p }).collect();
        let report = batch_verify(&pool().vk, &batch, &mut ChaCha20Rng::seed_from_u64(seed));
        let single: Vec<usize> = items.iter().enumerate()
            .filter(|(_, (p, i))| verify(&pool().vk, i, p).is_err())
            .map(|(k, _)| k)
            .collect();
        let faulty: Vec<usize> = spec.iter().enumerate().filter(|(_, (_, f))| !matches!(f, Fault::None)).map(|(k, _)| k).collect();
        prop_assert_eq!(&single, &faulty);
        prop_assert_eq!(&report.invalid, &single);
    }
}

#[test]
fn all_valid_batch_takes_one_check_and_one_bad_proof_takes_few() {
    let n = 64;
    let spec: Vec<(usize, Fault)> = (0..n).map(|k| (k, Fault::None)).collect();
    let items = make_items(&spec);
    let batch: Vec<BatchItem> = items.iter().map(|(p, i)| BatchItem { public_inputs: i, proof: p }).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let report = batch_verify(&pool().vk, &batch, &mut rng);
    assert!(report.all_valid());
    assert_eq!(report.checks, 1);

    let mut spec = spec;
    spec[37].1 = Fault::TamperedLimb;
    let items = make_items(&spec);
    let batch: Vec<BatchItem> = items.iter().map(|(p, i)| BatchItem { public_inputs: i, proof: p }).collect();
    let report = batch_verify(&pool().vk, &batch, &mut rng);
    assert_eq!(report.invalid, vec![37]);
    // Bisection: about 2 checks per level over log2(64) = 6 levels, far fewer than 64.
    assert!(report.checks <= 2 * 6 + 1, "{} checks", report.checks);
}

#[test]
fn empty_batch_is_valid() {
    let report = batch_verify(&pool().vk, &[], &mut ChaCha20Rng::seed_from_u64(0));
    assert!(report.all_valid());
    assert_eq!(report.checks, 0);
}
