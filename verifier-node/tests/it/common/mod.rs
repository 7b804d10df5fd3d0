//! Shared fixtures: a market with dev keys, three devices, and proven, signed updates.
#![allow(dead_code)]

use circuits::{commitment, sample, Context, Fr, ModelKind, Opening, Shape, Slots};
use ed25519_dalek::SigningKey;
use protocol::codec::FieldElement;
use protocol::entry::MarketSpec as Spec;
use protocol::entry::{chain_id, Body, Entry, Genesis, GridSpec, KeyHash, MarketSpec};
use protocol::ids::{DeviceId, ValidatorId};
use protocol::market::SignedMarketOpen;
use protocol::messages::{Enrollment, SignedEnrollment, SignedUpdate, Update};
use protocol::sign::ChainId;
use prover::{UpdateProvingKey, VerifierKeys};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use verifier_node::app::{Built, ChainApp, Pool};

pub const T: usize = 4;

pub struct Device {
    pub key: SigningKey,
    pub opening: Opening,
}

impl Device {
    pub fn id(&self) -> DeviceId {
        DeviceId(self.key.verifying_key().to_bytes())
    }
}

pub struct World {
    pub chain: ChainId,
    pub genesis: Genesis,
    pub keys: VerifierKeys,
    pub pks: Vec<UpdateProvingKey>,
    pub devices: Vec<Device>,
    pub validators: Vec<SigningKey>,
    /// The genesis's one enrollment authority.
    pub authority: SigningKey,
    pub rng: ChaCha20Rng,
}

/// The enrollment authority of every test world.
pub fn authority() -> SigningKey {
    SigningKey::from_bytes(&[77; 32])
}

/// The market operator of every test world.
pub fn operator() -> SigningKey {
    SigningKey::from_bytes(&[88; 32])
}

pub fn slots() -> Slots {
    Slots::new(T).unwrap()
}

pub fn world() -> World {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut keys = VerifierKeys::new();
    let mut pks = vec![];
    for kind in [ModelKind::Deferrable, ModelKind::Battery] {
        let (pk, vk) = prover::setup(Shape { kind, slots: slots() }, &mut rng).unwrap();
        keys.insert(vk);
        pks.push(pk);
    }
    let validators: Vec<SigningKey> = (0..4u8).map(|i| SigningKey::from_bytes(&[100 + i; 32])).collect();
    let genesis = Genesis {
        validators: validators.iter().map(|k| ValidatorId(k.verifying_key().to_bytes())).collect(),
        max_clock_drift_ms: 1000,
        market: MarketSpec {
            market_id: 7,
            slots: T as u16,
            slot_seconds: 900,
            rho: circuits::fixed::Fixed::from_f64("rho", 0.02).unwrap().raw(),
            eps_abs: circuits::fixed::Fixed::ONE.raw(),
            eps_rel: circuits::fixed::Fixed::from_f64("eps", 1e-3).unwrap().raw(),
            max_iterations: 5,
            grid: GridSpec::ValleyFilling { gamma: 1000, base_load: vec![3000; T] },
            registration_close_ms: 150,
            iteration_ms: 100,
            execution_start_ms: 10_000,
            settlement: None,
            compressed_slot_ms: None,
        },
        verifying_keys: vec![KeyHash { kind: 1, slots: T as u16, sha256: [0; 32] }],
        enrollment_authorities: vec![protocol::membership::AuthorityId(authority().verifying_key().to_bytes())],
        market_operators: vec![protocol::market::OperatorId(operator().verifying_key().to_bytes())],
    };
    let devices = [ModelKind::Deferrable, ModelKind::Battery, ModelKind::Deferrable]
        .iter()
        .enumerate()
        .map(|(i, &kind)| Device {
            key: SigningKey::from_bytes(&[i as u8 + 1; 32]),
            opening: Opening { params: sample::params(kind, slots()), cost_digest: Fr::from(9u64), salt: Fr::from(100u64 + i as u64) },
        })
        .collect();
    World { chain: chain_id(&genesis), genesis, keys, pks, devices, validators, authority: authority(), rng }
}

pub fn enrollment(w: &World, d: &Device) -> SignedEnrollment {
    enrollment_in(w, d, &w.genesis.market)
}

/// Device `d`'s enrollment in market `m`, with an attestation covering it.
pub fn enrollment_in(w: &World, d: &Device, m: &Spec) -> SignedEnrollment {
    let span = protocol::membership::market_span(m);
    let attestation = protocol::membership::attest(&w.authority, &w.chain, d.id(), &d.opening.params, m.slot_seconds, "meter-1", span);
    let body = Enrollment {
        market_id: m.market_id,
        device: d.id(),
        kind: d.opening.params.kind().id(),
        slots: T as u16,
        commitment: FieldElement::new(&commitment(&d.opening)),
        attestation,
    };
    SignedEnrollment::new(&d.key, &w.chain, body)
}

/// The genesis market with another id and clock: registration closes at `close_ms`,
/// execution starts at `execution_start_ms`.
pub fn market_spec(w: &World, market_id: u64, close_ms: u64, execution_start_ms: u64) -> Spec {
    Spec { market_id, registration_close_ms: close_ms, execution_start_ms, ..w.genesis.market.clone() }
}

/// The world operator's opening of `m`.
pub fn open(w: &World, m: Spec) -> SignedMarketOpen {
    SignedMarketOpen::new(&operator(), &w.chain, m)
}

