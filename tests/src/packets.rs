//! Test packets built with `etherparse` (an implementation independent of ours), so
//! expected outputs — checksums included — are computed from scratch, not incrementally.

use std::net::IpAddr;

use etherparse::{
    icmpv4::DestUnreachableHeader, EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header,
    Icmpv4Type, Icmpv6Header, Icmpv6Type, IpFragOffset, IpNumber, Ipv4Header, Ipv6FlowLabel,
    Ipv6Header, SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp,
};

/// Transport protocol of a fixture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

/// A TCP or UDP packet over IPv4 or IPv6, optionally VLAN-tagged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    /// IPv4 options (multiple of 4 bytes).
    pub ipv4_options: Vec<u8>,
    /// TCP flags: SYN set when true, else ACK.
    pub syn: bool,
    /// Send UDP/IPv4 with checksum 0 ("none").
    pub udp_no_checksum: bool,
    /// IPv4 only: a first fragment (more-fragments set, offset 0, DF clear).
    pub more_fragments: bool,
    /// IPv4 only: the don't-fragment flag (default set; never on a fragment).
    pub df: bool,
    pub payload: Vec<u8>,
}

impl Pkt {
    /// A TCP SYN from `src:sport` to `dst:dport` with a small payload.
    pub fn new(l4: L4, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Pkt {
        Pkt {
            src_mac: [0x02, 0, 0, 0, 0, 0xaa],
            dst_mac: [0x02, 0, 0, 0, 0, 0xbb],
            vlan: None,
            src,
            dst,
            l4,
            sport,
            dport,
            ttl: 64,
            ipv4_options: Vec::new(),
            syn: true,
            udp_no_checksum: false,
            more_fragments: false,
            df: true,
            payload: b"hello stickylb".to_vec(),
        }
    }

    /// Serialises the packet with every checksum computed from scratch.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let ip_type = if self.src.is_ipv4() {
            EtherType::IPV4
        } else {
            EtherType::IPV6
        };
        let eth_type = if self.vlan.is_some() {
            EtherType::VLAN_TAGGED_FRAME
        } else {
            ip_type
        };
        out.extend_from_slice(
            &Ethernet2Header {
                source: self.src_mac,
                destination: self.dst_mac,
                ether_type: eth_type,
            }
            .to_bytes(),
        );
        if let Some(id) = self.vlan {
            let tag = SingleVlanHeader {
                pcp: VlanPcp::ZERO,
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(id).expect("vlan id"),
                ether_type: ip_type,
            };
            out.extend_from_slice(&tag.to_bytes());
        }
        let proto = match self.l4 {
            L4::Tcp => IpNumber::TCP,
            L4::Udp => IpNumber::UDP,
        };
        let l4_len = match self.l4 {
            L4::Tcp => 20,
            L4::Udp => 8,
        } + self.payload.len();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ip =
                    Ipv4Header::new(l4_len as u16, self.ttl, proto, s.octets(), d.octets())
                        .unwrap();
                ip.identification = 0x4242;
                ip.dont_fragment = self.df && !self.more_fragments;
                ip.more_fragments = self.more_fragments;
                ip.options = self
                    .ipv4_options
                    .as_slice()
                    .try_into()
                    .expect("ipv4 options");
                ip.total_len += self.ipv4_options.len() as u16;
                ip.header_checksum = ip.calc_header_checksum();
                out.extend_from_slice(&ip.to_bytes());
                match self.l4 {
                    L4::Tcp => {
                        let mut tcp = self.tcp();
                        tcp.checksum = tcp.calc_checksum_ipv4(&ip, &self.payload).unwrap();
                        out.extend_from_slice(&tcp.to_bytes());
                    }
                    L4::Udp => {
                        let mut udp = UdpHeader::with_ipv4_checksum(
                            self.sport,
                            self.dport,
                            &ip,
                            &self.payload,
                        )
                        .unwrap();
                        if self.udp_no_checksum {
                            udp.checksum = 0;
                        }
                        out.extend_from_slice(&udp.to_bytes());
                    }
                }
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ip = Ipv6Header {
                    traffic_class: 0,
                    flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
                    payload_length: l4_len as u16,
                    next_header: proto,
                    hop_limit: self.ttl,
                    source: s.octets(),
                    destination: d.octets(),
                };
                out.extend_from_slice(&ip.to_bytes());
                match self.l4 {
                    L4::Tcp => {
                        let mut tcp = self.tcp();
                        tcp.checksum = tcp.calc_checksum_ipv6(&ip, &self.payload).unwrap();
                        out.extend_from_slice(&tcp.to_bytes());
                    }
                    L4::Udp => {
                        let udp = UdpHeader::with_ipv6_checksum(
                            self.sport,
                            self.dport,
                            &ip,
                            &self.payload,
                        )
                        .unwrap();
                        out.extend_from_slice(&udp.to_bytes());
                    }
                }
            }
            _ => panic!("mixed address families in a fixture"),
        }
        out.extend_from_slice(&self.payload);
        out
    }

    fn tcp(&self) -> TcpHeader {
        let mut tcp = TcpHeader::new(self.sport, self.dport, 1000, 64240);
        if self.syn {
            tcp.syn = true;
        } else {
            tcp.ack = true;
            tcp.acknowledgment_number = 77;
        }
        tcp
    }

    /// Byte offsets where one header ends and the next begins (Ethernet, VLAN, IP, L4).
    pub fn header_boundaries(&self) -> Vec<usize> {
        let mut b = vec![14];
        let mut off = 14;
        if self.vlan.is_some() {
            off += 4;
            b.push(off);
        }
        off += if self.src.is_ipv4() {
            20 + self.ipv4_options.len()
        } else {
            40
        };
        b.push(off);
        off += match self.l4 {
            L4::Tcp => 20,
            L4::Udp => 8,
        };
        b.push(off);
        b
    }
}

