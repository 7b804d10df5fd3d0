//! Deterministic sample devices: one valid (θ, x) per model kind and T, for tests and
//! benchmarks in every crate (one source, instead of fixtures copied between crates).
//!
//! The values are household-sized: a 7.4 kW EV charger, a 5 kW / 10 kWh battery, a 6 kW PV
//! system, a 3 kW heat pump holding 19–23 °C.

use ark_bn254::Fr;

use crate::fixed::{Fixed, Watts};
use crate::limits::Slots;
use crate::model::battery::Battery;
use crate::model::deferrable::Deferrable;
use crate::model::producer::Producer;
use crate::model::thermal::Thermal;
use crate::model::{BatteryParams, DeferrableParams, ModelKind, ModelParams, ProducerParams, ThermalParams};
use crate::statement::{Context, Opening, Shape, Witness};

/// Sample parameters of `kind` for `slots`.
pub fn params(kind: ModelKind, slots: Slots) -> ModelParams {
    let t = slots.get();
    let valid = "sample parameters are valid for every T";
    match kind {
        ModelKind::Deferrable => ModelParams::Deferrable(
            DeferrableParams::new(Deferrable { available: vec![true; t], p_max: 7400, e_min: 3700 * t as i64 / 2, e_max: 5000 * t as i64, ramp: Some(7400) })
                .expect(valid),
        ),
        ModelKind::Battery => ModelParams::Battery(
            BatteryParams::new(Battery { slots: t, p_charge: 5000, p_discharge: 5000, capacity: 40_000, soc_initial: 20_000, soc_final_min: 20_000 })
                .expect(valid),
        ),
        ModelKind::Producer => ModelParams::Producer(
            ProducerParams::new(Producer { forecast: (0..t).map(|i| if (t / 4..3 * t / 4).contains(&i) { 6000 } else { 0 }).collect() }).expect(valid),
        ),
        ModelKind::Thermal => ModelParams::Thermal(
            ThermalParams::new(Thermal {
                p_max: 3000,
                decay: Fixed::ONE,
                gain: Fixed(524),                // ≈ 0.0005 °C per W per slot
                drift: vec![Fixed(-209_715); t], // ≈ −0.2 °C per slot
                temp_initial: Fixed(21 << 20),
                temp_min: Fixed(19 << 20),
                temp_max: Fixed(23 << 20),
            })
            .expect(valid),
        ),
    }
}

/// A valid schedule for [`params`]`(kind, slots)`, shifted by `variant` watts where the model
/// allows, so different variants give different schedules.
pub fn schedule(kind: ModelKind, slots: Slots, variant: u16) -> Vec<Watts> {
    let t = slots.get();
    let v = (variant % 1000) as Watts;
    match kind {
        ModelKind::Deferrable => vec![3700 + v; t],
        // +2000, −2000, … ends at s_0 or s_0 + 2000 ≥ s_final.
        ModelKind::Battery => (0..t).map(|i| if i % 2 == 0 { 2000 + v } else { -2000 - v }).collect(),
        ModelKind::Producer => {
            let ModelParams::Producer(p) = params(kind, slots) else { unreachable!() };
            p.get().forecast.iter().map(|&pv| -(pv / 2) - if pv > 0 { v } else { 0 }).collect()
        }
        // 400 W balances the drift; alternating ±400 W around it moves τ by 0.2 °C and back.
        ModelKind::Thermal => (0..t).map(|i| if i % 2 == 0 { 400 + v.min(400) } else { 400 - v.min(400) }).collect(),
    }
}

/// A valid witness for market `market_id`, iteration `iteration`.
pub fn witness(kind: ModelKind, slots: Slots, market_id: u64, iteration: u32, variant: u16) -> Witness {
    let params = params(kind, slots);
    Witness {
        limits: crate::nameplate::fitting(&params),
        opening: Opening { params, cost_digest: Fr::from(0xC057u64), salt: Fr::from(0x5A17_0000u64 + kind.id() as u64) },
        context: Context { market_id, iteration, shape: Shape { kind, slots } },
        schedule: schedule(kind, slots, variant),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_valid_for_every_kind_t_and_variant() {
        for kind in ModelKind::ALL {
            for t in [1, 2, 24, 96, 288] {
                let slots = Slots::new(t).unwrap();
                for variant in [0, 1, 999] {
                    let w = witness(kind, slots, 1, 1, variant);
                    assert_eq!(w.validate().map(|_| ()), Ok(()), "{kind} T = {t} variant {variant}");
                }
            }
        }
    }
}
