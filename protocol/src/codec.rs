//! The one canonical encoding of everything validators and devices exchange or sign: Borsh
//! (little-endian fixed-width integers, u32 length prefixes, one-byte enum and option tags,
//! booleans as 0/1), with three extra rules enforced by [`decode`]:
//!
//! 1. the input is at most the caller's size cap (checked before any parsing);
//! 2. no trailing bytes;
//! 3. the value re-encodes to exactly the input (so no other byte string decodes to it).
//!
//! Field elements are wrapped in [`FieldElement`], whose decoder rejects values at or above the
//! BN254 scalar modulus.

use borsh::{BorshDeserialize, BorshSerialize};
use circuits::Fr;
use thiserror::Error;

/// Largest message a peer or device may send (1 MiB): an update at T = 288 is under 1.5 kB, an
/// iteration entry for 10,000 devices about 330 kB.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// Over the size cap.
    #[error("{what}: {len} bytes exceeds the cap of {max}")]
    TooLarge {
        /// The type being decoded.
        what: &'static str,
        /// The input length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Not a valid encoding (truncated, trailing bytes, bad tag, bad field element...).
    #[error("{what}: malformed encoding: {reason}")]
    Malformed {
        /// The type being decoded.
        what: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// Decodes, but another encoding is the canonical one.
    #[error("{what}: non-canonical encoding")]
    NonCanonical {
        /// The type being decoded.
        what: &'static str,
    },
}

/// The canonical encoding of `v`.
pub fn encode<T: BorshSerialize>(v: &T) -> Vec<u8> {
    borsh::to_vec(v).expect("writing to a Vec cannot fail")
}

/// Decodes `bytes` as a `T` under the rules of the module doc.
pub fn decode<T: BorshSerialize + BorshDeserialize>(what: &'static str, bytes: &[u8], cap: usize) -> Result<T, CodecError> {
    if bytes.len() > cap {
        return Err(CodecError::TooLarge { what, len: bytes.len(), max: cap });
    }
    let v: T = borsh::from_slice(bytes).map_err(|e| CodecError::Malformed { what, reason: e.to_string() })?;
    if encode(&v) != bytes {
        return Err(CodecError::NonCanonical { what });
    }
    Ok(v)
}

/// A BN254 scalar-field element on the wire: 32 little-endian bytes, below the modulus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
// Arbitrary values may be ≥ the modulus: the fuzz tests encode them and the decoder refuses.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FieldElement([u8; 32]);

impl FieldElement {
    /// Wraps a field element.
    pub fn new(f: &Fr) -> FieldElement {
        FieldElement(circuits::field::fr_to_bytes(f))
    }

    /// The field element.
    pub fn get(&self) -> Fr {
        circuits::field::fr_from_bytes(&self.0).expect("checked on construction and decoding")
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl BorshSerialize for FieldElement {
    fn serialize<W: std::io::Write>(&self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(&self.0)
    }
}

impl BorshDeserialize for FieldElement {
    fn deserialize_reader<R: std::io::Read>(reader: &mut R) -> std::io::Result<Self> {
        let bytes = <[u8; 32]>::deserialize_reader(reader)?;
        if circuits::field::fr_from_bytes(&bytes).is_none() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "field element at or above the modulus"));
        }
        Ok(FieldElement(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(BorshSerialize, BorshDeserialize, Debug, PartialEq)]
    struct Sample {
        a: u32,
        flag: bool,
        list: Vec<i32>,
        f: FieldElement,
    }

    #[test]
    fn rules_hold() {
        let s = Sample { a: 7, flag: true, list: vec![-1, 2], f: FieldElement::new(&Fr::from(5u64)) };
        let b = encode(&s);
        assert_eq!(decode::<Sample>("sample", &b, 1000).unwrap(), s);
        assert!(matches!(decode::<Sample>("sample", &b, 10), Err(CodecError::TooLarge { .. })));
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(matches!(decode::<Sample>("sample", &trailing, 1000), Err(CodecError::Malformed { .. })));
        let mut bad_bool = b.clone();
        bad_bool[4] = 2;
        assert!(matches!(decode::<Sample>("sample", &bad_bool, 1000), Err(CodecError::Malformed { .. })));
        let mut big = b.clone();
        let n = big.len();
        big[n - 32..].copy_from_slice(&[0xff; 32]);
        assert!(matches!(decode::<Sample>("sample", &big, 1000), Err(CodecError::Malformed { .. })));
        assert!(matches!(decode::<Sample>("sample", &b[..b.len() - 1], 1000), Err(CodecError::Malformed { .. })));
    }
}
