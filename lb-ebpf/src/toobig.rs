//! The answer to a client packet that would exceed the egress MTU once encapsulated:
//! ICMP "fragmentation needed" (type 3, code 4) for IPv4 with DF, ICMPv6 "packet too
//! big" for IPv6, carrying the egress MTU minus the encapsulation overhead, built in
//! place from the packet itself and sent back out of the interface it came in on
//! (`XDP_TX`, Ethernet addresses swapped, VLAN tag kept), as Katran and Cilium do. The
//! client's stack lowers its path MTU for the VIP and resends smaller: PMTU discovery
//! works through the tunnel without the backends doing anything.
//!
//! The error comes from the VIP (the address the client sent to; Katran does the same)
//! and quotes the start of the client's packet: as much as fits in 576 bytes for IPv4
//! (RFC 1812 §4.3.2.3) and in 1280 bytes for IPv6 (RFC 4443 §2.4), a fixed length so
//! that the checksum runs over constant-size regions (`bpf_csum_diff`, at most 512 bytes
//! a call). `frag_off` is 0 (katran PR 206: some stacks ignore a DF-marked error).
//!
//! Not answered (the caller drops and counts `drop_too_big`): IPv4 without DF (the
//! sender allowed fragmentation, but the outer header must not be fragmented — see
//! `encap`), an MTU below the family's minimum after the overhead (68 / 1280), a packet
//! shorter than the quote (it would have fitted any MTU that large).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{csum, FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6};

use crate::{
    forward::Forwarded,
    hdr::*,
    packet::{get, set, Packet},
    parse::Parsed,
};

/// Bytes of the client's packet quoted: 576 − 20 − 8 for IPv4, 1280 − 40 − 8 for IPv6.
pub const QUOTE4: usize = 548;
pub const QUOTE6: usize = 1232;
/// Smallest MTU each family allows (RFC 791, RFC 8200).
pub const IPV4_MIN_MTU: u16 = 68;
pub const IPV6_MIN_MTU: u16 = 1280;
/// TTL / hop limit of the answer.
const ANSWER_TTL: u8 = 64;
/// ICMP code "fragmentation needed and DF set".
const ICMP_FRAG_NEEDED: u8 = 4;

/// Answers `p` (the packet in `ctx`) with the `mtu` the client must use.
#[inline(always)]
pub fn answer(ctx: &XdpContext, p: &Parsed, mtu: u16) -> Forwarded {
    if p.family == FAMILY_V4 {
        answer_v4(ctx, p, mtu)
    } else {
        answer_v6(ctx, p, mtu)
    }
}

/// The old Ethernet addresses and VLAN tag word (TPID and TCI), read before the packet
/// moves.
#[inline(always)]
fn old_l2(ctx: &XdpContext) -> Option<([u8; 6], [u8; 6], u32)> {
    let pkt = Packet::reload(ctx);
    // 18 bytes are there even untagged: an IP header follows.
    let l2 = pkt.region::<[u8; ETH_HLEN + VLAN_HLEN]>(0)?;
    // SAFETY: constant offsets inside the checked region.
    unsafe { Some((get(l2, ETH_DST), get(l2, ETH_SRC), get(l2, ETH_TYPE))) }
}

/// Cuts the packet to `l3_off + quote` bytes and makes room for `room` header bytes in
/// front of the quote.
#[inline(always)]
fn reshape(ctx: &XdpContext, p: &Parsed, quote: usize, room: usize) -> bool {
    let len = Packet::reload(ctx).len();
    // Through memory, as a plain number: folded into the pointer arithmetic by the
    // compiler, the verifier would refuse it.
    // SAFETY: reading a local.
    let len = unsafe { core::ptr::read_volatile(&len) };
    let delta = (p.l3_off + quote) as i32 - len as i32;
    // SAFETY: helper calls on our own context.
    unsafe {
        if delta != 0 && bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, delta) != 0 {
            return false;
        }
        bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -(room as i32)) == 0
    }
}

/// Writes the answer's Ethernet header (and tag): back to where the packet came from.
#[inline(always)]
fn write_l2(pkt: &Packet, p: &Parsed, l2: ([u8; 6], [u8; 6], u32), ethertype: u16) -> bool {
    let (dmac, smac, tag) = l2;
    // SAFETY (all `set`s): constant offsets inside the checked regions.
    if p.vlan {
        let Some(r) = pkt.region::<[u8; ETH_HLEN + VLAN_HLEN]>(0) else {
            return false;
        };
        unsafe {
            set(r, ETH_DST, smac);
            set(r, ETH_SRC, dmac);
            set(r, ETH_TYPE, tag);
            set(r, ETH_HLEN + VLAN_TYPE, ethertype);
        }
    } else {
        let Some(r) = pkt.region::<EthHdr>(0) else {
            return false;
        };
        unsafe {
            set(r, ETH_DST, smac);
            set(r, ETH_SRC, dmac);
            set(r, ETH_TYPE, ethertype);
        }
    }
    true
}

/// One's complement sum of `len` bytes at `at` (a multiple of 4, at most 512), added to
/// `seed`.
///
/// # Safety
/// `at` must point into a checked packet region holding `len` bytes.
#[inline(always)]
unsafe fn sum_bytes(at: *mut u8, len: u32, seed: u32) -> u32 {
    unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, at as *mut u32, len, seed) as u32 }
}

