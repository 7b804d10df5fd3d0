//! `gateway.toml`: the gateway's secret key file, the market (genesis), the validators'
//! addresses, the proving keys, and each appliance's private parameters and costs. Every error
//! names the file and the field.
//!
//! Appliance identities and blinding salts are derived from the gateway secret and the
//! appliance name (SHA-256 with domain tags), so the only secret on disk is the gateway key
//! (mode 0600).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use circuits::fixed::Fixed;
use circuits::spec::ApplianceSpec;
use circuits::{commitment, Fr, ModelParams, Opening, Shape, Slots};
use ed25519_dalek::SigningKey;
use protocol::entry::{Body, Entry, Genesis};
use protocol::ids::DeviceId;
use protocol::local::Costs;
use prover::UpdateProvingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// A configuration problem.
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

fn invalid(path: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { path: path.to_path_buf(), reason: reason.into() }
}

/// A validator the gateway talks to (its key comes from the genesis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorAddr {
    /// Index in the genesis validator set.
    pub index: u16,
    /// QUIC address.
    pub addr: SocketAddr,
}

/// Private costs in €/MWh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CostFile {
    /// Per-slot linear cost c_t (T entries, or empty).
    #[serde(default)]
    pub linear_eur_mwh: Vec<f64>,
    /// Quadratic cost q (€/MWh per W).
    #[serde(default)]
    pub quadratic: f64,
}

/// One appliance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceFile {
    /// A name unique on this gateway (it seeds the appliance's key and salt).
    pub name: String,
    /// Private parameters (`model = "deferrable" | "battery" | "producer" | "thermal"`).
    pub spec: ApplianceSpec,
    /// Private costs.
    #[serde(default)]
    pub costs: CostFile,
}

/// `gateway.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// The gateway secret key (64 hex characters, mode 0600), relative to this file.
    pub key_file: PathBuf,
    /// Where the agent keeps its state (submissions, final schedule), relative to this file.
    pub state_file: PathBuf,
    /// The market's genesis entry, relative to this file.
    pub genesis_file: PathBuf,
    /// Directory of proving keys (`<model>-<T>.pk`), relative to this file.
    pub keys_dir: PathBuf,
    /// The validators.
    pub validators: Vec<ValidatorAddr>,
    /// The appliances.
    pub appliances: Vec<ApplianceFile>,
}

/// An appliance ready to take part: identity, committed opening, costs.
#[derive(Debug, Clone)]
pub struct Appliance {
    /// Its name.
    pub name: String,
    /// Its signing key (derived).
    pub key: SigningKey,
    /// θ, cost digest and salt.
    pub opening: Opening,
    /// Private costs.
    pub costs: Costs,
}

impl Appliance {
    /// Its device id.
    pub fn id(&self) -> DeviceId {
        DeviceId(self.key.verifying_key().to_bytes())
    }

    /// Its circuit shape.
    pub fn shape(&self) -> Shape {
        Shape { kind: self.opening.params.kind(), slots: self.opening.params.slots() }
    }

    /// Its commitment C.
    pub fn commitment(&self) -> Fr {
        commitment(&self.opening)
    }
}

/// A loaded gateway.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// The parsed file, paths resolved.
    pub file: GatewayFile,
    /// The genesis entry.
    pub genesis: Entry,
    /// The appliances.
    pub appliances: Vec<Appliance>,
    /// Validator keys from the genesis, by index.
    pub validator_keys: Vec<[u8; 32]>,
}

fn derive(tag: &str, secret: &[u8; 32], name: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"gridproof/v1/");
    h.update(tag.as_bytes());
    h.update(secret);
    h.update(name.as_bytes());
    h.finalize().into()
}

/// Reads `gateway.toml` (without the secret key).
pub fn read_file(path: &Path) -> Result<GatewayFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
    let mut file: GatewayFile = toml::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut file.key_file, &mut file.state_file, &mut file.genesis_file, &mut file.keys_dir] {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(file)
}

/// Reads the gateway secret.
pub fn read_key(path: &Path) -> Result<SigningKey, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
    let b = protocol::ids::parse_hex32(&text).ok_or_else(|| invalid(path, "the key file must hold 64 hex characters"))?;
    Ok(SigningKey::from_bytes(&b))
}

/// Writes a new gateway secret (mode 0600); refuses to overwrite one.
pub fn create_key(path: &Path) -> Result<SigningKey, ConfigError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let hex = protocol::ids::hex(&key.to_bytes());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
    f.write_all(hex.as_bytes()).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
    Ok(key)
}

