//! `stickylb-bench`: what a packet costs in the stickylb data path, measured in the
//! kernel with `BPF_PROG_TEST_RUN` (see `docs/BENCHMARKS.md`).
//!
//! 1. Per-packet cost: baselines (`XDP_PASS`, a MAC swap), single operations of the hit
//!    path, and stickylb's paths (sticky hit, new client with either scheduler, IPv6,
//!    DSR, NAT reply, other traffic), behind the packet-resetting wrapper of
//!    `lb-bench-ebpf` where the program rewrites the packet.
//! 2. Stick-table scale: the hit path with 1k … 10M live entries, over a rotating set of
//!    up to 65 536 clients that all have entries, and the kernel's memory per entry.
//! 3. The network path (`netpath`), 4. the control plane (`control_plane`), 5. stick-table
//!    replication between two cluster nodes (`replication`).
//!
//! Every case runs `repeat` packets per run; the runs are interleaved (round 1 runs every
//! case once, then round 2 …) so that a burst of other work on the machine spreads over
//! all cases instead of skewing one, and the median per case is reported. After every
//! run the returned action and the service counters prove the path taken.
//!
//! Needs root (namespaces, BPF). Run it with `cargo xtask bench [--quick]`.

mod cluster_agents;
mod control_plane;
mod netpath;
mod replication;
mod report;
mod wrapper;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::{maps::IterableMap as _, programs::Xdp};
use clap::Parser;
use lb_agent::{
    dataplane::Dataplane,
    loader::{self, LoadOptions},
};
use lb_common::{ServiceStats, StickKey, StickValue, PROGRAM_NAME};
use lb_model::{
    clock::monotonic_ns,
    plan::Ids,
    spec::{Forwarding, Scheduler, ServiceSpec, StickOn},
};
use stickylb_tests::{
    lab::{Lab, XDP_PASS, XDP_REDIRECT, XDP_TX},
    packets::{Pkt, L4},
    Netns,
};

use crate::{
    report::{CaseResult, Group, Machine, Report, ScaleResult},
    wrapper::{Bench, Sample, Vary},
};

#[derive(Parser)]
#[command(
    name = "stickylb-bench",
    about = "Per-packet cost of the stickylb data path and stick-table scale (needs root)"
)]
struct Args {
    /// Short run: 100 000 packets per run, median of 3, tables of 1k and 100k entries.
    #[arg(long)]
    quick: bool,
    /// Packets per run (default 1 000 000; 100 000 with --quick).
    #[arg(long)]
    repeat: Option<u32>,
    /// Runs per case; the median is reported (default 5; 3 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Live stick-table entries for the scale part, comma-separated; below 65 536 they
    /// must be powers of two (default 1024,100000,1000000,10000000; 1024,100000 with
    /// --quick).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<u32>>,
    /// Clients looked up in rotation in the scale part, a power of two (default 65 536,
    /// or the table size if smaller).
    #[arg(long)]
    rotation: Option<u32>,
    /// CPU to run on (default: the last one this process may use).
    #[arg(long)]
    cpu: Option<usize>,
    /// Where to write latest.json, latest.md, latest.svg and latest-netpath.svg
    /// (default: <target>/bench).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Parts of the benchmark to run, comma-separated: 1 per-packet cost, 2 stick-table
    /// scale (runs part 1's baselines too), 3 network path, 4 control plane, 5 replication
    /// (crate level), 6 replication through the agents' maps
    /// (default all).
    #[arg(long, value_delimiter = ',')]
    parts: Option<Vec<u8>>,
    /// Rounds of the network-path cases (default 3; 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds measured per network-path case and round (default 4; 1.5 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
}

/// Run parameters, as recorded in the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Config {
    pub quick: bool,
    /// Packets per run.
    pub repeat: u32,
    /// Runs per case (median reported).
    pub runs: usize,
    /// Packets of the warm-up run each case gets first.
    pub warmup: u32,
    pub sizes: Vec<u32>,
    /// Most clients looked up in rotation in the scale part.
    pub rotation: u32,
    pub cpu: usize,
}

