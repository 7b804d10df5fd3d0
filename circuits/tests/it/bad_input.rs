//! Bad input gets a typed error naming what was wrong, never a panic.

use circuits::fixed::{CodecError, Fixed};
use circuits::limits::{Slots, SlotsError};
use circuits::model::battery::Battery;
use circuits::model::deferrable::Deferrable;
use circuits::model::thermal::Thermal;
use circuits::model::{BatteryParams, CheckError, DeferrableParams, ModelKind, ParamError, ThermalParams};
use circuits::spec::ApplianceSpec;
use circuits::statement::StatementError;
use circuits::{Context, Fr, Shape, UpdateCircuit};
use crate::common::*;
use proptest::prelude::*;

const DAY: Slots = Slots::DAY_15_MIN;

#[test]
fn slot_counts_outside_1_to_288_are_rejected() {
    assert_eq!(Slots::new(0), Err(SlotsError(0)));
    assert_eq!(Slots::new(289), Err(SlotsError(289)));
    assert!(Slots::new(288).is_ok() && Slots::new(1).is_ok());
    let e = DeferrableParams::new(Deferrable { available: vec![], p_max: 1, e_min: 0, e_max: 0, ramp: None });
    assert!(matches!(e, Err(ParamError::Slots(SlotsError(0)))));
    assert!(serde_json::from_str::<Slots>("300").is_err());
}

#[test]
fn inconsistent_parameters_name_the_field() {
    let d = |p_max, e_min, e_max| DeferrableParams::new(Deferrable { available: vec![true; 4], p_max, e_min, e_max, ramp: None });
    let e = d(1000, 3000, 2000).unwrap_err();
    assert!(e.to_string().contains("e_min"), "{e}");
    let e = d(-1, 0, 0).unwrap_err();
    assert!(matches!(e, ParamError::OutOfRange { field: "p_max", .. }), "{e}");
    let e = d(200_000, 0, 0).unwrap_err();
    assert!(matches!(e, ParamError::OutOfRange { field: "p_max", .. }), "{e}");
    let e = d(1000, 5000, 6000).unwrap_err(); // 4 slots × 1000 W cannot deliver 5000
    assert!(matches!(e, ParamError::Inconsistent { model: ModelKind::Deferrable, .. }), "{e}");

    let b = BatteryParams::new(Battery { slots: 4, p_charge: 100, p_discharge: 100, capacity: 1000, soc_initial: 1001, soc_final_min: 0 });
    assert!(matches!(b, Err(ParamError::OutOfRange { field: "soc_initial", .. })));
    let b = BatteryParams::new(Battery { slots: 4, p_charge: 100, p_discharge: 100, capacity: 1000, soc_initial: 0, soc_final_min: 900 });
    assert!(matches!(b, Err(ParamError::Inconsistent { .. })));

    let th = Thermal {
        p_max: 1000,
        decay: Fixed::ONE,
        gain: Fixed(10),
        drift: vec![Fixed::ZERO; 4],
        temp_initial: Fixed::from_f64("t", 20.0).unwrap(),
        temp_min: Fixed::from_f64("t", 22.0).unwrap(),
        temp_max: Fixed::from_f64("t", 21.0).unwrap(),
    };
    assert!(matches!(ThermalParams::new(th.clone()), Err(ParamError::Inconsistent { model: ModelKind::Thermal, .. })));
    let hot = Thermal { temp_max: Fixed::from_f64("t", 80.0).unwrap(), temp_min: Fixed::ZERO, ..th.clone() };
    assert!(matches!(ThermalParams::new(hot), Err(ParamError::OutOfRange { field: "temp_max", .. })));
    let decay = Thermal { decay: Fixed(Fixed::ONE.0 + 1), temp_min: Fixed::ZERO, ..th };
    assert!(matches!(ThermalParams::new(decay), Err(ParamError::OutOfRange { field: "decay", .. })));
}

#[test]
fn deserialising_params_validates_them() {
    let bad = r#"{"model":"deferrable","available":[true,true],"p_max":100,"e_min":500,"e_max":100,"ramp":null}"#;
    let e = serde_json::from_str::<circuits::ModelParams>(bad).unwrap_err().to_string();
    assert!(e.contains("e_min"), "{e}");
    let good = r#"{"model":"battery","slots":4,"p_charge":100,"p_discharge":100,"capacity":1000,"soc_initial":10,"soc_final_min":0}"#;
    let p: circuits::ModelParams = serde_json::from_str(good).unwrap();
    assert_eq!(serde_json::from_str::<circuits::ModelParams>(&serde_json::to_string(&p).unwrap()).unwrap(), p);
}

