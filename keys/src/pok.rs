//! Proofs that a contributor knew its secret and built on its predecessor.
//!
//! For a secret x the contributor publishes a random G1 point s, s·x, and r·x where
//! r = H(transcript ‖ s ‖ s·x) is a G2 point nobody knows the discrete log of (hash to the
//! curve by try-and-increment, then cofactor clearing). The verifier recomputes r and checks
//! e(s, r·x) = e(s·x, r). Because the transcript hash is the predecessor's contribution hash,
//! a proof made for one position in the chain does not verify at another, and r·x is what ties
//! the contributor's update of the parameters to x (see `same_ratio`).

use ark_bn254::{Bn254, Fq, Fq2, Fr, G1Affine, G1Projective, G2Affine};
use ark_ec::pairing::Pairing;
use ark_ec::{AffineRepr, CurveGroup};
use ark_ff::{PrimeField, UniformRand};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

/// A 32-byte transcript or contribution hash.
pub type Hash = [u8; 32];

/// Proof of knowledge of one secret.
#[derive(Debug, Clone, PartialEq, Eq, CanonicalSerialize, CanonicalDeserialize)]
pub struct Pok {
    /// A random point s.
    pub s: G1Affine,
    /// s·x.
    pub s_x: G1Affine,
    /// r·x, with r the challenge point.
    pub r_x: G2Affine,
}

fn compressed<T: CanonicalSerialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    v.serialize_compressed(&mut out).expect("writing to a Vec cannot fail");
    out
}

/// A G2 point with unknown discrete log from a hash of `parts`.
pub fn hash_to_g2(parts: &[&[u8]]) -> G2Affine {
    for counter in 0u32.. {
        let mut h = Sha256::new();
        h.update(b"gridproof/hash-to-g2");
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        h.update(counter.to_le_bytes());
        let seed: Hash = h.finalize().into();
        let c0 = Fq::from_le_bytes_mod_order(&Sha256::new().chain_update(seed).chain_update([0]).finalize());
        let c1 = Fq::from_le_bytes_mod_order(&Sha256::new().chain_update(seed).chain_update([1]).finalize());
        if let Some(p) = G2Affine::get_point_from_x_unchecked(Fq2::new(c0, c1), seed[0] & 1 == 1) {
            let p = p.clear_cofactor();
            if !p.is_zero() {
                return p;
            }
        }
    }
    unreachable!("about half of all x coordinates are on the curve")
}

/// The challenge point r for (transcript, s, s·x).
pub fn challenge(transcript: &Hash, s: &G1Affine, s_x: &G1Affine) -> G2Affine {
    hash_to_g2(&[transcript, &compressed(s), &compressed(s_x)])
}

/// e(a.0, b.1) == e(a.1, b.0): the pairs (a.0, a.1) and (b.0, b.1) have the same ratio.
pub fn same_ratio(a: (G1Affine, G1Affine), b: (G2Affine, G2Affine)) -> bool {
    if a.0.is_zero() || b.0.is_zero() {
        return false;
    }
    Bn254::multi_pairing([a.0, -a.1], [b.1, b.0]).0 == <Bn254 as Pairing>::TargetField::from(1u64)
}

impl Pok {
    /// Proves knowledge of `x` at the chain position named by `transcript`.
    pub fn prove<R: RngCore + CryptoRng>(x: Fr, transcript: &Hash, rng: &mut R) -> Pok {
        let s = G1Projective::rand(rng).into_affine();
        let s_x = (s * x).into_affine();
        let r = challenge(transcript, &s, &s_x);
        Pok { s, s_x, r_x: (r * x).into_affine() }
    }

    /// Verifies the proof; returns (r, r·x) for the caller's ratio checks.
    pub fn verify(&self, transcript: &Hash) -> Option<(G2Affine, G2Affine)> {
        let r = challenge(transcript, &self.s, &self.s_x);
        same_ratio((self.s, self.s_x), (r, self.r_x)).then_some((r, self.r_x))
    }
}

/// A secret from OS randomness mixed with user text (the text alone never decides it).
pub fn secret<R: RngCore + CryptoRng>(rng: &mut R, entropy: &[u8], label: &str) -> Fr {
    let mut os = [0u8; 64];
    rng.fill_bytes(&mut os);
    let h = Sha256::new().chain_update(label).chain_update(os).chain_update(entropy).finalize();
    let mut wide = [0u8; 64];
    wide[..32].copy_from_slice(&h);
    rng.fill_bytes(&mut wide[32..]);
    Fr::from_le_bytes_mod_order(&wide)
}

/// A beacon secret: SHA-256 iterated 2^`iterations_exp` times over the public beacon value,
/// then per-secret labels. Anyone can recompute it.
pub fn beacon_secret(value: &Hash, iterations_exp: u8, label: &str) -> Fr {
    let mut h = *value;
    for _ in 0..(1u64 << iterations_exp) {
        h = Sha256::digest(h).into();
    }
    Fr::from_le_bytes_mod_order(&Sha256::new().chain_update(h).chain_update(label).finalize())
}

/// Hex of a hash, for printing and for errors.
pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}