const VIP_NAT4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 100);
const VIP_MAGLEV4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 101);
const VIP_DSR4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 102);
const VIP_NAT6: &str = "fd00:100::100";
const VIP_IPIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 103);
const VIP_GUE4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 104);
const VIP_IPIP6: &str = "fd00:100::103";
const VIP_GUE6: &str = "fd00:100::104";
/// Services sticking by network (`stick_on = "src/24"` / `"src/64"`): the masking's cost.
const VIP_NET4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 105);
const VIP_NET6: &str = "fd00:100::105";
const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT6: &str = "2001:db8:c::7";
const CLIENT_PORT: u16 = 40000;
/// Varying clients are `10.0.0.0 + n`.
const VARY_BASE: u32 = u32::from_be_bytes([10, 0, 0, 0]);
/// Offset of the IPv4 source address in an untagged frame.
const IPV4_SRC_OFFSET: u32 = 14 + 12;
/// Clients looked up in rotation in the scale part (at most), by default.
const ROTATION: u32 = 65_536;
/// Stick-table capacity of the "table full" new-client case.
const FULL_TABLE: u32 = 65_536;

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (network namespaces, BPF); try `sudo -E cargo xtask bench`");
    }
    let started = Instant::now();
    let cpu = match args.cpu {
        Some(c) => c,
        None => last_allowed_cpu()?,
    };
    let machine = Machine::detect(cpu);
    pin_to_cpu(cpu)?;
    let repeat = args
        .repeat
        .unwrap_or(if args.quick { 100_000 } else { 1_000_000 });
    let cfg = Config {
        quick: args.quick,
        repeat,
        runs: args.runs.unwrap_or(if args.quick { 3 } else { 5 }),
        warmup: (repeat / 10).max(1000),
        sizes: args.sizes.clone().unwrap_or_else(|| {
            if args.quick {
                vec![1024, 100_000]
            } else {
                vec![1024, 100_000, 1_000_000, 10_000_000]
            }
        }),
        rotation: args.rotation.unwrap_or(ROTATION),
        cpu,
    };
    ensure!(
        cfg.rotation.is_power_of_two(),
        "--rotation must be a power of two"
    );
    ensure!(
        cfg.repeat > 0 && cfg.runs > 0,
        "--repeat and --runs must be > 0"
    );
    for &n in &cfg.sizes {
        ensure!(
            n > 0 && (n >= cfg.rotation || n.is_power_of_two()),
            "table size {n}: sizes below {} must be powers of two",
            cfg.rotation
        );
    }
    println!(
        "stickylb-bench: {} runs × {} packets per case; CPU {cpu} of {} ({}), kernel {}, load {}",
        cfg.runs, cfg.repeat, machine.nproc, machine.cpu_model, machine.kernel, machine.loadavg
    );

    let parts = args.parts.clone().unwrap_or_else(|| vec![1, 2, 3, 4, 5, 6]);
    ensure!(
        parts.iter().all(|p| (1..=6).contains(p)),
        "--parts takes 1, 2, 3, 4, 5, 6"
    );
    // The agent binary the network-path and control-plane parts run: next to this one.
    if std::env::var_os("STICKYLB_BIN").is_none() {
        let exe = std::env::current_exe()?;
        let bin = exe.with_file_name("stickylb");
        ensure!(
            bin.exists() || !(parts.contains(&3) || parts.contains(&4)),
            "{} not found: build it (`cargo build --release -p lb-agent --bins`, \
             or run through `cargo xtask bench`)",
            bin.display()
        );
        // SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("STICKYLB_BIN", &bin) };
    }
    let (results, scale, programs) = if parts.contains(&1) || parts.contains(&2) {
        let mut cfg = cfg.clone();
        if !parts.contains(&2) {
            cfg.sizes.clear();
        }
        parts_1_2(&cfg)?
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    let netpath = if parts.contains(&3) {
        let haproxy = netpath::ensure_haproxy()?;
        let opts = netpath::Options {
            rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }),
            pps_seconds: args.seconds.unwrap_or(if args.quick { 1.5 } else { 4.0 }),
            tcp_seconds: args.seconds.unwrap_or(if args.quick { 1.5 } else { 4.0 }),
            clients: 65_536,
            cpu,
        };
        println!(
            "\npart 3, network path: {} round(s) × {} s per case; generator and path on CPU {cpu}",
            opts.rounds, opts.pps_seconds
        );
        Some(netpath::run(&opts, haproxy).context("part 3 (network path)")?)
    } else {
        None
    };
    let control = if parts.contains(&4) {
        let opts = control_plane::Options {
            samples: if args.quick { 5 } else { 21 },
            hc_seconds: if args.quick { 4.0 } else { 10.0 },
        };
        println!("\npart 4, control plane ...");
        Some(control_plane::run(&opts).context("part 4 (control plane)")?)
    } else {
        None
    };

    let replication = if parts.contains(&5) {
        let opts = replication::Options {
            rates: vec![1_000, 50_000],
            seconds: if args.quick { 1.0 } else { 3.0 },
            resync_entries: if args.quick { 200_000 } else { 1_000_000 },
            refresh_clients: if args.quick { 10_000 } else { 50_000 },
        };
        println!("\npart 5, replication between two cluster nodes ...");
        Some(replication::run(&opts).context("part 5 (replication)")?)
    } else {
        None
    };

    let agents = if parts.contains(&6) {
        let opts = cluster_agents::Options {
            rates: vec![1_000, 50_000],
            seconds: if args.quick { 1.0 } else { 2.0 },
            resync_entries: if args.quick { 200_000 } else { 1_000_000 },
        };
        println!("\npart 6, replication through the agents' maps ...");
        Some(cluster_agents::run(&opts).context("part 6 (replication through the maps)")?)
    } else {
        None
    };

    let mut report = Report::new(machine, cfg.clone(), results, scale, programs);
    report.agents = agents;
    report.netpath = netpath;
    report.control = control;
    report.replication = replication;
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.finish();
    report.print();
    let out_dir = args.out_dir.unwrap_or_else(default_out_dir);
    report.write(&out_dir)?;
    println!(
        "\nwrote {}/latest.{{json,md,svg}}; took {:.0} s",
        out_dir.display(),
        report.elapsed_s
    );
    Ok(())
}

