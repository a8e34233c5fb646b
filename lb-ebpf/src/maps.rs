//! Every BPF map of the data path. Keys and values are defined in `lb-common`; sizes set
//! here are defaults that userspace may override at load time (`set_max_entries`).

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use lb_common::{
    event_ring::EventRingPos, Backend, BackendStats, CachedRoute, EncapSource, Endpoint,
    FragCandidates, InsertBudget, NeighKey, ReverseValue, ServiceInfo, ServiceSlot, ServiceStats,
    StickEvent, StickKey, StickValue, DEFAULT_STICK_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICES,
    NEIGH_EVENTS_BYTES, NEIGH_SEEN_ENTRIES, REPLY_FILTER_WORDS, RING_SLOTS, SERVICE_INDEX_SLOTS,
    STICK_EVENT_SLOTS,
};

/// (VIP, port, protocol) → service. Port 0 = every port of the VIP.
#[map]
pub static SERVICES: HashMap<Endpoint, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// The services again, as the exact table the data path reads (`lb_common::index`): two
/// regions of `SERVICE_INDEX_SLOTS` slots, the active one named by `SERVICE_INDEX_HEAD`.
#[map]
pub static SERVICE_INDEX: Array<ServiceSlot> = Array::with_max_entries(2 * SERVICE_INDEX_SLOTS, 0);

/// Slot 0: the service index's head word (active region and seed, `index::head`).
#[map]
pub static SERVICE_INDEX_HEAD: Array<u32> = Array::with_max_entries(1, 0);

/// Bitmap over the addresses of `REVERSE` keys (`index::reply_bit`): traffic from an
/// address without its bit is no NAT reply, and skips the `REVERSE` lookups.
#[map]
pub static REPLY_FILTER: Array<u64> = Array::with_max_entries(REPLY_FILTER_WORDS, 0);

/// Backend id → backend.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Selection tables (Maglev tables and round-robin sequences) of every service: backend
/// ids, each table at `ServiceInfo::ring_offset`, `ring_len` slots long.
#[map]
pub static RING: Array<u32> = Array::with_max_entries(RING_SLOTS, 0);

/// Round-robin position per service id (shared by all CPUs).
#[map]
pub static RR_CURSOR: Array<u64> = Array::with_max_entries(MAX_SERVICES, 0);

/// The stick table: (service id, client address) → (backend id, last seen). One LRU hash
/// shared by all CPUs, so a client's packets agree whichever CPU they arrive on.
#[map]
pub static STICK: LruHashMap<StickKey, StickValue> =
    LruHashMap::with_max_entries(DEFAULT_STICK_TABLE_SIZE, 0);

/// New entries and re-picks (`StickEvent`), for the agent to replicate to its peers: one
/// ring of `STICK_EVENT_SLOTS` slots per CPU (`lb_common::event_ring`), mapped by the agent.
/// Sized by the loader (CPUs × slots); bounded: when a CPU's ring is full an event is
/// dropped and counted in `STICK_EVENTS_LOST` (the agent's periodic scan of the table
/// repairs what was lost).
#[map]
pub static STICK_EVENT_RING: Array<StickEvent> =
    Array::with_max_entries(STICK_EVENT_SLOTS, BPF_F_MMAPABLE);

/// Each CPU's ring positions (`EventRingPos`: head written here, tail by the agent).
#[map]
pub static STICK_EVENT_POS: Array<EventRingPos> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Per-CPU count of events dropped because `STICK_EVENTS` was full (slot 0).
#[map]
pub static STICK_EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Backend endpoint (address, port, protocol) → VIP, for rewriting NAT replies.
/// Port 0 = every port of that backend address.
#[map]
pub static REVERSE: HashMap<Endpoint, ReverseValue> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU counters per service id.
#[map]
pub static SERVICE_STATS: PerCpuArray<ServiceStats> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Per-CPU new-entry budget per service id (the insert cap's one-second window).
#[map]
pub static INSERT_BUDGET: PerCpuArray<InsertBudget> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Per-CPU route to each backend id, from the FIB, reused for `ROUTE_CACHE_NS`.
#[map]
pub static ROUTE_CACHE: PerCpuArray<CachedRoute> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU counters per backend id.
#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// (VIP, port 0, protocol) → services on that VIP that non-first IPv4 fragments (no
/// ports) may belong to.
#[map]
pub static FRAGMENTS: HashMap<Endpoint, FragCandidates> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

/// Service id → the prefixes of its client-hash outer sources (services with
/// `SVC_SRC_HASH` only).
#[map]
pub static ENCAP_SOURCE: Array<EncapSource> = Array::with_max_entries(MAX_SERVICES, 0);

/// Next hop → when the data path last reported it unresolved (`neigh::report`).
#[map]
pub static NEIGH_SEEN: LruHashMap<NeighKey, u64> =
    LruHashMap::with_max_entries(NEIGH_SEEN_ENTRIES, 0);

/// Scratch `bpf_fib_lookup` parameters of this CPU (see `forward::fib_params`).
#[map]
pub static FIB_SCRATCH: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> =
    PerCpuArray::with_max_entries(1, 0);

/// The next hop of this CPU's last `NO_NEIGH` FIB lookup (a scratch slot, see
/// `neigh::remember`), for the unresolved-next-hop programs.
#[map]
pub static NEIGH_HOP: PerCpuArray<NeighKey> = PerCpuArray::with_max_entries(1, 0);

/// Next hops the FIB could not resolve (`NeighMiss` records), read by the agent.
#[map]
pub static NEIGH_EVENTS: RingBuf = RingBuf::with_byte_size(NEIGH_EVENTS_BYTES, 0);

/// Tail-call targets: the ICMP-error, later-fragment and unresolved-next-hop programs
/// (slots `JUMP_ICMP`, `JUMP_FRAGMENT`, `JUMP_NEIGH`, `JUMP_NEIGH_REPLY`), filled by the
/// loader.
#[map]
pub static JUMP: ProgramArray = ProgramArray::with_max_entries(4, 0);

/// The clock's calibration (slot `CLOCK_CALIBRATION`, written by the loader) and the probe's
/// sample (slot `CLOCK_SAMPLE`); see `lb_common::clock`. Not pinned: one per program.
#[map]
pub static CLOCK: Array<lb_common::clock::Calibration> = Array::with_max_entries(2, 0);
