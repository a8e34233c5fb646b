//! Services and backends as an operator describes them; input to [`crate::plan`].

use std::{net::SocketAddr, time::Duration};

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// How new clients are assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    /// Weighted round-robin (HAProxy `balance roundrobin`).
    RoundRobin,
    /// Maglev consistent hashing of the client address.
    Maglev,
}

/// How packets reach the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Destination NAT; replies are rewritten back on their way through the balancer.
    Nat,
    /// L2 direct server return: backends hold the VIP on loopback.
    Dsr,
}

/// Administrative / health state of a backend, as the data path will see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    /// Takes new clients and keeps its own.
    Up,
    /// Keeps its clients, takes no new ones.
    Drain,
    /// Receives nobody; its clients are re-picked.
    Down,
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
    /// Stick-table entry lifetime after the client was last seen; `None` = never.
    pub expire: Option<Duration>,
    /// Maglev table size (prime); `None` = default.
    pub maglev_size: Option<u32>,
    /// Which packets of an unknown client may add its stick-table entry.
    pub insert_on: InsertOn,
    /// New entries per second per CPU; 0 = no cap. Clients beyond it are served by
    /// source hash without an entry.
    pub insert_cap: u32,
    pub backends: Vec<BackendSpec>,
}

/// Which packets of an unknown client add its stick-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOn {
    /// Any packet (HAProxy `stick on src`).
    Any,
    /// TCP services: only a SYN. Other TCP packets of unknown clients (a spoofed ACK
    /// flood, or a connection whose entry was evicted) are served by source hash
    /// without an entry.
    Syn,
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
            expire: Some(Duration::from_secs(30 * 60)),
            maglev_size: None,
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

/// Operator-set state of a backend (HAProxy `set server … state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// In service: takes new clients while healthy.
    Ready,
    /// Keeps its clients, no new ones.
    Drain,
    /// Maintenance: receives nobody.
    Maint,
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

/// What a health check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthKind {
    /// No check: always healthy.
    None,
    /// TCP connect.
    Tcp,
    /// HTTP GET `path`; healthy on 2xx/3xx, or exactly `expect_status` when set.
    Http {
        path: String,
        expect_status: Option<u16>,
    },
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
