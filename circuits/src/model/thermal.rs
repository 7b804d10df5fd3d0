//! Thermal load (heat pump), DESIGN §3: 0 ≤ x_t ≤ p_max and a first-order temperature model
//! in fixed point, τ_{t+1} = ⌊a·τ_t / S⌋ + b·x_t + c_t, kept in the comfort band
//! τ_min ≤ τ_t ≤ τ_max for t = 1..=T.
//!
//! Temperatures τ, the decay a (0..=1), the gain b (°C per W per slot) and the drift c_t
//! (°C per slot: losses, weather, occupancy) are raw fixed point at S = 2^20. The product a·τ
//! is the one place a rounding happens; the model defines it as the floor, which the circuit
//! proves with a remainder 0 ≤ r_t < S. (This is part of the model's dynamics, not an
//! aggregate validators compute, so DESIGN §2's half-even rule does not apply to it.)

use ark_bn254::Fr;
use ark_relations::r1cs::{ConstraintSystemRef, SynthesisError};
use serde::{Deserialize, Serialize};

use super::{in_range, Family, ModelKind, ModelVars, ParamError, Violation};
use crate::field::{fr_from_i128, pack_limbs};
use crate::fixed::{Fixed, Watts, SCALE, SCALE_BITS};
use crate::gadgets::IntVar;
use crate::limits::{Slots, DECAY_BITS, GAIN_BITS, MAX_POWER_W, MAX_TEMP_RAW, MIN_TEMP_RAW, POWER_BITS, TEMP_BITS};
use crate::statement::pack_limbs_var;

const KIND: ModelKind = ModelKind::Thermal;

/// Plain thermal parameters, unchecked (see [`ThermalParams`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thermal {
    /// Largest electrical power p_max in W.
    pub p_max: Watts,
    /// Decay a per slot, in [0, 1].
    pub decay: Fixed,
    /// Gain b: temperature change per W over one slot.
    pub gain: Fixed,
    /// Drift c_t per slot (T entries), in °C.
    pub drift: Vec<Fixed>,
    /// τ_0, the temperature at the start.
    pub temp_initial: Fixed,
    /// τ_min.
    pub temp_min: Fixed,
    /// τ_max.
    pub temp_max: Fixed,
}

/// Validated thermal parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Thermal", into = "Thermal")]
pub struct ThermalParams(Thermal);

super::validated!(ThermalParams, Thermal);

fn temp_range(field: &'static str, v: Fixed) -> Result<(), ParamError> {
    in_range(KIND, field, v, Fixed(MIN_TEMP_RAW), Fixed(MAX_TEMP_RAW))
}

impl ThermalParams {
    /// Validates: T in range, 0 ≤ p_max < 2^17, 0 ≤ a ≤ 1, |b| < 2^4 °C/W, temperatures and
    /// drifts within ±64 °C, τ_min ≤ τ_max.
    pub fn new(p: Thermal) -> Result<ThermalParams, ParamError> {
        Slots::new(p.drift.len())?;
        in_range(KIND, "p_max", p.p_max, 0, MAX_POWER_W)?;
        in_range(KIND, "decay", p.decay, Fixed::ZERO, Fixed::ONE)?;
        let g = (1i64 << GAIN_BITS) - 1;
        in_range(KIND, "gain", p.gain, Fixed(-g), Fixed(g))?;
        temp_range("temp_initial", p.temp_initial)?;
        temp_range("temp_min", p.temp_min)?;
        temp_range("temp_max", p.temp_max)?;
        for &c in &p.drift {
            temp_range("drift", c)?;
        }
        if p.temp_min > p.temp_max {
            return Err(ParamError::Inconsistent { model: KIND, reason: format!("temp_min = {} °C is above temp_max = {} °C", p.temp_min, p.temp_max) });
        }
        Ok(ThermalParams(p))
    }

    /// The parameters.
    pub fn get(&self) -> &Thermal {
        &self.0
    }

    /// T.
    pub fn slots(&self) -> Slots {
        Slots::new(self.0.drift.len()).expect("validated in new")
    }

    /// θ as committed: p_max, a, b, τ_0, τ_min, τ_max, then the drift packed as 32-bit limbs.
    pub fn theta_elements(&self) -> Vec<Fr> {
        let p = &self.0;
        let mut out: Vec<Fr> = [p.p_max as i64, p.decay.0, p.gain.0, p.temp_initial.0, p.temp_min.0, p.temp_max.0].map(|v| fr_from_i128(v as i128)).to_vec();
        let drift: Vec<i64> = p.drift.iter().map(|c| c.0).collect();
        out.extend(pack_limbs(&drift).expect("drifts are validated to 27 bits"));
        out
    }

    /// One step of the dynamics: τ_{t+1} = ⌊a·τ_t / S⌋ + b·x_t + c_t (raw fixed point).
    pub fn next_temp(&self, temp: i128, x: Watts, t: usize) -> i128 {
        let p = &self.0;
        (p.decay.0 as i128 * temp).div_euclid(SCALE as i128) + p.gain.0 as i128 * x as i128 + p.drift[t].0 as i128
    }

