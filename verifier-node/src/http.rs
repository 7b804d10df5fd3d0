//! The validator's HTTP API (axum): `/` (a status page: one self-contained HTML file, no
//! external assets, drawing from the JSON below), `/status`, `/entries/{height}`, `/markets`
//! (every market held), `/markets/{id}` (JSON) and `/metrics` (OpenMetrics text, `crate::metrics`). Read-only; it never blocks the node task (it reads a
//! snapshot and the store).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use protocol::entry::{Body, Certified};
use protocol::ids::hex;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::app::body_kind;
use crate::host::{MarketView, Shared};

/// The JSON view of a certified entry.
pub fn entry_json(c: &Certified) -> Value {
    let e = &c.entry;
    let spec = |m: &protocol::entry::MarketSpec| {
        json!({
            "market_id": m.market_id,
            "slots": m.slots,
            "registration_close_ms": m.registration_close_ms,
            "iteration_ms": m.iteration_ms,
            "max_iterations": m.max_iterations,
            "execution_start_ms": m.execution_start_ms,
            "slot_ms": m.slot_ms(),
        })
    };
    let body = match &e.body {
        Body::Genesis(g) => json!({
            "validators": g.validators.iter().map(|v| hex(&v.0)).collect::<Vec<_>>(),
            "market": spec(&g.market),
            "enrollment_authorities": g.enrollment_authorities.iter().map(|a| hex(&a.0)).collect::<Vec<_>>(),
            "market_operators": g.market_operators.iter().map(|o| hex(&o.0)).collect::<Vec<_>>(),
        }),
        Body::Enrollment(b) => json!({
            "market_id": b.market_id,
            "devices": b.enrollments.iter().map(|x| hex(&x.body.device.0)).collect::<Vec<_>>(),
            "withdrawn": b.withdrawals.iter().map(|x| hex(&x.body.device.0)).collect::<Vec<_>>(),
        }),
        Body::Open(o) => json!({ "operator": hex(&o.operator.0), "market": spec(&o.body.spec) }),
        Body::Revocation(list) => json!({
            "revoked": list.iter().map(|r| json!({ "device": hex(&r.body.device.0), "attestation": hex(&r.body.attestation), "authority": hex(&r.authority.0) })).collect::<Vec<_>>(),
        }),
        Body::Iteration(b) => json!({
            "market_id": b.market_id,
            "iteration": b.iteration,
            "updates": b.updates.len(),
            "x_bar": b.x_bar, "z_bar": b.z_bar, "u": b.u,
            "residuals": { "primal": b.residuals[0], "dual": b.residuals[1], "eps_primal": b.residuals[2], "eps_dual": b.residuals[3] },
        }),
        Body::Final(f) => json!({
            "market_id": f.market_id,
            "iterations": f.iterations, "converged": f.converged, "schedule_root": hex(&f.schedule_root), "prices": f.prices,
        }),
        Body::Meter(m) => json!({ "market_id": m.market_id, "readings": m.readings.len() }),
        Body::Settlement(s) => json!({
            "market_id": s.market_id,
            "bills": s.bills.iter().map(|b| json!({ "device": hex(&b.device.0), "energy_micro_eur": b.energy, "imbalance_micro_eur": b.imbalance, "total_micro_eur": b.total(), "metered_slots": b.metered_slots })).collect::<Vec<_>>(),
            "totals": s.totals,
        }),
    };
    json!({
        "height": e.height,
        "hash": hex(&e.hash()),
        "prev_hash": hex(&e.prev_hash),
        "state_root": hex(&e.state_root),
        "timestamp_ms": e.timestamp_ms,
        "kind": body_kind(&e.body),
        "body": body,
        "certificate": { "round": c.certificate.round, "signers": c.certificate.votes.iter().map(|v| v.validator).collect::<Vec<_>>() },
    })
}

/// The market the status page shows: the first one not final, else the newest.
fn shown_market(snap: &crate::host::Snapshot) -> Option<u64> {
    snap.markets.values().find(|m| !m.is_final).or_else(|| snap.markets.values().max_by_key(|m| m.registration_close_ms)).map(|m| m.market_id)
}

fn market_summary(m: &MarketView) -> Value {
    json!({
        "market_id": m.market_id,
        "slots": m.slots,
        "registration_close_ms": m.registration_close_ms,
        "execution_start_ms": m.execution_start_ms,
        "enrolled": m.enrolled,
        "iteration": m.iteration,
        "final": m.is_final,
        "pruned": m.pruned,
        "settles": m.settles,
        "readings": m.readings,
        "settlement": m.totals,
    })
}

/// A device's account on the ledger: its balance (µ€; positive = it owes) over every settled
/// market and its latest bills.
async fn account(State(s): State<Arc<Shared>>, Path(device): Path<String>) -> Response {
    let Some(key) = protocol::ids::parse_hex32(&device) else {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": format!("{device:?} is not a device id (64 hex characters)") }))).into_response();
    };
    let accounts = s.accounts.read().expect("accounts lock");
    let Some(a) = accounts.as_ref().and_then(|m| m.get(&protocol::ids::DeviceId(key))) else {
        return (StatusCode::NOT_FOUND, Json(json!({ "error": format!("device {device} has no settled bill on this chain") }))).into_response();
    };
    let bills: Vec<Value> = a
        .bills
        .iter()
        .map(|(m, b)| json!({ "market_id": m, "energy_micro_eur": b.energy, "imbalance_micro_eur": b.imbalance, "total_micro_eur": b.total(), "metered_slots": b.metered_slots }))
        .collect();
    Json(json!({ "device": device, "balance_micro_eur": a.balance, "bills": bills })).into_response()
}

