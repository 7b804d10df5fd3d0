//! What the demo shows: a progress bar while the log grows, then the summary (printed, as
//! JSON, and as an SVG chart of the aggregate load and the prices).

use std::path::{Path, PathBuf};
use std::time::Duration;

use circuits::fixed::Fixed;
use device::agent::AgentState;
use device::config::Gateway;
use ed25519_dalek::SigningKey;
use indicatif::{ProgressBar, ProgressStyle};
use protocol::admm::GridCost;
use protocol::entry::{Body, Entry, FinalBody};
use protocol::net::ValidatorClient;
use protocol::scenario::Scenario;
use verifier_node::consensus::node::Stats;

use crate::Args;

/// The log as the watcher saw it.
pub struct Market {
    /// Per iteration: k, included updates, r, s, ε_pri, ε_dual (W).
    pub iterations: Vec<(u32, usize, [f64; 4])>,
    /// The final entry.
    pub final_body: FinalBody,
    /// Committed height of the final entry.
    pub height: u64,
    /// Per iteration: its deadline → the committed entry reaching the watcher, ms.
    pub latency_ms: Vec<u64>,
}

fn fixed(v: i64) -> f64 {
    Fixed(v).to_f64()
}

/// Follows validator 0's log from the genesis to the final entry, drawing progress.
pub async fn watch(genesis: &Entry, port: u16, validator: &SigningKey, appliances: usize) -> Result<Market, String> {
    let Body::Genesis(g) = &genesis.body else { return Err("not a genesis entry".into()) };
    let (max_iterations, iteration_ms) = (g.market.max_iterations, g.market.iteration_ms);
    let clock = protocol::clock::ClockConfig::from_spec(&g.market);
    let mut latency_ms = vec![];
    protocol::net::install_crypto();
    let endpoint = protocol::net::client_endpoint("127.0.0.1:0".parse().expect("addr")).map_err(|e| e.to_string())?;
    let watcher = SigningKey::from_bytes(&[0x77; 32]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let client = ValidatorClient::connect(&endpoint, addr, validator.verifying_key().to_bytes(), &watcher).await.map_err(|e| e.to_string())?;
    let mut rx = client.subscribe(0).await.map_err(|e| e.to_string())?;
    let mut light = protocol::entry::LightClient::new(genesis).map_err(|e| e.to_string())?;
    let bar = ProgressBar::new(appliances as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({elapsed})").expect("template"));
    bar.set_message("appliances enrolled");
    let mut enrolled = 0;
    let mut iterations = vec![];
    loop {
        let item = tokio::time::timeout(Duration::from_millis(iteration_ms * 3 + 60_000), rx.recv())
            .await
            .map_err(|_| "no entry committed for too long".to_string())?
            .ok_or("the validator closed the subscription")?
            .map_err(|e| e.to_string())?;
        if item.entry.height == 0 {
            continue;
        }
        light.accept(&item.entry, &item.certificate).map_err(|e| format!("the watcher refused entry {}: {e}", item.entry.height))?;
        match &item.entry.body {
            Body::Enrollment(list) => {
                enrolled += list.enrollments.len();
                bar.set_position(enrolled as u64);
                if enrolled == appliances {
                    bar.finish();
                    bar.reset();
                    bar.set_length(max_iterations as u64);
                    bar.set_position(0);
                    bar.set_message(format!("ADMM iterations (window {iteration_ms} ms: solve, prove, submit, verify, commit)"));
                }
            }
            Body::Iteration(b) => {
                latency_ms.push(protocol::net::now_ms().saturating_sub(clock.deadline(b.iteration)));
                let r = b.residuals.map(fixed);
                iterations.push((b.iteration, b.updates.len(), r));
                bar.set_position(b.iteration as u64);
                bar.set_message(format!("iteration {}: r = {:.0} W (ε {:.0}), s = {:.0} W (ε {:.0})", b.iteration, r[0], r[2], r[1], r[3]));
            }
            Body::Final(f) => {
                bar.finish_with_message(format!("final schedule after {} iterations{}", f.iterations, if f.converged { ", converged" } else { " (K_max)" }));
                client.close();
                return Ok(Market { iterations, final_body: f.clone(), height: item.entry.height, latency_ms });
            }
            _ => {}
        }
    }
}

/// Everything the summary is made from.
pub struct Inputs<'a> {
    /// The command line.
    pub args: Args,
    /// The output directory.
    pub out: PathBuf,
    /// The appliances (private data, known here because the demo generated it).
    pub scenario: &'a Scenario,
    /// The gateways.
    pub gateways: &'a [Gateway],
    /// Their final states.
    pub states: &'a [AgentState],
    /// The log.
    pub market: Market,
    /// Each validator's counters.
    pub stats: &'a [Stats],
    /// Setpoint messages the observer saw.
    pub setpoints_seen: u64,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// The iteration window.
    pub iteration_ms: u64,
}

/// The summary.
pub struct Summary {
    /// Machine-readable, as written to summary.json.
    pub json: serde_json::Value,
    /// Base load (W) per slot, if the grid has one.
    pub base: Vec<f64>,
    /// Aggregate flexible load (W) per slot.
    pub aggregate: Vec<f64>,
    /// Prices (€/MWh) per slot.
    pub prices: Vec<f64>,
    /// The output directory.
    pub out: PathBuf,
}

fn par(load: &[f64]) -> f64 {
    let mean = load.iter().sum::<f64>() / load.len().max(1) as f64;
    let peak = load.iter().cloned().fold(f64::MIN, f64::max);
    if mean.abs() < 1e-9 {
        f64::NAN
    } else {
        peak / mean
    }
}

/// Computes the summary: ADMM against the centralised optimum, peak-to-average, proofs,
/// latency, execution.
pub fn summarize(i: Inputs<'_>) -> Result<Summary, String> {
    let t = i.args.slots;
    // Each appliance's committed schedule, in scenario order (names end in the index).
    let mut schedules = vec![vec![0i32; t]; i.scenario.devices.len()];
    let mut found = 0;
    for state in i.states {
        for (name, s) in &state.schedules {
            let idx: usize = name.rsplit('-').next().and_then(|n| n.parse().ok()).ok_or(format!("appliance name {name}"))?;
            schedules[idx] = s.clone();
            found += 1;
        }
    }
    let spec = &i.gateways[0].market().market;
    let grid = spec.admm().map_err(|e| e.to_string())?.grid;
    let admm_objective = protocol::central::objective(&i.scenario.devices, &grid, &schedules);
    let central = protocol::central::solve_central(&i.scenario.devices, &grid).map_err(|e| format!("central solve: {e}"))?;
    let gap = (admm_objective - central.objective) / central.objective.abs().max(1e-9);
    let aggregate: Vec<f64> = protocol::central::total_load(&schedules).into_iter().map(|w| w as f64).collect();
    let base: Vec<f64> = match &grid {
        GridCost::ValleyFilling { base_load, .. } => base_load.iter().map(|&b| b as f64).collect(),
        _ => vec![],
    };
    let (par_before, par_after) = if base.is_empty() {
        (None, None)
    } else {
        let after: Vec<f64> = base.iter().zip(&aggregate).map(|(b, x)| b + x).collect();
        (Some(par(&base)), Some(par(&after)))
    };
    let prices: Vec<f64> = i.market.final_body.prices.iter().map(|&p| fixed(p)).collect();
    let proofs_included: usize = i.market.iterations.iter().map(|it| it.1).sum();
    let proofs_verified = i.stats.iter().map(|s| s.proofs_verified).min().unwrap_or(0);
    let bad_proofs: u64 =
        i.stats.iter().map(|s| s.rejects.get("bad_proof").copied().unwrap_or(0) + s.rejects.get("malformed_proof").copied().unwrap_or(0)).sum();
    let node_latency: Vec<f64> = i.stats.iter().filter(|s| s.commits > 0).map(|s| s.commit_latency_sum_ms as f64 / s.commits as f64).collect();
    let node_latency = node_latency.iter().sum::<f64>() / node_latency.len().max(1) as f64;
    let latency = &i.market.latency_ms;
    let mean_latency = latency.iter().sum::<u64>() as f64 / latency.len().max(1) as f64;
    let max_latency = latency.iter().copied().max().unwrap_or(0);
    let expected_setpoints = (i.scenario.devices.len() * (t + 1)) as u64;
    let executed = i.states.iter().all(|s| s.executed_until_ms > 0) && i.setpoints_seen >= expected_setpoints;
    let last = i.market.iterations.last().map(|it| it.2).unwrap_or([0.0; 4]);
    let json = serde_json::json!({
        "appliances": i.scenario.devices.len(),
        "gateways": i.gateways.len(),
        "validators": i.args.validators,
        "slots": t,
        "grid": format!("{:?}", i.args.grid).to_lowercase(),
        "seed": i.args.seed,
        "iterations": i.market.final_body.iterations,
        "converged": i.market.final_body.converged,
        "final_height": i.market.height,
        "residuals_w": {"primal": last[0], "dual": last[1], "eps_primal": last[2], "eps_dual": last[3]},
        "residual_curve": i.market.iterations.iter().map(|it| serde_json::json!({"k": it.0, "r": it.2[0], "s": it.2[1]})).collect::<Vec<_>>(),
        "peak_to_average": {"before": par_before, "after": par_after},
        "objective": {"admm": admm_objective, "central": central.objective, "gap": gap},
        "schedules_committed": found,
        "proofs": {"included": proofs_included, "verified_per_validator": proofs_verified, "rejected_invalid": bad_proofs},
        "commit_latency_ms": {"mean": mean_latency, "max": max_latency, "validators_due_to_commit_mean": node_latency},
        "iteration_window_ms": i.iteration_ms,
        "execution": {"setpoints_seen": i.setpoints_seen, "setpoints_expected": expected_setpoints, "executed": executed},
        "aggregate_w": aggregate,
        "base_load_w": base,
        "prices_eur_mwh": prices,
        "wall_s": i.wall.as_secs_f64(),
        "out": i.out.display().to_string(),
    });
    Ok(Summary { json, base, aggregate, prices, out: i.out })
}

/// The summary as text.
pub fn render(s: &Summary) -> String {
    let j = &s.json;
    let f = |v: &serde_json::Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.3}"));
    let mut out = String::new();
    out += &format!(
        "\ngridproof market day: {} appliances in {} gateways, {} validators, T = {}, grid {}\n",
        j["appliances"],
        j["gateways"],
        j["validators"],
        j["slots"],
        j["grid"].as_str().unwrap_or("")
    );
    out += &format!(
        "  iterations          {} ({}), final entry at height {}\n",
        j["iterations"],
        if j["converged"] == true { "converged" } else { "K_max reached" },
        j["final_height"]
    );
    let r = &j["residuals_w"];
    out += &format!(
        "  residuals           r = {:.1} W (ε_pri {:.1}), s = {:.1} W (ε_dual {:.1})\n",
        r["primal"].as_f64().unwrap_or(0.0),
        r["eps_primal"].as_f64().unwrap_or(0.0),
        r["dual"].as_f64().unwrap_or(0.0),
        r["eps_dual"].as_f64().unwrap_or(0.0)
    );
    out += &format!("  peak-to-average     {} before → {} after\n", f(&j["peak_to_average"]["before"]), f(&j["peak_to_average"]["after"]));
    out += &format!(
        "  objective gap       {:+.3} % to the centralised optimum (clarabel, all private data in one place)\n",
        100.0 * j["objective"]["gap"].as_f64().unwrap_or(f64::NAN)
    );
    out += &format!(
        "  proofs              {} included and verified by every validator; {} rejected as invalid\n",
        j["proofs"]["included"], j["proofs"]["rejected_invalid"]
    );
    out += &format!(
        "  commit latency      {:.0} ms mean, {} ms max: iteration deadline → committed entry at a client (window {} ms)\n",
        j["commit_latency_ms"]["mean"].as_f64().unwrap_or(0.0),
        j["commit_latency_ms"]["max"],
        j["iteration_window_ms"]
    );
    out += &format!("  execution           {} of {} setpoints published over MQTT\n", j["execution"]["setpoints_seen"], j["execution"]["setpoints_expected"]);
    out += &format!("  wall time           {:.0} s\n", j["wall_s"].as_f64().unwrap_or(0.0));
    out += &format!("  data                {}\n  chart               {}\n", s.out.join("summary.json").display(), s.out.join("chart.svg").display());
    out
}

