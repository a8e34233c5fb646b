//! The backend side of L3 DSR (`stickylb decap`, object `lb-decap`): strips the outer
//! header of IPIP (IPv4 or IPv6 inside), IP6IP6 / 4-in-6 and GUE variant 1 (to the
//! configured port) and hands the client's packet to the stack, whose VIP on `lo` takes
//! it. One classification ([`classify`]) serves the XDP program and the tc one (for
//! interfaces where XDP cannot run, such as a node whose XDP hook already carries the
//! balancer).
//!
//! Everything that is not a well-formed tunnel packet is left alone or dropped, never
//! delivered as something it is not:
//! - not a tunnel (other protocols, UDP to other ports): untouched, not counted;
//! - a tunnel packet we do not take apart — outer destination not one of this host's
//!   addresses in strict mode, outer IPv4 options or fragments (the kernel reassembles),
//!   GUE other than variant 1: untouched, counted `passed`;
//! - lying or nested: an outer length beyond the frame, a UDP length or inner length
//!   that disagrees with the outer one, an inner header that is truncated or not of the
//!   family the outer header claims, a tunnel inside the tunnel: dropped, counted.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use lb_common::{
    Addr, DecapConfig, DecapKey, DecapStats, DECAP_STRICT, FAMILY_V4, FAMILY_V6, PROTO_IPIP,
    PROTO_IPV6, PROTO_UDP,
};

use lb_packet::{
    hdr::*,
    packet::{get, set, Packet},
};

/// Slot 0: the flags and the GUE port.
#[map]
pub static DECAP_CONFIG: Array<DecapConfig> = Array::with_max_entries(1, 0);

/// This host's addresses, for the strict mode.
#[map]
pub static DECAP_ADDRS: HashMap<DecapKey, u8> = HashMap::with_max_entries(256, 0);

/// Slot 0: per-CPU counters.
#[map]
pub static DECAP_STATS: PerCpuArray<DecapStats> = PerCpuArray::with_max_entries(1, 0);

/// What to do with a frame.
pub enum Decap {
    /// Not a tunnel packet: untouched, not counted.
    NotOurs,
    /// A tunnel packet left to the kernel, counted.
    Pass,
    /// Lying or nested: drop, counted.
    Drop,
    /// Strip `overhead` bytes after the L2 header; the inner packet is IPv6 when
    /// `inner_v6`.
    Strip {
        overhead: usize,
        inner_v6: bool,
        vlan: bool,
    },
}

/// The outer header as far as [`classify`] needs it.
struct Tunnel {
    /// Protocol after the outer IP header: 4, 41 or 17.
    proto: u8,
    /// Bytes of outer IP header (20 or 40).
    ip_hdr: usize,
    /// The outer datagram's payload length (after the IP header).
    payload: usize,
    family: u8,
    dst: Addr,
}

#[inline(always)]
fn config() -> DecapConfig {
    DECAP_CONFIG.get(0).copied().unwrap_or_default()
}

