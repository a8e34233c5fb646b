//! The XDP data path, packet by packet, with `BPF_PROG_TEST_RUN`: one fixture per branch,
//! for IPv4 and IPv6, TCP and UDP. Expected outputs are built from scratch with etherparse
//! (checksums included) and compared byte for byte.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use etherparse::IpNumber;
use lb_common::{
    ip_from_addr, NeighMiss, QueueMeta, FAMILY_V4, FAMILY_V6, MISS_DSR_TO_BACKEND,
    MISS_ENCAP_TO_BACKEND, MISS_NAT_TO_BACKEND, MISS_REPLY, NEIGH_REPORT_NS, QUEUE_MAGIC,
};
use lb_model::spec::{BackendState, Forwarding, Protocol, Scheduler, ServiceSpec, StickOn};
use stickylb_tests::{
    lab::{backend_mac, Lab, CLIENT_GW_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    packets::{requote, Icmp, Pkt, Raw, L4},
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

/// The data path reads its clock from jiffies once the loader calibrated it (issue 15:
/// ~17 ns less per packet than `bpf_ktime_get_coarse_ns`), and that clock is userspace's
/// `CLOCK_MONOTONIC_COARSE`: a new client's last-seen lies between the coarse clock read
/// just before and just after its packet, give or take one tick.
#[test]
fn the_jiffies_clock_is_calibrated_and_reads_the_coarse_monotonic_clock() {
    let flow = FLOWS[0];
    let mut lab = Lab::new().unwrap();
    let cal = stickylb_tests::lab::clock_calibration(&lab)
        .unwrap()
        .expect("the loader calibrated the data path's clock");
    let hz = 1_000_000_000 / cal.tick_ns;
    assert!(
        [100, 250, 300, 1000].contains(&hz),
        "HZ {hz} ({} ns per tick)",
        cal.tick_ns
    );
    lab.configure(&[flow.service()]).unwrap();
    for c in 1..=20u16 {
        let before = lb_model::clock::monotonic_ns();
        backend_for(&mut lab, flow, c);
        let after = lb_model::clock::monotonic_ns();
        let seen = lab.stick_entry("web", flow.client(c)).unwrap().last_seen_ns;
        assert!(
            seen + cal.tick_ns >= before && seen <= after + cal.tick_ns,
            "client {c}: last-seen {seen} outside [{before}, {after}] ± {} ns",
            cal.tick_ns
        );
        std::thread::sleep(Duration::from_millis(3));
    }
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
        // ICMP that is no error about a service flow (the TCP/UDP bytes read as ICMP).
        // Fragments of service flows are balanced: see `fragments_*`.
        let mut other = flow.request(1).bytes();
        if flow.v6 {
            other[14 + 6] = 58;
        } else {
            other[14 + 9] = 1;
        }
        cases.push(other);
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

/// IP length fields that leave the L4 header outside the datagram (in the frame's
/// padding), or that overflow: the packet is not ours and passes untouched. Both were
/// found by the fuzzer (tests/tests/fuzz.rs).
#[test]
fn l4_header_beyond_the_ip_length_passes_unchanged() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        let full = flow.request(1).bytes();
        let mut lies: Vec<(String, Vec<u8>)> = Vec::new();
        if flow.v6 {
            // Payload length 0, 4 (a partial L4 header) and 0xffff (wraps a u16 + 40).
            for len in [0u16, 4, 0xffff] {
                let mut f = full.clone();
                f[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
                lies.push((format!("payload length {len}"), f));
            }
        } else {
            // Total length 20 (no L4 header at all) and 24 (half of it).
            for len in [20u16, 24] {
                let mut f = full.clone();
                f[14 + 2..14 + 4].copy_from_slice(&len.to_be_bytes());
                f[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
                let sum = !ones_sum(&f[14..34], 0) as u16;
                f[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
                lies.push((format!("total length {len}"), f));
            }
        }
        for (what, f) in lies {
            let (action, out) = lab.run(&f).unwrap();
            assert_eq!(action, XDP_PASS, "{flow:?} {what}");
            assert_eq!(out, f, "{flow:?} {what}: bytes changed");
        }
        let st = lab.service_stats("web").unwrap();
        assert_eq!(st.packets + st.new_clients, 0, "{flow:?}: balanced");
    }
}

/// The route to a backend is cached per CPU for at most `ROUTE_CACHE_NS` (one second):
/// a neighbour change reaches the data path within it, a backend id given to another
/// address never uses the old address's route, and a longer packet asks the FIB again.
#[test]
fn backend_routes_are_cached_for_at_most_a_second() {
    // One CPU, so that the per-CPU cache is one cache.
    stickylb_tests::lab::pin_to_cpu0();
    for flow in [FLOWS[0], FLOWS[3]] {
        let mut lab = Lab::new().unwrap();
        let only = |n: u8| {
            let mut s = ServiceSpec::new("web", SocketAddr::new(flow.vip(), VIP_PORT));
            s.protocol = flow.protocol();
            s.backend(backend_addr(flow, n))
        };
        lab.configure(&[only(2)]).unwrap();
        let req = flow.request(1);
        let (_, out) = send(&mut lab, &req);
        assert_eq!(out[..6], backend_mac(2), "{flow:?}");
        // The backend's MAC changes: within the second the cached one is still used,
        // after it the new one.
        let moved = "02:00:00:00:01:99";
        let b2 = flow.backend(2).to_string();
        lab.ns
            .ip(&[
                "neigh",
                "replace",
                &b2,
                "lladdr",
                moved,
                "dev",
                "fx0",
                "nud",
                "permanent",
            ])
            .unwrap();
        let (_, out) = send(&mut lab, &req);
        assert_eq!(
            out[..6],
            backend_mac(2),
            "{flow:?}: not served from the cache"
        );
        std::thread::sleep(Duration::from_millis(1100));
        let (_, out) = send(&mut lab, &req);
        assert_eq!(
            out[..6],
            [0x02, 0, 0, 0, 0x01, 0x99],
            "{flow:?}: stale route after a second"
        );
        // Backend 2 replaced by backend 3 (the id may be reused): its own route at once.
        lab.configure(&[only(3)]).unwrap();
        let (action, out) = send(&mut lab, &req);
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        assert_eq!(dst_host(&out, &req), 3, "{flow:?}");
        assert_eq!(
            out[..6],
            backend_mac(3),
            "{flow:?}: route of another address"
        );
        // A longer packet than any the route carried asks the FIB (MTU) again, and a
        // too-long one is left to the kernel (it sends the ICMP error).
        let mut big = flow.request(1);
        big.payload = vec![0; 1600];
        let (action, _) = send(&mut lab, &big);
        assert_eq!(
            action, XDP_PASS,
            "{flow:?}: oversized packet not left to the kernel"
        );
    }
}

/// The next hop a report names, as (address, interface index, family).
fn hop_of(e: &NeighMiss) -> (IpAddr, u32, u8) {
    (
        ip_from_addr(&e.hop.addr, e.hop.family),
        e.hop.ifindex,
        e.hop.family,
    )
}

/// The XDP metadata the data path puts in front of a packet for the neighbour queue.
fn queue_meta(hop: IpAddr, ifindex: u32) -> Vec<u8> {
    let (addr, family) = lb_common::addr_from_ip(hop);
    let m = QueueMeta {
        magic: QUEUE_MAGIC,
        ifindex,
        family: family as u32,
        addr,
    };
    // SAFETY: a repr(C) struct of plain integers without padding.
    unsafe {
        std::slice::from_raw_parts(
            (&m as *const QueueMeta).cast::<u8>(),
            std::mem::size_of::<QueueMeta>(),
        )
    }
    .to_vec()
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

/// A packet to a backend whose next hop is unresolved goes to the neighbour queue:
/// rewritten as if sent (NAT: backend address and port, TTL − 1; DSR: untouched), with
/// the next hop in the XDP metadata for the tc program; the agent is told, once.
#[test]
fn backend_without_neighbour_is_queued_and_reported() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = ServiceSpec::new("web", SocketAddr::new(flow.vip(), VIP_PORT));
        svc.protocol = flow.protocol();
        svc = svc.backend(SocketAddr::new(flow.backend(5), BACKEND_PORT));
        let plan = lab.configure(&[svc.clone()]).unwrap();
        let req = flow.request(1);
        let first_report = Instant::now();
        let (action, out) = send(&mut lab, &req);
        assert_eq!(action, XDP_PASS, "{flow:?}");
        let b5 = flow.backend(5);
        let mut rewritten = req.clone();
        rewritten.dst = b5;
        rewritten.dport = BACKEND_PORT;
        rewritten.ttl -= 1;
        let mut want = queue_meta(b5, lab.fx0_ifindex);
        want.extend(rewritten.bytes());
        assert_eq!(out, want, "{flow:?}: metadata + the NAT'd packet");
        let st = lab.service_stats("web").unwrap();
        assert_eq!(
            (st.neigh_queued, st.fib_miss, st.drop_no_neigh, st.packets),
            (1, 0, 0, 1)
        );
        // The agent is told which next hop (the on-link backend itself, on fx0), once.
        let events = lab.neigh_events();
        assert_eq!(events.len(), 1, "{flow:?}: {events:?}");
        assert_eq!(hop_of(&events[0]), (b5, lab.fx0_ifindex, family(b5)));
        assert_eq!(events[0].why, MISS_NAT_TO_BACKEND);
        assert_eq!(events[0].service_id, plan.services[0].info.id);
        assert_ne!(events[0].at_ns, 0);
        // A burst to the same next hop makes no more reports (rate limit per next hop):
        // none while it lasts under NEIGH_REPORT_NS, at most one per NEIGH_REPORT_NS on a
        // machine so loaded that the burst takes longer.
        for c in 2..20 {
            assert_eq!(send(&mut lab, &flow.request(c)).0, XDP_PASS);
        }
        let allowed = (first_report.elapsed().as_nanos() / u128::from(NEIGH_REPORT_NS)) as usize;
        let burst = lab.neigh_events();
        assert!(
            burst.len() <= allowed,
            "{flow:?}: burst reported {} times in {:?}: {burst:?}",
            burst.len(),
            first_report.elapsed()
        );
        assert_eq!(lab.service_stats("web").unwrap().neigh_queued, 19);
        // DSR cannot hand the packet to the kernel's routing (it would route by the
        // VIP): it goes to the neighbour queue, untouched, with the next hop in the XDP
        // metadata for the tc program; reported again once the rate limit allows.
        std::thread::sleep(Duration::from_millis(150));
        svc.forwarding = Forwarding::Dsr;
        lab.configure(&[svc]).unwrap();
        let req = flow.request(30);
        let (action, out) = send(&mut lab, &req);
        assert_eq!(action, XDP_PASS, "{flow:?}");
        let mut want = queue_meta(b5, lab.fx0_ifindex);
        want.extend(req.bytes());
        assert_eq!(out, want, "{flow:?}: metadata + the packet as it came");
        let st = lab.service_stats("web").unwrap();
        assert_eq!((st.fib_miss, st.neigh_queued, st.drop_no_neigh), (0, 20, 0));
        let events = lab.neigh_events();
        assert_eq!(events.len(), 1, "{flow:?}: {events:?}");
        assert_eq!(hop_of(&events[0]), (b5, lab.fx0_ifindex, family(b5)));
        assert_eq!(events[0].why, MISS_DSR_TO_BACKEND);
    }
}

/// An L3 DSR (ipip) packet whose outer next hop is unresolved is not encapsulated yet:
/// it cannot be queued as it is (the client's packet would go to the outer next hop), so
/// it is dropped, counted and reported.
#[test]
fn encapsulated_packet_without_neighbour_is_dropped_and_reported() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = ServiceSpec::new("web", SocketAddr::new(flow.vip(), VIP_PORT));
        svc.protocol = flow.protocol();
        svc.forwarding = Forwarding::Ipip;
        svc = svc.backend(SocketAddr::new(flow.backend(5), VIP_PORT));
        let plan = lab.configure(&[svc]).unwrap();
        let (action, _) = send(&mut lab, &flow.request(1));
        assert_eq!(action, XDP_DROP, "{flow:?}");
        let st = lab.service_stats("web").unwrap();
        assert_eq!(
            (st.drop_no_neigh, st.neigh_queued, st.packets),
            (1, 0, 0),
            "{flow:?}"
        );
        let events = lab.neigh_events();
        assert_eq!(events.len(), 1, "{flow:?}: {events:?}");
        let b5 = flow.backend(5);
        assert_eq!(hop_of(&events[0]), (b5, lab.fx0_ifindex, family(b5)));
        assert_eq!(events[0].why, MISS_ENCAP_TO_BACKEND);
        assert_eq!(events[0].service_id, plan.services[0].info.id);
    }
}

/// A NAT reply whose next hop towards the client is unresolved cannot go to the kernel's
/// stack (it drops a packet from the VIP as a martian when the VIP is local): it is
/// rewritten as if sent (VIP source, TTL − 1) and passed with the next hop in the XDP
/// metadata, for the tc program and the kernel's neighbour queue; the next hop is
/// reported: the gateway of a routed client, the client itself when on-link.
#[test]
fn reply_without_neighbour_is_queued_and_its_next_hop_reported() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        let plan = lab.configure(&[flow.service()]).unwrap();
        let (routed, gateway, onlink): (IpAddr, IpAddr, IpAddr) = if flow.v6 {
            (
                "2001:db8:d::7".parse().unwrap(),
                "fd00::fd".parse().unwrap(),
                "fd00::77".parse().unwrap(),
            )
        } else {
            (
                "198.51.101.7".parse().unwrap(),
                "198.18.0.253".parse().unwrap(),
                "198.18.0.77".parse().unwrap(),
            )
        };
        for (n, (client, hop)) in [(routed, gateway), (onlink, onlink)]
            .into_iter()
            .enumerate()
        {
            let mut reply = Pkt::new(flow.l4, flow.backend(2), BACKEND_PORT, client, CLIENT_PORT);
            reply.syn = false;
            let (action, out) = send(&mut lab, &reply);
            assert_eq!(action, XDP_PASS, "{flow:?} reply to {client}");
            let mut rewritten = reply.clone();
            rewritten.src = flow.vip();
            rewritten.sport = VIP_PORT;
            rewritten.ttl -= 1;
            let mut want = queue_meta(hop, lab.fx1_ifindex);
            want.extend(rewritten.bytes());
            assert_eq!(out, want, "{flow:?}: metadata + the rewritten reply");
            let st = lab.service_stats("web").unwrap();
            assert_eq!(st.neigh_queued, n as u64 + 1, "{flow:?}");
            assert_eq!(st.reply_packets, n as u64 + 1, "{flow:?}");
            assert_eq!((st.drop_no_neigh, st.fib_miss), (0, 0), "{flow:?}");
            let events = lab.neigh_events();
            assert_eq!(events.len(), 1, "{flow:?}: {events:?}");
            assert_eq!(
                hop_of(&events[0]),
                (hop, lab.fx1_ifindex, family(hop)),
                "{flow:?}"
            );
            assert_eq!(events[0].why, MISS_REPLY);
            assert_eq!(events[0].service_id, plan.services[0].info.id);
        }
        // Once the neighbour exists, the same reply is rewritten and sent (no cache).
        lab.ns
            .ip(&[
                "neigh",
                "replace",
                &gateway.to_string(),
                "lladdr",
                "02:00:00:00:00:fd",
                "dev",
                "fx1",
                "nud",
                "reachable",
            ])
            .unwrap();
        let mut reply = Pkt::new(flow.l4, flow.backend(2), BACKEND_PORT, routed, CLIENT_PORT);
        reply.syn = false;
        let (action, out) = send(&mut lab, &reply);
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        let mut want = reply.clone();
        want.src = flow.vip();
        want.sport = VIP_PORT;
        want.ttl -= 1;
        want.dst_mac = [0x02, 0, 0, 0, 0, 0xfd];
        want.src_mac = lab.fx1_mac;
        assert_eq!(out, want.bytes(), "{flow:?}");
        assert_eq!(lab.service_stats("web").unwrap().reply_packets, 3);
        assert!(lab.neigh_events().is_empty());
    }
}

