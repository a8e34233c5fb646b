//! Stage 5a (`nat`): rewrite the destination to the backend (client → backend) or the
//! source back to the VIP (backend → client), with incremental checksum updates: the
//! IPv4 header checksum and the TCP/UDP checksum including its pseudo-header. A UDP/IPv4
//! checksum of 0 ("none") stays 0.

use lb_common::{csum, Addr, FAMILY_V4, PROTO_UDP};

use crate::{hdr::*, packet::Packet, parse::Parsed};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Rewrites one end of the packet to `addr` and `port` (network order; 0 keeps the port).
/// Checks every pointer before writing anything: `None` means nothing was changed.
#[inline(always)]
pub fn rewrite(pkt: &Packet, p: &Parsed, end: End, addr: &Addr, port: u16) -> Option<()> {
    let (old_addr, old_port, port_off) = match end {
        End::Source => (p.src, p.sport, p.l4_off + TCP_SPORT),
        End::Destination => (p.dst, p.dport, p.l4_off + TCP_DPORT),
    };
    let new_port = if port == 0 { old_port } else { port };
    let l4_check = pkt.ptr::<u16>(p.l4_check_off())?;
    let port_ptr = pkt.ptr::<u16>(port_off)?;
    let v4 = p.family == FAMILY_V4;
    // The IPv4 header checksum (for IPv6 the same bytes are only bounds-checked, never
    // written); the address field (one word for IPv4, four for IPv6).
    let ip_check = pkt.ptr::<u16>(p.l3_off + IP4_CHECK)?;
    let addr_off = match (v4, end) {
        (true, End::Source) => IP4_SRC,
        (true, End::Destination) => IP4_DST,
        (false, End::Source) => IP6_SRC,
        (false, End::Destination) => IP6_DST,
    };
    let (addr4, addr6) = if v4 {
        (pkt.ptr::<u32>(p.l3_off + addr_off)?, core::ptr::null_mut())
    } else {
        (core::ptr::null_mut(), pkt.ptr::<Addr>(p.l3_off + addr_off)?)
    };
    let words = if v4 { 1 } else { 4 };

    // SAFETY (all writes below): pointers were bounds-checked by `Packet::ptr`.
    unsafe {
        let check = *l4_check;
        if !(v4 && p.proto == PROTO_UDP && check == 0) {
            let mut sum = csum::begin(check);
            sum = csum::diff_addr(sum, &old_addr, addr, words);
            sum = csum::diff16(sum, old_port, new_port);
            let mut new_check = csum::finish(sum);
            if p.proto == PROTO_UDP {
                new_check = csum::udp_nonzero(new_check);
            }
            *l4_check = new_check;
        }
        *port_ptr = new_port;
        if v4 {
            *ip_check = csum::replace32(*ip_check, old_addr[0], addr[0]);
            *addr4 = addr[0];
        } else {
            *addr6 = *addr;
        }
    }
    Some(())
}
