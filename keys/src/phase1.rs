//! Phase 1: powers of tau over BN254 (the universal part of a Groth16 setup).
//!
//! The accumulator holds, for secrets τ, α, β multiplied together over all contributions,
//! `[τ^i]₁` (i < 2n−1), `[τ^i]₂`, `[ατ^i]₁`, `[βτ^i]₁` (i < n) and `[β]₂`, with n = 2^power.
//! Each contribution records the new `[τ]₁, [α]₁, [β]₁` and a proof of knowledge of each of its
//! three secrets, chained by contribution hashes. [`Phase1::verify`] checks the chain from the
//! generators to the final accumulator and that the accumulator is well formed (random linear
//! combinations of consecutive powers have the right ratios).

use ark_bn254::{Fr, G1Affine, G1Projective, G2Affine, G2Projective};
use ark_ec::{AffineRepr, CurveGroup, VariableBaseMSM};
use ark_ff::{Field, One};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use rand::{CryptoRng, Rng, RngCore};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::pok::{beacon_secret, hex, same_ratio, secret, Hash, Pok};

/// Largest supported power (2^24 points, as the largest public ceremonies).
pub const MAX_POWER: u32 = 24;

/// The powers.
#[derive(Debug, Clone, PartialEq, Eq, CanonicalSerialize, CanonicalDeserialize)]
pub struct Accumulator {
    /// log2 n.
    pub power: u32,
    /// [τ^i]₁ for i < 2n − 1.
    pub tau_g1: Vec<G1Affine>,
    /// [τ^i]₂ for i < n.
    pub tau_g2: Vec<G2Affine>,
    /// [ατ^i]₁ for i < n.
    pub alpha_tau_g1: Vec<G1Affine>,
    /// [βτ^i]₁ for i < n.
    pub beta_tau_g1: Vec<G1Affine>,
    /// [β]₂.
    pub beta_g2: G2Affine,
}

/// A beacon: public randomness (e.g. a future block hash) that nobody controls.
#[derive(Debug, Clone, PartialEq, Eq, CanonicalSerialize, CanonicalDeserialize)]
pub struct Beacon {
    /// The beacon value.
    pub value: Hash,
    /// SHA-256 is iterated 2^this times.
    pub iterations_exp: u8,
}

/// One contribution's public record.
#[derive(Debug, Clone, PartialEq, Eq, CanonicalSerialize, CanonicalDeserialize)]
pub struct Contribution {
    /// Free text the contributor chose (a name), not trusted.
    pub name: String,
    /// [τ]₁ after this contribution.
    pub tau_g1: G1Affine,
    /// [α]₁ after.
    pub alpha_g1: G1Affine,
    /// [β]₁ after.
    pub beta_g1: G1Affine,
    /// Knowledge of τ'.
    pub pok_tau: Pok,
    /// Knowledge of α'.
    pub pok_alpha: Pok,
    /// Knowledge of β'.
    pub pok_beta: Pok,
    /// Set for a beacon contribution, whose secrets anyone can recompute.
    pub beacon: Option<Beacon>,
    /// SHA-256(previous hash ‖ this record without the hash).
    pub hash: Hash,
}

/// Where an imported transcript started: a snarkjs `.ptau` file, verified by its own tools.
#[derive(Debug, Clone, PartialEq, Eq, CanonicalSerialize, CanonicalDeserialize)]
pub struct Imported {
    /// SHA-256 of the imported file.
    pub source_sha256: Hash,
    /// [τ]₁, [α]₁, [β]₁ of the imported accumulator: where our chain starts.
    pub start: [G1Affine; 3],
}

/// A phase-1 transcript: the current accumulator and every contribution.
#[derive(Debug, Clone, PartialEq, Eq, CanonicalSerialize, CanonicalDeserialize)]
pub struct Phase1 {
    /// The current powers.
    pub accumulator: Accumulator,
    /// Set when the chain starts from an imported accumulator instead of the generators.
    pub imported: Option<Imported>,
    /// The contributions, oldest first.
    pub contributions: Vec<Contribution>,
}

/// What failed in a phase-1 verification.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Phase1Error {
    /// A power out of range.
    #[error("power {0} is out of range 1..={MAX_POWER}")]
    Power(u32),
    /// Vector lengths do not match the power.
    #[error("accumulator vectors have the wrong lengths for power {0}")]
    Shape(u32),
    /// A contribution does not verify.
    #[error("contribution {index} ({name:?}, hash {hash}): {what}")]
    Contribution {
        /// Its position (0-based).
        index: usize,
        /// Its name.
        name: String,
        /// Its recorded hash.
        hash: String,
        /// What failed.
        what: &'static str,
    },
    /// The accumulator is not the one the contributions lead to, or not well formed.
    #[error("accumulator: {0}")]
    Accumulator(&'static str),
}

fn g1() -> G1Affine {
    G1Affine::generator()
}

fn g2() -> G2Affine {
    G2Affine::generator()
}

