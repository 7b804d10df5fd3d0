//! A decision: the certificate from the precommits, the entry with the bodies it names, one
//! synced write, then the app and the pools move on.

use super::*;

impl<L: Log> Node<L> {
    pub(super) fn on_decide(&mut self, cert: &McCert<GridContext>) {
        let h = cert.height.0;
        // Taken, not cloned (its bodies are megabytes): the height's payloads go at the commit.
        let Some(HeldPayload { entry, updates, validity, .. }) = self.payloads.remove(&cert.value_id) else {
            warn!(validator = self.cfg.index, height = h, "decided {} without its payload; syncing", cert.value_id);
            self.request_sync(None);
            return;
        };
        let mut votes: Vec<LogVote> =
            cert.commit_signatures.iter().map(|s| LogVote { validator: s.address.0, signature: SignatureBytes(s.signature.0) }).collect();
        votes.sort_by_key(|v| v.validator);
        votes.dedup_by_key(|v| v.validator);
        let round = cert.round.as_u32().unwrap_or(0);
        let certificate = CommitCertificate { height: h, round, hash: cert.value_id.0, votes };
        let certified = Arc::new(Certified { entry, certificate, updates });
        // The payload held is the first copy that arrived under this hash, and the hash covers
        // the bodies' digests only: a Byzantine proposer may have sent this node other bodies
        // (or none) than the quorum validated. Commit only the bodies the entry names. (A
        // payload this node validated holds exactly those, in the entry's order: validation
        // checked their digests against the entry's and a held payload is kept ascending.)
        let checked = if validity == Some(true) { Ok(()) } else { protocol::entry::check_bodies(&certified) };
        if let Err(e) = checked {
            warn!(validator = self.cfg.index, height = h, "decided {} but the payload held here does not carry its bodies ({e}); syncing", cert.value_id);
            *self.stats.rejects.entry("decided_without_bodies").or_default() += 1;
            self.request_sync(None);
            return;
        }
        // When this height was due, read before `commit` clears the running height.
        let due = self.running.filter(|r| r.0 == h).map(|r| r.1).unwrap_or(self.now);
        if let Err(e) = self.commit(certified.clone()) {
            return self.fail(format!("committing height {h}: {e}"));
        }
        let latency = self.now.saturating_sub(due);
        self.stats.commits += 1;
        self.stats.last_commit_latency_ms = Some(latency);
        self.stats.commit_latency_sum_ms += latency;
        info!(validator = self.cfg.index, height = h, round, kind = body_kind(&certified.entry.body), latency_ms = latency, "committed {}", cert.value_id);
    }

    /// Stores a certified entry, applies it, prunes the pools, and announces it.
    pub(super) fn commit(&mut self, c: Arc<Certified>) -> Result<(), String> {
        self.log.decide(&c).map_err(|e| e.to_string())?;
        self.maybe_snapshot(&c.entry).map_err(|e| e.to_string())?;
        // (A pruned entry comes only from sync, after its checks there.)
        self.app.apply_certified(&c).map_err(|e| format!("a certified entry does not apply: {e}"))?;
        if let Body::Iteration(_) = &c.entry.body {
            self.stats.proofs_verified += c.updates.len() as u64;
        }
        self.pools.after_commit(&self.app, &c.entry.body, self.now);
        self.running = None;
        self.timers.clear();
        self.get_value = None;
        self.payloads.retain(|_, p| p.entry.height > c.entry.height);
        self.out.push(Output::Committed(c));
        Ok(())
    }
}
