//! The files validators and gateways share (feature `files`): secret key files (64 hex
//! characters, mode 0600), the genesis entry, and the error every configuration loader
//! returns, naming the file and what is wrong with it.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use thiserror::Error;

use crate::entry::{Body, Entry};

/// Largest genesis file accepted.
pub const MAX_GENESIS_BYTES: usize = 1 << 20;

/// A configuration or state file problem, naming the file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file's content is wrong.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
}

impl ConfigError {
    /// `path`'s content is wrong: `reason` names the field.
    pub fn invalid(path: &Path, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: path.to_path_buf(), reason: reason.into() }
    }

    /// Maps an IO error on `path` (for `map_err`).
    pub fn io(path: &Path) -> impl Fn(std::io::Error) -> ConfigError + Copy + '_ {
        move |source| ConfigError::Io { path: path.to_path_buf(), source }
    }
}

/// Reads a whole file.
pub fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(ConfigError::io(path))
}

/// Reads a secret key file: 64 hex characters (a 32-byte ed25519 secret), surrounding
/// whitespace allowed.
pub fn read_key(path: &Path) -> Result<SigningKey, ConfigError> {
    let text = String::from_utf8(read(path)?).map_err(|_| ConfigError::invalid(path, "the key file is not text"))?;
    let b = crate::ids::parse_hex32(&text).ok_or_else(|| ConfigError::invalid(path, "the key file must hold 64 hex characters (a 32-byte ed25519 secret)"))?;
    Ok(SigningKey::from_bytes(&b))
}

/// Writes `key` as hex, readable by the owner only (0600); with `create_new`, an existing
/// file is an error instead of being replaced.
pub fn write_key(path: &Path, key: &SigningKey, create_new: bool) -> Result<(), ConfigError> {
    write_private(path, crate::ids::hex(&key.to_bytes()).as_bytes(), create_new)
}

/// Writes a file readable by the owner only (0600 on Unix); with `create_new`, an existing
/// file is an error instead of being truncated.
pub fn write_private(path: &Path, bytes: &[u8], create_new: bool) -> Result<(), ConfigError> {
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(ConfigError::io(path))?;
    f.write_all(bytes).map_err(ConfigError::io(path))
}

/// Reads a genesis entry file (canonical encoding, height 0, a genesis body).
pub fn read_genesis(path: &Path) -> Result<Entry, ConfigError> {
    let bytes = read(path)?;
    let entry: Entry = crate::codec::decode("genesis", &bytes, MAX_GENESIS_BYTES).map_err(|e| ConfigError::invalid(path, e.to_string()))?;
    if !matches!(entry.body, Body::Genesis(_)) || entry.height != 0 {
        return Err(ConfigError::invalid(path, "not a genesis entry (height 0)"));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_privately_and_bad_files_name_themselves() {
        let dir = std::env::temp_dir().join(format!("protocol-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.key");
        let key = SigningKey::from_bytes(&[7; 32]);
        write_key(&path, &key, true).unwrap();
        assert_eq!(read_key(&path).unwrap().to_bytes(), key.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(write_key(&path, &key, true), Err(ConfigError::Io { .. })), "create_new refuses to replace a key");
        write_key(&path, &SigningKey::from_bytes(&[8; 32]), false).unwrap();
        assert_eq!(read_key(&path).unwrap().to_bytes(), [8; 32]);

        std::fs::write(&path, "not hex").unwrap();
        let e = read_key(&path).unwrap_err().to_string();
        assert!(e.starts_with(&path.display().to_string()) && e.contains("64 hex characters"), "{e}");
        let e = read_genesis(&path).unwrap_err().to_string();
        assert!(e.starts_with(&path.display().to_string()), "{e}");
        assert!(matches!(read_genesis(&dir.join("missing")), Err(ConfigError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
