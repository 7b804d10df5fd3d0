//! The chain's replicated state machine (DESIGN §6, §7): sans-IO and deterministic.
//!
//! [`ChainApp`] is the state every validator derives from the log alone: the markets (one
//! [`Market`] each: enrolled devices, fixed-point ADMM engine, clock), the revoked
//! attestations and the tip. It says which entry is due next and from when
//! ([`ChainApp::next_due`]), builds an entry from a validator's pools ([`ChainApp::build`]),
//! checks another validator's proposal ([`ChainApp::validate`]) and applies decided entries
//! ([`ChainApp::apply`]). Nothing here reads a clock: times come from entry timestamps, and
//! the host passes its `now` only for admission.
//!
//! Two kinds of entries extend the log:
//! - *market entries*, due by a market's clock: registration batches every interval while its
//!   registration is open (the last one, the closing batch, at or after the close), iteration
//!   k at or after its deadline `close + k·iteration_ms`, and the final entry right after the
//!   iteration that met the stopping rule (or K_max). With several markets live, the entry due
//!   is the one with the earliest due time, ties to the lower market id;
//! - *chain entries*, carried by signed messages: a market operator's opening and enrollment
//!   authorities' revocations. One may extend the tip at any time; an honest proposer builds
//!   the due market entry first.
//!
//! Validity of an iteration entry = every included update is signed by a device enrolled in
//! that market, is for iteration k, appears once, has a schedule of the enrolled T, and its
//! proof verifies (batch verification) against the public inputs computed from the device's
//! enrolled commitment; and x̄, z̄, u and the residuals are exactly what the fixed-point engine
//! computes from those updates.

mod market;
mod reject;
mod settle;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use circuits::{Context, Fr, ModelKind, Shape, Slots};
use protocol::admm::{AdmmError, AdmmState};
use protocol::clock::ClockError;
use protocol::entry::{Body, EnrollmentBatch, Entry, Genesis, IterationBody};
use protocol::ids::DeviceId;
use protocol::market::{OpenContext, SignedMarketOpen, SignedWithdrawal};
use protocol::membership::{AttestationError, RevocationError, SignedRevocation};
use protocol::merkle::Hash;
use protocol::messages::{SignedEnrollment, SignedUpdate};
use protocol::sign::ChainId;
use protocol::snapshot::ChainSnapshot;
use prover::{batch_verify, BatchItem, UpdateProof, VerifierKeys};
use rand::{CryptoRng, RngCore};

pub use market::{Enrolled, Market, Settling, Step};
pub use settle::{Account, MAX_BILLS_PER_ACCOUNT};
pub use protocol::clock::MAX_ENROLLMENTS_PER_ENTRY;
pub use reject::Reject;

/// Most final markets a validator keeps in memory; older ones keep only their id (their
/// entries stay in the log).
pub const MAX_FINISHED_MARKETS: usize = 64;

/// Most revocations in one entry.
pub const MAX_REVOCATIONS_PER_ENTRY: usize = 1024;

/// Most revoked attestations a chain holds.
pub const MAX_REVOKED: usize = 1 << 20;

/// Updates whose signature and proof this validator verified already, by digest, with the
/// enrollment (commitment, nameplate limits, attestation) the proof was verified against. A
/// cache that saves work and never changes a verdict: an entry counts only while the device's
/// enrollment in that market is still the same (a withdrawal and a new bid, or a revocation,
/// change the public inputs the digest does not cover).
pub type Verified = BTreeMap<Hash, Enrolled>;

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

/// The market entry due next: which market, and what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The market.
    pub market_id: u64,
    /// Its next step.
    pub step: Step,
}

/// The admitted messages a proposer builds from (its pools).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pool<'a> {
    /// Enrollments, of any market.
    pub enrollments: &'a [SignedEnrollment],
    /// Withdrawals, of any market.
    pub withdrawals: &'a [SignedWithdrawal],
    /// Updates, of any market and iteration.
    pub updates: &'a [SignedUpdate],
    /// Market openings.
    pub opens: &'a [SignedMarketOpen],
    /// Revocations.
    pub revocations: &'a [SignedRevocation],
    /// Meter readings, of any settling market.
    pub readings: &'a [protocol::settlement::SignedReading],
}

/// A device message left out of a built entry, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The market it was for.
    pub market_id: u64,
    /// The device.
    pub device: DeviceId,
    /// Why it was left out.
    pub why: Reject,
}

/// An entry built to extend the tip.
#[derive(Debug, Clone)]
pub struct Built {
    /// The entry.
    pub entry: Entry,
    /// The update bodies it names (iteration entries), ascending by digest.
    pub updates: Vec<SignedUpdate>,
    /// Device messages of the pool that no longer pass, with their reasons.
    pub dropped: Vec<Dropped>,
}

