//! Public nameplate limits (DESIGN §10): the rated powers and capacity an enrollment authority
//! attested for a device, in the units the circuits use. They are a public input of every
//! update statement, computed by verifiers from the attestation and the market's slot length,
//! and the circuit enforces that the private parameters θ lie within them — the same rule as
//! the native [`check`]:
//! - deferrable load, heat pump: `p_max ≤ import_w`;
//! - battery: `p_charge ≤ import_w`, `p_discharge ≤ export_w`, `capacity ≤ capacity` (W·slot);
//! - PV system: every forecast value `≤ export_w`.
//!
//! Public input: `import_w + 2^32·export_w + 2^64·capacity` (96 bits).

use ark_bn254::Fr;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::ModelParams;

/// Bits of each limit in the public input.
pub const LIMIT_BITS: u32 = 32;

/// A device's nameplate in circuit units: watts and watt-slots (W·Δ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limits {
    /// Rated power drawn from the grid (W).
    pub import_w: u32,
    /// Rated power fed to the grid (W).
    pub export_w: u32,
    /// Storage capacity (W·slot).
    pub capacity: u32,
}

impl Limits {
    /// The limits of a nameplate of `import_w`, `export_w` and `capacity_wh` for slots of
    /// `slot_seconds`: capacity = ⌊capacity_wh · 3600 / Δ⌋, clamped to 32 bits (a clamped
    /// limit is still far above any capacity the circuits represent).
    pub fn from_nameplate(import_w: u32, export_w: u32, capacity_wh: u32, slot_seconds: u32) -> Limits {
        let capacity = (capacity_wh as u64 * 3600 / slot_seconds.max(1) as u64).min(u32::MAX as u64) as u32;
        Limits { import_w, export_w, capacity }
    }

    /// The public-input element.
    pub fn to_field(&self) -> Fr {
        Fr::from(self.import_w as u128 | (self.export_w as u128) << LIMIT_BITS | (self.capacity as u128) << (2 * LIMIT_BITS))
    }
}

/// Which limit a parameter is bounded by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// [`Limits::import_w`].
    Import,
    /// [`Limits::export_w`].
    Export,
    /// [`Limits::capacity`].
    Capacity,
}

impl Limits {
    /// The value of one limit.
    pub fn get(&self, b: Bound) -> u32 {
        match b {
            Bound::Import => self.import_w,
            Bound::Export => self.export_w,
            Bound::Capacity => self.capacity,
        }
    }
}

/// A private parameter beyond its nameplate limit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field} = {value} exceeds the nameplate's {limit}")]
pub struct BeyondNameplate {
    /// The parameter.
    pub field: &'static str,
    /// Its value (in the parameter's unit).
    pub value: i64,
    /// The limit, in that unit.
    pub limit: i64,
}

/// The bounded parameters of `params`, each with its limit: what the circuit compares.
pub fn bounded(params: &ModelParams) -> Vec<(&'static str, i64, Bound)> {
    match params {
        ModelParams::Deferrable(d) => vec![("p_max (W)", d.get().p_max as i64, Bound::Import)],
        ModelParams::Thermal(t) => vec![("p_max (W)", t.get().p_max as i64, Bound::Import)],
        ModelParams::Battery(b) => {
            let b = b.get();
            vec![
                ("p_charge (W)", b.p_charge as i64, Bound::Import),
                ("p_discharge (W)", b.p_discharge as i64, Bound::Export),
                ("capacity (W·slot)", b.capacity, Bound::Capacity),
            ]
        }
        ModelParams::Producer(p) => p.get().forecast.iter().map(|&pv| ("forecast (W)", pv as i64, Bound::Export)).collect(),
    }
}

/// The smallest limits `params` fit ([`check`] holds for them, and fails for any limit one
/// lower that bounds something).
pub fn fitting(params: &ModelParams) -> Limits {
    let mut l = Limits { import_w: 0, export_w: 0, capacity: 0 };
    for (_, value, bound) in bounded(params) {
        let v = value.clamp(0, u32::MAX as i64) as u32;
        let slot = match bound {
            Bound::Import => &mut l.import_w,
            Bound::Export => &mut l.export_w,
            Bound::Capacity => &mut l.capacity,
        };
        *slot = (*slot).max(v);
    }
    l
}

/// Whether `params` lie within `limits` (the native mirror of the circuit's bound checks).
pub fn check(params: &ModelParams, limits: &Limits) -> Result<(), BeyondNameplate> {
    for (field, value, bound) in bounded(params) {
        let limit = limits.get(bound) as i64;
        if value > limit {
            return Err(BeyondNameplate { field, value, limit });
        }
    }
    Ok(())
}
