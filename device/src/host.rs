//! A gateway's runtime (the IO edge around [`crate::agent::Agent`]): QUIC connections to the
//! validators (one per appliance per validator, since a validator checks each message against
//! its device's key), the loop that follows the log and submits, and the execution of the
//! final schedule over MQTT. The `device` binary and the local demo both run gateways
//! through [`run_gateway`].

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::entry::{Body, Certified};
use protocol::messages::{DeviceRequest, SignedUpdate};
use protocol::snapshot::{ChainSnapshot, Checkpoint};
use prover::UpdateProvingKey;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use thiserror::Error;
use tracing::{debug, error, info, warn};

use crate::actuation::{self, AppliancePlan, Executor, Publish, Timing};
use crate::agent::{Agent, AgentError};
use crate::config::{ConfigError, Gateway, Overrides};
use crate::home_assistant;
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
    /// Give up after this long (none: run until stopped or `markets` are done).
    pub within: Option<Duration>,
    /// Stop once every bid of the markets registering is enrolled.
    pub enroll_only: bool,
    /// After each final schedule, execute it (if a broker is configured).
    pub execute: bool,
    /// Stop cleanly on SIGINT or SIGTERM ([`RunError::Interrupted`], MQTT closed): a gateway
    /// process sets it; gateways inside a larger process (the demo) leave signals to it.
    pub stop_on_signal: bool,
    /// Stop after this many markets the gateway took part in have ended during this run
    /// (final and, when executing, executed; or sat out); none: follow every market until
    /// stopped.
    pub markets: Option<u32>,
    /// Follow the log from this trusted checkpoint instead of the genesis (a gateway that
    /// started from one keeps following from it without this).
    pub checkpoint: Option<Checkpoint>,
}

/// The checkpoint this gateway follows the log from (docs/protocol.md §6.10), if any: the one
/// given (fetched from the validators unless the saved one is it), or else the one saved by
/// an earlier start. Either is checked against the checkpoint and the genesis validators
/// before use, and a fetched one is saved next to the state file.
async fn start_checkpoint(gw: &Gateway, given: Option<Checkpoint>) -> Result<Option<(Certified, ChainSnapshot)>, RunError> {
    let path = crate::state::checkpoint_path(&gw.file.state_file);
    let saved = crate::state::load_checkpoint(&path)?;
    let Body::Genesis(g) = &gw.genesis.body else { unreachable!("the config checked the genesis") };
    let check = |cp: &Checkpoint, entry: &Certified, state: &[u8]| {
        protocol::snapshot::verify_checkpoint(&gw.genesis.chain_id, &g.validators, cp, entry, state, protocol::net::now_ms())
            .map_err(|e| ConfigError::invalid(&path, format!("checkpoint {cp}: {e}")))
    };
    let checkpoint = match (given, &saved) {
        (Some(cp), _) => cp,
        (None, Some((entry, _))) => Checkpoint { height: entry.entry.height, hash: entry.entry.hash() },
        (None, None) => return Ok(None),
    };
    if let Some((entry, state)) = saved.filter(|(e, _)| e.entry.height == checkpoint.height && e.entry.hash() == checkpoint.hash) {
        let snapshot = check(&checkpoint, &entry, &state)?;
        info!(%checkpoint, "following the log from the saved checkpoint");
        return Ok(Some((entry, snapshot)));
    }
    protocol::net::install_crypto();
    let endpoint = protocol::net::client_endpoint("0.0.0.0:0".parse().expect("valid")).map_err(|e| RunError::Net(e.to_string()))?;
    let validators: Vec<(std::net::SocketAddr, [u8; 32])> = gw.file.validators.iter().map(|v| (v.addr, gw.validator_keys[v.index as usize])).collect();
    info!(%checkpoint, validators = validators.len(), "starting from a checkpoint: fetching its snapshot");
    let fetched =
        protocol::net::fetch_checkpoint(&endpoint, &validators, &ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng), &gw.genesis, &checkpoint, 4)
            .await
            .map_err(|e| RunError::Net(e.to_string()))?;
    endpoint.close(0u32.into(), b"done");
    crate::state::save_checkpoint(&path, &fetched.entry, &fetched.state)?;
    info!(%checkpoint, from = %fetched.from, markets = fetched.snapshot.live_markets().count(), "checkpoint snapshot verified and saved");
    Ok(Some((fetched.entry, fetched.snapshot)))
}

