//! A gateway's runtime (the IO edge around [`crate::agent::Agent`]): QUIC connections to the
//! validators (one per appliance per validator, since a validator checks each message against
//! its device's key), the loop that follows the log and submits, and the execution of the
//! final schedule over MQTT. The `device` binary and the local demo both run gateways
//! through [`run_gateway`].

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::messages::{DeviceRequest, SignedUpdate};
use prover::UpdateProvingKey;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::actuation::{self, AppliancePlan, Executor, Publish, Timing};
use crate::agent::{Agent, AgentError};
use crate::config::{ConfigError, Gateway};
use crate::links::Links;
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
    /// Not one appliance has an attestation: validators admit only attested devices.
    #[error("no appliance has an attestation in {file} ({names}): run `device init`, have the enrollment authority sign its request (`verifier-node attest`), and put the result there")]
    Unattested {
        /// The appliances.
        names: String,
        /// The attestations file.
        file: String,
    },
    /// No validator answered.
    #[error("no validator reachable (tried {0})")]
    Unreachable(String),
    /// The network edge (QUIC endpoint, subscription).
    #[error("network: {0}")]
    Net(String),
    /// The market ended without one of this gateway's updates accepted by any validator.
    #[error("the market ended and none of the {built} updates this gateway built was accepted by a validator")]
    NothingAccepted {
        /// Updates built.
        built: u64,
    },
    /// Stopped by a signal (state saved; `run` resumes).
    #[error("stopped by {0}")]
    Interrupted(&'static str),
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
    /// Stop cleanly on SIGINT or SIGTERM ([`RunError::Interrupted`], MQTT closed): a gateway
    /// process sets it; gateways inside a larger process (the demo) leave signals to it.
    pub stop_on_signal: bool,
}

/// Resolves on a shutdown signal if `enabled`, never otherwise.
async fn signal_if(enabled: bool) -> &'static str {
    if enabled {
        protocol::net::shutdown_signal().await
    } else {
        std::future::pending().await
    }
}

/// Follows the market to the final schedule (or, with `enroll_only`, to enrollment), then,
/// if `execute` and a broker is configured, carries the schedule out slot by slot. Resumes
/// from the state file: mid-market (no second submission) or mid-execution.
pub async fn run_gateway(gw: &Gateway, opts: RunOptions) -> Result<(), RunError> {
    run_gateway_with_keys(gw, gw.proving_keys()?, opts).await
}

/// [`run_gateway`] with proving keys already loaded: a host that runs several gateways in one
/// process (the demo) decodes each key file once instead of once per gateway, so a gateway
/// enrolls within milliseconds of starting. Every shape an appliance needs must be present
/// ([`AgentError::MissingKey`] otherwise).
pub async fn run_gateway_with_keys(gw: &Gateway, keys: BTreeMap<(u8, usize), UpdateProvingKey>, opts: RunOptions) -> Result<(), RunError> {
    let unattested: Vec<&str> = gw.appliances.iter().filter(|a| a.attestation.is_none()).map(|a| a.name.as_str()).collect();
    if unattested.len() == gw.appliances.len() {
        return Err(RunError::Unattested { names: unattested.join(", "), file: gw.file.attestations_file.display().to_string() });
    }
    for name in &unattested {
        warn!(appliance = name, file = %gw.file.attestations_file.display(), "no attestation: this appliance is not enrolled (send `device init`'s request to the enrollment authority)");
    }
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
        tokio::select! {
            r = follow_market(&mut agent, gw, opts.within, opts.enroll_only) => { r?; }
            signal = signal_if(opts.stop_on_signal) => {
                info!(height = agent.state.height, "{signal}: stopping; the state file is saved and `run` resumes");
                if let Some(b) = broker {
                    b.close(offline).await;
                }
                return Err(RunError::Interrupted(signal));
            }
        }
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
    let interrupted = tokio::select! {
        r = execute_schedule(&mut agent, gw, &mut broker, timing) => { r?; None }
        signal = signal_if(opts.stop_on_signal) => Some(signal),
    };
    // A clean close either way: the last publications flushed, "offline" published.
    broker.close(offline).await;
    match interrupted {
        Some(signal) => {
            info!(executed_until_ms = agent.state.executed_until_ms, "{signal}: stopped execution; `run` resumes it");
            Err(RunError::Interrupted(signal))
        }
        None => Ok(()),
    }
}

