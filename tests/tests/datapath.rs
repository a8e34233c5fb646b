//! The XDP data path, packet by packet, with `BPF_PROG_TEST_RUN`: one fixture per branch,
//! for IPv4 and IPv6, TCP and UDP. Expected outputs are built from scratch with etherparse
//! (checksums included) and compared byte for byte.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use lb_userspace::spec::{BackendState, Forwarding, Protocol, Scheduler, ServiceSpec};
use stickylb_tests::{
    lab::{backend_mac, Lab, CLIENT_GW_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    packets::{Pkt, L4},
};

#[derive(Clone, Copy, Debug)]
struct Flow {
    l4: L4,
    v6: bool,
}

const FLOWS: [Flow; 4] = [
    Flow {
        l4: L4::Tcp,
        v6: false,
    },
    Flow {
        l4: L4::Udp,
        v6: false,
    },
    Flow {
        l4: L4::Tcp,
        v6: true,
    },
    Flow {
        l4: L4::Udp,
        v6: true,
    },
];

const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 40000;

impl Flow {
    fn vip(self) -> IpAddr {
        if self.v6 {
            "fd00:100::100".parse().unwrap()
        } else {
            "198.18.100.100".parse().unwrap()
        }
    }
    /// Backend `n` (2..=5 on-link, as in the lab FIB).
    fn backend(self, n: u8) -> IpAddr {
        if self.v6 {
            format!("fd00:1::{n}").parse().unwrap()
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, n))
        }
    }
    fn unreachable_backend(self) -> IpAddr {
        if self.v6 {
            "fd00:9::2".parse().unwrap()
        } else {
            "198.18.9.2".parse().unwrap()
        }
    }
    fn client(self, n: u16) -> IpAddr {
        if self.v6 {
            format!("2001:db8:c::{n:x}").parse().unwrap()
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, n as u8))
        }
    }
    fn protocol(self) -> Protocol {
        match self.l4 {
            L4::Tcp => Protocol::Tcp,
            L4::Udp => Protocol::Udp,
        }
    }
    /// A service on VIP:80 with backends 2, 3, 4 on port 8080.
    fn service(self) -> ServiceSpec {
        let mut s = ServiceSpec::new("web", SocketAddr::new(self.vip(), VIP_PORT));
        s.protocol = self.protocol();
        for n in 2..=4 {
            s = s.backend(SocketAddr::new(self.backend(n), BACKEND_PORT));
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
}

fn backend_addr(flow: Flow, n: u8) -> SocketAddr {
    SocketAddr::new(flow.backend(n), BACKEND_PORT)
}

/// The last byte of the backend address the packet was sent to (2..=5).
fn dst_host(out: &[u8], input: &Pkt) -> u8 {
    let l3 = 14 + if input.vlan.is_some() { 4 } else { 0 };
    if input.src.is_ipv4() {
        out[l3 + 19]
    } else {
        out[l3 + 39]
    }
}

/// What a NAT'd request to backend `n` must look like on the wire.
fn expected_nat(lab: &Lab, flow: Flow, input: &Pkt, n: u8) -> Vec<u8> {
    let mut e = input.clone();
    e.dst = flow.backend(n);
    e.dport = BACKEND_PORT;
    e.ttl -= 1;
    e.dst_mac = backend_mac(n);
    e.src_mac = lab.fx0_mac;
    e.bytes()
}

fn send(lab: &mut Lab, pkt: &Pkt) -> (u32, Vec<u8>) {
    lab.run(&pkt.bytes()).expect("test run")
}

/// Sends a request from `client` and returns the backend host it went to.
fn backend_for(lab: &mut Lab, flow: Flow, client: u16) -> u8 {
    let req = flow.request(client);
    let (action, out) = send(lab, &req);
    assert_eq!(action, XDP_REDIRECT, "{flow:?} client {client}");
    dst_host(&out, &req)
}

fn with_state(mut s: ServiceSpec, n: usize, state: BackendState) -> ServiceSpec {
    s.backends[n].state = state;
    s
}

#[test]
fn new_client_is_picked_and_nat_output_is_exact() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        let req = flow.request(1);
        let (action, out) = send(&mut lab, &req);
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        assert_eq!(
            out,
            expected_nat(&lab, flow, &req, 2),
            "{flow:?}: NAT output differs"
        );
        let st = lab.service_stats("web").unwrap();
        assert_eq!(
            (st.new_clients, st.packets, st.bytes),
            (1, 1, req.bytes().len() as u64),
            "{flow:?}"
        );
        let bst = lab.backend_stats("web", backend_addr(flow, 2)).unwrap();
        assert_eq!((bst.new_clients, bst.packets), (1, 1), "{flow:?}");
        let entry = lab
            .stick_entry("web", flow.client(1))
            .expect("stick entry written");
        assert_eq!(lab.backend_addr(entry.backend_id), Some(flow.backend(2)));
    }
}