/// Classifies the frame in `pkt`.
#[inline(always)]
pub fn classify(pkt: &Packet) -> Decap {
    let Some(eth) = pkt.region::<EthHdr>(0) else {
        return Decap::NotOurs;
    };
    // SAFETY (every `get`): constant offsets inside checked regions.
    let mut ethertype: u16 = unsafe { get(eth, ETH_TYPE) };
    let mut l3 = ETH_HLEN;
    let mut vlan = false;
    if ethertype == ETH_P_8021Q {
        let Some(tag) = pkt.region::<VlanHdr>(ETH_HLEN) else {
            return Decap::NotOurs;
        };
        ethertype = unsafe { get(tag, VLAN_TYPE) };
        l3 += VLAN_HLEN;
        vlan = true;
    }
    let t = if ethertype == ETH_P_IP {
        match outer_v4(pkt, l3) {
            Ok(t) => t,
            Err(d) => return d,
        }
    } else if ethertype == ETH_P_IPV6 {
        match outer_v6(pkt, l3) {
            Ok(t) => t,
            Err(d) => return d,
        }
    } else {
        return Decap::NotOurs;
    };
    let cfg = config();
    // The outer datagram must be in the frame (padding beyond it is fine).
    if l3 + t.ip_hdr + t.payload > pkt.len() {
        return Decap::Drop;
    }
    let mut overhead = t.ip_hdr;
    let inner_v6 = if t.proto == PROTO_UDP {
        let Some(udp) = pkt.region::<UdpHdr>(l3 + t.ip_hdr) else {
            return Decap::NotOurs;
        };
        let (dport, len): (u16, u16) = unsafe { (get(udp, UDP_DPORT), get(udp, UDP_LEN_FIELD)) };
        if cfg.gue_port == 0 || dport != cfg.gue_port {
            return Decap::NotOurs;
        }
        if u16::from_be(len) as usize != t.payload {
            return Decap::Drop;
        }
        overhead += UDP_LEN;
        // GUE variant 1: the first two bits of the payload are 01 (an IPv4 or IPv6
        // header). Variant 0 (a GUE header) is the kernel's fou.
        let Some(first) = pkt.region::<u8>(l3 + overhead) else {
            return Decap::Drop;
        };
        let b: u8 = unsafe { get(first, 0) };
        if b >> 6 != 1 {
            return Decap::Pass;
        }
        match b >> 4 {
            4 => false,
            6 => true,
            _ => return Decap::Drop,
        }
    } else {
        t.proto == PROTO_IPV6
    };
    if cfg.flags & DECAP_STRICT != 0 {
        let key = DecapKey {
            addr: t.dst,
            family: t.family,
            _pad: [0; 3],
        };
        // SAFETY: presence test only.
        if unsafe { DECAP_ADDRS.get(&key) }.is_none() {
            return Decap::Pass;
        }
    }
    let inner_len = t.payload - (overhead - t.ip_hdr);
    if !inner_ok(pkt, l3 + overhead, inner_v6, inner_len, cfg.gue_port) {
        return Decap::Drop;
    }
    Decap::Strip {
        overhead,
        inner_v6,
        vlan,
    }
}

/// An outer IPv4 header carrying a tunnel protocol.
#[inline(always)]
fn outer_v4(pkt: &Packet, l3: usize) -> Result<Tunnel, Decap> {
    let ip = pkt.region::<Ipv4Hdr>(l3).ok_or(Decap::NotOurs)?;
    let (vihl, proto, tot_len, frag, dst): (u8, u8, u16, u16, u32) = unsafe {
        (
            get(ip, IP4_VIHL),
            get(ip, IP4_PROTO),
            get(ip, IP4_TOT_LEN),
            get(ip, IP4_FRAG),
            get(ip, IP4_DST),
        )
    };
    if vihl >> 4 != 4 || (proto != PROTO_IPIP && proto != PROTO_IPV6 && proto != PROTO_UDP) {
        return Err(Decap::NotOurs);
    }
    // Options, fragments: the kernel's (for UDP we cannot even tell it is ours).
    let fragment = frag & 0x3FFFu16.to_be() != 0;
    if vihl != 0x45 || fragment {
        return Err(if proto == PROTO_UDP {
            Decap::NotOurs
        } else {
            Decap::Pass
        });
    }
    let tot_len = u16::from_be(tot_len) as usize;
    if tot_len < IP4_LEN {
        return Err(Decap::Drop);
    }
    Ok(Tunnel {
        proto,
        ip_hdr: IP4_LEN,
        payload: tot_len - IP4_LEN,
        family: FAMILY_V4,
        dst: [dst, 0, 0, 0],
    })
}

