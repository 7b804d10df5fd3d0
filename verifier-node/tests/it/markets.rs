//! Several markets on one chain, at the level of the replicated state machine: a market
//! operator opens a market while another schedules, devices bid (enroll with a fresh
//! commitment) and withdraw, an authority revokes an attestation, and every refusal is typed.

use crate::common::*;
use ed25519_dalek::SigningKey;
use protocol::entry::{Body, Entry};
use protocol::market::{execution_span, SignedMarketOpen, SignedWithdrawal, Withdrawal};
use protocol::membership::SignedRevocation;
use protocol::messages::{SignedEnrollment, SignedUpdate};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use verifier_node::app::{Built, ChainApp, Pool, Reject, Step};

/// Builds from `pool` at `now`, checks that a replica validates the entry, and applies it to
/// both.
fn commit(app: &mut ChainApp, replica: &mut ChainApp, now: u64, pool: Pool<'_>) -> Entry {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let Built { entry, updates, dropped } = app.build(now, pool, &Default::default(), &mut rng).unwrap();
    assert!(dropped.is_empty(), "{dropped:?}");
    replica.validate(&entry, &updates, &Default::default(), &mut rng).unwrap();
    app.apply(&entry, &updates).unwrap();
    replica.apply(&entry, &updates).unwrap();
    entry
}

fn two(w: &World) -> (ChainApp, ChainApp) {
    (ChainApp::new(&genesis_entry(w), w.keys.clone()).unwrap(), ChainApp::new(&genesis_entry(w), w.keys.clone()).unwrap())
}

/// Market 8 executes right after market 7, registers until 400 ms.
fn second(w: &World) -> protocol::entry::MarketSpec {
    market_spec(w, 8, 400, execution_span(&w.genesis.market).1)
}

#[test]
fn market_openings_are_checked_and_refused_with_typed_errors() {
    let w = world();
    let (app, _) = two(&w);
    let m8 = second(&w);
    app.check_open(&open(&w, m8.clone()), 10).unwrap();
    let label = |o: &SignedMarketOpen, at: u64| app.check_open(o, at).unwrap_err().label();
    // Not an operator (the enrollment authority is not one either).
    assert_eq!(label(&SignedMarketOpen::new(&w.authority, &w.chain, m8.clone()), 10), "not_an_operator");
    let mut forged = open(&w, m8.clone());
    forged.body.spec.max_iterations += 1;
    assert_eq!(label(&forged, 10), "bad_open_signature");
    assert_eq!(label(&SignedMarketOpen::new(&operator(), &protocol::sign::ChainId([3; 32]), m8.clone()), 10), "bad_open_signature");
    // The genesis market's id.
    assert_eq!(label(&open(&w, market_spec(&w, 7, 400, 50_000_000)), 10), "market_id_reused");
    // Registration closing at or before the opening.
    assert_eq!(label(&open(&w, m8.clone()), 400), "market_past");
    // Execution overlapping market 7's by one slot.
    let (_, end7) = execution_span(&w.genesis.market);
    assert_eq!(label(&open(&w, market_spec(&w, 8, 400, end7 - 900_000)), 10), "market_overlap");
    // Scheduling that ends after execution starts, and parameters beyond the engine.
    assert_eq!(label(&open(&w, protocol::entry::MarketSpec { execution_start_ms: 500, ..market_spec(&w, 9, 400, 0) }), 10), "market_params");
    assert_eq!(label(&open(&w, protocol::entry::MarketSpec { rho: i64::MAX, ..market_spec(&w, 9, 400, 50_000_000) }), 10), "market_params");
}