#[test]
fn clients_stay_on_their_backend_and_new_ones_go_round_robin() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        let first: Vec<u8> = (1..=7).map(|c| backend_for(&mut lab, flow, c)).collect();
        assert_eq!(
            first,
            vec![2, 3, 4, 2, 3, 4, 2],
            "{flow:?}: round-robin order"
        );
        for _ in 0..3 {
            let again: Vec<u8> = (1..=7).map(|c| backend_for(&mut lab, flow, c)).collect();
            assert_eq!(again, first, "{flow:?}: a client moved");
        }
        let st = lab.service_stats("web").unwrap();
        assert_eq!((st.new_clients, st.packets), (7, 28), "{flow:?}");
        assert_eq!(st.repick_expired + st.repick_down, 0);
    }
}

#[test]
fn weighted_round_robin_follows_weights() {
    let flow = FLOWS[0];
    let mut lab = Lab::new().unwrap();
    let mut svc = flow.service();
    svc.backends[0].weight = 3;
    svc.backends[2].weight = 0; // no new clients
    lab.configure(&[svc]).unwrap();
    let picks: Vec<u8> = (1..=8).map(|c| backend_for(&mut lab, flow, c)).collect();
    assert_eq!(
        picks.iter().filter(|&&b| b == 2).count(),
        6,
        "weight 3 vs 1: {picks:?}"
    );
    assert_eq!(picks.iter().filter(|&&b| b == 3).count(), 2, "{picks:?}");
    assert!(!picks.contains(&4), "weight 0 got a new client: {picks:?}");
}

#[test]
fn expired_entry_is_repicked_and_active_entry_refreshed() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = flow.service();
        svc.expire = Some(Duration::from_secs(10));
        lab.configure(&[svc]).unwrap();
        assert_eq!(backend_for(&mut lab, flow, 1), 2);
        // Idle 2 s (< expiry, ≥ refresh interval of 1 s): stays, last_seen rewritten.
        lab.age_entry("web", flow.client(1), 2_000_000_000).unwrap();
        let before = lab.stick_entry("web", flow.client(1)).unwrap().last_seen_ns;
        assert_eq!(backend_for(&mut lab, flow, 1), 2, "{flow:?}");
        let after = lab.stick_entry("web", flow.client(1)).unwrap().last_seen_ns;
        assert!(
            after > before + 1_000_000_000,
            "{flow:?}: last_seen not refreshed"
        );
        // A hit right after does not rewrite last_seen.
        assert_eq!(backend_for(&mut lab, flow, 1), 2);
        assert_eq!(
            lab.stick_entry("web", flow.client(1)).unwrap().last_seen_ns,
            after,
            "{flow:?}: written on every packet"
        );
        // Idle 11 s: expired, fresh pick (round-robin moves on to backend 3).
        lab.age_entry("web", flow.client(1), 11_000_000_000)
            .unwrap();
        assert_eq!(backend_for(&mut lab, flow, 1), 3, "{flow:?}");
        let st = lab.service_stats("web").unwrap();
        assert_eq!((st.new_clients, st.repick_expired), (1, 1), "{flow:?}");
        assert_eq!(
            backend_for(&mut lab, flow, 1),
            3,
            "{flow:?}: the new entry sticks"
        );
    }
}

