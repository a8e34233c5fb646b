//! Proves the namespace harness itself, with plain kernel routing (no XDP):
//! reachability of every backend from many client sources over v4 and v6,
//! parallel topologies, and cleanup on drop and on panic.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stickylb_tests::netns::list_netns;
use stickylb_tests::{tcp_fetch, tcp_fetch_all, NameServer, Netns, Topology, TopologyOpts};

const PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(5);

fn assert_gone(names: &[String]) {
    let live: HashSet<String> = list_netns().unwrap().into_iter().collect();
    for n in names {
        assert!(!live.contains(n), "netns {n} still exists after drop");
        assert!(
            !std::path::Path::new("/run/netns").join(n).exists(),
            "/run/netns/{n} still exists"
        );
    }
}

fn assert_present(names: &[String]) {
    let live: HashSet<String> = list_netns().unwrap().into_iter().collect();
    for n in names {
        assert!(live.contains(n), "netns {n} missing");
    }
}

#[test]
fn routed_fetch_reaches_every_backend_from_many_sources() {
    let topo = Topology::build(TopologyOpts {
        backends: 3,
        clients: 50,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(topo.client_v4s().len(), 50);
    assert_eq!(topo.client_v6s().len(), 50);
    assert_eq!(topo.lb_backend_ifs(), vec!["to-be1", "to-be2", "to-be3"]);

    let servers: Vec<NameServer> = topo
        .backends()
        .iter()
        .map(|b| NameServer::spawn(&b.ns, PORT, &b.name).unwrap())
        .collect();

    // 10 different client sources, spread over the 50.
    let picks: Vec<usize> = (0..10).map(|k| k * 5).collect();
    for &k in &picks {
        let srcs: [IpAddr; 2] = [topo.client_v4s()[k].into(), topo.client_v6s()[k].into()];
        for src in srcs {
            for (b, srv) in topo.backends().iter().zip(&servers) {
                let dst = SocketAddr::new(b.addr_like(src), PORT);
                let got = tcp_fetch(topo.client(), src, dst, TIMEOUT).unwrap();
                assert_eq!(got, b.name, "{src} -> {dst}");
                assert!(
                    srv.peers().contains(&src),
                    "{} did not see client source {src}: {:?}",
                    b.name,
                    srv.peers()
                );
            }
        }
    }
    for srv in &servers {
        assert_eq!(srv.connections(), 20, "{}", srv.name());
        assert_eq!(srv.peers().len(), 20, "{}", srv.name());
        assert!(srv.peer_counts().values().all(|&c| c == 1));
    }

    // The batch variant gives the same answers.
    let pairs: Vec<(IpAddr, SocketAddr)> = topo
        .backends()
        .iter()
        .map(|b| {
            (
                topo.client_v4s()[49].into(),
                SocketAddr::new(b.v4.into(), PORT),
            )
        })
        .collect();
    let answers = tcp_fetch_all(topo.client(), &pairs, TIMEOUT).unwrap();
    for (b, a) in topo.backends().iter().zip(answers) {
        assert_eq!(a.unwrap(), b.name);
    }

    // The VIP is assigned nowhere by default: the balancer has no route.
    let err = tcp_fetch(
        topo.client(),
        topo.client_v4s()[0].into(),
        SocketAddr::new(topo.vip_v4().into(), PORT),
        TIMEOUT,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("198.18.100.100:8080"), "{msg}");
}

#[test]
fn vip_on_backend_lo_and_checksum_off() {
    let topo = Topology::build(TopologyOpts {
        backends: 2,
        clients: 1,
        vip_on_backend_lo: true,
        native_xdp: true,
        ..Default::default()
    })
    .unwrap();
    for b in topo.backends() {
        let addrs = b.ns.ip(&["addr", "show", "dev", "lo"]).unwrap();
        assert!(addrs.contains("198.18.100.100/32"), "{addrs}");
        assert!(addrs.contains("fd00:5118:100::100/128"), "{addrs}");
        assert_eq!(
            b.ns.sysctl_get("net.ipv4.conf.all.arp_ignore").unwrap(),
            "1"
        );
        assert_eq!(
            b.ns.sysctl_get("net.ipv4.conf.all.arp_announce").unwrap(),
            "2"
        );
        let feat = b.ns.exec(&["ethtool", "-k", &b.ifname]).unwrap();
        assert!(feat.contains("tx-checksumming: off"), "{feat}");
        assert!(feat.contains("generic-receive-offload: on"), "{feat}");
    }
    let feat = topo
        .lb()
        .exec(&["ethtool", "-k", topo.lb_client_if()])
        .unwrap();
    assert!(feat.contains("tx-checksumming: off"), "{feat}");
    assert_eq!(topo.lb().sysctl_get("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(
        topo.lb()
            .sysctl_get("net.ipv6.conf.all.forwarding")
            .unwrap(),
        "1"
    );
    assert_eq!(
        topo.lb()
            .sysctl_get("net.ipv4.conf.to-client.rp_filter")
            .unwrap(),
        "0"
    );
    // MAC / ifindex helpers work on the balancer's interfaces.
    assert_ne!(topo.lb().mac(topo.lb_client_if()).unwrap(), [0; 6]);
    assert!(topo.lb().ifindex("to-be2").unwrap() > 1);

    // Routed traffic still works with checksum offload off.
    let b = topo.backend(2);
    let _srv = NameServer::spawn(&b.ns, 0, &b.name).unwrap();
    let got = tcp_fetch(
        topo.client(),
        topo.client_v6s()[0].into(),
        SocketAddr::new(b.v6.into(), _srv.port()),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(got, "backend-2");
}

#[test]
fn parallel_topologies_are_independent_and_cleaned_up() {
    let names: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let topo = Topology::build(TopologyOpts {
                        backends: 2,
                        clients: 5,
                        ..Default::default()
                    })
                    .unwrap();
                    let names = topo.ns_names();
                    assert_present(&names);
                    let b = topo.backend(1);
                    let _srv = NameServer::spawn(&b.ns, PORT, "same-port-ok").unwrap();
                    let got = tcp_fetch(
                        topo.client(),
                        topo.client_v4s()[4].into(),
                        SocketAddr::new(b.v4.into(), PORT),
                        TIMEOUT,
                    )
                    .unwrap();
                    assert_eq!(got, "same-port-ok");
                    names
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: HashSet<&String> = names.iter().flatten().collect();
    assert_eq!(all.len(), names[0].len() + names[1].len(), "names collide");
    for n in &names {
        assert_gone(n);
    }
}

#[test]
fn namespaces_are_removed_when_the_test_body_panics() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    let result = std::panic::catch_unwind(move || {
        let topo = Topology::build(TopologyOpts::default()).unwrap();
        let lone = Netns::new("lone").unwrap();
        let mut names = topo.ns_names();
        names.push(lone.name().to_owned());
        assert_present(&names);
        *seen2.lock().unwrap() = names;
        let _srv = NameServer::spawn(&topo.backend(1).ns, PORT, "doomed").unwrap();
        panic!("deliberate panic inside the test body");
    });
    assert!(result.is_err());
    let names = seen.lock().unwrap().clone();
    assert_eq!(names.len(), 6);
    assert_gone(&names);
}

#[test]
fn netns_exec_errors_carry_command_and_stderr() {
    let ns = Netns::new("err").unwrap();
    let err = ns
        .exec(&["ip", "link", "show", "dev", "nope0"])
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("ip link show dev nope0"), "{msg}");
    assert!(msg.contains("nope0"), "{msg}");
    // enter() really runs in the namespace: only lo exists there.
    let ifs = ns
        .enter(|| Ok(std::fs::read_to_string("/proc/thread-self/net/dev")?))
        .unwrap();
    assert!(ifs.contains("lo:"), "{ifs}");
    assert!(!ifs.contains("eth0:"), "{ifs}");
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(ns.sysctl_get("net.ipv4.ip_forward").unwrap(), "1");
}
