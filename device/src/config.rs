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
use protocol::entry::{Body, Entry, Genesis, MarketSpec};
use protocol::ids::DeviceId;
use protocol::local::Costs;
use protocol::membership::{AttestationRequest, Nameplate, SignedAttestation};
use prover::UpdateProvingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::actuation::OutputFile;
use crate::home_assistant::HomeAssistantFile;
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
    /// The weekly pattern: a weekday's entry replaces `spec` for markets executing on that
    /// day (`"off"`: no bid that day). Days without an entry use `spec`.
    #[serde(default)]
    pub week: WeekFile,
    /// Where its meter readings come from, for markets that settle (none: it sends none, and
    /// validators settle it by the missing-reading default).
    #[serde(default)]
    pub meter: Option<crate::metering::MeterFile>,
}

/// One day's plan for an appliance, in `[appliances.week]` or the overrides file: `"off"`
/// (the appliance does not bid in that market, and withdraws a bid already made while the
/// market's registration is open) or a spec that replaces `spec` (same model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DayFile {
    /// `"off"`.
    Off(OffKeyword),
    /// That day's parameters.
    Spec(ApplianceSpec),
}

/// The keyword `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffKeyword {
    /// No bid.
    #[serde(rename = "off")]
    Off,
}

/// `[appliances.week]`: an entry per weekday, Monday first (the weekday of a market is that of
/// its execution start, in the gateway's `utc_offset_minutes`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeekFile {
    /// Monday.
    #[serde(default)]
    pub mon: Option<DayFile>,
    /// Tuesday.
    #[serde(default)]
    pub tue: Option<DayFile>,
    /// Wednesday.
    #[serde(default)]
    pub wed: Option<DayFile>,
    /// Thursday.
    #[serde(default)]
    pub thu: Option<DayFile>,
    /// Friday.
    #[serde(default)]
    pub fri: Option<DayFile>,
    /// Saturday.
    #[serde(default)]
    pub sat: Option<DayFile>,
    /// Sunday.
    #[serde(default)]
    pub sun: Option<DayFile>,
}

impl WeekFile {
    /// The entry of `weekday` (0 = Monday … 6 = Sunday).
    pub fn day(&self, weekday: usize) -> Option<&DayFile> {
        [&self.mon, &self.tue, &self.wed, &self.thu, &self.fri, &self.sat, &self.sun].get(weekday).and_then(|d| d.as_ref())
    }

    fn days(&self) -> impl Iterator<Item = (&'static str, &DayFile)> {
        let all = [("mon", &self.mon), ("tue", &self.tue), ("wed", &self.wed), ("thu", &self.thu), ("fri", &self.fri), ("sat", &self.sat), ("sun", &self.sun)];
        all.into_iter().filter_map(|(n, d)| d.as_ref().map(|d| (n, d)))
    }
}

/// The day a market is for: the date (`YYYY-MM-DD`) and weekday (0 = Monday) of its execution
/// start at UTC + `utc_offset_minutes`.
pub fn market_day(spec: &MarketSpec, utc_offset_minutes: i32) -> (String, usize) {
    let local_ms = (spec.execution_start_ms as i64).saturating_add(utc_offset_minutes as i64 * 60_000).max(0) as u64;
    let date = crate::actuation::rfc3339(local_ms)[..10].to_string();
    // 1970-01-01 was a Thursday (weekday 3).
    let weekday = ((local_ms / 86_400_000 + 3) % 7) as usize;
    (date, weekday)
}

/// The overrides file (JSON, written by the user or Home Assistant, read again before every
/// bid and while registration is open): per market, each appliance's plan, replacing the
/// weekly pattern. Keys are a date `"YYYY-MM-DD"` (the market's day, see [`market_day`]) or
/// `"market-<id>"`; a market id entry wins over a date entry.
///
/// ```json
/// { "2026-12-02": { "ev": { "model": "deferrable", "max_power_kw": 7.4, "energy_min_kwh": 30, "energy_max_kwh": 40 } },
///   "market-7": { "boiler": "off" } }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    by_market: BTreeMap<u64, BTreeMap<String, DayFile>>,
    by_date: BTreeMap<String, BTreeMap<String, DayFile>>,
}