#[test]
fn down_backend_clients_are_repicked_and_nobody_flaps_back() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        assert_eq!(
            (1..=3)
                .map(|c| backend_for(&mut lab, flow, c))
                .collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        lab.configure(&[with_state(flow.service(), 0, BackendState::Down)])
            .unwrap();
        let moved = backend_for(&mut lab, flow, 1);
        assert_ne!(moved, 2, "{flow:?}: client stayed on a down backend");
        assert_eq!(
            backend_for(&mut lab, flow, 2),
            3,
            "{flow:?}: collateral move"
        );
        assert_eq!(
            backend_for(&mut lab, flow, 3),
            4,
            "{flow:?}: collateral move"
        );
        assert_eq!(lab.service_stats("web").unwrap().repick_down, 1);
        // Backend 2 comes back: client 1 stays where it was re-picked to.
        lab.configure(&[flow.service()]).unwrap();
        assert_eq!(
            backend_for(&mut lab, flow, 1),
            moved,
            "{flow:?}: flapped back"
        );
        // And backend 2 gets new clients again.
        let new: Vec<u8> = (10..=15).map(|c| backend_for(&mut lab, flow, c)).collect();
        assert!(
            new.contains(&2),
            "{flow:?}: recovered backend gets no new clients: {new:?}"
        );
    }
}

#[test]
fn removed_backend_clients_are_repicked() {
    let flow = FLOWS[2];
    let mut lab = Lab::new().unwrap();
    lab.configure(&[flow.service()]).unwrap();
    assert_eq!(backend_for(&mut lab, flow, 1), 2);
    assert_eq!(backend_for(&mut lab, flow, 2), 3);
    let mut svc = flow.service();
    svc.backends.remove(0);
    lab.configure(&[svc]).unwrap();
    assert_ne!(backend_for(&mut lab, flow, 1), 2);
    assert_eq!(backend_for(&mut lab, flow, 2), 3);
    assert_eq!(lab.service_stats("web").unwrap().repick_down, 1);
}

#[test]
fn drained_backend_keeps_its_clients_and_takes_no_new_ones() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        assert_eq!(backend_for(&mut lab, flow, 1), 2);
        lab.configure(&[with_state(flow.service(), 0, BackendState::Drain)])
            .unwrap();
        assert_eq!(
            backend_for(&mut lab, flow, 1),
            2,
            "{flow:?}: drained backend lost its client"
        );
        let new: Vec<u8> = (2..=9).map(|c| backend_for(&mut lab, flow, c)).collect();
        assert!(
            !new.contains(&2),
            "{flow:?}: drained backend got a new client: {new:?}"
        );
    }
}

#[test]
fn no_eligible_backend_drops_and_counts() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = flow.service();
        for b in &mut svc.backends {
            b.state = BackendState::Down;
        }
        lab.configure(&[svc]).unwrap();
        let (action, _) = send(&mut lab, &flow.request(1));
        assert_eq!(action, XDP_DROP, "{flow:?}");
        assert_eq!(lab.service_stats("web").unwrap().drop_no_backend, 1);
        assert!(lab.stick_entry("web", flow.client(1)).is_none());
        let mut empty = flow.service();
        empty.backends.clear();
        lab.configure(&[empty]).unwrap();
        assert_eq!(
            send(&mut lab, &flow.request(1)).0,
            XDP_DROP,
            "{flow:?}: empty service"
        );
    }
}

