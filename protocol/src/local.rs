//! The device side of ADMM (DESIGN §4): the private local step
//! `x_i^{k+1} = argmin_{x ∈ X_i} f_i(x) + ρ/2 ‖x − x_i^k + x̄^k − z̄^k + u^k‖²`, solved with
//! clarabel in floats, then rounded to watts and repaired so that the `circuits` native checker
//! (and so the circuit) accepts it exactly.
//!
//! Rounding keeps each constraint family exact: bounds are integers, so rounding to nearest
//! stays inside them; a deferrable load rounds by largest remainder, which keeps the rounded
//! total; a battery rounds its state of charge and takes powers as differences; ramp limits and
//! battery power limits get a 1 W margin in the QP, the thermal band a margin that covers the
//! accumulated rounding of the fixed-point dynamics. A final bounded repair pass nudges
//! thermal schedules that still leave the band.

use circuits::fixed::{Fixed, Watts, SCALE};
use circuits::model::{CheckError, Family, ModelParams};
use circuits::poseidon::hash_many;
use circuits::Fr;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::admm::Variables;
use crate::qp::{Qp, QpError};

/// Watts per kilowatt: the QP works in kW for conditioning.
const KW: f64 = 1000.0;

/// A device's private cost f_i(x) = Σ_t (c_t x_t + q/2 x_t²), in €/MWh × W (see `admm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Costs {
    /// c_t in €/MWh (T entries, or empty for none).
    pub linear: Vec<Fixed>,
    /// q in €/MWh per W (≥ 0).
    pub quadratic: Fixed,
}

impl Costs {
    /// No private cost.
    pub fn none() -> Costs {
        Costs { linear: vec![], quadratic: Fixed::ZERO }
    }

    /// The Poseidon digest the device commitment binds: H*(tag, q, c_1..c_T).
    pub fn digest(&self) -> Fr {
        let mut m = vec![Fr::from(0x636f737473u64), circuits::field::fr_from_i128(self.quadratic.raw() as i128)];
        m.extend(self.linear.iter().map(|c| circuits::field::fr_from_i128(c.raw() as i128)));
        hash_many(&m)
    }

    fn c(&self, t: usize) -> f64 {
        self.linear.get(t).map_or(0.0, |c| c.to_f64())
    }

    /// f_i(x) for a schedule in W.
    pub fn evaluate(&self, x: &[Watts]) -> f64 {
        let q = self.quadratic.to_f64();
        x.iter().enumerate().map(|(t, &v)| self.c(t) * v as f64 + q / 2.0 * (v as f64).powi(2)).sum()
    }
}

/// Why a local step produced no schedule.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum LocalError {
    /// The QP was not solved (infeasible parameters or numerical failure).
    #[error(transparent)]
    Solver(#[from] QpError),
    /// Rounding and repair could not produce a schedule the checker accepts.
    #[error("rounded schedule still violates the model: {0}")]
    Repair(CheckError),
    /// Public variables or costs of the wrong length.
    #[error("public variables have {got} slots, the device has {expected}")]
    Length {
        /// T of the device.
        expected: usize,
        /// Length given.
        got: usize,
    },
}

/// How tightly [`add_model`] states X(θ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Margins {
    /// With the safety margins that let a float solution survive rounding to whole watts
    /// and the fixed-point dynamics (ramps and battery powers 1 W inside, the thermal band
    /// by the accumulated rounding): what a device solves.
    ForRounding,
    /// The specified constraints exactly (DESIGN §3): what the central reference solves.
    Exact,
}