/// Parts 1 and 2: per-packet cost with `BPF_PROG_TEST_RUN` and stick-table scale.
fn parts_1_2(cfg: &Config) -> Result<(Vec<CaseResult>, Vec<ScaleResult>, Vec<wrapper::ProgSize>)> {
    // The lab: a namespace whose FIB resolves the backends and the client gateway, and a
    // loaded stickylb (default table size) for the fixed-client cases.
    let Lab {
        ns, ebpf, dp, ids, ..
    } = Lab::new().context("setting up the lab namespace")?;
    let mut insts = vec![Instance::configure(ebpf, dp, ids)?];
    // Issue 15's packed-value question at scale: the largest part-2 size up to a million.
    let scale_n = cfg
        .sizes
        .iter()
        .copied()
        .filter(|&n| n <= 1_000_000)
        .max()
        .unwrap_or(0);
    let mut bench = Bench::load(scale_n.saturating_add((scale_n / 16).max(4096)))?;
    bench.prepare_components(CLIENT4, VIP_NAT4)?;
    let mut cases = part1_cases(&insts[0])?;
    // The events components, each ring drained from the other CPU every millisecond (as
    // the agent reads the data path's): without a second CPU they are left out.
    let _event_drainers = match other_cpu(cfg.cpu) {
        Some(cpu) => {
            let (rings, kernel) = bench.take_event_rings()?;
            for (key, label, prog) in [
                (
                    "event_ringbuf",
                    "stick-table event into the kernel's ring buffer (reserve, submit)",
                    wrapper::EVENT_RINGBUF,
                ),
                (
                    "event_percpu",
                    "stick-table event into this CPU's ring (lb_common::event_ring)",
                    wrapper::EVENT_PERCPU,
                ),
            ] {
                cases.push(Case::new(
                    key,
                    label,
                    Group::Component,
                    request(IpAddr::V4(CLIENT4), IpAddr::V4(VIP_NAT4)),
                    XDP_TX,
                    How::Direct(Prog::Bench(prog)),
                ));
            }
            Some((Drainer::rings(rings, cpu), Drainer::kernel(kernel, cpu)))
        }
        None => None,
    };
    if scale_n > 0 {
        let started = Instant::now();
        let sizes = bench.fill_scale_components(VARY_BASE, scale_n)?;
        println!(
            "packed-value tables: 2 × {} entries inserted in {:.1} s",
            report::count(u64::from(scale_n)),
            started.elapsed().as_secs_f64()
        );
        let rotation = scale_n.min(cfg.rotation);
        for ((prog, value_bytes), (memlock, max_entries)) in
            [(wrapper::LRU_SCALE16, 16), (wrapper::LRU_SCALE8, 8)]
                .into_iter()
                .zip(sizes)
        {
            cases.push(
                Case::new(
                    &format!("lru_scale{value_bytes}"),
                    &format!(
                        "LRU hash lookup, {} entries ({rotation} in rotation), {value_bytes}-byte value, {:.1} B/entry",
                        report::count(u64::from(scale_n)),
                        memlock as f64 / f64::from(max_entries.max(1))
                    ),
                    Group::Component,
                    request(IpAddr::V4(CLIENT4), IpAddr::V4(VIP_NAT4)),
                    XDP_TX,
                    How::Wrapped {
                        target: Prog::Bench(prog),
                        check: None,
                    },
                )
                .varying(Vary {
                    offset: IPV4_SRC_OFFSET,
                    base: VARY_BASE,
                    mask: rotation - 1,
                }),
            );
        }
    }

    // The "table full" case: a small table, filled with other clients by its warm-up.
    {
        let full = Instance::load(FULL_TABLE)?;
        let sid = full.sid("nat4")?;
        insts.push(full);
        let at = cases
            .iter()
            .position(|c| c.key == "new_v4_maglev")
            .map_or(cases.len(), |i| i + 1);
        cases.insert(
            at,
            Case {
                table_entries: Some(FULL_TABLE),
                warmup: Some(2 * FULL_TABLE),
                ..Case::new(
                    "new_v4_rr_full",
                    "IPv4 NAT, new client, table full (LRU evicts)",
                    Group::Stickylb,
                    request(IpAddr::V4(CLIENT4), IpAddr::V4(VIP_NAT4)),
                    XDP_REDIRECT,
                    How::Wrapped {
                        target: Prog::Stickylb(insts.len() - 1),
                        check: Some(Check::new(Expect::New, insts.len() - 1, sid)),
                    },
                )
                .varying(vary_new())
            },
        );
    }

    // The sticky hit with the clock it read before issue 15: the same program with its
    // clock calibration cleared reads `bpf_ktime_get_coarse_ns` (lb_common::clock).
    {
        let mut coarse = Instance::load(lb_common::DEFAULT_STICK_TABLE_SIZE)?;
        loader::write_clock_calibration(&mut coarse.ebpf, &Default::default())?;
        let sid = coarse.sid("nat4")?;
        insts.push(coarse);
        let at = cases
            .iter()
            .position(|c| c.key == "hit_v4")
            .map_or(cases.len(), |i| i + 1);
        cases.insert(
            at,
            Case::new(
                "hit_v4_coarse",
                "IPv4 NAT, sticky hit, coarse clock (the clock before issue 15)",
                Group::Stickylb,
                request(IpAddr::V4(CLIENT4), IpAddr::V4(VIP_NAT4)),
                XDP_REDIRECT,
                How::Wrapped {
                    target: Prog::Stickylb(insts.len() - 1),
                    check: Some(Check::new(Expect::Hit, insts.len() - 1, sid)),
                },
            ),
        );
    }

    // Part 2: one instance per table size, filled from userspace.
    let mut tables = Vec::new();
    for &n in &cfg.sizes {
        let t = Table::fill(n, cfg.rotation)?;
        println!(
            "stick table: {} live entries inserted in {:.1} s",
            report::count(u64::from(n)),
            t.fill_s
        );
        let rotation = n.min(cfg.rotation);
        insts.push(t.inst);
        let idx = insts.len() - 1;
        cases.push(Case {
            table_entries: Some(t.max_entries),
            ..Case::new(
                &format!("scale_{n}"),
                &format!("IPv4 NAT hit, {} live entries", report::count(u64::from(n))),
                Group::Scale,
                request(IpAddr::V4(CLIENT4), IpAddr::V4(VIP_NAT4)),
                XDP_REDIRECT,
                How::Wrapped {
                    target: Prog::Stickylb(idx),
                    check: Some(Check::new(Expect::Hit, idx, t.sid)),
                },
            )
            .varying(Vary {
                offset: IPV4_SRC_OFFSET,
                base: VARY_BASE,
                mask: rotation - 1,
            })
        });
        tables.push((n, rotation, t.fill_s, t.memlock, t.max_entries));
    }

    // Warm-up: every case once (this also creates the fixed clients' entries).
    let r = Runner { ns: &ns, cfg };
    for case in &cases {
        let n = case.warmup.unwrap_or(cfg.warmup);
        r.run_case(case, &mut bench, &insts, n, false)
            .with_context(|| format!("{}: warm-up", case.label))?;
    }
    // The measured runs, interleaved.
    for round in 0..cfg.runs {
        println!("round {}/{} ...", round + 1, cfg.runs);
        for case in &mut cases {
            let s = r
                .run_case(case, &mut bench, &insts, cfg.repeat, true)
                .with_context(|| format!("{}: run {}", case.label, round + 1))?;
            case.samples.push(s);
        }
    }

    let mut programs = vec![wrapper::prog_size("stickylb", insts[0].program()?)?];
    // The side programs the data path tail-calls (not on the hit path).
    for name in ["stickylb_icmp", "stickylb_fragment"] {
        if let Some(p) = insts[0].ebpf.program(name) {
            let p: &Xdp = p.try_into()?;
            programs.push(wrapper::prog_size(name, p)?);
        }
    }
    programs.push(wrapper::prog_size(
        lb_common::PROGRAM_DECAP,
        bench.decap_program()?,
    )?);
    programs.extend([
        wrapper::prog_size(wrapper::WRAPPER, bench.program(wrapper::WRAPPER)?)?,
        wrapper::prog_size(wrapper::PASS, bench.program(wrapper::PASS)?)?,
        wrapper::prog_size(wrapper::MACSWAP, bench.program(wrapper::MACSWAP)?)?,
    ]);
    let mut results: Vec<CaseResult> = cases.into_iter().map(Case::result).collect();
    let mut scale = Vec::new();
    for (n, rotation, fill_s, memlock, max_entries) in tables {
        let i = results
            .iter()
            .position(|c| c.key == format!("scale_{n}"))
            .context("scale case")?;
        scale.push(ScaleResult {
            entries: n,
            max_entries,
            rotating_clients: rotation,
            fill_s,
            memlock_bytes: memlock,
            bytes_per_entry: memlock as f64 / f64::from(max_entries.max(1)),
            case: results.remove(i),
        });
    }
    drop(insts);
    Ok((results, scale, programs))
}

