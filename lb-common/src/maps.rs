//! Keys and values of the BPF maps. All are `#[repr(C)]` with explicit padding so that
//! the kernel, the data path and userspace agree byte for byte.
//!
//! Addresses are stored as four `u32` words holding the address bytes in network order
//! (an IPv4 address uses word 0, words 1..3 are zero). Ports are stored in network order
//! too. The data path copies them straight from the packet without conversion.

/// An address with its 16 bytes in network order, IPv4 in the first 4 bytes.
pub type Addr = [u32; 4];

/// (address, port, protocol, family): the key of `SERVICES` (a VIP) and of `REVERSE`
/// (a backend endpoint). Port 0 in `SERVICES` means "every port of this VIP".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Index into the per-service arrays and part of every stick-table key.
    pub id: u32,
    /// [`crate::FWD_NAT`], [`crate::FWD_DSR`], [`crate::FWD_IPIP`] or [`crate::FWD_GUE`].
    pub forwarding: u8,
    /// [`crate::SCHED_ROUNDROBIN`] or [`crate::SCHED_MAGLEV`].
    pub scheduler: u8,
    /// [`crate::SVC_SYN_ONLY`], [`crate::SVC_SRC_HASH`].
    pub flags: u8,
    /// Stickiness by network (`stick_on = "src/N"`): the prefix length, of the VIP's
    /// family, the client address is masked to before the stick key is built and the
    /// client hashed (1..=32 for IPv4, 1..=128 for IPv6); 0 = the full address.
    pub stick_prefix: u8,
    /// Length of the active selection table; 0 = no backend takes new clients.
    pub ring_len: u32,
    /// First slot of the active selection table in `RING`.
    pub ring_offset: u32,
    /// Stick-table entry lifetime since last seen; 0 = never expires.
    pub expiry_ns: u64,
    /// A hit rewrites `last_seen` only when it is older than this.
    pub refresh_ns: u64,
    /// New stick-table entries one CPU may add for this service per second; 0 = no cap.
    /// Clients beyond it are served by source hash without an entry.
    pub insert_cap: u32,
    /// GUE destination port (network order); 0 for the other modes.
    pub gue_port: u16,
    pub _pad2: u16,
}

/// One slot of `SERVICE_INDEX`, the exact table the data path finds a service in (one
/// array read per probe instead of a hash lookup; see [`crate::index`]). A slot whose
/// `key.family` is 0 is empty. 64 bytes: one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceSlot {
    pub key: Endpoint,
    pub info: ServiceInfo,
}

/// Value of `ENCAP_SOURCE` (indexed by service id), read when the service has
/// [`crate::SVC_SRC_HASH`]: the outer source is `prefix | (client hash & !mask)`, per
/// outer family (an IPv4 outer header uses word 0 of each). A family whose mask is all
/// zero has no prefix: that family's backends take the FIB's source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncapSource {
    pub v4_prefix: u32,
    /// Network-order mask of the prefix bits.
    pub v4_mask: u32,
    pub v6_prefix: Addr,
    pub v6_mask: Addr,
}

/// Value of `BACKENDS` (an array indexed by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    /// Network byte order; 0 = keep the client's destination port.
    pub port: u16,
    pub family: u8,
    /// [`crate::BACKEND_UP`], [`crate::BACKEND_DRAIN`], [`crate::BACKEND_DOWN`] or
    /// [`crate::BACKEND_UNUSED`].
    pub state: u8,
    /// Owning service; a stick entry pointing at a backend of another service is stale.
    pub service_id: u32,
    pub weight: u32,
}

/// Key of the stick table `STICK` (LRU hash shared by all CPUs). `client` is the
/// client's address masked to the service's `stick_prefix` (the network's first address),
/// built only by [`crate::sticky::stick_key`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StickKey {
    pub service_id: u32,
    pub client: Addr,
}

/// Value of the stick table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StickValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC at tick resolution) when the client
    /// was last seen.
    pub last_seen_ns: u64,
}

