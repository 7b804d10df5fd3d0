//! The device crate's integration tests, one binary (one link of the whole dependency tree
//! instead of one per file); each file is a module named after what it tests.

mod common;
mod mosquitto;
mod actuation;
mod days;
mod gateway;