impl Overrides {
    /// Reads the file; none is no override. Every key must be a date or `market-<id>`, and
    /// every appliance named must be one of `names`.
    pub fn load(path: &Path, names: &[String]) -> Result<Overrides, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overrides::default()),
            Err(e) => return Err(ConfigError::io(path)(e)),
        };
        Overrides::parse(&text, names).map_err(|e| invalid(path, e))
    }

    /// Parses the file's text (see [`Overrides::load`]).
    pub fn parse(text: &str, names: &[String]) -> Result<Overrides, String> {
        let raw: BTreeMap<String, BTreeMap<String, DayFile>> = serde_json::from_str(text).map_err(|e| format!("overrides: {e}"))?;
        let mut out = Overrides::default();
        for (key, plans) in raw {
            if let Some(name) = plans.keys().find(|n| !names.contains(n)) {
                return Err(format!("overrides[{key:?}]: no appliance named {name:?} on this gateway"));
            }
            if let Some(id) = key.strip_prefix("market-") {
                let id: u64 = id.parse().map_err(|_| format!("overrides: key {key:?}: market-<id> needs a number"))?;
                out.by_market.insert(id, plans);
            } else if is_date(&key) {
                out.by_date.insert(key, plans);
            } else {
                return Err(format!("overrides: key {key:?} is neither a date YYYY-MM-DD nor market-<id>"));
            }
        }
        Ok(out)
    }

    /// The override of `name` for market `market_id` on `date`, if any.
    pub fn get(&self, market_id: u64, date: &str, name: &str) -> Option<&DayFile> {
        self.by_market.get(&market_id).and_then(|m| m.get(name)).or_else(|| self.by_date.get(date).and_then(|m| m.get(name)))
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10 && b[4] == b'-' && b[7] == b'-' && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// What an appliance bids in one market: its parameters and costs for that day (the salt is
/// derived per market, so no two days' commitments can be linked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    /// θ for that day.
    pub params: ModelParams,
    /// Costs for that day.
    pub costs: Costs,
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
        Ok(Nameplate {
            max_import_w: w("max_import_kw", self.max_import_kw)?,
            max_export_w: w("max_export_kw", self.max_export_kw)?,
            capacity_wh: w("capacity_kwh", self.capacity_kwh)?,
        })
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
    /// Per-market plans that replace the weekly pattern (JSON, see [`Overrides`]), relative
    /// to this file; a missing file is no override.
    #[serde(default = "default_overrides_file")]
    pub overrides_file: PathBuf,
    /// The home's offset from UTC in minutes (60 for CET): which date and weekday a market
    /// is for.
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// The appliances (`run` needs at least one; `simulate` brings its own).
    #[serde(default)]
    pub appliances: Vec<ApplianceFile>,
}

fn default_overrides_file() -> PathBuf {
    "overrides.json".into()
}

fn default_attestations_file() -> PathBuf {
    "attestations.json".into()
}

/// Where an appliance's daily parameters come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// `gateway.toml`: `spec` every day, replaced by the weekly pattern's entry of the day.
    Configured {
        /// The everyday spec.
        spec: ApplianceSpec,
        /// The weekly pattern.
        week: WeekFile,
        /// Costs in €/MWh.
        costs: CostFile,
    },
    /// Given in code (simulations, the demo): the same parameters every day, for markets of
    /// the T and Δ they were made for.
    Fixed {
        /// θ.
        params: ModelParams,
        /// Costs.
        costs: Costs,
        /// The slot length θ is in.
        slot_seconds: u32,
    },
}

/// An appliance ready to take part: identity, committed opening, costs.
#[derive(Debug, Clone)]
pub struct Appliance {
    /// Its name.
    pub name: String,
    /// Its signing key (derived).
    pub key: SigningKey,
    /// θ, cost digest and salt of its everyday plan in the genesis market (what `init`
    /// prints and the attestation request sizes the nameplate from).
    pub opening: Opening,
    /// Private costs of the everyday plan.
    pub costs: Costs,
    /// Where each day's parameters come from.
    pub plan: Plan,
    /// Seeds the per-market salts (derived from the gateway secret and the name).
    salt_seed: [u8; 32],
    /// How it is switched, if at all.
    pub output: Option<OutputFile>,
    /// The nameplate it asks to be attested with.
    pub nameplate: Nameplate,
    /// Its attestations by an authority of the genesis (signature, device and kind checked,
    /// its everyday parameters within their nameplates); each market takes one whose validity
    /// covers it ([`Appliance::attestation_for`]).
    pub attestations: Vec<SignedAttestation>,
    /// Its meter, if it has one.
    pub meter: Option<crate::metering::MeterFile>,
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

