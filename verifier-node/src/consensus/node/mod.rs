//! A validator as a deterministic state machine: Malachite's Tendermint core, our market app
//! and a log, fed events (`tick`, peer messages, device messages) with the host's `now`, and
//! returning [`Output`]s for the host to send. No sockets, no clocks, no threads: the QUIC
//! host and the in-memory simulation drive the same code.
//!
//! Per height: when the chain app says a market entry is due (`ChainApp::next_due`) and the
//! host's clock has reached it, or an opening or revocation waits in the pools, the node starts
//! the height. The round's proposer builds the due entry
//! from its pool, sends the entry as a [`PeerMsg::Payload`] (the update bodies named by digest
//! only: peers fill them from their pools and fetch what they lack, `bodies`) and lets the core
//! sign and send the proposal of its hash. Every validator validates a payload once it holds
//! every body (link, timing, every signature and proof, recomputed aggregates) before the core
//! may prevote for it. On decision the entry, the certificate built from the precommits, and the update bodies
//! go to the log in one synced write; then the app applies the entry and the node waits for
//! the next due time.
//!
//! A node that falls behind (it hears a higher tip in a [`PeerMsg::Status`], or votes for a
//! later height) asks a peer for certified entries, checks each certificate against the
//! genesis validators and re-validates each entry, stores them, and rejoins at the new height.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use malachitebft_core_consensus::{
    process, Effect, Input, LivenessMsg, LocallyProposedValue, ProposedValue, Resumable, Resume, SignedConsensusMsg, State,
};
use malachitebft_core_types::{
    CertificateError, CommitCertificate as McCert, LinearTimeouts, Round, SignedMessage, Timeout, TimeoutKind, Validity, ValueOrigin,
    VoteExtensionPolicy,
};
use protocol::entry::{Body, Certified, CommitCertificate, Entry, Vote as LogVote};
use protocol::market::{SignedMarketOpen, SignedWithdrawal};
use protocol::membership::SignedRevocation;
use protocol::messages::{SignedEnrollment, SignedUpdate};
use protocol::sign::SignatureBytes;
use rand_chacha::ChaCha20Rng;
use tracing::{debug, info, warn};

use super::context::{Address, Decoded, EntryHash, GridContext, Height, PublicKey, Signature, ValidatorSet, WireMsg};
use super::wire::{PeerMsg, PeerReject, WalRecord, MAX_SYNC_BATCH};
use crate::app::{body_kind, ChainApp, Reject};
use crate::store::{Log, StoreError, MAX_WAL_RECORD};

mod bodies;
mod decide;
mod effects;
mod peer;
mod pool;
mod propose;
mod restore;
mod wal;

pub use bodies::{BODIES_RETRY_MS, MAX_BODY_REQUESTS_PER_PEER};
pub use pool::{MAX_POOLED_ENROLLMENTS, MAX_POOLED_OPENS, MAX_POOLED_REVOCATIONS};

/// Most payloads held (current and next heights, all rounds).
pub const MAX_PAYLOADS: usize = 32;
/// Most payloads held from one proposer (a Byzantine peer cannot fill [`MAX_PAYLOADS`] alone).
pub const MAX_PAYLOADS_PER_PROPOSER: usize = 4;
/// Most payload announcements (height, round, hash, valid round) held from one proposer.
pub const MAX_ANNOUNCED_PER_PROPOSER: usize = 64;
/// How often a node announces its tip.
pub const STATUS_INTERVAL_MS: u64 = 500;
/// How long pooled updates wait before a batch verification (they arrive in bursts).
pub const VERIFY_DELAY_MS: u64 = 20;
/// Most pooled updates batch-verified per tick: a batch blocks the node for its duration
/// (≈ 150 ms for 1,024 proofs on one core), and consensus messages wait behind it.
pub const MAX_VERIFY_BATCH: usize = 1024;
/// The propose timeout's allowance per enrolled device, in microseconds: an iteration entry
/// carries one update per device, which the proposer builds and every validator checks before
/// it may prevote (the whole payload: hashes, any signatures and proofs it had not verified,
/// the aggregates). Without it a 10,000-device proposal outlived a 1.5 s timeout round after
/// round. 400 µs × 10,000 devices adds 4 s.
pub const PROPOSE_US_PER_DEVICE: u64 = 400;
/// How long a sync request is outstanding before another is sent.
pub const SYNC_RETRY_MS: u64 = 1000;
/// Heights between stored snapshots unless configured: a few market days of entries.
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 200;

