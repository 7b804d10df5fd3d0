//! The round's proposer: builds the due entry from the pools, writes it ahead, sends the
//! payload and hands its hash to the core.

use super::*;

impl<L: Log> Node<L> {
    /// As the round's proposer: builds the due entry and proposes its hash.
    pub(super) fn propose(&mut self) {
        let Some(round) = self.get_value else { return };
        let Some((h, _)) = self.running else { return };
        if let Some(hash) = self.own_proposals.get(&(h, round.as_i64())).copied() {
            // Proposed before a restart: the same entry again, never a second one.
            if let Some(entry) = self.payloads.get(&hash).map(|p| p.entry.clone()) {
                info!(validator = self.cfg.index, height = h, %round, "re-proposing {hash} after a restart");
                let msg = self.payload_msg(round.as_i64(), -1, &entry);
                self.out.push(Output::Broadcast(msg));
                self.get_value = None;
                self.process(Input::Propose(LocallyProposedValue::new(Height(h), round, hash)));
            }
            return;
        }
        let snapshot = self.pools.snapshot();
        let built = self.app.build(self.now, snapshot.view(), &self.pools.verified, &mut self.rng);
        let crate::app::Built { mut entry, updates: mut included, dropped } = match built {
            Ok(b) => b,
            Err(e) => {
                // Retried at every tick while this round lasts (e.g. between the closing
                // batch and the first deadline nothing is due).
                debug!(validator = self.cfg.index, height = h, "cannot build an entry yet: {e}");
                return;
            }
        };
        for d in &dropped {
            self.count(&d.why);
            debug!(validator = self.cfg.index, market = d.market_id, device = %d.device, "dropped from the proposal: {}", d.why);
            if matches!(d.why, Reject::BadProof(_)) {
                let key = (d.market_id, d.device);
                if self.cfg.byzantine == Some(Byzantine::IncludeInvalidProofs) {
                    if let Some(p) = self.pools.updates.get(&key) {
                        included.push(p.update.clone());
                    }
                } else {
                    self.pools.remove_update(&key);
                }
            }
        }
        match (self.cfg.byzantine, &mut entry.body) {
            (Some(Byzantine::IncludeInvalidProofs), Body::Iteration(b)) => {
                included.sort_by_cached_key(SignedUpdate::digest);
                if let Ok(body) = self.app.iteration_body(b.market_id, b.iteration, &included) {
                    *b = body;
                }
            }
            (Some(Byzantine::WrongAggregates), Body::Iteration(b)) => b.u[0] = b.u[0].wrapping_add(1000),
            (Some(Byzantine::WrongAggregates), Body::Final(f)) => f.prices[0] = f.prices[0].wrapping_add(1000),
            (Some(Byzantine::WrongAggregates), Body::Settlement(s)) => {
                if let Some(b) = s.bills.first_mut() {
                    b.energy = b.energy.wrapping_add(1000);
                }
            }
            (Some(Byzantine::Equivocate), _) => {
                let mut twin = entry.clone();
                twin.timestamp_ms += 1;
                let held = HeldPayload {
                    entry: twin.clone(),
                    updates: included.clone(),
                    missing: None,
                    validity: Some(true),
                    proposer: self.cfg.index,
                    round: round.as_i64(),
                };
                self.payloads.insert(EntryHash(twin.hash()), held);
                self.twin = Some((round.as_i64(), twin));
            }
            _ => {}
        }
        let hash = EntryHash(entry.hash());
        info!(validator = self.cfg.index, height = h, %round, kind = body_kind(&entry.body), updates = included.len(), "proposing {hash}");
        let record = WalRecord::encode_payload(&entry, &included);
        let len = record.len();
        if len > MAX_WAL_RECORD {
            // More updates than one frame carries: proposing it would be refused by every
            // peer and cannot be written ahead. Not fatal: this round passes without it.
            warn!(validator = self.cfg.index, height = h, %round, bytes = len, "the due entry is too large to propose");
            *self.stats.rejects.entry("proposal_oversize").or_default() += 1;
            self.get_value = None;
            return;
        }
        self.wal_append_bytes(h, &record);
        drop(record);
        self.wal_append(h, &WalRecord::Proposed { round: round.as_i64(), value: hash.0 });
        self.own_proposals.insert((h, round.as_i64()), hash);
        self.payloads.insert(
            hash,
            HeldPayload { entry: entry.clone(), updates: included, missing: None, validity: Some(true), proposer: self.cfg.index, round: round.as_i64() },
        );
        // The entry alone: peers fill its bodies from their pools and ask for the rest.
        let msg = self.payload_msg(round.as_i64(), -1, &entry);
        if self.twin.is_none() {
            self.out.push(Output::Broadcast(msg));
        } else {
            // The equivocating proposer sends each half its own payload.
            for to in (0..self.validators.0.len() as u16).filter(|t| *t != self.cfg.index && t % 2 == 1) {
                self.out.push(Output::Send { to, msg: msg.clone() });
            }
        }
        self.get_value = None;
        self.process(Input::Propose(LocallyProposedValue::new(Height(h), round, hash)));
    }
}
