//! The market's replicated state machine (DESIGN §6, §7): sans-IO and deterministic.
//!
//! [`MarketApp`] is the state every validator derives from the log alone: the enrolled devices,
//! the fixed-point ADMM engine and the tip. It says which entry is due next and from when
//! ([`MarketApp::next_due`]), builds that entry from a pool of admitted messages
//! ([`MarketApp::build`]), checks another validator's proposal ([`MarketApp::validate`]) and
//! applies decided entries ([`MarketApp::apply`]). Nothing here reads a clock: times come from
//! entry timestamps, and the host passes its `now` only for admission.
//!
//! The log of one market is: genesis, enrollment batches every `iteration_ms` while
//! registration is open (each timestamped before the close), iteration k at or after its
//! deadline `close + k·iteration_ms`, and a final entry right after the iteration that met the
//! stopping rule (or K_max).
//!
//! Validity of an iteration entry = every included update is signed by an enrolled device, is
//! for this market and iteration k, appears once, has a schedule of the enrolled T, and its
//! proof verifies (batch verification) against the public inputs computed from the device's
//! enrolled commitment; and x̄, z̄, u and the residuals are exactly what the fixed-point engine
//! computes from those updates.

use std::collections::{BTreeMap, BTreeSet};

use circuits::{Context, Fr, ModelKind, Shape, Slots};
use protocol::admm::{AdmmError, AdmmState};
use protocol::clock::ClockError;
use protocol::entry::{Body, Entry, FinalBody, Genesis, IterationBody};
use protocol::ids::DeviceId;
use protocol::merkle::{final_root, Hash};
use protocol::messages::{SignedEnrollment, SignedUpdate};
use protocol::clock::RegistrationTip;
use protocol::sign::ChainId;
use prover::{batch_verify, BatchItem, UpdateProof, VerifierKeys};
use rand::{CryptoRng, RngCore};
use thiserror::Error;

pub use protocol::clock::MAX_ENROLLMENTS_PER_ENTRY;

/// Why an enrollment, update or entry was refused. Each variant has a metrics label
/// ([`Reject::label`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Reject {
    /// The signature does not verify for the claimed device on this chain.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// For another market.
    #[error("for market {got}, this chain runs market {expected}")]
    WrongMarket {
        /// The message's market.
        got: u64,
        /// This chain's market.
        expected: u64,
    },
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
    #[error("the market is over")]
    MarketOver,
    /// The genesis cannot start a market.
    #[error("genesis: {0}")]
    Genesis(String),
}

impl Reject {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::BadSignature(_) => "bad_signature",
            Reject::WrongMarket { .. } => "wrong_market",
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
            Reject::MarketOver => "market_over",
            Reject::Genesis(_) => "genesis",
        }
    }
}

/// Digests of updates whose signature and proof this validator verified already (a cache
/// that saves work, never changes a verdict: the digest covers the whole signed update).
pub type Verified = BTreeSet<Hash>;

/// An enrolled device: its circuit shape and commitment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enrolled {
    /// Model and T.
    pub shape: Shape,
    /// The commitment C.
    pub commitment: Fr,
}

/// The last applied entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    /// Its height.
    pub height: u64,
    /// Its hash.
    pub hash: Hash,
    /// Its timestamp (ms).
    pub timestamp_ms: u64,
}

/// The kind of entry due next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// A batch of enrollments (possibly empty), timestamped before registration closes.
    Enrollment,
    /// ADMM iteration k.
    Iteration(u32),
    /// The final schedule and prices.
    Final,
}

/// The market state machine of one validator.
#[derive(Debug, Clone)]
pub struct MarketApp {
    chain: ChainId,
    genesis: Genesis,
    keys: VerifierKeys,
    enrolled: BTreeMap<DeviceId, Enrolled>,
    admm: Option<AdmmState>,
    converged: bool,
    finalized: bool,
    /// What the tip is while registration runs (it decides when the next batch is due).
    registration_tip: RegistrationTip,
    tip: Tip,
    genesis_ms: u64,
}

