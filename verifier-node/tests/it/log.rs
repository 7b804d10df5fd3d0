//! The RocksDB log and the audit: a certified market log is stored atomically, survives a
//! restart, and audits clean; Byzantine or damaged logs are flagged at the first bad height.

use crate::common::*;
use protocol::entry::{sign_vote, Body, CommitCertificate, Entry};
use protocol::messages::SignedUpdate;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use verifier_node::app::{Built, ChainApp, Pool, Step};
use verifier_node::audit::audit;
use verifier_node::store::{Store, StoreError};

/// A certificate of `e` signed by the world's validators `voters`.
fn certify(w: &World, e: &Entry, voters: &[u16]) -> CommitCertificate {
    CommitCertificate {
        height: e.height,
        round: 0,
        hash: e.hash(),
        votes: voters.iter().map(|&i| sign_vote(&w.validators[i as usize], &w.chain, i, e.height, 0, &e.hash())).collect(),
    }
}

/// (entry, certificate, update bodies): genesis, enrollments, iterations with real proofs up to
/// convergence or K_max, final.
pub(crate) fn chain(w: &mut World) -> Vec<(Entry, CommitCertificate, Vec<SignedUpdate>)> {
    let mut out = vec![];
    let genesis = genesis_entry(w);
    out.push((genesis.clone(), certify(w, &genesis, &[0, 1, 2]), vec![]));
    let mut app = ChainApp::new(&genesis, w.keys.clone()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let enrollments: Vec<_> = w.devices.iter().map(|d| enrollment(w, d)).collect();
    let mut step = |w: &World, app: &mut ChainApp, t: u64, enrollments: &[protocol::messages::SignedEnrollment], updates: &[SignedUpdate], voters: &[u16]| {
        let Built { entry: e, updates: included, dropped } = build(&app, t, enrollments, updates).unwrap();
        assert!(dropped.is_empty(), "{dropped:?}");
        app.validate(&e, &included, &Default::default(), &mut rng).unwrap();
        app.apply(&e, &included).unwrap();
        (e.clone(), certify(w, &e, voters), included)
    };
    out.push(step(w, &mut app, 100, &enrollments, &[], &[1, 2, 3]));
    // The (empty) closing batch at the close.
    out.push(step(w, &mut app, 150, &[], &[], &[0, 1, 2]));
    for (k, devices) in [(1u32, vec![0usize, 1]), (2, vec![0, 1, 2])] {
        let updates: Vec<_> = devices.into_iter().map(|i| update(w, i, k, k)).collect();
        let t = app.market(7).unwrap().deadline(k);
        out.push(step(w, &mut app, t, &[], &updates, &[0, 2, 3]));
    }
    // Iterate on to the stopping rule or K_max = 5.
    for k in 3..=5u32 {
        let updates: Vec<_> = (0..3).map(|i| update(w, i, k, k)).collect();
        let t = app.market(7).unwrap().deadline(k);
        out.push(step(w, &mut app, t, &[], &updates, &[0, 1, 2]));
        if app.next_due().map(|d| d.1.step) == Some(Step::Final) {
            break;
        }
    }
    out.push(step(w, &mut app, 0, &[], &[], &[0, 1, 3]));
    assert!(app.is_idle());
    out
}

pub(crate) fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gridproof-log-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn a_certified_log_survives_restart_and_audits_clean() {
    let mut w = world();
    let log = chain(&mut w);
    let dir = scratch("clean");
    {
        let store = Store::open(&dir).unwrap();
        for (e, c, u) in &log {
            store.decide(e, c, u).unwrap();
        }
        // Nothing that does not extend the tip gets in.
        let (e2, c2, u2) = &log[2];
        assert!(matches!(store.decide(e2, c2, u2), Err(StoreError::NotNext { .. })));
        let mut orphan = log[3].0.clone();
        orphan.height = 5;
        let c = CommitCertificate { height: 5, round: 0, hash: orphan.hash(), votes: vec![] };
        assert!(matches!(store.decide(&orphan, &c, &[]), Err(StoreError::NotNext { .. })));
        assert!(matches!(store.decide(&log[3].0, &log[2].1, &[]), Err(StoreError::CertificateMismatch { .. })));
    }
    // Restart: reopen and audit.
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.tip().unwrap().map(|t| t.0), Some(log.len() as u64 - 1));
    assert_eq!(store.entry(2).unwrap().unwrap(), log[2].0);
    let report = audit(&store, w.keys.clone(), &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    assert!(report.passed(), "{report:?}");
    let proofs: usize = log.iter().map(|l| l.2.len()).sum();
    assert!(proofs >= 5);
    assert_eq!((report.entries_ok, report.proofs_verified), (log.len() as u64, proofs));
    std::fs::remove_dir_all(&dir).ok();
}

/// Re-links the entries from height `h` on and re-certifies each that had a quorum by the
/// same three validators (a Byzantine majority signing whatever `h` now holds).
fn recertify(w: &World, log: &mut [(Entry, CommitCertificate, Vec<SignedUpdate>)], h: usize) {
    for i in h..log.len() {
        if i > h {
            let prev = log[i - 1].0.hash();
            log[i].0.prev_hash = prev;
        }
        if log[i].1.votes.len() >= 3 {
            log[i].1 = certify(w, &log[i].0, &[0, 1, 2]);
        }
    }
}

/// Stores `log` with `mutate` applied to one height's (entry, certificate, updates), with the
/// following entries re-linked and re-certified by the same quorum (a Byzantine majority).
fn audit_with(
    w: &World,
    mut log: Vec<(Entry, CommitCertificate, Vec<SignedUpdate>)>,
    h: usize,
    mutate: impl Fn(&mut (Entry, CommitCertificate, Vec<SignedUpdate>)),
) -> verifier_node::audit::AuditReport {
    mutate(&mut log[h]);
    recertify(w, &mut log, h);
    let dir = scratch(&format!("bad{h}-{}", rand::random::<u32>()));
    let store = Store::open(&dir).unwrap();
    for (e, c, u) in &log {
        store.decide(e, c, u).unwrap();
    }
    let report = audit(&store, w.keys.clone(), &mut ChaCha20Rng::seed_from_u64(2)).unwrap();
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
    report
}

#[test]
fn byzantine_and_damaged_logs_are_flagged_at_the_first_bad_height() {
    let mut w = world();
    let log = chain(&mut w);
    // Wrong aggregates, certified anyway by a (Byzantine) quorum.
    let r = audit_with(&w, log.clone(), 3, |(e, _, _)| {
        let Body::Iteration(b) = &mut e.body else { panic!("height 3 is iteration 1") };
        b.u[0] += 1;
    });
    assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(3), "{r:?}");
    assert!(r.first_bad.unwrap().1.contains("aggregates"));
    // Too few signatures.
    let r = audit_with(&w, log.clone(), 2, |(e, c, _)| {
        c.votes.truncate(2);
        c.hash = e.hash();
    });
    assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(2), "{r:?}");
    // An included update body missing from the store.
    let r = audit_with(&w, log.clone(), 3, |(_, _, u)| {
        assert!(u.pop().is_some(), "height 3 (iteration 1) includes updates");
    });
    assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(3), "{r:?}");
    // A final schedule root that does not match the replay.
    let last = log.len() - 1;
    let r = audit_with(&w, log, last, |(e, _, _)| {
        if let Body::Final(f) = &mut e.body {
            f.schedule_root[0] ^= 1;
        }
    });
    assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(last as u64), "{r:?}");
}

