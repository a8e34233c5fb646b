//! L3 direct server return (`forwarding = "ipip"` / `"gue"`), packet by packet with
//! `BPF_PROG_TEST_RUN` in the lab namespace (see `stickylb_tests::lab`): every output is
//! compared byte for byte with the packet etherparse builds from scratch (outer IPv4
//! checksum, GUE UDP checksum over IPv6 computed over the whole datagram), for IPv4 and
//! IPv6, TCP and UDP, both tunnels, 4-in-6 and 6-in-4, both outer-source choices, ICMP
//! errors and later fragments, and the MTU edge: a packet that fits exactly once
//! encapsulated, one byte more answered with "fragmentation needed" / "packet too big".

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use etherparse::IpNumber;
use lb_common::hash::encap_hash;
use lb_model::spec::{EncapSpec, Forwarding, OuterSource, Prefix, Protocol, ServiceSpec};
use stickylb_tests::{
    lab::{backend_mac, Lab, XDP_DROP, XDP_REDIRECT, XDP_TX},
    packets::{encapsulated, too_big_answer, Icmp, Outer, Pkt, Raw, Tunnel, L4},
};

const VIP_PORT: u16 = 80;
const CLIENT_PORT: u16 = 40000;

#[derive(Clone, Copy, Debug)]
struct Case {
    l4: L4,
    /// The VIP's (and clients') family.
    v6: bool,
    /// The backends' family (the outer header's).
    outer_v6: bool,
    gue: bool,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for gue in [false, true] {
        for (v6, outer_v6) in [(false, false), (true, true), (false, true), (true, false)] {
            for l4 in [L4::Tcp, L4::Udp] {
                v.push(Case {
                    l4,
                    v6,
                    outer_v6,
                    gue,
                });
            }
        }
    }
    v
}

impl Case {
    fn vip(self) -> IpAddr {
        if self.v6 {
            "fd00:100::100".parse().unwrap()
        } else {
            "198.18.100.100".parse().unwrap()
        }
    }
    fn backend(self, n: u8) -> IpAddr {
        if self.outer_v6 {
            format!("fd00:1::{n}").parse().unwrap()
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, n))
        }
    }
    /// The lab's address on the backends' link: the FIB's source.
    fn balancer(self) -> IpAddr {
        if self.outer_v6 {
            "fd00:1::1".parse().unwrap()
        } else {
            "198.18.1.1".parse().unwrap()
        }
    }
    fn client(self, n: u16) -> IpAddr {
        if self.v6 {
            format!("2001:db8:c::{n:x}").parse().unwrap()
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, n as u8))
        }
    }
    fn forwarding(self) -> Forwarding {
        if self.gue {
            Forwarding::Gue
        } else {
            Forwarding::Ipip
        }
    }
    /// VIP:80 with backends 2, 3, 4 on port 80 (DSR: the VIP's port).
    fn service(self) -> ServiceSpec {
        let mut s = ServiceSpec::new("web", SocketAddr::new(self.vip(), VIP_PORT));
        s.protocol = match self.l4 {
            L4::Tcp => Protocol::Tcp,
            L4::Udp => Protocol::Udp,
        };
        s.forwarding = self.forwarding();
        for n in 2..=4 {
            s = s.backend(SocketAddr::new(self.backend(n), VIP_PORT));
        }
        s
    }
    fn request(self, client: u16) -> Pkt {
        Pkt::new(
            self.l4,
            self.client(client),
            CLIENT_PORT,
            self.vip(),
            VIP_PORT,
        )
    }
    /// Overhead of the outer headers.
    fn overhead(self) -> usize {
        (if self.outer_v6 { 40 } else { 20 }) + if self.gue { 8 } else { 0 }
    }
}

/// The flow hash the data path derives the GUE port, flow label and hashed source from.
fn flow_hash(client: IpAddr, sport: u16) -> u32 {
    encap_hash(&lb_common::addr_from_ip(client).0, sport.to_be())
}

fn tunnel(case: Case, client: IpAddr, sport: u16, dport: u16) -> Tunnel {
    if case.gue {
        Tunnel::Gue {
            sport: 0xC000 | (flow_hash(client, sport) as u16 & 0x3FFF),
            dport,
            zero_check: false,
        }
    } else {
        Tunnel::Ipip
    }
}

