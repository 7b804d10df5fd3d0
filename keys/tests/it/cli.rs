//! The `keys` binary end to end: a three-party ceremony through files, the development setup,
//! and the import of a snarkjs `.ptau` (`.ci/run` installs snarkjs from npm).

use std::path::{Path, PathBuf};
use std::process::Command;

use circuits::{sample, ModelKind, Shape, Slots};
use prover::{UpdateProvingKey, UpdateVerifyingKey};

fn keys(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_keys")).args(args).current_dir(dir).output().expect("run keys");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "keys {args:?} failed:\n{text}");
    text
}

fn keys_fails(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_keys")).args(args).current_dir(dir).output().expect("run keys");
    assert!(!out.status.success(), "keys {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gridproof-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Loads exported key files and proves a sample witness with them.
fn prove_with(dir: &Path, shape: Shape) {
    let stem = format!("{}-{}", shape.kind, shape.slots);
    let pk = UpdateProvingKey::from_bytes(&std::fs::read(dir.join(format!("{stem}.pk"))).unwrap(), Some(shape)).unwrap();
    let vk = UpdateVerifyingKey::from_bytes(&std::fs::read(dir.join(format!("{stem}.vk"))).unwrap(), Some(shape)).unwrap();
    let (proof, inputs) = prover::prove(&pk, sample::witness(shape.kind, shape.slots, 3, 4, 0), &mut rand::rngs::OsRng).unwrap();
    prover::verify(&vk, &inputs, &proof).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(format!("{stem}.vk.json"))).unwrap()).unwrap();
    assert_eq!(&prover::snarkjs::import_verifying_key(&json).unwrap(), vk.inner());
}

