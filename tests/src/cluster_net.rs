//! The cluster test network: clients behind a router that spreads the VIP over N
//! balancer nodes by ECMP, the nodes and the backends on one shared L2 segment, and
//! backends that answer clients directly through the router (direct server return).
//!
//! This module owns that layout and its addressing plan, builds it in fresh namespaces
//! ([`ClusterNet::build`]), and changes it the way the cluster tests need: a node's
//! nexthop removed or added, a node's links killed, a node added. Dropping the
//! [`ClusterNet`] deletes every namespace (and so every link).
//!
//! ```text
//!  client ns            router ns                 node-i ns               lan ns     backend-j ns
//!  eth0 ─────────── to-client                                                           
//!  198.18.0.2/24     198.18.0.1/24                                                      
//!  (+ .10 … extra)   to-node<i> ──────────────── to-router                              
//!                    198.18.(20+i).1/24          198.18.(20+i).2/24                     
//!                    VIP/32 → multipath:         to-lan ─────────── n<i> ┐             
//!                      nexthop via 198.18.2x.2   198.18.50.i/24          │             
//!                    to-lan ──────────────────────────────────── rt ─── br0 ── b<j> ─── eth0
//!                    198.18.50.254/24                                                 198.18.50.(100+j)/24
//!                                                                                     VIP on lo
//! ```
//!
//! - IPv6 alongside: `fd00:5118::/64` (clients), `fd00:5118:2i::/64` (router–node i),
//!   `fd00:5118:50::/64` (the LAN); hosts as in IPv4 (the decimal host number written
//!   as a hex group, e.g. backend 1 is `fd00:5118:50::101`, the router `::254`).
//! - The router hashes flows over the nexthops by five-tuple
//!   (`fib_multipath_hash_policy = 1`, IPv4 and IPv6), so one client's connections spread
//!   over the nodes by source port.
//! - The VIP ([`VIP_V4`], [`VIP_V6`]) is on every backend's `lo` (`arp_ignore = 1`,
//!   `arp_announce = 2`): a node forwards a client's packet to its backend by MAC over
//!   the LAN (stickylb's DSR mode) and the backend answers the client through the router
//!   (its default route). No node holds the VIP.
//! - Nodes reach each other (cluster replication) and the backends (health checks) on
//!   the LAN: node i's peer address is `198.18.50.i:`[`PEER_PORT`].
//! - `rp_filter` is off everywhere (replies from the VIP arrive at the router from the
//!   LAN, requests for it leave towards the nodes).
//!
//! For the agent-level cluster tests (tests/tests/cluster.rs) it also owns a cluster
//! CA ([`Pki`], rcgen), each node's configuration ([`node_config`]: one DSR service on
//! the VIP over the chosen backends, with or without `[cluster]`), and a round of client
//! connections recording which backend answered each client ([`ClusterNet::round`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// The VIP clients connect to (routed to the nodes by ECMP).
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 100);
/// The IPv6 VIP (`fd00:5118:100::100`).
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5118, 0x100, 0, 0, 0, 0, 0x100);
/// Port nodes listen on for their peers.
pub const PEER_PORT: u16 = 7946;
/// Most nodes (node i uses 198.18.(20+i).0/24 and LAN host i).
pub const MAX_NODES: usize = 9;
/// Most backends (LAN hosts 101 … 199).
pub const MAX_BACKENDS: usize = 99;
/// Most extra client addresses (198.18.0.10 …).
pub const MAX_CLIENTS: usize = 200;

const LINK_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Interface names.
pub const CLIENT_IF: &str = "eth0";
pub const BACKEND_IF: &str = "eth0";
pub const NODE_ROUTER_IF: &str = "to-router";
pub const NODE_LAN_IF: &str = "to-lan";
pub const ROUTER_CLIENT_IF: &str = "to-client";
pub const ROUTER_LAN_IF: &str = "to-lan";
const BRIDGE: &str = "br0";

