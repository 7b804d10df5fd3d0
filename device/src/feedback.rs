//! What the devices say back while a schedule executes, sans-IO: a relay that comes back
//! online gets its current state again, and a Shelly's refusal of a command is reported.
//!
//! - A Tasmota publishes `tele/<topic>/LWT` = `Online` when it connects (its broker last will
//!   says `Offline`); a Shelly Gen2 publishes `<device_id>/online` = `true` (last will
//!   `false`). A device that was offline missed the commands meanwhile, and one that rebooted
//!   forgot its state and its dead-man timer: when one comes back, [`Feedback::handle`]
//!   returns the latest publication handed out so far for each of its topics (a Tasmota's
//!   `PulseTime` and `POWER`; every channel of a Shelly).
//! - A Shelly answers each JSON-RPC request on `<src>/rpc` (`src`: the gateway's client id)
//!   with `result` or `error {code, message}`; errors come back as [`Event::ShellyError`].
//!
//! Only live messages count: a retained one is what the broker held at subscription time,
//! which the executor's reconciliation at connect time already covered. A live `Online`
//! without an `Offline` before it (a device that rebooted faster than the broker noticed)
//! is a return too: sending the same state again is harmless.

use std::collections::BTreeSet;

use crate::actuation::{AppliancePlan, Executor, OutputFile, Publish, Timed};
use crate::home_assistant::{self, HomeAssistantFile};

/// A device whose presence the gateway follows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Presence {
    /// Where it says whether it is online.
    topic: String,
    /// The payload that means online.
    online: &'static str,
    /// The topics its commands go to start with this.
    commands: String,
}

impl Presence {
    fn of(output: &OutputFile) -> Option<Presence> {
        match output {
            OutputFile::Tasmota { topic, .. } => Some(Presence { topic: format!("tele/{topic}/LWT"), online: "Online", commands: format!("cmnd/{topic}/") }),
            OutputFile::Shelly { device_id, .. } => {
                Some(Presence { topic: format!("{device_id}/online"), online: "true", commands: format!("{device_id}/rpc") })
            }
            OutputFile::Setpoint { .. } | OutputFile::DutyCycle { .. } | OutputFile::Evcc { .. } => None,
        }
    }
}

/// An appliance Home Assistant may pause.
#[derive(Debug, Clone)]
struct Control {
    name: String,
    /// Its switch's command topic.
    topic: String,
    output: OutputFile,
}

/// What a message from a device means for the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The device on `topic` is back online: publish these again.
    Resend {
        /// Its presence topic.
        topic: String,
        /// The latest publication handed out so far per target of the device.
        state: Vec<Timed>,
    },
    /// A Shelly refused request `id`.
    ShellyError {
        /// The device (the reply's `src`).
        device: String,
        /// The request id (names channel and slot, `actuation::shelly_request_id`).
        id: u64,
        /// Shelly's error code.
        code: i64,
        /// Shelly's message.
        message: String,
    },
    /// Home Assistant paused (`paused`) or resumed gridproof's control of an appliance.
    Control {
        /// The appliance.
        appliance: String,
        /// Paused now.
        paused: bool,
        /// To publish: on a resume its output's current state; then the switch's new state.
        publish: Vec<Publish>,
    },
    /// Nothing to do (a presence state recorded, a successful reply, or noise).
    Nothing,
}

/// The presence and reply topics of one executing schedule, and the last presence seen.
#[derive(Debug, Clone)]
pub struct Feedback {
    devices: Vec<Presence>,
    replies: Option<String>,
    controls: Vec<Control>,
    ha: Option<HomeAssistantFile>,
    paused: BTreeSet<String>,
    /// Shelly refusals seen so far (the edge counts them).
    pub shelly_errors: u64,
}

impl Feedback {
    /// The topics to follow for `appliances` (`src`: the gateway's MQTT client id, where
    /// Shellies reply; `ha`: Home Assistant's control switches, if configured).
    pub fn new(appliances: &[AppliancePlan], src: &str, ha: Option<&HomeAssistantFile>) -> Feedback {
        let mut devices: Vec<Presence> = appliances.iter().filter_map(|a| a.output.as_ref().and_then(Presence::of)).collect();
        devices.sort_by(|a, b| a.topic.cmp(&b.topic));
        devices.dedup();
        let shelly = appliances.iter().any(|a| matches!(a.output, Some(OutputFile::Shelly { .. })));
        let controls = match ha {
            Some(h) => appliances
                .iter()
                .filter_map(|a| a.output.clone().map(|output| Control { name: a.name.clone(), topic: home_assistant::control_topic(h, &a.name), output }))
                .collect(),
            None => Vec::new(),
        };
        Feedback { devices, replies: shelly.then(|| format!("{src}/rpc")), controls, ha: ha.cloned(), paused: BTreeSet::new(), shelly_errors: 0 }
    }

