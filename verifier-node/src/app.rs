//! The market's replicated state machine (DESIGN §6, §7): sans-IO and deterministic.
//!
//! A validator feeds it enrollments and updates as they arrive (with the log's notion of
//! `now`), asks it for an iteration proposal at a deadline, validates other validators'
//! proposals, and applies decided entries. Every rejection carries a [`Reject`] reason, which
//! the node counts for its metrics.
//!
//! Validity of an iteration proposal = every included update is signed by an enrolled device,
//! is for this market and the open iteration, appears once, has a schedule of the enrolled T,
//! and its proof verifies (batch verification) against the public inputs computed from the
//! device's enrolled commitment; and the proposed x̄, z̄, u and residuals are exactly what the
//! fixed-point engine computes from those updates.

use std::collections::BTreeMap;

use circuits::{Context, Fr, ModelKind, Shape, Slots};
use protocol::admm::{AdmmError, AdmmState};
use protocol::clock::{ClockConfig, ClockError, MarketClock};
use protocol::entry::{Genesis, IterationBody};
use protocol::ids::DeviceId;
use protocol::merkle::Hash;
use protocol::messages::{SignedEnrollment, SignedUpdate};
use protocol::sign::ChainId;
use prover::{batch_verify, BatchItem, UpdateProof, VerifierKeys};
use rand::{CryptoRng, RngCore};
use thiserror::Error;

/// Most updates held for the open iteration (one per enrolled device at most).
pub const MAX_PENDING: usize = protocol::admm::MAX_DEVICES;

/// Why an enrollment, update or proposal was refused. Each variant is a metrics label.
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
    /// The market clock refused it (closed registration, stale or future iteration, ...).
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
    /// A proposal includes an update twice, or one already rejected.
    #[error("proposal includes the update of device {0} more than once")]
    DuplicateInProposal(DeviceId),
    /// A proposal's aggregates differ from the recomputed ones.
    #[error("proposal's aggregates differ from the recomputed ones")]
    WrongAggregates,
    /// A proposal for another iteration than the one due.
    #[error("proposal for iteration {got}, iteration {expected} is due")]
    WrongIteration {
        /// Proposed k.
        got: u32,
        /// Due k.
        expected: u32,
    },
    /// The engine refused the updates (unknown device, wrong length).
    #[error(transparent)]
    Admm(#[from] AdmmError),
    /// Too many updates held.
    #[error("update queue full ({MAX_PENDING})")]
    Overloaded,
    /// The market has not started scheduling.
    #[error("the market is not scheduling")]
    NotScheduling,
}

/// An enrolled device: its circuit shape and commitment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enrolled {
    /// Model and T.
    pub shape: Shape,
    /// The commitment C.
    pub commitment: Fr,
}

/// An iteration proposal: the included updates and the body they lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The updates, as received.
    pub updates: Vec<SignedUpdate>,
    /// The iteration body (digests of the updates, aggregates, residuals).
    pub body: IterationBody,
}

/// The market state machine of one validator.
#[derive(Debug)]
pub struct MarketApp {
    chain: ChainId,
    genesis: Genesis,
    keys: VerifierKeys,
    clock: MarketClock,
    enrolled: BTreeMap<DeviceId, Enrolled>,
    admm: Option<AdmmState>,
    pending: BTreeMap<(u32, DeviceId), SignedUpdate>,
}

impl MarketApp {
    /// A validator's state at genesis, with the verifying keys the genesis names.
    pub fn new(chain: ChainId, genesis: Genesis, keys: VerifierKeys) -> Result<MarketApp, Reject> {
        let clock = MarketClock::new(ClockConfig::from_spec(&genesis.market))?;
        Ok(MarketApp { chain, genesis, keys, clock, enrolled: BTreeMap::new(), admm: None, pending: BTreeMap::new() })
    }

    /// The market clock.
    pub fn clock(&self) -> &MarketClock {
        &self.clock
    }

    /// The ADMM state, once scheduling started.
    pub fn admm(&self) -> Option<&AdmmState> {
        self.admm.as_ref()
    }

    /// Enrolled devices.
    pub fn enrolled(&self) -> &BTreeMap<DeviceId, Enrolled> {
        &self.enrolled
    }

    fn market_id(&self) -> u64 {
        self.genesis.market.market_id
    }

    fn shape(&self, kind: u8, slots: u16) -> Result<Shape, Reject> {
        let unknown = Reject::UnknownShape { kind, slots };
        let shape = Shape {
            kind: ModelKind::from_id(kind).ok_or(unknown.clone())?,
            slots: Slots::new(slots as usize).map_err(|_| unknown.clone())?,
        };
        if self.keys.get(&shape).is_none() || slots != self.genesis.market.slots {
            return Err(unknown);
        }
        Ok(shape)
    }

