//! The log (DESIGN §6): hash-linked entries, commit certificates, and the light client that
//! devices and auditors run from the genesis validator set.

use borsh::{BorshDeserialize, BorshSerialize};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use thiserror::Error;

use circuits::fixed::Fixed;
use circuits::Slots;

use crate::admm::{AdmmParams, GridCost, Residuals, Variables};
use crate::codec::encode;
use crate::ids::ValidatorId;
use crate::market::{SignedMarketOpen, SignedWithdrawal};
use crate::membership::SignedRevocation;
use crate::merkle::Hash;
use crate::messages::{SignedEnrollment, SignedUpdate};
use crate::sign::{sign, verify, ChainId, Domain, SignatureBytes, SignatureError};

/// The grid cost as the log stores it (raw fixed point).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum GridSpec {
    /// See [`GridCost::ValleyFilling`].
    ValleyFilling {
        /// γ raw.
        gamma: i64,
        /// b_t in W.
        base_load: Vec<i32>,
    },
    /// See [`GridCost::Tariff`].
    Tariff {
        /// p_t raw.
        price: Vec<i64>,
        /// Feeder limit in W.
        feeder_cap: i64,
    },
    /// See [`GridCost::Exchange`].
    Exchange,
}

/// Market parameters as committed in genesis: ADMM constants and the clock.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct MarketSpec {
    /// The market id.
    pub market_id: u64,
    /// T.
    pub slots: u16,
    /// Δ in seconds.
    pub slot_seconds: u32,
    /// ρ raw.
    pub rho: i64,
    /// ε_abs raw (W).
    pub eps_abs: i64,
    /// ε_rel raw.
    pub eps_rel: i64,
    /// K_max.
    pub max_iterations: u32,
    /// The grid cost.
    pub grid: GridSpec,
    /// When registration closes (ms since the Unix epoch).
    pub registration_close_ms: u64,
    /// Length of each iteration's submission window.
    pub iteration_ms: u64,
    /// When slot 0 starts.
    pub execution_start_ms: u64,
    /// How the market settles (meter window, imbalance premium); `None`: it ends at its final
    /// entry, unsettled.
    pub settlement: Option<crate::settlement::SettlementSpec>,
    /// A time-compressed market (a demonstration): each slot lasts this many ms of wall clock
    /// (1 ≤ it ≤ Δ · 1000, [`crate::market::check_spec`]) while energy and money are still
    /// counted per Δ. `None`: a slot lasts Δ. Every clock of the market (its execution span,
    /// when a slot's reading is due, the meter deadline) runs on [`MarketSpec::slot_ms`].
    pub compressed_slot_ms: Option<u32>,
}

impl MarketSpec {
    /// How long one slot of execution lasts on the wall clock (ms): Δ · 1000, or the
    /// compressed length.
    pub fn slot_ms(&self) -> u64 {
        self.compressed_slot_ms.map_or(self.slot_seconds as u64 * 1000, u64::from)
    }

    /// The ADMM parameters (fails on an invalid T).
    pub fn admm(&self) -> Result<AdmmParams, circuits::limits::SlotsError> {
        Ok(AdmmParams {
            slots: Slots::new(self.slots as usize)?,
            rho: Fixed(self.rho),
            eps_abs: Fixed(self.eps_abs),
            eps_rel: Fixed(self.eps_rel),
            max_iterations: self.max_iterations,
            grid: match &self.grid {
                GridSpec::ValleyFilling { gamma, base_load } => GridCost::ValleyFilling { gamma: Fixed(*gamma), base_load: base_load.clone() },
                GridSpec::Tariff { price, feeder_cap } => GridCost::Tariff { price: price.iter().map(|&p| Fixed(p)).collect(), feeder_cap: *feeder_cap },
                GridSpec::Exchange => GridCost::Exchange,
            },
        })
    }
}

/// The hash of a verifying key the market accepts, per circuit shape.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct KeyHash {
    /// `circuits::ModelKind` id.
    pub kind: u8,
    /// T.
    pub slots: u16,
    /// SHA-256 of the verifying key file.
    pub sha256: Hash,
}

