//! Actuation, sans-IO (DESIGN §8): the committed schedule becomes a timeline of MQTT
//! publications — one per output at the start of each slot, a second one inside the slot for
//! on/off outputs running a duty cycle, and Home Assistant state — and an [`Executor`] walks it
//! as time passes. It never reads a clock and never touches a socket: the host passes `now`
//! and publishes what it is given.
//!
//! Every publication carries a target that names one piece of state (a relay, a Shelly
//! channel, a setpoint, an evcc loadpoint's mode or current, a sensor), so the latest
//! publication per target *is* the state. That gives reconciliation for
//! free: after a restart or a broker outage, [`Executor::reconcile`] republishes only the
//! latest due value of each topic, never a backlog of stale commands.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use circuits::fixed::Watts;
use serde::{Deserialize, Serialize};

use crate::home_assistant::{self, HomeAssistantFile};

/// How one appliance is switched (the `[appliances.output]` table of `gateway.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "adapter", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputFile {
    /// Publishes the slot's power in watts, as a decimal integer, to `topic`.
    Setpoint {
        /// The topic.
        topic: String,
        /// Whether the broker keeps the last setpoint for late subscribers.
        #[serde(default)]
        retain: bool,
    },
    /// A relay driven with a duty cycle: on for power / rated of each slot, then off.
    DutyCycle {
        /// The topic.
        topic: String,
        /// The appliance's power when on, W.
        rated_w: u32,
        /// Payload that switches on.
        #[serde(default = "on")]
        on_payload: String,
        /// Payload that switches off.
        #[serde(default = "off")]
        off_payload: String,
        /// Shortest time on once switched on, s ([`Relay`]; 0: none).
        #[serde(default)]
        min_on_s: u32,
        /// Shortest time off once switched off, s ([`Relay`]; 0: none).
        #[serde(default)]
        min_off_s: u32,
    },
    /// A Tasmota relay: `cmnd/<topic>/POWER` with `ON` / `OFF`, duty-cycled.
    Tasmota {
        /// The device's Tasmota topic.
        topic: String,
        /// The appliance's power when on, W.
        rated_w: u32,
        /// Shortest time on once switched on, s ([`Relay`]; 0: none).
        #[serde(default)]
        min_on_s: u32,
        /// Shortest time off once switched off, s ([`Relay`]; 0: none).
        #[serde(default)]
        min_off_s: u32,
    },
    /// A Shelly Gen2 switch: JSON-RPC `Switch.Set` on `<device_id>/rpc`, duty-cycled.
    Shelly {
        /// The device's MQTT prefix (its id, e.g. `shellyplus1pm-a8032ab12345`).
        device_id: String,
        /// The switch component id.
        #[serde(default)]
        switch: u8,
        /// The appliance's power when on, W.
        rated_w: u32,
        /// Shortest time on once switched on, s ([`Relay`]; 0: none).
        #[serde(default)]
        min_on_s: u32,
        /// Shortest time off once switched off, s ([`Relay`]; 0: none).
        #[serde(default)]
        min_off_s: u32,
    },
    /// An EV charger under evcc, through evcc's MQTT API (docs.evcc.io/en/integrations/mqtt-api,
    /// "Writable Topics": append `/set` to a loadpoint topic): per slot the loadpoint's
    /// `mode` (`now` to charge, `off`) and `maxCurrent` (A per phase, from the slot's power,
    /// the voltage and the phases, within `min_current_a..=max_current_a`; below the minimum
    /// the slot is `off`).
    Evcc {
        /// The loadpoint id (from 1).
        loadpoint: u32,
        /// evcc's MQTT topic prefix.
        #[serde(default = "evcc_prefix")]
        prefix: String,
        /// Phase voltage, V.
        #[serde(default = "evcc_voltage")]
        voltage_v: u32,
        /// Phases the car charges on (1 or 3).
        #[serde(default = "evcc_phases")]
        phases: u32,
        /// The least current a charge runs at, A (IEC 61851: 6).
        #[serde(default = "evcc_min_current")]
        min_current_a: u32,
        /// The most current the loadpoint takes, A.
        max_current_a: u32,
    },
}

fn evcc_prefix() -> String {
    "evcc".into()
}
fn evcc_voltage() -> u32 {
    230
}
fn evcc_phases() -> u32 {
    3
}
fn evcc_min_current() -> u32 {
    6
}

fn on() -> String {
    "ON".into()
}
fn off() -> String {
    "OFF".into()
}

