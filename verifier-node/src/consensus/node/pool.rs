//! What a validator holds from devices, operators and authorities until an entry includes it:
//! enrollments, withdrawals and updates per (market, device), market openings per market id,
//! revocations per attestation. Every map has a bound; admission runs the chain app's checks
//! against the host's clock, and each commit drops what can no longer be included.

use std::collections::{BTreeMap, BTreeSet};

use protocol::entry::Body;
use protocol::ids::DeviceId;
use protocol::market::{SignedMarketOpen, SignedWithdrawal};
use protocol::membership::SignedRevocation;
use protocol::merkle::Hash;
use protocol::messages::{SignedEnrollment, SignedUpdate};
use protocol::settlement::SignedReading;
use rand::{CryptoRng, RngCore};

use crate::app::{ChainApp, Pool, Reject, Verified};

/// Most pooled enrollments (and, separately, withdrawals) over every market.
pub const MAX_POOLED_ENROLLMENTS: usize = protocol::clock::MAX_ENROLLED;
/// Most pooled market openings.
pub const MAX_POOLED_OPENS: usize = protocol::market::MAX_LIVE_MARKETS;
/// Most pooled revocations.
pub const MAX_POOLED_REVOCATIONS: usize = crate::app::MAX_REVOCATIONS_PER_ENTRY;

/// Most pooled meter readings over every market.
pub const MAX_POOLED_READINGS: usize = 1 << 18;

/// A market and a device: how device messages are keyed.
type Key = (u64, DeviceId);

/// A pooled update with its digest, computed once at admission: proposals name updates by
/// digest, and filling or serving their bodies looks them up without hashing the pool again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PooledUpdate {
    /// The signed update as the device sent it.
    pub(super) update: SignedUpdate,
    /// `update.digest()`.
    pub(super) digest: Hash,
}

/// The pools of one validator.
#[derive(Debug, Default)]
pub(super) struct Pools {
    pub(super) enrollments: BTreeMap<Key, SignedEnrollment>,
    pub(super) withdrawals: BTreeMap<Key, SignedWithdrawal>,
    /// One update per (market, device): its open iteration's.
    pub(super) updates: BTreeMap<Key, PooledUpdate>,
    /// Which key holds the pooled update of each digest (the same updates as `updates`).
    pub(super) by_digest: BTreeMap<Hash, Key>,
    pub(super) opens: BTreeMap<u64, SignedMarketOpen>,
    pub(super) revocations: BTreeMap<Hash, SignedRevocation>,
    /// Meter readings by (market, device, slot).
    pub(super) readings: BTreeMap<(u64, DeviceId, u32), SignedReading>,
    /// Pooled updates not yet verified, with their proofs decoded at admission (verified in
    /// batches while the iteration is open).
    pub(super) unverified: Vec<(SignedUpdate, prover::UpdateProof)>,
    /// Digests of pooled updates verified (signature and proof).
    pub(super) verified: Verified,
}

/// Holds `value` under `key` if `admit` passes: the same message again is already held;
/// another one under the same key is refused with `dup`; a full map refuses with `full`.
fn hold<K: Ord, V: PartialEq>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    bound: usize,
    dup: impl FnOnce() -> Reject,
    full: &'static str,
    admit: impl FnOnce(&V) -> Result<(), Reject>,
) -> Result<(), Reject> {
    if let Some(held) = map.get(&key) {
        return if *held == value { Ok(()) } else { Err(dup()) };
    }
    if map.len() >= bound {
        return Err(Reject::Overloaded(full));
    }
    admit(&value)?;
    map.insert(key, value);
    Ok(())
}

