//! The neighbours the fast path needs, owned by the agent (issue 10; it replaces the
//! UDP-to-port-9 priming of DSR backends that lived in `neighbours.rs`).
//!
//! The data path forwards with `bpf_fib_lookup`, which needs the next hop's MAC address
//! in the kernel's neighbour table. XDP traffic never makes the kernel resolve a
//! neighbour, nor confirm one: entries created by the kernel's own traffic go stale and
//! are garbage-collected, and a NAT reply (source: the VIP, often a local address) or a
//! DSR packet cannot be handed to the kernel to have it resolved. So the agent keeps the
//! next hops resolved itself, with *managed* neighbour entries (`NTF_EXT_MANAGED`, Linux
//! 5.16+): the kernel resolves them at once, keeps them reachable by probing, and never
//! garbage-collects them.
//!
//! Which next hops:
//! - proactively, at start, on every configuration change and every [`REFRESH`]: the next
//!   hop of every backend (a route lookup), and the gateway of every route through an
//!   attached interface (the reply path's client-side next hops);
//! - reactively, every next hop the data path reports (`NEIGH_EVENTS` ring buffer, one
//!   [`lb_common::NeighMiss`] at most every `NEIGH_REPORT_NS` per next hop): clients on a
//!   directly connected network are their own next hop.
//!
//! A reported next hop stays managed while it was reported within [`REPORTED_KEEP`], or
//! is the address of a client pinned in a NAT service's stick table (a directly connected
//! client keeps its entry as long as it is sticky); otherwise its entry is deleted. At
//! most [`MAX_REPORTED`] reported next hops are managed; beyond that a new one is left to
//! the kernel (the packet that met it waits in the kernel's neighbour queue, which
//! resolves it as an ordinary entry). Entries deleted
//! under the agent (`ip neigh flush`) are written again as soon as the kernel says so
//! (the `RTNLGRP_NEIGH` notifications), so a flush costs no packet that the agent can
//! save. The same notifications time each resolution: from the data path's first miss to
//! a usable entry ([`Status`]).
//!
//! At every refresh the agent also checks what can never work and says how to fix it
//! ([`Status::warnings`]): forwarding disabled on an attached interface (the FIB lookup
//! then fails), a NAT backend reached through an interface stickylb is not attached to
//! (its replies would never be rewritten), a DSR backend behind a gateway.
//!
//! Netlink goes through the `rtnetlink` crate (route lookups, neighbour entries and their
//! notifications); the ring buffer through aya's `RingBuf` with tokio's `AsyncFd`. What it
//! reports is the stats schema's [`lb_model::stats::Neighbours`] and the setup warnings.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use futures_util::stream::TryStreamExt;
use lb_common::{
    ip_from_addr, NeighMiss, StickKey, StickValue, MISS_DSR_TO_BACKEND, MISS_ENCAP_TO_BACKEND,
    MISS_NAT_TO_BACKEND, MISS_REPLY,
};
use lb_model::{clock::monotonic_ns, spec::Forwarding, stats, sync::lock};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
        NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
    AddressFamily, RouteNetlinkMessage,
};
use rtnetlink::{Handle, MulticastGroup};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};

/// How often the proactive set (backends, gateways) and the checks are redone.
pub const REFRESH: Duration = Duration::from_secs(5);
/// How long a next hop the data path reported stays managed after its last report
/// (unless it is a pinned client, see the module doc).
pub const REPORTED_KEEP: Duration = Duration::from_secs(600);
/// Most reported next hops kept as managed entries at once; beyond them, a new one is
/// left to the kernel (the queued packet makes it resolve an ordinary entry).
pub const MAX_REPORTED: usize = 4096;
/// The gateways of routes through attached interfaces are looked up every this many
/// refreshes (a route dump; the table may be large), and on every configuration change.
const GATEWAY_EVERY: u32 = 12;
/// An entry is written again at most this often (reports and deletions can repeat).
const REWRITE_GAP: Duration = Duration::from_millis(50);

/// What the data path needs, from the running configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Interfaces the program is attached to.
    pub ifaces: Vec<String>,
    /// Every backend: (service, address, how its service forwards).
    pub backends: Vec<(String, IpAddr, Mode)>,
    /// Ids of the NAT services (their stick tables name pinned clients).
    pub nat_services: Vec<u32>,
    /// (service, VIP) of every DSR service.
    pub dsr_vips: Vec<(String, IpAddr)>,
}

/// How a backend's service forwards, as far as its next hop is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// NAT: replies come back through the balancer.
    Nat,
    /// L2 DSR: only the MAC changes, the backend must be on-link.
    L2Dsr,
    /// L3 DSR (IPIP, GUE): anywhere the balancer routes to.
    Encap,
}

impl From<Forwarding> for Mode {
    fn from(f: Forwarding) -> Self {
        if f == Forwarding::Nat {
            Mode::Nat
        } else if f.is_encap() {
            Mode::Encap
        } else {
            Mode::L2Dsr
        }
    }
}

