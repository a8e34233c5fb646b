//! `stickylb-demo-cluster`: the cluster demo behind `cargo xtask demo --cluster` (needs
//! root, BIRD 2). A router namespace runs BIRD with ECMP (`merge paths on`, five-tuple
//! hashing) and eBGP + BFD to three nodes; each node runs BIRD and stickylb (DSR, Maglev,
//! `[announce]`, `[cluster]` replication); three backends; clients connecting all along.
//! Steps: the cluster comes up; a node is killed; one is drained; one is added. Then the
//! failover figures: a node silenced at the router several times, with BFD and with the
//! BGP hold timer only. Ends with `SUMMARY` lines and exits 0 only if every check held
//! (0 clients moved, no failed request while draining and adding). Everything it created
//! goes at the end (guards), also on failure.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use stickylb_tests::bgp::{
    median_max, moved, one_backend_each, outage, BgpCluster, Detection, LabOpts, Load,
};
use stickylb_tests::cluster_net::VIP_V4;

#[derive(Parser, Debug)]
#[command(about = "stickylb cluster demo: three nodes behind an ECMP router running BIRD")]
struct Opts {
    /// Client source addresses.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=200))]
    clients: u16,
    /// Failover runs per detection mode (BFD, hold timer) for the figures; 0 skips them.
    #[arg(long, default_value_t = 3)]
    failover_runs: usize,
}

const CONVERGE: Duration = Duration::from_secs(30);
/// Concurrent client connections of the background load.
const LOAD_THREADS: usize = 8;

#[derive(Default)]
struct Summary {
    lines: Vec<String>,
    failures: Vec<String>,
}

impl Summary {
    fn line(&mut self, s: String) {
        println!("SUMMARY {s}");
        self.lines.push(s);
    }
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let w = what.into();
            println!("CHECK FAILED: {w}");
            self.failures.push(w);
        }
    }
}

fn step(n: usize, what: &str) {
    println!("\n== step {n}: {what}");
}

fn pinned(lab: &BgpCluster, clients: &[IpAddr]) -> Result<BTreeMap<IpAddr, String>> {
    one_backend_each(&lab.fetch(VIP_V4, clients, 2)?)
}

