//! `verifier-node`: a gridproof validator.
//!
//! Today this crate holds the deterministic core every validator runs, [`app`]: the market's
//! replicated state machine that admits enrollments and updates, builds an iteration proposal
//! from the updates it holds, and validates a proposal from another validator by re-verifying
//! every included update (signature, enrollment, market and iteration, duplicates, proofs in a
//! batch) and recomputing the aggregates. [`store`] is the RocksDB log (atomic, synced
//! decisions that must extend the tip), and [`audit`] replays a stored log from genesis and
//! re-checks every link, certificate, proof and aggregate. Consensus (Malachite), QUIC and
//! HTTP will drive this core from the edges (issue 7).
#![warn(missing_docs)]

pub mod app;
pub mod audit;
pub mod config;
pub mod consensus;
pub mod host;
pub mod http;
pub mod metrics;
pub mod roles;
pub mod sim;
pub mod store;
