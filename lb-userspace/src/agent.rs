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
    net::SocketAddr,
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
    control::{self, Request, Response, MAX_REQUEST},
    dataplane::Dataplane,
    health::{HealthChecker, Target, TargetKey, Transition},
    loader::{self, LoadOptions, XdpMode},
    metrics, neigh,
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
    /// Index of each attached interface when it was attached (0: gone); see
    /// [`Agent::watch_interfaces`].
    ifindexes: BTreeMap<String, u32>,
    started: Instant,
    reloads: u64,
    stick_capacity: u32,
    /// Keeps the next hops of the data path resolved (started once attached).
    neigh: Option<neigh::Neighbours>,
}

type Shared = Arc<Mutex<Agent>>;

/// Locks the agent. A panic while it was held (a bug) must not take every later request,
/// health change and signal down with it: the lock is taken over instead.
fn lock(agent: &Shared) -> std::sync::MutexGuard<'_, Agent> {
    agent.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// CLOCK_MONOTONIC_COARSE in ns: the data path's clock (`bpf_ktime_get_coarse_ns`), for
/// entry ages and pinned entries.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime into a zeroed struct.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
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

/// The index of an interface in the agent's network namespace; 0 when there is none.
fn ifindex(name: &str) -> u32 {
    match std::ffi::CString::new(name) {
        // SAFETY: if_nametoindex with a valid C string.
        Ok(c) => unsafe { libc::if_nametoindex(c.as_ptr()) },
        Err(_) => 0,
    }
}

/// Attaches to (or adopts the pinned attachment of) one interface; returns how.
fn attach_one(
    ebpf: &mut Ebpf,
    layout: &PinLayout,
    mode: ModeChoice,
    iface: &str,
) -> Result<String> {
    let how = match mode {
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
                        log::warn!("{iface}: native XDP failed ({e:#}); falling back to skb mode");
                        pins::attach_pinned(ebpf, layout, iface, XdpMode::Skb)?
                    }
                }
            }
        }
    };
    if let Err(e) = pins::attach_queue_pinned(ebpf, layout, iface) {
        log::warn!("{iface}: {e:#}: packets whose next hop is not resolved yet are dropped there instead of queued");
    }
    Ok(match how {
        Attachment::Adopted => "adopted".to_string(),
        Attachment::Attached(m) => format!("{m:?}").to_lowercase(),
    })
}

/// Attaches to every interface; returns how, and each interface's index (0: gone).
type Attached = (Vec<(String, String)>, BTreeMap<String, u32>);

