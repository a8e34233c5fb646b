//! The decapsulation object `lb-decap` (`stickylb decap`), a crate of its own so that
//! its object holds only its own maps: the XDP program and the tc one. The logic is in
//! [`decap`].
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg_attr(not(target_arch = "bpf"), allow(dead_code))]
mod decap;

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{
            bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action, BPF_F_ADJ_ROOM_DECAP_L3_IPV4,
            BPF_F_ADJ_ROOM_DECAP_L3_IPV6,
        },
        helpers::bpf_xdp_adjust_head,
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
        EbpfContext,
    };
    use lb_packet::{
        hdr::{ETH_P_IP, ETH_P_IPV6, ETH_TYPE},
        packet::Packet,
    };

    use crate::decap::{classify, move_l2, stats, Decap};

    const TC_ACT_OK: i32 = aya_ebpf::bindings::TC_ACT_OK as i32;
    const TC_ACT_SHOT: i32 = aya_ebpf::bindings::TC_ACT_SHOT as i32;

    /// Strips IPIP / IP6IP6 / GUE addressed to this host; everything else passes.
    #[xdp]
    pub fn stickylb_decap(ctx: XdpContext) -> u32 {
        let pkt = Packet::new(&ctx);
        match classify(&pkt) {
            Decap::NotOurs => xdp_action::XDP_PASS,
            Decap::Pass => {
                if let Some(s) = stats() {
                    s.passed += 1;
                }
                xdp_action::XDP_PASS
            }
            Decap::Drop => {
                if let Some(s) = stats() {
                    s.dropped += 1;
                }
                xdp_action::XDP_DROP
            }
            Decap::Strip {
                overhead,
                vlan,
                inner_v6,
                ..
            } => {
                let pkt = Packet::reload(&ctx);
                // SAFETY: helper call on our own context.
                if !move_l2(&pkt, overhead, vlan, inner_v6)
                    || unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, overhead as i32) } != 0
                {
                    // Part of the outer header may be overwritten: never pass it on.
                    if let Some(s) = stats() {
                        s.dropped += 1;
                    }
                    return xdp_action::XDP_DROP;
                }
                if let Some(s) = stats() {
                    s.decapsulated += 1;
                }
                xdp_action::XDP_PASS
            }
        }
    }

    /// The same at tc ingress (for interfaces whose XDP hook is taken).
    #[classifier]
    pub fn stickylb_decap_tc(ctx: TcContext) -> i32 {
        let pkt = Packet::from_bounds(ctx.data(), ctx.data_end());
        match classify(&pkt) {
            Decap::NotOurs => TC_ACT_OK,
            Decap::Pass | Decap::Strip { vlan: true, .. } => {
                // A tag still in the frame at tc (not offloaded): left to the kernel.
                if let Some(s) = stats() {
                    s.passed += 1;
                }
                TC_ACT_OK
            }
            Decap::Drop => {
                if let Some(s) = stats() {
                    s.dropped += 1;
                }
                TC_ACT_SHOT
            }
            Decap::Strip {
                overhead, inner_v6, ..
            } => {
                let outer_v6 = {
                    let Some(r) = pkt.region::<[u8; 14]>(0) else {
                        return TC_ACT_OK;
                    };
                    // SAFETY: constant offset inside the checked region.
                    unsafe { lb_packet::packet::get::<u16>(r, ETH_TYPE) == ETH_P_IPV6 }
                };
                let mut flags = 0u64;
                if inner_v6 != outer_v6 {
                    flags = if inner_v6 {
                        BPF_F_ADJ_ROOM_DECAP_L3_IPV6
                    } else {
                        BPF_F_ADJ_ROOM_DECAP_L3_IPV4
                    } as u64;
                }
                if ctx
                    .adjust_room(-(overhead as i32), BPF_ADJ_ROOM_MAC, flags)
                    .is_err()
                {
                    if let Some(s) = stats() {
                        s.passed += 1;
                    }
                    return TC_ACT_OK;
                }
                let ethertype = if inner_v6 { ETH_P_IPV6 } else { ETH_P_IP };
                if inner_v6 != outer_v6 && ctx.store(ETH_TYPE, &ethertype, 0).is_err() {
                    if let Some(s) = stats() {
                        s.dropped += 1;
                    }
                    return TC_ACT_SHOT;
                }
                if let Some(s) = stats() {
                    s.decapsulated += 1;
                }
                TC_ACT_OK
            }
        }
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
