//! Side by side: one HAProxy configuration (tutorial shape: `mode tcp`, `balance
//! roundrobin`, `stick-table type ip` + `stick on src`, checked servers, a `backup` and a
//! `disabled` one) run by Debian's haproxy in one namespace topology, and the
//! configuration `stickylb import haproxy` makes of it (through the real CLI) run by the
//! stickylb agent in a second, identical topology. The same clients, in the same order,
//! go through both.
//!
//! What is compared, phase by phase (exact per-client equality is not expected: the two
//! round-robins need not start at the same server or count turns the same way across
//! CPUs):
//! 1. every client's connections all reach one backend, in both;
//! 2. the set of backends that serve clients is the same in both: the three primary
//!    servers, never the `backup` or the `disabled` one;
//! 3. a primary server fails: in both, exactly its clients move, each to one surviving
//!    server, and the set of backends serving clients is the same;
//! 4. it recovers: in both, nobody moves back;
//! 5. clients never seen before are spread over the same set again (the recovered server
//!    included), in both.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use stickylb_tests::{
    agent::{stickylb_bin, Agent},
    tcp_fetch_all, NameServer, Topology, TopologyOpts,
};

const PORT: u16 = 80;
const BPORT: u16 = 8080;
/// Clients of the first phases, and later ones (phase 5).
const EARLY: usize = 15;
const LATE: usize = 9;
const CONNECTIONS: usize = 3;

fn haproxy_cfg(topo: &Topology, socket: &Path) -> String {
    let b = |i: usize| topo.backend(i).v4;
    format!(
        "global\n    log /dev/log local0\n    maxconn 4000\n    stats socket {sock} mode 600 level admin\n\n\
         defaults\n    mode tcp\n    option tcplog\n    option redispatch\n    retries 3\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\n\
         frontend fe\n    bind {vip}:{PORT}\n    default_backend be\n\n\
         backend be\n    balance roundrobin\n    stick-table type ip size 200k expire 30m\n    stick on src\n    default-server inter 300ms rise 2 fall 2\n\
         \x20   server be1 {}:{BPORT} check\n    server be2 {}:{BPORT} check\n    server be3 {}:{BPORT} check\n\
         \x20   server be4 {}:{BPORT} check backup\n    server be5 {}:{BPORT} check disabled\n",
        b(1),
        b(2),
        b(3),
        b(4),
        b(5),
        sock = socket.display(),
        vip = topo.vip_v4(),
    )
}

/// HAProxy (Debian's package) in a namespace, killed by its pid on drop.
struct Haproxy {
    child: Child,
    dir: PathBuf,
}

