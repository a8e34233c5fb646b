//! Faults, end to end (issue 6): the real agent in the balancer namespace while things go
//! wrong around it. Agent killed under load, a flapping backend, an interface deleted
//! under the agent, bpffs missing or unusable, 10 000 backends in 100 services, a full
//! stick table, and bad input of every kind on the control socket and in the config.
//!
//! No assertion is on timing except generous sanity bounds; durations are printed.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;
use stickylb_tests::{
    agent::Agent,
    servers::{all_answered, connect_from},
    tcp_fetch_all, NameServer, Topology, TopologyOpts,
};

const PORT: u16 = 80;
const BPORT: u16 = 8080;

struct Setup {
    topo: Topology,
    servers: Vec<Option<NameServer>>,
    agent: Agent,
}

/// One IPv4 service "web" on the VIP over the given backends.
fn web_config(topo: &Topology, health: &str, extra: &str, backends: &[usize]) -> String {
    let mut c = format!(
        "[[service]]\nname = \"web\"\nlisten = \"{}:{PORT}\"\nhealth = {health}\n{extra}\n",
        topo.vip_v4()
    );
    for i in backends {
        c.push_str(&format!(
            "[[service.backend]]\naddress = \"{}:{BPORT}\"\n",
            topo.backend(*i).v4
        ));
    }
    c
}

const HEALTH_200MS: &str =
    "{ kind = \"tcp\", interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 2 }";

/// Topology with `backends` name servers and the agent on every balancer interface.
fn setup(backends: usize, clients: usize, config: &dyn Fn(&Topology) -> String) -> Result<Setup> {
    setup_args(backends, clients, config, &[])
}

fn setup_args(
    backends: usize,
    clients: usize,
    config: &dyn Fn(&Topology) -> String,
    args: &[&str],
) -> Result<Setup> {
    let topo = Topology::build(TopologyOpts {
        backends,
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
    let agent = Agent::start(topo.lb(), &ifaces, &config(&topo), args)?;
    Ok(Setup {
        topo,
        servers,
        agent,
    })
}

/// One fetch per client source address → which backend answered (None = failed).
fn round(topo: &Topology, clients: &[IpAddr]) -> BTreeMap<IpAddr, Option<String>> {
    let vip = SocketAddr::new(topo.vip_v4().into(), PORT);
    let pairs: Vec<(IpAddr, SocketAddr)> = clients.iter().map(|&c| (c, vip)).collect();
    let res = tcp_fetch_all(topo.client(), &pairs, Duration::from_millis(1000)).unwrap();
    clients
        .iter()
        .copied()
        .zip(res.into_iter().map(|r| r.ok()))
        .collect()
}

fn v4_clients(topo: &Topology, n: usize) -> Vec<IpAddr> {
    topo.client_v4s()[..n].iter().map(|a| (*a).into()).collect()
}

/// Connects from `src` to `dst` in the calling thread's namespace and reads the answer.
fn fetch_here(src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<String> {
    let mut s = connect_from(src, dst, timeout)?;
    let mut out = String::new();
    s.read_to_string(&mut out).context("read")?;
    Ok(out.trim().to_string())
}

/// One fetch of the background load.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    client: IpAddr,
    answer: Result<String, String>,
}

/// Runs `during` while a thread in the client namespace fetches through the VIP from
/// every client in turn, as fast as it can; returns every fetch.
fn under_load(topo: &Topology, clients: &[IpAddr], during: impl FnOnce()) -> Vec<Sample> {
    let stop = AtomicBool::new(false);
    let samples = Mutex::new(Vec::new());
    let vip = SocketAddr::new(topo.vip_v4().into(), PORT);
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            topo.client()
                .enter(|| {
                    while !stop.load(Ordering::SeqCst) {
                        for &c in clients {
                            let answer = fetch_here(c, vip, Duration::from_secs(3))
                                .map_err(|e| format!("{e:#}"));
                            samples.lock().unwrap().push(Sample {
                                at: Instant::now(),
                                client: c,
                                answer,
                            });
                        }
                    }
                    Ok(())
                })
                .unwrap()
        });
        // Make sure the load runs before and after whatever happens.
        std::thread::sleep(Duration::from_millis(300));
        during();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        load.join().unwrap();
    });
    samples.into_inner().unwrap()
}

fn backend_row<'a>(list: &'a Value, addr: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .unwrap_or_else(|| panic!("no backend {addr} in {list}"))
}

