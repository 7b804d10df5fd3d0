//! Process-level fixtures: a cluster of real `verifier-node` processes on loopback, made by
//! `verifier-node init`, and devices that enroll, prove and submit over QUIC.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use circuits::{commitment, sample, Context, Fr, ModelKind, Opening, Shape, Slots};
use ed25519_dalek::SigningKey;
use protocol::codec::FieldElement;
use protocol::entry::{Body, Certified, Entry, LightClient};
use protocol::ids::DeviceId;
use protocol::messages::{DeviceRequest, DeviceResponse, Enrollment, SignedEnrollment, SignedUpdate, Update};
use protocol::net::ValidatorClient;
use protocol::sign::ChainId;
use prover::UpdateProvingKey;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub const T: usize = 4;
pub const BIN: &str = env!("CARGO_BIN_EXE_verifier-node");

pub struct Cluster {
    pub dir: PathBuf,
    pub n: u16,
    pub quic_port: u16,
    pub http_port: u16,
    pub procs: std::sync::Mutex<Vec<Option<Child>>>,
    pub pk: UpdateProvingKey,
    pub genesis: Entry,
    /// The local enrollment authority `init` made.
    pub authority: SigningKey,
}

/// Ports unlikely to collide between tests running at once: a block per (test, process).
pub fn ports(salt: u16) -> (u16, u16) {
    let base = 20_000 + (std::process::id() as u16 % 400) * 50 + salt * 10;
    (base, base + 5)
}

impl Cluster {
    /// Makes keys (T = 4, deferrable) and a cluster of `n` validators with `init`.
    pub fn init(name: &str, n: u16, salt: u16, registration_s: u64, iteration_ms: u64, max_iterations: u32) -> Cluster {
        Cluster::init_with(name, n, salt, registration_s, iteration_ms, max_iterations, &["--slot-seconds", "900"])
    }

