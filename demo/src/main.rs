//! `gridproof`: market days on one chain on this machine, in one process tree, on embedded
//! defaults.
//!
//! Four validators (QUIC on loopback, RocksDB in the output directory, Malachite consensus),
//! an embedded MQTT broker (rumqttd), and simulated gateways holding N appliances drawn from
//! the scenario generator. The genesis opens day 1; when a day is final, the market operator
//! opens the next (its execution a day later). Every gateway bids each day's parameters (day
//! 2's come from its overrides file; one household turns an appliance off after bidding, and
//! its gateway withdraws the bid), then for each ADMM iteration solves its appliances' local
//! steps, proves them (Groth16) and submits them; the validators verify, aggregate and
//! commit; after each final entry each gateway checks it as a light client and executes the
//! schedule over MQTT on the market's compressed clock (a day's slots last `--slot-ms` of wall
//! clock each, the market states it), while the next day schedules. After each slot the
//! gateways read their appliances' simulated meters (deviating from the schedule, with
//! dropouts and one household's meter outage) and submit the signed readings; at each day's
//! meter deadline the validators commit its settlement. A device nobody attested tries to bid
//! and is refused. At the end: a summary per day (bids, iterations, residuals,
//! peak-to-average ratio, gap to the centralised optimum, proofs, commit latency, the
//! settlement's totals, largest bills and credits), `summary.json` and a chart per day in the
//! output directory.

mod broker;
mod report;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use circuits::{ModelKind, Shape, Slots};
use clap::{Parser, ValueEnum};
use device::actuation::OutputFile;
use device::config::{Gateway, Virtual};
use device::host::RunOptions;
use ed25519_dalek::SigningKey;
use indicatif::{ProgressBar, ProgressStyle};
use protocol::entry::{Entry, Genesis, GridSpec, MarketSpec};
use protocol::ids::ValidatorId;
use protocol::scenario::{Mix, Scenario};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Runs gridproof market days on one chain locally: validators, an MQTT broker and simulated
/// gateways.
#[derive(Parser, Debug, Clone)]
#[command(name = "gridproof", version, about, long_about)]
pub struct Args {
    /// Appliances (split over the gateways). Each proves once per ADMM iteration (≈ 100 ms of
    /// a 2-core machine at T = 24), which sets the iteration window: 40 finish two settled
    /// days in four to six minutes there.
    #[arg(long, default_value_t = 40)]
    pub appliances: usize,
    /// Gateways (homes); each runs in its own thread with its own QUIC and MQTT connections.
    #[arg(long, default_value_t = 5)]
    pub gateways: usize,
    /// Slots T of the day (24 = hourly).
    #[arg(long, default_value_t = 24)]
    pub slots: usize,
    /// Validators (3f + 1).
    #[arg(long, default_value_t = 4)]
    pub validators: u16,
    /// The grid's cost: valley filling of the base load, or a peer-to-peer exchange.
    #[arg(long, value_enum, default_value_t = Grid::Valley)]
    pub grid: Grid,
    /// Seed of the appliance mix and of every key.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Most ADMM iterations K_max. A market's execution cannot start before its last
    /// possible iteration's deadline, so K_max also sets how long each day waits for its
    /// execution: the default days converge in under 20.
    #[arg(long, default_value_t = 30)]
    pub max_iterations: u32,
    /// ADMM penalty ρ (€/MWh per W of disagreement). Larger converges in fewer iterations
    /// but stops further from the optimum: for a day of 200 appliances, 0.02 takes 27
    /// iterations (+0.43 % to the central optimum), 0.03 takes 18 (+0.75 %).
    #[arg(long, default_value_t = 0.03)]
    pub rho: f64,
    /// Relative stopping tolerance ε_rel.
    #[arg(long, default_value_t = 1e-2)]
    pub eps_rel: f64,
    /// Execution: wall-clock length of one slot, ms (the day is time-compressed; the markets
    /// state it, and money is still counted per slot of 24 h / T).
    #[arg(long, default_value_t = 500)]
    pub slot_ms: u32,
    /// Simulated meters: the largest deviation of a reading from the schedule, %.
    #[arg(long, default_value_t = 5.0)]
    pub meter_deviation_pct: f64,
    /// Simulated meters: the probability that a slot has no reading, % (it settles as
    /// scheduled, docs/protocol.md §9). The second gateway's meter is also offline for three
    /// slots from the middle of each day.
    #[arg(long, default_value_t = 2.0)]
    pub meter_dropout_pct: f64,
    /// Imbalance charged on |metered − scheduled| at this premium over |λ_t|, €/MWh.
    #[arg(long, default_value_t = 50.0)]
    pub imbalance_premium_eur_mwh: f64,
    /// Market days on one chain: the genesis opens the first, the market operator opens each
    /// next one when the previous is final (its execution a day later, its preferences
    /// changed, one appliance withdrawn on day 2, an unattested device refused).
    #[arg(long, default_value_t = 2)]
    pub days: u32,
    /// Where the logs, databases, summary.json and the charts go (default: a new temp dir).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// First port: validators' QUIC from here, their HTTP from +100, the broker at +200.
    #[arg(long, default_value_t = 7100)]
    pub port: u16,
}

