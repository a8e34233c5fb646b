//! The benchmark's own XDP programs (crate `lb-bench-ebpf`): the packet-resetting wrapper
//! and the two baselines, and running a program `repeat` times with `BPF_PROG_TEST_RUN`.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use serde::Serialize;

/// The compiled benchmark programs, embedded at build time by `build.rs`.
pub(crate) static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-bench-ebpf"));

/// Program names in the object.
pub const WRAPPER: &str = "bench_wrapper";
pub const PASS: &str = "bench_pass";
pub const MACSWAP: &str = "bench_macswap";
pub const KTIME: &str = "bench_ktime";
pub const KTIME_COARSE: &str = "bench_ktime_coarse";
pub const HASH: &str = "bench_hash";
pub const LRU: &str = "bench_lru";
pub const LRU_INSERT: &str = "bench_lru_insert";
pub const PERCPU: &str = "bench_percpu";
pub const JIFFIES: &str = "bench_jiffies";
pub const LRU_INSERT_NX: &str = "bench_lru_insert_nx";
pub const LRU_SCALE16: &str = "bench_lru_scale16";
pub const LRU_SCALE8: &str = "bench_lru_scale8";
pub const FIB: &str = "bench_fib";
pub const EVENT_RINGBUF: &str = "bench_event_ringbuf";
pub const EVENT_PERCPU: &str = "bench_event_percpu";
/// Slots per CPU of `EVENTS_RING` (as in lb-bench-ebpf).
const EVENT_SLOTS: u32 = 1 << 17;

/// Largest fixture the wrapper can restore.
pub const FIXTURE_MAX: usize = 256;

/// Value of the wrapper's `FIXTURE` array; same layout as in `lb-bench-ebpf/src/main.rs`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Fixture {
    len: u32,
    vary_offset: u32,
    vary_base: u32,
    vary_mask: u32,
    /// Bytes the program under test prepends (negative: strips); see the eBPF side.
    head: i32,
    /// The packet, then slack the wrapper's last 8-byte copy may read.
    data: [u8; FIXTURE_MAX + 8],
}

// SAFETY: `#[repr(C)]`, only integers, no padding (5 × 32-bit then a byte array).
unsafe impl aya::Pod for Fixture {}

/// A 32-bit big-endian field the wrapper rewrites on every run to
/// `base + (counter & mask)`, the counter being per CPU and incremented per run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Vary {
    /// Byte offset in the packet (e.g. 26: the IPv4 source address).
    pub offset: u32,
    pub base: u32,
    pub mask: u32,
}

/// One `BPF_PROG_TEST_RUN` with `repeat`.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// The kernel's per-packet average (`duration`: time in the run loop / `repeat`,
    /// whole nanoseconds). The figure reported.
    pub kernel_ns: u32,
    /// Wall-clock time of the syscall / `repeat`. Diagnostic only: it includes the
    /// syscall's set-up, which with `repeat > 1` swaps the program into the XDP dispatcher
    /// and back (tens to hundreds of milliseconds here).
    pub wall_ns: f64,
    /// Return value of the last run.
    pub action: u32,
}

/// Verifier and JIT figures of a loaded program.
#[derive(Clone, Debug, Serialize)]
pub struct ProgSize {
    pub name: String,
    /// Instructions the verifier processed (all paths).
    pub verified_insns: Option<u32>,
    /// Instructions after the verifier's rewrites (`xlated_prog_len / 8`).
    pub xlated_insns: Option<u32>,
    /// Bytes of x86-64 machine code.
    pub jited_bytes: u32,
}

/// The loaded benchmark object with its two maps taken out, and the backends'
/// decapsulation object (its program is measured behind the same wrapper).
pub struct Bench {
    ebpf: Ebpf,
    decap: Ebpf,
    fixture: Array<MapData, Fixture>,
    target: ProgramArray<MapData>,
}