#[test]
fn physical_specs_reject_nan_negative_and_unknown_models() {
    let ev = |p: f64, lo: f64| ApplianceSpec::Deferrable { max_power_kw: p, energy_min_kwh: lo, energy_max_kwh: 40.0, windows: vec![[0, 28]], ramp_kw: None };
    let e = ev(f64::NAN, 10.0).to_params(DAY, 900).unwrap_err();
    assert!(e.to_string().contains("max_power_kw"), "{e}");
    let e = ev(11.0, -1.0).to_params(DAY, 900).unwrap_err();
    assert!(e.to_string().contains("energy_min_kwh"), "{e}");
    let e = ev(f64::INFINITY, 1.0).to_params(DAY, 900).unwrap_err();
    assert!(e.to_string().contains("max_power_kw"), "{e}");
    let e = ev(500.0, 1.0).to_params(DAY, 900).unwrap_err(); // 500 kW exceeds the circuit range
    assert!(matches!(e, ParamError::OutOfRange { field: "p_max", .. }), "{e}");
    // 11 kW for 28 slots of 15 min is 77 kWh; 10 kWh needs 40 000 W·slot.
    let ok = ev(11.0, 10.0).to_params(DAY, 900).unwrap();
    assert_eq!(ok.kind(), ModelKind::Deferrable);
    let window = ApplianceSpec::Deferrable { max_power_kw: 1.0, energy_min_kwh: 0.0, energy_max_kwh: 1.0, windows: vec![[90, 100]], ramp_kw: None };
    assert!(window.to_params(DAY, 900).unwrap_err().to_string().contains("windows"));
    let pv = ApplianceSpec::Producer { forecast_kw: vec![1.0; 95] };
    assert!(matches!(pv.to_params(DAY, 900), Err(ParamError::Length { field: "forecast_kw", got: 95, .. })));
    let e = serde_json::from_str::<ApplianceSpec>(r#"{"model":"fridge","max_power_kw":1}"#).unwrap_err().to_string();
    assert!(e.contains("fridge"), "{e}");
    let hp = ApplianceSpec::Thermal { max_power_kw: 3.0, decay: -0.5, gain_c_per_kw: 0.5, drift_c: vec![-0.2], initial_c: 20.0, min_c: 19.0, max_c: 23.0 };
    assert!(hp.to_params(DAY, 900).unwrap_err().to_string().contains("decay"));
    let bat = ApplianceSpec::Battery { capacity_kwh: 10.0, max_charge_kw: 5.0, max_discharge_kw: 5.0, initial_kwh: f64::NAN, final_min_kwh: 2.0 };
    assert!(bat.to_params(DAY, 900).unwrap_err().to_string().contains("initial_kwh"));
    assert!(matches!(circuits::fixed::watts_from_kw("p", 1e9), Err(CodecError::OutOfRange { .. })));
}

#[test]
fn schedules_of_the_wrong_length_or_shape_are_rejected() {
    let params = deferrable(vec![true; 4], 100, 0, 400, None);
    assert_eq!(params.check(&[1, 2, 3]), Err(CheckError::Length { expected: 4, got: 3 }));
    let w = witness(params.clone(), vec![0, 0, 0, 0]);
    let mut short = w.clone();
    short.schedule.pop();
    assert!(matches!(UpdateCircuit::new(short.clone()), Err(StatementError::Schedule(CheckError::Length { .. }))));
    assert!(matches!(UpdateCircuit::unchecked(instance(&w), short), Err(StatementError::Shape { .. })));
    let mut other = w.clone();
    other.context = Context { shape: Shape { kind: ModelKind::Battery, slots: Slots::new(4).unwrap() }, ..w.context };
    assert!(matches!(UpdateCircuit::new(other), Err(StatementError::Shape { .. })));
    assert!(matches!(UpdateCircuit::unchecked(vec![Fr::from(0u64); 2], w.clone()), Err(StatementError::InstanceLength { expected: 4, got: 2 })));
    let mut invalid = w;
    invalid.schedule = vec![0, 101, 0, 0];
    assert!(matches!(UpdateCircuit::new(invalid), Err(StatementError::Schedule(CheckError::Violation(_)))));
    assert!(circuits::public_inputs(
        Fr::from(0u64),
        &Context { market_id: 1, iteration: 1, shape: Shape { kind: ModelKind::Deferrable, slots: Slots::new(4).unwrap() } },
        &circuits::nameplate::Limits { import_w: 1, export_w: 0, capacity: 0 },
        &[1]
    )
    .is_err());
}

proptest! {
    #[test]
    fn arbitrary_json_never_panics_the_param_decoders(s in ".{0,200}") {
        let _ = serde_json::from_str::<circuits::ModelParams>(&s);
        let _ = serde_json::from_str::<ApplianceSpec>(&s);
    }

    #[test]
    fn arbitrary_deferrable_fields_never_panic(p in any::<i32>(), lo in any::<i64>(), hi in any::<i64>(), r in any::<Option<i32>>(), t in 0usize..300) {
        let _ = DeferrableParams::new(Deferrable { available: vec![true; t], p_max: p, e_min: lo, e_max: hi, ramp: r });
    }

    #[test]
    fn arbitrary_specs_never_panic(p in any::<f64>(), lo in any::<f64>(), hi in any::<f64>(), a in any::<f64>(), s in 0u32..2000) {
        let _ = ApplianceSpec::Deferrable { max_power_kw: p, energy_min_kwh: lo, energy_max_kwh: hi, windows: vec![], ramp_kw: Some(a) }.to_params(DAY, s);
        let _ = ApplianceSpec::Battery { capacity_kwh: p, max_charge_kw: lo, max_discharge_kw: hi, initial_kwh: a, final_min_kwh: 0.0 }.to_params(DAY, s);
        let _ = ApplianceSpec::Thermal { max_power_kw: p, decay: a, gain_c_per_kw: lo, drift_c: vec![hi], initial_c: a, min_c: lo, max_c: hi }.to_params(DAY, s);
    }
}
