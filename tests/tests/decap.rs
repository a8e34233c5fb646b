//! The backends' decapsulation program (`stickylb decap`, object `lb-decap`), frame by
//! frame with `BPF_PROG_TEST_RUN`: every tunnel the balancer builds (IPIP, IP6IP6, 4-in-6,
//! 6-in-4, GUE over IPv4 and IPv6, with a VLAN tag) comes out as the client's packet,
//! byte for byte; traffic that is no tunnel is untouched; tunnel packets it does not take
//! apart (strict mode, outer options or fragments, GUE variant 0) pass untouched; lying,
//! truncated and nested ones pass untouched or are dropped, never delivered changed.

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{IpNumber, Ipv4Header};
use lb_agent::decap;
use lb_common::{DecapConfig, DecapStats, DECAP_STRICT};
use stickylb_tests::{
    lab::{XDP_DROP, XDP_PASS},
    packets::{encapsulated, Outer, Pkt, Raw, Tunnel, L4},
};

const GUE_PORT: u16 = 6080;

struct Decap {
    ebpf: aya::Ebpf,
}

impl Decap {
    fn new(strict: &[IpAddr]) -> Decap {
        let cfg = DecapConfig {
            flags: if strict.is_empty() { 0 } else { DECAP_STRICT },
            gue_port: GUE_PORT.to_be(),
            _pad: 0,
        };
        let mut ebpf = decap::load(&cfg, strict, None).expect("load lb-decap");
        decap::xdp_program(&mut ebpf).expect("verify stickylb_decap");
        Decap { ebpf }
    }
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog = decap::xdp_program(&mut self.ebpf).unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }
    fn stats(&self) -> DecapStats {
        decap::stats(&self.ebpf).unwrap()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The client's request as the backend must see it: the balancer's frame minus the
/// outer headers, the Ethernet addresses of the outer frame.
fn client_packet(v6: bool, l4: L4) -> Pkt {
    let (src, dst) = if v6 {
        (ip("2001:db8:c::1"), ip("fd00:100::100"))
    } else {
        (ip("198.51.100.1"), ip("198.18.100.100"))
    };
    let mut p = Pkt::new(l4, src, 40000, dst, 80);
    p.src_mac = [0x02, 0, 0, 0, 0, 0x11];
    p.dst_mac = [0x02, 0, 0, 0, 0, 0x22];
    p
}

fn outer(v6: bool) -> Outer {
    let (src, dst) = if v6 {
        (ip("fd00:1::1"), ip("fd00:1::2"))
    } else {
        (ip("198.18.1.1"), ip("198.18.1.2"))
    };
    Outer {
        src_mac: [0x02, 0, 0, 0, 0, 0x11],
        dst_mac: [0x02, 0, 0, 0, 0, 0x22],
        src,
        dst,
        tos: 0,
        flow_label: 0x12345,
    }
}

fn gue() -> Tunnel {
    Tunnel::Gue {
        sport: 0xC123,
        dport: GUE_PORT,
        zero_check: false,
    }
}

/// Every tunnel the balancer builds, with the packet it carries.
fn tunnels() -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let mut v = Vec::new();
    for tunnel in [Tunnel::Ipip, gue()] {
        for outer_v6 in [false, true] {
            for inner_v6 in [false, true] {
                for l4 in [L4::Tcp, L4::Udp] {
                    let inner = client_packet(inner_v6, l4).bytes();
                    let frame = encapsulated(&outer(outer_v6), tunnel, &inner[14..]);
                    v.push((
                        format!("{tunnel:?} outer v6 {outer_v6} inner v6 {inner_v6} {l4:?}"),
                        frame,
                        inner,
                    ));
                }
            }
        }
    }
    v
}

#[test]
fn every_tunnel_comes_out_as_the_clients_packet() {
    let mut d = Decap::new(&[]);
    let all = tunnels();
    for (what, frame, inner) in &all {
        assert_eq!(d.run(frame), (XDP_PASS, inner.clone()), "{what}");
    }
    let s = d.stats();
    assert_eq!(
        (s.decapsulated, s.passed, s.dropped),
        (all.len() as u64, 0, 0)
    );
}

