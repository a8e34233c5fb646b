//! End to end through real namespaces: 50 client addresses, a balancer namespace with the
//! program attached to all its interfaces, three backends running TCP servers that answer
//! with their name. Every client makes several real TCP connections; all of a client's
//! connections must reach one backend, and every backend must get clients. For `nat` and
//! `dsr`, in native and skb XDP modes, over IPv4 and IPv6.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::Result;
use lb_agent::{
    agent::{
        attach::{self, XdpMode},
        neigh,
    },
    dataplane::Dataplane,
    loader::{self, LoadOptions},
};
use lb_model::{
    plan::Ids,
    spec::{Forwarding, ServiceSpec},
};
use stickylb_tests::{tcp_fetch_all, NameServer, Topology, TopologyOpts};

const CLIENTS: usize = 50;
const CONNECTIONS_PER_CLIENT: usize = 4;
const VIP_PORT: u16 = 80;

fn run_scenario(forwarding: Forwarding, mode: XdpMode) -> Result<()> {
    let topo = Topology::build(TopologyOpts {
        backends: 3,
        clients: CLIENTS,
        vip_on_backend_lo: forwarding == Forwarding::Dsr,
        // Native XDP on veth loses the "checksum to be completed" state of locally sent
        // packets; senders must finish checksums themselves (see docs/OPERATIONS.md).
        native_xdp: mode == XdpMode::Native,
        ..Default::default()
    })?;
    // NAT maps the port (80 → 8080); DSR cannot, the backend answers as the VIP.
    let backend_port = if forwarding == Forwarding::Nat {
        8080
    } else {
        VIP_PORT
    };
    let servers: Vec<NameServer> = topo
        .backends()
        .iter()
        .map(|b| NameServer::spawn(&b.ns, backend_port, &b.name))
        .collect::<Result<_>>()?;

    let mut specs = Vec::new();
    for (name, vip) in [
        ("web4", IpAddr::from(topo.vip_v4())),
        ("web6", IpAddr::from(topo.vip_v6())),
    ] {
        let mut s = ServiceSpec::new(name, SocketAddr::new(vip, VIP_PORT));
        s.forwarding = forwarding;
        for b in topo.backends() {
            s = s.backend(SocketAddr::new(b.addr_like(vip), backend_port));
        }
        specs.push(s);
    }
    let mut ebpf = loader::load(&LoadOptions::default())?;
    let mut dp = Dataplane::new(&mut ebpf)?;
    let plan = Ids::default().plan(&specs)?;
    dp.apply(&plan)?;
    let mut ifaces = vec![topo.lb_client_if().to_string()];
    ifaces.extend(topo.lb_backend_ifs().iter().map(|s| s.to_string()));
    // The next hops the data path needs: the backends, and (for NAT replies) the clients,
    // which are on the balancer's client link.
    let mut backend_ips: Vec<IpAddr> = topo
        .backends()
        .iter()
        .flat_map(|b| [b.v4.into(), b.v6.into()])
        .collect();
    if forwarding == Forwarding::Nat {
        backend_ips.extend(topo.client_v4s().iter().map(|&a| IpAddr::from(a)));
        backend_ips.extend(topo.client_v6s().iter().map(|&a| IpAddr::from(a)));
    }
    topo.lb().enter(|| {
        for ifname in &ifaces {
            attach::attach(&mut ebpf, ifname, mode)?;
        }
        // No agent here: resolve the backends' next hops as it would (managed entries).
        for (ip, e) in neigh::resolve_blocking(&backend_ips, Duration::from_secs(5)) {
            eprintln!("resolving {ip}: {e}");
        }
        Ok(())
    })?;

    let mut pairs = Vec::new();
    for _ in 0..CONNECTIONS_PER_CLIENT {
        for c in topo.client_v4s() {
            pairs.push((
                IpAddr::from(*c),
                SocketAddr::new(topo.vip_v4().into(), VIP_PORT),
            ));
        }
        for c in topo.client_v6s() {
            pairs.push((
                IpAddr::from(*c),
                SocketAddr::new(topo.vip_v6().into(), VIP_PORT),
            ));
        }
    }
    let results = tcp_fetch_all(topo.client(), &pairs, Duration::from_secs(3))?;
    let mut per_client: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    let mut failures = Vec::new();
    for ((src, dst), r) in pairs.iter().zip(results) {
        match r {
            Ok(name) => {
                per_client.entry(*src).or_default().insert(name);
            }
            Err(e) => failures.push(format!("{src} -> {dst}: {e:#}")),
        }
    }
    let what = format!("{forwarding:?}/{mode:?}");
    assert!(
        failures.is_empty(),
        "{what}: {} of {} connections failed, e.g. {:?}",
        failures.len(),
        pairs.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(
        per_client.len(),
        2 * CLIENTS,
        "{what}: not every client got answers"
    );
    let split: Vec<_> = per_client
        .iter()
        .filter(|(_, names)| names.len() > 1)
        .collect();
    assert!(
        split.is_empty(),
        "{what}: clients reached more than one backend: {split:?}"
    );
    for family in [true, false] {
        let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
        for (client, names) in &per_client {
            if client.is_ipv4() == family {
                *per_backend.entry(names.iter().next().unwrap()).or_default() += 1;
            }
        }
        assert_eq!(
            per_backend.len(),
            3,
            "{what}: not every backend got clients (v4={family}): {per_backend:?}"
        );
    }
    // The servers saw the real client addresses (no source NAT), and the data path did
    // the work (not the kernel's routing: the VIP is on no balancer interface).
    for s in &servers {
        assert!(
            s.peers().iter().all(|p| per_client.contains_key(p)),
            "{what}: {} saw a foreign source",
            s.name()
        );
    }
    let web4 = dp.service_stats(plan.services[0].info.id)?;
    assert_eq!(
        web4.new_clients, CLIENTS as u64,
        "{what}: new clients counted"
    );
    assert!(
        web4.packets >= (CLIENTS * CONNECTIONS_PER_CLIENT * 3) as u64,
        "{what}: packets {}",
        web4.packets
    );
    if forwarding == Forwarding::Nat {
        assert!(
            web4.reply_packets > 0,
            "{what}: replies not rewritten by the data path"
        );
    }
    drop(servers);
    Ok(())
}

#[test]
fn nat_native() {
    run_scenario(Forwarding::Nat, XdpMode::Native).unwrap();
}

#[test]
fn nat_skb() {
    run_scenario(Forwarding::Nat, XdpMode::Skb).unwrap();
}

#[test]
fn dsr_native() {
    run_scenario(Forwarding::Dsr, XdpMode::Native).unwrap();
}

#[test]
fn dsr_skb() {
    run_scenario(Forwarding::Dsr, XdpMode::Skb).unwrap();
}
