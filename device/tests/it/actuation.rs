//! Actuation against a real MQTT broker (Debian's mosquitto, started by the test): a gateway
//! follows a short market (Δ = 1 s) to its final schedule against four in-process validators,
//! then switches a Tasmota relay and a Shelly Gen2 switch slot by slot and keeps Home
//! Assistant informed (discovery, availability, planned power, price, next change, the market
//! sensor's phases). A subscriber on `#` records what a home would see. Kill -9 while proving
//! and while executing, and a broker restart, neither duplicate a submission nor miss a slot.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::mosquitto::Mosquitto;
use protocol::entry::Body;

/// One message as the subscriber saw it.
#[derive(Debug, Clone)]
struct Seen {
    at_ms: u64,
    topic: String,
    payload: String,
    retained: bool,
}

/// Subscribes to `#` (again after every reconnect) and records everything.
fn subscriber(port: u16) -> Arc<Mutex<Vec<Seen>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    let mut opts = rumqttc::MqttOptions::new(format!("watcher-{}", std::process::id()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut connection) = rumqttc::Client::new(opts, 100);
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    client.subscribe("#", rumqttc::QoS::AtLeastOnce).unwrap();
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => out.lock().unwrap().push(Seen {
                    at_ms: protocol::net::now_ms(),
                    topic: p.topic.clone(),
                    payload: String::from_utf8_lossy(&p.payload).into_owned(),
                    retained: p.retain,
                }),
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(10);
    // The broker echoes nothing until something is published: probe with a message of our own.
    let mut probe = rumqttc::MqttOptions::new(format!("probe-{}", std::process::id()), "127.0.0.1", port);
    probe.set_keep_alive(Duration::from_secs(5));
    let (pc, mut pconn) = rumqttc::Client::new(probe, 10);
    std::thread::spawn(move || for _ in pconn.iter() {});
    while !seen.lock().unwrap().iter().any(|s| s.topic == "test/probe") {
        assert!(Instant::now() < until, "the subscriber never saw its probe");
        let _ = pc.publish("test/probe", rumqttc::QoS::AtLeastOnce, false, "x");
        std::thread::sleep(Duration::from_millis(200));
    }
    seen
}

fn spec(name: &str, max_kw: f64, e_min: f64, e_max: f64, output: &str) -> String {
    format!(
        "[[appliances]]\nname = \"{name}\"\n[appliances.spec]\nmodel = \"deferrable\"\nmax_power_kw = {max_kw}\nenergy_min_kwh = {e_min}\nenergy_max_kwh = {e_max}\n{output}\n"
    )
}

fn broker_toml(port: u16) -> String {
    format!("[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\n[home_assistant]\nprefix = \"ha\"\nnode_id = \"gw1\"\n\n")
}

/// Writes `gateway.toml` with the broker sections before the appliances.
fn gateway_with_broker(m: &Market, name: &str, port: u16, appliances: &str) -> PathBuf {
    let path = gateway_toml(m, name, appliances);
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text.find("[[appliances]]").unwrap();
    std::fs::write(&path, format!("{}{}{}", &text[..at], broker_toml(port), &text[at..])).unwrap();
    path
}

fn execution(m: &Market) -> (u64, u64) {
    let Body::Genesis(g) = &m.genesis.body else { unreachable!() };
    (g.market.execution_start_ms, g.market.slot_seconds as u64 * 1000)
}

