//! The validator's RocksDB log (DESIGN §6).
//!
//! Column families:
//! - `entries`: height (u64 big-endian) → canonical `Entry`;
//! - `certificates`: height → canonical `CommitCertificate`;
//! - `updates`: update digest → canonical `SignedUpdate` (the bodies with proofs that iteration
//!   entries name by digest);
//! - `devices`: device id → canonical `SignedEnrollment`;
//! - `consensus`: the tip (`b"tip"` → height ‖ hash), the consensus write-ahead log
//!   (`wal/` ‖ height ‖ sequence → record), dropped for a height once it is decided, and the
//!   markets whose update bodies are pruned (`pruned/` ‖ market id → empty), chain-state
//!   snapshots (`snapshot/` ‖ height → the encoded `ChainSnapshot` that entry's state root
//!   hashes; the newest [`KEEP_SNAPSHOTS`] kept) and, for a store started from a checkpoint,
//!   its base height (`b"base"` → height).
//!
//! A store started from a checkpoint ([`Store::start_at_checkpoint`]) holds the genesis, the
//! checkpoint entry with the snapshot it extends, and every entry after it; the heights in
//! between are not held ([`Store::certified`] answers `None`).
//!
//! Pruning ([`Store::prune_market`]) deletes a final market's update bodies in one synced
//! batch with its `pruned/` marker; its entries and certificates stay. From then on
//! [`Store::certified`] serves that market's iteration entries without bodies
//! (`Certified::is_pruned`), and the chain state is rebuilt from them by certificate.
//!
//! A decision is one synced `WriteBatch` (entry + certificate + updates + tip), so a crash
//! leaves either all of it or none. The store refuses an entry that does not extend its tip:
//! a stored log is always a hash-linked chain from genesis.

use std::path::Path;

use borsh::{BorshDeserialize, BorshSerialize};
use protocol::codec::{decode, encode};
use protocol::entry::{Body, Certified, CommitCertificate, Entry};
use protocol::ids::hex;
use protocol::merkle::Hash;
use protocol::messages::{SignedEnrollment, SignedUpdate};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use thiserror::Error;

/// Column family names.
pub const CF_ENTRIES: &str = "entries";
/// Certificates.
pub const CF_CERTIFICATES: &str = "certificates";
/// Update bodies.
pub const CF_UPDATES: &str = "updates";
/// Each device's latest enrollment (of any market).
pub const CF_DEVICES: &str = "devices";
/// Consensus WAL and tip.
pub const CF_CONSENSUS: &str = "consensus";
const ALL_CFS: [&str; 5] = [CF_ENTRIES, CF_CERTIFICATES, CF_UPDATES, CF_DEVICES, CF_CONSENSUS];
const TIP: &[u8] = b"tip";
const BASE: &[u8] = b"base";
/// Snapshots a store keeps (the newest; a checkpoint store's base snapshot is kept too).
pub const KEEP_SNAPSHOTS: usize = 2;
/// Largest stored value (an iteration entry for 100,000 devices is about 3.3 MB).
pub const MAX_STORED_BYTES: usize = 16 << 20;
/// Largest WAL record: a payload record holds what one peer frame carries, plus its tag.
pub const MAX_WAL_RECORD: usize = crate::consensus::wire::MAX_PEER_FRAME + (64 << 10);

/// A storage failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored value does not decode: the database is corrupt.
    #[error("corrupt value in column family {cf} at key {key}: {reason}")]
    Corrupt {
        /// The column family.
        cf: &'static str,
        /// The key, hex.
        key: String,
        /// What the decoder said.
        reason: String,
    },
    /// An entry that does not extend the stored chain.
    #[error("entry at height {height} does not extend the tip at height {tip:?}: {reason}")]
    NotNext {
        /// The entry's height.
        height: u64,
        /// The stored tip height.
        tip: Option<u64>,
        /// Why.
        reason: &'static str,
    },
    /// A WAL record over [`MAX_WAL_RECORD`]: refused before it is written.
    #[error("WAL record of {len} bytes at height {height} exceeds the cap of {MAX_WAL_RECORD}")]
    WalOversize {
        /// The height.
        height: u64,
        /// Its length.
        len: usize,
    },
    /// A certificate for another entry.
    #[error("certificate is for height {cert_height}, the entry is at height {height}, or hashes differ")]
    CertificateMismatch {
        /// Entry height.
        height: u64,
        /// Certificate height.
        cert_height: u64,
    },
}

