//! The agent's side of a cluster (`[cluster]`, docs/CLUSTER.md): it connects lb-cluster's
//! replication to this node's maps.
//!
//! - **Out**: the data path's events (its per-CPU rings, [`crate::event_ring`], polled
//!   every `EVENT_POLL`) become `Observed` picks, sent at once; the census's walk of the
//!   stick table (every second at most, see `census`) hands every entry over as a scan
//!   (refreshes, repairs) every `scan_interval`.
//! - **In**: entries adopted from peers are written into the stick table by [`StickSink`]
//!   through its own handles, never under the agent's lock; a map entry with the same
//!   backend and a later last-seen is kept (`Catalog::keeps`). Batches of
//!   `STICK_APPLY_RECORDS` go through the batch writer `stickylb_stick_apply`
//!   (lb-ebpf/src/stick_apply.rs, run with `BPF_PROG_TEST_RUN`: the lookup, the rule and
//!   the update in the kernel, one syscall per batch); without it (not loaded, refused by
//!   the kernel) entry by entry, a lookup and an update each.
//! - **Definitions**: the services as identities (`lb_model::cluster::service_defs`)
//!   at start and whenever a commit changes them; ids ↔ identities (`Catalog`) rebuilt on
//!   every commit.
//!
//! Every conversion between map values and identities is `lb_model::cluster`'s.

use std::{
    os::fd::AsFd as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::ProgramFd,
};
use lb_cluster::{Applied, Cluster, ClusterConfig, Observed, ServiceDef, Sink};
use lb_common::{
    StickKey, StickRecord, StickValue, STICK_APPLY_FAILED, STICK_APPLY_KEPT, STICK_APPLY_RECORDS,
    STICK_APPLY_WRITTEN,
};
use lb_model::{cluster::Catalog, config::Config, plan::Ids, sync::lock};

/// Observations handed to `Cluster::observe` at once.
const BATCH: usize = 4096;

/// How often the events rings are read. Nothing wakes the reader (that is what keeps the
/// data path's writes free of a lock), so this bounds the time an event waits: at most
/// a millisecond of the replication lag (issue 12's goal: p99 ≤ 10 ms). An idle poll
/// reads one word per CPU.
pub const EVENT_POLL: Duration = Duration::from_millis(1);

/// Writes entries adopted from peers into the stick table.
pub struct StickSink {
    catalog: Arc<RwLock<Catalog>>,
    table: Mutex<StickWriter>,
    written: AtomicU64,
    /// Told of every batch once it is in the table (the benchmark's lag measurement).
    probe: std::sync::OnceLock<Probe>,
}

/// See [`Replication::set_probe`].
pub type Probe = Box<dyn Fn(&[Applied]) + Send + Sync>;

/// What the sink writes through: the stick table one entry at a time, and the batch
/// writer (a fake in the unit tests).
trait StickTable {
    fn get(&self, key: &StickKey) -> Option<StickValue>;
    fn insert(&mut self, key: &StickKey, value: &StickValue) -> Result<(), String>;
    /// Runs the batch writer over `records` (at most [`STICK_APPLY_RECORDS`]), which
    /// fills in their `result`.
    fn run(&mut self, records: &mut [StickRecord]) -> std::io::Result<()>;
}

/// The kernel's side: the pinned stick table and the loaded `stickylb_stick_apply`.
struct Kernel {
    table: HashMap<MapData, StickKey, StickValue>,
    writer: Option<ProgramFd>,
}

/// Writes peers' entries into a stick table: [`write_records`] over the kernel's table
/// and batch writer. Public for the kernel test (tests/tests/cluster.rs).
pub struct StickWriter {
    kernel: Kernel,
    /// Whether runs go through the batch writer (off once the kernel refused it).
    batched: bool,
    /// Runs of the batch writer that succeeded.
    runs: u64,
}

impl StickWriter {
    /// Over `table` (a handle on the stick table) with the batch writer `writer`
    /// ([`crate::loader::stick_writer`]; `None`: entry by entry).
    pub fn new(table: HashMap<MapData, StickKey, StickValue>, writer: Option<ProgramFd>) -> Self {
        let batched = writer.is_some();
        Self {
            kernel: Kernel { table, writer },
            batched,
            runs: 0,
        }
    }

    /// Writes `records` in order, each unless the table keeps its own entry; returns how
    /// many were written (each record's `result` says what happened to it).
    pub fn write(&mut self, records: &mut [StickRecord]) -> u64 {
        write_records(&mut self.kernel, records, &mut self.batched, &mut self.runs)
    }

