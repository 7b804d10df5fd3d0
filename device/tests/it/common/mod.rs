//! Shared by the device integration tests: a market on disk (genesis, proving keys), four
//! in-process validators (QUIC, RocksDB, Malachite), gateway configurations, the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use circuits::{ModelKind, Shape, Slots};
use ed25519_dalek::SigningKey;
use protocol::entry::{Entry, Genesis, GridSpec, MarketSpec};
use protocol::ids::ValidatorId;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub const BIN: &str = env!("CARGO_BIN_EXE_device");
pub const T: usize = 4;

pub struct Market {
    pub dir: PathBuf,
    pub genesis: Entry,
    pub validators: Vec<SigningKey>,
    pub base_port: u16,
}

impl Drop for Market {
    fn drop(&mut self) {
        // Keep the directory of a failed test for inspection.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// How a test market is timed.
pub struct Timing {
    /// Registration window from now, ms.
    pub registration_ms: u64,
    /// T.
    pub slots: usize,
    /// Δ, s.
    pub slot_seconds: u32,
    /// Execution starts this long after the last iteration's deadline, ms.
    pub execution_gap_ms: u64,
    /// Models with proving keys (deferrable only unless set).
    pub all_models: bool,
    /// Port block (0..=5, 20 ports each: validators, their HTTP, a broker): tests running at
    /// once in one process must use different ones.
    pub port_block: u16,
    /// The market settles, with this meter window (ms) and a 50 €/MWh imbalance premium.
    pub meter_window_ms: Option<u64>,
    /// A time-compressed market: each slot lasts this long on the wall clock, ms.
    pub compressed_slot_ms: Option<u32>,
}

pub fn market(name: &str, registration_ms: u64) -> Market {
    let port_block = if name == "run" { 0 } else { 1 };
    market_with(name, Timing { registration_ms, slots: T, slot_seconds: 900, execution_gap_ms: 60_000, all_models: false, port_block, meter_window_ms: None, compressed_slot_ms: None })
}

/// A market with 4 validators and proving keys for deferrable loads (or every model), written
/// to a fresh directory.
pub fn market_with(name: &str, timing: Timing) -> Market {
    let Timing { registration_ms, slots, slot_seconds, execution_gap_ms, all_models, port_block, meter_window_ms, compressed_slot_ms } = timing;
    let dir = std::env::temp_dir().join(format!("gridproof-device-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let models: &[ModelKind] =
        if all_models { &[ModelKind::Deferrable, ModelKind::Battery, ModelKind::Producer, ModelKind::Thermal] } else { &[ModelKind::Deferrable] };
    let mut verifying_keys = vec![];
    for &kind in models {
        let shape = Shape { kind, slots: Slots::new(slots).unwrap() };
        let (pk, vk) = prover::setup(shape, &mut ChaCha20Rng::seed_from_u64(3)).unwrap();
        std::fs::write(dir.join(format!("keys/{kind}-{slots}.pk")), pk.to_bytes()).unwrap();
        let vk_bytes = vk.to_bytes();
        std::fs::write(dir.join(format!("keys/{kind}-{slots}.vk")), &vk_bytes).unwrap();
        verifying_keys.push(verifier_node::config::key_hash(&vk, &vk_bytes));
    }
    let validators: Vec<SigningKey> = (0..4u8).map(|i| SigningKey::from_bytes(&[60 + i; 32])).collect();
    let now = protocol::net::now_ms();
    let close = now + registration_ms;
    let genesis = Genesis {
        validators: validators.iter().map(|k| ValidatorId(k.verifying_key().to_bytes())).collect(),
        max_clock_drift_ms: 2000,
        market: MarketSpec {
            market_id: 5,
            slots: slots as u16,
            slot_seconds,
            rho: circuits::fixed::Fixed::from_f64("rho", 0.02).unwrap().raw(),
            eps_abs: circuits::fixed::Fixed::ONE.raw(),
            eps_rel: circuits::fixed::Fixed::from_f64("eps", 1e-3).unwrap().raw(),
            max_iterations: 3,
            grid: GridSpec::ValleyFilling { gamma: 1000, base_load: (0..slots as i32).map(|t| 2000 + 700 * (t % 4)).collect() },
            registration_close_ms: close,
            iteration_ms: 2500,
            execution_start_ms: close + 2500 * 3 + execution_gap_ms,
            settlement: meter_window_ms
                .map(|w| protocol::settlement::SettlementSpec { meter_window_ms: w, imbalance_premium: 50 * circuits::fixed::SCALE }),
            compressed_slot_ms,
        },
        verifying_keys,
        enrollment_authorities: vec![protocol::membership::AuthorityId(authority().verifying_key().to_bytes())],
        market_operators: vec![protocol::market::OperatorId(operator().verifying_key().to_bytes())],
    };
    let entry = Entry::genesis(genesis, now);
    std::fs::write(dir.join("genesis.bin"), protocol::codec::encode(&entry)).unwrap();
    protocol::files::write_key(&dir.join("authority.key"), &authority(), true).unwrap();
    assert!(port_block <= 5, "port blocks 0..=5");
    let base_port = 30_000 + (std::process::id() as u16 % 250) * 120 + port_block * 20;
    Market { dir, genesis: entry, validators, base_port }
}

pub fn gateway_toml(m: &Market, name: &str, appliances: &str) -> PathBuf {
    let validators: String = (0..4).map(|i| format!("[[validators]]\nindex = {i}\naddr = \"127.0.0.1:{}\"\n\n", m.base_port + i)).collect();
    let text = format!(
        "key_file = \"{name}.key\"\nstate_file = \"{name}.state.json\"\ngenesis_file = \"genesis.bin\"\nkeys_dir = \"keys\"\n\n{validators}{appliances}"
    );
    let path = m.dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub const EV: &str =
    "[[appliances]]\nname = \"ev\"\n[appliances.spec]\nmodel = \"deferrable\"\nmax_power_kw = 3.0\nenergy_min_kwh = 1.0\nenergy_max_kwh = 2.0\n\n";
pub const BOILER: &str = "[[appliances]]\nname = \"boiler\"\n[appliances.spec]\nmodel = \"deferrable\"\nmax_power_kw = 2.0\nenergy_min_kwh = 0.5\nenergy_max_kwh = 1.5\n[appliances.costs]\nlinear_eur_mwh = [40.0, 10.0, 5.0, 30.0]\n\n";

pub async fn start_validators(m: &Market) -> Vec<verifier_node::host::Running> {
    verifier_node::host::start_local(&m.dir, &m.dir.join("keys"), &m.genesis, &m.validators, m.base_port, m.base_port + 10).await.unwrap()
}

pub fn device(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(BIN).args(args).arg("--config").arg(config).output().unwrap()
}

/// The enrollment authority of every test market (its key is also at `<dir>/authority.key`).
pub fn authority() -> SigningKey {
    SigningKey::from_bytes(&[90; 32])
}

/// The market operator of every test market.
pub fn operator() -> SigningKey {
    SigningKey::from_bytes(&[91; 32])
}

/// The genesis market.
pub fn spec(m: &Market) -> MarketSpec {
    let protocol::entry::Body::Genesis(g) = &m.genesis.body else { unreachable!() };
    g.market.clone()
}

/// Like [`init`], with attestations valid from the genesis market's close for `days` days.
pub fn init_for_days(m: &Market, cfg: &Path, days: u64) {
    let (from, _) = protocol::membership::market_span(&spec(m));
    init_valid(m, cfg, (from, from + days * 86_400_000));
}

/// `device init`, then the authority signs the request it wrote (as `verifier-node attest`
/// does) into the attestations file the configuration names, next to any already there.
pub fn init(m: &Market, cfg: &Path) {
    init_valid(m, cfg, protocol::membership::market_span(&spec(m)));
}

/// `device init`, then attestations of its request valid over `(from, until)` ms.
fn init_valid(m: &Market, cfg: &Path, (from, until): (u64, u64)) {
    let out = device(&["init"], cfg);
    assert!(out.status.success(), "device init: {}", String::from_utf8_lossy(&out.stderr));
    let requests: Vec<protocol::membership::AttestationRequest> =
        serde_json::from_slice(&std::fs::read(cfg.with_extension("attestation-request.json")).unwrap()).unwrap();
    let file = device::config::read_file(cfg).unwrap().attestations_file;
    let mut list: Vec<protocol::membership::SignedAttestation> = std::fs::read(&file).map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or_default();
    list.extend(requests.iter().map(|r| protocol::membership::SignedAttestation::new(&authority(), &m.genesis.chain_id, r.attestation(from, until))));
    std::fs::write(&file, serde_json::to_string(&list).unwrap()).unwrap();
}
