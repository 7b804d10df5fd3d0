//! The effects Malachite's core asks of the node: timers, signing, verification, publishing,
//! the WAL, decisions.

use super::*;

impl<L: Log> Node<L> {
    pub(super) fn on_effect(&mut self, effect: Effect<GridContext>) -> Result<Resume<GridContext>, std::convert::Infallible> {
        Ok(match effect {
            Effect::CancelAllTimeouts(r) => {
                self.timers.clear();
                r.resume_with(())
            }
            Effect::CancelTimeout(t, r) => {
                self.timers.remove(&timeout_key(&t));
                r.resume_with(())
            }
            Effect::ScheduleTimeout(t, r) => {
                let mut d = self.cfg.timeouts.duration_for(t).as_millis() as u64;
                if t.kind == TimeoutKind::Propose {
                    d += self.app.enrolled_live() as u64 * PROPOSE_US_PER_DEVICE / 1000;
                }
                self.timers.insert(timeout_key(&t), (t, self.now + d));
                r.resume_with(())
            }
            Effect::StartRound(h, round, proposer, _role, r) => {
                debug!(validator = self.cfg.index, height = h.0, %round, %proposer, "round");
                if round.as_i64() > 0 && !self.replaying {
                    self.stats.extra_rounds += 1;
                }
                self.get_value = None;
                r.resume_with(())
            }
            Effect::PublishConsensusMsg(msg, r) => {
                if !self.replaying {
                    self.publish(&msg);
                }
                r.resume_with(())
            }
            Effect::PublishLivenessMsg(LivenessMsg::Vote(v), r) | Effect::RepublishVote(v, r) => {
                if !self.replaying {
                    self.out.push(Output::Broadcast(PeerMsg::Consensus { msg: v.message.to_wire(), signature: v.signature.0 }));
                }
                r.resume_with(())
            }
            // Polka and round certificates travel as the signed votes they are made of; the
            // receiver's core rebuilds them (and checks every signature) vote by vote.
            Effect::PublishLivenessMsg(LivenessMsg::PolkaCertificate(c), r) => {
                let votes = c
                    .polka_signatures
                    .iter()
                    .map(|s| {
                        let v = WireMsg::Vote { typ: 0, height: c.height.0, round: c.round.as_i64(), value: Some(c.value_id.0), validator: s.address.0 };
                        (v, s.signature.0)
                    })
                    .collect();
                if !self.replaying {
                    self.out.push(Output::Broadcast(PeerMsg::Votes { votes }));
                }
                r.resume_with(())
            }
            Effect::PublishLivenessMsg(LivenessMsg::SkipRoundCertificate(c), r) | Effect::RepublishRoundCertificate(c, r) => {
                let votes = c
                    .round_signatures
                    .iter()
                    .map(|s| {
                        let typ = match s.vote_type {
                            malachitebft_core_types::VoteType::Prevote => 0,
                            malachitebft_core_types::VoteType::Precommit => 1,
                        };
                        let value = match s.value_id {
                            malachitebft_core_types::NilOrVal::Nil => None,
                            malachitebft_core_types::NilOrVal::Val(v) => Some(v.0),
                        };
                        (WireMsg::Vote { typ, height: c.height.0, round: c.round.as_i64(), value, validator: s.address.0 }, s.signature.0)
                    })
                    .collect();
                if !self.replaying {
                    self.out.push(Output::Broadcast(PeerMsg::Votes { votes }));
                }
                r.resume_with(())
            }
            Effect::GetValue(_h, round, _timeout, r) => {
                // Built after this input is processed (the core is busy now).
                self.get_value = Some(round);
                r.resume_with(())
            }
            Effect::RestreamProposal(_h, round, valid_round, _addr, value, r) => {
                debug!(validator = self.cfg.index, %round, %valid_round, held = self.payloads.contains_key(&value), "restreaming {value}");
                if let Some(p) = self.payloads.get(&value) {
                    let msg = self.payload_msg(round.as_i64(), valid_round.as_i64(), &p.entry);
                    self.out.push(Output::Broadcast(msg));
                }
                r.resume_with(())
            }
            Effect::CertVerifiedSyncValue(_, _, r) => r.resume_with(()),
            Effect::CertRejectedSyncValue(_, _, _, r) => r.resume_with(()),
            Effect::Decide(cert, _ext, r) => {
                self.on_decide(&cert);
                r.resume_with(())
            }
            Effect::Finalize(_, _, _, r) => r.resume_with(()),
            Effect::SignVote(vote, r) => {
                let sig = self.ctx.sign(&self.key, &vote.to_wire());
                r.resume_with(SignedMessage::new(vote, sig))
            }
            Effect::SignProposal(p, r) => {
                let sig = self.ctx.sign(&self.key, &p.to_wire());
                r.resume_with(SignedMessage::new(p, sig))
            }
            Effect::VerifySignature(msg, pk, r) => {
                let wire = match &msg.message {
                    malachitebft_core_consensus::ConsensusMsg::Vote(v) => v.to_wire(),
                    malachitebft_core_consensus::ConsensusMsg::Proposal(p) => p.to_wire(),
                };
                r.resume_with(self.ctx.verify(&pk, &wire, &msg.signature))
            }
            Effect::VerifyCommitCertificate(cert, set, _th, r) => r.resume_with(self.verify_mc_cert(&cert, &set)),
            // We never feed synced values, polka or round certificates to the core (catch-up is
            // ours, see `on_sync_response`), so these are refused.
            Effect::VerifyExtendedCommitCertificate(_, _, _, _, r) => r.resume_with(Err(self.not_accepted())),
            Effect::VerifyPolkaCertificate(_, _, _, r) => r.resume_with(Err(self.not_accepted())),
            Effect::VerifyRoundCertificate(_, _, _, r) => r.resume_with(Err(self.not_accepted())),
            Effect::WalAppend(h, input, r) => {
                if let Some(rec) = Self::wal_record(&input) {
                    self.wal_append(h.0, &rec);
                }
                r.resume_with(())
            }
            Effect::ExtendVote(_, _, _, _, r) => r.resume_with(None),
            Effect::VerifyVoteExtension(_, _, _, _, _, _, r) => r.resume_with(Ok(())),
        })
    }

