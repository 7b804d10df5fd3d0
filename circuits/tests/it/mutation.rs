//! One witness per constraint family that breaks that family alone: the native checker names
//! exactly that family, and the circuit is unsatisfied. Removing a family from a gadget makes
//! its row here fail.

use circuits::fixed::Fixed;
use circuits::model::thermal::Thermal;
use circuits::model::{Family, ModelParams, ThermalParams};
use crate::common::*;

struct Case {
    name: &'static str,
    params: ModelParams,
    valid: Vec<i32>,
    broken: Vec<i32>,
    family: Family,
}

fn with(x: &[i32], t: usize, v: i32) -> Vec<i32> {
    let mut y = x.to_vec();
    y[t] = v;
    y
}

fn thermal_base() -> (Thermal, Vec<i32>, Vec<i128>) {
    let x = vec![3000, 500, 1500, 2000, 500, 500];
    let t = Thermal {
        p_max: 3500,
        decay: Fixed::from_f64("a", 0.95).unwrap(),
        gain: Fixed::from_f64("b", 0.0005).unwrap(),
        drift: vec![Fixed::from_f64("c", -0.3).unwrap(); 6],
        temp_initial: Fixed::from_f64("t0", 20.0).unwrap(),
        temp_min: Fixed::from_f64("min", -10.0).unwrap(),
        temp_max: Fixed::from_f64("max", 40.0).unwrap(),
    };
    let traj = ThermalParams::new(t.clone()).unwrap().trajectory(&x);
    (t, x, traj)
}

fn cases() -> Vec<Case> {
    let d = vec![0, 500, 1000, 600, 0, 600, 1000, 1000];
    let avail = vec![true, true, true, true, false, true, true, true];
    let sum: i64 = d.iter().map(|&v| v as i64).sum();
    let slack_d = || deferrable(avail.clone(), 1000, sum - 1000, sum + 1000, Some(600));

    let b = vec![1000, -500, -500, 1000, 0, 0];
    let (th, tx, traj) = thermal_base();
    let (lo_slot, lo) = traj.iter().enumerate().min_by_key(|(_, v)| **v).map(|(i, v)| (i, *v as i64)).unwrap();
    let (hi_slot, hi) = traj.iter().enumerate().max_by_key(|(_, v)| **v).map(|(i, v)| (i, *v as i64)).unwrap();
    let p = vec![-1000, -200, 0, -800];
    let pv = vec![1000, 500, 0, 800];

    vec![
        Case { name: "deferrable x < 0", params: slack_d(), broken: with(&d, 0, -1), valid: d.clone(), family: Family::PowerMin },
        Case { name: "deferrable x > p_max", params: slack_d(), broken: with(&d, 2, 1001), valid: d.clone(), family: Family::PowerMax },
        Case { name: "deferrable power while unavailable", params: slack_d(), broken: with(&d, 4, 1), valid: d.clone(), family: Family::PowerMax },
        Case { name: "deferrable ramp down", params: slack_d(), broken: with(&d, 3, 399), valid: d.clone(), family: Family::Ramp },
        Case { name: "deferrable ramp up", params: slack_d(), broken: with(&d, 5, 601), valid: d.clone(), family: Family::Ramp },
        Case {
            name: "deferrable energy below E_min",
            params: deferrable(avail.clone(), 1000, sum, sum + 100, Some(600)),
            broken: with(&d, 1, 499),
            valid: d.clone(),
            family: Family::EnergyMin,
        },
        Case {
            name: "deferrable energy above E_max",
            params: deferrable(avail.clone(), 1000, sum - 100, sum, Some(600)),
            broken: with(&d, 1, 501),
            valid: d.clone(),
            family: Family::EnergyMax,
        },
        Case { name: "battery x < -p_dis", params: battery(6, 1000, 800, 3000, 0, 0), broken: with(&b, 4, -801), valid: b.clone(), family: Family::PowerMin },
        Case { name: "battery x > p_ch", params: battery(6, 1000, 800, 3000, 0, 0), broken: with(&b, 4, 1001), valid: b.clone(), family: Family::PowerMax },
        Case { name: "battery soc < 0", params: battery(6, 1000, 800, 3000, 0, 0), broken: with(&b, 2, -501), valid: b.clone(), family: Family::SocMin },
        Case { name: "battery soc > cap", params: battery(6, 1000, 800, 1000, 0, 0), broken: with(&b, 4, 1), valid: b.clone(), family: Family::SocMax },
        Case { name: "battery final soc", params: battery(6, 1000, 800, 3000, 0, 1000), broken: with(&b, 5, -1), valid: b.clone(), family: Family::SocFinal },
        Case { name: "producer x < -pv", params: producer(pv.clone()), broken: with(&p, 1, -501), valid: p.clone(), family: Family::PowerMin },
        Case { name: "producer x > 0", params: producer(pv.clone()), broken: with(&p, 2, 1), valid: p.clone(), family: Family::PowerMax },
        Case { name: "thermal x < 0", params: thermal(th.clone()), broken: with(&tx, 5, -1), valid: tx.clone(), family: Family::PowerMin },
        Case { name: "thermal x > p_max", params: thermal(th.clone()), broken: with(&tx, 0, 3501), valid: tx.clone(), family: Family::PowerMax },
        Case {
            name: "thermal below comfort band",
            params: thermal(Thermal { temp_min: Fixed(lo + 1), ..th.clone() }),
            valid: tx.clone(),
            broken: tx.clone(),
            family: Family::TempMin,
        },
        Case {
            name: "thermal above comfort band",
            params: thermal(Thermal { temp_max: Fixed(hi - 1), ..th.clone() }),
            valid: tx.clone(),
            broken: tx.clone(),
            family: Family::TempMax,
        },
        // The band cases above move θ; these move x by one watt, through the dynamics (every slot
        // heats, so x ± 1 stays within 0..=p_max).
        Case {
            name: "thermal too cold after less heating",
            params: thermal(Thermal { temp_min: Fixed(lo), ..th.clone() }),
            broken: with(&tx, lo_slot, tx[lo_slot] - 1),
            valid: tx.clone(),
            family: Family::TempMin,
        },
        Case {
            name: "thermal too warm after more heating",
            params: thermal(Thermal { temp_max: Fixed(hi), ..th.clone() }),
            broken: with(&tx, hi_slot, tx[hi_slot] + 1),
            valid: tx.clone(),
            family: Family::TempMax,
        },
    ]
}

