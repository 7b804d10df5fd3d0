//! What validators send each other, and what a node writes to its consensus WAL. Everything
//! is canonical Borsh, decoded with a size cap and no trailing bytes (`protocol::codec`).

use borsh::{BorshDeserialize, BorshSerialize};
use protocol::entry::{Certified, Entry};
use protocol::messages::SignedUpdate;

use super::context::WireMsg;

/// Largest peer frame: an iteration entry for 100,000 devices with its update bodies is far
/// beyond it; at T = 96 one update body is ≈ 700 bytes, so this carries ≈ 20,000 updates.
pub const MAX_PEER_FRAME: usize = 16 << 20;

/// Most certified entries in one sync response.
pub const MAX_SYNC_BATCH: usize = 64;

/// A message between validators.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum PeerMsg {
    /// A signed proposal or vote.
    Consensus {
        /// The proposal or vote.
        msg: WireMsg,
        /// The sender's signature over it.
        signature: [u8; 64],
    },
    /// Signed votes that make up a polka or round certificate (each checked as a vote).
    Votes {
        /// (vote, signature) pairs.
        votes: Vec<(WireMsg, [u8; 64])>,
    },
    /// The entry behind a proposal's hash, with the update bodies it names. Its validity is
    /// checked on content alone; the signed proposal binds the hash to the proposer.
    Payload {
        /// The round it is proposed in.
        round: i64,
        /// Its proof-of-lock round (−1 if none).
        valid_round: i64,
        /// The proposer's index.
        proposer: u16,
        /// The entry.
        entry: Entry,
        /// The update bodies, ascending by digest.
        updates: Vec<SignedUpdate>,
    },
    /// The sender's tip height (sent periodically; a lagging node asks for the rest).
    Status {
        /// Highest decided height.
        tip: u64,
    },
    /// Asks for certified entries from `from` on.
    SyncRequest {
        /// First height wanted.
        from: u64,
    },
    /// Certified entries, consecutive, ascending.
    SyncResponse {
        /// At most [`MAX_SYNC_BATCH`].
        entries: Vec<Certified>,
    },
}

impl PeerMsg {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMsg::Consensus { msg: WireMsg::Proposal { .. }, .. } => "proposal",
            PeerMsg::Consensus { msg: WireMsg::Vote { .. }, .. } => "vote",
            PeerMsg::Votes { .. } => "votes",
            PeerMsg::Payload { .. } => "payload",
            PeerMsg::Status { .. } => "status",
            PeerMsg::SyncRequest { .. } => "sync_request",
            PeerMsg::SyncResponse { .. } => "sync_response",
        }
    }
}

/// One record of the consensus WAL: the inputs that change what this node may sign, and the
/// payloads it needs to decide after a restart.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum WalRecord {
    /// A signed proposal or vote (ours or a peer's).
    Consensus {
        /// The message.
        msg: WireMsg,
        /// Its signature.
        signature: [u8; 64],
    },
    /// A full proposal seen or built, and its validity.
    ProposedValue {
        /// Round.
        round: i64,
        /// Valid round.
        valid_round: i64,
        /// Proposer.
        proposer: u16,
        /// Entry hash.
        value: [u8; 32],
        /// Whether it validated.
        valid: bool,
    },
    /// A timeout that elapsed: kind (0 propose, 1 prevote, 2 precommit, 3 rebroadcast) and
    /// round.
    Timeout {
        /// Kind.
        kind: u8,
        /// Round.
        round: i64,
    },
    /// This node proposed `value` in `round` (a restarted proposer re-proposes the same entry
    /// instead of equivocating).
    Proposed {
        /// Round.
        round: i64,
        /// Entry hash.
        value: [u8; 32],
    },
    /// An entry and its updates, kept so a restarted node can store what it decides.
    Payload {
        /// The entry.
        entry: Entry,
        /// Its update bodies.
        updates: Vec<SignedUpdate>,
    },
}
