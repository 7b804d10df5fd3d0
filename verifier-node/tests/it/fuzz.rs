//! Structured fuzzing on the stable toolchain: random bytes become peer messages, device
//! requests and WAL records through `arbitrary` (feature `arbitrary`), are encoded and
//! decoded as on the wire, and are fed to a validator: `Node::on_peer`, the device request
//! handler (`host::parse_device_request`, then admission), and WAL replay at a restart. No
//! input panics, every node stays within its bounds, and a corrupt WAL is a typed error.
//!
//! 10,000 cases in all (4,000 + 3,000 + 3,000), from a fixed seed; replay another with
//! `FUZZ_SEED=<u64> cargo nextest run --workspace -E 'test(/^fuzz::/)'`.

use arbitrary::{Arbitrary, Unstructured};
use crate::common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use protocol::codec::{decode, encode};
use protocol::entry::Entry;
use protocol::messages::DeviceRequest;
use verifier_node::consensus::node::{Node, NodeConfig, MAX_ANNOUNCED_PER_PROPOSER, MAX_PAYLOADS};
use verifier_node::consensus::wire::{PeerMsg, WalRecord, MAX_PEER_FRAME};
use verifier_node::host::parse_device_request;
use verifier_node::store::{Log, MemLog};

fn seed() -> u64 {
    std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6772_6964)
}

fn runner(cases: u32, salt: u64) -> TestRunner {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(seed() ^ salt).to_le_bytes());
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 256, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// A T = 4 market whose registration is open for 150 ms from genesis at t = 0.
fn market() -> (World, Entry) {
    let w = world();
    let g = genesis_entry(&w);
    (w, g)
}

fn node(w: &World, genesis: &Entry, index: u16, log: MemLog) -> Node<MemLog> {
    Node::open(NodeConfig { rng_seed: 7, ..NodeConfig::new(index) }, w.validators[index as usize].clone(), genesis, w.keys.clone(), log).unwrap()
}

/// A value of `T` from raw bytes, passed through the wire codec as a receiver would get it:
/// `None` if the encoding is refused (e.g. a field element ≥ the modulus).
fn wire<T: for<'a> Arbitrary<'a> + borsh::BorshSerialize + borsh::BorshDeserialize>(bytes: &[u8], cap: usize) -> Vec<T> {
    let mut u = Unstructured::new(bytes);
    let mut out = vec![];
    while let Ok(v) = T::arbitrary(&mut u) {
        if let Ok(v) = decode::<T>("fuzz", &encode(&v), cap) {
            out.push(v);
        }
        if u.is_empty() || out.len() >= 16 {
            break;
        }
    }
    out
}