/// Draws the base load, the load with the committed flexible schedules, and the prices.
pub fn chart(path: &Path, s: &Summary) -> Result<(), String> {
    use plotters::prelude::*;
    let t = s.aggregate.len();
    let total: Vec<f64> = if s.base.is_empty() { s.aggregate.clone() } else { s.base.iter().zip(&s.aggregate).map(|(b, x)| b + x).collect() };
    let all = s.base.iter().chain(&total).chain(&s.aggregate);
    let (lo, hi) = all.fold((0.0f64, 1.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (plo, phi) = s.prices.iter().fold((0.0f64, 1.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("gridproof: committed day-ahead schedule", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0..t, (lo * 1.1 - 1.0)..(hi * 1.1 + 1.0))
        .map_err(|e| e.to_string())?
        .set_secondary_coord(0..t, (plo * 1.1 - 1.0)..(phi * 1.1 + 1.0));
    chart.configure_mesh().x_desc("slot").y_desc("load, W").draw().map_err(|e| e.to_string())?;
    chart.configure_secondary_axes().y_desc("price, €/MWh").draw().map_err(|e| e.to_string())?;
    let series = |v: &[f64]| v.iter().enumerate().map(|(i, &y)| (i, y)).collect::<Vec<_>>();
    if !s.base.is_empty() {
        chart
            .draw_series(LineSeries::new(series(&s.base), &BLUE))
            .map_err(|e| e.to_string())?
            .label("base load")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    }
    chart
        .draw_series(LineSeries::new(series(&total), RED.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("load with schedules")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new(series(&s.aggregate), &GREEN))
        .map_err(|e| e.to_string())?
        .label("flexible appliances")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .draw_secondary_series(LineSeries::new(series(&s.prices), &BLACK))
        .map_err(|e| e.to_string())?
        .label("price")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw().map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
