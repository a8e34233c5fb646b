//! Part 3: through a real network path (namespaces and veths).
//!
//! ```text
//!  client ns                       balancer ns                        backend-i ns
//!  eth0 ── bench_gen (live frames) ─▶ to-client ─ stickylb / nft / fwd ─▶ to-be<i> ─▶ eth0: bench_count
//! ```
//!
//! * **Packets/s.** `bench_gen` runs with `BPF_PROG_TEST_RUN` in live-frames mode on the
//!   client's `eth0` (as its ingress interface): every frame it returns as `XDP_TX` is
//!   really sent out of that veth, 64-byte UDP frames from 65 536 client addresses. The
//!   backends count what arrives with `bench_count` (native XDP, counted then dropped).
//!   Cases, interleaved round by round: plain kernel forwarding to one backend (no
//!   balancing), nftables DNAT with `jhash ip saddr mod 3` (conntrack included, as the
//!   kernel does it), and stickylb (the real `stickylb run`, native XDP) in NAT and DSR
//!   mode. The whole path (generator, balancer, the backend's counter) runs in softirq on
//!   the generator's CPU: the figure is the packets one CPU gets through the whole path.
//! * **TCP connections/s.** Short connections (connect, read the backend's one-line
//!   answer, close) from 8 client addresses, 4 at a time, through stickylb (NAT) and
//!   through HAProxy (`mode tcp`, `balance roundrobin`, `stick on src`) in the balancer
//!   namespace.

use std::{
    io::Read as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use serde::Serialize;
use stickylb_tests::{
    agent::Agent,
    servers::connect_from,
    topology::{Topology, TopologyOpts, BACKEND_IF, CLIENT_IF, LB_CLIENT_IF},
    NameServer, Netns,
};

use crate::{report::median, wrapper::BENCH_OBJECT};

/// UDP port of the generated traffic (and of the backends' counter: `COUNT_PORT` in
/// `lb-bench-ebpf`).
pub const UDP_PORT: u16 = 9000;
const TCP_PORT: u16 = 80;
const BACKEND_TCP_PORT: u16 = 8080;
/// NAT VIP (UDP and TCP) and DSR VIP.
const VIP_NAT: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 100);
const VIP_DSR: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 101);
/// Generated clients: `198.19.0.0 + n`.
const CLIENT_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
const BACKENDS: usize = 3;
/// Frame size of the generated traffic (without FCS).
pub const FRAME_BYTES: usize = 64;
/// Frames per `BPF_PROG_TEST_RUN` call of the generator.
const CHUNK: u32 = 1 << 17;
/// Client addresses of the TCP test, and connections in flight.
const TCP_CLIENTS: usize = 8;
const TCP_WORKERS: usize = 4;

