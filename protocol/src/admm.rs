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

/// Largest ρ and γ, raw (1,024 €/MWh per W; markets use ≈ 0.01–0.1).
pub const MAX_PENALTY_RAW: i64 = 1 << 30;
/// Largest |tariff price|, raw (2^20 €/MWh).
pub const MAX_PRICE_RAW: i64 = 1 << 40;
/// Largest feeder limit and |base load|, W (a 1 GW feeder).
pub const MAX_GRID_W: i64 = 1_000_000_000;
/// Largest ε_abs (raw W) and ε_rel (raw).
pub const MAX_EPS_RAW: i64 = 1 << 40;

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
    /// A value left the range its integer type holds (the iteration is refused whole).
    #[error("fixed-point overflow computing {what} at slot {slot}")]
    Overflow {
        /// The quantity.
        what: &'static str,
        /// The slot (0 for whole-vector quantities).
        slot: usize,
    },
}

impl AdmmParams {
    /// Checks every parameter against its range: ρ in 1..=[`MAX_PENALTY_RAW`], γ in
    /// 0..=[`MAX_PENALTY_RAW`], T base-load values or prices within [`MAX_GRID_W`] and
    /// [`MAX_PRICE_RAW`], a feeder limit in 0..=[`MAX_GRID_W`], ε in 0..=[`MAX_EPS_RAW`]. Within
    /// these bounds every product below fits i128; every result that must fit i64 is still
    /// checked.
    pub fn check(&self) -> Result<(), AdmmError> {
        let t = self.slots.get();
        let bad = |what: &str, got: String| Err(AdmmError::Params(format!("{what} = {got} is out of range")));
        if !(1..=MAX_PENALTY_RAW).contains(&self.rho.raw()) {
            return bad("rho (raw)", self.rho.raw().to_string());
        }
        for (what, v) in [("eps_abs (raw)", self.eps_abs.raw()), ("eps_rel (raw)", self.eps_rel.raw())] {
            if !(0..=MAX_EPS_RAW).contains(&v) {
                return bad(what, v.to_string());
            }
        }
        match &self.grid {
            GridCost::ValleyFilling { gamma, base_load } => {
                if !(0..=MAX_PENALTY_RAW).contains(&gamma.raw()) {
                    return bad("gamma (raw)", gamma.raw().to_string());
                }
                if base_load.len() != t {
                    return Err(AdmmError::Params(format!("valley filling needs T = {t} base-load values, got {}", base_load.len())));
                }
                if let Some((i, b)) = base_load.iter().enumerate().find(|(_, b)| (**b as i64).abs() > MAX_GRID_W) {
                    return bad(&format!("base_load[{i}] (W)"), b.to_string());
                }
            }
            GridCost::Tariff { price, feeder_cap } => {
                if price.len() != t {
                    return Err(AdmmError::Params(format!("tariff needs T = {t} prices, got {}", price.len())));
                }
                if let Some((i, p)) = price.iter().enumerate().find(|(_, p)| !(-MAX_PRICE_RAW..=MAX_PRICE_RAW).contains(&p.raw())) {
                    return bad(&format!("price[{i}] (raw)"), p.raw().to_string());
                }
                if !(0..=MAX_GRID_W).contains(feeder_cap) {
                    return bad("feeder_cap (W)", feeder_cap.to_string());
                }
            }
            GridCost::Exchange => {}
        }
        Ok(())
    }
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

/// ⌊√v⌋; it fits i64 for every v < 2^126.
fn isqrt(v: u128, what: &'static str) -> Result<i64, AdmmError> {
    i64::try_from(v.isqrt()).map_err(|_| AdmmError::Overflow { what, slot: 0 })
}

/// N·Σ v², checked.
fn n_sum_sq(n: u128, v: impl Iterator<Item = i128>, what: &'static str) -> Result<u128, AdmmError> {
    let mut acc = 0u128;
    for x in v {
        acc = acc.checked_add(x.unsigned_abs().checked_mul(x.unsigned_abs()).ok_or(AdmmError::Overflow { what, slot: 0 })?).ok_or(AdmmError::Overflow { what, slot: 0 })?;
    }
    acc.checked_mul(n).ok_or(AdmmError::Overflow { what, slot: 0 })
}

/// n / d rounded half to even, as an i64; `d` > 0 everywhere below (checked parameters,
/// N ≥ 1), and a quotient beyond i64 is an overflow.
fn round_div(n: i128, d: i128, what: &'static str, slot: usize) -> Result<i64, AdmmError> {
    let q = div_round_half_even(n, d).map_err(|_| AdmmError::Overflow { what, slot })?;
    i64::try_from(q).map_err(|_| AdmmError::Overflow { what, slot })
}

/// `a · b + c` in i128, checked.
fn mul_add(a: i128, b: i128, c: i128, what: &'static str, slot: usize) -> Result<i128, AdmmError> {
    a.checked_mul(b).and_then(|p| p.checked_add(c)).ok_or(AdmmError::Overflow { what, slot })
}

impl AdmmState {
    /// A market with `devices` enrolled, every x_i^0 = 0 and all variables 0.
    /// Refuses parameters out of range ([`AdmmParams::check`]).
    pub fn new(params: AdmmParams, devices: impl IntoIterator<Item = DeviceId>) -> Result<AdmmState, AdmmError> {
        let t = params.slots.get();
        params.check()?;
        let latest: BTreeMap<_, _> = devices.into_iter().map(|d| (d, vec![0; t])).collect();
        if latest.is_empty() || latest.len() > MAX_DEVICES {
            return Err(AdmmError::DeviceCount(latest.len()));
        }
        Ok(AdmmState { vars: Variables::zero(params.slots), params, latest, residuals: None, k: 0 })
    }

