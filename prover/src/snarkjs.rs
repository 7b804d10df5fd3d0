//! snarkjs-compatible JSON: `verification_key.json`, `proof.json` and `public.json`, so that
//! `snarkjs groth16 verify` (or any tool that reads these files) can check our proofs.
//!
//! Coordinates are decimal strings; points are affine with a trailing `"1"` (G1) or
//! `["1", "0"]` (G2); an Fq2 element is `[c0, c1]`. Import is strict: decimal without leading
//! zeros, below the modulus, points on the curve and in the subgroup.

use ark_bn254::{Bn254, Fq, Fq12, Fq2, Fr, G1Affine, G2Affine};
use ark_ec::pairing::Pairing;
use ark_ec::AffineRepr;
use ark_ff::{BigInt, PrimeField};
use ark_groth16::{Proof, VerifyingKey};
use serde_json::{json, Value};

use crate::error::FormatError;

fn dec<F: PrimeField>(f: &F) -> String {
    f.into_bigint().to_string()
}

fn g1(p: &G1Affine) -> Value {
    match p.xy() {
        Some((x, y)) => json!([dec(&x), dec(&y), "1"]),
        None => json!(["0", "1", "0"]),
    }
}

fn fq2(f: &Fq2) -> Value {
    json!([dec(&f.c0), dec(&f.c1)])
}

fn g2(p: &G2Affine) -> Value {
    match p.xy() {
        Some((x, y)) => json!([fq2(&x), fq2(&y), ["1", "0"]]),
        None => json!([["0", "0"], ["1", "0"], ["0", "0"]]),
    }
}

fn fq12(f: &Fq12) -> Value {
    let six = |s: &ark_bn254::Fq6| json!([fq2(&s.c0), fq2(&s.c1), fq2(&s.c2)]);
    json!([six(&f.c0), six(&f.c1)])
}

/// `verification_key.json` for `vk`.
pub fn export_verifying_key(vk: &VerifyingKey<Bn254>) -> Value {
    let alphabeta = Bn254::pairing(vk.alpha_g1, vk.beta_g2).0;
    json!({
        "protocol": "groth16",
        "curve": "bn128",
        "nPublic": vk.gamma_abc_g1.len() - 1,
        "vk_alpha_1": g1(&vk.alpha_g1),
        "vk_beta_2": g2(&vk.beta_g2),
        "vk_gamma_2": g2(&vk.gamma_g2),
        "vk_delta_2": g2(&vk.delta_g2),
        "vk_alphabeta_12": fq12(&alphabeta),
        "IC": vk.gamma_abc_g1.iter().map(g1).collect::<Vec<_>>(),
    })
}

/// `proof.json` for `proof`.
pub fn export_proof(proof: &Proof<Bn254>) -> Value {
    json!({
        "pi_a": g1(&proof.a),
        "pi_b": g2(&proof.b),
        "pi_c": g1(&proof.c),
        "protocol": "groth16",
        "curve": "bn128",
    })
}

/// `public.json` for the public inputs.
pub fn export_public_inputs(inputs: &[Fr]) -> Value {
    Value::Array(inputs.iter().map(|f| Value::String(dec(f))).collect())
}

fn bad(what: &str, reason: impl Into<String>) -> FormatError {
    FormatError::Json { what: what.to_string(), reason: reason.into() }
}

/// Parses a canonical decimal field element.
fn parse<F: PrimeField<BigInt = BigInt<4>>>(v: &Value, what: &str) -> Result<F, FormatError> {
    let s = v.as_str().ok_or_else(|| bad(what, "expected a decimal string"))?;
    if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return Err(bad(what, format!("`{s}` is not a canonical decimal number")));
    }
    let mut limbs = [0u64; 4];
    for b in s.bytes() {
        let mut carry = (b - b'0') as u128;
        for l in limbs.iter_mut() {
            let v = (*l as u128) * 10 + carry;
            *l = v as u64;
            carry = v >> 64;
        }
        if carry != 0 {
            return Err(FormatError::NonCanonicalField { what: what.to_string() });
        }
    }
    F::from_bigint(BigInt::new(limbs)).ok_or_else(|| FormatError::NonCanonicalField { what: what.to_string() })
}

