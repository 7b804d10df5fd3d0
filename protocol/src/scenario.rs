//! Seeded workloads: N devices of mixed kinds with household-sized parameters and a base-load
//! profile, shared by tests, benchmarks and the demo.
//!
//! Mix (by device index mod 10): 3 EV chargers, 1 water heater, 2 batteries, 2 PV systems,
//! 2 heat pumps. Every generated parameter set is valid and feasible (checked by
//! construction: a heat pump's steady power lies inside its limits every slot).

use circuits::fixed::{Fixed, Watts};
use circuits::model::battery::Battery;
use circuits::model::deferrable::Deferrable;
use circuits::model::producer::Producer;
use circuits::model::thermal::Thermal;
use circuits::model::{BatteryParams, DeferrableParams, ModelParams, ProducerParams, ThermalParams};
use circuits::Slots;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::admm::GridCost;
use crate::ids::DeviceId;
use crate::local::Costs;

/// One simulated appliance with its private data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its identity (deterministic from the seed and index).
    pub id: DeviceId,
    /// θ.
    pub params: ModelParams,
    /// f_i.
    pub costs: Costs,
}

/// Which kind of market the devices are drawn for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Households: EVs, water heaters, batteries, PV, heat pumps (valley filling, tariff).
    Household,
    /// A daytime peer-to-peer market: PV sellers, batteries, and loads that run while the sun
    /// shines, so that Σ x = 0 is feasible in every slot.
    Exchange,
}

/// A generated workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// T.
    pub slots: Slots,
    /// Δ in seconds.
    pub slot_seconds: u32,
    /// The devices.
    pub devices: Vec<Device>,
    /// The public base-load forecast b_t in W (households' inflexible load).
    pub base_load: Vec<Watts>,
}

fn hour(t: usize, slot_seconds: u32) -> f64 {
    (t as f64 * slot_seconds as f64 / 3600.0) % 24.0
}

/// A household consumption shape (relative to the daily mean) at hour `h`.
fn household_shape(h: f64) -> f64 {
    let bump = |c: f64, w: f64| (-((h - c) / w).powi(2)).exp();
    0.45 + 0.8 * bump(7.5, 1.2) + 0.35 * bump(13.0, 2.0) + 1.4 * bump(19.5, 1.8)
}

fn wh_to_ws(kwh: f64, slot_seconds: u32) -> i64 {
    (kwh * 1000.0 * 3600.0 / slot_seconds as f64).round() as i64
}

impl Scenario {
    /// `n` devices for `slots` slots of `slot_seconds`, from `seed`.
    pub fn generate(seed: u64, n: usize, slots: Slots, slot_seconds: u32, mix: Mix) -> Scenario {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let t = slots.get();
        let hours: Vec<f64> = (0..t).map(|s| hour(s, slot_seconds)).collect();
        let devices = (0..n)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&seed.to_le_bytes());
                id[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                let (params, costs) = match mix {
                    Mix::Household => household_device(i % 10, &hours, slot_seconds, &mut rng),
                    Mix::Exchange => exchange_device(i % 4, &hours, slot_seconds, &mut rng),
                };
                Device { id: DeviceId(id), params, costs }
            })
            .collect();
        let base_load = match mix {
            Mix::Household => hours.iter().map(|&h| (n as f64 * 400.0 * household_shape(h)).round() as Watts).collect(),
            Mix::Exchange => vec![0; t],
        };
        Scenario { slots, slot_seconds, devices, base_load }
    }

    /// Valley filling with γ chosen so that the marginal grid price at the mean base load is
    /// about 50 €/MWh.
    pub fn valley_filling(&self) -> GridCost {
        let mean = self.base_load.iter().map(|&b| b as f64).sum::<f64>() / self.base_load.len() as f64;
        let gamma = Fixed::from_f64("gamma", 50.0 / mean.max(1.0)).expect("finite");
        GridCost::ValleyFilling { gamma, base_load: self.base_load.clone() }
    }
}

fn costs(linear: Vec<f64>, quadratic: f64) -> Costs {
    Costs {
        linear: linear.into_iter().map(|c| Fixed::from_f64("cost", c).expect("finite")).collect(),
        quadratic: Fixed::from_f64("cost", quadratic).expect("finite"),
    }
}

fn ev(hours: &[f64], slot_seconds: u32, rng: &mut ChaCha20Rng, window: (f64, f64), power: Watts) -> (ModelParams, Costs) {
    let (arrive, leave) = window;
    let available: Vec<bool> = hours.iter().map(|&h| if arrive > leave { h >= arrive || h < leave } else { h >= arrive && h < leave }).collect();
    let reachable = available.iter().filter(|&&a| a).count() as i64 * power as i64;
    let need = wh_to_ws(rng.gen_range(4.0..25.0), slot_seconds).min(reachable * 7 / 10);
    let e_max = (need + wh_to_ws(rng.gen_range(0.0..8.0), slot_seconds)).min(reachable);
    let p = DeferrableParams::new(Deferrable { available, p_max: power, e_min: need, e_max, ramp: if rng.gen_bool(0.3) { Some(power / 2) } else { None } })
        .expect("generated deferrable parameters are valid");
    // A mild preference to charge early after arrival, plus noise.
    let linear = hours.iter().map(|&h| ((h - arrive + 24.0) % 24.0) * 0.3 + rng.gen_range(0.0..1.0)).collect();
    (ModelParams::Deferrable(p), costs(linear, 1e-5))
}

