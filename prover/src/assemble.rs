//! Groth16 proof assembly from a full assignment (Groth 2016, §3.2), with multi-scalar
//! multiplications that know most of an update's witness is bits.
//!
//! An update circuit's witness is dominated by range-check bits: most scalars are 0 or 1.
//! arkworks' Pippenger MSM pays for every window of every scalar, and a fixed cost of
//! 2^c buckets per window, whatever the scalars are; here zero scalars are skipped, ones are
//! plain point additions, and only the remaining scalars go through Pippenger. The result is
//! the same group element, so the proof is exactly what `ark_groth16` would produce for the
//! same `r` and `s`.

use ark_bn254::{Bn254, Fr, G1Projective, G2Projective};
use ark_ec::{AffineRepr, CurveGroup, VariableBaseMSM};
use ark_ff::{BigInteger, PrimeField};
use ark_groth16::{Proof, ProvingKey};
use rayon::prelude::*;

type BigInt = <Fr as PrimeField>::BigInt;

/// Σ scalars[i]·bases[i]: zeros skipped, ones added, the rest by Pippenger.
pub(crate) fn msm<G>(bases: &[G::MulBase], scalars: &[BigInt]) -> G
where
    G: VariableBaseMSM<ScalarField = Fr> + CurveGroup,
    G::MulBase: AffineRepr<Group = G>,
{
    debug_assert_eq!(bases.len(), scalars.len(), "one base per scalar");
    let one = BigInt::from(1u64);
    let ones: G = bases.par_iter().zip(scalars.par_iter()).filter(|(_, s)| **s == one).map(|(b, _)| b.into_group()).sum();
    let (big_bases, big_scalars): (Vec<G::MulBase>, Vec<BigInt>) =
        bases.iter().zip(scalars).filter(|(_, s)| !s.is_zero() && **s != one).map(|(b, s)| (*b, *s)).unzip();
    ones + G::msm_bigint(&big_bases, &big_scalars)
}

/// `query[0] + Σ assignment[i]·query[i + 1] + initial + vk_param`.
fn coefficient<G>(initial: G, query: &[G::MulBase], vk_param: G::MulBase, assignment: &[BigInt]) -> G
where
    G: VariableBaseMSM<ScalarField = Fr> + CurveGroup,
    G::MulBase: AffineRepr<Group = G>,
{
    initial + query[0] + msm::<G>(&query[1..], assignment) + vk_param
}

/// The proof for blinding factors `r`, `s`, QAP quotient coefficients `h` and the assignment
/// (`inputs` without the leading one, then `aux`). Same formulas as `ark_groth16`'s prover:
/// A = α + Σ aᵢAᵢ + rδ, B = β + Σ aᵢBᵢ + sδ, C = Σ auxᵢLᵢ + Σ hᵢHᵢ + sA + rB₁ − rsδ.
pub(crate) fn create_proof(pk: &ProvingKey<Bn254>, r: Fr, s: Fr, h: &[Fr], inputs: &[Fr], aux: &[Fr]) -> Proof<Bn254> {
    let h: Vec<BigInt> = h.par_iter().map(|x| x.into_bigint()).collect();
    let h_acc: G1Projective = G1Projective::msm_bigint(&pk.h_query, &h);
    let aux: Vec<BigInt> = aux.par_iter().map(|x| x.into_bigint()).collect();
    let l_acc: G1Projective = msm(&pk.l_query, &aux);
    let assignment: Vec<BigInt> = inputs.iter().map(|x| x.into_bigint()).chain(aux).collect();

    let g_a = coefficient::<G1Projective>(pk.delta_g1 * r, &pk.a_query, pk.vk.alpha_g1, &assignment);
    let g1_b = coefficient::<G1Projective>(pk.delta_g1 * s, &pk.b_g1_query, pk.beta_g1, &assignment);
    let g2_b = coefficient::<G2Projective>(pk.vk.delta_g2 * s, &pk.b_g2_query, pk.vk.beta_g2, &assignment);
    let g_c = g_a * s + g1_b * r - pk.delta_g1 * (r * s) + l_acc + h_acc;
    Proof { a: g_a.into_affine(), b: g2_b.into_affine(), c: g_c.into_affine() }
}

#[cfg(test)]
mod tests {
    use ark_bn254::Fr;
    use ark_ff::UniformRand;
    use ark_groth16::Groth16;
    use circuits::{sample, ModelKind, Shape, Slots, UpdateCircuit};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// The fast path is the same function as arkworks' prover: for the same blinding factors
    /// both give the same proof, for every model.
    #[test]
    fn same_proof_as_ark_groth16_for_the_same_blinding() {
        let slots = Slots::new(4).expect("T");
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        for kind in ModelKind::ALL {
            let (pk, _) = crate::setup(Shape { kind, slots }, &mut rng).expect("setup");
            let witness = sample::witness(kind, slots, 1, 2, 3);
            let (r, s) = (Fr::rand(&mut rng), Fr::rand(&mut rng));
            let ours = crate::prove_with_blinding(&pk, witness.clone(), r, s).expect("prove");
            let m = pk.matrices().expect("matrices");
            let full = crate::assignment(m, UpdateCircuit::new(witness).expect("valid")).expect("assignment");
            let theirs =
                Groth16::<ark_bn254::Bn254>::create_proof_with_reduction_and_matrices(pk.inner(), r, s, m, m.num_instance_variables, m.num_constraints, &full)
                    .expect("ark prove");
            assert_eq!(ours.0, theirs, "{kind:?}");
        }
    }
}