impl OutputFile {
    /// The relay settings of the on/off adapters (duty cycle, Tasmota, Shelly); `None` for
    /// the others.
    pub fn relay(&self) -> Option<Relay> {
        match self {
            OutputFile::Setpoint { .. } | OutputFile::Evcc { .. } => None,
            OutputFile::DutyCycle { rated_w, min_on_s, min_off_s, .. }
            | OutputFile::Tasmota { rated_w, min_on_s, min_off_s, .. }
            | OutputFile::Shelly { rated_w, min_on_s, min_off_s, .. } => Some(Relay { rated_w: *rated_w, min_on_s: *min_on_s, min_off_s: *min_off_s }),
        }
    }

    /// What one of its commands sets, unique per output: the topic, and for a Shelly the
    /// switch channel too (two appliances on one Pro 2PM share the topic, not the state).
    pub fn target(&self) -> String {
        match self {
            OutputFile::Shelly { switch, .. } => format!("{} switch:{switch}", self.topic()),
            _ => self.topic(),
        }
    }

    /// The state a publication of this output sets: a Shelly's channel, else its topic (an
    /// evcc loadpoint's mode and current are two).
    fn target_of(&self, p: &Publish) -> String {
        match self {
            OutputFile::Shelly { .. } => self.target(),
            _ => p.topic.clone(),
        }
    }

    /// Whether the settings are usable: an evcc loadpoint from 1, 1 or 3 phases, a voltage,
    /// and 0 < min current ≤ max current.
    pub fn check(&self) -> Result<(), String> {
        if let OutputFile::Evcc { loadpoint, phases, voltage_v, min_current_a, max_current_a, .. } = self {
            if *loadpoint == 0 {
                return Err("evcc: loadpoint ids start at 1".into());
            }
            if ![1, 3].contains(phases) || *voltage_v == 0 {
                return Err(format!("evcc: {phases} phases at {voltage_v} V (1 or 3 phases, a voltage above 0)"));
            }
            if *min_current_a == 0 || min_current_a > max_current_a {
                return Err(format!("evcc: currents {min_current_a}..={max_current_a} A (0 < min ≤ max)"));
            }
        }
        Ok(())
    }

    /// The topic its commands go to.
    pub fn topic(&self) -> String {
        match self {
            OutputFile::Setpoint { topic, .. } | OutputFile::DutyCycle { topic, .. } => topic.clone(),
            OutputFile::Tasmota { topic, .. } => format!("cmnd/{topic}/POWER"),
            OutputFile::Shelly { device_id, .. } => format!("{device_id}/rpc"),
            OutputFile::Evcc { prefix, loadpoint, .. } => format!("{prefix}/loadpoints/{loadpoint}"),
        }
    }

    /// The publication that sets the output to `power` (setpoint) or on/off (relays); a
    /// Shelly's ON carries its dead-man timer (`toggle_after`: `on_ms` + [`DEADMAN_MARGIN_MS`],
    /// in whole seconds), its JSON-RPC id (`request` made unique per channel,
    /// [`shelly_request_id`]) and `src`, the gateway's MQTT client id.
    fn command(&self, power: Watts, on: bool, request: u64, on_ms: u64, src: &str) -> Vec<Publish> {
        let (payload, retain) = match self {
            OutputFile::Evcc { max_current_a, .. } => {
                let topic = self.topic();
                let set = |what: &str, payload: String| Publish { topic: format!("{topic}/{what}/set"), payload, retain: false };
                return if on && self.is_on(power) {
                    let amps = self.evcc_amps(power).min(*max_current_a as u64);
                    vec![set("maxCurrent", amps.to_string()), set("mode", "now".into())]
                } else {
                    vec![set("mode", "off".into())]
                };
            }
            OutputFile::Setpoint { retain, .. } => (power.to_string(), *retain),
            OutputFile::DutyCycle { on_payload, off_payload, .. } => (if on { on_payload.clone() } else { off_payload.clone() }, false),
            OutputFile::Tasmota { .. } => ((if on { "ON" } else { "OFF" }).to_string(), false),
            OutputFile::Shelly { switch, .. } => {
                let mut params = serde_json::json!({"id": switch, "on": on});
                if on {
                    params["toggle_after"] = (on_ms + DEADMAN_MARGIN_MS).div_ceil(1000).into();
                }
                let id = shelly_request_id(*switch, request);
                (serde_json::json!({"id": id, "src": src, "method": "Switch.Set", "params": params}).to_string(), false)
            }
        };
        vec![Publish { topic: self.topic(), payload, retain }]
    }

