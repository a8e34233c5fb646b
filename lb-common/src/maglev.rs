//! Maglev consistent-hashing table builder (weighted). Userspace only.
//!
//! This module owns the construction of the Maglev lookup table that the XDP data
//! path indexes with `client_hash % M` to choose a backend for a new flow. It
//! follows the population algorithm of the Maglev paper (Eisenbud et al., NSDI
//! 2016), extended with weights:
//!
//! - every backend gets a permutation of the `M` slots defined by
//!   `offset = h1(key) % M` and `skip = h2(key) % (M - 1) + 1`; with `M` prime every
//!   permutation visits every slot exactly once;
//! - backends take turns claiming their next preferred still-free slot. With
//!   weights, each round every backend earns `credit += weight` and claims one slot
//!   per `max_weight` of credit, so shares are proportional to weight;
//! - `h1`/`h2` are this module's own stable 64-bit hashes (FNV-1a 64 followed by the
//!   murmur3 `fmix64` finalizer, two different seeds), so a table is identical across
//!   Rust releases, processes and hosts.
//!
//! The table depends only on the multiset of `(key, weight)` pairs: input order and
//! `id` values do not influence which *key* owns which slot (the ids are only what
//! gets written into the slots). Keys are expected to be unique.
//!
//! Table size rule: `M` must be prime and should be well above `100 * N`
//! ([`recommended_size`]); the default is 65537.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Default table size (prime).
pub const DEFAULT_SIZE: u32 = 65537;

/// Largest prime that fits in a `u32`.
const LARGEST_U32_PRIME: u32 = 4_294_967_291;

/// Seeds of the two permutation hashes.
const SEED_OFFSET: u64 = 0x6d61_676c_6576_5f31; // "maglev_1"
const SEED_SKIP: u64 = 0x6d61_676c_6576_5f32; // "maglev_2"

/// Marker for a not-yet-populated slot during construction.
const EMPTY: u32 = u32::MAX;

/// One backend as the builder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Backend id written into the table.
    pub id: u32,
    /// Stable identity used to derive the permutation (e.g. "10.0.0.2:80").
    pub key: String,
    /// Relative weight (> 0; zero-weight backends must be left out by the caller).
    pub weight: u32,
}

/// Builds a table of `size` slots (size must be prime). Empty input → empty table.
///
/// Backends with weight 0 are skipped; if no backend has a nonzero weight the result
/// is empty. Otherwise every one of the `size` slots holds the `id` of some backend
/// with nonzero weight.
///
/// # Panics
///
/// If there is at least one backend with nonzero weight and `size` is not prime.
pub fn build(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    // Canonical order: by key (weight, then id only break ties between duplicate
    // keys, which callers should not produce).
    let mut live: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    if live.is_empty() {
        return Vec::new();
    }
    assert!(
        is_prime(size),
        "maglev table size must be prime, got {size}"
    );
    live.sort_by(|a, b| (a.key.as_str(), a.weight, a.id).cmp(&(b.key.as_str(), b.weight, b.id)));

    let m = u64::from(size);
    let n = live.len();
    // Per backend: current position in its permutation and its step.
    let mut pos: Vec<u64> = Vec::with_capacity(n);
    let mut skip: Vec<u64> = Vec::with_capacity(n);
    for b in &live {
        pos.push(hash64(SEED_OFFSET, b.key.as_bytes()) % m);
        skip.push(hash64(SEED_SKIP, b.key.as_bytes()) % (m - 1) + 1);
    }

    // Weighted turn order. Credit after round r (1-based) is r*w - placed*max_w, and
    // a backend claims one slot whenever credit >= max_w; since w <= max_w that is
    // at most once per round, and its k-th claim (k >= 1) happens in round
    // ceil(k * max_w / w). Within a round backends go in canonical order. Instead of
    // simulating every round for every backend (O(rounds * N), bad with skewed
    // weights) we pop claim events ordered by (round, index) from a heap.
    let max_w = u64::from(live.iter().map(|b| b.weight).max().unwrap_or(1));
    let claim_round = |k: u64, w: u64| -> u64 {
        // ceil(k * max_w / w) without overflow: k <= 2^32, max_w < 2^32.
        let num = k * max_w;
        num / w + u64::from(!num.is_multiple_of(w))
    };
    let mut claimed: Vec<u64> = vec![0; n];
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = live
        .iter()
        .enumerate()
        .map(|(i, b)| Reverse((claim_round(1, u64::from(b.weight)), i)))
        .collect();

    let mut slots: Vec<u32> = vec![EMPTY; size as usize];
    let mut filled: u64 = 0;
    while filled < m {
        let Some(Reverse((_, i))) = heap.pop() else {
            break; // unreachable: every backend always has a next claim
        };
        // Walk the backend's permutation to its next free slot. With M prime the
        // permutation covers all slots, and at least one is free.
        let (mut p, s) = (pos[i], skip[i]);
        while slots[p as usize] != EMPTY {
            p += s;
            if p >= m {
                p -= m;
            }
        }
        slots[p as usize] = i as u32;
        p += s;
        if p >= m {
            p -= m;
        }
        pos[i] = p;
        filled += 1;
        claimed[i] += 1;
        let w = u64::from(live[i].weight);
        heap.push(Reverse((claim_round(claimed[i] + 1, w), i)));
    }

    slots.into_iter().map(|i| live[i as usize].id).collect()
}

