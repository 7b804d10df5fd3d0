//! `protocol`: the shared language of validators and devices, and the maths they run. No IO.
//!
//! - [`admm`]: the validators' fixed-point ADMM engine (x̄, z̄, u, residuals, prices).
//! - [`local`]: the device's local step (clarabel), rounding and repair to circuit-exact watts.
//! - [`central`]: the centralised reference optimum (tests and benchmarks only).
//! - [`scenario`]: seeded device workloads and base-load profiles.
//! - [`simulate`]: an in-process ADMM run over a scenario.
//! - [`ids`]: device and validator identities.
//!
//! Invariants: nothing here does IO or reads a clock; everything validators must agree on is
//! integer arithmetic with half-even rounding; floats appear only on the device side
//! ([`local`], [`central`], [`scenario`]).
#![warn(missing_docs)]

pub mod admm;
pub mod central;
pub mod ids;
pub mod local;
mod qp;
pub mod scenario;
pub mod simulate;

pub use qp::QpError;
