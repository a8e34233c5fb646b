//! The running agent's state and how it changes: the desired configuration (config file
//! plus control-command changes), the health verdicts, and applying both to the maps
//! (`commit`), a control change (`change`), a reload, a health transition, an interface
//! that went or came back. One lock guards it all (changes are rare and short).

use std::{collections::BTreeMap, net::SocketAddr, time::Instant};

use anyhow::Result;
use aya::Ebpf;
use lb_model::{
    clock::unix_ms,
    config::{self, Config},
    plan::Ids,
    spec::HealthKind,
    vocab::excerpt,
};
use serde_json::{json, Value};

use super::{attach, neigh, AgentOptions};
use crate::{
    dataplane::Dataplane,
    health::{HealthChecker, Target, TargetKey, Transition},
    persist::{fingerprint, Meta, StateDir},
    pins::PinLayout,
};

/// The running agent's state; one lock guards it all (changes are rare and short).
pub struct Agent {
    pub(super) opts: AgentOptions,
    pub(super) config: Config,
    pub(super) config_fingerprint: String,
    pub(super) changes: u64,
    pub(super) ids: Ids,
    pub(super) dp: Dataplane,
    pub(super) _ebpf: Ebpf,
    pub(super) health: HealthChecker,
    pub(super) layout: PinLayout,
    pub(super) state: StateDir,
    pub(super) attached: Vec<(String, String)>,
    /// Index of each attached interface when it was attached (0: gone); see
    /// [`Agent::watch_interfaces`].
    pub(super) ifindexes: BTreeMap<String, u32>,
    pub(super) started: Instant,
    pub(super) reloads: u64,
    pub(super) stick_capacity: u32,
    /// The stick table's last count.
    pub(super) census: std::sync::Arc<super::census::StickCensus>,
    /// Keeps the next hops of the data path resolved (started once attached).
    pub(super) neigh: Option<neigh::Neighbours>,
    /// VIP announcement and draining (`[announce]`).
    pub(super) announce: std::sync::Arc<crate::announce::Announce>,
    /// `[cluster]`'s replication, when the configuration has one.
    pub(super) replication: Option<std::sync::Arc<super::replication::Replication>>,
    /// Whether this node holds the cluster's table (see [`Agent::synced`]).
    pub(super) synced: tokio::sync::watch::Receiver<bool>,
    /// Keeps the constant `true` of a node without `[cluster]` open.
    pub(super) _synced_constant: Option<tokio::sync::watch::Sender<bool>>,
}

impl Agent {
    /// Whether this node is synced with its cluster (every peer taught it its table, or
    /// was waited for `sync_timeout`; docs/CLUSTER.md "Synced"): false until then, true
    /// for good afterwards. A node without `[cluster]` is always synced (a constant
    /// `true`). Issue 13 announces the VIP only once this is true.
    pub fn synced(&self) -> tokio::sync::watch::Receiver<bool> {
        self.synced.clone()
    }

    /// A receiver that is `true` for good (a node without `[cluster]`), with the sender
    /// that keeps it open.
    pub(super) fn always_synced() -> (
        tokio::sync::watch::Receiver<bool>,
        Option<tokio::sync::watch::Sender<bool>>,
    ) {
        let (tx, rx) = tokio::sync::watch::channel(true);
        (rx, Some(tx))
    }

    /// Health-check targets of the configuration.
    pub(super) fn targets(&self) -> Vec<Target> {
        let mut v = Vec::new();
        for s in &self.config.services {
            if s.health.kind == HealthKind::None {
                continue;
            }
            for b in &s.backends {
                let port = if b.addr.port() == 0 {
                    s.spec.vip.port()
                } else {
                    b.addr.port()
                };
                if port == 0 {
                    continue; // all-ports service with a port-less backend: nothing to check
                }
                v.push(Target {
                    key: TargetKey {
                        service: s.spec.name.clone(),
                        backend: b.addr,
                    },
                    check_addr: SocketAddr::new(b.addr.ip(), port),
                    config: s.health.clone(),
                });
            }
        }
        v
    }

    pub(super) fn healthy(&self, service: &str, addr: SocketAddr) -> bool {
        self.health
            .is_up(&TargetKey {
                service: service.to_string(),
                backend: addr,
            })
            .unwrap_or(true)
    }

