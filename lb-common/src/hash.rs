//! The client hash: which Maglev slot a client address maps to. The data path and
//! userspace (`table lookup` predictions, tests) must compute the same value.

use crate::Addr;

/// Seed mixed into every client hash. Fixed, so every balancer with the same backends
/// maps a client to the same backend (as Maglev and Cilium do).
pub const CLIENT_HASH_SEED: u32 = 0x5354_4b59;

#[inline(always)]
pub(crate) fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of a client address (all four words; IPv4 uses word 0 only).
#[inline(always)]
pub fn client_hash(addr: &Addr) -> u32 {
    let mut h = CLIENT_HASH_SEED;
    let mut i = 0;
    while i < 4 {
        h = fmix32(h ^ addr[i]).wrapping_add(i as u32);
        i += 1;
    }
    h
}

/// Entropy of an encapsulated flow: the GUE source port, the client-hash outer source
/// and the IPv6 outer flow label are taken from it, so that backends spread flows over
/// their receive queues and routers over their ECMP paths. One mixing round over the
/// client address and source port (network order, as in the packet): cheaper than
/// [`client_hash`], and it need not agree with anything but itself.
#[inline(always)]
pub fn encap_hash(addr: &Addr, port: u16) -> u32 {
    fmix32(
        CLIENT_HASH_SEED
            ^ addr[0]
            ^ addr[1].rotate_left(8)
            ^ addr[2].rotate_left(16)
            ^ addr[3].rotate_left(24)
            ^ port as u32,
    )
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    #[test]
    fn spreads_consecutive_ipv4_clients_evenly() {
        let buckets = 7u32;
        let mut counts = [0u32; 7];
        for i in 0..70_000u32 {
            let ip = (0x0a00_0000u32 + i).to_be();
            counts[(client_hash(&[ip, 0, 0, 0]) % buckets) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..=10_500).contains(&c), "uneven: {counts:?}");
        }
    }
}
