//! Issue 13's tests: VIPs announced through real BIRD 2 daemons. A router namespace runs
//! BIRD with ECMP (`merge paths on`, five-tuple hashing) and eBGP + BFD to three nodes;
//! each node runs BIRD (exporting what the agent assigns on `lo`) and a stickylb agent in
//! DSR mode with `[announce]`; backends answer with their name (`tests/src/bgp.rs`).
//!
//! Outages are measured and printed, never asserted on time (the machine is shared);
//! the timeouts below are only generous bounds for readiness.
//!
//! The IPv6 test runs an IPv6 service beside the IPv4 one, announced over IPv6 sessions.
//!
//! Test 5 runs the nodes with `[cluster]` (replication, `synced`); the others without
//! (Maglev over equal backend sets moves nobody on its own). The announcer's rule is also
//! tested with a fed `synced` watch in `lb-agent/src/announce`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use stickylb_tests::bgp::{
    median_max, moved, one_backend_each, outage, BgpCluster, Detection, LabOpts, Load, VIP2_V4,
};
use stickylb_tests::cluster_net::{VIP_V4, VIP_V6};

const CONVERGE: Duration = Duration::from_secs(30);

fn lab(opts: LabOpts) -> BgpCluster {
    let lab = BgpCluster::start(opts).unwrap();
    let nodes: Vec<usize> = (1..=lab.opts.nodes).collect();
    for vip in lab.vips() {
        let took = lab.wait_fib(vip, &nodes, CONVERGE).unwrap();
        println!("{vip}: {} nexthops after {took:?}", nodes.len());
    }
    lab
}

fn pinned(
    lab: &BgpCluster,
    clients: &[IpAddr],
    rounds: usize,
) -> std::collections::BTreeMap<IpAddr, String> {
    one_backend_each(&lab.fetch(VIP_V4, clients, rounds).unwrap()).unwrap()
}

