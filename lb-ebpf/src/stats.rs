//! Per-CPU counters: one `ServiceStats` per service id, one `BackendStats` per backend id.
//! Per-CPU slots need no atomics; userspace sums the CPUs.

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
