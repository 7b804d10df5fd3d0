//! Meter readings and settlement in the chain app (DESIGN §9, docs/protocol.md §9): the checks
//! of a reading, `Meter` entries (chain entries carried by readings, built when no market entry
//! is due), a settling market's `Settlement` entry (a market entry due at its meter deadline),
//! and the ledger of every device's balance across settled markets.

use std::collections::BTreeMap;

use protocol::entry::Body;
use protocol::ids::DeviceId;
use protocol::settlement::{Bill, MeterBatch, ReadingError, SettlementBody, SignedReading, MAX_READINGS_PER_ENTRY, MAX_READINGS_PER_REQUEST};

use super::{ChainApp, Market, Reject};

/// Most bills an account keeps (its latest); the balance counts every one.
pub const MAX_BILLS_PER_ACCOUNT: usize = 8;

/// A device's account on the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    /// Σ of its settled bills (µ€; positive = it owes).
    pub balance: i64,
    /// Its latest bills, with their market ids, in settlement order.
    pub bills: Vec<(u64, Bill)>,
}

impl ChainApp {
    /// The accounts of every device settled so far, by device.
    pub fn accounts(&self) -> &BTreeMap<DeviceId, Account> {
        &self.accounts
    }

    /// Market `id` if it takes readings: it settles, its final entry is in, its settlement
    /// entry is not.
    fn settling_market(&self, id: u64) -> Result<&Market, Reject> {
        let m = self.markets.get(&id).ok_or(Reject::UnknownMarket(id))?;
        let not = |why| Reject::Reading(ReadingError::NotSettling { market_id: id, why });
        if m.spec().settlement.is_none() {
            return Err(not("it does not settle"));
        }
        if !m.is_final() {
            return Err(not("its final entry is not in yet"));
        }
        if m.is_settled() {
            return Err(not("it is settled"));
        }
        Ok(m)
    }

    /// The checks of a reading at `at_ms` (an entry's timestamp, or the arrival time for
    /// admission): signed by the device, for a settling market, a slot of it that has ended,
    /// before the meter deadline, a device of its final schedule, no reading of that slot yet,
    /// within the device's attested nameplate (−export ≤ energy ≤ import).
    pub fn check_reading(&self, r: &SignedReading, at_ms: u64) -> Result<(), Reject> {
        r.verify(&self.chain).map_err(|e| Reject::BadSignature(e.to_string()))?;
        self.check_reading_state(r, at_ms)
    }

    /// [`Self::check_reading`] without the signature: what a proposer checks of a pooled
    /// reading, whose signature was verified at admission (validation checks it again).
    fn check_reading_state(&self, r: &SignedReading, at_ms: u64) -> Result<(), Reject> {
        let (id, device, slot) = (r.body.market_id, r.body.device, r.body.slot);
        let m = self.settling_market(id)?;
        let spec = m.spec();
        if slot >= spec.slots as u32 {
            return Err(ReadingError::SlotOutOfRange { slot, t: spec.slots }.into());
        }
        let ends_ms = protocol::settlement::slot_end_ms(spec, slot);
        if at_ms < ends_ms {
            return Err(ReadingError::NotExecuted { slot, ends_ms, at_ms }.into());
        }
        let deadline_ms = m.meter_deadline().unwrap_or_default();
        if at_ms >= deadline_ms {
            return Err(ReadingError::AfterDeadline { deadline_ms, at_ms }.into());
        }
        let Some(s) = m.settling() else { return Err(Reject::Pruned(id)) };
        let unknown = || Reject::Reading(ReadingError::UnknownDevice { market_id: id, device });
        if !s.schedules.contains_key(&device) {
            return Err(unknown());
        }
        if s.readings.contains_key(&(device, slot)) {
            return Err(ReadingError::Duplicate { device, slot }.into());
        }
        let limits = m.enrolled().get(&device).ok_or_else(unknown)?.limits;
        if r.body.energy > limits.import_w as i64 || r.body.energy < -(limits.export_w as i64) {
            return Err(ReadingError::Implausible { device, slot, energy: r.body.energy, import_w: limits.import_w, export_w: limits.export_w }.into());
        }
        Ok(())
    }

    /// Whether a reading could still be included: its market is settling and holds no
    /// reading of that (device, slot) yet (what a pool keeps after each commit; the full
    /// checks run again when an entry is built).
    pub fn reading_pending(&self, r: &SignedReading) -> bool {
        self.settling_market(r.body.market_id).ok().and_then(Market::settling).is_some_and(|s| !s.readings.contains_key(&(r.body.device, r.body.slot)))
    }

