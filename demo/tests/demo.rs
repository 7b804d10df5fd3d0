//! The demo end to end, small: 10 appliances of every model in 3 gateways, T = 8, four
//! validators, the embedded broker, two market days on one chain. Its summary must say what a
//! newcomer is promised: both days converged, day 1 within 1 % of the centralised optimum,
//! day 2 with one bid withdrawn, the unattested device refused by every validator, every proof
//! valid and verified by every validator, every schedule executed over MQTT on the markets'
//! compressed clock, metered and settled.

use std::process::Command;

#[test]
fn two_small_market_days_on_one_chain_converge_withdraw_refuse_and_execute() {
    let out = std::env::temp_dir().join(format!("gridproof-demo-test-{}", std::process::id()));
    // Above the ephemeral range (32768–60999), so no outgoing socket holds one of these.
    let port = 61_000 + (std::process::id() % 21) as u16 * 210;
    let run = Command::new(env!("CARGO_BIN_EXE_gridproof"))
        .args(["--appliances", "10", "--gateways", "3", "--slots", "8", "--slot-ms", "100", "--seed", "3"])
        .args(["--port", &port.to_string(), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("objective gap"), "{stdout}");
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let (d1, d2) = (&s["days"][0], &s["days"][1]);
    // Day 1: every appliance, converged near the central optimum, valleys filled.
    assert_eq!(d1["converged"], true, "{s}");
    assert_eq!(d1["schedules_committed"], 10);
    let included = d1["proofs_included"].as_u64().unwrap();
    assert!(included >= 10 * d1["iterations"].as_u64().unwrap() - 10, "every appliance proved nearly every iteration: {s}");
    let gap = d1["objective"]["gap"].as_f64().unwrap();
    assert!(gap.abs() < 0.01, "objective gap {gap}");
    let (before, after) = (d1["peak_to_average"]["before"].as_f64().unwrap(), d1["peak_to_average"]["after"].as_f64().unwrap());
    assert!(after < before, "valley filling lowers the peak-to-average ratio: {before} → {after}");
    // Day 2, opened by the operator on the same chain: ten bids, one withdrawn before the
    // close, nine schedules.
    assert_eq!((d2["market_id"].as_u64(), d2["bids"].as_u64(), d2["withdrawals"].as_u64()), (Some(2), Some(10), Some(1)), "{s}");
    assert_eq!(d2["converged"], true, "{s}");
    assert_eq!(d2["schedules_committed"], 9);
    assert!(d2["final_height"].as_u64() > d1["final_height"].as_u64());
    assert_eq!(s["withdrawn"], "deferrable-0000");
    // Every validator verified every included proof of both days; none was invalid.
    assert_eq!(s["proofs"]["rejected_invalid"], 0);
    assert_eq!(s["proofs"]["verified_per_validator"], included + d2["proofs_included"].as_u64().unwrap());
    // The device nobody attested was refused by all four validators.
    assert_eq!(s["unattested_refused"]["refusals_counted_by_validators"], 4, "{s}");
    assert!(s["unattested_refused"]["answer"].as_str().unwrap().starts_with("unattested"), "{s}");
    assert_eq!(s["execution"]["executed"], true, "{s}");
    assert_eq!(s["execution"]["setpoints_seen"], s["execution"]["setpoints_expected"]);
    assert_eq!(s["execution"]["setpoints_expected"], (10 + 9) * (8 + 1));
    // Each day settled at its meter deadline on the simulated meters' readings: conserved to
    // the µ€, every schedule billed, some slots unread (dropouts, one household's outage),
    // readings off the schedule charged as imbalance, the largest bills and credits listed.
    for d in [d1, d2] {
        let st = &d["settlement"];
        let m = &st["micro_eur"];
        let v = |k: &str| m[k].as_i64().unwrap();
        assert_eq!(v("consumers_pay"), v("producers_receive") + v("imbalance") + v("network_revenue"), "{st}");
        assert_eq!(st["conserved"], true);
        assert!(v("consumers_pay") > 0 && v("imbalance") > 0, "{st}");
        assert_eq!(st["bills"], d["schedules_committed"], "every scheduled appliance billed: {st}");
        let (read, slots) = (st["readings_committed"].as_u64().unwrap(), st["slots_billed"].as_u64().unwrap());
        assert!(read < slots && read >= slots / 2, "{read} of {slots} slots metered");
        let totals = |k: &str| st[k].as_array().unwrap().iter().map(|b| b["total_eur"].as_f64().unwrap()).collect::<Vec<f64>>();
        let (bills, credits) = (totals("largest_bills"), totals("largest_credits"));
        assert!(!bills.is_empty() && bills.len() <= 5 && bills.windows(2).all(|w| w[0] >= w[1]) && bills.iter().all(|&b| b > 0.0), "{st}");
        assert!(credits.len() <= 5 && credits.windows(2).all(|w| w[0] <= w[1]) && credits.iter().all(|&c| c < 0.0), "{st}");
    }
    assert!(stdout.contains("largest bills") && stdout.contains("conserved to the µ€"), "{stdout}");
    // Consensus takes time: the validators' own due → commit latency is positive and below
    // the client's (which adds delivery).
    let node = s["validators_due_to_commit_mean_ms"].as_f64().unwrap();
    let client_max = d1["commit_latency_ms"]["max"].as_f64().unwrap().max(d2["commit_latency_ms"]["max"].as_f64().unwrap());
    assert!(node > 0.0 && node <= client_max, "{s}");
    for chart in ["chart.svg", "chart-day2.svg"] {
        let svg = std::fs::read_to_string(out.join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("price") && svg.contains("day"), "{chart}: an SVG chart with a price series");
        // Readable axes: kW and €/MWh, the hours of the day, a legend.
        for label in ["load, kW", "price, €/MWh", "hour of the day", "12:00", "flexible appliances, kW"] {
            assert!(svg.contains(label), "{chart} has no {label:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}