#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub rounds: usize,
    /// Measured time per packets/s case and round.
    pub pps_seconds: f64,
    /// Measured time per connections/s case and round.
    pub tcp_seconds: f64,
    /// Generated client addresses (a power of two).
    pub clients: u32,
    /// CPU of the generator (and so of the whole path).
    pub cpu: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct PpsResult {
    pub key: String,
    pub label: String,
    /// Median over rounds of packets/s counted at the backends.
    pub delivered_pps: f64,
    /// Median over rounds of frames/s the generator sent.
    pub sent_pps: f64,
    pub runs_delivered_pps: Vec<f64>,
    pub runs_sent_pps: Vec<f64>,
    /// Share of the delivered packets per backend (last round).
    pub backend_share: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnResult {
    pub key: String,
    pub label: String,
    /// Median over rounds of completed connections per second.
    pub conn_per_s: f64,
    pub runs_conn_per_s: Vec<f64>,
    /// Failed connections (all rounds).
    pub errors: u64,
    /// Connections per backend (last round).
    pub per_backend: Vec<u64>,
    /// Client addresses that reached more than one backend (last round): 0 = sticky.
    pub clients_moved: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub what: String,
    /// Median over rounds of the per-round ratio.
    pub ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct NetpathReport {
    pub options: Options,
    pub frame_bytes: usize,
    pub pps: Vec<PpsResult>,
    pub tcp: Vec<ConnResult>,
    pub ratios: Vec<Ratio>,
    pub haproxy_version: String,
    pub elapsed_s: f64,
}

/// The generator's configuration; same layout as `GenConfig` in `lb-bench-ebpf`.
#[repr(C)]
#[derive(Clone, Copy)]
struct GenConfig {
    src_base: u32,
    src_mask: u32,
    ip_sum: u32,
    _pad: u32,
    header: [u64; 6],
}

// SAFETY: `#[repr(C)]`, integers only, no padding.
unsafe impl aya::Pod for GenConfig {}

/// `xdp_md` as `BPF_PROG_TEST_RUN` takes it in `ctx_in`.
#[repr(C)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

struct Generator {
    ebpf: Ebpf,
    cfg: Array<MapData, GenConfig>,
    ifindex: u32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    clients: u32,
}

impl Generator {
    fn new(topo: &Topology, clients: u32) -> Result<Generator> {
        let mut ebpf = EbpfLoader::new()
            .load(BENCH_OBJECT)
            .context("loading lb-bench-ebpf")?;
        let prog: &mut Xdp = ebpf
            .program_mut("bench_gen")
            .context("program bench_gen")?
            .try_into()?;
        prog.load().context("verifying bench_gen")?;
        let cfg = Array::try_from(ebpf.take_map("GEN").context("map GEN")?)?;
        Ok(Generator {
            ebpf,
            cfg,
            ifindex: topo.client().ifindex(CLIENT_IF)?,
            src_mac: topo.client().mac(CLIENT_IF)?,
            dst_mac: topo.lb().mac(LB_CLIENT_IF)?,
            clients,
        })
    }

    /// Frames to `dst:UDP_PORT`.
    fn target(&mut self, dst: Ipv4Addr) -> Result<()> {
        let frame = self.frame(dst);
        let mut header = [0u64; 6];
        for (i, w) in header.iter_mut().enumerate() {
            *w = u64::from_ne_bytes(frame[8 * i..8 * i + 8].try_into()?);
        }
        // One's-complement sum of the IPv4 header without the source address.
        let ip = &frame[14..34];
        let mut sum: u32 = 0;
        for i in (0..20).step_by(2) {
            if (12..16).contains(&i) {
                continue;
            }
            sum += u32::from(u16::from_be_bytes([ip[i], ip[i + 1]]));
        }
        sum = (sum & 0xffff) + (sum >> 16);
        let cfg = GenConfig {
            src_base: u32::from(CLIENT_BASE),
            src_mask: self.clients - 1,
            ip_sum: sum,
            _pad: 0,
            header,
        };
        self.cfg.set(0, &cfg, 0).context("writing GEN")
    }

    /// A 64-byte UDP frame (client address and IPv4 checksum left to the program).
    fn frame(&self, dst: Ipv4Addr) -> [u8; FRAME_BYTES] {
        let mut f = [0u8; FRAME_BYTES];
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (FRAME_BYTES - 14) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[22] = 64; // TTL
        f[23] = 17; // UDP
        f[26..30].copy_from_slice(&CLIENT_BASE.octets());
        f[30..34].copy_from_slice(&dst.octets());
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&UDP_PORT.to_be_bytes());
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        f
    }

    /// Sends `frames` frames (in chunks) from the client namespace; returns the frames
    /// sent and the wall time.
    fn send(&self, client: &Netns, frames: u64) -> Result<()> {
        let prog: &Xdp = self
            .ebpf
            .program("bench_gen")
            .context("bench_gen")?
            .try_into()?;
        let pkt = self.frame(CLIENT_BASE);
        let md = XdpMd {
            data: 0,
            data_end: FRAME_BYTES as u32,
            data_meta: 0,
            ingress_ifindex: self.ifindex,
            rx_queue_index: 0,
            egress_ifindex: 0,
        };
        // SAFETY: plain `#[repr(C)]` struct of u32s viewed as bytes.
        let ctx = unsafe {
            std::slice::from_raw_parts(
                (&md as *const XdpMd).cast::<u8>(),
                std::mem::size_of::<XdpMd>(),
            )
        };
        client.enter(|| {
            let mut left = frames;
            while left > 0 {
                let n = left.min(u64::from(CHUNK)) as u32;
                let r = prog
                    .test_run(TestRunOptions {
                        data_in: Some(&pkt),
                        ctx_in: Some(ctx),
                        repeat: n,
                        attrs: TestRunAttrs::new().xdp_live_frames(64),
                        ..Default::default()
                    })
                    .context("BPF_PROG_TEST_RUN (live frames)")?;
                ensure!(
                    r.return_value == 0 || r.return_value == 3,
                    "generator returned {}",
                    r.return_value
                );
                left -= u64::from(n);
            }
            Ok(())
        })
    }

    /// Sends for about `seconds` (in whole chunks); returns (frames, elapsed).
    fn send_for(&self, client: &Netns, seconds: f64) -> Result<(u64, f64)> {
        let start = Instant::now();
        let mut frames = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            self.send(client, u64::from(CHUNK))?;
            frames += u64::from(CHUNK);
        }
        Ok((frames, start.elapsed().as_secs_f64()))
    }
}

