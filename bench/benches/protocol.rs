//! Protocol benchmarks (issue 6): the device's local step per model at T = 96, and the
//! validators' aggregation of one iteration for N = 10,000 devices.
//!
//! Run: `cargo bench -p bench --bench protocol`

use std::hint::black_box;

use circuits::fixed::{Fixed, SCALE};
use circuits::{ModelKind, Slots};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use protocol::admm::{AdmmParams, AdmmState, Variables};
use protocol::local::local_step;
use protocol::scenario::{Mix, Scenario};

fn local_steps(c: &mut Criterion) {
    let sc = Scenario::generate(1, 10, Slots::DAY_15_MIN, 900, Mix::Household);
    let rho = Fixed::from_f64("rho", 0.02).unwrap();
    // Mid-run public variables: a price signal with a day/night swing.
    let u: Vec<i64> = (0..96).map(|t| if (28..80).contains(&t) { 800 * SCALE } else { -400 * SCALE }).collect();
    let vars = Variables { x_bar: vec![300 * SCALE; 96], z_bar: vec![-200 * SCALE; 96], u };
    let mut g = c.benchmark_group("local_step_t96");
    for (kind, index) in [(ModelKind::Deferrable, 0), (ModelKind::Battery, 4), (ModelKind::Producer, 6), (ModelKind::Thermal, 8)] {
        let d = &sc.devices[index];
        assert_eq!(d.params.kind(), kind);
        let previous = vec![0; 96];
        g.bench_function(kind.name(), |b| b.iter(|| local_step(&d.params, &d.costs, rho, black_box(&vars), &previous).unwrap()));
    }
    g.finish();
}

fn aggregation(c: &mut Criterion) {
    let n = 10_000;
    let sc = Scenario::generate(2, n, Slots::DAY_15_MIN, 900, Mix::Household);
    let params = AdmmParams {
        slots: sc.slots,
        rho: Fixed::from_f64("rho", 0.02).unwrap(),
        eps_abs: Fixed::ONE,
        eps_rel: Fixed::from_f64("eps_rel", 1e-3).unwrap(),
        max_iterations: 100,
        grid: sc.valley_filling(),
    };
    let state = AdmmState::new(params, sc.devices.iter().map(|d| d.id)).unwrap();
    let updates: Vec<_> =
        sc.devices.iter().enumerate().map(|(i, d)| (d.id, (0..96).map(|t| ((i * 37 + t * 11) % 5000) as i32 - 1000).collect::<Vec<i32>>())).collect();
    let mut g = c.benchmark_group("aggregate_t96");
    g.sample_size(20);
    g.bench_function("n10000", |b| b.iter_batched(|| state.clone(), |mut s| s.apply_iteration(black_box(&updates)).unwrap(), BatchSize::LargeInput));
    g.finish();
}

criterion_group!(benches, local_steps, aggregation);
criterion_main!(benches);
