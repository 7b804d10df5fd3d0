//! A standing chain of real processes: 4 `verifier-node` processes run three markets back to
//! back on one chain. The operator opens markets 2 and 3 with `verifier-node open-market`;
//! market 2 schedules while market 1 executes, market 3 registers while market 2 schedules.
//! Devices register once (one attestation for all three days) and bid in each market. Every
//! node's log is byte-identical and `audit` passes on each database. The authority revokes a
//! device with `verifier-node revoke`, and its next bid is refused.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::*;
use protocol::entry::{Body, MarketSpec};
use protocol::market::execution_span;
use protocol::messages::{DeviceRequest, DeviceResponse};

/// `verifier-node <args> --genesis G --peer i=addr...`, retried while validators start.
pub(crate) fn cli(c: &Cluster, args: &[&str]) -> std::process::Output {
    let t0 = Instant::now();
    loop {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("--genesis").arg(c.dir.join("cluster/genesis.bin"));
        for i in 0..c.n {
            cmd.arg("--peer").arg(format!("{i}={}", c.quic(i)));
        }
        let out = cmd.output().unwrap();
        if out.status.success() || t0.elapsed() > Duration::from_secs(15) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `open-market` for market `id` of the test's shape; without `execution_start_ms`, the CLI
/// places execution after the chain's last one.
fn open_market(c: &Cluster, id: u64, registration_s: u64, execution_start_ms: Option<u64>) -> std::process::Output {
    let key = c.dir.join("cluster/operator.key");
    let (id, reg) = (id.to_string(), registration_s.to_string());
    let start = execution_start_ms.map(|t| t.to_string());
    let mut args = vec![
        "open-market",
        "--operator-key",
        key.to_str().unwrap(),
        "--market-id",
        &id,
        "--slots",
        "4",
        "--slot-seconds",
        "60",
        "--registration-s",
        &reg,
        "--iteration-ms",
        "1500",
        "--max-iterations",
        "3",
        "--devices",
        "3",
        "--execution-delay-s",
        "0",
    ];
    if let Some(start) = &start {
        args.extend(["--execution-start-ms", start]);
    }
    cli(c, &args)
}

#[test]
fn four_validators_run_three_overlapping_markets_on_one_chain() {
    // Market 1 (the genesis's): 4 slots of 60 s, registration 8 s, execution right after
    // its last iteration deadline (close + 1.5 s · (K_max + 2)).
    let c = Cluster::init_with("standing", 4, 6, 8, 1500, 3, &["--slot-seconds", "60", "--execution-delay-s", "0"]);
    let Body::Genesis(g) = &c.genesis.body else { unreachable!() };
    let m1 = g.market.clone();
    c.start_all();
    // Each later market executes right after the previous one; each registers while the
    // previous one schedules or executes. The operator opens them while devices bid in
    // market 1 (whose registration is short).
    let (_, end1) = execution_span(&m1);
    let end2 = end1 + 4 * 60_000;
    let devices: Vec<Device> = (0..3).map(Device::new).collect();
    // One attestation per device for every market of the test (a fourth comes at the end).
    let span = (m1.registration_close_ms, end2 + 8 * 60_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let seen = std::thread::scope(|scope| {
        let operator = scope.spawn(|| {
            let t0 = Instant::now();
            let out = open_market(&c, 2, 16, Some(end1));
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
            // (A quorum is enough; a validator still starting may miss it and learn the market
            // from the log.)
            assert!(text.contains("admitted by 4 of 4 validators") || text.contains("admitted by 3 of 4 validators"), "{text}");
            eprintln!("open-market took {:?}", t0.elapsed());
            // Market 3's execution is placed by the CLI after the chain's last one, market 2's,
            // once market 2's opening is committed.
            let t0 = Instant::now();
            while c.get(1, "/markets/2").is_none_or(|m| m.contains("error")) {
                assert!(t0.elapsed() < Duration::from_secs(10), "market 2 is not opened");
                std::thread::sleep(Duration::from_millis(100));
            }
            let out = open_market(&c, 3, 24, None);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
            // A reused id and an overlapping execution are refused, with their labels.
            let again = open_market(&c, 2, 30, None);
            let text = String::from_utf8_lossy(&again.stdout);
            assert!(!again.status.success() && text.contains("market_id_reused"), "{text}");
            let overlap = open_market(&c, 4, 30, Some(end1 - 60_000));
            let text = String::from_utf8_lossy(&overlap.stdout);
            assert!(!overlap.status.success() && text.contains("market_overlap"), "{text}");
        });
        let seen = rt.block_on(run_markets(&c, &devices, span, 3, 1, Duration::from_secs(120)));
        operator.join().expect("the operator's openings");
        seen
    });
    let finals: Vec<u64> = seen.iter().filter_map(|c| if let Body::Final(f) = &c.entry.body { Some(f.market_id) } else { None }).collect();
    assert_eq!(finals, vec![1, 2, 3], "the three markets finalize in order");
    let opens: Vec<&MarketSpec> = seen.iter().filter_map(|c| if let Body::Open(o) = &c.entry.body { Some(&o.body.spec) } else { None }).collect();
    assert_eq!(opens.len(), 2);
    assert_eq!(opens[1].execution_start_ms, end2, "the CLI starts market 3 when market 2's execution ends");
    for id in [1, 2, 3] {
        let full = seen.iter().any(|c| matches!(&c.entry.body, Body::Iteration(b) if b.market_id == id && b.updates.len() == 3));
        assert!(full, "market {id} has an iteration with all three devices' proven updates");
    }
    // Market 2 scheduled while market 1 executed.
    let m2_iterations: Vec<u64> =
        seen.iter().filter(|c| matches!(&c.entry.body, Body::Iteration(b) if b.market_id == 2)).map(|c| c.entry.timestamp_ms).collect();
    assert!(
        m2_iterations.iter().all(|&t| t >= m1.execution_start_ms && t < end1),
        "market 2's iterations {m2_iterations:?} within market 1's execution [{}, {end1})",
        m1.execution_start_ms
    );
    c.wait_final(Duration::from_secs(20));
    let markets: serde_json::Value = serde_json::from_str(&c.get(0, "/markets").unwrap()).unwrap();
    assert_eq!(markets["markets"].as_array().unwrap().len(), 3, "{markets}");
    assert!(markets["markets"].as_array().unwrap().iter().all(|m| m["final"] == true && m["enrolled"] == 3), "{markets}");

    // The authority revokes device 0: its bid in a fourth market is refused.
    let attestations = c.dir.join("attestations.json");
    let a0 = devices[0].attestation(&c, span);
    std::fs::write(&attestations, serde_json::to_string(&vec![a0.clone()]).unwrap()).unwrap();
    let key = c.dir.join("cluster/authority.key");
    let out = cli(&c, &["revoke", "--authority-key", key.to_str().unwrap(), "--attestations", attestations.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = open_market(&c, 4, 30, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let refused = rt.block_on(async {
        protocol::net::install_crypto();
        let endpoint = protocol::net::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = protocol::net::ValidatorClient::connect(&endpoint, c.quic(0), c.validator_key(0), &devices[0].key).await.unwrap();
        // Wait until the revocation and the opening are committed.
        let t0 = Instant::now();
        loop {
            let m4 = MarketSpec { market_id: 4, ..m1.clone() };
            let r = client.submit(&DeviceRequest::Enroll(devices[0].bid(&c, &m4, &a0))).await.unwrap();
            match r {
                DeviceResponse::Rejected { label, .. } if label == "attestation_revoked" => break label,
                other if t0.elapsed() > Duration::from_secs(15) => panic!("{other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    });
    assert_eq!(refused, "attestation_revoked");
    c.stop_all();
    let n = c.assert_identical_logs();
    assert!(n >= seen.len());
    for out in c.audit_all() {
        assert!(out.contains("verdict: PASS"), "{out}");
    }
    // The later half of the log alone, the earlier entries followed as a light client.
    let from = (n as u64 / 2).to_string();
    let (ok, out) = c.audit_args(0, &["--from", &from]);
    assert!(ok && out.contains("verdict: PASS") && out.contains(&format!("heights checked in full: {from}..=")), "{out}");
    assert!(out.contains(&format!("entries followed before them: {from}")), "{out}");
    let (ok, out) = c.audit_args(0, &["--from", "5", "--to", "3"]);
    assert!(!ok && out.contains("no heights to audit"), "{out}");
}

/// The Sybil flood at a validator process: 10,000 self-made keys each dial in with their own
/// TLS identity and bid with an attestation signed by a key that is no authority (what anyone
/// can make). None is admitted, each refusal is counted as `unattested`, and the validator's
/// resident memory stays bounded (the figure is printed for BENCHMARKS.md).
#[test]
fn a_sybil_flood_of_ten_thousand_self_made_keys_is_refused_in_bounded_memory() {
    let c = Cluster::init("sybil", 4, 7, 60, 1500, 3);
    c.start_all();
    let Body::Genesis(g) = &c.genesis.body else { unreachable!() };
    let m1 = g.market.clone();
    let rogue = ed25519_dalek::SigningKey::from_bytes(&[201; 32]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (labels, before, after) = rt.block_on(async {
        protocol::net::install_crypto();
        let endpoint = protocol::net::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        // Wait for validator 1, then measure.
        let t0 = Instant::now();
        while c.status(1).is_none() {
            assert!(t0.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let before = rss_kb(c.pid(1));
        let span = protocol::membership::market_span(&m1);
        let mut labels = std::collections::BTreeMap::<String, u64>::new();
        let mut tasks = tokio::task::JoinSet::new();
        const N: u64 = 10_000;
        const WORKERS: u64 = 16;
        for w in 0..WORKERS {
            let (endpoint, rogue, m1, key1, addr1, chain) = (endpoint.clone(), rogue.clone(), m1.clone(), c.validator_key(1), c.quic(1), c.chain());
            tasks.spawn(async move {
                let mut local = std::collections::BTreeMap::<String, u64>::new();
                for i in (w..N).step_by(WORKERS as usize) {
                    let mut seed = [0u8; 32];
                    seed[..8].copy_from_slice(&(i + 1_000_000).to_le_bytes());
                    let sybil = Device { key: ed25519_dalek::SigningKey::from_bytes(&seed), ..Device::new(0) };
                    let attestation = protocol::membership::attest(&rogue, &chain, sybil.id(), &sybil.opening.params, 900, "fake", span);
                    let bid = sybil.bid_on(&chain, &m1, &attestation);
                    let label = match protocol::net::ValidatorClient::connect(&endpoint, addr1, key1, &sybil.key).await {
                        Ok(client) => {
                            let r = client.submit(&DeviceRequest::Enroll(bid)).await;
                            client.close();
                            match r {
                                Ok(DeviceResponse::Rejected { label, .. }) => label,
                                Ok(DeviceResponse::Accepted) => panic!("a self-attested bid was accepted"),
                                Err(e) => format!("transport: {e}"),
                            }
                        }
                        Err(e) => format!("connect: {e}"),
                    };
                    *local.entry(label).or_default() += 1;
                }
                local
            });
        }
        while let Some(r) = tasks.join_next().await {
            for (k, v) in r.unwrap() {
                *labels.entry(k).or_default() += v;
            }
        }
        let after = rss_kb(c.pid(1));
        (labels, before, after)
    });
    eprintln!("sybil flood: {labels:?}; validator 1 RSS {before} kB before, {after} kB after 10,000 keys");
    assert!(labels.get("unattested").copied().unwrap_or(0) >= 9_000, "{labels:?}");
    assert!(after < before + 100_000, "RSS grew from {before} kB to {after} kB");
    // Nothing is held, everything is counted, and the validator still answers.
    let metrics = c.get(1, "/metrics").unwrap();
    let count: f64 = metrics.lines().find(|l| l.starts_with("gridproof_rejects_total{reason=\"unattested\"}")).and_then(|l| l.split(' ').nth(1)).unwrap().parse().unwrap();
    assert!(count >= 9_000.0, "{metrics}");
    let status = c.status(1).unwrap();
    assert_eq!(status["enrolled"], 0);
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}
