//! Identity pinning takes the key from the parsed certificate: a self-signed certificate whose
//! real key is the attacker's, with a validator's SubjectPublicKeyInfo bytes planted before
//! the real one (in its serial number, which precedes the issuer, subject and key), is refused
//! by a device dialling that validator and by a validator's peer admission.

use std::time::Duration;

use crate::cluster::Cluster;
use ed25519_dalek::SigningKey;
use protocol::net::{self, Identity};

/// The DER of an ed25519 SubjectPublicKeyInfo for `key`.
fn spki(key: &[u8; 32]) -> Vec<u8> {
    let mut v = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    v.extend_from_slice(key);
    v
}

/// The attacker's own certificate (signed by and proving `attacker`) carrying `victim`'s
/// SubjectPublicKeyInfo in its serial number and its subject's common name.
fn forged(attacker: &SigningKey, victim: &[u8; 32]) -> Identity {
    let mut params = rcgen::CertificateParams::new(vec!["gridproof".to_string()]).unwrap();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&spki(victim)));
    let id = net::identity_with(attacker, params).unwrap();
    // The planted bytes come before the real key: a byte search finds the victim's key first.
    let der: &[u8] = id.cert.as_ref();
    let planted = der.windows(44).position(|w| w == spki(victim)).expect("planted");
    let real = der.windows(44).position(|w| w == spki(&attacker.verifying_key().to_bytes())).expect("real key");
    assert!(planted < real);
    id
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn the_key_is_the_parsed_subject_public_key_not_planted_bytes() {
    let attacker = SigningKey::from_bytes(&[66; 32]);
    let victim = SigningKey::from_bytes(&[77; 32]).verifying_key().to_bytes();
    let id = forged(&attacker, &victim);
    assert_eq!(net::cert_key(&id.cert), Ok(attacker.verifying_key().to_bytes()));
    assert!(matches!(net::cert_key(&rustls::pki_types::CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])), Err(net::CertError::Unparsable(_))));
}

#[test]
fn a_device_refuses_a_server_whose_certificate_only_mentions_the_pinned_key() {
    net::install_crypto();
    let attacker = SigningKey::from_bytes(&[66; 32]);
    let validator = SigningKey::from_bytes(&[77; 32]).verifying_key().to_bytes();
    let device = SigningKey::from_bytes(&[5; 32]);
    rt().block_on(async {
        let server = net::server_config_for(forged(&attacker, &validator)).unwrap();
        let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            while let Some(i) = endpoint.accept().await {
                let _ = i.await;
            }
        });
        let client = net::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let r = net::ValidatorClient::connect(&client, addr, validator, &device).await;
        let err = r.expect_err("the handshake must fail: the server proved the attacker's key");
        assert!(err.to_string().contains("not the configured validator key"), "{err}");
        // The same server is accepted by a client that pins the attacker's real key.
        let ok = net::ValidatorClient::connect(&client, addr, attacker.verifying_key().to_bytes(), &device).await;
        assert!(ok.is_ok(), "{:?}", ok.err());
        accept.abort();
    });
}

#[test]
fn a_validator_refuses_a_peer_whose_certificate_only_mentions_a_validator_key() {
    let c = Cluster::init("forged-peer", 4, 0, 30, 1500, 3);
    c.start(0);
    net::install_crypto();
    let attacker = SigningKey::from_bytes(&[66; 32]);
    rt().block_on(async {
        let endpoint = net::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let cfg = net::client_config_for(forged(&attacker, &c.validator_key(1)), c.validator_key(0), net::ALPN_PEER).unwrap();
        let t0 = std::time::Instant::now();
        let conn = loop {
            match endpoint.connect_with(cfg.clone(), c.quic(0), "gridproof").unwrap().await {
                Ok(conn) => break conn,
                Err(_) if t0.elapsed() < Duration::from_secs(20) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => panic!("validator 0 not reachable: {e}"),
            }
        };
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.expect("a forged peer is closed at once");
        assert!(format!("{closed}").contains("not a validator"), "{closed}");
    });
    let metrics = c.get(0, "/metrics").unwrap();
    let bad: f64 = metrics.lines().find(|l| l.starts_with("gridproof_bad_frames_total")).and_then(|l| l.split(' ').nth(1)).unwrap().parse().unwrap();
    assert!(bad >= 1.0, "the refused peer is counted: {metrics}");
}
