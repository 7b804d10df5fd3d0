//! A gateway's runtime (the IO edge around [`crate::agent::Agent`]): QUIC connections to the
//! validators (one per appliance per validator, since a validator checks each message against
//! its device's key), the loop that follows the log and submits, and the execution of the
//! final schedule over MQTT. The `device` binary and the local demo both run gateways
//! through [`run_gateway`].

use std::time::Duration;

use protocol::messages::{DeviceRequest, DeviceResponse, SignedUpdate};
use protocol::net::ValidatorClient;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use thiserror::Error;
use tracing::{info, warn};

use crate::actuation::{self, AppliancePlan, Executor, Publish, Timing};
use crate::agent::{Agent, AgentError};
use crate::config::{ConfigError, Gateway};
use crate::mqtt::{Broker, MqttError};

/// Why a gateway stopped.
#[derive(Debug, Error)]
pub enum RunError {
    /// Its configuration or state file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The agent refused an entry or could not prove.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The MQTT broker.
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// No validator answered.
    #[error("no validator reachable (tried {0})")]
    Unreachable(String),
    /// The network edge (QUIC endpoint, subscription).
    #[error("network: {0}")]
    Net(String),
    /// The market did not finish in time.
    #[error("timed out after {within:?} at height {height}")]
    Timeout {
        /// The limit.
        within: Duration,
        /// Where the light client was.
        height: u64,
    },
}

/// How a gateway runs.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Give up on the market after this long.
    pub within: Duration,
    /// Stop once every appliance is enrolled.
    pub enroll_only: bool,
    /// After the final schedule, execute it (if a broker is configured).
    pub execute: bool,
    /// Execute with this slot length (ms) starting when the schedule is final, instead of the
    /// market's own execution clock (time-compressed demos).
    pub compressed_slot_ms: Option<u64>,
}

/// Follows the market to the final schedule (or, with `enroll_only`, to enrollment), then,
/// if `execute` and a broker is configured, carries the schedule out slot by slot. Resumes
/// from the state file: mid-market (no second submission) or mid-execution.
pub async fn run_gateway(gw: &Gateway, opts: RunOptions) -> Result<(), RunError> {
    let keys = gw.proving_keys()?;
    let state = crate::state::load(&gw.file.state_file)?;
    let mut agent = Agent::new(gw.clone(), keys, state)?;
    // The broker first: an unreachable one is a configuration error, found before the market.
    let ha = gw.file.home_assistant.clone();
    let offline = ha.as_ref().map(|h| Publish { topic: actuation::availability_topic(h), payload: "offline".into(), retain: true });
    let broker = match (&gw.file.mqtt, opts.execute) {
        (Some(m), true) => Some(Broker::connect(m, &gw.client_id(), offline.clone(), Duration::from_secs(10)).await?),
        _ => None,
    };
    if !agent.is_final() {
        follow_market(&mut agent, gw, opts.within, opts.enroll_only).await?;
        if opts.enroll_only {
            return Ok(());
        }
    } else {
        info!(height = agent.state.height, "final schedule already committed; resuming execution");
    }
    let Some(mut broker) = broker else { return Ok(()) };
    let spec = &gw.market().market;
    let timing = match opts.compressed_slot_ms {
        Some(slot_ms) => Timing { start_ms: protocol::net::now_ms() + slot_ms, slot_ms },
        None => Timing { start_ms: spec.execution_start_ms, slot_ms: spec.slot_seconds as u64 * 1000 },
    };
    execute_schedule(&mut agent, gw, &mut broker, timing).await?;
    broker.close(offline).await;
    Ok(())
}

async fn connect_all(gw: &Gateway, endpoint: &quinn::Endpoint, key: &ed25519_dalek::SigningKey) -> Vec<ValidatorClient> {
    let mut out = Vec::new();
    for v in &gw.file.validators {
        match ValidatorClient::connect(endpoint, v.addr, gw.validator_keys[v.index as usize], key).await {
            Ok(c) => out.push(c),
            Err(e) => warn!(validator = v.index, addr = %v.addr, "unreachable: {e}"),
        }
    }
    out
}

/// Submits `request` from each appliance's own connection to every validator.
async fn submit(per_appliance: &[Vec<ValidatorClient>], index: usize, request: DeviceRequest) -> usize {
    let mut ok = 0;
    for c in &per_appliance[index] {
        match c.submit(&request).await {
            Ok(DeviceResponse::Accepted) => ok += 1,
            Ok(DeviceResponse::Rejected { label, message }) => warn!(validator = %c.addr(), label, "refused: {message}"),
            Err(e) => warn!(validator = %c.addr(), "submit failed: {e}"),
        }
    }
    ok
}

