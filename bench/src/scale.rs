//! The end-to-end scaling scenario behind BENCHMARKS.md's growth table: V validators, each its
//! own process (`bench validator`: QUIC on loopback, RocksDB, Malachite consensus), N devices
//! driven from this process, and one real gateway process (`bench gateway`: the `device`
//! agent, light client and prover) in the same market.
//!
//! The devices enroll, then submit one proven update each for iteration 1. Measured: the time
//! from iteration 1's deadline to the committed entry reaching a subscriber; the rate at which
//! each validator admits and pre-verifies submissions; the peak RSS of every validator and of
//! the gateway; and, as the in-process baseline of the same run, one batch verification of all
//! N proofs.
//!
//! Proving N proofs would dominate the run (10,000 × 83 ms), and the validators' cost does not
//! depend on how proofs were made: the devices share [`DISTINCT`] openings and proofs, and each
//! device sends its own re-randomized copy ([`prover::rerandomize`]), so every submission
//! carries a distinct, valid proof that is verified for real.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use circuits::{commitment, sample, Context, Fr, ModelKind, Opening, Shape, Slots};
use ed25519_dalek::SigningKey;
use protocol::codec::FieldElement;
use protocol::entry::{chain_id, Body, Entry, Genesis, GridSpec, MarketSpec};
use protocol::ids::{DeviceId, ValidatorId};
use protocol::messages::{DeviceRequest, DeviceResponse, Enrollment, SignedEnrollment, SignedUpdate, Update};
use protocol::net::ValidatorClient;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Distinct openings and proofs the devices share (each device re-randomizes its copy).
pub const DISTINCT: usize = 32;
/// Device tasks in flight at once while submitting.
const IN_FLIGHT: usize = 256;
/// Handshakes in flight at once (more overflow loopback UDP buffers, and lost handshake
/// packets wait for a retransmission timeout).
const CONNECTING: usize = 8;

/// One scenario: how many devices and validators, at how many slots.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Scenario {
    /// Devices driven from the benchmark process (the gateway comes on top).
    pub devices: usize,
    /// Validators, each a process.
    pub validators: u16,
    /// Slots T (Deferrable devices).
    pub slots: usize,
    /// First QUIC port (HTTP uses +100).
    pub port: u16,
}

/// What a validator process reports when it stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ValidatorReport {
    /// Peak resident set (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// Update proofs verified in committed iteration entries.
    pub proofs_verified: u64,
    /// Entries committed by this validator's consensus.
    pub commits: u64,
    /// Submissions refused, by reason.
    pub rejects: std::collections::BTreeMap<String, u64>,
}

/// What the gateway process reports when the market is final.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GatewayReport {
    /// Peak resident set (VmHWM), KiB.
    pub peak_rss_kib: u64,
}

/// The figures of one scenario run (the JSON files under `bench/results/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleResult {
    /// The scenario.
    pub scenario: Scenario,
    /// When (RFC 3339, UTC).
    pub date: String,
    /// Updates in the iteration-1 entry (N devices + the gateway).
    pub included: usize,
    /// Iteration 1's deadline → committed entry at a subscriber, ms.
    pub deadline_to_commit_ms: u64,
    /// Baseline in the same run: one in-process batch verification of the N proofs, ms.
    pub baseline_batch_verify_ms: f64,
    /// Submissions (N per validator) admitted and pre-verified per second per validator.
    pub admitted_per_s_per_validator: f64,
    /// Proofs per second of the in-process batch verification.
    pub batch_verify_proofs_per_s: f64,
    /// Size of the committed iteration entry (canonical encoding), bytes.
    pub entry_bytes: usize,
    /// Bytes each validator sent its peers between iteration 1's deadline and the commit
    /// (`gridproof_peer_sent_bytes_total`, all kinds, scraped from its `/metrics`).
    #[serde(default)]
    pub peer_bytes: Vec<u64>,
    /// One report per validator.
    pub validators: Vec<ValidatorReport>,
    /// The gateway.
    pub gateway: GatewayReport,
    /// Wall time of the whole scenario, s.
    pub wall_s: f64,
}

