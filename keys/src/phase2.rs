//! Phase 2: the Groth16 keys of one circuit shape, from a phase-1 accumulator, randomised by δ
//! contributions.
//!
//! The initial key is computed deterministically from the accumulator's Lagrange bases (read
//! from a prepared phase-1 file, [`crate::lagrange`], or computed by an inverse FFT over group
//! elements on the circuit's evaluation domain) and the circuit's R1CS
//! matrices, following ark-groth16's `LibsnarkReduction` exactly, with γ = δ = 1. A contribution
//! multiplies δ by a secret δ' and divides the L and H queries by it. [`Phase2::verify`]
//! recomputes the initial key, checks that only δ, L and H changed, follows the chain of δ
//! proofs, and checks L and H against the final δ by pairings.

use ark_bn254::{Bn254, Fr, G1Affine, G1Projective, G2Affine, G2Projective};
use ark_ec::scalar_mul::glv::GLVConfig;
use ark_ec::{AffineRepr, CurveGroup, VariableBaseMSM};
use ark_ff::{Field, One};
use ark_ff::{PrimeField, Zero};
use ark_groth16::{ProvingKey, VerifyingKey};
use ark_poly::{EvaluationDomain, Radix2EvaluationDomain};
use ark_relations::r1cs::{ConstraintMatrices, ConstraintSynthesizer, ConstraintSystem, OptimizationGoal, SynthesisMode};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use circuits::{ModelKind, Shape, Slots, UpdateCircuit};
use prover::{SetupKind, UpdateProvingKey, UpdateVerifyingKey};
use rand::{CryptoRng, Rng, RngCore};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::lagrange::{LagrangeBases, Prepared};
use crate::phase1::{Accumulator, Beacon};
use crate::pok::{beacon_secret, hex, same_ratio, secret, Hash, Pok};

/// One δ contribution.
#[derive(Debug, Clone, PartialEq, Eq, CanonicalSerialize, CanonicalDeserialize)]
pub struct Contribution {
    /// Free text (a name), not trusted.
    pub name: String,
    /// [δ]₁ after this contribution.
    pub delta_g1: G1Affine,
    /// Knowledge of δ'.
    pub pok: Pok,
    /// Set for a beacon contribution.
    pub beacon: Option<Beacon>,
    /// SHA-256(previous hash ‖ this record without the hash).
    pub hash: Hash,
}

/// A phase-2 transcript for one circuit shape.
#[derive(Debug, Clone, PartialEq, CanonicalSerialize, CanonicalDeserialize)]
pub struct Phase2 {
    /// Model kind id.
    pub kind: u8,
    /// T.
    pub slots: u16,
    /// The circuit id of `prover::format::CIRCUIT_ID` it was made for.
    pub circuit_id: u32,
    /// SHA-256 of the phase-1 accumulator it starts from.
    pub ptau_hash: Hash,
    /// The hash the contribution chain starts from (binds shape, accumulator, initial key).
    pub start_hash: Hash,
    /// The current proving key (its `vk` is the current verifying key).
    pub key: ProvingKey<Bn254>,
    /// The contributions, oldest first.
    pub contributions: Vec<Contribution>,
}

