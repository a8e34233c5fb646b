//! Between the node's maps and replication's identities (lb-cluster): the one place that
//! converts stick-table keys, values and events to services, backends and clients named
//! by what they are, and back. Node-local ids never leave the node (docs/CLUSTER.md,
//! "Identity across nodes"); a change of the map layout (`StickValue` packing, a client
//! prefix in the key) is an edit here and nowhere else in userspace.
//!
//! - [`service_defs`]: what the node serves, as replication compares it
//!   (`ServiceDef`: VIP/port/protocol, expiry, scheduler, backends by address:port with
//!   their weights).
//! - [`Catalog`]: ids ↔ identities for the current configuration and plan ids; rebuilt on
//!   every commit.

use std::collections::HashMap;
use std::net::IpAddr;

use lb_cluster::{
    Applied, BackendDef, BackendKey, ClientKey, Observed, ObservedKind, Proto, ServiceDef,
    ServiceKey,
};
use lb_common::{
    addr_from_ip, ip_from_addr, StickEvent, StickKey, StickValue, DEFAULT_MAGLEV_SIZE, FAMILY_V4,
};

use crate::{
    config::{Config, ServiceConfig},
    plan::Ids,
    spec::{Protocol, Scheduler},
};

/// A service's identity on the wire.
pub fn service_key(s: &ServiceConfig) -> ServiceKey {
    ServiceKey {
        vip: s.spec.vip.ip(),
        port: s.spec.vip.port(),
        proto: match s.spec.protocol {
            Protocol::Tcp => Proto::Tcp,
            Protocol::Udp => Proto::Udp,
        },
    }
}

/// A backend's identity: address and port, port written without it meaning the
/// service's port (so `192.168.1.2` and `192.168.1.2:80` of a service on port 80 are one
/// backend), 0 only for an all-ports service (the client's destination port).
pub fn backend_key(s: &ServiceConfig, addr: std::net::SocketAddr) -> BackendKey {
    BackendKey {
        addr: addr.ip(),
        port: if addr.port() == 0 {
            s.spec.vip.port()
        } else {
            addr.port()
        },
    }
}

/// The scheduler as replication spells it: nodes that pick differently are reported.
pub fn scheduler_name(s: &ServiceConfig) -> String {
    match s.spec.scheduler {
        Scheduler::Maglev => format!(
            "maglev {}",
            s.spec.maglev_size.unwrap_or(DEFAULT_MAGLEV_SIZE)
        ),
        Scheduler::RoundRobin => "roundrobin".to_string(),
    }
}

/// Every service of `config` as replication sees it.
pub fn service_defs(config: &Config) -> Vec<ServiceDef> {
    config
        .services
        .iter()
        .map(|s| ServiceDef {
            key: service_key(s),
            expire: s.spec.expire,
            scheduler: scheduler_name(s),
            backends: s
                .backends
                .iter()
                .map(|b| BackendDef {
                    key: backend_key(s, b.addr),
                    weight: b.weight,
                })
                .collect(),
        })
        .collect()
}

/// Node-local ids ↔ identities, for one configuration and its plan ids.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// service id → (identity, client address family).
    services: HashMap<u32, (ServiceKey, u8)>,
    service_ids: HashMap<ServiceKey, u32>,
    /// backend id → (identity, owning service id).
    backends: HashMap<u32, (BackendKey, u32)>,
    backend_ids: HashMap<(u32, BackendKey), u32>,
}

impl Catalog {
    /// The catalog of `config` with the ids `ids` gave it (after `Ids::plan`).
    pub fn new(config: &Config, ids: &Ids) -> Catalog {
        let mut c = Catalog::default();
        for s in &config.services {
            let Some(sid) = ids.service_id(&s.spec.name) else {
                continue;
            };
            let key = service_key(s);
            let family = addr_from_ip(key.vip).1;
            c.services.insert(sid, (key, family));
            c.service_ids.insert(key, sid);
            for b in &s.backends {
                if let Some(bid) = ids.backend_id(&s.spec.name, b.addr) {
                    let bk = backend_key(s, b.addr);
                    c.backends.insert(bid, (bk, sid));
                    c.backend_ids.insert((sid, bk), bid);
                }
            }
        }
        c
    }

