//! Data-path fuzzing over `BPF_PROG_TEST_RUN` (issue 6).
//!
//! Valid fixtures (built with etherparse by [`crate::packets`]) are mutated — randomly
//! and with knowledge of the headers — and run through the program of a [`Lab`]. An
//! oracle that parses every input on its own (by hand, from the RFCs and the documented
//! contract in `docs/ARCHITECTURE.md`, not from `lb-ebpf`) says what must come out:
//!
//! * **not ours** (not addressed to a service, no NAT reply, no ICMP error about a
//!   service flow, later fragment of no service, malformed) → `XDP_PASS`, byte-identical;
//! * **service traffic** → forwarded to the backend in the client's stick entry (NAT:
//!   destination address/port rewritten, TTL − 1, every checksum keeps its error — valid
//!   in, valid out; DSR: only the MACs change), or dropped / passed with the one counter
//!   the situation calls for (all backends down, unreachable backend, no neighbour, TTL);
//! * **NAT reply** from a backend endpoint → source rewritten to VIP:port, or passed
//!   untouched (not routable to a client), or dropped / passed with a counter;
//! * **ICMP error** quoting a service flow → to the backend owning the quoted client
//!   (never a new pick), or passed untouched with `icmp_unmatched` when there is none;
//! * **later IPv4 fragment** to a VIP → to the backend of the client's only live entry on
//!   that VIP and protocol, else passed untouched with `frag_unmatched`;
//! * **L3 DSR** (`ipip`, `gue`): the packet comes out whole behind an outer header that
//!   the oracle checks field by field from RFC 2003 / RFC 2473 / the GUE draft (variant
//!   1): version, length, DF, protocol, TTL, TOS copied, addresses (the FIB's source on
//!   the lab link, the backend), a valid IPv4 header checksum; GUE ports and length, UDP
//!   checksum 0 over IPv4 and, over IPv6, valid by full recompute whenever the inner
//!   checksums are; too big for the 1500-byte lab link once encapsulated, a packet with
//!   DF (or IPv6) is answered with an ICMP "fragmentation needed" / "packet too big"
//!   carrying 1500 minus the overhead, checked field by field (RFC 792/1191, RFC 4443),
//!   one without DF, an ICMP error or a fragment is dropped with `drop_too_big`.
//!
//! `XDP_ABORTED` always fails. Checksums are checked by recomputation: the
//! one's-complement residual of every checksummed range (IPv4 header, TCP/UDP with
//! pseudo-header, ICMP, ICMPv6, quoted IPv4 header) must be the same before and after,
//! so a valid checksum stays valid and a broken one stays broken (the balancer does not
//! validate checksums, it must not launder or corrupt them). A UDP/IPv4 checksum of 0
//! stays 0. Bytes not named by the rewrite must be identical, padding included.
//!
//! Counters: the oracle tallies the counter each packet must move; a drop or pass of
//! service traffic is checked at once against the kernel's counters, and every service's
//! counters are reconciled with the tally at the end of a run.
//!
//! Stick-table events are on (as on a cluster node): at the end, the events in the ring
//! plus those counted lost must equal the entries the data path wrote (new clients and
//! re-picks by its counters).
//!
//! A client's backend must never change during a run (no configuration changes, no
//! expiry, all picking backends up): the oracle remembers every client's backend.
//! Services that stick by network (`stick_on = "src/N"`: /24, /20, /12 and /64, /60,
//! /100) key the entry by the client address masked to the prefix, which the oracle
//! computes on its own by integer arithmetic: every client of the network (the quoted
//! client of an ICMP error, the source of a later fragment) must find that one entry, and
//! the network's backend never changes.
//!
//! Reproduce a failure with the printed seed: `STICKYLB_FUZZ_SEED=<seed>` and the same
//! `STICKYLB_FUZZ_PACKETS` / `STICKYLB_FUZZ_THREADS` (each worker is deterministic).

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use etherparse::IpNumber;
use lb_agent::loader;
use lb_common::{ServiceStats, BACKEND_DRAIN, BACKEND_UP};
use lb_model::spec::{BackendState, Forwarding, Protocol, Scheduler, ServiceSpec, StickOn};

use crate::{
    lab::{backend_mac, Lab, CLIENT_GW_MAC, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    packets::{Icmp, Pkt, Raw, L4},
};

// ---------------------------------------------------------------------------------------
// PRNG
// ---------------------------------------------------------------------------------------

/// splitmix64: tiny, seedable, good enough for fuzzing; no crate needed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u32, den: u32) -> bool {
        (self.next_u64() % den as u64) < num as u64
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A seed derived from another seed and a stream number (one stream per worker).
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut r = Rng::new(seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407));
    r.next_u64()
}

// ---------------------------------------------------------------------------------------
// The world: services, backends and the lab FIB, as the oracle knows them
// ---------------------------------------------------------------------------------------

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// How the lab FIB reaches a backend address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// Permanent neighbour: forwarded, with this backend MAC.
    Mac([u8; 6]),
    /// On-link without a neighbour entry.
    NoNeigh,
    /// An unreachable route.
    Unreachable,
}

/// One configured service, as the oracle sees it.
#[derive(Clone, Debug)]
struct Svc {
    name: String,
    vip: IpAddr,
    /// 0 = all ports.
    port: u16,
    proto: u8,
    /// L2 DSR.
    dsr: bool,
    /// L3 DSR: `Some(false)` IPIP, `Some(true)` GUE (port [`GUE_PORT`]).
    encap: Option<bool>,
    /// (address, port as configured; 0 = the service port / keep the port).
    backends: Vec<(IpAddr, u16)>,
    /// Every backend down: every new client is dropped (`drop_no_backend`).
    all_down: bool,
    /// Stickiness by network (`stick_on = "src/N"`): clients share the entry (and the
    /// backend) of their address masked to this many bits; 0 = the full address.
    stick_prefix: u8,
    /// Filled once the lab is configured.
    id: u32,
}

/// The network a client sticks by: its address with the bits past `prefix` cleared
/// (`prefix` 0 = the address itself), by integer arithmetic on the address.
fn stick_network(client: IpAddr, prefix: u8) -> IpAddr {
    if prefix == 0 {
        return client;
    }
    match client {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

impl Svc {
    /// Destination NAT (neither DSR).
    fn nat(&self) -> bool {
        !self.dsr && self.encap.is_none()
    }
}

/// The GUE port of the fuzzed GUE services.
const GUE_PORT: u16 = 6086;
/// MTU of the lab links.
const LAB_MTU: usize = 1500;

/// The lab's own address on the backends' link: the outer source the FIB gives.
fn lab_source(v6f: bool) -> IpAddr {
    if v6f {
        v6("fd00:1::1")
    } else {
        v4(198, 18, 1, 1)
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(s: &str) -> IpAddr {
    s.parse().expect("IPv6 literal")
}

fn vip(v6f: bool, b: bool) -> IpAddr {
    match (v6f, b) {
        (false, false) => v4(198, 18, 100, 100),
        (false, true) => v4(198, 18, 100, 101),
        (true, false) => v6("fd00:100::100"),
        (true, true) => v6("fd00:100::101"),
    }
}

/// Backend host `n` of the lab FIB (2..=4 with neighbours, 5 without).
fn host(v6f: bool, n: u8) -> IpAddr {
    if v6f {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, n as u16))
    } else {
        v4(198, 18, 1, n)
    }
}

fn unreachable_host(v6f: bool) -> IpAddr {
    if v6f {
        v6("fd00:9::2")
    } else {
        v4(198, 18, 9, 2)
    }
}

/// The lab FIB for backend addresses (see `lab.rs`).
fn reach(addr: IpAddr) -> Reach {
    for v6f in [false, true] {
        for n in 2..=4 {
            if addr == host(v6f, n) {
                return Reach::Mac(backend_mac(n));
            }
        }
        if addr == host(v6f, 5) {
            return Reach::NoNeigh;
        }
    }
    Reach::Unreachable
}

/// Clients of the fixtures: routable through the client gateway.
fn client(v6f: bool, n: u16) -> IpAddr {
    if v6f {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, n))
    } else {
        v4(198, 51, 100, n as u8)
    }
}

/// Whether the kernel's FIB may refuse a fast path for a packet from `src` (IPv6 sources
/// that are not global unicast or unique local: link-local, multicast, unspecified…,
/// which the kernel does not forward). The data path then falls back to the kernel.
fn fib_may_decline(src: IpAddr) -> bool {
    match src {
        IpAddr::V4(_) => false,
        IpAddr::V6(a) => {
            let s0 = a.segments()[0];
            !(s0 & 0xe000 == 0x2000 || s0 & 0xfe00 == 0xfc00)
        }
    }
}

/// Whether the FIB may refuse the fast path for this packet: an odd IPv6 source, or a
/// datagram larger than the lab links' MTU (1500: "fragmentation needed").
fn fib_may_refuse(ip: &Ip, b: &[u8]) -> bool {
    fib_may_decline(ip.src(b)) || ip.len > 1500
}

/// Whether the lab FIB routes `dst` through the client gateway without a neighbour entry
/// (fx1, `.253` / `::fd`).
fn via_unresolved_gateway(dst: IpAddr) -> bool {
    match dst {
        IpAddr::V4(a) => a.octets()[..3] == [198, 51, 101],
        IpAddr::V6(a) => a.segments()[..4] == [0x2001, 0xdb8, 0xd, 0],
    }
}

/// A client behind the unresolved gateway.
fn unresolved_client(v6f: bool, n: u16) -> IpAddr {
    if v6f {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, n))
    } else {
        v4(198, 51, 101, n as u8)
    }
}

/// Whether the lab FIB routes `dst` through the client gateway (fx1).
fn via_client_gateway(dst: IpAddr) -> bool {
    match dst {
        IpAddr::V4(a) => a.octets()[..3] == [198, 51, 100],
        IpAddr::V6(a) => a.segments()[..4] == [0x2001, 0xdb8, 0xc, 0],
    }
}

fn services() -> Vec<Svc> {
    let mut out = Vec::new();
    for v6f in [false, true] {
        let f = if v6f { "6" } else { "4" };
        let a = vip(v6f, false);
        let b = vip(v6f, true);
        let mk = |name: &str, vip, port, proto, dsr, backends: Vec<(IpAddr, u16)>| Svc {
            name: format!("{name}{f}"),
            vip,
            port,
            proto,
            dsr,
            encap: None,
            backends,
            all_down: false,
            stick_prefix: 0,
            id: 0,
        };
        let h = |n| host(v6f, n);
        out.push(mk(
            "tcp-nat",
            a,
            80,
            PROTO_TCP,
            false,
            vec![(h(2), 8080), (h(3), 8080), (h(4), 8080)],
        ));
        // Stickiness by network, on a byte boundary (/24, /64) and inside a byte or a
        // word (/20, /60; /12, /100) of Maglev, L2 DSR and IPIP services.
        let mut udp_nat = mk(
            "udp-nat",
            a,
            53,
            PROTO_UDP,
            false,
            vec![(h(2), 5353), (h(3), 5353)],
        );
        udp_nat.stick_prefix = if v6f { 64 } else { 24 };
        out.push(udp_nat);
        out.push(mk(
            "tcp-dsr",
            a,
            443,
            PROTO_TCP,
            true,
            vec![(h(2), 443), (h(3), 443), (h(4), 443)],
        ));
        out.push(mk(
            "udp-any",
            b,
            0,
            PROTO_UDP,
            false,
            vec![(h(3), 0), (h(4), 0)],
        ));
        let mut any_dsr = mk(
            "tcp-any-dsr",
            b,
            0,
            PROTO_TCP,
            true,
            vec![(h(2), 0), (h(4), 0)],
        );
        any_dsr.stick_prefix = if v6f { 60 } else { 20 };
        out.push(any_dsr);
        let mut down = mk(
            "down",
            a,
            81,
            PROTO_TCP,
            false,
            vec![(h(2), 81), (h(3), 81)],
        );
        down.all_down = true;
        out.push(down);
        out.push(mk(
            "unreach",
            a,
            82,
            PROTO_UDP,
            false,
            vec![(unreachable_host(v6f), 82)],
        ));
        out.push(mk("noneigh", a, 83, PROTO_TCP, false, vec![(h(5), 83)]));
        out.push(mk("noneigh-dsr", a, 84, PROTO_TCP, true, vec![(h(5), 84)]));
        let mut ipip = mk(
            "tcp-ipip",
            a,
            85,
            PROTO_TCP,
            false,
            vec![(h(2), 85), (h(3), 85)],
        );
        ipip.encap = Some(false);
        ipip.stick_prefix = if v6f { 100 } else { 12 };
        out.push(ipip);
        let mut gue = mk(
            "udp-gue",
            a,
            86,
            PROTO_UDP,
            false,
            vec![(h(3), 86), (h(4), 86)],
        );
        gue.encap = Some(true);
        out.push(gue);
        let mut gue_tcp = mk("tcp-gue", b, 87, PROTO_TCP, false, vec![(h(3), 87)]);
        gue_tcp.encap = Some(true);
        out.push(gue_tcp);
        let mut noneigh = mk("noneigh-ipip", a, 88, PROTO_UDP, false, vec![(h(5), 88)]);
        noneigh.encap = Some(false);
        out.push(noneigh);
    }
    out
}