/// What failed in phase 2.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Phase2Error {
    /// The phase-1 accumulator is too small for the circuit.
    #[error("the circuit needs 2^{needed} powers of tau, the accumulator has 2^{have}")]
    TooFewPowers {
        /// log2 of the domain size needed.
        needed: u32,
        /// The accumulator's power.
        have: u32,
    },
    /// The transcript names an unknown model or T.
    #[error("transcript is for model id {0} with T = {1}, which does not exist")]
    Shape(u8, u16),
    /// Another circuit version.
    #[error("transcript is for circuit id {found}, this build has {expected}")]
    CircuitId {
        /// In the file.
        found: u32,
        /// This build.
        expected: u32,
    },
    /// Another phase-1 transcript.
    #[error("transcript starts from accumulator {found}, the given one is {expected}")]
    Ptau {
        /// In the file.
        found: String,
        /// Given.
        expected: String,
    },
    /// Part of the key differs from what the accumulator and circuit give.
    #[error("key: {0}")]
    Key(&'static str),
    /// A contribution does not verify.
    #[error("contribution {index} ({name:?}, hash {hash}): {what}")]
    Contribution {
        /// Position (0-based).
        index: usize,
        /// Name.
        name: String,
        /// Recorded hash.
        hash: String,
        /// What failed.
        what: &'static str,
    },
    /// The Lagrange bases of the circuit's domain could not be computed.
    #[error("{0}")]
    Lagrange(crate::lagrange::LagrangeError),
    /// The circuit could not be synthesised.
    #[error("synthesis: {0}")]
    Synthesis(String),
}

/// SHA-256 of an accumulator's compressed encoding.
pub fn accumulator_hash(acc: &Accumulator) -> Hash {
    let mut bytes = Vec::new();
    acc.serialize_compressed(&mut bytes).expect("vec");
    Sha256::digest(bytes).into()
}

fn shape_of(kind: u8, slots: u16) -> Result<Shape, Phase2Error> {
    let k = ModelKind::from_id(kind).ok_or(Phase2Error::Shape(kind, slots))?;
    let s = Slots::new(slots as usize).map_err(|_| Phase2Error::Shape(kind, slots))?;
    Ok(Shape { kind: k, slots: s })
}

/// Σ_j coeff·base_j over sparse entries. R1CS coefficients are mostly ±2^k: a coefficient
/// whose value or negation fits 64 bits costs a short double-and-add, not a full scalar
/// multiplication; the others go through `full_mul` ([`g1_mul`] or [`g2_mul`]).
fn combine<A: AffineRepr<ScalarField = Fr>>(bases: &[A], entries: &[(usize, Fr)], full_mul: fn(&A, Fr) -> A::Group) -> A::Group {
    let mut acc = A::Group::zero();
    for &(j, c) in entries {
        let (pos, neg) = (c.into_bigint(), (-c).into_bigint());
        if pos.0[1..].iter().all(|&l| l == 0) {
            acc += bases[j].mul_bigint([pos.0[0]]);
        } else if neg.0[1..].iter().all(|&l| l == 0) {
            acc -= bases[j].mul_bigint([neg.0[0]]);
        } else {
            acc += full_mul(&bases[j], c);
        }
    }
    acc
}

/// A full-size scalar multiplication in G1 (ark-bn254 multiplies G1 points by GLV, two
/// half-size scalars).
fn g1_mul(p: &G1Affine, c: Fr) -> G1Projective {
    *p * c
}

/// A full-size scalar multiplication in G2 by GLV. ark-bn254 multiplies G2 points by plain
/// double-and-add although G2 has the endomorphism too; GLV halves the doublings of the G2
/// products, most of an initial key's time.
fn g2_mul(p: &G2Affine, c: Fr) -> G2Projective {
    <ark_bn254::g2::Config as GLVConfig>::glv_mul_projective(p.into_group(), c)
}
/// Most initial keys a process keeps (at T = 96 one is about 30 MB).
const INITIAL_KEY_CACHE: usize = 2;

/// The initial key (γ = δ = 1) for `shape` from `acc`, as ark-groth16's LibsnarkReduction
/// would compute it at the accumulator's secret τ, α, β. A function of the accumulator and
/// the shape alone, so the last [`INITIAL_KEY_CACHE`] are kept, keyed by the accumulator's
/// hash and the shape: starting a transcript, verifying it and exporting its keys compute it
/// once per process.
pub fn initial_key(p1: &Prepared, shape: Shape) -> Result<ProvingKey<Bn254>, Phase2Error> {
    static CACHE: Memo<(Hash, u8, usize), ProvingKey<Bn254>> = Mutex::new(Vec::new());
    memo(&CACHE, INITIAL_KEY_CACHE, (accumulator_hash(p1.accumulator()), shape.kind.id(), shape.slots.get()), || compute_initial_key(p1, shape))
}

