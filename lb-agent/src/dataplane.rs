//! Writes a [`Plan`] into the data-path maps and reads counters and stick entries back.
//!
//! Order of writes keeps the data path consistent at every instant: backend slots first,
//! then each service's selection table into its inactive buffer, then the service entry
//! that flips to it, then reply entries; removals come last.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd as _,
};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    Ebpf,
};
use lb_common::{
    index, Backend, BackendStats, CounterSet, EncapSource, Endpoint, ReverseValue, ServiceInfo,
    ServiceSlot, ServiceStats, StickKey, StickValue, MAP_BACKENDS, MAP_BACKEND_STATS,
    MAP_REPLY_FILTER, MAP_REVERSE, MAP_RING, MAP_RR_CURSOR, MAP_SERVICES, MAP_SERVICE_INDEX,
    MAP_SERVICE_INDEX_HEAD, MAP_SERVICE_STATS, MAP_STICK, RING_REGION, SERVICE_INDEX_SLOTS,
};

use lb_model::plan::{BackendEntry, Plan, ServiceEntry};

use crate::bpf_batch::update_batch;

/// Handles to every map the control plane writes or reads.
pub struct Dataplane {
    pub services: HashMap<MapData, Endpoint, ServiceInfo>,
    pub backends: Array<MapData, Backend>,
    pub ring: Array<MapData, u32>,
    pub rr_cursor: Array<MapData, u64>,
    /// The stick table (an LRU hash; aya's `HashMap` handles both hash kinds).
    pub stick: HashMap<MapData, StickKey, StickValue>,
    pub reverse: HashMap<MapData, Endpoint, ReverseValue>,
    pub fragments: HashMap<MapData, Endpoint, lb_common::FragCandidates>,
    pub service_stats: PerCpuArray<MapData, ServiceStats>,
    pub backend_stats: PerCpuArray<MapData, BackendStats>,
    /// Client-hash outer-source prefixes per service id (encapsulating modes).
    pub encap_source: Array<MapData, EncapSource>,
    /// The data path's exact service table (two regions) and its head word.
    pub service_index: Array<MapData, ServiceSlot>,
    pub service_index_head: Array<MapData, u32>,
    /// Bitmap over the `REVERSE` keys' addresses.
    pub reply_filter: Array<MapData, u64>,
    /// Whether this handle wrote the index and the filter yet (the first `apply` always
    /// does, whatever the maps held).
    derived_written: bool,
    /// What was written last, to compute removals and skip unchanged tables.
    applied: Plan,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &str,
) -> Result<T> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// First `RING` slot of one buffer of a service's selection table.
pub fn ring_offset(service_id: u32, buffer: u32) -> u32 {
    (service_id * 2 + buffer) * RING_REGION
}