fn attach_all(ebpf: &mut Ebpf, layout: &PinLayout, opts: &AgentOptions) -> Result<Attached> {
    let mut out = Vec::new();
    let mut indexes = BTreeMap::new();
    for iface in &opts.ifaces {
        let index = ifindex(iface);
        indexes.insert(iface.clone(), index);
        if index == 0 {
            if layout.link(iface).exists() {
                // Attached by a previous agent, deleted since: not a typo. Start without
                // it (the other interfaces need their health checks and control plane);
                // it is attached when it comes back.
                log::warn!("interface {iface} is gone (it was attached before; deleted since): starting without it; it is attached again if {iface} comes back");
                out.push((iface.clone(), "gone".to_string()));
                continue;
            }
            let here: Vec<String> = std::fs::read_dir("/sys/class/net")
                .map(|d| {
                    let mut v: Vec<String> = d
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    v.sort();
                    v
                })
                .unwrap_or_default();
            bail!(
                "interface {iface:?} does not exist in the agent's network namespace: check --iface (interfaces here: {})",
                here.join(", ")
            );
        }
        let desc = attach_one(ebpf, layout, opts.xdp_mode, iface)?;
        log::info!("{iface}: XDP {desc}");
        out.push((iface.clone(), desc));
    }
    Ok((out, indexes))
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
        if let Some(n) = &self.neigh {
            n.set_needs(self.neigh_needs());
        }
        if persist {
            self.save()?;
        }
        Ok(())
    }

    /// What the neighbour keeper must keep resolved for this configuration.
    fn neigh_needs(&self) -> neigh::Needs {
        let mut needs = neigh::Needs {
            ifaces: self.opts.ifaces.clone(),
            ..Default::default()
        };
        for s in &self.config.services {
            let f = s.spec.forwarding;
            let mode = if f == crate::spec::Forwarding::Nat {
                neigh::Mode::Nat
            } else if f.is_encap() {
                neigh::Mode::Encap
            } else {
                neigh::Mode::L2Dsr
            };
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
    fn change(&mut self, next: Config) -> Result<(), String> {
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

    /// Re-reads the config file; the running configuration stays if it is refused. A file
    /// without services while services run is refused unless `allow_empty` (HAProxy, too,
    /// refuses a configuration without listeners).
    fn reload(&mut self, allow_empty: bool) -> Result<Value, String> {
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
                control::excerpt(&running.join(", "), 120)
            ));
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
            "admin": control::admin_name(b.admin),
            "health": match (&s.health.kind, &status) {
                (HealthKind::None, _) => "none",
                (_, Some(st)) if st.up => "up",
                (_, Some(_)) => "down",
                (_, None) => "up",
            },
            "state": match effective { BackendState::Up => "up", BackendState::Drain => "drain", BackendState::Down => "down" },
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
                "neighbours": self.neigh.as_ref().map(|n| n.status().json()),
                "warnings": self.neigh.as_ref().map(|n| n.status().warnings).unwrap_or_default(),
            })),
            Request::Reload { allow_empty } => self.reload(allow_empty),
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
                "drop_no_neigh": st.drop_no_neigh, "neigh_queued": st.neigh_queued, "neigh_report_lost": st.neigh_report_lost,
                "too_big_answered": st.too_big_answered, "drop_too_big": st.drop_too_big,
                "backends": backends,
            }));
        }
        let neigh = self.neigh.as_ref().map(|n| n.status());
        json!({
            "services": services,
            "stick_table": { "entries": self.stick_entries().len(), "capacity": self.stick_capacity },
            "neighbours": neigh.as_ref().map(|n| n.json()),
            "warnings": neigh.map(|n| n.warnings).unwrap_or_default(),
        })
    }

    /// Compares every interface with its index at attach time. One that disappeared took
    /// its XDP attachment with it (the kernel detaches a program from a deleted device):
    /// this is logged, its stale pinned link removed, and the other interfaces carry on.
    /// One that appears again (new index) is attached afresh.
    fn watch_interfaces(&mut self) {
        for i in 0..self.attached.len() {
            let name = self.attached[i].0.clone();
            let now = ifindex(&name);
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
                if let Err(e) = pins::detach_link(&self.layout, &name) {
                    log::warn!("{name}: cannot remove its stale pinned link: {e:#}");
                }
                // Recorded even on failure: retried only if the interface changes again.
                self.ifindexes.insert(name.clone(), now);
                match attach_one(&mut self._ebpf, &self.layout, self.opts.xdp_mode, &name) {
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

    fn on_transition(&mut self, t: Transition) {
        let _ = t;
        if let Err(e) = self.commit(false) {
            log::error!("applying a health change failed: {e:#}");
        }
    }
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

/// One request line read from a control connection.
enum RequestLine {
    Line(Vec<u8>),
    /// Longer than [`MAX_REQUEST`]: its bytes were skipped up to its newline (never
    /// buffered); the length is kept for the answer.
    TooLong(usize),
}

/// Reads the next line (without its newline) of at most `max` bytes; `None` at the end.
/// An oversized line costs no memory: it is skipped as it arrives.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<RequestLine>> {
    let mut line = Vec::new();
    let mut total = 0usize;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(match total {
                0 => None,
                n if n > max => Some(RequestLine::TooLong(n)),
                _ => Some(RequestLine::Line(line)),
            });
        }
        let (len, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if total + len <= max {
            line.extend_from_slice(&buf[..len]);
        } else if !line.is_empty() {
            line = Vec::new();
        }
        total += len;
        r.consume(len + usize::from(found));
        if found {
            return Ok(Some(if total > max {
                RequestLine::TooLong(total)
            } else {
                RequestLine::Line(line)
            }));
        }
    }
}

async fn serve_client(agent: Shared, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    while let Ok(Some(request)) = read_request(&mut rd, MAX_REQUEST).await {
        let decoded = match request {
            RequestLine::TooLong(n) => Err(control::too_long(n)),
            RequestLine::Line(bytes) => control::decode_line(&bytes),
        };
        let resp = match decoded {
            Ok(None) => continue,
            Err(e) => Response::err(e),
            Ok(Some(req)) => {
                let agent = agent.clone();
                let r = tokio::task::spawn_blocking(move || lock(&agent).handle(req)).await;
                match r {
                    Ok(Ok(v)) => Response::ok(v),
                    Ok(Err(e)) => Response::err(e),
                    Err(e) => Response::err(format!("internal error: {e}")),
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
        // On once the agent replicates to a cluster (issue 12, phase 2).
        stick_events: false,
        stick_events_bytes: None,
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
    let neigh_ring = ebpf
        .take_map(lb_common::MAP_NEIGH_EVENTS)
        .context("map NEIGH_EVENTS missing from the object")
        .and_then(|m| {
            aya::maps::RingBuf::try_from(m).context("map NEIGH_EVENTS is not a ring buffer")
        })?;
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
        ifindexes: BTreeMap::new(),
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
        neigh: None,
    };
    // Health first with known states, then maps, then traffic.
    let targets = agent.targets();
    agent
        .health
        .set_targets(targets, &|k| !initial_down.contains(k));
    let applying = Instant::now();
    agent.commit(true)?;
    log::info!(
        "configuration applied: {} services, {} backends in {} ms",
        agent.config.services.len(),
        agent
            .config
            .services
            .iter()
            .map(|s| s.backends.len())
            .sum::<usize>(),
        applying.elapsed().as_millis()
    );
    (agent.attached, agent.ifindexes) = attach_all(&mut agent._ebpf, &layout, &opts)?;
    // The next hops the data path needs: resolved now, then kept resolved. Its own handle
    // on the pinned stick table tells it which directly connected clients are pinned.
    let stick = aya::maps::MapData::from_pin(layout.map(lb_common::MAP_STICK))
        .ok()
        .and_then(|m| aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(m)).ok());
    let neighbours = neigh::Neighbours::start(Some(neigh_ring), stick, agent.neigh_needs())
        .await
        .context("starting the neighbour keeper")?;
    agent.neigh = Some(neighbours);
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
                let _ = tokio::task::spawn_blocking(move || lock(&agent).on_transition(t)).await;
            }
        });
    }
    {
        // Interfaces deleted (or re-created) under the agent: noticed within a second.
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let agent = agent.clone();
                let _ = tokio::task::spawn_blocking(move || lock(&agent).watch_interfaces()).await;
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
                let r = tokio::task::spawn_blocking(move || lock(&agent).reload(false)).await;
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
    f(&lock(agent))
}

pub(crate) type SharedAgent = Shared;

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, usize>> {
        // A tiny buffer, so that lines span many reads.
        let mut r = tokio::io::BufReader::with_capacity(3, input);
        let mut out = Vec::new();
        while let Some(l) = read_request(&mut r, max).await.unwrap() {
            out.push(match l {
                RequestLine::Line(b) => Ok(b),
                RequestLine::TooLong(n) => Err(n),
            });
        }
        out
    }

    #[tokio::test]
    async fn request_lines_are_bounded_and_oversized_ones_skipped() {
        assert_eq!(
            lines(b"ab\n\ncdef\nxyz", 4).await,
            vec![
                Ok(b"ab".to_vec()),
                Ok(vec![]),
                Ok(b"cdef".to_vec()),
                Ok(b"xyz".to_vec())
            ]
        );
        assert_eq!(
            lines(b"abcdefgh\nok\n0123456", 4).await,
            vec![Err(8), Ok(b"ok".to_vec()), Err(7)]
        );
        assert_eq!(lines(b"", 4).await, vec![]);
        assert_eq!(lines(b"\xff\xfe\n", 4).await, vec![Ok(vec![0xff, 0xfe])]);
    }
}