/// Height 0: who validates, what market, which keys.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Genesis {
    /// The validator set, in index order (votes name validators by index).
    pub validators: Vec<ValidatorId>,
    /// Largest accepted drift between a proposer's timestamp and a node's clock.
    pub max_clock_drift_ms: u64,
    /// The chain's first market (later ones are opened by market operators).
    pub market: MarketSpec,
    /// Accepted verifying keys.
    pub verifying_keys: Vec<KeyHash>,
    /// Enrollment authorities: the keys whose attestations admit devices
    /// (`membership::check_attestation`). No authority, no enrollment.
    pub enrollment_authorities: Vec<crate::membership::AuthorityId>,
    /// Market operators: the keys whose `market::SignedMarketOpen`s open further markets.
    pub market_operators: Vec<crate::market::OperatorId>,
}

/// One ADMM iteration as decided.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct IterationBody {
    /// The market.
    pub market_id: u64,
    /// k.
    pub iteration: u32,
    /// Digests of the included updates, ascending.
    pub updates: Vec<Hash>,
    /// x̄ raw.
    pub x_bar: Vec<i64>,
    /// z̄ raw.
    pub z_bar: Vec<i64>,
    /// u raw.
    pub u: Vec<i64>,
    /// r, s, ε_pri, ε_dual raw.
    pub residuals: [i64; 4],
}

impl IterationBody {
    /// The body for iteration `k` from the engine's state after applying it.
    pub fn new(market_id: u64, iteration: u32, mut updates: Vec<Hash>, vars: &Variables, r: &Residuals) -> IterationBody {
        updates.sort_unstable();
        IterationBody {
            market_id,
            iteration,
            updates,
            x_bar: vars.x_bar.clone(),
            z_bar: vars.z_bar.clone(),
            u: vars.u.clone(),
            residuals: [r.primal, r.dual, r.eps_primal, r.eps_dual],
        }
    }
}

/// The converged (or last) schedule and the per-slot prices.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FinalBody {
    /// The market.
    pub market_id: u64,
    /// Iterations run.
    pub iterations: u32,
    /// Whether the stopping rule held (else K_max was reached).
    pub converged: bool,
    /// `merkle::final_root` of the devices' schedules.
    pub schedule_root: Hash,
    /// λ_t raw (€/MWh).
    pub prices: Vec<i64>,
}

pub use crate::settlement::{MeterBatch, SettlementBody};

/// One market's registration batch: enrollments admitted and withdrawals, both for
/// `market_id`.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct EnrollmentBatch {
    /// The market.
    pub market_id: u64,
    /// Enrollments, ascending by device.
    pub enrollments: Vec<SignedEnrollment>,
    /// Withdrawals of devices enrolled before, ascending by device.
    pub withdrawals: Vec<SignedWithdrawal>,
}

/// What an entry records.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Body {
    /// Height 0.
    Genesis(Genesis),
    /// A market's registration batch.
    Enrollment(EnrollmentBatch),
    /// A market operator opens a market.
    Open(SignedMarketOpen),
    /// Enrollment authorities revoke attestations.
    Revocation(Vec<SignedRevocation>),
    /// An ADMM iteration.
    Iteration(IterationBody),
    /// The final schedule.
    Final(FinalBody),
    /// Meter readings.
    Meter(MeterBatch),
    /// Settlement.
    Settlement(SettlementBody),
}

impl Body {
    /// The market an entry is for (an opening: the market it opens); `None` for the genesis
    /// and revocations, which concern the whole chain.
    pub fn market_id(&self) -> Option<u64> {
        match self {
            Body::Enrollment(b) => Some(b.market_id),
            Body::Open(o) => Some(o.market_id()),
            Body::Iteration(b) => Some(b.market_id),
            Body::Final(f) => Some(f.market_id),
            Body::Meter(m) => Some(m.market_id),
            Body::Settlement(s) => Some(s.market_id),
            Body::Genesis(_) | Body::Revocation(_) => None,
        }
    }
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Entry {
    /// The chain.
    pub chain_id: ChainId,
    /// Height (genesis = 0).
    pub height: u64,
    /// Hash of the entry at height − 1 (zero for genesis).
    pub prev_hash: Hash,
    /// The state root: SHA-256 of the canonical encoding of the chain state this entry
    /// extends, the `snapshot::ChainSnapshot` after height − 1 (zero for genesis). Every
    /// validator checks it against its own state, so a certificate certifies the state too and
    /// a snapshot fetched from anyone can be checked against it (docs/protocol.md §6.10).
    pub state_root: Hash,
    /// The proposer's timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The body.
    pub body: Body,
}

impl Entry {
    /// The genesis entry of a market: height 0, no predecessor, the chain id derived from
    /// the genesis body.
    pub fn genesis(genesis: Genesis, timestamp_ms: u64) -> Entry {
        Entry { chain_id: chain_id(&genesis), height: 0, prev_hash: [0; 32], state_root: [0; 32], timestamp_ms, body: Body::Genesis(genesis) }
    }