/// A flood of misses to distinct next hops fills the report ring: the overflow is
/// counted (`neigh_report_lost`), and never blocks or changes the verdict (queued).
#[test]
fn next_hop_reports_beyond_the_ring_are_counted_as_lost() {
    let flow = FLOWS[2]; // IPv6: room for thousands of on-link next hops
    let mut lab = Lab::new().unwrap();
    lab.configure(&[flow.service()]).unwrap();
    let n = 2000u16;
    for i in 0..n {
        let client: IpAddr = format!("fd00::1:{:x}", i + 1).parse().unwrap();
        let mut reply = Pkt::new(flow.l4, flow.backend(2), BACKEND_PORT, client, CLIENT_PORT);
        reply.syn = false;
        assert_eq!(send(&mut lab, &reply).0, XDP_PASS);
    }
    let st = lab.service_stats("web").unwrap();
    let events = lab.neigh_events();
    assert_eq!((st.neigh_queued, st.drop_no_neigh), (n as u64, 0));
    assert!(
        st.neigh_report_lost > 0,
        "ring never full? {} events",
        events.len()
    );
    assert_eq!(events.len() as u64 + st.neigh_report_lost, n as u64);
    // Read, the ring has room again: the lost next hops are reported on their next miss.
    let client: IpAddr = format!("fd00::1:{:x}", n).parse().unwrap();
    let mut reply = Pkt::new(flow.l4, flow.backend(2), BACKEND_PORT, client, CLIENT_PORT);
    reply.syn = false;
    assert_eq!(send(&mut lab, &reply).0, XDP_PASS);
    let events = lab.neigh_events();
    assert_eq!(events.len(), 1);
    assert_eq!(hop_of(&events[0]).0, client);
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

// ---- ICMP errors about service flows ----

impl Flow {
    /// A router on the way to the clients that reports a problem with a reply.
    fn router(self) -> IpAddr {
        if self.v6 {
            "2001:db8:c::fe0".parse().unwrap()
        } else {
            "198.51.100.254".parse().unwrap()
        }
    }
    /// "Fragmentation needed" (IPv4) or "packet too big" (IPv6).
    fn too_big(self) -> Icmp {
        if self.v6 {
            Icmp::PacketTooBig(1400)
        } else {
            Icmp::FragmentationNeeded(1400)
        }
    }
    /// The reply VIP:80 → client:40000 as an ICMP error quotes it (IP header on).
    fn quoted_reply(self, client: u16) -> Vec<u8> {
        let mut r = Pkt::new(
            self.l4,
            self.vip(),
            VIP_PORT,
            self.client(client),
            CLIENT_PORT,
        );
        r.syn = false;
        r.bytes()[14..].to_vec()
    }
    /// The router's error about the reply to `client`, sent to the VIP.
    fn icmp_error(self, client: u16) -> Raw {
        Raw::icmp(
            self.router(),
            self.vip(),
            self.too_big(),
            &self.quoted_reply(client),
        )
    }
}

/// One's complement sum of `data` as big-endian 16-bit words.
fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Verifies every checksum of an ICMP error frame by full recompute: the outer IPv4
/// header, the ICMP message (ICMPv6: with its pseudo-header) and the quoted IPv4 header.
fn assert_icmp_checksums(frame: &[u8], v6: bool, what: &str) {
    let ip = &frame[14..];
    if v6 {
        let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[8..40]);
        pseudo.extend_from_slice(&(len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        let sum = ones_sum(&ip[40..40 + len], ones_sum(&pseudo, 0));
        assert_eq!(sum, 0xffff, "{what}: ICMPv6 checksum");
    } else {
        assert_eq!(
            ones_sum(&ip[..20], 0),
            0xffff,
            "{what}: IPv4 header checksum"
        );
        let len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        assert_eq!(ones_sum(&ip[20..len], 0), 0xffff, "{what}: ICMP checksum");
        assert_eq!(
            ones_sum(&ip[28..48], 0),
            0xffff,
            "{what}: quoted IPv4 header checksum"
        );
    }
}

#[test]
fn icmp_errors_reach_the_clients_backend_nat_exact() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        assert_eq!(backend_for(&mut lab, flow, 1), 2);
        assert_eq!(backend_for(&mut lab, flow, 2), 3);
        // Full quote, and (IPv4) the classic minimum: IP header + 8 bytes.
        let mut quotes = vec![flow.quoted_reply(2)];
        if !flow.v6 {
            quotes.push(flow.quoted_reply(2)[..28].to_vec());
        }
        let mut kinds = vec![flow.too_big()];
        if flow.v6 {
            kinds.push(Icmp::PortUnreachableV6);
        }
        let mut sent = 0;
        for quote in &quotes {
            for &kind in &kinds {
                let err = Raw::icmp(flow.router(), flow.vip(), kind, quote);
                let (action, out) = lab.run(&err.bytes()).unwrap();
                assert_eq!(action, XDP_REDIRECT, "{flow:?} {kind:?}");
                // The backend sees an error about the packet it sent: backend:8080 →
                // client, addressed to itself.
                let mut want = Raw::icmp(
                    flow.router(),
                    flow.backend(3),
                    kind,
                    &requote(quote, flow.backend(3), BACKEND_PORT),
                );
                want.ttl -= 1;
                want.dst_mac = backend_mac(3);
                want.src_mac = lab.fx0_mac;
                assert_eq!(
                    out,
                    want.bytes(),
                    "{flow:?} {kind:?} quote of {}: NAT output differs",
                    quote.len()
                );
                assert_icmp_checksums(&out, flow.v6, &format!("{flow:?} {kind:?}"));
                sent += 1;
            }
        }
        let st = lab.service_stats("web").unwrap();
        assert_eq!(
            (st.icmp_to_backend, st.icmp_unmatched),
            (sent, 0),
            "{flow:?}"
        );
        assert_eq!(
            st.new_clients, 2,
            "{flow:?}: an ICMP error picked a backend"
        );
    }
}

