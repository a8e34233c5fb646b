//! The data path's clock, read from the kernel's tick counter.
//!
//! Every time the data path keeps (stick-table last-seen and expiry, the insert-cap
//! window, the route cache, neighbour reports) is CLOCK_MONOTONIC in nanoseconds at tick
//! resolution, the clock userspace reads as `CLOCK_MONOTONIC_COARSE`. Asking for it with
//! `bpf_ktime_get_coarse_ns` costs ~20 ns per packet on the bench's machine, a seventh of
//! a sticky hit; `bpf_jiffies64` costs ~3 ns (`cargo xtask bench`, components). The
//! kernel advances jiffies by one per `TICK_NSEC` of CLOCK_MONOTONIC
//! (`tick_do_update_jiffies64`), so `jiffies × TICK_NSEC + offset` is the same clock
//! within a tick. The loader measures `TICK_NSEC` and the offset once per loaded program
//! ([`calibrate`], from samples a probe program takes) and writes them into the `CLOCK`
//! map; until then, or when calibration fails, the data path falls back to
//! `bpf_ktime_get_coarse_ns` ([`Calibration::tick_ns`] 0). Cilium reads its clock from
//! jiffies the same way (its agent probes the kernel's HZ).
//!
//! Behind `std`, userspace's readings: [`monotonic_ns`] (the data path's clock, for entry
//! ages), [`monotonic_ms`], and [`unix_ms`] (wall-clock milliseconds for timestamps shown
//! to operators and for replication's pick stamps). One place, so that every timestamp and
//! every age in the project means the same thing.

/// Slot of `CLOCK` holding the [`Calibration`].
pub const CLOCK_CALIBRATION: u32 = 0;
/// Slot of `CLOCK` the probe program writes its [`Calibration`]-shaped sample into:
/// `tick_ns` = `bpf_jiffies64()`, `offset_ns` = `bpf_ktime_get_coarse_ns()`.
pub const CLOCK_SAMPLE: u32 = 1;

/// Value of `CLOCK`: the data path's time is `jiffies × tick_ns + offset_ns` (wrapping).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calibration {
    /// The kernel's `TICK_NSEC`; 0 = not calibrated (read `bpf_ktime_get_coarse_ns`).
    pub tick_ns: u64,
    /// CLOCK_MONOTONIC at jiffy 0, modulo 2^64.
    pub offset_ns: u64,
}

impl Calibration {
    /// The time at `jiffies`.
    #[inline(always)]
    pub fn at(&self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_mul(self.tick_ns)
            .wrapping_add(self.offset_ns)
    }
}

/// One sample of the two clocks, taken together by the probe program.
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub jiffies: u64,
    /// `bpf_ktime_get_coarse_ns()`: CLOCK_MONOTONIC at the last tick.
    pub coarse_ns: u64,
}

#[cfg(feature = "std")]
/// HZ values a kernel may be built with (`CONFIG_HZ`), for snapping a measured tick.
const HZ_CHOICES: [u64; 8] = [24, 48, 100, 128, 250, 256, 300, 1000];

/// The calibration from two samples taken right after a tick each (the coarse clock had
/// just moved), at least a few ticks apart. `None` when they do not make sense (no tick
/// between them, or a tick length no kernel has): the data path then keeps the coarse
/// clock.
#[cfg(feature = "std")]
pub fn calibrate(first: Sample, last: Sample) -> Option<Calibration> {
    let ticks = last.jiffies.checked_sub(first.jiffies)?;
    let elapsed = last.coarse_ns.checked_sub(first.coarse_ns)?;
    if ticks < 2 || elapsed == 0 {
        return None;
    }
    // Measured HZ, then the nearest configurable one within 5 %.
    let measured = ticks as f64 * 1e9 / elapsed as f64;
    let hz = HZ_CHOICES.iter().copied().min_by(|a, b| {
        let da = (*a as f64 - measured).abs();
        let db = (*b as f64 - measured).abs();
        da.partial_cmp(&db).unwrap_or(core::cmp::Ordering::Equal)
    })?;
    if (hz as f64 - measured).abs() > hz as f64 * 0.05 {
        return None;
    }
    // The kernel's TICK_NSEC: (NSEC_PER_SEC + HZ/2) / HZ.
    let tick_ns = (1_000_000_000 + hz / 2) / hz;
    Some(Calibration {
        tick_ns,
        offset_ns: last
            .coarse_ns
            .wrapping_sub(last.jiffies.wrapping_mul(tick_ns)),
    })
}

/// CLOCK_MONOTONIC_COARSE in ns: the data path's clock, for entry ages and pinned
/// entries (0 if the clock cannot be read).
#[cfg(feature = "std")]
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC_COARSE)
}

/// CLOCK_MONOTONIC_COARSE in ms.
#[cfg(feature = "std")]
pub fn monotonic_ms() -> u64 {
    monotonic_ns() / 1_000_000
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
#[cfg(feature = "std")]
pub fn unix_ms() -> u64 {
    read(libc::CLOCK_REALTIME) / 1_000_000
}

#[cfg(feature = "std")]
fn read(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 || ts.tv_sec < 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    /// A kernel of `hz` at `jiffies`: CLOCK_MONOTONIC at that tick, with boot 300 s
    /// before jiffies wraps (the kernel's INITIAL_JIFFIES) and a handler latency.
    fn at(hz: u64, jiffies: u64, late_ns: u64) -> Sample {
        let tick = (1_000_000_000 + hz / 2) / hz;
        let initial = (1u64 << 32) - 300 * hz;
        Sample {
            jiffies,
            coarse_ns: 5_000_000_000 + (jiffies - initial) * tick + late_ns,
        }
    }

    #[test]
    fn every_hz_is_found_and_the_clock_agrees_within_a_tick() {
        for hz in HZ_CHOICES {
            let initial = (1u64 << 32) - 300 * hz;
            let first = at(hz, initial + 10_000, 3_000);
            let last = at(hz, initial + 10_000 + hz / 20 + 2, 17_000);
            let cal = calibrate(first, last).unwrap_or_else(|| panic!("HZ {hz}"));
            assert_eq!(cal.tick_ns, (1_000_000_000 + hz / 2) / hz, "HZ {hz}");
            // A day later the jiffies clock still reads the coarse one's time, give or
            // take the handler latency.
            let later = at(hz, initial + 10_000 + 86_400 * hz, 0);
            let diff = cal.at(later.jiffies) as i128 - later.coarse_ns as i128;
            assert!(diff.unsigned_abs() < 20_000, "HZ {hz}: {diff} ns off");
        }
    }

    #[test]
    fn userspace_clocks_move_forward() {
        let (a, b) = (monotonic_ns(), unix_ms());
        assert!(b > 1_600_000_000_000, "{b}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(monotonic_ns() > a);
        assert!(monotonic_ms() >= a / 1_000_000);
    }

    #[test]
    fn nonsense_samples_keep_the_coarse_clock() {
        let a = at(250, 1 << 33, 0);
        assert_eq!(calibrate(a, a), None, "no tick between");
        let b = Sample {
            jiffies: a.jiffies + 1,
            ..a
        };
        assert_eq!(calibrate(a, b), None, "one tick is too few");
        let odd = Sample {
            jiffies: a.jiffies + 10,
            coarse_ns: a.coarse_ns + 10 * 7_000_000,
        };
        assert_eq!(calibrate(a, odd), None, "a 7 ms tick is no kernel's");
        assert_eq!(calibrate(b, a), None, "backwards");
    }
}