    /// Whether `t` is one of this output's commands (its state, its dead-man timer): for a
    /// Shelly its channel's, for a Tasmota anything under `cmnd/<topic>/`, for evcc the
    /// loadpoint's topics.
    pub fn owns(&self, t: &Timed) -> bool {
        match self {
            OutputFile::Shelly { .. } => t.target == self.target(),
            OutputFile::Tasmota { topic, .. } => t.publish.topic.starts_with(&format!("cmnd/{topic}/")),
            OutputFile::Evcc { .. } => t.publish.topic.starts_with(&format!("{}/", self.topic())),
            OutputFile::Setpoint { topic, .. } | OutputFile::DutyCycle { topic, .. } => t.publish.topic == *topic,
        }
    }

    /// Whether a slot of `power` has the output on, for outputs without a duty cycle: an evcc
    /// loadpoint charges (the current reaches its minimum), a setpoint is not 0 W. Relays are
    /// on by their duty cycle ([`Relay::on_ms`]).
    pub fn is_on(&self, power: Watts) -> bool {
        match self {
            OutputFile::Evcc { min_current_a, .. } => self.evcc_amps(power) >= *min_current_a as u64,
            _ => power != 0,
        }
    }

    /// For an evcc loadpoint, the current per phase that draws at most `power`, A (not yet
    /// capped at its maximum); 0 for other outputs.
    fn evcc_amps(&self, power: Watts) -> u64 {
        match self {
            OutputFile::Evcc { phases, voltage_v, .. } => power.max(0) as u64 / (*voltage_v as u64 * *phases as u64).max(1),
            _ => 0,
        }
    }

    /// The publications that leave the output in its safe state: off (0 W for a setpoint,
    /// mode `off` for an evcc loadpoint).
    pub fn safe_state(&self, src: &str) -> Vec<Publish> {
        self.command(0, false, SHELLY_SAFE_REQUEST, 0, src)
    }
}

/// How much longer than planned a relay may stay on if the gateway, its host or the broker
/// dies: every ON carries a dead-man timer of its on-time plus this (Shelly `toggle_after`;
/// Tasmota `PulseTime` = the slot length plus this, restarted by every ON), after which the
/// device switches itself off.
pub const DEADMAN_MARGIN_MS: u64 = 30_000;

/// Request ids of one Shelly channel: `switch · SHELLY_ID_STRIDE + request` (the request is 2t
/// at slot t's start, 2t + 1 for its duty cycle's switch-off, 2T at the end; T ≤ 288).
pub const SHELLY_ID_STRIDE: u64 = 1000;

/// The request number of a switch-off when the gateway stops (beyond any slot's).
const SHELLY_SAFE_REQUEST: u64 = SHELLY_ID_STRIDE - 1;

/// The JSON-RPC id of request `request` to Shelly channel `switch` (unique per channel).
pub fn shelly_request_id(switch: u8, request: u64) -> u64 {
    switch as u64 * SHELLY_ID_STRIDE + request
}

/// Tasmota's `PulseTime` value for a pulse of `ms`: tenths of a second up to 11.1 s, else
/// 100 + seconds (rounded up), at most 64,900 (18 h).
pub fn tasmota_pulse_time(ms: u64) -> u64 {
    if ms <= 11_100 {
        ms.div_ceil(100).max(1)
    } else {
        (100 + ms.div_ceil(1000)).min(64_900)
    }
}

/// One MQTT publication (QoS 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Topic.
    pub topic: String,
    /// UTF-8 payload.
    pub payload: String,
    /// Retained by the broker.
    pub retain: bool,
}

/// One appliance's part of the plan.
#[derive(Debug, Clone)]
pub struct AppliancePlan {
    /// Its name (unique on the gateway; used in entity ids and state topics).
    pub name: String,
    /// How it is switched, if at all.
    pub output: Option<OutputFile>,
    /// Its committed schedule, W per slot.
    pub schedule: Vec<Watts>,
}

/// When slots happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Slot 0 starts here (ms since the Unix epoch).
    pub start_ms: u64,
    /// Δ in ms (> 0).
    pub slot_ms: u64,
}

impl Timing {
    /// When slot `t` starts (t = T is the end of the schedule).
    pub fn slot_start(&self, t: usize) -> u64 {
        self.start_ms.saturating_add(self.slot_ms.saturating_mul(t as u64))
    }
}