/// The chain state machine of one validator.
#[derive(Debug, Clone)]
pub struct ChainApp {
    chain: ChainId,
    genesis: Genesis,
    keys: VerifierKeys,
    markets: BTreeMap<u64, Market>,
    /// Every market id opened on this chain (those of markets no longer held too).
    used_ids: BTreeSet<u64>,
    revoked: BTreeSet<Hash>,
    /// Every settled device's balance and latest bills.
    accounts: BTreeMap<DeviceId, Account>,
    tip: Tip,
    /// The state root at the tip, computed when first asked (building or checking the next
    /// entry), cleared by every apply.
    root: OnceLock<Hash>,
    /// The engine state of the last iteration entry validated, for its apply.
    validated: ValidatedIteration,
}

/// The engine state an iteration entry was validated to, from the tip it extends, so that
/// applying it once it is decided does not compute the iteration again. A cache: a copy of
/// the app starts without it.
#[derive(Debug, Default)]
struct ValidatedIteration(std::sync::Mutex<Option<(Hash, IterationBody, AdmmState)>>);

impl Clone for ValidatedIteration {
    fn clone(&self) -> Self {
        ValidatedIteration::default()
    }
}

impl ValidatedIteration {
    fn keep(&self, prev_hash: Hash, body: IterationBody, engine: AdmmState) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((prev_hash, body, engine));
    }

    /// The engine state `body` was validated to from the tip `prev_hash`, if it is the one kept.
    fn take(&self, prev_hash: Hash, body: &IterationBody) -> Option<AdmmState> {
        let mut held = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match held.take() {
            Some((h, b, engine)) if h == prev_hash && b == *body => Some(engine),
            _ => None,
        }
    }
}

impl ChainApp {
    /// A validator's state at a genesis entry, with the verifying keys the genesis names; the
    /// genesis opens the chain's first market.
    pub fn new(genesis_entry: &Entry, keys: VerifierKeys) -> Result<ChainApp, Reject> {
        let Body::Genesis(genesis) = &genesis_entry.body else { return Err(Reject::Link("height 0 is not a genesis entry".into())) };
        let chain = protocol::entry::chain_id(genesis);
        if genesis_entry.height != 0 || genesis_entry.chain_id != chain {
            return Err(Reject::Link("genesis height or chain id is wrong".into()));
        }
        protocol::clock::MarketClock::new(protocol::clock::ClockConfig::from_spec(&genesis.market))?;
        // Every market parameter within the range the fixed-point engine computes without
        // overflow (ρ, γ, base load, tariff, feeder limit, ε).
        genesis.market.admm().map_err(|e| AdmmError::Params(e.to_string()))?.check()?;
        // The rest of what every opened market is checked for (settlement rule, compressed
        // slot).
        protocol::market::check_spec(&genesis.market).map_err(|e| Reject::Genesis(format!("its market: {e}")))?;
        if genesis.enrollment_authorities.is_empty() {
            return Err(Reject::Genesis("it names no enrollment authority, so no device could enroll".into()));
        }
        let tip = Tip { height: 0, hash: genesis_entry.hash(), timestamp_ms: genesis_entry.timestamp_ms };
        let first = Market::new(genesis.market.clone(), genesis_entry.timestamp_ms, 0);
        Ok(ChainApp {
            chain,
            genesis: genesis.clone(),
            keys,
            used_ids: BTreeSet::from([first.id()]),
            markets: BTreeMap::from([(first.id(), first)]),
            revoked: BTreeSet::new(),
            accounts: BTreeMap::new(),
            tip,
            root: OnceLock::new(),
            validated: ValidatedIteration::default(),
        })
    }

    /// The state a snapshot restores (docs/protocol.md §6.10), on top of the genesis (which
    /// names the chain, the roles and the keys): the caller checked the snapshot against a
    /// certified state root (`protocol::snapshot::verify_checkpoint`).
    pub fn from_snapshot(genesis_entry: &Entry, keys: VerifierKeys, snap: &ChainSnapshot) -> Result<ChainApp, Reject> {
        let mut app = ChainApp::new(genesis_entry, keys)?;
        snap.check().map_err(|e| Reject::Snapshot(e.to_string()))?;
        app.markets = snap.markets.iter().map(|m| Market::from_snapshot(m).map(|m| (m.id(), m))).collect::<Result<_, _>>()?;
        app.used_ids = snap.used_ids.iter().copied().collect();
        app.revoked = snap.revoked.iter().copied().collect();
        app.accounts = snap.accounts.iter().map(|a| (a.device, Account { balance: a.balance, bills: a.bills.clone() })).collect();
        app.tip = Tip { height: snap.height, hash: snap.tip_hash, timestamp_ms: snap.tip_timestamp_ms };
        Ok(app)
    }