/// A process-wide cache of the last few values of a pure function, oldest first.
type Memo<K, V> = Mutex<Vec<(K, V)>>;

/// The value for `key` from `cache`, else `compute`d and kept (dropping the oldest beyond
/// `cap`). The lock is not held while computing: two threads may both compute a missing value.
fn memo<K: PartialEq, V: Clone, E>(cache: &Memo<K, V>, cap: usize, key: K, compute: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
    if let Some((_, v)) = cache.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(k, _)| *k == key) {
        return Ok(v.clone());
    }
    let value = compute()?;
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() == cap {
        cache.remove(0);
    }
    cache.push((key, value.clone()));
    Ok(value)
}

/// log2 of the evaluation domain of `shape`'s circuit (constraints plus public inputs,
/// rounded up to a power of two): the Lagrange bases its phase 2 needs.
pub fn domain_power(shape: Shape) -> Result<u32, Phase2Error> {
    let m = matrices(shape)?;
    Ok((m.num_constraints + m.num_instance_variables).next_power_of_two().trailing_zeros())
}

/// The R1CS matrices of `shape`'s circuit, synthesized without a witness (the same ones the
/// prover caches in its key).
pub fn matrices(shape: Shape) -> Result<ConstraintMatrices<Fr>, Phase2Error> {
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_optimization_goal(OptimizationGoal::Constraints);
    cs.set_mode(SynthesisMode::Setup);
    UpdateCircuit::blank(shape).generate_constraints(cs.clone()).map_err(|e| Phase2Error::Synthesis(e.to_string()))?;
    cs.finalize();
    cs.to_matrices().ok_or(Phase2Error::Synthesis("no matrices".into()))
}

fn compute_initial_key(p1: &Prepared, shape: Shape) -> Result<ProvingKey<Bn254>, Phase2Error> {
    let matrices = matrices(shape)?;
    let (num_constraints, num_inputs) = (matrices.num_constraints, matrices.num_instance_variables);
    let num_vars = num_inputs + matrices.num_witness_variables;
    let domain = Radix2EvaluationDomain::<Fr>::new(num_constraints + num_inputs).ok_or(Phase2Error::Synthesis("domain too large".into()))?;
    let m = domain.size();
    let needed = m.trailing_zeros();
    let acc = p1.accumulator();
    if m > acc.tau_g2.len() {
        return Err(Phase2Error::TooFewPowers { needed, have: acc.power });
    }
    let bases = lagrange_bases(p1, &domain)?;
    let (lag, lag_alpha, lag_beta, lag2) = (&bases.tau_g1, &bases.alpha_tau_g1, &bases.beta_tau_g1, &bases.tau_g2);

    // Per variable: its entries (row, coefficient) in A, B, C; inputs also get row
    // num_constraints + i in A (the reduction's input-consistency rows).
    let mut cols = vec![(vec![], vec![], vec![]); num_vars];
    for (j, ((ra, rb), rc)) in matrices.a.iter().zip(&matrices.b).zip(&matrices.c).enumerate() {
        for &(c, i) in ra {
            cols[i].0.push((j, c));
        }
        for &(c, i) in rb {
            cols[i].1.push((j, c));
        }
        for &(c, i) in rc {
            cols[i].2.push((j, c));
        }
    }
    for (i, col) in cols.iter_mut().enumerate().take(num_inputs) {
        col.0.push((num_constraints + i, Fr::one()));
    }
    type Col = (Vec<(usize, Fr)>, Vec<(usize, Fr)>, Vec<(usize, Fr)>);
    let per_var: Vec<(G1Projective, G1Projective, G2Projective, G1Projective)> = cols
        .par_iter()
        .map(|(a, b, c): &Col| {
            let abc = combine(lag_beta, a, g1_mul) + combine(lag_alpha, b, g1_mul) + combine(lag, c, g1_mul);
            (combine(lag, a, g1_mul), combine(lag, b, g1_mul), combine(lag2, b, g2_mul), abc)
        })
        .collect();
    let a_query = G1Projective::normalize_batch(&per_var.iter().map(|v| v.0).collect::<Vec<_>>());
    let b_g1_query = G1Projective::normalize_batch(&per_var.iter().map(|v| v.1).collect::<Vec<_>>());
    let b_g2_query = G2Projective::normalize_batch(&per_var.iter().map(|v| v.2).collect::<Vec<_>>());
    let abc = G1Projective::normalize_batch(&per_var.iter().map(|v| v.3).collect::<Vec<_>>());
    // H: [τ^i (τ^m − 1)] for i < m − 1.
    let h: Vec<G1Projective> = (0..m - 1).into_par_iter().map(|i| acc.tau_g1[i + m].into_group() - acc.tau_g1[i]).collect();
    let vk = VerifyingKey {
        alpha_g1: acc.alpha_tau_g1[0],
        beta_g2: acc.beta_g2,
        gamma_g2: G2Affine::generator(),
        delta_g2: G2Affine::generator(),
        gamma_abc_g1: abc[..num_inputs].to_vec(),
    };
    Ok(ProvingKey {
        vk,
        beta_g1: acc.beta_tau_g1[0],
        delta_g1: G1Affine::generator(),
        a_query,
        b_g1_query,
        b_g2_query,
        h_query: G1Projective::normalize_batch(&h),
        l_query: abc[num_inputs..].to_vec(),
    })
}

