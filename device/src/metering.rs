//! Meter readings for markets that settle (docs/protocol.md §9), sans-IO.
//!
//! After each executed slot of a settling market, the gateway reads each metered appliance's
//! energy over the slot (W·slot: the slot's mean power, positive = drawn) and signs it with
//! the appliance's key ([`crate::agent::Agent::due_readings`]); the host submits the readings
//! to every validator until the meter deadline.
//!
//! Sources:
//! - `simulated`: a meter that follows the executed schedule, off by up to a given share and
//!   missing with a given probability, deterministic per (seed, market, appliance, slot) so
//!   that a restart reads the same (for trials, demos and tests);
//! - over MQTT (the gateway subscribes on its broker): `shelly` — a Shelly Gen2 switch's
//!   `<device_id>/status/switch:<n>` with `aenergy.total` (Wh, cumulative); `tasmota` —
//!   `tele/<topic>/SENSOR` with `ENERGY.Total` (kWh, cumulative); `topic` — any topic whose
//!   payload is a number, the power in W (`unit = "w"`) or a cumulative energy in Wh
//!   (`unit = "wh"`). Samples are kept per appliance ([`SlotMeter`]); a slot's energy is the
//!   counter's increase over it, or the time-weighted mean of the power samples (each held
//!   until the next). Counters count energy drawn.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `[appliances.meter]` in gateway.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum MeterFile {
    /// A Shelly Gen2 switch: `<device_id>/status/switch:<switch>`, `aenergy.total` in Wh.
    Shelly {
        /// The device's MQTT prefix (e.g. `shellyplus1pm-a8032ab12345`).
        device_id: String,
        /// The switch channel.
        #[serde(default)]
        switch: u8,
    },
    /// A Tasmota device: `tele/<topic>/SENSOR`, `ENERGY.Total` in kWh.
    Tasmota {
        /// The device's topic.
        topic: String,
    },
    /// Any topic whose payload is a number: watts or a cumulative Wh counter.
    Topic {
        /// The topic.
        topic: String,
        /// What the number is.
        unit: Unit,
    },
    /// A simulated meter: the executed schedule, off by up to `deviation_pct` % (at least 1 W
    /// when positive), with no reading for a slot with probability `dropout_pct` %, and none
    /// for the slots of an outage.
    Simulated {
        /// Largest deviation from the schedule, % of its magnitude (0..=100).
        #[serde(default)]
        deviation_pct: f64,
        /// Probability that a slot has no reading, % (0..=100).
        #[serde(default)]
        dropout_pct: f64,
        /// Seeds the deviations and dropouts.
        #[serde(default)]
        seed: u64,
        /// The meter is offline for these slots of every market: no reading of them.
        #[serde(default)]
        outage: Option<Outage>,
    },
}

/// Slots a simulated meter is offline: `slots` slots from `from_slot` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// The first slot without a reading.
    pub from_slot: u32,
    /// How many slots (≥ 1).
    pub slots: u32,
}

impl Outage {
    /// Whether the meter is offline during `slot`.
    pub fn covers(&self, slot: u32) -> bool {
        slot >= self.from_slot && slot - self.from_slot < self.slots
    }
}

/// The unit of a `topic` meter's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Power, W (positive: drawn).
    W,
    /// Cumulative energy drawn, Wh.
    Wh,
}

/// One sample of an MQTT meter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// A cumulative energy counter, Wh.
    Counter(f64),
    /// Power, W.
    Power(f64),
}

impl MeterFile {
    /// The MQTT topic this meter is read from (`None`: simulated).
    pub fn topic(&self) -> Option<String> {
        match self {
            MeterFile::Shelly { device_id, switch } => Some(format!("{device_id}/status/switch:{switch}")),
            MeterFile::Tasmota { topic } => Some(format!("tele/{topic}/SENSOR")),
            MeterFile::Topic { topic, .. } => Some(topic.clone()),
            MeterFile::Simulated { .. } => None,
        }
    }

