//! The `stickylb` agent end to end: the real binary in the balancer namespace, real TCP
//! clients and servers, control commands through the real CLI.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::Result;
use stickylb_tests::{
    agent::Agent, servers::all_answered, tcp_fetch_all, NameServer, Topology, TopologyOpts,
};

const PORT: u16 = 80;
const BPORT: u16 = 8080;

struct Setup {
    topo: Topology,
    servers: Vec<Option<NameServer>>,
    agent: Agent,
}

fn config(topo: &Topology, extra: &str, backends: &[usize]) -> String {
    let mut c = format!(
        "[[service]]\nname = \"web\"\nlisten = \"{}:{PORT}\"\nhealth = {{ kind = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 2 }}\n{extra}\n",
        topo.vip_v4()
    );
    for i in backends {
        c.push_str(&format!(
            "[[service.backend]]\naddress = \"{}:{BPORT}\"\n",
            topo.backend(*i).v4
        ));
    }
    c.push_str(&format!(
        "[[service]]\nname = \"web6\"\nlisten = \"[{}]:{PORT}\"\nscheduler = \"maglev\"\nforwarding = \"nat\"\nhealth = {{ kind = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 2 }}\n",
        topo.vip_v6()
    ));
    for i in backends {
        c.push_str(&format!(
            "[[service.backend]]\naddress = \"[{}]:{BPORT}\"\n",
            topo.backend(*i).v6
        ));
    }
    c
}

fn setup(clients: usize, extra: &str) -> Result<Setup> {
    let topo = Topology::build(TopologyOpts {
        backends: 3,
        clients,
        ..Default::default()
    })?;
    let servers = topo
        .backends()
        .iter()
        .map(|b| NameServer::spawn(&b.ns, BPORT, &b.name).map(Some))
        .collect::<Result<_>>()?;
    let mut ifaces = vec![topo.lb_client_if()];
    ifaces.extend(topo.lb_backend_ifs());
    let cfg = config(&topo, extra, &[1, 2, 3]);
    let agent = Agent::start(topo.lb(), &ifaces, &cfg, &[])?;
    agent.wait_checks_settled()?;
    Ok(Setup {
        topo,
        servers,
        agent,
    })
}

/// One fetch per client address (v4 or v6) → which backend answered (None = failed).
fn round(s: &Setup, v6: bool, clients: &[usize]) -> BTreeMap<usize, Option<String>> {
    let vip: IpAddr = if v6 {
        s.topo.vip_v6().into()
    } else {
        s.topo.vip_v4().into()
    };
    let pairs: Vec<(IpAddr, SocketAddr)> = clients
        .iter()
        .map(|&c| {
            let src: IpAddr = if v6 {
                s.topo.client_v6s()[c].into()
            } else {
                s.topo.client_v4s()[c].into()
            };
            (src, SocketAddr::new(vip, PORT))
        })
        .collect();
    let res = tcp_fetch_all(s.topo.client(), &pairs, Duration::from_millis(700)).unwrap();
    clients
        .iter()
        .copied()
        .zip(res.into_iter().map(|r| r.ok()))
        .collect()
}

fn backend_addr(s: &Setup, i: usize) -> String {
    format!("{}:{BPORT}", s.topo.backend(i).v4)
}

