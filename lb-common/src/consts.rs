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
/// L3 DSR: the client's packet inside an outer IPv4/IPv6 header to the backend (IPIP,
/// IP6IP6, and 4-in-6 / 6-in-4 when the backend's family differs from the VIP's).
pub const FWD_IPIP: u8 = 3;
/// L3 DSR: the client's packet inside outer IP + UDP to the backend's GUE port (GUE
/// variant 1: the UDP payload is the IP packet itself).
pub const FWD_GUE: u8 = 4;
/// Default GUE destination port (Katran's; the kernel's `ip fou add port 6080 gue`).
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// Outer TTL / hop limit of encapsulated packets.
pub const ENCAP_TTL: u8 = 64;
/// IP protocol numbers of the tunnels.
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_IPV6: u8 = 41;
/// Bytes an outer header adds: IPv4 / IPv6, plus UDP for GUE (variant 1 has no GUE
/// header of its own).
pub const ENCAP_IPV4_LEN: u16 = 20;
pub const ENCAP_IPV6_LEN: u16 = 40;
pub const ENCAP_UDP_LEN: u16 = 8;
/// GUE source ports (entropy for the backends' RSS and ECMP on the path) are taken from
/// the dynamic range 49152–65535 (RFC 6335; RFC 8086 §3.2.1 asks the same for GRE-in-UDP).
pub const GUE_SPORT_BASE: u16 = 0xC000;
pub const GUE_SPORT_MASK: u16 = 0x3FFF;

/// Schedulers ([`crate::ServiceInfo::scheduler`]).
pub const SCHED_ROUNDROBIN: u8 = 1;
pub const SCHED_MAGLEV: u8 = 2;

/// `ServiceInfo::flags`: a TCP client without an entry gets one only on a SYN (without
/// ACK); other TCP packets of unknown clients are served by source hash, no entry.
pub const SVC_SYN_ONLY: u8 = 1;
/// `ServiceInfo::flags`: encapsulating services take the outer source from the client's
/// hash inside a configured prefix (`ENCAP_SOURCE`, RSS-friendly, as Katran and Cilium)
/// instead of the balancer's egress address from the FIB.
pub const SVC_SRC_HASH: u8 = 2;
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
/// `NeighMiss::why`: a NAT packet to a backend.
pub const MISS_NAT_TO_BACKEND: u8 = 1;
/// `NeighMiss::why`: a DSR packet to a backend.
pub const MISS_DSR_TO_BACKEND: u8 = 2;
/// `NeighMiss::why`: a NAT reply to a client.
pub const MISS_REPLY: u8 = 3;
/// `NeighMiss::why`: an encapsulating service's packet to a backend (dropped: the outer
/// next hop is unresolved).
pub const MISS_ENCAP_TO_BACKEND: u8 = 4;
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

/// Slots of one region of `SERVICE_INDEX` (a power of two, at least 4 × `MAX_SERVICES`
/// so that linear probing stays short). The map holds two regions (double buffering:
/// userspace fills the inactive one, then flips `SERVICE_INDEX_HEAD`).
pub const SERVICE_INDEX_SLOTS: u32 = 512;
/// Most slots the data path probes from a key's home slot in `SERVICE_INDEX`; the
/// builder picks a seed under which every key lies within this many.
pub const SERVICE_INDEX_PROBES: u32 = 4;
/// 64-bit words of `REPLY_FILTER` (a bitmap of 65 536 bits over backend addresses).
pub const REPLY_FILTER_WORDS: u32 = 1024;

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

