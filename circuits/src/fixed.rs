//! The fixed-point codec of DESIGN §2: watts, W·slot energy, the S = 2^20 scale and the one
//! rounding rule (round half to even).
//!
//! Everything validators must agree on is an integer. Values with fractions are carried as
//! integers at scale [`SCALE`] (a [`Fixed`] of raw value `r` means `r / 2^20`). Every
//! conversion here is checked: overflow, NaN and infinities return a [`CodecError`]; nothing
//! wraps or saturates silently.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Number of fractional bits of [`Fixed`].
pub const SCALE_BITS: u32 = 20;
/// The fixed-point scale S = 2^20.
pub const SCALE: i64 = 1 << SCALE_BITS;

/// Power in watts; positive = consumption, negative = production (DESIGN §2).
pub type Watts = i32;

/// Energy as a sum of powers over slots, in W·slot (DESIGN §2). Wh = W·slot × Δ / 3600.
pub type WattSlots = i64;

/// What went wrong in a numeric conversion.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CodecError {
    /// A float was NaN or infinite.
    #[error("{what}: {value} is not a finite number")]
    NotFinite {
        /// The quantity being converted.
        what: &'static str,
        /// The offending value.
        value: f64,
    },
    /// A value does not fit the target integer type.
    #[error("{what}: {value} is out of range [{min}, {max}]")]
    OutOfRange {
        /// The quantity being converted.
        what: &'static str,
        /// The offending value (as text, so floats and wide integers both fit).
        value: String,
        /// Smallest representable value.
        min: String,
        /// Largest representable value.
        max: String,
    },
    /// Division by zero or by a negative divisor.
    #[error("{what}: divisor {divisor} must be positive")]
    BadDivisor {
        /// The quantity being computed.
        what: &'static str,
        /// The divisor.
        divisor: i128,
    },
}

/// `n / d` rounded to the nearest integer, ties to the even integer.
///
/// This is the one rounding rule of DESIGN §2. `d` must be positive.
///
/// ```
/// use circuits::fixed::div_round_half_even;
/// assert_eq!(div_round_half_even(5, 2).unwrap(), 2);   // 2.5 -> 2
/// assert_eq!(div_round_half_even(7, 2).unwrap(), 4);   // 3.5 -> 4
/// assert_eq!(div_round_half_even(-5, 2).unwrap(), -2); // -2.5 -> -2
/// assert_eq!(div_round_half_even(-7, 4).unwrap(), -2); // -1.75 -> -2
/// ```
pub fn div_round_half_even(n: i128, d: i128) -> Result<i128, CodecError> {
    if d <= 0 {
        return Err(CodecError::BadDivisor { what: "div_round_half_even", divisor: d });
    }
    let q = n.div_euclid(d); // floor, since d > 0
    let r = n.rem_euclid(d); // 0 <= r < d
                             // Compare 2r with d without overflow: r < d <= i128::MAX, so r - (d - r) cannot overflow.
    let twice_r_minus_d = r - (d - r);
    let round_up = match twice_r_minus_d.signum() {
        1 => true,
        0 => q.rem_euclid(2) == 1,
        _ => false,
    };
    Ok(if round_up { q + 1 } else { q })
}

/// `n / d` rounded towards negative infinity; `d` must be positive.
///
/// Used only where a circuit checks a remainder `0 <= r < d` (the thermal model), and named
/// there; every aggregate validators compute uses [`div_round_half_even`].
pub fn div_floor(n: i128, d: i128) -> Result<i128, CodecError> {
    if d <= 0 {
        return Err(CodecError::BadDivisor { what: "div_floor", divisor: d });
    }
    Ok(n.div_euclid(d))
}

/// Converts an `i128` into an `i64`, naming the quantity on overflow.
pub fn to_i64(what: &'static str, v: i128) -> Result<i64, CodecError> {
    i64::try_from(v).map_err(|_| out_of_range(what, v, i64::MIN, i64::MAX))
}

/// Converts an `i128` into [`Watts`], naming the quantity on overflow.
pub fn to_watts(what: &'static str, v: i128) -> Result<Watts, CodecError> {
    Watts::try_from(v).map_err(|_| out_of_range(what, v, Watts::MIN, Watts::MAX))
}