    /// Runs of the batch writer so far, and whether it is still used.
    pub fn runs(&self) -> (u64, bool) {
        (self.runs, self.batched)
    }
}

impl StickTable for Kernel {
    fn get(&self, key: &StickKey) -> Option<StickValue> {
        self.table.get(key, 0).ok()
    }

    fn insert(&mut self, key: &StickKey, value: &StickValue) -> Result<(), String> {
        self.table.insert(key, value, 0).map_err(|e| e.to_string())
    }

    fn run(&mut self, records: &mut [StickRecord]) -> std::io::Result<()> {
        let Some(writer) = &self.writer else {
            return Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        };
        // SAFETY: `StickRecord` is plain `repr(C)` data without implicit padding (40
        // bytes, asserted in lb-common); the bytes are the records' own.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                records.as_mut_ptr() as *mut u8,
                std::mem::size_of_val(records),
            )
        };
        crate::bpf_batch::test_run_in_place(writer.as_fd(), bytes).map(|_| ())
    }
}

/// Whether a failed run means the kernel will never run the batch writer (so the sink
/// stops trying), rather than a passing failure.
fn refused(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | libc::EPERM | 524 /* ENOTSUPP */)
    )
}

/// Writes `records` in order: runs of [`STICK_APPLY_RECORDS`] through the batch writer
/// while `batched` holds (`runs` counts those that succeeded), one entry at a time
/// otherwise (a lookup, [`Catalog::keeps`], an update). Records a run left unreached are
/// written one by one; a refused run turns `batched` off for good, any other failure only
/// for that run. Returns how many were written; failures are logged, never fatal.
fn write_records(
    t: &mut impl StickTable,
    records: &mut [StickRecord],
    batched: &mut bool,
    runs: &mut u64,
) -> u64 {
    let mut written = 0;
    let mut failed = 0;
    for run in records.chunks_mut(STICK_APPLY_RECORDS) {
        run.iter_mut().for_each(|r| r.result = 0);
        if *batched {
            match t.run(run) {
                Ok(()) => *runs += 1,
                Err(e) if refused(&e) => {
                    *batched = false;
                    run.iter_mut().for_each(|r| r.result = 0);
                    log::info!(
                        "cluster: the kernel refused the stick-table batch writer ({e}); \
                         peers' entries are written one by one from now on"
                    );
                }
                Err(e) => {
                    run.iter_mut().for_each(|r| r.result = 0);
                    log::debug!("cluster: a batch of replicated stick entries failed ({e}); writing it entry by entry");
                }
            }
        }
        for r in run.iter_mut() {
            if r.result == 0 {
                r.result = match t.get(&r.key) {
                    Some(current) if Catalog::keeps(&current, &r.value) => STICK_APPLY_KEPT,
                    _ => match t.insert(&r.key, &r.value) {
                        Ok(()) => STICK_APPLY_WRITTEN,
                        Err(e) => {
                            log::debug!("cluster: cannot write a replicated stick entry: {e}");
                            STICK_APPLY_FAILED
                        }
                    },
                };
            }
            match r.result {
                STICK_APPLY_WRITTEN => written += 1,
                STICK_APPLY_FAILED => failed += 1,
                _ => {}
            }
        }
    }
    if failed > 0 {
        log::debug!("cluster: {failed} replicated stick entries could not be written");
    }
    written
}