/// One stored WAL record: its sequence number within its height and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalItem {
    /// Position in the height's WAL (0, 1, 2, … in append order).
    pub seq: u32,
    /// The encoded record.
    pub bytes: Vec<u8>,
}

/// The log store.
pub struct Store {
    db: DB,
    /// The WAL height last appended to and its next sequence number, so an append does not
    /// re-read the height's records (multi-MB payloads among them).
    wal_next: std::sync::Mutex<Option<(u64, u32)>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = ALL_CFS.iter().map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
        Ok(Store { db: DB::open_cf_descriptors(&opts, path, cfs)?, wal_next: std::sync::Mutex::new(None) })
    }

    fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("every column family is created at open")
    }

    fn get<T: BorshSerialize + BorshDeserialize>(&self, cf: &'static str, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.db.get_cf(self.cf(cf), key)? {
            None => Ok(None),
            Some(bytes) => decode(cf, &bytes, MAX_STORED_BYTES).map(Some).map_err(|e| StoreError::Corrupt { cf, key: hex(key), reason: e.to_string() }),
        }
    }

    /// The highest stored height and its entry hash.
    pub fn tip(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        match self.db.get_cf(self.cf(CF_CONSENSUS), TIP)? {
            None => Ok(None),
            Some(b) if b.len() == 40 => {
                let height = u64::from_be_bytes(b[..8].try_into().expect("8"));
                Ok(Some((height, b[8..].try_into().expect("32"))))
            }
            Some(b) => Err(StoreError::Corrupt { cf: CF_CONSENSUS, key: "tip".into(), reason: format!("{} bytes", b.len()) }),
        }
    }

    /// Stores a decided entry with its certificate and the update bodies it names, atomically
    /// and synced. Refuses an entry that does not extend the tip.
    pub fn decide(&self, entry: &Entry, cert: &CommitCertificate, updates: &[SignedUpdate]) -> Result<(), StoreError> {
        check_extends(self.tip()?, entry, cert)?;
        let mut batch = WriteBatch::default();
        self.stage(&mut batch, entry, cert, updates);
        batch.delete_range_cf(self.cf(CF_CONSENSUS), wal_key(0, 0), wal_key(entry.height + 1, 0));
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Adds a certified entry to `batch` as every stored entry is kept: entry, certificate,
    /// update bodies, its market's `pruned/` marker if it comes without them (synced from a
    /// validator that pruned it, so the store serves and replays it the same way), the
    /// enrollments it admits, and the tip (the last staged entry's).
    fn stage(&self, batch: &mut WriteBatch, entry: &Entry, cert: &CommitCertificate, updates: &[SignedUpdate]) {
        let key = entry.height.to_be_bytes();
        batch.put_cf(self.cf(CF_ENTRIES), key, encode(entry));
        batch.put_cf(self.cf(CF_CERTIFICATES), key, encode(cert));
        for u in updates {
            batch.put_cf(self.cf(CF_UPDATES), u.digest(), encode(u));
        }
        if let (Body::Iteration(b), true) = (&entry.body, protocol::entry::bodies_pruned(&entry.body, updates)) {
            batch.put_cf(self.cf(CF_CONSENSUS), pruned_key(b.market_id), []);
        }
        if let Body::Enrollment(b) = &entry.body {
            for e in &b.enrollments {
                batch.put_cf(self.cf(CF_DEVICES), e.body.device.0, encode(e));
            }
        }
        let mut tip_value = key.to_vec();
        tip_value.extend_from_slice(&entry.hash());
        batch.put_cf(self.cf(CF_CONSENSUS), TIP, tip_value);
    }

    /// The entry at `height`.
    pub fn entry(&self, height: u64) -> Result<Option<Entry>, StoreError> {
        self.get(CF_ENTRIES, &height.to_be_bytes())
    }

    /// The certificate of `height`.
    pub fn certificate(&self, height: u64) -> Result<Option<CommitCertificate>, StoreError> {
        self.get(CF_CERTIFICATES, &height.to_be_bytes())
    }

    /// An update body by digest.
    pub fn update(&self, digest: &Hash) -> Result<Option<SignedUpdate>, StoreError> {
        self.get(CF_UPDATES, digest)
    }

    /// A device's enrollment.
    pub fn enrollment(&self, device: &[u8; 32]) -> Result<Option<SignedEnrollment>, StoreError> {
        self.get(CF_DEVICES, device)
    }

    /// Stores a certified entry (see [`Store::decide`]) and drops the WAL of its height and
    /// below in the same batch.
    pub fn decide_certified(&self, c: &Certified) -> Result<(), StoreError> {
        self.decide(&c.entry, &c.certificate, &c.updates)
    }

    /// Starts an empty store at a checkpoint: the genesis, the checkpoint entry (certificate
    /// and bodies as verified by `protocol::snapshot::verify_checkpoint`) and the encoded
    /// snapshot its state root hashes, as one synced batch. From then on the store's base is
    /// that height and its tip that entry.
    pub fn start_at_checkpoint(&self, genesis: &Entry, checkpoint: &Certified, state: &[u8]) -> Result<(), StoreError> {
        let height = checkpoint.entry.height;
        if let Some((tip, _)) = self.tip()? {
            return Err(StoreError::NotNext { height, tip: Some(tip), reason: "a store starts from a checkpoint only when empty" });
        }
        check_extends(None, genesis, &CommitCertificate { height: 0, round: 0, hash: genesis.hash(), votes: vec![] })?;
        let mut batch = WriteBatch::default();
        self.stage(&mut batch, genesis, &CommitCertificate { height: 0, round: 0, hash: genesis.hash(), votes: vec![] }, &[]);
        self.stage(&mut batch, &checkpoint.entry, &checkpoint.certificate, &checkpoint.updates);
        batch.put_cf(self.cf(CF_CONSENSUS), snapshot_key(height), state);
        batch.put_cf(self.cf(CF_CONSENSUS), BASE, height.to_be_bytes());
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// The checkpoint height this store started from, if it did not start at genesis.
    pub fn base(&self) -> Result<Option<u64>, StoreError> {
        match self.db.get_cf(self.cf(CF_CONSENSUS), BASE)? {
            None => Ok(None),
            Some(b) => match <[u8; 8]>::try_from(b.as_slice()) {
                Ok(h) => Ok(Some(u64::from_be_bytes(h))),
                Err(_) => Err(StoreError::Corrupt { cf: CF_CONSENSUS, key: "base".into(), reason: format!("{} bytes", b.len()) }),
            },
        }
    }

    /// Stores the encoded snapshot that the entry at `height` extends, and deletes all but the
    /// newest [`KEEP_SNAPSHOTS`] (and the base's).
    pub fn put_snapshot(&self, height: u64, state: &[u8]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_CONSENSUS), snapshot_key(height), state);
        let base = self.base()?;
        let mut held = self.snapshot_heights()?;
        held.push(height);
        held.sort_unstable();
        held.dedup();
        let old = held.len().saturating_sub(KEEP_SNAPSHOTS);
        for h in held[..old].iter().filter(|h| Some(**h) != base) {
            batch.delete_cf(self.cf(CF_CONSENSUS), snapshot_key(*h));
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// The encoded snapshot the entry at `height` extends, if held.
    pub fn snapshot(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_CONSENSUS), snapshot_key(height))?)
    }

    /// The heights snapshots are held at, ascending.
    pub fn snapshot_heights(&self) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_CONSENSUS), SNAPSHOT_PREFIX) {
            let (k, _) = item?;
            let Some(rest) = k.strip_prefix(SNAPSHOT_PREFIX) else { break };
            let Ok(h) = <[u8; 8]>::try_from(rest) else { break };
            out.push(u64::from_be_bytes(h));
        }
        Ok(out)
    }

    /// Whether market `id`'s update bodies are pruned.
    pub fn is_pruned(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_CONSENSUS), pruned_key(id))?.is_some())
    }

    /// Deletes the update bodies of market `id`'s iteration entries at heights `from ..= to`
    /// (its opening to its final entry) and marks the market pruned, in one synced batch.
    /// Entries and certificates stay. Returns how many bodies and bytes were deleted.
    pub fn prune_market(&self, id: u64, from: u64, to: u64) -> Result<Pruned, StoreError> {
        let mut batch = WriteBatch::default();
        let mut done = Pruned { market_id: id, bodies: 0, bytes: 0 };
        // (A store started from a checkpoint holds the market's entries from its base on.)
        let from = from.max(self.base()?.unwrap_or(0));
        for h in from..=to {
            let Some(entry) = self.entry(h)? else { break };
            let Body::Iteration(b) = &entry.body else { continue };
            if b.market_id != id {
                continue;
            }
            for d in &b.updates {
                if let Some(v) = self.db.get_cf(self.cf(CF_UPDATES), d)? {
                    done.bodies += 1;
                    done.bytes += v.len() as u64;
                    batch.delete_cf(self.cf(CF_UPDATES), d);
                }
            }
        }
        batch.put_cf(self.cf(CF_CONSENSUS), pruned_key(id), []);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(done)
    }

    /// Flushes and compacts the `updates` family, giving the space of pruned bodies back now
    /// rather than at RocksDB's next compaction (seconds on a large store: the host runs it on
    /// a blocking thread).
    pub fn compact_updates(&self) -> Result<(), StoreError> {
        self.db.flush_cf(self.cf(CF_UPDATES))?;
        self.db.compact_range_cf(self.cf(CF_UPDATES), None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// The bytes of each column family's SST files after flushing its memtable: what the
    /// store holds on disk (RocksDB's own logs and manifest come on top). Flushes, so it is
    /// for measurements and operators, not for a hot path.
    pub fn flushed_bytes(&self) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let mut out = Vec::new();
        for name in ALL_CFS {
            let cf = self.cf(name);
            self.db.flush_cf(cf)?;
            out.push((name, self.db.property_int_value_cf(cf, "rocksdb.total-sst-files-size")?.unwrap_or(0)));
        }
        Ok(out)
    }

    /// A certified entry with its update bodies; an iteration entry of a pruned market comes
    /// without them.
    pub fn certified(&self, height: u64) -> Result<Option<Certified>, StoreError> {
        let (Some(entry), Some(certificate)) = (self.entry(height)?, self.certificate(height)?) else { return Ok(None) };
        let mut updates = Vec::new();
        if let Body::Iteration(b) = &entry.body {
            if self.is_pruned(b.market_id)? {
                return Ok(Some(Certified { entry, certificate, updates }));
            }
            for d in &b.updates {
                let Some(u) = self.update(d)? else {
                    // Pruned between the two reads (the marker and the deletions are one batch).
                    if self.is_pruned(b.market_id)? {
                        return Ok(Some(Certified { entry, certificate, updates: vec![] }));
                    }
                    return Err(StoreError::Corrupt {
                        cf: CF_UPDATES,
                        key: hex(d),
                        reason: format!("update named by the entry at height {height} is missing"),
                    });
                };
                updates.push(u);
            }
        }
        Ok(Some(Certified { entry, certificate, updates }))
    }

    /// Appends a consensus WAL record for `height`, synced before returning (a node persists
    /// its vote before sending it).
    /// Records over [`MAX_WAL_RECORD`] are refused. The next sequence number is kept in
    /// memory; only the first append to a height looks up the height's last stored key.
    pub fn wal_append(&self, height: u64, record: &[u8]) -> Result<(), StoreError> {
        if record.len() > MAX_WAL_RECORD {
            return Err(StoreError::WalOversize { height, len: record.len() });
        }
        let mut next = self.wal_next.lock().expect("wal sequence lock");
        let seq = match *next {
            Some((h, seq)) if h == height => seq,
            _ => self.wal_last_seq(height)?.map_or(0, |s| s + 1),
        };
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.put_cf_opt(self.cf(CF_CONSENSUS), wal_key(height, seq), record, &opts)?;
        *next = Some((height, seq + 1));
        Ok(())
    }

    /// The sequence number of the last WAL record stored for `height`.
    fn wal_last_seq(&self, height: u64) -> Result<Option<u32>, StoreError> {
        let last = wal_key(height, u32::MAX);
        let mut it = self.db.iterator_cf(self.cf(CF_CONSENSUS), rocksdb::IteratorMode::From(&last, rocksdb::Direction::Reverse));
        match it.next() {
            Some(item) => {
                let (k, _) = item?;
                Ok(wal_seq(&k, height))
            }
            None => Ok(None),
        }
    }

    /// The WAL records of `height`, in append order, each with its sequence number.
    pub fn wal(&self, height: u64) -> Result<Vec<WalItem>, StoreError> {
        let prefix = wal_key(height, 0)[..12].to_vec();
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_CONSENSUS), &prefix) {
            let (k, v) = item?;
            let Some(seq) = wal_seq(&k, height) else { break };
            out.push(WalItem { seq, bytes: v.to_vec() });
        }
        Ok(out)
    }
}