    /// The engine as a snapshot held it (docs/protocol.md §6.10): `params` from the market's
    /// spec, each enrolled device's latest schedule, the variables and residuals after
    /// iteration `k` ≥ 1. Refuses parameters out of range, a device count out of range and
    /// vectors that are not T long.
    pub fn restore(params: AdmmParams, latest: BTreeMap<DeviceId, Vec<Watts>>, vars: Variables, residuals: Option<Residuals>, k: u32) -> Result<AdmmState, AdmmError> {
        params.check()?;
        let t = params.slots.get();
        if latest.is_empty() || latest.len() > MAX_DEVICES {
            return Err(AdmmError::DeviceCount(latest.len()));
        }
        if let Some((d, x)) = latest.iter().find(|(_, x)| x.len() != t) {
            return Err(AdmmError::Length { device: *d, expected: t, got: x.len() });
        }
        if vars.x_bar.len() != t || vars.z_bar.len() != t || vars.u.len() != t {
            return Err(AdmmError::Params(format!("restored variables are not {t} slots long")));
        }
        Ok(AdmmState { params, latest, vars, residuals, k })
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

    /// Per-slot prices λ_t = ρ·u_t in €/MWh, raw fixed point (an overflow if one leaves i64).
    pub fn prices(&self) -> Result<Vec<Fixed>, AdmmError> {
        let rho = self.params.rho.raw() as i128;
        self.vars.u.iter().enumerate().map(|(t, &u)| Ok(Fixed(round_div(rho * u as i128, SCALE as i128, "price", t)?))).collect()
    }

    /// Applies one iteration: replaces the schedules of the devices that updated (the others
    /// keep theirs), then computes x̄, z̄, u and the residuals. Every operation is checked:
    /// invalid input or an overflow is a typed error and changes nothing.
    pub fn apply_iteration(&mut self, updates: &[(DeviceId, Vec<Watts>)]) -> Result<Residuals, AdmmError> {
        let t = self.params.slots.get();
        let mut fresh: BTreeMap<&DeviceId, &Vec<Watts>> = BTreeMap::new();
        for (d, x) in updates {
            if !self.latest.contains_key(d) {
                return Err(AdmmError::UnknownDevice(*d));
            }
            if fresh.insert(d, x).is_some() {
                return Err(AdmmError::Duplicate(*d));
            }
            if x.len() != t {
                return Err(AdmmError::Length { device: *d, expected: t, got: x.len() });
            }
        }
        // The schedules after this iteration, without touching the state until all is computed.
        let schedules = || self.latest.iter().map(|(d, x)| fresh.get(d).copied().unwrap_or(x));
        let n = self.latest.len() as i128;
        let s = SCALE as i128;

        // x̄_t = Σ_i x_it / N. (|x| < 2^31 and N ≤ 10^5: the sums fit i128 by far.)
        let mut sums = vec![0i128; t];
        for x in schedules() {
            for (acc, &v) in sums.iter_mut().zip(x) {
                *acc += v as i128;
            }
        }
        let x_bar: Vec<i64> = sums.iter().enumerate().map(|(i, &sum)| round_div(sum * s, n, "x_bar", i)).collect::<Result<_, _>>()?;

        // z̄ = argmin g(N z) + Nρ/2 ‖z − u − x̄‖²; with v = u + x̄:
        let v: Vec<i128> = x_bar.iter().zip(&self.vars.u).map(|(&x, &u)| x as i128 + u as i128).collect();
        let rho = self.params.rho.raw() as i128;
        let z_bar: Vec<i64> = match &self.params.grid {
            // γN(Nz + b) + Nρ(z − v) = 0  ⇒  z = (ρ v − γ b) / (γ N + ρ).
            GridCost::ValleyFilling { gamma, base_load } => {
                let g = gamma.raw() as i128;
                let d = mul_add(g, n, rho, "z_bar divisor", 0)?;
                v.iter()
                    .zip(base_load)
                    .enumerate()
                    .map(|(i, (&v, &b))| {
                        let gb = mul_add(g, b as i128 * s, 0, "z_bar", i)?;
                        round_div(mul_add(rho, v, -gb, "z_bar", i)?, d, "z_bar", i)
                    })
                    .collect::<Result<_, _>>()?
            }
            // N p + Nρ(z − v) = 0  ⇒  z = v − p/ρ, then clipped to N z ≤ cap.
            GridCost::Tariff { price, feeder_cap } => {
                let cap = round_div(*feeder_cap as i128 * s, n, "feeder cap", 0)? as i128;
                v.iter()
                    .zip(price)
                    .enumerate()
                    .map(|(i, (&v, p))| {
                        let shift = round_div(p.raw() as i128 * s, rho, "tariff shift", i)? as i128;
                        i64::try_from((v - shift).min(cap)).map_err(|_| AdmmError::Overflow { what: "z_bar", slot: i })
                    })
                    .collect::<Result<_, _>>()?
            }
            GridCost::Exchange => vec![0; t],
        };

        // u^{k+1} = u^k + x̄^{k+1} − z̄^{k+1}.
        let u: Vec<i64> = (0..t)
            .map(|i| self.vars.u[i].checked_add(x_bar[i]).and_then(|w| w.checked_sub(z_bar[i])).ok_or(AdmmError::Overflow { what: "u", slot: i }))
            .collect::<Result<_, _>>()?;

        // Residuals.
        let nn = n as u128;
        let diff = |a: &[i64], b: &[i64]| a.iter().zip(b).map(|(&a, &b)| a as i128 - b as i128).collect::<Vec<i128>>();
        let primal = isqrt(n_sum_sq(nn, diff(&x_bar, &z_bar).into_iter(), "primal residual")?, "primal residual")?;
        let dual = isqrt(n_sum_sq(nn, diff(&z_bar, &self.vars.z_bar).into_iter(), "dual residual")?, "dual residual")?;
        let x_norm = isqrt(n_sum_sq(1, schedules().flatten().map(|&x| x as i128 * s), "schedule norm")?, "schedule norm")?;
        let z_norm = isqrt(n_sum_sq(nn, z_bar.iter().map(|&z| z as i128), "z norm")?, "z norm")?;
        let u_norm = isqrt(n_sum_sq(nn, u.iter().map(|&u| u as i128), "u norm")?, "u norm")?;
        let sqrt_nt = isqrt(nn * t as u128 * (s * s) as u128, "sqrt(NT)")? as i128;
        let abs = round_div(sqrt_nt * self.params.eps_abs.raw() as i128, s, "eps_abs", 0)?;
        let rel = |norm: i64| round_div(norm as i128 * self.params.eps_rel.raw() as i128, s, "eps_rel", 0);
        let sum = |a: i64, b: i64, what| a.checked_add(b).ok_or(AdmmError::Overflow { what, slot: 0 });
        let residuals = Residuals {
            primal,
            dual,
            eps_primal: sum(abs, rel(x_norm.max(z_norm))?, "eps_primal")?,
            eps_dual: sum(abs, rel(u_norm)?, "eps_dual")?,
        };

        for (d, x) in fresh {
            self.latest.insert(*d, x.clone());
        }
        self.vars = Variables { x_bar, z_bar, u };
        self.residuals = Some(residuals);
        self.k += 1;
        Ok(residuals)
    }
}
