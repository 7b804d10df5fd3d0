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
use protocol::membership::{AttestationRequest, Nameplate, SignedAttestation};
use prover::UpdateProvingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::actuation::{HomeAssistantFile, OutputFile};
use crate::mqtt::MqttFile;

pub use protocol::files::{read_key, ConfigError};

fn invalid(path: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(path, reason)
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
    /// How the gateway switches it over MQTT (none: scheduled, not switched).
    #[serde(default)]
    pub output: Option<OutputFile>,
    /// The rated limits on its nameplate, for the attestation request (none: the smallest
    /// nameplate the spec fits, for the installer to check).
    #[serde(default)]
    pub nameplate: Option<NameplateFile>,
}

/// `[appliances.nameplate]`: rated limits in kW and kWh.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameplateFile {
    /// Rated import (charging, heating, load), kW.
    #[serde(default)]
    pub max_import_kw: f64,
    /// Rated export (discharging, PV peak), kW.
    #[serde(default)]
    pub max_export_kw: f64,
    /// Storage capacity, kWh.
    #[serde(default)]
    pub capacity_kwh: f64,
}

impl NameplateFile {
    /// In W and Wh (rounded to the nearest), if every value is finite, ≥ 0 and fits.
    pub fn to_nameplate(&self) -> Result<Nameplate, String> {
        let w = |field: &str, v: f64| {
            let x = (v * 1000.0).round();
            if v.is_finite() && (0.0..=u32::MAX as f64).contains(&x) {
                Ok(x as u32)
            } else {
                Err(format!("nameplate.{field} = {v}: must be a finite number ≥ 0"))
            }
        };
        Ok(Nameplate { max_import_w: w("max_import_kw", self.max_import_kw)?, max_export_w: w("max_export_kw", self.max_export_kw)?, capacity_wh: w("capacity_kwh", self.capacity_kwh)? })
    }
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
    /// The home's MQTT broker; without it `run` stops at the final schedule.
    #[serde(default)]
    pub mqtt: Option<MqttFile>,
    /// Home Assistant discovery (needs `mqtt`).
    #[serde(default)]
    pub home_assistant: Option<HomeAssistantFile>,
    /// The meter point the home sits behind (from the grid operator), for attestation
    /// requests.
    #[serde(default)]
    pub meter_point: Option<String>,
    /// The enrollment authority's attestations of the appliances (the JSON `verifier-node
    /// attest` writes), relative to this file. An appliance without one is not enrolled.
    #[serde(default = "default_attestations_file")]
    pub attestations_file: PathBuf,
    /// The appliances.
    pub appliances: Vec<ApplianceFile>,
}

