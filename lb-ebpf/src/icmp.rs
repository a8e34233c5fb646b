//! ICMP errors about a service flow — IPv4 destination unreachable (including
//! "fragmentation needed"), ICMPv6 destination unreachable and packet too big — are
//! steered to the backend that owns the client, as Katran does: the quoted packet is a
//! reply sent from the VIP to the client, so (quoted source, quoted source port) names the
//! service and the quoted destination the client. The client's live entry decides the
//! backend; no entry means the error passes to the kernel (counted). In NAT mode the
//! outer destination and the quoted source are rewritten to the backend so its stack
//! recognises its own packet; in DSR mode only the MAC changes; in the encapsulating
//! modes (IPIP, GUE) the error is encapsulated to the backend as it is. Echo requests and
//! other ICMP pass untouched.
//!
//! Verifier-friendly access: each family reads and writes through one or two pointers to
//! fixed-size regions, at constant offsets inside them (no per-field bounds checks that
//! the compiler could merge or reorder). The quoted IPv4 header must have no options
//! (as in Katran) and the quoted IPv6 header must say version 6; otherwise the error
//! passes.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    csum,
    sticky::{judge, stick_key, Verdict},
    Addr, Backend, Endpoint, ServiceInfo, FAMILY_V4, FWD_DSR, PROTO_TCP, PROTO_UDP,
};

use crate::{
    balancer::{encapsulate, is_encap},
    forward::{forward, not_sent, Forwarded},
    hdr::*,
    maps::{BACKENDS, SERVICES, STICK},
    packet::{get, set, Packet},
    parse::Parsed,
    stats,
};

/// The two ports at the start of a quoted TCP or UDP header.
const PORTS: usize = TCP_DPORT + 2;

/// IPv4 region at the ICMP header: ICMP header, quoted IPv4 header without options,
/// quoted ports.
const V4_REGION: usize = V4_Q + IP4_LEN + PORTS;
/// Offsets inside it.
const V4_ICMP_CHECK: usize = ICMP_CHECK;
const V4_Q: usize = ICMP_LEN;
const V4_Q_VIHL: usize = V4_Q + IP4_VIHL;
const V4_Q_PROTO: usize = V4_Q + IP4_PROTO;
const V4_Q_CHECK: usize = V4_Q + IP4_CHECK;
const V4_Q_SRC: usize = V4_Q + IP4_SRC;
const V4_Q_DST: usize = V4_Q + IP4_DST;
const V4_Q_SPORT: usize = V4_Q + IP4_LEN + TCP_SPORT;
/// Outer IPv4 header (fixed part), at the IP header.
const V4_OUTER: usize = IP4_LEN;
const V4_OUTER_CHECK: usize = IP4_CHECK;
const V4_OUTER_DST: usize = IP4_DST;

/// IPv6 region at the IP header: outer IPv6 header, ICMPv6 header, quoted IPv6 header,
/// quoted ports.
const V6_REGION: usize = V6_Q + IP6_LEN + PORTS;
const V6_OUTER_DST: usize = IP6_DST;
const V6_ICMP_TYPE: usize = IP6_LEN + ICMP6_TYPE;
const V6_ICMP_CHECK: usize = IP6_LEN + ICMP6_CHECK;
const V6_Q: usize = IP6_LEN + ICMP6_LEN;
const V6_Q_VERSION: usize = V6_Q + IP6_VCF;
const V6_Q_NEXT: usize = V6_Q + IP6_NEXT;
const V6_Q_SRC: usize = V6_Q + IP6_SRC;
const V6_Q_DST: usize = V6_Q + IP6_DST;
const V6_Q_SPORT: usize = V6_Q + IP6_LEN + TCP_SPORT;

/// Runs as its own XDP program, reached by tail call from the main program.
#[inline(always)]
pub fn process(ctx: &XdpContext, pkt: &Packet, p: &Parsed) -> u32 {
    if p.family == FAMILY_V4 {
        process_v4(ctx, pkt, p)
    } else {
        process_v6(ctx, pkt, p)
    }
}

