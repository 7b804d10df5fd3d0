//! `gridproof`: one market day on this machine, in one process tree, on embedded defaults.
//!
//! Four validators (QUIC on loopback, RocksDB in the output directory, Malachite consensus),
//! an embedded MQTT broker (rumqttd), and simulated gateways holding N appliances drawn from
//! the scenario generator. Every gateway enrolls, then for each ADMM iteration solves its
//! appliances' local steps, proves them (Groth16) and submits them; the validators verify,
//! aggregate and commit; after the final entry each gateway checks it as a light client and
//! executes its schedule over MQTT on a compressed clock. At the end: a summary (iterations,
//! residuals, peak-to-average ratio, gap to the centralised optimum, proofs, commit latency),
//! `summary.json` and `chart.svg` in the output directory.

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

/// Runs one gridproof market day locally: validators, an MQTT broker and simulated gateways.
#[derive(Parser, Debug, Clone)]
#[command(name = "gridproof", version, about, long_about)]
pub struct Args {
    /// Appliances (split over the gateways). Each proves once per ADMM iteration (≈ 45 ms of
    /// a 2-core machine at T = 24), which sets the iteration window: 200 finish a day in
    /// under five minutes there.
    #[arg(long, default_value_t = 200)]
    pub appliances: usize,
    /// Gateways (homes); each runs in its own thread with its own QUIC and MQTT connections.
    #[arg(long, default_value_t = 10)]
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
    /// Most ADMM iterations K_max.
    #[arg(long, default_value_t = 40)]
    pub max_iterations: u32,
    /// ADMM penalty ρ (€/MWh per W of disagreement). Larger converges in fewer iterations
    /// but stops further from the optimum: for the default day, 0.02 takes 27 iterations
    /// (+0.43 % to the central optimum), 0.03 takes 18 (+0.75 %).
    #[arg(long, default_value_t = 0.03)]
    pub rho: f64,
    /// Relative stopping tolerance ε_rel.
    #[arg(long, default_value_t = 1e-2)]
    pub eps_rel: f64,
    /// Execution: wall-clock length of one slot, ms (the day is time-compressed).
    #[arg(long, default_value_t = 500)]
    pub slot_ms: u64,
    /// Where the logs, databases, summary.json and chart.svg go (default: a new temp dir).
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
    let slots = Slots::new(args.slots).map_err(|e| format!("--slots: {e}"))?;
    let started = Instant::now();
    let out = args.out.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("gridproof-demo-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("keys")).map_err(|e| format!("{}: {e}", out.display()))?;
    let slot_seconds = (24 * 3600 / args.slots) as u32;

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

    // 2. The appliances and the market.
    let mix = if args.grid == Grid::Exchange { Mix::Exchange } else { Mix::Household };
    let scenario = Scenario::generate(args.seed, args.appliances, slots, slot_seconds, mix);
    let proving_per_iteration_ms: f64 = scenario.devices.iter().map(|d| prove_ms[&d.params.kind()]).sum();
    // Every appliance proves once per iteration; the window leaves a quarter more plus the
    // time to submit, verify and commit.
    let iteration_ms = (proving_per_iteration_ms * 1.25 + 800.0).max(1200.0) as u64;
    // The grid operator's enrollment authority, which attests every appliance of the demo.
    let authority = key_from_seed(args.seed, b"authority", 0);
    let validator_keys: Vec<SigningKey> = (0..args.validators).map(|i| key_from_seed(args.seed, b"validator", i as u64)).collect();
    let now = protocol::net::now_ms();
    // Registration: 6 s plus 40 ms per appliance (gateways that enrolled early start proving
    // at once and compete for the CPU with the ones still dialling and enrolling).
    let close = now + 6000 + 40 * args.appliances as u64;
    let grid = match args.grid {
        Grid::Valley => {
            let protocol::admm::GridCost::ValleyFilling { gamma, base_load } = scenario.valley_filling() else { unreachable!() };
            GridSpec::ValleyFilling { gamma: gamma.raw(), base_load }
        }
        Grid::Exchange => GridSpec::Exchange,
    };
    let genesis = Genesis {
        validators: validator_keys.iter().map(|k| ValidatorId(k.verifying_key().to_bytes())).collect(),
        max_clock_drift_ms: 2000,
        market: MarketSpec {
            market_id: 1,
            slots: args.slots as u16,
            slot_seconds,
            rho: circuits::fixed::Fixed::from_f64("rho", args.rho).map_err(|e| e.to_string())?.raw(),
            eps_abs: circuits::fixed::Fixed::ONE.raw(),
            eps_rel: circuits::fixed::Fixed::from_f64("eps_rel", args.eps_rel).map_err(|e| e.to_string())?.raw(),
            max_iterations: args.max_iterations,
            grid,
            registration_close_ms: close,
            iteration_ms,
            execution_start_ms: close + iteration_ms * (args.max_iterations as u64 + 2),
        },
        verifying_keys: key_hashes,
        enrollment_authorities: vec![protocol::membership::AuthorityId(authority.verifying_key().to_bytes())],
        market_operators: vec![],
    };
    println!(
        "market: {} appliances, T = {}, ρ = {}, iteration window {} ms (proving ≈ {:.0} ms per iteration), K_max = {}",
        args.appliances, args.slots, args.rho, iteration_ms, proving_per_iteration_ms, args.max_iterations
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

    // 4. The gateways: a gateway.toml each, appliances dealt round-robin, setpoint outputs.
    let mut gateways = vec![];
    let per: Vec<Vec<usize>> = (0..args.gateways).map(|g| (g..args.appliances).step_by(args.gateways).collect()).collect();
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
                let d = &scenario.devices[i];
                let name = format!("{}-{i:04}", d.params.kind());
                let output = Some(OutputFile::Setpoint { topic: format!("home/gw{g:02}/{name}/setpoint_w"), retain: false });
                Virtual { name, params: d.params.clone(), costs: d.costs.clone(), output }
            })
            .collect();
        let mut gw = Gateway::with_appliances(&dir.join("gateway.toml"), devices).map_err(|e| e.to_string())?;
        gw.self_attest(&authority).map_err(|e| e.to_string())?;
        gateways.push(gw);
    }
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let opts = RunOptions { within: Duration::from_secs(3600), enroll_only: false, execute: true, compressed_slot_ms: Some(args.slot_ms), stop_on_signal: false };
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

    // 5. Follow the log as a watcher, with a progress bar.
    let market = rt.block_on(report::watch(&genesis_entry, args.port, &validator_keys[0], args.appliances))?;
    let pb = step(&format!("executing the schedules over MQTT ({} slots × {} ms)", args.slots, args.slot_ms));
    for t in threads {
        let _ = t.join();
    }
    pb.finish_with_message("schedules executed");
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
        scenario: &scenario,
        gateways: &gateways,
        states: &states,
        market,
        stats: &stats,
        setpoints_seen: seen.lock().expect("lock").values().sum(),
        wall: started.elapsed(),
        iteration_ms,
    })?;
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary.json).expect("json")).map_err(|e| e.to_string())?;
    report::chart(&out.join("chart.svg"), &summary)?;
    Ok(summary)
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
