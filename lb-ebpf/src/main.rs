//! Entry point of the XDP program `stickylb`; everything else is in the library crate.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };

    /// Balances traffic for configured services; passes everything else untouched.
    #[xdp]
    pub fn stickylb(ctx: XdpContext) -> u32 {
        lb_ebpf::balancer::process(&ctx)
    }

    /// ICMP errors about service flows (tail call from `stickylb`).
    #[xdp]
    pub fn stickylb_icmp(ctx: XdpContext) -> u32 {
        lb_ebpf::balancer::process_icmp(&ctx)
    }

    /// Later IPv4 fragments (tail call from `stickylb`).
    #[xdp]
    pub fn stickylb_fragment(ctx: XdpContext) -> u32 {
        lb_ebpf::balancer::process_fragment(&ctx)
    }

    /// A packet to a backend whose next hop is unresolved (tail call): report the next
    /// hop, hand the packet to the neighbour queue.
    #[xdp]
    pub fn stickylb_neigh(ctx: XdpContext) -> u32 {
        lb_ebpf::neigh::process_to_backend(&ctx)
    }

    /// The same for a NAT reply (tail call): rewritten to the VIP here.
    #[xdp]
    pub fn stickylb_neigh_reply(ctx: XdpContext) -> u32 {
        lb_ebpf::neigh::process_reply(&ctx)
    }

    /// The cluster sink's batch writer (never attached: run with `BPF_PROG_TEST_RUN`,
    /// peers' stick entries as the packet).
    #[xdp]
    pub fn stickylb_stick_apply(ctx: XdpContext) -> u32 {
        lb_ebpf::stick_apply::apply(&ctx)
    }

    /// Samples jiffies and the coarse clock together for the loader's clock calibration
    /// (run with `BPF_PROG_TEST_RUN`, never attached; see `lb_common::clock`).
    #[xdp]
    pub fn stickylb_clock(_ctx: XdpContext) -> u32 {
        lb_ebpf::stats::sample_clocks()
    }

    /// tc ingress: sends packets the XDP program marked (unresolved next hop) through
    /// the kernel's neighbour queue.
    #[classifier]
    pub fn stickylb_queue(ctx: TcContext) -> i32 {
        lb_ebpf::neigh::tc_queue(&ctx)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