#[test]
fn vlan_tag_stays() {
    let mut d = Decap::new(&[]);
    for (what, frame, inner) in tunnels() {
        let tag = [0x81, 0x00, 0x00, 0x07];
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&tag);
        tagged.extend_from_slice(&frame[12..]);
        let mut want = inner[..12].to_vec();
        want.extend_from_slice(&tag);
        want.extend_from_slice(&inner[12..]);
        assert_eq!(d.run(&tagged), (XDP_PASS, want), "{what} tagged");
    }
}

#[test]
fn traffic_that_is_no_tunnel_is_untouched_and_not_counted() {
    let mut d = Decap::new(&[]);
    let mut frames = Vec::new();
    for v6 in [false, true] {
        for l4 in [L4::Tcp, L4::Udp] {
            frames.push(client_packet(v6, l4).bytes());
        }
        // UDP to another port, and to the GUE port as a source port only.
        let mut other = client_packet(v6, L4::Udp);
        other.dport = 6081;
        frames.push(other.bytes());
        let mut rev = client_packet(v6, L4::Udp);
        rev.sport = GUE_PORT;
        frames.push(rev.bytes());
    }
    frames.push(
        Raw::new(
            ip("198.51.100.1"),
            ip("198.18.1.2"),
            IpNumber::ICMP,
            vec![8, 0, 0, 0, 0, 0, 0, 0],
        )
        .bytes(),
    );
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    frames.push(arp);
    for f in &frames {
        assert_eq!(d.run(f), (XDP_PASS, f.clone()));
    }
    // A GUE port of 0 turns GUE off: GUE frames are plain UDP then.
    let mut off = Decap {
        ebpf: decap::load(&DecapConfig::default(), &[], None).unwrap(),
    };
    let (_, gue_frame, _) = tunnels().into_iter().find(|t| t.0.contains("Gue")).unwrap();
    assert_eq!(off.run(&gue_frame), (XDP_PASS, gue_frame.clone()));
    let s = d.stats();
    assert_eq!((s.decapsulated, s.passed, s.dropped), (0, 0, 0));
}

#[test]
fn strict_mode_takes_only_this_hosts_addresses() {
    let mut d = Decap::new(&[ip("198.18.1.2"), ip("fd00:1::2")]);
    for (what, frame, inner) in tunnels() {
        assert_eq!(d.run(&frame), (XDP_PASS, inner), "{what}: addressed to us");
    }
    let mut other = Decap::new(&[ip("198.18.1.9"), ip("fd00:1::9")]);
    for (what, frame, _) in tunnels() {
        assert_eq!(
            other.run(&frame),
            (XDP_PASS, frame.clone()),
            "{what}: not ours"
        );
    }
    let n = tunnels().len() as u64;
    assert_eq!(other.stats().passed, n);
    assert_eq!(other.stats().decapsulated, 0);
}

#[test]
fn truncated_frames_pass_untouched_or_drop() {
    let mut d = Decap::new(&[]);
    for (what, frame, _) in tunnels() {
        // BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet header.
        for len in 14..frame.len() {
            let cut = &frame[..len];
            let (action, out) = d.run(cut);
            assert!(
                action == XDP_DROP || (action == XDP_PASS && out == cut),
                "{what} cut to {len}: action {action}, output changed"
            );
        }
    }
}

/// Rewrites the outer IPv4 header of `frame` with `f` and fixes its checksum.
fn patch_v4(frame: &[u8], f: impl Fn(&mut Ipv4Header)) -> Vec<u8> {
    let (mut h, _) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    f(&mut h);
    h.header_checksum = h.calc_header_checksum();
    let mut out = frame[..14].to_vec();
    out.extend_from_slice(&h.to_bytes());
    out.extend_from_slice(&frame[34..]);
    out
}

