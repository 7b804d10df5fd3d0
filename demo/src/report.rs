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
use protocol::entry::{Body, Entry, FinalBody, MarketSpec, SettlementBody};
use protocol::ids::DeviceId;
use protocol::net::ValidatorClient;
use protocol::scenario::{Device, Scenario};
use verifier_node::consensus::node::Stats;

use crate::Args;

/// One market day's log as the watcher saw it.
pub struct Market {
    /// Per iteration: k, included updates, r, s, ε_pri, ε_dual (W).
    pub iterations: Vec<(u32, usize, [f64; 4])>,
    /// The final entry.
    pub final_body: FinalBody,
    /// Committed height of the final entry.
    pub height: u64,
    /// Per iteration: its deadline → the committed entry reaching the watcher, ms.
    pub latency_ms: Vec<u64>,
    /// Enrollments (bids) committed.
    pub enrolled: usize,
    /// Withdrawals committed.
    pub withdrawn: usize,
}

fn fixed(v: i64) -> f64 {
    Fixed(v).to_f64()
}

/// A light client over validator 0's log, followed market by market.
pub struct Watcher {
    client: ValidatorClient,
    rx: tokio::sync::mpsc::Receiver<Result<protocol::entry::Certified, protocol::net::NetError>>,
    light: protocol::entry::LightClient,
    /// Settlement entries seen so far, by market (a day settles while the next schedules).
    settled: std::collections::BTreeMap<u64, SettlementBody>,
}

impl Watcher {
    /// Subscribes to validator 0's log from the genesis.
    pub async fn connect(genesis: &Entry, port: u16, validator: &SigningKey) -> Result<Watcher, String> {
        protocol::net::install_crypto();
        let endpoint = protocol::net::client_endpoint("127.0.0.1:0".parse().expect("addr")).map_err(|e| e.to_string())?;
        let watcher = SigningKey::from_bytes(&[0x77; 32]);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let client = ValidatorClient::connect(&endpoint, addr, validator.verifying_key().to_bytes(), &watcher).await.map_err(|e| e.to_string())?;
        let rx = client.subscribe(0).await.map_err(|e| e.to_string())?;
        let light = protocol::entry::LightClient::new(genesis).map_err(|e| e.to_string())?;
        Ok(Watcher { client, rx, light, settled: Default::default() })
    }

    /// The next certified entry after the genesis, checked as a light client; `timeout` for
    /// it to come. Settlement entries are kept for [`Self::settlement`].
    async fn next(&mut self, timeout: Duration) -> Result<protocol::entry::Certified, String> {
        loop {
            let item = tokio::time::timeout(timeout, self.rx.recv())
                .await
                .map_err(|_| "no entry committed for too long".to_string())?
                .ok_or("the validator closed the subscription")?
                .map_err(|e| e.to_string())?;
            if item.entry.height == 0 {
                continue;
            }
            self.light.accept(&item.entry, &item.certificate).map_err(|e| format!("the watcher refused entry {}: {e}", item.entry.height))?;
            if let Body::Settlement(s) = &item.entry.body {
                self.settled.insert(s.market_id, s.clone());
            }
            return Ok(item);
        }
    }

