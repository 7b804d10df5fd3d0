//! Binary formats: proofs (128 bytes), public inputs (32 bytes each) and key files.
//!
//! Every decoder takes untrusted bytes and either returns a value that re-encodes to exactly
//! those bytes or a [`FormatError`]: points must be on the curve and in the prime-order
//! subgroup, field elements below the modulus, encodings canonical, lengths exact.
//!
//! # Key file layout (little-endian)
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `GRIDKEY\0` |
//! | 8 | 2 | format version ([`KEY_FORMAT_VERSION`]) |
//! | 10 | 1 | key type: 1 proving, 2 verifying |
//! | 11 | 4 | circuit id ([`CIRCUIT_ID`]: the update circuit, version 2: nameplate limits) |
//! | 15 | 1 | model kind (1 deferrable, 2 battery, 3 producer, 4 thermal) |
//! | 16 | 2 | T |
//! | 18 | 1 | setup: 0 ceremony, 1 development (NOT FOR PRODUCTION) |
//! | 19 | 8 | body length |
//! | 27 | 32 | SHA-256 of bytes 0..27 and the body (so no header field can change unnoticed) |
//! | 59 | … | body: the arkworks key, compressed canonical points |

use ark_bn254::{Bn254, Fr, G1Affine, G2Affine};
use ark_groth16::{Proof, ProvingKey, VerifyingKey};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize, Compress, Validate};
use circuits::{ModelKind, Shape, Slots};
use sha2::{Digest, Sha256};

use crate::error::FormatError;

/// Bytes of a compressed proof: A (32) ‖ B (64) ‖ C (32).
pub const PROOF_BYTES: usize = 128;
/// Bytes of a field element on the wire (little-endian, canonical).
pub const FR_BYTES: usize = 32;
/// The key file magic.
pub const KEY_MAGIC: [u8; 8] = *b"GRIDKEY\0";
/// The key file format version this build writes and reads.
pub const KEY_FORMAT_VERSION: u16 = 1;
/// The circuit id of `circuits::UpdateCircuit` as it is now; bump on any constraint change.
pub const CIRCUIT_ID: u32 = 2;
/// Length of the key file header.
pub const KEY_HEADER_BYTES: usize = 59;
/// Largest key body accepted (a T = 288 thermal proving key is about 20 MiB).
pub const MAX_KEY_BODY_BYTES: u64 = 512 << 20;

/// Encodes a point compressed.
fn encode_point<P: CanonicalSerialize>(p: &P, out: &mut Vec<u8>) {
    p.serialize_compressed(out).expect("writing to a Vec cannot fail");
}

/// Decodes a compressed point, checking curve, subgroup and canonical encoding.
fn decode_point<P: CanonicalSerialize + CanonicalDeserialize>(bytes: &[u8], what: &str) -> Result<P, FormatError> {
    let p = P::deserialize_with_mode(bytes, Compress::Yes, Validate::Yes).map_err(|_| FormatError::InvalidPoint { what: what.to_string() })?;
    let mut again = Vec::with_capacity(bytes.len());
    encode_point(&p, &mut again);
    if again != bytes {
        return Err(FormatError::NonCanonicalPoint { what: what.to_string() });
    }
    Ok(p)
}

/// A proof as 128 bytes.
pub fn encode_proof(proof: &Proof<Bn254>) -> [u8; PROOF_BYTES] {
    let mut v = Vec::with_capacity(PROOF_BYTES);
    encode_point(&proof.a, &mut v);
    encode_point(&proof.b, &mut v);
    encode_point(&proof.c, &mut v);
    v.try_into().expect("a compressed BN254 proof is 128 bytes")
}

/// Decodes 128 proof bytes.
pub fn decode_proof(bytes: &[u8]) -> Result<Proof<Bn254>, FormatError> {
    exact_len("proof", bytes, PROOF_BYTES)?;
    Ok(Proof {
        a: decode_point::<G1Affine>(&bytes[0..32], "proof point A")?,
        b: decode_point::<G2Affine>(&bytes[32..96], "proof point B")?,
        c: decode_point::<G1Affine>(&bytes[96..128], "proof point C")?,
    })
}

