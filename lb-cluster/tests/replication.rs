//! Replication between three real nodes in one process: real TCP on loopback, mutual
//! TLS with certificates made here, and the in-memory stick table of `common`. Covers
//! teach, incremental updates, conflict convergence, partition and heal, a slow peer,
//! resync after overflow, restart and catch-up, and unknown services and backends.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use lb_cluster::{Observed, ObservedKind, PeerConfig};

async fn three(pki: &Pki) -> Vec<Node> {
    let specs = mesh(pki, 3);
    let mut nodes = Vec::new();
    for s in specs {
        nodes.push(Node::start(s, &services(0)).await);
    }
    nodes
}

async fn all_synced(nodes: &[&Node]) {
    for n in nodes {
        wait_for(&format!("{} synced", n.spec.name), LIMIT, || {
            n.cluster.synced()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teach_then_incremental_across_three_nodes() {
    let pki = Pki::new("test CA");
    let specs = mesh(&pki, 3);
    // lb1 starts alone with a table.
    let a = Node::start(specs[0].clone(), &services(0)).await;
    let picks: Vec<Observed> = (0..5000)
        .map(|c| pick(svc(80), c, 2 + (c % 3) as u8))
        .collect();
    assert!(a.cluster.observe(&picks).is_empty());
    assert_eq!(a.entries(), 5000);
    wait_for("lb1 synced alone after sync_timeout", LIMIT, || {
        a.cluster.synced()
    })
    .await;
    let s = a.cluster.status();
    assert!(s.synced_after_ms.is_some());

    // lb2 and lb3 join empty: each is taught lb1's table before it says it is synced.
    let b = Node::start(specs[1].clone(), &services(0)).await;
    let c = Node::start(specs[2].clone(), &services(0)).await;
    all_synced(&[&b, &c]).await;
    for n in [&b, &c] {
        assert_eq!(n.sink.len(), 5000, "{} taught", n.spec.name);
        assert!(n.peer("lb1").taught_us);
        for k in [0u32, 1, 2, 4999] {
            assert_eq!(
                n.sink.backend_of(&svc(80), &client(k)),
                Some(be(2 + (k % 3) as u8))
            );
        }
    }

    // Incremental: new picks on each node reach the two others.
    b.cluster.observe(&[pick(svc(443), 100_000, 3)]);
    c.cluster.observe(&[pick(svc(80), 100_001, 4)]);
    a.cluster.observe(&[pick(svc(80), 100_002, 2)]);
    let nodes = [&a, &b, &c];
    wait_for("incremental entries everywhere", LIMIT, || {
        nodes.iter().all(|n| {
            n.backend(&svc(443), 100_000) == Some(be(3))
                && n.backend(&svc(80), 100_001) == Some(be(4))
                && n.backend(&svc(80), 100_002) == Some(be(2))
        })
    })
    .await;
    // Entries learned from a peer are not sent on (full mesh): lb2 sent lb3 whatever
    // its teach held when it connected, then only its own pick.
    wait_for("lb3 acknowledged all lb2 sent", LIMIT, || {
        let p = b.peer("lb3");
        p.entries_sent >= 1 && p.acked == p.entries_sent
    })
    .await;
    let st = b.cluster.status();
    let to_c = st.peers.iter().find(|p| p.name == "lb3").unwrap();
    assert_eq!(to_c.state, "up");
    assert!(to_c.entries_sent <= 5001, "{to_c:?}");
    assert!(to_c.bytes_sent > 0 && to_c.bytes_received > 0);
    assert!(st.counters.adopted >= 5002);
    println!("{}", serde_json::to_string_pretty(&st).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_picks_converge_on_one_backend() {
    let pki = Pki::new("test CA");
    let nodes = three(&pki).await;
    all_synced(&nodes.iter().collect::<Vec<_>>()).await;
    // The same 300 clients picked differently on every node at about the same moment
    // (round robin on three nodes can do this).
    for (i, n) in nodes.iter().enumerate() {
        let picks: Vec<Observed> = (0..300)
            .map(|c| pick(svc(80), c, 2 + ((c as usize + i) % 3) as u8))
            .collect();
        n.picks(&picks);
    }
    wait_for("every node agrees on every client", LIMIT, || {
        (0..300).all(|c| {
            let b: HashSet<_> = nodes.iter().map(|n| n.backend(&svc(80), c)).collect();
            b.len() == 1 && b.iter().next().unwrap().is_some()
        })
    })
    .await;
    // And the stick tables (the data path's picks, then what the cluster wrote) agree.
    for c in 0..300 {
        let want = nodes[0].backend(&svc(80), c).unwrap();
        for n in &nodes {
            assert_eq!(
                n.sink.backend_of(&svc(80), &client(c)),
                Some(want),
                "client {c} in {}'s table",
                n.spec.name
            );
        }
    }
    // Every client's disagreement was seen somewhere: as a conflict (two picks within the
    // conflict window), or, when a node's own pick bears the same coarse-clock tick as a
    // peer's entry it had already adopted (a loaded machine runs the peers' replication
    // between two nodes' picks), as a stale event of that node, its table then rewritten
    // to the store's winner (checked above). The rule itself is the store's unit tests'.
    let (conflicts, stale): (u64, u64) = nodes
        .iter()
        .map(|n| {
            let c = n.cluster.status().counters;
            (c.conflicts, c.stale_events)
        })
        .fold((0, 0), |(a, b), (c, s)| (a + c, b + s));
    assert!(
        conflicts + stale >= 300,
        "conflicts counted: {conflicts}, stale events: {stale}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_heal_converge() {
    let pki = Pki::new("test CA");
    let mut specs = mesh(&pki, 3);
    // Every link to and from lb3 goes through a proxy that can be cut.
    let mut proxies = Vec::new();
    for (i, j) in [(0usize, 2usize), (1, 2), (2, 0), (2, 1)] {
        let target = specs[j].listen;
        let proxy = Proxy::start(target).await;
        let name = format!("lb{}", j + 1);
        specs[i]
            .peers
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap()
            .address = proxy.addr;
        proxies.push(proxy);
    }
    let mut nodes = Vec::new();
    for s in specs {
        nodes.push(Node::start(s, &services(0)).await);
    }
    all_synced(&nodes.iter().collect::<Vec<_>>()).await;
    // Clients 0..100 known everywhere before the partition.
    nodes[0]
        .cluster
        .observe(&(0..100).map(|c| pick(svc(80), c, 2)).collect::<Vec<_>>());
    wait_for("pre-partition entries", LIMIT, || {
        nodes.iter().all(|n| n.entries() == 100)
    })
    .await;

    for p in &proxies {
        p.set(Flow::Cut);
    }
    wait_for("lb3 cut off", LIMIT, || {
        let s = nodes[2].cluster.status();
        s.peers.iter().all(|p| p.state == "down")
    })
    .await;
    // Both sides keep serving: the majority side re-picks 0..20 (a backend went down
    // there), lb3 re-picks 10..30 differently; new clients on both sides, some the same.
    nodes[0]
        .cluster
        .observe(&(0..20).map(|c| pick(svc(80), c, 3)).collect::<Vec<_>>());
    // (Later: pick stamps are milliseconds, and a tie goes to the lower backend.)
    tokio::time::sleep(Duration::from_millis(20)).await;
    nodes[2]
        .cluster
        .observe(&(10..30).map(|c| pick(svc(80), c, 4)).collect::<Vec<_>>());
    nodes[1].cluster.observe(
        &(1000..1050)
            .map(|c| pick(svc(80), c, 2))
            .collect::<Vec<_>>(),
    );
    nodes[2].cluster.observe(
        &(1040..1100)
            .map(|c| pick(svc(80), c, 3))
            .collect::<Vec<_>>(),
    );

    for p in &proxies {
        p.set(Flow::Open);
    }
    let keys: Vec<u32> = (0..100).chain(1000..1100).collect();
    wait_for(
        "every client's entry is the same on all nodes",
        LIMIT,
        || {
            keys.iter().all(|&c| {
                let b: HashSet<_> = nodes.iter().map(|n| n.backend(&svc(80), c)).collect();
                b.len() == 1 && !b.contains(&None)
            })
        },
    )
    .await;
    // Clients untouched during the partition kept their backend.
    for c in 30..100 {
        assert_eq!(nodes[2].backend(&svc(80), c), Some(be(2)));
    }
    // The newest decision won for clients re-picked on both sides.
    for c in 10..20 {
        assert_eq!(
            nodes[0].backend(&svc(80), c),
            Some(be(4)),
            "lb3 decided last"
        );
    }
    drop(proxies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_peer_never_stalls_the_sender_and_is_resynced() {
    let pki = Pki::new("test CA");
    let mut specs = mesh(&pki, 3);
    for s in &mut specs {
        s.queue = 1024;
    }
    // lb1 reaches lb2 through a proxy that will stop reading.
    let proxy = Proxy::start(specs[1].listen).await;
    specs[0]
        .peers
        .iter_mut()
        .find(|p| p.name == "lb2")
        .unwrap()
        .address = proxy.addr;
    let mut nodes = Vec::new();
    for s in specs {
        nodes.push(Node::start(s, &services(0)).await);
    }
    all_synced(&nodes.iter().collect::<Vec<_>>()).await;
    proxy.set(Flow::Paused);

    // Far more than the queue and the socket buffers hold.
    let n = 400_000u32;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(4096) {
        let picks: Vec<Observed> = chunk
            .iter()
            .map(|&c| pick(svc(80), c, 2 + (c % 3) as u8))
            .collect();
        nodes[0].cluster.observe(&picks);
    }
    let took = started.elapsed();
    // lb3, healthy, gets everything while lb2 is stuck.
    wait_for("lb3 has every entry", LIMIT, || {
        nodes[2].sink.len() == n as usize
    })
    .await;
    let stuck = nodes[0].peer("lb2");
    assert!(stuck.queued <= 1024, "bounded queue: {stuck:?}");
    assert!(
        nodes[1].sink.len() < n as usize,
        "lb2 could not have read everything"
    );
    println!("observed {n} picks in {took:?} with a stuck peer");
    wait_for("the overflow is noted", LIMIT, || {
        nodes[0].peer("lb2").resyncs >= 1
    })
    .await;

    // Unblocked, lb2 is resynced by a full teach and ends with everything.
    proxy.set(Flow::Open);
    wait_for("lb2 resynced", LIMIT, || nodes[1].sink.len() == n as usize).await;
    let p = nodes[0].peer("lb2");
    assert!(p.teaches_sent >= 2, "{p:?}");
    for c in [0u32, 1, n - 1] {
        assert_eq!(nodes[1].backend(&svc(80), c), Some(be(2 + (c % 3) as u8)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_catches_up() {
    let pki = Pki::new("test CA");
    let mut nodes = three(&pki).await;
    all_synced(&nodes.iter().collect::<Vec<_>>()).await;
    nodes[0]
        .cluster
        .observe(&(0..1000).map(|c| pick(svc(80), c, 2)).collect::<Vec<_>>());
    wait_for("lb2 has them", LIMIT, || nodes[1].entries() == 1000).await;

    // lb2 goes away; the others go on deciding.
    let b = nodes.remove(1);
    let spec = b.spec.clone();
    b.cluster.shutdown().await;
    nodes[0]
        .cluster
        .observe(&(0..100).map(|c| pick(svc(80), c, 3)).collect::<Vec<_>>());
    nodes[1].cluster.observe(
        &(2000..2500)
            .map(|c| pick(svc(443), c, 4))
            .collect::<Vec<_>>(),
    );

    // Back, with an empty table (a new agent; the map had been lost too).
    let b = Node::start(spec, &services(0)).await;
    assert!(!b.cluster.synced());
    wait_for("lb2 synced again", LIMIT, || b.cluster.synced()).await;
    // Synced means taught by both: everything is there at that moment.
    assert_eq!(b.entries(), 1500);
    for c in 0..100 {
        assert_eq!(b.sink.backend_of(&svc(80), &client(c)), Some(be(3)));
    }
    assert_eq!(b.sink.backend_of(&svc(443), &client(2400)), Some(be(4)));
    let s = b.cluster.status();
    assert!(s.peers.iter().all(|p| p.taught_us), "{:?}", s.peers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_and_backends_are_ignored_and_counted() {
    let pki = Pki::new("test CA");
    let specs = mesh(&pki, 2);
    // lb1 has two more backends on port 80 than lb2, and a service lb2 lacks.
    let mut more = services(2);
    more.push(lb_cluster::ServiceDef {
        key: svc(8443),
        expire: None,
        scheduler: "roundrobin".into(),
        backends: vec![lb_cluster::BackendDef {
            key: be(9),
            weight: 1,
        }],
    });
    let a = Node::start(specs[0].clone(), &more).await;
    let b = Node::start(specs[1].clone(), &services(0)).await;
    all_synced(&[&a, &b]).await;
    let picks = vec![
        pick(svc(80), 1, 2),   // known to both
        pick(svc(80), 2, 5),   // backend 5: lb2 does not have it
        pick(svc(80), 3, 6),   // backend 6: neither
        pick(svc(8443), 4, 9), // a service lb2 does not have
    ];
    a.cluster.observe(&picks);
    wait_for("lb2 took what it knows and counted the rest", LIMIT, || {
        let c = b.cluster.status().counters;
        c.adopted == 1 && c.unknown_backend == 2 && c.unknown_service == 1
    })
    .await;
    assert_eq!(b.sink.len(), 1);
    assert_eq!(b.sink.backend_of(&svc(80), &client(1)), Some(be(2)));
    let p = b.peer("lb1");
    assert_eq!(p.ignored_unknown, 3);
    assert!(p.services_differ, "{p:?}");
    assert!(a.peer("lb2").services_differ);
    // Both keep running: once lb2 gets the same definitions, the digests agree.
    b.cluster.set_services(&more);
    a.cluster.observe(&[pick(svc(8443), 5, 9)]);
    wait_for("lb2 learns the new service's entries", LIMIT, || {
        b.sink.backend_of(&svc(8443), &client(5)) == Some(be(9))
    })
    .await;
    wait_for("digests agree", LIMIT, || {
        !a.peer("lb2").services_differ && !b.peer("lb1").services_differ
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_are_rate_limited_and_keep_entries_alive() {
    let pki = Pki::new("test CA");
    let specs = mesh(&pki, 2);
    // Expiry 2 s: refresh at most every 500 ms.
    let mut defs = services(0);
    defs[0].expire = Some(Duration::from_secs(2));
    let a = Node::start(specs[0].clone(), &defs).await;
    let b = Node::start(specs[1].clone(), &defs).await;
    all_synced(&[&a, &b]).await;
    a.cluster.observe(&[pick(svc(80), 7, 3)]);
    wait_for("lb2 has it", LIMIT, || b.entries() == 1).await;
    let sent0 = a.peer("lb2").entries_sent;
    // lb1's scan sees the client active every 50 ms for 5 s (2.5 expiries).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let seen = Observed {
            kind: ObservedKind::Scanned,
            ..pick(svc(80), 7, 3)
        };
        a.cluster.observe(&[seen]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still alive on lb2 (its store expires entries past 2 s).
    assert_eq!(
        b.backend(&svc(80), 7),
        Some(be(3)),
        "kept alive by refreshes"
    );
    let refreshes = a.peer("lb2").entries_sent - sent0;
    // ~100 scans in 5 s, at most one refresh per 500 ms: about 10.
    assert!((3..=12).contains(&refreshes), "{refreshes} refreshes sent");
    // Once the client is gone, the entry expires on lb2 too.
    wait_for("expired on lb2", LIMIT, || b.entries() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_not_configured_is_refused() {
    let pki = Pki::new("test CA");
    let mut specs = mesh(&pki, 2);
    // lb3 has a valid certificate, but lb1 does not list it.
    let rogue = Spec {
        name: "lb3".into(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], free_port())),
        creds: pki.issue("lb3", &["lb3"], false),
        peers: vec![PeerConfig {
            name: "lb1".into(),
            address: specs[0].listen,
        }],
        sync_timeout: Duration::from_secs(1),
        queue: 1024,
    };
    specs.truncate(1);
    let a = Node::start(specs[0].clone(), &services(0)).await;
    let r = Node::start(rogue, &services(0)).await;
    r.cluster.observe(&[pick(svc(80), 1, 2)]);
    wait_for("lb1 refuses lb3", LIMIT, || {
        a.cluster.status().refused_handshakes >= 1
    })
    .await;
    let s = a.cluster.status();
    assert!(
        s.last_refusal
            .as_deref()
            .unwrap_or("")
            .contains("not a peer of lb1"),
        "{s:?}"
    );
    wait_for("lb3 sees the refusal", LIMIT, || {
        r.peer("lb1")
            .outbound
            .last_error
            .is_some_and(|e| e.contains("not a peer of lb1"))
    })
    .await;
    assert_eq!(a.entries(), 0);
}