impl Haproxy {
    fn start(topo: &Topology, dir: &Path, cfg: &str) -> Result<Haproxy> {
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, cfg)?;
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&file)
            .output()
            .context("haproxy is not installed: `cargo xtask setup` installs Debian's haproxy")?;
        ensure!(
            check.status.success(),
            "haproxy -c: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        topo.lb()
            .ip(&["addr", "add", &format!("{}/32", topo.vip_v4()), "dev", "lo"])?;
        let log = std::fs::File::create(dir.join("haproxy.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", topo.lb_ns_name(), "haproxy", "-db", "-f"])
            .arg(&file)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting haproxy")?;
        let mut h = Haproxy {
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while h.stat("be", "be1").is_err() {
            if let Some(st) = h.child.try_wait()? {
                bail!(
                    "haproxy exited with {st}: {}",
                    std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "haproxy's stats socket did not answer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(h)
    }

    /// The `status` column of `show stat` for a server (UP, DOWN, MAINT, ...).
    fn stat(&self, proxy: &str, server: &str) -> Result<String> {
        let mut s = UnixStream::connect(self.dir.join("haproxy.sock"))?;
        s.write_all(b"show stat\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let mut lines = out.lines();
        let header = lines.next().context("empty show stat")?;
        let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
        let status = cols
            .iter()
            .position(|c| *c == "status")
            .context("no status column")?;
        for l in lines {
            let f: Vec<&str> = l.split(',').collect();
            if f.first() == Some(&proxy) && f.get(1) == Some(&server) {
                return Ok(f.get(status).unwrap_or(&"").to_string());
            }
        }
        bail!("no server {proxy}/{server} in show stat")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One side: a topology, its backend servers, and a balancer.
struct Side {
    name: &'static str,
    topo: Topology,
    servers: Vec<Option<NameServer>>,
    haproxy: Option<Haproxy>,
    agent: Option<Agent>,
}

fn topology() -> Result<(Topology, Vec<Option<NameServer>>)> {
    let topo = Topology::build(TopologyOpts {
        backends: 5,
        clients: EARLY + LATE,
        ..Default::default()
    })?;
    let servers = topo
        .backends()
        .iter()
        .map(|b| NameServer::spawn(&b.ns, BPORT, &b.name).map(Some))
        .collect::<Result<_>>()?;
    Ok((topo, servers))
}

impl Side {
    /// Which backend each client reached on each of `CONNECTIONS` connections.
    fn round(&self, clients: std::ops::Range<usize>) -> BTreeMap<usize, BTreeSet<String>> {
        let vip = SocketAddr::new(self.topo.vip_v4().into(), PORT);
        let mut pairs: Vec<(IpAddr, SocketAddr)> = Vec::new();
        let mut who = Vec::new();
        for _ in 0..CONNECTIONS {
            for c in clients.clone() {
                pairs.push((self.topo.client_v4s()[c].into(), vip));
                who.push(c);
            }
        }
        let res = tcp_fetch_all(self.topo.client(), &pairs, Duration::from_secs(3)).unwrap();
        let mut out: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        for (c, r) in who.into_iter().zip(res) {
            let name = r.unwrap_or_else(|e| panic!("{}: client {c}: {e:#}", self.name));
            out.entry(c).or_default().insert(name);
        }
        out
    }

    /// Waits until the balancer sees backend `i` in `state` ("up" or "down").
    fn wait_backend(&self, i: usize, up: bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = match (&self.haproxy, &self.agent) {
                (Some(h), _) => h
                    .stat("be", &format!("be{i}"))
                    .map(|s| s.starts_with(if up { "UP" } else { "DOWN" }))
                    .unwrap_or(false),
                (_, Some(a)) => {
                    let addr = format!("{}:{BPORT}", self.topo.backend(i).v4);
                    a.ok(&["backend", "list", "fe"])
                        .map(|v| {
                            v.as_array().into_iter().flatten().any(|b| {
                                b["address"] == addr.as_str()
                                    && b["health"] == if up { "up" } else { "down" }
                            })
                        })
                        .unwrap_or(false)
                }
                _ => unreachable!(),
            };
            if seen {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: backend {i} not {} after 60 s",
                self.name,
                if up { "up" } else { "down" }
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The one backend of each client (failing if a client reached several).
fn sticky(
    side: &str,
    phase: &str,
    r: &BTreeMap<usize, BTreeSet<String>>,
) -> BTreeMap<usize, String> {
    r.iter()
        .map(|(c, names)| {
            assert_eq!(
                names.len(),
                1,
                "{side}, {phase}: client {c} reached {names:?}"
            );
            (*c, names.iter().next().unwrap().clone())
        })
        .collect()
}

fn backends_used(m: &BTreeMap<usize, String>) -> BTreeSet<String> {
    m.values().cloned().collect()
}

fn names(list: &[usize]) -> BTreeSet<String> {
    list.iter().map(|i| format!("backend-{i}")).collect()
}

#[test]
fn imported_config_serves_clients_as_haproxy_does() {
    // HAProxy side.
    let dir = std::env::temp_dir().join(format!("stickylb-import-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (topo_h, servers_h) = topology().unwrap();
    let cfg = haproxy_cfg(&topo_h, &dir.join("haproxy.sock"));
    let haproxy = Haproxy::start(&topo_h, &dir, &cfg).unwrap();

    // stickylb side: the same file through `stickylb import haproxy`, as an operator would.
    let (topo_s, servers_s) = topology().unwrap();
    let out = Command::new(stickylb_bin().unwrap())
        .args(["import", "haproxy"])
        .arg(dir.join("haproxy.cfg"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stickylb import failed: {stderr}");
    assert!(stderr.contains("warning: `backup`"), "{stderr}");
    let toml = String::from_utf8(out.stdout).unwrap();
    eprintln!("imported configuration:\n{toml}\ndiagnostics:\n{stderr}");
    let mut ifaces = vec![topo_s.lb_client_if()];
    ifaces.extend(topo_s.lb_backend_ifs());
    let agent = Agent::start(topo_s.lb(), &ifaces, &toml, &[]).unwrap();

    let mut sides = [
        Side {
            name: "haproxy",
            topo: topo_h,
            servers: servers_h,
            haproxy: Some(haproxy),
            agent: None,
        },
        Side {
            name: "stickylb",
            topo: topo_s,
            servers: servers_s,
            haproxy: None,
            agent: Some(agent),
        },
    ];
    for s in &sides {
        for i in 1..=3 {
            s.wait_backend(i, true);
        }
    }

    // 1 and 2: stickiness and the backend set.
    let first: Vec<BTreeMap<usize, String>> = sides
        .iter()
        .map(|s| sticky(s.name, "phase 1", &s.round(0..EARLY)))
        .collect();
    for (s, m) in sides.iter().zip(&first) {
        assert_eq!(
            backends_used(m),
            names(&[1, 2, 3]),
            "{}: phase 1 backends (not the backup be4 nor the disabled be5)",
            s.name
        );
        eprintln!("{} phase 1: {m:?}", s.name);
    }

    // 3: backend 2 fails.
    for s in &mut sides {
        s.servers[1] = None;
    }
    for s in &sides {
        s.wait_backend(2, false);
    }
    let second: Vec<BTreeMap<usize, String>> = sides
        .iter()
        .map(|s| sticky(s.name, "phase 3", &s.round(0..EARLY)))
        .collect();
    for ((s, before), after) in sides.iter().zip(&first).zip(&second) {
        for (c, b) in before {
            if b == "backend-2" {
                assert_ne!(
                    &after[c], "backend-2",
                    "{}: client {c} still on the failed backend",
                    s.name
                );
            } else {
                assert_eq!(
                    &after[c], b,
                    "{}: client {c} of a healthy backend moved",
                    s.name
                );
            }
        }
        assert_eq!(
            backends_used(after),
            names(&[1, 3]),
            "{}: phase 3 backends",
            s.name
        );
        eprintln!("{} phase 3: {after:?}", s.name);
    }

    // 4: it recovers; nobody moves back.
    for s in &mut sides {
        let b = s.topo.backend(2);
        s.servers[1] = Some(NameServer::spawn(&b.ns, BPORT, &b.name).unwrap());
    }
    for s in &sides {
        s.wait_backend(2, true);
    }
    let third: Vec<BTreeMap<usize, String>> = sides
        .iter()
        .map(|s| sticky(s.name, "phase 4", &s.round(0..EARLY)))
        .collect();
    for ((s, before), after) in sides.iter().zip(&second).zip(&third) {
        assert_eq!(
            before, after,
            "{}: clients moved after the recovery",
            s.name
        );
    }

    // 5: new clients, over the three primaries again.
    let late: Vec<BTreeMap<usize, String>> = sides
        .iter()
        .map(|s| sticky(s.name, "phase 5", &s.round(EARLY..EARLY + LATE)))
        .collect();
    for (s, m) in sides.iter().zip(&late) {
        assert_eq!(
            backends_used(m),
            names(&[1, 2, 3]),
            "{}: phase 5 backends",
            s.name
        );
        eprintln!("{} phase 5: {m:?}", s.name);
    }
    // The backup and the disabled server never served a client on either side.
    for s in &sides {
        for i in [4, 5] {
            let srv = s.servers[i - 1].as_ref().unwrap();
            let clients: BTreeSet<IpAddr> = s
                .topo
                .client_v4s()
                .iter()
                .map(|c| IpAddr::from(*c))
                .collect();
            assert!(
                srv.peers().iter().all(|p| !clients.contains(p)),
                "{}: backend-{i} served a client",
                s.name
            );
        }
    }
    drop(sides);
    let _ = std::fs::remove_dir_all(&dir);
}
