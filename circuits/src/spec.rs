//! Device parameters in physical units, as a gateway's configuration file states them
//! (kW, kWh, °C, slot windows), and their checked conversion into [`ModelParams`].
//!
//! Floats live only here, on the device side: [`ApplianceSpec::to_params`] rejects NaN,
//! infinities, negative physical quantities and windows outside the market, naming the field,
//! and rounds half to even into the integers the circuits use.

use serde::{Deserialize, Serialize};

use crate::fixed::{watt_slots_from_kwh, watts_from_kw, CodecError, Fixed};
use crate::limits::Slots;
use crate::model::battery::Battery;
use crate::model::deferrable::Deferrable;
use crate::model::producer::Producer;
use crate::model::thermal::Thermal;
use crate::model::{BatteryParams, DeferrableParams, ModelKind, ModelParams, ParamError, ProducerParams, ThermalParams};

/// One appliance's private parameters in physical units; `model = "..."` selects the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case", deny_unknown_fields)]
pub enum ApplianceSpec {
    /// EV charger, water heater, appliance run.
    Deferrable {
        /// Largest power, kW.
        max_power_kw: f64,
        /// Least energy to deliver over the market, kWh.
        energy_min_kwh: f64,
        /// Most energy to deliver, kWh.
        energy_max_kwh: f64,
        /// Slot windows `[start, end)` in which the load may draw power; all slots if empty.
        #[serde(default)]
        windows: Vec<[usize; 2]>,
        /// Largest change of power between slots, kW; none if absent.
        #[serde(default)]
        ramp_kw: Option<f64>,
    },
    /// Stationary battery.
    Battery {
        /// Capacity, kWh.
        capacity_kwh: f64,
        /// Largest charging power, kW.
        max_charge_kw: f64,
        /// Largest discharging power, kW.
        max_discharge_kw: f64,
        /// State of charge at the start, kWh.
        initial_kwh: f64,
        /// Least state of charge at the end, kWh.
        final_min_kwh: f64,
    },
    /// PV or other curtailable production.
    Producer {
        /// Forecast of available production per slot, kW (T entries).
        forecast_kw: Vec<f64>,
    },
    /// Heat pump.
    Thermal {
        /// Largest electrical power, kW.
        max_power_kw: f64,
        /// Fraction of the indoor temperature kept over one slot, in [0, 1].
        decay: f64,
        /// Indoor temperature rise per kW over one slot, °C.
        gain_c_per_kw: f64,
        /// Temperature drift per slot (losses, weather, occupancy), °C; one value for all slots
        /// or T values.
        drift_c: Vec<f64>,
        /// Temperature at the start, °C.
        initial_c: f64,
        /// Comfort band lower edge, °C.
        min_c: f64,
        /// Comfort band upper edge, °C.
        max_c: f64,
    },
}

fn codec(model: ModelKind) -> impl Fn(CodecError) -> ParamError {
    move |source| ParamError::Codec { model, source }
}

fn non_negative(model: ModelKind, field: &'static str, v: f64) -> Result<f64, ParamError> {
    if v.is_nan() || v < 0.0 {
        return Err(ParamError::OutOfRange { model, field, value: v.to_string(), expected: "a non-negative number".into() });
    }
    Ok(v)
}

impl ApplianceSpec {
    /// The model kind.
    pub fn kind(&self) -> ModelKind {
        match self {
            ApplianceSpec::Deferrable { .. } => ModelKind::Deferrable,
            ApplianceSpec::Battery { .. } => ModelKind::Battery,
            ApplianceSpec::Producer { .. } => ModelKind::Producer,
            ApplianceSpec::Thermal { .. } => ModelKind::Thermal,
        }
    }

    /// The spec of integer parameters in slots of `slot_seconds` (powers in kW, energies in
    /// kWh, fixed-point values as decimals): what a gateway's configuration or overrides file
    /// would state for them. [`ApplianceSpec::to_params`] with the same T and Δ gives them back.
    pub fn from_params(params: &ModelParams, slot_seconds: u32) -> ApplianceSpec {
        let kw = |w: i32| w as f64 / 1000.0;
        let kwh = |ws: i64| ws as f64 * slot_seconds as f64 / 3600.0 / 1000.0;
        match params {
            ModelParams::Deferrable(p) => {
                let d = p.get();
                let mut windows = Vec::new();
                let mut start = None;
                for (t, &on) in d.available.iter().chain([&false]).enumerate() {
                    match (on, start) {
                        (true, None) => start = Some(t),
                        (false, Some(s)) => {
                            windows.push([s, t]);
                            start = None;
                        }
                        _ => {}
                    }
                }
                // All slots available is stated as no windows.
                if windows == [[0, d.available.len()]] {
                    windows.clear();
                }
                ApplianceSpec::Deferrable {
                    max_power_kw: kw(d.p_max),
                    energy_min_kwh: kwh(d.e_min),
                    energy_max_kwh: kwh(d.e_max),
                    windows,
                    ramp_kw: d.ramp.map(kw),
                }
            }
            ModelParams::Battery(p) => {
                let b = p.get();
                ApplianceSpec::Battery {
                    capacity_kwh: kwh(b.capacity),
                    max_charge_kw: kw(b.p_charge),
                    max_discharge_kw: kw(b.p_discharge),
                    initial_kwh: kwh(b.soc_initial),
                    final_min_kwh: kwh(b.soc_final_min),
                }
            }
            ModelParams::Producer(p) => ApplianceSpec::Producer { forecast_kw: p.get().forecast.iter().map(|&w| kw(w)).collect() },
            ModelParams::Thermal(p) => {
                let h = p.get();
                ApplianceSpec::Thermal {
                    max_power_kw: kw(h.p_max),
                    decay: h.decay.to_f64(),
                    gain_c_per_kw: h.gain.to_f64() * 1000.0,
                    drift_c: h.drift.iter().map(|d| d.to_f64()).collect(),
                    initial_c: h.temp_initial.to_f64(),
                    min_c: h.temp_min.to_f64(),
                    max_c: h.temp_max.to_f64(),
                }
            }
        }
    }

