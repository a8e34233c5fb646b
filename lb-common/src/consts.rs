//! Constants shared by the data path and userspace. Change them in one place only.

/// Address families as stored in map keys.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// Forwarding modes ([`crate::ServiceInfo::forwarding`]).
pub const FWD_NAT: u8 = 1;
pub const FWD_DSR: u8 = 2;

/// Schedulers ([`crate::ServiceInfo::scheduler`]).
pub const SCHED_ROUNDROBIN: u8 = 1;
pub const SCHED_MAGLEV: u8 = 2;

/// `ServiceInfo::flags`: a TCP client without an entry gets one only on a SYN (without
/// ACK); other TCP packets of unknown clients are served by source hash, no entry.
pub const SVC_SYN_ONLY: u8 = 1;
/// Default `ServiceInfo::insert_cap`: new entries per second per CPU (Katran's figure).
pub const DEFAULT_INSERT_CAP: u32 = 125_000;
/// Length of the insert-cap window.
pub const INSERT_WINDOW_NS: u64 = 1_000_000_000;
/// How long a CPU reuses a backend's route from the FIB before asking again: a route or
/// neighbour change reaches the data path within this time.
pub const ROUTE_CACHE_NS: u64 = 1_000_000_000;
/// The data path reports a next hop it could not resolve at most this often (per next
/// hop, `NEIGH_SEEN`), so a flood of misses makes few events.
pub const NEIGH_REPORT_NS: u64 = 100_000_000;
/// Capacity of `NEIGH_SEEN` (next hops with a recent report; LRU).
pub const NEIGH_SEEN_ENTRIES: u32 = 4096;
/// Size of the `NEIGH_EVENTS` ring buffer in bytes (a power of two, multiple of the
/// page size): about 1600 reports of 48 bytes with their headers.
pub const NEIGH_EVENTS_BYTES: u32 = 64 * 1024;
/// `NeighMiss::why`: a NAT packet to a backend (passed to the kernel, which resolves).
pub const MISS_NAT_TO_BACKEND: u8 = 1;
/// `NeighMiss::why`: a DSR packet to a backend (dropped).
pub const MISS_DSR_TO_BACKEND: u8 = 2;
/// `NeighMiss::why`: a NAT reply to a client (dropped).
pub const MISS_REPLY: u8 = 3;
/// Opens the XDP metadata of a packet the data path hands to its tc program
/// ([`PROGRAM_QUEUE`]) to be sent through the kernel's neighbour queue (a
/// [`crate::QueueMeta`] follows).
pub const QUEUE_MAGIC: u32 = 0x5354_4b51;
/// TCP flag bits (byte 13 of the header).
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Backend states as the data path sees them ([`crate::Backend::state`]).
/// Slot not in use (removed backend).
pub const BACKEND_UNUSED: u8 = 0;
/// Takes new clients (if its weight is > 0) and keeps its pinned clients.
pub const BACKEND_UP: u8 = 1;
/// Keeps its pinned clients, takes no new ones.
pub const BACKEND_DRAIN: u8 = 2;
/// Receives nobody: its pinned clients are re-picked on their next packet.
pub const BACKEND_DOWN: u8 = 3;

/// Capacity of the per-service and per-backend arrays. Service ids are `0..MAX_SERVICES`,
/// backend ids `0..MAX_BACKENDS`.
pub const MAX_SERVICES: u32 = 128;
pub const MAX_BACKENDS: u32 = 16384;

/// Slots reserved in the `RING` map for one selection table. Each service owns two such
/// regions (double buffering: userspace fills the inactive one, then flips
/// [`crate::ServiceInfo::ring_offset`]), so a half-written table is never used.
pub const RING_REGION: u32 = 65537;
/// Number of `RING` slots in total.
pub const RING_SLOTS: u32 = MAX_SERVICES * 2 * RING_REGION;
/// Default Maglev table size (a prime, as in the Maglev paper and Katran).
pub const DEFAULT_MAGLEV_SIZE: u32 = 65537;

/// Default stick-table capacity (HAProxy `stick-table size 200k`).
pub const DEFAULT_STICK_TABLE_SIZE: u32 = 200_000;
/// Default stick-table expiry (HAProxy `expire 30m`).
pub const DEFAULT_EXPIRY_NS: u64 = 30 * 60 * 1_000_000_000;
/// Upper bound for how stale `last_seen` may get before a hit writes it again.
pub const MAX_REFRESH_NS: u64 = 1_000_000_000;

/// How many ring slots the data path probes past a slot whose backend is no longer `up`
/// (the table is rebuilt by userspace; probing covers the moment in between).
pub const PICK_PROBES: u32 = 4;

/// Names of the BPF maps and the program (userspace looks them up by these).
pub const MAP_SERVICES: &str = "SERVICES";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_RING: &str = "RING";
pub const MAP_RR_CURSOR: &str = "RR_CURSOR";
pub const MAP_STICK: &str = "STICK";
pub const MAP_REVERSE: &str = "REVERSE";
pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS";
pub const MAP_FRAGMENTS: &str = "FRAGMENTS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_INSERT_BUDGET: &str = "INSERT_BUDGET";
pub const MAP_NEIGH_SEEN: &str = "NEIGH_SEEN";
pub const MAP_NEIGH_EVENTS: &str = "NEIGH_EVENTS";
pub const PROGRAM_NAME: &str = "stickylb";
/// The side-path programs, reached by tail call through `JUMP` at these slots.
pub const PROGRAM_ICMP: &str = "stickylb_icmp";
pub const PROGRAM_FRAGMENT: &str = "stickylb_fragment";
/// The tc ingress program that sends packets with an unresolved next hop through the
/// kernel's neighbour queue (`bpf_redirect_neigh`).
pub const PROGRAM_QUEUE: &str = "stickylb_queue";
pub const MAP_JUMP: &str = "JUMP";
pub const JUMP_ICMP: u32 = 0;
pub const JUMP_FRAGMENT: u32 = 1;