fn out_of_range(what: &'static str, v: impl ToString, min: impl ToString, max: impl ToString) -> CodecError {
    CodecError::OutOfRange { what, value: v.to_string(), min: min.to_string(), max: max.to_string() }
}

/// Rounds a finite float to an integer (half to even) and checks that it lies in `[min, max]`.
pub fn round_f64(what: &'static str, v: f64, min: i64, max: i64) -> Result<i64, CodecError> {
    if !v.is_finite() {
        return Err(CodecError::NotFinite { what, value: v });
    }
    let r = v.round_ties_even();
    // Compare in f64 first: `as i64` saturates, which would hide out-of-range values.
    if r < min as f64 || r > max as f64 {
        return Err(out_of_range(what, v, min, max));
    }
    let i = r as i64;
    if i < min || i > max {
        return Err(out_of_range(what, v, min, max));
    }
    Ok(i)
}

/// Kilowatts (float, device side) to watts, rounded half to even, checked.
pub fn watts_from_kw(what: &'static str, kw: f64) -> Result<Watts, CodecError> {
    if !kw.is_finite() {
        return Err(CodecError::NotFinite { what, value: kw });
    }
    let w = round_f64(what, kw * 1000.0, Watts::MIN as i64, Watts::MAX as i64)?;
    Ok(w as Watts)
}

/// Kilowatt-hours (float) to W·slot for slots of `slot_seconds`, rounded half to even, checked.
///
/// W·slot = Wh × 3600 / Δ.
pub fn watt_slots_from_kwh(what: &'static str, kwh: f64, slot_seconds: u32) -> Result<WattSlots, CodecError> {
    if slot_seconds == 0 {
        return Err(CodecError::BadDivisor { what, divisor: 0 });
    }
    if !kwh.is_finite() {
        return Err(CodecError::NotFinite { what, value: kwh });
    }
    round_f64(what, kwh * 1000.0 * 3600.0 / slot_seconds as f64, i64::MIN, i64::MAX)
}

/// W·slot to watt-hours for slots of `slot_seconds`, exact as a rational rounded half to even.
pub fn wh_from_watt_slots(e: WattSlots, slot_seconds: u32) -> Result<i64, CodecError> {
    let wh = div_round_half_even(e as i128 * slot_seconds as i128, 3600)?;
    to_i64("energy in Wh", wh)
}

/// A fixed-point number with [`SCALE_BITS`] fractional bits: raw value `r` means `r / 2^20`.
///
/// Arithmetic is checked and rounds half to even. Serialised as its raw integer, so it is
/// canonical and platform independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fixed(pub i64);

impl Fixed {
    /// Zero.
    pub const ZERO: Fixed = Fixed(0);
    /// One (= S raw).
    pub const ONE: Fixed = Fixed(SCALE);

    /// The raw integer (value × 2^20).
    pub const fn raw(self) -> i64 {
        self.0
    }

    /// An integer as a fixed-point value, checked.
    pub fn from_int(what: &'static str, v: i64) -> Result<Fixed, CodecError> {
        let raw = (v as i128) << SCALE_BITS;
        Ok(Fixed(to_i64(what, raw)?))
    }

    /// A float as a fixed-point value, rounded half to even, checked (device side only).
    pub fn from_f64(what: &'static str, v: f64) -> Result<Fixed, CodecError> {
        if !v.is_finite() {
            return Err(CodecError::NotFinite { what, value: v });
        }
        Ok(Fixed(round_f64(what, v * SCALE as f64, i64::MIN, i64::MAX)?))
    }

