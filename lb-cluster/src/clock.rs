//! The two clocks of replication.
//!
//! - [`mono_ms`]: `CLOCK_MONOTONIC_COARSE` in milliseconds, the data path's clock
//!   (`bpf_ktime_get_coarse_ns`). Last-seen times are kept in it, so a last-seen read
//!   from the stick table and one computed here compare directly. It is node-local: on
//!   the wire only ages (now − last seen) travel.
//! - [`wall_ms`]: `CLOCK_REALTIME` in milliseconds, for pick stamps (see
//!   `store::Stamp`). Stamps only have to be comparable, not exact: a skewed clock makes
//!   a node win or lose ties, never makes nodes disagree on the winner.

/// `CLOCK_MONOTONIC_COARSE` in milliseconds.
pub fn mono_ms() -> u64 {
    clock(libc::CLOCK_MONOTONIC_COARSE) / 1_000_000
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds (what the data path stores).
pub fn mono_ns() -> u64 {
    clock(libc::CLOCK_MONOTONIC_COARSE)
}

/// `CLOCK_REALTIME` in milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    clock(libc::CLOCK_REALTIME) / 1_000_000
}

fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn clocks_move() {
        let a = super::mono_ms();
        let w = super::wall_ms();
        assert!(a > 0);
        assert!(w > 1_600_000_000_000, "after 2020");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(super::mono_ms() > a);
    }
}