/// GET /metrics from inside the balancer namespace.
fn metrics(topo: &Topology, addr: &str) -> String {
    let addr = addr.to_string();
    topo.lb()
        .enter(move || {
            let mut c = std::net::TcpStream::connect(&addr)?;
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            c.read_to_string(&mut out)?;
            Ok(out)
        })
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. SIGKILL under load
// ---------------------------------------------------------------------------------------

/// The agent is SIGKILLed twice while 20 clients fetch through the VIP without pause, and
/// restarted each time: the pinned XDP links keep forwarding while it is down, so no
/// fetch fails and no client ever reaches another backend than before the first kill.
#[test]
fn sigkill_under_load_moves_nobody_and_drops_nothing() {
    let mut s = setup(3, 20, &|t| web_config(t, HEALTH_200MS, "", &[1, 2, 3])).unwrap();
    s.agent.wait_checks_settled().unwrap();
    let clients = v4_clients(&s.topo, 20);
    let before = all_answered(&round(&s.topo, &clients));
    assert_eq!(
        before.values().collect::<BTreeSet<_>>().len(),
        3,
        "round-robin spreads over the 3 backends: {before:?}"
    );
    let mut downtimes = Vec::new();
    let agent = &mut s.agent;
    let samples = under_load(&s.topo, &clients, || {
        for _ in 0..2 {
            agent.stop(libc::SIGKILL).unwrap();
            let down = Instant::now();
            // Long enough for every client to fetch several times while nobody is there.
            std::thread::sleep(Duration::from_millis(1500));
            agent.spawn().unwrap();
            downtimes.push((down, Instant::now()));
            std::thread::sleep(Duration::from_millis(700));
        }
    });
    let failed: Vec<&Sample> = samples.iter().filter(|x| x.answer.is_err()).collect();
    let moved: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.answer.as_ref().is_ok_and(|b| *b != before[&x.client]))
        .collect();
    let while_down = samples
        .iter()
        .filter(|x| downtimes.iter().any(|(a, b)| x.at > *a && x.at < *b))
        .count();
    eprintln!(
        "{} fetches under load, {while_down} while the agent was down; {} failed, {} moved",
        samples.len(),
        failed.len(),
        moved.len()
    );
    assert!(
        while_down >= 2 * clients.len(),
        "the load did not run while the agent was down ({while_down} fetches)"
    );
    assert!(failed.is_empty(), "fetches failed: {failed:?}");
    assert!(moved.is_empty(), "clients moved: {moved:?}");
    assert_eq!(
        all_answered(&round(&s.topo, &clients)),
        before,
        "moved after the restarts"
    );
    assert!(
        s.agent.log_text().matches("adopted pinned state").count() >= 2,
        "{}",
        s.agent.log_text()
    );
    let table = s.agent.ok(&["table", "show", "web"]).unwrap();
    assert_eq!(table["total"], 20, "stick table lost: {table}");
}

// ---------------------------------------------------------------------------------------
// 2. A flapping backend
// ---------------------------------------------------------------------------------------

