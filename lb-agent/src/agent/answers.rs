//! The agent's answers to control requests: a request is first checked against the
//! configuration (`lb_model::control::check`, which also makes any change on a copy);
//! a change is applied, the other requests are answered from the maps and the health
//! checker (status, stats, lists, the stick table).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use lb_common::{
    addr_from_ip, ip_from_addr, sticky::judge, StickKey, StickValue, BACKEND_DOWN, BACKEND_DRAIN,
    BACKEND_UP,
};
use lb_model::{
    clock::monotonic_ns,
    config::{BackendConfig, ServiceConfig},
    control::{self, Request},
    spec::{HealthKind, StickOn},
    stats::{
        BackendRow, ClusterFigures, Counters, Health, Interface, Peers, ServiceListRow, ServiceRow,
        Stats, Status, StickFill,
    },
};
use serde_json::{json, Value};

use super::{census::Census, state::Agent};
use crate::health::TargetKey;

impl Agent {
    fn service(&self, name: &str) -> Result<&ServiceConfig, String> {
        control::find_service(&self.config, name)
    }

    fn service_id(&self, name: &str) -> Result<u32, String> {
        self.service(name)?;
        self.ids
            .service_id(name)
            .ok_or_else(|| format!("service {name:?} has no id yet"))
    }

    /// Finds a backend of a service by `ADDR:PORT` (or `ADDR` when unambiguous).
    fn backend_addr(&self, service: &str, address: &str) -> Result<SocketAddr, String> {
        control::find_backend(self.service(service)?, address)
    }

    /// A backend's row of the stats schema.
    fn backend_row(&self, s: &ServiceConfig, b: &BackendConfig, census: &Census) -> BackendRow {
        let key = TargetKey {
            service: s.spec.name.clone(),
            backend: b.addr,
        };
        let status = self.health.status().get(&key).cloned();
        let id = self.ids.backend_id(&s.spec.name, b.addr);
        let counters = id
            .and_then(|i| self.dp.backend_stats(i).ok())
            .unwrap_or_default();
        BackendRow {
            service: s.spec.name.clone(),
            address: b.addr.to_string(),
            id,
            weight: b.weight,
            admin: b.admin,
            health: match (&s.health.kind, &status) {
                (HealthKind::None, _) => Health::None,
                (_, Some(st)) if !st.up => Health::Down,
                _ => Health::Up,
            },
            state: b.admin.effective(self.healthy(&s.spec.name, b.addr)),
            flaps: status.as_ref().map_or(0, |st| st.transitions),
            check: status,
            counters: Counters(counters),
            pinned: census_count(census, &census.by_backend, id),
        }
    }

    /// The stick table's fill, from the last census.
    fn stick_fill(&self, census: &Census) -> StickFill {
        StickFill {
            entries: census.entries,
            capacity: u64::from(self.stick_capacity),
            census_age_ms: census.age_ms(),
        }
    }

    /// The `status` answer.
    pub fn status(&self) -> Status {
        let (neighbours, warnings) = self.neighbours();
        Status {
            instance: self.opts.instance.clone(),
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            config: self.opts.config.display().to_string(),
            interfaces: self
                .attached
                .iter()
                .map(|(name, xdp)| Interface {
                    name: name.clone(),
                    xdp: xdp.clone(),
                })
                .collect(),
            pins: self.layout.root.display().to_string(),
            services: self.config.services.len(),
            backends: self.config.services.iter().map(|s| s.backends.len()).sum(),
            stick_table: self.stick_fill(&self.census.latest()),
            control_changes: self.changes,
            reloads: self.reloads,
            health_max_lag_ms: u64::try_from(self.health.max_lag().as_millis()).unwrap_or(u64::MAX),
            neighbours,
            warnings,
            announce: self.announce.status(),
        }
    }

    fn stick_entries(&self) -> Vec<(StickKey, StickValue)> {
        self.dp.stick_entries()
    }