/// Node `i`'s `announce` status once `ok` holds for it (the daemon is read every second).
fn wait_status(
    lab: &BgpCluster,
    i: usize,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let a = lab.announce_status(i).unwrap();
        if ok(&a) || Instant::now() > deadline {
            return a;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Test 1: three nodes up: three nexthops; connections spread over the nodes; every
/// client on one backend; `status` says announced.
#[test]
fn three_nodes_announce_and_the_router_spreads_over_them() {
    let lab = lab(LabOpts::default());
    assert_eq!(lab.fib(VIP_V4).unwrap(), lab.hops_of(&[1, 2, 3]));
    let clients = lab.clients();
    let before = lab.node_packets("web");
    let map = pinned(&lab, &clients, 3);
    assert_eq!(map.len(), clients.len());
    let after = lab.node_packets("web");
    for i in 1..=3 {
        assert!(
            after[&i] > before[&i],
            "node{i} got no traffic: {before:?} → {after:?}"
        );
        let a = wait_status(&lab, i, |a| a["vips"][0]["announced"] == true);
        assert_eq!(a["vips"][0]["vip"], VIP_V4.to_string(), "{a}");
        assert_eq!(a["vips"][0]["announced"], true, "{a}");
        assert_eq!(a["daemon"]["state"], "running", "{a}");
        assert_eq!(a["daemon"]["sessions"][0]["info"], "Established", "{a}");
    }
    let mut per: std::collections::BTreeMap<&str, usize> = Default::default();
    for b in map.values() {
        *per.entry(b.as_str()).or_default() += 1;
    }
    println!("clients per backend: {per:?}; packets per node: {after:?}");
    assert_eq!(per.len(), 3, "{per:?}");
    // The address is on lo, marked as the agent's.
    let lo = lab
        .net
        .node(1)
        .ns
        .ip(&["addr", "show", "dev", "lo"])
        .unwrap();
    assert!(lo.contains(&format!("{VIP_V4}/32")), "{lo}");
}

/// Test 1 and 2 for IPv6: the agent assigns the IPv6 VIP as a /128 on `lo`, BIRD exports
/// it over IPv6 sessions, the router installs one multipath route over the nodes' IPv6
/// addresses; IPv6 clients spread over the nodes, each on one backend; a killed node
/// leaves the IPv6 set and nobody moves.
#[test]
fn ipv6_vips_are_announced_spread_and_withdrawn_like_ipv4() {
    let mut lab = lab(LabOpts {
        ipv6: true,
        ..LabOpts::default()
    });
    let v6_hops: Vec<IpAddr> = (1..=3).map(|i| IpAddr::V6(lab.net.node(i).v6)).collect();
    assert_eq!(lab.fib(VIP_V6).unwrap(), v6_hops);
    let clients = lab.clients_v6();
    let before = lab.node_packets("web6");
    let map = one_backend_each(&lab.fetch(VIP_V6, &clients, 3).unwrap()).unwrap();
    assert_eq!(map.len(), clients.len());
    let after = lab.node_packets("web6");
    for i in 1..=3 {
        assert!(
            after[&i] > before[&i],
            "node{i} got no IPv6 traffic: {before:?} → {after:?}"
        );
        let a = wait_status(&lab, i, |a| {
            a["vips"]
                .as_array()
                .is_some_and(|v| v.iter().all(|x| x["announced"] == true))
        });
        let vips: Vec<&serde_json::Value> = a["vips"].as_array().unwrap().iter().collect();
        assert_eq!(vips.len(), 2, "{a}");
        assert!(
            vips.iter()
                .any(|x| x["vip"] == VIP_V6.to_string() && x["announced"] == true),
            "{a}"
        );
    }
    let lo = lab
        .net
        .node(1)
        .ns
        .ip(&["-6", "addr", "show", "dev", "lo"])
        .unwrap();
    assert!(lo.contains(&format!("{VIP_V6}/128")), "{lo}");
    let mut per: std::collections::BTreeMap<&str, usize> = Default::default();
    for b in map.values() {
        *per.entry(b.as_str()).or_default() += 1;
    }
    println!("IPv6 clients per backend: {per:?}; packets per node: {after:?}");
    assert_eq!(per.len(), 3, "{per:?}");

    lab.kill_node(2).unwrap();
    lab.wait_fib(VIP_V6, &[1, 3], CONVERGE).unwrap();
    lab.wait_fib(VIP_V4, &[1, 3], CONVERGE).unwrap();
    lab.bury_node(2).unwrap();
    let again = one_backend_each(&lab.fetch(VIP_V6, &clients, 2).unwrap()).unwrap();
    assert_eq!(moved(&map, &again), Vec::<IpAddr>::new());
}

/// Test 2: a node killed (silent at the router, then agent and BIRD SIGKILLed and links
/// deleted): its nexthop goes within the BFD time; the outage is printed; 0 moved.
#[test]
fn a_killed_node_leaves_the_ecmp_set_and_nobody_moves() {
    let mut lab = lab(LabOpts::default());
    let clients = lab.clients();
    let before = pinned(&lab, &clients, 2);
    let load = Load::start(lab.net.client(), &clients, VIP_V4, 8).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = lab.kill_node(2).unwrap();
    let gone = lab.wait_fib(VIP_V4, &[1, 3], CONVERGE).unwrap();
    let withdrawn = t0.elapsed().min(gone);
    std::thread::sleep(Duration::from_secs(3));
    let samples = load.stop();
    let o = outage(&samples, t0);
    println!(
        "FIGURE node killed (BFD 100ms x3): route withdrawn after {} ms; client-visible outage {} ms; \
         {} requests, {} stalled, {} failed, {} clients saw two backends",
        withdrawn.as_millis(),
        o.outage.as_millis(),
        o.requests,
        o.stalled,
        o.failed,
        o.two_backends
    );
    assert_eq!(o.two_backends, 0, "{o:?}");
    lab.bury_node(2).unwrap();
    let after = pinned(&lab, &clients, 2);
    assert_eq!(moved(&before, &after), Vec::<IpAddr>::new());
}

/// Test 3: a node drained: its route withdrawn, no request fails, 0 moved; `status`
/// reports it drained. Undrained: back. SIGTERM: drains, then exits; the route goes.
#[test]
fn a_drained_node_is_withdrawn_without_a_failed_request() {
    let mut lab = lab(LabOpts::default());
    let clients = lab.clients();
    let before = pinned(&lab, &clients, 2);
    let load = Load::start(lab.net.client(), &clients, VIP_V4, 8).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let st = lab.agent(3).ok(&["node", "drain"]).unwrap();
    assert_eq!(st["draining"], true, "{st}");
    let took = lab.wait_fib(VIP_V4, &[1, 2], CONVERGE).unwrap();
    let deadline = Instant::now() + CONVERGE;
    let drained = loop {
        let a = lab.announce_status(3).unwrap();
        if a["drained"] == true {
            break a;
        }
        assert!(Instant::now() < deadline, "not drained: {a}");
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "drain: route withdrawn after {} ms, drained after {} ms",
        took.as_millis(),
        t0.elapsed().as_millis()
    );
    assert_eq!(drained["vips"][0]["why"], "draining", "{drained}");
    assert_eq!(drained["vips"][0]["assigned"], false, "{drained}");
    std::thread::sleep(Duration::from_millis(500));
    let samples = load.stop();
    let o = outage(&samples, t0);
    println!("drain seen by clients: {o:?}");
    assert_eq!(o.failed, 0, "{o:?}");
    assert_eq!(o.two_backends, 0, "{o:?}");
    assert_eq!(
        moved(&before, &pinned(&lab, &clients, 2)),
        Vec::<IpAddr>::new()
    );

    // Undrain: announced again.
    lab.agent(3).ok(&["node", "undrain"]).unwrap();
    lab.wait_fib(VIP_V4, &[1, 2, 3], CONVERGE).unwrap();

    // SIGTERM: withdraw, wait for the traffic to go (drain_timeout 10 s), exit.
    let load = Load::start(lab.net.client(), &clients, VIP_V4, 8).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let agent = lab.run_mut(1).agent.as_mut().unwrap();
    agent.signal(libc::SIGTERM).unwrap();
    lab.wait_fib(VIP_V4, &[2, 3], CONVERGE).unwrap();
    let agent = lab.run_mut(1).agent.as_mut().unwrap();
    let deadline = Instant::now() + CONVERGE;
    while agent.is_running() {
        assert!(
            Instant::now() < deadline,
            "agent still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "SIGTERM: drained and exited after {} ms",
        t0.elapsed().as_millis()
    );
    assert!(
        agent.log_text().contains("drained in"),
        "{}",
        agent.log_text()
    );
    std::thread::sleep(Duration::from_millis(300));
    let o = outage(&load.stop(), t0);
    assert_eq!(o.failed, 0, "{o:?}");
    assert_eq!(
        moved(&before, &pinned(&lab, &clients, 2)),
        Vec::<IpAddr>::new()
    );
}

/// Test 4: one node loses every backend of one service (its health checks to them cut):
/// it withdraws that VIP only; the others keep serving it.
#[test]
fn a_node_without_backends_for_one_service_withdraws_that_vip_only() {
    let lab = lab(LabOpts {
        with_second: true,
        clients: 30,
        ..Default::default()
    });
    // Node 1 cannot reach backend 3, api's only backend (its checks fail).
    let be3 = lab.net.backend(3).v4;
    let n1 = &lab.net.node(1).ns;
    n1.exec(&["nft", "add", "table", "inet", "cut"]).unwrap();
    n1.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "cut",
        "out",
        "{ type filter hook output priority 0; }",
    ])
    .unwrap();
    n1.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "cut",
        "out",
        "ip",
        "daddr",
        &be3.to_string(),
        "drop",
    ])
    .unwrap();
    lab.wait_fib(VIP2_V4, &[2, 3], CONVERGE).unwrap();
    let a = wait_status(&lab, 1, |a| a["vips"][1]["why"] == "no-healthy-backend");
    let rows = a["vips"].as_array().unwrap();
    let row = |vip: std::net::Ipv4Addr| rows.iter().find(|r| r["vip"] == vip.to_string()).unwrap();
    assert_eq!(row(VIP2_V4)["why"], "no-healthy-backend", "{a}");
    assert_eq!(row(VIP_V4)["announced"], true, "{a}");
    // web keeps all three nodes (backend 3 is down on node 1, the others are not).
    assert_eq!(lab.fib(VIP_V4).unwrap(), lab.hops_of(&[1, 2, 3]));
    let clients = lab.clients();
    let got = lab.fetch(VIP2_V4, &clients, 3).unwrap();
    for (c, rs) in &got {
        for r in rs {
            assert_eq!(r.as_deref(), Ok("backend-3"), "client {c}");
        }
    }
    // Healed: announced again.
    n1.exec(&["nft", "delete", "table", "inet", "cut"]).unwrap();
    lab.wait_fib(VIP2_V4, &[1, 2, 3], CONVERGE).unwrap();
}

