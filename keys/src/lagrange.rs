//! Lagrange bases of a phase-1 accumulator, prepared once for phase 2 (as snarkjs's
//! `powersoftau prepare phase2`).
//!
//! A circuit's initial key needs the accumulator's powers on the circuit's evaluation domain
//! of size m in the Lagrange basis: `[L_j(τ)]₁`, `[αL_j(τ)]₁`, `[βL_j(τ)]₁`, `[L_j(τ)]₂` for
//! j < m. Computing them is an inverse FFT in the exponent (m·log m scalar multiplications,
//! most of the time of `phase2 new` and `phase2 verify`). [`Prepared`] holds them for chosen
//! domain sizes next to the transcript, so phase 2 reads them instead.
//!
//! A prepared set is never trusted: [`Prepared::from_parts`] checks each set against the
//! accumulator's powers with one random linear combination per vector. For random r ∈ F^m,
//! Σ_j r_j·L_j(τ) = P(τ) where P is the polynomial of degree < m with P(ω^j) = r_j, whose
//! coefficients are the field inverse FFT c = IFFT(r); so `MSM(L, r) = MSM(powers[..m], c)`
//! holds for every r exactly when the set is right, and a wrong set passes for a random r with
//! probability at most 2⁻¹²⁸.

use std::sync::Arc;

use ark_bn254::{Fr, G1Affine, G1Projective, G2Affine, G2Projective};
use ark_ec::{AffineRepr, CurveGroup, VariableBaseMSM};
use ark_poly::{EvaluationDomain, Radix2EvaluationDomain};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use rand::Rng;
use thiserror::Error;

use crate::phase1::{Accumulator, Phase1};

/// An accumulator's Lagrange bases on the domain of size 2^`power`: [L_j(τ)]₁, [αL_j(τ)]₁,
/// [βL_j(τ)]₁ and [L_j(τ)]₂ for j < 2^`power`, with L_j the Lagrange polynomial of the j-th
/// element of arkworks' radix-2 domain of that size.
#[derive(Debug, Clone, PartialEq, Eq, CanonicalSerialize, CanonicalDeserialize)]
pub struct LagrangeBases {
    /// log2 of the domain size.
    pub power: u32,
    /// [L_j(τ)]₁.
    pub tau_g1: Vec<G1Affine>,
    /// [αL_j(τ)]₁.
    pub alpha_tau_g1: Vec<G1Affine>,
    /// [βL_j(τ)]₁.
    pub beta_tau_g1: Vec<G1Affine>,
    /// [L_j(τ)]₂.
    pub tau_g2: Vec<G2Affine>,
}

/// Why a set of Lagrange bases was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LagrangeError {
    /// A domain larger than the accumulator's powers, or of size 1.
    #[error("Lagrange bases for a domain of 2^{power} do not fit an accumulator of 2^{have} powers (domains 2^1 to 2^{have})")]
    Power {
        /// The set's power.
        power: u32,
        /// The accumulator's.
        have: u32,
    },
    /// Two sets for one domain.
    #[error("two sets of Lagrange bases for the domain of 2^{0}")]
    Duplicate(u32),
    /// A vector of the wrong length.
    #[error("Lagrange bases for the domain of 2^{power}: {what} has {len} points, expected {expected}")]
    Length {
        /// The set's power.
        power: u32,
        /// Which vector.
        what: &'static str,
        /// Its length.
        len: usize,
        /// 2^power.
        expected: usize,
    },
    /// The random linear combination does not match the powers.
    #[error("Lagrange bases for the domain of 2^{power}: {what} are not the accumulator's powers in the Lagrange basis")]
    Mismatch {
        /// The set's power.
        power: u32,
        /// Which vector.
        what: &'static str,
    },
}

fn domain(power: u32) -> Radix2EvaluationDomain<Fr> {
    Radix2EvaluationDomain::<Fr>::new(1usize << power).expect("BN254's Fr has 2^28 roots of unity and powers stop at 2^24")
}

impl LagrangeBases {
    /// The bases of `acc` on the domain of 2^`power`, by inverse FFT in the exponent.
    pub fn compute(acc: &Accumulator, power: u32) -> Result<LagrangeBases, LagrangeError> {
        if !(1..=acc.power).contains(&power) {
            return Err(LagrangeError::Power { power, have: acc.power });
        }
        let d = domain(power);
        let m = d.size();
        let ifft1 = |v: &[G1Affine]| {
            let p: Vec<G1Projective> = v[..m].iter().map(|a| a.into_group()).collect();
            G1Projective::normalize_batch(&d.ifft(&p))
        };
        let p2: Vec<G2Projective> = acc.tau_g2[..m].iter().map(|a| a.into_group()).collect();
        Ok(LagrangeBases {
            power,
            tau_g1: ifft1(&acc.tau_g1),
            alpha_tau_g1: ifft1(&acc.alpha_tau_g1),
            beta_tau_g1: ifft1(&acc.beta_tau_g1),
            tau_g2: G2Projective::normalize_batch(&d.ifft(&p2)),
        })
    }

    /// Domain size.
    pub fn size(&self) -> usize {
        1usize << self.power
    }

