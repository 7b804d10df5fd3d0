//! Our types for Malachite's `Context`: heights are log heights, the value is the entry hash,
//! validators are the genesis set (one vote each, addressed by index), and signatures are
//! ed25519 (`verify_strict`) in the protocol's signing domains.
//!
//! A precommit for a value signs exactly the bytes of a protocol commit vote
//! ([`protocol::entry::vote_payload`]) in the `CommitVote` domain, so Malachite's commit
//! certificate *is* the log's certificate. Every other consensus message (proposals, prevotes,
//! nil precommits) signs its canonical encoding in the `Consensus` domain.

use std::fmt;

use borsh::{BorshDeserialize, BorshSerialize};
use ed25519_dalek::{SigningKey, VerifyingKey};
use malachitebft_core_types as mc;
use mc::{NilOrVal, Round, SignedExtension, VoteType};
use protocol::codec::encode;
use protocol::entry::vote_payload;
use protocol::merkle::Hash;
use protocol::sign::{sign, verify, ChainId, Domain, SignatureBytes};

/// A log height.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Height(pub u64);

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl mc::Height for Height {
    const ZERO: Self = Height(0);
    const INITIAL: Self = Height(1);

    fn increment_by(&self, n: u64) -> Self {
        Height(self.0.saturating_add(n))
    }

    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(Height)
    }

    fn as_u64(&self) -> u64 {
        self.0
    }
}

/// A validator's address: its index in the genesis validator list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Address(pub u16);

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl mc::Address for Address {}

/// The value consensus decides: the hash of the proposed entry (the entry itself travels
/// beside the proposal, see `node`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct EntryHash(pub Hash);

impl fmt::Display for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&protocol::ids::short_hex(&self.0))
    }
}

impl mc::Value for EntryHash {
    type Id = EntryHash;

    fn id(&self) -> EntryHash {
        *self
    }
}

/// Encodes a round: −1 for nil.
fn round_i64(r: Round) -> i64 {
    r.as_i64()
}

/// A proposal: (height, round, entry hash, POL round, proposer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Height.
    pub height: Height,
    /// Round.
    pub round: Round,
    /// The entry hash.
    pub value: EntryHash,
    /// Proof-of-lock round (nil if none).
    pub pol_round: Round,
    /// The proposer.
    pub proposer: Address,
}

/// A prevote or precommit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    /// Prevote or precommit.
    pub typ: VoteType,
    /// Height.
    pub height: Height,
    /// Round.
    pub round: Round,
    /// The entry hash voted for, or nil.
    pub value: NilOrVal<EntryHash>,
    /// The voter.
    pub validator: Address,
}

/// The canonical wire form of a proposal or vote (rounds as i64, nil = −1).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum WireMsg {
    /// A proposal.
    Proposal {
        /// Height.
        height: u64,
        /// Round.
        round: i64,
        /// Entry hash.
        value: Hash,
        /// POL round.
        pol_round: i64,
        /// Proposer index.
        proposer: u16,
    },
    /// A vote.
    Vote {
        /// 0 prevote, 1 precommit.
        typ: u8,
        /// Height.
        height: u64,
        /// Round.
        round: i64,
        /// Entry hash, or none for nil.
        value: Option<Hash>,
        /// Voter index.
        validator: u16,
    },
}

/// Why a wire message does not decode into a consensus message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A round below −1 or above [`MAX_ROUND`].
    #[error("round {0} out of range -1..={MAX_ROUND}")]
    Round(i64),
    /// A vote type other than 0 or 1.
    #[error("vote type {0} unknown")]
    VoteType(u8),
    /// A message's own round is nil.
    #[error("a proposal or vote at the nil round")]
    NilRound,
}

/// The highest round a node takes from a peer or its WAL. Malachite's `Round::from` asserts
/// `round <= u32::MAX` and `Round::increment` adds one to a `u32`, so a round near `u32::MAX`
/// would panic the node; with timeouts growing per round (capped at `max_timeout`), 65,536
/// rounds of one height last far longer than a market day.
pub const MAX_ROUND: i64 = 1 << 16;

/// A round from the wire: −1 (nil) to [`MAX_ROUND`].
pub fn round_from(r: i64) -> Result<Round, WireError> {
    if !(-1..=MAX_ROUND).contains(&r) {
        return Err(WireError::Round(r));
    }
    Ok(Round::from(r))
}

