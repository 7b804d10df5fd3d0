//! The agent's state file: JSON, written atomically (temporary file, fsync, rename), so a
//! crash leaves the old state or the new one, never a torn file.

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
