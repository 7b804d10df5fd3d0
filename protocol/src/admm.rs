//! The validators' side of ADMM (DESIGN §4, Boyd et al. 2011 §7.3) in fixed-point integers.
//!
//! Every validator runs [`AdmmState::apply_iteration`] on the same accepted updates and gets
//! bit-identical variables: x̄, z̄ and the scaled dual u are raw fixed point at S = 2^20 (units
//! W), every division rounds half to even ([`circuits::fixed::div_round_half_even`]), every norm
//! is an integer square root (floor), and devices are visited in key order.
//!
//! Units: powers in W; prices, tariffs and the penalty ρ in €/MWh (ρ and γ per W). With these
//! units every term of the objective is "€/MWh × W" — € per slot up to the constant factor
//! Δ/3.6·10⁹, which does not move any argmin — and the per-slot price is λ_t = ρ·u_t in €/MWh.
//!
//! Residuals (Boyd §3.3, expressed in W, i.e. the dual residual divided by ρ):
//! - primal r = √N ‖x̄ − z̄‖, dual s = √N ‖z̄^{k+1} − z̄^k‖;
//! - ε_pri = √(NT)·ε_abs + ε_rel·max(√(Σ_i ‖x_i‖²), √N ‖z̄‖);
//! - ε_dual = √(NT)·ε_abs + ε_rel·√N ‖u‖.
//!
//! Converged when r ≤ ε_pri and s ≤ ε_dual.

use std::collections::BTreeMap;

use circuits::fixed::{div_round_half_even, Fixed, Watts, SCALE};
use circuits::Slots;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::DeviceId;

/// Most devices one market takes (bounds every per-device map and loop).
pub const MAX_DEVICES: usize = 100_000;

/// The grid cost g of DESIGN §4, chosen per market.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GridCost {
    /// g(z) = γ/2 ‖z + b‖² on the total load z, with the public base-load forecast b (W).
    ValleyFilling {
        /// γ in €/MWh per W.
        gamma: Fixed,
        /// b_t in W (T entries).
        base_load: Vec<Watts>,
    },
    /// g(z) = pᵀz + indicator(z ≤ cap): a per-slot tariff and a feeder limit on the total load.
    Tariff {
        /// p_t in €/MWh (T entries).
        price: Vec<Fixed>,
        /// Feeder limit on the total load, W.
        feeder_cap: i64,
    },
    /// g = indicator(Σ x = 0): a peer-to-peer market; λ is the clearing price per slot.
    Exchange,
}

/// Public market parameters of the ADMM iteration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmmParams {
    /// T.
    pub slots: Slots,
    /// The penalty ρ, €/MWh per W (> 0).
    pub rho: Fixed,
    /// ε_abs in W.
    pub eps_abs: Fixed,
    /// ε_rel (dimensionless).
    pub eps_rel: Fixed,
    /// K_max.
    pub max_iterations: u32,
    /// The grid cost.
    pub grid: GridCost,
}

/// The public variables of one iteration, raw fixed point (W at scale 2^20).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Variables {
    /// x̄: mean of the latest accepted schedules.
    pub x_bar: Vec<i64>,
    /// z̄.
    pub z_bar: Vec<i64>,
    /// The scaled dual u.
    pub u: Vec<i64>,
}

impl Variables {
    /// All zero, for T slots (the state before the first iteration).
    pub fn zero(slots: Slots) -> Variables {
        let t = slots.get();
        Variables { x_bar: vec![0; t], z_bar: vec![0; t], u: vec![0; t] }
    }
}

/// Residuals and their thresholds, raw fixed point (W at scale 2^20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Residuals {
    /// r.
    pub primal: i64,
    /// s (divided by ρ).
    pub dual: i64,
    /// ε_pri.
    pub eps_primal: i64,
    /// ε_dual.
    pub eps_dual: i64,
}

impl Residuals {
    /// Whether the stopping rule holds.
    pub fn converged(&self) -> bool {
        self.primal <= self.eps_primal && self.dual <= self.eps_dual
    }
}