    fn specs(&self) -> Vec<lb_model::spec::ServiceSpec> {
        self.config
            .services
            .iter()
            .map(|s| {
                let mut spec = s.spec.clone();
                for (b, bc) in spec.backends.iter_mut().zip(&s.backends) {
                    b.weight = bc.weight;
                    b.state = bc.admin.effective(self.healthy(&s.spec.name, bc.addr));
                }
                spec
            })
            .collect()
    }

    /// Applies the desired state to the maps; with `persist`, saves it.
    pub(super) fn commit(&mut self, persist: bool) -> Result<()> {
        self.health.set_targets(self.targets(), &|_| true);
        let specs = self.specs();
        let plan = self.ids.plan(&specs)?;
        self.dp.apply(&plan)?;
        if let Some(r) = &self.replication {
            r.on_commit(&self.config, &self.ids);
        }
        if let Some(n) = &self.neigh {
            n.set_needs(self.neigh_needs());
        }
        if persist {
            self.save()?;
        }
        Ok(())
    }

    /// What the neighbour keeper must keep resolved for this configuration.
    pub(super) fn neigh_needs(&self) -> neigh::Needs {
        let mut needs = neigh::Needs {
            ifaces: self.opts.ifaces.clone(),
            ..Default::default()
        };
        for s in &self.config.services {
            let mode = neigh::Mode::from(s.spec.forwarding);
            for b in &s.backends {
                needs
                    .backends
                    .push((s.spec.name.clone(), b.addr.ip(), mode));
            }
            match mode {
                neigh::Mode::Nat => needs.nat_services.extend(self.ids.service_id(&s.spec.name)),
                neigh::Mode::L2Dsr => needs.dsr_vips.push((s.spec.name.clone(), s.spec.vip.ip())),
                neigh::Mode::Encap => {}
            }
        }
        needs
    }

    fn save(&self) -> Result<()> {
        let meta = Meta {
            config_path: self.opts.config.display().to_string(),
            config_fingerprint: self.config_fingerprint.clone(),
            saved_unix_ms: unix_ms(),
            changes: self.changes,
        };
        self.state.save(&self.config.to_toml(), &meta)
    }

    /// Makes `next` (a changed copy of the configuration, see [`control::check`]) the
    /// running configuration; keeps the old one if it cannot be applied.
    pub(super) fn change(&mut self, next: Config) -> Result<(), String> {
        let specs: Vec<_> = next.services.iter().map(|s| s.spec.clone()).collect();
        lb_model::plan::validate(&specs).map_err(|e| e.to_string())?;
        crate::health::tls::check_config(&next)?;
        let previous = std::mem::replace(&mut self.config, next);
        self.changes += 1;
        if let Err(e) = self.commit(true) {
            self.config = previous;
            self.changes -= 1;
            let _ = self.commit(false);
            return Err(format!("{e:#}"));
        }
        Ok(())
    }

