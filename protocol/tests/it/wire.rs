//! Wire and log types: round trips, hostile bytes, signatures, certificates, the light client,
//! and a golden hash that pins the whole pipeline's output.

use circuits::fixed::Fixed;
use circuits::{Fr, Slots};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use protocol::admm::AdmmParams;
use protocol::codec::{decode, encode, CodecError, FieldElement, MAX_MESSAGE_BYTES};
use protocol::entry::*;
use protocol::ids::{DeviceId, ValidatorId};
use protocol::market::{SignedMarketOpen, SignedWithdrawal, Withdrawal};
use protocol::membership::SignedRevocation;
use protocol::merkle::final_root;
use protocol::messages::*;
use protocol::scenario::{Mix, Scenario};
use protocol::sign::{self, ChainId, Domain, SignatureError};
use protocol::simulate::run;

fn key(i: u8) -> SigningKey {
    sign::signing_key(&[i; 32])
}

fn market_spec(market_id: u64) -> MarketSpec {
    MarketSpec {
        market_id,
        slots: 24,
        slot_seconds: 3600,
        rho: Fixed::from_f64("rho", 0.02).unwrap().raw(),
        eps_abs: Fixed::ONE.raw(),
        eps_rel: Fixed::from_f64("eps", 1e-3).unwrap().raw(),
        max_iterations: 40,
        grid: GridSpec::Exchange,
        registration_close_ms: 1_000 * market_id,
        iteration_ms: 500,
        execution_start_ms: 100_000 * market_id,
        settlement: None,
        compressed_slot_ms: None,
    }
}

fn genesis(validators: &[SigningKey]) -> Entry {
    let g = Genesis {
        validators: validators.iter().map(|k| ValidatorId(k.verifying_key().to_bytes())).collect(),
        max_clock_drift_ms: 2_000,
        market: market_spec(1),
        verifying_keys: vec![KeyHash { kind: 1, slots: 24, sha256: [7; 32] }],
        enrollment_authorities: vec![protocol::membership::AuthorityId(key(50).verifying_key().to_bytes())],
        market_operators: vec![protocol::market::OperatorId(key(51).verifying_key().to_bytes())],
    };
    Entry::genesis(g, 0)
}

fn certify(entry: &Entry, validators: &[SigningKey], which: &[u16]) -> CommitCertificate {
    let hash = entry.hash();
    let votes = which.iter().map(|&i| sign_vote(&validators[i as usize], &entry.chain_id, i, entry.height, 0, &hash)).collect();
    CommitCertificate { height: entry.height, round: 0, hash, votes }
}

fn update(device: &SigningKey, chain: &ChainId, k: u32) -> SignedUpdate {
    let body =
        Update { market_id: 1, iteration: k, device: DeviceId(device.verifying_key().to_bytes()), schedule: vec![100, -200, 0, 7], proof: [3; PROOF_BYTES] };
    SignedUpdate::new(device, chain, body)
}

fn attestation(chain: &ChainId, device: DeviceId) -> protocol::membership::SignedAttestation {
    use protocol::membership::{Attestation, Nameplate, SignedAttestation};
    let body = Attestation {
        device,
        kind: 2,
        meter_point: "DE0001".into(),
        nameplate: Nameplate { max_import_w: 5000, max_export_w: 5000, capacity_wh: 10_000 },
        valid_from_ms: 0,
        valid_until_ms: 1 << 40,
    };
    SignedAttestation::new(&key(50), chain, body)
}

