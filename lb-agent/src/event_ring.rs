//! Reading the data path's stick-table events (`lb_common::event_ring`: one ring per CPU
//! in two `BPF_F_MMAPABLE` arrays) through `mmap`.
//!
//! aya maps only its own ring buffers, so the two arrays are mapped here with `mmap(2)`
//! on the maps' descriptors (one call each, unmapped on drop). The reader is the rings'
//! only consumer: the agent's replication, or a test or the bench standing in for it.
//! Nothing is woken: the reader polls (the agent every millisecond), which is what lets
//! the data path write without the kernel ring buffer's lock.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{ensure, Context as _, Result};
use aya::maps::{Map, MapData};
use lb_common::{
    event_ring::{is_event, slot_index, EventRingPos},
    StickEvent,
};

/// `BPF_F_MMAPABLE` in a map's flags.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The rings of every CPU, mapped.
pub struct EventRing {
    view: View,
    /// Keep the mappings (and the maps) for as long as the view points into them.
    _slots: Mapping,
    _pos: Mapping,
    _maps: (MapData, MapData),
    /// Slots that did not hold the event their position promised (see `View::drain`).
    skipped: u64,
    /// The CPU the next read starts with (so that a bounded read is fair to every CPU).
    next_cpu: u32,
}

impl EventRing {
    /// Maps the rings of a loaded data path: its `STICK_EVENT_RING` and `STICK_EVENT_POS`.
    pub fn new(ring: MapData, pos: MapData) -> Result<Self> {
        let ri = ring
            .info()
            .context("reading STICK_EVENT_RING's definition")?;
        let pi = pos.info().context("reading STICK_EVENT_POS's definition")?;
        let (ev, ps) = (
            std::mem::size_of::<StickEvent>(),
            std::mem::size_of::<EventRingPos>(),
        );
        ensure!(
            ri.value_size() as usize == ev && pi.value_size() as usize == ps,
            "the events ring's maps hold {}- and {}-byte values; this agent reads {ev} and {ps} \
             (a data path of another version?)",
            ri.value_size(),
            pi.value_size()
        );
        ensure!(
            ri.map_flags() & BPF_F_MMAPABLE != 0 && pi.map_flags() & BPF_F_MMAPABLE != 0,
            "the events ring's maps cannot be mapped (no BPF_F_MMAPABLE): a data path of \
             another version?"
        );
        let cpus = pi.max_entries();
        let slots = ri.max_entries() / cpus.max(1);
        ensure!(
            cpus > 0 && slots.is_power_of_two() && slots * cpus == ri.max_entries(),
            "the events ring has {} slots for {cpus} CPUs; a power of two per CPU is expected",
            ri.max_entries()
        );
        let s = Mapping::new(ring.fd().as_fd(), ri.max_entries() as usize * ev, false)
            .context("mapping STICK_EVENT_RING")?;
        let p = Mapping::new(pos.fd().as_fd(), cpus as usize * ps, true)
            .context("mapping STICK_EVENT_POS")?;
        Ok(EventRing {
            view: View {
                slots: s.ptr.cast(),
                pos: p.ptr.cast(),
                cpus,
                mask: slots - 1,
            },
            _slots: s,
            _pos: p,
            _maps: (ring, pos),
            skipped: 0,
            next_cpu: 0,
        })
    }

    /// Takes the data path's rings out of its loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        Self::take_named(
            ebpf,
            lb_common::MAP_STICK_EVENTS,
            lb_common::MAP_STICK_EVENT_POS,
        )
    }

    /// Takes rings laid out as `lb_common::event_ring` out of any loaded object, by the
    /// names of its slots and positions arrays (the bench's components have their own).
    pub fn take_named(ebpf: &mut aya::Ebpf, ring: &str, pos: &str) -> Result<Self> {
        let mut take = |name: &str| -> Result<MapData> {
            match ebpf
                .take_map(name)
                .with_context(|| format!("map {name} missing from the object"))?
            {
                Map::Array(m) => Ok(m),
                _ => anyhow::bail!("map {name} is not an array"),
            }
        };
        let ring = take(ring)?;
        let pos = take(pos)?;
        Self::new(ring, pos)
    }

    /// Hands at most `max` events to `f` (each CPU's in order, the CPUs in turn) and
    /// releases their slots to the data path; returns how many slots were taken.
    pub fn read(&mut self, max: usize, mut f: impl FnMut(&StickEvent)) -> usize {
        let mut taken = 0;
        for i in 0..self.view.cpus {
            if taken >= max {
                break;
            }
            let cpu = (self.next_cpu + i) % self.view.cpus;
            // SAFETY: the view points into live mappings of the maps it was built from.
            let (n, skipped) = unsafe { self.view.drain(cpu, max - taken, &mut f) };
            taken += n;
            self.skipped += skipped;
        }
        self.next_cpu = (self.next_cpu + 1) % self.view.cpus;
        taken
    }

    /// Hands every event waiting to `f`.
    pub fn read_all(&mut self, f: impl FnMut(&StickEvent)) -> usize {
        self.read(usize::MAX, f)
    }

    /// Events waiting, summed over CPUs.
    pub fn pending(&self) -> u64 {
        (0..self.view.cpus)
            // SAFETY: as in `read`.
            .map(|c| unsafe { self.view.pending(c) })
            .sum()
    }

    /// Slots passed over because they did not hold the expected event (two writers on one
    /// CPU at once; see `lb_common::event_ring`).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Slots per CPU.
    pub fn slots(&self) -> u32 {
        self.view.mask + 1
    }

    /// CPUs the rings are for.
    pub fn cpus(&self) -> u32 {
        self.view.cpus
    }
}

