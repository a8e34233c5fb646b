//! Part 4: the control plane, with the real `stickylb run`.
//!
//! * **Command to data path.** An agent with a round-robin and a Maglev service of N
//!   backends each (N = 10, 1000; health checks off). A `backend.weight` request (1 ↔ 2)
//!   is sent over the control socket while this process polls the agent's pinned maps; the
//!   change is in the data path when the service's `SERVICES` entry points at the new
//!   selection table (the agent writes the backend slot, then the whole table into the
//!   inactive buffer, then flips the service entry) and the backend slot holds the new
//!   weight. The time from sending the request to that moment is reported, with the
//!   time the answer arrived.
//! * **Health-check CPU.** An agent with 1000 backends (10 addresses × 100 ports in a
//!   backend namespace, all listening) checked over TCP every second; the agent's CPU
//!   time (`utime + stime` of `/proc/<pid>/stat`) over a window, as a share of one CPU.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use lb_agent::{control, pins::PinLayout};
use lb_common::{Backend, Endpoint, ServiceInfo, MAP_BACKENDS, MAP_SERVICES};
use lb_model::{config::values::Weight, control::Request};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use stickylb_tests::{
    agent::{Agent, TEST_BPFFS},
    topology::{Topology, TopologyOpts, BACKEND_IF, LB_CLIENT_IF},
    Netns,
};

use crate::{netpath::unpin, report::median};

#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Changes measured per (backends, scheduler).
    pub samples: usize,
    /// Window of the health-check CPU measurement.
    pub hc_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub backends: usize,
    pub scheduler: String,
    /// Slots of the selection table the change rewrote.
    pub table_slots: u32,
    /// Median ms from sending the request to the data path showing the change.
    pub visible_ms: f64,
    pub visible_max_ms: f64,
    /// Median ms from sending the request to the agent's answer.
    pub answer_ms: f64,
    pub runs_visible_ms: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HealthCpu {
    pub backends: usize,
    pub interval_s: f64,
    pub window_s: f64,
    /// Agent CPU time / wall time, in % of one CPU.
    pub cpu_percent: f64,
    /// The same agent before the checks (health `none`), for comparison.
    pub idle_cpu_percent: f64,
    /// Connections the backends accepted per second during the window.
    pub checks_per_s: f64,
    pub backends_up: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ControlReport {
    pub options: Options,
    pub latency: Vec<Latency>,
    pub health: HealthCpu,
    pub elapsed_s: f64,
}

const SCHEDULERS: [(&str, &str, Ipv4Addr); 2] = [
    ("rr", "roundrobin", Ipv4Addr::new(198, 18, 200, 1)),
    ("mg", "maglev", Ipv4Addr::new(198, 18, 200, 2)),
];

/// Backend i of a latency service (addresses need not exist: no health checks).
fn cp_backend(i: usize) -> SocketAddr {
    SocketAddr::new(
        Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250 + 1) as u8).into(),
        8080,
    )
}

fn config(health: &str, backends: &[SocketAddr], sched: &[(&str, &str, Ipv4Addr)]) -> String {
    let mut s = String::new();
    // NAT services cannot share a backend address:port: service j uses port + j.
    for (j, (name, scheduler, vip)) in sched.iter().enumerate() {
        s.push_str(&format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"{vip}:80\"\nscheduler = \"{scheduler}\"\n\
             health = {health}\n"
        ));
        for b in backends {
            let b = SocketAddr::new(b.ip(), b.port() + j as u16);
            s.push_str(&format!("[[service.backend]]\naddress = \"{b}\"\n"));
        }
        s.push('\n');
    }
    s
}

/// The agent's pinned `SERVICES` and `BACKENDS` maps.
type PinnedMaps = (
    HashMap<MapData, Endpoint, ServiceInfo>,
    Array<MapData, Backend>,
);

fn open_maps(agent: &Agent) -> Result<PinnedMaps> {
    let layout = PinLayout::new(Path::new(TEST_BPFFS), &agent.instance);
    let services = MapData::from_pin(layout.map(MAP_SERVICES)).context("pinned SERVICES")?;
    let backends = MapData::from_pin(layout.map(MAP_BACKENDS)).context("pinned BACKENDS")?;
    Ok((
        HashMap::try_from(Map::HashMap(services))?,
        Array::try_from(Map::Array(backends))?,
    ))
}

/// The agent's pid (from `status`).
fn agent_pid(agent: &Agent) -> Result<u32> {
    let st = agent.ok(&["status"])?;
    st["pid"]
        .as_u64()
        .map(|p| p as u32)
        .context("status has no pid")
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = text.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / hz)
}