/// An attestation admits exactly the device and kind it names, signed by an authority of the
/// chain, over the whole market; each failure is its own typed error with its own label; the
/// file form (JSON, hex keys) round-trips.
#[test]
fn attestations_admit_only_what_an_authority_signed_for_the_market() {
    use protocol::membership::{check_attestation, AttestationError, AuthorityId, SignedAttestation};
    let vals: Vec<SigningKey> = (1..=4).map(key).collect();
    let g = genesis(&vals);
    let Body::Genesis(spec) = &g.body else { unreachable!() };
    let (chain, m, authorities) = (g.chain_id, &spec.market, &spec.enrollment_authorities);
    let dev = DeviceId(key(9).verifying_key().to_bytes());
    let good = attestation(&chain, dev);
    check_attestation(&good, &chain, authorities, dev, 2, m).unwrap();
    let label = |r: Result<(), AttestationError>| r.unwrap_err().label();
    // A key that is not an authority, even signing correctly.
    let rogue = SignedAttestation::new(&key(51), &chain, good.body.clone());
    assert_eq!(label(check_attestation(&rogue, &chain, authorities, dev, 2, m)), "unattested");
    // The authority's key named, another key's signature.
    let forged = SignedAttestation { authority: AuthorityId(key(50).verifying_key().to_bytes()), ..rogue };
    assert_eq!(label(check_attestation(&forged, &chain, authorities, dev, 2, m)), "bad_attestation");
    // Another chain's attestation does not verify here.
    let elsewhere = SignedAttestation::new(&key(50), &ChainId([1; 32]), good.body.clone());
    assert_eq!(label(check_attestation(&elsewhere, &chain, authorities, dev, 2, m)), "bad_attestation");
    // Used for another device or kind.
    let other = DeviceId(key(10).verifying_key().to_bytes());
    assert_eq!(label(check_attestation(&good, &chain, authorities, other, 2, m)), "attestation_mismatch");
    assert_eq!(label(check_attestation(&good, &chain, authorities, dev, 1, m)), "attestation_mismatch");
    // Expired before execution ends, or not yet valid at the close.
    let (from, until) = protocol::membership::market_span(m);
    for (a, b) in [(0, until - 1), (from + 1, u64::MAX)] {
        let body = protocol::membership::Attestation { valid_from_ms: a, valid_until_ms: b, ..good.body.clone() };
        assert_eq!(label(check_attestation(&SignedAttestation::new(&key(50), &chain, body), &chain, authorities, dev, 2, m)), "attestation_expired");
    }
    let long = protocol::membership::Attestation { meter_point: "x".repeat(65), ..good.body.clone() };
    assert_eq!(label(check_attestation(&SignedAttestation::new(&key(50), &chain, long), &chain, authorities, dev, 2, m)), "bad_attestation");
    let json = serde_json::to_string(&good).unwrap();
    assert!(json.contains(&protocol::ids::hex(&dev.0)), "{json}");
    assert_eq!(serde_json::from_str::<SignedAttestation>(&json).unwrap(), good);
}

fn next(prev: &Entry, body: Body) -> Entry {
    Entry { chain_id: prev.chain_id, height: prev.height + 1, prev_hash: prev.hash(), state_root: [0; 32], timestamp_ms: prev.timestamp_ms + 500, body }
}

#[test]
fn every_type_round_trips() {
    let vals: Vec<SigningKey> = (1..=4).map(key).collect();
    let g = genesis(&vals);
    let chain = g.chain_id;
    let dev = key(9);
    let enrollment = SignedEnrollment::new(
        &dev,
        &chain,
        Enrollment {
            market_id: 1,
            device: DeviceId(dev.verifying_key().to_bytes()),
            kind: 2,
            slots: 24,
            commitment: FieldElement::new(&-Fr::from(1u64)),
            attestation: attestation(&chain, DeviceId(dev.verifying_key().to_bytes())),
        },
    );
    let u = update(&dev, &chain, 3);
    let bodies = vec![
        Body::Enrollment(EnrollmentBatch {
            market_id: 1,
            enrollments: vec![enrollment.clone()],
            withdrawals: vec![SignedWithdrawal::new(&dev, &chain, Withdrawal { market_id: 1, device: DeviceId(dev.verifying_key().to_bytes()) })],
        }),
        Body::Open(SignedMarketOpen::new(&key(51), &chain, market_spec(2))),
        Body::Revocation(vec![SignedRevocation::new(&key(50), &chain, &enrollment.body.attestation)]),
        Body::Iteration(IterationBody {
            market_id: 1,
            iteration: 3,
            updates: vec![u.digest()],
            x_bar: vec![1, -2],
            z_bar: vec![3],
            u: vec![],
            residuals: [1, 2, 3, 4],
        }),
        Body::Final(FinalBody { market_id: 1, iterations: 9, converged: true, schedule_root: [5; 32], prices: vec![-1, 1] }),
        Body::Meter(protocol::settlement::MeterBatch {
            market_id: 1,
            readings: vec![protocol::settlement::SignedReading::new(
                &dev,
                &chain,
                protocol::settlement::Reading { market_id: 1, device: enrollment.body.device, slot: 3, energy: 900 },
            )],
        }),
        Body::Settlement(SettlementBody {
            market_id: 1,
            bills: vec![protocol::settlement::Bill { device: enrollment.body.device, energy: -12, imbalance: 3, metered_slots: 2 }],
            totals: protocol::settlement::Totals { consumers_pay: 0, producers_receive: 9, imbalance_revenue: 3, network_revenue: -12 },
        }),
    ];
    let mut prev = g.clone();
    for body in bodies {
        let e = next(&prev, body);
        assert_eq!(decode::<Entry>("entry", &encode(&e), MAX_MESSAGE_BYTES).unwrap(), e);
        let c = certify(&e, &vals, &[0, 1, 3]);
        assert_eq!(decode::<CommitCertificate>("cert", &encode(&c), MAX_MESSAGE_BYTES).unwrap(), c);
        prev = e;
    }
    assert_eq!(decode::<Entry>("entry", &encode(&g), MAX_MESSAGE_BYTES).unwrap(), g);
    assert_eq!(decode::<SignedUpdate>("update", &encode(&u), MAX_MESSAGE_BYTES).unwrap(), u);
    assert_eq!(decode::<SignedEnrollment>("enr", &encode(&enrollment), MAX_MESSAGE_BYTES).unwrap(), enrollment);
    // A commitment at or above the modulus does not decode.
    let mut bytes = encode(&enrollment);
    let at = 8 + 32 + 1 + 2;
    bytes[at..at + 32].copy_from_slice(&[0xff; 32]);
    assert!(matches!(decode::<SignedEnrollment>("enr", &bytes, MAX_MESSAGE_BYTES), Err(CodecError::Malformed { .. })));
    // Oversized input is refused before parsing.
    assert!(matches!(decode::<SignedUpdate>("update", &vec![0; 2 * MAX_MESSAGE_BYTES], MAX_MESSAGE_BYTES), Err(CodecError::TooLarge { .. })));
}

