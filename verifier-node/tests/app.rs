//! The validator core end to end with real signatures and proofs: admission, proposal,
//! validation by another validator, and every rejection reason.

use circuits::{commitment, sample, Context, Fr, ModelKind, Opening, Shape, Slots};
use ed25519_dalek::SigningKey;
use protocol::codec::FieldElement;
use protocol::entry::{chain_id, Genesis, GridSpec, KeyHash, MarketSpec};
use protocol::ids::DeviceId;
use protocol::messages::{Enrollment, SignedEnrollment, SignedUpdate, Update};
use protocol::sign::ChainId;
use prover::{UpdateProvingKey, VerifierKeys};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use verifier_node::app::{MarketApp, Reject};

const T: usize = 4;

struct Device {
    key: SigningKey,
    opening: Opening,
}

impl Device {
    fn id(&self) -> DeviceId {
        DeviceId(self.key.verifying_key().to_bytes())
    }
}

struct World {
    chain: ChainId,
    genesis: Genesis,
    keys: VerifierKeys,
    pks: Vec<UpdateProvingKey>,
    devices: Vec<Device>,
    rng: ChaCha20Rng,
}

fn slots() -> Slots {
    Slots::new(T).unwrap()
}

fn world() -> World {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut keys = VerifierKeys::new();
    let mut pks = vec![];
    for kind in [ModelKind::Deferrable, ModelKind::Battery] {
        let (pk, vk) = prover::setup(Shape { kind, slots: slots() }, &mut rng).unwrap();
        keys.insert(vk);
        pks.push(pk);
    }
    let genesis = Genesis {
        validators: vec![],
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
            registration_close_ms: 1000,
            iteration_ms: 100,
            execution_start_ms: 10_000,
        },
        verifying_keys: vec![KeyHash { kind: 1, slots: T as u16, sha256: [0; 32] }],
    };
    let devices = [ModelKind::Deferrable, ModelKind::Battery, ModelKind::Deferrable]
        .iter()
        .enumerate()
        .map(|(i, &kind)| Device {
            key: SigningKey::from_bytes(&[i as u8 + 1; 32]),
            opening: Opening { params: sample::params(kind, slots()), cost_digest: Fr::from(9u64), salt: Fr::from(100u64 + i as u64) },
        })
        .collect();
    World { chain: chain_id(&genesis), genesis, keys, pks, devices, rng }
}

fn enrollment(w: &World, d: &Device) -> SignedEnrollment {
    let body = Enrollment {
        market_id: 7,
        device: d.id(),
        kind: d.opening.params.kind().id(),
        slots: T as u16,
        commitment: FieldElement::new(&commitment(&d.opening)),
    };
    SignedEnrollment::new(&d.key, &w.chain, body)
}

/// A proven, signed update of device `i` for iteration `k` (the proof made for `proof_k`).
fn update(w: &mut World, i: usize, k: u32, proof_k: u32) -> SignedUpdate {
    let d = &w.devices[i];
    let kind = d.opening.params.kind();
    let shape = Shape { kind, slots: slots() };
    let witness = circuits::Witness {
        opening: d.opening.clone(),
        context: Context { market_id: 7, iteration: proof_k, shape },
        schedule: sample::schedule(kind, slots(), i as u16),
    };
    let pk = w.pks.iter().find(|pk| pk.shape() == shape).unwrap();
    let (proof, _) = prover::prove(pk, witness.clone(), &mut w.rng).unwrap();
    let body = Update { market_id: 7, iteration: k, device: d.id(), schedule: witness.schedule, proof: prover::format::encode_proof(&proof) };
    SignedUpdate::new(&d.key, &w.chain, body)
}

fn validator(w: &World) -> MarketApp {
    let mut app = MarketApp::new(w.chain, w.genesis.clone(), w.keys.clone()).unwrap();
    for d in &w.devices {
        app.on_enrollment(10, &enrollment(w, d)).unwrap();
    }
    assert_eq!(app.tick(1000), vec![protocol::clock::Action::CloseRegistration]);
    app.close_registration().unwrap();
    app
}

