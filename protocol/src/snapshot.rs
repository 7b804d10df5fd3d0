//! Chain-state snapshots and trusted checkpoints (docs/protocol.md §6.10).
//!
//! Every entry carries a *state root*: SHA-256 of the canonical encoding of the
//! [`ChainSnapshot`] it extends (the state after the previous height). Validators check it like
//! any other field, so the quorum that certifies entry H certifies the state before H too.
//!
//! A *checkpoint* is a height H and the hash of the entry there, trusted out of band (an
//! operator reads it off a validator it trusts, `/checkpoint`). A node or gateway starting from
//! it asks any validator for the snapshot at H ([`SnapshotReply`]) and accepts it only if
//! [`verify_checkpoint`] passes: the served entry hashes to the checkpoint, carries a quorum
//! certificate of the genesis validators, and its state root is the hash of the served bytes.
//! Then it applies entry H and follows the log from H + 1 — nothing before H is needed.
//!
//! The snapshot is canonical: only what every validator derives from the log alone. A final
//! market keeps its outcome (iterations, stopping rule, final height) but no engine, because a
//! validator that pruned the market's bodies (node-local retention) holds none.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::codec::{decode, CodecError, FieldElement};
use crate::entry::{check_bodies, Certified, Entry, LogError, MarketSpec};
use crate::ids::{hex, parse_hex32, DeviceId, ValidatorId};
use crate::merkle::Hash;
use crate::sign::ChainId;

/// Largest encoded snapshot a validator writes or a client accepts. A state beyond it (tens of
/// thousands of devices enrolled at once, or hundreds of thousands of revocations) is not
/// snapshotted: nodes then start from genesis.
pub const MAX_SNAPSHOT_BYTES: usize = 16 << 20;

/// Largest [`SnapshotReply`] frame: the snapshot and its entry with the entry's update bodies.
pub const MAX_SNAPSHOT_REPLY: usize = MAX_SNAPSHOT_BYTES + (16 << 20) + (1 << 10);

/// The chain state after an entry: what the next entry's state root hashes.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ChainSnapshot {
    /// The height of the last applied entry.
    pub height: u64,
    /// Its hash.
    pub tip_hash: Hash,
    /// Its timestamp (ms).
    pub tip_timestamp_ms: u64,
    /// Every market id opened on the chain, ascending.
    pub used_ids: Vec<u64>,
    /// Revoked attestation digests, ascending.
    pub revoked: Vec<Hash>,
    /// The markets held (every live one and the last final ones), ascending by id.
    pub markets: Vec<MarketSnapshot>,
    /// The ledger: every settled device's account, ascending by device.
    pub accounts: Vec<AccountSnapshot>,
}

/// A device's account in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct AccountSnapshot {
    /// The device.
    pub device: DeviceId,
    /// Its balance (µ€; positive = it owes).
    pub balance: i64,
    /// Its latest bills with their market ids, in settlement order.
    pub bills: Vec<(u64, crate::settlement::Bill)>,
}

/// A final market awaiting its settlement entry, in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SettlingSnapshot {
    /// The final prices (raw €/MWh).
    pub prices: Vec<i64>,
    /// Every device's final schedule, ascending by device.
    pub schedules: Vec<(DeviceId, Vec<i32>)>,
    /// Committed readings (device, slot, W·slot), ascending by (device, slot).
    pub readings: Vec<(DeviceId, u32, i64)>,
}

/// One market in a [`ChainSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct MarketSnapshot {
    /// Its parameters.
    pub spec: MarketSpec,
    /// When it was opened (ms).
    pub opened_ms: u64,
    /// The height of its genesis or opening entry.
    pub opened_height: u64,
    /// The timestamp of its last entry.
    pub last_ms: u64,
    /// The size of its last registration batch (enrollments and withdrawals), `None` before
    /// the first batch.
    pub last_batch: Option<u64>,
    /// Enrolled devices, ascending by device.
    pub enrolled: Vec<EnrolledSnapshot>,
    /// Where it is.
    pub progress: Progress,
    /// Between its final and settlement entries (a market that settles): what settles it.
    pub settling: Option<SettlingSnapshot>,
    /// Its settlement entry is applied.
    pub settled: bool,
}