/// Every client is new: `10.0.0.0 + n`, n counting up on every run (no wrap within
/// 2^32 runs).
fn vary_new() -> Vary {
    Vary {
        offset: IPV4_SRC_OFFSET,
        base: VARY_BASE,
        mask: u32::MAX,
    }
}

/// Baselines, single operations, and stickylb with fixed clients and new clients.
fn part1_cases(main: &Instance) -> Result<Vec<Case>> {
    let hit4 = request(IpAddr::V4(CLIENT4), IpAddr::V4(VIP_NAT4));
    let hit6 = request(CLIENT6.parse()?, VIP_NAT6.parse()?);
    let dsr = request(IpAddr::V4(CLIENT4), IpAddr::V4(VIP_DSR4));
    let backend2 = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
    let to_backend = tcp_ack(IpAddr::V4(CLIENT4), CLIENT_PORT, backend2, BACKEND_PORT);
    let reply = tcp_ack(
        IpAddr::V4(Ipv4Addr::new(198, 18, 1, 3)),
        BACKEND_PORT,
        IpAddr::V4(CLIENT4),
        CLIENT_PORT,
    );
    let other = tcp_ack(
        IpAddr::V4(CLIENT4),
        CLIENT_PORT,
        IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
        22,
    );
    let (nat4, nat6, dsr4) = (main.sid("nat4")?, main.sid("nat6")?, main.sid("dsr4")?);
    let direct = |p: &'static str| How::Direct(Prog::Bench(p));
    let wrapped = |p: &'static str| How::Wrapped {
        target: Prog::Bench(p),
        check: None,
    };
    let lb = |expect: Expect, sid: u32| How::Wrapped {
        target: Prog::Stickylb(0),
        check: Some(Check::new(expect, 0, sid)),
    };
    let fresh = |service: &'static str| How::Fresh {
        service,
        events: false,
    };
    use Group::{Baseline, Component, Stickylb};
    let mut cases = vec![
        Case::new(
            "pass_direct",
            "XDP_PASS, no wrapper",
            Baseline,
            hit4.clone(),
            XDP_PASS,
            direct(wrapper::PASS),
        ),
        Case::new(
            "macswap_direct",
            "MAC swap, no wrapper",
            Baseline,
            hit4.clone(),
            XDP_TX,
            direct(wrapper::MACSWAP),
        ),
        Case::new(
            "pass",
            "wrapper + XDP_PASS",
            Baseline,
            hit4.clone(),
            XDP_PASS,
            wrapped(wrapper::PASS),
        ),
        Case::new(
            "macswap",
            "wrapper + MAC swap",
            Baseline,
            hit4.clone(),
            XDP_TX,
            wrapped(wrapper::MACSWAP),
        ),
        Case::new(
            "pass_vary",
            "wrapper (varying client) + XDP_PASS",
            Baseline,
            hit4.clone(),
            XDP_PASS,
            wrapped(wrapper::PASS),
        )
        .varying(vary_new()),
        Case::new(
            "macswap_vary",
            "wrapper (varying client) + MAC swap",
            Baseline,
            hit4.clone(),
            XDP_TX,
            wrapped(wrapper::MACSWAP),
        )
        .varying(vary_new()),
    ];
    for (key, label, prog, pkt) in [
        ("ktime", "bpf_ktime_get_ns", wrapper::KTIME, &hit4),
        (
            "ktime_coarse",
            "bpf_ktime_get_coarse_ns",
            wrapper::KTIME_COARSE,
            &hit4,
        ),
        (
            "hash",
            "hash map lookup (24-byte key)",
            wrapper::HASH,
            &hit4,
        ),
        (
            "lru",
            "LRU hash lookup (stick-table key)",
            wrapper::LRU,
            &hit4,
        ),
        (
            "lru_insert",
            "LRU hash insert (new key, table full: evicts)",
            wrapper::LRU_INSERT,
            &hit4,
        ),
        ("jiffies", "bpf_jiffies64", wrapper::JIFFIES, &hit4),
        (
            "lru_insert_nx",
            "LRU hash insert with BPF_NOEXIST (new key, table full: evicts)",
            wrapper::LRU_INSERT_NX,
            &hit4,
        ),
        (
            "percpu",
            "per-CPU array lookup + increment",
            wrapper::PERCPU,
            &hit4,
        ),
        (
            "fib",
            "bpf_fib_lookup (IPv4, to a backend)",
            wrapper::FIB,
            &to_backend,
        ),
    ] {
        cases.push(Case::new(
            key,
            label,
            Component,
            pkt.clone(),
            XDP_TX,
            direct(prog),
        ));
    }
    cases.extend([
        Case::new(
            "hit_v4",
            "IPv4 NAT, sticky hit",
            Stickylb,
            hit4.clone(),
            XDP_REDIRECT,
            lb(Expect::Hit, nat4),
        ),
        Case::new(
            "hit_v6",
            "IPv6 NAT, sticky hit",
            Stickylb,
            hit6,
            XDP_REDIRECT,
            lb(Expect::Hit, nat6),
        ),
        // The same hits in services sticking by network: the masking of the client
        // address before the key is built (the rest of the path is the same).
        Case::new(
            "hit_v4_net",
            "IPv4 NAT, sticky hit, stick_on src/24",
            Stickylb,
            request(IpAddr::V4(CLIENT4), IpAddr::V4(VIP_NET4)),
            XDP_REDIRECT,
            lb(Expect::Hit, main.sid("net4")?),
        ),
        Case::new(
            "hit_v6_net",
            "IPv6 NAT, sticky hit, stick_on src/64",
            Stickylb,
            request(CLIENT6.parse()?, VIP_NET6.parse()?),
            XDP_REDIRECT,
            lb(Expect::Hit, main.sid("net6")?),
        ),
        Case::new(
            "hit_dsr",
            "IPv4 DSR, sticky hit",
            Stickylb,
            dsr.clone(),
            XDP_REDIRECT,
            lb(Expect::Hit, dsr4),
        ),
        Case::new(
            "hit_ipip4",
            "IPv4 IPIP, sticky hit",
            Stickylb,
            request(IpAddr::V4(CLIENT4), IpAddr::V4(VIP_IPIP4)),
            XDP_REDIRECT,
            lb(Expect::Hit, main.sid("ipip4")?),
        )
        .head(20),
        Case::new(
            "hit_ipip6",
            "IPv6 IP6IP6, sticky hit",
            Stickylb,
            request(CLIENT6.parse()?, VIP_IPIP6.parse()?),
            XDP_REDIRECT,
            lb(Expect::Hit, main.sid("ipip6")?),
        )
        .head(40),
        Case::new(
            "hit_gue4",
            "IPv4 GUE, sticky hit",
            Stickylb,
            request(IpAddr::V4(CLIENT4), IpAddr::V4(VIP_GUE4)),
            XDP_REDIRECT,
            lb(Expect::Hit, main.sid("gue4")?),
        )
        .head(28),
        Case::new(
            "hit_gue6",
            "IPv6 GUE (UDP checksum derived), sticky hit",
            Stickylb,
            request(CLIENT6.parse()?, VIP_GUE6.parse()?),
            XDP_REDIRECT,
            lb(Expect::Hit, main.sid("gue6")?),
        )
        .head(48),
        Case::new(
            "decap_ipip4",
            "decap: IPIP (IPv4) stripped",
            Stickylb,
            decap_fixture(false, false),
            XDP_PASS,
            How::Wrapped {
                target: Prog::Decap,
                check: None,
            },
        )
        .head(-20),
        Case::new(
            "decap_gue6",
            "decap: GUE over IPv6 stripped",
            Stickylb,
            decap_fixture(true, true),
            XDP_PASS,
            How::Wrapped {
                target: Prog::Decap,
                check: None,
            },
        )
        .head(-48),
        Case::new(
            "decap_other",
            "decap: other traffic (untouched)",
            Stickylb,
            hit4.clone(),
            XDP_PASS,
            How::Wrapped {
                target: Prog::Decap,
                check: None,
            },
        ),
        Case::new(
            "reply_v4",
            "IPv4 NAT reply (backend → client)",
            Stickylb,
            reply,
            XDP_REDIRECT,
            lb(Expect::Reply, nat4),
        ),
        Case::new(
            "other_v4",
            "IPv4 non-service traffic",
            Stickylb,
            other.clone(),
            XDP_PASS,
            lb(Expect::Untouched, nat4),
        ),
        // New clients into an empty table: a fresh instance for every run, with room
        // for all of the run's clients (nothing is evicted).
        Case::new(
            "new_v4_rr",
            "IPv4 NAT, new client, round-robin",
            Stickylb,
            hit4.clone(),
            XDP_REDIRECT,
            fresh("nat4"),
        )
        .varying(vary_new()),
        // The same with stick-table events on, as on a cluster node (issue 12): each new
        // entry is also written into this CPU's events ring, drained from another CPU
        // (or sized for the whole run) so that no event is dropped (a dropped one would be
        // cheaper).
        Case::new(
            "new_v4_rr_events",
            "IPv4 NAT, new client, round-robin, cluster events (rings drained from another CPU)",
            Stickylb,
            hit4.clone(),
            XDP_REDIRECT,
            How::Fresh {
                service: "nat4",
                events: true,
            },
        )
        .varying(vary_new()),
        Case::new(
            "new_v4_maglev",
            "IPv4 NAT, new client, Maglev",
            Stickylb,
            request(IpAddr::V4(CLIENT4), IpAddr::V4(VIP_MAGLEV4)),
            XDP_REDIRECT,
            fresh("mag4"),
        )
        .varying(vary_new()),
        // Programs that leave the packet as they found it (or rewrite it the same way
        // every time) also run without the wrapper: a cross-check of the subtraction.
        Case::new(
            "other_v4_direct",
            "IPv4 non-service traffic, no wrapper",
            Stickylb,
            other,
            XDP_PASS,
            How::Direct(Prog::Stickylb(0)),
        ),
        Case::new(
            "hit_dsr_direct",
            "IPv4 DSR, sticky hit, no wrapper",
            Stickylb,
            dsr,
            XDP_REDIRECT,
            How::Direct(Prog::Stickylb(0)),
        ),
    ]);
    Ok(cases)
}

