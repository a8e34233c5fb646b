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
                ip.dont_fragment = !self.more_fragments;
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
