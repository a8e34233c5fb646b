//! The agent's side of a cluster (`[cluster]`, docs/CLUSTER.md): it connects lb-cluster's
//! replication to this node's maps.
//!
//! - **Out**: the data path's events (`STICK_EVENTS` ring, read with aya's `RingBuf`
//!   woken by `AsyncFd`) become `Observed` picks, sent at once; the census's walk of the
//!   stick table (every second at most, see `census`) hands every entry over as a scan
//!   (refreshes, repairs) every `scan_interval`.
//! - **In**: entries adopted from peers are written into the stick table by [`StickSink`]
//!   through its own handle on the pinned map, never under the agent's lock; a map entry
//!   with the same backend and a later last-seen is kept.
//! - **Definitions**: the services as identities (`lb_model::cluster::service_defs`)
//!   at start and whenever a commit changes them; ids ↔ identities (`Catalog`) rebuilt on
//!   every commit.
//!
//! Every conversion between map values and identities is `lb_model::cluster`'s.

use std::{
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuArray, RingBuf};
use lb_cluster::{Applied, Cluster, ClusterConfig, Observed, ServiceDef, Sink};
use lb_common::{StickEvent, StickKey, StickValue};
use lb_model::{cluster::Catalog, config::Config, plan::Ids, sync::lock};
use tokio::io::unix::AsyncFd;

/// Observations handed to `Cluster::observe` at once.
const BATCH: usize = 4096;

/// Writes entries adopted from peers into the stick table.
pub struct StickSink {
    catalog: Arc<RwLock<Catalog>>,
    table: Mutex<HashMap<MapData, StickKey, StickValue>>,
    written: std::sync::atomic::AtomicU64,
    /// Told of every batch once it is in the table (the benchmark's lag measurement).
    probe: std::sync::OnceLock<Probe>,
}

/// See [`Replication::set_probe`].
pub type Probe = Box<dyn Fn(&[Applied]) + Send + Sync>;