#[test]
fn icmp_errors_in_dsr_mode_change_only_the_macs() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = flow.service();
        svc.forwarding = Forwarding::Dsr;
        lab.configure(&[svc]).unwrap();
        for c in 1..=2 {
            assert_eq!(send(&mut lab, &flow.request(c)).0, XDP_REDIRECT);
        }
        let err = flow.icmp_error(2);
        let (action, out) = lab.run(&err.bytes()).unwrap();
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        let mut want = err.clone();
        want.dst_mac = backend_mac(3);
        want.src_mac = lab.fx0_mac;
        assert_eq!(
            out,
            want.bytes(),
            "{flow:?}: DSR changed more than the MACs"
        );
        assert_eq!(lab.service_stats("web").unwrap().icmp_to_backend, 1);
    }
}

#[test]
fn icmp_without_a_client_entry_or_not_an_error_passes_untouched() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        // No entry for the client yet.
        let err = flow.icmp_error(1).bytes();
        assert_eq!(lab.run(&err).unwrap(), (XDP_PASS, err.clone()), "{flow:?}");
        let st = lab.service_stats("web").unwrap();
        assert_eq!((st.icmp_unmatched, st.icmp_to_backend), (1, 0), "{flow:?}");
        assert!(
            lab.stick_entry("web", flow.client(1)).is_none(),
            "{flow:?}: an ICMP error created an entry"
        );
        // Another client's entry does not count.
        assert_eq!(backend_for(&mut lab, flow, 2), 2);
        assert_eq!(lab.run(&err).unwrap(), (XDP_PASS, err.clone()), "{flow:?}");
        // Echo request to the VIP: the kernel's.
        let echo = Raw::icmp(flow.client(2), flow.vip(), Icmp::EchoRequest, b"ping").bytes();
        assert_eq!(lab.run(&echo).unwrap(), (XDP_PASS, echo), "{flow:?} echo");
        // An error quoting a packet that is no reply of a service (other source port).
        let mut q = Pkt::new(flow.l4, flow.vip(), 22, flow.client(2), CLIENT_PORT);
        q.syn = false;
        let other = Raw::icmp(flow.router(), flow.vip(), flow.too_big(), &q.bytes()[14..]).bytes();
        assert_eq!(
            lab.run(&other).unwrap(),
            (XDP_PASS, other),
            "{flow:?} other"
        );
        // A quote too short to hold the ports (well-formed lengths otherwise).
        let short = &flow.quoted_reply(2)[..if flow.v6 { 42 } else { 22 }];
        let short = Raw::icmp(flow.router(), flow.vip(), flow.too_big(), short).bytes();
        assert_eq!(
            lab.run(&short).unwrap(),
            (XDP_PASS, short),
            "{flow:?} short"
        );
        // A quote that is no IP header of the family (version nibble 4 in IPv6, 6 in
        // IPv4), though its addresses and ports match client 2's live entry.
        let mut bad_version = flow.quoted_reply(2);
        bad_version[0] = (bad_version[0] & 0x0f) | if flow.v6 { 0x40 } else { 0x60 };
        let bad_version =
            Raw::icmp(flow.router(), flow.vip(), flow.too_big(), &bad_version).bytes();
        assert_eq!(
            lab.run(&bad_version).unwrap(),
            (XDP_PASS, bad_version),
            "{flow:?} quoted version"
        );
        // A routed hop that would expire (NAT): the kernel answers.
        let mut expiring = flow.icmp_error(2);
        expiring.ttl = 1;
        let expiring = expiring.bytes();
        assert_eq!(
            lab.run(&expiring).unwrap(),
            (XDP_PASS, expiring),
            "{flow:?} ttl"
        );
        let st = lab.service_stats("web").unwrap();
        assert_eq!(
            (st.icmp_unmatched, st.icmp_to_backend, st.pass_ttl),
            (2, 0, 1),
            "{flow:?}"
        );
    }
}

