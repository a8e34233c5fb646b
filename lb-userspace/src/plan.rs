//! Pure translation of service specs into the contents of the data-path maps: stable ids,
//! backend slots, selection tables (Maglev or weighted round-robin) and reply-NAT entries.
//! Validation lives here too, so a bad definition is refused before any map is touched.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use lb_common::{
    addr_from_ip,
    maglev::{self, MaglevBackend},
    sticky::refresh_interval,
    wrr, Backend, Endpoint, ReverseValue, ServiceInfo, BACKEND_DOWN, BACKEND_DRAIN, BACKEND_UP,
    DEFAULT_MAGLEV_SIZE, FWD_DSR, FWD_NAT, MAX_BACKENDS, MAX_SERVICES, PROTO_TCP, PROTO_UDP,
    RING_REGION, SCHED_MAGLEV, SCHED_ROUNDROBIN,
};

use crate::spec::{BackendState, Forwarding, Protocol, Scheduler, ServiceSpec};

/// Highest accepted backend weight (as HAProxy).
pub const MAX_WEIGHT: u32 = 256;

/// Why a set of services cannot be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("service name is empty: give every service a name")]
    EmptyName,
    #[error("service {0:?} is defined twice: service names must be unique")]
    DuplicateName(String),
    #[error("services {first:?} and {second:?} both listen on {vip} {proto}: a VIP, port and protocol belong to one service")]
    DuplicateVip { first: String, second: String, vip: SocketAddr, proto: &'static str },
    #[error("too many services ({0}): at most {MAX_SERVICES} are supported")]
    TooManyServices(usize),
    #[error("too many backends ({0}): at most {MAX_BACKENDS} are supported in all")]
    TooManyBackends(usize),
    #[error("service {service:?}: backend {backend} is listed twice")]
    DuplicateBackend { service: String, backend: SocketAddr },
    #[error("service {service:?}: backend {backend} is {backend_family} but the VIP {vip} is {vip_family}: a service's backends must use the VIP's address family")]
    FamilyMismatch { service: String, backend: SocketAddr, vip: SocketAddr, backend_family: &'static str, vip_family: &'static str },
    #[error("service {service:?}: backend {backend} has weight {weight}: accepted weights are 0..={MAX_WEIGHT}")]
    BadWeight { service: String, backend: SocketAddr, weight: u32 },
    #[error("service {service:?} listens on every port (port 0), so backend {backend} must not name a port: give it port 0 or none")]
    PortOnAllPortsService { service: String, backend: SocketAddr },
    #[error("service {service:?}: maglev table size {size} is not accepted: use a prime between {min} and {RING_REGION}")]
    BadMaglevSize { service: String, size: u32, min: u32 },
    #[error("backend {backend} ({proto}) serves both {first:?} and {second:?} in nat mode: replies from it could not be told apart; use distinct backend ports or dsr")]
    AmbiguousReply { backend: SocketAddr, proto: &'static str, first: String, second: String },
}

/// One service's map entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    pub name: String,
    pub key: Endpoint,
    /// `ring_offset` is filled in by the data plane (double buffering).
    pub info: ServiceInfo,
    /// Selection table: backend ids.
    pub ring: Vec<u32>,
}

/// One backend slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    pub id: u32,
    pub service: String,
    pub addr: SocketAddr,
    pub value: Backend,
}

/// Everything to write into the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub services: Vec<ServiceEntry>,
    pub backends: Vec<BackendEntry>,
    pub reverse: Vec<(Endpoint, ReverseValue)>,
}