fn spec(s: &Svc) -> ServiceSpec {
    let mut spec = ServiceSpec::new(&s.name, SocketAddr::new(s.vip, s.port));
    spec.protocol = if s.proto == PROTO_TCP {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    if s.dsr {
        spec.forwarding = Forwarding::Dsr;
    }
    match s.encap {
        Some(false) => spec.forwarding = Forwarding::Ipip,
        Some(true) => {
            spec.forwarding = Forwarding::Gue;
            spec.encap.gue_port = GUE_PORT;
        }
        None => {}
    }
    if s.name.starts_with("udp-nat") || s.name.starts_with("tcp-any-dsr") {
        spec.scheduler = Scheduler::Maglev;
        spec.maglev_size = Some(251);
    }
    if s.stick_prefix != 0 {
        spec.stick_on = StickOn::Network(s.stick_prefix);
    }
    // No expiry: a client's backend must never change during a run.
    spec.expire = None;
    for &(addr, port) in &s.backends {
        spec = spec.backend(SocketAddr::new(addr, port));
        if s.all_down {
            spec.backends.last_mut().expect("just pushed").state = BackendState::Down;
        }
    }
    spec
}

/// A backend slot as configured (from the applied plan).
#[derive(Clone, Copy, Debug)]
struct BackendInfo {
    addr: IpAddr,
    /// Host order; 0 = keep the port.
    port: u16,
    state: u8,
    service_id: u32,
}

// ---------------------------------------------------------------------------------------
// Byte helpers, checksums
// ---------------------------------------------------------------------------------------

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn sum16(data: &[u8], mut sum: u64) -> u64 {
    let (words, rest) = data.as_chunks::<2>();
    for w in words {
        sum += u16::from_be_bytes(*w) as u64;
    }
    if let [last] = rest {
        sum += (*last as u64) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The one's-complement residual of a checksummed range, modulo 0xffff (so that the two
/// zeros of one's complement compare equal). 0 means "checksum valid".
fn residual(sum: u64) -> u16 {
    fold(sum) % 0xffff
}

/// Sum of the pseudo-header for `proto` and `len` with the addresses in `b` at `l3`.
fn pseudo(b: &[u8], l3: usize, is_v6: bool, proto: u8, len: usize) -> u64 {
    let mut s = if is_v6 {
        sum16(&b[l3 + 8..l3 + 40], 0)
    } else {
        sum16(&b[l3 + 12..l3 + 20], 0)
    };
    s += proto as u64;
    s += (len as u64) & 0xffff;
    s += (len as u64) >> 16;
    s
}

/// Where the data path reads the IP header: after one 802.1Q tag at most.
#[derive(Clone, Copy, Debug)]
struct Ip {
    vlan: bool,
    l3: usize,
    is_v6: bool,
    /// Header length (IPv4: IHL × 4, IPv6: 40).
    hlen: usize,
    /// Declared datagram length (IPv4 total length, IPv6 payload length + 40).
    len: usize,
    proto: u8,
    ttl: u8,
    /// IPv4 fragment offset (8-byte units) and more-fragments flag.
    frag_off: u16,
    mf: bool,
}

impl Ip {
    fn l4(&self) -> usize {
        self.l3 + self.hlen
    }
    /// Declared L4 length.
    fn l4_len(&self) -> usize {
        self.len - self.hlen
    }
    fn src(&self, b: &[u8]) -> IpAddr {
        if self.is_v6 {
            let o: [u8; 16] = b[self.l3 + 8..self.l3 + 24].try_into().unwrap();
            IpAddr::from(o)
        } else {
            let o: [u8; 4] = b[self.l3 + 12..self.l3 + 16].try_into().unwrap();
            IpAddr::from(o)
        }
    }
    fn dst(&self, b: &[u8]) -> IpAddr {
        if self.is_v6 {
            let o: [u8; 16] = b[self.l3 + 24..self.l3 + 40].try_into().unwrap();
            IpAddr::from(o)
        } else {
            let o: [u8; 4] = b[self.l3 + 16..self.l3 + 20].try_into().unwrap();
            IpAddr::from(o)
        }
    }
    fn src_off(&self) -> usize {
        self.l3 + if self.is_v6 { 8 } else { 12 }
    }
    fn dst_off(&self) -> usize {
        self.l3 + if self.is_v6 { 24 } else { 16 }
    }
    fn ttl_off(&self) -> usize {
        self.l3 + if self.is_v6 { 7 } else { 8 }
    }
}

/// The IP header of a frame, judged by the rules of the contract: Ethernet, at most one
/// 802.1Q tag, IPv4 (version 4, IHL ≥ 5, IHL ≤ total length, datagram within the frame)
/// or IPv6 (version 6, datagram within the frame). `Err` says why it is none.
fn ip_header(b: &[u8]) -> Result<Ip, &'static str> {
    if b.len() < 14 {
        return Err("shorter than Ethernet");
    }
    let mut et = be16(b, 12);
    let mut l3 = 14;
    let mut vlan = false;
    if et == 0x8100 {
        if b.len() < 18 {
            return Err("truncated 802.1Q tag");
        }
        et = be16(b, 16);
        l3 = 18;
        vlan = true;
    }
    match et {
        0x0800 => {
            if b.len() < l3 + 20 {
                return Err("truncated IPv4 header");
            }
            if b[l3] >> 4 != 4 {
                return Err("IPv4 ethertype, other IP version");
            }
            let hlen = (b[l3] & 0x0f) as usize * 4;
            if hlen < 20 {
                return Err("IHL < 5");
            }
            let len = be16(b, l3 + 2) as usize;
            if len < hlen {
                return Err("IPv4 total length < IHL");
            }
            if l3 + len > b.len() {
                return Err("IPv4 datagram beyond the frame");
            }
            let fo = be16(b, l3 + 6);
            Ok(Ip {
                vlan,
                l3,
                is_v6: false,
                hlen,
                len,
                proto: b[l3 + 9],
                ttl: b[l3 + 8],
                frag_off: fo & 0x1fff,
                mf: fo & 0x2000 != 0,
            })
        }
        0x86dd => {
            if b.len() < l3 + 40 {
                return Err("truncated IPv6 header");
            }
            if b[l3] >> 4 != 6 {
                return Err("IPv6 ethertype, other IP version");
            }
            let len = be16(b, l3 + 4) as usize + 40;
            if l3 + len > b.len() {
                return Err("IPv6 payload beyond the frame");
            }
            let len = len.max(40);
            Ok(Ip {
                vlan,
                l3,
                is_v6: true,
                hlen: 40,
                len,
                proto: b[l3 + 6],
                ttl: b[l3 + 7],
                frag_off: 0,
                mf: false,
            })
        }
        0x8100 | 0x88a8 => Err("double VLAN tag"),
        _ => Err("not IP"),
    }
}

/// Recomputes every checksum of a frame that has a recognisable layout (used by the
/// mutators to keep packets valid after a structural change; never by the oracle).
fn fix_checksums(b: &mut [u8]) {
    // Tolerant walk: up to two tags.
    let mut l3 = 14;
    if b.len() < 14 {
        return;
    }
    let mut et = be16(b, 12);
    for _ in 0..2 {
        if (et == 0x8100 || et == 0x88a8) && b.len() >= l3 + 4 {
            et = be16(b, l3 + 2);
            l3 += 4;
        }
    }
    let (is_v6, hlen, len, proto) = match et {
        0x0800 if b.len() >= l3 + 20 => {
            let hlen = (b[l3] & 0x0f) as usize * 4;
            if hlen < 20 || b.len() < l3 + hlen {
                return;
            }
            b[l3 + 10] = 0;
            b[l3 + 11] = 0;
            let c = !fold(sum16(&b[l3..l3 + hlen], 0));
            put16(b, l3 + 10, c);
            if be16(b, l3 + 6) & 0x1fff != 0 {
                return;
            }
            (false, hlen, be16(b, l3 + 2) as usize, b[l3 + 9])
        }
        0x86dd if b.len() >= l3 + 40 => (true, 40, be16(b, l3 + 4) as usize + 40, b[l3 + 6]),
        _ => return,
    };
    if len < hlen || l3 + len > b.len() {
        return;
    }
    let (l4, l4_len) = (l3 + hlen, len - hlen);
    let off = match proto {
        PROTO_TCP if l4_len >= 18 => 16,
        PROTO_UDP if l4_len >= 8 => 6,
        PROTO_ICMP if !is_v6 && l4_len >= 4 => 2,
        PROTO_ICMPV6 if is_v6 && l4_len >= 4 => 2,
        _ => return,
    };
    if proto == PROTO_UDP && !is_v6 && be16(b, l4 + 6) == 0 {
        return; // "no checksum" stays so
    }
    put16(b, l4 + off, 0);
    let mut s = sum16(&b[l4..l4 + l4_len], 0);
    if proto != PROTO_ICMP {
        s += pseudo(b, l3, is_v6, proto, l4_len);
    }
    let mut c = !fold(s);
    if proto == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    put16(b, l4 + off, c);
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// A valid packet to start mutating from.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: String,
    pub bytes: Vec<u8>,
}

const CLIENTS: u16 = 40;
const CLIENT_PORT: u16 = 40000;

fn l4_of(proto: u8) -> L4 {
    if proto == PROTO_TCP {
        L4::Tcp
    } else {
        L4::Udp
    }
}

fn payload(rng: &mut Rng) -> Vec<u8> {
    let n = *rng.pick(&[0usize, 1, 14, 57, 200, 700]);
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ 0x5a).collect()
}

/// A request fixture to a service port (all-ports services get assorted ports).
fn request(rng: &mut Rng, s: &Svc, c: u16) -> (String, Pkt) {
    let v6f = s.vip.is_ipv6();
    let dport = if s.port == 0 {
        *rng.pick(&[1u16, 53, 80, 443, 5353, 8080, 65535])
    } else {
        s.port
    };
    let mut p = Pkt::new(l4_of(s.proto), client(v6f, c), CLIENT_PORT, s.vip, dport);
    p.payload = payload(rng);
    if s.encap.is_some() && rng.chance(1, 3) {
        // Around the lab MTU once encapsulated: some fit, some must be answered.
        p.payload = vec![0x3c; rng.range(1390, 1470)];
    }
    if !v6f && rng.chance(1, 8) {
        p.df = false;
    }
    p.syn = rng.chance(1, 2);
    let mut name = format!("request {} client {c} port {dport}", s.name);
    if rng.chance(1, 5) {
        p.vlan = Some(rng.range(1, 4094) as u16);
        name += " vlan";
    }
    if !v6f && rng.chance(1, 5) {
        p.ipv4_options = if rng.chance(1, 2) {
            vec![1, 1, 1, 0]
        } else {
            // Record route with room for 9 addresses, then end of list.
            let mut o = vec![7, 39, 4];
            o.resize(39, 0);
            o.push(0);
            o
        };
        name += " options";
    }
    if !v6f && s.proto == PROTO_UDP && rng.chance(1, 4) {
        p.udp_no_checksum = true;
        name += " udp-csum-0";
    }
    if !v6f && rng.chance(1, 6) {
        p.more_fragments = true;
        name += " first-fragment";
    }
    (name, p)
}

fn icmp_kind(rng: &mut Rng, v6f: bool) -> Icmp {
    if v6f {
        if rng.chance(1, 2) {
            Icmp::PacketTooBig(1280)
        } else {
            Icmp::PortUnreachableV6
        }
    } else {
        Icmp::FragmentationNeeded(1400)
    }
}

/// Builds the corpus: every service × a few clients × variants, NAT replies, ICMP errors
/// quoting service flows, later fragments, and traffic that is none of these.
pub fn corpus(seed: u64) -> Vec<Fixture> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let svcs = services();
    for s in &svcs {
        let v6f = s.vip.is_ipv6();
        for _ in 0..24 {
            let c = rng.range(1, CLIENTS as usize) as u16;
            let (name, p) = request(&mut rng, s, c);
            out.push(Fixture {
                name,
                bytes: p.bytes(),
            });
        }
        // NAT replies from each backend endpoint.
        if s.nat() {
            for &(addr, port) in &s.backends {
                for _ in 0..4 {
                    let sport = match (port, s.port) {
                        (0, 0) => *rng.pick(&[53u16, 80, 5353, 9999]),
                        (0, p) => p,
                        (p, _) => p,
                    };
                    let c = rng.range(1, CLIENTS as usize) as u16;
                    let mut p = Pkt::new(l4_of(s.proto), addr, sport, client(v6f, c), CLIENT_PORT);
                    p.syn = false;
                    p.payload = payload(&mut rng);
                    if rng.chance(1, 5) {
                        p.vlan = Some(7);
                    }
                    out.push(Fixture {
                        name: format!("reply {} from {addr}:{sport} to client {c}", s.name),
                        bytes: p.bytes(),
                    });
                }
                // One to a client behind the gateway without a neighbour entry.
                let sport = if port != 0 {
                    port
                } else if s.port != 0 {
                    s.port
                } else {
                    80
                };
                let c = rng.range(1, CLIENTS as usize) as u16;
                let mut p = Pkt::new(
                    l4_of(s.proto),
                    addr,
                    sport,
                    unresolved_client(v6f, c),
                    CLIENT_PORT,
                );
                p.syn = false;
                out.push(Fixture {
                    name: format!(
                        "reply {} from {addr}:{sport} to unresolved client {c}",
                        s.name
                    ),
                    bytes: p.bytes(),
                });
            }
        }
        // ICMP errors about the reply VIP:port → client.
        for _ in 0..8 {
            let c = rng.range(1, CLIENTS as usize) as u16;
            let sport = if s.port == 0 { 5353 } else { s.port };
            let mut q = Pkt::new(l4_of(s.proto), s.vip, sport, client(v6f, c), CLIENT_PORT);
            q.syn = false;
            q.payload = payload(&mut rng);
            let mut quoted = q.bytes()[14..].to_vec();
            if !v6f && rng.chance(1, 3) {
                quoted.truncate(28);
            } else if quoted.len() > 600 {
                quoted.truncate(600);
            }
            let router = if v6f {
                v6("2001:db8:c::fe0")
            } else {
                v4(198, 51, 100, 254)
            };
            let kind = icmp_kind(&mut rng, v6f);
            out.push(Fixture {
                name: format!("icmp {kind:?} about {} client {c}", s.name),
                bytes: Raw::icmp(router, s.vip, kind, &quoted).bytes(),
            });
        }
        // Later fragments from clients.
        if !v6f {
            for _ in 0..6 {
                let c = rng.range(1, CLIENTS as usize) as u16;
                let proto = if s.proto == PROTO_TCP {
                    IpNumber::TCP
                } else {
                    IpNumber::UDP
                };
                let mut f = Raw::new(client(false, c), s.vip, proto, payload(&mut rng));
                f.fragment_offset = rng.range(1, 180) as u16;
                f.more_fragments = rng.chance(1, 2);
                out.push(Fixture {
                    name: format!("later fragment to {} client {c}", s.name),
                    bytes: f.bytes(),
                });
            }
        }
    }
    // Not for any service.
    for v6f in [false, true] {
        for _ in 0..10 {
            let c = rng.range(1, CLIENTS as usize) as u16;
            let l4 = if rng.chance(1, 2) { L4::Tcp } else { L4::Udp };
            let cases = [
                (host(v6f, 3), 80u16, "to a backend address"),
                (vip(v6f, false), 8443, "to the VIP, other port"),
                (vip(v6f, false), 22, "to the VIP, port 22"),
                (
                    if v6f {
                        v6("2001:db8::1")
                    } else {
                        v4(8, 8, 8, 8)
                    },
                    53,
                    "elsewhere",
                ),
            ];
            for (dst, dport, what) in cases {
                let mut p = Pkt::new(l4, client(v6f, c), CLIENT_PORT, dst, dport);
                p.payload = payload(&mut rng);
                out.push(Fixture {
                    name: format!("not ours: {what}"),
                    bytes: p.bytes(),
                });
            }
            let echo = Raw::icmp(client(v6f, c), vip(v6f, false), Icmp::EchoRequest, b"ping");
            out.push(Fixture {
                name: "not ours: echo request to the VIP".into(),
                bytes: echo.bytes(),
            });
            let gre = Raw::new(
                client(v6f, c),
                vip(v6f, false),
                IpNumber::GRE,
                payload(&mut rng),
            );
            out.push(Fixture {
                name: "not ours: GRE to the VIP".into(),
                bytes: gre.bytes(),
            });
        }
    }
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xaa, 0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xaa, 198, 51, 100, 1]);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 100, 100]);
    out.push(Fixture {
        name: "not ours: ARP".into(),
        bytes: arp,
    });
    out
}

