//! Weighted round-robin sequence builder. Userspace only.
//!
//! This module owns the pick order used by the `roundrobin` balancing mode (the
//! equivalent of HAProxy's `balance roundrobin` with weights): userspace builds one
//! period of the order with [`sequence`], writes it into a BPF array, and the data
//! path walks it cyclically.
//!
//! The order is nginx's *smooth* weighted round-robin: at every step each backend
//! gains `current += weight`, the backend with the largest `current` is picked (ties
//! go to the earliest in input order) and the pick pays `current -= total`. Heavy
//! backends are thereby interleaved with light ones (`5,1,1` → `a a b a c a a`)
//! instead of being picked in bursts, and equal weights give exactly the input order.
//!
//! Period length: weights are first divided by their gcd, so one period is
//! `sum(weights) / gcd` picks and contains each backend exactly `weight / gcd` times.
//! If that exceeds `max_len`, weights are scaled down proportionally (rounding down,
//! but never below 1 for a nonzero weight) to the largest scale whose period fits;
//! proportions are then only approximate. Because every nonzero backend keeps at
//! least one pick, the period is never shorter than the number of nonzero backends,
//! even when that exceeds `max_len`.

/// Builds the repeating pick order for `(id, weight)` pairs.
///
/// Returns one period of the smooth weighted round-robin order (see the module
/// docs). Weight-0 entries never appear; empty or all-zero input gives an empty
/// `Vec`. The length is `sum(w) / gcd(w)` if that is `<= max_len`, otherwise at most
/// `max(max_len, number of nonzero backends)` after proportional down-scaling.
///
/// Cost is O(length × backends) time and O(length) memory, so `max_len` should be a
/// real bound (the BPF array size), not `u32::MAX`.
pub fn sequence(backends: &[(u32, u32)], max_len: u32) -> Vec<u32> {
    let live: Vec<(u32, u64)> = backends
        .iter()
        .filter(|&&(_, w)| w > 0)
        .map(|&(id, w)| (id, u64::from(w)))
        .collect();
    if live.is_empty() {
        return Vec::new();
    }
    let weights = reduce(live.iter().map(|&(_, w)| w).collect());
    let cap = u64::from(max_len).max(live.len() as u64);
    let weights = if weights.iter().sum::<u64>() > cap {
        reduce(scale_to_fit(&weights, cap))
    } else {
        weights
    };

    let total: u64 = weights.iter().sum();
    let total_i = total as i64; // total <= max(u32::MAX, len): fits
    let mut current: Vec<i64> = vec![0; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        // Pick the first maximum so ties go to the earliest input entry.
        let (mut best, mut best_val) = (0, i64::MIN);
        for (i, (c, &w)) in current.iter_mut().zip(&weights).enumerate() {
            *c += w as i64;
            if *c > best_val {
                (best, best_val) = (i, *c);
            }
        }
        current[best] -= total_i;
        out.push(live[best].0);
    }
    out
}

