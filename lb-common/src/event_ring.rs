//! The stick-table events ring: one single-producer ring per CPU in memory the data path
//! and the agent share (two `BPF_F_MMAPABLE` arrays), written without a lock or a helper
//! call and read by the agent through `mmap`.
//!
//! Why not the kernel's BPF ring buffer (what the events used until 2026-12-02): every
//! `bpf_ringbuf_reserve` takes the ring's spin lock, shared by all CPUs, with interrupts
//! off, and `submit` publishes the record with another atomic, so an event cost 60–110 ns
//! on a new-client path of ~590 ns (issue 12's goal is +10 %). A per-CPU ring needs no
//! lock: on one CPU the XDP program runs to completion before the next packet, so each
//! CPU's ring has exactly one writer, and the agent is its only reader. No library
//! provides this for aya (it maps only its own ring buffers), hence this module; the
//! position arithmetic here is shared by both sides and tested on the host.
//!
//! Layout:
//! - `STICK_EVENT_RING`: `cpus × slots` [`StickEvent`]s, CPU `c`'s ring at
//!   `c × slots`; `slots` is a power of two (`STICK_EVENT_SLOTS` by default; the loader
//!   sets the mask, [`crate::GLOBAL_STICK_EVENT_MASK`], and the map's size).
//! - `STICK_EVENT_POS`: one [`EventRingPos`] per CPU: `head`, written by that CPU's
//!   program after the slot (release), and `tail`, written by the agent after it copied
//!   the slots out (release), on cache lines of their own.
//!
//! The writer takes slot `head` only while `head - tail < slots` (else the event is
//! dropped and counted in `STICK_EVENTS_LOST`, as before), so it never overwrites a slot
//! the reader has not released. Each slot also carries `seq = head + 1` (low 32 bits): a
//! reader that finds another value there skips the slot and counts it, which covers the
//! one case a CPU could have two writers at once (a `BPF_PROG_TEST_RUN` of the program
//! interrupted by a packet's softirq on the same CPU) without trusting it.

use crate::maps::StickEvent;

/// Positions of one CPU's ring (value of `STICK_EVENT_POS`): 128 bytes, `head` and
/// `tail` each on a cache line of its own so that the writer and the reader do not share
/// a line they both write.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventRingPos {
    /// Events this CPU's program has written (the next slot is `head & mask`).
    pub head: u64,
    pub _pad0: [u64; 7],
    /// Events the agent has taken out.
    pub tail: u64,
    pub _pad1: [u64; 7],
}

const _: () = assert!(core::mem::size_of::<EventRingPos>() == 128);
const _: () = assert!(core::mem::offset_of!(EventRingPos, tail) == 64);

/// Whether a writer at `head` may take a slot: the reader has released all but fewer
/// than `mask + 1` of the events written.
#[inline(always)]
pub fn has_room(head: u64, tail: u64, mask: u32) -> bool {
    head.wrapping_sub(tail) <= u64::from(mask)
}

/// Index in `STICK_EVENT_RING` of CPU `cpu`'s slot for event number `pos`.
#[inline(always)]
pub fn slot_index(cpu: u32, pos: u64, mask: u32) -> u32 {
    cpu.wrapping_mul(mask.wrapping_add(1))
        .wrapping_add(pos as u32 & mask)
}

/// The `seq` a slot holding event number `pos` carries: its low 32 bits plus one, so a
/// slot never written (0) is not event 0.
#[inline(always)]
pub fn seq_of(pos: u64) -> u32 {
    (pos as u32).wrapping_add(1)
}

/// Whether `e` is event number `pos` (written and complete), not an older lap's or a
/// slot overwritten under the reader.
#[inline(always)]
pub fn is_event(e: &StickEvent, pos: u64) -> bool {
    e.seq == seq_of(pos)
}

/// Writes `e` into `slot` as event number `head` (its `seq` set from `head`) and then
/// publishes it by moving `*head_word` on: what the data path does once it has a slot
/// (`has_room`). Field by field, so that the BPF program builds no 40-byte temporary on its
/// stack.
///
/// The head is written after the slot: the compiler keeps the order (the fence), the BPF
/// JIT emits the stores as written and x86-64 keeps stores in order (TSO), so the plain
/// store is a release there. A weakly ordered CPU would need BPF's store-release (cpu v4),
/// which the generic cpu the data path is built for cannot select.
///
/// # Safety
/// `slot` and `head_word` point into the rings of the calling CPU, which no one else
/// writes.
#[inline(always)]
pub unsafe fn publish(slot: *mut StickEvent, head_word: *mut u64, head: u64, e: StickEvent) {
    // SAFETY: the caller's.
    unsafe {
        (*slot).client = e.client;
        (*slot).service_id = e.service_id;
        (*slot).backend_id = e.backend_id;
        (*slot).at_ns = e.at_ns;
        (*slot).kind = e.kind;
        (*slot).family = e.family;
        (*slot)._pad = 0;
        (*slot).seq = seq_of(head);
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
        core::ptr::write_volatile(head_word, head.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_the_ring_size() {
        let mask = 7;
        assert!(has_room(0, 0, mask));
        assert!(has_room(7, 0, mask));
        assert!(
            !has_room(8, 0, mask),
            "eight events unread fill eight slots"
        );
        assert!(has_room(8, 1, mask));
        // Across the wrap of the 64-bit counters.
        assert!(has_room(3, u64::MAX - 3, mask));
        assert!(!has_room(4, u64::MAX - 3, mask));
    }

    #[test]
    fn each_cpu_has_its_own_slots() {
        let mask = 15;
        assert_eq!(slot_index(0, 0, mask), 0);
        assert_eq!(slot_index(0, 17, mask), 1);
        assert_eq!(slot_index(2, 3, mask), 35);
        assert_eq!(slot_index(2, 16 + 15, mask), 47);
    }

    #[test]
    fn seq_tells_laps_apart() {
        let e = StickEvent {
            seq: seq_of(5),
            ..Default::default()
        };
        assert!(is_event(&e, 5));
        assert!(
            !is_event(&e, 5 + 16),
            "the next lap's event is not there yet"
        );
        assert!(!is_event(&StickEvent::default(), 0), "a slot never written");
        assert!(is_event(
            &StickEvent {
                seq: seq_of(u64::from(u32::MAX)),
                ..Default::default()
            },
            u64::from(u32::MAX)
        ));
    }
}