    /// The value as a float (for reports and device-side solving; never for the log).
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / SCALE as f64
    }

    /// `self + other`, checked.
    pub fn checked_add(self, other: Fixed) -> Result<Fixed, CodecError> {
        Ok(Fixed(to_i64("fixed-point sum", self.0 as i128 + other.0 as i128)?))
    }

    /// `self - other`, checked.
    pub fn checked_sub(self, other: Fixed) -> Result<Fixed, CodecError> {
        Ok(Fixed(to_i64("fixed-point difference", self.0 as i128 - other.0 as i128)?))
    }

    /// `self × other`, rounded half to even, checked.
    pub fn checked_mul(self, other: Fixed) -> Result<Fixed, CodecError> {
        let wide = self.0 as i128 * other.0 as i128;
        Ok(Fixed(to_i64("fixed-point product", div_round_half_even(wide, SCALE as i128)?)?))
    }

    /// `self / other`, rounded half to even, checked; dividing by a non-positive value is an
    /// error (callers negate first when they mean it).
    pub fn checked_div(self, other: Fixed) -> Result<Fixed, CodecError> {
        let num = (self.0 as i128) << SCALE_BITS;
        Ok(Fixed(to_i64("fixed-point quotient", div_round_half_even(num, other.0 as i128)?)?))
    }

    /// `self × n` for an integer `n`, checked.
    pub fn checked_mul_int(self, n: i64) -> Result<Fixed, CodecError> {
        Ok(Fixed(to_i64("fixed-point product", self.0 as i128 * n as i128)?))
    }

    /// The value rounded half to even to an integer.
    pub fn round(self) -> i64 {
        // |raw / S| <= 2^43, so the quotient always fits.
        div_round_half_even(self.0 as i128, SCALE as i128).map(|v| v as i64).unwrap_or(0)
    }
}

impl std::fmt::Display for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.6}", self.to_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn half_even_ties() {
        let cases = [(1, 2, 0), (3, 2, 2), (5, 2, 2), (-1, 2, 0), (-3, 2, -2), (10, 4, 2), (14, 4, 4)];
        for (n, d, want) in cases {
            assert_eq!(div_round_half_even(n, d).unwrap(), want, "{n}/{d}");
        }
        assert!(div_round_half_even(1, 0).is_err());
        assert!(div_round_half_even(1, -3).is_err());
    }

    #[test]
    fn conversions_reject_bad_floats() {
        assert!(matches!(watts_from_kw("p", f64::NAN), Err(CodecError::NotFinite { .. })));
        assert!(matches!(watts_from_kw("p", f64::INFINITY), Err(CodecError::NotFinite { .. })));
        assert!(matches!(watts_from_kw("p", 3e6), Err(CodecError::OutOfRange { .. })));
        assert_eq!(watts_from_kw("p", 7.4).unwrap(), 7400);
        assert_eq!(watts_from_kw("p", 0.0005).unwrap(), 0); // 0.5 W -> 0 (even)
        assert_eq!(watts_from_kw("p", 0.0015).unwrap(), 2); // 1.5 W -> 2 (even)
        assert_eq!(watt_slots_from_kwh("e", 1.0, 900).unwrap(), 4000);
        assert!(watt_slots_from_kwh("e", 1.0, 0).is_err());
        assert_eq!(wh_from_watt_slots(4000, 900).unwrap(), 1000);
        assert!(Fixed::from_int("x", i64::MAX).is_err());
        assert!(Fixed(i64::MAX).checked_add(Fixed(1)).is_err());
        assert!(Fixed(i64::MAX).checked_mul(Fixed(i64::MAX)).is_err());
        assert!(Fixed::ONE.checked_div(Fixed::ZERO).is_err());
    }

    proptest! {
        #[test]
        fn half_even_matches_exact_rational(n in -1_000_000_000_000i128..1_000_000_000_000, d in 1i128..1_000_000) {
            let q = div_round_half_even(n, d).unwrap();
            // |n/d - q| <= 1/2, i.e. |n - q d| * 2 <= d, with ties only onto even q.
            let err2 = 2 * (n - q * d);
            prop_assert!(err2.abs() <= d);
            if err2.abs() == d { prop_assert_eq!(q.rem_euclid(2), 0); }
        }

        #[test]
        fn fixed_mul_div_round_trip(a in -1_000_000i64..1_000_000, b in 1i64..1_000) {
            let x = Fixed::from_int("a", a).unwrap();
            let y = Fixed::from_int("b", b).unwrap();
            prop_assert_eq!(x.checked_mul(y).unwrap().checked_div(y).unwrap(), x);
        }

        #[test]
        fn float_round_trip_is_within_half_ulp(v in -1.0e6f64..1.0e6) {
            let f = Fixed::from_f64("v", v).unwrap();
            prop_assert!((f.to_f64() - v).abs() <= 0.5 / SCALE as f64 + 1e-9);
        }
    }
}