    /// Handles one control request.
    pub fn handle(&mut self, req: Request) -> Result<Value, String> {
        // Arguments and configuration changes are checked without the maps; a change is
        // then applied here, and the other requests are answered from the maps below.
        if let Some(edit) = control::check(&self.config, &req)? {
            self.change(edit.config)?;
            log::info!("{} by control command", edit.log);
            return Ok(edit.result);
        }
        match req {
            Request::Status {} => Ok(answer(&self.status())),
            Request::Reload { allow_empty } => self.reload(allow_empty),
            Request::Stats {} => Ok(answer(&self.stats())),
            Request::Peers {} => Ok(answer(&self.peers())),
            Request::ServiceList {} => {
                let rows: Vec<ServiceListRow> = self
                    .config
                    .services
                    .iter()
                    .map(|s| {
                        let id = self.ids.service_id(&s.spec.name);
                        let st = id
                            .and_then(|i| self.dp.service_stats(i).ok())
                            .unwrap_or_default();
                        ServiceListRow {
                            name: s.spec.name.clone(),
                            id,
                            listen: s.spec.vip.to_string(),
                            protocol: s.spec.protocol,
                            scheduler: s.spec.scheduler,
                            forwarding: s.spec.forwarding,
                            expire_s: s.spec.expire.map(|d| d.as_secs_f64()),
                            backends: s.backends.len(),
                            packets: st.packets,
                            new_clients: st.new_clients,
                        }
                    })
                    .collect();
                Ok(answer(&rows))
            }
            Request::BackendList { service } => {
                if let Some(s) = &service {
                    self.service(s)?;
                }
                let census = self.census.latest();
                let rows: Vec<BackendRow> = self
                    .config
                    .services
                    .iter()
                    .filter(|s| service.as_ref().is_none_or(|n| *n == s.spec.name))
                    .flat_map(|s| s.backends.iter().map(move |b| (s, b)))
                    .map(|(s, b)| self.backend_row(s, b, &census))
                    .collect();
                Ok(answer(&rows))
            }
            Request::TableShow {
                service,
                backend,
                limit,
            } => self.table_show(service, backend, limit),
            Request::TableLookup { service, client } => self.table_lookup(&service, &client),
            Request::TableClear {
                service,
                client,
                backend,
            } => self.table_clear(&service, client, backend),
            Request::TablePin {
                service,
                client,
                backend,
            } => self.table_pin(&service, &client, &backend),
            Request::NodeDrain {} | Request::NodeUndrain {} => {
                if self.config.announce.is_none() {
                    return Err("this node announces nothing: node.drain and node.undrain \
                                need an [announce] section in the config file (docs/CONFIG.md)"
                        .into());
                }
                if matches!(req, Request::NodeDrain {}) {
                    self.announce.drain(true)?;
                } else {
                    self.announce.undrain()?;
                }
                Ok(answer(&self.announce.status()))
            }
            // Answered by `control::check` above.
            Request::ServiceAdd { .. }
            | Request::ServiceRemove { .. }
            | Request::BackendAdd { .. }
            | Request::BackendRemove { .. }
            | Request::BackendWeight { .. }
            | Request::BackendState { .. } => {
                Err("internal error: a configuration change was not applied".into())
            }
        }
    }

    fn backend_by_id(&self) -> BTreeMap<u32, (String, SocketAddr)> {
        self.dp
            .applied()
            .backends
            .iter()
            .map(|b| (b.id, (b.service.clone(), b.addr)))
            .collect()
    }

    fn table_show(
        &self,
        service: Option<String>,
        backend: Option<String>,
        limit: Option<usize>,
    ) -> Result<Value, String> {
        let sid = service.as_deref().map(|s| self.service_id(s)).transpose()?;
        let bid = match (&service, &backend) {
            (Some(s), Some(b)) => {
                let addr = self.backend_addr(s, b)?;
                Some(self.ids.backend_id(s, addr).ok_or("backend has no id")?)
            }
            (None, Some(b)) => return Err(control::backend_needs_service(b)),
            _ => None,
        };
        // Name and what its clients stick by, per service id.
        let names: BTreeMap<u32, (String, StickOn)> = self
            .config
            .services
            .iter()
            .filter_map(|s| {
                self.ids
                    .service_id(&s.spec.name)
                    .map(|i| (i, (s.spec.name.clone(), s.spec.stick_on)))
            })
            .collect();
        let backends = self.backend_by_id();
        let now = monotonic_ns();
        let limit = limit.unwrap_or(100);
        let mut rows = Vec::new();
        let mut total = 0usize;
        for (k, v) in self.stick_entries() {
            if sid.is_some_and(|s| s != k.service_id) || bid.is_some_and(|b| b != v.backend_id) {
                continue;
            }
            total += 1;
            if rows.len() < limit {
                let family = if k.client[1..].iter().all(|w| *w == 0) && !names.is_empty() {
                    self.family_of(k.service_id)
                } else {
                    6
                };
                let ip = ip_from_addr(&k.client, family);
                // A network entry reads as the network (`10.1.2.0/24`), a host's as the
                // address.
                let client = match names.get(&k.service_id).map(|(_, on)| *on) {
                    Some(on @ StickOn::Network(_)) => on.network(ip).to_string(),
                    _ => ip.to_string(),
                };
                rows.push(json!({
                    "service": names.get(&k.service_id).map(|(n, _)| n.clone()).unwrap_or_else(|| format!("#{}", k.service_id)),
                    "client": client,
                    "backend": backends.get(&v.backend_id).map(|(_, a)| a.to_string()).unwrap_or_else(|| format!("#{} (removed)", v.backend_id)),
                    "idle_ms": now.saturating_sub(v.last_seen_ns) / 1_000_000,
                }));
            }
        }
        Ok(json!({ "entries": rows, "total": total, "shown": rows.len() }))
    }