/// An IP packet with a raw payload (no TCP/UDP header built): ICMP messages and later
/// IPv4 fragments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raw {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: IpNumber,
    pub ttl: u8,
    /// IPv4 only.
    pub more_fragments: bool,
    /// IPv4 only, in 8-byte units.
    pub fragment_offset: u16,
    pub payload: Vec<u8>,
}

/// ICMP messages the fixtures need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icmp {
    /// IPv4 destination unreachable, code 4, with the next-hop MTU.
    FragmentationNeeded(u16),
    /// ICMPv6 packet too big, with the MTU.
    PacketTooBig(u32),
    /// ICMPv6 destination unreachable, port unreachable.
    PortUnreachableV6,
    /// Echo request (either family).
    EchoRequest,
}

impl Raw {
    pub fn new(src: IpAddr, dst: IpAddr, proto: IpNumber, payload: Vec<u8>) -> Raw {
        Raw {
            src_mac: [0x02, 0, 0, 0, 0, 0xaa],
            dst_mac: [0x02, 0, 0, 0, 0, 0xbb],
            src,
            dst,
            proto,
            ttl: 64,
            more_fragments: false,
            fragment_offset: 0,
            payload,
        }
    }

    /// An ICMP (IPv4) or ICMPv6 message from `src` to `dst` quoting `quoted` (an IP
    /// packet, from its IP header on), with its checksum computed from scratch.
    pub fn icmp(src: IpAddr, dst: IpAddr, kind: Icmp, quoted: &[u8]) -> Raw {
        let echo = IcmpEchoHeader { id: 7, seq: 1 };
        let (proto, mut payload) = match (src, dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => {
                let ty = match kind {
                    Icmp::FragmentationNeeded(mtu) => Icmpv4Type::DestinationUnreachable(
                        DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
                    ),
                    Icmp::EchoRequest => Icmpv4Type::EchoRequest(echo),
                    other => panic!("{other:?} is not an IPv4 ICMP message"),
                };
                (
                    IpNumber::ICMP,
                    Icmpv4Header::with_checksum(ty, quoted).to_bytes().to_vec(),
                )
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ty = match kind {
                    Icmp::PacketTooBig(mtu) => Icmpv6Type::PacketTooBig { mtu },
                    Icmp::PortUnreachableV6 => Icmpv6Type::DestinationUnreachable(
                        etherparse::icmpv6::DestUnreachableCode::Port,
                    ),
                    Icmp::EchoRequest => Icmpv6Type::EchoRequest(echo),
                    other => panic!("{other:?} is not an ICMPv6 message"),
                };
                (
                    IpNumber::IPV6_ICMP,
                    Icmpv6Header::with_checksum(ty, s.octets(), d.octets(), quoted)
                        .unwrap()
                        .to_bytes()
                        .to_vec(),
                )
            }
            _ => panic!("mixed address families in a fixture"),
        };
        payload.extend_from_slice(quoted);
        Raw::new(src, dst, proto, payload)
    }

