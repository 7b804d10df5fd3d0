//! The agent's state file: JSON, written atomically (temporary file, fsync, rename), so a
//! crash leaves the old state or the new one, never a torn file; and the checkpoint a gateway
//! started from, if it did.

use std::io::Write;
use std::path::Path;

use crate::agent::AgentState;
use crate::config::ConfigError;

/// Loads the state, or the empty state if the file does not exist yet.
pub fn load(path: &Path) -> Result<AgentState, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ConfigError::invalid(path, format!("state file: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
        Err(source) => Err(ConfigError::io(path)(source)),
    }
}

/// Saves the state atomically.
pub fn save(path: &Path, state: &AgentState) -> Result<(), ConfigError> {
    let io = ConfigError::io(path);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&serde_json::to_vec_pretty(state).expect("state serializes")).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Where the checkpoint a gateway started from is kept: next to the state file, with the
/// extension `checkpoint` (the canonical encoding of the checkpoint entry and its snapshot).
pub fn checkpoint_path(state_file: &Path) -> std::path::PathBuf {
    state_file.with_extension("checkpoint")
}

/// Loads the saved checkpoint (entry and encoded snapshot), if any. It is checked again
/// against the checkpoint before use, like a fetched one.
pub fn load_checkpoint(path: &Path) -> Result<Option<(protocol::entry::Certified, Vec<u8>)>, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let max = protocol::snapshot::MAX_SNAPSHOT_REPLY;
            protocol::codec::decode("saved checkpoint", &bytes, max).map(Some).map_err(|e| ConfigError::invalid(path, format!("saved checkpoint: {e}")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::io(path)(source)),
    }
}

/// Saves the checkpoint entry and its encoded snapshot atomically.
pub fn save_checkpoint(path: &Path, entry: &protocol::entry::Certified, state: &[u8]) -> Result<(), ConfigError> {
    let io = ConfigError::io(path);
    let tmp = path.with_extension("checkpoint.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&protocol::codec::encode(&(entry.clone(), state.to_vec()))).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