// ---- IPv4 fragments ----

const V4_FLOWS: [Flow; 2] = [FLOWS[0], FLOWS[1]];

impl Flow {
    /// A later fragment (no L4 header) of a datagram from `client` to the VIP.
    fn later_fragment(self, client: u16, more: bool) -> Raw {
        let proto = match self.l4 {
            L4::Tcp => IpNumber::TCP,
            L4::Udp => IpNumber::UDP,
        };
        let mut f = Raw::new(
            self.client(client),
            self.vip(),
            proto,
            b"the rest of a datagram that did not fit".to_vec(),
        );
        f.fragment_offset = 5;
        f.more_fragments = more;
        f
    }
    fn first_fragment(self, client: u16) -> Pkt {
        let mut p = self.request(client);
        p.more_fragments = true;
        p
    }
}

/// A later fragment NAT'd to backend `n`: only the IP destination (and checksum) and the
/// routed hop change.
fn expected_fragment_nat(lab: &Lab, flow: Flow, f: &Raw, n: u8) -> Vec<u8> {
    let mut e = f.clone();
    e.dst = flow.backend(n);
    e.ttl -= 1;
    e.dst_mac = backend_mac(n);
    e.src_mac = lab.fx0_mac;
    e.bytes()
}

#[test]
fn fragments_follow_the_clients_entry() {
    for flow in V4_FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.service()]).unwrap();
        // First fragments carry the ports: balanced like any packet.
        let first = flow.first_fragment(1);
        let (action, out) = send(&mut lab, &first);
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        assert_eq!(out, expected_nat(&lab, flow, &first, 2), "{flow:?} first");
        assert_eq!(lab.service_stats("web").unwrap().frag_forwarded, 1);
        // Client 2 lands on backend 3.
        assert_eq!(backend_for(&mut lab, flow, 2), 3);
        // Later fragments (middle and last) follow each client's entry.
        for (client, n) in [(1, 2), (2, 3)] {
            for more in [true, false] {
                let f = flow.later_fragment(client, more);
                let (action, out) = lab.run(&f.bytes()).unwrap();
                assert_eq!(action, XDP_REDIRECT, "{flow:?} client {client}");
                assert_eq!(
                    out,
                    expected_fragment_nat(&lab, flow, &f, n),
                    "{flow:?} client {client} more={more}"
                );
            }
        }
        // No entry: to the kernel, untouched.
        let f = flow.later_fragment(3, false).bytes();
        assert_eq!(lab.run(&f).unwrap(), (XDP_PASS, f), "{flow:?} no entry");
        // A later fragment of the other protocol: no service, not counted.
        let mut other = flow.later_fragment(1, false);
        other.proto = if flow.l4 == L4::Tcp {
            IpNumber::UDP
        } else {
            IpNumber::TCP
        };
        let other = other.bytes();
        assert_eq!(
            lab.run(&other).unwrap(),
            (XDP_PASS, other),
            "{flow:?} other proto"
        );
        // A routed hop that would expire.
        let mut expiring = flow.later_fragment(1, false);
        expiring.ttl = 1;
        let expiring = expiring.bytes();
        assert_eq!(
            lab.run(&expiring).unwrap(),
            (XDP_PASS, expiring),
            "{flow:?} ttl"
        );
        let st = lab.service_stats("web").unwrap();
        assert_eq!(
            (
                st.frag_forwarded,
                st.frag_unmatched,
                st.pass_ttl,
                st.new_clients
            ),
            (5, 1, 1, 2),
            "{flow:?}"
        );
    }
}

