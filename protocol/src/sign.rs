//! Domain-separated ed25519 signatures (ed25519-dalek, `verify_strict`).
//!
//! A signature covers `"gridproof/v1" ‖ chain id ‖ kind ‖ payload`, so a signature made for one
//! chain or one kind of message (an enrollment, an update, a commit vote, a meter reading) never
//! verifies as another.

use borsh::{BorshDeserialize, BorshSerialize};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Prefix of every signed message.
pub const SIGNING_PREFIX: &[u8] = b"gridproof/v1";

/// Which log or network: the SHA-256 of the genesis parameters, fixed at launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ChainId(pub [u8; 32]);

/// What a signature is for (its domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Domain {
    /// A device enrollment.
    Enrollment = 1,
    /// A device's schedule update.
    Update = 2,
    /// A validator's vote for (height, entry hash).
    CommitVote = 3,
    /// A gateway's meter reading.
    Meter = 4,
    /// Consensus traffic other than commit votes: proposals, prevotes, nil precommits.
    Consensus = 5,
    /// An enrollment authority's attestation of a device.
    Attestation = 6,
    /// A market operator's opening of a market.
    MarketOpen = 7,
    /// An enrollment authority's revocation of an attestation.
    Revocation = 8,
    /// A device's withdrawal from a market before its registration closes.
    Withdrawal = 9,
}

/// An ed25519 signature's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SignatureBytes(pub [u8; 64]);

/// A signature that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// The public key is not a valid ed25519 point.
    #[error("public key {0} is not a valid ed25519 key")]
    BadKey(String),
    /// The signature does not verify for this key, chain, domain and payload.
    #[error("signature by {key} does not verify for {domain:?} on this chain")]
    Invalid {
        /// The claimed signer (hex prefix).
        key: String,
        /// The domain checked.
        domain: Domain,
    },
}

fn message(chain: &ChainId, domain: Domain, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_PREFIX.len() + 33 + payload.len());
    m.extend_from_slice(SIGNING_PREFIX);
    m.extend_from_slice(&chain.0);
    m.push(domain as u8);
    m.extend_from_slice(payload);
    m
}

/// Signs `payload` for `domain` on `chain`.
pub fn sign(key: &SigningKey, chain: &ChainId, domain: Domain, payload: &[u8]) -> SignatureBytes {
    SignatureBytes(key.sign(&message(chain, domain, payload)).to_bytes())
}

/// Verifies a signature by the ed25519 public key `signer` (strict: rejects small-order keys
/// and non-canonical signatures).
pub fn verify(signer: &[u8; 32], chain: &ChainId, domain: Domain, payload: &[u8], sig: &SignatureBytes) -> Result<(), SignatureError> {
    let key = VerifyingKey::from_bytes(signer).map_err(|_| SignatureError::BadKey(crate::ids::short_hex(signer)))?;
    let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
    key.verify_strict(&message(chain, domain, payload), &sig).map_err(|_| SignatureError::Invalid { key: crate::ids::short_hex(signer), domain })
}

/// A signing key from 32 secret bytes (from the OS RNG or a key file).
pub fn signing_key(secret: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(secret)
}

/// A fresh signing key from the OS RNG.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}