    /// Admission of one device's readings arriving at `now_ms`: 1 to
    /// [`MAX_READINGS_PER_REQUEST`] of one market and one device, strictly ascending by slot,
    /// each passing [`Self::check_reading`] — except that a reading the market already
    /// committed, with the same energy, is skipped (a gateway sending again what it has not
    /// seen committed yet). Returns the readings to pool.
    pub fn admit_readings(&self, now_ms: u64, list: &[SignedReading]) -> Result<Vec<SignedReading>, Reject> {
        let Some(first) = list.first() else { return Err(ReadingError::Batch("no readings").into()) };
        if list.len() > MAX_READINGS_PER_REQUEST {
            return Err(ReadingError::Batch("more readings than one request may carry").into());
        }
        if list.iter().any(|r| r.body.market_id != first.body.market_id || r.body.device != first.body.device) {
            return Err(ReadingError::Batch("readings of several markets or devices in one request").into());
        }
        if !list.windows(2).all(|w| w[0].body.slot < w[1].body.slot) {
            return Err(ReadingError::Batch("slots not strictly ascending").into());
        }
        let committed = |r: &SignedReading| self.settling_market(r.body.market_id).ok().and_then(Market::settling).and_then(|s| s.readings.get(&(r.body.device, r.body.slot)).copied());
        list.iter()
            .filter_map(|r| match self.check_reading(r, now_ms) {
                Ok(()) => Some(Ok(*r)),
                Err(Reject::Reading(ReadingError::Duplicate { .. })) if committed(r) == Some(r.body.energy) => None,
                Err(e) => Some(Err(e)),
            })
            .collect()
    }

    /// A meter entry from the pooled readings at `at_ms` (signatures verified at admission):
    /// those of the lowest market id that has any passing the other checks, up to
    /// [`MAX_READINGS_PER_ENTRY`], ascending by (device, slot). It stops at that many.
    pub(super) fn build_meter(&self, at_ms: u64, pool: &[SignedReading]) -> Option<Body> {
        let mut chosen: Option<(u64, BTreeMap<(DeviceId, u32), SignedReading>)> = None;
        for r in pool {
            if chosen.as_ref().is_some_and(|(id, list)| r.body.market_id > *id || (r.body.market_id == *id && list.len() == MAX_READINGS_PER_ENTRY)) {
                continue;
            }
            if self.check_reading_state(r, at_ms).is_err() {
                continue;
            }
            match &mut chosen {
                Some((id, list)) if *id == r.body.market_id => {
                    list.entry((r.body.device, r.body.slot)).or_insert(*r);
                }
                _ => chosen = Some((r.body.market_id, BTreeMap::from([((r.body.device, r.body.slot), *r)]))),
            }
        }
        let (market_id, readings) = chosen?;
        Some(Body::Meter(MeterBatch { market_id, readings: readings.into_values().collect() }))
    }

    /// A meter entry at `at_ms`: 1 to [`MAX_READINGS_PER_ENTRY`] readings of its market,
    /// strictly ascending by (device, slot), each passing [`Self::check_reading`].
    pub(super) fn validate_meter(&self, batch: &MeterBatch, at_ms: u64) -> Result<(), Reject> {
        if batch.readings.is_empty() || batch.readings.len() > MAX_READINGS_PER_ENTRY {
            return Err(ReadingError::Batch("a meter entry holds 1 to 4096 readings").into());
        }
        if batch.readings.iter().any(|r| r.body.market_id != batch.market_id) {
            return Err(ReadingError::Batch("a reading of another market").into());
        }
        if !batch.readings.windows(2).all(|w| (w[0].body.device, w[0].body.slot) < (w[1].body.device, w[1].body.slot)) {
            return Err(ReadingError::Batch("readings not strictly ascending by (device, slot)").into());
        }
        batch.readings.iter().try_for_each(|r| self.check_reading(r, at_ms))
    }

    /// A settlement entry for the market due: exactly the body the settlement rule computes.
    pub(super) fn validate_settlement(&self, market: &Market, body: &SettlementBody) -> Result<(), Reject> {
        if *body != market.settlement_body()? {
            return Err(Reject::WrongAggregates);
        }
        Ok(())
    }

    /// Applies a meter entry: its readings join the market's.
    pub(super) fn apply_meter(&mut self, ts: u64, batch: &MeterBatch) -> Result<(), Reject> {
        self.market_mut(batch.market_id)?.apply_readings(ts, &batch.readings);
        Ok(())
    }

    /// Applies a settlement entry: each bill is booked to its device's account, and the
    /// market is over.
    pub(super) fn apply_settlement(&mut self, ts: u64, body: &SettlementBody) -> Result<(), Reject> {
        self.market_mut(body.market_id)?.apply_settlement(ts);
        for bill in &body.bills {
            let account = self.accounts.entry(bill.device).or_default();
            account.balance = account.balance.saturating_add(bill.total());
            account.bills.push((body.market_id, *bill));
            if account.bills.len() > MAX_BILLS_PER_ACCOUNT {
                account.bills.remove(0);
            }
        }
        Ok(())
    }
}