#[test]
fn fragments_in_dsr_mode_change_only_the_macs() {
    for flow in V4_FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = flow.service();
        svc.forwarding = Forwarding::Dsr;
        lab.configure(&[svc]).unwrap();
        let first = flow.first_fragment(1);
        let (action, out) = send(&mut lab, &first);
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        let mut want = first.clone();
        want.dst_mac = backend_mac(2);
        want.src_mac = lab.fx0_mac;
        assert_eq!(out, want.bytes(), "{flow:?} first");
        let f = flow.later_fragment(1, false);
        let (action, out) = lab.run(&f.bytes()).unwrap();
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        let mut want = f.clone();
        want.dst_mac = backend_mac(2);
        want.src_mac = lab.fx0_mac;
        assert_eq!(
            out,
            want.bytes(),
            "{flow:?}: DSR changed more than the MACs"
        );
        assert_eq!(lab.service_stats("web").unwrap().frag_forwarded, 2);
    }
}

#[test]
fn fragments_with_entries_in_two_services_of_the_vip_pass() {
    let flow = FLOWS[0];
    let mut lab = Lab::new().unwrap();
    let web = flow.service();
    let mut api = ServiceSpec::new("api", SocketAddr::new(flow.vip(), 443));
    api = api.backend(SocketAddr::new(flow.backend(4), 8443));
    lab.configure(&[web, api]).unwrap();
    // Only an entry in `web`: the fragment is unambiguous.
    assert_eq!(backend_for(&mut lab, flow, 1), 2);
    let f = flow.later_fragment(1, false);
    let (action, out) = lab.run(&f.bytes()).unwrap();
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, expected_fragment_nat(&lab, flow, &f, 2));
    // An entry in `api` too: it could belong to either flow, so the kernel gets it.
    let mut req = flow.request(1);
    req.dport = 443;
    assert_eq!(send(&mut lab, &req).0, XDP_REDIRECT);
    let bytes = f.bytes();
    assert_eq!(lab.run(&bytes).unwrap(), (XDP_PASS, bytes), "ambiguous");
    let (web, api) = (
        lab.service_stats("web").unwrap(),
        lab.service_stats("api").unwrap(),
    );
    assert_eq!(web.frag_forwarded + api.frag_forwarded, 1);
    assert_eq!(web.frag_unmatched + api.frag_unmatched, 1);
}

