//! The ranges the circuits can represent, as named constants, and the slot count `T`.
//!
//! Every inequality in a circuit is proved by decomposing a slack into bits; the widths below
//! are the fewest bits the parameter bounds allow (DESIGN §5.2). Parameter constructors reject
//! anything outside these ranges, so a valid parameter set always fits its circuit.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fixed::{WattSlots, Watts, SCALE_BITS};

/// Bits of a device power bound: every power parameter lies in `[0, 2^17)` W (131 kW, far above
/// any home appliance, a 22 kW wall box or a 30 kW heat pump).
pub const POWER_BITS: u32 = 17;
/// Largest power parameter, in watts.
pub const MAX_POWER_W: Watts = (1 << POWER_BITS) - 1;

/// Most slots in one market (3 days of 15 minutes, or a day of 5 minutes).
pub const MAX_SLOTS: usize = 288;
/// Bits of `MAX_SLOTS`: Σ_t x_t < MAX_SLOTS · 2^POWER_BITS ≤ 2^(POWER_BITS + SLOT_BITS).
pub const SLOT_BITS: u32 = 9;

/// Bits of an energy parameter in W·slot (energies, battery capacity and state of charge).
pub const ENERGY_BITS: u32 = POWER_BITS + SLOT_BITS;
/// Largest energy parameter, in W·slot (≈ 16.7 MWh at Δ = 15 min).
pub const MAX_ENERGY_WS: WattSlots = (1 << ENERGY_BITS) - 1;

/// Bits of a temperature magnitude at scale 2^20: temperatures lie in `[-64 °C, 64 °C)`.
pub const TEMP_BITS: u32 = 26;
/// Smallest temperature, raw fixed point (−64 °C).
pub const MIN_TEMP_RAW: i64 = -(1 << TEMP_BITS);
/// Largest temperature, raw fixed point (just under 64 °C).
pub const MAX_TEMP_RAW: i64 = (1 << TEMP_BITS) - 1;
/// Bits of the thermal decay factor `a` (raw in `[0, 2^20]`, i.e. 0..=1, needs 21 bits).
pub const DECAY_BITS: u32 = SCALE_BITS + 1;
/// Bits of the thermal gain magnitude `|b|` (raw °C·2^20 per W).
pub const GAIN_BITS: u32 = 24;

/// Bits of a schedule limb: each slot's power travels as `x_t + 2^31` in 32 bits (DESIGN §5.1).
pub const LIMB_BITS: u32 = 32;
/// Limbs packed per public field element (7 × 32 = 224 < 254 bits).
pub const LIMBS_PER_ELEMENT: usize = 7;
/// Bits per element when packing bit vectors (availability) into field elements.
pub const BITS_PER_ELEMENT: usize = 248;

/// Bits of the market id inside the context element.
pub const MARKET_ID_BITS: u32 = 64;
/// Bits of the iteration number inside the context element.
pub const ITERATION_BITS: u32 = 32;

/// A slot count `T`, validated to `1..=MAX_SLOTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "usize", into = "usize")]
pub struct Slots(usize);

/// A slot count outside `1..=MAX_SLOTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("slot count T = {0} is out of range: a market has 1 to {MAX_SLOTS} slots")]
pub struct SlotsError(pub usize);

impl Slots {
    /// The default market: 96 slots of 15 minutes.
    pub const DAY_15_MIN: Slots = Slots(96);

    /// Validates `t`.
    pub fn new(t: usize) -> Result<Slots, SlotsError> {
        if (1..=MAX_SLOTS).contains(&t) {
            Ok(Slots(t))
        } else {
            Err(SlotsError(t))
        }
    }

    /// The number of slots.
    pub const fn get(self) -> usize {
        self.0
    }

    /// How many public field elements the packed schedule takes: ⌈T / 7⌉.
    pub const fn limb_elements(self) -> usize {
        self.0.div_ceil(LIMBS_PER_ELEMENT)
    }
}

impl TryFrom<usize> for Slots {
    type Error = SlotsError;
    fn try_from(t: usize) -> Result<Self, Self::Error> {
        Slots::new(t)
    }
}

impl From<Slots> for usize {
    fn from(s: Slots) -> usize {
        s.0
    }
}

impl std::fmt::Display for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
