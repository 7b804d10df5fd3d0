//! Producer (PV, curtailable generation), DESIGN §3: −pv_t ≤ x_t ≤ 0 with the private
//! forecast pv_t.

use ark_bn254::Fr;
use ark_relations::r1cs::{ConstraintSystemRef, SynthesisError};
use serde::{Deserialize, Serialize};

use super::{in_range, Family, ModelKind, ModelVars, ParamError, Violation};
use crate::field::pack_limbs;
use crate::fixed::Watts;
use crate::gadgets::IntVar;
use crate::limits::{Slots, MAX_POWER_W, POWER_BITS};
use crate::statement::pack_limbs_var;

const KIND: ModelKind = ModelKind::Producer;

/// Plain producer parameters, unchecked (see [`ProducerParams`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Producer {
    /// pv_t: the most the producer can deliver in slot t, in W (T entries, each ≥ 0).
    pub forecast: Vec<Watts>,
}

/// Validated producer parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Producer", into = "Producer")]
pub struct ProducerParams(Producer);

super::validated!(ProducerParams, Producer);

impl ProducerParams {
    /// Validates: T in range and every 0 ≤ pv_t < 2^17.
    pub fn new(p: Producer) -> Result<ProducerParams, ParamError> {
        Slots::new(p.forecast.len())?;
        for &pv in &p.forecast {
            in_range(KIND, "forecast", pv, 0, MAX_POWER_W)?;
        }
        Ok(ProducerParams(p))
    }

    /// The parameters.
    pub fn get(&self) -> &Producer {
        &self.0
    }

    /// T.
    pub fn slots(&self) -> Slots {
        Slots::new(self.0.forecast.len()).expect("validated in new")
    }

    /// θ as committed: the forecast packed as 32-bit limbs, seven per element.
    pub fn theta_elements(&self) -> Vec<Fr> {
        let pv: Vec<i64> = self.0.forecast.iter().map(|&v| v as i64).collect();
        pack_limbs(&pv).expect("forecasts are validated to 17 bits")
    }

    /// Every violated constraint of `x` (T entries, checked by the caller).
    pub fn violations(&self, x: &[Watts]) -> Vec<Violation> {
        let mut out = Vec::new();
        for (t, (&xt, &pv)) in x.iter().zip(&self.0.forecast).enumerate() {
            if xt < -pv {
                out.push(Violation::at(Family::PowerMin, t, format!("x = {xt} W < −pv = −{pv} W")));
            }
            if xt > 0 {
                out.push(Violation::at(Family::PowerMax, t, format!("x = {xt} W > 0")));
            }
        }
        out
    }
}

/// The gadget: mirrors [`ProducerParams::violations`].
///
/// pv_t is never allocated on its own: it is `headroom_t + output_t`, two sums of 17 bits, so
/// it lies in `[0, 2^18)`, which makes its limb packing (and so the commitment) injective.
pub(crate) fn enforce(cs: &ConstraintSystemRef<Fr>, slots: Slots, p: Option<&ProducerParams>, x: &[Option<i128>]) -> Result<ModelVars, SynthesisError> {
    let mut schedule = Vec::with_capacity(slots.get());
    let mut forecast = Vec::with_capacity(slots.get());
    for (t, &xt) in x.iter().enumerate() {
        let pv = p.map(|p| p.0.forecast[t] as i128);
        // PowerMax: output_t = −x_t is a sum of 17 bits, so x_t ≤ 0.
        let output = IntVar::alloc_unsigned(cs, xt.map(|x| -x), POWER_BITS)?;
        // PowerMin: headroom_t = pv_t − output_t is a sum of 17 bits, so x_t ≥ −pv_t.
        let headroom = IntVar::alloc_unsigned(cs, pv.zip(output.val).map(|(pv, o)| pv - o), POWER_BITS)?;
        forecast.push(headroom.add(&output));
        schedule.push(output.neg());
    }
    let theta = pack_limbs_var(&forecast);
    let bounded = forecast.into_iter().map(|f| (crate::nameplate::Bound::Export, f)).collect();
    Ok(ModelVars { schedule, theta, bounded })
}
