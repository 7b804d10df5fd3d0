//! Gateways against a real validator cluster: `device init` creates a 0600 key, two `device
//! run` processes enroll, solve, prove and submit every iteration to four in-process
//! validators (QUIC, RocksDB, Malachite) until the final schedule, and `device schedule
//! --json` shows it. Bad configurations fail with the field or host named. The agent refuses
//! entries a light client must refuse.

use std::process::Command;

use crate::common::*;
use ed25519_dalek::SigningKey;
use protocol::entry::{sign_vote, Body, Certified, CommitCertificate, Entry};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

#[test]
fn two_gateways_follow_a_market_to_the_final_schedule() {
    let m = market("run", 5000);
    let a = gateway_toml(&m, "alpha", EV);
    let b = gateway_toml(&m, "beta", &format!("{EV}{BOILER}"));
    for cfg in [&a, &b] {
        let out = device(&["init"], cfg);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("commitment"));
        assert!(String::from_utf8_lossy(&out.stdout).contains("not attested"));
        init(&m, cfg);
        let again = String::from_utf8_lossy(&device(&["init"], cfg).stdout).to_string();
        assert!(again.contains(" attested") && !again.contains("not attested"), "{again}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(m.dir.join("alpha.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the gateway key is private");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let validators = rt.block_on(start_validators(&m));
    // Beta logs everything (`RUST_LOG=trace`): no log level may change what it does in time.
    let runs: Vec<_> = [(&a, "info"), (&b, "trace")]
        .iter()
        .map(|(cfg, level)| {
            Command::new(BIN).args(["run", "--markets", "1", "--timeout-s", "90", "--config"]).arg(cfg).env("RUST_LOG", level).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    // Both logs are read at once (a pipe nobody reads would stall the gateway writing to it).
    let readers: Vec<_> = runs.into_iter().map(|r| std::thread::spawn(move || r.wait_with_output().unwrap())).collect();
    let mut logs = vec![];
    for r in readers {
        let out = r.join().unwrap();
        assert!(out.status.success(), "device run failed: {}", String::from_utf8_lossy(&out.stderr));
        logs.push(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let traced = &logs[1];
    assert!(traced.contains("TRACE"), "beta logged at trace level");
    let submitted = |name: &str| traced.lines().filter(|l| l.contains("update submitted") && (l.contains(&format!("appliance=\"{name}\"")) || l.contains(&format!("appliance={name} ")))).count();
    assert!(!traced.contains("accepted by no validator"), "every update of the traced gateway went in");
    assert_eq!(submitted("ev"), submitted("boiler"), "both appliances submitted every iteration");
    assert!(submitted("ev") >= 1);
    // Every validator holds the gateways' updates in its log.
    let proofs: u64 = validators.iter().map(|v| v.shared.snapshot.read().unwrap().stats.proofs_verified).max().unwrap();
    assert!(proofs >= 3, "the validators committed the gateways' proven updates ({proofs})");
    rt.block_on(async {
        for v in validators {
            v.stop().await.unwrap();
        }
    });
    let out = device(&["schedule", "--json"], &b);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prices_eur_mwh"].as_array().unwrap().len(), T);
    let ev: Vec<i64> = v["schedules_w"]["ev"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    // The EV's committed schedule delivers between 1 and 2 kWh over 4 × 15 min.
    let kwh = ev.iter().sum::<i64>() as f64 * 0.25 / 1000.0;
    assert!((1.0 - 1e-3..=2.0 + 1e-3).contains(&kwh), "{ev:?} = {kwh} kWh");
    let table = device(&["schedule"], &a);
    assert!(String::from_utf8_lossy(&table.stdout).contains("€/MWh"));
}

/// A gateway started after registration closed says it sits the market out, naming its
/// appliances, and bids in none (here it then times out waiting for a market to bid in).
#[test]
fn a_gateway_started_after_the_close_fails_naming_its_appliances() {
    let m = market("late", 1500);
    let cfg = gateway_toml(&m, "late", &format!("{EV}{BOILER}"));
    init(&m, &cfg);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let validators = rt.block_on(start_validators(&m));
    let close = match &m.genesis.body {
        Body::Genesis(g) => g.market.registration_close_ms,
        _ => unreachable!(),
    };
    std::thread::sleep(std::time::Duration::from_millis(close.saturating_sub(protocol::net::now_ms()) + 1000));
    let out = Command::new(BIN).args(["run", "--markets", "1", "--timeout-s", "8", "--config"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a gateway with no enrolled appliance must not succeed: {err}");
    assert!(err.contains("sitting this market out") && err.contains("registration closed") && err.contains("ev, boiler"), "{err}");
    assert!(!err.contains("bid sent"), "{err}");
    rt.block_on(async {
        for v in validators {
            v.stop().await.unwrap();
        }
    });
}

/// Nameplates bound what an appliance may commit to, natively on the gateway: a spec beyond
/// its configured nameplate, or beyond the nameplate the authority attested, is refused at
/// load naming the field; an attestation by a key that is no authority of the chain is
/// skipped with a warning (the appliance stays unattested); a gateway with no attested
/// appliance does not start.
#[test]
fn appliances_beyond_their_nameplate_or_unattested_are_refused_before_they_commit() {
    use protocol::membership::{Attestation, Nameplate, SignedAttestation};
    let m = market("plate", 60_000);
    // The configured plate: a 2 kW charger cannot be specified at 3 kW.
    let cfg = gateway_toml(&m, "small", &format!("{EV}[appliances.nameplate]\nmax_import_kw = 2.0\n"));
    let out = device(&["init"], &cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("beyond the nameplate") && err.contains("p_max"), "{err}");
    // Not attested yet: `run` refuses to start and says what to do.
    let cfg = gateway_toml(&m, "unattested", EV);
    assert!(device(&["init"], &cfg).status.success());
    let out = device(&["run", "--markets", "1", "--timeout-s", "5"], &cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no appliance has an attestation") && err.contains("verifier-node attest"), "{err}");
    // The authority attested 2 kW; the configuration says 3 kW.
    let ev = device::config::Gateway::load(&cfg).unwrap().appliances[0].clone();
    let protocol::entry::Body::Genesis(g) = &m.genesis.body else { unreachable!() };
    let (from, until) = protocol::membership::market_span(&g.market);
    let body = Attestation {
        device: ev.id(),
        kind: ev.opening.params.kind().id(),
        meter_point: "DE1".into(),
        nameplate: Nameplate { max_import_w: 2000, ..Default::default() },
        valid_from_ms: from,
        valid_until_ms: until,
    };
    let file = device::config::read_file(&cfg).unwrap().attestations_file;
    std::fs::write(&file, serde_json::to_string(&[SignedAttestation::new(&authority(), &m.genesis.chain_id, body.clone())]).unwrap()).unwrap();
    let out = device(&["init"], &cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("attested nameplate") && err.contains("p_max (W) = 3000"), "{err}");
    // A 3 kW plate attested by a key that is no authority of this chain.
    let rogue = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let body = Attestation { nameplate: Nameplate { max_import_w: 3000, ..Default::default() }, ..body };
    std::fs::write(&file, serde_json::to_string(&[SignedAttestation::new(&rogue, &m.genesis.chain_id, body)]).unwrap()).unwrap();
    let out = device(&["init"], &cfg);
    let (stdout, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && err.contains("not an enrollment authority") && stdout.contains("not attested"), "{stdout}\n{err}");
}

#[test]
fn bad_configurations_fail_naming_the_field_or_host() {
    let m = market("bad", 60_000);
    let cases = [
        ("unknown_model", EV.replace("deferrable", "toaster"), "toaster"),
        ("inconsistent", EV.replace("energy_min_kwh = 1.0", "energy_min_kwh = 5.0"), "appliances[0] (ev)"),
        ("costs", BOILER.replace("[40.0, 10.0, 5.0, 30.0]", "[1.0]"), "linear_eur_mwh"),
        // Two appliances on one channel of one Shelly (the other channel would be fine).
        (
            "shared_output",
            format!("{EV}[appliances.output]\nadapter = \"shelly\"\ndevice_id = \"shellypro2pm-1\"\nrated_w = 3000\n\n{BOILER}[appliances.output]\nadapter = \"shelly\"\ndevice_id = \"shellypro2pm-1\"\nrated_w = 2000\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1883\n"),
            "output shellypro2pm-1/rpc switch:0 is ev's already",
        ),
    ];
    for (name, appliances, needle) in cases {
        let cfg = gateway_toml(&m, name, &appliances);
        let out = device(&["init"], &cfg);
        assert!(!out.status.success(), "{name} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{name}: {err}");
    }
    // A validator index the genesis does not have.
    let cfg = gateway_toml(&m, "noval", EV);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("index = 3", "index = 9");
    std::fs::write(&cfg, text).unwrap();
    let out = device(&["init"], &cfg);
    assert!(String::from_utf8_lossy(&out.stderr).contains("validators: index 9"), "{}", String::from_utf8_lossy(&out.stderr));
    // No validator at all.
    let cfg = gateway_toml(&m, "novals", EV);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text: String = text.split("\n\n").filter(|block| !block.starts_with("[[validators]]")).collect::<Vec<_>>().join("\n\n");
    std::fs::write(&cfg, text).unwrap();
    let out = device(&["init"], &cfg);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("validators"), "{}", String::from_utf8_lossy(&out.stderr));
    // An unreachable MQTT broker: `run` stops before the market, naming host and port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg =
        gateway_toml(&m, "nobroker", &EV.replace("[appliances.spec]", "[appliances.output]\nadapter = \"setpoint\"\ntopic = \"ev/set\"\n[appliances.spec]"));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let at = text.find("[[appliances]]").unwrap();
    std::fs::write(&cfg, format!("{}[mqtt]\nhost = \"127.0.0.1\"\nport = {closed}\n\n{}", &text[..at], &text[at..])).unwrap();
    init(&m, &cfg);
    let out = device(&["run", "--markets", "1", "--timeout-s", "5"], &cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("MQTT broker 127.0.0.1:{closed} unreachable")), "{err}");
    // Outputs without a broker, or a relay on a battery, are configuration errors.
    let cfg = gateway_toml(
        &m,
        "nomqtt",
        &EV.replace("[appliances.spec]", "[appliances.output]\nadapter = \"tasmota\"\ntopic = \"ev\"\nrated_w = 3000\n[appliances.spec]"),
    );
    let out = device(&["init"], &cfg);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("appliances[0] (ev): output: needs an [mqtt] broker"), "{}", String::from_utf8_lossy(&out.stderr));
    // No validator reachable: the error names the addresses.
    let cfg = gateway_toml(&m, "down", EV);
    init(&m, &cfg);
    let out = device(&["enroll", "--timeout-s", "5"], &cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{}", m.base_port)), "{err}");
}

#[test]
fn the_agent_refuses_entries_a_light_client_must_refuse() {
    let m = market("light", 60_000);
    let cfg = gateway_toml(&m, "lc", EV);
    init(&m, &cfg);
    let gw = device::config::Gateway::load(&cfg).unwrap();
    let keys = gw.proving_keys().unwrap();
    let mut agent = device::agent::Agent::new(gw.clone(), keys, Default::default()).unwrap();
    let id = gw.market().market.market_id;
    agent.plan(&Default::default(), m.genesis.timestamp_ms);
    let enrollment = agent.enrollments(m.genesis.timestamp_ms);
    assert_eq!(enrollment.len(), 1, "the attested EV bids");
    let entry = Entry {
        chain_id: m.genesis.chain_id,
        height: 1,
        prev_hash: m.genesis.hash(),
        state_root: [0; 32],
        timestamp_ms: m.genesis.timestamp_ms + 1,
        body: Body::Enrollment(protocol::entry::EnrollmentBatch { market_id: gw.market().market.market_id, enrollments: enrollment, withdrawals: vec![] }),
    };
    let certify = |e: &Entry, signers: &[SigningKey], indices: &[u16]| Certified {
        entry: e.clone(),
        certificate: CommitCertificate {
            height: e.height,
            round: 0,
            hash: e.hash(),
            votes: indices.iter().zip(signers).map(|(&i, k)| sign_vote(k, &e.chain_id, i, e.height, 0, &e.hash())).collect(),
        },
        updates: vec![],
    };
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    // As of the genesis: registration is open for another minute.
    let now = m.genesis.timestamp_ms;
    // Too few signatures.
    let few = certify(&entry, &m.validators[..2], &[0, 1]);
    assert!(agent.on_entry(&few, now).is_err());
    // A signature from a key outside the validator set.
    let stranger = SigningKey::from_bytes(&[99; 32]);
    let forged = certify(&entry, &[m.validators[0].clone(), m.validators[1].clone(), stranger], &[0, 1, 2]);
    assert!(agent.on_entry(&forged, now).is_err());
    // A broken hash link.
    let mut unlinked = entry.clone();
    unlinked.prev_hash[0] ^= 1;
    assert!(agent.on_entry(&certify(&unlinked, &m.validators[..3], &[0, 1, 2]), now).is_err());
    assert!(agent.state.markets[&id].enrolled.is_empty(), "nothing refused was acted on");
    // The real entry is accepted; a fork at the same height afterwards is refused.
    let build = agent.on_entry(&certify(&entry, &m.validators[..3], &[0, 1, 2]), now).unwrap();
    assert!(agent.state.markets[&id].enrolled.contains("ev"));
    assert_eq!(build, Some((id, 1)), "iteration 1 opens once the appliance is enrolled");
    let proven = agent.prove(id, 1, &mut rng).unwrap();
    assert_eq!(proven.len(), 1);
    let mut fork = entry.clone();
    fork.timestamp_ms += 1;
    assert!(agent.on_entry(&certify(&fork, &m.validators[1..4], &[1, 2, 3]), now).is_err());
    assert_eq!(agent.state.markets[&id].submitted_through, 1, "no second submission");
    // Iteration 1 served without its bodies, as a validator serves a pruned market: withheld
    // data while the market has not executed (refused), pruned history once it has.
    let t = gw.market().market.slots as usize;
    let body = protocol::entry::IterationBody {
        market_id: id,
        iteration: 1,
        updates: vec![proven[0].digest()],
        x_bar: vec![0; t],
        z_bar: vec![0; t],
        u: vec![0; t],
        residuals: [1, 1, 0, 0],
    };
    let iteration = Entry { chain_id: entry.chain_id, height: 2, prev_hash: entry.hash(), state_root: [0; 32], timestamp_ms: entry.timestamp_ms + 100, body: Body::Iteration(body) };
    let pruned = certify(&iteration, &m.validators[..3], &[0, 1, 2]);
    assert!(pruned.is_pruned());
    let refused = agent.on_entry(&pruned, now).unwrap_err().to_string();
    assert!(refused.contains("without its bodies before the market executed"), "{refused}");
    assert_eq!(agent.state.height, 1, "nothing refused was acted on");
    let executed = protocol::market::execution_span(&gw.market().market).1;
    agent.on_entry(&pruned, executed).unwrap();
    assert_eq!(agent.state.height, 2);
}

/// `device simulate` on a market that settles, its day compressed to 1 s slots: ten virtual
/// appliances of every model run to the final schedule, meter every slot, and the simulation
/// ends with their bills, the same the validators booked.
#[test]
fn simulate_runs_many_virtual_appliances_of_every_model_to_the_final_schedule_and_the_bills() {
    let timing = Timing { registration_ms: 6000, slots: 8, slot_seconds: 900, execution_gap_ms: 1000, all_models: true, port_block: 2, meter_window_ms: Some(4000), compressed_slot_ms: Some(1000) };
    let m = market_with("sim", timing);
    // Simulate brings its own appliances and makes its key: the file needs no appliances and
    // no `device init` (its validators and keys are used).
    let cfg = gateway_toml(&m, "sim", "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let validators = rt.block_on(start_validators(&m));
    let summary = m.dir.join("summary.json");
    let out = Command::new(BIN)
        .args(["simulate", "--appliances", "10", "--seed", "4", "--timeout-s", "120", "--summary"])
        .arg(&summary)
        .arg("--authority-key")
        .arg(m.dir.join("authority.key"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "simulate failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("load W"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(v["appliances"], 10);
    assert_eq!(v["aggregate_w"].as_array().unwrap().len(), 8);
    assert!(v["iterations"].as_u64().unwrap() >= 1);
    // Every virtual appliance's proofs were verified and committed by the validators.
    let proofs: u64 = validators.iter().map(|v| v.shared.snapshot.read().unwrap().stats.proofs_verified).max().unwrap();
    assert!(proofs >= 10, "{proofs} proofs committed");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(m.dir.join("sim.state.json")).unwrap()).unwrap();
    assert_eq!(state["markets"]["5"]["enrolled"].as_array().unwrap().len(), 10);
    // Settled on a reading of every slot; the validators' ledger holds the same total.
    let s = &v["settlement"];
    assert_eq!((s["bills"].as_u64(), s["metered_slots"].as_u64()), (Some(10), Some(80)), "{v}");
    assert!(stdout.contains("settled: 10 bills, 80 slots metered"), "{stdout}");
    let ledger: i64 = validators[0].shared.accounts.read().unwrap().as_ref().unwrap().values().map(|a| a.balance).sum();
    assert_eq!(s["total_micro_eur"].as_i64(), Some(ledger));
    rt.block_on(async {
        for v in validators {
            v.stop().await.unwrap();
        }
    });
}

/// A Byzantine validator (validator 0's key, serving subscriptions first) forwards the real
/// certified log but swaps in a forged update body for the gateway's own appliance. The
/// gateway refuses that entry (the body does not hash to the certified digest), stores and
/// executes nothing of it, follows the log through another validator, and ends with the
/// schedule the quorum committed.
#[test]
fn a_forged_update_body_is_refused_and_the_gateway_follows_another_validator() {
    use protocol::codec::{decode, encode};
    use protocol::messages::{DeviceRequest, DeviceResponse, MAX_DEVICE_FRAME};
    use protocol::net::{self, ValidatorClient};

    let m = market_with("forge", Timing { registration_ms: 5000, slots: T, slot_seconds: 900, execution_gap_ms: 60_000, all_models: false, port_block: 3, meter_window_ms: None, compressed_slot_ms: None });
    let cfg = gateway_toml(&m, "fg", EV);
    init(&m, &cfg);
    let appliance = device::config::Gateway::load(&cfg).unwrap().appliances[0].clone();
    let (ev, ev_key, chain) = (appliance.id(), appliance.key.clone(), m.genesis.chain_id);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let honest = rt.block_on(async {
        net::install_crypto();
        let configs = verifier_node::host::local_configs(&m.dir, &m.dir.join("keys"), &m.genesis, &m.validators, m.base_port, m.base_port + 10).unwrap();
        let mut honest = vec![];
        for cfg in configs.into_iter().skip(1) {
            honest.push(verifier_node::host::start(cfg).await.unwrap());
        }
        // The Byzantine validator 0: real key, real log (through validator 1), forged bodies.
        let server = net::server_config(&m.validators[0]).unwrap();
        let endpoint = quinn::Endpoint::server(server, format!("127.0.0.1:{}", m.base_port).parse().unwrap()).unwrap();
        let upstream_addr = format!("127.0.0.1:{}", m.base_port + 1).parse().unwrap();
        let upstream_key = m.validators[1].verifying_key().to_bytes();
        let ev_key = ev_key.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let ev_key = ev_key.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let me = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
                    let client_ep = net::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
                    let Ok(up) = ValidatorClient::connect(&client_ep, upstream_addr, upstream_key, &me).await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let (up, ev_key) = (up.clone(), ev_key.clone());
                        tokio::spawn(async move {
                            let Ok(Some(frame)) = net::read_frame(&mut recv, MAX_DEVICE_FRAME).await else { return };
                            let Ok(req) = decode::<DeviceRequest>("req", &frame, MAX_DEVICE_FRAME) else { return };
                            match req {
                                DeviceRequest::Subscribe { from } => {
                                    let Ok(mut rx) = up.subscribe(from).await else { return };
                                    while let Some(Ok(mut c)) = rx.recv().await {
                                        // A validly signed update of the gateway's own device (as
                                        // if its key had signed another schedule): only the digest
                                        // check can tell it is not the certified one.
                                        for u in c.updates.iter_mut().filter(|u| u.body.device == ev) {
                                            let mut body = u.body.clone();
                                            body.schedule = vec![3000; T];
                                            *u = protocol::messages::SignedUpdate::new(&ev_key, &chain, body);
                                        }
                                        if net::write_frame(&mut send, &encode(&c)).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                                // Submissions are dropped (a Byzantine validator may).
                                _ => {
                                    let answer = DeviceResponse::Accepted;
                                    let _ = net::write_frame(&mut send, &encode(&answer)).await;
                                    let _ = send.finish();
                                }
                            }
                        });
                    }
                });
            }
        });
        honest
    });
    let log = std::fs::File::create(m.dir.join("fg.log")).unwrap();
    let status = Command::new(BIN).args(["run", "--markets", "1", "--timeout-s", "90", "--config"]).arg(&cfg).env("RUST_LOG", "info").stderr(log).status().unwrap();
    let err = std::fs::read_to_string(m.dir.join("fg.log")).unwrap();
    assert!(status.success(), "device run failed: {err}");
    assert!(err.contains("refused entry") && err.contains("following another validator"), "{err}");
    // What the gateway holds is what the honest validators committed, never the forgery.
    let store = honest[0].shared.store.clone();
    let (tip, _) = store.tip().unwrap().unwrap();
    let committed = (1..=tip)
        .filter_map(|h| store.certified(h).unwrap())
        .filter(|c| matches!(c.entry.body, Body::Iteration(_)))
        .filter_map(|c| c.updates.iter().find(|u| u.body.device == ev).map(|u| u.body.schedule.clone()))
        .last()
        .expect("the gateway's update is in the log");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(m.dir.join("fg.state.json")).unwrap()).unwrap();
    let held: Vec<i32> = state["markets"]["5"]["schedules"]["ev"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect();
    assert_eq!(held, committed);
    assert_ne!(held, vec![3000; T]);
    rt.block_on(async {
        for v in honest {
            v.stop().await.unwrap();
        }
    });
}
