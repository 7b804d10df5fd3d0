//! Membership: enrollment authorities attest devices (DESIGN §3, §10).
//!
//! An *enrollment authority* (the DSO, an installer), named in the genesis, signs an
//! [`Attestation`] for one device: its key, its model kind, the meter point it sits behind, its
//! public *nameplate* limits and a validity period. A validator admits an enrollment only with
//! an attestation that an authority of the genesis signed for that device and kind, valid for
//! the whole market ([`check_attestation`]). The nameplate is public (it is not a preference);
//! a gateway refuses to commit to private parameters beyond it ([`within_nameplate`]).

use borsh::{BorshDeserialize, BorshSerialize};
use circuits::model::ModelParams;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::codec::encode;
use crate::entry::MarketSpec;
use crate::ids::DeviceId;
use crate::merkle::Hash;
use crate::sign::{sign, verify, ChainId, Domain, SignatureBytes};

/// Longest meter point id (bytes of UTF-8), e.g. a 33-character EU metering point id.
pub const MAX_METER_POINT_BYTES: usize = 64;

/// An enrollment authority: its ed25519 public key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(transparent)]
pub struct AuthorityId(#[serde(with = "crate::ids::hex32")] pub [u8; 32]);

impl std::fmt::Display for AuthorityId {
    /// The first 8 bytes in hex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::ids::hex(&self.0[..8]))
    }
}

/// A device's public rated limits, as its installer read them off the nameplate. Which apply
/// depends on the model: a deferrable load or heat pump has `max_import_w`; a battery all
/// three; a PV system `max_export_w` (its peak).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Nameplate {
    /// Rated power drawn from the grid (charging, heating, a load), W.
    pub max_import_w: u32,
    /// Rated power fed to the grid (discharging, PV peak), W.
    pub max_export_w: u32,
    /// Storage capacity, Wh (batteries).
    pub capacity_wh: u32,
}

/// What an authority attests about one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Attestation {
    /// The device's key.
    #[serde(with = "device_hex")]
    pub device: DeviceId,
    /// `circuits::ModelKind` id.
    pub kind: u8,
    /// The meter point the device sits behind (at most [`MAX_METER_POINT_BYTES`]).
    pub meter_point: String,
    /// The public limits.
    pub nameplate: Nameplate,
    /// Valid from (ms since the Unix epoch, inclusive).
    pub valid_from_ms: u64,
    /// Valid until (ms, exclusive).
    pub valid_until_ms: u64,
}

/// An attestation signed by an enrollment authority, in the attestation domain of one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SignedAttestation {
    /// The attestation.
    pub body: Attestation,
    /// Who signed it.
    pub authority: AuthorityId,
    /// Signature by `authority` in [`Domain::Attestation`].
    #[serde(with = "sig_hex")]
    pub signature: SignatureBytes,
}

impl SignedAttestation {
    /// Signs `body` with an authority's key.
    pub fn new(key: &SigningKey, chain: &ChainId, body: Attestation) -> SignedAttestation {
        let signature = sign(key, chain, Domain::Attestation, &encode(&body));
        SignedAttestation { body, authority: AuthorityId(key.verifying_key().to_bytes()), signature }
    }

    /// SHA-256 of the canonical encoding (body, authority and signature): how a revocation
    /// names it.
    pub fn digest(&self) -> Hash {
        Sha256::digest(encode(self)).into()
    }
}

/// An enrollment authority withdraws an attestation: from the entry that commits this on, the
/// attestation admits nothing, and devices enrolled with it leave every market whose
/// registration is still open.
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Revocation {
    /// The device the attestation is for (for people and logs; the digest decides).
    pub device: DeviceId,
    /// [`SignedAttestation::digest`] of the revoked attestation.
    pub attestation: Hash,
}

/// A revocation signed by an enrollment authority in [`Domain::Revocation`]. Any authority of
/// the chain may revoke any attestation (the DSO revokes what an installer signed).
#[derive(Debug, Clone, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SignedRevocation {
    /// The revocation.
    pub body: Revocation,
    /// Who signed it.
    pub authority: AuthorityId,
    /// Signature by `authority`.
    pub signature: SignatureBytes,
}

