//! The demo end to end, small: 10 appliances of every model in 3 gateways, T = 8, four
//! validators, the embedded broker. Its summary must say what a newcomer is promised: the
//! market converged, every proof was valid and verified by every validator, every schedule was
//! executed over MQTT, and ADMM's objective is within 1 % of the centralised optimum.

use std::process::Command;

#[test]
fn a_small_market_day_converges_proves_executes_and_matches_the_central_optimum() {
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
    assert_eq!(s["converged"], true, "{s}");
    assert_eq!(s["schedules_committed"], 10);
    assert_eq!(s["proofs"]["rejected_invalid"], 0);
    let included = s["proofs"]["included"].as_u64().unwrap();
    assert!(included >= 10 * s["iterations"].as_u64().unwrap() - 10, "every appliance proved nearly every iteration: {s}");
    assert_eq!(s["proofs"]["verified_per_validator"], included, "every validator verified every included proof");
    assert_eq!(s["execution"]["executed"], true, "{s}");
    assert_eq!(s["execution"]["setpoints_seen"], s["execution"]["setpoints_expected"]);
    let gap = s["objective"]["gap"].as_f64().unwrap();
    assert!(gap.abs() < 0.01, "objective gap {gap}");
    let (before, after) = (s["peak_to_average"]["before"].as_f64().unwrap(), s["peak_to_average"]["after"].as_f64().unwrap());
    assert!(after < before, "valley filling lowers the peak-to-average ratio: {before} → {after}");
    // Consensus takes time: the validators' own due → commit latency is positive and below
    // the client's (which adds delivery).
    let node = s["commit_latency_ms"]["validators_due_to_commit_mean"].as_f64().unwrap();
    assert!(node > 0.0 && node <= s["commit_latency_ms"]["max"].as_f64().unwrap(), "{s}");
    let svg = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("price"), "an SVG chart with a price series");
    let _ = std::fs::remove_dir_all(&out);
}
