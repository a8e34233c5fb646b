//! L3 direct server return end to end: the backends sit behind a router, two hops away
//! from the balancer, and reach it only through the tunnel; `stickylb decap` on each
//! backend (XDP on two of them, tc ingress on the third) strips it and the VIP on `lo`
//! takes the client's packet. The real agent balances; the servers answer over TCP.
//!
//! ```text
//!  client ── lb (stickylb run) ── router ── backend-1..3 (stickylb decap, VIP on lo)
//!  10.1.0.0/24  10.2.0.0/24          10.3.i.0/24
//!  fd01:1::/64  fd01:2::/64          fd01:3:i::/64      every link MTU 1500
//! ```
//!
//! Checked for `ipip` and `gue`, IPv4 and IPv6: every client stays on one backend and
//! every backend gets clients; 4 MB up and 4 MB down per family through a path whose
//! MTU leaves no room for the overhead (the balancer answers "fragmentation needed" /
//! "packet too big" and the client's PMTU discovery does the rest); clients stay put
//! while the agent is stopped and after it restarts; when a backend's server dies the
//! health check takes it out and its clients move, the others stay.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use socket2::{Domain, Protocol, Socket, Type};
use stickylb_tests::{
    agent::{ensure_test_bpffs, stickylb_bin, Agent, TEST_BPFFS},
    servers::connect_from,
    Netns,
};

const VIP4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd01, 0x100, 0, 0, 0, 0, 0, 0x100);
const PORT: u16 = 80;
const BACKENDS: usize = 3;
const CLIENTS: usize = 12;
const BULK: usize = 4 << 20;

fn client_v4(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, 0, 10 + k as u8))
}
fn client_v6(k: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd01, 1, 0, 0, 0, 0, 0xa, 10 + k as u16))
}
fn backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 3, i as u8, 2)
}
fn backend_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd01, 3, i as u16, 0, 0, 0, 0, 2)
}

/// The namespaces, the decap attachments and the servers. Dropped in field order:
/// servers, decap (detached while the namespaces exist), namespaces.
struct Net {
    servers: Vec<Option<Server>>,
    decap: Vec<Decap>,
    client: Netns,
    lb: Netns,
    _router: Netns,
    backends: Vec<Netns>,
}

const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];
const FORWARDING: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
];

/// Turns off checksum offload on a veth end: packets the balancer's XDP program carries
/// into a tunnel must have their checksums complete (see docs/OPERATIONS.md).
fn tx_off(ns: &Netns, ifname: &str) -> Result<()> {
    ns.exec(&["ethtool", "-K", ifname, "tx", "off"]).map(|_| ())
}

