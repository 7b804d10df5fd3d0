//! The validator's HTTP API (axum): `/` (a status page: one self-contained HTML file, no
//! external assets, drawing from the JSON below), `/status`, `/entries/{height}`,
//! `/markets/{id}` (JSON) and `/metrics` (Prometheus text). Read-only; it never blocks the node task (it reads a
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
use crate::host::Shared;

/// The JSON view of a certified entry.
pub fn entry_json(c: &Certified) -> Value {
    let e = &c.entry;
    let body = match &e.body {
        Body::Genesis(g) => json!({
            "validators": g.validators.iter().map(|v| hex(&v.0)).collect::<Vec<_>>(),
            "market_id": g.market.market_id,
            "slots": g.market.slots,
            "registration_close_ms": g.market.registration_close_ms,
            "iteration_ms": g.market.iteration_ms,
            "max_iterations": g.market.max_iterations,
        }),
        Body::Enrollment(list) => json!({ "devices": list.iter().map(|x| hex(&x.body.device.0)).collect::<Vec<_>>() }),
        Body::Iteration(b) => json!({
            "iteration": b.iteration,
            "updates": b.updates.len(),
            "x_bar": b.x_bar, "z_bar": b.z_bar, "u": b.u,
            "residuals": { "primal": b.residuals[0], "dual": b.residuals[1], "eps_primal": b.residuals[2], "eps_dual": b.residuals[3] },
        }),
        Body::Final(f) => json!({
            "iterations": f.iterations, "converged": f.converged, "schedule_root": hex(&f.schedule_root), "prices": f.prices,
        }),
        Body::Meter(m) => json!({ "readings": m.len() }),
        Body::Settlement(s) => json!({ "balances": s.balances.len() }),
    };
    json!({
        "height": e.height,
        "hash": hex(&e.hash()),
        "prev_hash": hex(&e.prev_hash),
        "timestamp_ms": e.timestamp_ms,
        "kind": body_kind(&e.body),
        "body": body,
        "certificate": { "round": c.certificate.round, "signers": c.certificate.votes.iter().map(|v| v.validator).collect::<Vec<_>>() },
    })
}

async fn status(State(s): State<Arc<Shared>>) -> Json<Value> {
    let snap = s.snapshot.read().expect("snapshot lock").clone();
    Json(json!({
        "validator": snap.index,
        "market_id": snap.market_id,
        "height": snap.height,
        "tip_hash": snap.tip_hash,
        "next_due": snap.next_due.map(|(kind, at)| json!({ "kind": kind, "from_ms": at })),
        "enrolled": snap.enrolled,
        "iteration": snap.iteration,
        "final": snap.is_final,
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

async fn market(State(s): State<Arc<Shared>>, Path(id): Path<u64>) -> Response {
    let snap = s.snapshot.read().expect("snapshot lock").clone();
    if id != snap.market_id {
        return (StatusCode::NOT_FOUND, Json(json!({ "error": format!("this chain runs market {}", snap.market_id) }))).into_response();
    }
    Json(json!({
        "market_id": snap.market_id,
        "slots": snap.slots,
        "enrolled": snap.enrolled,
        "iteration": snap.iteration,
        "final": snap.is_final,
        "residuals": snap.residuals.iter().map(|(k, r)| json!({ "k": k, "primal": r[0], "dual": r[1], "eps_primal": r[2], "eps_dual": r[3] })).collect::<Vec<_>>(),
        "x_bar": snap.x_bar,
        "u": snap.u,
        "prices": snap.prices,
        "fixed_point_scale": circuits::fixed::SCALE,
    }))
    .into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let snap = s.snapshot.read().expect("snapshot lock").clone();
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, lines: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP gridproof_{name} {help}\n# TYPE gridproof_{name} {kind}\n"));
        for (labels, v) in lines {
            out.push_str(&format!("gridproof_{name}{labels} {v}\n"));
        }
    };
    metric("height", "Decided log height.", "gauge", vec![(String::new(), snap.height as f64)]);
    metric("iteration", "ADMM iterations decided.", "gauge", vec![(String::new(), snap.iteration as f64)]);
    metric("enrolled_devices", "Enrolled devices.", "gauge", vec![(String::new(), snap.enrolled as f64)]);
    metric("pooled_updates", "Updates pooled for the open iteration.", "gauge", vec![(String::new(), snap.pooled_updates as f64)]);
    metric(
        "unverified_updates",
        "Pooled updates waiting for a batch verification (a backlog here delays the commit).",
        "gauge",
        vec![(String::new(), snap.unverified_updates as f64)],
    );
    metric("commits_total", "Entries committed by consensus on this node.", "counter", vec![(String::new(), snap.stats.commits as f64)]);
    metric("synced_total", "Entries taken from peers by catch-up.", "counter", vec![(String::new(), snap.stats.synced as f64)]);
    metric("proofs_verified_total", "Update proofs in committed entries.", "counter", vec![(String::new(), snap.stats.proofs_verified as f64)]);
    metric(
        "commit_latency_ms",
        "Due time to commit of the last entry (ms).",
        "gauge",
        vec![(String::new(), snap.stats.last_commit_latency_ms.unwrap_or(0) as f64)],
    );
    metric("extra_rounds_total", "Consensus rounds beyond round 0.", "counter", vec![(String::new(), snap.stats.extra_rounds as f64)]);
    metric("invalid_proposals_total", "Proposals found invalid.", "counter", vec![(String::new(), snap.stats.invalid_payloads as f64)]);
    metric(
        "rejects_total",
        "Rejected messages by reason.",
        "counter",
        snap.stats.rejects.iter().map(|(k, v)| (format!("{{reason=\"{k}\"}}"), *v as f64)).collect(),
    );
    metric("peers_connected", "Outgoing peer links up.", "gauge", vec![(String::new(), s.net.peers_connected.load(Ordering::Relaxed) as f64)]);
    metric("dropped_full_total", "Messages dropped on a full queue.", "counter", vec![(String::new(), s.net.dropped_full.load(Ordering::Relaxed) as f64)]);
    metric(
        "bad_frames_total",
        "Frames refused (oversize, malformed, unknown peer).",
        "counter",
        vec![(String::new(), s.net.bad_frames.load(Ordering::Relaxed) as f64)],
    );
    metric("device_requests_total", "Device requests answered.", "counter", vec![(String::new(), s.net.device_requests.load(Ordering::Relaxed) as f64)]);
    metric(
        "rate_limited_total",
        "Device requests refused by the rate limit.",
        "counter",
        vec![(String::new(), s.net.rate_limited.load(Ordering::Relaxed) as f64)],
    );
    metric(
        "wrong_sender_total",
        "Device requests naming another device than their connection's key.",
        "counter",
        vec![(String::new(), s.net.wrong_sender.load(Ordering::Relaxed) as f64)],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
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
        .route("/markets/{id}", get(market))
        .route("/metrics", get(metrics))
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