    /// Serialises the packet with the IP header checksum computed from scratch.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let ether_type = if self.src.is_ipv4() {
            EtherType::IPV4
        } else {
            EtherType::IPV6
        };
        out.extend_from_slice(
            &Ethernet2Header {
                source: self.src_mac,
                destination: self.dst_mac,
                ether_type,
            }
            .to_bytes(),
        );
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ip = Ipv4Header::new(
                    self.payload.len() as u16,
                    self.ttl,
                    self.proto,
                    s.octets(),
                    d.octets(),
                )
                .unwrap();
                ip.identification = 0x4243;
                ip.more_fragments = self.more_fragments;
                ip.fragment_offset = IpFragOffset::try_new(self.fragment_offset).unwrap();
                ip.header_checksum = ip.calc_header_checksum();
                out.extend_from_slice(&ip.to_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ip = Ipv6Header {
                    traffic_class: 0,
                    flow_label: Ipv6FlowLabel::try_new(0x54321).unwrap(),
                    payload_length: self.payload.len() as u16,
                    next_header: self.proto,
                    hop_limit: self.ttl,
                    source: s.octets(),
                    destination: d.octets(),
                };
                out.extend_from_slice(&ip.to_bytes());
            }
            _ => panic!("mixed address families in a fixture"),
        }
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Rewrites the source address and port of a quoted IP packet (from its IP header on)
/// the way a NAT'd ICMP error must carry it, recomputing the IPv4 header checksum from
/// scratch. The quoted TCP/UDP checksum is left as it was (nobody checks it in an ICMP
/// error, and the quote may not even hold it).
pub fn requote(quoted: &[u8], src: IpAddr, sport: u16) -> Vec<u8> {
    let mut out;
    let l4 = match src {
        IpAddr::V4(a) => {
            let (mut ip, _) = Ipv4Header::from_slice(quoted).unwrap();
            ip.source = a.octets();
            ip.header_checksum = ip.calc_header_checksum();
            let hl = ip.header_len();
            out = ip.to_bytes().to_vec();
            out.extend_from_slice(&quoted[hl..]);
            hl
        }
        IpAddr::V6(a) => {
            out = quoted.to_vec();
            out[8..24].copy_from_slice(&a.octets());
            40
        }
    };
    out[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
    out
}

/// The outer header of an encapsulated fixture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    /// IP in IP: protocol / next header 4 (IPv4 inside) or 41 (IPv6 inside).
    Ipip,
    /// GUE variant 1: outer UDP, the IP packet right behind it. `zero_check`: the UDP
    /// checksum is 0 (always over IPv4; over IPv6 only when asked).
    Gue {
        sport: u16,
        dport: u16,
        zero_check: bool,
    },
}

/// The outer IP header fields of an encapsulated fixture.
#[derive(Clone, Copy, Debug)]
pub struct Outer {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Outer TOS / traffic class.
    pub tos: u8,
    /// IPv6 outer flow label.
    pub flow_label: u32,
}

