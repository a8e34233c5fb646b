//! The hit path's two cheap tests, shared by the data path and the agent that builds
//! their maps:
//!
//! - **The service index** (`SERVICE_INDEX`): an exact table from (VIP, port, protocol,
//!   family) to the service, in an array. The agent places every service with linear
//!   probing under a seed it picks so that each key lies within
//!   [`SERVICE_INDEX_PROBES`] slots of its home slot; the data path hashes the packet's
//!   key once and reads at most that many slots (array reads the verifier inlines),
//!   where a hash map lookup cost 57–85 ns here. Two regions, double-buffered: the
//!   agent writes the inactive one, then flips the head word (`SERVICE_INDEX_HEAD`,
//!   region and seed in one `u32`, so a reader never sees one without the other).
//!   `SERVICES` stays the agent's record (and the side paths' lookup).
//! - **The reply filter** (`REPLY_FILTER`): a bitmap over the addresses of every
//!   `REPLY` key, so that traffic that is neither a service's nor a NAT reply (the host's
//!   own) is decided by one array read instead of two missed hash lookups. A set bit
//!   only means "look in `REVERSE`".
//!
//! Written by hand: a perfect-hash crate builds tables for a fixed key set at compile
//! time or in userspace memory, not a layout a BPF program can probe with a bounded loop.

use crate::{
    hash::fmix32, Addr, Endpoint, ServiceSlot, REPLY_FILTER_WORDS, SERVICE_INDEX_PROBES,
    SERVICE_INDEX_SLOTS,
};

/// The home slot of `key` under `seed` (0..[`SERVICE_INDEX_SLOTS`]).
#[inline(always)]
pub fn home(key: &Endpoint, seed: u32) -> u32 {
    let a = &key.addr;
    let fold = a[0] ^ a[1].rotate_left(8) ^ a[2].rotate_left(16) ^ a[3].rotate_left(24);
    let tail = key.port as u32 | (key.proto as u32) << 16 | (key.family as u32) << 24;
    fmix32(fmix32(seed ^ fold) ^ tail) & (SERVICE_INDEX_SLOTS - 1)
}

/// The head word: which region is active and the seed it was built with.
#[inline(always)]
pub const fn head(region: u32, seed: u32) -> u32 {
    seed << 1 | (region & 1)
}

/// First slot of the active region named by `head`.
#[inline(always)]
pub const fn head_base(head: u32) -> u32 {
    (head & 1) * SERVICE_INDEX_SLOTS
}

/// The seed of the active region named by `head`.
#[inline(always)]
pub const fn head_seed(head: u32) -> u32 {
    head >> 1
}

/// Finds `key` in the region starting at `base`: `slot(i)` reads slot `i` of the map.
/// Stops at an empty slot or after [`SERVICE_INDEX_PROBES`] slots.
#[inline(always)]
pub fn find<'a>(
    key: &Endpoint,
    head: u32,
    slot: impl Fn(u32) -> Option<&'a ServiceSlot>,
) -> Option<&'a ServiceSlot> {
    let base = head_base(head);
    let mut i = home(key, head_seed(head));
    for _ in 0..SERVICE_INDEX_PROBES {
        let s = slot(base + i)?;
        if s.key.family == 0 {
            return None;
        }
        if s.key == *key {
            return Some(s);
        }
        i = (i + 1) & (SERVICE_INDEX_SLOTS - 1);
    }
    None
}

/// The `REPLY_FILTER` bit of a backend address (0..64 × [`REPLY_FILTER_WORDS`]).
#[inline(always)]
pub fn reply_bit(addr: &Addr) -> u32 {
    let fold = addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24);
    fmix32(fold ^ 0x5245_5056) & (REPLY_FILTER_WORDS * 64 - 1)
}

/// Whether the filter words `word(i)` may hold `addr` (`None` from `word`: yes).
#[inline(always)]
pub fn reply_maybe(addr: &Addr, word: impl Fn(u32) -> Option<u64>) -> bool {
    let bit = reply_bit(addr);
    match word(bit >> 6) {
        Some(w) => (w >> (bit & 63)) & 1 != 0,
        None => true,
    }
}

#[cfg(feature = "user")]
pub use build::*;

#[cfg(feature = "user")]
mod build {
    use super::*;
    use crate::ServiceInfo;

    /// Seeds tried before giving up (each try is one pass over at most `MAX_SERVICES`
    /// keys; with the table at most a quarter full the first seed nearly always fits).
    pub const SEED_TRIES: u32 = 4096;

