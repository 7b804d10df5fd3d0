//! A deterministic, seeded simulation of a validator cluster: real [`Node`]s over an
//! in-memory network that drops, duplicates, delays, reorders and partitions messages, with
//! crashes and restarts (a crashed node keeps its log, as RocksDB would), a market operator
//! that opens further markets, and devices that enroll and submit updates in each. One seed =
//! one run; the same seed replays the same run.
//!
//! Safety checks after each run ([`Sim::check`]): every honest log is a valid hash chain with
//! valid certificates from genesis, and any two honest logs agree at every height they both
//! hold (at most one decision per height).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use ed25519_dalek::SigningKey;
use protocol::entry::{Body, Entry, LightClient};
use protocol::market::SignedMarketOpen;
use protocol::messages::{SignedEnrollment, SignedUpdate};
use prover::VerifierKeys;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::consensus::node::{Byzantine, Node, NodeConfig, Output};
use crate::consensus::wire::PeerMsg;
use crate::store::{Log, MemLog};

/// Snapshot interval of simulated nodes: short chains store several.
pub const SIM_SNAPSHOT_INTERVAL: u64 = 4;

/// Network behaviour of a run, in the partial-synchrony model: before the global
/// stabilisation time (GST) messages are lost, partitions cut links and nodes crash; after it
/// every message between live nodes arrives (still delayed, duplicated and reordered).
/// Tendermint promises safety always and progress after GST.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Probability a message is lost (before GST).
    pub drop: f64,
    /// Global stabilisation time (ms).
    pub gst_ms: u64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Delay bounds (ms); delays are uniform, so messages reorder.
    pub delay_ms: (u64, u64),
    /// Partitions: from, until (ms), and the group of each validator (messages only flow
    /// within a group).
    pub partitions: Vec<(u64, u64, Vec<u8>)>,
    /// Crashes: validator, crash time, restart time (ms).
    pub crashes: Vec<(u16, u64, u64)>,
}

impl NetConfig {
    /// A random but fair network for `seed`: some loss, duplication, reordering, at most one
    /// partition and one crash of at most f nodes, all healed by `heal_by_ms` (the GST).
    pub fn random(seed: u64, n: usize, heal_by_ms: u64) -> NetConfig {
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
        let f = (n - 1) / 3;
        let mut cfg = NetConfig {
            drop: rng.gen_range(0.0..0.15),
            gst_ms: heal_by_ms,
            duplicate: rng.gen_range(0.0..0.1),
            delay_ms: (rng.gen_range(1..10), rng.gen_range(10..120)),
            partitions: vec![],
            crashes: vec![],
        };
        if rng.gen_bool(0.4) {
            let from = rng.gen_range(0..heal_by_ms / 2);
            let until = from + rng.gen_range(500..heal_by_ms / 2);
            let groups = (0..n).map(|_| rng.gen_range(0..2u8)).collect();
            cfg.partitions.push((from, until, groups));
        }
        if f > 0 && rng.gen_bool(0.4) {
            let who = rng.gen_range(0..n as u16);
            let at = rng.gen_range(0..heal_by_ms / 2);
            cfg.crashes.push((who, at, at + rng.gen_range(200..heal_by_ms / 2)));
        }
        cfg
    }

    fn connected(&self, now: u64, a: u16, b: u16) -> bool {
        self.partitions.iter().all(|(from, until, g)| now < *from || now >= *until || g[a as usize] == g[b as usize])
    }
}

/// What the market operator and the devices do in a run: openings sent to every validator at
/// their time; each market's enrollments sent to a validator once it holds the market (the
/// genesis's at t = 0); for each market and iteration k the updates devices submit to a
/// validator once it committed that market's entry before k (a batch or iteration k − 1).
#[derive(Debug, Clone, Default)]
pub struct Devices {
    /// Enrollments, of any market.
    pub enrollments: Vec<SignedEnrollment>,
    /// Updates by (market, iteration).
    pub updates: BTreeMap<(u64, u32), Vec<SignedUpdate>>,
    /// Market openings and when the operator sends them (ms).
    pub opens: Vec<(u64, SignedMarketOpen)>,
    /// Meter readings (one device's each) and when its gateway sends them to every
    /// validator (ms).
    pub readings: Vec<(u64, Vec<protocol::settlement::SignedReading>)>,
    /// A validator that no device sends its updates to (it must fetch their bodies from its
    /// peers when it sees them proposed).
    pub updates_never_reach: Option<u16>,
}