    /// Admits an enrollment arriving at `now_ms`.
    pub fn on_enrollment(&mut self, now_ms: u64, e: &SignedEnrollment) -> Result<(), Reject> {
        e.verify(&self.chain).map_err(|err| Reject::BadSignature(err.to_string()))?;
        if e.body.market_id != self.market_id() {
            return Err(Reject::WrongMarket { got: e.body.market_id, expected: self.market_id() });
        }
        let shape = self.shape(e.body.kind, e.body.slots)?;
        self.clock.on_enrollment(now_ms, e.body.device)?;
        self.enrolled.insert(e.body.device, Enrolled { shape, commitment: e.body.commitment.get() });
        Ok(())
    }

    /// Starts the ADMM engine over the enrolled devices; the host calls this on the clock's
    /// `CloseRegistration` action.
    pub fn close_registration(&mut self) -> Result<(), Reject> {
        let params = self.genesis.market.admm().map_err(|e| AdmmError::Params(e.to_string()))?;
        self.admm = Some(AdmmState::new(params, self.enrolled.keys().copied())?);
        Ok(())
    }

    /// The checks shared by admission and proposal validation, short of proof verification:
    /// signature, market, enrollment, length, and a proof that decodes (returned, so it is
    /// decoded once).
    fn check_update(&self, u: &SignedUpdate) -> Result<(Enrolled, UpdateProof), Reject> {
        u.verify(&self.chain).map_err(|err| Reject::BadSignature(err.to_string()))?;
        if u.body.market_id != self.market_id() {
            return Err(Reject::WrongMarket { got: u.body.market_id, expected: self.market_id() });
        }
        let enrolled = *self
            .enrolled
            .get(&u.body.device)
            .ok_or(Reject::Clock(ClockError::UnknownDevice(u.body.device)))?;
        if u.body.schedule.len() != enrolled.shape.slots.get() {
            return Err(Reject::WrongLength { expected: enrolled.shape.slots.get(), got: u.body.schedule.len() });
        }
        let proof = prover::format::decode_proof(&u.body.proof).map_err(|e| Reject::MalformedProof(e.to_string()))?;
        Ok((enrolled, proof))
    }

    /// Admits an update for the open iteration (proofs are verified in a batch at the deadline).
    pub fn on_update(&mut self, now_ms: u64, u: SignedUpdate) -> Result<(), Reject> {
        self.check_update(&u)?;
        if self.pending.len() >= MAX_PENDING {
            return Err(Reject::Overloaded);
        }
        self.clock.on_update(now_ms, u.body.device, u.body.iteration)?;
        self.pending.insert((u.body.iteration, u.body.device), u);
        Ok(())
    }

    fn public_inputs(&self, u: &SignedUpdate, e: &Enrolled) -> Result<Vec<Fr>, Reject> {
        let context = Context { market_id: self.market_id(), iteration: u.body.iteration, shape: e.shape };
        circuits::public_inputs(e.commitment, &context, &u.body.schedule).map_err(|err| Reject::MalformedProof(err.to_string()))
    }

    /// Batch-verifies `updates` (already through [`Self::check_update`], whose results are
    /// `checked`, in the same order) and returns the indices of the invalid ones.
    fn invalid_proofs<R: RngCore + CryptoRng>(
        &self,
        updates: &[SignedUpdate],
        checked: Vec<(Enrolled, UpdateProof)>,
        rng: &mut R,
    ) -> Result<Vec<usize>, Reject> {
        // Group by shape: one verifying key per batch.
        let mut by_shape: BTreeMap<(u8, usize), (Shape, Vec<usize>)> = BTreeMap::new();
        let mut decoded = Vec::with_capacity(updates.len());
        for (i, (u, (e, proof))) in updates.iter().zip(checked).enumerate() {
            decoded.push((proof, self.public_inputs(u, &e)?));
            by_shape.entry((e.shape.kind.id(), e.shape.slots.get())).or_insert((e.shape, vec![])).1.push(i);
        }
        let mut invalid = Vec::new();
        for ((kind, slots), (shape, idx)) in by_shape {
            let vk = self.keys.get(&shape).ok_or(Reject::UnknownShape { kind, slots: slots as u16 })?;
            let items: Vec<BatchItem> =
                idx.iter().map(|&i| BatchItem { public_inputs: &decoded[i].1, proof: &decoded[i].0 }).collect();
            let report = batch_verify(&vk, &items, rng);
            invalid.extend(report.invalid.into_iter().map(|j| idx[j]));
        }
        invalid.sort_unstable();
        Ok(invalid)
    }