/// A height range is audited in full while the entries before it are only followed (fewer
/// proofs verified); wrong aggregates certified by a Byzantine quorum are flagged at their
/// height by a range that holds them, not by one that ends before them.
#[test]
fn a_height_range_is_audited_in_full_after_following_the_entries_before_it() {
    let mut w = world();
    let log = chain(&mut w);
    let last = log.len() as u64 - 1;
    let dir = scratch(&format!("range-{}", rand::random::<u32>()));
    let store = Store::open(&dir).unwrap();
    for (e, c, u) in &log {
        store.decide(e, c, u).unwrap();
    }
    let full = audit(&store, w.keys.clone(), &mut ChaCha20Rng::seed_from_u64(3)).unwrap();
    let tail = verifier_node::audit::audit_range(&store, w.keys.clone(), 4, None, &mut ChaCha20Rng::seed_from_u64(3)).unwrap();
    assert!(tail.passed(), "{tail:?}");
    assert_eq!((tail.entries_followed, tail.entries_ok, tail.range), (4, last - 3, (4, last)));
    assert!(tail.proofs_verified < full.proofs_verified);
    let window = verifier_node::audit::audit_range(&store, w.keys.clone(), 2, Some(3), &mut ChaCha20Rng::seed_from_u64(3)).unwrap();
    assert!(window.passed() && window.entries_ok == 2 && window.range == (2, 3), "{window:?}");
    let empty = verifier_node::audit::audit_range(&store, w.keys.clone(), last + 1, None, &mut ChaCha20Rng::seed_from_u64(3)).unwrap();
    assert_eq!(empty.first_bad.map(|b| b.0), Some(last + 1));
    drop(store);
    std::fs::remove_dir_all(&dir).ok();

    // Wrong aggregates at height 3, certified anyway: flagged by a range that holds it.
    let mut damaged = log.clone();
    let Body::Iteration(b) = &mut damaged[3].0.body else { panic!("height 3 is iteration 1") };
    b.u[0] += 1;
    recertify(&w, &mut damaged, 3);
    let dir = scratch(&format!("range-bad-{}", rand::random::<u32>()));
    let store = Store::open(&dir).unwrap();
    for (e, c, u) in &damaged {
        store.decide(e, c, u).unwrap();
    }
    let inside = verifier_node::audit::audit_range(&store, w.keys.clone(), 2, Some(last), &mut ChaCha20Rng::seed_from_u64(4)).unwrap();
    assert_eq!(inside.first_bad.as_ref().map(|b| b.0), Some(3), "{inside:?}");
    let before = verifier_node::audit::audit_range(&store, w.keys.clone(), 2, Some(2), &mut ChaCha20Rng::seed_from_u64(4)).unwrap();
    assert!(before.passed(), "the damage is after the range: {before:?}");
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
}