/// `StickEvent::kind`: a client without an entry got one.
pub const STICK_EVENT_NEW: u8 = 1;
/// `StickEvent::kind`: an expired entry was re-picked.
pub const STICK_EVENT_EXPIRED: u8 = 2;
/// `StickEvent::kind`: an entry whose backend was down, removed or reassigned was
/// re-picked.
pub const STICK_EVENT_DOWN: u8 = 3;
/// Default slots of each CPU's stick-table events ring (a power of two; see
/// [`crate::event_ring`]): 16 384 events of 40 bytes, 640 KiB per CPU, a third of a
/// second of new clients at 50 000/s on one CPU if the agent stopped reading.
pub const STICK_EVENT_SLOTS: u32 = 1 << 14;

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
pub const MAP_ENCAP_SOURCE: &str = "ENCAP_SOURCE";
/// The stick-table events ring's slots and its per-CPU positions ([`crate::event_ring`]).
pub const MAP_STICK_EVENTS: &str = "STICK_EVENT_RING";
pub const MAP_STICK_EVENT_POS: &str = "STICK_EVENT_POS";
/// Exact VIP table of the hit path (`ServiceSlot`s) and its head word (`index_head`).
pub const MAP_SERVICE_INDEX: &str = "SERVICE_INDEX";
pub const MAP_SERVICE_INDEX_HEAD: &str = "SERVICE_INDEX_HEAD";
/// Bitmap over the addresses of `REVERSE` keys: "could this be a NAT reply?".
pub const MAP_REPLY_FILTER: &str = "REPLY_FILTER";
pub const MAP_STICK_EVENTS_LOST: &str = "STICK_EVENTS_LOST";
/// The data path's clock calibration (`clock::Calibration`, slots `clock::CLOCK_*`); one
/// per loaded program, never pinned.
pub const MAP_CLOCK: &str = "CLOCK";
/// The data path's switch for stick-table events (`.rodata`, set at load time): 0 = no
/// events (a single node: the verifier removes the code), 1 = emit them.
pub const GLOBAL_STICK_EVENTS: &str = "STICK_EVENTS_ON";
/// Slots per CPU of the events ring minus one (`.rodata`, set at load time with the
/// ring's size).
pub const GLOBAL_STICK_EVENT_MASK: &str = "STICK_EVENT_MASK";
pub const PROGRAM_NAME: &str = "stickylb";
/// The side-path programs, reached by tail call through `JUMP` at these slots.
pub const PROGRAM_ICMP: &str = "stickylb_icmp";
pub const PROGRAM_FRAGMENT: &str = "stickylb_fragment";
/// The tc ingress program that sends packets with an unresolved next hop through the
/// kernel's neighbour queue (`bpf_redirect_neigh`).
pub const PROGRAM_QUEUE: &str = "stickylb_queue";
/// The probe that samples jiffies and the coarse clock together for `clock::calibrate`
/// (run by the loader with `BPF_PROG_TEST_RUN`, never attached).
pub const PROGRAM_CLOCK: &str = "stickylb_clock";
pub const MAP_JUMP: &str = "JUMP";
pub const JUMP_ICMP: u32 = 0;
pub const JUMP_FRAGMENT: u32 = 1;
/// The unresolved-next-hop programs (report the next hop, queue the packet): for packets
/// to backends, and for NAT replies.
pub const PROGRAM_NEIGH: &str = "stickylb_neigh";
pub const JUMP_NEIGH: u32 = 2;
pub const PROGRAM_NEIGH_REPLY: &str = "stickylb_neigh_reply";
pub const JUMP_NEIGH_REPLY: u32 = 3;
/// The cluster sink's batch writer (not attached: run by `BPF_PROG_TEST_RUN` with
/// [`crate::StickRecord`]s as its packet, see `lb-ebpf/src/stick_apply.rs`).
pub const PROGRAM_STICK_APPLY: &str = "stickylb_stick_apply";
/// Most records one run of [`PROGRAM_STICK_APPLY`] takes (40 bytes each: 2 560 bytes,
/// within the 3 520 an XDP test run holds in one page).
pub const STICK_APPLY_RECORDS: usize = 64;
/// `StickRecord::result`: the peer's entry was written.
pub const STICK_APPLY_WRITTEN: u32 = 1;
/// `StickRecord::result`: the table kept its own entry (same backend, seen later).
pub const STICK_APPLY_KEPT: u32 = 2;
/// `StickRecord::result`: the update failed (the table full of entries it cannot evict).
pub const STICK_APPLY_FAILED: u32 = 3;
/// The backend side's decapsulation programs (object `lb-decap`, `stickylb decap`).
pub const PROGRAM_DECAP: &str = "stickylb_decap";
pub const PROGRAM_DECAP_TC: &str = "stickylb_decap_tc";
pub const MAP_DECAP_CONFIG: &str = "DECAP_CONFIG";
pub const MAP_DECAP_ADDRS: &str = "DECAP_ADDRS";
pub const MAP_DECAP_STATS: &str = "DECAP_STATS";
/// `DecapConfig::flags`: decapsulate only packets whose outer destination is in
/// `DECAP_ADDRS` (this host's addresses).
pub const DECAP_STRICT: u32 = 1;