#[test]
fn lying_lengths_and_nested_tunnels_are_dropped() {
    let mut d = Decap::new(&[]);
    let inner4 = client_packet(false, L4::Tcp).bytes();
    let inner6 = client_packet(true, L4::Tcp).bytes();
    let ipip = encapsulated(&outer(false), Tunnel::Ipip, &inner4[14..]);
    let gue4 = encapsulated(&outer(false), gue(), &inner4[14..]);
    let gue6 = encapsulated(&outer(true), gue(), &inner6[14..]);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Outer length beyond the frame.
    cases.push(("outer length +1", patch_v4(&ipip, |h| h.total_len += 1)));
    // Outer length shorter than what it carries: the inner packet would not fit.
    cases.push(("outer length -1", patch_v4(&ipip, |h| h.total_len -= 1)));
    // IPv6 payload length beyond the frame.
    let mut g6 = gue6.clone();
    let pl = u16::from_be_bytes([g6[18], g6[19]]) + 1;
    g6[18..20].copy_from_slice(&pl.to_be_bytes());
    cases.push(("ipv6 payload length +1", g6));
    // UDP length disagreeing with the IP length.
    let mut g = gue4.clone();
    let ul = u16::from_be_bytes([g[38], g[39]]) - 1;
    g[38..40].copy_from_slice(&ul.to_be_bytes());
    cases.push(("udp length -1", g));
    // The inner header claims more than the outer payload holds.
    let mut g = ipip.clone();
    let il = u16::from_be_bytes([g[36], g[37]]) + 4;
    g[36..38].copy_from_slice(&il.to_be_bytes());
    cases.push(("inner length +4", g));
    // Protocol 4 says IPv4 inside, an IPv6 packet is there.
    let v6_in_proto4 = patch_v4(
        &encapsulated(&outer(false), Tunnel::Ipip, &inner6[14..]),
        |h| h.protocol = IpNumber::IPV4,
    );
    cases.push(("proto 4 with IPv6 inside", v6_in_proto4));
    // GUE variant 1 whose payload is neither IPv4 nor IPv6 (version 5).
    let mut g = gue4.clone();
    g[42] = 0x55;
    cases.push(("gue version 5", g));
    // Nested: IPIP in IPIP, GUE in GUE, IPIP in GUE.
    let nested_ipip = encapsulated(&outer(false), Tunnel::Ipip, &ipip[14..]);
    cases.push(("ipip in ipip", nested_ipip));
    cases.push(("gue in gue", encapsulated(&outer(true), gue(), &gue4[14..])));
    cases.push((
        "ipip in gue",
        encapsulated(&outer(false), gue(), &ipip[14..]),
    ));
    for (what, frame) in &cases {
        assert_eq!(d.run(frame).0, XDP_DROP, "{what}");
    }
    assert_eq!(d.stats().dropped, cases.len() as u64);
    assert_eq!(d.stats().decapsulated, 0);
}

#[test]
fn tunnels_left_to_the_kernel_pass_untouched() {
    let mut d = Decap::new(&[]);
    let inner4 = client_packet(false, L4::Tcp).bytes();
    let ipip = encapsulated(&outer(false), Tunnel::Ipip, &inner4[14..]);
    let gue4 = encapsulated(&outer(false), gue(), &inner4[14..]);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // A fragment of an outer packet: the kernel reassembles (it is no longer whole).
    cases.push((
        "outer fragment",
        patch_v4(&ipip, |h| {
            h.dont_fragment = false;
            h.more_fragments = true;
        }),
    ));
    // Outer IPv4 options.
    let opt = patch_v4(&ipip, |h| {
        h.options = [1u8, 1, 1, 0][..].try_into().unwrap();
        h.total_len += 4;
    });
    cases.push(("outer options", opt));
    // GUE variant 0 (a GUE header, first bits 00): the kernel's fou.
    let mut g = gue4.clone();
    g[42] = 0x00;
    cases.push(("gue variant 0", g));
    for (what, frame) in &cases {
        assert_eq!(d.run(frame), (XDP_PASS, frame.clone()), "{what}");
    }
    assert_eq!(d.stats().passed, cases.len() as u64);
    assert_eq!(d.stats().decapsulated, 0);
}
