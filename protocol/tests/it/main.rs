//! The protocol crate's integration tests, one binary (one link of the whole dependency tree
//! instead of one per file); each file is a module named after what it tests.

mod admm;
mod clock;
mod local_step;
mod settlement;
mod wire;
