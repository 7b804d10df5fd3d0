//! The statement every device update proves (DESIGN §5.1), natively and as a circuit.
//!
//! Public inputs, in order:
//! 1. the device commitment `C = H*(tag, kind, T, θ…, cost_digest, salt)` ([`commitment`]);
//! 2. the context element packing (market id, iteration k, T, kind) ([`Context`]);
//! 3. the device's nameplate limits ([`crate::nameplate::Limits`]), which bound θ;
//! 4. the schedule as ⌈T/7⌉ elements of seven 32-bit limbs `x_t + 2^31` ([`crate::field`]).
//!
//! Witness: θ, the cost digest, the salt, the market id and iteration, the limits, and x. Every
//! public input is tied to the witness by a constraint: the commitment is recomputed with
//! Poseidon, the context is recomposed from range-checked parts and the circuit's constant
//! (T, kind), the limits are recomposed from three 32-bit parts each bounding its parameters,
//! and each limb element is recomposed from the very linear combinations the model constrains.
//! So changing any public input makes the instance unsatisfiable (tested per input).
//!
//! Verifiers never build the circuit: [`public_inputs`] computes the vector natively.

use ark_bn254::Fr;
use ark_r1cs_std::alloc::AllocVar;
use ark_r1cs_std::eq::EqGadget;
use ark_r1cs_std::fields::fp::FpVar;
use ark_relations::r1cs::{ConstraintSynthesizer, ConstraintSystemRef, SynthesisError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::field::{fr_from_i128, pack_limbs, LIMB_OFFSET};
use crate::fixed::Watts;
use crate::gadgets::IntVar;
use crate::limits::{Slots, ITERATION_BITS, LIMBS_PER_ELEMENT, LIMB_BITS, MARKET_ID_BITS};
use crate::model::{self, CheckError, ModelKind, ModelParams};
use crate::nameplate::{Bound, Limits, LIMIT_BITS};
use crate::poseidon::{hash_many, hash_many_var};

/// Domain tag: the first element of every device commitment, the ASCII bytes of
/// `"gridproof/device/v1"` read as a big-endian integer.
pub fn commitment_tag() -> Fr {
    let mut acc = Fr::from(0u64);
    for b in b"gridproof/device/v1" {
        acc = acc * Fr::from(256u64) + Fr::from(*b as u64);
    }
    acc
}

/// What a statement or witness got wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StatementError {
    /// The schedule has the wrong length or breaks a constraint of the model.
    #[error("schedule rejected: {0}")]
    Schedule(#[from] CheckError),
    /// A schedule value does not fit a 32-bit limb.
    #[error("schedule value {value} W at slot {slot} does not fit 32 bits")]
    Watts {
        /// The slot.
        slot: usize,
        /// The value.
        value: i64,
    },
    /// The witness is for another model or T than the circuit shape.
    #[error("witness is for {got_kind} with T = {got_slots}, the circuit is {kind} with T = {slots}")]
    Shape {
        /// Circuit kind.
        kind: ModelKind,
        /// Circuit T.
        slots: Slots,
        /// Witness kind.
        got_kind: ModelKind,
        /// Witness T.
        got_slots: Slots,
    },
    /// A parameter beyond the nameplate.
    #[error("parameters beyond the nameplate: {0}")]
    Nameplate(#[from] crate::nameplate::BeyondNameplate),
    /// The public-input vector has the wrong length for the shape.
    #[error("public inputs: expected {expected} elements, got {got}")]
    InstanceLength {
        /// Expected length.
        expected: usize,
        /// Given length.
        got: usize,
    },
}

/// Which circuit: a model kind and a slot count. One proving key exists per shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    /// The model kind.
    pub kind: ModelKind,
    /// T.
    pub slots: Slots,
}

impl Shape {
    /// Number of public inputs: commitment, context, nameplate limits, ⌈T/7⌉ limb elements.
    pub fn num_public_inputs(&self) -> usize {
        3 + self.slots.limb_elements()
    }
}

/// Where an update belongs: market, iteration, and the circuit shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context {
    /// The market id.
    pub market_id: u64,
    /// The ADMM iteration k.
    pub iteration: u32,
    /// The circuit shape (kind and T).
    pub shape: Shape,
}

impl Context {
    /// The context element: market_id + 2^64·k + 2^96·T + 2^112·kind (fits 120 bits).
    pub fn to_field(&self) -> Fr {
        let v: u128 = self.market_id as u128
            | (self.iteration as u128) << MARKET_ID_BITS
            | (self.shape.slots.get() as u128) << (MARKET_ID_BITS + ITERATION_BITS)
            | (self.shape.kind.id() as u128) << (MARKET_ID_BITS + ITERATION_BITS + 16);
        Fr::from(v)
    }
}

