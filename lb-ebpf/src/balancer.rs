//! The pipeline: strings the stages together and keeps the counters. Every early exit
//! before a rewrite returns `XDP_PASS` with the packet untouched.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::debug;
use lb_common::{
    sticky::Verdict, ReverseValue, ServiceInfo, FWD_DSR, FWD_GUE, FWD_IPIP, JUMP_FRAGMENT,
    JUMP_ICMP, PROTO_ICMP, PROTO_ICMPV6,
};

use crate::{
    dsr, encap,
    forward::{forward_to_backend, lookup, not_sent, send, Forwarded, Lookup},
    fragment, icmp,
    maps::JUMP,
    nat::{self, End},
    neigh,
    packet::Packet,
    parse::{parse, Parsed, FRAG_FIRST, FRAG_LATER},
    service::{lookup_reply, lookup_service},
    stats, sticky,
};

/// Debug logging switch, set by the loader (`stickylb run --debug`). It lives in
/// `.rodata`, frozen at load time, so with 0 the verifier removes every logging branch:
/// the switch costs nothing when off.
#[unsafe(no_mangle)]
static DEBUG: u8 = 0;

#[inline(always)]
fn debug() -> bool {
    // SAFETY: reading a static; volatile so the compiler keeps the load for the loader
    // to patch.
    unsafe { core::ptr::read_volatile(&DEBUG) != 0 }
}

#[inline(always)]
pub fn process(ctx: &XdpContext) -> u32 {
    let pkt = Packet::new(ctx);
    let Some(p) = parse(&pkt) else {
        return xdp_action::XDP_PASS;
    };
    // Side paths run as separate programs (tail calls), each with its own 512-byte
    // stack; the main path stays one inlined function. If the jump fails (slot not
    // loaded), the packet passes untouched.
    if p.proto == PROTO_ICMP || p.proto == PROTO_ICMPV6 {
        // SAFETY: tail call into a program of the same type; does not return on success.
        unsafe { JUMP.tail_call(ctx, JUMP_ICMP) };
        return xdp_action::XDP_PASS;
    }
    if p.frag == FRAG_LATER {
        unsafe { JUMP.tail_call(ctx, JUMP_FRAGMENT) };
        return xdp_action::XDP_PASS;
    }
    balance(ctx, &pkt, &p)
}

/// Entry of the ICMP program: parses again (cheap) and steers the error.
#[inline(always)]
pub fn process_icmp(ctx: &XdpContext) -> u32 {
    let pkt = Packet::new(ctx);
    match parse(&pkt) {
        Some(p) if p.proto == PROTO_ICMP || p.proto == PROTO_ICMPV6 => icmp::process(ctx, &pkt, &p),
        _ => xdp_action::XDP_PASS,
    }
}

/// Entry of the fragment program.
#[inline(always)]
pub fn process_fragment(ctx: &XdpContext) -> u32 {
    let pkt = Packet::new(ctx);
    match parse(&pkt) {
        Some(p) if p.frag == FRAG_LATER => fragment::process(ctx, &p),
        _ => xdp_action::XDP_PASS,
    }
}

/// TCP/UDP: a service's traffic, a NAT reply, or not ours.
#[inline(always)]
fn balance(ctx: &XdpContext, pkt: &Packet, p: &Parsed) -> u32 {
    if let Some(svc) = lookup_service(p) {
        return to_backend(ctx, pkt, p, &svc);
    }
    if let Some(reply) = lookup_reply(p) {
        return to_client(ctx, pkt, p, &reply);
    }
    xdp_action::XDP_PASS
}

