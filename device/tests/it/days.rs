//! A gateway day after day: it takes part in every market of the chain, bids each day's
//! parameters (weekly pattern, overrides file) with fresh commitments, withdraws what the
//! household turned off before the close, and keeps each market's state apart.
//!
//! - sans-IO: the agent fed certified entries of two markets (bids, the weekly "off", an
//!   override, fresh salts, a withdrawal);
//! - process: `device run --markets 2` against four in-process validators, the market
//!   operator opening the second market while the first schedules, the overrides file edited
//!   after the bid is in the log.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use device::config::Overrides;
use ed25519_dalek::SigningKey;
use protocol::entry::{sign_vote, Body, Certified, CommitCertificate, EnrollmentBatch, Entry, MarketSpec};
use protocol::market::SignedMarketOpen;
use protocol::messages::DeviceRequest;

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A chain of certified entries after a genesis, as a quorum would sign them.
struct Chain {
    tip: Entry,
    validators: Vec<SigningKey>,
}

impl Chain {
    fn next(&mut self, body: Body) -> Certified {
        let e = Entry { chain_id: self.tip.chain_id, height: self.tip.height + 1, prev_hash: self.tip.hash(), state_root: [0; 32], timestamp_ms: self.tip.timestamp_ms + 1, body };
        self.tip = e.clone();
        let votes = self.validators[..3].iter().enumerate().map(|(i, k)| sign_vote(k, &e.chain_id, i as u16, e.height, 0, &e.hash())).collect();
        Certified { certificate: CommitCertificate { height: e.height, round: 0, hash: e.hash(), votes }, entry: e, updates: vec![] }
    }
}

/// The next day's market after `spec`: its execution one T·Δ later, registration open until
/// `close_ms`.
fn next_day(spec: &MarketSpec, close_ms: u64) -> MarketSpec {
    let (_, end) = protocol::market::execution_span(spec);
    MarketSpec { market_id: spec.market_id + 1, registration_close_ms: close_ms, execution_start_ms: end, ..spec.clone() }
}

const BOILER_DAILY: &str = "[[appliances]]\nname = \"boiler\"\n[appliances.spec]\nmodel = \"deferrable\"\nmax_power_kw = 2.0\nenergy_min_kwh = 0.5\nenergy_max_kwh = 1.5\n[appliances.nameplate]\nmax_import_kw = 3.0\n\n";