/// What to build.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Balancer nodes, all in the VIP's nexthops (1..=[`MAX_NODES`]); default 3.
    pub nodes: usize,
    /// Backends on the LAN (1..=[`MAX_BACKENDS`]); default 3.
    pub backends: usize,
    /// Extra client addresses (0..=[`MAX_CLIENTS`]); default 100.
    pub clients: usize,
    /// Prepare every veth for native-mode XDP (`ethtool -K <if> tx off gro on`).
    pub native_xdp: bool,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            nodes: 3,
            backends: 3,
            clients: 100,
            native_xdp: false,
        }
    }
}

/// One balancer node.
#[derive(Debug)]
pub struct Node {
    /// 1-based.
    pub index: usize,
    pub name: String,
    pub ns: Netns,
    /// Its address on the router link (the router's nexthop for the VIP).
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The router's address on that link (the node's default gateway).
    pub router_v4: Ipv4Addr,
    pub router_v6: Ipv6Addr,
    /// Its address on the LAN (peers, health checks).
    pub lan_v4: Ipv4Addr,
    pub lan_v6: Ipv6Addr,
    /// The router's interface towards it.
    pub router_if: String,
}

impl Node {
    /// Where its peers reach it.
    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::new(self.lan_v4.into(), PEER_PORT)
    }
}

/// One backend.
#[derive(Debug)]
pub struct Backend {
    /// 1-based.
    pub index: usize,
    pub name: String,
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// The whole network; dropping it deletes every namespace.
#[derive(Debug)]
pub struct ClusterNet {
    opts: ClusterOpts,
    // Drop order: nodes, backends, lan, router, client.
    nodes: Vec<Node>,
    backends: Vec<Backend>,
    lan: Netns,
    router: Netns,
    client: Netns,
    /// Nodes (1-based) currently in the VIP's nexthops.
    nexthops: Vec<usize>,
    client_v4: Vec<Ipv4Addr>,
    client_v6: Vec<Ipv6Addr>,
}

/// `fd00:5118:<group>::<host>` with both numbers written as decimal-looking hex.
fn v6(group: usize, host: usize) -> Ipv6Addr {
    let hex = |n: usize| u16::from_str_radix(&n.to_string(), 16).expect("decimal as hex");
    Ipv6Addr::new(0xfd00, 0x5118, hex(group), 0, 0, 0, 0, hex(host))
}

fn node_v4(i: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (20 + i) as u8, host)
}

const LAN_NET: usize = 50;
const ROUTER_LAN_HOST: usize = 254;

fn lan_v4(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, LAN_NET as u8, host as u8)
}

const BASE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
];

const FORWARDING: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv6.conf.default.forwarding", "1"),
];

fn tune_xdp(ns: &Netns, ifname: &str) -> Result<()> {
    ns.exec(&["ethtool", "-K", ifname, "tx", "off", "gro", "on"])?;
    Ok(())
}

