//! Metering and settlement in the chain app (docs/protocol.md §9): a market that settles takes
//! signed readings after its final entry, refuses bad ones with typed reasons, and settles
//! at its meter deadline with every device's bill (a follower pays exactly Σ λ·x·Δ); the
//! ledger books them; a proposal that alters one bill is refused; the settling state survives
//! a snapshot.

use crate::common::*;
use circuits::fixed::SCALE;
use protocol::entry::{chain_id, Body, Entry};
use protocol::ids::DeviceId;
use protocol::settlement::{amount, Reading, SettlementSpec, SignedReading};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use verifier_node::app::{ChainApp, Pool, Step};

/// The test world with its genesis market settling: readings for 5 s after execution ends,
/// 50 €/MWh imbalance premium.
fn settling_world() -> World {
    let mut w = world();
    w.genesis.market.settlement = Some(SettlementSpec { meter_window_ms: 5_000, imbalance_premium: 50 * SCALE });
    w.chain = chain_id(&w.genesis);
    w
}

/// Validates and applies the entry built at `t` from `pool`.
fn step(app: &mut ChainApp, t: u64, pool: Pool<'_>) -> Entry {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let built = app.build(t, pool, &Default::default(), &mut rng).unwrap();
    assert!(built.dropped.is_empty(), "{:?}", built.dropped);
    app.validate(&built.entry, &built.updates, &Default::default(), &mut rng).unwrap();
    app.apply(&built.entry, &built.updates).unwrap();
    built.entry
}

/// The market scheduled to its final entry, every device updating every iteration.
fn final_market(w: &mut World) -> ChainApp {
    let mut app = validator(w);
    for k in 1..=w.genesis.market.max_iterations {
        if app.next_due().map(|d| d.1.step) == Some(Step::Final) {
            break;
        }
        let updates: Vec<_> = (0..3).map(|i| update(w, i, k, k)).collect();
        let t = app.market(7).unwrap().deadline(k);
        step(&mut app, t, Pool { updates: &updates, ..Default::default() });
    }
    let t = app.next_due().unwrap().0;
    assert!(matches!(step(&mut app, t, Pool::default()).body, Body::Final(_)));
    app
}

fn reading(w: &World, i: usize, slot: u32, energy: i64) -> SignedReading {
    let d = &w.devices[i];
    SignedReading::new(&d.key, &w.chain, Reading { market_id: 7, device: d.id(), slot, energy })
}

