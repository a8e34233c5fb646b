//! The pipeline: strings the stages together and keeps the counters. Every early exit
//! before a rewrite returns `XDP_PASS` with the packet untouched.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::debug;
use lb_common::{
    sticky::Verdict, ReverseValue, ServiceInfo, FWD_DSR, JUMP_FRAGMENT, JUMP_ICMP, MISS_REPLY,
    PROTO_ICMP, PROTO_ICMPV6,
};

use crate::{
    dsr,
    forward::{decrement_ttl, forward_to_backend, lookup, not_sent, send, Forwarded, Lookup},
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
    let dsr = svc.forwarding == FWD_DSR;
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
        let why: u8 = match verdict {
            Verdict::New => 0,
            Verdict::RepickExpired => 1,
            Verdict::RepickDown => 2,
            Verdict::UnpinnedNotSyn => 3,
            _ => 4,
        };
        if p.family == lb_common::FAMILY_V4 {
            debug!(
                ctx,
                "service {}: client {:i} -> backend {} (0=new 1=expired 2=backend down 3=unpinned non-SYN 4=unpinned over cap: {})",
                svc.id,
                u32::from_be(p.src[0]),
                backend_id,
                why
            );
        } else {
            debug!(
                ctx,
                "service {}: IPv6 client -> backend {} (0=new 1=expired 2=backend down 3=unpinned non-SYN 4=unpinned over cap: {})",
                svc.id,
                backend_id,
                why
            );
        }
    }
    if backend.family != p.family {
        // The agent never configures this; refuse rather than mis-forward.
        st.drop_no_backend += 1;
        return xdp_action::XDP_DROP;
    }
    let bst = stats::backend(backend_id);
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
        if let Some(b) = bst {
            b.new_clients += 1;
        }
    }
    let len = pkt.len() as u64;

    let outcome = if dsr {
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
            if let Some(b) = stats::backend(backend_id) {
                b.packets += 1;
                b.bytes += len;
            }
            action
        }
        other => {
            let action = not_sent(ctx, pkt, p, st, svc.id, &other, dsr);
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
        Lookup::NoNeighbour(hop) => {
            // The kernel's stack cannot take it instead: rewritten, its source is the
            // VIP, which it drops as a martian when the VIP is one of its own addresses;
            // untouched, the client would get it from the backend's address. So it is
            // rewritten as if sent and goes to the neighbour queue (`neigh`), and the
            // agent resolves the next hop for the packets after it.
            neigh::report(st, reply.service_id, &hop, MISS_REPLY);
            if nat::rewrite(pkt, p, End::Source, &reply.vip, reply.vip_port).is_none() {
                return xdp_action::XDP_PASS;
            }
            let len = pkt.len() as u64;
            if decrement_ttl(pkt, p) && neigh::queue(ctx, &hop) {
                st.neigh_queued += 1;
                st.reply_packets += 1;
                st.reply_bytes += len;
                return xdp_action::XDP_PASS;
            }
            st.drop_no_neigh += 1;
            return xdp_action::XDP_DROP;
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
            let action = not_sent(ctx, pkt, p, st, reply.service_id, &other, false);
            if action == xdp_action::XDP_PASS {
                st.reply_packets += 1;
                st.reply_bytes += len;
            }
            action
        }
    }
}
