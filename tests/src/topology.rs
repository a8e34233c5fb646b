//! The end-to-end test network: one client, one balancer, N backends.
//!
//! This module owns the layout and addressing plan of the test network and
//! builds it from scratch in fresh namespaces ([`Topology::build`]); dropping
//! the [`Topology`] deletes every namespace, which also destroys all veths.
//!
//! ```text
//!   client ns                 balancer ns                    backend-i ns
//!  eth0 ──────────────── to-client          to-be<i> ──────────────── eth0
//!  198.18.0.2/24           198.18.0.1/24    198.18.(10+i).1/24   198.18.(10+i).2/24
//!  198.18.0.10.. (extra)   fd00:5118::1/64  fd00:5118:(10+i)::1  fd00:5118:(10+i)::2
//!  fd00:5118::2/64                                               (VIP on lo if DSR)
//!  fd00:5118::a:a.. (extra)
//! ```
//!
//! * Addresses come from the RFC 2544 range 198.18.0.0/15 and the ULA
//!   fd00:5118::/32; nothing leaves the namespaces (no namespace has a link
//!   to the host). The `(10+i)` in IPv6 addresses is the decimal number
//!   written into a hex group, e.g. backend 1 is `fd00:5118:11::2`.
//! * Extra client source `k` (0-based) is `198.18.0.(10+k)` and
//!   `fd00:5118::a:(10+k)` (that last group being the hex value 10+k).
//! * The client and every backend route by default through the balancer,
//!   which forwards IPv4 and IPv6 with `rp_filter` off.
//! * The VIP ([`VIP_V4`], [`VIP_V6`]) is assigned nowhere unless
//!   [`TopologyOpts::vip_on_backend_lo`] puts it on each backend's `lo`
//!   (for direct server return), or [`TopologyOpts::vip_on_lb`] on the
//!   balancer (`lo` as an HAProxy setup has it, or the client-facing NIC as
//!   keepalived puts it). The client reaches it via its default route.
//! * Interface names are fixed (`eth0`, `to-client`, `to-be<i>`); they are
//!   only unique per namespace, since no interface is ever in the host's
//!   namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// The virtual IPv4 address clients connect to.
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 100);
/// The virtual IPv6 address clients connect to (`fd00:5118:100::100`).
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5118, 0x100, 0, 0, 0, 0, 0x100);

/// Balancer address on the client link (the client's gateway).
pub const LB_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Balancer IPv6 address on the client link (the client's gateway).
pub const LB_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5118, 0, 0, 0, 0, 0, 1);
/// The client's primary IPv4 address.
pub const CLIENT_PRIMARY_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The client's primary IPv6 address.
pub const CLIENT_PRIMARY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5118, 0, 0, 0, 0, 0, 2);

/// Interface name of the client's veth end (in the client namespace).
pub const CLIENT_IF: &str = "eth0";
/// Interface name of a backend's veth end (in that backend's namespace).
pub const BACKEND_IF: &str = "eth0";
/// Balancer-side interface facing the client.
pub const LB_CLIENT_IF: &str = "to-client";

/// Most backends: backend i uses 198.18.(10+i).0/24, which must stay below
/// the VIP's 198.18.100.0/24.
pub const MAX_BACKENDS: usize = 80;
/// Most extra client source addresses (198.18.0.10 ..= 198.18.0.209).
pub const MAX_CLIENTS: usize = 200;

