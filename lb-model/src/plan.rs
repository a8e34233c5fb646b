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
    wrr, Backend, EncapSource, Endpoint, ReverseValue, ServiceInfo, BACKEND_DOWN, BACKEND_DRAIN,
    BACKEND_UP, DEFAULT_MAGLEV_SIZE, FWD_DSR, FWD_GUE, FWD_IPIP, FWD_NAT, MAX_BACKENDS,
    MAX_SERVICES, PROTO_TCP, PROTO_UDP, RING_REGION, SCHED_MAGLEV, SCHED_ROUNDROBIN, SVC_SRC_HASH,
    SVC_SYN_ONLY,
};

use crate::spec::{
    family_name, BackendState, Forwarding, InsertOn, OuterSource, Prefix, Protocol, Scheduler,
    ServiceSpec,
};

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
    DuplicateVip {
        first: String,
        second: String,
        vip: SocketAddr,
        proto: &'static str,
    },
    #[error("too many services ({0}): at most {MAX_SERVICES} are supported")]
    TooManyServices(usize),
    #[error("too many backends ({0}): at most {MAX_BACKENDS} are supported in all")]
    TooManyBackends(usize),
    #[error("service {service:?}: backend {backend} is listed twice")]
    DuplicateBackend {
        service: String,
        backend: SocketAddr,
    },
    #[error("service {service:?}: backend {backend} is {backend_family} but the VIP {vip} is {vip_family}: a service's backends must use the VIP's address family (or forwarding \"ipip\" / \"gue\", which carry either family in either)")]
    FamilyMismatch {
        service: String,
        backend: SocketAddr,
        vip: SocketAddr,
        backend_family: &'static str,
        vip_family: &'static str,
    },
    #[error("service {service:?}: backend {backend} has weight {weight}: accepted weights are 0..={MAX_WEIGHT}")]
    BadWeight {
        service: String,
        backend: SocketAddr,
        weight: u32,
    },
    #[error("service {service:?} listens on every port (port 0), so backend {backend} must not name a port: give it port 0 or none")]
    PortOnAllPortsService {
        service: String,
        backend: SocketAddr,
    },
    #[error("service {service:?}: maglev table size {size} is not accepted: use a prime between {min} and {RING_REGION}")]
    BadMaglevSize {
        service: String,
        size: u32,
        min: u32,
    },
    #[error("service {service:?}: gue_port 0 is not accepted: give the backends' GUE port (1..=65535, default 6080)")]
    BadGuePort { service: String },
    #[error("service {service:?}: encap source prefix {prefix} has length 0: give at least one prefix bit")]
    BadSourcePrefix { service: String, prefix: Prefix },
    #[error("backend {backend} ({proto}) serves both {first:?} and {second:?} in nat mode: replies from it could not be told apart; use distinct backend ports or dsr")]
    AmbiguousReply {
        backend: SocketAddr,
        proto: &'static str,
        first: String,
        second: String,
    },
}

/// One service's map entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    pub name: String,
    pub key: Endpoint,
    /// `ring_offset` is filled in by the data plane (double buffering).
    pub info: ServiceInfo,
    /// The client-hash outer-source prefixes (`ENCAP_SOURCE`; all zero unless the
    /// service has `SVC_SRC_HASH`).
    pub encap_source: EncapSource,
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
    /// (VIP, port 0, proto) → services later IPv4 fragments may belong to.
    pub fragments: Vec<(Endpoint, lb_common::FragCandidates)>,
}

/// Id allocation that stays stable across plans: a service keeps its id while its name
/// exists, a backend keeps its id while (service, address) exists. Stable ids are what
/// keep stick-table entries valid across reloads.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    services: BTreeMap<String, u32>,
    backends: BTreeMap<(String, SocketAddr), u32>,
}

/// What a selection table is built from: equal inputs give equal tables.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RingInput {
    /// (backend id, weight), in configuration order.
    RoundRobin(Vec<(u32, u32)>),
    /// (backend id, key, weight), in configuration order, and the table size.
    Maglev(Vec<(u32, String, u32)>, u32),
}