/// Client → service: find the client's backend, rewrite, forward.
#[inline(always)]
fn to_backend(ctx: &XdpContext, pkt: &Packet, p: &Parsed, svc: &ServiceInfo) -> u32 {
    let Some(st) = stats::service(svc.id) else {
        return xdp_action::XDP_PASS;
    };
    // L2 DSR and the encapsulating modes (L3 DSR) leave the client's packet as it is: no
    // hop is taken off it, and the kernel must not route it (it would route by the VIP).
    let encap = is_encap(svc);
    let dsr = svc.forwarding == FWD_DSR || encap;
    if !dsr && p.ttl <= 1 {
        // Routed hop would expire: the kernel sends the ICMP time-exceeded.
        st.pass_ttl += 1;
        return xdp_action::XDP_PASS;
    }
    let now = stats::now_ns();
    let Some((backend_id, backend, verdict)) = sticky::resolve(svc, p, now) else {
        st.drop_no_backend += 1;
        if debug() {
            debug!(
                ctx,
                "service {}: no backend takes new clients, dropped", svc.id
            );
        }
        return xdp_action::XDP_DROP;
    };
    if debug() && verdict != Verdict::Hit {
        let why = verdict as u8;
        if p.family == lb_common::FAMILY_V4 {
            debug!(
                ctx,
                "service {}: client {:i} -> backend {} (1=new 2=expired 3=backend down 4=unpinned non-SYN 5=unpinned over cap: {})",
                svc.id,
                u32::from_be(p.src[0]),
                backend_id,
                why
            );
        } else {
            debug!(
                ctx,
                "service {}: IPv6 client -> backend {} (1=new 2=expired 3=backend down 4=unpinned non-SYN 5=unpinned over cap: {})",
                svc.id,
                backend_id,
                why
            );
        }
    }
    if backend.family != p.family && !encap {
        // Only encapsulation carries a packet to a backend of the other family (4-in-6,
        // 6-in-4); the agent never configures it otherwise: refuse rather than mis-forward.
        st.drop_no_backend += 1;
        return xdp_action::XDP_DROP;
    }
    // One lookup of the backend's counters for the whole packet.
    let mut bst = stats::backend(backend_id);
    match verdict {
        Verdict::Hit => {}
        Verdict::New => st.new_clients += 1,
        Verdict::RepickExpired => st.repick_expired += 1,
        Verdict::RepickDown => st.repick_down += 1,
        Verdict::UnpinnedNotSyn => st.unpinned_not_syn += 1,
        Verdict::UnpinnedOverCap => st.unpinned_over_cap += 1,
    }
    if matches!(
        verdict,
        Verdict::New | Verdict::RepickExpired | Verdict::RepickDown
    ) {
        if let Some(b) = bst.as_deref_mut() {
            b.new_clients += 1;
        }
    }
    let len = pkt.len() as u64;

    let outcome = if encap {
        encapsulate(ctx, p, svc, backend_id, &backend, now, true)
    } else if dsr {
        dsr::to_backend(ctx, pkt, p, backend_id, &backend, now)
    } else {
        if nat::rewrite(pkt, p, End::Destination, &backend.addr, backend.port).is_none() {
            return xdp_action::XDP_PASS;
        }
        forward_to_backend(ctx, pkt, p, backend_id, &backend.addr, true, now)
    };
    match outcome {
        Forwarded::Sent(action) => {
            st.packets += 1;
            st.bytes += len;
            if p.frag == FRAG_FIRST {
                st.frag_forwarded += 1;
            }
            if let Some(b) = bst {
                b.packets += 1;
                b.bytes += len;
            }
            action
        }
        Forwarded::Answered(action) => {
            st.too_big_answered += 1;
            action
        }
        Forwarded::TooBig => {
            st.drop_too_big += 1;
            xdp_action::XDP_DROP
        }
        Forwarded::NoNeighbour => neigh::to_backend_miss(ctx, st, dsr),
        other => {
            let action = not_sent(st, &other, dsr);
            if action == xdp_action::XDP_PASS {
                // Rewritten, and on its way: through the neighbour queue (unresolved
                // next hop, which the agent resolves for the packets after) or the
                // kernel's forwarding (no fast path).
                st.packets += 1;
                st.bytes += len;
            }
            action
        }
    }
}

/// Whether the service encapsulates (IPIP or GUE).
#[inline(always)]
pub fn is_encap(svc: &ServiceInfo) -> bool {
    svc.forwarding == FWD_IPIP || svc.forwarding == FWD_GUE
}

/// Encapsulates the packet for `backend` and sends it (see [`encap`]). Over the egress
/// MTU, the client gets an ICMP answer when `answer_too_big` (not for ICMP errors and
/// fragments: `Forwarded::TooBig`).
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    p: &Parsed,
    svc: &ServiceInfo,
    backend_id: u32,
    backend: &lb_common::Backend,
    now: u64,
    answer_too_big: bool,
) -> Forwarded {
    let Some(o) = encap::plan(p, svc, backend) else {
        return Forwarded::TooBig;
    };
    match encap::route(ctx, svc, backend_id, backend, &o, now) {
        encap::OuterRoute::Route(r, src) => {
            encap::push_and_send(ctx, p, &o, &src, &backend.addr, &r)
        }
        encap::OuterRoute::TooBig(mtu) if answer_too_big && mtu > o.overhead => {
            crate::toobig::answer(ctx, p, mtu - o.overhead)
        }
        encap::OuterRoute::TooBig(_) => Forwarded::TooBig,
        encap::OuterRoute::Other(f) => f,
    }
}

/// Backend → client (NAT only): the source becomes the VIP again.
#[inline(always)]
fn to_client(ctx: &XdpContext, pkt: &Packet, p: &Parsed, reply: &ReverseValue) -> u32 {
    let Some(st) = stats::service(reply.service_id) else {
        return xdp_action::XDP_PASS;
    };
    if p.ttl <= 1 {
        st.pass_ttl += 1;
        return xdp_action::XDP_PASS;
    }
    // Route first: a packet from a backend port to the balancer itself (a health check's
    // answer, say) is not a reply to a client and must reach the kernel untouched; so
    // must one the FIB will not fast-path (too big for the route: the kernel tells the
    // backend, which still is its source).
    let route = match lookup(ctx, p, &reply.vip, &p.dst) {
        Lookup::Route(r) => r,
        Lookup::NotForwarded => return xdp_action::XDP_PASS,
        Lookup::NoRoute => {
            st.drop_no_route += 1;
            return xdp_action::XDP_DROP;
        }
        // No neighbour: the kernel's stack cannot take it instead (rewritten, its
        // source is the VIP, a martian when the VIP is one of its own addresses;
        // untouched, the client would get it from the backend's address). Rewritten
        // here, it is queued for the next hop by the neighbour program (`neigh`).
        Lookup::NoNeighbour => {
            if nat::rewrite(pkt, p, End::Source, &reply.vip, reply.vip_port).is_none() {
                return xdp_action::XDP_PASS;
            }
            return neigh::reply_miss(ctx, st);
        }
    };
    if nat::rewrite(pkt, p, End::Source, &reply.vip, reply.vip_port).is_none() {
        return xdp_action::XDP_PASS;
    }
    let len = pkt.len() as u64;
    let outcome = send(ctx, pkt, p, &route, true);
    match outcome {
        Forwarded::Sent(action) => {
            st.reply_packets += 1;
            st.reply_bytes += len;
            action
        }
        other => {
            let action = not_sent(st, &other, false);
            if action == xdp_action::XDP_PASS {
                st.reply_packets += 1;
                st.reply_bytes += len;
            }
            action
        }
    }
}