// ---------------------------------------------------------------------------------------
// Mutators
// ---------------------------------------------------------------------------------------

/// Tolerant offsets for the mutators: IP header offset and ethertype after up to two tags.
fn l3_of(b: &[u8]) -> Option<(usize, u16)> {
    if b.len() < 14 {
        return None;
    }
    let mut l3 = 14;
    let mut et = be16(b, 12);
    for _ in 0..2 {
        if (et == 0x8100 || et == 0x88a8) && b.len() >= l3 + 4 {
            et = be16(b, l3 + 2);
            l3 += 4;
        }
    }
    Some((l3, et))
}

/// (l3, is_v6, hlen, proto) when an IP header of the ethertype's family is there.
fn ip_of(b: &[u8]) -> Option<(usize, bool, usize, u8)> {
    let (l3, et) = l3_of(b)?;
    match et {
        0x0800 if b.len() >= l3 + 20 => {
            let hlen = ((b[l3] & 0x0f) as usize * 4).max(20);
            Some((l3, false, hlen, b[l3 + 9]))
        }
        0x86dd if b.len() >= l3 + 40 => Some((l3, true, 40, b[l3 + 6])),
        _ => None,
    }
}

/// Adds `delta` to the declared IP length.
fn adjust_ip_len(b: &mut [u8], l3: usize, is_v6: bool, delta: isize) {
    let off = if is_v6 { l3 + 4 } else { l3 + 2 };
    let v = be16(b, off) as isize + delta;
    put16(b, off, v.clamp(0, 0xffff) as u16);
}

fn random_addr(rng: &mut Rng, is_v6: bool) -> IpAddr {
    match rng.below(7) {
        0 => client(is_v6, rng.range(1, CLIENTS as usize) as u16),
        1 | 2 => {
            // A new client, routable (many clients get created).
            if is_v6 {
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0xc,
                    0,
                    0,
                    0,
                    rng.u16() & 0x3fff,
                    rng.u16(),
                ))
            } else {
                v4(198, 51, 100, rng.byte())
            }
        }
        3 => host(is_v6, rng.range(1, 5) as u8),
        4 => vip(is_v6, rng.chance(1, 2)),
        5 => {
            // A client from anywhere (not routable for replies).
            if is_v6 {
                let mut o = [0u8; 16];
                o[0] = 0x20;
                o[1] = 0x01;
                for x in &mut o[2..] {
                    *x = rng.byte();
                }
                IpAddr::from(o)
            } else {
                v4(
                    10 + (rng.byte() & 1),
                    rng.byte() & 0x3f,
                    rng.byte(),
                    rng.byte(),
                )
            }
        }
        _ => {
            if is_v6 {
                let mut o = [0u8; 16];
                for x in &mut o {
                    *x = rng.byte();
                }
                IpAddr::from(o)
            } else {
                IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32))
            }
        }
    }
}