fn battery(t: usize, slot_seconds: u32, rng: &mut ChaCha20Rng) -> (ModelParams, Costs) {
    let capacity = wh_to_ws(rng.gen_range(5.0..13.5), slot_seconds);
    let power = rng.gen_range(2500..=5000);
    let soc_initial = capacity * rng.gen_range(20..80) / 100;
    let p = BatteryParams::new(Battery { slots: t, p_charge: power, p_discharge: power, capacity, soc_initial, soc_final_min: soc_initial.min(capacity / 2) })
        .expect("generated battery parameters are valid");
    // Degradation: quadratic in power.
    (ModelParams::Battery(p), costs(vec![], 2e-4))
}

fn pv(hours: &[f64], rng: &mut ChaCha20Rng, from: f64, to: f64) -> (ModelParams, Costs) {
    let peak = rng.gen_range(3000.0..8000.0);
    let cloud = rng.gen_range(0.7..1.0);
    let forecast = hours
        .iter()
        .map(|&h| if h > from && h < to { (peak * cloud * (std::f64::consts::PI * (h - from) / (to - from)).sin()).round() as Watts } else { 0 })
        .collect();
    let p = ProducerParams::new(Producer { forecast }).expect("generated forecast is valid");
    // Value of production: producing (x < 0) lowers the cost.
    (ModelParams::Producer(p), costs(vec![5.0; hours.len()], 1e-5))
}

fn heat_pump(hours: &[f64], rng: &mut ChaCha20Rng) -> (ModelParams, Costs) {
    let p_max: Watts = rng.gen_range(2500..=3500);
    let a: f64 = rng.gen_range(0.97..0.99);
    let b: f64 = 2.0e-4; // °C per W per slot
    let set = 21.0;
    // Outdoor drift c_t = (1 − a)·T_out(t); keep the steady power inside 20–80 % of p_max.
    let drift: Vec<f64> = hours
        .iter()
        .map(|&h| {
            let outdoor = 4.0 + 5.0 * (std::f64::consts::PI * (h - 8.0) / 12.0).sin().max(0.0);
            let c = (1.0 - a) * outdoor;
            let steady = ((1.0 - a) * set - c) / b;
            let clamped = steady.clamp(0.2 * p_max as f64, 0.8 * p_max as f64);
            (1.0 - a) * set - b * clamped
        })
        .collect();
    let fx = |v: f64| Fixed::from_f64("thermal", v).expect("finite");
    let p = ThermalParams::new(Thermal {
        p_max,
        decay: fx(a),
        gain: fx(b),
        drift: drift.into_iter().map(fx).collect(),
        temp_initial: fx(set),
        temp_min: fx(set - rng.gen_range(1.0..2.0)),
        temp_max: fx(set + rng.gen_range(1.0..2.0)),
    })
    .expect("generated thermal parameters are valid");
    (ModelParams::Thermal(p), costs(vec![0.2; hours.len()], 1e-5))
}

fn household_device(class: usize, hours: &[f64], slot_seconds: u32, rng: &mut ChaCha20Rng) -> (ModelParams, Costs) {
    match class {
        0..=2 => {
            let window = (rng.gen_range(16.0..20.0), rng.gen_range(6.0..8.0));
            let power = [3700, 7400, 11000][rng.gen_range(0..3)];
            ev(hours, slot_seconds, rng, window, power)
        }
        3 => {
            let power = rng.gen_range(2000..=3000);
            ev(hours, slot_seconds, rng, (0.0, 24.0), power)
        }
        4 | 5 => battery(hours.len(), slot_seconds, rng),
        6 | 7 => pv(hours, rng, 6.0, 20.0),
        _ => heat_pump(hours, rng),
    }
}

fn exchange_device(class: usize, hours: &[f64], slot_seconds: u32, rng: &mut ChaCha20Rng) -> (ModelParams, Costs) {
    match class {
        0 => pv(hours, rng, 5.0, 21.0),
        1 => {
            let (ModelParams::Battery(b), c) = battery(hours.len(), slot_seconds, rng) else { unreachable!() };
            // In a pure exchange no one else sells at night: the battery may end anywhere.
            let mut raw = b.get().clone();
            raw.soc_final_min = 0;
            (ModelParams::Battery(BatteryParams::new(raw).expect("valid")), c)
        }
        // Loads that run in daylight only, with a small energy need.
        _ => {
            let power = rng.gen_range(1000..=3000);
            let (ModelParams::Deferrable(d), c) = ev(hours, slot_seconds, rng, (9.0, 16.0), power) else { unreachable!() };
            let mut raw = d.get().clone();
            raw.e_min /= 4;
            (ModelParams::Deferrable(DeferrableParams::new(raw).expect("valid")), c)
        }
    }
}
