//! What devices send: signed enrollments (carrying an authority's attestation) and signed
//! schedule updates.

use borsh::{BorshDeserialize, BorshSerialize};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use crate::codec::{encode, FieldElement};
use crate::ids::DeviceId;
use crate::membership::SignedAttestation;
use crate::merkle::Hash;
use crate::sign::{sign, verify, ChainId, Domain, SignatureBytes, SignatureError};

/// Bytes of a compressed Groth16 proof.
pub const PROOF_BYTES: usize = 128;

/// A device joins a market with its model kind, T and commitment C (DESIGN §5.1).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Enrollment {
    /// The market.
    pub market_id: u64,
    /// The device's key.
    pub device: DeviceId,
    /// `circuits::ModelKind` id.
    pub kind: u8,
    /// T.
    pub slots: u16,
    /// The Poseidon commitment to θ, costs and salt.
    pub commitment: FieldElement,
    /// An enrollment authority's attestation of this device and kind.
    pub attestation: SignedAttestation,
}

/// An enrollment signed by the device key.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SignedEnrollment {
    /// The enrollment.
    pub body: Enrollment,
    /// Signature by `body.device` in the enrollment domain.
    pub signature: SignatureBytes,
}

impl SignedEnrollment {
    /// Signs `body` with the device key (which must be `body.device`'s).
    pub fn new(key: &SigningKey, chain: &ChainId, body: Enrollment) -> SignedEnrollment {
        let signature = sign(key, chain, Domain::Enrollment, &encode(&body));
        SignedEnrollment { body, signature }
    }

    /// Checks the signature against the enrolling device's key.
    pub fn verify(&self, chain: &ChainId) -> Result<(), SignatureError> {
        verify(&self.body.device.0, chain, Domain::Enrollment, &encode(&self.body), &self.signature)
    }
}

/// A device's new schedule for iteration k, with its proof.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Update {
    /// The market.
    pub market_id: u64,
    /// The iteration k this schedule answers.
    pub iteration: u32,
    /// The device.
    pub device: DeviceId,
    /// x in W (T entries).
    pub schedule: Vec<i32>,
    /// The Groth16 proof (compressed, see `prover::format`).
    pub proof: [u8; PROOF_BYTES],
}

/// An update signed by the device key.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SignedUpdate {
    /// The update.
    pub body: Update,
    /// Signature by `body.device` in the update domain.
    pub signature: SignatureBytes,
}

impl SignedUpdate {
    /// Signs `body` with the device key.
    pub fn new(key: &SigningKey, chain: &ChainId, body: Update) -> SignedUpdate {
        let signature = sign(key, chain, Domain::Update, &encode(&body));
        SignedUpdate { body, signature }
    }

    /// Checks the signature against the device's key.
    pub fn verify(&self, chain: &ChainId) -> Result<(), SignatureError> {
        verify(&self.body.device.0, chain, Domain::Update, &encode(&self.body), &self.signature)
    }

    /// SHA-256 of the canonical encoding: how iteration entries name included updates.
    pub fn digest(&self) -> Hash {
        Sha256::digest(encode(self)).into()
    }
}

/// What a device, an operator, an authority or an auditor asks a validator, one request per QUIC stream.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum DeviceRequest {
    /// Enroll (during registration).
    Enroll(SignedEnrollment),
    /// An update for the open iteration.
    Update(SignedUpdate),
    /// Stream certified entries from height `from` on, then each new one as it commits.
    Subscribe {
        /// First height.
        from: u64,
    },
    /// Leave a market before its registration closes.
    Withdraw(crate::market::SignedWithdrawal),
    /// A market operator opens a market.
    Open(crate::market::SignedMarketOpen),
    /// An enrollment authority revokes an attestation.
    Revoke(crate::membership::SignedRevocation),
    /// One appliance's meter readings of one market (1 to
    /// `settlement::MAX_READINGS_PER_REQUEST`, ascending by slot), signed by its key.
    Meter(Vec<crate::settlement::SignedReading>),
    /// The snapshot at `height` and the entry there, for a start from a checkpoint: answered
    /// with one `snapshot::SnapshotReply` frame.
    Snapshot {
        /// The checkpoint's height.
        height: u64,
    },
}

/// A validator's answer to an enrollment or update.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum DeviceResponse {
    /// Admitted to the pool (it is in the log once an entry including it commits).
    Accepted,
    /// Refused: a stable reason label and a message.
    Rejected {
        /// The metrics label (`late`, `bad_signature`, `stale_iteration`, ...).
        label: String,
        /// What was wrong.
        message: String,
    },
}

/// Largest device request (an update at T = 288 is about 1.5 kB).
pub const MAX_DEVICE_FRAME: usize = 64 << 10;
