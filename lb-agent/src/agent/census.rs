//! How full the stick table is, known without copying it on every scrape: a background
//! count (the census) walks the table with `BPF_MAP_LOOKUP_BATCH` through its own handle on
//! the pinned map (so the agent's lock is not held meanwhile), tallies the entries per
//! service and per backend, and keeps the result. `status`, `stats`, the metrics endpoint
//! and `top` read the last count and say how old it is.
//!
//! The walk runs every second, but never more often than ten times the time the last one
//! took, so that a table of millions costs at most a tenth of one CPU. In a cluster the same
//! walk is replication's periodic scan (`replication::Replication::scan`, every
//! `scan_interval`): one walk of the table serves both. aya 0.16 has no batch lookup: the
//! syscall is `crate::bpf_batch`'s.

use std::{
    collections::HashMap,
    os::fd::AsFd as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData};
use lb_common::{StickKey, StickValue};
use lb_model::sync::lock;

use crate::bpf_batch::lookup_batch;

/// One count of the stick table.
#[derive(Clone, Debug, Default)]
pub struct Census {
    /// When the walk ended.
    pub at: Option<Instant>,
    pub entries: u64,
    /// Entries per service id.
    pub by_service: HashMap<u32, u64>,
    /// Entries per backend id.
    pub by_backend: HashMap<u32, u64>,
    /// How long the walk took.
    pub took: Duration,
}

impl Census {
    /// How old the count is, in ms.
    pub fn age_ms(&self) -> u64 {
        self.at.map_or(0, |at| {
            u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)
        })
    }
}

/// The census of one stick table.
pub struct StickCensus {
    map: MapData,
    latest: Mutex<Census>,
    /// Set in a cluster: the walk also scans the table into replication's store.
    replication: std::sync::OnceLock<Arc<super::replication::Replication>>,
}

impl StickCensus {
    /// Opens the pinned stick table at `pin`.
    pub fn open(pin: &Path) -> Result<Arc<Self>> {
        let map = MapData::from_pin(pin)
            .with_context(|| format!("opening the pinned stick table {}", pin.display()))?;
        Ok(Arc::new(Self {
            map,
            latest: Mutex::new(Census::default()),
            replication: std::sync::OnceLock::new(),
        }))
    }

    /// Makes every walk due as a replication scan also a scan.
    pub fn scan_for(&self, r: Arc<super::replication::Replication>) {
        let _ = self.replication.set(r);
    }

    /// The last count (empty before the first).
    pub fn latest(&self) -> Census {
        lock(&self.latest).clone()
    }

    /// Counts the table now and keeps the result.
    pub fn count(&self) -> Census {
        let started = Instant::now();
        let mut c = Census::default();
        let mut scan = self
            .replication
            .get()
            .filter(|r| r.scan_due())
            .map(|r| r.scan());
        let mut tally = |k: &StickKey, v: &StickValue| {
            c.entries += 1;
            *c.by_service.entry(k.service_id).or_default() += 1;
            *c.by_backend.entry(v.backend_id).or_default() += 1;
            if let Some(s) = scan.as_mut() {
                s.entry(k, v);
            }
        };
        if let Err(e) = lookup_batch::<StickKey, StickValue>(self.map.fd().as_fd(), &mut tally) {
            log::debug!("batch walk of the stick table failed ({e}); walking it entry by entry");
            c = Census::default();
            let mut tally = |k: &StickKey, v: &StickValue| {
                c.entries += 1;
                *c.by_service.entry(k.service_id).or_default() += 1;
                *c.by_backend.entry(v.backend_id).or_default() += 1;
                if let Some(s) = scan.as_mut() {
                    s.entry(k, v);
                }
            };
            if let Err(e) = walk_one_by_one(&self.map, &mut tally) {
                log::warn!("cannot count the stick table: {e:#}");
            }
        }
        drop(scan);
        c.took = started.elapsed();
        c.at = Some(Instant::now());
        *lock(&self.latest) = c.clone();
        c
    }

    /// Counts in the background, every second at most (see the module documentation).
    pub fn spawn(self: &Arc<Self>) {
        let census = self.clone();
        tokio::spawn(async move {
            loop {
                let c = census.clone();
                let took = tokio::task::spawn_blocking(move || c.count().took)
                    .await
                    .unwrap_or_default();
                tokio::time::sleep((took * 10).max(Duration::from_secs(1))).await;
            }
        });
    }
}

/// Every entry, one lookup each (kernels without batch operations).
fn walk_one_by_one(map: &MapData, f: &mut dyn FnMut(&StickKey, &StickValue)) -> Result<()> {
    // A second handle on the same map: `Map` takes its `MapData` by value.
    let data = MapData::from_fd(map.fd().as_fd().try_clone_to_owned()?)?;
    let table: aya::maps::HashMap<MapData, StickKey, StickValue> = match Map::from_map_data(data)? {
        m @ (Map::LruHashMap(_) | Map::HashMap(_)) => m.try_into()?,
        _ => anyhow::bail!("the stick table is not a hash map"),
    };
    for item in table.iter() {
        let (k, v) = item?;
        f(&k, &v);
    }
    Ok(())
}
