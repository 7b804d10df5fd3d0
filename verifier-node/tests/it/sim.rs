//! Seeded simulations of a 4-validator cluster over a lossy, reordering, partitioning network
//! with crashes, running two markets on one chain: at most one decision per height, valid hash
//! chains, agreement, and progress to the final entry of every market. A failing seed is printed; replay it with
//! `SIM_SEED=<seed> cargo nextest run --workspace -E 'test(=sim::one_seed)'`.

use crate::common::*;
use protocol::entry::{Body, Entry};
use verifier_node::consensus::node::Byzantine;
use verifier_node::sim::{Devices, NetConfig, Sim};

const HORIZON_MS: u64 = 60_000;

fn run_seed(w: &World, genesis: &Entry, devices: &Devices, seed: u64, byzantine: Vec<Option<Byzantine>>) -> Result<Sim, String> {
    run_net(w, genesis, devices, seed, byzantine, NetConfig::random(seed, 4, 12_000))
}

fn run_net(w: &World, genesis: &Entry, devices: &Devices, seed: u64, byzantine: Vec<Option<Byzantine>>, net: NetConfig) -> Result<Sim, String> {
    run_until(w, genesis, devices, seed, byzantine, net, HORIZON_MS)
}

fn run_until(w: &World, genesis: &Entry, devices: &Devices, seed: u64, byzantine: Vec<Option<Byzantine>>, net: NetConfig, horizon_ms: u64) -> Result<Sim, String> {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let mut sim = Sim::new(seed, genesis.clone(), w.keys.clone(), w.validators.clone(), byzantine, net.clone(), devices.clone());
    sim.run(horizon_ms);
    sim.check().map_err(|e| format!("seed {seed} ({net:?}): {e}"))?;
    if !sim.all_final() {
        return Err(format!("seed {seed} ({net:?}): not final by {horizon_ms} ms; tips {:?}", sim.tips()));
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

/// A market that settles: after its execution every device's gateway sends readings that
/// follow the schedule (device 1 draws 400 W more in slot 2); every honest node commits the
/// same settlement at the meter deadline, and with a Byzantine proposer that adds 1,000 µ€ to
/// the first bill it proposes, the committed bills are still the rule's (the follower pays
/// exactly Σ λ·x·Δ).
#[test]
fn a_settling_market_settles_alike_on_every_node_and_an_altered_bill_is_never_committed() {
    use protocol::settlement::{amount, Reading, SettlementSpec, SignedReading};
    let (w, genesis, mut devices) = sim_world_with(3, |m| {
        m.execution_start_ms = 20_000;
        m.settlement = Some(SettlementSpec { meter_window_ms: 10_000, imbalance_premium: 50 * circuits::fixed::SCALE });
    });
    let end = protocol::market::execution_span(&w.genesis.market).1;
    for (i, d) in w.devices.iter().enumerate() {
        let x = circuits::sample::schedule(d.opening.params.kind(), slots(), i as u16);
        let list = (0..T as u32)
            .map(|t| {
                let extra = if i == 1 && t == 2 { 400 } else { 0 };
                SignedReading::new(&d.key, &w.chain, Reading { market_id: 7, device: d.id(), slot: t, energy: x[t as usize] as i64 + extra })
            })
            .collect();
        devices.readings.push((end + 100 + i as u64, list));
    }
    let net = NetConfig { drop: 0.0, gst_ms: 0, duplicate: 0.05, delay_ms: (1, 30), partitions: vec![], crashes: vec![] };
    for byzantine in [None, Some(Byzantine::WrongAggregates)] {
        let sim = run_until(&w, &genesis, &devices, 21, vec![None, None, byzantine, None], net.clone(), end + 60_000).unwrap();
        for n in sim.nodes().filter(|n| byzantine.is_none() || n.index() != 2) {
            let settlement = n.log().entries().iter().find_map(|c| if let Body::Settlement(s) = &c.entry.body { Some(s.clone()) } else { None }).expect("settled");
            let Some(Body::Final(f)) = n.log().entries().iter().map(|c| &c.entry.body).find(|b| matches!(b, Body::Final(_))).cloned() else { panic!("final") };
            let x0 = circuits::sample::schedule(w.devices[0].opening.params.kind(), slots(), 0);
            let follower: i64 = (0..T).map(|t| amount(f.prices[t], x0[t] as i64, w.genesis.market.slot_seconds).unwrap()).sum();
            let bill = |i: usize| *settlement.bills.iter().find(|b| b.device == w.devices[i].id()).unwrap();
            assert_eq!((bill(0).energy, bill(0).imbalance, bill(0).metered_slots), (follower, 0, T as u32), "{byzantine:?}");
            assert!(bill(1).imbalance > 0, "{byzantine:?}");
            assert_eq!(n.app().accounts()[&w.devices[0].id()].balance, follower);
            let meters = n.log().entries().iter().filter(|c| matches!(c.entry.body, Body::Meter(_))).count();
            assert!(meters >= 1, "the readings are in the log");
        }
        if byzantine.is_some() {
            let refused: u64 = sim.nodes().filter(|n| n.index() != 2).map(|n| n.stats().invalid_payloads).sum();
            assert!(refused > 0, "no honest node saw the altered proposal");
        }
    }
}

/// Compact proposals: payloads carry no update bodies. Validator 3 receives no update from any
/// device, so it fetches every body it sees proposed from its peers; validator 0 withholds
/// bodies, so a request to it is retried with the next peer. Everyone still finalizes with
/// the same log, only validator 3 fetches, and the bodies sent are those it lacked (not one
/// copy per peer and proposal).
#[test]
fn a_validator_without_the_updates_fetches_their_bodies_even_past_a_withholding_peer() {
    let (w, genesis, mut devices) = sim_world(3);
    devices.updates_never_reach = Some(3);
    let net = NetConfig { drop: 0.0, gst_ms: 0, duplicate: 0.0, delay_ms: (1, 5), partitions: vec![], crashes: vec![] };
    let sim = run_net(&w, &genesis, &devices, 3, vec![Some(Byzantine::WithholdBodies)], net).unwrap();
    let node = |i: u16| sim.nodes().find(|n| n.index() == i).unwrap();
    let in_log: Vec<_> = node(3).log().entries().iter().flat_map(|c| &c.updates).collect();
    assert!(!in_log.is_empty(), "validator 3 committed no update");
    // What it did not fetch came in entries it caught up on (one update per device each).
    let (fetched, synced) = (node(3).stats().bodies_fetched, node(3).stats().synced);
    assert!(fetched > 0 && fetched + 3 * synced >= in_log.len() as u64, "validator 3 fetched {fetched} bodies, synced {synced} entries, committed {} updates", in_log.len());
    for i in [1, 2] {
        assert_eq!(node(i).stats().bodies_fetched, 0, "validator {i} held every update and fetched some");
    }
    assert_eq!(node(0).stats().bodies_served, 0, "the withholding validator answered");
    let body_bytes: u64 = in_log.iter().map(|u| protocol::codec::encode(*u).len() as u64).sum();
    let sent = sim.sent_bytes.get("bodies").copied().unwrap_or(0);
    assert!(sent > 0 && sent <= 2 * body_bytes, "{sent} bytes of bodies sent for {body_bytes} bytes committed");
}
