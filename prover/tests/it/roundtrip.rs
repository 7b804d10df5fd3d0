//! Every model proves and verifies; proofs are bound to their context, commitment and key.

use circuits::{commitment, public_inputs, sample, Context, ModelKind, Shape, Slots};
use prover::{prove, setup, verify, ProveError, UpdateProvingKey, UpdateVerifyingKey, VerifyError};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn shape(kind: ModelKind, t: usize) -> Shape {
    Shape { kind, slots: Slots::new(t).unwrap() }
}

#[test]
fn every_model_proves_and_verifies_at_t24_and_t96() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for t in [24, 96] {
        for kind in ModelKind::ALL {
            let (pk, vk) = setup(shape(kind, t), &mut rng).unwrap();
            let w = sample::witness(kind, Slots::new(t).unwrap(), 42, 5, 3);
            let (proof, inputs) = prove(&pk, w.clone(), &mut rng).unwrap();
            assert_eq!(inputs, w.validate().unwrap());
            verify(&vk, &inputs, &proof).unwrap_or_else(|e| panic!("{kind} T = {t}: {e}"));

            // Through the wire formats and back.
            let bytes = prover::format::encode_proof(&proof);
            assert_eq!(bytes.len(), 128);
            let proof2 = prover::format::decode_proof(&bytes).unwrap();
            let vk2 = UpdateVerifyingKey::from_bytes(&vk.to_bytes(), Some(vk.shape())).unwrap();
            verify(&vk2, &inputs, &proof2).unwrap();

            // A re-randomized proof is new and verifies for the same statement only.
            let fresh = prover::rerandomize(&vk, &proof, &mut rng);
            assert_ne!(prover::format::encode_proof(&fresh), bytes);
            verify(&vk, &inputs, &fresh).unwrap();
            let mut other = inputs.clone();
            other[1] += circuits::Fr::from(1u64);
            assert_eq!(verify(&vk, &other, &fresh), Err(VerifyError::Invalid));
            if t == 24 {
                let pk2 = UpdateProvingKey::from_bytes(&pk.to_bytes(), Some(pk.shape())).unwrap();
                let (p3, i3) = prove(&pk2, w, &mut rng).unwrap();
                verify(&vk, &i3, &p3).unwrap();
            }
        }
    }
}

#[test]
fn proofs_are_bound_to_context_commitment_and_key() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let slots = Slots::new(24).unwrap();
    let (pk, vk) = setup(shape(ModelKind::Deferrable, 24), &mut rng).unwrap();
    let (_, battery_vk) = setup(shape(ModelKind::Battery, 24), &mut rng).unwrap();
    let w = sample::witness(ModelKind::Deferrable, slots, 42, 5, 0);
    let (proof, inputs) = prove(&pk, w.clone(), &mut rng).unwrap();
    verify(&vk, &inputs, &proof).unwrap();

    // Another iteration, another market.
    for ctx in [Context { iteration: 6, ..w.context }, Context { market_id: 43, ..w.context }] {
        let other = public_inputs(commitment(&w.opening), &ctx, &w.limits, &w.schedule).unwrap();
        assert_eq!(verify(&vk, &other, &proof), Err(VerifyError::Invalid));
    }
    // Another commitment (another salt).
    let mut opening = w.opening.clone();
    opening.salt += circuits::Fr::from(1u64);
    let other = public_inputs(commitment(&opening), &w.context, &w.limits, &w.schedule).unwrap();
    assert_eq!(verify(&vk, &other, &proof), Err(VerifyError::Invalid));
    // Another schedule.
    let mut x = w.schedule.clone();
    x[3] += 1;
    let other = public_inputs(commitment(&w.opening), &w.context, &w.limits, &x).unwrap();
    assert_eq!(verify(&vk, &other, &proof), Err(VerifyError::Invalid));
    // Another nameplate (a prover claiming more than was attested).
    let mut limits = w.limits;
    limits.import_w += 1;
    let other = public_inputs(commitment(&w.opening), &w.context, &limits, &w.schedule).unwrap();
    assert_eq!(verify(&vk, &other, &proof), Err(VerifyError::Invalid));
    // Another model's key of the same T takes the same number of inputs, and rejects.
    assert_eq!(verify(&battery_vk, &inputs, &proof), Err(VerifyError::Invalid));
    // Wrong input count.
    assert_eq!(verify(&vk, &inputs[1..], &proof), Err(VerifyError::InputCount { expected: 7, got: 6 }));
}

#[test]
fn prove_refuses_wrong_key_and_invalid_witness() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let slots = Slots::new(24).unwrap();
    let (pk, _) = setup(shape(ModelKind::Producer, 24), &mut rng).unwrap();
    let w = sample::witness(ModelKind::Deferrable, slots, 1, 1, 0);
    assert!(matches!(prove(&pk, w, &mut rng), Err(ProveError::WrongCircuit { .. })));
    let mut w = sample::witness(ModelKind::Producer, slots, 1, 1, 0);
    w.schedule[0] = 1; // a producer never consumes
    let e = prove(&pk, w, &mut rng).unwrap_err();
    assert!(matches!(e, ProveError::Statement(_)), "{e}");
    assert!(e.to_string().contains("PowerMax"), "{e}");
}

#[test]
fn key_files_are_checked() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (pk, vk) = setup(shape(ModelKind::Thermal, 24), &mut rng).unwrap();
    assert_eq!(vk.setup(), prover::SetupKind::Development);
    let bytes = vk.to_bytes();
    let other = Some(shape(ModelKind::Thermal, 96));
    assert!(matches!(UpdateVerifyingKey::from_bytes(&bytes, other), Err(prover::FormatError::WrongCircuit { .. })));
    // A proving key file is not a verifying key file.
    assert!(matches!(UpdateVerifyingKey::from_bytes(&pk.to_bytes(), None), Err(prover::FormatError::WrongCircuit { .. })));
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(matches!(UpdateVerifyingKey::from_bytes(&flipped, None), Err(prover::FormatError::HashMismatch { .. })));
    assert!(matches!(UpdateVerifyingKey::from_bytes(&bytes[..100], None), Err(prover::FormatError::Truncated { .. })));
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert!(matches!(UpdateVerifyingKey::from_bytes(&magic, None), Err(prover::FormatError::BadMagic { .. })));
    // Header fields are covered by the digest: a development key cannot be relabelled as a
    // ceremony key, nor a thermal key as a battery key with the same input count.
    for (at, value) in [(18usize, 0u8), (15, 2)] {
        let mut relabelled = bytes.clone();
        relabelled[at] = value;
        assert!(matches!(UpdateVerifyingKey::from_bytes(&relabelled, None), Err(prover::FormatError::HashMismatch { .. })), "byte {at}");
    }
    let mut version = bytes;
    version[8] = 9;
    assert!(matches!(UpdateVerifyingKey::from_bytes(&version, None), Err(prover::FormatError::UnsupportedVersion { found: 9, .. })));
}