#[test]
fn maglev_picks_follow_the_table_and_are_stable() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = flow.service();
        svc.scheduler = Scheduler::Maglev;
        let plan = lab.configure(&[svc]).unwrap();
        let ring = &plan.services[0].ring;
        let mut seen = std::collections::BTreeSet::new();
        for c in 1..=60u16 {
            let (addr, _) = lb_common::addr_from_ip(flow.client(c));
            let want_id = ring[(lb_common::hash::client_hash(&addr) % ring.len() as u32) as usize];
            let want = match lab.backend_addr(want_id).unwrap() {
                IpAddr::V4(a) => a.octets()[3],
                IpAddr::V6(a) => a.octets()[15],
            };
            let got = backend_for(&mut lab, flow, c);
            assert_eq!(got, want, "{flow:?}: client {c} not on its Maglev backend");
            seen.insert(got);
        }
        assert_eq!(
            seen.len(),
            3,
            "{flow:?}: 60 clients did not reach all backends"
        );
        // Forgetting every entry changes nothing: the pick is a function of the client.
        let keys: Vec<_> = lab.dp.stick_entries().into_iter().map(|(k, _)| k).collect();
        for k in keys {
            lab.dp.stick.remove(&k).unwrap();
        }
        let again: Vec<u8> = (1..=60).map(|c| backend_for(&mut lab, flow, c)).collect();
        let first: Vec<u8> = (1..=60).map(|c| backend_for(&mut lab, flow, c)).collect();
        assert_eq!(again, first);
    }
}

#[test]
fn nat_reply_is_rewritten_to_the_vip_exactly() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        let mut reply = Pkt::new(
            flow.l4,
            flow.backend(3),
            BACKEND_PORT,
            flow.client(7),
            CLIENT_PORT,
        );
        reply.syn = false;
        let (action, out) = send(&mut lab, &reply);
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        let mut want = reply.clone();
        want.src = flow.vip();
        want.sport = VIP_PORT;
        want.ttl -= 1;
        want.dst_mac = CLIENT_GW_MAC;
        want.src_mac = lab.fx1_mac;
        assert_eq!(out, want.bytes(), "{flow:?}: reply output differs");
        let st = lab.service_stats("web").unwrap();
        assert_eq!(st.reply_packets, 1);
        // A packet from the backend port to the balancer itself (a health check's answer)
        // is not a reply to a client: untouched, to the kernel.
        let mut local = reply.clone();
        local.dst = if flow.v6 {
            "fd00:1::1".parse().unwrap()
        } else {
            "198.18.1.1".parse().unwrap()
        };
        assert_eq!(
            send(&mut lab, &local),
            (XDP_PASS, local.bytes()),
            "{flow:?}: reply path hijacked local traffic"
        );
        // A packet from the backend's other ports is not a reply of this service.
        let mut other = reply.clone();
        other.sport = 22;
        assert_eq!(
            send(&mut lab, &other),
            (XDP_PASS, other.bytes()),
            "{flow:?}"
        );
    }
}

#[test]
fn dsr_rewrites_only_the_destination_mac() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = flow.service();
        svc.forwarding = Forwarding::Dsr;
        lab.configure(&[svc]).unwrap();
        for c in 1..=3 {
            let req = flow.request(c);
            let (action, out) = send(&mut lab, &req);
            assert_eq!(action, XDP_REDIRECT, "{flow:?}");
            let mut want = req.clone();
            want.dst_mac = backend_mac(c as u8 + 1);
            want.src_mac = lab.fx0_mac;
            assert_eq!(
                out,
                want.bytes(),
                "{flow:?}: DSR changed more than the MACs"
            );
        }
        // DSR services have no reply path: backend traffic passes untouched.
        let reply = Pkt::new(flow.l4, flow.vip(), VIP_PORT, flow.client(1), CLIENT_PORT);
        let (action, _) = send(&mut lab, &reply);
        assert_eq!(action, XDP_PASS);
    }
}

#[test]
fn vlan_tagged_frames_are_balanced_and_keep_their_tag() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        let mut req = flow.request(1);
        req.vlan = Some(42);
        let (action, out) = send(&mut lab, &req);
        assert_eq!(
            action, XDP_TX,
            "{flow:?}: tagged frames go back out the link they came from"
        );
        assert_eq!(out, expected_nat(&lab, flow, &req, 2), "{flow:?}");
    }
}

