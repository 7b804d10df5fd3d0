//! Why a message or entry is refused: [`Reject`], one variant per reason, each with a stable
//! metrics label.

use protocol::admm::AdmmError;
use protocol::clock::ClockError;
use protocol::ids::DeviceId;
use thiserror::Error;

/// Why an enrollment, update or entry was refused. Each variant has a metrics label
/// ([`Reject::label`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Reject {
    /// The signature does not verify for the claimed device on this chain.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// For a market this chain has not opened (or no longer holds).
    #[error("market {0} is not open on this chain")]
    UnknownMarket(u64),
    /// A market opening that validators refuse.
    #[error(transparent)]
    Open(#[from] protocol::market::OpenError),
    /// A revocation that validators refuse.
    #[error(transparent)]
    Revocation(#[from] protocol::membership::RevocationError),
    /// A model kind or T without a configured verifying key.
    #[error("no verifying key for model id {kind} with T = {slots}")]
    UnknownShape {
        /// Model id.
        kind: u8,
        /// T.
        slots: u16,
    },
    /// The enrollment's attestation does not admit the device: no authority of this chain
    /// signed it, it is for another device or kind, or it does not cover the market.
    #[error(transparent)]
    Attestation(#[from] protocol::membership::AttestationError),
    /// Timing or membership: closed registration, stale or future iteration, unknown device,
    /// duplicates.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// A schedule whose length is not the enrolled T.
    #[error("schedule of {got} slots, device enrolled with T = {expected}")]
    WrongLength {
        /// T.
        expected: usize,
        /// Entries given.
        got: usize,
    },
    /// The proof bytes are not a valid proof encoding.
    #[error("malformed proof: {0}")]
    MalformedProof(String),
    /// The proof does not verify for the device's commitment, the context and the schedule.
    #[error("proof of device {0} does not verify")]
    BadProof(DeviceId),
    /// An entry includes a device's enrollment or update twice.
    #[error("entry includes device {0} more than once")]
    DuplicateInEntry(DeviceId),
    /// An entry's aggregates (or final root and prices) differ from the recomputed ones.
    #[error("entry's aggregates differ from the recomputed ones")]
    WrongAggregates,
    /// An entry for another iteration than the one due.
    #[error("entry for iteration {got}, iteration {expected} is due")]
    WrongIteration {
        /// Proposed k.
        got: u32,
        /// Due k.
        expected: u32,
    },
    /// An entry that does not extend the tip (height, chain, previous hash, timestamp).
    #[error("entry does not extend the log: {0}")]
    Link(String),
    /// An entry of another kind than the one due, or before it is due.
    #[error("entry not due: {0}")]
    NotDue(String),
    /// The update bodies given with an iteration entry do not match its digests.
    #[error("update bodies do not match the entry's digests")]
    MissingUpdates,
    /// The engine refused the updates (unknown device, wrong length).
    #[error(transparent)]
    Admm(#[from] AdmmError),
    /// A bounded queue is full, or a device exceeded its rate.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// The market takes no more messages.
    #[error("market {0} is over")]
    MarketOver(u64),
    /// The market's update bodies were pruned (or withheld from this validator), so its
    /// engine state is gone: it can neither build nor check another of its entries.
    #[error("market {0}'s update bodies are pruned: its entries can only be followed by certificate")]
    Pruned(u64),
    /// The genesis cannot start a market.
    #[error("genesis: {0}")]
    Genesis(String),
    /// An entry whose state root is not the hash of this validator's state at the tip.
    #[error("state root {got} is not the hash of the state at the tip, {expected}")]
    StateRoot {
        /// The entry's root (first 8 bytes, hex).
        got: String,
        /// This validator's (first 8 bytes, hex).
        expected: String,
    },
    /// A snapshot (from a checkpoint) that does not restore a state.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A meter reading refused.
    #[error(transparent)]
    Reading(#[from] protocol::settlement::ReadingError),
    /// A market that cannot be settled as its state stands (an overflow).
    #[error("settlement: {0}")]
    Settlement(String),
}

impl Reject {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::BadSignature(_) => "bad_signature",
            Reject::UnknownMarket(_) => "unknown_market",
            Reject::Open(e) => e.label(),
            Reject::Revocation(e) => e.label(),
            Reject::UnknownShape { .. } => "unknown_shape",
            Reject::Attestation(e) => e.label(),
            Reject::Clock(ClockError::StaleIteration { .. }) => "stale_iteration",
            Reject::Clock(ClockError::FutureIteration { .. }) => "future_iteration",
            Reject::Clock(ClockError::DeadlinePassed { .. }) | Reject::Clock(ClockError::RegistrationClosed { .. }) => "late",
            Reject::Clock(ClockError::UnknownDevice(_)) => "unknown_device",
            Reject::Clock(ClockError::DuplicateUpdate { .. }) | Reject::Clock(ClockError::DuplicateEnrollment(_)) => "duplicate",
            Reject::Clock(_) => "clock",
            Reject::WrongLength { .. } => "wrong_length",
            Reject::MalformedProof(_) => "malformed_proof",
            Reject::BadProof(_) => "bad_proof",
            Reject::DuplicateInEntry(_) => "duplicate_in_entry",
            Reject::WrongAggregates => "wrong_aggregates",
            Reject::WrongIteration { .. } => "wrong_iteration",
            Reject::Link(_) => "link",
            Reject::NotDue(_) => "not_due",
            Reject::MissingUpdates => "missing_updates",
            Reject::Admm(AdmmError::Overflow { .. }) => "admm_overflow",
            Reject::Admm(AdmmError::Params(_)) => "market_params",
            Reject::Admm(_) => "admm",
            Reject::Overloaded(_) => "overloaded",
            Reject::MarketOver(_) => "market_over",
            Reject::Pruned(_) => "pruned",
            Reject::Genesis(_) => "genesis",
            Reject::StateRoot { .. } => "state_root",
            Reject::Snapshot(_) => "snapshot",
            Reject::Reading(e) => e.label(),
            Reject::Settlement(_) => "settlement",
        }
    }
}
