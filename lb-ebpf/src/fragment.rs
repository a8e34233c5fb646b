//! Later IPv4 fragments carry no ports, so they cannot be matched to a service by
//! (VIP, port). They follow the client's entry: among the services on the fragment's VIP
//! and protocol (`FRAGMENTS`, kept by userspace), the one where the client has a live
//! entry decides the backend. No entry, or live entries in more than one service (the
//! fragment could belong to either), and the fragment passes to the kernel, counted:
//! never mis-forwarded. First fragments carry the ports and take the normal path. In the
//! encapsulating modes the fragment is encapsulated to the backend as it is.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    csum,
    sticky::{judge, stick_key, Verdict},
    Backend, Endpoint, ServiceInfo, FRAG_CANDIDATES, FWD_DSR,
};

use crate::{
    balancer::{encapsulate, is_encap},
    forward::{forward, not_sent, Forwarded},
    hdr::*,
    maps::{BACKENDS, FRAGMENTS, SERVICES, STICK},
    packet::{get, set, Packet},
    parse::Parsed,
    stats,
};

/// Runs as its own XDP program, reached by tail call from the main program.
#[inline(always)]
pub fn process(ctx: &XdpContext, p: &Parsed) -> u32 {
    let key = Endpoint {
        addr: p.dst,
        port: 0,
        proto: p.proto,
        family: p.family,
    };
    // SAFETY: map value copied out at once.
    let Some(cands) = (unsafe { FRAGMENTS.get(&key) }).copied() else {
        return xdp_action::XDP_PASS;
    };
    let now = stats::now_ns();
    // Plain initialised values, not an Option with a payload: LLVM may copy an
    // uninitialised payload register, which the verifier refuses to read.
    let mut first = u32::MAX;
    let mut svc = ServiceInfo::default();
    let mut backend_id = 0u32;
    let mut backend = Backend::default();
    let mut live = 0u32;
    for i in 0..FRAG_CANDIDATES {
        if i as u32 >= cands.count {
            break;
        }
        let Some(candidate) = (unsafe { SERVICES.get(&cands.services[i]) }).copied() else {
            continue;
        };
        if first == u32::MAX {
            first = candidate.id;
        }
        let key = stick_key(&candidate, &p.src);
        let Some(e) = (unsafe { STICK.get(&key) }) else {
            continue;
        };
        let b = BACKENDS.get(e.backend_id);
        if let (Verdict::Hit, Some(b)) = (judge(e, b, candidate.id, now, candidate.expiry_ns), b) {
            live += 1;
            svc = candidate;
            backend_id = e.backend_id;
            backend = *b;
        }
    }
    // More services than candidates on the VIP (count above the array): ambiguous too.
    if live != 1 || cands.count as usize > FRAG_CANDIDATES {
        if let Some(st) = stats::service(first) {
            st.frag_unmatched += 1;
        }
        return xdp_action::XDP_PASS;
    }
    let Some(st) = stats::service(svc.id) else {
        return xdp_action::XDP_PASS;
    };
    let encap = is_encap(&svc);
    let dsr = svc.forwarding == FWD_DSR || encap;
    if !dsr && p.ttl <= 1 {
        // Routed hop would expire: the kernel answers.
        st.pass_ttl += 1;
        return xdp_action::XDP_PASS;
    }
    // Pointers for the writes are taken afresh after the helper calls.
    let pkt = Packet::reload(ctx);
    if !dsr {
        // NAT: only the IP destination (the ports and the L4 checksum are in the first
        // fragment, rewritten there).
        let Some(ip) = pkt.region::<Ipv4Hdr>(p.l3_off) else {
            return xdp_action::XDP_PASS;
        };
        let addr = backend.addr[0];
        // SAFETY: constant offsets inside the bounds-checked header.
        unsafe {
            set(
                ip,
                IP4_CHECK,
                csum::replace32(get(ip, IP4_CHECK), get(ip, IP4_DST), addr),
            );
            set(ip, IP4_DST, addr);
        }
    }
    let len = pkt.len() as u64;
    let outcome = if encap {
        // Fragments carry no DF: one over the MTU once encapsulated is dropped, counted.
        encapsulate(ctx, p, &svc, backend_id, &backend, now, false)
    } else {
        forward(ctx, &pkt, p, &p.src, &backend.addr, !dsr)
    };
    match outcome {
        Forwarded::Sent(action) => {
            st.frag_forwarded += 1;
            st.packets += 1;
            st.bytes += len;
            if let Some(b) = stats::backend(backend_id) {
                b.packets += 1;
                b.bytes += len;
            }
            action
        }
        Forwarded::TooBig | Forwarded::Answered(_) => {
            st.drop_too_big += 1;
            xdp_action::XDP_DROP
        }
        other => not_sent(st, &other, dsr),
    }
}