/// Most computed Lagrange bases a process keeps (at T = 96 one set is about 40 MB).
const LAGRANGE_CACHE: usize = 2;

/// The Lagrange bases of `p1` on `domain`: the prepared set when the file has one, else by
/// inverse FFT in the exponent — the costly part of an initial key (m·log m scalar
/// multiplications, most of them in G2). Computed sets depend only on the accumulator and the
/// domain size, so the last [`LAGRANGE_CACHE`] are kept, keyed by the accumulator's hash and m:
/// verifying a transcript, exporting its keys and setting up several circuits of one size
/// compute them once per process.
fn lagrange_bases(p1: &Prepared, domain: &Radix2EvaluationDomain<Fr>) -> Result<Arc<LagrangeBases>, Phase2Error> {
    static CACHE: Memo<(Hash, usize), Arc<LagrangeBases>> = Mutex::new(Vec::new());
    let m = domain.size();
    if let Some(l) = p1.lagrange(m) {
        return Ok(l);
    }
    let acc = p1.accumulator();
    memo(&CACHE, LAGRANGE_CACHE, (accumulator_hash(acc), m), || {
        LagrangeBases::compute(acc, domain.log_size_of_group).map(Arc::new).map_err(Phase2Error::Lagrange)
    })
}

fn key_hash(key: &ProvingKey<Bn254>) -> Hash {
    let mut bytes = Vec::new();
    key.serialize_compressed(&mut bytes).expect("vec");
    Sha256::digest(bytes).into()
}

fn start_hash(kind: u8, slots: u16, ptau_hash: &Hash, initial: &ProvingKey<Bn254>) -> Hash {
    Sha256::new()
        .chain_update(b"gridproof/phase2/v1")
        .chain_update([kind])
        .chain_update(slots.to_le_bytes())
        .chain_update(ptau_hash)
        .chain_update(key_hash(initial))
        .finalize()
        .into()
}

