//! `verifier-node audit`: replays a stored log from genesis and checks everything a validator
//! checked — hash links and certificates (as a light client), every enrollment signature,
//! every update's signature and proof, every aggregate (recomputed by the fixed-point engine),
//! and the final schedule root and prices — with the same [`ChainApp::validate`] the
//! validators ran. The verdict names the first bad height.
//!
//! [`audit_range`] checks a height range in full: the entries before it are followed as a
//! light client (hash links, certificates, bodies against their digests) and applied without
//! re-verifying their proofs and aggregates, which is what a later range's aggregates are
//! computed from; the entries after it are not read.
//!
//! A database started from a checkpoint is audited from its base: the stored snapshot must
//! hash to the base entry's state root, and the base entry and everything after it are checked
//! in full on the restored state.
//!
//! A market whose update bodies were pruned (after its retention) cannot be re-checked: its
//! entries are followed by link and certificate and counted in
//! [`AuditReport::entries_pruned`], in the range or before it.

use protocol::entry::LightClient;
use prover::VerifierKeys;
use rand::{CryptoRng, RngCore};

use crate::app::ChainApp;
use crate::store::{Log, StoreError};

/// The outcome of an audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries that passed the full checks (the genesis counts when the range starts at 0).
    pub entries_ok: u64,
    /// Entries before the range, followed as a light client and applied unchecked.
    pub entries_followed: u64,
    /// Entries of pruned markets (in or before the range): link and certificate checked, no
    /// proofs or aggregates, which need the deleted bodies.
    pub entries_pruned: u64,
    /// The heights checked in full (the end clamped to the tip).
    pub range: (u64, u64),
    /// Update proofs re-verified.
    pub proofs_verified: usize,
    /// The first height that failed, and why.
    pub first_bad: Option<(u64, String)>,
    /// The checkpoint height the database starts from (its snapshot checked against that
    /// entry's state root), if it does not start at the genesis.
    pub base: Option<u64>,
}

impl AuditReport {
    /// Whether the whole log passed.
    pub fn passed(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Audits the whole log in `store` with the verifying keys the market uses.
pub fn audit<L: Log, R: RngCore + CryptoRng>(store: L, keys: VerifierKeys, rng: &mut R) -> Result<AuditReport, StoreError> {
    audit_range(store, keys, 0, None, rng)
}

/// Audits heights `from ..= to` (to the tip without `to`) of the log in `store` in full,
/// following the entries before `from` as a light client. A range that starts past the tip,
/// or ends before it starts, fails at `from`.
pub fn audit_range<L: Log, R: RngCore + CryptoRng>(store: L, keys: VerifierKeys, from: u64, to: Option<u64>, rng: &mut R) -> Result<AuditReport, StoreError> {
    let mut report = AuditReport { entries_ok: 0, entries_followed: 0, entries_pruned: 0, range: (from, to.unwrap_or(u64::MAX)), proofs_verified: 0, first_bad: None, base: None };
    let base = store.base()?;
    // A database started from a checkpoint is audited from its base.
    let from = base.map_or(from, |b| from.max(b));
    let Some((tip, _)) = store.tip()? else {
        report.first_bad = Some((0, "the log is empty".into()));
        return Ok(report);
    };
    let last = to.unwrap_or(tip).min(tip);
    report.range = (from, last);
    if from > last {
        report.first_bad = Some((from, format!("no heights to audit: the range {from}..={} and the tip {tip}", to.map_or("tip".to_string(), |t| t.to_string()))));
        return Ok(report);
    }
    let bad = |mut r: AuditReport, h: u64, why: String| {
        r.first_bad = Some((h, why));
        Ok(r)
    };
    let Some(genesis_entry) = store.certified(0)?.map(|c| c.entry) else { return bad(report, 0, "no genesis entry".into()) };
    let mut client = match LightClient::new(&genesis_entry) {
        Ok(c) => c,
        Err(e) => return bad(report, 0, e.to_string()),
    };
    let mut app = match ChainApp::new(&genesis_entry, keys) {
        Ok(a) => a,
        Err(e) => return bad(report, 0, e.to_string()),
    };
    if from == 0 {
        report.entries_ok = 1;
    } else {
        report.entries_followed = 1;
    }
    let mut first = 1;
    if let Some(b) = base {
        // The snapshot the base entry extends, checked against its state root; the base entry
        // itself is then checked in full like any other.
        let (Some(c), Some(bytes)) = (store.certified(b)?, store.snapshot(b)?) else { return bad(report, b, "the checkpoint entry or its snapshot is missing".into()) };
        let restored = protocol::snapshot::open(&c.entry, &bytes)
            .map_err(|e| e.to_string())
            .and_then(|snap| ChainApp::from_snapshot(&genesis_entry, app.keys().clone(), &snap).map_err(|e| e.to_string()));
        app = match restored {
            Ok(a) => a,
            Err(e) => return bad(report, b, format!("the checkpoint snapshot: {e}")),
        };
        client = match LightClient::at_checkpoint(&genesis_entry, &protocol::snapshot::Checkpoint { height: b - 1, hash: c.entry.prev_hash }) {
            Ok(cl) => cl,
            Err(e) => return bad(report, b, e.to_string()),
        };
        report.base = Some(b);
        first = b;
    }
    for h in first..=last {
        let c = match store.certified(h) {
            Ok(Some(c)) => c,
            Ok(None) => return bad(report, h, "entry or certificate missing".into()),
            // A missing update body shows up as a corrupt store.
            Err(e) => return bad(report, h, e.to_string()),
        };
        let market_pruned = c.entry.body.market_id().and_then(|id| app.market(id)).is_some_and(|m| m.is_pruned());
        if c.is_pruned() || market_pruned {
            let followed = if c.is_pruned() { client.accept_pruned(&c) } else { client.accept_certified(&c) };
            if let Err(e) = followed {
                return bad(report, h, e.to_string());
            }
            if let Err(r) = app.apply_certified(&c) {
                return bad(report, h, format!("pruned history, could not apply: {r}"));
            }
            report.entries_pruned += 1;
            continue;
        }
        if h < from {
            // Link, certificate, and the bodies against the entry's digests.
            if let Err(e) = client.accept_certified(&c) {
                return bad(report, h, e.to_string());
            }
            // Trusted as certified: applied for the state the range is checked against.
            if let Err(r) = app.apply(&c.entry, &c.updates) {
                return bad(report, h, format!("before the range, could not apply: {r}"));
            }
            report.entries_followed += 1;
            continue;
        }
        let (entry, updates) = (c.entry, c.updates);
        if let Err(e) = client.accept(&entry, &c.certificate) {
            return bad(report, h, e.to_string());
        }
        if let Err(r) = app.validate(&entry, &updates, &Default::default(), rng).and_then(|()| app.apply(&entry, &updates)) {
            return bad(report, h, r.to_string());
        }
        report.proofs_verified += updates.len();
        report.entries_ok += 1;
    }
    // Validators prune only final markets: bodies missing from a market that never finished
    // were lost or withheld, not pruned. (A range that ends before the tip may end before the
    // market's final entry.)
    if let Some(m) = app.markets().find(|m| last == tip && m.is_pruned() && !m.is_final()) {
        return bad(report, last, format!("market {} has no update bodies but no final entry either: they were not pruned by the rule", m.id()));
    }
    Ok(report)
}
