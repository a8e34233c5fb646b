//! Stage 5c (`encap`): L3 direct server return. The client's packet is kept as it is and
//! put inside an outer header addressed to the backend, which strips it (`stickylb
//! decap`, or the kernel's ipip / ip6tnl / fou devices) and answers the client directly,
//! as Katran, GLB and Cilium do. Backends may sit anywhere the FIB routes to.
//!
//! - `FWD_IPIP`: outer IPv4 (protocol 4 for an IPv4 inner packet, 41 for IPv6) or outer
//!   IPv6 (next header 4 / 41). The outer family is the backend's, so 4-in-6 and 6-in-4
//!   come for free.
//! - `FWD_GUE`: outer IP + UDP to the service's GUE port, GUE variant 1 (the UDP payload
//!   is the IP packet itself, no GUE header: the first two bits of an IPv4 or IPv6
//!   header are `01`). Source port `GUE_SPORT_BASE | hash` (entropy, as GLB). UDP checksum
//!   0 over IPv4 (RFC 768 allows it); over IPv6 derived from the inner checksum without
//!   touching the payload (see [`gue_v6_check`]), or 0 where no inner checksum covers the
//!   packet (RFC 6936; see there).
//!
//! Outer header: TTL 64, TOS / traffic class copied from the inner packet, DF set (the
//! decapsulators run before reassembly, so an outer fragment could not be decapsulated:
//! the path must report its MTU instead), IPv4 checksum computed, IPv6 flow label from
//! the flow's hash. Outer source: the balancer's egress address as the FIB gives it
//! (`BPF_FIB_LOOKUP_SRC`), so ICMP errors from the path come back to the balancer; or,
//! with `SVC_SRC_HASH`, the client's hash inside a configured prefix (`ENCAP_SOURCE`,
//! RSS-friendly, as Katran and Cilium).
//!
//! The FIB lookup is asked for the outer packet (family, protocol, length); its MTU check
//! says when the encapsulated packet would not fit the egress: the caller then answers
//! the client ([`crate::toobig`]). Routes are cached per backend in `ROUTE_CACHE`, as for
//! the other modes, with the FIB's source.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NO_SRC_ADDR, BPF_FIB_LKUP_RET_PROHIBIT,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE, BPF_FIB_LOOKUP_SRC,
    },
    helpers::{bpf_fib_lookup, bpf_xdp_adjust_head},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    csum, hash::encap_hash, Addr, Backend, ServiceInfo, ENCAP_IPV4_LEN, ENCAP_IPV6_LEN, ENCAP_TTL,
    ENCAP_UDP_LEN, FAMILY_V4, FWD_GUE, GUE_SPORT_BASE, GUE_SPORT_MASK, PROTO_IPIP, PROTO_IPV6,
    PROTO_UDP, ROUTE_CACHE_NS, SVC_SRC_HASH,
};

use crate::{
    forward::{send, Forwarded, Route},
    hdr::*,
    maps::{ENCAP_SOURCE, ROUTE_CACHE},
    packet::{get, set, Packet},
    parse::{Parsed, FRAG_NONE},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The outer header to build for one packet.
#[derive(Clone, Copy)]
pub struct Outer {
    pub family: u8,
    /// Outer IP protocol: 4 / 41 for IPIP, 17 for GUE.
    pub proto: u8,
    pub gue: bool,
    /// Bytes the outer headers add.
    pub overhead: u16,
    /// Outer IP length (IPv4 total length, IPv6 payload length + 40).
    pub len: u16,
    /// GUE ports (network order); 0 for IPIP.
    pub sport: u16,
    pub dport: u16,
    /// TOS / traffic class of the inner packet.
    pub tos: u8,
    /// Flow hash (GUE source port, IPv6 flow label, client-hash source).
    pub hash: u32,
}

/// What the FIB says about the outer packet.
pub enum OuterRoute {
    /// Send along `Route` with this outer source.
    Route(Route, Addr),
    /// The encapsulated packet would exceed the egress MTU (the FIB's `mtu_result`).
    TooBig(u16),
    Other(Forwarded),
}

/// The outer header for `p` to `backend`, or `None` when the encapsulated packet would
/// not fit in 16-bit lengths.
#[inline(always)]
pub fn plan(p: &Parsed, svc: &ServiceInfo, backend: &Backend) -> Option<Outer> {
    let gue = svc.forwarding == FWD_GUE;
    let v4 = backend.family == FAMILY_V4;
    let ip_hdr = if v4 { ENCAP_IPV4_LEN } else { ENCAP_IPV6_LEN };
    let overhead = ip_hdr + if gue { ENCAP_UDP_LEN } else { 0 };
    let len = p.ip_len.checked_add(overhead)?;
    let proto = if gue {
        PROTO_UDP
    } else if p.family == FAMILY_V4 {
        PROTO_IPIP
    } else {
        PROTO_IPV6
    };
    let hash = encap_hash(&p.src, p.sport);
    let tos = if p.family == FAMILY_V4 {
        p.tos_or_flow as u8
    } else {
        // The traffic class straddles the first two bytes of the IPv6 header.
        let b = p.tos_or_flow.to_ne_bytes();
        ((b[0] & 0x0f) << 4) | (b[1] >> 4)
    };
    Some(Outer {
        family: backend.family,
        proto,
        gue,
        overhead,
        len,
        sport: if gue {
            (GUE_SPORT_BASE | (hash as u16 & GUE_SPORT_MASK)).to_be()
        } else {
            0
        },
        dport: if gue { svc.gue_port } else { 0 },
        tos,
        hash,
    })
}

/// The client-hash outer source of a `SVC_SRC_HASH` service for an outer `family`, or
/// `None` (FIB source) when the service has no prefix of that family.
#[inline(always)]
fn hashed_source(svc: &ServiceInfo, family: u8, hash: u32) -> Option<Addr> {
    if svc.flags & SVC_SRC_HASH == 0 {
        return None;
    }
    let s = ENCAP_SOURCE.get(svc.id)?;
    if family == FAMILY_V4 {
        if s.v4_mask == 0 {
            return None;
        }
        Some([s.v4_prefix | (hash & !s.v4_mask), 0, 0, 0])
    } else {
        if s.v6_mask == [0; 4] {
            return None;
        }
        let mut a = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            a[i] = s.v6_prefix[i] | (hash & !s.v6_mask[i]);
            i += 1;
        }
        Some(a)
    }
}

