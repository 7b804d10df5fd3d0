//! The validator core end to end with real signatures and proofs: admission, building an
//! entry, validation by another validator, and every rejection reason.

use circuits::ModelKind;
use crate::common::*;
use ed25519_dalek::SigningKey;
use protocol::entry::Body;
use protocol::ids::DeviceId;
use protocol::messages::{SignedEnrollment, SignedUpdate};
use protocol::sign::ChainId;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use verifier_node::app::{Built, ChainApp, Dropped, Due, Reject, Step};

fn due(market_id: u64, step: Step) -> Due {
    Due { market_id, step }
}

#[test]
fn enrollments_are_checked() {
    let w = world();
    let app = ChainApp::new(&genesis_entry(&w), w.keys.clone()).unwrap();
    assert_eq!(app.next_due(), Some((75, due(7, Step::Enrollment))), "every min(iteration, half the window) ms");
    let good = enrollment(&w, &w.devices[0]);
    let mut forged = good.clone();
    forged.body.slots = 5;
    assert!(matches!(app.admit_enrollment(10, &forged), Err(Reject::BadSignature(_))));
    let other_chain = SignedEnrollment::new(&w.devices[0].key, &ChainId([9; 32]), good.body.clone());
    assert!(matches!(app.admit_enrollment(10, &other_chain), Err(Reject::BadSignature(_))));
    let mut wrong_market = good.body.clone();
    wrong_market.market_id = 8;
    assert!(matches!(app.admit_enrollment(10, &SignedEnrollment::new(&w.devices[0].key, &w.chain, wrong_market)), Err(Reject::UnknownMarket(8))));
    let mut producer = good.body.clone();
    producer.kind = ModelKind::Producer.id();
    assert!(matches!(app.admit_enrollment(10, &SignedEnrollment::new(&w.devices[0].key, &w.chain, producer)), Err(Reject::UnknownShape { .. })));
    app.admit_enrollment(10, &good).unwrap();
    assert_eq!(app.admit_enrollment(150, &good).unwrap_err().label(), "late");

    // Once enrolled (decided), the same enrollment is a duplicate; after the closing batch,
    // iteration 1 is due at its deadline and nothing more is admitted.
    let mut one_batch = ChainApp::new(&genesis_entry(&w), w.keys.clone()).unwrap();
    let Built { entry: batch, .. } = build(&one_batch, 100, std::slice::from_ref(&good), &[]).unwrap();
    one_batch.apply(&batch, &[]).unwrap();
    assert_eq!(one_batch.admit_enrollment(120, &good).unwrap_err().label(), "duplicate");
    let a = validator(&w);
    assert_eq!(a.admit_enrollment(120, &enrollment(&w, &w.devices[1])).unwrap_err().label(), "late");
    assert_eq!(a.next_due(), Some((250, due(7, Step::Iteration(1)))));
    assert_eq!(a.open_iteration(7), Some(1));
}

/// An enrollment admitted after the last interval's batch but before the close is not lost:
/// the batch after it is due at the close itself (the closing batch), may be built late, and
/// takes it; once the closing batch is in, registration admits nothing more even on a clock
/// that is behind.
#[test]
fn an_enrollment_admitted_just_before_the_close_is_in_the_closing_batch() {
    let w = world();
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let mut app = ChainApp::new(&genesis_entry(&w), w.keys.clone()).unwrap();
    let early = enrollment(&w, &w.devices[0]);
    let Built { entry: first, .. } = build(&app, 100, std::slice::from_ref(&early), &[]).unwrap();
    app.apply(&first, &[]).unwrap();
    // One interval (75 ms) after 100 is past the close (150): the closing batch is due at 150.
    assert_eq!(app.next_due(), Some((150, due(7, Step::Enrollment))));
    let late = enrollment(&w, &w.devices[1]);
    app.admit_enrollment(149, &late).unwrap();
    assert_eq!(app.admit_enrollment(150, &late).unwrap_err().label(), "late", "admission ends at the close");
    // Built 30 ms late (a slow proposer), it is still the closing batch, and it validates.
    let Built { entry: closing, dropped, .. } = build(&app, 180, std::slice::from_ref(&late), &[]).unwrap();
    assert!(dropped.is_empty());
    let Body::Enrollment(list) = &closing.body else { panic!("the closing batch is an enrollment batch") };
    assert_eq!(list.enrollments.len(), 1);
    let mut replica = ChainApp::new(&genesis_entry(&w), w.keys.clone()).unwrap();
    replica.apply(&first, &[]).unwrap();
    replica.validate(&closing, &[], &Default::default(), &mut rng).unwrap();
    app.apply(&closing, &[]).unwrap();
    assert_eq!(app.market(7).unwrap().enrolled().len(), 2);
    assert_eq!(app.next_due(), Some((250, due(7, Step::Iteration(1)))), "registration is over");
    let third = enrollment(&w, &w.devices[2]);
    assert_eq!(app.admit_enrollment(140, &third).unwrap_err().label(), "late", "a clock behind the close admits nothing after the closing batch");
    // A batch before the close, once the closing one is due, is still refused after it.
    let after = build(&app, 200, std::slice::from_ref(&third), &[]).unwrap_err();
    assert_eq!(after.label(), "not_due", "{after}");
}

