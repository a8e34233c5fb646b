//! A cluster of real agents sharing one stick table (issue 12): three (or four) node
//! namespaces behind a router's multipath route for the VIP, DSR to backends on a shared
//! LAN, real TCP from 100 client addresses (tests/src/cluster_net.rs). Every test
//! counts, per client, the backends that answered it.
//!
//! 1. 100 clients × 10 connections over 3 nodes keep one backend, Maglev and round robin;
//!    every node's table holds the same entry for every client.
//! 2. Node loss (nexthop removed, agent killed, links deleted): nobody moves.
//! 3. The backend set changed (a backend added, weights changed), then a node lost:
//!    0 moved with replication; without replication the moved count is printed (and is
//!    not 0, which is what replication buys).
//! 4. A node added with an empty table is synced before its nexthop is added: 0 moved.
//! 5. Partition (replication cut between node1 and the others) and heal, with new clients
//!    on both sides: afterwards every client's entry is the same on every node.
//! 6. Bad peers at the agent: plaintext garbage and TLS without a certificate on the peer
//!    port are refused and counted; the agent keeps replicating.
//! 7. An agent restarted on one node under traffic: 0 moved, and it is taught again.
//!
//! And the sink's batch writer alone, in the kernel (a lab data path, no agents): a batch
//! mixing new clients, entries the peer wins and entries the table keeps ends with the
//! right table, through the batch writer and entry by entry.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;
use stickylb_tests::agent::Agent;
use stickylb_tests::cluster_net::{
    node_config, ClusterNet, ClusterOpts, Pki, ServiceSetup, NODE_LAN_IF, NODE_ROUTER_IF,
    PEER_PORT, SERVICE_PORT,
};
use stickylb_tests::NameServer;

const CLIENTS: usize = 100;
/// Node `i`'s metrics endpoint (on its LAN address).
fn metrics_addr(net: &ClusterNet, i: usize) -> SocketAddr {
    SocketAddr::new(net.node(i).lan_v4.into(), 9478)
}
const CONNECTIONS: usize = 10;

/// A running cluster: the network, the backends' servers, one agent per node.
struct Lab {
    net: ClusterNet,
    pki: Pki,
    _servers: Vec<NameServer>,
    /// By node index (1-based); `None` when not running.
    agents: BTreeMap<usize, Agent>,
    service: ServiceSetup,
    members: Vec<usize>,
    replicate: bool,
}

impl Lab {
    /// `nodes` nodes (all members of the cluster), `backends` backends; agents started
    /// on the nodes in `running`.
    fn new(
        nodes: usize,
        backends: usize,
        service: ServiceSetup,
        replicate: bool,
        running: &[usize],
    ) -> Lab {
        let net = ClusterNet::build(ClusterOpts {
            nodes,
            backends,
            clients: CLIENTS,
            native_xdp: false,
        })
        .unwrap();
        // A TCP retransmission timeout must not re-hash a connection onto another node.
        let _ = net.client().sysctl("net.core.txrehash", "0");
        let servers = net
            .backends()
            .iter()
            .map(|b| NameServer::spawn(&b.ns, SERVICE_PORT, &b.name).unwrap())
            .collect();
        let mut lab = Lab {
            net,
            pki: Pki::new().unwrap(),
            _servers: servers,
            agents: BTreeMap::new(),
            service,
            members: (1..=nodes).collect(),
            replicate,
        };
        for &i in running {
            lab.start(i);
        }
        lab
    }

    fn config(&self, i: usize) -> String {
        node_config(
            &self.net,
            i,
            &self.service,
            self.replicate
                .then_some((&self.pki, self.members.as_slice())),
        )
        .unwrap()
    }

    fn start(&mut self, i: usize) {
        let cfg = self.config(i);
        let metrics = metrics_addr(&self.net, i).to_string();
        let a = Agent::start(
            &self.net.node(i).ns,
            &[NODE_ROUTER_IF, NODE_LAN_IF],
            &cfg,
            &["--metrics", &metrics],
        )
        .unwrap();
        self.agents.insert(i, a);
    }

