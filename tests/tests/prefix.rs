//! Stickiness by network end to end (`stick_on = "src/24"`, `"src/64"`): a client namespace
//! with two addresses of one network and one of another, real TCP connections through the
//! balancer namespace to three backends (NAT). Both addresses of the network reach one
//! backend and share one stick-table entry keyed by the network; the other network's
//! address takes the next round-robin turn (another backend) and its own entry; the
//! backends see each client's own address (only the key is masked).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result};
use lb_agent::{
    agent::{
        attach::{self, XdpMode},
        neigh,
    },
    dataplane::Dataplane,
    loader::{self, LoadOptions},
};
use lb_common::ip_from_addr;
use lb_model::{
    plan::Ids,
    spec::{ServiceSpec, StickOn},
};
use stickylb_tests::{tcp_fetch_all, NameServer, Topology, TopologyOpts};

const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const CONNECTIONS: usize = 4;

/// One family's clients: two of one network, one of another, and the two networks.
struct Clients {
    same: [IpAddr; 2],
    other: IpAddr,
    networks: [IpAddr; 2],
}

fn v4_clients() -> Clients {
    let a = |c, d| IpAddr::V4(Ipv4Addr::new(198, 19, c, d));
    Clients {
        same: [a(7, 10), a(7, 200)],
        other: a(8, 10),
        networks: [a(7, 0), a(8, 0)],
    }
}

fn v6_clients() -> Clients {
    let a = |g, h, i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0x5118, g, 0, h, 0, 0, i));
    Clients {
        // One /64, addresses that differ in the interface identifier's every half.
        same: [a(7, 0, 0xa), a(7, 0x1234, 0xb)],
        other: a(8, 0, 0xa),
        networks: [a(7, 0, 0), a(8, 0, 0)],
    }
}

#[test]
fn clients_of_one_network_reach_one_backend() -> Result<()> {
    let topo = Topology::build(TopologyOpts {
        backends: 3,
        clients: 0,
        vip_on_backend_lo: false,
        native_xdp: false,
        ..Default::default()
    })?;
    let (c4, c6) = (v4_clients(), v6_clients());
    // The extra client addresses on the client's interface, routed back to it by the
    // balancer (the backends route everything through the balancer).
    let mut adds = Vec::new();
    for ip in c4.same.iter().chain([&c4.other]) {
        adds.push(format!("addr add {ip}/32 dev {}", topo.client_if()));
    }
    for ip in c6.same.iter().chain([&c6.other]) {
        adds.push(format!("addr add {ip}/128 dev {} nodad", topo.client_if()));
    }
    topo.client().ip_batch(&adds).context("client addresses")?;
    let via4 = topo.client_primary_v4().to_string();
    let via6 = topo.client_primary_v6().to_string();
    let dev = topo.lb_client_if().to_string();
    topo.lb()
        .ip_batch(&[
            format!("route replace 198.19.0.0/16 via {via4} dev {dev}"),
            format!("route replace fd00:5118:7::/48 via {via6} dev {dev}"),
            format!("route replace fd00:5118:8::/48 via {via6} dev {dev}"),
        ])
        .context("balancer routes to the clients")?;

    let servers: Vec<NameServer> = topo
        .backends()
        .iter()
        .map(|b| NameServer::spawn(&b.ns, BACKEND_PORT, &b.name))
        .collect::<Result<_>>()?;
    let mut specs = Vec::new();
    for (name, vip, prefix) in [
        ("web4", IpAddr::from(topo.vip_v4()), 24),
        ("web6", IpAddr::from(topo.vip_v6()), 64),
    ] {
        let mut s = ServiceSpec::new(name, SocketAddr::new(vip, VIP_PORT));
        s.stick_on = StickOn::Network(prefix);
        for b in topo.backends() {
            s = s.backend(SocketAddr::new(b.addr_like(vip), BACKEND_PORT));
        }
        specs.push(s);
    }
    let mut ebpf = loader::load(&LoadOptions::default())?;
    let mut dp = Dataplane::new(&mut ebpf)?;
    let plan = Ids::default().plan(&specs)?;
    dp.apply(&plan)?;
    let mut ifaces = vec![topo.lb_client_if().to_string()];
    ifaces.extend(topo.lb_backend_ifs().iter().map(|s| s.to_string()));
    let backend_ips: Vec<IpAddr> = topo
        .backends()
        .iter()
        .flat_map(|b| [b.v4.into(), b.v6.into()])
        .collect();
    topo.lb().enter(|| {
        for ifname in &ifaces {
            attach::attach(&mut ebpf, ifname, XdpMode::Skb)?;
        }
        // No agent here: resolve the backends' next hops as it would (managed entries).
        for (ip, e) in neigh::resolve_blocking(&backend_ips, Duration::from_secs(5)) {
            eprintln!("resolving {ip}: {e}");
        }
        Ok(())
    })?;
    std::thread::sleep(Duration::from_millis(200));

    for (i, (clients, vip)) in [
        (&c4, IpAddr::from(topo.vip_v4())),
        (&c6, IpAddr::from(topo.vip_v6())),
    ]
    .into_iter()
    .enumerate()
    {
        let family = if vip.is_ipv4() {
            "IPv4 /24"
        } else {
            "IPv6 /64"
        };
        let dst = SocketAddr::new(vip, VIP_PORT);
        // In order: the network's first address, its second, then the other network.
        let mut pairs = Vec::new();
        for src in [clients.same[0], clients.same[1], clients.other] {
            pairs.extend(std::iter::repeat_n((src, dst), CONNECTIONS));
        }
        let answers = tcp_fetch_all(topo.client(), &pairs, Duration::from_secs(3))?;
        let mut per_client: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
        for ((src, _), r) in pairs.iter().zip(answers) {
            let name = r.with_context(|| format!("{family}: {src} -> {dst}"))?;
            per_client.entry(*src).or_default().insert(name);
        }
        let one = |c: &IpAddr| -> String {
            let names = &per_client[c];
            assert_eq!(names.len(), 1, "{family}: {c} reached {names:?}");
            names.iter().next().unwrap().clone()
        };
        let (a, b, other) = (
            one(&clients.same[0]),
            one(&clients.same[1]),
            one(&clients.other),
        );
        assert_eq!(
            a, b,
            "{family}: two addresses of one network on two backends"
        );
        assert_ne!(
            a, other,
            "{family}: the second network did not take the next round-robin turn"
        );
        // One entry per network, keyed by the network address.
        let sid = plan.services[i].info.id;
        let family_byte = if vip.is_ipv4() { 4 } else { 6 };
        let keys: BTreeSet<IpAddr> = dp
            .stick_entries()
            .into_iter()
            .filter(|(k, _)| k.service_id == sid)
            .map(|(k, _)| ip_from_addr(&k.client, family_byte))
            .collect();
        assert_eq!(
            keys,
            clients.networks.iter().copied().collect::<BTreeSet<_>>(),
            "{family}: entries"
        );
        let st = dp.service_stats(sid)?;
        assert_eq!(st.new_clients, 2, "{family}: new clients (networks)");
    }
    // Each backend saw the clients' own addresses.
    let all: BTreeSet<IpAddr> = [&c4, &c6]
        .iter()
        .flat_map(|c| [c.same[0], c.same[1], c.other])
        .collect();
    let seen: BTreeSet<IpAddr> = servers.iter().flat_map(|s| s.peers()).collect();
    assert_eq!(
        seen, all,
        "the backends saw other sources than the clients'"
    );
    drop(servers);
    Ok(())
}
