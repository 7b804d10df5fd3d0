//! One market's replicated state: its spec, its enrolled devices, its fixed-point ADMM engine
//! and where its clock is. [`super::ChainApp`] holds one per market and decides which market's
//! entry is due; everything here is a function of that market's entries alone.

use std::collections::BTreeMap;

use circuits::{Fr, Shape};
use protocol::admm::{AdmmError, AdmmState};
use protocol::clock::{ClockConfig, RegistrationTip};
use protocol::entry::{FinalBody, IterationBody, MarketSpec};
use protocol::ids::DeviceId;
use protocol::merkle::{final_root, Hash};
use protocol::messages::SignedUpdate;
use protocol::snapshot::{EngineSnapshot, EnrolledSnapshot, MarketSnapshot, Progress};

use super::Reject;

/// An enrolled device: its circuit shape, commitment, and the attestation it enrolled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enrolled {
    /// Model and T.
    pub shape: Shape,
    /// The commitment C.
    pub commitment: Fr,
    /// `SignedAttestation::digest` of its attestation (a revocation names it).
    pub attestation: Hash,
    /// Its attested nameplate in circuit units for this market's Δ: a public input of every
    /// update proof, so its parameters are proven within it.
    pub limits: circuits::nameplate::Limits,
}

/// What a market needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// A registration batch (possibly empty), the last one at or after registration closes.
    Enrollment,
    /// ADMM iteration k.
    Iteration(u32),
    /// The final schedule and prices.
    Final,
    /// The bills, at the meter deadline (markets that settle).
    Settlement,
}

/// What settles a final market whose spec settles it, until its settlement entry: the final
/// prices and schedules, and the readings committed so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settling {
    /// λ_t raw (€/MWh), T of them.
    pub prices: Vec<i64>,
    /// Every device's final schedule, ascending by device.
    pub schedules: BTreeMap<DeviceId, Vec<i32>>,
    /// Committed readings by (device, slot): metered W·slot.
    pub readings: BTreeMap<(DeviceId, u32), i64>,
}

/// One market's state.
#[derive(Debug, Clone)]
pub struct Market {
    spec: MarketSpec,
    clock: ClockConfig,
    /// When it was opened (the genesis or opening entry's timestamp).
    opened_ms: u64,
    /// The height of its genesis or opening entry.
    opened_height: u64,
    /// The height of its final entry, once applied.
    final_height: Option<u64>,
    /// Set when an iteration entry was applied without its bodies (pruned): the last such
    /// iteration and whether it met the stopping rule. The engine is gone from then on.
    pruned: Option<(u32, bool)>,
    /// The timestamp of its last entry (its opening at first).
    last_ms: u64,
    registration_tip: RegistrationTip,
    enrolled: BTreeMap<DeviceId, Enrolled>,
    admm: Option<AdmmState>,
    converged: bool,
    finalized: bool,
    /// From the final entry to the settlement entry, for a market that settles (none if its
    /// engine was pruned: the log's settlement entry then applies as written).
    settling: Option<Settling>,
    /// A final market restored from a snapshot (which holds no engine of a final market):
    /// its iterations and whether the last met the stopping rule.
    outcome: Option<(u32, bool)>,
    /// Its settlement entry is applied.
    settled: bool,
}

impl Market {
    /// A market opened at `opened_ms` (its spec checked by `protocol::market::check_spec`).
    pub fn new(spec: MarketSpec, opened_ms: u64, opened_height: u64) -> Market {
        let clock = ClockConfig::from_spec(&spec);
        Market {
            spec,
            clock,
            opened_ms,
            opened_height,
            final_height: None,
            pruned: None,
            last_ms: opened_ms,
            registration_tip: RegistrationTip::Genesis,
            enrolled: BTreeMap::new(),
            admm: None,
            converged: false,
            finalized: false,
            settling: None,
            settled: false,
            outcome: None,
        }
    }

    /// Its id.
    pub fn id(&self) -> u64 {
        self.spec.market_id
    }

    /// Its parameters.
    pub fn spec(&self) -> &MarketSpec {
        &self.spec
    }

