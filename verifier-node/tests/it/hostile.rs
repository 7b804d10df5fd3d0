//! A hostile peer and a failing disk: out-of-range rounds in a payload leave the cluster
//! deciding (and are counted), a log whose WAL append fails makes the node send no vote or
//! proposal, a corrupt WAL record stops the node with an error naming where it is, and
//! bodies of compact proposals are taken only when their entry names them.

use crate::common::*;
use protocol::entry::{Body, Entry, IterationBody};
use protocol::ids::hex;
use verifier_node::consensus::node::{Node, NodeConfig, Output, MAX_BODY_REQUESTS_PER_PEER};
use verifier_node::consensus::wire::PeerMsg;
use verifier_node::sim::{NetConfig, Sim};
use verifier_node::store::{Log, MemLog, StoreError, WalItem};

#[test]
fn payloads_with_rounds_beyond_u32_leave_every_node_deciding() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let (w, genesis, devices) = sim_world(2);
    let net = NetConfig { drop: 0.0, gst_ms: 0, duplicate: 0.0, delay_ms: (1, 5), partitions: vec![], crashes: vec![] };
    let mut sim = Sim::new(3, genesis.clone(), w.keys.clone(), w.validators.clone(), vec![], net, devices);
    // Validator 3's link (a Byzantine peer, or an attacker holding its key) sends payloads
    // whose rounds would make Malachite's `Round::from` panic, to every other validator,
    // and validator 0's link sends them to validator 3: all four nodes are targeted.
    let big = u32::MAX as i64 + 1;
    let mut entry = genesis.clone();
    entry.height = 1;
    let hostile = [
        PeerMsg::Payload { round: big, valid_round: -1, proposer: 3, entry: entry.clone(), updates: vec![] },
        PeerMsg::Payload { round: 0, valid_round: big, proposer: 3, entry: entry.clone(), updates: vec![] },
        PeerMsg::Payload { round: i64::MAX, valid_round: i64::MIN, proposer: 3, entry: entry.clone(), updates: vec![] },
        // A round Malachite would take, but whose increment overflows a u32.
        PeerMsg::Payload { round: u32::MAX as i64, valid_round: -1, proposer: 3, entry, updates: vec![] },
    ];
    for at in [0, 3000, 6500, 8500] {
        for msg in &hostile {
            for to in 0..3 {
                sim.inject(at, 3, to, msg);
            }
            let PeerMsg::Payload { round, valid_round, entry, updates, .. } = msg.clone() else { unreachable!() };
            sim.inject(at, 0, 3, &PeerMsg::Payload { round, valid_round, proposer: 0, entry, updates });
        }
    }
    sim.run(60_000);
    sim.check().unwrap();
    assert!(sim.all_final(), "tips {:?}", sim.tips());
    for n in sim.nodes() {
        assert!(n.fatal().is_none());
        assert_eq!(n.stats().proofs_verified, 6, "every update is in the log");
        let refused = n.stats().rejects.get("payload_round").copied().unwrap_or(0);
        assert_eq!(refused, 16, "validator {}: every hostile payload is refused and counted: {:?}", n.index(), n.stats().rejects);
    }
}

/// A [`MemLog`] whose WAL appends fail (a full or failing disk).
#[derive(Debug, Default, Clone)]
struct FailingWal(MemLog);

impl Log for FailingWal {
    fn tip(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.0.tip()
    }
    fn decide(&mut self, c: &protocol::entry::Certified) -> Result<(), StoreError> {
        self.0.decide(c)
    }
    fn certified(&self, height: u64) -> Result<Option<protocol::entry::Certified>, StoreError> {
        self.0.certified(height)
    }
    fn wal_append(&mut self, height: u64, record: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::WalOversize { height, len: record.len() })
    }
    fn wal(&self, height: u64) -> Result<Vec<WalItem>, StoreError> {
        self.0.wal(height)
    }
    fn base(&self) -> Result<Option<u64>, StoreError> {
        self.0.base()
    }
    fn put_snapshot(&mut self, height: u64, state: &[u8]) -> Result<(), StoreError> {
        self.0.put_snapshot(height, state)
    }
    fn snapshot(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.snapshot(height)
    }
}

fn is_consensus(o: &Output) -> bool {
    let m = match o {
        Output::Broadcast(m) | Output::Send { msg: m, .. } => m,
        Output::Committed(_) => return false,
    };
    matches!(m, PeerMsg::Consensus { .. } | PeerMsg::Votes { .. } | PeerMsg::Payload { .. })
}