impl MarketApp {
    /// A validator's state at a genesis entry, with the verifying keys the genesis names.
    pub fn new(genesis_entry: &Entry, keys: VerifierKeys) -> Result<MarketApp, Reject> {
        let Body::Genesis(genesis) = &genesis_entry.body else { return Err(Reject::Link("height 0 is not a genesis entry".into())) };
        let chain = protocol::entry::chain_id(genesis);
        if genesis_entry.height != 0 || genesis_entry.chain_id != chain {
            return Err(Reject::Link("genesis height or chain id is wrong".into()));
        }
        protocol::clock::MarketClock::new(protocol::clock::ClockConfig::from_spec(&genesis.market))?;
        // Every market parameter within the range the fixed-point engine computes without
        // overflow (ρ, γ, base load, tariff, feeder limit, ε).
        genesis.market.admm().map_err(|e| AdmmError::Params(e.to_string()))?.check()?;
        if genesis.enrollment_authorities.is_empty() {
            return Err(Reject::Genesis("it names no enrollment authority, so no device could enroll".into()));
        }
        let tip = Tip { height: 0, hash: genesis_entry.hash(), timestamp_ms: genesis_entry.timestamp_ms };
        Ok(MarketApp {
            chain,
            genesis: genesis.clone(),
            keys,
            enrolled: BTreeMap::new(),
            admm: None,
            converged: false,
            finalized: false,
            registration_tip: RegistrationTip::Genesis,
            tip,
            genesis_ms: genesis_entry.timestamp_ms,
        })
    }

