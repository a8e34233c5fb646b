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
use lb_common::{csum, Addr, FAMILY_V4, ROUTE_CACHE_NS};

use crate::{
    hdr::*,
    maps::{FIB_SCRATCH, ROUTE_CACHE},
    neigh,
    packet::Packet,
    parse::Parsed,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The result of trying to forward.
pub enum Forwarded {
    /// Sent on: `XDP_TX` or `XDP_REDIRECT`.
    Sent(u32),
    /// The FIB knows the route but not the neighbour's MAC yet (the next hop it named is
    /// in `neigh`'s scratch slot).
    NoNeighbour,
    /// No route (unreachable, blackhole, prohibit): drop.
    NoRoute,
    /// The FIB cannot give a fast path (local destination, MTU, forwarding disabled…):
    /// let the kernel handle it.
    Kernel,
    /// Encapsulating modes: the packet would exceed the egress MTU once encapsulated and
    /// the client was answered (ICMP "fragmentation needed" / "packet too big"): this
    /// action (`XDP_TX`) sends the answer.
    Answered(u32),
    /// Encapsulating modes: over the MTU and not answerable (IPv4 without DF, …): drop.
    TooBig,
}

/// A successful FIB lookup: where to send and with which MAC addresses.
pub struct Route {
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
}

/// What the FIB says about `src → dst`.
pub enum Lookup {
    Route(Route),
    /// The FIB knows the route but not the neighbour's MAC yet (the next hop it named is
    /// in `neigh`'s scratch slot).
    NoNeighbour,
    /// No route (unreachable, blackhole, prohibit).
    NoRoute,
    /// Not forwarded by the FIB: local destination, MTU exceeded, forwarding disabled…
    NotForwarded,
}

impl From<Lookup> for Forwarded {
    /// The outcome of a lookup that found no route to send on. (A `Route` is the caller's
    /// to send, with [`send`]; converting one means "not sent", so it maps to `Kernel`.)
    #[inline(always)]
    fn from(l: Lookup) -> Forwarded {
        match l {
            Lookup::NoNeighbour => Forwarded::NoNeighbour,
            Lookup::NoRoute => Forwarded::NoRoute,
            Lookup::Route(_) | Lookup::NotForwarded => Forwarded::Kernel,
        }
    }
}

/// The `bpf_fib_lookup` parameters, zeroed, in a per-CPU scratch slot (`FIB_SCRATCH`)
/// rather than on the stack: 64 bytes the main program, with every forwarding mode
/// inlined, has no room for.
#[inline(always)]
pub fn fib_params() -> Option<&'static mut FibParams> {
    let fib = FIB_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs; all-zero is
    // a valid value of the plain C struct.
    unsafe {
        core::ptr::write_bytes(fib, 0, 1);
        Some(&mut *fib)
    }
}

/// Asks the kernel's FIB for the path of `src → dst` (addresses as they will be sent).
#[inline(always)]
pub fn lookup(ctx: &XdpContext, p: &Parsed, src: &Addr, dst: &Addr) -> Lookup {
    let Some(fib) = fib_params() else {
        return Lookup::NotForwarded;
    };
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
            fib as *mut FibParams,
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
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            neigh::remember(fib);
            Lookup::NoNeighbour
        }
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            Lookup::NoRoute
        }
        _ => Lookup::NotForwarded,
    }
}

/// Sends the packet along `route`: sets the MAC addresses, decrements the TTL when
/// `routed` (L3 forwarding; `false` for L2 DSR), then `XDP_TX` or redirect.
#[inline(always)]
pub fn send(ctx: &XdpContext, pkt: &Packet, p: &Parsed, route: &Route, routed: bool) -> Forwarded {
    if routed && !decrement_ttl(pkt, p) {
        return Forwarded::Kernel;
    }
    let (Some(dmac), Some(smac)) = (pkt.ptr::<[u8; 6]>(ETH_DST), pkt.ptr::<[u8; 6]>(ETH_SRC))
    else {
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
        other => other.into(),
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
        other => other.into(),
    }
}

/// Decrements the IPv4 TTL (with checksum update) or IPv6 hop limit. The caller already
/// made sure it is above 1.
#[inline(always)]
fn decrement_ttl(pkt: &Packet, p: &Parsed) -> bool {
    if p.family == FAMILY_V4 {
        let (Some(ttl), Some(proto), Some(check)) = (
            pkt.ptr::<u8>(p.l3_off + IP4_TTL),
            pkt.ptr::<u8>(p.l3_off + IP4_PROTO),
            pkt.ptr::<u16>(p.l3_off + IP4_CHECK),
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
        let Some(hop) = pkt.ptr::<u8>(p.l3_off + IP6_HOP) else {
            return false;
        };
        unsafe { *hop -= 1 };
    }
    true
}

/// The verdict and counters for a packet that was not sent directly: no route → drop
/// (`drop_no_route`); no fast path → `fib_miss`, then the kernel takes the (already
/// rewritten) packet, except in DSR mode, where it would route by the VIP instead of to
/// the backend, so the packet is dropped. (No neighbour is the callers' to hand to
/// `neigh::backend_miss` first.)
#[inline(always)]
pub fn not_sent(st: &mut lb_common::ServiceStats, outcome: &Forwarded, dsr: bool) -> u32 {
    if let Forwarded::NoRoute = outcome {
        st.drop_no_route += 1;
        return xdp_action::XDP_DROP;
    }
    st.fib_miss += 1;
    if dsr {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}
