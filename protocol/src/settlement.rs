//! Settlement (DESIGN §9, docs/protocol.md §9): signed meter readings and the bills they
//! settle, in integer micro-euro with the one rounding rule.
//!
//! A market whose spec carries a [`SettlementSpec`] does not end at its final entry: its
//! devices' gateways sign one [`Reading`] per appliance and executed slot (metered energy in
//! W·slot, i.e. the slot's mean power in W; positive = drawn from the grid), validators commit
//! them in `Meter` entries until the *meter deadline* (execution end + `meter_window_ms`), and
//! the market's `Settlement` entry then carries every enrolled device's [`Bill`] as
//! [`settle`] computes it from the final schedule x, the final prices λ and the readings m:
//!
//! - per device i and slot t, with s = x_{i,t} and m = m_{i,t} (a missing reading counts as
//!   m = max(s, 0): consumption as scheduled, no production delivered):
//!   - energy billed at λ_t: s⁺ − min(s⁻, d), where s⁺ = max(s, 0), s⁻ = max(−s, 0) and
//!     d = max(−m, 0) is the production delivered — a producer is credited only for what it
//!     delivered, up to what it was scheduled for (escrow until delivery);
//!   - imbalance: |m − s| at the imbalance price q_t = |λ_t| + premium;
//! - an amount is `amount(price, energy, Δ)` = price · energy · Δ / (2^20 · 3600) µ€, rounded
//!   half to even (price raw €/MWh at scale 2^20, energy in W·slot, Δ in seconds: 1 €/MWh ·
//!   1 W · 3600 s = 1 µ€): the energy and the imbalance amount of each device and slot are
//!   each rounded once; bills saturate at the i64 bounds and totals are summed in i128, so a
//!   settlement can always be built;
//! - the market's totals satisfy, exactly, consumers pay = producers receive + imbalance
//!   revenue + network revenue (Σ of the positive totals, Σ of the negative ones, Σ of the
//!   imbalance charges, Σ of the energy amounts). [`settle`] checks it before it returns.
//!
//! A device that follows its schedule (m = s every slot) pays exactly Σ_t amount(λ_t, x_t, Δ).

use std::collections::BTreeMap;

use borsh::{BorshDeserialize, BorshSerialize};
use circuits::fixed::{div_round_half_even, SCALE};
use ed25519_dalek::SigningKey;
use thiserror::Error;

use crate::codec::encode;
use crate::ids::DeviceId;
use crate::sign::{sign, verify, ChainId, Domain, SignatureBytes, SignatureError};

/// Longest meter window a market may state: 7 days after its execution ends.
pub const MAX_METER_WINDOW_MS: u64 = 7 * 86_400_000;
/// Largest imbalance premium a market may state: 10,000 €/MWh (raw, scale 2^20).
pub const MAX_IMBALANCE_PREMIUM: i64 = 10_000 * SCALE;
/// Most readings in one `Meter` entry.
pub const MAX_READINGS_PER_ENTRY: usize = 4096;
/// Most readings in one device request (one appliance's slots of a day at T = 288, and more).
pub const MAX_READINGS_PER_REQUEST: usize = 384;

/// How a market settles, as its spec states it.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SettlementSpec {
    /// How long after the market's execution ends readings are committed (ms); its
    /// settlement entry is due at that meter deadline.
    pub meter_window_ms: u64,
    /// The premium over |λ_t| at which every W·slot of imbalance is charged (raw €/MWh,
    /// scale 2^20, ≥ 0).
    pub imbalance_premium: i64,
}

impl SettlementSpec {
    /// Whether the window and premium lie within the bounds ([`MAX_METER_WINDOW_MS`],
    /// [`MAX_IMBALANCE_PREMIUM`]).
    pub fn check(&self) -> Result<(), String> {
        if self.meter_window_ms == 0 || self.meter_window_ms > MAX_METER_WINDOW_MS {
            return Err(format!("meter window {} ms is not within 1 ms..=7 days", self.meter_window_ms));
        }
        if !(0..=MAX_IMBALANCE_PREMIUM).contains(&self.imbalance_premium) {
            return Err(format!("imbalance premium {} (raw) is not within 0..=10,000 €/MWh", self.imbalance_premium));
        }
        Ok(())
    }
}