    /// Follows the log to market `market_id`'s settlement entry, for at most `within`.
    pub async fn settlement(&mut self, market_id: u64, within: Duration) -> Result<SettlementBody, String> {
        let until = tokio::time::Instant::now() + within;
        loop {
            if let Some(s) = self.settled.get(&market_id) {
                return Ok(s.clone());
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            self.next(left).await.map_err(|e| format!("waiting for market {market_id}'s settlement: {e}"))?;
        }
    }

    /// Follows the log to `spec`'s final entry, drawing progress (`appliances` bids expected),
    /// and calls `on_enrolled` with each device whose bid in it commits.
    pub async fn market(&mut self, spec: &MarketSpec, appliances: usize, mut on_enrolled: impl FnMut(DeviceId)) -> Result<Market, String> {
        let (max_iterations, iteration_ms) = (spec.max_iterations, spec.iteration_ms);
        let clock = protocol::clock::ClockConfig::from_spec(spec);
        let mut latency_ms = vec![];
        let bar = ProgressBar::new(appliances as u64);
        bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({elapsed})").expect("template"));
        bar.set_message(format!("day {}: bids committed", spec.market_id));
        let (mut enrolled, mut withdrawn) = (0, 0);
        let mut iterations = vec![];
        loop {
            let item = self.next(Duration::from_millis(iteration_ms * 3 + 60_000)).await?;
            if item.entry.body.market_id() != Some(spec.market_id) || matches!(item.entry.body, Body::Open(_)) {
                continue;
            }
            match &item.entry.body {
                Body::Enrollment(list) => {
                    enrolled += list.enrollments.len();
                    withdrawn += list.withdrawals.len();
                    list.enrollments.iter().for_each(|e| on_enrolled(e.body.device));
                    bar.set_position(enrolled.saturating_sub(withdrawn) as u64);
                }
                Body::Iteration(b) => {
                    if b.iteration == 1 {
                        bar.finish();
                        bar.reset();
                        bar.set_length(max_iterations as u64);
                        bar.set_message(format!("day {}: ADMM iterations (window {iteration_ms} ms: solve, prove, submit, verify, commit)", spec.market_id));
                    }
                    latency_ms.push(protocol::net::now_ms().saturating_sub(clock.deadline(b.iteration)));
                    let r = b.residuals.map(fixed);
                    iterations.push((b.iteration, b.updates.len(), r));
                    bar.set_position(b.iteration as u64);
                    bar.set_message(format!(
                        "day {} iteration {}: r = {:.0} W (ε {:.0}), s = {:.0} W (ε {:.0})",
                        spec.market_id, b.iteration, r[0], r[2], r[1], r[3]
                    ));
                }
                Body::Final(f) => {
                    bar.finish_with_message(format!(
                        "day {}: final schedule after {} iterations{}",
                        spec.market_id,
                        f.iterations,
                        if f.converged { ", converged" } else { " (K_max)" }
                    ));
                    return Ok(Market { iterations, final_body: f.clone(), height: item.entry.height, latency_ms, enrolled, withdrawn });
                }
                _ => {}
            }
        }
    }

    /// Ends the subscription.
    pub fn close(&self) {
        self.client.close();
    }
}

/// Everything the summary is made from.
pub struct Inputs<'a> {
    /// The command line.
    pub args: Args,
    /// The output directory.
    pub out: PathBuf,
    /// Day 1's appliances (private data, known here because the demo generated it).
    pub scenario: &'a Scenario,
    /// The gateways.
    pub gateways: &'a [Gateway],
    /// Their final states.
    pub states: &'a [AgentState],
    /// Each day's market and its log.
    pub markets: Vec<(MarketSpec, Market)>,
    /// Each day's settlement entry.
    pub settlements: Vec<SettlementBody>,
    /// Each validator's counters.
    pub stats: &'a [Stats],
    /// Setpoint messages the observer saw.
    pub setpoints_seen: u64,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// The iteration window.
    pub iteration_ms: u64,
    /// The appliance withdrawn on day 2.
    pub withdrawn: Option<String>,
    /// What the validators answered the unattested device.
    pub refused: Option<String>,
}

/// One day of the summary, for its chart.
pub struct DaySummary {
    /// Base load (W) per slot, if the grid has one.
    pub base: Vec<f64>,
    /// Aggregate flexible load (W) per slot.
    pub aggregate: Vec<f64>,
    /// Prices (€/MWh) per slot.
    pub prices: Vec<f64>,
}

/// The summary.
pub struct Summary {
    /// Machine-readable, as written to summary.json.
    pub json: serde_json::Value,
    /// Each day's curves.
    pub days: Vec<DaySummary>,
    /// The output directory.
    pub out: PathBuf,
}