impl ScaleResult {
    /// The most and the mean bytes a validator sent for iteration 1 (0 when not measured).
    pub fn peer_bytes_max_mean(&self) -> (u64, f64) {
        let max = self.peer_bytes.iter().copied().max().unwrap_or(0);
        (max, self.peer_bytes.iter().sum::<u64>() as f64 / self.peer_bytes.len().max(1) as f64)
    }

    /// The largest peak RSS among the validators, KiB.
    pub fn max_validator_rss_kib(&self) -> u64 {
        self.validators.iter().map(|v| v.peak_rss_kib).max().unwrap_or(0)
    }
}

/// Peak resident set size of this process (VmHWM), KiB; 0 where /proc is not available.
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

/// The validators' keys (deterministic: benchmarks only).
pub fn validator_keys(n: u16) -> Vec<SigningKey> {
    (0..n).map(|i| SigningKey::from_bytes(&[200 + i as u8; 32])).collect()
}

fn genesis_path(dir: &Path) -> PathBuf {
    dir.join("genesis.bin")
}

/// `bench validator`: runs validator `index` of the scenario in `dir` until standard input
/// closes, then prints its [`ValidatorReport`] as one JSON line.
pub fn validator_process(dir: &Path, index: u16, validators: u16, port: u16) -> Result<(), String> {
    let bytes = std::fs::read(genesis_path(dir)).map_err(|e| format!("{}: {e}", genesis_path(dir).display()))?;
    let genesis: Entry = protocol::codec::decode("genesis", &bytes, protocol::net::MAX_ENTRY_FRAME).map_err(|e| e.to_string())?;
    let cfg = verifier_node::host::local_configs(dir, &dir.join("keys"), &genesis, &validator_keys(validators), port, port + 100)?
        .into_iter()
        .nth(index as usize)
        .ok_or(format!("no validator {index} of {validators}"))?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let running = verifier_node::host::start(cfg).await.map_err(|e| e.to_string())?;
        let shared = running.shared.clone();
        // Standard input closing is the signal to stop.
        tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut vec![])).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        let stats = shared.snapshot.read().expect("snapshot").stats.clone();
        running.stop().await.map_err(|e| e.to_string())?;
        let report = ValidatorReport {
            peak_rss_kib: peak_rss_kib(),
            proofs_verified: stats.proofs_verified,
            commits: stats.commits,
            rejects: stats.rejects.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
        Ok(())
    })
}

/// `bench gateway`: runs the gateway of `dir/gateway.toml` through the market (no MQTT), then
/// prints its [`GatewayReport`] as one JSON line.
pub fn gateway_process(dir: &Path) -> Result<(), String> {
    let mut gw = device::config::Gateway::load(&dir.join("gateway.toml")).map_err(|e| e.to_string())?;
    gw.self_attest(&crate::authority()).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let opts =
        device::host::RunOptions { within: Some(Duration::from_secs(1800)), enroll_only: false, execute: false, stop_on_signal: false, markets: Some(1), checkpoint: None };
    rt.block_on(device::host::run_gateway(&gw, opts)).map_err(|e| e.to_string())?;
    println!("{}", serde_json::to_string(&GatewayReport { peak_rss_kib: peak_rss_kib() }).map_err(|e| e.to_string())?);
    Ok(())
}

/// A child process of this binary that reports one JSON line on standard output.
struct Reporter(Child);

impl Reporter {
    fn spawn(exe: &Path, args: &[String]) -> Result<Reporter, String> {
        let child = Command::new(exe).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().map_err(|e| format!("{}: {e}", exe.display()))?;
        Ok(Reporter(child))
    }

