//! Stage 6: forward a rewritten packet. `bpf_fib_lookup` finds the egress interface and
//! the next hop's MAC; we set the Ethernet addresses and redirect (or `XDP_TX` when the
//! egress is the ingress interface, or the frame carries a VLAN tag: a tagged frame is
//! answered on the link and VLAN it came from). Routes to backends are cached per CPU for
//! `ROUTE_CACHE_NS` (`forward_to_backend`): the FIB lookup is half the cost of a hit.
//!
//! When the FIB has the route but no resolved neighbour, the next hop it names is
//! reported to the agent (`neigh`), which resolves it for the packets after; the packet
//! itself, rewritten as if sent, goes to the kernel's neighbour queue through the tc
//! program (`neigh::queue`), never to the kernel's routing, which could drop it (a NAT
//! reply from a local VIP is a martian; a DSR packet would be routed by the VIP).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_BLACKHOLE,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LKUP_RET_UNREACHABLE,
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{csum, Addr, NeighKey, ServiceStats, FAMILY_V4, FAMILY_V6, ROUTE_CACHE_NS};

use crate::{maps::ROUTE_CACHE, neigh, packet::Packet, parse::Parsed};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The result of trying to forward.
pub enum Forwarded {
    /// Sent on: `XDP_TX` or `XDP_REDIRECT`.
    Sent(u32),
    /// The FIB knows the route but not the neighbour's MAC yet: this next hop.
    NoNeighbour(NeighKey),
    /// No route (unreachable, blackhole, prohibit): drop.
    NoRoute,
    /// The FIB cannot give a fast path (local destination, MTU, forwarding disabled…):
    /// let the kernel handle it.
    Kernel,
}

/// A successful FIB lookup: where to send and with which MAC addresses.
pub struct Route {
    ifindex: u32,
    dmac: [u8; 6],
    smac: [u8; 6],
}

/// What the FIB says about `src → dst`.
pub enum Lookup {
    Route(Route),
    /// The FIB knows the route but not the neighbour's MAC yet: this next hop.
    NoNeighbour(NeighKey),
    /// No route (unreachable, blackhole, prohibit).
    NoRoute,
    /// Not forwarded by the FIB: local destination, MTU exceeded, forwarding disabled…
    NotForwarded,
}

/// Asks the kernel's FIB for the path of `src → dst` (addresses as they will be sent).
#[inline(always)]
pub fn lookup(ctx: &XdpContext, p: &Parsed, src: &Addr, dst: &Addr) -> Lookup {
    // SAFETY: plain C struct, all-zero is a valid initial value.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.l4_protocol = p.proto;
    fib.sport = p.sport;
    fib.dport = p.dport;
    fib.__bindgen_anon_1.tot_len = p.ip_len;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    if p.family == FAMILY_V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = p.tos_or_flow as u8;
        fib.__bindgen_anon_3.ipv4_src = src[0];
        fib.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_2.flowinfo = p.tos_or_flow;
        fib.__bindgen_anon_3.ipv6_src = *src;
        fib.__bindgen_anon_4.ipv6_dst = *dst;
    }
    // SAFETY: helper call with a pointer to a properly sized, initialised struct.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            // SAFETY: the helper filled the MAC member of the union on success.
            let macs = unsafe { fib.__bindgen_anon_6.__bindgen_anon_2 };
            Lookup::Route(Route {
                ifindex: fib.ifindex,
                dmac: macs.dmac,
                smac: macs.smac,
            })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Lookup::NoNeighbour(next_hop(&fib)),
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Lookup::NoRoute
        }
        _ => Lookup::NotForwarded,
    }
}

/// The next hop a `NO_NEIGH` lookup names: the kernel has set the egress `ifindex` and
/// replaced the destination by the gateway when the route has one; `family` says which
/// member holds it (an IPv4 route may have an IPv6 gateway).
#[inline(always)]
fn next_hop(fib: &FibParams) -> NeighKey {
    // SAFETY: the union members are plain integers; the family says which is meaningful.
    let (family, addr) = unsafe {
        if fib.family == AF_INET6 {
            (FAMILY_V6, fib.__bindgen_anon_4.ipv6_dst)
        } else {
            (FAMILY_V4, [fib.__bindgen_anon_4.ipv4_dst, 0, 0, 0])
        }
    };
    NeighKey {
        addr,
        ifindex: fib.ifindex,
        family,
        _pad: [0; 3],
    }
}

/// Sends the packet along `route`: sets the MAC addresses, decrements the TTL when
/// `routed` (L3 forwarding; `false` for L2 DSR), then `XDP_TX` or redirect.
#[inline(always)]
pub fn send(ctx: &XdpContext, pkt: &Packet, p: &Parsed, route: &Route, routed: bool) -> Forwarded {
    if routed && !decrement_ttl(pkt, p) {
        return Forwarded::Kernel;
    }
    let (Some(dmac), Some(smac)) = (pkt.ptr::<[u8; 6]>(0), pkt.ptr::<[u8; 6]>(6)) else {
        return Forwarded::Kernel;
    };
    // SAFETY: bounds-checked above.
    unsafe {
        *dmac = route.dmac;
        *smac = route.smac;
    }
    if p.vlan || route.ifindex == ctx.ingress_ifindex() as u32 {
        return Forwarded::Sent(xdp_action::XDP_TX);
    }
    // SAFETY: helper call; returns XDP_REDIRECT or XDP_ABORTED.
    let action = unsafe { bpf_redirect(route.ifindex, 0) } as u32;
    if action == xdp_action::XDP_REDIRECT {
        Forwarded::Sent(action)
    } else {
        Forwarded::NoRoute
    }
}

