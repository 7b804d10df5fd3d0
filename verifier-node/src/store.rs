//! The validator's RocksDB log (DESIGN §6).
//!
//! Column families:
//! - `entries`: height (u64 big-endian) → canonical `Entry`;
//! - `certificates`: height → canonical `CommitCertificate`;
//! - `updates`: update digest → canonical `SignedUpdate` (the bodies with proofs that iteration
//!   entries name by digest);
//! - `devices`: device id → canonical `SignedEnrollment`;
//! - `consensus`: the consensus write-ahead log and the tip (`b"tip"` → height ‖ hash).
//!
//! A decision is one synced `WriteBatch` (entry + certificate + updates + tip), so a crash
//! leaves either all of it or none. The store refuses an entry that does not extend its tip:
//! a stored log is always a hash-linked chain from genesis.

use std::path::Path;

use borsh::{BorshDeserialize, BorshSerialize};
use protocol::codec::{decode, encode};
use protocol::entry::{CommitCertificate, Entry};
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
/// Enrollments.
pub const CF_DEVICES: &str = "devices";
/// Consensus WAL and tip.
pub const CF_CONSENSUS: &str = "consensus";
const ALL_CFS: [&str; 5] = [CF_ENTRIES, CF_CERTIFICATES, CF_UPDATES, CF_DEVICES, CF_CONSENSUS];
const TIP: &[u8] = b"tip";
/// Largest stored value (an iteration entry for 100,000 devices is about 3.3 MB).
pub const MAX_STORED_BYTES: usize = 16 << 20;

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
    /// A certificate for another entry.
    #[error("certificate is for height {cert_height}, the entry is at height {height}, or hashes differ")]
    CertificateMismatch {
        /// Entry height.
        height: u64,
        /// Certificate height.
        cert_height: u64,
    },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The log store.
pub struct Store {
    db: DB,
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
        Ok(Store { db: DB::open_cf_descriptors(&opts, path, cfs)? })
    }

    fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("every column family is created at open")
    }

    fn get<T: BorshSerialize + BorshDeserialize>(&self, cf: &'static str, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.db.get_cf(self.cf(cf), key)? {
            None => Ok(None),
            Some(bytes) => decode(cf, &bytes, MAX_STORED_BYTES)
                .map(Some)
                .map_err(|e| StoreError::Corrupt { cf, key: hex(key), reason: e.to_string() }),
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
        let hash = entry.hash();
        if cert.height != entry.height || cert.hash != hash {
            return Err(StoreError::CertificateMismatch { height: entry.height, cert_height: cert.height });
        }
        let tip = self.tip()?;
        let not_next = |reason| StoreError::NotNext { height: entry.height, tip: tip.map(|t| t.0), reason };
        match tip {
            None if entry.height != 0 => return Err(not_next("the first entry must be genesis (height 0)")),
            Some((h, _)) if entry.height != h + 1 => return Err(not_next("height is not tip + 1")),
            Some((_, prev)) if entry.prev_hash != prev => return Err(not_next("previous hash is not the tip's hash")),
            _ => {}
        }
        let key = entry.height.to_be_bytes();
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_ENTRIES), key, encode(entry));
        batch.put_cf(self.cf(CF_CERTIFICATES), key, encode(cert));
        for u in updates {
            batch.put_cf(self.cf(CF_UPDATES), u.digest(), encode(u));
        }
        if let protocol::entry::Body::Enrollment(list) = &entry.body {
            for e in list {
                batch.put_cf(self.cf(CF_DEVICES), e.body.device.0, encode(e));
            }
        }
        let mut tip_value = key.to_vec();
        tip_value.extend_from_slice(&hash);
        batch.put_cf(self.cf(CF_CONSENSUS), TIP, tip_value);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
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

    /// Appends a consensus WAL record under `key`, synced before returning (a node persists
    /// its vote before sending it).
    pub fn wal_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let mut k = b"wal/".to_vec();
        k.extend_from_slice(key);
        self.db.put_cf_opt(self.cf(CF_CONSENSUS), k, value, &opts)?;
        Ok(())
    }

    /// A WAL record.
    pub fn wal_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut k = b"wal/".to_vec();
        k.extend_from_slice(key);
        Ok(self.db.get_cf(self.cf(CF_CONSENSUS), k)?)
    }
}