/// What the store holds on disk, in all and in update bodies.
fn live(store: &Store) -> (u64, u64) {
    let per_cf = store.flushed_bytes().unwrap();
    (per_cf.iter().map(|c| c.1).sum(), per_cf.iter().find(|c| c.0 == "updates").unwrap().1)
}

/// Ten market days on one chain (each opened while the previous one schedules, so their
/// entries interleave), every entry certified into a RocksDB store; then the first eight
/// markets are pruned as a validator does after their retention.
#[test]
fn pruned_markets_keep_entries_and_certificates_replay_by_certificate_and_audit() {
    let mut w = world();
    let dir = scratch("prune");
    let store = Store::open(&dir).unwrap();
    let genesis = genesis_entry(&w);
    store.decide(&genesis, &certify(&w, &genesis, &[0, 1, 2]), &[]).unwrap();
    let mut app = ChainApp::new(&genesis, w.keys.clone()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let mut commit = |w: &World, app: &mut ChainApp, built: Built| {
        assert!(built.dropped.is_empty(), "{:?}", built.dropped);
        app.validate(&built.entry, &built.updates, &Default::default(), &mut rng).unwrap();
        app.apply(&built.entry, &built.updates).unwrap();
        store.decide(&built.entry, &certify(w, &built.entry, &[0, 1, 2]), &built.updates).unwrap();
    };
    let span = |m: &protocol::entry::MarketSpec| protocol::market::execution_span(m);
    let mut specs = vec![w.genesis.market.clone()];
    let mut enrollments: Vec<protocol::messages::SignedEnrollment> = w.devices.iter().map(|d| enrollment(&w, d)).collect();
    let mut updates: Vec<SignedUpdate> = Vec::new();
    for k in 1..=5 {
        updates.extend((0..3).map(|i| update(&mut w, i, k, k)));
    }
    let mut now = 0;
    let mut opens = Vec::new();
    while !app.is_idle() || specs.len() < 10 {
        // Open the next day once the latest market schedules and nothing is due yet.
        let latest = specs.last().unwrap().clone();
        let scheduling = app.market(latest.market_id).is_some_and(|m| m.admm().is_some());
        if scheduling && specs.len() < 10 && opens.is_empty() {
            let id = latest.market_id + 1;
            let spec = market_spec(&w, id, now + 250, span(&latest).1);
            enrollments.extend(w.devices.iter().map(|d| enrollment_in(&w, d, &spec)));
            for k in 1..=5 {
                for i in 0..3 {
                    updates.push(update_in(&mut w, id, i, k, k));
                }
            }
            opens.push(open(&w, spec.clone()));
            specs.push(spec);
        }
        let t = now + 1;
        if !opens.is_empty() && app.due_at(t).is_none() {
            let built = app.build(t, Pool { opens: &opens, ..Default::default() }, &Default::default(), &mut ChaCha20Rng::seed_from_u64(2)).unwrap();
            assert!(matches!(built.entry.body, Body::Open(_)));
            commit(&w, &mut app, built);
            opens.clear();
            now = t;
            continue;
        }
        let (from, _) = app.next_due().unwrap();
        now = now.max(from);
        let pending: Vec<_> = enrollments.iter().filter(|e| app.market(e.body.market_id).is_some_and(|m| !m.enrolled().contains_key(&e.body.device))).cloned().collect();
        let open_now: Vec<_> = updates.iter().filter(|u| app.open_iteration(u.body.market_id) == Some(u.body.iteration)).cloned().collect();
        let built = build(&app, now, &pending, &open_now).unwrap();
        commit(&w, &mut app, built);
    }
    let tip = app.tip().height;
    let ids: Vec<u64> = specs.iter().map(|s| s.market_id).collect();
    assert_eq!(ids.len(), 10);
    // The days interleave: a registration batch of day 2 lies between day 1's iterations.
    let (open8, _) = app.market(8).unwrap().heights();
    assert!(open8 < app.market(7).unwrap().heights().1.unwrap());
    let before = live(&store);

    // Prune the first eight days, as the validator's host does once their retention passed.
    let kept_root = app.market(16).unwrap().final_body().unwrap();
    let mut pruned_bodies = 0;
    for id in &ids[..8] {
        let (from, to) = app.market(*id).unwrap().heights();
        let p = store.prune_market(*id, from, to.unwrap()).unwrap();
        assert!(p.bodies >= 3, "{p:?}");
        pruned_bodies += p.bodies;
        assert!(store.is_pruned(*id).unwrap());
    }
    store.compact_updates().unwrap();
    let after = live(&store);
    eprintln!("10 markets, 3 devices, T = 4, {tip} entries: {before:?} bytes (all, update bodies) before pruning 8 markets ({pruned_bodies} bodies), {after:?} after");
    // What is left of the update bodies is the two kept markets' (within a file's overhead).
    assert!(after.1 * 3 < before.1, "{before:?} → {after:?}");
    assert!(after.0 < before.0, "{before:?} → {after:?}");

    // Entries and certificates stay; pruned iteration entries come without bodies, the kept
    // markets' with theirs.
    let mut client = protocol::entry::LightClient::new(&genesis).unwrap();
    let mut replayed = ChainApp::new(&genesis, w.keys.clone()).unwrap();
    let (mut served_pruned, mut served_whole) = (0, 0);
    for h in 1..=tip {
        let c = store.certified(h).unwrap().unwrap();
        let market = c.entry.body.market_id();
        if let Body::Iteration(_) = &c.entry.body {
            let pruned_market = ids[..8].contains(&market.unwrap());
            assert_eq!(c.is_pruned(), pruned_market, "height {h}");
            if c.is_pruned() {
                served_pruned += 1;
                // A light client refuses missing bodies as a whole entry and takes them as a
                // pruned one.
                assert!(client.clone().accept_certified(&c).is_err());
                client.accept_pruned(&c).unwrap();
            } else {
                served_whole += 1;
                client.accept_certified(&c).unwrap();
            }
        } else {
            assert!(client.accept_pruned(&c).is_err(), "only a bodiless iteration entry is pruned");
            client.accept_certified(&c).unwrap();
        }
        // A restarted validator rebuilds its state from what its store serves: pruned entries
        // only as pruned history.
        if c.is_pruned() {
            if !replayed.market(market.unwrap()).unwrap().is_pruned() {
                // Missing bodies are not taken for pruned history by `apply`.
                assert_eq!(replayed.clone().apply(&c.entry, &c.updates).unwrap_err().label(), "missing_updates");
            }
            replayed.apply_pruned(&c.entry).unwrap();
        } else {
            replayed.apply(&c.entry, &c.updates).unwrap();
        }
    }
    assert!(served_pruned >= 8 && served_whole >= 2, "{served_pruned} {served_whole}");
    assert_eq!(replayed.tip(), app.tip());
    for id in &ids[..8] {
        let m = replayed.market(*id).unwrap();
        assert!(m.is_final() && m.is_pruned());
        assert_eq!(m.final_body().unwrap_err().label(), "pruned");
    }
    // The kept markets' state is whole: their final body is recomputed exactly.
    assert_eq!(replayed.market(16).unwrap().final_body().unwrap(), kept_root);

    // The audit checks the kept markets in full and follows the pruned ones by certificate.
    let report = audit(&store, w.keys.clone(), &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    assert!(report.passed(), "{report:?}");
    let kept_proofs = updates.iter().filter(|u| ids[8..].contains(&u.body.market_id)).count();
    assert!(report.entries_pruned >= 8 * 3, "{report:?}");
    assert_eq!(report.entries_ok + report.entries_pruned, tip + 1);
    assert!(report.proofs_verified > 0 && report.proofs_verified <= kept_proofs, "{report:?}");

    // Bodies deleted from a market that has no final entry were not pruned by the rule: the
    // same log cut before day 10's final entry, with day 10's bodies deleted, fails the audit.
    let (open16, final16) = app.market(16).unwrap().heights();
    let cut_dir = scratch("prune-cut");
    let cut = Store::open(&cut_dir).unwrap();
    for h in 0..final16.unwrap() {
        let c = store.certified(h).unwrap().unwrap();
        cut.decide(&c.entry, &c.certificate, &c.updates).unwrap();
    }
    cut.prune_market(16, open16, final16.unwrap() - 1).unwrap();
    let report = audit(&cut, w.keys.clone(), &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    let (_, why) = report.first_bad.clone().expect("the cut log fails");
    assert!(why.contains("market 16 has no update bodies but no final entry"), "{report:?}");
    std::fs::remove_dir_all(&cut_dir).ok();
    std::fs::remove_dir_all(&dir).ok();
}

/// A payload is written ahead from borrowed parts (its bodies are megabytes); the bytes are
/// exactly those of the owned record, so a restarted node reads the payload back whole.
#[test]
fn a_payload_written_ahead_from_borrowed_parts_reads_back_as_the_record() {
    use verifier_node::consensus::wire::WalRecord;
    let mut w = world();
    let log = chain(&mut w);
    let (entry, _, updates) = log.iter().find(|(e, _, u)| matches!(e.body, Body::Iteration(_)) && !u.is_empty()).expect("an iteration entry with bodies");
    let bytes = WalRecord::encode_payload(entry, updates);
    let owned = WalRecord::Payload { entry: entry.clone(), updates: updates.clone() };
    assert_eq!(bytes, protocol::codec::encode(&owned));
    let read: WalRecord = protocol::codec::decode("wal record", &bytes, verifier_node::store::MAX_WAL_RECORD).unwrap();
    assert_eq!(read, owned);
}
