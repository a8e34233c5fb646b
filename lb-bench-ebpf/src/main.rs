//! XDP programs of the benchmark (`stickylb-bench`), built for the BPF target by
//! `bench/build.rs`; on the host this crate compiles to an empty binary.
//!
//! - `bench_wrapper` makes `BPF_PROG_TEST_RUN` with `repeat` measure the same packet
//!   every time: the kernel runs the program `repeat` times on one buffer and never
//!   restores it, so a NAT rewrite would change every later run. On each run the wrapper
//!   sets the packet back to the fixture (start with `bpf_xdp_adjust_head` when the program
//!   under test moves it, length with `bpf_xdp_adjust_tail`, bytes copied
//!   from the `FIXTURE` array in a bounded loop), optionally writes a varying 32-bit
//!   value (a client address) into it, then tail-calls the program under test in slot 0
//!   of `TARGET`. A failed tail call returns `XDP_ABORTED`, which the bench rejects.
//! - `bench_pass` (returns `XDP_PASS`) and `bench_macswap` (parses Ethernet and the IP
//!   header, swaps the MACs, `XDP_TX`) are the baselines.
//! - `bench_ktime`, `bench_ktime_coarse`, `bench_hash`, `bench_lru` and `bench_fib` each do one of the costly
//!   operations of stickylb's hit path, to show where its time goes.
//! - Issue 15's directions, measured as components before anything is rebuilt around
//!   them: `bench_jiffies` (a cheaper clock than the coarse one?), `bench_lru_insert_nx`
//!   (a new client inserted with `BPF_NOEXIST` instead of `BPF_ANY`), and
//!   `bench_lru_scale16` / `bench_lru_scale8` (a lookup over 65 536 clients in rotation in
//!   a table of a million entries, with today's 16-byte stick value and with a packed
//!   8-byte one; the bench sizes and fills both).
//! - Issue 12's last goal, the stick-table events' cost: `bench_event_ringbuf` (a 40-byte
//!   event reserved and submitted into the kernel's BPF ring buffer, as the data path did
//!   until 2026-12-02) and `bench_event_percpu` (the same event into this CPU's ring of
//!   `lb_common::event_ring`, as it does now); the bench drains both from the other CPU
//!   every millisecond, as the agent does.
//! - `bench_gen` generates traffic (run with `BPF_PROG_TEST_RUN` in live-frames mode: its
//!   `XDP_TX` frames leave through a real veth) from up to 65 536 client addresses, and
//!   `bench_count`, on every backend, counts (and drops) what arrives.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::BPF_F_MMAPABLE,
        bindings::{bpf_fib_lookup, xdp_action},
        helpers::{
            self, bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns,
            generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
        },
        macros::{map, xdp},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
        programs::XdpContext,
        EbpfContext as _,
    };
    use lb_common::{
        event_ring::{self, EventRingPos},
        StickEvent,
    };

    /// Largest fixture, in bytes.
    const FIXTURE_MAX: usize = 256;

    /// The packet every run starts from. Layout shared with `bench/src/wrapper.rs`.
    #[repr(C)]
    pub struct Fixture {
        /// Length in bytes, 14..=256.
        len: u32,
        /// Byte offset of the 32-bit field to vary per run; 0 = none.
        vary_offset: u32,
        /// The field is `vary_base + (run counter & vary_mask)`, written big-endian.
        vary_base: u32,
        vary_mask: u32,
        /// Bytes the program under test moves the start of the packet by (positive:
        /// it prepends headers, as encapsulation does; negative: it strips them, as
        /// decapsulation does); 0 = it does not. The wrapper moves it back.
        head: i32,
        /// The packet, then slack for the last word's masked offset.
        data: [u8; FIXTURE_MAX + 8],
    }

    #[map]
    static FIXTURE: Array<Fixture> = Array::with_max_entries(1, 0);

    /// Per-CPU run counter for the varying field.
    #[map]
    static COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

    /// Slot 0: the program under test.
    #[map]
    static TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

    #[xdp]
    pub fn bench_wrapper(ctx: XdpContext) -> u32 {
        if reset(&ctx).is_none() {
            return xdp_action::XDP_ABORTED;
        }
        // SAFETY: tail call into a program of the same type; returns only on failure.
        unsafe { TARGET.tail_call(&ctx, 0) };
        xdp_action::XDP_ABORTED
    }

    /// Rewrites the packet to the fixture; `None` if that was not possible.
    #[inline(always)]
    fn reset(ctx: &XdpContext) -> Option<()> {
        let fx = FIXTURE.get_ptr(0)?;
        // SAFETY: map value pointer, valid for this run.
        let fx = unsafe { &*fx };
        let len = fx.len as usize;
        if !(14..=FIXTURE_MAX).contains(&len) {
            return None;
        }
        // Undo the previous run's head move first (the kernel keeps the packet as the
        // last run left it).
        let head = fx.head;
        if head != 0 && (ctx.data_end() - ctx.data()) as i64 == len as i64 + head as i64 {
            // SAFETY: helper on the program's own context.
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, head) } != 0 {
                return None;
            }
        }
        if ctx.data_end() - ctx.data() != len {
            let delta = len as i32 - (ctx.data_end() - ctx.data()) as i32;
            // SAFETY: helper on the program's own context.
            if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
                return None;
            }
        }
        let data = ctx.data();
        let end = ctx.data_end();
        if end - data != len {
            return None;
        }
        let src = fx.data.as_ptr();
        // Whole 8-byte words, then one more word ending at the last byte (overlapping
        // the previous one). Volatile stores keep the compiler from turning this into a
        // `memcpy` call, which BPF does not have.
        let mut off = 0;
        for _ in 0..FIXTURE_MAX / 8 {
            if off + 8 > len {
                break;
            }
            let p = data + off;
            if p + 8 > end {
                return None;
            }
            // SAFETY: packet bounds checked above; `off + 8 <= len <= FIXTURE_MAX`.
            unsafe {
                let word = core::ptr::read_unaligned(src.add(off) as *const u64);
                core::ptr::write_volatile(p as *mut u64, word);
            }
            off += 8;
        }
        if off < len {
            // `len - 8` (len >= 14), masked so that the verifier sees its bounds.
            let last = (len - 8) & (FIXTURE_MAX - 1);
            let p = data + last;
            if p + 8 > end {
                return None;
            }
            // SAFETY: packet bounds checked above; `last + 8 <= FIXTURE_MAX + 7`, within
            // the fixture buffer's slack.
            unsafe {
                let word = core::ptr::read_unaligned(src.add(last) as *const u64);
                core::ptr::write_volatile(p as *mut u64, word);
            }
        }
        let at = fx.vary_offset as usize;
        if at != 0 {
            let counter = COUNTER.get_ptr_mut(0)?;
            // SAFETY: per-CPU map value, this CPU's copy, valid for this run.
            let n = unsafe {
                let n = (*counter).wrapping_add(1);
                *counter = n;
                n
            };
            let value = fx.vary_base.wrapping_add(n & fx.vary_mask).to_be();
            let at = at & (FIXTURE_MAX - 1);
            if data + at + 4 > end {
                return None;
            }
            // SAFETY: bounds checked against the packet end just above.
            unsafe { core::ptr::write_unaligned((data + at) as *mut u32, value) };
        }
        Some(())
    }

    #[xdp]
    pub fn bench_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    const ETH_HLEN: usize = 14;
    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86DD;

    /// Parses Ethernet and the IPv4 / IPv6 header, swaps the MACs and bounces the packet.
    #[xdp]
    pub fn bench_macswap(ctx: XdpContext) -> u32 {
        let data = ctx.data();
        let end = ctx.data_end();
        if data + ETH_HLEN > end {
            return xdp_action::XDP_PASS;
        }
        let eth = data as *mut u8;
        // SAFETY: bounds checked against data_end above and below.
        unsafe {
            let proto = u16::from_be(*(eth.add(12) as *const u16));
            let ip = data + ETH_HLEN;
            match proto {
                ETH_P_IP => {
                    if ip + 20 > end || *(ip as *const u8) >> 4 != 4 {
                        return xdp_action::XDP_PASS;
                    }
                }
                ETH_P_IPV6 => {
                    if ip + 40 > end || *(ip as *const u8) >> 4 != 6 {
                        return xdp_action::XDP_PASS;
                    }
                }
                _ => return xdp_action::XDP_PASS,
            }
            let dst = eth as *mut [u8; 6];
            let src = eth.add(6) as *mut [u8; 6];
            let tmp = *dst;
            *dst = *src;
            *src = tmp;
        }
        xdp_action::XDP_TX
    }

    // Components, run without the wrapper (they leave the packet alone). Each answers
    // `XDP_TX` when its operation succeeded and `XDP_DROP` otherwise, so the bench can
    // tell that it measured the successful path.

    /// Keyed by a 24-byte endpoint (the size of stickylb's service key): IPv4 destination.
    #[map]
    static HASH: HashMap<[u32; 6], u32> = HashMap::with_max_entries(1024, 0);

    /// Keyed and valued like stickylb's stick table: (0, IPv4 source) → 16 bytes.
    #[map]
    static LRU: LruHashMap<[u32; 5], [u64; 2]> = LruHashMap::with_max_entries(1024, 0);

    /// Like stickylb's per-service counters: 16 per-CPU slots of 64 bytes.
    #[map]
    static PERCPU: PerCpuArray<[u64; 8]> = PerCpuArray::with_max_entries(16, 0);

    const AF_INET: u8 = 2;

    /// (source, destination) of an untagged IPv4 frame, as the 32-bit words in memory.
    #[inline(always)]
    fn ipv4(ctx: &XdpContext) -> Option<(u32, u32)> {
        let data = ctx.data();
        if data + ETH_HLEN + 20 > ctx.data_end() {
            return None;
        }
        // SAFETY: bounds checked above.
        unsafe {
            if u16::from_be(*((data + 12) as *const u16)) != ETH_P_IP {
                return None;
            }
            Some((
                core::ptr::read_unaligned((data + ETH_HLEN + 12) as *const u32),
                core::ptr::read_unaligned((data + ETH_HLEN + 16) as *const u32),
            ))
        }
    }

    #[inline(always)]
    fn verdict(ok: bool) -> u32 {
        if ok {
            xdp_action::XDP_TX
        } else {
            xdp_action::XDP_DROP
        }
    }

    /// `bpf_ktime_get_ns` (stickylb reads it once per packet for `last_seen`).
    #[xdp]
    pub fn bench_ktime(_ctx: XdpContext) -> u32 {
        // SAFETY: helper without arguments.
        verdict(unsafe { bpf_ktime_get_ns() } != 0)
    }

    /// `bpf_ktime_get_coarse_ns`: the same clock at tick resolution, for comparison.
    #[xdp]
    pub fn bench_ktime_coarse(_ctx: XdpContext) -> u32 {
        // SAFETY: helper without arguments.
        verdict(unsafe { bpf_ktime_get_coarse_ns() } != 0)
    }

    /// One lookup in a hash map with a 24-byte key (stickylb's service lookup).
    #[xdp]
    pub fn bench_hash(ctx: XdpContext) -> u32 {
        let Some((_, dst)) = ipv4(&ctx) else {
            return xdp_action::XDP_PASS;
        };
        verdict(HASH.get_ptr(&[dst, 0, 0, 0, 0, 0]).is_some())
    }

    /// One per-CPU array lookup and a counter increment (stickylb's counters, its route
    /// cache): what the verifier inlines, for comparison with the hash lookups.
    #[xdp]
    pub fn bench_percpu(ctx: XdpContext) -> u32 {
        let Some((_, dst)) = ipv4(&ctx) else {
            return xdp_action::XDP_PASS;
        };
        match PERCPU.get_ptr_mut(dst >> 24 & 15) {
            Some(v) => {
                // SAFETY: per-CPU slot of this CPU.
                unsafe { (*v)[0] += 1 };
                xdp_action::XDP_TX
            }
            None => xdp_action::XDP_DROP,
        }
    }

    /// One lookup in an LRU hash keyed like the stick table (a sticky hit's lookup).
    #[xdp]
    pub fn bench_lru(ctx: XdpContext) -> u32 {
        let Some((src, _)) = ipv4(&ctx) else {
            return xdp_action::XDP_PASS;
        };
        verdict(LRU.get_ptr_mut(&[0, src, 0, 0, 0]).is_some())
    }

    /// A table like `LRU`, larger, for `bench_lru_insert`: every run adds a new key, so
    /// once full each insert evicts (as the new-client cases do).
    #[map]
    static LRU_INSERT: LruHashMap<[u32; 5], [u64; 2]> = LruHashMap::with_max_entries(65536, 0);

    /// This CPU's next key for `bench_lru_insert`.
    #[map]
    static INSERT_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

    /// One insert of a new key into an LRU hash keyed like the stick table (a new client's
    /// insert, the table full: the kernel evicts to make room).
    #[xdp]
    pub fn bench_lru_insert(_ctx: XdpContext) -> u32 {
        let Some(seq) = INSERT_SEQ.get_ptr_mut(0) else {
            return xdp_action::XDP_DROP;
        };
        // SAFETY: per-CPU slot of this CPU.
        let n = unsafe {
            *seq = (*seq).wrapping_add(1);
            *seq
        };
        verdict(LRU_INSERT.insert(&[0, n, 0, 0, 0], &[0, 0], 0).is_ok())
    }

    /// `bpf_jiffies64`: the kernel's tick counter, the cheapest clock a program can read.
    #[xdp]
    pub fn bench_jiffies(_ctx: XdpContext) -> u32 {
        // SAFETY: helper without arguments.
        verdict(unsafe { bpf_jiffies64() } != 0)
    }

    /// Like `LRU_INSERT`, for `bench_lru_insert_nx`.
    #[map]
    static LRU_INSERT_NX: LruHashMap<[u32; 5], [u64; 2]> = LruHashMap::with_max_entries(65536, 0);

    /// This CPU's next key for `bench_lru_insert_nx`.
    #[map]
    static INSERT_SEQ_NX: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

    /// `BPF_NOEXIST` in the flags of a map update.
    const BPF_NOEXIST: u64 = 1;

    /// `bench_lru_insert` with `BPF_NOEXIST`: the insert a new client could make without
    /// the lookup that found it missing, handling the race by the flag's `EEXIST`.
    #[xdp]
    pub fn bench_lru_insert_nx(_ctx: XdpContext) -> u32 {
        let Some(seq) = INSERT_SEQ_NX.get_ptr_mut(0) else {
            return xdp_action::XDP_DROP;
        };
        // SAFETY: per-CPU slot of this CPU.
        let n = unsafe {
            *seq = (*seq).wrapping_add(1);
            *seq
        };
        verdict(
            LRU_INSERT_NX
                .insert(&[0, n, 0, 0, 0], &[0, 0], BPF_NOEXIST)
                .is_ok(),
        )
    }

    /// Stick-table-shaped tables of a million entries (sized by the bench at load, filled
    /// from userspace): today's 16-byte value (backend id, padding, last-seen in ns) …
    #[map]
    static LRU_SCALE16: LruHashMap<[u32; 5], [u64; 2]> = LruHashMap::with_max_entries(1, 0);

    /// … and a packed 8-byte one (backend slot and a coarse last-seen in one word).
    #[map]
    static LRU_SCALE8: LruHashMap<[u32; 5], u64> = LruHashMap::with_max_entries(1, 0);

    /// A lookup of the packet's IPv4 source in `LRU_SCALE16` (run behind the wrapper,
    /// which varies the source over the clients in rotation).
    #[xdp]
    pub fn bench_lru_scale16(ctx: XdpContext) -> u32 {
        let Some((src, _)) = ipv4(&ctx) else {
            return xdp_action::XDP_PASS;
        };
        verdict(LRU_SCALE16.get_ptr_mut(&[0, src, 0, 0, 0]).is_some())
    }

    /// The same lookup in `LRU_SCALE8`.
    #[xdp]
    pub fn bench_lru_scale8(ctx: XdpContext) -> u32 {
        let Some((src, _)) = ipv4(&ctx) else {
            return xdp_action::XDP_PASS;
        };
        verdict(LRU_SCALE8.get_ptr_mut(&[0, src, 0, 0, 0]).is_some())
    }

    /// Events as the data path wrote them before 2026-12-02: a kernel ring buffer (8 MiB,
    /// drained by the bench).
    #[map]
    static EVENTS_KERNEL: RingBuf = RingBuf::with_byte_size(1 << 23, 0);

    /// A 40-byte event reserved, written and submitted into `EVENTS_KERNEL`.
    #[xdp]
    pub fn bench_event_ringbuf(_ctx: XdpContext) -> u32 {
        match EVENTS_KERNEL.reserve::<StickEvent>(0) {
            Some(mut e) => {
                e.write(StickEvent {
                    backend_id: 1,
                    at_ns: 2,
                    kind: 1,
                    ..Default::default()
                });
                e.submit(0);
                xdp_action::XDP_TX
            }
            None => xdp_action::XDP_DROP,
        }
    }

    /// Events as the data path writes them now: a ring per CPU (`lb_common::event_ring`),
    /// sized by the bench (CPUs × `EVENT_SLOTS`), drained by it.
    #[map]
    static EVENTS_RING: Array<StickEvent> = Array::with_max_entries(1, BPF_F_MMAPABLE);

    #[map]
    static EVENTS_POS: Array<EventRingPos> = Array::with_max_entries(1, BPF_F_MMAPABLE);

    /// Slots per CPU of `EVENTS_RING` (shared with `bench/src/wrapper.rs`).
    const EVENT_SLOTS: u32 = 1 << 17;

    /// The same event written into this CPU's ring of `EVENTS_RING`, as
    /// `lb-ebpf/src/sticky.rs` `emit` writes it.
    #[xdp]
    pub fn bench_event_percpu(_ctx: XdpContext) -> u32 {
        let mask = EVENT_SLOTS - 1;
        // SAFETY: helper without arguments.
        let cpu = unsafe { helpers::generated::bpf_get_smp_processor_id() };
        let Some(pos) = EVENTS_POS.get_ptr_mut(cpu) else {
            return xdp_action::XDP_DROP;
        };
        // SAFETY: this CPU's positions (the bench's drainer writes only `tail`).
        let (head, tail) = unsafe {
            (
                core::ptr::read_volatile(&(*pos).head),
                core::ptr::read_volatile(&(*pos).tail),
            )
        };
        if !event_ring::has_room(head, tail, mask) {
            return xdp_action::XDP_DROP;
        }
        let Some(slot) = EVENTS_RING.get_ptr_mut(event_ring::slot_index(cpu, head, mask)) else {
            return xdp_action::XDP_DROP;
        };
        let e = StickEvent {
            backend_id: 1,
            at_ns: 2,
            kind: 1,
            ..Default::default()
        };
        // SAFETY: a released slot of this CPU's ring and this CPU's head.
        unsafe { event_ring::publish(slot, &raw mut (*pos).head, head, e) };
        xdp_action::XDP_TX
    }

    /// One `bpf_fib_lookup` of the packet's IPv4 source → destination (what stickylb
    /// does for every forwarded packet); `XDP_TX` when the FIB gave a next hop.
    #[xdp]
    pub fn bench_fib(ctx: XdpContext) -> u32 {
        let Some((src, dst)) = ipv4(&ctx) else {
            return xdp_action::XDP_PASS;
        };
        // SAFETY: plain C struct, all-zero is a valid initial value.
        let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
        fib.family = AF_INET;
        fib.l4_protocol = 6;
        fib.ifindex = ctx.ingress_ifindex() as u32;
        fib.__bindgen_anon_3.ipv4_src = src;
        fib.__bindgen_anon_4.ipv4_dst = dst;
        // SAFETY: helper call with a pointer to a properly sized, initialised struct.
        let rc = unsafe {
            helpers::bpf_fib_lookup(
                ctx.as_ptr(),
                &mut fib,
                core::mem::size_of::<bpf_fib_lookup>() as i32,
                0,
            )
        };
        verdict(rc == 0)
    }

    // Part 3 (through a real network path): a traffic generator run with
    // `BPF_PROG_TEST_RUN` in live-frames mode, and a counter on every backend.

    /// Configuration of `bench_gen`. Layout shared with `bench/src/netpath.rs`.
    #[repr(C)]
    pub struct GenConfig {
        /// First client address (host order); client n is `src_base + (n & src_mask)`.
        src_base: u32,
        src_mask: u32,
        /// One's-complement sum of the IPv4 header's 16-bit words without the source
        /// address and with the checksum field zero (folded to 32 bits by userspace).
        ip_sum: u32,
        _pad: u32,
        /// The first 48 bytes of the frame: Ethernet, IPv4, UDP headers, payload start.
        header: [u64; 6],
    }

    #[map]
    static GEN: Array<GenConfig> = Array::with_max_entries(1, 0);

    /// Per-CPU frame counter of the generator.
    #[map]
    static GEN_COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

    /// Writes the headers of the frame (in live-frames mode the kernel recycles pages
    /// without restoring their contents, and the balancer may have rewritten them), the
    /// next client address and the IPv4 checksum, then `XDP_TX`: the kernel sends the
    /// frame out of the interface named as ingress in the run's context.
    #[xdp]
    pub fn bench_gen(ctx: XdpContext) -> u32 {
        match gen(&ctx) {
            Some(()) => xdp_action::XDP_TX,
            None => xdp_action::XDP_ABORTED,
        }
    }

    #[inline(always)]
    fn gen(ctx: &XdpContext) -> Option<()> {
        let cfg = GEN.get_ptr(0)?;
        // SAFETY: map value pointer, valid for this run.
        let cfg = unsafe { &*cfg };
        let data = ctx.data();
        if data + 48 > ctx.data_end() {
            return None;
        }
        let counter = GEN_COUNTER.get_ptr_mut(0)?;
        // SAFETY: per-CPU map value, this CPU's copy; packet bounds checked above (48
        // bytes: 6 words, the source address at 26..30, the checksum at 24..26).
        unsafe {
            let n = (*counter).wrapping_add(1);
            *counter = n;
            for i in 0..6 {
                core::ptr::write_volatile((data + 8 * i) as *mut u64, cfg.header[i]);
            }
            let src = cfg.src_base.wrapping_add(n & cfg.src_mask);
            let mut sum = cfg.ip_sum + (src >> 16) + (src & 0xffff);
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            core::ptr::write_unaligned((data + 26) as *mut u32, src.to_be());
            core::ptr::write_unaligned((data + 24) as *mut u16, (!(sum as u16)).to_be());
        }
        Some(())
    }

    /// UDP destination port the backends count (`bench/src/netpath.rs`: `UDP_PORT`).
    const COUNT_PORT: u16 = 9000;

    /// Slot 0: IPv4 UDP packets to `COUNT_PORT` (counted and dropped); slot 1: anything
    /// else (passed to the kernel: ARP, TCP of the connection test).
    #[map]
    static COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

    /// The backends' counter: counts and drops the generator's frames, so that the
    /// backend's own stack does not weigh on the CPU the whole path shares.
    #[xdp]
    pub fn bench_count(ctx: XdpContext) -> u32 {
        let data = ctx.data();
        let mut ours = false;
        if data + ETH_HLEN + 20 + 8 <= ctx.data_end() {
            // SAFETY: bounds checked above.
            unsafe {
                let ip = data + ETH_HLEN;
                let ihl = usize::from(*(ip as *const u8) & 0x0f) * 4;
                if u16::from_be(*((data + 12) as *const u16)) == ETH_P_IP
                    && *((ip + 9) as *const u8) == 17
                    && ihl == 20
                    && u16::from_be(*((ip + 22) as *const u16)) == COUNT_PORT
                {
                    ours = true;
                }
            }
        }
        if let Some(c) = COUNT.get_ptr_mut(if ours { 0 } else { 1 }) {
            // SAFETY: per-CPU map value, this CPU's copy.
            unsafe { *c += 1 };
        }
        if ours {
            xdp_action::XDP_DROP
        } else {
            xdp_action::XDP_PASS
        }
    }

    /// Configuration of `bench_redirect`. Layout shared with `bench/src/netpath.rs`.
    #[repr(C)]
    pub struct RedirectConfig {
        ifindex: u32,
        /// Destination then source MAC address of the forwarded frame.
        macs: [u8; 12],
    }

    #[map]
    static REDIRECT: Array<RedirectConfig> = Array::with_max_entries(1, 0);

    /// The floor of any XDP balancer on this path: the generator's frames (IPv4 UDP to
    /// `COUNT_PORT`) get fixed MAC addresses and go out of one fixed interface with
    /// `bpf_redirect`, no lookup at all; anything else is passed.
    #[xdp]
    pub fn bench_redirect(ctx: XdpContext) -> u32 {
        let data = ctx.data();
        if data + ETH_HLEN + 20 + 8 > ctx.data_end() {
            return xdp_action::XDP_PASS;
        }
        let Some(cfg) = REDIRECT.get_ptr(0) else {
            return xdp_action::XDP_ABORTED;
        };
        // SAFETY: bounds checked above; map value valid for this run.
        unsafe {
            let ip = data + ETH_HLEN;
            if u16::from_be(*((data + 12) as *const u16)) != ETH_P_IP
                || *((ip + 9) as *const u8) != 17
                || *(ip as *const u8) != 0x45
                || u16::from_be(*((ip + 22) as *const u16)) != COUNT_PORT
            {
                return xdp_action::XDP_PASS;
            }
            let cfg = &*cfg;
            core::ptr::write_unaligned(data as *mut [u8; 12], cfg.macs);
            helpers::bpf_redirect(cfg.ifindex, 0) as u32
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