/// What can be wrong with an iteration's inputs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AdmmError {
    /// An update from a device that is not enrolled in the market.
    #[error("update from unknown device {0}")]
    UnknownDevice(DeviceId),
    /// Two updates from one device in one iteration.
    #[error("duplicate update from device {0}")]
    Duplicate(DeviceId),
    /// A schedule of the wrong length.
    #[error("schedule from {device} has {got} slots, the market has {expected}")]
    Length {
        /// The device.
        device: DeviceId,
        /// T.
        expected: usize,
        /// Entries given.
        got: usize,
    },
    /// Market parameters that cannot work.
    #[error("invalid market parameters: {0}")]
    Params(String),
    /// No devices, or more than [`MAX_DEVICES`].
    #[error("a market needs 1 to {MAX_DEVICES} devices, got {0}")]
    DeviceCount(usize),
}

/// One ADMM market as validators hold it: the latest accepted x_i per device and the public
/// variables after iteration k.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmmState {
    params: AdmmParams,
    latest: BTreeMap<DeviceId, Vec<Watts>>,
    vars: Variables,
    residuals: Option<Residuals>,
    k: u32,
}

fn isqrt(v: u128) -> i64 {
    i64::try_from(v.isqrt()).unwrap_or(i64::MAX)
}

fn sum_sq(v: impl Iterator<Item = i64>) -> u128 {
    v.map(|x| (x as i128 * x as i128) as u128).fold(0u128, u128::saturating_add)
}

fn round_div(n: i128, d: i128) -> i64 {
    // d > 0 everywhere below (validated parameters, N ≥ 1); values fit i64 by the unit bounds.
    let q = div_round_half_even(n, d).expect("positive divisor");
    i64::try_from(q).unwrap_or(if q < 0 { i64::MIN } else { i64::MAX })
}

impl AdmmState {
    /// A market with `devices` enrolled, every x_i^0 = 0 and all variables 0.
    pub fn new(params: AdmmParams, devices: impl IntoIterator<Item = DeviceId>) -> Result<AdmmState, AdmmError> {
        let t = params.slots.get();
        if params.rho.raw() <= 0 {
            return Err(AdmmError::Params(format!("rho must be positive, got {}", params.rho)));
        }
        match &params.grid {
            GridCost::ValleyFilling { gamma, base_load } if gamma.raw() < 0 || base_load.len() != t => {
                return Err(AdmmError::Params(format!("valley filling needs gamma ≥ 0 and T = {t} base-load values (got {})", base_load.len())));
            }
            GridCost::Tariff { price, .. } if price.len() != t => {
                return Err(AdmmError::Params(format!("tariff needs T = {t} prices, got {}", price.len())));
            }
            _ => {}
        }
        let latest: BTreeMap<_, _> = devices.into_iter().map(|d| (d, vec![0; t])).collect();
        if latest.is_empty() || latest.len() > MAX_DEVICES {
            return Err(AdmmError::DeviceCount(latest.len()));
        }
        Ok(AdmmState { vars: Variables::zero(params.slots), params, latest, residuals: None, k: 0 })
    }

    /// The market parameters.
    pub fn params(&self) -> &AdmmParams {
        &self.params
    }

    /// Iterations applied so far.
    pub fn iteration(&self) -> u32 {
        self.k
    }

    /// The current public variables.
    pub fn variables(&self) -> &Variables {
        &self.vars
    }

    /// Residuals of the last iteration (none before the first).
    pub fn residuals(&self) -> Option<Residuals> {
        self.residuals
    }

    /// Number of enrolled devices N.
    pub fn device_count(&self) -> usize {
        self.latest.len()
    }

    /// The latest accepted schedule of each device.
    pub fn schedules(&self) -> &BTreeMap<DeviceId, Vec<Watts>> {
        &self.latest
    }

    /// Per-slot prices λ_t = ρ·u_t in €/MWh, raw fixed point.
    pub fn prices(&self) -> Vec<Fixed> {
        let rho = self.params.rho.raw() as i128;
        self.vars.u.iter().map(|&u| Fixed(round_div(rho * u as i128, SCALE as i128))).collect()
    }

