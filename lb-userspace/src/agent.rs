//! `stickylb run`: the agent. It owns the desired configuration (config file plus
//! control-command changes), turns it plus health verdicts into map contents, and serves
//! the control socket and the metrics endpoint.
//!
//! Lifecycle: mount bpffs → load the program with pinned maps (adopting a previous
//! agent's maps) → recover ids from them → attach or adopt pinned links → apply the
//! configuration → health checks, control socket, metrics, signals. On exit the pins keep
//! the data path running; `--detach-on-exit` / `stickylb detach` remove it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use aya::Ebpf;
use lb_common::{
    addr_from_ip, ip_from_addr, sticky::judge, StickKey, StickValue, BACKEND_DOWN, BACKEND_DRAIN,
    BACKEND_UP,
};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    config::{self, BackendConfig, Config, ServiceConfig},
    control::{parse_request, BackendDef, Request, Response, ServiceDef, MAX_REQUEST},
    dataplane::Dataplane,
    health::{HealthChecker, Target, TargetKey, Transition},
    loader::{self, LoadOptions, XdpMode},
    metrics, neighbours,
    persist::{fingerprint, Meta, StateDir},
    pins::{self, Attachment, PinLayout},
    plan::Ids,
    spec::{AdminState, BackendState, HealthKind},
};

/// How to pick the XDP mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeChoice {
    /// Native where it works as-is, else skb (veth: skb; see docs/OPERATIONS.md).
    Auto,
    Native,
    Skb,
}

/// Options of `stickylb run`.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub config: PathBuf,
    pub ifaces: Vec<String>,
    pub xdp_mode: ModeChoice,
    pub socket: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub bpffs: PathBuf,
    pub instance: String,
    pub state_dir: PathBuf,
    pub detach_on_exit: bool,
    /// Data-path debug log (aya-log).
    pub debug: bool,
}

/// The running agent's state; one lock guards it all (changes are rare and short).
pub struct Agent {
    opts: AgentOptions,
    config: Config,
    config_fingerprint: String,
    changes: u64,
    ids: Ids,
    dp: Dataplane,
    _ebpf: Ebpf,
    health: HealthChecker,
    layout: PinLayout,
    state: StateDir,
    attached: Vec<(String, String)>,
    started: Instant,
    reloads: u64,
    stick_capacity: u32,
}

type Shared = Arc<Mutex<Agent>>;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime into a zeroed struct.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// Chooses the configuration to start from (see [`crate::persist`]).
fn initial_config(opts: &AgentOptions, state: &StateDir) -> Result<(Config, String, u64)> {
    let bytes = std::fs::read(&opts.config)
        .with_context(|| format!("reading config file {}", opts.config.display()))?;
    let fp = fingerprint(&bytes);
    if let Some((saved, meta)) = state.load() {
        if meta.config_fingerprint == fp {
            match config::parse(
                &saved,
                &state.dir.join("runtime.toml").display().to_string(),
            ) {
                Ok(c) => {
                    log::info!(
                        "using the runtime state saved in {} ({} control changes on top of {}, which is unchanged)",
                        state.dir.display(),
                        meta.changes,
                        opts.config.display()
                    );
                    return Ok((c, fp, meta.changes));
                }
                Err(e) => log::warn!("ignoring unreadable runtime state: {e}"),
            }
        } else {
            log::info!(
                "{} changed on disk since the runtime state was saved: using the file ({} control changes discarded)",
                opts.config.display(),
                meta.changes
            );
        }
    } else {
        log::info!("using config file {}", opts.config.display());
    }
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8", opts.config.display()))?;
    let cfg = config::parse(&text, &opts.config.display().to_string())?;
    Ok((cfg, fp, 0))
}

