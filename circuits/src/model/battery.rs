//! Stationary battery, DESIGN §3: −p_dis ≤ x_t ≤ p_ch, s_t = s_{t−1} + x_t from the private
//! s_0, 0 ≤ s_t ≤ cap, s_T ≥ s_final. Energies in W·slot; the model is lossless.

use ark_bn254::Fr;
use ark_relations::r1cs::{ConstraintSystemRef, SynthesisError};
use serde::{Deserialize, Serialize};

use super::{in_range, Family, ModelKind, ModelVars, ParamError, Violation};
use crate::fixed::{WattSlots, Watts};
use crate::gadgets::IntVar;
use crate::limits::{Slots, ENERGY_BITS, MAX_ENERGY_WS, MAX_POWER_W, POWER_BITS};

const KIND: ModelKind = ModelKind::Battery;

/// Plain battery parameters, unchecked (see [`BatteryParams`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Battery {
    /// T.
    pub slots: usize,
    /// Largest charging power p_ch in W.
    pub p_charge: Watts,
    /// Largest discharging power p_dis in W (a positive number).
    pub p_discharge: Watts,
    /// Capacity in W·slot.
    pub capacity: WattSlots,
    /// State of charge s_0 at the start, in W·slot.
    pub soc_initial: WattSlots,
    /// Least state of charge s_final at the end, in W·slot.
    pub soc_final_min: WattSlots,
}

/// Validated battery parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Battery", into = "Battery")]
pub struct BatteryParams(Battery);

super::validated!(BatteryParams, Battery);

impl BatteryParams {
    /// Validates: T in range, powers in 0..2^17, 0 ≤ s_0, s_final ≤ cap < 2^26, and s_final
    /// reachable from s_0 by charging at p_ch for T slots.
    pub fn new(b: Battery) -> Result<BatteryParams, ParamError> {
        let slots = Slots::new(b.slots)?;
        in_range(KIND, "p_charge", b.p_charge, 0, MAX_POWER_W)?;
        in_range(KIND, "p_discharge", b.p_discharge, 0, MAX_POWER_W)?;
        in_range(KIND, "capacity", b.capacity, 0, MAX_ENERGY_WS)?;
        in_range(KIND, "soc_initial", b.soc_initial, 0, b.capacity)?;
        in_range(KIND, "soc_final_min", b.soc_final_min, 0, b.capacity)?;
        let reachable = b.soc_initial + b.p_charge as i64 * slots.get() as i64;
        if b.soc_final_min > reachable {
            return Err(ParamError::Inconsistent {
                model: KIND,
                reason: format!("soc_final_min = {} W·slot is unreachable: s_0 + T·p_ch = {reachable}", b.soc_final_min),
            });
        }
        Ok(BatteryParams(b))
    }

    /// The parameters.
    pub fn get(&self) -> &Battery {
        &self.0
    }

    /// T.
    pub fn slots(&self) -> Slots {
        Slots::new(self.0.slots).expect("validated in new")
    }

    /// θ as committed: p_ch, p_dis, s_0, cap, s_final.
    pub fn theta_elements(&self) -> Vec<Fr> {
        let b = &self.0;
        [b.p_charge as u64, b.p_discharge as u64, b.soc_initial as u64, b.capacity as u64, b.soc_final_min as u64].map(Fr::from).to_vec()
    }

    /// Every violated constraint of `x` (T entries, checked by the caller).
    pub fn violations(&self, x: &[Watts]) -> Vec<Violation> {
        let b = &self.0;
        let mut out = Vec::new();
        let mut soc = b.soc_initial;
        for (t, &xt) in x.iter().enumerate() {
            if xt < -b.p_discharge {
                out.push(Violation::at(Family::PowerMin, t, format!("x = {xt} W < −p_dis = −{} W", b.p_discharge)));
            }
            if xt > b.p_charge {
                out.push(Violation::at(Family::PowerMax, t, format!("x = {xt} W > p_ch = {} W", b.p_charge)));
            }
            soc += xt as i64;
            if soc < 0 {
                out.push(Violation::at(Family::SocMin, t, format!("s = {soc} W·slot < 0")));
            }
            if soc > b.capacity {
                out.push(Violation::at(Family::SocMax, t, format!("s = {soc} W·slot > cap = {}", b.capacity)));
            }
        }
        if soc < b.soc_final_min {
            out.push(Violation::total(Family::SocFinal, format!("s_T = {soc} W·slot < s_final = {}", b.soc_final_min)));
        }
        out
    }
}

/// The gadget: mirrors [`BatteryParams::violations`] family by family.
pub(crate) fn enforce(cs: &ConstraintSystemRef<Fr>, slots: Slots, p: Option<&BatteryParams>, x: &[Option<i128>]) -> Result<ModelVars, SynthesisError> {
    let val = |f: fn(&Battery) -> i128| p.map(|p| f(&p.0));
    let p_ch = IntVar::alloc_unsigned(cs, val(|b| b.p_charge as i128), POWER_BITS)?;
    let p_dis = IntVar::alloc_unsigned(cs, val(|b| b.p_discharge as i128), POWER_BITS)?;
    let s_0 = IntVar::alloc_unsigned(cs, val(|b| b.soc_initial as i128), ENERGY_BITS)?;
    let cap = IntVar::alloc_unsigned(cs, val(|b| b.capacity as i128), ENERGY_BITS)?;
    let s_final = IntVar::alloc_unsigned(cs, val(|b| b.soc_final_min as i128), ENERGY_BITS)?;

    let mut schedule = Vec::with_capacity(slots.get());
    let mut soc = s_0.clone();
    for &xt in x {
        // PowerMin: x_t + p_dis is a sum of 18 bits, so x_t ≥ −p_dis (and x_t > −2^18).
        let lifted = IntVar::alloc_unsigned(cs, xt.zip(p_dis.val).map(|(x, d)| x + d), POWER_BITS + 1)?;
        let x_t = lifted.sub(&p_dis);
        // PowerMax: x_t ≤ p_ch; p_ch − x_t ≤ p_ch + p_dis < 2^18.
        x_t.enforce_le(cs, &p_ch, POWER_BITS + 1)?;
        // SocMin: s_t is a sum of 26 bits, so s_t ≥ 0; dynamics s_t = s_{t−1} + x_t.
        let next = soc.add(&x_t);
        let s_t = IntVar::alloc_unsigned(cs, next.val, ENERGY_BITS)?;
        s_t.enforce_equal(&next)?;
        // SocMax: s_t ≤ cap.
        s_t.enforce_le(cs, &cap, ENERGY_BITS)?;
        schedule.push(x_t);
        soc = s_t;
    }
    // SocFinal: s_T ≥ s_final.
    s_final.enforce_le(cs, &soc, ENERGY_BITS)?;

    use crate::nameplate::Bound;
    let bounded = vec![(Bound::Import, p_ch.clone()), (Bound::Export, p_dis.clone()), (Bound::Capacity, cap.clone())];
    let theta = vec![p_ch.var, p_dis.var, s_0.var, cap.var, s_final.var];
    Ok(ModelVars { schedule, theta, bounded })
}