#[test]
fn readings_settle_at_the_meter_deadline_and_the_ledger_books_every_bill() {
    let mut w = settling_world();
    let mut app = final_market(&mut w);
    let m = app.market(7).unwrap();
    assert!(m.is_final() && !m.is_over() && !app.is_idle(), "a settling market is not over at its final entry");
    let (_, exec_end) = protocol::market::execution_span(&w.genesis.market);
    let deadline = m.meter_deadline().unwrap();
    assert_eq!(deadline, exec_end + 5_000);
    assert_eq!(app.next_due().map(|d| (d.0, d.1.step)), Some((deadline, Step::Settlement)));
    let settling = m.settling().unwrap().clone();
    let x = |i: usize| settling.schedules[&w.devices[i].id()].clone();
    let prices = settling.prices.clone();

    // Device 0 follows its schedule; device 1 draws 500 W more in slot 0; device 2 sends
    // nothing (settled by the default).
    let mut readings: Vec<SignedReading> = (0..T as u32).map(|t| reading(&w, 0, t, x(0)[t as usize] as i64)).collect();
    readings.extend((0..T as u32).map(|t| reading(&w, 1, t, x(1)[t as usize] as i64 + if t == 0 { 500 } else { 0 })));
    for list in [&readings[..T], &readings[T..]] {
        app.admit_readings(exec_end, list).unwrap();
    }
    let e = step(&mut app, exec_end, Pool { readings: &readings, ..Default::default() });
    let Body::Meter(batch) = &e.body else { panic!("a meter entry: {:?}", e.body) };
    assert_eq!(batch.readings.len(), 2 * T);
    assert_eq!(app.market(7).unwrap().settling().unwrap().readings.len(), 2 * T);
    // The same readings again (a gateway that has not seen them committed) are accepted
    // without effect; another energy for a committed slot is a duplicate. Nothing more to
    // build before the deadline.
    assert_eq!(app.admit_readings(exec_end + 1, &readings[..T]).unwrap(), vec![], "nothing to pool");
    assert_eq!(reading(&w, 0, 0, x(0)[0] as i64), readings[0], "the same body signs the same (ed25519 is deterministic)");
    assert_eq!(app.admit_readings(exec_end + 1, &[reading(&w, 0, 0, x(0)[0] as i64 + 1)]).unwrap_err().label(), "duplicate");
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    assert_eq!(app.build(exec_end + 1, Pool { readings: &readings, ..Default::default() }, &Default::default(), &mut rng).unwrap_err().label(), "not_due");

    // At the deadline: the settlement entry.
    let e = step(&mut app, deadline, Pool::default());
    let Body::Settlement(s) = &e.body else { panic!("a settlement entry: {:?}", e.body) };
    let slot_s = w.genesis.market.slot_seconds;
    let follower: i64 = (0..T).map(|t| amount(prices[t], x(0)[t] as i64, slot_s).unwrap()).sum();
    let bill = |i: usize| *s.bills.iter().find(|b| b.device == w.devices[i].id()).unwrap();
    assert_eq!((bill(0).energy, bill(0).imbalance, bill(0).metered_slots), (follower, 0, T as u32), "the follower pays exactly Σ λ·x·Δ");
    let q = prices[0].abs() + 50 * SCALE;
    assert_eq!(bill(1).imbalance, amount(q, 500, slot_s).unwrap(), "500 W over one slot at |λ| + premium");
    assert_eq!(bill(2).metered_slots, 0);
    assert_eq!(s.bills.len(), 3);
    let t = s.totals;
    assert_eq!(t.consumers_pay, t.producers_receive + t.imbalance_revenue + t.network_revenue);
    let m = app.market(7).unwrap();
    assert!(m.is_over() && m.is_settled() && app.is_idle());
    for i in 0..3 {
        let a = &app.accounts()[&w.devices[i].id()];
        assert_eq!(a.balance, bill(i).total());
        assert_eq!(a.bills, vec![(7, bill(i))]);
    }
    // Nothing is taken after the settlement.
    assert_eq!(app.check_reading(&reading(&w, 2, 0, 0), deadline - 1).unwrap_err().label(), "not_settling");
}