/// The grid cost of the demo market.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Grid {
    /// g = γ/2 ‖z + b‖²: fill the valleys of the households' base load.
    Valley,
    /// Σ x = 0 in every slot: a peer-to-peer market among PV, batteries and flexible loads.
    Exchange,
}

const MODELS: [ModelKind; 4] = [ModelKind::Deferrable, ModelKind::Battery, ModelKind::Producer, ModelKind::Thermal];

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,rumqttd=off,device::host=error".into()).add_directive(circuits::QUIET_GADGET_SPANS.parse().expect("a valid directive")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(summary) => {
            println!("{}", report::render(&summary));
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

fn step(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("template"));
    pb.enable_steady_tick(Duration::from_millis(120));
    pb.set_message(msg.to_string());
    pb
}

/// The seed of day `d`'s appliance mix (day 0 is `seed`): the same appliances (kinds follow
/// the index) with that day's preferences.
fn day_seed(seed: u64, d: u32) -> u64 {
    seed.wrapping_add(7919 * d as u64)
}

fn run(args: &Args) -> Result<report::Summary, String> {
    if args.appliances == 0 || args.gateways == 0 || args.gateways > args.appliances {
        return Err("need 1 ≤ --gateways ≤ --appliances".into());
    }
    if !(args.rho.is_finite() && args.rho > 0.0) {
        return Err(format!("--rho must be a positive number, got {}", args.rho));
    }
    if args.validators < 4 {
        return Err("--validators: at least 4 (3f + 1 with f ≥ 1)".into());
    }
    if !(1..=7).contains(&args.days) {
        return Err(format!("--days: 1 to 7, got {}", args.days));
    }
    let slots = Slots::new(args.slots).map_err(|e| format!("--slots: {e}"))?;
    let slot_seconds = (24 * 3600 / args.slots) as u32;
    if args.slot_ms == 0 || args.slot_ms as u64 > slot_seconds as u64 * 1000 {
        return Err(format!("--slot-ms: 1 to {} (a slot of the day), got {}", slot_seconds as u64 * 1000, args.slot_ms));
    }
    let meter = |outage: Option<device::metering::Outage>, seed: u64| device::metering::MeterFile::Simulated {
        deviation_pct: args.meter_deviation_pct,
        dropout_pct: args.meter_dropout_pct,
        seed,
        outage,
    };
    meter(None, 0).check().map_err(|e| format!("--meter-deviation-pct/--meter-dropout-pct: {e}"))?;
    let settlement = protocol::settlement::SettlementSpec {
        // The gateways read a slot a grace after it ends (the genesis's clock drift, 2 s):
        // the window leaves them the grace and a few seconds to submit and commit.
        meter_window_ms: 6000 + 2 * args.slot_ms as u64,
        imbalance_premium: circuits::fixed::Fixed::from_f64("imbalance premium", args.imbalance_premium_eur_mwh).map_err(|e| format!("--imbalance-premium-eur-mwh: {e}"))?.raw(),
    };
    settlement.check().map_err(|e| format!("--imbalance-premium-eur-mwh: {e}"))?;
    let started = Instant::now();
    let out = args.out.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("gridproof-demo-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("keys")).map_err(|e| format!("{}: {e}", out.display()))?;

    // 1. Development keys for the four models, and one timed proof of each to size the
    //    iteration window (every gateway proves all its appliances inside it).
    let pb = step("trusted setup (development keys) and a trial proof per model");
    let mut key_hashes = vec![];
    // Decoded once here and handed to every gateway (each would otherwise decode the files
    // again, seconds on a loaded machine, eating into the registration window).
    let mut proving_keys = std::collections::BTreeMap::new();
    let mut prove_ms = std::collections::BTreeMap::new();
    for kind in MODELS {
        let shape = Shape { kind, slots };
        let (pk, vk) = prover::setup(shape, &mut ChaCha20Rng::seed_from_u64(args.seed)).map_err(|e| e.to_string())?;
        // Throughput, as the gateways will see it: one warm-up proof, then PROBE proofs at once
        // on every core.
        const PROBE: usize = 6;
        let witness = |v: usize| circuits::sample::witness(kind, slots, 1, 1, v as u16);
        prover::prove(&pk, witness(0), &mut ChaCha20Rng::seed_from_u64(1)).map_err(|e| e.to_string())?;
        let t = Instant::now();
        std::thread::scope(|s| {
            let (pk, witness) = (&pk, &witness);
            let handles: Vec<_> =
                (0..PROBE).map(|v| s.spawn(move || prover::prove(pk, witness(v), &mut ChaCha20Rng::seed_from_u64(v as u64)).map(|_| ()))).collect();
            handles.into_iter().try_for_each(|h| h.join().expect("prover thread").map_err(|e| e.to_string()))
        })?;
        prove_ms.insert(kind, t.elapsed().as_secs_f64() * 1000.0 / PROBE as f64);
        let vk_bytes = vk.to_bytes();
        std::fs::write(out.join(format!("keys/{kind}-{}.pk", args.slots)), pk.to_bytes()).map_err(|e| e.to_string())?;
        std::fs::write(out.join(format!("keys/{kind}-{}.vk", args.slots)), &vk_bytes).map_err(|e| e.to_string())?;
        key_hashes.push(verifier_node::config::key_hash(&vk, &vk_bytes));
        proving_keys.insert((kind.id(), args.slots), pk);
    }
    pb.finish_and_clear();
    println!("keys ready; proving throughput {}", prove_ms.iter().map(|(k, ms)| format!("{k} {ms:.0} ms/proof")).collect::<Vec<_>>().join(", "));

    // 2. The appliances of each day (the same appliances, each day's preferences) and the
    //    first market.
    let mix = if args.grid == Grid::Exchange { Mix::Exchange } else { Mix::Household };
    let scenarios: Vec<Scenario> = (0..args.days)
        .map(|d| {
            let mut sc = Scenario::generate(day_seed(args.seed, d), args.appliances, slots, slot_seconds, mix);
            // That day's base-load forecast: a colder morning and a milder evening each day on.
            for (t, b) in sc.base_load.iter_mut().enumerate() {
                let phase = 2.0 * std::f64::consts::PI * t as f64 / args.slots as f64;
                *b = (*b as f64 * (1.0 + 0.08 * d as f64 * phase.cos())).round() as i32;
            }
            sc
        })
        .collect();
    let proving_per_iteration_ms: f64 = scenarios[0].devices.iter().map(|d| prove_ms[&d.params.kind()]).sum();
    // Every appliance proves once per iteration; the window leaves a quarter more plus the
    // time to submit, verify and commit.
    let iteration_ms = (proving_per_iteration_ms * 1.25 + 800.0).max(1200.0) as u64;
    // The grid operator's enrollment authority, which attests every appliance of the demo,
    // and the market operator, which opens each day after the first.
    let authority = key_from_seed(args.seed, b"authority", 0);
    let operator = key_from_seed(args.seed, b"operator", 0);
    let validator_keys: Vec<SigningKey> = (0..args.validators).map(|i| key_from_seed(args.seed, b"validator", i as u64)).collect();
    // Registration: 6 s plus 40 ms per appliance (gateways that enrolled early start proving
    // at once and compete for the CPU with the ones still dialling and enrolling).
    let registration_ms = 6000 + 40 * args.appliances as u64;
    let grid_of = |sc: &Scenario| -> GridSpec {
        match args.grid {
            Grid::Valley => {
                let protocol::admm::GridCost::ValleyFilling { gamma, base_load } = sc.valley_filling() else { unreachable!() };
                GridSpec::ValleyFilling { gamma: gamma.raw(), base_load }
            }
            Grid::Exchange => GridSpec::Exchange,
        }
    };
    let rho = circuits::fixed::Fixed::from_f64("rho", args.rho).map_err(|e| e.to_string())?.raw();
    let eps_rel = circuits::fixed::Fixed::from_f64("eps_rel", args.eps_rel).map_err(|e| e.to_string())?.raw();
    // Each day executes on its compressed clock from its last possible iteration's deadline
    // on (and never before the previous day's execution ends).
    let now = protocol::net::now_ms();
    let close = now + registration_ms;
    let spec_of = |d: u32, close: u64, after_ms: u64| MarketSpec {
        market_id: d as u64 + 1,
        slots: args.slots as u16,
        slot_seconds,
        rho,
        eps_abs: circuits::fixed::Fixed::ONE.raw(),
        eps_rel,
        max_iterations: args.max_iterations,
        grid: grid_of(&scenarios[d as usize]),
        registration_close_ms: close,
        iteration_ms,
        execution_start_ms: (close + iteration_ms * (args.max_iterations as u64 + 2)).max(after_ms),
        settlement: Some(settlement.clone()),
        compressed_slot_ms: Some(args.slot_ms),
    };
    let genesis = Genesis {
        validators: validator_keys.iter().map(|k| ValidatorId(k.verifying_key().to_bytes())).collect(),
        max_clock_drift_ms: 2000,
        market: spec_of(0, close, 0),
        verifying_keys: key_hashes,
        enrollment_authorities: vec![protocol::membership::AuthorityId(authority.verifying_key().to_bytes())],
        market_operators: vec![protocol::market::OperatorId(operator.verifying_key().to_bytes())],
    };
    println!(
        "{} market day{}: {} appliances, T = {}, ρ = {}, iteration window {} ms (proving ≈ {:.0} ms per iteration), K_max = {}",
        args.days,
        if args.days > 1 { "s" } else { "" },
        args.appliances,
        args.slots,
        args.rho,
        iteration_ms,
        proving_per_iteration_ms,
        args.max_iterations
    );
    let genesis_entry = Entry::genesis(genesis, now);
    std::fs::write(out.join("genesis.bin"), protocol::codec::encode(&genesis_entry)).map_err(|e| e.to_string())?;

    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    // 3. The broker and the validators.
    let broker_port = args.port + 200;
    broker::start(broker_port)?;
    let seen = broker::count_topics(broker_port, "home/#")?;
    let validators = rt.block_on(verifier_node::host::start_local(&out, &out.join("keys"), &genesis_entry, &validator_keys, args.port, args.port + 100))?;
    println!(
        "{} validators on 127.0.0.1:{}.., status page http://127.0.0.1:{}/, MQTT broker on 127.0.0.1:{broker_port}",
        args.validators,
        args.port,
        args.port + 100
    );

    // 4. The gateways: a gateway.toml each, appliances dealt round-robin, setpoint outputs;
    //    every later day's preferences in the gateway's overrides file, as a household (or its
    //    Home Assistant) would write them.
    let mut gateways = vec![];
    let per: Vec<Vec<usize>> = (0..args.gateways).map(|g| (g..args.appliances).step_by(args.gateways).collect()).collect();
    let name_of = |i: usize| format!("{}-{i:04}", scenarios[0].devices[i].params.kind());
    let mut overrides: Vec<serde_json::Map<String, serde_json::Value>> = vec![];
    // The second gateway's meter (its household's) is offline for three slots each day.
    let outage = device::metering::Outage { from_slot: args.slots as u32 / 2, slots: 3 };
    for (g, members) in per.iter().enumerate() {
        let dir = out.join(format!("gw{g:02}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("gateway.key"), protocol::ids::hex(&key_from_seed(args.seed, b"gateway", g as u64).to_bytes())).map_err(|e| e.to_string())?;
        let validators: String = (0..args.validators).map(|i| format!("[[validators]]\nindex = {i}\naddr = \"127.0.0.1:{}\"\n\n", args.port + i)).collect();
        let toml = format!(
            "key_file = \"gateway.key\"\nstate_file = \"state.json\"\ngenesis_file = \"../genesis.bin\"\nkeys_dir = \"../keys\"\nappliances = []\n\n{validators}[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\nclient_id = \"gw{g:02}\"\n"
        );
        std::fs::write(dir.join("gateway.toml"), toml).map_err(|e| e.to_string())?;
        let devices = members
            .iter()
            .map(|&i| {
                let d = &scenarios[0].devices[i];
                let name = name_of(i);
                let output = Some(OutputFile::Setpoint { topic: format!("home/gw{g:02}/{name}/setpoint_w"), retain: false });
                let meter = Some(meter((g == 1).then_some(outage), args.seed.wrapping_mul(1000).wrapping_add(i as u64)));
                Virtual { name, params: d.params.clone(), costs: d.costs.clone(), output, meter }
            })
            .collect();
        let mut gw = Gateway::with_appliances(&dir.join("gateway.toml"), devices).map_err(|e| e.to_string())?;
        // The plate an installer attests holds every day's needs.
        for (a, &i) in gw.appliances.iter_mut().zip(members) {
            for sc in &scenarios {
                a.nameplate = a.nameplate.cover(&protocol::membership::nameplate_of(&sc.devices[i].params, slot_seconds));
            }
        }
        gw.self_attest(&authority).map_err(|e| e.to_string())?;
        let mut file = serde_json::Map::new();
        for (d, sc) in scenarios.iter().enumerate().skip(1) {
            let day: serde_json::Map<String, serde_json::Value> = members
                .iter()
                .map(|&i| (name_of(i), serde_json::to_value(circuits::spec::ApplianceSpec::from_params(&sc.devices[i].params, slot_seconds)).expect("spec json")))
                .collect();
            file.insert(format!("market-{}", d + 1), day.into());
        }
        std::fs::write(&gw.file.overrides_file, serde_json::to_string_pretty(&file).expect("json")).map_err(|e| e.to_string())?;
        overrides.push(file);
        gateways.push(gw);
    }
    // On day 2 the household of gateway 0 changes its mind about its first appliance after
    // bidding: the day turns "off" in its overrides file and the gateway withdraws the bid.
    let withdrawn = (args.days > 1).then(|| (gateways[0].appliances[0].id(), gateways[0].appliances[0].name.clone()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let opts = RunOptions {
        within: Some(Duration::from_secs(3600)),
        enroll_only: false,
        execute: true,
        stop_on_signal: false,
        markets: Some(args.days),
        checkpoint: None,
    };
    let threads: Vec<_> = gateways
        .iter()
        .cloned()
        .enumerate()
        .map(|(g, gw)| {
            let failures = failures.clone();
            let keys = proving_keys.clone();
            std::thread::spawn(move || {
                // Multi-threaded (one worker): the gateway proves in `block_in_place`.
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
                if let Err(e) = rt.block_on(device::host::run_gateway_with_keys(&gw, keys, opts)) {
                    failures.lock().expect("lock").push(format!("gateway {g}: {e}"));
                }
            })
        })
        .collect();

    // 5. Follow the log as a watcher, day by day, with a progress bar; open each next day when
    //    the previous one is final.
    let peers: Vec<(u16, std::net::SocketAddr)> = (0..args.validators).map(|i| (i, std::net::SocketAddr::from(([127, 0, 0, 1], args.port + i)))).collect();
    let validator_ids: Vec<ValidatorId> = validator_keys.iter().map(|k| ValidatorId(k.verifying_key().to_bytes())).collect();
    let mut watcher = rt.block_on(report::Watcher::connect(&genesis_entry, args.port, &validator_keys[0]))?;
    let mut markets = vec![];
    let mut refused = None;
    for d in 0..args.days {
        let spec = if d == 0 {
            spec_of(0, close, 0)
        } else {
            // One iteration window longer than day 1's: the gateways prove iteration 1 as soon
            // as all their bids are in, and a household's late change of mind (the withdrawal
            // below) must still reach the validators before the close.
            let previous_end = markets.last().map_or(0, |(s, _): &(MarketSpec, report::Market)| protocol::market::execution_span(s).1);
            let spec = spec_of(d, protocol::net::now_ms() + registration_ms + iteration_ms, previous_end);
            let open = protocol::market::SignedMarketOpen::new(&operator, &genesis_entry.chain_id, spec.clone());
            let answers = rt.block_on(verifier_node::roles::submit_to_all(&validator_ids, &peers, &operator, &protocol::messages::DeviceRequest::Open(open), Duration::from_secs(5)));
            if answers.iter().filter(|a| a.accepted()).count() < answers.len() * 2 / 3 + 1 {
                return Err(format!("opening market {} was not admitted by a quorum: {:?}", spec.market_id, answers.iter().map(|a| &a.result).collect::<Vec<_>>()));
            }
            if d == 1 {
                refused = Some(rt.block_on(intrude(&genesis_entry, &validator_ids, &peers, &spec, slots, slot_seconds)));
            }
            spec
        };
        let bidders = args.appliances;
        let market = rt.block_on(watcher.market(&spec, bidders, |device| {
            // The withdrawal: the household turns the day off once its bid is in the log.
            if d == 1 && withdrawn.as_ref().is_some_and(|(id, _)| *id == device) {
                let (_, name) = withdrawn.as_ref().expect("checked");
                let mut file = overrides[0].clone();
                if let Some(day) = file.get_mut("market-2").and_then(|v| v.as_object_mut()) {
                    day.insert(name.clone(), serde_json::Value::String("off".into()));
                }
                let _ = std::fs::write(&gateways[0].file.overrides_file, serde_json::to_string_pretty(&file).expect("json"));
            }
        }))?;
        markets.push((spec, market));
    }
    let pb = step(&format!(
        "executing the schedules over MQTT ({} slots × {} ms from {}), metering and settling",
        args.slots,
        args.slot_ms,
        device::actuation::rfc3339(markets[0].0.execution_start_ms)
    ));
    let mut settlements = vec![];
    for (spec, _) in &markets {
        let deadline = protocol::settlement::meter_deadline(spec).expect("the demo's markets settle");
        let within = Duration::from_millis(deadline.saturating_sub(protocol::net::now_ms()) + 60_000);
        settlements.push(rt.block_on(watcher.settlement(spec.market_id, within))?);
    }
    watcher.close();
    for t in threads {
        let _ = t.join();
    }
    pb.finish_with_message("schedules executed, metered and settled");
    if let Some(e) = failures.lock().expect("lock").first() {
        return Err(e.clone());
    }
    std::thread::sleep(Duration::from_millis(300));

    // 6. The summary.
    let stats: Vec<_> = validators.iter().map(|v| v.shared.snapshot.read().expect("snapshot").stats.clone()).collect();
    rt.block_on(async {
        for v in validators {
            let _ = v.stop().await;
        }
    });
    let states: Vec<device::agent::AgentState> =
        gateways.iter().map(|gw| device::state::load(&gw.file.state_file)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let summary = report::summarize(report::Inputs {
        args: args.clone(),
        out: out.clone(),
        scenario: &scenarios[0],
        gateways: &gateways,
        states: &states,
        markets,
        settlements,
        stats: &stats,
        setpoints_seen: seen.lock().expect("lock").values().sum(),
        wall: started.elapsed(),
        iteration_ms,
        withdrawn: withdrawn.map(|w| w.1),
        refused,
    })?;
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary.json).expect("json")).map_err(|e| e.to_string())?;
    for (d, day) in summary.days.iter().enumerate() {
        report::chart(&out.join(report::chart_name(d)), day, d + 1)?;
    }
    Ok(summary)
}

/// A device nobody attested tries to bid in `spec`'s market: a fresh key with an
/// "attestation" signed by itself. Returns what the validators answered (each must refuse).
async fn intrude(genesis: &Entry, validators: &[ValidatorId], peers: &[(u16, std::net::SocketAddr)], spec: &MarketSpec, slots: Slots, slot_seconds: u32) -> String {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let device = protocol::ids::DeviceId(key.verifying_key().to_bytes());
    let params = circuits::sample::params(ModelKind::Deferrable, slots);
    let attestation = protocol::membership::attest(&key, &genesis.chain_id, device, &params, slot_seconds, "self-made", protocol::membership::market_span(spec));
    let opening = circuits::Opening { params, cost_digest: protocol::local::Costs { linear: vec![], quadratic: circuits::fixed::Fixed::ZERO }.digest(), salt: circuits::Fr::from(7u64) };
    let body = protocol::messages::Enrollment {
        market_id: spec.market_id,
        device,
        kind: ModelKind::Deferrable.id(),
        slots: spec.slots,
        commitment: protocol::codec::FieldElement::new(&circuits::commitment(&opening)),
        attestation,
    };
    let request = protocol::messages::DeviceRequest::Enroll(protocol::messages::SignedEnrollment::new(&key, &genesis.chain_id, body));
    let answers = verifier_node::roles::submit_to_all(validators, peers, &key, &request, Duration::from_secs(5)).await;
    let refusals: Vec<String> = answers
        .iter()
        .map(|a| match &a.result {
            Ok(protocol::messages::DeviceResponse::Rejected { label, message }) => format!("{label}: {message}"),
            Ok(protocol::messages::DeviceResponse::Accepted) => "ACCEPTED".to_string(),
            Err(e) => format!("no answer: {e}"),
        })
        .collect();
    refusals.first().cloned().unwrap_or_default()
}

/// A deterministic ed25519 key for role `tag` and index `i` (demo only).
fn key_from_seed(seed: u64, tag: &[u8], i: u64) -> SigningKey {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"gridproof/demo/");
    h.update(tag);
    h.update(seed.to_le_bytes());
    h.update(i.to_le_bytes());
    SigningKey::from_bytes(&h.finalize().into())
}
