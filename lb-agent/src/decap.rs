//! `stickylb decap`: the backend side of L3 DSR (`forwarding = "ipip"` / `"gue"`).
//! Attaches the decapsulation object `lb-decap` (embedded in this binary, built with the
//! balancer's) to a backend's interface — XDP (native or skb), or tc ingress where the
//! XDP hook is taken — and pins the link and its maps, so that decapsulation outlives
//! the command; `--detach` removes it, `--stats` prints its counters.
//!
//! Pins: `<bpffs>/decap/v<DECAP_LAYOUT>/net<netns inode>/<iface>/{link,maps/…}`: the
//! network namespace is part of the path because interface names repeat across
//! namespaces while the bpffs (mounted in the host mount namespace, see `pins`) is one.
//!
//! The strict mode decapsulates only packets whose outer destination is an address of
//! this host: the `--address` list, or every address of the network namespace at attach
//! time (`getifaddrs`).

use std::{
    ffi::CString,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, TcAttachType},
        SchedClassifier, Xdp, XdpMode,
    },
    EbpfLoader,
};
use clap::{Args, ValueEnum};
use lb_common::{
    addr_from_ip, CounterSet, DecapConfig, DecapKey, DecapStats, DECAP_STRICT, DEFAULT_GUE_PORT,
    MAP_DECAP_ADDRS, MAP_DECAP_CONFIG, MAP_DECAP_STATS, PROGRAM_DECAP, PROGRAM_DECAP_TC,
};

use crate::{
    agent::attach::{iface_driver, ifindex},
    pins::{ensure_bpffs, DEFAULT_BPFFS},
};

/// The decapsulation object, embedded at build time by `build.rs` (empty in fuzzing
/// builds and builds with `STICKYLB_NO_EBPF`).
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

/// Bumped whenever the decap maps' layout changes.
pub const DECAP_LAYOUT: u32 = 1;
const DECAP_MAPS: [&str; 3] = [MAP_DECAP_CONFIG, MAP_DECAP_ADDRS, MAP_DECAP_STATS];
/// Most addresses the strict mode holds (the map's size).
const MAX_ADDRS: usize = 256;

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DecapMode {
    /// XDP native where the driver does it as-is (not veth), else XDP skb; tc ingress if
    /// the XDP hook is taken (say, by the balancer on the same interface).
    Auto,
    /// XDP in the driver.
    Native,
    /// Generic (skb) XDP.
    Skb,
    /// tc ingress (clsact / tcx).
    Tc,
}

#[derive(Args, Debug, Clone)]
pub struct DecapArgs {
    /// The backend's interface the encapsulated packets arrive on.
    #[arg(long = "iface", value_name = "IF")]
    pub iface: String,
    /// GUE port to decapsulate (the services' `gue_port`); 0 = IPIP only.
    #[arg(long, default_value_t = DEFAULT_GUE_PORT)]
    pub gue_port: u16,
    /// Decapsulate only packets whose outer destination is an address of this host
    /// (`--address`, or every address of the namespace at attach time); others pass
    /// untouched.
    #[arg(long)]
    pub strict: bool,
    /// An outer destination the strict mode accepts (repeat; implies --strict).
    #[arg(long = "address", value_name = "IP")]
    pub addresses: Vec<IpAddr>,
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: DecapMode,
    /// bpffs mount point for the pins (mounted in the host mount namespace if missing).
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Remove the program from the interface (and its pins).
    #[arg(long, conflicts_with_all = ["stats", "strict", "addresses"])]
    pub detach: bool,
    /// Print the counters of the attached program.
    #[arg(long)]
    pub stats: bool,
}