#[test]
fn bad_readings_are_refused_with_typed_reasons_and_an_altered_bill_is_not_accepted() {
    let mut w = settling_world();
    let before_final = validator(&w);
    let r0 = reading(&w, 0, 0, 100);
    let (_, exec_end) = protocol::market::execution_span(&w.genesis.market);
    assert_eq!(before_final.check_reading(&r0, exec_end).unwrap_err().label(), "not_settling", "no readings before the final entry");
    let app = final_market(&mut w);
    let deadline = app.market(7).unwrap().meter_deadline().unwrap();
    let label = |r: &SignedReading, at: u64| app.check_reading(r, at).unwrap_err().label();
    // Signed by another key.
    let mut forged = r0;
    forged.signature = SignedReading::new(&w.devices[1].key, &w.chain, r0.body).signature;
    assert_eq!(label(&forged, exec_end), "bad_signature");
    // An unknown market; a device not in the market.
    let other = SignedReading::new(&w.devices[0].key, &w.chain, Reading { market_id: 99, ..r0.body });
    assert_eq!(label(&other, exec_end), "unknown_market");
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[77; 32]);
    let unknown = SignedReading::new(&stranger, &w.chain, Reading { device: DeviceId(stranger.verifying_key().to_bytes()), ..r0.body });
    assert_eq!(label(&unknown, exec_end), "unknown_device");
    // A slot beyond T; a slot not over yet; after the deadline.
    assert_eq!(label(&reading(&w, 0, T as u32, 100), exec_end), "slot_out_of_range");
    let slot0_end = protocol::settlement::slot_end_ms(&w.genesis.market, 0);
    assert_eq!(label(&r0, slot0_end - 1), "slot_not_executed");
    assert!(app.check_reading(&r0, slot0_end).is_ok());
    assert_eq!(label(&r0, deadline), "late");
    // Beyond the attested nameplate (the battery's rated export, the EV's rated import).
    let limits = app.market(7).unwrap().enrolled()[&w.devices[0].id()].limits;
    assert_eq!(label(&reading(&w, 0, 0, limits.import_w as i64 + 1), exec_end), "implausible_reading");
    let battery = app.market(7).unwrap().enrolled()[&w.devices[1].id()].limits;
    assert_eq!(label(&reading(&w, 1, 0, -(battery.export_w as i64) - 1), exec_end), "implausible_reading");
    assert!(app.check_reading(&reading(&w, 1, 0, -(battery.export_w as i64)), exec_end).is_ok());
    // A request mixing devices, or slots out of order.
    assert_eq!(app.admit_readings(exec_end, &[r0, reading(&w, 1, 1, 0)]).unwrap_err().label(), "meter_batch");
    assert_eq!(app.admit_readings(exec_end, &[reading(&w, 0, 1, 0), r0]).unwrap_err().label(), "meter_batch");

    // A meter entry repeating a reading, and one of another market's reading, are refused.
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let tip = app.tip();
    let meter = |readings: Vec<SignedReading>| Entry {
        chain_id: w.chain,
        height: tip.height + 1,
        prev_hash: tip.hash,
        state_root: app.state_root().unwrap(),
        timestamp_ms: exec_end,
        body: Body::Meter(protocol::settlement::MeterBatch { market_id: 7, readings }),
    };
    assert_eq!(app.validate(&meter(vec![r0, r0]), &[], &Default::default(), &mut rng).unwrap_err().label(), "meter_batch");
    assert_eq!(app.validate(&meter(vec![forged]), &[], &Default::default(), &mut rng).unwrap_err().label(), "bad_signature");
    assert!(app.validate(&meter(vec![r0]), &[], &Default::default(), &mut rng).is_ok());

    // At the deadline a proposer that alters one bill (or the totals to match) is refused.
    let mut honest = app.clone();
    let built = honest.build(deadline, Pool::default(), &Default::default(), &mut rng).unwrap();
    let Body::Settlement(s) = &built.entry.body else { panic!() };
    let mut altered = s.clone();
    altered.bills[0].energy -= 1;
    altered.totals.network_revenue -= 1;
    altered.totals.consumers_pay -= 1;
    let bad = Entry { body: Body::Settlement(altered), ..built.entry.clone() };
    assert_eq!(honest.validate(&bad, &[], &Default::default(), &mut rng).unwrap_err().label(), "wrong_aggregates");
    honest.validate(&built.entry, &[], &Default::default(), &mut rng).unwrap();

    // The settling state (readings included) survives a snapshot: the restored validator
    // builds the same settlement.
    let mut with_reading = app.clone();
    let e = {
        let built = with_reading.build(exec_end, Pool { readings: &[r0], ..Default::default() }, &Default::default(), &mut rng).unwrap();
        with_reading.apply(&built.entry, &[]).unwrap();
        built.entry
    };
    assert!(matches!(e.body, Body::Meter(_)));
    let snap = with_reading.snapshot();
    let restored = ChainApp::from_snapshot(&genesis_entry(&w), w.keys.clone(), &snap).unwrap();
    assert_eq!(restored.snapshot(), snap);
    assert_eq!(restored.market(7).unwrap().settlement_body().unwrap(), with_reading.market(7).unwrap().settlement_body().unwrap());
    honest.apply(&built.entry, &[]).unwrap();
    assert!(honest.is_idle());
}