impl RingInput {
    fn build(&self) -> Vec<u32> {
        match self {
            RingInput::RoundRobin(pairs) => wrr::sequence(pairs, RING_REGION),
            RingInput::Maglev(backends, size) => {
                let backends: Vec<MaglevBackend> = backends
                    .iter()
                    .map(|(id, key, weight)| MaglevBackend {
                        id: *id,
                        key: key.clone(),
                        weight: *weight,
                    })
                    .collect();
                maglev::build(&backends, *size)
            }
        }
    }
}

/// Selection tables built recently, by input. A Maglev table has up to 65 537 slots and
/// takes milliseconds to build (far more in a debug build), and every plan needs every
/// service's table, while a reload, a control command or a health change touches a few
/// services: the others reuse theirs. The config parser's validation plan and the agent's
/// plan share the cache (it is process-wide). A table unused for [`RING_CACHE_KEEP`]
/// plans is dropped, so the cache holds about the tables of the current configuration.
struct RingCache {
    generation: u64,
    tables: std::collections::HashMap<RingInput, (u64, Vec<u32>)>,
}

const RING_CACHE_KEEP: u64 = 4;

static RING_CACHE: std::sync::Mutex<Option<RingCache>> = std::sync::Mutex::new(None);

fn ring_cache() -> std::sync::MutexGuard<'static, Option<RingCache>> {
    crate::sync::lock(&RING_CACHE)
}

/// Starts a plan: ages the cache.
fn ring_cache_next_generation() {
    let mut guard = ring_cache();
    let cache = guard.get_or_insert_with(|| RingCache {
        generation: 0,
        tables: Default::default(),
    });
    cache.generation += 1;
    let g = cache.generation;
    cache
        .tables
        .retain(|_, (used, _)| *used + RING_CACHE_KEEP >= g);
}