/// Runs the command; prints what it did (JSON with `json`).
pub fn run(args: &DecapArgs, json: bool) -> ExitCode {
    let result = if args.detach {
        detach(args).map(|removed| {
            if json {
                format!("{{\"detached\":{removed}}}")
            } else if removed {
                format!("decap removed from {}", args.iface)
            } else {
                format!("no decap was attached to {}", args.iface)
            }
        })
    } else if args.stats {
        read_stats(args).map(|s| {
            if json {
                // One key per counter, from its definition in lb-common.
                serde_json::to_string(&lb_model::stats::Counters(s)).unwrap_or_default()
            } else {
                format!(
                    "{}: decapsulated {}, passed {}, dropped {}",
                    args.iface, s.decapsulated, s.passed, s.dropped
                )
            }
        })
    } else {
        attach(args).map(|how| {
            if json {
                format!("{{\"attached\":\"{how}\"}}")
            } else {
                format!("decap attached to {} ({how})", args.iface)
            }
        })
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stickylb decap: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The pin directory of `iface` in this network namespace.
fn pin_dir(bpffs: &Path, iface: &str) -> Result<PathBuf> {
    if iface.is_empty() || iface.contains('/') || iface == "." || iface == ".." {
        bail!("interface name {iface:?} is not accepted: give an interface name such as eth0");
    }
    let ns = fs::read_link("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    let ns = ns.to_string_lossy();
    let inode: String = ns.chars().filter(|c| c.is_ascii_digit()).collect();
    Ok(bpffs
        .join("decap")
        .join(format!("v{DECAP_LAYOUT}"))
        .join(format!("net{inode}"))
        .join(iface))
}

/// Every address of the network namespace (`getifaddrs`).
fn host_addresses() -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs / freeifaddrs pair; the list is only read in between.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            bail!("getifaddrs: {}", std::io::Error::last_os_error());
        }
        let mut cur = head;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match (*sa).sa_family as i32 {
                    libc::AF_INET => {
                        let a = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::from(a.sin_addr.s_addr.to_ne_bytes()));
                    }
                    libc::AF_INET6 => {
                        let a = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(a.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Loads the decapsulation object with `cfg` and the strict mode's `addresses`, its maps
/// pinned in `pins` if given (not attached; the programs are loaded when attached, or
/// by [`xdp_program`] for test runs).
pub fn load(cfg: &DecapConfig, addresses: &[IpAddr], pins: Option<&Path>) -> Result<aya::Ebpf> {
    if DECAP_OBJECT.is_empty() {
        bail!(
            "this stickylb was built without its eBPF objects: rebuild it with `cargo xtask build`"
        );
    }
    let mut loader = EbpfLoader::new();
    if let Some(dir) = pins {
        for m in DECAP_MAPS {
            loader.map_pin_path(m, dir.join(m));
        }
    }
    let mut ebpf = loader
        .load(DECAP_OBJECT)
        .context("loading the decap eBPF object")?;
    let mut config: Array<&mut MapData, DecapConfig> = ebpf
        .map_mut(MAP_DECAP_CONFIG)
        .context("map DECAP_CONFIG missing")?
        .try_into()?;
    config.set(0, cfg, 0).context("writing the decap config")?;
    let mut addrs: HashMap<&mut MapData, DecapKey, u8> = ebpf
        .map_mut(MAP_DECAP_ADDRS)
        .context("map DECAP_ADDRS missing")?
        .try_into()?;
    for a in addresses {
        let (addr, family) = addr_from_ip(*a);
        let key = DecapKey {
            addr,
            family,
            _pad: [0; 3],
        };
        addrs
            .insert(&key, &1, 0)
            .with_context(|| format!("adding {a} to the strict list"))?;
    }
    Ok(ebpf)
}

/// The loaded (verified) XDP program of a decap object.
pub fn xdp_program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM_DECAP)
        .context("program stickylb_decap missing")?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load().context("verifying stickylb_decap")?;
    }
    Ok(prog)
}

/// The counters of a loaded decap object, summed over CPUs.
pub fn stats(ebpf: &aya::Ebpf) -> Result<DecapStats> {
    let map: PerCpuArray<&MapData, DecapStats> = ebpf
        .map(MAP_DECAP_STATS)
        .context("map DECAP_STATS missing")?
        .try_into()?;
    let mut sum = DecapStats::default();
    for v in map.get(&0, 0)?.iter() {
        sum.accumulate(v);
    }
    Ok(sum)
}

/// Loads the object, configures it, attaches it; returns how it attached.
pub fn attach(args: &DecapArgs) -> Result<String> {
    if ifindex(&args.iface) == 0 {
        bail!(
            "no interface {:?} in this network namespace: give the interface the encapsulated packets arrive on",
            args.iface
        );
    }
    let strict = args.strict || !args.addresses.is_empty();
    let addresses = if !args.addresses.is_empty() {
        args.addresses.clone()
    } else if strict {
        host_addresses()?
    } else {
        Vec::new()
    };
    if addresses.len() > MAX_ADDRS {
        bail!(
            "{} addresses for --strict: at most {MAX_ADDRS} are accepted; name the ones the balancer sends to with --address",
            addresses.len()
        );
    }
    let bpffs = ensure_bpffs(&args.bpffs)?;
    let dir = pin_dir(&bpffs, &args.iface)?;
    // Re-running replaces the attachment.
    remove(&dir)?;
    fs::create_dir_all(dir.join("maps")).with_context(|| format!("creating {}", dir.display()))?;
    let cfg = DecapConfig {
        flags: if strict { DECAP_STRICT } else { 0 },
        gue_port: args.gue_port.to_be(),
        _pad: 0,
    };
    let mut ebpf = load(&cfg, &addresses, Some(&dir.join("maps")))?;
    let link_pin = dir.join("link");
    let name = CString::new(args.iface.as_str()).context("interface name")?;
    let xdp = |ebpf: &mut aya::Ebpf, mode: XdpMode| -> Result<()> {
        let prog = xdp_program(ebpf)?;
        let id = prog
            .attach(name.as_c_str(), mode)
            .with_context(|| format!("attaching XDP ({mode:?}) to {}", args.iface))?;
        let link = FdLink::try_from(prog.take_link(id)?)
            .context("the kernel attached through netlink; a pinnable bpf_link is needed")?;
        link.pin(&link_pin)
            .with_context(|| format!("pinning {}", link_pin.display()))?;
        Ok(())
    };
    let tc_attach = |ebpf: &mut aya::Ebpf| -> Result<()> {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM_DECAP_TC)
            .context("program stickylb_decap_tc missing")?
            .try_into()?;
        prog.load().context("verifying stickylb_decap_tc")?;
        // clsact only matters for the netlink fallback of kernels before tcx (6.6).
        let _ = tc::qdisc_add_clsact(name.as_c_str());
        let id = prog
            .attach(name.as_c_str(), TcAttachType::Ingress)
            .with_context(|| format!("attaching tc ingress to {}", args.iface))?;
        let link = FdLink::try_from(prog.take_link(id)?)
            .context("tc attached through netlink (kernel before 6.6): no pinnable link")?;
        link.pin(&link_pin)
            .with_context(|| format!("pinning {}", link_pin.display()))?;
        Ok(())
    };
    let result = match args.mode {
        DecapMode::Native => xdp(&mut ebpf, XdpMode::Driver).map(|_| "xdp native"),
        DecapMode::Skb => xdp(&mut ebpf, XdpMode::Skb).map(|_| "xdp skb"),
        DecapMode::Tc => tc_attach(&mut ebpf).map(|_| "tc ingress"),
        DecapMode::Auto => {
            let veth = iface_driver(&args.iface).as_deref() == Some("veth");
            let first = if veth {
                xdp(&mut ebpf, XdpMode::Skb).map(|_| "xdp skb")
            } else {
                xdp(&mut ebpf, XdpMode::Driver)
                    .map(|_| "xdp native")
                    .or_else(|_| xdp(&mut ebpf, XdpMode::Skb).map(|_| "xdp skb"))
            };
            first.or_else(|e| {
                log::info!(
                    "{}: XDP not available ({e:#}); using tc ingress",
                    args.iface
                );
                tc_attach(&mut ebpf).map(|_| "tc ingress (the XDP hook is taken)")
            })
        }
    };
    match result {
        Ok(how) => Ok(how.to_string()),
        Err(e) => {
            let _ = remove(&dir);
            Err(e)
        }
    }
}

