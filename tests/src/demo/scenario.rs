//! The demo scenario, step by step: topology, backends and agent, sticky rounds, the
//! stick table, a backend killed and brought back, the agent restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use stickylb_tests::agent::{stickylb_bin, Agent, TEST_BPFFS};
use stickylb_tests::netns::list_netns;
use stickylb_tests::{Topology, TopologyOpts, VipPlacement};

use crate::http::{http_get_here, round, HttpNameServer};
use crate::{checkpoint, ignore_interrupts, INTERRUPTED};

/// The service (VIP) port, and the backends' port.
pub const PORT: u16 = 80;
/// Backends in the demo.
pub const BACKENDS: usize = 3;
/// Most `--clients`: with the fresh clients kept for later, the topology's 200.
pub const MAX_CLIENTS: usize = 180;
/// Health checks: every 500 ms, down after 2 failures, up after 2 successes.
const INTERVAL_MS: u64 = 500;
const FALL: u64 = 2;
const RISE: u64 = 2;
/// One HTTP request may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a killed backend's client is retried.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Give up waiting for a failover or a recovery after this long.
const GIVE_UP: Duration = Duration::from_secs(10);
/// Stick-table entries shown.
const TABLE_EXCERPT: usize = 8;
const STEPS: usize = 7;

/// What to run.
#[derive(Clone, Debug)]
pub struct Opts {
    pub clients: usize,
    pub scheduler: String,
    pub forwarding: String,
    pub rounds: usize,
    pub keep: bool,
}

/// What the demo measured; `failures` lists the checks that did not hold.
#[derive(Debug, Default)]
pub struct Report {
    pub clients: usize,
    pub scheduler: String,
    pub forwarding: String,
    pub stayed: usize,
    pub table_entries: u64,
    pub per_backend: Vec<(String, usize)>,
    pub killed: String,
    pub failover_ms: Option<u128>,
    pub failover_bound_ms: u64,
    pub victims: usize,
    pub victims_moved: usize,
    pub collateral: usize,
    pub recovery_ms: Option<u128>,
    pub flapped_back: usize,
    pub moves_after_recovery: usize,
    pub fresh: usize,
    pub fresh_on_recovered: usize,
    pub restart_clients: usize,
    pub served_while_down: usize,
    pub moved_while_down: usize,
    pub moved_after_restart: usize,
    pub failures: Vec<String>,
    pub kept: Option<Kept>,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    /// The grep-able summary lines.
    pub fn summary(&self) -> Vec<String> {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let per: Vec<String> = self
            .per_backend
            .iter()
            .map(|(b, n)| format!("{b}={n}"))
            .collect();
        vec![
            format!(
                "SUMMARY scheduler={} forwarding={} backends={BACKENDS}",
                self.scheduler, self.forwarding
            ),
            format!(
                "SUMMARY clients={} stayed_on_one_backend={} table_entries={}",
                self.clients, self.stayed, self.table_entries
            ),
            format!("SUMMARY clients_per_backend {}", per.join(" ")),
            format!(
                "SUMMARY killed={} victims={} failover_ms={} failover_bound_ms={} moved_only_dead_backend_clients={} collateral_moves={}",
                self.killed,
                self.victims,
                self.failover_ms
                    .map_or_else(|| "none".to_owned(), |ms| ms.to_string()),
                self.failover_bound_ms,
                yes(self.victims_moved == self.victims && self.collateral == 0),
                self.collateral
            ),
            format!(
                "SUMMARY flapped_back={} other_moves_after_recovery={} new_clients={} new_clients_on_recovered_backend={}",
                self.flapped_back, self.moves_after_recovery, self.fresh, self.fresh_on_recovered
            ),
            format!(
                "SUMMARY agent_restart moved={} served_while_down={} clients_checked={} moved_while_down={}",
                self.moved_after_restart,
                self.served_while_down,
                self.restart_clients,
                self.moved_while_down
            ),
            if self.failures.is_empty() {
                "SUMMARY result=ok".to_owned()
            } else {
                format!("SUMMARY result=failed checks={}", self.failures.len())
            },
        ]
    }
}

