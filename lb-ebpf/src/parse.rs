//! Stage 1: parse Ethernet (optionally one 802.1Q tag), IPv4 (with options) or IPv6, and
//! TCP, UDP or ICMP (v4) / ICMPv6. IPv4 fragments are classified (first / later). Anything
//! else — other protocols, IPv6 extension headers, truncated headers, lying lengths, an
//! L4 header that lies beyond the IP length (in the frame's padding) — is `None`, and the
//! packet passes to the kernel untouched.

use lb_common::{Addr, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

use crate::{
    hdr::*,
    packet::{get, Packet},
};

/// More-fragments flag and fragment offset bits of the IPv4 `frag_off` field.
const IPV4_MF_OFFSET: u16 = 0x3FFFu16.to_be();
/// Fragment offset bits of the IPv4 `frag_off` field.
const IPV4_OFFSET: u16 = 0x1FFFu16.to_be();
/// Don't-fragment flag of the IPv4 `frag_off` field.
const IPV4_DF: u16 = 0x4000u16.to_be();

/// Not a fragment.
pub const FRAG_NONE: u8 = 0;
/// First IPv4 fragment: carries the L4 header.
pub const FRAG_FIRST: u8 = 1;
/// Later IPv4 fragment: no L4 header, no ports.
pub const FRAG_LATER: u8 = 2;

/// What the rest of the pipeline needs to know about a packet.
#[derive(Clone, Copy)]
pub struct Parsed {
    /// Offset of the IP header (`ETH_HLEN`, plus `VLAN_HLEN` with a VLAN tag).
    pub l3_off: usize,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
    pub vlan: bool,
    /// [`FRAG_NONE`], [`FRAG_FIRST`] or [`FRAG_LATER`] (IPv4 only).
    pub frag: u8,
    /// IPv4 don't-fragment flag (false for IPv6).
    pub df: bool,
    pub family: u8,
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    /// TCP flags byte (0 for anything else).
    pub tcp_flags: u8,
    /// Network byte order.
    pub sport: u16,
    pub dport: u16,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 total length / IPv6 payload length + 40, host order (for the FIB MTU check).
    pub ip_len: u16,
    /// IPv4 TOS, or the IPv6 flow info word (traffic class and flow label, network order,
    /// version bits cleared), for the FIB lookup and the outer header.
    pub tos_or_flow: u32,
}

impl Parsed {
    /// Whether `len` bytes at `off` lie inside the IP datagram (not in the frame's
    /// padding beyond the IP length).
    #[inline(always)]
    pub fn in_datagram(&self, off: usize, len: usize) -> bool {
        off + len <= self.l3_off + self.ip_len as usize
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_check_off(&self) -> usize {
        if self.proto == PROTO_TCP {
            self.l4_off + TCP_CHECK
        } else {
            self.l4_off + UDP_CHECK
        }
    }
}

#[inline(always)]
pub fn parse(pkt: &Packet) -> Option<Parsed> {
    let eth = pkt.region::<EthHdr>(0)?;
    let mut l3_off = ETH_HLEN;
    // SAFETY (every `get` below): constant offsets inside a region the packet holds.
    let mut ethertype: u16 = unsafe { get(eth, ETH_TYPE) };
    let mut vlan = false;
    if ethertype == ETH_P_8021Q {
        let tag = pkt.region::<VlanHdr>(ETH_HLEN)?;
        ethertype = unsafe { get(tag, VLAN_TYPE) };
        l3_off += VLAN_HLEN;
        vlan = true;
    }
    let mut p = if ethertype == ETH_P_IP {
        parse_ipv4(pkt, l3_off)?
    } else if ethertype == ETH_P_IPV6 {
        parse_ipv6(pkt, l3_off)?
    } else {
        return None;
    };
    p.vlan = vlan;
    // A length field claiming more than the frame holds means a truncated packet:
    // not ours to forward (the kernel will drop it). Padding beyond it is fine.
    if p.l3_off + p.ip_len as usize > pkt.len() {
        return None;
    }
    if p.frag == FRAG_LATER {
        // No L4 header in this fragment: no ports.
        return Some(p);
    }
    if p.proto == PROTO_ICMP || p.proto == PROTO_ICMPV6 {
        // Type, code, checksum and 4 more bytes; the quoted packet is parsed by `icmp`.
        pkt.region::<Icmpv4Hdr>(p.l4_off)?;
        if !p.in_datagram(p.l4_off, ICMP_LEN) {
            return None;
        }
        return Some(p);
    }
    // Check the whole fixed header is there, then read the ports (and TCP flags) from it.
    if p.proto == PROTO_TCP {
        let tcp = pkt.region::<TcpHdr>(p.l4_off)?;
        if !p.in_datagram(p.l4_off, TCP_LEN) {
            return None;
        }
        unsafe {
            p.tcp_flags = get(tcp, TCP_FLAGS);
            p.sport = get(tcp, TCP_SPORT);
            p.dport = get(tcp, TCP_DPORT);
        }
    } else {
        let udp = pkt.region::<UdpHdr>(p.l4_off)?;
        if !p.in_datagram(p.l4_off, UDP_LEN) {
            return None;
        }
        unsafe {
            p.sport = get(udp, UDP_SPORT);
            p.dport = get(udp, UDP_DPORT);
        }
    }
    Some(p)
}

#[inline(always)]
fn parse_ipv4(pkt: &Packet, l3: usize) -> Option<Parsed> {
    // Fixed 20-byte header; options are skipped by the IHL.
    let ip = pkt.region::<Ipv4Hdr>(l3)?;
    // SAFETY (every `get` below): constant offsets inside the checked header.
    let vihl: u8 = unsafe { get(ip, IP4_VIHL) };
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < IP4_LEN {
        return None;
    }
    let frag_off: u16 = unsafe { get(ip, IP4_FRAG) };
    let frag = if frag_off & IPV4_MF_OFFSET == 0 {
        FRAG_NONE
    } else if frag_off & IPV4_OFFSET == 0 {
        FRAG_FIRST
    } else {
        FRAG_LATER
    };
    let proto: u8 = unsafe { get(ip, IP4_PROTO) };
    if proto != PROTO_TCP && proto != PROTO_UDP && !(proto == PROTO_ICMP && frag == FRAG_NONE) {
        return None;
    }
    let tot_len: u16 = unsafe { get(ip, IP4_TOT_LEN) };
    if (u16::from_be(tot_len) as usize) < ihl {
        return None;
    }
    let (tos, ttl, src, dst): (u8, u8, u32, u32) = unsafe {
        (
            get(ip, IP4_TOS),
            get(ip, IP4_TTL),
            get(ip, IP4_SRC),
            get(ip, IP4_DST),
        )
    };
    Some(Parsed {
        l3_off: l3,
        l4_off: l3 + ihl,
        vlan: false,
        frag,
        df: frag_off & IPV4_DF != 0,
        family: FAMILY_V4,
        proto,
        src: [src, 0, 0, 0],
        dst: [dst, 0, 0, 0],
        tcp_flags: 0,
        sport: 0,
        dport: 0,
        ttl,
        ip_len: u16::from_be(tot_len),
        tos_or_flow: tos as u32,
    })
}

#[inline(always)]
fn parse_ipv6(pkt: &Packet, l3: usize) -> Option<Parsed> {
    let ip = pkt.region::<Ipv6Hdr>(l3)?;
    // SAFETY (every `get` below): constant offsets inside the checked header.
    let vcf: u32 = unsafe { get(ip, IP6_VCF) };
    if (u32::from_be(vcf) >> 28) != 6 {
        return None;
    }
    let proto: u8 = unsafe { get(ip, IP6_NEXT) };
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMPV6 {
        return None;
    }
    let payload_len: u16 = unsafe { get(ip, IP6_PAYLOAD_LEN) };
    // A payload length the 16-bit datagram length cannot hold with the header (no frame
    // here is that long anyway): not ours.
    if u16::from_be(payload_len) > u16::MAX - IP6_LEN as u16 {
        return None;
    }
    let (ttl, src, dst): (u8, Addr, Addr) =
        unsafe { (get(ip, IP6_HOP), get(ip, IP6_SRC), get(ip, IP6_DST)) };
    Some(Parsed {
        l3_off: l3,
        l4_off: l3 + IP6_LEN,
        vlan: false,
        frag: FRAG_NONE,
        df: false,
        family: FAMILY_V6,
        proto,
        src,
        dst,
        tcp_flags: 0,
        sport: 0,
        dport: 0,
        ttl,
        ip_len: u16::from_be(payload_len).wrapping_add(IP6_LEN as u16),
        tos_or_flow: vcf & 0x0FFF_FFFFu32.to_be(),
    })
}
