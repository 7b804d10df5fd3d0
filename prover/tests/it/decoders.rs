//! Fuzz-style: random and mutated bytes never panic a decoder; whatever decodes re-encodes to
//! the same bytes (canonical), and a mutated proof never verifies.

use std::sync::OnceLock;

use circuits::{sample, Fr, ModelKind, Shape, Slots};
use proptest::prelude::*;
use prover::format::{decode_proof, decode_public_inputs, encode_proof, encode_public_inputs};
use prover::{prove, setup, snarkjs, verify, UpdateProof, UpdateProvingKey, UpdateVerifyingKey};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

struct Fixture {
    pk_bytes: Vec<u8>,
    vk: UpdateVerifyingKey,
    vk_bytes: Vec<u8>,
    proof: UpdateProof,
    inputs: Vec<Fr>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let slots = Slots::new(2).unwrap();
        let (pk, vk) = setup(Shape { kind: ModelKind::Battery, slots }, &mut rng).unwrap();
        let (proof, inputs) = prove(&pk, sample::witness(ModelKind::Battery, slots, 1, 1, 0), &mut rng).unwrap();
        Fixture { pk_bytes: pk.to_bytes(), vk_bytes: vk.to_bytes(), vk, proof, inputs }
    })
}

fn mutate(bytes: &[u8], at: prop::sample::Index, xor: u8, cut: Option<prop::sample::Index>) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let i = at.index(b.len());
    b[i] ^= xor.max(1);
    if let Some(c) = cut {
        b.truncate(c.index(b.len()));
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = decode_proof(&bytes) {
            prop_assert_eq!(encode_proof(&p).to_vec(), bytes.clone());
        }
        if let Ok(v) = decode_public_inputs(&bytes, bytes.len() / 32) {
            prop_assert_eq!(encode_public_inputs(&v), bytes.clone());
        }
        let _ = UpdateVerifyingKey::from_bytes(&bytes, None);
        let _ = UpdateProvingKey::from_bytes(&bytes, None);
        if let Ok(s) = std::str::from_utf8(&bytes) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(s) {
                let _ = snarkjs::import_proof(&v);
                let _ = snarkjs::import_verifying_key(&v);
                let _ = snarkjs::import_public_inputs(&v);
            }
        }
    }

    #[test]
    fn mutated_proofs_are_rejected_or_fail_to_verify(at in any::<prop::sample::Index>(), xor in any::<u8>(), cut in proptest::option::of(any::<prop::sample::Index>())) {
        let f = fixture();
        let bytes = mutate(&encode_proof(&f.proof), at, xor, cut);
        if let Ok(p) = decode_proof(&bytes) {
            prop_assert_eq!(encode_proof(&p).to_vec(), bytes);
            prop_assert!(verify(&f.vk, &f.inputs, &p).is_err());
        }
    }

    #[test]
    fn mutated_key_files_are_rejected(at in any::<prop::sample::Index>(), xor in any::<u8>(), cut in proptest::option::of(any::<prop::sample::Index>())) {
        let f = fixture();
        prop_assert!(UpdateVerifyingKey::from_bytes(&mutate(&f.vk_bytes, at, xor, cut), None).is_err());
    }

    #[test]
    fn mutated_public_inputs_never_panic(at in any::<prop::sample::Index>(), xor in any::<u8>()) {
        let f = fixture();
        let bytes = mutate(&encode_public_inputs(&f.inputs), at, xor, None);
        if let Ok(v) = decode_public_inputs(&bytes, f.inputs.len()) {
            prop_assert!(verify(&f.vk, &v, &f.proof).is_err());
        }
    }
}

#[test]
fn mutated_proving_key_files_are_rejected() {
    let f = fixture();
    for at in [0, 9, 15, 20, 40, 70, f.pk_bytes.len() / 2, f.pk_bytes.len() - 1] {
        let mut b = f.pk_bytes.clone();
        b[at] ^= 0x40;
        assert!(UpdateProvingKey::from_bytes(&b, None).is_err(), "byte {at}");
    }
    assert!(UpdateProvingKey::from_bytes(&f.pk_bytes, None).is_ok());
}

#[test]
fn snarkjs_json_round_trips_and_rejects_bad_numbers() {
    let f = fixture();
    let vk = snarkjs::export_verifying_key(f.vk.inner());
    assert_eq!(&snarkjs::import_verifying_key(&vk).unwrap(), f.vk.inner());
    let proof = snarkjs::export_proof(&f.proof);
    assert_eq!(snarkjs::import_proof(&proof).unwrap(), f.proof);
    let public = snarkjs::export_public_inputs(&f.inputs);
    assert_eq!(snarkjs::import_public_inputs(&public).unwrap(), f.inputs);

    // r itself is not a canonical scalar; r − 1 is.
    let r = "21888242871839275222246405745257275088548364400416034343698204186575808495617";
    let r_minus_1 = "21888242871839275222246405745257275088548364400416034343698204186575808495616";
    assert!(snarkjs::import_public_inputs(&serde_json::json!([r_minus_1])).is_ok());
    assert!(matches!(snarkjs::import_public_inputs(&serde_json::json!([r])), Err(prover::FormatError::NonCanonicalField { .. })));
    assert!(snarkjs::import_public_inputs(&serde_json::json!(["01"])).is_err());
    assert!(snarkjs::import_public_inputs(&serde_json::json!([1])).is_err());
    let mut off_curve = proof.clone();
    off_curve["pi_a"][1] = serde_json::json!("5");
    assert!(matches!(snarkjs::import_proof(&off_curve), Err(prover::FormatError::InvalidPoint { .. })));
}