/// The route of the outer packet to backend `backend_id` at `backend`, cached per CPU as
/// in [`crate::forward::forward_to_backend`]: a fresh entry for the same backend address,
/// ingress and mode serves any outer packet no longer than one the FIB accepted.
#[inline(always)]
pub fn route(
    ctx: &XdpContext,
    svc: &ServiceInfo,
    backend_id: u32,
    backend: &Backend,
    o: &Outer,
    now: u64,
) -> OuterRoute {
    let hashed = hashed_source(svc, o.family, o.hash);
    let ingress = ctx.ingress_ifindex() as u32;
    let cache = ROUTE_CACHE.get_ptr_mut(backend_id);
    if let Some(c) = cache {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        let c = unsafe { &*c };
        let fresh = c.at_ns != 0
            && c.ingress == ingress
            && c.dst == backend.addr
            && c.forwarding == svc.forwarding
            && now.wrapping_sub(c.at_ns) < ROUTE_CACHE_NS;
        if fresh && o.len <= c.ok_len {
            let r = Route {
                ifindex: c.ifindex,
                dmac: c.dmac,
                smac: c.smac,
            };
            return OuterRoute::Route(r, hashed.unwrap_or(c.src));
        }
    }
    let Some(fib) = crate::forward::fib_params() else {
        return OuterRoute::Other(Forwarded::Kernel);
    };
    fib.l4_protocol = o.proto;
    fib.sport = o.sport;
    fib.dport = o.dport;
    fib.__bindgen_anon_1.tot_len = o.len;
    fib.ifindex = ingress;
    let src = hashed.unwrap_or([0; 4]);
    if o.family == FAMILY_V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = o.tos;
        fib.__bindgen_anon_3.ipv4_src = src[0];
        fib.__bindgen_anon_4.ipv4_dst = backend.addr[0];
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = src;
        fib.__bindgen_anon_4.ipv6_dst = backend.addr;
    }
    let flags = if hashed.is_some() {
        0
    } else {
        BPF_FIB_LOOKUP_SRC
    };
    // SAFETY: helper call with a pointer to a properly sized, initialised struct.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            fib as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            flags,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            // SAFETY: the helper filled the MAC member of the union on success, and the
            // source when asked to.
            let (macs, fib_src) = unsafe {
                (
                    fib.__bindgen_anon_6.__bindgen_anon_2,
                    if o.family == FAMILY_V4 {
                        [fib.__bindgen_anon_3.ipv4_src, 0, 0, 0]
                    } else {
                        fib.__bindgen_anon_3.ipv6_src
                    },
                )
            };
            let r = Route {
                ifindex: fib.ifindex,
                dmac: macs.dmac,
                smac: macs.smac,
            };
            if let Some(c) = cache {
                // SAFETY: as above.
                let c = unsafe { &mut *c };
                let same = c.at_ns != 0
                    && c.ingress == ingress
                    && c.dst == backend.addr
                    && c.forwarding == svc.forwarding
                    && now.wrapping_sub(c.at_ns) < ROUTE_CACHE_NS
                    && c.ifindex == r.ifindex
                    && c.dmac == r.dmac
                    && c.src == fib_src;
                if !same {
                    c.at_ns = now;
                    c.dst = backend.addr;
                    c.ingress = ingress;
                    c.ifindex = r.ifindex;
                    c.dmac = r.dmac;
                    c.smac = r.smac;
                    c.forwarding = svc.forwarding;
                    c.src = fib_src;
                    c.ok_len = 0;
                }
                if o.len > c.ok_len {
                    c.ok_len = o.len;
                }
            }
            OuterRoute::Route(r, fib_src)
        }
        // SAFETY: the helper wrote the MTU into the length's union member.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            OuterRoute::TooBig(unsafe { fib.__bindgen_anon_1.mtu_result })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            crate::neigh::remember(fib);
            OuterRoute::Other(Forwarded::NoNeighbour)
        }
        BPF_FIB_LKUP_RET_BLACKHOLE
        | BPF_FIB_LKUP_RET_UNREACHABLE
        | BPF_FIB_LKUP_RET_PROHIBIT
        | BPF_FIB_LKUP_RET_NO_SRC_ADDR => OuterRoute::Other(Forwarded::NoRoute),
        _ => OuterRoute::Other(Forwarded::Kernel),
    }
}