    /// Applies one iteration: replaces the schedules of the devices that updated (the others
    /// keep theirs), then computes x̄, z̄, u and the residuals. Invalid input changes nothing.
    pub fn apply_iteration(&mut self, updates: &[(DeviceId, Vec<Watts>)]) -> Result<Residuals, AdmmError> {
        let t = self.params.slots.get();
        let mut seen = std::collections::BTreeSet::new();
        for (d, x) in updates {
            if !self.latest.contains_key(d) {
                return Err(AdmmError::UnknownDevice(*d));
            }
            if !seen.insert(*d) {
                return Err(AdmmError::Duplicate(*d));
            }
            if x.len() != t {
                return Err(AdmmError::Length { device: *d, expected: t, got: x.len() });
            }
        }
        for (d, x) in updates {
            self.latest.insert(*d, x.clone());
        }
        let n = self.latest.len() as i128;
        let s = SCALE as i128;

        // x̄_t = Σ_i x_it / N.
        let mut sums = vec![0i128; t];
        for x in self.latest.values() {
            for (acc, &v) in sums.iter_mut().zip(x) {
                *acc += v as i128;
            }
        }
        let x_bar: Vec<i64> = sums.iter().map(|&sum| round_div(sum * s, n)).collect();

        // z̄ = argmin g(N z) + Nρ/2 ‖z − u − x̄‖²; with v = u + x̄:
        let v: Vec<i128> = x_bar.iter().zip(&self.vars.u).map(|(&x, &u)| x as i128 + u as i128).collect();
        let rho = self.params.rho.raw() as i128;
        let z_bar: Vec<i64> = match &self.params.grid {
            // γN(Nz + b) + Nρ(z − v) = 0  ⇒  z = (ρ v − γ b) / (γ N + ρ).
            GridCost::ValleyFilling { gamma, base_load } => {
                let g = gamma.raw() as i128;
                v.iter().zip(base_load).map(|(&v, &b)| round_div(rho * v - g * b as i128 * s, g * n + rho)).collect()
            }
            // N p + Nρ(z − v) = 0  ⇒  z = v − p/ρ, then clipped to N z ≤ cap.
            GridCost::Tariff { price, feeder_cap } => {
                let cap = round_div(*feeder_cap as i128 * s, n) as i128;
                v.iter()
                    .zip(price)
                    .map(|(&v, p)| {
                        let shift = round_div(p.raw() as i128 * s, rho) as i128;
                        (v - shift).min(cap) as i64
                    })
                    .collect()
            }
            GridCost::Exchange => vec![0; t],
        };

        // u^{k+1} = u^k + x̄^{k+1} − z̄^{k+1}.
        let u: Vec<i64> = self.vars.u.iter().zip(&x_bar).zip(&z_bar).map(|((&u, &x), &z)| u + x - z).collect();

        // Residuals.
        let nn = n as u128;
        let primal = isqrt(nn * sum_sq(x_bar.iter().zip(&z_bar).map(|(&x, &z)| x - z)));
        let dual = isqrt(nn * sum_sq(z_bar.iter().zip(&self.vars.z_bar).map(|(&a, &b)| a - b)));
        let x_norm = isqrt(
            self.latest
                .values()
                .flatten()
                .map(|&x| {
                    let r = x as i128 * s;
                    (r * r) as u128
                })
                .fold(0u128, u128::saturating_add),
        );
        let z_norm = isqrt(nn * sum_sq(z_bar.iter().copied()));
        let u_norm = isqrt(nn * sum_sq(u.iter().copied()));
        let sqrt_nt = isqrt(nn * t as u128 * (s * s) as u128) as i128;
        let abs = round_div(sqrt_nt * self.params.eps_abs.raw() as i128, s);
        let rel = |norm: i64| round_div(norm as i128 * self.params.eps_rel.raw() as i128, s);
        let residuals = Residuals { primal, dual, eps_primal: abs.saturating_add(rel(x_norm.max(z_norm))), eps_dual: abs.saturating_add(rel(u_norm)) };

        self.vars = Variables { x_bar, z_bar, u };
        self.residuals = Some(residuals);
        self.k += 1;
        Ok(residuals)
    }
}
