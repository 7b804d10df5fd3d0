//! Compact proposals: a payload carries the entry, which names its update bodies by digest, and
//! no bodies. A validator fills them from what it holds (its pool, and the payloads of the same
//! height), asks the proposer for the ones it lacks, and, while any are still missing, asks the
//! next peer in turn every [`BODIES_RETRY_MS`]. It validates the payload, exactly as a full
//! one, once every body is there. It answers other validators' requests from the same places.
//!
//! A body is taken only if the entry names its digest, and the digest covers the whole signed
//! update, so whoever sends it cannot change what the proposal means; its signature and proof
//! are checked by validation like any other. A proposer that withholds bodies delays only the
//! validators that lack them (another peer answers), and at worst costs its round.

use protocol::ids::short_hex;
use protocol::merkle::Hash;

use super::*;
use crate::consensus::wire::MAX_PEER_FRAME;

/// How long a request for missing bodies waits for its answer before the next peer is asked.
pub const BODIES_RETRY_MS: u64 = 300;
/// Most body requests a node answers per peer while one height runs (a few per round).
pub const MAX_BODY_REQUESTS_PER_PEER: usize = 16;

/// The bodies a held payload still lacks, and whom it asked last, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Missing {
    digests: BTreeSet<Hash>,
    asked: u16,
    at: u64,
}

impl Missing {
    /// When the request is due again.
    pub(super) fn retry_at(&self) -> u64 {
        self.at + BODIES_RETRY_MS
    }
}

/// The digest of `u` if `named` (an iteration entry's digests, ascending) holds it; else why not.
fn named_digest(hash: EntryHash, named: &[Hash], u: &SignedUpdate) -> Result<Hash, PeerReject> {
    let d = u.digest();
    match named.binary_search(&d) {
        Ok(_) => Ok(d),
        Err(_) => Err(PeerReject::UnnamedBody { entry: hash.to_string(), digest: short_hex(&d), device: u.body.device }),
    }
}

impl<L: Log> Node<L> {
    /// The bodies of `entry`: those sent along (each must be named by the entry), then those
    /// held here; ascending by digest, with the digests still missing. An entry of another
    /// kind names no bodies and keeps what came with it (validation refuses any).
    pub(super) fn assemble(&self, hash: EntryHash, entry: &Entry, sent: Vec<SignedUpdate>) -> Result<(Vec<SignedUpdate>, BTreeSet<Hash>), PeerReject> {
        let Body::Iteration(b) = &entry.body else { return Ok((sent, BTreeSet::new())) };
        let mut have: BTreeMap<Hash, SignedUpdate> = BTreeMap::new();
        for u in sent {
            have.insert(named_digest(hash, &b.updates, &u)?, u);
        }
        let mut missing = BTreeSet::new();
        for d in &b.updates {
            if have.contains_key(d) {
                continue;
            }
            match self.held_body(d, Some(entry.height)) {
                Some(u) => {
                    have.insert(*d, u.clone());
                }
                None => {
                    missing.insert(*d);
                }
            }
        }
        for (d, u) in self.fetched_bodies(&missing, Some(entry.height)) {
            missing.remove(&d);
            have.insert(d, u);
        }
        Ok((have.into_values().collect(), missing))
    }

    /// The body named `digest` if this node holds it where it can be found without hashing: in
    /// its pool (by the digest index) or in a complete payload (of `height`, if given).
    fn held_body(&self, digest: &Hash, height: Option<u64>) -> Option<&SignedUpdate> {
        self.pools.update_by_digest(digest).or_else(|| {
            self.payloads.values().filter(|p| height.is_none_or(|h| p.entry.height == h)).find_map(|p| p.complete_body(digest))
        })
    }

    /// Bodies in `wanted` among those fetched for payloads still incomplete (of `height`, if
    /// given), which are hashed to be found: only when something is still wanted.
    fn fetched_bodies(&self, wanted: &BTreeSet<Hash>, height: Option<u64>) -> Vec<(Hash, SignedUpdate)> {
        if wanted.is_empty() {
            return Vec::new();
        }
        let mut found = BTreeMap::new();
        let incomplete = self.payloads.values().filter(|p| p.missing.is_some() && height.is_none_or(|h| p.entry.height == h));
        for u in incomplete.flat_map(|p| &p.updates) {
            let d = u.digest();
            if wanted.contains(&d) {
                found.entry(d).or_insert_with(|| u.clone());
            }
        }
        found.into_iter().collect()
    }

    /// Asks validator `to` for the bodies of `hash` in `digests`.
    pub(super) fn ask_bodies(&mut self, hash: EntryHash, to: u16, digests: BTreeSet<Hash>) -> Missing {
        debug!(validator = self.cfg.index, to, missing = digests.len(), "asking for the bodies of {hash}");
        self.out.push(Output::Send { to, msg: PeerMsg::BodiesWanted { entry: hash.0, digests: digests.iter().copied().collect() } });
        Missing { digests, asked: to, at: self.now }
    }

