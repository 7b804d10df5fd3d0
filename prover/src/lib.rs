//! `prover`: Groth16 over BN254 for the update statement of `circuits`.
//!
//! - [`setup`]: circuit-specific key generation (the single-party development setup; the
//!   ceremony lives in the `keys` crate and produces the same key types).
//! - [`prove()`]: checks a witness natively, then proves it.
//! - [`verify()`] and [`batch_verify()`]: single and random-linear-combination batch verification;
//!   a failed batch is bisected so the report names exactly the invalid items.
//! - [`format`]: 128-byte proofs, 32-byte public inputs, versioned key files with a header.
//! - [`snarkjs`]: `verification_key.json`, `proof.json`, `public.json` export and import.
//!
//! Invariants: every decoder checks curve membership, subgroup membership and canonical
//! encodings and never panics; a verifier needs only a verifying key and the public inputs
//! `circuits::public_inputs` computes.
#![warn(missing_docs)]

mod assemble;
mod qap;
pub mod batch;
pub mod error;
pub mod format;
pub mod snarkjs;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use ark_bn254::{Bn254, Fr};
use ark_ff::UniformRand;
use ark_groth16::r1cs_to_qap::{LibsnarkReduction, R1CSToQAP};
use ark_groth16::{Groth16, PreparedVerifyingKey, Proof, ProvingKey, VerifyingKey};
use ark_poly::GeneralEvaluationDomain;
use ark_relations::r1cs::{ConstraintMatrices, ConstraintSynthesizer, ConstraintSystem, OptimizationGoal, SynthesisMode};
use circuits::{Shape, UpdateCircuit, Witness};
use rand::{CryptoRng, RngCore};

pub use batch::{batch_verify, BatchItem, BatchReport};
pub use error::{FormatError, ProveError, VerifyError};
pub use format::SetupKind;

/// A Groth16 proof over BN254.
pub type UpdateProof = Proof<Bn254>;

/// A proving key together with the circuit shape it is for.
#[derive(Clone, Debug)]
pub struct UpdateProvingKey {
    shape: Shape,
    setup: SetupKind,
    pk: ProvingKey<Bn254>,
    /// The circuit's R1CS matrices, built on the first proof and shared by clones: proving
    /// then only computes the assignment, instead of recording and inlining every linear
    /// combination again (a third of a small proof's time).
    matrices: Arc<OnceLock<ConstraintMatrices<Fr>>>,
}

impl UpdateProvingKey {
    /// Wraps an arkworks key, checking its size against the shape.
    pub fn new(pk: ProvingKey<Bn254>, shape: Shape, setup: SetupKind) -> Result<Self, FormatError> {
        format::check_vk_shape(&pk.vk, shape)?;
        Ok(UpdateProvingKey { shape, setup, pk, matrices: Arc::default() })
    }

    /// Decodes a key file, optionally requiring a shape.
    pub fn from_bytes(bytes: &[u8], expected: Option<Shape>) -> Result<Self, FormatError> {
        let (h, pk) = format::decode_proving_key(bytes, expected)?;
        Ok(UpdateProvingKey { shape: h.shape, setup: h.setup, pk, matrices: Arc::default() })
    }

    /// Encodes as a key file.
    pub fn to_bytes(&self) -> Vec<u8> {
        format::encode_proving_key(&self.pk, self.shape, self.setup)
    }

    /// The circuit shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Ceremony or development.
    pub fn setup(&self) -> SetupKind {
        self.setup
    }

    /// The arkworks key.
    pub fn inner(&self) -> &ProvingKey<Bn254> {
        &self.pk
    }

    /// The R1CS matrices of the key's circuit (synthesized once, without a witness).
    fn matrices(&self) -> Result<&ConstraintMatrices<Fr>, ark_relations::r1cs::SynthesisError> {
        if let Some(m) = self.matrices.get() {
            return Ok(m);
        }
        let cs = ConstraintSystem::<Fr>::new_ref();
        cs.set_optimization_goal(OptimizationGoal::Constraints);
        cs.set_mode(SynthesisMode::Setup);
        UpdateCircuit::blank(self.shape).generate_constraints(cs.clone())?;
        cs.finalize();
        let m = cs.to_matrices().ok_or(ark_relations::r1cs::SynthesisError::MissingCS)?;
        Ok(self.matrices.get_or_init(|| m))
    }