fn set_addr(b: &mut [u8], off: usize, a: IpAddr) {
    match a {
        IpAddr::V4(a) => b[off..off + 4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b[off..off + 16].copy_from_slice(&a.octets()),
    }
}

const PORTS: [u16; 12] = [0, 1, 22, 53, 80, 81, 82, 83, 84, 443, 5353, 8080];

/// Names of the mutators, by number.
const MUTATORS: [&str; 24] = [
    "truncate",
    "ip length",
    "ihl",
    "udp length",
    "tcp flags/doff",
    "add ipv4 options",
    "garble ipv4 options",
    "ipv6 extension header",
    "add vlan tag",
    "remove vlan tag",
    "ethertype",
    "ip version",
    "protocol",
    "bit flips",
    "source address",
    "source address",
    "destination address",
    "port",
    "fragment bits",
    "ttl",
    "trailing padding",
    "payload size",
    "l4 checksum",
    "icmp error fields",
];

/// Applies one random mutation; returns its name and description, or `None` when it
/// does not apply to this packet (the caller tries another).
fn mutate(rng: &mut Rng, b: &mut Vec<u8>) -> Option<(&'static str, String)> {
    let what = rng.below(MUTATORS.len());
    mutate_with(rng, b, what).map(|d| (MUTATORS[what], d))
}

fn mutate_with(rng: &mut Rng, b: &mut Vec<u8>, what: usize) -> Option<String> {
    let fix = rng.chance(4, 5);
    let desc = match what {
        0 => {
            if b.len() <= 14 {
                return None;
            }
            let n = rng.range(14, b.len() - 1);
            b.truncate(n);
            return Some(format!("truncate to {n}"));
        }
        1 => {
            let (l3, is_v6, hlen, _) = ip_of(b)?;
            let off = if is_v6 { l3 + 4 } else { l3 + 2 };
            let cur = be16(b, off) as isize;
            let frame = (b.len() - l3) as isize - if is_v6 { 40 } else { 0 };
            let v = match rng.below(8) {
                0 => 0,
                1 => hlen as isize - if is_v6 { 40 } else { 0 },
                2 => cur - rng.range(1, 8) as isize,
                3 => cur + rng.range(1, 8) as isize,
                4 => frame,
                5 => hlen as isize + rng.range(0, 28) as isize - if is_v6 { 40 } else { 0 },
                6 => 0xffff,
                _ => rng.u16() as isize,
            };
            put16(b, off, v.clamp(0, 0xffff) as u16);
            format!("ip length {cur} -> {}", be16(b, off))
        }
        2 => {
            let (l3, is_v6, _, _) = ip_of(b)?;
            if is_v6 {
                return None;
            }
            let ihl = rng.below(16) as u8;
            b[l3] = (b[l3] & 0xf0) | ihl;
            format!("IHL {ihl}")
        }
        3 => {
            let (l3, _, hlen, proto) = ip_of(b)?;
            let l4 = l3 + hlen;
            if proto != PROTO_UDP || b.len() < l4 + 8 {
                return None;
            }
            let cur = be16(b, l4 + 4);
            let v = match rng.below(4) {
                0 => 0,
                1 => cur.wrapping_add(rng.range(1, 8) as u16),
                2 => cur.wrapping_sub(rng.range(1, 8) as u16),
                _ => rng.u16(),
            };
            put16(b, l4 + 4, v);
            format!("udp length {cur} -> {v}")
        }
        4 => {
            let (l3, _, hlen, proto) = ip_of(b)?;
            let l4 = l3 + hlen;
            if proto != PROTO_TCP || b.len() < l4 + 20 {
                return None;
            }
            b[l4 + 13] = rng.byte();
            if rng.chance(1, 4) {
                b[l4 + 12] = rng.byte() & 0xf0;
            }
            format!("tcp flags {:#04x} doff {}", b[l4 + 13], b[l4 + 12] >> 4)
        }
        5 => {
            let (l3, is_v6, hlen, _) = ip_of(b)?;
            if is_v6 || hlen >= 60 || b.len() < l3 + hlen {
                return None;
            }
            let words = rng.range(1, (60 - hlen) / 4);
            let mut opts = vec![0u8; words * 4];
            match rng.below(4) {
                0 => opts.fill(1),
                1 => {
                    opts[0] = 7;
                    opts[1] = (words * 4 - 1).max(3) as u8;
                    opts[2] = 4;
                }
                2 => {} // end of list, zero padding
                _ => opts.iter_mut().for_each(|x| *x = rng.byte()),
            }
            let at = l3 + hlen;
            b.splice(at..at, opts);
            b[l3] = (b[l3] & 0xf0) | ((hlen / 4 + words) as u8);
            adjust_ip_len(b, l3, false, (words * 4) as isize);
            format!("ipv4 options +{} bytes", words * 4)
        }
        6 => {
            let (l3, is_v6, hlen, _) = ip_of(b)?;
            if is_v6 || hlen <= 20 || b.len() < l3 + hlen {
                return None;
            }
            let n = rng.range(1, 4);
            for _ in 0..n {
                let i = l3 + 20 + rng.below(hlen - 20);
                b[i] = rng.byte();
            }
            format!("garble {n} ipv4 option bytes")
        }
        7 => {
            let (l3, is_v6, _, proto) = ip_of(b)?;
            if !is_v6 {
                return None;
            }
            let kind = *rng.pick(&[0u8, 43, 44, 60]);
            let mut ext = vec![proto, 0, 0, 0, 0, 0, 0, 0];
            if kind == 44 && rng.chance(1, 2) {
                // Fragment header, offset > 0.
                ext[2] = rng.byte();
                ext[3] = rng.byte() & 0xf9;
            } else {
                for x in &mut ext[2..] {
                    *x = if rng.chance(1, 2) { 0 } else { rng.byte() };
                }
                if kind == 0 || kind == 60 {
                    ext[2] = 1; // PadN
                    ext[3] = 4;
                }
            }
            b.splice(l3 + 40..l3 + 40, ext);
            b[l3 + 6] = kind;
            adjust_ip_len(b, l3, true, 8);
            format!("ipv6 extension header {kind}")
        }
        8 => {
            let tpid = if rng.chance(3, 4) { 0x8100u16 } else { 0x88a8 };
            let tci = rng.u16();
            let mut tag = tpid.to_be_bytes().to_vec();
            tag.extend_from_slice(&tci.to_be_bytes());
            b.splice(12..12, tag);
            return Some(format!("add tag {tpid:#06x} tci {tci:#06x}"));
        }
        9 => {
            if b.len() < 18 || (be16(b, 12) != 0x8100 && be16(b, 12) != 0x88a8) {
                return None;
            }
            b.drain(12..16);
            return Some("remove tag".into());
        }
        10 => {
            let et = *rng.pick(&[
                0x0800u16, 0x86dd, 0x0806, 0x8100, 0x88a8, 0x88cc, 0x0000, 0xffff,
            ]);
            let et = if rng.chance(1, 6) { rng.u16() } else { et };
            // The outer or the inner (after the first tag) ethertype.
            let off = if b.len() >= 18 && be16(b, 12) == 0x8100 && rng.chance(1, 2) {
                16
            } else {
                12
            };
            put16(b, off, et);
            return Some(format!("ethertype at {off} = {et:#06x}"));
        }
        11 => {
            let (l3, _, _, _) = ip_of(b)?;
            let v = rng.below(16) as u8;
            b[l3] = (b[l3] & 0x0f) | (v << 4);
            format!("ip version {v}")
        }
        12 => {
            let (l3, is_v6, _, _) = ip_of(b)?;
            let p = *rng.pick(&[0u8, 1, 6, 17, 58, 41, 47, 132, 255, 43, 44, 60]);
            b[if is_v6 { l3 + 6 } else { l3 + 9 }] = p;
            format!("protocol {p}")
        }
        13 => {
            let (l3, _, hlen, _) = ip_of(b).unwrap_or((14, false, 20, 0));
            let end = b.len().min(l3 + hlen + 24);
            let n = rng.range(1, 4);
            let mut at = Vec::new();
            for _ in 0..n {
                let i = rng.below(end);
                b[i] ^= 1 << rng.below(8);
                at.push(i);
            }
            // Bit flips are not followed by a checksum fix-up half the time.
            if rng.chance(1, 2) {
                return Some(format!("bit flips at {at:?}"));
            }
            format!("bit flips at {at:?}")
        }
        14 | 15 => {
            let (l3, is_v6, _, _) = ip_of(b)?;
            let a = random_addr(rng, is_v6);
            let off = if is_v6 { l3 + 8 } else { l3 + 12 };
            if b.len() < off + if is_v6 { 16 } else { 4 } {
                return None;
            }
            set_addr(b, off, a);
            format!("source {a}")
        }
        16 => {
            let (l3, is_v6, _, _) = ip_of(b)?;
            let a = random_addr(rng, is_v6);
            let off = if is_v6 { l3 + 24 } else { l3 + 16 };
            if b.len() < off + if is_v6 { 16 } else { 4 } {
                return None;
            }
            set_addr(b, off, a);
            format!("destination {a}")
        }
        17 => {
            let (l3, _, hlen, proto) = ip_of(b)?;
            let l4 = l3 + hlen;
            if (proto != PROTO_TCP && proto != PROTO_UDP) || b.len() < l4 + 4 {
                return None;
            }
            let off = l4 + if rng.chance(1, 2) { 0 } else { 2 };
            let port = if rng.chance(2, 3) {
                *rng.pick(&PORTS)
            } else {
                rng.u16()
            };
            put16(b, off, port);
            format!("port at {} = {port}", off - l4)
        }
        18 => {
            let (l3, is_v6, _, _) = ip_of(b)?;
            if is_v6 {
                return None;
            }
            let fo = match rng.below(5) {
                0 => 0x2000,                               // first fragment
                1 => 0x2000 | rng.range(1, 0x1fff) as u16, // middle
                2 => rng.range(1, 0x1fff) as u16,          // last
                3 => 0x4000,                               // DF
                _ => rng.u16(),
            };
            put16(b, l3 + 6, fo);
            format!("frag_off {fo:#06x}")
        }
        19 => {
            let (l3, is_v6, _, _) = ip_of(b)?;
            let t = *rng.pick(&[0u8, 1, 1, 2, 255]);
            b[if is_v6 { l3 + 7 } else { l3 + 8 }] = t;
            format!("ttl {t}")
        }
        20 => {
            let n = rng.range(1, 64);
            for _ in 0..n {
                b.push(rng.byte());
            }
            return Some(format!("{n} bytes of trailing padding"));
        }
        21 => {
            let (l3, is_v6, hlen, _) = ip_of(b)?;
            let l4 = l3 + hlen;
            if b.len() < l4 {
                return None;
            }
            // Consistent payload size change.
            if rng.chance(1, 2) {
                let n = rng.range(1, 100);
                for _ in 0..n {
                    b.push(rng.byte());
                }
                adjust_ip_len(b, l3, is_v6, n as isize);
                if b.len() >= l4 + 8 && b[if is_v6 { l3 + 6 } else { l3 + 9 }] == PROTO_UDP {
                    let v = be16(b, l4 + 4).wrapping_add(n as u16);
                    put16(b, l4 + 4, v);
                }
                format!("payload +{n}")
            } else {
                let n = rng.range(1, 40).min(b.len() - l4);
                b.truncate(b.len() - n);
                adjust_ip_len(b, l3, is_v6, -(n as isize));
                if b.len() >= l4 + 8 && b[if is_v6 { l3 + 6 } else { l3 + 9 }] == PROTO_UDP {
                    let v = be16(b, l4 + 4).wrapping_sub(n as u16);
                    put16(b, l4 + 4, v);
                }
                format!("payload -{n}")
            }
        }
        22 => {
            let (l3, _, hlen, proto) = ip_of(b)?;
            let l4 = l3 + hlen;
            let off = match proto {
                PROTO_TCP => 16,
                PROTO_UDP => 6,
                PROTO_ICMP | PROTO_ICMPV6 => 2,
                _ => return None,
            };
            if b.len() < l4 + off + 2 {
                return None;
            }
            let v = if rng.chance(1, 2) { 0 } else { rng.u16() };
            put16(b, l4 + off, v);
            return Some(format!("l4 checksum {v:#06x}"));
        }
        _ => {
            // Inside an ICMP error: type/code, quoted header fields, quoted ports.
            let (l3, is_v6, hlen, proto) = ip_of(b)?;
            let l4 = l3 + hlen;
            if (proto != PROTO_ICMP && proto != PROTO_ICMPV6) || b.len() < l4 + 8 {
                return None;
            }
            let q = l4 + 8;
            match rng.below(6) {
                0 => {
                    let t = *rng.pick(&[0u8, 1, 2, 3, 4, 5, 8, 11, 128, 135]);
                    b[l4] = t;
                    format!("icmp type {t}")
                }
                1 => {
                    b[l4 + 1] = rng.byte() & 0x0f;
                    format!("icmp code {}", b[l4 + 1])
                }
                2 if b.len() > q => {
                    b[q] = if is_v6 {
                        rng.byte()
                    } else {
                        *rng.pick(&[0x45u8, 0x46, 0x4f, 0x65, 0x44])
                    };
                    format!("quoted version/IHL {:#04x}", b[q])
                }
                3 if b.len() > q + 9 => {
                    let p = *rng.pick(&[6u8, 17, 1, 58, 0, 44]);
                    b[if is_v6 { q + 6 } else { q + 9 }] = p;
                    format!("quoted protocol {p}")
                }
                4 => {
                    let qh = if is_v6 { 40 } else { 20 };
                    let off = q + qh + if rng.chance(1, 2) { 0 } else { 2 };
                    if b.len() < off + 2 {
                        return None;
                    }
                    let port = *rng.pick(&PORTS);
                    put16(b, off, port);
                    format!("quoted port {port}")
                }
                _ => {
                    let qh = if is_v6 { 40 } else { 20 };
                    let off = q + if is_v6 { 24 } else { 16 };
                    if b.len() < q + qh {
                        return None;
                    }
                    let a = random_addr(rng, is_v6);
                    set_addr(b, off, a);
                    format!("quoted destination {a}")
                }
            }
        }
    };
    if fix {
        fix_checksums(b);
        Some(desc + " (checksums fixed)")
    } else {
        Some(desc)
    }
}

// ---------------------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------------------

/// What a packet is, by the contract.
#[derive(Clone, Debug)]
enum Class {
    /// Not for the balancer: must pass byte-identical.
    NotOurs(&'static str),
    /// A TCP/UDP packet to a service.
    Service { svc: usize, ip: Ip, client: IpAddr },
    /// A TCP/UDP packet from a NAT service's backend endpoint.
    Reply { svc: usize, ip: Ip },
    /// An ICMP error quoting a reply of a service to `client`. `sure`: the quote is a
    /// plausible packet; otherwise (quoted version/fragment garbage) passing is fine too.
    IcmpError {
        svc: usize,
        ip: Ip,
        client: IpAddr,
        sure: bool,
    },
    /// A later IPv4 fragment to a VIP with these candidate services.
    LaterFragment {
        cands: Vec<usize>,
        ip: Ip,
        client: IpAddr,
    },
}

/// The IP header of a packet the oracle expects something of.
fn class_ip(c: &Class) -> &Ip {
    match c {
        Class::Service { ip, .. }
        | Class::Reply { ip, .. }
        | Class::IcmpError { ip, .. }
        | Class::LaterFragment { ip, .. } => ip,
        Class::NotOurs(_) => unreachable!("nothing but a pass is expected of these"),
    }
}

impl Class {
    fn label(&self) -> &'static str {
        match self {
            Class::NotOurs(_) => "not ours",
            Class::Service { .. } => "service",
            Class::Reply { .. } => "nat reply",
            Class::IcmpError { .. } => "icmp error",
            Class::LaterFragment { .. } => "later fragment",
        }
    }
}

struct Oracle {
    svcs: Vec<Svc>,
    /// (addr, port, proto) → service index.
    by_vip: HashMap<(IpAddr, u16, u8), usize>,
    /// NAT backend endpoints (addr, port, proto) → service index.
    by_backend: HashMap<(IpAddr, u16, u8), usize>,
}

impl Oracle {
    fn new(svcs: Vec<Svc>) -> Oracle {
        let mut by_vip = HashMap::new();
        let mut by_backend = HashMap::new();
        for (i, s) in svcs.iter().enumerate() {
            by_vip.insert((s.vip, s.port, s.proto), i);
            if s.nat() {
                for &(addr, port) in &s.backends {
                    let port = if port == 0 { s.port } else { port };
                    by_backend.insert((addr, port, s.proto), i);
                }
            }
        }
        Oracle {
            svcs,
            by_vip,
            by_backend,
        }
    }

    fn service(&self, addr: IpAddr, port: u16, proto: u8) -> Option<usize> {
        self.by_vip
            .get(&(addr, port, proto))
            .or_else(|| self.by_vip.get(&(addr, 0, proto)))
            .copied()
    }

    fn reply(&self, addr: IpAddr, port: u16, proto: u8) -> Option<usize> {
        self.by_backend
            .get(&(addr, port, proto))
            .or_else(|| self.by_backend.get(&(addr, 0, proto)))
            .copied()
    }

    /// What `b` is. Headers after the IP header must lie inside the declared IP length
    /// (not merely in the frame) for the packet to be ours.
    fn classify(&self, b: &[u8]) -> Class {
        let ip = match ip_header(b) {
            Ok(ip) => ip,
            Err(why) => return Class::NotOurs(why),
        };
        let l4 = ip.l4();
        // What the L4 part may use: the declared IP length.
        let avail = ip.l4_len();
        let later = !ip.is_v6 && ip.frag_off != 0;
        let first = !ip.is_v6 && ip.frag_off == 0 && ip.mf;
        match ip.proto {
            PROTO_TCP | PROTO_UDP if later => {
                let (dst, src) = (ip.dst(b), ip.src(b));
                let cands: Vec<usize> = (0..self.svcs.len())
                    .filter(|&i| self.svcs[i].vip == dst && self.svcs[i].proto == ip.proto)
                    .collect();
                if cands.is_empty() {
                    return Class::NotOurs("later fragment, no service on its VIP");
                }
                Class::LaterFragment {
                    cands,
                    ip,
                    client: src,
                }
            }
            PROTO_TCP | PROTO_UDP => {
                let hlen = if ip.proto == PROTO_TCP { 20 } else { 8 };
                if l4 + hlen > b.len() {
                    return Class::NotOurs("L4 header beyond the frame");
                }
                if hlen > avail {
                    return Class::NotOurs("L4 header beyond the IP length");
                }
                let (sport, dport) = (be16(b, l4), be16(b, l4 + 2));
                let (src, dst) = (ip.src(b), ip.dst(b));
                if let Some(svc) = self.service(dst, dport, ip.proto) {
                    return Class::Service {
                        svc,
                        ip,
                        client: src,
                    };
                }
                if let Some(svc) = self.reply(src, sport, ip.proto) {
                    return Class::Reply { svc, ip };
                }
                Class::NotOurs("no service, no backend endpoint")
            }
            PROTO_ICMP if !ip.is_v6 => {
                if later || first {
                    return Class::NotOurs("fragmented ICMP");
                }
                if avail < 8 {
                    return Class::NotOurs("ICMP header beyond the IP length");
                }
                if b[l4] != 3 {
                    return Class::NotOurs("ICMP, not destination unreachable");
                }
                // ICMP header, quoted IPv4 header without options, quoted ports.
                if ip.l4_len() < 8 + 20 + 4 && b.len() >= l4 + 8 + 20 + 4 {
                    return Class::NotOurs("quote beyond the IP length");
                }
                if avail < 8 + 20 + 4 {
                    return Class::NotOurs("quote too short for the ports");
                }
                let q = l4 + 8;
                if b[q] != 0x45 {
                    return Class::NotOurs("quoted header not IPv4 without options");
                }
                let qproto = b[q + 9];
                if qproto != PROTO_TCP && qproto != PROTO_UDP {
                    return Class::NotOurs("quote not TCP/UDP");
                }
                let qsrc = IpAddr::from(<[u8; 4]>::try_from(&b[q + 12..q + 16]).unwrap());
                let qdst = IpAddr::from(<[u8; 4]>::try_from(&b[q + 16..q + 20]).unwrap());
                let qsport = be16(b, q + 20);
                match self.service(qsrc, qsport, qproto) {
                    Some(svc) => Class::IcmpError {
                        svc,
                        ip,
                        client: qdst,
                        // A quoted later fragment has no ports.
                        sure: be16(b, q + 6) & 0x1fff == 0,
                    },
                    None => Class::NotOurs("ICMP error about no service"),
                }
            }
            PROTO_ICMPV6 if ip.is_v6 => {
                if avail < 8 {
                    return Class::NotOurs("ICMPv6 header beyond the IP length");
                }
                if b[l4] != 1 && b[l4] != 2 {
                    return Class::NotOurs("ICMPv6, not unreachable / too big");
                }
                if ip.l4_len() < 8 + 40 + 4 && b.len() >= l4 + 8 + 40 + 4 {
                    return Class::NotOurs("quote beyond the IP length");
                }
                if avail < 8 + 40 + 4 {
                    return Class::NotOurs("quote too short for the ports");
                }
                let q = l4 + 8;
                if b[q] >> 4 != 6 {
                    return Class::NotOurs("quoted header not IPv6");
                }
                let qnext = b[q + 6];
                if qnext != PROTO_TCP && qnext != PROTO_UDP {
                    return Class::NotOurs("quote not TCP/UDP (or extension headers)");
                }
                let qsrc = IpAddr::from(<[u8; 16]>::try_from(&b[q + 8..q + 24]).unwrap());
                let qdst = IpAddr::from(<[u8; 16]>::try_from(&b[q + 24..q + 40]).unwrap());
                let qsport = be16(b, q + 40);
                match self.service(qsrc, qsport, qnext) {
                    Some(svc) => Class::IcmpError {
                        svc,
                        ip,
                        client: qdst,
                        sure: true,
                    },
                    None => Class::NotOurs("ICMPv6 error about no service"),
                }
            }
            _ => Class::NotOurs("not TCP, UDP or ICMP of the family"),
        }
    }
}

/// Which counter a drop or pass must move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counter {
    PassTtl,
    DropNoBackend,
    DropNoRoute,
    FibMiss,
    DropNoNeigh,
    IcmpUnmatched,
    FragUnmatched,
    DropTooBig,
}