#[test]
fn three_party_ceremony_through_the_cli() {
    let d = scratch("ceremony");
    let shape = Shape { kind: ModelKind::Producer, slots: Slots::new(4).unwrap() };
    keys(&d, &["ptau", "new", "--power", "10", "--out", "p0.ptau"]);
    let mut hashes = vec![];
    for (i, name) in ["alice", "bob", "carol"].iter().enumerate() {
        let out = keys(&d, &["ptau", "contribute", "--in", &format!("p{i}.ptau"), "--out", &format!("p{}.ptau", i + 1), "--name", name]);
        hashes.push(out.split_whitespace().find(|w| w.len() == 64).unwrap().to_string());
    }
    keys(&d, &["ptau", "beacon", "--in", "p3.ptau", "--out", "final.ptau", "--beacon", &"ab".repeat(32), "--iterations-exp", "3"]);
    let verified = keys(&d, &["ptau", "verify", "--in", "final.ptau"]);
    for h in &hashes {
        assert!(verified.contains(h), "contribution hash {h} not listed:\n{verified}");
    }
    keys(&d, &["phase2", "new", "--ptau", "final.ptau", "--model", "producer", "--slots", "4", "--out", "k0.ph2"]);
    for (i, name) in ["dave", "erin", "frank"].iter().enumerate() {
        keys(&d, &["phase2", "contribute", "--in", &format!("k{i}.ph2"), "--out", &format!("k{}.ph2", i + 1), "--name", name]);
    }
    keys(&d, &["phase2", "finalize", "--in", "k3.ph2", "--out", "final.ph2", "--beacon", &"cd".repeat(32), "--iterations-exp", "3"]);
    assert!(keys(&d, &["phase2", "verify", "--in", "final.ph2", "--ptau", "final.ptau"]).contains("OK"));
    keys(&d, &["phase2", "export", "--in", "final.ph2", "--ptau", "final.ptau", "--out", "out"]);
    prove_with(&d.join("out"), shape);

    // Prepared: phase 2 from the prepared file starts from the same initial key as from the
    // plain one (its start hash binds the key, and this is another process, so nothing cached
    // is shared), and verifies against either file.
    let prepared = keys(&d, &["ptau", "prepare", "--in", "final.ptau", "--out", "final.prep"]);
    assert!(prepared.contains("domains 2^1, 2^2, 2^3, 2^4, 2^5, 2^6, 2^7, 2^8, 2^9, 2^10:"), "every size by default:\n{prepared}");
    let some = keys(&d, &["ptau", "prepare", "--in", "final.ptau", "--out", "some.prep", "--domains", "10,3"]);
    assert!(some.contains("domains 2^3, 2^10:"), "{some}");
    assert!(keys(&d, &["ptau", "verify", "--in", "some.prep"]).contains("prepared Lagrange bases for the domains 2^3, 2^10 match"));
    assert!(keys_fails(&d, &["ptau", "prepare", "--in", "final.ptau", "--out", "x.prep", "--domains", "11"]).contains("2^11"));
    keys(&d, &["phase2", "new", "--ptau", "final.prep", "--model", "producer", "--slots", "4", "--out", "q0.ph2"]);
    keys(&d, &["phase2", "contribute", "--in", "q0.ph2", "--out", "q1.ph2", "--name", "gus"]);
    assert!(keys(&d, &["phase2", "verify", "--in", "q1.ph2", "--ptau", "final.ptau"]).contains("OK"));
    assert!(keys(&d, &["phase2", "verify", "--in", "final.ph2", "--ptau", "final.prep"]).contains("OK"));
    // A prepared file whose last point (a [L_j(tau)]2 of 2^10) is replaced by the one before
    // it is refused when read.
    let mut bytes = std::fs::read(d.join("final.prep")).unwrap();
    let n = bytes.len();
    let before = bytes[n - 128..n - 64].to_vec();
    bytes[n - 64..].copy_from_slice(&before);
    std::fs::write(d.join("bad.prep"), bytes).unwrap();
    let e = keys_fails(&d, &["phase2", "new", "--ptau", "bad.prep", "--model", "producer", "--slots", "4", "--out", "x.ph2"]);
    assert!(e.contains("bad.prep") && e.contains("2^10") && e.contains("[L_j(tau)]2"), "{e}");

    // A phase-2 transcript checked against another phase 1 is refused.
    assert!(keys_fails(&d, &["phase2", "verify", "--in", "final.ph2", "--ptau", "p2.ptau"]).contains("REJECTED"));
    // A truncated transcript names the file.
    let bytes = std::fs::read(d.join("final.ph2")).unwrap();
    std::fs::write(d.join("cut.ph2"), &bytes[..bytes.len() - 100]).unwrap();
    assert!(keys_fails(&d, &["phase2", "verify", "--in", "cut.ph2", "--ptau", "final.ptau"]).contains("cut.ph2"));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn dev_setup_warns_and_writes_working_keys() {
    let d = scratch("dev");
    let out = keys(&d, &["dev-setup", "--model", "battery", "--slots", "4", "--out", "dev"]);
    assert!(out.contains("NOT FOR PRODUCTION"), "{out}");
    let shape = Shape { kind: ModelKind::Battery, slots: Slots::new(4).unwrap() };
    prove_with(&d.join("dev"), shape);
    let vk = UpdateVerifyingKey::from_bytes(&std::fs::read(d.join("dev/battery-4.vk")).unwrap(), None).unwrap();
    assert_eq!(vk.setup(), prover::SetupKind::Development);
    assert!(keys_fails(&d, &["dev-setup", "--model", "battery", "--slots", "0", "--out", "dev"]).contains("T = 0"));
    // Without --model: every model's keys (what `device simulate`'s household mix needs).
    keys(&d, &["dev-setup", "--slots", "2", "--out", "all"]);
    for kind in [ModelKind::Deferrable, ModelKind::Battery, ModelKind::Producer, ModelKind::Thermal] {
        for ext in ["pk", "vk", "vk.json"] {
            assert!(d.join(format!("all/{kind}-2.{ext}")).exists(), "{kind}-2.{ext}");
        }
    }
    prove_with(&d.join("all"), Shape { kind: ModelKind::Thermal, slots: Slots::new(2).unwrap() });
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn snarkjs_ptau_imports_and_yields_working_keys() {
    if Command::new("snarkjs").arg("--help").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "snarkjs is not installed; .ci/run installs it with npm");
        eprintln!("snarkjs not on PATH: import test skipped");
        return;
    }
    let d = scratch("snarkjs");
    let sj = |args: &[&str]| {
        let out = Command::new("snarkjs").args(args).current_dir(&d).output().expect("run snarkjs");
        assert!(out.status.success(), "snarkjs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sj(&["powersoftau", "new", "bn128", "10", "pot0.ptau"]);
    sj(&["powersoftau", "contribute", "pot0.ptau", "pot1.ptau", "--name=first", "-e=some entropy"]);
    sj(&["powersoftau", "prepare", "phase2", "pot1.ptau", "pot.ptau"]);
    let imported = keys(&d, &["ptau", "import", "--snarkjs", "pot.ptau", "--out", "imported.ptau"]);
    assert!(imported.contains("prepared Lagrange bases of 2^1 to 2^10"), "{imported}");
    // snarkjs's prepared bases, checked against its powers on reading, give working keys.
    keys(&d, &["phase2", "new", "--ptau", "imported.ptau", "--model", "producer", "--slots", "4", "--out", "s0.ph2"]);
    keys(&d, &["phase2", "export", "--in", "s0.ph2", "--ptau", "imported.ptau", "--out", "out-snarkjs"]);
    prove_with(&d.join("out-snarkjs"), Shape { kind: ModelKind::Producer, slots: Slots::new(4).unwrap() });
    // Our circuit as a .r1cs through snarkjs's own phase 2: snarkjs reads the same
    // constraints (its JSON export matches our matrices term by term), its key verifies
    // against the file and the ptau, and its verifying key is ours from the same powers (α,
    // β, γ and every IC point: (β·A_i + α·B_i + C_i)(τ) of each public wire, which only
    // agrees if wires, rows and the evaluation domain are the same).
    let producer = Shape { kind: ModelKind::Producer, slots: Slots::new(4).unwrap() };
    let written = keys(&d, &["r1cs", "--model", "producer", "--slots", "4", "--out", "producer-4.r1cs"]);
    assert!(written.contains("producer-4.r1cs"), "{written}");
    sj(&["r1cs", "export", "json", "producer-4.r1cs", "producer-4.r1cs.json"]);
    let theirs: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("producer-4.r1cs.json")).unwrap()).unwrap();
    let m = keys::phase2::matrices(producer).unwrap();
    assert_eq!(theirs["nConstraints"], m.num_constraints);
    assert_eq!(theirs["nVars"], m.num_instance_variables + m.num_witness_variables);
    assert_eq!(theirs["nPubInputs"], m.num_instance_variables - 1);
    assert_eq!(theirs["nOutputs"], 0);
    let rows = theirs["constraints"].as_array().unwrap();
    assert_eq!(rows.len(), m.num_constraints);
    for (i, row) in rows.iter().enumerate() {
        for (k, matrix) in [&m.a, &m.b, &m.c].into_iter().enumerate() {
            let ours: std::collections::BTreeMap<String, String> = matrix[i].iter().map(|(c, w)| (w.to_string(), c.to_string())).collect();
            let got: std::collections::BTreeMap<String, String> =
                row[k].as_object().unwrap().iter().map(|(w, c)| (w.clone(), c.as_str().unwrap().to_string())).collect();
            assert_eq!(got, ours, "constraint {i}, matrix {k}");
        }
    }
    sj(&["zkey", "new", "producer-4.r1cs", "pot.ptau", "p0.zkey"]);
    sj(&["zkey", "contribute", "p0.zkey", "p1.zkey", "--name=second", "-e=more entropy"]);
    sj(&["zkey", "verify", "producer-4.r1cs", "pot.ptau", "p1.zkey"]);
    sj(&["zkey", "export", "verificationkey", "p1.zkey", "p1.vk.json"]);
    let snarkjs_vk: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("p1.vk.json")).unwrap()).unwrap();
    let our_vk: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("out-snarkjs/producer-4.vk.json")).unwrap()).unwrap();
    for field in ["nPublic", "vk_alpha_1", "vk_beta_2", "vk_gamma_2", "IC"] {
        assert_eq!(snarkjs_vk[field], our_vk[field], "{field}");
    }
    assert_ne!(snarkjs_vk["vk_delta_2"], our_vk["vk_delta_2"], "snarkjs's contribution changed delta");
    // The snarkjs key imported: gridproof proves with it (snarkjs's QAP reduction), and the
    // proof verifies with our verifier and with snarkjs's.
    keys(&d, &["phase2", "import-zkey", "--zkey", "p1.zkey", "--model", "producer", "--slots", "4", "--out", "out-zkey"]);
    let imported_vk: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("out-zkey/producer-4.vk.json")).unwrap()).unwrap();
    assert_eq!(imported_vk, snarkjs_vk, "the imported verifying key is snarkjs's");
    prove_with(&d.join("out-zkey"), producer);
    let pk = UpdateProvingKey::from_bytes(&std::fs::read(d.join("out-zkey/producer-4.pk")).unwrap(), Some(producer)).unwrap();
    let (proof, inputs) = prover::prove(&pk, sample::witness(producer.kind, producer.slots, 5, 6, 0), &mut rand::rngs::OsRng).unwrap();
    std::fs::write(d.join("proof.json"), serde_json::to_vec(&prover::snarkjs::export_proof(&proof)).unwrap()).unwrap();
    std::fs::write(d.join("public.json"), serde_json::to_vec(&prover::snarkjs::export_public_inputs(&inputs)).unwrap()).unwrap();
    sj(&["groth16", "verify", "p1.vk.json", "public.json", "proof.json"]);
    // A key for another circuit is refused, naming what differs.
    let e = keys_fails(&d, &["phase2", "import-zkey", "--zkey", "p1.zkey", "--model", "deferrable", "--slots", "4", "--out", "x"]);
    assert!(e.contains("wires") && e.contains("deferrable"), "{e}");

    // Contributing to the imported (prepared) file writes an unprepared transcript.
    keys(&d, &["ptau", "contribute", "--in", "imported.ptau", "--out", "ours.ptau", "--name", "local"]);
    keys(&d, &["phase2", "new", "--ptau", "ours.ptau", "--model", "producer", "--slots", "4", "--out", "k0.ph2"]);
    keys(&d, &["phase2", "contribute", "--in", "k0.ph2", "--out", "k1.ph2"]);
    keys(&d, &["phase2", "export", "--in", "k1.ph2", "--ptau", "ours.ptau", "--out", "out"]);
    prove_with(&d.join("out"), Shape { kind: ModelKind::Producer, slots: Slots::new(4).unwrap() });
    // A corrupted [tau^i]1 point (section 2 starts after an 80-byte prefix) is refused.
    let mut bytes = std::fs::read(d.join("pot.ptau")).unwrap();
    bytes[200] ^= 0x55;
    std::fs::write(d.join("bad.ptau"), bytes).unwrap();
    keys_fails(&d, &["ptau", "import", "--snarkjs", "bad.ptau", "--out", "x.ptau"]);
    std::fs::remove_dir_all(&d).ok();
}