#[test]
fn arbitrary_peer_messages_never_panic_a_node_nor_grow_it() {
    let (w, genesis) = market();
    // Valid-looking traffic to mutate: real consensus messages of a running node.
    let mut n = node(&w, &genesis, 1, MemLog::default());
    let mut real: Vec<PeerMsg> = vec![];
    for t in [0, 80, 200, 2000] {
        real.extend(n.tick(t).into_iter().filter_map(|o| match o {
            verifier_node::consensus::node::Output::Broadcast(m) | verifier_node::consensus::node::Output::Send { msg: m, .. } => Some(m),
            _ => None,
        }));
    }
    let real: Vec<Vec<u8>> = real.iter().map(encode).collect();
    let mut runner = runner(4000, 1);
    let strategy = (proptest::collection::vec(any::<u8>(), 0..2048), 0u16..6, 0u64..20_000, any::<(u16, u16, u8)>());
    runner
        .run(&strategy, |(bytes, from, now, (pick, at, flip))| {
            let mut node = node(&w, &genesis, 0, MemLog::default());
            let mut msgs: Vec<PeerMsg> = wire(&bytes, MAX_PEER_FRAME);
            // And one real message with one byte flipped, if it still decodes.
            if !real.is_empty() {
                let mut m = real[pick as usize % real.len()].clone();
                let i = at as usize % m.len();
                m[i] ^= flip;
                if let Ok(m) = decode::<PeerMsg>("fuzz", &m, MAX_PEER_FRAME) {
                    msgs.push(m);
                }
            }
            for (i, m) in msgs.into_iter().enumerate() {
                FED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if m.check(from % 5, 0, 4).is_ok() {
                    PASSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                *KINDS.lock().unwrap().entry(m.kind()).or_default() += 1;
                node.on_peer(now + i as u64, from % 5, m);
                node.tick(now + i as u64 + 1);
            }
            let held = node.held();
            prop_assert!(held.payloads <= MAX_PAYLOADS, "{held:?}");
            prop_assert!(held.announced <= 4 * MAX_ANNOUNCED_PER_PROPOSER, "{held:?}");
            prop_assert!(node.fatal().is_none(), "hostile peer input made the node fatal: {:?}", node.fatal());
            Ok(())
        })
        .unwrap();
    // The input reaches the node: every kind of message, a good share past the door checks.
    let (fed, passed) = (FED.load(std::sync::atomic::Ordering::Relaxed), PASSED.load(std::sync::atomic::Ordering::Relaxed));
    let kinds = KINDS.lock().unwrap().clone();
    eprintln!("fed {fed} messages, {passed} past the door checks; by kind {kinds:?}");
    assert!(passed * 10 > fed, "too few messages pass the door checks: {passed} of {fed}");
    assert_eq!(kinds.len(), 9, "{kinds:?}");
}

static FED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static PASSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static KINDS: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>> = std::sync::Mutex::new(std::collections::BTreeMap::new());

#[test]
fn arbitrary_device_requests_are_parsed_or_refused_with_a_label() {
    let (w, genesis) = market();
    let good = encode(&DeviceRequest::Enroll(enrollment(&w, &w.devices[0])));
    let key = w.devices[0].key.verifying_key().to_bytes();
    let mut runner = runner(3000, 2);
    let strategy = (proptest::collection::vec(any::<u8>(), 0..1024), any::<(u16, u8)>(), 0u64..400);
    runner
        .run(&strategy, |(bytes, (at, flip), now)| {
            let mut node = node(&w, &genesis, 0, MemLog::default());
            let mut frames: Vec<Vec<u8>> = vec![bytes.clone()];
            frames.extend(wire::<DeviceRequest>(&bytes, protocol::messages::MAX_DEVICE_FRAME).iter().map(encode));
            let mut flipped = good.clone();
            let i = at as usize % flipped.len();
            flipped[i] ^= flip;
            frames.push(flipped);
            for f in frames {
                // As from device 0's connection, and as from another key.
                for k in [key, [9u8; 32]] {
                    match parse_device_request(&f, k) {
                        Ok(DeviceRequest::Enroll(e)) => {
                            if node.on_enrollment(now, e).is_ok() {
                                ADMITTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        Ok(DeviceRequest::Update(u)) => {
                            if let Err(r) = node.on_update(now, u) {
                                prop_assert!(!r.label().is_empty());
                            }
                        }
                        Ok(DeviceRequest::Withdraw(x)) => {
                            if let Err(r) = node.on_withdrawal(now, x) {
                                prop_assert!(!r.label().is_empty());
                            }
                        }
                        Ok(DeviceRequest::Open(x)) => {
                            if let Err(r) = node.on_open(now, x) {
                                prop_assert!(!r.label().is_empty());
                            }
                        }
                        Ok(DeviceRequest::Revoke(x)) => {
                            if let Err(r) = node.on_revocation(now, x) {
                                prop_assert!(!r.label().is_empty());
                            }
                        }
                        Ok(DeviceRequest::Meter(x)) => {
                            if let Err(r) = node.on_readings(now, x) {
                                prop_assert!(!r.label().is_empty());
                            }
                        }
                        Ok(DeviceRequest::Subscribe { .. } | DeviceRequest::Snapshot { .. }) => {}
                        Err(e) => prop_assert!(["malformed", "wrong_sender"].contains(&e.label()), "{e}"),
                    }
                }
            }
            node.tick(now + 1);
            prop_assert!(node.held().pooled_enrollments <= 3);
            prop_assert_eq!(node.held().pooled_other, 0, "arbitrary bytes carry no valid operator or authority signature");
            Ok(())
        })
        .unwrap();
    // The flipped-byte enrollments that still verify reach the pool (flips in unused bits).
    assert!(ADMITTED.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

static ADMITTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static REPLAYED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static STOPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[test]
fn arbitrary_wal_records_replay_or_stop_the_node_with_a_typed_error() {
    let (w, genesis) = market();
    let mut runner = runner(3000, 3);
    let strategy = (proptest::collection::vec(any::<u8>(), 0..2048), proptest::collection::vec(any::<u8>(), 0..64), any::<bool>(), any::<bool>());
    runner
        .run(&strategy, |(bytes, garbage, corrupt, tame)| {
            let mut log = MemLog::default();
            let mut records: Vec<WalRecord> = wire(&bytes, verifier_node::store::MAX_WAL_RECORD);
            if tame {
                // Half the cases keep every field in range, so replay reaches the core.
                records.iter_mut().for_each(tame_record);
            }
            for r in &records {
                log.wal_append(1, &encode(r)).unwrap();
            }
            if corrupt {
                log.wal_append(1, &garbage).unwrap();
            }
            // A restarted validator 0 replays height 1's WAL when the height starts.
            let mut node = node(&w, &genesis, 0, log);
            for t in [0, 80, 200, 1000, 3000] {
                node.tick(t);
            }
            if let Some(fatal) = node.fatal() {
                STOPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                prop_assert!(fatal.contains("WAL record") && fatal.contains("of height 1"), "{fatal}");
            } else {
                if !records.is_empty() {
                    REPLAYED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // Every record was well formed: none of them was garbage.
                let garbage_decodes = decode::<WalRecord>("wal", &garbage, verifier_node::store::MAX_WAL_RECORD).map(|r| r.check(4).is_ok()).unwrap_or(false);
                prop_assert!(!corrupt || garbage_decodes, "a corrupt record was skipped");
            }
            Ok(())
        })
        .unwrap();
    let (replayed, stopped) = (REPLAYED.load(std::sync::atomic::Ordering::Relaxed), STOPPED.load(std::sync::atomic::Ordering::Relaxed));
    eprintln!("{replayed} WALs replayed, {stopped} refused as corrupt");
    assert!(replayed > 100 && stopped > 100, "{replayed} replayed, {stopped} stopped");
}

/// Brings a record's rounds, indices and kinds into range (heights and hashes stay arbitrary).
fn tame_record(r: &mut WalRecord) {
    use verifier_node::consensus::context::WireMsg;
    let round = |x: &mut i64| *x = x.rem_euclid(6);
    let pol = |x: &mut i64| *x = x.rem_euclid(7) - 1;
    match r {
        WalRecord::Consensus { msg, .. } => match msg {
            WireMsg::Proposal { height, round: r, pol_round, proposer, .. } => {
                *height %= 3;
                round(r);
                pol(pol_round);
                *proposer %= 4;
            }
            WireMsg::Vote { typ, height, round: r, validator, .. } => {
                *typ %= 2;
                *height %= 3;
                round(r);
                *validator %= 4;
            }
        },
        WalRecord::ProposedValue { round: r, valid_round, proposer, .. } => {
            round(r);
            pol(valid_round);
            *proposer %= 4;
        }
        WalRecord::Timeout { kind, round: r } => {
            *kind %= 4;
            round(r);
        }
        WalRecord::Proposed { round: r, .. } => round(r),
        WalRecord::Payload { .. } => {}
    }
}