#[test]
fn ipv4_options_are_skipped_correctly() {
    for l4 in [L4::Tcp, L4::Udp] {
        let flow = Flow { l4, v6: false };
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        for opts in [vec![1u8, 1, 1, 0], vec![1u8; 40]] {
            let mut req = flow.request(1);
            req.ipv4_options = opts;
            let (action, out) = send(&mut lab, &req);
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(
                out,
                expected_nat(&lab, flow, &req, 2),
                "{l4:?} with {} option bytes",
                req.ipv4_options.len()
            );
        }
    }
}

#[test]
fn udp_ipv4_without_checksum_keeps_zero() {
    let flow = FLOWS[1];
    let mut lab = Lab::new().unwrap();
    lab.configure(&[flow.service()]).unwrap();
    let mut req = flow.request(1);
    req.udp_no_checksum = true;
    let (action, out) = send(&mut lab, &req);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_nat(&lab, flow, &req, 2));
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
}

#[test]
fn all_ports_service_keeps_the_port() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = ServiceSpec::new("any", SocketAddr::new(flow.vip(), 0));
        svc.protocol = flow.protocol();
        svc = svc.backend(SocketAddr::new(flow.backend(2), 0));
        lab.configure(&[svc]).unwrap();
        for port in [443u16, 5353] {
            let mut req = flow.request(1);
            req.dport = port;
            let (action, out) = send(&mut lab, &req);
            assert_eq!(action, XDP_REDIRECT, "{flow:?}");
            let mut want = req.clone();
            want.dst = flow.backend(2);
            want.ttl -= 1;
            want.dst_mac = backend_mac(2);
            want.src_mac = lab.fx0_mac;
            assert_eq!(out, want.bytes(), "{flow:?} port {port}");
            // And the reply from that port comes back from the VIP, same port.
            let reply = Pkt::new(flow.l4, flow.backend(2), port, flow.client(1), CLIENT_PORT);
            let (action, out) = send(&mut lab, &reply);
            assert_eq!(action, XDP_REDIRECT);
            let mut want = reply.clone();
            want.src = flow.vip();
            want.ttl -= 1;
            want.dst_mac = CLIENT_GW_MAC;
            want.src_mac = lab.fx1_mac;
            assert_eq!(out, want.bytes(), "{flow:?} reply port {port}");
        }
    }
}

#[test]
fn traffic_not_for_a_service_passes_byte_for_byte() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        let mut cases = Vec::new();
        let mut p = flow.request(1);
        p.dst = flow.backend(3); // not a VIP
        cases.push(p.bytes());
        let mut p = flow.request(1);
        p.dport = 81; // VIP, other port
        cases.push(p.bytes());
        let mut p = flow.request(1);
        p.l4 = if flow.l4 == L4::Tcp { L4::Udp } else { L4::Tcp }; // other protocol
        cases.push(p.bytes());
        let mut p = flow.request(1);
        p.ttl = 1; // would expire: the kernel answers
        cases.push(p.bytes());
        // Same bytes, but an ethertype we do not handle (ARP), and a QinQ tag.
        let mut arp = flow.request(1).bytes();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        cases.push(arp);
        let mut qinq = flow.request(1);
        qinq.vlan = Some(7);
        let mut qinq = qinq.bytes();
        qinq[12..14].copy_from_slice(&[0x88, 0xa8]);
        cases.push(qinq);
        // IP protocol we do not balance (ICMP) and, for IPv4, a fragment.
        let mut other = flow.request(1).bytes();
        if flow.v6 {
            other[14 + 6] = 58;
        } else {
            other[14 + 9] = 1;
        }
        cases.push(other);
        if !flow.v6 {
            let mut frag = flow.request(1).bytes();
            frag[14 + 6] = 0x20; // more fragments
            cases.push(frag);
        }
        for (i, pkt) in cases.iter().enumerate() {
            let (action, out) = lab.run(pkt).unwrap();
            assert_eq!(action, XDP_PASS, "{flow:?} case {i}");
            assert_eq!(&out, pkt, "{flow:?} case {i}: bytes changed");
        }
        assert_eq!(lab.service_stats("web").unwrap().packets, 0);
        assert_eq!(lab.service_stats("web").unwrap().pass_ttl, 1);
    }
}

