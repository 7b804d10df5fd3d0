//! `verifier-node`: a gridproof validator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use protocol::entry::{Body, Entry, Genesis};
use protocol::ids::ValidatorId;
use protocol::membership::{AttestationRequest, AuthorityId, SignedAttestation};
use protocol::messages::{DeviceRequest, DeviceResponse};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use verifier_node::audit::{audit_range, AuditReport};
use verifier_node::config::{self, Config, NodeFile, PeerFile};
use verifier_node::roles::MarketPlan;
use verifier_node::store::{Log, MemLog, Store};

/// A gridproof validator: verifies device proofs, agrees with the other validators (Malachite
/// Tendermint over QUIC) on each ADMM iteration, and keeps the hash-linked, quorum-signed log
/// in RocksDB.
#[derive(Parser)]
#[command(name = "verifier-node", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates a local cluster's files: a key, `node<i>.toml` per validator, and the genesis of
    /// one market (times counted from now).
    Init(InitArgs),
    /// Runs a validator until Ctrl-C.
    Run {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Start an empty database from this trusted checkpoint, `<height>:<entry hash>`
        /// (`GET /checkpoint` on a validator you trust prints one), instead of syncing from
        /// the genesis; overrides `checkpoint` in the file. Ignored once the database holds
        /// entries.
        #[arg(long)]
        checkpoint: Option<protocol::snapshot::Checkpoint>,
    },
    /// Replays a log from genesis: hash links, certificates, every enrollment, every proof,
    /// every aggregate, the final root and prices. Prints a verdict; exit code 1 names the first
    /// bad height.
    Audit {
        /// A validator's RocksDB directory (the validator must be stopped).
        #[arg(long, conflicts_with = "peer")]
        db: Option<PathBuf>,
        /// Or a running validator's QUIC address (with --validator-key and --genesis).
        #[arg(long, requires_all = ["validator_key", "genesis"])]
        peer: Option<SocketAddr>,
        /// The validator's public key (64 hex characters), pinned for --peer.
        #[arg(long)]
        validator_key: Option<String>,
        /// The genesis file, trusted out of band, for --peer.
        #[arg(long)]
        genesis: Option<PathBuf>,
        /// Directory of verifying-key files.
        #[arg(long)]
        keys: PathBuf,
        /// Check heights from this one in full; the entries before it are followed as a light
        /// client (links, certificates, bodies) and applied without re-verifying proofs.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Check heights up to this one (default: the tip).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Signs attestation requests (from `device init`) as an enrollment authority: each
    /// device, kind, meter point and nameplate in the request becomes an attestation valid for
    /// the given period on the chain of the given genesis. Check the nameplates against the
    /// real appliances first: they bound what the devices may commit to.
    Attest {
        /// The authority's secret key file (64 hex characters; `init` writes `authority.key`).
        #[arg(long)]
        authority_key: PathBuf,
        /// The genesis file of the chain the attestations are for.
        #[arg(long)]
        genesis: PathBuf,
        /// The request file (`attestation-request.json` from `device init`).
        #[arg(long)]
        request: PathBuf,
        /// Where to write the attestations (JSON), for the gateway's `attestations_file`.
        #[arg(long)]
        out: PathBuf,
        /// Valid for this many days from now.
        #[arg(long, default_value_t = 365)]
        valid_days: u64,
    },
    /// Opens a market on a running chain as a market operator: signs the market (its id,
    /// clock and grid cost; times counted from now) and submits it to the validators, who
    /// commit it as an `Open` entry once they checked it (the signer is an operator of the
    /// genesis, the id is new, registration closes in the future, scheduling ends before
    /// execution, and no other market executes over the same span). Succeeds when a quorum
    /// admitted it.
    OpenMarket {
        /// The operator's secret key file (`init` writes `operator.key`).
        #[arg(long)]
        operator_key: PathBuf,
        /// The genesis file of the chain.
        #[arg(long)]
        genesis: PathBuf,
        /// A validator as INDEX=HOST:PORT (its QUIC address; the key comes from the genesis).
        /// Repeat for every validator.
        #[arg(long = "peer", required = true, value_parser = verifier_node::roles::parse_peer)]
        peers: Vec<(u16, SocketAddr)>,
        /// The market.
        #[command(flatten)]
        market: MarketPlan,
    },
    /// Revokes attestations as an enrollment authority: each attestation of the file (or only
    /// those of --device) admits nothing once the validators commit the revocation, and its
    /// device leaves every market that has not started scheduling. Succeeds when a quorum
    /// admitted every revocation.
    Revoke {
        /// The authority's secret key file.
        #[arg(long)]
        authority_key: PathBuf,
        /// The genesis file of the chain.
        #[arg(long)]
        genesis: PathBuf,
        /// The attestations (JSON, as `attest` writes them).
        #[arg(long)]
        attestations: PathBuf,
        /// Only this device's attestations (64 hex characters).
        #[arg(long)]
        device: Option<String>,
        /// A validator as INDEX=HOST:PORT. Repeat for every validator.
        #[arg(long = "peer", required = true, value_parser = verifier_node::roles::parse_peer)]
        peers: Vec<(u16, SocketAddr)>,
    },
    /// Prints a running validator's status (from its HTTP API).
    Status {
        /// HTTP address.
        #[arg(long, default_value = "127.0.0.1:8100")]
        http: SocketAddr,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,arc_malachitebft_core_consensus=warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => init(&args),
        Command::Run { config, checkpoint } => run(&config, checkpoint),
        Command::Audit { db, peer, validator_key, genesis, keys, from, to } => audit_cmd(db, peer, validator_key, genesis, &keys, from, to),
        Command::Attest { authority_key, genesis, request, out, valid_days } => attest(&authority_key, &genesis, &request, &out, valid_days),
        Command::OpenMarket { operator_key, genesis, peers, market } => open_market(&operator_key, &genesis, &peers, &market),
        Command::Revoke { authority_key, genesis, attestations, device, peers } => revoke(&authority_key, &genesis, &attestations, device.as_deref(), &peers),
        Command::Status { http } => status(http),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[derive(clap::Args)]
struct InitArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Number of validators (3f + 1).
    #[arg(long, default_value_t = 4)]
    validators: u16,
    /// Directory of verifying-key files (`*.vk`, from `keys dev-setup` or a ceremony); every
    /// key with the market's T is accepted by the genesis.
    #[arg(long)]
    keys: PathBuf,
    /// Host the validators listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// QUIC port of validator 0 (validator i uses port + i).
    #[arg(long, default_value_t = 7100)]
    quic_port: u16,
    /// HTTP port of validator 0 (validator i uses port + i).
    #[arg(long, default_value_t = 8100)]
    http_port: u16,
    /// The genesis's market.
    #[command(flatten)]
    market: MarketPlan,
    /// An enrollment authority's public key (64 hex characters; repeat for several). Without
    /// one, `init` makes a key for a local authority and writes it to `authority.key`.
    #[arg(long = "authority")]
    authorities: Vec<String>,
    /// A market operator's public key (64 hex characters; repeat for several): operators open
    /// the markets after the genesis's. Without one, `init` makes a key for a local operator
    /// and writes it to `operator.key`.
    #[arg(long = "operator")]
    operators: Vec<String>,
}

/// The public keys given for a role (`--authority`, `--operator`), or, without any, a fresh
/// local key written to `out/<file>` (mode 0600).
fn role_keys(given: &[String], flag: &str, role: &str, out: &Path, file: &str, rng: &mut ChaCha20Rng) -> Result<Vec<[u8; 32]>, String> {
    let mut keys = Vec::new();
    for k in given {
        let key = protocol::ids::parse_hex32(k).ok_or_else(|| format!("--{flag} {k}: expected 64 hex characters (an ed25519 public key)"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| format!("--{flag} {k}: not a valid ed25519 public key"))?;
        keys.push(key);
    }
    if keys.is_empty() {
        let key = ed25519_dalek::SigningKey::generate(rng);
        let path = out.join(file);
        config::write_key(&path, &key).map_err(|e| e.to_string())?;
        println!("created a local {role} {} (key {}, mode 0600)", protocol::ids::hex(key.verifying_key().as_bytes()), path.display());
        keys.push(key.verifying_key().to_bytes());
    }
    Ok(keys)
}

fn init(a: &InitArgs) -> Result<ExitCode, String> {
    if a.validators < 1 {
        return Err("--validators must be at least 1".into());
    }
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let keys_dir = std::fs::canonicalize(&a.keys).map_err(|e| format!("--keys {}: {e}", a.keys.display()))?;
    let mut accepted = Vec::new();
    for e in std::fs::read_dir(&keys_dir).map_err(|e| format!("{}: {e}", keys_dir.display()))? {
        let path = e.map_err(|e| e.to_string())?.path();
        if path.extension().and_then(|x| x.to_str()) != Some("vk") {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let vk = prover::UpdateVerifyingKey::from_bytes(&bytes, None).map_err(|e| format!("{}: {e}", path.display()))?;
        if vk.shape().slots.get() == a.market.slots as usize {
            accepted.push(config::key_hash(&vk, &bytes));
        }
    }
    if accepted.is_empty() {
        return Err(format!(
            "--keys {}: no verifying key for T = {} (make one with `keys dev-setup --slots {}`)",
            keys_dir.display(),
            a.market.slots,
            a.market.slots
        ));
    }
    accepted.sort_by_key(|k| (k.kind, k.slots));
    let mut rng = ChaCha20Rng::from_entropy();
    let keys: Vec<_> = (0..a.validators).map(|_| ed25519_dalek::SigningKey::generate(&mut rng)).collect();
    let now = protocol::net::now_ms();
    let market = a.market.spec(now)?;
    let authorities = role_keys(&a.authorities, "authority", "enrollment authority", &a.out, "authority.key", &mut rng)?.into_iter().map(AuthorityId).collect();
    let operators =
        role_keys(&a.operators, "operator", "market operator", &a.out, "operator.key", &mut rng)?.into_iter().map(protocol::market::OperatorId).collect();
    let genesis = Genesis {
        validators: keys.iter().map(|k| ValidatorId(k.verifying_key().to_bytes())).collect(),
        max_clock_drift_ms: 2000,
        market,
        verifying_keys: accepted,
        enrollment_authorities: authorities,
        market_operators: operators,
    };
    let entry = Entry::genesis(genesis, now);
    let genesis_path = a.out.join("genesis.bin");
    std::fs::write(&genesis_path, protocol::codec::encode(&entry)).map_err(|e| format!("{}: {e}", genesis_path.display()))?;
    let addr = |port: u16, i: u16| -> Result<SocketAddr, String> { format!("{}:{}", a.host, port + i).parse().map_err(|e| format!("--host {}: {e}", a.host)) };
    for (i, key) in keys.iter().enumerate() {
        let i = i as u16;
        let key_file = PathBuf::from(format!("validator{i}.key"));
        config::write_key(&a.out.join(&key_file), key).map_err(|e| e.to_string())?;
        let file = NodeFile {
            index: i,
            key_file,
            genesis_file: "genesis.bin".into(),
            keys_dir: keys_dir.clone(),
            db: format!("db{i}").into(),
            listen: addr(a.quic_port, i)?,
            http: addr(a.http_port, i)?,
            peers: (0..a.validators).filter(|&j| j != i).map(|j| Ok(PeerFile { index: j, addr: addr(a.quic_port, j)? })).collect::<Result<_, String>>()?,
            retention_s: Some(config::DEFAULT_RETENTION_S),
            snapshot_interval: Some(verifier_node::consensus::node::DEFAULT_SNAPSHOT_INTERVAL),
            checkpoint: None,
        };
        let path = a.out.join(format!("node{i}.toml"));
        std::fs::write(&path, toml::to_string_pretty(&file).map_err(|e| e.to_string())?).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("cluster of {} validators in {}", a.validators, a.out.display());
    println!("chain id {}", protocol::ids::hex(&entry.chain_id.0));
    println!("registration closes in {} s; iterations every {} ms; K_max {}", a.market.registration_s, a.market.iteration_ms, a.market.max_iterations);
    println!("start each with: verifier-node run --config {}/node<i>.toml", a.out.display());
    Ok(ExitCode::SUCCESS)
}

/// A signer's secret key and the genesis of its chain (the entry and its body), the key
/// checked to hold `role` there (`holds`): validators would refuse its messages otherwise.
fn role_signer(key: &Path, genesis: &Path, role: &str, holds: impl Fn(&Genesis, [u8; 32]) -> bool) -> Result<(ed25519_dalek::SigningKey, Entry, Genesis), String> {
    let key = protocol::files::read_key(key).map_err(|e| e.to_string())?;
    let entry = config::read_genesis(genesis).map_err(|e| e.to_string())?;
    let Body::Genesis(g) = &entry.body else { unreachable!("read_genesis checked") };
    let me = key.verifying_key().to_bytes();
    if !holds(g, me) {
        return Err(format!("key {} is not {role} of this genesis: validators would refuse what it signs", protocol::ids::hex(&me)));
    }
    let g = g.clone();
    Ok((key, entry, g))
}

/// [`role_signer`] for an enrollment authority.
fn authority_signer(key: &Path, genesis: &Path) -> Result<(ed25519_dalek::SigningKey, Entry, Genesis), String> {
    role_signer(key, genesis, "an enrollment authority", |g, k| g.enrollment_authorities.contains(&AuthorityId(k)))
}

fn attest(key: &Path, genesis: &Path, request: &Path, out: &Path, valid_days: u64) -> Result<ExitCode, String> {
    let (key, genesis, _) = authority_signer(key, genesis)?;
    let text = std::fs::read_to_string(request).map_err(|e| format!("{}: {e}", request.display()))?;
    let requests: Vec<AttestationRequest> = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", request.display()))?;
    let now = protocol::net::now_ms();
    let until = now.saturating_add(valid_days.saturating_mul(86_400_000));
    let mut signed = Vec::new();
    for r in &requests {
        if r.meter_point.len() > protocol::membership::MAX_METER_POINT_BYTES {
            return Err(format!("{}: {}: meter point id longer than {} bytes", request.display(), r.name, protocol::membership::MAX_METER_POINT_BYTES));
        }
        circuits::ModelKind::from_id(r.kind).ok_or_else(|| format!("{}: {}: unknown model kind {}", request.display(), r.name, r.kind))?;
        signed.push(SignedAttestation::new(&key, &genesis.chain_id, r.attestation(now, until)));
        println!("{:<16} device {} kind {} nameplate {:?}", r.name, protocol::ids::hex(&r.device.0), r.kind, r.nameplate);
    }
    let json = serde_json::to_string_pretty(&signed).expect("attestations serialize");
    std::fs::write(out, json).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{} attestations valid for {valid_days} days written to {}", signed.len(), out.display());
    Ok(ExitCode::SUCCESS)
}

/// Submits `request` to every peer, prints each answer, and says whether a quorum admitted it.
fn submit_everywhere(
    rt: &tokio::runtime::Runtime,
    genesis: &Genesis,
    peers: &[(u16, SocketAddr)],
    key: &ed25519_dalek::SigningKey,
    what: &str,
    request: &DeviceRequest,
) -> Result<bool, String> {
    let answers = rt.block_on(verifier_node::roles::submit_to_all(&genesis.validators, peers, key, request, Duration::from_secs(10)));
    for a in &answers {
        match &a.result {
            Ok(DeviceResponse::Accepted) => println!("validator {} ({}): {what} accepted", a.index, a.addr),
            Ok(DeviceResponse::Rejected { label, message }) => println!("validator {} ({}): {what} refused ({label}): {message}", a.index, a.addr),
            Err(e) => println!("validator {} ({}): {e}", a.index, a.addr),
        }
    }
    let accepted = answers.iter().filter(|a| a.accepted()).count();
    let quorum = protocol::entry::quorum(genesis.validators.len());
    println!("{what}: admitted by {accepted} of {} validators (a quorum is {quorum})", genesis.validators.len());
    Ok(accepted >= quorum)
}

fn open_market(key: &Path, genesis: &Path, peers: &[(u16, SocketAddr)], plan: &MarketPlan) -> Result<ExitCode, String> {
    let (key, genesis, g) = role_signer(key, genesis, "a market operator", |g, k| g.market_operators.contains(&protocol::market::OperatorId(k)))?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    // Unless given, execution starts after the last market the chain scheduled (read from the
    // first validator's log).
    let not_before = match plan.execution_start_ms {
        Some(_) => 0,
        None => rt.block_on(verifier_node::roles::last_execution_end(&genesis, peers[0], Duration::from_millis(1500)))?,
    };
    let spec = plan.spec_after(protocol::net::now_ms(), not_before)?;
    println!(
        "market {}: T = {}, Δ = {} s, registration closes at {} ms, {} iterations of {} ms, execution from {} ms",
        spec.market_id, spec.slots, spec.slot_seconds, spec.registration_close_ms, spec.max_iterations, spec.iteration_ms, spec.execution_start_ms
    );
    let open = protocol::market::SignedMarketOpen::new(&key, &genesis.chain_id, spec);
    let ok = submit_everywhere(&rt, &g, peers, &key, "opening", &DeviceRequest::Open(open))?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn revoke(key: &Path, genesis: &Path, attestations: &Path, device: Option<&str>, peers: &[(u16, SocketAddr)]) -> Result<ExitCode, String> {
    let (key, genesis, g) = authority_signer(key, genesis)?;
    let device = match device {
        Some(d) => Some(protocol::ids::parse_hex32(d).ok_or_else(|| format!("--device {d}: expected 64 hex characters"))?),
        None => None,
    };
    let text = std::fs::read_to_string(attestations).map_err(|e| format!("{}: {e}", attestations.display()))?;
    let list: Vec<SignedAttestation> = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", attestations.display()))?;
    let chosen: Vec<&SignedAttestation> = list.iter().filter(|a| device.is_none_or(|d| a.body.device.0 == d)).collect();
    if chosen.is_empty() {
        return Err(format!("{}: no attestation to revoke{}", attestations.display(), if device.is_some() { " for that device" } else { "" }));
    }
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let mut all = true;
    for a in chosen {
        let r = protocol::membership::SignedRevocation::new(&key, &genesis.chain_id, a);
        let what = format!("revocation of device {}", a.body.device);
        all &= submit_everywhere(&rt, &g, peers, &key, &what, &DeviceRequest::Revoke(r))?;
    }
    Ok(if all { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn run(path: &Path, checkpoint: Option<protocol::snapshot::Checkpoint>) -> Result<ExitCode, String> {
    let mut cfg = Config::load(path).map_err(|e| e.to_string())?;
    cfg.checkpoint = checkpoint.or(cfg.checkpoint);
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut running = verifier_node::host::start(cfg).await.map_err(|e| e.to_string())?;
        println!("validator running: quic {} http {}", running.quic_addr, running.http_addr);
        tokio::select! {
            r = running.finished() => {
                // The node task ended by itself: a fatal error (log, WAL, a certified entry
                // that does not apply). Stop serving and say so with the exit code.
                let why = r.err().map_or("the node task ended".to_string(), |e| e.to_string());
                eprintln!("validator stopped: {why}");
                return Ok(ExitCode::FAILURE);
            }
            signal = protocol::net::shutdown_signal() => {
                eprintln!("{signal}: stopping (closing the log)");
            }
        }
        running.stop().await.map_err(|e| e.to_string())?;
        eprintln!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn print_report(r: &AuditReport) -> ExitCode {
    if let Some(b) = r.base {
        println!("the database starts from the checkpoint at height {b} (its snapshot matches the entry's state root)");
    }
    println!("heights checked in full: {}..={}", r.range.0, r.range.1);
    if r.entries_followed > 0 {
        println!("entries followed before them: {}", r.entries_followed);
    }
    println!("entries checked: {}", r.entries_ok);
    if r.entries_pruned > 0 {
        println!("entries of pruned markets (link and certificate only): {}", r.entries_pruned);
    }
    println!("proofs verified: {}", r.proofs_verified);
    match &r.first_bad {
        None => {
            println!("verdict: PASS");
            ExitCode::SUCCESS
        }
        Some((h, why)) => {
            println!("verdict: FAIL at height {h}: {why}");
            ExitCode::from(1)
        }
    }
}

fn audit_cmd(db: Option<PathBuf>, peer: Option<SocketAddr>, validator_key: Option<String>, genesis: Option<PathBuf>, keys: &Path, from: u64, to: Option<u64>) -> Result<ExitCode, String> {
    let mut rng = ChaCha20Rng::from_entropy();
    if let Some(db) = db {
        if !db.exists() {
            return Err(format!("--db {}: no such database", db.display()));
        }
        let store = Store::open(&db).map_err(|e| format!("--db {}: {e}", db.display()))?;
        let g = store.certified(0).map_err(|e| e.to_string())?.ok_or("the database has no genesis")?;
        let Body::Genesis(gen) = &g.entry.body else { return Err("height 0 is not a genesis".into()) };
        let vks = config::read_verifying_keys(keys, &gen.verifying_keys).map_err(|e| e.to_string())?;
        let report = audit_range(&store, vks, from, to, &mut rng).map_err(|e| e.to_string())?;
        return Ok(print_report(&report));
    }
    let (Some(peer), Some(key), Some(genesis)) = (peer, validator_key, genesis) else {
        return Err("give --db PATH, or --peer ADDR with --validator-key and --genesis".into());
    };
    let key = protocol::ids::parse_hex32(&key).ok_or("--validator-key must be 64 hex characters")?;
    let genesis = config::read_genesis(&genesis).map_err(|e| e.to_string())?;
    let Body::Genesis(gen) = &genesis.body else { unreachable!("read_genesis checked") };
    let vks = config::read_verifying_keys(keys, &gen.verifying_keys).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let log = rt.block_on(async {
        protocol::net::install_crypto();
        let endpoint = protocol::net::client_endpoint("0.0.0.0:0".parse().expect("valid")).map_err(|e| e.to_string())?;
        let me = ed25519_dalek::SigningKey::generate(&mut ChaCha20Rng::from_entropy());
        let client = protocol::net::ValidatorClient::connect(&endpoint, peer, key, &me).await.map_err(|e| e.to_string())?;
        let mut rx = client.subscribe(0).await.map_err(|e| e.to_string())?;
        let mut log = MemLog::default();
        // Everything stored arrives at once; stop when the stream is quiet for 2 s.
        while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            let c = item.map_err(|e| e.to_string())?;
            if c.entry.height == 0 && c.entry != genesis {
                return Err("the peer's genesis is not the given genesis".to_string());
            }
            log.decide(&c).map_err(|e| format!("height {}: {e}", c.entry.height))?;
        }
        client.close();
        Ok::<_, String>(log)
    })?;
    println!("fetched {} entries from {peer}", log.entries().len());
    let report = audit_range(log, vks, from, to, &mut rng).map_err(|e| e.to_string())?;
    Ok(print_report(&report))
}

fn status(http: SocketAddr) -> Result<ExitCode, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&http, Duration::from_secs(3)).map_err(|e| format!("{http}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(s, "GET /status HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| format!("{http}: {e}"))?;
    let body = resp.split("\r\n\r\n").nth(1).ok_or(format!("{http}: not an HTTP response"))?;
    let v: serde_json::Value = serde_json::from_str(body.trim()).map_err(|e| format!("{http}: {e}"))?;
    println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
    Ok(ExitCode::SUCCESS)
}