impl Net {
    fn build() -> Result<Net> {
        let client = Netns::new("l3cli")?;
        let lb = Netns::new("l3lb")?;
        let router = Netns::new("l3rt")?;
        let backends: Vec<Netns> = (1..=BACKENDS)
            .map(|i| Netns::new(&format!("l3be{i}")))
            .collect::<Result<_>>()?;
        for ns in [&client, &lb, &router].into_iter().chain(backends.iter()) {
            ns.sysctls(SYSCTLS)?;
        }
        lb.sysctls(FORWARDING)?;
        router.sysctls(FORWARDING)?;
        lb.ip_batch(&[
            format!(
                "link add to-client type veth peer name eth0 netns {}",
                client.name()
            ),
            format!(
                "link add to-router type veth peer name to-lb netns {}",
                router.name()
            ),
            "addr add 10.1.0.1/24 dev to-client".into(),
            "addr add fd01:1::1/64 dev to-client nodad".into(),
            "addr add 10.2.0.1/24 dev to-router".into(),
            "addr add fd01:2::1/64 dev to-router nodad".into(),
            "link set to-client up".into(),
            "link set to-router up".into(),
        ])?;
        let mut cmds = vec![
            "addr add 10.1.0.2/24 dev eth0".to_string(),
            "addr add fd01:1::2/64 dev eth0 nodad".to_string(),
        ];
        for k in 0..CLIENTS {
            cmds.push(format!("addr add {}/24 dev eth0", client_v4(k)));
            cmds.push(format!("addr add {}/64 dev eth0 nodad", client_v6(k)));
        }
        cmds.push("link set eth0 up".into());
        client.ip_batch(&cmds)?;
        let mut cmds = vec![
            "addr add 10.2.0.2/24 dev to-lb".to_string(),
            "addr add fd01:2::2/64 dev to-lb nodad".to_string(),
            "link set to-lb up".to_string(),
        ];
        for (idx, be) in backends.iter().enumerate() {
            let i = idx + 1;
            cmds.extend([
                format!(
                    "link add to-be{i} type veth peer name eth0 netns {}",
                    be.name()
                ),
                format!("addr add 10.3.{i}.1/24 dev to-be{i}"),
                format!("addr add fd01:3:{i}::1/64 dev to-be{i} nodad"),
                format!("link set to-be{i} up"),
            ]);
        }
        router.ip_batch(&cmds)?;
        for (idx, be) in backends.iter().enumerate() {
            let i = idx + 1;
            be.ip_batch(&[
                format!("addr add {}/24 dev eth0", backend_v4(i)),
                format!("addr add {}/64 dev eth0 nodad", backend_v6(i)),
                "link set eth0 up".to_string(),
                // The VIPs on lo: the decapsulated packet is for this host.
                format!("addr add {VIP4}/32 dev lo"),
                format!("addr add {VIP6}/128 dev lo nodad"),
            ])?;
            be.sysctls(&[("net.ipv4.conf.eth0.rp_filter", "0")])?;
        }
        let up = Duration::from_secs(10);
        client.wait_links_up(&["eth0"], up)?;
        lb.wait_links_up(&["to-client", "to-router"], up)?;
        let rifs: Vec<String> = (1..=BACKENDS).map(|i| format!("to-be{i}")).collect();
        let mut refs: Vec<&str> = rifs.iter().map(String::as_str).collect();
        refs.push("to-lb");
        router.wait_links_up(&refs, up)?;
        for be in &backends {
            be.wait_links_up(&["eth0"], up)?;
        }
        client.ip_batch(&[
            "route add default via 10.1.0.1",
            "route add ::/0 via fd01:1::1",
        ])?;
        lb.ip_batch(&[
            "route add 10.3.0.0/16 via 10.2.0.2",
            "route add fd01:3::/32 via fd01:2::2",
        ])?;
        router.ip_batch(&[
            "route add default via 10.2.0.1",
            "route add ::/0 via fd01:2::1",
        ])?;
        for (idx, be) in backends.iter().enumerate() {
            let i = idx + 1;
            be.ip_batch(&[
                format!("route add default via 10.3.{i}.1"),
                format!("route add ::/0 via fd01:3:{i}::1"),
            ])?;
        }
        tx_off(&client, "eth0")?;
        tx_off(&lb, "to-client")?;
        tx_off(&lb, "to-router")?;
        tx_off(&router, "to-lb")?;
        for (idx, be) in backends.iter().enumerate() {
            tx_off(&router, &format!("to-be{}", idx + 1))?;
            tx_off(be, "eth0")?;
        }
        let mut net = Net {
            servers: Vec::new(),
            decap: Vec::new(),
            client,
            lb,
            _router: router,
            backends,
        };
        for (idx, be) in net.backends.iter().enumerate() {
            // Backend 2 decapsulates at tc ingress, the others with XDP.
            let mode = if idx == 1 { "tc" } else { "auto" };
            net.decap.push(Decap::attach(be, mode)?);
            net.servers
                .push(Some(Server::spawn(be, &format!("backend-{}", idx + 1))?));
        }
        Ok(net)
    }
}

/// `stickylb decap` on a backend's eth0; detached on drop.
struct Decap {
    ns: String,
}

impl Decap {
    fn attach(ns: &Netns, mode: &str) -> Result<Decap> {
        ensure_test_bpffs()?;
        let out = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(stickylb_bin()?)
            .args([
                "decap", "--iface", "eth0", "--mode", mode, "--bpffs", TEST_BPFFS,
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "stickylb decap in {}: {}{}",
                ns.name(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!(
            "{}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        Ok(Decap {
            ns: ns.name().to_string(),
        })
    }
    /// (decapsulated, passed, dropped) of this backend's program.
    fn stats(&self) -> Result<(u64, u64, u64)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(stickylb_bin()?)
            .args([
                "--json", "decap", "--iface", "eth0", "--stats", "--bpffs", TEST_BPFFS,
            ])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("decap --stats: {}", String::from_utf8_lossy(&out.stderr)))?;
        Ok((
            v["decapsulated"].as_u64().unwrap_or(0),
            v["passed"].as_u64().unwrap_or(0),
            v["dropped"].as_u64().unwrap_or(0),
        ))
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        if let Ok(bin) = stickylb_bin() {
            let _ = Command::new("ip")
                .args(["netns", "exec", &self.ns])
                .arg(bin)
                .args([
                    "decap", "--iface", "eth0", "--detach", "--bpffs", TEST_BPFFS,
                ])
                .output();
        }
    }
}

