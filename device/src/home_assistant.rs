//! Home Assistant, sans-IO: MQTT discovery configs and the states of a committed schedule.
//!
//! One Home Assistant device per gateway (`gridproof <node_id>`), with
//! - a `price` sensor (the slot's price, €/MWh; its attributes hold the market's whole price
//!   curve),
//! - a `market` sensor (an enum: registration, scheduling, scheduled, executed, settling,
//!   settled — of the newest market the gateway takes part in; its attributes hold the market id,
//!   the iteration, K_max, whether it converged, the enrolled appliances, the execution
//!   start), published as entries arrive, and per appliance
//! - `<name>_power`: the planned power, W (positive draws from the grid, negative feeds in;
//!   its attributes hold the whole plan),
//! - `<name>_next_change`: when the planned power next changes (a timestamp),
//! - `<name>_running`: a binary sensor, on while the gateway has the appliance on (for a relay,
//!   through its duty cycle; for evcc, while the loadpoint charges; otherwise while the plan
//!   is not 0 W) — what an automation follows for an appliance Home Assistant switches itself
//!   (`examples/home-assistant/follow-gridproof.yaml`; without a duty cycle, so only for
//!   appliances whose plan is 0 or their full power),
//! - `<name>_control` (appliances with an output): a switch, on while gridproof drives the
//!   output; off pauses it — the gateway sends it no commands, and the household drives it —
//!   until switched on again, when it gets its current state (`crate::feedback`).
//!
//! Every entity shares the gateway's availability topic (`online` while it runs, `offline`
//! by a clean stop or the broker's last will). Configs and attributes are retained and
//! published on every (re)connect; states are timed publications of the timeline.
//! The keys used are those of Home Assistant's MQTT sensor and binary sensor
//! (https://www.home-assistant.io/integrations/sensor.mqtt/,
//! https://www.home-assistant.io/integrations/binary_sensor.mqtt/, and the discovery
//! payload's `device` and `origin` maps, https://www.home-assistant.io/integrations/mqtt/).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::actuation::{rfc3339, AppliancePlan, Publish, Timed, Timing};
use crate::agent::{MarketPhase, MarketStatus};

/// The gateway's Home Assistant discovery settings (`[home_assistant]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantFile {
    /// Discovery prefix Home Assistant listens on.
    #[serde(default = "ha_prefix")]
    pub prefix: String,
    /// Node id: groups this gateway's entities; also the root of its state topics
    /// (`gridproof/<node_id>/...`).
    pub node_id: String,
    /// A link Home Assistant shows on the gateway's device page (a validator's status page,
    /// say).
    #[serde(default)]
    pub configuration_url: Option<String>,
}

fn ha_prefix() -> String {
    "homeassistant".into()
}

/// Availability topic of a Home Assistant node.
pub fn availability_topic(ha: &HomeAssistantFile) -> String {
    format!("gridproof/{}/availability", ha.node_id)
}

fn topic(ha: &HomeAssistantFile, what: &str) -> String {
    format!("gridproof/{}/{}", ha.node_id, what)
}

/// Where Home Assistant's control switch of appliance `name` commands `ON` (the gateway
/// drives it) or `OFF` (paused: the household drives it).
pub fn control_topic(ha: &HomeAssistantFile, name: &str) -> String {
    topic(ha, &format!("{name}/control/set"))
}

/// The control switch's state, as the gateway acknowledges it.
pub fn control_state(ha: &HomeAssistantFile, name: &str, paused: bool) -> Publish {
    Publish { topic: topic(ha, &format!("{name}/control")), payload: (if paused { "OFF" } else { "ON" }).into(), retain: true }
}

/// What a market's execution plan is, for the retained attributes.
#[derive(Debug, Clone, Copy)]
pub struct PlanInfo<'a> {
    /// The market.
    pub market_id: u64,
    /// When its slots happen.
    pub timing: Timing,
    /// Its prices, €/MWh per slot.
    pub prices: &'a [f64],
}

