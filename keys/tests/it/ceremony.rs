//! A three-party phase 1 and three-party phase 2 produce keys with which proofs verify; the
//! transcripts verify from scratch; tampering is caught and names the contribution.

use std::sync::OnceLock;

use ark_bn254::{G1Affine, G1Projective};
use ark_ec::{AffineRepr, CurveGroup};
use circuits::{sample, ModelKind, Shape, Slots};
use keys::files;
use keys::phase1::{Phase1, Phase1Error};
use keys::phase2::{Phase2, Phase2Error};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const POWER: u32 = 11;

/// T = 8, except the thermal circuit at T = 4, so every domain fits 2^11 powers (the
/// ceremony's maths does not depend on T; the prover tests cover T = 96).
fn shape(kind: ModelKind) -> Shape {
    let t = if kind == ModelKind::Thermal { 4 } else { 8 };
    Shape { kind, slots: Slots::new(t).unwrap() }
}

/// Phase 1 with three contributors and a beacon.
fn phase1() -> &'static Phase1 {
    static P: OnceLock<Phase1> = OnceLock::new();
    P.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut p = Phase1::new(POWER).unwrap();
        for name in ["alice", "bob", "carol"] {
            p.contribute(name, name.as_bytes(), &mut rng);
        }
        p.beacon([42; 32], 4);
        p
    })
}

/// Phase 2 for the deferrable T = 24 circuit with three contributors and a beacon.
fn phase2() -> &'static Phase2 {
    static P: OnceLock<Phase2> = OnceLock::new();
    P.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut p = Phase2::new(&phase1().accumulator, shape(ModelKind::Deferrable)).unwrap();
        for name in ["dave", "erin", "frank"] {
            p.contribute(name, b"", &mut rng);
        }
        p.beacon([7; 32], 4);
        p
    })
}

#[test]
fn ceremony_keys_prove_and_verify_for_every_model() {
    let p1 = phase1();
    p1.verify().unwrap();
    let p2 = phase2();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (pk, vk) = p2.export(&p1.accumulator).unwrap(); // export verifies the transcript first
    assert_eq!(vk.setup(), prover::SetupKind::Ceremony);
    let w = sample::witness(ModelKind::Deferrable, shape(ModelKind::Deferrable).slots, 1, 1, 0);
    let (proof, inputs) = prover::prove(&pk, w, &mut rng).unwrap();
    prover::verify(&vk, &inputs, &proof).unwrap();
    // A tampered statement still fails under ceremony keys.
    let mut bad = inputs.clone();
    bad[1] += circuits::Fr::from(1u64);
    assert!(prover::verify(&vk, &bad, &proof).is_err());

    // The other models, three contributors each.
    for kind in [ModelKind::Battery, ModelKind::Producer, ModelKind::Thermal] {
        let mut p = Phase2::new(&p1.accumulator, shape(kind)).unwrap();
        for name in ["dave", "erin", "frank"] {
            p.contribute(name, b"", &mut rng);
        }
        let (pk, vk) = p.export(&p1.accumulator).unwrap();
        let w = sample::witness(kind, shape(kind).slots, 1, 1, 0);
        let (proof, inputs) = prover::prove(&pk, w, &mut rng).unwrap();
        prover::verify(&vk, &inputs, &proof).unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

#[test]
fn transcripts_round_trip_through_files_and_verify_from_scratch() {
    let dir = std::env::temp_dir().join(format!("gridproof-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (f1, f2) = (dir.join("pot.ptau"), dir.join("deferrable-8.ph2"));
    files::save_phase1(&f1, phase1()).unwrap();
    files::save_phase2(&f2, phase2()).unwrap();
    let p1 = files::load_phase1(&f1).unwrap();
    let p2 = files::load_phase2(&f2).unwrap();
    assert_eq!(&p1, phase1());
    p1.verify().unwrap();
    p2.verify(&p1.accumulator).unwrap();
    // Truncated files are refused with the path in the message.
    let bytes = std::fs::read(&f2).unwrap();
    let e = files::phase2_from_bytes(&f2, &bytes[..bytes.len() / 2]).unwrap_err().to_string();
    assert!(e.contains("deferrable-8.ph2"), "{e}");
    assert!(files::phase1_from_bytes(&f1, &bytes).is_err(), "a phase-2 file is not a phase-1 file");
    std::fs::remove_dir_all(&dir).ok();
}

fn shifted(p: G1Affine) -> G1Affine {
    (p.into_group() + G1Projective::from(G1Affine::generator())).into_affine()
}

#[test]
fn phase1_tampering_names_the_contribution() {
    let good = phase1().clone();
    // A tampered point in contribution 1's record.
    let mut t = good.clone();
    t.contributions[1].tau_g1 = shifted(t.contributions[1].tau_g1);
    assert!(matches!(t.verify(), Err(Phase1Error::Contribution { index: 1, .. })), "{:?}", t.verify());
    // A contribution skipped.
    let mut t = good.clone();
    t.contributions.remove(1);
    assert!(matches!(t.verify(), Err(Phase1Error::Contribution { index: 1, .. })));
    // Two contributions re-ordered.
    let mut t = good.clone();
    t.contributions.swap(0, 1);
    assert!(matches!(t.verify(), Err(Phase1Error::Contribution { index: 0, .. })));
    // A tampered power in the accumulator.
    let mut t = good.clone();
    t.accumulator.tau_g1[100] = shifted(t.accumulator.tau_g1[100]);
    assert!(matches!(t.verify(), Err(Phase1Error::Accumulator(_))));
    let mut t = good.clone();
    t.accumulator.alpha_tau_g1[7] = shifted(t.accumulator.alpha_tau_g1[7]);
    assert!(matches!(t.verify(), Err(Phase1Error::Accumulator(_))));
    // A forged proof of knowledge.
    let mut t = good;
    t.contributions[2].pok_beta.s_x = shifted(t.contributions[2].pok_beta.s_x);
    assert!(matches!(t.verify(), Err(Phase1Error::Contribution { index: 2, .. })));
}

#[test]
fn phase2_tampering_names_the_contribution() {
    let acc = &phase1().accumulator;
    let good = phase2().clone();
    let mut t = good.clone();
    t.contributions[1].delta_g1 = shifted(t.contributions[1].delta_g1);
    assert!(matches!(t.verify(acc), Err(Phase2Error::Contribution { index: 1, .. })));
    let mut t = good.clone();
    t.contributions.remove(0);
    assert!(matches!(t.verify(acc), Err(Phase2Error::Contribution { index: 0, .. })));
    let mut t = good.clone();
    t.key.l_query[5] = shifted(t.key.l_query[5]);
    assert!(matches!(t.verify(acc), Err(Phase2Error::Key(_))));
    let mut t = good.clone();
    t.key.a_query[3] = shifted(t.key.a_query[3]);
    assert!(matches!(t.verify(acc), Err(Phase2Error::Key(_))));
    // A transcript for another circuit or T.
    let mut t = good.clone();
    t.kind = ModelKind::Producer.id();
    assert!(t.verify(acc).is_err());
    let mut t = good;
    t.slots = 9;
    assert!(t.verify(acc).is_err());
}