const LINK_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the balancer holds the VIP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VipPlacement {
    /// Not assigned: the balancer only routes it (the data path takes it first).
    #[default]
    Nowhere,
    /// On the balancer's `lo` (HAProxy needs it there to bind).
    Lo,
    /// On the client-facing interface (keepalived's `virtual_ipaddress`).
    ClientNic,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct TopologyOpts {
    /// Number of backends (1..=[`MAX_BACKENDS`]); default 3.
    pub backends: usize,
    /// Number of extra client source addresses (0..=[`MAX_CLIENTS`]); default 10.
    pub clients: usize,
    /// Put the VIPs on each backend's `lo` (v4 /32, v6 /128) with
    /// `arp_ignore=1` / `arp_announce=2`, for direct server return.
    pub vip_on_backend_lo: bool,
    /// Prepare every veth end for native-mode XDP: `ethtool -K <if> tx off gro on`
    /// (complete checksums at the sender; GRO so redirected frames are accepted).
    pub native_xdp: bool,
    /// Where the balancer holds the VIPs (v4 /32, v6 /128); default nowhere.
    pub vip_on_lb: VipPlacement,
}

impl Default for TopologyOpts {
    fn default() -> Self {
        TopologyOpts {
            backends: 3,
            clients: 10,
            vip_on_backend_lo: false,
            native_xdp: false,
            vip_on_lb: VipPlacement::Nowhere,
        }
    }
}

/// One backend host of the topology.
#[derive(Debug)]
pub struct Backend {
    /// 1-based index.
    pub index: usize,
    /// Logical name, `backend-<index>`.
    pub name: String,
    /// The backend's namespace.
    pub ns: Netns,
    /// Its interface towards the balancer (in `ns`): [`BACKEND_IF`].
    pub ifname: String,
    /// The balancer's interface towards it (in the balancer namespace):
    /// `to-be<index>`.
    pub lb_ifname: String,
    /// Its real IPv4 address, 198.18.(10+i).2.
    pub v4: Ipv4Addr,
    /// Its real IPv6 address, fd00:5118:(10+i)::2.
    pub v6: Ipv6Addr,
    /// The balancer's IPv4 address on this link (its gateway), 198.18.(10+i).1.
    pub lb_v4: Ipv4Addr,
    /// The balancer's IPv6 address on this link (its gateway), fd00:5118:(10+i)::1.
    pub lb_v6: Ipv6Addr,
}

impl Backend {
    /// The backend's real address of the same family as `like`.
    pub fn addr_like(&self, like: IpAddr) -> IpAddr {
        match like {
            IpAddr::V4(_) => self.v4.into(),
            IpAddr::V6(_) => self.v6.into(),
        }
    }
}

/// The whole test network; dropping it deletes every namespace.
#[derive(Debug)]
pub struct Topology {
    opts: TopologyOpts,
    // Field order is drop order: backends, then client, then balancer.
    backends: Vec<Backend>,
    client: Netns,
    lb: Netns,
    client_v4: Vec<Ipv4Addr>,
    client_v6: Vec<Ipv6Addr>,
}

fn backend_v4(i: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (10 + i) as u8, host)
}

fn backend_v6(i: usize, host: u16) -> Ipv6Addr {
    // The decimal number 10+i written as a hex group, as in the addressing plan.
    let group = u16::from_str_radix(&(10 + i).to_string(), 16).expect("10+i is a valid hex group");
    Ipv6Addr::new(0xfd00, 0x5118, group, 0, 0, 0, 0, host)
}

fn client_extra_v4(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, (10 + k) as u8)
}

fn client_extra_v6(k: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x5118, 0, 0, 0, 0, 0xa, (10 + k) as u16)
}

/// Sysctls every namespace gets before any interface exists, so that the
/// new interfaces inherit them from `default`.
const BASE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
];

impl Topology {
    /// Builds the topology described by `opts`. On error everything created
    /// so far is removed again.
    pub fn build(opts: TopologyOpts) -> Result<Topology> {
        if opts.backends == 0 || opts.backends > MAX_BACKENDS {
            bail!(
                "backends must be in 1..={MAX_BACKENDS}, got {}",
                opts.backends
            );
        }
        if opts.clients > MAX_CLIENTS {
            bail!("clients must be in 0..={MAX_CLIENTS}, got {}", opts.clients);
        }

        let client = Netns::new("cli")?;
        let lb = Netns::new("lb")?;
        let mut backend_ns = Vec::with_capacity(opts.backends);
        for i in 1..=opts.backends {
            backend_ns.push(Netns::new(&format!("be{i}"))?);
        }

        let mut lb_sysctls = BASE_SYSCTLS.to_vec();
        lb_sysctls.extend_from_slice(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.default.forwarding", "1"),
        ]);
        lb.sysctls(&lb_sysctls).context("balancer sysctls")?;
        client.sysctls(BASE_SYSCTLS).context("client sysctls")?;
        for ns in &backend_ns {
            ns.sysctls(BASE_SYSCTLS).context("backend sysctls")?;
        }