fn exact_len(what: &'static str, bytes: &[u8], n: usize) -> Result<(), FormatError> {
    match bytes.len().cmp(&n) {
        std::cmp::Ordering::Less => Err(FormatError::Truncated { what, needed: n, got: bytes.len() }),
        std::cmp::Ordering::Greater => Err(FormatError::TrailingBytes { what, extra: bytes.len() - n }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// A field element as 32 little-endian bytes.
pub fn encode_fr(f: &Fr) -> [u8; FR_BYTES] {
    circuits::field::fr_to_bytes(f)
}

/// Decodes 32 little-endian bytes, rejecting values at or above the modulus.
pub fn decode_fr(bytes: &[u8], what: &str) -> Result<Fr, FormatError> {
    let array: &[u8; FR_BYTES] =
        bytes.try_into().map_err(|_| FormatError::NonCanonicalField { what: format!("{what} ({} bytes, expected 32)", bytes.len()) })?;
    circuits::field::fr_from_bytes(array).ok_or_else(|| FormatError::NonCanonicalField { what: what.to_string() })
}

/// Public inputs as concatenated 32-byte elements.
pub fn encode_public_inputs(inputs: &[Fr]) -> Vec<u8> {
    inputs.iter().flat_map(encode_fr).collect()
}

/// Decodes exactly `count` public inputs.
pub fn decode_public_inputs(bytes: &[u8], count: usize) -> Result<Vec<Fr>, FormatError> {
    exact_len("public inputs", bytes, count * FR_BYTES)?;
    bytes.chunks(FR_BYTES).enumerate().map(|(i, c)| decode_fr(c, &format!("public input {i}"))).collect()
}

/// Proving or verifying key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// A Groth16 proving key.
    Proving = 1,
    /// A Groth16 verifying key.
    Verifying = 2,
}

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupKind {
    /// A multi-party ceremony.
    Ceremony = 0,
    /// A single-party development setup: whoever ran it can forge proofs. Not for production.
    Development = 1,
}

/// The parsed header of a key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHeader {
    /// Proving or verifying.
    pub key_type: KeyType,
    /// The circuit id.
    pub circuit_id: u32,
    /// Model and T.
    pub shape: Shape,
    /// Ceremony or development.
    pub setup: SetupKind,
    /// SHA-256 of the header fields and the body.
    pub body_sha256: [u8; 32],
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn shape_name(s: &Shape) -> String {
    format!("{} with T = {}", s.kind, s.slots)
}

/// SHA-256 over the header fields before the digest (bytes 0..27) and the body.
fn key_digest(header_prefix: &[u8], body: &[u8]) -> [u8; 32] {
    Sha256::new().chain_update(&header_prefix[..27]).chain_update(body).finalize().into()
}

/// Writes a key file: header then body.
fn encode_key_file(key_type: KeyType, shape: Shape, setup: SetupKind, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(KEY_HEADER_BYTES + body.len());
    out.extend_from_slice(&KEY_MAGIC);
    out.extend_from_slice(&KEY_FORMAT_VERSION.to_le_bytes());
    out.push(key_type as u8);
    out.extend_from_slice(&CIRCUIT_ID.to_le_bytes());
    out.push(shape.kind.id());
    out.extend_from_slice(&(shape.slots.get() as u16).to_le_bytes());
    out.push(setup as u8);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let digest = key_digest(&out, &body);
    out.extend_from_slice(&digest);
    debug_assert_eq!(out.len(), KEY_HEADER_BYTES);
    out.extend_from_slice(&body);
    out
}

/// Parses and checks a key file header and body hash; returns the header and the body.
pub fn decode_key_header(bytes: &[u8]) -> Result<(KeyHeader, &[u8]), FormatError> {
    if bytes.len() < KEY_HEADER_BYTES {
        if bytes.len() >= 8 && bytes[..8] != KEY_MAGIC {
            return Err(FormatError::BadMagic { found: bytes[..8].to_vec() });
        }
        return Err(FormatError::Truncated { what: "key file header", needed: KEY_HEADER_BYTES, got: bytes.len() });
    }
    if bytes[..8] != KEY_MAGIC {
        return Err(FormatError::BadMagic { found: bytes[..8].to_vec() });
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let version = u16_at(8);
    if version != KEY_FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { found: version, supported: KEY_FORMAT_VERSION });
    }
    let key_type = match bytes[10] {
        1 => KeyType::Proving,
        2 => KeyType::Verifying,
        v => return Err(FormatError::BadHeader { field: "key type", value: v as u64 }),
    };
    let circuit_id = u32::from_le_bytes(bytes[11..15].try_into().expect("4 bytes"));
    if circuit_id != CIRCUIT_ID {
        return Err(FormatError::WrongCircuit { expected: format!("circuit id {CIRCUIT_ID}"), found: format!("circuit id {circuit_id}") });
    }
    let kind = ModelKind::from_id(bytes[15]).ok_or(FormatError::BadHeader { field: "model", value: bytes[15] as u64 })?;
    let t = u16_at(16);
    let slots = Slots::new(t as usize).map_err(|_| FormatError::BadHeader { field: "slots", value: t as u64 })?;
    let setup = match bytes[18] {
        0 => SetupKind::Ceremony,
        1 => SetupKind::Development,
        v => return Err(FormatError::BadHeader { field: "setup", value: v as u64 }),
    };
    let body_len = u64::from_le_bytes(bytes[19..27].try_into().expect("8 bytes"));
    if body_len > MAX_KEY_BODY_BYTES {
        return Err(FormatError::TooLarge { what: "key body", len: body_len, max: MAX_KEY_BODY_BYTES });
    }
    let body = &bytes[KEY_HEADER_BYTES..];
    if (body.len() as u64) < body_len {
        return Err(FormatError::Truncated { what: "key body", needed: body_len as usize, got: body.len() });
    }
    if (body.len() as u64) > body_len {
        return Err(FormatError::TrailingBytes { what: "key file", extra: body.len() - body_len as usize });
    }
    let body_sha256: [u8; 32] = bytes[27..59].try_into().expect("32 bytes");
    let found = key_digest(bytes, body);
    if found != body_sha256 {
        return Err(FormatError::HashMismatch { expected: hex(&body_sha256), found: hex(&found) });
    }
    Ok((KeyHeader { key_type, circuit_id, shape: Shape { kind, slots }, setup, body_sha256 }, body))
}

fn decode_body<K: CanonicalDeserialize>(body: &[u8], what: &'static str) -> Result<K, FormatError> {
    let mut reader = body;
    let key = K::deserialize_with_mode(&mut reader, Compress::Yes, Validate::Yes).map_err(|e| FormatError::InvalidPoint { what: format!("{what}: {e}") })?;
    if !reader.is_empty() {
        return Err(FormatError::TrailingBytes { what, extra: reader.len() });
    }
    Ok(key)
}

fn expect_header(header: &KeyHeader, key_type: KeyType, expected: Option<Shape>) -> Result<(), FormatError> {
    if header.key_type != key_type {
        return Err(FormatError::WrongCircuit { expected: format!("a {key_type:?} key"), found: format!("a {:?} key", header.key_type) });
    }
    if let Some(shape) = expected {
        if shape != header.shape {
            return Err(FormatError::WrongCircuit { expected: shape_name(&shape), found: shape_name(&header.shape) });
        }
    }
    Ok(())
}

/// A verifying key's size must match the shape's public inputs.
pub(crate) fn check_vk_shape(vk: &VerifyingKey<Bn254>, shape: Shape) -> Result<(), FormatError> {
    let have = vk.gamma_abc_g1.len();
    let want = shape.num_public_inputs() + 1;
    if have != want {
        return Err(FormatError::WrongCircuit {
            expected: format!("{} ({} public inputs)", shape_name(&shape), want - 1),
            found: format!("a key for {} public inputs", have.saturating_sub(1)),
        });
    }
    Ok(())
}

/// Encodes a proving key file.
pub fn encode_proving_key(pk: &ProvingKey<Bn254>, shape: Shape, setup: SetupKind) -> Vec<u8> {
    let mut body = Vec::new();
    pk.serialize_compressed(&mut body).expect("writing to a Vec cannot fail");
    encode_key_file(KeyType::Proving, shape, setup, body)
}

/// Encodes a verifying key file.
pub fn encode_verifying_key(vk: &VerifyingKey<Bn254>, shape: Shape, setup: SetupKind) -> Vec<u8> {
    let mut body = Vec::new();
    vk.serialize_compressed(&mut body).expect("writing to a Vec cannot fail");
    encode_key_file(KeyType::Verifying, shape, setup, body)
}

/// Decodes a proving key file; with `expected`, rejects keys for another shape.
pub fn decode_proving_key(bytes: &[u8], expected: Option<Shape>) -> Result<(KeyHeader, ProvingKey<Bn254>), FormatError> {
    let (header, body) = decode_key_header(bytes)?;
    expect_header(&header, KeyType::Proving, expected)?;
    let pk: ProvingKey<Bn254> = decode_body(body, "proving key")?;
    check_vk_shape(&pk.vk, header.shape)?;
    Ok((header, pk))
}

/// Decodes a verifying key file; with `expected`, rejects keys for another shape.
pub fn decode_verifying_key(bytes: &[u8], expected: Option<Shape>) -> Result<(KeyHeader, VerifyingKey<Bn254>), FormatError> {
    let (header, body) = decode_key_header(bytes)?;
    expect_header(&header, KeyType::Verifying, expected)?;
    let vk: VerifyingKey<Bn254> = decode_body(body, "verifying key")?;
    check_vk_shape(&vk, header.shape)?;
    Ok((header, vk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_elements_at_or_above_modulus_are_rejected() {
        let p_minus_1 = encode_fr(&-Fr::from(1u64));
        assert!(decode_fr(&p_minus_1, "x").is_ok());
        // p itself: p - 1 + 1, computed on the little-endian bytes.
        let mut p = p_minus_1;
        p[0] += 1;
        assert!(matches!(decode_fr(&p, "x"), Err(FormatError::NonCanonicalField { .. })));
        assert!(matches!(decode_fr(&[0xff; 32], "x"), Err(FormatError::NonCanonicalField { .. })));
        assert!(decode_fr(&[0; 31], "x").is_err());
    }

    #[test]
    fn public_inputs_round_trip_and_lengths_are_exact() {
        let v = vec![Fr::from(5u64), -Fr::from(7u64)];
        let b = encode_public_inputs(&v);
        assert_eq!(decode_public_inputs(&b, 2).unwrap(), v);
        assert!(matches!(decode_public_inputs(&b[..63], 2), Err(FormatError::Truncated { .. })));
        assert!(matches!(decode_public_inputs(&b, 1), Err(FormatError::TrailingBytes { .. })));
    }
}