/// backend-2's server stops and starts every second for 8 seconds (rise = fall = 1, checks
/// every 100 ms): clients of backend-1 and backend-3 never move and never fail, and the
/// flapping shows as a per-backend counter in `backend list` and in the metrics.
#[test]
fn flapping_backend_moves_no_healthy_client_and_is_counted() {
    let health = "{ kind = \"tcp\", interval = \"100ms\", timeout = \"80ms\", rise = 1, fall = 1 }";
    let mut s = setup_args(
        3,
        30,
        &|t| web_config(t, health, "", &[1, 2, 3]),
        &["--metrics", "127.0.0.1:9478"],
    )
    .unwrap();
    let clients = v4_clients(&s.topo, 30);
    let before = all_answered(&round(&s.topo, &clients));
    let healthy: Vec<IpAddr> = clients
        .iter()
        .copied()
        .filter(|c| before[c] != "backend-2")
        .collect();
    let victims: Vec<IpAddr> = clients
        .iter()
        .copied()
        .filter(|c| before[c] == "backend-2")
        .collect();
    assert!(!victims.is_empty() && !healthy.is_empty(), "{before:?}");
    let b2 = format!("{}:{BPORT}", s.topo.backend(2).v4);
    let mut toggles = 0u64;
    let mut rounds = 0;
    let mut victim_failures = 0;
    for _ in 0..8 {
        s.servers[1] = match s.servers[1].take() {
            Some(server) => {
                drop(server);
                None
            }
            None => Some(NameServer::spawn(&s.topo.backend(2).ns, BPORT, "backend-2").unwrap()),
        };
        toggles += 1;
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            let r = round(&s.topo, &clients);
            rounds += 1;
            for c in &healthy {
                assert_eq!(
                    r[c].as_deref(),
                    Some(before[c].as_str()),
                    "client {c} of a healthy backend moved or failed while backend-2 flapped (toggle {toggles})"
                );
            }
            victim_failures += victims.iter().filter(|c| r[*c].is_none()).count();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(s.servers[1].is_some(), "ends with backend-2 up");
    // Its last state change (up) is seen within a few checks.
    std::thread::sleep(Duration::from_millis(500));
    let list = s.agent.ok(&["backend", "list", "web"]).unwrap();
    let flaps = backend_row(&list, &b2)["flaps"].as_u64().unwrap();
    eprintln!(
        "{toggles} toggles, {rounds} rounds of {} clients; backend-2 flaps = {flaps}; {victim_failures} failed fetches of its clients (before a check saw it down)",
        clients.len()
    );
    assert!(
        flaps >= toggles,
        "flaps {flaps} < toggles {toggles}: {list}"
    );
    assert_eq!(backend_row(&list, &b2)["health"], "up", "{list}");
    // The healthy backends do not flap with backend-2: a change of state of theirs can
    // only come from a check of their own that failed (an 80 ms timeout on a loaded
    // machine), two changes (down, up) per failed check at most.
    for i in [1, 3] {
        let a = format!("{}:{BPORT}", s.topo.backend(i).v4);
        let row = backend_row(&list, &a);
        let flaps = row["flaps"].as_u64().unwrap();
        let failed_checks = row["check"]["failures"].as_u64().unwrap();
        assert!(
            flaps <= 2 * failed_checks,
            "{a}: {flaps} flaps, {failed_checks} failed checks: {list}"
        );
    }
    let stats = s.agent.ok(&["stats"]).unwrap();
    let in_stats = stats["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == b2.as_str())
        .unwrap()["flaps"]
        .as_u64()
        .unwrap();
    assert!(in_stats >= toggles, "{stats}");
    let text = metrics(&s.topo, "127.0.0.1:9478");
    let line = text
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "stickylb_backend_flaps_total{{service=\"web\",backend=\"{b2}\"}}"
            ))
        })
        .unwrap_or_else(|| panic!("no flaps metric for {b2}:\n{text}"));
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= toggles, "{line}");
    // After all that, the clients of the healthy backends are still where they were.
    let after = all_answered(&round(&s.topo, &healthy));
    for c in &healthy {
        assert_eq!(after[c], before[c], "client {c} moved");
    }
}

// ---------------------------------------------------------------------------------------
// 3. An interface deleted under the agent
// ---------------------------------------------------------------------------------------

