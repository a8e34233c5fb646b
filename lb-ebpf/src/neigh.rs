//! The unresolved-next-hop path: a packet whose next hop the FIB could not resolve. XDP
//! traffic never makes the kernel resolve or refresh a neighbour, so the data path tells
//! the agent, which creates a managed neighbour entry for it (`lb-userspace/src/neigh.rs`),
//! and hands the packet itself to the kernel's neighbour layer, which sends it once the
//! next hop answers.
//!
//! On `BPF_FIB_LKUP_RET_NO_NEIGH` the kernel has already filled in the egress interface
//! and replaced the destination by the route's gateway (if any), so the lookup result
//! names the next hop exactly ([`remember`] keeps it in a per-CPU scratch slot).
//!
//! The work runs in two programs of their own, reached by tail call like the ICMP and
//! fragment side paths: the main program has no stack to spare, so on `NO_NEIGH` it only
//! jumps ([`to_backend_miss`], [`reply_miss`]), and the hit path runs none of it. They
//! parse the packet again and recover its service from it (a NAT packet to a backend by
//! its destination in `REVERSE`; a DSR or encapsulating service's by its VIP; a reply,
//! rewritten to the VIP, by its source), then:
//! - report the next hop through the `NEIGH_EVENTS` ring buffer, at most once per
//!   `NEIGH_REPORT_NS` per next hop (`NEIGH_SEEN`, an LRU of last report times), so a
//!   flood of packets to an unresolved next hop makes a handful of events;
//! - finish the packet as sending would have (a routed packet loses a hop), put the next hop in its XDP metadata and pass it up, where the
//!   tc ingress program [`tc_queue`] hands it to `bpf_redirect_neigh`. That skips the
//!   kernel's routing and its martian checks (a NAT reply from a local VIP would be one;
//!   a DSR packet would be routed by the VIP) and goes straight to the neighbour layer,
//!   which resolves the next hop and queues the packet until it answers (as Cilium does
//!   on `NO_NEIGH`): `neigh_queued`.
//! - Where that cannot be done it is dropped (`drop_no_neigh`): no XDP metadata (some
//!   drivers), or an encapsulating service's packet (not encapsulated yet: queueing it
//!   would send the client's packet to the outer next hop). A NAT packet to a backend
//!   then goes to the kernel's forwarding instead (`fib_miss`; its source is the client).
//!
//! ICMP errors and later fragments to a backend whose next hop is unresolved keep the
//! plain fallback (`forward::not_sent`): the agent resolves backends ahead, so they are
//! rare.