    /// Whether any authority attested it.
    pub fn is_attested(&self) -> bool {
        !self.attestations.is_empty()
    }

    /// Its model kind.
    pub fn kind(&self) -> circuits::ModelKind {
        self.opening.params.kind()
    }

    /// The first attestation whose validity covers market `m`.
    pub fn attestation_for(&self, m: &MarketSpec) -> Option<&SignedAttestation> {
        self.attestations.iter().find(|a| protocol::membership::check_covers(a, m).is_ok())
    }

    /// The blinding salt of its commitment in market `market_id`: fresh per market.
    pub fn salt_for(&self, market_id: u64) -> Fr {
        let mut h = Sha256::new();
        h.update(b"gridproof/v1/market-salt");
        h.update(self.salt_seed);
        h.update(market_id.to_le_bytes());
        let bytes: [u8; 32] = h.finalize().into();
        circuits::field::fr_from_i128(i128::from_le_bytes(bytes[..16].try_into().expect("16 bytes")) >> 8)
    }

    /// The opening of `bid` in market `market_id`.
    pub fn opening_for(&self, market_id: u64, bid: &Bid) -> Opening {
        Opening { params: bid.params.clone(), cost_digest: bid.costs.digest(), salt: self.salt_for(market_id) }
    }

    /// What it bids in market `m` after `overrides` and the weekly pattern (`None`: off that
    /// day), checked against the market (T, Δ) and the attested `nameplate`. A plan that does
    /// not fit is an error naming the day's source; the appliance then sits the market out.
    pub fn bid_for(&self, m: &MarketSpec, utc_offset_minutes: i32, overrides: &Overrides, nameplate: &Nameplate) -> Result<Option<Bid>, String> {
        let (date, weekday) = market_day(m, utc_offset_minutes);
        let slots = Slots::new(m.slots as usize).map_err(|e| format!("market {} T: {e}", m.market_id))?;
        let from_spec = |spec: &ApplianceSpec, costs: Result<Costs, String>, source: &str| -> Result<Bid, String> {
            if spec.kind() != self.kind() {
                return Err(format!("{source}: model {} but the appliance is attested as {}", spec.kind(), self.kind()));
            }
            let params = spec.to_params(slots, m.slot_seconds).map_err(|e| format!("{source}: {e}"))?;
            Ok(Bid { params, costs: costs? })
        };
        // The appliance's costs for a market of this T.
        let costs = || match &self.plan {
            Plan::Configured { costs, .. } => costs_of(costs, slots.get()),
            Plan::Fixed { costs, .. } => fit_costs(costs, slots.get()),
        };
        let bid = match (overrides.get(m.market_id, &date, &self.name), &self.plan) {
            (Some(DayFile::Off(_)), _) => return Ok(None),
            (Some(DayFile::Spec(spec)), _) => from_spec(spec, costs(), &format!("overrides for {date}"))?,
            (None, Plan::Configured { spec, week, .. }) => match week.day(weekday) {
                Some(DayFile::Off(_)) => return Ok(None),
                Some(DayFile::Spec(day)) => from_spec(day, costs(), "week")?,
                None => from_spec(spec, costs(), "spec")?,
            },
            (None, Plan::Fixed { params, costs, slot_seconds }) => {
                if params.slots().get() != slots.get() || *slot_seconds != m.slot_seconds {
                    return Err(format!(
                        "its parameters are for T = {}, Δ = {slot_seconds} s; market {} has T = {}, Δ = {} s",
                        params.slots(),
                        m.market_id,
                        m.slots,
                        m.slot_seconds
                    ));
                }
                Bid { params: params.clone(), costs: costs.clone() }
            }
        };
        protocol::membership::within_nameplate(&bid.params, nameplate, m.slot_seconds).map_err(|e| format!("beyond the attested nameplate: {e}"))?;
        Ok(Some(bid))
    }
}