/// A market's phase in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum Progress {
    /// Registering, or registration closed and no iteration applied yet.
    Registration,
    /// Iterating: the engine after `iteration`.
    Scheduling(EngineSnapshot),
    /// Final.
    Final {
        /// The height of its final entry.
        final_height: u64,
        /// Iterations decided.
        iterations: u32,
        /// Whether the last one met the stopping rule.
        converged: bool,
    },
    /// Iterating from pruned history (no engine): a state only a node replaying its own
    /// pruned store passes through, never one a validator checks or serves.
    Pruned {
        /// The last iteration applied.
        iteration: u32,
        /// Whether it met the stopping rule.
        converged: bool,
    },
}

/// An enrolled device in a snapshot (its shape's T is the market's).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct EnrolledSnapshot {
    /// The device.
    pub device: DeviceId,
    /// Its model kind id.
    pub kind: u8,
    /// Its commitment C.
    pub commitment: FieldElement,
    /// The digest of the attestation it enrolled with.
    pub attestation: Hash,
    /// Nameplate: rated import (W).
    pub import_w: u32,
    /// Nameplate: rated export (W).
    pub export_w: u32,
    /// Nameplate: capacity (W·slot).
    pub capacity: u32,
}

/// A running ADMM engine in a snapshot (raw fixed point).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct EngineSnapshot {
    /// Iterations applied.
    pub iteration: u32,
    /// The latest accepted schedule of each device (W per slot), ascending by device.
    pub latest: Vec<(DeviceId, Vec<i32>)>,
    /// x̄.
    pub x_bar: Vec<i64>,
    /// z̄.
    pub z_bar: Vec<i64>,
    /// u.
    pub u: Vec<i64>,
    /// r, s, ε_pri, ε_dual of the last iteration.
    pub residuals: Option<[i64; 4]>,
    /// Whether the last iteration met the stopping rule.
    pub converged: bool,
}

/// The state root of an encoded snapshot: SHA-256 of its bytes.
pub fn state_root(encoded: &[u8]) -> Hash {
    Sha256::digest(encoded).into()
}

/// A trusted checkpoint: a height ≥ 1 and the hash of the entry there. Written and parsed as
/// `<height>:<64 hex characters>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The height.
    pub height: u64,
    /// The hash of the entry at that height.
    pub hash: Hash,
}

/// Why a checkpoint does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointParseError {
    /// Not `<height>:<hash>`.
    #[error("a checkpoint is <height>:<64 hex characters of the entry hash>, got {0:?}")]
    Form(String),
    /// Height 0 is the genesis: start from it without a checkpoint.
    #[error("a checkpoint's height is at least 1 (height 0 is the genesis)")]
    Genesis,
}

impl FromStr for Checkpoint {
    type Err = CheckpointParseError;

    fn from_str(s: &str) -> Result<Checkpoint, CheckpointParseError> {
        let form = || CheckpointParseError::Form(s.chars().take(100).collect());
        let (h, x) = s.trim().split_once(':').ok_or_else(form)?;
        let height: u64 = h.parse().map_err(|_| form())?;
        let hash = parse_hex32(x).ok_or_else(form)?;
        if height == 0 {
            return Err(CheckpointParseError::Genesis);
        }
        Ok(Checkpoint { height, hash })
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.height, hex(&self.hash))
    }
}

/// A validator's answer to a snapshot request.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum SnapshotReply {
    /// The entry at the requested height (certificate and bodies as served) and the encoded
    /// snapshot its state root hashes.
    Held {
        /// The certified entry.
        entry: Certified,
        /// The encoded [`ChainSnapshot`].
        state: Vec<u8>,
    },
    /// This validator serves as many snapshots as it may at once: ask again or elsewhere.
    Busy,
    /// This validator holds no snapshot at that height.
    NotHeld {
        /// The heights it holds snapshots at, ascending.
        held: Vec<u64>,
    },
}