#[test]
fn control_commands_change_traffic_as_documented() {
    let s = setup(24, "").unwrap();
    let first: Vec<usize> = (0..12).collect();
    let before = all_answered(&round(&s, false, &first));
    assert_eq!(
        before
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "round-robin spreads: {before:?}"
    );
    // status reads as text without --json (the answer itself with it).
    let out = std::process::Command::new(stickylb_tests::agent::stickylb_bin().unwrap())
        .args(["status", "--socket"])
        .arg(&s.agent.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with(&format!("instance {} (pid ", s.agent.instance))
            && text.contains("stick table ")
            && !text.contains('{'),
        "{text}"
    );
    // table show / lookup
    let table = s.agent.ok(&["table", "show", "web"]).unwrap();
    assert_eq!(table["total"], 12, "{table}");
    let c0 = s.topo.client_v4s()[0].to_string();
    let look = s.agent.ok(&["table", "lookup", "web", &c0]).unwrap();
    assert_eq!(look["next_packet"], "stays on its backend", "{look}");
    // drain backend-1: its clients stay, new clients avoid it
    s.agent
        .ok(&["backend", "state", "web", &backend_addr(&s, 1), "drain"])
        .unwrap();
    assert_eq!(
        all_answered(&round(&s, false, &first)),
        before,
        "drain moved clients"
    );
    let new: Vec<usize> = (12..18).collect();
    let after_drain = all_answered(&round(&s, false, &new));
    assert!(
        after_drain.values().all(|b| b != "backend-1"),
        "drained backend got new clients: {after_drain:?}"
    );
    // weight 0 on backend-2: new clients only to backend-3
    s.agent
        .ok(&["backend", "weight", "web", &backend_addr(&s, 2), "0"])
        .unwrap();
    let new2 = all_answered(&round(&s, false, &[18, 19, 20]));
    assert!(new2.values().all(|b| b == "backend-3"), "{new2:?}");
    // pin and clear
    let c1 = s.topo.client_v4s()[1].to_string();
    s.agent
        .ok(&["table", "pin", "web", &c1, &backend_addr(&s, 1)])
        .unwrap();
    assert_eq!(all_answered(&round(&s, false, &[1]))[&1], "backend-1");
    s.agent
        .ok(&["table", "clear", "web", "--client", &c1])
        .unwrap();
    assert_eq!(
        all_answered(&round(&s, false, &[1]))[&1],
        "backend-3",
        "cleared client re-picked (only backend-3 takes new clients)"
    );
    // maint on backend-1: its clients move, nobody else does
    s.agent
        .ok(&["backend", "weight", "web", &backend_addr(&s, 2), "1"])
        .unwrap();
    s.agent
        .ok(&["backend", "state", "web", &backend_addr(&s, 1), "ready"])
        .unwrap();
    let snapshot = all_answered(&round(&s, false, &first));
    s.agent
        .ok(&["backend", "state", "web", &backend_addr(&s, 1), "maint"])
        .unwrap();
    let after = all_answered(&round(&s, false, &first));
    for c in &first {
        if snapshot[c] == "backend-1" {
            assert_ne!(after[c], "backend-1", "client {c} still on a maint backend");
        } else {
            assert_eq!(
                after[c], snapshot[c],
                "client {c} moved although its backend is healthy"
            );
        }
    }
    // remove and add
    s.agent
        .ok(&["backend", "remove", "web", &backend_addr(&s, 1)])
        .unwrap();
    let list = s.agent.ok(&["backend", "list", "web"]).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    s.agent
        .ok(&["backend", "add", "web", &backend_addr(&s, 1)])
        .unwrap();
    let newer = all_answered(&round(&s, false, &(21..24).collect::<Vec<_>>()));
    assert!(
        newer.values().any(|b| b == "backend-1"),
        "re-added backend gets new clients: {newer:?}"
    );
    // refusals: exit 1 with a reason; usage errors exit 2; the agent stays up
    let (code, _, err) = s
        .agent
        .ctl(&["backend", "weight", "web", &backend_addr(&s, 2), "300"])
        .unwrap();
    assert_eq!(code, 1, "{err}");
    let (code, out, _) = s
        .agent
        .ctl(&["backend", "state", "web", "192.0.2.1:1", "ready"])
        .unwrap();
    assert_eq!(code, 1);
    assert!(out.contains("has no backend"), "{out}");
    let (code, out, _) = s
        .agent
        .ctl(&["backend", "state", "web", &backend_addr(&s, 2), "up"])
        .unwrap();
    assert_eq!(code, 1);
    assert!(
        out.contains("use \\\"ready\\\", \\\"drain\\\" or \\\"maint\\\""),
        "{out}"
    );
    let (code, _, _) = s.agent.ctl(&["backend", "frobnicate"]).unwrap();
    assert_eq!(code, 2);
    s.agent.ok(&["status"]).unwrap();
    // The socket is 0600; with the file opened up, the agent still refuses other users
    // by their peer credentials.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&s.agent.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");
    std::fs::set_permissions(&s.agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&s.agent.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = stickylb_tests::agent::stickylb_bin().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["status", "--socket"])
        .arg(&s.agent.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uid 65534 may not control stickylb"),
        "{out:?}"
    );
    s.agent.ok(&["status"]).unwrap();
    // stats reflect the traffic
    let stats = s.agent.ok(&["stats"]).unwrap();
    assert!(
        stats["services"][0]["new_clients"].as_u64().unwrap() >= 24,
        "{stats}"
    );
}

