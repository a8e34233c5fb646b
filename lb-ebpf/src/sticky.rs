//! Stage 3: the stick table. A client with a live entry whose backend still takes its
//! clients goes there (refreshing last-seen at most once per refresh interval); anyone
//! else gets a fresh pick, which overwrites the entry. Under abuse, a new client may be
//! served without an entry (by source hash): a non-SYN TCP packet when the service adds
//! entries only on SYN, or when this CPU used up the service's insert cap for the second.
//! In a cluster, every entry written here (a new client, a re-pick) is also announced as
//! an event for the agent to replicate; the hit path emits nothing.

use lb_common::{
    event_ring,
    sticky::{is_connection_start, judge, needs_refresh, stick_key, take_insert_budget, Verdict},
    Backend, ServiceInfo, StickEvent, StickKey, StickValue, PROTO_TCP, STICK_EVENT_DOWN,
    STICK_EVENT_EXPIRED, STICK_EVENT_NEW, SVC_SYN_ONLY,
};

use crate::{
    maps::{BACKENDS, INSERT_BUDGET, STICK, STICK_EVENTS_LOST, STICK_EVENT_POS, STICK_EVENT_RING},
    parse::Parsed,
    pick,
};

/// The backend for the packet's client: its id, a copy of the slot, and how it was found.
/// `None`: a pick was needed and no backend takes new clients.
#[inline(always)]
pub fn resolve(svc: &ServiceInfo, p: &Parsed, now: u64) -> Option<(u32, Backend, Verdict)> {
    // The client as the table knows it: its address masked to the service's prefix
    // (`stick_on = "src/N"`); the pick hashes the same, so a client network agrees.
    let key = stick_key(svc, &p.src);
    let client = &key.client;
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
    // An unknown client met mid-connection (a TCP packet other than a SYN) is picked by
    // source hash, so that its packets agree on one backend whether or not it gets an
    // entry. Entries that exist (expired, backend down) are re-picked normally: that
    // does not grow the table.
    let mid_connection = p.proto == PROTO_TCP && !is_connection_start(p.tcp_flags);
    if verdict == Verdict::New {
        let unpinned = if mid_connection && svc.flags & SVC_SYN_ONLY != 0 {
            Some(Verdict::UnpinnedNotSyn)
        } else if !insert_allowed(svc, now) {
            Some(Verdict::UnpinnedOverCap)
        } else {
            None
        };
        if let Some(v) = unpinned {
            let (id, backend) = pick::pick(svc, client, true)?;
            return Some((id, backend, v));
        }
    }
    let (id, backend) = pick::pick(svc, client, verdict == Verdict::New && mid_connection)?;
    let value = StickValue {
        backend_id: id,
        _pad: 0,
        last_seen_ns: now,
    };
    // A failed insert (table busy) only costs stickiness for this packet: the next
    // packet picks again, deterministically for Maglev.
    if STICK.insert(&key, &value, 0).is_ok() && events_on() {
        emit(&key, id, now, p.family, verdict);
    }
    Some((id, backend, verdict))
}

/// The events switch, set by the loader (`GLOBAL_STICK_EVENTS`). In `.rodata`, frozen at
/// load: with 0 (a single node) the verifier drops the emission entirely.
#[unsafe(no_mangle)]
static STICK_EVENTS_ON: u8 = 0;

#[inline(always)]
fn events_on() -> bool {
    // SAFETY: reading a static; volatile so that the loader's value is used.
    unsafe { core::ptr::read_volatile(&STICK_EVENTS_ON) != 0 }
}

/// Slots per CPU of the events ring minus one, set by the loader with the ring's size
/// (`GLOBAL_STICK_EVENT_MASK`; `.rodata`).
#[unsafe(no_mangle)]
static STICK_EVENT_MASK: u32 = lb_common::STICK_EVENT_SLOTS - 1;

/// Announces an entry just written into this CPU's events ring (`lb_common::event_ring`):
/// no lock and no helper but the (inlined) CPU number. A full ring drops the event and
/// counts it.
#[inline(always)]
fn emit(key: &StickKey, backend_id: u32, now: u64, family: u8, verdict: Verdict) {
    let kind = match verdict {
        Verdict::RepickExpired => STICK_EVENT_EXPIRED,
        Verdict::RepickDown => STICK_EVENT_DOWN,
        _ => STICK_EVENT_NEW,
    };
    // SAFETY: reading a static; volatile so that the loader's value is used.
    let mask = unsafe { core::ptr::read_volatile(&STICK_EVENT_MASK) };
    // SAFETY: helper without arguments (inlined by the verifier on x86-64 and arm64).
    let cpu = unsafe { aya_ebpf::helpers::generated::bpf_get_smp_processor_id() };
    let Some(pos) = STICK_EVENT_POS.get_ptr_mut(cpu) else {
        return;
    };
    // SAFETY: this CPU's positions; `head` is written only by this CPU's program (one at a
    // time: XDP runs to completion), `tail` only by the agent, read here once.
    let (head, tail) = unsafe {
        (
            core::ptr::read_volatile(&(*pos).head),
            core::ptr::read_volatile(&(*pos).tail),
        )
    };
    let slot = if event_ring::has_room(head, tail, mask) {
        STICK_EVENT_RING.get_ptr_mut(event_ring::slot_index(cpu, head, mask))
    } else {
        None
    };
    let Some(slot) = slot else {
        if let Some(lost) = STICK_EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
            unsafe { *lost += 1 };
        }
        return;
    };
    let e = StickEvent {
        client: key.client,
        service_id: key.service_id,
        backend_id,
        at_ns: now,
        kind,
        family,
        _pad: 0,
        seq: 0,
    };
    // SAFETY: a slot of this CPU's ring the reader has released (`has_room`), and this
    // CPU's head, which only this CPU's program writes.
    unsafe { event_ring::publish(slot, &raw mut (*pos).head, head, e) };
}

/// Charges one new entry to this CPU's budget for the service (see `insert_cap`).
#[inline(always)]
fn insert_allowed(svc: &ServiceInfo, now: u64) -> bool {
    if svc.insert_cap == 0 {
        return true;
    }
    match INSERT_BUDGET.get_ptr_mut(svc.id) {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        Some(b) => take_insert_budget(unsafe { &mut *b }, svc.insert_cap, now),
        None => true,
    }
}