/// A publication due at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// The slot it belongs to (T for the end-of-schedule commands).
    pub slot: usize,
    /// The state it sets ([`OutputFile::target`], or the topic): the executor keeps the
    /// latest per target.
    pub target: String,
    /// What.
    pub publish: Publish,
}

impl Timed {
    /// A publication whose target is its topic.
    pub(crate) fn new(at_ms: u64, slot: usize, publish: Publish) -> Timed {
        Timed { at_ms, slot, target: publish.topic.clone(), publish }
    }

    fn on(output: &OutputFile, at_ms: u64, slot: usize, publish: Vec<Publish>) -> impl Iterator<Item = Timed> + '_ {
        publish.into_iter().map(move |p| Timed { at_ms, slot, target: output.target_of(&p), publish: p })
    }
}

/// Home Assistant's RFC 3339 timestamp for ms since the epoch.
pub fn rfc3339(ms: u64) -> String {
    // humantime formats years up to 9999 (a time from the log may be anything).
    const LAST_MS: u64 = 253_402_300_799_000;
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.min(LAST_MS))).to_string()
}

/// The most a relay's minimum on or off time may be (s): longer ones are refused by the
/// configuration.
pub const MAX_MIN_SWITCH_S: u32 = 3600;

/// An on/off output: its rating and the shortest on and off times it allows (a compressor
/// that must run, or rest, some minutes once switched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    /// The appliance's power when on, W.
    pub rated_w: u32,
    /// Shortest time on once switched on, s.
    pub min_on_s: u32,
    /// Shortest time off once switched off, s.
    pub min_off_s: u32,
}

impl Relay {
    /// The minimum (on, off) times in effect in slots of `slot_ms`, ms: as configured, but
    /// at most half a slot each (so both hold in every slot; a longer one is clamped).
    pub fn min_times_ms(&self, slot_ms: u64) -> (u64, u64) {
        let clamp = |s: u32| (s as u64 * 1000).min(slot_ms / 2);
        (clamp(self.min_on_s), clamp(self.min_off_s))
    }

    /// Whether a minimum time is longer than half a slot of `slot_ms` (and so clamped).
    pub fn clamped(&self, slot_ms: u64) -> bool {
        self.min_times_ms(slot_ms) != (self.min_on_s as u64 * 1000, self.min_off_s as u64 * 1000)
    }

    /// How long the relay is on at the start of a slot of `slot_ms` to deliver `power`: its
    /// duty cycle (power / rated, rounded to the nearest ms; 0 for power ≤ 0, the whole slot
    /// at or above the rating), then held to the minimum times `m_on`, `m_off` of
    /// [`Relay::min_times_ms`]: an on-time below `m_on` becomes `m_on` from half of it and 0
    /// below; an off-time below `m_off` becomes `m_off` from half of it and 0 below (the
    /// whole slot on). Every on run of the timeline then lasts at least `m_on` and every off
    /// run between two on runs at least `m_off`; a slot's energy moves by at most half a
    /// minimum time at the rated power.
    pub fn on_ms(&self, slot_ms: u64, power: Watts) -> u64 {
        let rated = self.rated_w as u64;
        let duty = (power.max(0) as u64).min(rated);
        let mut on = (slot_ms * duty + rated / 2) / rated.max(1);
        let (m_on, m_off) = self.min_times_ms(slot_ms);
        if on > 0 && on < m_on {
            on = if 2 * on >= m_on { m_on } else { 0 };
        }
        let off = slot_ms - on;
        if off > 0 && off < m_off {
            on = if 2 * off >= m_off { slot_ms - m_off } else { slot_ms };
        }
        on
    }
}

