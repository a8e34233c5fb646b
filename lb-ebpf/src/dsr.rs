//! Stage 5b (`dsr`): L2 direct server return. The IP packet is kept as it is (the backend
//! holds the VIP on its loopback and answers the client directly); only the Ethernet
//! destination becomes the backend's MAC, found by a FIB lookup of the backend address.

use aya_ebpf::programs::XdpContext;
use lb_common::Backend;

use crate::{
    forward::{forward, Forwarded},
    packet::Packet,
    parse::Parsed,
};

#[inline(always)]
pub fn to_backend(ctx: &XdpContext, pkt: &Packet, p: &Parsed, backend: &Backend) -> Forwarded {
    forward(ctx, pkt, p, &p.src, &backend.addr, false)
}