    /// Checks the set against `acc` (see the module doc): lengths, then one random linear
    /// combination per vector.
    pub fn check(&self, acc: &Accumulator) -> Result<(), LagrangeError> {
        let power = self.power;
        if !(1..=acc.power).contains(&power) {
            return Err(LagrangeError::Power { power, have: acc.power });
        }
        let m = self.size();
        for (what, len) in [
            ("[L_j(tau)]1", self.tau_g1.len()),
            ("[alpha L_j(tau)]1", self.alpha_tau_g1.len()),
            ("[beta L_j(tau)]1", self.beta_tau_g1.len()),
            ("[L_j(tau)]2", self.tau_g2.len()),
        ] {
            if len != m {
                return Err(LagrangeError::Length { power, what, len, expected: m });
            }
        }
        let d = domain(power);
        let mut rng = rand::rngs::OsRng;
        let mut challenge = || {
            let r: Vec<Fr> = (0..m).map(|_| Fr::from(rng.gen::<u128>())).collect();
            let c = d.ifft(&r);
            (r, c)
        };
        let g1 = |bases: &[G1Affine], powers: &[G1Affine], (r, c): (Vec<Fr>, Vec<Fr>)| {
            G1Projective::msm(bases, &r).expect("m scalars") == G1Projective::msm(&powers[..m], &c).expect("m scalars")
        };
        for (bases, powers, what) in [
            (&self.tau_g1, &acc.tau_g1, "[L_j(tau)]1"),
            (&self.alpha_tau_g1, &acc.alpha_tau_g1, "[alpha L_j(tau)]1"),
            (&self.beta_tau_g1, &acc.beta_tau_g1, "[beta L_j(tau)]1"),
        ] {
            if !g1(bases, powers, challenge()) {
                return Err(LagrangeError::Mismatch { power, what });
            }
        }
        let (r, c) = challenge();
        if G2Projective::msm(&self.tau_g2, &r).expect("m scalars") != G2Projective::msm(&acc.tau_g2[..m], &c).expect("m scalars") {
            return Err(LagrangeError::Mismatch { power, what: "[L_j(tau)]2" });
        }
        Ok(())
    }
}

/// A phase-1 transcript with the Lagrange bases of some domains, each checked against its
/// accumulator ([`LagrangeBases::check`]): what phase 2 starts from. A transcript without
/// prepared bases is [`Prepared::unprepared`]; phase 2 then computes the bases it needs.
#[derive(Debug, Clone)]
pub struct Prepared {
    phase1: Phase1,
    /// Ascending by power, at most one per power.
    lagrange: Vec<Arc<LagrangeBases>>,
}

impl Prepared {
    /// A transcript without prepared bases.
    pub fn unprepared(phase1: Phase1) -> Prepared {
        Prepared { phase1, lagrange: Vec::new() }
    }

    /// Computes the bases for each of `powers` (log2 domain sizes; all of 1..=the
    /// accumulator's power when empty).
    pub fn prepare(phase1: Phase1, powers: &[u32]) -> Result<Prepared, LagrangeError> {
        let all: Vec<u32> = (1..=phase1.accumulator.power).collect();
        let mut powers = if powers.is_empty() { all } else { powers.to_vec() };
        powers.sort_unstable();
        if let Some(w) = powers.windows(2).find(|w| w[0] == w[1]) {
            return Err(LagrangeError::Duplicate(w[0]));
        }
        let lagrange = powers.iter().map(|&p| LagrangeBases::compute(&phase1.accumulator, p).map(Arc::new)).collect::<Result<_, _>>()?;
        Ok(Prepared { phase1, lagrange })
    }

    /// A transcript with bases read from a file: each set is checked against the accumulator.
    pub fn from_parts(phase1: Phase1, mut lagrange: Vec<LagrangeBases>) -> Result<Prepared, LagrangeError> {
        lagrange.sort_by_key(|l| l.power);
        if let Some(w) = lagrange.windows(2).find(|w| w[0].power == w[1].power) {
            return Err(LagrangeError::Duplicate(w[0].power));
        }
        for l in &lagrange {
            l.check(&phase1.accumulator)?;
        }
        Ok(Prepared { phase1, lagrange: lagrange.into_iter().map(Arc::new).collect() })
    }

    /// The transcript.
    pub fn phase1(&self) -> &Phase1 {
        &self.phase1
    }

    /// Its accumulator.
    pub fn accumulator(&self) -> &Accumulator {
        &self.phase1.accumulator
    }

    /// The prepared bases of the domain of size `m`, if any.
    pub fn lagrange(&self, m: usize) -> Option<Arc<LagrangeBases>> {
        self.lagrange.iter().find(|l| l.size() == m).cloned()
    }

    /// The log2 sizes of the prepared domains, ascending.
    pub fn powers(&self) -> Vec<u32> {
        self.lagrange.iter().map(|l| l.power).collect()
    }

    /// The prepared sets, ascending by power.
    pub fn sets(&self) -> impl Iterator<Item = &LagrangeBases> {
        self.lagrange.iter().map(|l| &**l)
    }
}