/// Id allocation that stays stable across plans: a service keeps its id while its name
/// exists, a backend keeps its id while (service, address) exists. Stable ids are what
/// keep stick-table entries valid across reloads.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    services: BTreeMap<String, u32>,
    backends: BTreeMap<(String, SocketAddr), u32>,
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn family_name(a: &SocketAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Lowest id not in `used`.
fn lowest_free(used: &BTreeSet<u32>, limit: u32) -> Option<u32> {
    (0..limit).find(|i| !used.contains(i))
}

impl Ids {
    /// The id of a service, if allocated.
    pub fn service_id(&self, name: &str) -> Option<u32> {
        self.services.get(name).copied()
    }

    /// The id of a backend of a service, if allocated.
    pub fn backend_id(&self, service: &str, addr: SocketAddr) -> Option<u32> {
        self.backends.get(&(service.to_string(), addr)).copied()
    }

    /// Validates `specs` and computes the map contents. Ids are updated only on success.
    pub fn plan(&mut self, specs: &[ServiceSpec]) -> Result<Plan, PlanError> {
        validate(specs)?;
        let mut next = Ids::default();
        // Keep the ids of everything that still exists, then allocate the rest.
        for s in specs {
            if let Some(id) = self.services.get(&s.name) {
                next.services.insert(s.name.clone(), *id);
            }
            for b in &s.backends {
                let key = (s.name.clone(), b.addr);
                if let Some(id) = self.backends.get(&key) {
                    next.backends.insert(key, *id);
                }
            }
        }
        let mut used_s: BTreeSet<u32> = next.services.values().copied().collect();
        let mut used_b: BTreeSet<u32> = next.backends.values().copied().collect();
        for s in specs {
            if !next.services.contains_key(&s.name) {
                let id = lowest_free(&used_s, MAX_SERVICES).ok_or(PlanError::TooManyServices(specs.len()))?;
                used_s.insert(id);
                next.services.insert(s.name.clone(), id);
            }
            for b in &s.backends {
                let key = (s.name.clone(), b.addr);
                if !next.backends.contains_key(&key) {
                    let total = specs.iter().map(|s| s.backends.len()).sum();
                    let id = lowest_free(&used_b, MAX_BACKENDS).ok_or(PlanError::TooManyBackends(total))?;
                    used_b.insert(id);
                    next.backends.insert(key, id);
                }
            }
        }

        let mut plan = Plan::default();
        let mut reverse_owner: BTreeMap<Endpoint, String> = BTreeMap::new();
        for s in specs {
            let sid = next.services[&s.name];
            let (vip, family) = addr_from_ip(s.vip.ip());
            let proto = match s.protocol {
                Protocol::Tcp => PROTO_TCP,
                Protocol::Udp => PROTO_UDP,
            };
            let key = Endpoint { addr: vip, port: s.vip.port().to_be(), proto, family };
            let mut eligible = Vec::new();
            for b in &s.backends {
                let id = next.backends[&(s.name.clone(), b.addr)];
                let (addr, bfamily) = addr_from_ip(b.addr.ip());
                // Port 0 on a fixed-port service means "the service port".
                let port = if b.addr.port() == 0 { s.vip.port() } else { b.addr.port() };
                let state = match b.state {
                    BackendState::Up => BACKEND_UP,
                    BackendState::Drain => BACKEND_DRAIN,
                    BackendState::Down => BACKEND_DOWN,
                };
                let value = Backend { addr, port: port.to_be(), family: bfamily, state, service_id: sid, weight: b.weight };
                if b.state == BackendState::Up && b.weight > 0 {
                    eligible.push((id, b));
                }
                if s.forwarding == Forwarding::Nat {
                    let rkey = Endpoint { addr, port: port.to_be(), proto, family: bfamily };
                    if let Some(first) = reverse_owner.get(&rkey) {
                        return Err(PlanError::AmbiguousReply {
                            backend: SocketAddr::new(b.addr.ip(), port),
                            proto: proto_name(s.protocol),
                            first: first.clone(),
                            second: s.name.clone(),
                        });
                    }
                    reverse_owner.insert(rkey, s.name.clone());
                    plan.reverse.push((rkey, ReverseValue { vip, vip_port: s.vip.port().to_be(), _pad: 0, service_id: sid }));
                }
                plan.backends.push(BackendEntry { id, service: s.name.clone(), addr: b.addr, value });
            }
            let ring = match s.scheduler {
                Scheduler::RoundRobin => {
                    let pairs: Vec<(u32, u32)> = eligible.iter().map(|(id, b)| (*id, b.weight)).collect();
                    wrr::sequence(&pairs, RING_REGION)
                }
                Scheduler::Maglev => {
                    let backends: Vec<MaglevBackend> = eligible
                        .iter()
                        .map(|(id, b)| MaglevBackend { id: *id, key: b.addr.to_string(), weight: b.weight })
                        .collect();
                    maglev::build(&backends, s.maglev_size.unwrap_or(DEFAULT_MAGLEV_SIZE))
                }
            };
            let expiry_ns = s.expire.map(|d| d.as_nanos().min(u64::MAX as u128) as u64).unwrap_or(0);
            let info = ServiceInfo {
                id: sid,
                forwarding: match s.forwarding {
                    Forwarding::Nat => FWD_NAT,
                    Forwarding::Dsr => FWD_DSR,
                },
                scheduler: match s.scheduler {
                    Scheduler::RoundRobin => SCHED_ROUNDROBIN,
                    Scheduler::Maglev => SCHED_MAGLEV,
                },
                _pad: 0,
                ring_len: ring.len() as u32,
                ring_offset: 0,
                expiry_ns,
                refresh_ns: refresh_interval(expiry_ns),
            };
            plan.services.push(ServiceEntry { name: s.name.clone(), key, info, ring });
        }
        *self = next;
        Ok(plan)
    }
}

/// Checks everything that does not depend on id allocation.
pub fn validate(specs: &[ServiceSpec]) -> Result<(), PlanError> {
    if specs.len() > MAX_SERVICES as usize {
        return Err(PlanError::TooManyServices(specs.len()));
    }
    let total: usize = specs.iter().map(|s| s.backends.len()).sum();
    if total > MAX_BACKENDS as usize {
        return Err(PlanError::TooManyBackends(total));
    }
    let mut names = BTreeSet::new();
    let mut vips: BTreeMap<(SocketAddr, Protocol), &str> = BTreeMap::new();
    for s in specs {
        if s.name.is_empty() {
            return Err(PlanError::EmptyName);
        }
        if !names.insert(&s.name) {
            return Err(PlanError::DuplicateName(s.name.clone()));
        }
        if let Some(first) = vips.insert((s.vip, s.protocol), &s.name) {
            return Err(PlanError::DuplicateVip {
                first: first.to_string(),
                second: s.name.clone(),
                vip: s.vip,
                proto: proto_name(s.protocol),
            });
        }
        if let Some(size) = s.maglev_size {
            let min = (s.backends.len() as u32).max(2);
            if !maglev::is_prime(size) || size < min || size > RING_REGION {
                return Err(PlanError::BadMaglevSize { service: s.name.clone(), size, min });
            }
        }
        let mut seen = BTreeSet::new();
        for b in &s.backends {
            if !seen.insert(b.addr) {
                return Err(PlanError::DuplicateBackend { service: s.name.clone(), backend: b.addr });
            }
            if b.addr.is_ipv4() != s.vip.is_ipv4() {
                return Err(PlanError::FamilyMismatch {
                    service: s.name.clone(),
                    backend: b.addr,
                    vip: s.vip,
                    backend_family: family_name(&b.addr),
                    vip_family: family_name(&s.vip),
                });
            }
            if b.weight > MAX_WEIGHT {
                return Err(PlanError::BadWeight { service: s.name.clone(), backend: b.addr, weight: b.weight });
            }
            if s.vip.port() == 0 && b.addr.port() != 0 {
                return Err(PlanError::PortOnAllPortsService { service: s.name.clone(), backend: b.addr });
            }
        }
    }
    Ok(())
}
