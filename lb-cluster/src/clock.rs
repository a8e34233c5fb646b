//! The two clocks of replication.
//!
//! - [`mono_ms`]: `CLOCK_MONOTONIC_COARSE` in milliseconds, the data path's clock
//!   (`bpf_ktime_get_coarse_ns`). Last-seen times are kept in it, so a last-seen read
//!   from the stick table and one computed here compare directly. It is node-local: on
//!   the wire only ages (now − last seen) travel.
//! - [`wall_ms`]: `CLOCK_REALTIME` in milliseconds, for pick stamps (see
//!   `store::Stamp`). Stamps only have to be comparable, not exact: a skewed clock makes
//!   a node win or lose ties, never makes nodes disagree on the winner.
//!
//! Both are read from the project's one clock module, `lb_model::clock`.

/// `CLOCK_MONOTONIC_COARSE` in milliseconds.
pub fn mono_ms() -> u64 {
    mono_ns() / 1_000_000
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds (what the data path stores).
pub use lb_model::clock::monotonic_ns as mono_ns;

/// `CLOCK_REALTIME` in milliseconds since the Unix epoch.
pub use lb_model::clock::unix_ms as wall_ms;

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