/// Test 5: a node added announces only once synced with its peers, then takes its
/// share and moves nobody. The members list names node 5, which never comes, so a node
/// is synced only at `sync_timeout` (its other peers taught it before): the window in
/// which it must not announce is long enough to see.
#[test]
fn an_added_node_announces_only_after_sync_and_moves_nobody() {
    let sync = Duration::from_secs(6);
    let t0 = Instant::now();
    let mut lab = BgpCluster::start(LabOpts {
        nodes: 3,
        clients: 50,
        cluster: Some((vec![1, 2, 3, 4, 5], sync)),
        ..Default::default()
    })
    .unwrap();
    let a = lab.announce_status(1).unwrap();
    if t0.elapsed() < sync {
        assert_eq!(a["synced"], false, "{a}");
        assert_eq!(a["vips"][0]["why"], "not-synced", "{a}");
    }
    lab.wait_fib(VIP_V4, &[1, 2, 3], CONVERGE).unwrap();
    let first = t0.elapsed();
    println!(
        "first nodes announced {} ms after start (sync_timeout {sync:?})",
        first.as_millis()
    );
    assert!(first >= sync, "announced before sync: {first:?}");
    let clients = lab.clients();
    let before = pinned(&lab, &clients, 2);
    let t1 = Instant::now();
    let i = lab.add_node().unwrap();
    let a = lab.announce_status(i).unwrap();
    let started = t1.elapsed();
    if started < sync {
        assert_eq!(a["synced"], false, "{a}");
        assert_eq!(a["vips"][0]["why"], "not-synced", "{a}");
        assert_eq!(a["vips"][0]["assigned"], false, "{a}");
        assert!(!lab
            .fib(VIP_V4)
            .unwrap()
            .contains(&IpAddr::V4(lab.net.node(i).v4)));
    }
    let took = lab.wait_fib(VIP_V4, &[1, 2, 3, i], CONVERGE).unwrap();
    println!(
        "node{i} added: in the FIB {} ms after it started",
        (t1.elapsed()).as_millis()
    );
    assert!(
        t1.elapsed() >= sync,
        "node{i} announced before sync ({took:?})"
    );
    let a = lab.announce_status(i).unwrap();
    assert_eq!(a["synced"], true, "{a}");
    let p0 = lab.node_packets("web");
    let after = pinned(&lab, &clients, 2);
    let p1 = lab.node_packets("web");
    assert!(p1[&i] > p0[&i], "node{i} takes traffic: {p0:?} → {p1:?}");
    assert_eq!(moved(&before, &after), Vec::<IpAddr>::new());
}