pub fn run(opts: &Options) -> Result<ControlReport> {
    let started = Instant::now();
    unpin();
    let ns = Netns::new("cp")?;
    ns.ip_batch(&[
        "link add d0 type veth peer name d1",
        "link set d0 up",
        "link set d1 up",
    ])?;
    let mut latency = Vec::new();
    for n in [10usize, 1000] {
        let backends: Vec<SocketAddr> = (0..n).map(cp_backend).collect();
        let agent = Agent::start(
            &ns,
            &["d0"],
            &config("{ kind = \"none\" }", &backends, &SCHEDULERS),
            &[],
        )
        .with_context(|| format!("starting stickylb with {n} backends"))?;
        let (services, bmap) = open_maps(&agent)?;
        let list = agent.ok(&["backend", "list"])?;
        for (j, (svc, sched, vip)) in SCHEDULERS.into_iter().enumerate() {
            let target = backends[n / 2];
            let target = SocketAddr::new(target.ip(), target.port() + j as u16);
            let id = list
                .as_array()
                .or_else(|| list["backends"].as_array())
                .context("backend list")?
                .iter()
                .find(|b| b["service"] == svc && b["address"] == target.to_string())
                .and_then(|b| b["id"].as_u64())
                .with_context(|| format!("backend {target} of {svc} in {list}"))?
                as u32;
            let key = services
                .iter()
                .filter_map(|r| r.ok())
                .map(|(k, _)| k)
                .find(|k| k.addr[0] == u32::from_ne_bytes(vip.octets()))
                .context("service entry")?;
            let mut runs = Vec::new();
            let mut answers = Vec::new();
            let mut slots = 0;
            for k in 0..opts.samples {
                let weight = if k % 2 == 0 { 2 } else { 1 };
                let before = services.get(&key, 0)?;
                let req = Request::BackendWeight {
                    service: svc.into(),
                    address: target.to_string(),
                    weight: Weight(weight),
                };
                let socket = agent.socket.clone();
                let t0 = Instant::now();
                let answer = std::thread::spawn(move || {
                    let r = control::request(&socket, &req, Duration::from_secs(30));
                    (r, t0.elapsed())
                });
                let visible = loop {
                    let now = services.get(&key, 0)?;
                    if now != before && bmap.get(&id, 0)?.weight == weight {
                        slots = now.ring_len;
                        break t0.elapsed();
                    }
                    ensure!(
                        t0.elapsed() < Duration::from_secs(30),
                        "{svc}: change not visible after 30 s"
                    );
                    std::thread::sleep(Duration::from_micros(20));
                };
                let (r, answered) = answer.join().expect("control thread");
                let r = r.map_err(|e| anyhow::anyhow!("{e}"))?;
                ensure!(r.ok, "backend.weight refused: {:?}", r.error);
                runs.push(visible.as_secs_f64() * 1e3);
                answers.push(answered.as_secs_f64() * 1e3);
            }
            let l = Latency {
                backends: n,
                scheduler: sched.into(),
                table_slots: slots,
                visible_ms: median(&runs),
                visible_max_ms: runs.iter().copied().fold(0.0, f64::max),
                answer_ms: median(&answers),
                runs_visible_ms: runs,
            };
            println!(
                "  {n:>5} backends, {sched:<10} weight change visible after {:>8.2} ms (median; answer {:.2} ms; {} slots)",
                l.visible_ms, l.answer_ms, l.table_slots
            );
            latency.push(l);
        }
    }
    drop(ns);
    let health = health_cpu(opts)?;
    Ok(ControlReport {
        options: opts.clone(),
        latency,
        health,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// Listeners on `ports` (every address) that accept and close, counting connections.
struct Acceptor {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Acceptor {
    fn spawn(ns: &Netns, ports: std::ops::Range<u16>) -> Result<Acceptor> {
        let listeners: Vec<Socket> = ns.enter(|| {
            ports
                .clone()
                .map(|p| {
                    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                    s.set_reuse_address(true)?;
                    s.bind(&SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), p).into())?;
                    s.listen(1024)?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
                .collect()
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (st, ct) = (stop.clone(), count.clone());
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd as _;
            let mut fds: Vec<libc::pollfd> = listeners
                .iter()
                .map(|l| libc::pollfd {
                    fd: l.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            while !st.load(Ordering::Relaxed) {
                // SAFETY: fds points to fds.len() valid pollfd structs.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
                if n <= 0 {
                    continue;
                }
                for (p, l) in fds.iter_mut().zip(&listeners) {
                    if p.revents != 0 {
                        while let Ok((c, _)) = l.accept() {
                            ct.fetch_add(1, Ordering::Relaxed);
                            drop(c);
                        }
                    }
                    p.revents = 0;
                }
            }
        });
        Ok(Acceptor {
            stop,
            count,
            thread: Some(thread),
        })
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const HC_ADDRS: u8 = 10;
const HC_PORTS: u16 = 100;
const HC_PORT0: u16 = 20000;

fn health_cpu(opts: &Options) -> Result<HealthCpu> {
    let topo = Topology::build(TopologyOpts {
        backends: 1,
        clients: 0,
        ..Default::default()
    })?;
    let be = topo.backend(1);
    let addrs: Vec<Ipv4Addr> = (0..HC_ADDRS)
        .map(|i| {
            let o = be.v4.octets();
            Ipv4Addr::new(o[0], o[1], o[2], o[3] + i)
        })
        .collect();
    let cmds: Vec<String> = addrs[1..]
        .iter()
        .map(|a| format!("addr add {a}/24 dev {BACKEND_IF}"))
        .collect();
    be.ns.ip_batch(&cmds)?;
    be.ns.sysctls(&[("net.core.somaxconn", "4096")])?;
    let acceptor = Acceptor::spawn(&be.ns, HC_PORT0..HC_PORT0 + HC_PORTS)?;
    let backends: Vec<SocketAddr> = addrs
        .iter()
        .flat_map(|a| (0..HC_PORTS).map(move |p| SocketAddr::new((*a).into(), HC_PORT0 + p)))
        .collect();
    let n = backends.len();
    let sched = [SCHEDULERS[0]];
    // First without checks: the agent's CPU at rest with the same backends.
    let window = opts.hc_seconds;
    let idle = {
        let agent = Agent::start(
            topo.lb(),
            &[LB_CLIENT_IF],
            &config("{ kind = \"none\" }", &backends, &sched),
            &[],
        )?;
        let pid = agent_pid(&agent)?;
        std::thread::sleep(Duration::from_secs(1));
        let c0 = cpu_seconds(pid)?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(window / 2.0));
        (cpu_seconds(pid)? - c0) / t0.elapsed().as_secs_f64() * 100.0
    };
    let health = "{ kind = \"tcp\", interval = \"1s\", timeout = \"1s\", rise = 2, fall = 3 }";
    let agent = Agent::start(
        topo.lb(),
        &[LB_CLIENT_IF],
        &config(health, &backends, &sched),
        &[],
    )?;
    let pid = agent_pid(&agent)?;
    // Let the checks spread out over the interval.
    std::thread::sleep(Duration::from_secs(3));
    let (c0, a0, t0) = (
        cpu_seconds(pid)?,
        acceptor.count.load(Ordering::Relaxed),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(window));
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid)? - c0) / secs * 100.0;
    let checks = (acceptor.count.load(Ordering::Relaxed) - a0) as f64 / secs;
    let list = agent.ok(&["backend", "list"])?;
    let up = list
        .as_array()
        .or_else(|| list["backends"].as_array())
        .map(|a| {
            a.iter()
                .filter(|b| b["health"] == "up" && !b["check"].is_null())
                .count()
        })
        .unwrap_or(0);
    ensure!(up == n, "only {up} of {n} backends checked and up");
    let r = HealthCpu {
        backends: n,
        interval_s: 1.0,
        window_s: secs,
        cpu_percent: cpu,
        idle_cpu_percent: idle,
        checks_per_s: checks,
        backends_up: up,
    };
    println!(
        "  health checks of {n} backends every 1 s: agent CPU {:.1} % of one CPU ({:.1} % without checks), {:.0} checks/s",
        r.cpu_percent, r.idle_cpu_percent, r.checks_per_s
    );
    drop(agent);
    drop(acceptor);
    Ok(r)
}

impl ControlReport {
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{:<10} {:<11} {:>7} {:>16} {:>10} {:>10}",
            "backends", "scheduler", "slots", "visible ms (med)", "max ms", "answer ms"
        );
        for l in &self.latency {
            let _ = writeln!(
                out,
                "{:<10} {:<11} {:>7} {:>16.2} {:>10.2} {:>10.2}",
                l.backends, l.scheduler, l.table_slots, l.visible_ms, l.visible_max_ms, l.answer_ms
            );
        }
        let h = &self.health;
        let _ = writeln!(
            out,
            "health checks: {} backends, TCP every {} s: agent {:.1} % of one CPU ({:.1} % without checks), {:.0} checks/s, {} up",
            h.backends, h.interval_s, h.cpu_percent, h.idle_cpu_percent, h.checks_per_s, h.backends_up
        );
        out
    }

    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n### Control plane\n\n`backend.weight` 1 ↔ 2 over the control socket, {} changes per row; \
             \"visible\" = the service entry points at the rebuilt table and the backend slot has \
             the new weight (polled from the pinned maps). Took {:.0} s.\n",
            self.options.samples, self.elapsed_s
        );
        let _ = writeln!(
            out,
            "| backends | scheduler | table slots | visible in (median) | max | answer (median) |\n|---:|---|---:|---:|---:|---:|"
        );
        for l in &self.latency {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
                l.backends, l.scheduler, l.table_slots, l.visible_ms, l.visible_max_ms, l.answer_ms
            );
        }
        let h = &self.health;
        let _ = writeln!(
            out,
            "\n| health checks | backends | interval | window | agent CPU | same agent, no checks | checks/s seen by the backends |\n|---|---:|---:|---:|---:|---:|---:|\n\
             | TCP connect | {} | {} s | {:.1} s | {:.1} % of one CPU | {:.1} % | {:.0} |",
            h.backends, h.interval_s, h.window_s, h.cpu_percent, h.idle_cpu_percent, h.checks_per_s
        );
        out
    }
}