/// The agent runs on four interfaces; `to-be3` (the link to backend-3) is deleted. The
/// agent logs it, keeps running and answering, traffic through the other interfaces keeps
/// flowing (clients of backends 1 and 2 stay, backend-3's clients are re-picked once its
/// health check fails). When the link is re-created, the agent attaches to it again and
/// backend-3 serves new clients (its NAT replies are rewritten by XDP on the new link).
#[test]
fn deleted_interface_is_logged_and_the_others_keep_working() {
    let mut s = setup(3, 30, &|t| web_config(t, HEALTH_200MS, "", &[1, 2, 3])).unwrap();
    let clients = v4_clients(&s.topo, 30);
    let before = all_answered(&round(&s.topo, &clients));
    let status = s.agent.ok(&["status"]).unwrap();
    assert_eq!(
        status["interfaces"].as_array().unwrap().len(),
        4,
        "{status}"
    );
    let gone_if = s.topo.backend(3).lb_ifname.clone();
    let deleted = Instant::now();
    s.topo.lb().ip(&["link", "del", &gone_if]).unwrap();
    assert!(
        s.agent.wait_log(
            &format!("interface {gone_if} is gone"),
            Duration::from_secs(5)
        ),
        "deletion not logged:\n{}",
        s.agent.log_text()
    );
    eprintln!("deletion logged after {:?}", deleted.elapsed());
    assert!(
        s.agent.is_running(),
        "agent exited:\n{}",
        s.agent.log_text()
    );
    let status = s.agent.ok(&["status"]).unwrap();
    let row = status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == gone_if.as_str())
        .unwrap();
    assert_eq!(row["xdp"], "gone", "{status}");
    // Backend-3 is now unreachable: its clients get re-picked once the check fails; the
    // others never move.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let r = round(&s.topo, &clients);
        for (c, b) in &r {
            if before[c] != "backend-3" {
                assert_eq!(
                    b.as_deref(),
                    Some(before[c].as_str()),
                    "client {c} of a backend behind a live interface moved or failed"
                );
            }
        }
        if r.values().all(|b| b.is_some()) {
            break all_answered(&r);
        }
        assert!(Instant::now() < deadline, "never served again: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(after.values().all(|b| b != "backend-3"), "{after:?}");
    // Control commands still work.
    s.agent
        .ok(&[
            "backend",
            "state",
            "web",
            &format!("{}:{BPORT}", s.topo.backend(1).v4),
            "drain",
        ])
        .unwrap();
    s.agent
        .ok(&[
            "backend",
            "state",
            "web",
            &format!("{}:{BPORT}", s.topo.backend(1).v4),
            "ready",
        ])
        .unwrap();
    // An agent restarted while the interface is gone starts without it (it was attached
    // before: not a typo) and nobody moves.
    let served = all_answered(&round(&s.topo, &clients));
    s.agent.stop(libc::SIGKILL).unwrap();
    s.agent.spawn().unwrap();
    assert!(
        s.agent.log_text().contains(&format!(
            "interface {gone_if} is gone (it was attached before"
        )),
        "{}",
        s.agent.log_text()
    );
    assert_eq!(
        all_answered(&round(&s.topo, &clients)),
        served,
        "moved by the restart"
    );
    // The link comes back: attached again, backend-3 comes back up and serves new clients.
    s.topo.recreate_backend_link(3).unwrap();
    assert!(
        s.agent.wait_log(
            &format!("interface {gone_if} is back"),
            Duration::from_secs(5)
        ),
        "re-attach not logged:\n{}",
        s.agent.log_text()
    );
    let b3 = format!("{}:{BPORT}", s.topo.backend(3).v4);
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend_row(&s.agent.ok(&["backend", "list", "web"]).unwrap(), &b3)["health"] != "up" {
        assert!(Instant::now() < deadline, "backend-3 never came back up");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.agent.ok(&["table", "clear", "web"]).unwrap();
    let fresh = all_answered(&round(&s.topo, &clients));
    assert!(
        fresh.values().any(|b| b == "backend-3"),
        "backend-3 serves nobody through its re-created link: {fresh:?}"
    );
    let status = s.agent.ok(&["status"]).unwrap();
    assert!(
        status["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["xdp"] != "gone"),
        "{status}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. bpffs missing or unusable
// ---------------------------------------------------------------------------------------

/// Unmounts a bpffs mount point made by a test and removes its parent directory (after
/// the agent's guard ran).
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .output();
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// No bpffs at the `--bpffs` path: the agent mounts one there itself, in the host's
/// mount namespace (it runs under `ip netns exec`, whose private mounts would die with
/// it), so its pins outlive it: a SIGKILLed agent's successor adopts them and no client
/// moves.
#[test]
fn missing_bpffs_is_mounted_by_the_agent_and_outlives_it() {
    let dir = PathBuf::from(format!(
        "/run/stickylb-test/fresh-{}/bpffs",
        std::process::id()
    ));
    let _mount = MountGuard(dir.clone());
    assert!(!dir.exists());
    let topo = Topology::build(TopologyOpts {
        backends: 3,
        clients: 10,
        ..Default::default()
    })
    .unwrap();
    let _servers: Vec<NameServer> = topo
        .backends()
        .iter()
        .map(|b| NameServer::spawn(&b.ns, BPORT, &b.name).unwrap())
        .collect();
    let mut ifaces = vec![topo.lb_client_if()];
    ifaces.extend(topo.lb_backend_ifs());
    let mut agent = Agent::start_with_bpffs(
        topo.lb(),
        &ifaces,
        &web_config(&topo, HEALTH_200MS, "", &[1, 2, 3]),
        &[],
        &dir,
    )
    .unwrap();
    let log = agent.log_text();
    assert!(log.contains("mounted bpffs at"), "{log}");
    assert!(
        lb_agent::pins::is_bpffs(&dir),
        "no bpffs at {} in the host mount namespace",
        dir.display()
    );
    let clients = v4_clients(&topo, 10);
    let before = all_answered(&round(&topo, &clients));
    agent.stop(libc::SIGKILL).unwrap();
    assert_eq!(
        all_answered(&round(&topo, &clients)),
        before,
        "moved while down"
    );
    agent.spawn().unwrap();
    assert!(
        agent.log_text().contains("adopted pinned state"),
        "{}",
        agent.log_text()
    );
    assert_eq!(
        all_answered(&round(&topo, &clients)),
        before,
        "moved after restart"
    );
}

/// A `--bpffs` path the agent cannot use (a file, below a file, relative) stops it at
/// start with an error that names the path and says what to do, before anything is
/// attached.
#[test]
fn unusable_bpffs_path_is_refused_with_a_clear_error() {
    let topo = Topology::build(TopologyOpts {
        backends: 1,
        clients: 0,
        ..Default::default()
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("stickylb-badbpffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("stickylb.toml");
    std::fs::write(&cfg, web_config(&topo, "{ kind = \"none\" }", "", &[1])).unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let bin = stickylb_tests::agent::stickylb_bin().unwrap();
    for bad in [
        file.display().to_string(),
        file.join("below").display().to_string(),
        "relative/bpffs".to_string(),
    ] {
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", topo.lb_ns_name()])
            .arg(&bin)
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .args(["--iface", topo.lb_client_if(), "--bpffs", &bad])
            .args(["--instance", "badbpffs", "--metrics", "off"])
            .arg("--socket")
            .arg(dir.join("ctl.sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent kept running with --bpffs {bad}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("--bpffs {bad}: {}", err.trim());
        assert!(!out.status.success(), "{out:?}");
        assert!(err.contains(&bad), "error does not name the path: {err}");
        assert!(
            err.contains("mount -t bpf bpf"),
            "error does not say what to do: {err}"
        );
        let links = topo.lb().exec(&["ip", "link"]).unwrap();
        assert!(!links.contains("xdp"), "attached anyway: {links}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// 5. 10 000 backends in 100 services
// ---------------------------------------------------------------------------------------

/// 100 services, 10 000 backends: "web" (the real one, backend `real`) and 99 services
/// of 101 backends at addresses that do not exist, half Maglev, half round-robin, health
/// checks off. `changed` shifts a few backends of three services.
fn big_config(topo: &Topology, real: usize, changed: bool) -> String {
    let mut c = String::with_capacity(1 << 20);
    c.push_str(&format!(
        "[[service]]\nname = \"web\"\nlisten = \"{}:{PORT}\"\nhealth = {{ kind = \"none\" }}\nstick_table = {{ size = 1000 }}\n[[service.backend]]\naddress = \"{}:{BPORT}\"\n",
        topo.vip_v4(),
        topo.backend(real).v4
    ));
    for s in 1..=99u32 {
        let scheduler = if s % 2 == 0 { "maglev" } else { "roundrobin" };
        c.push_str(&format!(
            "[[service]]\nname = \"svc{s}\"\nlisten = \"198.18.200.1:{}\"\nscheduler = \"{scheduler}\"\nhealth = {{ kind = \"none\" }}\nstick_table = {{ size = 1000 }}\n",
            1000 + s
        ));
        for b in 0..101u32 {
            // Services 10, 11 and 12 get five other backends after the change.
            let shifted = changed && (10..=12).contains(&s) && b < 5;
            let host = if shifted { 200 + b } else { b % 200 + 1 };
            c.push_str(&format!(
                "[[service.backend]]\naddress = \"10.{s}.{}.{host}:80\"\n",
                b / 200
            ));
        }
    }
    c
}

/// The agent starts with 10 000 backends in 100 services and reloads a change of a few
/// of them; both times are printed (the debug build is what tests run). The reload must
/// reach the data path: "web" moves from backend-1 to backend-2 for new clients, and the
/// changed backends are listed.
#[test]
fn ten_thousand_backends_load_and_reload() {
    let topo = Topology::build(TopologyOpts {
        backends: 2,
        clients: 4,
        ..Default::default()
    })
    .unwrap();
    let _servers: Vec<NameServer> = topo
        .backends()
        .iter()
        .map(|b| NameServer::spawn(&b.ns, BPORT, &b.name).unwrap())
        .collect();
    let mut ifaces = vec![topo.lb_client_if()];
    ifaces.extend(topo.lb_backend_ifs());
    let cfg = big_config(&topo, 1, false);
    let started = Instant::now();
    let agent = Agent::start(topo.lb(), &ifaces, &cfg, &[]).unwrap();
    let load = started.elapsed();
    let status = agent.ok(&["status"]).unwrap();
    assert_eq!(status["services"], 100, "{status}");
    assert_eq!(status["backends"], 10_000, "{status}");
    let clients = v4_clients(&topo, 4);
    let first = all_answered(&round(&topo, &clients[..2]));
    assert!(first.values().all(|b| b == "backend-1"), "{first:?}");

    agent.write_config(&big_config(&topo, 2, true)).unwrap();
    let started = Instant::now();
    let r = agent.ok(&["reload"]).unwrap();
    let reload = started.elapsed();
    eprintln!(
        "10 000 backends / 100 services: start (until the socket answers) {load:?}, reload of a few changes {reload:?}"
    );
    assert_eq!(r["services"], 100, "{r}");
    let log = agent.log_text();
    eprintln!(
        "agent log: {}",
        log.lines()
            .filter(|l| l.contains("configuration applied") || l.contains("reloaded"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    // The data path follows: web's only backend is now backend-2 (its old clients are
    // re-picked, new ones go there too).
    let after = all_answered(&round(&topo, &clients));
    assert!(after.values().all(|b| b == "backend-2"), "{after:?}");
    let list = agent.ok(&["backend", "list", "svc11"]).unwrap();
    backend_row(&list, "10.11.0.200:80");
    assert_eq!(list.as_array().unwrap().len(), 101);
    // A reload that changes nothing.
    let started = Instant::now();
    agent.ok(&["reload"]).unwrap();
    // Times are printed, never asserted (this machine is shared and noisy); the bench
    // measures the control plane.
    eprintln!("reload without changes {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 6. The stick table full
// ---------------------------------------------------------------------------------------

/// A stick table far smaller than the number of clients: every new client is still
/// served (the kernel's LRU evicts approximately the least recently seen), the agent
/// keeps running, the most recent clients keep their entries, an evicted client is served
/// again, and the operator sees it: `stats` shows the table full (entries ≈ capacity)
/// while the service counted more first picks than the table holds.
#[test]
fn full_stick_table_evicts_and_keeps_serving() {
    let mut s = setup(3, 0, &|t| {
        web_config(t, HEALTH_200MS, "stick_table = { size = 64 }", &[1, 2, 3])
    })
    .unwrap();
    let status = s.agent.ok(&["status"]).unwrap();
    let capacity = status["stick_table"]["capacity"].as_u64().unwrap() as usize;
    assert!(capacity >= 64, "{status}");
    let n = capacity + capacity / 2;
    let clients: Vec<IpAddr> = s
        .topo
        .add_client_block(n)
        .unwrap()
        .into_iter()
        .map(IpAddr::from)
        .collect();
    let started = Instant::now();
    let first = round(&s.topo, &clients);
    let failed: Vec<_> = first.iter().filter(|(_, b)| b.is_none()).collect();
    eprintln!(
        "capacity {capacity} (config size 64), {n} clients fetched in {:?}",
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} clients not served: {failed:?}",
        failed.len()
    );
    assert!(s.agent.is_running(), "{}", s.agent.log_text());
    // The fill comes from the agent's background count of the table (every second): wait
    // for a count made after the traffic.
    let served = Instant::now();
    let stats = loop {
        let stats = s.agent.ok(&["stats"]).unwrap();
        let age = Duration::from_millis(stats["stick_table"]["census_age_ms"].as_u64().unwrap());
        if age < served.elapsed() {
            break stats;
        }
        assert!(
            served.elapsed() < Duration::from_secs(30),
            "no new count of the table: {stats}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let entries = stats["stick_table"]["entries"].as_u64().unwrap() as usize;
    let new_clients = stats["services"][0]["new_clients"].as_u64().unwrap() as usize;
    eprintln!(
        "stick table: {entries}/{} entries; {new_clients} first picks (so at least {} evicted)",
        stats["stick_table"]["capacity"],
        new_clients.saturating_sub(entries)
    );
    assert!(entries <= capacity, "{stats}");
    // The kernel's LRU frees entries in batches (up to 128 per CPU), so a full table
    // shows somewhat fewer entries than its capacity.
    assert!(
        entries >= capacity / 2,
        "table not shown full: {entries} of {capacity}"
    );
    assert!(new_clients >= n && new_clients > entries, "{stats}");
    // The most recent clients are in the table.
    for c in &clients[n - 20..] {
        let look = s
            .agent
            .ok(&["table", "lookup", "web", &c.to_string()])
            .unwrap();
        assert!(
            !look["entry"].is_null(),
            "recent client {c} evicted: {look}"
        );
    }
    // Clients were evicted and are served again (a fresh pick). The kernel's LRU is
    // approximate (per-CPU free lists, a reference bit instead of an exact order), so
    // which old clients go is its choice: only the count is certain, and the newest
    // clients above survived.
    let evicted: Vec<IpAddr> = clients[..n - 20]
        .iter()
        .copied()
        .filter(|c| {
            s.agent
                .ok(&["table", "lookup", "web", &c.to_string()])
                .unwrap()["entry"]
                .is_null()
        })
        .collect();
    assert!(
        evicted.len() >= n - capacity,
        "{} clients evicted, {n} clients into {capacity} entries must evict at least {}",
        evicted.len(),
        n - capacity
    );
    let evicted: Vec<IpAddr> = evicted.into_iter().take(20).collect();
    all_answered(&round(&s.topo, &evicted));
    let stats = s.agent.ok(&["stats"]).unwrap();
    assert!(
        stats["services"][0]["new_clients"].as_u64().unwrap() as usize
            >= new_clients + evicted.len(),
        "{stats}"
    );
    assert!(stats["stick_table"]["entries"].as_u64().unwrap() as usize <= capacity);
    s.agent.ok(&["status"]).unwrap();
}

// ---------------------------------------------------------------------------------------
// 7. Bad input never stops the agent
// ---------------------------------------------------------------------------------------

/// Sends raw bytes on one control connection, then reads one answer line (None when the
/// agent closed the connection without answering).
fn raw_request(socket: &Path, bytes: &[u8]) -> Option<Value> {
    let mut c = UnixStream::connect(socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(bytes).unwrap();
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line).ok()?;
    if line.is_empty() {
        return None;
    }
    Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?}: {e}")))
}

/// Garbage, oversized, non-UTF-8, malformed and mistyped requests on the control socket,
/// connections dropped half way, and broken configs on reload (by command and by SIGHUP):
/// each is refused with a reason (an error answer, never a silent close), and afterwards
/// the agent still runs, answers, and forwards exactly as before.
#[test]
fn bad_input_is_refused_and_the_agent_keeps_running() {
    let mut s = setup(3, 10, &|t| web_config(t, HEALTH_200MS, "", &[1, 2, 3])).unwrap();
    let clients = v4_clients(&s.topo, 10);
    let before = all_answered(&round(&s.topo, &clients));
    let socket = s.agent.socket.clone();
    let big = vec![b'a'; 2 << 20];
    let mut oversized = big.clone();
    oversized.push(b'\n');
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"hello agent\n".to_vec()),
        ("truncated JSON", b"{\"cmd\":\n".to_vec()),
        ("JSON array", b"[1,2,3]\n".to_vec()),
        ("JSON string", b"\"status\"\n".to_vec()),
        ("no cmd", b"{\"service\":\"web\"}\n".to_vec()),
        ("unknown cmd", b"{\"cmd\":\"frobnicate\"}\n".to_vec()),
        ("cmd not a string", b"{\"cmd\":42}\n".to_vec()),
        (
            "wrong types",
            b"{\"cmd\":\"backend.weight\",\"service\":\"web\",\"address\":1,\"weight\":\"x\"}\n"
                .to_vec(),
        ),
        (
            "unknown field",
            b"{\"cmd\":\"backend.list\",\"service\":\"web\",\"verbose\":true}\n".to_vec(),
        ),
        (
            "missing argument",
            b"{\"cmd\":\"backend.state\",\"service\":\"web\"}\n".to_vec(),
        ),
        (
            "unknown service",
            b"{\"cmd\":\"backend.list\",\"service\":\"nope\"}\n".to_vec(),
        ),
        (
            "weight too big",
            b"{\"cmd\":\"backend.weight\",\"service\":\"web\",\"address\":\"198.18.11.2:8080\",\"weight\":4294967296}\n".to_vec(),
        ),
        (
            "bad service definition",
            b"{\"cmd\":\"service.add\",\"service\":{\"name\":\"x\",\"listen\":\"999.1.1.1:80\"}}\n"
                .to_vec(),
        ),
        (
            "table pin to a foreign backend",
            b"{\"cmd\":\"table.pin\",\"service\":\"web\",\"client\":\"198.18.0.10\",\"backend\":\"192.0.2.1:1\"}\n".to_vec(),
        ),
        ("NUL bytes", b"\0\0\0\0\n".to_vec()),
        ("not UTF-8", b"{\"cmd\":\"st\xff\xfeatus\"}\n".to_vec()),
        ("oversized line", oversized),
    ];
    for (what, bytes) in &cases {
        let answer = raw_request(&socket, bytes);
        let shown: String = String::from_utf8_lossy(&bytes[..bytes.len().min(60)]).into();
        let answer = answer
            .unwrap_or_else(|| panic!("{what} ({shown:?}): connection closed without an answer"));
        assert_eq!(answer["ok"], false, "{what} accepted: {answer}");
        let error = answer["error"].as_str().unwrap_or("");
        eprintln!("{what}: {error}");
        assert!(error.len() > 10, "{what}: no reason given: {answer}");
        assert!(s.agent.is_running(), "agent died on {what}");
    }
    // Unknown fields are refused on argument-less commands too, naming the field.
    let lax = raw_request(&socket, b"{\"cmd\":\"status\",\"verbose\":true}\n").unwrap();
    assert_eq!(lax["ok"], false, "unknown field on status accepted: {lax}");
    assert!(
        lax["error"].as_str().unwrap_or("").contains("verbose"),
        "{lax}"
    );
    assert!(s.agent.is_running());
    // Several requests on one connection, one bad in the middle: the others are answered.
    let mut c = UnixStream::connect(&socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"{\"cmd\":\"status\"}\nnonsense\n{\"cmd\":\"stats\"}\n")
        .unwrap();
    let mut r = BufReader::new(&c);
    let oks: Vec<bool> = (0..3)
        .map(|_| {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            serde_json::from_str::<Value>(&l).unwrap()["ok"] == true
        })
        .collect();
    assert_eq!(oks, [true, false, true]);
    drop(r);
    drop(c);
    // More than 16 MiB without a newline, then the connection closes; a request that
    // is sent and abandoned before its answer; connections left open and idle.
    {
        let mut c = UnixStream::connect(&socket).unwrap();
        for _ in 0..10 {
            if c.write_all(&big[..]).is_err() {
                break;
            }
        }
    }
    {
        let mut c = UnixStream::connect(&socket).unwrap();
        c.write_all(b"{\"cmd\":\"stats\"}\n").unwrap();
    }
    let idle: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    s.agent.ok(&["status"]).unwrap();
    drop(idle);

    // Broken configs on reload: refused, the running configuration stays.
    let good = std::fs::read_to_string(&s.agent.config).unwrap();
    let vip = s.topo.vip_v4();
    let broken: Vec<(&str, Vec<u8>)> = vec![
        ("syntax error", b"[[service]\nname = ".to_vec()),
        ("bad address", b"[[service]]\nname = \"web\"\nlisten = \"nope\"\n".to_vec()),
        (
            "unknown key",
            format!("[[service]]\nname = \"web\"\nlisten = \"{vip}:80\"\nbalance = \"leastconn\"\n")
                .into_bytes(),
        ),
        (
            "duplicate VIP",
            format!(
                "[[service]]\nname = \"a\"\nlisten = \"{vip}:80\"\n[[service]]\nname = \"b\"\nlisten = \"{vip}:80\"\n"
            )
            .into_bytes(),
        ),
        ("not UTF-8", b"[[service]]\nname = \"\xff\"\n".to_vec()),
        // Valid TOML without services, as a truncated or half-written file is: it would
        // remove every running service, so it is refused unless `--allow-empty`.
        ("empty file", Vec::new()),
        ("only comments", b"# stickylb\n\n".to_vec()),
    ];
    for (what, text) in &broken {
        let tmp = s.agent.config.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &s.agent.config).unwrap();
        let (code, out, err) = s.agent.ctl(&["reload"]).unwrap();
        eprintln!(
            "reload with {what}: exit {code}: {}{}",
            out.trim(),
            err.trim()
        );
        assert_eq!(code, 1, "{what}: reload not refused: {out}{err}");
        assert!(out.len() + err.len() > 20, "{what}: no reason given");
        if text.is_empty() || text.starts_with(b"#") {
            let said = format!("{out}{err}");
            assert!(
                said.contains("defines no services") && said.contains("--allow-empty"),
                "{what}: {said}"
            );
        }
        s.agent.signal(libc::SIGHUP).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(s.agent.is_running(), "agent died on SIGHUP with {what}");
        assert_eq!(
            all_answered(&round(&s.topo, &clients)),
            before,
            "{what} changed traffic"
        );
    }
    // The config file is gone.
    std::fs::remove_file(&s.agent.config).unwrap();
    let (code, out, _) = s.agent.ctl(&["reload"]).unwrap();
    assert_eq!(code, 1, "{out}");
    s.agent.signal(libc::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(s.agent.is_running());
    s.agent.write_config(&good).unwrap();
    s.agent.ok(&["reload"]).unwrap();
    let status = s.agent.ok(&["status"]).unwrap();
    assert_eq!(status["services"], 1, "{status}");
    assert_eq!(all_answered(&round(&s.topo, &clients)), before);
    let log = s.agent.log_text();
    assert!(log.contains("SIGHUP"), "SIGHUP refusals not logged:\n{log}");
    // Removing every service on purpose, then bringing them back.
    s.agent.write_config("").unwrap();
    let r = s.agent.ok(&["reload", "--allow-empty"]).unwrap();
    assert_eq!(r["services"], 0, "{r}");
    assert_eq!(s.agent.ok(&["status"]).unwrap()["services"], 0);
    s.agent.write_config(&good).unwrap();
    s.agent.ok(&["reload"]).unwrap();
    all_answered(&round(&s.topo, &clients));
}

/// An interface that does not exist and never was attached (a typo) stops the agent at
/// start, with its name and the interfaces that do exist.
#[test]
fn unknown_interface_at_start_is_refused_with_the_existing_ones() {
    let topo = Topology::build(TopologyOpts {
        backends: 1,
        clients: 0,
        ..Default::default()
    })
    .unwrap();
    let err = Agent::start(
        topo.lb(),
        &[topo.lb_client_if(), "to-be9"],
        &web_config(&topo, "{ kind = \"none\" }", "", &[1]),
        &[],
    )
    .err()
    .expect("agent started with a missing interface");
    let err = format!("{err:#}");
    eprintln!("{}", err.lines().last().unwrap_or(""));
    assert!(
        err.contains("\"to-be9\" does not exist") && err.contains("to-client"),
        "{err}"
    );
}
