//! Import of a snarkjs `.ptau` file (powers of tau) as a phase-1 accumulator, so that a
//! deployment can reuse a large public transcript, and of a snarkjs Groth16 `.zkey` as a
//! proving key ([`import_zkey`]), so that it can run phase 2 with the snarkjs tooling on the
//! `.r1cs` of [`crate::r1cs`].
//!
//! The file is a snarkjs "binfile": magic `ptau`, u32 version, u32 section count, then sections
//! `(u32 type, u64 size, data)`. Section 1 holds the field size (32), the prime and the power;
//! sections 2–6 hold [τ^i]₁ (2n − 1 points), [τ^i]₂ (n), [ατ^i]₁ (n), [βτ^i]₁ (n) and [β]₂, as
//! affine coordinates in little-endian Montgomery form (the same Montgomery form arkworks
//! uses, R = 2^256). Every point is checked to be on the curve and in the subgroup. The
//! snarkjs contribution records are not imported: verify the `.ptau` with
//! `snarkjs powersoftau verify`; the import is then checked for well-formedness by
//! [`crate::phase1::Phase1::verify`] like any accumulator (with no contributions of ours).
//!
//! A file from `snarkjs powersoftau prepare phase2` also holds the Lagrange bases of every
//! domain 2^0 … 2^power (sections 12–15: [L_j(τ)]₁, [L_j(τ)]₂, [αL_j(τ)]₁, [βL_j(τ)]₁, each
//! domain's points after the smaller ones'). [`import_prepared`] takes those of the domains
//! 2^1 and up and checks them against the powers like any prepared set
//! ([`crate::lagrange::Prepared::from_parts`]).

use ark_bn254::{Fq, Fq2, G1Affine, G2Affine};
use ark_ff::{BigInt, PrimeField};
use thiserror::Error;

use sha2::{Digest, Sha256};

use crate::lagrange::{LagrangeBases, LagrangeError, Prepared};
use crate::phase1::{Accumulator, Phase1, MAX_POWER};

