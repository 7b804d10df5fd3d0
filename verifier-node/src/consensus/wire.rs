//! What validators send each other, and what a node writes to its consensus WAL. Everything
//! is canonical Borsh, decoded with a size cap and no trailing bytes (`protocol::codec`).

use borsh::{BorshDeserialize, BorshSerialize};
use protocol::entry::{Certified, Entry};
use protocol::merkle::Hash;
use protocol::messages::SignedUpdate;

use super::context::{round_from, WireError, WireMsg, MAX_ROUND};

/// Largest peer frame: an iteration entry for 100,000 devices with its update bodies is far
/// beyond it; at T = 96 one update body is ≈ 700 bytes, so this carries ≈ 20,000 updates.
pub const MAX_PEER_FRAME: usize = 16 << 20;

/// Most certified entries in one sync response.
pub const MAX_SYNC_BATCH: usize = 64;

/// Most digests one [`PeerMsg::BodiesWanted`] names and most bodies one [`PeerMsg::Bodies`]
/// carries: an iteration entry's updates (one per enrolled device) at most.
pub const MAX_BODIES_PER_MESSAGE: usize = protocol::admm::MAX_DEVICES;

/// A message between validators.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
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
    /// The entry behind a proposal's hash. Its validity is checked on content alone; the
    /// signed proposal binds the hash to the proposer. The entry names its update bodies by
    /// digest; an honest proposer sends none of them along (receivers hold nearly all in their
    /// pools and ask for the rest with [`PeerMsg::BodiesWanted`]).
    Payload {
        /// The round it is proposed in.
        round: i64,
        /// Its proof-of-lock round (−1 if none).
        valid_round: i64,
        /// The proposer's index.
        proposer: u16,
        /// The entry.
        entry: Entry,
        /// Update bodies sent along: each one the entry names (none from an honest proposer).
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
    /// Asks for the update bodies a proposed entry names and the sender lacks.
    BodiesWanted {
        /// The proposed entry's hash.
        entry: [u8; 32],
        /// The bodies' digests (1 to [`MAX_BODIES_PER_MESSAGE`]).
        digests: Vec<Hash>,
    },
    /// Update bodies for a [`PeerMsg::BodiesWanted`] (an answer may come in several messages).
    Bodies {
        /// The proposed entry's hash.
        entry: [u8; 32],
        /// Bodies the entry names (at most [`MAX_BODIES_PER_MESSAGE`]).
        updates: Vec<SignedUpdate>,
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
            PeerMsg::BodiesWanted { .. } => "bodies_wanted",
            PeerMsg::Bodies { .. } => "bodies",
        }
    }
}

