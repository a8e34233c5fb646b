//! Proves the cluster test network itself, with plain kernel routing (no XDP, no agent):
//! each node stands in for a balancer in DSR mode by routing the VIP to "its" backend
//! over the LAN (the backend holds the VIP on `lo` and answers the client through the
//! router), so the backend that answers tells which node a connection went through.
//! Checks the ECMP spread over nodes, a nexthop removed and added back, a node's links
//! killed and restored, a node added, reachability on the LAN, and cleanup.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use stickylb_tests::cluster_net::{ClusterNet, ClusterOpts, VIP_V4, VIP_V6};
use stickylb_tests::netns::list_netns;
use stickylb_tests::{tcp_fetch, tcp_fetch_all, NameServer};

const PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Node i routes the VIP to backend i (as its balancer would, by MAC).
fn route_vip_to_own_backend(net: &ClusterNet, i: usize) {
    let n = net.node(i);
    let b = net.backend(i);
    n.ns.ip_batch(&[
        format!("route replace {VIP_V4}/32 via {} dev to-lan", b.v4),
        format!("route replace {VIP_V6}/128 via {} dev to-lan", b.v6),
    ])
    .unwrap();
}

/// Answers of `count` connections from one client address to the VIP, by backend name.
fn spread(net: &ClusterNet, src: IpAddr, count: usize) -> BTreeMap<String, usize> {
    let vip: IpAddr = if src.is_ipv4() {
        VIP_V4.into()
    } else {
        VIP_V6.into()
    };
    let pairs: Vec<(IpAddr, SocketAddr)> = (0..count)
        .map(|_| (src, SocketAddr::new(vip, PORT)))
        .collect();
    let mut by = BTreeMap::new();
    for (k, a) in tcp_fetch_all(net.client(), &pairs, TIMEOUT)
        .unwrap()
        .into_iter()
        .enumerate()
    {
        match a {
            Ok(name) => *by.entry(name).or_insert(0) += 1,
            Err(e) => *by.entry(format!("error {k}: {e:#}")).or_insert(0) += 1,
        }
    }
    by
}

fn names(m: &BTreeMap<String, usize>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

#[test]
fn ecmp_over_nodes_with_direct_server_return() {
    let mut net = ClusterNet::build(ClusterOpts {
        nodes: 3,
        backends: 4,
        clients: 10,
        native_xdp: false,
    })
    .unwrap();
    assert_eq!(net.fib_nexthops().unwrap().len(), 3);
    assert_eq!(
        net.router()
            .sysctl_get("net.ipv4.fib_multipath_hash_policy")
            .unwrap(),
        "1"
    );
    let servers: Vec<NameServer> = net
        .backends()
        .iter()
        .map(|b| NameServer::spawn(&b.ns, PORT, &b.name).unwrap())
        .collect();
    // The LAN: every node reaches every backend, over IPv4 and IPv6; nodes reach each
    // other at their peer addresses.
    for n in net.nodes() {
        for b in net.backends() {
            for (src, dst) in [
                (IpAddr::from(n.lan_v4), IpAddr::from(b.v4)),
                (n.lan_v6.into(), b.v6.into()),
            ] {
                let got = tcp_fetch(&n.ns, src, SocketAddr::new(dst, PORT), TIMEOUT).unwrap();
                assert_eq!(got, b.name);
            }
        }
    }
    let peer = NameServer::spawn(&net.node(2).ns, net.node(2).peer_addr().port(), "node2").unwrap();
    let got = tcp_fetch(
        &net.node(1).ns,
        net.node(1).lan_v4.into(),
        net.node(2).peer_addr(),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(got, "node2");
    drop(peer);

    for i in 1..=3 {
        route_vip_to_own_backend(&net, i);
    }
    // One client's connections spread over all three nodes (five-tuple hashing), on
    // both families; replies come straight from the backends through the router.
    let src4: IpAddr = net.client_v4s()[0].into();
    let src6: IpAddr = net.client_v6s()[0].into();
    for src in [src4, src6] {
        let by = spread(&net, src, 48);
        assert_eq!(
            names(&by),
            ["backend-1", "backend-2", "backend-3"],
            "{src}: {by:?}"
        );
    }
    for s in &servers[..3] {
        assert!(
            s.peers().contains(&src4),
            "{} saw the client's own address",
            s.name()
        );
    }

    // Node 2 out of the nexthops: nothing reaches it; back in: it gets traffic again.
    net.remove_nexthop(2).unwrap();
    assert_eq!(
        net.fib_nexthops().unwrap(),
        vec![net.node(1).v4, net.node(3).v4]
    );
    let by = spread(&net, src4, 32);
    assert_eq!(names(&by), ["backend-1", "backend-3"], "{by:?}");
    net.add_nexthop(2).unwrap();
    assert_eq!(names(&spread(&net, src4, 48)).len(), 3);

    // Node 3's links killed: the router keeps the other two; restored and re-added.
    net.kill_links(3).unwrap();
    assert_eq!(net.nexthops(), [1, 2]);
    assert_eq!(net.fib_nexthops().unwrap().len(), 2);
    assert!(
        net.router().ip(&["link", "show", "to-node3"]).is_err(),
        "link gone"
    );
    let by = spread(&net, src6, 32);
    assert_eq!(names(&by), ["backend-1", "backend-2"], "{by:?}");
    net.restore_links(3).unwrap();
    route_vip_to_own_backend(&net, 3);
    net.add_nexthop(3).unwrap();
    assert_eq!(names(&spread(&net, src4, 48)).len(), 3);

    // A fourth node: not routed to until its nexthop is added.
    let i = net.add_node().unwrap();
    assert_eq!(i, 4);
    route_vip_to_own_backend(&net, 4);
    assert!(!names(&spread(&net, src4, 32)).contains(&"backend-4"));
    net.add_nexthop(4).unwrap();
    assert_eq!(net.fib_nexthops().unwrap().len(), 4);
    let by = spread(&net, src4, 64);
    assert_eq!(names(&by).len(), 4, "{by:?}");

    // Every node out: no route at all.
    for k in 1..=4 {
        net.remove_nexthop(k).unwrap();
    }
    assert!(net.fib_nexthops().unwrap().is_empty());
}

#[test]
fn everything_is_removed_on_drop_and_on_panic() {
    let net = ClusterNet::build(ClusterOpts {
        nodes: 2,
        backends: 1,
        clients: 0,
        native_xdp: true,
    })
    .unwrap();
    let names = net.ns_names();
    assert_eq!(names.len(), 3 + 2 + 1);
    let live: HashSet<String> = list_netns().unwrap().into_iter().collect();
    assert!(names.iter().all(|n| live.contains(n)));
    drop(net);
    let live: HashSet<String> = list_netns().unwrap().into_iter().collect();
    assert!(names.iter().all(|n| !live.contains(n)), "left behind");

    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let mut net = ClusterNet::build(ClusterOpts {
            nodes: 1,
            backends: 1,
            clients: 0,
            native_xdp: false,
        })
        .unwrap();
        net.add_node().unwrap();
        *names.lock().unwrap() = net.ns_names();
        panic!("test panic");
    });
    assert!(r.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 3 + 2 + 1);
    let live: HashSet<String> = list_netns().unwrap().into_iter().collect();
    assert!(
        names.iter().all(|n| !live.contains(n)),
        "left behind after a panic"
    );
}
