//! The gateway's decision core, sans-IO: it follows the log as a light client (DESIGN §6) —
//! every entry must extend the last accepted one and carry a valid quorum certificate from the
//! genesis validators, or the agent refuses it and acts on nothing — and takes part in every
//! market of the chain it can: the genesis market and each one a `MarketOpen` entry opens.
//!
//! For each market whose registration is open it decides every appliance's bid from the
//! gateway's plan (weekly pattern, overrides; [`Agent::plan`]), enrolls the bids with fresh
//! commitments, withdraws those whose day turned "off" before the close, and answers each
//! accepted entry with what to solve and prove: every enrolled appliance's local step
//! (clarabel), rounded to circuit-exact watts and proven (Groth16).
//!
//! What it did is in [`AgentState`] (one [`MarketState`] per market), which the host persists
//! after every step, so a restarted agent neither submits an iteration twice nor forgets a
//! final schedule.
use std::collections::{BTreeMap, BTreeSet};

use circuits::fixed::{Fixed, Watts};
use circuits::{Context, Shape, Slots, Witness};
use protocol::admm::Variables;
use protocol::clock::{ClockConfig, RegistrationTip};
use protocol::codec::FieldElement;
use protocol::entry::{iteration_converged, Body, Certified, LightClient, LogError, MarketSpec};
use protocol::ids::DeviceId;
use protocol::local::local_step;
use protocol::market::{SignedWithdrawal, Withdrawal};
use protocol::messages::{Enrollment, SignedEnrollment, SignedUpdate, Update};
use prover::UpdateProvingKey;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{Appliance, Bid, Gateway, Overrides};

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
    /// Proving failed (the local step produced a schedule the circuit refuses).
    #[error("market {market_id}, appliance {name}: {reason}")]
    Prove {
        /// The market.
        market_id: u64,
        /// The appliance.
        name: String,
        /// What failed.
        reason: String,
    },
}

/// What the gateway did in one market, persisted by the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MarketState {
    /// Each appliance's bid for the day (parameters and costs; the salt derives from the
    /// market id). A bid once sent is kept as sent: a later change of plan cannot change what
    /// the commitment binds, only withdraw it.
    pub bids: BTreeMap<String, Bid>,
    /// Appliances whose enrollment was sent.
    pub sent: BTreeSet<String>,
    /// Appliances whose plan for the day turned "off" after they bid: withdrawn while
    /// registration is open.
    pub off: BTreeSet<String>,
    /// Appliances enrolled in the log (withdrawals and revocations taken out).
    pub enrolled: BTreeSet<String>,
    /// The height of the closing enrollment batch, 0 while registration is open: after it
    /// nobody enrolls or withdraws, and a revocation replayed after a restart applies to the
    /// market if it came before it.
    #[serde(default)]
    pub closed_at: u64,
    /// Highest iteration whose updates were built (never built twice).
    pub submitted_through: u32,
    /// Each appliance's latest schedule as the validators hold it (W per slot).
    pub schedules: BTreeMap<String, Vec<Watts>>,
    /// The last decided variables (raw fixed point): x̄, z̄, u.
    pub variables: Option<(Vec<i64>, Vec<i64>, Vec<i64>)>,
    /// The last decided iteration (0 before the first iteration entry).
    #[serde(default)]
    pub iteration: u32,
    /// Final prices (raw €/MWh fixed point) once the final entry is in.
    pub final_prices: Option<Vec<i64>>,
    /// Whether ADMM converged (else K_max).
    pub converged: bool,
    /// Height of the final entry.
    pub final_height: u64,
    /// Execution: every slot command due at or before this time (ms) has been published.
    #[serde(default)]
    pub executed_until_ms: u64,
    /// The whole schedule was executed (or there was nothing to execute).
    #[serde(default)]
    pub executed: bool,
    /// Each appliance's bill from the market's settlement entry (µ€), once settled.
    #[serde(default)]
    pub bills: BTreeMap<String, protocol::settlement::Bill>,
    /// The settlement rule and slot length the bills were computed with: (imbalance premium
    /// raw €/MWh, Δ in seconds), for `device bill`'s per-slot lines.
    #[serde(default)]
    pub settlement_rule: Option<(i64, u32)>,
    /// The market settles (its spec says so): the gateway meters and waits for the bills.
    #[serde(default)]
    pub settles: bool,
    /// Each metered appliance's next slot to read.
    #[serde(default)]
    pub metered: BTreeMap<String, u32>,
    /// Each appliance's slots whose reading is in a committed `Meter` entry (the others it
    /// read are sent again until they are, or the meter deadline passes).
    #[serde(default)]
    pub committed: BTreeMap<String, BTreeSet<u32>>,
    /// Each appliance's readings as sent (slot → W·slot), for `device bill`.
    #[serde(default)]
    pub readings: BTreeMap<String, BTreeMap<u32, i64>>,
}

impl MarketState {
    /// Where the market stands.
    pub fn phase(&self) -> MarketPhase {
        if !self.bills.is_empty() {
            MarketPhase::Settled
        } else if self.executed {
            if self.settles {
                MarketPhase::Settling
            } else {
                MarketPhase::Executed
            }
        } else if self.is_final() {
            MarketPhase::Scheduled
        } else if self.closed_at > 0 || self.iteration > 0 {
            MarketPhase::Scheduling
        } else {
            MarketPhase::Registration
        }
    }