    /// When it was opened.
    pub fn opened_ms(&self) -> u64 {
        self.opened_ms
    }

    /// The heights of its opening (or the genesis) and of its final entry once applied: every
    /// entry of the market lies between them.
    pub fn heights(&self) -> (u64, Option<u64>) {
        (self.opened_height, self.final_height)
    }

    /// Whether its iteration entries were applied without bodies (pruned history).
    pub fn is_pruned(&self) -> bool {
        self.pruned.is_some()
    }

    /// ADMM iterations decided (also for a pruned market, from its entries).
    pub fn iterations(&self) -> u32 {
        match (&self.admm, self.pruned.or(self.outcome)) {
            (Some(a), _) => a.iteration(),
            (None, Some((k, _))) => k,
            (None, None) => 0,
        }
    }

    /// Enrolled devices.
    pub fn enrolled(&self) -> &BTreeMap<DeviceId, Enrolled> {
        &self.enrolled
    }

    /// The ADMM state, once scheduling started.
    pub fn admm(&self) -> Option<&AdmmState> {
        self.admm.as_ref()
    }

    /// Whether its final entry is applied.
    pub fn is_final(&self) -> bool {
        self.finalized
    }

    /// Whether nothing more is due: final, and settled if its spec settles it.
    pub fn is_over(&self) -> bool {
        self.finalized && (self.spec.settlement.is_none() || self.settled)
    }

    /// Whether its settlement entry is applied.
    pub fn is_settled(&self) -> bool {
        self.settled
    }

    /// The settlement state between its final and settlement entries (when its engine's
    /// schedules were held at the final entry).
    pub fn settling(&self) -> Option<&Settling> {
        self.settling.as_ref()
    }

    /// When its settlement entry is due: execution end + meter window (markets that settle).
    pub fn meter_deadline(&self) -> Option<u64> {
        protocol::settlement::meter_deadline(&self.spec)
    }

    /// How many enrollments a registration batch that withdraws `withdrawn` enrolled devices
    /// may carry without taking the market past `MAX_ENROLLED`.
    pub fn room(&self, withdrawn: usize) -> usize {
        protocol::clock::MAX_ENROLLED.saturating_sub(self.enrolled.len().saturating_sub(withdrawn))
    }

    /// The deadline of iteration k: close + k · iteration length.
    pub fn deadline(&self, k: u32) -> u64 {
        self.clock.deadline(k)
    }

    /// The earliest timestamp of the next registration batch, `None` once registration is
    /// over (`ClockConfig::next_batch_ms` after this market's last entry).
    pub fn next_batch_ms(&self) -> Option<u64> {
        if self.admm.is_some() || self.finalized || self.pruned.is_some() {
            return None;
        }
        self.clock.next_batch_ms(self.opened_ms, self.last_ms, self.registration_tip)
    }

    /// Whether an enrollment or withdrawal arriving at `now_ms` can still be included:
    /// before the close, and the closing batch not yet applied.
    pub fn registration_open(&self, now_ms: u64) -> bool {
        now_ms < self.spec.registration_close_ms && self.next_batch_ms().is_some()
    }

    /// The step due next and the earliest timestamp it may carry; `None` once final.
    pub fn next_due(&self) -> Option<(u64, Step)> {
        if self.finalized {
            return match self.meter_deadline() {
                Some(deadline) if !self.settled => Some((deadline.max(self.last_ms + 1), Step::Settlement)),
                _ => None,
            };
        }
        // Pruned history: the same clock, from the iteration and stopping rule the entries
        // carry.
        if let Some((k, converged)) = self.pruned {
            return Some(if converged || k >= self.spec.max_iterations {
                (self.last_ms + 1, Step::Final)
            } else {
                (self.deadline(k + 1), Step::Iteration(k + 1))
            });
        }
        match &self.admm {
            None => match self.next_batch_ms() {
                Some(batch) => Some((batch, Step::Enrollment)),
                // Nobody enrolled: straight to the (empty) final entry.
                None if self.enrolled.is_empty() => Some((self.deadline(1), Step::Final)),
                None => Some((self.deadline(1), Step::Iteration(1))),
            },
            Some(a) if self.converged || a.iteration() >= self.spec.max_iterations => Some((self.last_ms + 1, Step::Final)),
            Some(a) => Some((self.deadline(a.iteration() + 1), Step::Iteration(a.iteration() + 1))),
        }
    }

