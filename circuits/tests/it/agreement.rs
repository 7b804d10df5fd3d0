//! The native checker and the circuit agree: random valid parameters and schedules, with every
//! bound drawn either exactly tight or slack, are accepted by both; the same schedules moved
//! by one watt in one slot are accepted by both or rejected by both. With tight bounds most of
//! those one-watt moves cross a bound, so both sides of every bound are exercised.

use circuits::fixed::Fixed;
use circuits::model::thermal::Thermal;
use circuits::ModelParams;
use crate::common::*;
use proptest::prelude::*;

/// A slack that is 0 (bound exactly met) a third of the time.
fn slack(max: i64) -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), 1..=max, Just(0i64)]
}

fn deferrable_case() -> impl Strategy<Value = (ModelParams, Vec<i32>)> {
    (1usize..=10)
        .prop_flat_map(|t| {
            (
                proptest::collection::vec(prop_oneof![Just(0i32), 0..=5000i32, Just(5000)], t),
                proptest::collection::vec(any::<bool>(), t),
                slack(3000),
                prop_oneof![Just(None), slack(3000).prop_map(Some)],
                slack(500),
                slack(500),
            )
        })
        .prop_map(|(x, extra_available, p_slack, ramp_slack, lo, hi)| {
            let available: Vec<bool> = x.iter().zip(&extra_available).map(|(&v, &a)| v > 0 || a).collect();
            let p_max = *x.iter().max().unwrap() + p_slack as i32;
            let max_step = x.windows(2).map(|w| (w[1] - w[0]).abs()).max().unwrap_or(0);
            let ramp = ramp_slack.map(|s| (max_step + s as i32).min(p_max));
            let sum: i64 = x.iter().map(|&v| v as i64).sum();
            (deferrable(available, p_max, (sum - lo).max(0), sum + hi, ramp), x)
        })
}

fn battery_case() -> impl Strategy<Value = (ModelParams, Vec<i32>)> {
    (1usize..=10).prop_flat_map(|t| (proptest::collection::vec(-3000i32..=3000, t), slack(1000), slack(1000), slack(5000), slack(5000), slack(5000))).prop_map(
        |(x, ch, dis, s0_slack, cap_slack, final_slack)| {
            let p_charge = x.iter().copied().max().unwrap().max(0) + ch as i32;
            let p_discharge = (-x.iter().copied().min().unwrap()).max(0) + dis as i32;
            let mut prefix = vec![0i64];
            for &v in &x {
                prefix.push(prefix.last().unwrap() + v as i64);
            }
            let soc_initial = (-prefix.iter().copied().min().unwrap()).max(0) + s0_slack;
            let capacity = soc_initial + prefix.iter().copied().max().unwrap() + cap_slack;
            let soc_final = (soc_initial + prefix.last().unwrap() - final_slack).max(0);
            (battery(x.len(), p_charge, p_discharge, capacity, soc_initial, soc_final), x)
        },
    )
}

fn producer_case() -> impl Strategy<Value = (ModelParams, Vec<i32>)> {
    (1usize..=12).prop_flat_map(|t| (proptest::collection::vec(-5000i32..=0, t), proptest::collection::vec(slack(2000), t))).prop_map(|(x, s)| {
        let forecast = x.iter().zip(&s).map(|(&v, &s)| -v + s as i32).collect();
        (producer(forecast), x)
    })
}

fn thermal_case() -> impl Strategy<Value = (ModelParams, Vec<i32>)> {
    (1usize..=8)
        .prop_flat_map(|t| {
            (
                proptest::collection::vec(0i32..=4000, t),
                slack(2000),
                (734_003i64..=1 << 20),                                 // a in [0.7, 1]
                0i64..=1000,                                            // b: up to ~0.001 °C per W
                proptest::collection::vec(-(1i64 << 19)..(1 << 19), t), // c: ±0.5 °C
                (15i64 << 20)..=(25i64 << 20),                          // τ0: 15..25 °C
                slack(1 << 19),
                slack(1 << 19),
            )
        })
        .prop_map(|(x, p_slack, a, b, c, tau0, lo, hi)| {
            let p_max = x.iter().copied().max().unwrap() + p_slack as i32;
            let mut t = Thermal {
                p_max,
                decay: Fixed(a),
                gain: Fixed(b),
                drift: c.into_iter().map(Fixed).collect(),
                temp_initial: Fixed(tau0),
                temp_min: Fixed(0),
                temp_max: Fixed(0),
            };
            let probe = circuits::model::ThermalParams::new(Thermal { temp_min: Fixed(-(1 << 26)), temp_max: Fixed((1 << 26) - 1), ..t.clone() }).unwrap();
            let traj = probe.trajectory(&x);
            t.temp_min = Fixed(*traj.iter().min().unwrap() as i64 - lo);
            t.temp_max = Fixed(*traj.iter().max().unwrap() as i64 + hi);
            (thermal(t), x)
        })
}

fn any_case() -> impl Strategy<Value = (ModelParams, Vec<i32>)> {
    prop_oneof![deferrable_case(), battery_case(), producer_case(), thermal_case()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_updates_are_accepted_by_both((params, x) in any_case()) {
        prop_assert_eq!(params.check(&x), Ok(()));
        prop_assert!(circuit_accepts(&witness(params, x)));
    }

    #[test]
    fn one_watt_moves_are_judged_alike((params, x) in any_case(), slot in any::<prop::sample::Index>(), up in any::<bool>()) {
        let mut moved = x.clone();
        let t = slot.index(x.len());
        moved[t] += if up { 1 } else { -1 };
        let native = params.check(&moved);
        let circuit = circuit_accepts(&witness(params.clone(), moved.clone()));
        prop_assert_eq!(native.is_ok(), circuit, "native {:?} vs circuit {} for {:?} at slot {}", native, circuit, params.kind(), t);
    }
}

/// With every bound tight, each one-watt move across it is rejected by both sides: a direct
/// check that "violate by one unit" cases occur and are rejected, per model.
#[test]
fn tight_bounds_reject_one_watt_over() {
    let cases: Vec<(ModelParams, Vec<i32>, usize, i32)> = vec![
        // x at p_max: one more watt breaks PowerMax.
        (deferrable(vec![true; 3], 2000, 0, 10_000, None), vec![2000, 2000, 2000], 1, 1),
        // Σx = E_min: one watt less breaks EnergyMin.
        (deferrable(vec![true; 3], 2000, 3000, 10_000, None), vec![1000, 1000, 1000], 2, -1),
        // s hits 0 at slot 1: one more watt of discharge breaks SocMin.
        (battery(3, 1000, 1000, 5000, 1000, 0), vec![-500, -500, 0], 1, -1),
        // x = −pv: one more watt of output breaks PowerMin.
        (producer(vec![800, 900]), vec![-800, -10], 0, -1),
    ];
    for (params, x, t, delta) in cases {
        assert_eq!(params.check(&x), Ok(()));
        assert!(circuit_accepts(&witness(params.clone(), x.clone())));
        let mut moved = x;
        moved[t] += delta;
        assert!(params.check(&moved).is_err(), "{:?}", params.kind());
        assert!(!circuit_accepts(&witness(params, moved)));
    }
}