#[inline(always)]
fn process_v4(ctx: &XdpContext, pkt: &Packet, p: &Parsed) -> u32 {
    let Some(r) = pkt.ptr::<[u8; V4_REGION]>(p.l4_off) else {
        return xdp_action::XDP_PASS;
    };
    if !p.in_datagram(p.l4_off, V4_REGION) {
        return xdp_action::XDP_PASS;
    }
    let r = r as *mut u8;
    // SAFETY: constant offsets inside the bounds-checked region.
    let (ty, vihl, proto, src, dst, sport) = unsafe {
        (
            get::<u8>(r, ICMP_TYPE),
            get::<u8>(r, V4_Q_VIHL),
            get::<u8>(r, V4_Q_PROTO),
            get::<u32>(r, V4_Q_SRC),
            get::<u32>(r, V4_Q_DST),
            get::<u16>(r, V4_Q_SPORT),
        )
    };
    if ty != ICMP_DEST_UNREACH || vihl != 0x45 {
        return xdp_action::XDP_PASS;
    }
    let Some((svc, backend_id, backend)) = owner(p, [src, 0, 0, 0], sport, proto, [dst, 0, 0, 0])
    else {
        return xdp_action::XDP_PASS;
    };
    let dsr = keeps_packet(&svc);
    // Pointers for the writes are taken afresh after the helper calls.
    let pkt = Packet::reload(ctx);
    if !dsr {
        let (Some(outer), Some(r)) = (
            pkt.ptr::<[u8; V4_OUTER]>(p.l3_off),
            pkt.ptr::<[u8; V4_REGION]>(p.l4_off),
        ) else {
            return xdp_action::XDP_PASS;
        };
        let (outer, r) = (outer as *mut u8, r as *mut u8);
        let addr = backend.addr[0];
        let new_sport = if backend.port == 0 {
            sport
        } else {
            backend.port
        };
        // SAFETY: constant offsets inside the bounds-checked regions.
        unsafe {
            let old_qc: u16 = get(r, V4_Q_CHECK);
            let new_qc = csum::replace32(old_qc, src, addr);
            let mut sum = csum::begin(get(r, V4_ICMP_CHECK));
            sum = csum::diff32(sum, src, addr);
            sum = csum::diff16(sum, sport, new_sport);
            sum = csum::diff16(sum, old_qc, new_qc);
            set(r, V4_Q_CHECK, new_qc);
            set(r, V4_Q_SRC, addr);
            set(r, V4_Q_SPORT, new_sport);
            set(r, V4_ICMP_CHECK, csum::finish(sum));
            let outer_dst: u32 = get(outer, V4_OUTER_DST);
            set(
                outer,
                V4_OUTER_CHECK,
                csum::replace32(get(outer, V4_OUTER_CHECK), outer_dst, addr),
            );
            set(outer, V4_OUTER_DST, addr);
        }
    }
    send(ctx, &pkt, p, &svc, backend_id, &backend)
}

#[inline(always)]
fn process_v6(ctx: &XdpContext, pkt: &Packet, p: &Parsed) -> u32 {
    let Some(r) = pkt.ptr::<[u8; V6_REGION]>(p.l3_off) else {
        return xdp_action::XDP_PASS;
    };
    if !p.in_datagram(p.l3_off, V6_REGION) {
        return xdp_action::XDP_PASS;
    }
    let r = r as *mut u8;
    // SAFETY: constant offsets inside the bounds-checked region.
    let (ty, qversion, next, src, dst, sport) = unsafe {
        (
            get::<u8>(r, V6_ICMP_TYPE),
            get::<u8>(r, V6_Q_VERSION) >> 4,
            get::<u8>(r, V6_Q_NEXT),
            get::<Addr>(r, V6_Q_SRC),
            get::<Addr>(r, V6_Q_DST),
            get::<u16>(r, V6_Q_SPORT),
        )
    };
    if (ty != ICMPV6_DEST_UNREACH && ty != ICMPV6_PKT_TOOBIG) || qversion != 6 {
        return xdp_action::XDP_PASS;
    }
    let Some((svc, backend_id, backend)) = owner(p, src, sport, next, dst) else {
        return xdp_action::XDP_PASS;
    };
    let dsr = keeps_packet(&svc);
    let pkt = Packet::reload(ctx);
    if !dsr {
        let Some(r) = pkt.ptr::<[u8; V6_REGION]>(p.l3_off) else {
            return xdp_action::XDP_PASS;
        };
        let r = r as *mut u8;
        let addr = backend.addr;
        let new_sport = if backend.port == 0 {
            sport
        } else {
            backend.port
        };
        // SAFETY: constant offsets inside the bounds-checked region.
        unsafe {
            let outer_dst: Addr = get(r, V6_OUTER_DST);
            let mut sum = csum::begin(get(r, V6_ICMP_CHECK));
            sum = csum::diff_addr(sum, &src, &addr, 4);
            sum = csum::diff16(sum, sport, new_sport);
            // ICMPv6 checksums the pseudo-header, which holds the outer destination.
            sum = csum::diff_addr(sum, &outer_dst, &addr, 4);
            set(r, V6_Q_SRC, addr);
            set(r, V6_Q_SPORT, new_sport);
            set(r, V6_OUTER_DST, addr);
            set(r, V6_ICMP_CHECK, csum::finish(sum));
        }
    }
    send(ctx, &pkt, p, &svc, backend_id, &backend)
}