    /// Number of services known.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    fn observed(
        &self,
        service_id: u32,
        client: &lb_common::Addr,
        backend_id: u32,
        last_seen_ns: u64,
        kind: ObservedKind,
    ) -> Option<Observed> {
        let (service, family) = *self.services.get(&service_id)?;
        let (backend, owner) = *self.backends.get(&backend_id)?;
        if owner != service_id {
            return None; // a stale entry (its backend id now belongs to another service)
        }
        Some(Observed {
            service,
            client: ClientKey::host(ip_from_addr(client, family)),
            backend,
            last_seen_ms: last_seen_ns / 1_000_000,
            kind,
        })
    }

    /// A data-path event (a new entry, a re-pick) as an observation to send at once;
    /// `None` for ids this configuration does not know (a reload raced the event).
    pub fn from_event(&self, e: &StickEvent) -> Option<Observed> {
        self.observed(
            e.service_id,
            &e.client,
            e.backend_id,
            e.at_ns,
            ObservedKind::Picked,
        )
    }

    /// A stick-table entry found by the periodic scan.
    pub fn from_entry(&self, k: &StickKey, v: &StickValue) -> Option<Observed> {
        self.observed(
            k.service_id,
            &k.client,
            v.backend_id,
            v.last_seen_ns,
            ObservedKind::Scanned,
        )
    }

    /// The stick-table entry for an entry adopted from a peer; `None` for a service or
    /// backend this node does not have (lb-cluster already counts those) or a client of
    /// another family.
    pub fn to_entry(&self, a: &Applied) -> Option<(StickKey, StickValue)> {
        let sid = *self.service_ids.get(&a.service)?;
        let bid = *self.backend_ids.get(&(sid, a.backend))?;
        let family = self.services.get(&sid)?.1;
        if a.client.addr.is_ipv4() != (family == FAMILY_V4) {
            return None;
        }
        let (client, _) = addr_from_ip(host_part(a.client));
        Some((
            StickKey {
                service_id: sid,
                client,
            },
            StickValue {
                backend_id: bid,
                _pad: 0,
                last_seen_ns: a.last_seen_ms.saturating_mul(1_000_000),
            },
        ))
    }

    /// Whether `current` (in the map) should stay instead of `new` (a peer's value): the
    /// same backend seen later here.
    pub fn keeps(current: &StickValue, new: &StickValue) -> bool {
        lb_common::sticky::stick_keeps(current, new)
    }
}