/// One appliance's metered energy over one executed slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Reading {
    /// The market.
    pub market_id: u64,
    /// The device (appliance) metered.
    pub device: DeviceId,
    /// The slot, 0..T.
    pub slot: u32,
    /// Metered energy in W·slot (the slot's mean power in W); positive = drawn from the grid.
    pub energy: i64,
}

/// A reading signed by the device's key in the meter domain (the gateway holds the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SignedReading {
    /// The reading.
    pub body: Reading,
    /// Ed25519 over `encode(body)` in `Domain::Meter`.
    pub signature: SignatureBytes,
}

impl SignedReading {
    /// Signs `body` with the device's key.
    pub fn new(key: &SigningKey, chain: &ChainId, body: Reading) -> SignedReading {
        SignedReading { signature: sign(key, chain, Domain::Meter, &encode(&body)), body }
    }

    /// Checks the signature against the device's key.
    pub fn verify(&self, chain: &ChainId) -> Result<(), SignatureError> {
        verify(&self.body.device.0, chain, Domain::Meter, &encode(&self.body), &self.signature)
    }
}

/// A `Meter` entry's body: readings of one market, strictly ascending by (device, slot).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct MeterBatch {
    /// The market.
    pub market_id: u64,
    /// 1 to [`MAX_READINGS_PER_ENTRY`] readings.
    pub readings: Vec<SignedReading>,
}

/// One device's bill in a market (µ€; positive = the device pays).
#[derive(Debug, Clone, Copy, PartialEq, Eq, BorshSerialize, BorshDeserialize, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Bill {
    /// The device.
    pub device: DeviceId,
    /// Energy at λ (negative: a credit for delivered production or for consumption at a
    /// negative price).
    pub energy: i64,
    /// Imbalance charge (≥ 0).
    pub imbalance: i64,
    /// Slots with a reading (the others settled by the default).
    pub metered_slots: u32,
}

impl Bill {
    /// What the device owes (negative: what it receives), saturating.
    pub fn total(&self) -> i64 {
        self.energy.saturating_add(self.imbalance)
    }
}

/// The market's totals (µ€, in i128 so that no market's sum can overflow): consumers pay =
/// producers receive + imbalance + network revenue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, serde::Serialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Totals {
    /// Σ of the positive bill totals.
    pub consumers_pay: i128,
    /// Σ of the negative bill totals, negated.
    pub producers_receive: i128,
    /// Σ of the imbalance charges.
    pub imbalance_revenue: i128,
    /// Σ of the energy amounts: what the grid keeps of the energy traded.
    pub network_revenue: i128,
}

/// A `Settlement` entry's body: every enrolled device's bill, ascending by device, and the
/// totals.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SettlementBody {
    /// The market.
    pub market_id: u64,
    /// One per device of the final schedule, ascending by device.
    pub bills: Vec<Bill>,
    /// The totals.
    pub totals: Totals,
}

/// Why a market cannot be settled as given (never for state a validator holds: schedules and
/// prices are T long by construction, and amounts saturate instead of failing, so a
/// settlement is always buildable).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettlementError {
    /// Prices or a schedule of another length than T.
    #[error("{what} has {got} slots, the market has {t}")]
    Length {
        /// What.
        what: &'static str,
        /// Its length.
        got: usize,
        /// T.
        t: usize,
    },
    /// The conservation identity failed (a bug, never an input).
    #[error("conservation does not hold: {0:?}")]
    Conservation(Totals),
}

/// price · energy · Δ / (2^20 · 3600) µ€, rounded half to even: the money of `energy` W·slot
/// over slots of `slot_seconds` at `price` (raw €/MWh). `None` if it leaves i64.
pub fn amount(price: i64, energy: i64, slot_seconds: u32) -> Option<i64> {
    let n = (price as i128).checked_mul(energy as i128)?.checked_mul(slot_seconds as i128)?;
    let q = div_round_half_even(n, SCALE as i128 * 3600).ok()?;
    i64::try_from(q).ok()
}