impl Pools {
    /// Owned copies of the pooled messages, for [`ChainApp::build`].
    pub(super) fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            enrollments: self.enrollments.values().cloned().collect(),
            withdrawals: self.withdrawals.values().cloned().collect(),
            updates: self.updates.values().map(|p| p.update.clone()).collect(),
            opens: self.opens.values().cloned().collect(),
            revocations: self.revocations.values().cloned().collect(),
            // (Ascending by market: the lowest market's first entry's worth is all a meter
            // entry can take.)
            readings: self.readings.values().take(protocol::settlement::MAX_READINGS_PER_ENTRY).copied().collect(),
        }
    }

    /// Whether a chain entry (an opening or revocations) waits to be proposed.
    pub(super) fn has_chain_messages(&self) -> bool {
        !self.opens.is_empty() || !self.revocations.is_empty() || !self.readings.is_empty()
    }

    /// Admits one device's readings (all checked first: one bad reading refuses the request);
    /// the same reading again is already held.
    pub(super) fn admit_readings(&mut self, app: &ChainApp, now: u64, list: &[SignedReading]) -> Result<(), Reject> {
        let list = app.admit_readings(now, list)?;
        let new = list.iter().filter(|r| !self.readings.contains_key(&(r.body.market_id, r.body.device, r.body.slot))).count();
        if self.readings.len() + new > MAX_POOLED_READINGS {
            return Err(Reject::Overloaded("meter reading pool full"));
        }
        for r in &list {
            self.readings.entry((r.body.market_id, r.body.device, r.body.slot)).or_insert(*r);
        }
        Ok(())
    }

    /// Drops the openings whose registration closes at or before `at` (the earliest timestamp
    /// the next entry may carry): they can no longer be built, and a held one would start
    /// heights that cannot end. (Their other checks depend on the log, rechecked per commit.)
    pub(super) fn drop_stale_opens(&mut self, at: u64) {
        self.opens.retain(|_, o| o.body.spec.registration_close_ms > at);
    }

    pub(super) fn admit_enrollment(&mut self, app: &ChainApp, now: u64, e: SignedEnrollment) -> Result<(), Reject> {
        let key = (e.body.market_id, e.body.device);
        let device = e.body.device;
        hold(
            &mut self.enrollments,
            key,
            e,
            MAX_POOLED_ENROLLMENTS,
            || protocol::clock::ClockError::DuplicateEnrollment(device).into(),
            "enrollment pool full",
            |e| app.admit_enrollment(now, e),
        )
    }

    pub(super) fn admit_withdrawal(&mut self, app: &ChainApp, now: u64, w: SignedWithdrawal) -> Result<(), Reject> {
        let key = (w.body.market_id, w.body.device);
        let device = w.body.device;
        hold(
            &mut self.withdrawals,
            key,
            w,
            MAX_POOLED_ENROLLMENTS,
            || Reject::DuplicateInEntry(device),
            "withdrawal pool full",
            |w| app.admit_withdrawal(now, w),
        )
    }

    pub(super) fn admit_open(&mut self, app: &ChainApp, now: u64, o: SignedMarketOpen) -> Result<(), Reject> {
        let id = o.market_id();
        hold(
            &mut self.opens,
            id,
            o,
            MAX_POOLED_OPENS,
            || protocol::market::OpenError::Reused(id).into(),
            "market opening pool full",
            |o| app.check_open(o, now),
        )
    }

    pub(super) fn admit_revocation(&mut self, app: &ChainApp, r: SignedRevocation) -> Result<(), Reject> {
        let key = r.body.attestation;
        let device = r.body.device;
        hold(
            &mut self.revocations,
            key,
            r,
            MAX_POOLED_REVOCATIONS,
            || protocol::membership::RevocationError::AlreadyRevoked { device }.into(),
            "revocation pool full",
            |r| app.check_revocation(r),
        )
    }

    /// Admits an update: one per (market, device) is held, the open iteration's, so the pool
    /// is bounded by the enrolled sets, and so is the queue awaiting verification.
    pub(super) fn admit_update(&mut self, app: &ChainApp, now: u64, u: SignedUpdate) -> Result<(), Reject> {
        let key = (u.body.market_id, u.body.device);
        if let Some(PooledUpdate { update: held, .. }) = self.updates.get(&key) {
            if *held == u {
                // The same signed update again (a gateway re-sends before the deadline in case
                // a validator lost its pool): already held, nothing changes.
                return Ok(());
            }
            if held.body.iteration == u.body.iteration {
                return Err(protocol::clock::ClockError::DuplicateUpdate { device: u.body.device, iteration: u.body.iteration }.into());
            }
        }
        let proof = app.admit_update(now, &u)?;
        let digest = u.digest();
        self.unverified.push((u.clone(), proof));
        self.insert_update(key, PooledUpdate { update: u, digest });
        Ok(())
    }

    /// The pooled update named by `digest`, if one is held.
    pub(super) fn update_by_digest(&self, digest: &Hash) -> Option<&SignedUpdate> {
        let p = self.updates.get(self.by_digest.get(digest)?)?;
        debug_assert_eq!(&p.digest, digest, "the digest index names another update");
        Some(&p.update)
    }

    /// Holds `p` under `key`, in place of the one held there (if any), in both maps.
    fn insert_update(&mut self, key: Key, p: PooledUpdate) {
        self.remove_update(&key);
        self.by_digest.insert(p.digest, key);
        self.updates.insert(key, p);
    }

    /// Drops the update held under `key` (if any) from both maps.
    pub(super) fn remove_update(&mut self, key: &Key) {
        if let Some(old) = self.updates.remove(key) {
            self.by_digest.remove(&old.digest);
        }
    }

    /// Keeps the pooled updates for which `keep` holds, in both maps.
    fn retain_updates(&mut self, mut keep: impl FnMut(&Key, &SignedUpdate) -> bool) {
        let by_digest = &mut self.by_digest;
        self.updates.retain(|key, p| {
            let kept = keep(key, &p.update);
            if !kept {
                by_digest.remove(&p.digest);
            }
            kept
        });
        debug_assert_eq!(self.updates.len(), self.by_digest.len());
    }

    /// Batch-verifies up to `max` of the pooled updates that arrived since the last call
    /// (oldest first); good ones are remembered so the deadline does not verify them again,
    /// bad ones leave the pool unless `keep_bad`. Returns the refusals, to be counted.
    pub(super) fn verify<R: RngCore + CryptoRng>(&mut self, app: &ChainApp, max: usize, keep_bad: bool, rng: &mut R) -> Vec<Reject> {
        let n = self.unverified.len().min(max);
        let batch: Vec<(SignedUpdate, prover::UpdateProof)> = self.unverified.drain(..n).collect();
        let verdicts = app.verify_updates(&batch, rng);
        let mut refused = Vec::new();
        for ((u, _), v) in batch.into_iter().zip(verdicts) {
            match v {
                Ok(enrolled) => {
                    self.verified.insert(u.digest(), enrolled);
                }
                Err(why) => {
                    refused.push(why);
                    let key = (u.body.market_id, u.body.device);
                    if !keep_bad && self.updates.get(&key).is_some_and(|p| p.update == u) {
                        self.remove_update(&key);
                    }
                }
            }
        }
        refused
    }

    /// After `body` was committed and applied to `app`: drops what it included and what can no
    /// longer be included (updates of past iterations, enrollments and withdrawals of markets
    /// whose registration is over, openings and revocations that no longer pass).
    pub(super) fn after_commit(&mut self, app: &ChainApp, body: &Body, now: u64) {
        match body {
            Body::Enrollment(b) => {
                // A device that enrolled anew or withdrew has another commitment (or none):
                // updates it sent before are for the enrollment it no longer has.
                let changed: BTreeSet<DeviceId> = b.enrollments.iter().map(|e| e.body.device).chain(b.withdrawals.iter().map(|w| w.body.device)).collect();
                for d in &changed {
                    self.enrollments.remove(&(b.market_id, *d));
                    self.withdrawals.remove(&(b.market_id, *d));
                    self.remove_update(&(b.market_id, *d));
                }
                self.unverified.retain(|(u, _)| u.body.market_id != b.market_id || !changed.contains(&u.body.device));
            }
            Body::Iteration(b) => {
                let (id, k) = (b.market_id, b.iteration);
                self.retain_updates(|key, u| key.0 != id || u.body.iteration > k);
                self.unverified.retain(|(u, _)| u.body.market_id != id || u.body.iteration > k);
            }
            Body::Final(f) => {
                // The market is over: updates sent for an iteration that will not come go.
                self.retain_updates(|key, _| key.0 != f.market_id);
                self.unverified.retain(|(u, _)| u.body.market_id != f.market_id);
            }
            Body::Open(o) => {
                self.opens.remove(&o.market_id());
            }
            Body::Revocation(list) => {
                for r in list {
                    self.revocations.remove(&r.body.attestation);
                }
            }
            Body::Genesis(_) | Body::Meter(_) | Body::Settlement(_) => {}
        }
        let registering = |id: u64| app.market(id).is_some_and(|m| m.next_batch_ms().is_some());
        self.enrollments.retain(|key, _| registering(key.0));
        self.withdrawals.retain(|key, _| registering(key.0));
        self.opens.retain(|_, o| app.check_open(o, now).is_ok());
        self.revocations.retain(|_, r| app.check_revocation(r).is_ok());
        self.readings.retain(|_, r| app.reading_pending(r));
        let by_digest = &self.by_digest;
        self.verified.retain(|d, _| by_digest.contains_key(d));
    }
}

/// Owned copies of a node's pools (the node's RNG and the app are borrowed while building).
pub(super) struct PoolSnapshot {
    enrollments: Vec<SignedEnrollment>,
    withdrawals: Vec<SignedWithdrawal>,
    updates: Vec<SignedUpdate>,
    opens: Vec<SignedMarketOpen>,
    revocations: Vec<SignedRevocation>,
    readings: Vec<SignedReading>,
}

impl PoolSnapshot {
    /// The view [`ChainApp::build`] takes.
    pub(super) fn view(&self) -> Pool<'_> {
        Pool { enrollments: &self.enrollments, withdrawals: &self.withdrawals, updates: &self.updates, opens: &self.opens, revocations: &self.revocations, readings: &self.readings }
    }
}