#[test]
fn fragments_of_an_all_ports_service() {
    for flow in V4_FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = ServiceSpec::new("any", SocketAddr::new(flow.vip(), 0));
        svc.protocol = flow.protocol();
        svc = svc.backend(SocketAddr::new(flow.backend(2), 0));
        lab.configure(&[svc]).unwrap();
        let mut first = flow.first_fragment(1);
        first.dport = 5353;
        let (action, out) = send(&mut lab, &first);
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        let mut want = first.clone();
        want.dst = flow.backend(2);
        want.ttl -= 1;
        want.dst_mac = backend_mac(2);
        want.src_mac = lab.fx0_mac;
        assert_eq!(out, want.bytes(), "{flow:?} first");
        let f = flow.later_fragment(1, false);
        let (action, out) = lab.run(&f.bytes()).unwrap();
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        assert_eq!(out, expected_fragment_nat(&lab, flow, &f, 2), "{flow:?}");
        assert_eq!(lab.service_stats("any").unwrap().frag_forwarded, 2);
    }
}

/// The program loaded with stick-table events on (cluster replication), its rings mapped
/// for reading.
fn events_lab() -> (Lab, lb_agent::event_ring::EventRing) {
    let mut lab = Lab::with_options(&lb_agent::loader::LoadOptions {
        stick_events: true,
        ..Default::default()
    })
    .unwrap();
    let ring = lb_agent::event_ring::EventRing::take(&mut lab.ebpf).expect("the events rings");
    (lab, ring)
}

fn read_events(ring: &mut lb_agent::event_ring::EventRing) -> Vec<lb_common::StickEvent> {
    let mut out = Vec::new();
    ring.read_all(|e| out.push(*e));
    assert_eq!(ring.skipped(), 0, "every slot held its event");
    out
}