    /// The topics to subscribe to (again after every reconnect).
    pub fn topics(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.topic.clone()).chain(self.replies.clone()).chain(self.controls.iter().map(|c| c.topic.clone())).collect()
    }

    /// Whether `t` may go out: not a command to an output Home Assistant paused.
    pub fn allows(&self, t: &Timed) -> bool {
        !self.controls.iter().any(|c| self.paused.contains(&c.name) && c.output.owns(t))
    }

    /// The control switches' states (after every connect: ON unless paused).
    pub fn control_states(&self) -> Vec<Publish> {
        match &self.ha {
            Some(h) => self.controls.iter().map(|c| home_assistant::control_state(h, &c.name, self.paused.contains(&c.name))).collect(),
            None => Vec::new(),
        }
    }

    /// What a message on `topic` means (`retained`: delivered from the broker's store at
    /// subscription time), given what `executor` has handed out so far.
    /// A control switch's command counts retained too (Home Assistant retains it, so a pause
    /// outlives a gateway restart).
    pub fn handle(&mut self, topic: &str, payload: &[u8], retained: bool, executor: &Executor) -> Event {
        if self.replies.as_deref() == Some(topic) {
            return shelly_reply(payload);
        }
        if let Some(c) = self.controls.iter().find(|c| c.topic == topic) {
            let paused = match std::str::from_utf8(payload).map(str::trim) {
                Ok("OFF") => true,
                Ok("ON") => false,
                _ => return Event::Nothing,
            };
            let was = self.paused.contains(&c.name);
            let mut publish = Vec::new();
            if was && !paused {
                publish.extend(executor.handed_out_latest(|t| c.output.owns(t)).into_iter().map(|t| t.publish));
            }
            let name = c.name.clone();
            if paused {
                self.paused.insert(name.clone());
            } else {
                self.paused.remove(&name);
            }
            if let Some(h) = &self.ha {
                publish.push(home_assistant::control_state(h, &name, paused));
            }
            return if was == paused { Event::Nothing } else { Event::Control { appliance: name, paused, publish } };
        }
        let Some(device) = self.devices.iter().find(|d| d.topic == topic) else { return Event::Nothing };
        let online = std::str::from_utf8(payload).is_ok_and(|p| p.trim() == device.online);
        if online && !retained {
            let state = executor.handed_out_latest(|t| t.publish.topic.starts_with(&device.commands));
            return Event::Resend { topic: topic.to_string(), state };
        }
        Event::Nothing
    }
}

