//! The replicated view of the stick table: every entry this node knows (its own and its
//! peers'), the rule that decides between two values of one entry, and the per-peer send
//! queues. Pure: no I/O, no clock reads (the caller passes `now`), tested on the host.
//!
//! # The value of an entry and the rule between two values
//!
//! An entry is (service, client) → (backend, last seen, stamp). Two things are merged
//! separately:
//!
//! - **Liveness**: with the same backend, last-seen is the most recent of the two.
//! - **The decision** (which backend): the value with the higher *stamp* wins, ties
//!   broken by the lower backend identity ([`BackendKey`]'s order). The stamp travels
//!   unchanged, so every node compares the same pair and all converge on one value
//!   whatever order messages arrive in (a last-writer-wins register over a total order).
//!
//! A stamp is the wall-clock millisecond of the pick, kept monotonic per entry: a
//! re-pick made here gets `max(now, replaced + 1)`, so it supersedes what it replaced
//! even when this node's clock is behind. An entry found by scanning the map that no
//! event announced (a lost event, or the table found after a restart) gets stamp 0, or
//! `replaced + 1` when it replaces a known value: such an entry fills a gap but never
//! beats a real decision made elsewhere.
//!
//! Why not "the most recently seen value wins", literally: last-seen is reconstructed
//! on each node as `now − age`, which shifts by the transit time, so two nodes comparing
//! two nearly simultaneous picks can each find the other's newer and swap, ending
//! apart; and a client still hitting a stale backend on one node would keep beating a
//! re-pick made elsewhere. Recency of the *decision*, with a stamp that does not change
//! in flight, has neither problem.
//!
//! Two values with different backends whose stamps are within `conflict_window_ms` are
//! a *conflict* (two nodes picked one client differently at about the same time: round
//! robin can do that, Maglev cannot); they are resolved by the same rule and counted.
//!
//! # The store and the local map
//!
//! The agent reports what its data path decided ([`Observed`]: events from the ring
//! buffer, and a periodic scan of the table), and writes what peers decided ([`Applied`]).
//! Both race with the data path, which writes the map on its own. `changed_at` (when this
//! store last took a new decision for the entry, in the data path's clock) settles it:
//! a map value seen with a last-seen after `changed_at` is a newer local decision and
//! wins (it is sent to the peers); an older one means the map is behind the store, and
//! once the change has settled (`SETTLE_MS`) the store asks the agent to write its value
//! again. Either way map, store and peers end on one value.
//!
//! # Queues
//!
//! Each peer with a live session has a queue of slots to send, bounded (`queue_limit`)
//! and deduplicated (a bit per peer in the slot): an entry changed ten times before the
//! sender got to it is sent once, with its latest value. When a queue would overflow it
//! is dropped and the peer marked for a full teach instead: memory stays bounded and a
//! slow peer never slows anyone else.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;

use crate::catalog::ServiceDef;
use crate::identity::{BackendKey, ClientKey, ServiceKey};

/// How long after a change the store trusts that the agent's write reached the map: a
/// scan that still finds an older, different value after this is answered with a rewrite.
pub const SETTLE_MS: u64 = 1_000;

/// Most peers (one bit each in a slot's queue mask).
pub const MAX_PEERS: usize = 32;

/// Entries sampled to pick one to evict when the store is full (approximate LRU).
const EVICT_SAMPLES: usize = 8;

/// What the agent saw in its data path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    pub service: ServiceKey,
    pub client: ClientKey,
    pub backend: BackendKey,
    /// Last seen, `CLOCK_MONOTONIC_COARSE` ms (the map's `last_seen_ns / 1e6`).
    pub last_seen_ms: u64,
    pub kind: ObservedKind,
}

/// Where an observation comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservedKind {
    /// An event of the data path: a new entry or a re-pick, sent to the peers at once.
    Picked,
    /// Found by the periodic scan of the table: refreshes (sent at most once per
    /// refresh interval) and repairs of lost events.
    Scanned,
}

/// An entry for the agent to write into its stick table: backend `backend` of service
/// `service` for `client`, last seen at `last_seen_ms` (`CLOCK_MONOTONIC_COARSE` ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub service: ServiceKey,
    pub client: ClientKey,
    pub backend: BackendKey,
    pub last_seen_ms: u64,
}

/// An entry as a peer sent it, identities resolved from the session's dictionary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    pub service: ServiceKey,
    pub client: ClientKey,
    pub backend: BackendKey,
    pub age_ms: u64,
    pub stamp: u64,
}

/// An entry to send: identities, their store ordinals (a session's dictionary indexes),
/// last seen and stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub service: ServiceKey,
    pub service_ord: u32,
    pub client: ClientKey,
    pub backend: BackendKey,
    pub backend_ord: u32,
    pub last_seen_ms: u64,
    pub stamp: u64,
}

/// Result of merging one remote entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// The store changed: write this into the local table.
    Apply(Applied),
    /// Nothing new (a duplicate, an older last-seen, or a value that lost; a losing
    /// value with another backend is answered with ours).
    Unchanged,
    /// Not stored: the reason is counted.
    Ignored(Ignore),
}

