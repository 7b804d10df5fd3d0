//! `circuits`: what a device update proves, natively and in R1CS over BN254.
//!
//! - [`fixed`]: the fixed-point codec of DESIGN §2 (watts, W·slot, scale 2^20, round half to
//!   even, checked conversions).
//! - [`limits`]: the ranges circuits represent and the slot count [`limits::Slots`].
//! - [`model`]: the four device models of DESIGN §3, each a validated parameter struct, a
//!   native checker naming the first violated constraint, and the R1CS gadget that mirrors it.
//! - [`spec`]: the same parameters in physical units (kW, kWh, °C) as configuration files
//!   carry them, with checked conversion.
//! - [`statement`]: the update statement of DESIGN §5.1 (commitment, context, nameplate limits,
//!   packed schedule) and the [`statement::UpdateCircuit`] Groth16 proves.
//! - [`nameplate`]: the public nameplate limits that bound θ (DESIGN §10), native and enforced
//!   by the statement.
//! - [`poseidon`]: circomlib-compatible Poseidon, native and gadget.
//! - [`field`], [`gadgets`]: field packings and integer range-check gadgets.
//!
//! Invariants: a parameter value that exists fits its circuit; the native checker and the
//! circuit accept exactly the same (θ, x) (property-tested); nothing here does IO or reads a
//! clock.
#![warn(missing_docs)]

pub mod field;
pub mod fixed;
pub mod gadgets;
pub mod limits;
pub mod model;
pub mod nameplate;
pub mod poseidon;
pub mod sample;
pub mod spec;
pub mod statement;

pub use ark_bn254::Fr;

/// A `tracing` filter directive every binary that synthesizes circuits adds to its log
/// filter: arkworks' gadgets carry `#[tracing::instrument(target = "r1cs")]` spans at the
/// info level whose fields are the whole constraint system, so `RUST_LOG=info` made one
/// T = 4 proof take minutes and gigabytes formatting them.
pub const QUIET_GADGET_SPANS: &str = "r1cs=off";
pub use limits::Slots;
pub use model::{ModelKind, ModelParams};
pub use statement::{commitment, public_inputs, Context, Opening, Shape, UpdateCircuit, Witness};