impl SignedRevocation {
    /// Revokes `a`, signed with an authority's key.
    pub fn new(key: &SigningKey, chain: &ChainId, a: &SignedAttestation) -> SignedRevocation {
        let body = Revocation { device: a.body.device, attestation: a.digest() };
        let signature = sign(key, chain, Domain::Revocation, &encode(&body));
        SignedRevocation { body, authority: AuthorityId(key.verifying_key().to_bytes()), signature }
    }
}

/// Why a revocation is refused. Each has a metrics label ([`Self::label`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RevocationError {
    /// Signed by a key that is not an enrollment authority of this chain.
    #[error("revocation for device {device} is signed by {authority}, which is not an enrollment authority of this chain")]
    NotAnAuthority {
        /// The device named.
        device: DeviceId,
        /// The signer.
        authority: AuthorityId,
    },
    /// The signature does not verify.
    #[error("revocation for device {device}: {reason}")]
    BadSignature {
        /// The device named.
        device: DeviceId,
        /// What failed.
        reason: String,
    },
    /// The attestation is revoked already.
    #[error("the attestation of device {device} is revoked already")]
    AlreadyRevoked {
        /// The device named.
        device: DeviceId,
    },
}

impl RevocationError {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            RevocationError::NotAnAuthority { .. } => "revocation_not_authority",
            RevocationError::BadSignature { .. } => "bad_revocation",
            RevocationError::AlreadyRevoked { .. } => "already_revoked",
        }
    }
}

/// Whether `r` is a revocation by one of `authorities` on `chain` (signature checked
/// strictly).
pub fn check_revocation(r: &SignedRevocation, chain: &ChainId, authorities: &[AuthorityId]) -> Result<(), RevocationError> {
    let device = r.body.device;
    if !authorities.contains(&r.authority) {
        return Err(RevocationError::NotAnAuthority { device, authority: r.authority });
    }
    verify(&r.authority.0, chain, Domain::Revocation, &encode(&r.body), &r.signature)
        .map_err(|e| RevocationError::BadSignature { device, reason: e.to_string() })
}

/// Why an attestation does not admit a device. Each has a metrics label ([`Self::label`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AttestationError {
    /// Signed by a key that is not an enrollment authority of this chain.
    #[error("attestation of device {device} is signed by {authority}, which is not an enrollment authority of this chain")]
    NotAnAuthority {
        /// The device.
        device: DeviceId,
        /// The signer.
        authority: AuthorityId,
    },
    /// The signature does not verify.
    #[error("attestation of device {device}: {reason}")]
    BadSignature {
        /// The device.
        device: DeviceId,
        /// What failed.
        reason: String,
    },
    /// The attestation is for another device or model kind than the enrollment.
    #[error("attestation is for device {attested} kind {attested_kind}, the enrollment for device {device} kind {kind}")]
    Mismatch {
        /// The enrolling device.
        device: DeviceId,
        /// The enrollment's kind.
        kind: u8,
        /// The attested device.
        attested: DeviceId,
        /// The attested kind.
        attested_kind: u8,
    },
    /// Not valid for the whole market (registration close to the end of execution).
    #[error("attestation of device {device} is valid [{from_ms}, {until_ms}), the market needs [{needed_from_ms}, {needed_until_ms})")]
    Expired {
        /// The device.
        device: DeviceId,
        /// Valid from.
        from_ms: u64,
        /// Valid until.
        until_ms: u64,
        /// The market's registration close.
        needed_from_ms: u64,
        /// The end of the market's execution.
        needed_until_ms: u64,
    },
    /// An authority revoked it (a revocation entry names its digest).
    #[error("attestation of device {device} by {authority} was revoked")]
    Revoked {
        /// The device.
        device: DeviceId,
        /// Who had signed it.
        authority: AuthorityId,
    },
    /// A field is out of its bounds.
    #[error("attestation of device {device}: {reason}")]
    Malformed {
        /// The device.
        device: DeviceId,
        /// What is out of bounds.
        reason: String,
    },
}

impl AttestationError {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            AttestationError::NotAnAuthority { .. } => "unattested",
            AttestationError::BadSignature { .. } => "bad_attestation",
            AttestationError::Mismatch { .. } => "attestation_mismatch",
            AttestationError::Expired { .. } => "attestation_expired",
            AttestationError::Revoked { .. } => "attestation_revoked",
            AttestationError::Malformed { .. } => "bad_attestation",
        }
    }
}