        // Veth pairs are created inside the balancer namespace with the peer
        // directly in the other namespace: nothing ever touches the host's.
        let mut lb_cmds = vec![
            format!(
                "link add {LB_CLIENT_IF} type veth peer name {CLIENT_IF} netns {}",
                client.name()
            ),
            format!("addr add {LB_CLIENT_V4}/24 dev {LB_CLIENT_IF}"),
            format!("addr add {LB_CLIENT_V6}/64 dev {LB_CLIENT_IF} nodad"),
            format!("link set {LB_CLIENT_IF} up"),
        ];
        for (idx, ns) in backend_ns.iter().enumerate() {
            let i = idx + 1;
            let lb_if = format!("to-be{i}");
            lb_cmds.extend([
                format!(
                    "link add {lb_if} type veth peer name {BACKEND_IF} netns {}",
                    ns.name()
                ),
                format!("addr add {}/24 dev {lb_if}", backend_v4(i, 1)),
                format!("addr add {}/64 dev {lb_if} nodad", backend_v6(i, 1)),
                format!("link set {lb_if} up"),
            ]);
        }
        lb.ip_batch(&lb_cmds).context("balancer links")?;

        let client_v4: Vec<Ipv4Addr> = (0..opts.clients).map(client_extra_v4).collect();
        let client_v6: Vec<Ipv6Addr> = (0..opts.clients).map(client_extra_v6).collect();
        let mut cli_cmds = vec![
            format!("addr add {CLIENT_PRIMARY_V4}/24 dev {CLIENT_IF}"),
            format!("addr add {CLIENT_PRIMARY_V6}/64 dev {CLIENT_IF} nodad"),
        ];
        cli_cmds.extend(
            client_v4
                .iter()
                .map(|a| format!("addr add {a}/24 dev {CLIENT_IF}")),
        );
        cli_cmds.extend(
            client_v6
                .iter()
                .map(|a| format!("addr add {a}/64 dev {CLIENT_IF} nodad")),
        );
        cli_cmds.push(format!("link set {CLIENT_IF} up"));
        client.ip_batch(&cli_cmds).context("client addresses")?;

        for (idx, ns) in backend_ns.iter().enumerate() {
            let i = idx + 1;
            ns.ip_batch(&[
                format!("addr add {}/24 dev {BACKEND_IF}", backend_v4(i, 2)),
                format!("addr add {}/64 dev {BACKEND_IF} nodad", backend_v6(i, 2)),
                format!("link set {BACKEND_IF} up"),
            ])
            .with_context(|| format!("backend-{i} addresses"))?;
        }

        // Wait for carrier everywhere, then add the default routes.
        let mut lb_ifs = vec![LB_CLIENT_IF.to_owned()];
        lb_ifs.extend((1..=opts.backends).map(|i| format!("to-be{i}")));
        let lb_if_refs: Vec<&str> = lb_ifs.iter().map(String::as_str).collect();
        lb.wait_links_up(&lb_if_refs, LINK_UP_TIMEOUT)?;
        client.wait_links_up(&[CLIENT_IF], LINK_UP_TIMEOUT)?;
        for ns in &backend_ns {
            ns.wait_links_up(&[BACKEND_IF], LINK_UP_TIMEOUT)?;
        }

        client
            .ip_batch(&[
                format!("route add default via {LB_CLIENT_V4} dev {CLIENT_IF}"),
                format!("route add ::/0 via {LB_CLIENT_V6} dev {CLIENT_IF}"),
            ])
            .context("client routes")?;
        for (idx, ns) in backend_ns.iter().enumerate() {
            let i = idx + 1;
            ns.ip_batch(&[
                format!(
                    "route add default via {} dev {BACKEND_IF}",
                    backend_v4(i, 1)
                ),
                format!("route add ::/0 via {} dev {BACKEND_IF}", backend_v6(i, 1)),
            ])
            .with_context(|| format!("backend-{i} routes"))?;
        }

        // Per-interface rp_filter on the balancer (already inherited from
        // `default`, but be explicit as the brief asks).
        let rp: Vec<String> = lb_ifs
            .iter()
            .map(|i| format!("net.ipv4.conf.{i}.rp_filter"))
            .collect();
        let rp_settings: Vec<(&str, &str)> = rp.iter().map(|k| (k.as_str(), "0")).collect();
        lb.sysctls(&rp_settings).context("balancer rp_filter")?;

        if opts.vip_on_backend_lo {
            for ns in &backend_ns {
                ns.ip_batch(&[
                    format!("addr add {VIP_V4}/32 dev lo"),
                    format!("addr add {VIP_V6}/128 dev lo nodad"),
                ])
                .context("VIP on backend lo")?;
                let arp_ignore = format!("net.ipv4.conf.{BACKEND_IF}.arp_ignore");
                let arp_announce = format!("net.ipv4.conf.{BACKEND_IF}.arp_announce");
                ns.sysctls(&[
                    ("net.ipv4.conf.all.arp_ignore", "1"),
                    ("net.ipv4.conf.all.arp_announce", "2"),
                    (&arp_ignore, "1"),
                    (&arp_announce, "2"),
                ])
                .context("backend arp sysctls")?;
            }
        }

