//! Opening a node on its log: the genesis check, the replay of the stored entries (from the
//! genesis or from a checkpoint's snapshot), and the snapshots a node stores for others to
//! start from (docs/protocol.md §6.10).

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use malachitebft_core_consensus::{Params, State};
use malachitebft_core_types::ValuePayload;
use protocol::codec::encode;
use protocol::entry::{Body, Certified, CommitCertificate, Entry};
use protocol::snapshot::MAX_SNAPSHOT_BYTES;
use prover::VerifierKeys;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tracing::{info, warn};

use super::{pool, Node, NodeConfig, NodeError, Stats};
use crate::app::ChainApp;
use crate::consensus::context::{Address, GridContext, Height, ValidatorSet};
use crate::store::{Log, StoreError};

impl<L: Log> Node<L> {
    /// Opens validator `cfg.index` on `log`: stores `genesis` if the log is empty, checks that
    /// the stored genesis is the same, and replays the stored entries into the market app —
    /// from genesis, or, for a log started from a checkpoint, from the snapshot at its base
    /// ([`Log::base`]) and the entries after it.
    pub fn open(cfg: NodeConfig, key: SigningKey, genesis: &Entry, keys: VerifierKeys, mut log: L) -> Result<Node<L>, NodeError> {
        let app = ChainApp::new(genesis, keys).map_err(|e| NodeError::Corrupt(format!("genesis: {e}")))?;
        let Body::Genesis(g) = &genesis.body else { unreachable!("ChainApp::new checked the genesis") };
        let validators = ValidatorSet::from_genesis(&g.validators).ok_or(NodeError::Corrupt("a genesis validator key is invalid".into()))?;
        let mine = g.validators.get(cfg.index as usize).ok_or(NodeError::Corrupt(format!("no validator {} in genesis", cfg.index)))?;
        if mine.0 != key.verifying_key().to_bytes() {
            return Err(NodeError::Corrupt(format!("this key is not validator {}'s key in the genesis", cfg.index)));
        }
        match log.certified(0)? {
            None => log.decide(&Certified {
                entry: genesis.clone(),
                certificate: CommitCertificate { height: 0, round: 0, hash: genesis.hash(), votes: vec![] },
                updates: vec![],
            })?,
            Some(stored) if stored.entry != *genesis => {
                return Err(NodeError::Corrupt("the database holds another chain's genesis".into()));
            }
            Some(_) => {}
        }
        let ctx = GridContext { chain: app.chain() };
        let mut node = Node {
            ctx,
            key,
            validators,
            app,
            log,
            state: None,
            running: None,
            timers: BTreeMap::new(),
            payloads: BTreeMap::new(),
            announced: BTreeSet::new(),
            get_value: None,
            own_proposals: BTreeMap::new(),
            pools: pool::Pools::default(),
            out: Vec::new(),
            now: 0,
            rng: ChaCha20Rng::seed_from_u64(cfg.rng_seed),
            stats: Stats::default(),
            replaying: false,
            last_status: 0,
            sync_sent: None,
            fatal: None,
            twin: None,
            served: BTreeMap::new(),
            cfg,
        };
        let tip = node.log.tip()?.map(|t| t.0).unwrap_or(0);
        let first = match node.log.base()? {
            None => 1,
            Some(base) => {
                node.restore_base(genesis, base)?;
                base + 1
            }
        };
        for h in first..=tip {
            let c = node.log.certified(h)?.ok_or(NodeError::Corrupt(format!("stored entry {h} missing")))?;
            // The store serves a pruned market's iteration entries without bodies.
            node.app.apply_certified(&c).map_err(|e| NodeError::Corrupt(format!("stored entry {h}: {e}")))?;
        }
        node.state = Some(node.new_state());
        // A restarted node asks its peers for what it missed at once, instead of waiting for
        // a status announcement or the next height's votes.
        if tip > 0 {
            node.request_sync(None);
        }
        Ok(node)
    }

    pub(super) fn new_state(&self) -> State<GridContext> {
        let params =
            Params { address: Address(self.cfg.index), threshold_params: Default::default(), value_payload: ValuePayload::ProposalAndParts, enabled: true };
        State::new(self.ctx.clone(), Height(self.app.tip().height + 1), self.validators.clone(), params, 4096, 1024)
    }


    /// Restores the state at a checkpoint base: the stored snapshot (it must hash to the base
    /// entry's state root) and the base entry applied on it.
    fn restore_base(&mut self, genesis: &Entry, base: u64) -> Result<(), NodeError> {
        let corrupt = |what: String| NodeError::Corrupt(format!("checkpoint base {base}: {what}"));
        let c = self.log.certified(base)?.ok_or_else(|| corrupt("the base entry is missing".into()))?;
        let bytes = self.log.snapshot(base)?.ok_or_else(|| corrupt("its snapshot is missing".into()))?;
        let snap = protocol::snapshot::open(&c.entry, &bytes).map_err(|e| corrupt(format!("the stored snapshot: {e}")))?;
        let keys = self.app.keys().clone();
        self.app = ChainApp::from_snapshot(genesis, keys, &snap).map_err(|e| corrupt(e.to_string()))?;
        self.app.apply_certified(&c).map_err(|e| corrupt(format!("the base entry does not apply: {e}")))?;
        info!(validator = self.cfg.index, base, "state restored from the checkpoint snapshot");
        Ok(())
    }

    /// Stores the snapshot `entry` extends (the state before it is applied) when its height
    /// is a multiple of the snapshot interval and the state is the one the entry's state root
    /// certifies (it is not while pruned history of an unfinished market is followed).
    pub(super) fn maybe_snapshot(&mut self, entry: &Entry) -> Result<(), StoreError> {
        let every = self.cfg.snapshot_interval;
        if every == 0 || entry.height % every != 0 || self.app.state_root() != Some(entry.state_root) {
            return Ok(());
        }
        let bytes = encode(&self.app.snapshot());
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            warn!(validator = self.cfg.index, height = entry.height, bytes = bytes.len(), "the state is too large to snapshot");
            return Ok(());
        }
        self.log.put_snapshot(entry.height, &bytes)?;
        self.stats.snapshots_written += 1;
        Ok(())
    }
}
