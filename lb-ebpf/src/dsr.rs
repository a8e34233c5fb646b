//! Stage 5b (`dsr`): L2 direct server return. The IP packet is kept as it is (the backend
//! holds the VIP on its loopback and answers the client directly); only the Ethernet
//! destination becomes the backend's MAC, found by a FIB lookup of the backend address (cached per CPU, see `forward`).

use aya_ebpf::programs::XdpContext;
use lb_common::Backend;

use crate::{
    forward::{forward_to_backend, Forwarded},
    packet::Packet,
    parse::Parsed,
};

#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    p: &Parsed,
    backend_id: u32,
    backend: &Backend,
    now: u64,
) -> Forwarded {
    forward_to_backend(ctx, pkt, p, backend_id, &backend.addr, false, now)
}