/// A next hop: an address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hop {
    pub ifindex: u32,
    pub addr: IpAddr,
}

/// What the agent knows about one next hop it keeps.
#[derive(Clone, Debug, Default)]
struct Entry {
    /// The next hop of a backend (as of the last refresh).
    backend: bool,
    /// The gateway of a route through an attached interface (as of the last refresh).
    gateway: bool,
    /// Last report by the data path.
    reported: Option<Instant>,
    /// A report not yet followed by a usable entry: when it arrived, and the data path's
    /// miss time (CLOCK_MONOTONIC_COARSE ns).
    pending: Option<(Instant, u64)>,
    /// Last time the agent wrote the entry.
    written: Option<Instant>,
    /// Written as managed (false: `NTF_USE` only, over [`MAX_REPORTED`]).
    managed: bool,
    /// Last state the kernel gave (NUD bits), 0 = none/unknown or deleted.
    state: u16,
    /// Whether the kernel's entry is managed (as last heard).
    kernel_managed: bool,
    /// Deleted (or re-created unmanaged by the kernel) while a rewrite was too recent:
    /// checked again after [`REWRITE_GAP`].
    retry: bool,
    /// A FAILED state was logged (until it resolves again).
    failed_logged: bool,
}

const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
const NUD_FAILED: u16 = 0x20;

/// Counters and figures for `stickylb status`, `stats` and the metrics (written out as
/// [`stats::Neighbours`] by [`Status::schema`]).
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Next hops the agent keeps managed now.
    pub managed: usize,
    /// Of which reported by the data path (not backends or gateways).
    pub reported: usize,
    /// Reports read from the data path.
    pub reports: u64,
    /// Entries written (created, converted to managed, or re-created after a deletion).
    pub writes: u64,
    /// Entries written again after something deleted them (`ip neigh flush`…) or the
    /// kernel re-created them as ordinary entries.
    pub rewritten_after_delete: u64,
    /// Reported next hops whose entries were deleted again (no longer needed).
    pub aged_out: u64,
    /// Reports of new next hops beyond [`MAX_REPORTED`], left to the kernel.
    pub over_limit: u64,
    /// Netlink requests that failed (the last error is kept).
    pub errors: u64,
    pub last_error: Option<String>,
    /// Resolutions timed from the data path's first miss to a usable entry.
    pub resolved: u64,
    pub resolve_ms_last: f64,
    pub resolve_ms_max: f64,
    pub resolve_ms_sum: f64,
    /// Configurations that cannot work, each with its fix.
    pub warnings: Vec<String>,
}

impl Status {
    /// The figures as the stats schema has them (times rounded to the µs, the average
    /// computed).
    pub fn schema(&self) -> stats::Neighbours {
        stats::Neighbours {
            managed: self.managed as u64,
            reported: self.reported as u64,
            reports: self.reports,
            writes: self.writes,
            rewritten_after_delete: self.rewritten_after_delete,
            aged_out: self.aged_out,
            over_limit: self.over_limit,
            errors: self.errors,
            last_error: self.last_error.clone(),
            resolved: self.resolved,
            resolve_ms_last: round(self.resolve_ms_last),
            resolve_ms_max: round(self.resolve_ms_max),
            resolve_ms_avg: if self.resolved > 0 {
                round(self.resolve_ms_sum / self.resolved as f64)
            } else {
                0.0
            },
        }
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// The running neighbour keeper: a handle for the agent.
pub struct Neighbours {
    status: Arc<Mutex<Status>>,
    needs: watch::Sender<Needs>,
}

impl Neighbours {
    /// Starts the keeper on the current tokio runtime: `ring` is the data path's
    /// `NEIGH_EVENTS` map, `stick` the stick table (for pinned clients), `needs` the
    /// first configuration. The first refresh (proactive entries, checks) starts at once
    /// in the background: a large configuration (thousands of backends, a route lookup
    /// each) does not delay the control socket.
    pub async fn start(
        ring: Option<RingBuf<MapData>>,
        stick: Option<BpfHashMap<MapData, StickKey, StickValue>>,
        needs: Needs,
    ) -> Result<Neighbours> {
        let (conn, handle, _) =
            rtnetlink::new_connection().context("opening a netlink socket for neighbours")?;
        tokio::spawn(conn);
        let (mconn, _mhandle, notes) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Neigh])
                .context("subscribing to neighbour notifications")?;
        tokio::spawn(mconn);
        let status = Arc::new(Mutex::new(Status::default()));
        let (tx, rx) = watch::channel(needs);
        let (retry_tx, retry_rx) = mpsc::unbounded_channel();
        let keeper = Keeper {
            handle,
            status: status.clone(),
            entries: BTreeMap::new(),
            stick,
            warned: BTreeSet::new(),
            noted: BTreeSet::new(),
            retry: retry_tx,
            since_gateways: 0,
            gateways: BTreeSet::new(),
        };
        let (miss_tx, miss_rx) = mpsc::unbounded_channel();
        if let Some(ring) = ring {
            tokio::spawn(read_ring(ring, miss_tx));
        }
        tokio::spawn(keeper.run(rx, miss_rx, retry_rx, notes));
        Ok(Neighbours { status, needs: tx })
    }