    /// SHA-256 of the canonical encoding.
    pub fn hash(&self) -> Hash {
        Sha256::digest(encode(self)).into()
    }
}

/// The chain id of a genesis: SHA-256 of its canonical encoding.
pub fn chain_id(genesis: &Genesis) -> ChainId {
    ChainId(Sha256::digest(encode(genesis)).into())
}

/// One validator's vote: its index in the genesis set and its signature.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Vote {
    /// Index in `Genesis::validators`.
    pub validator: u16,
    /// Signature in the commit-vote domain over (height, hash).
    pub signature: SignatureBytes,
}

/// ≥ 2f+1 validator signatures over (chain id, height, entry hash).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct CommitCertificate {
    /// The height.
    pub height: u64,
    /// The consensus round in which the entry was decided (votes sign it).
    pub round: u32,
    /// The entry hash.
    pub hash: Hash,
    /// Votes, ascending by validator index, no duplicates.
    pub votes: Vec<Vote>,
}

/// The bytes a commit vote signs: height ‖ round ‖ entry hash (little-endian integers). The
/// consensus precommit for a value signs exactly these bytes, so a consensus commit
/// certificate is a log certificate without re-signing.
pub fn vote_payload(height: u64, round: u32, hash: &Hash) -> Vec<u8> {
    let mut p = height.to_le_bytes().to_vec();
    p.extend_from_slice(&round.to_le_bytes());
    p.extend_from_slice(hash);
    p
}

/// A validator's vote for (height, round, hash).
pub fn sign_vote(key: &SigningKey, chain: &ChainId, validator: u16, height: u64, round: u32, hash: &Hash) -> Vote {
    Vote { validator, signature: sign(key, chain, Domain::CommitVote, &vote_payload(height, round, hash)) }
}

/// Why a certificate or entry was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LogError {
    /// Fewer valid votes than the quorum.
    #[error("certificate for height {height} has {got} votes, the quorum is {quorum}")]
    NoQuorum {
        /// Height.
        height: u64,
        /// Votes.
        got: usize,
        /// 2f + 1.
        quorum: usize,
    },
    /// A vote names no validator of the set.
    #[error("vote from validator index {0}, the set has {1}")]
    UnknownValidator(u16, usize),
    /// Votes out of order or repeated.
    #[error("votes must be ascending by validator without repeats (index {0})")]
    VoteOrder(u16),
    /// A vote's signature does not verify.
    #[error("vote of validator {index}: {source}")]
    BadVote {
        /// Index.
        index: u16,
        /// Why.
        #[source]
        source: SignatureError,
    },
    /// The certificate is for another height or entry.
    #[error("certificate is for height {cert_height} hash {cert_hash}, the entry is height {height} hash {hash}")]
    Mismatch {
        /// Certificate height.
        cert_height: u64,
        /// Certificate hash (hex prefix).
        cert_hash: String,
        /// Entry height.
        height: u64,
        /// Entry hash (hex prefix).
        hash: String,
    },
    /// The update bodies served with an entry are not the ones it commits to.
    #[error("entry at height {height}: update bodies: {reason}")]
    Bodies {
        /// Entry height.
        height: u64,
        /// What is wrong.
        reason: String,
    },
    /// The entry does not extend the accepted chain.
    #[error("entry at height {height} does not extend the log at height {expected_height}: {reason}")]
    Link {
        /// Entry height.
        height: u64,
        /// The next height the client expects.
        expected_height: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A decided entry as stored and served: the entry, its certificate, and the update bodies
/// (with proofs) that an iteration entry names by digest, ascending by digest.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Certified {
    /// The entry.
    pub entry: Entry,
    /// ≥ 2f+1 commit votes for it.
    pub certificate: CommitCertificate,
    /// The update bodies an iteration entry names (empty for other kinds).
    pub updates: Vec<SignedUpdate>,
}