impl StickSink {
    fn write(&self, entries: &[Applied]) {
        let catalog = self.catalog.read().unwrap_or_else(|e| e.into_inner());
        let mut table = lock(&self.table);
        for a in entries {
            let Some((k, v)) = catalog.to_entry(a) else {
                continue;
            };
            if let Ok(current) = table.get(&k, 0) {
                if Catalog::keeps(&current, &v) {
                    continue;
                }
            }
            if let Err(e) = table.insert(&k, &v, 0) {
                log::debug!("cluster: cannot write a replicated stick entry: {e}");
            } else {
                self.written
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        drop(table);
        if let Some(p) = self.probe.get() {
            p(entries);
        }
    }
}

impl Sink for StickSink {
    fn apply(&self, entries: &[Applied]) {
        self.write(entries);
    }
}

/// A running replication and what feeds it.
pub struct Replication {
    pub cluster: Cluster,
    catalog: Arc<RwLock<Catalog>>,
    sink: Arc<StickSink>,
    defs: Mutex<Vec<ServiceDef>>,
    lost: Mutex<PerCpuArray<MapData, u64>>,
    /// How often the table is scanned into the store.
    scan_interval: Duration,
    last_scan: Mutex<Option<Instant>>,
    /// Events read from the ring.
    pub events: std::sync::atomic::AtomicU64,
    /// Scans made.
    pub scans: std::sync::atomic::AtomicU64,
}

/// The scan interval: an eighth of the shortest expiry (so that refreshes, due every
/// expire/4, go out in time), at most 30 s, at least 1 s (the census's cadence).
pub fn scan_interval(config: &Config) -> Duration {
    config
        .services
        .iter()
        .filter_map(|s| s.spec.expire)
        .map(|e| e / 8)
        .min()
        .unwrap_or(Duration::from_secs(30))
        .clamp(Duration::from_secs(1), Duration::from_secs(30))
}

impl Replication {
    /// Starts the replication: listener, dialers, and the events reader on `ring`.
    pub async fn start(
        cfg: ClusterConfig,
        config: &Config,
        ids: &Ids,
        stick: MapData,
        ring: RingBuf<MapData>,
        lost: PerCpuArray<MapData, u64>,
        capacity: usize,
    ) -> Result<Arc<Replication>> {
        let table: HashMap<MapData, StickKey, StickValue> = match Map::from_map_data(stick)? {
            m @ (Map::LruHashMap(_) | Map::HashMap(_)) => m.try_into()?,
            _ => anyhow::bail!("the stick table is not a hash map"),
        };
        let catalog = Arc::new(RwLock::new(Catalog::new(config, ids)));
        let sink = Arc::new(StickSink {
            catalog: catalog.clone(),
            table: Mutex::new(table),
            written: Default::default(),
            probe: std::sync::OnceLock::new(),
        });
        let defs = lb_model::cluster::service_defs(config);
        let cluster = Cluster::start(cfg, &defs, sink.clone())
            .await
            .context("starting [cluster]")?;
        cluster.reserve(capacity);
        let r = Arc::new(Replication {
            cluster,
            catalog,
            sink,
            defs: Mutex::new(defs),
            lost: Mutex::new(lost),
            scan_interval: scan_interval(config),
            last_scan: Mutex::new(None),
            events: Default::default(),
            scans: Default::default(),
        });
        let reader = r.clone();
        tokio::spawn(async move {
            if let Err(e) = reader.read_events(ring).await {
                log::error!("cluster: reading the stick-table events stopped: {e:#}; the periodic scan still replicates");
            }
        });
        Ok(r)
    }

    /// After a commit: new ids, and new definitions if they changed.
    pub fn on_commit(&self, config: &Config, ids: &Ids) {
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Catalog::new(config, ids);
        let defs = lb_model::cluster::service_defs(config);
        let mut current = lock(&self.defs);
        if *current != defs {
            self.cluster.set_services(&defs);
            *current = defs;
        }
    }

    /// Calls `probe` with every batch of peers' entries right after it is written into
    /// the stick table (once; `cargo xtask bench` part 6 times the lag with it).
    pub fn set_probe(&self, probe: Probe) {
        let _ = self.sink.probe.set(probe);
    }

    /// How often the table is scanned into the store.
    pub fn scan_interval(&self) -> Duration {
        self.scan_interval
    }

    /// Events the data path could not emit (the ring was full), summed over CPUs.
    pub fn events_lost(&self) -> u64 {
        lock(&self.lost)
            .get(&0, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Entries written into the stick table from peers.
    pub fn written(&self) -> u64 {
        self.sink.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn observe(&self, batch: &[Observed]) {
        let rewrites = self.cluster.observe(batch);
        if !rewrites.is_empty() {
            self.sink.write(&rewrites);
        }
    }

    async fn read_events(&self, ring: RingBuf<MapData>) -> Result<()> {
        // SAFETY: the ring owns its map's file descriptor, which stays open and is not
        // replaced while the `AsyncFd` holds the ring.
        let mut fd =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| anyhow::anyhow!("watching the STICK_EVENTS ring: {e}"))?;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let mut guard = fd.readable_mut().await?;
            {
                let catalog = self.catalog.read().unwrap_or_else(|e| e.into_inner());
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if item.len() >= std::mem::size_of::<StickEvent>() {
                        // SAFETY: the record holds a whole `StickEvent` (a plain
                        // `repr(C)` struct), read unaligned.
                        let e: StickEvent =
                            unsafe { std::ptr::read_unaligned(item.as_ptr() as *const StickEvent) };
                        if let Some(o) = catalog.from_event(&e) {
                            batch.push(o);
                        }
                    }
                    drop(item);
                    if batch.len() >= BATCH {
                        break;
                    }
                }
            }
            self.events
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let full = batch.len() >= BATCH;
            if !batch.is_empty() {
                self.observe(&batch);
                batch.clear();
            }
            if !full {
                guard.clear_ready();
            }
        }
    }

    /// Whether the census's walk should also scan the table into the store now.
    pub fn scan_due(&self) -> bool {
        let mut last = lock(&self.last_scan);
        match *last {
            Some(t) if t.elapsed() < self.scan_interval => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    /// A scan: every entry of the table (in walk batches).
    pub fn scan(&self) -> Scan<'_> {
        self.scans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Scan {
            r: self,
            catalog: self
                .catalog
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            batch: Vec::with_capacity(BATCH),
        }
    }
}

/// One scan in progress (fed entry by entry by the census's walk).
pub struct Scan<'a> {
    r: &'a Replication,
    catalog: Catalog,
    batch: Vec<Observed>,
}

impl Scan<'_> {
    pub fn entry(&mut self, k: &StickKey, v: &StickValue) {
        if let Some(o) = self.catalog.from_entry(k, v) {
            self.batch.push(o);
            if self.batch.len() >= BATCH {
                self.r.observe(&self.batch);
                self.batch.clear();
            }
        }
    }
}

impl Drop for Scan<'_> {
    fn drop(&mut self) {
        if !self.batch.is_empty() {
            self.r.observe(&self.batch);
        }
    }
}