#[test]
fn killed_backend_clients_are_served_again_without_collateral_moves_or_flap_back() {
    let mut s = setup(30, "").unwrap();
    let clients: Vec<usize> = (0..30).collect();
    let before = all_answered(&round(&s, false, &clients));
    let victims: Vec<usize> = clients
        .iter()
        .copied()
        .filter(|c| before[c] == "backend-2")
        .collect();
    assert!(!victims.is_empty());
    let killed = Instant::now();
    s.servers[1] = None; // backend-2's server stops: connections are refused
                         // Poll one victim until it is served again.
    let probe = victims[0];
    let served_after = loop {
        if let Some(Some(b)) = round(&s, false, &[probe]).get(&probe) {
            break (killed.elapsed(), b.clone());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "victim never served again"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // interval 200ms × fall 2 + interval = 600 ms, plus check timeout and one fetch.
    assert!(
        served_after.0 < Duration::from_millis(1500),
        "served again only after {:?}",
        served_after.0
    );
    eprintln!(
        "killed backend's client served again after {:?}",
        served_after.0
    );
    let after = all_answered(&round(&s, false, &clients));
    for c in &clients {
        if victims.contains(c) {
            assert_ne!(after[c], "backend-2");
        } else {
            assert_eq!(after[c], before[c], "collateral move of client {c}");
        }
    }
    // Backend comes back: nobody flaps back, new clients reach it.
    s.servers[1] = Some(NameServer::spawn(&s.topo.backend(2).ns, BPORT, "backend-2").unwrap());
    std::thread::sleep(Duration::from_millis(900)); // rise 2 × 200 ms, with margin
    let back = all_answered(&round(&s, false, &clients));
    assert_eq!(back, after, "clients flapped back");
    s.agent.ok(&["table", "clear", "web"]).unwrap();
    let fresh = all_answered(&round(&s, false, &clients));
    assert!(
        fresh.values().any(|b| b == "backend-2"),
        "recovered backend gets new clients: {fresh:?}"
    );
    let stats = s.agent.ok(&["stats"]).unwrap();
    assert!(
        stats["services"][0]["repick_down"].as_u64().unwrap() >= victims.len() as u64,
        "{stats}"
    );
}

#[test]
fn agent_sigterm_and_sigkill_move_nobody_and_traffic_flows_while_down() {
    let mut s = setup(20, "").unwrap();
    let clients: Vec<usize> = (0..20).collect();
    let v4 = all_answered(&round(&s, false, &clients));
    let v6 = all_answered(&round(&s, true, &clients));
    let layout = lb_agent::pins::PinLayout::new(&s.agent.bpffs, &s.agent.instance);
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        s.agent.stop(sig).unwrap();
        // An agent of before 2026-12-02 left its events ring buffer pinned as
        // `STICK_EVENTS` (standing in: another map pinned under that name): the upgraded
        // agent removes it and adopts everything else.
        let retired = layout.map(lb_agent::pins::RETIRED_PINS[0]);
        if sig == libc::SIGTERM {
            let m = aya::maps::MapData::from_pin(layout.map(lb_common::MAP_RR_CURSOR)).unwrap();
            m.pin(&retired).unwrap();
        }
        assert_eq!(
            all_answered(&round(&s, false, &clients)),
            v4,
            "moved while the agent was down (signal {sig})"
        );
        assert_eq!(
            all_answered(&round(&s, true, &clients)),
            v6,
            "IPv6 moved while the agent was down (signal {sig})"
        );
        s.agent.spawn().unwrap();
        s.agent.wait_checks_settled().unwrap();
        assert!(
            s.agent.log_text().contains("adopted pinned state"),
            "{}",
            s.agent.log_text()
        );
        assert!(
            !retired.exists(),
            "the retired pin {} is left",
            retired.display()
        );
        assert_eq!(
            all_answered(&round(&s, false, &clients)),
            v4,
            "moved after restart (signal {sig})"
        );
        assert_eq!(all_answered(&round(&s, true, &clients)), v6);
        let table = s.agent.ok(&["table", "show", "web"]).unwrap();
        assert_eq!(table["total"], 20, "stick table lost: {table}");
    }
}

#[test]
fn reload_applies_the_difference_and_bad_input_is_refused() {
    let s = setup(20, "").unwrap();
    let clients: Vec<usize> = (0..20).collect();
    // Start with backends 1 and 2 only.
    s.agent.write_config(&config(&s.topo, "", &[1, 2])).unwrap();
    s.agent.ok(&["reload"]).unwrap();
    s.agent.ok(&["table", "clear", "web"]).unwrap();
    let before = all_answered(&round(&s, false, &clients));
    assert!(before.values().all(|b| b != "backend-3"));
    // Add backend 3 by reload: nobody moves.
    s.agent
        .write_config(&config(&s.topo, "", &[1, 2, 3]))
        .unwrap();
    s.agent.ok(&["reload"]).unwrap();
    assert_eq!(
        all_answered(&round(&s, false, &clients)),
        before,
        "reload moved clients of unchanged backends"
    );
    // A broken config is refused with file and line; the running one stays.
    s.agent
        .write_config("[[service]]\nname = \"web\"\nlisten = \"nope\"\n")
        .unwrap();
    let (code, out, _) = s.agent.ctl(&["reload"]).unwrap();
    assert_eq!(code, 1);
    assert!(
        out.contains("stickylb.toml") && out.contains(":3"),
        "error must name file and line: {out}"
    );
    s.agent.signal(libc::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        all_answered(&round(&s, false, &clients)),
        before,
        "bad config changed traffic"
    );
    s.agent.ok(&["status"]).unwrap();
    // Bad control requests are refused, the agent stays up.
    let (code, out, _) = s
        .agent
        .ctl(&["table", "lookup", "web", "not-an-ip"])
        .unwrap();
    assert_eq!(code, 1);
    assert!(out.contains("not an IP address"), "{out}");
    let (code, out, _) = s
        .agent
        .ctl(&[
            "service",
            "add",
            "x",
            "--listen",
            "10.9.9.9:80",
            "--scheduler",
            "leastconn",
        ])
        .unwrap();
    assert_eq!(code, 1);
    assert!(
        out.contains("roundrobin"),
        "error must say what is accepted: {out}"
    );
    s.agent.ok(&["status"]).unwrap();
}

#[test]
fn runtime_changes_survive_restart_unless_the_file_changed() {
    let mut s = setup(4, "").unwrap();
    let b1 = backend_addr(&s, 1);
    s.agent
        .ok(&["backend", "state", "web", &b1, "drain"])
        .unwrap();
    s.agent.stop(libc::SIGTERM).unwrap();
    s.agent.spawn().unwrap();
    let list = s.agent.ok(&["backend", "list", "web"]).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == b1.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["admin"], "drain", "runtime change lost: {list}");
    assert!(
        s.agent.log_text().contains("using the runtime state"),
        "{}",
        s.agent.log_text()
    );
    // The file changes on disk: it wins.
    s.agent.stop(libc::SIGTERM).unwrap();
    s.agent
        .write_config(&config(&s.topo, "scheduler = \"roundrobin\"", &[1, 2, 3]))
        .unwrap();
    s.agent.spawn().unwrap();
    let list = s.agent.ok(&["backend", "list", "web"]).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == b1.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["admin"], "ready", "{list}");
    assert!(
        s.agent.log_text().contains("changed on disk"),
        "{}",
        s.agent.log_text()
    );
}

