//! Shared test helpers: building witnesses and asking the constraint system.
#![allow(dead_code)]

use circuits::model::battery::Battery;
use circuits::model::deferrable::Deferrable;
use circuits::model::producer::Producer;
use circuits::model::thermal::Thermal;
use circuits::model::{BatteryParams, DeferrableParams, ProducerParams, ThermalParams};
use circuits::statement::is_satisfied;
use circuits::{commitment, public_inputs, Context, Fr, ModelParams, Opening, Shape, UpdateCircuit, Witness};

/// A witness for `params` and schedule `x` in market 7, iteration 3.
pub fn witness(params: ModelParams, x: Vec<i32>) -> Witness {
    let shape = Shape { kind: params.kind(), slots: params.slots() };
    Witness {
        limits: circuits::nameplate::fitting(&params),
        opening: Opening { params, cost_digest: Fr::from(1234u64), salt: Fr::from(987_654_321u64) },
        context: Context { market_id: 7, iteration: 3, shape },
        schedule: x,
    }
}

/// The public inputs verifiers would compute for this witness (valid or not).
pub fn instance(w: &Witness) -> Vec<Fr> {
    public_inputs(commitment(&w.opening), &w.context, &w.limits, &w.schedule).expect("i32 schedules always pack")
}

/// Whether the circuit accepts `w` against its honest public inputs.
pub fn circuit_accepts(w: &Witness) -> bool {
    let circuit = UpdateCircuit::unchecked(instance(w), w.clone()).expect("shape matches");
    is_satisfied(circuit).expect("synthesis never fails with a full witness")
}

pub fn deferrable(available: Vec<bool>, p_max: i32, e_min: i64, e_max: i64, ramp: Option<i32>) -> ModelParams {
    ModelParams::Deferrable(DeferrableParams::new(Deferrable { available, p_max, e_min, e_max, ramp }).unwrap())
}

pub fn battery(slots: usize, p_charge: i32, p_discharge: i32, capacity: i64, soc_initial: i64, soc_final_min: i64) -> ModelParams {
    ModelParams::Battery(BatteryParams::new(Battery { slots, p_charge, p_discharge, capacity, soc_initial, soc_final_min }).unwrap())
}

pub fn producer(forecast: Vec<i32>) -> ModelParams {
    ModelParams::Producer(ProducerParams::new(Producer { forecast }).unwrap())
}

pub fn thermal(t: Thermal) -> ModelParams {
    ModelParams::Thermal(ThermalParams::new(t).unwrap())
}