/// Misbehaviour for fault tests: a Byzantine validator (f of them at most) does one of these
/// whenever it proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Byzantine {
    /// Sends two different entries (and signed proposals) to two halves of its peers.
    Equivocate,
    /// Includes updates whose proofs fail (and that honest validators dropped), with
    /// aggregates recomputed over them.
    IncludeInvalidProofs,
    /// Proposes aggregates that differ from the recomputed ones.
    WrongAggregates,
    /// Proposes honest entries but answers no request for update bodies.
    WithholdBodies,
}

/// A node's configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This validator's index in the genesis set.
    pub index: u16,
    /// Consensus timeouts.
    pub timeouts: LinearTimeouts,
    /// Misbehaviour, for tests only.
    pub byzantine: Option<Byzantine>,
    /// Seed of the batch-verification randomness (a real node seeds from the OS).
    pub rng_seed: u64,
    /// Every this many heights the node stores the snapshot that height's entry extends, for
    /// nodes and gateways starting from a checkpoint there (0: never).
    pub snapshot_interval: u64,
}

impl NodeConfig {
    /// Defaults for validator `index`: timeouts suited to loopback and LAN clusters.
    pub fn new(index: u16) -> NodeConfig {
        NodeConfig {
            index,
            timeouts: LinearTimeouts {
                propose: Duration::from_millis(1500),
                propose_delta: Duration::from_millis(500),
                prevote: Duration::from_millis(500),
                prevote_delta: Duration::from_millis(250),
                precommit: Duration::from_millis(500),
                precommit_delta: Duration::from_millis(250),
                rebroadcast: Duration::from_millis(2500),
                max_timeout: Duration::from_secs(20),
            },
            byzantine: None,
            rng_seed: rand::random(),
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
        }
    }
}

/// What the host must do.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send to every other validator.
    Broadcast(PeerMsg),
    /// Send to one validator.
    Send {
        /// Its index.
        to: u16,
        /// The message.
        msg: PeerMsg,
    },
    /// An entry was committed (stored): tell subscribers.
    Committed(Arc<Certified>),
}

/// A failure that stops the node (the log is unusable or a certified entry does not apply).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The genesis or a stored entry is unusable.
    #[error("{0}")]
    Corrupt(String),
    /// A WAL record that does not decode or holds out-of-range fields.
    #[error("WAL record {seq} of height {height} is corrupt: {reason}")]
    Wal {
        /// The height.
        height: u64,
        /// Its sequence number.
        seq: u32,
        /// What is wrong.
        reason: String,
    },
}

/// Counters the host exports as metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Rejections by reason label.
    pub rejects: BTreeMap<&'static str, u64>,
    /// Update proofs verified in committed iteration entries.
    pub proofs_verified: u64,
    /// Entries committed by consensus here.
    pub commits: u64,
    /// Entries taken from peers by sync.
    pub synced: u64,
    /// Due time → commit, of the last committed entry (ms).
    pub last_commit_latency_ms: Option<u64>,
    /// Sum and count of due → commit latencies (ms).
    pub commit_latency_sum_ms: u64,
    /// Rounds beyond round 0 entered.
    pub extra_rounds: u64,
    /// Payloads found invalid.
    pub invalid_payloads: u64,
    /// Chain-state snapshots written (every `NodeConfig::snapshot_interval` heights).
    pub snapshots_written: u64,
    /// Update bodies of proposals this node lacked and got from a peer.
    pub bodies_fetched: u64,
    /// Update bodies sent to peers that asked for them.
    pub bodies_served: u64,
}