/// How long past its due time (by the market clock) an entry may be missing before the
/// subscription is taken as stalled and moved to another validator: a third of the iteration
/// window (at least 500 ms), so that a frozen validator costs no iteration.
pub fn stall_grace_ms(iteration_ms: u64) -> u64 {
    (iteration_ms / 3).max(500)
}

/// What the gateway did in a market, logged when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarketSummary {
    /// Updates built (one per appliance per iteration joined).
    pub updates_built: u64,
    /// Of those, the ones at least one validator accepted.
    pub updates_accepted: u64,
    /// Entries refused by the light client (each made the gateway switch validator).
    pub entries_refused: u64,
    /// Times the subscription moved to another validator.
    pub switches: u64,
}

/// Where the gateway follows the log: which validator, and its stream of certified entries.
struct Feed {
    turn: usize,
    rx: Option<tokio::sync::mpsc::Receiver<Result<protocol::entry::Certified, protocol::net::NetError>>>,
    since: tokio::time::Instant,
}

impl Feed {
    /// Subscribes through validator position `turn` (or the next ones that answer) from `from`.
    async fn open(links: &mut Links, turn: usize, from: u64) -> Feed {
        let n = links.validator_count();
        // Validators with a live connection first (no dial to wait for), then the others.
        let order = (0..n).map(|i| (turn + i) % n);
        let (live, down): (Vec<usize>, Vec<usize>) = order.partition(|&v| links.is_live(v));
        for turn in live.into_iter().chain(down) {
            if let Some(c) = links.watcher(turn).await {
                match c.subscribe(from).await {
                    Ok(rx) => {
                        info!(validator = %links.addr(turn), from, "following the log");
                        return Feed { turn, rx: Some(rx), since: tokio::time::Instant::now() };
                    }
                    Err(e) => warn!(validator = %links.addr(turn), "cannot subscribe: {e}"),
                }
            }
        }
        // Nobody answered: try again shortly (the loop re-opens a feed without a stream).
        Feed { turn, rx: None, since: tokio::time::Instant::now() }
    }
}