/// `bench_count` attached (native XDP) on every backend's `eth0`; detached on drop.
struct Counters {
    objs: Vec<(Ebpf, PerCpuArray<MapData, u64>)>,
}

impl Counters {
    fn attach(topo: &Topology) -> Result<Counters> {
        let mut objs = Vec::new();
        for b in topo.backends() {
            let mut ebpf = EbpfLoader::new().load(BENCH_OBJECT)?;
            let count = PerCpuArray::try_from(ebpf.take_map("COUNT").context("map COUNT")?)?;
            {
                let prog: &mut Xdp = ebpf
                    .program_mut("bench_count")
                    .context("bench_count")?
                    .try_into()?;
                prog.load().context("verifying bench_count")?;
                b.ns.enter(|| {
                    prog.attach(c"eth0", XdpMode::Driver)
                        .with_context(|| format!("attaching bench_count in {}", b.ns.name()))
                })?;
            }
            objs.push((ebpf, count));
        }
        Ok(Counters { objs })
    }

    /// Counted packets per backend.
    fn read(&self) -> Result<Vec<u64>> {
        self.objs
            .iter()
            .map(|(_, c)| Ok(c.get(&0, 0)?.iter().sum()))
            .collect()
    }
}

/// `RedirectConfig` of `lb-bench-ebpf`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RedirectConfig {
    ifindex: u32,
    macs: [u8; 12],
}

// SAFETY: `#[repr(C)]`, a u32 then 12 bytes: no padding.
unsafe impl aya::Pod for RedirectConfig {}

/// `bench_redirect` on the balancer's client side (native XDP), sending everything to
/// backend 1: the floor of an XDP balancer on this path. Detached on drop.
struct RedirectFloor {
    _ebpf: Ebpf,
}

impl RedirectFloor {
    fn attach(topo: &Topology) -> Result<RedirectFloor> {
        let b = topo.backend(1);
        let mut ebpf = EbpfLoader::new().load(BENCH_OBJECT)?;
        let mut cfg: Array<MapData, RedirectConfig> =
            Array::try_from(ebpf.take_map("REDIRECT").context("map REDIRECT")?)?;
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&b.ns.mac(BACKEND_IF)?);
        macs[6..].copy_from_slice(&topo.lb().mac(&b.lb_ifname)?);
        cfg.set(
            0,
            &RedirectConfig {
                ifindex: topo.lb().ifindex(&b.lb_ifname)?,
                macs,
            },
            0,
        )?;
        {
            let prog: &mut Xdp = ebpf
                .program_mut("bench_redirect")
                .context("bench_redirect")?
                .try_into()?;
            prog.load().context("verifying bench_redirect")?;
            topo.lb().enter(|| {
                prog.attach(c"to-client", XdpMode::Driver)
                    .context("attaching bench_redirect")
            })?;
        }
        Ok(RedirectFloor { _ebpf: ebpf })
    }
}

/// An nftables table in a namespace, deleted on drop.
struct NftTable<'a> {
    ns: &'a Netns,
    dir: PathBuf,
}

const NFT_TABLE: &str = "stickylb_bench";

