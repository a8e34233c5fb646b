//! Loading the embedded XDP object: its maps (pinned or not), the main program, the
//! side programs reached by tail call, the tc program of the neighbour queue, the
//! calibration of the data path's clock (jiffies; see `lb_common::clock`) and, in a
//! cluster, the stick sink's batch writer.
//! Attaching is `agent::attach`'s.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, MapData, ProgramArray},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{
    clock::{self, Calibration, CLOCK_CALIBRATION, CLOCK_SAMPLE},
    DEFAULT_STICK_TABLE_SIZE, JUMP_FRAGMENT, JUMP_ICMP, JUMP_NEIGH, JUMP_NEIGH_REPLY, MAP_CLOCK,
    MAP_JUMP, MAP_STICK, PROGRAM_CLOCK, PROGRAM_FRAGMENT, PROGRAM_ICMP, PROGRAM_NAME,
    PROGRAM_NEIGH, PROGRAM_NEIGH_REPLY, PROGRAM_QUEUE, PROGRAM_STICK_APPLY,
};

/// The compiled data path, embedded at build time by `build.rs` (empty in fuzzing builds
/// and builds with `STICKYLB_NO_EBPF` set, which [`load`] refuses).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// How to load the program.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Capacity of the stick table (entries).
    pub stick_table_size: u32,
    /// Pin maps in this bpffs directory, or reuse the ones already pinned there
    /// (restart adoption: the stick table and counters carry over).
    pub pin_dir: Option<PathBuf>,
    /// Enable the data path's debug log (aya-log); off costs nothing.
    pub debug: bool,
    /// Emit stick-table events (new entries, re-picks) into `STICK_EVENTS` for cluster
    /// replication; off (a single node) costs nothing.
    pub stick_events: bool,
    /// Slots of each CPU's events ring (a power of two, see `lb_common::event_ring`);
    /// `None`: `STICK_EVENT_SLOTS`.
    pub stick_event_slots: Option<u32>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            stick_table_size: DEFAULT_STICK_TABLE_SIZE,
            pin_dir: None,
            debug: false,
            stick_events: false,
            stick_event_slots: None,
        }
    }
}