/// Why a remote entry was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignore {
    UnknownService,
    UnknownBackend,
    Expired,
}

/// Counters of the store (cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounters {
    /// Remote entries new to this node, stored and written to the table.
    pub adopted: u64,
    /// Remote refreshes that moved a last-seen forward.
    pub refreshed: u64,
    /// Remote decisions that replaced an older one here (a re-pick elsewhere).
    pub superseded: u64,
    /// Two different picks of one client within the conflict window, resolved.
    pub conflicts: u64,
    /// Remote values that lost to the value here (answered with ours).
    pub rejected: u64,
    /// Remote entries naming a service this node does not have.
    pub unknown_service: u64,
    /// Remote entries naming a backend the service does not have here.
    pub unknown_backend: u64,
    /// Remote entries already expired by this node's expiry.
    pub expired_ignored: u64,
    /// Local decisions (events) stored and sent.
    pub local_picks: u64,
    /// Local entries the scan found that no event announced (lost events, restarts).
    pub local_repairs: u64,
    /// Local refreshes sent.
    pub refreshes: u64,
    /// Events no newer than a decision adopted since (the store's value is written again).
    pub stale_events: u64,
    /// Store values the agent was asked to write again (the map was behind).
    pub rewrites: u64,
    /// Observations naming a service or backend the catalog does not have.
    pub unknown_local: u64,
    /// Entries dropped because they expired.
    pub expired: u64,
    /// Entries evicted because the store was full.
    pub evicted: u64,
    /// Entries dropped because their service left the configuration.
    pub removed: u64,
}

/// Slots one maintenance tick looks at for expiry ([`Store::expire_step`]): a store of
/// a million entries is walked in four seconds (a tick is 250 ms), about a millisecond
/// of the lock per tick.
pub const EXPIRE_STEP: usize = 65_536;

/// A client within a service: the key of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct EntryKey {
    svc: u16,
    client: ClientKey,
}

#[derive(Clone, Debug)]
struct Slot {
    key: EntryKey,
    backend: u32,
    gen: u32,
    /// Bit `p`: queued for peer `p`.
    queued: u32,
    live: bool,
    /// The value came from a peer (vs. a decision of this node's data path).
    remote: bool,
    last_seen: u64,
    stamp: u64,
    /// When the store last took a new decision for this entry (mono ms).
    changed_at: u64,
    /// The last-seen last sent to (or learned from) the peers.
    sent_seen: u64,
}

struct LocalService {
    expire_ms: Option<u64>,
    refresh_ms: Option<u64>,
    backends: HashSet<u32>,
}

/// A value-less interner: identity ↔ ordinal, never shrinking (bounded by what the
/// configuration ever named).
struct Interner<K> {
    map: HashMap<K, u32>,
    keys: Vec<K>,
}

impl<K: Copy + Eq + std::hash::Hash> Interner<K> {
    fn new() -> Self {
        Interner {
            map: HashMap::new(),
            keys: Vec::new(),
        }
    }
    fn intern(&mut self, k: K) -> u32 {
        if let Some(&o) = self.map.get(&k) {
            return o;
        }
        let o = self.keys.len() as u32;
        self.keys.push(k);
        self.map.insert(k, o);
        o
    }
    fn get(&self, k: &K) -> Option<u32> {
        self.map.get(k).copied()
    }
    fn key(&self, o: u32) -> K {
        self.keys[o as usize]
    }
}

/// One peer's send queue.
#[derive(Default)]
struct PeerQueue {
    /// (slot, generation, enqueued at mono ms).
    items: VecDeque<(u32, u32, u64)>,
    active: bool,
    /// Dropped for overflow since the sender last looked: it must teach again.
    overflowed: bool,
    overflows: u64,
}

/// What a sender gets from its queue.
#[derive(Debug, Default)]
pub struct Drained {
    pub entries: Vec<Outgoing>,
    /// The queue overflowed: send a full teach.
    pub resync: bool,
}

/// The store. See the module documentation.
pub struct Store {
    index: HashMap<EntryKey, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    capacity: usize,
    services: Interner<ServiceKey>,
    backends: Interner<BackendKey>,
    local: HashMap<u16, LocalService>,
    peers: Vec<PeerQueue>,
    queue_limit: usize,
    conflict_window_ms: u64,
    rng: u64,
    pub counters: StoreCounters,
}

/// The rank order between two decisions: the higher stamp wins, ties to the lower
/// backend identity. `Greater` = `a` wins.
pub fn rank(a_stamp: u64, a: &BackendKey, b_stamp: u64, b: &BackendKey) -> std::cmp::Ordering {
    a_stamp.cmp(&b_stamp).then_with(|| b.cmp(a))
}

impl Store {
    /// A store for at most `capacity` entries, `peers` peers, `queue_limit` queued
    /// entries per peer before a resync, and the conflict window.
    pub fn new(
        capacity: usize,
        peers: usize,
        queue_limit: usize,
        conflict_window_ms: u64,
    ) -> Store {
        assert!(peers <= MAX_PEERS, "at most {MAX_PEERS} peers");
        Store {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            capacity: capacity.max(1),
            services: Interner::new(),
            backends: Interner::new(),
            local: HashMap::new(),
            peers: (0..peers).map(|_| PeerQueue::default()).collect(),
            queue_limit: queue_limit.max(1),
            conflict_window_ms,
            rng: 0x9e37_79b9_7f4a_7c15,
            counters: StoreCounters::default(),
        }
    }

