//! snarkjs's QAP witness map (as ark-circom's `CircomReduction`), for proving keys made by
//! `snarkjs zkey new` and imported with `keys phase2 import-zkey`.
//!
//! With the circuit's rows evaluated on the domain H of size m (constraint rows, then one row
//! per instance variable in A, as in arkworks), snarkjs's H query holds the Lagrange bases
//! of the 2m-domain at its odd points, so the prover supplies (A·B − C) evaluated on the coset
//! ω_2m·H: each of A, B, C is interpolated on H, shifted by ω_2m^i per coefficient and
//! evaluated on H again. The division by Z (constant −2 on that coset) is folded into the
//! key.

use ark_bn254::Fr;
use ark_ff::Zero;
use ark_poly::{EvaluationDomain, Radix2EvaluationDomain};
use ark_relations::r1cs::{ConstraintMatrices, SynthesisError};
use rayon::prelude::*;

fn row(terms: &[(Fr, usize)], assignment: &[Fr]) -> Fr {
    terms.iter().map(|(c, i)| *c * assignment[*i]).sum()
}

/// h for a snarkjs key: m evaluations of A·B − C on the coset ω_2m·H.
pub(crate) fn snarkjs_witness_map(m: &ConstraintMatrices<Fr>, assignment: &[Fr]) -> Result<Vec<Fr>, SynthesisError> {
    let (n, inputs) = (m.num_constraints, m.num_instance_variables);
    let domain = Radix2EvaluationDomain::<Fr>::new(n + inputs).ok_or(SynthesisError::PolynomialDegreeTooLarge)?;
    let size = domain.size();
    let shift = Radix2EvaluationDomain::<Fr>::new(2 * size).ok_or(SynthesisError::PolynomialDegreeTooLarge)?.element(1);
    let mut a = vec![Fr::zero(); size];
    let mut b = vec![Fr::zero(); size];
    a[..n].par_iter_mut().zip(&m.a).for_each(|(v, t)| *v = row(t, assignment));
    b[..n].par_iter_mut().zip(&m.b).for_each(|(v, t)| *v = row(t, assignment));
    let mut c: Vec<Fr> = vec![Fr::zero(); size];
    c[..n].par_iter_mut().zip(&a[..n]).zip(&b[..n]).for_each(|((c, a), b)| *c = *a * b);
    a[n..n + inputs].copy_from_slice(&assignment[..inputs]);
    let on_coset = |v: &mut Vec<Fr>| {
        domain.ifft_in_place(v);
        Radix2EvaluationDomain::<Fr>::distribute_powers_and_mul_by_const(v, shift, Fr::from(1u64));
        domain.fft_in_place(v);
    };
    on_coset(&mut a);
    on_coset(&mut b);
    on_coset(&mut c);
    Ok(a.par_iter().zip(&b).zip(&c).map(|((a, b), c)| *a * b - c).collect())
}