/// What a backend receives from the balancer: a client's TCP ACK to the VIP inside IPIP
/// (IPv4) or GUE (IPv6).
fn decap_fixture(v6: bool, gue: bool) -> Vec<u8> {
    use stickylb_tests::packets::{encapsulated, Outer, Tunnel};
    let inner = if v6 {
        request(
            CLIENT6.parse().expect("client"),
            VIP_GUE6.parse().expect("VIP"),
        )
    } else {
        request(IpAddr::V4(CLIENT4), IpAddr::V4(VIP_IPIP4))
    };
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (
            "fd00:1::1".parse().expect("addr"),
            "fd00:1::2".parse().expect("addr"),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)),
        )
    };
    let o = Outer {
        src_mac: [0x02, 0, 0, 0, 0, 0x11],
        dst_mac: [0x02, 0, 0, 0, 0, 0x22],
        src,
        dst,
        tos: 0,
        flow_label: 0x12345,
    };
    let t = if gue {
        Tunnel::Gue {
            sport: 0xC123,
            dport: lb_common::DEFAULT_GUE_PORT,
            zero_check: false,
        }
    } else {
        Tunnel::Ipip
    };
    encapsulated(&o, t, &inner[14..])
}

/// A TCP ACK (an established flow's packet) from `client:40000` to `vip:80`.
fn request(client: IpAddr, vip: IpAddr) -> Vec<u8> {
    tcp_ack(client, CLIENT_PORT, vip, VIP_PORT)
}