#[test]
fn truncated_packets_pass_unchanged_at_every_length() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        let mut variants = vec![flow.request(1)];
        let mut tagged = flow.request(1);
        tagged.vlan = Some(3);
        variants.push(tagged);
        if !flow.v6 {
            let mut opts = flow.request(1);
            opts.ipv4_options = vec![1, 1, 1, 0, 1, 1, 1, 0];
            variants.push(opts);
        }
        for req in variants {
            let full = req.bytes();
            let boundaries = req.header_boundaries();
            // The kernel refuses test frames shorter than an Ethernet header.
            for len in 14..full.len() {
                let (action, out) = lab.run(&full[..len]).unwrap();
                assert_eq!(
                    action, XDP_PASS,
                    "{flow:?} truncated to {len} (boundaries {boundaries:?})"
                );
                assert_eq!(
                    out,
                    &full[..len],
                    "{flow:?} truncated to {len}: bytes changed"
                );
            }
        }
        let st = lab.service_stats("web").unwrap();
        assert_eq!(
            st.packets + st.new_clients,
            0,
            "{flow:?}: a truncated packet was balanced"
        );
    }
}

#[test]
fn fib_without_neighbour_passes_the_rewritten_packet_to_the_kernel() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = ServiceSpec::new("web", SocketAddr::new(flow.vip(), VIP_PORT));
        svc.protocol = flow.protocol();
        svc = svc.backend(SocketAddr::new(flow.backend(5), BACKEND_PORT));
        lab.configure(&[svc.clone()]).unwrap();
        let req = flow.request(1);
        let (action, out) = send(&mut lab, &req);
        assert_eq!(action, XDP_PASS, "{flow:?}");
        let mut want = req.clone();
        want.dst = flow.backend(5);
        want.dport = BACKEND_PORT;
        assert_eq!(
            out,
            want.bytes(),
            "{flow:?}: the kernel must get the NAT'd packet"
        );
        assert_eq!(lab.service_stats("web").unwrap().fib_miss, 1);
        // DSR cannot hand the packet to the kernel (it would route by the VIP): drop.
        svc.forwarding = Forwarding::Dsr;
        lab.configure(&[svc]).unwrap();
        let (action, _) = send(&mut lab, &flow.request(2));
        assert_eq!(action, XDP_DROP, "{flow:?}");
        assert_eq!(lab.service_stats("web").unwrap().fib_miss, 2);
    }
}

#[test]
fn unreachable_backend_is_dropped_and_counted() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = ServiceSpec::new("web", SocketAddr::new(flow.vip(), VIP_PORT));
        svc.protocol = flow.protocol();
        svc = svc.backend(SocketAddr::new(flow.unreachable_backend(), BACKEND_PORT));
        lab.configure(&[svc]).unwrap();
        assert_eq!(send(&mut lab, &flow.request(1)).0, XDP_DROP, "{flow:?}");
        assert_eq!(lab.service_stats("web").unwrap().drop_no_route, 1);
    }
}

#[test]
fn services_are_isolated_from_each_other() {
    let flow = FLOWS[0];
    let mut lab = Lab::new().unwrap();
    let a = flow.service();
    let mut b = ServiceSpec::new("api", SocketAddr::new(flow.vip(), 443));
    b = b.backend(SocketAddr::new(flow.backend(4), 8443));
    lab.configure(&[a, b]).unwrap();
    assert_eq!(backend_for(&mut lab, flow, 1), 2);
    let mut req = flow.request(1);
    req.dport = 443;
    let (action, out) = send(&mut lab, &req);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        dst_host(&out, &req),
        4,
        "the same client has its own entry per service"
    );
    assert_eq!(backend_for(&mut lab, flow, 1), 2);
}