    /// Asks the next peer (after the last one asked, skipping this node) for every payload
    /// whose request is overdue.
    pub(super) fn retry_bodies(&mut self) {
        let n = self.validators.0.len() as u16;
        let due: Vec<(EntryHash, u16, BTreeSet<Hash>)> = self
            .payloads
            .iter()
            .filter_map(|(h, p)| p.missing.as_ref().filter(|m| m.retry_at() <= self.now).map(|m| (*h, m.asked, m.digests.clone())))
            .collect();
        for (hash, last, digests) in due {
            let mut next = (last + 1) % n;
            if next == self.cfg.index {
                next = (next + 1) % n;
            }
            let m = self.ask_bodies(hash, next, digests);
            if let Some(p) = self.payloads.get_mut(&hash) {
                p.missing = Some(m);
            }
        }
    }

    /// When the earliest body request is due again.
    pub(super) fn next_body_retry(&self) -> Option<u64> {
        self.payloads.values().filter_map(|p| p.missing.as_ref().map(Missing::retry_at)).min()
    }

    /// Bodies from validator `from` for the held payload `hash`: each one it still lacks is
    /// taken; once none is missing the payload is validated for every round it was announced
    /// in at the running height. Bodies for a payload not held, or already complete, are late
    /// answers (a retry crossed them) and are dropped.
    pub(super) fn on_bodies(&mut self, from: u16, hash: EntryHash, bodies: Vec<SignedUpdate>) -> Result<(), PeerReject> {
        let Some(p) = self.payloads.get_mut(&hash) else { return Ok(()) };
        let (Some(m), Body::Iteration(b)) = (p.missing.as_mut(), &p.entry.body) else { return Ok(()) };
        let mut taken = 0u64;
        let mut unnamed = None;
        for u in bodies {
            let d = match named_digest(hash, &b.updates, &u) {
                Ok(d) => d,
                Err(why) => {
                    unnamed = Some(why);
                    break;
                }
            };
            if m.digests.remove(&d) {
                p.updates.push(u);
                taken += 1;
            }
        }
        let complete = m.digests.is_empty();
        if complete {
            p.missing = None;
            p.updates.sort_by_cached_key(SignedUpdate::digest);
        }
        let height = p.entry.height;
        self.stats.bodies_fetched += taken;
        debug!(validator = self.cfg.index, from, taken, complete, "bodies of {hash} received");
        if complete && self.running.map(|r| r.0) == Some(height) {
            let rounds: Vec<Announcement> = self.announced.iter().filter(|a| a.hash == hash).copied().collect();
            for a in rounds {
                self.feed_payload(a);
            }
        }
        unnamed.map_or(Ok(()), Err)
    }

    /// A request from validator `from` for bodies of the proposed entry `hash`: answers with
    /// every one it holds (in its pool or any payload it holds), in
    /// messages of at most half a peer frame. At most [`MAX_BODY_REQUESTS_PER_PEER`] requests
    /// per peer are answered while a height runs.
    pub(super) fn on_bodies_wanted(&mut self, from: u16, hash: EntryHash, digests: Vec<Hash>) -> Result<(), PeerReject> {
        let served = self.served.entry(from).or_default();
        if *served >= MAX_BODY_REQUESTS_PER_PEER {
            return Err(PeerReject::Quota { proposer: from, what: "body requests answered", held: *served, max: MAX_BODY_REQUESTS_PER_PEER });
        }
        *served += 1;
        if self.cfg.byzantine == Some(Byzantine::WithholdBodies) {
            return Ok(());
        }
        let mut want = BTreeSet::new();
        let mut found: Vec<SignedUpdate> = Vec::new();
        for d in BTreeSet::from_iter(digests) {
            match self.held_body(&d, None) {
                Some(u) => found.push(u.clone()),
                None => {
                    want.insert(d);
                }
            }
        }
        for (d, u) in self.fetched_bodies(&want, None) {
            want.remove(&d);
            found.push(u);
        }
        debug!(validator = self.cfg.index, to = from, bodies = found.len(), lacking = want.len(), "answering a request for the bodies of {hash}");
        self.stats.bodies_served += found.len() as u64;
        let mut chunk = Vec::new();
        let mut bytes = 0usize;
        for u in found {
            bytes += protocol::codec::encode(&u).len();
            chunk.push(u);
            if bytes > MAX_PEER_FRAME / 2 {
                self.out.push(Output::Send { to: from, msg: PeerMsg::Bodies { entry: hash.0, updates: std::mem::take(&mut chunk) } });
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            self.out.push(Output::Send { to: from, msg: PeerMsg::Bodies { entry: hash.0, updates: chunk } });
        }
        Ok(())
    }

    /// The payload message for a held entry: the entry alone (its bodies are named by digest).
    pub(super) fn payload_msg(&self, round: i64, valid_round: i64, entry: &Entry) -> PeerMsg {
        PeerMsg::Payload { round, valid_round, proposer: self.cfg.index, entry: entry.clone(), updates: vec![] }
    }
}
