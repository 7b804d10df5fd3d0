//! The validator's Prometheus metrics (`GET /metrics`, OpenMetrics text through
//! prometheus-client): gauges and counters read from the node's snapshot and the edge's
//! counters at each scrape, and two histograms the edge observes as it runs — due → commit
//! latency of each committed entry, and the wall time of each batch verification of pooled
//! update proofs. Every name has the prefix `gridproof_`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::host::{NetCounters, Snapshot};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The histograms the edge observes (cheap to clone: they share their counts).
#[derive(Debug, Clone)]
pub struct Histograms {
    /// Due time → commit of each entry committed by consensus here, seconds.
    pub commit_latency: Histogram,
    /// Wall time of each batch verification of pooled update proofs, seconds.
    pub verify_batch: Histogram,
}

impl Default for Histograms {
    fn default() -> Histograms {
        Histograms {
            // 10 ms … ~82 s: a commit is due within a window of seconds; a late one shows.
            commit_latency: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            // 1 ms … ~16 s: one proof takes ~1 ms to verify in a batch.
            verify_batch: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }
}

impl Histograms {
    /// Records a commit `latency_ms` after it was due.
    pub fn commit(&self, latency_ms: u64) {
        self.commit_latency.observe(latency_ms as f64 / 1000.0);
    }

    /// Records one batch verification that took `took`.
    pub fn verified(&self, took: Duration) {
        self.verify_batch.observe(took.as_secs_f64());
    }
}

/// The metrics at this moment, in the OpenMetrics text format.
pub fn render(snap: &Snapshot, net: &NetCounters, histograms: &Histograms) -> String {
    let mut r = Registry::with_prefix("gridproof");
    let gauge = |v: u64| ConstGauge::new(v as i64);
    let counter = ConstCounter::new;
    let atomic = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    r.register("build", "The running build.", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
    r.register("height", "Decided log height.", gauge(snap.height));
    let per_market = |help: &str, f: &dyn Fn(&crate::host::MarketView) -> u64| {
        let family = Family::<Vec<(&'static str, String)>, Gauge>::default();
        for m in snap.markets.values() {
            family.get_or_create(&vec![("market", m.market_id.to_string())]).set(f(m) as i64);
        }
        (help.to_string(), family)
    };
    let (help, f) = per_market("ADMM iterations decided, per market.", &|m| m.iteration as u64);
    r.register("iteration", help, f);
    let (help, f) = per_market("Enrolled devices, per market.", &|m| m.enrolled as u64);
    r.register("enrolled_devices", help, f);
    r.register("pooled_updates", "Updates pooled for the open iteration.", gauge(snap.pooled_updates as u64));
    r.register(
        "unverified_updates",
        "Pooled updates waiting for a batch verification (a backlog here delays the commit).",
        gauge(snap.unverified_updates as u64),
    );
    r.register("commits", "Entries committed by consensus on this node.", counter(snap.stats.commits));
    r.register("synced", "Entries taken from peers by catch-up.", counter(snap.stats.synced));
    r.register("proofs_verified", "Update proofs in committed entries.", counter(snap.stats.proofs_verified));
    r.register_with_unit("commit_latency", "Due time to commit of the entries committed here.", Unit::Seconds, histograms.commit_latency.clone());
    r.register_with_unit("verify_batch", "Wall time of each batch verification of pooled update proofs.", Unit::Seconds, histograms.verify_batch.clone());
    r.register("extra_rounds", "Consensus rounds beyond round 0.", counter(snap.stats.extra_rounds));
    r.register("invalid_proposals", "Proposals found invalid.", counter(snap.stats.invalid_payloads));
    let rejects = Family::<Vec<(&'static str, String)>, prometheus_client::metrics::counter::Counter>::default();
    for (reason, n) in &snap.stats.rejects {
        rejects.get_or_create(&vec![("reason", reason.to_string())]).inc_by(*n);
    }
    r.register("rejects", "Rejected messages by reason.", rejects);
    r.register("peers_connected", "Outgoing peer links up.", gauge(atomic(&net.peers_connected)));
    r.register("dropped_full", "Messages dropped on a full queue.", counter(atomic(&net.dropped_full)));
    r.register("pruned_markets", "Markets whose update bodies were pruned after their retention.", counter(atomic(&net.pruned_markets)));
    r.register("pruned_bodies", "Update bodies pruned.", counter(atomic(&net.pruned_bodies)));
    r.register("snapshots_written", "Chain-state snapshots stored (for checkpoints).", counter(snap.stats.snapshots_written));
    r.register("snapshots_served", "Snapshots served to nodes and gateways starting from a checkpoint.", counter(atomic(&net.snapshots_served)));
    let sent = Family::<Vec<(&'static str, String)>, prometheus_client::metrics::counter::Counter>::default();
    for (kind, n) in net.peer_sent_bytes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        sent.get_or_create(&vec![("kind", kind.to_string())]).inc_by(*n);
    }
    r.register_with_unit("peer_sent", "Bytes queued to peers, by message kind (a broadcast counts once per link).", Unit::Bytes, sent);
    r.register("bodies_fetched", "Update bodies of compact proposals fetched from peers (not in the pool here).", counter(snap.stats.bodies_fetched));
    r.register("bodies_served", "Update bodies sent to peers that asked for them.", counter(snap.stats.bodies_served));
    r.register("bad_frames", "Frames refused (oversize, malformed, unknown peer).", counter(atomic(&net.bad_frames)));
    r.register("device_requests", "Device requests answered.", counter(atomic(&net.device_requests)));
    r.register("rate_limited", "Device requests refused by the rate limit.", counter(atomic(&net.rate_limited)));
    r.register("wrong_sender", "Device requests naming another device than their connection's key.", counter(atomic(&net.wrong_sender)));
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String does not fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_metric_once_with_its_type_and_the_histograms_count_observations() {
        let mut snap = Snapshot::default();
        snap.height = 7;
        snap.stats.rejects.insert("unattested", 3);
        let h = Histograms::default();
        h.commit(250);
        h.commit(1_500);
        h.verified(Duration::from_millis(12));
        let net = NetCounters::default();
        net.sent("payload", 100, 3);
        net.sent("payload", 10, 1);
        let text = render(&snap, &net, &h);
        assert!(text.contains("gridproof_peer_sent_bytes_total{kind=\"payload\"} 310\n"), "{text}");
        assert!(text.contains("gridproof_height 7\n"), "{text}");
        assert!(text.contains("gridproof_rejects_total{reason=\"unattested\"} 3\n"), "{text}");
        assert!(text.contains("gridproof_build_info{version=\""), "{text}");
        assert!(text.contains("gridproof_commit_latency_seconds_count 2\n"), "{text}");
        assert!(text.contains("gridproof_commit_latency_seconds_sum 1.75\n"), "{text}");
        assert!(text.contains("gridproof_verify_batch_seconds_count 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let names: std::collections::BTreeSet<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(types, names.len(), "a metric described twice");
    }
}