/// What the request `req` must look like on the wire to backend `n` with outer source
/// `src`.
fn expected(lab: &Lab, case: Case, req: &Pkt, n: u8, src: IpAddr, gue_port: u16) -> Vec<u8> {
    let inner = &req.bytes()[14..];
    let o = Outer {
        src_mac: lab.fx0_mac,
        dst_mac: backend_mac(n),
        src,
        dst: case.backend(n),
        tos: 0,
        flow_label: flow_hash(req.src, req.sport) & 0xf_ffff,
    };
    encapsulated(&o, tunnel(case, req.src, req.sport, gue_port), inner)
}

#[test]
fn requests_are_encapsulated_exactly() {
    for case in cases() {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[case.service()]).unwrap();
        for c in 1..=3u16 {
            let req = case.request(c);
            let (action, out) = lab.run(&req.bytes()).unwrap();
            assert_eq!(action, XDP_REDIRECT, "{case:?} client {c}");
            let want = expected(&lab, case, &req, c as u8 + 1, case.balancer(), 6080);
            assert_eq!(
                out, want,
                "{case:?} client {c}: encapsulated packet differs"
            );
            // The client stays: a second packet goes the same way (from the route cache).
            let mut again = req.clone();
            again.syn = false;
            let (action, out) = lab.run(&again.bytes()).unwrap();
            assert_eq!(action, XDP_REDIRECT, "{case:?}");
            assert_eq!(
                out,
                expected(&lab, case, &again, c as u8 + 1, case.balancer(), 6080),
                "{case:?} client {c}, second packet"
            );
        }
        let st = lab.service_stats("web").unwrap();
        assert_eq!((st.packets, st.new_clients), (6, 3), "{case:?}");
        assert_eq!((st.too_big_answered, st.drop_too_big), (0, 0), "{case:?}");
    }
}

#[test]
fn gue_port_is_the_services() {
    let case = Case {
        l4: L4::Udp,
        v6: true,
        outer_v6: true,
        gue: true,
    };
    let mut lab = Lab::new().unwrap();
    let mut svc = case.service();
    svc.encap.gue_port = 7777;
    lab.configure(&[svc]).unwrap();
    let req = case.request(1);
    let (action, out) = lab.run(&req.bytes()).unwrap();
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected(&lab, case, &req, 2, case.balancer(), 7777));
}

#[test]
fn client_hash_source_comes_from_the_prefix() {
    for case in cases() {
        let mut lab = Lab::new().unwrap();
        let mut svc = case.service();
        svc.encap = EncapSpec {
            gue_port: 6080,
            source: OuterSource::ClientHash {
                v4: Some("172.16.0.0/16".parse::<Prefix>().unwrap()),
                v6: Some("fd00:5::/64".parse::<Prefix>().unwrap()),
            },
        };
        lab.configure(&[svc]).unwrap();
        for c in 1..=3u16 {
            let req = case.request(c);
            let h = flow_hash(req.src, req.sport);
            let src = if case.outer_v6 {
                let mut o = "fd00:5::".parse::<std::net::Ipv6Addr>().unwrap().octets();
                // The hash fills the host half (words 2 and 3) in packet byte order.
                o[8..12].copy_from_slice(&h.to_ne_bytes());
                o[12..16].copy_from_slice(&h.to_ne_bytes());
                IpAddr::from(o)
            } else {
                let b = h.to_ne_bytes();
                IpAddr::V4(Ipv4Addr::new(172, 16, b[2], b[3]))
            };
            let (action, out) = lab.run(&req.bytes()).unwrap();
            assert_eq!(action, XDP_REDIRECT, "{case:?}");
            assert_eq!(
                out,
                expected(&lab, case, &req, c as u8 + 1, src, 6080),
                "{case:?} client {c}: hashed source"
            );
        }
    }
    // A prefix of the other family only: this family takes the FIB's source.
    let case = cases()[0];
    let mut lab = Lab::new().unwrap();
    let mut svc = case.service();
    svc.encap.source = OuterSource::ClientHash {
        v4: None,
        v6: Some("fd00:5::/64".parse().unwrap()),
    };
    lab.configure(&[svc]).unwrap();
    let req = case.request(1);
    let (_, out) = lab.run(&req.bytes()).unwrap();
    assert_eq!(out, expected(&lab, case, &req, 2, case.balancer(), 6080));
}

