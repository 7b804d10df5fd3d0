//! Meter readings for markets that settle (docs/protocol.md §9), sans-IO.
//!
//! After each executed slot of a settling market, the gateway reads each metered appliance's
//! energy over the slot (W·slot: the slot's mean power, positive = drawn) and signs it with
//! the appliance's key ([`crate::agent::Agent::due_readings`]); the host submits the readings
//! to every validator until the meter deadline.
//!
//! Sources: `simulated` — a meter that follows the executed schedule, off by up to a given
//! share and missing with a given probability, deterministic per (seed, market, appliance,
//! slot) so that a restart reads the same (for `device simulate`, demos and tests). Readings
//! from real meters over MQTT are not implemented yet.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `[appliances.meter]` in gateway.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum MeterFile {
    /// A simulated meter: the executed schedule, off by up to `deviation_pct` % (at least 1 W
    /// when positive), with no reading for a slot with probability `dropout_pct` %.
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
    },
}

impl MeterFile {
    /// Whether the shares lie within 0..=100 %.
    pub fn check(&self) -> Result<(), String> {
        match self {
            MeterFile::Simulated { deviation_pct, dropout_pct, .. } => {
                for (what, v) in [("deviation_pct", deviation_pct), ("dropout_pct", dropout_pct)] {
                    if !(0.0..=100.0).contains(v) {
                        return Err(format!("meter: {what} = {v} is not within 0..=100"));
                    }
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
            MeterFile::Simulated { deviation_pct, dropout_pct, seed } => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(deviation_pct: f64, dropout_pct: f64) -> MeterFile {
        MeterFile::Simulated { deviation_pct, dropout_pct, seed: 7 }
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
    fn dropouts_leave_slots_unread_and_bad_shares_are_refused() {
        let m = sim(0.0, 30.0);
        let missing = (0..1000).filter(|&t| m.read(1, "ev", t, 100, 3000, 0).is_none()).count();
        assert!((200..400).contains(&missing), "{missing} of 1000 missing at 30 %");
        assert_eq!((0..100).filter(|&t| sim(0.0, 100.0).read(1, "ev", t, 100, 3000, 0).is_some()).count(), 0);
        assert!(sim(150.0, 0.0).check().unwrap_err().contains("deviation_pct"));
        assert!(sim(0.0, -1.0).check().unwrap_err().contains("dropout_pct"));
        assert!(sim(5.0, 1.0).check().is_ok());
    }
}
