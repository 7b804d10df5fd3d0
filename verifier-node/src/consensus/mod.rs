//! Consensus: Malachite's Tendermint core (`arc-malachitebft-core-consensus`, pinned) driven by
//! our sans-IO [`node::Node`]. [`context`] maps our types onto Malachite's `Context`; [`wire`]
//! holds what validators send each other and what they write ahead.

pub mod context;
pub mod node;
pub mod wire;
