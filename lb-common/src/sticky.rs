//! The stickiness decision: given a client's stick-table entry and the backend it points
//! at, does the client stay there or get a fresh pick? Shared by the data path and the
//! userspace `table lookup`, and unit-tested here. Also the one place a stick key is
//! built ([`stick_key`]): the client address masked to the service's prefix
//! (`stick_on = "src/N"`), so that every address of one client network shares an entry
//! and a Maglev pick.

use crate::{
    Addr, Backend, ServiceInfo, StickKey, StickValue, BACKEND_DRAIN, BACKEND_UP, MAX_REFRESH_NS,
};

/// `addr` with every bit past the first `prefix` cleared (the network's first address);
/// `prefix` 0 = the address unchanged. Words are in network order (see [`Addr`]); an IPv4
/// address (word 0) masked with a prefix up to 32 keeps words 1..3 zero.
#[inline(always)]
pub fn mask_client(addr: &Addr, prefix: u8) -> Addr {
    if prefix == 0 {
        return *addr;
    }
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        let left = prefix as u32;
        let bits = if left <= 32 * i as u32 {
            0
        } else if left - 32 * i as u32 >= 32 {
            32
        } else {
            left - 32 * i as u32
        };
        // bits 0..=32: a shift of 32..=0 of a u64 (never by 64), its low word the mask.
        let mask = (u64::MAX << (32 - bits)) as u32;
        out[i] = addr[i] & mask.to_be();
        i += 1;
    }
    out
}

/// The stick-table key of `client` for `svc`: the service id and the client address
/// masked to the service's [`ServiceInfo::stick_prefix`]. The data path builds every key
/// here (normal path, ICMP errors, fragments), and hashes `key.client` for a Maglev pick,
/// so that a client network agrees on one backend on every node.
#[inline(always)]
pub fn stick_key(svc: &ServiceInfo, client: &Addr) -> StickKey {
    StickKey {
        service_id: svc.id,
        client: mask_client(client, svc.stick_prefix),
    }
}

/// What to do with a client. The discriminant is the reason code the data path's debug
/// log prints (`stickylb run --debug`; the message spells out the codes).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The entry is live and its backend still takes its clients: go there.
    Hit = 0,
    /// No entry: first pick.
    New = 1,
    /// The entry expired: fresh pick, entry overwritten.
    RepickExpired = 2,
    /// The entry's backend is down, removed or now belongs to another service.
    RepickDown = 3,
    /// No entry, and none was added: a TCP packet other than a SYN under
    /// `insert_on = "syn"`. Served by source hash.
    UnpinnedNotSyn = 4,
    /// No entry, and none was added: this CPU's insert cap for the second is used up.
    /// Served by source hash.
    UnpinnedOverCap = 5,
}

/// Whether a TCP packet with these flags opens a connection (SYN without ACK).
#[inline(always)]
pub fn is_connection_start(tcp_flags: u8) -> bool {
    tcp_flags & (crate::TCP_SYN | crate::TCP_ACK) == crate::TCP_SYN
}

/// The insert-cap decision for one CPU: `budget` is that CPU's window for the service.
/// Returns whether a new entry may be added now, and charges it when it may.
#[inline(always)]
pub fn take_insert_budget(budget: &mut crate::InsertBudget, cap: u32, now_ns: u64) -> bool {
    if cap == 0 {
        return true;
    }
    if now_ns.wrapping_sub(budget.window_start_ns) >= crate::INSERT_WINDOW_NS {
        budget.window_start_ns = now_ns;
        budget.inserted = 0;
    }
    if budget.inserted >= cap as u64 {
        return false;
    }
    budget.inserted += 1;
    true
}

/// Judges an existing entry. `backend` is the backend slot the entry points at (None when
/// the id is out of range).
#[inline(always)]
pub fn judge(
    entry: &StickValue,
    backend: Option<&Backend>,
    service_id: u32,
    now_ns: u64,
    expiry_ns: u64,
) -> Verdict {
    if expiry_ns != 0 && now_ns.saturating_sub(entry.last_seen_ns) > expiry_ns {
        return Verdict::RepickExpired;
    }
    match backend {
        Some(b)
            if b.service_id == service_id
                && (b.state == BACKEND_UP || b.state == BACKEND_DRAIN) =>
        {
            Verdict::Hit
        }
        _ => Verdict::RepickDown,
    }
}