impl Devices {
    /// The markets of the run: the genesis's and every opening's.
    fn market_ids(&self, genesis: &Entry) -> Vec<u64> {
        let first = match &genesis.body {
            Body::Genesis(g) => Some(g.market.market_id),
            _ => None,
        };
        first.into_iter().chain(self.opens.iter().map(|(_, o)| o.market_id())).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Deliver { to: u16, from: u16, msg: Vec<u8> },
    Update { to: u16, market: u64, k: u32, i: usize },
    Enroll { to: u16, i: usize },
    Open(usize),
    Meter(usize),
    Crash(u16),
    Restart(u16),
}

/// A simulated cluster.
pub struct Sim {
    nodes: Vec<Option<Node<MemLog>>>,
    logs: Vec<Option<MemLog>>,
    keys: Vec<SigningKey>,
    configs: Vec<NodeConfig>,
    genesis: Entry,
    verifier_keys: VerifierKeys,
    net: NetConfig,
    devices: Devices,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    rng: ChaCha20Rng,
    now: u64,
    /// The last iteration whose updates were sent, per (validator, market).
    submitted_for: BTreeMap<(u16, u64), u32>,
    markets: Vec<u64>,
    /// Messages delivered.
    pub delivered: u64,
    /// Bytes sent between validators by message kind ([`PeerMsg::kind`]), one count per copy.
    pub sent_bytes: BTreeMap<&'static str, u64>,
}

impl Sim {
    /// A cluster of `keys.len()` validators at `genesis`, with `byzantine[i]` misbehaviour.
    pub fn new(
        seed: u64,
        genesis: Entry,
        verifier_keys: VerifierKeys,
        keys: Vec<SigningKey>,
        byzantine: Vec<Option<Byzantine>>,
        net: NetConfig,
        devices: Devices,
    ) -> Sim {
        let configs: Vec<NodeConfig> = (0..keys.len() as u16)
            .map(|i| NodeConfig { byzantine: byzantine.get(i as usize).copied().flatten(), rng_seed: seed * 31 + i as u64, snapshot_interval: SIM_SNAPSHOT_INTERVAL, ..NodeConfig::new(i) })
            .collect();
        let nodes = configs
            .iter()
            .zip(&keys)
            .map(|(c, k)| Some(Node::open(c.clone(), k.clone(), &genesis, verifier_keys.clone(), MemLog::default()).expect("genesis opens")))
            .collect();
        let mut sim = Sim {
            logs: vec![None; keys.len()],
            nodes,
            keys,
            configs,
            genesis,
            verifier_keys,
            net,
            devices,
            queue: BinaryHeap::new(),
            seq: 0,
            rng: ChaCha20Rng::seed_from_u64(seed),
            now: 0,
            submitted_for: BTreeMap::new(),
            markets: vec![],
            delivered: 0,
            sent_bytes: BTreeMap::new(),
        };
        sim.markets = sim.devices.market_ids(&sim.genesis);
        for (who, at, back) in sim.net.crashes.clone() {
            sim.push(at, Event::Crash(who));
            sim.push(back, Event::Restart(who));
        }
        for i in 0..sim.devices.opens.len() {
            let at = sim.devices.opens[i].0;
            sim.push(at, Event::Open(i));
        }
        for i in 0..sim.devices.readings.len() {
            let at = sim.devices.readings[i].0;
            sim.push(at, Event::Meter(i));
        }
        let first = sim.markets[0];
        let enrollments = sim.devices.enrollments.clone();
        for node in sim.nodes.iter_mut().flatten() {
            for e in enrollments.iter().filter(|e| e.body.market_id == first) {
                let _ = node.on_enrollment(0, e.clone());
            }
        }
        sim
    }

    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, e)));
    }

    fn send(&mut self, from: u16, to: u16, msg: &PeerMsg) {
        let lossy = self.now < self.net.gst_ms;
        if !self.net.connected(self.now, from, to) || (lossy && self.rng.gen_bool(self.net.drop)) {
            return;
        }
        let copies = if self.rng.gen_bool(self.net.duplicate) { 2 } else { 1 };
        let bytes = protocol::codec::encode(msg);
        *self.sent_bytes.entry(msg.kind()).or_default() += (bytes.len() * copies) as u64;
        for _ in 0..copies {
            let delay = self.rng.gen_range(self.net.delay_ms.0..=self.net.delay_ms.1);
            self.push(self.now + delay, Event::Deliver { to, from, msg: bytes.clone() });
        }
    }

    /// Delivers `msg` to validator `to` at `at_ms` as if validator `from` had sent it: hostile
    /// or malformed traffic of a Byzantine peer, for tests. It is encoded and decoded like any
    /// frame.
    pub fn inject(&mut self, at_ms: u64, from: u16, to: u16, msg: &PeerMsg) {
        self.push(at_ms, Event::Deliver { to, from, msg: protocol::codec::encode(msg) });
    }

    fn handle(&mut self, from: u16, outputs: Vec<Output>) {
        let n = self.nodes.len() as u16;
        for o in outputs {
            match o {
                Output::Broadcast(m) => {
                    for to in (0..n).filter(|&t| t != from) {
                        self.send(from, to, &m);
                    }
                }
                Output::Send { to, msg } => self.send(from, to, &msg),
                Output::Committed(c) => self.on_committed(from, &c.entry),
            }
        }
    }

    /// Devices react to a node's commit: once it opened a market they enroll there; after a
    /// market's iteration k − 1 (or an enrollment batch), they send their iteration-k updates
    /// to that validator.
    fn on_committed(&mut self, node: u16, entry: &Entry) {
        let Some(n) = self.nodes[node as usize].as_ref() else { return };
        let Some(market) = entry.body.market_id() else { return };
        if let Body::Open(_) = &entry.body {
            let theirs: Vec<usize> = (0..self.devices.enrollments.len()).filter(|&i| self.devices.enrollments[i].body.market_id == market).collect();
            for i in theirs {
                let delay = self.rng.gen_range(1..50);
                self.push(self.now + delay, Event::Enroll { to: node, i });
            }
            return;
        }
        let Some(k) = n.app().open_iteration(market) else { return };
        let sent = self.submitted_for.entry((node, market)).or_default();
        if !matches!(entry.body, Body::Iteration(_) | Body::Enrollment(_)) || *sent >= k || self.devices.updates_never_reach == Some(node) {
            return;
        }
        *sent = k;
        let count = self.devices.updates.get(&(market, k)).map_or(0, Vec::len);
        for i in 0..count {
            let delay = self.rng.gen_range(1..50);
            self.push(self.now + delay, Event::Update { to: node, market, k, i });
        }
    }

    /// Runs until `until_ms` of simulated time (or until every live honest node is final).
    pub fn run(&mut self, until_ms: u64) {
        let mut steps = 0u64;
        while self.now < until_ms {
            steps += 1;
            assert!(steps < 5_000_000, "simulation does not progress");
            if self.all_final() {
                break;
            }
            let wake = self.nodes.iter().flatten().map(|n| n.next_wakeup()).min().unwrap_or(u64::MAX);
            let next_event = self.queue.peek().map(|Reverse((t, _, _))| *t).unwrap_or(u64::MAX);
            let t = wake.min(next_event).min(until_ms);
            self.now = self.now.max(t);
            if next_event <= self.now {
                let Reverse((_, _, e)) = self.queue.pop().expect("peeked");
                self.on_event(e);
            }
            for i in 0..self.nodes.len() {
                let out = match self.nodes[i].as_mut() {
                    Some(n) if n.next_wakeup() <= self.now => n.tick(self.now),
                    _ => continue,
                };
                self.handle(i as u16, out);
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Deliver { to, from, msg } => {
                let Some(node) = self.nodes[to as usize].as_mut() else { return };
                let msg: PeerMsg = protocol::codec::decode("peer message", &msg, usize::MAX).expect("we encoded it");
                self.delivered += 1;
                let out = node.on_peer(self.now, from, msg);
                self.handle(to, out);
            }
            Event::Update { to, market, k, i } => {
                let u = self.devices.updates[&(market, k)][i].clone();
                if let Some(node) = self.nodes[to as usize].as_mut() {
                    let _ = node.on_update(self.now, u);
                }
            }
            Event::Enroll { to, i } => {
                let e = self.devices.enrollments[i].clone();
                if let Some(node) = self.nodes[to as usize].as_mut() {
                    let _ = node.on_enrollment(self.now, e);
                }
            }
            Event::Open(i) => {
                let o = self.devices.opens[i].1.clone();
                let now = self.now;
                for node in self.nodes.iter_mut().flatten() {
                    let _ = node.on_open(now, o.clone());
                }
            }
            Event::Meter(i) => {
                let list = self.devices.readings[i].1.clone();
                let now = self.now;
                for node in self.nodes.iter_mut().flatten() {
                    let _ = node.on_readings(now, list.clone());
                }
            }
            Event::Crash(i) => {
                if let Some(node) = self.nodes[i as usize].take() {
                    self.logs[i as usize] = Some(node.log().clone());
                }
            }
            Event::Restart(i) => {
                if let Some(log) = self.logs[i as usize].take() {
                    let cfg = self.configs[i as usize].clone();
                    let node =
                        Node::open(cfg, self.keys[i as usize].clone(), &self.genesis, self.verifier_keys.clone(), log).expect("a crashed node reopens its log");
                    self.nodes[i as usize] = Some(node);
                }
            }
        }
    }

    fn honest(&self) -> impl Iterator<Item = (usize, &Node<MemLog>)> {
        self.nodes.iter().enumerate().filter_map(|(i, n)| n.as_ref().map(|n| (i, n))).filter(|(i, _)| self.configs[*i].byzantine.is_none())
    }

    /// Whether every live honest node applied the final entry of every market of the run (and,
    /// for a market that settles, its settlement entry).
    pub fn all_final(&self) -> bool {
        self.honest().all(|(_, n)| self.markets.iter().all(|&m| n.app().market(m).is_some_and(|m| m.is_over())))
    }

    /// The live nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &Node<MemLog>> {
        self.nodes.iter().flatten()
    }

    /// Safety: every honest log is a certified hash chain, honest logs agree, and every
    /// snapshot an honest node stored hashes to the state root of the entry at its height.
    pub fn check(&self) -> Result<(), String> {
        let mut by_height: BTreeMap<u64, (usize, protocol::merkle::Hash)> = BTreeMap::new();
        for (i, n) in self.honest() {
            let entries = n.log().entries();
            for (h, bytes) in n.log().snapshots() {
                let root = entries.get(*h as usize).map(|c| c.entry.state_root);
                if root != Some(protocol::snapshot::state_root(bytes)) {
                    return Err(format!("node {i}: the snapshot stored at height {h} does not hash to that entry's state root"));
                }
            }
            let mut client = LightClient::new(&entries[0].entry).map_err(|e| format!("node {i}: genesis: {e}"))?;
            for c in &entries[1..] {
                client.accept(&c.entry, &c.certificate).map_err(|e| format!("node {i}: height {}: {e}", c.entry.height))?;
            }
            for c in entries {
                let h = c.entry.hash();
                if let Some((j, other)) = by_height.insert(c.entry.height, (i, h)) {
                    if other != h {
                        return Err(format!("nodes {i} and {j} decided different entries at height {}", c.entry.height));
                    }
                }
            }
        }
        Ok(())
    }

    /// The simulated time.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The tip height of each live node (`None` if crashed).
    pub fn tips(&self) -> Vec<Option<u64>> {
        self.nodes.iter().map(|n| n.as_ref().map(|n| Log::tip(n.log()).ok().flatten().map_or(0, |t| t.0))).collect()
    }
}