fn counter(st: &mut ServiceStats, c: Counter) -> &mut u64 {
    match c {
        Counter::PassTtl => &mut st.pass_ttl,
        Counter::DropNoBackend => &mut st.drop_no_backend,
        Counter::DropNoRoute => &mut st.drop_no_route,
        Counter::FibMiss => &mut st.fib_miss,
        Counter::DropNoNeigh => &mut st.drop_no_neigh,
        Counter::IcmpUnmatched => &mut st.icmp_unmatched,
        Counter::FragUnmatched => &mut st.frag_unmatched,
        Counter::DropTooBig => &mut st.drop_too_big,
    }
}

/// The counters the tally follows (others — bytes, new clients… — are zeroed).
fn tracked(mut s: ServiceStats) -> ServiceStats {
    s.bytes = 0;
    s.reply_bytes = 0;
    s.new_clients = 0;
    s.repick_expired = 0;
    s.repick_down = 0;
    // Depends on how full the (never read) report ring is, not on the packet.
    s.neigh_report_lost = 0;
    s
}

/// A rewrite the output must show, relative to the input.
#[derive(Default, Debug)]
struct Rewrite {
    /// (offset, bytes) written.
    writes: Vec<(usize, Vec<u8>)>,
    /// Offsets of 16-bit checksum fields that may change.
    csum_fields: Vec<usize>,
    /// Checksummed ranges whose residual must be kept.
    domains: Vec<Domain>,
}

#[derive(Debug, Clone, Copy)]
enum Domain {
    /// Plain sum over bytes `[start, start + len)` (IPv4 header, ICMP, quoted header).
    Plain { start: usize, len: usize },
    /// TCP/UDP/ICMPv6 with the pseudo-header of the IP header at `l3`.
    Pseudo {
        l3: usize,
        is_v6: bool,
        proto: u8,
        start: usize,
        len: usize,
    },
    /// UDP/IPv4 with checksum 0 in the input: must stay 0.
    UdpZero { field: usize },
}

fn domain_residual(b: &[u8], d: Domain) -> u16 {
    match d {
        Domain::Plain { start, len, .. } => residual(sum16(&b[start..start + len], 0)),
        Domain::Pseudo {
            l3,
            is_v6,
            proto,
            start,
            len,
        } => residual(sum16(
            &b[start..start + len],
            pseudo(b, l3, is_v6, proto, len),
        )),
        Domain::UdpZero { .. } => 0,
    }
}

impl Rewrite {
    fn macs(&mut self, dmac: [u8; 6], smac: [u8; 6]) {
        self.writes.push((0, dmac.to_vec()));
        self.writes.push((6, smac.to_vec()));
    }
    fn addr(&mut self, off: usize, a: IpAddr) {
        let v = match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        self.writes.push((off, v));
    }
    fn port(&mut self, off: usize, p: u16) {
        self.writes.push((off, p.to_be_bytes().to_vec()));
    }
    /// IPv4 header checksum domain (no-op for IPv6).
    fn ip_header(&mut self, ip: &Ip) {
        if !ip.is_v6 {
            self.csum_fields.push(ip.l3 + 10);
            self.domains.push(Domain::Plain {
                start: ip.l3,
                len: ip.hlen,
            });
        }
    }
    /// TCP/UDP checksum domain of a (non-later-fragment) packet.
    fn l4(&mut self, b: &[u8], ip: &Ip) {
        let l4 = ip.l4();
        let field = l4 + if ip.proto == PROTO_TCP { 16 } else { 6 };
        self.csum_fields.push(field);
        if ip.proto == PROTO_UDP && !ip.is_v6 && be16(b, field) == 0 {
            self.domains.push(Domain::UdpZero { field });
        } else {
            self.domains.push(Domain::Pseudo {
                l3: ip.l3,
                is_v6: ip.is_v6,
                proto: ip.proto,
                start: l4,
                len: ip.l4_len(),
            });
        }
    }
    fn ttl(&mut self, b: &[u8], ip: &Ip) {
        self.writes
            .push((ip.ttl_off(), vec![b[ip.ttl_off()].wrapping_sub(1)]));
    }

    /// Checks `out` against `input` with this rewrite applied; `Err` describes the first
    /// difference.
    fn check(&self, input: &[u8], out: &[u8]) -> Result<(), String> {
        if out.len() != input.len() {
            return Err(format!("length {} -> {}", input.len(), out.len()));
        }
        let mut want = input.to_vec();
        for (off, v) in &self.writes {
            want[*off..*off + v.len()].copy_from_slice(v);
        }
        for &f in &self.csum_fields {
            want[f] = out[f];
            want[f + 1] = out[f + 1];
        }
        if let Some(i) = (0..out.len()).find(|&i| out[i] != want[i]) {
            return Err(format!(
                "byte {i} is {:#04x}, expected {:#04x}",
                out[i], want[i]
            ));
        }
        for &d in &self.domains {
            if let Domain::UdpZero { field } = d {
                if be16(out, field) != 0 {
                    return Err("UDP/IPv4 checksum 0 was changed".into());
                }
                continue;
            }
            let (a, z) = (domain_residual(input, d), domain_residual(out, d));
            if a != z {
                return Err(format!(
                    "checksum over {d:?}: residual {a:#06x} in the input, {z:#06x} in the output{}",
                    if a == 0 {
                        " (valid in, invalid out)"
                    } else {
                        ""
                    }
                ));
            }
        }
        Ok(())
    }
}

/// An L3 DSR output: the input whole behind an outer header to `backend`.
#[derive(Debug, Clone, Copy)]
struct Tunnel {
    backend: IpAddr,
    mac: [u8; 6],
    gue: bool,
}

/// Whether the inner packet's own checksums are valid (IPv4 header, and the transport
/// checksum with its pseudo-header, or ICMP's): only then must the GUE/IPv6 checksum,
/// derived from them, verify. `None`: no checksum covers the packet (IPv4 fragments,
/// UDP/IPv4 without checksum), so the GUE/IPv6 checksum must be 0.
fn inner_checksums_ok(b: &[u8], ip: &Ip) -> Option<bool> {
    if !ip.is_v6 && (ip.mf || ip.frag_off != 0) {
        return None;
    }
    let l4 = ip.l4();
    if !ip.is_v6 && ip.proto == PROTO_UDP && ip.l4_len() >= 8 && be16(b, l4 + 6) == 0 {
        return None;
    }
    let hdr_ok = ip.is_v6 || residual(sum16(&b[ip.l3..ip.l3 + ip.hlen], 0)) == 0;
    let seg = &b[l4..ip.l3 + ip.len];
    let l4_ok = match ip.proto {
        PROTO_ICMP => residual(sum16(seg, 0)) == 0,
        p => residual(sum16(seg, pseudo(b, ip.l3, ip.is_v6, p, seg.len()))) == 0,
    };
    Some(hdr_ok && l4_ok)
}

impl Tunnel {
    fn overhead(&self) -> usize {
        (if self.backend.is_ipv6() { 40 } else { 20 }) + if self.gue { 8 } else { 0 }
    }
    /// Whether the encapsulated packet fits the lab link.
    fn fits(&self, ip: &Ip) -> bool {
        ip.len + self.overhead() <= LAB_MTU
    }