/// The address the stick table is keyed by for a client (today the host address; with
/// stickiness by prefix, the masked network).
fn host_part(c: ClientKey) -> IpAddr {
    c.addr
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const TWO: &str = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n\
        forwarding = \"dsr\"\nscheduler = \"maglev\"\nstick_table = { expire = \"10m\" }\n\
        [[service.backend]]\naddress = \"192.168.1.2\"\nweight = 2\n\
        [[service.backend]]\naddress = \"192.168.1.3:80\"\n\
        [[service]]\nname = \"dns\"\nlisten = \"[2001:db8::1]:53\"\nprotocol = \"udp\"\n\
        forwarding = \"dsr\"\n\
        [[service.backend]]\naddress = \"[2001:db8::2]:53\"\n";

    #[test]
    fn definitions_name_services_and_backends_by_identity() {
        let c = parse(TWO, "lb.toml").unwrap();
        let defs = service_defs(&c);
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[0].key.to_string(), "10.0.0.100:80/tcp");
        assert_eq!(defs[0].scheduler, "maglev 65537");
        assert_eq!(defs[0].expire, Some(std::time::Duration::from_secs(600)));
        assert_eq!(defs[0].backends[0].key.to_string(), "192.168.1.2:80");
        assert_eq!(defs[0].backends[0].weight, 2);
        assert_eq!(defs[1].scheduler, "roundrobin");
        assert_eq!(defs[1].key.proto, Proto::Udp);
    }

    #[test]
    fn entries_round_trip_through_identities() {
        let c = parse(TWO, "lb.toml").unwrap();
        let mut ids = Ids::default();
        ids.plan(&c.specs()).unwrap();
        let cat = Catalog::new(&c, &ids);
        for (svc, client) in [("web", "172.16.0.9"), ("dns", "2001:db8::99")] {
            let s = c.services.iter().find(|s| s.spec.name == svc).unwrap();
            let sid = ids.service_id(svc).unwrap();
            let bid = ids.backend_id(svc, s.backends[0].addr).unwrap();
            let key = StickKey {
                service_id: sid,
                client: addr_from_ip(client.parse().unwrap()).0,
            };
            let value = StickValue {
                backend_id: bid,
                _pad: 0,
                last_seen_ns: 7_000_000_123,
            };
            let o = cat.from_entry(&key, &value).unwrap();
            assert_eq!(o.client, ClientKey::host(client.parse().unwrap()));
            assert_eq!(o.last_seen_ms, 7000);
            let (k2, v2) = cat
                .to_entry(&Applied {
                    service: o.service,
                    client: o.client,
                    backend: o.backend,
                    last_seen_ms: o.last_seen_ms,
                })
                .unwrap();
            assert_eq!(k2, key);
            assert_eq!(v2.backend_id, bid);
            assert_eq!(v2.last_seen_ns, 7_000_000_000);
            let ev = StickEvent {
                client: key.client,
                service_id: sid,
                backend_id: bid,
                at_ns: 9_000_000_000,
                kind: lb_common::STICK_EVENT_NEW,
                family: addr_from_ip(client.parse().unwrap()).1,
                _pad: 0,
                seq: 1,
            };
            let p = cat.from_event(&ev).unwrap();
            assert_eq!(p.kind, ObservedKind::Picked);
            assert_eq!((p.service, p.backend), (o.service, o.backend));
        }
        // Unknown ids and identities are not converted.
        let bogus = StickKey {
            service_id: 999,
            client: [1, 0, 0, 0],
        };
        assert!(cat.from_entry(&bogus, &StickValue::default()).is_none());
        let web = service_key(&c.services[0]);
        assert!(cat
            .to_entry(&Applied {
                service: web,
                client: ClientKey::host("10.9.9.9".parse().unwrap()),
                backend: BackendKey {
                    addr: "192.168.1.77".parse().unwrap(),
                    port: 80
                },
                last_seen_ms: 1
            })
            .is_none());
    }

    /// Two nodes whose files list the backends in different orders (and so give them
    /// different ids) build the same Maglev table: slot by slot, the same backend
    /// address. That is what makes every node pick the same backend for a client no
    /// entry names yet.
    #[test]
    fn maglev_tables_depend_on_addresses_and_weights_alone() {
        let file = |order: &[usize]| {
            let mut t = String::from(
                "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\nforwarding = \"dsr\"\n\
                 scheduler = \"maglev\"\nmaglev_size = 1009\n",
            );
            for &j in order {
                t.push_str(&format!(
                    "[[service.backend]]\naddress = \"192.168.1.{j}:80\"\nweight = {j}\n"
                ));
            }
            parse(&t, "lb.toml").unwrap()
        };
        let table = |c: &Config| {
            let plan = Ids::default().plan(&c.specs()).unwrap();
            let addr: HashMap<u32, std::net::SocketAddr> =
                plan.backends.iter().map(|b| (b.id, b.addr)).collect();
            plan.services[0]
                .ring
                .iter()
                .map(|id| addr[id])
                .collect::<Vec<_>>()
        };
        let a = table(&file(&[1, 2, 3, 4]));
        let b = table(&file(&[3, 1, 4, 2]));
        assert_eq!(a.len(), 1009);
        assert_eq!(
            a, b,
            "same addresses and weights, any order: the same table"
        );
        let c = table(&file(&[1, 2, 3, 5]));
        assert_ne!(a, c, "another backend set: another table");
    }

    #[test]
    fn the_map_keeps_a_later_sighting_of_the_same_backend() {
        let v = |b, t| StickValue {
            backend_id: b,
            _pad: 0,
            last_seen_ns: t,
        };
        assert!(Catalog::keeps(&v(1, 10), &v(1, 5)));
        assert!(!Catalog::keeps(&v(1, 5), &v(1, 10)));
        assert!(
            !Catalog::keeps(&v(2, 10), &v(1, 5)),
            "another backend: the peer's decision wins"
        );
    }
}