    /// The sample a payload on [`Self::topic`] carries; `None` if it carries none (another
    /// status field, not JSON, not a finite number).
    pub fn parse(&self, payload: &[u8]) -> Option<Sample> {
        let text = std::str::from_utf8(payload).ok()?.trim();
        let json = || serde_json::from_str::<serde_json::Value>(text).ok();
        let sample = match self {
            MeterFile::Shelly { .. } => Sample::Counter(json()?.get("aenergy")?.get("total")?.as_f64()?),
            MeterFile::Tasmota { .. } => Sample::Counter(json()?.get("ENERGY")?.get("Total")?.as_f64()? * 1000.0),
            MeterFile::Topic { unit: Unit::W, .. } => Sample::Power(text.parse().ok()?),
            MeterFile::Topic { unit: Unit::Wh, .. } => Sample::Counter(text.parse().ok()?),
            MeterFile::Simulated { .. } => return None,
        };
        let v = match sample {
            Sample::Counter(v) | Sample::Power(v) => v,
        };
        v.is_finite().then_some(sample)
    }

    /// Whether the shares lie within 0..=100 % and topics are not empty.
    pub fn check(&self) -> Result<(), String> {
        match self {
            MeterFile::Shelly { device_id: t, .. } | MeterFile::Tasmota { topic: t } | MeterFile::Topic { topic: t, .. } => {
                if t.trim().is_empty() || t.contains(['#', '+']) {
                    return Err(format!("meter: {t:?} is not a topic to read (empty, or a wildcard)"));
                }
                Ok(())
            }
            MeterFile::Simulated { deviation_pct, dropout_pct, outage, .. } => {
                for (what, v) in [("deviation_pct", deviation_pct), ("dropout_pct", dropout_pct)] {
                    if !(0.0..=100.0).contains(v) {
                        return Err(format!("meter: {what} = {v} is not within 0..=100"));
                    }
                }
                if outage.is_some_and(|o| o.slots == 0) {
                    return Err("meter: an outage of 0 slots (outage.slots must be at least 1)".to_string());
                }
                Ok(())
            }
        }
    }

    /// The reading of slot `slot` of market `market_id` for appliance `name`, which was
    /// scheduled at `x` W, clamped to its nameplate (−export ≤ reading ≤ import); `None`: no
    /// reading of that slot.
    pub fn read(&self, market_id: u64, name: &str, slot: u32, x: i32, import_w: u32, export_w: u32) -> Option<i64> {
        match self {
            MeterFile::Shelly { .. } | MeterFile::Tasmota { .. } | MeterFile::Topic { .. } => None,
            MeterFile::Simulated { deviation_pct, dropout_pct, seed, outage } => {
                if outage.is_some_and(|o| o.covers(slot)) {
                    return None;
                }
                let digest = Sha256::new().chain_update(seed.to_le_bytes()).chain_update(market_id.to_le_bytes()).chain_update(name.as_bytes()).chain_update(slot.to_le_bytes()).finalize();
                let mut rng = ChaCha20Rng::from_seed(digest.into());
                if rng.gen_bool((dropout_pct / 100.0).clamp(0.0, 1.0)) {
                    return None;
                }
                let span = (x.unsigned_abs() as f64 * deviation_pct / 100.0).round().max(if *deviation_pct > 0.0 { 1.0 } else { 0.0 }) as i64;
                let off = if span > 0 { rng.gen_range(-span..=span) } else { 0 };
                Some((x as i64 + off).clamp(-(export_w as i64), import_w as i64))
            }
        }
    }
}

/// Most samples kept per appliance (the oldest go first): a day of samples every 10 s.
pub const MAX_SAMPLES: usize = 8640;

/// An MQTT meter's samples, with the time each arrived (ms).
#[derive(Debug, Clone, Default)]
pub struct SlotMeter {
    samples: std::collections::VecDeque<(u64, Sample)>,
}

