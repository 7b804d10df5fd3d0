//! Integers in the BN254 scalar field: conversions and the packings of DESIGN §5.1.
//!
//! Per-slot integers travel as 32-bit limbs `v + 2^31`, seven per field element, least
//! significant limb first; bit vectors travel 248 bits per element, least significant first.
//! Both packings are injective on their ranges, which is what lets a circuit bind a whole
//! vector through one element.

use ark_bn254::Fr;
use ark_ff::{BigInteger, PrimeField};
use thiserror::Error;

use crate::limits::{BITS_PER_ELEMENT, LIMBS_PER_ELEMENT, LIMB_BITS};

/// The offset that makes a signed 32-bit value a 32-bit limb.
pub const LIMB_OFFSET: i64 = 1 << (LIMB_BITS - 1);

/// A value that does not fit a 32-bit limb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("value {value} at index {index} does not fit a signed 32-bit limb")]
pub struct LimbRangeError {
    /// Position in the packed vector.
    pub index: usize,
    /// The offending value.
    pub value: i64,
}

/// A signed integer as a field element (negative values map to `p - |v|`).
pub fn fr_from_i128(v: i128) -> Fr {
    let f = Fr::from(v.unsigned_abs());
    if v < 0 {
        -f
    } else {
        f
    }
}

/// A field element as an integer if it lies below 2^127 (the canonical representative).
pub fn fr_to_u128(f: &Fr) -> Option<u128> {
    let bytes = f.into_bigint().to_bytes_le();
    if bytes[16..].iter().any(|&b| b != 0) || bytes[15] & 0x80 != 0 {
        return None;
    }
    let mut lo = [0u8; 16];
    lo.copy_from_slice(&bytes[..16]);
    Some(u128::from_le_bytes(lo))
}

/// A field element as 32 little-endian bytes (the canonical representative).
pub fn fr_to_bytes(f: &Fr) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&f.into_bigint().to_bytes_le());
    out
}

/// 32 little-endian bytes as a field element; `None` if the value is at or above the modulus
/// (so every element has exactly one encoding).
pub fn fr_from_bytes(bytes: &[u8; 32]) -> Option<Fr> {
    let mut limbs = [0u64; 4];
    for (i, l) in limbs.iter_mut().enumerate() {
        *l = u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    }
    Fr::from_bigint(ark_ff::BigInt::new(limbs))
}

/// Packs signed values as limbs `v + 2^31`, seven per element (⌈n / 7⌉ elements).
pub fn pack_limbs(values: &[i64]) -> Result<Vec<Fr>, LimbRangeError> {
    let mut out = Vec::with_capacity(values.len().div_ceil(LIMBS_PER_ELEMENT));
    let two32 = Fr::from(1u64 << LIMB_BITS);
    for (chunk_index, chunk) in values.chunks(LIMBS_PER_ELEMENT).enumerate() {
        // Σ limb_i · 2^(32 i), computed in the field (7 limbs need 224 bits).
        let mut element = Fr::from(0u64);
        let mut base = Fr::from(1u64);
        for (i, &v) in chunk.iter().enumerate() {
            let index = chunk_index * LIMBS_PER_ELEMENT + i;
            let limb = v.checked_add(LIMB_OFFSET).filter(|l| (0..(1i64 << LIMB_BITS)).contains(l)).ok_or(LimbRangeError { index, value: v })?;
            element += base * Fr::from(limb as u64);
            base *= two32;
        }
        out.push(element);
    }
    Ok(out)
}

/// Unpacks `n` signed values from limb elements; the inverse of [`pack_limbs`]. Returns `None`
/// if the elements are not a packing of exactly `n` limbs (extra high bits set).
pub fn unpack_limbs(elements: &[Fr], n: usize) -> Option<Vec<i64>> {
    if elements.len() != n.div_ceil(LIMBS_PER_ELEMENT) {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for (chunk_index, e) in elements.iter().enumerate() {
        let in_chunk = (n - chunk_index * LIMBS_PER_ELEMENT).min(LIMBS_PER_ELEMENT);
        let bytes = e.into_bigint().to_bytes_le();
        for i in 0..in_chunk {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[4 * i..4 * i + 4]);
            out.push(u32::from_le_bytes(b) as i64 - LIMB_OFFSET);
        }
        if bytes[4 * in_chunk..].iter().any(|&b| b != 0) {
            return None;
        }
    }
    Some(out)
}

/// Packs bits least significant first, [`BITS_PER_ELEMENT`] per element.
pub fn pack_bits(bits: &[bool]) -> Vec<Fr> {
    bits.chunks(BITS_PER_ELEMENT)
        .map(|chunk| {
            let mut le = vec![false; 256];
            le[..chunk.len()].copy_from_slice(chunk);
            Fr::from_bigint(<Fr as PrimeField>::BigInt::from_bits_le(&le)).expect("fewer than 254 bits are always below the modulus")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn limbs_round_trip(v in proptest::collection::vec(i32::MIN as i64..=i32::MAX as i64, 1..40)) {
            let packed = pack_limbs(&v).unwrap();
            prop_assert_eq!(packed.len(), v.len().div_ceil(7));
            prop_assert_eq!(unpack_limbs(&packed, v.len()).unwrap(), v);
        }

        #[test]
        fn signed_round_trip(v in any::<i64>()) {
            let f = fr_from_i128(v as i128);
            if v >= 0 { prop_assert_eq!(fr_to_u128(&f), Some(v as u128)); }
            else { prop_assert_eq!(-f, Fr::from(v.unsigned_abs())); }
        }
    }

    #[test]
    fn limb_range_is_checked() {
        assert_eq!(pack_limbs(&[0, 1 << 31]), Err(LimbRangeError { index: 1, value: 1 << 31 }));
        assert!(pack_limbs(&[-(1 << 31)]).is_ok());
        assert!(pack_limbs(&[-(1 << 31) - 1]).is_err());
        assert!(unpack_limbs(&[Fr::from(u64::MAX)], 1).is_none());
    }

    #[test]
    fn bits_pack_little_endian() {
        let mut bits = vec![false; 300];
        bits[0] = true;
        bits[3] = true;
        bits[250] = true;
        let packed = pack_bits(&bits);
        assert_eq!(packed, vec![Fr::from(9u64), Fr::from(4u64)]);
    }
}