/// Encapsulates `p` (the packet in `ctx`, untouched so far) for `o` from `src` to `dst`
/// and sends it along `route`. After a failed head adjustment the packet is unchanged
/// and `Kernel` is returned (the caller drops it: the kernel would route it by the VIP).
#[inline(always)]
pub fn push_and_send(
    ctx: &XdpContext,
    p: &Parsed,
    o: &Outer,
    src: &Addr,
    dst: &Addr,
    route: &Route,
) -> Forwarded {
    // Everything needed from the old packet is read before the head moves.
    let pkt = Packet::reload(ctx);
    let Some(check6) = gue_v6_check(&pkt, p, o, src, dst) else {
        return Forwarded::Kernel;
    };
    let vlan_tag: u32 = if p.vlan {
        match pkt.region::<[u8; ETH_HLEN + VLAN_HLEN]>(0) {
            // SAFETY: constant offset inside the checked region.
            Some(r) => unsafe { get(r, ETH_TYPE) },
            None => return Forwarded::Kernel,
        }
    } else {
        0
    };
    // SAFETY: helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -(o.overhead as i32)) } != 0 {
        return Forwarded::Kernel;
    }
    let pkt = Packet::reload(ctx);
    let ethertype = if o.family == FAMILY_V4 {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    // SAFETY (all `set`s): constant offsets inside regions checked just before.
    if p.vlan {
        let Some(l2) = pkt.region::<[u8; ETH_HLEN + VLAN_HLEN]>(0) else {
            return Forwarded::Kernel;
        };
        unsafe {
            set(l2, ETH_TYPE, vlan_tag);
            set(l2, ETH_HLEN + VLAN_TYPE, ethertype);
        }
    } else {
        let Some(l2) = pkt.region::<EthHdr>(0) else {
            return Forwarded::Kernel;
        };
        unsafe { set(l2, ETH_TYPE, ethertype) };
    }
    let inner_len = p.ip_len;
    if o.family == FAMILY_V4 {
        let Some(r) = pkt.region::<[u8; IP4_LEN + UDP_LEN]>(p.l3_off) else {
            return Forwarded::Kernel;
        };
        let vihl_tos = u16::from_ne_bytes([0x45, o.tos]);
        let tot_len = o.len.to_be();
        let frag = 0x4000u16.to_be();
        let ttl_proto = u16::from_ne_bytes([ENCAP_TTL, o.proto]);
        let mut sum = vihl_tos as u32 + tot_len as u32 + frag as u32 + ttl_proto as u32;
        sum = add32(sum, src[0]);
        sum = add32(sum, dst[0]);
        unsafe {
            set::<u16>(r, IP4_VIHL, vihl_tos);
            set::<u16>(r, IP4_TOT_LEN, tot_len);
            set::<u16>(r, IP4_ID, 0);
            set::<u16>(r, IP4_FRAG, frag);
            set::<u16>(r, IP4_TTL, ttl_proto);
            set::<u16>(r, IP4_CHECK, !csum::fold(sum));
            set::<u32>(r, IP4_SRC, src[0]);
            set::<u32>(r, IP4_DST, dst[0]);
            if o.gue {
                set(r, IP4_LEN + UDP_SPORT, o.sport);
                set(r, IP4_LEN + UDP_DPORT, o.dport);
                set(
                    r,
                    IP4_LEN + UDP_LEN_FIELD,
                    (inner_len + ENCAP_UDP_LEN).to_be(),
                );
                set::<u16>(r, IP4_LEN + UDP_CHECK, 0);
            }
        }
    } else {
        let Some(r) = pkt.region::<[u8; IP6_LEN + UDP_LEN]>(p.l3_off) else {
            return Forwarded::Kernel;
        };
        let vcf = (6u32 << 28) | ((o.tos as u32) << 20) | (o.hash & 0x000f_ffff);
        let payload = if o.gue {
            inner_len + ENCAP_UDP_LEN
        } else {
            inner_len
        };
        unsafe {
            set(r, IP6_VCF, vcf.to_be());
            set(r, IP6_PAYLOAD_LEN, payload.to_be());
            set(r, IP6_NEXT, o.proto);
            set(r, IP6_HOP, ENCAP_TTL);
            set(r, IP6_SRC, *src);
            set(r, IP6_DST, *dst);
            if o.gue {
                set(r, IP6_LEN + UDP_SPORT, o.sport);
                set(r, IP6_LEN + UDP_DPORT, o.dport);
                set(r, IP6_LEN + UDP_LEN_FIELD, payload.to_be());
                set(r, IP6_LEN + UDP_CHECK, check6);
            }
        }
    }
    send(ctx, &pkt, p, route, false)
}