/// Why a peer message (or WAL record) was refused before any of it was used. Each variant has
/// a metrics label ([`PeerReject::label`]), counted in the node's rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerReject {
    /// The sender is no validator of the set, or is this node.
    #[error("sender index {from} is not another validator of the {validators}")]
    Sender {
        /// The sender's index.
        from: u16,
        /// The set's size.
        validators: usize,
    },
    /// A proposal or vote that does not decode (round, vote type).
    #[error("{0}")]
    Wire(#[from] WireError),
    /// A proposal or vote naming a validator index outside the set.
    #[error("{what} index {index} is outside the set of {validators}")]
    Index {
        /// "proposer" or "voter".
        what: &'static str,
        /// The index.
        index: u16,
        /// The set's size.
        validators: usize,
    },
    /// More votes in one message than a polka or round certificate holds.
    #[error("{count} votes in one message, at most {max}")]
    TooManyVotes {
        /// Votes sent.
        count: usize,
        /// 2 × the set.
        max: usize,
    },
    /// A payload's round outside 0..=MAX_ROUND.
    #[error("payload round {0} outside 0..={MAX_ROUND}")]
    PayloadRound(i64),
    /// A payload's proof-of-lock round outside −1..round.
    #[error("payload valid round {valid_round} outside -1..{round}")]
    PayloadValidRound {
        /// The payload's round.
        round: i64,
        /// Its valid round.
        valid_round: i64,
    },
    /// A payload that names another proposer than its sender (only proposers send payloads).
    #[error("payload names proposer {proposer} but came from validator {from}")]
    PayloadProposer {
        /// Named proposer.
        proposer: u16,
        /// Sender.
        from: u16,
    },
    /// A payload for a height beyond the next two.
    #[error("payload for height {height}, this node takes {next} and {}", next + 1)]
    PayloadHeight {
        /// The entry's height.
        height: u64,
        /// The next height to decide.
        next: u64,
    },
    /// A proposer's payloads or announcements are at their bound; a new one is dropped.
    #[error("validator {proposer} already has {held} {what} held, at most {max}")]
    Quota {
        /// The proposer.
        proposer: u16,
        /// "payloads" or "announcements".
        what: &'static str,
        /// How many are held.
        held: usize,
        /// The bound.
        max: usize,
    },
    /// A sync request from height 0 (genesis is configured, never synced).
    #[error("sync request from height 0")]
    SyncFromGenesis,
    /// A sync response with more than [`MAX_SYNC_BATCH`] entries or heights not consecutive.
    #[error("sync response of {count} entries (at most {MAX_SYNC_BATCH}, consecutive ascending heights)")]
    SyncBatch {
        /// Entries sent.
        count: usize,
    },
    /// A WAL timeout record of an unknown kind.
    #[error("timeout kind {0} unknown")]
    TimeoutKind(u8),
    /// A body request naming no digest or more than [`MAX_BODIES_PER_MESSAGE`], or an answer
    /// with more bodies than that.
    #[error("{what} with {count} items (1 to {MAX_BODIES_PER_MESSAGE})")]
    BodyCount {
        /// "body request" or "bodies".
        what: &'static str,
        /// Items sent.
        count: usize,
    },
    /// An update body that the entry it came with (or for) does not name.
    #[error("body of device {device} (digest {digest}) is not named by entry {entry}")]
    UnnamedBody {
        /// The entry hash, short hex.
        entry: String,
        /// The body's digest, short hex.
        digest: String,
        /// The body's device.
        device: protocol::ids::DeviceId,
    },
}

impl PeerReject {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            PeerReject::Sender { .. } => "peer_sender",
            PeerReject::Wire(WireError::Round(_)) => "peer_round",
            PeerReject::Wire(_) => "bad_peer_message",
            PeerReject::Index { .. } => "peer_index",
            PeerReject::TooManyVotes { .. } => "peer_too_many_votes",
            PeerReject::PayloadRound(_) | PeerReject::PayloadValidRound { .. } => "payload_round",
            PeerReject::PayloadProposer { .. } => "payload_proposer",
            PeerReject::PayloadHeight { .. } => "payload_height",
            PeerReject::Quota { .. } => "payload_overflow",
            PeerReject::SyncFromGenesis | PeerReject::SyncBatch { .. } => "sync_malformed",
            PeerReject::TimeoutKind(_) => "wal_timeout_kind",
            PeerReject::BodyCount { .. } => "bodies_malformed",
            PeerReject::UnnamedBody { .. } => "body_unnamed",
        }
    }
}

fn check_index(what: &'static str, index: u16, validators: usize) -> Result<(), PeerReject> {
    if index as usize >= validators {
        return Err(PeerReject::Index { what, index, validators });
    }
    Ok(())
}

impl WireMsg {
    /// Checks every field against a set of `validators`: rounds, vote type, indices.
    pub fn check(&self, validators: usize) -> Result<(), PeerReject> {
        self.decode()?;
        match *self {
            WireMsg::Proposal { proposer, .. } => check_index("proposer", proposer, validators),
            WireMsg::Vote { validator, .. } => check_index("voter", validator, validators),
        }
    }
}