/// Costs in fixed point from the file's €/MWh, for a market of `t` slots.
fn costs_of(c: &CostFile, t: usize) -> Result<Costs, String> {
    if !c.linear_eur_mwh.is_empty() && c.linear_eur_mwh.len() != t {
        return Err(format!("costs.linear_eur_mwh has {} entries, the market has T = {t}", c.linear_eur_mwh.len()));
    }
    let fixed = |field: &str, v: f64| Fixed::from_f64("cost", v).map_err(|e| format!("costs.{field}: {e}"));
    let costs =
        Costs { linear: c.linear_eur_mwh.iter().map(|&v| fixed("linear_eur_mwh", v)).collect::<Result<_, _>>()?, quadratic: fixed("quadratic", c.quadratic)? };
    if costs.quadratic.raw() < 0 {
        return Err("costs.quadratic must be ≥ 0".into());
    }
    Ok(costs)
}

/// Fixed costs, if their per-slot part fits a market of `t` slots.
fn fit_costs(c: &Costs, t: usize) -> Result<Costs, String> {
    if !c.linear.is_empty() && c.linear.len() != t {
        return Err(format!("its costs have {} slots, the market has T = {t}", c.linear.len()));
    }
    Ok(c.clone())
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
    /// How it is metered (markets that settle).
    pub meter: Option<crate::metering::MeterFile>,
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
    for p in [&mut file.key_file, &mut file.state_file, &mut file.genesis_file, &mut file.keys_dir, &mut file.attestations_file, &mut file.overrides_file]
        .into_iter()
        .chain(password)
    {
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
    /// proving keys, each metered by `meter` (a simulated meter; only markets that settle
    /// read it); the file's own appliances, broker and outputs are ignored.
    pub fn simulated(path: &Path, n: usize, seed: u64, meter: Option<crate::metering::MeterFile>) -> Result<Gateway, ConfigError> {
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
            .map(|(i, d)| Virtual { name: format!("sim-{i:04}"), params: d.params, costs: d.costs, output: None, meter: meter.clone() })
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
        let market = genesis_body(&genesis).market.clone();
        let mut names = std::collections::BTreeSet::new();
        let mut appliances = Vec::new();
        for d in devices {
            if !names.insert(d.name.clone()) || !is_name(&d.name) {
                return Err(invalid(path, format!("virtual appliance {:?}: duplicate or not a valid name", d.name)));
            }
            if d.output.is_some() && file.mqtt.is_none() {
                return Err(invalid(path, format!("virtual appliance {}: an output needs an [mqtt] broker", d.name)));
            }
            if let Some(m) = &d.meter {
                m.check().map_err(|e| invalid(path, format!("virtual appliance {}: {e}", d.name)))?;
            }
            appliances.push(Appliance { output: d.output, meter: d.meter, ..Appliance::derive(&secret, &d.name, d.params, d.costs, &market) });
        }
        attach_attestations(&file.attestations_file, &genesis, &mut appliances)?;
        file.appliances.clear();
        Ok(Gateway { file, genesis, appliances, validator_keys, id: secret.verifying_key().to_bytes() })
    }

    /// Attests every appliance with `authority`'s key (its [`Appliance::nameplate`], valid
    /// from the genesis market's registration close for [`SELF_ATTESTATION_DAYS`] days): for a
    /// development cluster whose authority key is at hand (`device simulate --authority-key`,
    /// the demo). Refused if the key is not an authority of the genesis.
    pub fn self_attest(&mut self, authority: &SigningKey) -> Result<(), ConfigError> {
        let g = self.market().clone();
        let me = protocol::membership::AuthorityId(authority.verifying_key().to_bytes());
        if !g.enrollment_authorities.contains(&me) {
            return Err(invalid(&self.file.genesis_file, format!("key {} is not an enrollment authority of this genesis", protocol::ids::hex(&me.0))));
        }
        let meter = self.file.meter_point.clone().unwrap_or_else(|| format!("gateway-{}", &protocol::ids::hex(&self.id)[..12]));
        let (from, until) = protocol::membership::market_span(&g.market);
        let span = (from, until.max(from.saturating_add(SELF_ATTESTATION_DAYS * 86_400_000)));
        for a in &mut self.appliances {
            a.attestations = vec![protocol::membership::attest_nameplate(authority, &self.genesis.chain_id, a.id(), a.kind().id(), a.nameplate, &meter, span)];
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
    // Which appliance drives each output target (a topic, or a Shelly's channel).
    let mut targets: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, a) in file.appliances.iter().enumerate() {
        let at = |what: String| invalid(path, format!("appliances[{i}] ({}): {what}", a.name));
        if !names.insert(a.name.clone()) {
            return Err(at("duplicate name".into()));
        }
        if let Some(o) = &a.output {
            if let Some(other) = targets.insert(o.target(), &a.name) {
                return Err(at(format!("output {} is {other}'s already: two appliances cannot drive one output", o.target())));
            }
        }
        let params: ModelParams = a.spec.to_params(slots, g.market.slot_seconds).map_err(|e| at(e.to_string()))?;
        let costs = costs_of(&a.costs, slots.get()).map_err(at)?;
        check_output(a, file).map_err(at)?;
        if let Some(m) = &a.meter {
            m.check().map_err(at)?;
        }
        let mut appliance = Appliance { output: a.output.clone(), meter: a.meter.clone(), ..Appliance::derive(secret, &a.name, params, costs, &g.market) };
        appliance.plan = Plan::Configured { spec: a.spec.clone(), week: a.week.clone(), costs: a.costs.clone() };
        // Each day of the week must be a spec of the same model that fits the market.
        let mut days = vec![("spec", appliance.opening.params.clone())];
        for (day, plan) in a.week.days() {
            if let DayFile::Spec(spec) = plan {
                if spec.kind() != a.spec.kind() {
                    return Err(at(format!("week.{day}: model {} but spec is {}", spec.kind(), a.spec.kind())));
                }
                days.push((day, spec.to_params(slots, g.market.slot_seconds).map_err(|e| at(format!("week.{day}: {e}")))?));
            }
        }
        match &a.nameplate {
            Some(n) => {
                let n = n.to_nameplate().map_err(at)?;
                // Native refusal: the private parameters must fit the public nameplate.
                for (day, params) in &days {
                    let field = if *day == "spec" { "spec".to_string() } else { format!("week.{day}") };
                    protocol::membership::within_nameplate(params, &n, g.market.slot_seconds).map_err(|e| at(format!("{field} beyond the nameplate: {e}")))?;
                }
                appliance.nameplate = n;
            }
            // The smallest nameplate every day of the week fits.
            None => {
                for (_, params) in &days {
                    appliance.nameplate = appliance.nameplate.cover(&protocol::membership::nameplate_of(params, g.market.slot_seconds));
                }
            }
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
    output.check().map_err(|e| format!("output: {e}"))?;
    if matches!(output, crate::actuation::OutputFile::Evcc { .. }) && !matches!(a.spec, ApplianceSpec::Deferrable { .. }) {
        return Err("output: evcc charges an EV (a deferrable load)".into());
    }
    let Some(crate::actuation::Relay { rated_w: rated, min_on_s, min_off_s }) = output.relay() else { return Ok(()) };
    if rated == 0 {
        return Err("output.rated_w: must be > 0".into());
    }
    for (field, s) in [("min_on_s", min_on_s), ("min_off_s", min_off_s)] {
        if s > crate::actuation::MAX_MIN_SWITCH_S {
            return Err(format!("output.{field} = {s} s: at most {} s", crate::actuation::MAX_MIN_SWITCH_S));
        }
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

/// How long the attestations of [`Gateway::self_attest`] are valid.
pub const SELF_ATTESTATION_DAYS: u64 = 365;

impl Appliance {
    /// An appliance whose key and salt seed derive from the gateway secret and its name, with
    /// `params` and `costs` every day ([`Plan::Fixed`]); its opening is the one for `genesis`'s
    /// market. Its nameplate is the smallest one its parameters fit, and it has no attestation
    /// yet.
    pub fn derive(secret: &SigningKey, name: &str, params: ModelParams, costs: Costs, genesis: &MarketSpec) -> Appliance {
        let secret_bytes = secret.to_bytes();
        let key = SigningKey::from_bytes(&derive("appliance-key", &secret_bytes, name));
        let salt_seed = derive("appliance-salt", &secret_bytes, name);
        let nameplate = protocol::membership::nameplate_of(&params, genesis.slot_seconds);
        let plan = Plan::Fixed { params: params.clone(), costs: costs.clone(), slot_seconds: genesis.slot_seconds };
        let mut a = Appliance {
            name: name.to_string(),
            key,
            opening: Opening { params, cost_digest: costs.digest(), salt: Fr::from(0u64) },
            costs,
            plan,
            salt_seed,
            output: None,
            nameplate,
            attestations: vec![],
            meter: None,
        };
        a.opening.salt = a.salt_for(genesis.market_id);
        a
    }

    /// What the gateway asks the authority to attest for it.
    pub fn attestation_request(&self, meter_point: &str) -> AttestationRequest {
        AttestationRequest {
            name: self.name.clone(),
            device: self.id(),
            kind: self.opening.params.kind().id(),
            meter_point: meter_point.to_string(),
            nameplate: self.nameplate,
        }
    }
}

/// The body of a genesis entry that `protocol::files::read_genesis` loaded (it checks that
/// height 0 holds a genesis body).
fn genesis_body(genesis: &Entry) -> &Genesis {
    let Body::Genesis(g) = &genesis.body else { unreachable!("read_genesis checks the body") };
    g
}

/// Reads the attestations file (none yet is fine: `device init` comes first) and gives each
/// appliance the attestations of its device that pass a validator's check but for the time
/// (an authority of this genesis, on this chain, this device and kind); each market later
/// takes one whose validity covers it. One that does not pass (another chain's, a
/// non-authority's) is skipped with a warning, so a stale file never blocks `init`; an
/// appliance whose everyday parameters exceed an attested nameplate is an error.
/// Attestations of other devices are ignored.
fn attach_attestations(path: &Path, genesis: &Entry, appliances: &mut [Appliance]) -> Result<(), ConfigError> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(ConfigError::io(path))?;
    let list: Vec<SignedAttestation> = serde_json::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
    let g = genesis_body(genesis);
    for a in appliances.iter_mut() {
        let kind = a.opening.params.kind().id();
        let id = a.id();
        for att in list.iter().filter(|x| x.body.device == id) {
            if let Err(e) = protocol::membership::check_attested(att, &genesis.chain_id, &g.enrollment_authorities, id, kind) {
                tracing::warn!(appliance = a.name, file = %path.display(), "attestation skipped: {e}");
                continue;
            }
            protocol::membership::within_nameplate(&a.opening.params, &att.body.nameplate, g.market.slot_seconds)
                .map_err(|e| invalid(path, format!("appliance {}: its spec is beyond the attested nameplate: {e}", a.name)))?;
            a.attestations.push(att.clone());
        }
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
        assert_eq!(file.appliances[0].output.as_ref().map(|o| o.topic()), Some("evcc/loadpoints/1".to_string()), "the EV charges under evcc");
    }

    #[test]
    fn outputs_that_cannot_deliver_the_schedule_are_refused() {
        let mut file: GatewayFile = toml::from_str(include_str!("../../examples/gateway.toml")).unwrap();
        let battery = file.appliances[2].clone();
        let mut relay_battery = battery.clone();
        relay_battery.output = Some(OutputFile::Tasmota { topic: "b".into(), rated_w: 3000, min_on_s: 0, min_off_s: 0 });
        assert!(check_output(&relay_battery, &file).unwrap_err().contains("setpoint"));
        let mut weak = file.appliances[0].clone();
        weak.output = Some(OutputFile::Tasmota { topic: "ev".into(), rated_w: 3000, min_on_s: 0, min_off_s: 0 });
        assert!(check_output(&weak, &file).unwrap_err().contains("rated_w = 3000"));
        let mut wild = file.appliances[0].clone();
        wild.output = Some(OutputFile::Setpoint { topic: "home/+/set".into(), retain: false });
        assert!(check_output(&wild, &file).is_err());
        // Minimum on/off times parse from gateway.toml and are bounded.
        let mut compressor = file.appliances[1].clone();
        compressor.output = Some(toml::from_str("adapter = \"shelly\"\ndevice_id = \"s\"\nrated_w = 2000\nmin_on_s = 300\nmin_off_s = 600\n").unwrap());
        assert_eq!(compressor.output.as_ref().and_then(|o| o.relay()).map(|r| (r.min_on_s, r.min_off_s)), Some((300, 600)));
        check_output(&compressor, &file).unwrap();
        compressor.output = Some(toml::from_str("adapter = \"tasmota\"\ntopic = \"hp\"\nrated_w = 2000\nmin_off_s = 4000\n").unwrap());
        assert!(check_output(&compressor, &file).unwrap_err().contains("min_off_s = 4000 s"));
        file.mqtt = None;
        assert!(check_output(&file.appliances[0], &file).unwrap_err().contains("[mqtt]"));
    }
}