    /// The iteration devices submit for now: the next one to be decided.
    pub fn open_iteration(&self) -> Option<u32> {
        match self.next_due()? {
            (_, Step::Enrollment) if self.admm.is_none() => Some(1),
            (_, Step::Iteration(k)) => Some(k),
            _ => None,
        }
    }

    /// The body the engine computes for `updates` at iteration k (state unchanged).
    pub fn iteration_body(&self, k: u32, updates: &[SignedUpdate]) -> Result<IterationBody, Reject> {
        let digests: Vec<Hash> = updates.iter().map(SignedUpdate::digest).collect();
        self.next_iteration(k, updates, digests).map(|(body, _)| body)
    }

    /// The body the engine computes for `updates` (whose digests are `digests`) at iteration
    /// k, with the engine state after it (this market's state unchanged).
    pub fn next_iteration(&self, k: u32, updates: &[SignedUpdate], digests: Vec<Hash>) -> Result<(IterationBody, AdmmState), Reject> {
        if self.is_pruned() {
            return Err(Reject::Pruned(self.id()));
        }
        let mut engine = match &self.admm {
            Some(a) => a.clone(),
            None => self.start_engine()?,
        };
        let xs: Vec<(DeviceId, Vec<i32>)> = updates.iter().map(|u| (u.body.device, u.body.schedule.clone())).collect();
        let r = engine.apply_iteration(&xs)?;
        Ok((IterationBody::new(self.id(), k, digests, engine.variables(), &r), engine))
    }

    /// Applies an iteration entry whose engine state [`Self::next_iteration`] computed from
    /// this state and its updates (so [`Self::apply_iteration`] would reach the same).
    pub fn install_iteration(&mut self, timestamp_ms: u64, body: &IterationBody, engine: AdmmState) {
        self.converged = protocol::entry::iteration_converged(body);
        self.admm = Some(engine);
        self.last_ms = timestamp_ms;
    }

    fn start_engine(&self) -> Result<AdmmState, Reject> {
        let params = self.spec.admm().map_err(|e| AdmmError::Params(e.to_string()))?;
        Ok(AdmmState::new(params, self.enrolled.keys().copied())?)
    }

    /// The final body of the state as it is.
    pub fn final_body(&self) -> Result<FinalBody, Reject> {
        if self.is_pruned() {
            return Err(Reject::Pruned(self.id()));
        }
        let Some(engine) = self.admm.as_ref() else {
            // Nobody enrolled: an empty schedule at zero prices.
            return Ok(FinalBody {
                market_id: self.id(),
                iterations: 0,
                converged: false,
                schedule_root: final_root(std::iter::empty()),
                prices: vec![0; self.spec.slots as usize],
            });
        };
        Ok(FinalBody {
            market_id: self.id(),
            iterations: engine.iteration(),
            converged: self.converged,
            schedule_root: final_root(engine.schedules()),
            prices: engine.prices()?.iter().map(|p| p.raw()).collect(),
        })
    }

    /// Applies a registration batch: `enrolled` join, `withdrawn` leave.
    pub fn apply_batch(&mut self, timestamp_ms: u64, enrolled: Vec<(DeviceId, Enrolled)>, withdrawn: &[DeviceId]) {
        for d in withdrawn {
            self.enrolled.remove(d);
        }
        let n = enrolled.len() + withdrawn.len();
        self.enrolled.extend(enrolled);
        self.registration_tip = RegistrationTip::Batch { enrollments: n };
        self.last_ms = timestamp_ms;
    }