    /// The state at the tip as a snapshot: canonical, what every validator derives from the
    /// log alone ([`Market::snapshot`]).
    pub fn snapshot(&self) -> ChainSnapshot {
        ChainSnapshot {
            height: self.tip.height,
            tip_hash: self.tip.hash,
            tip_timestamp_ms: self.tip.timestamp_ms,
            used_ids: self.used_ids.iter().copied().collect(),
            revoked: self.revoked.iter().copied().collect(),
            markets: self.markets.values().map(Market::snapshot).collect(),
            accounts: self
                .accounts
                .iter()
                .map(|(d, a)| protocol::snapshot::AccountSnapshot { device: *d, balance: a.balance, bills: a.bills.clone() })
                .collect(),
        }
    }

    /// The state root at the tip: what the next entry must carry
    /// (`protocol::snapshot::state_root` of the encoded [`Self::snapshot`]). `None` while a
    /// market followed from pruned history is not over yet (its final or settlement entry
    /// still to come): without its engine the
    /// state is not the one validators hashed (only a node that syncs or replays a stalled
    /// market's pruned entries passes through this; docs/protocol.md §6.10).
    pub fn state_root(&self) -> Option<Hash> {
        if self.markets.values().any(|m| m.is_pruned() && !m.is_over()) {
            return None;
        }
        Some(*self.root.get_or_init(|| protocol::snapshot::state_root(&protocol::codec::encode(&self.snapshot()))))
    }

    /// The chain id.
    pub fn chain(&self) -> ChainId {
        self.chain
    }