/// Loads the program and its maps into the kernel (not attached yet).
pub fn load(opts: &LoadOptions) -> Result<Ebpf> {
    if EBPF_OBJECT.is_empty() {
        anyhow::bail!(
            "this stickylb was built without its eBPF object (a fuzzing build, or \
             STICKYLB_NO_EBPF set at build time): rebuild it with `cargo xtask build`"
        );
    }
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_STICK, opts.stick_table_size);
    // The events ring: a ring of `slots` per possible CPU (the ids the data path's CPU
    // number ranges over), and one position pair per CPU.
    let slots = opts
        .stick_event_slots
        .unwrap_or(lb_common::STICK_EVENT_SLOTS);
    anyhow::ensure!(
        slots.is_power_of_two() && slots >= 2,
        "stick-table events ring: {slots} slots per CPU; a power of two from 2 is accepted"
    );
    let cpus = aya::util::nr_cpus()
        .map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))
        .context("counting the possible CPUs")?
        .get();
    let ring_entries = cpus
        .checked_mul(slots)
        .with_context(|| format!("stick-table events ring: {cpus} CPUs × {slots} slots"))?;
    loader.map_max_entries(lb_common::MAP_STICK_EVENTS, ring_entries);
    loader.map_max_entries(lb_common::MAP_STICK_EVENT_POS, cpus);
    let mask = slots - 1;
    loader.override_global(lb_common::GLOBAL_STICK_EVENT_MASK, &mask, true);
    let pins: Vec<(&str, PathBuf)> = match &opts.pin_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for name in crate::pins::RETIRED_PINS {
                match std::fs::remove_file(dir.join(name)) {
                    Ok(()) => log::info!("removed the pin of the retired map {name}"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => log::warn!("removing the pin of the retired map {name}: {e}"),
                }
            }
            // The events rings hold only events in flight (the scan repairs what they
            // lose): pinned rings of another size (a CPU count or slot count changed) are
            // replaced, with their positions, rather than refused as incompatible.
            let pinned = |name: &str| {
                aya::maps::MapData::from_pin(dir.join(name))
                    .ok()
                    .and_then(|m| m.info().ok())
                    .map(|i| i.max_entries())
            };
            let ring_had = pinned(lb_common::MAP_STICK_EVENTS);
            let pos_had = pinned(lb_common::MAP_STICK_EVENT_POS);
            if (ring_had.is_some() || pos_had.is_some())
                && (ring_had, pos_had) != (Some(ring_entries), Some(cpus))
            {
                log::info!(
                    "the pinned stick-table events rings have {} slots for {} CPUs, this data \
                     path needs {ring_entries} for {cpus}: replaced (the next scan repairs \
                     the events they held)",
                    ring_had.unwrap_or(0),
                    pos_had.unwrap_or(0)
                );
                for name in [lb_common::MAP_STICK_EVENTS, lb_common::MAP_STICK_EVENT_POS] {
                    match std::fs::remove_file(dir.join(name)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(e).with_context(|| format!("removing the pin of {name}"))
                        }
                    }
                }
            }
            crate::pins::PINNED_MAPS
                .iter()
                .map(|m| (*m, dir.join(m)))
                .collect()
        }
        None => Vec::new(),
    };
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    // The data path's `DEBUG` switch lives in .rodata: frozen at load, so when 0 the
    // verifier drops the logging code entirely.
    let debug: u8 = opts.debug.into();
    loader.override_global("DEBUG", &debug, true);
    let events: u8 = opts.stick_events.into();
    loader.override_global(lb_common::GLOBAL_STICK_EVENTS, &events, true);
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the stickylb eBPF object")?;
    program(&mut ebpf)?
        .load()
        .context("verifying the stickylb XDP program")?;
    // The side paths (ICMP errors, later fragments) are programs of their own, reached
    // by tail call through JUMP.
    for (name, slot) in [
        (PROGRAM_ICMP, JUMP_ICMP),
        (PROGRAM_FRAGMENT, JUMP_FRAGMENT),
        (PROGRAM_NEIGH, JUMP_NEIGH),
        (PROGRAM_NEIGH_REPLY, JUMP_NEIGH_REPLY),
    ] {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("verifying the {name} XDP program"))?;
        let fd = prog.fd()?.try_clone()?;
        let mut jump: ProgramArray<&mut aya::maps::MapData> = ebpf
            .map_mut(MAP_JUMP)
            .context("map JUMP missing from the object")?
            .try_into()?;
        jump.set(slot, &fd, 0)
            .with_context(|| format!("installing {name} as a tail call"))?;
    }
    // The tc side of the neighbour queue (see lb-ebpf/src/neigh.rs); attached by
    // `agent::attach` next to the XDP program.
    queue_program(&mut ebpf)?
        .load()
        .with_context(|| format!("verifying the {PROGRAM_QUEUE} tc program"))?;
    // In a cluster, the sink's batch writer (lb-ebpf/src/stick_apply.rs): optional, the
    // sink writes entry by entry without it.
    if opts.stick_events {
        let loaded = ebpf
            .program_mut(PROGRAM_STICK_APPLY)
            .with_context(|| format!("program {PROGRAM_STICK_APPLY} missing from the object"))
            .and_then(|p| Ok(<&mut Xdp>::try_from(p)?.load()?));
        if let Err(e) = loaded {
            log::warn!(
                "cluster: the batch writer {PROGRAM_STICK_APPLY} did not load ({e:#}); \
                 peers' entries are written one by one (slower)"
            );
        }
    }
    match calibrate_clock(&mut ebpf) {
        Ok(Some(cal)) => log::debug!(
            "data path clock: jiffies, {} ns per tick (HZ {})",
            cal.tick_ns,
            1_000_000_000 / cal.tick_ns
        ),
        Ok(None) => log::warn!(
            "data path clock: jiffies could not be calibrated (no regular tick seen); \
             reading bpf_ktime_get_coarse_ns instead (~17 ns more per packet)"
        ),
        Err(e) => log::warn!(
            "data path clock: calibration failed ({e:#}); reading bpf_ktime_get_coarse_ns \
             instead (~17 ns more per packet)"
        ),
    }
    Ok(ebpf)
}