fn tcp_ack(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    let mut p = Pkt::new(L4::Tcp, src, sport, dst, dport);
    p.syn = false;
    p.bytes()
}

/// The services every instance is configured with.
fn services() -> Vec<ServiceSpec> {
    let v4 = |n: u8, port: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, n)), port);
    let mut nat4 = ServiceSpec::new("nat4", SocketAddr::new(IpAddr::V4(VIP_NAT4), VIP_PORT));
    let mut mag4 = ServiceSpec::new("mag4", SocketAddr::new(IpAddr::V4(VIP_MAGLEV4), VIP_PORT));
    mag4.scheduler = Scheduler::Maglev;
    let mut dsr4 = ServiceSpec::new("dsr4", SocketAddr::new(IpAddr::V4(VIP_DSR4), VIP_PORT));
    dsr4.forwarding = Forwarding::Dsr;
    let l3dsr = |name: &str, vip: IpAddr, forwarding| {
        let mut s = ServiceSpec::new(name, SocketAddr::new(vip, VIP_PORT));
        s.forwarding = forwarding;
        for n in 2..=4 {
            let b: IpAddr = if vip.is_ipv4() {
                IpAddr::V4(Ipv4Addr::new(198, 18, 1, n))
            } else {
                format!("fd00:1::{n}").parse().expect("backend")
            };
            s = s.backend(SocketAddr::new(b, VIP_PORT));
        }
        s
    };
    let ipip4 = l3dsr("ipip4", IpAddr::V4(VIP_IPIP4), Forwarding::Ipip);
    let gue4 = l3dsr("gue4", IpAddr::V4(VIP_GUE4), Forwarding::Gue);
    let ipip6 = l3dsr("ipip6", VIP_IPIP6.parse().expect("VIP"), Forwarding::Ipip);
    let gue6 = l3dsr("gue6", VIP_GUE6.parse().expect("VIP"), Forwarding::Gue);
    let vip6: IpAddr = VIP_NAT6.parse().expect("VIP");
    let mut nat6 = ServiceSpec::new("nat6", SocketAddr::new(vip6, VIP_PORT));
    let mut net4 = ServiceSpec::new("net4", SocketAddr::new(IpAddr::V4(VIP_NET4), VIP_PORT));
    net4.stick_on = StickOn::Network(24);
    let vip_net6: IpAddr = VIP_NET6.parse().expect("VIP");
    let mut net6 = ServiceSpec::new("net6", SocketAddr::new(vip_net6, VIP_PORT));
    net6.stick_on = StickOn::Network(64);
    for n in 2..=4 {
        nat4 = nat4.backend(v4(n, BACKEND_PORT));
        mag4 = mag4.backend(v4(n, BACKEND_PORT + 1));
        dsr4 = dsr4.backend(v4(n, VIP_PORT));
        let b6: IpAddr = format!("fd00:1::{n}").parse().expect("backend");
        nat6 = nat6.backend(SocketAddr::new(b6, BACKEND_PORT));
        net4 = net4.backend(v4(n, BACKEND_PORT + 2));
        net6 = net6.backend(SocketAddr::new(b6, BACKEND_PORT + 2));
    }
    // The insert cap (125k new entries per CPU per second by default) would turn most of
    // a million new clients into the unpinned path: measure the insert itself.
    let mut all = vec![nat4, mag4, nat6, dsr4, ipip4, gue4, ipip6, gue6, net4, net6];
    for s in &mut all {
        s.insert_cap = 0;
    }
    all
}

/// A loaded and configured stickylb.
struct Instance {
    ebpf: aya::Ebpf,
    dp: Dataplane,
    ids: Ids,
}

impl Instance {
    fn load(stick_table_size: u32) -> Result<Instance> {
        Self::load_with(&LoadOptions {
            stick_table_size,
            ..Default::default()
        })
    }

    fn load_with(opts: &LoadOptions) -> Result<Instance> {
        let mut ebpf = loader::load(opts)?;
        let dp = Dataplane::new(&mut ebpf)?;
        Self::configure(ebpf, dp, Ids::default())
    }

    fn configure(ebpf: aya::Ebpf, mut dp: Dataplane, mut ids: Ids) -> Result<Instance> {
        let plan = ids.plan(&services())?;
        dp.apply(&plan)?;
        Ok(Instance { ebpf, dp, ids })
    }

    fn program(&self) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(PROGRAM_NAME)
            .context("stickylb program")?
            .try_into()?)
    }

    fn sid(&self, service: &str) -> Result<u32> {
        self.ids
            .service_id(service)
            .with_context(|| format!("service {service}"))
    }
}

/// A stick table of `n` live entries (part 2).
struct Table {
    inst: Instance,
    sid: u32,
    fill_s: f64,
    memlock: u64,
    max_entries: u32,
}

impl Table {
    /// An instance whose stick table holds clients `10.0.0.0 + i`, `i < n`, of `nat4`.
    fn fill(n: u32, rotation: u32) -> Result<Table> {
        // Room for n entries plus slack: an LRU map hands out free slots to CPUs in
        // batches and starts evicting before the last slot is used.
        let capacity = n.saturating_add((n / 16).max(4096));
        let mut inst = Instance::load(capacity)?;
        let sid = inst.sid("nat4")?;
        let backends: Vec<u32> = inst
            .dp
            .applied()
            .backends
            .iter()
            .filter(|b| b.service == "nat4")
            .map(|b| b.id)
            .collect();
        ensure!(!backends.is_empty(), "nat4 has no backends");
        let start = Instant::now();
        let now = monotonic_ns();
        for i in 0..n {
            let value = StickValue {
                backend_id: backends[i as usize % backends.len()],
                _pad: 0,
                last_seen_ns: now,
            };
            inst.dp
                .stick
                .insert(&stick_key(sid, i), &value, 0)
                .with_context(|| format!("inserting entry {i} of {n}"))?;
        }
        let fill_s = start.elapsed().as_secs_f64();
        for i in 0..n.min(rotation) {
            inst.dp
                .stick
                .get(&stick_key(sid, i), 0)
                .with_context(|| format!("client {i} lost its entry while filling"))?;
        }
        let (memlock, max_entries) = map_memlock(inst.dp.stick.map().fd().as_fd().as_raw_fd())?;
        Ok(Table {
            inst,
            sid,
            fill_s,
            memlock,
            max_entries,
        })
    }
}

