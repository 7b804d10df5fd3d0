//! Membership at a validator: an enrollment is admitted only with an attestation that an
//! enrollment authority of the genesis signed for that device and kind, valid over the whole
//! market. Each failure is a typed refusal with its own metrics label, and a flood of
//! self-made identities is admitted nowhere and held nowhere.

use crate::common::*;
use ed25519_dalek::SigningKey;
use protocol::codec::FieldElement;
use protocol::ids::DeviceId;
use protocol::membership::{attest, market_span, Attestation, SignedAttestation};
use protocol::messages::{Enrollment, SignedEnrollment};
use rand::SeedableRng;
use verifier_node::consensus::node::{Node, NodeConfig};
use verifier_node::store::MemLog;

fn node(w: &World) -> Node<MemLog> {
    Node::open(NodeConfig { rng_seed: 7, ..NodeConfig::new(0) }, w.validators[0].clone(), &genesis_entry(w), w.keys.clone(), MemLog::default()).unwrap()
}

/// Device `d`'s enrollment carrying `attestation` instead of the authority's.
fn enrollment_with(w: &World, d: &Device, attestation: SignedAttestation) -> SignedEnrollment {
    let mut e = enrollment(w, d).body;
    e.attestation = attestation;
    SignedEnrollment::new(&d.key, &w.chain, e)
}

#[test]
fn every_attestation_failure_is_a_typed_refusal_counted_in_metrics() {
    let w = world();
    let mut n = node(&w);
    let (d0, d1) = (&w.devices[0], &w.devices[1]);
    let good = attestation(&w, d0.id(), &d0.opening.params);
    let span = market_span(&w.genesis.market);
    let rogue = SigningKey::from_bytes(&[200; 32]);
    let cases: Vec<(&str, SignedEnrollment)> = vec![
        // Signed by a key that is no authority of this chain.
        ("unattested", enrollment_with(&w, d0, attest(&rogue, &w.chain, d0.id(), &d0.opening.params, 900, "m", span))),
        // The authority named, the signature another key's.
        (
            "bad_attestation",
            enrollment_with(&w, d0, SignedAttestation { authority: good.authority, ..attest(&rogue, &w.chain, d0.id(), &d0.opening.params, 900, "m", span) }),
        ),
        // Device 0's attestation used by device 1 (a battery, so the kind differs too).
        ("attestation_mismatch", enrollment_with(&w, d1, good.clone())),
        // Expired before the market's execution ends.
        (
            "attestation_expired",
            enrollment_with(&w, d0, SignedAttestation::new(&w.authority, &w.chain, Attestation { valid_until_ms: span.1 - 1, ..good.body.clone() })),
        ),
        // Not yet valid when registration closes.
        (
            "attestation_expired",
            enrollment_with(&w, d0, SignedAttestation::new(&w.authority, &w.chain, Attestation { valid_from_ms: span.0 + 1, ..good.body.clone() })),
        ),
    ];
    for (label, e) in &cases {
        let r = n.on_enrollment(10, e.clone());
        assert_eq!(r.as_ref().map_err(|e| e.label()), Err(*label), "{r:?}");
        let message = r.unwrap_err().to_string();
        assert!(message.contains(&d0.id().to_string()) || message.contains(&d1.id().to_string()), "the refusal names the device: {message}");
    }
    let count = |l: &str| n.stats().rejects.get(l).copied().unwrap_or(0);
    assert_eq!((count("unattested"), count("bad_attestation"), count("attestation_mismatch"), count("attestation_expired")), (1, 1, 1, 2));
    assert_eq!(n.held().pooled_enrollments, 0, "nothing refused is held");
    n.on_enrollment(10, enrollment(&w, d0)).unwrap();
    assert_eq!(n.held().pooled_enrollments, 1);
}