impl Dataplane {
    /// Takes the maps out of a loaded object.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            services: take(ebpf, MAP_SERVICES)?,
            backends: take(ebpf, MAP_BACKENDS)?,
            ring: take(ebpf, MAP_RING)?,
            rr_cursor: take(ebpf, MAP_RR_CURSOR)?,
            stick: take(ebpf, MAP_STICK)?,
            reverse: take(ebpf, MAP_REVERSE)?,
            fragments: take(ebpf, lb_common::MAP_FRAGMENTS)?,
            service_stats: take(ebpf, MAP_SERVICE_STATS)?,
            backend_stats: take(ebpf, MAP_BACKEND_STATS)?,
            encap_source: take(ebpf, lb_common::MAP_ENCAP_SOURCE)?,
            service_index: take(ebpf, MAP_SERVICE_INDEX)?,
            service_index_head: take(ebpf, MAP_SERVICE_INDEX_HEAD)?,
            reply_filter: take(ebpf, MAP_REPLY_FILTER)?,
            derived_written: false,
            applied: Plan::default(),
        })
    }

    /// Reads back what a previous agent left in pinned maps and takes it as the applied
    /// plan (selection tables are not read back: the next `apply` rewrites them into the
    /// inactive buffer). Returns it for id recovery ([`lb_model::plan::Ids::adopt`]).
    pub fn adopt_from_maps(&mut self) -> Result<Plan> {
        let mut plan = Plan::default();
        for item in self.services.iter() {
            let (key, info) = item.context("reading SERVICES")?;
            let encap_source = self
                .encap_source
                .get(&info.id, 0)
                .context("reading ENCAP_SOURCE")?;
            plan.services.push(ServiceEntry {
                name: String::new(),
                key,
                info,
                encap_source,
                ring: Vec::new(),
            });
        }
        for (id, b) in self.backends.iter().enumerate() {
            let b = b.context("reading BACKENDS")?;
            if b.state != lb_common::BACKEND_UNUSED {
                let ip = lb_common::ip_from_addr(&b.addr, b.family);
                let addr = std::net::SocketAddr::new(ip, u16::from_be(b.port));
                plan.backends.push(BackendEntry {
                    id: id as u32,
                    service: String::new(),
                    addr,
                    value: b,
                });
            }
        }
        for item in self.reverse.iter() {
            plan.reverse.push(item.context("reading REVERSE")?);
        }
        for item in self.fragments.iter() {
            plan.fragments.push(item.context("reading FRAGMENTS")?);
        }
        plan.services.sort_by_key(|s| s.info.id);
        self.applied = plan.clone();
        Ok(plan)
    }

    /// The plan last written.
    pub fn applied(&self) -> &Plan {
        &self.applied
    }

    /// Writes `plan`, replacing the previously applied one.
    pub fn apply(&mut self, plan: &Plan) -> Result<()> {
        let old = std::mem::take(&mut self.applied);
        let result = self.write_plan(&old, plan);
        match result {
            Ok(written) => {
                self.applied = written;
                Ok(())
            }
            Err(e) => {
                // Some entries may be written: remember the old plan so the next apply
                // rewrites anything that differs from it.
                self.applied = old;
                Err(e)
            }
        }
    }

    fn write_plan(&mut self, old: &Plan, plan: &Plan) -> Result<Plan> {
        // 1. Backend slots (new, changed).
        let old_backends: BTreeMap<u32, Backend> =
            old.backends.iter().map(|b| (b.id, b.value)).collect();
        for b in &plan.backends {
            if old_backends.get(&b.id) != Some(&b.value) {
                self.backends
                    .set(b.id, &b.value, 0)
                    .with_context(|| format!("writing backend {} ({})", b.id, b.addr))?;
            }
        }
        // 2-3. Selection tables into the inactive buffer, then the service entry.
        let old_services: BTreeMap<Endpoint, (&ServiceInfo, &Vec<u32>)> = old
            .services
            .iter()
            .map(|s| (s.key, (&s.info, &s.ring)))
            .collect();
        let mut written = plan.clone();
        let mut changed = Vec::new();
        for (n, s) in written.services.iter_mut().enumerate() {
            let previous = old_services
                .get(&s.key)
                .filter(|(info, _)| info.id == s.info.id);
            let offset = match previous {
                Some((info, ring)) if **ring == s.ring => info.ring_offset,
                Some((info, _)) => {
                    let other = if info.ring_offset == ring_offset(s.info.id, 0) {
                        1
                    } else {
                        0
                    };
                    self.write_ring(s.info.id, other, &s.ring)?
                }
                None => self.write_ring(s.info.id, 0, &s.ring)?,
            };
            s.info.ring_offset = offset;
            // The outer-source prefixes before the entry that may start using them.
            let old_source = old
                .services
                .iter()
                .find(|o| o.info.id == s.info.id)
                .map(|o| o.encap_source);
            if old_source != Some(s.encap_source) {
                self.encap_source
                    .set(s.info.id, &s.encap_source, 0)
                    .with_context(|| format!("writing the encap source of {}", s.name))?;
            }
            if previous.map(|(info, _)| **info) != Some(s.info) {
                changed.push(n);
            }
        }
        // The index the data path reads, then the agent's record of it.
        let removed = old
            .services
            .iter()
            .any(|o| !plan.services.iter().any(|s| s.key == o.key));
        if !changed.is_empty() || removed || !self.derived_written {
            self.write_service_index(&written.services)?;
        }
        for &n in &changed {
            let s = &written.services[n];
            self.services
                .insert(&s.key, &s.info, 0)
                .with_context(|| format!("writing service {}", s.name))?;
        }
        // 4. Reply entries, their addresses in the filter first (old and new until the
        // removals are done).
        let old_reverse: BTreeMap<Endpoint, ReverseValue> = old.reverse.iter().copied().collect();
        let reverse_changed = old.reverse != plan.reverse || !self.derived_written;
        if reverse_changed {
            let both = old
                .reverse
                .iter()
                .chain(&plan.reverse)
                .map(|(k, _)| &k.addr);
            self.write_reply_filter(&index::reply_filter(both))?;
        }
        for (k, v) in &plan.reverse {
            if old_reverse.get(k) != Some(v) {
                self.reverse
                    .insert(k, v, 0)
                    .context("writing a reply-NAT entry")?;
            }
        }
        // Fragment candidates.
        let old_frags: BTreeMap<Endpoint, lb_common::FragCandidates> =
            old.fragments.iter().copied().collect();
        for (k, v) in &plan.fragments {
            if old_frags.get(k) != Some(v) {
                self.fragments
                    .insert(k, v, 0)
                    .context("writing a fragment entry")?;
            }
        }
        let new_frags: BTreeSet<Endpoint> = plan.fragments.iter().map(|(k, _)| *k).collect();
        for k in old_frags.keys() {
            if !new_frags.contains(k) {
                let _ = self.fragments.remove(k);
            }
        }
        // 5. Removals.
        let new_keys: BTreeSet<Endpoint> = plan.services.iter().map(|s| s.key).collect();
        for s in &old.services {
            if !new_keys.contains(&s.key) {
                let _ = self.services.remove(&s.key);
            }
        }
        let new_reverse: BTreeSet<Endpoint> = plan.reverse.iter().map(|(k, _)| *k).collect();
        for (k, _) in &old.reverse {
            if !new_reverse.contains(k) {
                let _ = self.reverse.remove(k);
            }
        }
        if reverse_changed {
            self.write_reply_filter(&index::reply_filter(
                plan.reverse.iter().map(|(k, _)| &k.addr),
            ))?;
        }
        self.derived_written = true;
        let new_ids: BTreeSet<u32> = plan.backends.iter().map(|b| b.id).collect();
        for b in &old.backends {
            if !new_ids.contains(&b.id) {
                self.backends
                    .set(b.id, &Backend::default(), 0)
                    .context("clearing a removed backend")?;
            }
        }
        Ok(written)
    }

    /// Builds the service index of `services` into the inactive region, then flips the
    /// head word to it (one `u32`: region and seed together).
    fn write_service_index(&mut self, services: &[ServiceEntry]) -> Result<()> {
        let entries: Vec<(Endpoint, ServiceInfo)> =
            services.iter().map(|s| (s.key, s.info)).collect();
        let (seed, slots) = index::build(&entries).with_context(|| {
            format!(
                "cannot place {} services in the service index ({SERVICE_INDEX_SLOTS} slots)",
                entries.len()
            )
        })?;
        let head = self.service_index_head.get(&0, 0).unwrap_or(0);
        let region = 1 - (head & 1);
        let base = region * SERVICE_INDEX_SLOTS;
        let keys: Vec<u32> = (base..base + SERVICE_INDEX_SLOTS).collect();
        let fd = aya::maps::IterableMap::map(&self.service_index)
            .fd()
            .as_fd();
        let done = update_batch(fd, &keys, &slots).unwrap_or(0);
        for (i, slot) in slots.iter().enumerate().skip(done) {
            self.service_index
                .set(base + i as u32, slot, 0)
                .context("writing the service index")?;
        }
        self.service_index_head
            .set(0, &index::head(region, seed), 0)
            .context("flipping the service index")
    }

    /// Writes the whole reply filter (8 KiB, one batch).
    fn write_reply_filter(&mut self, words: &[u64]) -> Result<()> {
        let keys: Vec<u32> = (0..words.len() as u32).collect();
        let fd = aya::maps::IterableMap::map(&self.reply_filter).fd().as_fd();
        let done = update_batch(fd, &keys, words).unwrap_or(0);
        for (i, w) in words.iter().enumerate().skip(done) {
            self.reply_filter
                .set(i as u32, w, 0)
                .context("writing the reply filter")?;
        }
        Ok(())
    }

    /// Writes a selection table into one buffer; returns its offset. One
    /// `BPF_MAP_UPDATE_BATCH` per table where the kernel has it (5.6+): a Maglev table is
    /// 65 537 slots, one syscall each otherwise.
    fn write_ring(&mut self, service_id: u32, buffer: u32, ring: &[u32]) -> Result<u32> {
        let offset = ring_offset(service_id, buffer);
        let keys: Vec<u32> = (offset..offset + ring.len() as u32).collect();
        let fd = aya::maps::IterableMap::map(&self.ring).fd().as_fd();
        let done = match update_batch(fd, &keys, ring) {
            Ok(n) => n,
            Err(e) => {
                log::debug!("batch update of a selection table failed ({e}); writing slot by slot");
                0
            }
        };
        for (i, id) in ring.iter().enumerate().skip(done) {
            self.ring
                .set(offset + i as u32, id, 0)
                .context("writing a selection table")?;
        }
        Ok(offset)
    }

    /// Counters of a service, summed over CPUs.
    pub fn service_stats(&self, service_id: u32) -> Result<ServiceStats> {
        let per_cpu = self.service_stats.get(&service_id, 0)?;
        let mut total = ServiceStats::default();
        for v in per_cpu.iter() {
            total.accumulate(v);
        }
        Ok(total)
    }

    /// Counters of a backend, summed over CPUs.
    pub fn backend_stats(&self, backend_id: u32) -> Result<BackendStats> {
        let per_cpu = self.backend_stats.get(&backend_id, 0)?;
        let mut total = BackendStats::default();
        for v in per_cpu.iter() {
            total.accumulate(v);
        }
        Ok(total)
    }

    /// Every stick-table entry (a snapshot; the table changes while it is read).
    pub fn stick_entries(&self) -> Vec<(StickKey, StickValue)> {
        self.stick.iter().filter_map(|r| r.ok()).collect()
    }
}