    /// Makes room for `n` entries (at most the capacity) now, so that the store never
    /// grows, and so never rehashes under its lock, while it fills: a rehash of a million
    /// entries holds the lock for tens of milliseconds. The agent reserves the size of its
    /// stick tables at start.
    pub fn reserve(&mut self, n: usize) {
        let n = n.min(self.capacity);
        self.index.reserve(n.saturating_sub(self.index.len()));
        self.slots.reserve(n.saturating_sub(self.slots.len()));
    }

    /// Entries stored.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Replaces the catalog of local services. Entries of services no longer defined
    /// are dropped; entries whose backend left a service stay (the data path re-picks
    /// them, and the event replaces them).
    pub fn set_services(&mut self, defs: &[ServiceDef]) {
        let mut local = HashMap::new();
        for d in defs {
            let so = self.services.intern(d.key);
            let Ok(svc) = u16::try_from(so) else {
                continue;
            };
            let backends = d
                .backends
                .iter()
                .map(|b| self.backends.intern(b.key))
                .collect();
            local.insert(
                svc,
                LocalService {
                    expire_ms: d.expire.map(|e| e.as_millis() as u64),
                    refresh_ms: d.refresh_interval().map(|r| r.as_millis() as u64),
                    backends,
                },
            );
        }
        self.local = local;
        let gone: Vec<u32> = self
            .index
            .iter()
            .filter(|(k, _)| !self.local.contains_key(&k.svc))
            .map(|(_, &i)| i)
            .collect();
        for i in gone {
            self.remove(i);
            self.counters.removed += 1;
        }
    }

    /// Resolves an identity pair against the catalog.
    fn resolve(&self, s: &ServiceKey, b: &BackendKey) -> Result<(u16, u32), Ignore> {
        let svc = self
            .services
            .get(s)
            .and_then(|o| u16::try_from(o).ok())
            .filter(|o| self.local.contains_key(o))
            .ok_or(Ignore::UnknownService)?;
        let be = self
            .backends
            .get(b)
            .filter(|o| self.local[&svc].backends.contains(o))
            .ok_or(Ignore::UnknownBackend)?;
        Ok((svc, be))
    }

    /// Whether the catalog has this service.
    pub fn knows_service(&self, s: &ServiceKey) -> bool {
        self.services
            .get(s)
            .and_then(|o| u16::try_from(o).ok())
            .is_some_and(|o| self.local.contains_key(&o))
    }