/// What `--keep` leaves running, and how to explore and remove it.
#[derive(Debug)]
pub struct Kept {
    client_ns: String,
    lb_ns: String,
    backend_ns: Vec<String>,
    backend_pids: Vec<u32>,
    agent_pid: u64,
    socket: PathBuf,
    instance: String,
    dir: PathBuf,
    client: IpAddr,
    vip: IpAddr,
}

impl Kept {
    /// The commands to explore and to clean up.
    pub fn instructions(&self) -> String {
        let bin = stickylb_bin().unwrap_or_else(|_| PathBuf::from("stickylb"));
        let bin = bin.display();
        let demo = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("stickylb-demo"));
        let sock = self.socket.display();
        let dir = self.dir.display();
        let mut s = String::new();
        s.push_str("--keep: the topology, the agent and the HTTP backends are still running.\n");
        s.push_str(&format!(
            "  namespaces: client {}, balancer {}, backends {}\n",
            self.client_ns,
            self.lb_ns,
            self.backend_ns.join(" ")
        ));
        s.push_str("explore:\n");
        for sub in ["table show web", "backend list web", "stats"] {
            s.push_str(&format!(
                "  ip netns exec {} {bin} --socket {sock} {sub}\n",
                self.lb_ns
            ));
        }
        s.push_str(&format!(
            "  ip netns exec {} curl -s --interface {} http://{}/\n",
            self.client_ns, self.client, self.vip
        ));
        let be2 = self.backend_ns.get(1).map(String::as_str).unwrap_or("?");
        s.push_str(&format!(
            "  ip netns pids {be2} | xargs -r kill    # kill backend-2; start it again with:\n"
        ));
        s.push_str(&format!(
            "  ip netns exec {be2} {} serve-http --name backend-2 --port {PORT} >/dev/null 2>&1 &\n",
            demo.display()
        ));
        s.push_str(&format!("  agent log: {dir}/agent.log\n"));
        let all_ns: Vec<&str> = std::iter::once(self.client_ns.as_str())
            .chain(std::iter::once(self.lb_ns.as_str()))
            .chain(self.backend_ns.iter().map(String::as_str))
            .collect();
        let all_ns = all_ns.join(" ");
        s.push_str(&format!(
            "clean up (agent pid {}, HTTP servers {}, and whatever else runs in the namespaces):\n",
            self.agent_pid,
            self.backend_pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ));
        s.push_str(&format!(
            "  for ns in {all_ns}; do ip netns pids $ns | xargs -r kill; done; sleep 1\n"
        ));
        s.push_str(&format!(
            "  {bin} detach --bpffs {TEST_BPFFS} --instance {} --state-dir {dir}/state\n",
            self.instance
        ));
        s.push_str(&format!(
            "  for ns in {all_ns}; do ip netns del $ns; done\n"
        ));
        s.push_str(&format!("  rm -rf {dir}\n"));
        s
    }
}

/// Everything the demo creates. Dropping it removes it all, in order: HTTP servers,
/// agent (killed and detached), namespaces. This also runs when the scenario fails,
/// panics or is interrupted.
struct Lab {
    servers: Vec<Option<HttpNameServer>>,
    agent: Option<Agent>,
    topo: Option<Topology>,
}

impl Lab {
    fn topo(&self) -> &Topology {
        self.topo.as_ref().expect("topology is built first")
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent is started")
    }

    fn agent_mut(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent is started")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A second Ctrl-C must not kill the `ip netns del` / `stickylb detach` children.
        ignore_interrupts();
        let names = self
            .topo
            .as_ref()
            .map(Topology::ns_names)
            .unwrap_or_default();
        let mut parts = Vec::new();
        if self.servers.iter().any(Option::is_some) {
            parts.push("HTTP servers".to_owned());
        }
        if self.agent.is_some() {
            parts.push("agent (stop and detach)".to_owned());
        }
        if !names.is_empty() {
            parts.push(format!("{} namespaces", names.len()));
        }
        if parts.is_empty() {
            return;
        }
        let t = Instant::now();
        say(&format!("cleaning up: {} ...", parts.join(", ")));
        self.servers.clear();
        drop(self.agent.take());
        drop(self.topo.take());
        let left: Vec<String> = list_netns()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| names.contains(n))
            .collect();
        if left.is_empty() {
            say(&format!("cleaned up in {}", secs(t.elapsed())));
        } else {
            say(&format!(
                "warning: namespaces left behind: {}",
                left.join(" ")
            ));
        }
    }
}