fn run(o: &Opts) -> Result<Summary> {
    let mut s = Summary::default();
    let t = Instant::now();
    step(
        1,
        "router with BIRD (ECMP), three nodes with BIRD + stickylb, three backends",
    );
    let mut lab = BgpCluster::start(LabOpts {
        nodes: 3,
        backends: 3,
        clients: o.clients as usize,
        cluster: Some((vec![1, 2, 3, 4], Duration::from_secs(3))),
        ..Default::default()
    })?;
    let up = lab.wait_fib(VIP_V4, &[1, 2, 3], CONVERGE)?;
    println!(
        "router FIB for {VIP_V4}: {:?} ({} ms after the nodes started; each node announced once synced)",
        lab.fib(VIP_V4)?,
        up.as_millis()
    );
    println!("router:\n{}", lab.router.birdc("show route")?);
    let clients = lab.clients();
    let before = pinned(&lab, &clients)?;
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for b in before.values() {
        *per.entry(b).or_default() += 1;
    }
    let packets = lab.node_packets("web");
    println!(
        "{} clients, each on one backend: {per:?}; packets per node: {packets:?}",
        before.len()
    );
    s.line(format!(
        "nodes=3 nexthops={} clients={} on_one_backend={} clients_per_backend={}",
        lab.fib(VIP_V4)?.len(),
        clients.len(),
        before.len(),
        per.iter()
            .map(|(b, n)| format!("{b}:{n}"))
            .collect::<Vec<_>>()
            .join(",")
    ));
    s.check(before.len() == clients.len(), "every client on one backend");

    step(
        2,
        "node2 killed (silent at the router, agent and BIRD SIGKILLed, links deleted)",
    );
    let load = Load::start(lab.net.client(), &clients, VIP_V4, LOAD_THREADS)?;
    std::thread::sleep(Duration::from_millis(500));
    let t0 = lab.kill_node(2)?;
    let withdrawn = lab.wait_fib(VIP_V4, &[1, 3], CONVERGE)?;
    std::thread::sleep(Duration::from_secs(3));
    let kill = outage(&load.stop(), t0);
    lab.bury_node(2)?;
    let after = pinned(&lab, &clients)?;
    let m = moved(&before, &after).len();
    println!(
        "route withdrawn after {} ms (BFD 100 ms x 3); clients saw {} ms: {} of {} requests stalled (a lost SYN waits for TCP's 1 s retransmission), {} failed",
        withdrawn.as_millis(),
        kill.outage.as_millis(),
        kill.stalled,
        kill.requests,
        kill.failed
    );
    s.line(format!(
        "kill node=node2 route_withdrawn_ms={} failover_ms={} requests={} stalled={} failed={} clients_moved={m}",
        withdrawn.as_millis(),
        kill.outage.as_millis(),
        kill.requests,
        kill.stalled,
        kill.failed
    ));
    s.check(m == 0, format!("{m} clients moved after a node was killed"));

    step(3, "node3 drained (stickylb node drain)");
    let load = Load::start(lab.net.client(), &clients, VIP_V4, LOAD_THREADS)?;
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    lab.agent(3).ok(&["node", "drain"])?;
    let withdrawn = lab.wait_fib(VIP_V4, &[1], CONVERGE)?;
    let deadline = Instant::now() + CONVERGE;
    while lab.announce_status(3)?["drained"] != true {
        if Instant::now() > deadline {
            bail!("node3 not drained after {CONVERGE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let drain = outage(&load.stop(), t0);
    let m = moved(&before, &pinned(&lab, &clients)?).len();
    println!(
        "withdrawn after {} ms, drained (no packet for 1 s) after {} ms; {} requests, {} failed",
        withdrawn.as_millis(),
        drained.as_millis(),
        drain.requests,
        drain.failed
    );
    s.line(format!(
        "drain node=node3 route_withdrawn_ms={} drained_ms={} requests={} failed={} clients_moved={m}",
        withdrawn.as_millis(),
        drained.as_millis(),
        drain.requests,
        drain.failed
    ));
    s.check(
        drain.failed == 0,
        format!("{} requests failed while draining", drain.failed),
    );
    s.check(m == 0, format!("{m} clients moved by a drain"));
    lab.agent(3).ok(&["node", "undrain"])?;
    lab.wait_fib(VIP_V4, &[1, 3], CONVERGE)?;

    step(4, "node4 added (announces once synced with its peers)");
    let load = Load::start(lab.net.client(), &clients, VIP_V4, LOAD_THREADS)?;
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let i = lab.add_node()?;
    let joined = lab.wait_fib(VIP_V4, &[1, 3, i], CONVERGE)?;
    let synced = lab.announce_status(i)?["synced"] == true;
    std::thread::sleep(Duration::from_secs(1));
    let add = outage(&load.stop(), t0);
    let m = moved(&before, &pinned(&lab, &clients)?).len();
    let p = lab.node_packets("web");
    println!(
        "node{i} in the FIB after {} ms (synced: {synced}); {} requests, {} failed; packets per node {p:?}",
        joined.as_millis(),
        add.requests,
        add.failed
    );
    s.line(format!(
        "add node=node{i} announced_ms={} synced={synced} requests={} failed={} clients_moved={m}",
        joined.as_millis(),
        add.requests,
        add.failed
    ));
    s.check(
        add.failed == 0,
        format!("{} requests failed while adding", add.failed),
    );
    s.check(m == 0, format!("{m} clients moved by an added node"));

    if o.failover_runs > 0 {
        step(
            5,
            "failover figures: node1 silenced at the router and healed, BFD then hold timer",
        );
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
            lab.set_detection(d)?;
            lab.wait_fib(VIP_V4, &[1, 3, i], CONVERGE)?;
            std::thread::sleep(Duration::from_secs(2));
            let (mut routes, mut outs, mut failed) = (Vec::new(), Vec::new(), 0);
            for _ in 0..o.failover_runs {
                let load = Load::start(lab.net.client(), &clients, VIP_V4, LOAD_THREADS)?;
                std::thread::sleep(Duration::from_millis(300));
                lab.isolate(1)?;
                let t0 = Instant::now();
                routes.push(lab.wait_fib(VIP_V4, &[3, i], CONVERGE)?);
                std::thread::sleep(Duration::from_secs(4));
                let x = outage(&load.stop(), t0);
                outs.push(x.outage);
                failed += x.failed;
                lab.heal(1)?;
                lab.wait_fib(VIP_V4, &[1, 3, i], CONVERGE)?;
                std::thread::sleep(Duration::from_secs(1));
            }
            let (rm, rx) = median_max(&routes);
            let (om, ox) = median_max(&outs);
            let mode = if d.bfd {
                "bfd_100msx3"
            } else {
                "hold_timer_3s"
            };
            println!(
                "{mode}: route withdrawn median {} ms, max {} ms; client-visible failover median {} ms, max {} ms ({} runs)",
                rm.as_millis(), rx.as_millis(), om.as_millis(), ox.as_millis(), o.failover_runs
            );
            s.line(format!(
                "failover detection={mode} runs={} route_withdrawn_median_ms={} route_withdrawn_max_ms={} failover_median_ms={} failover_max_ms={} failed={failed}",
                o.failover_runs, rm.as_millis(), rx.as_millis(), om.as_millis(), ox.as_millis()
            ));
        }
        let m = moved(&before, &pinned(&lab, &clients)?).len();
        s.line(format!("after_failovers clients_moved={m}"));
        s.check(m == 0, format!("{m} clients moved by the failovers"));
    }
    println!("\n(demo took {:.1} s)", t.elapsed().as_secs_f64());
    Ok(s)
}

fn main() -> ExitCode {
    let o = Opts::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("error: the cluster demo creates network namespaces and loads XDP programs: run as root");
        return ExitCode::FAILURE;
    }
    match run(&o) {
        Ok(s) if s.failures.is_empty() => {
            println!("SUMMARY result=ok");
            ExitCode::SUCCESS
        }
        Ok(s) => {
            println!("SUMMARY result=failed checks={}", s.failures.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            println!("SUMMARY result=error");
            ExitCode::FAILURE
        }
    }
}
