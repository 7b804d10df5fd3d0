//! Membership at a validator: an enrollment is admitted only with an attestation that an
//! enrollment authority of the genesis signed for that device and kind, valid over the whole
//! market. Each failure is a typed refusal with its own metrics label, and a flood of
//! self-made identities is admitted nowhere and held nowhere.

mod common;

use common::*;
use ed25519_dalek::SigningKey;
use protocol::codec::FieldElement;
use protocol::ids::DeviceId;
use protocol::membership::{attest, market_span, Attestation, SignedAttestation};
use protocol::messages::{Enrollment, SignedEnrollment};
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
        ("bad_attestation", enrollment_with(&w, d0, SignedAttestation { authority: good.authority, ..attest(&rogue, &w.chain, d0.id(), &d0.opening.params, 900, "m", span) })),
        // Device 0's attestation used by device 1 (a battery, so the kind differs too).
        ("attestation_mismatch", enrollment_with(&w, d1, good.clone())),
        // Expired before the market's execution ends.
        ("attestation_expired", enrollment_with(&w, d0, SignedAttestation::new(&w.authority, &w.chain, Attestation { valid_until_ms: span.1 - 1, ..good.body.clone() }))),
        // Not yet valid when registration closes.
        ("attestation_expired", enrollment_with(&w, d0, SignedAttestation::new(&w.authority, &w.chain, Attestation { valid_from_ms: span.0 + 1, ..good.body.clone() }))),
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