/// The byte at offset `i` of a bulk transfer.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// A TCP server on port 80 (IPv4 and IPv6) in a backend namespace. A connection sends
/// a line: `name` → the backend's name; `bulk N` → the server reads the client's upload
/// to EOF, checks it, sends N bytes and then `got U bad B`. Anything else (a health
/// check's bare connect) is closed.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn spawn(ns: &Netns, name: &str) -> Result<Server> {
        let listeners = ns.enter(|| {
            let mut v = Vec::new();
            for addr in [
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), PORT),
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), PORT),
            ] {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
                if addr.is_ipv6() {
                    s.set_only_v6(true)?;
                }
                s.set_reuse_address(true)?;
                s.bind(&addr.into())?;
                s.listen(256)?;
                s.set_nonblocking(true)?;
                v.push(std::net::TcpListener::from(s));
            }
            Ok(v)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_string();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let mut idle = true;
                    for l in &listeners {
                        if let Ok((conn, _)) = l.accept() {
                            idle = false;
                            let name = name.clone();
                            std::thread::spawn(move || {
                                let _ = serve(conn, &name);
                            });
                        }
                    }
                    if idle {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        };
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(conn: TcpStream, name: &str) -> Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    conn.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut w = conn;
    if line.trim() == "name" {
        w.write_all(format!("{name}\n").as_bytes())?;
    } else if let Some(n) = line.trim().strip_prefix("bulk ") {
        let down: usize = n.parse()?;
        let mut buf = vec![0u8; 64 << 10];
        let (mut got, mut bad) = (0usize, 0usize);
        loop {
            let k = r.read(&mut buf)?;
            if k == 0 {
                break;
            }
            bad += buf[..k]
                .iter()
                .enumerate()
                .filter(|(j, b)| **b != pattern(got + j))
                .count();
            got += k;
        }
        let mut sent = 0;
        while sent < down {
            let k = buf.len().min(down - sent);
            for (j, b) in buf[..k].iter_mut().enumerate() {
                *b = pattern(sent + j);
            }
            w.write_all(&buf[..k])?;
            sent += k;
        }
        w.write_all(format!("got {got} bad {bad}\n").as_bytes())?;
    }
    let _ = w.shutdown(Shutdown::Write);
    Ok(())
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The name of the backend that answers `src` (None: no answer).
fn name_from(ns: &Netns, src: IpAddr, vip: IpAddr) -> Option<String> {
    ns.enter(|| {
        let mut s = connect_from(src, SocketAddr::new(vip, PORT), Duration::from_secs(3))?;
        s.write_all(b"name\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim().to_string())
    })
    .ok()
    .filter(|n| !n.is_empty())
}

/// Every client's backend (each asked three times: they must agree).
fn round(net: &Net, vip: IpAddr) -> BTreeMap<IpAddr, String> {
    let mut m = BTreeMap::new();
    for k in 0..CLIENTS {
        let c = if vip.is_ipv4() {
            client_v4(k)
        } else {
            client_v6(k)
        };
        let names: Vec<Option<String>> = (0..3).map(|_| name_from(&net.client, c, vip)).collect();
        let first = names[0]
            .clone()
            .unwrap_or_else(|| panic!("{c} -> {vip}: no answer"));
        assert!(
            names.iter().all(|n| n.as_deref() == Some(first.as_str())),
            "{c} -> {vip}: not sticky: {names:?}"
        );
        m.insert(c, first);
    }
    m
}

/// 4 MB up and 4 MB down from the client's primary address.
fn bulk(net: &Net, vip: IpAddr) -> Result<()> {
    let src: IpAddr = if vip.is_ipv4() {
        "10.1.0.2".parse()?
    } else {
        "fd01:1::2".parse()?
    };
    net.client.enter(|| {
        let mut s = connect_from(src, SocketAddr::new(vip, PORT), Duration::from_secs(120))?;
        s.write_all(format!("bulk {BULK}\n").as_bytes())?;
        let up: Vec<u8> = (0..BULK).map(pattern).collect();
        s.write_all(&up).context("upload")?;
        s.shutdown(Shutdown::Write)?;
        let mut down = Vec::new();
        s.read_to_end(&mut down).context("download")?;
        if down.len() < BULK {
            bail!("downloaded {} of {BULK} bytes", down.len());
        }
        let bad = down[..BULK]
            .iter()
            .enumerate()
            .filter(|(i, b)| **b != pattern(*i))
            .count();
        let tail = String::from_utf8_lossy(&down[BULK..]).trim().to_string();
        if bad != 0 || tail != format!("got {BULK} bad 0") {
            bail!("{vip}: {bad} bad bytes downloaded; the server said {tail:?}");
        }
        Ok(())
    })
}

fn config(forwarding: &str, client_hash_v4: bool) -> String {
    let mut out = String::new();
    for (name, vip, v6) in [
        ("web4", VIP4.to_string(), false),
        ("web6", format!("[{VIP6}]"), true),
    ] {
        let encap = if client_hash_v4 && !v6 {
            "encap = { source = \"client-hash\", source_prefix_v4 = \"172.16.0.0/16\" }\n"
        } else {
            ""
        };
        out.push_str(&format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"{vip}:{PORT}\"\nforwarding = \"{forwarding}\"\n{encap}\
             health = {{ kind = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 1, fall = 2 }}\n"
        ));
        for i in 1..=BACKENDS {
            let addr = if v6 {
                format!("[{}]:{PORT}", backend_v6(i))
            } else {
                format!("{}:{PORT}", backend_v4(i))
            };
            out.push_str(&format!("[[service.backend]]\naddress = \"{addr}\"\n"));
        }
    }
    out
}

