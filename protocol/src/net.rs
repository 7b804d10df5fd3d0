//! The QUIC edge (feature `net`), shared by validators and devices.
//!
//! - Identity: each endpoint presents a self-signed X.509 certificate made from its ed25519
//!   key; TLS 1.3 proves possession of that key. Nothing else in the certificate matters: a
//!   peer is who its key says, and the key is read from the parsed SubjectPublicKeyInfo
//!   ([`cert_key`]), never searched for in the certificate's bytes.
//! - Pinning: a client dialling a validator accepts only that validator's configured key
//!   ([`client_config`]); a server accepts any ed25519 client and the application decides by
//!   ALPN and key — validators must be in the genesis set, devices sign every message anyway.
//! - ALPN: [`ALPN_PEER`] between validators, [`ALPN_DEVICE`] for devices and auditors.
//! - Framing: one message per stream. Device requests, answers and subscribed entries are
//!   length-prefixed (u32 little-endian) and capped: a frame over its cap is refused before
//!   it is read. A peer message is a whole unidirectional stream, read to its end under
//!   `MAX_PEER_FRAME` (verifier-node).
//! - Restarts: a validator's endpoint keys its stateless resets and connection ids with its
//!   own secret ([`server_endpoint`]), so connections to its previous incarnation are reset
//!   at their first packet instead of timing out.
//!
//! Install the `ring` crypto provider once per process with [`install_crypto`].

use std::net::SocketAddr;
use std::sync::Arc;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use thiserror::Error;

use crate::codec::{decode, encode};
use crate::entry::Certified;
use crate::messages::{DeviceRequest, DeviceResponse, MAX_DEVICE_FRAME};

/// ALPN between validators.
pub const ALPN_PEER: &[u8] = b"gridproof-peer/1";
/// ALPN for devices and auditors.
pub const ALPN_DEVICE: &[u8] = b"gridproof-device/1";
/// Largest certified entry a subscriber accepts (an iteration entry with its update bodies).
pub const MAX_ENTRY_FRAME: usize = 16 << 20;

/// A transport failure, with the address or stage it happened at.
#[derive(Debug, Error)]
pub enum NetError {
    /// TLS or certificate set-up failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Connecting failed.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// A stream failed.
    #[error("stream: {0}")]
    Stream(String),
    /// A frame over its cap.
    #[error("frame of {len} bytes exceeds the cap of {max}")]
    Oversize {
        /// Announced length.
        len: usize,
        /// Cap.
        max: usize,
    },
    /// A frame that does not decode.
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    /// No validator served a snapshot that matches the checkpoint.
    #[error("no validator served checkpoint {checkpoint}: {reasons}")]
    Checkpoint {
        /// The checkpoint.
        checkpoint: crate::snapshot::Checkpoint,
        /// What each validator answered, last attempt.
        reasons: String,
    },
}

/// How long one validator may take to connect and serve a snapshot before the next is asked.
pub const CHECKPOINT_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A snapshot that matched a trusted checkpoint ([`fetch_checkpoint`]).
#[derive(Debug, Clone)]
pub struct FetchedCheckpoint {
    /// The checkpoint entry, certified, with its bodies.
    pub entry: Certified,
    /// The encoded snapshot its state root hashes.
    pub state: Vec<u8>,
    /// The snapshot, decoded and checked.
    pub snapshot: crate::snapshot::ChainSnapshot,
    /// The validator that served it.
    pub from: SocketAddr,
}

