//! SHA-256 Merkle roots, for a schedule and for a market's final schedules.
//!
//! Leaves are `H(0x00 ‖ data)`, inner nodes `H(0x01 ‖ left ‖ right)` (domain-separated so a
//! leaf can never pass for a node); an odd node at the end of a level moves up unchanged. The
//! root of no leaves is `H(0x02)`.

use sha2::{Digest, Sha256};

use circuits::fixed::Watts;

use crate::ids::DeviceId;

/// A 32-byte SHA-256 digest.
pub type Hash = [u8; 32];

/// The leaf hash of `data`.
pub fn leaf(data: &[u8]) -> Hash {
    Sha256::new().chain_update([0u8]).chain_update(data).finalize().into()
}

fn node(l: &Hash, r: &Hash) -> Hash {
    Sha256::new().chain_update([1u8]).chain_update(l).chain_update(r).finalize().into()
}

/// The root over leaf hashes, in order.
pub fn root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return Sha256::digest([2u8]).into();
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level.chunks(2).map(|p| if p.len() == 2 { node(&p[0], &p[1]) } else { p[0] }).collect();
    }
    level[0]
}

/// The root of one schedule: leaf t is `u32 t ‖ i32 x_t` (little-endian).
pub fn schedule_root(x: &[Watts]) -> Hash {
    let leaves: Vec<Hash> = x
        .iter()
        .enumerate()
        .map(|(t, v)| {
            let mut d = [0u8; 8];
            d[..4].copy_from_slice(&(t as u32).to_le_bytes());
            d[4..].copy_from_slice(&v.to_le_bytes());
            leaf(&d)
        })
        .collect();
    root(&leaves)
}

/// The root of a market's final schedules: leaf i is `device id ‖ schedule root`, devices in
/// ascending id order (the caller passes them sorted, as a `BTreeMap` iterates).
pub fn final_root<'a>(schedules: impl IntoIterator<Item = (&'a DeviceId, &'a Vec<Watts>)>) -> Hash {
    let leaves: Vec<Hash> = schedules
        .into_iter()
        .map(|(id, x)| {
            let mut d = [0u8; 64];
            d[..32].copy_from_slice(&id.0);
            d[32..].copy_from_slice(&schedule_root(x));
            leaf(&d)
        })
        .collect();
    root(&leaves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_change_with_any_value_or_order() {
        let x = vec![0, 100, -50, 7];
        let r = schedule_root(&x);
        for t in 0..x.len() {
            let mut y = x.clone();
            y[t] += 1;
            assert_ne!(schedule_root(&y), r);
        }
        let mut swapped = x.clone();
        swapped.swap(0, 1);
        assert_ne!(schedule_root(&swapped), r);
        assert_ne!(schedule_root(&x[..3]), r);
        assert_eq!(root(&[leaf(b"a")]), leaf(b"a"));
        assert_ne!(root(&[]), root(&[leaf(b"")]));
    }
}