    /// Appliance `name`'s readings read but not in a committed `Meter` entry yet: (slot,
    /// W·slot), ascending.
    fn uncommitted<'a>(&'a self, name: &str) -> impl Iterator<Item = (u32, i64)> + 'a {
        let committed = self.committed.get(name);
        self.readings.get(name).into_iter().flatten().filter(move |(slot, _)| !committed.is_some_and(|c| c.contains(slot))).map(|(&s, &e)| (s, e))
    }

    /// The final prices in €/MWh, for reports (empty until the final entry is in).
    pub fn prices_eur_mwh(&self) -> Vec<f64> {
        self.final_prices.iter().flatten().map(|&p| Fixed(p).to_f64()).collect()
    }

    /// Whether the final entry is in.
    pub fn is_final(&self) -> bool {
        self.final_prices.is_some()
    }

    /// Whether the closing enrollment batch is in.
    pub fn registration_over(&self) -> bool {
        self.closed_at > 0
    }

    /// Registration closed without one of this gateway's appliances: it sits the market out.
    pub fn sat_out(&self) -> bool {
        self.registration_over() && self.enrolled.is_empty() && self.submitted_through == 0
    }
}

/// What the agent has done, persisted by the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// Highest height accepted.
    pub height: u64,
    /// Every market this gateway bid in, by id (a state file of the single-market format
    /// before it loads with none: the log's replay rebuilds what is still open).
    #[serde(default)]
    pub markets: BTreeMap<u64, MarketState>,
    /// Markets it does not take part in, and why (opened too late to bid, nothing to bid).
    #[serde(default)]
    pub skipped: BTreeMap<u64, String>,
    /// Digests (hex) of this gateway's attestations that an authority revoked.
    #[serde(default)]
    pub revoked: BTreeSet<String>,
}

/// Where a market stands for this gateway, from the log it followed and its execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarketPhase {
    /// Bids are taken (no closing enrollment batch yet).
    Registration,
    /// ADMM iterations run.
    Scheduling,
    /// The final schedule is committed; it executes at the market's execution start.
    Scheduled,
    /// The schedule was carried out (a market without settlement ends here).
    Executed,
    /// Executed; meter readings go in and the bills are awaited.
    Settling,
    /// The settlement entry gave this gateway's bills.
    Settled,
}

impl MarketPhase {
    /// Every phase, in order.
    pub const ALL: [MarketPhase; 6] =
        [MarketPhase::Registration, MarketPhase::Scheduling, MarketPhase::Scheduled, MarketPhase::Executed, MarketPhase::Settling, MarketPhase::Settled];

    /// The phase's name (its serialized form).
    pub fn as_str(self) -> &'static str {
        match self {
            MarketPhase::Registration => "registration",
            MarketPhase::Scheduling => "scheduling",
            MarketPhase::Scheduled => "scheduled",
            MarketPhase::Executed => "executed",
            MarketPhase::Settling => "settling",
            MarketPhase::Settled => "settled",
        }
    }
}

/// A market's status as this gateway knows it (Home Assistant's market sensor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MarketStatus {
    /// The market.
    pub market: u64,
    /// Where it stands.
    pub phase: MarketPhase,
    /// The last decided ADMM iteration (0 before the first).
    pub iteration: u32,
    /// K_max.
    pub max_iterations: u32,
    /// Whether the final schedule met the stopping rule (false before it, or at K_max).
    pub converged: bool,
    /// This gateway's appliances enrolled in it.
    pub appliances: usize,
    /// When its first slot starts (ms since the Unix epoch).
    pub execution_start_ms: u64,
}

impl AgentState {
    /// The market with the highest id that has a final schedule, if any.
    pub fn last_final(&self) -> Option<(u64, &MarketState)> {
        self.markets.iter().rev().find(|(_, m)| m.is_final()).map(|(id, m)| (*id, m))
    }
}

/// Whether an iteration entry's residuals meet the stopping rule (the validators' final entry
/// follows it).
/// A market the log opened: its spec and when (the entry's time), as the validators hold it.
#[derive(Debug, Clone)]
struct Known {
    spec: MarketSpec,
    opened_ms: u64,
    /// When its next entry is due by its clock (`None` once final).
    next_due_ms: Option<u64>,
}

/// The agent.
pub struct Agent {
    gateway: Gateway,
    keys: BTreeMap<(u8, usize), UpdateProvingKey>,
    client: LightClient,
    /// Every market the log opened so far (from the genesis and replayed `Open` entries).
    known: BTreeMap<u64, Known>,
    /// Persisted state.
    pub state: AgentState,
    /// The samples of each appliance's MQTT meter, by appliance index (not persisted: a slot
    /// whose samples a restart lost is not read).
    meters: BTreeMap<usize, crate::metering::SlotMeter>,
    /// When each reading read but not yet committed was last sent (ms), by (market,
    /// appliance, slot). Not persisted: after a restart every uncommitted reading is sent
    /// again at once.
    sent_ms: BTreeMap<(u64, String, u32), u64>,
}

/// How long after a slot's end it is read at the least: a sample taken at the end may arrive
/// a little later, and a validator whose clock is behind must see the slot ended (the grace
/// is the genesis's largest clock drift if that is longer).
pub const READ_GRACE_MS: u64 = 1000;

/// When an uncommitted reading of (`market`, `name`, `slot`) is due to be sent, by the
/// sending times `sent_ms`: at once (0) if not sent since this start, else
/// [`resend_readings_ms`] after its last sending. The one rule `Agent::due_readings` and
/// `Agent::next_reading_ms` share.
fn resend_at(sent_ms: &BTreeMap<(u64, String, u32), u64>, market: u64, name: &str, slot: u32, spec: &MarketSpec) -> u64 {
    sent_ms.get(&(market, name.to_string(), slot)).map_or(0, |t| t.saturating_add(resend_readings_ms(spec)))
}

