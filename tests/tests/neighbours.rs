//! Where the VIP lives, and which neighbour entries exist, must not matter: the agent
//! resolves the next hops the data path needs. The real agent in a balancer namespace,
//! real TCP and UDP clients and servers, NAT and DSR, IPv4 and IPv6:
//! - every VIP placement (nowhere, the balancer's `lo` as HAProxy has it, the
//!   client-facing NIC as keepalived puts it) serves every client, stickily, with the
//!   balancer's neighbour table flushed before any traffic;
//! - `ip neigh flush` under traffic, again and again: every request is still answered;
//! - a minute of aggressive neighbour garbage collection: nobody loses service;
//! - a broken setup (forwarding off, a NAT backend behind a non-attached interface) is
//!   reported at start, with its fix.
//!
//! Figures (first-connection latency over an unresolved next hop, resolution times) are
//! printed, never asserted: timing belongs to `cargo xtask bench`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::Value;
use stickylb_tests::{
    agent::Agent,
    servers::{parallel_requests, Outcome, Request, UdpNameServer},
    NameServer, Topology, TopologyOpts, VipPlacement,
};

/// NAT services listen here and map to [`BPORT`] on the backends.
const NAT_PORT: u16 = 80;
const BPORT: u16 = 8080;
/// DSR services listen here (backends answer as the VIP, same port).
const DSR_PORT: u16 = 81;
const TIMEOUT: Duration = Duration::from_secs(6);

/// A request kind: (NAT?, UDP?).
const KINDS: [(bool, bool); 4] = [(true, false), (true, true), (false, false), (false, true)];

struct Lab {
    topo: Topology,
    agent: Agent,
    _tcp: Vec<NameServer>,
    _udp: Vec<UdpNameServer>,
}

fn config(topo: &Topology) -> String {
    let mut c = String::new();
    for (nat, udp) in KINDS {
        for v6 in [false, true] {
            let (vip, port): (IpAddr, u16) = if v6 {
                (topo.vip_v6().into(), if nat { NAT_PORT } else { DSR_PORT })
            } else {
                (topo.vip_v4().into(), if nat { NAT_PORT } else { DSR_PORT })
            };
            c.push_str(&format!(
                "[[service]]\nname = \"{}{}{}\"\nlisten = \"{}\"\nprotocol = \"{}\"\nforwarding = \"{}\"\nhealth = {{ kind = \"none\" }}\n",
                if nat { "nat" } else { "dsr" },
                if udp { "udp" } else { "tcp" },
                if v6 { 6 } else { 4 },
                SocketAddr::new(vip, port),
                if udp { "udp" } else { "tcp" },
                if nat { "nat" } else { "dsr" },
            ));
            for b in topo.backends() {
                let bport = if nat { BPORT } else { DSR_PORT };
                c.push_str(&format!(
                    "[[service.backend]]\naddress = \"{}\"\n",
                    SocketAddr::new(b.addr_like(vip), bport)
                ));
            }
        }
    }
    c
}

/// Empties every neighbour table of the balancer (both families).
fn flush(topo: &Topology) {
    for f in ["-4", "-6"] {
        topo.lb().exec(&["ip", f, "neigh", "flush", "all"]).unwrap();
    }
}

fn setup(placement: VipPlacement, clients: usize) -> Lab {
    let topo = Topology::build(TopologyOpts {
        backends: 2,
        clients,
        vip_on_backend_lo: true, // for DSR; NAT does not mind
        vip_on_lb: placement,
        ..Default::default()
    })
    .unwrap();
    if placement != VipPlacement::Nowhere {
        // DSR answers leave the backends with the VIP as source and, in this topology,
        // are routed by the balancer, which holds the VIP too: without accept_local it
        // drops them as martians (docs/OPERATIONS.md, "Where the VIP may live").
        for i in topo.lb_backend_ifs() {
            topo.lb()
                .sysctl(&format!("net.ipv4.conf.{i}.accept_local"), "1")
                .unwrap();
        }
    }
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for b in topo.backends() {
        tcp.push(NameServer::spawn(&b.ns, BPORT, &b.name).unwrap());
        tcp.push(NameServer::spawn(&b.ns, DSR_PORT, &b.name).unwrap());
        let any4: IpAddr = "0.0.0.0".parse().unwrap();
        let any6: IpAddr = "::".parse().unwrap();
        udp.push(
            UdpNameServer::spawn(
                &b.ns,
                &[SocketAddr::new(any4, BPORT), SocketAddr::new(any6, BPORT)],
                &b.name,
            )
            .unwrap(),
        );
        // DSR: answer from the VIP itself.
        udp.push(
            UdpNameServer::spawn(
                &b.ns,
                &[
                    SocketAddr::new(topo.vip_v4().into(), DSR_PORT),
                    SocketAddr::new(topo.vip_v6().into(), DSR_PORT),
                ],
                &b.name,
            )
            .unwrap(),
        );
    }
    let mut ifaces = vec![topo.lb_client_if()];
    ifaces.extend(topo.lb_backend_ifs());
    let agent = Agent::start(topo.lb(), &ifaces, &config(&topo), &[]).unwrap();
    Lab {
        topo,
        agent,
        _tcp: tcp,
        _udp: udp,
    }
}