/// Checks a payload's round, valid round and proposer (its sender).
fn check_payload(round: i64, valid_round: i64, proposer: u16, from: u16) -> Result<(), PeerReject> {
    if !(0..=MAX_ROUND).contains(&round) {
        return Err(PeerReject::PayloadRound(round));
    }
    if !(-1..round).contains(&valid_round) {
        return Err(PeerReject::PayloadValidRound { round, valid_round });
    }
    if proposer != from {
        return Err(PeerReject::PayloadProposer { proposer, from });
    }
    Ok(())
}

impl PeerMsg {
    /// Checks every field that does not depend on the node's state, for a message from
    /// validator `from` to validator `me` of a set of `validators`: the sender, every round and
    /// index, the payload's proposer (its sender), the sizes of vote and sync batches.
    pub fn check(&self, from: u16, me: u16, validators: usize) -> Result<(), PeerReject> {
        if from as usize >= validators || from == me {
            return Err(PeerReject::Sender { from, validators });
        }
        match self {
            PeerMsg::Consensus { msg, .. } => msg.check(validators),
            PeerMsg::Votes { votes } => {
                if votes.len() > 2 * validators {
                    return Err(PeerReject::TooManyVotes { count: votes.len(), max: 2 * validators });
                }
                votes.iter().try_for_each(|(v, _)| v.check(validators))
            }
            PeerMsg::Payload { round, valid_round, proposer, .. } => check_payload(*round, *valid_round, *proposer, from),
            PeerMsg::Status { .. } => Ok(()),
            PeerMsg::SyncRequest { from: 0 } => Err(PeerReject::SyncFromGenesis),
            PeerMsg::SyncRequest { .. } => Ok(()),
            PeerMsg::SyncResponse { entries } => {
                let consecutive = entries.windows(2).all(|w| w[0].entry.height.checked_add(1) == Some(w[1].entry.height));
                if entries.len() > MAX_SYNC_BATCH || !consecutive {
                    return Err(PeerReject::SyncBatch { count: entries.len() });
                }
                Ok(())
            }
            PeerMsg::BodiesWanted { digests, .. } if digests.is_empty() || digests.len() > MAX_BODIES_PER_MESSAGE => {
                Err(PeerReject::BodyCount { what: "body request", count: digests.len() })
            }
            PeerMsg::Bodies { updates, .. } if updates.len() > MAX_BODIES_PER_MESSAGE => Err(PeerReject::BodyCount { what: "bodies", count: updates.len() }),
            PeerMsg::BodiesWanted { .. } | PeerMsg::Bodies { .. } => Ok(()),
        }
    }
}

/// One record of the consensus WAL: the inputs that change what this node may sign, and the
/// payloads it needs to decide after a restart.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
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

impl WalRecord {
    /// The encoding of `WalRecord::Payload { entry, updates }`, written from borrowed parts (a
    /// payload's bodies are megabytes: they are not cloned to be written ahead).
    pub fn encode_payload(entry: &Entry, updates: &[SignedUpdate]) -> Vec<u8> {
        // Borsh writes an enum as its variant index, then the fields in order; a slice as a
        // `Vec` (u32 length, then the items).
        const PAYLOAD_VARIANT: u8 = 4;
        let mut out = vec![PAYLOAD_VARIANT];
        entry.serialize(&mut out).expect("writing to a Vec cannot fail");
        updates.serialize(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Checks every round, index and kind against a set of `validators`, as for a peer's
    /// message: a record that fails is a corrupt WAL, never fed to the core.
    pub fn check(&self, validators: usize) -> Result<(), PeerReject> {
        match self {
            WalRecord::Consensus { msg, .. } => msg.check(validators),
            WalRecord::ProposedValue { round, valid_round, proposer, .. } => {
                round_from(*round)?;
                round_from(*valid_round)?;
                check_index("proposer", *proposer, validators)
            }
            WalRecord::Timeout { kind, round } => {
                round_from(*round)?;
                if *kind > 3 {
                    return Err(PeerReject::TimeoutKind(*kind));
                }
                Ok(())
            }
            WalRecord::Proposed { round, .. } => round_from(*round).map(|_| ()).map_err(PeerReject::from),
            WalRecord::Payload { .. } => Ok(()),
        }
    }
}