impl Proposal {
    /// The wire form.
    pub fn to_wire(&self) -> WireMsg {
        WireMsg::Proposal {
            height: self.height.0,
            round: round_i64(self.round),
            value: self.value.0,
            pol_round: round_i64(self.pol_round),
            proposer: self.proposer.0,
        }
    }
}

impl Vote {
    /// The wire form.
    pub fn to_wire(&self) -> WireMsg {
        WireMsg::Vote {
            typ: match self.typ {
                VoteType::Prevote => 0,
                VoteType::Precommit => 1,
            },
            height: self.height.0,
            round: round_i64(self.round),
            value: match self.value {
                NilOrVal::Nil => None,
                NilOrVal::Val(v) => Some(v.0),
            },
            validator: self.validator.0,
        }
    }
}

/// A decoded wire message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A proposal.
    Proposal(Proposal),
    /// A vote.
    Vote(Vote),
}

impl WireMsg {
    /// Decodes into a proposal or vote, checking ranges.
    pub fn decode(&self) -> Result<Decoded, WireError> {
        match *self {
            WireMsg::Proposal { height, round, value, pol_round, proposer } => {
                let round = round_from(round)?;
                if round.is_nil() {
                    return Err(WireError::NilRound);
                }
                Ok(Decoded::Proposal(Proposal {
                    height: Height(height),
                    round,
                    value: EntryHash(value),
                    pol_round: round_from(pol_round)?,
                    proposer: Address(proposer),
                }))
            }
            WireMsg::Vote { typ, height, round, value, validator } => {
                let round = round_from(round)?;
                if round.is_nil() {
                    return Err(WireError::NilRound);
                }
                Ok(Decoded::Vote(Vote {
                    typ: match typ {
                        0 => VoteType::Prevote,
                        1 => VoteType::Precommit,
                        t => return Err(WireError::VoteType(t)),
                    },
                    height: Height(height),
                    round,
                    value: value.map_or(NilOrVal::Nil, |h| NilOrVal::Val(EntryHash(h))),
                    validator: Address(validator),
                }))
            }
        }
    }
}

impl mc::Proposal<GridContext> for Proposal {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &EntryHash {
        &self.value
    }

    fn take_value(self) -> EntryHash {
        self.value
    }

    fn pol_round(&self) -> Round {
        self.pol_round
    }

    fn validator_address(&self) -> &Address {
        &self.proposer
    }
}

impl mc::Vote<GridContext> for Vote {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &NilOrVal<EntryHash> {
        &self.value
    }

    fn take_value(self) -> NilOrVal<EntryHash> {
        self.value
    }

    fn vote_type(&self) -> VoteType {
        self.typ
    }

    fn validator_address(&self) -> &Address {
        &self.validator
    }

    fn extension(&self) -> Option<&SignedExtension<GridContext>> {
        None
    }

    fn take_extension(&mut self) -> Option<SignedExtension<GridContext>> {
        None
    }

    fn extend(self, _extension: SignedExtension<GridContext>) -> Self {
        self
    }
}

/// Proposal parts are streamed by our host, not by the core; this type only satisfies the
/// trait (one part = the whole proposal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WholePart;

impl mc::ProposalPart<GridContext> for WholePart {
    fn is_first(&self) -> bool {
        true
    }

    fn is_last(&self) -> bool {
        true
    }
}

/// An ed25519 signature, ordered by bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature(pub [u8; 64]);

/// A validator's public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(pub VerifyingKey);

/// ed25519 with the protocol's domain separation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ed25519;

impl mc::SigningScheme for Ed25519 {
    type DecodingError = String;
    type Signature = Signature;
    type PublicKey = PublicKey;
    type PrivateKey = SigningKey;

    fn decode_signature(bytes: &[u8]) -> Result<Signature, String> {
        <[u8; 64]>::try_from(bytes).map(Signature).map_err(|_| format!("signature of {} bytes, expected 64", bytes.len()))
    }

    fn encode_signature(signature: &Signature) -> Vec<u8> {
        signature.0.to_vec()
    }

    fn decode_public_key(bytes: &[u8]) -> Result<PublicKey, String> {
        let b = <[u8; 32]>::try_from(bytes).map_err(|_| format!("public key of {} bytes, expected 32", bytes.len()))?;
        VerifyingKey::from_bytes(&b).map(PublicKey).map_err(|e| e.to_string())
    }

