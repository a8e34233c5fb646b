//! Services and backends as the data path will see them (input to [`crate::plan`]), the
//! health-check parameters, and the enums of the model, each value with its one name
//! ([`crate::named!`]: the config file, the control protocol, answers and messages all use
//! it).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

/// The name of an address's family, for messages: `IPv4` or `IPv6`.
pub fn family_name(ip: std::net::IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

crate::named! {
    /// Transport protocol of a service.
    pub enum Protocol {
        Tcp = "tcp",
        Udp = "udp",
    }
}

crate::named! {
    /// How new clients are assigned.
    pub enum Scheduler {
        /// Weighted round-robin (HAProxy `balance roundrobin`).
        RoundRobin = "roundrobin",
        /// Maglev consistent hashing of the client address.
        Maglev = "maglev",
    }
}

crate::named! {
    /// How packets reach the backend.
    pub enum Forwarding {
        /// Destination NAT; replies are rewritten back on their way through the balancer.
        Nat = "nat",
        /// L2 direct server return: backends hold the VIP on loopback.
        Dsr = "dsr",
        /// L3 direct server return by IP-in-IP (IPIP, IP6IP6, 4-in-6, 6-in-4): the client's
        /// packet inside an outer header to the backend, which decapsulates it and holds the
        /// VIP on loopback. Backends anywhere the balancer routes to.
        Ipip = "ipip",
        /// L3 direct server return by GUE (variant 1: IP directly in UDP) to
        /// [`EncapSpec::gue_port`].
        Gue = "gue",
    }
}

impl Forwarding {
    /// Whether the mode encapsulates (L3 DSR).
    pub fn is_encap(self) -> bool {
        matches!(self, Forwarding::Ipip | Forwarding::Gue)
    }

    /// Whether the client's packet reaches the backend unchanged (L2 or L3 DSR): the
    /// backend answers from the VIP, so its port must be the VIP's.
    pub fn is_dsr(self) -> bool {
        self != Forwarding::Nat
    }
}

/// An address prefix (`10.0.0.0/8`, `fd00::/64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;
    /// `ADDR/LEN`, host bits zero.
    fn from_str(s: &str) -> Result<Prefix, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a prefix: expected ADDRESS/LENGTH"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} in {s:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 =
            l.parse().ok().filter(|n| *n <= max).ok_or_else(|| {
                format!("{l:?} in {s:?} is not a prefix length: accepted 0..={max}")
            })?;
        let p = Prefix { addr, len };
        if p.host_bits_set() {
            return Err(format!(
                "{s:?} has host bits set: write the network address (the prefix's first address)"
            ));
        }
        Ok(p)
    }
}

impl Prefix {
    fn host_bits_set(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => {
                let v = u32::from(a);
                self.len < 32 && v & (u32::MAX >> self.len) != 0
            }
            IpAddr::V6(a) => {
                let v = u128::from(a);
                self.len < 128 && v & (u128::MAX >> self.len) != 0
            }
        }
    }
}

/// Where the outer source address of encapsulated packets comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OuterSource {
    /// The balancer's egress address towards the backend, as the FIB gives it: ICMP
    /// errors from the path come back to the balancer.
    #[default]
    Fib,
    /// The client's hash inside a prefix (per outer family; a family without one uses
    /// the FIB's address): distinct sources spread flows over the backends' receive
    /// queues (RSS), as Katran and Cilium do. ICMP errors from the path go to those
    /// addresses (route the prefix back to the balancer to receive them).
    ClientHash {
        v4: Option<Prefix>,
        v6: Option<Prefix>,
    },
}

/// Encapsulation settings of a service (modes `ipip` and `gue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapSpec {
    /// GUE destination port (the backends' `ip fou add port … gue` / `stickylb decap`).
    pub gue_port: u16,
    pub source: OuterSource,
}

impl Default for EncapSpec {
    fn default() -> Self {
        Self {
            gue_port: lb_common::DEFAULT_GUE_PORT,
            source: OuterSource::Fib,
        }
    }
}