#[test]
fn vlan_tag_is_kept_outside_the_outer_header() {
    for case in cases().into_iter().filter(|c| c.l4 == L4::Tcp) {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[case.service()]).unwrap();
        let mut req = case.request(1);
        req.vlan = Some(42);
        let (action, out) = lab.run(&req.bytes()).unwrap();
        assert_eq!(
            action, XDP_TX,
            "{case:?}: a tagged frame goes back on its link"
        );
        let mut plain = req.clone();
        plain.vlan = None;
        let want = expected(&lab, case, &plain, 2, case.balancer(), 6080);
        // Tag (TPID 0x8100, TCI 42) between the MACs and the outer ethertype.
        let mut tagged = want[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 42]);
        tagged.extend_from_slice(&want[12..]);
        assert_eq!(out, tagged, "{case:?}");
    }
}

/// Pads a request so that its IP packet is `ip_len` bytes long.
fn sized(case: Case, client: u16, ip_len: usize) -> Pkt {
    let mut req = case.request(client);
    let hdr = (if case.v6 { 40 } else { 20 }) + if case.l4 == L4::Tcp { 20 } else { 8 };
    req.payload = vec![0x5a; ip_len - hdr];
    req
}

#[test]
fn mtu_edge_fits_exactly_or_is_answered_with_the_mtu_minus_the_overhead() {
    for case in cases() {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[case.service()]).unwrap();
        // fx0 (to the backends) has the default MTU of 1500.
        let fits = 1500 - case.overhead();
        let req = sized(case, 1, fits);
        let (action, out) = lab.run(&req.bytes()).unwrap();
        assert_eq!(
            action, XDP_REDIRECT,
            "{case:?}: {fits} bytes fit once encapsulated"
        );
        assert_eq!(
            out,
            expected(&lab, case, &req, 2, case.balancer(), 6080),
            "{case:?}"
        );
        assert_eq!(out.len(), 14 + 1500, "{case:?}");
        // One byte more: the client is told the MTU it must use.
        let big = sized(case, 1, fits + 1);
        let (action, out) = lab.run(&big.bytes()).unwrap();
        let mtu = fits as u16;
        let v6_answerable = !case.v6 || mtu >= 1280;
        if v6_answerable {
            assert_eq!(action, XDP_TX, "{case:?}: too big by one byte");
            assert_eq!(
                out,
                too_big_answer(&big.bytes(), case.vip(), case.client(1), mtu),
                "{case:?}: the ICMP answer differs"
            );
        }
        let st = lab.service_stats("web").unwrap();
        assert_eq!(st.too_big_answered, 1, "{case:?}");
        assert_eq!(
            st.packets, 1,
            "{case:?}: the answered packet is not counted as sent"
        );
    }
}

#[test]
fn ipv4_without_df_over_the_mtu_is_dropped_and_counted() {
    for case in cases().into_iter().filter(|c| !c.v6) {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[case.service()]).unwrap();
        let mut big = sized(case, 1, 1500 - case.overhead() + 1);
        big.df = false;
        let (action, _) = lab.run(&big.bytes()).unwrap();
        assert_eq!(action, XDP_DROP, "{case:?}");
        let st = lab.service_stats("web").unwrap();
        assert_eq!((st.drop_too_big, st.too_big_answered), (1, 0), "{case:?}");
    }
}

#[test]
fn a_lower_route_mtu_is_the_one_answered() {
    // The FIB's MTU check follows a locked route MTU (or a learnt path MTU), not only the
    // link's: how an operator tells the balancer about a narrower hop further on.
    let case = Case {
        l4: L4::Tcp,
        v6: false,
        outer_v6: false,
        gue: true,
    };
    let mut lab = Lab::new().unwrap();
    lab.ns
        .ip_batch(&["route replace 198.18.1.0/24 dev fx0 mtu lock 1400".to_string()])
        .unwrap();
    lab.configure(&[case.service()]).unwrap();
    let ok = sized(case, 1, 1400 - 28);
    assert_eq!(lab.run(&ok.bytes()).unwrap().0, XDP_REDIRECT);
    let big = sized(case, 1, 1400 - 28 + 1);
    let (action, out) = lab.run(&big.bytes()).unwrap();
    assert_eq!(action, XDP_TX);
    assert_eq!(
        out,
        too_big_answer(&big.bytes(), case.vip(), case.client(1), 1372)
    );
}