impl ClusterNet {
    /// Builds the network described by `opts`; on error everything made so far goes.
    pub fn build(opts: ClusterOpts) -> Result<ClusterNet> {
        if opts.nodes == 0 || opts.nodes > MAX_NODES {
            bail!("nodes must be in 1..={MAX_NODES}, got {}", opts.nodes);
        }
        if opts.backends == 0 || opts.backends > MAX_BACKENDS {
            bail!(
                "backends must be in 1..={MAX_BACKENDS}, got {}",
                opts.backends
            );
        }
        if opts.clients > MAX_CLIENTS {
            bail!("clients must be in 0..={MAX_CLIENTS}, got {}", opts.clients);
        }
        let client = Netns::new("ccli")?;
        let router = Netns::new("crt")?;
        let lan = Netns::new("clan")?;
        client.sysctls(BASE_SYSCTLS)?;
        let mut rs = BASE_SYSCTLS.to_vec();
        rs.extend_from_slice(FORWARDING);
        rs.extend_from_slice(&[
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
        ]);
        router.sysctls(&rs).context("router sysctls")?;
        lan.sysctls(BASE_SYSCTLS)?;
        lan.ip_batch(&[
            format!("link add {BRIDGE} type bridge"),
            format!("link set {BRIDGE} up"),
        ])
        .context("the LAN bridge")?;

        // Client link.
        router
            .ip_batch(&[
                format!(
                    "link add {ROUTER_CLIENT_IF} type veth peer name {CLIENT_IF} netns {}",
                    client.name()
                ),
                "addr add 198.18.0.1/24 dev to-client".to_string(),
                format!("addr add {}/64 dev {ROUTER_CLIENT_IF} nodad", v6(0, 1)),
                format!("link set {ROUTER_CLIENT_IF} up"),
                // The router's port on the LAN.
                format!(
                    "link add {ROUTER_LAN_IF} type veth peer name rt netns {}",
                    lan.name()
                ),
                format!(
                    "addr add {}/24 dev {ROUTER_LAN_IF}",
                    lan_v4(ROUTER_LAN_HOST)
                ),
                format!(
                    "addr add {}/64 dev {ROUTER_LAN_IF} nodad",
                    v6(LAN_NET, ROUTER_LAN_HOST)
                ),
                format!("link set {ROUTER_LAN_IF} up"),
            ])
            .context("router links")?;
        lan.ip_batch(&[
            format!("link set rt master {BRIDGE}"),
            "link set rt up".into(),
        ])?;
        let client_v4: Vec<Ipv4Addr> = (0..opts.clients)
            .map(|k| Ipv4Addr::new(198, 18, 0, (10 + k) as u8))
            .collect();
        let client_v6: Vec<Ipv6Addr> = (0..opts.clients)
            .map(|k| Ipv6Addr::new(0xfd00, 0x5118, 0, 0, 0, 0, 0xa, (10 + k) as u16))
            .collect();
        let mut cmds = vec![
            format!("addr add 198.18.0.2/24 dev {CLIENT_IF}"),
            format!("addr add {}/64 dev {CLIENT_IF} nodad", v6(0, 2)),
        ];
        cmds.extend(
            client_v4
                .iter()
                .map(|a| format!("addr add {a}/24 dev {CLIENT_IF}")),
        );
        cmds.extend(
            client_v6
                .iter()
                .map(|a| format!("addr add {a}/64 dev {CLIENT_IF} nodad")),
        );
        cmds.push(format!("link set {CLIENT_IF} up"));
        client.ip_batch(&cmds).context("client addresses")?;
        client.wait_links_up(&[CLIENT_IF], LINK_UP_TIMEOUT)?;
        client
            .ip_batch(&[
                format!("route add default via 198.18.0.1 dev {CLIENT_IF}"),
                format!("route add ::/0 via {} dev {CLIENT_IF}", v6(0, 1)),
            ])
            .context("client routes")?;

        let mut net = ClusterNet {
            opts: opts.clone(),
            nodes: Vec::new(),
            backends: Vec::new(),
            lan,
            router,
            client,
            nexthops: Vec::new(),
            client_v4,
            client_v6,
        };
        for j in 1..=opts.backends {
            net.add_backend(j)?;
        }
        for _ in 0..opts.nodes {
            net.add_node()?;
        }
        net.nexthops = (1..=opts.nodes).collect();
        net.write_route()?;
        net.wait_lan_forwarding()?;
        if opts.native_xdp {
            tune_xdp(&net.client, CLIENT_IF)?;
            tune_xdp(&net.router, ROUTER_CLIENT_IF)?;
            tune_xdp(&net.router, ROUTER_LAN_IF)?;
        }
        log::info!(
            "built cluster net: client={} router={} lan={} nodes={:?} backends={:?}",
            net.client.name(),
            net.router.name(),
            net.lan.name(),
            net.nodes.iter().map(|n| n.ns.name()).collect::<Vec<_>>(),
            net.backends.iter().map(|b| b.ns.name()).collect::<Vec<_>>()
        );
        Ok(net)
    }