/// The rings as raw memory: `cpus × (mask + 1)` slots and `cpus` positions. Mapped
/// memory in the agent, plain vectors in the unit tests.
struct View {
    slots: NonNull<StickEvent>,
    pos: NonNull<EventRingPos>,
    cpus: u32,
    mask: u32,
}

// SAFETY: the view only points into mappings owned next to it, read and written with
// volatile and atomic accesses (the data path writes them concurrently anyway).
unsafe impl Send for View {}

impl View {
    /// Positions of `cpu`'s ring.
    unsafe fn positions(&self, cpu: u32) -> (&AtomicU64, &AtomicU64) {
        // SAFETY: cpu < cpus (callers), the positions array holds `cpus` entries, and the
        // words are 8-byte aligned (the mapping is page-aligned, entries 128 bytes).
        unsafe {
            let p = self.pos.as_ptr().add(cpu as usize);
            (
                AtomicU64::from_ptr(&raw mut (*p).head),
                AtomicU64::from_ptr(&raw mut (*p).tail),
            )
        }
    }

    unsafe fn pending(&self, cpu: u32) -> u64 {
        // SAFETY: forwarded.
        let (head, tail) = unsafe { self.positions(cpu) };
        head.load(Ordering::Acquire)
            .wrapping_sub(tail.load(Ordering::Relaxed))
    }

    /// Copies out up to `max` of `cpu`'s events, then releases their slots by moving the
    /// tail past them (release order: the copies are done before the data path may reuse
    /// a slot). A slot whose `seq` is not its position's is skipped and counted. Returns
    /// (slots taken, slots skipped).
    unsafe fn drain(&self, cpu: u32, max: usize, f: &mut impl FnMut(&StickEvent)) -> (usize, u64) {
        // SAFETY: forwarded.
        let (head_w, tail_w) = unsafe { self.positions(cpu) };
        // Acquire: the slots below `head` are complete once `head` is seen.
        let head = head_w.load(Ordering::Acquire);
        let mut tail = tail_w.load(Ordering::Relaxed);
        let mut skipped = 0u64;
        // More than a ring's worth unread can only be corruption: keep the newest lap.
        let slots = u64::from(self.mask) + 1;
        if head.wrapping_sub(tail) > slots {
            skipped += head.wrapping_sub(tail) - slots;
            tail = head.wrapping_sub(slots);
        }
        let mut taken = 0;
        while tail != head && taken < max {
            let i = slot_index(cpu, tail, self.mask) as usize;
            // SAFETY: i < cpus × slots; volatile: the data path writes this memory.
            let e = unsafe { std::ptr::read_volatile(self.slots.as_ptr().add(i)) };
            if is_event(&e, tail) {
                f(&e);
            } else {
                skipped += 1;
            }
            tail = tail.wrapping_add(1);
            taken += 1;
        }
        tail_w.store(tail, Ordering::Release);
        (taken, skipped)
    }
}