    /// One region of the service index for `services`, and its seed; `None` when no seed
    /// of [`SEED_TRIES`] keeps every key within [`SERVICE_INDEX_PROBES`] slots of its
    /// home (more services than the region holds, or keys crafted to collide).
    pub fn build(services: &[(Endpoint, ServiceInfo)]) -> Option<(u32, Vec<ServiceSlot>)> {
        if services.len() > SERVICE_INDEX_SLOTS as usize {
            return None;
        }
        'seed: for seed in 0..SEED_TRIES {
            let mut slots = vec![ServiceSlot::default(); SERVICE_INDEX_SLOTS as usize];
            for (key, info) in services {
                let mut i = home(key, seed);
                let mut placed = false;
                for _ in 0..SERVICE_INDEX_PROBES {
                    let s = &mut slots[i as usize];
                    if s.key.family == 0 {
                        *s = ServiceSlot {
                            key: *key,
                            info: *info,
                        };
                        placed = true;
                        break;
                    }
                    i = (i + 1) & (SERVICE_INDEX_SLOTS - 1);
                }
                if !placed {
                    continue 'seed;
                }
            }
            return Some((seed, slots));
        }
        None
    }

    /// The reply filter holding `addrs`.
    pub fn reply_filter<'a>(addrs: impl IntoIterator<Item = &'a Addr>) -> Vec<u64> {
        let mut words = vec![0u64; REPLY_FILTER_WORDS as usize];
        for a in addrs {
            let bit = reply_bit(a);
            words[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
        words
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::{FAMILY_V4, FAMILY_V6, MAX_SERVICES, PROTO_TCP, PROTO_UDP};

        fn key(i: u32, port: u16, family: u8) -> Endpoint {
            let addr = if family == FAMILY_V4 {
                [(0x0a00_0001u32 + (i & 3)).to_be(), 0, 0, 0]
            } else {
                [0x20010db8u32.to_be(), 0, 0, (i & 3).to_be()]
            };
            Endpoint {
                addr,
                port: (port.wrapping_add(i as u16)).to_be(),
                proto: if i.is_multiple_of(2) {
                    PROTO_TCP
                } else {
                    PROTO_UDP
                },
                family,
            }
        }

        #[test]
        fn every_service_is_found_and_nothing_else() {
            let mut services = Vec::new();
            for i in 0..MAX_SERVICES {
                let family = if i.is_multiple_of(3) {
                    FAMILY_V6
                } else {
                    FAMILY_V4
                };
                let info = ServiceInfo {
                    id: i,
                    ..Default::default()
                };
                services.push((
                    key(i, if i.is_multiple_of(5) { 0 } else { 80 }, family),
                    info,
                ));
            }
            services.sort_by_key(|(k, _)| *k);
            services.dedup_by_key(|(k, _)| *k);
            let (seed, region) = build(&services).expect("fits");
            for r in 0..2 {
                let mut map = vec![ServiceSlot::default(); 2 * SERVICE_INDEX_SLOTS as usize];
                let base = (r * SERVICE_INDEX_SLOTS) as usize;
                map[base..base + SERVICE_INDEX_SLOTS as usize].copy_from_slice(&region);
                let h = head(r, seed);
                let get = |i: u32| map.get(i as usize);
                for (k, info) in &services {
                    assert_eq!(find(k, h, get).map(|s| s.info), Some(*info), "{k:?}");
                }
                for i in 0..2000u32 {
                    let mut k = key(i, 9000, FAMILY_V4);
                    k.addr[0] = (0xc000_0200u32 + i).to_be();
                    assert!(find(&k, h, get).is_none());
                }
                // The other region (empty) finds nothing.
                assert!(find(&services[0].0, head(1 - r, seed), get).is_none());
            }
        }

        #[test]
        fn colliding_keys_need_another_seed_and_get_one() {
            // Keys all homed near slot 0 under seed 0: more than the probes cover.
            let mut services = Vec::new();
            let mut i = 0u32;
            while services.len() < 8 {
                let k = Endpoint {
                    addr: [i, 0, 0, 0],
                    port: 0,
                    proto: PROTO_TCP,
                    family: FAMILY_V4,
                };
                if home(&k, 0) < 2 {
                    services.push((k, ServiceInfo::default()));
                }
                i += 1;
            }
            let (seed, region) = build(&services).expect("another seed fits");
            assert_ne!(seed, 0);
            for (k, _) in &services {
                assert!(find(k, head(0, seed), |i| region.get(i as usize)).is_some());
            }
        }

        #[test]
        fn too_many_services_are_refused() {
            let services: Vec<_> = (0..=SERVICE_INDEX_SLOTS)
                .map(|i| (key(i, 1, FAMILY_V4), ServiceInfo::default()))
                .collect();
            assert!(build(&services).is_none());
        }

        #[test]
        fn reply_filter_holds_its_addresses() {
            let addrs: Vec<Addr> = (0..3000u32)
                .map(|i| [(0xc612_0000 + i).to_be(), 0, 0, 0])
                .collect();
            let f = reply_filter(&addrs);
            for a in &addrs {
                assert!(reply_maybe(a, |w| f.get(w as usize).copied()));
            }
            let empty = reply_filter(&[]);
            assert!(!reply_maybe(&addrs[0], |w| empty.get(w as usize).copied()));
            // Other addresses mostly miss (3000 of 65 536 bits set: under 5 %).
            let hits = (0..10_000u32)
                .filter(|i| {
                    reply_maybe(&[(0x0a00_0000 + i).to_be(), 0, 0, 0], |w| {
                        f.get(w as usize).copied()
                    })
                })
                .count();
            assert!(hits < 700, "{hits}");
        }
    }
}
