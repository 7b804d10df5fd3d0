//! Runs ADMM on a generated scenario and compares it with the centralised optimum.
//!
//! `cargo run --release -p protocol --example admm_report -- [N] [rho] [grid]`
//! (grid: valley | exchange | tariff; defaults 100, 0.002, valley)

use circuits::fixed::Fixed;
use circuits::Slots;
use protocol::admm::{AdmmParams, GridCost};
use protocol::central::{objective, solve_central, total_load};
use protocol::scenario::{Mix, Scenario};
use protocol::simulate::run;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let rho: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0.002);
    let grid_name = args.get(3).map(String::as_str).unwrap_or("valley");
    let mix = if grid_name == "exchange" { Mix::Exchange } else { Mix::Household };
    let sc = Scenario::generate(1, n, Slots::DAY_15_MIN, 900, mix);
    let grid = match grid_name {
        "exchange" => GridCost::Exchange,
        "tariff" => GridCost::Tariff {
            price: (0..96).map(|t| Fixed::from_f64("p", if (28..84).contains(&t) { 80.0 } else { 30.0 }).unwrap()).collect(),
            feeder_cap: n as i64 * 1500,
        },
        _ => sc.valley_filling(),
    };
    let params = AdmmParams {
        slots: sc.slots,
        rho: Fixed::from_f64("rho", rho).unwrap(),
        eps_abs: Fixed::from_f64("eps_abs", 1.0).unwrap(),
        eps_rel: Fixed::from_f64("eps_rel", 1e-3).unwrap(),
        max_iterations: 300,
        grid: grid.clone(),
    };
    let start = std::time::Instant::now();
    let central = solve_central(&sc.devices, &grid).expect("central solve");
    let t_central = start.elapsed();
    let start = std::time::Instant::now();
    let r = run(&sc.devices, params, |_, _| true).expect("run");
    let t_admm = start.elapsed();
    for f in &r.failures {
        println!("failure: {f:?}");
    }
    let x = r.schedules(&sc.devices);
    let obj = objective(&sc.devices, &grid, &x);
    let load = total_load(&x);
    println!("N = {n}, rho = {rho}, grid = {grid_name}");
    println!("ADMM: {} iterations, converged = {}, failed steps = {}, {:?}", r.iterations, r.converged, r.failed_steps, t_admm);
    for (k, res) in r.residuals.iter().enumerate().filter(|(k, _)| k % 10 == 0 || *k + 1 == r.residuals.len()) {
        println!(
            "  k={k:3} r={:10.1} s={:10.1} eps_p={:8.1} eps_d={:8.1}",
            res.primal as f64 / 1048576.0,
            res.dual as f64 / 1048576.0,
            res.eps_primal as f64 / 1048576.0,
            res.eps_dual as f64 / 1048576.0
        );
    }
    let gap = central.gap(obj);
    println!(
        "objective: admm {obj:.1}, central {:.1} ({:?}, exact constraints), gap {:+.4}% of the whole, {:+.4}% of the controllable part ({:.1}% of the optimum)",
        central.objective,
        t_central,
        100.0 * gap.whole,
        100.0 * gap.controllable,
        100.0 * (central.objective - central.constant) / central.objective.abs()
    );
    println!("max |Σx| = {}", load.iter().map(|v| v.abs()).max().unwrap());
    if let Some(p) = &central.prices {
        let admm_p: Vec<f64> = r.state.prices().unwrap().iter().map(|f| f.to_f64()).collect();
        let diff = p.iter().zip(&admm_p).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!("prices: central {:?}.. admm {:?}.. max diff {diff:.3}", &p[40..44], &admm_p[40..44]);
    }
}
