//! The gateway's decision core, sans-IO: it follows the log as a light client (DESIGN §6) —
//! every entry must extend the last accepted one and carry a valid quorum certificate from the
//! genesis validators, or the agent refuses it and acts on nothing — and answers each accepted
//! entry with what to submit: enrollments first, then, for each iteration it may join, every
//! appliance's local step (clarabel), rounded to circuit-exact watts and proven (Groth16).
//!
//! What it did is in [`AgentState`], which the host persists after every step, so a restarted
//! agent neither submits an iteration twice nor forgets the final schedule.

use std::collections::{BTreeMap, BTreeSet};

use circuits::fixed::{Fixed, Watts};
use circuits::{Context, Witness};
use protocol::admm::Variables;
use protocol::clock::{ClockConfig, RegistrationTip};
use protocol::codec::FieldElement;
use protocol::entry::{Body, Certified, LightClient, LogError};
use protocol::ids::DeviceId;
use protocol::local::local_step;
use protocol::messages::{Enrollment, SignedEnrollment, SignedUpdate, Update};
use prover::UpdateProvingKey;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Gateway;

/// Why the agent stopped following or could not act.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The entry failed the light-client checks: it is not acted on.
    #[error("refused entry at height {height}: {source}")]
    Refused {
        /// The entry's height.
        height: u64,
        /// Why.
        source: LogError,
    },
    /// The genesis does not start a light client.
    #[error("genesis: {0}")]
    Genesis(LogError),
    /// A proving key for an appliance's shape is missing.
    #[error("no proving key for {0}")]
    MissingKey(String),
    /// Registration closed (the closing enrollment batch is in the log) and not one of this
    /// gateway's appliances was enrolled: it has no part in the market.
    #[error("registration closed at height {height} without any of this gateway's appliances ({names}); was the gateway started after the close, or were its enrollments refused?")]
    NotEnrolled {
        /// The closing batch's height.
        height: u64,
        /// The appliances, comma-separated.
        names: String,
    },
    /// Proving failed (the local step produced a schedule the circuit refuses).
    #[error("appliance {name}: {reason}")]
    Prove {
        /// The appliance.
        name: String,
        /// What failed.
        reason: String,
    },
}

/// What the agent has done, persisted by the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// Highest height accepted.
    pub height: u64,
    /// Appliances seen enrolled in the log.
    pub enrolled: BTreeSet<String>,
    /// Highest iteration whose updates were built (never built twice).
    pub submitted_through: u32,
    /// Each appliance's latest schedule as the validators hold it (W per slot).
    pub schedules: BTreeMap<String, Vec<Watts>>,
    /// The last decided variables (raw fixed point): x̄, z̄, u.
    pub variables: Option<(Vec<i64>, Vec<i64>, Vec<i64>)>,
    /// Final prices (raw €/MWh fixed point) once the final entry is in.
    pub final_prices: Option<Vec<i64>>,
    /// Whether ADMM converged (else K_max).
    pub converged: bool,
    /// Execution: every slot command due at or before this time (ms) has been published.
    #[serde(default)]
    pub executed_until_ms: u64,
}

impl AgentState {
    /// The final prices in €/MWh, for reports (empty until the final entry is in).
    pub fn prices_eur_mwh(&self) -> Vec<f64> {
        self.final_prices.iter().flatten().map(|&p| Fixed(p).to_f64()).collect()
    }
}

/// The agent.
pub struct Agent {
    gateway: Gateway,
    keys: BTreeMap<(u8, usize), UpdateProvingKey>,
    client: LightClient,
    /// When the entry after the last accepted one is due by the market clock (`None` once
    /// final): what a host compares with its clock to tell a stalled subscription.
    next_due_ms: Option<u64>,
    /// Persisted state.
    pub state: AgentState,
}

impl Agent {
    /// An agent for `gateway` with its proving keys, resuming from `state`. The light client
    /// starts at the genesis; entries up to `state.height` are checked again when replayed.
    pub fn new(gateway: Gateway, keys: BTreeMap<(u8, usize), UpdateProvingKey>, state: AgentState) -> Result<Agent, AgentError> {
        let client = LightClient::new(&gateway.genesis).map_err(AgentError::Genesis)?;
        for a in &gateway.appliances {
            let s = a.shape();
            if !keys.contains_key(&(s.kind.id(), s.slots.get())) {
                return Err(AgentError::MissingKey(format!("{} with T = {}", s.kind, s.slots.get())));
            }
        }
        let g = &gateway.genesis;
        // The first enrollment batch (after a genesis there always is one).
        let next_due_ms = ClockConfig::from_spec(&gateway.market().market).next_batch_ms(g.timestamp_ms, g.timestamp_ms, RegistrationTip::Genesis);
        Ok(Agent { gateway, keys, client, state, next_due_ms })
    }