    /// Closes its standard input (the stop signal of a validator), then reads its report.
    fn finish<T: serde::de::DeserializeOwned>(mut self, what: &str) -> Result<T, String> {
        drop(self.0.stdin.take());
        let out = self.0.stdout.take().ok_or("no stdout")?;
        let line = std::io::BufReader::new(out).lines().map_while(Result::ok).last().unwrap_or_default();
        let status = self.0.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("{what} exited with {status}"));
        }
        serde_json::from_str(&line).map_err(|e| format!("{what}'s report {line:?}: {e}"))
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one scenario with children of `exe` (this binary), in a temporary directory.
pub fn run(s: Scenario, exe: &Path) -> Result<ScaleResult, String> {
    let started = Instant::now();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let slots = Slots::new(s.slots).map_err(|e| e.to_string())?;
    let shape = Shape { kind: ModelKind::Deferrable, slots };
    let (pk, vk) = crate::keys(ModelKind::Deferrable, s.slots);
    let dir = std::env::temp_dir().join(format!("gridproof-scale-{}-{}-{}", s.devices, s.validators, std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cleanup = TempDir(dir.clone());
    let vk_bytes = vk.to_bytes();
    std::fs::write(dir.join("keys/deferrable.vk"), &vk_bytes).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(format!("keys/deferrable-{}.pk", s.slots)), pk.to_bytes()).map_err(|e| e.to_string())?;

    // DISTINCT openings and proofs (proofs do not depend on the chain, only signatures do).
    let distinct = s.devices.min(DISTINCT);
    let t = Instant::now();
    let openings: Vec<Opening> = (0..distinct)
        .map(|i| Opening { params: sample::params(ModelKind::Deferrable, slots), cost_digest: Fr::from(1u64), salt: Fr::from(i as u64 + 7) })
        .collect();
    let proven: Vec<(Vec<i32>, prover::UpdateProof)> = openings
        .par_iter()
        .enumerate()
        .map(|(i, opening)| {
            let witness = circuits::Witness {
                opening: opening.clone(),
                context: Context { market_id: 1, iteration: 1, shape },
                limits: circuits::nameplate::fitting(&opening.params),
                schedule: sample::schedule(ModelKind::Deferrable, slots, i as u16),
            };
            let (proof, _) = prover::prove(&pk, witness.clone(), &mut ChaCha20Rng::seed_from_u64(i as u64)).expect("a sample witness proves");
            (witness.schedule, proof)
        })
        .collect();
    let keys: Vec<SigningKey> = (0..s.devices)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            SigningKey::from_bytes(&seed)
        })
        .collect();
    let proofs: Vec<prover::UpdateProof> =
        (0..s.devices).into_par_iter().map(|i| prover::rerandomize(&vk, &proven[i % distinct].1, &mut ChaCha20Rng::seed_from_u64(1000 + i as u64))).collect();
    // Device i's commitment and public inputs are those of its opening, i mod DISTINCT.
    let commitments: Vec<Fr> = openings.iter().map(commitment).collect();
    let context = Context { market_id: 1, iteration: 1, shape };
    let inputs: Vec<Vec<Fr>> = proven
        .iter()
        .zip(&commitments)
        .zip(&openings)
        .map(|(((schedule, _), c), o)| {
            circuits::public_inputs(*c, &context, &circuits::nameplate::fitting(&o.params), schedule).expect("inputs of a proven witness")
        })
        .collect();
    eprintln!("{distinct} proofs, {} re-randomized copies in {:.1} s", s.devices, t.elapsed().as_secs_f64());

    // The market: registration and the iteration window grow with the submissions to make.
    let validator_keys = validator_keys(s.validators);
    let submissions = (s.devices * s.validators as usize) as u64;
    let now = protocol::net::now_ms();
    // Registration fits the handshakes (500–1,400 per second on 2 cores), the enrollments,
    // one enrollment entry per iteration window (at most 4,096 enrollments each) and the
    // updates (about 2,000 per second), with room to spare: the updates go in before it closes.
    let iteration_ms = 10_000;
    let close = now + 40_000 + 4 * submissions;
    let genesis = Genesis {
        validators: validator_keys.iter().map(|k| ValidatorId(k.verifying_key().to_bytes())).collect(),
        max_clock_drift_ms: 2000,
        market: MarketSpec {
            market_id: 1,
            slots: s.slots as u16,
            slot_seconds: 900,
            rho: circuits::fixed::Fixed::from_f64("rho", 0.02).expect("finite").raw(),
            eps_abs: circuits::fixed::Fixed::ONE.raw(),
            eps_rel: circuits::fixed::Fixed::from_f64("eps", 1e-3).expect("finite").raw(),
            max_iterations: 1,
            grid: GridSpec::ValleyFilling { gamma: 1000, base_load: vec![100_000; s.slots] },
            registration_close_ms: close,
            iteration_ms,
            execution_start_ms: close + 2 * iteration_ms + 60_000,
            settlement: None,
            compressed_slot_ms: None,
        },
        verifying_keys: vec![verifier_node::config::key_hash(&vk, &vk_bytes)],
        enrollment_authorities: vec![protocol::membership::AuthorityId(crate::authority().verifying_key().to_bytes())],
        market_operators: vec![],
    };
    let chain = chain_id(&genesis);
    let span = protocol::membership::market_span(&genesis.market);
    let genesis_entry = Entry::genesis(genesis, now);
    std::fs::write(genesis_path(&dir), protocol::codec::encode(&genesis_entry)).map_err(|e| e.to_string())?;
    write_gateway(&dir, s)?;

    let updates: Vec<SignedUpdate> = keys
        .iter()
        .zip(&proofs)
        .enumerate()
        .map(|(i, (key, proof))| {
            let body = Update {
                market_id: 1,
                iteration: 1,
                device: DeviceId(key.verifying_key().to_bytes()),
                schedule: proven[i % distinct].0.clone(),
                proof: prover::format::encode_proof(proof),
            };
            SignedUpdate::new(key, &chain, body)
        })
        .collect();
    let enrollments: Vec<SignedEnrollment> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let body = Enrollment {
                market_id: 1,
                device: DeviceId(key.verifying_key().to_bytes()),
                kind: 1,
                slots: s.slots as u16,
                commitment: FieldElement::new(&commitments[i % distinct]),
                attestation: protocol::membership::attest(
                    &crate::authority(),
                    &chain,
                    DeviceId(key.verifying_key().to_bytes()),
                    &openings[i % distinct].params,
                    900,
                    "bench",
                    span,
                ),
            };
            SignedEnrollment::new(key, &chain, body)
        })
        .collect();

    // Baseline in the same run: one batch verification of the N proofs in this process.
    let baseline_ms = {
        let batch: Vec<prover::BatchItem> =
            proofs.iter().enumerate().map(|(i, p)| prover::BatchItem { public_inputs: &inputs[i % distinct], proof: p }).collect();
        let t = Instant::now();
        let report = prover::batch_verify(&vk, &batch, &mut ChaCha20Rng::seed_from_u64(1));
        if !report.invalid.is_empty() {
            return Err(format!("{} of the benchmark's proofs are invalid", report.invalid.len()));
        }
        t.elapsed().as_secs_f64() * 1000.0
    };

    let dir_arg = dir.display().to_string();
    let mut children = vec![];
    for i in 0..s.validators {
        let args = ["validator", "--dir", &dir_arg, "--index", &i.to_string(), "--validators", &s.validators.to_string(), "--port", &s.port.to_string()]
            .map(String::from);
        children.push(Reporter::spawn(exe, &args)?);
    }
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let mut gateway = None;
    let measured = rt.block_on(async {
        protocol::net::install_crypto();
        let endpoint = protocol::net::client_endpoint("127.0.0.1:0".parse().expect("addr")).map_err(|e| e.to_string())?;
        let port = s.port;
        let addr = move |v: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port + v));
        // The validators are up once the watcher connects. The watcher has an endpoint of its
        // own, as a subscribing gateway would: the devices' endpoint drives 4N connections, and
        // a commit read through it waits behind their traffic.
        let watcher = SigningKey::from_bytes(&[250; 32]);
        let watch_endpoint = protocol::net::client_endpoint("127.0.0.1:0".parse().expect("addr")).map_err(|e| e.to_string())?;
        let mut sub = None;
        for _ in 0..200 {
            if let Ok(c) = ValidatorClient::connect(&watch_endpoint, addr(0), validator_keys[0].verifying_key().to_bytes(), &watcher).await {
                sub = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let sub = sub.ok_or("validator 0 did not come up")?;
        let mut rx = sub.subscribe(0).await.map_err(|e| e.to_string())?;
        gateway = Some(Reporter::spawn(exe, &["gateway".into(), "--dir".into(), dir_arg.clone()])?);

        // One connection per device per validator (a validator checks the sender's key).
        let t = Instant::now();
        let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
        let mut set = tokio::task::JoinSet::new();
        for (d, key) in keys.iter().enumerate() {
            let (endpoint, key, limit) = (endpoint.clone(), key.clone(), connecting.clone());
            let vkeys: Vec<[u8; 32]> = validator_keys.iter().map(|k| k.verifying_key().to_bytes()).collect();
            set.spawn(async move {
                let _permit = limit.acquire().await.expect("semaphore");
                let mut per = vec![];
                for (v, vkey) in vkeys.into_iter().enumerate() {
                    // A handshake whose packets were dropped times out: try again.
                    let mut attempt = 0;
                    let client = loop {
                        match ValidatorClient::connect(&endpoint, addr(v as u16), vkey, &key).await {
                            Ok(c) => break c,
                            Err(e) if attempt >= 4 => return Err(e.to_string()),
                            Err(_) => attempt += 1,
                        }
                    };
                    per.push(client);
                }
                Ok::<_, String>((d, per))
            });
        }
        let mut conns: Vec<Vec<ValidatorClient>> = (0..s.devices).map(|_| vec![]).collect();
        while let Some(r) = set.join_next().await {
            let (d, per) = r.map_err(|e| e.to_string())??;
            conns[d] = per;
        }
        eprintln!("{} connections in {:.1} s", submissions, t.elapsed().as_secs_f64());
        let conns = Arc::new(conns);
        let limit = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        // Sends each device's request to every validator; counts acceptances and keeps the
        // first refusal to show.
        let submit_all = |reqs: Vec<DeviceRequest>| {
            let (conns, limit) = (conns.clone(), limit.clone());
            async move {
                let mut set = tokio::task::JoinSet::new();
                for (d, req) in reqs.into_iter().enumerate() {
                    let (conns, limit) = (conns.clone(), limit.clone());
                    set.spawn(async move {
                        let _permit = limit.acquire().await.expect("semaphore");
                        let (mut ok, mut refusal) = (0u64, None);
                        for c in &conns[d] {
                            match c.submit(&req).await {
                                Ok(DeviceResponse::Accepted) => ok += 1,
                                other => refusal = Some(format!("{}: {other:?}", c.addr())),
                            }
                        }
                        (ok, refusal)
                    });
                }
                let (mut accepted, mut refusal) = (0u64, None);
                while let Some(r) = set.join_next().await {
                    let (ok, why) = r.unwrap_or((0, Some("task failed".into())));
                    accepted += ok;
                    refusal = refusal.or(why);
                }
                if let Some(why) = &refusal {
                    eprintln!("  first refusal: {why}");
                }
                accepted
            }
        };
        let t = Instant::now();
        let accepted = submit_all(enrollments.into_iter().map(DeviceRequest::Enroll).collect()).await;
        eprintln!("enrollments accepted: {accepted} of {submissions} in {:.1} s", t.elapsed().as_secs_f64());
        if protocol::net::now_ms() >= close {
            return Err(format!("enrolling took past the registration close ({} ms)", close - now));
        }
        // The updates go out once every device and the gateway are enrolled, or a second after
        // the registration closed (whatever is enrolled by then is the market).
        let mut enrolled = 0usize;
        let mut admit_s = None;
        let deadline = close + iteration_ms;
        let submit_at = tokio::time::Instant::now() + Duration::from_millis(close + 1000 - protocol::net::now_ms().min(close));
        let deadline_at = tokio::time::Instant::now() + Duration::from_millis(deadline.saturating_sub(protocol::net::now_ms()));
        let sent_so_far = || (0..s.validators).map(|i| peer_sent_bytes(port, i)).collect::<Result<Vec<u64>, String>>();
        let mut at_deadline: Option<Vec<u64>> = None;
        loop {
            let item = tokio::select! {
                _ = tokio::time::sleep_until(deadline_at), if at_deadline.is_none() => {
                    at_deadline = Some(sent_so_far()?);
                    continue;
                }
                item = tokio::time::timeout(Duration::from_secs(600), rx.recv()) => item,
                _ = tokio::time::sleep_until(submit_at), if admit_s.is_none() => {
                    admit_s = Some(0.0);
                    continue_submit(&submit_all, &updates, &mut admit_s, enrolled, s.devices, submissions, deadline).await?;
                    continue;
                }
            };
            let Ok(Some(item)) = item else { break };
            let c = item.map_err(|e| e.to_string())?;
            match &c.entry.body {
                Body::Enrollment(list) => {
                    enrolled += list.enrollments.len();
                    if enrolled > s.devices && admit_s.is_none() {
                        admit_s = Some(0.0);
                        continue_submit(&submit_all, &updates, &mut admit_s, enrolled, s.devices, submissions, deadline).await?;
                    }
                }
                Body::Iteration(b) => {
                    let latency = protocol::net::now_ms().saturating_sub(deadline);
                    // The commit reaches every validator within milliseconds of this one.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let before = at_deadline.clone().ok_or("the entry committed before its deadline")?;
                    let peer_bytes = sent_so_far()?.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).collect();
                    return Ok((latency, b.updates.len(), protocol::codec::encode(&c.entry).len(), admit_s.unwrap_or(0.0), peer_bytes));
                }
                _ => {}
            }
        }
        Err("no iteration entry committed".to_string())
    });
    drop(rt);
    let (deadline_to_commit_ms, included, entry_bytes, admit_s, peer_bytes) = measured?;
    let gateway = gateway.ok_or("no gateway")?.finish::<GatewayReport>("the gateway")?;
    let validators = children.into_iter().enumerate().map(|(i, c)| c.finish::<ValidatorReport>(&format!("validator {i}"))).collect::<Result<Vec<_>, _>>()?;
    drop(cleanup);
    Ok(ScaleResult {
        scenario: s,
        date,
        included,
        deadline_to_commit_ms,
        baseline_batch_verify_ms: baseline_ms,
        admitted_per_s_per_validator: s.devices as f64 / admit_s.max(1e-9),
        batch_verify_proofs_per_s: s.devices as f64 / (baseline_ms / 1000.0),
        entry_bytes,
        peer_bytes,
        validators,
        gateway,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// Bytes validator `index` has sent its peers, over all message kinds, read from its
/// `/metrics` (HTTP at `port + 100 + index`).
fn peer_sent_bytes(port: u16, index: u16) -> Result<u64, String> {
    use std::io::Write;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port + 100 + index));
    let err = |e: std::io::Error| format!("validator {index} metrics at {addr}: {e}");
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(err)?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").map_err(err)?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(err)?;
    let mut total = 0u64;
    for line in text.lines().filter(|l| l.starts_with("gridproof_peer_sent_bytes_total{")) {
        let value = line.rsplit(' ').next().unwrap_or_default();
        total += value.parse::<u64>().map_err(|e| format!("validator {index} metrics: {line:?}: {e}"))?;
    }
    Ok(total)
}

