//! A validator's files: `node.toml` (who it is, where it listens, its peers), its secret key,
//! the genesis entry, and the verifying keys the genesis accepts. Every error names the file
//! and field at fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use protocol::entry::{Body, Entry, KeyHash};
use prover::{UpdateVerifyingKey, VerifierKeys};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use protocol::files::read;
pub use protocol::files::{read_genesis, read_key, ConfigError};
use protocol::snapshot::Checkpoint;

fn invalid(path: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(path, reason)
}

/// One peer validator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    /// Its index in the genesis validator set (its key comes from the genesis).
    pub index: u16,
    /// Its QUIC address.
    pub addr: SocketAddr,
}

/// `node.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// This validator's index in the genesis set.
    pub index: u16,
    /// The secret key file (64 hex characters), relative to this file.
    pub key_file: PathBuf,
    /// The genesis entry (canonical encoding), relative to this file.
    pub genesis_file: PathBuf,
    /// Directory of verifying-key files (`*.vk`), relative to this file.
    pub keys_dir: PathBuf,
    /// RocksDB directory, relative to this file.
    pub db: PathBuf,
    /// QUIC listen address (validators and devices).
    pub listen: SocketAddr,
    /// HTTP listen address (status, entries, metrics).
    pub http: SocketAddr,
    /// The other validators.
    pub peers: Vec<PeerFile>,
    /// How long after a market's execution ends its update bodies (proofs and schedules) are
    /// kept, in seconds; then they are pruned, its entries and certificates kept. Absent: kept
    /// forever. `verifier-node init` writes [`DEFAULT_RETENTION_S`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_s: Option<u64>,
    /// Every how many heights the snapshot of the chain state is stored, for validators and
    /// gateways that start from a checkpoint there (0: never). Absent:
    /// `consensus::DEFAULT_SNAPSHOT_INTERVAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_interval: Option<u64>,
    /// A trusted checkpoint, `<height>:<entry hash>`, to start an empty database from instead
    /// of the genesis (`GET /checkpoint` on a validator you trust prints one). Ignored once
    /// the database holds entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// The retention `verifier-node init` writes: 30 days.
pub const DEFAULT_RETENTION_S: u64 = 30 * 86_400;

/// A loaded, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The parsed file, paths resolved.
    pub file: NodeFile,
    /// The secret key.
    pub key: SigningKey,
    /// The genesis entry.
    pub genesis: Entry,
    /// The accepted verifying keys.
    pub keys: VerifierKeys,
    /// The checkpoint to start an empty database from (`NodeFile::checkpoint`, parsed).
    pub checkpoint: Option<Checkpoint>,
}

/// Writes a secret key as hex, readable by the owner only (replacing the file).
pub fn write_key(path: &Path, key: &SigningKey) -> Result<(), ConfigError> {
    protocol::files::write_key(path, key, false)
}

/// The hash a genesis lists for a verifying-key file.
pub fn key_hash(vk: &UpdateVerifyingKey, bytes: &[u8]) -> KeyHash {
    KeyHash { kind: vk.shape().kind.id(), slots: vk.shape().slots.get() as u16, sha256: Sha256::digest(bytes).into() }
}

/// Loads the `*.vk` files in `dir` that the genesis lists; refuses a listed key that is
/// missing and ignores unlisted files.
pub fn read_verifying_keys(dir: &Path, accepted: &[KeyHash]) -> Result<VerifierKeys, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(ConfigError::io(dir))?;
    let mut found = BTreeMap::new();
    for e in entries {
        let path = e.map_err(ConfigError::io(dir))?.path();
        if path.extension().and_then(|x| x.to_str()) != Some("vk") {
            continue;
        }
        let bytes = read(&path)?;
        let vk = UpdateVerifyingKey::from_bytes(&bytes, None).map_err(|e| invalid(&path, e.to_string()))?;
        let h = key_hash(&vk, &bytes);
        if accepted.contains(&h) {
            found.insert((h.kind, h.slots), vk);
        }
    }
    let mut keys = VerifierKeys::new();
    for h in accepted {
        let vk = found
            .remove(&(h.kind, h.slots))
            .ok_or_else(|| invalid(dir, format!("no verifying key file for model id {} with T = {} matching the genesis hash", h.kind, h.slots)))?;
        keys.insert(vk);
    }
    Ok(keys)
}

impl Config {
    /// Loads `node.toml` and everything it names, checking that this node's key is the
    /// genesis key at its index and that every peer index exists.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = String::from_utf8(read(path)?).map_err(|_| invalid(path, "not UTF-8"))?;
        let mut file: NodeFile = toml::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut file.key_file, &mut file.genesis_file, &mut file.keys_dir, &mut file.db] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let key = read_key(&file.key_file)?;
        let genesis = read_genesis(&file.genesis_file)?;
        let Body::Genesis(g) = &genesis.body else { unreachable!("read_genesis checked") };
        let mine = g
            .validators
            .get(file.index as usize)
            .ok_or_else(|| invalid(path, format!("index = {}: the genesis has {} validators", file.index, g.validators.len())))?;
        if mine.0 != key.verifying_key().to_bytes() {
            return Err(invalid(path, format!("key_file: this key is not validator {}'s key in the genesis", file.index)));
        }
        for p in &file.peers {
            if p.index as usize >= g.validators.len() || p.index == file.index {
                return Err(invalid(path, format!("peers: index {} is not another genesis validator", p.index)));
            }
        }
        let keys = read_verifying_keys(&file.keys_dir, &g.verifying_keys)?;
        let checkpoint = file.checkpoint.as_deref().map(str::parse::<Checkpoint>).transpose().map_err(|e| invalid(path, format!("checkpoint: {e}")))?;
        Ok(Config { file, key, genesis, keys, checkpoint })
    }
}