    fn applied(&self, i: u32) -> Applied {
        let s = &self.slots[i as usize];
        Applied {
            service: self.services.key(u32::from(s.key.svc)),
            client: s.key.client,
            backend: self.backends.key(s.backend),
            last_seen_ms: s.last_seen,
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: only for sampling eviction candidates.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A free slot for `key`, evicting the stalest of a few sampled entries when full.
    fn alloc(&mut self, key: EntryKey) -> u32 {
        if self.live >= self.capacity {
            let mut victim: Option<u32> = None;
            let mut sampled = 0;
            let n = self.slots.len() as u64;
            for _ in 0..EVICT_SAMPLES * 4 {
                let i = (self.next_rand() % n) as u32;
                let s = &self.slots[i as usize];
                if !s.live {
                    continue;
                }
                if victim.is_none_or(|v| s.last_seen < self.slots[v as usize].last_seen) {
                    victim = Some(i);
                }
                sampled += 1;
                if sampled == EVICT_SAMPLES {
                    break;
                }
            }
            let v = victim.unwrap_or_else(|| {
                self.slots
                    .iter()
                    .position(|s| s.live)
                    .expect("a full store has a live slot") as u32
            });
            self.remove(v);
            self.counters.evicted += 1;
        }
        let slot = Slot {
            key,
            backend: 0,
            gen: 0,
            queued: 0,
            live: true,
            remote: false,
            last_seen: 0,
            stamp: 0,
            changed_at: 0,
            sent_seen: 0,
        };
        let i = match self.free.pop() {
            Some(i) => {
                let gen = self.slots[i as usize].gen;
                self.slots[i as usize] = Slot { gen, ..slot };
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        self.live += 1;
        i
    }

    fn remove(&mut self, i: u32) {
        let s = &mut self.slots[i as usize];
        if !s.live {
            return;
        }
        s.live = false;
        s.queued = 0;
        // Queued references to the old entry become stale.
        s.gen = s.gen.wrapping_add(1);
        let key = s.key;
        self.index.remove(&key);
        self.free.push(i);
        self.live -= 1;
    }

    /// Queues slot `i` for every active peer (or only `only`).
    fn enqueue(&mut self, i: u32, now: u64, only: Option<usize>) {
        let gen = self.slots[i as usize].gen;
        for p in 0..self.peers.len() {
            if only.is_some_and(|o| o != p) || !self.peers[p].active {
                continue;
            }
            let bit = 1u32 << p;
            if self.slots[i as usize].queued & bit != 0 {
                continue;
            }
            if self.peers[p].items.len() >= self.queue_limit {
                self.overflow(p);
                continue;
            }
            self.slots[i as usize].queued |= bit;
            self.peers[p].items.push_back((i, gen, now));
        }
    }

    fn overflow(&mut self, p: usize) {
        let bit = 1u32 << p;
        let q = &mut self.peers[p];
        for &(i, _, _) in &q.items {
            self.slots[i as usize].queued &= !bit;
        }
        q.items.clear();
        q.overflowed = true;
        q.overflows += 1;
    }

    /// Merges an entry from peer `peer` (see the module documentation).
    pub fn merge_remote(&mut self, now: u64, peer: usize, e: &Remote) -> Merge {
        let (svc, be) = match self.resolve(&e.service, &e.backend) {
            Ok(r) => r,
            Err(why) => {
                match why {
                    Ignore::UnknownService => self.counters.unknown_service += 1,
                    Ignore::UnknownBackend => self.counters.unknown_backend += 1,
                    Ignore::Expired => {}
                }
                return Merge::Ignored(why);
            }
        };
        if self.local[&svc].expire_ms.is_some_and(|x| e.age_ms > x) {
            self.counters.expired_ignored += 1;
            return Merge::Ignored(Ignore::Expired);
        }
        let last_seen = now.saturating_sub(e.age_ms);
        let key = EntryKey {
            svc,
            client: e.client,
        };
        let Some(&i) = self.index.get(&key) else {
            let i = self.alloc(key);
            let s = &mut self.slots[i as usize];
            s.backend = be;
            s.last_seen = last_seen;
            s.stamp = e.stamp;
            s.changed_at = now;
            s.sent_seen = last_seen;
            s.remote = true;
            self.counters.adopted += 1;
            return Merge::Apply(self.applied(i));
        };
        let window = self.conflict_window_ms;
        let cur_backend = self.backends.key(self.slots[i as usize].backend);
        let s = &mut self.slots[i as usize];
        if s.backend == be {
            s.stamp = s.stamp.max(e.stamp);
            s.sent_seen = s.sent_seen.max(last_seen);
            if last_seen > s.last_seen {
                s.last_seen = last_seen;
                self.counters.refreshed += 1;
                return Merge::Apply(self.applied(i));
            }
            return Merge::Unchanged;
        }
        let concurrent = e.stamp.abs_diff(s.stamp) <= window;
        if rank(e.stamp, &e.backend, s.stamp, &cur_backend).is_gt() {
            s.backend = be;
            s.stamp = e.stamp;
            s.last_seen = last_seen;
            s.changed_at = now;
            s.sent_seen = last_seen;
            s.remote = true;
            if concurrent {
                self.counters.conflicts += 1;
            } else {
                self.counters.superseded += 1;
            }
            Merge::Apply(self.applied(i))
        } else {
            if concurrent {
                self.counters.conflicts += 1;
            } else {
                self.counters.rejected += 1;
            }
            // The sender holds a value that lost: answer with ours, so that it converges
            // even if the entry's origin cannot reach it.
            self.enqueue(i, now, Some(peer));
            Merge::Unchanged
        }
    }

    /// Takes an observation of the local data path. Returns a value for the agent to
    /// write again when the map turned out to be behind the store.
    pub fn observe(&mut self, now: u64, wall: u64, o: &Observed) -> Option<Applied> {
        let Ok((svc, be)) = self.resolve(&o.service, &o.backend) else {
            self.counters.unknown_local += 1;
            return None;
        };
        let picked = o.kind == ObservedKind::Picked;
        let key = EntryKey {
            svc,
            client: o.client,
        };
        let Some(&i) = self.index.get(&key) else {
            if self.local[&svc]
                .expire_ms
                .is_some_and(|x| now.saturating_sub(o.last_seen_ms) > x)
            {
                return None;
            }
            let i = self.alloc(key);
            let s = &mut self.slots[i as usize];
            s.backend = be;
            s.last_seen = o.last_seen_ms;
            s.stamp = if picked { wall } else { 0 };
            s.changed_at = o.last_seen_ms;
            s.sent_seen = o.last_seen_ms;
            s.remote = false;
            if picked {
                self.counters.local_picks += 1;
            } else {
                self.counters.local_repairs += 1;
            }
            self.enqueue(i, now, None);
            return None;
        };
        let refresh_ms = self.local[&svc].refresh_ms;
        let s = &mut self.slots[i as usize];
        if s.backend == be {
            s.last_seen = s.last_seen.max(o.last_seen_ms);
            if picked {
                s.stamp = wall.max(s.stamp + 1);
                s.changed_at = s.changed_at.max(o.last_seen_ms);
                s.remote = false;
                s.sent_seen = s.last_seen;
                self.counters.local_picks += 1;
                self.enqueue(i, now, None);
            } else if refresh_ms.is_some_and(|r| s.last_seen.saturating_sub(s.sent_seen) >= r) {
                s.sent_seen = s.last_seen;
                self.counters.refreshes += 1;
                self.enqueue(i, now, None);
            }
            return None;
        }
        if o.last_seen_ms > s.changed_at {
            // The map holds a decision newer than anything this store took: this node's
            // data path re-picked.
            s.backend = be;
            s.last_seen = o.last_seen_ms;
            s.changed_at = o.last_seen_ms;
            s.sent_seen = o.last_seen_ms;
            s.remote = false;
            if picked {
                s.stamp = wall.max(s.stamp + 1);
                self.counters.local_picks += 1;
            } else {
                s.stamp += 1;
                self.counters.local_repairs += 1;
            }
            self.enqueue(i, now, None);
            return None;
        }
        if picked {
            // A pick no newer than the decision the store took since (at the coarse
            // clock's tick, "the same moment" too): the map may hold either, so the
            // store's winner is written again now rather than at the next scan, which
            // could leave this node on another backend than its peers for seconds.
            self.counters.stale_events += 1;
            return Some(self.applied(i));
        }
        if s.remote || now >= s.changed_at + SETTLE_MS {
            self.counters.rewrites += 1;
            return Some(self.applied(i));
        }
        None
    }

    /// Drops entries past their service's expiry, the whole store at once. Returns how
    /// many.
    pub fn expire(&mut self, now: u64) -> usize {
        self.expire_step(now, &mut 0, usize::MAX)
    }

    /// Drops the expired entries among up to `max` slots from `*cursor` on, advancing it
    /// (back to 0 past the last slot). The maintenance task walks the store this way,
    /// [`EXPIRE_STEP`] slots per tick, so that the store's lock is held for a short scan
    /// of contiguous slots, never a walk of millions of entries that would stall the
    /// sessions. Returns how many it dropped.
    pub fn expire_step(&mut self, now: u64, cursor: &mut usize, max: usize) -> usize {
        // Each service's expiry, looked up once per step rather than once per entry.
        let expiry: Vec<Option<u64>> = (0..self.services.keys.len())
            .map(|svc| {
                u16::try_from(svc)
                    .ok()
                    .and_then(|svc| self.local.get(&svc))
                    .and_then(|l| l.expire_ms)
            })
            .collect();
        let start = (*cursor).min(self.slots.len());
        let end = start.saturating_add(max).min(self.slots.len());
        let mut gone = 0;
        for i in start..end {
            let s = &self.slots[i];
            let expired = s.live
                && expiry
                    .get(usize::from(s.key.svc))
                    .copied()
                    .flatten()
                    .is_some_and(|x| now.saturating_sub(s.last_seen) > x);
            if expired {
                self.remove(i as u32);
                gone += 1;
            }
        }
        *cursor = if end >= self.slots.len() { 0 } else { end };
        self.counters.expired += gone as u64;
        gone
    }

    fn outgoing(&self, i: u32) -> Outgoing {
        let s = &self.slots[i as usize];
        Outgoing {
            service: self.services.key(u32::from(s.key.svc)),
            service_ord: u32::from(s.key.svc),
            client: s.key.client,
            backend: self.backends.key(s.backend),
            backend_ord: s.backend,
            last_seen_ms: s.last_seen,
            stamp: s.stamp,
        }
    }

    fn is_expired(&self, i: u32, now: u64) -> bool {
        let s = &self.slots[i as usize];
        self.local.get(&s.key.svc).is_none_or(|l| {
            l.expire_ms
                .is_some_and(|x| now.saturating_sub(s.last_seen) > x)
        })
    }

    /// Starts (or restarts) queueing for peer `p` (a session is up): the queue starts
    /// empty, the session teaches everything first.
    pub fn activate_peer(&mut self, p: usize) {
        self.clear_queue(p);
        self.peers[p].active = true;
        self.peers[p].overflowed = false;
    }

    /// Stops queueing for peer `p` (its session ended).
    pub fn deactivate_peer(&mut self, p: usize) {
        self.clear_queue(p);
        self.peers[p].active = false;
        self.peers[p].overflowed = false;
    }

    fn clear_queue(&mut self, p: usize) {
        let bit = 1u32 << p;
        for &(i, _, _) in &self.peers[p].items {
            self.slots[i as usize].queued &= !bit;
        }
        self.peers[p].items.clear();
    }

    /// Takes up to `max` queued entries for peer `p`, current values, expired and
    /// removed ones skipped. `resync` when the queue overflowed since the last call.
    pub fn drain(&mut self, p: usize, max: usize, now: u64) -> Drained {
        let mut out = Drained {
            resync: std::mem::take(&mut self.peers[p].overflowed),
            entries: Vec::new(),
        };
        let bit = 1u32 << p;
        while out.entries.len() < max {
            let Some((i, gen, _)) = self.peers[p].items.pop_front() else {
                break;
            };
            let s = &mut self.slots[i as usize];
            if s.gen != gen || !s.live {
                continue;
            }
            s.queued &= !bit;
            if !self.is_expired(i, now) {
                out.entries.push(self.outgoing(i));
            }
        }
        out
    }

    /// Entries queued for peer `p`, and how long the oldest has waited (ms).
    pub fn queue_state(&self, p: usize, now: u64) -> (usize, u64) {
        let q = &self.peers[p];
        let lag = q
            .items
            .front()
            .map_or(0, |&(_, _, t)| now.saturating_sub(t));
        (q.items.len(), lag)
    }

    /// Times peer `p`'s queue overflowed (each one a resync).
    pub fn overflows(&self, p: usize) -> u64 {
        self.peers[p].overflows
    }

    /// Up to `max` live entries from slot `*cursor` on, advancing it (a teach walks the
    /// slots in chunks so that the lock is held briefly; an entry changed behind the
    /// cursor is in the session's queue anyway). Returns false when the walk is done.
    pub fn teach_chunk(
        &self,
        cursor: &mut usize,
        max: usize,
        now: u64,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        while *cursor < self.slots.len() && out.len() < max {
            let i = *cursor as u32;
            *cursor += 1;
            if self.slots[i as usize].live && !self.is_expired(i, now) {
                out.push(self.outgoing(i));
            }
        }
        *cursor < self.slots.len()
    }

    /// Every live entry (for tests and `table` views): identities and values.
    pub fn entries(&self) -> Vec<Outgoing> {
        self.index.values().map(|&i| self.outgoing(i)).collect()
    }

    /// The entry for (service, client), if stored.
    pub fn get(&self, service: &ServiceKey, client: &ClientKey) -> Option<Outgoing> {
        let svc = u16::try_from(self.services.get(service)?).ok()?;
        let i = *self.index.get(&EntryKey {
            svc,
            client: *client,
        })?;
        Some(self.outgoing(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::BackendDef;
    use crate::identity::Proto;
    use std::time::Duration;

    fn svc() -> ServiceKey {
        ServiceKey {
            vip: "10.0.0.100".parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
        }
    }
    fn be(n: u8) -> BackendKey {
        BackendKey {
            addr: format!("10.0.1.{n}").parse().unwrap(),
            port: 8080,
        }
    }
    fn client(n: u8) -> ClientKey {
        ClientKey::host(format!("198.51.100.{n}").parse().unwrap())
    }
    fn defs(expire_s: u64) -> Vec<ServiceDef> {
        vec![ServiceDef {
            key: svc(),
            expire: Some(Duration::from_secs(expire_s)),
            scheduler: "roundrobin".into(),
            backends: (2..=4)
                .map(|n| BackendDef {
                    key: be(n),
                    weight: 1,
                })
                .collect(),
        }]
    }
    fn store(peers: usize) -> Store {
        let mut s = Store::new(1000, peers, 100, 1000);
        s.set_services(&defs(60));
        for p in 0..peers {
            s.activate_peer(p);
        }
        s
    }
    fn remote(c: u8, b: u8, age: u64, stamp: u64) -> Remote {
        Remote {
            service: svc(),
            client: client(c),
            backend: be(b),
            age_ms: age,
            stamp,
        }
    }
    fn obs(c: u8, b: u8, seen: u64, kind: ObservedKind) -> Observed {
        Observed {
            service: svc(),
            client: client(c),
            backend: be(b),
            last_seen_ms: seen,
            kind,
        }
    }

    #[test]
    fn rank_is_stamp_then_lower_backend() {
        use std::cmp::Ordering::*;
        assert_eq!(rank(2, &be(9), 1, &be(2)), Greater);
        assert_eq!(
            rank(1, &be(2), 1, &be(3)),
            Greater,
            "tie: lower backend wins"
        );
        assert_eq!(rank(1, &be(3), 1, &be(2)), Less);
        assert_eq!(rank(1, &be(3), 1, &be(3)), Equal);
    }

    #[test]
    fn remote_new_refresh_and_older() {
        let mut s = store(1);
        let now = 100_000;
        let m = s.merge_remote(now, 0, &remote(1, 2, 500, 10));
        assert_eq!(
            m,
            Merge::Apply(Applied {
                service: svc(),
                client: client(1),
                backend: be(2),
                last_seen_ms: now - 500
            })
        );
        // A refresh moves last-seen forward; an older one changes nothing.
        assert!(matches!(
            s.merge_remote(now + 10, 0, &remote(1, 2, 0, 10)),
            Merge::Apply(a) if a.last_seen_ms == now + 10
        ));
        assert_eq!(
            s.merge_remote(now + 20, 0, &remote(1, 2, 5000, 10)),
            Merge::Unchanged
        );
        assert_eq!(s.counters.adopted, 1);
        assert_eq!(s.counters.refreshed, 1);
        // Learned entries are not relayed.
        assert!(s.drain(0, 10, now).entries.is_empty());
    }

    #[test]
    fn unknown_and_expired_are_ignored_and_counted() {
        let mut s = store(1);
        let mut r = remote(1, 9, 0, 1);
        assert_eq!(
            s.merge_remote(1000, 0, &r),
            Merge::Ignored(Ignore::UnknownBackend)
        );
        r.backend = be(2);
        r.service.port = 81;
        assert_eq!(
            s.merge_remote(1000, 0, &r),
            Merge::Ignored(Ignore::UnknownService)
        );
        assert_eq!(
            s.merge_remote(1_000_000, 0, &remote(1, 2, 61_000, 1)),
            Merge::Ignored(Ignore::Expired)
        );
        assert_eq!(s.counters.unknown_backend, 1);
        assert_eq!(s.counters.unknown_service, 1);
        assert_eq!(s.counters.expired_ignored, 1);
        assert!(s.is_empty());
    }

    /// Every delivery order of the same set of values ends on the same winner.
    #[test]
    fn conflict_converges_whatever_the_order() {
        let values = [(2u8, 1000u64), (3, 1000), (4, 999), (3, 1001), (2, 1001)];
        let mut winners = HashSet::new();
        // All permutations of 5 values.
        let mut idx: Vec<usize> = (0..values.len()).collect();
        permute(&mut idx, 0, &mut |order| {
            let mut s = store(1);
            for &k in order {
                let (b, stamp) = values[k];
                s.merge_remote(50_000, 0, &remote(1, b, 10, stamp));
            }
            let e = s.get(&svc(), &client(1)).unwrap();
            winners.insert((e.backend, e.stamp));
        });
        assert_eq!(winners.len(), 1, "{winners:?}");
        assert_eq!(winners.into_iter().next().unwrap(), (be(2), 1001));
    }

    fn permute(v: &mut Vec<usize>, k: usize, f: &mut dyn FnMut(&[usize])) {
        if k == v.len() {
            f(v);
            return;
        }
        for i in k..v.len() {
            v.swap(k, i);
            permute(v, k + 1, f);
            v.swap(k, i);
        }
    }

    #[test]
    fn a_losing_value_is_answered_and_a_conflict_counted() {
        let mut s = store(2);
        s.merge_remote(10_000, 0, &remote(1, 2, 0, 5000));
        // Peer 1 sends a concurrent pick of another backend with a lower rank.
        assert_eq!(
            s.merge_remote(10_000, 1, &remote(1, 3, 0, 4800)),
            Merge::Unchanged
        );
        assert_eq!(s.counters.conflicts, 1);
        let d1 = s.drain(1, 10, 10_000);
        assert_eq!(d1.entries.len(), 1, "answered with ours");
        assert_eq!(d1.entries[0].backend, be(2));
        assert!(s.drain(0, 10, 10_000).entries.is_empty());
        // A much later decision supersedes.
        assert!(matches!(
            s.merge_remote(10_000, 1, &remote(1, 4, 0, 90_000)),
            Merge::Apply(a) if a.backend == be(4)
        ));
        assert_eq!(s.counters.superseded, 1);
    }

    #[test]
    fn local_picks_are_sent_and_supersede_what_they_replace() {
        let mut s = store(1);
        // A remote value with a stamp far in this node's future (its clock is behind).
        s.merge_remote(10_000, 0, &remote(1, 2, 0, 9_000_000));
        // The data path re-picks after the adoption: the pick wins even so.
        assert_eq!(
            s.observe(10_050, 5_000, &obs(1, 3, 10_050, ObservedKind::Picked)),
            None
        );
        let e = s.get(&svc(), &client(1)).unwrap();
        assert_eq!(e.backend, be(3));
        assert_eq!(e.stamp, 9_000_001);
        let d = s.drain(0, 10, 10_050);
        assert_eq!(d.entries.len(), 1);
        assert_eq!(s.counters.local_picks, 1);
    }

    #[test]
    fn stale_event_and_rewrite_settle_on_the_store() {
        let mut s = store(1);
        s.merge_remote(10_000, 0, &remote(1, 2, 0, 50));
        // An event of a pick made before the adoption: the adopted value is written again
        // (the map may hold the old pick).
        let w = s.observe(10_001, 60, &obs(1, 3, 9_990, ObservedKind::Picked));
        assert_eq!(w.map(|a| a.backend), Some(be(2)));
        assert_eq!(s.counters.stale_events, 1);
        // The same at the very tick of the adoption.
        let w = s.observe(10_001, 60, &obs(1, 3, 10_000, ObservedKind::Picked));
        assert_eq!(w.map(|a| a.backend), Some(be(2)));
        assert_eq!(s.counters.stale_events, 2);
        // The scan finds that old pick in the map: the adopted value is written again.
        let w = s.observe(10_002, 60, &obs(1, 3, 9_990, ObservedKind::Scanned));
        assert_eq!(w.map(|a| a.backend), Some(be(2)));
        assert_eq!(s.counters.rewrites, 1);
        // A scan seeing a different backend used after the change: a local re-pick that
        // no event announced; it replaces the value with stamp + 1.
        assert_eq!(
            s.observe(10_003, 60, &obs(1, 4, 10_500, ObservedKind::Scanned)),
            None
        );
        let e = s.get(&svc(), &client(1)).unwrap();
        assert_eq!((e.backend, e.stamp), (be(4), 51));
        assert_eq!(s.counters.local_repairs, 1);
    }

    #[test]
    fn refresh_at_most_once_per_interval() {
        let mut s = store(1);
        // Expiry 60 s: refresh interval 15 s.
        s.observe(1_000, 1, &obs(1, 2, 1_000, ObservedKind::Picked));
        assert_eq!(s.drain(0, 10, 1_000).entries.len(), 1);
        for t in (2_000..16_000).step_by(1_000) {
            s.observe(t, 1, &obs(1, 2, t, ObservedKind::Scanned));
        }
        assert!(
            s.drain(0, 10, 16_000).entries.is_empty(),
            "within 15 s: none"
        );
        s.observe(16_000, 1, &obs(1, 2, 16_000, ObservedKind::Scanned));
        assert_eq!(s.drain(0, 10, 16_000).entries.len(), 1);
        assert_eq!(s.counters.refreshes, 1);
        // A refresh learned from a peer is not echoed by the scan that finds it written.
        s.merge_remote(20_000, 0, &remote(1, 2, 0, 1));
        s.observe(20_001, 1, &obs(1, 2, 20_000, ObservedKind::Scanned));
        assert!(s.drain(0, 10, 20_001).entries.is_empty());
    }

    #[test]
    fn scanned_new_entry_has_stamp_zero_and_loses_to_a_real_pick() {
        let mut s = store(1);
        s.observe(1_000, 1, &obs(1, 2, 900, ObservedKind::Scanned));
        assert_eq!(s.get(&svc(), &client(1)).unwrap().stamp, 0);
        assert!(matches!(
            s.merge_remote(1_000, 0, &remote(1, 3, 0, 1)),
            Merge::Apply(a) if a.backend == be(3)
        ));
    }

    #[test]
    fn queue_dedups_and_overflow_asks_for_resync() {
        let mut s = Store::new(1000, 1, 3, 1000);
        s.set_services(&defs(60));
        s.activate_peer(0);
        for _ in 0..5 {
            s.observe(1_000, 1, &obs(1, 2, 1_000, ObservedKind::Picked));
        }
        assert_eq!(s.queue_state(0, 1_000).0, 1, "one entry queued once");
        for c in 2..6 {
            s.observe(1_000, 1, &obs(c, 2, 1_000, ObservedKind::Picked));
        }
        let d = s.drain(0, 100, 1_000);
        assert!(d.resync, "overflowed");
        assert_eq!(s.overflows(0), 1);
        // An inactive peer queues nothing.
        s.deactivate_peer(0);
        s.observe(1_000, 1, &obs(9, 2, 1_000, ObservedKind::Picked));
        assert_eq!(s.queue_state(0, 1_000).0, 0);
    }

    #[test]
    fn capacity_evicts_the_stalest_of_a_sample() {
        let mut s = Store::new(100, 0, 10, 1000);
        s.set_services(&defs(3600));
        for c in 0..=200u8 {
            s.observe(
                10_000,
                1,
                &obs(c, 2, 1_000 + u64::from(c), ObservedKind::Picked),
            );
        }
        assert_eq!(s.len(), 100);
        assert_eq!(s.counters.evicted, 101);
        // The newest survive.
        assert!(s.get(&svc(), &client(200)).is_some());
    }

    #[test]
    fn expiry_in_steps_walks_every_slot_and_wraps() {
        let mut s = store(1);
        for c in 1..=10 {
            // Clients 1..=5 seen at 1 s (expired at 62 s), 6..=10 at 50 s.
            let seen = if c <= 5 { 1_000 } else { 50_000 };
            s.observe(1_000, 1, &obs(c, 2, seen, ObservedKind::Picked));
        }
        let mut cursor = 0;
        let mut gone = 0;
        for _ in 0..3 {
            gone += s.expire_step(62_000, &mut cursor, 4);
        }
        // 4 + 4 + 2 slots: the walk reached the end and starts over.
        assert_eq!((gone, cursor), (5, 0));
        assert_eq!(s.len(), 5);
        assert_eq!(s.counters.expired, 5);
        assert!((6..=10).all(|c| s.get(&svc(), &client(c)).is_some()));
        assert_eq!(s.expire_step(62_000, &mut cursor, 100), 0);
    }

    #[test]
    fn expiry_and_removed_services() {
        let mut s = store(1);
        s.observe(1_000, 1, &obs(1, 2, 1_000, ObservedKind::Picked));
        s.observe(1_000, 1, &obs(2, 2, 50_000, ObservedKind::Picked));
        assert_eq!(s.expire(62_000), 1);
        assert_eq!(s.len(), 1);
        // Expired entries are not sent.
        s.observe(1_000, 1, &obs(3, 2, 1_000, ObservedKind::Picked));
        let d = s.drain(0, 10, 70_000);
        assert!(d.entries.iter().all(|e| e.client != client(3)));
        s.set_services(&[]);
        assert!(s.is_empty());
        assert_eq!(s.counters.removed, 2);
    }

    #[test]
    fn teach_walks_every_live_entry_in_chunks() {
        let mut s = store(0);
        for c in 0..50u8 {
            s.observe(1_000, 1, &obs(c, 2 + c % 3, 1_000, ObservedKind::Picked));
        }
        let mut cursor = 0;
        let mut all = Vec::new();
        loop {
            let mut chunk = Vec::new();
            let more = s.teach_chunk(&mut cursor, 7, 1_000, &mut chunk);
            assert!(chunk.len() <= 7);
            all.extend(chunk);
            if !more {
                break;
            }
        }
        assert_eq!(all.len(), 50);
    }
}