fn default_attestations_file() -> PathBuf {
    "attestations.json".into()
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
    /// How it is switched, if at all.
    pub output: Option<OutputFile>,
    /// The nameplate it asks to be attested with.
    pub nameplate: Nameplate,
    /// Its attestation, once the authority signed one (checked against the market and the
    /// parameters at load).
    pub attestation: Option<SignedAttestation>,
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

/// An appliance given in code rather than in `gateway.toml` (simulations, the demo).
#[derive(Debug, Clone)]
pub struct Virtual {
    /// Its name (letters, digits, `_`, `-`).
    pub name: String,
    /// θ.
    pub params: ModelParams,
    /// Its private costs.
    pub costs: Costs,
    /// How it is switched.
    pub output: Option<OutputFile>,
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
    /// The gateway's public key.
    pub id: [u8; 32],
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
    let text = std::fs::read_to_string(path).map_err(ConfigError::io(path))?;
    let mut file: GatewayFile = toml::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let password = file.mqtt.as_mut().and_then(|m| m.password_file.as_mut());
    for p in [&mut file.key_file, &mut file.state_file, &mut file.genesis_file, &mut file.keys_dir, &mut file.attestations_file].into_iter().chain(password) {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(file)
}

/// Writes a new gateway secret (mode 0600); refuses to overwrite one.
pub fn create_key(path: &Path) -> Result<SigningKey, ConfigError> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    protocol::files::write_key(path, &key, true)?;
    Ok(key)
}

impl Gateway {
    /// Loads the file, the key, the genesis, and checks every appliance against the market.
    pub fn load(path: &Path) -> Result<Gateway, ConfigError> {
        let (file, secret, genesis, validator_keys) = load_market(path)?;
        let g = genesis_body(&genesis);
        let mut appliances = appliances(path, &file, g, &secret)?;
        attach_attestations(&file.attestations_file, &genesis, &mut appliances)?;
        Ok(Gateway { file, genesis, appliances, validator_keys, id: secret.verifying_key().to_bytes() })
    }

    /// A gateway of `n` virtual appliances (`sim-0000`, ...) drawn from the seeded household
    /// mix of [`protocol::scenario`] for this market, with the file's key, validators and
    /// proving keys; the file's own appliances, broker and outputs are ignored.
    pub fn simulated(path: &Path, n: usize, seed: u64) -> Result<Gateway, ConfigError> {
        if n == 0 {
            return Err(invalid(path, "simulate: --appliances must be at least 1"));
        }
        let (_, _, genesis, _) = load_market(path)?;
        let g = genesis_body(&genesis);
        let slots = Slots::new(g.market.slots as usize).map_err(|e| invalid(path, format!("market T: {e}")))?;
        let scenario = protocol::scenario::Scenario::generate(seed, n, slots, g.market.slot_seconds, protocol::scenario::Mix::Household);
        let devices = scenario
            .devices
            .into_iter()
            .enumerate()
            .map(|(i, d)| Virtual { name: format!("sim-{i:04}"), params: d.params, costs: d.costs, output: None })
            .collect();
        let mut gw = Gateway::with_appliances(path, devices)?;
        gw.file.mqtt = None;
        gw.file.home_assistant = None;
        Ok(gw)
    }

    /// A gateway of the given virtual appliances, with the file's key, validators, broker and
    /// proving keys (the file's own appliances are ignored). Keys and salts derive from the
    /// gateway secret and each name, as for configured appliances.
    pub fn with_appliances(path: &Path, devices: Vec<Virtual>) -> Result<Gateway, ConfigError> {
        let (mut file, secret, genesis, validator_keys) = load_market(path)?;
        let slot_seconds = genesis_body(&genesis).market.slot_seconds;
        let mut names = std::collections::BTreeSet::new();
        let mut appliances = Vec::new();
        for d in devices {
            if !names.insert(d.name.clone()) || !is_name(&d.name) {
                return Err(invalid(path, format!("virtual appliance {:?}: duplicate or not a valid name", d.name)));
            }
            if d.output.is_some() && file.mqtt.is_none() {
                return Err(invalid(path, format!("virtual appliance {}: an output needs an [mqtt] broker", d.name)));
            }
            appliances.push(Appliance { output: d.output, ..Appliance::derive(&secret, &d.name, d.params, d.costs, slot_seconds) });
        }
        attach_attestations(&file.attestations_file, &genesis, &mut appliances)?;
        file.appliances.clear();
        Ok(Gateway { file, genesis, appliances, validator_keys, id: secret.verifying_key().to_bytes() })
    }

    /// Attests every appliance with `authority`'s key (the nameplate its parameters need, valid
    /// for the market): for a development cluster whose authority key is at hand (`device
    /// simulate --authority-key`, the demo). Refused if the key is not an authority of the genesis.
    pub fn self_attest(&mut self, authority: &SigningKey) -> Result<(), ConfigError> {
        let g = self.market().clone();
        let me = protocol::membership::AuthorityId(authority.verifying_key().to_bytes());
        if !g.enrollment_authorities.contains(&me) {
            return Err(invalid(&self.file.genesis_file, format!("key {} is not an enrollment authority of this genesis", protocol::ids::hex(&me.0))));
        }
        let meter = self.file.meter_point.clone().unwrap_or_else(|| format!("gateway-{}", &protocol::ids::hex(&self.id)[..12]));
        let span = protocol::membership::market_span(&g.market);
        for a in &mut self.appliances {
            a.attestation = Some(protocol::membership::attest(authority, &self.genesis.chain_id, a.id(), &a.opening.params, g.market.slot_seconds, &meter, span));
        }
        Ok(())
    }

    /// The genesis body.
    pub fn market(&self) -> &Genesis {
        genesis_body(&self.genesis)
    }

    /// The MQTT client id: configured, or `gridproof-` and the start of the gateway key.
    pub fn client_id(&self) -> String {
        self.file.mqtt.as_ref().and_then(|m| m.client_id.clone()).unwrap_or_else(|| format!("gridproof-{}", &protocol::ids::hex(&self.id)[..12]))
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
            let bytes = protocol::files::read(&path)?;
            let pk = UpdateProvingKey::from_bytes(&bytes, Some(shape)).map_err(|e| invalid(&path, e.to_string()))?;
            out.insert(key, pk);
        }
        Ok(out)
    }
}

/// What every gateway shares, checked: the file, the gateway secret, the genesis entry and
/// the validator keys.
type Loaded = (GatewayFile, SigningKey, Entry, Vec<[u8; 32]>);

