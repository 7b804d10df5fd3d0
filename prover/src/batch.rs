//! Random-linear-combination batch verification of Groth16 proofs under one verifying key.
//!
//! Each valid proof satisfies `e(A_i, B_i) = e(α, β) · e(L_i, γ) · e(C_i, δ)` with
//! `L_i = IC_0 + Σ_j x_ij IC_j`. With independent random 128-bit scalars r_i, the batch check is
//!
//! `Π_i e(r_i A_i, B_i) · e(Σ r_i L_i, −γ) · e(Σ r_i C_i, −δ) = e(α, β)^(Σ r_i)`
//!
//! — one multi-Miller loop over N + 2 pairs and one final exponentiation. `Σ r_i L_i` folds
//! all public inputs into a single MSM over the key's IC points (scalars `Σ r_i`,
//! `Σ_i r_i x_ij`), and `Σ r_i C_i` is one more MSM. A batch containing an invalid proof
//! passes with probability at most about 2^-128 over the choice of r.
//!
//! When the batch fails, it is split in halves and each half is checked again with fresh
//! scalars, down to single proofs; so one bad proof costs O(log N) extra batch checks, and the
//! report names exactly the invalid indices.

use ark_bn254::{Bn254, Fr, G1Affine, G1Projective};
use ark_ec::bn::G2Prepared;
use ark_ec::pairing::Pairing;
use ark_ec::{AffineRepr, CurveGroup, VariableBaseMSM};
use ark_ff::{BigInt, Field, PrimeField};
use rand::{CryptoRng, Rng, RngCore};
use rayon::prelude::*;

use crate::{UpdateProof, UpdateVerifyingKey};

/// Below this many proofs a failed batch is settled by single verifications.
const SINGLE_BELOW: usize = 2;

/// One proof and its public inputs.
#[derive(Clone, Copy, Debug)]
pub struct BatchItem<'a> {
    /// The public inputs.
    pub public_inputs: &'a [Fr],
    /// The proof.
    pub proof: &'a UpdateProof,
}

/// The outcome of a batch: which items are invalid (ascending indices).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Indices of items that do not verify (wrong input count included).
    pub invalid: Vec<usize>,
    /// How many batch checks (multi-pairings) were run, bisection included.
    pub checks: usize,
}

impl BatchReport {
    /// Whether every item verified.
    pub fn all_valid(&self) -> bool {
        self.invalid.is_empty()
    }
}

/// Verifies `items` under `vk` as a batch and reports the invalid ones.
pub fn batch_verify<R: RngCore + CryptoRng>(vk: &UpdateVerifyingKey, items: &[BatchItem<'_>], rng: &mut R) -> BatchReport {
    let inputs = vk.shape().num_public_inputs();
    let mut report = BatchReport::default();
    let (well_formed, malformed): (Vec<usize>, Vec<usize>) = (0..items.len()).partition(|&i| items[i].public_inputs.len() == inputs);
    report.invalid.extend(malformed);
    bisect(vk, items, well_formed, rng, &mut report);
    report.invalid.sort_unstable();
    report
}

fn bisect<R: RngCore + CryptoRng>(vk: &UpdateVerifyingKey, items: &[BatchItem<'_>], indices: Vec<usize>, rng: &mut R, report: &mut BatchReport) {
    if indices.is_empty() {
        return;
    }
    if indices.len() < SINGLE_BELOW {
        for i in indices {
            report.checks += 1;
            if crate::verify(vk, items[i].public_inputs, items[i].proof).is_err() {
                report.invalid.push(i);
            }
        }
        return;
    }
    report.checks += 1;
    if check(vk, items, &indices, rng) {
        return;
    }
    let right = indices[indices.len() / 2..].to_vec();
    let mut left = indices;
    left.truncate(left.len() / 2);
    bisect(vk, items, left, rng, report);
    bisect(vk, items, right, rng, report);
}

/// One random-linear-combination check over `items[indices]` (all with the right input count).
fn check<R: RngCore + CryptoRng>(vk: &UpdateVerifyingKey, items: &[BatchItem<'_>], indices: &[usize], rng: &mut R) -> bool {
    let pvk = vk.prepared();
    let r: Vec<u128> = indices.iter().map(|_| rng.gen::<u128>()).collect();
    let r_fr: Vec<Fr> = r.iter().map(|&v| Fr::from(v)).collect();

    // Σ r_i L_i = (Σ r_i)·IC_0 + Σ_j (Σ_i r_i x_ij)·IC_j: one MSM over the key's IC points.
    let m = vk.shape().num_public_inputs();
    let mut scalars = vec![Fr::from(0u64); m + 1];
    for (&i, ri) in indices.iter().zip(&r_fr) {
        scalars[0] += ri;
        for (s, x) in scalars[1..].iter_mut().zip(items[i].public_inputs) {
            *s += *ri * x;
        }
    }
    let l = G1Projective::msm(&pvk.vk.gamma_abc_g1, &scalars).expect("lengths match");
    let cs: Vec<G1Affine> = indices.iter().map(|&i| items[i].proof.c).collect();
    let c = G1Projective::msm(&cs, &r_fr).expect("lengths match");

    // r_i A_i with 128-bit scalars, and B_i prepared, in parallel.
    let ra: Vec<G1Projective> =
        indices.par_iter().zip(&r).map(|(&i, &ri)| items[i].proof.a.mul_bigint(BigInt::<2>::new([ri as u64, (ri >> 64) as u64]))).collect();
    let mut g1 = G1Projective::normalize_batch(&ra);
    let mut g2: Vec<G2Prepared<ark_bn254::Config>> = indices.par_iter().map(|&i| G2Prepared::from(items[i].proof.b)).collect();
    let [l, c] = [l, c].map(|p| p.into_affine());
    g1.extend([l, c]);
    g2.extend([pvk.gamma_g2_neg_pc.clone(), pvk.delta_g2_neg_pc.clone()]);

    let ml = Bn254::multi_miller_loop(g1, g2);
    let Some(lhs) = Bn254::final_exponentiation(ml) else { return false };
    let r_sum = scalars[0];
    lhs.0 == pvk.alpha_g1_beta_g2.pow(r_sum.into_bigint())
}