fn say(line: &str) {
    use std::io::Write;
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn step(n: usize, text: &str) {
    say(&format!("[{n}/{STEPS}] {text}"));
}

fn detail(text: &str) {
    say(&format!("      {text}"));
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Counts per backend name, every backend listed (also with 0).
fn distribution<'a>(
    names: &[String],
    got: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<&str, usize> = names.iter().map(|n| (n.as_str(), 0)).collect();
    for g in got {
        *counts.entry(g).or_default() += 1;
    }
    counts.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn show(dist: &[(String, usize)]) -> String {
    dist.iter()
        .map(|(b, n)| format!("{b} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The backends' answers, by client index; `None` where the request failed.
type Answers = Vec<Option<String>>;

/// One `GET /` from each client in `idx` (indices into `addrs`) to the VIP; returns
/// their answers and prints the first failure, if any.
fn ask(lab: &Lab, addrs: &[IpAddr], idx: &[usize]) -> Result<Answers> {
    let topo = lab.topo();
    let srcs: Vec<IpAddr> = idx.iter().map(|&i| addrs[i]).collect();
    let vip = SocketAddr::new(topo.vip_v4().into(), PORT);
    let res = round(topo.client(), &srcs, vip, REQUEST_TIMEOUT, &INTERRUPTED)?;
    checkpoint()?;
    let mut first_err = None;
    let answers: Vec<Option<String>> = res
        .into_iter()
        .zip(&srcs)
        .map(|(r, src)| {
            r.map_err(|e| {
                first_err.get_or_insert_with(|| format!("{src}: {e}"));
            })
            .ok()
        })
        .collect();
    if let Some(e) = first_err {
        detail(&format!(
            "{} of {} requests failed, the first: {e}",
            answers.iter().filter(|a| a.is_none()).count(),
            answers.len()
        ));
    }
    // Answers are by position in `idx`; spread them back to client indices.
    let mut by_client = vec![None; addrs.len()];
    for (&i, a) in idx.iter().zip(answers) {
        by_client[i] = a;
    }
    Ok(by_client)
}

fn config(topo: &Topology, opts: &Opts) -> String {
    let mut c = format!(
        "# written by stickylb-demo\n[[service]]\nname = \"web\"\nlisten = \"{}:{PORT}\"\nscheduler = \"{}\"\nforwarding = \"{}\"\nhealth = {{ kind = \"http\", interval = \"{INTERVAL_MS}ms\", timeout = \"300ms\", rise = {RISE}, fall = {FALL} }}\n",
        topo.vip_v4(),
        opts.scheduler,
        opts.forwarding
    );
    for b in topo.backends() {
        c.push_str(&format!(
            "\n[[service.backend]]\naddress = \"{}:{PORT}\"\n",
            b.v4
        ));
    }
    c
}

/// How many never-seen clients show where new clients go after the recovery.
pub fn fresh_count(clients: usize) -> usize {
    clients.div_ceil(10).max(10)
}

/// Runs the whole scenario and reports what it saw. Errors are failures to run it at all
/// (or an interruption); checks that did not hold are in [`Report::failures`].
pub fn run(opts: &Opts) -> Result<Report> {
    if opts.clients == 0 || opts.clients > MAX_CLIENTS {
        bail!("--clients must be in 1..={MAX_CLIENTS}");
    }
    let n = opts.clients;
    let fresh = fresh_count(n);
    let dsr = opts.forwarding == "dsr";
    let mut report = Report {
        clients: n,
        scheduler: opts.scheduler.clone(),
        forwarding: opts.forwarding.clone(),
        fresh,
        failover_bound_ms: INTERVAL_MS * FALL + INTERVAL_MS,
        ..Default::default()
    };
    let mut lab = Lab {
        servers: Vec::new(),
        agent: None,
        topo: None,
    };

    // 1. Topology.
    let t = Instant::now();
    step(
        1,
        &format!(
            "building the topology: a client namespace with {} source addresses, a balancer namespace, {BACKENDS} backend namespaces{}",
            n + fresh,
            if dsr { " (VIP on their lo, for DSR)" } else { "" }
        ),
    );
    lab.topo = Some(Topology::build(TopologyOpts {
        backends: BACKENDS,
        clients: n + fresh,
        vip_on_backend_lo: dsr,
        native_xdp: false,
        // As an HAProxy user has it: the VIP stays on the balancer's lo.
        vip_on_lb: VipPlacement::Lo,
    })?);
    checkpoint()?;
    let topo = lab.topo();
    if dsr {
        // The backends answer as the VIP, through the balancer (their gateway here),
        // which holds the VIP too: accept_local, or the kernel drops them as martians.
        for i in topo.lb_backend_ifs() {
            topo.lb()
                .sysctl(&format!("net.ipv4.conf.{i}.accept_local"), "1")?;
        }
    }
    let addrs: Vec<IpAddr> = topo.client_v4s().iter().map(|&a| a.into()).collect();
    let vip = topo.vip_v4();
    detail(&format!(
        "client    {}: clients {} .. {}, and {fresh} more kept for later ({} .. {})",
        topo.client_ns_name(),
        addrs[0],
        addrs[n - 1],
        addrs[n],
        addrs[n + fresh - 1]
    ));
    detail(&format!(
        "balancer  {}: VIP {vip}:{PORT} (assigned to its lo, as HAProxy needs it)",
        topo.lb_ns_name()
    ));
    for b in topo.backends() {
        detail(&format!("{} {}: {}:{PORT}", b.name, b.ns.name(), b.v4));
    }
    detail(&format!("done in {}", secs(t.elapsed())));
    let names: Vec<String> = topo.backends().iter().map(|b| b.name.clone()).collect();

    // 2. Backends and agent.
    let t = Instant::now();
    step(
        2,
        &format!(
            "starting {BACKENDS} HTTP backends (each answers with its name) and `stickylb run`"
        ),
    );
    let servers = lab
        .topo()
        .backends()
        .iter()
        .map(|b| HttpNameServer::spawn(&b.ns, PORT, &b.name).map(Some))
        .collect::<Result<_>>()?;
    lab.servers = servers;
    let cfg = config(lab.topo(), opts);
    let mut ifaces = vec![lab.topo().lb_client_if().to_owned()];
    ifaces.extend(lab.topo().lb_backend_ifs().into_iter().map(str::to_owned));
    let iface_refs: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    let agent = Agent::start(lab.topo().lb(), &iface_refs, &cfg, &[])?;
    lab.agent = Some(agent);
    checkpoint()?;
    let status = lab.agent().ok(&["status"])?;
    detail(&format!(
        "stickylb run (pid {}) in {} on {}: service web {vip}:{PORT}, scheduler {}, forwarding {}",
        status["pid"],
        lab.topo().lb_ns_name(),
        ifaces.join(" "),
        opts.scheduler,
        opts.forwarding
    ));
    detail(&format!(
        "health: HTTP GET / every {INTERVAL_MS} ms, down after {FALL} failures, up after {RISE} successes"
    ));
    detail(&format!("config {}", lab.agent().config_path().display()));
    detail(&format!("done in {}", secs(t.elapsed())));

    let main: Vec<usize> = (0..n).collect();
    let later: Vec<usize> = (n..n + fresh).collect();

    // 3. Sticky rounds.
    step(
        3,
        &format!(
            "{} rounds of `GET http://{vip}/` from each of the {n} clients",
            opts.rounds
        ),
    );
    let mut seen: Vec<BTreeSet<String>> = vec![BTreeSet::new(); n];
    let mut failed = vec![false; n];
    let mut before: Answers = Vec::new();
    for r in 1..=opts.rounds {
        let t = Instant::now();
        let answers = ask(&lab, &addrs, &main)?;
        detail(&format!(
            "round {r}: {} of {n} answered in {} ms: {}",
            answers.iter().flatten().count(),
            t.elapsed().as_millis(),
            show(&distribution(
                &names,
                answers.iter().flatten().map(String::as_str)
            ))
        ));
        for &i in &main {
            match &answers[i] {
                Some(b) => {
                    seen[i].insert(b.clone());
                }
                None => failed[i] = true,
            }
        }
        if r == 1 {
            before = answers;
        }
    }
    report.stayed = main
        .iter()
        .filter(|&&i| !failed[i] && seen[i].len() == 1)
        .count();
    report.per_backend = distribution(&names, before.iter().flatten().map(String::as_str));
    detail(&format!(
        "clients per backend: {}",
        show(&report.per_backend)
    ));
    detail(&format!(
        "{} of {n} clients stayed on one backend",
        report.stayed
    ));
    report.check(
        report.stayed == n,
        format!(
            "only {} of {n} clients stayed on one backend",
            report.stayed
        ),
    );

    // 4. Stick table.
    let table = lab.agent().ok(&["table", "show", "web", "--limit", "1"])?;
    report.table_entries = table["total"].as_u64().unwrap_or(0);
    step(
        4,
        &format!(
            "the stick table: `stickylb table show web --limit {TABLE_EXCERPT}` ({} entries in all)",
            report.table_entries
        ),
    );
    for line in table_excerpt(lab.agent())?.lines() {
        detail(&format!("| {}", line.trim_end()));
    }
    report.check(
        report.table_entries == n as u64,
        format!(
            "the stick table holds {} entries, expected {n}",
            report.table_entries
        ),
    );

    // 5. A backend killed.
    let count = |b: &str| before.iter().flatten().filter(|x| *x == b).count();
    let dead_idx = if count(&names[1]) > 0 {
        1
    } else {
        (0..BACKENDS).max_by_key(|&i| count(&names[i])).unwrap_or(0)
    };
    let dead = names[dead_idx].clone();
    report.killed = dead.clone();
    let on_dead = |a: &Answers, i: usize| a[i].as_deref() == Some(dead.as_str());
    let victims: Vec<usize> = main
        .iter()
        .copied()
        .filter(|&i| on_dead(&before, i))
        .collect();
    let others: Vec<usize> = main
        .iter()
        .copied()
        .filter(|&i| !on_dead(&before, i))
        .collect();
    report.victims = victims.len();
    step(
        5,
        &format!(
            "killing {dead} ({} clients on it): its HTTP server stops, connections are refused",
            victims.len()
        ),
    );
    checkpoint()?;
    lab.servers[dead_idx] = None;
    let killed = Instant::now();
    if let Some(&probe) = victims.first() {
        detail(&format!(
            "asking {dead}'s client {} every {} ms ...",
            addrs[probe],
            PROBE_EVERY.as_millis()
        ));
        let mut tries = 0;
        let mut quiet = true;
        loop {
            tries += 1;
            let answers = ask_quietly(&lab, &addrs, probe, &mut quiet)?;
            if let Some(b) = answers.filter(|b| *b != dead) {
                let ms = killed.elapsed().as_millis();
                report.failover_ms = Some(ms);
                detail(&format!(
                    "served again, by {b}, after {ms} ms ({tries} tries; expected within {} ms = interval × fall + interval)",
                    report.failover_bound_ms
                ));
                break;
            }
            if killed.elapsed() > GIVE_UP {
                detail(&format!("still not served after {}", secs(GIVE_UP)));
                break;
            }
            std::thread::sleep(PROBE_EVERY);
        }
    }
    report.check(
        victims.is_empty() || report.failover_ms.is_some(),
        format!(
            "{dead}'s clients were not served again within {}",
            secs(GIVE_UP)
        ),
    );
    let after = ask(&lab, &addrs, &main)?;
    report.victims_moved = victims
        .iter()
        .filter(|&&i| after[i].is_some() && !on_dead(&after, i))
        .count();
    report.collateral = others.iter().filter(|&&i| after[i] != before[i]).count();
    detail(&format!(
        "one round later: {} of {} {dead} clients moved ({}); {} of {} other clients moved",
        report.victims_moved,
        victims.len(),
        show(
            &distribution(&names, victims.iter().filter_map(|&i| after[i].as_deref()))
                .into_iter()
                .filter(|(b, _)| *b != dead)
                .collect::<Vec<_>>()
        ),
        report.collateral,
        others.len()
    ));
    report.check(
        report.victims_moved == victims.len(),
        format!(
            "only {} of {} clients of the dead {dead} were served by another backend",
            report.victims_moved,
            victims.len()
        ),
    );
    report.check(
        report.collateral == 0,
        format!(
            "{} clients of healthy backends moved (collateral)",
            report.collateral
        ),
    );

    // 6. The backend back.
    step(6, &format!("{dead} is back: its HTTP server starts again"));
    let backend = &lab.topo().backends()[dead_idx];
    let server = HttpNameServer::spawn(&backend.ns, PORT, &dead)?;
    let dead_addr = format!("{}:{PORT}", backend.v4);
    lab.servers[dead_idx] = Some(server);
    let back = Instant::now();
    loop {
        checkpoint()?;
        let list = lab.agent().ok(&["backend", "list", "web"])?;
        let up = list
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["address"] == dead_addr.as_str() && b["state"] == "up");
        if up {
            let ms = back.elapsed().as_millis();
            report.recovery_ms = Some(ms);
            detail(&format!(
                "health checks marked it up after {ms} ms (rise {RISE} × {INTERVAL_MS} ms)"
            ));
            break;
        }
        if back.elapsed() > GIVE_UP {
            detail(&format!("not up after {}", secs(GIVE_UP)));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    report.check(
        report.recovery_ms.is_some(),
        format!("{dead} did not come back up within {}", secs(GIVE_UP)),
    );
    // Let the data path see the change before checking that nobody reacts to it.
    std::thread::sleep(Duration::from_millis(200));
    let recovered = ask(&lab, &addrs, &main)?;
    report.flapped_back = victims.iter().filter(|&&i| on_dead(&recovered, i)).count();
    report.moves_after_recovery = main
        .iter()
        .filter(|&&i| recovered[i] != after[i] && !(victims.contains(&i) && on_dead(&recovered, i)))
        .count();
    detail(&format!(
        "{} of {} moved clients flapped back to {dead}; {} other clients moved",
        report.flapped_back,
        victims.len(),
        report.moves_after_recovery
    ));
    report.check(
        report.flapped_back == 0,
        format!("{} clients flapped back to {dead}", report.flapped_back),
    );
    report.check(
        report.moves_after_recovery == 0,
        format!(
            "{} clients moved when {dead} came back",
            report.moves_after_recovery
        ),
    );
    let new = ask(&lab, &addrs, &later)?;
    report.fresh_on_recovered = later.iter().filter(|&&i| on_dead(&new, i)).count();
    detail(&format!(
        "{fresh} new clients ({} .. {}): {}",
        addrs[n],
        addrs[n + fresh - 1],
        show(&distribution(
            &names,
            later.iter().filter_map(|&i| new[i].as_deref())
        ))
    ));
    report.check(
        later.iter().all(|&i| new[i].is_some()),
        "not every new client was served after the recovery",
    );
    report.check(
        report.fresh_on_recovered > 0,
        format!("no new client reached the recovered {dead}"),
    );

    // 7. Agent restart.
    step(
        7,
        "restarting the agent: SIGTERM, traffic while it is down, start again",
    );
    let all: Vec<usize> = (0..n + fresh).collect();
    let expected: Answers = all
        .iter()
        .map(|&i| {
            if i < n {
                recovered[i].clone()
            } else {
                new[i].clone()
            }
        })
        .collect();
    report.restart_clients = all.len();
    let pid = lab.agent().ok(&["status"])?["pid"].clone();
    lab.agent_mut().stop(libc::SIGTERM)?;
    detail(&format!(
        "agent (pid {pid}) stopped; its XDP program and stick table stay in the kernel"
    ));
    let moved = |got: &Answers| all.iter().filter(|&&i| got[i] != expected[i]).count();
    let down = ask(&lab, &addrs, &all)?;
    report.served_while_down = down.iter().flatten().count();
    report.moved_while_down = moved(&down);
    detail(&format!(
        "while it was down: {} of {} clients served, {} moved",
        report.served_while_down,
        all.len(),
        report.moved_while_down
    ));
    let t = Instant::now();
    lab.agent_mut().spawn()?;
    checkpoint()?;
    let log = lab.agent().log_text();
    let adopted = log
        .lines()
        .rev()
        .find_map(|l| l.split_once("adopted pinned state"))
        .map(|(_, rest)| format!("adopted pinned state{rest}"));
    detail(&format!(
        "started again in {}: {}",
        secs(t.elapsed()),
        adopted
            .as_deref()
            .unwrap_or("(no \"adopted pinned state\" in its log)")
    ));
    let again = ask(&lab, &addrs, &all)?;
    report.moved_after_restart = moved(&again);
    detail(&format!(
        "after the restart: {} of {} clients served, {} moved",
        again.iter().flatten().count(),
        all.len(),
        report.moved_after_restart
    ));
    report.check(
        report.served_while_down == all.len(),
        format!(
            "only {} of {} clients were served while the agent was down",
            report.served_while_down,
            all.len()
        ),
    );
    report.check(
        report.moved_while_down == 0,
        format!(
            "{} clients moved while the agent was down",
            report.moved_while_down
        ),
    );
    report.check(
        report.moved_after_restart == 0,
        format!(
            "{} clients moved when the agent restarted",
            report.moved_after_restart
        ),
    );
    report.check(
        adopted.is_some(),
        "the restarted agent did not adopt the pinned state",
    );

    if opts.keep {
        report.kept = Some(keep(lab, addrs[0])?);
    }
    Ok(report)
}

/// One request from client `i`, printing only the first failure (the probe fails
/// several times in a row on purpose).
fn ask_quietly(lab: &Lab, addrs: &[IpAddr], i: usize, quiet: &mut bool) -> Result<Option<String>> {
    let topo = lab.topo();
    let vip = SocketAddr::new(topo.vip_v4().into(), PORT);
    let mut res = round(
        topo.client(),
        &[addrs[i]],
        vip,
        REQUEST_TIMEOUT,
        &INTERRUPTED,
    )?;
    checkpoint()?;
    match res.pop() {
        Some(Ok(b)) => Ok(Some(b)),
        Some(Err(e)) => {
            if std::mem::take(quiet) {
                detail(&format!("first failed request: {e}"));
            }
            Ok(None)
        }
        None => Ok(None),
    }
}

/// `stickylb table show web --limit N`, as an operator sees it.
fn table_excerpt(agent: &Agent) -> Result<String> {
    let out = Command::new(stickylb_bin()?)
        .args([
            "table",
            "show",
            "web",
            "--limit",
            &TABLE_EXCERPT.to_string(),
        ])
        .arg("--socket")
        .arg(&agent.socket)
        .stdin(Stdio::null())
        .output()
        .context("running stickylb table show")?;
    if !out.status.success() {
        bail!(
            "stickylb table show failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Leaves the topology and the agent running past the end of the process: the
/// in-process HTTP servers are replaced by detached `stickylb-demo serve-http`
/// processes, and the guards are forgotten instead of dropped.
fn keep(mut lab: Lab, client: IpAddr) -> Result<Kept> {
    use std::os::unix::process::CommandExt;

    let exe = std::env::current_exe()?;
    lab.servers.clear();
    let topo = lab.topo();
    let mut backend_pids = Vec::new();
    for b in topo.backends() {
        let child = Command::new("ip")
            .args(["netns", "exec", b.ns.name()])
            .arg(&exe)
            .args(["serve-http", "--name", &b.name, "--port", &PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C in this terminal does not reach it.
            .process_group(0)
            .spawn()
            .context("starting a kept HTTP server")?;
        backend_pids.push(child.id());
        // It answers the balancer before we go.
        let dst = SocketAddr::new(b.v4.into(), PORT);
        let src: IpAddr = b.lb_v4.into();
        topo.lb().enter(|| {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match http_get_here(src, dst, REQUEST_TIMEOUT) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() > deadline => {
                        return Err(
                            e.context(format!("kept HTTP server {} does not answer", b.name))
                        )
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })?;
    }
    let agent = lab.agent();
    let kept = Kept {
        client_ns: topo.client_ns_name().to_owned(),
        lb_ns: topo.lb_ns_name().to_owned(),
        backend_ns: topo.backend_ns_names(),
        backend_pids,
        agent_pid: agent.ok(&["status"])?["pid"].as_u64().unwrap_or_default(),
        socket: agent.socket.clone(),
        instance: agent.instance.clone(),
        dir: agent.dir.clone(),
        client,
        vip: topo.vip_v4().into(),
    };
    // Forget, not drop: no kill, no detach, no `ip netns del`.
    std::mem::forget(lab.agent.take());
    std::mem::forget(lab.topo.take());
    std::mem::forget(lab);
    Ok(kept)
}
