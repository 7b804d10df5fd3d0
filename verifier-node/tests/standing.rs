//! A standing chain of real processes: 4 `verifier-node` processes run three markets back to
//! back on one chain. The operator opens markets 2 and 3 with `verifier-node open-market`;
//! market 2 schedules while market 1 executes, market 3 registers while market 2 schedules.
//! Devices register once (one attestation for all three days) and bid in each market. Every
//! node's log is byte-identical and `audit` passes on each database. The authority revokes a
//! device with `verifier-node revoke`, and its next bid is refused.

mod cluster;

use std::process::Command;
use std::time::{Duration, Instant};

use cluster::*;
use protocol::entry::{Body, MarketSpec};
use protocol::market::execution_span;
use protocol::messages::{DeviceRequest, DeviceResponse};

/// `verifier-node <args> --genesis G --peer i=addr...`, retried while validators start.
fn cli(c: &Cluster, args: &[&str]) -> std::process::Output {
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
            assert!(text.contains("admitted by 4 of 4 validators"), "{text}");
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
    for i in 0..4 {
        let (ok, out) = c.audit(i);
        assert!(ok && out.contains("verdict: PASS"), "audit of validator {i}: {out}");
    }
}