impl<'a> NftTable<'a> {
    fn jhash_dnat(ns: &'a Netns, backends: &[Ipv4Addr]) -> Result<NftTable<'a>> {
        let map: Vec<String> = backends
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{i} : {a}"))
            .collect();
        let rules = format!(
            "table ip {NFT_TABLE} {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
             ip daddr {VIP_NAT} udp dport {UDP_PORT} dnat to jhash ip saddr mod {} map {{ {} }}\n  }}\n}}\n",
            backends.len(),
            map.join(", ")
        );
        let dir = std::env::temp_dir().join(format!("stickylb-bench-nft-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("rules.nft");
        std::fs::write(&file, rules)?;
        let t = NftTable { ns, dir };
        ns.exec(&["nft", "-f", &file.display().to_string()])
            .context("loading the nftables DNAT rules")?;
        Ok(t)
    }
}

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        let _ = self.ns.exec(&["nft", "delete", "table", "ip", NFT_TABLE]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// HAProxy in the balancer namespace, killed on drop (with the VIP it listens on).
struct Haproxy<'a> {
    ns: &'a Netns,
    child: Child,
    dir: PathBuf,
}

/// Installs HAProxy from the Debian archive unless it is on the PATH.
pub fn ensure_haproxy() -> Result<String> {
    let version = || {
        Command::new("haproxy")
            .arg("-v")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
    };
    if let Some(v) = version() {
        return Ok(v);
    }
    println!("installing haproxy (apt-get install -y haproxy) ...");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "haproxy"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("running apt-get")?
        .success();
    if !ok {
        let _ = Command::new("apt-get")
            .args(["update", "-q"])
            .stdout(Stdio::null())
            .status();
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "haproxy"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()?
            .success();
        ensure!(ok, "apt-get install haproxy failed");
    }
    version().context("haproxy installed but `haproxy -v` fails")
}

