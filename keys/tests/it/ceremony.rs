//! A three-party phase 1 and three-party phase 2 produce keys with which proofs verify; the
//! transcripts verify from scratch; tampering is caught and names the contribution.

use std::sync::OnceLock;

use ark_bn254::{G1Affine, G1Projective};
use ark_ec::{AffineRepr, CurveGroup};
use circuits::{sample, ModelKind, Shape, Slots};
use keys::files;
use keys::lagrange::{LagrangeBases, LagrangeError, Prepared};
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

/// [`phase1`] as phase 2 reads it, without prepared Lagrange bases.
fn powers() -> &'static Prepared {
    static P: OnceLock<Prepared> = OnceLock::new();
    P.get_or_init(|| Prepared::unprepared(phase1().clone()))
}

/// Phase 2 for the deferrable T = 24 circuit with three contributors and a beacon.
fn phase2() -> &'static Phase2 {
    static P: OnceLock<Phase2> = OnceLock::new();
    P.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut p = Phase2::new(powers(), shape(ModelKind::Deferrable)).unwrap();
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
    let (pk, vk) = p2.export(powers()).unwrap(); // export verifies the transcript first
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
        let mut p = Phase2::new(powers(), shape(kind)).unwrap();
        for name in ["dave", "erin", "frank"] {
            p.contribute(name, b"", &mut rng);
        }
        let (pk, vk) = p.export(powers()).unwrap();
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
    p2.verify(&Prepared::unprepared(p1)).unwrap();
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
    let acc = powers();
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

/// Prepared bases are the Lagrange basis of the powers (Σ_j L_j(τ) = 1 and Σ_j ω^j L_j(τ) = τ
/// in the exponent), keys from them prove, and a prepared file whose bases were altered, cut
/// or duplicated is refused when read, naming the domain and the vector.
#[test]
fn prepared_lagrange_bases_are_checked_and_give_working_keys() {
    use ark_poly::{EvaluationDomain, Radix2EvaluationDomain};
    // A transcript of its own, so no process-wide cache of the unprepared path answers.
    let mut p1 = Phase1::new(POWER).unwrap();
    p1.contribute("gina", b"", &mut ChaCha20Rng::seed_from_u64(9));
    let acc = p1.accumulator.clone();
    let prepared = Prepared::prepare(p1.clone(), &[]).unwrap();
    assert_eq!(prepared.powers(), (1..=POWER).collect::<Vec<_>>(), "every domain size by default");
    for l in prepared.sets() {
        let d = Radix2EvaluationDomain::<circuits::Fr>::new(l.size()).unwrap();
        let sum: G1Projective = l.tau_g1.iter().map(|p| p.into_group()).sum();
        assert_eq!(sum.into_affine(), G1Affine::generator(), "2^{}: the bases sum to [1]", l.power);
        let tau: G1Projective = l.tau_g1.iter().zip(d.elements()).map(|(p, w)| *p * w).sum();
        assert_eq!(tau.into_affine(), acc.tau_g1[1], "2^{}: sum of w^j L_j is [tau]", l.power);
    }

    // Keys from the prepared file prove; the transcript verifies against the file.
    let dir = std::env::temp_dir().join(format!("gridproof-keys-prep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("pot.prep");
    files::save_prepared(&f, &prepared).unwrap();
    let read = files::load_any_phase1(&f).unwrap();
    assert_eq!(read.powers(), prepared.powers());
    assert_eq!(read.phase1(), &p1);
    let kind = ModelKind::Battery;
    let mut p2 = Phase2::new(&read, shape(kind)).unwrap();
    p2.contribute("hank", b"", &mut ChaCha20Rng::seed_from_u64(10));
    let (pk, vk) = p2.export(&read).unwrap();
    let (proof, inputs) = prover::prove(&pk, sample::witness(kind, shape(kind).slots, 1, 1, 0), &mut ChaCha20Rng::seed_from_u64(11)).unwrap();
    prover::verify(&vk, &inputs, &proof).unwrap();

    // Altered sets are refused.
    let sets: Vec<LagrangeBases> = prepared.sets().cloned().collect();
    let with = |f: &dyn Fn(&mut Vec<LagrangeBases>)| {
        let mut s = sets.clone();
        f(&mut s);
        Prepared::from_parts(p1.clone(), s).unwrap_err()
    };
    let e = with(&|s| s[5].alpha_tau_g1[3] = shifted(s[5].alpha_tau_g1[3]));
    assert_eq!(e, LagrangeError::Mismatch { power: 6, what: "[alpha L_j(tau)]1" });
    let e = with(&|s| s[9].tau_g1.swap(0, 1));
    assert_eq!(e, LagrangeError::Mismatch { power: 10, what: "[L_j(tau)]1" });
    let e = with(&|s| s[2].tau_g2.swap(2, 3));
    assert_eq!(e, LagrangeError::Mismatch { power: 3, what: "[L_j(tau)]2" });
    let e = with(&|s| {
        s[4].beta_tau_g1.pop();
    });
    assert!(matches!(e, LagrangeError::Length { power: 5, what: "[beta L_j(tau)]1", len: 31, expected: 32 }), "{e}");
    let e = with(&|s| s.push(s[0].clone()));
    assert_eq!(e, LagrangeError::Duplicate(1));
    // Bases of another accumulator.
    let other = Prepared::prepare(phase1().clone(), &[4]).unwrap();
    let e = Prepared::from_parts(p1.clone(), other.sets().cloned().collect()).unwrap_err();
    assert!(matches!(e, LagrangeError::Mismatch { power: 4, .. }), "{e}");
    // The same, through a file: refused when read, with the path.
    let bad = Prepared::prepare(p1.clone(), &[4]).unwrap();
    let mut bytes = files::prepared_bytes(&bad);
    assert!(files::any_phase1_from_bytes(&f, &bytes).is_ok());
    // The last [beta L_j]1 point (before the G2 vector's 8-byte length and 16 points) becomes
    // a copy of the one before it: a valid point in the wrong place.
    let last_g1 = bytes.len() - 16 * 64 - 8 - 32;
    let before = bytes[last_g1 - 32..last_g1].to_vec();
    bytes[last_g1..last_g1 + 32].copy_from_slice(&before);
    let e = files::any_phase1_from_bytes(&f, &bytes).unwrap_err().to_string();
    assert!(e.contains("pot.prep") && e.contains("2^4") && e.contains("beta"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