/// Enrolls what is not enrolled, then answers every certified entry until the final one.
pub async fn follow_market(agent: &mut Agent, gw: &Gateway, within: Duration, enroll_only: bool) -> Result<(), RunError> {
    let state_path = gw.file.state_file.clone();
    protocol::net::install_crypto();
    let endpoint = protocol::net::client_endpoint("0.0.0.0:0".parse().expect("valid")).map_err(|e| RunError::Net(e.to_string()))?;
    // A validator checks that each message comes from its device's own key: one connection
    // per appliance per validator.
    let mut per_appliance = Vec::new();
    for a in &gw.appliances {
        let conns = connect_all(gw, &endpoint, &a.key).await;
        if conns.is_empty() {
            return Err(RunError::Unreachable(gw.file.validators.iter().map(|v| v.addr.to_string()).collect::<Vec<_>>().join(", ")));
        }
        per_appliance.push(conns);
    }
    let enrollments = agent.enrollments();
    for (i, a) in gw.appliances.iter().enumerate() {
        if let Some(e) = enrollments.iter().find(|e| e.body.device == a.id()) {
            let ok = submit(&per_appliance, i, DeviceRequest::Enroll(e.clone())).await;
            info!(appliance = a.name, accepted_by = ok, "enrollment sent");
        }
    }
    // Follow the log through one validator; if its subscription ends (a crash, a lagging
    // stream), resubscribe from the next height through the next validator.
    let watchers = &per_appliance[0];
    let mut turn = 0usize;
    let mut rx = watchers[turn].subscribe(0).await.map_err(|e| RunError::Net(e.to_string()))?;
    let mut rng = ChaCha20Rng::from_entropy();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let item = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Err(RunError::Timeout { within, height: agent.state.height }),
            Ok(Some(Ok(item))) => item,
            Ok(end) => {
                let why = match end {
                    Some(Err(e)) => e.to_string(),
                    _ => "closed".to_string(),
                };
                warn!(validator = %watchers[turn].addr(), "subscription ended ({why}); resubscribing");
                tokio::time::sleep(Duration::from_millis(200)).await;
                turn = (turn + 1) % watchers.len();
                match watchers[turn].subscribe(agent.next_height()).await {
                    Ok(r) => rx = r,
                    Err(e) => warn!(validator = %watchers[turn].addr(), "cannot subscribe: {e}"),
                }
                continue;
            }
        };
        if item.entry.height < agent.next_height() && item.entry.height != 0 {
            continue;
        }
        let build = agent.on_entry(&item, protocol::net::now_ms())?;
        crate::state::save(&state_path, &agent.state)?;
        let mut updates: Vec<SignedUpdate> = Vec::new();
        if let Some(k) = build {
            // Proving takes the CPU for a while: off the async workers, so the QUIC
            // connections (keep-alives, the subscription) stay serviced meanwhile.
            updates = tokio::task::block_in_place(|| agent.prove(k, &mut rng))?;
            // Persist before sending: a crash now skips this iteration rather than sending twice.
            crate::state::save(&state_path, &agent.state)?;
        }
        if enroll_only && agent.state.enrolled.len() == gw.appliances.len() {
            info!(appliances = gw.appliances.len(), height = agent.state.height, "all appliances enrolled");
            return Ok(());
        }
        for u in updates {
            let i = gw.appliances.iter().position(|a| a.id() == u.body.device).expect("own appliance");
            let k = u.body.iteration;
            let ok = submit(&per_appliance, i, DeviceRequest::Update(u)).await;
            info!(appliance = gw.appliances[i].name, iteration = k, accepted_by = ok, "update submitted");
        }
        if agent.is_final() {
            info!(height = agent.state.height, iterations = agent.state.submitted_through, converged = agent.state.converged, "final schedule committed");
            endpoint.close(0u32.into(), b"final");
            return Ok(());
        }
    }
}

/// Carries out the committed schedule through the configured outputs, persisting progress.
pub async fn execute_schedule(agent: &mut Agent, gw: &Gateway, broker: &mut Broker, timing: Timing) -> Result<(), RunError> {
    let prices = agent.state.prices_eur_mwh();
    let plans: Vec<AppliancePlan> = gw
        .appliances
        .iter()
        .map(|a| AppliancePlan { name: a.name.clone(), output: a.output.clone(), schedule: agent.state.schedules.get(&a.name).cloned().unwrap_or_default() })
        .collect();
    let ha = gw.file.home_assistant.as_ref();
    let mut on_connect = Vec::new();
    if let Some(h) = ha {
        on_connect.push(Publish { topic: actuation::availability_topic(h), payload: "online".into(), retain: true });
        on_connect.extend(actuation::discovery(h, &plans));
    }
    let mut executor = Executor::new(actuation::timeline(timing, &plans, &prices, ha), agent.state.executed_until_ms);
    if executor.is_done() {
        info!("schedule already executed");
        return Ok(());
    }
    let now = protocol::net::now_ms();
    if now < timing.start_ms {
        info!(in_s = (timing.start_ms - now) / 1000, "execution starts at {}", actuation::rfc3339(timing.start_ms));
    }
    let state_path = gw.file.state_file.clone();
    let mut save_error = None;
    crate::mqtt::execute(broker, &mut executor, &on_connect, |done| {
        agent.state.executed_until_ms = done;
        if let Err(e) = crate::state::save(&state_path, &agent.state) {
            save_error.get_or_insert(e);
        }
    })
    .await;
    if let Some(e) = save_error {
        return Err(e.into());
    }
    info!(slots = plans.iter().map(|p| p.schedule.len()).max().unwrap_or(0), "schedule executed");
    Ok(())
}
