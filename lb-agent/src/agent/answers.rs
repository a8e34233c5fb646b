//! The agent's answers to control requests: a request is first checked against the
//! configuration (`lb_model::control::check`, which also makes any change on a copy);
//! a change is applied, the other requests are answered from the maps and the health
//! checker (status, stats, lists, the stick table).

use std::{collections::BTreeMap, net::SocketAddr};

use lb_common::{
    addr_from_ip, ip_from_addr, sticky::judge, StickKey, StickValue, BACKEND_DOWN, BACKEND_DRAIN,
    BACKEND_UP,
};
use lb_model::{
    clock::monotonic_ns,
    config::{BackendConfig, ServiceConfig},
    control::{self, Request},
    spec::HealthKind,
};
use serde_json::{json, Value};

use super::state::Agent;
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

    fn backend_json(&self, s: &ServiceConfig, b: &BackendConfig) -> Value {
        let key = TargetKey {
            service: s.spec.name.clone(),
            backend: b.addr,
        };
        let status = self.health.status().get(&key).cloned();
        let id = self.ids.backend_id(&s.spec.name, b.addr);
        let stats = id
            .and_then(|i| self.dp.backend_stats(i).ok())
            .unwrap_or_default();
        let effective = b.admin.effective(self.healthy(&s.spec.name, b.addr));
        json!({
            "service": s.spec.name,
            "address": b.addr.to_string(),
            "id": id,
            "weight": b.weight,
            "admin": b.admin,
            "health": match (&s.health.kind, &status) {
                (HealthKind::None, _) => "none",
                (_, Some(st)) if st.up => "up",
                (_, Some(_)) => "down",
                (_, None) => "up",
            },
            "state": effective,
            // Health changes of state (up↔down) since the agent started: a rising count on a
            // backend that is up now is a flapping backend.
            "flaps": status.as_ref().map(|st| st.transitions).unwrap_or(0),
            "check": status,
            "packets": stats.packets,
            "bytes": stats.bytes,
            "new_clients": stats.new_clients,
        })
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
            Request::Status {} => Ok(json!({
                "instance": self.opts.instance,
                "pid": std::process::id(),
                "uptime_s": self.started.elapsed().as_secs(),
                "config": self.opts.config.display().to_string(),
                "interfaces": self.attached.iter().map(|(i, m)| json!({"name": i, "xdp": m})).collect::<Vec<_>>(),
                "pins": self.layout.root.display().to_string(),
                "services": self.config.services.len(),
                "backends": self.config.services.iter().map(|s| s.backends.len()).sum::<usize>(),
                "stick_table": { "entries": self.stick_entries().len(), "capacity": self.stick_capacity },
                "control_changes": self.changes,
                "reloads": self.reloads,
                "health_max_lag_ms": self.health.max_lag().as_millis() as u64,
            })),
            Request::Reload { allow_empty } => self.reload(allow_empty),
            Request::Stats {} => Ok(self.stats_json()),
            Request::ServiceList {} => Ok(Value::Array(
                self.config
                    .services
                    .iter()
                    .map(|s| {
                        let id = self.ids.service_id(&s.spec.name);
                        let st = id.and_then(|i| self.dp.service_stats(i).ok()).unwrap_or_default();
                        json!({
                            "name": s.spec.name, "id": id, "listen": s.spec.vip.to_string(),
                            "protocol": s.spec.protocol,
                            "scheduler": s.spec.scheduler,
                            "forwarding": s.spec.forwarding,
                            "expire_s": s.spec.expire.map(|d| d.as_secs_f64()),
                            "backends": s.backends.len(), "packets": st.packets, "new_clients": st.new_clients,
                        })
                    })
                    .collect(),
            )),
            Request::BackendList { service } => {
                if let Some(s) = &service {
                    self.service(s)?;
                }
                let mut v = Vec::new();
                for s in &self.config.services {
                    if service.as_ref().is_some_and(|n| *n != s.spec.name) {
                        continue;
                    }
                    for b in &s.backends {
                        v.push(self.backend_json(s, b));
                    }
                }
                Ok(Value::Array(v))
            }
            Request::TableShow { service, backend, limit } => self.table_show(service, backend, limit),
            Request::TableLookup { service, client } => self.table_lookup(&service, &client),
            Request::TableClear { service, client, backend } => self.table_clear(&service, client, backend),
            Request::TablePin { service, client, backend } => self.table_pin(&service, &client, &backend),
            // Answered by `control::check` above.
            Request::ServiceAdd { .. }
            | Request::ServiceRemove { .. }
            | Request::BackendAdd { .. }
            | Request::BackendRemove { .. }
            | Request::BackendWeight { .. }
            | Request::BackendState { .. } => Err("internal error: a configuration change was not applied".into()),
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
        let names: BTreeMap<u32, String> = self
            .config
            .services
            .iter()
            .filter_map(|s| {
                self.ids
                    .service_id(&s.spec.name)
                    .map(|i| (i, s.spec.name.clone()))
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
                rows.push(json!({
                    "service": names.get(&k.service_id).cloned().unwrap_or_else(|| format!("#{}", k.service_id)),
                    "client": ip_from_addr(&k.client, family).to_string(),
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

    fn client_key(&self, service: &str, client: &str) -> Result<StickKey, String> {
        let sid = self.service_id(service)?;
        let ip = control::parse_client(self.service(service)?, client)?;
        Ok(StickKey {
            service_id: sid,
            client: addr_from_ip(ip).0,
        })
    }

    fn table_lookup(&self, service: &str, client: &str) -> Result<Value, String> {
        let key = self.client_key(service, client)?;
        let Ok(v) = self.dp.stick.get(&key, 0) else {
            return Ok(
                json!({ "service": service, "client": client, "entry": null, "next_packet": "new client: fresh pick" }),
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
            "service": service, "client": client,
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
                let key = self.client_key(service, &c)?;
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
        let key = self.client_key(service, client)?;
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
        log::info!("table pin {service}: {client} -> {addr} by control command");
        Ok(json!({ "service": service, "client": client, "backend": addr.to_string() }))
    }

    /// Counters of every service and backend (also the source of the metrics).
    pub fn stats_json(&self) -> Value {
        let mut services = Vec::new();
        for s in &self.config.services {
            let id = self.ids.service_id(&s.spec.name);
            let st = id
                .and_then(|i| self.dp.service_stats(i).ok())
                .unwrap_or_default();
            let backends: Vec<Value> = s.backends.iter().map(|b| self.backend_json(s, b)).collect();
            services.push(json!({
                "name": s.spec.name,
                "packets": st.packets, "bytes": st.bytes, "new_clients": st.new_clients,
                "repick_expired": st.repick_expired, "repick_down": st.repick_down,
                "drop_no_backend": st.drop_no_backend, "drop_no_route": st.drop_no_route,
                "fib_miss": st.fib_miss, "pass_ttl": st.pass_ttl,
                "reply_packets": st.reply_packets, "reply_bytes": st.reply_bytes,
                "icmp_to_backend": st.icmp_to_backend, "icmp_unmatched": st.icmp_unmatched,
                "frag_forwarded": st.frag_forwarded, "frag_unmatched": st.frag_unmatched,
                "unpinned_not_syn": st.unpinned_not_syn, "unpinned_over_cap": st.unpinned_over_cap,
                "backends": backends,
            }));
        }
        json!({
            "services": services,
            "stick_table": { "entries": self.stick_entries().len(), "capacity": self.stick_capacity },
        })
    }
}