    /// Re-reads the config file; the running configuration stays if it is refused. A file
    /// without services while services run is refused unless `allow_empty` (HAProxy, too,
    /// refuses a configuration without listeners).
    pub(super) fn reload(&mut self, allow_empty: bool) -> Result<Value, String> {
        let started = Instant::now();
        let bytes = std::fs::read(&self.opts.config)
            .map_err(|e| format!("reading {}: {e}", self.opts.config.display()))?;
        let text = String::from_utf8(bytes.clone()).map_err(|e| {
            format!(
                "{} is not UTF-8 (invalid byte at offset {}): save it as UTF-8; the running configuration is kept",
                self.opts.config.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        let cfg = config::parse(&text, &self.opts.config.display().to_string())
            .map_err(|e| e.to_string())?;
        crate::health::tls::check_config(&cfg).map_err(|e| {
            format!(
                "reload refused, running configuration kept: {}: {e}",
                self.opts.config.display()
            )
        })?;
        if cfg.services.is_empty() && !self.config.services.is_empty() && !allow_empty {
            let running: Vec<&str> = self
                .config
                .services
                .iter()
                .map(|s| s.spec.name.as_str())
                .collect();
            return Err(format!(
                "reload refused, running configuration kept: {} defines no services, and \
                 reloading it would remove all {} running ({}); fix the file, or run \
                 `stickylb reload --allow-empty` to remove them on purpose",
                self.opts.config.display(),
                running.len(),
                excerpt(&running.join(", "), 120)
            ));
        }
        if cfg.cluster != self.config.cluster {
            log::warn!(
                "{}: [cluster] changed; it is read when the agent starts (peers, credentials, listener): restart the agent to apply it (the services are applied now)",
                self.opts.config.display()
            );
        }
        let previous = std::mem::replace(&mut self.config, cfg);
        let (prev_fp, prev_changes) = (self.config_fingerprint.clone(), self.changes);
        self.config_fingerprint = fingerprint(&bytes);
        self.changes = 0;
        if let Err(e) = self.commit(true) {
            self.config = previous;
            self.config_fingerprint = prev_fp;
            self.changes = prev_changes;
            let _ = self.commit(false);
            return Err(format!("reload refused, running configuration kept: {e:#}"));
        }
        self.reloads += 1;
        let ms = started.elapsed().as_millis() as u64;
        log::info!(
            "reloaded {} ({} services) in {ms} ms",
            self.opts.config.display(),
            self.config.services.len()
        );
        Ok(
            json!({ "reloaded": self.opts.config.display().to_string(), "services": self.config.services.len(), "ms": ms }),
        )
    }

    /// Compares every interface with its index at attach time. One that disappeared took
    /// its XDP attachment with it (the kernel detaches a program from a deleted device):
    /// this is logged, its stale pinned link removed, and the other interfaces carry on.
    /// One that appears again (new index) is attached afresh.
    pub(super) fn watch_interfaces(&mut self) {
        for i in 0..self.attached.len() {
            let name = self.attached[i].0.clone();
            let now = attach::ifindex(&name);
            let known = self.ifindexes.get(&name).copied().unwrap_or(0);
            if now == known {
                continue;
            }
            if known != 0 {
                // The pinned link stays (defunct) until the interface is back: it marks the
                // interface as attached before, so an agent restarted meanwhile starts
                // without it instead of refusing it as unknown.
                log::warn!(
                    "interface {name} is gone (ifindex {known} deleted): its XDP attachment went with it; the other interfaces keep forwarding; it is attached again if {name} comes back"
                );
                self.attached[i].1 = "gone".into();
                self.ifindexes.insert(name.clone(), 0);
            }
            if now != 0 {
                if let Err(e) = attach::detach_link(&self.layout, &name) {
                    log::warn!("{name}: cannot remove its stale pinned link: {e:#}");
                }
                // Recorded even on failure: retried only if the interface changes again.
                self.ifindexes.insert(name.clone(), now);
                match attach::attach_one(&mut self._ebpf, &self.layout, self.opts.xdp_mode, &name) {
                    Ok(desc) => {
                        log::info!("interface {name} is back (ifindex {now}): XDP {desc}");
                        self.attached[i].1 = desc;
                    }
                    Err(e) => {
                        log::error!("interface {name} is back (ifindex {now}) but attaching failed: {e:#}; it is retried when the interface changes again");
                        self.attached[i].1 = "attach failed".into();
                    }
                }
            }
        }
    }

    /// What the announcer needs: the `[announce]` section, and per VIP whether one of
    /// its services has a backend taking traffic and its packets so far.
    pub(super) fn announce_inputs(&self) -> Option<crate::announce::Inputs> {
        let cfg = self.config.announce.clone()?;
        let vips = lb_model::announce::vips(&cfg, &self.config.services)
            .into_iter()
            .map(|(vip, services)| crate::announce::VipInput {
                vip,
                any_healthy: services.iter().any(|s| {
                    s.backends.iter().any(|b| {
                        b.admin.effective(self.healthy(&s.spec.name, b.addr))
                            != lb_model::spec::BackendState::Down
                    })
                }),
                packets: services
                    .iter()
                    .filter_map(|s| self.ids.service_id(&s.spec.name))
                    .filter_map(|id| self.dp.service_stats(id).ok())
                    .map(|st| st.packets)
                    .sum(),
                services: services.iter().map(|s| s.spec.name.clone()).collect(),
            })
            .collect();
        Some(crate::announce::Inputs { config: cfg, vips })
    }

    pub(super) fn on_transition(&mut self, t: Transition) {
        let _ = t;
        if let Err(e) = self.commit(false) {
            log::error!("applying a health change failed: {e:#}");
        }
    }
}