/// The span an attestation must cover for a market: from its registration close to the end
/// of its execution ([`crate::market::execution_span`]).
pub fn market_span(m: &MarketSpec) -> (u64, u64) {
    (m.registration_close_ms, crate::market::execution_span(m).1)
}

/// Whether `a` admits `device` of model `kind` to market `m` on `chain`: signed (strictly) by
/// one of `authorities`, for that device and kind, bounded fields, valid over
/// [`market_span`]. Checked in this order; the first failure is returned.
pub fn check_attestation(
    a: &SignedAttestation,
    chain: &ChainId,
    authorities: &[AuthorityId],
    device: DeviceId,
    kind: u8,
    m: &MarketSpec,
) -> Result<(), AttestationError> {
    check_attested(a, chain, authorities, device, kind)?;
    check_covers(a, m)
}

/// [`check_attestation`] without the time: signed (strictly) by one of `authorities`, for
/// `device` and `kind`, bounded fields. A gateway keeps the attestations that pass this and
/// picks, per market, one that also passes [`check_covers`].
pub fn check_attested(a: &SignedAttestation, chain: &ChainId, authorities: &[AuthorityId], device: DeviceId, kind: u8) -> Result<(), AttestationError> {
    if !authorities.contains(&a.authority) {
        return Err(AttestationError::NotAnAuthority { device, authority: a.authority });
    }
    verify(&a.authority.0, chain, Domain::Attestation, &encode(&a.body), &a.signature)
        .map_err(|e| AttestationError::BadSignature { device, reason: e.to_string() })?;
    if a.body.device != device || a.body.kind != kind {
        return Err(AttestationError::Mismatch { device, kind, attested: a.body.device, attested_kind: a.body.kind });
    }
    if a.body.meter_point.len() > MAX_METER_POINT_BYTES {
        return Err(AttestationError::Malformed {
            device,
            reason: format!("meter point id of {} bytes (at most {MAX_METER_POINT_BYTES})", a.body.meter_point.len()),
        });
    }
    Ok(())
}

/// Whether `a`'s validity period covers market `m`'s [`market_span`].
pub fn check_covers(a: &SignedAttestation, m: &MarketSpec) -> Result<(), AttestationError> {
    let device = a.body.device;
    let (from, until) = market_span(m);
    if a.body.valid_from_ms > from || a.body.valid_until_ms < until {
        return Err(AttestationError::Expired {
            device,
            from_ms: a.body.valid_from_ms,
            until_ms: a.body.valid_until_ms,
            needed_from_ms: from,
            needed_until_ms: until,
        });
    }
    Ok(())
}

pub use circuits::nameplate::BeyondNameplate;

impl Nameplate {
    /// The smallest nameplate that `self` and `other` both fit within: each field the larger.
    pub fn cover(&self, other: &Nameplate) -> Nameplate {
        Nameplate {
            max_import_w: self.max_import_w.max(other.max_import_w),
            max_export_w: self.max_export_w.max(other.max_export_w),
            capacity_wh: self.capacity_wh.max(other.capacity_wh),
        }
    }

    /// The nameplate in circuit units for slots of `slot_seconds`: the public input every
    /// update of the device proves its parameters against (`circuits::nameplate`).
    pub fn limits(&self, slot_seconds: u32) -> circuits::nameplate::Limits {
        circuits::nameplate::Limits::from_nameplate(self.max_import_w, self.max_export_w, self.capacity_wh, slot_seconds)
    }
}

/// Whether private parameters lie within a nameplate, for slots of `slot_seconds`: a
/// deferrable load's or heat pump's `p_max` ≤ import; a battery's charge ≤ import, discharge
/// ≤ export, capacity (W·slot) ≤ capacity_wh · 3600 / Δ; every PV forecast value ≤ export.
/// The same rule the circuits enforce (`circuits::nameplate::check`).
pub fn within_nameplate(params: &ModelParams, n: &Nameplate, slot_seconds: u32) -> Result<(), BeyondNameplate> {
    circuits::nameplate::check(params, &n.limits(slot_seconds))
}

/// Serde for a device id as hex.
mod device_hex {
    use serde::{Deserializer, Serializer};

    use crate::ids::DeviceId;