/// One entry of a batch that the agent's cluster sink writes through the
/// [`crate::PROGRAM_STICK_APPLY`] program (run by `BPF_PROG_TEST_RUN`, up to
/// [`crate::STICK_APPLY_RECORDS`] records as the "packet"): a peer's entry, written into
/// `STICK` unless the table keeps its own ([`crate::sticky::stick_keeps`]). The program
/// writes the outcome into `result` ([`crate::STICK_APPLY_WRITTEN`],
/// [`crate::STICK_APPLY_KEPT`], [`crate::STICK_APPLY_FAILED`]; 0 = not reached). 40 bytes,
/// no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StickRecord {
    pub key: StickKey,
    pub result: u32,
    pub value: StickValue,
}

const _: () = assert!(core::mem::size_of::<StickRecord>() == 40);

/// One slot of the stick-table events ring (`STICK_EVENT_RING`, see
/// [`crate::event_ring`]): a client got a new entry, or its entry
/// was re-picked (expired, or its backend no longer took it). The agent turns the
/// node-local ids into identities and replicates the entry to its peers. Hits (and the
/// refresh of last-seen on a hit) emit nothing: the agent's periodic scan finds those.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StickEvent {
    pub client: Addr,
    pub service_id: u32,
    pub backend_id: u32,
    /// The entry's last-seen as written (`bpf_ktime_get_coarse_ns()`).
    pub at_ns: u64,
    /// [`crate::STICK_EVENT_NEW`], [`crate::STICK_EVENT_EXPIRED`] or
    /// [`crate::STICK_EVENT_DOWN`].
    pub kind: u8,
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u8,
    pub _pad: u16,
    /// Which event of its CPU's ring this is ([`crate::event_ring::seq_of`]), written
    /// with the rest: the reader's check that the slot holds the event it expects.
    pub seq: u32,
}

const _: () = assert!(core::mem::size_of::<StickEvent>() == 40);

/// Value of `REVERSE`, keyed by the backend endpoint a NAT reply comes from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseValue {
    /// The VIP the reply must appear to come from.
    pub vip: Addr,
    /// VIP port, network byte order; 0 = keep the reply's source port.
    pub vip_port: u16,
    pub _pad: u16,
    pub service_id: u32,
}

/// Most services sharing one VIP and protocol that non-first fragments are matched
/// against.
pub const FRAG_CANDIDATES: usize = 4;

/// Value of `FRAGMENTS`, keyed by (VIP, port 0, protocol, family): the services on that
/// VIP a non-first IPv4 fragment (which carries no ports) may belong to. It follows the
/// client's entry when exactly one of them has a live one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragCandidates {
    pub services: [Endpoint; FRAG_CANDIDATES],
    /// Services in `services`; above [`FRAG_CANDIDATES`] when the VIP has more services
    /// than fit, so that its later fragments are always ambiguous (passed, not guessed).
    pub count: u32,
}