    /// The matching verifying key.
    pub fn verifying_key(&self) -> UpdateVerifyingKey {
        UpdateVerifyingKey::new(self.pk.vk.clone(), self.shape, self.setup).expect("checked in new")
    }
}

/// A verifying key, prepared for pairings, with the circuit shape it is for.
#[derive(Clone, Debug)]
pub struct UpdateVerifyingKey {
    shape: Shape,
    setup: SetupKind,
    pvk: PreparedVerifyingKey<Bn254>,
}

impl UpdateVerifyingKey {
    /// Wraps and prepares an arkworks key, checking its size against the shape.
    pub fn new(vk: VerifyingKey<Bn254>, shape: Shape, setup: SetupKind) -> Result<Self, FormatError> {
        format::check_vk_shape(&vk, shape)?;
        Ok(UpdateVerifyingKey { shape, setup, pvk: ark_groth16::prepare_verifying_key(&vk) })
    }

    /// Decodes a key file, optionally requiring a shape.
    pub fn from_bytes(bytes: &[u8], expected: Option<Shape>) -> Result<Self, FormatError> {
        let (h, vk) = format::decode_verifying_key(bytes, expected)?;
        UpdateVerifyingKey::new(vk, h.shape, h.setup)
    }

    /// Encodes as a key file.
    pub fn to_bytes(&self) -> Vec<u8> {
        format::encode_verifying_key(&self.pvk.vk, self.shape, self.setup)
    }

    /// The circuit shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Ceremony or development.
    pub fn setup(&self) -> SetupKind {
        self.setup
    }

    /// The arkworks key.
    pub fn inner(&self) -> &VerifyingKey<Bn254> {
        &self.pvk.vk
    }

    /// The prepared key.
    pub fn prepared(&self) -> &PreparedVerifyingKey<Bn254> {
        &self.pvk
    }
}

/// Prepared verifying keys by circuit shape, so a validator prepares each key once.
#[derive(Clone, Debug, Default)]
pub struct VerifierKeys {
    keys: HashMap<Shape, Arc<UpdateVerifyingKey>>,
}

impl VerifierKeys {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the key for its shape.
    pub fn insert(&mut self, vk: UpdateVerifyingKey) {
        self.keys.insert(vk.shape, Arc::new(vk));
    }

    /// The key for `shape`, if configured.
    pub fn get(&self, shape: &Shape) -> Option<Arc<UpdateVerifyingKey>> {
        self.keys.get(shape).cloned()
    }
}

/// Circuit-specific Groth16 setup by one party: whoever runs it knows the trapdoor and can
/// forge proofs, so the keys are marked [`SetupKind::Development`].
pub fn setup<R: RngCore + CryptoRng>(shape: Shape, rng: &mut R) -> Result<(UpdateProvingKey, UpdateVerifyingKey), ark_relations::r1cs::SynthesisError> {
    let pk = Groth16::<Bn254>::generate_random_parameters_with_reduction(UpdateCircuit::blank(shape), rng)?;
    let pk = UpdateProvingKey::new(pk, shape, SetupKind::Development).expect("a fresh key matches its shape");
    let vk = pk.verifying_key();
    Ok((pk, vk))
}

/// Proves a witness: validates it with the native checker first (a device never sends a
/// proof the circuit would reject), then runs Groth16. Returns the proof and its public inputs.
pub fn prove<R: RngCore + CryptoRng>(pk: &UpdateProvingKey, witness: Witness, rng: &mut R) -> Result<(UpdateProof, Vec<Fr>), ProveError> {
    if witness.context.shape != pk.shape {
        return Err(ProveError::WrongCircuit { key: pk.shape, witness: witness.context.shape });
    }
    let (r, s) = (Fr::rand(rng), Fr::rand(rng));
    prove_with_blinding(pk, witness, r, s)
}