fn load_market(path: &Path) -> Result<Loaded, ConfigError> {
    let file = read_file(path)?;
    let secret = read_key(&file.key_file)?;
    let genesis = protocol::files::read_genesis(&file.genesis_file)?;
    let g = genesis_body(&genesis);
    let validator_keys: Vec<[u8; 32]> = g.validators.iter().map(|v| v.0).collect();
    if file.validators.is_empty() {
        return Err(invalid(path, "validators: at least one validator address is needed"));
    }
    for v in &file.validators {
        if v.index as usize >= validator_keys.len() {
            return Err(invalid(path, format!("validators: index {} is not in the genesis ({} validators)", v.index, validator_keys.len())));
        }
    }
    Ok((file, secret, genesis, validator_keys))
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
        check_output(a, file).map_err(at)?;
        let mut appliance = Appliance { output: a.output.clone(), ..Appliance::derive(secret, &a.name, params, costs, g.market.slot_seconds) };
        if let Some(n) = &a.nameplate {
            let n = n.to_nameplate().map_err(at)?;
            // Native refusal: the private parameters must fit the public nameplate.
            protocol::membership::within_nameplate(&appliance.opening.params, &n, g.market.slot_seconds).map_err(|e| at(format!("spec beyond the nameplate: {e}")))?;
            appliance.nameplate = n;
        }
        out.push(appliance);
    }
    if out.is_empty() {
        return Err(invalid(path, "appliances: none configured"));
    }
    if file.home_assistant.is_some() && file.mqtt.is_none() {
        return Err(invalid(path, "home_assistant: needs an [mqtt] broker"));
    }
    if let Some(ha) = &file.home_assistant {
        if !is_name(&ha.node_id) {
            return Err(invalid(path, format!("home_assistant.node_id {:?}: use letters, digits, '_' and '-'", ha.node_id)));
        }
        if ha.prefix.is_empty() || !is_topic(&ha.prefix) {
            return Err(invalid(path, format!("home_assistant.prefix {:?}: not a valid MQTT topic prefix", ha.prefix)));
        }
    }
    if let Some(m) = &file.mqtt {
        if m.host.trim().is_empty() {
            return Err(invalid(path, "mqtt.host: empty"));
        }
        if m.username.is_none() && m.password_file.is_some() {
            return Err(invalid(path, "mqtt.password_file: given without mqtt.username"));
        }
    }
    Ok(out)
}

/// Names that are safe in MQTT topics and Home Assistant entity ids.
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A topic one may publish to: non-empty, no wildcards, no NUL.
fn is_topic(s: &str) -> bool {
    !s.is_empty() && s.len() <= 1024 && !s.contains(['+', '#', '\0'])
}

/// An output must be reachable (a broker configured), address a valid topic, and be able to
/// do what the schedule asks: a relay cannot discharge or produce, and must be rated for the
/// appliance's largest power.
fn check_output(a: &ApplianceFile, file: &GatewayFile) -> Result<(), String> {
    if !is_name(&a.name) {
        return Err(format!("name {:?}: use letters, digits, '_' and '-' (it appears in MQTT topics)", a.name));
    }
    let Some(output) = &a.output else { return Ok(()) };
    if file.mqtt.is_none() {
        return Err("output: needs an [mqtt] broker".into());
    }
    let topic = output.topic();
    if !is_topic(&topic) {
        return Err(format!("output: {topic:?} is not a topic one can publish to"));
    }
    let Some(rated) = output.rated_w() else { return Ok(()) };
    if rated == 0 {
        return Err("output.rated_w: must be > 0".into());
    }
    let max_kw = match &a.spec {
        ApplianceSpec::Deferrable { max_power_kw, .. } | ApplianceSpec::Thermal { max_power_kw, .. } => *max_power_kw,
        ApplianceSpec::Battery { .. } | ApplianceSpec::Producer { .. } => {
            return Err("output: an on/off relay cannot discharge or produce; use adapter = \"setpoint\"".into())
        }
    };
    if max_kw * 1000.0 > rated as f64 + 0.5 {
        return Err(format!("output.rated_w = {rated} W is below spec.max_power_kw = {max_kw} kW: the relay cannot deliver the schedule"));
    }
    Ok(())
}