/// Every client source (v4 and v6) × every kind, once.
fn requests(topo: &Topology) -> Vec<Request> {
    let mut v = Vec::new();
    for (nat, udp) in KINDS {
        let port = if nat { NAT_PORT } else { DSR_PORT };
        for c in topo.client_v4s() {
            v.push(Request {
                udp,
                src: (*c).into(),
                dst: SocketAddr::new(topo.vip_v4().into(), port),
            });
        }
        for c in topo.client_v6s() {
            v.push(Request {
                udp,
                src: (*c).into(),
                dst: SocketAddr::new(topo.vip_v6().into(), port),
            });
        }
    }
    v
}

fn kind(r: &Request) -> String {
    format!(
        "{}/{}/{}",
        if r.dst.port() == NAT_PORT {
            "nat"
        } else {
            "dsr"
        },
        if r.udp { "udp" } else { "tcp" },
        if r.src.is_ipv4() { "v4" } else { "v6" }
    )
}

/// Answers per (kind, client): fails on any request without an answer.
fn answers(
    what: &str,
    reqs: &[Request],
    outs: &[Outcome],
    into: &mut BTreeMap<(String, IpAddr), BTreeSet<String>>,
) {
    let failed: Vec<String> = outs
        .iter()
        .filter_map(|o| o.answer.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} requests failed: {:?}",
        failed.len(),
        outs.len(),
        &failed[..failed.len().min(5)]
    );
    for (r, o) in reqs.iter().zip(outs) {
        into.entry((kind(r), r.src))
            .or_default()
            .insert(o.answer.as_ref().unwrap().clone());
    }
}

fn stats(agent: &Agent) -> Value {
    agent.ok(&["stats"]).unwrap()
}