    fn agent(&self, i: usize) -> &Agent {
        &self.agents[&i]
    }

    /// Waits until every running agent says it is synced.
    fn wait_synced(&self) {
        for (i, a) in &self.agents {
            wait(&format!("node{i} synced"), Duration::from_secs(60), || {
                a.ok(&["peers"]).unwrap()["synced"] == Value::Bool(true)
            });
        }
    }

    /// Writes the service to every running agent's config and reloads it.
    fn reconfigure(&mut self, service: ServiceSetup) {
        self.service = service;
        for (&i, a) in &self.agents {
            a.write_config(&self.config(i)).unwrap();
            a.ok(&["reload"]).unwrap();
        }
    }

    /// Kills node `i`: its nexthop removed, its agent killed, its links deleted.
    fn lose(&mut self, i: usize) {
        self.net.remove_nexthop(i).unwrap();
        if let Some(mut a) = self.agents.remove(&i) {
            let _ = a.stop(libc::SIGKILL);
            drop(a);
        }
        self.net.kill_links(i).unwrap();
    }

    /// A round of traffic; panics on failed connections.
    fn round(&self, clients: usize, connections: usize) -> BTreeMap<Ipv4Addr, BTreeSet<String>> {
        let (by, failed) = self.net.round(clients, connections).unwrap();
        assert!(
            failed.is_empty(),
            "{} connections failed, e.g. {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
        assert_eq!(by.len(), clients, "every client answered");
        by
    }

    /// Node `i`'s stick table: client → backend address.
    fn table(&self, i: usize) -> BTreeMap<String, String> {
        let v = self
            .agent(i)
            .ok(&["table", "show", "web", "--limit", "100000"])
            .unwrap();
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["client"].as_str().unwrap().to_string(),
                    e["backend"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Waits until every running node's table holds the same entry for each of the
    /// first `clients` clients; returns that table.
    fn wait_same_tables(&self, clients: usize) -> BTreeMap<String, String> {
        let want: Vec<String> = self
            .net
            .client_v4s()
            .iter()
            .take(clients)
            .map(|c| c.to_string())
            .collect();
        let mut last = String::new();
        let mut out = BTreeMap::new();
        let ok = wait_quiet(Duration::from_secs(60), || {
            let tables: Vec<(usize, BTreeMap<String, String>)> =
                self.agents.keys().map(|&i| (i, self.table(i))).collect();
            let first = &tables[0].1;
            let differ: Vec<String> = want
                .iter()
                .filter(|c| {
                    tables
                        .iter()
                        .any(|(_, t)| t.get(*c).is_none() || t.get(*c) != first.get(*c))
                })
                .map(|c| {
                    format!(
                        "{c}: {:?}",
                        tables
                            .iter()
                            .map(|(i, t)| (i, t.get(c)))
                            .collect::<Vec<_>>()
                    )
                })
                .collect();
            last = format!("{} clients differ, e.g. {:?}", differ.len(), differ.first());
            out = first.clone();
            differ.is_empty()
        });
        assert!(ok, "node tables never agreed: {last}");
        out
    }
}

fn wait(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    assert!(wait_quiet(timeout, f), "timed out waiting for {what}");
}

fn wait_quiet(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn one_backend_each(by: &BTreeMap<Ipv4Addr, BTreeSet<String>>) -> BTreeMap<Ipv4Addr, String> {
    let split: Vec<_> = by.iter().filter(|(_, b)| b.len() != 1).collect();
    assert!(
        split.is_empty(),
        "clients on more than one backend: {split:?}"
    );
    by.iter()
        .map(|(c, b)| (*c, b.iter().next().unwrap().clone()))
        .collect()
}

fn moved(
    before: &BTreeMap<Ipv4Addr, String>,
    after: &BTreeMap<Ipv4Addr, BTreeSet<String>>,
) -> usize {
    before
        .iter()
        .filter(|(c, b)| {
            after
                .get(c)
                .is_none_or(|now| now.len() != 1 || !now.contains(*b))
        })
        .count()
}

fn svc(scheduler: &'static str, backends: &[(usize, u32)]) -> ServiceSetup {
    ServiceSetup {
        scheduler,
        backends: backends.to_vec(),
    }
}

/// Tests 1 and 2 for one scheduler.
fn keep_backend_over_nodes_and_node_loss(scheduler: &'static str) {
    let mut lab = Lab::new(
        3,
        3,
        svc(scheduler, &[(1, 1), (2, 1), (3, 1)]),
        true,
        &[1, 2, 3],
    );
    lab.wait_synced();
    let first = one_backend_each(&lab.round(CLIENTS, CONNECTIONS));
    let used: BTreeSet<&String> = first.values().collect();
    assert!(
        used.len() >= 2,
        "{scheduler}: clients spread over backends: {used:?}"
    );
    let table = lab.wait_same_tables(CLIENTS);
    for (c, b) in &first {
        let addr = &table[&c.to_string()];
        let j = b.trim_start_matches("backend-").parse::<usize>().unwrap();
        assert_eq!(
            addr,
            &format!("{}:{SERVICE_PORT}", lab.net.backend(j).v4),
            "{c}: the table agrees with the backend that answered"
        );
    }
    let peers = lab.agent(1).ok(&["peers"]).unwrap();
    eprintln!(
        "{scheduler}: node1 conflicts {} picks {} events {}",
        peers["status"]["counters"]["conflicts"],
        peers["status"]["counters"]["local_picks"],
        peers["events_read"]
    );
    assert!(
        peers["events_read"].as_u64().unwrap() > 0,
        "events flow: {peers}"
    );
    // 2. Node loss.
    lab.lose(3);
    let after = lab.round(CLIENTS, CONNECTIONS);
    assert_eq!(
        moved(&first, &after),
        0,
        "{scheduler}: nobody moves when node3 is lost"
    );
}

#[test]
fn maglev_clients_keep_their_backend_over_three_nodes_and_a_node_loss() {
    keep_backend_over_nodes_and_node_loss("maglev");
}

#[test]
fn roundrobin_clients_keep_their_backend_over_three_nodes_and_a_node_loss() {
    keep_backend_over_nodes_and_node_loss("roundrobin");
}

/// Test 3: each client first makes one connection (so it is known on one node only, by
/// its own data path), the backend set changes, a node is lost.
fn backend_change_then_node_loss(replicate: bool) -> usize {
    let mut lab = Lab::new(
        3,
        4,
        svc("maglev", &[(1, 1), (2, 1), (3, 1)]),
        replicate,
        &[1, 2, 3],
    );
    lab.wait_synced();
    let first = one_backend_each(&lab.round(CLIENTS, 1));
    if replicate {
        lab.wait_same_tables(CLIENTS);
    }
    lab.reconfigure(svc("maglev", &[(1, 2), (2, 1), (3, 1), (4, 3)]));
    lab.lose(2);
    let after = lab.round(CLIENTS, CONNECTIONS);
    moved(&first, &after)
}

#[test]
fn backend_set_changed_then_node_lost_moves_nobody_with_replication() {
    let with = backend_change_then_node_loss(true);
    let without = backend_change_then_node_loss(false);
    eprintln!(
        "backend added + weights changed, then a node lost: {with} of {CLIENTS} clients moved with replication, {without} without"
    );
    assert_eq!(with, 0, "with replication nobody moves");
    assert!(
        without > 0,
        "without replication some clients move (what replication buys)"
    );
}

#[test]
fn a_node_added_is_synced_before_its_nexthop_and_moves_nobody() {
    let mut lab = Lab::new(
        4,
        3,
        svc("roundrobin", &[(1, 1), (2, 1), (3, 1)]),
        true,
        &[1, 2, 3],
    );
    lab.net.remove_nexthop(4).unwrap();
    lab.wait_synced();
    let first = one_backend_each(&lab.round(CLIENTS, CONNECTIONS));
    lab.wait_same_tables(CLIENTS);
    lab.start(4);
    wait("node4 synced", Duration::from_secs(60), || {
        lab.agent(4).ok(&["peers"]).unwrap()["synced"] == Value::Bool(true)
    });
    let peers = lab.agent(4).ok(&["peers"]).unwrap();
    for p in peers["status"]["peers"].as_array().unwrap() {
        assert_eq!(
            p["taught_us"],
            Value::Bool(true),
            "node4 taught by every peer: {p}"
        );
    }
    assert_eq!(
        lab.table(4).len(),
        CLIENTS,
        "node4 holds every client before traffic"
    );
    lab.net.add_nexthop(4).unwrap();
    let after = lab.round(CLIENTS, CONNECTIONS);
    assert_eq!(moved(&first, &after), 0, "nobody moves when node4 is added");
}

/// Cuts (or restores) replication between node `i` and every other node.
fn partition(lab: &Lab, i: usize, cut: bool) {
    let ns = &lab.net.node(i).ns;
    if cut {
        for cmd in [
            "add table inet slbpart".to_string(),
            "add chain inet slbpart in { type filter hook input priority 0 ; }".into(),
            "add chain inet slbpart out { type filter hook output priority 0 ; }".into(),
            format!("add rule inet slbpart in tcp dport {PEER_PORT} drop"),
            format!("add rule inet slbpart in tcp sport {PEER_PORT} drop"),
            format!("add rule inet slbpart out tcp dport {PEER_PORT} drop"),
            format!("add rule inet slbpart out tcp sport {PEER_PORT} drop"),
        ] {
            let args: Vec<&str> = cmd.split(' ').collect();
            let mut argv = vec!["nft"];
            argv.extend(args);
            ns.exec(&argv).unwrap();
        }
    } else {
        ns.exec(&["nft", "delete", "table", "inet", "slbpart"])
            .unwrap();
    }
}

#[test]
fn partition_and_heal_converge_on_one_entry_per_client() {
    let lab = Lab::new(
        3,
        3,
        svc("roundrobin", &[(1, 1), (2, 1), (3, 1)]),
        true,
        &[1, 2, 3],
    );
    lab.wait_synced();
    let half = CLIENTS / 2;
    let known = one_backend_each(&lab.round(half, CONNECTIONS));
    lab.wait_same_tables(half);
    partition(&lab, 1, true);
    // Sessions end after peer_timeout (3 s): wait until node1 sees both peers down.
    wait("node1 cut off", Duration::from_secs(30), || {
        let p = lab.agent(1).ok(&["peers"]).unwrap();
        p["status"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "down")
    });
    // Traffic on both sides: the known clients keep their backend; the new ones may be
    // pinned differently by node1 and by nodes 2 and 3.
    let during = lab.round(CLIENTS, CONNECTIONS);
    assert_eq!(
        moved(&known, &during),
        0,
        "clients known before the partition keep their backend"
    );
    partition(&lab, 1, false);
    let table = lab.wait_same_tables(CLIENTS);
    let two: Vec<_> = during
        .iter()
        .filter(|(_, b)| b.len() > 1)
        .map(|(c, _)| *c)
        .collect();
    eprintln!(
        "partition: {} new clients saw two backends during it (only clients new during the partition can): {two:?}",
        two.len()
    );
    for c in &two {
        assert!(!known.contains_key(c), "{c} was known before the partition");
    }
    // Afterwards every client is on its converged entry, through every node.
    let after = one_backend_each(&lab.round(CLIENTS, CONNECTIONS));
    for (c, b) in &after {
        let j = b.trim_start_matches("backend-").parse::<usize>().unwrap();
        assert_eq!(
            table[&c.to_string()],
            format!("{}:{SERVICE_PORT}", lab.net.backend(j).v4)
        );
    }
    let conflicts: u64 = lab
        .agents
        .values()
        .map(|a| {
            a.ok(&["peers"]).unwrap()["status"]["counters"]["conflicts"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    eprintln!("partition: conflicts counted on heal: {conflicts}");
}

#[test]
fn bad_peers_are_refused_and_the_agent_keeps_replicating() {
    let lab = Lab::new(
        3,
        3,
        svc("maglev", &[(1, 1), (2, 1), (3, 1)]),
        true,
        &[1, 2, 3],
    );
    lab.wait_synced();
    let target: SocketAddr = lab.net.node(1).peer_addr();
    // From node2's namespace (it can reach node1's peer port): plaintext garbage, an
    // oversized "TLS record", a truncated one, and silence.
    lab.net
        .node(2)
        .ns
        .enter(|| {
            for bytes in [
                b"GET / HTTP/1.0\r\n\r\n".to_vec(),
                vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01],
                vec![0x16, 0x03],
                vec![0u8; 70_000],
            ] {
                let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
                let _ = s.write_all(&bytes);
                drop(s);
            }
            Ok(())
        })
        .unwrap();
    wait("refusals counted", Duration::from_secs(30), || {
        lab.agent(1).ok(&["peers"]).unwrap()["status"]["refused_handshakes"]
            .as_u64()
            .unwrap_or(0)
            >= 3
    });
    // Still replicating: new clients reach every node's table.
    let by = one_backend_each(&lab.round(CLIENTS, 2));
    assert_eq!(by.len(), CLIENTS);
    lab.wait_same_tables(CLIENTS);
    let text = {
        let (code, out, _) = lab.agent(1).ctl(&["peers"]).unwrap();
        assert_eq!(code, 0);
        out
    };
    assert!(text.contains("refused_handshakes"), "{text}");
    // The metrics of a clustered node: every cluster metric the Grafana dashboard
    // queries has samples (tests/tests/dashboard.rs checks the others on a single node).
    let body = lab
        .net
        .node(1)
        .ns
        .enter(|| {
            use std::io::Read as _;
            let mut c = std::net::TcpStream::connect(metrics_addr(&lab.net, 1))?;
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            c.read_to_string(&mut out)?;
            Ok(out)
        })
        .unwrap();
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/grafana/stickylb.json"),
    )
    .unwrap();
    let mut queried = BTreeSet::new();
    for (at, _) in dashboard.match_indices("stickylb_cluster_") {
        let name: String = dashboard[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        queried.insert(name);
    }
    assert!(queried.len() >= 8, "{queried:?}");
    let missing: Vec<_> = queried
        .iter()
        .filter(|m| {
            !body
                .lines()
                .any(|l| l.starts_with(&format!("{m}{{")) || l.starts_with(&format!("{m} ")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard queries {missing:?}, not exported:\n{body}"
    );
    assert!(body.contains("stickylb_cluster_synced 1"), "{body}");
    assert!(
        body.lines().any(
            |l| l.starts_with("stickylb_cluster_refused_handshakes_total") && !l.ends_with(" 0")
        ),
        "{body}"
    );
}

#[test]
fn an_agent_restarted_under_traffic_moves_nobody_and_catches_up() {
    let mut lab = Lab::new(
        3,
        3,
        svc("roundrobin", &[(1, 1), (2, 1), (3, 1)]),
        true,
        &[1, 2, 3],
    );
    lab.wait_synced();
    let first = one_backend_each(&lab.round(CLIENTS, 3));
    lab.wait_same_tables(CLIENTS);
    let net = &lab.net;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (during, ()) = std::thread::scope(|s| {
        let traffic = s.spawn(|| {
            let mut all: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
            let mut failures = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (by, failed) = net.round(CLIENTS, 1).unwrap();
                failures += failed.len();
                for (c, b) in by {
                    all.entry(c).or_default().extend(b);
                }
            }
            (all, failures)
        });
        let a = lab.agents.get_mut(&2).unwrap();
        a.stop(libc::SIGTERM).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        a.spawn().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (all, failures) = traffic.join().unwrap();
        eprintln!("restart: {failures} connections failed during the restart");
        (all, ())
    });
    assert_eq!(
        moved(&first, &during),
        0,
        "nobody moves while node2's agent restarts"
    );
    wait("node2 synced again", Duration::from_secs(60), || {
        let p = lab.agent(2).ok(&["peers"]).unwrap();
        p["synced"] == Value::Bool(true)
            && p["status"]["peers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["taught_us"] == Value::Bool(true))
    });
    lab.wait_same_tables(CLIENTS);
    let after = lab.round(CLIENTS, CONNECTIONS);
    assert_eq!(moved(&first, &after), 0, "nobody moves after the restart");
}

/// The sink's writer over a lab data path's stick table: 3 local entries and a batch of
/// 200 (one the table keeps: same backend seen later here; one the peer wins by another
/// backend; one the peer wins by a later last-seen; 197 new clients, IPv4- and IPv6-sized
/// keys), through the batch writer `stickylb_stick_apply` (4 runs) and entry by entry.
#[test]
fn the_sink_writes_a_mixed_batch_by_the_keep_rule_in_the_kernel() {
    use aya::maps::{HashMap as BpfHashMap, IterableMap as _, Map, MapData};
    use lb_agent::agent::replication::StickWriter;
    use lb_common::{StickKey, StickRecord, StickValue, STICK_APPLY_KEPT, STICK_APPLY_WRITTEN};
    use std::os::fd::AsFd as _;

    let key = |n: u32| StickKey {
        service_id: 1 + n % 2,
        client: if n.is_multiple_of(3) {
            [n, 0, 0, 0]
        } else {
            [0x20010db8, 0, n, 1]
        },
    };
    let value = |backend_id: u32, last_seen_ns: u64| StickValue {
        backend_id,
        _pad: 0,
        last_seen_ns,
    };
    let record = |n: u32, v: StickValue| StickRecord {
        key: key(n),
        result: 0,
        value: v,
    };
    for batched in [true, false] {
        let mut lab = stickylb_tests::lab::Lab::with_options(&lb_agent::loader::LoadOptions {
            stick_events: true,
            ..Default::default()
        })
        .unwrap();
        for n in 0..3 {
            lab.dp.stick.insert(&key(n), &value(1, 1_000), 0).unwrap();
        }
        let data = MapData::from_fd(
            lab.dp
                .stick
                .map()
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .unwrap(),
        )
        .unwrap();
        let table: BpfHashMap<MapData, StickKey, StickValue> = match Map::from_map_data(data) {
            Ok(m @ (Map::LruHashMap(_) | Map::HashMap(_))) => m.try_into().unwrap(),
            other => panic!("the stick table is not a hash map: {other:?}"),
        };
        let writer = batched.then(|| {
            lb_agent::loader::stick_writer(&lab.ebpf)
                .expect("the batch writer is loaded in a cluster")
        });
        let mut w = StickWriter::new(table, writer);
        let mut records = vec![
            record(0, value(1, 500)),
            record(1, value(2, 500)),
            record(2, value(1, 2_000)),
        ];
        records.extend((3..200).map(|n| record(n, value(n % 4, 7 + n as u64))));
        let written = w.write(&mut records);
        assert_eq!(written, 199, "batched {batched}");
        assert_eq!(records[0].result, STICK_APPLY_KEPT);
        assert!(records[1..].iter().all(|r| r.result == STICK_APPLY_WRITTEN));
        let get = |n: u32| lab.dp.stick.get(&key(n), 0).unwrap();
        assert_eq!(get(0), value(1, 1_000), "the local entry seen later stays");
        assert_eq!(get(1), value(2, 500), "another backend: the peer's wins");
        assert_eq!(
            get(2),
            value(1, 2_000),
            "seen later by the peer: the peer's wins"
        );
        for n in 3..200 {
            assert_eq!(get(n), value(n % 4, 7 + n as u64), "client {n}");
        }
        assert_eq!(lab.dp.stick_entries().len(), 200);
        // Again: everything is now as the table has it (same backend, same last-seen).
        for r in &mut records {
            r.result = 0;
        }
        assert_eq!(w.write(&mut records), 0);
        assert!(records.iter().all(|r| r.result == STICK_APPLY_KEPT));
        if batched {
            assert_eq!(w.runs(), (8, true), "4 runs of 64 each time, none refused");
        } else {
            assert_eq!(w.runs(), (0, false));
        }
    }
}