/// `inner` (an IP packet, from its IP header on) inside an outer IPv4 (DF set, TTL 64,
/// id 0) or IPv6 (hop limit 64) header, behind an untagged Ethernet header. Checksums
/// are computed from scratch over the whole datagram by etherparse.
pub fn encapsulated(o: &Outer, tunnel: Tunnel, inner: &[u8]) -> Vec<u8> {
    let inner_v4 = inner[0] >> 4 == 4;
    let (proto, udp_len) = match tunnel {
        Tunnel::Ipip if inner_v4 => (IpNumber::IPV4, 0),
        Tunnel::Ipip => (IpNumber::IPV6, 0),
        Tunnel::Gue { .. } => (IpNumber::UDP, 8),
    };
    let mut out = Ethernet2Header {
        source: o.src_mac,
        destination: o.dst_mac,
        ether_type: if o.src.is_ipv4() {
            EtherType::IPV4
        } else {
            EtherType::IPV6
        },
    }
    .to_bytes()
    .to_vec();
    let payload_len = (udp_len + inner.len()) as u16;
    match (o.src, o.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = Ipv4Header::new(payload_len, 64, proto, s.octets(), d.octets()).unwrap();
            ip.identification = 0;
            ip.dont_fragment = true;
            ip.dscp = etherparse::Ipv4Dscp::try_new(o.tos >> 2).unwrap();
            ip.ecn = etherparse::Ipv4Ecn::try_new(o.tos & 3).unwrap();
            ip.header_checksum = ip.calc_header_checksum();
            out.extend_from_slice(&ip.to_bytes());
            if let Tunnel::Gue { sport, dport, .. } = tunnel {
                let mut udp = UdpHeader::without_ipv4_checksum(sport, dport, inner.len()).unwrap();
                udp.checksum = 0;
                out.extend_from_slice(&udp.to_bytes());
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Header {
                traffic_class: o.tos,
                flow_label: Ipv6FlowLabel::try_new(o.flow_label).unwrap(),
                payload_length: payload_len,
                next_header: proto,
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
            };
            out.extend_from_slice(&ip.to_bytes());
            if let Tunnel::Gue {
                sport,
                dport,
                zero_check,
            } = tunnel
            {
                let mut udp = UdpHeader::with_ipv6_checksum(sport, dport, &ip, inner).unwrap();
                if zero_check {
                    udp.checksum = 0;
                }
                out.extend_from_slice(&udp.to_bytes());
            }
        }
        _ => panic!("mixed address families in an outer header"),
    }
    out.extend_from_slice(inner);
    out
}

/// The balancer's answer to a client packet too big to encapsulate: ICMP
/// "fragmentation needed" (IPv4) or ICMPv6 "packet too big" from `vip` to `client`
/// carrying `mtu`, quoting the first 548 (IPv4) or 1232 (IPv6) bytes of `request` (the
/// client's frame), Ethernet addresses swapped, TTL 64, IPv4 id 0 and no flags.
pub fn too_big_answer(request: &[u8], vip: IpAddr, client: IpAddr, mtu: u16) -> Vec<u8> {
    let eth = Ethernet2Header::from_slice(request).unwrap().0;
    let ip = &request[14..];
    let mut out = Ethernet2Header {
        source: eth.destination,
        destination: eth.source,
        ether_type: eth.ether_type,
    }
    .to_bytes()
    .to_vec();
    match (vip, client) {
        (IpAddr::V4(v), IpAddr::V4(c)) => {
            let quote = &ip[..548];
            let icmp = Icmpv4Header::with_checksum(
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: mtu,
                }),
                quote,
            );
            let mut h = Ipv4Header::new(
                (icmp.header_len() + quote.len()) as u16,
                64,
                IpNumber::ICMP,
                v.octets(),
                c.octets(),
            )
            .unwrap();
            h.identification = 0;
            h.dont_fragment = false;
            h.header_checksum = h.calc_header_checksum();
            out.extend_from_slice(&h.to_bytes());
            out.extend_from_slice(&icmp.to_bytes());
            out.extend_from_slice(quote);
        }
        (IpAddr::V6(v), IpAddr::V6(c)) => {
            let quote = &ip[..1232];
            let icmp = Icmpv6Header::with_checksum(
                Icmpv6Type::PacketTooBig { mtu: mtu as u32 },
                v.octets(),
                c.octets(),
                quote,
            )
            .unwrap();
            let h = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: (icmp.header_len() + quote.len()) as u16,
                next_header: IpNumber::IPV6_ICMP,
                hop_limit: 64,
                source: v.octets(),
                destination: c.octets(),
            };
            out.extend_from_slice(&h.to_bytes());
            out.extend_from_slice(&icmp.to_bytes());
            out.extend_from_slice(quote);
        }
        _ => panic!("mixed address families"),
    }
    out
}