/// Sum of one counter over every service.
fn total(stats: &Value, key: &str) -> u64 {
    stats["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[key].as_u64().unwrap_or(0))
        .sum()
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn placement_serves_everything(placement: VipPlacement) {
    let lab = setup(placement, 6);
    let topo = &lab.topo;
    flush(topo);
    // Nothing about any client: the reply path's next hops are all unresolved.
    let neigh = topo.lb().exec(&["ip", "neigh", "show"]).unwrap();
    for c in topo.client_v4s() {
        assert!(
            !neigh.contains(&format!("{c} ")),
            "{placement:?}: {c} already in the neighbour table:\n{neigh}"
        );
    }
    let reqs = requests(topo);
    let mut seen = BTreeMap::new();
    let first = parallel_requests(topo.client(), &reqs, TIMEOUT, 64).unwrap();
    answers(
        &format!("{placement:?} first round"),
        &reqs,
        &first,
        &mut seen,
    );
    let second = parallel_requests(topo.client(), &reqs, TIMEOUT, 64).unwrap();
    answers(
        &format!("{placement:?} second round"),
        &reqs,
        &second,
        &mut seen,
    );
    // Sticky: one backend per (kind, client); both backends used by every kind.
    let split: Vec<_> = seen.iter().filter(|(_, b)| b.len() > 1).collect();
    assert!(split.is_empty(), "{placement:?}: clients moved: {split:?}");
    let mut per_kind: BTreeMap<&str, BTreeSet<&String>> = BTreeMap::new();
    for ((k, _), b) in &seen {
        per_kind.entry(k.as_str()).or_default().extend(b);
    }
    assert_eq!(per_kind.len(), 8, "{placement:?}: {per_kind:?}");
    for (k, b) in &per_kind {
        assert_eq!(b.len(), 2, "{placement:?}: {k} used only {b:?}");
    }
    let st = stats(&lab.agent);
    let status = lab.agent.ok(&["status"]).unwrap();
    // The first replies met unresolved next hops (on-link clients): they went through
    // the kernel's neighbour queue, none was dropped, and the agent resolved them.
    assert!(
        total(&st, "neigh_queued") > 0,
        "{placement:?}: no next-hop miss at all? {st}"
    );
    assert_eq!(total(&st, "drop_no_neigh"), 0, "{placement:?}: {st}");
    assert!(
        status["neighbours"]["resolved"].as_u64().unwrap_or(0) > 0,
        "{placement:?}: {status}"
    );
    assert_eq!(
        status["warnings"].as_array().map(|w| w.len()),
        Some(0),
        "{placement:?}: {status}"
    );
    // Clients the data path reported have managed entries now (others may have been
    // learnt by the kernel from their own ARP requests: valid too, until collected).
    let neigh = topo.lb().exec(&["ip", "neigh", "show"]).unwrap();
    assert!(
        neigh
            .lines()
            .any(|l| l.starts_with("198.18.0.") && l.contains("managed")),
        "{placement:?}: no managed entry for any client:\n{neigh}"
    );
    // The backends' entries are managed (proactively, and again after the flush: at once
    // when the kernel's notification arrives, at the latest by the next refresh, 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let neigh = topo.lb().exec(&["ip", "neigh", "show"]).unwrap();
        let unmanaged: Vec<String> = topo
            .backends()
            .iter()
            .filter(|b| {
                !neigh
                    .lines()
                    .any(|l| l.starts_with(&format!("{} ", b.v4)) && l.contains("managed"))
            })
            .map(|b| b.v4.to_string())
            .collect();
        if unmanaged.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{placement:?}: backends {unmanaged:?} not managed:\n{neigh}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let nat_tcp_first: Vec<Duration> = reqs
        .iter()
        .zip(&first)
        .filter(|(r, _)| r.dst.port() == NAT_PORT && !r.udp)
        .map(|(_, o)| o.elapsed)
        .collect();
    let nat_tcp_second: Vec<Duration> = reqs
        .iter()
        .zip(&second)
        .filter(|(r, _)| r.dst.port() == NAT_PORT && !r.udp)
        .map(|(_, o)| o.elapsed)
        .collect();
    let udp_tries: u32 = first.iter().map(|o| o.tries).sum::<u32>() - first.len() as u32;
    eprintln!(
        "{placement:?}: NAT TCP connection over an unresolved next hop: median {:?} max {:?}; resolved: median {:?}; UDP datagrams resent in round 1: {udp_tries}; neigh_queued {}; drop_no_neigh {}; fib_miss {}; neighbours {}",
        percentile(nat_tcp_first.clone(), 0.5),
        percentile(nat_tcp_first, 1.0),
        percentile(nat_tcp_second, 0.5),
        total(&st, "neigh_queued"),
        total(&st, "drop_no_neigh"),
        total(&st, "fib_miss"),
        status["neighbours"]
    );
}

#[test]
fn vip_nowhere_serves_nat_and_dsr_from_empty_neighbour_tables() {
    placement_serves_everything(VipPlacement::Nowhere);
}

#[test]
fn vip_on_balancer_lo_serves_nat_and_dsr_from_empty_neighbour_tables() {
    placement_serves_everything(VipPlacement::Lo);
}

#[test]
fn vip_on_client_nic_serves_nat_and_dsr_from_empty_neighbour_tables() {
    placement_serves_everything(VipPlacement::ClientNic);
}

/// `ip neigh flush` on the balancer every 700 ms for about 12 s, with the VIP on `lo`
/// (HAProxy style): every request is answered; the agent writes its entries again.
#[test]
fn neighbour_flushes_under_traffic_lose_no_client() {
    let lab = setup(VipPlacement::Lo, 4);
    let topo = &lab.topo;
    let reqs = requests(topo);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut flushes = 0;
    let mut seen = BTreeMap::new();
    let mut outs = Vec::new();
    std::thread::scope(|s| {
        let flusher = s.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                flush(topo);
                n += 1;
                std::thread::sleep(Duration::from_millis(700));
            }
            n
        });
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(12) {
            let round = parallel_requests(topo.client(), &reqs, TIMEOUT, 64).unwrap();
            answers("under flushes", &reqs, &round, &mut seen);
            outs.extend(round);
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        flushes = flusher.join().unwrap();
    });
    let split: Vec<_> = seen.iter().filter(|(_, b)| b.len() > 1).collect();
    assert!(split.is_empty(), "clients moved: {split:?}");
    let st = stats(&lab.agent);
    assert_eq!(total(&st, "drop_no_neigh"), 0, "{st}");
    let status = lab.agent.ok(&["status"]).unwrap();
    assert!(
        status["neighbours"]["rewritten_after_delete"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "the flushes went unnoticed: {status}"
    );
    let slow = outs
        .iter()
        .filter(|o| o.elapsed > Duration::from_millis(500) || o.tries > 1)
        .count();
    eprintln!(
        "flushes {flushes}: {} requests, all answered; {slow} took a retransmit (>500 ms or a resent datagram); neigh_queued {}; drop_no_neigh {}; p50 {:?} p99 {:?}; neighbours {}",
        outs.len(),
        total(&st, "neigh_queued"),
        total(&st, "drop_no_neigh"),
        percentile(outs.iter().map(|o| o.elapsed).collect(), 0.5),
        percentile(outs.iter().map(|o| o.elapsed).collect(), 0.99),
        status["neighbours"]
    );
}

/// Restores a global sysctl when dropped.
struct GlobalSysctl {
    key: &'static str,
    old: String,
}

impl GlobalSysctl {
    fn set(key: &'static str, value: &str) -> GlobalSysctl {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let old = std::fs::read_to_string(&path).unwrap().trim().to_string();
        std::fs::write(&path, value).unwrap();
        GlobalSysctl { key, old }
    }
}

impl Drop for GlobalSysctl {
    fn drop(&mut self) {
        let path = format!("/proc/sys/{}", self.key.replace('.', "/"));
        let _ = std::fs::write(path, &self.old);
    }
}

/// About a minute with the neighbour garbage collector at its most eager (the table's
/// `gc_thresh1` is global to the host: 1 here, restored after; stale after 2 s on the
/// balancer's interfaces): every round of requests is answered, while an ordinary stale
/// entry is collected (the collector did run).
#[test]
fn neighbour_garbage_collection_takes_no_next_hop_away() {
    let lab = setup(VipPlacement::Nowhere, 4);
    let topo = &lab.topo;
    let mut ifaces = vec![topo.lb_client_if().to_string()];
    ifaces.extend(topo.lb_backend_ifs().iter().map(|s| s.to_string()));
    for i in &ifaces {
        for f in ["ipv4", "ipv6"] {
            topo.lb()
                .sysctl(&format!("net.{f}.neigh.{i}.gc_stale_time"), "2")
                .unwrap();
            topo.lb()
                .sysctl(&format!("net.{f}.neigh.{i}.base_reachable_time_ms"), "1000")
                .unwrap();
        }
    }
    let _gc = GlobalSysctl::set("net.ipv4.neigh.default.gc_thresh1", "1");
    let _gc6 = GlobalSysctl::set("net.ipv6.neigh.default.gc_thresh1", "1");
    // A canary: an ordinary entry nobody uses. The collector removes it once stale.
    topo.lb()
        .exec(&[
            "ip",
            "neigh",
            "replace",
            "198.18.0.250",
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            topo.lb_client_if(),
            "nud",
            "stale",
        ])
        .unwrap();
    let reqs = requests(topo);
    let mut seen = BTreeMap::new();
    let t = Instant::now();
    let mut rounds = 0;
    let mut canary_gone = None;
    while t.elapsed() < Duration::from_secs(60) {
        let round = parallel_requests(topo.client(), &reqs, TIMEOUT, 64).unwrap();
        answers(&format!("gc round {rounds}"), &reqs, &round, &mut seen);
        rounds += 1;
        if canary_gone.is_none()
            && !topo
                .lb()
                .exec(&["ip", "neigh", "show", "198.18.0.250"])
                .unwrap()
                .contains("198.18.0.250")
        {
            canary_gone = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let split: Vec<_> = seen.iter().filter(|(_, b)| b.len() > 1).collect();
    assert!(split.is_empty(), "clients moved: {split:?}");
    assert!(
        canary_gone.is_some(),
        "the collector never ran: the canary entry is still there"
    );
    let st = stats(&lab.agent);
    assert_eq!(total(&st, "drop_no_neigh"), 0, "{st}");
    eprintln!(
        "gc: {rounds} rounds of {} requests, all answered; canary collected after {:?}; neigh_queued {}; drop_no_neigh {}",
        reqs.len(),
        canary_gone.unwrap(),
        total(&st, "neigh_queued"),
        total(&st, "drop_no_neigh")
    );
}

/// Forwarding off, and a NAT backend behind an interface the agent is not attached to:
/// the agent says so at start, in its log and in `stickylb status`, naming the fix; the
/// forwarding warning goes once forwarding is back on.
#[test]
fn broken_setups_are_reported_at_start_with_the_fix() {
    let topo = Topology::build(TopologyOpts {
        backends: 2,
        clients: 1,
        ..Default::default()
    })
    .unwrap();
    topo.lb()
        .sysctl("net.ipv4.conf.all.forwarding", "0")
        .unwrap();
    let cfg = format!(
        "[[service]]\nname = \"web\"\nlisten = \"{}:80\"\nhealth = {{ kind = \"none\" }}\n[[service.backend]]\naddress = \"{}:{BPORT}\"\n[[service.backend]]\naddress = \"{}:{BPORT}\"\n",
        topo.vip_v4(),
        topo.backend(1).v4,
        topo.backend(2).v4
    );
    // Attached to the client side and backend 1 only.
    let agent = Agent::start(topo.lb(), &[topo.lb_client_if(), "to-be1"], &cfg, &[]).unwrap();
    // The start-time checks run as soon as the agent is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let warnings: Vec<String> = loop {
        let status = agent.ok(&["status"]).unwrap();
        let w: Vec<String> = status["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_string())
            .collect();
        if w.len() >= 2 || Instant::now() > deadline {
            break w;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let fwd = warnings
        .iter()
        .find(|w| w.contains("IPv4 forwarding is off on to-client"))
        .unwrap_or_else(|| panic!("no forwarding warning: {warnings:?}"));
    assert!(fwd.contains("sysctl -w net.ipv4.ip_forward=1"), "{fwd}");
    let be2 = warnings
        .iter()
        .find(|w| w.contains(&topo.backend(2).v4.to_string()))
        .unwrap_or_else(|| panic!("no warning about backend 2: {warnings:?}"));
    assert!(
        be2.contains("to-be2") && be2.contains("--iface to-be2"),
        "{be2}"
    );
    assert!(
        !warnings
            .iter()
            .any(|w| w.contains(&format!("{}:", topo.backend(1).v4))
                || w.contains(&format!("backend {} ", topo.backend(1).v4))),
        "backend 1 is fine: {warnings:?}"
    );
    assert!(
        agent.log_text().contains("--iface to-be2"),
        "{}",
        agent.log_text()
    );
    // Fixed at run time: the warning goes within a refresh.
    topo.lb().sysctl("net.ipv4.ip_forward", "1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = agent.ok(&["status"]).unwrap();
        let w = status["warnings"].to_string();
        if !w.contains("forwarding is off") {
            assert!(w.contains("--iface to-be2"), "{w}");
            break;
        }
        assert!(Instant::now() < deadline, "forwarding warning stays: {w}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The neighbour queue outlives the agent like the XDP program (its tc link is pinned):
/// with the agent stopped and the neighbour table flushed, clients are still served (VIP
/// on `lo`, so a NAT reply could not take the kernel's routing); a restarted agent adopts
/// the pinned tc link.
#[test]
fn unresolved_next_hops_are_served_while_the_agent_is_down() {
    let mut lab = setup(VipPlacement::Lo, 4);
    let queue_pins = lab.agent.bpffs.join(&lab.agent.instance);
    let reqs = requests(&lab.topo);
    let mut seen = BTreeMap::new();
    let outs = parallel_requests(lab.topo.client(), &reqs, TIMEOUT, 64).unwrap();
    answers("agent up", &reqs, &outs, &mut seen);
    lab.agent.stop(libc::SIGTERM).unwrap();
    flush(&lab.topo);
    let outs = parallel_requests(lab.topo.client(), &reqs, TIMEOUT, 64).unwrap();
    answers("agent down, neighbours flushed", &reqs, &outs, &mut seen);
    let split: Vec<_> = seen.iter().filter(|(_, b)| b.len() > 1).collect();
    assert!(split.is_empty(), "clients moved: {split:?}");
    let pinned: Vec<String> = std::fs::read_dir(
        std::fs::read_dir(&queue_pins)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join("queue"),
    )
    .unwrap()
    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
    .collect();
    assert!(pinned.contains(&"to-client".to_string()), "{pinned:?}");
    lab.agent.spawn().unwrap();
    let log = lab.agent.log_text();
    assert!(!log.contains("cannot adopt the pinned tc program"), "{log}");
    let outs = parallel_requests(lab.topo.client(), &reqs, TIMEOUT, 64).unwrap();
    answers("agent back", &reqs, &outs, &mut seen);
    let st = stats(&lab.agent);
    assert_eq!(total(&st, "drop_no_neigh"), 0, "{st}");
    assert!(total(&st, "neigh_queued") > 0, "{st}");
}