/// Most accounts `GET /accounts` lists.
pub const LISTED_ACCOUNTS: usize = 50;

/// The ledger at a glance: how many devices hold an account, the sum of every balance (µ€:
/// what the grid kept over every settled market, its energy and imbalance revenue), and the
/// [`LISTED_ACCOUNTS`] largest balances by magnitude (ties by device id).
async fn accounts(State(s): State<Arc<Shared>>) -> Json<Value> {
    let accounts = s.accounts.read().expect("accounts lock");
    let all: Vec<(&protocol::ids::DeviceId, &crate::app::Account)> = accounts.iter().flat_map(|m| m.iter()).collect();
    let sum: i128 = all.iter().map(|(_, a)| a.balance as i128).sum();
    let mut largest = all.clone();
    largest.sort_by_key(|(d, a)| (std::cmp::Reverse(a.balance.unsigned_abs()), **d));
    let largest: Vec<Value> = largest
        .into_iter()
        .take(LISTED_ACCOUNTS)
        .map(|(d, a)| json!({ "device": hex(&d.0), "balance_micro_eur": a.balance, "markets": a.bills.len() }))
        .collect();
    // (A sum beyond i64 — never in practice — is given as a decimal string.)
    let sum = i64::try_from(sum).map_or_else(|_| json!(sum.to_string()), |s| json!(s));
    Json(json!({ "count": all.len(), "sum_micro_eur": sum, "largest": largest }))
}

async fn status(State(s): State<Arc<Shared>>) -> Json<Value> {
    let snap = s.snapshot.read().expect("snapshot lock").clone();
    let shown = shown_market(&snap).and_then(|id| snap.markets.get(&id));
    Json(json!({
        "validator": snap.index,
        "height": snap.height,
        "tip_hash": snap.tip_hash,
        "next_due": snap.next_due.map(|(market, step, at)| json!({ "market_id": market, "kind": step, "from_ms": at })),
        "market_id": shown.map(|m| m.market_id),
        "enrolled": shown.map_or(0, |m| m.enrolled),
        "iteration": shown.map_or(0, |m| m.iteration),
        "final": snap.idle,
        "markets": snap.markets.values().map(market_summary).collect::<Vec<_>>(),
        "peers_connected": s.net.peers_connected.load(Ordering::Relaxed),
        "uptime_s": s.started.elapsed().as_secs(),
    }))
}

async fn entry(State(s): State<Arc<Shared>>, Path(height): Path<u64>) -> Response {
    match s.store.certified(height) {
        Ok(Some(c)) => Json(entry_json(&c)).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({ "error": format!("no entry at height {height}") }))).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": e.to_string() }))).into_response(),
    }
}

/// The newest checkpoint this validator can serve: the highest height it holds a snapshot
/// and the entry of, as `<height>:<hash>` for `checkpoint =` in node.toml or a gateway's
/// `--checkpoint`. Trust it only as far as you trust this validator.
async fn checkpoint(State(s): State<Arc<Shared>>) -> Response {
    let found = (|| {
        for h in s.store.snapshot_heights()?.into_iter().rev() {
            if let Some(e) = s.store.entry(h)? {
                return Ok(Some(protocol::snapshot::Checkpoint { height: h, hash: e.hash() }));
            }
        }
        Ok::<_, crate::store::StoreError>(None)
    })();
    match found {
        Ok(Some(c)) => Json(json!({ "height": c.height, "hash": protocol::ids::hex(&c.hash), "checkpoint": c.to_string() })).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({ "error": "this validator holds no snapshot yet (one is stored every snapshot_interval heights)" }))).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": e.to_string() }))).into_response(),
    }
}

async fn markets(State(s): State<Arc<Shared>>) -> Json<Value> {
    let snap = s.snapshot.read().expect("snapshot lock").clone();
    Json(json!({ "markets": snap.markets.values().map(market_summary).collect::<Vec<_>>() }))
}

async fn market(State(s): State<Arc<Shared>>, Path(id): Path<u64>) -> Response {
    let snap = s.snapshot.read().expect("snapshot lock").clone();
    let Some(m) = snap.markets.get(&id) else {
        let held: Vec<u64> = snap.markets.keys().copied().collect();
        return (StatusCode::NOT_FOUND, Json(json!({ "error": format!("this validator holds no market {id} (it holds {held:?})") }))).into_response();
    };
    let mut v = market_summary(m);
    v["residuals"] = m.residuals.iter().map(|(k, r)| json!({ "k": k, "primal": r[0], "dual": r[1], "eps_primal": r[2], "eps_dual": r[3] })).collect();
    v["x_bar"] = json!(m.x_bar);
    v["u"] = json!(m.u);
    v["prices"] = json!(m.prices);
    v["fixed_point_scale"] = json!(circuits::fixed::SCALE);
    Json(v).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let snap = s.snapshot.read().expect("snapshot lock").clone();
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::render(&snap, &s.net, &s.histograms)).into_response()
}

/// The status page (`status.html`, compiled in).
async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("status.html")).into_response()
}

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/status", get(status))
        .route("/entries/{height}", get(entry))
        .route("/markets", get(markets))
        .route("/markets/{id}", get(market))
        .route("/metrics", get(metrics))
        .route("/checkpoint", get(checkpoint))
        .route("/accounts", get(accounts))
        .route("/accounts/{device}", get(account))
        .with_state(shared)
}

/// Serves until shutdown.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let app = router(shared);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
}