    /// The configuration changed: refresh the proactive set and the checks now.
    pub fn set_needs(&self, needs: Needs) {
        self.needs.send_if_modified(|n| {
            if *n == needs {
                false
            } else {
                *n = needs;
                true
            }
        });
    }

    /// A copy of the current figures and warnings.
    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }
}

/// Reads `NeighMiss` records from the ring buffer as they arrive.
async fn read_ring(ring: RingBuf<MapData>, tx: mpsc::UnboundedSender<NeighMiss>) {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same for as long
    // as the AsyncFd (its owner) lives.
    let mut fd = match unsafe {
        AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    } {
        Ok(fd) => fd,
        Err(e) => {
            log::error!("cannot poll the data path's next-hop reports: {e}; next hops are only resolved proactively");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                log::error!("polling the next-hop reports failed: {e}");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<NeighMiss>() {
                // SAFETY: the record is a NeighMiss written by the data path (repr(C),
                // any bit pattern valid); read unaligned from the ring's memory.
                let miss = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const NeighMiss) };
                if tx.send(miss).is_err() {
                    return;
                }
            }
        }
        guard.clear_ready();
    }
}

struct Keeper {
    handle: Handle,
    status: Arc<Mutex<Status>>,
    entries: BTreeMap<Hop, Entry>,
    stick: Option<BpfHashMap<MapData, StickKey, StickValue>>,
    /// Warnings already logged (each is logged once, when it first appears).
    warned: BTreeSet<String>,
    /// Advice already logged (a setup that works only under a condition the agent
    /// cannot see), once each.
    noted: BTreeSet<String>,
    /// Deleted entries to look at again shortly (`ip neigh flush` deletes in rounds).
    retry: mpsc::UnboundedSender<Hop>,
    /// Refreshes since the gateways were last looked up, and what was found.
    since_gateways: u32,
    gateways: BTreeSet<Hop>,
}

/// Name of an interface by index (for messages).
fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into buf.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("ifindex {index}");
    }
    // SAFETY: NUL-terminated by if_indextoname.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn why_name(why: u8) -> &'static str {
    match why {
        MISS_NAT_TO_BACKEND => "a NAT packet to a backend",
        MISS_DSR_TO_BACKEND => "a DSR packet to a backend",
        MISS_REPLY => "a NAT reply to a client",
        MISS_ENCAP_TO_BACKEND => "an encapsulated packet to a backend",
        _ => "a packet",
    }
}

/// A route lookup's answer: where `dst` goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTo {
    /// Through `hop` (the gateway, or `dst` itself when on-link).
    Via { hop: Hop, gateway: bool },
    /// A local address of this host.
    Local,
    /// No usable route (unreachable, blackhole, prohibit, none).
    None(String),
}

/// Asks the kernel how it would route `dst` (`ip route get`).
pub async fn route_get(handle: &Handle, dst: IpAddr) -> RouteTo {
    let mut msg = RouteMessage::default();
    match dst {
        IpAddr::V4(v4) => {
            msg.header.address_family = AddressFamily::Inet;
            msg.header.destination_prefix_length = 32;
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(v4)));
        }
        IpAddr::V6(v6) => {
            msg.header.address_family = AddressFamily::Inet6;
            msg.header.destination_prefix_length = 128;
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet6(v6)));
        }
    }
    let mut answers = handle.route().get(msg).execute();
    let route = match answers.try_next().await {
        Ok(Some(r)) => r,
        Ok(None) => return RouteTo::None("no answer".into()),
        Err(e) => return RouteTo::None(netlink_error(&e)),
    };
    match route.header.kind {
        RouteType::Unicast => {}
        RouteType::Local => return RouteTo::Local,
        RouteType::Unreachable => return RouteTo::None("unreachable".into()),
        RouteType::BlackHole => return RouteTo::None("blackhole".into()),
        RouteType::Prohibit => return RouteTo::None("prohibit".into()),
        other => return RouteTo::None(format!("a route of type {other:?}")),
    }
    let mut oif = 0;
    let mut gw = None;
    for a in &route.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = *i,
            RouteAttribute::Gateway(g) => gw = route_addr(g),
            RouteAttribute::Via(RouteVia::Inet(v4)) => gw = Some(IpAddr::V4(*v4)),
            RouteAttribute::Via(RouteVia::Inet6(v6)) => gw = Some(IpAddr::V6(*v6)),
            _ => {}
        }
    }
    if oif == 0 {
        return RouteTo::None("no output interface".into());
    }
    RouteTo::Via {
        hop: Hop {
            ifindex: oif,
            addr: gw.unwrap_or(dst),
        },
        gateway: gw.is_some(),
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn netlink_error(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => match m.code {
            Some(c) => std::io::Error::from_raw_os_error(-c.get()).to_string(),
            None => "netlink error".into(),
        },
        other => other.to_string(),
    }
}