/// Adds x ∈ X(θ) for one device; its T power variables (kW) start at `x`. Returns nothing: the
/// auxiliary variables (state of charge, temperature) are private to the model block.
pub(crate) fn add_model(qp: &mut Qp, params: &ModelParams, x: usize, margins: Margins) {
    let inside = if margins == Margins::ForRounding { 1.0 } else { 0.0 };
    let t = params.slots().get();
    match params {
        ModelParams::Deferrable(p) => {
            let d = p.get();
            for s in 0..t {
                let cap = if d.available[s] { d.p_max as f64 } else { 0.0 };
                qp.bounds(x + s, 0.0, cap / KW);
            }
            let all: Vec<(usize, f64)> = (0..t).map(|s| (x + s, 1.0)).collect();
            qp.le(all.clone(), d.e_max as f64 / KW);
            qp.le(all.iter().map(|&(i, a)| (i, -a)).collect(), -(d.e_min as f64) / KW);
            if let Some(r) = d.ramp {
                let r = (r as f64 - inside).max(0.0) / KW;
                for s in 1..t {
                    qp.le(vec![(x + s, 1.0), (x + s - 1, -1.0)], r);
                    qp.le(vec![(x + s, -1.0), (x + s - 1, 1.0)], r);
                }
            }
        }
        ModelParams::Battery(p) => {
            let b = p.get();
            let margin = |v: Watts| (v as f64 - inside).max(0.0) / KW;
            let soc = qp.vars(t);
            for s in 0..t {
                qp.bounds(x + s, -margin(b.p_discharge), margin(b.p_charge));
                // s_t − s_{t−1} − x_t = 0, with s_{−1} = s_0.
                let mut row = vec![(soc + s, 1.0), (x + s, -1.0)];
                let rhs = if s == 0 {
                    b.soc_initial as f64 / KW
                } else {
                    row.push((soc + s - 1, -1.0));
                    0.0
                };
                qp.eq(row, rhs);
                qp.bounds(soc + s, 0.0, b.capacity as f64 / KW);
            }
            qp.le(vec![(soc + t - 1, -1.0)], -(b.soc_final_min as f64) / KW);
        }
        ModelParams::Producer(p) => {
            for (s, &pv) in p.get().forecast.iter().enumerate() {
                qp.bounds(x + s, -(pv as f64) / KW, 0.0);
            }
        }
        ModelParams::Thermal(p) => {
            let h = p.get();
            let (a, b) = (h.decay.to_f64(), h.gain.to_f64() * KW);
            let (lo, hi) = (h.temp_min.to_f64(), h.temp_max.to_f64());
            let margin = inside * (t as f64 * (1.0 / SCALE as f64 + 0.5 * h.gain.to_f64().abs()) + 1e-6).min((hi - lo) / 4.0);
            let temp = qp.vars(t);
            for s in 0..t {
                qp.bounds(x + s, 0.0, h.p_max as f64 / KW);
                // τ_{s+1} − a τ_s − b x_s = c_s, with τ_0 given.
                let mut row = vec![(temp + s, 1.0), (x + s, -b)];
                let mut rhs = h.drift[s].to_f64();
                if s == 0 {
                    rhs += a * h.temp_initial.to_f64();
                } else {
                    row.push((temp + s - 1, -a));
                }
                qp.eq(row, rhs);
                qp.bounds(temp + s, lo + margin, hi - margin);
            }
        }
    }
}

/// Adds f_i(x) (x in kW) to the objective.
pub(crate) fn add_costs(qp: &mut Qp, costs: &Costs, x: usize, t: usize) {
    let q = costs.quadratic.to_f64() * KW * KW;
    for s in 0..t {
        qp.square(x + s, q);
        qp.linear(x + s, costs.c(s) * KW);
    }
}

/// Rounds a QP solution (kW) to watts so that the model's families stay exact.
pub(crate) fn round_schedule(params: &ModelParams, y: &[f64]) -> Vec<Watts> {
    let w: Vec<f64> = y.iter().map(|v| v * KW).collect();
    match params {
        ModelParams::Deferrable(p) => {
            // Clamp solver tolerance (−1e-9 W) back inside the integer bounds first.
            let d = p.get();
            let w: Vec<f64> = w.iter().zip(&d.available).map(|(&v, &a)| v.clamp(0.0, if a { d.p_max as f64 } else { 0.0 })).collect();
            largest_remainder(&w)
        }
        ModelParams::Battery(p) => {
            // Round the state of charge, then take powers as its differences.
            let s0 = p.get().soc_initial as f64;
            let mut cum = s0;
            let mut prev = p.get().soc_initial;
            w.iter()
                .map(|&x| {
                    cum += x;
                    let s = cum.round_ties_even() as i64;
                    let step = (s - prev) as Watts;
                    prev = s;
                    step
                })
                .collect()
        }
        ModelParams::Producer(_) | ModelParams::Thermal(_) => w.iter().map(|v| v.round_ties_even() as Watts).collect(),
    }
}