    /// The gateway.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The next height the light client expects.
    pub fn next_height(&self) -> u64 {
        self.client.next_height()
    }

    /// When the next entry is due by the market clock (the next enrollment batch, iteration
    /// or final entry), `None` once the final entry is in. An entry that has not arrived well
    /// after this time is late at the validator serving it.
    pub fn next_entry_due_ms(&self) -> Option<u64> {
        self.next_due_ms
    }

    /// Signed enrollments of the attested appliances not yet seen enrolled (an appliance
    /// without an attestation cannot enroll).
    pub fn enrollments(&self) -> Vec<SignedEnrollment> {
        let g = self.gateway.market();
        self.gateway
            .appliances
            .iter()
            .filter(|a| !self.state.enrolled.contains(&a.name))
            .filter_map(|a| {
                let body = Enrollment {
                    market_id: g.market.market_id,
                    device: a.id(),
                    kind: a.opening.params.kind().id(),
                    slots: g.market.slots,
                    commitment: FieldElement::new(&a.commitment()),
                    attestation: a.attestation.clone()?,
                };
                Some(SignedEnrollment::new(&a.key, &self.gateway.genesis.chain_id, body))
            })
            .collect()
    }

    /// Whether the final entry is in.
    pub fn is_final(&self) -> bool {
        self.state.final_prices.is_some()
    }

    /// Accepts the next certified entry (light-client checks: link, quorum certificate, and
    /// update bodies that are exactly the ones the entry's digests name) and says which iteration the
    /// gateway should now solve and prove ([`Agent::prove`]), if any: one it has not built
    /// yet whose submission window is still open at `now_ms` (so replaying an old log after a
    /// restart builds nothing stale). An entry that fails the checks changes nothing.
    ///
    /// The host persists the state between this call and [`Agent::prove`]: a crash while
    /// proving then resumes knowing what the log already holds (no second enrollment).
    pub fn on_entry(&mut self, c: &Certified, now_ms: u64) -> Result<Option<u32>, AgentError> {
        if c.entry.height == 0 {
            return Ok(None);
        }
        let ids: BTreeMap<DeviceId, String> = self.gateway.appliances.iter().map(|a| (a.id(), a.name.clone())).collect();
        let refused = |source| AgentError::Refused { height: c.entry.height, source };
        // The updates this gateway will act on are signed by its own appliances' keys (the
        // digests, checked below, already bind them to what the quorum certified).
        for u in c.updates.iter().filter(|u| ids.contains_key(&u.body.device)) {
            u.verify(&self.client.chain())
                .map_err(|e| refused(LogError::Bodies { height: c.entry.height, reason: format!("update of own device {}: {e}", u.body.device) }))?;
        }
        self.client.accept_certified(c).map_err(refused)?;
        self.state.height = c.entry.height;
        let g = self.gateway.market().market.clone();
        if c.entry.body.market_id() != Some(g.market_id) {
            // Another market's entry, an opening or a revocation: this gateway follows its
            // own market.
            return Ok(None);
        }
        let clock = ClockConfig::from_spec(&g);
        // After an enrollment batch: when the next batch is due, `None` once registration is over.
        let next_batch = match &c.entry.body {
            Body::Enrollment(b) => clock.next_batch_ms(
                self.gateway.genesis.timestamp_ms,
                c.entry.timestamp_ms,
                RegistrationTip::Batch { enrollments: b.enrollments.len() + b.withdrawals.len() },
            ),
            _ => None,
        };
        self.next_due_ms = match &c.entry.body {
            Body::Enrollment(_) => Some(next_batch.unwrap_or_else(|| clock.deadline(1))),
            Body::Iteration(b) if b.iteration < g.max_iterations => Some(clock.deadline(b.iteration + 1)),
            Body::Iteration(_) => Some(c.entry.timestamp_ms),
            _ => None,
        };
        let next = match &c.entry.body {
            Body::Enrollment(b) => {
                for e in &b.enrollments {
                    if let Some(name) = ids.get(&e.body.device) {
                        self.state.enrolled.insert(name.clone());
                    }
                }
                // Iteration 1 opens with the variables at zero once every appliance is in, or
                // with those that are in once the closing batch ended registration.
                let over = next_batch.is_none();
                // (Only attested appliances can be in; the others were named at start.)
                let missing: Vec<&str> = self
                    .gateway
                    .appliances
                    .iter()
                    .filter(|a| a.attestation.is_some())
                    .map(|a| a.name.as_str())
                    .filter(|n| !self.state.enrolled.contains(*n))
                    .collect();
                if over && !missing.is_empty() {
                    if self.state.enrolled.is_empty() {
                        let all: Vec<&str> = self.gateway.appliances.iter().map(|a| a.name.as_str()).collect();
                        return Err(AgentError::NotEnrolled { height: c.entry.height, names: all.join(", ") });
                    }
                    tracing::warn!(
                        height = c.entry.height,
                        missing = missing.join(", "),
                        "registration closed without these appliances: they sit this market out"
                    );
                }
                (missing.is_empty() || over).then_some(1)
            }
            Body::Iteration(b) => {
                for u in &c.updates {
                    if let Some(name) = ids.get(&u.body.device) {
                        self.state.schedules.insert(name.clone(), u.body.schedule.clone());
                    }
                }
                self.state.variables = Some((b.x_bar.clone(), b.z_bar.clone(), b.u.clone()));
                Some(b.iteration + 1)
            }
            Body::Final(f) => {
                self.state.final_prices = Some(f.prices.clone());
                self.state.converged = f.converged;
                None
            }
            _ => None,
        };
        let open = |k: u32| now_ms < clock.deadline(k);
        Ok(next.filter(|&k| k > self.state.submitted_through && k <= g.max_iterations && !self.is_final() && open(k)))
    }

