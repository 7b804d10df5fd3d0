//! Data-driven market-clock cases from `tests/testdata/clock*.txt`: each line is an event and
//! its expected outcome; a failing line is reported with its number and both outcomes.

use protocol::clock::{Action, ClockConfig, MarketClock};
use protocol::ids::DeviceId;

fn device(name: &str) -> DeviceId {
    let mut id = [0u8; 32];
    id[..name.len()].copy_from_slice(name.as_bytes());
    DeviceId(id)
}

fn show(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "none".into();
    }
    actions
        .iter()
        .map(|a| match a {
            Action::CloseRegistration => "CloseRegistration".to_string(),
            Action::IterationDeadline { iteration } => format!("IterationDeadline({iteration})"),
            Action::Finalize => "Finalize".to_string(),
            Action::StartSlot { slot } => format!("StartSlot({slot})"),
            Action::StartSettlement => "StartSettlement".to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn error_name<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}").split(['(', ' ', '{']).next().unwrap().to_string()
}

fn run_file(text: &str) {
    let cfg = ClockConfig { registration_close_ms: 1000, iteration_ms: 100, max_iterations: 3, execution_start_ms: 2000, slot_ms: 50, slots: 2 };
    let mut clock = MarketClock::new(cfg).unwrap();
    let mut failures = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (event, expected) = line.split_once("->").expect("`event -> expected`");
        let w: Vec<&str> = event.split_whitespace().collect();
        let num = |i: usize| w[i].parse::<u64>().unwrap();
        let got = match w[0] {
            "enroll" => clock.on_enrollment(num(1), device(w[2])).map_or_else(error_name, |_| "ok".into()),
            "update" => clock.on_update(num(1), device(w[2]), num(3) as u32).map_or_else(error_name, |_| "ok".into()),
            "tick" => show(&clock.tick(num(1))),
            "converged" => show(&clock.converged().into_iter().collect::<Vec<_>>()),
            other => panic!("line {}: unknown event {other}", n + 1),
        };
        if got != expected.trim() {
            failures.push(format!("line {}: `{}` gave `{got}`, expected `{}`", n + 1, event.trim(), expected.trim()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn clock_cases() {
    run_file(include_str!("../testdata/clock.txt"));
}

#[test]
fn clock_convergence_cases() {
    run_file(include_str!("../testdata/clock_converged.txt"));
}

#[test]
fn impossible_timings_are_rejected() {
    let cfg = ClockConfig { registration_close_ms: 1000, iteration_ms: 100, max_iterations: 20, execution_start_ms: 2000, slot_ms: 50, slots: 2 };
    assert!(MarketClock::new(cfg).is_err());
    assert!(MarketClock::new(ClockConfig { iteration_ms: 0, ..cfg }).is_err());
}