    fn add_backend(&mut self, j: usize) -> Result<()> {
        let ns = Netns::new(&format!("cbe{j}"))?;
        ns.sysctls(BASE_SYSCTLS)?;
        let port = format!("b{j}");
        let (a4, a6) = (lan_v4(100 + j), v6(LAN_NET, 100 + j));
        self.lan.ip_batch(&[
            format!(
                "link add {port} type veth peer name {BACKEND_IF} netns {}",
                ns.name()
            ),
            format!("link set {port} master {BRIDGE}"),
            format!("link set {port} up"),
        ])?;
        ns.ip_batch(&[
            format!("addr add {a4}/24 dev {BACKEND_IF}"),
            format!("addr add {a6}/64 dev {BACKEND_IF} nodad"),
            format!("link set {BACKEND_IF} up"),
            format!("addr add {VIP_V4}/32 dev lo"),
            format!("addr add {VIP_V6}/128 dev lo nodad"),
        ])
        .with_context(|| format!("backend-{j} addresses"))?;
        ns.wait_links_up(&[BACKEND_IF], LINK_UP_TIMEOUT)?;
        ns.ip_batch(&[
            format!(
                "route add default via {} dev {BACKEND_IF}",
                lan_v4(ROUTER_LAN_HOST)
            ),
            format!(
                "route add ::/0 via {} dev {BACKEND_IF}",
                v6(LAN_NET, ROUTER_LAN_HOST)
            ),
        ])
        .with_context(|| format!("backend-{j} routes"))?;
        let ai = format!("net.ipv4.conf.{BACKEND_IF}.arp_ignore");
        let aa = format!("net.ipv4.conf.{BACKEND_IF}.arp_announce");
        ns.sysctls(&[
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            (&ai, "1"),
            (&aa, "2"),
        ])?;
        if self.opts.native_xdp {
            tune_xdp(&ns, BACKEND_IF)?;
            tune_xdp(&self.lan, &port)?;
        }
        self.backends.push(Backend {
            index: j,
            name: format!("backend-{j}"),
            ns,
            v4: a4,
            v6: a6,
        });
        Ok(())
    }

    /// Adds a node (the next index) with its router link and LAN port; it is *not* in
    /// the VIP's nexthops until [`ClusterNet::add_nexthop`]. Returns its index.
    pub fn add_node(&mut self) -> Result<usize> {
        let i = self.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
        if i > MAX_NODES {
            bail!("at most {MAX_NODES} nodes");
        }
        let ns = Netns::new(&format!("cn{i}"))?;
        let mut s = BASE_SYSCTLS.to_vec();
        s.extend_from_slice(FORWARDING);
        ns.sysctls(&s)?;
        let router_if = format!("to-node{i}");
        let node = Node {
            index: i,
            name: format!("node{i}"),
            v4: node_v4(i, 2),
            v6: v6(20 + i, 2),
            router_v4: node_v4(i, 1),
            router_v6: v6(20 + i, 1),
            lan_v4: lan_v4(i),
            lan_v6: v6(LAN_NET, i),
            router_if: router_if.clone(),
            ns,
        };
        self.link_node(&node)?;
        self.nodes.push(node);
        self.wait_lan_forwarding()?;
        Ok(i)
    }