/// The commitment opening a device keeps private: θ, the digest of its private cost terms, and
/// a random salt that hides θ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening {
    /// θ.
    pub params: ModelParams,
    /// Poseidon digest of the private cost terms (defined by `protocol`); bound, not interpreted.
    pub cost_digest: Fr,
    /// Random blinding.
    pub salt: Fr,
}

/// `C = H*(tag, kind, T, θ…, cost_digest, salt)` (see [`crate::poseidon::hash_many`]).
pub fn commitment(opening: &Opening) -> Fr {
    let p = &opening.params;
    let mut m = vec![commitment_tag(), Fr::from(p.kind().id() as u64), Fr::from(p.slots().get() as u64)];
    m.extend(p.theta_elements());
    m.push(opening.cost_digest);
    m.push(opening.salt);
    hash_many(&m)
}

/// The public-input vector for (commitment, context, nameplate limits, schedule), as verifiers
/// compute it.
pub fn public_inputs(commitment: Fr, context: &Context, limits: &Limits, schedule: &[Watts]) -> Result<Vec<Fr>, StatementError> {
    let expected = context.shape.slots.get();
    if schedule.len() != expected {
        return Err(CheckError::Length { expected, got: schedule.len() }.into());
    }
    let wide: Vec<i64> = schedule.iter().map(|&v| v as i64).collect();
    let limbs = pack_limbs(&wide).map_err(|e| StatementError::Watts { slot: e.index, value: e.value })?;
    let mut out = Vec::with_capacity(context.shape.num_public_inputs());
    out.push(commitment);
    out.push(context.to_field());
    out.push(limits.to_field());
    out.extend(limbs);
    Ok(out)
}

/// Packs integers (each known to lie in `[−2^31, 2^31)`) as limb elements: the gadget of
/// [`crate::field::pack_limbs`]. Free: linear combinations only.
pub(crate) fn pack_limbs_var(values: &[IntVar]) -> Vec<FpVar<Fr>> {
    let two32 = Fr::from(1u64 << LIMB_BITS);
    values
        .chunks(LIMBS_PER_ELEMENT)
        .map(|chunk| {
            let mut acc = FpVar::Constant(Fr::from(0u64));
            let mut weight = Fr::from(1u64);
            for v in chunk {
                acc += (&v.var + Fr::from(LIMB_OFFSET as u64)) * weight;
                weight *= two32;
            }
            acc
        })
        .collect()
}

/// Everything a prover knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    /// The commitment opening.
    pub opening: Opening,
    /// Where the update belongs.
    pub context: Context,
    /// The device's attested nameplate, in circuit units.
    pub limits: Limits,
    /// The schedule x in W.
    pub schedule: Vec<Watts>,
}

impl Witness {
    /// Checks that the witness is a valid update (shape, the model's constraints) and returns
    /// the public inputs it proves. A device calls this before proving.
    pub fn validate(&self) -> Result<Vec<Fr>, StatementError> {
        let p = &self.opening.params;
        let shape = self.context.shape;
        if p.kind() != shape.kind || p.slots() != shape.slots {
            return Err(StatementError::Shape { kind: shape.kind, slots: shape.slots, got_kind: p.kind(), got_slots: p.slots() });
        }
        crate::nameplate::check(p, &self.limits)?;
        p.check(&self.schedule)?;
        public_inputs(commitment(&self.opening), &self.context, &self.limits, &self.schedule)
    }
}

/// The update circuit for one [`Shape`]; a `ConstraintSynthesizer` for Groth16.
#[derive(Debug, Clone)]
pub struct UpdateCircuit {
    shape: Shape,
    assignment: Option<(Vec<Fr>, Witness)>,
}

impl UpdateCircuit {
    /// The circuit without values, for key generation and constraint counting.
    pub fn blank(shape: Shape) -> UpdateCircuit {
        UpdateCircuit { shape, assignment: None }
    }

    /// The circuit for a valid witness; fails if the witness is not a valid update.
    pub fn new(witness: Witness) -> Result<UpdateCircuit, StatementError> {
        let instance = witness.validate()?;
        Ok(UpdateCircuit { shape: witness.context.shape, assignment: Some((instance, witness)) })
    }

    /// The circuit for any public inputs and witness, unchecked: the constraint system decides.
    /// For negative tests (tampered inputs, invalid schedules); the witness's shape and the
    /// instance length must still match, so synthesis is well defined.
    pub fn unchecked(instance: Vec<Fr>, witness: Witness) -> Result<UpdateCircuit, StatementError> {
        let shape = witness.context.shape;
        let p = &witness.opening.params;
        if p.kind() != shape.kind || p.slots() != shape.slots || witness.schedule.len() != shape.slots.get() {
            return Err(StatementError::Shape { kind: shape.kind, slots: shape.slots, got_kind: p.kind(), got_slots: p.slots() });
        }
        if instance.len() != shape.num_public_inputs() {
            return Err(StatementError::InstanceLength { expected: shape.num_public_inputs(), got: instance.len() });
        }
        Ok(UpdateCircuit { shape, assignment: Some((instance, witness)) })
    }