    /// Checks `out` as the encapsulation of `input`.
    fn check(&self, input: &[u8], out: &[u8], ip: &Ip, fx0: [u8; 6]) -> Result<(), String> {
        let oh = self.overhead();
        if out.len() != input.len() + oh {
            return Err(format!(
                "length {} -> {}, expected + {oh}",
                input.len(),
                out.len()
            ));
        }
        if out[..6] != self.mac || out[6..12] != fx0 {
            return Err("Ethernet addresses are not lab → backend".into());
        }
        let o = ip.l3;
        let et = if ip.vlan {
            if out[12..16] != input[12..16] {
                return Err("VLAN tag changed".into());
            }
            16
        } else {
            12
        };
        let outer_v6 = self.backend.is_ipv6();
        if be16(out, et) != if outer_v6 { 0x86dd } else { 0x0800 } {
            return Err(format!("ethertype {:#06x}", be16(out, et)));
        }
        if out[o + oh..] != input[o..] {
            return Err("the inner packet (or the padding after it) changed".into());
        }
        let inner_tos = if ip.is_v6 {
            ((input[o] & 0x0f) << 4) | (input[o + 1] >> 4)
        } else {
            input[o + 1]
        };
        let inner_proto = if ip.is_v6 { 41 } else { 4 };
        let proto = if self.gue { PROTO_UDP } else { inner_proto };
        let lab = lab_source(outer_v6);
        let addr = |at: usize, n: usize| -> IpAddr {
            if n == 4 {
                IpAddr::from(<[u8; 4]>::try_from(&out[at..at + 4]).unwrap())
            } else {
                IpAddr::from(<[u8; 16]>::try_from(&out[at..at + 16]).unwrap())
            }
        };
        let hdr = if outer_v6 {
            let tc = ((out[o] & 0x0f) << 4) | (out[o + 1] >> 4);
            let fields = [
                (out[o] >> 4 == 6, "version"),
                (tc == inner_tos, "traffic class not copied"),
                (
                    be16(out, o + 4) as usize == ip.len + oh - 40,
                    "payload length",
                ),
                (out[o + 6] == proto, "next header"),
                (out[o + 7] > 0, "hop limit"),
                (addr(o + 8, 16) == lab, "source is not the FIB's"),
                (
                    addr(o + 24, 16) == self.backend,
                    "destination is not the backend",
                ),
            ];
            if let Some((_, what)) = fields.iter().find(|(ok, _)| !ok) {
                return Err(format!("outer IPv6 header: {what}"));
            }
            40
        } else {
            let fields = [
                (out[o] == 0x45, "version / IHL"),
                (out[o + 1] == inner_tos, "TOS not copied"),
                (be16(out, o + 2) as usize == ip.len + oh, "total length"),
                (be16(out, o + 6) == 0x4000, "flags: DF only, offset 0"),
                (out[o + 8] > 0, "TTL"),
                (out[o + 9] == proto, "protocol"),
                (residual(sum16(&out[o..o + 20], 0)) == 0, "header checksum"),
                (addr(o + 12, 4) == lab, "source is not the FIB's"),
                (
                    addr(o + 16, 4) == self.backend,
                    "destination is not the backend",
                ),
            ];
            if let Some((_, what)) = fields.iter().find(|(ok, _)| !ok) {
                return Err(format!("outer IPv4 header: {what}"));
            }
            20
        };
        if self.gue {
            let u = o + hdr;
            let udp_len = ip.len + 8;
            if be16(out, u) < 49152 || be16(out, u + 2) != GUE_PORT {
                return Err(format!(
                    "GUE ports {} -> {}: source from the dynamic range, destination {GUE_PORT}",
                    be16(out, u),
                    be16(out, u + 2)
                ));
            }
            if be16(out, u + 4) as usize != udp_len {
                return Err("GUE UDP length".into());
            }
            let check = be16(out, u + 6);
            match (outer_v6, inner_checksums_ok(input, ip)) {
                (false, _) | (true, None) if check != 0 => {
                    return Err(format!("UDP checksum {check:#06x}, expected 0"));
                }
                (true, Some(true)) => {
                    let sum = sum16(
                        &out[u..u + udp_len],
                        pseudo(out, o, true, PROTO_UDP, udp_len),
                    );
                    if check == 0 || residual(sum) != 0 {
                        return Err("GUE UDP/IPv6 checksum does not verify".into());
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Checks `out` as the balancer's answer to `input` (a client packet too big once
/// encapsulated): ICMP "fragmentation needed" / ICMPv6 "packet too big" from the VIP to
/// the client, sent back where it came from, carrying `mtu`, quoting the start of the
/// packet (RFC 1812 §4.3.2.3: up to 576 bytes in all; RFC 4443 §2.4: up to 1280).
fn check_too_big(input: &[u8], out: &[u8], ip: &Ip, mtu: usize) -> Result<(), String> {
    let o = ip.l3;
    let (hdr, quote) = if ip.is_v6 { (40, 1232) } else { (20, 548) };
    if out.len() != o + hdr + 8 + quote {
        return Err(format!("answer of {} bytes", out.len()));
    }
    if out[..6] != input[6..12] || out[6..12] != input[..6] || out[12..o] != input[12..o] {
        return Err("answer not sent back to the sender's MAC (and tag)".into());
    }
    if out[o + hdr + 8..] != input[o..o + quote] {
        return Err("the quote is not the start of the packet".into());
    }
    let (src, dst) = (ip.src(input), ip.dst(input));
    let m = o + hdr;
    if ip.is_v6 {
        let a = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&out[at..at + 16]).unwrap());
        let msg = &out[m..m + 8 + quote];
        let fields = [
            (out[o] >> 4 == 6, "version"),
            (be16(out, o + 4) as usize == 8 + quote, "payload length"),
            (out[o + 6] == PROTO_ICMPV6, "next header"),
            (
                a(o + 8) == dst && a(o + 24) == src,
                "not from the VIP to the client",
            ),
            (out[m] == 2 && out[m + 1] == 0, "not packet too big"),
            (
                u32::from_be_bytes(out[m + 4..m + 8].try_into().unwrap()) as usize == mtu,
                "MTU",
            ),
            (
                residual(sum16(msg, pseudo(out, o, true, PROTO_ICMPV6, msg.len()))) == 0,
                "ICMPv6 checksum",
            ),
        ];
        if let Some((_, what)) = fields.iter().find(|(ok, _)| !ok) {
            return Err(format!("packet too big: {what}"));
        }
    } else {
        let a = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&out[at..at + 4]).unwrap());
        let fields = [
            (out[o] == 0x45, "version / IHL"),
            (be16(out, o + 2) as usize == 28 + quote, "total length"),
            (be16(out, o + 6) & 0x3fff == 0, "fragment bits"),
            (out[o + 8] > 0 && out[o + 9] == PROTO_ICMP, "TTL / protocol"),
            (residual(sum16(&out[o..o + 20], 0)) == 0, "header checksum"),
            (
                a(o + 12) == dst && a(o + 16) == src,
                "not from the VIP to the client",
            ),
            (out[m] == 3 && out[m + 1] == 4, "not fragmentation needed"),
            (
                be16(out, m + 4) == 0 && be16(out, m + 6) as usize == mtu,
                "unused / MTU",
            ),
            (residual(sum16(&out[m..], 0)) == 0, "ICMP checksum"),
        ];
        if let Some((_, what)) = fields.iter().find(|(ok, _)| !ok) {
            return Err(format!("fragmentation needed: {what}"));
        }
    }
    Ok(())
}

/// The acceptable outcomes for one packet.
#[derive(Debug)]
enum Expect {
    /// Sent on (`XDP_TX` when tagged, else `XDP_REDIRECT`) inside this tunnel.
    Encap { tunnel: Tunnel },
    /// `XDP_TX`: the client is told to use `mtu`.
    TooBig { mtu: usize },
    /// `XDP_PASS`, identical; `counter` moves (in one of `svcs`) when set.
    Pass {
        counter: Option<(Vec<usize>, Counter)>,
    },
    /// Sent on (`XDP_TX` when tagged, else `XDP_REDIRECT`) with this rewrite.
    Forward { rewrite: Rewrite },
    /// `XDP_PASS` with this rewrite (already NAT'd, the kernel resolves the neighbour),
    /// `fib_miss` of `svc` moves.
    PassRewritten { rewrite: Rewrite },
    /// `XDP_DROP`, the counter of `svc` moves.
    Drop { counter: Counter },
    /// `XDP_PASS` with this rewrite behind a [`lb_common::QueueMeta`] for the tc program
    /// (unresolved next hop: the kernel's neighbour queue sends it): exactly `meta`, or
    /// any next hop with the right magic when `None`.
    Queued {
        rewrite: Rewrite,
        meta: Option<Vec<u8>>,
    },
}

/// The XDP metadata the data path puts in front of a packet for the neighbour queue.
fn queue_meta(hop: IpAddr, ifindex: u32) -> Vec<u8> {
    let (addr, family) = lb_common::addr_from_ip(hop);
    let m = lb_common::QueueMeta {
        magic: lb_common::QUEUE_MAGIC,
        ifindex,
        family: family as u32,
        addr,
    };
    // SAFETY: a repr(C) struct of plain integers without padding.
    unsafe {
        std::slice::from_raw_parts(
            (&m as *const lb_common::QueueMeta).cast::<u8>(),
            std::mem::size_of::<lb_common::QueueMeta>(),
        )
    }
    .to_vec()
}

fn check_queued(
    input: &[u8],
    out: &[u8],
    rewrite: &Rewrite,
    meta: &Option<Vec<u8>>,
) -> Result<(), String> {
    let n = std::mem::size_of::<lb_common::QueueMeta>();
    if out.len() != input.len() + n {
        return Err(format!(
            "queued: length {} -> {} (want {} bytes of metadata)",
            input.len(),
            out.len(),
            n
        ));
    }
    match meta {
        Some(m) if out[..n] != m[..] => {
            return Err(format!(
                "queued: metadata {:02x?}, expected {m:02x?}",
                &out[..n]
            ))
        }
        None if out[..4] != lb_common::QUEUE_MAGIC.to_ne_bytes() => {
            return Err("queued: no metadata magic".into())
        }
        _ => {}
    }
    rewrite.check(input, &out[n..])
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

/// Figures of one run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub packets: u64,
    pub elapsed: Duration,
    /// XDP action → count.
    pub actions: [u64; 5],
    /// Oracle class → count.
    pub classes: HashMap<&'static str, u64>,
    /// Why "not ours" packets were not ours → count.
    pub not_ours: HashMap<&'static str, u64>,
    /// Service traffic (incl. replies, ICMP errors, fragments) forwarded.
    pub forwarded: u64,
    /// L3 DSR outcomes: encapsulated, answered with the MTU, dropped as too big.
    pub encapsulated: u64,
    pub too_big_answered: u64,
    pub too_big_dropped: u64,
    pub clients: u64,
    pub mutations: HashMap<&'static str, u64>,
}

impl Report {
    fn merge(&mut self, o: &Report) {
        self.packets += o.packets;
        self.encapsulated += o.encapsulated;
        self.too_big_answered += o.too_big_answered;
        self.too_big_dropped += o.too_big_dropped;
        self.elapsed = self.elapsed.max(o.elapsed);
        for i in 0..5 {
            self.actions[i] += o.actions[i];
        }
        for (k, v) in &o.classes {
            *self.classes.entry(k).or_default() += v;
        }
        for (k, v) in &o.not_ours {
            *self.not_ours.entry(k).or_default() += v;
        }
        for (k, v) in &o.mutations {
            *self.mutations.entry(k).or_default() += v;
        }
        self.forwarded += o.forwarded;
        self.clients += o.clients;
    }

    pub fn service_traffic(&self) -> u64 {
        self.packets - self.classes.get("not ours").copied().unwrap_or(0)
    }

    pub fn print(&self) {
        let secs = self.elapsed.as_secs_f64();
        println!(
            "fuzz: {} packets in {:.1} s ({:.0} packets/s)",
            self.packets,
            secs,
            self.packets as f64 / secs.max(1e-9)
        );
        let names = ["ABORTED", "DROP", "PASS", "TX", "REDIRECT"];
        let hist: Vec<String> = names
            .iter()
            .zip(self.actions)
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        println!("fuzz: actions: {}", hist.join(", "));
        println!(
            "fuzz: L3 DSR: {} encapsulated, {} answered too big, {} dropped too big",
            self.encapsulated, self.too_big_answered, self.too_big_dropped
        );
        let mut classes: Vec<_> = self.classes.iter().collect();
        classes.sort();
        println!(
            "fuzz: service traffic {} ({} forwarded), {} distinct clients; classes: {}",
            self.service_traffic(),
            self.forwarded,
            self.clients,
            classes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut why: Vec<_> = self.not_ours.iter().collect();
        why.sort_by(|a, b| b.1.cmp(a.1));
        println!(
            "fuzz: not ours because: {}",
            why.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        let mut m: Vec<_> = self.mutations.iter().collect();
        m.sort();
        println!(
            "fuzz: mutations: {}",
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    pub packets: u64,
    pub threads: usize,
}

impl Settings {
    /// From `STICKYLB_FUZZ_SEED`, `STICKYLB_FUZZ_PACKETS`, `STICKYLB_FUZZ_THREADS`, with
    /// these defaults: a fixed seed mixed with the clock (printed), `packets`, the CPUs
    /// (at most 4).
    pub fn from_env(default_packets: u64) -> Result<Settings> {
        let seed = match std::env::var("STICKYLB_FUZZ_SEED") {
            Ok(s) => parse_u64(&s).context("STICKYLB_FUZZ_SEED")?,
            Err(_) => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                0x5717_C4B1_0000_0000 ^ (t & 0xffff_ffff)
            }
        };
        let packets = match std::env::var("STICKYLB_FUZZ_PACKETS") {
            Ok(s) => parse_u64(&s).context("STICKYLB_FUZZ_PACKETS")?,
            Err(_) => default_packets,
        };
        let threads = match std::env::var("STICKYLB_FUZZ_THREADS") {
            Ok(s) => parse_u64(&s).context("STICKYLB_FUZZ_THREADS")? as usize,
            Err(_) => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
        }
        .max(1);
        Ok(Settings {
            seed,
            packets,
            threads,
        })
    }
}

/// Decimal, or hex with `0x`; `_` separators allowed.
pub fn parse_u64(s: &str) -> Result<u64> {
    let s = s.trim().replace('_', "");
    Ok(match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16)?,
        None => s.parse()?,
    })
}

/// Runs `settings.packets` packets split over `settings.threads` workers, each with its
/// own lab (namespace, program, maps) and its own seed stream. Fails with a replayable
/// description on the first violation.
pub fn run(settings: &Settings) -> Result<Report> {
    println!(
        "fuzz: seed {:#x}, {} packets, {} worker(s) (replay: STICKYLB_FUZZ_SEED={:#x} STICKYLB_FUZZ_PACKETS={} STICKYLB_FUZZ_THREADS={})",
        settings.seed,
        settings.packets,
        settings.threads,
        settings.seed,
        settings.packets,
        settings.threads
    );
    let per = settings.packets / settings.threads as u64;
    let extra = settings.packets % settings.threads as u64;
    let results: Vec<Result<Report>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..settings.threads)
            .map(|w| {
                let n = per + if (w as u64) < extra { 1 } else { 0 };
                let seed = settings.seed;
                std::thread::Builder::new()
                    .name(format!("fuzz-{w}"))
                    .spawn_scoped(s, move || worker(seed, w, n))
                    .expect("spawn fuzz worker")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    });
    let mut total = Report::default();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(r) => total.merge(&r),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!(
            "fuzz failed (seed {:#x}):\n{}",
            settings.seed,
            errors.join("\n")
        );
    }
    Ok(total)
}

/// Enters the lab's network namespace for the rest of this thread's life (the FIB the
/// program consults is the one of the thread that runs it).
fn enter_netns(lab: &Lab) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let path = lab.ns.path();
    let f = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: plain syscall on a valid, open fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Counters the tally follows: the drop/pass ones and the per-packet forward ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Drop(Counter),
    Packets,
    ReplyPackets,
    IcmpToBackend,
    FragForwarded,
    NeighQueued,
    TooBigAnswered,
}

fn field(st: &mut ServiceStats, f: Field) -> &mut u64 {
    match f {
        Field::Drop(c) => counter(st, c),
        Field::Packets => &mut st.packets,
        Field::ReplyPackets => &mut st.reply_packets,
        Field::IcmpToBackend => &mut st.icmp_to_backend,
        Field::FragForwarded => &mut st.frag_forwarded,
        Field::NeighQueued => &mut st.neigh_queued,
        Field::TooBigAnswered => &mut st.too_big_answered,
    }
}

/// Which service a counter moves in: one, or exactly one of several (later fragments:
/// `frag_unmatched` is counted in the first candidate the data path finds).
#[derive(Clone, Debug)]
enum Who {
    One(usize),
    AnyOf(Vec<usize>),
}

/// One acceptable outcome and the counters it moves.
#[derive(Debug)]
struct Alt {
    expect: Expect,
    effects: Vec<(Who, Field)>,
}

impl Alt {
    fn pass() -> Alt {
        Alt {
            expect: Expect::Pass { counter: None },
            effects: Vec::new(),
        }
    }
    fn pass_counted(who: Who, c: Counter) -> Alt {
        let svcs = match &who {
            Who::One(i) => vec![*i],
            Who::AnyOf(v) => v.clone(),
        };
        Alt {
            expect: Expect::Pass {
                counter: Some((svcs, c)),
            },
            effects: vec![(who, Field::Drop(c))],
        }
    }
    fn drop(svc: usize, c: Counter) -> Alt {
        Alt {
            expect: Expect::Drop { counter: c },
            effects: vec![(Who::One(svc), Field::Drop(c))],
        }
    }
}

/// The lab (program, maps) as a worker uses it.
struct Env<'a> {
    xdp: &'a aya::programs::Xdp,
    dp: &'a lb_agent::dataplane::Dataplane,
    fx0_mac: [u8; 6],
    fx1_mac: [u8; 6],
    fx0_ifindex: u32,
    fx1_ifindex: u32,
}

struct Worker<'a> {
    env: Env<'a>,
    oracle: Oracle,
    backends: HashMap<u32, BackendInfo>,
    /// Expected counters per service (index into `oracle.svcs`).
    tally: Vec<ServiceStats>,
    /// (service index, client) → backend id, as first seen.
    memory: HashMap<(usize, IpAddr), u32>,
    report: Report,
    out: Vec<u8>,
}

/// Clients remembered before the memory is forgotten (the stick table is an LRU much
/// larger than this, so a remembered client is never evicted).
const MEMORY_CAP: usize = 100_000;
/// Stick table of each lab: room for every client a long run creates between two
/// forgettings of the memory, many times over.
const STICK_TABLE: u32 = 1 << 20;

