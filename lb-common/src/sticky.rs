//! The stickiness decision: given a client's stick-table entry and the backend it points
//! at, does the client stay there or get a fresh pick? Shared by the data path and the
//! userspace `table lookup`, and unit-tested here.

use crate::{Backend, StickValue, BACKEND_DRAIN, BACKEND_UP, MAX_REFRESH_NS};

/// What to do with a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The entry is live and its backend still takes its clients: go there.
    Hit,
    /// No entry: first pick.
    New,
    /// The entry expired: fresh pick, entry overwritten.
    RepickExpired,
    /// The entry's backend is down, removed or now belongs to another service.
    RepickDown,
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