impl Appliance {
    /// An appliance whose key and salt derive from the gateway secret and its name.
    /// Its nameplate is the smallest one its parameters fit (slots of `slot_seconds`), and it
    /// has no attestation yet.
    pub fn derive(secret: &SigningKey, name: &str, params: ModelParams, costs: Costs, slot_seconds: u32) -> Appliance {
        let secret_bytes = secret.to_bytes();
        let key = SigningKey::from_bytes(&derive("appliance-key", &secret_bytes, name));
        let salt = circuits::field::fr_from_i128(i128::from_le_bytes(derive("appliance-salt", &secret_bytes, name)[..16].try_into().expect("16 bytes")) >> 8);
        let nameplate = protocol::membership::nameplate_of(&params, slot_seconds);
        let opening = Opening { params, cost_digest: costs.digest(), salt };
        Appliance { name: name.to_string(), key, opening, costs, output: None, nameplate, attestation: None }
    }

    /// What the gateway asks the authority to attest for it.
    pub fn attestation_request(&self, meter_point: &str) -> AttestationRequest {
        AttestationRequest { name: self.name.clone(), device: self.id(), kind: self.opening.params.kind().id(), meter_point: meter_point.to_string(), nameplate: self.nameplate }
    }
}

/// The body of a genesis entry that `protocol::files::read_genesis` loaded (it checks that
/// height 0 holds a genesis body).
fn genesis_body(genesis: &Entry) -> &Genesis {
    let Body::Genesis(g) = &genesis.body else { unreachable!("read_genesis checks the body") };
    g
}

/// Reads the attestations file (none yet is fine: `device init` comes first) and gives each
/// appliance the first attestation of its device that passes a validator's check (an
/// authority of this genesis, on this chain, this device and kind, valid for the market).
/// One that does not pass (another chain's, expired, a non-authority's) is skipped with a
/// warning, so a stale file never blocks `init`; an appliance whose parameters exceed the
/// attested nameplate is an error. Attestations of other devices are ignored.
fn attach_attestations(path: &Path, genesis: &Entry, appliances: &mut [Appliance]) -> Result<(), ConfigError> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(ConfigError::io(path))?;
    let list: Vec<SignedAttestation> = serde_json::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
    let g = genesis_body(genesis);
    for a in appliances.iter_mut() {
        let kind = a.opening.params.kind().id();
        let mut valid = None;
        for att in list.iter().filter(|x| x.body.device == a.id()) {
            match protocol::membership::check_attestation(att, &genesis.chain_id, &g.enrollment_authorities, a.id(), kind, &g.market) {
                Ok(()) => {
                    valid = Some(att);
                    break;
                }
                Err(e) => tracing::warn!(appliance = a.name, file = %path.display(), "attestation skipped: {e}"),
            }
        }
        let Some(att) = valid else { continue };
        protocol::membership::within_nameplate(&a.opening.params, &att.body.nameplate, g.market.slot_seconds)
            .map_err(|e| invalid(path, format!("appliance {}: its spec is beyond the attested nameplate: {e}", a.name)))?;
        a.attestation = Some(att.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses_and_its_outputs_fit_their_appliances() {
        let file: GatewayFile = toml::from_str(include_str!("../../examples/gateway.toml")).expect("gateway.example.toml parses");
        assert_eq!(file.validators.len(), 4);
        assert_eq!(file.home_assistant.as_ref().map(|h| h.prefix.as_str()), Some("homeassistant"));
        for a in &file.appliances {
            check_output(a, &file).unwrap_or_else(|e| panic!("{}: {e}", a.name));
        }
        assert_eq!(file.appliances[0].output.as_ref().map(|o| o.topic()), Some("cmnd/ev_charger/POWER".to_string()));
    }

    #[test]
    fn outputs_that_cannot_deliver_the_schedule_are_refused() {
        let mut file: GatewayFile = toml::from_str(include_str!("../../examples/gateway.toml")).unwrap();
        let battery = file.appliances[2].clone();
        let mut relay_battery = battery.clone();
        relay_battery.output = Some(OutputFile::Tasmota { topic: "b".into(), rated_w: 3000 });
        assert!(check_output(&relay_battery, &file).unwrap_err().contains("setpoint"));
        let mut weak = file.appliances[0].clone();
        weak.output = Some(OutputFile::Tasmota { topic: "ev".into(), rated_w: 3000 });
        assert!(check_output(&weak, &file).unwrap_err().contains("rated_w = 3000"));
        let mut wild = file.appliances[0].clone();
        wild.output = Some(OutputFile::Setpoint { topic: "home/+/set".into(), retain: false });
        assert!(check_output(&wild, &file).is_err());
        file.mqtt = None;
        assert!(check_output(&file.appliances[0], &file).unwrap_err().contains("[mqtt]"));
    }
}