/// [`amount`] of an i128 price, saturating at the i64 bounds instead of failing (what bills
/// use, so that a market with absurd prices or nameplates still settles, deterministically).
fn amount_saturating(price: i128, energy: i128, slot_seconds: u32) -> i64 {
    let sign = price.signum() * energy.signum();
    let q = price
        .checked_mul(energy)
        .and_then(|n| n.checked_mul(slot_seconds as i128))
        .and_then(|n| div_round_half_even(n, SCALE as i128 * 3600).ok());
    match q {
        Some(q) => q.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        None if sign < 0 => i64::MIN,
        None => i64::MAX,
    }
}

/// One slot of a device's bill (µ€).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SlotBill {
    /// The energy billed at λ (W·slot): consumption as scheduled, production only as
    /// delivered up to the schedule.
    pub billed_w: i64,
    /// The metered energy the slot settled on (a missing reading: max(x, 0)).
    pub metered_w: i64,
    /// The energy amount.
    pub energy: i64,
    /// The imbalance charge.
    pub imbalance: i64,
}

/// The rule of one slot (module doc): scheduled `x` W·slot, the reading if any, price λ and
/// imbalance premium (raw €/MWh), Δ; amounts saturate at the i64 bounds. [`settle`] sums
/// these; a gateway prints them (`device bill`).
pub fn slot_bill(x: i32, metered: Option<i64>, price: i64, premium: i64, slot_seconds: u32) -> SlotBill {
    let s = x as i64;
    let m = metered.unwrap_or(s.max(0));
    let delivered = (-(m as i128)).max(0);
    // (min(s⁻, d) ≤ s⁻ ≤ 2^31: billed fits i64.)
    let billed_w = s.max(0) - ((-s).max(0) as i128).min(delivered) as i64;
    let q = (price as i128).abs() + premium as i128;
    let deviation = (m as i128 - s as i128).abs();
    SlotBill {
        billed_w,
        metered_w: m,
        energy: amount_saturating(price as i128, billed_w as i128, slot_seconds),
        imbalance: amount_saturating(q, deviation, slot_seconds),
    }
}

/// The inputs of one market's settlement.
#[derive(Debug, Clone, Copy)]
pub struct Market<'a> {
    /// Δ in seconds.
    pub slot_seconds: u32,
    /// The settlement rule.
    pub rule: &'a SettlementSpec,
    /// The final per-slot prices (raw €/MWh), T of them.
    pub prices: &'a [i64],
    /// Every device's final schedule (W per slot), ascending by device.
    pub schedules: &'a BTreeMap<DeviceId, Vec<i32>>,
    /// The committed readings by (device, slot).
    pub readings: &'a BTreeMap<(DeviceId, u32), i64>,
}

/// Every device's bill and the totals, by the rules of the module doc. Fails only on inputs
/// of the wrong length.
pub fn settle(market_id: u64, m: Market<'_>) -> Result<SettlementBody, SettlementError> {
    let t = m.prices.len();
    let mut bills = Vec::with_capacity(m.schedules.len());
    let mut totals = Totals::default();
    for (&device, x) in m.schedules {
        if x.len() != t {
            return Err(SettlementError::Length { what: "a schedule", got: x.len(), t });
        }
        let mut bill = Bill { device, energy: 0, imbalance: 0, metered_slots: 0 };
        for (slot, (&s, &price)) in x.iter().zip(m.prices).enumerate() {
            let metered = m.readings.get(&(device, slot as u32)).copied();
            bill.metered_slots += metered.is_some() as u32;
            let line = slot_bill(s, metered, price, m.rule.imbalance_premium, m.slot_seconds);
            bill.energy = bill.energy.saturating_add(line.energy);
            bill.imbalance = bill.imbalance.saturating_add(line.imbalance);
        }
        let total = bill.energy as i128 + bill.imbalance as i128;
        if total >= 0 {
            totals.consumers_pay += total;
        } else {
            totals.producers_receive -= total;
        }
        totals.imbalance_revenue += bill.imbalance as i128;
        totals.network_revenue += bill.energy as i128;
        bills.push(bill);
    }
    if totals.consumers_pay != totals.producers_receive + totals.imbalance_revenue + totals.network_revenue {
        return Err(SettlementError::Conservation(totals));
    }
    Ok(SettlementBody { market_id, bills, totals })
}