/// Rounds each value to floor or ceil so that the total is the rounded total: the values with
/// the largest fractional parts (ties by slot) round up.
fn largest_remainder(w: &[f64]) -> Vec<Watts> {
    let floors: Vec<f64> = w.iter().map(|v| v.floor()).collect();
    let target = w.iter().sum::<f64>().round_ties_even();
    let up = (target - floors.iter().sum::<f64>()).round().max(0.0) as usize;
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_by(|&i, &j| (w[j] - floors[j]).total_cmp(&(w[i] - floors[i])).then(i.cmp(&j)));
    let mut out: Vec<Watts> = floors.iter().map(|&f| f as Watts).collect();
    for &i in order.iter().take(up.min(w.len())) {
        out[i] += 1;
    }
    out
}

/// Nudges a rounded schedule until the checker accepts it: for a thermal band violation at
/// slot t, one watt more (too cold) or less (too warm) at the latest slot ≤ t that has room.
/// Bounded by 8·T steps.
pub(crate) fn repair(params: &ModelParams, mut x: Vec<Watts>) -> Result<Vec<Watts>, CheckError> {
    let t = x.len();
    for _ in 0..8 * t {
        let Err(err) = params.check(&x) else { return Ok(x) };
        let (ModelParams::Thermal(p), CheckError::Violation(v)) = (params, &err) else { return Err(err) };
        let (Some(slot), gain) = (v.slot, p.get().gain.raw()) else { return Err(err) };
        let warmer = (v.family == Family::TempMin) == (gain > 0);
        let p_max = p.get().p_max;
        let room = |s: usize| if warmer { x[s] < p_max } else { x[s] > 0 };
        match (0..=slot).rev().find(|&s| room(s)) {
            Some(s) if matches!(v.family, Family::TempMin | Family::TempMax) && gain != 0 => x[s] += if warmer { 1 } else { -1 },
            _ => return Err(err),
        }
    }
    params.check(&x).map(|_| x)
}

/// One local step: `argmin_{x ∈ X(θ)} f(x) + ρ/2 ‖x − v‖²` with `v = x^k − x̄^k + z̄^k − u^k`,
/// rounded and repaired to a schedule the circuit accepts.
pub fn local_step(params: &ModelParams, costs: &Costs, rho: Fixed, vars: &Variables, previous: &[Watts]) -> Result<Vec<Watts>, LocalError> {
    let t = params.slots().get();
    for len in [vars.x_bar.len(), vars.z_bar.len(), vars.u.len(), previous.len()] {
        if len != t {
            return Err(LocalError::Length { expected: t, got: len });
        }
    }
    let s = SCALE as f64;
    let rho = rho.to_f64();
    let mut qp = Qp::default();
    let x = qp.vars(t);
    add_model(&mut qp, params, x, Margins::ForRounding);
    add_costs(&mut qp, costs, x, t);
    for (i, &prev) in previous.iter().enumerate() {
        let v = prev as f64 - vars.x_bar[i] as f64 / s + vars.z_bar[i] as f64 / s - vars.u[i] as f64 / s;
        // ρ/2 (1000 y − v)² = ρ/2·10⁶ y² − 1000 ρ v y + const.
        qp.square(x + i, rho * KW * KW);
        qp.linear(x + i, -rho * KW * v);
    }
    let sol = qp.solve()?;
    let rounded = round_schedule(params, &sol.x[x..x + t]);
    repair(params, rounded).map_err(LocalError::Repair)
}