    /// Applies iteration updates (the engine starts at iteration 1).
    pub fn apply_iteration(&mut self, timestamp_ms: u64, updates: &[SignedUpdate]) -> Result<(), Reject> {
        if self.admm.is_none() {
            self.admm = Some(self.start_engine()?);
        }
        let engine = self.admm.as_mut().expect("started above");
        let xs: Vec<(DeviceId, Vec<i32>)> = updates.iter().map(|u| (u.body.device, u.body.schedule.clone())).collect();
        self.converged = engine.apply_iteration(&xs)?.converged();
        self.last_ms = timestamp_ms;
        Ok(())
    }

    /// Applies an iteration entry served without its bodies (pruned after the market
    /// executed): the clock advances as the entry says; the engine is dropped.
    pub fn apply_pruned_iteration(&mut self, timestamp_ms: u64, body: &IterationBody) {
        self.pruned = Some((body.iteration, protocol::entry::iteration_converged(body)));
        self.admm = None;
        self.last_ms = timestamp_ms;
    }

    /// The settlement body of the readings committed so far (state unchanged): every device
    /// of the final schedule billed by `protocol::settlement::settle`.
    pub fn settlement_body(&self) -> Result<protocol::settlement::SettlementBody, Reject> {
        let (Some(rule), Some(s)) = (&self.spec.settlement, &self.settling) else {
            return Err(if self.is_pruned() { Reject::Pruned(self.id()) } else { Reject::NotDue(format!("market {} does not settle", self.id())) });
        };
        let m = protocol::settlement::Market { slot_seconds: self.spec.slot_seconds, rule, prices: &s.prices, schedules: &s.schedules, readings: &s.readings };
        protocol::settlement::settle(self.id(), m).map_err(|e| Reject::Settlement(e.to_string()))
    }

    /// Applies the final entry, at `height`, with its prices: a market that settles keeps its
    /// final schedules (the engine's latest) and prices until its settlement entry.
    pub fn apply_final(&mut self, timestamp_ms: u64, height: u64, prices: &[i64]) {
        self.finalized = true;
        self.final_height = Some(height);
        self.last_ms = timestamp_ms;
        if self.spec.settlement.is_some() && !self.is_pruned() {
            let schedules = self.admm.as_ref().map(|a| a.schedules().clone()).unwrap_or_default();
            self.settling = Some(Settling { prices: prices.to_vec(), schedules, readings: BTreeMap::new() });
        }
    }

    /// Applies readings of a meter entry (already checked); pruned history keeps none.
    pub fn apply_readings(&mut self, timestamp_ms: u64, readings: &[protocol::settlement::SignedReading]) {
        if let Some(s) = &mut self.settling {
            s.readings.extend(readings.iter().map(|r| ((r.body.device, r.body.slot), r.body.energy)));
        }
        self.last_ms = timestamp_ms;
    }

    /// Applies its settlement entry: it is over.
    pub fn apply_settlement(&mut self, timestamp_ms: u64) {
        self.settled = true;
        self.settling = None;
        self.last_ms = timestamp_ms;
    }

    /// The market as a snapshot holds it: canonical, so a final market keeps its outcome but
    /// no engine (a validator that pruned it holds none).
    pub fn snapshot(&self) -> MarketSnapshot {
        let progress = match (&self.admm, self.pruned) {
            _ if self.finalized => Progress::Final {
                final_height: self.final_height.unwrap_or_default(),
                iterations: self.iterations(),
                converged: self.pruned.or(self.outcome).map_or(self.converged, |(_, c)| c),
            },
            (_, Some((iteration, converged))) => Progress::Pruned { iteration, converged },
            (Some(a), None) => Progress::Scheduling(EngineSnapshot {
                iteration: a.iteration(),
                latest: a.schedules().iter().map(|(d, x)| (*d, x.clone())).collect(),
                x_bar: a.variables().x_bar.clone(),
                z_bar: a.variables().z_bar.clone(),
                u: a.variables().u.clone(),
                residuals: a.residuals().map(|r| [r.primal, r.dual, r.eps_primal, r.eps_dual]),
                converged: self.converged,
            }),
            (None, None) => Progress::Registration,
        };
        MarketSnapshot {
            spec: self.spec.clone(),
            opened_ms: self.opened_ms,
            opened_height: self.opened_height,
            last_ms: self.last_ms,
            last_batch: match self.registration_tip {
                RegistrationTip::Genesis => None,
                RegistrationTip::Batch { enrollments } => Some(enrollments as u64),
            },
            enrolled: self
                .enrolled
                .iter()
                .map(|(d, e)| EnrolledSnapshot {
                    device: *d,
                    kind: e.shape.kind.id(),
                    commitment: protocol::codec::FieldElement::new(&e.commitment),
                    attestation: e.attestation,
                    import_w: e.limits.import_w,
                    export_w: e.limits.export_w,
                    capacity: e.limits.capacity,
                })
                .collect(),
            progress,
            settling: self.settling.as_ref().map(|st| protocol::snapshot::SettlingSnapshot {
                prices: st.prices.clone(),
                schedules: st.schedules.iter().map(|(d, x)| (*d, x.clone())).collect(),
                readings: st.readings.iter().map(|((d, slot), e)| (*d, *slot, *e)).collect(),
            }),
            settled: self.settled,
        }
    }