    /// τ_1..=τ_T for schedule `x` (raw fixed point).
    pub fn trajectory(&self, x: &[Watts]) -> Vec<i128> {
        let mut temp = self.0.temp_initial.0 as i128;
        x.iter()
            .enumerate()
            .map(|(t, &xt)| {
                temp = self.next_temp(temp, xt, t);
                temp
            })
            .collect()
    }

    /// Every violated constraint of `x` (T entries, checked by the caller).
    pub fn violations(&self, x: &[Watts]) -> Vec<Violation> {
        let p = &self.0;
        let mut out = Vec::new();
        let (lo, hi) = (p.temp_min.0 as i128, p.temp_max.0 as i128);
        let show = |raw: i128| Fixed(raw.clamp(i64::MIN as i128, i64::MAX as i128) as i64);
        for (t, (&xt, temp)) in x.iter().zip(self.trajectory(x)).enumerate() {
            if xt < 0 {
                out.push(Violation::at(Family::PowerMin, t, format!("x = {xt} W < 0")));
            }
            if xt > p.p_max {
                out.push(Violation::at(Family::PowerMax, t, format!("x = {xt} W > p_max = {} W", p.p_max)));
            }
            if temp < lo {
                out.push(Violation::at(Family::TempMin, t, format!("τ = {} °C < τ_min = {} °C", show(temp), p.temp_min)));
            }
            if temp > hi {
                out.push(Violation::at(Family::TempMax, t, format!("τ = {} °C > τ_max = {} °C", show(temp), p.temp_max)));
            }
        }
        out
    }
}

/// A signed fixed-point parameter in `[−2^bits, 2^bits)`: an unsigned sum of `bits + 1` bits,
/// shifted down.
fn alloc_signed(cs: &ConstraintSystemRef<Fr>, val: Option<i128>, bits: u32) -> Result<IntVar, SynthesisError> {
    let offset = 1i128 << bits;
    Ok(IntVar::alloc_unsigned(cs, val.map(|v| v + offset), bits + 1)?.add_const(-offset))
}

/// The gadget: mirrors [`ThermalParams::violations`] family by family.
pub(crate) fn enforce(cs: &ConstraintSystemRef<Fr>, slots: Slots, p: Option<&ThermalParams>, x: &[Option<i128>]) -> Result<ModelVars, SynthesisError> {
    let val = |f: fn(&Thermal) -> i64| p.map(|p| f(&p.0) as i128);
    let p_max = IntVar::alloc_unsigned(cs, val(|p| p.p_max as i64), POWER_BITS)?;
    let decay = IntVar::alloc_unsigned(cs, val(|p| p.decay.0), DECAY_BITS)?;
    let gain = alloc_signed(cs, val(|p| p.gain.0), GAIN_BITS)?;
    let temp_0 = alloc_signed(cs, val(|p| p.temp_initial.0), TEMP_BITS)?;
    let temp_min = alloc_signed(cs, val(|p| p.temp_min.0), TEMP_BITS)?;
    let temp_max = alloc_signed(cs, val(|p| p.temp_max.0), TEMP_BITS)?;

    let mut schedule = Vec::with_capacity(slots.get());
    let mut drift = Vec::with_capacity(slots.get());
    let mut temp = temp_0.clone();
    for (t, &xt) in x.iter().enumerate() {
        // PowerMin: x_t is a sum of 17 bits, so x_t ≥ 0.
        let x_t = IntVar::alloc_unsigned(cs, xt, POWER_BITS)?;
        // PowerMax: x_t ≤ p_max.
        x_t.enforce_le(cs, &p_max, POWER_BITS)?;
        let c_t = alloc_signed(cs, p.map(|p| p.0.drift[t].0 as i128), TEMP_BITS)?;
        // The next temperature, as the native dynamics compute it.
        let heat = gain.mul(&x_t);
        let decayed = decay.mul(&temp);
        let next_val = decayed.val.zip(heat.val).zip(c_t.val).map(|((d, h), c)| d.div_euclid(SCALE as i128) + h + c);
        // TempMin: τ_{t+1} − τ_min is a sum of 27 bits, so τ_{t+1} ≥ τ_min.
        let above_min = IntVar::alloc_unsigned(cs, next_val.zip(temp_min.val).map(|(n, lo)| n - lo), TEMP_BITS + 1)?;
        let next = temp_min.add(&above_min);
        // TempMax: τ_{t+1} ≤ τ_max.
        next.enforce_le(cs, &temp_max, TEMP_BITS + 1)?;
        // Dynamics: a·τ_t = S·(τ_{t+1} − b·x_t − c_t) + r_t with 0 ≤ r_t < S.
        let remainder = decayed.sub(&next.sub(&heat).sub(&c_t).scale(SCALE as i128));
        remainder.enforce_range(cs, SCALE_BITS)?;
        schedule.push(x_t);
        drift.push(c_t);
        temp = next;
    }

    let bounded = vec![(crate::nameplate::Bound::Import, p_max.clone())];
    let mut theta = vec![p_max.var, decay.var, gain.var, temp_0.var, temp_min.var, temp_max.var];
    theta.extend(pack_limbs_var(&drift));
    Ok(ModelVars { schedule, theta, bounded })
}