    /// The chain id.
    pub fn chain(&self) -> ChainId {
        self.chain
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The last applied entry.
    pub fn tip(&self) -> Tip {
        self.tip
    }

    /// The ADMM state, once scheduling started.
    pub fn admm(&self) -> Option<&AdmmState> {
        self.admm.as_ref()
    }

    /// Enrolled devices.
    pub fn enrolled(&self) -> &BTreeMap<DeviceId, Enrolled> {
        &self.enrolled
    }

    /// Whether the final entry is applied.
    pub fn is_final(&self) -> bool {
        self.finalized
    }

    fn market_id(&self) -> u64 {
        self.genesis.market.market_id
    }

    fn close_ms(&self) -> u64 {
        self.genesis.market.registration_close_ms
    }

    /// The deadline of iteration k: close + k · iteration length.
    pub fn deadline(&self, k: u32) -> u64 {
        self.close_ms().saturating_add(self.genesis.market.iteration_ms.saturating_mul(k as u64))
    }

    /// How often enrollment batches are due while registration is open: the iteration length,
    /// or half the registration window if that is shorter.
    pub fn enrollment_interval(&self) -> u64 {
        protocol::clock::ClockConfig::from_spec(&self.genesis.market).enrollment_interval(self.genesis_ms)
    }

    /// The earliest timestamp of the next enrollment batch, `None` once registration is over
    /// (`ClockConfig::next_batch_ms`: one interval after the tip, 1 ms after a full batch,
    /// never after the close, whose closing batch ends registration).
    fn next_batch_ms(&self) -> Option<u64> {
        protocol::clock::ClockConfig::from_spec(&self.genesis.market).next_batch_ms(self.genesis_ms, self.tip.timestamp_ms, self.registration_tip)
    }

    /// The entry due next and the earliest timestamp it may carry; `None` once final.
    pub fn next_due(&self) -> Option<(u64, Due)> {
        if self.finalized {
            return None;
        }
        match &self.admm {
            None => match self.next_batch_ms() {
                Some(batch) => Some((batch, Due::Enrollment)),
                None => Some((self.deadline(1), self.first_after_registration())),
            },
            Some(a) if self.converged || a.iteration() >= self.genesis.market.max_iterations => Some((self.tip.timestamp_ms + 1, Due::Final)),
            Some(a) => Some((self.deadline(a.iteration() + 1), Due::Iteration(a.iteration() + 1))),
        }
    }

    /// After registration: iteration 1, or straight to the (empty) final entry if nobody
    /// enrolled.
    fn first_after_registration(&self) -> Due {
        if self.enrolled.is_empty() {
            Due::Final
        } else {
            Due::Iteration(1)
        }
    }

    /// When the host should next try to build an entry, given that nothing could be built at
    /// `now`: the time the next entry is due, if that is later.
    pub fn next_buildable(&self, now: u64) -> Option<u64> {
        let (from, _) = self.next_due()?;
        (from > now).then_some(from)
    }

    /// The entry that may extend the tip with timestamp `t`, if any: what [`Self::next_due`]
    /// says, from its time on (an enrollment batch during registration, the closing batch at or
    /// after the close, then iteration 1 from its deadline, ...).
    pub fn due_at(&self, t: u64) -> Option<Due> {
        if t <= self.tip.timestamp_ms {
            return None;
        }
        self.next_due().and_then(|(from, due)| (t >= from).then_some(due))
    }

    /// The iteration devices submit for now: the next one to be decided.
    pub fn open_iteration(&self) -> Option<u32> {
        match self.next_due()? {
            (_, Due::Enrollment) | (_, Due::Iteration(1)) if self.admm.is_none() => Some(1),
            (_, Due::Iteration(k)) => Some(k),
            _ => None,
        }
    }

    fn shape(&self, kind: u8, slots: u16) -> Result<Shape, Reject> {
        let unknown = Reject::UnknownShape { kind, slots };
        let shape = Shape { kind: ModelKind::from_id(kind).ok_or(unknown.clone())?, slots: Slots::new(slots as usize).map_err(|_| unknown.clone())? };
        if self.keys.get(&shape).is_none() || slots != self.genesis.market.slots {
            return Err(unknown);
        }
        Ok(shape)
    }

    /// The stateless checks of an enrollment plus "not enrolled yet".
    pub fn check_enrollment(&self, e: &SignedEnrollment) -> Result<Enrolled, Reject> {
        e.verify(&self.chain).map_err(|err| Reject::BadSignature(err.to_string()))?;
        if e.body.market_id != self.market_id() {
            return Err(Reject::WrongMarket { got: e.body.market_id, expected: self.market_id() });
        }
        let shape = self.shape(e.body.kind, e.body.slots)?;
        protocol::membership::check_attestation(&e.body.attestation, &self.chain, &self.genesis.enrollment_authorities, e.body.device, e.body.kind, &self.genesis.market)?;
        if self.enrolled.contains_key(&e.body.device) {
            return Err(ClockError::DuplicateEnrollment(e.body.device).into());
        }
        if self.enrolled.len() >= protocol::clock::MAX_ENROLLED {
            return Err(ClockError::Full.into());
        }
        Ok(Enrolled { shape, commitment: e.body.commitment.get() })
    }

    /// Admission of an enrollment arriving at `now_ms` (host clock) into a validator's pool.
    pub fn admit_enrollment(&self, now_ms: u64, e: &SignedEnrollment) -> Result<(), Reject> {
        // (Once the closing batch is in, nothing admitted could be included any more.)
        if self.admm.is_some() || now_ms >= self.close_ms() || self.next_batch_ms().is_none() {
            return Err(ClockError::RegistrationClosed { now_ms, close_ms: self.close_ms() }.into());
        }
        self.check_enrollment(e).map(|_| ())
    }

    /// The checks shared by admission and validation, short of proof verification: signature,
    /// market, enrollment, length, and a proof that decodes (returned, so it is decoded once).
    pub fn check_update(&self, u: &SignedUpdate) -> Result<(Enrolled, UpdateProof), Reject> {
        let enrolled = self.check_update_fields(u, true)?;
        Ok((enrolled, decode_update_proof(u)?))
    }

    /// [`Self::check_update`], skipping the signature and the proof's decoding when `known`
    /// (the digest, which covers both, passed every check and the proof verification before):
    /// the proof is `None` then. Decoding a proof (three compressed points) costs about as
    /// much as verifying the signature, so a payload of known updates is validated in a
    /// fraction of the time.
    fn check_update_known(&self, u: &SignedUpdate, known: bool) -> Result<(Enrolled, Option<UpdateProof>), Reject> {
        let enrolled = self.check_update_fields(u, !known)?;
        let proof = if known { None } else { Some(decode_update_proof(u)?) };
        Ok((enrolled, proof))
    }

    /// Signature (when `signature`), market, enrollment and length of an update.
    fn check_update_fields(&self, u: &SignedUpdate, signature: bool) -> Result<Enrolled, Reject> {
        if signature {
            u.verify(&self.chain).map_err(|err| Reject::BadSignature(err.to_string()))?;
        }
        if u.body.market_id != self.market_id() {
            return Err(Reject::WrongMarket { got: u.body.market_id, expected: self.market_id() });
        }
        let enrolled = *self.enrolled.get(&u.body.device).ok_or(Reject::Clock(ClockError::UnknownDevice(u.body.device)))?;
        if u.body.schedule.len() != enrolled.shape.slots.get() {
            return Err(Reject::WrongLength { expected: enrolled.shape.slots.get(), got: u.body.schedule.len() });
        }
        Ok(enrolled)
    }

    /// Admission of an update arriving at `now_ms` (host clock): the checks of
    /// [`Self::check_update`], for the open iteration, before its deadline. Returns the decoded
    /// proof, for [`Self::verify_updates`]; proofs are verified in batches.
    pub fn admit_update(&self, now_ms: u64, u: &SignedUpdate) -> Result<UpdateProof, Reject> {
        let current = self.open_iteration().ok_or(Reject::MarketOver)?;
        let k = u.body.iteration;
        if k < current {
            return Err(ClockError::StaleIteration { got: k, current }.into());
        }
        if k > current {
            return Err(ClockError::FutureIteration { got: k, current }.into());
        }
        if now_ms >= self.deadline(k) {
            return Err(ClockError::DeadlinePassed { iteration: k, now_ms, deadline_ms: self.deadline(k) }.into());
        }
        self.check_update(u).map(|(_, proof)| proof)
    }

    fn public_inputs(&self, u: &SignedUpdate, e: &Enrolled) -> Result<Vec<Fr>, Reject> {
        let context = Context { market_id: self.market_id(), iteration: u.body.iteration, shape: e.shape };
        circuits::public_inputs(e.commitment, &context, &u.body.schedule).map_err(|err| Reject::MalformedProof(err.to_string()))
    }

    /// Batch-verifies the proofs of the updates in `checked`, each with its
    /// [`Self::check_update_known`] result (a known update, without a proof, is skipped), and
    /// returns the positions of the invalid ones, ascending.
    fn invalid_proofs<'a, R: RngCore + CryptoRng>(
        &self,
        checked: impl IntoIterator<Item = (&'a SignedUpdate, (Enrolled, Option<UpdateProof>))>,
        rng: &mut R,
    ) -> Result<Vec<usize>, Reject> {
        // Group by shape: one verifying key per batch, with each item's index in `updates`.
        type Batch = (Shape, Vec<usize>, Vec<(UpdateProof, Vec<Fr>)>);
        let mut by_shape: BTreeMap<(u8, usize), Batch> = BTreeMap::new();
        for (i, (u, (e, proof))) in checked.into_iter().enumerate() {
            let Some(proof) = proof else { continue };
            let inputs = self.public_inputs(u, &e)?;
            let group = by_shape.entry((e.shape.kind.id(), e.shape.slots.get())).or_insert((e.shape, vec![], vec![]));
            group.1.push(i);
            group.2.push((proof, inputs));
        }
        let mut invalid = Vec::new();
        for ((kind, slots), (shape, idx, items)) in by_shape {
            let vk = self.keys.get(&shape).ok_or(Reject::UnknownShape { kind, slots: slots as u16 })?;
            let items: Vec<BatchItem> = items.iter().map(|(proof, public_inputs)| BatchItem { public_inputs, proof }).collect();
            let report = batch_verify(&vk, &items, rng);
            invalid.extend(report.invalid.into_iter().map(|j| idx[j]));
        }
        invalid.sort_unstable();
        Ok(invalid)
    }

    /// Verifies the proofs of `updates`, admitted before ([`Self::admit_update`]: signature
    /// checked, proof decoded), in one batch per shape, returning each one's verdict; the host
    /// calls this while an iteration is open, so that the deadline finds most proofs checked
    /// ([`Verified`]).
    pub fn verify_updates<R: RngCore + CryptoRng>(&self, updates: &[(SignedUpdate, UpdateProof)], rng: &mut R) -> Vec<Result<(), Reject>> {
        let mut verdicts: Vec<Result<(), Reject>> = Vec::with_capacity(updates.len());
        let mut ok = Vec::new();
        let mut checked = Vec::new();
        for (i, (u, proof)) in updates.iter().enumerate() {
            // The enrollment is looked up again: admission ran against the same enrolled set.
            match self.enrolled.get(&u.body.device) {
                Some(e) => {
                    verdicts.push(Ok(()));
                    ok.push(i);
                    checked.push((u, (*e, Some(proof.clone()))));
                }
                None => verdicts.push(Err(Reject::Clock(ClockError::UnknownDevice(u.body.device)))),
            }
        }
        match self.invalid_proofs(checked, rng) {
            Ok(bad) => {
                for j in bad {
                    verdicts[ok[j]] = Err(Reject::BadProof(updates[ok[j]].0.body.device));
                }
            }
            Err(r) => {
                for &i in &ok {
                    verdicts[i] = Err(r.clone());
                }
            }
        }
        verdicts
    }

    /// The body the engine computes for `updates` at iteration k (state unchanged).
    pub fn iteration_body(&self, k: u32, updates: &[SignedUpdate]) -> Result<IterationBody, Reject> {
        let mut engine = match &self.admm {
            Some(a) => a.clone(),
            None => self.start_engine()?,
        };
        let xs: Vec<(DeviceId, Vec<i32>)> = updates.iter().map(|u| (u.body.device, u.body.schedule.clone())).collect();
        let r = engine.apply_iteration(&xs)?;
        let digests: Vec<Hash> = updates.iter().map(SignedUpdate::digest).collect();
        Ok(IterationBody::new(self.market_id(), k, digests, engine.variables(), &r))
    }

    fn start_engine(&self) -> Result<AdmmState, Reject> {
        let params = self.genesis.market.admm().map_err(|e| AdmmError::Params(e.to_string()))?;
        Ok(AdmmState::new(params, self.enrolled.keys().copied())?)
    }

    fn final_body(&self) -> Result<FinalBody, Reject> {
        let Some(engine) = self.admm.as_ref() else {
            // Nobody enrolled: an empty schedule at zero prices.
            return Ok(FinalBody {
                market_id: self.market_id(),
                iterations: 0,
                converged: false,
                schedule_root: final_root(std::iter::empty()),
                prices: vec![0; self.genesis.market.slots as usize],
            });
        };
        Ok(FinalBody {
            market_id: self.market_id(),
            iterations: engine.iteration(),
            converged: self.converged,
            schedule_root: final_root(engine.schedules()),
            prices: engine.prices()?.iter().map(|p| p.raw()).collect(),
        })
    }

    /// Builds the entry due, timestamped `now_ms` (raised to the earliest allowed time), from
    /// pooled enrollments and updates. Messages that no longer pass (already enrolled, bad
    /// proof, ...) are left out and returned with their reason; the rest of the entry is valid
    /// by construction. Returns the entry, the included update bodies, and the dropped ones.
    #[allow(clippy::type_complexity)]
    pub fn build<R: RngCore + CryptoRng>(
        &self,
        now_ms: u64,
        enrollments: &[SignedEnrollment],
        updates: &[SignedUpdate],
        verified: &Verified,
        rng: &mut R,
    ) -> Result<(Entry, Vec<SignedUpdate>, Vec<(DeviceId, Reject)>), Reject> {
        let timestamp_ms = now_ms.max(self.tip.timestamp_ms + 1);
        let due = self.due_at(timestamp_ms).ok_or_else(|| match self.next_due() {
            None => Reject::MarketOver,
            Some((from, due)) => Reject::NotDue(format!("nothing is due at {timestamp_ms} ({due:?} from {from})")),
        })?;
        let mut dropped = Vec::new();
        let mut included = Vec::new();
        let body = match due {
            Due::Enrollment => {
                let mut seen = BTreeSet::new();
                let mut list = Vec::new();
                for e in enrollments {
                    if list.len() == MAX_ENROLLMENTS_PER_ENTRY {
                        break;
                    }
                    match self.check_enrollment(e) {
                        Ok(_) if seen.insert(e.body.device) => list.push(e.clone()),
                        Ok(_) => dropped.push((e.body.device, Reject::DuplicateInEntry(e.body.device))),
                        Err(r) => dropped.push((e.body.device, r)),
                    }
                }
                list.sort_by_key(|e| e.body.device);
                Body::Enrollment(list)
            }
            Due::Iteration(k) => {
                let mut seen = BTreeSet::new();
                let mut candidates = Vec::new();
                let mut checked = Vec::new();
                for u in updates.iter().filter(|u| u.body.iteration == k) {
                    if !seen.insert(u.body.device) {
                        continue;
                    }
                    match self.check_update_known(u, verified.contains(&u.digest())) {
                        Ok(c) => {
                            candidates.push(u.clone());
                            checked.push(c);
                        }
                        Err(r) => dropped.push((u.body.device, r)),
                    }
                }
                let invalid = self.invalid_proofs(candidates.iter().zip(checked), rng)?;
                for (i, u) in candidates.into_iter().enumerate() {
                    if invalid.binary_search(&i).is_ok() {
                        dropped.push((u.body.device, Reject::BadProof(u.body.device)));
                    } else {
                        included.push(u);
                    }
                }
                included.sort_by_key(SignedUpdate::digest);
                Body::Iteration(self.iteration_body(k, &included)?)
            }
            Due::Final => Body::Final(self.final_body()?),
        };
        let entry = Entry { chain_id: self.chain, height: self.tip.height + 1, prev_hash: self.tip.hash, timestamp_ms, body };
        Ok((entry, included, dropped))
    }

    /// Validates an entry proposed to extend the tip, with the update bodies its digests name:
    /// link, timing, and content (every signature and proof re-verified, aggregates
    /// recomputed). Deterministic: the same on every validator and in an audit.
    pub fn validate<R: RngCore + CryptoRng>(&self, entry: &Entry, updates: &[SignedUpdate], verified: &Verified, rng: &mut R) -> Result<(), Reject> {
        if entry.chain_id != self.chain {
            return Err(Reject::Link("another chain".into()));
        }
        if entry.height != self.tip.height + 1 {
            return Err(Reject::Link(format!("height {} after tip {}", entry.height, self.tip.height)));
        }
        if entry.prev_hash != self.tip.hash {
            return Err(Reject::Link("previous hash does not match the tip".into()));
        }
        if entry.timestamp_ms <= self.tip.timestamp_ms {
            return Err(Reject::Link(format!("timestamp {} not after the tip's {}", entry.timestamp_ms, self.tip.timestamp_ms)));
        }
        let due = self.due_at(entry.timestamp_ms).ok_or_else(|| match self.next_due() {
            None => Reject::MarketOver,
            Some((from, due)) => Reject::NotDue(format!("timestamp {}: {due:?} is due from {from}", entry.timestamp_ms)),
        })?;
        match (&entry.body, due) {
            (Body::Enrollment(list), Due::Enrollment) => {
                if list.len() > MAX_ENROLLMENTS_PER_ENTRY {
                    return Err(Reject::Overloaded("too many enrollments in one entry"));
                }
                let mut seen = BTreeSet::new();
                for e in list {
                    self.check_enrollment(e)?;
                    if !seen.insert(e.body.device) {
                        return Err(Reject::DuplicateInEntry(e.body.device));
                    }
                }
                Ok(())
            }
            (Body::Iteration(body), Due::Iteration(k)) => {
                if body.iteration != k {
                    return Err(Reject::WrongIteration { got: body.iteration, expected: k });
                }
                let digests: Vec<Hash> = updates.iter().map(SignedUpdate::digest).collect();
                let mut sorted = digests.clone();
                sorted.sort_unstable();
                if sorted != body.updates {
                    return Err(Reject::MissingUpdates);
                }
                let mut seen = BTreeSet::new();
                for u in updates {
                    if u.body.iteration != k {
                        return Err(Reject::WrongIteration { got: u.body.iteration, expected: k });
                    }
                    if !seen.insert(u.body.device) {
                        return Err(Reject::DuplicateInEntry(u.body.device));
                    }
                }
                let checked = updates.iter().zip(&digests).map(|(u, d)| self.check_update_known(u, verified.contains(d))).collect::<Result<Vec<_>, _>>()?;
                if let Some(&i) = self.invalid_proofs(updates.iter().zip(checked), rng)?.first() {
                    return Err(Reject::BadProof(updates[i].body.device));
                }
                if &self.iteration_body(k, updates)? != body {
                    return Err(Reject::WrongAggregates);
                }
                Ok(())
            }
            (Body::Final(body), Due::Final) => {
                if body != &self.final_body()? {
                    return Err(Reject::WrongAggregates);
                }
                Ok(())
            }
            (got, due) => Err(Reject::NotDue(format!("{:?} is due, got a {} entry", due, body_kind(got)))),
        }
    }

    /// Applies a decided entry (already validated, or certified by a quorum that validated
    /// it). Errors leave the state unchanged only for the link checks; callers treat any error
    /// on a certified entry as fatal for this market (it means a Byzantine quorum).
    pub fn apply(&mut self, entry: &Entry, updates: &[SignedUpdate]) -> Result<(), Reject> {
        if entry.height != self.tip.height + 1 || entry.prev_hash != self.tip.hash {
            return Err(Reject::Link(format!("entry {} does not extend tip {}", entry.height, self.tip.height)));
        }
        match &entry.body {
            Body::Enrollment(list) => {
                for e in list {
                    let enrolled = self.check_enrollment(e)?;
                    self.enrolled.insert(e.body.device, enrolled);
                }
            }
            Body::Iteration(_) => {
                if self.admm.is_none() {
                    self.admm = Some(self.start_engine()?);
                }
                let engine = self.admm.as_mut().expect("started above");
                let xs: Vec<(DeviceId, Vec<i32>)> = updates.iter().map(|u| (u.body.device, u.body.schedule.clone())).collect();
                self.converged = engine.apply_iteration(&xs)?.converged();
            }
            Body::Final(_) => self.finalized = true,
            Body::Genesis(_) | Body::Meter(_) | Body::Settlement(_) => {
                return Err(Reject::NotDue(format!("a {} entry", body_kind(&entry.body))));
            }
        }
        if let Body::Enrollment(list) = &entry.body {
            self.registration_tip = RegistrationTip::Batch { enrollments: list.len() };
        }
        self.tip = Tip { height: entry.height, hash: entry.hash(), timestamp_ms: entry.timestamp_ms };
        Ok(())
    }
}

/// An update's proof, decoded (points on the curve and in the subgroup).
fn decode_update_proof(u: &SignedUpdate) -> Result<UpdateProof, Reject> {
    prover::format::decode_proof(&u.body.proof).map_err(|e| Reject::MalformedProof(e.to_string()))
}

/// A short name of an entry's kind, for messages and logs.
pub fn body_kind(b: &Body) -> &'static str {
    match b {
        Body::Genesis(_) => "genesis",
        Body::Enrollment(_) => "enrollment",
        Body::Iteration(_) => "iteration",
        Body::Final(_) => "final",
        Body::Meter(_) => "meter",
        Body::Settlement(_) => "settlement",
    }
}