/// A Shelly Gen2 JSON-RPC reply: `{"id", "src", "dst", "result"}` or `{..., "error": {"code",
/// "message"}}`.
fn shelly_reply(payload: &[u8]) -> Event {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else { return Event::Nothing };
    let Some(error) = v.get("error") else { return Event::Nothing };
    Event::ShellyError {
        device: v["src"].as_str().unwrap_or("?").to_string(),
        id: v["id"].as_u64().unwrap_or(0),
        code: error["code"].as_i64().unwrap_or(0),
        message: error["message"].as_str().unwrap_or("").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuation::{timeline, Timing};

    const TIMING: Timing = Timing { start_ms: 10_000, slot_ms: 1000 };

    fn plans() -> Vec<AppliancePlan> {
        vec![
            AppliancePlan {
                name: "ev".into(),
                output: Some(OutputFile::Tasmota { topic: "ev".into(), rated_w: 2000, min_on_s: 0, min_off_s: 0 }),
                schedule: vec![2000, 500, 0],
            },
            AppliancePlan {
                name: "boiler".into(),
                output: Some(OutputFile::Shelly { device_id: "shelly-1".into(), switch: 0, rated_w: 1000, min_on_s: 0, min_off_s: 0 }),
                schedule: vec![0, 1000, 0],
            },
        ]
    }

    #[test]
    fn a_relay_that_comes_back_gets_its_current_state_again() {
        let plans = plans();
        let mut ex = Executor::new(timeline(TIMING, &plans, &[], None, "gw"), 0);
        let mut fb = Feedback::new(&plans, "gw", None);
        assert_eq!(fb.topics(), vec!["shelly-1/online", "tele/ev/LWT", "gw/rpc"]);
        ex.due(11_500);
        // The retained presence at subscription: nothing (reconciliation covered it).
        assert_eq!(fb.handle("tele/ev/LWT", b"Online", true, &ex), Event::Nothing);
        assert_eq!(fb.handle("tele/ev/LWT", b"Offline", false, &ex), Event::Nothing);
        let Event::Resend { state, .. } = fb.handle("tele/ev/LWT", b"Online", false, &ex) else { panic!("no resend") };
        let sent: Vec<(&str, &str)> = state.iter().map(|t| (t.publish.topic.as_str(), t.publish.payload.as_str())).collect();
        assert_eq!(sent, vec![("cmnd/ev/PulseTime", "131"), ("cmnd/ev/POWER", "OFF")], "its dead-man timer, then the state of slot 1 after its duty cycle");
        // A Shelly that rebooted before the broker saw it go: `true` twice, no `false`.
        for _ in 0..2 {
            let Event::Resend { state, .. } = fb.handle("shelly-1/online", b"true", false, &ex) else { panic!("no resend") };
            assert_eq!(state.len(), 1);
            assert!(state[0].publish.payload.contains("\"on\":true"), "{:?}", state[0]);
        }
        assert_eq!(fb.handle("shelly-1/online", b"false", false, &ex), Event::Nothing);
        assert_eq!(fb.handle("other/topic", b"Online", false, &ex), Event::Nothing);
    }

    #[test]
    fn shelly_errors_are_reported_and_results_ignored() {
        let plans = plans();
        let ex = Executor::new(timeline(TIMING, &plans, &[], None, "gw"), 0);
        let mut fb = Feedback::new(&plans, "gw", None);
        let err = br#"{"id":1002,"src":"shelly-1","dst":"gw","error":{"code":-103,"message":"Invalid argument 'id': no such component"}}"#;
        assert_eq!(
            fb.handle("gw/rpc", err, false, &ex),
            Event::ShellyError { device: "shelly-1".into(), id: 1002, code: -103, message: "Invalid argument 'id': no such component".into() }
        );
        assert_eq!(fb.handle("gw/rpc", br#"{"id":1002,"src":"shelly-1","dst":"gw","result":{"was_on":false}}"#, false, &ex), Event::Nothing);
        assert_eq!(fb.handle("gw/rpc", b"\xff not json", false, &ex), Event::Nothing);
        let no_shelly = Feedback::new(&plans[..1], "gw", None);
        assert_eq!(no_shelly.topics(), vec!["tele/ev/LWT"]);
    }

    #[test]
    fn home_assistant_pauses_and_resumes_one_appliance() {
        let plans = plans();
        let ha = HomeAssistantFile { prefix: "homeassistant".into(), node_id: "home".into(), configuration_url: None };
        let mut ex = Executor::new(timeline(TIMING, &plans, &[], None, "gw"), 0);
        let mut fb = Feedback::new(&plans, "gw", Some(&ha));
        assert!(fb.topics().contains(&"gridproof/home/ev/control/set".to_string()));
        assert_eq!(fb.control_states().iter().map(|p| p.payload.as_str()).collect::<Vec<_>>(), vec!["ON", "ON"]);
        let due = ex.due(11_000);
        assert!(due.iter().all(|t| fb.allows(t)));
        // Paused (Home Assistant retains the command: a restart reads it back).
        let Event::Control { appliance, paused: true, publish } = fb.handle("gridproof/home/ev/control/set", b"OFF", true, &ex) else { panic!("no pause") };
        assert_eq!(appliance, "ev");
        assert_eq!(publish.iter().map(|p| (p.topic.as_str(), p.payload.as_str())).collect::<Vec<_>>(), vec![("gridproof/home/ev/control", "OFF")]);
        let due = ex.due(12_000);
        let (ev, boiler): (Vec<&Timed>, Vec<&Timed>) = due.iter().partition(|t| t.publish.topic.starts_with("cmnd/ev/"));
        assert!(!ev.is_empty() && ev.iter().all(|t| !fb.allows(t)), "the paused relay gets nothing");
        assert!(!boiler.is_empty() && boiler.iter().all(|t| fb.allows(t)), "the other appliance still does");
        assert_eq!(fb.handle("gridproof/home/ev/control/set", b"OFF", false, &ex), Event::Nothing, "already paused");
        assert_eq!(fb.handle("gridproof/home/ev/control/set", b"maybe", false, &ex), Event::Nothing);
        // Resumed: its current state (slot 2: OFF) and the switch's.
        let Event::Control { paused: false, publish, .. } = fb.handle("gridproof/home/ev/control/set", b"ON", false, &ex) else { panic!("no resume") };
        let sent: Vec<(&str, &str)> = publish.iter().map(|p| (p.topic.as_str(), p.payload.as_str())).collect();
        assert_eq!(sent, vec![("cmnd/ev/PulseTime", "131"), ("cmnd/ev/POWER", "OFF"), ("gridproof/home/ev/control", "ON")]);
        assert!(ex.due(13_000).iter().all(|t| fb.allows(t)));
    }
}