proptest! {
    #[test]
    fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode::<Entry>("entry", &bytes, MAX_MESSAGE_BYTES);
        let _ = decode::<SignedUpdate>("update", &bytes, MAX_MESSAGE_BYTES);
        let _ = decode::<SignedEnrollment>("enrollment", &bytes, MAX_MESSAGE_BYTES);
        let _ = decode::<CommitCertificate>("cert", &bytes, MAX_MESSAGE_BYTES);
        let _ = decode::<protocol::messages::DeviceRequest>("request", &bytes, MAX_MESSAGE_BYTES);
    }

    #[test]
    fn mutated_updates_fail_to_decode_or_to_verify(at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let dev = key(9);
        let chain = ChainId([1; 32]);
        let mut bytes = encode(&update(&dev, &chain, 1));
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        if let Ok(u) = decode::<SignedUpdate>("update", &bytes, MAX_MESSAGE_BYTES) {
            prop_assert!(u.verify(&chain).is_err());
        }
    }
}

#[test]
fn signatures_bind_key_chain_and_domain() {
    let dev = key(9);
    let chain = ChainId([1; 32]);
    let u = update(&dev, &chain, 1);
    u.verify(&chain).unwrap();
    assert!(matches!(u.verify(&ChainId([2; 32])), Err(SignatureError::Invalid { .. })));
    // Claimed by another device.
    let mut other = u.clone();
    other.body.device = DeviceId(key(10).verifying_key().to_bytes());
    assert!(other.verify(&chain).is_err());
    // The same bytes signed in another domain.
    let payload = encode(&u.body);
    let wrong = sign::sign(&dev, &chain, Domain::Enrollment, &payload);
    assert!(sign::verify(&dev.verifying_key().to_bytes(), &chain, Domain::Update, &payload, &wrong).is_err());
    // A key that is not a curve point.
    let mut bad = u.clone();
    bad.body.device = DeviceId([0xff; 32]);
    assert!(bad.verify(&chain).is_err());
}

#[test]
fn certificates_need_a_quorum_of_distinct_valid_votes() {
    let vals: Vec<SigningKey> = (1..=4).map(key).collect();
    let set: Vec<ValidatorId> = vals.iter().map(|k| ValidatorId(k.verifying_key().to_bytes())).collect();
    let g = genesis(&vals);
    let e = next(&g, Body::Final(FinalBody { market_id: 1, iterations: 1, converged: true, schedule_root: [0; 32], prices: vec![] }));
    assert_eq!(quorum(4), 3);
    // More than two thirds, as consensus decides: 3 of 5 never certify.
    assert_eq!([1, 2, 3, 4, 5, 6, 7].map(quorum), [1, 2, 3, 3, 4, 5, 5]);
    let five: Vec<SigningKey> = (1..=5).map(key).collect();
    let set5: Vec<ValidatorId> = five.iter().map(|k| ValidatorId(k.verifying_key().to_bytes())).collect();
    let g5 = genesis(&five);
    let e5 = next(&g5, Body::Final(FinalBody { market_id: 1, iterations: 1, converged: true, schedule_root: [0; 32], prices: vec![] }));
    assert!(matches!(certify(&e5, &five, &[0, 1, 2]).verify(&e5.chain_id, &set5), Err(LogError::NoQuorum { got: 3, quorum: 4, .. })));
    certify(&e5, &five, &[0, 1, 3, 4]).verify(&e5.chain_id, &set5).unwrap();
    certify(&e, &vals, &[0, 1, 2]).verify(&e.chain_id, &set).unwrap();
    let two = certify(&e, &vals, &[0, 2]);
    assert!(matches!(two.verify(&e.chain_id, &set), Err(LogError::NoQuorum { got: 2, quorum: 3, .. })));
    let mut dup = certify(&e, &vals, &[0, 1]);
    dup.votes.push(dup.votes[1].clone());
    assert!(matches!(dup.verify(&e.chain_id, &set), Err(LogError::VoteOrder(1))));
    // A vote signed by a non-validator, under index 3.
    let mut forged = certify(&e, &vals, &[0, 1]);
    forged.votes.push(sign_vote(&key(99), &e.chain_id, 3, e.height, 0, &e.hash()));
    assert!(matches!(forged.verify(&e.chain_id, &set), Err(LogError::BadVote { index: 3, .. })));
    let mut unknown = certify(&e, &vals, &[0, 1, 2]);
    unknown.votes[2].validator = 7;
    assert!(matches!(unknown.verify(&e.chain_id, &set), Err(LogError::UnknownValidator(7, 4))));
}