#[test]
fn each_family_is_enforced_on_its_own() {
    for case in cases() {
        let broken = case.params.violations(&case.broken).unwrap();
        assert!(!broken.is_empty(), "{}: the broken witness should violate something", case.name);
        assert!(broken.iter().all(|v| v.family == case.family), "{}: expected only {:?}, got {:?}", case.name, case.family, broken);
        assert!(!circuit_accepts(&witness(case.params.clone(), case.broken.clone())), "{}: circuit accepted", case.name);
        // Where the base schedule is valid for these params, the circuit accepts it: the
        // rejection above is the family's doing, not a broken fixture.
        if case.params.check(&case.valid).is_ok() {
            assert!(circuit_accepts(&witness(case.params.clone(), case.valid.clone())), "{}: valid base rejected", case.name);
        }
    }
}

#[test]
fn every_family_has_a_case() {
    let covered: Vec<Family> = cases().iter().map(|c| c.family).collect();
    for f in [
        Family::PowerMin,
        Family::PowerMax,
        Family::EnergyMin,
        Family::EnergyMax,
        Family::Ramp,
        Family::SocMin,
        Family::SocMax,
        Family::SocFinal,
        Family::TempMin,
        Family::TempMax,
    ] {
        assert!(covered.contains(&f), "no mutation case for {f:?}");
    }
}

#[test]
fn check_names_first_violation_and_slot() {
    let params = deferrable(vec![true, true, false], 1000, 0, 3000, None);
    let err = params.check(&[0, 1200, 5]).unwrap_err().to_string();
    assert!(err.contains("PowerMax") && err.contains("slot 1"), "{err}");
}
