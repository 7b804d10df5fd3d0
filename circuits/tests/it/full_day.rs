//! A realistic household at T = 96 (15-minute slots), from configuration-style specs to a
//! satisfied update circuit for each model.

use circuits::spec::ApplianceSpec;
use circuits::statement::is_satisfied;
use circuits::{Slots, UpdateCircuit};
use crate::common::*;

#[test]
fn household_day_is_provable_for_every_model() {
    let day = Slots::DAY_15_MIN;
    // EV home 18:00..07:00 is slots 72..96 and 0..28; needs 30 kWh at up to 11 kW.
    let ev =
        ApplianceSpec::Deferrable { max_power_kw: 11.0, energy_min_kwh: 30.0, energy_max_kwh: 40.0, windows: vec![[0, 28], [72, 96]], ramp_kw: Some(11.0) };
    let mut ev_x = vec![0; 96];
    // 30 kWh = 120 000 W·slot: 11 kW for 10 slots, then 10 kW for 1 slot.
    ev_x[..10].iter_mut().for_each(|x| *x = 11_000);
    ev_x[10] = 10_000;
    let battery = ApplianceSpec::Battery { capacity_kwh: 10.0, max_charge_kw: 5.0, max_discharge_kw: 5.0, initial_kwh: 5.0, final_min_kwh: 5.0 };
    let mut bat_x = vec![0; 96];
    bat_x[40..44].iter_mut().for_each(|x| *x = 5000); // +5 kWh at noon
    bat_x[76..80].iter_mut().for_each(|x| *x = -5000); // -5 kWh in the evening
    let forecast: Vec<f64> = (0..96)
        .map(|t| {
            let h = t as f64 / 4.0;
            if (6.0..20.0).contains(&h) {
                6.0 * (std::f64::consts::PI * (h - 6.0) / 14.0).sin()
            } else {
                0.0
            }
        })
        .collect();
    let pv = ApplianceSpec::Producer { forecast_kw: forecast.clone() };
    let pv_x: Vec<i32> = forecast.iter().map(|kw| -((kw * 1000.0).round_ties_even() as i32) / 2).collect();
    let hp = ApplianceSpec::Thermal { max_power_kw: 3.0, decay: 1.0, gain_c_per_kw: 0.5, drift_c: vec![-0.2], initial_c: 21.0, min_c: 19.0, max_c: 23.0 };
    let hp_x = vec![400; 96];

    for (spec, x) in [(ev, ev_x), (battery, bat_x), (pv, pv_x), (hp, hp_x)] {
        let params = spec.to_params(day, 900).unwrap();
        params.check(&x).unwrap_or_else(|e| panic!("{:?}: {e}", params.kind()));
        let circuit = UpdateCircuit::new(witness(params.clone(), x)).unwrap();
        assert_eq!(circuit.public_inputs().unwrap().len(), 3 + 14);
        assert!(is_satisfied(circuit).unwrap(), "{:?}", params.kind());
    }
}