crate::counters! {
    /// Per-CPU counters of one service (`SERVICE_STATS`, indexed by service id).
    pub struct ServiceStats {
        /// Client→service packets and bytes forwarded.
        packets: "stickylb_service_packets", Packets, "Client packets forwarded to a backend.";
        bytes: "stickylb_service_bytes", Bytes, "Client bytes forwarded to a backend.";
        /// Clients with no entry that got a first pick.
        new_clients: "stickylb_service_new_clients", NewClients, "Clients without an entry that got a first pick.";
        /// Entries re-picked because they had expired.
        repick_expired: "stickylb_service_repicks" [reason = "expired"], Repicks, "Clients re-picked, by reason.";
        /// Entries re-picked because their backend was down, removed or reassigned.
        repick_down: "stickylb_service_repicks" [reason = "backend_down"], Repicks, "Clients re-picked, by reason.";
        /// Dropped: no backend takes new clients.
        drop_no_backend: "stickylb_service_drops" [reason = "no_backend"], Drops, "Packets dropped or passed, by reason.";
        /// Dropped: the FIB has no route (unreachable, blackhole, prohibit) or redirect failed.
        drop_no_route: "stickylb_service_drops" [reason = "no_route"], Drops, "Packets dropped or passed, by reason.";
        /// Passed to the kernel: a NAT packet to a backend whose next hop has no neighbour
        /// entry yet (the kernel forwards it and resolves the neighbour; the agent is told),
        /// or one the FIB gives no fast path (larger than the route's MTU, say).
        fib_miss: "stickylb_service_fib_miss", Passed, "NAT packets to a backend handed to the kernel because the FIB had no neighbour yet (the kernel resolves it) or no fast path.";
        /// Passed to the kernel: TTL / hop limit would expire (the kernel sends the ICMP error).
        pass_ttl: "stickylb_service_drops" [reason = "ttl_passed"], Passed, "Packets dropped or passed, by reason.";
        /// Backend→client NAT replies rewritten and forwarded.
        reply_packets: "stickylb_service_reply_packets", None, "NAT replies rewritten to the VIP.";
        reply_bytes: "stickylb_service_reply_bytes", None, "Bytes of NAT replies rewritten to the VIP.";
        /// ICMP errors about a client's flow (fragmentation needed, packet too big,
        /// unreachable) steered to the backend that owns the client.
        icmp_to_backend: "stickylb_service_icmp_to_backend", None, "ICMP errors about a client's flow steered to its backend.";
        /// ICMP errors about this service with no live client entry: passed to the kernel.
        icmp_unmatched: "stickylb_service_icmp_unmatched", None, "ICMP errors about the service with no live client entry, passed to the kernel.";
        /// IPv4 fragments forwarded (first fragments with the flow, later ones by the
        /// client's entry).
        frag_forwarded: "stickylb_service_fragments_forwarded", None, "IPv4 fragments forwarded (first ones with the flow, later ones by the client's entry).";
        /// Non-first fragments with no (or an ambiguous) client entry: passed to the kernel.
        frag_unmatched: "stickylb_service_fragments_unmatched", None, "Later IPv4 fragments without a single live client entry, passed to the kernel.";
        /// New clients served by source hash without an entry: a TCP packet other than a
        /// SYN under `insert_on = "syn"`.
        unpinned_not_syn: "stickylb_service_unpinned_not_syn", None, "New clients served by source hash without an entry: TCP packet other than a SYN under insert_on = \"syn\".";
        /// New clients served by source hash without an entry: this CPU's `insert_cap` for
        /// the current second was used up.
        unpinned_over_cap: "stickylb_service_unpinned_over_cap", None, "New clients served by source hash without an entry: the per-CPU insert_cap for the second was used up.";
        /// Encapsulating services: client packets that would exceed the egress MTU once
        /// encapsulated, answered with ICMP "fragmentation needed" / ICMPv6 "packet too big"
        /// (MTU minus the overhead), sent back to the client.
        too_big_answered: "stickylb_service_too_big_answered", None, "Encapsulating services: client packets over the egress MTU once encapsulated, answered with ICMP fragmentation needed / packet too big.";
        /// Encapsulating services: client packets over the MTU that cannot be answered
        /// (IPv4 without DF, an IPv6 inner packet whose answer would go below 1280, a packet
        /// too short to quote), dropped.
        drop_too_big: "stickylb_service_drop_too_big", Drops, "Encapsulating services: packets over the egress MTU once encapsulated that could not be answered (IPv4 without DF, fragments, ICMP errors), dropped.";
        /// Dropped: the next hop has no neighbour entry yet, and the packet could not be
        /// queued for it (no XDP metadata; an encapsulating service's packet, not yet
        /// encapsulated) nor handed to the kernel's routing (a NAT reply, whose source is the
        /// VIP, possibly a local address; a DSR packet, which the kernel would route by the
        /// VIP). The agent is told and resolves the next hop: only first packets are lost.
        drop_no_neigh: "stickylb_service_drops" [reason = "no_neighbour"], Drops, "Packets dropped or passed, by reason.";
        /// Packets whose next hop had no neighbour entry yet (NAT replies, DSR), fully
        /// rewritten and handed to the tc program, which has the kernel's neighbour layer
        /// send them once the next hop answers (`bpf_redirect_neigh`): delayed, not lost.
        neigh_queued: "stickylb_service_neigh_queued", None, "Packets whose next hop was not resolved yet, sent through the kernel's neighbour queue (delayed, not lost).";
        /// Next-hop reports lost because the report ring (`NEIGH_EVENTS`) was full; the next
        /// miss to that next hop reports it again.
        neigh_report_lost: "stickylb_service_neigh_report_lost", None, "Unresolved next hops the data path could not report (report ring full).";
    }
}