/// The gateways of every unicast route (all tables) through one of `ifindexes`.
async fn gateways(handle: &Handle, ifindexes: &BTreeSet<u32>) -> Result<BTreeSet<Hop>> {
    let mut out = BTreeSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family;
        let mut routes = handle.route().get(msg).execute();
        while let Some(r) = routes.try_next().await.context("dumping routes")? {
            if r.header.kind != RouteType::Unicast {
                continue;
            }
            let mut oif = 0;
            let mut gw = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = *i,
                    RouteAttribute::Gateway(g) => gw = route_addr(g),
                    RouteAttribute::Via(RouteVia::Inet(v4)) => gw = Some(IpAddr::V4(*v4)),
                    RouteAttribute::Via(RouteVia::Inet6(v6)) => gw = Some(IpAddr::V6(*v6)),
                    RouteAttribute::MultiPath(hops) => {
                        for h in hops {
                            let g = h.attributes.iter().find_map(|a| match a {
                                RouteAttribute::Gateway(g) => route_addr(g),
                                RouteAttribute::Via(RouteVia::Inet(v4)) => Some(IpAddr::V4(*v4)),
                                RouteAttribute::Via(RouteVia::Inet6(v6)) => Some(IpAddr::V6(*v6)),
                                _ => None,
                            });
                            if let Some(g) = g {
                                if ifindexes.contains(&h.interface_index) {
                                    out.insert(Hop {
                                        ifindex: h.interface_index,
                                        addr: g,
                                    });
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let Some(g) = gw {
                if ifindexes.contains(&oif) {
                    out.insert(Hop {
                        ifindex: oif,
                        addr: g,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Neighbour message header and destination attribute for `hop`.
fn neigh_message(hop: &Hop) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = match hop.addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.ifindex = hop.ifindex;
    m.attributes
        .push(NeighbourAttribute::Destination(match hop.addr {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    m
}

/// Writes a managed entry for `hop` (created, or an existing one made managed; a valid
/// entry keeps its state and address), or with `managed = false` only makes the kernel
/// resolve it now (`NTF_USE`).
pub async fn write_entry(handle: &Handle, hop: &Hop, managed: bool) -> Result<(), String> {
    let mut req = handle
        .neighbours()
        .add(hop.ifindex, hop.addr)
        .state(NeighbourState::None)
        .replace();
    if managed {
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    } else {
        req = req.flags(NeighbourFlags::Use);
    }
    req.execute().await.map_err(|e| netlink_error(&e))
}

/// (hop, state, managed) of a neighbour message.
fn parse_neigh(m: &NeighbourMessage) -> Option<(Hop, u16, bool)> {
    let addr = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })?;
    let managed = m.attributes.iter().any(
        |a| matches!(a, NeighbourAttribute::ExtFlags(f) if f.contains(NeighbourExtFlags::Managed)),
    );
    Some((
        Hop {
            ifindex: m.header.ifindex,
            addr,
        },
        u16::from(m.header.state),
        managed,
    ))
}

impl Keeper {
    fn with_status<T>(&self, f: impl FnOnce(&mut Status) -> T) -> T {
        f(&mut lock(&self.status))
    }

    async fn run<S, A>(
        mut self,
        mut needs: watch::Receiver<Needs>,
        mut misses: mpsc::UnboundedReceiver<NeighMiss>,
        mut retries: mpsc::UnboundedReceiver<Hop>,
        mut notes: S,
    ) where
        S: futures_util::Stream<Item = (NetlinkMessage<RouteNetlinkMessage>, A)> + Unpin,
    {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: the start-time refresh and checks.
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let n = needs.borrow().clone();
                    self.refresh(&n).await;
                }
                changed = needs.changed() => {
                    if changed.is_err() {
                        return; // the agent is gone
                    }
                    let n = needs.borrow_and_update().clone();
                    self.since_gateways = 0;
                    self.refresh(&n).await;
                }
                Some(miss) = misses.recv() => self.on_miss(miss).await,
                Some(hop) = retries.recv() => self.on_retry(hop).await,
                Some((msg, _)) = futures_util::StreamExt::next(&mut notes) => self.on_note(msg).await,
            }
        }
    }

    /// A next hop reported by the data path.
    async fn on_miss(&mut self, miss: NeighMiss) {
        let hop = Hop {
            ifindex: miss.hop.ifindex,
            addr: ip_from_addr(&miss.hop.addr, miss.hop.family),
        };
        let now = Instant::now();
        if !self.entries.contains_key(&hop) {
            let reported = self
                .entries
                .values()
                .filter(|e| !e.backend && !e.gateway)
                .count();
            if reported >= MAX_REPORTED {
                // Left to the kernel: the queued packet makes it resolve the next hop
                // (an ordinary entry); later packets meet it or are queued again.
                self.with_status(|s| {
                    s.reports += 1;
                    s.over_limit += 1;
                });
                return;
            }
        }
        let e = self.entries.entry(hop).or_default();
        let new = e.reported.is_none() && !e.backend && !e.gateway;
        e.reported = Some(now);
        if e.pending.is_none() {
            e.pending = Some((now, miss.at_ns));
        }
        if e.written.is_some_and(|w| now - w < REWRITE_GAP) {
            self.with_status(|s| s.reports += 1);
            return;
        }
        if new {
            log::debug!(
                "next hop {} on {} unresolved ({}): resolving it",
                hop.addr,
                ifname(hop.ifindex),
                why_name(miss.why),
            );
        }
        let r = write_entry(&self.handle, &hop, true).await;
        let e = self.entries.entry(hop).or_default();
        e.written = Some(now);
        e.managed |= r.is_ok();
        self.with_status(|s| {
            s.reports += 1;
            s.writes += 1;
            if let Err(err) = &r {
                s.errors += 1;
                s.last_error = Some(format!(
                    "resolving {} on {}: {err}",
                    hop.addr,
                    ifname(hop.ifindex)
                ));
            }
        });
        if let Err(err) = r {
            log::warn!(
                "cannot create a neighbour entry for next hop {} on {}: {err}",
                hop.addr,
                ifname(hop.ifindex)
            );
        }
        self.update_counts();
    }

    /// A neighbour notification from the kernel.
    async fn on_note(&mut self, msg: NetlinkMessage<RouteNetlinkMessage>) {
        let (deleted, m) = match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => (false, m),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(m)) => (true, m),
            _ => return,
        };
        let Some((hop, state, managed)) = parse_neigh(&m) else {
            return;
        };
        let Some(e) = self.entries.get_mut(&hop) else {
            return;
        };
        let now = Instant::now();
        if deleted {
            e.state = 0;
            e.kernel_managed = false;
        } else {
            e.state = state;
            e.kernel_managed = managed;
        }
        if must_rewrite(deleted, managed, e.backend || e.gateway || e.managed) {
            if e.written.is_some_and(|w| now - w < REWRITE_GAP) {
                // Written moments ago (a flush deletes in rounds): look again shortly.
                if !e.retry {
                    e.retry = true;
                    let tx = self.retry.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(REWRITE_GAP).await;
                        let _ = tx.send(hop);
                    });
                }
            } else {
                self.rewrite(hop).await;
            }
        }
        if deleted {
            return;
        }
        let Some(e) = self.entries.get_mut(&hop) else {
            return;
        };
        if state & NUD_FAILED != 0 && !e.failed_logged {
            e.failed_logged = true;
            log::warn!(
                "next hop {} on {} does not answer ARP / neighbour discovery: packets to it wait, then are lost; check the host or the route",
                hop.addr,
                ifname(hop.ifindex)
            );
        }
        if state & NUD_VALID == 0 {
            return;
        }
        e.failed_logged = false;
        if let Some((at, miss_ns)) = e.pending.take() {
            let agent_ms = now.duration_since(at).as_secs_f64() * 1000.0;
            // The data path's clock ticks coarsely (a jiffy): never below what the agent saw.
            let total_ms = (monotonic_ns().saturating_sub(miss_ns) as f64 / 1e6).max(agent_ms);
            log::debug!(
                "next hop {} on {} resolved {:.2} ms after the data path's first miss ({:.2} ms after the agent heard of it)",
                hop.addr,
                ifname(hop.ifindex),
                total_ms,
                agent_ms
            );
            self.with_status(|s| {
                s.resolved += 1;
                s.resolve_ms_last = total_ms;
                s.resolve_ms_sum += total_ms;
                if total_ms > s.resolve_ms_max {
                    s.resolve_ms_max = total_ms;
                }
            });
        }
    }

    /// Writes a needed entry again after it was deleted under the agent.
    async fn rewrite(&mut self, hop: Hop) {
        let Some(e) = self.entries.get_mut(&hop) else {
            return;
        };
        let managed = e.managed || e.backend || e.gateway;
        e.written = Some(Instant::now());
        let r = write_entry(&self.handle, &hop, managed).await;
        log::debug!(
            "neighbour entry {} on {} was deleted: written again ({r:?})",
            hop.addr,
            ifname(hop.ifindex)
        );
        self.with_status(|s| {
            s.writes += 1;
            s.rewritten_after_delete += 1;
            if let Err(err) = r {
                s.errors += 1;
                s.last_error = Some(err);
            }
        });
    }

    /// A deleted entry, looked at again: written if it is still gone.
    async fn on_retry(&mut self, hop: Hop) {
        let Some(e) = self.entries.get_mut(&hop) else {
            return;
        };
        e.retry = false;
        if (e.state == 0 || !e.kernel_managed) && (e.managed || e.backend || e.gateway) {
            self.rewrite(hop).await;
        }
    }

    fn update_counts(&self) {
        let managed = self.entries.values().filter(|e| e.managed).count();
        let reported = self
            .entries
            .values()
            .filter(|e| e.managed && !e.backend && !e.gateway)
            .count();
        self.with_status(|s| {
            s.managed = managed;
            s.reported = reported;
        });
    }

    /// Is `addr` a client pinned in a NAT service's stick table?
    fn pinned_client(&self, needs: &Needs, addr: IpAddr) -> bool {
        let Some(stick) = &self.stick else {
            return false;
        };
        let (client, _) = lb_common::addr_from_ip(addr);
        needs
            .nat_services
            .iter()
            .any(|&service_id| stick.get(&StickKey { service_id, client }, 0).is_ok())
    }

    /// Proactive entries, aging, and the checks.
    async fn refresh(&mut self, needs: &Needs) {
        let attached: BTreeMap<u32, String> = needs
            .ifaces
            .iter()
            .map(|n| (super::attach::ifindex(n), n.clone()))
            .filter(|(i, _)| *i != 0)
            .collect();
        let indexes: BTreeSet<u32> = attached.keys().copied().collect();
        let mut warnings = forwarding_warnings(needs, &attached);
        // Backends.
        let mut backend_hops = BTreeSet::new();
        let mut routes: BTreeMap<IpAddr, RouteTo> = BTreeMap::new();
        for (_, addr, _) in &needs.backends {
            if !routes.contains_key(addr) {
                routes.insert(*addr, route_get(&self.handle, *addr).await);
            }
        }
        for (service, addr, mode) in &needs.backends {
            match routes[addr].clone() {
                RouteTo::Via { hop, gateway } => {
                    backend_hops.insert(hop);
                    if *mode == Mode::Nat && !indexes.contains(&hop.ifindex) {
                        warnings.push(format!(
                            "service {service}: NAT backend {addr} is reached through {}, which stickylb is not attached to: its replies would not be rewritten to the VIP, so its clients get no answers; fix: add `--iface {}` (or route {addr} through an attached interface)",
                            ifname(hop.ifindex),
                            ifname(hop.ifindex)
                        ));
                    }
                    if *mode == Mode::L2Dsr && gateway {
                        warnings.push(format!(
                            "service {service}: DSR backend {addr} is behind gateway {} on {}: L2 direct server return rewrites only the MAC address, so the packets would reach the gateway, not the backend; fix: put the backend on a network the balancer is attached to, or use forwarding = \"ipip\" / \"gue\" (L3 DSR) or \"nat\"",
                            hop.addr,
                            ifname(hop.ifindex)
                        ));
                    }
                }
                RouteTo::Local => warnings.push(format!(
                    "service {service}: backend {addr} is an address of this host: the data path cannot forward to it (its packets are passed to the kernel); fix: use a backend on another host"
                )),
                RouteTo::None(why) => warnings.push(format!(
                    "service {service}: backend {addr} has no route ({why}): its clients' packets are dropped; fix: add a route to {addr} through an attached interface"
                )),
            }
        }
        // DSR with an IPv4 VIP that is also an address of this host: the backends'
        // answers (source: the VIP) are martians to this kernel if they are routed back
        // through it, unless accept_local is on where they arrive.
        for (service, vip) in &needs.dsr_vips {
            if !vip.is_ipv4() || route_get(&self.handle, *vip).await != RouteTo::Local {
                continue;
            }
            for (s, addr, mode) in &needs.backends {
                if *mode != Mode::L2Dsr || s != service || !addr.is_ipv4() {
                    continue;
                }
                let Some(hop) = backend_hops.iter().find(|h| h.addr == *addr) else {
                    continue;
                };
                let name = ifname(hop.ifindex);
                let off =
                    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/accept_local"))
                        .map(|v| v.trim() == "0")
                        .unwrap_or(false);
                let note = format!(
                    "service {service}: DSR VIP {vip} is also an address of this host; if the backends' answers come back through it (it is their gateway), the kernel drops them as martians (source: a local address); fix: sysctl -w net.ipv4.conf.{name}.accept_local=1, or route the answers around this host"
                );
                if off && self.noted.insert(note.clone()) {
                    log::warn!("{note}");
                }
            }
        }
        if self.since_gateways == 0 {
            match gateways(&self.handle, &indexes).await {
                Ok(g) => self.gateways = g,
                Err(e) => self.with_status(|s| {
                    s.errors += 1;
                    s.last_error = Some(format!("{e:#}"));
                }),
            }
        }
        self.since_gateways = (self.since_gateways + 1) % GATEWAY_EVERY;
        let gateway_hops = self.gateways.clone();
        // What the kernel has now.
        let mut kernel: BTreeMap<Hop, (u16, bool)> = BTreeMap::new();
        let mut dump = self.handle.neighbours().get().execute();
        loop {
            match dump.try_next().await {
                Ok(Some(m)) => {
                    if let Some((hop, state, managed)) = parse_neigh(&m) {
                        kernel.insert(hop, (state, managed));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    log::debug!("dumping neighbours: {e}");
                    break;
                }
            }
        }
        // Managed entries on attached interfaces from a previous agent: adopted as
        // reported (they age out like any other).
        let now = Instant::now();
        for (hop, (_, managed)) in &kernel {
            if *managed && indexes.contains(&hop.ifindex) && !self.entries.contains_key(hop) {
                self.entries.insert(
                    *hop,
                    Entry {
                        reported: Some(now),
                        managed: true,
                        written: Some(now),
                        ..Default::default()
                    },
                );
            }
        }
        for e in self.entries.values_mut() {
            e.backend = false;
            e.gateway = false;
        }
        for hop in &backend_hops {
            self.entries.entry(*hop).or_default().backend = true;
        }
        for hop in &gateway_hops {
            self.entries.entry(*hop).or_default().gateway = true;
        }
        // Age out reported next hops nobody needs any more.
        let mut gone = Vec::new();
        for (hop, e) in &self.entries {
            if e.backend || e.gateway {
                continue;
            }
            let failed = kernel.get(hop).is_some_and(|(s, _)| s & NUD_FAILED != 0);
            // (The stick-table lookups only when the report is old.)
            let recent = keep_reported(e.reported, now, failed, false);
            if recent || keep_reported(e.reported, now, failed, self.pinned_client(needs, hop.addr))
            {
                continue;
            }
            gone.push(*hop);
        }
        for hop in &gone {
            let e = self.entries.remove(hop).unwrap_or_default();
            if e.managed && kernel.get(hop).is_some_and(|(_, m)| *m) {
                let r = self
                    .handle
                    .neighbours()
                    .del(neigh_message(hop))
                    .execute()
                    .await;
                log::info!(
                    "next hop {} on {} no longer needed: managed entry removed{}",
                    hop.addr,
                    ifname(hop.ifindex),
                    r.err()
                        .map(|e| format!(" (failed: {e})"))
                        .unwrap_or_default()
                );
            }
        }
        // Write what is missing or not managed.
        let mut writes = 0u64;
        let mut errors = Vec::new();
        let hops: Vec<(Hop, bool)> = self
            .entries
            .iter()
            .map(|(h, e)| (*h, e.backend || e.gateway || e.managed))
            .collect();
        for (hop, managed) in hops {
            let have = kernel.get(&hop);
            let ok = match have {
                Some((_, m)) => *m || !managed,
                None => false,
            };
            if let Some((state, _)) = have {
                if let Some(e) = self.entries.get_mut(&hop) {
                    e.state = *state;
                }
            }
            if ok {
                continue;
            }
            let r = write_entry(&self.handle, &hop, managed).await;
            writes += 1;
            if let Some(e) = self.entries.get_mut(&hop) {
                e.written = Some(now);
                e.managed |= managed && r.is_ok();
            }
            if let Err(err) = r {
                errors.push(format!(
                    "neighbour entry for {} on {}: {err}",
                    hop.addr,
                    ifname(hop.ifindex)
                ));
            }
        }
        for w in &warnings {
            if !self.warned.contains(w) {
                log::warn!("{w}");
            }
        }
        for w in &self.warned {
            if !warnings.contains(w) {
                log::info!("resolved: {w}");
            }
        }
        self.warned = warnings.iter().cloned().collect();
        for e in &errors {
            log::warn!("{e}");
        }
        let aged = gone.len() as u64;
        self.with_status(|s| {
            s.writes += writes;
            s.aged_out += aged;
            s.warnings = warnings;
            if let Some(e) = errors.last() {
                s.errors += errors.len() as u64;
                s.last_error = Some(e.clone());
            }
        });
        self.update_counts();
    }
}

/// Whether a reported next hop (not a backend's, not a gateway) stays managed: reported
/// within [`REPORTED_KEEP`], or a client pinned in a NAT stick table whose entry is not
/// FAILED (a client that went away does not keep a probing entry for ever).
fn keep_reported(reported: Option<Instant>, now: Instant, failed: bool, pinned: bool) -> bool {
    reported.is_some_and(|r| now.duration_since(r) < REPORTED_KEEP) || (!failed && pinned)
}

/// Whether a kernel notification about a next hop the agent needs calls for writing it
/// again: it was deleted under the agent (`ip neigh flush`), or re-created by the
/// kernel's own traffic as an ordinary entry (which the collector may take).
fn must_rewrite(deleted: bool, kernel_managed: bool, needed: bool) -> bool {
    needed && (deleted || !kernel_managed)
}

/// Forwarding must be on for every attached interface and family in use: the FIB
/// lookup of the data path refuses to forward otherwise (`FWD_DISABLED`).
fn forwarding_warnings(needs: &Needs, attached: &BTreeMap<u32, String>) -> Vec<String> {
    let mut out = Vec::new();
    let v4 = needs.backends.iter().any(|(_, a, _)| a.is_ipv4());
    let v6 = needs.backends.iter().any(|(_, a, _)| a.is_ipv6());
    for name in attached.values() {
        for (used, family, dir, fix) in [
            (v4, "IPv4", "ipv4", "sysctl -w net.ipv4.ip_forward=1"),
            (
                v6,
                "IPv6",
                "ipv6",
                "sysctl -w net.ipv6.conf.all.forwarding=1",
            ),
        ] {
            if !used {
                continue;
            }
            let key = format!("net.{dir}.conf.{name}.forwarding");
            let path = format!("/proc/sys/net/{dir}/conf/{name}/forwarding");
            if let Ok(v) = std::fs::read_to_string(&path) {
                if v.trim() == "0" {
                    out.push(format!(
                        "{family} forwarding is off on {name} ({key} = 0): the data path cannot forward any {family} packet that arrives there (the FIB refuses), so {family} services get no traffic through it; fix: {fix}"
                    ));
                }
            }
        }
    }
    out
}

/// Makes every address in `addrs` resolved by a managed neighbour entry for its next hop
/// (a route lookup each), then waits up to `wait` for them to become usable. For tools
/// and tests that load the data path without an agent. Returns the failures.
pub fn resolve_blocking(addrs: &[IpAddr], wait: Duration) -> Vec<(IpAddr, String)> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return addrs.iter().map(|a| (*a, e.to_string())).collect(),
    };
    rt.block_on(async {
        let (conn, handle, _) = match rtnetlink::new_connection() {
            Ok(c) => c,
            Err(e) => return addrs.iter().map(|a| (*a, e.to_string())).collect(),
        };
        tokio::spawn(conn);
        let mut failures = Vec::new();
        let mut hops = Vec::new();
        for &a in addrs {
            match route_get(&handle, a).await {
                RouteTo::Via { hop, .. } => match write_entry(&handle, &hop, true).await {
                    Ok(()) => hops.push((a, hop)),
                    Err(e) => failures.push((a, e)),
                },
                RouteTo::Local => failures.push((a, "a local address".into())),
                RouteTo::None(why) => failures.push((a, why)),
            }
        }
        let deadline = Instant::now() + wait;
        loop {
            let mut valid = BTreeSet::new();
            let mut dump = handle.neighbours().get().execute();
            while let Ok(Some(m)) = dump.try_next().await {
                if let Some((hop, state, _)) = parse_neigh(&m) {
                    if state & NUD_VALID != 0 {
                        valid.insert(hop);
                    }
                }
            }
            let missing: Vec<_> = hops.iter().filter(|(_, h)| !valid.contains(h)).collect();
            if missing.is_empty() || Instant::now() >= deadline {
                for (a, h) in missing {
                    failures.push((*a, format!("next hop {} not resolved in time", h.addr)));
                }
                return failures;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_next_hops_age_out_unless_recent_or_pinned() {
        let now = Instant::now() + REPORTED_KEEP * 2;
        let recent = Some(now - Duration::from_secs(1));
        let old = Some(now - REPORTED_KEEP - Duration::from_secs(1));
        assert!(keep_reported(recent, now, false, false));
        assert!(
            keep_reported(recent, now, true, false),
            "recent wins even if failed"
        );
        assert!(!keep_reported(old, now, false, false));
        assert!(
            keep_reported(old, now, false, true),
            "a pinned client keeps its entry"
        );
        assert!(
            !keep_reported(old, now, true, true),
            "unless it stopped answering"
        );
        assert!(!keep_reported(None, now, false, false));
    }

    #[test]
    fn only_needed_entries_lost_or_unmanaged_are_rewritten() {
        assert!(must_rewrite(true, false, true), "deleted");
        assert!(must_rewrite(false, false, true), "re-created unmanaged");
        assert!(!must_rewrite(false, true, true), "managed: fine");
        assert!(!must_rewrite(true, false, false), "not ours to keep");
        assert!(!must_rewrite(false, false, false));
    }

    #[test]
    fn status_schema_rounds_and_averages() {
        let s = Status {
            resolved: 4,
            resolve_ms_sum: 10.0,
            resolve_ms_max: 4.123456,
            ..Default::default()
        };
        let j = serde_json::to_value(s.schema()).unwrap();
        assert_eq!(j["resolve_ms_avg"], 2.5);
        assert_eq!(j["resolve_ms_max"], 4.123);
        assert_eq!(Status::default().schema().resolve_ms_avg, 0.0);
    }

    #[test]
    fn forwarding_modes_map_to_next_hop_modes() {
        assert_eq!(Mode::from(Forwarding::Nat), Mode::Nat);
        assert_eq!(Mode::from(Forwarding::Dsr), Mode::L2Dsr);
        for f in Forwarding::ALL.iter().filter(|f| f.is_encap()) {
            assert_eq!(Mode::from(*f), Mode::Encap, "{f}");
        }
    }
}
