//! Stage 2: which service is this packet for (VIP, port, protocol), or which service's
//! backend is this NAT reply from?

use lb_common::{Endpoint, ReverseValue, ServiceInfo};

use crate::{
    maps::{REVERSE, SERVICES},
    parse::Parsed,
};

/// The service addressed by the packet's destination: exact port first, then the VIP's
/// all-ports service (port 0).
#[inline(always)]
pub fn lookup_service(p: &Parsed) -> Option<ServiceInfo> {
    let mut key = Endpoint {
        addr: p.dst,
        port: p.dport,
        proto: p.proto,
        family: p.family,
    };
    // SAFETY: values are plain data copied out immediately.
    if let Some(s) = unsafe { SERVICES.get(&key) } {
        return Some(*s);
    }
    key.port = 0;
    unsafe { SERVICES.get(&key) }.copied()
}

/// The VIP a reply from a backend endpoint must be rewritten to (NAT services only).
#[inline(always)]
pub fn lookup_reply(p: &Parsed) -> Option<ReverseValue> {
    let mut key = Endpoint {
        addr: p.src,
        port: p.sport,
        proto: p.proto,
        family: p.family,
    };
    if let Some(r) = unsafe { REVERSE.get(&key) } {
        return Some(*r);
    }
    key.port = 0;
    unsafe { REVERSE.get(&key) }.copied()
}