/// [`prove()`] with given blinding factors `r`, `s` (the proof is zero-knowledge only if they
/// are uniformly random).
fn prove_with_blinding(pk: &UpdateProvingKey, witness: Witness, r: Fr, s: Fr) -> Result<(UpdateProof, Vec<Fr>), ProveError> {
    let circuit = UpdateCircuit::new(witness)?;
    let inputs = circuit.public_inputs().expect("a checked circuit has inputs").to_vec();
    let matrices = pk.matrices()?;
    let full = assignment(matrices, circuit)?;
    let num_inputs = matrices.num_instance_variables;
    let h = match QapReduction::of(pk, matrices)? {
        QapReduction::Libsnark => LibsnarkReduction::witness_map_from_matrices::<Fr, GeneralEvaluationDomain<Fr>>(matrices, num_inputs, matrices.num_constraints, &full)?,
        QapReduction::Snarkjs => qap::snarkjs_witness_map(matrices, &full)?,
    };
    let proof = assemble::create_proof(&pk.pk, r, s, &h, &full[1..num_inputs], &full[num_inputs..]);
    Ok((proof, inputs))
}

/// How a key's H query encodes the quotient polynomial, read from its length (m is the
/// circuit's evaluation domain): m − 1 points [τ^i·Z(τ)/δ] from arkworks (and gridproof's
/// ceremony), or m points from snarkjs (`zkey new`: the Lagrange bases of the odd points of
/// the 2m-domain, for h evaluated on the coset ω_2m·H). Any other length is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QapReduction {
    /// ark-groth16's `LibsnarkReduction`.
    Libsnark,
    /// snarkjs's (ark-circom's `CircomReduction`).
    Snarkjs,
}

impl QapReduction {
    fn of(pk: &UpdateProvingKey, matrices: &ConstraintMatrices<Fr>) -> Result<QapReduction, ProveError> {
        let domain = (matrices.num_constraints + matrices.num_instance_variables).next_power_of_two();
        match pk.pk.h_query.len() {
            len if len + 1 == domain => Ok(QapReduction::Libsnark),
            len if len == domain => Ok(QapReduction::Snarkjs),
            len => Err(ProveError::HQuery { len, domain }),
        }
    }
}

/// The full assignment (one, instance, witness) of a checked circuit, synthesized without
/// recording constraints (the key's matrices stand for them).
fn assignment(matrices: &ConstraintMatrices<Fr>, circuit: UpdateCircuit) -> Result<Vec<Fr>, ProveError> {
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_optimization_goal(OptimizationGoal::Constraints);
    cs.set_mode(SynthesisMode::Prove { construct_matrices: false });
    circuit.generate_constraints(cs.clone())?;
    cs.finalize();
    let cs = cs.borrow().ok_or(ark_relations::r1cs::SynthesisError::MissingCS)?;
    if cs.num_instance_variables != matrices.num_instance_variables || cs.num_witness_variables != matrices.num_witness_variables {
        return Err(ProveError::Assignment {
            matrices: matrices.num_instance_variables + matrices.num_witness_variables,
            assignment: cs.num_instance_variables + cs.num_witness_variables,
        });
    }
    Ok(cs.instance_assignment.iter().chain(&cs.witness_assignment).copied().collect())
}

/// A fresh proof of the same statement (Groth16 re-randomization, BKSV20 theorem 3): valid
/// exactly when `proof` is, and indistinguishable from a new honest proof. Costs three scalar
/// multiplications instead of a proof; used to make distinct proofs cheaply for benchmarks.
pub fn rerandomize<R: RngCore + CryptoRng>(vk: &UpdateVerifyingKey, proof: &UpdateProof, rng: &mut R) -> UpdateProof {
    Groth16::<Bn254>::rerandomize_proof(vk.inner(), proof, rng)
}

/// Verifies one proof against its public inputs.
pub fn verify(vk: &UpdateVerifyingKey, public_inputs: &[Fr], proof: &UpdateProof) -> Result<(), VerifyError> {
    let expected = vk.shape.num_public_inputs();
    if public_inputs.len() != expected {
        return Err(VerifyError::InputCount { expected, got: public_inputs.len() });
    }
    match Groth16::<Bn254>::verify_proof(&vk.pvk, proof, public_inputs) {
        Ok(true) => Ok(()),
        _ => Err(VerifyError::Invalid),
    }
}