/// Removes the pins under `dir` (the link first: its last reference detaches it).
fn remove(dir: &Path) -> Result<bool> {
    let link = dir.join("link");
    let had = link.exists();
    if had {
        match PinnedLink::from_pin(&link) {
            Ok(l) => drop(l.unpin()?),
            Err(_) => fs::remove_file(&link)?,
        }
    }
    for m in DECAP_MAPS {
        let p = dir.join("maps").join(m);
        if p.exists() {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let _ = fs::remove_dir(dir.join("maps"));
    let _ = fs::remove_dir(dir);
    // The namespace's directory, once its last interface is gone.
    if let Some(ns_dir) = dir.parent() {
        let _ = fs::remove_dir(ns_dir);
    }
    Ok(had)
}

/// `--detach`: whether something was attached.
pub fn detach(args: &DecapArgs) -> Result<bool> {
    let bpffs = ensure_bpffs(&args.bpffs)?;
    remove(&pin_dir(&bpffs, &args.iface)?)
}

/// `--stats`: the counters summed over CPUs.
pub fn read_stats(args: &DecapArgs) -> Result<DecapStats> {
    let bpffs = ensure_bpffs(&args.bpffs)?;
    let path = pin_dir(&bpffs, &args.iface)?
        .join("maps")
        .join(MAP_DECAP_STATS);
    if !path.exists() {
        bail!(
            "no decap is attached to {} in this network namespace (attach it with `stickylb decap --iface {}`)",
            args.iface,
            args.iface
        );
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map: PerCpuArray<MapData, DecapStats> = Map::PerCpuArray(data).try_into()?;
    let mut sum = DecapStats::default();
    for v in map.get(&0, 0)?.iter() {
        sum.accumulate(v);
    }
    Ok(sum)
}
