//! Side stage of `forward`: report a next hop the FIB could not resolve. XDP traffic
//! never makes the kernel resolve or refresh a neighbour, so the data path tells the
//! agent, which creates a managed neighbour entry for it (`lb-userspace/src/neigh.rs`).
//!
//! On `BPF_FIB_LKUP_RET_NO_NEIGH` the kernel has already filled in the egress interface
//! and replaced the destination by the route's gateway (if any), so the lookup result
//! names the next hop exactly. Reports go through the `NEIGH_EVENTS` ring buffer, at most
//! one per `NEIGH_REPORT_NS` per next hop (`NEIGH_SEEN`, an LRU of last report times),
//! so a flood of packets to an unresolved next hop costs a map lookup each and makes a
//! handful of events. Only misses run this code; the hit path never does.
//!
//! A packet the kernel could not take through its own stack (a NAT reply, whose source
//! is the VIP: a martian when the VIP is local; a DSR packet, which it would route by the
//! VIP) is not lost either: [`queue`] rewrites nothing itself but puts the next hop in
//! the XDP metadata and passes the (already rewritten) packet up, where the tc ingress
//! program [`tc_queue`] hands it to `bpf_redirect_neigh`. That skips the kernel's routing
//! and its martian checks and goes straight to the neighbour layer, which resolves the
//! next hop and queues the packet until it answers (as Cilium does on `NO_NEIGH`). Where
//! the metadata cannot be set (a driver without XDP metadata), the packet is dropped and
//! counted (`drop_no_neigh`).

use aya_ebpf::{
    bindings::{__sk_buff, bpf_redir_neigh, TC_ACT_OK},
    helpers::{bpf_redirect_neigh, bpf_xdp_adjust_meta},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use lb_common::{
    NeighKey, NeighMiss, QueueMeta, ServiceStats, FAMILY_V6, NEIGH_REPORT_NS, QUEUE_MAGIC,
};

use crate::{
    maps::{NEIGH_EVENTS, NEIGH_SEEN},
    stats,
};

/// Reports `hop` (unless it was reported less than `NEIGH_REPORT_NS` ago). `why` is one
/// of the `MISS_*` constants. A full ring is counted (`neigh_report_lost`) and not
/// remembered, so the next miss tries again.
#[inline(always)]
pub fn report(st: &mut ServiceStats, service_id: u32, hop: &NeighKey, why: u8) {
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

const META_LEN: usize = core::mem::size_of::<QueueMeta>();
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Marks the packet for the tc program: `hop` goes into the XDP metadata. The caller then
/// returns `XDP_PASS` (true) or drops (false: no room for metadata). Packet pointers are
/// invalid afterwards.
#[inline(always)]
pub fn queue(ctx: &XdpContext, hop: &NeighKey) -> bool {
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