    pub fn serialize<S: Serializer>(d: &DeviceId, ser: S) -> Result<S::Ok, S::Error> {
        crate::ids::hex32::serialize(&d.0, ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<DeviceId, D::Error> {
        crate::ids::hex32::deserialize(de).map(DeviceId)
    }
}

/// Serde for signature bytes as hex (attestation files are JSON).
mod sig_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::sign::SignatureBytes;

    pub fn serialize<S: Serializer>(s: &SignatureBytes, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&crate::ids::hex(&s.0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<SignatureBytes, D::Error> {
        let text = String::deserialize(de)?;
        let bytes = crate::ids::parse_hex(&text, 64).ok_or_else(|| serde::de::Error::custom("a signature is 128 hex characters"))?;
        Ok(SignatureBytes(bytes.try_into().expect("64 bytes")))
    }
}

/// What a gateway asks an authority to attest for one appliance (`device init` writes these;
/// `verifier-node attest` signs them after the installer checked the nameplate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationRequest {
    /// The appliance's name on its gateway (for people; not signed).
    pub name: String,
    /// The device's key.
    #[serde(with = "device_hex")]
    pub device: DeviceId,
    /// `circuits::ModelKind` id.
    pub kind: u8,
    /// The meter point.
    pub meter_point: String,
    /// The nameplate to attest.
    pub nameplate: Nameplate,
}

impl AttestationRequest {
    /// The attestation of this request, valid over `[from_ms, until_ms)`.
    pub fn attestation(&self, valid_from_ms: u64, valid_until_ms: u64) -> Attestation {
        Attestation { device: self.device, kind: self.kind, meter_point: self.meter_point.clone(), nameplate: self.nameplate, valid_from_ms, valid_until_ms }
    }
}

/// The smallest nameplate the parameters fit ([`within_nameplate`] holds for it): what a
/// gateway proposes when its configuration names none (the installer checks it against the
/// real plate before signing).
pub fn nameplate_of(params: &ModelParams, slot_seconds: u32) -> Nameplate {
    // The powers as the circuits bound them; the capacity back from W·slot to Wh, rounded up
    // so that capacity_wh · 3600 / Δ ≥ capacity.
    let fit = circuits::nameplate::fitting(params);
    let wh = (fit.capacity as u64 * slot_seconds.max(1) as u64).div_ceil(3600);
    Nameplate { max_import_w: fit.import_w, max_export_w: fit.export_w, capacity_wh: wh.min(u32::MAX as u64) as u32 }
}

/// An attestation of `device` with the nameplate its parameters need ([`nameplate_of`]),
/// valid over `span` (ms), signed by `authority`: what a development cluster's own authority
/// issues (`device simulate`, the demo, tests), with no installer in the loop.
pub fn attest(
    authority: &SigningKey,
    chain: &ChainId,
    device: DeviceId,
    params: &ModelParams,
    slot_seconds: u32,
    meter_point: &str,
    span: (u64, u64),
) -> SignedAttestation {
    attest_nameplate(authority, chain, device, params.kind().id(), nameplate_of(params, slot_seconds), meter_point, span)
}

/// An attestation of `device` of model `kind` with `nameplate`, valid over `span` (ms),
/// signed by `authority`.
pub fn attest_nameplate(
    authority: &SigningKey,
    chain: &ChainId,
    device: DeviceId,
    kind: u8,
    nameplate: Nameplate,
    meter_point: &str,
    span: (u64, u64),
) -> SignedAttestation {
    let body = Attestation { device, kind, meter_point: meter_point.to_string(), nameplate, valid_from_ms: span.0, valid_until_ms: span.1 };
    SignedAttestation::new(authority, chain, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_nameplate_admits_its_parameters_and_one_watt_less_does_not() {
        for kind in circuits::ModelKind::ALL {
            let params = circuits::sample::params(kind, circuits::Slots::new(24).unwrap());
            let n = nameplate_of(&params, 3600);
            within_nameplate(&params, &n, 3600).unwrap();
            let smaller = Nameplate {
                max_import_w: n.max_import_w.saturating_sub(1),
                max_export_w: n.max_export_w.saturating_sub(1),
                capacity_wh: n.capacity_wh.saturating_sub(1),
            };
            if smaller != n {
                assert!(within_nameplate(&params, &smaller, 3600).is_err(), "{kind}: {n:?}");
            }
        }
    }
}