impl Certified {
    /// Whether this is an iteration entry served without the update bodies it names: its
    /// market's bodies were pruned after the market executed (docs/protocol.md §6.9). The
    /// entry and certificate are whole; only the proofs and schedules are gone.
    pub fn is_pruned(&self) -> bool {
        bodies_pruned(&self.entry.body, &self.updates)
    }
}

/// Whether `body` with these `updates` is a pruned iteration entry: ≥ 1 digest and no body
/// ([`Certified::is_pruned`], for callers that hold the parts).
pub fn bodies_pruned(body: &Body, updates: &[SignedUpdate]) -> bool {
    matches!(body, Body::Iteration(b) if !b.updates.is_empty()) && updates.is_empty()
}

/// Whether an iteration body meets the stopping rule (primal ≤ ε_primal and dual ≤ ε_dual):
/// after it, the market's final entry is due.
pub fn iteration_converged(b: &IterationBody) -> bool {
    let [primal, dual, eps_primal, eps_dual] = b.residuals;
    crate::admm::Residuals { primal, dual, eps_primal, eps_dual }.converged()
}

/// The quorum: more than two thirds of the n validators, ⌊2n/3⌋ + 1 (2f + 1 for n = 3f + 1).
/// Consensus decides with exactly this many precommits, and any two sets of this size share
/// more than n/3 validators, so at least one honest one: two certificates for different
/// entries at one height need more than f Byzantine signers. (For n = 5 and 6 this is 4 and
/// 5; 2⌊(n−1)/3⌋ + 1, used before, gave 3 and 5 and let 3 of 5 certify.)
pub fn quorum(n: usize) -> usize {
    2 * n / 3 + 1
}

impl CommitCertificate {
    /// Verifies ≥ 2f+1 distinct, valid votes of `validators` for this height and hash.
    pub fn verify(&self, chain: &ChainId, validators: &[ValidatorId]) -> Result<(), LogError> {
        let payload = vote_payload(self.height, self.round, &self.hash);
        let mut last: Option<u16> = None;
        for v in &self.votes {
            if last.is_some_and(|l| v.validator <= l) {
                return Err(LogError::VoteOrder(v.validator));
            }
            last = Some(v.validator);
            let key = validators.get(v.validator as usize).ok_or(LogError::UnknownValidator(v.validator, validators.len()))?;
            verify(&key.0, chain, Domain::CommitVote, &payload, &v.signature).map_err(|source| LogError::BadVote { index: v.validator, source })?;
        }
        let q = quorum(validators.len());
        if self.votes.len() < q {
            return Err(LogError::NoQuorum { height: self.height, got: self.votes.len(), quorum: q });
        }
        Ok(())
    }
}

/// A light client (DESIGN §6): follows the log from genesis, accepting an entry only if it
/// extends the last accepted one and carries a valid certificate.
#[derive(Debug, Clone)]
pub struct LightClient {
    chain: ChainId,
    validators: Vec<ValidatorId>,
    next_height: u64,
    last_hash: Hash,
}

impl LightClient {
    /// Starts from a genesis entry (height 0), trusted out of band.
    pub fn new(genesis: &Entry) -> Result<LightClient, LogError> {
        let Body::Genesis(g) = &genesis.body else {
            return Err(LogError::Link { height: genesis.height, expected_height: 0, reason: "not a genesis entry" });
        };
        if genesis.height != 0 || genesis.chain_id != chain_id(g) {
            return Err(LogError::Link { height: genesis.height, expected_height: 0, reason: "genesis height or chain id is wrong" });
        }
        Ok(LightClient { chain: genesis.chain_id, validators: g.validators.clone(), next_height: 1, last_hash: genesis.hash() })
    }

    /// Starts right after a trusted checkpoint (docs/protocol.md §6.10): the next entry it
    /// accepts is the one at `checkpoint.height + 1` that links to `checkpoint.hash`. The
    /// genesis (trusted out of band) still names the validators whose certificates count.
    pub fn at_checkpoint(genesis: &Entry, checkpoint: &crate::snapshot::Checkpoint) -> Result<LightClient, LogError> {
        let mut client = LightClient::new(genesis)?;
        client.next_height = checkpoint.height + 1;
        client.last_hash = checkpoint.hash;
        Ok(client)
    }