    /// The verifying keys it checks proofs with.
    pub fn keys(&self) -> &VerifierKeys {
        &self.keys
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The last applied entry.
    pub fn tip(&self) -> Tip {
        self.tip
    }

    /// A market this validator holds (every live one, and the last [`MAX_FINISHED_MARKETS`]
    /// final ones).
    pub fn market(&self, id: u64) -> Option<&Market> {
        self.markets.get(&id)
    }

    /// The markets held, ascending by id.
    pub fn markets(&self) -> impl Iterator<Item = &Market> {
        self.markets.values()
    }

    /// Devices enrolled over every live market (what a payload to check grows with).
    pub fn enrolled_live(&self) -> usize {
        self.markets.values().filter(|m| !m.is_final()).map(|m| m.enrolled().len()).sum()
    }

    /// Whether every market is over — final, and settled if it settles (nothing is due until
    /// an operator opens another).
    pub fn is_idle(&self) -> bool {
        self.markets.values().all(Market::is_over)
    }

    fn live_market(&self, id: u64) -> Result<&Market, Reject> {
        match self.markets.get(&id) {
            None => Err(Reject::UnknownMarket(id)),
            Some(m) if m.is_final() => Err(Reject::MarketOver(id)),
            Some(m) => Ok(m),
        }
    }

    /// The market entry due next and the earliest timestamp it may carry: of every live
    /// market's next step, the earliest, ties to the lower id. `None` when idle.
    pub fn next_due(&self) -> Option<(u64, Due)> {
        self.markets.values().filter_map(|m| m.next_due().map(|(t, step)| (t, Due { market_id: m.id(), step }))).min_by_key(|(t, d)| (*t, d.market_id))
    }

    /// When the host should next try to build an entry, given that nothing could be built at
    /// `now`: the time the next entry is due, if that is later.
    pub fn next_buildable(&self, now: u64) -> Option<u64> {
        let (from, _) = self.next_due()?;
        (from > now).then_some(from)
    }

    /// The market entry that may extend the tip with timestamp `t`, if any: what
    /// [`Self::next_due`] says, from its time on.
    pub fn due_at(&self, t: u64) -> Option<Due> {
        if t <= self.tip.timestamp_ms {
            return None;
        }
        self.next_due().and_then(|(from, due)| (t >= from).then_some(due))
    }

    /// The iteration devices of market `id` submit for now: the next one to be decided.
    pub fn open_iteration(&self, id: u64) -> Option<u32> {
        self.markets.get(&id)?.open_iteration()
    }

    fn shape(&self, kind: u8, slots: u16, market: &Market) -> Result<Shape, Reject> {
        let unknown = Reject::UnknownShape { kind, slots };
        let shape = Shape { kind: ModelKind::from_id(kind).ok_or(unknown.clone())?, slots: Slots::new(slots as usize).map_err(|_| unknown.clone())? };
        if self.keys.get(&shape).is_none() || slots != market.spec().slots {
            return Err(unknown);
        }
        Ok(shape)
    }

    /// The checks of an enrollment (a bid: the device's fresh commitment for one market)
    /// shared by admission, building and validation: signature, a live market, a verifying
    /// key for the shape, an attestation by an authority of this chain that covers the market
    /// and is not revoked, not enrolled there yet, room left.
    pub fn check_enrollment(&self, e: &SignedEnrollment) -> Result<Enrolled, Reject> {
        e.verify(&self.chain).map_err(|err| Reject::BadSignature(err.to_string()))?;
        let market = self.live_market(e.body.market_id)?;
        let shape = self.shape(e.body.kind, e.body.slots, market)?;
        let a = &e.body.attestation;
        protocol::membership::check_attestation(a, &self.chain, &self.genesis.enrollment_authorities, e.body.device, e.body.kind, market.spec())?;
        let attestation = a.digest();
        if self.revoked.contains(&attestation) {
            return Err(AttestationError::Revoked { device: e.body.device, authority: a.authority }.into());
        }
        if market.enrolled().contains_key(&e.body.device) {
            return Err(ClockError::DuplicateEnrollment(e.body.device).into());
        }
        if market.enrolled().len() >= protocol::clock::MAX_ENROLLED {
            return Err(ClockError::Full.into());
        }
        let limits = a.body.nameplate.limits(market.spec().slot_seconds);
        Ok(Enrolled { shape, commitment: e.body.commitment.get(), attestation, limits })
    }

    fn registration_open(&self, now_ms: u64, id: u64) -> Result<&Market, Reject> {
        let market = self.live_market(id)?;
        // (Once the closing batch is in, nothing admitted could be included any more.)
        if !market.registration_open(now_ms) {
            return Err(ClockError::RegistrationClosed { now_ms, close_ms: market.spec().registration_close_ms }.into());
        }
        Ok(market)
    }

    /// Admission of an enrollment arriving at `now_ms` (host clock) into a validator's pool.
    pub fn admit_enrollment(&self, now_ms: u64, e: &SignedEnrollment) -> Result<(), Reject> {
        self.registration_open(now_ms, e.body.market_id)?;
        self.check_enrollment(e).map(|_| ())
    }

    /// The checks of a withdrawal: signature, a live market, the device enrolled there.
    pub fn check_withdrawal(&self, w: &SignedWithdrawal) -> Result<(), Reject> {
        w.verify(&self.chain).map_err(|err| Reject::BadSignature(err.to_string()))?;
        let market = self.live_market(w.body.market_id)?;
        if !market.enrolled().contains_key(&w.body.device) {
            return Err(ClockError::UnknownDevice(w.body.device).into());
        }
        Ok(())
    }

    /// Admission of a withdrawal arriving at `now_ms`: before the market's registration
    /// closes, and [`Self::check_withdrawal`].
    pub fn admit_withdrawal(&self, now_ms: u64, w: &SignedWithdrawal) -> Result<(), Reject> {
        self.registration_open(now_ms, w.body.market_id)?;
        self.check_withdrawal(w)
    }

    /// The checks of a market opening in an entry timestamped `at_ms`
    /// (`protocol::market::check_open` against the markets held).
    pub fn check_open(&self, o: &SignedMarketOpen, at_ms: u64) -> Result<(), Reject> {
        let others: Vec<&protocol::entry::MarketSpec> = self.markets.values().map(Market::spec).collect();
        let live = self.markets.values().filter(|m| !m.is_final()).count();
        let cx = OpenContext { operators: &self.genesis.market_operators, used: &self.used_ids, others: &others, live };
        Ok(protocol::market::check_open(o, &self.chain, at_ms, &cx)?)
    }

    /// The checks of a revocation: by an authority of this chain, not revoked already.
    pub fn check_revocation(&self, r: &SignedRevocation) -> Result<(), Reject> {
        protocol::membership::check_revocation(r, &self.chain, &self.genesis.enrollment_authorities)?;
        if self.revoked.contains(&r.body.attestation) {
            return Err(RevocationError::AlreadyRevoked { device: r.body.device }.into());
        }
        if self.revoked.len() >= MAX_REVOKED {
            return Err(Reject::Overloaded("the chain holds the most revocations it may"));
        }
        Ok(())
    }

    /// The checks shared by admission and validation, short of proof verification: signature,
    /// market, enrollment, length, and a proof that decodes (returned, so it is decoded once).
    pub fn check_update(&self, u: &SignedUpdate) -> Result<(Enrolled, UpdateProof), Reject> {
        let enrolled = self.check_update_fields(u)?;
        Ok((enrolled, decode_update_proof(u)?))
    }

    /// [`Self::check_update`], skipping the signature and the proof's decoding when
    /// `verified` holds the update's digest with the device's current enrollment (the digest,
    /// which covers both, passed every check and the proof verification against that
    /// enrollment before): the proof is `None` then. Decoding a proof (three compressed
    /// points) costs about as much as verifying the signature, so a payload of known updates
    /// is validated in a fraction of the time.
    fn check_update_known(&self, u: &SignedUpdate, digest: &Hash, verified: &Verified) -> Result<(Enrolled, Option<UpdateProof>), Reject> {
        let enrolled = self.enrolled_for(u)?;
        let known = verified.get(digest) == Some(&enrolled);
        if !known {
            u.verify(&self.chain).map_err(|err| Reject::BadSignature(err.to_string()))?;
        }
        let proof = if known { None } else { Some(decode_update_proof(u)?) };
        Ok((enrolled, proof))
    }

    /// Signature, market, enrollment and length of an update.
    fn check_update_fields(&self, u: &SignedUpdate) -> Result<Enrolled, Reject> {
        u.verify(&self.chain).map_err(|err| Reject::BadSignature(err.to_string()))?;
        self.enrolled_for(u)
    }

    /// The enrollment an update's market holds for its device, with the length checked.
    fn enrolled_for(&self, u: &SignedUpdate) -> Result<Enrolled, Reject> {
        let market = self.live_market(u.body.market_id)?;
        let enrolled = *market.enrolled().get(&u.body.device).ok_or(Reject::Clock(ClockError::UnknownDevice(u.body.device)))?;
        if u.body.schedule.len() != enrolled.shape.slots.get() {
            return Err(Reject::WrongLength { expected: enrolled.shape.slots.get(), got: u.body.schedule.len() });
        }
        Ok(enrolled)
    }

    /// Admission of an update arriving at `now_ms` (host clock): the checks of
    /// [`Self::check_update`], for its market's open iteration, before its deadline. Returns
    /// the decoded proof, for [`Self::verify_updates`]; proofs are verified in batches.
    pub fn admit_update(&self, now_ms: u64, u: &SignedUpdate) -> Result<UpdateProof, Reject> {
        let id = u.body.market_id;
        let market = self.live_market(id)?;
        let current = market.open_iteration().ok_or(Reject::MarketOver(id))?;
        let k = u.body.iteration;
        if k < current {
            return Err(ClockError::StaleIteration { got: k, current }.into());
        }
        if k > current {
            return Err(ClockError::FutureIteration { got: k, current }.into());
        }
        if now_ms >= market.deadline(k) {
            return Err(ClockError::DeadlinePassed { iteration: k, now_ms, deadline_ms: market.deadline(k) }.into());
        }
        self.check_update(u).map(|(_, proof)| proof)
    }

    fn public_inputs(&self, u: &SignedUpdate, e: &Enrolled) -> Result<Vec<Fr>, Reject> {
        let context = Context { market_id: u.body.market_id, iteration: u.body.iteration, shape: e.shape };
        circuits::public_inputs(e.commitment, &context, &e.limits, &u.body.schedule).map_err(|err| Reject::MalformedProof(err.to_string()))
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
    /// checked, proof decoded), in one batch per shape, returning each one's verdict (with the
    /// enrollment it was verified against); the host calls this while an iteration is open, so
    /// that the deadline finds most proofs checked ([`Verified`]).
    pub fn verify_updates<R: RngCore + CryptoRng>(&self, updates: &[(SignedUpdate, UpdateProof)], rng: &mut R) -> Vec<Result<Enrolled, Reject>> {
        let mut verdicts: Vec<Result<Enrolled, Reject>> = Vec::with_capacity(updates.len());
        let mut ok = Vec::new();
        let mut checked = Vec::new();
        for (i, (u, proof)) in updates.iter().enumerate() {
            // The enrollment is looked up again: admission ran against the same enrolled set.
            match self
                .live_market(u.body.market_id)
                .and_then(|m| m.enrolled().get(&u.body.device).copied().ok_or(ClockError::UnknownDevice(u.body.device).into()))
            {
                Ok(e) => {
                    verdicts.push(Ok(e));
                    ok.push(i);
                    checked.push((u, (e, Some(proof.clone()))));
                }
                Err(r) => verdicts.push(Err(r)),
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

    /// The body market `id`'s engine computes for `updates` at iteration k (state unchanged).
    pub fn iteration_body(&self, id: u64, k: u32, updates: &[SignedUpdate]) -> Result<protocol::entry::IterationBody, Reject> {
        self.live_market(id)?.iteration_body(k, updates)
    }

    /// Builds the entry to extend the tip, timestamped `now_ms` (raised to the earliest allowed
    /// time): the market entry due, else an opening or a revocation entry from the pools.
    /// Messages that no longer pass (already enrolled, bad proof, ...) are left out (device
    /// messages are returned with their reason); the rest of the entry is valid by
    /// construction.
    pub fn build<R: RngCore + CryptoRng>(&self, now_ms: u64, pool: Pool<'_>, verified: &Verified, rng: &mut R) -> Result<Built, Reject> {
        let timestamp_ms = now_ms.max(self.tip.timestamp_ms + 1);
        let mut dropped = Vec::new();
        let mut included = Vec::new();
        let body = match self.due_at(timestamp_ms) {
            Some(due) => self.build_market_entry(due, pool, verified, rng, &mut included, &mut dropped)?,
            None => {
                if let Some(o) = pool.opens.iter().find(|o| self.check_open(o, timestamp_ms).is_ok()) {
                    Body::Open(o.clone())
                } else {
                    let mut seen = BTreeSet::new();
                    let mut list: Vec<SignedRevocation> = Vec::new();
                    for r in pool.revocations {
                        if list.len() < MAX_REVOCATIONS_PER_ENTRY && self.check_revocation(r).is_ok() && seen.insert(r.body.attestation) {
                            list.push(r.clone());
                        }
                    }
                    if !list.is_empty() {
                        list.sort_by_key(|r| r.body.attestation);
                        Body::Revocation(list)
                    } else if let Some(meter) = self.build_meter(timestamp_ms, pool.readings) {
                        meter
                    } else {
                        return Err(match self.next_due() {
                            None => Reject::NotDue("nothing is due: every market is over".into()),
                            Some((from, due)) => Reject::NotDue(format!("nothing is due at {timestamp_ms} ({due:?} from {from})")),
                        });
                    }
                }
            }
        };
        let Some(state_root) = self.state_root() else {
            return Err(Reject::Snapshot("this validator follows a market from pruned history and cannot compute the state root".into()));
        };
        let entry = Entry { chain_id: self.chain, height: self.tip.height + 1, prev_hash: self.tip.hash, state_root, timestamp_ms, body };
        Ok(Built { entry, updates: included, dropped })
    }

    fn build_market_entry<R: RngCore + CryptoRng>(
        &self,
        due: Due,
        pool: Pool<'_>,
        verified: &Verified,
        rng: &mut R,
        included: &mut Vec<SignedUpdate>,
        dropped: &mut Vec<Dropped>,
    ) -> Result<Body, Reject> {
        let id = due.market_id;
        // (A settling market is final: only its settlement is built from it.)
        let market = match due.step {
            Step::Settlement => self.markets.get(&id).ok_or(Reject::UnknownMarket(id))?,
            _ => self.live_market(id)?,
        };
        let drop = |device, why| Dropped { market_id: id, device, why };
        Ok(match due.step {
            Step::Enrollment => {
                let mut seen = BTreeSet::new();
                let mut withdrawals = Vec::new();
                for w in pool.withdrawals.iter().filter(|w| w.body.market_id == id) {
                    if withdrawals.len() == MAX_ENROLLMENTS_PER_ENTRY {
                        break;
                    }
                    match self.check_withdrawal(w) {
                        Ok(()) if seen.insert(w.body.device) => withdrawals.push(w.clone()),
                        Ok(()) => dropped.push(drop(w.body.device, Reject::DuplicateInEntry(w.body.device))),
                        Err(r) => dropped.push(drop(w.body.device, r)),
                    }
                }
                let mut enrollments = Vec::new();
                // Room left once the withdrawals are out (check_enrollment checks the set before
                // the batch).
                let room = market.room(withdrawals.len());
                for e in pool.enrollments.iter().filter(|e| e.body.market_id == id) {
                    if enrollments.len() + withdrawals.len() == MAX_ENROLLMENTS_PER_ENTRY || enrollments.len() == room {
                        break;
                    }
                    match self.check_enrollment(e) {
                        Ok(_) if seen.insert(e.body.device) => enrollments.push(e.clone()),
                        Ok(_) => dropped.push(drop(e.body.device, Reject::DuplicateInEntry(e.body.device))),
                        Err(r) => dropped.push(drop(e.body.device, r)),
                    }
                }
                enrollments.sort_by_key(|e| e.body.device);
                withdrawals.sort_by_key(|w| w.body.device);
                Body::Enrollment(EnrollmentBatch { market_id: id, enrollments, withdrawals })
            }
            Step::Iteration(k) => {
                let mut seen = BTreeSet::new();
                let mut candidates = Vec::new();
                let mut checked = Vec::new();
                for u in pool.updates.iter().filter(|u| u.body.market_id == id && u.body.iteration == k) {
                    if !seen.insert(u.body.device) {
                        continue;
                    }
                    match self.check_update_known(u, &u.digest(), verified) {
                        Ok(c) => {
                            candidates.push(u.clone());
                            checked.push(c);
                        }
                        Err(r) => dropped.push(drop(u.body.device, r)),
                    }
                }
                let invalid = self.invalid_proofs(candidates.iter().zip(checked), rng)?;
                for (i, u) in candidates.into_iter().enumerate() {
                    if invalid.binary_search(&i).is_ok() {
                        dropped.push(drop(u.body.device, Reject::BadProof(u.body.device)));
                    } else {
                        included.push(u);
                    }
                }
                included.sort_by_cached_key(SignedUpdate::digest);
                Body::Iteration(market.iteration_body(k, included)?)
            }
            Step::Final => Body::Final(market.final_body()?),
            Step::Settlement => Body::Settlement(market.settlement_body()?),
        })
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
        // (Unchecked only where this validator cannot compute it: see `state_root`.)
        if let Some(root) = self.state_root().filter(|r| *r != entry.state_root) {
            return Err(Reject::StateRoot { got: protocol::ids::short_hex(&entry.state_root), expected: protocol::ids::short_hex(&root) });
        }
        if !matches!(entry.body, Body::Iteration(_)) && !updates.is_empty() {
            return Err(Reject::MissingUpdates);
        }
        match &entry.body {
            Body::Open(o) => return self.check_open(o, entry.timestamp_ms),
            Body::Revocation(list) => return self.validate_revocations(list),
            Body::Meter(batch) => return self.validate_meter(batch, entry.timestamp_ms),
            Body::Genesis(_) => return Err(Reject::NotDue("a genesis entry".into())),
            Body::Enrollment(_) | Body::Iteration(_) | Body::Final(_) | Body::Settlement(_) => {}
        }
        let due = self.due_at(entry.timestamp_ms).ok_or_else(|| match self.next_due() {
            None => Reject::NotDue("every market is final".into()),
            Some((from, due)) => Reject::NotDue(format!("timestamp {}: {due:?} is due from {from}", entry.timestamp_ms)),
        })?;
        let not_due = || Reject::NotDue(format!("{due:?} is due, got a {} entry for market {:?}", body_kind(&entry.body), entry.body.market_id()));
        if entry.body.market_id() != Some(due.market_id) {
            return Err(not_due());
        }
        if let (Body::Settlement(body), Step::Settlement) = (&entry.body, due.step) {
            let market = self.markets.get(&due.market_id).ok_or(Reject::UnknownMarket(due.market_id))?;
            return self.validate_settlement(market, body);
        }
        let market = self.live_market(due.market_id)?;
        match (&entry.body, due.step) {
            (Body::Enrollment(batch), Step::Enrollment) => {
                if batch.enrollments.len() + batch.withdrawals.len() > MAX_ENROLLMENTS_PER_ENTRY {
                    return Err(Reject::Overloaded("too many enrollments in one entry"));
                }
                if batch.enrollments.len() > market.room(batch.withdrawals.len()) {
                    return Err(ClockError::Full.into());
                }
                let mut seen = BTreeSet::new();
                for w in &batch.withdrawals {
                    if w.body.market_id != due.market_id {
                        return Err(not_due());
                    }
                    self.check_withdrawal(w)?;
                    if !seen.insert(w.body.device) {
                        return Err(Reject::DuplicateInEntry(w.body.device));
                    }
                }
                for e in &batch.enrollments {
                    if e.body.market_id != due.market_id {
                        return Err(not_due());
                    }
                    self.check_enrollment(e)?;
                    if !seen.insert(e.body.device) {
                        return Err(Reject::DuplicateInEntry(e.body.device));
                    }
                }
                Ok(())
            }
            (Body::Iteration(body), Step::Iteration(k)) => {
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
                    if u.body.iteration != k || u.body.market_id != due.market_id {
                        return Err(Reject::WrongIteration { got: u.body.iteration, expected: k });
                    }
                    if !seen.insert(u.body.device) {
                        return Err(Reject::DuplicateInEntry(u.body.device));
                    }
                }
                let checked = updates.iter().zip(&digests).map(|(u, d)| self.check_update_known(u, d, verified)).collect::<Result<Vec<_>, _>>()?;
                if let Some(&i) = self.invalid_proofs(updates.iter().zip(checked), rng)?.first() {
                    return Err(Reject::BadProof(updates[i].body.device));
                }
                let (computed, engine) = market.next_iteration(k, updates, digests)?;
                if &computed != body {
                    return Err(Reject::WrongAggregates);
                }
                self.validated.keep(entry.prev_hash, computed, engine);
                Ok(())
            }
            (Body::Final(body), Step::Final) => {
                if body != &market.final_body()? {
                    return Err(Reject::WrongAggregates);
                }
                Ok(())
            }
            _ => Err(not_due()),
        }
    }

    /// A revocation entry: 1 to [`MAX_REVOCATIONS_PER_ENTRY`] revocations, strictly ascending
    /// by attestation digest, each valid.
    fn validate_revocations(&self, list: &[SignedRevocation]) -> Result<(), Reject> {
        if list.is_empty() || list.len() > MAX_REVOCATIONS_PER_ENTRY {
            return Err(Reject::Overloaded("a revocation entry holds 1 to 1024 revocations"));
        }
        if list.windows(2).any(|w| w[0].body.attestation >= w[1].body.attestation) {
            return Err(Reject::NotDue("revocations not strictly ascending by attestation digest".into()));
        }
        list.iter().try_for_each(|r| self.check_revocation(r))
    }

    /// Applies a decided entry (already validated, or certified by a quorum that validated
    /// it). Errors leave the state unchanged only for the link checks; callers treat any error
    /// on a certified entry as fatal (it means a Byzantine quorum).
    pub fn apply(&mut self, entry: &Entry, updates: &[SignedUpdate]) -> Result<(), Reject> {
        if entry.height != self.tip.height + 1 || entry.prev_hash != self.tip.hash {
            return Err(Reject::Link(format!("entry {} does not extend tip {}", entry.height, self.tip.height)));
        }
        self.root = OnceLock::new();
        let ts = entry.timestamp_ms;
        match &entry.body {
            Body::Enrollment(batch) => {
                let joined = batch.enrollments.iter().map(|e| self.check_enrollment(e).map(|en| (e.body.device, en))).collect::<Result<Vec<_>, _>>()?;
                let left: Vec<DeviceId> = batch.withdrawals.iter().map(|w| w.body.device).collect();
                self.market_mut(batch.market_id)?.apply_batch(ts, joined, &left);
            }
            Body::Iteration(b) => {
                let validated = self.validated.take(entry.prev_hash, b);
                let market = self.market_mut(b.market_id)?;
                if market.is_pruned() {
                    market.apply_pruned_iteration(ts, b);
                } else if updates.len() != b.updates.len() {
                    return Err(Reject::MissingUpdates);
                } else if let Some(engine) = validated {
                    market.install_iteration(ts, b, engine);
                } else {
                    market.apply_iteration(ts, updates)?;
                }
            }
            Body::Final(f) => {
                self.market_mut(f.market_id)?.apply_final(ts, entry.height, &f.prices);
                self.retire_finished();
            }
            Body::Open(o) => {
                let spec = o.body.spec.clone();
                if !self.used_ids.insert(spec.market_id) {
                    return Err(protocol::market::OpenError::Reused(spec.market_id).into());
                }
                self.markets.insert(spec.market_id, Market::new(spec, ts, entry.height));
            }
            Body::Revocation(list) => {
                self.revoked.extend(list.iter().map(|r| r.body.attestation));
                let revoked = &self.revoked;
                for m in self.markets.values_mut() {
                    m.revoke(&|h| revoked.contains(h));
                }
            }
            Body::Meter(batch) => self.apply_meter(ts, batch)?,
            Body::Settlement(body) => {
                self.apply_settlement(ts, body)?;
                self.retire_finished();
            }
            Body::Genesis(_) => return Err(Reject::NotDue("a genesis entry".into())),
        }
        self.tip = Tip { height: entry.height, hash: entry.hash(), timestamp_ms: ts };
        Ok(())
    }

    /// Applies a certified entry as served: [`Self::apply_pruned`] when it is pruned
    /// (`Certified::is_pruned`), else [`Self::apply`] with its bodies. For entries whose
    /// certificate (and, when pruned, market execution) the caller checked, or from this
    /// validator's own store.
    pub fn apply_certified(&mut self, c: &protocol::entry::Certified) -> Result<(), Reject> {
        if c.is_pruned() {
            self.apply_pruned(&c.entry)
        } else {
            self.apply(&c.entry, &c.updates)
        }
    }

    /// Applies a certified entry as pruned history: an iteration entry without its bodies
    /// (the caller checked link, certificate and that its market executed, or it comes from
    /// this validator's own pruned store) sets its market's clock from the entry and drops the
    /// engine ([`Market::apply_pruned_iteration`]); any other entry is [`Self::apply`]'d.
    pub fn apply_pruned(&mut self, entry: &Entry) -> Result<(), Reject> {
        let Body::Iteration(b) = &entry.body else { return self.apply(entry, &[]) };
        if entry.height != self.tip.height + 1 || entry.prev_hash != self.tip.hash {
            return Err(Reject::Link(format!("entry {} does not extend tip {}", entry.height, self.tip.height)));
        }
        self.root = OnceLock::new();
        self.market_mut(b.market_id)?.apply_pruned_iteration(entry.timestamp_ms, b);
        self.tip = Tip { height: entry.height, hash: entry.hash(), timestamp_ms: entry.timestamp_ms };
        Ok(())
    }

    fn market_mut(&mut self, id: u64) -> Result<&mut Market, Reject> {
        self.markets.get_mut(&id).ok_or(Reject::UnknownMarket(id))
    }

    /// Keeps the last [`MAX_FINISHED_MARKETS`] markets that are over (by opening time).
    fn retire_finished(&mut self) {
        let mut finished: Vec<(u64, u64)> = self.markets.values().filter(|m| m.is_over()).map(|m| (m.opened_ms(), m.id())).collect();
        if finished.len() <= MAX_FINISHED_MARKETS {
            return;
        }
        finished.sort_unstable();
        for (_, id) in &finished[..finished.len() - MAX_FINISHED_MARKETS] {
            self.markets.remove(id);
        }
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
        Body::Open(_) => "open",
        Body::Revocation(_) => "revocation",
        Body::Iteration(_) => "iteration",
        Body::Final(_) => "final",
        Body::Meter(_) => "meter",
        Body::Settlement(_) => "settlement",
    }
}