/// Why a `.ptau` file was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PtauError {
    /// Not a binfile of the expected kind.
    #[error("not a snarkjs {0} file (bad magic or version)")]
    Magic(&'static str),
    /// A section is missing.
    #[error("section {0} is missing")]
    MissingSection(u32),
    /// A section or the file is shorter than declared.
    #[error("truncated: {0}")]
    Truncated(String),
    /// Not BN254, or a power we do not support.
    #[error("unsupported parameters: {0}")]
    Unsupported(String),
    /// The prepared Lagrange bases are not the file's powers in the Lagrange basis.
    #[error("prepared sections: {0}")]
    Lagrange(#[from] LagrangeError),
    /// A coordinate not below the modulus, or a point off the curve or subgroup.
    #[error("invalid point {index} in section {section}")]
    InvalidPoint {
        /// Section.
        section: u32,
        /// Index of the point.
        index: usize,
    },
}

fn u32_at(b: &[u8], o: usize) -> Result<u32, PtauError> {
    b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4"))).ok_or(PtauError::Truncated(format!("u32 at {o}")))
}

fn fq(bytes: &[u8]) -> Option<Fq> {
    let mut limbs = [0u64; 4];
    for (i, l) in limbs.iter_mut().enumerate() {
        *l = u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8"));
    }
    let big = BigInt::new(limbs);
    (big < Fq::MODULUS).then(|| Fq::new_unchecked(big))
}

fn g1(b: &[u8]) -> Option<G1Affine> {
    if b[..64].iter().all(|&x| x == 0) {
        return Some(G1Affine::identity()); // snarkjs writes the point at infinity as zeros
    }
    let p = G1Affine::new_unchecked(fq(&b[..32])?, fq(&b[32..64])?);
    (p.is_on_curve() && p.is_in_correct_subgroup_assuming_on_curve()).then_some(p)
}

fn g2(b: &[u8]) -> Option<G2Affine> {
    if b[..128].iter().all(|&x| x == 0) {
        return Some(G2Affine::identity());
    }
    let x = Fq2::new(fq(&b[..32])?, fq(&b[32..64])?);
    let y = Fq2::new(fq(&b[64..96])?, fq(&b[96..128])?);
    let p = G2Affine::new_unchecked(x, y);
    (p.is_on_curve() && p.is_in_correct_subgroup_assuming_on_curve()).then_some(p)
}

fn points<T>(section: &[u8], id: u32, size: usize, count: usize, parse: fn(&[u8]) -> Option<T>) -> Result<Vec<T>, PtauError> {
    if section.len() < size * count {
        return Err(PtauError::Truncated(format!("section {id} holds {} bytes, needs {}", section.len(), size * count)));
    }
    (0..count).map(|i| parse(&section[i * size..(i + 1) * size]).ok_or(PtauError::InvalidPoint { section: id, index: i })).collect()
}

/// Parses a `.ptau` file into a phase-1 transcript whose chain starts at the imported
/// accumulator (contributions of ours can follow).
pub fn import_ptau(bytes: &[u8]) -> Result<Phase1, PtauError> {
    import(bytes).map(|(p, _)| p)
}

/// Parses a `.ptau` file with its prepared Lagrange bases, when it has them (sections 12–15,
/// checked against the powers); without them the result is unprepared.
pub fn import_prepared(bytes: &[u8]) -> Result<Prepared, PtauError> {
    let (phase1, sections) = import(bytes)?;
    let Some([l1, l2, la, lb]) = sections else { return Ok(Prepared::unprepared(phase1)) };
    let power = phase1.accumulator.power;
    let mut sets = Vec::new();
    for p in 1..=power {
        let (start, count) = ((1usize << p) - 1, 1usize << p);
        let g1s = |section: &[u8], id: u32| points(section.get(start * 64..).unwrap_or_default(), id, 64, count, g1);
        sets.push(LagrangeBases {
            power: p,
            tau_g1: g1s(l1, 12)?,
            tau_g2: points(l2.get(start * 128..).unwrap_or_default(), 13, 128, count, g2)?,
            alpha_tau_g1: g1s(la, 14)?,
            beta_tau_g1: g1s(lb, 15)?,
        });
    }
    Ok(Prepared::from_parts(phase1, sets)?)
}

/// The transcript, and sections 12–15 when the file has all four.
fn import(bytes: &[u8]) -> Result<(Phase1, Option<[&[u8]; 4]>), PtauError> {
    let sections = binfile(bytes, b"ptau", ".ptau")?;
    let section = |id: u32| sections.iter().find(|(i, _)| *i == id).map(|(_, s)| *s).ok_or(PtauError::MissingSection(id));
    let header = section(1)?;
    let n8 = u32_at(header, 0)? as usize;
    if n8 != 32 || header.len() < 4 + 32 + 8 {
        return Err(PtauError::Unsupported(format!("field size {n8} bytes")));
    }
    let q = BigInt::<4>::new(std::array::from_fn(|i| u64::from_le_bytes(header[4 + 8 * i..12 + 8 * i].try_into().expect("8"))));
    if q != Fq::MODULUS {
        return Err(PtauError::Unsupported("the prime is not BN254's".into()));
    }
    let power = u32_at(header, 36)?;
    if !(1..=MAX_POWER).contains(&power) {
        return Err(PtauError::Unsupported(format!("power {power}")));
    }
    let n = 1usize << power;
    let accumulator = Accumulator {
        power,
        tau_g1: points(section(2)?, 2, 64, 2 * n - 1, g1)?,
        tau_g2: points(section(3)?, 3, 128, n, g2)?,
        alpha_tau_g1: points(section(4)?, 4, 64, n, g1)?,
        beta_tau_g1: points(section(5)?, 5, 64, n, g1)?,
        beta_g2: points(section(6)?, 6, 128, 1, g2)?.remove(0),
    };
    let prepared = [12, 13, 14, 15].map(|id| section(id).ok());
    let prepared = match prepared {
        [Some(a), Some(b), Some(c), Some(d)] => Some([a, b, c, d]),
        _ => None,
    };
    Ok((Phase1::from_imported(accumulator, Sha256::digest(bytes).into()), prepared))
}

/// The sections `(type, data)` of a snarkjs binfile with this 4-byte magic and version 1.
fn binfile<'a>(bytes: &'a [u8], magic: &[u8; 4], kind: &'static str) -> Result<Vec<(u32, &'a [u8])>, PtauError> {
    if bytes.len() < 12 || &bytes[..4] != magic || u32_at(bytes, 4)? != 1 {
        return Err(PtauError::Magic(kind));
    }
    let count = u32_at(bytes, 8)?;
    let mut sections: Vec<(u32, &[u8])> = Vec::new();
    let mut o = 12usize;
    for _ in 0..count.min(64) {
        let id = u32_at(bytes, o)?;
        let size = bytes.get(o + 4..o + 12).map(|s| u64::from_le_bytes(s.try_into().expect("8"))).ok_or(PtauError::Truncated("section header".into()))?;
        let start = o + 12;
        let end = usize::try_from(size).ok().and_then(|s| start.checked_add(s)).filter(|&e| e <= bytes.len());
        let end = end.ok_or(PtauError::Truncated(format!("section {id} declares {size} bytes")))?;
        sections.push((id, &bytes[start..end]));
        o = end;
    }
    Ok(sections)
}

