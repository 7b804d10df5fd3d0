//! Real `verifier-node` processes on loopback: a market to Final with identical databases
//! that audit clean; a validator killed with SIGKILL mid-market that catches up; a validator
//! frozen (SIGSTOP, a partition) and released; a validator of another genesis refused; and a
//! flood of 100,000 bad updates that is counted and leaves memory bounded; and the annotated
//! `examples/node.toml` against what `init` writes. `/metrics` is read by a Prometheus parser.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::*;
use protocol::entry::{Body, Certified};
use protocol::messages::{DeviceRequest, DeviceResponse};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn four_validators_run_a_market_to_final_and_every_database_audits_clean() {
    let c = Cluster::init("market", 4, 0, 4, 1500, 3);
    c.start_all();
    let devices: Vec<Device> = (0..3).map(Device::new).collect();
    let seen = rt().block_on(run_devices(&c, &devices, 2, Duration::from_secs(60)));
    assert!(matches!(seen.last().map(|c| &c.entry.body), Some(Body::Final(_))), "devices saw no final entry");
    let iterations: Vec<_> = seen.iter().filter_map(|c| if let Body::Iteration(b) = &c.entry.body { Some(b) } else { None }).collect();
    assert!(!iterations.is_empty());
    assert!(iterations.iter().any(|b| b.updates.len() == 3), "some iteration carries all three devices' proven updates");
    c.wait_final(Duration::from_secs(20));
    // The HTTP API serves what the log holds.
    let e: serde_json::Value = serde_json::from_str(&c.get(1, "/entries/1").unwrap()).unwrap();
    assert_eq!(e["height"], 1);
    let metrics = c.get(0, "/metrics").unwrap();
    assert!(metrics.contains("gridproof_height "), "{metrics}");
    // The market is over: nothing is pooled or waiting for verification.
    assert!(metrics.contains("gridproof_pooled_updates 0\n") && metrics.contains("gridproof_unverified_updates 0\n"), "{metrics}");
    // A Prometheus text-format parser reads the page; the histograms saw every commit here
    // and the batch verifications of the devices' proofs.
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string()))).unwrap();
    let observations = |name: &str| {
        let buckets = scrape.samples.iter().find(|s| s.metric == name).map(|s| s.value.clone());
        match buckets {
            Some(prometheus_parse::Value::Histogram(b)) => b.iter().find(|b| b.less_than.is_infinite()).map(|b| b.count).unwrap(),
            other => panic!("{name} is not a histogram: {other:?}\n{metrics}"),
        }
    };
    let commits: f64 = metrics.lines().find_map(|l| l.strip_prefix("gridproof_commits_total ")).unwrap().parse().unwrap();
    assert!(commits >= 1.0, "{metrics}");
    assert_eq!(observations("gridproof_commit_latency_seconds"), commits, "one latency per commit\n{metrics}");
    assert!(observations("gridproof_verify_batch_seconds") >= 1.0, "{metrics}");
    assert!(scrape.samples.iter().any(|s| s.metric == "gridproof_build_info" && s.labels.get("version") == Some(env!("CARGO_PKG_VERSION"))), "{metrics}");
    // An auditor fetches the log from a running validator over QUIC and replays it.
    let key = protocol::ids::hex(&c.validator_key(3));
    let out = std::process::Command::new(BIN)
        .args(["audit", "--peer", &c.quic(3).to_string(), "--validator-key", &key, "--genesis"])
        .arg(c.dir.join("cluster/genesis.bin"))
        .arg("--keys")
        .arg(c.dir.join("keys"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("verdict: PASS"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    c.stop_all();
    let n = c.assert_identical_logs();
    assert_eq!(n, seen.len());
    for out in c.audit_all() {
        assert!(out.contains("verdict: PASS"));
    }
}

/// A market on 1 s slots whose proofs every validator keeps for 0 s after execution: each
/// prunes them once the market executed; a validator whose database is wiped then syncs the
/// whole log from its peers, the pruned market by certificate, and every database audits.
#[test]
fn a_market_past_its_retention_is_pruned_and_a_wiped_validator_syncs_it_by_certificate() {
    let c = Cluster::init_with("prune", 4, 5, 4, 1500, 3, &["--slot-seconds", "1", "--execution-delay-s", "0"]);
    for i in 0..4 {
        let text = std::fs::read_to_string(c.config(i)).unwrap();
        assert!(text.contains("retention_s = 2592000"), "init writes 30 days: {text}");
        std::fs::write(c.config(i), text.replace("retention_s = 2592000", "retention_s = 0")).unwrap();
    }
    c.start_all();
    let devices: Vec<Device> = (0..3).map(Device::new).collect();
    let seen = rt().block_on(run_devices(&c, &devices, 2, Duration::from_secs(60)));
    assert!(matches!(seen.last().map(|c| &c.entry.body), Some(Body::Final(_))), "devices saw no final entry");
    let proofs: usize = seen.iter().map(|c| c.updates.len()).sum();
    assert!(proofs >= 3, "{proofs}");
    c.wait_final(Duration::from_secs(20));
    let Body::Genesis(g) = &c.genesis.body else { unreachable!() };
    let executed = protocol::market::execution_span(&g.market).1;
    let t0 = Instant::now();
    let pruned = |i| {
        c.get(i, "/metrics")
            .is_some_and(|m| m.contains("gridproof_pruned_markets_total 1\n") && m.contains(&format!("gridproof_pruned_bodies_total {proofs}\n")))
    };
    while !(0..4).all(pruned) {
        assert!(t0.elapsed() < Duration::from_secs(30), "not pruned (execution ends at {executed}); metrics: {:?}", c.get(0, "/metrics"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(protocol::net::now_ms() >= executed, "nothing is pruned before the market executed");
    assert!(c.log(1).contains("pruned the update bodies of a market past its retention"), "{}", c.log(1));
    let markets: serde_json::Value = serde_json::from_str(&c.get(2, "/markets").unwrap()).unwrap();
    assert!(markets.to_string().contains("\"pruned\":true"), "{markets}");
    // Validator 3 loses its database and starts again: it syncs every entry from its peers.
    c.kill(3);
    std::fs::remove_dir_all(c.db(3)).unwrap();
    c.start(3);
    c.wait_final(Duration::from_secs(30));
    c.stop_all();
    assert_eq!(c.assert_identical_logs(), seen.len());
    for out in c.audit_all() {
        assert!(out.contains("entries of pruned markets (link and certificate only)"), "{out}");
    }
}

#[test]
fn a_validator_killed_mid_market_catches_up_and_one_frozen_rejoins() {
    let c = Cluster::init("faults", 4, 1, 4, 1500, 4);
    c.start_all();
    let devices: Vec<Device> = (0..3).map(Device::new).collect();
    let runtime = rt();
    let seen = runtime.block_on(async {
        let market = run_devices(&c, &devices, 0, Duration::from_secs(90));
        let faults = async {
            // Mid-registration: kill -9 validator 3, restart it 3 s later.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            c.kill(3);
            tokio::time::sleep(Duration::from_secs(3)).await;
            c.start(3);
            // Mid-scheduling: freeze validator 2 (no traffic in or out), release 3 s later.
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.signal(2, "-STOP");
            tokio::time::sleep(Duration::from_secs(3)).await;
            c.signal(2, "-CONT");
        };
        let (seen, ()) = tokio::join!(market, faults);
        seen
    });
    assert!(matches!(seen.last().map(|c| &c.entry.body), Some(Body::Final(_))));
    c.wait_final(Duration::from_secs(30));
    c.stop_all();
    c.assert_identical_logs();
    c.audit_all();
}

#[test]
fn a_validator_of_another_genesis_is_refused_and_a_flood_is_counted_in_bounded_memory() {
    let c = Cluster::init("flood", 4, 2, 30, 1500, 3);
    c.start_all();
    // A validator of another chain (its own genesis and key) dials ours as a peer.
    let other = Cluster::init("stranger", 1, 3, 30, 1500, 3);
    let runtime = rt();
    runtime.block_on(async {
        protocol::net::install_crypto();
        let endpoint = protocol::net::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let stranger = verifier_node::config::read_key(&other.dir.join("cluster/validator0.key")).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Peer ALPN with a key outside the genesis: the connection is closed by the validator.
        let cfg = protocol::net::client_config(&stranger, c.validator_key(0), protocol::net::ALPN_PEER).unwrap();
        let conn = endpoint.connect_with(cfg, c.quic(0), "gridproof").unwrap().await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.expect("refused connections are closed");
        assert!(format!("{closed}").contains("not a validator"), "{closed}");

        // Malformed and oversize frames on a device connection get a counted refusal.
        let device_key = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        let cfg = protocol::net::client_config(&device_key, c.validator_key(1), protocol::net::ALPN_DEVICE).unwrap();
        let conn = endpoint.connect_with(cfg, c.quic(1), "gridproof").unwrap().await.unwrap();
        for frame in [vec![3u8, 0, 0, 0, 0xff, 0xee, 0xdd], (u32::MAX).to_le_bytes().to_vec()] {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&frame).await.unwrap();
            send.finish().unwrap();
            let answer = protocol::net::read_frame(&mut recv, 1 << 16).await.unwrap().unwrap();
            let answer: DeviceResponse = protocol::codec::decode("answer", &answer, 1 << 16).unwrap();
            assert!(matches!(&answer, DeviceResponse::Rejected { label, .. } if label == "malformed"), "{answer:?}");
        }

        // The flood: 100,000 updates with bad signatures from one device connection.
        let d = Device::new(9);
        let client = protocol::net::ValidatorClient::connect(&endpoint, c.quic(1), c.validator_key(1), &d.key).await.unwrap();
        let mut u = d.update(&c.pk, &c.chain(), 1, 1);
        u.signature.0[0] ^= 1;
        let rss_before = rss_kb(c.pid(1));
        let mut labels = std::collections::BTreeMap::<String, u64>::new();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (client, u) = (client.clone(), u.clone());
            tasks.spawn(async move {
                let mut local = std::collections::BTreeMap::<String, u64>::new();
                for _ in 0..100_000 / 64 + 1 {
                    match client.submit(&DeviceRequest::Update(u.clone())).await {
                        Ok(DeviceResponse::Rejected { label, .. }) => *local.entry(label).or_default() += 1,
                        Ok(DeviceResponse::Accepted) => panic!("a forged update was accepted"),
                        Err(_) => *local.entry("transport".into()).or_default() += 1,
                    }
                }
                local
            });
        }
        while let Some(r) = tasks.join_next().await {
            for (k, v) in r.unwrap() {
                *labels.entry(k).or_default() += v;
            }
        }
        let total: u64 = labels.values().sum();
        assert!(total >= 100_000, "{labels:?}");
        assert!(labels.get("rate_limited").copied().unwrap_or(0) > 0, "{labels:?}");
        assert!(labels.get("bad_signature").copied().unwrap_or(0) > 0, "{labels:?}");
        let rss_after = rss_kb(c.pid(1));
        assert!(rss_after < rss_before + 200_000, "RSS grew from {rss_before} kB to {rss_after} kB");
        // The validator still answers, and counted the rejects.
        let metrics = c.get(1, "/metrics").unwrap();
        assert!(metrics.contains("gridproof_rate_limited_total"), "{metrics}");
        assert!(c.status(1).is_some());
    });
    let m0 = c.get(0, "/metrics").unwrap();
    let bad: f64 = m0.lines().find(|l| l.starts_with("gridproof_bad_frames_total")).and_then(|l| l.split(' ').nth(1)).unwrap().parse().unwrap();
    assert!(bad >= 1.0, "the refused peer is counted: {m0}");
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

/// `examples/node.toml` is what `verifier-node init` writes for validator 0 with its default
/// addresses, and it loads as a validator configuration beside an init's output (the key is
/// validator 0's genesis key, the genesis lists the verifying key in `../keys-dev`).
#[test]
fn the_example_node_toml_is_what_init_writes_and_it_loads() {
    let dir = std::env::temp_dir().join(format!("gridproof-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys-dev")).unwrap();
    let shape = circuits::Shape { kind: circuits::ModelKind::Deferrable, slots: circuits::Slots::new(4).unwrap() };
    let (_, vk) = prover::setup(shape, &mut <rand_chacha::ChaCha20Rng as rand::SeedableRng>::seed_from_u64(9)).unwrap();
    std::fs::write(dir.join("keys-dev/deferrable-4.vk"), vk.to_bytes()).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["init", "--out"])
        .arg(dir.join("cluster"))
        .arg("--keys")
        .arg(dir.join("keys-dev"))
        .args(["--slots", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));

    let example_text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/node.toml")).unwrap();
    let example: verifier_node::config::NodeFile = toml::from_str(&example_text).unwrap();
    let mut written: verifier_node::config::NodeFile = toml::from_str(&std::fs::read_to_string(dir.join("cluster/node0.toml")).unwrap()).unwrap();
    // init writes the keys directory as an absolute path; the example's is relative.
    assert_eq!(std::fs::canonicalize(dir.join("cluster").join(&example.keys_dir)).unwrap(), written.keys_dir);
    written.keys_dir = example.keys_dir.clone();
    assert_eq!(example, written);

    std::fs::write(dir.join("cluster/example.toml"), &example_text).unwrap();
    let cfg = verifier_node::config::Config::load(&dir.join("cluster/example.toml")).unwrap();
    assert_eq!(cfg.file.index, 0);
    assert!(cfg.keys.get(&shape).is_some(), "the verifying key the genesis lists is loaded");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A gateway process rides out every validator being killed -9 and restarted once, and one
/// frozen for a whole iteration: it dials again, submits to all validators at once with a
/// deadline, follows the log through whichever validator serves it, and its update is in
/// every iteration entry up to the final one.
#[test]
fn a_gateway_keeps_its_updates_in_every_iteration_while_each_validator_restarts() {
    let iteration_ms = 2500;
    let c = Cluster::init("gw-faults", 4, 0, 8, iteration_ms, 8);
    let (gateway, device) = c.gateway("home");
    c.start_all();
    let close = match &c.genesis.body {
        Body::Genesis(g) => g.market.registration_close_ms,
        _ => unreachable!(),
    };
    let log = std::fs::File::create(c.dir.join("gateway.log")).unwrap();
    let mut gw = Command::new(device_bin())
        .args(["run", "--markets", "1", "--timeout-s", "120", "--config"])
        .arg(&gateway)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let at = |k: u64, ms: u64| {
        let t = close + k * iteration_ms + ms;
        let now = protocol::net::now_ms();
        std::thread::sleep(Duration::from_millis(t.saturating_sub(now)));
    };
    // Iterations 1–4: validator k − 1 is killed 300 ms after the deadline and restarted
    // 1.2 s later. Iteration 5: validator 0 is frozen for a whole window. (Not the round-0
    // proposer of iteration 6: with three enrollment batches and the closing batch, iteration
    // k is height 4 + k, proposed by (4 + k) mod 4 = validator 2 for k = 6. A proposer frozen
    // until just after the deadline wakes up and proposes from its own pool, which never got
    // the update, so the iteration would lawfully go without it.)
    for k in 1..=4u64 {
        at(k, 300);
        c.kill(k as u16 - 1);
        at(k, 1500);
        c.start(k as u16 - 1);
    }
    at(5, 100);
    c.signal(0, "-STOP");
    at(6, 300);
    c.signal(0, "-CONT");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = gw.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "the gateway did not finish:\n{}", std::fs::read_to_string(c.dir.join("gateway.log")).unwrap());
        std::thread::sleep(Duration::from_millis(200));
    };
    let gw_log = std::fs::read_to_string(c.dir.join("gateway.log")).unwrap();
    assert!(status.success(), "gateway failed ({status}):\n{gw_log}");
    // For BENCHMARKS.md (printed, not asserted): restart → first entry decided or synced.
    for i in 0..4 {
        let log = c.log(i);
        let secs = |line: &str| -> Option<f64> {
            let t = line.split('T').nth(1)?.get(..15)?;
            let (h, rest) = t.split_once(':')?;
            let (m, s) = rest.split_once(':')?;
            Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
        };
        let lines: Vec<&str> = log.lines().collect();
        if let Some(at) = lines.iter().rposition(|l| l.contains("validator started")) {
            let started = secs(lines[at]);
            let caught = lines[at..].iter().find(|l| l.contains("synced") || l.contains("committed ")).and_then(|l| secs(l));
            if let (Some(a), Some(b)) = (started, caught) {
                eprintln!("validator {i}: restart to first entry {:.0} ms", (b - a) * 1000.0);
            }
        }
    }
    c.wait_final(Duration::from_secs(30));
    c.stop_all();
    c.assert_identical_logs();
    let entries = c.entries(0);
    let iterations: Vec<&Certified> = entries.iter().filter(|e| matches!(e.entry.body, Body::Iteration(_))).collect();
    assert!(iterations.len() >= 6, "the market ran past the faults: {} iterations", iterations.len());
    for e in &iterations {
        let Body::Iteration(b) = &e.entry.body else { unreachable!() };
        let ours = e.updates.iter().any(|u| protocol::ids::hex(&u.body.device.0) == device);
        assert!(ours, "iteration {} (height {}) lacks the gateway's update:\n{gw_log}", b.iteration, e.entry.height);
    }
    assert!(matches!(entries.last().map(|e| &e.entry.body), Some(Body::Final(_))));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(c.dir.join("home.state.json")).unwrap()).unwrap();
    assert!(state["markets"].as_object().unwrap().values().any(|m| m["final_prices"].is_array()), "the gateway holds the final prices: {state}");
}

/// `docker stop` and systemd send SIGTERM: a validator and a gateway stop cleanly on it (exit
/// 0, the log says so), and the validator's database opens again at once.
#[test]
fn sigterm_stops_a_validator_and_a_gateway_cleanly() {
    let c = Cluster::init("sigterm", 4, 1, 60, 1500, 3);
    let (gateway, _) = c.gateway("term");
    c.start_all();
    let mut gw =
        Command::new(device_bin()).args(["run", "--markets", "1", "--timeout-s", "120", "--config"]).arg(&gateway).stderr(Stdio::piped()).spawn().unwrap();
    // Both are up: the validator answers HTTP, the gateway has enrolled (or is trying to).
    let t0 = Instant::now();
    while c.status(0).is_none() {
        assert!(t0.elapsed() < Duration::from_secs(20), "validator 0 did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let term = |pid: u32| assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    term(gw.id());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = gw.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the gateway ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(gw.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("stopped by SIGTERM"), "{err}");

    let pid = c.pid(0);
    term(pid);
    let t0 = Instant::now();
    let status = loop {
        let s = c.procs.lock().unwrap()[0].as_mut().unwrap().try_wait().unwrap();
        if let Some(s) = s {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the validator ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "validator exit {status}: {}", c.log(0));
    assert!(c.log(0).contains("SIGTERM: stopping"), "{}", c.log(0));
    // Closed cleanly: the database opens (RocksDB's lock is released) and holds the genesis.
    let store = verifier_node::store::Store::open(&c.db(0)).unwrap();
    assert!(store.tip().unwrap().is_some());
}

/// A validator whose node task stops on a fatal error (here: a corrupt WAL record for the
/// height it must run next) exits non-zero, naming the height and record, instead of keeping
/// its HTTP up; the other validators carry on.
#[test]
fn a_validator_with_a_corrupt_wal_exits_non_zero_naming_the_record() {
    let c = Cluster::init("corrupt-wal", 4, 2, 60, 1500, 3);
    c.start_all();
    let t0 = Instant::now();
    while c.status(0).and_then(|s| s["height"].as_u64()).unwrap_or(0) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no enrollment batches committed");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.kill(0);
    let next = {
        let store = verifier_node::store::Store::open(&c.db(0)).unwrap();
        let (tip, _) = store.tip().unwrap().unwrap();
        store.wal_append(tip + 1, &[0xde, 0xad]).unwrap();
        tip + 1
    };
    c.start(0);
    let t0 = Instant::now();
    let status = loop {
        let s = c.procs.lock().unwrap()[0].as_mut().unwrap().try_wait().unwrap();
        if let Some(s) = s {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the validator kept running on a corrupt WAL: {}", c.log(0));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1), "{}", c.log(0));
    let log = c.log(0);
    // (Its sequence number is the height's next one: 0 unless the kill came mid-height.)
    assert!(log.contains("WAL record ") && log.contains(&format!("of height {next} is corrupt")), "{log}");
    assert!(c.get(0, "/status").is_none(), "its HTTP is down");
    assert!(c.status(1).is_some());
}