/// The table for `input`, from the cache or freshly built (and then cached).
fn ring_for(input: RingInput) -> Vec<u32> {
    if let Some(cache) = ring_cache().as_mut() {
        let g = cache.generation;
        if let Some((used, ring)) = cache.tables.get_mut(&input) {
            *used = g;
            return ring.clone();
        }
    }
    let ring = input.build();
    if let Some(cache) = ring_cache().as_mut() {
        let g = cache.generation;
        cache.tables.insert(input, (g, ring.clone()));
    }
    ring
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

    /// Recovers ids from maps written by a previous agent (`found`, from
    /// [`crate::dataplane::Dataplane::adopt_from_maps`]): a service keeps the id of the
    /// map entry with its VIP, port and protocol; a backend the id of the slot with its
    /// service, address and port. Called before the first [`Ids::plan`] of a restarted
    /// agent, this is what keeps every stick-table entry valid.
    pub fn adopt(&mut self, specs: &[ServiceSpec], found: &Plan) {
        let by_key: BTreeMap<Endpoint, u32> =
            found.services.iter().map(|s| (s.key, s.info.id)).collect();
        let by_backend: BTreeMap<(u32, lb_common::Addr, u16, u8), u32> = found
            .backends
            .iter()
            .map(|b| {
                (
                    (
                        b.value.service_id,
                        b.value.addr,
                        b.value.port,
                        b.value.family,
                    ),
                    b.id,
                )
            })
            .collect();
        for s in specs {
            let Some(&sid) = by_key.get(&service_key(s)) else {
                continue;
            };
            self.services.insert(s.name.clone(), sid);
            for b in &s.backends {
                let (addr, family) = addr_from_ip(b.addr.ip());
                let port = if b.addr.port() == 0 {
                    s.vip.port()
                } else {
                    b.addr.port()
                };
                if let Some(&bid) = by_backend.get(&(sid, addr, port.to_be(), family)) {
                    self.backends.insert((s.name.clone(), b.addr), bid);
                }
            }
        }
    }

    /// Validates `specs` and computes the map contents. Ids are updated only on success.
    pub fn plan(&mut self, specs: &[ServiceSpec]) -> Result<Plan, PlanError> {
        validate(specs)?;
        ring_cache_next_generation();
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
        // New names take the lowest free ids, in order.
        let used_s: BTreeSet<u32> = next.services.values().copied().collect();
        let used_b: BTreeSet<u32> = next.backends.values().copied().collect();
        let mut free_s = (0..MAX_SERVICES).filter(|i| !used_s.contains(i));
        let mut free_b = (0..MAX_BACKENDS).filter(|i| !used_b.contains(i));
        let total_backends = specs.iter().map(|s| s.backends.len()).sum();
        for s in specs {
            if let std::collections::btree_map::Entry::Vacant(e) =
                next.services.entry(s.name.clone())
            {
                e.insert(
                    free_s
                        .next()
                        .ok_or(PlanError::TooManyServices(specs.len()))?,
                );
            }
            for b in &s.backends {
                if let std::collections::btree_map::Entry::Vacant(e) =
                    next.backends.entry((s.name.clone(), b.addr))
                {
                    e.insert(
                        free_b
                            .next()
                            .ok_or(PlanError::TooManyBackends(total_backends))?,
                    );
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
            let key = Endpoint {
                addr: vip,
                port: s.vip.port().to_be(),
                proto,
                family,
            };
            let mut eligible = Vec::new();
            for b in &s.backends {
                let id = next.backends[&(s.name.clone(), b.addr)];
                let (addr, bfamily) = addr_from_ip(b.addr.ip());
                // Port 0 on a fixed-port service means "the service port".
                let port = if b.addr.port() == 0 {
                    s.vip.port()
                } else {
                    b.addr.port()
                };
                let state = match b.state {
                    BackendState::Up => BACKEND_UP,
                    BackendState::Drain => BACKEND_DRAIN,
                    BackendState::Down => BACKEND_DOWN,
                };
                let value = Backend {
                    addr,
                    port: port.to_be(),
                    family: bfamily,
                    state,
                    service_id: sid,
                    weight: b.weight,
                };
                if b.state == BackendState::Up && b.weight > 0 {
                    eligible.push((id, b));
                }
                if s.forwarding == Forwarding::Nat {
                    let rkey = Endpoint {
                        addr,
                        port: port.to_be(),
                        proto,
                        family: bfamily,
                    };
                    if let Some(first) = reverse_owner.get(&rkey) {
                        return Err(PlanError::AmbiguousReply {
                            backend: SocketAddr::new(b.addr.ip(), port),
                            proto: s.protocol.name(),
                            first: first.clone(),
                            second: s.name.clone(),
                        });
                    }
                    reverse_owner.insert(rkey, s.name.clone());
                    plan.reverse.push((
                        rkey,
                        ReverseValue {
                            vip,
                            vip_port: s.vip.port().to_be(),
                            _pad: 0,
                            service_id: sid,
                        },
                    ));
                }
                plan.backends.push(BackendEntry {
                    id,
                    service: s.name.clone(),
                    addr: b.addr,
                    value,
                });
            }
            let input = match s.scheduler {
                Scheduler::RoundRobin => {
                    RingInput::RoundRobin(eligible.iter().map(|(id, b)| (*id, b.weight)).collect())
                }
                Scheduler::Maglev => RingInput::Maglev(
                    eligible
                        .iter()
                        .map(|(id, b)| (*id, b.addr.to_string(), b.weight))
                        .collect(),
                    s.maglev_size.unwrap_or(DEFAULT_MAGLEV_SIZE),
                ),
            };
            let ring = ring_for(input);
            let expiry_ns = s
                .expire
                .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
                .unwrap_or(0);
            let encap_source = match (s.forwarding.is_encap(), s.encap.source) {
                (true, OuterSource::ClientHash { v4, v6 }) => encap_source(v4, v6),
                _ => EncapSource::default(),
            };
            let info = ServiceInfo {
                id: sid,
                forwarding: match s.forwarding {
                    Forwarding::Nat => FWD_NAT,
                    Forwarding::Dsr => FWD_DSR,
                    Forwarding::Ipip => FWD_IPIP,
                    Forwarding::Gue => FWD_GUE,
                },
                scheduler: match s.scheduler {
                    Scheduler::RoundRobin => SCHED_ROUNDROBIN,
                    Scheduler::Maglev => SCHED_MAGLEV,
                },
                flags: match s.insert_on {
                    InsertOn::Any => 0,
                    InsertOn::Syn => SVC_SYN_ONLY,
                } | if encap_source == EncapSource::default() {
                    0
                } else {
                    SVC_SRC_HASH
                },
                stick_prefix: s.stick_on.prefix(),
                ring_len: ring.len() as u32,
                ring_offset: 0,
                expiry_ns,
                refresh_ns: refresh_interval(expiry_ns),
                insert_cap: s.insert_cap,
                gue_port: if s.forwarding == Forwarding::Gue {
                    s.encap.gue_port.to_be()
                } else {
                    0
                },
                _pad2: 0,
            };
            plan.services.push(ServiceEntry {
                name: s.name.clone(),
                key,
                info,
                encap_source,
                ring,
            });
        }
        plan.fragments = fragment_candidates(&plan.services);
        *self = next;
        Ok(plan)
    }
}

/// The `ENCAP_SOURCE` value of client-hash prefixes (network-order words and masks).
fn encap_source(v4: Option<Prefix>, v6: Option<Prefix>) -> EncapSource {
    let mut e = EncapSource::default();
    if let Some(Prefix {
        addr: std::net::IpAddr::V4(a),
        len,
    }) = v4
    {
        e.v4_prefix = u32::from_ne_bytes(a.octets());
        let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
        e.v4_mask = u32::from_ne_bytes(mask.to_be_bytes());
    }
    if let Some(Prefix {
        addr: std::net::IpAddr::V6(a),
        len,
    }) = v6
    {
        let (addr, _) = addr_from_ip(a.into());
        e.v6_prefix = addr;
        let mask = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
        let (m, _) = addr_from_ip(std::net::Ipv6Addr::from(mask).into());
        e.v6_mask = m;
    }
    e
}

/// Groups IPv4 services by (VIP, protocol) for later fragments (the all-ports service
/// first). A VIP and protocol with more than [`lb_common::FRAG_CANDIDATES`] services gets
/// a `count` above that: the data path cannot tell its fragments apart and passes them
/// (counted as unmatched) rather than guess.
fn fragment_candidates(services: &[ServiceEntry]) -> Vec<(Endpoint, lb_common::FragCandidates)> {
    let mut groups: BTreeMap<Endpoint, Vec<Endpoint>> = BTreeMap::new();
    for s in services
        .iter()
        .filter(|s| s.key.family == lb_common::FAMILY_V4)
    {
        groups
            .entry(Endpoint { port: 0, ..s.key })
            .or_default()
            .push(s.key);
    }
    groups
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by_key(|e| e.port != 0);
            let mut c = lb_common::FragCandidates::default();
            for (slot, e) in c.services.iter_mut().zip(v.iter()) {
                *slot = *e;
            }
            c.count = v.len().min(lb_common::FRAG_CANDIDATES + 1) as u32;
            (k, c)
        })
        .collect()
}