    pub(super) fn not_accepted(&self) -> CertificateError<GridContext> {
        CertificateError::NotEnoughVotingPower { signed: 0, total: self.validators.0.len() as u64, expected: 1 }
    }

    pub(super) fn verify_mc_cert(&self, cert: &McCert<GridContext>, set: &ValidatorSet) -> Result<(), CertificateError<GridContext>> {
        let mut signers = BTreeSet::new();
        for s in &cert.commit_signatures {
            let Some(v) = set.0.get(s.address.0 as usize) else { return Err(CertificateError::UnknownValidator(s.address)) };
            let wire = WireMsg::Vote { typ: 1, height: cert.height.0, round: cert.round.as_i64(), value: Some(cert.value_id.0), validator: s.address.0 };
            if !self.ctx.verify(&v.key, &wire, &s.signature) {
                return Err(CertificateError::InvalidCommitSignature(s.clone()));
            }
            signers.insert(s.address);
        }
        let n = set.0.len() as u64;
        let signed = signers.len() as u64;
        if signed * 3 <= n * 2 {
            return Err(CertificateError::NotEnoughVotingPower { signed, total: n, expected: n * 2 / 3 + 1 });
        }
        Ok(())
    }

    pub(super) fn publish(&mut self, msg: &SignedConsensusMsg<GridContext>) {
        let (wire, signature) = signed_to_wire(msg);
        if let (Some(Byzantine::Equivocate), SignedConsensusMsg::Proposal(p), Some((round, twin))) = (self.cfg.byzantine, msg, self.twin.clone())
        {
            if p.message.round.as_i64() == round {
                // Half the peers get the twin entry and a signed proposal for it.
                let mut alt = p.message.clone();
                alt.value = EntryHash(twin.hash());
                let alt_sig = self.ctx.sign(&self.key, &alt.to_wire());
                for to in 0..self.validators.0.len() as u16 {
                    if to == self.cfg.index {
                        continue;
                    }
                    if to % 2 == 0 {
                        let payload = self.payload_msg(round, -1, &twin);
                        self.out.push(Output::Send { to, msg: payload });
                        self.out.push(Output::Send { to, msg: PeerMsg::Consensus { msg: alt.to_wire(), signature: alt_sig.0 } });
                    } else {
                        self.out.push(Output::Send { to, msg: PeerMsg::Consensus { msg: wire.clone(), signature } });
                    }
                }
                return;
            }
        }
        self.out.push(Output::Broadcast(PeerMsg::Consensus { msg: wire, signature }));
    }
}