#[test]
fn light_client_rejects_broken_links_and_forks() {
    let vals: Vec<SigningKey> = (1..=4).map(key).collect();
    let g = genesis(&vals);
    let mut client = LightClient::new(&g).unwrap();
    let body = |k| Body::Final(FinalBody { market_id: 1, iterations: k, converged: true, schedule_root: [0; 32], prices: vec![] });
    let e1 = next(&g, body(1));
    // Too few signatures, then a signature from a non-validator.
    assert!(client.accept(&e1, &certify(&e1, &vals, &[0, 1])).is_err());
    let mut forged = certify(&e1, &vals, &[0, 1]);
    forged.votes.push(sign_vote(&key(50), &e1.chain_id, 2, 1, 0, &e1.hash()));
    assert!(client.accept(&e1, &forged).is_err());
    // Broken hash link.
    let mut unlinked = e1.clone();
    unlinked.prev_hash = [9; 32];
    assert!(matches!(client.accept(&unlinked, &certify(&unlinked, &vals, &[0, 1, 2])), Err(LogError::Link { .. })));
    // A certificate for another entry.
    let other = next(&g, body(2));
    assert!(matches!(client.accept(&e1, &certify(&other, &vals, &[0, 1, 2])), Err(LogError::Mismatch { .. })));
    client.accept(&e1, &certify(&e1, &vals, &[1, 2, 3])).unwrap();
    // A fork: another certified entry at height 1.
    assert!(matches!(client.accept(&other, &certify(&other, &vals, &[0, 1, 2])), Err(LogError::Link { .. })));
    assert_eq!(client.next_height(), 2);
}

/// Runs a fixed scenario to its final entry.
fn final_entry() -> Entry {
    let vals: Vec<SigningKey> = (1..=4).map(key).collect();
    let g = genesis(&vals);
    let sc = Scenario::generate(4, 20, Slots::new(24).unwrap(), 3600, Mix::Household);
    let params = AdmmParams {
        grid: sc.valley_filling(),
        ..(match &g.body {
            Body::Genesis(g) => g.market.admm().unwrap(),
            _ => unreachable!(),
        })
    };
    let r = run(&sc.devices, params, |_, _| true).unwrap();
    let body = FinalBody {
        market_id: 1,
        iterations: r.iterations,
        converged: r.converged,
        schedule_root: final_root(r.state.schedules()),
        prices: r.state.prices().unwrap().iter().map(|p| p.raw()).collect(),
    };
    Entry { chain_id: g.chain_id, height: 1 + r.iterations as u64, prev_hash: [0; 32], state_root: [0; 32], timestamp_ms: 42, body: Body::Final(body) }
}

#[test]
fn a_fixed_scenario_gives_a_pinned_final_entry() {
    let a = final_entry();
    assert_eq!(encode(&a), encode(&final_entry()), "same inputs, different bytes");
    let hex: String = a.hash().iter().map(|b| format!("{b:02x}")).collect();
    // Pinned: any change to the ADMM maths, the local step, rounding, the scenario or the
    // encoding changes this hash. Update it only together with a note on what changed.
    // Last change: a market spec gained `compressed_slot_ms` (a new chain id); before it,
    // `settlement`, and entries gained `state_root`. The ADMM maths and rounding are unchanged.
    assert_eq!(hex, "fbb05eb016f2106d0016e740a59f36ade46be78f587d5f2bd3fa31f223fad979");
}