/// Real processes: 4 validators run a market that settles (`init --meter-window-s`); after
/// its execution the devices' gateways submit signed readings over QUIC (one follows its
/// schedule, one draws 300 W less in one slot, one sends none), a reading for a slot beyond T
/// is refused with its label; every validator commits the same settlement at the meter
/// deadline, `/accounts/{device}` shows the follower's balance as exactly Σ λ·x·Δ, and the
/// audit passes on every database (it recomputes the bills).
#[test]
fn four_validators_settle_a_market_from_readings_submitted_over_quic() {
    use crate::cluster::*;
    use protocol::messages::{DeviceRequest, DeviceResponse};
    use protocol::net::ValidatorClient;
    use std::time::Duration;

    let c = Cluster::init_with("settle", 4, 9, 4, 1500, 3, &["--slot-seconds", "1", "--execution-delay-s", "0", "--meter-window-s", "4"]);
    c.start_all();
    let devices: Vec<Device> = (0..3).map(Device::new).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let seen = rt.block_on(run_devices(&c, &devices, 0, Duration::from_secs(60)));
    let Some(Body::Final(f)) = seen.last().map(|c| c.entry.body.clone()) else { panic!("no final entry") };
    let Body::Genesis(g) = &c.genesis.body else { unreachable!() };
    assert!(g.market.settlement.is_some(), "init wrote the settlement rule");
    let (_, end) = protocol::market::execution_span(&g.market);
    let slots = circuits::Slots::new(T).unwrap();
    let x = |d: &Device| circuits::sample::schedule(circuits::ModelKind::Deferrable, slots, d.variant);
    let busiest = (0..T).max_by_key(|&t| x(&devices[1])[t]).unwrap();
    let refused = rt.block_on(async {
        std::thread::sleep(Duration::from_millis(end.saturating_sub(protocol::net::now_ms()) + 100));
        let endpoint = protocol::net::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut refused = vec![];
        for (i, d) in devices.iter().enumerate().take(2) {
            let energy = |t: usize| x(d)[t] as i64 - if i == 1 && t == busiest { 300.min(x(d)[t] as i64) } else { 0 };
            let list: Vec<SignedReading> =
                (0..T).map(|t| SignedReading::new(&d.key, &c.chain(), Reading { market_id: g.market.market_id, device: d.id(), slot: t as u32, energy: energy(t) })).collect();
            let beyond = SignedReading::new(&d.key, &c.chain(), Reading { market_id: g.market.market_id, device: d.id(), slot: T as u32, energy: 0 });
            for v in 0..c.n {
                let client = ValidatorClient::connect(&endpoint, c.quic(v), c.validator_key(v), &d.key).await.unwrap();
                let r = client.submit(&DeviceRequest::Meter(list.clone())).await.unwrap();
                assert_eq!(r, DeviceResponse::Accepted, "validator {v}");
                if let DeviceResponse::Rejected { label, .. } = client.submit(&DeviceRequest::Meter(vec![beyond])).await.unwrap() {
                    refused.push(label);
                }
            }
        }
        refused
    });
    assert_eq!(refused, vec!["slot_out_of_range"; 8]);
    c.wait_final(Duration::from_secs(30));
    let follower: i64 = (0..T).map(|t| amount(f.prices[t], x(&devices[0])[t] as i64, g.market.slot_seconds).unwrap()).sum();
    for v in 0..c.n {
        let a: serde_json::Value = serde_json::from_str(&c.get(v, &format!("/accounts/{}", protocol::ids::hex(&devices[0].id().0))).unwrap()).unwrap();
        assert_eq!(a["balance_micro_eur"].as_i64(), Some(follower), "validator {v}: {a}");
        assert_eq!(a["bills"][0]["metered_slots"].as_u64(), Some(T as u64), "{a}");
        let b: serde_json::Value = serde_json::from_str(&c.get(v, &format!("/accounts/{}", protocol::ids::hex(&devices[1].id().0))).unwrap()).unwrap();
        assert!(b["bills"][0]["imbalance_micro_eur"].as_i64().unwrap() > 0, "{b}");
        let m: serde_json::Value = serde_json::from_str(&c.get(v, "/markets").unwrap()).unwrap();
        assert!(m["markets"][0]["settlement"]["consumers_pay"].as_i64().is_some(), "{m}");
    }
    c.stop_all();
    c.assert_identical_logs();
    c.audit_all();
}

/// A real gateway meters its appliance: `device run` on a market that settles (1 s slots,
/// `--meter-window-s`) reads a simulated meter (`[appliances.meter]`, ±10 %) after each
/// executed slot, submits the signed readings to every validator, waits for the settlement
/// and keeps its bill; every reading is in the committed bill, `device bill --json` prints the
/// same total as the validators' `/accounts/{device}`, and the audit passes.
#[test]
fn a_gateway_meters_its_appliance_after_each_slot_and_keeps_its_bill() {
    use crate::cluster::*;
    use std::process::Command;
    use std::time::Duration;

    let c = Cluster::init_with("meter", 4, 10, 6, 1500, 3, &["--slot-seconds", "1", "--execution-delay-s", "0", "--meter-window-s", "4"]);
    let appliance = "[[appliances]]\nname = \"ev\"\n[appliances.spec]\nmodel = \"deferrable\"\nmax_power_kw = 3.0\nenergy_min_kwh = 0.001\nenergy_max_kwh = 0.002\n\
                     [appliances.meter]\nsource = \"simulated\"\ndeviation_pct = 10.0\nseed = 3\n";
    let (gateway, device) = c.gateway_with("home", appliance);
    c.start_all();
    let gw = c.spawn_device(&gateway, &["run", "--markets", "1", "--timeout-s", "90"], "gateway.log");
    let text = c.wait_device(gw, "gateway.log", Duration::from_secs(100));
    assert!(text.contains("meter readings submitted") && text.contains("settled: bills committed"), "{text}");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(c.dir.join("home.state.json")).unwrap()).unwrap();
    let m = &state["markets"]["1"];
    assert_eq!(m["readings"]["ev"].as_object().map(|r| r.len()), Some(T), "a reading per slot: {m}");
    assert_eq!(m["bills"]["ev"]["metered_slots"].as_u64(), Some(T as u64), "every reading is in the bill: {m}");
    let out = Command::new(device_bin()).args(["bill", "--json", "--config"]).arg(&gateway).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bill: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let total = bill[0]["bill_micro_eur"]["energy"].as_i64().unwrap() + bill[0]["bill_micro_eur"]["imbalance"].as_i64().unwrap();
    let table = Command::new(device_bin()).args(["bill", "--config"]).arg(&gateway).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("4 of 4 slots metered") && !table.contains("note:"), "{table}");
    c.wait_final(Duration::from_secs(20));
    let a: serde_json::Value = serde_json::from_str(&c.get(0, &format!("/accounts/{device}")).unwrap()).unwrap();
    assert_eq!(a["balance_micro_eur"].as_i64(), Some(total), "{a}");
    c.stop_all();
    let (ok, out) = c.audit(0);
    assert!(ok, "{out}");
}

