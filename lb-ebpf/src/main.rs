//! Entry point of the XDP program `stickylb`; everything else is in the library crate.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{macros::xdp, programs::XdpContext};

    /// Balances traffic for configured services; passes everything else untouched.
    #[xdp]
    pub fn stickylb(ctx: XdpContext) -> u32 {
        lb_ebpf::balancer::process(&ctx)
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