#[test]
fn enrollments_are_checked() {
    let w = world();
    let mut app = MarketApp::new(w.chain, w.genesis.clone(), w.keys.clone()).unwrap();
    let good = enrollment(&w, &w.devices[0]);
    let mut forged = good.clone();
    forged.body.slots = 5;
    assert!(matches!(app.on_enrollment(10, &forged), Err(Reject::BadSignature(_))));
    let other_chain = SignedEnrollment::new(&w.devices[0].key, &ChainId([9; 32]), good.body.clone());
    assert!(matches!(app.on_enrollment(10, &other_chain), Err(Reject::BadSignature(_))));
    let mut wrong_market = good.body.clone();
    wrong_market.market_id = 8;
    assert!(matches!(app.on_enrollment(10, &SignedEnrollment::new(&w.devices[0].key, &w.chain, wrong_market)), Err(Reject::WrongMarket { .. })));
    let mut producer = good.body.clone();
    producer.kind = ModelKind::Producer.id();
    assert!(matches!(app.on_enrollment(10, &SignedEnrollment::new(&w.devices[0].key, &w.chain, producer)), Err(Reject::UnknownShape { .. })));
    app.on_enrollment(10, &good).unwrap();
    assert!(matches!(app.on_enrollment(11, &good), Err(Reject::Clock(_))));
    assert!(matches!(app.on_enrollment(1000, &enrollment(&w, &w.devices[1])), Err(Reject::Clock(_))));
}

#[test]
fn proposals_are_built_validated_and_applied() {
    let mut w = world();
    let mut a = validator(&w);
    let b = validator(&w);
    let good: Vec<SignedUpdate> = (0..2).map(|i| update(&mut w, i, 1, 1)).collect();
    // Device 2's proof was made for iteration 2: it decodes, is admitted, and is dropped.
    let bad_proof = update(&mut w, 2, 1, 2);
    for u in good.iter().chain([&bad_proof]) {
        a.on_update(1050, u.clone()).unwrap();
    }
    // Admission rejections.
    assert!(matches!(a.on_update(1051, good[0].clone()), Err(Reject::Clock(_))), "duplicate");
    assert!(matches!(a.on_update(1052, update(&mut w, 0, 2, 2)), Err(Reject::Clock(_))), "future iteration");
    let mut short = good[1].body.clone();
    short.schedule.pop();
    assert!(matches!(a.on_update(1053, SignedUpdate::new(&w.devices[1].key, &w.chain, short)), Err(Reject::WrongLength { .. })));
    let mut garbage = good[1].body.clone();
    garbage.proof = [0xff; 128];
    assert!(matches!(a.on_update(1054, SignedUpdate::new(&w.devices[1].key, &w.chain, garbage)), Err(Reject::MalformedProof(_))));
    let stranger = SigningKey::from_bytes(&[77; 32]);
    let mut unknown = good[0].body.clone();
    unknown.device = DeviceId(stranger.verifying_key().to_bytes());
    assert!(matches!(a.on_update(1055, SignedUpdate::new(&stranger, &w.chain, unknown)), Err(Reject::Clock(_))));
    let mut tampered = good[0].clone();
    tampered.body.schedule[0] += 1;
    assert!(matches!(a.on_update(1056, tampered), Err(Reject::BadSignature(_))));

    // The deadline passes: A proposes, dropping the bad proof; B validates.
    a.tick(1100);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (proposal, dropped) = a.propose(&mut rng).unwrap();
    assert_eq!(proposal.updates.len(), 2);
    assert_eq!(dropped, vec![(w.devices[2].id(), Reject::BadProof(w.devices[2].id()))]);
    b.validate(&proposal, &mut rng).unwrap();

    // Byzantine variants of the proposal are refused by B.
    let mut wrong = proposal.clone();
    wrong.body.x_bar[0] += 1;
    assert_eq!(b.validate(&wrong, &mut rng), Err(Reject::WrongAggregates));
    let mut with_bad = proposal.clone();
    with_bad.updates.push(bad_proof.clone());
    assert_eq!(b.validate(&with_bad, &mut rng), Err(Reject::BadProof(w.devices[2].id())));
    let mut dup = proposal.clone();
    dup.updates.push(proposal.updates[0].clone());
    assert!(matches!(b.validate(&dup, &mut rng), Err(Reject::DuplicateInProposal(_))));
    let mut later = proposal.clone();
    later.body.iteration = 2;
    assert!(matches!(b.validate(&later, &mut rng), Err(Reject::WrongIteration { .. })));
    // Dropping an update changes the aggregates, which B recomputes.
    let mut fewer = proposal.clone();
    fewer.updates.pop();
    assert_eq!(b.validate(&fewer, &mut rng), Err(Reject::WrongAggregates));

    // Both apply the decided proposal and agree.
    let mut b = b;
    a.apply(&proposal).unwrap();
    b.apply(&proposal).unwrap();
    assert_eq!(a.admm().unwrap().variables(), b.admm().unwrap().variables());
    assert_eq!(a.admm().unwrap().iteration(), 1);
}
