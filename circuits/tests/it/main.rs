//! The circuits crate's integration tests, one binary (one link of the whole dependency tree
//! instead of one per file); each file is a module named after what it tests.

mod common;
mod agreement;
mod bad_input;
mod full_day;
mod mutation;
mod public_inputs;
