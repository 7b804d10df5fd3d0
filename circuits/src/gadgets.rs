//! Integer arithmetic in R1CS: a linear combination that carries the integer it stands for,
//! and the range checks every inequality is built from.
//!
//! An [`IntVar`] pairs an `FpVar` with `Option<i128>`: the value is present while proving and
//! absent while generating keys. Model gadgets compute witness values (slacks, states) in
//! integers beside the constraints, so the constraint code reads like the native checker.
//!
//! A value that is out of range never panics: its low bits are allocated anyway, the
//! recomposition constraint is then unsatisfied, and the constraint system rejects it. That is
//! how the tests build witnesses that break exactly one constraint family.

use ark_bn254::Fr;
use ark_r1cs_std::alloc::AllocVar;
use ark_r1cs_std::boolean::Boolean;
use ark_r1cs_std::eq::EqGadget;
use ark_r1cs_std::fields::fp::FpVar;
use ark_relations::r1cs::{ConstraintSystemRef, SynthesisError};

use crate::field::fr_from_i128;

/// An integer-valued linear combination together with its integer value (when known).
#[derive(Clone, Debug)]
pub struct IntVar {
    /// The R1CS linear combination.
    pub var: FpVar<Fr>,
    /// The integer it equals, absent during key generation.
    pub val: Option<i128>,
}

/// Allocates `n` boolean witnesses holding the low `n` bits (two's complement) of `val`.
pub fn alloc_bits(cs: &ConstraintSystemRef<Fr>, val: Option<i128>, n: u32) -> Result<Vec<Boolean<Fr>>, SynthesisError> {
    debug_assert!(n <= 126, "range checks are for small integers");
    (0..n).map(|i| Boolean::new_witness(cs.clone(), || val.map(|v| (v >> i) & 1 == 1).ok_or(SynthesisError::AssignmentMissing))).collect()
}

impl IntVar {
    /// A constant.
    pub fn constant(v: i128) -> IntVar {
        IntVar { var: FpVar::Constant(fr_from_i128(v)), val: Some(v) }
    }

    /// A new unsigned integer in `[0, 2^n)`, defined as the sum of `n` boolean witnesses
    /// (`n` constraints, no recomposition constraint: the result *is* the linear combination).
    ///
    /// If `val` is outside the range, the low bits are used and the returned value is theirs.
    pub fn alloc_unsigned(cs: &ConstraintSystemRef<Fr>, val: Option<i128>, n: u32) -> Result<IntVar, SynthesisError> {
        let bits = alloc_bits(cs, val, n)?;
        let var = Boolean::le_bits_to_fp(&bits)?;
        Ok(IntVar { var, val: val.map(|v| v & ((1i128 << n) - 1)) })
    }

    /// A boolean witness as a 0/1 integer (one booleanity constraint).
    pub fn alloc_bit(cs: &ConstraintSystemRef<Fr>, val: Option<bool>) -> Result<IntVar, SynthesisError> {
        let b = Boolean::new_witness(cs.clone(), || val.ok_or(SynthesisError::AssignmentMissing))?;
        Ok(IntVar { var: b.into(), val: val.map(i128::from) })
    }

    /// Enforces `0 <= self < 2^n` by decomposing `self` into `n` bits (`n + 1` constraints).
    pub fn enforce_range(&self, cs: &ConstraintSystemRef<Fr>, n: u32) -> Result<(), SynthesisError> {
        let bits = alloc_bits(cs, self.val, n)?;
        Boolean::le_bits_to_fp(&bits)?.enforce_equal(&self.var)
    }

    /// Enforces `self <= other`, given that `other - self < 2^n` whenever it is non-negative.
    pub fn enforce_le(&self, cs: &ConstraintSystemRef<Fr>, other: &IntVar, n: u32) -> Result<(), SynthesisError> {
        other.sub(self).enforce_range(cs, n)
    }

    /// `self + other` (free: a linear combination).
    pub fn add(&self, other: &IntVar) -> IntVar {
        IntVar { var: &self.var + &other.var, val: zip(self.val, other.val, i128::checked_add) }
    }

    /// `self - other` (free).
    pub fn sub(&self, other: &IntVar) -> IntVar {
        IntVar { var: &self.var - &other.var, val: zip(self.val, other.val, i128::checked_sub) }
    }

    /// `self + c` (free).
    pub fn add_const(&self, c: i128) -> IntVar {
        IntVar { var: &self.var + fr_from_i128(c), val: self.val.and_then(|v| v.checked_add(c)) }
    }

    /// `self · c` (free).
    pub fn scale(&self, c: i128) -> IntVar {
        IntVar { var: &self.var * fr_from_i128(c), val: self.val.and_then(|v| v.checked_mul(c)) }
    }

    /// `-self` (free).
    pub fn neg(&self) -> IntVar {
        self.scale(-1)
    }

    /// `self · other` (one constraint and one new witness).
    pub fn mul(&self, other: &IntVar) -> IntVar {
        IntVar { var: &self.var * &other.var, val: zip(self.val, other.val, i128::checked_mul) }
    }

    /// Enforces `self == other` (one constraint).
    pub fn enforce_equal(&self, other: &IntVar) -> Result<(), SynthesisError> {
        self.var.enforce_equal(&other.var)
    }

    /// Σ of the given integers (free).
    pub fn sum<'a>(items: impl IntoIterator<Item = &'a IntVar>) -> IntVar {
        let mut acc = IntVar::constant(0);
        for it in items {
            acc = acc.add(it);
        }
        acc
    }
}

fn zip(a: Option<i128>, b: Option<i128>, f: fn(i128, i128) -> Option<i128>) -> Option<i128> {
    a.zip(b).and_then(|(a, b)| f(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_relations::r1cs::ConstraintSystem;

    #[test]
    fn range_check_accepts_bounds_and_rejects_outside() {
        for (v, ok) in [(0, true), (255, true), (256, false), (-1, false)] {
            let cs = ConstraintSystem::<Fr>::new_ref();
            let x = IntVar { var: FpVar::new_witness(cs.clone(), || Ok(fr_from_i128(v))).unwrap(), val: Some(v) };
            x.enforce_range(&cs, 8).unwrap();
            assert_eq!(cs.is_satisfied().unwrap(), ok, "v = {v}");
            assert_eq!(cs.num_constraints(), 9);
        }
    }

    #[test]
    fn unsigned_alloc_costs_one_constraint_per_bit() {
        let cs = ConstraintSystem::<Fr>::new_ref();
        let x = IntVar::alloc_unsigned(&cs, Some(77), 17).unwrap();
        assert_eq!(cs.num_constraints(), 17);
        assert_eq!(x.val, Some(77));
        let y = x.mul(&IntVar::constant(3)).add_const(1);
        assert_eq!(y.val, Some(232));
        assert!(cs.is_satisfied().unwrap());
    }
}
