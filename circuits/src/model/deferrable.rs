//! Deferrable load (EV charger, water heater, appliance run), DESIGN §3:
//! 0 ≤ x_t ≤ a_t·p_max, E_min ≤ Σ x_t ≤ E_max, |x_t − x_{t−1}| ≤ r.

use ark_bn254::Fr;
use ark_r1cs_std::fields::fp::FpVar;
use ark_relations::r1cs::{ConstraintSystemRef, SynthesisError};
use serde::{Deserialize, Serialize};

use super::{in_range, Family, ModelKind, ModelVars, ParamError, Violation};
use crate::field::pack_bits;
use crate::fixed::{WattSlots, Watts};
use crate::gadgets::IntVar;
use crate::limits::{Slots, BITS_PER_ELEMENT, ENERGY_BITS, MAX_POWER_W, POWER_BITS};

const KIND: ModelKind = ModelKind::Deferrable;

/// Plain deferrable-load parameters, unchecked (see [`DeferrableParams`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferrable {
    /// a_t: whether the load may draw power in slot t (T entries).
    pub available: Vec<bool>,
    /// p_max in W.
    pub p_max: Watts,
    /// E_min in W·slot.
    pub e_min: WattSlots,
    /// E_max in W·slot.
    pub e_max: WattSlots,
    /// Ramp limit r in W per slot; `None` means none (the circuit then uses r = p_max, which
    /// every schedule within 0..=p_max meets).
    pub ramp: Option<Watts>,
}

/// Validated deferrable-load parameters: every value fits the circuit and E_min is reachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Deferrable", into = "Deferrable")]
pub struct DeferrableParams(Deferrable);

super::validated!(DeferrableParams, Deferrable);

impl DeferrableParams {
    /// Validates: T in range, 0 ≤ p_max < 2^17, 0 ≤ r ≤ p_max, 0 ≤ E_min ≤ E_max < 2^26, and
    /// E_min ≤ Σ a_t·p_max (otherwise no schedule exists).
    pub fn new(d: Deferrable) -> Result<DeferrableParams, ParamError> {
        let slots = Slots::new(d.available.len())?;
        in_range(KIND, "p_max", d.p_max, 0, MAX_POWER_W)?;
        if let Some(r) = d.ramp {
            in_range(KIND, "ramp", r, 0, d.p_max)?;
        }
        in_range(KIND, "e_max", d.e_max, 0, (1 << ENERGY_BITS) - 1)?;
        in_range(KIND, "e_min", d.e_min, 0, d.e_max)?;
        let reachable = d.available.iter().filter(|&&a| a).count() as i64 * d.p_max as i64;
        if d.e_min > reachable {
            return Err(ParamError::Inconsistent {
                model: KIND,
                reason: format!(
                    "e_min = {} W·slot exceeds the {} W·slot reachable in the {} available slots of {} slots",
                    d.e_min,
                    reachable,
                    d.available.iter().filter(|&&a| a).count(),
                    slots
                ),
            });
        }
        Ok(DeferrableParams(d))
    }

    /// The parameters.
    pub fn get(&self) -> &Deferrable {
        &self.0
    }

    /// T.
    pub fn slots(&self) -> Slots {
        Slots::new(self.0.available.len()).expect("validated in new")
    }

    /// The ramp limit the circuit enforces (r, or p_max when there is none).
    pub fn ramp_limit(&self) -> Watts {
        self.0.ramp.unwrap_or(self.0.p_max)
    }

    /// θ as committed: packed availability bits, p_max, E_min, E_max, r.
    pub fn theta_elements(&self) -> Vec<Fr> {
        let d = &self.0;
        let mut out = pack_bits(&d.available);
        out.extend([Fr::from(d.p_max as u64), Fr::from(d.e_min as u64), Fr::from(d.e_max as u64), Fr::from(self.ramp_limit() as u64)]);
        out
    }