/// Divides all weights by their gcd.
fn reduce(mut weights: Vec<u64>) -> Vec<u64> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    if g > 1 {
        for w in &mut weights {
            *w /= g;
        }
    }
    weights
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Scales nonzero weights to `max(1, w * t / sum)` for the largest target `t` whose
/// scaled sum is `<= cap`. Requires `weights.len() <= cap` (then `t = 0` fits).
fn scale_to_fit(weights: &[u64], cap: u64) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let scaled = |t: u64| -> Vec<u64> {
        weights
            .iter()
            .map(|&w| ((u128::from(w) * u128::from(t) / sum) as u64).max(1))
            .collect()
    };
    // The scaled sum is non-decreasing in t; binary search the largest fitting t.
    let (mut lo, mut hi) = (0u64, cap);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if scaled(mid).iter().sum::<u64>() <= cap {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    scaled(lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn counts(seq: &[u32]) -> HashMap<u32, u32> {
        let mut c = HashMap::new();
        for &id in seq {
            *c.entry(id).or_insert(0) += 1;
        }
        c
    }

    const A: u32 = 10;
    const B: u32 = 20;
    const C: u32 = 30;

    #[test]
    fn empty_and_all_zero() {
        assert!(sequence(&[], 100).is_empty());
        assert!(sequence(&[(A, 0), (B, 0)], 100).is_empty());
    }

    #[test]
    fn equal_weights_keep_input_order() {
        assert_eq!(sequence(&[(A, 1), (B, 1), (C, 1)], 100), [A, B, C]);
        assert_eq!(sequence(&[(C, 1), (A, 1), (B, 1)], 100), [C, A, B]);
        // Equal but non-unit weights reduce to the same single round.
        assert_eq!(sequence(&[(B, 7), (C, 7), (A, 7)], 100), [B, C, A]);
    }

    #[test]
    fn classic_smooth_order() {
        // nginx's documented example for weights 5,1,1.
        assert_eq!(
            sequence(&[(A, 5), (B, 1), (C, 1)], 100),
            [A, A, B, A, C, A, A]
        );
        // Ties go to input order: 2,1 vs 1,2.
        assert_eq!(sequence(&[(A, 2), (B, 1)], 100), [A, B, A]);
        assert_eq!(sequence(&[(A, 1), (B, 2)], 100), [B, A, B]);
    }

    #[test]
    fn counts_equal_reduced_weights() {
        let input = [(A, 6), (B, 9), (C, 15), (40, 3)];
        let seq = sequence(&input, 1000);
        assert_eq!(seq.len(), (6 + 9 + 15 + 3) / 3);
        let c = counts(&seq);
        for (id, w) in input {
            assert_eq!(c[&id], w / 3, "id {id}");
        }
        // Smoothness: the heaviest (5 of 11 picks) is interleaved, never three
        // picks in a row (a plain "all of A, then all of B" order would fail this).
        assert!(!seq.windows(3).any(|w| w[0] == w[1] && w[1] == w[2]));
    }

    #[test]
    fn gcd_reduction() {
        let seq = sequence(&[(A, 2), (B, 4)], 100);
        assert_eq!(seq.len(), 3);
        assert_eq!(seq, [B, A, B]);
        assert_eq!(gcd(0, 0), 0);
        assert_eq!(gcd(12, 18), 6);
    }

    #[test]
    fn zero_weights_excluded() {
        let seq = sequence(&[(A, 0), (B, 3), (C, 0), (40, 1)], 100);
        assert_eq!(seq.len(), 4);
        assert!(!seq.contains(&A) && !seq.contains(&C));
        let c = counts(&seq);
        assert_eq!((c[&B], c[&40]), (3, 1));
    }

    #[test]
    fn max_len_cap_keeps_proportions() {
        // Coprime weights: natural period 1000 + 3 + 997 = 2000, capped to 100.
        let input = [(A, 1000), (B, 3), (C, 997)];
        let seq = sequence(&input, 100);
        assert!(seq.len() <= 100 && seq.len() >= 90, "len {}", seq.len());
        let c = counts(&seq);
        assert!(c[&B] >= 1, "tiny weight still present");
        let share = |id: u32| f64::from(c[&id]) / seq.len() as f64;
        assert!((share(A) - 0.5).abs() < 0.02, "A share {}", share(A));
        assert!((share(C) - 0.4985).abs() < 0.02, "C share {}", share(C));

        // Large weights: period would be ~2^33.
        let seq = sequence(&[(A, u32::MAX), (B, u32::MAX - 1), (C, 1)], 4096);
        assert!(seq.len() <= 4096);
        let c = counts(&seq);
        assert!(c[&C] >= 1);
        assert!(c[&A].abs_diff(c[&B]) <= 1, "{c:?}");

        // More nonzero backends than max_len: each appears once.
        let many: Vec<(u32, u32)> = (0..50).map(|i| (i, 1 + i % 5)).collect();
        let seq = sequence(&many, 10);
        assert_eq!(seq.len(), 50);
        assert_eq!(counts(&seq).len(), 50);

        // Natural period exactly at the cap is not scaled.
        assert_eq!(sequence(&[(A, 5), (B, 1), (C, 1)], 7).len(), 7);
        let seq = sequence(&[(A, 5), (B, 1), (C, 1)], 6);
        assert!(seq.len() <= 6 && counts(&seq).len() == 3, "{seq:?}");
    }
}
