//! `device`: a gridproof home gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use device::config::{self, Gateway};
use device::host::RunOptions;
use protocol::ids::hex;
use tracing::info;

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
    /// Creates the gateway key (mode 0600) if missing, checks every appliance, prints each
    /// appliance's device id, commitment and attestation status, and writes
    /// `<config>.attestation-request.json` next to the configuration: what the enrollment authority
    /// (the grid operator, an installer) signs with `verifier-node attest`.
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
    /// Takes part in every market of the chain, day after day: when a market opens (the
    /// genesis market, then each one an operator opens), bids each attested appliance with
    /// that day's parameters (the weekly pattern in `[appliances.week]`, replaced by the
    /// overrides file, re-read while registration is open; a day "off" withdraws the bid),
    /// then solves, proves and submits each iteration until the final schedule is committed;
    /// if `[mqtt]` is configured, switches the appliances slot by slot through their outputs
    /// while it already schedules the next market. Resumes from the state file after a
    /// restart, mid-market or mid-execution. Runs until stopped (SIGINT/SIGTERM) unless
    /// `--markets` or `--timeout-s` is given.
    Run {
        /// The gateway configuration.
        #[arg(long)]
        config: PathBuf,
        /// Stop after this many markets this gateway took part in have ended (final and
        /// executed, or sat out).
        #[arg(long)]
        markets: Option<u32>,
        /// Give up after this many seconds.
        #[arg(long)]
        timeout_s: Option<u64>,
        /// Follow the log from this trusted checkpoint, `<height>:<entry hash>` (`GET
        /// /checkpoint` on a validator you trust prints one), instead of from the genesis: the
        /// snapshot there is fetched from the validators, checked against the checkpoint and
        /// the validators' certificate, and saved next to the state file, which later runs
        /// follow from without this flag.
        #[arg(long)]
        checkpoint: Option<protocol::snapshot::Checkpoint>,
    },
    /// Runs many virtual appliances (a seeded household mix: EVs, water heaters, batteries, PV,
    /// heat pumps) in one process against the configured cluster, with no MQTT broker: each
    /// enrolls, solves, proves and submits like a real gateway. In a market that settles, each
    /// has a simulated meter: it submits a reading after every slot (the schedule, off by up
    /// to `--meter-deviation-pct`) and the simulation waits for the settlement. Prints the
    /// aggregate schedule and prices (and the bills) at the end; `--summary` also writes them
    /// as JSON.
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
        /// The enrollment authority's key file (a development cluster's `authority.key` from
        /// `verifier-node init`): virtual appliances have no installer, so the simulation
        /// attests them itself.
        #[arg(long)]
        authority_key: PathBuf,
        /// Simulated meters: the largest deviation of a reading from the schedule, %.
        #[arg(long, default_value_t = 5.0)]
        meter_deviation_pct: f64,
        /// Simulated meters: the probability that a slot has no reading, %.
        #[arg(long, default_value_t = 0.0)]
        meter_dropout_pct: f64,
    },
    /// Prints a committed schedule and its prices: the latest market's, or `--market`'s.
    Schedule {
        /// The gateway configuration.
        #[arg(long)]
        config: PathBuf,
        /// The market id (default: the latest with a final schedule).
        #[arg(long)]
        market: Option<u64>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prints an appliance's bill in a settled market, per slot and in total (µ€ shown as €):
    /// the energy billed at the slot's price, and the imbalance charge on what was metered off
    /// schedule, as the market's settlement entry committed it.
    Bill {
        /// The gateway configuration.
        #[arg(long)]
        config: PathBuf,
        /// The market id (default: the latest settled one).
        #[arg(long)]
        market: Option<u64>,
        /// Only this appliance (default: every one with a bill).
        #[arg(long)]
        appliance: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,device=info".into()).add_directive(circuits::QUIET_GADGET_SPANS.parse().expect("a valid directive")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Init { config } => init(&config),
        Command::Enroll { config, timeout_s } => follow(&config, Some(Duration::from_secs(timeout_s)), true, None, None),
        Command::Run { config, markets, timeout_s, checkpoint } => follow(&config, timeout_s.map(Duration::from_secs), false, markets, checkpoint),
        Command::Simulate { config, appliances, seed, timeout_s, summary, authority_key, meter_deviation_pct, meter_dropout_pct } => {
            let meter = device::metering::MeterFile::Simulated { deviation_pct: meter_deviation_pct, dropout_pct: meter_dropout_pct, seed, outage: None };
            simulate(&config, appliances, seed, Duration::from_secs(timeout_s), summary.as_deref(), &authority_key, meter)
        }
        Command::Schedule { config, market, json } => schedule(&config, market, json),
        Command::Bill { config, market, appliance, json } => bill(&config, market, appliance.as_deref(), json),
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
        let status = if a.is_attested() { "attested" } else { "not attested" };
        println!("{:<16} {:<10} device {} commitment {} {status}", a.name, a.opening.params.kind(), hex(&a.id().0), hex(&c));
    }
    let meter = gw.file.meter_point.clone().unwrap_or_default();
    if meter.is_empty() {
        eprintln!("note: no meter_point in {}; the authority fills it in, or add it and run init again", path.display());
    }
    let requests: Vec<_> = gw.appliances.iter().map(|a| a.attestation_request(&meter)).collect();
    let out = path.with_extension("attestation-request.json");
    std::fs::write(&out, serde_json::to_string_pretty(&requests).expect("requests serialize")).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("attestation request for {} appliances written to {}", requests.len(), out.display());
    Ok(())
}