fn worker(seed: u64, w: usize, packets: u64) -> Result<Report> {
    let wseed = derive_seed(seed, w as u64);
    // With stick-table events on, as a cluster node runs: every entry written must be
    // announced or counted lost (checked at the end).
    let mut lab = Lab::with_options(&loader::LoadOptions {
        stick_table_size: STICK_TABLE,
        stick_events: true,
        ..Default::default()
    })
    .context("lab")?;
    let mut events =
        lb_agent::event_ring::EventRing::take(&mut lab.ebpf).context("the events rings")?;
    let lost: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(
        lab.ebpf
            .take_map(lb_common::MAP_STICK_EVENTS_LOST)
            .context("the lost-events counter")?,
    )?;
    let mut svcs = services();
    let specs: Vec<ServiceSpec> = svcs.iter().map(spec).collect();
    let plan = lab.configure(&specs).context("configure")?;
    for s in &mut svcs {
        s.id = lab.ids.service_id(&s.name).context("service id")?;
    }
    let backends = plan
        .backends
        .iter()
        .map(|b| {
            (
                b.id,
                BackendInfo {
                    addr: b.addr.ip(),
                    port: u16::from_be(b.value.port),
                    state: b.value.state,
                    service_id: b.value.service_id,
                },
            )
        })
        .collect();
    enter_netns(&lab)?;
    let corpus = corpus(wseed);
    let (fx0_mac, fx1_mac) = (lab.fx0_mac, lab.fx1_mac);
    let (fx0_ifindex, fx1_ifindex) = (lab.fx0_ifindex, lab.fx1_ifindex);
    let Lab { ebpf, dp, .. } = &mut lab;
    let xdp: &aya::programs::Xdp = loader::program(ebpf)?;
    let n_svcs = svcs.len();
    let mut wk = Worker {
        env: Env {
            xdp,
            dp: &*dp,
            fx0_mac,
            fx1_mac,
            fx0_ifindex,
            fx1_ifindex,
        },
        oracle: Oracle::new(svcs),
        backends,
        tally: vec![ServiceStats::default(); n_svcs],
        memory: HashMap::new(),
        report: Report::default(),
        out: Vec::new(),
    };
    let start = Instant::now();
    let mut clients = 0u64;
    for i in 0..packets {
        let mut rng = Rng::new(derive_seed(wseed, i + 1));
        let fx = &corpus[rng.below(corpus.len())];
        let mut pkt = fx.bytes.clone();
        let n = match rng.below(10) {
            0 | 1 => 0,
            2..=5 => 1,
            6 | 7 => 2,
            8 => 3,
            _ => rng.range(4, 8),
        };
        let mut chain = Vec::new();
        let mut tries = 0;
        while chain.len() < n && tries < 4 * n + 4 {
            tries += 1;
            if let Some((kind, d)) = mutate(&mut rng, &mut pkt) {
                *wk.report.mutations.entry(kind).or_default() += 1;
                chain.push(d);
            }
        }
        // The kernel refuses test frames shorter than Ethernet; keep within a page.
        if pkt.len() < 14 {
            pkt.resize(14, 0);
        }
        pkt.truncate(2048);
        if let Err(e) = wk.step(&pkt) {
            bail!(
                "worker {w} (seed stream {wseed:#x}) packet {i}: {e}\n  fixture: {}\n  mutations: {}\n  input  ({} bytes): {}\n  output ({} bytes): {}\n  replay: STICKYLB_FUZZ_SEED={seed:#x}, same STICKYLB_FUZZ_PACKETS and STICKYLB_FUZZ_THREADS",
                fx.name,
                if chain.is_empty() { "none".to_string() } else { chain.join(" → ") },
                pkt.len(),
                hex(&pkt),
                wk.out.len(),
                hex(&wk.out),
            );
        }
        if wk.memory.len() >= MEMORY_CAP {
            clients += wk.memory.len() as u64;
            wk.memory.clear();
        }
    }
    // Every counter of every service must match the tally.
    for i in 0..n_svcs {
        wk.verify_counters(i)
            .map_err(|e| anyhow::anyhow!("worker {w} (seed {seed:#x}) at the end: {e}"))?;
    }
    // Every entry the data path wrote was announced, or counted lost when the ring was
    // full: one event per new client and per re-pick (as its counters say).
    let mut written = 0u64;
    for i in 0..n_svcs {
        let t = wk
            .env
            .dp
            .service_stats(wk.svc(i).id)
            .context("reading counters")?;
        written += t.new_clients + t.repick_expired + t.repick_down;
    }
    let announced = events.read_all(|_| ()) as u64;
    ensure!(
        events.skipped() == 0,
        "worker {w} (seed {seed:#x}): {} event slots did not hold their event",
        events.skipped()
    );
    let lost: u64 = lost.get(&0, 0)?.iter().sum();
    ensure!(
        announced + lost == written,
        "worker {w} (seed {seed:#x}): {written} entries written, {announced} events read and \
         {lost} counted lost"
    );
    wk.report.elapsed = start.elapsed();
    wk.report.packets = packets;
    wk.report.clients = clients + wk.memory.len() as u64;
    Ok(wk.report)
}

