//! The four device models of DESIGN §3: private parameters θ, the native checker and the
//! R1CS gadget for "x ∈ X(θ)", side by side in one file per model.
//!
//! Parameter structs have private fields and validating constructors, so a value of one of
//! these types always fits its circuit's ranges ([`crate::limits`]). `check` names the first
//! violated constraint and slot; `violations` lists them all. The gadget of each model mirrors
//! its `violations` function constraint family by constraint family.

use ark_bn254::Fr;
use ark_r1cs_std::fields::fp::FpVar;
use ark_relations::r1cs::{ConstraintSystemRef, SynthesisError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fixed::Watts;
use crate::gadgets::IntVar;
use crate::limits::{Slots, SlotsError};

pub mod battery;
pub mod deferrable;
pub mod producer;
pub mod thermal;

pub use battery::BatteryParams;
pub use deferrable::DeferrableParams;
pub use producer::ProducerParams;
pub use thermal::ThermalParams;

/// The public kind of a device model; its number is part of the commitment and the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// EV charger, water heater, appliance run.
    Deferrable = 1,
    /// Stationary battery.
    Battery = 2,
    /// PV or other curtailable production.
    Producer = 3,
    /// Heat pump with a comfort band.
    Thermal = 4,
}

impl ModelKind {
    /// All kinds, in number order.
    pub const ALL: [ModelKind; 4] = [ModelKind::Deferrable, ModelKind::Battery, ModelKind::Producer, ModelKind::Thermal];

    /// The kind's number in commitments and contexts.
    pub const fn id(self) -> u8 {
        self as u8
    }

    /// The kind with number `id`, if any.
    pub fn from_id(id: u8) -> Option<ModelKind> {
        ModelKind::ALL.into_iter().find(|k| k.id() == id)
    }

    /// Lower-case name, as in configuration files.
    pub const fn name(self) -> &'static str {
        match self {
            ModelKind::Deferrable => "deferrable",
            ModelKind::Battery => "battery",
            ModelKind::Producer => "producer",
            ModelKind::Thermal => "thermal",
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A family of constraints of a model: what a [`Violation`] broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// A lower power bound (x_t ≥ 0, x_t ≥ −p_dis, x_t ≥ −pv_t).
    PowerMin,
    /// An upper power bound (x_t ≤ a_t·p_max, x_t ≤ p_ch, x_t ≤ 0, x_t ≤ p_max).
    PowerMax,
    /// Σ x_t ≥ E_min.
    EnergyMin,
    /// Σ x_t ≤ E_max.
    EnergyMax,
    /// |x_t − x_{t−1}| ≤ r.
    Ramp,
    /// s_t ≥ 0.
    SocMin,
    /// s_t ≤ cap.
    SocMax,
    /// s_T ≥ s_final.
    SocFinal,
    /// τ_t ≥ τ_min.
    TempMin,
    /// τ_t ≤ τ_max.
    TempMax,
}

/// One violated constraint: which family, at which slot (if per slot), and the numbers.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{family:?} violated{}: {detail}", slot.map(|t| format!(" at slot {t}")).unwrap_or_default())]
pub struct Violation {
    /// The constraint family.
    pub family: Family,
    /// The slot, for per-slot constraints.
    pub slot: Option<usize>,
    /// The values involved, in words.
    pub detail: String,
}

impl Violation {
    pub(crate) fn at(family: Family, slot: usize, detail: String) -> Violation {
        Violation { family, slot: Some(slot), detail }
    }
    pub(crate) fn total(family: Family, detail: String) -> Violation {
        Violation { family, slot: None, detail }
    }
}

/// Why a schedule was rejected by [`ModelParams::check`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckError {
    /// The schedule does not have T entries.
    #[error("schedule has {got} slots, the model has T = {expected}")]
    Length {
        /// T of the model.
        expected: usize,
        /// Entries in the schedule.
        got: usize,
    },
    /// A constraint is violated (the first one, in slot order, then totals).
    #[error(transparent)]
    Violation(#[from] Violation),
}

/// An inconsistent or unrepresentable parameter.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ParamError {
    /// A parameter lies outside what the model (or its circuit) allows.
    #[error("{model} parameter `{field}` = {value} is out of range: {expected}")]
    OutOfRange {
        /// The model.
        model: ModelKind,
        /// The parameter's name.
        field: &'static str,
        /// The value given.
        value: String,
        /// What would be accepted.
        expected: String,
    },
    /// Two parameters contradict each other.
    #[error("{model} parameters are inconsistent: {reason}")]
    Inconsistent {
        /// The model.
        model: ModelKind,
        /// What contradicts what.
        reason: String,
    },
    /// A per-slot parameter vector does not have T entries.
    #[error("{model} parameter `{field}` has {got} entries, expected T = {expected}")]
    Length {
        /// The model.
        model: ModelKind,
        /// The parameter's name.
        field: &'static str,
        /// T.
        expected: usize,
        /// Entries given.
        got: usize,
    },
    /// The slot count is invalid.
    #[error(transparent)]
    Slots(#[from] SlotsError),
    /// A float (from a configuration file) could not be converted.
    #[error("{model}: {source}")]
    Codec {
        /// The model.
        model: ModelKind,
        /// The conversion failure, naming the field.
        #[source]
        source: crate::fixed::CodecError,
    },
}

/// `TryFrom<Raw>` (validating, for serde) and `From<Params>` (unwrapping) for a validated
/// parameter newtype `Params(Raw)` with a `Params::new(Raw) -> Result<Params, ParamError>`.
macro_rules! validated {
    ($params:ident, $raw:ident) => {
        impl TryFrom<$raw> for $params {
            type Error = ParamError;
            fn try_from(raw: $raw) -> Result<Self, ParamError> {
                $params::new(raw)
            }
        }

        impl From<$params> for $raw {
            fn from(p: $params) -> $raw {
                p.0
            }
        }
    };
}
pub(crate) use validated;

/// Checks `lo <= v <= hi` for a parameter, naming it on failure.
pub(crate) fn in_range<T: PartialOrd + std::fmt::Display>(model: ModelKind, field: &'static str, v: T, lo: T, hi: T) -> Result<(), ParamError> {
    if v < lo || v > hi {
        return Err(ParamError::OutOfRange { model, field, value: v.to_string(), expected: format!("{lo} ..= {hi}") });
    }
    Ok(())
}

/// The private parameters θ of one device, of any model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ModelParams {
    /// See [`DeferrableParams`].
    Deferrable(DeferrableParams),
    /// See [`BatteryParams`].
    Battery(BatteryParams),
    /// See [`ProducerParams`].
    Producer(ProducerParams),
    /// See [`ThermalParams`].
    Thermal(ThermalParams),
}