    fn family_of(&self, service_id: u32) -> u8 {
        self.dp
            .applied()
            .services
            .iter()
            .find(|s| s.info.id == service_id)
            .map(|s| s.key.family)
            .unwrap_or(4)
    }

    /// The key of the entry `client` (an address or a network) uses in `service`, and
    /// how that entry is named (the address, or the network with `stick_on = "src/N"`).
    fn client_key(&self, service: &str, client: &str) -> Result<(StickKey, String), String> {
        let sid = self.service_id(service)?;
        let svc = self.service(service)?;
        let net = control::client_entry(svc, client)?;
        let shown = match svc.spec.stick_on {
            StickOn::Src => net.addr.to_string(),
            StickOn::Network(_) => net.to_string(),
        };
        Ok((
            StickKey {
                service_id: sid,
                client: addr_from_ip(net.addr).0,
            },
            shown,
        ))
    }

    fn table_lookup(&self, service: &str, client: &str) -> Result<Value, String> {
        let (key, network) = self.client_key(service, client)?;
        let network = match self.service(service)?.spec.stick_on {
            StickOn::Src => Value::Null,
            StickOn::Network(_) => Value::from(network),
        };
        let Ok(v) = self.dp.stick.get(&key, 0) else {
            return Ok(
                json!({ "service": service, "client": client, "network": network, "entry": null, "next_packet": "new client: fresh pick" }),
            );
        };
        let backend = self.dp.backends.get(&v.backend_id, 0).ok();
        let info = self
            .dp
            .applied()
            .services
            .iter()
            .find(|s| s.info.id == key.service_id)
            .map(|s| s.info);
        let now = monotonic_ns();
        let verdict = judge(
            &v,
            backend.as_ref(),
            key.service_id,
            now,
            info.map(|i| i.expiry_ns).unwrap_or(0),
        );
        let names = self.backend_by_id();
        Ok(json!({
            "service": service, "client": client, "network": network,
            "entry": {
                "backend": names.get(&v.backend_id).map(|(_, a)| a.to_string()),
                "backend_state": backend.map(|b| match b.state { BACKEND_UP => "up", BACKEND_DRAIN => "drain", BACKEND_DOWN => "down", _ => "removed" }),
                "idle_ms": now.saturating_sub(v.last_seen_ns) / 1_000_000,
            },
            "next_packet": match verdict {
                lb_common::sticky::Verdict::Hit => "stays on its backend",
                lb_common::sticky::Verdict::RepickExpired => "entry expired: fresh pick",
                lb_common::sticky::Verdict::RepickDown => "backend down or removed: fresh pick",
                lb_common::sticky::Verdict::New => "new client: fresh pick",
                lb_common::sticky::Verdict::UnpinnedNotSyn
                | lb_common::sticky::Verdict::UnpinnedOverCap => "new client: served by source hash",
            },
        }))
    }