/// A program to run: one of the benchmark object's, or the stickylb of an instance.
#[derive(Clone, Copy)]
enum Prog {
    Bench(&'static str),
    Stickylb(usize),
    /// The backends' decapsulation program.
    Decap,
}

fn xdp<'a>(prog: Prog, bench: &'a Bench, insts: &'a [Instance]) -> Result<&'a Xdp> {
    match prog {
        Prog::Bench(name) => bench.program(name),
        Prog::Stickylb(i) => insts.get(i).context("instance")?.program(),
        Prog::Decap => bench.decap_program(),
    }
}

/// What a case's service counters must show after a run of `n` packets.
#[derive(Clone, Copy)]
enum Expect {
    /// Every packet forwarded to the client's existing backend.
    Hit,
    /// Every packet a new client.
    New,
    /// Every packet a NAT reply.
    Reply,
    /// No packet counted.
    Untouched,
}

#[derive(Clone, Copy)]
struct Check {
    expect: Expect,
    /// Instance whose counters to read.
    inst: usize,
    sid: u32,
}

impl Check {
    fn new(expect: Expect, inst: usize, sid: u32) -> Check {
        Check { expect, inst, sid }
    }
}

fn verify(expect: Expect, before: &ServiceStats, after: &ServiceStats, n: u64) -> Result<()> {
    let d = |f: fn(&ServiceStats) -> u64| f(after).wrapping_sub(f(before));
    let (packets, new, repick, replies) = (
        d(|s| s.packets),
        d(|s| s.new_clients),
        d(|s| s.repick_expired + s.repick_down),
        d(|s| s.reply_packets),
    );
    let ok = match expect {
        Expect::Hit => packets == n && new == 0 && repick == 0,
        Expect::New => packets == n && new == n,
        Expect::Reply => replies == n && packets == 0,
        Expect::Untouched => replies == 0 && packets == 0,
    };
    ensure!(
        ok,
        "counters after {n} packets: forwarded {packets}, new clients {new}, \
         re-picked {repick}, replies {replies}: not the path under test"
    );
    Ok(())
}

enum How {
    /// The program runs on the packet as is, without the wrapper.
    Direct(Prog),
    /// The wrapper restores the fixture before each packet and tail-calls `target`.
    Wrapped { target: Prog, check: Option<Check> },
    /// New clients into an empty table: every run loads a fresh instance (default table
    /// of 2M entries, or more: room for the warm-up and the run), wrapped; `events`: with
    /// stick-table events on, the rings drained from another CPU (or holding every event
    /// of the run).
    Fresh { service: &'static str, events: bool },
}

struct Case {
    key: String,
    label: String,
    group: Group,
    pkt: Vec<u8>,
    vary: Option<Vary>,
    action: u32,
    how: How,
    table_entries: Option<u32>,
    /// Packets of the warm-up run, if not the default.
    warmup: Option<u32>,
    /// Bytes the program moves the packet's start by (+ encapsulation, − decapsulation):
    /// the wrapper moves it back.
    head: i32,
    samples: Vec<Sample>,
}

impl Case {
    fn new(key: &str, label: &str, group: Group, pkt: Vec<u8>, action: u32, how: How) -> Case {
        Case {
            key: key.to_string(),
            label: label.to_string(),
            group,
            pkt,
            vary: None,
            action,
            how,
            table_entries: None,
            warmup: None,
            head: 0,
            samples: Vec::new(),
        }
    }

    fn head(self, head: i32) -> Case {
        Case { head, ..self }
    }

    fn varying(self, vary: Vary) -> Case {
        Case {
            vary: Some(vary),
            ..self
        }
    }