/// Test 6: the daemon on a node killed and started again, and missing when the agent
/// starts: the agent says so clearly, keeps forwarding, and the announcement comes back.
#[test]
fn a_missing_or_restarted_daemon_is_reported_and_the_announcement_comes_back() {
    let mut lab = lab(LabOpts {
        clients: 30,
        ..Default::default()
    });
    let clients = lab.clients();
    let before = pinned(&lab, &clients, 2);
    lab.run_mut(2).bird.as_mut().unwrap().kill(libc::SIGKILL);
    lab.wait_fib(VIP_V4, &[1, 3], CONVERGE).unwrap();
    let agent = lab.agent(2);
    assert!(
        agent.wait_log("routing daemon not running", CONVERGE),
        "{}",
        agent.log_text()
    );
    let a = wait_status(&lab, 2, |a| a["daemon"]["state"] == "not running");
    assert_eq!(a["daemon"]["state"], "not running", "{a}");
    assert_eq!(a["vips"][0]["assigned"], true, "{a}");
    assert_eq!(a["vips"][0]["announced"], false, "{a}");
    assert_eq!(a["vips"][0]["why"], "daemon-not-running", "{a}");
    // Node 2 still forwards what reaches it: one client routed to it by a rule on the
    // router, beside BIRD's route.
    let c0 = clients[0];
    let r = lab.net.router();
    let via = lab.net.node(2).v4.to_string();
    let dev = lab.net.node(2).router_if.clone();
    r.ip(&[
        "route",
        "add",
        &format!("{VIP_V4}/32"),
        "via",
        &via,
        "dev",
        &dev,
        "table",
        "77",
    ])
    .unwrap();
    r.ip(&[
        "rule",
        "add",
        "from",
        &c0.to_string(),
        "lookup",
        "77",
        "priority",
        "100",
    ])
    .unwrap();
    let p0 = lab.node_packets("web");
    let got = lab.fetch(VIP_V4, &[c0], 3).unwrap();
    let p1 = lab.node_packets("web");
    assert!(p1[&2] > p0[&2], "node 2 forwarded nothing: {p0:?} → {p1:?}");
    for res in &got[&c0] {
        assert_eq!(res.as_ref().ok(), before.get(&c0), "{got:?}");
    }
    r.ip(&[
        "rule",
        "del",
        "from",
        &c0.to_string(),
        "lookup",
        "77",
        "priority",
        "100",
    ])
    .unwrap();
    assert_eq!(
        moved(&before, &pinned(&lab, &clients, 2)),
        Vec::<IpAddr>::new()
    );
    // BIRD back: it reads lo again and the route returns; the agent says so.
    lab.run_mut(2).bird.as_mut().unwrap().spawn().unwrap();
    lab.wait_fib(VIP_V4, &[1, 2, 3], CONVERGE).unwrap();
    assert!(
        lab.agent(2).wait_log("routing daemon is back", CONVERGE),
        "{}",
        lab.agent(2).log_text()
    );
    assert_eq!(
        moved(&before, &pinned(&lab, &clients, 2)),
        Vec::<IpAddr>::new()
    );

    // The agent restarted while BIRD is down, and BIRD started after it.
    lab.run_mut(3).bird.as_mut().unwrap().kill(libc::SIGKILL);
    lab.wait_fib(VIP_V4, &[1, 2], CONVERGE).unwrap();
    let agent = lab.run_mut(3).agent.as_mut().unwrap();
    agent.stop(libc::SIGKILL).unwrap();
    agent.spawn().unwrap();
    assert!(agent.wait_log("routing daemon not running", CONVERGE));
    lab.run_mut(3).bird.as_mut().unwrap().spawn().unwrap();
    lab.wait_fib(VIP_V4, &[1, 2, 3], CONVERGE).unwrap();
    assert_eq!(
        moved(&before, &pinned(&lab, &clients, 2)),
        Vec::<IpAddr>::new()
    );
}