    /// Creates node `n`'s router link and LAN port with its addresses and routes.
    fn link_node(&self, n: &Node) -> Result<()> {
        let i = n.index;
        let port = format!("n{i}");
        self.router
            .ip_batch(&[
                format!(
                    "link add {} type veth peer name {NODE_ROUTER_IF} netns {}",
                    n.router_if,
                    n.ns.name()
                ),
                format!("addr add {}/24 dev {}", n.router_v4, n.router_if),
                format!("addr add {}/64 dev {} nodad", n.router_v6, n.router_if),
                format!("link set {} up", n.router_if),
            ])
            .with_context(|| format!("router link to node{i}"))?;
        self.lan.ip_batch(&[
            format!(
                "link add {port} type veth peer name {NODE_LAN_IF} netns {}",
                n.ns.name()
            ),
            format!("link set {port} master {BRIDGE}"),
            format!("link set {port} up"),
        ])?;
        n.ns.ip_batch(&[
            format!("addr add {}/24 dev {NODE_ROUTER_IF}", n.v4),
            format!("addr add {}/64 dev {NODE_ROUTER_IF} nodad", n.v6),
            format!("link set {NODE_ROUTER_IF} up"),
            format!("addr add {}/24 dev {NODE_LAN_IF}", n.lan_v4),
            format!("addr add {}/64 dev {NODE_LAN_IF} nodad", n.lan_v6),
            format!("link set {NODE_LAN_IF} up"),
        ])
        .with_context(|| format!("node{i} addresses"))?;
        n.ns.wait_links_up(&[NODE_ROUTER_IF, NODE_LAN_IF], LINK_UP_TIMEOUT)?;
        self.router
            .wait_links_up(&[&n.router_if], LINK_UP_TIMEOUT)?;
        n.ns.ip_batch(&[
            format!("route add default via {} dev {NODE_ROUTER_IF}", n.router_v4),
            format!("route add ::/0 via {} dev {NODE_ROUTER_IF}", n.router_v6),
        ])
        .with_context(|| format!("node{i} routes"))?;
        let rp = format!("net.ipv4.conf.{}.rp_filter", n.router_if);
        self.router.sysctl(&rp, "0")?;
        if self.opts.native_xdp {
            tune_xdp(&n.ns, NODE_ROUTER_IF)?;
            tune_xdp(&n.ns, NODE_LAN_IF)?;
            tune_xdp(&self.router, &n.router_if)?;
            tune_xdp(&self.lan, &port)?;
        }
        Ok(())
    }

