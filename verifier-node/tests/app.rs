//! The validator core end to end with real signatures and proofs: admission, proposal,
//! validation by another validator, and every rejection reason.

mod common;

use circuits::ModelKind;
use common::*;
use ed25519_dalek::SigningKey;
use protocol::ids::DeviceId;
use protocol::messages::{SignedEnrollment, SignedUpdate};
use protocol::sign::ChainId;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use verifier_node::app::{MarketApp, Reject};

#[test]
fn enrollments_are_checked() {
    let w = world();
    let mut app = MarketApp::new(w.chain, w.genesis.clone(), w.keys.clone()).unwrap();
    let good = enrollment(&w, &w.devices[0]);
    let mut forged = good.clone();
    forged.body.slots = 5;
    assert!(matches!(app.on_enrollment(10, &forged), Err(Reject::BadSignature(_))));
    let other_chain = SignedEnrollment::new(&w.devices[0].key, &ChainId([9; 32]), good.body.clone());
    assert!(matches!(app.on_enrollment(10, &other_chain), Err(Reject::BadSignature(_))));
    let mut wrong_market = good.body.clone();
    wrong_market.market_id = 8;
    assert!(matches!(app.on_enrollment(10, &SignedEnrollment::new(&w.devices[0].key, &w.chain, wrong_market)), Err(Reject::WrongMarket { .. })));
    let mut producer = good.body.clone();
    producer.kind = ModelKind::Producer.id();
    assert!(matches!(app.on_enrollment(10, &SignedEnrollment::new(&w.devices[0].key, &w.chain, producer)), Err(Reject::UnknownShape { .. })));
    app.on_enrollment(10, &good).unwrap();
    assert!(matches!(app.on_enrollment(11, &good), Err(Reject::Clock(_))));
    assert!(matches!(app.on_enrollment(1000, &enrollment(&w, &w.devices[1])), Err(Reject::Clock(_))));
}

#[test]
fn proposals_are_built_validated_and_applied() {
    let mut w = world();
    let mut a = validator(&w);
    let b = validator(&w);
    let good: Vec<SignedUpdate> = (0..2).map(|i| update(&mut w, i, 1, 1)).collect();
    // Device 2's proof was made for iteration 2: it decodes, is admitted, and is dropped.
    let bad_proof = update(&mut w, 2, 1, 2);
    for u in good.iter().chain([&bad_proof]) {
        a.on_update(1050, u.clone()).unwrap();
    }
    // Admission rejections.
    assert!(matches!(a.on_update(1051, good[0].clone()), Err(Reject::Clock(_))), "duplicate");
    assert!(matches!(a.on_update(1052, update(&mut w, 0, 2, 2)), Err(Reject::Clock(_))), "future iteration");
    let mut short = good[1].body.clone();
    short.schedule.pop();
    assert!(matches!(a.on_update(1053, SignedUpdate::new(&w.devices[1].key, &w.chain, short)), Err(Reject::WrongLength { .. })));
    let mut garbage = good[1].body.clone();
    garbage.proof = [0xff; 128];
    assert!(matches!(a.on_update(1054, SignedUpdate::new(&w.devices[1].key, &w.chain, garbage)), Err(Reject::MalformedProof(_))));
    let stranger = SigningKey::from_bytes(&[77; 32]);
    let mut unknown = good[0].body.clone();
    unknown.device = DeviceId(stranger.verifying_key().to_bytes());
    assert!(matches!(a.on_update(1055, SignedUpdate::new(&stranger, &w.chain, unknown)), Err(Reject::Clock(_))));
    let mut tampered = good[0].clone();
    tampered.body.schedule[0] += 1;
    assert!(matches!(a.on_update(1056, tampered), Err(Reject::BadSignature(_))));

    // The deadline passes: A proposes, dropping the bad proof; B validates.
    a.tick(1100);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (proposal, dropped) = a.propose(&mut rng).unwrap();
    assert_eq!(proposal.updates.len(), 2);
    assert_eq!(dropped, vec![(w.devices[2].id(), Reject::BadProof(w.devices[2].id()))]);
    b.validate(&proposal, &mut rng).unwrap();

    // Byzantine variants of the proposal are refused by B.
    let mut wrong = proposal.clone();
    wrong.body.x_bar[0] += 1;
    assert_eq!(b.validate(&wrong, &mut rng), Err(Reject::WrongAggregates));
    let mut with_bad = proposal.clone();
    with_bad.updates.push(bad_proof.clone());
    assert_eq!(b.validate(&with_bad, &mut rng), Err(Reject::BadProof(w.devices[2].id())));
    let mut dup = proposal.clone();
    dup.updates.push(proposal.updates[0].clone());
    assert!(matches!(b.validate(&dup, &mut rng), Err(Reject::DuplicateInProposal(_))));
    let mut later = proposal.clone();
    later.body.iteration = 2;
    assert!(matches!(b.validate(&later, &mut rng), Err(Reject::WrongIteration { .. })));
    // Dropping an update changes the aggregates, which B recomputes.
    let mut fewer = proposal.clone();
    fewer.updates.pop();
    assert_eq!(b.validate(&fewer, &mut rng), Err(Reject::WrongAggregates));

    // Both apply the decided proposal and agree.
    let mut b = b;
    a.apply(&proposal).unwrap();
    b.apply(&proposal).unwrap();
    assert_eq!(a.admm().unwrap().variables(), b.admm().unwrap().variables());
    assert_eq!(a.admm().unwrap().iteration(), 1);
}