    /// Every violated constraint of `x` (T entries, checked by the caller).
    pub fn violations(&self, x: &[Watts]) -> Vec<Violation> {
        let d = &self.0;
        let r = self.ramp_limit() as i64;
        let mut out = Vec::new();
        for (t, &xt) in x.iter().enumerate() {
            let cap = if d.available[t] { d.p_max } else { 0 };
            if xt < 0 {
                out.push(Violation::at(Family::PowerMin, t, format!("x = {xt} W < 0")));
            }
            if xt > cap {
                out.push(Violation::at(Family::PowerMax, t, format!("x = {xt} W > a·p_max = {cap} W")));
            }
            if t > 0 {
                let step = xt as i64 - x[t - 1] as i64;
                if step.abs() > r {
                    out.push(Violation::at(Family::Ramp, t, format!("|x_t − x_(t−1)| = {} W > r = {r} W", step.abs())));
                }
            }
        }
        let energy: i64 = x.iter().map(|&v| v as i64).sum();
        if energy < d.e_min {
            out.push(Violation::total(Family::EnergyMin, format!("Σx = {energy} W·slot < E_min = {}", d.e_min)));
        }
        if energy > d.e_max {
            out.push(Violation::total(Family::EnergyMax, format!("Σx = {energy} W·slot > E_max = {}", d.e_max)));
        }
        out
    }
}

/// The gadget: mirrors [`DeferrableParams::violations`] family by family.
pub(crate) fn enforce(cs: &ConstraintSystemRef<Fr>, slots: Slots, p: Option<&DeferrableParams>, x: &[Option<i128>]) -> Result<ModelVars, SynthesisError> {
    let val = |f: fn(&DeferrableParams) -> i128| p.map(f);
    let p_max = IntVar::alloc_unsigned(cs, val(|p| p.0.p_max as i128), POWER_BITS)?;
    let e_min = IntVar::alloc_unsigned(cs, val(|p| p.0.e_min as i128), ENERGY_BITS)?;
    let e_max = IntVar::alloc_unsigned(cs, val(|p| p.0.e_max as i128), ENERGY_BITS)?;
    let ramp = IntVar::alloc_unsigned(cs, val(|p| p.ramp_limit() as i128), POWER_BITS)?;

    let mut available = Vec::with_capacity(slots.get());
    let mut schedule: Vec<IntVar> = Vec::with_capacity(slots.get());
    for (t, &xt) in x.iter().enumerate() {
        let a_t = IntVar::alloc_bit(cs, p.map(|p| p.0.available[t]))?;
        // PowerMin: x_t is a sum of POWER_BITS bits, so 0 ≤ x_t < 2^17.
        let x_t = IntVar::alloc_unsigned(cs, xt, POWER_BITS)?;
        // PowerMax: x_t ≤ a_t·p_max.
        x_t.enforce_le(cs, &a_t.mul(&p_max), POWER_BITS)?;
        // Ramp: −r ≤ x_t − x_{t−1} ≤ r; r − step < 2^18.
        if let Some(prev) = schedule.last() {
            let step = x_t.sub(prev);
            step.enforce_le(cs, &ramp, POWER_BITS + 1)?;
            step.neg().enforce_le(cs, &ramp, POWER_BITS + 1)?;
        }
        available.push(a_t);
        schedule.push(x_t);
    }
    // EnergyMin, EnergyMax: Σ x_t < T·2^17 ≤ 2^26.
    let energy = IntVar::sum(&schedule);
    e_min.enforce_le(cs, &energy, ENERGY_BITS)?;
    energy.enforce_le(cs, &e_max, ENERGY_BITS)?;

    let mut theta: Vec<FpVar<Fr>> = available.chunks(BITS_PER_ELEMENT).map(pack_bits_var).collect();
    let bounded = vec![(crate::nameplate::Bound::Import, p_max.clone())];
    theta.extend([p_max.var, e_min.var, e_max.var, ramp.var]);
    Ok(ModelVars { schedule, theta, bounded })
}

/// Σ_i a_i·2^i over one chunk of bits, as a field linear combination (weights up to 2^247,
/// beyond i128, hence in the field); the gadget of [`pack_bits`].
fn pack_bits_var(chunk: &[IntVar]) -> FpVar<Fr> {
    let mut acc = FpVar::Constant(Fr::from(0u64));
    let mut weight = Fr::from(1u64);
    for a in chunk {
        acc += &a.var * weight;
        weight = weight + weight;
    }
    acc
}