/// An outer IPv6 header (no extension headers) carrying a tunnel protocol.
#[inline(always)]
fn outer_v6(pkt: &Packet, l3: usize) -> Result<Tunnel, Decap> {
    let ip = pkt.region::<Ipv6Hdr>(l3).ok_or(Decap::NotOurs)?;
    let (vcf, next, payload, dst): (u8, u8, u16, Addr) = unsafe {
        (
            get(ip, IP6_VCF),
            get(ip, IP6_NEXT),
            get(ip, IP6_PAYLOAD_LEN),
            get(ip, IP6_DST),
        )
    };
    if vcf >> 4 != 6 || (next != PROTO_IPIP && next != PROTO_IPV6 && next != PROTO_UDP) {
        return Err(Decap::NotOurs);
    }
    Ok(Tunnel {
        proto: next,
        ip_hdr: IP6_LEN,
        payload: u16::from_be(payload) as usize,
        family: FAMILY_V6,
        dst,
    })
}

/// Whether the inner packet at `off` is a whole IP packet of the claimed family that
/// fills the outer payload exactly (`len` bytes) and is no tunnel itself.
#[inline(always)]
fn inner_ok(pkt: &Packet, off: usize, v6: bool, len: usize, gue_port: u16) -> bool {
    // The fixed header and the first 4 bytes after it (ports, for the nested-GUE test;
    // every IP packet worth delivering has them).
    if v6 {
        let Some(r) = pkt.region::<[u8; IP6_LEN + 4]>(off) else {
            return false;
        };
        let (vcf, payload, next, dport): (u8, u16, u8, u16) = unsafe {
            (
                get(r, IP6_VCF),
                get(r, IP6_PAYLOAD_LEN),
                get(r, IP6_NEXT),
                get(r, IP6_LEN + UDP_DPORT),
            )
        };
        vcf >> 4 == 6
            && u16::from_be(payload) as usize + IP6_LEN == len
            && !nested(next, dport, gue_port)
    } else {
        let Some(r) = pkt.region::<[u8; IP4_LEN + 4]>(off) else {
            return false;
        };
        let (vihl, tot_len, proto, dport): (u8, u16, u8, u16) = unsafe {
            (
                get(r, IP4_VIHL),
                get(r, IP4_TOT_LEN),
                get(r, IP4_PROTO),
                get(r, IP4_LEN + UDP_DPORT),
            )
        };
        let ihl = (vihl & 0x0f) as usize * 4;
        // With options the ports are elsewhere: only IPIP counts as nested then.
        let dport = if ihl == IP4_LEN { dport } else { 0 };
        vihl >> 4 == 4
            && ihl >= IP4_LEN
            && u16::from_be(tot_len) as usize == len
            && len >= ihl
            && !nested(proto, dport, gue_port)
    }
}

#[inline(always)]
fn nested(proto: u8, dport: u16, gue_port: u16) -> bool {
    proto == PROTO_IPIP || proto == PROTO_IPV6 || (proto == PROTO_UDP && dport == gue_port)
}

/// Writes the L2 header of the decapsulated frame `overhead` bytes further in (where it
/// will start once the head moves): the old addresses, the tag, the inner ethertype.
/// The caller read nothing from there that it still needs.
#[inline(always)]
pub fn move_l2(pkt: &Packet, overhead: usize, vlan: bool, inner_v6: bool) -> bool {
    let ethertype = if inner_v6 { ETH_P_IPV6 } else { ETH_P_IP };
    let Some(old) = pkt.region::<[u8; ETH_HLEN + VLAN_HLEN]>(0) else {
        return false;
    };
    // SAFETY: constant offsets inside checked regions.
    let (dmac, smac, tag): ([u8; 6], [u8; 6], u32) =
        unsafe { (get(old, ETH_DST), get(old, ETH_SRC), get(old, ETH_TYPE)) };
    let Some(new) = pkt.region::<[u8; ETH_HLEN + VLAN_HLEN]>(overhead) else {
        return false;
    };
    unsafe {
        set(new, ETH_DST, dmac);
        set(new, ETH_SRC, smac);
        if vlan {
            set(new, ETH_TYPE, tag);
            set(new, ETH_HLEN + VLAN_TYPE, ethertype);
        } else {
            set(new, ETH_TYPE, ethertype);
        }
    }
    true
}

/// This CPU's counters.
#[inline(always)]
pub fn stats() -> Option<&'static mut DecapStats> {
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    DECAP_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
