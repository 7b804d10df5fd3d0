//! The RocksDB log and the audit: a certified market log is stored atomically, survives a
//! restart, and audits clean; Byzantine or damaged logs are flagged at the first bad height.

mod common;

use common::*;
use protocol::entry::{sign_vote, Body, CommitCertificate, Entry, FinalBody};
use protocol::merkle::final_root;
use protocol::messages::SignedUpdate;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use verifier_node::audit::audit;
use verifier_node::store::{Store, StoreError};

/// (entry, certificate, update bodies) for heights 0..=4: genesis, enrollments, iterations 1
/// and 2 with real proofs, final.
fn chain(w: &mut World) -> Vec<(Entry, CommitCertificate, Vec<SignedUpdate>)> {
    let certify = |w: &World, e: &Entry, voters: &[u16]| CommitCertificate {
        height: e.height,
        hash: e.hash(),
        votes: voters.iter().map(|&i| sign_vote(&w.validators[i as usize], &w.chain, i, e.height, &e.hash())).collect(),
    };
    let mut out = vec![];
    let genesis = Entry { chain_id: w.chain, height: 0, prev_hash: [0; 32], timestamp_ms: 0, body: Body::Genesis(w.genesis.clone()) };
    out.push((genesis.clone(), certify(w, &genesis, &[0, 1, 2]), vec![]));
    let next = |prev: &Entry, t: u64, body: Body| Entry { chain_id: prev.chain_id, height: prev.height + 1, prev_hash: prev.hash(), timestamp_ms: t, body };
    let enrollments = w.devices.iter().map(|d| enrollment(w, d)).collect();
    let e1 = next(&genesis, 10, Body::Enrollment(enrollments));
    out.push((e1.clone(), certify(w, &e1, &[1, 2, 3]), vec![]));
    let mut app = validator(w);
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let mut prev = e1;
    for (k, devices, t) in [(1u32, vec![0usize, 1], 1100u64), (2, vec![0, 1, 2], 1200)] {
        for i in devices {
            let u = update(w, i, k, k);
            app.on_update(t - 50, u).unwrap();
        }
        app.tick(t);
        let (p, dropped) = app.propose(&mut rng).unwrap();
        assert!(dropped.is_empty());
        app.apply(&p).unwrap();
        let e = next(&prev, t, Body::Iteration(p.body.clone()));
        out.push((e.clone(), certify(w, &e, &[0, 2, 3]), p.updates));
        prev = e;
    }
    let engine = app.admm().unwrap();
    let fin = FinalBody {
        market_id: 7,
        iterations: engine.iteration(),
        converged: false,
        schedule_root: final_root(engine.schedules()),
        prices: engine.prices().iter().map(|p| p.raw()).collect(),
    };
    let e4 = next(&prev, 1300, Body::Final(fin));
    out.push((e4.clone(), certify(w, &e4, &[0, 1, 3]), vec![]));
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
        let c = CommitCertificate { height: 5, hash: orphan.hash(), votes: vec![] };
        assert!(matches!(store.decide(&orphan, &c, &[]), Err(StoreError::NotNext { .. })));
        assert!(matches!(store.decide(&log[3].0, &log[2].1, &[]), Err(StoreError::CertificateMismatch { .. })));
    }
    // Restart: reopen and audit.
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.tip().unwrap().map(|t| t.0), Some(4));
    assert_eq!(store.entry(2).unwrap().unwrap(), log[2].0);
    let report = audit(&store, w.keys.clone(), &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    assert!(report.passed(), "{report:?}");
    assert_eq!((report.entries_ok, report.proofs_verified), (5, 5));
    std::fs::remove_dir_all(&dir).ok();
}

/// Stores `log` with `mutate` applied to one height's (entry, certificate, updates), with the
/// following entries re-linked and re-certified by the same quorum (a Byzantine majority).
fn audit_with(w: &World, mut log: Vec<(Entry, CommitCertificate, Vec<SignedUpdate>)>, h: usize, mutate: impl Fn(&mut (Entry, CommitCertificate, Vec<SignedUpdate>))) -> verifier_node::audit::AuditReport {
    mutate(&mut log[h]);
    for i in h..log.len() {
        if i > h {
            let prev = log[i - 1].0.hash();
            log[i].0.prev_hash = prev;
        }
        let e = &log[i].0;
        if log[i].1.votes.len() >= 3 {
            log[i].1 = CommitCertificate {
                height: e.height,
                hash: e.hash(),
                votes: [0u16, 1, 2].iter().map(|&v| sign_vote(&w.validators[v as usize], &w.chain, v, e.height, &e.hash())).collect(),
            };
        }
    }
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
        if let Body::Iteration(b) = &mut e.body {
            b.u[0] += 1;
        }
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
    let r = audit_with(&w, log.clone(), 2, |(_, _, u)| {
        u.pop();
    });
    assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(2), "{r:?}");
    // A final schedule root that does not match the replay.
    let r = audit_with(&w, log, 4, |(e, _, _)| {
        if let Body::Final(f) = &mut e.body {
            f.schedule_root[0] ^= 1;
        }
    });
    assert_eq!(r.first_bad.as_ref().map(|b| b.0), Some(4), "{r:?}");
}
