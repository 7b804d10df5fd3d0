//! One iteration on the gateway, split into its steps: the local solve (clarabel), the proof
//! (Groth16, BN254) and the submission (signed update to every validator over QUIC, until each
//! answers). A real `device` agent, loaded from a `gateway.toml` with one Deferrable appliance
//! (T = 96 by default), follows a market of four in-process validators for K iterations; each
//! step is timed in every iteration and the shares of the total are reported.
//!
//! `cargo run --release -p bench --bin gateway_iteration -- --iterations 5`

use std::time::Instant;

use circuits::ModelKind;
use clap::Parser;
use ed25519_dalek::SigningKey;
use protocol::entry::{Entry, Genesis, GridSpec, MarketSpec};
use protocol::ids::ValidatorId;
use protocol::messages::{DeviceRequest, DeviceResponse};
use protocol::net::ValidatorClient;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

#[derive(Parser)]
struct Args {
    /// Slots T.
    #[arg(long, default_value_t = 96)]
    slots: usize,
    /// Iterations K to measure.
    #[arg(long, default_value_t = 5)]
    iterations: u32,
    /// Length of each iteration's window, ms (must exceed solve + prove + submit).
    #[arg(long, default_value_t = 4000)]
    iteration_ms: u64,
    /// First QUIC port (HTTP uses +100).
    #[arg(long, default_value_t = 17600)]
    port: u16,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("gridproof-gateway-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("keys")).expect("temp dir");
    let t = Instant::now();
    let (pk, vk) = bench::keys(ModelKind::Deferrable, args.slots);
    eprintln!("keys in {:.1} s", t.elapsed().as_secs_f64());
    std::fs::write(dir.join(format!("keys/deferrable-{}.pk", args.slots)), pk.to_bytes()).expect("write pk");
    let vk_bytes = vk.to_bytes();
    std::fs::write(dir.join("keys/deferrable.vk"), &vk_bytes).expect("write vk");
    let validator_keys: Vec<SigningKey> = (0..4u8).map(|i| SigningKey::from_bytes(&[180 + i; 32])).collect();
    let now = protocol::net::now_ms();
    let close = now + 4000;
    let genesis = Genesis {
        validators: validator_keys.iter().map(|k| ValidatorId(k.verifying_key().to_bytes())).collect(),
        max_clock_drift_ms: 2000,
        market: MarketSpec {
            market_id: 3,
            slots: args.slots as u16,
            slot_seconds: 900,
            rho: circuits::fixed::Fixed::from_f64("rho", 0.02).expect("finite").raw(),
            eps_abs: 0,
            eps_rel: 0,
            max_iterations: args.iterations,
            grid: GridSpec::ValleyFilling { gamma: 1000, base_load: (0..args.slots).map(|t| 2000 + 1500 * ((t / 8) % 3) as i32).collect() },
            registration_close_ms: close,
            iteration_ms: args.iteration_ms,
            execution_start_ms: close + args.iteration_ms * (args.iterations as u64 + 2),
            settlement: None,
            compressed_slot_ms: None,
        },
        verifying_keys: vec![verifier_node::config::key_hash(&vk, &vk_bytes)],
        enrollment_authorities: vec![protocol::membership::AuthorityId(bench::authority().verifying_key().to_bytes())],
        market_operators: vec![],
    };
    let genesis_entry = Entry::genesis(genesis, now);
    std::fs::write(dir.join("genesis.bin"), protocol::codec::encode(&genesis_entry)).expect("write genesis");
    std::fs::write(dir.join("gw.key"), protocol::ids::hex(&[7u8; 32])).expect("write key");
    std::fs::write(dir.join("gateway.toml"), bench::gateway_toml(4, args.port, &format!("[[0, 28], [72, {}]]", args.slots))).expect("write gateway.toml");
    let mut gw = device::config::Gateway::load(&dir.join("gateway.toml")).expect("gateway.toml");
    gw.self_attest(&bench::authority()).expect("the bench authority attests");
    let keys = gw.proving_keys().expect("proving keys");
    let mut agent = device::agent::Agent::new(gw.clone(), keys, Default::default()).expect("agent");
    agent.plan(&Default::default(), protocol::net::now_ms());
    let market_id = gw.market().market.market_id;

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let rows: Vec<(u32, f64, f64, f64)> = rt.block_on(async {
        protocol::net::install_crypto();
        let running = verifier_node::host::start_local(&dir, &dir.join("keys"), &genesis_entry, &validator_keys, args.port, args.port + 100)
            .await
            .expect("validators start");
        let endpoint = protocol::net::client_endpoint("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        let ev = &gw.appliances[0];
        let mut conns = vec![];
        for v in &gw.file.validators {
            conns.push(ValidatorClient::connect(&endpoint, v.addr, gw.validator_keys[v.index as usize], &ev.key).await.expect("connect"));
        }
        for e in agent.enrollments(protocol::net::now_ms()) {
            for c in &conns {
                assert!(matches!(c.submit(&DeviceRequest::Enroll(e.clone())).await, Ok(DeviceResponse::Accepted)));
            }
        }
        let mut rx = conns[0].subscribe(0).await.expect("subscribe");
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut rows = vec![];
        while let Some(item) = rx.recv().await {
            let item = item.expect("entry");
            let Some((_, k)) = agent.on_entry(&item, protocol::net::now_ms()).expect("light client") else {
                if agent.state.markets.get(&market_id).is_some_and(|m| m.is_final()) {
                    break;
                }
                continue;
            };
            let t0 = Instant::now();
            let solved = agent.solve(market_id).expect("solve");
            let t1 = Instant::now();
            let updates = agent.sign_proven(market_id, k, solved, &mut rng).expect("prove");
            let t2 = Instant::now();
            for u in updates {
                for c in &conns {
                    let r = c.submit(&DeviceRequest::Update(u.clone())).await;
                    assert!(matches!(r, Ok(DeviceResponse::Accepted)), "iteration {k}: {r:?}");
                }
            }
            let t3 = Instant::now();
            agent.state.markets.get_mut(&market_id).expect("bidding").submitted_through = k;
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
            eprintln!("iteration {k}: solve {:.0} ms, prove {:.0} ms, submit {:.0} ms", ms(t0, t1), ms(t1, t2), ms(t2, t3));
            rows.push((k, ms(t0, t1), ms(t1, t2), ms(t2, t3)));
        }
        for r in running {
            let _ = r.stop().await;
        }
        rows
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!rows.is_empty(), "no iteration measured");
    let n = rows.len() as f64;
    let mean = |f: fn(&(u32, f64, f64, f64)) -> f64| rows.iter().map(f).sum::<f64>() / n;
    let (solve, prove, submit) = (mean(|r| r.1), mean(|r| r.2), mean(|r| r.3));
    let total = solve + prove + submit;
    println!("gateway iteration, Deferrable T = {}, {} iterations measured (means)", args.slots, rows.len());
    println!("  local solve (clarabel)        {solve:>8.1} ms  {:>5.1} %", 100.0 * solve / total);
    println!("  prove (Groth16)               {prove:>8.1} ms  {:>5.1} %", 100.0 * prove / total);
    println!("  submit (4 validators, QUIC)   {submit:>8.1} ms  {:>5.1} %", 100.0 * submit / total);
    println!("  total                         {total:>8.1} ms");
    if let Some(path) = args.json {
        let v =
            serde_json::json!({"slots": args.slots, "iterations": rows.len(), "solve_ms": solve, "prove_ms": prove, "submit_ms": submit, "total_ms": total});
        std::fs::write(&path, serde_json::to_string_pretty(&v).expect("json")).expect("write json");
    }
}