/// Submits every update (timed into `admit_s`); an error if that ran past the deadline.
async fn continue_submit<F, Fut>(
    submit_all: &F,
    updates: &[SignedUpdate],
    admit_s: &mut Option<f64>,
    enrolled: usize,
    devices: usize,
    submissions: u64,
    deadline: u64,
) -> Result<(), String>
where
    F: Fn(Vec<DeviceRequest>) -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    eprintln!("{enrolled} of {} enrolled; submitting updates", devices + 1);
    let t = Instant::now();
    let ok = submit_all(updates.iter().cloned().map(DeviceRequest::Update).collect()).await;
    *admit_s = Some(t.elapsed().as_secs_f64());
    eprintln!("updates accepted: {ok} of {submissions} in {:.2} s", t.elapsed().as_secs_f64());
    if protocol::net::now_ms() >= deadline {
        return Err("submitting took past the iteration deadline".to_string());
    }
    Ok(())
}

/// A gateway with one EV (Deferrable) on the scenario's validators.
fn write_gateway(dir: &Path, s: Scenario) -> Result<(), String> {
    std::fs::write(dir.join("gw.key"), protocol::ids::hex(&[7u8; 32])).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("gateway.toml"), crate::gateway_toml(s.validators, s.port, &format!("[[0, {}]]", s.slots))).map_err(|e| e.to_string())
}

/// Removes the scenario's directory when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
