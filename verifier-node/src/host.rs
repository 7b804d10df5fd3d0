//! The tokio host around the sans-IO [`Node`]: one task owns the node and feeds it events
//! (peer messages, device requests, the wall clock); QUIC tasks move bytes; the HTTP server
//! reads a snapshot. Every queue is bounded: when one is full the message is dropped and
//! counted, memory does not grow.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use protocol::codec::{decode, encode};
use protocol::entry::{Body, Certified};
use protocol::messages::{DeviceRequest, DeviceResponse, MAX_DEVICE_FRAME};
use protocol::net::{self, now_ms, ALPN_DEVICE, ALPN_PEER};
use protocol::snapshot::{Checkpoint, SnapshotReply};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::app::{body_kind, Reject};
use crate::config::Config;
use crate::consensus::node::{Node, NodeConfig, Output, Stats};
use crate::consensus::wire::{PeerMsg, MAX_PEER_FRAME};
use crate::store::{Log, Store};

/// Events queued for the node task.
pub const EVENT_QUEUE: usize = 8192;
/// Messages queued per peer link.
pub const PEER_QUEUE: usize = 4096;
/// Longest wait between two dials of a lost peer: a restarted validator is heard within it.
pub const PEER_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Device requests per second per connection (burst twice that).
pub const DEVICE_RATE: f64 = 50.0;

/// A failure that stops the validator.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The log.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The node.
    #[error(transparent)]
    Node(#[from] crate::consensus::node::NodeError),
    /// The network.
    #[error(transparent)]
    Net(#[from] protocol::net::NetError),
    /// Binding a socket.
    #[error("binding {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The node stopped on a fatal error.
    #[error("node stopped: {0}")]
    Fatal(String),
    /// Starting from a checkpoint failed.
    #[error("checkpoint {checkpoint}: {why}")]
    Checkpoint {
        /// The checkpoint.
        checkpoint: Checkpoint,
        /// Why.
        why: String,
    },
}

enum Event {
    Peer(u16, PeerMsg),
    /// A device's, operator's or authority's request (never a subscription).
    Request(DeviceRequest, oneshot::Sender<DeviceResponse>),
}

/// What the HTTP server shows: a copy the node task refreshes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Validator index.
    pub index: u16,
    /// Decided height.
    pub height: u64,
    /// Hash of the tip, hex.
    pub tip_hash: String,
    /// Next market entry due: market, step and from when (ms).
    pub next_due: Option<(u64, String, u64)>,
    /// Whether every market is final.
    pub idle: bool,
    /// The markets this validator holds, by id.
    pub markets: BTreeMap<u64, MarketView>,
    /// Node counters.
    pub stats: Stats,
    /// Updates pooled for the open iterations.
    pub pooled_updates: usize,
    /// Of those, the ones still waiting for a batch verification.
    pub unverified_updates: usize,
}

/// One market as the status API shows it.
#[derive(Debug, Clone, Default)]
pub struct MarketView {
    /// Market id.
    pub market_id: u64,
    /// Slots T.
    pub slots: u16,
    /// Registration close (ms).
    pub registration_close_ms: u64,
    /// Execution start (ms).
    pub execution_start_ms: u64,
    /// Enrolled devices.
    pub enrolled: usize,
    /// ADMM iterations decided.
    pub iteration: u32,
    /// Whether its final entry is in.
    pub is_final: bool,
    /// Whether its update bodies are pruned (its entries are followed by certificate).
    pub pruned: bool,
    /// (k, primal residual, dual residual, ε_pri, ε_dual), raw fixed point.
    pub residuals: Vec<(u32, [i64; 4])>,
    /// Latest x̄ (W per device, raw fixed point).
    pub x_bar: Vec<i64>,
    /// Latest u (scaled dual, raw).
    pub u: Vec<i64>,
    /// Final prices (raw), once final.
    pub prices: Vec<i64>,
    /// Whether it settles (its spec states a meter window and imbalance premium).
    pub settles: bool,
    /// Meter readings committed (while it settles).
    pub readings: usize,
    /// Its settlement totals, once settled.
    pub totals: Option<protocol::settlement::Totals>,
}