#[test]
fn entries_are_built_validated_and_applied() {
    let mut w = world();
    let mut a = validator(&w);
    let b = validator(&w);
    let good: Vec<SignedUpdate> = (0..2).map(|i| update(&mut w, i, 1, 1)).collect();
    // Device 2's proof was made for iteration 2: it decodes, is admitted, and is dropped.
    let bad_proof = update(&mut w, 2, 1, 2);
    for u in good.iter().chain([&bad_proof]) {
        a.admit_update(200, u).unwrap();
    }
    // Admission rejections.
    assert_eq!(a.admit_update(201, &update(&mut w, 0, 2, 2)).unwrap_err().label(), "future_iteration");
    assert_eq!(a.admit_update(250, &good[0]).unwrap_err().label(), "late");
    let mut short = good[1].body.clone();
    short.schedule.pop();
    assert!(matches!(a.admit_update(203, &SignedUpdate::new(&w.devices[1].key, &w.chain, short)), Err(Reject::WrongLength { .. })));
    let mut garbage = good[1].body.clone();
    garbage.proof = [0xff; 128];
    assert!(matches!(a.admit_update(204, &SignedUpdate::new(&w.devices[1].key, &w.chain, garbage)), Err(Reject::MalformedProof(_))));
    let stranger = SigningKey::from_bytes(&[77; 32]);
    let mut unknown = good[0].body.clone();
    unknown.device = DeviceId(stranger.verifying_key().to_bytes());
    assert_eq!(a.admit_update(205, &SignedUpdate::new(&stranger, &w.chain, unknown)).unwrap_err().label(), "unknown_device");
    let mut tampered = good[0].clone();
    tampered.body.schedule[0] += 1;
    assert!(matches!(a.admit_update(206, &tampered), Err(Reject::BadSignature(_))));

    // The deadline passes: A builds the entry, dropping the bad proof; B validates it.
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let pool: Vec<SignedUpdate> = good.iter().cloned().chain([bad_proof.clone(), good[0].clone()]).collect();
    let Built { entry, updates: included, dropped } = build(&a, 260, &[], &pool).unwrap();
    assert_eq!(included.len(), 2);
    assert_eq!(entry.timestamp_ms, 260);
    assert_eq!(dropped, vec![Dropped { market_id: 7, device: w.devices[2].id(), why: Reject::BadProof(w.devices[2].id()) }]);
    b.validate(&entry, &included, &Default::default(), &mut rng).unwrap();
    // Too early: the same body timestamped before the deadline.
    let mut early = entry.clone();
    early.timestamp_ms = 249;
    assert!(matches!(b.validate(&early, &included, &Default::default(), &mut rng), Err(Reject::NotDue(_))));

    // Byzantine variants of the entry are refused by B.
    let with_body = |f: &dyn Fn(&mut protocol::entry::IterationBody)| {
        let mut e = entry.clone();
        if let Body::Iteration(body) = &mut e.body {
            f(body);
        }
        e
    };
    assert_eq!(b.validate(&with_body(&|b| b.x_bar[0] += 1), &included, &Default::default(), &mut rng), Err(Reject::WrongAggregates));
    let mut with_bad = included.clone();
    with_bad.push(bad_proof.clone());
    let digests = |us: &[SignedUpdate]| {
        let mut d: Vec<_> = us.iter().map(SignedUpdate::digest).collect();
        d.sort_unstable();
        d
    };
    let e = with_body(&|b| b.updates = digests(&with_bad));
    assert_eq!(b.validate(&e, &with_bad, &Default::default(), &mut rng), Err(Reject::BadProof(w.devices[2].id())));
    let mut dup = included.clone();
    dup.push(included[0].clone());
    let e = with_body(&|b| b.updates = digests(&dup));
    assert!(matches!(b.validate(&e, &dup, &Default::default(), &mut rng), Err(Reject::DuplicateInEntry(_))));
    assert!(matches!(b.validate(&with_body(&|b| b.iteration = 2), &included, &Default::default(), &mut rng), Err(Reject::WrongIteration { .. })));
    assert_eq!(b.validate(&entry, &included[..1], &Default::default(), &mut rng), Err(Reject::MissingUpdates));
    // Dropping an update changes the aggregates, which B recomputes.
    let e = with_body(&|b| b.updates = digests(&included[..1]));
    assert_eq!(b.validate(&e, &included[..1], &Default::default(), &mut rng), Err(Reject::WrongAggregates));
    let mut wrong_link = entry.clone();
    wrong_link.prev_hash[0] ^= 1;
    assert!(matches!(b.validate(&wrong_link, &included, &Default::default(), &mut rng), Err(Reject::Link(_))));

    // Both apply the decided entry and agree.
    let mut b = b;
    a.apply(&entry, &included).unwrap();
    b.apply(&entry, &included).unwrap();
    assert_eq!(a.market(7).unwrap().admm().unwrap().variables(), b.market(7).unwrap().admm().unwrap().variables());
    assert_eq!(a.tip(), b.tip());
    assert_eq!(a.market(7).unwrap().admm().unwrap().iteration(), 1);
    assert_eq!(a.admit_update(300, &good[0]).unwrap_err().label(), "stale_iteration");
}