/// Looks up `src → dst` and sends the (already rewritten) packet.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    p: &Parsed,
    src: &Addr,
    dst: &Addr,
    routed: bool,
) -> Forwarded {
    match lookup(ctx, p, src, dst) {
        Lookup::Route(r) => send(ctx, pkt, p, &r, routed),
        Lookup::NoNeighbour(hop) => Forwarded::NoNeighbour(hop),
        Lookup::NoRoute => Forwarded::NoRoute,
        Lookup::NotForwarded => Forwarded::Kernel,
    }
}

/// Like [`forward`] for a packet to backend `backend_id` at `dst`, with the route cached
/// per CPU: within `ROUTE_CACHE_NS` of a successful lookup from the same ingress
/// interface, a packet no longer than one the FIB already accepted is sent without
/// asking the FIB. Anything else asks it, and a success refreshes the cache.
#[inline(always)]
pub fn forward_to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    p: &Parsed,
    backend_id: u32,
    dst: &Addr,
    routed: bool,
    now: u64,
) -> Forwarded {
    let Some(cache) = ROUTE_CACHE.get_ptr_mut(backend_id) else {
        return forward(ctx, pkt, p, &p.src, dst, routed);
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    let cache = unsafe { &mut *cache };
    let ingress = ctx.ingress_ifindex() as u32;
    let fresh = cache.at_ns != 0
        && cache.ingress == ingress
        && cache.dst == *dst
        && now.wrapping_sub(cache.at_ns) < ROUTE_CACHE_NS;
    if fresh && p.ip_len <= cache.ok_len {
        let route = Route {
            ifindex: cache.ifindex,
            dmac: cache.dmac,
            smac: cache.smac,
        };
        return send(ctx, pkt, p, &route, routed);
    }
    match lookup(ctx, p, &p.src, dst) {
        Lookup::Route(r) => {
            let same = fresh && cache.ifindex == r.ifindex && cache.dmac == r.dmac;
            if !same {
                cache.at_ns = now;
                cache.dst = *dst;
                cache.ingress = ingress;
                cache.ifindex = r.ifindex;
                cache.dmac = r.dmac;
                cache.smac = r.smac;
                cache.ok_len = 0;
            }
            if p.ip_len > cache.ok_len {
                cache.ok_len = p.ip_len;
            }
            send(ctx, pkt, p, &r, routed)
        }
        Lookup::NoNeighbour(hop) => Forwarded::NoNeighbour(hop),
        Lookup::NoRoute => Forwarded::NoRoute,
        Lookup::NotForwarded => Forwarded::Kernel,
    }
}

/// Decrements the IPv4 TTL (with checksum update) or IPv6 hop limit. The caller already
/// made sure it is above 1.
#[inline(always)]
pub fn decrement_ttl(pkt: &Packet, p: &Parsed) -> bool {
    if p.family == FAMILY_V4 {
        let (Some(ttl), Some(proto), Some(check)) = (
            pkt.ptr::<u8>(p.l3_off + 8),
            pkt.ptr::<u8>(p.l3_off + 9),
            pkt.ptr::<u16>(p.l3_off + 10),
        ) else {
            return false;
        };
        // SAFETY: bounds-checked pointers.
        unsafe {
            let old = u16::from_ne_bytes([*ttl, *proto]);
            let new = u16::from_ne_bytes([*ttl - 1, *proto]);
            *check = csum::replace16(*check, old, new);
            *ttl -= 1;
        }
    } else {
        let Some(hop) = pkt.ptr::<u8>(p.l3_off + 7) else {
            return false;
        };
        unsafe { *hop -= 1 };
    }
    true
}

/// The verdict and counters for a packet to a backend that was not sent directly: no
/// route → drop (`drop_no_route`); no neighbour → the next hop is reported and the packet
/// (already rewritten; TTL decremented when routed, i.e. NAT) goes to the neighbour queue
/// (`neigh_queued`, see `neigh`), which sends it once the next hop answers. Where the
/// metadata cannot be set, NAT hands it to the kernel's forwarding (`fib_miss`: its
/// source is the client, the kernel routes and resolves it) and DSR drops it
/// (`drop_no_neigh`: the kernel would route it by the VIP). No fast path (MTU…) →
/// `fib_miss`, passed in NAT mode, dropped in DSR mode.
#[inline(always)]
pub fn not_sent(
    ctx: &XdpContext,
    pkt: &Packet,
    p: &Parsed,
    st: &mut ServiceStats,
    service_id: u32,
    outcome: &Forwarded,
    dsr: bool,
) -> u32 {
    match outcome {
        Forwarded::NoRoute => {
            st.drop_no_route += 1;
            return xdp_action::XDP_DROP;
        }
        Forwarded::NoNeighbour(hop) => {
            let why = if dsr {
                lb_common::MISS_DSR_TO_BACKEND
            } else {
                lb_common::MISS_NAT_TO_BACKEND
            };
            neigh::report(st, service_id, hop, why);
            if (dsr || decrement_ttl(pkt, p)) && neigh::queue(ctx, hop) {
                st.neigh_queued += 1;
                return xdp_action::XDP_PASS;
            }
            if dsr {
                st.drop_no_neigh += 1;
                return xdp_action::XDP_DROP;
            }
        }
        _ => {}
    }
    st.fib_miss += 1;
    if dsr {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}
