//! Stage 4: pick a backend for a new client (or one whose entry is stale), by the
//! service's scheduler: weighted round-robin (a shared cursor walking the sequence built
//! by userspace) or Maglev (the client hash indexes the Maglev table). Tables hold only
//! backends that take new clients; a slot whose backend stopped being `up` since the
//! table was built is skipped by probing the next few slots.

use lb_common::{
    hash::client_hash, Addr, Backend, ServiceInfo, BACKEND_UP, PICK_PROBES, RING_REGION,
    SCHED_MAGLEV,
};

use crate::maps::{BACKENDS, RING, RR_CURSOR};

///
/// `by_hash`: index the table by the client hash even under round-robin — for clients
/// served without an entry, and for unknown clients met mid-connection, so that their
/// packets all agree on one backend without state.
#[inline(always)]
pub fn pick(svc: &ServiceInfo, client: &Addr, by_hash: bool) -> Option<(u32, Backend)> {
    let len = svc.ring_len;
    if len == 0 || len > RING_REGION {
        return None;
    }
    let start = if by_hash || svc.scheduler == SCHED_MAGLEV {
        client_hash(client)
    } else {
        round_robin_next(svc.id)?
    };
    let mut slot = start % len;
    for _ in 0..PICK_PROBES {
        let id = *RING.get(svc.ring_offset + slot)?;
        if let Some(b) = BACKENDS.get(id) {
            if b.state == BACKEND_UP && b.service_id == svc.id {
                return Some((id, *b));
            }
        }
        slot += 1;
        if slot >= len {
            slot = 0;
        }
    }
    None
}

/// The service's next round-robin position: one cursor per service shared by all CPUs,
/// read and advanced without an atomic (the BPF target offers no atomic add in `core`).
/// Two CPUs racing may read the same position, which only means two new clients share a
/// turn; the order stays exact when new clients arrive one at a time.
#[inline(always)]
fn round_robin_next(service_id: u32) -> Option<u32> {
    let cursor = RR_CURSOR.get_ptr_mut(service_id)?;
    // SAFETY: map value pointer, valid and aligned for the program run.
    unsafe {
        let pos = *cursor;
        *cursor = pos.wrapping_add(1);
        Some(pos as u32)
    }
}
