//! Stage 3: the stick table. A client with a live entry whose backend still takes its
//! clients goes there (refreshing last-seen at most once per refresh interval); anyone
//! else gets a fresh pick, which overwrites the entry.

use lb_common::{
    sticky::{judge, needs_refresh, Verdict},
    Addr, Backend, ServiceInfo, StickKey, StickValue,
};

use crate::{
    maps::{BACKENDS, STICK},
    pick,
};

/// The backend for `client`: its id, a copy of the slot, and how it was found.
/// `None`: a pick was needed and no backend takes new clients.
#[inline(always)]
pub fn resolve(svc: &ServiceInfo, client: &Addr, now: u64) -> Option<(u32, Backend, Verdict)> {
    let key = StickKey {
        service_id: svc.id,
        client: *client,
    };
    let verdict = match STICK.get_ptr_mut(&key) {
        Some(entry) => {
            // SAFETY: pointer to the map value, valid for this program run; concurrent
            // writers only ever store whole aligned u32/u64 fields.
            let entry = unsafe { &mut *entry };
            let backend_id = entry.backend_id;
            let backend = BACKENDS.get(backend_id);
            let verdict = judge(entry, backend, svc.id, now, svc.expiry_ns);
            if let (Verdict::Hit, Some(b)) = (verdict, backend) {
                if needs_refresh(entry, now, svc.refresh_ns) {
                    entry.last_seen_ns = now;
                }
                return Some((backend_id, *b, Verdict::Hit));
            }
            verdict
        }
        None => Verdict::New,
    };
    let (id, backend) = pick::pick(svc, client)?;
    let value = StickValue {
        backend_id: id,
        _pad: 0,
        last_seen_ns: now,
    };
    // A failed insert (table busy) only costs stickiness for this packet: the next
    // packet picks again, deterministically for Maglev.
    let _ = STICK.insert(&key, &value, 0);
    Some((id, backend, verdict))
}