crate::counters! {
    /// Per-CPU counters of one backend (`BACKEND_STATS`, indexed by backend id).
    pub struct BackendStats {
        packets: "stickylb_backend_packets", Packets, "Packets forwarded to the backend.";
        bytes: "stickylb_backend_bytes", Bytes, "Bytes forwarded to the backend.";
        new_clients: "stickylb_backend_new_clients", NewClients, "Clients picked for the backend.";
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for ServiceInfo {}
    unsafe impl aya::Pod for ServiceSlot {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for StickKey {}
    unsafe impl aya::Pod for StickValue {}
    unsafe impl aya::Pod for ReverseValue {}
    unsafe impl aya::Pod for FragCandidates {}
    unsafe impl aya::Pod for ServiceStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for InsertBudget {}
    unsafe impl aya::Pod for CachedRoute {}
    unsafe impl aya::Pod for EncapSource {}
    unsafe impl aya::Pod for DecapConfig {}
    unsafe impl aya::Pod for DecapKey {}
    unsafe impl aya::Pod for DecapStats {}
    unsafe impl aya::Pod for NeighKey {}
    unsafe impl aya::Pod for NeighMiss {}
    unsafe impl aya::Pod for QueueMeta {}
    unsafe impl aya::Pod for StickEvent {}
    unsafe impl aya::Pod for crate::event_ring::EventRingPos {}
    unsafe impl aya::Pod for StickRecord {}
    unsafe impl aya::Pod for crate::clock::Calibration {}
}

#[cfg(feature = "std")]
mod addr_conv {
    use super::Addr;
    use crate::consts;
    use crate::consts::{FAMILY_V4, FAMILY_V6};
    use std::net::IpAddr;

    /// Converts an IP address to the map representation and its family.
    pub fn addr_from_ip(ip: IpAddr) -> (Addr, u8) {
        match ip {
            IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let mut a = [0u32; 4];
                for (i, w) in a.iter_mut().enumerate() {
                    *w = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                }
                (a, FAMILY_V6)
            }
        }
    }

    /// Converts the map representation back to an IP address.
    pub fn ip_from_addr(addr: &Addr, family: u8) -> IpAddr {
        if family == consts::FAMILY_V6 {
            let mut o = [0u8; 16];
            for (i, w) in addr.iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::from(o)
        } else {
            IpAddr::from(addr[0].to_ne_bytes())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        #[test]
        fn round_trip() {
            for s in ["10.0.0.1", "2001:db8::1", "::", "255.255.255.255"] {
                let ip: IpAddr = s.parse().unwrap();
                let (a, f) = addr_from_ip(ip);
                assert_eq!(ip_from_addr(&a, f), ip);
            }
            let _ = FAMILY_V6;
        }
    }
}

#[cfg(feature = "std")]
pub use addr_conv::{addr_from_ip, ip_from_addr};

/// Per-CPU new-entry budget of one service (`INSERT_BUDGET`, indexed by service id): how
/// many entries this CPU added in the one-second window starting at `window_start_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsertBudget {
    pub window_start_ns: u64,
    pub inserted: u64,
}

/// A route to one backend as the FIB gave it (`ROUTE_CACHE`, per CPU, indexed by backend
/// id), reused for [`crate::ROUTE_CACHE_NS`] so that the hit path skips `bpf_fib_lookup`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedRoute {
    /// When the FIB was asked; 0 = empty.
    pub at_ns: u64,
    /// The backend address it was asked for (a backend id may be reused for another).
    pub dst: Addr,
    /// Ingress interface of the packet that asked (the lookup depends on it).
    pub ingress: u32,
    /// Egress interface.
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// Largest IP length the FIB accepted on this route (its MTU check); longer packets
    /// ask the FIB again. For encapsulating services, the outer length.
    pub ok_len: u16,
    /// The service's forwarding mode when the route was cached (the encapsulating modes
    /// also cache the outer source).
    pub forwarding: u8,
    pub _pad: u8,
    /// Encapsulating services: the outer source (the FIB's egress address, or the
    /// client-hash source).
    pub src: Addr,
}