/// Runs validator `index` alone (its peers silent) from 0 to 10 s and returns its outputs.
fn alone<L: Log>(w: &World, genesis: &Entry, index: u16, log: L) -> (Vec<Output>, Node<L>) {
    let cfg = NodeConfig { rng_seed: 1, ..NodeConfig::new(index) };
    let mut node = Node::open(cfg, w.validators[index as usize].clone(), genesis, w.keys.clone(), log).unwrap();
    for d in &w.devices {
        node.on_enrollment(0, enrollment(w, d)).unwrap();
    }
    let mut out = vec![];
    let mut now = 0;
    while now < 10_000 {
        out.extend(node.tick(now));
        now = node.next_wakeup().max(now + 1);
    }
    (out, node)
}

#[test]
fn a_failing_wal_append_sends_no_vote_and_no_proposal() {
    let (w, genesis, _) = sim_world(2);
    // With a working log each validator proposes or votes (nil, at its propose timeout).
    for i in 0..4 {
        let (out, node) = alone(&w, &genesis, i, MemLog::default());
        assert!(out.iter().any(is_consensus), "validator {i} sent no consensus message with a working log");
        assert!(node.fatal().is_none());
    }
    // With a failing one nothing leaves before it is persisted, and the node stops.
    for i in 0..4 {
        let (out, node) = alone(&w, &genesis, i, FailingWal::default());
        let sent: Vec<&str> = out.iter().filter(|o| is_consensus(o)).map(|o| if let Output::Broadcast(m) | Output::Send { msg: m, .. } = o { m.kind() } else { "" }).collect();
        assert!(sent.is_empty(), "validator {i} sent {sent:?} that its WAL does not hold");
        let fatal = node.fatal().expect("a failed WAL append is fatal");
        assert!(fatal.contains("WAL"), "{fatal}");
    }
}

#[test]
fn a_corrupt_wal_record_stops_the_node_naming_height_and_sequence() {
    let (w, genesis, _) = sim_world(2);
    let mut log = MemLog::default();
    // A record the node wrote, then one that does not decode.
    let good = protocol::codec::encode(&verifier_node::consensus::wire::WalRecord::Timeout { kind: 0, round: 0 });
    log.wal_append(1, &good).unwrap();
    log.wal_append(1, &[0xff, 0x00, 0x13]).unwrap();
    let (out, node) = alone(&w, &genesis, 1, log);
    assert!(!out.iter().any(is_consensus));
    let fatal = node.fatal().expect("a corrupt WAL is fatal");
    assert!(fatal.contains("WAL record 1 of height 1"), "{fatal}");

    // A record that decodes but holds a round Malachite cannot take.
    let mut log = MemLog::default();
    let bad = protocol::codec::encode(&verifier_node::consensus::wire::WalRecord::Timeout { kind: 1, round: u32::MAX as i64 + 7 });
    log.wal_append(1, &bad).unwrap();
    let (_, node) = alone(&w, &genesis, 2, log);
    let fatal = node.fatal().expect("an out-of-range WAL record is fatal");
    assert!(fatal.contains("WAL record 0 of height 1") && fatal.contains("round"), "{fatal} ({})", hex(&bad));
}

/// A peer that serves a market's iteration entry without its bodies before the market executed
/// (withholding proofs no honest validator has pruned yet) is refused at that height and
/// counted (`sync_pruned_early`); the same entries with their bodies are taken, and after the
/// market's execution the bodiless copy is followed as pruned history.
#[test]
fn a_peer_withholding_bodies_of_a_market_not_yet_executed_is_refused_at_sync() {
    let mut w = world();
    let log = crate::log::chain(&mut w);
    let genesis = log[0].0.clone();
    let certified: Vec<protocol::entry::Certified> =
        log.iter().map(|(e, c, u)| protocol::entry::Certified { entry: e.clone(), certificate: c.clone(), updates: u.clone() }).collect();
    let first_iteration = certified.iter().position(|c| matches!(c.entry.body, protocol::entry::Body::Iteration(_))).unwrap();
    let mut withheld = certified[1..=first_iteration].to_vec();
    withheld.last_mut().unwrap().updates.clear();
    assert!(withheld.last().unwrap().is_pruned());
    let open = || Node::open(NodeConfig { rng_seed: 1, ..NodeConfig::new(0) }, w.validators[0].clone(), &genesis, w.keys.clone(), MemLog::default()).unwrap();
    let end = protocol::market::execution_span(&w.genesis.market).1;

    let mut node = open();
    node.on_peer(end - 1, 1, PeerMsg::SyncResponse { entries: withheld.clone() });
    assert_eq!(node.app().tip().height, first_iteration as u64 - 1, "the batches before it are taken");
    assert_eq!(node.stats().rejects.get("sync_pruned_early"), Some(&1), "{:?}", node.stats().rejects);
    assert!(node.fatal().is_none());
    // From an honest peer, with the bodies: taken, checked in full.
    node.on_peer(end - 1, 2, PeerMsg::SyncResponse { entries: certified[first_iteration..].to_vec() });
    assert_eq!(node.app().tip().height, certified.len() as u64 - 1);
    assert!(node.app().is_idle() && !node.app().market(7).unwrap().is_pruned());

    // Once the market executed, the bodiless copy is pruned history, followed by certificate.
    let mut late = open();
    late.on_peer(end, 1, PeerMsg::SyncResponse { entries: withheld });
    assert_eq!(late.app().tip().height, first_iteration as u64);
    assert!(late.app().market(7).unwrap().is_pruned() && late.stats().rejects.get("sync_pruned_early").is_none());
}