    /// Waits until every port of the LAN bridge forwards. A bridge port is enabled when
    /// the kernel's link watcher sees its carrier, up to a second after the link came up;
    /// a frame sent before (the first ARP of a backend, say) is lost, which delays that
    /// connection past TCP's first retransmission, and a retransmission may take another
    /// ECMP path (the client's socket picks a new flow hash on timeout).
    pub fn wait_lan_forwarding(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + LINK_UP_TIMEOUT;
        loop {
            let out = self.lan.exec(&["bridge", "link", "show"])?;
            let ready = out
                .lines()
                .filter(|l| !l.trim().is_empty())
                .all(|l| l.contains("state forwarding") && !l.contains("NO-CARRIER"));
            if ready {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!("LAN bridge ports not forwarding after {LINK_UP_TIMEOUT:?}:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes the router's VIP routes from the current nexthop set (none: no route).
    fn write_route(&self) -> Result<()> {
        let mut cmds = Vec::new();
        for (vip, v6) in [(IpAddr::V4(VIP_V4), false), (IpAddr::V6(VIP_V6), true)] {
            let len = if v6 { 128 } else { 32 };
            let mut hops = String::new();
            for &i in &self.nexthops {
                let n = self.node(i);
                let via: IpAddr = if v6 { n.v6.into() } else { n.v4.into() };
                hops.push_str(&format!(" nexthop via {via} dev {}", n.router_if));
            }
            if hops.is_empty() {
                // Ignore "no such route" when it is already gone.
                let _ = self.router.ip(&[
                    if v6 { "-6" } else { "-4" },
                    "route",
                    "del",
                    &format!("{vip}/{len}"),
                ]);
            } else {
                cmds.push(format!("route replace {vip}/{len}{hops}"));
            }
        }
        self.router.ip_batch(&cmds).context("the VIP routes")?;
        Ok(())
    }

    /// Puts node `i` (1-based) in the VIP's nexthops.
    pub fn add_nexthop(&mut self, i: usize) -> Result<()> {
        self.node(i);
        if !self.nexthops.contains(&i) {
            self.nexthops.push(i);
            self.nexthops.sort_unstable();
        }
        self.write_route()
    }

    /// Removes the static VIP routes and forgets the nexthops: a routing daemon on the
    /// router owns the VIP's route from then on (issue 13, `crate::bgp`).
    pub fn clear_static_routes(&mut self) -> Result<()> {
        self.nexthops.clear();
        self.write_route()
    }

    /// Takes node `i` out of the VIP's nexthops (its traffic moves to the others).
    pub fn remove_nexthop(&mut self, i: usize) -> Result<()> {
        self.nexthops.retain(|&n| n != i);
        self.write_route()
    }

    /// Deletes both of node `i`'s links (as a node that lost power looks to its
    /// neighbours). The kernel drops a multipath route whose nexthop device goes, so the
    /// route is written again over the remaining nodes, as a routing daemon would.
    pub fn kill_links(&mut self, i: usize) -> Result<()> {
        let n = self.node(i);
        n.ns.ip(&["link", "del", NODE_ROUTER_IF])
            .with_context(|| format!("deleting node{i}'s router link"))?;
        n.ns.ip(&["link", "del", NODE_LAN_IF])
            .with_context(|| format!("deleting node{i}'s LAN link"))?;
        self.nexthops.retain(|&k| k != i);
        self.write_route()
    }

    /// Re-creates node `i`'s links after [`ClusterNet::kill_links`] (not its nexthop).
    pub fn restore_links(&self, i: usize) -> Result<()> {
        self.link_node(self.node(i))?;
        self.wait_lan_forwarding()
    }

    /// The nodes currently in the VIP's nexthops, as the router's FIB has them (IPv4).
    pub fn fib_nexthops(&self) -> Result<Vec<Ipv4Addr>> {
        let out = self
            .router
            .ip(&["-4", "route", "show", &format!("{VIP_V4}/32")])?;
        let mut hops: Vec<Ipv4Addr> = out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect();
        hops.sort_unstable();
        Ok(hops)
    }

    pub fn opts(&self) -> &ClusterOpts {
        &self.opts
    }
    pub fn client(&self) -> &Netns {
        &self.client
    }
    pub fn router(&self) -> &Netns {
        &self.router
    }
    pub fn lan(&self) -> &Netns {
        &self.lan
    }
    /// All nodes, in index order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// Node by 1-based index.
    pub fn node(&self, i: usize) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.index == i)
            .unwrap_or_else(|| panic!("no node{i}"))
    }
    /// The nodes in the VIP's nexthops (1-based indexes).
    pub fn nexthops(&self) -> &[usize] {
        &self.nexthops
    }
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }
    /// Backend by 1-based index.
    pub fn backend(&self, j: usize) -> &Backend {
        &self.backends[j - 1]
    }
    /// The extra client addresses (198.18.0.10 …).
    pub fn client_v4s(&self) -> &[Ipv4Addr] {
        &self.client_v4
    }
    pub fn client_v6s(&self) -> &[Ipv6Addr] {
        &self.client_v6
    }
    /// Every namespace's name (client, router, LAN, nodes, backends).
    pub fn ns_names(&self) -> Vec<String> {
        let mut v = vec![
            self.client.name().to_owned(),
            self.router.name().to_owned(),
            self.lan.name().to_owned(),
        ];
        v.extend(self.nodes.iter().map(|n| n.ns.name().to_owned()));
        v.extend(self.backends.iter().map(|b| b.ns.name().to_owned()));
        v
    }
}

/// A cluster CA and one certificate per node (DNS name = node name), as PEM files.
pub struct Pki {
    pub dir: std::path::PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new() -> Result<Pki> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "stickylb test cluster CA");
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = p.self_signed(&ca_key)?;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "stickylb-pki-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        Ok(Pki { dir, ca, ca_key })
    }

    pub fn ca_path(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }

    /// Certificate and key files for `name` (made on first use).
    pub fn issue(&self, name: &str) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}.key"));
        if cert.exists() {
            return Ok((cert, key));
        }
        let kp = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![name.to_string()])?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let c = p.signed_by(&kp, &self.ca, &self.ca_key)?;
        std::fs::write(&cert, c.pem())?;
        std::fs::write(&key, kp.serialize_pem())?;
        Ok((cert, key))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The service every node of a cluster test balances: the IPv4 VIP on [`SERVICE_PORT`],
