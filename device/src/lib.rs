//! `device`: the home-gateway agent.
//!
//! - [`config`]: `gateway.toml` — the gateway key, market, validators, proving keys and each
//!   appliance's private parameters and costs; appliance keys and salts are derived from the
//!   gateway secret.
//! - [`agent`]: the sans-IO core — a light client over the log that answers each accepted entry
//!   with enrollments or proven updates, and records what it did ([`agent::AgentState`]).
//! - [`state`]: the persisted agent state (atomic writes).
//! - [`actuation`]: sans-IO — the committed schedule as a timeline of MQTT publications per
//!   adapter (setpoint, duty cycle, Tasmota, Shelly Gen2, Home Assistant discovery and state),
//!   and the executor that walks it and reconciles the current state.
//! - [`metering`]: sans-IO — an appliance's meter reading of an executed slot (Shelly,
//!   Tasmota, a plain MQTT topic, or simulated), signed for a market that settles.
//! - [`mqtt`]: the broker edge — rumqttc with reconnect/backoff, and the execution loop.
//! - [`host`]: a gateway's runtime — QUIC to the validators, following the log, submitting,
//!   then executing over MQTT ([`host::run_gateway`]).
//!
//! The binary (`device init | enroll | run | schedule | bill | simulate`) wires these to QUIC
//! (`protocol::net`) and MQTT.
#![warn(missing_docs)]

pub mod actuation;
pub mod agent;
pub mod config;
pub mod host;
pub mod links;
pub mod metering;
pub mod mqtt;
pub mod state;
