//! The RocksDB log and the audit: a certified market log is stored atomically, survives a
//! restart, and audits clean; Byzantine or damaged logs are flagged at the first bad height.

use crate::common::*;
use protocol::entry::{sign_vote, Body, CommitCertificate, Entry};
use protocol::messages::SignedUpdate;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use verifier_node::app::{Built, ChainApp, Step};
use verifier_node::audit::audit;
use verifier_node::store::{Store, StoreError};

/// (entry, certificate, update bodies): genesis, enrollments, iterations with real proofs up to
/// convergence or K_max, final.
fn chain(w: &mut World) -> Vec<(Entry, CommitCertificate, Vec<SignedUpdate>)> {
    let certify = |w: &World, e: &Entry, voters: &[u16]| CommitCertificate {
        height: e.height,
        round: 0,
        hash: e.hash(),
        votes: voters.iter().map(|&i| sign_vote(&w.validators[i as usize], &w.chain, i, e.height, 0, &e.hash())).collect(),
    };
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

fn scratch(name: &str) -> std::path::PathBuf {
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
        let e = &log[i].0;
        if log[i].1.votes.len() >= 3 {
            log[i].1 = CommitCertificate {
                height: e.height,
                round: 0,
                hash: e.hash(),
                votes: [0u16, 1, 2].iter().map(|&v| sign_vote(&w.validators[v as usize], &w.chain, v, e.height, 0, &e.hash())).collect(),
            };
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
