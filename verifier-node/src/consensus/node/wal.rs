//! The consensus write-ahead log: which core inputs are recorded, and how a restarted node
//! replays them.

use super::*;

impl<L: Log> Node<L> {
    /// The WAL records of height `h`, strictly: a record that does not decode (within
    /// [`MAX_WAL_RECORD`]) or whose fields are out of range stops the node with an error naming
    /// the height and sequence number; nothing is skipped.
    pub(super) fn read_wal(&self, h: u64) -> Result<Vec<WalRecord>, NodeError> {
        let items = self.log.wal(h)?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let bad = |reason: String| NodeError::Wal { height: h, seq: item.seq, reason };
            let record: WalRecord = protocol::codec::decode("wal record", &item.bytes, MAX_WAL_RECORD).map_err(|e| bad(e.to_string()))?;
            record.check(self.validators.0.len()).map_err(|e| bad(e.to_string()))?;
            out.push(record);
        }
        Ok(out)
    }

    pub(super) fn wal_input(&self, r: &WalRecord) -> Option<Input<GridContext>> {
        match r {
            // Records passed `WalRecord::check` in `read_wal`: rounds are in range.
            WalRecord::Consensus { msg, signature } => match msg.decode().ok()? {
                Decoded::Vote(v) => Some(Input::Vote(SignedMessage::new(v, Signature(*signature)))),
                Decoded::Proposal(p) => Some(Input::Proposal(SignedMessage::new(p, Signature(*signature)))),
            },
            WalRecord::ProposedValue { round, valid_round, proposer, value, valid } => Some(Input::ProposedValue(
                ProposedValue {
                    height: Height(self.app.tip().height + 1),
                    round: Round::from(*round),
                    valid_round: Round::from(*valid_round),
                    proposer: Address(*proposer),
                    value: EntryHash(*value),
                    validity: if *valid { Validity::Valid } else { Validity::Invalid },
                },
                ValueOrigin::Consensus,
            )),
            WalRecord::Timeout { kind, round } => timeout_from(*kind, *round).map(Input::TimeoutElapsed),
            WalRecord::Payload { .. } | WalRecord::Proposed { .. } => None,
        }
    }

    pub(super) fn wal_record(input: &Input<GridContext>) -> Option<WalRecord> {
        match input {
            Input::Vote(v) => Some(WalRecord::Consensus { msg: v.message.to_wire(), signature: v.signature.0 }),
            Input::Proposal(p) => Some(WalRecord::Consensus { msg: p.message.to_wire(), signature: p.signature.0 }),
            Input::ProposedValue(pv, _) => Some(WalRecord::ProposedValue {
                round: pv.round.as_i64(),
                valid_round: pv.valid_round.as_i64(),
                proposer: pv.proposer.0,
                value: pv.value.0,
                valid: pv.validity.is_valid(),
            }),
            Input::TimeoutElapsed(t) => match timeout_key(t) {
                TimeoutKey(k, r) if k < 4 => Some(WalRecord::Timeout { kind: k, round: r }),
                _ => None,
            },
            _ => None,
        }
    }

    pub(super) fn wal_append(&mut self, height: u64, record: &WalRecord) {
        if !self.replaying {
            self.wal_append_bytes(height, &protocol::codec::encode(record));
        }
    }

    /// Appends an encoded [`WalRecord`] (e.g. [`WalRecord::encode_payload`]) to the WAL of
    /// `height`, unless replaying; a failed write is fatal.
    pub(super) fn wal_append_bytes(&mut self, height: u64, record: &[u8]) {
        if self.replaying {
            return;
        }
        if let Err(e) = self.log.wal_append(height, record) {
            self.fail(format!("writing the WAL: {e}"));
        }
    }
}
