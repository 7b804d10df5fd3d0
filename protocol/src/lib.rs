//! `protocol`: the shared language of validators and devices, and the maths they run. No IO.
//!
//! - [`admm`]: the validators' fixed-point ADMM engine (x̄, z̄, u, residuals, prices).
//! - [`local`]: the device's local step (clarabel), rounding and repair to circuit-exact watts.
//! - [`central`]: the centralised reference optimum (tests and benchmarks only).
//! - [`clock`]: the market clock, a sans-IO state machine fed `now`.
//! - [`scenario`]: seeded device workloads and base-load profiles.
//! - [`simulate`]: an in-process ADMM run over a scenario.
//! - [`ids`]: device and validator identities; [`sign`]: domain-separated ed25519.
//! - [`membership`]: enrollment authorities' attestations of devices, their nameplates and
//!   revocations; [`market`]: market operators' openings and devices' withdrawals.
//! - [`codec`]: the canonical encoding (Borsh with size caps, no trailing bytes, re-encode check).
//! - [`messages`]: signed enrollments and updates; [`entry`]: log entries, commit certificates,
//!   the light client; [`merkle`]: schedule roots; [`snapshot`]: chain-state snapshots and
//!   trusted checkpoints; [`settlement`]: meter readings and bills.
//! - `net` (feature `net`): the QUIC edge shared by validators and devices — TLS identities
//!   derived from ed25519 keys, pinned peers, capped frames, and the device client.
//! - `files` (feature `files`): secret key and genesis files, and `ConfigError`, the error of
//!   every configuration loader.
//!
//! Invariants: outside `net` and `files` (the only modules that do IO), nothing here does IO or reads a clock; everything validators must agree on is
//! integer arithmetic with half-even rounding; floats appear only on the device side
//! ([`local`], [`central`], [`scenario`]).
#![warn(missing_docs)]

pub mod admm;
pub mod backoff;
pub mod central;
pub mod clock;
pub mod codec;
pub mod entry;
#[cfg(feature = "files")]
pub mod files;
pub mod ids;
pub mod local;
pub mod market;
pub mod membership;
pub mod merkle;
pub mod messages;
#[cfg(feature = "net")]
pub mod net;
mod qp;
pub mod scenario;
pub mod sign;
pub mod settlement;
pub mod simulate;
pub mod snapshot;

pub use qp::QpError;