/// How long a reading sent but not seen in a committed `Meter` entry waits before it is sent
/// again (the validators were unreachable, or restarted with it only in their pools): one
/// slot length, at least 2 s and at most 60 s.
pub fn resend_readings_ms(spec: &MarketSpec) -> u64 {
    spec.slot_ms().clamp(2_000, 60_000)
}

impl Agent {
    /// An agent for `gateway` with its proving keys, resuming from `state`. The light client
    /// starts at the genesis; entries up to `state.height` are checked again when replayed.
    /// The genesis market is known at once; call [`Agent::plan`] to bid in it.
    pub fn new(gateway: Gateway, keys: BTreeMap<(u8, usize), UpdateProvingKey>, state: AgentState) -> Result<Agent, AgentError> {
        let client = LightClient::new(&gateway.genesis).map_err(AgentError::Genesis)?;
        let g = &gateway.genesis;
        let spec = gateway.market().market.clone();
        let next_due_ms = ClockConfig::from_spec(&spec).next_batch_ms(g.timestamp_ms, g.timestamp_ms, RegistrationTip::Genesis);
        let known = BTreeMap::from([(spec.market_id, Known { spec, opened_ms: g.timestamp_ms, next_due_ms })]);
        Ok(Agent { gateway, keys, client, known, state, meters: BTreeMap::new(), sent_ms: BTreeMap::new() })
    }

    /// An agent that follows the log from a trusted checkpoint instead of the genesis
    /// (docs/protocol.md §6.10): `entry` is the checkpoint entry and `snapshot` the state it
    /// extends, both checked by `protocol::snapshot::verify_checkpoint`. The markets it knows
    /// are those the snapshot holds that are not final; the snapshot's revocations of this
    /// gateway's attestations count (and take the appliance out of markets still
    /// registering); then the checkpoint entry itself is accepted at `now_ms`, so the light
    /// client's anchor is exactly the checkpoint's hash and the next entry it takes is the one
    /// after. It takes part in markets that register from then on; one already past its
    /// registration is sat out.
    pub fn at_checkpoint(
        gateway: Gateway,
        keys: BTreeMap<(u8, usize), UpdateProvingKey>,
        mut state: AgentState,
        entry: &Certified,
        snapshot: &protocol::snapshot::ChainSnapshot,
        now_ms: u64,
    ) -> Result<Agent, AgentError> {
        let before = protocol::snapshot::Checkpoint { height: entry.entry.height.saturating_sub(1), hash: entry.entry.prev_hash };
        let client = LightClient::at_checkpoint(&gateway.genesis, &before).map_err(AgentError::Genesis)?;
        let mut known = BTreeMap::new();
        for m in snapshot.live_markets() {
            let clock = ClockConfig::from_spec(&m.spec);
            let next_due_ms = match &m.progress {
                protocol::snapshot::Progress::Registration => {
                    let tip = m.last_batch.map_or(RegistrationTip::Genesis, |n| RegistrationTip::Batch { enrollments: n as usize });
                    Some(clock.next_batch_ms(m.opened_ms, m.last_ms, tip).unwrap_or_else(|| clock.deadline(1)))
                }
                protocol::snapshot::Progress::Scheduling(e) if e.converged || e.iteration >= m.spec.max_iterations => Some(m.last_ms),
                protocol::snapshot::Progress::Scheduling(protocol::snapshot::EngineSnapshot { iteration, .. })
                | protocol::snapshot::Progress::Pruned { iteration, .. } => Some(clock.deadline(iteration + 1)),
                protocol::snapshot::Progress::Final { .. } => None,
            };
            known.insert(m.spec.market_id, Known { spec: m.spec.clone(), opened_ms: m.opened_ms, next_due_ms });
        }
        let revoked: BTreeSet<String> = snapshot.revoked.iter().map(|d| protocol::ids::hex(d)).collect();
        for a in &gateway.appliances {
            if a.attestations.iter().any(|att| revoked.contains(&protocol::ids::hex(&att.digest()))) {
                state.revoked.extend(a.attestations.iter().map(|att| protocol::ids::hex(&att.digest())).filter(|d| revoked.contains(d)));
                for m in state.markets.values_mut().filter(|m| m.closed_at == 0) {
                    m.enrolled.remove(&a.name);
                    m.bids.remove(&a.name);
                }
            }
        }
        state.height = state.height.max(before.height);
        let mut agent = Agent { gateway, keys, client, known, state, meters: BTreeMap::new(), sent_ms: BTreeMap::new() };
        if let Some((market, k)) = agent.on_entry(entry, now_ms)? {
            tracing::warn!(market, iteration = k, "started from a checkpoint while an iteration is open: this gateway does not build it");
        }
        Ok(agent)
    }

    /// The gateway.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The next height the light client expects.
    pub fn next_height(&self) -> u64 {
        self.client.next_height()
    }

    /// The status of the newest market (highest id) this gateway takes part in (has state
    /// for) whose spec it knows.
    pub fn market_status(&self) -> Option<MarketStatus> {
        let (id, m, spec) = self.state.markets.iter().rev().find_map(|(id, m)| Some((*id, m, self.spec(*id)?)))?;
        Some(MarketStatus {
            market: id,
            phase: m.phase(),
            iteration: m.iteration,
            max_iterations: spec.max_iterations,
            converged: m.converged,
            appliances: m.enrolled.len(),
            execution_start_ms: spec.execution_start_ms,
        })
    }

    /// The spec of market `id`, once the log (or the genesis) opened it.
    pub fn spec(&self, id: u64) -> Option<&MarketSpec> {
        self.known.get(&id).map(|k| &k.spec)
    }