fn follow(path: &Path, within: Option<Duration>, enroll_only: bool, markets: Option<u32>, checkpoint: Option<protocol::snapshot::Checkpoint>) -> Result<(), String> {
    let gw = Gateway::load(path).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let opts = RunOptions { within, enroll_only, execute: !enroll_only, stop_on_signal: true, markets, checkpoint };
    match rt.block_on(device::host::run_gateway(&gw, opts)) {
        Err(device::host::RunError::Interrupted(signal)) => {
            eprintln!("stopped by {signal}; the state file is saved and `device run` resumes");
            return Ok(());
        }
        r => r.map_err(|e| e.to_string())?,
    }
    let state = device::state::load(&gw.file.state_file).map_err(|e| e.to_string())?;
    for (id, m) in &state.markets {
        if enroll_only {
            if !m.registration_over() {
                println!("market {id}: {} of {} bids enrolled (height {})", m.enrolled.len(), m.bids.len(), state.height);
            }
            continue;
        }
        if m.is_final() {
            println!(
                "market {id}: final schedule committed at height {} ({} iterations{}){}",
                m.final_height,
                m.submitted_through,
                if m.converged { ", converged" } else { "" },
                if m.executed && gw.file.mqtt.is_some() {
                    format!(", schedule executed ({} slots)", m.schedules.values().map(|s| s.len()).max().unwrap_or(0))
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}

fn simulate(path: &Path, n: usize, seed: u64, within: Duration, summary: Option<&Path>, authority_key: &Path, meter: device::metering::MeterFile) -> Result<(), String> {
    meter.check().map_err(|e| format!("--meter-deviation-pct/--meter-dropout-pct: {e}"))?;
    // The file needs no appliances and no `device init`: the key is made here if missing.
    let file = config::read_file(path).map_err(|e| e.to_string())?;
    if !file.key_file.exists() {
        config::create_key(&file.key_file).map_err(|e| e.to_string())?;
        println!("created gateway key {} (mode 0600)", file.key_file.display());
    }
    let mut gw = Gateway::simulated(path, n, seed, Some(meter)).map_err(|e| e.to_string())?;
    let authority = device::config::read_key(authority_key).map_err(|e| e.to_string())?;
    gw.self_attest(&authority).map_err(|e| e.to_string())?;
    info!(appliances = n, seed, "simulating virtual appliances");
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let opts = RunOptions { within: Some(within), enroll_only: false, execute: false, stop_on_signal: true, markets: Some(1), checkpoint: None };
    rt.block_on(device::host::run_gateway(&gw, opts)).map_err(|e| e.to_string())?;
    let state = device::state::load(&gw.file.state_file).map_err(|e| e.to_string())?;
    let (market_id, state) = state.last_final().ok_or("no market reached a final schedule")?;
    let prices = state.prices_eur_mwh();
    let mut total = protocol::central::total_load(&state.schedules.values().cloned().collect::<Vec<_>>());
    total.resize(prices.len(), 0);
    println!("{:>5} {:>12} {:>10}", "slot", "load W", "€/MWh");
    for (t, (w, p)) in total.iter().zip(&prices).enumerate() {
        println!("{t:>5} {w:>12} {p:>10.2}");
    }
    let billed: i128 = state.bills.values().map(|b| b.total() as i128).sum();
    let metered: u64 = state.bills.values().map(|b| b.metered_slots as u64).sum();
    if !state.bills.is_empty() {
        println!("settled: {} bills, {metered} slots metered, {:.2} € in total (positive = owed)", state.bills.len(), billed as f64 / 1e6);
    }
    if let Some(out) = summary {
        let v = serde_json::json!({
            "market_id": market_id,
            "appliances": n,
            "seed": seed,
            "iterations": state.submitted_through,
            "converged": state.converged,
            "height": state.final_height,
            "aggregate_w": total,
            "prices_eur_mwh": prices,
            "settlement": (!state.bills.is_empty()).then(|| serde_json::json!({
                "bills": state.bills.len(),
                "metered_slots": metered,
                "total_micro_eur": billed as i64,
            })),
        });
        std::fs::write(out, serde_json::to_string_pretty(&v).expect("json")).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

fn bill(path: &Path, market: Option<u64>, appliance: Option<&str>, json: bool) -> Result<(), String> {
    let file = config::read_file(path).map_err(|e| e.to_string())?;
    let all = device::state::load(&file.state_file).map_err(|e| e.to_string())?;
    let settled = |m: &device::agent::MarketState| !m.bills.is_empty();
    let found = match market {
        Some(id) => all.markets.get(&id).filter(|m| settled(m)).map(|m| (id, m)),
        None => all.markets.iter().rev().find(|(_, m)| settled(m)).map(|(id, m)| (*id, m)),
    };
    let Some((market_id, m)) = found else {
        let which = market.map_or("any market".to_string(), |id| format!("market {id}"));
        return Err(format!("no settled bill of {which} yet ({} is at height {})", file.state_file.display(), all.height));
    };
    let (premium, slot_seconds) = m.settlement_rule.ok_or("the state file holds bills without their settlement rule")?;
    let prices = m.final_prices.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (name, b) in m.bills.iter().filter(|(n, _)| appliance.is_none_or(|a| a == n.as_str())) {
        let x = m.schedules.get(name).cloned().unwrap_or_else(|| vec![0; prices.len()]);
        // On the readings this gateway sent (a slot without one: the missing-reading default).
        let sent = m.readings.get(name);
        let lines: Vec<protocol::settlement::SlotBill> = x
            .iter()
            .zip(&prices)
            .enumerate()
            .map(|(t, (&x, &p))| protocol::settlement::slot_bill(x, sent.and_then(|r| r.get(&(t as u32))).copied(), p, premium, slot_seconds))
            .collect();
        out.push((name.clone(), *b, x, lines));
    }
    if out.is_empty() {
        return Err(format!("market {market_id} has no bill for appliance {}", appliance.unwrap_or("?")));
    }
    let eur = |micro: i64| micro as f64 / 1e6;
    if json {
        let v: Vec<serde_json::Value> = out
            .iter()
            .map(|(name, b, x, lines)| {
                serde_json::json!({
                    "appliance": name, "market_id": market_id, "bill_micro_eur": b, "total_eur": eur(b.total()),
                    "slots": lines.iter().enumerate().map(|(t, l)| serde_json::json!({
                        "slot": t, "scheduled_w": x[t], "price_eur_mwh": circuits::fixed::Fixed(prices[t]).to_f64(), "line_micro_eur": l,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
        return Ok(());
    }
    for (name, b, x, lines) in &out {
        println!("market {market_id}, appliance {name}: {} of {} slots metered", b.metered_slots, x.len());
        println!("{:>5} {:>10} {:>10} {:>10} {:>12} {:>12}", "slot", "planned W", "metered W", "€/MWh", "energy €", "imbalance €");
        for (t, l) in lines.iter().enumerate() {
            println!("{t:>5} {:>10} {:>10} {:>10.2} {:>12.6} {:>12.6}", x[t], l.metered_w, circuits::fixed::Fixed(prices[t]).to_f64(), eur(l.energy), eur(l.imbalance));
        }
        println!("total: energy {:.6} €, imbalance {:.6} €, owed {:.6} € (negative: credited)", eur(b.energy), eur(b.imbalance), eur(b.total()));
        // (Summed as the validators do: saturating.)
        let energy = lines.iter().fold(0i64, |a, l| a.saturating_add(l.energy));
        let imbalance = lines.iter().fold(0i64, |a, l| a.saturating_add(l.imbalance));
        if (energy, imbalance) != (b.energy, b.imbalance) {
            println!("note: the validators settled other readings than this gateway sent (some were not accepted); the total is the committed one");
        }
    }
    Ok(())
}

fn schedule(path: &Path, market: Option<u64>, json: bool) -> Result<(), String> {
    let file = config::read_file(path).map_err(|e| e.to_string())?;
    let all = device::state::load(&file.state_file).map_err(|e| e.to_string())?;
    let found = match market {
        Some(id) => all.markets.get(&id).filter(|m| m.is_final()).map(|m| (id, m)),
        None => all.last_final(),
    };
    let Some((market_id, state)) = found else {
        let which = market.map_or("any market".to_string(), |id| format!("market {id}"));
        return Err(format!("no final schedule of {which} yet ({} is at height {})", file.state_file.display(), all.height));
    };
    let prices = state.prices_eur_mwh();
    if json {
        let v = serde_json::json!({
            "market_id": market_id,
            "converged": state.converged,
            "prices_eur_mwh": prices,
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
        print!("{t:>5} {p:>10.2}");
        for n in &names {
            print!(" {:>10} W", state.schedules[*n].get(t).copied().unwrap_or(0));
        }
        println!();
    }
    Ok(())
}