fn schedules(config: &Path) -> serde_json::Value {
    let out = device(&["schedule", "--json"], config);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn watts(v: &serde_json::Value, name: &str) -> Vec<i64> {
    v["schedules_w"][name].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn live(seen: &[Seen], topic: &str) -> Vec<Seen> {
    seen.iter().filter(|s| s.topic == topic && !s.retained).cloned().collect()
}

/// The relay commands a slot of power `w` takes on a relay rated `rated`: ON, then OFF inside
/// the slot for a partial duty; one command when fully on or off.
fn relay_commands(w: i64, rated: i64) -> Vec<bool> {
    if w <= 0 {
        vec![false]
    } else if w >= rated {
        vec![true]
    } else {
        vec![true, false]
    }
}

fn shelly_id(s: &Seen) -> (u64, bool) {
    let v: serde_json::Value = serde_json::from_str(&s.payload).unwrap();
    assert_eq!(v["method"], "Switch.Set", "{}", s.payload);
    (v["id"].as_u64().unwrap(), v["params"]["on"].as_bool().unwrap())
}

fn duplicate_rejections(validators: &[verifier_node::host::Running]) -> u64 {
    validators.iter().map(|v| v.shared.snapshot.read().unwrap().stats.rejects.get("duplicate").copied().unwrap_or(0)).sum()
}

#[test]
fn tasmota_shelly_and_home_assistant_follow_the_committed_schedule_slot_by_slot() {
    let m = market_with(
        "mqtt",
        Timing {
            registration_ms: 4000,
            slots: 6,
            slot_seconds: 1,
            execution_gap_ms: 2000,
            all_models: false,
            port_block: 0,
            meter_window_ms: None,
            compressed_slot_ms: None,
        },
    );
    let port = m.base_port + 15;
    let _broker = Mosquitto::start(port);
    let seen = subscriber(port);
    // Δ = 1 s: 0.002 kWh is 7.2 kJ, 2.4 slots at 3 kW.
    // The boiler and the heater share one two-channel Shelly (channels 0 and 1).
    let appliances = format!(
        "{}{}{}",
        spec("ev", 3.0, 0.002, 0.003, "[appliances.output]\nadapter = \"tasmota\"\ntopic = \"ev\"\nrated_w = 3000\n"),
        spec("boiler", 2.0, 0.001, 0.002, "[appliances.output]\nadapter = \"shelly\"\ndevice_id = \"shellyplus1pm-a8032ab1\"\nrated_w = 2000\n"),
        spec("heater", 1.0, 0.0005, 0.001, "[appliances.output]\nadapter = \"shelly\"\ndevice_id = \"shellyplus1pm-a8032ab1\"\nswitch = 1\nrated_w = 1000\n"),
    );
    let cfg = gateway_with_broker(&m, "gw", port, &appliances);
    init(&m, &cfg);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let validators = rt.block_on(start_validators(&m));
    let out = Command::new(BIN).args(["run", "--markets", "1", "--timeout-s", "120", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "device run failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("schedule executed (6 slots)"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(duplicate_rejections(&validators), 0);
    rt.block_on(async {
        for v in validators {
            v.stop().await.unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let seen = seen.lock().unwrap().clone();
    let (start, slot) = execution(&m);
    let v = schedules(&cfg);
    let (ev, boiler, heater) = (watts(&v, "ev"), watts(&v, "boiler"), watts(&v, "heater"));
    assert!(ev.iter().sum::<i64>() >= 7200 - 10, "the EV's schedule delivers its energy: {ev:?}");

    // Home Assistant: retained discovery for the gateway's price sensor and three entities
    // per appliance, all on the gateway's availability; the plan as attributes.
    let discovered = |topic: &str| -> serde_json::Value {
        let config = seen.iter().find(|s| s.topic == topic).unwrap_or_else(|| panic!("no discovery on {topic}"));
        serde_json::from_str(&config.payload).unwrap()
    };
    for a in ["ev", "boiler", "heater"] {
        for (component, object) in [("sensor", "power"), ("sensor", "next_change"), ("binary_sensor", "running")] {
            let c = discovered(&format!("ha/{component}/gw1/{a}_{object}/config"));
            assert_eq!(c["state_topic"], format!("gridproof/gw1/{a}/{object}"));
            assert_eq!(c["availability_topic"], "gridproof/gw1/availability");
            assert_eq!(c["unique_id"], format!("gridproof_gw1_{a}_{object}"));
            assert_eq!(c["device"]["identifiers"][0], "gridproof_gw1");
        }
        let plan: serde_json::Value = serde_json::from_str(&live(&seen, &format!("gridproof/gw1/{a}/plan"))[0].payload).unwrap();
        assert_eq!(plan["power_w"], serde_json::json!(watts(&v, a)), "{a}'s plan attributes");
    }
    assert_eq!(discovered("ha/sensor/gw1/price/config")["json_attributes_topic"], "gridproof/gw1/plan");
    // The market sensor: its phases in order as the log advanced and the schedule ran.
    let market = discovered("ha/sensor/gw1/market/config");
    assert_eq!((market["device_class"].as_str(), market["state_topic"].as_str()), (Some("enum"), Some("gridproof/gw1/market")));
    let options: Vec<String> = market["options"].as_array().unwrap().iter().map(|o| o.as_str().unwrap().to_string()).collect();
    let phases: Vec<usize> =
        live(&seen, "gridproof/gw1/market").iter().map(|s| options.iter().position(|o| *o == s.payload).expect("a listed phase")).collect();
    assert!(phases.windows(2).all(|w| w[0] <= w[1]), "phases never go back: {phases:?}");
    let named = |i: &usize| options[*i].as_str();
    assert!(phases.iter().map(named).any(|p| p == "scheduling") && phases.iter().map(named).any(|p| p == "scheduled"), "{phases:?}");
    assert_eq!(phases.last().map(named), Some("executed"), "a market without settlement ends executed");
    let info: serde_json::Value = serde_json::from_str(&live(&seen, "gridproof/gw1/market_info").last().unwrap().payload).unwrap();
    assert_eq!((info["market"].as_u64(), info["phase"].as_str(), info["appliances"].as_u64()), (Some(5), Some("executed"), Some(3)), "{info}");
    assert!(info["iteration"].as_u64().unwrap() >= 1 && info["iteration"].as_u64() <= info["max_iterations"].as_u64(), "{info}");
    let availability: Vec<String> = live(&seen, "gridproof/gw1/availability").into_iter().map(|s| s.payload).collect();
    assert_eq!(availability.first().map(String::as_str), Some("online"));
    assert_eq!(availability.last().map(String::as_str), Some("offline"), "a clean stop says offline");

    // Planned power, one state per slot, never before the slot starts; then 0 at the end.
    // Before slot 0 (from the final entry on, if it came before the start): 0 W, off.
    let (early, power): (Vec<Seen>, Vec<Seen>) = live(&seen, "gridproof/gw1/ev/power").into_iter().partition(|s| s.at_ms < start);
    assert!(early.len() <= 1 && early.iter().all(|s| s.payload == "0"), "{early:?}");
    let values: Vec<i64> = power.iter().map(|s| s.payload.parse().unwrap()).collect();
    assert_eq!(values, ev.iter().copied().chain([0]).collect::<Vec<_>>());
    for (t, s) in power.iter().enumerate() {
        assert!(s.at_ms >= start + t as u64 * slot, "slot {t}'s state came {} ms early", start + t as u64 * slot - s.at_ms);
    }
    let prices = live(&seen, "gridproof/gw1/price");
    let expected: Vec<String> = v["prices_eur_mwh"].as_array().unwrap().iter().map(|p| format!("{:.2}", p.as_f64().unwrap())).collect();
    assert_eq!(prices.iter().map(|s| s.payload.clone()).collect::<Vec<_>>(), expected);
    let next: Vec<Seen> = live(&seen, "gridproof/gw1/ev/next_change").into_iter().filter(|s| s.at_ms >= start).collect();
    assert_eq!(next.len(), 6);
    assert!(next.iter().all(|s| s.payload.ends_with('Z') && s.payload.contains('T')), "RFC 3339 timestamps");

    // Tasmota: ON / OFF per slot as the duty cycle says, then OFF, in order and never early.
    let tasmota = live(&seen, "cmnd/ev/POWER");
    let expected: Vec<(usize, bool)> =
        ev.iter().enumerate().flat_map(|(t, &w)| relay_commands(w, 3000).into_iter().map(move |on| (t, on))).chain([(6, false)]).collect();
    let got: Vec<bool> = tasmota.iter().map(|s| s.payload == "ON").collect();
    assert_eq!(got, expected.iter().map(|e| e.1).collect::<Vec<_>>(), "Tasmota commands for {ev:?}");
    for (s, (t, _)) in tasmota.iter().zip(&expected) {
        assert!(s.at_ms >= start + *t as u64 * slot, "a command of slot {t} came early");
    }
    // Its dead-man timer: PulseTime = the slot + 30 s (31 s → 131) before the first command
    // (every ON restarts it), cleared at the end.
    // Home Assistant's running state follows the relay.
    let running: Vec<String> = live(&seen, "gridproof/gw1/ev/running").into_iter().filter(|s| s.at_ms >= start).map(|s| s.payload).collect();
    assert_eq!(running, tasmota.iter().map(|s| s.payload.clone()).collect::<Vec<_>>());
    let pulse: Vec<String> = live(&seen, "cmnd/ev/PulseTime").into_iter().map(|s| s.payload).collect();
    assert_eq!(pulse, vec!["131", "0"]);
    assert!(live(&seen, "cmnd/ev/PulseTime")[0].at_ms <= tasmota[0].at_ms);

    // Shelly: Switch.Set per channel, request id 1000·channel + 2t at slot t's start (+ 1 for
    // the switch-off), `src` the gateway's client id, every ON with its flip-back timer.
    let rpc = live(&seen, "shellyplus1pm-a8032ab1/rpc");
    for (channel, schedule, rated) in [(0u64, &boiler, 2000), (1, &heater, 1000)] {
        let cmds: Vec<serde_json::Value> = rpc.iter().map(|s| serde_json::from_str::<serde_json::Value>(&s.payload).unwrap()).collect();
        let mine: Vec<(u64, bool, u64)> = cmds
            .iter()
            .zip(&rpc)
            .filter(|(v, _)| v["params"]["id"] == channel)
            .map(|(v, s)| {
                assert!(v["src"].as_str().is_some_and(|s| s.starts_with("gridproof-")), "src: the gateway's client id: {v}");
                let on = v["params"]["on"].as_bool().unwrap();
                assert_eq!(v["params"].get("toggle_after").is_some(), on, "every ON carries its dead-man timer: {v}");
                (v["id"].as_u64().unwrap() - 1000 * channel, on, s.at_ms)
            })
            .collect();
        for (t, &w) in schedule.iter().enumerate() {
            let slot_cmds: Vec<&(u64, bool, u64)> = mine.iter().filter(|c| c.0 / 2 == t as u64).collect();
            let on: Vec<bool> = slot_cmds.iter().map(|c| c.1).collect();
            assert_eq!(on, relay_commands(w, rated), "channel {channel}, slot {t} ({w} W): {mine:?}");
            assert!(slot_cmds.iter().all(|c| c.2 >= start + t as u64 * slot), "slot {t} commanded early");
        }
        assert_eq!(mine.last().map(|c| (c.0, c.1)), Some((12, false)), "channel {channel} switched off at the end");
    }
}

/// Reads a child's stderr in a thread, keeping every line and signalling when `needle` shows.
fn watch_stderr(child: &mut Child, needle: &'static str) -> (Arc<Mutex<Vec<String>>>, std::sync::mpsc::Receiver<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let out = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(needle) {
                let _ = tx.send(());
            }
            out.lock().unwrap().push(line);
        }
    });
    (lines, rx)
}

fn spawn_run(cfg: &Path) -> Child {
    Command::new(BIN).args(["run", "--markets", "1", "--timeout-s", "120", "--config"]).arg(cfg).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

fn kill9(child: &mut Child) {
    let status = Command::new("kill").args(["-9", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let _ = child.wait();
}

/// `(appliance, iteration)` of every "update submitted" log line.
fn submissions(lines: &[String]) -> Vec<(String, u32)> {
    let field = |line: &str, key: &str| -> Option<String> {
        let at = line.find(&format!("{key}="))? + key.len() + 1;
        Some(line[at..].split_whitespace().next()?.trim_matches('"').to_string())
    };
    lines.iter().filter(|l| l.contains("update submitted")).map(|l| (field(l, "appliance").unwrap(), field(l, "iteration").unwrap().parse().unwrap())).collect()
}

#[test]
fn kill_9_while_proving_and_while_executing_and_a_broker_restart_lose_no_slot() {
    const SLOTS: usize = 10;
    let m = market_with(
        "kill",
        Timing {
            registration_ms: 4000,
            slots: SLOTS,
            slot_seconds: 1,
            execution_gap_ms: 2000,
            all_models: false,
            port_block: 1,
            meter_window_ms: None,
            compressed_slot_ms: None,
        },
    );
    let port = m.base_port + 15;
    let mut broker = Mosquitto::start(port);
    let seen = subscriber(port);
    let appliances = format!(
        "{}{}{}",
        spec("ev", 3.0, 0.003, 0.005, "[appliances.output]\nadapter = \"shelly\"\ndevice_id = \"shelly-ev\"\nrated_w = 3000\n"),
        spec("boiler", 2.0, 0.001, 0.002, "[appliances.output]\nadapter = \"tasmota\"\ntopic = \"boiler\"\nrated_w = 2000\n"),
        spec("dishwasher", 1.5, 0.001, 0.002, ""),
    );
    let cfg = gateway_with_broker(&m, "gw", port, &appliances);
    init(&m, &cfg);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let validators = rt.block_on(start_validators(&m));
    let mut log = Vec::new();

    // 1. Killed while solving and proving the first iteration.
    let mut first = spawn_run(&cfg);
    let (lines, proving) = watch_stderr(&mut first, "solving and proving");
    proving.recv_timeout(Duration::from_secs(60)).expect("the gateway started proving");
    kill9(&mut first);
    std::thread::sleep(Duration::from_millis(100));
    log.extend(lines.lock().unwrap().clone());
    assert!(submissions(&log).is_empty(), "killed while proving, before anything was sent: {}", log.join("\n"));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(m.dir.join("gw.state.json")).unwrap()).unwrap();
    assert_eq!(state["markets"]["5"]["enrolled"].as_array().unwrap().len(), 3, "what the log holds was saved before proving");
    assert_eq!(state["markets"]["5"]["submitted_through"], 0, "the iteration being proven was not recorded as sent");

    // 2. Restarted: it resumes the market; killed again once slot 2 has been commanded.
    let (start, slot) = execution(&m);
    let mut second = spawn_run(&cfg);
    let (lines, _) = watch_stderr(&mut second, "never");
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let commanded = seen.lock().unwrap().iter().any(|s| s.topic == "shelly-ev/rpc" && shelly_id(s).0 / 2 == 2);
        if commanded {
            break;
        }
        assert!(Instant::now() < until, "slot 2 was never commanded: {}", lines.lock().unwrap().join("\n"));
        assert!(second.try_wait().unwrap().is_none(), "the gateway exited early: {}", lines.lock().unwrap().join("\n"));
        std::thread::sleep(Duration::from_millis(20));
    }
    kill9(&mut second);
    log.extend(lines.lock().unwrap().clone());

    // 3. Restarted mid-execution; the broker restarts during slot 5.
    let mut third = spawn_run(&cfg);
    let (lines, _) = watch_stderr(&mut third, "never");
    let outage = start + 5 * slot + 100;
    while protocol::net::now_ms() < outage {
        std::thread::sleep(Duration::from_millis(10));
    }
    broker.kill();
    std::thread::sleep(Duration::from_millis(1200));
    let back_at = protocol::net::now_ms();
    let _broker = Mosquitto::start(port);
    let status = third.wait().unwrap();
    log.extend(lines.lock().unwrap().clone());
    assert!(status.success(), "the resumed gateway failed: {}", log.join("\n"));
    assert!(log.iter().any(|l| l.contains("resuming execution")), "{}", log.join("\n"));
    assert!(log.iter().any(|l| l.contains("connection lost") || l.contains("restored")), "the outage was noticed: {}", log.join("\n"));

    // No submission twice: neither in the gateway's own account nor at the validators.
    let subs = submissions(&log);
    let mut unique = subs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(subs.len(), unique.len(), "an update was submitted twice: {subs:?}");
    assert!(!subs.is_empty());
    assert_eq!(duplicate_rejections(&validators), 0, "the validators saw a duplicate");
    rt.block_on(async {
        for v in validators {
            v.stop().await.unwrap();
        }
    });

    // Every slot before the outage got its command (reconciled across the kill) and never
    // early; after the broker returned, the state was reconciled and later slots follow.
    std::thread::sleep(Duration::from_millis(300));
    let seen = seen.lock().unwrap().clone();
    let shelly: Vec<(u64, u64)> = live(&seen, "shelly-ev/rpc").iter().map(|s| (shelly_id(s).0, s.at_ms)).collect();
    for (id, at) in &shelly {
        assert!(*at >= start + id / 2 * slot, "command {id} came early");
    }
    let slots_commanded: std::collections::BTreeSet<u64> = shelly.iter().map(|c| c.0 / 2).collect();
    for t in (0..5).chain(7..=SLOTS as u64) {
        assert!(slots_commanded.contains(&t), "slot {t} has no command: {shelly:?}");
    }
    let after: Vec<&(u64, u64)> = shelly.iter().filter(|c| c.1 >= back_at).collect();
    assert!(!after.is_empty(), "nothing after the broker came back");
    let reconciled = after[0].0 / 2;
    assert!((5..=8).contains(&reconciled), "the first command after the outage is the state then (slot {reconciled})");
    let online = live(&seen, "gridproof/gw1/availability").iter().filter(|s| s.payload == "online" && s.at_ms >= back_at).count();
    assert!(online >= 1, "availability restored after the outage");
}

/// Meters over MQTT: in a market that settles (1 s slots), the gateway subscribes to its
/// appliances' meters on the broker — the EV's power on a plain topic (W), the boiler's Shelly
/// Gen2 `aenergy.total` counter (Wh) — reads each slot once it ended, submits the signed
/// readings, and keeps the bill settled on them; `device bill` shows the metered watts, and the
/// validators' accounts hold the same totals.
#[test]
fn meters_read_over_mqtt_settle_the_bills() {
    let m = market_with(
        "meter",
        Timing {
            registration_ms: 4000,
            slots: 6,
            slot_seconds: 1,
            execution_gap_ms: 2000,
            all_models: false,
            port_block: 4,
            meter_window_ms: Some(4000),
            compressed_slot_ms: None,
        },
    );
    let port = m.base_port + 15;
    let _broker = Mosquitto::start(port);
    let appliances = format!(
        "{}{}",
        spec("ev", 3.0, 0.002, 0.003, "[appliances.meter]\nsource = \"topic\"\ntopic = \"home/ev/power\"\nunit = \"w\"\n"),
        spec("boiler", 2.0, 0.001, 0.002, "[appliances.meter]\nsource = \"shelly\"\ndevice_id = \"shellyplus1pm-b1\"\n"),
    );
    let cfg = gateway_with_broker(&m, "gw", port, &appliances);
    init(&m, &cfg);
    // The meters: the EV draws 1,500 W, the boiler 1,000 W, sampled every 100 ms.
    let mut meters = crate::mosquitto::Meters::start(port, "home/ev/power", 1500, "shellyplus1pm-b1", 1000.0, 17.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let validators = rt.block_on(start_validators(&m));
    let out = Command::new(BIN).args(["run", "--markets", "1", "--timeout-s", "120", "--config"]).arg(&cfg).env("RUST_LOG", "info").output().unwrap();
    meters.stop();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "device run failed: {log}");
    assert!(log.contains("subscribed to the meter topics") && log.contains("settled: bills committed"), "{log}");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(m.dir.join("gw.state.json")).unwrap()).unwrap();
    let market = &state["markets"]["5"];
    let read = |a: &str| -> Vec<i64> { market["readings"][a].as_object().unwrap().values().map(|v| v.as_i64().unwrap()).collect() };
    assert_eq!(read("ev"), vec![1500; 6], "the power topic's mean over each slot: {market}");
    let boiler = read("boiler");
    assert_eq!(boiler.len(), 6, "{market}");
    assert!(boiler.iter().all(|w| (950..=1050).contains(w)), "the counter's increase over each slot, in mean W: {boiler:?}");
    for a in ["ev", "boiler"] {
        assert_eq!(market["bills"][a]["metered_slots"].as_u64(), Some(6), "{a}: {market}");
    }
    let bill = device(&["bill", "--json"], &cfg);
    assert!(bill.status.success(), "{}", String::from_utf8_lossy(&bill.stderr));
    let bills: serde_json::Value = serde_json::from_slice(&bill.stdout).unwrap();
    let table = String::from_utf8_lossy(&device(&["bill", "--appliance", "ev"], &cfg).stdout).to_string();
    assert!(table.contains("6 of 6 slots metered") && table.contains("1500") && !table.contains("note:"), "{table}");
    let accounts = validators[0].shared.accounts.read().unwrap().clone().unwrap();
    for b in bills.as_array().unwrap() {
        let name = b["appliance"].as_str().unwrap();
        let committed = &market["bills"][name];
        let device_id = committed["device"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect::<Vec<u8>>();
        let account = &accounts[&protocol::ids::DeviceId(device_id.try_into().unwrap())];
        assert_eq!(account.balance as f64 / 1e6, b["total_eur"].as_f64().unwrap(), "{name}");
    }
    rt.block_on(async {
        for v in validators {
            v.stop().await.unwrap();
        }
    });
}

/// Dead-man safety on a clean stop: a gateway that gets SIGTERM while its schedule executes
/// switches every output to its safe state — the Tasmota relay OFF, both channels of the
/// Shelly off — before it says offline and exits.
#[test]
fn a_gateway_stopped_mid_schedule_switches_its_outputs_off() {
    let m = market_with(
        "sigterm",
        Timing {
            registration_ms: 4000,
            slots: 8,
            slot_seconds: 1,
            execution_gap_ms: 2000,
            all_models: false,
            port_block: 5,
            meter_window_ms: None,
            compressed_slot_ms: None,
        },
    );
    let port = m.base_port + 15;
    let _broker = Mosquitto::start(port);
    let seen = subscriber(port);
    // The car charges under evcc (loadpoint 2, 1 phase: 6 A = 1,380 W is its least charge).
    let appliances = format!(
        "{}{}{}",
        spec("ev", 3.0, 0.004, 0.006, "[appliances.output]\nadapter = \"tasmota\"\ntopic = \"ev\"\nrated_w = 3000\n"),
        spec("boiler", 2.0, 0.001, 0.002, "[appliances.output]\nadapter = \"shelly\"\ndevice_id = \"shellypro2pm-s\"\nswitch = 1\nrated_w = 2000\n"),
        spec("car", 7.0, 0.004, 0.008, "[appliances.output]\nadapter = \"evcc\"\nloadpoint = 2\nphases = 1\nmax_current_a = 30\n"),
    );
    let cfg = gateway_with_broker(&m, "gw", port, &appliances);
    init(&m, &cfg);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let validators = rt.block_on(start_validators(&m));
    let mut child = Command::new(BIN).args(["run", "--config"]).arg(&cfg).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let (lines, rx) = watch_stderr(&mut child, "slot commands published");
    rx.recv_timeout(Duration::from_secs(90)).expect("the schedule started executing");
    let (start, slot) = execution(&m);
    // Stop it during slot 2 (of 8).
    while protocol::net::now_ms() < start + 2 * slot + 200 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped_at = protocol::net::now_ms();
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = lines.lock().unwrap().join("\n");
    assert!(log.contains("outputs switched to their safe state"), "{log}");
    assert!(!exit.success() || log.contains("stopped"), "exit {exit}: {log}");
    rt.block_on(async {
        for v in validators {
            v.stop().await.unwrap();
        }
    });
    let seen = seen.lock().unwrap().clone();
    let after = |topic: &str| -> Vec<String> { live(&seen, topic).into_iter().filter(|s| s.at_ms >= stopped_at).map(|s| s.payload).collect() };
    // Between the signal and the executor's stop a switch-off of the schedule itself may still
    // fall due (a duty cycle ending just after the signal); nothing switches on.
    let tasmota = after("cmnd/ev/POWER");
    assert!(!tasmota.is_empty() && tasmota.iter().all(|p| p == "OFF"), "the relay off at the stop: {tasmota:?}");
    let shelly: Vec<serde_json::Value> = after("shellypro2pm-s/rpc").iter().map(|p| serde_json::from_str(p).unwrap()).collect();
    assert!(!shelly.is_empty() && shelly.len() <= 2, "{shelly:?}");
    assert!(shelly.iter().all(|c| c["params"] == serde_json::json!({"id": 1, "on": false})), "{shelly:?}");
    assert_eq!(shelly.last().unwrap()["id"], 1999, "the stop's request id on channel 1, last: {shelly:?}");
    assert_eq!(after("gridproof/gw1/availability").last().map(String::as_str), Some("offline"));
    // evcc (https://docs.evcc.io/en/integrations/mqtt-api, "Writable Topics": `<topic>/set`):
    // before the stop each slot set the loadpoint's mode, and `maxCurrent` with `now`; at the
    // stop, mode off.
    let modes = live(&seen, "evcc/loadpoints/2/mode/set");
    assert!(modes.iter().any(|s| s.at_ms < stopped_at), "slots 0–2 set the mode");
    assert!(modes.iter().all(|s| s.payload == "now" || s.payload == "off"), "{modes:?}");
    for s in live(&seen, "evcc/loadpoints/2/maxCurrent/set") {
        let amps: u32 = s.payload.parse().unwrap();
        assert!((6..=30).contains(&amps), "{amps} A");
    }
    assert_eq!(after("evcc/loadpoints/2/mode/set"), vec!["off"], "the loadpoint off at the stop");
    // Nothing of slots 3.. went out.
    assert!(live(&seen, "cmnd/ev/POWER").iter().all(|s| s.at_ms < start + 3 * slot || s.payload == "OFF"));
}

/// A plain MQTT client on the broker at `port`: a device or Home Assistant, as a test plays it.
fn mqtt_client(port: u16, name: &str) -> rumqttc::Client {
    let mut opts = rumqttc::MqttOptions::new(format!("{name}-{}", std::process::id()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 10);
    std::thread::spawn(move || for _ in conn.iter() {});
    client
}

/// Executes an always-on Tasmota relay `ev` (2 kW of 2 kW: one ON per slot, `PulseTime` only
/// at the start and the end) over `slots` slots of 1 s starting 0.5 s from now, through
/// `mqtt::execute` against the broker on `port`, while `meanwhile` runs in a thread.
fn execute_relay(port: u16, src: &str, slots: usize, ha: Option<&device::home_assistant::HomeAssistantFile>, meanwhile: impl FnOnce() + Send + 'static) {
    use device::actuation::{timeline, AppliancePlan, Executor, OutputFile, Timing};
    let plans = vec![AppliancePlan {
        name: "ev".into(),
        output: Some(OutputFile::Tasmota { topic: "ev".into(), rated_w: 2000, min_on_s: 0, min_off_s: 0 }),
        schedule: vec![2000; slots],
    }];
    let timing = Timing { start_ms: protocol::net::now_ms() + 500, slot_ms: 1000 };
    let file: device::mqtt::MqttFile = toml::from_str(&format!("host = \"127.0.0.1\"\nport = {port}\n")).unwrap();
    let other = std::thread::spawn(meanwhile);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut broker = device::mqtt::Broker::connect(&file, src, None, Duration::from_secs(10)).await.unwrap();
        let mut executor = Executor::new(timeline(timing, &plans, &[], ha, src), 0);
        let mut feedback = device::feedback::Feedback::new(&plans, src, ha);
        device::mqtt::execute(&mut broker, &mut executor, &Default::default(), &mut feedback, |_| {}).await;
        broker.close(None).await;
    });
    other.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

/// A Tasmota that drops off the broker and comes back (its `tele/<topic>/LWT` goes `Offline`,
/// then `Online`) mid-schedule gets its dead-man timer and its current state again at once,
/// not only at the next slot; its retained `Online` at subscription time sends nothing extra.
#[test]
fn a_relay_back_online_gets_its_current_state_again() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _broker = Mosquitto::start(port);
    let seen = subscriber(port);
    // The relay, as far as the broker can tell: its retained presence, then a drop-out.
    let relay = mqtt_client(port, "tasmota");
    relay.publish("tele/ev/LWT", rumqttc::QoS::AtLeastOnce, true, "Online").unwrap();
    execute_relay(port, "gw-presence", 5, None, move || {
        // Mid-slot 1 (slots start 0.5 s, 1.5 s, 2.5 s… from now): offline, back at 2 s.
        std::thread::sleep(Duration::from_millis(1300));
        relay.publish("tele/ev/LWT", rumqttc::QoS::AtLeastOnce, true, "Offline").unwrap();
        std::thread::sleep(Duration::from_millis(700));
        relay.publish("tele/ev/LWT", rumqttc::QoS::AtLeastOnce, true, "Online").unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    let seen = seen.lock().unwrap().clone();
    let relevant: Vec<(String, String)> =
        seen.iter().filter(|s| s.topic.starts_with("cmnd/ev/") || s.topic == "tele/ev/LWT").map(|s| (s.topic.clone(), s.payload.clone())).collect();
    let pulse: Vec<&str> = relevant.iter().filter(|(t, _)| t == "cmnd/ev/PulseTime").map(|(_, p)| p.as_str()).collect();
    assert_eq!(pulse, vec!["131", "131", "0"], "PulseTime at the start, again when the relay came back, cleared at the end: {relevant:?}");
    let back = relevant.iter().rposition(|(t, p)| t == "tele/ev/LWT" && p == "Online").unwrap();
    let again = relevant.iter().enumerate().filter(|(_, (t, p))| t == "cmnd/ev/PulseTime" && p == "131").nth(1).unwrap().0;
    assert!(again > back, "sent again after the relay came back, not before: {relevant:?}");
    assert_eq!(relevant[again + 1], ("cmnd/ev/POWER".to_string(), "ON".to_string()), "then its state: {relevant:?}");
    let ons = relevant.iter().filter(|(t, p)| t == "cmnd/ev/POWER" && p == "ON").count();
    assert_eq!(ons, 5 + 1, "one ON per slot and the one sent again");
}

/// Home Assistant's control switch pauses one appliance mid-schedule: no command reaches its
/// relay while paused (the switch's state says OFF), and switching it on again sends the
/// current state at once.
#[test]
fn home_assistant_pauses_and_resumes_gridproof_control_of_a_relay() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _broker = Mosquitto::start(port);
    let seen = subscriber(port);
    let hass = mqtt_client(port, "homeassistant");
    let ha = device::home_assistant::HomeAssistantFile { prefix: "homeassistant".into(), node_id: "home".into(), configuration_url: None };
    execute_relay(port, "gw-control", 6, Some(&ha), move || {
        // Paused mid-slot 0 through slots 1 and 2, resumed mid-slot 3 (as Home Assistant's
        // switch publishes: retained).
        std::thread::sleep(Duration::from_millis(1000));
        hass.publish("gridproof/home/ev/control/set", rumqttc::QoS::AtLeastOnce, true, "OFF").unwrap();
        std::thread::sleep(Duration::from_millis(3000));
        hass.publish("gridproof/home/ev/control/set", rumqttc::QoS::AtLeastOnce, true, "ON").unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    let seen = seen.lock().unwrap().clone();
    let relevant: Vec<(String, String)> = seen
        .iter()
        .filter(|s| !s.retained && (s.topic.starts_with("cmnd/ev/") || s.topic.starts_with("gridproof/home/ev/control")))
        .map(|s| (s.topic.clone(), s.payload.clone()))
        .collect();
    let at = |topic: &str, payload: &str| {
        relevant.iter().position(|(t, p)| t == topic && p == payload).unwrap_or_else(|| panic!("no {topic} {payload}: {relevant:?}"))
    };
    let paused = at("gridproof/home/ev/control", "OFF");
    // The switch's state: ON at connect, OFF when paused, ON again when resumed.
    assert!(at("gridproof/home/ev/control", "ON") < paused);
    let resumed = relevant.iter().rposition(|(t, p)| t == "gridproof/home/ev/control" && p == "ON").unwrap();
    assert!(paused < resumed);
    assert!(relevant[paused..resumed - 2].iter().all(|(t, _)| !t.starts_with("cmnd/")), "a command reached the paused relay: {relevant:?}");
    assert_eq!(
        relevant[resumed - 2..resumed],
        [("cmnd/ev/PulseTime".to_string(), "131".to_string()), ("cmnd/ev/POWER".to_string(), "ON".to_string())],
        "resumed with its current state: {relevant:?}"
    );
    let ons = relevant.iter().filter(|(t, p)| t == "cmnd/ev/POWER" && p == "ON").count();
    assert!(ons < 6, "slots passed while paused got no command: {relevant:?}");
    assert_eq!(relevant.last(), Some(&("cmnd/ev/PulseTime".to_string(), "0".to_string())), "driven again to the end: {relevant:?}");
}
