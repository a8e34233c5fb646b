//! Stage 1: parse Ethernet (optionally one 802.1Q tag), IPv4 (with options) or IPv6, and
//! TCP, UDP or ICMP (v4) / ICMPv6. IPv4 fragments are classified (first / later). Anything
//! else — other protocols, IPv6 extension headers, truncated headers, lying lengths, an
//! L4 header that lies beyond the IP length (in the frame's padding) — is `None`, and the
//! packet passes to the kernel untouched.

use lb_common::{Addr, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

use crate::packet::Packet;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800u16.to_be();
const ETH_P_IPV6: u16 = 0x86DDu16.to_be();
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
/// More-fragments flag and fragment offset bits of the IPv4 `frag_off` field.
const IPV4_MF_OFFSET: u16 = 0x3FFFu16.to_be();
/// Fragment offset bits of the IPv4 `frag_off` field.
const IPV4_OFFSET: u16 = 0x1FFFu16.to_be();

/// Not a fragment.
pub const FRAG_NONE: u8 = 0;
/// First IPv4 fragment: carries the L4 header.
pub const FRAG_FIRST: u8 = 1;
/// Later IPv4 fragment: no L4 header, no ports.
pub const FRAG_LATER: u8 = 2;

/// Offset of the checksum field in a TCP / UDP header.
pub const TCP_CHECK_OFF: usize = 16;
pub const UDP_CHECK_OFF: usize = 6;

/// What the rest of the pipeline needs to know about a packet.
#[derive(Clone, Copy)]
pub struct Parsed {
    /// Offset of the IP header (14, or 18 with a VLAN tag).
    pub l3_off: usize,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
    pub vlan: bool,
    /// [`FRAG_NONE`], [`FRAG_FIRST`] or [`FRAG_LATER`] (IPv4 only).
    pub frag: u8,
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
    /// IPv4 TOS or IPv6 flow info word (network order), for the FIB lookup.
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
            self.l4_off + TCP_CHECK_OFF
        } else {
            self.l4_off + UDP_CHECK_OFF
        }
    }
}

#[inline(always)]
pub fn parse(pkt: &Packet) -> Option<Parsed> {
    let mut l3_off = ETH_HLEN;
    let mut ethertype: u16 = pkt.read(12)?;
    let mut vlan = false;
    if ethertype == ETH_P_8021Q {
        ethertype = pkt.read(16)?;
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
        pkt.ptr::<[u8; 8]>(p.l4_off)?;
        if !p.in_datagram(p.l4_off, 8) {
            return None;
        }
        return Some(p);
    }
    // Both TCP and UDP start with the two ports; check the whole fixed header is there.
    if p.proto == PROTO_TCP {
        let tcp = pkt.ptr::<[u8; 20]>(p.l4_off)?;
        // SAFETY: the 20-byte header was bounds-checked just above.
        p.tcp_flags = unsafe { (*tcp)[13] };
        if !p.in_datagram(p.l4_off, 20) {
            return None;
        }
    } else {
        pkt.ptr::<[u8; 8]>(p.l4_off)?;
        if !p.in_datagram(p.l4_off, 8) {
            return None;
        }
    }
    p.sport = pkt.read(p.l4_off)?;
    p.dport = pkt.read(p.l4_off + 2)?;
    Some(p)
}

#[inline(always)]
fn parse_ipv4(pkt: &Packet, l3: usize) -> Option<Parsed> {
    // Fixed 20-byte header first.
    pkt.ptr::<[u8; 20]>(l3)?;
    let vihl: u8 = pkt.read(l3)?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return None;
    }
    let frag_off: u16 = pkt.read(l3 + 6)?;
    let frag = if frag_off & IPV4_MF_OFFSET == 0 {
        FRAG_NONE
    } else if frag_off & IPV4_OFFSET == 0 {
        FRAG_FIRST
    } else {
        FRAG_LATER
    };
    let proto: u8 = pkt.read(l3 + 9)?;
    if proto != PROTO_TCP && proto != PROTO_UDP && !(proto == PROTO_ICMP && frag == FRAG_NONE) {
        return None;
    }
    let tos: u8 = pkt.read(l3 + 1)?;
    let tot_len: u16 = pkt.read(l3 + 2)?;
    if (u16::from_be(tot_len) as usize) < ihl {
        return None;
    }
    let ttl: u8 = pkt.read(l3 + 8)?;
    let src: u32 = pkt.read(l3 + 12)?;
    let dst: u32 = pkt.read(l3 + 16)?;
    Some(Parsed {
        l3_off: l3,
        l4_off: l3 + ihl,
        vlan: false,
        frag,
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
    pkt.ptr::<[u8; 40]>(l3)?;
    let vcf: u32 = pkt.read(l3)?;
    if (u32::from_be(vcf) >> 28) != 6 {
        return None;
    }
    let proto: u8 = pkt.read(l3 + 6)?;
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_ICMPV6 {
        return None;
    }
    let payload_len: u16 = pkt.read(l3 + 4)?;
    // A payload length the 16-bit datagram length cannot hold with the header (no frame
    // here is that long anyway): not ours.
    if u16::from_be(payload_len) > u16::MAX - 40 {
        return None;
    }
    let ttl: u8 = pkt.read(l3 + 7)?;
    let src: Addr = pkt.read(l3 + 8)?;
    let dst: Addr = pkt.read(l3 + 24)?;
    Some(Parsed {
        l3_off: l3,
        l4_off: l3 + 40,
        vlan: false,
        frag: FRAG_NONE,
        family: FAMILY_V6,
        proto,
        src,
        dst,
        tcp_flags: 0,
        sport: 0,
        dport: 0,
        ttl,
        ip_len: u16::from_be(payload_len).wrapping_add(40),
        tos_or_flow: vcf & 0xFFFF_FF0Fu32.to_be(),
    })
}