fn record_hash(prev: &Hash, c: &Contribution) -> Hash {
    let mut body = Vec::new();
    let w = "writing to a Vec cannot fail";
    c.name.serialize_compressed(&mut body).expect(w);
    c.delta_g1.serialize_compressed(&mut body).expect(w);
    c.pok.serialize_compressed(&mut body).expect(w);
    c.beacon.serialize_compressed(&mut body).expect(w);
    Sha256::new().chain_update(prev).chain_update(body).finalize().into()
}

fn scale_all(points: &mut [G1Affine], s: Fr) {
    let proj: Vec<G1Projective> = points.par_iter().map(|p| *p * s).collect();
    points.copy_from_slice(&G1Projective::normalize_batch(&proj));
}

impl Phase2 {
    /// Starts phase 2 for `shape` from a (verified) accumulator.
    pub fn new(p1: &Prepared, shape: Shape) -> Result<Phase2, Phase2Error> {
        let (kind, slots, ptau_hash) = (shape.kind.id(), shape.slots.get() as u16, accumulator_hash(p1.accumulator()));
        let key = initial_key(p1, shape)?;
        let start_hash = start_hash(kind, slots, &ptau_hash, &key);
        Ok(Phase2 { kind, slots, circuit_id: prover::format::CIRCUIT_ID, ptau_hash, start_hash, key, contributions: vec![] })
    }

    /// The circuit shape.
    pub fn shape(&self) -> Result<Shape, Phase2Error> {
        shape_of(self.kind, self.slots)
    }

    /// The hash of the last contribution (the start hash when there is none).
    pub fn last_hash(&self) -> Hash {
        self.contributions.last().map_or(self.start_hash, |c| c.hash)
    }

    /// Adds a δ contribution; returns its hash.
    pub fn contribute<R: RngCore + CryptoRng>(&mut self, name: &str, entropy: &[u8], rng: &mut R) -> Hash {
        let d = secret(rng, entropy, "delta");
        self.apply(name, d, None, rng)
    }

    /// Adds a beacon contribution (the finalisation step); returns its hash.
    pub fn beacon(&mut self, value: Hash, iterations_exp: u8) -> Hash {
        let d = beacon_secret(&value, iterations_exp, "delta");
        self.apply("beacon", d, Some(Beacon { value, iterations_exp }), &mut rand::rngs::OsRng)
    }

    fn apply<R: RngCore + CryptoRng>(&mut self, name: &str, d: Fr, beacon: Option<Beacon>, rng: &mut R) -> Hash {
        let prev = self.last_hash();
        let inv = d.inverse().expect("a random scalar is not zero");
        let k = &mut self.key;
        k.delta_g1 = (k.delta_g1 * d).into_affine();
        k.vk.delta_g2 = (k.vk.delta_g2 * d).into_affine();
        scale_all(&mut k.l_query, inv);
        scale_all(&mut k.h_query, inv);
        let mut c = Contribution { name: name.to_string(), delta_g1: k.delta_g1, pok: Pok::prove(d, &prev, rng), beacon, hash: [0; 32] };
        c.hash = record_hash(&prev, &c);
        self.contributions.push(c);
        self.contributions.last().expect("pushed").hash
    }