#[test]
fn the_agent_bids_each_days_plan_with_fresh_commitments_and_withdraws_what_turned_off() {
    let m = market("days-agent", 120_000);
    let day1 = spec(&m);
    // Day 2 is one T·Δ (an hour) after day 1; the EV is off on day 2's weekday.
    let day2 = next_day(&day1, day1.registration_close_ms);
    let (_, weekday2) = device::config::market_day(&day2, 0);
    let (_, weekday1) = device::config::market_day(&day1, 0);
    let ev = format!("{EV}[appliances.week]\n{} = \"off\"\n\n", WEEKDAYS[weekday2]);
    let cfg = gateway_toml(&m, "agent", &format!("{ev}{BOILER_DAILY}"));
    init_for_days(&m, &cfg, 30);
    let gw = device::config::Gateway::load(&cfg).unwrap();
    let keys = gw.proving_keys().unwrap();
    let mut agent = device::agent::Agent::new(gw.clone(), keys, Default::default()).unwrap();
    let mut chain = Chain { tip: m.genesis.clone(), validators: m.validators.clone() };
    let now = m.genesis.timestamp_ms;
    let none = Overrides::default();

    // Day 1 (the genesis market): both bid, unless day 1 falls on day 2's weekday too.
    agent.plan(&none, now);
    let bids1 = agent.enrollments(now);
    let expected = if weekday1 == weekday2 { 1 } else { 2 };
    assert_eq!(bids1.len(), expected, "day 1 bids");
    assert!(agent.enrollments(now).iter().all(|e| bids1.iter().any(|b| b.body.device == e.body.device)), "sent again, never new ones");
    let batch = chain.next(Body::Enrollment(EnrollmentBatch { market_id: day1.market_id, enrollments: bids1.clone(), withdrawals: vec![] }));
    assert_eq!(agent.on_entry(&batch, now).unwrap(), Some((day1.market_id, 1)), "every bid in: iteration 1 opens");

    // Day 2 opens (an operator's entry): the EV is off by the weekly pattern, the boiler bids
    // the override's parameters with a fresh salt.
    let open = chain.next(Body::Open(SignedMarketOpen::new(&operator(), &m.genesis.chain_id, day2.clone())));
    assert_eq!(agent.on_entry(&open, now).unwrap(), None);
    let names = vec!["ev".to_string(), "boiler".to_string()];
    let more = r#"{"market-6": {"boiler": {"model": "deferrable", "max_power_kw": 2.0, "energy_min_kwh": 1.2, "energy_max_kwh": 1.4}}}"#;
    let overrides = Overrides::parse(more, &names).unwrap();
    agent.plan(&overrides, now);
    let bids2 = agent.enrollments(now);
    assert_eq!(bids2.len(), 1, "only the boiler bids on day 2");
    let boiler = gw.appliances.iter().find(|a| a.name == "boiler").unwrap();
    assert_eq!(bids2[0].body.device, boiler.id());
    assert_eq!(bids2[0].body.market_id, day2.market_id);
    let bid = &agent.state.markets[&day2.market_id].bids["boiler"];
    assert_eq!(bid.params, circuits::spec::ApplianceSpec::Deferrable { max_power_kw: 2.0, energy_min_kwh: 1.2, energy_max_kwh: 1.4, windows: vec![], ramp_kw: None }.to_params(circuits::Slots::new(T).unwrap(), 900).unwrap());
    // The same parameters on another day would not give the same commitment: salts are per market.
    let same_params_day1 = circuits::commitment(&boiler.opening_for(day1.market_id, bid));
    assert_ne!(bids2[0].body.commitment.get(), same_params_day1);
    let day1_boiler = bids1.iter().find(|e| e.body.device == boiler.id()).unwrap();
    assert_ne!(bids2[0].body.commitment, day1_boiler.body.commitment);
    assert_eq!(agent.state.markets[&day1.market_id].bids["boiler"].params, boiler.opening.params, "day 1 kept its own bid");

    // A change of plan after the bid was sent does not change the bid; "off" withdraws it
    // once it is in the log.
    let batch = chain.next(Body::Enrollment(EnrollmentBatch { market_id: day2.market_id, enrollments: bids2.clone(), withdrawals: vec![] }));
    assert_eq!(agent.on_entry(&batch, now).unwrap(), Some((day2.market_id, 1)));
    assert!(agent.withdrawals(now).is_empty());
    let off = Overrides::parse(r#"{"market-6": {"boiler": "off"}}"#, &names).unwrap();
    agent.plan(&off, now);
    assert!(agent.enrollments(now).is_empty());
    let withdrawals = agent.withdrawals(now);
    assert_eq!(withdrawals.len(), 1);
    assert_eq!(withdrawals[0].body.device, boiler.id());
    assert_eq!(withdrawals[0].body.market_id, day2.market_id);
    withdrawals[0].verify(&m.genesis.chain_id).expect("signed by the boiler's key");
    let batch = chain.next(Body::Enrollment(EnrollmentBatch { market_id: day2.market_id, enrollments: vec![], withdrawals: withdrawals.clone() }));
    agent.on_entry(&batch, now).unwrap();
    assert!(agent.state.markets[&day2.market_id].enrolled.is_empty(), "withdrawn");
    assert!(agent.withdrawals(now).is_empty(), "nothing to withdraw any more");
    assert_eq!(agent.state.markets[&day1.market_id].enrolled.len(), expected, "day 1 untouched");

    // Day 3 opens with every appliance off: joined without a bid, and an appliance turned on
    // again before the close bids.
    let day3 = next_day(&day2, day2.registration_close_ms + 1);
    let open3 = chain.next(Body::Open(SignedMarketOpen::new(&operator(), &m.genesis.chain_id, day3.clone())));
    agent.on_entry(&open3, now).unwrap();
    // (The file keeps day 2's "off": without it the boiler would bid day 2 again.)
    let all_off = Overrides::parse(r#"{"market-6": {"boiler": "off"}, "market-7": {"ev": "off", "boiler": "off"}}"#, &names).unwrap();
    agent.plan(&all_off, now);
    assert!(agent.enrollments(now).is_empty());
    assert!(agent.state.markets.contains_key(&day3.market_id) && !agent.state.skipped.contains_key(&day3.market_id));
    let boiler_on = Overrides::parse(r#"{"market-6": {"boiler": "off"}, "market-7": {"ev": "off"}}"#, &names).unwrap();
    agent.plan(&boiler_on, now);
    let bids3 = agent.enrollments(now);
    assert_eq!(bids3.iter().map(|e| (e.body.market_id, e.body.device)).collect::<Vec<_>>(), vec![(day3.market_id, boiler.id())]);

    // The overrides file is checked at the door: unknown appliances and keys are named.
    let err = Overrides::parse(r#"{"market-6": {"heater": "off"}}"#, &names).unwrap_err();
    assert!(err.contains("heater"), "{err}");
    let err = Overrides::parse(r#"{"tomorrow": {"ev": "off"}}"#, &names).unwrap_err();
    assert!(err.contains("tomorrow"), "{err}");
    let err = Overrides::parse(r#"{"2026-12-02": {"ev": "of"}}"#, &names).unwrap_err();
    assert!(err.contains("overrides"), "{err}");
    assert!(Overrides::parse(r#"{"2026-12-02": {"ev": "off"}}"#, &names).is_ok());
}

/// A week entry of another model, or beyond the configured nameplate, is refused at load.
#[test]
fn a_weekly_pattern_that_does_not_fit_the_appliance_is_refused_at_load() {
    let m = market("days-week", 60_000);
    let battery_day = "[appliances.week.sat]\nmodel = \"battery\"\ncapacity_kwh = 5.0\nmax_charge_kw = 1.0\nmax_discharge_kw = 1.0\ninitial_kwh = 1.0\nfinal_min_kwh = 1.0\n\n";
    let cfg = gateway_toml(&m, "wk1", &format!("{BOILER_DAILY}{battery_day}"));
    let out = device(&["init"], &cfg);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("week.sat: model battery"), "{}", String::from_utf8_lossy(&out.stderr));
    let strong = "[appliances.week.sun]\nmodel = \"deferrable\"\nmax_power_kw = 3.5\nenergy_min_kwh = 0.5\nenergy_max_kwh = 1.5\n\n";
    let cfg = gateway_toml(&m, "wk2", &format!("{BOILER_DAILY}{strong}"));
    let out = device(&["init"], &cfg);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("week.sun beyond the nameplate"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_gateway_process_takes_part_in_two_markets_and_withdraws_a_bid_the_household_turned_off() {
    let m = market("days-run", 5000);
    let day1 = spec(&m);
    let cfg = gateway_toml(&m, "home", &format!("{EV}{BOILER}"));
    init_for_days(&m, &cfg, 30);
    // Day 2: the EV needs more energy.
    let overrides = m.dir.join("overrides.json");
    let ev2 = r#"{"model": "deferrable", "max_power_kw": 3.0, "energy_min_kwh": 1.9, "energy_max_kwh": 2.0}"#;
    std::fs::write(&overrides, format!(r#"{{"market-6": {{"ev": {ev2}}}}}"#)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let validators = rt.block_on(start_validators(&m));
    let gw_log = m.dir.join("home.log");
    let mut gw = Command::new(BIN)
        .args(["run", "--markets", "2", "--timeout-s", "90", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&gw_log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The operator opens day 2 while day 1 registers: its registration closes while day 1
    // iterates, its execution follows day 1's.
    let day2 = next_day(&day1, day1.registration_close_ms + 4000);
    let peers: Vec<(u16, std::net::SocketAddr)> = (0..4).map(|i| (i, std::net::SocketAddr::from(([127, 0, 0, 1], m.base_port + i)))).collect();
    let ids: Vec<protocol::ids::ValidatorId> = m.validators.iter().map(|k| protocol::ids::ValidatorId(k.verifying_key().to_bytes())).collect();
    let open = DeviceRequest::Open(SignedMarketOpen::new(&operator(), &m.genesis.chain_id, day2.clone()));
    let answers = rt.block_on(verifier_node::roles::submit_to_all(&ids, &peers, &operator(), &open, Duration::from_secs(5)));
    assert!(answers.iter().filter(|a| a.accepted()).count() >= 3, "{:?}", answers.iter().map(|a| &a.result).collect::<Vec<_>>());

    // Once the boiler's day-2 bid is in the log, the household turns its day off.
    let gwc = device::config::Gateway::load(&cfg).unwrap();
    let boiler = gwc.appliances.iter().find(|a| a.name == "boiler").unwrap().id();
    let ev = gwc.appliances.iter().find(|a| a.name == "ev").unwrap().id();
    let store = validators[0].shared.store.clone();
    let entries = |store: &verifier_node::store::Store| -> Vec<Certified> {
        let Some((tip, _)) = store.tip().unwrap() else { return vec![] };
        (1..=tip).filter_map(|h| store.certified(h).unwrap()).collect()
    };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let bid_in = entries(&store).iter().any(|c| matches!(&c.entry.body, Body::Enrollment(b) if b.market_id == day2.market_id && b.enrollments.iter().any(|e| e.body.device == boiler)));
        if bid_in {
            break;
        }
        assert!(Instant::now() < until, "the boiler never bid on day 2: {}", std::fs::read_to_string(&gw_log).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&overrides, format!(r#"{{"market-6": {{"ev": {ev2}, "boiler": "off"}}}}"#)).unwrap();
    let status = gw.wait().unwrap();
    let log = std::fs::read_to_string(&gw_log).unwrap();
    assert!(status.success(), "device run failed: {log}");

    // The log: both markets final, the boiler's withdrawal committed before day 2's close, the
    // EV's two bids with different commitments.
    let all = entries(&store);
    let finals: Vec<u64> = all.iter().filter_map(|c| if let Body::Final(f) = &c.entry.body { Some(f.market_id) } else { None }).collect();
    assert_eq!(finals, vec![day1.market_id, day2.market_id], "{log}");
    let batches = |id: u64| all.iter().filter_map(move |c| if let Body::Enrollment(b) = &c.entry.body { (b.market_id == id).then_some((c.entry.timestamp_ms, b.clone())) } else { None });
    let withdrawn_at = batches(day2.market_id).find(|(_, b)| b.withdrawals.iter().any(|w| w.body.device == boiler)).map(|(t, _)| t).expect("the withdrawal is in the log");
    assert!(withdrawn_at <= day2.registration_close_ms);
    let commitment = |id: u64, d| batches(id).flat_map(|(_, b)| b.enrollments).find(|e| e.body.device == d).map(|e| e.body.commitment).unwrap();
    assert_ne!(commitment(day1.market_id, ev), commitment(day2.market_id, ev), "fresh commitment per day");
    // Day 2's schedules: the EV's delivers what day 2 needs; the boiler has none.
    let out = device(&["schedule", "--market", "6", "--json"], &cfg);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["market_id"], 6);
    assert!(v["schedules_w"].get("boiler").is_none(), "{v}");
    let kwh = v["schedules_w"]["ev"].as_array().unwrap().iter().map(|w| w.as_i64().unwrap()).sum::<i64>() as f64 * 0.25 / 1000.0;
    assert!((1.9 - 1e-3..=2.0 + 1e-3).contains(&kwh), "day 2's EV energy {kwh} kWh");
    let day1_json: serde_json::Value = serde_json::from_slice(&device(&["schedule", "--market", "5", "--json"], &cfg).stdout).unwrap();
    assert!(day1_json["schedules_w"].get("boiler").is_some(), "day 1 kept the boiler: {day1_json}");
    assert!(log.contains("withdrawal sent") && log.contains("withdrawal committed"), "{log}");
    rt.block_on(async {
        for v in validators {
            v.stop().await.unwrap();
        }
    });
}