/// Waits until the backend's health in every service is `want`.
fn wait_health(agent: &Agent, backend: usize, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = [
            ("web4", format!("{}:{PORT}", backend_v4(backend))),
            ("web6", format!("[{}]:{PORT}", backend_v6(backend))),
        ]
        .iter()
        .all(|(svc, addr)| {
            agent
                .ok(&["backend", "list", svc])
                .ok()
                .and_then(|v| v.as_array().or_else(|| v["backends"].as_array()).cloned())
                .is_some_and(|rows| {
                    rows.iter()
                        .any(|r| r["address"] == addr.as_str() && r["health"] == want)
                })
        });
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend-{backend} not {want} within 30 s; log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn counter(agent: &Agent, service: &str, key: &str) -> u64 {
    let v = agent.ok(&["stats"]).unwrap();
    v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == service))
        .and_then(|s| s[key].as_u64())
        .unwrap_or_else(|| panic!("no counter {key} for {service} in {v}"))
}

fn scenario(forwarding: &str, client_hash_v4: bool) {
    let mut net = Net::build().expect("build the routed network");
    let mut agent = Agent::start(
        &net.lb,
        &["to-client", "to-router"],
        &config(forwarding, client_hash_v4),
        &[],
    )
    .expect("start the agent");
    for i in 1..=BACKENDS {
        wait_health(&agent, i, "up");
    }
    let vips = [IpAddr::from(VIP4), IpAddr::from(VIP6)];
    // Sticky, spread.
    let mut before = BTreeMap::new();
    for vip in vips {
        let m = round(&net, vip);
        let mut per: BTreeMap<&String, usize> = BTreeMap::new();
        for b in m.values() {
            *per.entry(b).or_default() += 1;
        }
        assert_eq!(
            per.len(),
            BACKENDS,
            "{forwarding} {vip}: not every backend got clients: {per:?}"
        );
        before.insert(vip, m);
    }
    // Bulk both ways through the tunnel, with PMTU discovery.
    for vip in vips {
        bulk(&net, vip).unwrap_or_else(|e| panic!("{forwarding} bulk to {vip}: {e:#}"));
    }
    for svc in ["web4", "web6"] {
        assert!(
            counter(&agent, svc, "too_big_answered") > 0,
            "{forwarding} {svc}: no packet was answered with the MTU: PMTU discovery was not needed?"
        );
    }
    let decapsulated: u64 = net.decap.iter().map(|d| d.stats().unwrap().0).sum();
    assert!(
        decapsulated > 2 * BULK as u64 / 1500,
        "{forwarding}: decapsulated {decapsulated}"
    );
    let tc = net.decap[1].stats().unwrap();
    assert!(tc.0 > 0, "{forwarding}: the tc decap took nothing: {tc:?}");
    // The agent stops: forwarding goes on from the pinned state; after the restart
    // every client is where it was.
    agent.stop(libc::SIGTERM).unwrap();
    for vip in vips {
        assert_eq!(
            round(&net, vip),
            before[&vip],
            "{forwarding} {vip}: agent stopped"
        );
    }
    agent.spawn().unwrap();
    for vip in vips {
        assert_eq!(
            round(&net, vip),
            before[&vip],
            "{forwarding} {vip}: agent restarted"
        );
    }
    // Backend 1's server dies: its clients move, the others stay.
    net.servers[0] = None;
    wait_health(&agent, 1, "down");
    for vip in vips {
        let after = round(&net, vip);
        for (c, b) in &before[&vip] {
            if b == "backend-1" {
                assert_ne!(
                    after[c], "backend-1",
                    "{forwarding} {c} still on the dead backend"
                );
            } else {
                assert_eq!(&after[c], b, "{forwarding} {c} moved off a live backend");
            }
        }
    }
    drop(agent);
}

#[test]
fn ipip_through_a_router() {
    // IPv4 with the client-hash outer source (RSS-friendly), IPv6 with the FIB's.
    scenario("ipip", true);
}

#[test]
fn gue_through_a_router() {
    scenario("gue", false);
}