#[test]
fn detach_removes_the_data_path() {
    let mut s = setup(4, "").unwrap();
    assert!(all_answered(&round(&s, false, &[0])).contains_key(&0));
    s.agent.stop(libc::SIGTERM).unwrap();
    let bin = stickylb_tests::agent::stickylb_bin().unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "detach",
            "--bpffs",
            stickylb_tests::agent::TEST_BPFFS,
            "--instance",
            &s.agent.instance,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("detached from 4 interface(s)"),
        "{out:?}"
    );
    let r = round(&s, false, &[0]);
    assert_eq!(r[&0], None, "VIP still answered after detach");
    let links = s.topo.lb().exec(&["ip", "link"]).unwrap();
    assert!(!links.contains("xdp"), "{links}");
}

#[test]
fn metrics_endpoint_and_debug_log() {
    let topo = Topology::build(TopologyOpts {
        backends: 3,
        clients: 4,
        ..Default::default()
    })
    .unwrap();
    let servers: Vec<NameServer> = topo
        .backends()
        .iter()
        .map(|b| NameServer::spawn(&b.ns, BPORT, &b.name).unwrap())
        .collect();
    let mut ifaces = vec![topo.lb_client_if()];
    ifaces.extend(topo.lb_backend_ifs());
    let agent = Agent::start(
        topo.lb(),
        &ifaces,
        &config(&topo, "", &[1, 2, 3]),
        &["--metrics", "127.0.0.1:9478", "--debug"],
    )
    .unwrap();
    let s = Setup {
        topo,
        servers: servers.into_iter().map(Some).collect(),
        agent,
    };
    all_answered(&round(&s, false, &[0, 1, 2]));
    // Metrics: Prometheus text from inside the balancer namespace (loopback only).
    let body = s
        .topo
        .lb()
        .enter(|| {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect("127.0.0.1:9478")?;
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            c.read_to_string(&mut out)?;
            Ok(out)
        })
        .unwrap();
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    assert!(
        body.contains("stickylb_service_new_clients_total{service=\"web\"} 3"),
        "{body}"
    );
    assert!(
        body.contains("stickylb_backend_up{service=\"web\""),
        "{body}"
    );
    assert!(
        body.contains("stickylb_stick_table_capacity 400000"),
        "{body}"
    );
    // The data path's debug log reaches the agent's log.
    std::thread::sleep(Duration::from_millis(300));
    let log = s.agent.log_text();
    assert!(
        log.contains("-> backend"),
        "no data-path debug line in the log:\n{log}"
    );
}

