//! Per-CPU counters: one `ServiceStats` per service id, one `BackendStats` per backend id.
//! Per-CPU slots need no atomics; userspace sums the CPUs. Also the data path's clock
//! and its probe.

use lb_common::{BackendStats, ServiceStats};

use lb_common::clock::{CLOCK_CALIBRATION, CLOCK_SAMPLE};

use crate::maps::{BACKEND_STATS, CLOCK, SERVICE_STATS};

#[inline(always)]
pub fn service(id: u32) -> Option<&'static mut ServiceStats> {
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    SERVICE_STATS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn backend(id: u32) -> Option<&'static mut BackendStats> {
    BACKEND_STATS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

/// The data path's clock: CLOCK_MONOTONIC at tick resolution, as `jiffies × TICK_NSEC +
/// offset` once the loader has calibrated it (`bpf_jiffies64`, ~3 ns, against ~20 ns for
/// `bpf_ktime_get_coarse_ns`, which is the fallback; see `lb_common::clock`). Every use —
/// stick-table last-seen and expiry, the insert-cap window, the route cache — works in
/// milliseconds to minutes. Userspace reads the same clock (`CLOCK_MONOTONIC_COARSE`).
#[inline(always)]
pub fn now_ns() -> u64 {
    if let Some(cal) = CLOCK.get(CLOCK_CALIBRATION) {
        if cal.tick_ns != 0 {
            // SAFETY: helper without arguments.
            return cal.at(unsafe { aya_ebpf::helpers::bpf_jiffies64() });
        }
    }
    coarse_ns()
}

/// `bpf_ktime_get_coarse_ns`: the clock before calibration, and the probe's reference.
#[inline(always)]
pub fn coarse_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}

/// The clock probe (`stickylb_clock`, run by the loader): samples both clocks together
/// into `CLOCK[CLOCK_SAMPLE]`.
#[inline(always)]
pub fn sample_clocks() -> u32 {
    if let Some(slot) = CLOCK.get_ptr_mut(CLOCK_SAMPLE) {
        // SAFETY: map value pointer, valid for this run; only the loader's probe runs
        // write it, one at a time.
        unsafe {
            (*slot).tick_ns = aya_ebpf::helpers::bpf_jiffies64();
            (*slot).offset_ns = coarse_ns();
        }
    }
    aya_ebpf::bindings::xdp_action::XDP_PASS
}