/// What a model gadget hands back to the statement: the schedule it constrained, the
/// parameter elements θ that the commitment hashes, and the parameters the nameplate bounds
/// (in the order of `nameplate::bounded`, each known to lie in `[0, 2^26)`).
pub(crate) struct ModelVars {
    pub schedule: Vec<IntVar>,
    pub theta: Vec<FpVar<Fr>>,
    pub bounded: Vec<(crate::nameplate::Bound, IntVar)>,
}

impl ModelParams {
    /// The model kind.
    pub fn kind(&self) -> ModelKind {
        match self {
            ModelParams::Deferrable(_) => ModelKind::Deferrable,
            ModelParams::Battery(_) => ModelKind::Battery,
            ModelParams::Producer(_) => ModelKind::Producer,
            ModelParams::Thermal(_) => ModelKind::Thermal,
        }
    }

    /// The slot count T the parameters were made for.
    pub fn slots(&self) -> Slots {
        match self {
            ModelParams::Deferrable(p) => p.slots(),
            ModelParams::Battery(p) => p.slots(),
            ModelParams::Producer(p) => p.slots(),
            ModelParams::Thermal(p) => p.slots(),
        }
    }

    /// Every violated constraint of `x`, per slot in slot order, then the totals.
    pub fn violations(&self, x: &[Watts]) -> Result<Vec<Violation>, CheckError> {
        let t = self.slots().get();
        if x.len() != t {
            return Err(CheckError::Length { expected: t, got: x.len() });
        }
        Ok(match self {
            ModelParams::Deferrable(p) => p.violations(x),
            ModelParams::Battery(p) => p.violations(x),
            ModelParams::Producer(p) => p.violations(x),
            ModelParams::Thermal(p) => p.violations(x),
        })
    }

    /// The native checker: `Ok` iff `x ∈ X(θ)`; otherwise the first violated constraint.
    pub fn check(&self, x: &[Watts]) -> Result<(), CheckError> {
        match self.violations(x)?.into_iter().next() {
            None => Ok(()),
            Some(v) => Err(v.into()),
        }
    }

    /// The field elements of θ that the commitment hashes, in circuit order.
    pub fn theta_elements(&self) -> Vec<Fr> {
        match self {
            ModelParams::Deferrable(p) => p.theta_elements(),
            ModelParams::Battery(p) => p.theta_elements(),
            ModelParams::Producer(p) => p.theta_elements(),
            ModelParams::Thermal(p) => p.theta_elements(),
        }
    }
}

/// Runs the gadget of `kind`: allocates θ and the schedule and enforces x ∈ X(θ). With
/// `witness = None` (key generation) only the shape is built.
pub(crate) fn enforce(
    cs: &ConstraintSystemRef<Fr>,
    kind: ModelKind,
    slots: Slots,
    witness: Option<(&ModelParams, &[Watts])>,
) -> Result<ModelVars, SynthesisError> {
    // A witness of another kind or T is a caller bug the statement rules out; treat it as absent
    // values rather than panic, so synthesis fails with AssignmentMissing.
    let x = |len: usize| -> Vec<Option<i128>> {
        match witness {
            Some((_, x)) if x.len() == len => x.iter().map(|&v| Some(v as i128)).collect(),
            _ => vec![None; len],
        }
    };
    let x = x(slots.get());
    let params = witness.map(|(p, _)| p);
    match kind {
        ModelKind::Deferrable => {
            let p = params.and_then(|p| if let ModelParams::Deferrable(p) = p { Some(p) } else { None });
            deferrable::enforce(cs, slots, p, &x)
        }
        ModelKind::Battery => {
            let p = params.and_then(|p| if let ModelParams::Battery(p) = p { Some(p) } else { None });
            battery::enforce(cs, slots, p, &x)
        }
        ModelKind::Producer => {
            let p = params.and_then(|p| if let ModelParams::Producer(p) = p { Some(p) } else { None });
            producer::enforce(cs, slots, p, &x)
        }
        ModelKind::Thermal => {
            let p = params.and_then(|p| if let ModelParams::Thermal(p) = p { Some(p) } else { None });
            thermal::enforce(cs, slots, p, &x)
        }
    }
}