#[test]
fn gue_over_ipv6_zero_checksum_only_where_no_inner_checksum_covers_it() {
    // 4-in-6 GUE: UDP/IPv4 without a checksum and IPv4 fragments get UDP checksum 0
    // (RFC 6936); everything else the full checksum (previous tests).
    let case = Case {
        l4: L4::Udp,
        v6: false,
        outer_v6: true,
        gue: true,
    };
    let mut lab = Lab::new().unwrap();
    lab.configure(&[case.service()]).unwrap();
    let mut req = case.request(1);
    req.udp_no_checksum = true;
    let (action, out) = lab.run(&req.bytes()).unwrap();
    assert_eq!(action, XDP_REDIRECT);
    let o = Outer {
        src_mac: lab.fx0_mac,
        dst_mac: backend_mac(2),
        src: case.balancer(),
        dst: case.backend(2),
        tos: 0,
        flow_label: flow_hash(req.src, req.sport) & 0xf_ffff,
    };
    let Tunnel::Gue { sport, dport, .. } = tunnel(case, req.src, req.sport, 6080) else {
        unreachable!()
    };
    let t = Tunnel::Gue {
        sport,
        dport,
        zero_check: true,
    };
    assert_eq!(out, encapsulated(&o, t, &req.bytes()[14..]));
    // A later fragment of the same client: no ports, hash over port 0.
    let mut frag = Raw::new(case.client(1), case.vip(), IpNumber::UDP, vec![7; 64]);
    frag.fragment_offset = 10;
    let (action, out) = lab.run(&frag.bytes()).unwrap();
    assert_eq!(action, XDP_REDIRECT, "later fragment");
    let o = Outer {
        flow_label: flow_hash(frag.src, 0) & 0xf_ffff,
        ..o
    };
    let t = Tunnel::Gue {
        sport: 0xC000 | (flow_hash(frag.src, 0) as u16 & 0x3FFF),
        dport,
        zero_check: true,
    };
    assert_eq!(
        out,
        encapsulated(&o, t, &frag.bytes()[14..]),
        "later fragment"
    );
    assert_eq!(lab.service_stats("web").unwrap().frag_forwarded, 1);
}

#[test]
fn icmp_errors_about_a_client_are_encapsulated_to_its_backend() {
    for case in cases().into_iter().filter(|c| c.l4 == L4::Tcp) {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[case.service()]).unwrap();
        for c in 1..=2 {
            assert_eq!(lab.run(&case.request(c).bytes()).unwrap().0, XDP_REDIRECT);
        }
        // A router on the clients' side reports the backend's reply VIP → client 2 as
        // too big.
        let mut reply = Pkt::new(case.l4, case.vip(), VIP_PORT, case.client(2), CLIENT_PORT);
        reply.syn = false;
        let (router, kind) = if case.v6 {
            ("2001:db8:c::fe0".parse().unwrap(), Icmp::PacketTooBig(1400))
        } else {
            (
                "198.51.100.254".parse().unwrap(),
                Icmp::FragmentationNeeded(1400),
            )
        };
        let err = Raw::icmp(router, case.vip(), kind, &reply.bytes()[14..]);
        let (action, out) = lab.run(&err.bytes()).unwrap();
        assert_eq!(action, XDP_REDIRECT, "{case:?}");
        let o = Outer {
            src_mac: lab.fx0_mac,
            dst_mac: backend_mac(3),
            src: case.balancer(),
            dst: case.backend(3),
            tos: 0,
            // ICMP carries no ports: the hash is over the router's address and port 0.
            flow_label: flow_hash(router, 0) & 0xf_ffff,
        };
        let want = encapsulated(&o, tunnel(case, router, 0, 6080), &err.bytes()[14..]);
        assert_eq!(out, want, "{case:?}: encapsulated ICMP error differs");
        assert_eq!(lab.service_stats("web").unwrap().icmp_to_backend, 1);
    }
}

#[test]
fn mixed_families_are_refused_outside_the_encapsulating_modes() {
    let case = Case {
        l4: L4::Tcp,
        v6: false,
        outer_v6: true,
        gue: false,
    };
    let mut svc = case.service();
    svc.forwarding = Forwarding::Dsr;
    let mut lab = Lab::new().unwrap();
    let err = lab.configure(&[svc]).unwrap_err().to_string();
    assert!(err.contains("address family"), "{err}");
}