/// The whole timeline of a committed schedule, sorted by time (stable: within one instant,
/// in appliance order). `prices` are €/MWh per slot (for Home Assistant only); `src` is the
/// gateway's MQTT client id (a Shelly's replies go to `<src>/rpc`). Relays carry dead-man
/// timers ([`DEADMAN_MARGIN_MS`]): a Tasmota's `PulseTime` is set before its first command
/// and cleared (0) after its last.
pub fn timeline(timing: Timing, appliances: &[AppliancePlan], prices: &[f64], ha: Option<&HomeAssistantFile>, src: &str) -> Vec<Timed> {
    assert!(timing.slot_ms > 0, "Δ must be positive");
    let mut out = Vec::new();
    for a in appliances {
        let slots = a.schedule.len();
        if let Some(OutputFile::Tasmota { topic, .. }) = &a.output {
            let pulse = tasmota_pulse_time(timing.slot_ms + DEADMAN_MARGIN_MS);
            out.push(Timed::new(timing.slot_start(0), 0, Publish { topic: format!("cmnd/{topic}/PulseTime"), payload: pulse.to_string(), retain: false }));
        }
        for (t, &power) in a.schedule.iter().enumerate() {
            let start = timing.slot_start(t);
            if let Some(output) = &a.output {
                let request = 2 * t as u64;
                match output.relay() {
                    None => out.extend(Timed::on(output, start, t, output.command(power, true, request, timing.slot_ms, src))),
                    Some(relay) => {
                        let on_ms = relay.on_ms(timing.slot_ms, power);
                        out.extend(Timed::on(output, start, t, output.command(power, on_ms > 0, request, on_ms, src)));
                        if on_ms > 0 && on_ms < timing.slot_ms {
                            out.extend(Timed::on(output, start + on_ms, t, output.command(0, false, request + 1, 0, src)));
                        }
                    }
                }
            }
        }
        // The schedule ends: switch off and say so.
        let end = timing.slot_start(slots);
        if let Some(output) = &a.output {
            out.extend(Timed::on(output, end, slots, output.command(0, false, 2 * slots as u64, 0, src)));
            if let OutputFile::Tasmota { topic, .. } = output {
                out.push(Timed::new(end, slots, Publish { topic: format!("cmnd/{topic}/PulseTime"), payload: "0".into(), retain: false }));
            }
        }
        if let Some(ha) = ha {
            out.extend(home_assistant::appliance_states(ha, timing, a));
        }
    }
    if let Some(ha) = ha {
        out.extend(home_assistant::price_states(ha, timing, prices));
    }
    out.sort_by_key(|t| t.at_ms);
    out
}

/// What leaves every output of `appliances` in its safe state (off), for a gateway that
/// stops while it executes their schedule.
pub fn safe_state(appliances: &[AppliancePlan], src: &str) -> Vec<Publish> {
    appliances.iter().filter_map(|a| a.output.as_ref()).flat_map(|o| o.safe_state(src)).collect()
}

/// Walks a timeline. The only state is how far it got (`done_until_ms`: every publication due
/// at or before it has been handed out), which the host persists.
#[derive(Debug, Clone)]
pub struct Executor {
    timeline: Vec<Timed>,
    cursor: usize,
}

impl Executor {
    /// An executor that has handed out everything due at or before `done_until_ms` (0: nothing).
    pub fn new(timeline: Vec<Timed>, done_until_ms: u64) -> Executor {
        debug_assert!(timeline.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "timeline sorted");
        let cursor = timeline.partition_point(|t| t.at_ms <= done_until_ms);
        Executor { timeline, cursor }
    }

    /// When the next publication is due, if any remains.
    pub fn next_at(&self) -> Option<u64> {
        self.timeline.get(self.cursor).map(|t| t.at_ms)
    }

    /// Whether everything has been handed out.
    pub fn is_done(&self) -> bool {
        self.cursor == self.timeline.len()
    }

    /// Hands out what became due by `now_ms`, keeping only the latest per target (a late poll
    /// publishes the current state, not the history), in time order.
    pub fn due(&mut self, now_ms: u64) -> Vec<Timed> {
        let end = self.cursor + self.timeline[self.cursor..].partition_point(|t| t.at_ms <= now_ms);
        let due = latest_per_target(&self.timeline[self.cursor..end]);
        self.cursor = end;
        due
    }

    /// The latest publication handed out so far for each target whose publications `pick`
    /// selects, in time order (what a device that lost its state needs again). Does not
    /// advance.
    pub fn handed_out_latest(&self, pick: impl Fn(&Timed) -> bool) -> Vec<Timed> {
        let picked: Vec<Timed> = self.timeline[..self.cursor].iter().filter(|t| pick(t)).cloned().collect();
        latest_per_target(&picked)
    }

    /// The current state at `now_ms`: the latest publication due so far for every target,
    /// whether or not it was handed out before. Used after (re)connecting to the broker.
    /// Advances like [`Executor::due`].
    pub fn reconcile(&mut self, now_ms: u64) -> Vec<Timed> {
        let end = self.cursor + self.timeline[self.cursor..].partition_point(|t| t.at_ms <= now_ms);
        self.cursor = end;
        latest_per_target(&self.timeline[..end])
    }
}