/// Resolves on a shutdown signal if `enabled`, never otherwise.
async fn signal_if(enabled: bool) -> &'static str {
    if enabled {
        protocol::net::shutdown_signal().await
    } else {
        std::future::pending().await
    }
}

/// Follows every market of the chain the gateway can take part in — bids, iterations,
/// final schedule — and, if `execute` and a broker is configured, carries each final
/// schedule out slot by slot while it already schedules the next market. Resumes from the
/// state file: mid-market (no second submission) or mid-execution.
pub async fn run_gateway(gw: &Gateway, opts: RunOptions) -> Result<(), RunError> {
    run_gateway_with_keys(gw, gw.proving_keys()?, opts).await
}

/// [`run_gateway`] with proving keys already loaded: a host that runs several gateways in one
/// process (the demo) decodes each key file once instead of once per gateway, so a gateway
/// enrolls within milliseconds of starting. A market whose T has no key here is sat out.
pub async fn run_gateway_with_keys(gw: &Gateway, keys: BTreeMap<(u8, usize), UpdateProvingKey>, opts: RunOptions) -> Result<(), RunError> {
    let unattested: Vec<&str> = gw.appliances.iter().filter(|a| !a.is_attested()).map(|a| a.name.as_str()).collect();
    if unattested.len() == gw.appliances.len() {
        return Err(RunError::Unattested { names: unattested.join(", "), file: gw.file.attestations_file.display().to_string() });
    }
    for name in &unattested {
        warn!(appliance = name, file = %gw.file.attestations_file.display(), "no attestation: this appliance is not enrolled (send `device init`'s request to the enrollment authority)");
    }
    let state = crate::state::load(&gw.file.state_file)?;
    let mut agent = match start_checkpoint(gw, opts.checkpoint).await? {
        None => Agent::new(gw.clone(), keys, state)?,
        Some((entry, snapshot)) => Agent::at_checkpoint(gw.clone(), keys, state, &entry, &snapshot, protocol::net::now_ms())?,
    };
    // The broker first: an unreachable one is a configuration error, found before the market.
    let ha = gw.file.home_assistant.clone();
    let offline = ha.as_ref().map(|h| Publish { topic: home_assistant::availability_topic(h), payload: "offline".into(), retain: true });
    let broker = match (&gw.file.mqtt, opts.execute && !opts.enroll_only) {
        (Some(m), true) => Some(Broker::connect(m, &gw.client_id(), offline.clone(), Duration::from_secs(10)).await?),
        _ => None,
    };
    let mut execution = broker.map(|b| Execution::start(b, ha, offline, gw.client_id()));
    // Meters read over MQTT: their own subscription on the broker.
    let topics: Vec<String> = agent.meter_topics().into_iter().map(|(_, t)| t).collect();
    let mut meters = match (&gw.file.mqtt, topics.is_empty() || opts.enroll_only) {
        (Some(m), false) => Some(crate::mqtt::subscribe(m, &format!("{}-meter", gw.client_id()), topics)?),
        (None, false) => {
            warn!("appliances have MQTT meters but gateway.toml has no [mqtt]: they send no readings");
            None
        }
        _ => None,
    };
    let result = tokio::select! {
        r = follow(&mut agent, gw, opts, execution.as_mut(), meters.as_mut()) => r,
        signal = signal_if(opts.stop_on_signal) => {
            info!(height = agent.state.height, "{signal}: stopping; the state file is saved and `run` resumes");
            Err(RunError::Interrupted(signal))
        }
    };
    if let Some(e) = execution {
        // A clean close either way: the last publications flushed, "offline" published.
        e.stop().await;
    }
    result
}

/// The execution edge: a task that owns the MQTT connection and carries out final schedules
/// one after the other, reporting how far it got; with Home Assistant, the market sensor is
/// published on the same connection as the log advances.
struct Execution {
    /// Where the market sensor goes: the connection and the node.
    status: Option<(crate::mqtt::Publisher, home_assistant::HomeAssistantFile)>,
    /// The market sensor's last published state and when (published again when it changes:
    /// at once for another market or phase, else at most once a second, so that replaying a
    /// long log does not flood the connection's queue).
    last_status: Option<(crate::agent::MarketStatus, tokio::time::Instant)>,
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
    progress: tokio::sync::mpsc::UnboundedReceiver<Progress>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// Markets handed to the task.
    queued: std::collections::BTreeSet<u64>,
}

