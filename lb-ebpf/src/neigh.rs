//! Side stage of `forward`: report a next hop the FIB could not resolve. XDP traffic
//! never makes the kernel resolve or refresh a neighbour, so the data path tells the
//! agent, which creates a managed neighbour entry for it (`lb-userspace/src/neigh.rs`).
//!
//! On `BPF_FIB_LKUP_RET_NO_NEIGH` the kernel has already filled in the egress interface
//! and replaced the destination by the route's gateway (if any), so the lookup result
//! names the next hop exactly. Reports go through the `NEIGH_EVENTS` ring buffer, at most
//! one per `NEIGH_REPORT_NS` per next hop (`NEIGH_SEEN`, an LRU of last report times),
//! so a flood of packets to an unresolved next hop costs a map lookup each and makes a
//! handful of events. Only misses run this code; the hit path never does.

use lb_common::{NeighKey, NeighMiss, ServiceStats, NEIGH_REPORT_NS};

use crate::{
    maps::{NEIGH_EVENTS, NEIGH_SEEN},
    stats,
};

/// Reports `hop` (unless it was reported less than `NEIGH_REPORT_NS` ago). `why` is one
/// of the `MISS_*` constants. A full ring is counted (`neigh_report_lost`) and not
/// remembered, so the next miss tries again.
#[inline(always)]
pub fn report(st: &mut ServiceStats, service_id: u32, hop: &NeighKey, why: u8) {
    let now = stats::now_ns();
    // SAFETY: plain value read from the map.
    if let Some(last) = unsafe { NEIGH_SEEN.get(hop) } {
        if now.wrapping_sub(*last) < NEIGH_REPORT_NS {
            return;
        }
    }
    let Some(mut entry) = NEIGH_EVENTS.reserve::<NeighMiss>(0) else {
        st.neigh_report_lost += 1;
        return;
    };
    entry.write(NeighMiss {
        hop: *hop,
        at_ns: now,
        service_id,
        why,
        _pad: [0; 3],
    });
    entry.submit(0);
    let _ = NEIGH_SEEN.insert(hop, &now, 0);
}
