//! Identities: devices and validators are ed25519 public keys.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

/// A device (appliance) identity: its ed25519 public key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DeviceId(pub [u8; 32]);

impl std::fmt::Display for DeviceId {
    /// The key's [`short_hex`], enough to tell devices apart in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&short_hex(&self.0))
    }
}

/// A validator identity: its ed25519 public key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ValidatorId(pub [u8; 32]);

impl std::fmt::Display for ValidatorId {
    /// The key's [`short_hex`], enough to tell validators apart in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&short_hex(&self.0))
    }
}

/// Lower-case hex of `bytes` (keys, hashes, commitments in files, logs and JSON).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How many leading bytes [`short_hex`] shows.
pub const SHORT_HEX_BYTES: usize = 8;

/// Lower-case hex of the first [`SHORT_HEX_BYTES`] of `bytes` (all of them if fewer): how keys,
/// hashes and digests are named in logs and error messages, enough to tell them apart.
pub fn short_hex(bytes: &[u8]) -> String {
    hex(&bytes[..bytes.len().min(SHORT_HEX_BYTES)])
}

/// Parses exactly 64 hex characters (surrounding whitespace ignored) into 32 bytes: the form
/// of key files and of keys given on a command line.
pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    parse_hex(text, 32).map(|v| v.try_into().expect("32 bytes"))
}

/// Parses exactly `2 · n` hex characters (surrounding whitespace ignored) into `n` bytes.
pub fn parse_hex(text: &str, n: usize) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len() != 2 * n || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..n).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect()
}

/// Serde of 32-byte keys as 64 hex characters, for JSON files people read (attestations).
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the bytes as hex.
    pub fn serialize<S: Serializer>(b: &[u8; 32], ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&super::hex(b))
    }

    /// Reads 64 hex characters.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(de)?;
        super::parse_hex32(&text).ok_or_else(|| serde::de::Error::custom(format!("expected 64 hex characters, got {text:?}")))
    }
}
