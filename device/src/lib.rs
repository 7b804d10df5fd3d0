//! `device`: the home-gateway agent.
//!
//! - [`config`]: `gateway.toml` — the gateway key, market, validators, proving keys and each
//!   appliance's private parameters and costs; appliance keys and salts are derived from the
//!   gateway secret.
//! - [`agent`]: the sans-IO core — a light client over the log that answers each accepted entry
//!   with enrollments or proven updates, and records what it did ([`agent::AgentState`]).
//! - [`state`]: the persisted agent state (atomic writes).
//! - [`actuation`]: sans-IO — the committed schedule as a timeline of MQTT publications per
//!   adapter (setpoint, duty cycle, Tasmota, Shelly Gen2, evcc), and the executor that walks
//!   it and reconciles the current state.
//! - [`home_assistant`]: sans-IO — MQTT discovery configs, the plan as retained attributes,
//!   and the timed states (price, planned power, next change, running) of a schedule.
//! - [`feedback`]: sans-IO — what devices say back while a schedule executes: a Tasmota or
//!   Shelly back online gets its current state again; a Shelly's refusals are reported.
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
pub mod feedback;
pub mod home_assistant;
pub mod host;
pub mod links;
pub mod metering;
pub mod mqtt;
pub mod state;