/// Compact proposals under a hostile peer: a payload or an answer carrying a body its entry
/// does not name is refused (`body_unnamed`) and the body is not taken; a payload naming a
/// body the node lacks makes it ask the proposer, and only the named body completes it; a
/// request naming nothing is refused (`bodies_malformed`), a request is answered with the
/// bodies held, and a peer asking more than its quota per height is refused.
#[test]
fn bodies_not_named_by_their_entry_and_malformed_or_excess_requests_are_refused() {
    let mut w = world();
    let genesis = genesis_entry(&w);
    let cfg = NodeConfig { rng_seed: 1, ..NodeConfig::new(0) };
    let mut node = Node::open(cfg, w.validators[0].clone(), &genesis, w.keys.clone(), MemLog::default()).unwrap();
    let (named, stranger) = (update(&mut w, 0, 1, 1), update(&mut w, 1, 1, 1));
    let body = IterationBody { market_id: 7, iteration: 1, updates: vec![named.digest()], x_bar: vec![0; T], z_bar: vec![0; T], u: vec![0; T], residuals: [0; 4] };
    let entry = Entry { chain_id: w.chain, height: 1, prev_hash: genesis.hash(), state_root: [0; 32], timestamp_ms: 1, body: Body::Iteration(body) };
    let hash = entry.hash();
    let payload = |updates| PeerMsg::Payload { round: 0, valid_round: -1, proposer: 1, entry: entry.clone(), updates };
    let rejects = |n: &Node<MemLog>, label| n.stats().rejects.get(label).copied().unwrap_or(0);

    node.on_peer(1, 1, payload(vec![stranger.clone()]));
    assert_eq!(rejects(&node, "body_unnamed"), 1, "{:?}", node.stats().rejects);
    let out = node.on_peer(2, 1, payload(vec![]));
    let asked = out.iter().any(|o| matches!(o, Output::Send { to: 1, msg: PeerMsg::BodiesWanted { entry, digests } } if *entry == hash && digests == &vec![named.digest()]));
    assert!(asked, "the node does not ask the proposer for the body it lacks: {out:?}");
    node.on_peer(3, 1, PeerMsg::Bodies { entry: hash, updates: vec![stranger.clone()] });
    assert_eq!(rejects(&node, "body_unnamed"), 2);
    assert_eq!(node.stats().bodies_fetched, 0, "an unnamed body was taken");
    node.on_peer(4, 1, PeerMsg::Bodies { entry: hash, updates: vec![named.clone()] });
    assert_eq!(node.stats().bodies_fetched, 1);

    node.on_peer(5, 2, PeerMsg::BodiesWanted { entry: hash, digests: vec![] });
    assert_eq!(rejects(&node, "bodies_malformed"), 1);
    let out = node.on_peer(6, 2, PeerMsg::BodiesWanted { entry: hash, digests: vec![named.digest(), stranger.digest()] });
    let answered: Vec<_> = out.iter().filter_map(|o| if let Output::Send { to: 2, msg: PeerMsg::Bodies { updates, .. } } = o { Some(updates.clone()) } else { None }).collect();
    assert_eq!(answered, vec![vec![named.clone()]], "answers with the body it holds, and only that one");
    for i in 1..MAX_BODY_REQUESTS_PER_PEER {
        node.on_peer(6 + i as u64, 2, PeerMsg::BodiesWanted { entry: hash, digests: vec![named.digest()] });
    }
    assert_eq!(rejects(&node, "payload_overflow"), 0);
    let out = node.on_peer(100, 2, PeerMsg::BodiesWanted { entry: hash, digests: vec![named.digest()] });
    assert_eq!(rejects(&node, "payload_overflow"), 1, "request {} beyond the quota was answered", MAX_BODY_REQUESTS_PER_PEER + 1);
    assert!(!out.iter().any(|o| matches!(o, Output::Send { msg: PeerMsg::Bodies { .. }, .. })));
}