/// Transport counters.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Peer links up (outgoing connections established).
    pub peers_connected: AtomicU64,
    /// Messages dropped because a queue was full.
    pub dropped_full: AtomicU64,
    /// Frames refused (oversize, malformed, unknown peer, rate).
    pub bad_frames: AtomicU64,
    /// Device requests answered.
    pub device_requests: AtomicU64,
    /// Device requests refused by the rate limit.
    pub rate_limited: AtomicU64,
    /// Enrollments or updates naming another device than their connection's key.
    pub wrong_sender: AtomicU64,
    /// Markets whose update bodies this validator pruned.
    pub pruned_markets: AtomicU64,
    /// Update bodies pruned.
    pub pruned_bodies: AtomicU64,
    /// Snapshots served to nodes and gateways starting from a checkpoint.
    pub snapshots_served: AtomicU64,
    /// Bytes queued to peers, by message kind ([`PeerMsg::kind`]; a broadcast counts once per link).
    pub peer_sent_bytes: Mutex<BTreeMap<&'static str, u64>>,
}

impl NetCounters {
    /// Counts `bytes` queued to `links` peers for a message of `kind`.
    pub fn sent(&self, kind: &'static str, bytes: usize, links: usize) {
        let mut sent = self.peer_sent_bytes.lock().unwrap_or_else(|p| p.into_inner());
        *sent.entry(kind).or_default() += (bytes * links) as u64;
    }
}

/// State shared between the node task, QUIC tasks and HTTP.
pub struct Shared {
    /// The snapshot.
    pub snapshot: RwLock<Snapshot>,
    /// Counters.
    pub net: NetCounters,
    /// The log (read side).
    pub store: Arc<Store>,
    /// Commits, for subscribers.
    pub commits: broadcast::Sender<Arc<Certified>>,
    /// When the process started.
    pub started: Instant,
    /// Latency and verification-time histograms (`/metrics`).
    pub histograms: crate::metrics::Histograms,
    /// Snapshots being read and sent at once (at most [`SNAPSHOTS_AT_ONCE`]).
    pub snapshot_permits: Arc<tokio::sync::Semaphore>,
    /// The ledger as of the last settlement (copied from the app when one commits).
    pub accounts: RwLock<Option<BTreeMap<protocol::ids::DeviceId, crate::app::Account>>>,
}

/// Most snapshot requests a validator serves at once; others are answered "busy".
pub const SNAPSHOTS_AT_ONCE: usize = 2;

/// A running validator's handles.
pub struct Running {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// The QUIC address it listens on.
    pub quic_addr: SocketAddr,
    /// The HTTP address it listens on.
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    node_task: tokio::task::JoinHandle<Result<(), HostError>>,
}

impl Running {
    /// Stops the validator and waits for the node task.
    pub async fn stop(self) -> Result<(), HostError> {
        let _ = self.shutdown.send(true);
        self.node_task.await.unwrap_or_else(|e| Err(HostError::Fatal(e.to_string())))
    }

    /// Resolves when the node task ends by itself (a fatal error); cancel-safe, so it can race
    /// a shutdown signal and [`Running::stop`] still works afterwards. Once it resolved, the
    /// task is gone and `stop` returns at once.
    pub async fn finished(&mut self) -> Result<(), HostError> {
        let r = (&mut self.node_task).await.unwrap_or_else(|e| Err(HostError::Fatal(e.to_string())));
        self.node_task = tokio::spawn(async { Ok(()) });
        r
    }
}

/// The configurations of a whole validator set on loopback: validator i listens for QUIC on
/// `quic_port + i` and for HTTP on `http_port + i`, keeps its log in `dir/db<i>`, and takes its
/// verifying keys from `keys_dir`. For tests, benchmarks and the local demo.
pub fn local_configs(
    dir: &std::path::Path,
    keys_dir: &std::path::Path,
    genesis: &protocol::entry::Entry,
    keys: &[ed25519_dalek::SigningKey],
    quic_port: u16,
    http_port: u16,
) -> Result<Vec<Config>, String> {
    use crate::config::{NodeFile, PeerFile};
    let protocol::entry::Body::Genesis(g) = &genesis.body else { return Err("not a genesis entry".into()) };
    let vks = crate::config::read_verifying_keys(keys_dir, &g.verifying_keys).map_err(|e| e.to_string())?;
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let n = keys.len() as u16;
    Ok((0..n)
        .map(|i| {
            let file = NodeFile {
                index: i,
                key_file: "in-process".into(),
                genesis_file: "in-process".into(),
                keys_dir: keys_dir.to_path_buf(),
                db: dir.join(format!("db{i}")),
                listen: addr(quic_port + i),
                http: addr(http_port + i),
                peers: (0..n).filter(|&j| j != i).map(|j| PeerFile { index: j, addr: addr(quic_port + j) }).collect(),
                retention_s: None,
                snapshot_interval: None,
                checkpoint: None,
            };
            Config { file, key: keys[i as usize].clone(), genesis: genesis.clone(), keys: vks.clone(), checkpoint: None }
        })
        .collect())
}