/// What a node holds from outside, by kind: each is bounded ([`MAX_PAYLOADS`], the validator
/// set × [`MAX_ANNOUNCED_PER_PROPOSER`], the enrolled set, [`MAX_POOLED_ENROLLMENTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Payloads (entries with their update bodies).
    pub payloads: usize,
    /// Payload announcements.
    pub announced: usize,
    /// Pooled updates (one per enrolled device at most).
    pub pooled_updates: usize,
    /// Of those, awaiting batch verification.
    pub unverified: usize,
    /// Pooled enrollments.
    pub pooled_enrollments: usize,
    /// Pooled withdrawals, market openings and revocations.
    pub pooled_other: usize,
    /// Pooled meter readings.
    pub pooled_readings: usize,
}

/// One validator.
pub struct Node<L: Log> {
    ctx: GridContext,
    cfg: NodeConfig,
    key: SigningKey,
    validators: ValidatorSet,
    app: ChainApp,
    log: L,
    state: Option<State<GridContext>>,
    /// The height consensus runs, and when its entry was due.
    running: Option<(u64, u64)>,
    timers: BTreeMap<TimeoutKey, (Timeout, u64)>,
    /// Payloads by hash.
    payloads: BTreeMap<EntryHash, HeldPayload>,
    /// Announced by payloads, fed to the core once their height runs; at most
    /// [`MAX_ANNOUNCED_PER_PROPOSER`] per proposer.
    announced: BTreeSet<Announcement>,
    get_value: Option<Round>,
    /// What this node proposed at (height, round), from memory or the WAL.
    own_proposals: BTreeMap<(u64, i64), EntryHash>,
    /// What devices, operators and authorities sent, until included.
    pools: pool::Pools,
    out: Vec<Output>,
    now: u64,
    rng: ChaCha20Rng,
    stats: Stats,
    replaying: bool,
    last_status: u64,
    sync_sent: Option<u64>,
    fatal: Option<String>,
    /// The alternative entry of an equivocating proposer, by round.
    twin: Option<(i64, Entry)>,
    /// Body requests answered per peer while the running height lasts.
    served: BTreeMap<u16, usize>,
}

/// An entry proposed (by a peer's payload, or by this node) and what is known of it.
#[derive(Debug, Clone)]
struct HeldPayload {
    entry: Entry,
    /// The bodies held, ascending by digest once none is missing.
    updates: Vec<SignedUpdate>,
    /// The bodies the entry names that are not held yet (`None`: complete).
    missing: Option<bodies::Missing>,
    /// Whether it validated, once checked.
    validity: Option<bool>,
    /// Who proposed it (the sender of its payload; this node for its own, and for payloads
    /// restored from its WAL).
    proposer: u16,
    /// The round it was first announced in.
    round: i64,
}

impl HeldPayload {
    /// The body named `digest`, if this payload is complete and its entry names it.
    fn complete_body(&self, digest: &protocol::merkle::Hash) -> Option<&SignedUpdate> {
        let Body::Iteration(b) = &self.entry.body else { return None };
        if self.missing.is_some() {
            return None;
        }
        // (A payload restored from a damaged WAL may hold another count: found by hashing then.)
        if b.updates.len() != self.updates.len() {
            return None;
        }
        self.updates.get(b.updates.binary_search(digest).ok()?)
    }
}

/// A payload's claim: `hash` is proposed at `height` in `round` by `proposer`, with proof-of-lock
/// round `valid_round` (−1 if none). Rounds are within `0..=MAX_ROUND` (checked at the door).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Announcement {
    height: u64,
    round: i64,
    hash: EntryHash,
    valid_round: i64,
    proposer: u16,
}