    /// The market a snapshot holds (the snapshot checked by `ChainSnapshot::check`). A final
    /// market comes back without engine: it answers its outcome (and, while it settles, what
    /// settles it).
    pub fn from_snapshot(m: &MarketSnapshot) -> Result<Market, Reject> {
        let mut market = Market::new(m.spec.clone(), m.opened_ms, m.opened_height);
        let bad = |what: String| Reject::Snapshot(format!("market {}: {what}", m.spec.market_id));
        let slots = circuits::Slots::new(m.spec.slots as usize).map_err(|e| bad(e.to_string()))?;
        for e in &m.enrolled {
            let kind = circuits::ModelKind::from_id(e.kind).ok_or_else(|| bad(format!("unknown model kind {}", e.kind)))?;
            let limits = circuits::nameplate::Limits { import_w: e.import_w, export_w: e.export_w, capacity: e.capacity };
            market.enrolled.insert(e.device, Enrolled { shape: Shape { kind, slots }, commitment: e.commitment.get(), attestation: e.attestation, limits });
        }
        market.last_ms = m.last_ms;
        market.registration_tip = match m.last_batch {
            None => RegistrationTip::Genesis,
            Some(n) => RegistrationTip::Batch { enrollments: usize::try_from(n).map_err(|_| bad(format!("batch size {n}")))? },
        };
        match &m.progress {
            Progress::Registration => {}
            Progress::Scheduling(e) => {
                let params = m.spec.admm().map_err(|e| AdmmError::Params(e.to_string()))?;
                let vars = protocol::admm::Variables { x_bar: e.x_bar.clone(), z_bar: e.z_bar.clone(), u: e.u.clone() };
                let residuals = e.residuals.map(|[primal, dual, eps_primal, eps_dual]| protocol::admm::Residuals { primal, dual, eps_primal, eps_dual });
                market.admm = Some(AdmmState::restore(params, e.latest.iter().cloned().collect(), vars, residuals, e.iteration)?);
                market.converged = e.converged;
            }
            Progress::Final { final_height, iterations, converged } => {
                market.finalized = true;
                market.final_height = Some(*final_height);
                market.outcome = Some((*iterations, *converged));
                market.converged = *converged;
            }
            Progress::Pruned { iteration, converged } => market.pruned = Some((*iteration, *converged)),
        }
        market.settling = m.settling.as_ref().map(|st| Settling {
            prices: st.prices.clone(),
            schedules: st.schedules.iter().cloned().collect(),
            readings: st.readings.iter().map(|(d, slot, e)| ((*d, *slot), *e)).collect(),
        });
        market.settled = m.settled;
        Ok(market)
    }

    /// Removes devices enrolled with a revoked attestation while registration is open (once
    /// scheduling started the set is fixed). Returns how many left.
    pub fn revoke(&mut self, revoked: &dyn Fn(&Hash) -> bool) -> usize {
        if self.admm.is_some() || self.finalized || self.pruned.is_some() {
            return 0;
        }
        let before = self.enrolled.len();
        self.enrolled.retain(|_, e| !revoked(&e.attestation));
        before - self.enrolled.len()
    }
}