    /// Converts to validated integer parameters for a market of `slots` slots of
    /// `slot_seconds` each.
    pub fn to_params(&self, slots: Slots, slot_seconds: u32) -> Result<ModelParams, ParamError> {
        let kind = self.kind();
        let c = codec(kind);
        let kw = |field, v: f64| -> Result<i32, ParamError> { watts_from_kw(field, non_negative(kind, field, v)?).map_err(codec(kind)) };
        let kwh = |field, v: f64| -> Result<i64, ParamError> { watt_slots_from_kwh(field, non_negative(kind, field, v)?, slot_seconds).map_err(codec(kind)) };
        let t = slots.get();
        Ok(match self {
            ApplianceSpec::Deferrable { max_power_kw, energy_min_kwh, energy_max_kwh, windows, ramp_kw } => {
                let mut available = vec![windows.is_empty(); t];
                for &[start, end] in windows {
                    if start >= end || end > t {
                        return Err(ParamError::OutOfRange {
                            model: kind,
                            field: "windows",
                            value: format!("[{start}, {end})"),
                            expected: format!("a non-empty [start, end) within 0..={t}"),
                        });
                    }
                    available[start..end].iter_mut().for_each(|a| *a = true);
                }
                ModelParams::Deferrable(DeferrableParams::new(Deferrable {
                    available,
                    p_max: kw("max_power_kw", *max_power_kw)?,
                    e_min: kwh("energy_min_kwh", *energy_min_kwh)?,
                    e_max: kwh("energy_max_kwh", *energy_max_kwh)?,
                    ramp: ramp_kw.map(|r| kw("ramp_kw", r)).transpose()?,
                })?)
            }
            ApplianceSpec::Battery { capacity_kwh, max_charge_kw, max_discharge_kw, initial_kwh, final_min_kwh } => {
                ModelParams::Battery(BatteryParams::new(Battery {
                    slots: t,
                    p_charge: kw("max_charge_kw", *max_charge_kw)?,
                    p_discharge: kw("max_discharge_kw", *max_discharge_kw)?,
                    capacity: kwh("capacity_kwh", *capacity_kwh)?,
                    soc_initial: kwh("initial_kwh", *initial_kwh)?,
                    soc_final_min: kwh("final_min_kwh", *final_min_kwh)?,
                })?)
            }
            ApplianceSpec::Producer { forecast_kw } => {
                if forecast_kw.len() != t {
                    return Err(ParamError::Length { model: kind, field: "forecast_kw", expected: t, got: forecast_kw.len() });
                }
                let forecast = forecast_kw.iter().map(|&v| kw("forecast_kw", v)).collect::<Result<_, _>>()?;
                ModelParams::Producer(ProducerParams::new(Producer { forecast })?)
            }
            ApplianceSpec::Thermal { max_power_kw, decay, gain_c_per_kw, drift_c, initial_c, min_c, max_c } => {
                let drift = match drift_c.len() {
                    1 => vec![drift_c[0]; t],
                    n if n == t => drift_c.clone(),
                    n => return Err(ParamError::Length { model: kind, field: "drift_c", expected: t, got: n }),
                };
                let drift = drift.iter().map(|&v| Fixed::from_f64("drift_c", v)).collect::<Result<_, _>>().map_err(&c)?;
                ModelParams::Thermal(ThermalParams::new(Thermal {
                    p_max: kw("max_power_kw", *max_power_kw)?,
                    decay: Fixed::from_f64("decay", non_negative(kind, "decay", *decay)?).map_err(&c)?,
                    gain: Fixed::from_f64("gain_c_per_kw", *gain_c_per_kw / 1000.0).map_err(&c)?,
                    drift,
                    temp_initial: Fixed::from_f64("initial_c", *initial_c).map_err(&c)?,
                    temp_min: Fixed::from_f64("min_c", *min_c).map_err(&c)?,
                    temp_max: Fixed::from_f64("max_c", *max_c).map_err(&c)?,
                })?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a gateway writes for parameters (an overrides file made from a day's parameters)
    /// reads back as the same parameters, for every model and slot length.
    #[test]
    fn a_spec_made_from_parameters_converts_back_to_them() {
        for kind in ModelKind::ALL {
            for (t, slot_seconds) in [(24, 3600), (96, 900), (7, 60)] {
                let slots = Slots::new(t).unwrap();
                let params = crate::sample::params(kind, slots);
                let spec = ApplianceSpec::from_params(&params, slot_seconds);
                assert_eq!(spec.kind(), kind);
                assert_eq!(spec.to_params(slots, slot_seconds).unwrap(), params, "{kind} T = {t} Δ = {slot_seconds}: {spec:?}");
            }
        }
    }
}
