//! `device`: the home-gateway agent.
//!
//! - [`config`]: `gateway.toml` — the gateway key, market, validators, proving keys and each
//!   appliance's private parameters and costs; appliance keys and salts are derived from the
//!   gateway secret.
//! - [`agent`]: the sans-IO core — a light client over the log that answers each accepted entry
//!   with enrollments or proven updates, and records what it did ([`agent::AgentState`]).
//! - [`state`]: the persisted agent state (atomic writes).
//!
//! The binary (`device init | enroll | run | schedule`) wires these to QUIC
//! (`protocol::net`). Actuation over MQTT is the next step (issue 8).
#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod state;