#[inline(always)]
fn answer_v4(ctx: &XdpContext, p: &Parsed, mtu: u16) -> Forwarded {
    if !p.df || mtu < IPV4_MIN_MTU || (p.ip_len as usize) < QUOTE4 {
        return Forwarded::TooBig;
    }
    let Some(l2) = old_l2(ctx) else {
        return Forwarded::TooBig;
    };
    if !reshape(ctx, p, QUOTE4, IP4_LEN + ICMP_LEN) {
        return Forwarded::TooBig;
    }
    let pkt = Packet::reload(ctx);
    if !write_l2(&pkt, p, l2, ETH_P_IP) {
        return Forwarded::TooBig;
    }
    const TOTAL: usize = IP4_LEN + ICMP_LEN + QUOTE4;
    let Some(r) = pkt.region::<[u8; TOTAL]>(p.l3_off) else {
        return Forwarded::TooBig;
    };
    let vihl_tos = u16::from_ne_bytes([0x45, 0]);
    let tot_len = (TOTAL as u16).to_be();
    let ttl_proto = u16::from_ne_bytes([ANSWER_TTL, PROTO_ICMP]);
    // From the VIP back to the client.
    let (src, dst) = (p.dst[0], p.src[0]);
    let mut sum = vihl_tos as u32 + tot_len as u32 + ttl_proto as u32;
    sum += (src & 0xffff) + (src >> 16) + (dst & 0xffff) + (dst >> 16);
    const ICMP: usize = IP4_LEN;
    // SAFETY (all accesses): constant offsets inside the checked region.
    unsafe {
        set(r, IP4_VIHL, vihl_tos);
        set(r, IP4_TOT_LEN, tot_len);
        set::<u16>(r, IP4_ID, 0);
        set::<u16>(r, IP4_FRAG, 0);
        set(r, IP4_TTL, ttl_proto);
        set(r, IP4_CHECK, !csum::fold(sum));
        set(r, IP4_SRC, src);
        set(r, IP4_DST, dst);
        set(r, ICMP + ICMP_TYPE, ICMP_DEST_UNREACH);
        set(r, ICMP + ICMP_CODE, ICMP_FRAG_NEEDED);
        set::<u16>(r, ICMP + ICMP_CHECK, 0);
        set::<u16>(r, ICMP + ICMP_DATA, 0);
        set(r, ICMP + ICMP_DATA + 2, mtu.to_be());
        let m = r.add(ICMP);
        let s = sum_bytes(m, 512, 0);
        let s = sum_bytes(m.add(512), (ICMP_LEN + QUOTE4 - 512) as u32, s);
        set(r, ICMP + ICMP_CHECK, !csum::fold(s));
    }
    Forwarded::Answered(xdp_action::XDP_TX)
}

#[inline(always)]
fn answer_v6(ctx: &XdpContext, p: &Parsed, mtu: u16) -> Forwarded {
    if mtu < IPV6_MIN_MTU || (p.ip_len as usize) < QUOTE6 {
        return Forwarded::TooBig;
    }
    let Some(l2) = old_l2(ctx) else {
        return Forwarded::TooBig;
    };
    if !reshape(ctx, p, QUOTE6, IP6_LEN + ICMP6_LEN) {
        return Forwarded::TooBig;
    }
    let pkt = Packet::reload(ctx);
    if !write_l2(&pkt, p, l2, ETH_P_IPV6) {
        return Forwarded::TooBig;
    }
    const MESSAGE: usize = ICMP6_LEN + QUOTE6;
    let Some(r) = pkt.region::<[u8; IP6_LEN + MESSAGE]>(p.l3_off) else {
        return Forwarded::TooBig;
    };
    let (src, dst) = (p.dst, p.src);
    let payload_len = (MESSAGE as u16).to_be();
    // Pseudo-header: addresses, upper-layer length and next header (32-bit words whose
    // upper halves are zero).
    let mut pseudo = payload_len as u32 + (PROTO_ICMPV6 as u16).to_be() as u32;
    let mut i = 0;
    while i < 4 {
        pseudo += (src[i] & 0xffff) + (src[i] >> 16) + (dst[i] & 0xffff) + (dst[i] >> 16);
        i += 1;
    }
    const ICMP: usize = IP6_LEN;
    // SAFETY (all accesses): constant offsets inside the checked region.
    unsafe {
        set(r, IP6_VCF, (6u32 << 28).to_be());
        set(r, IP6_PAYLOAD_LEN, payload_len);
        set(r, IP6_NEXT, PROTO_ICMPV6);
        set(r, IP6_HOP, ANSWER_TTL);
        set(r, IP6_SRC, src);
        set(r, IP6_DST, dst);
        set(r, ICMP + ICMP6_TYPE, ICMPV6_PKT_TOOBIG);
        set::<u8>(r, ICMP + ICMP6_TYPE + 1, 0);
        set::<u16>(r, ICMP + ICMP6_CHECK, 0);
        set(r, ICMP + ICMP6_DATA, (mtu as u32).to_be());
        let m = r.add(ICMP);
        let s = sum_bytes(m, 512, csum::fold(pseudo) as u32);
        let s = sum_bytes(m.add(512), 512, s);
        let s = sum_bytes(m.add(1024), (MESSAGE - 1024) as u32, s);
        set(r, ICMP + ICMP6_CHECK, !csum::fold(s));
    }
    Forwarded::Answered(xdp_action::XDP_TX)
}