crate::named! {
    /// Administrative / health state of a backend, as the data path will see it.
    pub enum BackendState {
        /// Takes new clients and keeps its own.
        Up = "up",
        /// Keeps its clients, takes no new ones.
        Drain = "drain",
        /// Receives nobody; its clients are re-picked.
        Down = "down",
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Backend address; port 0 = the client's destination port.
    pub addr: SocketAddr,
    /// 0..=256; 0 = no new clients (pinned clients stay).
    pub weight: u32,
    pub state: BackendState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    /// VIP and port; port 0 = every port of the VIP.
    pub vip: SocketAddr,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub forwarding: Forwarding,
    /// Outer header settings of the encapsulating modes (ignored by the others).
    pub encap: EncapSpec,
    /// Stick-table entry lifetime after the client was last seen; `None` = never.
    pub expire: Option<Duration>,
    /// Maglev table size (prime); `None` = default.
    pub maglev_size: Option<u32>,
    /// What a client sticks by: its address, or its network (`stick_on = "src/24"`).
    pub stick_on: StickOn,
    /// Which packets of an unknown client may add its stick-table entry.
    pub insert_on: InsertOn,
    /// New entries per second per CPU; 0 = no cap. Clients beyond it are served by
    /// source hash without an entry.
    pub insert_cap: u32,
    pub backends: Vec<BackendSpec>,
}

/// What a client sticks by (`stick_on`, HAProxy `stick on src[,ipmask(N)]`, IPVS
/// `-p -M MASK`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StickOn {
    /// The full source address (`"src"`).
    #[default]
    Src,
    /// The source address masked to a prefix of the VIP's family (`"src/24"`): one entry
    /// and one backend for every client of the network. Shorter than the family's full
    /// length (a full-length prefix is [`StickOn::Src`]).
    Network(u8),
}

impl StickOn {
    /// The prefix length clients are masked to (`0` = the full address), as the data path
    /// takes it ([`lb_common::ServiceInfo::stick_prefix`]).
    pub fn prefix(self) -> u8 {
        match self {
            StickOn::Src => 0,
            StickOn::Network(n) => n,
        }
    }

    /// The network `client` sticks by: the client address masked to the prefix, and
    /// that prefix's length (the family's full length for [`StickOn::Src`]).
    pub fn network(self, client: IpAddr) -> Prefix {
        match (self, client) {
            (StickOn::Src, ip) => Prefix {
                addr: ip,
                len: if ip.is_ipv4() { 32 } else { 128 },
            },
            (StickOn::Network(n), IpAddr::V4(a)) => Prefix {
                addr: IpAddr::V4(
                    (u32::from(a) & u32::MAX.checked_shl(32 - n.min(32) as u32).unwrap_or(0))
                        .into(),
                ),
                len: n.min(32),
            },
            (StickOn::Network(n), IpAddr::V6(a)) => Prefix {
                addr: IpAddr::V6(
                    (u128::from(a) & u128::MAX.checked_shl(128 - n.min(128) as u32).unwrap_or(0))
                        .into(),
                ),
                len: n.min(128),
            },
        }
    }
}

impl std::fmt::Display for StickOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StickOn::Src => f.write_str("src"),
            StickOn::Network(n) => write!(f, "src/{n}"),
        }
    }
}

crate::named! {
    /// Which packets of an unknown client add its stick-table entry.
    pub enum InsertOn {
        /// Any packet (HAProxy `stick on src`).
        Any = "any",
        /// TCP services: only a SYN. Other TCP packets of unknown clients (a spoofed ACK
        /// flood, or a connection whose entry was evicted) are served by source hash
        /// without an entry.
        Syn = "syn",
    }
}