impl SlotMeter {
    /// Records a sample that arrived at `at_ms` (samples are kept in arrival order).
    pub fn push(&mut self, at_ms: u64, sample: Sample) {
        if self.samples.back().is_some_and(|(t, _)| *t > at_ms) {
            return;
        }
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at_ms, sample));
    }

    /// The energy over `[start_ms, end_ms)` in W·slot (mean W): a counter's increase between
    /// its values at the slot's boundaries (each interpolated between the samples around it,
    /// held from the last one if none came after; at the start, the first sample in the slot if
    /// none came before), in Wh, as the mean W over the window (× 3,600,000 / window ms: the
    /// window is the slot on the wall clock, so a compressed market's slot reads what its
    /// meter saw in it); or the time-weighted mean of the power samples,
    /// each held until the next (the one before the start held from the start). `None` if no
    /// sample arrived during the slot, a counter has no earlier value to compare with, or it
    /// went back (a reset).
    pub fn energy(&self, start_ms: u64, end_ms: u64) -> Option<i64> {
        if end_ms <= start_ms {
            return None;
        }
        let before = self.samples.iter().rev().find(|(t, _)| *t <= start_ms).copied();
        let inside: Vec<(u64, Sample)> = self.samples.iter().filter(|(t, _)| *t > start_ms && *t <= end_ms).copied().collect();
        // A meter that sent nothing during the slot does not cover it.
        let last = *inside.last()?;
        let first = before.or_else(|| inside.first().copied())?;
        match (first.1, last.1) {
            (Sample::Counter(_), Sample::Counter(_)) => {
                // The counter at each boundary, interpolated between the samples around it
                // (held from the last one if none came after; the first one in the slot if
                // none came before the start).
                let at = |t: u64| -> Option<f64> {
                    let a = self.samples.iter().rev().find(|(s, _)| *s <= t).copied();
                    let b = self.samples.iter().find(|(s, _)| *s > t).copied();
                    match (a, b) {
                        (Some((ta, Sample::Counter(va))), Some((tb, Sample::Counter(vb)))) => Some(va + (vb - va) * (t - ta) as f64 / (tb - ta) as f64),
                        (Some((_, Sample::Counter(va))), None) => Some(va),
                        _ => None,
                    }
                };
                let (a, b) = (at(start_ms).or(match first.1 {
                    Sample::Counter(v) => Some(v),
                    Sample::Power(_) => None,
                })?, at(end_ms)?);
                // A value before the slot's end other than its last is needed, and a counter
                // never goes back.
                if b < a || (before.is_none() && last.0 <= first.0) {
                    return None;
                }
                // Wh over the window as its mean W (the window is the slot on the wall clock,
                // Δ or a compressed market's slot).
                let w = (b - a) * 3_600_000.0 / (end_ms - start_ms) as f64;
                w.is_finite().then(|| w.round() as i64)
            }
            (Sample::Power(_), Sample::Power(_)) => {
                let mut points: Vec<(u64, f64)> = before.into_iter().chain(inside).filter_map(|(t, s)| if let Sample::Power(w) = s { Some((t.max(start_ms), w)) } else { None }).collect();
                points.dedup_by_key(|p| p.0);
                let from = points.first()?.0;
                let mut area = 0.0;
                for (i, (t, w)) in points.iter().enumerate() {
                    let next = points.get(i + 1).map_or(end_ms, |p| p.0);
                    area += w * next.saturating_sub(*t) as f64;
                }
                let w = area / (end_ms - from) as f64;
                w.is_finite().then(|| w.round() as i64)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(deviation_pct: f64, dropout_pct: f64) -> MeterFile {
        MeterFile::Simulated { deviation_pct, dropout_pct, seed: 7, outage: None }
    }

    #[test]
    fn a_simulated_meter_is_deterministic_within_its_deviation_and_the_nameplate() {
        let m = sim(10.0, 0.0);
        let reads: Vec<i64> = (0..200).map(|t| m.read(1, "ev", t, 2000, 3000, 0).unwrap()).collect();
        assert_eq!(reads, (0..200).map(|t| m.read(1, "ev", t, 2000, 3000, 0).unwrap()).collect::<Vec<_>>(), "the same reading after a restart");
        assert!(reads.iter().all(|r| (1800..=2200).contains(r)), "within ±10 %");
        assert!(reads.iter().any(|r| *r != 2000), "it deviates");
        assert_ne!(m.read(2, "ev", 0, 2000, 3000, 0), None);
        // Clamped to the nameplate: 2,900 W ± 10 % never above the 3,000 W import.
        assert!((0..200).all(|t| m.read(1, "ev", t, 2900, 3000, 0).unwrap() <= 3000));
        assert_eq!(sim(0.0, 0.0).read(1, "ev", 3, 1234, 3000, 0), Some(1234), "no deviation: the schedule");
        assert_eq!(sim(0.0, 0.0).read(1, "pv", 3, -1234, 0, 1000), Some(-1000), "production clamped to the export");
    }

    #[test]
    fn shelly_tasmota_and_plain_topics_parse_and_a_slot_is_the_counter_increase_or_the_mean_power() {
        let shelly = MeterFile::Shelly { device_id: "shellyplus1pm-b1".into(), switch: 1 };
        assert_eq!(shelly.topic().as_deref(), Some("shellyplus1pm-b1/status/switch:1"));
        assert_eq!(shelly.parse(br#"{"id":1,"apower":12.5,"aenergy":{"total":1234.5,"by_minute":[1,2,3]}}"#), Some(Sample::Counter(1234.5)));
        assert_eq!(shelly.parse(br#"{"id":1,"apower":12.5}"#), None, "a status without the counter");
        let tasmota = MeterFile::Tasmota { topic: "plug".into() };
        assert_eq!(tasmota.topic().as_deref(), Some("tele/plug/SENSOR"));
        assert_eq!(tasmota.parse(br#"{"Time":"2026-12-02T10:00:00","ENERGY":{"Total":1.25,"Power":40}}"#), Some(Sample::Counter(1250.0)));
        let power = MeterFile::Topic { topic: "home/ev/power".into(), unit: Unit::W };
        assert_eq!(power.parse(b" 1500 "), Some(Sample::Power(1500.0)));
        assert_eq!(power.parse(b"NaN"), None);
        assert_eq!(power.parse(b"on"), None);
        assert!(MeterFile::Topic { topic: "home/#".into(), unit: Unit::Wh }.check().is_err());

        // A counter: 10 Wh over a 60 s slot is 600 W mean; a reset reads nothing.
        let mut counter = SlotMeter::default();
        for (t, wh) in [(0, 100.0), (30_000, 105.0), (60_000, 110.0)] {
            counter.push(t, Sample::Counter(wh));
        }
        assert_eq!(counter.energy(0, 60_000), Some(600));
        assert_eq!(counter.energy(0, 30_000), Some(600), "5 Wh over a 30 s window is 600 W too (a compressed slot)");
        assert_eq!(counter.energy(60_000, 120_000), None, "no sample during the slot");
        counter.push(90_000, Sample::Counter(1.0));
        assert_eq!(counter.energy(60_000, 120_000), None, "the counter went back");
        // Power held between samples: 1000 W for 15 s, then 0 W for 45 s: 250 W mean.
        let mut p = SlotMeter::default();
        for (t, w) in [(-5_000i64, 1000.0), (15_000, 0.0), (59_000, 0.0)] {
            p.push((t + 10_000) as u64, Sample::Power(w));
        }
        assert_eq!(p.energy(10_000, 70_000), Some(250));
        // A sample arriving out of order is dropped.
        p.push(1, Sample::Power(9999.0));
        assert_eq!(p.energy(10_000, 70_000), Some(250));
    }

    #[test]
    fn dropouts_leave_slots_unread_and_bad_shares_are_refused() {
        let m = sim(0.0, 30.0);
        let missing = (0..1000).filter(|&t| m.read(1, "ev", t, 100, 3000, 0).is_none()).count();
        assert!((200..400).contains(&missing), "{missing} of 1000 missing at 30 %");
        assert_eq!((0..100).filter(|&t| sim(0.0, 100.0).read(1, "ev", t, 100, 3000, 0).is_some()).count(), 0);
        assert!(sim(150.0, 0.0).check().unwrap_err().contains("deviation_pct"));
        assert!(sim(0.0, -1.0).check().unwrap_err().contains("dropout_pct"));
        assert!(sim(5.0, 1.0).check().is_ok());
    }

    #[test]
    fn an_outage_leaves_its_slots_unread_in_every_market() {
        let m: MeterFile = toml::from_str("source = \"simulated\"\noutage = { from_slot = 3, slots = 2 }\n").unwrap();
        for market in [1, 2] {
            let read: Vec<bool> = (0..8).map(|t| m.read(market, "ev", t, 100, 3000, 0).is_some()).collect();
            assert_eq!(read, [true, true, true, false, false, true, true, true], "market {market}");
        }
        let none: MeterFile = toml::from_str("source = \"simulated\"\noutage = { from_slot = 3, slots = 0 }\n").unwrap();
        assert!(none.check().unwrap_err().contains("outage"));
        assert!(toml::from_str::<MeterFile>("source = \"simulated\"\noutage = { from = 3 }\n").is_err(), "unknown field");
    }
}
