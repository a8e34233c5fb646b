//! The stickiness decision: given a client's stick-table entry and the backend it points
//! at, does the client stay there or get a fresh pick? Shared by the data path and the
//! userspace `table lookup`, and unit-tested here.

use crate::{Backend, StickValue, BACKEND_DRAIN, BACKEND_UP, MAX_REFRESH_NS};

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

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;
    use crate::{BACKEND_DOWN, BACKEND_UNUSED};

    fn backend(state: u8, service_id: u32) -> Backend {
        Backend {
            state,
            service_id,
            ..Default::default()
        }
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