/// Fetches the snapshot at `checkpoint` from `validators` (address and pinned key), each in
/// turn, for `rounds` rounds with the one backoff between them: the first reply that
/// [`crate::snapshot::verify_checkpoint`] accepts against `genesis` (chain and validator set)
/// is returned. A validator that answers wrong is only skipped — the checkpoint, not the
/// server, is trusted.
pub async fn fetch_checkpoint(
    endpoint: &quinn::Endpoint,
    validators: &[(SocketAddr, [u8; 32])],
    key: &SigningKey,
    genesis: &crate::entry::Entry,
    checkpoint: &crate::snapshot::Checkpoint,
    rounds: u32,
) -> Result<FetchedCheckpoint, NetError> {
    let crate::entry::Body::Genesis(g) = &genesis.body else {
        return Err(NetError::Checkpoint { checkpoint: *checkpoint, reasons: "the given genesis is not a genesis entry".into() });
    };
    let mut backoff = crate::backoff::Backoff::new(std::time::Duration::from_millis(250), std::time::Duration::from_secs(4));
    let mut reasons = Vec::new();
    for round in 0..rounds.max(1) {
        if round > 0 {
            tokio::time::sleep(backoff.next_delay()).await;
        }
        reasons.clear();
        for (addr, server_key) in validators {
            let attempt = async {
                let client = ValidatorClient::connect(endpoint, *addr, *server_key, key).await?;
                let now_ms = now_ms();
                let reply = client.snapshot(checkpoint.height).await;
                client.close();
                match reply? {
                    crate::snapshot::SnapshotReply::Held { entry, state } => {
                        let snapshot = crate::snapshot::verify_checkpoint(&genesis.chain_id, &g.validators, checkpoint, &entry, &state, now_ms)
                            .map_err(|e| NetError::Stream(e.to_string()))?;
                        Ok(FetchedCheckpoint { entry, state, snapshot, from: *addr })
                    }
                    crate::snapshot::SnapshotReply::Busy => Err(NetError::Stream(crate::snapshot::SnapshotError::Busy.to_string())),
                    crate::snapshot::SnapshotReply::NotHeld { held } => {
                        Err(NetError::Stream(crate::snapshot::SnapshotError::NotHeld { height: checkpoint.height, held }.to_string()))
                    }
                }
            };
            match tokio::time::timeout(CHECKPOINT_FETCH_TIMEOUT, attempt).await {
                Ok(Ok(f)) => return Ok(f),
                Ok(Err(e)) => reasons.push(format!("{addr}: {e}")),
                Err(_) => reasons.push(format!("{addr}: no snapshot within {CHECKPOINT_FETCH_TIMEOUT:?}")),
            }
        }
    }
    Err(NetError::Checkpoint { checkpoint: *checkpoint, reasons: reasons.join("; ") })
}

/// Wall-clock milliseconds since the Unix epoch: the one clock reading every host (validator,
/// gateway) passes to its sans-IO core.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM (`docker stop`, systemd), naming it: every
/// long-running binary stops cleanly on either.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => tokio::signal::ctrl_c().await.map_or("SIGINT", |_| "SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// Installs the `ring` provider as the process default (idempotent).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS identity: a certificate and the private key it is presented with.
#[derive(Debug)]
pub struct Identity {
    /// The end-entity certificate.
    pub cert: CertificateDer<'static>,
    /// The private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
}

/// The self-signed certificate of `key` (subject "gridproof"; only its key matters).
pub fn identity(key: &SigningKey) -> Result<Identity, NetError> {
    identity_with(key, rcgen::CertificateParams::new(vec!["gridproof".to_string()]).map_err(|e| NetError::Tls(e.to_string()))?)
}

/// A self-signed certificate of `key` made from `params` (names, serial, extensions as the
/// caller likes: none of them is trusted).
pub fn identity_with(key: &SigningKey, params: rcgen::CertificateParams) -> Result<Identity, NetError> {
    let der = key.to_pkcs8_der().map_err(|e| NetError::Tls(format!("encoding the key: {e}")))?;
    let pkcs8 = PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
    let pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519).map_err(|e| NetError::Tls(e.to_string()))?;
    let cert = params.self_signed(&pair).map_err(|e| NetError::Tls(e.to_string()))?;
    Ok(Identity { cert: cert.der().clone(), key: PrivateKeyDer::Pkcs8(pkcs8) })
}