/// Builds with only enrollments and updates in the pool.
pub fn build(app: &ChainApp, now: u64, enrollments: &[SignedEnrollment], updates: &[SignedUpdate]) -> Result<Built, verifier_node::app::Reject> {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    app.build(now, Pool { enrollments, updates, ..Default::default() }, &Default::default(), &mut rng)
}

/// The world's authority's attestation of a device with these parameters, valid for the market.
pub fn attestation(w: &World, device: DeviceId, params: &circuits::model::ModelParams) -> protocol::membership::SignedAttestation {
    let span = protocol::membership::market_span(&w.genesis.market);
    protocol::membership::attest(&w.authority, &w.chain, device, params, w.genesis.market.slot_seconds, "meter-1", span)
}

/// A proven, signed update of device `i` for iteration `k` (the proof made for `proof_k`).
pub fn update(w: &mut World, i: usize, k: u32, proof_k: u32) -> SignedUpdate {
    update_in(w, 7, i, k, proof_k)
}

/// [`update`] in market `market`.
pub fn update_in(w: &mut World, market: u64, i: usize, k: u32, proof_k: u32) -> SignedUpdate {
    let d = &w.devices[i];
    let kind = d.opening.params.kind();
    let shape = Shape { kind, slots: slots() };
    let witness = circuits::Witness {
        opening: d.opening.clone(),
        context: Context { market_id: market, iteration: proof_k, shape },
        // The nameplate validators read from the attestation (`attestation` attests this one).
        limits: protocol::membership::nameplate_of(&d.opening.params, 900).limits(900),
        schedule: sample::schedule(kind, slots(), i as u16),
    };
    let pk = w.pks.iter().find(|pk| pk.shape() == shape).unwrap();
    let (proof, _) = prover::prove(pk, witness.clone(), &mut w.rng).unwrap();
    let body = Update { market_id: market, iteration: k, device: d.id(), schedule: witness.schedule, proof: prover::format::encode_proof(&proof) };
    SignedUpdate::new(&d.key, &w.chain, body)
}

/// Height 0 of the test market (timestamp 0).
pub fn genesis_entry(w: &World) -> Entry {
    Entry { chain_id: w.chain, height: 0, prev_hash: [0; 32], state_root: [0; 32], timestamp_ms: 0, body: Body::Genesis(w.genesis.clone()) }
}

/// A validator after genesis and the one enrollment batch (at t = 100; registration closes
/// at 150, iteration k's deadline is 150 + 100·k).
pub fn validator(w: &World) -> ChainApp {
    let mut app = ChainApp::new(&genesis_entry(w), w.keys.clone()).unwrap();
    let enrollments: Vec<SignedEnrollment> = w.devices.iter().map(|d| enrollment(w, d)).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let Built { entry, dropped, .. } = build(&app, 100, &enrollments, &[]).unwrap();
    assert!(dropped.is_empty());
    app.validate(&entry, &[], &Default::default(), &mut rng).unwrap();
    app.apply(&entry, &[]).unwrap();
    // The (empty) closing batch at the close ends registration.
    let closing = build(&app, w.genesis.market.registration_close_ms, &[], &[]).unwrap().entry;
    assert!(matches!(&closing.body, protocol::entry::Body::Enrollment(b) if b.enrollments.is_empty()));
    app.validate(&closing, &[], &Default::default(), &mut rng).unwrap();
    app.apply(&closing, &[]).unwrap();
    app
}

/// The market of the simulations: registration closes at 6 s, iterations every 2 s, K_max
/// `max_iterations`; the genesis entry and the devices' enrollments and updates (every
/// device in every iteration).
pub fn sim_world(max_iterations: u32) -> (World, Entry, verifier_node::sim::Devices) {
    sim_world_with(max_iterations, |_| {})
}

/// [`sim_world`] with the genesis market changed by `change` before anything is signed.
pub fn sim_world_with(max_iterations: u32, change: impl FnOnce(&mut MarketSpec)) -> (World, Entry, verifier_node::sim::Devices) {
    let mut w = world();
    w.genesis.market.registration_close_ms = 6000;
    w.genesis.market.iteration_ms = 2000;
    w.genesis.market.max_iterations = max_iterations;
    w.genesis.market.execution_start_ms = 1_000_000;
    change(&mut w.genesis.market);
    w.chain = chain_id(&w.genesis);
    let genesis = genesis_entry(&w);
    let mut devices = verifier_node::sim::Devices { enrollments: w.devices.iter().map(|d| enrollment(&w, d)).collect(), ..Default::default() };
    for k in 1..=max_iterations {
        let us = (0..w.devices.len()).map(|i| update(&mut w, i, k, k)).collect();
        devices.updates.insert((7, k), us);
    }
    (w, genesis, devices)
}

/// [`sim_world`] with a second market, 8, that the operator opens at 1 s: it registers until
/// 30 s (well past the simulations' 12 s GST: an opening that only commits after its market's
/// close is refused) while market 7 schedules, and executes after market 7's execution.
pub fn two_market_sim_world(max_iterations: u32) -> (World, Entry, verifier_node::sim::Devices) {
    let (mut w, genesis, mut devices) = sim_world(max_iterations);
    let span = protocol::market::execution_span(&w.genesis.market);
    let m8 = market_spec(&w, 8, 30_000, span.1 + 1000);
    devices.opens.push((1000, open(&w, m8.clone())));
    devices.enrollments.extend(w.devices.iter().map(|d| enrollment_in(&w, d, &m8)));
    for k in 1..=max_iterations {
        let us = (0..w.devices.len()).map(|i| update_in(&mut w, 8, i, k, k)).collect();
        devices.updates.insert((8, k), us);
    }
    (w, genesis, devices)
}