/// 10,000 self-made keys, each attesting itself (the strongest thing a Sybil can do without
/// an authority's key), try to enroll: none is admitted, every one is counted, and the node
/// holds nothing for them.
#[test]
fn a_sybil_flood_of_self_attested_keys_admits_none_and_holds_nothing() {
    let w = world();
    let mut n = node(&w);
    let template = enrollment(&w, &w.devices[0]).body;
    let span = market_span(&w.genesis.market);
    for i in 0..10_000u64 {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i + 5_000).to_le_bytes());
        let key = SigningKey::from_bytes(&seed);
        let device = DeviceId(key.verifying_key().to_bytes());
        let body = Enrollment {
            device,
            attestation: attest(&key, &w.chain, device, &w.devices[0].opening.params, 900, "sybil", span),
            commitment: FieldElement::new(&circuits::Fr::from(i)),
            ..template.clone()
        };
        let r = n.on_enrollment(10, SignedEnrollment::new(&key, &w.chain, body));
        assert_eq!(r.map_err(|e| e.label()), Err("unattested"));
    }
    assert_eq!(n.stats().rejects.get("unattested").copied(), Some(10_000));
    let held = n.held();
    assert_eq!((held.pooled_enrollments, held.pooled_updates, held.payloads), (0, 0, 0), "{held:?}");
}

/// A modified gateway that commits beyond its attested nameplate (the native check skipped)
/// and proves against the nameplate its parameters need: the validators compute the public
/// inputs from the attestation, so the proof does not verify (`bad_proof`) and no entry
/// includes it. The same update proven against the attested nameplate cannot exist: the
/// circuit bounds the parameters by it.
#[test]
fn a_proof_made_beyond_the_attested_nameplate_fails_verification() {
    use protocol::membership::Nameplate;
    use verifier_node::app::{Built, ChainApp, Pool, Reject};
    let mut w = world();
    let d0 = &w.devices[0];
    let p_max = match &d0.opening.params {
        circuits::ModelParams::Deferrable(p) => p.get().p_max,
        _ => unreachable!("device 0 is a deferrable load"),
    };
    // The installer attests 1 W less than the parameters the gateway commits to.
    let span = market_span(&w.genesis.market);
    let body = Attestation {
        device: d0.id(),
        kind: 1,
        meter_point: "m".into(),
        nameplate: Nameplate { max_import_w: p_max as u32 - 1, ..Nameplate::default() },
        valid_from_ms: span.0,
        valid_until_ms: span.1,
    };
    let small = SignedAttestation::new(&w.authority, &w.chain, body);
    let mut app = ChainApp::new(&genesis_entry(&w), w.keys.clone()).unwrap();
    let e = enrollment_with(&w, d0, small);
    let Built { entry, .. } = build(&app, 100, std::slice::from_ref(&e), &[]).unwrap();
    app.apply(&entry, &[]).unwrap();
    assert_eq!(app.market(7).unwrap().enrolled()[&d0.id()].limits.import_w, p_max as u32 - 1);
    // `update` proves with the nameplate the parameters fit (p_max).
    let forged = update(&mut w, 0, 1, 1);
    app.admit_update(120, &forged).unwrap();
    let verdicts =
        app.verify_updates(&[(forged.clone(), prover::format::decode_proof(&forged.body.proof).unwrap())], &mut rand_chacha::ChaCha20Rng::from_seed([1; 32]));
    assert_eq!(verdicts, vec![Err(Reject::BadProof(w.devices[0].id()))]);
    let closing = build(&app, 150, &[], &[]).unwrap().entry;
    app.apply(&closing, &[]).unwrap();
    let Built { entry, updates, dropped } = app
        .build(
            250,
            Pool { updates: std::slice::from_ref(&forged), ..Default::default() },
            &Default::default(),
            &mut rand_chacha::ChaCha20Rng::from_seed([2; 32]),
        )
        .unwrap();
    assert!(updates.is_empty() && dropped.iter().any(|d| d.why.label() == "bad_proof"), "{dropped:?}");
    assert!(matches!(entry.body, protocol::entry::Body::Iteration(ref b) if b.updates.is_empty()));
    // And the circuit has no satisfying assignment for these parameters under the attested
    // nameplate: the prover refuses before Groth16.
    let pk = w.pks.iter().find(|pk| pk.shape().kind == circuits::ModelKind::Deferrable).unwrap();
    let witness = circuits::Witness {
        opening: w.devices[0].opening.clone(),
        context: circuits::Context { market_id: 7, iteration: 1, shape: pk.shape() },
        limits: circuits::nameplate::Limits { import_w: p_max as u32 - 1, export_w: 0, capacity: 0 },
        schedule: circuits::sample::schedule(circuits::ModelKind::Deferrable, slots(), 0),
    };
    assert!(prover::prove(pk, witness, &mut w.rng).is_err());
}
