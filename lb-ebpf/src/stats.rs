//! Per-CPU counters: one `ServiceStats` per service id, one `BackendStats` per backend id.
//! Per-CPU slots need no atomics; userspace sums the CPUs. Also the data path's clock.

use lb_common::{BackendStats, ServiceStats};

use crate::maps::{BACKEND_STATS, SERVICE_STATS};

#[inline(always)]
pub fn service(id: u32) -> Option<&'static mut ServiceStats> {
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    SERVICE_STATS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn backend(id: u32) -> Option<&'static mut BackendStats> {
    BACKEND_STATS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

/// The data path's clock: CLOCK_MONOTONIC at tick resolution (`bpf_ktime_get_coarse_ns`,
/// ~20 ns cheaper than the precise one here). Every use — stick-table last-seen and
/// expiry, the insert-cap window, the route cache — works in milliseconds to minutes.
/// Userspace reads the same clock (`CLOCK_MONOTONIC_COARSE`).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}