fn latest_per_target(items: &[Timed]) -> Vec<Timed> {
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, t) in items.iter().enumerate() {
        last.insert(&t.target, i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    keep.into_iter().map(|i| items[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(output: OutputFile, schedule: Vec<Watts>) -> Vec<AppliancePlan> {
        vec![AppliancePlan { name: "ev".into(), output: Some(output), schedule }]
    }

    const TIMING: Timing = Timing { start_ms: 10_000, slot_ms: 1000 };

    /// The (time, on) switchings of a timeline's relay commands (Tasmota `POWER`).
    fn switchings(tl: &[Timed]) -> Vec<(u64, bool)> {
        let mut out: Vec<(u64, bool)> = Vec::new();
        for t in tl.iter().filter(|t| t.publish.topic.ends_with("/POWER")) {
            let on = t.publish.payload == "ON";
            if out.last().map(|l| l.1) != Some(on) {
                out.push((t.at_ms, on));
            }
        }
        out
    }

    #[test]
    fn relay_minimum_times_round_short_runs_to_the_minimum_or_away() {
        // 15-minute slots, a 1 kW heater that runs and rests at least 5 minutes.
        let slot_ms = 900_000;
        let relay = Relay { rated_w: 1000, min_on_s: 300, min_off_s: 300 };
        assert_eq!(relay.on_ms(slot_ms, 100), 0, "90 s on: below half the minimum, not switched on");
        assert_eq!(relay.on_ms(slot_ms, 200), 300_000, "180 s on: held on for the minimum");
        assert_eq!(relay.on_ms(slot_ms, 500), 450_000, "450 s on and off: untouched");
        assert_eq!(relay.on_ms(slot_ms, 750), 600_000, "225 s off: held off for the minimum");
        assert_eq!(relay.on_ms(slot_ms, 900), slot_ms, "90 s off: not switched off");
        assert!(!relay.clamped(slot_ms));
        // In 5-minute slots a 5-minute minimum is clamped to half the slot.
        assert_eq!(relay.min_times_ms(300_000), (150_000, 150_000));
        assert!(relay.clamped(300_000));
        // Without minimum times the duty cycle is exact.
        let plain = Relay { rated_w: 1000, min_on_s: 0, min_off_s: 0 };
        assert_eq!(plain.on_ms(slot_ms, 1), 900);
        assert_eq!(plain.on_ms(slot_ms, 999), 899_100);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Whatever the schedule, every on run of a relay's commands lasts its minimum on time
        /// and every off run between two on runs its minimum off time, and no slot's energy
        /// moves by more than half a minimum time at the rated power.
        #[test]
        fn relay_runs_respect_the_minimum_times(
            schedule in proptest::collection::vec(0i32..=1200, 1..24),
            min_on_s in 0u32..=1000,
            min_off_s in 0u32..=1000,
        ) {
            let timing = Timing { start_ms: 1_000_000, slot_ms: 900_000 };
            let output = OutputFile::Tasmota { topic: "hp".into(), rated_w: 1000, min_on_s, min_off_s };
            let relay = output.relay().unwrap();
            let (m_on, m_off) = relay.min_times_ms(timing.slot_ms);
            let runs = switchings(&timeline(timing, &plan(output, schedule.clone()), &[], None, "gw"));
            for w in runs.windows(2) {
                let (at, on) = w[0];
                let length = w[1].0 - at;
                if on {
                    proptest::prop_assert!(length >= m_on, "on for {length} ms < {m_on}: {runs:?}");
                } else if at > timing.start_ms {
                    proptest::prop_assert!(length >= m_off, "off for {length} ms < {m_off}: {runs:?}");
                }
            }
            for &p in &schedule {
                let exact = (timing.slot_ms * p.min(1000) as u64) as f64 / 1000.0;
                let moved = (relay.on_ms(timing.slot_ms, p) as f64 - exact).abs();
                proptest::prop_assert!(moved <= m_on.max(m_off) as f64 / 2.0 + 1.0, "power {p}: {moved} ms moved");
            }
        }
    }

    #[test]
    fn tasmota_relay_runs_a_duty_cycle_per_slot_and_ends_off() {
        let tl =
            timeline(TIMING, &plan(OutputFile::Tasmota { topic: "ev".into(), rated_w: 2000, min_on_s: 0, min_off_s: 0 }, vec![2000, 500, 0]), &[], None, "gw");
        let power: Vec<(u64, &str)> = tl.iter().filter(|t| t.publish.topic == "cmnd/ev/POWER").map(|t| (t.at_ms, t.publish.payload.as_str())).collect();
        assert_eq!(power, vec![(10_000, "ON"), (11_000, "ON"), (11_250, "OFF"), (12_000, "OFF"), (13_000, "OFF")]);
        assert!(tl.iter().all(|t| !t.publish.retain));
        // The dead-man timer: PulseTime (a slot + 30 s = 31 s → 131) before the first command,
        // restarted by every ON; cleared after the last.
        let pulse: Vec<(u64, &str)> = tl.iter().filter(|t| t.publish.topic == "cmnd/ev/PulseTime").map(|t| (t.at_ms, t.publish.payload.as_str())).collect();
        assert_eq!(pulse, vec![(10_000, "131"), (13_000, "0")]);
        assert_eq!(tl[0].publish.topic, "cmnd/ev/PulseTime", "set before the first ON");
        assert_eq!((tasmota_pulse_time(500), tasmota_pulse_time(11_100), tasmota_pulse_time(11_101), tasmota_pulse_time(u64::MAX / 2)), (5, 111, 112, 64_900));
    }

    #[test]
    fn shelly_sends_switch_set_rpc_with_a_dead_man_timer() {
        let tl = timeline(
            TIMING,
            &plan(OutputFile::Shelly { device_id: "shellyplus1-abc".into(), switch: 1, rated_w: 1000, min_on_s: 0, min_off_s: 0 }, vec![1000, 250]),
            &[],
            None,
            "gw-7",
        );
        let v: Vec<serde_json::Value> = tl.iter().map(|t| serde_json::from_str(&t.publish.payload).unwrap()).collect();
        assert!(tl.iter().all(|t| t.publish.topic == "shellyplus1-abc/rpc"));
        assert!(v.iter().all(|v| v["method"] == "Switch.Set" && v["src"] == "gw-7"), "{v:?}");
        // Slot 0 fully on (1 s + 30 s), slot 1 on for 250 ms (31 s, rounded up), then off.
        assert_eq!(v[0]["params"], serde_json::json!({"id": 1, "on": true, "toggle_after": 31}));
        assert_eq!(v[1]["params"], serde_json::json!({"id": 1, "on": true, "toggle_after": 31}));
        assert_eq!(v[2]["params"], serde_json::json!({"id": 1, "on": false}));
        let ids: Vec<u64> = v.iter().map(|v| v["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, vec![1000, 1002, 1003, 1004], "switch 1's ids: 1000 + 2t, 2t + 1 for the switch-off, 2T at the end");
    }

    /// evcc's MQTT API as documented at https://docs.evcc.io/en/integrations/mqtt-api
    /// ("Writable Topics": append `/set` to the topic and send the new value;
    /// `evcc/loadpoints/<id>/mode`, `evcc/loadpoints/<id>/maxCurrent`).
    #[test]
    fn evcc_gets_the_loadpoints_mode_and_current_per_slot() {
        let evcc = OutputFile::Evcc { loadpoint: 1, prefix: "evcc".into(), voltage_v: 230, phases: 3, min_current_a: 6, max_current_a: 16 };
        // 11 kW → 15 A (3 × 230 V × 15 A = 10.35 kW ≤ 11 kW); 20 kW → 16 A (the loadpoint's
        // most); 3 kW → 4 A, below the 6 A a charge needs: off; 0 → off.
        let tl = timeline(TIMING, &plan(evcc.clone(), vec![11_000, 20_000, 3_000, 0]), &[], None, "gw");
        let got: Vec<(u64, &str, &str)> = tl.iter().map(|t| (t.at_ms, t.publish.topic.as_str(), t.publish.payload.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (10_000, "evcc/loadpoints/1/maxCurrent/set", "15"),
                (10_000, "evcc/loadpoints/1/mode/set", "now"),
                (11_000, "evcc/loadpoints/1/maxCurrent/set", "16"),
                (11_000, "evcc/loadpoints/1/mode/set", "now"),
                (12_000, "evcc/loadpoints/1/mode/set", "off"),
                (13_000, "evcc/loadpoints/1/mode/set", "off"),
                (14_000, "evcc/loadpoints/1/mode/set", "off"),
            ]
        );
        assert!(tl.iter().all(|t| !t.publish.retain));
        // A late poll in slot 2 sends the mode that holds (off) and the last current set.
        let late = Executor::new(tl, 0).due(12_500);
        assert_eq!(late.iter().map(|t| t.publish.payload.as_str()).collect::<Vec<_>>(), vec!["16", "off"]);
        assert_eq!(
            evcc.safe_state("gw").iter().map(|p| (p.topic.as_str(), p.payload.as_str())).collect::<Vec<_>>(),
            vec![("evcc/loadpoints/1/mode/set", "off")]
        );
        assert!(OutputFile::Evcc { loadpoint: 0, prefix: "evcc".into(), voltage_v: 230, phases: 3, min_current_a: 6, max_current_a: 16 }.check().is_err());
        assert!(OutputFile::Evcc { loadpoint: 1, prefix: "evcc".into(), voltage_v: 230, phases: 2, min_current_a: 6, max_current_a: 16 }.check().is_err());
        assert!(OutputFile::Evcc { loadpoint: 1, prefix: "evcc".into(), voltage_v: 230, phases: 1, min_current_a: 16, max_current_a: 6 }.check().is_err());
        let parsed: OutputFile = toml::from_str("adapter = \"evcc\"\nloadpoint = 2\nmax_current_a = 32\n").unwrap();
        assert_eq!(parsed, OutputFile::Evcc { loadpoint: 2, prefix: "evcc".into(), voltage_v: 230, phases: 3, min_current_a: 6, max_current_a: 32 });
    }

    #[test]
    fn two_channels_of_one_shelly_each_keep_their_own_state() {
        let shelly = |switch| OutputFile::Shelly { device_id: "shellypro2pm-1".into(), switch, rated_w: 1000, min_on_s: 0, min_off_s: 0 };
        let plans = vec![
            AppliancePlan { name: "boiler".into(), output: Some(shelly(0)), schedule: vec![1000, 0] },
            AppliancePlan { name: "heater".into(), output: Some(shelly(1)), schedule: vec![0, 1000] },
        ];
        let tl = timeline(TIMING, &plans, &[], None, "gw");
        // A poll late through slot 1 still sends both channels their state.
        let mut ex = Executor::new(tl, 0);
        let due = ex.due(11_500);
        let state: Vec<(u64, bool)> = due
            .iter()
            .map(|t| serde_json::from_str::<serde_json::Value>(&t.publish.payload).unwrap())
            .map(|v| (v["params"]["id"].as_u64().unwrap(), v["params"]["on"].as_bool().unwrap()))
            .collect();
        assert_eq!(state, vec![(0, false), (1, true)], "{due:?}");
        let safe: Vec<serde_json::Value> = safe_state(&plans, "gw").iter().map(|p| serde_json::from_str(&p.payload).unwrap()).collect();
        assert_eq!(
            safe.iter().map(|v| (v["params"]["id"].as_u64(), v["params"]["on"].as_bool())).collect::<Vec<_>>(),
            vec![(Some(0), Some(false)), (Some(1), Some(false))]
        );
    }

    #[test]
    fn setpoints_carry_signed_power_and_end_at_zero() {
        let tl = timeline(TIMING, &plan(OutputFile::Setpoint { topic: "b/set".into(), retain: true }, vec![-300, -300, 700]), &[], None, "gw");
        let setpoints: Vec<(&str, bool)> = tl.iter().map(|t| (t.publish.payload.as_str(), t.publish.retain)).collect();
        assert_eq!(setpoints, vec![("-300", true), ("-300", true), ("700", true), ("0", true)]);
        assert_eq!(rfc3339(12_000), "1970-01-01T00:00:12Z");
    }

    #[test]
    fn late_polls_and_reconnects_publish_the_current_state_only() {
        let tl =
            timeline(TIMING, &plan(OutputFile::Tasmota { topic: "ev".into(), rated_w: 2000, min_on_s: 0, min_off_s: 0 }, vec![2000, 500, 0]), &[], None, "gw");
        let mut ex = Executor::new(tl.clone(), 0);
        assert_eq!(ex.next_at(), Some(10_000));
        assert!(ex.due(9_999).is_empty());
        assert_eq!(ex.due(10_000).len(), 2, "PulseTime, then ON");
        // Asleep through 11_000 and 11_250: only the OFF that holds now goes out.
        let late = ex.due(11_500);
        assert_eq!(late.len(), 1);
        assert_eq!((late[0].at_ms, late[0].publish.payload.as_str()), (11_250, "OFF"));
        // A restart that had handed out everything through 11_000 reconciles to the same state.
        let mut again = Executor::new(tl, 11_000);
        let now = again.reconcile(11_500);
        assert_eq!(now.iter().map(|t| t.publish.payload.as_str()).collect::<Vec<_>>(), vec!["131", "OFF"], "the dead-man timer and the state");
        assert_eq!(again.next_at(), Some(12_000));
        again.due(20_000);
        assert!(again.is_done());
    }
}