/// The transcript hash a chain starts from.
fn start_hash(power: u32, imported: &Option<Imported>) -> Hash {
    let mut h = Sha256::new().chain_update(b"gridproof/ptau/v1").chain_update(power.to_le_bytes());
    if let Some(i) = imported {
        h.update(i.source_sha256);
    }
    h.finalize().into()
}

fn record_hash(prev: &Hash, c: &Contribution) -> Hash {
    let mut body = Vec::new();
    let w = "writing to a Vec cannot fail";
    c.name.serialize_compressed(&mut body).expect(w);
    for p in [&c.tau_g1, &c.alpha_g1, &c.beta_g1] {
        p.serialize_compressed(&mut body).expect(w);
    }
    for p in [&c.pok_tau, &c.pok_alpha, &c.pok_beta] {
        p.serialize_compressed(&mut body).expect(w);
    }
    c.beacon.serialize_compressed(&mut body).expect(w);
    Sha256::new().chain_update(prev).chain_update(body).finalize().into()
}

/// `base_i · factor · x^i` for all i, in parallel chunks.
fn scale_powers<P: CurveGroup<ScalarField = Fr>>(points: &mut [P::Affine], x: Fr, factor: Fr) {
    const CHUNK: usize = 1024;
    points.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut s = factor * x.pow([(c * CHUNK) as u64]);
        let proj: Vec<P> = chunk
            .iter()
            .map(|p| {
                let r: P = p.into_group() * s;
                s *= x;
                r
            })
            .collect();
        chunk.copy_from_slice(&P::normalize_batch(&proj));
    });
}

impl Phase1 {
    /// A fresh transcript: every power is the generator (all secrets 1).
    pub fn new(power: u32) -> Result<Phase1, Phase1Error> {
        if !(1..=MAX_POWER).contains(&power) {
            return Err(Phase1Error::Power(power));
        }
        let n = 1usize << power;
        Ok(Phase1 {
            accumulator: Accumulator {
                power,
                tau_g1: vec![g1(); 2 * n - 1],
                tau_g2: vec![g2(); n],
                alpha_tau_g1: vec![g1(); n],
                beta_tau_g1: vec![g1(); n],
                beta_g2: g2(),
            },
            imported: None,
            contributions: vec![],
        })
    }

    /// A transcript continuing from an imported accumulator (see [`Imported`]).
    pub fn from_imported(accumulator: Accumulator, source_sha256: Hash) -> Phase1 {
        let start = [accumulator.tau_g1[1], accumulator.alpha_tau_g1[0], accumulator.beta_tau_g1[0]];
        Phase1 { accumulator, imported: Some(Imported { source_sha256, start }), contributions: vec![] }
    }

    /// The hash of the last contribution (the start hash when there is none).
    pub fn last_hash(&self) -> Hash {
        self.contributions.last().map_or(start_hash(self.accumulator.power, &self.imported), |c| c.hash)
    }

    /// Adds a contribution with secrets from `rng` and `entropy`; returns its hash.
    pub fn contribute<R: RngCore + CryptoRng>(&mut self, name: &str, entropy: &[u8], rng: &mut R) -> Hash {
        let secrets = [secret(rng, entropy, "tau"), secret(rng, entropy, "alpha"), secret(rng, entropy, "beta")];
        self.apply(name, secrets, None, rng)
    }

    /// Adds a beacon contribution; returns its hash.
    pub fn beacon(&mut self, value: Hash, iterations_exp: u8) -> Hash {
        let secrets = ["tau", "alpha", "beta"].map(|l| beacon_secret(&value, iterations_exp, l));
        // The proofs of knowledge still need randomness for s; it does not affect the secrets.
        let mut rng = rand::rngs::OsRng;
        self.apply("beacon", secrets, Some(Beacon { value, iterations_exp }), &mut rng)
    }

    fn apply<R: RngCore + CryptoRng>(&mut self, name: &str, [tau, alpha, beta]: [Fr; 3], beacon: Option<Beacon>, rng: &mut R) -> Hash {
        let prev = self.last_hash();
        let acc = &mut self.accumulator;
        scale_powers::<G1Projective>(&mut acc.tau_g1, tau, Fr::one());
        scale_powers::<G2Projective>(&mut acc.tau_g2, tau, Fr::one());
        scale_powers::<G1Projective>(&mut acc.alpha_tau_g1, tau, alpha);
        scale_powers::<G1Projective>(&mut acc.beta_tau_g1, tau, beta);
        acc.beta_g2 = (acc.beta_g2 * beta).into_affine();
        let mut c = Contribution {
            name: name.to_string(),
            tau_g1: acc.tau_g1[1],
            alpha_g1: acc.alpha_tau_g1[0],
            beta_g1: acc.beta_tau_g1[0],
            pok_tau: Pok::prove(tau, &prev, rng),
            pok_alpha: Pok::prove(alpha, &prev, rng),
            pok_beta: Pok::prove(beta, &prev, rng),
            beacon,
            hash: [0; 32],
        };
        c.hash = record_hash(&prev, &c);
        self.contributions.push(c);
        self.contributions.last().expect("just pushed").hash
    }