impl Worker<'_> {
    fn svc(&self, i: usize) -> &Svc {
        &self.oracle.svcs[i]
    }

    fn stats(&self, i: usize) -> Result<ServiceStats, String> {
        self.env
            .dp
            .service_stats(self.svc(i).id)
            .map(tracked)
            .map_err(|e| format!("reading counters: {e:#}"))
    }

    fn verify_counters(&self, i: usize) -> Result<(), String> {
        let got = self.stats(i)?;
        if got != self.tally[i] {
            return Err(format!(
                "counters of service {} differ from the oracle's tally:\n    kernel {got:?}\n    oracle {:?}",
                self.svc(i).name,
                self.tally[i]
            ));
        }
        Ok(())
    }

    /// The client's live stick entry in service `i`: (backend id, backend). An entry
    /// must point at a backend of the service that is up or draining. A service sticking
    /// by network keys it by the client's network, which the memory remembers: every
    /// client of a network must find the one entry, and it never moves.
    fn entry(&mut self, i: usize, client: IpAddr) -> Result<Option<(u32, BackendInfo)>, String> {
        let client = stick_network(client, self.svc(i).stick_prefix);
        let (addr, _) = lb_common::addr_from_ip(client);
        let key = lb_common::StickKey {
            service_id: self.svc(i).id,
            client: addr,
        };
        let Ok(v) = self.env.dp.stick.get(&key, 0) else {
            return Ok(None);
        };
        let b = *self
            .backends
            .get(&v.backend_id)
            .ok_or_else(|| format!("stick entry points at unknown backend {}", v.backend_id))?;
        if b.service_id != self.svc(i).id || (b.state != BACKEND_UP && b.state != BACKEND_DRAIN) {
            return Err(format!(
                "client {client} of {} is stuck to backend {} ({b:?}), not a live backend of the service",
                self.svc(i).name,
                v.backend_id
            ));
        }
        if b.addr.is_ipv6() != client.is_ipv6() {
            return Err(format!(
                "client {client} stuck to a backend of the other family"
            ));
        }
        match self.memory.insert((i, client), v.backend_id) {
            Some(old) if old != v.backend_id => {
                return Err(format!(
                "client {client} of {} moved from backend {old} to {} (no backend changed state)",
                self.svc(i).name,
                v.backend_id
            ))
            }
            _ => {}
        }
        Ok(Some((v.backend_id, b)))
    }

    /// Runs one packet and checks the outcome.
    fn step(&mut self, input: &[u8]) -> Result<(), String> {
        let class = self.oracle.classify(input);
        *self.report.classes.entry(class.label()).or_default() += 1;
        if let Class::NotOurs(why) = class {
            *self.report.not_ours.entry(why).or_default() += 1;
        }
        self.out.clear();
        self.out.resize(input.len() + 256, 0);
        let res = self
            .env
            .xdp
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut self.out),
                ..Default::default()
            })
            .map_err(|e| format!("BPF_PROG_TEST_RUN: {e}"))?;
        self.out.truncate(res.data_size_out as usize);
        let action = res.return_value;
        if action as usize >= self.report.actions.len() {
            return Err(format!("unknown XDP action {action}"));
        }
        self.report.actions[action as usize] += 1;
        if action == XDP_ABORTED {
            return Err(format!("XDP_ABORTED ({} input)", class.label()));
        }
        let alts = self.alternatives(&class, input)?;
        let out = std::mem::take(&mut self.out);
        let r = self.judge(&class, &alts, input, action, &out);
        self.out = out;
        r
    }

    fn judge(
        &mut self,
        class: &Class,
        alts: &[Alt],
        input: &[u8],
        action: u32,
        out: &[u8],
    ) -> Result<(), String> {
        let names = [
            "XDP_ABORTED",
            "XDP_DROP",
            "XDP_PASS",
            "XDP_TX",
            "XDP_REDIRECT",
        ];
        let vlan = match class {
            Class::Service { ip, .. }
            | Class::Reply { ip, .. }
            | Class::IcmpError { ip, .. }
            | Class::LaterFragment { ip, .. } => ip.vlan,
            Class::NotOurs(_) => false,
        };
        let sent = if vlan { XDP_TX } else { XDP_REDIRECT };
        let mut why = Vec::new();
        for alt in alts {
            let ok = match &alt.expect {
                Expect::Pass { .. } if action == XDP_PASS => {
                    if out == input {
                        Ok(())
                    } else {
                        Err("passed, but the bytes changed".to_string())
                    }
                }
                Expect::Forward { rewrite } if action == sent => rewrite.check(input, out),
                Expect::PassRewritten { rewrite, .. } if action == XDP_PASS => {
                    rewrite.check(input, out)
                }
                Expect::Drop { .. } if action == XDP_DROP => Ok(()),
                Expect::Queued { rewrite, meta } if action == XDP_PASS => {
                    check_queued(input, out, rewrite, meta)
                }
                Expect::Encap { tunnel } if action == sent => {
                    tunnel.check(input, out, class_ip(class), self.env.fx0_mac)
                }
                Expect::TooBig { mtu } if action == XDP_TX => {
                    check_too_big(input, out, class_ip(class), *mtu)
                }
                other => Err(format!(
                    "{} where {} was expected",
                    names[action as usize],
                    match other {
                        Expect::Pass { .. }
                        | Expect::PassRewritten { .. }
                        | Expect::Queued { .. } => "XDP_PASS",
                        Expect::Forward { .. } | Expect::Encap { .. } => names[sent as usize],
                        Expect::TooBig { .. } => "XDP_TX",
                        Expect::Drop { .. } => "XDP_DROP",
                    }
                )),
            };
            // Counters are part of the match: a pass that should have been counted is
            // not the uncounted pass.
            match ok.and_then(|()| self.apply(class, alt, action)) {
                Ok(()) => return Ok(()),
                Err(e) => why.push(format!("{:?}: {e}", short(&alt.expect))),
            }
        }
        Err(format!(
            "{} packet ({class:?}): {} matches no acceptable outcome:\n    {}",
            class.label(),
            names[action as usize],
            why.join("\n    ")
        ))
    }

    /// Books the counters of the matched outcome; drops and passes are checked against
    /// the kernel's counters at once.
    fn apply(&mut self, class: &Class, alt: &Alt, action: u32) -> Result<(), String> {
        let check_now = action != XDP_TX && action != XDP_REDIRECT;
        let saved = self.tally.clone();
        let r = self.book(alt, check_now);
        if r.is_err() {
            self.tally = saved;
            return r;
        }
        match alt.expect {
            Expect::Encap { .. } => self.report.encapsulated += 1,
            Expect::TooBig { .. } => self.report.too_big_answered += 1,
            Expect::Drop {
                counter: Counter::DropTooBig,
            } => self.report.too_big_dropped += 1,
            _ => {}
        }
        if matches!(alt.expect, Expect::Forward { .. } | Expect::Encap { .. })
            && !matches!(class, Class::NotOurs(_))
        {
            self.report.forwarded += 1;
        }
        r
    }

    fn book(&mut self, alt: &Alt, check_now: bool) -> Result<(), String> {
        let mut touched = Vec::new();
        for (who, f) in &alt.effects {
            let i = match who {
                Who::One(i) => *i,
                Who::AnyOf(cands) => {
                    // Find the one whose counter moved.
                    let mut moved = None;
                    for &c in cands {
                        let mut st = self.stats(c)?;
                        if *field(&mut st, *f) == *field(&mut self.tally[c], *f) + 1 {
                            moved = Some(c);
                            break;
                        }
                    }
                    moved.ok_or_else(|| format!("{f:?} moved in none of the candidate services"))?
                }
            };
            *field(&mut self.tally[i], *f) += 1;
            touched.push(i);
        }
        if check_now {
            for i in touched {
                self.verify_counters(i)?;
            }
        }
        Ok(())
    }

    fn alternatives(&mut self, class: &Class, b: &[u8]) -> Result<Vec<Alt>, String> {
        let (fx0, fx1) = (self.env.fx0_mac, self.env.fx1_mac);
        let (if0, if1) = (self.env.fx0_ifindex, self.env.fx1_ifindex);
        Ok(match class {
            Class::NotOurs(_) => vec![Alt::pass()],
            Class::Service { svc, ip, client } => {
                let svc = *svc;
                let s = self.svc(svc).clone();
                let nat = s.nat();
                if nat && ip.ttl <= 1 {
                    return Ok(vec![Alt::pass_counted(Who::One(svc), Counter::PassTtl)]);
                }
                if s.all_down {
                    if self.entry(svc, *client)?.is_some() {
                        return Err("a service with every backend down created an entry".into());
                    }
                    return Ok(vec![Alt::drop(svc, Counter::DropNoBackend)]);
                }
                let Some((_, be)) = self.entry(svc, *client)? else {
                    return Err(format!(
                        "no stick entry for client {client} in {} after a packet to it",
                        s.name
                    ));
                };
                let first = !ip.is_v6 && ip.mf && ip.frag_off == 0;
                if let Some(gue) = s.encap {
                    let mut effects = vec![(Who::One(svc), Field::Packets)];
                    if first {
                        effects.push((Who::One(svc), Field::FragForwarded));
                    }
                    return Ok(encap_alts(svc, ip, b, be, gue, effects, true));
                }
                let decline = fib_may_refuse(ip, b);
                let nat_rw = |macs: Option<[u8; 6]>| {
                    let mut rw = Rewrite::default();
                    if let Some(m) = macs {
                        rw.macs(m, fx0);
                    }
                    if nat {
                        rw.addr(ip.dst_off(), be.addr);
                        if be.port != 0 {
                            rw.port(ip.l4() + 2, be.port);
                        }
                        if macs.is_some() {
                            rw.ttl(b, ip);
                        }
                        rw.ip_header(ip);
                        rw.l4(b, ip);
                    }
                    rw
                };
                let mut v = match reach(be.addr) {
                    Reach::Mac(m) => {
                        let mut effects = vec![(Who::One(svc), Field::Packets)];
                        if first {
                            effects.push((Who::One(svc), Field::FragForwarded));
                        }
                        vec![Alt {
                            expect: Expect::Forward {
                                rewrite: nat_rw(Some(m)),
                            },
                            effects,
                        }]
                    }
                    Reach::NoNeigh if nat => vec![Alt {
                        // Rewritten as if sent (TTL too, no MACs), to the neighbour queue.
                        expect: Expect::Queued {
                            rewrite: {
                                let mut r = nat_rw(None);
                                r.ttl(b, ip);
                                r
                            },
                            meta: Some(queue_meta(be.addr, if0)),
                        },
                        effects: vec![
                            (Who::One(svc), Field::NeighQueued),
                            (Who::One(svc), Field::Packets),
                        ],
                    }],
                    Reach::NoNeigh => vec![Alt {
                        // DSR: untouched, to the neighbour queue (tc program).
                        expect: Expect::Queued {
                            rewrite: Rewrite::default(),
                            meta: Some(queue_meta(be.addr, if0)),
                        },
                        effects: vec![
                            (Who::One(svc), Field::NeighQueued),
                            (Who::One(svc), Field::Packets),
                        ],
                    }],
                    Reach::Unreachable => vec![Alt::drop(svc, Counter::DropNoRoute)],
                };
                if decline {
                    v.push(if nat {
                        Alt {
                            expect: Expect::PassRewritten {
                                rewrite: nat_rw(None),
                            },
                            effects: vec![
                                (Who::One(svc), Field::Drop(Counter::FibMiss)),
                                (Who::One(svc), Field::Packets),
                            ],
                        }
                    } else {
                        Alt::drop(svc, Counter::FibMiss)
                    });
                }
                v
            }
            Class::Reply { svc, ip } => {
                let svc = *svc;
                let s = self.svc(svc).clone();
                if ip.ttl <= 1 {
                    return Ok(vec![Alt::pass_counted(Who::One(svc), Counter::PassTtl)]);
                }
                let rw = |macs: Option<([u8; 6], [u8; 6])>| {
                    let mut rw = Rewrite::default();
                    if let Some((d, sm)) = macs {
                        rw.macs(d, sm);
                        rw.ttl(b, ip);
                    }
                    rw.addr(ip.src_off(), s.vip);
                    if s.port != 0 {
                        rw.port(ip.l4(), s.port);
                    }
                    rw.ip_header(ip);
                    rw.l4(b, ip);
                    rw
                };
                let fwd = |macs| Alt {
                    expect: Expect::Forward {
                        rewrite: rw(Some(macs)),
                    },
                    effects: vec![(Who::One(svc), Field::ReplyPackets)],
                };
                let queued = |meta| {
                    let mut rewrite = rw(None);
                    rewrite.ttl(b, ip);
                    Alt {
                        expect: Expect::Queued { rewrite, meta },
                        effects: vec![
                            (Who::One(svc), Field::NeighQueued),
                            (Who::One(svc), Field::ReplyPackets),
                        ],
                    }
                };
                if via_client_gateway(ip.dst(b)) {
                    let mut v = vec![fwd((CLIENT_GW_MAC, fx1))];
                    if fib_may_refuse(ip, b) {
                        // The route is asked before the rewrite: a reply the FIB will
                        // not fast-path (over the lab MTU, say) passes untouched, and
                        // the kernel answers the backend.
                        v.push(Alt::pass());
                    }
                    v
                } else if via_unresolved_gateway(ip.dst(b)) {
                    // The next hop has no neighbour entry: rewritten (TTL too, no MACs)
                    // and queued for the neighbour layer (the kernel's stack would drop
                    // a packet from the VIP), and reported. The FIB checks the MTU
                    // first: a datagram too big passes untouched.
                    let gw = if ip.dst(b).is_ipv4() {
                        v4(198, 18, 0, 253)
                    } else {
                        v6("fd00::fd")
                    };
                    let mut v = vec![queued(Some(queue_meta(gw, if1)))];
                    if fib_may_refuse(ip, b) {
                        v.push(Alt::pass());
                    }
                    v
                } else {
                    // Elsewhere: the oracle does not model the whole FIB; any honest
                    // outcome is fine.
                    let mut v = vec![fwd((CLIENT_GW_MAC, fx1))];
                    for n in 2..=4 {
                        v.push(fwd((backend_mac(n), fx0)));
                    }
                    v.push(queued(None));
                    v.push(Alt::drop(svc, Counter::DropNoRoute));
                    v.push(Alt::pass());
                    v
                }
            }
            Class::IcmpError {
                svc,
                ip,
                client,
                sure,
            } => {
                let svc = *svc;
                let s = self.svc(svc).clone();
                let nat = s.nat();
                let mut v = Vec::new();
                // A quote that is not a plausible packet: passing it uncounted is fine.
                let lenient = |mut v: Vec<Alt>| {
                    if !sure {
                        v.push(Alt::pass());
                    }
                    v
                };
                let Some((_, be)) = self.entry(svc, *client)? else {
                    v.push(Alt::pass_counted(Who::One(svc), Counter::IcmpUnmatched));
                    return Ok(lenient(v));
                };
                if nat && ip.ttl <= 1 {
                    v.push(Alt::pass_counted(Who::One(svc), Counter::PassTtl));
                    return Ok(lenient(v));
                }
                if let Some(gue) = s.encap {
                    let effects = vec![(Who::One(svc), Field::IcmpToBackend)];
                    // An ICMP error is never answered with another: too big, it drops.
                    return Ok(lenient(encap_alts(svc, ip, b, be, gue, effects, false)));
                }
                let l4 = ip.l4();
                let q = l4 + 8;
                let rw = |macs: Option<[u8; 6]>| {
                    let mut rw = Rewrite::default();
                    if let Some(m) = macs {
                        rw.macs(m, fx0);
                    }
                    if nat {
                        rw.addr(ip.dst_off(), be.addr);
                        rw.addr(q + if ip.is_v6 { 8 } else { 12 }, be.addr);
                        if be.port != 0 {
                            rw.port(q + if ip.is_v6 { 40 } else { 20 }, be.port);
                        }
                        if macs.is_some() {
                            rw.ttl(b, ip);
                        }
                        rw.ip_header(ip);
                        rw.csum_fields.push(l4 + 2);
                        if ip.is_v6 {
                            rw.domains.push(Domain::Pseudo {
                                l3: ip.l3,
                                is_v6: true,
                                proto: PROTO_ICMPV6,
                                start: l4,
                                len: ip.l4_len(),
                            });
                        } else {
                            rw.domains.push(Domain::Plain {
                                start: l4,
                                len: ip.l4_len(),
                            });
                            rw.csum_fields.push(q + 10);
                            rw.domains.push(Domain::Plain { start: q, len: 20 });
                        }
                    }
                    rw
                };
                match reach(be.addr) {
                    Reach::Mac(m) => {
                        v.push(Alt {
                            expect: Expect::Forward {
                                rewrite: rw(Some(m)),
                            },
                            effects: vec![(Who::One(svc), Field::IcmpToBackend)],
                        });
                    }
                    // ICMP errors keep the plain fallback (the kernel's forwarding for
                    // NAT, a drop for DSR): the agent resolves backends ahead.
                    Reach::NoNeigh if nat => v.push(Alt {
                        expect: Expect::PassRewritten { rewrite: rw(None) },
                        effects: vec![(Who::One(svc), Field::Drop(Counter::FibMiss))],
                    }),
                    Reach::NoNeigh => v.push(Alt::drop(svc, Counter::FibMiss)),
                    Reach::Unreachable => v.push(Alt::drop(svc, Counter::DropNoRoute)),
                }
                if fib_may_refuse(ip, b) {
                    v.push(if nat {
                        Alt {
                            expect: Expect::PassRewritten { rewrite: rw(None) },
                            effects: vec![(Who::One(svc), Field::Drop(Counter::FibMiss))],
                        }
                    } else {
                        Alt::drop(svc, Counter::FibMiss)
                    });
                }
                lenient(v)
            }
            Class::LaterFragment { cands, ip, client } => {
                let unmatched =
                    Alt::pass_counted(Who::AnyOf(cands.clone()), Counter::FragUnmatched);
                if cands.len() > lb_common::FRAG_CANDIDATES {
                    return Ok(vec![unmatched]);
                }
                let mut live = Vec::new();
                for &c in cands {
                    if let Some((_, be)) = self.entry(c, *client)? {
                        live.push((c, be));
                    }
                }
                let [(svc, be)] = live[..] else {
                    return Ok(vec![unmatched]);
                };
                let nat = self.svc(svc).nat();
                if nat && ip.ttl <= 1 {
                    return Ok(vec![Alt::pass_counted(Who::One(svc), Counter::PassTtl)]);
                }
                if let Some(gue) = self.svc(svc).encap {
                    let effects = vec![
                        (Who::One(svc), Field::FragForwarded),
                        (Who::One(svc), Field::Packets),
                    ];
                    // Fragments carry no DF: too big, they drop.
                    return Ok(encap_alts(svc, ip, b, be, gue, effects, false));
                }
                let rw = |macs: Option<[u8; 6]>| {
                    let mut rw = Rewrite::default();
                    if let Some(m) = macs {
                        rw.macs(m, fx0);
                    }
                    if nat {
                        rw.addr(ip.dst_off(), be.addr);
                        if macs.is_some() {
                            rw.ttl(b, ip);
                        }
                        rw.ip_header(ip);
                    }
                    rw
                };
                let mut v = match reach(be.addr) {
                    Reach::Mac(m) => vec![Alt {
                        expect: Expect::Forward {
                            rewrite: rw(Some(m)),
                        },
                        effects: vec![
                            (Who::One(svc), Field::FragForwarded),
                            (Who::One(svc), Field::Packets),
                        ],
                    }],
                    // Later fragments keep the plain fallback, as ICMP errors do.
                    Reach::NoNeigh if nat => vec![Alt {
                        expect: Expect::PassRewritten { rewrite: rw(None) },
                        effects: vec![(Who::One(svc), Field::Drop(Counter::FibMiss))],
                    }],
                    Reach::NoNeigh => vec![Alt::drop(svc, Counter::FibMiss)],
                    Reach::Unreachable => vec![Alt::drop(svc, Counter::DropNoRoute)],
                };
                if fib_may_refuse(ip, b) {
                    v.push(if nat {
                        Alt {
                            expect: Expect::PassRewritten { rewrite: rw(None) },
                            effects: vec![(Who::One(svc), Field::Drop(Counter::FibMiss))],
                        }
                    } else {
                        Alt::drop(svc, Counter::FibMiss)
                    });
                }
                v
            }
        })
    }
}

/// The outcomes of an L3 DSR packet to backend `be` of service `svc`: encapsulated (with
/// `effects`) when it fits the lab link once encapsulated; else answered with the MTU
/// when `answer` and DF (or IPv6), dropped with `drop_too_big` otherwise. The FIB checks
/// the MTU before the neighbour, after the route.
fn encap_alts(
    svc: usize,
    ip: &Ip,
    b: &[u8],
    be: BackendInfo,
    gue: bool,
    effects: Vec<(Who, Field)>,
    answer: bool,
) -> Vec<Alt> {
    let mut t = Tunnel {
        backend: be.addr,
        mac: [0; 6],
        gue,
    };
    let reach = reach(be.addr);
    if reach == Reach::Unreachable {
        return vec![Alt::drop(svc, Counter::DropNoRoute)];
    }
    if !t.fits(ip) {
        let df = ip.is_v6 || be16(b, ip.l3 + 6) & 0x4000 != 0;
        return vec![if answer && df {
            Alt {
                expect: Expect::TooBig {
                    mtu: LAB_MTU - t.overhead(),
                },
                effects: vec![(Who::One(svc), Field::TooBigAnswered)],
            }
        } else {
            Alt::drop(svc, Counter::DropTooBig)
        }];
    }
    match reach {
        Reach::Mac(m) => {
            t.mac = m;
            vec![Alt {
                expect: Expect::Encap { tunnel: t },
                effects,
            }]
        }
        // The outer next hop is unresolved: not encapsulated yet, so not queued (that
        // would send the inner packet to it): dropped, and for client packets (`answer`:
        // the service path) reported by the neighbour program; ICMP errors and later
        // fragments keep the plain fallback (`fib_miss`).
        _ if answer => vec![Alt::drop(svc, Counter::DropNoNeigh)],
        _ => vec![Alt::drop(svc, Counter::FibMiss)],
    }
}

/// A one-line name of an expected outcome, for failure messages.
fn short(e: &Expect) -> String {
    match e {
        Expect::Pass { counter: None } => "pass unchanged".into(),
        Expect::Pass {
            counter: Some((_, c)),
        } => format!("pass unchanged + {c:?}"),
        Expect::Forward { rewrite } => format!("forward with {} writes", rewrite.writes.len()),
        Expect::PassRewritten { .. } => "pass rewritten + FibMiss".into(),
        Expect::Encap { tunnel } => format!("encapsulate to {}", tunnel.backend),
        Expect::TooBig { mtu } => format!("answer too big, MTU {mtu}"),
        Expect::Drop { counter, .. } => format!("drop + {counter:?}"),
        Expect::Queued { .. } => "queued for the neighbour layer".into(),
    }
}