/// The DER encoding of an ed25519 SubjectPublicKeyInfo (RFC 8410) up to the key: SEQUENCE {
/// SEQUENCE { OID 1.3.101.112 }, BIT STRING (33 bytes, 0 unused bits) }; the 32 key bytes
/// follow, and nothing else.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Why a certificate names no usable identity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertError {
    /// The other end presented no certificate.
    #[error("no certificate presented")]
    Missing,
    /// The certificate does not parse as X.509 (rustls-webpki's end-entity parser).
    #[error("certificate does not parse: {0}")]
    Unparsable(String),
    /// Its SubjectPublicKeyInfo is not an ed25519 key.
    #[error("certificate key is not ed25519 (SubjectPublicKeyInfo of {len} bytes)")]
    NotEd25519 {
        /// Length of the SubjectPublicKeyInfo DER.
        len: usize,
    },
}

/// The ed25519 public key of a certificate, taken from its parsed SubjectPublicKeyInfo: the
/// key the TLS handshake proves possession of. Names, serial and extensions are never looked
/// at, so a certificate that carries someone else's key bytes anywhere else names its own key.
pub fn cert_key(cert: &CertificateDer<'_>) -> Result<[u8; 32], CertError> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| CertError::Unparsable(format!("{e:?}")))?;
    let spki = parsed.subject_public_key_info();
    let der: &[u8] = spki.as_ref();
    match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
        Some(key) => key.try_into().map_err(|_| CertError::NotEd25519 { len: der.len() }),
        None => Err(CertError::NotEd25519 { len: der.len() }),
    }
}

/// The ed25519 key of the other end of `conn` (the first certificate it presented).
pub fn peer_key(conn: &quinn::Connection) -> Result<[u8; 32], CertError> {
    let id = conn.peer_identity().ok_or(CertError::Missing)?;
    let certs = id.downcast_ref::<Vec<CertificateDer<'static>>>().ok_or(CertError::Missing)?;
    cert_key(certs.first().ok_or(CertError::Missing)?)
}

fn verify13(message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

/// Accepts exactly one ed25519 key (a client dialling a known validator).
#[derive(Debug)]
struct Pinned([u8; 32]);

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match cert_key(end_entity) {
            Ok(k) if k == self.0 => Ok(ServerCertVerified::assertion()),
            Ok(_) => Err(rustls::Error::General("server key is not the configured validator key".into())),
            Err(e) => Err(rustls::Error::General(format!("server certificate: {e}"))),
        }
    }

    fn verify_tls12_signature(&self, _: &[u8], _: &CertificateDer<'_>, _: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Accepts any client that proves an ed25519 key (the application checks which).
#[derive(Debug)]
struct AnyEd25519;

impl ClientCertVerifier for AnyEd25519 {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(&self, end_entity: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: UnixTime) -> Result<ClientCertVerified, rustls::Error> {
        cert_key(end_entity).map(|_| ClientCertVerified::assertion()).map_err(|e| rustls::Error::General(format!("client certificate: {e}")))
    }

    fn verify_tls12_signature(&self, _: &[u8], _: &CertificateDer<'_>, _: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Keep-alive between validators: a lost peer shows within [`PEER_IDLE`].
pub const PEER_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(2);
/// Idle timeout between validators.
pub const PEER_IDLE: std::time::Duration = std::time::Duration::from_secs(10);
/// Keep-alive of a device's connection (sent by the device only; well under common 30 s UDP
/// NAT timeouts). A validator holds one connection per device, so this sets its idle packet
/// rate: 10,000 devices at 10 s are 1,000 pings per second (at 2 s they took most of a core).
pub const DEVICE_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(10);
/// Idle timeout of a device's connection.
pub const DEVICE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Streams a validator lets one connection have open at once: a peer sends each message on
/// its own unidirectional stream, a device each request on its own bidirectional one (a
/// subscription holds one for good). Beyond these the sender waits for credit.
const SERVER_UNI_STREAMS: u32 = 64;
/// See [`SERVER_UNI_STREAMS`].
const SERVER_BIDI_STREAMS: u32 = 32;

/// Congestion window a connection starts with (quinn's default is 10 datagrams, 14.7 KB).
/// Validators and gateways send in bursts after quiet spells: a proposal's payload (0.3 MB at
/// 10,000 devices), then an iteration entry with its bodies to each subscriber (6.5 MB). The
/// small messages between bursts never fill the window, so it never grows past the start
/// (an application-limited connection does not grow it), and every burst paid slow start:
/// log2(6.5 MB / 14.7 KB) ≈ 9 round trips.
const INITIAL_WINDOW: u64 = 1 << 20;

/// Transport parameters. The idle timeout in use is the smaller of the two ends' values, so
/// the server offers the longer (device) one and each client sets its own; only clients send
/// keep-alives. Streams are opened by clients only, so a client accepts none (`streams` is 0):
/// quinn keeps state for every stream the other end may open, and at 1,024 + 256 that was
/// most of the ≈ 100 KiB a validator spent per connected device.
fn transport(keep_alive: Option<std::time::Duration>, idle: std::time::Duration, streams: (u32, u32)) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(INITIAL_WINDOW);
    t.congestion_controller_factory(Arc::new(cubic));
    t.keep_alive_interval(keep_alive);
    t.max_idle_timeout(Some(idle.try_into().expect("idle timeouts are seconds")));
    t.max_concurrent_uni_streams(streams.0.into());
    t.max_concurrent_bidi_streams(streams.1.into());
    Arc::new(t)
}

/// A server config presenting `key`, offering both ALPNs, requiring an ed25519 client key.
pub fn server_config(key: &SigningKey) -> Result<quinn::ServerConfig, NetError> {
    server_config_for(identity(key)?)
}

/// [`server_config`] presenting the certificate of `id`.
pub fn server_config_for(id: Identity) -> Result<quinn::ServerConfig, NetError> {
    let Identity { cert, key: private } = id;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(AnyEd25519))
        .with_single_cert(vec![cert], private)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_DEVICE.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport(None, DEVICE_IDLE.max(PEER_IDLE), (SERVER_UNI_STREAMS, SERVER_BIDI_STREAMS)));
    Ok(cfg)
}

