//! Chain-state snapshots and checkpoints (docs/protocol.md §6.10): every entry's state root is
//! the hash of the state it extends; a snapshot restores that state exactly, at every phase of
//! a market; a store started from a checkpoint replays and audits from its base; and a served
//! snapshot that does not match the checkpoint is refused, with the reason.

use crate::common::*;
use crate::log::{chain, scratch};
use protocol::codec::{decode, encode};
use protocol::entry::{Body, Certified};
use protocol::snapshot::{state_root, verify_checkpoint, ChainSnapshot, Checkpoint, Progress, SnapshotError, MAX_SNAPSHOT_BYTES};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use verifier_node::app::ChainApp;
use verifier_node::audit::audit;
use verifier_node::consensus::node::{Node, NodeConfig};
use verifier_node::store::Store;

#[test]
fn a_snapshot_restores_the_state_at_every_height_and_later_entries_check_against_it() {
    let mut w = world();
    let log = chain(&mut w);
    let genesis = &log[0].0;
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut app = ChainApp::new(genesis, w.keys.clone()).unwrap();
    let mut phases = std::collections::BTreeSet::new();
    for h in 1..log.len() {
        let (e, _, u) = &log[h];
        // The entry's state root is the hash of the encoded state it extends.
        let snap = app.snapshot();
        let bytes = encode(&snap);
        assert_eq!(app.state_root(), Some(e.state_root), "height {h}");
        assert_eq!(state_root(&bytes), e.state_root, "height {h}");
        phases.insert(match snap.markets[0].progress {
            Progress::Registration => "registration",
            Progress::Scheduling(_) => "scheduling",
            Progress::Final { .. } => "final",
            Progress::Pruned { .. } => "pruned",
        });
        // Restored from its bytes, the state is the same and checks every later entry in
        // full (signatures, proofs, aggregates, roots) to the same tip.
        let decoded: ChainSnapshot = decode("snapshot", &bytes, MAX_SNAPSHOT_BYTES).unwrap();
        let mut restored = ChainApp::from_snapshot(genesis, w.keys.clone(), &decoded).unwrap();
        assert_eq!(restored.snapshot(), snap, "height {h}");
        for (later, _, bodies) in &log[h..] {
            restored.validate(later, bodies, &Default::default(), &mut rng).unwrap_or_else(|r| panic!("restored at {h}, entry {}: {r}", later.height));
            restored.apply(later, bodies).unwrap();
        }
        // A proposal carrying another root is refused, with its label.
        let mut wrong = e.clone();
        wrong.state_root[0] ^= 1;
        assert_eq!(app.validate(&wrong, u, &Default::default(), &mut rng).unwrap_err().label(), "state_root", "height {h}");
        app.apply(e, u).unwrap();
        assert_eq!(restored.snapshot(), {
            let mut fin = app.clone();
            for (later, _, bodies) in &log[h + 1..] {
                fin.apply(later, bodies).unwrap();
            }
            fin.snapshot()
        });
    }
    // Registration and scheduling states were restored above; the final one here.
    assert_eq!(phases.into_iter().collect::<Vec<_>>(), ["registration", "scheduling"], "the states entries extend");
    let fin = app.snapshot();
    assert!(matches!(fin.markets[0].progress, Progress::Final { .. }));
    let restored = ChainApp::from_snapshot(genesis, w.keys.clone(), &fin).unwrap();
    assert_eq!(restored.snapshot(), fin);
    assert!(restored.is_idle() && restored.market(7).unwrap().is_final());
}