impl StickSink {
    fn write(&self, entries: &[Applied]) {
        let mut records: Vec<StickRecord> = {
            let catalog = self.catalog.read().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .filter_map(|a| catalog.to_entry(a))
                .map(|(key, value)| StickRecord {
                    key,
                    result: 0,
                    value,
                })
                .collect()
        };
        let n = lock(&self.table).write(&mut records);
        self.written.fetch_add(n, Ordering::Relaxed);
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

/// The kernel objects a replication works with (handles of its own: it never takes the
/// agent's lock).
pub struct Handles {
    /// The stick table (the pinned map).
    pub stick: MapData,
    /// The data path's events (its rings) and what it could not emit.
    pub ring: crate::event_ring::EventRing,
    pub lost: PerCpuArray<MapData, u64>,
    /// The sink's batch writer ([`crate::loader::stick_writer`]; `None`: entry by entry).
    pub writer: Option<ProgramFd>,
}

impl Replication {
    /// Starts the replication: listener, dialers, and the events reader on the ring.
    pub async fn start(
        cfg: ClusterConfig,
        config: &Config,
        ids: &Ids,
        handles: Handles,
        capacity: usize,
    ) -> Result<Arc<Replication>> {
        let Handles {
            stick,
            ring,
            lost,
            writer,
        } = handles;
        let table: HashMap<MapData, StickKey, StickValue> = match Map::from_map_data(stick)? {
            m @ (Map::LruHashMap(_) | Map::HashMap(_)) => m.try_into()?,
            _ => anyhow::bail!("the stick table is not a hash map"),
        };
        if writer.is_some() {
            log::info!("cluster: peers' entries go into the stick table through the batch writer");
        }
        let catalog = Arc::new(RwLock::new(Catalog::new(config, ids)));
        let sink = Arc::new(StickSink {
            catalog: catalog.clone(),
            table: Mutex::new(StickWriter::new(table, writer)),
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

    /// Runs of the sink's batch writer so far, and whether it is still used (false: the
    /// sink writes entry by entry).
    pub fn sink_runs(&self) -> (u64, bool) {
        lock(&self.sink.table).runs()
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

    async fn read_events(&self, mut ring: crate::event_ring::EventRing) -> Result<()> {
        let mut batch = Vec::with_capacity(BATCH);
        let mut tick = tokio::time::interval(EVENT_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut skipped = 0;
        loop {
            tick.tick().await;
            // Whole batches while the rings hold more, then wait for the next tick.
            loop {
                let taken = {
                    let catalog = self.catalog.read().unwrap_or_else(|e| e.into_inner());
                    ring.read(BATCH, |e| {
                        if let Some(o) = catalog.from_event(e) {
                            batch.push(o);
                        }
                    })
                };
                self.events
                    .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if !batch.is_empty() {
                    self.observe(&batch);
                    batch.clear();
                }
                if taken < BATCH {
                    break;
                }
            }
            if ring.skipped() != skipped {
                skipped = ring.skipped();
                log::warn!(
                    "cluster: {skipped} stick-table event slots did not hold their event \
                     (two writers on one CPU); the periodic scan repairs what they held"
                );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stick table in memory whose batch writer applies the rule as the kernel's does.
    #[derive(Default)]
    struct Fake {
        map: std::collections::HashMap<StickKey, StickValue>,
        /// Sizes of the runs asked for.
        runs: Vec<usize>,
        /// The batch writer fails with this errno.
        fail: Option<i32>,
        /// The batch writer leaves this many records of each run unreached.
        leave: usize,
        /// Inserts of new keys fail (a full table).
        full: bool,
    }

    impl Fake {
        fn put(&mut self, key: &StickKey, value: &StickValue) -> u32 {
            if self.map.get(key).is_some_and(|c| Catalog::keeps(c, value)) {
                STICK_APPLY_KEPT
            } else if self.full && !self.map.contains_key(key) {
                STICK_APPLY_FAILED
            } else {
                self.map.insert(*key, *value);
                STICK_APPLY_WRITTEN
            }
        }
    }

    impl StickTable for Fake {
        fn get(&self, key: &StickKey) -> Option<StickValue> {
            self.map.get(key).copied()
        }

        fn insert(&mut self, key: &StickKey, value: &StickValue) -> Result<(), String> {
            if self.full && !self.map.contains_key(key) {
                return Err("full".into());
            }
            self.map.insert(*key, *value);
            Ok(())
        }

        fn run(&mut self, records: &mut [StickRecord]) -> std::io::Result<()> {
            assert!(records.len() <= STICK_APPLY_RECORDS);
            assert!(
                records.iter().all(|r| r.result == 0),
                "results cleared before a run"
            );
            self.runs.push(records.len());
            if let Some(e) = self.fail {
                return Err(std::io::Error::from_raw_os_error(e));
            }
            let reached = records.len().saturating_sub(self.leave);
            for r in &mut records[..reached] {
                r.result = self.put(&r.key, &r.value);
            }
            Ok(())
        }
    }

    fn key(n: u32) -> StickKey {
        StickKey {
            service_id: 1,
            client: [n, 0, 0, 0],
        }
    }

    fn value(backend_id: u32, last_seen_ns: u64) -> StickValue {
        StickValue {
            backend_id,
            _pad: 0,
            last_seen_ns,
        }
    }

    /// A table with three local entries and a batch of 150: the first three against
    /// them (kept: same backend seen later here; written: another backend; written: the
    /// same backend seen later by the peer), then 147 new clients.
    fn mixed() -> (Fake, Vec<StickRecord>) {
        let mut t = Fake::default();
        for n in 0..3 {
            t.map.insert(key(n), value(1, 100));
        }
        let mut records = vec![
            StickRecord {
                key: key(0),
                result: 0,
                value: value(1, 50),
            },
            StickRecord {
                key: key(1),
                result: 0,
                value: value(2, 50),
            },
            StickRecord {
                key: key(2),
                result: 0,
                value: value(1, 150),
            },
        ];
        records.extend((3..150).map(|n| StickRecord {
            key: key(n),
            result: 0,
            value: value(n % 3, 7),
        }));
        (t, records)
    }

    fn check_mixed(t: &Fake, records: &[StickRecord], written: u64) {
        assert_eq!(written, 149);
        assert_eq!(
            t.map[&key(0)],
            value(1, 100),
            "the local entry seen later stays"
        );
        assert_eq!(
            t.map[&key(1)],
            value(2, 50),
            "another backend: the peer's wins"
        );
        assert_eq!(
            t.map[&key(2)],
            value(1, 150),
            "seen later by the peer: the peer's wins"
        );
        for n in 3..150 {
            assert_eq!(t.map[&key(n)], value(n % 3, 7));
        }
        assert_eq!(t.map.len(), 150);
        assert_eq!(records[0].result, STICK_APPLY_KEPT);
        assert!(records[1..].iter().all(|r| r.result == STICK_APPLY_WRITTEN));
    }

    #[test]
    fn a_batch_goes_through_the_writer_in_runs_and_keeps_the_rule() {
        let (mut t, mut records) = mixed();
        let (mut batched, mut runs) = (true, 0);
        let written = write_records(&mut t, &mut records, &mut batched, &mut runs);
        check_mixed(&t, &records, written);
        assert_eq!(t.runs, [64, 64, 22]);
        assert_eq!((runs, batched), (3, true));
    }

    #[test]
    fn entry_by_entry_gives_the_same_table() {
        let (mut t, mut records) = mixed();
        let (mut batched, mut runs) = (false, 0);
        let written = write_records(&mut t, &mut records, &mut batched, &mut runs);
        check_mixed(&t, &records, written);
        assert!(t.runs.is_empty());
        assert_eq!(runs, 0);
    }

    #[test]
    fn a_refused_writer_is_dropped_for_good() {
        for errno in [libc::EINVAL, libc::EOPNOTSUPP, 524] {
            let (mut t, mut records) = mixed();
            t.fail = Some(errno);
            let (mut batched, mut runs) = (true, 0);
            let written = write_records(&mut t, &mut records, &mut batched, &mut runs);
            check_mixed(&t, &records, written);
            assert_eq!(
                t.runs,
                [64],
                "errno {errno}: asked once, then entry by entry"
            );
            assert_eq!((runs, batched), (0, false));
        }
    }

    #[test]
    fn a_passing_failure_falls_back_for_that_run_only() {
        let (mut t, mut records) = mixed();
        t.fail = Some(libc::ENOMEM);
        let (mut batched, mut runs) = (true, 0);
        let written = write_records(&mut t, &mut records, &mut batched, &mut runs);
        check_mixed(&t, &records, written);
        assert_eq!(t.runs, [64, 64, 22]);
        assert_eq!((runs, batched), (0, true));
    }

    #[test]
    fn records_a_run_did_not_reach_are_written_one_by_one() {
        let (mut t, mut records) = mixed();
        t.leave = 10;
        let (mut batched, mut runs) = (true, 0);
        let written = write_records(&mut t, &mut records, &mut batched, &mut runs);
        check_mixed(&t, &records, written);
        assert_eq!(runs, 3);
    }

    #[test]
    fn entries_that_cannot_be_written_are_not_counted() {
        for batched in [true, false] {
            let (mut t, mut records) = mixed();
            t.full = true;
            let (mut b, mut runs) = (batched, 0);
            let written = write_records(&mut t, &mut records, &mut b, &mut runs);
            // Only the two existing entries the peer wins are written.
            assert_eq!(written, 2);
            assert_eq!(t.map.len(), 3);
            assert!(records[3..].iter().all(|r| r.result == STICK_APPLY_FAILED));
        }
    }
}