/// A validator's QUIC endpoint on `addr`, serving `server` and dialling its peers. Its
/// stateless-reset key and connection-id key are derived from the validator's secret key
/// (SHA-256 with a domain tag), so they are the same in every incarnation of the validator: after a crash and restart,
/// the first packet a peer or a gateway sends on a connection of the old incarnation is
/// answered with a reset that peer accepts, and the connection closes at once (instead of
/// after the idle timeout, during which everything sent on it is lost).
pub fn server_endpoint(key: &SigningKey, server: quinn::ServerConfig, addr: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    use sha2::Digest;
    let bind = |e: std::io::Error| NetError::Connect { addr, reason: e.to_string() };
    let mut h = sha2::Sha256::new();
    h.update(b"gridproof/v1 quic stateless reset key");
    h.update(key.to_bytes());
    let secret: [u8; 32] = h.finalize().into();
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset));
    // Connection ids carry a keyed hash that the endpoint checks before it answers an unknown
    // one with a reset: the key must survive the restart too.
    let mut h = sha2::Sha256::new();
    h.update(b"gridproof/v1 quic connection id key");
    h.update(key.to_bytes());
    let cid_key = u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    let socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
    let runtime = quinn::default_runtime().ok_or_else(|| NetError::Connect { addr, reason: "no async runtime".into() })?;
    quinn::Endpoint::new(config, Some(server), socket, runtime).map_err(bind)
}

/// A client config presenting `key` and accepting only a server proving `server_key`; the
/// keep-alive and idle timeout are the peer or device ones, by `alpn`.
pub fn client_config(key: &SigningKey, server_key: [u8; 32], alpn: &[u8]) -> Result<quinn::ClientConfig, NetError> {
    client_config_for(identity(key)?, server_key, alpn)
}

/// [`client_config`] presenting the certificate of `id`.
pub fn client_config_for(id: Identity, server_key: [u8; 32], alpn: &[u8]) -> Result<quinn::ClientConfig, NetError> {
    let Identity { cert, key: private } = id;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(server_key)))
        .with_client_auth_cert(vec![cert], private)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let (keep_alive, idle) = if alpn == ALPN_PEER { (PEER_KEEP_ALIVE, PEER_IDLE) } else { (DEVICE_KEEP_ALIVE, DEVICE_IDLE) };
    cfg.transport_config(transport(Some(keep_alive), idle, (0, 0)));
    Ok(cfg)
}