#[test]
fn two_markets_interleave_on_one_chain_and_each_finalizes() {
    let mut w = world();
    let (mut app, mut replica) = two(&w);
    let m8 = second(&w);
    // Market 7's first batch, then the opening of market 8 (a chain entry, due any time).
    let e7: Vec<SignedEnrollment> = w.devices.iter().map(|d| enrollment(&w, d)).collect();
    commit(&mut app, &mut replica, 75, Pool { enrollments: &e7, ..Default::default() });
    let opening = open(&w, m8.clone());
    let e = commit(&mut app, &mut replica, 80, Pool { opens: std::slice::from_ref(&opening), ..Default::default() });
    assert!(matches!(e.body, Body::Open(_)));
    let m8_app = app.market(8).unwrap();
    assert_eq!(m8_app.opened_ms(), 80);
    // A bid for market 9 (not opened) and one for market 8 are told apart.
    let e8: Vec<SignedEnrollment> = w.devices.iter().map(|d| enrollment_in(&w, d, &m8)).collect();
    let mut unknown = e8[0].body.clone();
    unknown.market_id = 9;
    assert!(matches!(app.admit_enrollment(90, &SignedEnrollment::new(&w.devices[0].key, &w.chain, unknown)), Err(Reject::UnknownMarket(9))));
    app.admit_enrollment(90, &e8[0]).unwrap();
    // An attestation for market 7 alone does not cover market 8 (it ends with 7's execution).
    let short = {
        let mut body = e8[1].body.clone();
        body.attestation = e7[1].body.attestation.clone();
        SignedEnrollment::new(&w.devices[1].key, &w.chain, body)
    };
    assert_eq!(app.admit_enrollment(90, &short).unwrap_err().label(), "attestation_expired");

    // Step the chain: whatever is due, with every message in the pool, until both are final.
    let mut updates: Vec<SignedUpdate> = Vec::new();
    for k in 1..=5 {
        for i in 0..3 {
            updates.push(update_in(&mut w, 7, i, k, k));
            updates.push(update_in(&mut w, 8, i, k, k));
        }
    }
    let mut order = Vec::new();
    let mut now = 80;
    while !app.is_idle() {
        let (from, due) = app.next_due().unwrap();
        now = now.max(from);
        order.push((due.market_id, due.step));
        // (What a validator's pool holds: bids not yet in, updates of open iterations.)
        let pending: Vec<SignedEnrollment> = e8.iter().filter(|e| !app.market(8).is_some_and(|m| m.enrolled().contains_key(&e.body.device))).cloned().collect();
        let open: Vec<SignedUpdate> = updates.iter().filter(|u| app.open_iteration(u.body.market_id) == Some(u.body.iteration)).cloned().collect();
        let pool = Pool { enrollments: &pending, updates: &open, ..Default::default() };
        commit(&mut app, &mut replica, now, pool);
        assert!(order.len() < 40, "{order:?}");
    }
    assert_eq!(app.tip(), replica.tip());
    for id in [7, 8] {
        let m = app.market(id).unwrap();
        assert!(m.is_final());
        assert_eq!(m.enrolled().len(), 3, "market {id}");
        assert!(m.admm().unwrap().iteration() >= 1);
    }
    // Market 8 registered while market 7 scheduled: their entries interleave.
    let first_iter_7 = order.iter().position(|d| *d == (7, Step::Iteration(1))).unwrap();
    let last_batch_8 = order.iter().rposition(|d| *d == (8, Step::Enrollment)).unwrap();
    assert!(last_batch_8 > first_iter_7, "{order:?}");
    // Nothing more is taken for a final market.
    assert_eq!(app.admit_update(now, &updates[1]).unwrap_err().label(), "market_over");
}

#[test]
fn withdrawals_leave_before_the_close_and_are_refused_after_it() {
    let w = world();
    let (mut app, mut replica) = two(&w);
    let e7: Vec<SignedEnrollment> = w.devices.iter().map(|d| enrollment(&w, d)).collect();
    commit(&mut app, &mut replica, 75, Pool { enrollments: &e7, ..Default::default() });
    let withdraw = |i: usize| SignedWithdrawal::new(&w.devices[i].key, &w.chain, Withdrawal { market_id: 7, device: w.devices[i].id() });
    app.admit_withdrawal(100, &withdraw(1)).unwrap();
    // Signed by another key, or for a device not enrolled, or for an unknown market.
    let forged = SignedWithdrawal { signature: withdraw(0).signature, ..withdraw(1) };
    assert_eq!(app.admit_withdrawal(100, &forged).unwrap_err().label(), "bad_signature");
    let stranger = SigningKey::from_bytes(&[66; 32]);
    let w_unknown =
        SignedWithdrawal::new(&stranger, &w.chain, Withdrawal { market_id: 7, device: protocol::ids::DeviceId(stranger.verifying_key().to_bytes()) });
    assert_eq!(app.admit_withdrawal(100, &w_unknown).unwrap_err().label(), "unknown_device");
    let w_market = SignedWithdrawal::new(&w.devices[1].key, &w.chain, Withdrawal { market_id: 9, device: w.devices[1].id() });
    assert_eq!(app.admit_withdrawal(100, &w_market).unwrap_err().label(), "unknown_market");
    // The closing batch carries the withdrawal; the device is out of the market.
    let ws = [withdraw(1)];
    let e = commit(&mut app, &mut replica, 150, Pool { withdrawals: &ws, ..Default::default() });
    let Body::Enrollment(batch) = &e.body else { panic!("the closing batch") };
    assert_eq!(batch.withdrawals.len(), 1);
    let m = app.market(7).unwrap();
    assert_eq!(m.enrolled().len(), 2);
    assert!(!m.enrolled().contains_key(&w.devices[1].id()));
    // After the close: a withdrawal, and a bid, are late.
    assert_eq!(app.admit_withdrawal(140, &withdraw(0)).unwrap_err().label(), "late");
    assert_eq!(app.admit_enrollment(140, &e7[1]).unwrap_err().label(), "late");
}