    /// [`Cluster::init`] with more `init` arguments (`extra` must give `--slot-seconds`).
    pub fn init_with(name: &str, n: u16, salt: u16, registration_s: u64, iteration_ms: u64, max_iterations: u32, extra: &[&str]) -> Cluster {
        let dir = std::env::temp_dir().join(format!("gridproof-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        let shape = Shape { kind: ModelKind::Deferrable, slots: Slots::new(T).unwrap() };
        let (pk, vk) = prover::setup(shape, &mut ChaCha20Rng::seed_from_u64(5)).unwrap();
        std::fs::write(dir.join("keys/deferrable-4.vk"), vk.to_bytes()).unwrap();
        let (quic_port, http_port) = ports(salt);
        let out = Command::new(BIN)
            .args(["init", "--out"])
            .arg(dir.join("cluster"))
            .args(["--validators", &n.to_string(), "--keys"])
            .arg(dir.join("keys"))
            .args(["--slots", "4", "--devices", "3"])
            .args(extra)
            .args(["--registration-s", &registration_s.to_string(), "--iteration-ms", &iteration_ms.to_string()])
            .args(["--max-iterations", &max_iterations.to_string()])
            .args(["--quic-port", &quic_port.to_string(), "--http-port", &http_port.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        let genesis = verifier_node::config::read_genesis(&dir.join("cluster/genesis.bin")).unwrap();
        let authority = protocol::files::read_key(&dir.join("cluster/authority.key")).unwrap();
        Cluster { dir, n, quic_port, http_port, procs: std::sync::Mutex::new((0..n).map(|_| None).collect()), pk, genesis, authority }
    }

    pub fn config(&self, i: u16) -> PathBuf {
        self.dir.join(format!("cluster/node{i}.toml"))
    }

    pub fn db(&self, i: u16) -> PathBuf {
        self.dir.join(format!("cluster/db{i}"))
    }

    pub fn start(&self, i: u16) {
        self.start_with(i, &[]);
    }

    /// Starts validator `i` with more arguments to `run` (`--checkpoint H:HASH`).
    pub fn start_with(&self, i: u16, args: &[&str]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("node{i}.log"))).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(self.config(i))
            .args(args)
            .env("RUST_LOG", "info,arc_malachitebft_core_consensus=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.lock().unwrap()[i as usize] = Some(child);
    }

    fn running(&self, i: u16) -> bool {
        self.procs.lock().unwrap()[i as usize].is_some()
    }

    pub fn start_all(&self) {
        for i in 0..self.n {
            self.start(i);
        }
    }

    /// kill -9.
    pub fn kill(&self, i: u16) {
        let child = self.procs.lock().unwrap()[i as usize].take();
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, i: u16, sig: &str) {
        let pid = self.pid(i);
        assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    }

    pub fn pid(&self, i: u16) -> u32 {
        self.procs.lock().unwrap()[i as usize].as_ref().unwrap().id()
    }

    pub fn stop_all(&self) {
        for i in 0..self.n {
            self.kill(i);
        }
    }

    pub fn quic(&self, i: u16) -> SocketAddr {
        format!("127.0.0.1:{}", self.quic_port + i).parse().unwrap()
    }

    pub fn http(&self, i: u16) -> SocketAddr {
        format!("127.0.0.1:{}", self.http_port + i).parse().unwrap()
    }

    pub fn validator_key(&self, i: u16) -> [u8; 32] {
        let Body::Genesis(g) = &self.genesis.body else { unreachable!() };
        g.validators[i as usize].0
    }

    pub fn chain(&self) -> ChainId {
        self.genesis.chain_id
    }

    pub fn log(&self, i: u16) -> String {
        std::fs::read_to_string(self.dir.join(format!("node{i}.log"))).unwrap_or_default()
    }

    /// GET `path` from validator `i`'s HTTP API; `None` if it does not answer.
    pub fn get(&self, i: u16, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&self.http(i), Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut r = String::new();
        s.read_to_string(&mut r).ok()?;
        r.split("\r\n\r\n").nth(1).map(str::to_string)
    }

    pub fn status(&self, i: u16) -> Option<serde_json::Value> {
        serde_json::from_str(&self.get(i, "/status")?).ok()
    }

    /// Waits until every running validator reports the final entry.
    pub fn wait_final(&self, within: Duration) {
        let t0 = Instant::now();
        loop {
            let done = (0..self.n).filter(|&i| self.running(i)).all(|i| self.status(i).is_some_and(|s| s["final"] == true));
            if done {
                return;
            }
            assert!(t0.elapsed() < within, "not final within {within:?}; logs:\n{}", (0..self.n).map(|i| self.log(i)).collect::<Vec<_>>().join("\n----\n"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every stored entry of every database (validators stopped), checked identical.
    pub fn assert_identical_logs(&self) -> usize {
        let mut logs = vec![];
        for i in 0..self.n {
            let store = verifier_node::store::Store::open(&self.db(i)).unwrap();
            let (tip, _) = store.tip().unwrap().unwrap();
            let entries: Vec<Vec<u8>> = (0..=tip).map(|h| protocol::codec::encode(&store.entry(h).unwrap().unwrap())).collect();
            logs.push(entries);
        }
        for i in 1..logs.len() {
            assert_eq!(logs[i], logs[0], "validator {i}'s entries differ from validator 0's");
        }
        logs[0].len()
    }

    /// `verifier-node audit --db` on validator `i`'s database.
    /// Audits every validator's database (stopped), asserting each passes; their outputs.
    pub fn audit_all(&self) -> Vec<String> {
        (0..self.n)
            .map(|i| {
                let (ok, out) = self.audit(i);
                assert!(ok, "audit of validator {i}: {out}");
                out
            })
            .collect()
    }

    pub fn audit(&self, i: u16) -> (bool, String) {
        self.audit_args(i, &[])
    }

    /// `verifier-node audit --db` on validator `i`'s database with more arguments
    /// (`--from H`, `--to H`).
    pub fn audit_args(&self, i: u16, args: &[&str]) -> (bool, String) {
        let out = Command::new(BIN).args(["audit", "--db"]).arg(self.db(i)).args(["--keys"]).arg(self.dir.join("keys")).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
        // Keep the directory (logs, databases) of a failed test for inspection.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A home device: key, committed parameters, a connection to every validator.
pub struct Device {
    pub key: SigningKey,
    pub opening: Opening,
    pub variant: u16,
}

impl Device {
    pub fn new(i: u8) -> Device {
        let slots = Slots::new(T).unwrap();
        Device {
            key: SigningKey::from_bytes(&[i + 1; 32]),
            opening: Opening { params: sample::params(ModelKind::Deferrable, slots), cost_digest: Fr::from(9u64), salt: Fr::from(100u64 + i as u64) },
            variant: i as u16,
        }
    }

    pub fn id(&self) -> DeviceId {
        DeviceId(self.key.verifying_key().to_bytes())
    }

    /// Its enrollment in `cluster`'s market, attested by the cluster's authority.
    pub fn enrollment(&self, cluster: &Cluster) -> SignedEnrollment {
        let Body::Genesis(g) = &cluster.genesis.body else { unreachable!() };
        self.bid(cluster, &g.market, &self.attestation(cluster, protocol::membership::market_span(&g.market)))
    }

    /// Its attestation by the cluster's authority, valid over `span` (ms).
    pub fn attestation(&self, cluster: &Cluster, span: (u64, u64)) -> protocol::membership::SignedAttestation {
        protocol::membership::attest(&cluster.authority, &cluster.chain(), self.id(), &self.opening.params, 900, "meter", span)
    }

    /// Its bid in market `m`: an enrollment with `attestation`.
    pub fn bid(&self, cluster: &Cluster, m: &protocol::entry::MarketSpec, attestation: &protocol::membership::SignedAttestation) -> SignedEnrollment {
        self.bid_on(&cluster.chain(), m, attestation)
    }

    /// Its bid in market `m` of chain `chain` with `attestation`.
    pub fn bid_on(&self, chain: &ChainId, m: &protocol::entry::MarketSpec, attestation: &protocol::membership::SignedAttestation) -> SignedEnrollment {
        let chain = *chain;
        let attestation = attestation.clone();
        let body = Enrollment {
            market_id: m.market_id,
            device: self.id(),
            kind: ModelKind::Deferrable.id(),
            slots: T as u16,
            commitment: FieldElement::new(&commitment(&self.opening)),
            attestation,
        };
        SignedEnrollment::new(&self.key, &chain, body)
    }

    pub fn update(&self, pk: &UpdateProvingKey, chain: &ChainId, market_id: u64, k: u32) -> SignedUpdate {
        let slots = Slots::new(T).unwrap();
        let shape = Shape { kind: ModelKind::Deferrable, slots };
        let witness = circuits::Witness {
            opening: self.opening.clone(),
            context: Context { market_id, iteration: k, shape },
            limits: circuits::nameplate::fitting(&self.opening.params),
            schedule: sample::schedule(ModelKind::Deferrable, slots, self.variant),
        };
        let (proof, _) = prover::prove(pk, witness.clone(), &mut ChaCha20Rng::seed_from_u64(k as u64)).unwrap();
        let body = Update { market_id, iteration: k, device: self.id(), schedule: witness.schedule, proof: prover::format::encode_proof(&proof) };
        SignedUpdate::new(&self.key, chain, body)
    }
}

/// Runs devices through a market: enroll with every validator, then after each entry that
/// opens iteration k, prove and submit to every validator. Returns the certified entries the
/// devices followed (checked as a light client) up to the final entry.
pub async fn run_devices(cluster: &Cluster, devices: &[Device], follow: u16, within: Duration) -> Vec<Certified> {
    protocol::net::install_crypto();
    let endpoint = protocol::net::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let chain = cluster.chain();
    let Body::Genesis(g) = &cluster.genesis.body else { unreachable!() };
    let market_id = g.market.market_id;
    let mut clients = vec![];
    for d in devices {
        let mut per = vec![];
        for i in 0..cluster.n {
            // Validators may still be starting: retry.
            let t0 = Instant::now();
            let c = loop {
                match ValidatorClient::connect(&endpoint, cluster.quic(i), cluster.validator_key(i), &d.key).await {
                    Ok(c) => break Some(c),
                    Err(_) if t0.elapsed() < Duration::from_secs(10) => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(_) => break None,
                }
            };
            per.push(c);
        }
        clients.push(per);
    }
    for (d, per) in devices.iter().zip(&clients) {
        let e = d.enrollment(cluster);
        for c in per.iter().flatten() {
            let r = c.submit(&DeviceRequest::Enroll(e.clone())).await;
            assert!(matches!(r, Ok(DeviceResponse::Accepted)), "enrollment at {}: {r:?}", c.addr());
        }
    }
    let watcher = SigningKey::from_bytes(&[200; 32]);
    let sub = ValidatorClient::connect(&endpoint, cluster.quic(follow), cluster.validator_key(follow), &watcher).await.unwrap();
    let mut rx = sub.subscribe(0).await.unwrap();
    let mut client = LightClient::new(&cluster.genesis).unwrap();
    let mut seen = vec![];
    let mut submitted = 0u32;
    let mut enrolled = std::collections::BTreeSet::new();
    let deadline = Instant::now() + within;
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await {
        let c = item.unwrap();
        if c.entry.height == 0 {
            assert_eq!(c.entry, cluster.genesis);
            seen.push(c);
            continue;
        }
        client.accept(&c.entry, &c.certificate).expect("every served entry is certified and linked");
        let next = match &c.entry.body {
            Body::Enrollment(list) => {
                enrolled.extend(list.enrollments.iter().map(|e| e.body.device));
                devices.iter().all(|d| enrolled.contains(&d.id())).then_some(1)
            }
            Body::Iteration(b) => Some(b.iteration + 1),
            _ => None,
        };
        let is_final = matches!(c.entry.body, Body::Final(_));
        seen.push(c);
        if is_final {
            break;
        }
        if let Some(k) = next.filter(|&k| k > submitted && k <= g.market.max_iterations) {
            submitted = k;
            for (d, per) in devices.iter().zip(&clients) {
                let u = d.update(&cluster.pk, &chain, market_id, k);
                for c in per.iter().flatten() {
                    let _ = c.submit(&DeviceRequest::Update(u.clone())).await;
                }
            }
        }
    }
    seen
}

pub fn scratch(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// The `device` binary of this workspace (built beside `verifier-node` by a workspace test run).
pub fn device_bin() -> PathBuf {
    let p = Path::new(BIN).with_file_name(format!("device{}", std::env::consts::EXE_SUFFIX));
    assert!(p.exists(), "{} is missing: run the tests with --workspace so the gateway binary is built", p.display());
    p
}

impl Cluster {
    /// A home gateway of one EV for this cluster's market: its proving key next to the
    /// verifying key, `gateway.toml` naming every validator, and `device init` run on it.
    /// Returns the configuration and the EV's device id (hex).
    pub fn gateway(&self, name: &str) -> (PathBuf, String) {
        self.gateway_with(name, "[[appliances]]\nname = \"ev\"\n[appliances.spec]\nmodel = \"deferrable\"\nmax_power_kw = 3.0\nenergy_min_kwh = 1.0\nenergy_max_kwh = 2.0\n")
    }

    /// [`Cluster::gateway`] with its own `[[appliances]]` (one deferrable appliance: the
    /// cluster has that proving key only).
    pub fn gateway_with(&self, name: &str, appliances: &str) -> (PathBuf, String) {
        std::fs::write(self.dir.join(format!("keys/deferrable-{T}.pk")), self.pk.to_bytes()).unwrap();
        let validators: String = (0..self.n).map(|i| format!("[[validators]]\nindex = {i}\naddr = \"{}\"\n\n", self.quic(i))).collect();
        let text = format!(
            "key_file = \"{name}.key\"\nstate_file = \"{name}.state.json\"\ngenesis_file = \"cluster/genesis.bin\"\nkeys_dir = \"keys\"\nattestations_file = \"{name}.attestations.json\"\nmeter_point = \"DE000{name}\"\n\n{validators}{appliances}"
        );
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(device_bin()).args(["init", "--config"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "device init: {}", String::from_utf8_lossy(&out.stderr));
        // The authority signs the request `init` wrote, with the real CLI.
        let attest = Command::new(BIN)
            .args(["attest", "--authority-key"])
            .arg(self.dir.join("cluster/authority.key"))
            .arg("--genesis")
            .arg(self.dir.join("cluster/genesis.bin"))
            .arg("--request")
            .arg(path.with_extension("attestation-request.json"))
            .arg("--out")
            .arg(self.dir.join(format!("{name}.attestations.json")))
            .output()
            .unwrap();
        assert!(attest.status.success(), "verifier-node attest: {}", String::from_utf8_lossy(&attest.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = stdout.split_whitespace().skip_while(|w| *w != "device").nth(1).expect("device id printed").to_string();
        (path, id)
    }

    /// Starts `device <args> --config <config>` (RUST_LOG=info), its log in `<dir>/<log>`.
    pub fn spawn_device(&self, config: &Path, args: &[&str], log: &str) -> Child {
        Command::new(device_bin())
            .args(args)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(log)).unwrap())
            .spawn()
            .unwrap()
    }

    /// Waits at most `within` for a process [`Self::spawn_device`] started to exit, and asserts
    /// it succeeded; returns its log.
    pub fn wait_device(&self, mut child: Child, log: &str, within: Duration) -> String {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(t0.elapsed() < within, "the gateway did not finish:\n{}", std::fs::read_to_string(self.dir.join(log)).unwrap());
            std::thread::sleep(Duration::from_millis(200));
        };
        let text = std::fs::read_to_string(self.dir.join(log)).unwrap();
        assert!(status.success(), "gateway failed ({status}):\n{text}");
        text
    }

    /// Every entry of validator `i`'s database (stopped).
    pub fn entries(&self, i: u16) -> Vec<Certified> {
        let store = verifier_node::store::Store::open(&self.db(i)).unwrap();
        let (tip, _) = store.tip().unwrap().unwrap();
        (0..=tip).map(|h| store.certified(h).unwrap().unwrap()).collect()
    }
}

/// Runs devices through every market of the chain as it comes: each device registers once
/// (one attestation covering `span`) and bids in the genesis market at once and in each
/// opened market when its `Open` entry arrives; after each entry that opens a market's
/// iteration k it proves and submits to every validator. Returns the certified entries
/// followed (light-client checked) once `markets` markets are final.
pub async fn run_markets(cluster: &Cluster, devices: &[Device], span: (u64, u64), markets: usize, follow: u16, within: Duration) -> Vec<Certified> {
    use std::collections::{BTreeMap, BTreeSet};
    protocol::net::install_crypto();
    let endpoint = protocol::net::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let chain = cluster.chain();
    let Body::Genesis(g) = &cluster.genesis.body else { unreachable!() };
    let mut clients = vec![];
    for d in devices {
        let mut per = vec![];
        for i in 0..cluster.n {
            let c = ValidatorClient::connect(&endpoint, cluster.quic(i), cluster.validator_key(i), &d.key).await.expect("validators are up");
            per.push(c);
        }
        clients.push(per);
    }
    let attestations: Vec<_> = devices.iter().map(|d| d.attestation(cluster, span)).collect();
    let bid = |spec: protocol::entry::MarketSpec| {
        let clients = &clients;
        let attestations = &attestations;
        async move {
            for ((d, per), a) in devices.iter().zip(clients).zip(attestations) {
                let e = d.bid(cluster, &spec, a);
                for c in per {
                    // A validator that has not applied the opening yet (it lags the one
                    // followed) answers unknown_market: ask again, as a gateway would.
                    let t0 = Instant::now();
                    let r = loop {
                        let r = c.submit(&DeviceRequest::Enroll(e.clone())).await;
                        match &r {
                            Ok(DeviceResponse::Rejected { label, .. }) if label == "unknown_market" && t0.elapsed() < Duration::from_secs(10) => {
                                tokio::time::sleep(Duration::from_millis(100)).await
                            }
                            _ => break r,
                        }
                    };
                    assert!(matches!(r, Ok(DeviceResponse::Accepted)), "bid in market {} at {}: {r:?}", spec.market_id, c.addr());
                }
            }
        }
    };
    bid(g.market.clone()).await;
    let mut specs: BTreeMap<u64, protocol::entry::MarketSpec> = BTreeMap::from([(g.market.market_id, g.market.clone())]);
    let watcher = SigningKey::from_bytes(&[200; 32]);
    let sub = ValidatorClient::connect(&endpoint, cluster.quic(follow), cluster.validator_key(follow), &watcher).await.unwrap();
    let mut rx = sub.subscribe(0).await.unwrap();
    let mut client = LightClient::new(&cluster.genesis).unwrap();
    let mut seen = vec![];
    let mut submitted: BTreeMap<u64, u32> = BTreeMap::new();
    let mut enrolled: BTreeMap<u64, BTreeSet<DeviceId>> = BTreeMap::new();
    let mut finals = 0;
    let deadline = Instant::now() + within;
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await {
        let c = item.unwrap();
        if c.entry.height == 0 {
            seen.push(c);
            continue;
        }
        client.accept(&c.entry, &c.certificate).expect("every served entry is certified and linked");
        let mut next = None;
        match &c.entry.body {
            Body::Open(o) => {
                specs.insert(o.market_id(), o.body.spec.clone());
                bid(o.body.spec.clone()).await;
            }
            Body::Enrollment(b) => {
                let set = enrolled.entry(b.market_id).or_default();
                set.extend(b.enrollments.iter().map(|e| e.body.device));
                next = devices.iter().all(|d| set.contains(&d.id())).then_some((b.market_id, 1));
            }
            Body::Iteration(b) => next = Some((b.market_id, b.iteration + 1)),
            Body::Final(_) => finals += 1,
            _ => {}
        }
        seen.push(c);
        if finals == markets {
            break;
        }
        let Some((m, k)) = next else { continue };
        let done = submitted.entry(m).or_default();
        if k > *done && k <= specs[&m].max_iterations {
            *done = k;
            for (d, per) in devices.iter().zip(&clients) {
                let u = d.update(&cluster.pk, &chain, m, k);
                for c in per {
                    let _ = c.submit(&DeviceRequest::Update(u.clone())).await;
                }
            }
        }
    }
    seen
}