/// Writes one length-prefixed frame.
pub async fn write_frame(send: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), NetError> {
    let len = u32::try_from(bytes.len()).map_err(|_| NetError::Oversize { len: bytes.len(), max: u32::MAX as usize })?;
    send.write_all(&len.to_le_bytes()).await.map_err(|e| NetError::Stream(e.to_string()))?;
    send.write_all(bytes).await.map_err(|e| NetError::Stream(e.to_string()))
}

/// Reads one length-prefixed frame of at most `max` bytes; `None` at a clean end of stream.
pub async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<Vec<u8>>, NetError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(NetError::Stream(e.to_string())),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(NetError::Oversize { len, max });
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.map_err(|e| NetError::Stream(e.to_string()))?;
    Ok(Some(buf))
}

/// A device's (or auditor's) connection to one validator.
#[derive(Debug, Clone)]
pub struct ValidatorClient {
    conn: quinn::Connection,
    addr: SocketAddr,
}

impl ValidatorClient {
    /// Connects to the validator at `addr` that must prove `validator_key`, presenting `key`.
    pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, validator_key: [u8; 32], key: &SigningKey) -> Result<ValidatorClient, NetError> {
        let cfg = client_config(key, validator_key, ALPN_DEVICE)?;
        let connecting = endpoint.connect_with(cfg, addr, "gridproof").map_err(|e| NetError::Connect { addr, reason: e.to_string() })?;
        let conn = connecting.await.map_err(|e| NetError::Connect { addr, reason: e.to_string() })?;
        Ok(ValidatorClient { conn, addr })
    }

    /// The validator's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends an enrollment or update and waits for the answer.
    pub async fn submit(&self, request: &DeviceRequest) -> Result<DeviceResponse, NetError> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| NetError::Stream(e.to_string()))?;
        write_frame(&mut send, &encode(request)).await?;
        send.finish().map_err(|e| NetError::Stream(e.to_string()))?;
        let bytes = read_frame(&mut recv, MAX_DEVICE_FRAME).await?.ok_or(NetError::Stream("no answer".into()))?;
        Ok(decode("device response", &bytes, MAX_DEVICE_FRAME)?)
    }

    /// Asks for the snapshot at `height` (a checkpoint's): the reply is *not* checked here,
    /// `snapshot::verify_checkpoint` must check it.
    pub async fn snapshot(&self, height: u64) -> Result<crate::snapshot::SnapshotReply, NetError> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| NetError::Stream(e.to_string()))?;
        write_frame(&mut send, &encode(&DeviceRequest::Snapshot { height })).await?;
        send.finish().map_err(|e| NetError::Stream(e.to_string()))?;
        let max = crate::snapshot::MAX_SNAPSHOT_REPLY;
        let bytes = read_frame(&mut recv, max).await?.ok_or(NetError::Stream("no answer".into()))?;
        Ok(decode("snapshot reply", &bytes, max)?)
    }

    /// Subscribes to certified entries from `from` on; returns a receiver fed by a task.
    /// The stream ends when the connection does. Certificates are *not* checked here: a
    /// light client must check each one.
    pub async fn subscribe(&self, from: u64) -> Result<tokio::sync::mpsc::Receiver<Result<Certified, NetError>>, NetError> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| NetError::Stream(e.to_string()))?;
        write_frame(&mut send, &encode(&DeviceRequest::Subscribe { from })).await?;
        send.finish().map_err(|e| NetError::Stream(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let item = match read_frame(&mut recv, MAX_ENTRY_FRAME).await {
                    Ok(Some(bytes)) => decode::<Certified>("certified entry", &bytes, MAX_ENTRY_FRAME).map_err(NetError::from),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(rx)
    }

    /// Whether the connection is gone (closed by either end, timed out, or reset): a gateway
    /// then dials again.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}

/// A client endpoint on an ephemeral loopback or any-address port.
pub fn client_endpoint(bind: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    quinn::Endpoint::client(bind).map_err(|e| NetError::Connect { addr: bind, reason: e.to_string() })
}