/// `stick_on = "src/24"` through the real agent and CLI: the extra client addresses
/// (198.18.0.10 onwards) are one /24, so they share one entry and one backend; the table
/// commands name that entry by the network and accept any of its addresses.
#[test]
fn table_commands_speak_networks() {
    let s = setup(4, "stick_on = \"src/24\"").unwrap();
    let clients: Vec<usize> = (0..4).collect();
    let first = all_answered(&round(&s, false, &clients));
    let backends: std::collections::BTreeSet<&String> = first.values().collect();
    assert_eq!(backends.len(), 1, "one network, one backend: {first:?}");
    let table = s.agent.ok(&["table", "show", "web"]).unwrap();
    assert_eq!(table["total"], 1, "{table}");
    assert_eq!(table["entries"][0]["client"], "198.18.0.0/24", "{table}");
    let c2 = s.topo.client_v4s()[2].to_string();
    let look = s.agent.ok(&["table", "lookup", "web", &c2]).unwrap();
    assert_eq!(look["network"], "198.18.0.0/24", "{look}");
    assert_eq!(look["next_packet"], "stays on its backend", "{look}");
    // Pin the network elsewhere: every address of it follows.
    let was: &str = first[&0].as_str();
    let target = (1..=3)
        .find(|i| format!("backend-{i}") != was)
        .expect("another backend");
    let pinned = s
        .agent
        .ok(&[
            "table",
            "pin",
            "web",
            "198.18.0.0/24",
            &backend_addr(&s, target),
        ])
        .unwrap();
    assert_eq!(pinned["client"], "198.18.0.0/24", "{pinned}");
    let moved = all_answered(&round(&s, false, &clients));
    assert!(
        moved.values().all(|b| *b == format!("backend-{target}")),
        "the pinned network did not follow: {moved:?}"
    );
    // Another prefix length is refused, naming the service's.
    let (code, out, _) = s
        .agent
        .ctl(&["table", "clear", "web", "--client", "198.18.0.0/16"])
        .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/24 network"), "{out}");
    // Clearing by any address of the network removes the network's entry.
    let c3 = s.topo.client_v4s()[3].to_string();
    let cleared = s
        .agent
        .ok(&["table", "clear", "web", "--client", &c3])
        .unwrap();
    assert_eq!(cleared["removed"], 1, "{cleared}");
    let table = s.agent.ok(&["table", "show", "web"]).unwrap();
    assert_eq!(table["total"], 0, "{table}");
    // The full-address IPv6 service keeps host entries.
    let _ = all_answered(&round(&s, true, &[0]));
    let table = s.agent.ok(&["table", "show", "web6"]).unwrap();
    assert_eq!(
        table["entries"][0]["client"],
        s.topo.client_v6s()[0].to_string(),
        "{table}"
    );
}