/// Deterministic primality test for any `u32` (trial division by 6k ± 1).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d: u64 = 5;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// Smallest prime `>= n`.
///
/// # Panics
///
/// If `n` is larger than the largest `u32` prime (4 294 967 291).
pub fn next_prime_at_least(n: u32) -> u32 {
    assert!(n <= LARGEST_U32_PRIME, "no u32 prime is >= {n}");
    let mut c = n.max(2);
    while !is_prime(c) {
        c += 1;
    }
    c
}

/// Recommended table size for `n_backends`: the smallest prime
/// `>= max(65537, 101 * n_backends)`, so that `M > 100 * N` (the paper's rule for
/// keeping every backend's share within about 1% of ideal). Saturates at the largest
/// `u32` prime.
pub fn recommended_size(n_backends: usize) -> u32 {
    let want = (n_backends as u64)
        .saturating_mul(101)
        .max(u64::from(DEFAULT_SIZE))
        .min(u64::from(LARGEST_U32_PRIME));
    next_prime_at_least(want as u32)
}

/// Stable seeded 64-bit hash: FNV-1a 64 over the seed's little-endian bytes then
/// `data`, finished with murmur3's `fmix64` for avalanche.
fn hash64(seed: u64, data: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for &b in seed.to_le_bytes().iter().chain(data) {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

/// murmur3 64-bit finalizer.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const M: u32 = DEFAULT_SIZE;

    fn key(i: u32) -> String {
        format!("10.{}.{}.{}:80", i >> 16 & 0xff, i >> 8 & 0xff, i & 0xff)
    }

    fn equal(n: u32) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                id: i,
                key: key(i),
                weight: 1,
            })
            .collect()
    }

    fn counts(table: &[u32]) -> HashMap<u32, u64> {
        let mut c = HashMap::new();
        for &id in table {
            *c.entry(id).or_insert(0) += 1;
        }
        c
    }

    /// Fraction of slots whose owner differs.
    fn changed(old: &[u32], new: &[u32]) -> f64 {
        let n = old.iter().zip(new).filter(|(a, b)| a != b).count();
        n as f64 / old.len() as f64
    }

    /// Deterministic Fisher–Yates with a small LCG (no rand dependency).
    fn shuffle<T>(v: &mut [T], mut seed: u64) {
        for i in (1..v.len()).rev() {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let j = ((seed >> 33) % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }

    #[test]
    fn hash_is_stable() {
        // Pinned values (cross-checked with an independent Python FNV-1a+fmix64):
        // a change here changes every deployed table.
        assert_eq!(fmix64(0), 0);
        assert_ne!(hash64(SEED_OFFSET, b"a"), hash64(SEED_SKIP, b"a"));
        assert_eq!(hash64(SEED_OFFSET, b"10.0.0.1:80"), 0x559c_9c1f_9d94_9d78);
        assert_eq!(hash64(SEED_SKIP, b"10.0.0.1:80"), 0x140c_3e20_93c9_5fad);
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..50).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            small,
            [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]
        );
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
        assert!(!is_prime(65535));
        assert!(is_prime(100_003));
        assert!(!is_prime(100_001)); // 11 * 9091
        assert!(!is_prime(3 * 65521));
        assert!(is_prime(65521));
        assert!(!is_prime(4_294_967_295));
        assert!(is_prime(LARGEST_U32_PRIME));
        assert!(!is_prime(65537 * 3));
        assert!(!is_prime(4_294_836_225)); // 65535^2
        assert_eq!(next_prime_at_least(0), 2);
        assert_eq!(next_prime_at_least(2), 2);
        assert_eq!(next_prime_at_least(14), 17);
        assert_eq!(next_prime_at_least(65536), 65537);
        assert_eq!(next_prime_at_least(65537), 65537);
        assert_eq!(next_prime_at_least(65538), 65539);
        assert_eq!(next_prime_at_least(100_000), 100_003);
        assert_eq!(next_prime_at_least(4_294_967_280), LARGEST_U32_PRIME);
        assert_eq!(recommended_size(0), 65537);
        assert_eq!(recommended_size(3), 65537);
        assert_eq!(recommended_size(648), 65537); // 101 * 648 = 65448
        assert_eq!(recommended_size(649), 65551); // 101 * 649 = 65549 → next prime
        assert_eq!(recommended_size(1000), 101_009);
        assert!(recommended_size(1000) > 100 * 1000);
        assert_eq!(recommended_size(usize::MAX), LARGEST_U32_PRIME);
    }

    #[test]
    fn empty_input_empty_table() {
        assert!(build(&[], M).is_empty());
        let zero = vec![MaglevBackend {
            id: 1,
            key: "x".into(),
            weight: 0,
        }];
        assert!(build(&zero, M).is_empty());
    }

    #[test]
    #[should_panic(expected = "prime")]
    fn non_prime_size_panics() {
        build(&equal(3), 65536);
    }

    #[test]
    fn all_slots_filled_with_given_ids() {
        let mut bs = equal(7);
        for (i, b) in bs.iter_mut().enumerate() {
            b.id = 1000 + 3 * i as u32;
        }
        bs.push(MaglevBackend {
            id: 4242,
            key: "zero".into(),
            weight: 0,
        });
        let t = build(&bs, M);
        assert_eq!(t.len(), M as usize);
        let c = counts(&t);
        let ids: Vec<u32> = (0..7).map(|i| 1000 + 3 * i).collect();
        for id in c.keys() {
            assert!(ids.contains(id), "unexpected id {id}");
        }
        assert_eq!(c.len(), 7, "every nonzero backend owns slots");
        assert!(!c.contains_key(&4242), "weight-0 backend must not appear");
        // Tiny table: still full.
        let t = build(&equal(5), 7);
        assert_eq!(t.len(), 7);
        assert!(t.iter().all(|&id| id < 5));
        // A single backend owns everything.
        assert!(build(&equal(1), M).iter().all(|&id| id == 0));
    }

    #[test]
    fn equal_weights_balanced() {
        for n in [3u32, 10, 100] {
            let t = build(&equal(n), M);
            let c = counts(&t);
            let ideal = f64::from(M) / f64::from(n);
            for id in 0..n {
                let got = c.get(&id).copied().unwrap_or(0) as f64;
                let dev = (got - ideal).abs() / ideal;
                assert!(
                    dev <= 0.01,
                    "n={n} id={id}: {got} slots vs ideal {ideal:.1} (dev {dev:.4})"
                );
            }
        }
    }

    #[test]
    fn weighted_balanced() {
        for weights in [vec![1u32, 2, 3, 4], vec![1, 10], vec![7, 1000, 3, 50, 1]] {
            let bs: Vec<MaglevBackend> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| MaglevBackend {
                    id: i as u32,
                    key: key(i as u32),
                    weight: w,
                })
                .collect();
            let t = build(&bs, M);
            assert_eq!(t.len(), M as usize);
            let c = counts(&t);
            let sum: u32 = weights.iter().sum();
            for (i, &w) in weights.iter().enumerate() {
                let ideal = f64::from(M) * f64::from(w) / f64::from(sum);
                let got = c.get(&(i as u32)).copied().unwrap_or(0) as f64;
                let dev = (got - ideal).abs() / ideal;
                // 1% of the ideal share, but a share of a few dozen slots cannot be
                // closer than the one slot of rounding (the [.., 1] case: ~61.8).
                assert!(
                    dev <= 0.01 || (got - ideal).abs() < 1.0,
                    "weights {weights:?} id={i}: {got} vs ideal {ideal:.1} (dev {dev:.4})"
                );
            }
        }
    }

    /// Owner-change fractions when backend `r` is removed from `bs`:
    /// (all slots, slots not owned by `r` before).
    fn removal_fractions(bs: &[MaglevBackend], r: usize) -> (f64, f64) {
        let old = build(bs, M);
        let removed = bs[r].id;
        let mut less = bs.to_vec();
        less.remove(r);
        let new = build(&less, M);
        assert!(new.iter().all(|&id| id != removed));
        let total = changed(&old, &new);
        let (mut kept, mut moved) = (0u64, 0u64);
        for (a, b) in old.iter().zip(&new) {
            if *a != removed {
                kept += 1;
                moved += u64::from(a != b);
            }
        }
        (total, moved as f64 / kept as f64)
    }

    #[test]
    fn removal_is_minimally_disruptive() {
        for n in [10u32, 100] {
            let bs = equal(n);
            let mut worst_collateral: f64 = 0.0;
            let mut worst_total: f64 = 0.0;
            for r in [0usize, (n / 2) as usize, (n - 1) as usize] {
                let (total, collateral) = removal_fractions(&bs, r);
                worst_collateral = worst_collateral.max(collateral);
                worst_total = worst_total.max(total);
                // The removed backend's own 1/N of the table must move; the paper
                // (fig. 8/§3.4) shows the collateral churn of other slots staying
                // at a few percent at most. We bound it by 1/N: at most as many
                // extra moves as the unavoidable ones.
                let bound = 1.0 / f64::from(n);
                assert!(
                    collateral <= bound,
                    "n={n} remove #{r}: {collateral:.4} of surviving slots moved (bound {bound:.4})"
                );
                // Total remapped ≈ 1/N (unavoidable) + collateral.
                let ideal = 1.0 / f64::from(n);
                assert!(
                    total >= ideal * 0.99 && total <= 2.0 * ideal,
                    "n={n} remove #{r}: total moved {total:.4}, ideal {ideal:.4}"
                );
            }
            println!(
                "n={n}: removal worst total moved {worst_total:.4}, worst collateral {worst_collateral:.4}"
            );
        }
    }

    #[test]
    fn addition_is_minimally_disruptive() {
        for n in [10u32, 100] {
            let old_bs = equal(n);
            let new_bs = equal(n + 1);
            let old = build(&old_bs, M);
            let new = build(&new_bs, M);
            let total = changed(&old, &new);
            let to_new = new.iter().filter(|&&id| id == n).count() as f64 / f64::from(M);
            let collateral = total - to_new;
            let ideal = 1.0 / f64::from(n + 1);
            println!(
                "n={n}+1: addition total moved {total:.4} (ideal {ideal:.4}), collateral {collateral:.4}"
            );
            assert!(
                (to_new - ideal).abs() / ideal <= 0.01,
                "new backend got {to_new:.4}, ideal {ideal:.4}"
            );
            assert!(
                collateral <= ideal,
                "n={n}+1: collateral {collateral:.4} > {ideal:.4}"
            );
        }
    }

    #[test]
    fn order_and_id_independent() {
        let bs: Vec<MaglevBackend> = (0..50u32)
            .map(|i| MaglevBackend {
                id: i,
                key: key(i * 7 + 3),
                weight: 1 + i % 4,
            })
            .collect();
        let base = build(&bs, M);
        for seed in 1..4u64 {
            let mut shuffled = bs.clone();
            shuffle(&mut shuffled, seed);
            assert_ne!(shuffled, bs);
            assert_eq!(build(&shuffled, M), base, "shuffle seed {seed}");
        }
        // Renumbering ids only renames slot contents: same key owns same slots.
        let mut renum = bs.clone();
        shuffle(&mut renum, 99);
        let key_of: HashMap<u32, String> = bs.iter().map(|b| (b.id, b.key.clone())).collect();
        for (i, b) in renum.iter_mut().enumerate() {
            b.id = 500 - i as u32;
        }
        let key_of_new: HashMap<u32, String> =
            renum.iter().map(|b| (b.id, b.key.clone())).collect();
        let t = build(&renum, M);
        for (a, b) in base.iter().zip(&t) {
            assert_eq!(key_of[a], key_of_new[b]);
        }
    }

    #[test]
    fn large_build_is_fast() {
        let bs = equal(1000);
        for size in [65537u32, 100_003] {
            let start = std::time::Instant::now();
            let t = build(&bs, size);
            let took = start.elapsed();
            println!("n=1000 M={size}: built in {took:?}");
            assert_eq!(t.len(), size as usize);
            assert_eq!(counts(&t).len(), 1000);
            // Generous bound so debug builds pass; release is ~ms.
            assert!(took.as_secs() < 5, "took {took:?}");
        }
    }
}