impl Gateway {
    /// Loads the file, the key, the genesis, and checks every appliance against the market.
    pub fn load(path: &Path) -> Result<Gateway, ConfigError> {
        let file = read_file(path)?;
        let secret = read_key(&file.key_file)?;
        let bytes = std::fs::read(&file.genesis_file).map_err(|source| ConfigError::Io { path: file.genesis_file.clone(), source })?;
        let genesis: Entry = protocol::codec::decode("genesis", &bytes, 1 << 20).map_err(|e| invalid(&file.genesis_file, e.to_string()))?;
        let Body::Genesis(g) = &genesis.body else { return Err(invalid(&file.genesis_file, "not a genesis entry")) };
        let validator_keys: Vec<[u8; 32]> = g.validators.iter().map(|v| v.0).collect();
        if file.validators.is_empty() {
            return Err(invalid(path, "validators: at least one validator address is needed"));
        }
        for v in &file.validators {
            if v.index as usize >= validator_keys.len() {
                return Err(invalid(path, format!("validators: index {} is not in the genesis ({} validators)", v.index, validator_keys.len())));
            }
        }
        let appliances = appliances(path, &file, g, &secret)?;
        Ok(Gateway { file, genesis, appliances, validator_keys })
    }

    /// The genesis body.
    pub fn market(&self) -> &Genesis {
        let Body::Genesis(g) = &self.genesis.body else { unreachable!("checked at load") };
        g
    }

    /// Loads the proving keys the appliances need from `keys_dir`.
    pub fn proving_keys(&self) -> Result<BTreeMap<(u8, usize), UpdateProvingKey>, ConfigError> {
        let mut out = BTreeMap::new();
        for a in &self.appliances {
            let shape = a.shape();
            let key = (shape.kind.id(), shape.slots.get());
            if out.contains_key(&key) {
                continue;
            }
            let path = self.file.keys_dir.join(format!("{}-{}.pk", shape.kind, shape.slots.get()));
            let bytes = std::fs::read(&path).map_err(|source| ConfigError::Io { path: path.clone(), source })?;
            let pk = UpdateProvingKey::from_bytes(&bytes, Some(shape)).map_err(|e| invalid(&path, e.to_string()))?;
            out.insert(key, pk);
        }
        Ok(out)
    }
}

fn appliances(path: &Path, file: &GatewayFile, g: &Genesis, secret: &SigningKey) -> Result<Vec<Appliance>, ConfigError> {
    let slots = Slots::new(g.market.slots as usize).map_err(|e| invalid(path, format!("market T: {e}")))?;
    let mut names = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (i, a) in file.appliances.iter().enumerate() {
        let at = |what: String| invalid(path, format!("appliances[{i}] ({}): {what}", a.name));
        if !names.insert(a.name.clone()) {
            return Err(at("duplicate name".into()));
        }
        let params: ModelParams = a.spec.to_params(slots, g.market.slot_seconds).map_err(|e| at(e.to_string()))?;
        if !a.costs.linear_eur_mwh.is_empty() && a.costs.linear_eur_mwh.len() != slots.get() {
            return Err(at(format!("costs.linear_eur_mwh has {} entries, the market has T = {}", a.costs.linear_eur_mwh.len(), slots.get())));
        }
        let fixed = |field: &str, v: f64| Fixed::from_f64("cost", v).map_err(|e| at(format!("costs.{field}: {e}")));
        let costs = Costs {
            linear: a.costs.linear_eur_mwh.iter().map(|&c| fixed("linear_eur_mwh", c)).collect::<Result<_, _>>()?,
            quadratic: fixed("quadratic", a.costs.quadratic)?,
        };
        if costs.quadratic.raw() < 0 {
            return Err(at("costs.quadratic must be ≥ 0".into()));
        }
        let secret_bytes = secret.to_bytes();
        let key = SigningKey::from_bytes(&derive("appliance-key", &secret_bytes, &a.name));
        let salt = circuits::field::fr_from_i128(i128::from_le_bytes(derive("appliance-salt", &secret_bytes, &a.name)[..16].try_into().expect("16 bytes")) >> 8);
        let opening = Opening { params, cost_digest: costs.digest(), salt };
        out.push(Appliance { name: a.name.clone(), key, opening, costs });
    }
    if out.is_empty() {
        return Err(invalid(path, "appliances: none configured"));
    }
    Ok(out)
}