use aya_ebpf::{
    bindings::{__sk_buff, bpf_fib_lookup as FibParams, bpf_redir_neigh, xdp_action, TC_ACT_OK},
    helpers::{bpf_redirect_neigh, bpf_xdp_adjust_meta},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use lb_common::{
    csum, Endpoint, NeighKey, NeighMiss, QueueMeta, ServiceStats, FAMILY_V4, FAMILY_V6, FWD_GUE,
    FWD_IPIP, JUMP_NEIGH, JUMP_NEIGH_REPLY, MISS_DSR_TO_BACKEND, MISS_ENCAP_TO_BACKEND,
    MISS_NAT_TO_BACKEND, MISS_REPLY, NEIGH_REPORT_NS, QUEUE_MAGIC,
};

use crate::{
    hdr::*,
    maps::{JUMP, NEIGH_EVENTS, NEIGH_HOP, NEIGH_SEEN, REVERSE, SERVICES},
    packet::{get, set, Packet},
    parse::{parse, Parsed},
    service::lookup_service,
    stats,
};

const META_LEN: usize = core::mem::size_of::<QueueMeta>();
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Keeps the next hop a `NO_NEIGH` lookup named (see `forward::lookup`): the kernel has
/// set the egress `ifindex` and replaced the destination by the gateway when the route
/// has one; `family` says which member holds it (an IPv4 route may have an IPv6
/// gateway). Written straight into a per-CPU scratch slot (`NEIGH_HOP`) rather than
/// carried in the `Lookup` / `Forwarded` values: a payload there costs stack the main
/// program does not have.
#[inline(always)]
pub fn remember(fib: &FibParams) {
    let Some(hop) = NEIGH_HOP.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs; the union
    // members are plain integers and the family says which is meaningful.
    unsafe {
        let hop = &mut *hop;
        hop.ifindex = fib.ifindex;
        if fib.family as u32 == AF_INET6 {
            hop.family = FAMILY_V6;
            hop.addr = fib.__bindgen_anon_4.ipv6_dst;
        } else {
            hop.family = FAMILY_V4;
            hop.addr = [fib.__bindgen_anon_4.ipv4_dst, 0, 0, 0];
        }
    }
}

/// A packet to a backend met an unresolved next hop: jump to `stickylb_neigh`. Returns
/// only if the jump failed (slot empty): then a NAT packet goes to the kernel's
/// forwarding (`fib_miss`) and a DSR or encapsulated one is dropped (`drop_no_neigh`).
#[inline(always)]
pub fn to_backend_miss(ctx: &XdpContext, st: &mut ServiceStats, dsr: bool) -> u32 {
    // SAFETY: tail call into a program of the same type; does not return on success.
    unsafe { JUMP.tail_call(ctx, JUMP_NEIGH) };
    if dsr {
        st.drop_no_neigh += 1;
        return xdp_action::XDP_DROP;
    }
    st.fib_miss += 1;
    xdp_action::XDP_PASS
}

/// A NAT reply (rewritten to the VIP) met an unresolved next hop: jump to
/// `stickylb_neigh_reply`. Returns only if the jump failed: dropped (`drop_no_neigh`).
#[inline(always)]
pub fn reply_miss(ctx: &XdpContext, st: &mut ServiceStats) -> u32 {
    // SAFETY: as in `to_backend_miss`.
    unsafe { JUMP.tail_call(ctx, JUMP_NEIGH_REPLY) };
    st.drop_no_neigh += 1;
    xdp_action::XDP_DROP
}

/// Entry of `stickylb_neigh`: a client's packet, already rewritten for its backend (NAT:
/// to the backend; DSR and the encapsulating modes: as it came).
#[inline(always)]
pub fn process_to_backend(ctx: &XdpContext) -> u32 {
    let pkt = Packet::new(ctx);
    let Some(p) = parse(&pkt) else {
        return xdp_action::XDP_DROP;
    };
    let len = pkt.len() as u64;
    // DSR and the encapsulating modes kept the VIP as destination; NAT put the backend
    // there, whose endpoint names its service in REVERSE.
    let (service_id, why) = match lookup_service(&p) {
        Some(svc) if svc.forwarding == FWD_IPIP || svc.forwarding == FWD_GUE => {
            (svc.id, MISS_ENCAP_TO_BACKEND)
        }
        Some(svc) => (svc.id, MISS_DSR_TO_BACKEND),
        None => match backend_service(&p) {
            Some(id) => (id, MISS_NAT_TO_BACKEND),
            None => return xdp_action::XDP_DROP,
        },
    };
    let Some(st) = stats::service(service_id) else {
        return xdp_action::XDP_DROP;
    };
    let Some(hop) = hop() else {
        return xdp_action::XDP_DROP;
    };
    report(st, service_id, &hop, why);
    let nat = why == MISS_NAT_TO_BACKEND;
    if why != MISS_ENCAP_TO_BACKEND && (!nat || take_hop(&pkt, &p)) && queue(ctx, &hop) {
        st.neigh_queued += 1;
        st.packets += 1;
        st.bytes += len;
        return xdp_action::XDP_PASS;
    }
    if nat {
        st.fib_miss += 1;
        st.packets += 1;
        st.bytes += len;
        return xdp_action::XDP_PASS;
    }
    st.drop_no_neigh += 1;
    xdp_action::XDP_DROP
}

/// Entry of `stickylb_neigh_reply`: a NAT reply, already rewritten to the VIP by the main
/// program (its source endpoint is the service's VIP:port now).
#[inline(always)]
pub fn process_reply(ctx: &XdpContext) -> u32 {
    let pkt = Packet::new(ctx);
    let Some(p) = parse(&pkt) else {
        return xdp_action::XDP_DROP;
    };
    // The source is the VIP now: its service (the reply's port, or the VIP's all-ports
    // service).
    let Some(service_id) = vip_service(&p) else {
        return xdp_action::XDP_DROP;
    };
    let Some(st) = stats::service(service_id) else {
        return xdp_action::XDP_DROP;
    };
    let Some(hop) = hop() else {
        return xdp_action::XDP_DROP;
    };
    report(st, service_id, &hop, MISS_REPLY);
    let len = pkt.len() as u64;
    if take_hop(&pkt, &p) && queue(ctx, &hop) {
        st.neigh_queued += 1;
        st.reply_packets += 1;
        st.reply_bytes += len;
        return xdp_action::XDP_PASS;
    }
    st.drop_no_neigh += 1;
    xdp_action::XDP_DROP
}

/// The service whose VIP:port is the packet's source (a rewritten reply).
#[inline(always)]
fn vip_service(p: &Parsed) -> Option<u32> {
    let mut key = Endpoint {
        addr: p.src,
        port: p.sport,
        proto: p.proto,
        family: p.family,
    };
    // SAFETY: plain values read from the map.
    if let Some(s) = unsafe { SERVICES.get(&key) } {
        return Some(s.id);
    }
    key.port = 0;
    unsafe { SERVICES.get(&key) }.map(|s| s.id)
}

/// The service of a NAT packet already rewritten to its backend: `REVERSE` by the
/// destination endpoint (exact port, then the backend's all-ports entry).
#[inline(always)]
fn backend_service(p: &Parsed) -> Option<u32> {
    let mut key = Endpoint {
        addr: p.dst,
        port: p.dport,
        proto: p.proto,
        family: p.family,
    };
    // SAFETY: plain values read from the map.
    if let Some(r) = unsafe { REVERSE.get(&key) } {
        return Some(r.service_id);
    }
    key.port = 0;
    unsafe { REVERSE.get(&key) }.map(|r| r.service_id)
}

/// The next hop [`remember`]ed by the lookup that failed.
#[inline(always)]
fn hop() -> Option<NeighKey> {
    // SAFETY: per-CPU slot, as in `remember`.
    NEIGH_HOP.get_ptr(0).map(|h| unsafe { *h })
}

/// Takes a hop off the packet (IPv4 TTL with its checksum, IPv6 hop limit), as sending
/// it routed would. The main program passed it on only with a TTL above 1.
#[inline(always)]
fn take_hop(pkt: &Packet, p: &Parsed) -> bool {
    if p.ttl <= 1 {
        return false;
    }
    if p.family == FAMILY_V4 {
        let Some(ip) = pkt.region::<[u8; 12]>(p.l3_off) else {
            return false;
        };
        // SAFETY: constant offsets inside the checked region.
        unsafe {
            let ttl_proto: u16 = get(ip, IP4_TTL);
            let [ttl, proto] = ttl_proto.to_ne_bytes();
            let new = u16::from_ne_bytes([ttl - 1, proto]);
            set(
                ip,
                IP4_CHECK,
                csum::replace16(get(ip, IP4_CHECK), ttl_proto, new),
            );
            set(ip, IP4_TTL, new);
        }
    } else {
        let Some(ip) = pkt.region::<[u8; 8]>(p.l3_off) else {
            return false;
        };
        // SAFETY: as above.
        unsafe {
            let hop: u8 = get(ip, IP6_HOP);
            set(ip, IP6_HOP, hop - 1);
        }
    }
    true
}

/// Reports `hop`, unless it was reported less than `NEIGH_REPORT_NS` ago. A full ring is
/// counted (`neigh_report_lost`) and not remembered, so the next miss tries again.
#[inline(always)]
fn report(st: &mut ServiceStats, service_id: u32, hop: &NeighKey, why: u8) {
    let now = stats::now_ns();
    // SAFETY: plain value read from the map.
    if let Some(last) = unsafe { NEIGH_SEEN.get(hop) } {
        if now.wrapping_sub(*last) < NEIGH_REPORT_NS {
            return;
        }
    }
    let Some(mut entry) = NEIGH_EVENTS.reserve::<NeighMiss>(0) else {
        st.neigh_report_lost += 1;
        return;
    };
    entry.write(NeighMiss {
        hop: *hop,
        at_ns: now,
        service_id,
        why,
        _pad: [0; 3],
    });
    entry.submit(0);
    let _ = NEIGH_SEEN.insert(hop, &now, 0);
}

/// Marks the packet for the tc program: `hop` goes into the XDP metadata. False: no room
/// for metadata. Packet pointers are invalid afterwards.
#[inline(always)]
fn queue(ctx: &XdpContext, hop: &NeighKey) -> bool {
    // SAFETY: helper call on the program's own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(META_LEN as i32)) } != 0 {
        return false;
    }
    let meta = ctx.metadata();
    if meta + META_LEN > ctx.metadata_end() {
        return false;
    }
    // SAFETY: bounds-checked against the start of the packet just above.
    unsafe {
        (meta as *mut QueueMeta).write_unaligned(QueueMeta {
            magic: QUEUE_MAGIC,
            ifindex: hop.ifindex,
            family: hop.family as u32,
            addr: hop.addr,
        });
    }
    true
}

/// The tc ingress program: a packet whose metadata is a [`QueueMeta`] goes out through
/// the kernel's neighbour layer; everything else continues untouched (`TC_ACT_OK`).
#[inline(always)]
pub fn tc_queue(ctx: &TcContext) -> i32 {
    let skb = ctx.as_ptr() as *const __sk_buff;
    // SAFETY: reading the context the kernel passed.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + META_LEN > data {
        return TC_ACT_OK;
    }
    // SAFETY: bounds-checked against the start of the packet just above.
    let m = unsafe { (meta as *const QueueMeta).read_unaligned() };
    if m.magic != QUEUE_MAGIC {
        return TC_ACT_OK;
    }
    // SAFETY: plain C struct, all-zero is valid.
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    if m.family == FAMILY_V6 as u32 {
        nh.nh_family = AF_INET6;
        nh.__bindgen_anon_1.ipv6_nh = m.addr;
    } else {
        nh.nh_family = AF_INET;
        nh.__bindgen_anon_1.ipv4_nh = m.addr[0];
    }
    // SAFETY: helper call with a pointer to an initialised struct of the given size.
    unsafe {
        bpf_redirect_neigh(
            m.ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}
