//! Typed errors of the prover crate: every rejection says what was wrong and where.

use circuits::statement::StatementError;
use circuits::Shape;
use thiserror::Error;

/// Why bytes or JSON could not be decoded into a key, proof or public input.
#[derive(Debug, Error)]
pub enum FormatError {
    /// Fewer bytes than the format needs.
    #[error("{what}: truncated, needed {needed} bytes, got {got}")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// Bytes left over after a complete value.
    #[error("{what}: {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// What was being decoded.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// A declared length over the format's cap.
    #[error("{what}: {len} bytes exceeds the cap of {max}")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Declared or actual length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// Not a point on the curve in the prime-order subgroup.
    #[error("{what}: not a valid curve point in the prime-order subgroup")]
    InvalidPoint {
        /// Which point.
        what: String,
    },
    /// A valid point with another byte encoding than the canonical one.
    #[error("{what}: point encoding is not canonical")]
    NonCanonicalPoint {
        /// Which point.
        what: String,
    },
    /// A field element at or above the modulus, or otherwise not canonical.
    #[error("{what}: field element is not canonical (must be below the BN254 scalar modulus)")]
    NonCanonicalField {
        /// Which element.
        what: String,
    },
    /// The file does not start with the key magic.
    #[error("not a gridproof key file (magic bytes {found:02x?})")]
    BadMagic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// A format version this build does not read.
    #[error("key file format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// A header field with an invalid value.
    #[error("key file header field `{field}` has invalid value {value}")]
    BadHeader {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A key or proof for another circuit than expected.
    #[error("wrong circuit: expected {expected}, got {found}")]
    WrongCircuit {
        /// What the caller expected.
        expected: String,
        /// What the file or key is for.
        found: String,
    },
    /// The body does not hash to the header's SHA-256.
    #[error("key file SHA-256 mismatch: header says {expected}, header fields and body hash to {found}")]
    HashMismatch {
        /// Hex digest in the header.
        expected: String,
        /// Hex digest of the body.
        found: String,
    },
    /// Malformed snarkjs JSON.
    #[error("snarkjs JSON {what}: {reason}")]
    Json {
        /// Which document or field.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why a proof could not be made.
#[derive(Debug, Error)]
pub enum ProveError {
    /// The witness is not a valid update (the native checker rejected it).
    #[error(transparent)]
    Statement(#[from] StatementError),
    /// The proving key is for another circuit.
    #[error("proving key is for {key:?}, the witness for {witness:?}")]
    WrongCircuit {
        /// The key's shape.
        key: Shape,
        /// The witness's shape.
        witness: Shape,
    },
    /// The witness synthesized to another number of variables than the key's circuit
    /// (a circuit/key version mismatch: the proof could not verify).
    #[error("the assignment has {assignment} variables, the circuit's matrices {matrices}")]
    Assignment {
        /// Instance + witness variables in the key's matrices.
        matrices: usize,
        /// Instance + witness variables the witness produced.
        assignment: usize,
    },
    /// The key's H query fits neither QAP reduction of the circuit's domain.
    #[error("the proving key's H query has {len} points; the circuit's domain of {domain} takes {} (arkworks) or {domain} (snarkjs)", domain - 1)]
    HQuery {
        /// Points in the key.
        len: usize,
        /// The evaluation domain's size.
        domain: usize,
    },
    /// arkworks failed to synthesise or prove.
    #[error("proving failed: {0}")]
    Synthesis(#[from] ark_relations::r1cs::SynthesisError),
}

/// Why a proof was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The pairing check failed: the proof is not valid for these public inputs.
    #[error("proof does not verify against the public inputs")]
    Invalid,
    /// The number of public inputs does not match the verifying key.
    #[error("expected {expected} public inputs, got {got}")]
    InputCount {
        /// What the key takes.
        expected: usize,
        /// What was given.
        got: usize,
    },
}