/// The events rings are pinned like every map (a restarted agent reads what waited), but
/// rings of another size (slots or CPUs changed) are replaced at load instead of
/// refused as incompatible pins.
#[test]
fn pinned_event_rings_are_adopted_or_replaced_when_their_size_changed() {
    use lb_agent::{event_ring::EventRing, loader};
    stickylb_tests::agent::ensure_test_bpffs().unwrap();
    let dir = std::path::Path::new(stickylb_tests::agent::TEST_BPFFS)
        .join(format!("rings-{}", std::process::id()));
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(dir.clone());
    let load = |slots: u32| {
        let mut ebpf = loader::load(&loader::LoadOptions {
            stick_table_size: 1024,
            pin_dir: Some(dir.clone()),
            stick_events: true,
            stick_event_slots: Some(slots),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("load with {slots} slots per CPU: {e:#}"));
        let pos: aya::maps::Array<_, lb_common::event_ring::EventRingPos> =
            aya::maps::Array::try_from(ebpf.map_mut(lb_common::MAP_STICK_EVENT_POS).unwrap())
                .unwrap();
        let head = pos.get(&0, 0).unwrap().head;
        let ring = EventRing::take(&mut ebpf).unwrap();
        (ebpf, ring.slots(), head)
    };
    let (ebpf, slots, head) = load(16);
    assert_eq!((slots, head), (16, 0));
    let pinned = aya::maps::MapData::from_pin(dir.join(lb_common::MAP_STICK_EVENT_POS)).unwrap();
    let mut pos: aya::maps::Array<_, lb_common::event_ring::EventRingPos> =
        aya::maps::Array::try_from(aya::maps::Map::Array(pinned)).unwrap();
    let moved = lb_common::event_ring::EventRingPos {
        head: 5,
        tail: 5,
        ..Default::default()
    };
    pos.set(0, &moved, 0).unwrap();
    drop(ebpf);
    let (ebpf, slots, head) = load(16);
    assert_eq!(
        (slots, head),
        (16, 5),
        "the same size: the pinned rings are adopted"
    );
    drop(ebpf);
    let (_ebpf, slots, head) = load(32);
    assert_eq!((slots, head), (32, 0), "another size: new rings");
}

/// A new client and each kind of re-pick emit one event holding the entry as written
/// (client, service, backend, last-seen); hits, refreshes and unpinned clients emit none.
#[test]
fn new_entries_and_repicks_are_emitted_as_events() {
    use lb_common::{
        addr_from_ip, FAMILY_V4, FAMILY_V6, STICK_EVENT_DOWN, STICK_EVENT_EXPIRED, STICK_EVENT_NEW,
    };
    for flow in FLOWS {
        let (mut lab, mut ring) = events_lab();
        let mut svc = flow.service();
        svc.expire = Some(Duration::from_secs(10));
        lab.configure(&[svc.clone()]).unwrap();
        let sid = lab.ids.service_id("web").unwrap();
        let bid = |lab: &Lab, n: u8| lab.ids.backend_id("web", backend_addr(flow, n)).unwrap();
        let family = if flow.v6 { FAMILY_V6 } else { FAMILY_V4 };
        let client = addr_from_ip(flow.client(1)).0;
        let check = |lab: &Lab, e: &lb_common::StickEvent, n: u8, kind: u8, what: &str| {
            let entry = lab.stick_entry("web", flow.client(1)).unwrap();
            let want = lb_common::StickEvent {
                client,
                service_id: sid,
                backend_id: bid(lab, n),
                at_ns: entry.last_seen_ns,
                kind,
                family,
                _pad: 0,
                seq: e.seq,
            };
            assert_eq!(*e, want, "{flow:?}: {what}");
            assert_eq!(entry.backend_id, bid(lab, n), "{flow:?}: {what}");
        };

        assert_eq!(backend_for(&mut lab, flow, 1), 2);
        let ev = read_events(&mut ring);
        assert_eq!(ev.len(), 1, "{flow:?}: one event for a new client");
        check(&lab, &ev[0], 2, STICK_EVENT_NEW, "new");

        // Hits, and a hit that refreshes last-seen, emit nothing.
        assert_eq!(backend_for(&mut lab, flow, 1), 2);
        lab.age_entry("web", flow.client(1), 2_000_000_000).unwrap();
        assert_eq!(backend_for(&mut lab, flow, 1), 2);
        assert!(
            read_events(&mut ring).is_empty(),
            "{flow:?}: hits emit nothing"
        );

        // Expired: re-picked (round robin moves on to backend 3).
        lab.age_entry("web", flow.client(1), 11_000_000_000)
            .unwrap();
        assert_eq!(backend_for(&mut lab, flow, 1), 3);
        let ev = read_events(&mut ring);
        assert_eq!(ev.len(), 1, "{flow:?}");
        check(&lab, &ev[0], 3, STICK_EVENT_EXPIRED, "expired");

        // Its backend down: re-picked again.
        lab.configure(&[with_state(svc.clone(), 1, BackendState::Down)])
            .unwrap();
        let moved = backend_for(&mut lab, flow, 1);
        assert_ne!(moved, 3);
        let ev = read_events(&mut ring);
        assert_eq!(ev.len(), 1, "{flow:?}");
        check(&lab, &ev[0], moved, STICK_EVENT_DOWN, "backend down");

        // A TCP client met mid-connection under insert_on = "syn" gets no entry: no event.
        if flow.l4 == L4::Tcp {
            let mut syn_only = svc.clone();
            syn_only.insert_on = lb_model::spec::InsertOn::Syn;
            lab.configure(&[syn_only]).unwrap();
            let mut ack = flow.request(9);
            ack.syn = false;
            assert_eq!(send(&mut lab, &ack).0, XDP_REDIRECT);
            assert!(read_events(&mut ring).is_empty(), "{flow:?}: unpinned");
        }
        let lost: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(
            lab.ebpf.map(lb_common::MAP_STICK_EVENTS_LOST).unwrap(),
        )
        .unwrap();
        assert_eq!(lost.get(&0, 0).unwrap().iter().sum::<u64>(), 0);
    }
}

/// Without the switch (a single node) nothing is emitted.
#[test]
fn no_events_unless_switched_on() {
    let mut lab = Lab::new().unwrap();
    let mut ring = lb_agent::event_ring::EventRing::take(&mut lab.ebpf).unwrap();
    lab.configure(&[FLOWS[0].service()]).unwrap();
    for c in 1..=5 {
        backend_for(&mut lab, FLOWS[0], c);
    }
    assert!(read_events(&mut ring).is_empty());
}

/// A full ring drops events and counts each one: every new client is either in the ring
/// or counted lost, and the data path forwards them all the same.
#[test]
fn a_full_event_ring_drops_and_counts() {
    let (mut lab, mut ring) = events_lab();
    stickylb_tests::lab::pin_to_cpu0();
    let mut svc = FLOWS[1].service(); // UDP over IPv4
    svc.insert_cap = 0;
    lab.configure(&[svc]).unwrap();
    let capacity = lb_common::STICK_EVENT_SLOTS as usize;
    let n = capacity + 2000;
    let Lab { ns, ebpf, .. } = &mut lab;
    let prog: &aya::programs::Xdp = lb_agent::loader::program(ebpf).unwrap();
    let redirected = ns
        .enter(|| {
            let mut ok = 0;
            let mut out = vec![0u8; 256];
            for k in 0..n as u32 {
                let [_, a, b, c] = k.to_be_bytes();
                let pkt = Pkt::new(
                    L4::Udp,
                    IpAddr::V4(Ipv4Addr::new(10, a, b, c)),
                    CLIENT_PORT,
                    FLOWS[1].vip(),
                    VIP_PORT,
                )
                .bytes();
                let r = aya::programs::TestRun::test_run(
                    prog,
                    aya::programs::TestRunOptions {
                        data_in: Some(&pkt),
                        data_out: Some(&mut out),
                        ..Default::default()
                    },
                )?;
                ok += u32::from(r.return_value == XDP_REDIRECT);
            }
            Ok(ok)
        })
        .unwrap();
    assert_eq!(redirected as usize, n, "every client forwarded");
    let got = read_events(&mut ring).len();
    let lost: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(ebpf.map(lb_common::MAP_STICK_EVENTS_LOST).unwrap())
            .unwrap();
    let lost: u64 = lost.get(&0, 0).unwrap().iter().sum();
    println!("{n} new clients: {got} events in the ring, {lost} lost");
    assert!(lost > 0, "the ring filled");
    assert_eq!(got, capacity, "CPU 0's ring held exactly its slots");
    assert_eq!(
        got as u64 + lost,
        n as u64,
        "each event is either read or counted"
    );
    // Read out, the ring takes events again.
    assert!(backend_for(&mut lab, FLOWS[1], 200) >= 2);
    assert_eq!(read_events(&mut ring).len(), 1);
}

// ---- Stickiness by network (`stick_on = "src/N"`) ----

impl Flow {
    /// The prefix the network tests stick by: /24 for IPv4, /64 for IPv6.
    fn stick_prefix(self) -> u8 {
        if self.v6 {
            64
        } else {
            24
        }
    }
    /// The network of [`Flow::client`]s: `198.51.100.0` / `2001:db8:c::`.
    fn client_network(self) -> IpAddr {
        if self.v6 {
            "2001:db8:c::".parse().unwrap()
        } else {
            "198.51.100.0".parse().unwrap()
        }
    }
    /// Client `n` of another network (`198.51.101.n` / `2001:db8:d::n`).
    fn other_network_client(self, n: u8) -> IpAddr {
        if self.v6 {
            format!("2001:db8:d::{n:x}").parse().unwrap()
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 51, 101, n))
        }
    }
    fn other_network(self) -> IpAddr {
        if self.v6 {
            "2001:db8:d::".parse().unwrap()
        } else {
            "198.51.101.0".parse().unwrap()
        }
    }
    /// [`Flow::service`] sticking by the client's /24 (/64).
    fn network_service(self) -> ServiceSpec {
        let mut s = self.service();
        s.stick_on = StickOn::Network(self.stick_prefix());
        s
    }
}