/// How stale `last_seen` may get before a hit rewrites it: a quarter of the expiry, at most
/// one second. Active clients therefore never expire, and a hit writes at most once per
/// interval instead of on every packet.
pub const fn refresh_interval(expiry_ns: u64) -> u64 {
    if expiry_ns == 0 || expiry_ns / 4 > MAX_REFRESH_NS {
        MAX_REFRESH_NS
    } else {
        expiry_ns / 4
    }
}

/// Whether a hit must rewrite `last_seen`.
#[inline(always)]
pub fn needs_refresh(entry: &StickValue, now_ns: u64, refresh_ns: u64) -> bool {
    now_ns.saturating_sub(entry.last_seen_ns) >= refresh_ns
}

/// The cluster's keep rule: whether `current` (in the stick table) stays instead of
/// `new` (a peer's entry): the same backend, seen here as late or later. Applied by the
/// agent's sink (`lb_model::cluster::Catalog::keeps`) and by the batch writer
/// (`lb-ebpf/src/stick_apply.rs`) alike.
#[inline(always)]
pub fn stick_keeps(current: &StickValue, new: &StickValue) -> bool {
    current.backend_id == new.backend_id && current.last_seen_ns >= new.last_seen_ns
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::{BACKEND_DOWN, BACKEND_UNUSED};

    #[test]
    fn the_table_keeps_its_entry_only_for_the_same_backend_seen_as_late() {
        let v = |backend_id, last_seen_ns| StickValue {
            backend_id,
            _pad: 0,
            last_seen_ns,
        };
        assert!(stick_keeps(&v(1, 10), &v(1, 9)));
        assert!(stick_keeps(&v(1, 10), &v(1, 10)));
        assert!(!stick_keeps(&v(1, 10), &v(1, 11)));
        assert!(!stick_keeps(&v(1, 10), &v(2, 9)));
    }

    fn backend(state: u8, service_id: u32) -> Backend {
        Backend {
            state,
            service_id,
            ..Default::default()
        }
    }

    fn v4(s: &str) -> Addr {
        let ip: std::net::Ipv4Addr = s.parse().unwrap();
        [u32::from_ne_bytes(ip.octets()), 0, 0, 0]
    }

    fn v6(s: &str) -> Addr {
        let o = s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        core::array::from_fn(|i| u32::from_ne_bytes(o[4 * i..4 * i + 4].try_into().unwrap()))
    }

    #[test]
    fn masks_to_the_network() {
        assert_eq!(mask_client(&v4("10.1.2.3"), 0), v4("10.1.2.3"));
        assert_eq!(mask_client(&v4("10.1.2.3"), 32), v4("10.1.2.3"));
        assert_eq!(mask_client(&v4("10.1.2.3"), 24), v4("10.1.2.0"));
        assert_eq!(mask_client(&v4("10.1.2.255"), 23), v4("10.1.2.0"));
        assert_eq!(mask_client(&v4("10.1.3.255"), 23), v4("10.1.2.0"));
        assert_eq!(mask_client(&v4("255.255.255.255"), 1), v4("128.0.0.0"));
        assert_eq!(mask_client(&v4("10.1.2.3"), 8), v4("10.0.0.0"));
        let a = v6("2001:db8:1:2:aaaa:bbbb:cccc:dddd");
        assert_eq!(mask_client(&a, 128), a);
        assert_eq!(mask_client(&a, 64), v6("2001:db8:1:2::"));
        assert_eq!(mask_client(&a, 48), v6("2001:db8:1::"));
        assert_eq!(mask_client(&a, 56), v6("2001:db8:1::"));
        assert_eq!(mask_client(&a, 60), v6("2001:db8:1::"));
        assert_eq!(mask_client(&a, 63), v6("2001:db8:1:2::"));
        assert_eq!(mask_client(&a, 96), v6("2001:db8:1:2:aaaa:bbbb::"));
        assert_eq!(mask_client(&a, 97), v6("2001:db8:1:2:aaaa:bbbb:8000:0"));
        assert_eq!(mask_client(&a, 1), v6("::"));
        // Against u128 arithmetic for every length.
        let full = u128::from(a_ip(&a));
        for n in 1..=128u8 {
            let want = full & !(u128::MAX.checked_shr(n as u32).unwrap_or(0));
            assert_eq!(
                a_ip(&mask_client(&a, n)),
                std::net::Ipv6Addr::from(want),
                "/{n}"
            );
        }
    }

    fn a_ip(a: &Addr) -> std::net::Ipv6Addr {
        let mut o = [0u8; 16];
        for (i, w) in a.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        o.into()
    }

    #[test]
    fn stick_key_masks_by_the_service_prefix() {
        let mut svc = ServiceInfo {
            id: 7,
            ..Default::default()
        };
        assert_eq!(stick_key(&svc, &v4("10.1.2.3")).client, v4("10.1.2.3"));
        svc.stick_prefix = 24;
        let k = stick_key(&svc, &v4("10.1.2.3"));
        assert_eq!((k.service_id, k.client), (7, v4("10.1.2.0")));
        assert_eq!(k, stick_key(&svc, &v4("10.1.2.200")));
        assert_ne!(k, stick_key(&svc, &v4("10.1.3.3")));
    }

    #[test]
    fn connection_start_is_syn_without_ack() {
        assert!(is_connection_start(crate::TCP_SYN));
        assert!(is_connection_start(crate::TCP_SYN | 0x08)); // SYN+PSH
        assert!(!is_connection_start(crate::TCP_SYN | crate::TCP_ACK));
        assert!(!is_connection_start(crate::TCP_ACK));
        assert!(!is_connection_start(0x04)); // RST
        assert!(!is_connection_start(0));
    }

    #[test]
    fn insert_budget_caps_each_one_second_window() {
        let mut b = crate::InsertBudget::default();
        let t0 = 5_000_000_000;
        assert!((0..3).all(|_| take_insert_budget(&mut b, 3, t0)));
        assert!(!take_insert_budget(&mut b, 3, t0 + 1));
        assert!(!take_insert_budget(
            &mut b,
            3,
            t0 + crate::INSERT_WINDOW_NS - 1
        ));
        // A new window refills it.
        assert!(take_insert_budget(&mut b, 3, t0 + crate::INSERT_WINDOW_NS));
        assert_eq!(b.inserted, 1);
        // Cap 0 = unlimited, never charged.
        let mut u = crate::InsertBudget::default();
        assert!((0..1000).all(|_| take_insert_budget(&mut u, 0, t0)));
        assert_eq!(u.inserted, 0);
    }

    #[test]
    fn verdicts() {
        let e = StickValue {
            backend_id: 1,
            _pad: 0,
            last_seen_ns: 1_000,
        };
        let s = 3;
        assert_eq!(
            judge(&e, Some(&backend(BACKEND_UP, s)), s, 2_000, 10_000),
            Verdict::Hit
        );
        assert_eq!(
            judge(&e, Some(&backend(BACKEND_DRAIN, s)), s, 2_000, 10_000),
            Verdict::Hit
        );
        assert_eq!(
            judge(&e, Some(&backend(BACKEND_DOWN, s)), s, 2_000, 10_000),
            Verdict::RepickDown
        );
        assert_eq!(
            judge(&e, Some(&backend(BACKEND_UNUSED, s)), s, 2_000, 10_000),
            Verdict::RepickDown
        );
        assert_eq!(
            judge(&e, Some(&backend(BACKEND_UP, s + 1)), s, 2_000, 10_000),
            Verdict::RepickDown
        );
        assert_eq!(judge(&e, None, s, 2_000, 10_000), Verdict::RepickDown);
        assert_eq!(
            judge(&e, Some(&backend(BACKEND_UP, s)), s, 11_001, 10_000),
            Verdict::RepickExpired
        );
        assert_eq!(
            judge(&e, Some(&backend(BACKEND_UP, s)), s, u64::MAX, 0),
            Verdict::Hit,
            "0 = never expires"
        );
    }

    #[test]
    fn reason_codes_are_the_ones_the_debug_log_prints() {
        // balancer.rs: "1=new 2=expired 3=backend down 4=unpinned non-SYN 5=unpinned over cap"
        let codes = [
            (Verdict::Hit, 0),
            (Verdict::New, 1),
            (Verdict::RepickExpired, 2),
            (Verdict::RepickDown, 3),
            (Verdict::UnpinnedNotSyn, 4),
            (Verdict::UnpinnedOverCap, 5),
        ];
        for (v, code) in codes {
            assert_eq!(v as u8, code, "{v:?}");
        }
    }

    #[test]
    fn refresh() {
        assert_eq!(refresh_interval(0), MAX_REFRESH_NS);
        assert_eq!(refresh_interval(30 * 60 * 1_000_000_000), MAX_REFRESH_NS);
        assert_eq!(refresh_interval(400_000_000), 100_000_000);
        let e = StickValue {
            backend_id: 0,
            _pad: 0,
            last_seen_ns: 100,
        };
        assert!(!needs_refresh(&e, 150, 100));
        assert!(needs_refresh(&e, 200, 100));
    }
}
