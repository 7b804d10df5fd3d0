//! `device`: a gridproof home gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use device::actuation::{self, AppliancePlan, Executor, Publish, Timing};
use device::agent::Agent;
use device::config::{self, Gateway};
use device::mqtt::Broker;
use protocol::ids::hex;
use protocol::messages::{DeviceRequest, DeviceResponse, SignedUpdate};
use protocol::net::ValidatorClient;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tracing::{info, warn};

/// A home gateway: commits to its appliances' private parameters, solves each ADMM local step,
/// proves the result in zero knowledge, submits it to every validator, and follows the log as
/// a light client.
#[derive(Parser)]
#[command(name = "device", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the gateway key (mode 0600) if missing, checks every appliance, and prints each
    /// appliance's device id and commitment.
    Init {
        /// The gateway configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Sends the enrollments to every validator and waits until they are committed.
    Enroll {
        /// The gateway configuration.
        #[arg(long)]
        config: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
    },
    /// Follows the market: enrolls, then solves, proves and submits each iteration until the
    /// final schedule is committed; then, if `[mqtt]` is configured, switches the appliances
    /// slot by slot through their outputs. Resumes from the state file after a restart,
    /// mid-market or mid-execution.
    Run {
        /// The gateway configuration.
        #[arg(long)]
        config: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_s: u64,
    },
    /// Runs many virtual appliances (a seeded household mix: EVs, water heaters, batteries, PV,
    /// heat pumps) in one process against the configured cluster, with no MQTT broker: each
    /// enrolls, solves, proves and submits like a real gateway. Prints the aggregate schedule
    /// and prices at the end; `--summary` also writes them as JSON.
    Simulate {
        /// A gateway configuration (its key, validators, genesis, proving keys and state
        /// file are used; its appliances are not).
        #[arg(long)]
        config: PathBuf,
        /// How many virtual appliances.
        #[arg(long, default_value_t = 20)]
        appliances: usize,
        /// Seed of the appliance mix.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_s: u64,
        /// Also write the summary (per-slot aggregate load and prices) to this JSON file.
        #[arg(long)]
        summary: Option<PathBuf>,
    },
    /// Prints the committed schedule and prices.
    Schedule {
        /// The gateway configuration.
        #[arg(long)]
        config: PathBuf,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,device=info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Init { config } => init(&config),
        Command::Enroll { config, timeout_s } => follow(&config, Duration::from_secs(timeout_s), true),
        Command::Run { config, timeout_s } => follow(&config, Duration::from_secs(timeout_s), false),
        Command::Simulate { config, appliances, seed, timeout_s, summary } => simulate(&config, appliances, seed, Duration::from_secs(timeout_s), summary.as_deref()),
        Command::Schedule { config, json } => schedule(&config, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn init(path: &Path) -> Result<(), String> {
    let file = config::read_file(path).map_err(|e| e.to_string())?;
    if !file.key_file.exists() {
        config::create_key(&file.key_file).map_err(|e| e.to_string())?;
        println!("created gateway key {} (mode 0600)", file.key_file.display());
    }
    let gw = Gateway::load(path).map_err(|e| e.to_string())?;
    for a in &gw.appliances {
        let c = prover::format::encode_fr(&a.commitment());
        println!("{:<16} {:<10} device {} commitment {}", a.name, a.opening.params.kind(), hex(&a.id().0), hex(&c));
    }
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

fn follow(path: &Path, within: Duration, enroll_only: bool) -> Result<(), String> {
    let gw = Gateway::load(path).map_err(|e| e.to_string())?;
    run_gateway(gw, within, enroll_only, !enroll_only)
}

/// Follows the market to the final schedule (or, with `enroll_only`, to enrollment), then,
/// if `execute` and a broker is configured, carries the schedule out slot by slot.
fn run_gateway(gw: Gateway, within: Duration, enroll_only: bool, execute: bool) -> Result<(), String> {
    let keys = gw.proving_keys().map_err(|e| e.to_string())?;
    let state_path = gw.file.state_file.clone();
    let state = device::state::load(&state_path).map_err(|e| e.to_string())?;
    let mut agent = Agent::new(gw.clone(), keys, state).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        // The broker first: an unreachable one is a configuration error, found before the market.
        let ha = gw.file.home_assistant.clone();
        let mut broker = match (&gw.file.mqtt, execute) {
            (Some(m), true) => {
                let will = ha.as_ref().map(|h| Publish { topic: actuation::availability_topic(h), payload: "offline".into(), retain: true });
                Some(Broker::connect(m, &gw.client_id(), will, Duration::from_secs(10)).await.map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        if !agent.is_final() {
            follow_market(&mut agent, &gw, within, enroll_only).await?;
            if enroll_only {
                return Ok(());
            }
        } else {
            info!(height = agent.state.height, "final schedule already committed; resuming execution");
        }
        let Some(mut broker) = broker.take() else { return Ok(()) };
        execute_schedule(&mut agent, &gw, &mut broker).await?;
        let offline = ha.as_ref().map(|h| Publish { topic: actuation::availability_topic(h), payload: "offline".into(), retain: true });
        broker.close(offline).await;
        Ok(())
    })
}

/// Enrolls what is not enrolled, then answers every certified entry until the final one.
async fn follow_market(agent: &mut Agent, gw: &Gateway, within: Duration, enroll_only: bool) -> Result<(), String> {
    let state_path = gw.file.state_file.clone();
    protocol::net::install_crypto();
    let endpoint = protocol::net::client_endpoint("0.0.0.0:0".parse().expect("valid")).map_err(|e| e.to_string())?;
    // A validator checks that each message comes from its device's own key: one connection
    // per appliance per validator.
    let mut per_appliance = Vec::new();
    for a in &gw.appliances {
        let conns = connect_all(gw, &endpoint, &a.key).await;
        if conns.is_empty() {
            return Err(format!("no validator reachable (tried {})", gw.file.validators.iter().map(|v| v.addr.to_string()).collect::<Vec<_>>().join(", ")));
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
    let watcher = &per_appliance[0][0];
    let mut rx = watcher.subscribe(0).await.map_err(|e| e.to_string())?;
    let mut rng = ChaCha20Rng::from_entropy();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let item = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Err(format!("timed out after {within:?} at height {}", agent.state.height)),
            Ok(None) => return Err("the validator closed the subscription".into()),
            Ok(Some(item)) => item.map_err(|e| e.to_string())?,
        };
        if item.entry.height < agent.next_height() && item.entry.height != 0 {
            continue;
        }
        let build = agent.on_entry(&item, device::mqtt::now_ms()).map_err(|e| e.to_string())?;
        device::state::save(&state_path, &agent.state).map_err(|e| e.to_string())?;
        let mut updates: Vec<SignedUpdate> = Vec::new();
        if let Some(k) = build {
            updates = agent.prove(k, &mut rng).map_err(|e| e.to_string())?;
            // Persist before sending: a crash now skips this iteration rather than sending twice.
            device::state::save(&state_path, &agent.state).map_err(|e| e.to_string())?;
        }
        if enroll_only && agent.state.enrolled.len() == gw.appliances.len() {
            println!("all {} appliances enrolled (height {})", gw.appliances.len(), agent.state.height);
            return Ok(());
        }
        for u in updates {
            let i = gw.appliances.iter().position(|a| a.id() == u.body.device).expect("own appliance");
            let k = u.body.iteration;
            let ok = submit(&per_appliance, i, DeviceRequest::Update(u)).await;
            info!(appliance = gw.appliances[i].name, iteration = k, accepted_by = ok, "update submitted");
        }
        if agent.is_final() {
            println!("final schedule committed at height {} ({} iterations{})", agent.state.height, agent.state.submitted_through, if agent.state.converged { ", converged" } else { "" });
            endpoint.close(0u32.into(), b"final");
            return Ok(());
        }
    }
}

/// Carries out the committed schedule through the configured outputs, persisting progress.
async fn execute_schedule(agent: &mut Agent, gw: &Gateway, broker: &mut Broker) -> Result<(), String> {
    let spec = &gw.market().market;
    let timing = Timing { start_ms: spec.execution_start_ms, slot_ms: spec.slot_seconds as u64 * 1000 };
    let scale = circuits::fixed::SCALE as f64;
    let prices: Vec<f64> = agent.state.final_prices.iter().flatten().map(|p| *p as f64 / scale).collect();
    let plans: Vec<AppliancePlan> = gw
        .file
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
        println!("schedule already executed");
        return Ok(());
    }
    let now = device::mqtt::now_ms();
    if now < timing.start_ms {
        info!(in_s = (timing.start_ms - now) / 1000, "execution starts at {}", actuation::rfc3339(timing.start_ms));
    }
    let state_path = gw.file.state_file.clone();
    let mut save_error = None;
    device::mqtt::execute(broker, &mut executor, &on_connect, |done| {
        agent.state.executed_until_ms = done;
        if let Err(e) = device::state::save(&state_path, &agent.state) {
            save_error.get_or_insert(e.to_string());
        }
    })
    .await;
    if let Some(e) = save_error {
        return Err(e);
    }
    println!("schedule executed ({} slots)", spec.slots);
    Ok(())
}

fn simulate(path: &Path, n: usize, seed: u64, within: Duration, summary: Option<&Path>) -> Result<(), String> {
    let gw = Gateway::simulated(path, n, seed).map_err(|e| e.to_string())?;
    info!(appliances = n, seed, "simulating virtual appliances");
    run_gateway(gw.clone(), within, false, false)?;
    let state = device::state::load(&gw.file.state_file).map_err(|e| e.to_string())?;
    let scale = circuits::fixed::SCALE as f64;
    let prices: Vec<f64> = state.final_prices.iter().flatten().map(|p| *p as f64 / scale).collect();
    let mut total = vec![0i64; prices.len()];
    for s in state.schedules.values() {
        for (t, w) in s.iter().enumerate().take(total.len()) {
            total[t] += *w as i64;
        }
    }
    println!("{:>5} {:>12} {:>10}", "slot", "load W", "€/MWh");
    for (t, (w, p)) in total.iter().zip(&prices).enumerate() {
        println!("{t:>5} {w:>12} {p:>10.2}");
    }
    if let Some(out) = summary {
        let v = serde_json::json!({
            "appliances": n,
            "seed": seed,
            "iterations": state.submitted_through,
            "converged": state.converged,
            "height": state.height,
            "aggregate_w": total,
            "prices_eur_mwh": prices,
        });
        std::fs::write(out, serde_json::to_string_pretty(&v).expect("json")).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

fn schedule(path: &Path, json: bool) -> Result<(), String> {
    let file = config::read_file(path).map_err(|e| e.to_string())?;
    let state = device::state::load(&file.state_file).map_err(|e| e.to_string())?;
    let Some(prices) = &state.final_prices else { return Err(format!("no final schedule yet ({} is at height {})", file.state_file.display(), state.height)) };
    let scale = circuits::fixed::SCALE as f64;
    if json {
        let v = serde_json::json!({
            "converged": state.converged,
            "prices_eur_mwh": prices.iter().map(|p| *p as f64 / scale).collect::<Vec<_>>(),
            "schedules_w": state.schedules,
        });
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let names: Vec<&String> = state.schedules.keys().collect();
    print!("{:>5} {:>10}", "slot", "€/MWh");
    for n in &names {
        print!(" {:>12}", n);
    }
    println!();
    for (t, p) in prices.iter().enumerate() {
        print!("{t:>5} {:>10.2}", *p as f64 / scale);
        for n in &names {
            print!(" {:>10} W", state.schedules[*n].get(t).copied().unwrap_or(0));
        }
        println!();
    }
    Ok(())
}