        let vip_dev = match opts.vip_on_lb {
            VipPlacement::Nowhere => None,
            VipPlacement::Lo => Some("lo"),
            VipPlacement::ClientNic => Some(LB_CLIENT_IF),
        };
        if let Some(dev) = vip_dev {
            lb.ip_batch(&[
                format!("addr add {VIP_V4}/32 dev {dev}"),
                format!("addr add {VIP_V6}/128 dev {dev} nodad"),
            ])
            .context("VIP on the balancer")?;
        }

        if opts.native_xdp {
            // Complete checksums at the sender (native XDP drops the "checksum to be
            // completed" state), and GRO on every end: a veth accepts XDP_REDIRECT
            // frames only when its receiving end runs NAPI (GRO or an XDP program).
            let tune = ["tx", "off", "gro", "on"];
            for ifname in &lb_ifs {
                lb.exec(&[&["ethtool", "-K", ifname][..], &tune[..]].concat())?;
            }
            client.exec(&[&["ethtool", "-K", CLIENT_IF][..], &tune[..]].concat())?;
            for ns in &backend_ns {
                ns.exec(&[&["ethtool", "-K", BACKEND_IF][..], &tune[..]].concat())?;
            }
        }

        let backends = backend_ns
            .into_iter()
            .enumerate()
            .map(|(idx, ns)| {
                let i = idx + 1;
                Backend {
                    index: i,
                    name: format!("backend-{i}"),
                    ns,
                    ifname: BACKEND_IF.to_owned(),
                    lb_ifname: format!("to-be{i}"),
                    v4: backend_v4(i, 2),
                    v6: backend_v6(i, 2),
                    lb_v4: backend_v4(i, 1),
                    lb_v6: backend_v6(i, 1),
                }
            })
            .collect();

