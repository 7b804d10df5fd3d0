//! Every schedule `local_step` returns passes the `circuits` native checker (and so the
//! circuit): random devices, random public variables, extreme prices included.

use circuits::fixed::{Fixed, SCALE};
use circuits::{sample, ModelKind, Slots};
use proptest::prelude::*;
use protocol::admm::Variables;
use protocol::local::{local_step, Costs, LocalError};
use protocol::scenario::{Mix, Scenario};

/// Public variables with magnitudes from 0 up to ±10 MW per slot (as W at scale 2^20).
fn variables(t: usize) -> impl Strategy<Value = Variables> {
    let value = prop_oneof![Just(0i64), -(5_000i64 * SCALE)..(5_000 * SCALE), -(10_000_000i64 * SCALE)..(10_000_000 * SCALE),];
    (proptest::collection::vec(value.clone(), t), proptest::collection::vec(value.clone(), t), proptest::collection::vec(value, t))
        .prop_map(|(x_bar, z_bar, u)| Variables { x_bar, z_bar, u })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn local_steps_always_pass_the_checker(
        seed in 0u64..1_000,
        index in 0usize..40,
        vars in variables(24),
        rho in prop_oneof![Just(0.02f64), 1e-4..1.0],
    ) {
        let sc = Scenario::generate(seed, 40, Slots::new(24).unwrap(), 3600, if seed % 3 == 0 { Mix::Exchange } else { Mix::Household });
        let d = &sc.devices[index];
        let previous = vec![0; 24];
        match local_step(&d.params, &d.costs, Fixed::from_f64("rho", rho).unwrap(), &vars, &previous) {
            Ok(x) => prop_assert_eq!(d.params.check(&x), Ok(())),
            // A solver that gives up is allowed (the device then resends its last schedule),
            // a schedule the checker would reject is not.
            Err(LocalError::Solver(_)) => {}
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}

#[test]
fn extreme_prices_move_a_battery_to_arbitrage() {
    let slots = Slots::new(24).unwrap();
    let rho = Fixed::from_f64("rho", 0.02).unwrap();
    // Very high prices in the morning (u ≫ 0), very low in the evening: discharge, then charge.
    let u: Vec<i64> = (0..24).map(|t| if t < 12 { 100_000 * SCALE } else { -100_000 * SCALE }).collect();
    let vars = Variables { x_bar: vec![0; 24], z_bar: vec![0; 24], u };
    let params = sample::params(ModelKind::Battery, slots);
    let x = local_step(&params, &Costs::none(), rho, &vars, &[0; 24]).unwrap();
    params.check(&x).unwrap();
    assert!(x[..12].iter().all(|&v| v <= 0) && x[..12].iter().any(|&v| v < 0), "{x:?}");
    assert!(x[12..].iter().all(|&v| v >= 0) && x[12..].iter().any(|&v| v > 0), "{x:?}");
    // With 5 kW and 20 kWh·slot of headroom each way, the battery empties at 5 kW for 4 slots.
    assert_eq!(x[..12].iter().map(|&v| v as i64).sum::<i64>(), -20_000, "{x:?}");
}

#[test]
fn mismatched_lengths_are_rejected() {
    let slots = Slots::new(24).unwrap();
    let params = sample::params(ModelKind::Producer, slots);
    let vars = Variables::zero(Slots::new(12).unwrap());
    let e = local_step(&params, &Costs::none(), Fixed::ONE, &vars, &[0; 24]).unwrap_err();
    assert_eq!(e, LocalError::Length { expected: 24, got: 12 });
}

#[test]
fn the_solver_rarely_gives_up() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut ok, mut total) = (0, 0);
    for seed in 0..10u64 {
        let sc = Scenario::generate(seed, 20, Slots::new(24).unwrap(), 3600, Mix::Household);
        for d in &sc.devices {
            let vars = variables(24).new_tree(&mut runner).unwrap().current();
            total += 1;
            if let Ok(x) = local_step(&d.params, &d.costs, Fixed::from_f64("rho", 0.02).unwrap(), &vars, &[0; 24]) {
                assert_eq!(d.params.check(&x), Ok(()));
                ok += 1;
            }
        }
    }
    assert!(ok * 100 >= total * 95, "only {ok} of {total} local steps solved");
}