/// What [`Store::prune_market`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// The market.
    pub market_id: u64,
    /// Update bodies deleted.
    pub bodies: u64,
    /// Their stored bytes.
    pub bytes: u64,
}

const SNAPSHOT_PREFIX: &[u8] = b"snapshot/";

fn snapshot_key(height: u64) -> Vec<u8> {
    let mut k = SNAPSHOT_PREFIX.to_vec();
    k.extend_from_slice(&height.to_be_bytes());
    k
}

fn pruned_key(id: u64) -> Vec<u8> {
    let mut k = b"pruned/".to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The sequence number of `key` if it is a WAL key of `height`.
fn wal_seq(key: &[u8], height: u64) -> Option<u32> {
    let rest = key.strip_prefix(&wal_key(height, 0)[..12])?;
    Some(u32::from_be_bytes(rest.try_into().ok()?))
}

fn wal_key(height: u64, seq: u32) -> Vec<u8> {
    let mut k = b"wal/".to_vec();
    k.extend_from_slice(&height.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// What the consensus node needs from its log: certified entries that must extend the tip,
/// and a per-height write-ahead log. [`Store`] is the RocksDB one; [`MemLog`] lives in memory
/// for simulations.
pub trait Log {
    /// The highest stored height and its hash.
    fn tip(&self) -> Result<Option<(u64, Hash)>, StoreError>;
    /// Stores a certified entry atomically; refuses one that does not extend the tip.
    fn decide(&mut self, c: &Certified) -> Result<(), StoreError>;
    /// The certified entry at `height`.
    fn certified(&self, height: u64) -> Result<Option<Certified>, StoreError>;
    /// Appends a WAL record for `height` (durable before returning).
    fn wal_append(&mut self, height: u64, record: &[u8]) -> Result<(), StoreError>;
    /// The WAL records of `height`, in append order.
    fn wal(&self, height: u64) -> Result<Vec<WalItem>, StoreError>;
    /// The checkpoint height the log starts from (`None`: from genesis).
    fn base(&self) -> Result<Option<u64>, StoreError>;
    /// Stores the encoded snapshot the entry at `height` extends.
    fn put_snapshot(&mut self, height: u64, state: &[u8]) -> Result<(), StoreError>;
    /// The encoded snapshot the entry at `height` extends, if held.
    fn snapshot(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError>;
}

/// An in-memory [`Log`] with the same extension checks as [`Store`].
#[derive(Debug, Default, Clone)]
pub struct MemLog {
    entries: Vec<Certified>,
    wal: std::collections::BTreeMap<u64, Vec<Vec<u8>>>,
    snapshots: std::collections::BTreeMap<u64, Vec<u8>>,
}

impl MemLog {
    /// All stored entries, from genesis.
    pub fn entries(&self) -> &[Certified] {
        &self.entries
    }

    /// The stored snapshots (encoded), by the height of the entry they precede.
    pub fn snapshots(&self) -> &std::collections::BTreeMap<u64, Vec<u8>> {
        &self.snapshots
    }
}

impl Log for MemLog {
    fn tip(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        Ok(self.entries.last().map(|c| (c.entry.height, c.entry.hash())))
    }

    fn decide(&mut self, c: &Certified) -> Result<(), StoreError> {
        check_extends(Log::tip(self)?, &c.entry, &c.certificate)?;
        self.wal.retain(|h, _| *h > c.entry.height);
        self.entries.push(c.clone());
        Ok(())
    }

    fn certified(&self, height: u64) -> Result<Option<Certified>, StoreError> {
        Ok(self.entries.get(height as usize).cloned())
    }

    fn wal_append(&mut self, height: u64, record: &[u8]) -> Result<(), StoreError> {
        if record.len() > MAX_WAL_RECORD {
            return Err(StoreError::WalOversize { height, len: record.len() });
        }
        self.wal.entry(height).or_default().push(record.to_vec());
        Ok(())
    }

    fn wal(&self, height: u64) -> Result<Vec<WalItem>, StoreError> {
        let records = self.wal.get(&height).map(Vec::as_slice).unwrap_or_default();
        Ok(records.iter().enumerate().map(|(i, b)| WalItem { seq: i as u32, bytes: b.clone() }).collect())
    }

    fn base(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    fn put_snapshot(&mut self, height: u64, state: &[u8]) -> Result<(), StoreError> {
        self.snapshots.insert(height, state.to_vec());
        while self.snapshots.len() > KEEP_SNAPSHOTS {
            self.snapshots.pop_first();
        }
        Ok(())
    }

    fn snapshot(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snapshots.get(&height).cloned())
    }
}

/// Whether `entry` with `cert` may be stored after `tip`.
fn check_extends(tip: Option<(u64, Hash)>, entry: &Entry, cert: &CommitCertificate) -> Result<(), StoreError> {
    let hash = entry.hash();
    if cert.height != entry.height || cert.hash != hash {
        return Err(StoreError::CertificateMismatch { height: entry.height, cert_height: cert.height });
    }
    let not_next = |reason| StoreError::NotNext { height: entry.height, tip: tip.map(|t| t.0), reason };
    match tip {
        None if entry.height != 0 => Err(not_next("the first entry must be genesis (height 0)")),
        Some((h, _)) if entry.height != h + 1 => Err(not_next("height is not tip + 1")),
        Some((_, prev)) if entry.prev_hash != prev => Err(not_next("previous hash is not the tip's hash")),
        _ => Ok(()),
    }
}

/// The RocksDB store as a [`Log`], through any owner (`&Store`, `Arc<Store>`): the node writes
/// through an `Arc`, HTTP and subscriptions read through clones.
impl<T: std::ops::Deref<Target = Store>> Log for T {
    fn tip(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        Store::tip(self)
    }

    fn decide(&mut self, c: &Certified) -> Result<(), StoreError> {
        self.decide_certified(c)
    }

    fn certified(&self, height: u64) -> Result<Option<Certified>, StoreError> {
        Store::certified(self, height)
    }

    fn wal_append(&mut self, height: u64, record: &[u8]) -> Result<(), StoreError> {
        Store::wal_append(self, height, record)
    }

    fn wal(&self, height: u64) -> Result<Vec<WalItem>, StoreError> {
        Store::wal(self, height)
    }

    fn base(&self) -> Result<Option<u64>, StoreError> {
        Store::base(self)
    }

    fn put_snapshot(&mut self, height: u64, state: &[u8]) -> Result<(), StoreError> {
        Store::put_snapshot(self, height, state)
    }

    fn snapshot(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Store::snapshot(self, height)
    }
}
