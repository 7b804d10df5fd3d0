//! `keys`: the trusted setup of gridproof's Groth16 circuits.
//!
//! - [`phase1`]: powers of tau over BN254 — new, contribute, beacon, verify.
//! - [`lagrange`]: the accumulator's Lagrange bases per domain, prepared once for phase 2 and
//!   checked against the powers whenever they are read.
//! - [`phase2`]: per circuit shape (model, T) — keys from a phase-1 accumulator, δ
//!   contributions, beacon finalisation, verification of the whole chain, export as `prover`
//!   key files.
//! - [`pok`]: proofs of knowledge of contribution secrets, hash to G2, ratio checks.
//! - [`files`]: the transcript file formats, written atomically.
//! - [`r1cs`]: export of a circuit as an iden3 `.r1cs` file for the snarkjs / p0tion tooling.
//! - [`snarkjs`]: import of a snarkjs `.ptau` file as a phase-1 accumulator.
//!
//! One honest contributor suffices: every key is the product of all contributors' secrets,
//! and every contribution proves it knew its secret and built on its predecessor.
#![warn(missing_docs)]

pub mod files;
pub mod lagrange;
pub mod phase1;
pub mod phase2;
pub mod pok;
pub mod r1cs;
pub mod snarkjs;