/// The network driver of an interface (ethtool GDRVINFO), if it can be read.
pub fn iface_driver(iface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if iface.len() >= 16 {
        return None;
    }
    let mut info = DrvInfo {
        cmd: 3,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: SIOCETHTOOL with a valid ifreq pointing at a drvinfo buffer.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, 0x8946, &mut req);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

fn attach_all(
    ebpf: &mut Ebpf,
    layout: &PinLayout,
    opts: &AgentOptions,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for iface in &opts.ifaces {
        let how = match opts.xdp_mode {
            ModeChoice::Native => pins::attach_pinned(ebpf, layout, iface, XdpMode::Native)?,
            ModeChoice::Skb => pins::attach_pinned(ebpf, layout, iface, XdpMode::Skb)?,
            ModeChoice::Auto => {
                if iface_driver(iface).as_deref() == Some("veth") {
                    log::info!("{iface} is a veth: using skb mode (native XDP on veth needs `tx off` on senders and `gro on` on peers; --xdp-mode native forces it)");
                    pins::attach_pinned(ebpf, layout, iface, XdpMode::Skb)?
                } else {
                    match pins::attach_pinned(ebpf, layout, iface, XdpMode::Native) {
                        Ok(a) => a,
                        Err(e) => {
                            log::warn!(
                                "{iface}: native XDP failed ({e:#}); falling back to skb mode"
                            );
                            pins::attach_pinned(ebpf, layout, iface, XdpMode::Skb)?
                        }
                    }
                }
            }
        };
        let desc = match how {
            Attachment::Adopted => "adopted".to_string(),
            Attachment::Attached(m) => format!("{m:?}").to_lowercase(),
        };
        log::info!("{iface}: XDP {desc}");
        out.push((iface.clone(), desc));
    }
    Ok(out)
}

impl Agent {
    /// Health-check targets of the configuration.
    fn targets(&self) -> Vec<Target> {
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

    fn healthy(&self, service: &str, addr: SocketAddr) -> bool {
        self.health
            .is_up(&TargetKey {
                service: service.to_string(),
                backend: addr,
            })
            .unwrap_or(true)
    }

    fn specs(&self) -> Vec<crate::spec::ServiceSpec> {
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
    fn commit(&mut self, persist: bool) -> Result<()> {
        self.health.set_targets(self.targets(), &|_| true);
        let specs = self.specs();
        let plan = self.ids.plan(&specs)?;
        self.dp.apply(&plan)?;
        let dsr: Vec<IpAddr> = self
            .config
            .services
            .iter()
            .filter(|s| s.spec.forwarding == crate::spec::Forwarding::Dsr)
            .flat_map(|s| s.backends.iter().map(|b| b.addr.ip()))
            .collect();
        for (ip, e) in neighbours::prime(&dsr) {
            log::warn!("cannot reach DSR backend {ip} to resolve its MAC: {e}");
        }
        if persist {
            self.save()?;
        }
        Ok(())
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

    /// Tries `change` on a copy of the configuration; keeps it only if it plans cleanly.
    fn change(
        &mut self,
        change: impl FnOnce(&mut Config) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut next = self.config.clone();
        change(&mut next)?;
        let specs: Vec<_> = next.services.iter().map(|s| s.spec.clone()).collect();
        crate::plan::validate(&specs).map_err(|e| e.to_string())?;
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

    /// Re-reads the config file; the running configuration stays if it is refused.
    fn reload(&mut self) -> Result<Value, String> {
        let bytes = std::fs::read(&self.opts.config)
            .map_err(|e| format!("reading {}: {e}", self.opts.config.display()))?;
        let text = String::from_utf8(bytes.clone())
            .map_err(|_| format!("{} is not UTF-8", self.opts.config.display()))?;
        let cfg = config::parse(&text, &self.opts.config.display().to_string())
            .map_err(|e| e.to_string())?;
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
        log::info!(
            "reloaded {} ({} services)",
            self.opts.config.display(),
            self.config.services.len()
        );
        Ok(
            json!({ "reloaded": self.opts.config.display().to_string(), "services": self.config.services.len() }),
        )
    }

    fn service(&self, name: &str) -> Result<&ServiceConfig, String> {
        self.config
            .services
            .iter()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .config
                    .services
                    .iter()
                    .map(|s| s.spec.name.as_str())
                    .collect();
                format!(
                    "no service named {name:?}; services: {}",
                    if names.is_empty() {
                        "(none)".into()
                    } else {
                        names.join(", ")
                    }
                )
            })
    }

    fn service_id(&self, name: &str) -> Result<u32, String> {
        self.service(name)?;
        self.ids
            .service_id(name)
            .ok_or_else(|| format!("service {name:?} has no id yet"))
    }

    /// Finds a backend of a service by `ADDR:PORT` (or `ADDR` when unambiguous).
    fn backend_addr(&self, service: &str, address: &str) -> Result<SocketAddr, String> {
        let s = self.service(service)?;
        let list = || {
            s.backends
                .iter()
                .map(|b| b.addr.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Ok(sa) = address.parse::<SocketAddr>() {
            if let Some(b) = s.backends.iter().find(|b| b.addr == sa) {
                return Ok(b.addr);
            }
        } else if let Ok(ip) = address.parse::<IpAddr>() {
            let found: Vec<_> = s.backends.iter().filter(|b| b.addr.ip() == ip).collect();
            if found.len() == 1 {
                return Ok(found[0].addr);
            }
        } else {
            return Err(format!(
                "{address:?} is not a backend address: use ADDR:PORT as listed ({})",
                list()
            ));
        }
        Err(format!(
            "service {service:?} has no backend {address}; backends: {}",
            list()
        ))
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
            "admin": admin_name(b.admin),
            "health": match (&s.health.kind, &status) {
                (HealthKind::None, _) => "none",
                (_, Some(st)) if st.up => "up",
                (_, Some(_)) => "down",
                (_, None) => "up",
            },
            "state": match effective { BackendState::Up => "up", BackendState::Drain => "drain", BackendState::Down => "down" },
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
        match req {
            Request::Status => Ok(json!({
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
            Request::Reload => self.reload(),
            Request::Stats => Ok(self.stats_json()),
            Request::ServiceList => Ok(Value::Array(
                self.config
                    .services
                    .iter()
                    .map(|s| {
                        let id = self.ids.service_id(&s.spec.name);
                        let st = id.and_then(|i| self.dp.service_stats(i).ok()).unwrap_or_default();
                        json!({
                            "name": s.spec.name, "id": id, "listen": s.spec.vip.to_string(),
                            "protocol": format!("{:?}", s.spec.protocol).to_lowercase(),
                            "scheduler": format!("{:?}", s.spec.scheduler).to_lowercase(),
                            "forwarding": format!("{:?}", s.spec.forwarding).to_lowercase(),
                            "expire_s": s.spec.expire.map(|d| d.as_secs_f64()),
                            "backends": s.backends.len(), "packets": st.packets, "new_clients": st.new_clients,
                        })
                    })
                    .collect(),
            )),
            Request::ServiceAdd { service } => {
                let sc = service_from_def(&service)?;
                let name = sc.spec.name.clone();
                self.change(|c| {
                    if c.services.iter().any(|s| s.spec.name == name) {
                        return Err(format!("service {name:?} exists already: remove it first or use backend commands"));
                    }
                    c.services.push(sc);
                    Ok(())
                })?;
                log::info!("service {name} added by control command");
                Ok(json!({ "added": name }))
            }
            Request::ServiceRemove { name } => {
                self.service(&name)?;
                self.change(|c| {
                    c.services.retain(|s| s.spec.name != name);
                    Ok(())
                })?;
                log::info!("service {name} removed by control command");
                Ok(json!({ "removed": name }))
            }
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
            Request::BackendAdd { service, backend } => {
                let bc = backend_from_def(&backend, self.service(&service)?)?;
                let addr = bc.addr;
                self.change(|c| {
                    let s = c.services.iter_mut().find(|s| s.spec.name == service).unwrap();
                    if s.backends.iter().any(|b| b.addr == addr) {
                        return Err(format!("service {service:?} already has backend {addr}"));
                    }
                    s.backends.push(bc.clone());
                    s.spec.backends.push(crate::spec::BackendSpec { addr, weight: bc.weight, state: bc.admin.effective(true) });
                    Ok(())
                })?;
                log::info!("backend {addr} added to {service} by control command");
                Ok(json!({ "added": addr.to_string(), "service": service }))
            }
            Request::BackendRemove { service, address } => {
                let addr = self.backend_addr(&service, &address)?;
                self.change(|c| {
                    let s = c.services.iter_mut().find(|s| s.spec.name == service).unwrap();
                    s.backends.retain(|b| b.addr != addr);
                    s.spec.backends.retain(|b| b.addr != addr);
                    Ok(())
                })?;
                log::info!("backend {addr} removed from {service} by control command (its clients are re-picked)");
                Ok(json!({ "removed": addr.to_string(), "service": service }))
            }
            Request::BackendWeight { service, address, weight } => {
                let addr = self.backend_addr(&service, &address)?;
                if weight > crate::plan::MAX_WEIGHT {
                    return Err(format!("weight {weight} is not accepted: use 0..={}", crate::plan::MAX_WEIGHT));
                }
                self.change(|c| {
                    let s = c.services.iter_mut().find(|s| s.spec.name == service).unwrap();
                    for b in s.backends.iter_mut().filter(|b| b.addr == addr) {
                        b.weight = weight;
                    }
                    for b in s.spec.backends.iter_mut().filter(|b| b.addr == addr) {
                        b.weight = weight;
                    }
                    Ok(())
                })?;
                log::info!("backend {addr} of {service}: weight {weight}");
                Ok(json!({ "service": service, "address": addr.to_string(), "weight": weight }))
            }
            Request::BackendState { service, address, state } => {
                let addr = self.backend_addr(&service, &address)?;
                let admin = parse_admin(&state)?;
                self.change(|c| {
                    let s = c.services.iter_mut().find(|s| s.spec.name == service).unwrap();
                    for b in s.backends.iter_mut().filter(|b| b.addr == addr) {
                        b.admin = admin;
                    }
                    for b in s.spec.backends.iter_mut().filter(|b| b.addr == addr) {
                        b.state = admin.effective(true);
                    }
                    Ok(())
                })?;
                log::info!("backend {addr} of {service}: state {}", admin_name(admin));
                Ok(json!({ "service": service, "address": addr.to_string(), "state": admin_name(admin) }))
            }
            Request::TableShow { service, backend, limit } => self.table_show(service, backend, limit),
            Request::TableLookup { service, client } => self.table_lookup(&service, &client),
            Request::TableClear { service, client, backend } => self.table_clear(&service, client, backend),
            Request::TablePin { service, client, backend } => self.table_pin(&service, &client, &backend),
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
            (None, Some(_)) => return Err("--backend needs a SERVICE".into()),
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
        let ip: IpAddr = client.parse().map_err(|_| {
            format!("{client:?} is not an IP address: give the client's IPv4 or IPv6 address")
        })?;
        let s = self.service(service)?;
        if ip.is_ipv4() != s.spec.vip.is_ipv4() {
            return Err(format!(
                "client {ip} is not of service {service:?}'s address family"
            ));
        }
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
            (Some(_), Some(_)) => return Err("give either --client or --backend, not both".into()),
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
                "backends": backends,
            }));
        }
        json!({
            "services": services,
            "stick_table": { "entries": self.stick_entries().len(), "capacity": self.stick_capacity },
        })
    }

    fn on_transition(&mut self, t: Transition) {
        let _ = t;
        if let Err(e) = self.commit(false) {
            log::error!("applying a health change failed: {e:#}");
        }
    }
}

fn admin_name(a: AdminState) -> &'static str {
    match a {
        AdminState::Ready => "ready",
        AdminState::Drain => "drain",
        AdminState::Maint => "maint",
    }
}

fn parse_admin(s: &str) -> Result<AdminState, String> {
    match s {
        "ready" => Ok(AdminState::Ready),
        "drain" => Ok(AdminState::Drain),
        "maint" => Ok(AdminState::Maint),
        other => Err(format!(
            "state {other:?} is not accepted: use ready, drain or maint"
        )),
    }
}

/// Parses a backend for `service` through the config parser, inside a copy of the
/// service's own listen address and forwarding mode (so family and port rules apply).
fn backend_from_def(b: &BackendDef, service: &ServiceConfig) -> Result<BackendConfig, String> {
    let svc = ServiceDef {
        name: service.spec.name.clone(),
        listen: service.spec.vip.to_string(),
        protocol: None,
        scheduler: None,
        forwarding: Some(format!("{:?}", service.spec.forwarding).to_lowercase()),
        expire: None,
        health: None,
        backends: vec![b.clone()],
    };
    let cfg = parse_defs(&svc)?;
    Ok(cfg.backends.into_iter().next().expect("one backend"))
}

fn service_from_def(d: &ServiceDef) -> Result<ServiceConfig, String> {
    parse_defs(d)
}

/// Parses a control-command definition through the config parser, so every default and
/// check is the config file's.
fn parse_defs(d: &ServiceDef) -> Result<ServiceConfig, String> {
    let q = |s: &str| toml_quote(s);
    let mut t = format!(
        "[[service]]\nname = {}\nlisten = {}\n",
        q(&d.name),
        q(&d.listen)
    );
    for (k, v) in [
        ("protocol", &d.protocol),
        ("scheduler", &d.scheduler),
        ("forwarding", &d.forwarding),
    ] {
        if let Some(v) = v {
            t.push_str(&format!("{k} = {}\n", q(v)));
        }
    }
    if let Some(e) = &d.expire {
        t.push_str(&format!("stick_table = {{ expire = {} }}\n", q(e)));
    }
    if let Some(h) = &d.health {
        t.push_str(&format!("health = {{ kind = {} }}\n", q(h)));
    }
    for b in &d.backends {
        t.push_str(&format!(
            "[[service.backend]]\naddress = {}\nweight = {}\nstate = {}\n",
            q(&b.address),
            b.weight,
            q(&b.state)
        ));
    }
    let mut c = config::parse(&t, "request").map_err(|e| e.to_string())?;
    Ok(c.services.remove(0))
}

fn toml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Checks the connecting process: root or the agent's own user only.
fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if cred.uid() == 0 || cred.uid() == me {
        Ok(())
    } else {
        Err(format!(
            "permission denied: uid {} may not control stickylb (root or uid {me} only)",
            cred.uid()
        ))
    }
}

async fn serve_client(agent: Shared, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut lines =
        BufReader::new(tokio::io::AsyncReadExt::take(rd, MAX_REQUEST as u64 * 16)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let resp = if line.len() > MAX_REQUEST {
            Response::err(format!(
                "request of {} bytes refused: at most {MAX_REQUEST}",
                line.len()
            ))
        } else {
            match parse_request(&line) {
                Err(e) => Response::err(e),
                Ok(req) => {
                    let agent = agent.clone();
                    let r = tokio::task::spawn_blocking(move || agent.lock().unwrap().handle(req))
                        .await;
                    match r {
                        Ok(Ok(v)) => Response::ok(v),
                        Ok(Err(e)) => Response::err(e),
                        Err(e) => Response::err(format!("internal error: {e}")),
                    }
                }
            }
        };
        let mut out = serde_json::to_string(&resp)
            .unwrap_or_else(|_| "{\"ok\":false,\"error\":\"encoding\"}".into());
        out.push('\n');
        if wr.write_all(out.as_bytes()).await.is_err() {
            break;
        }
    }
}

async fn control_server(agent: Shared, listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if let Err(e) = peer_allowed(&stream) {
            log::warn!("control socket: {e}");
            let mut s = stream;
            let mut line = serde_json::to_string(&Response::err(e)).unwrap();
            line.push('\n');
            let _ = s.write_all(line.as_bytes()).await;
            continue;
        }
        tokio::spawn(serve_client(agent.clone(), stream));
    }
}

fn bind_socket(path: &std::path::Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another agent is serving {}: stop it first or pass a different --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Runs the agent until SIGTERM / SIGINT.
pub fn run(opts: AgentOptions) -> Result<()> {
    pins::check_instance_name(&opts.instance)?;
    if opts.ifaces.is_empty() {
        bail!("no interface given: pass --iface IF (repeatable) for every interface traffic arrives on");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: AgentOptions) -> Result<()> {
    let state = StateDir::new(opts.state_dir.clone());
    let (config, fp, changes) = initial_config(&opts, &state)?;
    let stick_capacity: u32 = config
        .services
        .iter()
        .map(|s| s.stick_table_size as u64)
        .sum::<u64>()
        .clamp(1024, u32::MAX as u64) as u32;
    let bpffs = pins::ensure_bpffs(&opts.bpffs)?;
    let layout = PinLayout::new(&bpffs, &opts.instance);
    let adopting = layout.has_state();
    let mut ebpf = loader::load(&LoadOptions {
        stick_table_size: stick_capacity,
        pin_dir: Some(layout.maps_dir()),
        debug: opts.debug,
    })?;
    if opts.debug {
        // Data-path log lines (aya-log) go to this process's log at debug level.
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(mut logger) => {
                // Drain the data path's log ring every 100 ms (debug mode only).
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
                    loop {
                        tick.tick().await;
                        logger.flush();
                    }
                });
                log::info!("data-path debug log on (RUST_LOG=debug to see it)");
            }
            Err(e) => log::warn!("cannot start the data-path debug log: {e}"),
        }
    }
    let mut dp = Dataplane::new(&mut ebpf)?;
    let mut ids = Ids::default();
    let mut initial_down = std::collections::BTreeSet::new();
    let real_capacity = aya::maps::MapInfo::from_pin(layout.map(lb_common::MAP_STICK))
        .map(|i| i.max_entries())
        .unwrap_or(stick_capacity);
    if adopting {
        let found = dp.adopt_from_maps()?;
        let specs: Vec<_> = config.services.iter().map(|s| s.spec.clone()).collect();
        ids.adopt(&specs, &found);
        for s in &config.services {
            for b in &s.backends {
                if let Some(id) = ids.backend_id(&s.spec.name, b.addr) {
                    if found
                        .backends
                        .iter()
                        .any(|e| e.id == id && e.value.state == BACKEND_DOWN)
                        && b.admin != AdminState::Maint
                    {
                        initial_down.insert(TargetKey {
                            service: s.spec.name.clone(),
                            backend: b.addr,
                        });
                    }
                }
            }
        }
        log::info!(
            "adopted pinned state in {}: {} services, {} backends, {} stick entries",
            layout.root.display(),
            found.services.len(),
            found.backends.len(),
            dp.stick_entries().len()
        );
        if real_capacity != stick_capacity {
            log::warn!("the pinned stick table holds {real_capacity} entries; the config asks for {stick_capacity}: `stickylb detach` and restart to resize (clients are then re-picked)");
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Transition>();
    let health = HealthChecker::new(tx);
    let mut agent = Agent {
        attached: Vec::new(),
        opts: opts.clone(),
        config,
        config_fingerprint: fp,
        changes,
        ids,
        dp,
        _ebpf: ebpf,
        health,
        layout: layout.clone(),
        state,
        started: Instant::now(),
        reloads: 0,
        stick_capacity: real_capacity,
    };
    // Health first with known states, then maps, then traffic.
    let targets = agent.targets();
    agent
        .health
        .set_targets(targets, &|k| !initial_down.contains(k));
    agent.commit(true)?;
    agent.attached = attach_all(&mut agent._ebpf, &layout, &opts)?;
    let agent: Shared = Arc::new(Mutex::new(agent));

    let listener = bind_socket(&opts.socket)?;
    log::info!("control socket {}", opts.socket.display());
    tokio::spawn(control_server(agent.clone(), listener));
    if let Some(addr) = opts.metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding metrics on {addr}"))?;
        log::info!("metrics on http://{addr}/metrics");
        tokio::spawn(metrics::serve(agent.clone(), l));
    }
    {
        let agent = agent.clone();
        tokio::spawn(async move {
            while let Some(t) = rx.recv().await {
                let agent = agent.clone();
                let _ = tokio::task::spawn_blocking(move || agent.lock().unwrap().on_transition(t))
                    .await;
            }
        });
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    log::info!("stickylb running");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let agent = agent.clone();
                let r = tokio::task::spawn_blocking(move || agent.lock().unwrap().reload()).await;
                if let Ok(Err(e)) = r {
                    log::error!("SIGHUP: {e}");
                }
            }
        }
    }
    let _ = std::fs::remove_file(&opts.socket);
    if opts.detach_on_exit {
        let removed = pins::detach_all(&layout)?;
        StateDir::new(opts.state_dir.clone()).clear();
        log::info!(
            "detached from {} and removed pinned state",
            removed.join(", ")
        );
    } else {
        log::info!(
            "stopping; the data path keeps running from pinned state ({})",
            layout.root.display()
        );
    }
    Ok(())
}

/// Metrics need the agent; re-exported for the metrics module.
pub(crate) fn with_agent<T>(agent: &Shared, f: impl FnOnce(&Agent) -> T) -> T {
    f(&agent.lock().unwrap())
}

pub(crate) type SharedAgent = Shared;