    fn table_clear(
        &mut self,
        service: &str,
        client: Option<String>,
        backend: Option<String>,
    ) -> Result<Value, String> {
        let sid = self.service_id(service)?;
        let mut removed = 0u64;
        match (client, backend) {
            (Some(c), Some(b)) => return Err(control::client_and_backend(&c, &b)),
            (Some(c), None) => {
                let (key, _) = self.client_key(service, &c)?;
                if self.dp.stick.remove(&key).is_ok() {
                    removed = 1;
                }
            }
            (None, b) => {
                let bid = match b {
                    Some(b) => {
                        let addr = self.backend_addr(service, &b)?;
                        Some(
                            self.ids
                                .backend_id(service, addr)
                                .ok_or("backend has no id")?,
                        )
                    }
                    None => None,
                };
                let keys: Vec<StickKey> = self
                    .stick_entries()
                    .into_iter()
                    .filter(|(k, v)| k.service_id == sid && bid.is_none_or(|b| b == v.backend_id))
                    .map(|(k, _)| k)
                    .collect();
                for k in keys {
                    if self.dp.stick.remove(&k).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        log::info!("table clear {service}: {removed} entries removed by control command");
        Ok(json!({ "service": service, "removed": removed }))
    }

    fn table_pin(&mut self, service: &str, client: &str, backend: &str) -> Result<Value, String> {
        let (key, shown) = self.client_key(service, client)?;
        let addr = self.backend_addr(service, backend)?;
        let bid = self
            .ids
            .backend_id(service, addr)
            .ok_or("backend has no id")?;
        let value = StickValue {
            backend_id: bid,
            _pad: 0,
            last_seen_ns: monotonic_ns(),
        };
        self.dp
            .stick
            .insert(&key, &value, 0)
            .map_err(|e| format!("writing the stick table: {e}"))?;
        log::info!("table pin {service}: {shown} -> {addr} by control command");
        Ok(json!({ "service": service, "client": shown, "backend": addr.to_string() }))
    }

    /// Counters of every service and backend: the `stats` answer, and what the metrics
    /// endpoint and `top` show.
    pub fn stats(&self) -> Stats {
        let census = self.census.latest();
        let services = self
            .config
            .services
            .iter()
            .map(|s| {
                let id = self.ids.service_id(&s.spec.name);
                let counters = id
                    .and_then(|i| self.dp.service_stats(i).ok())
                    .unwrap_or_default();
                ServiceRow {
                    name: s.spec.name.clone(),
                    counters: Counters(counters),
                    pinned: census_count(&census, &census.by_service, id),
                    backends: s
                        .backends
                        .iter()
                        .map(|b| self.backend_row(s, b, &census))
                        .collect(),
                }
            })
            .collect();
        let (neighbours, warnings) = self.neighbours();
        Stats {
            services,
            stick_table: self.stick_fill(&census),
            neighbours,
            warnings,
            announce: self.announce.status(),
            cluster: self.replication.as_ref().map(|r| {
                ClusterFigures::new(
                    &r.cluster.status(),
                    r.events.load(std::sync::atomic::Ordering::Relaxed),
                    r.events_lost(),
                    r.written(),
                )
            }),
        }
    }

    /// The neighbour keeper's figures and the setup warnings (none before it starts).
    fn neighbours(&self) -> (Option<lb_model::stats::Neighbours>, Vec<String>) {
        match &self.neigh {
            Some(n) => {
                let st = n.status();
                (Some(st.schema()), st.warnings)
            }
            None => (None, Vec::new()),
        }
    }

    /// The `peers` answer.
    pub fn peers(&self) -> Peers {
        let Some(r) = &self.replication else {
            return Peers {
                clustered: false,
                synced: true,
                ..Default::default()
            };
        };
        let status = r.cluster.status();
        Peers {
            clustered: true,
            synced: status.synced,
            events_read: r.events.load(std::sync::atomic::Ordering::Relaxed),
            events_lost: r.events_lost(),
            entries_written: r.written(),
            scans: r.scans.load(std::sync::atomic::Ordering::Relaxed),
            scan_interval_ms: u64::try_from(r.scan_interval().as_millis()).unwrap_or(u64::MAX),
            status: serde_json::to_value(&status).ok(),
        }
    }
}

/// An answer as JSON (the schema types always serialise).
fn answer<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Entries of `id` in a census tally; `None` before the first census or without an id.
fn census_count(census: &Census, tally: &HashMap<u32, u64>, id: Option<u32>) -> Option<u64> {
    census.at?;
    Some(tally.get(&id?).copied().unwrap_or(0))
}