    /// Verifies the transcript against the phase-1 accumulator (see the module doc).
    pub fn verify(&self, p1: &Prepared) -> Result<(), Phase2Error> {
        let acc = p1.accumulator();
        if self.circuit_id != prover::format::CIRCUIT_ID {
            return Err(Phase2Error::CircuitId { found: self.circuit_id, expected: prover::format::CIRCUIT_ID });
        }
        let expected = accumulator_hash(acc);
        if self.ptau_hash != expected {
            return Err(Phase2Error::Ptau { found: hex(&self.ptau_hash[..8]), expected: hex(&expected[..8]) });
        }
        // The chain of δ contributions first: it is cheap and names the culprit.
        let (mut prev_hash, mut prev_delta) = (self.start_hash, G1Affine::generator());
        for (index, c) in self.contributions.iter().enumerate() {
            let fail = |what| Phase2Error::Contribution { index, name: c.name.clone(), hash: hex(&c.hash[..8]), what };
            if record_hash(&prev_hash, c) != c.hash {
                return Err(fail("its hash does not match its predecessor and content (skipped, reordered or altered)"));
            }
            let Some((r, r_d)) = c.pok.verify(&prev_hash) else { return Err(fail("proof of knowledge of delta is invalid")) };
            if !same_ratio((prev_delta, c.delta_g1), (r, r_d)) {
                return Err(fail("[delta]1 does not build on the predecessor with the proven secret"));
            }
            if let Some(b) = &c.beacon {
                if (prev_delta * beacon_secret(&b.value, b.iterations_exp, "delta")).into_affine() != c.delta_g1 {
                    return Err(fail("beacon secret does not match the beacon value"));
                }
            }
            prev_hash = c.hash;
            prev_delta = c.delta_g1;
        }
        let k = &self.key;
        if k.delta_g1 != prev_delta {
            return Err(Phase2Error::Key("[delta]1 is not the result of the last contribution"));
        }
        let initial = initial_key(p1, self.shape()?)?;
        if start_hash(self.kind, self.slots, &self.ptau_hash, &initial) != self.start_hash {
            return Err(Phase2Error::Key("the chain does not start from this circuit's initial key"));
        }
        let same = k.vk.alpha_g1 == initial.vk.alpha_g1
            && k.vk.beta_g2 == initial.vk.beta_g2
            && k.vk.gamma_g2 == initial.vk.gamma_g2
            && k.vk.gamma_abc_g1 == initial.vk.gamma_abc_g1
            && k.beta_g1 == initial.beta_g1
            && k.a_query == initial.a_query
            && k.b_g1_query == initial.b_g1_query
            && k.b_g2_query == initial.b_g2_query;
        if !same {
            return Err(Phase2Error::Key("a part that no contribution may change differs from the circuit and accumulator"));
        }
        if k.l_query.len() != initial.l_query.len() || k.h_query.len() != initial.h_query.len() {
            return Err(Phase2Error::Key("L or H query has the wrong length"));
        }
        let (g1, g2) = (G1Affine::generator(), G2Affine::generator());
        if !same_ratio((g1, k.delta_g1), (g2, k.vk.delta_g2)) {
            return Err(Phase2Error::Key("[delta]2 does not match [delta]1"));
        }
        // L and H are the initial ones divided by δ: e(Σρ L_i, [δ]₂) = e(Σρ L⁰_i, g₂).
        let mut rng = rand::rngs::OsRng;
        for (now, then, what) in [
            (&k.l_query, &initial.l_query, "L query is not the initial one divided by delta"),
            (&k.h_query, &initial.h_query, "H query is not the initial one divided by delta"),
        ] {
            if now.is_empty() {
                continue;
            }
            let rho: Vec<Fr> = (0..now.len()).map(|_| Fr::from(rng.gen::<u128>())).collect();
            let a = G1Projective::msm(now, &rho).expect("len").into_affine();
            let b = G1Projective::msm(then, &rho).expect("len").into_affine();
            if b.is_zero() && a.is_zero() {
                continue;
            }
            if !same_ratio((a, b), (g2, k.vk.delta_g2)) {
                return Err(Phase2Error::Key(what));
            }
        }
        Ok(())
    }

    /// The keys, after verification, as `prover` key types marked as coming from a ceremony.
    pub fn export(&self, p1: &Prepared) -> Result<(UpdateProvingKey, UpdateVerifyingKey), Phase2Error> {
        self.verify(p1)?;
        let shape = self.shape()?;
        let pk = UpdateProvingKey::new(self.key.clone(), shape, SetupKind::Ceremony).map_err(|_| Phase2Error::Key("size does not match the shape"))?;
        let vk = pk.verifying_key();
        Ok((pk, vk))
    }
}