/// A proving key from a snarkjs Groth16 `.zkey` (after `zkey new` and any `zkey contribute`;
/// verify it with `snarkjs zkey verify` against the exported `.r1cs` and the ptau first).
///
/// Sections: 1 protocol (1 = Groth16); 2 the Groth16 header (field sizes and primes, wires,
/// public inputs, domain size, [α]₁, [β]₁, [β]₂, [γ]₂, [δ]₁, [δ]₂); 3 IC; 5 A, 6 B₁, 7 B₂
/// (one point per wire); 8 C (one per private wire); 9 H (one per domain point). Points are
/// affine little-endian Montgomery coordinates, zeros for the point at infinity, each
/// checked to be on the curve and in the subgroup. Its wires, public inputs and domain must
/// be those of `shape`'s circuit; its H query makes the prover use snarkjs's QAP reduction
/// (`prover::QapReduction`).
pub fn import_zkey(bytes: &[u8], shape: circuits::Shape) -> Result<ark_groth16::ProvingKey<ark_bn254::Bn254>, PtauError> {
    use ark_bn254::Fr;
    let sections = binfile(bytes, b"zkey", ".zkey")?;
    let section = |id: u32| sections.iter().find(|(i, _)| *i == id).map(|(_, s)| *s).ok_or(PtauError::MissingSection(id));
    if u32_at(section(1)?, 0)? != 1 {
        return Err(PtauError::Unsupported("not a Groth16 key".into()));
    }
    let h = section(2)?;
    let prime_at = |o: usize| -> Result<BigInt<4>, PtauError> {
        let b = h.get(o..o + 32).ok_or(PtauError::Truncated("Groth16 header".into()))?;
        Ok(BigInt::new(std::array::from_fn(|i| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8")))))
    };
    if u32_at(h, 0)? != 32 || prime_at(4)? != Fq::MODULUS || u32_at(h, 36)? != 32 || prime_at(40)? != Fr::MODULUS {
        return Err(PtauError::Unsupported("the curve is not BN254".into()));
    }
    let (wires, public, domain) = (u32_at(h, 72)? as usize, u32_at(h, 76)? as usize, u32_at(h, 80)? as usize);
    let m = crate::phase2::matrices(shape).map_err(|e| PtauError::Unsupported(e.to_string()))?;
    let want = (m.num_instance_variables + m.num_witness_variables, m.num_instance_variables - 1, (m.num_constraints + m.num_instance_variables).next_power_of_two());
    if (wires, public, domain) != want {
        return Err(PtauError::Unsupported(format!(
            "the key has {wires} wires, {public} public inputs and a domain of {domain}; {} with T = {} has {}, {} and {}",
            shape.kind, shape.slots, want.0, want.1, want.2
        )));
    }
    let one = |o: usize, size: usize, what: &'static str| h.get(o..o + size).ok_or(PtauError::Truncated(format!("Groth16 header: {what}")));
    let pt1 = |o: usize, what| one(o, 64, what).and_then(|b| g1(b).ok_or(PtauError::InvalidPoint { section: 2, index: o }));
    let pt2 = |o: usize, what| one(o, 128, what).and_then(|b| g2(b).ok_or(PtauError::InvalidPoint { section: 2, index: o }));
    let (alpha_g1, beta_g1, beta_g2) = (pt1(84, "alpha")?, pt1(148, "beta1")?, pt2(212, "beta2")?);
    let (gamma_g2, delta_g1, delta_g2) = (pt2(340, "gamma2")?, pt1(468, "delta1")?, pt2(532, "delta2")?);
    let vk = ark_groth16::VerifyingKey { alpha_g1, beta_g2, gamma_g2, delta_g2, gamma_abc_g1: points(section(3)?, 3, 64, public + 1, g1)? };
    Ok(ark_groth16::ProvingKey {
        vk,
        beta_g1,
        delta_g1,
        a_query: points(section(5)?, 5, 64, wires, g1)?,
        b_g1_query: points(section(6)?, 6, 64, wires, g1)?,
        b_g2_query: points(section(7)?, 7, 128, wires, g2)?,
        l_query: points(section(8)?, 8, 64, wires - public - 1, g1)?,
        h_query: points(section(9)?, 9, 64, domain, g1)?,
    })
}