/// Enrolls what is not enrolled, then answers every certified entry until the final one.
///
/// The log is followed through one validator at a time. The gateway moves to the next one
/// when the stream ends or fails, when the light client refuses an entry it served (a forged
/// update body, a bad certificate), or when an entry is [`stall_grace_ms`] past its due time.
/// Connections that are gone are dialled again with backoff; every submission goes to all
/// validators at once, each with a deadline (the iteration's). The market fails with
/// [`RunError::NothingAccepted`] if not one update of the day was accepted.
pub async fn follow_market(agent: &mut Agent, gw: &Gateway, within: Duration, enroll_only: bool) -> Result<MarketSummary, RunError> {
    let state_path = gw.file.state_file.clone();
    protocol::net::install_crypto();
    let endpoint = protocol::net::client_endpoint("0.0.0.0:0".parse().expect("valid")).map_err(|e| RunError::Net(e.to_string()))?;
    let mut links = Links::new(gw, endpoint);
    if links.dial_all().await == 0 {
        return Err(RunError::Unreachable(gw.file.validators.iter().map(|v| v.addr.to_string()).collect::<Vec<_>>().join(", ")));
    }
    let spec = gw.market().market.clone();
    let clock = protocol::clock::ClockConfig::from_spec(&spec);
    let grace = stall_grace_ms(spec.iteration_ms);
    let overall = tokio::time::Instant::now() + within;
    let mut summary = MarketSummary::default();
    let mut enrolled_sent_at: Option<u64> = None;
    let mut rng = ChaCha20Rng::from_entropy();
    let mut feed = Feed::open(&mut links, 0, 0).await;
    // Stall switches since the last accepted entry: when the whole cluster is slow (not one
    // validator), the wait doubles with each, up to 16 graces, instead of cycling every grace.
    let mut stalls = 0u32;
    // The open iteration's updates, sent once more two thirds into its window: a validator
    // that restarted after the first submission (its pool is in memory) and proposes the
    // iteration would otherwise leave them out.
    let mut resend: Option<(tokio::time::Instant, Vec<(usize, DeviceRequest)>, tokio::time::Instant)> = None;
    loop {
        // Enrollments not yet in the log, to every validator, again each interval while
        // registration is open: validators do not share their pools, and only the proposer's
        // goes into a batch, so one that accepted is not enough (an identical re-send is
        // accepted idempotently).
        let now = protocol::net::now_ms();
        let interval = clock.enrollment_interval(gw.genesis.timestamp_ms);
        if now < spec.registration_close_ms && enrolled_sent_at.is_none_or(|t| now >= t + interval) {
            send_enrollments(agent, gw, &mut links).await;
            enrolled_sent_at = Some(now);
        }
        // Wait for the next entry until it is overdue (or the market's time is up).
        let patience = grace << stalls.min(4);
        let overdue = agent.next_entry_due_ms().map(|t| t + patience).unwrap_or(u64::MAX);
        let now = protocol::net::now_ms();
        let stall_at = tokio::time::Instant::now() + Duration::from_millis(overdue.saturating_sub(now).min(3_600_000));
        // A fresh subscription gets that long of its own to catch up.
        let stall_at = stall_at.max(feed.since + Duration::from_millis(patience));
        let resend_at = resend.as_ref().map_or(overall, |r| r.0);
        let item = match feed.rx.as_mut() {
            Some(rx) => tokio::select! {
                item = rx.recv() => Some(item),
                _ = tokio::time::sleep_until(stall_at.min(overall)) => None,
                _ = tokio::time::sleep_until(resend_at), if resend.is_some() => {
                    let (_, requests, deadline) = resend.take().expect("checked");
                    let outcomes = links.submit_all(requests, deadline).await;
                    let newly: usize = outcomes.iter().map(|o| o.accepted).sum();
                    debug!(newly_accepted_by = newly, "updates sent again");
                    continue;
                }
            },
            None => {
                tokio::time::sleep_until((tokio::time::Instant::now() + Duration::from_millis(500)).min(overall)).await;
                None
            }
        };
        if tokio::time::Instant::now() >= overall {
            links.close();
            return Err(RunError::Timeout { within, height: agent.state.height });
        }
        let c = match item {
            Some(Some(Ok(c))) => c,
            other => {
                let why = match other {
                    Some(Some(Err(e))) => format!("subscription failed: {e}"),
                    Some(None) => "subscription ended".to_string(),
                    None if feed.rx.is_none() => "no validator to follow".to_string(),
                    None | Some(Some(Ok(_))) => {
                        stalls += 1;
                        format!("no entry {patience} ms after the next was due")
                    }
                };
                warn!(validator = %links.addr(feed.turn), height = agent.next_height(), "{why}; following another validator");
                summary.switches += 1;
                // A stream that ends at once (a validator accepting and closing) must not spin.
                if feed.since.elapsed() < Duration::from_millis(200) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let next = (feed.turn + 1) % links.validator_count();
                feed = Feed::open(&mut links, next, agent.next_height()).await;
                continue;
            }
        };
        if c.entry.height < agent.next_height() {
            continue; // Genesis, or an entry replayed by a new subscription.
        }
        let build = match agent.on_entry(&c, protocol::net::now_ms()) {
            Ok(b) => b,
            Err(e @ AgentError::Refused { .. }) => {
                warn!(validator = %links.addr(feed.turn), "{e}; nothing of it is used, following another validator");
                summary.entries_refused += 1;
                summary.switches += 1;
                let next = (feed.turn + 1) % links.validator_count();
                feed = Feed::open(&mut links, next, agent.next_height()).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        feed.since = tokio::time::Instant::now();
        stalls = 0;
        crate::state::save(&state_path, &agent.state)?;
        if enroll_only && (agent.state.enrolled.len() == gw.appliances.iter().filter(|a| a.attestation.is_some()).count() || build.is_some()) {
            // Every attested appliance is in, or registration is over (iteration 1 opened).
            info!(appliances = agent.state.enrolled.len(), height = agent.state.height, "enrolled");
            links.close();
            return Ok(summary);
        }
        let mut updates: Vec<SignedUpdate> = Vec::new();
        if let Some(k) = build {
            // Proving takes the CPU for a while: off the async workers, so the QUIC
            // connections (keep-alives, the subscription) stay serviced meanwhile.
            updates = tokio::task::block_in_place(|| agent.prove(k, &mut rng))?;
            // Persist before sending: a crash now skips this iteration rather than sending twice.
            crate::state::save(&state_path, &agent.state)?;
        }
        if let Some(k) = updates.first().map(|u| u.body.iteration) {
            let deadline_ms = clock.deadline(k);
            let left = Duration::from_millis(deadline_ms.saturating_sub(protocol::net::now_ms()));
            let requests: Vec<(usize, DeviceRequest)> = updates
                .into_iter()
                .map(|u| (gw.appliances.iter().position(|a| a.id() == u.body.device).expect("own appliance"), DeviceRequest::Update(u)))
                .collect();
            let names: Vec<usize> = requests.iter().map(|r| r.0).collect();
            let deadline = tokio::time::Instant::now() + left;
            let again = deadline.checked_sub(Duration::from_millis(grace)).filter(|t| *t > tokio::time::Instant::now());
            resend = again.map(|t| (t, requests.clone(), deadline));
            let outcomes = links.submit_all(requests, deadline).await;
            for (i, o) in names.into_iter().zip(outcomes) {
                summary.updates_built += 1;
                let name = &gw.appliances[i].name;
                if o.accepted > 0 {
                    summary.updates_accepted += 1;
                    info!(appliance = name, iteration = k, accepted_by = o.accepted, "update submitted");
                } else {
                    warn!(appliance = name, iteration = k, refused = ?o.refused, unreachable = o.failed, "update accepted by no validator");
                }
            }
        }
        if agent.is_final() {
            links.close();
            info!(
                height = agent.state.height,
                iterations = agent.state.submitted_through,
                converged = agent.state.converged,
                updates_built = summary.updates_built,
                updates_accepted = summary.updates_accepted,
                entries_refused = summary.entries_refused,
                switches = summary.switches,
                "final schedule committed"
            );
            if summary.updates_built > 0 && summary.updates_accepted == 0 {
                return Err(RunError::NothingAccepted { built: summary.updates_built });
            }
            return Ok(summary);
        }
    }
}

/// Sends the enrollments of the attested appliances not yet seen enrolled to every validator.
async fn send_enrollments(agent: &Agent, gw: &Gateway, links: &mut Links) {
    let requests: Vec<(usize, DeviceRequest)> = agent
        .enrollments()
        .into_iter()
        .filter_map(|e| gw.appliances.iter().position(|a| a.id() == e.body.device).map(|i| (i, DeviceRequest::Enroll(e))))
        .collect();
    if requests.is_empty() {
        return;
    }
    let names: Vec<usize> = requests.iter().map(|r| r.0).collect();
    let outcomes = links.submit_all(requests, tokio::time::Instant::now() + crate::links::REQUEST_TIMEOUT).await;
    for (i, o) in names.into_iter().zip(outcomes) {
        if o.accepted > 0 {
            info!(appliance = gw.appliances[i].name, accepted_by = o.accepted, "enrollment sent");
        } else {
            warn!(appliance = gw.appliances[i].name, refused = ?o.refused, unreachable = o.failed, "enrollment accepted by no validator");
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