/// The chart file of day `d` (0-based): `chart.svg` for the first, `chart-day<n>.svg` after.
pub fn chart_name(d: usize) -> String {
    if d == 0 {
        "chart.svg".to_string()
    } else {
        format!("chart-day{}.svg", d + 1)
    }
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

/// One day: ADMM against the centralised optimum over the bids the gateways made that day,
/// peak-to-average, proofs, latency.
fn summarize_day(i: &Inputs<'_>, spec: &MarketSpec, market: &Market) -> Result<(serde_json::Value, DaySummary, usize), String> {
    // Each bidding appliance's parameters and committed schedule, in scenario order (names
    // end in the index).
    let mut bidders: Vec<(usize, Device, Vec<i32>)> = vec![];
    for (state, gw) in i.states.iter().zip(i.gateways) {
        let Some(m) = state.markets.get(&spec.market_id) else { continue };
        for (name, s) in &m.schedules {
            let idx: usize = name.rsplit('-').next().and_then(|n| n.parse().ok()).ok_or(format!("appliance name {name}"))?;
            let bid = m.bids.get(name).ok_or(format!("{name} has a schedule but no bid"))?;
            let id = gw.appliances.iter().find(|a| &a.name == name).map(|a| a.id()).ok_or(format!("appliance {name}"))?;
            bidders.push((idx, Device { id, params: bid.params.clone(), costs: bid.costs.clone() }, s.clone()));
        }
    }
    bidders.sort_by_key(|b| b.0);
    let devices: Vec<Device> = bidders.iter().map(|b| b.1.clone()).collect();
    let schedules: Vec<Vec<i32>> = bidders.iter().map(|b| b.2.clone()).collect();
    let grid = spec.admm().map_err(|e| e.to_string())?.grid;
    let admm_objective = protocol::central::objective(&devices, &grid, &schedules);
    let central = protocol::central::solve_central(&devices, &grid).map_err(|e| format!("central solve: {e}"))?;
    let gap = central.gap(admm_objective);
    let mut aggregate: Vec<f64> = protocol::central::total_load(&schedules).into_iter().map(|w| w as f64).collect();
    aggregate.resize(spec.slots as usize, 0.0);
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
    let prices: Vec<f64> = market.final_body.prices.iter().map(|&p| fixed(p)).collect();
    let proofs_included: usize = market.iterations.iter().map(|it| it.1).sum();
    let latency = &market.latency_ms;
    let mean_latency = latency.iter().sum::<u64>() as f64 / latency.len().max(1) as f64;
    let max_latency = latency.iter().copied().max().unwrap_or(0);
    let last = market.iterations.last().map(|it| it.2).unwrap_or([0.0; 4]);
    let json = serde_json::json!({
        "market_id": spec.market_id,
        "bids": market.enrolled,
        "withdrawals": market.withdrawn,
        "iterations": market.final_body.iterations,
        "converged": market.final_body.converged,
        "final_height": market.height,
        "residuals_w": {"primal": last[0], "dual": last[1], "eps_primal": last[2], "eps_dual": last[3]},
        "residual_curve": market.iterations.iter().map(|it| serde_json::json!({"k": it.0, "r": it.2[0], "s": it.2[1]})).collect::<Vec<_>>(),
        "peak_to_average": {"before": par_before, "after": par_after},
        "objective": {"admm": admm_objective, "central": central.objective, "gap": gap.whole, "gap_controllable": gap.controllable},
        "schedules_committed": schedules.len(),
        "proofs_included": proofs_included,
        "commit_latency_ms": {"mean": mean_latency, "max": max_latency},
        "aggregate_w": aggregate,
        "base_load_w": base,
        "prices_eur_mwh": prices,
    });
    Ok((json, DaySummary { base, aggregate, prices }, schedules.len()))
}

/// How many bills and credits the summary lists.
const LARGEST: usize = 5;

/// µ€ as €.
fn eur(micro: impl Into<i128>) -> f64 {
    micro.into() as f64 / 1e6
}

/// µ€ as a JSON number (a decimal string beyond i64, which no demo day reaches).
fn micro(v: i128) -> serde_json::Value {
    i64::try_from(v).map_or_else(|_| serde_json::json!(v.to_string()), |v| serde_json::json!(v))
}

/// One day's settlement: totals (µ€ and €), readings committed, the five largest bills and
/// credits by appliance name.
fn settlement_json(i: &Inputs<'_>, spec: &MarketSpec, s: &SettlementBody) -> serde_json::Value {
    let names: std::collections::BTreeMap<DeviceId, &str> = i.gateways.iter().flat_map(|g| g.appliances.iter().map(|a| (a.id(), a.name.as_str()))).collect();
    let line = |b: &protocol::settlement::Bill| {
        serde_json::json!({
            "appliance": names.get(&b.device).copied().unwrap_or("?"),
            "total_eur": eur(b.total()),
            "energy_eur": eur(b.energy),
            "imbalance_eur": eur(b.imbalance),
            "metered_slots": b.metered_slots,
        })
    };
    let mut by_total: Vec<&protocol::settlement::Bill> = s.bills.iter().collect();
    by_total.sort_by_key(|b| (std::cmp::Reverse(b.total()), b.device));
    let bills: Vec<_> = by_total.iter().filter(|b| b.total() > 0).take(LARGEST).map(|b| line(b)).collect();
    let credits: Vec<_> = by_total.iter().rev().filter(|b| b.total() < 0).take(LARGEST).map(|b| line(b)).collect();
    let t = &s.totals;
    serde_json::json!({
        "bills": s.bills.len(),
        "readings_committed": s.bills.iter().map(|b| b.metered_slots as u64).sum::<u64>(),
        "slots_billed": s.bills.len() as u64 * spec.slots as u64,
        "micro_eur": {
            "consumers_pay": micro(t.consumers_pay),
            "producers_receive": micro(t.producers_receive),
            "imbalance": micro(t.imbalance_revenue),
            "network_revenue": micro(t.network_revenue),
        },
        "consumers_pay_eur": eur(t.consumers_pay),
        "producers_receive_eur": eur(t.producers_receive),
        "imbalance_eur": eur(t.imbalance_revenue),
        "network_revenue_eur": eur(t.network_revenue),
        "conserved": t.consumers_pay == t.producers_receive + t.imbalance_revenue + t.network_revenue,
        "largest_bills": bills,
        "largest_credits": credits,
    })
}

/// Computes the summary: each day's ADMM against the centralised optimum, peak-to-average,
/// proofs, latency; execution, the refused device and the validators' counters.
pub fn summarize(i: Inputs<'_>) -> Result<Summary, String> {
    let t = i.args.slots;
    let mut days_json = vec![];
    let mut days = vec![];
    let mut expected_setpoints = 0u64;
    for (d, (spec, market)) in i.markets.iter().enumerate() {
        let (mut json, day, committed) = summarize_day(&i, spec, market)?;
        if let Some(s) = i.settlements.get(d) {
            json["settlement"] = settlement_json(&i, spec, s);
        }
        expected_setpoints += (committed * (t + 1)) as u64;
        days_json.push(json);
        days.push(day);
    }
    let proofs_verified = i.stats.iter().map(|s| s.proofs_verified).min().unwrap_or(0);
    let reject = |label: &str| i.stats.iter().map(|s| s.rejects.get(label).copied().unwrap_or(0)).sum::<u64>();
    let bad_proofs = reject("bad_proof") + reject("malformed_proof");
    let node_latency: Vec<f64> = i.stats.iter().filter(|s| s.commits > 0).map(|s| s.commit_latency_sum_ms as f64 / s.commits as f64).collect();
    let node_latency = node_latency.iter().sum::<f64>() / node_latency.len().max(1) as f64;
    let executed = i.states.iter().all(|s| s.markets.values().all(|m| m.executed)) && i.setpoints_seen >= expected_setpoints;
    let json = serde_json::json!({
        "appliances": i.scenario.devices.len(),
        "gateways": i.gateways.len(),
        "validators": i.args.validators,
        "slots": t,
        "grid": format!("{:?}", i.args.grid).to_lowercase(),
        "seed": i.args.seed,
        "days": days_json,
        "withdrawn": i.withdrawn,
        "unattested_refused": {"answer": i.refused, "refusals_counted_by_validators": reject("unattested")},
        "proofs": {"verified_per_validator": proofs_verified, "rejected_invalid": bad_proofs},
        "validators_due_to_commit_mean_ms": node_latency,
        "iteration_window_ms": i.iteration_ms,
        "execution": {"setpoints_seen": i.setpoints_seen, "setpoints_expected": expected_setpoints, "executed": executed},
        "wall_s": i.wall.as_secs_f64(),
        "out": i.out.display().to_string(),
    });
    Ok(Summary { json, days, out: i.out })
}

/// The summary as text.
pub fn render(s: &Summary) -> String {
    let j = &s.json;
    let f = |v: &serde_json::Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.3}"));
    let mut out = String::new();
    let days = j["days"].as_array().map_or(0, |d| d.len());
    out += &format!(
        "\ngridproof: {days} market day{} on one chain, {} appliances in {} gateways, {} validators, T = {}, grid {}\n",
        if days == 1 { "" } else { "s" },
        j["appliances"],
        j["gateways"],
        j["validators"],
        j["slots"],
        j["grid"].as_str().unwrap_or("")
    );
    for (d, day) in j["days"].as_array().into_iter().flatten().enumerate() {
        out += &format!("day {} (market {})\n", d + 1, day["market_id"]);
        out += &format!("  bids                {} committed, {} withdrawn before the close\n", day["bids"], day["withdrawals"]);
        out += &format!(
            "  iterations          {} ({}), final entry at height {}\n",
            day["iterations"],
            if day["converged"] == true { "converged" } else { "K_max reached" },
            day["final_height"]
        );
        let r = &day["residuals_w"];
        out += &format!(
            "  residuals           r = {:.1} W (ε_pri {:.1}), s = {:.1} W (ε_dual {:.1})\n",
            r["primal"].as_f64().unwrap_or(0.0),
            r["eps_primal"].as_f64().unwrap_or(0.0),
            r["dual"].as_f64().unwrap_or(0.0),
            r["eps_dual"].as_f64().unwrap_or(0.0)
        );
        out += &format!("  peak-to-average     {} before → {} after\n", f(&day["peak_to_average"]["before"]), f(&day["peak_to_average"]["after"]));
        out += &format!(
            "  objective gap       {:+.3} % to the centralised optimum (clarabel, all private data in one place, the specified constraints exactly); {:+.3} % of the part schedules can change\n",
            100.0 * day["objective"]["gap"].as_f64().unwrap_or(f64::NAN),
            100.0 * day["objective"]["gap_controllable"].as_f64().unwrap_or(f64::NAN)
        );
        out += &format!("  proofs              {} included\n", day["proofs_included"]);
        out += &format!(
            "  commit latency      {:.0} ms mean, {} ms max: iteration deadline → committed entry at a client (window {} ms)\n",
            day["commit_latency_ms"]["mean"].as_f64().unwrap_or(0.0),
            day["commit_latency_ms"]["max"],
            j["iteration_window_ms"]
        );
        let st = &day["settlement"];
        if st.is_object() {
            let e = |v: &serde_json::Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.2} €"));
            out += &format!(
                "  settlement          consumers pay {}, producers receive {}, imbalance {}, the grid keeps {}{}\n",
                e(&st["consumers_pay_eur"]),
                e(&st["producers_receive_eur"]),
                e(&st["imbalance_eur"]),
                e(&st["network_revenue_eur"]),
                if st["conserved"] == true { " (conserved to the µ€)" } else { " (NOT CONSERVED)" }
            );
            out += &format!("  readings            {} of {} slots metered (the rest settled as scheduled)\n", st["readings_committed"], st["slots_billed"]);
            let list = |v: &serde_json::Value| {
                let items: Vec<String> =
                    v.as_array().into_iter().flatten().map(|b| format!("{} {}", b["appliance"].as_str().unwrap_or("?"), e(&b["total_eur"]))).collect();
                if items.is_empty() {
                    "none".to_string()
                } else {
                    items.join(", ")
                }
            };
            out += &format!("  largest bills       {}\n", list(&st["largest_bills"]));
            out += &format!("  largest credits     {}\n", list(&st["largest_credits"]));
        }
        out += &format!("  chart               {}\n", s.out.join(chart_name(d)).display());
    }
    if let Some(w) = j["withdrawn"].as_str() {
        out += &format!("withdrawn on day 2    {w} (its day turned \"off\" in the gateway's overrides file after it bid)\n");
    }
    if let Some(a) = j["unattested_refused"]["answer"].as_str() {
        out += &format!("unattested device    refused by every validator ({}): {a}\n", j["unattested_refused"]["refusals_counted_by_validators"]);
    }
    out += &format!(
        "proofs               verified by every validator: {}; {} rejected as invalid\n",
        j["proofs"]["verified_per_validator"], j["proofs"]["rejected_invalid"]
    );
    out += &format!("execution            {} of {} setpoints published over MQTT\n", j["execution"]["setpoints_seen"], j["execution"]["setpoints_expected"]);
    out += &format!("wall time            {:.0} s\n", j["wall_s"].as_f64().unwrap_or(0.0));
    out += &format!("data                 {}\n", s.out.join("summary.json").display());
    out
}