/// One `mmap(2)` of a map's values, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a shared mapping is plain memory; the owner decides who touches it.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, bytes: usize, writable: bool) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = bytes.div_ceil(page) * page;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new shared mapping of a valid descriptor; the kernel checks the length
        // against the map.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).ok_or_else(|| std::io::Error::other("mmap gave NULL"))?,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::event_ring::{has_room, publish, seq_of};

    /// Rings in plain memory, with a writer doing what `lb-ebpf/src/sticky.rs` `emit`
    /// does.
    struct Fake {
        slots: Vec<StickEvent>,
        pos: Vec<EventRingPos>,
        mask: u32,
        lost: u64,
    }

    impl Fake {
        fn new(cpus: u32, slots: u32) -> Self {
            Fake {
                slots: vec![StickEvent::default(); (cpus * slots) as usize],
                pos: vec![EventRingPos::default(); cpus as usize],
                mask: slots - 1,
                lost: 0,
            }
        }

        fn view(&mut self) -> View {
            View {
                slots: NonNull::new(self.slots.as_mut_ptr()).unwrap(),
                pos: NonNull::new(self.pos.as_mut_ptr()).unwrap(),
                cpus: self.pos.len() as u32,
                mask: self.mask,
            }
        }

        fn emit(&mut self, cpu: u32, backend_id: u32) {
            let p = self.pos[cpu as usize];
            if !has_room(p.head, p.tail, self.mask) {
                self.lost += 1;
                return;
            }
            let e = StickEvent {
                backend_id,
                service_id: cpu,
                ..Default::default()
            };
            let slot = &raw mut self.slots[slot_index(cpu, p.head, self.mask) as usize];
            // SAFETY: both pointers into this fake's vectors.
            unsafe { publish(slot, &raw mut self.pos[cpu as usize].head, p.head, e) };
        }
    }

    fn drain_all(v: &View, cpu: u32) -> (Vec<u32>, u64) {
        let mut got = Vec::new();
        // SAFETY: the view points into the fake's vectors, alive for the call.
        let (_, skipped) = unsafe { v.drain(cpu, usize::MAX, &mut |e| got.push(e.backend_id)) };
        (got, skipped)
    }

    #[test]
    fn events_come_out_in_order_and_free_their_slots() {
        let mut f = Fake::new(2, 4);
        for b in 0..3 {
            f.emit(1, b);
        }
        let v = f.view();
        // SAFETY: as in `drain_all`.
        assert_eq!(unsafe { v.pending(1) }, 3);
        assert_eq!(drain_all(&v, 1), (vec![0, 1, 2], 0));
        assert_eq!(drain_all(&v, 0), (vec![], 0));
        assert_eq!(f.pos[1].tail, 3, "released");
        // Around the ring: slots 3, 0, 1, 2 again.
        for b in 10..14 {
            f.emit(1, b);
        }
        let v = f.view();
        assert_eq!(drain_all(&v, 1), (vec![10, 11, 12, 13], 0));
    }

    #[test]
    fn a_full_ring_drops_until_read_and_never_overwrites() {
        let mut f = Fake::new(1, 4);
        for b in 0..6 {
            f.emit(0, b);
        }
        assert_eq!(f.lost, 2);
        let v = f.view();
        assert_eq!(drain_all(&v, 0), (vec![0, 1, 2, 3], 0));
        f.emit(0, 7);
        assert_eq!(f.lost, 2);
        let v = f.view();
        assert_eq!(drain_all(&v, 0), (vec![7], 0));
    }

    #[test]
    fn a_bounded_read_leaves_the_rest_for_later() {
        let mut f = Fake::new(1, 8);
        for b in 0..5 {
            f.emit(0, b);
        }
        let v = f.view();
        let mut got = Vec::new();
        // SAFETY: as in `drain_all`.
        let (n, _) = unsafe { v.drain(0, 2, &mut |e| got.push(e.backend_id)) };
        assert_eq!((n, got), (2, vec![0, 1]));
        assert_eq!(drain_all(&v, 0), (vec![2, 3, 4], 0));
    }

    #[test]
    fn a_slot_without_its_event_is_skipped_and_counted() {
        let mut f = Fake::new(1, 4);
        for b in 0..3 {
            f.emit(0, b);
        }
        // A second writer on the CPU overwrote slot 1 with its own lap's number.
        f.slots[1].seq = seq_of(5);
        let v = f.view();
        assert_eq!(drain_all(&v, 0), (vec![0, 2], 1));
    }

    #[test]
    fn positions_out_of_range_keep_the_newest_lap() {
        let mut f = Fake::new(1, 4);
        for b in 0..4 {
            f.emit(0, b);
        }
        // Corrupted positions: ten events claimed unread in a ring of four.
        f.pos[0].head = 10;
        let v = f.view();
        let (got, skipped) = drain_all(&v, 0);
        assert_eq!(skipped, 6 + 4, "six beyond the ring, four stale slots");
        assert!(got.is_empty());
        assert_eq!(f.pos[0].tail, 10);
    }
}