    /// When the next entry of a market this gateway takes part in is due by that market's
    /// clock (the next enrollment batch, iteration or final entry); `None` while it waits for
    /// no entry (between markets). An entry that has not arrived well after this time is late
    /// at the validator serving it.
    pub fn next_entry_due_ms(&self) -> Option<u64> {
        self.known.iter().filter(|(id, _)| self.state.markets.get(id).is_some_and(|m| !m.is_final() && !m.sat_out())).filter_map(|(_, k)| k.next_due_ms).min()
    }

    /// Markets whose registration is open at `now_ms` and that this gateway bids in.
    fn registering(&self, now_ms: u64) -> impl Iterator<Item = (u64, &Known, &MarketState)> {
        self.known
            .iter()
            .filter(move |(_, k)| now_ms < k.spec.registration_close_ms)
            .filter_map(|(id, k)| self.state.markets.get(id).filter(|m| !m.registration_over()).map(|m| (*id, k, m)))
    }

    /// How often enrollments and withdrawals are sent again while registration is open: the
    /// shortest enrollment interval of the markets registering.
    pub fn enrollment_interval_ms(&self, now_ms: u64) -> Option<u64> {
        self.registering(now_ms).map(|(_, k, _)| ClockConfig::from_spec(&k.spec).enrollment_interval(k.opened_ms)).min()
    }