/// Starts the whole validator set of [`local_configs`] in this process.
pub async fn start_local(
    dir: &std::path::Path,
    keys_dir: &std::path::Path,
    genesis: &protocol::entry::Entry,
    keys: &[ed25519_dalek::SigningKey],
    quic_port: u16,
    http_port: u16,
) -> Result<Vec<Running>, String> {
    let mut running = vec![];
    for (i, cfg) in local_configs(dir, keys_dir, genesis, keys, quic_port, http_port)?.into_iter().enumerate() {
        running.push(start(cfg).await.map_err(|e| format!("validator {i}: {e}"))?);
    }
    Ok(running)
}

/// Starts a validator: opens the log, binds QUIC and HTTP, dials the peers, runs the node.
pub async fn start(cfg: Config) -> Result<Running, HostError> {
    net::install_crypto();
    let store = Arc::new(Store::open(&cfg.file.db)?);
    if let Some(checkpoint) = cfg.checkpoint {
        start_at_checkpoint(&store, &cfg, &checkpoint).await?;
    }
    let mut node_cfg = NodeConfig::new(cfg.file.index);
    node_cfg.snapshot_interval = cfg.file.snapshot_interval.unwrap_or(crate::consensus::node::DEFAULT_SNAPSHOT_INTERVAL);
    let node = Node::open(node_cfg, cfg.key.clone(), &cfg.genesis, cfg.keys.clone(), store.clone())?;
    let Body::Genesis(genesis) = &cfg.genesis.body else { unreachable!("config checked the genesis") };
    let validators: Vec<[u8; 32]> = genesis.validators.iter().map(|v| v.0).collect();

    let server = net::server_config(&cfg.key)?;
    let endpoint = net::server_endpoint(&cfg.key, server, cfg.file.listen).map_err(|e| HostError::Bind { addr: cfg.file.listen, reason: e.to_string() })?;
    let quic_addr = endpoint.local_addr().map_err(|e| HostError::Bind { addr: cfg.file.listen, reason: e.to_string() })?;
    let http = tokio::net::TcpListener::bind(cfg.file.http).await.map_err(|e| HostError::Bind { addr: cfg.file.http, reason: e.to_string() })?;
    let http_addr = http.local_addr().map_err(|e| HostError::Bind { addr: cfg.file.http, reason: e.to_string() })?;

    let (commits, _) = broadcast::channel(1024);
    let shared = Arc::new(Shared {
        snapshot: RwLock::new(Snapshot::default()),
        net: NetCounters::default(),
        store,
        commits,
        started: Instant::now(),
        histograms: Default::default(),
        snapshot_permits: Arc::new(tokio::sync::Semaphore::new(SNAPSHOTS_AT_ONCE)),
        accounts: RwLock::new(None),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);

    // Outgoing peer links.
    let mut links = BTreeMap::new();
    for p in &cfg.file.peers {
        let (tx, rx) = mpsc::channel::<Arc<Vec<u8>>>(PEER_QUEUE);
        links.insert(p.index, tx);
        let client = net::client_config(&cfg.key, validators[p.index as usize], ALPN_PEER)?;
        tokio::spawn(peer_link(endpoint.clone(), client, p.addr, p.index, rx, shared.clone(), shutdown_rx.clone()));
    }
    tokio::spawn(accept_loop(endpoint.clone(), validators, events_tx, shared.clone(), shutdown_rx.clone()));
    tokio::spawn(crate::http::serve(http, shared.clone(), shutdown_rx.clone()));
    info!(validator = cfg.file.index, %quic_addr, %http_addr, peers = cfg.file.peers.len(), "validator started");
    let retention_ms = cfg.file.retention_s.map(|s| s.saturating_mul(1000));
    let node_task = tokio::spawn(node_loop(node, events_rx, links, shared.clone(), shutdown_rx, endpoint, retention_ms));
    Ok(Running { shared, quic_addr, http_addr, shutdown, node_task })
}

/// Rounds of asking every peer for the checkpoint's snapshot before a start gives up.
pub const CHECKPOINT_ROUNDS: u32 = 8;

/// Starts an empty database from a trusted checkpoint (docs/protocol.md §6.10): fetches the
/// snapshot at it from the peers, checks it against the checkpoint and the genesis
/// validators' certificate, and stores it as the database's base. A database that already
/// holds entries keeps them (the checkpoint must then not contradict them).
async fn start_at_checkpoint(store: &Store, cfg: &Config, checkpoint: &Checkpoint) -> Result<(), HostError> {
    let refuse = |why: String| HostError::Checkpoint { checkpoint: *checkpoint, why };
    if let Some((tip, _)) = store.tip()? {
        match store.entry(checkpoint.height)? {
            Some(e) if e.hash() != checkpoint.hash => return Err(refuse("the database holds another entry at that height".into())),
            _ => info!(tip, %checkpoint, "the database holds entries: starting from them, not from the checkpoint"),
        }
        return Ok(());
    }
    let Body::Genesis(g) = &cfg.genesis.body else { unreachable!("config checked the genesis") };
    let peers: Vec<(SocketAddr, [u8; 32])> = cfg.file.peers.iter().map(|p| (p.addr, g.validators[p.index as usize].0)).collect();
    if peers.is_empty() {
        return Err(refuse("no peers are configured to fetch it from".into()));
    }
    let bind: SocketAddr = if cfg.file.listen.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("valid");
    let endpoint = net::client_endpoint(bind)?;
    info!(%checkpoint, peers = peers.len(), "starting from a checkpoint: fetching its snapshot");
    let fetched = net::fetch_checkpoint(&endpoint, &peers, &cfg.key, &cfg.genesis, checkpoint, CHECKPOINT_ROUNDS).await?;
    endpoint.close(0u32.into(), b"done");
    store.start_at_checkpoint(&cfg.genesis, &fetched.entry, &fetched.state)?;
    info!(%checkpoint, from = %fetched.from, bytes = fetched.state.len(), markets = fetched.snapshot.markets.len(), "checkpoint snapshot verified and stored");
    Ok(())
}

/// The answer to a snapshot request: the snapshot at `height` and the entry there, if held.
fn snapshot_reply(store: &Store, height: u64) -> Result<SnapshotReply, crate::store::StoreError> {
    if let (Some(state), Some(entry)) = (store.snapshot(height)?, store.certified(height)?) {
        return Ok(SnapshotReply::Held { entry, state });
    }
    Ok(SnapshotReply::NotHeld { held: store.snapshot_heights()? })
}

/// Ticks the node at the wall clock, timing the batch verification of pooled proofs first
/// (the tick would run it; the node stays clock-free).
fn tick(node: &mut Node<Arc<Store>>, shared: &Shared) -> Vec<Output> {
    let t0 = Instant::now();
    if node.verify_pending() > 0 {
        shared.histograms.verified(t0.elapsed());
    }
    node.tick(now_ms())
}

fn refresh(node: &Node<Arc<Store>>, shared: &Shared, last: Option<&Certified>) {
    let app = node.app();
    let mut s = shared.snapshot.write().expect("snapshot lock");
    s.index = node.index();
    s.height = app.tip().height;
    s.tip_hash = protocol::ids::hex(&app.tip().hash);
    s.next_due = app.next_due().map(|(t, d)| (d.market_id, format!("{:?}", d.step), t));
    s.idle = app.is_idle();
    s.stats = node.stats().clone();
    (s.pooled_updates, s.unverified_updates) = node.pool_sizes();
    s.markets.retain(|id, _| app.market(*id).is_some());
    for m in app.markets() {
        let v = s.markets.entry(m.id()).or_default();
        let spec = m.spec();
        v.market_id = m.id();
        v.slots = spec.slots;
        v.registration_close_ms = spec.registration_close_ms;
        v.execution_start_ms = spec.execution_start_ms;
        v.enrolled = m.enrolled().len();
        v.iteration = m.iterations();
        // (Set by `prune_due` when this node pruned it; from replay after a restart.)
        v.pruned |= m.is_pruned();
        v.is_final = m.is_final();
        v.settles = spec.settlement.is_some();
        v.readings = m.settling().map_or(0, |st| st.readings.len());
    }
    drop(s);
    // The ledger: copied once, then each settled device's account when a settlement commits.
    let mut accounts = shared.accounts.write().expect("accounts lock");
    match (accounts.as_mut(), last.map(|c| &c.entry.body)) {
        (None, _) => *accounts = Some(app.accounts().clone()),
        (Some(held), Some(Body::Settlement(b))) => {
            for bill in &b.bills {
                if let Some(a) = app.accounts().get(&bill.device) {
                    held.insert(bill.device, a.clone());
                }
            }
        }
        _ => {}
    }
    drop(accounts);
    let mut s = shared.snapshot.write().expect("snapshot lock");
    if let Some(c) = last {
        match &c.entry.body {
            Body::Iteration(b) => {
                if let Some(v) = s.markets.get_mut(&b.market_id) {
                    v.residuals.push((b.iteration, b.residuals));
                    v.x_bar = b.x_bar.clone();
                    v.u = b.u.clone();
                }
            }
            Body::Final(f) => {
                if let Some(v) = s.markets.get_mut(&f.market_id) {
                    v.prices = f.prices.clone();
                }
            }
            Body::Settlement(b) => {
                if let Some(v) = s.markets.get_mut(&b.market_id) {
                    v.totals = Some(b.totals);
                }
            }
            _ => {}
        }
    }
}

async fn node_loop(
    mut node: Node<Arc<Store>>,
    mut events: mpsc::Receiver<Event>,
    links: BTreeMap<u16, mpsc::Sender<Arc<Vec<u8>>>>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    endpoint: quinn::Endpoint,
    retention_ms: Option<u64>,
) -> Result<(), HostError> {
    let mut last_prune_check = 0u64;
    // The residual history of a restarted node comes from its log.
    for h in 1..=node.app().tip().height {
        if let Some(c) = node.log().certified(h)? {
            refresh(&node, &shared, Some(&c));
        }
    }
    refresh(&node, &shared, None);
    let mut seen_commits = node.stats().commits;
    let result = loop {
        let wake = node.next_wakeup();
        let wait = Duration::from_millis(wake.saturating_sub(now_ms()).min(1000));
        let outputs = tokio::select! {
            ev = events.recv() => match ev {
                None => break Ok(()),
                Some(Event::Peer(from, msg)) => node.on_peer(now_ms(), from, msg),
                Some(Event::Request(req, reply)) => {
                    let now = now_ms();
                    let verdict = match req {
                        DeviceRequest::Enroll(e) => node.on_enrollment(now, e),
                        DeviceRequest::Update(u) => node.on_update(now, u),
                        DeviceRequest::Withdraw(w) => node.on_withdrawal(now, w),
                        DeviceRequest::Open(o) => node.on_open(now, o),
                        DeviceRequest::Revoke(r) => node.on_revocation(now, r),
                        DeviceRequest::Meter(list) => node.on_readings(now, list),
                        DeviceRequest::Subscribe { .. } | DeviceRequest::Snapshot { .. } => Err(Reject::NotDue("a subscription or snapshot request is not admitted".into())),
                    };
                    let _ = reply.send(answer(verdict));
                    vec![]
                }
            },
            _ = tokio::time::sleep(wait) => tick(&mut node, &shared),
            _ = shutdown.changed() => break Ok(()),
        };
        // What this step decided goes out before a due tick runs: the tick may start the next
        // height and build its entry, which must not hold back a commit's delivery.
        let mut committed = deliver(&node, &shared, &links, outputs);
        // A steady stream of events must not starve timers and deadlines.
        if now_ms() >= node.next_wakeup() {
            let outputs = tick(&mut node, &shared);
            committed = deliver(&node, &shared, &links, outputs).or(committed);
        }
        if committed.is_none() {
            refresh(&node, &shared, None);
        }
        // One latency per entry committed by consensus (several in one step share the last's).
        let commits = node.stats().commits;
        if let Some(latency) = node.stats().last_commit_latency_ms {
            for _ in seen_commits..commits {
                shared.histograms.commit(latency);
            }
        }
        seen_commits = commits;
        if let Some(why) = node.fatal() {
            break Err(HostError::Fatal(why.to_string()));
        }
        if let Some(retention) = retention_ms {
            let now = now_ms();
            if now >= last_prune_check + PRUNE_CHECK_MS {
                last_prune_check = now;
                prune_due(&node, &shared, retention, now)?;
            }
        }
    };
    endpoint.close(0u32.into(), b"shutdown");
    result
}

/// Sends a step's outputs: messages to the peer links (a full link drops, counted), and each
/// committed entry to the subscribers after refreshing the shared views. Returns the last entry
/// committed, if any.
fn deliver(node: &Node<Arc<Store>>, shared: &Shared, links: &BTreeMap<u16, mpsc::Sender<Arc<Vec<u8>>>>, outputs: Vec<Output>) -> Option<Arc<Certified>> {
    let mut committed = None;
    for o in outputs {
        match o {
            Output::Broadcast(m) => {
                let bytes = Arc::new(encode(&m));
                shared.net.sent(m.kind(), bytes.len(), links.len());
                for tx in links.values() {
                    if tx.try_send(bytes.clone()).is_err() {
                        shared.net.dropped_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Output::Send { to, msg } => {
                if let Some(tx) = links.get(&to) {
                    let bytes = Arc::new(encode(&msg));
                    shared.net.sent(msg.kind(), bytes.len(), 1);
                    if tx.try_send(bytes).is_err() {
                        shared.net.dropped_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Output::Committed(c) => {
                info!(validator = node.index(), height = c.entry.height, kind = body_kind(&c.entry.body), "committed");
                refresh(node, shared, Some(&c));
                let _ = shared.commits.send(c.clone());
                committed = Some(c);
            }
        }
    }
    committed
}

/// How often a validator with a retention looks for markets to prune.
const PRUNE_CHECK_MS: u64 = 1000;

/// Prunes the update bodies of every market held that is over (final, and settled if it
/// settles) and whose execution ended (its meter deadline passed, if it settles) `retention` ms
/// before `now` and that is not pruned yet (`Store::prune_market`, one synced batch each).
/// Markets retired from memory ([`crate::app::MAX_FINISHED_MARKETS`]) before their retention
/// passed are not looked at again: the retention should span fewer markets than that.
fn prune_due(node: &Node<Arc<Store>>, shared: &Shared, retention: u64, now: u64) -> Result<(), HostError> {
    let mut any = false;
    // (Only markets that are over: a settling market's schedules are still needed.)
    for m in node.app().markets().filter(|m| m.is_over()) {
        let (opened, Some(final_height)) = m.heights() else { continue };
        let end = protocol::market::over_ms(m.spec());
        if now < end.saturating_add(retention) || shared.store.is_pruned(m.id())? {
            continue;
        }
        let p = shared.store.prune_market(m.id(), opened, final_height)?;
        if let Some(v) = shared.snapshot.write().expect("snapshot lock").markets.get_mut(&m.id()) {
            v.pruned = true;
        }
        shared.net.pruned_markets.fetch_add(1, Ordering::Relaxed);
        shared.net.pruned_bodies.fetch_add(p.bodies, Ordering::Relaxed);
        info!(validator = node.index(), market = m.id(), bodies = p.bodies, bytes = p.bytes, heights = %format!("{opened}..={final_height}"), "pruned the update bodies of a market past its retention");
        any = true;
    }
    if any {
        // The space comes back by compaction, off the node's task.
        let store = shared.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.compact_updates() {
                warn!("compacting after pruning: {e}");
            }
        });
    }
    Ok(())
}

fn answer(r: Result<(), Reject>) -> DeviceResponse {
    match r {
        Ok(()) => DeviceResponse::Accepted,
        Err(e) => DeviceResponse::Rejected { label: e.label().into(), message: e.to_string() },
    }
}

/// Keeps one outgoing connection to a peer, reconnecting with exponential backoff, and sends
/// each queued message on its own unidirectional stream.
async fn peer_link(
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    addr: SocketAddr,
    index: u16,
    mut rx: mpsc::Receiver<Arc<Vec<u8>>>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = protocol::backoff::Backoff::new(Duration::from_millis(100), PEER_BACKOFF_MAX);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let conn = match endpoint.connect_with(client.clone(), addr, "gridproof") {
            Ok(c) => match c.await {
                Ok(conn) => conn,
                Err(e) => {
                    let wait = backoff.next_delay();
                    debug!(peer = index, %addr, "connect failed: {e}; retrying in {wait:?}");
                    tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = shutdown.changed() => return }
                    continue;
                }
            },
            Err(e) => {
                warn!(peer = index, %addr, "cannot connect: {e}");
                return;
            }
        };
        info!(peer = index, %addr, "peer link up");
        backoff.reset();
        shared.net.peers_connected.fetch_add(1, Ordering::Relaxed);
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return },
                _ = conn.closed() => break,
                _ = shutdown.changed() => return,
            };
            let sent = async {
                let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
                s.write_all(&msg).await.map_err(|e| e.to_string())?;
                s.finish().map_err(|e| e.to_string())
            }
            .await;
            if let Err(e) = sent {
                debug!(peer = index, "send failed: {e}");
                break;
            }
        }
        shared.net.peers_connected.fetch_sub(1, Ordering::Relaxed);
        info!(peer = index, %addr, "peer link down");
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    validators: Vec<[u8; 32]>,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            _ = shutdown.changed() => return,
        };
        let (validators, events, shared) = (validators.clone(), events.clone(), shared.clone());
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    debug!("handshake failed: {e}");
                    shared.net.bad_frames.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let alpn = conn.handshake_data().and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok()).and_then(|h| h.protocol);
            let key = match net::peer_key(&conn) {
                Ok(k) => k,
                Err(e) => {
                    warn!(remote = %conn.remote_address(), "refused a connection: {e}");
                    shared.net.bad_frames.fetch_add(1, Ordering::Relaxed);
                    return conn.close(1u32.into(), b"no ed25519 key");
                }
            };
            match alpn.as_deref() {
                Some(a) if a == ALPN_PEER => match validators.iter().position(|v| *v == key) {
                    Some(i) => peer_inbound(conn, i as u16, events, shared).await,
                    None => {
                        warn!("refused a peer connection from a key that is not a genesis validator");
                        shared.net.bad_frames.fetch_add(1, Ordering::Relaxed);
                        conn.close(2u32.into(), b"not a validator of this chain");
                    }
                },
                Some(a) if a == ALPN_DEVICE => device_inbound(conn, key, events, shared).await,
                _ => conn.close(3u32.into(), b"unknown protocol"),
            }
        });
    }
}

