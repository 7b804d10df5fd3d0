//! The verifier-node crate's integration tests, one binary (one link of the whole dependency tree
//! instead of one per file); each file is a module named after what it tests.

mod common;
mod cluster;
#[path = "../../../device/tests/it/mosquitto.rs"]
mod mosquitto;
mod app;
mod checkpoint;
mod fuzz;
mod hostile;
mod identity;
mod log;
mod markets;
mod membership;
mod process;
mod settle;
mod sim;
mod standing;
mod status_page;