/// From registration to settlement over real processes and a real broker: 4 validators run a
/// market that settles (2 s slots); two gateways read their EVs' meters over MQTT from
/// mosquitto (one a plain power topic in W, one a Shelly Gen2 `aenergy` counter), and the
/// second drops out mid-day (killed after its first readings went in). Then every validator
/// is down for a while: the first gateway's readings meanwhile reach no validator, and it
/// sends them again once they are back. Every validator commits the same settlement: the
/// first gateway's bill has every slot metered and the total `device bill` prints; the
/// second's has the slots it read and the rest settled by the default; `/accounts` is the
/// same on every node, and the audit passes on every database.
#[test]
fn readings_over_mqtt_settle_on_four_validators_while_a_gateway_drops_out_mid_day() {
    use crate::cluster::*;
    use crate::mosquitto::Mosquitto;
    use std::process::Command;
    use std::time::{Duration, Instant};

    let c = Cluster::init_with("mqtt-settle", 4, 11, 6, 1500, 3, &["--slot-seconds", "2", "--execution-delay-s", "0", "--meter-window-s", "40"]);
    let broker_port = c.quic(0).port() + 9;
    let _broker = Mosquitto::start(broker_port);
    let ev = |meter: &str| {
        format!(
            "[[appliances]]\nname = \"ev\"\n[appliances.spec]\nmodel = \"deferrable\"\nmax_power_kw = 3.0\nenergy_min_kwh = 0.001\nenergy_max_kwh = 0.002\n\
             [appliances.meter]\n{meter}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\n"
        )
    };
    let (steady, steady_id) = c.gateway_with("steady", &ev("source = \"topic\"\ntopic = \"home/steady/ev/power\"\nunit = \"w\""));
    let (leaving, leaving_id) = c.gateway_with("leaving", &ev("source = \"shelly\"\ndevice_id = \"shellyplus1pm-leaving\""));
    // The meters: 1,200 W on the power topic, 800 W on the Shelly's counter, every 100 ms.
    let mut meters = crate::mosquitto::Meters::start(broker_port, "home/steady/ev/power", 1200, "shellyplus1pm-leaving", 800.0, 41.0);
    c.start_all();
    let args = ["run", "--markets", "1", "--timeout-s", "120"];
    let first = c.spawn_device(&steady, &args, "steady.log");
    let mut second = c.spawn_device(&leaving, &args, "leaving.log");
    // The second gateway drops out once its first readings are in.
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(c.dir.join("leaving.log")).unwrap_or_default();
        if text.contains("meter readings submitted") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(90) && second.try_wait().unwrap().is_none(), "the second gateway read no meter:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    second.kill().unwrap();
    second.wait().unwrap();
    // Both gateways' first readings (slot 0, read at the same time) are committed; then
    // every validator goes down until the first gateway found its readings reach none.
    let t0 = Instant::now();
    while c.get(0, "/markets").and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok()).and_then(|m| m["markets"][0]["readings"].as_u64()).unwrap_or(0) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(20), "the first readings were not committed");
        std::thread::sleep(Duration::from_millis(50));
    }
    for v in 0..c.n {
        c.kill(v);
    }
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(c.dir.join("steady.log")).unwrap_or_default();
        if text.contains("meter readings accepted by no validator") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(40), "the first gateway never missed the validators:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.start_all();
    let text = c.wait_device(first, "steady.log", Duration::from_secs(120));
    assert!(text.contains("sending readings again that no Meter entry holds yet"), "{text}");
    meters.stop();
    assert!(text.contains("subscribed to the meter topics") && text.contains("settled: bills committed"), "{text}");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(c.dir.join("steady.state.json")).unwrap()).unwrap();
    let m = &state["markets"]["1"];
    let read: Vec<i64> = m["readings"]["ev"].as_object().unwrap().values().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(read, vec![1200; T], "the power topic's mean over each slot: {m}");
    let out = Command::new(device_bin()).args(["bill", "--json", "--config"]).arg(&steady).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bill: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let total = bill[0]["bill_micro_eur"]["energy"].as_i64().unwrap() + bill[0]["bill_micro_eur"]["imbalance"].as_i64().unwrap();
    c.wait_final(Duration::from_secs(20));
    let account = |v: u16, id: &str| -> serde_json::Value { serde_json::from_str(&c.get(v, &format!("/accounts/{id}")).unwrap()).unwrap() };
    let (a, b) = (account(0, &steady_id), account(0, &leaving_id));
    assert_eq!(a["balance_micro_eur"].as_i64(), Some(total), "{a}");
    assert_eq!(a["bills"][0]["metered_slots"].as_u64(), Some(T as u64), "{a}");
    let metered = b["bills"][0]["metered_slots"].as_u64().unwrap();
    assert!((1..T as u64).contains(&metered), "the gateway that dropped out read some slots, not all: {b}");
    assert!(b["bills"][0]["imbalance_micro_eur"].as_i64().unwrap() > 0, "its readings are off its schedule: {b}");
    // The whole ledger: two accounts whose balances sum to what the grid kept.
    let ledger = |v: u16| -> serde_json::Value { serde_json::from_str(&c.get(v, "/accounts").unwrap()).unwrap() };
    let markets: serde_json::Value = serde_json::from_str(&c.get(0, "/markets").unwrap()).unwrap();
    let t = &markets["markets"][0]["settlement"];
    let kept = t["network_revenue"].as_i64().unwrap() + t["imbalance_revenue"].as_i64().unwrap();
    let l = ledger(0);
    assert_eq!((l["count"].as_u64(), l["sum_micro_eur"].as_i64()), (Some(2), Some(kept)), "{l} against {t}");
    assert_eq!(l["sum_micro_eur"].as_i64(), Some(a["balance_micro_eur"].as_i64().unwrap() + b["balance_micro_eur"].as_i64().unwrap()));
    for v in 1..c.n {
        assert_eq!(account(v, &steady_id), a, "validator {v}");
        assert_eq!(account(v, &leaving_id), b, "validator {v}");
        assert_eq!(ledger(v), l, "validator {v}");
    }
    c.stop_all();
    c.assert_identical_logs();
    c.audit_all();
}

/// A genesis whose market breaks a rule every opened market is checked for — a meter window
/// of 0, a compressed slot longer than Δ or of 0 ms — starts no validator.
#[test]
fn a_genesis_market_outside_the_rules_starts_no_validator() {
    for (what, tweak) in [
        ("meter window", (|m: &mut protocol::entry::MarketSpec| m.settlement = Some(SettlementSpec { meter_window_ms: 0, imbalance_premium: 0 })) as fn(&mut protocol::entry::MarketSpec)),
        ("compressed slot", |m| m.compressed_slot_ms = Some(900_001)),
        ("slot length", |m| m.compressed_slot_ms = Some(0)),
    ] {
        let mut w = world();
        tweak(&mut w.genesis.market);
        let entry = Entry::genesis(w.genesis.clone(), 0);
        let err = ChainApp::new(&entry, w.keys.clone()).err().unwrap_or_else(|| panic!("{what}: accepted")).to_string();
        assert!(err.contains(what), "{what}: {err}");
    }
    let mut w = world();
    w.genesis.market.compressed_slot_ms = Some(900_000);
    assert!(ChainApp::new(&Entry::genesis(w.genesis.clone(), 0), w.keys.clone()).is_ok(), "a slot of Δ exactly is fine");
}