impl Bench {
    /// `scale_entries`: the capacity of `LRU_SCALE16` / `LRU_SCALE8` (see
    /// [`Bench::fill_scale_components`]).
    pub fn load(scale_entries: u32) -> Result<Bench> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?
            .get();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("LRU_SCALE16", scale_entries.max(1))
            .map_max_entries("LRU_SCALE8", scale_entries.max(1))
            .map_max_entries("EVENTS_RING", cpus * EVENT_SLOTS)
            .map_max_entries("EVENTS_POS", cpus)
            .load(BENCH_OBJECT)
            .context("loading the lb-bench-ebpf object")?;
        for name in [
            WRAPPER,
            PASS,
            MACSWAP,
            KTIME,
            KTIME_COARSE,
            HASH,
            LRU,
            LRU_INSERT,
            PERCPU,
            FIB,
            JIFFIES,
            LRU_INSERT_NX,
            LRU_SCALE16,
            LRU_SCALE8,
            EVENT_RINGBUF,
            EVENT_PERCPU,
        ] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            prog.load().with_context(|| format!("verifying {name}"))?;
        }
        let mut decap = lb_agent::decap::load(
            &lb_common::DecapConfig {
                flags: 0,
                gue_port: lb_common::DEFAULT_GUE_PORT.to_be(),
                _pad: 0,
            },
            &[],
            None,
        )?;
        lb_agent::decap::xdp_program(&mut decap)?;
        let fixture = Array::try_from(ebpf.take_map("FIXTURE").context("map FIXTURE")?)?;
        let target = ProgramArray::try_from(ebpf.take_map("TARGET").context("map TARGET")?)?;
        Ok(Bench {
            ebpf,
            decap,
            fixture,
            target,
        })
    }

    /// Makes the lookups of `bench_hash` (IPv4 destination `dst`) and `bench_lru` (IPv4
    /// source `src`) hit.
    pub fn prepare_components(&mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Result<()> {
        let word = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
        let mut hash: HashMap<&mut MapData, [u32; 6], u32> =
            HashMap::try_from(self.ebpf.map_mut("HASH").context("map HASH")?)?;
        hash.insert(&[word(dst), 0, 0, 0, 0, 0], &1, 0)?;
        let mut lru: HashMap<&mut MapData, [u32; 5], [u64; 2]> =
            HashMap::try_from(self.ebpf.map_mut("LRU").context("map LRU")?)?;
        lru.insert(&[0, word(src), 0, 0, 0], &[0, 0], 0)?;
        Ok(())
    }

    /// Fills `LRU_SCALE16` and `LRU_SCALE8` with clients `base + i`, `i < n` (the IPv4
    /// source the wrapper writes), keyed as `bench_lru` is; returns the memlock bytes of
    /// each table and its capacity, for bytes per entry.
    pub fn fill_scale_components(&mut self, base: u32, n: u32) -> Result<[(u64, u32); 2]> {
        let key = |i: u32| {
            [
                0,
                u32::from_ne_bytes(base.wrapping_add(i).to_be_bytes()),
                0,
                0,
                0,
            ]
        };
        let mut sizes = [(0, 0); 2];
        {
            let map = self
                .ebpf
                .map_mut("LRU_SCALE16")
                .context("map LRU_SCALE16")?;
            let mut m: HashMap<&mut MapData, [u32; 5], [u64; 2]> = HashMap::try_from(map)?;
            for i in 0..n {
                m.insert(&key(i), &[u64::from(i % 3), 1], 0)
                    .with_context(|| format!("LRU_SCALE16 entry {i} of {n}"))?;
            }
        }
        {
            let map = self.ebpf.map_mut("LRU_SCALE8").context("map LRU_SCALE8")?;
            let mut m: HashMap<&mut MapData, [u32; 5], u64> = HashMap::try_from(map)?;
            for i in 0..n {
                m.insert(&key(i), &(u64::from(i % 3) << 32 | 1), 0)
                    .with_context(|| format!("LRU_SCALE8 entry {i} of {n}"))?;
            }
        }
        for (slot, name) in sizes.iter_mut().zip(["LRU_SCALE16", "LRU_SCALE8"]) {
            let map = self.ebpf.map(name).with_context(|| format!("map {name}"))?;
            let fd = match map {
                aya::maps::Map::LruHashMap(d) => d.fd().as_fd().as_raw_fd(),
                _ => bail!("map {name} is not an LRU hash"),
            };
            *slot = crate::map_memlock(fd)?;
        }
        Ok(sizes)
    }

    /// The events components' rings, for draining: `bench_event_percpu`'s per-CPU rings
    /// and `bench_event_ringbuf`'s kernel ring buffer.
    pub fn take_event_rings(
        &mut self,
    ) -> Result<(lb_agent::event_ring::EventRing, aya::maps::RingBuf<MapData>)> {
        let rings = lb_agent::event_ring::EventRing::take_named(
            &mut self.ebpf,
            "EVENTS_RING",
            "EVENTS_POS",
        )?;
        let kernel = aya::maps::RingBuf::try_from(
            self.ebpf
                .take_map("EVENTS_KERNEL")
                .context("map EVENTS_KERNEL")?,
        )?;
        Ok((rings, kernel))
    }

    /// A program of the object, by name ([`WRAPPER`], [`PASS`], …).
    pub fn program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?)
    }

    /// The decapsulation program (`stickylb decap`'s XDP program).
    pub fn decap_program(&self) -> Result<&Xdp> {
        Ok(self
            .decap
            .program(lb_common::PROGRAM_DECAP)
            .context("program stickylb_decap missing")?
            .try_into()?)
    }

    /// Puts `prog` in the wrapper's tail-call slot.
    pub fn set_target(&mut self, prog: &ProgramFd) -> Result<()> {
        self.target
            .set(0, prog, 0)
            .context("setting the wrapper's tail-call target")
    }

    /// Sets the packet the wrapper restores on every run.
    /// `head`: bytes the program under test moves the packet's start by (+ prepends).
    pub fn set_fixture(&mut self, pkt: &[u8], vary: Option<Vary>, head: i32) -> Result<()> {
        if pkt.len() < 14 || pkt.len() > FIXTURE_MAX {
            bail!("fixture of {} bytes (14..={FIXTURE_MAX})", pkt.len());
        }
        let mut fx = Fixture {
            len: pkt.len() as u32,
            vary_offset: 0,
            vary_base: 0,
            vary_mask: 0,
            head,
            data: [0; FIXTURE_MAX + 8],
        };
        fx.data[..pkt.len()].copy_from_slice(pkt);
        if let Some(v) = vary {
            if v.offset == 0 || v.offset as usize + 4 > pkt.len() {
                bail!("varying field at {} outside the fixture", v.offset);
            }
            fx.vary_offset = v.offset;
            fx.vary_base = v.base;
            fx.vary_mask = v.mask;
        }
        self.fixture.set(0, &fx, 0).context("writing the fixture")
    }
}

/// Verifier / JIT sizes of `prog`.
pub fn prog_size(name: &str, prog: &Xdp) -> Result<ProgSize> {
    let info = prog.info().with_context(|| format!("info of {name}"))?;
    Ok(ProgSize {
        name: name.to_string(),
        verified_insns: info.verified_instruction_count(),
        xlated_insns: info.size_translated().map(|b| b / 8),
        jited_bytes: info.size_jitted(),
    })
}

/// Runs `prog` `repeat` times on `pkt` (call from inside the lab namespace: the FIB the
/// program sees is the calling thread's).
pub fn test_run(prog: &Xdp, pkt: &[u8], repeat: u32) -> Result<Sample> {
    let start = Instant::now();
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    let wall = start.elapsed();
    Ok(Sample {
        wall_ns: wall.as_nanos() as f64 / f64::from(repeat),
        kernel_ns: u32::try_from(res.duration.as_nanos()).unwrap_or(u32::MAX),
        action: res.return_value,
    })
}