/// `Timeout` has no `Ord`; this orders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TimeoutKey(u8, i64);

fn timeout_key(t: &Timeout) -> TimeoutKey {
    let kind = match t.kind {
        TimeoutKind::Propose => 0,
        TimeoutKind::Prevote => 1,
        TimeoutKind::Precommit => 2,
        TimeoutKind::Rebroadcast => 3,
        TimeoutKind::FinalizeHeight(_) => 4,
    };
    TimeoutKey(kind, t.round.as_i64())
}

fn timeout_from(kind: u8, round: i64) -> Option<Timeout> {
    let kind = match kind {
        0 => TimeoutKind::Propose,
        1 => TimeoutKind::Prevote,
        2 => TimeoutKind::Precommit,
        3 => TimeoutKind::Rebroadcast,
        _ => return None,
    };
    Some(Timeout::new(Round::from(round), kind))
}

fn signed_to_wire(msg: &SignedConsensusMsg<GridContext>) -> (WireMsg, [u8; 64]) {
    match msg {
        SignedConsensusMsg::Vote(v) => (v.message.to_wire(), v.signature.0),
        SignedConsensusMsg::Proposal(p) => (p.message.to_wire(), p.signature.0),
    }
}

impl<L: Log> Node<L> {
    /// The chain app (the state derived from the log).
    pub fn app(&self) -> &ChainApp {
        &self.app
    }

    /// The log.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Updates pooled for the open iteration, and how many of them await batch verification.
    pub fn pool_sizes(&self) -> (usize, usize) {
        (self.pools.updates.len(), self.pools.unverified.len())
    }

    /// How much the node holds from its peers and devices (each count has a bound).
    pub fn held(&self) -> Held {
        Held {
            payloads: self.payloads.len(),
            announced: self.announced.len(),
            pooled_updates: self.pools.updates.len(),
            unverified: self.pools.unverified.len(),
            pooled_enrollments: self.pools.enrollments.len(),
            pooled_other: self.pools.withdrawals.len() + self.pools.opens.len() + self.pools.revocations.len(),
            pooled_readings: self.pools.readings.len(),
        }
    }

    /// This validator's index.
    pub fn index(&self) -> u16 {
        self.cfg.index
    }

    /// A fatal error, once one happened: the host must stop the node.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// The height consensus is running, if any.
    pub fn running_height(&self) -> Option<u64> {
        self.running.map(|r| r.0)
    }

    /// When the host should call [`Self::tick`] next.
    pub fn next_wakeup(&self) -> u64 {
        let timer = self.timers.values().map(|t| t.1).min().unwrap_or(u64::MAX);
        let due = match (self.running, self.next_start()) {
            (None, Some(t)) => t,
            (Some(_), Some(_)) if self.get_value.is_some() => self.app.next_buildable(self.now).unwrap_or(u64::MAX).max(self.now + 1),
            _ => u64::MAX,
        };
        let verify = if self.pools.unverified.is_empty() { u64::MAX } else { self.now + VERIFY_DELAY_MS };
        let bodies = self.next_body_retry().unwrap_or(u64::MAX);
        timer.min(due).min(verify).min(bodies).min(self.last_status + STATUS_INTERVAL_MS)
    }