async fn peer_inbound(conn: quinn::Connection, from: u16, events: mpsc::Sender<Event>, shared: Arc<Shared>) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let bytes = match recv.read_to_end(MAX_PEER_FRAME).await {
            Ok(b) => b,
            Err(e) => {
                debug!(peer = from, "bad frame: {e}");
                shared.net.bad_frames.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        match decode::<PeerMsg>("peer message", &bytes, MAX_PEER_FRAME) {
            Ok(msg) => {
                if events.try_send(Event::Peer(from, msg)).is_err() {
                    shared.net.dropped_full.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                debug!(peer = from, "undecodable frame: {e}");
                shared.net.bad_frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A token bucket: `rate` per second, bursts of twice that.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * DEVICE_RATE).min(2.0 * DEVICE_RATE);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn device_inbound(conn: quinn::Connection, key: [u8; 32], events: mpsc::Sender<Event>, shared: Arc<Shared>) {
    let bucket = Arc::new(Mutex::new(Bucket { tokens: 2.0 * DEVICE_RATE, last: Instant::now() }));
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let (events, shared, bucket) = (events.clone(), shared.clone(), bucket.clone());
        tokio::spawn(async move {
            let request = match net::read_frame(&mut recv, MAX_DEVICE_FRAME).await {
                Ok(Some(b)) => parse_device_request(&b, key),
                Ok(None) => Err(DeviceRefusal::Malformed("empty request".into())),
                Err(e) => Err(DeviceRefusal::Malformed(e.to_string())),
            };
            let reply = |label: &str, message: String| DeviceResponse::Rejected { label: label.into(), message };
            let response = match request {
                Err(e) => {
                    let counter = match e {
                        DeviceRefusal::Malformed(_) => &shared.net.bad_frames,
                        DeviceRefusal::WrongSender { .. } => &shared.net.wrong_sender,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    reply(e.label(), e.to_string())
                }
                Ok(DeviceRequest::Subscribe { from }) => return subscribe(send, from, shared).await,
                Ok(DeviceRequest::Snapshot { height }) => {
                    // One token like any request, and at most SNAPSHOTS_AT_ONCE being read and
                    // sent at a time (each is up to 32 MiB in memory): else "busy".
                    let permit = if bucket.lock().expect("bucket").take() {
                        shared.snapshot_permits.clone().try_acquire_owned().ok()
                    } else {
                        shared.net.rate_limited.fetch_add(1, Ordering::Relaxed);
                        None
                    };
                    let reply = match permit {
                        None => SnapshotReply::Busy,
                        Some(_) => {
                            let store = shared.store.clone();
                            match tokio::task::spawn_blocking(move || snapshot_reply(&store, height)).await {
                                Ok(Ok(r)) => r,
                                Ok(Err(e)) => {
                                    warn!(height, "reading a snapshot: {e}");
                                    SnapshotReply::NotHeld { held: vec![] }
                                }
                                Err(_) => SnapshotReply::NotHeld { held: vec![] },
                            }
                        }
                    };
                    if matches!(reply, SnapshotReply::Held { .. }) {
                        shared.net.snapshots_served.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = net::write_frame(&mut send, &encode(&reply)).await;
                    let _ = send.finish();
                    drop(permit);
                    return;
                }
                Ok(_) if !bucket.lock().expect("bucket").take() => {
                    shared.net.rate_limited.fetch_add(1, Ordering::Relaxed);
                    reply("rate_limited", format!("more than {DEVICE_RATE} requests per second"))
                }
                Ok(req) => {
                    let (tx, rx) = oneshot::channel();
                    if events.try_send(Event::Request(req, tx)).is_err() {
                        shared.net.dropped_full.fetch_add(1, Ordering::Relaxed);
                        reply("overloaded", "the validator's queue is full".into())
                    } else {
                        rx.await.unwrap_or_else(|_| reply("overloaded", "the validator is stopping".into()))
                    }
                }
            };
            shared.net.device_requests.fetch_add(1, Ordering::Relaxed);
            let _ = net::write_frame(&mut send, &encode(&response)).await;
            let _ = send.finish();
        });
    }
}

/// Why a device's frame was refused before it reached the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceRefusal {
    /// Empty, oversize, not canonical, or not a request.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A message signed by another key than the connection's TLS key (the device of an
    /// enrollment, update or withdrawal; the operator of an opening; the authority of a
    /// revocation).
    #[error("the message's signer {claimed} is not this connection's key")]
    WrongSender {
        /// The key the message names as its signer.
        claimed: protocol::ids::DeviceId,
    },
}

impl DeviceRefusal {
    /// The label of the rejection (answered to the device, counted in metrics).
    pub fn label(&self) -> &'static str {
        match self {
            DeviceRefusal::Malformed(_) => "malformed",
            DeviceRefusal::WrongSender { .. } => "wrong_sender",
        }
    }
}

/// A device's frame as it arrives on a connection whose TLS key is `key`: decoded (capped at
/// [`MAX_DEVICE_FRAME`], canonical, no trailing bytes) and, for a signed message, signed by
/// exactly that key (the QUIC client authenticated with it). A subscription may come from any key. What passes goes to
/// the node's own admission checks (signature, market, timing, proof).
pub fn parse_device_request(frame: &[u8], key: [u8; 32]) -> Result<DeviceRequest, DeviceRefusal> {
    let request: DeviceRequest = decode("device request", frame, MAX_DEVICE_FRAME).map_err(|e| DeviceRefusal::Malformed(e.to_string()))?;
    let claimed = match &request {
        DeviceRequest::Enroll(e) => e.body.device,
        DeviceRequest::Update(u) => u.body.device,
        DeviceRequest::Withdraw(w) => w.body.device,
        DeviceRequest::Open(o) => protocol::ids::DeviceId(o.operator.0),
        DeviceRequest::Revoke(r) => protocol::ids::DeviceId(r.authority.0),
        DeviceRequest::Meter(list) => match list.iter().find(|r| r.body.device.0 != key) {
            Some(other) => other.body.device,
            None => protocol::ids::DeviceId(key),
        },
        DeviceRequest::Subscribe { .. } | DeviceRequest::Snapshot { .. } => return Ok(request),
    };
    if claimed.0 != key {
        return Err(DeviceRefusal::WrongSender { claimed });
    }
    Ok(request)
}

/// Streams certified entries from `from`, then new ones as they commit.
async fn subscribe(mut send: quinn::SendStream, from: u64, shared: Arc<Shared>) {
    // A database started from a checkpoint holds nothing between the genesis and its base:
    // the stream ends at once, and the subscriber asks another validator.
    if shared.store.base().ok().flatten().is_some_and(|base| from < base) {
        let _ = send.finish();
        return;
    }
    let mut live = shared.commits.subscribe();
    let mut next = from;
    loop {
        // Catch up from the store, then follow the broadcast.
        while let Ok(Some(c)) = shared.store.certified(next) {
            if net::write_frame(&mut send, &encode(&c)).await.is_err() {
                return;
            }
            next += 1;
        }
        match live.recv().await {
            Ok(c) if c.entry.height < next => continue,
            Ok(c) if c.entry.height == next => {
                if net::write_frame(&mut send, &encode(&*c)).await.is_err() {
                    return;
                }
                next += 1;
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
