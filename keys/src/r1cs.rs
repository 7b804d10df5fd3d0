//! Export of a circuit as an iden3 `.r1cs` file (the format circom writes and snarkjs reads),
//! so a deployment can run phase 2 with the snarkjs / p0tion tooling on gridproof's circuits.
//!
//! Layout (binfile): magic `r1cs`, u32 version 1, u32 section count 3, then sections
//! `(u32 type, u64 size, data)`, all little-endian:
//! 1. header: u32 field size 32, the BN254 scalar prime (32 bytes), u32 wires, u32 public
//!    outputs (0), u32 public inputs, u32 private inputs (0), u64 labels, u32 constraints;
//! 2. constraints, in the circuit's order: for each, A, B and C as a u32 term count and then
//!    (u32 wire, 32-byte coefficient in standard, not Montgomery, form) per term, ascending
//!    by wire;
//! 3. wire → label: one u64 per wire (the wire's own index).
//!
//! Wires are arkworks' variables in arkworks' order: wire 0 is the constant one, wires 1 to
//! `public inputs` are the instance (the same order as `circuits::public_inputs`), the rest
//! the witness. A snarkjs key made on this file therefore takes the same public inputs as a
//! gridproof key of the same shape.

use ark_bn254::Fr;
use ark_ff::{BigInteger, PrimeField};
use ark_relations::r1cs::ConstraintMatrices;
use circuits::Shape;

use crate::phase2::{matrices, Phase2Error};

fn section(out: &mut Vec<u8>, kind: u32, data: &[u8]) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(data);
}

fn u32_of(n: usize, what: &str) -> Result<u32, Phase2Error> {
    u32::try_from(n).map_err(|_| Phase2Error::Synthesis(format!("{what} ({n}) does not fit the .r1cs format's u32")))
}

/// The `.r1cs` bytes of `m` (see the module doc).
pub fn encode(m: &ConstraintMatrices<Fr>) -> Result<Vec<u8>, Phase2Error> {
    let wires = m.num_instance_variables + m.num_witness_variables;
    let mut header = Vec::with_capacity(64);
    header.extend_from_slice(&32u32.to_le_bytes());
    header.extend_from_slice(&Fr::MODULUS.to_bytes_le());
    for n in [wires, 0, m.num_instance_variables - 1, 0] {
        header.extend_from_slice(&u32_of(n, "wires")?.to_le_bytes());
    }
    header.extend_from_slice(&(wires as u64).to_le_bytes());
    header.extend_from_slice(&u32_of(m.num_constraints, "constraints")?.to_le_bytes());

    let mut constraints = Vec::new();
    for row in 0..m.num_constraints {
        for matrix in [&m.a, &m.b, &m.c] {
            let mut terms: Vec<(usize, Fr)> = matrix[row].iter().map(|&(c, w)| (w, c)).collect();
            terms.sort_by_key(|t| t.0);
            constraints.extend_from_slice(&u32_of(terms.len(), "terms")?.to_le_bytes());
            for (w, c) in terms {
                constraints.extend_from_slice(&u32_of(w, "wire")?.to_le_bytes());
                constraints.extend_from_slice(&c.into_bigint().to_bytes_le());
            }
        }
    }
    let labels: Vec<u8> = (0..wires as u64).flat_map(u64::to_le_bytes).collect();

    let mut out = b"r1cs".to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&3u32.to_le_bytes());
    section(&mut out, 1, &header);
    section(&mut out, 2, &constraints);
    section(&mut out, 3, &labels);
    Ok(out)
}

/// The `.r1cs` bytes of `shape`'s circuit.
pub fn export(shape: Shape) -> Result<Vec<u8>, Phase2Error> {
    encode(&matrices(shape)?)
}