    /// Solves and proves iteration `k` for every enrolled appliance. Records `k` as built
    /// first, so that it is never built (and submitted) twice, even across restarts.
    pub fn prove<R: RngCore + CryptoRng>(&mut self, k: u32, rng: &mut R) -> Result<Vec<SignedUpdate>, AgentError> {
        assert!(k > self.state.submitted_through, "iteration {k} already built");
        self.state.submitted_through = k;
        tracing::info!(iteration = k, appliances = self.state.enrolled.len(), "solving and proving");
        let solved = self.solve()?;
        self.sign_proven(k, solved, rng)
    }

    /// The local step (clarabel) of every enrolled appliance against the last decided
    /// variables, rounded to circuit-exact watts: `(appliance index, schedule)`.
    pub fn solve(&self) -> Result<Vec<(usize, Vec<Watts>)>, AgentError> {
        let g = &self.gateway.market().market;
        let t = g.slots as usize;
        let vars = match &self.state.variables {
            Some((x, z, u)) => Variables { x_bar: x.clone(), z_bar: z.clone(), u: u.clone() },
            None => Variables { x_bar: vec![0; t], z_bar: vec![0; t], u: vec![0; t] },
        };
        let mut out = Vec::new();
        for (i, a) in self.gateway.appliances.iter().enumerate() {
            if !self.state.enrolled.contains(&a.name) {
                continue;
            }
            let previous = self.state.schedules.get(&a.name).cloned().unwrap_or_else(|| vec![0; t]);
            let x = local_step(&a.opening.params, &a.costs, Fixed(g.rho), &vars, &previous)
                .map_err(|e| AgentError::Prove { name: a.name.clone(), reason: format!("local step: {e}") })?;
            out.push((i, x));
        }
        Ok(out)
    }

    /// Proves (Groth16) and signs each solved schedule as an update for iteration `k`.
    pub fn sign_proven<R: RngCore + CryptoRng>(&self, k: u32, solved: Vec<(usize, Vec<Watts>)>, rng: &mut R) -> Result<Vec<SignedUpdate>, AgentError> {
        let g = &self.gateway.market().market;
        let mut out = Vec::new();
        for (i, x) in solved {
            let a = &self.gateway.appliances[i];
            let shape = a.shape();
            let pk = &self.keys[&(shape.kind.id(), shape.slots.get())];
            // Proven against the attested nameplate, the public input validators compute from
            // the same attestation (only attested appliances enroll).
            let attested = a.attestation.as_ref().ok_or_else(|| AgentError::Prove { name: a.name.clone(), reason: "no attestation".into() })?;
            let limits = attested.body.nameplate.limits(g.slot_seconds);
            let witness = Witness { opening: a.opening.clone(), context: Context { market_id: g.market_id, iteration: k, shape }, limits, schedule: x.clone() };
            let (proof, _) = prover::prove(pk, witness, rng).map_err(|e| AgentError::Prove { name: a.name.clone(), reason: e.to_string() })?;
            let body = Update { market_id: g.market_id, iteration: k, device: a.id(), schedule: x, proof: prover::format::encode_proof(&proof) };
            out.push(SignedUpdate::new(&a.key, &self.gateway.genesis.chain_id, body));
        }
        Ok(out)
    }
}