fn array<'a>(v: &'a Value, n: usize, what: &str) -> Result<&'a [Value], FormatError> {
    match v.as_array() {
        Some(a) if a.len() == n => Ok(a),
        _ => Err(bad(what, format!("expected an array of {n}"))),
    }
}

fn parse_g1(v: &Value, what: &str) -> Result<G1Affine, FormatError> {
    let a = array(v, 3, what)?;
    if a[2] != json!("1") {
        return Err(bad(what, "only affine points with z = \"1\" are accepted"));
    }
    let p = G1Affine::new_unchecked(parse(&a[0], what)?, parse::<Fq>(&a[1], what)?);
    if !p.is_on_curve() || !p.is_in_correct_subgroup_assuming_on_curve() {
        return Err(FormatError::InvalidPoint { what: what.to_string() });
    }
    Ok(p)
}

fn parse_fq2(v: &Value, what: &str) -> Result<Fq2, FormatError> {
    let a = array(v, 2, what)?;
    Ok(Fq2::new(parse(&a[0], what)?, parse(&a[1], what)?))
}

fn parse_g2(v: &Value, what: &str) -> Result<G2Affine, FormatError> {
    let a = array(v, 3, what)?;
    if a[2] != json!(["1", "0"]) {
        return Err(bad(what, "only affine points with z = [\"1\", \"0\"] are accepted"));
    }
    let p = G2Affine::new_unchecked(parse_fq2(&a[0], what)?, parse_fq2(&a[1], what)?);
    if !p.is_on_curve() || !p.is_in_correct_subgroup_assuming_on_curve() {
        return Err(FormatError::InvalidPoint { what: what.to_string() });
    }
    Ok(p)
}

fn field<'a>(doc: &'a Value, name: &str, what: &str) -> Result<&'a Value, FormatError> {
    doc.get(name).ok_or_else(|| bad(what, format!("missing field `{name}`")))
}

fn expect_groth16(doc: &Value, what: &str) -> Result<(), FormatError> {
    if doc.get("protocol").and_then(Value::as_str) != Some("groth16") {
        return Err(bad(what, "protocol must be \"groth16\""));
    }
    if doc.get("curve").and_then(Value::as_str) != Some("bn128") {
        return Err(bad(what, "curve must be \"bn128\""));
    }
    Ok(())
}

/// Reads `verification_key.json`.
pub fn import_verifying_key(doc: &Value) -> Result<VerifyingKey<Bn254>, FormatError> {
    let w = "verification_key.json";
    expect_groth16(doc, w)?;
    let ic = field(doc, "IC", w)?.as_array().ok_or_else(|| bad(w, "IC must be an array"))?;
    let n_public = field(doc, "nPublic", w)?.as_u64().ok_or_else(|| bad(w, "nPublic must be a number"))?;
    if ic.len() as u64 != n_public + 1 {
        return Err(bad(w, format!("IC has {} points, nPublic = {n_public} needs {}", ic.len(), n_public + 1)));
    }
    Ok(VerifyingKey {
        alpha_g1: parse_g1(field(doc, "vk_alpha_1", w)?, "vk_alpha_1")?,
        beta_g2: parse_g2(field(doc, "vk_beta_2", w)?, "vk_beta_2")?,
        gamma_g2: parse_g2(field(doc, "vk_gamma_2", w)?, "vk_gamma_2")?,
        delta_g2: parse_g2(field(doc, "vk_delta_2", w)?, "vk_delta_2")?,
        gamma_abc_g1: ic.iter().enumerate().map(|(i, p)| parse_g1(p, &format!("IC[{i}]"))).collect::<Result<_, _>>()?,
    })
}

/// Reads `proof.json`.
pub fn import_proof(doc: &Value) -> Result<Proof<Bn254>, FormatError> {
    let w = "proof.json";
    expect_groth16(doc, w)?;
    Ok(Proof { a: parse_g1(field(doc, "pi_a", w)?, "pi_a")?, b: parse_g2(field(doc, "pi_b", w)?, "pi_b")?, c: parse_g1(field(doc, "pi_c", w)?, "pi_c")? })
}

/// Reads `public.json`.
pub fn import_public_inputs(doc: &Value) -> Result<Vec<Fr>, FormatError> {
    let a = doc.as_array().ok_or_else(|| bad("public.json", "expected an array"))?;
    a.iter().enumerate().map(|(i, v)| parse(v, &format!("public.json[{i}]"))).collect()
}
