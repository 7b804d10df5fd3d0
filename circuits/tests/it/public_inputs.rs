//! Every public input is bound: changing the commitment, the context, the nameplate limits or
//! any schedule limb of a valid statement leaves the instance unsatisfied (DESIGN §5.1), and
//! parameters beyond the nameplate satisfy no instance that names it (DESIGN §10).

use circuits::statement::is_satisfied;
use circuits::{commitment, Context, Fr, ModelParams, Shape, Slots, UpdateCircuit, Witness};
use crate::common::*;

fn valid_witnesses() -> Vec<Witness> {
    // T = 9 makes two limb elements, the second one partly filled.
    let t = 9;
    let x_d = vec![0, 100, 200, 300, 300, 300, 200, 100, 0];
    let x_b = vec![500, -200, 0, 0, 300, -600, 0, 100, 0];
    let x_p = vec![0, -100, -200, -300, -300, -300, -200, -100, 0];
    let x_t = vec![1000; 9];
    let th = circuits::model::thermal::Thermal {
        p_max: 2000,
        decay: circuits::fixed::Fixed::from_f64("a", 0.9).unwrap(),
        gain: circuits::fixed::Fixed::from_f64("b", 0.001).unwrap(),
        drift: vec![circuits::fixed::Fixed::from_f64("c", 1.0).unwrap(); t],
        temp_initial: circuits::fixed::Fixed::from_f64("t0", 20.0).unwrap(),
        temp_min: circuits::fixed::Fixed::from_f64("lo", 15.0).unwrap(),
        temp_max: circuits::fixed::Fixed::from_f64("hi", 25.0).unwrap(),
    };
    let params: Vec<(ModelParams, Vec<i32>)> = vec![
        (deferrable(vec![true; t], 300, 1000, 2000, Some(100)), x_d),
        (battery(t, 600, 600, 2000, 1000, 0), x_b),
        (producer(vec![400; t]), x_p),
        (thermal(th), x_t),
    ];
    params.into_iter().map(|(p, x)| witness(p, x)).collect()
}

#[test]
fn honest_instances_are_satisfied_and_match_native_inputs() {
    for w in valid_witnesses() {
        let circuit = UpdateCircuit::new(w.clone()).expect("valid witness");
        assert_eq!(circuit.public_inputs().unwrap(), instance(&w).as_slice());
        assert_eq!(circuit.public_inputs().unwrap().len(), 3 + 2);
        assert!(is_satisfied(circuit).unwrap(), "{:?}", w.opening.params.kind());
    }
}

#[test]
fn changing_any_public_input_breaks_the_instance() {
    for w in valid_witnesses() {
        let honest = instance(&w);
        for i in 0..honest.len() {
            for delta in [Fr::from(1u64), -Fr::from(1u64), Fr::from(1u64 << 32)] {
                let mut tampered = honest.clone();
                tampered[i] += delta;
                let circuit = UpdateCircuit::unchecked(tampered, w.clone()).unwrap();
                assert!(!is_satisfied(circuit).unwrap(), "{:?}: public input {i} not bound", w.opening.params.kind());
            }
        }
    }
}

#[test]
fn statement_for_another_context_or_opening_is_rejected() {
    let w = valid_witnesses().remove(0);
    // Same witness, instance claiming the next iteration.
    let next = Context { iteration: w.context.iteration + 1, ..w.context };
    let other_ctx = circuits::public_inputs(commitment(&w.opening), &next, &w.limits, &w.schedule).unwrap();
    assert!(!is_satisfied(UpdateCircuit::unchecked(other_ctx, w.clone()).unwrap()).unwrap());
    // Same witness, instance with a commitment to another salt.
    let mut other = w.opening.clone();
    other.salt += Fr::from(1u64);
    let other_c = circuits::public_inputs(commitment(&other), &w.context, &w.limits, &w.schedule).unwrap();
    assert!(!is_satisfied(UpdateCircuit::unchecked(other_c, w.clone()).unwrap()).unwrap());
    // A context of another kind or T never comes from this circuit shape.
    let shape = Shape { kind: circuits::ModelKind::Battery, slots: Slots::new(9).unwrap() };
    let wrong_kind = circuits::public_inputs(commitment(&w.opening), &Context { shape, ..w.context }, &w.limits, &w.schedule).unwrap();
    assert!(!is_satisfied(UpdateCircuit::unchecked(wrong_kind, w).unwrap()).unwrap());
}

#[test]
fn commitment_hides_nothing_it_should_bind() {
    // The commitment changes with each part of the opening.
    let w = valid_witnesses().remove(1);
    let c = commitment(&w.opening);
    let mut o = w.opening.clone();
    o.cost_digest += Fr::from(1u64);
    assert_ne!(commitment(&o), c);
    let mut o = w.opening.clone();
    o.params = battery(9, 600, 600, 2000, 1001, 0);
    assert_ne!(commitment(&o), c);
}

/// The nameplate binds θ: for each model and each limit that bounds something, a nameplate one
/// unit below what the parameters need is refused natively, and the circuit is unsatisfied
/// with a witness that claims it (a 7 kW charger cannot commit to 1 MW). The fitting
/// nameplate, and any larger one, are accepted.
#[test]
fn parameters_beyond_the_public_nameplate_leave_the_instance_unsatisfied() {
    use circuits::nameplate::{fitting, Limits};
    for w in valid_witnesses() {
        let kind = w.opening.params.kind();
        let fit = fitting(&w.opening.params);
        let roomy = Limits { import_w: fit.import_w + 7000, export_w: fit.export_w + 7000, capacity: fit.capacity + 7000 };
        assert!(circuit_accepts(&Witness { limits: roomy, ..w.clone() }), "{kind:?}: a larger nameplate admits the parameters");
        let lower: [fn(&mut Limits); 3] = [|l| l.import_w -= 1, |l| l.export_w -= 1, |l| l.capacity -= 1];
        for (i, f) in lower.iter().enumerate() {
            if [fit.import_w, fit.export_w, fit.capacity][i] == 0 {
                continue; // this limit bounds nothing of this model
            }
            let mut tight = fit;
            f(&mut tight);
            let beyond = Witness { limits: tight, ..w.clone() };
            assert!(matches!(UpdateCircuit::new(beyond.clone()), Err(circuits::statement::StatementError::Nameplate(_))), "{kind:?} limit {i}");
            assert!(circuits::nameplate::check(&beyond.opening.params, &tight).is_err());
            assert!(!circuit_accepts(&beyond), "{kind:?}: parameters beyond limit {i} satisfy the circuit");
        }
    }
}