/// The cluster sink's batch writer of a loaded object, as a file descriptor of its own
/// (the sink runs it outside the agent's lock); `None` when it was not loaded.
pub fn stick_writer(ebpf: &Ebpf) -> Option<aya::programs::ProgramFd> {
    let prog: &Xdp = ebpf.program(PROGRAM_STICK_APPLY)?.try_into().ok()?;
    prog.fd().ok()?.try_clone().ok()
}

/// Calibrates the data path's clock (`lb_common::clock`): runs the probe program
/// `stickylb_clock` right after two ticks some 30 ms apart, and writes what
/// `clock::calibrate` makes of the two samples into `CLOCK`. `None`: the samples made no
/// sense, and the data path keeps reading the coarse clock. Takes 30 to 50 ms.
pub fn calibrate_clock(ebpf: &mut Ebpf) -> Result<Option<Calibration>> {
    let probe: &mut Xdp = ebpf
        .program_mut(PROGRAM_CLOCK)
        .with_context(|| format!("program {PROGRAM_CLOCK} missing from the object"))?
        .try_into()?;
    probe
        .load()
        .with_context(|| format!("verifying the {PROGRAM_CLOCK} probe"))?;
    let probe: &Xdp = ebpf
        .program(PROGRAM_CLOCK)
        .context("clock probe")?
        .try_into()?;
    let clock: Array<&MapData, Calibration> = Array::try_from(
        ebpf.map(MAP_CLOCK)
            .context("map CLOCK missing from the object")?,
    )?;
    let packet = [0u8; 64];
    let sample = || -> Result<clock::Sample> {
        probe
            .test_run(TestRunOptions {
                data_in: Some(&packet),
                repeat: 1,
                ..Default::default()
            })
            .context("running the clock probe")?;
        let s = clock
            .get(&CLOCK_SAMPLE, 0)
            .context("reading the clock sample")?;
        Ok(clock::Sample {
            jiffies: s.tick_ns,
            coarse_ns: s.offset_ns,
        })
    };
    // A sample taken just after a tick: the coarse clock has just moved.
    let after_tick = || -> Result<Option<clock::Sample>> {
        let before = sample()?;
        let deadline = Instant::now() + Duration::from_millis(100);
        while Instant::now() < deadline {
            let s = sample()?;
            if s.coarse_ns != before.coarse_ns {
                return Ok(Some(s));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(None)
    };
    let Some(first) = after_tick()? else {
        return Ok(None);
    };
    std::thread::sleep(Duration::from_millis(30));
    let Some(last) = after_tick()? else {
        return Ok(None);
    };
    let Some(cal) = clock::calibrate(first, last) else {
        return Ok(None);
    };
    write_clock_calibration(ebpf, &cal)?;
    Ok(Some(cal))
}

/// Sets the calibration the data path of `ebpf` reads its clock with; an all-zero one
/// makes it read `bpf_ktime_get_coarse_ns` (the benchmark's "before" case).
pub fn write_clock_calibration(ebpf: &mut Ebpf, cal: &Calibration) -> Result<()> {
    let mut clock: Array<&mut MapData, Calibration> = Array::try_from(
        ebpf.map_mut(MAP_CLOCK)
            .context("map CLOCK missing from the object")?,
    )?;
    clock
        .set(CLOCK_CALIBRATION, cal, 0)
        .context("writing the clock calibration")
}

/// The calibration the data path of `ebpf` reads its clock with (`None`: not calibrated,
/// it reads the coarse clock).
pub fn clock_calibration(ebpf: &Ebpf) -> Result<Option<Calibration>> {
    let clock: Array<&MapData, Calibration> = Array::try_from(
        ebpf.map(MAP_CLOCK)
            .context("map CLOCK missing from the object")?,
    )?;
    let cal = clock.get(&CLOCK_CALIBRATION, 0)?;
    Ok((cal.tick_ns != 0).then_some(cal))
}

/// The tc program of the neighbour queue (`stickylb_queue`) of a loaded object.
pub fn queue_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    let prog = ebpf
        .program_mut(PROGRAM_QUEUE)
        .with_context(|| format!("program {PROGRAM_QUEUE} missing from the object"))?;
    Ok(prog.try_into()?)
}

/// The XDP program of a loaded object.
pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let prog = ebpf
        .program_mut(PROGRAM_NAME)
        .with_context(|| format!("program {PROGRAM_NAME} missing from the object"))?;
    Ok(prog.try_into()?)
}
