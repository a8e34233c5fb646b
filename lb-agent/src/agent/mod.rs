//! `stickylb run`: the agent. It owns the desired configuration (config file plus
//! control-command changes), turns it plus health verdicts into map contents, and serves
//! the control socket and the metrics endpoint.
//!
//! - [`state`]: the agent's state and how it changes (config, health, interfaces).
//! - [`answers`]: the answers to control requests.
//! - [`attach`]: attaching the program to interfaces (the XDP mode, pinned links).
//! - [`census`]: the stick table's fill, counted in the background.
//! - [`interfaces`]: link events from netlink (an interface deleted or back).
//! - [`neigh`]: the next hops the data path needs, kept resolved (managed neighbour
//!   entries, the data path's reports of unresolved ones, start-time checks).
//! - [`replication`]: `[cluster]`: the stick table replicated to peers (lb-cluster).
//! - this module: options and the run loop.
//!
//! Lifecycle: mount bpffs → load the program with pinned maps (adopting a previous
//! agent's maps) → recover ids from them → attach or adopt pinned links → apply the
//! configuration → neighbour keeper → health checks, control socket, metrics, signals. On exit the pins keep
//! the data path running; `--detach-on-exit` / `stickylb detach` remove it.

pub mod answers;
pub mod attach;
pub mod census;
pub mod interfaces;
pub mod neigh;
pub mod replication;
pub mod state;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use lb_common::BACKEND_DOWN;
use lb_model::{
    config::{self, Config},
    plan::Ids,
    spec::AdminState,
    sync::lock,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use self::census::StickCensus;
pub use self::{attach::XdpMode, state::Agent};
use crate::{
    control::server,
    dataplane::Dataplane,
    health::{HealthChecker, TargetKey, Transition},
    loader::{self, LoadOptions},
    metrics,
    persist::{fingerprint, StateDir},
    pins::{self, PinLayout},
};

/// Options of `stickylb run`.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub config: PathBuf,
    pub ifaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub socket: PathBuf,
    pub metrics: Option<SocketAddr>,
    pub bpffs: PathBuf,
    pub instance: String,
    pub state_dir: PathBuf,
    pub detach_on_exit: bool,
    /// Data-path debug log (aya-log).
    pub debug: bool,
}

/// The agent, shared by the tasks that serve it.
pub type SharedAgent = Arc<Mutex<Agent>>;

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
    crate::health::tls::check_config(&config)
        .map_err(|e| anyhow::anyhow!("{}: {e}", opts.config.display()))?;
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
        // A cluster replicates what the data path decides: it emits events.
        stick_events: config.cluster.is_some(),
        stick_event_slots: None,
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
    let census = StickCensus::open(&layout.map(lb_common::MAP_STICK))?;
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
            census.count().entries
        );
        if real_capacity != stick_capacity {
            log::warn!("the pinned stick table holds {real_capacity} entries; the config asks for {stick_capacity}: `stickylb detach` and restart to resize (clients are then re-picked)");
        }
    }
    let announce = Arc::new(crate::announce::Announce::new(&opts.state_dir));
    let (tx, mut rx) = mpsc::unbounded_channel::<Transition>();
    let health = HealthChecker::new(tx);
    let (synced, synced_constant) = Agent::always_synced();
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
        census: census.clone(),
        neigh: None,
        announce: announce.clone(),
        replication: None,
        synced,
        _synced_constant: synced_constant,
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
    if let Some(cfg) = agent.config.cluster.clone() {
        // After the first commit (ids known), before traffic: entries the peers teach
        // find their services and backends.
        let ring = crate::event_ring::EventRing::take(&mut agent._ebpf)
            .context("mapping the stick-table events rings")?;
        let lost: aya::maps::PerCpuArray<aya::maps::MapData, u64> = agent
            ._ebpf
            .take_map(lb_common::MAP_STICK_EVENTS_LOST)
            .context("map STICK_EVENTS_LOST missing from the object")?
            .try_into()?;
        let r = replication::Replication::start(
            cfg,
            &agent.config,
            &agent.ids,
            replication::Handles {
                stick: aya::maps::MapData::from_pin(layout.map(lb_common::MAP_STICK))
                    .context("opening the pinned stick table")?,
                ring,
                lost,
                writer: crate::loader::stick_writer(&agent._ebpf),
            },
            real_capacity as usize,
        )
        .await?;
        census.scan_for(r.clone());
        agent.synced = r.cluster.subscribe_synced();
        agent._synced_constant = None;
        agent.replication = Some(r);
    }
    (agent.attached, agent.ifindexes) =
        attach::attach_all(&mut agent._ebpf, &layout, &opts.ifaces, opts.xdp_mode)?;
    // The next hops the data path needs: resolved now, then kept resolved. Its own handle
    // on the pinned stick table tells it which directly connected clients are pinned.
    let stick = aya::maps::MapData::from_pin(layout.map(lb_common::MAP_STICK))
        .ok()
        .and_then(|m| aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(m)).ok());
    let neighbours = neigh::Neighbours::start(Some(neigh_ring), stick, agent.neigh_needs())
        .await
        .context("starting the neighbour keeper")?;
    agent.neigh = Some(neighbours);
    let agent: SharedAgent = Arc::new(Mutex::new(agent));

    census.spawn();
    let listener = server::bind(&opts.socket)?;
    log::info!("control socket {}", opts.socket.display());
    let handler: server::Handler = {
        let agent = agent.clone();
        Arc::new(move |req| lock(&agent).handle(req))
    };
    tokio::spawn(server::serve(handler, listener));
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
        // Interfaces deleted (or re-created) under the agent: noticed on the kernel's event.
        let watched: std::collections::BTreeSet<String> = opts.ifaces.iter().cloned().collect();
        let mut events = interfaces::watch()?;
        let agent = agent.clone();
        tokio::spawn(async move {
            // Anything that happened between attaching and subscribing.
            let a = agent.clone();
            let _ = tokio::task::spawn_blocking(move || lock(&a).watch_interfaces()).await;
            while let Some(event) = events.recv().await {
                if !watched.contains(&event.name) {
                    continue;
                }
                log::debug!("link event: {event:?}");
                let a = agent.clone();
                let _ = tokio::task::spawn_blocking(move || lock(&a).watch_interfaces()).await;
            }
        });
    }
    {
        // VIPs announced through the routing daemon ([announce]), only once the node is
        // synced with its cluster peers (at once without [cluster]).
        let synced = lock(&agent).synced();
        let a = agent.clone();
        let inputs: crate::announce::InputsFn = Box::new(move || lock(&a).announce_inputs());
        let addrs = crate::announce::Netlink::open()?;
        tokio::spawn(crate::announce::run(
            announce.clone(),
            crate::announce::Announcer { addrs },
            Arc::new(inputs),
            synced,
        ));
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
    let drain_timeout = lock(&agent)
        .config
        .announce
        .as_ref()
        .map(|a| a.drain_timeout);
    if let Some(timeout) = drain_timeout {
        // Withdraw, let the traffic move away (the data path keeps forwarding it), then
        // exit; a second signal exits at once.
        if let Err(e) = announce.drain(false) {
            log::error!("{e}");
        }
        tokio::select! {
            _ = crate::announce::wait_drained(&announce, timeout) => {}
            _ = term.recv() => log::warn!("second signal: exiting without waiting for the drain"),
            _ = int.recv() => log::warn!("second signal: exiting without waiting for the drain"),
        }
    }
    let _ = std::fs::remove_file(&opts.socket);
    if opts.detach_on_exit {
        let removed = attach::detach_all(&layout)?;
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
