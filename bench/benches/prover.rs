//! Groth16 prover benchmarks (issue 4): proving per model at T = 96, single verification, and
//! batch verification against N individual ark-groth16 verifications in the same run.
//!
//! Run: `cargo bench -p bench --bench prover`

use std::hint::black_box;

use ark_bn254::Bn254;
use ark_groth16::Groth16;
use bench::{keys, proofs, rng};
use circuits::{sample, ModelKind, Slots};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prover::{batch_verify, prove, verify, BatchItem};

fn proving(c: &mut Criterion) {
    let mut g = c.benchmark_group("prove_t96");
    g.sample_size(10);
    for kind in ModelKind::ALL {
        let (pk, _) = keys(kind, 96);
        let w = sample::witness(kind, Slots::new(96).unwrap(), 1, 1, 0);
        let mut r = rng(1);
        g.bench_function(kind.name(), |b| b.iter(|| prove(&pk, black_box(w.clone()), &mut r).unwrap()));
    }
    g.finish();
}

fn verification(c: &mut Criterion) {
    let (pk, vk) = keys(ModelKind::Deferrable, 96);
    let all = proofs(&pk, 1024);
    let mut g = c.benchmark_group("verify_t96");
    g.sample_size(10);
    g.bench_function("single", |b| b.iter(|| verify(&vk, black_box(&all[0].1), &all[0].0).unwrap()));
    for n in [16usize, 64, 256, 1024] {
        let items: Vec<BatchItem> = all[..n].iter().map(|(p, i)| BatchItem { public_inputs: i, proof: p }).collect();
        g.throughput(Throughput::Elements(n as u64));
        let mut r = rng(n as u64);
        g.bench_with_input(BenchmarkId::new("batch", n), &items, |b, items| b.iter(|| assert!(batch_verify(&vk, black_box(items), &mut r).all_valid())));
        // The baseline: N plain ark-groth16 verifications with the same prepared key.
        g.bench_with_input(BenchmarkId::new("individual", n), &all[..n], |b, all| {
            b.iter(|| {
                for (p, i) in all {
                    assert!(Groth16::<Bn254>::verify_proof(vk.prepared(), p, black_box(i)).unwrap());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, proving, verification);
criterion_main!(benches);