/// Value of `DECAP_CONFIG` (one slot) of the backend-side decapsulation program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    /// [`crate::DECAP_STRICT`].
    pub flags: u32,
    /// GUE port (network order); 0 = do not decapsulate GUE.
    pub gue_port: u16,
    pub _pad: u16,
}

/// Key of `DECAP_ADDRS`: a local address the strict mode accepts as outer destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecapKey {
    pub addr: Addr,
    pub family: u8,
    pub _pad: [u8; 3],
}

crate::counters! {
    /// Per-CPU counters of the decapsulation program (`DECAP_STATS`, one slot).
    pub struct DecapStats {
        /// Outer headers stripped, inner packet passed up.
        decapsulated: "stickylb_decap_decapsulated", Packets, "Outer headers stripped, inner packet passed up.";
        /// Encapsulated packets left untouched: outer destination not local (strict), outer
        /// IPv4 options or fragments, inner not IP of the claimed family.
        passed: "stickylb_decap_passed", Passed, "Encapsulated packets left untouched (outer destination not local, IPv4 options or fragments, inner packet not of its family).";
        /// Encapsulated packets dropped: lengths that lie (outer length beyond the frame,
        /// inner length beyond the outer payload), nested tunnels.
        dropped: "stickylb_decap_dropped", Drops, "Encapsulated packets dropped (lying lengths, nested tunnels).";
    }
}

/// A next hop on an interface: the key of `NEIGH_SEEN` (when the data path last reported
/// it), and the part of a [`NeighMiss`] the agent acts on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighKey {
    /// The next hop's address: the route's gateway, or the destination when on-link.
    pub addr: Addr,
    /// Egress interface the FIB chose.
    pub ifindex: u32,
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`] of `addr` (an IPv4 route may have an
    /// IPv6 gateway).
    pub family: u8,
    pub _pad: [u8; 3],
}

/// One record of the `NEIGH_EVENTS` ring buffer: the FIB had a route but no resolved
/// neighbour for `hop`. Emitted at most once per [`crate::NEIGH_REPORT_NS`] per next hop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighMiss {
    pub hop: NeighKey,
    /// `bpf_ktime_get_coarse_ns()` of the miss (CLOCK_MONOTONIC_COARSE).
    pub at_ns: u64,
    /// Service of the packet.
    pub service_id: u32,
    /// What the packet was: [`crate::MISS_NAT_TO_BACKEND`],
    /// [`crate::MISS_DSR_TO_BACKEND`], [`crate::MISS_REPLY`] (queued) or
    /// [`crate::MISS_ENCAP_TO_BACKEND`] (dropped).
    pub why: u8,
    pub _pad: [u8; 3],
}

/// The XDP metadata of a packet handed to the tc program `stickylb_queue` (28 bytes, a
/// multiple of 4 as `bpf_xdp_adjust_meta` wants): send it to `addr` on `ifindex` through
/// the kernel's neighbour layer, which resolves the next hop and queues the packet
/// meanwhile. The packet itself is already rewritten (addresses, TTL); its Ethernet
/// header is replaced on the way out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueMeta {
    /// [`crate::QUEUE_MAGIC`].
    pub magic: u32,
    pub ifindex: u32,
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`] of `addr`.
    pub family: u32,
    pub addr: Addr,
}