/// Why a served snapshot does not match a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// The served entry is not the checkpoint's.
    #[error("the served entry (height {height}, hash {hash}) is not checkpoint {checkpoint}")]
    NotCheckpoint {
        /// The served entry's height.
        height: u64,
        /// Its hash (hex).
        hash: String,
        /// The checkpoint.
        checkpoint: Checkpoint,
    },
    /// The served entry is of another chain.
    #[error("the served entry is of another chain")]
    Chain,
    /// Its certificate or bodies fail the light-client checks.
    #[error("checkpoint entry: {0}")]
    Entry(#[from] LogError),
    /// The bytes do not hash to the entry's state root.
    #[error("the snapshot (hash {got}) does not hash to the entry's state root {expected}")]
    Root {
        /// What the bytes hash to (hex).
        got: String,
        /// The entry's state root (hex).
        expected: String,
    },
    /// The bytes hash right but do not decode.
    #[error("snapshot: {0}")]
    Codec(#[from] CodecError),
    /// The snapshot is not of the state before the checkpoint entry.
    #[error("the snapshot is of height {height}, the checkpoint entry extends height {expected}")]
    Height {
        /// Its height.
        height: u64,
        /// The checkpoint's height − 1.
        expected: u64,
    },
    /// The snapshot decodes but breaks an invariant (order, lengths, ranges).
    #[error("snapshot: {0}")]
    Invalid(String),
    /// The checkpoint entry came without the bodies of a market that has not executed yet:
    /// withheld, not pruned.
    #[error("the checkpoint entry came without the update bodies of market {market_id}, which has not executed yet")]
    PrunedEarly {
        /// The market.
        market_id: u64,
    },
    /// The validator is serving as many snapshots as it may at once: ask another.
    #[error("the validator is busy serving other snapshots")]
    Busy,
    /// The validator holds no snapshot at the checkpoint.
    #[error("the validator holds no snapshot at height {height} (it holds {held:?})")]
    NotHeld {
        /// The height asked for.
        height: u64,
        /// The heights it holds.
        held: Vec<u64>,
    },
}

/// Checks a served snapshot against a trusted checkpoint and decodes it: the entry is the
/// checkpoint's (height and hash), of `chain`, certified by a quorum of `validators`, with the
/// update bodies it names — or none, only if its market's execution ended by `now_ms` (no
/// honest validator prunes earlier: §6.9); the bytes hash to its state root and decode
/// canonically to the state at the height before it, with markets, ids and revocations
/// ascending. Nothing else is trusted: the server may be anyone.
pub fn verify_checkpoint(
    chain: &ChainId,
    validators: &[ValidatorId],
    checkpoint: &Checkpoint,
    entry: &Certified,
    state: &[u8],
    now_ms: u64,
) -> Result<ChainSnapshot, SnapshotError> {
    let e: &Entry = &entry.entry;
    let hash = e.hash();
    if e.height != checkpoint.height || hash != checkpoint.hash {
        return Err(SnapshotError::NotCheckpoint { height: e.height, hash: hex(&hash), checkpoint: *checkpoint });
    }
    if e.chain_id != *chain {
        return Err(SnapshotError::Chain);
    }
    if entry.certificate.height != e.height || entry.certificate.hash != hash {
        return Err(LogError::Mismatch { cert_height: entry.certificate.height, cert_hash: hex(&entry.certificate.hash), height: e.height, hash: hex(&hash) }.into());
    }
    entry.certificate.verify(chain, validators)?;
    if !entry.is_pruned() {
        check_bodies(entry)?;
    }
    let snap = open(e, state)?;
    if entry.is_pruned() {
        let id = e.body.market_id().unwrap_or_default();
        let executed = snap.markets.iter().find(|m| m.spec.market_id == id).is_some_and(|m| crate::market::over_by_clock(&m.spec, now_ms));
        if !executed {
            return Err(SnapshotError::PrunedEarly { market_id: id });
        }
    }
    Ok(snap)
}

/// The snapshot `entry` extends, from its encoded bytes: they hash to the entry's state root,
/// decode canonically, are of the height before it with its predecessor's hash, and pass
/// [`ChainSnapshot::check`]. (What [`verify_checkpoint`] checks of the state, and what a node
/// or audit checks of the snapshot a store started from.)
pub fn open(entry: &Entry, state: &[u8]) -> Result<ChainSnapshot, SnapshotError> {
    let got = state_root(state);
    if got != entry.state_root {
        return Err(SnapshotError::Root { got: hex(&got), expected: hex(&entry.state_root) });
    }
    let snap: ChainSnapshot = decode("chain snapshot", state, MAX_SNAPSHOT_BYTES)?;
    if snap.height + 1 != entry.height || snap.tip_hash != entry.prev_hash {
        return Err(SnapshotError::Height { height: snap.height, expected: entry.height.saturating_sub(1) });
    }
    snap.check()?;
    Ok(snap)
}

impl ChainSnapshot {
    /// The structural invariants a snapshot of a validator's state holds: ids, revocations,
    /// markets and enrolled devices strictly ascending; every market id among the used ids;
    /// an engine's vectors of the market's T.
    pub fn check(&self) -> Result<(), SnapshotError> {
        let bad = |what: String| Err(SnapshotError::Invalid(what));
        if !self.used_ids.windows(2).all(|w| w[0] < w[1]) {
            return bad("market ids not strictly ascending".into());
        }
        if !self.revoked.windows(2).all(|w| w[0] < w[1]) {
            return bad("revocations not strictly ascending".into());
        }
        if !self.markets.windows(2).all(|w| w[0].spec.market_id < w[1].spec.market_id) {
            return bad("markets not strictly ascending by id".into());
        }
        if !self.accounts.windows(2).all(|w| w[0].device < w[1].device) {
            return bad("accounts not strictly ascending by device".into());
        }
        for m in &self.markets {
            let id = m.spec.market_id;
            if let Some(st) = &m.settling {
                let t = m.spec.slots as usize;
                let ok = st.prices.len() == t
                    && st.schedules.iter().all(|(_, x)| x.len() == t)
                    && st.schedules.windows(2).all(|w| w[0].0 < w[1].0)
                    && st.readings.windows(2).all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1))
                    && st.readings.iter().all(|r| (r.1 as usize) < t);
                if !ok {
                    return bad(format!("market {id}: its settlement state does not match its T = {t} or is not ascending"));
                }
            }
            if self.used_ids.binary_search(&id).is_err() {
                return bad(format!("market {id} is not among the used ids"));
            }
            if !m.enrolled.windows(2).all(|w| w[0].device < w[1].device) {
                return bad(format!("market {id}: enrolled devices not strictly ascending"));
            }
            if let Progress::Scheduling(engine) = &m.progress {
                let t = m.spec.slots as usize;
                let lens_ok = engine.x_bar.len() == t && engine.z_bar.len() == t && engine.u.len() == t && engine.latest.iter().all(|(_, x)| x.len() == t);
                let devices_ok = engine.latest.len() == m.enrolled.len() && engine.latest.iter().zip(&m.enrolled).all(|((d, _), e)| *d == e.device);
                if !lens_ok || !devices_ok {
                    return bad(format!("market {id}: the engine's schedules or variables do not match its T = {t} and enrolled devices"));
                }
            }
        }
        Ok(())
    }

    /// The markets not yet final, with their specs and opening times (what a gateway starting
    /// from a checkpoint may still bid in).
    pub fn live_markets(&self) -> impl Iterator<Item = &MarketSnapshot> {
        self.markets.iter().filter(|m| !matches!(m.progress, Progress::Final { .. }))
    }
}
