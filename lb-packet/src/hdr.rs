//! Header layouts and field offsets, from the `network-types` crate: the data path reads
//! and writes packets through one bounds-checked pointer per header (or per region of
//! headers, see [`crate::packet::get`]) at these constant offsets, so the verifier sees
//! fixed offsets from a checked pointer and no number in the data path is a bare header
//! offset. The types are only layouts here: nothing dereferences a `&Ipv4Hdr`.

use core::mem::offset_of;

pub use network_types::{
    eth::{EthHdr, EtherType},
    icmp::{Icmpv4Hdr, Icmpv4Type, Icmpv6Hdr, Icmpv6Type},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

/// Ethernet header length, and the VLAN tag's.
pub const ETH_HLEN: usize = EthHdr::LEN;
pub const VLAN_HLEN: usize = VlanHdr::LEN;
pub const ETH_DST: usize = offset_of!(EthHdr, dst_addr);
pub const ETH_SRC: usize = offset_of!(EthHdr, src_addr);
pub const ETH_TYPE: usize = offset_of!(EthHdr, ether_type);
/// EtherType of the frame inside an 802.1Q tag (offset inside the tag).
pub const VLAN_TYPE: usize = offset_of!(VlanHdr, ether_type);
/// EtherTypes as they sit in the packet (network order).
pub const ETH_P_IP: u16 = EtherType::Ipv4 as u16;
pub const ETH_P_IPV6: u16 = EtherType::Ipv6 as u16;
pub const ETH_P_8021Q: u16 = EtherType::Ieee8021q as u16;

/// IPv4 header (fixed part) and its fields.
pub const IP4_LEN: usize = Ipv4Hdr::LEN;
pub const IP4_VIHL: usize = offset_of!(Ipv4Hdr, vihl);
pub const IP4_TOS: usize = offset_of!(Ipv4Hdr, tos);
pub const IP4_TOT_LEN: usize = offset_of!(Ipv4Hdr, tot_len);
pub const IP4_ID: usize = offset_of!(Ipv4Hdr, id);
pub const IP4_FRAG: usize = offset_of!(Ipv4Hdr, frags);
pub const IP4_TTL: usize = offset_of!(Ipv4Hdr, ttl);
pub const IP4_PROTO: usize = offset_of!(Ipv4Hdr, proto);
pub const IP4_CHECK: usize = offset_of!(Ipv4Hdr, check);
pub const IP4_SRC: usize = offset_of!(Ipv4Hdr, src_addr);
pub const IP4_DST: usize = offset_of!(Ipv4Hdr, dst_addr);

/// IPv6 header and its fields.
pub const IP6_LEN: usize = Ipv6Hdr::LEN;
pub const IP6_VCF: usize = offset_of!(Ipv6Hdr, vcf);
pub const IP6_PAYLOAD_LEN: usize = offset_of!(Ipv6Hdr, payload_len);
pub const IP6_NEXT: usize = offset_of!(Ipv6Hdr, next_hdr);
pub const IP6_HOP: usize = offset_of!(Ipv6Hdr, hop_limit);
pub const IP6_SRC: usize = offset_of!(Ipv6Hdr, src_addr);
pub const IP6_DST: usize = offset_of!(Ipv6Hdr, dst_addr);

/// TCP header (fixed part): ports, the flags byte (second byte of the data-offset /
/// flags word), checksum.
pub const TCP_LEN: usize = TcpHdr::LEN;
pub const TCP_SPORT: usize = offset_of!(TcpHdr, source);
pub const TCP_DPORT: usize = offset_of!(TcpHdr, dest);
pub const TCP_FLAGS: usize = offset_of!(TcpHdr, _bitfield_1) + 1;
pub const TCP_CHECK: usize = offset_of!(TcpHdr, check);

/// UDP header.
pub const UDP_LEN: usize = UdpHdr::LEN;
pub const UDP_SPORT: usize = offset_of!(UdpHdr, src);
pub const UDP_DPORT: usize = offset_of!(UdpHdr, dst);
pub const UDP_LEN_FIELD: usize = offset_of!(UdpHdr, len);
pub const UDP_CHECK: usize = offset_of!(UdpHdr, check);

/// ICMP and ICMPv6 headers (same layout: type, code, checksum, 4 bytes of data).
pub const ICMP_LEN: usize = Icmpv4Hdr::LEN;
pub const ICMP_TYPE: usize = offset_of!(Icmpv4Hdr, type_);
pub const ICMP_CODE: usize = offset_of!(Icmpv4Hdr, code);
pub const ICMP_CHECK: usize = offset_of!(Icmpv4Hdr, check);
pub const ICMP_DATA: usize = offset_of!(Icmpv4Hdr, data);
pub const ICMP6_LEN: usize = Icmpv6Hdr::LEN;
pub const ICMP6_TYPE: usize = offset_of!(Icmpv6Hdr, type_);
pub const ICMP6_CHECK: usize = offset_of!(Icmpv6Hdr, check);
pub const ICMP6_DATA: usize = offset_of!(Icmpv6Hdr, data);

/// ICMP types the data path steers or sends.
pub const ICMP_DEST_UNREACH: u8 = Icmpv4Type::DestinationUnreachable as u8;
/// ICMPv6 destination unreachable (RFC 4443; `network-types` has no name for it).
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PKT_TOOBIG: u8 = Icmpv6Type::PacketTooBig as u8;

// The layouts the data path was written against.
const _: () = {
    assert!(ETH_HLEN == 14 && VLAN_HLEN == 4 && ETH_TYPE == 12 && VLAN_TYPE == 2);
    assert!(IP4_LEN == 20 && IP4_PROTO == 9 && IP4_CHECK == 10 && IP4_DST == 16);
    assert!(IP6_LEN == 40 && IP6_NEXT == 6 && IP6_SRC == 8 && IP6_DST == 24);
    assert!(TCP_LEN == 20 && TCP_FLAGS == 13 && TCP_CHECK == 16);
    assert!(UDP_LEN == 8 && UDP_CHECK == 6);
    assert!(ICMP_LEN == 8 && ICMP6_LEN == 8 && ICMP_CHECK == 2);
};