    /// The appliance's attestation for market `spec`, unless revoked.
    fn attestation<'a>(&self, a: &'a Appliance, spec: &MarketSpec) -> Option<&'a protocol::membership::SignedAttestation> {
        a.attestations
            .iter()
            .filter(|att| !self.state.revoked.contains(&protocol::ids::hex(&att.digest())))
            .find(|att| protocol::membership::check_covers(att, spec).is_ok())
    }

    /// Decides the bids of every market whose registration is open at `now_ms`, from the
    /// plan (weekly pattern and `overrides`): a market seen for the first time is joined with
    /// the bids of its day (or skipped if none fits: no attestation covering it, no proving
    /// key for its T, every appliance off); in a market already joined, a bid not yet sent
    /// follows the plan, and an appliance whose day turned "off" is withdrawn. Appliances
    /// whose plan does not fit the market are left out with a warning.
    pub fn plan(&mut self, overrides: &Overrides, now_ms: u64) {
        let offset = self.gateway.file.utc_offset_minutes;
        // Markets whose registration closed before this gateway bid in them.
        let missed: Vec<(u64, u64, u64)> = self
            .known
            .iter()
            .filter(|(id, k)| now_ms >= k.spec.registration_close_ms && !self.state.markets.contains_key(id) && !self.state.skipped.contains_key(id))
            .map(|(id, k)| (*id, k.spec.registration_close_ms, protocol::market::execution_span(&k.spec).1))
            .collect();
        for (id, close, end) in missed {
            // The names, the first eight of them (a simulated gateway holds thousands).
            let all = &self.gateway.appliances;
            let mut names: Vec<String> = all.iter().take(8).map(|a| a.name.clone()).collect();
            if all.len() > 8 {
                names.push(format!("and {} more", all.len() - 8));
            }
            let why = format!("registration closed at {} before this gateway could bid ({})", crate::actuation::rfc3339(close), names.join(", "));
            if now_ms < end {
                tracing::warn!(market = id, "sitting this market out: {why}");
            } else {
                tracing::debug!(market = id, "past market: {why}");
            }
            self.state.skipped.insert(id, why);
        }
        let open: Vec<(u64, MarketSpec)> =
            self.known.iter().filter(|(_, k)| now_ms < k.spec.registration_close_ms).map(|(id, k)| (*id, k.spec.clone())).collect();
        for (id, spec) in open {
            if self.state.skipped.contains_key(&id) || self.state.markets.get(&id).is_some_and(|m| m.registration_over()) {
                continue;
            }
            let mut wanted: BTreeMap<String, Option<Bid>> = BTreeMap::new();
            for a in &self.gateway.appliances {
                let Some(att) = self.attestation(a, &spec) else { continue };
                if !self.keys.contains_key(&(a.kind().id(), spec.slots as usize)) {
                    continue;
                }
                match a.bid_for(&spec, offset, overrides, &att.body.nameplate) {
                    Ok(bid) => {
                        wanted.insert(a.name.clone(), bid);
                    }
                    Err(e) => tracing::warn!(market = id, appliance = a.name, "not bidding: {e}"),
                }
            }
            match self.state.markets.get_mut(&id) {
                None => {
                    if wanted.is_empty() {
                        let why = "no appliance can bid (none attested for it, or no proving key for its T)".to_string();
                        tracing::info!(market = id, "sitting this market out: {why}");
                        self.state.skipped.insert(id, why);
                        continue;
                    }
                    // Joined even if every appliance is off that day: an appliance turned on
                    // before the close still bids, and at the close the market is sat out.
                    let bids: BTreeMap<String, Bid> = wanted.into_iter().filter_map(|(n, b)| b.map(|b| (n, b))).collect();
                    let (date, _) = crate::config::market_day(&spec, offset);
                    if bids.is_empty() {
                        tracing::info!(market = id, day = date, "every appliance is off that day: no bid");
                    } else {
                        tracing::info!(market = id, day = date, appliances = bids.keys().cloned().collect::<Vec<_>>().join(", "), "bidding");
                    }
                    self.state.markets.insert(id, MarketState { bids, ..MarketState::default() });
                }
                Some(m) => {
                    for (name, bid) in wanted {
                        match bid {
                            None => {
                                if m.bids.contains_key(&name) && m.off.insert(name.clone()) {
                                    tracing::info!(market = id, appliance = name, "off for this day: withdrawing the bid");
                                }
                                if !m.sent.contains(&name) {
                                    m.bids.remove(&name);
                                }
                            }
                            Some(b) => {
                                if m.off.remove(&name) {
                                    tracing::info!(market = id, appliance = name, "on again for this day");
                                }
                                if !m.sent.contains(&name) {
                                    m.bids.insert(name, b);
                                } else if m.bids.get(&name) != Some(&b) {
                                    tracing::debug!(market = id, appliance = name, "plan changed after the bid was sent: set the day \"off\" to withdraw it");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Signed enrollments (bids) of every market whose registration is open at `now_ms`: the
    /// appliances with a bid that are not enrolled and not off. Each is recorded as sent.
    pub fn enrollments(&mut self, now_ms: u64) -> Vec<SignedEnrollment> {
        let chain = self.gateway.genesis.chain_id;
        let mut out = Vec::new();
        let mut sent = Vec::new();
        for (id, k, m) in self.registering(now_ms) {
            for a in &self.gateway.appliances {
                let Some(bid) = m.bids.get(&a.name) else { continue };
                if m.enrolled.contains(&a.name) || m.off.contains(&a.name) {
                    continue;
                }
                let Some(att) = self.attestation(a, &k.spec) else { continue };
                let body = Enrollment {
                    market_id: id,
                    device: a.id(),
                    kind: a.kind().id(),
                    slots: k.spec.slots,
                    commitment: FieldElement::new(&circuits::commitment(&a.opening_for(id, bid))),
                    attestation: att.clone(),
                };
                out.push(SignedEnrollment::new(&a.key, &chain, body));
                sent.push((id, a.name.clone()));
            }
        }
        for (id, name) in sent {
            self.state.markets.get_mut(&id).expect("registering").sent.insert(name);
        }
        out
    }

    /// Signed withdrawals of enrolled appliances whose day turned "off", in every market
    /// whose registration is open at `now_ms`.
    pub fn withdrawals(&self, now_ms: u64) -> Vec<SignedWithdrawal> {
        let chain = self.gateway.genesis.chain_id;
        let mut out = Vec::new();
        for (id, _, m) in self.registering(now_ms) {
            for a in self.gateway.appliances.iter().filter(|a| m.enrolled.contains(&a.name) && m.off.contains(&a.name)) {
                out.push(SignedWithdrawal::new(&a.key, &chain, Withdrawal { market_id: id, device: a.id() }));
            }
        }
        out
    }

    /// Whether every market this gateway bids in is past registration or has all its bids
    /// (not off) enrolled.
    pub fn all_enrolled(&self) -> bool {
        self.state.markets.values().all(|m| m.registration_over() || m.bids.keys().all(|n| m.enrolled.contains(n) || m.off.contains(n)))
    }

    /// Markets whose final schedule is in and not yet executed, by id.
    pub fn executable(&self) -> Vec<u64> {
        self.state.markets.iter().filter(|(_, m)| m.is_final() && !m.executed).map(|(id, _)| *id).collect()
    }

    /// Accepts the next certified entry (light-client checks: link, quorum certificate, and
    /// update bodies that are exactly the ones the entry's digests name) and says which
    /// market's iteration the gateway should now solve and prove ([`Agent::prove`]), if any:
    /// one it has not built yet whose submission window is still open at `now_ms` (so
    /// replaying an old log after a restart builds nothing stale). An entry that fails the
    /// checks changes nothing. An `Open` entry makes its market known (bid in it with
    /// [`Agent::plan`]); a revocation of one of this gateway's attestations takes the
    /// appliance out of every market still registering, as validators do.
    ///
    /// The host persists the state between this call and [`Agent::prove`]: a crash while
    /// proving then resumes knowing what the log already holds (no second enrollment).
    pub fn on_entry(&mut self, c: &Certified, now_ms: u64) -> Result<Option<(u64, u32)>, AgentError> {
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
        if c.is_pruned() {
            // Validators prune a market's bodies only after it executed: a pruned entry of a
            // market this gateway could still act on is withheld data (ask another validator).
            let id = c.entry.body.market_id().unwrap_or_default();
            if !self.known.get(&id).is_some_and(|k| protocol::market::over_by_clock(&k.spec, now_ms)) {
                let reason = format!("iteration entry of market {id} served without its bodies before the market executed");
                return Err(refused(LogError::Bodies { height: c.entry.height, reason }));
            }
            self.client.accept_pruned(c).map_err(refused)?;
        } else {
            self.client.accept_certified(c).map_err(refused)?;
        }
        self.state.height = c.entry.height;
        match &c.entry.body {
            Body::Open(o) => {
                let spec = o.body.spec.clone();
                let next_due_ms = ClockConfig::from_spec(&spec).next_batch_ms(c.entry.timestamp_ms, c.entry.timestamp_ms, RegistrationTip::Genesis);
                self.known.insert(spec.market_id, Known { spec, opened_ms: c.entry.timestamp_ms, next_due_ms });
                return Ok(None);
            }
            Body::Revocation(revocations) => {
                for r in revocations {
                    let digest = protocol::ids::hex(&r.body.attestation);
                    let own = self.gateway.appliances.iter().find(|a| a.attestations.iter().any(|att| protocol::ids::hex(&att.digest()) == digest));
                    let Some(a) = own else { continue };
                    tracing::warn!(appliance = a.name, height = c.entry.height, "an authority revoked this appliance's attestation");
                    let name = a.name.clone();
                    self.state.revoked.insert(digest);
                    let h = c.entry.height;
                    for m in self.state.markets.values_mut().filter(|m| m.closed_at == 0 || h < m.closed_at) {
                        m.enrolled.remove(&name);
                        m.bids.remove(&name);
                    }
                }
                return Ok(None);
            }
            _ => {}
        }
        let Some(id) = c.entry.body.market_id() else { return Ok(None) };
        let (Some(known), Some(m)) = (self.known.get_mut(&id), self.state.markets.get_mut(&id)) else {
            return Ok(None); // A market this gateway does not take part in.
        };
        let g = known.spec.clone();
        let clock = ClockConfig::from_spec(&g);
        // After an enrollment batch: when the next batch is due, `None` once registration is over.
        let next_batch = match &c.entry.body {
            Body::Enrollment(b) => {
                clock.next_batch_ms(known.opened_ms, c.entry.timestamp_ms, RegistrationTip::Batch { enrollments: b.enrollments.len() + b.withdrawals.len() })
            }
            _ => None,
        };
        known.next_due_ms = match &c.entry.body {
            Body::Enrollment(_) => Some(next_batch.unwrap_or_else(|| clock.deadline(1))),
            Body::Iteration(b) if b.iteration < g.max_iterations && !iteration_converged(b) => Some(clock.deadline(b.iteration + 1)),
            Body::Iteration(_) => Some(c.entry.timestamp_ms),
            _ => None,
        };
        let next = match &c.entry.body {
            Body::Enrollment(b) => {
                for e in &b.enrollments {
                    if let Some(name) = ids.get(&e.body.device) {
                        m.enrolled.insert(name.clone());
                    }
                }
                for w in &b.withdrawals {
                    if let Some(name) = ids.get(&w.body.device) {
                        m.enrolled.remove(name);
                        tracing::info!(market = id, appliance = name, height = c.entry.height, "withdrawal committed");
                    }
                }
                // Iteration 1 opens with the variables at zero once every bid is in, or with
                // those that are in once the closing batch ended registration.
                let over = next_batch.is_none();
                if over && m.closed_at == 0 {
                    m.closed_at = c.entry.height;
                }
                let missing: Vec<&str> = m.bids.keys().filter(|n| !m.enrolled.contains(*n) && !m.off.contains(*n)).map(|n| n.as_str()).collect();
                if over && m.enrolled.is_empty() {
                    tracing::warn!(
                        market = id,
                        height = c.entry.height,
                        "registration closed without any of this gateway's appliances: sitting this market out"
                    );
                    return Ok(None);
                }
                if over && !missing.is_empty() {
                    tracing::warn!(
                        market = id,
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
                        m.schedules.insert(name.clone(), u.body.schedule.clone());
                    }
                }
                m.variables = Some((b.x_bar.clone(), b.z_bar.clone(), b.u.clone()));
                m.iteration = b.iteration;
                // After a converged iteration the final entry comes next: nothing to build.
                (!iteration_converged(b)).then_some(b.iteration + 1)
            }
            Body::Final(f) => {
                m.final_prices = Some(f.prices.clone());
                m.converged = f.converged;
                m.final_height = c.entry.height;
                m.settles = g.settlement.is_some();
                None
            }
            Body::Meter(b) => {
                // Own readings in the log (after a lost state file too): never read or sent
                // again.
                for r in &b.readings {
                    if let Some(name) = ids.get(&r.body.device) {
                        let next = m.metered.entry(name.clone()).or_insert(0);
                        *next = (*next).max(r.body.slot + 1);
                        m.readings.entry(name.clone()).or_default().insert(r.body.slot, r.body.energy);
                        m.committed.entry(name.clone()).or_default().insert(r.body.slot);
                        self.sent_ms.remove(&(id, name.clone(), r.body.slot));
                    }
                }
                None
            }
            Body::Settlement(s) => {
                for b in &s.bills {
                    if let Some(name) = ids.get(&b.device) {
                        m.bills.insert(name.clone(), *b);
                    }
                }
                m.settlement_rule = g.settlement.as_ref().map(|r| (r.imbalance_premium, g.slot_seconds));
                self.sent_ms.retain(|(market, _, _), _| *market != id);
                if !m.bills.is_empty() {
                    let total: i128 = m.bills.values().map(|b| b.total() as i128).sum();
                    tracing::info!(market = id, appliances = m.bills.len(), total_eur = total as f64 / 1e6, "settled: bills committed");
                }
                None
            }
            _ => None,
        };
        let open = |k: u32| now_ms < clock.deadline(k);
        let m = &self.state.markets[&id];
        Ok(next.filter(|&k| k > m.submitted_through && k <= g.max_iterations && !m.is_final() && !m.enrolled.is_empty() && open(k)).map(|k| (id, k)))
    }

    /// The MQTT topics the appliances' meters are read from, with the appliance indices.
    pub fn meter_topics(&self) -> Vec<(usize, String)> {
        self.gateway.appliances.iter().enumerate().filter_map(|(i, a)| Some((i, a.meter.as_ref()?.topic()?))).collect()
    }

    /// A message from the broker at `now_ms`: a sample for every appliance metered on `topic`.
    pub fn on_meter_message(&mut self, topic: &str, payload: &[u8], now_ms: u64) {
        for (i, a) in self.gateway.appliances.iter().enumerate() {
            let Some(meter) = &a.meter else { continue };
            if meter.topic().as_deref() != Some(topic) {
                continue;
            }
            if let Some(sample) = meter.parse(payload) {
                self.meters.entry(i).or_default().push(now_ms, sample);
            }
        }
    }

    /// The readings due at `now_ms` (docs/protocol.md §9): for every market that settles,
    /// has its final schedule and is not settled, before its meter deadline, each metered
    /// appliance's readings not yet committed whose last sending is [`resend_readings_ms`]
    /// old (or that were never sent since this start), then its slots that ended since it
    /// last read, read from its meter and signed with its key — one `DeviceRequest::Meter`
    /// per appliance (ascending slots, at most `MAX_READINGS_PER_REQUEST`), with the
    /// appliance's index and the meter deadline. What is returned counts as read (it is
    /// never read twice) and as sent now.
    pub fn due_readings(&mut self, now_ms: u64) -> Vec<(usize, protocol::messages::DeviceRequest, u64)> {
        let mut out = Vec::new();
        let chain = self.client.chain();
        let grace = self.read_grace_ms();
        for (id, m) in self.state.markets.iter_mut().filter(|(_, m)| m.settles && m.is_final() && m.bills.is_empty()) {
            let Some(spec) = self.known.get(id).map(|k| &k.spec) else { continue };
            let Some(deadline) = protocol::settlement::meter_deadline(spec) else { continue };
            for (i, a) in self.gateway.appliances.iter().enumerate() {
                let (Some(meter), Some(x)) = (&a.meter, m.schedules.get(&a.name)) else { continue };
                let (Some(att), true) = (a.attestation_for(spec), now_ms < deadline) else {
                    // Past the meter deadline (or nothing to bound a reading by): the slots
                    // left unread stay so, and those sent but not committed are given up;
                    // validators settle them by the default.
                    let next = m.metered.entry(a.name.clone()).or_insert(0);
                    if (*next as usize) < x.len() {
                        tracing::warn!(
                            market = *id,
                            appliance = a.name,
                            unread = x.len() - *next as usize,
                            "slots left unread: the meter deadline passed or no attestation covers the market"
                        );
                        *next = x.len() as u32;
                    }
                    self.sent_ms.retain(|(market, name, _), _| (market, name) != (id, &a.name));
                    continue;
                };
                let limits = att.body.nameplate.limits(spec.slot_seconds);
                let mut list: Vec<protocol::settlement::SignedReading> = m
                    .uncommitted(&a.name)
                    .filter(|&(slot, _)| resend_at(&self.sent_ms, *id, &a.name, slot, spec) <= now_ms)
                    .map(|(slot, energy)| {
                        protocol::settlement::SignedReading::new(&a.key, &chain, protocol::settlement::Reading { market_id: *id, device: a.id(), slot, energy })
                    })
                    .collect();
                let resent = list.len();
                let next = m.metered.entry(a.name.clone()).or_insert(0);
                while (*next as usize) < x.len() && protocol::settlement::slot_end_ms(spec, *next).saturating_add(grace) <= now_ms {
                    let slot = *next;
                    *next += 1;
                    let energy = match meter.topic() {
                        None => meter.read(*id, &a.name, slot, x[slot as usize], limits.import_w, limits.export_w),
                        Some(_) => {
                            let end = protocol::settlement::slot_end_ms(spec, slot);
                            let start = end.saturating_sub(spec.slot_ms());
                            let e = self.meters.get(&i).and_then(|s| s.energy(start, end));
                            if e.is_none() {
                                tracing::warn!(market = *id, appliance = a.name, slot, "no meter samples cover this slot: no reading");
                            }
                            e
                        }
                    };
                    let Some(energy) = energy else { continue };
                    if energy > limits.import_w as i64 || energy < -(limits.export_w as i64) {
                        tracing::warn!(market = *id, appliance = a.name, slot, energy, "the meter reads beyond the attested nameplate: not sent");
                        continue;
                    }
                    m.readings.entry(a.name.clone()).or_default().insert(slot, energy);
                    let body = protocol::settlement::Reading { market_id: *id, device: a.id(), slot, energy };
                    list.push(protocol::settlement::SignedReading::new(&a.key, &chain, body));
                }
                // (A longer list goes out in later rounds: its tail was never sent.)
                list.truncate(protocol::settlement::MAX_READINGS_PER_REQUEST);
                if resent > 0 {
                    tracing::info!(market = *id, appliance = a.name, readings = resent.min(list.len()), "sending readings again that no Meter entry holds yet");
                }
                for r in &list {
                    self.sent_ms.insert((*id, a.name.clone(), r.body.slot), now_ms);
                }
                if !list.is_empty() {
                    out.push((i, protocol::messages::DeviceRequest::Meter(list), deadline));
                }
            }
        }
        out
    }

    /// How long after a slot's end it is read ([`READ_GRACE_MS`], or the genesis's clock drift
    /// if longer).
    fn read_grace_ms(&self) -> u64 {
        READ_GRACE_MS.max(self.gateway.market().max_clock_drift_ms)
    }

    /// When readings are next due (ms), among the settling markets still taking readings: the
    /// next metered slot's end plus the read grace, or an uncommitted reading's time to be
    /// sent again (before the deadline at `now_ms`); `None` if none. (A time already past
    /// means [`Self::due_readings`] makes progress at once: it reads or sends those slots, or
    /// gives them up after the deadline.)
    pub fn next_reading_ms(&self, now_ms: u64) -> Option<u64> {
        let grace = self.read_grace_ms();
        self.state
            .markets
            .iter()
            .filter(|(_, m)| m.settles && m.is_final() && m.bills.is_empty())
            .filter_map(|(id, m)| {
                let spec = &self.known.get(id)?.spec;
                let deadline = protocol::settlement::meter_deadline(spec)?;
                self.gateway
                    .appliances
                    .iter()
                    // (What `due_readings` reads: metered, and attested for the market.)
                    .filter(|a| a.meter.is_some() && a.attestation_for(spec).is_some())
                    .filter_map(|a| {
                        let next = m.metered.get(&a.name).copied().unwrap_or(0);
                        let x = m.schedules.get(&a.name)?;
                        let read = ((next as usize) < x.len()).then(|| protocol::settlement::slot_end_ms(spec, next).saturating_add(grace));
                        let resend = (now_ms < deadline)
                            .then(|| m.uncommitted(&a.name).map(|(slot, _)| resend_at(&self.sent_ms, *id, &a.name, slot, spec)).min())
                            .flatten();
                        read.into_iter().chain(resend).min().map(|t| t.min(deadline))
                    })
                    .min()
            })
            .min()
    }

    /// Solves and proves iteration `k` of market `market_id` for every enrolled appliance.
    /// Records `k` as built first, so that it is never built (and submitted) twice, even
    /// across restarts.
    pub fn prove<R: RngCore + CryptoRng>(&mut self, market_id: u64, k: u32, rng: &mut R) -> Result<Vec<SignedUpdate>, AgentError> {
        let m = self.state.markets.get_mut(&market_id).expect("a market the agent asked to prove");
        assert!(k > m.submitted_through, "iteration {k} of market {market_id} already built");
        m.submitted_through = k;
        tracing::info!(market = market_id, iteration = k, appliances = m.enrolled.len(), "solving and proving");
        let solved = self.solve(market_id)?;
        self.sign_proven(market_id, k, solved, rng)
    }

    /// The local step (clarabel) of every appliance enrolled in market `market_id` against
    /// its last decided variables, rounded to circuit-exact watts: `(appliance index,
    /// schedule)`.
    pub fn solve(&self, market_id: u64) -> Result<Vec<(usize, Vec<Watts>)>, AgentError> {
        let (Some(g), Some(m)) = (self.spec(market_id), self.state.markets.get(&market_id)) else { return Ok(vec![]) };
        let t = g.slots as usize;
        let vars = match &m.variables {
            Some((x, z, u)) => Variables { x_bar: x.clone(), z_bar: z.clone(), u: u.clone() },
            None => Variables { x_bar: vec![0; t], z_bar: vec![0; t], u: vec![0; t] },
        };
        let mut out = Vec::new();
        for (i, a) in self.gateway.appliances.iter().enumerate() {
            // An appliance whose withdrawal is under way proves nothing.
            let Some(bid) = m.bids.get(&a.name).filter(|_| m.enrolled.contains(&a.name) && !m.off.contains(&a.name)) else { continue };
            let previous = m.schedules.get(&a.name).cloned().unwrap_or_else(|| vec![0; t]);
            let x = local_step(&bid.params, &bid.costs, Fixed(g.rho), &vars, &previous).map_err(|e| AgentError::Prove {
                market_id,
                name: a.name.clone(),
                reason: format!("local step: {e}"),
            })?;
            out.push((i, x));
        }
        Ok(out)
    }

    /// Proves (Groth16) and signs each solved schedule as an update for iteration `k` of
    /// market `market_id`, against the bid's opening and the attested nameplate (the public
    /// input validators compute from the same attestation).
    pub fn sign_proven<R: RngCore + CryptoRng>(
        &self,
        market_id: u64,
        k: u32,
        solved: Vec<(usize, Vec<Watts>)>,
        rng: &mut R,
    ) -> Result<Vec<SignedUpdate>, AgentError> {
        let (Some(g), Some(m)) = (self.spec(market_id), self.state.markets.get(&market_id)) else { return Ok(vec![]) };
        let mut out = Vec::new();
        for (i, x) in solved {
            let a = &self.gateway.appliances[i];
            let fail = |reason: String| AgentError::Prove { market_id, name: a.name.clone(), reason };
            let bid = m.bids.get(&a.name).ok_or_else(|| fail("no bid".into()))?;
            let slots = Slots::new(g.slots as usize).map_err(|e| fail(e.to_string()))?;
            let shape = Shape { kind: a.kind(), slots };
            let pk =
                self.keys.get(&(shape.kind.id(), slots.get())).ok_or_else(|| fail(format!("no proving key for {} with T = {}", shape.kind, slots.get())))?;
            let attested = self.attestation(a, g).ok_or_else(|| fail("no attestation covering the market".into()))?;
            let limits = attested.body.nameplate.limits(g.slot_seconds);
            let witness = Witness { opening: a.opening_for(market_id, bid), context: Context { market_id, iteration: k, shape }, limits, schedule: x.clone() };
            let (proof, _) = prover::prove(pk, witness, rng).map_err(|e| fail(e.to_string()))?;
            let body = Update { market_id, iteration: k, device: a.id(), schedule: x, proof: prover::format::encode_proof(&proof) };
            out.push(SignedUpdate::new(&a.key, &self.gateway.genesis.chain_id, body));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_market_moves_through_its_phases_in_order() {
        let mut m = MarketState::default();
        let mut seen = vec![m.phase()];
        m.closed_at = 12;
        seen.push(m.phase());
        m.iteration = 3;
        m.final_prices = Some(vec![0; 4]);
        seen.push(m.phase());
        m.settles = true;
        m.executed = true;
        seen.push(m.phase());
        m.bills.insert("ev".into(), protocol::settlement::Bill { device: DeviceId([1; 32]), energy: 5, imbalance: 0, metered_slots: 4 });
        seen.push(m.phase());
        use MarketPhase::*;
        assert_eq!(seen, vec![Registration, Scheduling, Scheduled, Settling, Settled]);
        m.settles = false;
        m.bills.clear();
        assert_eq!(m.phase(), Executed, "without settlement an executed market is done");
        let names: Vec<String> = MarketPhase::ALL.iter().map(|p| serde_json::to_value(p).unwrap().as_str().unwrap().to_string()).collect();
        assert_eq!(names, MarketPhase::ALL.map(|p| p.as_str().to_string()), "as_str is the serialized name");
    }
}