/// DSR, over `backends` (1-based backend index, weight).
#[derive(Clone, Debug)]
pub struct ServiceSetup {
    /// `"maglev"` or `"roundrobin"`.
    pub scheduler: &'static str,
    pub backends: Vec<(usize, u32)>,
}

/// The port of the test service (DSR: the backends listen on it too).
pub const SERVICE_PORT: u16 = 80;

/// Node `i`'s configuration: the service, and with `cluster` (the CA and the node
/// indexes of the whole cluster) a `[cluster]` naming every other node as a peer.
pub fn node_config(
    net: &ClusterNet,
    i: usize,
    service: &ServiceSetup,
    cluster: Option<(&Pki, &[usize])>,
) -> Result<String> {
    use std::fmt::Write as _;
    let mut t = format!(
        "[[service]]\nname = \"web\"\nlisten = \"{VIP_V4}:{SERVICE_PORT}\"\nscheduler = \"{}\"\n\
         forwarding = \"dsr\"\nstick_table = {{ size = 20000, expire = \"10m\" }}\n",
        service.scheduler
    );
    for (j, w) in &service.backends {
        let _ = write!(
            t,
            "[[service.backend]]\naddress = \"{}:{SERVICE_PORT}\"\nweight = {w}\n",
            net.backend(*j).v4
        );
    }
    if let Some((pki, members)) = cluster {
        let me = net.node(i);
        let (cert, key) = pki.issue(&me.name)?;
        let peers: Vec<String> = members
            .iter()
            .filter(|&&k| k != i)
            .map(|&k| {
                format!(
                    "{{ name = \"node{k}\", address = \"{}:{PEER_PORT}\" }}",
                    lan_v4(k)
                )
            })
            .collect();
        let _ = write!(
            t,
            "\n[cluster]\nnode = \"{}\"\nlisten = \"{}\"\npeers = [ {} ]\nca = \"{}\"\ncert = \"{}\"\n\
             key = \"{}\"\nheartbeat = \"500ms\"\npeer_timeout = \"3s\"\nsync_timeout = \"3s\"\n",
            me.name,
            me.peer_addr(),
            peers.join(", "),
            pki.ca_path().display(),
            cert.display(),
            key.display()
        );
    }
    Ok(t)
}

/// Per client address, the names of the backends that answered it.
pub type Answers = std::collections::BTreeMap<Ipv4Addr, std::collections::BTreeSet<String>>;

impl ClusterNet {
    /// `connections` TCP connections from each of `clients` (extra client addresses) to
    /// the VIP, client by client; the backend names that answered each, and the failures.
    pub fn round(&self, clients: usize, connections: usize) -> Result<(Answers, Vec<String>)> {
        let vip = SocketAddr::new(VIP_V4.into(), SERVICE_PORT);
        let mut pairs = Vec::new();
        for _ in 0..connections {
            for c in self.client_v4.iter().take(clients) {
                pairs.push((IpAddr::from(*c), vip));
            }
        }
        let answers = crate::tcp_fetch_all(&self.client, &pairs, Duration::from_secs(5))?;
        let mut by =
            std::collections::BTreeMap::<Ipv4Addr, std::collections::BTreeSet<String>>::new();
        let mut failed = Vec::new();
        for ((src, _), a) in pairs.iter().zip(answers) {
            let IpAddr::V4(src) = src else { continue };
            match a {
                Ok(name) => {
                    by.entry(*src).or_default().insert(name);
                }
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        Ok((by, failed))
    }
}