/// Draws day `day`'s base load, the load with the committed flexible schedules, and the
/// prices: load in kW on the left axis, price in €/MWh on the right, the hours of the day
/// (each slot at its start) along the bottom, and a legend.
pub fn chart(path: &Path, s: &DaySummary, day: usize) -> Result<(), String> {
    use plotters::prelude::*;
    let t = s.aggregate.len();
    let hours_per_slot = 24.0 / t.max(1) as f64;
    let kw = |v: &[f64]| v.iter().map(|w| w / 1000.0).collect::<Vec<f64>>();
    let (base, aggregate) = (kw(&s.base), kw(&s.aggregate));
    let total: Vec<f64> = if base.is_empty() { aggregate.clone() } else { base.iter().zip(&aggregate).map(|(b, x)| b + x).collect() };
    let all = base.iter().chain(&total).chain(&aggregate);
    let (lo, hi) = all.fold((0.0f64, 0.001f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (plo, phi) = s.prices.iter().fold((0.0f64, 1.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let pad = |lo: f64, hi: f64| (lo - 0.1 * (hi - lo).abs(), hi + 0.1 * (hi - lo).abs());
    let ((lo, hi), (plo, phi)) = (pad(lo, hi), pad(plo, phi));
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("gridproof: committed day-ahead schedule, day {day}"), ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..24.0, lo..hi)
        .map_err(|e| e.to_string())?
        .set_secondary_coord(0.0..24.0, plo..phi);
    chart
        .configure_mesh()
        .x_desc("hour of the day")
        .x_labels(13)
        .x_label_formatter(&|h: &f64| format!("{:02}:00", h.round() as u32))
        .y_desc("load, kW")
        .y_label_formatter(&|v: &f64| format!("{v:.1}"))
        .draw()
        .map_err(|e| e.to_string())?;
    chart.configure_secondary_axes().y_desc("price, €/MWh").label_style(("sans-serif", 12)).draw().map_err(|e| e.to_string())?;
    // Each slot's value held over the slot (a step line: slots are averages).
    let series =
        |v: &[f64]| v.iter().enumerate().flat_map(|(i, &y)| [(i as f64 * hours_per_slot, y), ((i + 1) as f64 * hours_per_slot, y)]).collect::<Vec<_>>();
    if !base.is_empty() {
        chart
            .draw_series(LineSeries::new(series(&base), &BLUE))
            .map_err(|e| e.to_string())?
            .label("base load, kW")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    }
    chart
        .draw_series(LineSeries::new(series(&total), RED.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("load with the schedules, kW")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new(series(&aggregate), &GREEN))
        .map_err(|e| e.to_string())?
        .label("flexible appliances, kW")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .draw_secondary_series(LineSeries::new(series(&s.prices), &BLACK))
        .map_err(|e| e.to_string())?
        .label("price, €/MWh")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw().map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