    /// When the next height may start: when a market entry is due, or now if an opening or
    /// a revocation waits in the pools. `None` when idle.
    fn next_start(&self) -> Option<u64> {
        let chain = self.pools.has_chain_messages().then_some(self.now);
        match (self.app.next_due().map(|d| d.0), chain) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Batch-verifies what [`Node::tick`] would (up to [`MAX_VERIFY_BATCH`] pooled updates
    /// not yet verified), so that the host can time it; returns how many it verified.
    pub fn verify_pending(&mut self) -> usize {
        if self.fatal.is_some() || self.pools.unverified.is_empty() {
            return 0;
        }
        let before = self.pools.unverified.len();
        self.verify_pool();
        before - self.pools.unverified.len()
    }

    /// Batch-verifies up to [`MAX_VERIFY_BATCH`] of the pooled updates that arrived since the
    /// last call; bad ones leave the pool (counted).
    fn verify_pool(&mut self) {
        // (A Byzantine proposer that includes bad proofs keeps them.)
        let keep = self.cfg.byzantine == Some(Byzantine::IncludeInvalidProofs);
        for why in self.pools.verify(&self.app, MAX_VERIFY_BATCH, keep, &mut self.rng) {
            self.count(&why);
        }
    }

    fn count(&mut self, r: &Reject) {
        *self.stats.rejects.entry(r.label()).or_default() += 1;
    }

    /// The outputs to carry out. After a fatal error only commits (already durable) leave:
    /// a vote or proposal whose WAL record failed to persist is never sent.
    fn drain(&mut self) -> Vec<Output> {
        let mut out = std::mem::take(&mut self.out);
        if self.fatal.is_some() {
            out.retain(|o| matches!(o, Output::Committed(_)));
        }
        out
    }

    /// Advances the node's clock to `now`: starts a due height, fires expired timers,
    /// announces the tip.
    pub fn tick(&mut self, now: u64) -> Vec<Output> {
        self.now = self.now.max(now);
        if self.fatal.is_some() {
            return vec![];
        }
        if !self.pools.unverified.is_empty() {
            self.verify_pool();
        }
        self.pools.drop_stale_opens(self.now.max(self.app.tip().timestamp_ms + 1));
        if self.running.is_none() {
            if let Some(due) = self.next_start() {
                if self.now >= due {
                    self.start_height(due);
                }
            }
        }
        let expired: Vec<Timeout> = self.timers.values().filter(|(_, at)| *at <= self.now).map(|(t, _)| *t).collect();
        for t in expired {
            self.timers.remove(&timeout_key(&t));
            self.process(Input::TimeoutElapsed(t));
        }
        if self.get_value.is_some() {
            self.propose();
        }
        if self.next_body_retry().is_some_and(|at| at <= self.now) {
            self.retry_bodies();
        }
        if self.now >= self.last_status + STATUS_INTERVAL_MS {
            self.last_status = self.now;
            self.out.push(Output::Broadcast(PeerMsg::Status { tip: self.app.tip().height }));
        }
        self.drain()
    }

    fn start_height(&mut self, due: u64) {
        let h = self.app.tip().height + 1;
        self.running = Some((h, due));
        self.get_value = None;
        self.twin = None;
        self.served.clear();
        self.payloads.retain(|_, p| p.entry.height >= h);
        self.announced.retain(|a| a.height >= h);
        let records = match self.read_wal(h) {
            Ok(r) => r,
            Err(e) => return self.fail(e.to_string()),
        };
        info!(validator = self.cfg.index, height = h, wal = records.len(), "starting height");
        let restart = !records.is_empty();
        self.own_proposals.retain(|k, _| k.0 >= h);
        for r in &records {
            match r {
                WalRecord::Payload { entry, updates } => {
                    let held =
                        HeldPayload { entry: entry.clone(), updates: updates.clone(), missing: None, validity: None, proposer: self.cfg.index, round: -1 };
                    self.payloads.insert(EntryHash(entry.hash()), held);
                }
                WalRecord::Proposed { round, value } => {
                    self.own_proposals.insert((h, *round), EntryHash(*value));
                }
                _ => {}
            }
        }
        // While replaying, a round's proposer proposes only what the WAL says it proposed.
        self.replaying = restart;
        self.process(Input::StartHeight(Height(h), self.validators.clone(), restart, None, VoteExtensionPolicy::Disabled));
        if restart {
            let inputs: Vec<Input<GridContext>> = records.iter().filter_map(|r| self.wal_input(r)).collect();
            if let Some(state) = self.state.as_mut() {
                state.index_wal_entries(inputs.iter());
            }
            for i in inputs {
                self.process(i);
            }
            self.replaying = false;
            if let Some(state) = self.state.as_mut() {
                state.reset_entries_index();
            }
            if self.get_value.is_some() {
                self.propose();
            }
        }
        // Payloads that arrived before the height started.
        let pending: Vec<Announcement> = self.announced.iter().filter(|a| a.height == h).copied().collect();
        for a in pending {
            self.feed_payload(a);
        }
    }

    fn fail(&mut self, why: String) {
        warn!(validator = self.cfg.index, "fatal: {why}");
        self.fatal.get_or_insert(why);
        self.running = None;
    }

    /// Runs one input through the core, handling its effects.
    fn process(&mut self, input: Input<GridContext>) {
        if self.fatal.is_some() {
            return;
        }
        let Some(mut state) = self.state.take() else { return };
        let metrics = ();
        let result: Result<(), malachitebft_core_consensus::Error<GridContext>> =
            process!(input: input, state: &mut state, metrics: &metrics, with: effect => self.on_effect(effect));
        if let Err(e) = result {
            debug!(validator = self.cfg.index, "consensus input refused: {e:?}");
        }
        self.state = Some(state);
        if self.app.tip().height + 1 > self.state.as_ref().map(|s| s.height().0).unwrap_or(0) {
            // Decided (or synced) past the state's height: the next height starts when due.
            self.running = None;
            self.timers.clear();
        }
        if self.get_value.is_some() && !self.replaying {
            self.propose();
        }
    }

    /// A device's enrollment, arriving at `now`.
    pub fn on_enrollment(&mut self, now: u64, e: SignedEnrollment) -> Result<(), Reject> {
        self.admitting(now, |n| n.admit_enrollment(e))
    }

    /// Advances the clock to `now`, runs one admission and counts its refusal, if any.
    fn admitting(&mut self, now: u64, admit: impl FnOnce(&mut Self) -> Result<(), Reject>) -> Result<(), Reject> {
        self.now = self.now.max(now);
        let r = admit(self);
        if let Err(why) = &r {
            self.count(why);
        }
        r
    }

    fn admit_enrollment(&mut self, e: SignedEnrollment) -> Result<(), Reject> {
        self.pools.admit_enrollment(&self.app, self.now, e)
    }

    /// A device's update, arriving at `now`.
    pub fn on_update(&mut self, now: u64, u: SignedUpdate) -> Result<(), Reject> {
        self.admitting(now, |n| n.pools.admit_update(&n.app, n.now, u))
    }

    /// A device's withdrawal from a market, arriving at `now`.
    pub fn on_withdrawal(&mut self, now: u64, w: SignedWithdrawal) -> Result<(), Reject> {
        self.admitting(now, |n| n.pools.admit_withdrawal(&n.app, n.now, w))
    }

    /// One device's meter readings, arriving at `now`.
    pub fn on_readings(&mut self, now: u64, list: Vec<protocol::settlement::SignedReading>) -> Result<(), Reject> {
        self.admitting(now, |n| n.pools.admit_readings(&n.app, n.now, &list))
    }

    /// A market operator's opening, arriving at `now`.
    pub fn on_open(&mut self, now: u64, o: SignedMarketOpen) -> Result<(), Reject> {
        self.admitting(now, |n| n.pools.admit_open(&n.app, n.now, o))
    }

    /// An enrollment authority's revocation, arriving at `now`.
    pub fn on_revocation(&mut self, now: u64, r: SignedRevocation) -> Result<(), Reject> {
        self.admitting(now, |n| n.pools.admit_revocation(&n.app, r))
    }

    /// The public key of validator `i`, if any.
    pub fn validator_key(&self, i: u16) -> Option<PublicKey> {
        self.validators.0.get(i as usize).map(|v| v.key)
    }
}
