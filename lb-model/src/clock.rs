//! The clocks: wall-clock milliseconds for timestamps shown to operators, and the data
//! path's own clock for stick-table ages. One place, so that every timestamp and every age
//! means the same thing.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// CLOCK_MONOTONIC_COARSE in ns: the data path's clock (`bpf_ktime_get_coarse_ns`), for
/// entry ages and pinned entries.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime into a zeroed struct.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clocks_move_forward() {
        let (a, b) = (super::monotonic_ns(), super::unix_ms());
        assert!(b > 1_600_000_000_000, "{b}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(super::monotonic_ns() > a);
    }
}