impl ServiceSpec {
    /// A service with HAProxy-like defaults (round-robin, NAT, expire 30m, TCP).
    pub fn new(name: &str, vip: SocketAddr) -> Self {
        Self {
            name: name.to_string(),
            vip,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::RoundRobin,
            forwarding: Forwarding::Nat,
            encap: EncapSpec::default(),
            expire: Some(Duration::from_secs(30 * 60)),
            maglev_size: None,
            stick_on: StickOn::Src,
            insert_on: InsertOn::Any,
            insert_cap: lb_common::DEFAULT_INSERT_CAP,
            backends: Vec::new(),
        }
    }

    /// Adds a backend with weight 1, up.
    pub fn backend(mut self, addr: SocketAddr) -> Self {
        self.backends.push(BackendSpec {
            addr,
            weight: 1,
            state: BackendState::Up,
        });
        self
    }
}

crate::named! {
    /// Operator-set state of a backend (HAProxy `set server … state`).
    pub enum AdminState {
        /// In service: takes new clients while healthy.
        Ready = "ready",
        /// Keeps its clients, no new ones.
        Drain = "drain",
        /// Maintenance: receives nobody.
        Maint = "maint",
    }
}

impl AdminState {
    /// The data-path state given the admin state and the health verdict.
    pub fn effective(self, healthy: bool) -> BackendState {
        match (self, healthy) {
            (AdminState::Maint, _) | (_, false) => BackendState::Down,
            (AdminState::Drain, true) => BackendState::Drain,
            (AdminState::Ready, true) => BackendState::Up,
        }
    }
}

crate::named! {
    /// The kinds of health check, as `health.kind` names them.
    pub enum CheckKind {
        /// A TCP connect.
        Tcp = "tcp",
        /// An HTTP/1.1 `GET`.
        Http = "http",
        /// An HTTP/1.1 `GET` over TLS (HAProxy `check-ssl`).
        Https = "https",
        /// No check: always healthy.
        None = "none",
    }
}

/// What a health check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthKind {
    /// No check: always healthy.
    None,
    /// TCP connect.
    Tcp,
    /// HTTP GET.
    Http(HttpCheck),
    /// HTTP GET over TLS.
    Https(HttpCheck, TlsCheck),
}

impl HealthKind {
    /// The kind's name.
    pub fn kind(&self) -> CheckKind {
        match self {
            HealthKind::None => CheckKind::None,
            HealthKind::Tcp => CheckKind::Tcp,
            HealthKind::Http(_) => CheckKind::Http,
            HealthKind::Https(..) => CheckKind::Https,
        }
    }

    /// The HTTP part of an `http` or `https` check.
    pub fn http(&self) -> Option<&HttpCheck> {
        match self {
            HealthKind::Http(h) | HealthKind::Https(h, _) => Some(h),
            _ => None,
        }
    }
}

/// The request of an `http` / `https` check and what counts as healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    /// Request path, starting with `/`.
    pub path: String,
    /// The one healthy status; `None` = any 2xx or 3xx.
    pub expect_status: Option<u16>,
    /// The `Host` header; `None` = the checked address (`IP:PORT`).
    pub host: Option<String>,
}

impl Default for HttpCheck {
    fn default() -> Self {
        Self {
            path: "/".to_string(),
            expect_status: None,
            host: None,
        }
    }
}

/// How an `https` check sets up TLS (HAProxy `check-ssl`, `verify`, `ca-file`, `check-sni`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsCheck {
    /// Verify the backend's certificate (chain, validity, name). On by default.
    pub verify: bool,
    /// PEM file of the CAs to trust; `None` = the system's trust store.
    pub ca: Option<PathBuf>,
    /// Server name sent (SNI) and verified; `None` = the `host` name if there is one,
    /// otherwise the backend's IP address (verified against the certificate's IP SANs).
    pub sni: Option<String>,
}

impl Default for TlsCheck {
    fn default() -> Self {
        Self {
            verify: true,
            ca: None,
            sni: None,
        }
    }
}

/// Health check parameters of a service (HAProxy defaults: inter 2s, rise 2, fall 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes to go up.
    pub rise: u32,
    /// Consecutive failures to go down.
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            kind: HealthKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}