    fn encode_public_key(public_key: &PublicKey) -> Vec<u8> {
        public_key.0.to_bytes().to_vec()
    }
}

/// One validator (voting power 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    /// Index.
    pub address: Address,
    /// Key.
    pub key: PublicKey,
}

impl mc::Validator<GridContext> for Validator {
    fn address(&self) -> &Address {
        &self.address
    }

    fn public_key(&self) -> &PublicKey {
        &self.key
    }

    fn voting_power(&self) -> mc::VotingPower {
        1
    }
}

/// The genesis validator set, in index order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSet(pub Vec<Validator>);

impl ValidatorSet {
    /// From the genesis list; `None` if a key is not a valid ed25519 point.
    pub fn from_genesis(validators: &[protocol::ids::ValidatorId]) -> Option<ValidatorSet> {
        validators
            .iter()
            .enumerate()
            .map(|(i, v)| Some(Validator { address: Address(i as u16), key: PublicKey(VerifyingKey::from_bytes(&v.0).ok()?) }))
            .collect::<Option<Vec<_>>>()
            .map(ValidatorSet)
    }
}

impl mc::ValidatorSet<GridContext> for ValidatorSet {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn total_voting_power(&self) -> mc::VotingPower {
        self.0.len() as u64
    }

    fn get_by_address(&self, address: &Address) -> Option<&Validator> {
        self.0.get(address.0 as usize)
    }

    fn get_by_index(&self, index: usize) -> Option<&Validator> {
        self.0.get(index)
    }
}

/// The context: a chain id (for signing) and the timeouts.
#[derive(Clone, Debug)]
pub struct GridContext {
    /// The chain every signature is bound to.
    pub chain: ChainId,
}

impl mc::Context for GridContext {
    type Address = Address;
    type Height = Height;
    type ProposalPart = WholePart;
    type Proposal = Proposal;
    type Validator = Validator;
    type ValidatorSet = ValidatorSet;
    type Timeouts = mc::LinearTimeouts;
    type Value = EntryHash;
    type Vote = Vote;
    type Extension = ();
    type SigningScheme = Ed25519;

    /// Round-robin over (height + round).
    fn select_proposer<'a>(&self, set: &'a ValidatorSet, height: Height, round: Round) -> &'a Validator {
        assert!(!set.0.is_empty(), "empty validator set");
        let r = round.as_u32().unwrap_or(0) as u64;
        &set.0[((height.0 + r) % set.0.len() as u64) as usize]
    }

    fn new_proposal(&self, height: Height, round: Round, value: EntryHash, pol_round: Round, address: Address) -> Proposal {
        Proposal { height, round, value, pol_round, proposer: address }
    }

    fn new_prevote(&self, height: Height, round: Round, value_id: NilOrVal<EntryHash>, address: Address) -> Vote {
        Vote { typ: VoteType::Prevote, height, round, value: value_id, validator: address }
    }

    fn new_precommit(&self, height: Height, round: Round, value_id: NilOrVal<EntryHash>, address: Address) -> Vote {
        Vote { typ: VoteType::Precommit, height, round, value: value_id, validator: address }
    }
}

impl GridContext {
    /// The domain and bytes a consensus message signs.
    fn signed_bytes(msg: &WireMsg) -> (Domain, Vec<u8>) {
        match msg {
            WireMsg::Vote { typ: 1, height, round, value: Some(hash), .. } if *round >= 0 => (Domain::CommitVote, vote_payload(*height, *round as u32, hash)),
            other => (Domain::Consensus, encode(other)),
        }
    }

    /// Signs a proposal or vote with `key`.
    pub fn sign(&self, key: &SigningKey, msg: &WireMsg) -> Signature {
        let (domain, bytes) = Self::signed_bytes(msg);
        Signature(sign(key, &self.chain, domain, &bytes).0)
    }

    /// Verifies a signature over a proposal or vote.
    pub fn verify(&self, key: &PublicKey, msg: &WireMsg, sig: &Signature) -> bool {
        let (domain, bytes) = Self::signed_bytes(msg);
        verify(&key.0.to_bytes(), &self.chain, domain, &bytes, &SignatureBytes(sig.0)).is_ok()
    }
}
