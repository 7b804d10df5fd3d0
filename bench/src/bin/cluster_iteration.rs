//! End-to-end iteration latency: V validators (real hosts: QUIC on loopback, RocksDB in a temp
//! directory, Malachite consensus) in this process, N devices that enroll and submit one
//! proven update each for iteration 1; measures the time from iteration 1's deadline to the
//! committed entry reaching a subscriber, and the update proofs verified per second.
//!
//! `cargo run --release -p bench --bin cluster_iteration -- --devices 1000`

use std::sync::Arc;
use std::time::{Duration, Instant};

use circuits::{commitment, sample, Context, Fr, ModelKind, Opening, Shape, Slots};
use clap::Parser;
use ed25519_dalek::SigningKey;
use protocol::codec::FieldElement;
use protocol::entry::{chain_id, Body, Entry, Genesis, GridSpec, MarketSpec};
use protocol::ids::{DeviceId, ValidatorId};
use protocol::messages::{DeviceRequest, DeviceResponse, Enrollment, SignedEnrollment, SignedUpdate, Update};
use protocol::net::ValidatorClient;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

/// One iteration of a cluster, timed from its deadline to the committed entry.
#[derive(Parser)]
struct Args {
    /// Devices (each submits one proven update).
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Validators.
    #[arg(long, default_value_t = 4)]
    validators: u16,
    /// Slots T.
    #[arg(long, default_value_t = 96)]
    slots: usize,
    /// First QUIC port (HTTP uses +100).
    #[arg(long, default_value_t = 17400)]
    port: u16,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn main() {
    let args = Args::parse();
    let slots = Slots::new(args.slots).expect("valid T");
    let shape = Shape { kind: ModelKind::Deferrable, slots };
    let t0 = Instant::now();
    let (pk, vk) = bench::keys(ModelKind::Deferrable, args.slots);
    eprintln!("keys in {:.1} s", t0.elapsed().as_secs_f64());
    let dir = std::env::temp_dir().join(format!("gridproof-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("keys")).expect("temp dir");
    let vk_bytes = vk.to_bytes();
    std::fs::write(dir.join("keys/deferrable.vk"), &vk_bytes).expect("write vk");

    // Devices and their proven updates for iteration 1 (proving is not what is measured).
    let devices: Vec<(SigningKey, Opening)> = (0..args.devices)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            (SigningKey::from_bytes(&seed), Opening { params: sample::params(ModelKind::Deferrable, slots), cost_digest: Fr::from(1u64), salt: Fr::from(i as u64 + 7) })
        })
        .collect();
    // Proofs do not depend on the chain (only signatures do): prove before the genesis fixes
    // the clock.
    let t1 = Instant::now();
    let proven: Vec<(Vec<i32>, [u8; 128])> = devices
        .par_iter()
        .enumerate()
        .map(|(i, (_, opening))| {
            let witness = circuits::Witness {
                opening: opening.clone(),
                context: Context { market_id: 1, iteration: 1, shape },
                schedule: sample::schedule(ModelKind::Deferrable, slots, i as u16),
            };
            let (proof, _) = prover::prove(&pk, witness.clone(), &mut ChaCha20Rng::seed_from_u64(i as u64)).expect("prove");
            (witness.schedule, prover::format::encode_proof(&proof))
        })
        .collect();
    eprintln!("{} proofs in {:.1} s", proven.len(), t1.elapsed().as_secs_f64());
    let validator_keys: Vec<SigningKey> = (0..args.validators).map(|i| SigningKey::from_bytes(&[200 + i as u8; 32])).collect();
    let now = protocol::net::now_ms();
    // Registration: long enough to enroll every device over QUIC.
    let close = now + 5000 + args.devices as u64 * 5;
    let iteration_ms = 4000;
    let genesis = Genesis {
        validators: validator_keys.iter().map(|k| ValidatorId(k.verifying_key().to_bytes())).collect(),
        max_clock_drift_ms: 2000,
        market: MarketSpec {
            market_id: 1,
            slots: args.slots as u16,
            slot_seconds: 900,
            rho: circuits::fixed::Fixed::from_f64("rho", 0.02).expect("finite").raw(),
            eps_abs: circuits::fixed::Fixed::ONE.raw(),
            eps_rel: circuits::fixed::Fixed::from_f64("eps", 1e-3).expect("finite").raw(),
            max_iterations: 1,
            grid: GridSpec::ValleyFilling { gamma: 1000, base_load: vec![100_000; args.slots] },
            registration_close_ms: close,
            iteration_ms,
            execution_start_ms: close + 60_000,
        },
        verifying_keys: vec![verifier_node::config::key_hash(&vk, &vk_bytes)],
    };
    let chain = chain_id(&genesis);
    let genesis_entry = Entry { chain_id: chain, height: 0, prev_hash: [0; 32], timestamp_ms: now, body: Body::Genesis(genesis.clone()) };
    let updates: Vec<SignedUpdate> = devices
        .iter()
        .zip(proven)
        .map(|((key, _), (schedule, proof))| {
            let body = Update { market_id: 1, iteration: 1, device: DeviceId(key.verifying_key().to_bytes()), schedule, proof };
            SignedUpdate::new(key, &chain, body)
        })
        .collect();
    let enrollments: Vec<SignedEnrollment> = devices
        .iter()
        .map(|(key, opening)| {
            SignedEnrollment::new(
                key,
                &chain,
                Enrollment { market_id: 1, device: DeviceId(key.verifying_key().to_bytes()), kind: 1, slots: args.slots as u16, commitment: FieldElement::new(&commitment(opening)) },
            )
        })
        .collect();

    // Baseline in the same run: one batch verification of all N proofs in this process (what
    // each validator must do at least once per iteration).
    let baseline_ms = {
        let items: Vec<(prover::UpdateProof, Vec<Fr>)> = updates
            .iter()
            .zip(&devices)
            .map(|(u, (_, opening))| {
                let ctx = Context { market_id: 1, iteration: 1, shape };
                let inputs = circuits::public_inputs(commitment(opening), &ctx, &u.body.schedule).expect("inputs");
                (prover::format::decode_proof(&u.body.proof).expect("proof"), inputs)
            })
            .collect();
        let batch: Vec<prover::BatchItem> = items.iter().map(|(p, i)| prover::BatchItem { public_inputs: i, proof: p }).collect();
        let t = Instant::now();
        let report = prover::batch_verify(&vk, &batch, &mut ChaCha20Rng::seed_from_u64(1));
        assert!(report.invalid.is_empty());
        t.elapsed().as_secs_f64() * 1000.0
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut submit_s = 0.0;
    let result = rt.block_on(async {
        let running = verifier_node::host::start_local(&dir, &dir.join("keys"), &genesis_entry, &validator_keys, args.port, args.port + 100).await.expect("validators start");
        let addr = |p: u16| -> std::net::SocketAddr { std::net::SocketAddr::from(([127, 0, 0, 1], p)) };
        let endpoint = protocol::net::client_endpoint("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        // One connection per device per validator (a validator checks the sender's key).
        let mut conns: Vec<Vec<ValidatorClient>> = vec![];
        for (key, _) in &devices {
            let mut per = vec![];
            for v in 0..args.validators {
                per.push(ValidatorClient::connect(&endpoint, addr(args.port + v), validator_keys[v as usize].verifying_key().to_bytes(), key).await.expect("connect"));
            }
            conns.push(per);
        }
        let conns = Arc::new(conns);
        let submit_all = |reqs: Vec<DeviceRequest>| {
            let conns = conns.clone();
            async move {
                let mut set = tokio::task::JoinSet::new();
                for (d, req) in reqs.into_iter().enumerate() {
                    let conns = conns.clone();
                    set.spawn(async move {
                        let mut ok = 0;
                        for c in &conns[d] {
                            if matches!(c.submit(&req).await, Ok(DeviceResponse::Accepted)) {
                                ok += 1;
                            }
                        }
                        ok
                    });
                }
                let mut accepted = 0;
                while let Some(r) = set.join_next().await {
                    accepted += r.expect("task");
                }
                accepted
            }
        };
        let accepted = submit_all(enrollments.into_iter().map(DeviceRequest::Enroll).collect()).await;
        eprintln!("enrollments accepted: {accepted} of {}", args.devices * args.validators as usize);
        let watcher = SigningKey::from_bytes(&[250; 32]);
        let sub = ValidatorClient::connect(&endpoint, addr(args.port), validator_keys[0].verifying_key().to_bytes(), &watcher).await.expect("connect");
        let mut rx = sub.subscribe(0).await.expect("subscribe");
        let mut enrolled = 0usize;
        let mut submitted = false;
        let deadline = close + iteration_ms;
        let mut latency_ms = None;
        let mut included = 0;
        while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            let c = item.expect("entry");
            match &c.entry.body {
                Body::Enrollment(list) => {
                    enrolled += list.len();
                    if enrolled == args.devices && !submitted {
                        submitted = true;
                        let t = Instant::now();
                        let ok = submit_all(updates.iter().cloned().map(DeviceRequest::Update).collect()).await;
                        submit_s = t.elapsed().as_secs_f64();
                        eprintln!("updates accepted: {ok} in {submit_s:.2} s");
                    }
                }
                Body::Iteration(b) => {
                    latency_ms = Some(protocol::net::now_ms().saturating_sub(deadline));
                    included = b.updates.len();
                    break;
                }
                _ => {}
            }
        }
        for r in running {
            let _ = r.stop().await;
        }
        (latency_ms, included)
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (Some(latency_ms), included) = result else {
        eprintln!("baseline batch verification of {} proofs: {baseline_ms:.0} ms", args.devices);
        eprintln!("no iteration entry committed");
        std::process::exit(1);
    };
    let baseline_rate = args.devices as f64 / (baseline_ms / 1000.0);
    println!("devices {} validators {} T {}", args.devices, args.validators, args.slots);
    println!("iteration 1: {included} proven updates; deadline → committed at a subscriber: {latency_ms} ms");
    println!("baseline, same run: one in-process batch verification of the {} proofs: {baseline_ms:.0} ms ({baseline_rate:.0} proofs/s; latency / baseline = {:.1})", args.devices, latency_ms as f64 / baseline_ms);
    println!("submissions: {} (each device to each validator) admitted and pre-verified in {submit_s:.2} s ({:.0} per second per validator)", args.devices * args.validators as usize, args.devices as f64 / submit_s);
    if let Some(path) = args.json {
        let v = serde_json::json!({
            "devices": args.devices, "validators": args.validators, "slots": args.slots,
            "included": included, "deadline_to_commit_ms": latency_ms, "baseline_batch_verify_ms": baseline_ms, "batch_verify_proofs_per_s": baseline_rate, "submit_s": submit_s,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&v).expect("json")).expect("write json");
    }
}