#[test]
fn a_store_started_from_a_checkpoint_replays_and_audits_from_its_base_and_refuses_a_wrong_snapshot() {
    let mut w = world();
    let log = chain(&mut w);
    let genesis = log[0].0.clone();
    let Body::Genesis(g) = &genesis.body else { unreachable!() };
    // The state at height 4 (mid-scheduling), as a validator's store keeps it for entry 4.
    let base = 4usize;
    let mut app = ChainApp::new(&genesis, w.keys.clone()).unwrap();
    let mut full = app.clone();
    for (e, _, u) in &log[1..] {
        full.apply(e, u).unwrap();
    }
    for (e, _, u) in &log[1..base] {
        app.apply(e, u).unwrap();
    }
    let state = encode(&app.snapshot());
    let cp_entry = Certified { entry: log[base].0.clone(), certificate: log[base].1.clone(), updates: log[base].2.clone() };
    let checkpoint = Checkpoint { height: base as u64, hash: cp_entry.entry.hash() };
    assert_eq!(checkpoint.to_string().parse::<Checkpoint>().unwrap(), checkpoint);

    // What a node starting from the checkpoint accepts, and what it refuses.
    let check = |cp: &Checkpoint, c: &Certified, s: &[u8]| verify_checkpoint(&w.chain, &g.validators, cp, c, s, 0);
    assert_eq!(check(&checkpoint, &cp_entry, &state).unwrap(), app.snapshot());
    let other = Checkpoint { height: base as u64, hash: log[base - 1].0.hash() };
    assert!(matches!(check(&other, &cp_entry, &state), Err(SnapshotError::NotCheckpoint { .. })));
    let mut tampered = state.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(matches!(check(&checkpoint, &cp_entry, &tampered), Err(SnapshotError::Root { .. })));
    let mut few = cp_entry.clone();
    few.certificate.votes.truncate(2);
    assert!(check(&checkpoint, &few, &state).unwrap_err().to_string().contains("quorum"));
    let mut stripped = cp_entry.clone();
    stripped.updates.pop();
    assert!(matches!(check(&checkpoint, &stripped, &state), Err(SnapshotError::Entry(_))));
    // Every body withheld: taken for pruned history only once the market executed.
    stripped.updates.clear();
    assert!(stripped.is_pruned());
    assert_eq!(check(&checkpoint, &stripped, &state), Err(SnapshotError::PrunedEarly { market_id: 7 }));
    let executed = protocol::market::execution_span(&g.market).1;
    assert!(verify_checkpoint(&w.chain, &g.validators, &checkpoint, &stripped, &state, executed).is_ok());
    let mut earlier = ChainApp::new(&genesis, w.keys.clone()).unwrap();
    for (e, _, u) in &log[1..base - 1] {
        earlier.apply(e, u).unwrap();
    }
    assert!(matches!(check(&checkpoint, &cp_entry, &encode(&earlier.snapshot())), Err(SnapshotError::Root { .. })));
    assert!("4".parse::<Checkpoint>().is_err() && format!("0:{}", protocol::ids::hex(&[0; 32])).parse::<Checkpoint>().is_err());

    // A store started from it holds the genesis and heights from the base on.
    let dir = scratch("checkpoint");
    let store = Store::open(&dir).unwrap();
    store.start_at_checkpoint(&genesis, &cp_entry, &state).unwrap();
    assert!(store.start_at_checkpoint(&genesis, &cp_entry, &state).is_err(), "only an empty store starts from a checkpoint");
    for (e, c, u) in &log[base + 1..] {
        store.decide(e, c, u).unwrap();
    }
    assert_eq!(store.base().unwrap(), Some(base as u64));
    assert!(store.certified(base as u64 - 1).unwrap().is_none() && store.certified(0).unwrap().is_some());
    // A validator opens on it: the snapshot, then the entries after the base.
    let node = Node::open(NodeConfig { rng_seed: 1, ..NodeConfig::new(0) }, w.validators[0].clone(), &genesis, w.keys.clone(), &store).unwrap();
    assert_eq!(node.app().tip(), full.tip());
    assert_eq!(node.app().snapshot(), full.snapshot());
    drop(node);
    // The audit checks the base entry and every later one in full on the restored state.
    let report = audit(&store, w.keys.clone(), &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    assert!(report.passed(), "{report:?}");
    assert_eq!(report.base, Some(base as u64));
    assert_eq!(report.entries_ok, (log.len() - base) as u64, "{report:?}");
    let later_proofs: usize = log[base..].iter().map(|l| l.2.len()).sum();
    assert_eq!(report.proofs_verified, later_proofs);
    drop(store);
    std::fs::remove_dir_all(&dir).ok();

    // A store whose snapshot does not hash to the base entry's root neither opens nor audits.
    let dir = scratch("checkpoint-bad");
    let store = Store::open(&dir).unwrap();
    store.start_at_checkpoint(&genesis, &cp_entry, &encode(&earlier.snapshot())).unwrap();
    let err = Node::open(NodeConfig { rng_seed: 1, ..NodeConfig::new(0) }, w.validators[0].clone(), &genesis, w.keys.clone(), &store).err().expect("refused");
    assert!(err.to_string().contains("does not hash to the entry's state root"), "{err}");
    let report = audit(&store, w.keys.clone(), &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    assert_eq!(report.first_bad.as_ref().map(|b| b.0), Some(base as u64), "{report:?}");
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
}

/// Real processes: after market 1, validator 3 loses its database and starts again from a
/// checkpoint read off validator 0's `/checkpoint` — it fetches the snapshot from a peer, checks
/// it, syncs only what follows and takes part in market 2; a gateway started from the same
/// checkpoint (`device run --checkpoint`) never sees market 1 and bids in market 2, which an
/// operator opens after the checkpoint. Every database from the checkpoint on is identical, and
/// the audit passes on validator 3's, from its base.
#[test]
fn a_validator_and_a_gateway_start_from_a_checkpoint() {
    use crate::cluster::*;
    use std::time::{Duration, Instant};

    let c = Cluster::init_with("checkpoint", 4, 8, 6, 1500, 3, &["--slot-seconds", "900", "--execution-delay-s", "0"]);
    for i in 0..4 {
        let text = std::fs::read_to_string(c.config(i)).unwrap();
        assert!(text.contains("snapshot_interval = 200"), "init writes the default: {text}");
        std::fs::write(c.config(i), text.replace("snapshot_interval = 200", "snapshot_interval = 3")).unwrap();
    }
    c.start_all();
    let devices: Vec<Device> = (0..3).map(Device::new).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let seen = rt.block_on(run_devices(&c, &devices, 0, Duration::from_secs(60)));
    assert!(matches!(seen.last().map(|c| &c.entry.body), Some(Body::Final(_))), "devices saw no final entry");
    c.wait_final(Duration::from_secs(20));

    // The operator reads a checkpoint off a validator it trusts.
    let cp: serde_json::Value = serde_json::from_str(&c.get(0, "/checkpoint").expect("/checkpoint")).unwrap();
    let checkpoint = cp["checkpoint"].as_str().unwrap().to_string();
    let base: u64 = cp["height"].as_u64().unwrap();
    assert!(base >= 3 && base % 3 == 0, "{cp}");
    assert!(c.get(0, "/metrics").unwrap().contains("gridproof_snapshots_written_total"), "metrics");

    // Validator 3 starts over from it.
    c.kill(3);
    std::fs::remove_dir_all(c.db(3)).unwrap();
    c.start_with(3, &["--checkpoint", &checkpoint]);
    let t0 = Instant::now();
    let height = |i| c.status(i).and_then(|s| s["height"].as_u64());
    while height(3).is_none_or(|h| Some(h) != height(0)) {
        assert!(t0.elapsed() < Duration::from_secs(30), "validator 3 did not catch up from the checkpoint:\n{}", c.log(3));
        std::thread::sleep(Duration::from_millis(200));
    }
    let log3 = c.log(3);
    assert!(log3.contains("checkpoint snapshot verified and stored") && log3.contains("state restored from the checkpoint snapshot"), "{log3}");

    // A gateway starts from the checkpoint too, then the operator opens market 2.
    let (gateway, device) = c.gateway("home");
    let gw = c.spawn_device(&gateway, &["run", "--markets", "1", "--timeout-s", "90", "--checkpoint", &checkpoint], "gateway.log");
    // (Slots of 15 min, as the genesis market's, so that the gateway's EV can charge its energy.)
    let key = c.dir.join("cluster/operator.key");
    let args = ["open-market", "--operator-key", key.to_str().unwrap(), "--market-id", "2", "--slots", "4", "--slot-seconds", "900"];
    let more = ["--registration-s", "8", "--iteration-ms", "1500", "--max-iterations", "3", "--devices", "3", "--execution-delay-s", "0"];
    let out = crate::standing::cli(&c, &[&args[..], &more[..]].concat());
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let text = c.wait_device(gw, "gateway.log", Duration::from_secs(100));
    assert!(text.contains("checkpoint snapshot verified and saved"), "{text}");
    assert!(c.dir.join("home.state.checkpoint").exists(), "the checkpoint is kept next to the state file");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(c.dir.join("home.state.json")).unwrap()).unwrap();
    let markets = state["markets"].as_object().unwrap();
    assert!(!markets.contains_key("1"), "market 1 ended before the checkpoint: {state}");
    assert!(markets["2"]["final_prices"].is_array(), "the gateway holds market 2's final prices: {state}");
    c.wait_final(Duration::from_secs(30));
    c.stop_all();

    // Every database holds the same entries from the checkpoint on; validator 3's only those.
    let open = |i| verifier_node::store::Store::open(&c.db(i)).unwrap();
    let (s0, s3) = (open(0), open(3));
    let tip = s0.tip().unwrap().unwrap();
    assert_eq!(s3.tip().unwrap().unwrap(), tip);
    assert_eq!(s3.base().unwrap(), Some(base));
    assert!(s3.certified(base - 1).unwrap().is_none());
    let mut ours = 0;
    for h in base..=tip.0 {
        let (a, b) = (s0.certified(h).unwrap().unwrap(), s3.certified(h).unwrap().unwrap());
        assert_eq!(protocol::codec::encode(&a.entry), protocol::codec::encode(&b.entry), "height {h}");
        ours += a.updates.iter().filter(|u| protocol::ids::hex(&u.body.device.0) == device).count();
    }
    assert!(ours >= 1, "the gateway's updates are in market 2's iterations");
    drop((s0, s3));
    let (ok, out) = c.audit(3);
    assert!(ok, "audit of validator 3: {out}");
    assert!(out.contains(&format!("starts from the checkpoint at height {base}")), "{out}");
    let (ok, out) = c.audit(0);
    assert!(ok, "audit of validator 0: {out}");
}