/// The `SERVICES` key of a service.
pub fn service_key(s: &ServiceSpec) -> Endpoint {
    let (addr, family) = addr_from_ip(s.vip.ip());
    let proto = match s.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    };
    Endpoint {
        addr,
        port: s.vip.port().to_be(),
        proto,
        family,
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
                proto: s.protocol.name(),
            });
        }
        if let Some(size) = s.maglev_size {
            let min = (s.backends.len() as u32).max(2);
            if !maglev::is_prime(size) || size < min || size > RING_REGION {
                return Err(PlanError::BadMaglevSize {
                    service: s.name.clone(),
                    size,
                    min,
                });
            }
        }
        if s.forwarding == Forwarding::Gue && s.encap.gue_port == 0 {
            return Err(PlanError::BadGuePort {
                service: s.name.clone(),
            });
        }
        if let OuterSource::ClientHash { v4, v6 } = s.encap.source {
            for prefix in [v4, v6].into_iter().flatten() {
                if prefix.len == 0 {
                    return Err(PlanError::BadSourcePrefix {
                        service: s.name.clone(),
                        prefix,
                    });
                }
            }
        }
        let mut seen = BTreeSet::new();
        for b in &s.backends {
            if !seen.insert(b.addr) {
                return Err(PlanError::DuplicateBackend {
                    service: s.name.clone(),
                    backend: b.addr,
                });
            }
            if b.addr.is_ipv4() != s.vip.is_ipv4() && !s.forwarding.is_encap() {
                return Err(PlanError::FamilyMismatch {
                    service: s.name.clone(),
                    backend: b.addr,
                    vip: s.vip,
                    backend_family: family_name(b.addr.ip()),
                    vip_family: family_name(s.vip.ip()),
                });
            }
            if b.weight > MAX_WEIGHT {
                return Err(PlanError::BadWeight {
                    service: s.name.clone(),
                    backend: b.addr,
                    weight: b.weight,
                });
            }
            if s.vip.port() == 0 && b.addr.port() != 0 {
                return Err(PlanError::PortOnAllPortsService {
                    service: s.name.clone(),
                    backend: b.addr,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lb_common::{FAMILY_V4, FAMILY_V6};

    use super::*;
    use crate::spec::BackendSpec;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn web() -> ServiceSpec {
        ServiceSpec::new("web", sa("10.0.0.100:80"))
            .backend(sa("192.168.1.2:8080"))
            .backend(sa("192.168.1.3:0"))
    }

    #[test]
    fn service_and_backends_become_map_entries() {
        let mut svc = web();
        svc.expire = Some(Duration::from_secs(60));
        let plan = Ids::default().plan(&[svc]).unwrap();
        let s = &plan.services[0];
        assert_eq!(
            s.key,
            Endpoint {
                addr: [u32::from_ne_bytes([10, 0, 0, 100]), 0, 0, 0],
                port: 80u16.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4
            }
        );
        assert_eq!(s.info.id, 0);
        assert_eq!(s.info.forwarding, FWD_NAT);
        assert_eq!(s.info.scheduler, SCHED_ROUNDROBIN);
        assert_eq!(s.info.expiry_ns, 60_000_000_000);
        assert_eq!(s.info.refresh_ns, 1_000_000_000);
        assert_eq!(s.ring, vec![0, 1]);
        assert_eq!(s.info.ring_len, 2);
        let b = &plan.backends[1];
        assert_eq!(b.value.port, 80u16.to_be(), "port 0 means the service port");
        assert_eq!(b.value.state, BACKEND_UP);
        assert_eq!(b.value.service_id, 0);
        assert_eq!(plan.backends[0].value.port, 8080u16.to_be());
        assert_eq!(plan.reverse.len(), 2);
        assert_eq!(plan.reverse[0].0.port, 8080u16.to_be());
        assert_eq!(plan.reverse[0].1.vip_port, 80u16.to_be());
        assert_eq!(plan.reverse[0].1.vip, s.key.addr);
    }

    #[test]
    fn fragment_candidates_group_ipv4_services_by_vip_and_protocol() {
        let any = ServiceSpec::new("any", sa("10.0.0.100:0")).backend(sa("192.168.1.2:0"));
        let api = ServiceSpec::new("api", sa("10.0.0.100:443")).backend(sa("192.168.1.4:443"));
        let mut dns = ServiceSpec::new("dns", sa("10.0.0.100:53")).backend(sa("192.168.1.5:53"));
        dns.protocol = Protocol::Udp;
        let v6 = ServiceSpec::new("v6", sa("[2001:db8::100]:80")).backend(sa("[2001:db8:1::2]:80"));
        let plan = Ids::default().plan(&[web(), any, api, dns, v6]).unwrap();
        let key = |s: &ServiceEntry| s.key;
        let by_name = |n: &str| key(plan.services.iter().find(|s| s.name == n).expect("service"));
        assert_eq!(
            plan.fragments.len(),
            2,
            "one entry per IPv4 VIP and protocol"
        );
        let tcp = plan
            .fragments
            .iter()
            .find(|(k, _)| k.proto == PROTO_TCP)
            .unwrap();
        assert_eq!(
            tcp.0,
            Endpoint {
                port: 0,
                ..by_name("web")
            }
        );
        assert_eq!(tcp.1.count, 3);
        assert_eq!(tcp.1.services[0], by_name("any"), "all-ports service first");
        assert!(tcp.1.services[..3].contains(&by_name("web")));
        assert!(tcp.1.services[..3].contains(&by_name("api")));
        let udp = plan
            .fragments
            .iter()
            .find(|(k, _)| k.proto == PROTO_UDP)
            .unwrap();
        assert_eq!((udp.1.count, udp.1.services[0]), (1, by_name("dns")));
        // Too many services on one VIP: marked, not truncated.
        let many: Vec<ServiceSpec> = (0..6)
            .map(|i| {
                ServiceSpec::new(&format!("s{i}"), sa(&format!("10.0.0.7:{}", 80 + i)))
                    .backend(sa(&format!("192.168.1.2:{}", 8000 + i)))
            })
            .collect();
        let plan = Ids::default().plan(&many).unwrap();
        assert_eq!(
            plan.fragments[0].1.count as usize,
            lb_common::FRAG_CANDIDATES + 1
        );
    }

    #[test]
    fn dsr_has_no_reply_entries_and_ipv6_is_supported() {
        let mut svc =
            ServiceSpec::new("v6", sa("[2001:db8::100]:443")).backend(sa("[2001:db8:1::2]:443"));
        svc.forwarding = Forwarding::Dsr;
        svc.scheduler = Scheduler::Maglev;
        svc.protocol = Protocol::Udp;
        svc.expire = None;
        let plan = Ids::default().plan(&[svc]).unwrap();
        assert!(plan.reverse.is_empty());
        let s = &plan.services[0];
        assert_eq!((s.key.family, s.key.proto), (FAMILY_V6, PROTO_UDP));
        assert_eq!(
            (s.info.forwarding, s.info.scheduler, s.info.expiry_ns),
            (FWD_DSR, SCHED_MAGLEV, 0)
        );
        assert_eq!(s.ring.len(), DEFAULT_MAGLEV_SIZE as usize);
        assert!(s.ring.iter().all(|&id| id == 0));
    }

    #[test]
    fn only_up_backends_with_weight_enter_the_table() {
        let mut svc = web();
        svc.backends.push(BackendSpec {
            addr: sa("192.168.1.4:8080"),
            weight: 0,
            state: BackendState::Up,
        });
        svc.backends.push(BackendSpec {
            addr: sa("192.168.1.5:8080"),
            weight: 1,
            state: BackendState::Drain,
        });
        svc.backends.push(BackendSpec {
            addr: sa("192.168.1.6:8080"),
            weight: 1,
            state: BackendState::Down,
        });
        let plan = Ids::default().plan(&[svc]).unwrap();
        assert_eq!(plan.services[0].ring, vec![0, 1]);
        let states: Vec<u8> = plan.backends.iter().map(|b| b.value.state).collect();
        assert_eq!(
            states,
            vec![
                BACKEND_UP,
                BACKEND_UP,
                BACKEND_UP,
                BACKEND_DRAIN,
                BACKEND_DOWN
            ]
        );
    }

    #[test]
    fn ids_are_stable_across_plans() {
        let mut ids = Ids::default();
        let api = ServiceSpec::new("api", sa("10.0.0.101:80")).backend(sa("192.168.2.2:80"));
        ids.plan(&[web(), api.clone()]).unwrap();
        let (web_id, api_id) = (
            ids.service_id("web").unwrap(),
            ids.service_id("api").unwrap(),
        );
        let b3 = ids.backend_id("web", sa("192.168.1.3:0")).unwrap();
        let api_b = ids.backend_id("api", sa("192.168.2.2:80")).unwrap();
        // Remove a backend of web, add one, reorder services.
        let mut web2 = ServiceSpec::new("web", sa("10.0.0.100:80")).backend(sa("192.168.1.3:0"));
        web2 = web2.backend(sa("192.168.1.9:8080"));
        ids.plan(&[api, web2]).unwrap();
        assert_eq!(ids.service_id("web"), Some(web_id));
        assert_eq!(ids.service_id("api"), Some(api_id));
        assert_eq!(ids.backend_id("web", sa("192.168.1.3:0")), Some(b3));
        assert_eq!(ids.backend_id("api", sa("192.168.2.2:80")), Some(api_b));
        assert_eq!(ids.backend_id("web", sa("192.168.1.2:8080")), None);
        // The new backend reuses the freed id.
        assert_eq!(ids.backend_id("web", sa("192.168.1.9:8080")), Some(0));
    }

    #[test]
    fn a_refused_plan_changes_no_ids() {
        let mut ids = Ids::default();
        ids.plan(&[web()]).unwrap();
        let before = format!("{ids:?}");
        let bad = ServiceSpec::new("other", sa("10.0.0.5:80")).backend(sa("[::1]:80"));
        assert!(ids.plan(&[web(), bad]).is_err());
        assert_eq!(format!("{ids:?}"), before);
    }

    #[test]
    fn bad_definitions_are_refused_with_what_is_accepted() {
        let cases: Vec<(Vec<ServiceSpec>, &str)> = vec![
            (vec![web(), web()], "defined twice"),
            (
                vec![web(), ServiceSpec::new("b", sa("10.0.0.100:80"))],
                "both listen on 10.0.0.100:80 tcp",
            ),
            (
                vec![ServiceSpec::new("x", sa("10.0.0.1:80")).backend(sa("[2001:db8::1]:80"))],
                "must use the VIP's address family",
            ),
            (
                vec![{
                    let mut s = web();
                    s.backends[0].weight = 300;
                    s
                }],
                "accepted weights are 0..=256",
            ),
            (
                vec![ServiceSpec::new("all", sa("10.0.0.1:0")).backend(sa("192.168.1.2:80"))],
                "must not name a port",
            ),
            (
                vec![
                    web(),
                    ServiceSpec::new("b", sa("10.0.0.7:80")).backend(sa("192.168.1.2:8080")),
                ],
                "could not be told apart",
            ),
            (
                vec![{
                    let mut s = web();
                    s.scheduler = Scheduler::Maglev;
                    s.maglev_size = Some(65536);
                    s
                }],
                "use a prime",
            ),
            (
                vec![ServiceSpec::new("", sa("10.0.0.1:80"))],
                "give every service a name",
            ),
            (vec![web().backend(sa("192.168.1.2:8080"))], "listed twice"),
        ];
        for (specs, want) in cases {
            let err = Ids::default().plan(&specs).unwrap_err().to_string();
            assert!(err.contains(want), "error {err:?} does not say {want:?}");
        }
    }

    #[test]
    fn dsr_services_may_share_backends() {
        let mut a = web();
        a.forwarding = Forwarding::Dsr;
        let mut b = ServiceSpec::new("b", sa("10.0.0.7:80")).backend(sa("192.168.1.2:8080"));
        b.forwarding = Forwarding::Dsr;
        assert!(Ids::default().plan(&[a, b]).is_ok());
    }

    #[test]
    fn selection_tables_are_reused_only_for_equal_inputs() {
        let mut m = ServiceSpec::new("m", sa("10.0.0.101:80"))
            .backend(sa("192.168.2.2:8080"))
            .backend(sa("192.168.2.3:8080"));
        m.scheduler = Scheduler::Maglev;
        let mut ids = Ids::default();
        let first = ids.plan(&[web(), m.clone()]).unwrap();
        // Same input, from the cache or not: the same tables.
        assert_eq!(ids.plan(&[web(), m.clone()]).unwrap(), first);
        assert_eq!(Ids::default().plan(&[web(), m.clone()]).unwrap(), first);
        // A changed weight or a backend down changes the tables (never a stale copy).
        let mut heavier = m.clone();
        heavier.backends[0].weight = 3;
        let changed = ids.plan(&[web(), heavier]).unwrap();
        assert_ne!(changed.services[1].ring, first.services[1].ring);
        let mut down = web();
        down.backends[0].state = BackendState::Down;
        let changed = ids.plan(&[down, m.clone()]).unwrap();
        assert!(changed.services[0]
            .ring
            .iter()
            .all(|id| *id == changed.backends[1].id));
        assert_eq!(changed.services[1].ring, first.services[1].ring);
        // The same backends under another id (another service) are another input.
        let mut renamed = m;
        renamed.name = "m2".into();
        let other = Ids::default().plan(&[renamed, web()]).unwrap();
        assert!(other.services[0].ring.iter().all(|id| *id < 2));
    }
}
