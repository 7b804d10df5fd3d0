//! Messages from other validators: checked at the door, then fed to the core; catch-up by
//! certified sync.

use super::*;

impl<L: Log> Node<L> {
    /// A message from validator `from`, arriving at `now`. Every field is checked before any
    /// of it is used ([`PeerMsg::check`], then the height and the sender's quotas); a refusal
    /// is counted by its label and stores nothing of the message.
    pub fn on_peer(&mut self, now: u64, from: u16, msg: PeerMsg) -> Vec<Output> {
        self.now = self.now.max(now);
        if self.fatal.is_some() {
            return vec![];
        }
        if let Err(why) = msg.check(from, self.cfg.index, self.validators.0.len()) {
            self.refuse_peer(from, &why);
            return self.drain();
        }
        match msg {
            PeerMsg::Consensus { msg, signature } => self.on_consensus(from, msg, signature),
            PeerMsg::Votes { votes } => {
                for (msg, signature) in votes {
                    self.on_consensus(from, msg, signature);
                }
            }
            PeerMsg::Payload { round, valid_round, proposer, entry, updates } => {
                if let Err(why) =
                    self.on_payload(Announcement { height: entry.height, round, hash: EntryHash(entry.hash()), valid_round, proposer }, entry, updates)
                {
                    self.refuse_peer(from, &why);
                }
            }
            PeerMsg::Status { tip } => {
                // The peer decided the height this node is still working on (or more).
                if tip > self.app.tip().height {
                    self.request_sync(Some(from));
                }
            }
            PeerMsg::SyncRequest { from: first } => self.on_sync_request(from, first),
            PeerMsg::SyncResponse { entries } => self.on_sync_response(entries),
            PeerMsg::BodiesWanted { entry, digests } => {
                if let Err(why) = self.on_bodies_wanted(from, EntryHash(entry), digests) {
                    self.refuse_peer(from, &why);
                }
            }
            PeerMsg::Bodies { entry, updates } => {
                if let Err(why) = self.on_bodies(from, EntryHash(entry), updates) {
                    self.refuse_peer(from, &why);
                }
            }
        }
        self.drain()
    }

    pub(super) fn refuse_peer(&mut self, from: u16, why: &PeerReject) {
        debug!(validator = self.cfg.index, from, "peer message refused: {why}");
        *self.stats.rejects.entry(why.label()).or_default() += 1;
    }

    /// A proposal or vote whose fields passed [`PeerMsg::check`].
    pub(super) fn on_consensus(&mut self, from: u16, msg: WireMsg, signature: [u8; 64]) {
        let Ok(decoded) = msg.decode() else { return };
        let height = match &decoded {
            Decoded::Vote(v) => v.height.0,
            Decoded::Proposal(p) => p.height.0,
        };
        let next = self.app.tip().height + 1;
        if height < next {
            return;
        }
        if height > next + 1 {
            self.request_sync(Some(from));
            return;
        }
        let input = match decoded {
            Decoded::Vote(v) => Input::Vote(SignedMessage::new(v, Signature(signature))),
            Decoded::Proposal(p) => Input::Proposal(SignedMessage::new(p, Signature(signature))),
        };
        self.process(input);
    }

    /// A payload whose round, valid round and proposer (= sender) passed [`PeerMsg::check`].
    /// It is held if its height is the next or the one after and its proposer is within its
    /// quotas, and fed to the core once its height runs.
    pub(super) fn on_payload(&mut self, a: Announcement, entry: Entry, updates: Vec<SignedUpdate>) -> Result<(), PeerReject> {
        let next = self.app.tip().height + 1;
        if a.height < next {
            return Ok(()); // Late: that height is decided here.
        }
        if a.height > next + 1 {
            return Err(PeerReject::PayloadHeight { height: a.height, next });
        }
        if self.announced.contains(&a) {
            return Ok(());
        }
        let announced = self.announced.iter().filter(|x| x.proposer == a.proposer).count();
        if announced >= MAX_ANNOUNCED_PER_PROPOSER {
            return Err(PeerReject::Quota { proposer: a.proposer, what: "announcements", held: announced, max: MAX_ANNOUNCED_PER_PROPOSER });
        }
        if !self.payloads.contains_key(&a.hash) {
            // A proposer at its quota loses its payload of the lowest round: an honest one
            // proposes a new entry each round it leads, and a height must not stop deciding
            // after a few rounds. (A value decided without its payload is synced.)
            let mine = |p: &HeldPayload| p.proposer == a.proposer && p.proposer != self.cfg.index;
            if self.payloads.values().filter(|p| mine(p)).count() >= MAX_PAYLOADS_PER_PROPOSER {
                if let Some(old) = self.payloads.iter().filter(|(_, p)| mine(p)).min_by_key(|(_, p)| (p.entry.height, p.round)).map(|(h, _)| *h) {
                    self.payloads.remove(&old);
                    self.announced.retain(|x| x.hash != old);
                }
            }
            if self.payloads.len() >= MAX_PAYLOADS {
                return Err(PeerReject::Quota { proposer: a.proposer, what: "payloads in all", held: self.payloads.len(), max: MAX_PAYLOADS });
            }
            let (updates, missing) = self.assemble(a.hash, &entry, updates)?;
            let missing = (!missing.is_empty()).then(|| self.ask_bodies(a.hash, a.proposer, missing));
            self.payloads.insert(a.hash, HeldPayload { entry, updates, missing, validity: None, proposer: a.proposer, round: a.round });
        }
        self.announced.insert(a);
        debug!(validator = self.cfg.index, height = a.height, round = a.round, proposer = a.proposer, "payload {} received", a.hash);
        if self.running.map(|r| r.0) == Some(a.height) {
            self.feed_payload(a);
        }
        Ok(())
    }