/// Adds a 32-bit word (two 16-bit halves) to a one's complement partial sum.
#[inline(always)]
fn add32(sum: u32, w: u32) -> u32 {
    sum + (w & 0xffff) + (w >> 16)
}

#[inline(always)]
fn add_addr(mut sum: u32, a: &Addr) -> u32 {
    let mut i = 0;
    while i < 4 {
        sum = add32(sum, a[i]);
        i += 1;
    }
    sum
}

/// The UDP checksum of a GUE packet over IPv6 (0 for the other modes), computed without
/// reading the payload: the UDP payload is the inner IP packet, whose transport segment
/// already sums to the complement of its pseudo-header when its own checksum is right
/// (TCP, UDP, ICMPv6; ICMPv4 has no pseudo-header, its message sums to zero). So the
/// checksum is: outer pseudo-header + UDP header + inner IP header + ~inner pseudo-header
/// (Katran's method). A corrupt inner checksum makes the outer one wrong too, and the
/// packet is dropped at the backend, as it would have been anyway.
///
/// Where no inner checksum covers the packet — an IPv4 fragment (the transport checksum
/// covers the reassembled datagram) or UDP over IPv4 without a checksum — the field is 0:
/// RFC 6936 allows a zero UDP checksum over IPv6 for tunnel protocols whose egress is
/// configured to accept it, and both decapsulators used with stickylb do (`stickylb
/// decap` does not check the outer checksum; the kernel's fou sockets accept zero
/// checksums over IPv6). Only 4-in-6 GUE meets these packets. `None`: the packet cannot be
/// read (nothing changed).
#[inline(always)]
fn gue_v6_check(pkt: &Packet, p: &Parsed, o: &Outer, src: &Addr, dst: &Addr) -> Option<u16> {
    if !o.gue || o.family == FAMILY_V4 {
        return Some(0);
    }
    let v4 = p.family == FAMILY_V4;
    if v4 && p.frag != FRAG_NONE {
        return Some(0);
    }
    let l4_len = p.ip_len - (p.l4_off - p.l3_off) as u16;
    if v4 && p.proto == lb_common::PROTO_UDP {
        let udp = pkt.region::<UdpHdr>(p.l4_off)?;
        // SAFETY: constant offset inside the checked header.
        if unsafe { get::<u16>(udp, UDP_CHECK) } == 0 {
            return Some(0);
        }
    }
    let udp_len = (p.ip_len + ENCAP_UDP_LEN).to_be();
    // Outer pseudo-header (length and next header as 32-bit words whose upper halves are
    // zero) and UDP header (checksum field zero; the length appears in both).
    let mut sum = add_addr(add_addr(0, src), dst);
    sum += udp_len as u32 + (PROTO_UDP as u16).to_be() as u32;
    sum += o.sport as u32 + o.dport as u32 + udp_len as u32;
    // Inner IP header: an IPv4 header with a right checksum sums to zero; an IPv6
    // header is summed from its fields.
    let proto_word = (p.proto as u16).to_be() as u32;
    let l4_word = l4_len.to_be() as u32;
    let inner_pseudo = if v4 {
        if p.proto == lb_common::PROTO_ICMP {
            0
        } else {
            add32(add32(0, p.src[0]), p.dst[0]) + proto_word + l4_word
        }
    } else {
        let vcf = p.tos_or_flow | 0x60;
        sum = add32(sum, vcf);
        sum += l4_word + u16::from_ne_bytes([p.proto, p.ttl]) as u32;
        sum = add_addr(add_addr(sum, &p.src), &p.dst);
        add_addr(add_addr(0, &p.src), &p.dst) + proto_word + l4_word
    };
    if inner_pseudo != 0 {
        sum += !csum::fold(inner_pseudo) as u32;
    }
    Some(csum::udp_nonzero(!csum::fold(sum)))
}