/// Two clients of one network share one entry, keyed by the network, and one backend;
/// a client of another network gets its own entry. The packets themselves keep each
/// client's own address (only the key is masked): byte-exact NAT output for each.
#[test]
fn clients_of_one_network_share_one_entry_and_backend() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.network_service()]).unwrap();
        for (client, n) in [(1u16, 2u8), (77, 2), (1, 2), (200, 2)] {
            let req = flow.request(client);
            let (action, out) = send(&mut lab, &req);
            assert_eq!(action, XDP_REDIRECT, "{flow:?} client {client}");
            assert_eq!(
                out,
                expected_nat(&lab, flow, &req, n),
                "{flow:?} client {client}: NAT output differs"
            );
        }
        let entries = lab.dp.stick_entries();
        assert_eq!(entries.len(), 1, "{flow:?}: one entry for the network");
        let entry = lab
            .stick_entry("web", flow.client_network())
            .expect("the entry is keyed by the network address");
        assert_eq!(lab.backend_addr(entry.backend_id), Some(flow.backend(2)));
        assert!(
            lab.stick_entry("web", flow.client(1)).is_none(),
            "{flow:?}: an entry keyed by a client's own address"
        );
        // Another network: the next round-robin turn, its own entry.
        let mut other = flow.request(1);
        other.src = flow.other_network_client(5);
        let (action, out) = send(&mut lab, &other);
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        assert_eq!(out, expected_nat(&lab, flow, &other, 3), "{flow:?} other");
        let e = lab
            .stick_entry("web", flow.other_network())
            .expect("own entry");
        assert_eq!(lab.backend_addr(e.backend_id), Some(flow.backend(3)));
        assert_eq!(lab.dp.stick_entries().len(), 2, "{flow:?}");
        let st = lab.service_stats("web").unwrap();
        assert_eq!((st.new_clients, st.packets), (2, 5), "{flow:?}");
    }
}

/// Maglev hashes the masked address: every client of a network lands on the backend of
/// the network's hash, with or without entries (every node agrees without state).
#[test]
fn maglev_picks_by_the_network() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        let mut svc = flow.network_service();
        svc.scheduler = Scheduler::Maglev;
        let plan = lab.configure(&[svc]).unwrap();
        assert_eq!(plan.services[0].info.stick_prefix, flow.stick_prefix());
        let ring = plan.services[0].ring.clone();
        let host_of = |lab: &Lab, id: u32| match lab.backend_addr(id).unwrap() {
            IpAddr::V4(a) => a.octets()[3],
            IpAddr::V6(a) => a.octets()[15],
        };
        // The network's backend, from the masked address; the unmasked hashes of the
        // clients disagree among themselves (so the test can tell).
        let (net, _) = lb_common::addr_from_ip(flow.client_network());
        let want = host_of(
            &lab,
            ring[(lb_common::hash::client_hash(&net) % ring.len() as u32) as usize],
        );
        let own: std::collections::BTreeSet<u32> = (1..=40u16)
            .map(|c| {
                let (a, _) = lb_common::addr_from_ip(flow.client(c));
                ring[(lb_common::hash::client_hash(&a) % ring.len() as u32) as usize]
            })
            .collect();
        assert!(own.len() > 1, "{flow:?}: the unmasked picks agree anyway");
        for round in 0..2 {
            for c in 1..=40u16 {
                assert_eq!(
                    backend_for(&mut lab, flow, c),
                    want,
                    "{flow:?} client {c} round {round}"
                );
            }
            assert_eq!(lab.dp.stick_entries().len(), 1, "{flow:?}");
            let keys: Vec<_> = lab.dp.stick_entries().into_iter().map(|(k, _)| k).collect();
            for k in keys {
                lab.dp.stick.remove(&k).unwrap();
            }
        }
    }
}

/// An ICMP error about a reply to a client that never sent a packet itself reaches the
/// backend of its network's entry (the quoted destination is masked too); a client of
/// another network has no entry: the error passes.
#[test]
fn icmp_errors_follow_the_networks_entry() {
    for flow in FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.network_service()]).unwrap();
        assert_eq!(backend_for(&mut lab, flow, 1), 2);
        let quote = flow.quoted_reply(77);
        let kind = flow.too_big();
        let err = Raw::icmp(flow.router(), flow.vip(), kind, &quote);
        let (action, out) = lab.run(&err.bytes()).unwrap();
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        let mut want = Raw::icmp(
            flow.router(),
            flow.backend(2),
            kind,
            &requote(&quote, flow.backend(2), BACKEND_PORT),
        );
        want.ttl -= 1;
        want.dst_mac = backend_mac(2);
        want.src_mac = lab.fx0_mac;
        assert_eq!(out, want.bytes(), "{flow:?}: NAT output differs");
        assert_icmp_checksums(&out, flow.v6, &format!("{flow:?}"));
        // A client of another network.
        let mut r = Pkt::new(
            flow.l4,
            flow.vip(),
            VIP_PORT,
            flow.other_network_client(5),
            CLIENT_PORT,
        );
        r.syn = false;
        let other = Raw::icmp(flow.router(), flow.vip(), kind, &r.bytes()[14..]).bytes();
        assert_eq!(lab.run(&other).unwrap(), (XDP_PASS, other), "{flow:?}");
        let st = lab.service_stats("web").unwrap();
        assert_eq!(
            (st.icmp_to_backend, st.icmp_unmatched, st.new_clients),
            (1, 1, 1),
            "{flow:?}"
        );
    }
}

/// A later fragment from a client of the network follows the network's entry, though
/// that client sent no first fragment; one from another network passes.
#[test]
fn fragments_follow_the_networks_entry() {
    for flow in V4_FLOWS {
        let mut lab = Lab::new().unwrap();
        lab.configure(&[flow.network_service()]).unwrap();
        let first = flow.first_fragment(1);
        let (action, out) = send(&mut lab, &first);
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        assert_eq!(out, expected_nat(&lab, flow, &first, 2), "{flow:?}");
        let f = flow.later_fragment(77, false);
        let (action, out) = lab.run(&f.bytes()).unwrap();
        assert_eq!(action, XDP_REDIRECT, "{flow:?}");
        assert_eq!(out, expected_fragment_nat(&lab, flow, &f, 2), "{flow:?}");
        let mut stranger = flow.later_fragment(1, false);
        stranger.src = flow.other_network_client(5);
        let stranger = stranger.bytes();
        assert_eq!(
            lab.run(&stranger).unwrap(),
            (XDP_PASS, stranger),
            "{flow:?} other network"
        );
        let st = lab.service_stats("web").unwrap();
        assert_eq!(
            (st.frag_forwarded, st.frag_unmatched, st.new_clients),
            (2, 1, 1),
            "{flow:?}"
        );
    }
}