    /// The circuit's shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The public inputs, when the circuit has values.
    pub fn public_inputs(&self) -> Option<&[Fr]> {
        self.assignment.as_ref().map(|(i, _)| i.as_slice())
    }
}

impl ConstraintSynthesizer<Fr> for UpdateCircuit {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
        let shape = self.shape;
        let (instance, witness) = match &self.assignment {
            Some((i, w)) => (Some(i.as_slice()), Some(w)),
            None => (None, None),
        };
        let input = |i: usize| FpVar::new_input(cs.clone(), || instance.map(|v| v[i]).ok_or(SynthesisError::AssignmentMissing));
        let commitment_in = input(0)?;
        let context_in = input(1)?;
        let limits_in = input(2)?;
        let limbs_in = (0..shape.slots.limb_elements()).map(|j| input(3 + j)).collect::<Result<Vec<_>, _>>()?;

        // x ∈ X(θ).
        let model_witness = witness.map(|w| (&w.opening.params, w.schedule.as_slice()));
        let vars = model::enforce(&cs, shape.kind, shape.slots, model_witness)?;

        // Nameplate: three 32-bit limits recompose the public element; each bounded parameter
        // (< 2^26: powers < 2^18, a battery capacity < 2^26) is ≤ its limit (the difference, when non-negative, is < 2^32).
        let limit = |f: fn(&Limits) -> u32| IntVar::alloc_unsigned(&cs, witness.map(|w| f(&w.limits) as i128), LIMIT_BITS);
        let (import, export, capacity) = (limit(|l| l.import_w)?, limit(|l| l.export_w)?, limit(|l| l.capacity)?);
        let packed = &import.var + &export.var * fr_from_i128(1i128 << LIMIT_BITS) + &capacity.var * fr_from_i128(1i128 << (2 * LIMIT_BITS));
        packed.enforce_equal(&limits_in)?;
        for (bound, v) in &vars.bounded {
            let l = match bound {
                Bound::Import => &import,
                Bound::Export => &export,
                Bound::Capacity => &capacity,
            };
            v.enforce_le(&cs, l, LIMIT_BITS)?;
        }

        // Schedule limbs.
        for (packed, public) in pack_limbs_var(&vars.schedule).iter().zip(&limbs_in) {
            packed.enforce_equal(public)?;
        }

        // Context: market id and iteration range-checked, T and kind fixed by the circuit.
        let market = IntVar::alloc_unsigned(&cs, witness.map(|w| w.context.market_id as i128), MARKET_ID_BITS)?;
        let iteration = IntVar::alloc_unsigned(&cs, witness.map(|w| w.context.iteration as i128), ITERATION_BITS)?;
        let fixed = Context { market_id: 0, iteration: 0, shape }.to_field();
        let context = &market.var + &iteration.var * fr_from_i128(1i128 << MARKET_ID_BITS) + fixed;
        context.enforce_equal(&context_in)?;

        // Commitment.
        let cost_digest = FpVar::new_witness(cs.clone(), || witness.map(|w| w.opening.cost_digest).ok_or(SynthesisError::AssignmentMissing))?;
        let salt = FpVar::new_witness(cs.clone(), || witness.map(|w| w.opening.salt).ok_or(SynthesisError::AssignmentMissing))?;
        let mut m =
            vec![FpVar::Constant(commitment_tag()), FpVar::Constant(Fr::from(shape.kind.id() as u64)), FpVar::Constant(Fr::from(shape.slots.get() as u64))];
        m.extend(vars.theta);
        m.push(cost_digest);
        m.push(salt);
        hash_many_var(cs.clone(), &m)?.enforce_equal(&commitment_in)?;
        Ok(())
    }
}

/// Builds the constraint system of `circuit` and reports whether it is satisfied, naming the
/// first unsatisfied constraint otherwise. Used by tests and by provers as a pre-flight check.
pub fn is_satisfied(circuit: UpdateCircuit) -> Result<bool, SynthesisError> {
    let cs = ark_relations::r1cs::ConstraintSystem::<Fr>::new_ref();
    circuit.generate_constraints(cs.clone())?;
    cs.is_satisfied()
}

/// Constraint count of the circuit for `shape` (after inlining linear combinations, as Groth16
/// sees it).
pub fn constraint_count(shape: Shape) -> Result<usize, SynthesisError> {
    let cs = ark_relations::r1cs::ConstraintSystem::<Fr>::new_ref();
    cs.set_mode(ark_relations::r1cs::SynthesisMode::Setup);
    UpdateCircuit::blank(shape).generate_constraints(cs.clone())?;
    cs.finalize();
    Ok(cs.num_constraints())
}
