//! What market operators and enrollment authorities send to the validators: the market a
//! `verifier-node init` or `open-market` describes ([`MarketPlan`]), and one signed message
//! submitted to every validator over the device API ([`submit_to_all`]). The validators admit
//! such a message only from a connection whose TLS key is its signer.

use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use protocol::entry::{GridSpec, MarketSpec};
use protocol::ids::ValidatorId;
use protocol::messages::{DeviceRequest, DeviceResponse};
use protocol::net::ValidatorClient;

/// A market day as an operator plans it: counted from `now`, in the units people use.
#[derive(Debug, Clone, clap::Args)]
pub struct MarketPlan {
    /// Market id (unique on the chain).
    #[arg(long, default_value_t = 1)]
    pub market_id: u64,
    /// Slots T.
    #[arg(long, default_value_t = 96)]
    pub slots: u16,
    /// Slot length in seconds.
    #[arg(long, default_value_t = 900)]
    pub slot_seconds: u32,
    /// Registration stays open this many seconds from now.
    #[arg(long, default_value_t = 30)]
    pub registration_s: u64,
    /// Length of one ADMM iteration (ms).
    #[arg(long, default_value_t = 2000)]
    pub iteration_ms: u64,
    /// K_max.
    #[arg(long, default_value_t = 50)]
    pub max_iterations: u32,
    /// Expected number of devices (sizes the base-load profile of the valley-filling cost).
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// Seconds between the last iteration deadline and execution start (ignored with
    /// --execution-start-ms).
    #[arg(long, default_value_t = 60)]
    pub execution_delay_s: u64,
    /// Execution start, ms since the Unix epoch (e.g. tomorrow 00:00 local time); default: the
    /// last iteration deadline plus --execution-delay-s (for `open-market`: and not before the
    /// chain's last scheduled execution ends).
    #[arg(long)]
    pub execution_start_ms: Option<u64>,
    /// Seconds after execution ends during which meter readings are committed; then the
    /// market settles (every device's bill, docs/protocol.md §9). 0: the market does not
    /// settle and ends at its final schedule.
    #[arg(long, default_value_t = 0)]
    pub meter_window_s: u64,
    /// The premium over |λ_t| (€/MWh) at which every W·slot metered off schedule is charged
    /// (with --meter-window-s).
    #[arg(long, default_value_t = 50.0)]
    pub imbalance_premium_eur_mwh: f64,
}

impl MarketPlan {
    /// The spec of this plan made at `now_ms`: ρ = 0.02, ε_abs = 1 W, ε_rel = 10⁻³, a
    /// valley-filling cost over the base load of a seeded household scenario. Checked with
    /// `protocol::market::check_spec`.
    pub fn spec(&self, now_ms: u64) -> Result<MarketSpec, String> {
        self.spec_after(now_ms, 0)
    }