/// One final schedule to carry out.
struct Job {
    market_id: u64,
    /// The market's own execution clock (ignored when compressed).
    timing: Timing,
    plans: Vec<AppliancePlan>,
    prices: Vec<f64>,
    done_until_ms: u64,
}

/// How far execution got.
enum Progress {
    /// Every command due at or before `done_ms` is published.
    At { market_id: u64, done_ms: u64 },
    /// The whole schedule is carried out.
    Done { market_id: u64, slots: usize },
}

impl Execution {
    /// Runs the queued schedules one after the other (`src`: the MQTT client id, which Shelly
    /// commands name); a stop while one executes switches its outputs to their safe state
    /// before the connection closes.
    fn start(mut broker: Broker, ha: Option<home_assistant::HomeAssistantFile>, offline: Option<Publish>, src: String) -> Execution {
        // The gateway's own sensors exist from the start, not from the first schedule.
        if let Some(h) = &ha {
            for p in home_assistant::discovery(h, &[]) {
                broker.publish(&p);
            }
            broker.publish(&Publish { topic: home_assistant::availability_topic(h), payload: "online".into(), retain: true });
        }
        let status = ha.clone().map(|h| (broker.publisher(), h));
        let (jobs, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (progress_tx, progress) = tokio::sync::mpsc::unbounded_channel();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            // Final schedules waiting, earliest execution first (on each market's own clock).
            let mut pending: BTreeMap<(u64, u64), Job> = BTreeMap::new();
            let order = |j: &Job| (j.timing.start_ms, j.market_id);
            let mut open = true;
            'jobs: loop {
                let Some((_, job)) = pending.pop_first() else {
                    if !open {
                        break;
                    }
                    tokio::select! {
                        j = rx.recv() => match j {
                            Some(j) => {
                                pending.insert(order(&j), j);
                            }
                            None => open = false,
                        },
                        _ = stopped.changed() => break,
                    }
                    continue;
                };
                let timing = job.timing;
                for p in &job.plans {
                    if let Some(relay) = p.output.as_ref().and_then(|o| o.relay()).filter(|r| r.clamped(timing.slot_ms)) {
                        let (on_ms, off_ms) = relay.min_times_ms(timing.slot_ms);
                        warn!(
                            market = job.market_id,
                            appliance = p.name,
                            min_on_s = relay.min_on_s,
                            min_off_s = relay.min_off_s,
                            slot_s = timing.slot_ms / 1000,
                            "a minimum on/off time is longer than half a slot: using {} s on, {} s off",
                            on_ms / 1000,
                            off_ms / 1000
                        );
                    }
                }
                let mut on_connect = crate::mqtt::OnConnect::default();
                if let Some(h) = &ha {
                    let plan = home_assistant::PlanInfo { market_id: job.market_id, timing, prices: &job.prices };
                    on_connect.before = home_assistant::announce(h, plan, &job.plans);
                    on_connect.after.push(Publish { topic: home_assistant::availability_topic(h), payload: "online".into(), retain: true });
                }
                let slots = job.plans.iter().map(|p| p.schedule.len()).max().unwrap_or(0);
                let mut executor = Executor::new(actuation::timeline(timing, &job.plans, &job.prices, ha.as_ref(), &src), job.done_until_ms);
                let now = protocol::net::now_ms();
                if job.done_until_ms > 0 && !executor.is_done() {
                    info!(market = job.market_id, "resuming execution");
                } else if now < timing.start_ms {
                    info!(market = job.market_id, in_s = (timing.start_ms - now) / 1000, "execution starts at {}", actuation::rfc3339(timing.start_ms));
                }
                let market_id = job.market_id;
                // One run of the executor per job: a job arriving meanwhile is queued without
                // interrupting it.
                let progress_tx = &progress_tx;
                let stopping = {
                    let mut feedback = crate::feedback::Feedback::new(&job.plans, &src, ha.as_ref());
                    let run = crate::mqtt::execute(&mut broker, &mut executor, &on_connect, &mut feedback, move |done_ms| {
                        let _ = progress_tx.send(Progress::At { market_id, done_ms });
                    });
                    tokio::pin!(run);
                    loop {
                        tokio::select! {
                        _ = &mut run => break false,
                        _ = stopped.changed() => break true,
                        j = rx.recv(), if open => match j {
                            // A schedule that executes earlier, final later: it goes first
                            // while this one has not started.
                            Some(j) if j.timing.start_ms < timing.start_ms && protocol::net::now_ms() < timing.start_ms => {
                                info!(market = market_id, before = j.market_id, "execution waits for an earlier market's");
                                pending.insert(order(&j), j);
                                pending.insert(order(&job), job);
                                continue 'jobs;
                            }
                            Some(j) => {
                                pending.insert(order(&j), j);
                            }
                            None => open = false,
                        },
                        }
                    }
                };
                if stopping {
                    // Stopped mid-schedule: no output stays on without the gateway.
                    let safe = actuation::safe_state(&job.plans, &src);
                    if !safe.is_empty() {
                        info!(market = market_id, outputs = safe.len(), "stopping mid-schedule: outputs switched to their safe state");
                    }
                    for p in &safe {
                        broker.publish(p);
                    }
                    break 'jobs;
                }
                let _ = progress_tx.send(Progress::Done { market_id, slots });
            }
            broker.close(offline).await;
        });
        Execution { status, last_status: None, jobs, progress, stop, task, queued: Default::default() }
    }

    /// Publishes the market sensor's state if it changed.
    fn status(&mut self, agent: &Agent) {
        let Some((publisher, ha)) = &self.status else { return };
        let Some(status) = agent.market_status() else { return };
        let now = tokio::time::Instant::now();
        let due = match &self.last_status {
            None => true,
            Some((last, at)) => {
                (last.market, last.phase) != (status.market, status.phase) || (*last != status && now.duration_since(*at) >= Duration::from_secs(1))
            }
        };
        if !due {
            return;
        }
        debug!(market = status.market, phase = status.phase.as_str(), iteration = status.iteration, "market status");
        for p in home_assistant::market_states(ha, &status) {
            publisher.publish(&p);
        }
        self.last_status = Some((status, now));
    }

    /// Hands market `id`'s final schedule to the task (once).
    fn queue(&mut self, agent: &Agent, id: u64) {
        let (Some(spec), Some(m)) = (agent.spec(id), agent.state.markets.get(&id)) else { return };
        if !self.queued.insert(id) {
            return;
        }
        let plans = agent
            .gateway()
            .appliances
            .iter()
            .filter(|a| m.schedules.contains_key(&a.name))
            .map(|a| AppliancePlan { name: a.name.clone(), output: a.output.clone(), schedule: m.schedules[&a.name].clone() })
            .collect();
        let timing = Timing { start_ms: spec.execution_start_ms, slot_ms: spec.slot_ms() };
        let _ = self.jobs.send(Job { market_id: id, timing, plans, prices: m.prices_eur_mwh(), done_until_ms: m.executed_until_ms });
    }

    /// Stops the task (mid-schedule if need be) and closes the broker cleanly.
    async fn stop(self) {
        let _ = self.stop.send(true);
        drop(self.jobs);
        let _ = self.task.await;
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

/// Follows the log and takes part in every market the agent bids in, until `opts.markets`
/// of them have ended (or, with `enroll_only`, until every bid of the markets registering is
/// enrolled); execution progress from `execution` is persisted as it comes.
///
/// The log is followed through one validator at a time. The gateway moves to the next one
/// when the stream ends or fails, when the light client refuses an entry it served (a forged
/// update body, a bad certificate), or when an entry is [`stall_grace_ms`] past its due time.
/// Connections that are gone are dialled again with backoff; every submission goes to all
/// validators at once, each with a deadline (the iteration's). Bids and withdrawals are
/// decided again (the overrides file re-read) and sent each enrollment interval while a
/// market registers. A market in which not one of the gateway's updates was accepted is
/// logged as an error; the run then ends with [`RunError::NothingAccepted`].
async fn follow(
    agent: &mut Agent,
    gw: &Gateway,
    opts: RunOptions,
    mut execution: Option<&mut Execution>,
    mut meters: Option<&mut tokio::sync::mpsc::Receiver<(String, Vec<u8>, u64)>>,
) -> Result<(), RunError> {
    let state_path = gw.file.state_file.clone();
    protocol::net::install_crypto();
    let endpoint = protocol::net::client_endpoint("0.0.0.0:0".parse().expect("valid")).map_err(|e| RunError::Net(e.to_string()))?;
    let mut links = Links::new(gw, endpoint);
    if links.dial_all().await == 0 {
        return Err(RunError::Unreachable(gw.file.validators.iter().map(|v| v.addr.to_string()).collect::<Vec<_>>().join(", ")));
    }
    let names: Vec<String> = gw.appliances.iter().map(|a| a.name.clone()).collect();
    let load_overrides = || Overrides::load(&gw.file.overrides_file, &names);
    let mut overrides = load_overrides()?;
    let mut overrides_stamp = modified(&gw.file.overrides_file);
    agent.plan(&overrides, protocol::net::now_ms());
    let ended_at_start: std::collections::BTreeSet<u64> =
        agent.state.markets.iter().filter(|(_, m)| ended(m, opts, execution.is_some())).map(|(id, _)| *id).collect();
    let overall = opts.within.map(|w| tokio::time::Instant::now() + w);
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let mut summaries: BTreeMap<u64, MarketSummary> = BTreeMap::new();
    let mut total = MarketSummary::default();
    let mut bids_sent_at: Option<u64> = None;
    // Whether a market this gateway bids in registered during this run (`enroll_only` waits
    // for one).
    let mut saw_registration = false;
    let mut rng = ChaCha20Rng::from_entropy();
    let mut feed = Feed::open(&mut links, 0, 0).await;
    // Stall switches since the last accepted entry: when the whole cluster is slow (not one
    // validator), the wait doubles with each, up to 16 graces, instead of cycling every grace.
    let mut stalls = 0u32;
    // The open iteration's updates, sent once more two thirds into its window: a validator
    // that restarted after the first submission (its pool is in memory) and proposes the
    // iteration would otherwise leave them out.
    // One per market: iterations of two markets may interleave.
    let mut resend: BTreeMap<u64, (tokio::time::Instant, Vec<(usize, DeviceRequest)>, tokio::time::Instant)> = BTreeMap::new();
    // Meter readings on their way (one round at a time).
    let mut meter_round: Option<MeterRound> = None;
    loop {
        // Bids not yet in the log, and withdrawals, to every validator, again each interval
        // while registration is open: validators do not share their pools, and only the
        // proposer's goes into a batch, so one that accepted is not enough (an identical
        // re-send is accepted idempotently).
        // An edit of the overrides file takes effect within a second.
        let now = protocol::net::now_ms();
        if let Some(interval) = agent.enrollment_interval_ms(now) {
            saw_registration = true;
            let stamp = modified(&gw.file.overrides_file);
            if stamp != overrides_stamp {
                overrides_stamp = stamp;
                bids_sent_at = None;
            }
            if bids_sent_at.is_none_or(|t| now >= t + interval) {
                match load_overrides() {
                    Ok(o) => overrides = o,
                    Err(e) => warn!("{e}; keeping the overrides read before"),
                }
                agent.plan(&overrides, now);
                send_bids(agent, gw, &mut links, now).await;
                crate::state::save(&state_path, &agent.state)?;
                bids_sent_at = Some(now);
            }
        }
        // Wait for the next entry until it is overdue (or the run's time is up).
        let grace = current_grace(agent);
        let patience = grace << stalls.min(4);
        let overdue = agent.next_entry_due_ms().map(|t| t + patience);
        let now = protocol::net::now_ms();
        let stall_at = match overdue {
            Some(overdue) => (tokio::time::Instant::now() + Duration::from_millis(overdue.saturating_sub(now).min(3_600_000)))
                .max(feed.since + Duration::from_millis(patience)),
            None => far,
        };
        // While a market registers, wake up for the next bid interval and to look at the
        // overrides file.
        let bids_at = agent
            .enrollment_interval_ms(now)
            .map_or(far, |i| tokio::time::Instant::now() + Duration::from_millis((bids_sent_at.unwrap_or(0) + i).saturating_sub(now).min(OVERRIDES_POLL_MS)));
        // The next metered slot's end, for markets that settle (once the last round is in).
        let meter_next = if meter_round.is_none() { agent.next_reading_ms(now) } else { None };
        let meter_at = meter_next.map_or(far, |t| tokio::time::Instant::now() + Duration::from_millis(t.saturating_sub(now)));
        let next_resend = resend.iter().min_by_key(|(_, r)| r.0).map(|(id, r)| (*id, r.0));
        let resend_at = next_resend.map_or(far, |r| r.1);
        let end = overall.unwrap_or(far);
        let item = match feed.rx.as_mut() {
            Some(rx) => tokio::select! {
                item = rx.recv() => Some(item),
                _ = tokio::time::sleep_until(stall_at.min(end)) => None,
                _ = tokio::time::sleep_until(bids_at) => continue,
                p = async {
                    match execution.as_mut() {
                        Some(e) => e.progress.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(p) = p else { return Err(RunError::Net("the MQTT execution task stopped".into())) };
                    on_progress(agent, p)?;
                    if let Some(e) = execution.as_mut() {
                        e.status(agent);
                    }
                    crate::state::save(&state_path, &agent.state)?;
                    if run_is_over(agent, opts, execution.is_some(), &ended_at_start) {
                        return finish(&links, &summaries);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(meter_at), if meter_next.is_some() => {
                    meter_round = start_readings(agent, &mut links, &state_path)?;
                    continue;
                }
                answer = async {
                    match meter_round.as_mut() {
                        Some(m) => m.round.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match (answer, meter_round.take()) {
                        (Some(a), Some(mut m)) => {
                            links.file_answer(&mut m.round, a);
                            meter_round = Some(m);
                        }
                        (_, Some(m)) => readings_sent(agent, m),
                        (_, None) => {}
                    }
                    continue;
                }
                msg = async {
                    match meters.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match msg {
                        Some((topic, payload, at_ms)) => agent.on_meter_message(&topic, &payload, at_ms),
                        None => meters = None,
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(resend_at), if next_resend.is_some() => {
                    let (_, requests, deadline) = resend.remove(&next_resend.expect("checked").0).expect("checked");
                    let outcomes = links.submit_all(requests, deadline).await;
                    let newly: usize = outcomes.iter().map(|o| o.accepted).sum();
                    debug!(newly_accepted_by = newly, "updates sent again");
                    continue;
                }
            },
            None => {
                tokio::time::sleep_until((tokio::time::Instant::now() + Duration::from_millis(500)).min(end)).await;
                None
            }
        };
        if overall.is_some_and(|o| tokio::time::Instant::now() >= o) {
            links.close();
            return Err(RunError::Timeout { within: opts.within.unwrap_or_default(), height: agent.state.height });
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
                total.switches += 1;
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
                total.entries_refused += 1;
                total.switches += 1;
                let next = (feed.turn + 1) % links.validator_count();
                feed = Feed::open(&mut links, next, agent.next_height()).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        feed.since = tokio::time::Instant::now();
        stalls = 0;
        if let Some(e) = execution.as_mut() {
            e.status(agent);
        }
        if matches!(c.entry.body, protocol::entry::Body::Open(_)) {
            // A new market: decide and send its bids at once.
            bids_sent_at = None;
            agent.plan(&overrides, protocol::net::now_ms());
        }
        if matches!(c.entry.body, protocol::entry::Body::Enrollment(_)) && !agent.withdrawals(protocol::net::now_ms()).is_empty() {
            // A bid whose day turned off is in the log now: withdraw it at once, not an
            // interval later (that may be after the close).
            bids_sent_at = None;
        }
        crate::state::save(&state_path, &agent.state)?;
        if opts.enroll_only && saw_registration && (agent.all_enrolled() || build.is_some()) {
            // Every bid is in, or registration is over (iteration 1 opened).
            let enrolled: usize = agent.state.markets.values().map(|m| m.enrolled.len()).sum();
            info!(appliances = enrolled, height = agent.state.height, "enrolled");
            links.close();
            return Ok(());
        }
        let mut updates: Vec<SignedUpdate> = Vec::new();
        if let Some((market_id, k)) = build {
            // Proving takes the CPU for a while: off the async workers, so the QUIC
            // connections (keep-alives, the subscription) stay serviced meanwhile.
            updates = tokio::task::block_in_place(|| agent.prove(market_id, k, &mut rng))?;
            // Persist before sending: a crash now skips this iteration rather than sending twice.
            crate::state::save(&state_path, &agent.state)?;
        }
        if let Some(u) = updates.first() {
            let (market_id, k) = (u.body.market_id, u.body.iteration);
            let spec = agent.spec(market_id).expect("a market the agent proved in").clone();
            let deadline_ms = protocol::clock::ClockConfig::from_spec(&spec).deadline(k);
            let left = Duration::from_millis(deadline_ms.saturating_sub(protocol::net::now_ms()));
            let requests: Vec<(usize, DeviceRequest)> = updates
                .into_iter()
                .map(|u| (gw.appliances.iter().position(|a| a.id() == u.body.device).expect("own appliance"), DeviceRequest::Update(u)))
                .collect();
            let names: Vec<usize> = requests.iter().map(|r| r.0).collect();
            let deadline = tokio::time::Instant::now() + left;
            let again = deadline.checked_sub(Duration::from_millis(stall_grace_ms(spec.iteration_ms))).filter(|t| *t > tokio::time::Instant::now());
            match again {
                Some(t) => resend.insert(market_id, (t, requests.clone(), deadline)),
                None => resend.remove(&market_id),
            };
            let outcomes = links.submit_all(requests, deadline).await;
            let summary = summaries.entry(market_id).or_default();
            for (i, o) in names.into_iter().zip(outcomes) {
                summary.updates_built += 1;
                let name = &gw.appliances[i].name;
                if o.accepted > 0 {
                    summary.updates_accepted += 1;
                    info!(market = market_id, appliance = name, iteration = k, accepted_by = o.accepted, "update submitted");
                } else {
                    warn!(market = market_id, appliance = name, iteration = k, refused = ?o.refused, unreachable = o.failed, "update accepted by no validator");
                }
            }
        }
        if let protocol::entry::Body::Final(f) = &c.entry.body {
            if let Some(m) = agent.state.markets.get(&f.market_id) {
                let s = summaries.get(&f.market_id).cloned().unwrap_or_default();
                info!(
                    market = f.market_id,
                    height = agent.state.height,
                    iterations = m.submitted_through,
                    converged = m.converged,
                    updates_built = s.updates_built,
                    updates_accepted = s.updates_accepted,
                    entries_refused = total.entries_refused,
                    switches = total.switches,
                    "final schedule committed"
                );
                if s.updates_built > 0 && s.updates_accepted == 0 {
                    error!(market = f.market_id, built = s.updates_built, "not one update of this gateway was accepted in this market");
                }
            }
        }
        // Final schedules to carry out (also those replayed after a restart).
        for id in agent.executable() {
            match execution.as_mut() {
                Some(e) => e.queue(agent, id),
                None => {
                    let m = agent.state.markets.get_mut(&id).expect("executable");
                    m.executed = true;
                }
            }
        }
        crate::state::save(&state_path, &agent.state)?;
        if run_is_over(agent, opts, execution.is_some(), &ended_at_start) {
            return finish(&links, &summaries);
        }
    }
}

/// How often the overrides file is looked at while a market registers, ms.
pub const OVERRIDES_POLL_MS: u64 = 1000;

/// When a file was last modified (`None`: it does not exist).
fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The stall grace of the markets the gateway is in (the shortest iteration window's).
fn current_grace(agent: &Agent) -> u64 {
    agent.state.markets.keys().filter_map(|id| agent.spec(*id)).map(|s| stall_grace_ms(s.iteration_ms)).min().unwrap_or(500)
}

/// Whether market `m` has ended for the gateway: sat out, or final and (when executing)
/// executed, and settled if it settles.
fn ended(m: &crate::agent::MarketState, opts: RunOptions, executing: bool) -> bool {
    m.sat_out() || (m.is_final() && (m.executed || !(executing && opts.execute)) && (!m.settles || !m.bills.is_empty()))
}

/// A round of meter readings on its way to the validators, in the background of the run
/// loop (a slow validator delays no proof of another market).
struct MeterRound {
    round: crate::links::Round,
    /// Per request: the appliance and how many readings it carries.
    sent: Vec<(usize, usize)>,
}

/// Reads and signs the meter readings due now ([`Agent::due_readings`]), persisting first,
/// and starts sending them to every validator (a reading is read once; one that no
/// committed `Meter` entry holds yet is sent again a while later, until the meter deadline,
/// after which validators settle its slot by the missing-reading default).
fn start_readings(agent: &mut Agent, links: &mut Links, state_path: &std::path::Path) -> Result<Option<MeterRound>, RunError> {
    let now = protocol::net::now_ms();
    let due = agent.due_readings(now);
    crate::state::save(state_path, &agent.state)?;
    // One round to every validator for every appliance at once (the deadline: the earliest).
    let Some(deadline_ms) = due.iter().map(|d| d.2).min() else { return Ok(None) };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now));
    let sent = due.iter().map(|(i, r, _)| (*i, if let DeviceRequest::Meter(list) = r { list.len() } else { 0 })).collect();
    let round = links.start(due.into_iter().map(|(i, r, _)| (i, r)).collect(), deadline);
    Ok(Some(MeterRound { round, sent }))
}

/// Logs how a finished round of readings went, per appliance.
fn readings_sent(agent: &Agent, m: MeterRound) {
    for ((i, slots), outcome) in m.sent.into_iter().zip(m.round.outcomes) {
        let name = &agent.gateway().appliances[i].name;
        if outcome.accepted > 0 {
            info!(appliance = name, slots, accepted_by = outcome.accepted, "meter readings submitted");
        } else {
            warn!(appliance = name, slots, refused = ?outcome.refused, unreachable = outcome.failed, "meter readings accepted by no validator");
        }
    }
}

/// Whether `opts.markets` markets have ended during this run.
fn run_is_over(agent: &Agent, opts: RunOptions, executing: bool, ended_at_start: &std::collections::BTreeSet<u64>) -> bool {
    let Some(n) = opts.markets else { return false };
    let ended_now = agent.state.markets.iter().filter(|(id, m)| !ended_at_start.contains(id) && ended(m, opts, executing)).count();
    ended_now >= n as usize
}

/// Applies execution progress to the state.
fn on_progress(agent: &mut Agent, p: Progress) -> Result<(), RunError> {
    match p {
        Progress::At { market_id, done_ms } => {
            if let Some(m) = agent.state.markets.get_mut(&market_id) {
                m.executed_until_ms = m.executed_until_ms.max(done_ms);
            }
        }
        Progress::Done { market_id, slots } => {
            if let Some(m) = agent.state.markets.get_mut(&market_id) {
                m.executed = true;
            }
            info!(market = market_id, slots, "schedule executed");
        }
    }
    Ok(())
}

/// Ends the run: connections closed; an error if a market had not one update accepted.
fn finish(links: &Links, summaries: &BTreeMap<u64, MarketSummary>) -> Result<(), RunError> {
    links.close();
    match summaries.values().find(|s| s.updates_built > 0 && s.updates_accepted == 0) {
        Some(s) => Err(RunError::NothingAccepted { built: s.updates_built }),
        None => Ok(()),
    }
}

/// Sends the bids (enrollments) not yet in the log and the withdrawals of appliances whose
/// day turned off, to every validator.
async fn send_bids(agent: &mut Agent, gw: &Gateway, links: &mut Links, now_ms: u64) {
    let position = |d: protocol::ids::DeviceId| gw.appliances.iter().position(|a| a.id() == d);
    let mut requests: Vec<(usize, DeviceRequest, &'static str)> = Vec::new();
    for e in agent.enrollments(now_ms) {
        if let Some(i) = position(e.body.device) {
            requests.push((i, DeviceRequest::Enroll(e), "bid"));
        }
    }
    for w in agent.withdrawals(now_ms) {
        if let Some(i) = position(w.body.device) {
            requests.push((i, DeviceRequest::Withdraw(w), "withdrawal"));
        }
    }
    if requests.is_empty() {
        return;
    }
    let what: Vec<(usize, &'static str)> = requests.iter().map(|r| (r.0, r.2)).collect();
    let outcomes = links.submit_all(requests.into_iter().map(|(i, r, _)| (i, r)).collect(), tokio::time::Instant::now() + crate::links::REQUEST_TIMEOUT).await;
    for ((i, kind), o) in what.into_iter().zip(outcomes) {
        if o.accepted > 0 {
            info!(appliance = gw.appliances[i].name, accepted_by = o.accepted, "{kind} sent");
        } else {
            warn!(appliance = gw.appliances[i].name, refused = ?o.refused, unreachable = o.failed, "{kind} accepted by no validator");
        }
    }
}
