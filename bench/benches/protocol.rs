//! Protocol benchmarks (issue 6): the device's local step per model at T = 96, and the
//! validators' aggregation of one iteration for N = 10,000 devices — and, against that
//! baseline, the state root validators compute once per height (encode the chain state, hash
//! it) with those 10,000 devices scheduling (issue 20, docs/protocol.md §6.10).
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

/// The state of one market with `n` devices iterating at T = 96, as a snapshot holds it.
fn scheduling_snapshot(n: usize) -> protocol::snapshot::ChainSnapshot {
    use protocol::snapshot::{ChainSnapshot, EngineSnapshot, EnrolledSnapshot, MarketSnapshot, Progress};
    let sc = Scenario::generate(2, n, Slots::DAY_15_MIN, 900, Mix::Household);
    let spec = protocol::entry::MarketSpec {
        market_id: 1,
        slots: 96,
        slot_seconds: 900,
        rho: Fixed::from_f64("rho", 0.02).unwrap().raw(),
        eps_abs: SCALE,
        eps_rel: SCALE / 1000,
        max_iterations: 100,
        grid: protocol::entry::GridSpec::ValleyFilling { gamma: SCALE / 100, base_load: sc.base_load.clone() },
        registration_close_ms: 1,
        iteration_ms: 2000,
        execution_start_ms: 1_000_000,
        settlement: None,
        compressed_slot_ms: None,
    };
    let mut ids: Vec<_> = sc.devices.iter().map(|d| d.id).collect();
    ids.sort_unstable();
    let commitment = protocol::codec::FieldElement::new(&circuits::Fr::from(7u64));
    let enrolled = ids.iter().map(|&device| EnrolledSnapshot { device, kind: 1, commitment, attestation: [9; 32], import_w: 11_000, export_w: 0, capacity: 400_000 }).collect();
    let latest = ids.iter().enumerate().map(|(i, &d)| (d, (0..96).map(|t| ((i * 37 + t * 11) % 5000) as i32 - 1000).collect())).collect();
    let engine = EngineSnapshot { iteration: 12, latest, x_bar: vec![3 * SCALE; 96], z_bar: vec![-2 * SCALE; 96], u: vec![SCALE; 96], residuals: Some([1, 2, 3, 4]), converged: false };
    let market = MarketSnapshot { spec, opened_ms: 0, opened_height: 0, last_ms: 500, last_batch: Some(3), enrolled, progress: Progress::Scheduling(engine) };
    ChainSnapshot { height: 40, tip_hash: [1; 32], tip_timestamp_ms: 500, used_ids: vec![1], revoked: vec![], markets: vec![market] }
}

fn state_root(c: &mut Criterion) {
    let snap = scheduling_snapshot(10_000);
    eprintln!("state of 10,000 scheduling devices at T = 96: {} bytes encoded", protocol::codec::encode(&snap).len());
    let mut g = c.benchmark_group("state_root_t96");
    g.sample_size(20);
    g.bench_function("n10000", |b| b.iter(|| protocol::snapshot::state_root(&protocol::codec::encode(black_box(&snap)))));
    g.finish();
}

criterion_group!(benches, local_steps, aggregation, state_root);
criterion_main!(benches);