    /// The chain id.
    pub fn chain(&self) -> ChainId {
        self.chain
    }

    /// The genesis validators, in index order (whose certificates it accepts).
    pub fn validators(&self) -> &[ValidatorId] {
        &self.validators
    }

    /// The next height it expects.
    pub fn next_height(&self) -> u64 {
        self.next_height
    }

    /// Accepts a certified entry as served: [`LightClient::accept`] of its entry and
    /// certificate, and its update bodies are exactly those the entry commits to
    /// ([`check_bodies`]). On any failure nothing changes.
    pub fn accept_certified(&mut self, c: &Certified) -> Result<(), LogError> {
        self.check(&c.entry, &c.certificate)?;
        check_bodies(c)?;
        self.advance(&c.entry);
        Ok(())
    }

    /// Accepts a pruned iteration entry ([`Certified::is_pruned`]): link and certificate as
    /// [`LightClient::accept`], no bodies. The caller decides whether a pruned entry is
    /// acceptable (its market executed already, by the caller's clock): a server that
    /// withholds bodies it should hold costs the client data, never a false one.
    pub fn accept_pruned(&mut self, c: &Certified) -> Result<(), LogError> {
        if !c.is_pruned() {
            return Err(LogError::Bodies { height: c.entry.height, reason: "not a pruned iteration entry".into() });
        }
        self.accept(&c.entry, &c.certificate)
    }

    /// Accepts `entry` if it links to the last accepted entry and `cert` certifies it.
    pub fn accept(&mut self, entry: &Entry, cert: &CommitCertificate) -> Result<(), LogError> {
        self.check(entry, cert)?;
        self.advance(entry);
        Ok(())
    }

    fn advance(&mut self, entry: &Entry) {
        self.next_height += 1;
        self.last_hash = entry.hash();
    }

    /// Whether `entry` links to the last accepted entry and `cert` certifies it.
    fn check(&self, entry: &Entry, cert: &CommitCertificate) -> Result<(), LogError> {
        let link = |reason| LogError::Link { height: entry.height, expected_height: self.next_height, reason };
        if entry.chain_id != self.chain {
            return Err(link("another chain"));
        }
        if entry.height != self.next_height {
            return Err(link("wrong height"));
        }
        if entry.prev_hash != self.last_hash {
            return Err(link("previous hash does not match"));
        }
        let hash = entry.hash();
        if cert.height != entry.height || cert.hash != hash {
            return Err(LogError::Mismatch { cert_height: cert.height, cert_hash: crate::ids::short_hex(&cert.hash), height: entry.height, hash: crate::ids::short_hex(&hash) });
        }
        cert.verify(&self.chain, &self.validators)
    }
}

/// Whether the update bodies served with an entry are exactly those it commits to: for an
/// iteration entry one body per digest, in the entry's (ascending) order, each hashing to its
/// digest and naming the entry's market and iteration; for every other kind, none. The
/// digest covers the whole signed update, so a body that matches is the one the quorum
/// certified (whose signature and proof the validators checked).
pub fn check_bodies(c: &Certified) -> Result<(), LogError> {
    let height = c.entry.height;
    let bad = |reason: String| LogError::Bodies { height, reason };
    let Body::Iteration(b) = &c.entry.body else {
        if c.updates.is_empty() {
            return Ok(());
        }
        return Err(bad(format!("{} bodies served with an entry that names none", c.updates.len())));
    };
    if c.updates.len() != b.updates.len() {
        return Err(bad(format!("{} bodies served for {} digests", c.updates.len(), b.updates.len())));
    }
    for (i, (u, digest)) in c.updates.iter().zip(&b.updates).enumerate() {
        if u.digest() != *digest {
            return Err(bad(format!("body {i} (device {}) does not hash to digest {}", u.body.device, crate::ids::short_hex(digest))));
        }
        if u.body.market_id != b.market_id || u.body.iteration != b.iteration {
            return Err(bad(format!("body {i} is for market {} iteration {}", u.body.market_id, u.body.iteration)));
        }
    }
    Ok(())
}