        let topo = Topology {
            opts,
            backends,
            client,
            lb,
            client_v4,
            client_v6,
        };
        log::info!(
            "built topology: client={} lb={} backends={:?}",
            topo.client.name(),
            topo.lb.name(),
            topo.backend_ns_names()
        );
        Ok(topo)
    }

    /// Adds `n` more client source addresses (up to 60 000), from 198.19.0.0/16 (also
    /// RFC 2544): `198.19.(k / 250).(k % 250 + 1)` for k in 0..n, as /32s on the client's
    /// interface, with a route to 198.19.0.0/16 via the client on the balancer. For tests
    /// that need more clients than [`MAX_CLIENTS`] (a full stick table). Returns them.
    pub fn add_client_block(&self, n: usize) -> Result<Vec<Ipv4Addr>> {
        if n > 60_000 {
            bail!("at most 60000 extra clients, got {n}");
        }
        let addrs: Vec<Ipv4Addr> = (0..n)
            .map(|k| Ipv4Addr::new(198, 19, (k / 250) as u8, (k % 250 + 1) as u8))
            .collect();
        let cmds: Vec<String> = addrs
            .iter()
            .map(|a| format!("addr add {a}/32 dev {CLIENT_IF}"))
            .collect();
        self.client
            .ip_batch(&cmds)
            .context("client block addresses")?;
        self.lb
            .ip(&[
                "route",
                "replace",
                "198.19.0.0/16",
                "via",
                &CLIENT_PRIMARY_V4.to_string(),
                "dev",
                LB_CLIENT_IF,
            ])
            .context("balancer route to the client block")?;
        Ok(addrs)
    }

    /// Re-creates the veth pair between the balancer and backend `index` (1-based) after
    /// it was deleted (`ip link del to-be<index>` in the balancer removes both ends),
    /// with the same names, addresses and routes as [`Topology::build`] gave it.
    pub fn recreate_backend_link(&self, index: usize) -> Result<()> {
        let b = self.backend(index);
        self.lb
            .ip_batch(&[
                format!(
                    "link add {} type veth peer name {BACKEND_IF} netns {}",
                    b.lb_ifname,
                    b.ns.name()
                ),
                format!("addr add {}/24 dev {}", b.lb_v4, b.lb_ifname),
                format!("addr add {}/64 dev {} nodad", b.lb_v6, b.lb_ifname),
                format!("link set {} up", b.lb_ifname),
            ])
            .with_context(|| format!("re-creating {}", b.lb_ifname))?;
        b.ns.ip_batch(&[
            format!("addr add {}/24 dev {BACKEND_IF}", b.v4),
            format!("addr add {}/64 dev {BACKEND_IF} nodad", b.v6),
            format!("link set {BACKEND_IF} up"),
        ])
        .with_context(|| format!("backend-{index} addresses"))?;
        self.lb.wait_links_up(&[&b.lb_ifname], LINK_UP_TIMEOUT)?;
        b.ns.wait_links_up(&[BACKEND_IF], LINK_UP_TIMEOUT)?;
        b.ns.ip_batch(&[
            format!("route add default via {} dev {BACKEND_IF}", b.lb_v4),
            format!("route add ::/0 via {} dev {BACKEND_IF}", b.lb_v6),
        ])
        .with_context(|| format!("backend-{index} routes"))?;
        self.lb
            .sysctl(&format!("net.ipv4.conf.{}.rp_filter", b.lb_ifname), "0")?;
        Ok(())
    }

    /// The options this topology was built with.
    pub fn opts(&self) -> &TopologyOpts {
        &self.opts
    }

    /// The client namespace.
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The balancer namespace.
    pub fn lb(&self) -> &Netns {
        &self.lb
    }

    /// All backends, in order (`backends()[0]` is backend-1).
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Backend by 1-based index.
    pub fn backend(&self, index: usize) -> &Backend {
        &self.backends[index - 1]
    }

    /// Names of all namespaces of this topology (client, balancer, backends).
    pub fn ns_names(&self) -> Vec<String> {
        let mut v = vec![self.client.name().to_owned(), self.lb.name().to_owned()];
        v.extend(self.backend_ns_names());
        v
    }

    /// Name of the client namespace.
    pub fn client_ns_name(&self) -> &str {
        self.client.name()
    }

    /// Name of the balancer namespace.
    pub fn lb_ns_name(&self) -> &str {
        self.lb.name()
    }

    /// Names of the backend namespaces, in backend order.
    pub fn backend_ns_names(&self) -> Vec<String> {
        self.backends
            .iter()
            .map(|b| b.ns.name().to_owned())
            .collect()
    }

    /// Balancer-side interface facing the client ([`LB_CLIENT_IF`]).
    pub fn lb_client_if(&self) -> &str {
        LB_CLIENT_IF
    }

    /// Balancer-side interfaces facing each backend, in backend order.
    pub fn lb_backend_ifs(&self) -> Vec<&str> {
        self.backends.iter().map(|b| b.lb_ifname.as_str()).collect()
    }

    /// Client-side interface name ([`CLIENT_IF`]).
    pub fn client_if(&self) -> &str {
        CLIENT_IF
    }

    /// Real IPv4 addresses of the backends, in order.
    pub fn backend_v4s(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|b| b.v4).collect()
    }

    /// Real IPv6 addresses of the backends, in order.
    pub fn backend_v6s(&self) -> Vec<Ipv6Addr> {
        self.backends.iter().map(|b| b.v6).collect()
    }

    /// The extra client source addresses (IPv4), 198.18.0.10 onwards;
    /// `opts.clients` of them (the primary 198.18.0.2 is not included).
    pub fn client_v4s(&self) -> &[Ipv4Addr] {
        &self.client_v4
    }

    /// The extra client source addresses (IPv6), fd00:5118::a:a onwards.
    pub fn client_v6s(&self) -> &[Ipv6Addr] {
        &self.client_v6
    }

    /// The client's primary IPv4 address ([`CLIENT_PRIMARY_V4`]).
    pub fn client_primary_v4(&self) -> Ipv4Addr {
        CLIENT_PRIMARY_V4
    }

    /// The client's primary IPv6 address ([`CLIENT_PRIMARY_V6`]).
    pub fn client_primary_v6(&self) -> Ipv6Addr {
        CLIENT_PRIMARY_V6
    }

    /// The IPv4 VIP ([`VIP_V4`]).
    pub fn vip_v4(&self) -> Ipv4Addr {
        VIP_V4
    }

    /// The IPv6 VIP ([`VIP_V6`]).
    pub fn vip_v6(&self) -> Ipv6Addr {
        VIP_V6
    }
}