    /// Verifies the whole transcript (see the module doc).
    pub fn verify(&self) -> Result<(), Phase1Error> {
        let acc = &self.accumulator;
        if !(1..=MAX_POWER).contains(&acc.power) {
            return Err(Phase1Error::Power(acc.power));
        }
        let n = 1usize << acc.power;
        if acc.tau_g1.len() != 2 * n - 1 || acc.tau_g2.len() != n || acc.alpha_tau_g1.len() != n || acc.beta_tau_g1.len() != n {
            return Err(Phase1Error::Shape(acc.power));
        }
        // The chain of contributions.
        let start = self.imported.as_ref().map_or([g1(); 3], |i| i.start);
        let (mut prev_hash, mut prev) = (start_hash(acc.power, &self.imported), start);
        for (index, c) in self.contributions.iter().enumerate() {
            let fail = |what| Phase1Error::Contribution { index, name: c.name.clone(), hash: hex(&c.hash[..8]), what };
            if record_hash(&prev_hash, c) != c.hash {
                return Err(fail("its hash does not match its predecessor and content (skipped, reordered or altered)"));
            }
            let next = [c.tau_g1, c.alpha_g1, c.beta_g1];
            for ((pok, (before, after)), what) in [&c.pok_tau, &c.pok_alpha, &c.pok_beta].into_iter().zip(prev.iter().zip(&next)).zip(["tau", "alpha", "beta"])
            {
                let Some((r, r_x)) = pok.verify(&prev_hash) else {
                    return Err(fail(match what {
                        "tau" => "proof of knowledge of tau is invalid",
                        "alpha" => "proof of knowledge of alpha is invalid",
                        _ => "proof of knowledge of beta is invalid",
                    }));
                };
                if !same_ratio((*before, *after), (r, r_x)) {
                    return Err(fail(match what {
                        "tau" => "[tau]1 does not build on the predecessor with the proven secret",
                        "alpha" => "[alpha]1 does not build on the predecessor with the proven secret",
                        _ => "[beta]1 does not build on the predecessor with the proven secret",
                    }));
                }
                if let Some(b) = &c.beacon {
                    if (*before * beacon_secret(&b.value, b.iterations_exp, what)).into_affine() != *after {
                        return Err(fail("beacon secrets do not match the beacon value"));
                    }
                }
            }
            prev_hash = c.hash;
            prev = next;
        }
        // The accumulator is where the chain ends...
        if acc.tau_g1[0] != g1() || acc.tau_g2[0] != g2() {
            return Err(Phase1Error::Accumulator("the zeroth powers are not the generators"));
        }
        if [acc.tau_g1[1], acc.alpha_tau_g1[0], acc.beta_tau_g1[0]] != prev {
            return Err(Phase1Error::Accumulator("it is not the result of the last contribution"));
        }
        // ...and well formed: consecutive powers share the ratio τ, in every vector.
        let mut rng = rand::rngs::OsRng;
        let rho = |len: usize, rng: &mut rand::rngs::OsRng| (0..len).map(|_| Fr::from(rng.gen::<u128>())).collect::<Vec<_>>();
        let (tau2, tau1) = (acc.tau_g2[1], acc.tau_g1[1]);
        if !same_ratio((g1(), tau1), (g2(), tau2)) {
            return Err(Phase1Error::Accumulator("[tau]1 and [tau]2 disagree"));
        }
        let g1_pairs = |v: &[G1Affine], rng: &mut rand::rngs::OsRng| {
            let r = rho(v.len() - 1, rng);
            let lo = G1Projective::msm(&v[..v.len() - 1], &r).expect("len").into_affine();
            let hi = G1Projective::msm(&v[1..], &r).expect("len").into_affine();
            same_ratio((lo, hi), (g2(), tau2))
        };
        if !g1_pairs(&acc.tau_g1, &mut rng) {
            return Err(Phase1Error::Accumulator("[tau^i]1 are not consecutive powers"));
        }
        if !g1_pairs(&acc.alpha_tau_g1, &mut rng) {
            return Err(Phase1Error::Accumulator("[alpha tau^i]1 are not consecutive powers"));
        }
        if !g1_pairs(&acc.beta_tau_g1, &mut rng) {
            return Err(Phase1Error::Accumulator("[beta tau^i]1 are not consecutive powers"));
        }
        let r = rho(n - 1, &mut rng);
        let lo = G2Projective::msm(&acc.tau_g2[..n - 1], &r).expect("len").into_affine();
        let hi = G2Projective::msm(&acc.tau_g2[1..], &r).expect("len").into_affine();
        if !same_ratio((g1(), tau1), (lo, hi)) {
            return Err(Phase1Error::Accumulator("[tau^i]2 are not consecutive powers"));
        }
        if !same_ratio((g1(), acc.beta_tau_g1[0]), (g2(), acc.beta_g2)) {
            return Err(Phase1Error::Accumulator("[beta]2 does not match [beta]1"));
        }
        Ok(())
    }
}