    /// Validates a held payload (once) and hands the core its verdict for the announced round.
    pub(super) fn feed_payload(&mut self, a: Announcement) {
        let Announcement { round, hash, valid_round, proposer, .. } = a;
        // Fed once every body is held (`on_bodies`).
        // (Borrowed, not cloned: the bodies are megabytes.)
        let Some(p) = self.payloads.get(&hash).filter(|p| p.missing.is_none()) else { return };
        let height = p.entry.height;
        let valid = match p.validity {
            Some(v) => v,
            None => {
                let drift = self.app.genesis().max_clock_drift_ms;
                let verdict = if p.entry.timestamp_ms > self.now.saturating_add(drift) {
                    Err(Reject::NotDue(format!("timestamp {} is ahead of this node's clock {}", p.entry.timestamp_ms, self.now)))
                } else {
                    self.app.validate(&p.entry, &p.updates, &self.pools.verified, &mut self.rng)
                };
                let bodies = p.updates.len();
                let record = WalRecord::encode_payload(&p.entry, &p.updates);
                if let Err(why) = &verdict {
                    warn!(validator = self.cfg.index, height, proposer, "invalid proposal {hash}: {why}");
                    self.stats.invalid_payloads += 1;
                    self.count(why);
                }
                let ok = verdict.is_ok();
                debug!(validator = self.cfg.index, height, round, proposer, updates = bodies, valid = ok, "validated payload {hash}");
                if let Some(p) = self.payloads.get_mut(&hash) {
                    p.validity = Some(ok);
                }
                self.wal_append_bytes(height, &record);
                ok
            }
        };
        // Rounds were checked at the door (0..=MAX_ROUND, −1..round): `Round::from` holds.
        let pv = ProposedValue {
            height: Height(height),
            round: Round::from(round),
            valid_round: Round::from(valid_round),
            proposer: Address(proposer),
            value: hash,
            validity: if valid { Validity::Valid } else { Validity::Invalid },
        };
        self.process(Input::ProposedValue(pv, ValueOrigin::Consensus));
    }

    pub(super) fn request_sync(&mut self, peer: Option<u16>) {
        if self.sync_sent.is_some_and(|t| self.now < t + SYNC_RETRY_MS) {
            return;
        }
        self.sync_sent = Some(self.now);
        let msg = PeerMsg::SyncRequest { from: self.app.tip().height + 1 };
        match peer {
            Some(to) => self.out.push(Output::Send { to, msg }),
            None => self.out.push(Output::Broadcast(msg)),
        }
    }

    pub(super) fn on_sync_request(&mut self, from: u16, first: u64) {
        let tip = self.app.tip().height;
        if first == 0 || first > tip {
            return;
        }
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for h in first..=tip.min(first + MAX_SYNC_BATCH as u64 - 1) {
            match self.log.certified(h) {
                Ok(Some(c)) => {
                    bytes += protocol::codec::encode(&c).len();
                    entries.push(c);
                    if bytes > crate::consensus::wire::MAX_PEER_FRAME / 2 {
                        break;
                    }
                }
                _ => break,
            }
        }
        if !entries.is_empty() {
            self.out.push(Output::Send { to: from, msg: PeerMsg::SyncResponse { entries } });
        }
    }

    pub(super) fn on_sync_response(&mut self, entries: Vec<Certified>) {
        self.sync_sent = None;
        let mut advanced = false;
        for mut c in entries.into_iter().take(MAX_SYNC_BATCH) {
            let next = self.app.tip().height + 1;
            if c.entry.height < next {
                continue;
            }
            if c.entry.height > next {
                break;
            }
            if c.certificate.height != c.entry.height || c.certificate.hash != c.entry.hash() {
                *self.stats.rejects.entry("sync_bad_certificate").or_default() += 1;
                break;
            }
            if let Err(e) = c.certificate.verify(&self.app.chain(), &self.app.genesis().validators) {
                warn!(validator = self.cfg.index, height = c.entry.height, "synced certificate refused: {e}");
                *self.stats.rejects.entry("sync_bad_certificate").or_default() += 1;
                break;
            }
            // Pruned history (a market's bodies deleted after it executed) is followed by
            // certificate alone: its proofs and aggregates cannot be re-checked without the
            // bodies. Only for a market whose execution is over by this node's clock, the
            // earliest any honest validator prunes: bodies withheld earlier are refused.
            let market = c.entry.body.market_id().and_then(|id| self.app.market(id));
            if c.is_pruned() || market.is_some_and(|m| m.is_pruned()) {
                if !market.is_some_and(|m| protocol::market::over_by_clock(m.spec(), self.now)) {
                    warn!(validator = self.cfg.index, height = c.entry.height, "synced entry without its update bodies refused: its market has not executed yet");
                    *self.stats.rejects.entry("sync_pruned_early").or_default() += 1;
                    break;
                }
                // Kept as pruned history: bodies a peer sends along are not checked, so not kept.
                c.updates.clear();
            } else if let Err(e) = self.app.validate(&c.entry, &c.updates, &self.pools.verified, &mut self.rng) {
                warn!(validator = self.cfg.index, height = c.entry.height, "synced entry refused: {e}");
                self.count(&e);
                break;
            }
            let height = c.entry.height;
            if let Err(e) = self.commit(Arc::new(c)) {
                return self.fail(format!("storing synced height {height}: {e}"));
            }
            self.stats.synced += 1;
            advanced = true;
            info!(validator = self.cfg.index, height, "synced");
        }
        if advanced {
            // Rejoin at the new height: a fresh core state (the old height is over).
            self.state = Some(self.new_state());
            self.running = None;
            self.timers.clear();
            self.announced.retain(|a| a.height > self.app.tip().height);
        }
    }
}
