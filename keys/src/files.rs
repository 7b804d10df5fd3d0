//! Transcript files: `GRIDPTAU` (phase 1), `GRIDPREP` (a final phase-1 transcript followed by
//! the Lagrange bases of some domains, [`crate::lagrange`]) and `GRIDPH2\0` (phase 2), each a magic, a u16
//! format version and the transcript compressed (arkworks canonical encoding, validated on
//! read: points on the curve and in the subgroup, canonical field elements). Written to a
//! temporary file, synced, then renamed, so a crash never leaves half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use ark_serialize::{CanonicalDeserialize, CanonicalSerialize, Compress, Validate};
use thiserror::Error;

use crate::lagrange::{LagrangeBases, LagrangeError, Prepared};
use crate::phase1::Phase1;
use crate::phase2::Phase2;

/// Phase-1 file magic.
pub const PTAU_MAGIC: [u8; 8] = *b"GRIDPTAU";
/// Prepared phase-1 file magic.
pub const PREPARED_MAGIC: [u8; 8] = *b"GRIDPREP";
/// Phase-2 file magic.
pub const PHASE2_MAGIC: [u8; 8] = *b"GRIDPH2\0";
/// File format version.
pub const FORMAT_VERSION: u16 = 1;

/// A transcript file that could not be read or written.
#[derive(Debug, Error)]
pub enum FileError {
    /// The OS refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not this kind of file.
    #[error("{path}: not a {expected} file")]
    Magic {
        /// The file.
        path: PathBuf,
        /// What was expected.
        expected: &'static str,
    },
    /// Another format version.
    #[error("{path}: format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u16,
    },
    /// Prepared Lagrange bases that are not the transcript's powers in the Lagrange basis.
    #[error("{path}: {source}")]
    Lagrange {
        /// The file.
        path: PathBuf,
        /// What the check found.
        #[source]
        source: LagrangeError,
    },
    /// Truncated, invalid points, trailing bytes...
    #[error("{path}: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let io = |source| FileError::Io { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

fn encode<T: CanonicalSerialize>(magic: &[u8; 8], v: &T) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    v.serialize_compressed(&mut out).expect("writing to a Vec cannot fail");
    out
}

fn decode<T: CanonicalDeserialize>(path: &Path, bytes: &[u8], magic: &[u8; 8], expected: &'static str) -> Result<T, FileError> {
    if bytes.len() < 10 || &bytes[..8] != magic {
        return Err(FileError::Magic { path: path.to_path_buf(), expected });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(FileError::Version { path: path.to_path_buf(), found: version });
    }
    let mut reader = &bytes[10..];
    let v = T::deserialize_with_mode(&mut reader, Compress::Yes, Validate::Yes)
        .map_err(|e| FileError::Decode { path: path.to_path_buf(), reason: format!("{e} (truncated or corrupt)") })?;
    if !reader.is_empty() {
        return Err(FileError::Decode { path: path.to_path_buf(), reason: format!("{} trailing bytes", reader.len()) });
    }
    Ok(v)
}

fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|source| FileError::Io { path: path.to_path_buf(), source })
}

/// The bytes of a phase-1 file.
pub fn phase1_bytes(p: &Phase1) -> Vec<u8> {
    encode(&PTAU_MAGIC, p)
}

/// Parses phase-1 file bytes (`path` names it in errors).
pub fn phase1_from_bytes(path: &Path, bytes: &[u8]) -> Result<Phase1, FileError> {
    decode(path, bytes, &PTAU_MAGIC, "gridproof powers-of-tau (GRIDPTAU)")
}

/// Saves a phase-1 transcript.
pub fn save_phase1(path: &Path, p: &Phase1) -> Result<(), FileError> {
    write_atomic(path, &phase1_bytes(p))
}

/// Loads a phase-1 transcript.
pub fn load_phase1(path: &Path) -> Result<Phase1, FileError> {
    phase1_from_bytes(path, &read(path)?)
}

/// A prepared file's content as written: the transcript, then the bases.
#[derive(CanonicalSerialize, CanonicalDeserialize)]
struct PreparedFile {
    phase1: Phase1,
    lagrange: Vec<LagrangeBases>,
}

/// The bytes of a prepared phase-1 file.
pub fn prepared_bytes(p: &Prepared) -> Vec<u8> {
    // Cloning the points costs less than a second format definition over borrowed parts.
    encode(&PREPARED_MAGIC, &PreparedFile { phase1: p.phase1().clone(), lagrange: p.sets().cloned().collect() })
}

/// Saves a prepared phase-1 transcript.
pub fn save_prepared(path: &Path, p: &Prepared) -> Result<(), FileError> {
    write_atomic(path, &prepared_bytes(p))
}

/// Parses either phase-1 file (a `GRIDPREP` file's bases are checked against its powers; a
/// `GRIDPTAU` file gives a transcript without prepared bases).
pub fn any_phase1_from_bytes(path: &Path, bytes: &[u8]) -> Result<Prepared, FileError> {
    if bytes.starts_with(&PTAU_MAGIC) {
        return phase1_from_bytes(path, bytes).map(Prepared::unprepared);
    }
    let f: PreparedFile = decode(path, bytes, &PREPARED_MAGIC, "gridproof powers-of-tau (GRIDPTAU or GRIDPREP)")?;
    Prepared::from_parts(f.phase1, f.lagrange).map_err(|source| FileError::Lagrange { path: path.to_path_buf(), source })
}

/// Loads either phase-1 file ([`any_phase1_from_bytes`]).
pub fn load_any_phase1(path: &Path) -> Result<Prepared, FileError> {
    any_phase1_from_bytes(path, &read(path)?)
}

/// The bytes of a phase-2 file.
pub fn phase2_bytes(p: &Phase2) -> Vec<u8> {
    encode(&PHASE2_MAGIC, p)
}

/// Parses phase-2 file bytes.
pub fn phase2_from_bytes(path: &Path, bytes: &[u8]) -> Result<Phase2, FileError> {
    decode(path, bytes, &PHASE2_MAGIC, "gridproof phase-2 (GRIDPH2)")
}

/// Saves a phase-2 transcript.
pub fn save_phase2(path: &Path, p: &Phase2) -> Result<(), FileError> {
    write_atomic(path, &phase2_bytes(p))
}

/// Loads a phase-2 transcript.
pub fn load_phase2(path: &Path) -> Result<Phase2, FileError> {
    phase2_from_bytes(path, &read(path)?)
}