/// The figures: client-visible failover with BFD and with the hold timer only, median
/// and max of several runs (a node silenced at the router and healed again). Printed,
/// not asserted; `cargo xtask demo --cluster` prints the same.
#[test]
fn failover_figures_bfd_and_hold_timer() {
    let mut lab = lab(LabOpts {
        clients: 30,
        ..Default::default()
    });
    let clients = lab.clients();
    for d in [
        Detection {
            bfd: true,
            hold_s: 3,
        },
        Detection {
            bfd: false,
            hold_s: 3,
        },
    ] {
        lab.set_detection(d).unwrap();
        lab.wait_fib(VIP_V4, &[1, 2, 3], CONVERGE).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let (mut routes, mut outs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let load = Load::start(lab.net.client(), &clients, VIP_V4, 8).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            lab.isolate(2).unwrap();
            let t0 = Instant::now();
            routes.push(lab.wait_fib(VIP_V4, &[1, 3], CONVERGE).unwrap());
            std::thread::sleep(Duration::from_secs(4));
            let o = outage(&load.stop(), t0);
            assert_eq!(o.two_backends, 0, "{o:?}");
            outs.push(o.outage);
            lab.heal(2).unwrap();
            lab.wait_fib(VIP_V4, &[1, 2, 3], CONVERGE).unwrap();
            std::thread::sleep(Duration::from_secs(1));
        }
        let (rm, rx) = median_max(&routes);
        let (om, ox) = median_max(&outs);
        println!(
            "FIGURE failover {}: route withdrawn median {} ms max {} ms; client-visible outage median {} ms max {} ms (3 runs)",
            if d.bfd { "BFD 100ms x3" } else { "hold timer 3s" },
            rm.as_millis(),
            rx.as_millis(),
            om.as_millis(),
            ox.as_millis()
        );
    }
}