    /// The iteration due for aggregation (the one whose deadline just passed).
    fn due_iteration(&self) -> Result<u32, Reject> {
        self.admm.as_ref().map(|a| a.iteration() + 1).ok_or(Reject::NotScheduling)
    }

    /// Builds this validator's proposal for the due iteration from the updates it holds: the
    /// ones whose proofs fail are dropped (and returned with their reason).
    pub fn propose<R: RngCore + CryptoRng>(&mut self, rng: &mut R) -> Result<(Proposal, Vec<(DeviceId, Reject)>), Reject> {
        let k = self.due_iteration()?;
        // Updates for later iterations (arrived after the deadline) stay held; stale ones go.
        let (held, later): (Vec<SignedUpdate>, Vec<SignedUpdate>) =
            std::mem::take(&mut self.pending).into_values().partition(|u| u.body.iteration == k);
        self.pending = later.into_iter().filter(|u| u.body.iteration > k).map(|u| ((u.body.iteration, u.body.device), u)).collect();
        // Admission verified signatures, enrollment and lengths; only the proofs remain.
        let checked = held
            .iter()
            .map(|u| {
                let e = *self.enrolled.get(&u.body.device).ok_or(Reject::Clock(ClockError::UnknownDevice(u.body.device)))?;
                let proof = prover::format::decode_proof(&u.body.proof).map_err(|err| Reject::MalformedProof(err.to_string()))?;
                Ok((e, proof))
            })
            .collect::<Result<Vec<_>, Reject>>()?;
        let invalid = self.invalid_proofs(&held, checked, rng)?;
        let mut dropped = Vec::new();
        let mut included = Vec::new();
        for (i, u) in held.into_iter().enumerate() {
            if invalid.binary_search(&i).is_ok() {
                dropped.push((u.body.device, Reject::BadProof(u.body.device)));
            } else {
                included.push(u);
            }
        }
        let body = self.aggregate(k, &included)?;
        Ok((Proposal { updates: included, body }, dropped))
    }

    /// The body the engine computes for `updates` at iteration k (state unchanged).
    fn aggregate(&self, k: u32, updates: &[SignedUpdate]) -> Result<IterationBody, Reject> {
        let mut engine = self.admm.clone().ok_or(Reject::NotScheduling)?;
        let xs: Vec<(DeviceId, Vec<i32>)> = updates.iter().map(|u| (u.body.device, u.body.schedule.clone())).collect();
        let r = engine.apply_iteration(&xs)?;
        let digests: Vec<Hash> = updates.iter().map(SignedUpdate::digest).collect();
        Ok(IterationBody::new(self.market_id(), k, digests, engine.variables(), &r))
    }

    /// Validates another validator's proposal: every update re-verified, aggregates recomputed.
    pub fn validate<R: RngCore + CryptoRng>(&self, p: &Proposal, rng: &mut R) -> Result<(), Reject> {
        let k = self.due_iteration()?;
        if p.body.iteration != k {
            return Err(Reject::WrongIteration { got: p.body.iteration, expected: k });
        }
        let mut seen = std::collections::BTreeSet::new();
        for u in &p.updates {
            if u.body.iteration != k {
                return Err(Reject::WrongIteration { got: u.body.iteration, expected: k });
            }
            if !seen.insert(u.body.device) {
                return Err(Reject::DuplicateInProposal(u.body.device));
            }
        }
        let checked = p.updates.iter().map(|u| self.check_update(u)).collect::<Result<Vec<_>, _>>()?;
        if let Some(&i) = self.invalid_proofs(&p.updates, checked, rng)?.first() {
            return Err(Reject::BadProof(p.updates[i].body.device));
        }
        if self.aggregate(k, &p.updates)? != p.body {
            return Err(Reject::WrongAggregates);
        }
        Ok(())
    }

    /// Applies a decided iteration (after consensus): the engine advances; returns whether the
    /// stopping rule now holds.
    pub fn apply(&mut self, p: &Proposal) -> Result<bool, Reject> {
        let engine = self.admm.as_mut().ok_or(Reject::NotScheduling)?;
        let xs: Vec<(DeviceId, Vec<i32>)> = p.updates.iter().map(|u| (u.body.device, u.body.schedule.clone())).collect();
        let r = engine.apply_iteration(&xs)?;
        Ok(r.converged())
    }

    /// Advances the market clock (the host calls this at each deadline).
    pub fn tick(&mut self, now_ms: u64) -> Vec<protocol::clock::Action> {
        self.clock.tick(now_ms)
    }
}