/// A settling market's meter deadline: its execution end + meter window (`None` if it does
/// not settle). Readings are committed before it; its settlement entry is due from it.
pub fn meter_deadline(spec: &crate::entry::MarketSpec) -> Option<u64> {
    let rule = spec.settlement.as_ref()?;
    Some(crate::market::execution_span(spec).1.saturating_add(rule.meter_window_ms))
}

/// When slot `slot` of `spec`'s execution ends (ms): a reading of it counts from then on.
pub fn slot_end_ms(spec: &crate::entry::MarketSpec, slot: u32) -> u64 {
    spec.execution_start_ms.saturating_add((slot as u64 + 1).saturating_mul(spec.slot_ms()))
}

/// Why a reading is refused (validators' checks, docs/protocol.md §9). Each has a metrics
/// label ([`ReadingError::label`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadingError {
    /// The market is not between its final and settlement entries, or does not settle.
    #[error("market {market_id} takes no readings: {why}")]
    NotSettling {
        /// The market.
        market_id: u64,
        /// Why.
        why: &'static str,
    },
    /// The device has no final schedule in the market.
    #[error("device {device} is not in market {market_id}'s final schedule")]
    UnknownDevice {
        /// The market.
        market_id: u64,
        /// The device.
        device: DeviceId,
    },
    /// A slot beyond T.
    #[error("slot {slot} is out of range: the market has {t} slots")]
    SlotOutOfRange {
        /// The slot.
        slot: u32,
        /// T.
        t: u16,
    },
    /// The slot has not ended yet.
    #[error("slot {slot} ends at {ends_ms}, not executed at {at_ms}")]
    NotExecuted {
        /// The slot.
        slot: u32,
        /// When it ends.
        ends_ms: u64,
        /// The time of the check (entry timestamp or arrival).
        at_ms: u64,
    },
    /// At or after the meter deadline.
    #[error("the meter deadline {deadline_ms} has passed at {at_ms}")]
    AfterDeadline {
        /// The deadline.
        deadline_ms: u64,
        /// The time of the check.
        at_ms: u64,
    },
    /// The (device, slot) has a reading already (in the log, or earlier in the entry).
    #[error("device {device} has a reading for slot {slot} already")]
    Duplicate {
        /// The device.
        device: DeviceId,
        /// The slot.
        slot: u32,
    },
    /// More energy in a slot than the device's attested nameplate allows.
    #[error("device {device} slot {slot}: {energy} W·slot is beyond its nameplate (import {import_w} W, export {export_w} W)")]
    Implausible {
        /// The device.
        device: DeviceId,
        /// The slot.
        slot: u32,
        /// The reading.
        energy: i64,
        /// Rated import.
        import_w: u32,
        /// Rated export.
        export_w: u32,
    },
    /// A meter entry or request that is empty, too long, not ascending or of mixed markets.
    #[error("meter batch: {0}")]
    Batch(&'static str),
}

impl ReadingError {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ReadingError::NotSettling { .. } => "not_settling",
            ReadingError::UnknownDevice { .. } => "unknown_device",
            ReadingError::SlotOutOfRange { .. } => "slot_out_of_range",
            ReadingError::NotExecuted { .. } => "slot_not_executed",
            ReadingError::AfterDeadline { .. } => "late",
            ReadingError::Duplicate { .. } => "duplicate",
            ReadingError::Implausible { .. } => "implausible_reading",
            ReadingError::Batch(_) => "meter_batch",
        }
    }
}