/// What is published on each (re)connect while a schedule executes before the current state,
/// retained: the discovery config of every entity, and the plan as JSON attributes (gateway:
/// the market, its start, slot length and prices; appliance: its power per slot). `online`
/// on [`availability_topic`] follows the state.
pub fn announce(ha: &HomeAssistantFile, plan: PlanInfo<'_>, appliances: &[AppliancePlan]) -> Vec<Publish> {
    let retained = |topic: String, payload: String| Publish { topic, payload, retain: true };
    let mut out = discovery(ha, appliances);
    let start = rfc3339(plan.timing.start_ms);
    out.push(retained(
        topic(ha, "plan"),
        json!({
            "market": plan.market_id,
            "start": start,
            "slot_ms": plan.timing.slot_ms,
            "prices_eur_mwh": plan.prices,
        })
        .to_string(),
    ));
    for a in appliances {
        out.push(retained(
            topic(ha, &format!("{}/plan", a.name)),
            json!({
                "market": plan.market_id,
                "start": start,
                "slot_ms": plan.timing.slot_ms,
                "power_w": a.schedule,
                "sign": "positive draws from the grid, negative feeds in",
            })
            .to_string(),
        ));
    }
    out
}

/// The retained discovery configs: the gateway's price and market sensors, and per appliance
/// its planned power, next change, running state and (with an output) control switch. With
/// no appliances: the gateway's sensors only (what a gateway announces as it connects).
pub fn discovery(ha: &HomeAssistantFile, appliances: &[AppliancePlan]) -> Vec<Publish> {
    let mut device = json!({
        "identifiers": [format!("gridproof_{}", ha.node_id)],
        "name": format!("gridproof {}", ha.node_id),
        "manufacturer": "gridproof",
        "model": "home gateway",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(url) = &ha.configuration_url {
        device["configuration_url"] = url.as_str().into();
    }
    let origin = json!({"name": "gridproof", "sw_version": env!("CARGO_PKG_VERSION")});
    let config = |component: &str, object_id: &str, name: &str, extra: Value| {
        let mut c = json!({
            "name": name,
            "unique_id": format!("gridproof_{}_{}", ha.node_id, object_id),
            "availability_topic": availability_topic(ha),
            "device": device,
            "origin": origin,
        });
        if let (Value::Object(c), Value::Object(extra)) = (&mut c, extra) {
            c.extend(extra);
        }
        Publish { topic: format!("{}/{component}/{}/{object_id}/config", ha.prefix, ha.node_id), payload: c.to_string(), retain: true }
    };
    let mut out = vec![config(
        "sensor",
        "price",
        "price",
        json!({
            "state_topic": topic(ha, "price"),
            "unit_of_measurement": "EUR/MWh",
            "state_class": "measurement",
            "suggested_display_precision": 2,
            "json_attributes_topic": topic(ha, "plan"),
        }),
    )];
    out.push(config(
        "sensor",
        "market",
        "market",
        json!({
            "state_topic": topic(ha, "market"),
            "device_class": "enum",
            "options": MarketPhase::ALL.map(MarketPhase::as_str),
            "json_attributes_topic": topic(ha, "market_info"),
        }),
    ));
    for a in appliances {
        let n = &a.name;
        out.push(config(
            "sensor",
            &format!("{n}_power"),
            &format!("{n} planned power"),
            json!({
                "state_topic": topic(ha, &format!("{n}/power")),
                "unit_of_measurement": "W",
                "device_class": "power",
                "state_class": "measurement",
                "json_attributes_topic": topic(ha, &format!("{n}/plan")),
            }),
        ));
        out.push(config(
            "sensor",
            &format!("{n}_next_change"),
            &format!("{n} next change"),
            json!({"state_topic": topic(ha, &format!("{n}/next_change")), "device_class": "timestamp"}),
        ));
        if a.output.is_some() {
            // Retained commands: a pause outlives a gateway restart.
            out.push(config(
                "switch",
                &format!("{n}_control"),
                &format!("{n} gridproof control"),
                json!({
                    "command_topic": control_topic(ha, n),
                    "state_topic": topic(ha, &format!("{n}/control")),
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "retain": true,
                }),
            ));
        }
        out.push(config(
            "binary_sensor",
            &format!("{n}_running"),
            &format!("{n} running"),
            json!({
                "state_topic": topic(ha, &format!("{n}/running")),
                "device_class": "running",
                "payload_on": "ON",
                "payload_off": "OFF",
            }),
        ));
    }
    out
}

/// When the states before slot 0 are due: at once (any time after the epoch), and superseded
/// by every slot's.
const BEFORE_START_MS: u64 = 1;

/// The retained state of the market sensor: the phase, and as attributes the market, its
/// iteration, K_max, whether it converged, the gateway's enrolled appliances and the
/// execution start.
pub fn market_states(ha: &HomeAssistantFile, status: &MarketStatus) -> Vec<Publish> {
    let info = json!({
        "market": status.market,
        "phase": status.phase,
        "iteration": status.iteration,
        "max_iterations": status.max_iterations,
        "converged": status.converged,
        "appliances": status.appliances,
        "execution_start": rfc3339(status.execution_start_ms),
    });
    vec![
        Publish { topic: topic(ha, "market_info"), payload: info.to_string(), retain: true },
        Publish { topic: topic(ha, "market"), payload: status.phase.as_str().into(), retain: true },
    ]
}

/// The timed states of one appliance's schedule: before it 0 W, off and the first change; per
/// slot its planned power, next change and running state (for a relay, off again where its
/// duty cycle ends inside the slot); at the end 0 W and off.
pub fn appliance_states(ha: &HomeAssistantFile, timing: Timing, a: &AppliancePlan) -> Vec<Timed> {
    let state = |at_ms: u64, slot: usize, what: &str, payload: String| {
        Timed::new(at_ms, slot, Publish { topic: topic(ha, &format!("{}/{what}", a.name)), payload, retain: true })
    };
    let on_off = |on: bool| (if on { "ON" } else { "OFF" }).to_string();
    let slots = a.schedule.len();
    let relay = a.output.as_ref().and_then(|o| o.relay());
    // Before slot 0 (due at once, so the sensors are not `unknown` from the final entry to
    // the start): nothing runs yet, and the first change is the first slot with power.
    let first = a.schedule.iter().position(|&p| p != 0).unwrap_or(slots);
    let mut out = vec![
        state(BEFORE_START_MS, 0, "power", "0".into()),
        state(BEFORE_START_MS, 0, "next_change", rfc3339(timing.slot_start(first))),
        state(BEFORE_START_MS, 0, "running", on_off(false)),
    ];
    for (t, &power) in a.schedule.iter().enumerate() {
        let start = timing.slot_start(t);
        let next = (t + 1..slots).find(|&s| a.schedule[s] != power).unwrap_or(slots);
        out.push(state(start, t, "power", power.to_string()));
        out.push(state(start, t, "next_change", rfc3339(timing.slot_start(next))));
        match relay {
            Some(relay) => {
                let on_ms = relay.on_ms(timing.slot_ms, power);
                out.push(state(start, t, "running", on_off(on_ms > 0)));
                if on_ms > 0 && on_ms < timing.slot_ms {
                    out.push(state(start + on_ms, t, "running", on_off(false)));
                }
            }
            None => out.push(state(start, t, "running", on_off(a.output.as_ref().map_or(power != 0, |o| o.is_on(power))))),
        }
    }
    let end = timing.slot_start(slots);
    out.push(state(end, slots, "power", "0".into()));
    out.push(state(end, slots, "running", on_off(false)));
    out
}

/// The gateway's price state at each slot's start (€/MWh, two decimals).
pub fn price_states(ha: &HomeAssistantFile, timing: Timing, prices: &[f64]) -> Vec<Timed> {
    prices
        .iter()
        .enumerate()
        .map(|(t, p)| Timed::new(timing.slot_start(t), t, Publish { topic: topic(ha, "price"), payload: format!("{p:.2}"), retain: true }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuation::{timeline, OutputFile};

    const TIMING: Timing = Timing { start_ms: 10_000, slot_ms: 1000 };

    fn ha() -> HomeAssistantFile {
        HomeAssistantFile { prefix: "ha".into(), node_id: "gw".into(), configuration_url: None }
    }

    /// The configuration variables Home Assistant documents for MQTT sensors and binary
    /// sensors (https://www.home-assistant.io/integrations/sensor.mqtt/,
    /// https://www.home-assistant.io/integrations/binary_sensor.mqtt/) and for the `device`
    /// and `origin` maps of a discovery payload.
    const COMMON: &[&str] = &[
        "availability",
        "availability_mode",
        "availability_template",
        "availability_topic",
        "default_entity_id",
        "device",
        "device_class",
        "enabled_by_default",
        "encoding",
        "entity_category",
        "entity_picture",
        "expire_after",
        "force_update",
        "icon",
        "json_attributes_template",
        "json_attributes_topic",
        "name",
        "object_id",
        "origin",
        "payload_available",
        "payload_not_available",
        "platform",
        "qos",
        "state_topic",
        "unique_id",
        "value_template",
    ];
    const SENSOR: &[&str] = &["last_reset_value_template", "options", "state_class", "suggested_display_precision", "unit_of_measurement"];
    const BINARY_SENSOR: &[&str] = &["off_delay", "payload_off", "payload_on"];
    /// https://www.home-assistant.io/integrations/switch.mqtt/
    const SWITCH: &[&str] = &["command_template", "command_topic", "optimistic", "payload_off", "payload_on", "retain", "state_off", "state_on"];
    const DEVICE: &[&str] = &[
        "configuration_url",
        "connections",
        "hw_version",
        "identifiers",
        "manufacturer",
        "model",
        "model_id",
        "name",
        "serial_number",
        "suggested_area",
        "sw_version",
        "via_device",
    ];
    const ORIGIN: &[&str] = &["name", "sw_version", "support_url"];
    /// Sensor device classes that take `state_class: measurement` and the units they allow
    /// (https://www.home-assistant.io/integrations/sensor/#device-class).
    const POWER_UNITS: &[&str] = &["mW", "W", "kW", "MW", "GW", "TW"];

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    #[test]
    fn discovery_uses_only_documented_keys_and_unique_ids() {
        let plans = vec![
            AppliancePlan {
                name: "ev".into(),
                output: Some(OutputFile::Tasmota { topic: "ev".into(), rated_w: 3000, min_on_s: 0, min_off_s: 0 }),
                schedule: vec![3000],
            },
            AppliancePlan { name: "pv".into(), output: None, schedule: vec![-1000] },
        ];
        let d = discovery(&ha(), &plans);
        assert_eq!(d.len(), 2 + 3 * plans.len() + 1, "price and market sensors, three entities per appliance, a control switch for the one with an output");
        let mut ids = std::collections::BTreeSet::new();
        for p in &d {
            assert!(p.retain, "{} is retained", p.topic);
            let c: Value = serde_json::from_str(&p.payload).unwrap();
            let component = p.topic.split('/').nth(1).unwrap();
            let specific = match component {
                "sensor" => SENSOR,
                "binary_sensor" => BINARY_SENSOR,
                "switch" => SWITCH,
                other => panic!("unexpected component {other}"),
            };
            let allowed: Vec<&str> = COMMON.iter().chain(specific).copied().collect();
            for k in keys(&c) {
                assert!(allowed.contains(&k), "{}: `{k}` is not a documented {component} key", p.topic);
            }
            assert!(keys(&c["device"]).iter().all(|k| DEVICE.contains(k)), "{}", p.topic);
            assert!(keys(&c["origin"]).iter().all(|k| ORIGIN.contains(k)), "{}", p.topic);
            assert_eq!(c["origin"]["name"], "gridproof");
            assert_eq!(c["availability_topic"], "gridproof/gw/availability");
            let id = c["unique_id"].as_str().unwrap();
            assert!(id.starts_with("gridproof_gw_"), "{id}");
            assert!(ids.insert(id.to_string()), "unique_id {id} twice");
            let object_id = p.topic.split('/').nth(3).unwrap();
            assert_eq!(id, format!("gridproof_gw_{object_id}"));
            if c["device_class"] == "power" {
                assert!(POWER_UNITS.contains(&c["unit_of_measurement"].as_str().unwrap()));
                assert_eq!(c["state_class"], "measurement");
            }
            if component == "switch" {
                assert_eq!(c["command_topic"], "gridproof/gw/ev/control/set");
                assert_eq!(c["retain"], true, "a pause outlives a restart");
            }
            if component == "binary_sensor" {
                assert_eq!((c["payload_on"].as_str(), c["payload_off"].as_str()), (Some("ON"), Some("OFF")));
            }
        }
        assert!(d.iter().any(|p| p.topic == "ha/binary_sensor/gw/pv_running/config"));
        assert!(d.iter().any(|p| p.topic == "ha/sensor/gw/price/config"));
        // The market sensor is an enum of the phases (HA: `options` needs `device_class: enum`
        // and excludes `state_class` and units).
        let market: Value = serde_json::from_str(&d.iter().find(|p| p.topic == "ha/sensor/gw/market/config").unwrap().payload).unwrap();
        assert_eq!(market["device_class"], "enum");
        assert_eq!(market["options"], json!(["registration", "scheduling", "scheduled", "executed", "settling", "settled"]));
        assert!(market.get("state_class").is_none() && market.get("unit_of_measurement").is_none());
        assert_eq!(discovery(&ha(), &[]).len(), 2, "without appliances: the gateway's sensors");
        let with_url = HomeAssistantFile { configuration_url: Some("http://10.0.0.2:8100/".into()), ..ha() };
        let c: Value = serde_json::from_str(&discovery(&with_url, &plans)[0].payload).unwrap();
        assert_eq!(c["device"]["configuration_url"], "http://10.0.0.2:8100/");
    }

    #[test]
    fn the_plan_goes_out_as_json_attributes_on_every_connect() {
        let plans = vec![AppliancePlan { name: "ev".into(), output: None, schedule: vec![700, -300] }];
        let a = announce(&ha(), PlanInfo { market_id: 7, timing: TIMING, prices: &[50.0, 51.5] }, &plans);
        assert!(a.iter().all(|p| p.topic != availability_topic(&ha())), "online follows the state, not the configs");
        let attrs = |topic: &str| -> Value { serde_json::from_str(&a.iter().find(|p| p.topic == topic).unwrap().payload).unwrap() };
        // Home Assistant takes attributes only from a JSON object.
        let gw = attrs("gridproof/gw/plan");
        assert_eq!(gw, json!({"market": 7, "start": "1970-01-01T00:00:10Z", "slot_ms": 1000, "prices_eur_mwh": [50.0, 51.5]}));
        assert_eq!(attrs("gridproof/gw/ev/plan")["power_w"], json!([700, -300]));
        assert!(a.iter().all(|p| p.retain));
    }

    #[test]
    fn states_follow_the_plan_and_the_relay() {
        let ha = ha();
        let plans = vec![
            // A 2 kW relay at 500 W: on for a quarter of slot 1.
            AppliancePlan {
                name: "boiler".into(),
                output: Some(OutputFile::Tasmota { topic: "b".into(), rated_w: 2000, min_on_s: 0, min_off_s: 0 }),
                schedule: vec![2000, 500, 0],
            },
            AppliancePlan { name: "pv".into(), output: None, schedule: vec![-300, -300, 0] },
            // evcc at 3 × 230 V: 11 kW charges (15 A); 3 kW is 4 A, below its 6 A: off.
            AppliancePlan {
                name: "car".into(),
                output: Some(OutputFile::Evcc { loadpoint: 1, prefix: "evcc".into(), voltage_v: 230, phases: 3, min_current_a: 6, max_current_a: 16 }),
                schedule: vec![11_000, 3_000, 0],
            },
        ];
        let tl = timeline(TIMING, &plans, &[50.0, 51.0, 52.5], Some(&ha), "gw");
        let on = |topic: &str| -> Vec<(u64, String)> { tl.iter().filter(|t| t.publish.topic == topic).map(|t| (t.at_ms, t.publish.payload.clone())).collect() };
        let s = |v: &[(u64, &str)]| v.iter().map(|(t, p)| (*t, p.to_string())).collect::<Vec<_>>();
        assert_eq!(on("gridproof/gw/boiler/running"), s(&[(1, "OFF"), (10_000, "ON"), (11_000, "ON"), (11_250, "OFF"), (12_000, "OFF"), (13_000, "OFF")]));
        assert_eq!(
            on("gridproof/gw/pv/running"),
            s(&[(1, "OFF"), (10_000, "ON"), (11_000, "ON"), (12_000, "OFF"), (13_000, "OFF")]),
            "feeding in counts as running"
        );
        assert_eq!(
            on("gridproof/gw/car/running"),
            s(&[(1, "OFF"), (10_000, "ON"), (11_000, "OFF"), (12_000, "OFF"), (13_000, "OFF")]),
            "as the loadpoint's mode says"
        );
        assert_eq!(
            on("gridproof/gw/pv/next_change"),
            s(&[(1, "1970-01-01T00:00:10Z"), (10_000, "1970-01-01T00:00:12Z"), (11_000, "1970-01-01T00:00:12Z"), (12_000, "1970-01-01T00:00:13Z")])
        );
        assert_eq!(on("gridproof/gw/pv/power"), s(&[(1, "0"), (10_000, "-300"), (11_000, "-300"), (12_000, "0"), (13_000, "0")]));
        assert_eq!(on("gridproof/gw/price"), s(&[(10_000, "50.00"), (11_000, "51.00"), (12_000, "52.50")]));
        assert!(tl.iter().filter(|t| t.publish.topic.starts_with("gridproof/")).all(|t| t.publish.retain));
        // Known from the final entry on: a connect long before slot 0 publishes these.
        let early = crate::actuation::Executor::new(tl, 0).reconcile(5_000);
        assert_eq!(early.len(), 3 * plans.len(), "power, next change and running per appliance: {early:?}");
    }
}