/// More enrollments than one batch holds: a full batch makes the next one due right after it,
/// so the backlog is enrolled before registration closes (one batch per interval would have
/// reached the close with devices left out).
#[test]
fn a_full_enrollment_batch_makes_the_next_one_due_at_once() {
    let w = world();
    let mut app = ChainApp::new(&genesis_entry(&w), w.keys.clone()).unwrap();
    let n = verifier_node::app::MAX_ENROLLMENTS_PER_ENTRY + 5;
    let template = enrollment(&w, &w.devices[0]);
    let pool: Vec<SignedEnrollment> = (0..n as u64)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i + 1000).to_le_bytes());
            let key = SigningKey::from_bytes(&seed);
            let mut body = template.body.clone();
            body.device = DeviceId(key.verifying_key().to_bytes());
            body.attestation = attestation(&w, body.device, &w.devices[0].opening.params);
            SignedEnrollment::new(&key, &w.chain, body)
        })
        .collect();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let verifier = ChainApp::new(&genesis_entry(&w), w.keys.clone()).unwrap();
    let Built { entry: full, dropped, .. } = build(&app, 75, &pool, &[]).unwrap();
    assert!(dropped.is_empty());
    let Body::Enrollment(list) = &full.body else { panic!("an enrollment batch is due") };
    assert_eq!(list.enrollments.len(), verifier_node::app::MAX_ENROLLMENTS_PER_ENTRY);
    verifier.validate(&full, &[], &Default::default(), &mut rng).unwrap();
    app.apply(&full, &[]).unwrap();
    assert_eq!(app.next_due(), Some((76, due(7, Step::Enrollment))), "the backlog is due right after a full batch");

    let rest: Vec<SignedEnrollment> = pool.iter().filter(|e| !app.market(7).unwrap().enrolled().contains_key(&e.body.device)).cloned().collect();
    assert_eq!(rest.len(), 5);
    let Built { entry: tail, .. } = build(&app, 76, &rest, &[]).unwrap();
    let mut replica = verifier;
    replica.apply(&full, &[]).unwrap();
    replica.validate(&tail, &[], &Default::default(), &mut rng).unwrap();
    app.apply(&tail, &[]).unwrap();
    assert_eq!(app.market(7).unwrap().enrolled().len(), n);
    // A batch that is not full brings back the interval, capped at the close: the closing
    // batch is due at 150.
    assert_eq!(app.next_due(), Some((150, due(7, Step::Enrollment))));
}

#[test]
fn a_genesis_with_out_of_range_market_parameters_is_refused_with_a_typed_error() {
    use protocol::entry::{chain_id, GridSpec};
    let cases: [(&str, fn(&mut protocol::entry::Genesis)); 4] = [
        ("rho", |g| g.market.rho = i64::MAX),
        ("gamma", |g| g.market.grid = GridSpec::ValleyFilling { gamma: i64::MAX, base_load: vec![0; T] }),
        ("price[0]", |g| g.market.grid = GridSpec::Tariff { price: vec![i64::MIN; T], feeder_cap: 0 }),
        ("feeder_cap", |g| g.market.grid = GridSpec::Tariff { price: vec![0; T], feeder_cap: -1 }),
    ];
    for (what, f) in cases {
        let mut w = world();
        f(&mut w.genesis);
        w.chain = chain_id(&w.genesis);
        match ChainApp::new(&genesis_entry(&w), w.keys.clone()) {
            Err(e @ Reject::Admm(protocol::admm::AdmmError::Params(_))) => {
                assert!(e.to_string().contains(what), "{e} should name {what}");
                assert_eq!(e.label(), "market_params");
            }
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }
}
