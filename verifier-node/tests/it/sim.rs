//! Seeded simulations of a 4-validator cluster over a lossy, reordering, partitioning network
//! with crashes, running two markets on one chain: at most one decision per height, valid hash
//! chains, agreement, and progress to the final entry of every market. A failing seed is printed; replay it with
//! `SIM_SEED=<seed> cargo nextest run --workspace -E 'test(=sim::one_seed)'`.

use crate::common::*;
use protocol::entry::Entry;
use verifier_node::consensus::node::Byzantine;
use verifier_node::sim::{Devices, NetConfig, Sim};

const HORIZON_MS: u64 = 60_000;

fn run_seed(w: &World, genesis: &Entry, devices: &Devices, seed: u64, byzantine: Vec<Option<Byzantine>>) -> Result<Sim, String> {
    run_net(w, genesis, devices, seed, byzantine, NetConfig::random(seed, 4, 12_000))
}

fn run_net(w: &World, genesis: &Entry, devices: &Devices, seed: u64, byzantine: Vec<Option<Byzantine>>, net: NetConfig) -> Result<Sim, String> {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let mut sim = Sim::new(seed, genesis.clone(), w.keys.clone(), w.validators.clone(), byzantine, net.clone(), devices.clone());
    sim.run(HORIZON_MS);
    sim.check().map_err(|e| format!("seed {seed} ({net:?}): {e}"))?;
    if !sim.all_final() {
        return Err(format!("seed {seed} ({net:?}): not final by {HORIZON_MS} ms; tips {:?}", sim.tips()));
    }
    Ok(sim)
}

/// A run on a network that loses nothing, checked safe and final.
fn clean_run(w: &World, genesis: Entry, devices: Devices) -> Sim {
    let net = NetConfig { drop: 0.0, gst_ms: 0, duplicate: 0.0, delay_ms: (1, 5), partitions: vec![], crashes: vec![] };
    let mut sim = Sim::new(1, genesis, w.keys.clone(), w.validators.clone(), vec![], net, devices);
    sim.run(HORIZON_MS);
    sim.check().unwrap();
    assert!(sim.all_final(), "tips {:?}", sim.tips());
    sim
}

#[test]
fn a_clean_network_reaches_final_with_every_update() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let (w, genesis, devices) = sim_world(3);
    let sim = clean_run(&w, genesis, devices);
    for n in sim.nodes() {
        assert_eq!(n.app().market(7).unwrap().enrolled().len(), 3);
        assert_eq!(n.stats().proofs_verified, 9, "every update of 3 devices × 3 iterations is in the log");
    }
}

/// The genesis market and a second one the operator opens at 1 s, registering while the first
/// schedules: both finalize on every node with every update, in one log.
#[test]
fn two_markets_on_a_clean_network_both_finalize() {
    let (w, genesis, devices) = two_market_sim_world(3);
    let sim = clean_run(&w, genesis, devices);
    for n in sim.nodes() {
        for m in [7, 8] {
            assert_eq!(n.app().market(m).unwrap().enrolled().len(), 3, "market {m}");
        }
        assert_eq!(n.stats().proofs_verified, 18, "every update of 3 devices × 3 iterations × 2 markets is in the log");
        let opens = n.log().entries().iter().filter(|c| matches!(c.entry.body, protocol::entry::Body::Open(_))).count();
        assert_eq!(opens, 1);
        // A snapshot every 4 heights, the newest two kept; `check` found each to hash to its
        // entry's state root.
        let tip = n.log().entries().len() as u64 - 1;
        assert_eq!(n.stats().snapshots_written, tip / verifier_node::sim::SIM_SNAPSHOT_INTERVAL, "tip {tip}");
        assert_eq!(n.log().snapshots().len(), 2);
    }
}

/// Every seed runs two markets (the second opened while the first registers).
fn seeds(range: std::ops::Range<u64>) {
    let (w, genesis, devices) = two_market_sim_world(3);
    for seed in range {
        if let Err(e) = run_seed(&w, &genesis, &devices, seed, vec![]) {
            panic!("{e}\nreplay: SIM_SEED={seed} cargo nextest run --workspace -E 'test(=sim::one_seed)'");
        }
    }
}

#[test]
fn seeds_0000_0250() {
    seeds(0..250);
}

#[test]
fn seeds_0250_0500() {
    seeds(250..500);
}

#[test]
fn seeds_0500_0750() {
    seeds(500..750);
}

#[test]
fn seeds_0750_1000() {
    seeds(750..1000);
}

#[test]
fn one_seed() {
    let seed = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let (w, genesis, devices) = two_market_sim_world(3);
    run_seed(&w, &genesis, &devices, seed, vec![]).unwrap();
}

#[test]
fn byzantine_proposers_never_get_bad_entries_committed() {
    let (mut w, genesis, mut devices) = sim_world(3);
    // Device 2 submits an update for iteration 3 (height 6 after two batches and the closing
    // batch, which validator 2 proposes in round 0) whose proof was made for iteration 2:
    // honest proposers drop it, the Byzantine one includes it.
    let bad = update(&mut w, 2, 3, 2);
    devices.updates.get_mut(&(7, 3)).unwrap()[2] = bad.clone();
    // A reliable network, so that validator 2 is the round-0 proposer of height 6 (iteration 3).
    let net = NetConfig { drop: 0.0, gst_ms: 0, duplicate: 0.05, delay_ms: (1, 30), partitions: vec![], crashes: vec![] };
    for (b, seed) in [(Byzantine::Equivocate, 11), (Byzantine::IncludeInvalidProofs, 12), (Byzantine::WrongAggregates, 13)] {
        let sim = run_net(&w, &genesis, &devices, seed, vec![None, None, Some(b), None], net.clone()).unwrap();
        let honest: Vec<_> = sim.nodes().filter(|n| n.index() != 2).collect();
        for n in &honest {
            assert!(n.app().is_idle(), "{b:?}");
            // The bad update is in no committed entry.
            for c in n.log().entries() {
                assert!(!c.updates.contains(&bad), "{b:?}");
            }
        }
        if b != Byzantine::Equivocate {
            // Every proposal of the Byzantine node was refused by someone.
            let refused: u64 = honest.iter().map(|n| n.stats().invalid_payloads).sum();
            assert!(refused > 0, "{b:?}: no honest node saw an invalid proposal");
        }
    }
}