impl<'a> Haproxy<'a> {
    fn start(ns: &'a Netns, backends: &[Ipv4Addr]) -> Result<Haproxy<'a>> {
        let dir =
            std::env::temp_dir().join(format!("stickylb-bench-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut cfg = format!(
            "global\n    maxconn 4000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
             timeout client 30s\n    timeout server 30s\n\nfrontend fe\n    bind {VIP_NAT}:{TCP_PORT}\n    \
             default_backend be\n\nbackend be\n    balance roundrobin\n    \
             stick-table type ip size 200k expire 30m\n    stick on src\n"
        );
        for (i, b) in backends.iter().enumerate() {
            cfg.push_str(&format!("    server s{} {b}:{BACKEND_TCP_PORT}\n", i + 1));
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, cfg)?;
        ns.ip(&["addr", "add", &format!("{VIP_NAT}/32"), "dev", "lo"])?;
        let log = std::fs::File::create(dir.join("haproxy.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "haproxy", "-db", "-f"])
            .arg(&file)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = ns.ip(&["addr", "del", &format!("{VIP_NAT}/32"), "dev", "lo"]);
                return Err(e).context("starting haproxy");
            }
        };
        let mut h = Haproxy { ns, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listening = ns
                .exec(&["ss", "-Hltn", &format!("sport = :{TCP_PORT}")])
                .map(|o| !o.trim().is_empty())
                .unwrap_or(false);
            if listening {
                return Ok(h);
            }
            if let Some(st) = h.child.try_wait()? {
                let log = std::fs::read_to_string(h.dir.join("haproxy.log")).unwrap_or_default();
                bail!("haproxy exited with {st}: {}", log.trim());
            }
            ensure!(
                Instant::now() < deadline,
                "haproxy not listening after 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Haproxy<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self
            .ns
            .ip(&["addr", "del", &format!("{VIP_NAT}/32"), "dev", "lo"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn agent_config(backends: &[Ipv4Addr]) -> String {
    let mut s = String::new();
    for (name, vip, port, proto, fwd, bport) in [
        ("udp-nat", VIP_NAT, UDP_PORT, "udp", "nat", Some(UDP_PORT)),
        ("udp-dsr", VIP_DSR, UDP_PORT, "udp", "dsr", None),
        (
            "tcp-nat",
            VIP_NAT,
            TCP_PORT,
            "tcp",
            "nat",
            Some(BACKEND_TCP_PORT),
        ),
    ] {
        s.push_str(&format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"{vip}:{port}\"\nprotocol = \"{proto}\"\n\
             forwarding = \"{fwd}\"\nstick_table = {{ size = \"200k\", expire = \"30m\" }}\n\
             health = {{ kind = \"none\" }}\n"
        ));
        for b in backends {
            match bport {
                Some(p) => s.push_str(&format!("[[service.backend]]\naddress = \"{b}:{p}\"\n")),
                None => s.push_str(&format!("[[service.backend]]\naddress = \"{b}\"\n")),
            }
        }
        s.push('\n');
    }
    s
}

struct Pps {
    key: &'static str,
    label: &'static str,
    delivered: Vec<f64>,
    sent: Vec<f64>,
    share: Vec<f64>,
}

struct Conn {
    key: &'static str,
    label: &'static str,
    rates: Vec<f64>,
    errors: u64,
    per_backend: Vec<u64>,
    moved: usize,
}

/// Runs part 3.
pub fn run(opts: &Options, haproxy_version: String) -> Result<NetpathReport> {
    let started = Instant::now();
    ensure!(
        opts.clients.is_power_of_two() && opts.clients <= 1 << 16,
        "--clients must be a power of two ≤ 65536"
    );
    let topo = Topology::build(TopologyOpts {
        backends: BACKENDS,
        clients: TCP_CLIENTS,
        vip_on_backend_lo: false,
        native_xdp: true,
        ..Default::default()
    })
    .context("building the namespaces")?;
    let lb = topo.lb();
    let backends = topo.backend_v4s();
    // Permanent neighbours (the backends' counters pass ARP, but no resolution during a
    // measurement), a route back to the generated clients, room for many connections.
    for b in topo.backends() {
        let mac = b.ns.mac(BACKEND_IF)?;
        let mac = mac
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        lb.ip(&[
            "neigh",
            "replace",
            &b.v4.to_string(),
            "lladdr",
            &mac,
            "dev",
            &b.lb_ifname,
            "nud",
            "permanent",
        ])?;
        b.ns.sysctls(&[
            ("net.core.somaxconn", "4096"),
            ("net.ipv4.tcp_max_syn_backlog", "4096"),
        ])?;
    }
    let client_mac = topo
        .client()
        .mac(CLIENT_IF)?
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    for a in std::iter::once(topo.client_primary_v4()).chain(topo.client_v4s().iter().copied()) {
        lb.ip(&[
            "neigh",
            "replace",
            &a.to_string(),
            "lladdr",
            &client_mac,
            "dev",
            LB_CLIENT_IF,
            "nud",
            "permanent",
        ])?;
    }
    lb.ip(&[
        "route",
        "add",
        &format!("{CLIENT_BASE}/16"),
        "via",
        &topo.client_primary_v4().to_string(),
        "dev",
        LB_CLIENT_IF,
    ])?;
    for ns in [topo.client(), lb] {
        ns.sysctls(&[
            ("net.ipv4.ip_local_port_range", "1024 65000"),
            ("net.ipv4.tcp_tw_reuse", "1"),
        ])?;
    }
    let counters = Counters::attach(&topo)?;
    let mut gen = Generator::new(&topo, opts.clients)?;
    let servers: Vec<NameServer> = topo
        .backends()
        .iter()
        .map(|b| NameServer::spawn(&b.ns, BACKEND_TCP_PORT, &b.name))
        .collect::<Result<_>>()?;
    let lb_ifs: Vec<&str> = std::iter::once(LB_CLIENT_IF)
        .chain(topo.lb_backend_ifs())
        .collect();
    let config = agent_config(&backends);

    let mut pps = vec![
        Pps::new("fwd", "kernel forwarding, no balancing"),
        Pps::new("floor", "XDP redirect, no lookup (floor)"),
        Pps::new("nft", "nftables DNAT, jhash ip saddr mod 3"),
        Pps::new("slb_nat", "stickylb NAT (native XDP)"),
        Pps::new("slb_dsr", "stickylb DSR (native XDP)"),
    ];
    let mut conns = vec![
        Conn::new("slb_tcp", "stickylb NAT (native XDP)"),
        Conn::new("haproxy_tcp", "HAProxy mode tcp, stick on src"),
    ];
    let measure = |gen: &mut Generator, dst: Ipv4Addr, p: &mut Pps, balanced: bool| -> Result<()> {
        gen.target(dst)?;
        // Warm-up: every client once or more (stick entries, conntrack entries).
        gen.send(topo.client(), u64::from(opts.clients) * 2)?;
        let before = counters.read()?;
        let (frames, secs) = gen.send_for(topo.client(), opts.pps_seconds)?;
        let after = counters.read()?;
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let total: u64 = delta.iter().sum();
        ensure!(
            total > 0,
            "{}: no packet reached a backend ({frames} sent)",
            p.label
        );
        let share: Vec<f64> = delta.iter().map(|&d| d as f64 / total as f64).collect();
        if balanced {
            ensure!(
                share.iter().all(|&s| s > 0.05),
                "{}: backends got {share:?} of the packets: not balanced",
                p.label
            );
        }
        p.delivered.push(total as f64 / secs);
        p.sent.push(frames as f64 / secs);
        p.share = share;
        println!(
            "  {:<42} {:>7.3} Mpps delivered ({:.3} Mpps sent)",
            p.label,
            total as f64 / secs / 1e6,
            frames as f64 / secs / 1e6
        );
        Ok(())
    };

    for round in 0..opts.rounds {
        println!("network path, round {}/{} ...", round + 1, opts.rounds);
        measure(&mut gen, backends[0], &mut pps[0], false)?;
        {
            let _floor = RedirectFloor::attach(&topo)?;
            measure(&mut gen, VIP_NAT, &mut pps[1], false)?;
        }
        {
            let _nft = NftTable::jhash_dnat(lb, &backends)?;
            measure(&mut gen, VIP_NAT, &mut pps[2], true)?;
        }
        {
            let agent = Agent::start(lb, &lb_ifs, &config, &["--xdp-mode", "native"])
                .context("starting stickylb")?;
            let status = agent.ok(&["status"])?;
            let modes: Vec<String> = status["interfaces"]
                .as_array()
                .map(|a| a.iter().map(|i| i["xdp"].to_string()).collect())
                .unwrap_or_default();
            ensure!(
                modes.iter().all(|m| m.contains("native")),
                "stickylb not attached in native mode: {modes:?}"
            );
            measure(&mut gen, VIP_NAT, &mut pps[3], true)?;
            measure(&mut gen, VIP_DSR, &mut pps[4], true)?;
            tcp_round(&topo, &servers, &mut conns[0], opts.tcp_seconds)?;
        }
        {
            let _h = Haproxy::start(lb, &backends)?;
            tcp_round(&topo, &servers, &mut conns[1], opts.tcp_seconds)?;
        }
    }
    drop(counters);

    let paired = |a: &[f64], b: &[f64]| {
        let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        median(&r)
    };
    let mut ratios = Vec::new();
    // stickylb NAT and DSR against nftables, kernel forwarding and the XDP floor;
    // nftables against forwarding.
    for (a, b) in [(3, 2), (4, 2), (3, 0), (4, 0), (3, 1), (4, 1), (2, 0)] {
        ratios.push(Ratio {
            what: format!("{} / {}", pps[a].label, pps[b].label),
            ratio: paired(&pps[a].delivered, &pps[b].delivered),
        });
    }
    ratios.push(Ratio {
        what: format!("{} / {} (TCP conn/s)", conns[0].label, conns[1].label),
        ratio: paired(&conns[0].rates, &conns[1].rates),
    });
    Ok(NetpathReport {
        options: opts.clone(),
        frame_bytes: FRAME_BYTES,
        pps: pps.into_iter().map(Pps::result).collect(),
        tcp: conns.into_iter().map(Conn::result).collect(),
        ratios,
        haproxy_version,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

impl Pps {
    fn new(key: &'static str, label: &'static str) -> Pps {
        Pps {
            key,
            label,
            delivered: Vec::new(),
            sent: Vec::new(),
            share: Vec::new(),
        }
    }

    fn result(self) -> PpsResult {
        PpsResult {
            key: self.key.into(),
            label: self.label.into(),
            delivered_pps: median(&self.delivered),
            sent_pps: median(&self.sent),
            runs_delivered_pps: self.delivered,
            runs_sent_pps: self.sent,
            backend_share: self.share,
        }
    }
}

impl Conn {
    fn new(key: &'static str, label: &'static str) -> Conn {
        Conn {
            key,
            label,
            rates: Vec::new(),
            errors: 0,
            per_backend: Vec::new(),
            moved: 0,
        }
    }

    fn result(self) -> ConnResult {
        ConnResult {
            key: self.key.into(),
            label: self.label.into(),
            conn_per_s: median(&self.rates),
            runs_conn_per_s: self.rates,
            errors: self.errors,
            per_backend: self.per_backend,
            clients_moved: self.moved,
        }
    }
}

/// Short TCP connections to the VIP for `seconds` (after 0.5 s of warm-up), from the
/// topology's extra client addresses, `TCP_WORKERS` at a time, on every CPU.
fn tcp_round(topo: &Topology, servers: &[NameServer], c: &mut Conn, seconds: f64) -> Result<()> {
    let vip = SocketAddr::new(IpAddr::V4(VIP_NAT), TCP_PORT);
    let sources: Vec<IpAddr> = topo.client_v4s().iter().map(|a| IpAddr::V4(*a)).collect();
    let run = |secs: f64| -> Result<(u64, u64, f64)> {
        let ok = AtomicU64::new(0);
        let err = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        topo.client().enter(|| {
            std::thread::scope(|s| {
                for w in 0..TCP_WORKERS {
                    let (ok, err, stop, sources) = (&ok, &err, &stop, &sources);
                    s.spawn(move || {
                        unpin();
                        let mut i = w;
                        while !stop.load(Ordering::Relaxed) {
                            let src = sources[i % sources.len()];
                            i += TCP_WORKERS;
                            let r = connect_from(src, vip, Duration::from_secs(2)).and_then(
                                |mut st| {
                                    let mut buf = Vec::with_capacity(32);
                                    st.read_to_end(&mut buf)?;
                                    ensure!(!buf.is_empty(), "empty answer");
                                    Ok(())
                                },
                            );
                            match r {
                                Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                                Err(_) => err.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    });
                }
                std::thread::sleep(Duration::from_secs_f64(secs));
                stop.store(true, Ordering::Relaxed);
            });
            Ok(())
        })?;
        Ok((
            ok.load(Ordering::Relaxed),
            err.load(Ordering::Relaxed),
            start.elapsed().as_secs_f64(),
        ))
    };
    run(0.5)?;
    for s in servers {
        s.reset();
    }
    let (ok, err, secs) = run(seconds)?;
    ensure!(ok > 0, "{}: no TCP connection completed", c.label);
    ensure!(
        err * 100 <= ok,
        "{}: {err} of {} connections failed",
        c.label,
        ok + err
    );
    c.errors += err;
    c.rates.push(ok as f64 / secs);
    c.per_backend = servers.iter().map(NameServer::connections).collect();
    let mut seen: std::collections::HashMap<IpAddr, usize> = Default::default();
    for s in servers {
        for p in s.peers() {
            *seen.entry(p).or_default() += 1;
        }
    }
    c.moved = seen.values().filter(|&&n| n > 1).count();
    println!(
        "  {:<42} {:>7.0} conn/s ({err} failed; per backend {:?})",
        c.label,
        ok as f64 / secs,
        c.per_backend
    );
    Ok(())
}

/// Lets the calling thread run on every online CPU (the bench pins itself to one).
pub fn unpin() {
    // SAFETY: cpu_set_t is plain data; all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    for c in 0..n.min(libc::CPU_SETSIZE as usize) {
        // SAFETY: c below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: valid pointer and size.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
}

impl NetpathReport {
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{:<46} {:>14} {:>11} {:>18}",
            "network path (64-byte UDP, 65 536 clients)",
            "delivered Mpps",
            "sent Mpps",
            "share per backend"
        );
        for p in &self.pps {
            let _ = writeln!(
                out,
                "{:<46} {:>14.3} {:>11.3} {:>18}",
                p.label,
                p.delivered_pps / 1e6,
                p.sent_pps / 1e6,
                shares(&p.backend_share)
            );
        }
        let _ = writeln!(
            out,
            "\n{:<46} {:>14} {:>11}",
            "TCP, short connections", "conn/s", "failed"
        );
        for c in &self.tcp {
            let _ = writeln!(
                out,
                "{:<46} {:>14.0} {:>11}",
                c.label, c.conn_per_s, c.errors
            );
        }
        let _ = writeln!(out);
        for r in &self.ratios {
            let _ = writeln!(out, "ratio {:<86} {:>6.2}", r.what, r.ratio);
        }
        out
    }

    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let o = &self.options;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n### Through a real network path\n\n{} round(s) × {} s per case, median; {}-byte UDP frames \
             from {} client addresses; generator and path on CPU {}; took {:.0} s.\n",
            o.rounds, o.pps_seconds, self.frame_bytes, o.clients, o.cpu, self.elapsed_s
        );
        let _ = writeln!(
            out,
            "| path | delivered Mpps | sent Mpps | share per backend |\n|---|---:|---:|---|"
        );
        for p in &self.pps {
            let _ = writeln!(
                out,
                "| {} | {:.3} | {:.3} | {} |",
                p.label,
                p.delivered_pps / 1e6,
                p.sent_pps / 1e6,
                shares(&p.backend_share)
            );
        }
        let _ = writeln!(
            out,
            "\n| TCP, short connections ({} s × {} rounds) | conn/s | failed | connections per backend | clients on > 1 backend |\n|---|---:|---:|---|---:|",
            o.tcp_seconds, o.rounds
        );
        for c in &self.tcp {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {:?} | {} |",
                c.label, c.conn_per_s, c.errors, c.per_backend, c.clients_moved
            );
        }
        let _ = writeln!(
            out,
            "\n| ratio (median of per-round ratios) | |\n|---|---:|"
        );
        for r in &self.ratios {
            let _ = writeln!(out, "| {} | {:.2} |", r.what, r.ratio);
        }
        let _ = writeln!(out, "\nHAProxy: {}", self.haproxy_version);
        out
    }

    /// Bars: delivered Mpps per path, then TCP conn/s (own scale).
    pub fn svg(&self, m: &crate::report::Machine) -> String {
        use std::fmt::Write as _;
        let xml = crate::report::xml;
        let (label_w, bar_w, row_h) = (300.0, 440.0, 24.0);
        let width = label_w + bar_w + 150.0;
        let top = 70.0;
        let rows = self.pps.len() + self.tcp.len();
        let height = top + rows as f64 * row_h + 40.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r##"<rect width="100%" height="100%" fill="#ffffff"/>
<text x="10" y="20" font-size="15" font-weight="bold">Through veths: packets/s delivered to the backends, TCP connections/s</text>
<text x="10" y="38" fill="#555">{} · {} CPUs · kernel {} · {}-byte UDP from {} clients, whole path on one CPU · median of {} round(s)</text>
<text x="10" y="54" fill="#555">grey: kernel (forwarding, nftables), blue: stickylb, purple: HAProxy</text>"##,
            xml(&m.cpu_model),
            m.nproc,
            xml(&m.kernel),
            self.frame_bytes,
            self.options.clients,
            self.options.rounds
        );
        let max_pps = self.pps.iter().map(|p| p.delivered_pps).fold(1.0, f64::max);
        let max_conn = self.tcp.iter().map(|c| c.conn_per_s).fold(1.0, f64::max);
        let mut y = top;
        let mut bar =
            |s: &mut String, label: &str, v: f64, max: f64, colour: &str, text: String| {
                let w = (v / max * bar_w).max(0.5);
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>
<rect x="{label_w}" y="{:.1}" width="{w:.1}" height="16" fill="{colour}"/>
<text x="{:.1}" y="{:.1}">{}</text>"##,
                    label_w - 8.0,
                    y + 14.0,
                    xml(label),
                    y + 2.0,
                    label_w + w + 5.0,
                    y + 14.0,
                    text
                );
                y += row_h;
            };
        for p in &self.pps {
            let colour = if p.key.starts_with("slb") {
                "#2e86de"
            } else {
                "#7f8c8d"
            };
            bar(
                &mut s,
                &p.label,
                p.delivered_pps,
                max_pps,
                colour,
                format!("{:.2} Mpps", p.delivered_pps / 1e6),
            );
        }
        for c in &self.tcp {
            let colour = if c.key.starts_with("slb") {
                "#2e86de"
            } else {
                "#8e44ad"
            };
            bar(
                &mut s,
                &format!("TCP conn/s: {}", c.label),
                c.conn_per_s,
                max_conn,
                colour,
                format!("{:.0} conn/s", c.conn_per_s),
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn shares(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{:.0} %", x * 100.0))
        .collect::<Vec<_>>()
        .join(" / ")
}