#[test]
fn a_revoked_attestation_admits_nothing_and_removes_its_device_before_scheduling() {
    let w = world();
    let (mut app, mut replica) = two(&w);
    let e7: Vec<SignedEnrollment> = w.devices.iter().map(|d| enrollment(&w, d)).collect();
    commit(&mut app, &mut replica, 75, Pool { enrollments: &e7[..2], ..Default::default() });
    let revoke = |i: usize| SignedRevocation::new(&w.authority, &w.chain, &e7[i].body.attestation);
    // By a key that is no authority, or forged.
    let by_operator = SignedRevocation::new(&operator(), &w.chain, &e7[0].body.attestation);
    assert_eq!(app.check_revocation(&by_operator).unwrap_err().label(), "revocation_not_authority");
    let mut forged = revoke(0);
    forged.body.attestation[0] ^= 1;
    assert_eq!(app.check_revocation(&forged).unwrap_err().label(), "bad_revocation");
    // Revoking device 0 (enrolled) and device 2 (not yet).
    let rs = [revoke(0), revoke(2)];
    let e = commit(&mut app, &mut replica, 90, Pool { revocations: &rs, ..Default::default() });
    assert!(matches!(&e.body, Body::Revocation(list) if list.len() == 2));
    assert!(!app.market(7).unwrap().enrolled().contains_key(&w.devices[0].id()), "a revoked device leaves a market still registering");
    assert_eq!(app.admit_enrollment(100, &e7[2]).unwrap_err().label(), "attestation_revoked");
    assert_eq!(app.check_revocation(&revoke(0)).unwrap_err().label(), "already_revoked");
    // A revocation entry that repeats one, or is empty, is refused by a replica.
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let tip = app.tip();
    let bad = Entry { chain_id: w.chain, height: tip.height + 1, prev_hash: tip.hash, state_root: replica.state_root().unwrap(), timestamp_ms: tip.timestamp_ms + 1, body: Body::Revocation(vec![]) };
    assert_eq!(replica.validate(&bad, &[], &Default::default(), &mut rng).unwrap_err().label(), "overloaded");
}

/// A proof verified while the pool held it counts only for the enrollment it was verified
/// against: after the device withdraws and bids again with another commitment, the cached
/// update is verified again (and fails), both when building and when validating, so no
/// validator certifies what an auditor would refuse.
#[test]
fn a_cached_proof_counts_only_for_the_enrollment_it_was_verified_against() {
    let mut w = world();
    w.genesis.market.registration_close_ms = 400;
    w.chain = protocol::entry::chain_id(&w.genesis);
    let (mut app, mut replica) = two(&w);
    let first = enrollment(&w, &w.devices[0]);
    commit(&mut app, &mut replica, 100, Pool { enrollments: std::slice::from_ref(&first), ..Default::default() });
    let u = update(&mut w, 0, 1, 1);
    let proof = prover::format::decode_proof(&u.body.proof).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let enrolled = app.verify_updates(&[(u.clone(), proof)], &mut rng).remove(0).unwrap();
    let verified: verifier_node::app::Verified = [(u.digest(), enrolled)].into();
    // Withdraw, then bid again with another commitment (a fresh salt).
    let d0 = &w.devices[0];
    let withdrawal = SignedWithdrawal::new(&d0.key, &w.chain, Withdrawal { market_id: 7, device: d0.id() });
    commit(&mut app, &mut replica, 200, Pool { withdrawals: std::slice::from_ref(&withdrawal), ..Default::default() });
    let rebid = Device { key: d0.key.clone(), opening: circuits::Opening { salt: circuits::Fr::from(4242u64), ..d0.opening.clone() } };
    let second = enrollment(&w, &rebid);
    commit(&mut app, &mut replica, 300, Pool { enrollments: std::slice::from_ref(&second), ..Default::default() });
    commit(&mut app, &mut replica, 400, Pool::default());
    assert_ne!(app.market(7).unwrap().enrolled()[&d0.id()], enrolled, "the enrollment changed");
    // Building with the cache: the stale update is verified again and dropped.
    let built = app.build(500, Pool { updates: std::slice::from_ref(&u), ..Default::default() }, &verified, &mut rng).unwrap();
    assert!(built.updates.is_empty() && built.dropped.iter().any(|d| d.why.label() == "bad_proof"), "{:?}", built.dropped);
    // Validating an entry that includes it, with the cache: refused.
    let tip = replica.tip();
    let body = replica.iteration_body(7, 1, std::slice::from_ref(&u)).unwrap();
    let entry = Entry { chain_id: w.chain, height: tip.height + 1, prev_hash: tip.hash, state_root: replica.state_root().unwrap(), timestamp_ms: 500, body: Body::Iteration(body) };
    assert_eq!(replica.validate(&entry, std::slice::from_ref(&u), &verified, &mut rng), Err(Reject::BadProof(d0.id())));
}

/// An opening whose registration closed while it waited in a pool is dropped at the next
/// tick (it could never be built, and would keep a height running).
#[test]
fn an_opening_that_went_stale_in_the_pool_is_dropped() {
    let w = world();
    let mut node = verifier_node::consensus::node::Node::open(
        verifier_node::consensus::node::NodeConfig { rng_seed: 7, ..verifier_node::consensus::node::NodeConfig::new(0) },
        w.validators[0].clone(),
        &genesis_entry(&w),
        w.keys.clone(),
        verifier_node::store::MemLog::default(),
    )
    .unwrap();
    node.on_open(10, open(&w, second(&w))).unwrap();
    assert_eq!(node.held().pooled_other, 1);
    node.tick(20);
    assert_eq!(node.held().pooled_other, 1, "still buildable at 20");
    let _ = node.tick(401);
    assert_eq!(node.held().pooled_other, 0, "market 8's registration closed at 400");
}