    /// [`Self::spec`], with a default execution start not before `not_before_ms` (the end of
    /// the chain's last scheduled execution: executions may not overlap).
    pub fn spec_after(&self, now_ms: u64, not_before_ms: u64) -> Result<MarketSpec, String> {
        let close = now_ms.saturating_add(self.registration_s.saturating_mul(1000));
        let slots = circuits::Slots::new(self.slots as usize).map_err(|e| format!("--slots: {e}"))?;
        let scenario = protocol::scenario::Scenario::generate(1, self.devices.max(1), slots, self.slot_seconds, protocol::scenario::Mix::Household);
        let grid = match scenario.valley_filling() {
            protocol::admm::GridCost::ValleyFilling { gamma, base_load } => GridSpec::ValleyFilling { gamma: gamma.raw(), base_load },
            _ => unreachable!("valley_filling gives a valley-filling cost"),
        };
        let last_deadline = close.saturating_add(self.iteration_ms.saturating_mul(self.max_iterations as u64 + 2));
        let spec = MarketSpec {
            market_id: self.market_id,
            slots: self.slots,
            slot_seconds: self.slot_seconds,
            rho: circuits::fixed::Fixed::from_f64("rho", 0.02).expect("finite").raw(),
            eps_abs: circuits::fixed::Fixed::ONE.raw(),
            eps_rel: circuits::fixed::Fixed::from_f64("eps", 1e-3).expect("finite").raw(),
            max_iterations: self.max_iterations,
            grid,
            registration_close_ms: close,
            iteration_ms: self.iteration_ms,
            execution_start_ms: self.execution_start_ms.unwrap_or(last_deadline.saturating_add(self.execution_delay_s.saturating_mul(1000)).max(not_before_ms)),
            settlement: match self.meter_window_s {
                0 => None,
                s => Some(protocol::settlement::SettlementSpec {
                    meter_window_ms: s.saturating_mul(1000),
                    imbalance_premium: circuits::fixed::Fixed::from_f64("imbalance premium", self.imbalance_premium_eur_mwh).map_err(|e| format!("--imbalance-premium-eur-mwh: {e}"))?.raw(),
                }),
            },
            compressed_slot_ms: None,
        };
        protocol::market::check_spec(&spec).map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

/// Parses `INDEX=HOST:PORT` (a validator's index in the genesis and its QUIC address).
pub fn parse_peer(s: &str) -> Result<(u16, SocketAddr), String> {
    let (i, addr) = s.split_once('=').ok_or_else(|| format!("--peer {s}: expected INDEX=HOST:PORT"))?;
    let i: u16 = i.parse().map_err(|_| format!("--peer {s}: {i:?} is not a validator index"))?;
    let addr: SocketAddr = addr.parse().map_err(|e| format!("--peer {s}: {e}"))?;
    Ok((i, addr))
}

/// One validator's answer: its index and address, and what it said (or why it could not be
/// asked).
#[derive(Debug)]
pub struct Answer {
    /// The validator's index.
    pub index: u16,
    /// Its address.
    pub addr: SocketAddr,
    /// Accepted, rejected with a label, or a connection error.
    pub result: Result<DeviceResponse, String>,
}

impl Answer {
    /// Whether the validator admitted the message into its pool.
    pub fn accepted(&self) -> bool {
        matches!(self.result, Ok(DeviceResponse::Accepted))
    }
}

/// Submits `request` to each of `peers` (pinned to the genesis key of its index), signed on
/// the connection by `key`, each within `timeout`. Every peer is asked, in order.
pub async fn submit_to_all(
    validators: &[ValidatorId],
    peers: &[(u16, SocketAddr)],
    key: &SigningKey,
    request: &DeviceRequest,
    timeout: Duration,
) -> Vec<Answer> {
    protocol::net::install_crypto();
    let endpoint = match protocol::net::client_endpoint("0.0.0.0:0".parse().expect("valid")) {
        Ok(e) => e,
        Err(e) => return peers.iter().map(|&(index, addr)| Answer { index, addr, result: Err(e.to_string()) }).collect(),
    };
    let mut out = Vec::new();
    for &(index, addr) in peers {
        let Some(v) = validators.get(index as usize) else {
            out.push(Answer { index, addr, result: Err(format!("the genesis has no validator {index}")) });
            continue;
        };
        let ask = async {
            let c = ValidatorClient::connect(&endpoint, addr, v.0, key).await.map_err(|e| e.to_string())?;
            let r = c.submit(request).await.map_err(|e| e.to_string());
            c.close();
            r
        };
        let result = tokio::time::timeout(timeout, ask).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        out.push(Answer { index, addr, result });
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    out
}

/// The end of the last execution any market of the chain has scheduled (the genesis market and
/// every `Open` entry), read from validator `peer`'s log as a light client (every entry
/// linked and certified by a quorum of the genesis set). A new market's execution must not
/// overlap it. Stops reading when the log is quiet for `quiet`.
pub async fn last_execution_end(genesis: &protocol::entry::Entry, peer: (u16, SocketAddr), quiet: Duration) -> Result<u64, String> {
    use protocol::entry::{Body, LightClient};
    let protocol::entry::Body::Genesis(g) = &genesis.body else { return Err("not a genesis".into()) };
    let mut end = protocol::market::execution_span(&g.market).1;
    let key = g.validators.get(peer.0 as usize).ok_or_else(|| format!("the genesis has no validator {}", peer.0))?;
    protocol::net::install_crypto();
    let endpoint = protocol::net::client_endpoint("0.0.0.0:0".parse().expect("valid")).map_err(|e| e.to_string())?;
    let me = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let client = ValidatorClient::connect(&endpoint, peer.1, key.0, &me).await.map_err(|e| e.to_string())?;
    let mut rx = client.subscribe(1).await.map_err(|e| e.to_string())?;
    let mut light = LightClient::new(genesis).map_err(|e| e.to_string())?;
    while let Ok(Some(item)) = tokio::time::timeout(quiet, rx.recv()).await {
        let c = item.map_err(|e| e.to_string())?;
        light.accept(&c.entry, &c.certificate).map_err(|e| format!("validator {} at {}: {e}", peer.0, peer.1))?;
        if let Body::Open(o) = &c.entry.body {
            end = end.max(protocol::market::execution_span(&o.body.spec).1);
        }
    }
    client.close();
    Ok(end)
}