    fn result(self) -> CaseResult {
        let wrapped = !matches!(self.how, How::Direct(_));
        let mut r = CaseResult::new(
            &self.key,
            &self.label,
            self.group,
            wrapped,
            self.vary,
            self.action,
            self.pkt.len(),
            self.samples,
        );
        r.table_entries = self.table_entries;
        r
    }
}

struct Runner<'a> {
    ns: &'a Netns,
    cfg: &'a Config,
}

impl Runner<'_> {
    /// One run of `n` packets; the action (and the counters when `checked`) must show
    /// the path under test.
    fn run_case(
        &self,
        case: &Case,
        bench: &mut Bench,
        insts: &[Instance],
        n: u32,
        checked: bool,
    ) -> Result<Sample> {
        match case.how {
            How::Direct(prog) => self.run(xdp(prog, bench, insts)?, &case.pkt, n, case.action),
            How::Wrapped { target, check } => {
                let fd = xdp(target, bench, insts)?.fd()?.try_clone()?;
                bench.set_target(&fd)?;
                bench.set_fixture(&case.pkt, case.vary, case.head)?;
                let wrapper = bench.program(wrapper::WRAPPER)?;
                let check = match check.filter(|_| checked) {
                    Some(c) => Some((c.expect, &insts.get(c.inst).context("instance")?.dp, c.sid)),
                    None => None,
                };
                self.checked_run(wrapper, &case.pkt, n, case.action, check)
            }
            How::Fresh { service, events } => {
                let capacity = (2 * (self.cfg.warmup + self.cfg.repeat)).max(2_000_000);
                // With events on, a thread on another CPU drains the rings every
                // millisecond, as the agent's reader does: the producer's cost as in a
                // cluster node. The rings hold 131 072 events (5 MiB, about the 4 MiB of the
                // kernel ring buffer before): this case makes 1.6 million new clients a
                // second on one CPU, 30 times a busy node, and the agent's 16 384 slots
                // would fill whenever the drainer is descheduled for 10 ms. Without a CPU
                // to spare, rings sized for the whole run instead, never read.
                let drainer_cpu = other_cpu(self.cfg.cpu);
                let slots = match (events, drainer_cpu) {
                    (false, _) => None,
                    (true, Some(_)) => Some(1 << 17),
                    (true, None) => Some(
                        (self.cfg.warmup + self.cfg.repeat)
                            .next_power_of_two()
                            .max(1 << 14),
                    ),
                };
                let mut inst = Instance::load_with(&LoadOptions {
                    stick_table_size: capacity,
                    stick_events: events,
                    stick_event_slots: slots,
                    ..Default::default()
                })?;
                let _drainer = match (events, drainer_cpu) {
                    (true, Some(cpu)) => Some(Drainer::start(&mut inst.ebpf, cpu)?),
                    _ => None,
                };
                let sid = inst.sid(service)?;
                let fd = inst.program()?.fd()?.try_clone()?;
                bench.set_target(&fd)?;
                bench.set_fixture(&case.pkt, case.vary, case.head)?;
                let wrapper = bench.program(wrapper::WRAPPER)?;
                self.run(wrapper, &case.pkt, self.cfg.warmup, case.action)?;
                let check = checked.then_some((Expect::New, &inst.dp, sid));
                let s = self.checked_run(wrapper, &case.pkt, n, case.action, check)?;
                if events {
                    let lost: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(
                        inst.ebpf
                            .map(lb_common::MAP_STICK_EVENTS_LOST)
                            .context("STICK_EVENTS_LOST")?,
                    )?;
                    let lost: u64 = lost.get(&0, 0)?.iter().sum();
                    ensure!(lost == 0, "{lost} events dropped: the ring was too small");
                }
                Ok(s)
            }
        }
    }

    fn checked_run(
        &self,
        prog: &Xdp,
        pkt: &[u8],
        n: u32,
        action: u32,
        check: Option<(Expect, &Dataplane, u32)>,
    ) -> Result<Sample> {
        let Some((expect, dp, sid)) = check else {
            return self.run(prog, pkt, n, action);
        };
        let before = dp.service_stats(sid)?;
        let s = self.run(prog, pkt, n, action)?;
        let after = dp.service_stats(sid)?;
        verify(expect, &before, &after, u64::from(n))?;
        Ok(s)
    }

    fn run(&self, prog: &Xdp, pkt: &[u8], n: u32, action: u32) -> Result<Sample> {
        let s = self.ns.enter(|| wrapper::test_run(prog, pkt, n))?;
        ensure!(
            s.action == action,
            "returned {} ({}), expected {} ({})",
            s.action,
            report::action_name(s.action),
            action,
            report::action_name(action)
        );
        Ok(s)
    }
}

/// Stick key of varying client `i` (`10.0.0.0 + i`) of service `sid`.
fn stick_key(sid: u32, i: u32) -> StickKey {
    let ip = VARY_BASE.wrapping_add(i).to_be_bytes();
    StickKey {
        service_id: sid,
        client: [u32::from_ne_bytes(ip), 0, 0, 0],
    }
}

/// `memlock` and `max_entries` of a BPF map from `/proc/self/fdinfo/<fd>`: the memory
/// the kernel charges for it.
fn map_memlock(fd: i32) -> Result<(u64, u32)> {
    let path = format!("/proc/self/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok((field("memlock:")?, u32::try_from(field("max_entries:")?)?))
}

fn last_allowed_cpu() -> Result<usize> {
    // SAFETY: cpu_set_t is plain data; all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    (0..libc::CPU_SETSIZE as usize)
        .rev()
        // SAFETY: index below CPU_SETSIZE.
        .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .context("no CPU allowed")
}

/// Pins this thread (and the threads it starts later) to `cpu`: the wrapper's counter is
/// per CPU, and one CPU keeps runs comparable.
/// A CPU other than `cpu`, if the machine has one online.
fn other_cpu(cpu: usize) -> Option<usize> {
    (0..num_cpus_online()).find(|&c| c != cpu)
}

fn num_cpus_online() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1)
}

/// Drains a data path's events rings every millisecond from a thread pinned to another
/// CPU (the agent's reader, without replication); stops when dropped.
struct Drainer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Drainer {
    fn start(ebpf: &mut aya::Ebpf, cpu: usize) -> Result<Drainer> {
        Ok(Self::rings(
            lb_agent::event_ring::EventRing::take(ebpf)?,
            cpu,
        ))
    }

    /// Drains per-CPU events rings (`lb_common::event_ring`).
    fn rings(mut ring: lb_agent::event_ring::EventRing, cpu: usize) -> Drainer {
        Self::spawn(cpu, move || {
            ring.read_all(|e| {
                std::hint::black_box(e);
            }) as u64
        })
    }

    /// Drains a kernel BPF ring buffer.
    fn kernel(mut ring: aya::maps::RingBuf<aya::maps::MapData>, cpu: usize) -> Drainer {
        Self::spawn(cpu, move || {
            let mut n = 0;
            while let Some(item) = ring.next() {
                n += 1;
                drop(std::hint::black_box(item));
            }
            n
        })
    }

    /// Runs `drain` every millisecond on `cpu` until dropped.
    fn spawn(cpu: usize, mut drain: impl FnMut() -> u64 + Send + 'static) -> Drainer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let _ = pin_to_cpu(cpu);
            let mut read = 0u64;
            loop {
                read += drain();
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return read;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        Drainer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    ensure!(cpu < libc::CPU_SETSIZE as usize, "CPU {cpu} out of range");
    // SAFETY: cpu_set_t is plain data; all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu checked against CPU_SETSIZE above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: valid pointer and size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// `$CARGO_TARGET_DIR/bench`, or `<workspace>/target/bench`.
fn default_out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let bench = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            bench.parent().unwrap_or(&bench).join("target")
        });
    target.join("bench")
}