/// The service the quoted reply came from and the backend owning the quoted client, if
/// the client has a live entry. A service without one counts `icmp_unmatched`.
#[inline(always)]
fn owner(
    p: &Parsed,
    src: Addr,
    sport: u16,
    proto: u8,
    client: Addr,
) -> Option<(ServiceInfo, u32, Backend)> {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let mut key = Endpoint {
        addr: src,
        port: sport,
        proto,
        family: p.family,
    };
    // SAFETY: map values copied out at once.
    let svc = match unsafe { SERVICES.get(&key) } {
        Some(s) => *s,
        None => {
            key.port = 0;
            *unsafe { SERVICES.get(&key) }?
        }
    };
    let st = stats::service(svc.id)?;
    let now = stats::now_ns();
    // The quoted destination is the client: its entry is keyed by its network.
    let found = unsafe { STICK.get(&stick_key(&svc, &client)) }.and_then(|e| {
        let b = BACKENDS.get(e.backend_id)?;
        // Only encapsulation reaches a backend of the other family.
        (judge(e, Some(b), svc.id, now, svc.expiry_ns) == Verdict::Hit
            && (b.family == p.family || is_encap(&svc)))
        .then_some((e.backend_id, *b))
    });
    let Some((backend_id, backend)) = found else {
        st.icmp_unmatched += 1;
        return None;
    };
    if !keeps_packet(&svc) && p.ttl <= 1 {
        // Routed hop would expire: the kernel answers.
        st.pass_ttl += 1;
        return None;
    }
    Some((svc, backend_id, backend))
}

/// L2 DSR and the encapsulating modes forward the error as it is (no NAT rewrite, no
/// hop taken off).
#[inline(always)]
fn keeps_packet(svc: &ServiceInfo) -> bool {
    svc.forwarding == FWD_DSR || is_encap(svc)
}

/// Forwards the (rewritten, in NAT mode; encapsulated in the IPIP and GUE modes) error
/// to the backend and counts it. An encapsulated error over the MTU is dropped, counted:
/// an ICMP error is never answered with another.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    pkt: &Packet,
    p: &Parsed,
    svc: &ServiceInfo,
    backend_id: u32,
    backend: &Backend,
) -> u32 {
    let dsr = keeps_packet(svc);
    let Some(st) = stats::service(svc.id) else {
        return xdp_action::XDP_PASS;
    };
    let outcome = if is_encap(svc) {
        encapsulate(ctx, p, svc, backend_id, backend, stats::now_ns(), false)
    } else {
        forward(ctx, pkt, p, &p.src, &backend.addr, !dsr)
    };
    match outcome {
        Forwarded::Sent(action) => {
            st.icmp_to_backend += 1;
            action
        }
        Forwarded::TooBig | Forwarded::Answered(_) => {
            st.drop_too_big += 1;
            xdp_action::XDP_DROP
        }
        other => not_sent(st, &other, dsr),
    }
}
