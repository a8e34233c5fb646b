//! Stage 2: which service is this packet for (VIP, port, protocol), or which service's
//! backend is this NAT reply from? Services are found in the exact array table
//! `SERVICE_INDEX` (`lb_common::index`: one hash, a few array reads), not in the
//! `SERVICES` hash; replies in `REVERSE`, behind the `REPLY_FILTER` bitmap that turns
//! away most other traffic with one array read.

use lb_common::{index, Endpoint, ReverseValue, ServiceInfo};

use crate::{
    maps::{REPLY_FILTER, REVERSE, SERVICE_INDEX, SERVICE_INDEX_HEAD},
    parse::Parsed,
};

/// The service addressed by the packet's destination: exact port first, then the VIP's
/// all-ports service (port 0).
#[inline(always)]
pub fn lookup_service(p: &Parsed) -> Option<ServiceInfo> {
    let head = *SERVICE_INDEX_HEAD.get(0)?;
    let mut key = Endpoint {
        addr: p.dst,
        port: p.dport,
        proto: p.proto,
        family: p.family,
    };
    let slot = |i: u32| SERVICE_INDEX.get(i);
    if let Some(s) = index::find(&key, head, slot) {
        return Some(s.info);
    }
    key.port = 0;
    index::find(&key, head, slot).map(|s| s.info)
}

/// The VIP a reply from a backend endpoint must be rewritten to (NAT services only).
#[inline(always)]
pub fn lookup_reply(p: &Parsed) -> Option<ReverseValue> {
    if !index::reply_maybe(&p.src, |w| REPLY_FILTER.get(w).copied()) {
        return None;
    }
    let mut key = Endpoint {
        addr: p.src,
        port: p.sport,
        proto: p.proto,
        family: p.family,
    };
    // SAFETY: values are plain data copied out immediately.
    if let Some(r) = unsafe { REVERSE.get(&key) } {
        return Some(*r);
    }
    key.port = 0;
    unsafe { REVERSE.get(&key) }.copied()
}
