//! The running replication of one node: the listener, one dialer per peer, the
//! sessions, the sync state, and the handle the agent holds ([`Cluster`]).
//!
//! Tasks (all on the caller's tokio runtime):
//! - **accept**: each connection becomes an *inbound* session: mutual TLS, hello (the
//!   certificate must name the node the hello claims, and that node must be a configured
//!   peer), then the peer's teach and updates are merged into the store and handed to the
//!   agent's [`Sink`]; acknowledgements go back every heartbeat. A newer inbound session
//!   from the same peer replaces the older one.
//! - **dial**, one per peer: an *outbound* session pushes this node's table: a teach
//!   (the whole store, in chunks), then what the store queues for that peer. A queue
//!   that overflowed means a new teach. Reconnects back off from 100 ms to 2 s, and dial
//!   at once when the peer connects to us (it is back).
//! - **maintain**: every 250 ms, the sync state and a step of the store's expiry
//!   (`Store::expire_step`, 65 536 slots a step).
//!
//! Nothing here waits on a peer while holding the store: a slow peer blocks only its
//! own session's writes, and its queue is bounded (see `store`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::catalog::{digest, short_digest, ServiceDef};
use crate::clock::{mono_ms, wall_ms};
use crate::config::{dur, ClusterConfig};
use crate::status::{ClusterStatus, PeerStatus, SessionStatus};
use crate::store::{Applied, Merge, Observed, Store};
use crate::tls::{cert_names, server_name, Tls};
use crate::wire::{
    check_hello, Codec, Hello, Inbound, InboundState, Message, OutboundDictionary, WireError,
    BATCH, MAGIC, PROTOCOL_VERSION,
};
use lb_common::sync::lock;

/// Where replicated entries go: the agent's stick table.
///
/// `apply` gets entries the store adopted from peers, in the order it adopted them
/// (calls never overlap). For each: write `backend` for (`service`, `client`) with
/// last seen `last_seen_ms` (`CLOCK_MONOTONIC_COARSE` ms); if the table already holds
/// the same backend with a later last-seen, keep that. An entry for a backend that is
/// down here is written all the same (the data path re-picks it as usual).
///
/// It runs on the runtime's worker threads, outside the store's lock (so it may call
/// [`Cluster::observe`] or [`Cluster::status`]); calls are serialised, so a slow one
/// slows every inbound session, never the data path or the senders.
pub trait Sink: Send + Sync + 'static {
    fn apply(&self, entries: &[Applied]);
}

/// Most connections in their handshake (TLS and hello) at once, in all and from one
/// address: an unauthenticated flood holds a bounded number of tasks, each for at most
/// `peer_timeout`, and one address cannot take every slot.
const MAX_HANDSHAKES: usize = 256;
const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;

/// Connections in their handshake, per remote address.
#[derive(Default)]
struct Handshakes {
    total: usize,
    by_addr: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// A handshake slot, given back when dropped.
struct HandshakeSlot {
    inner: Arc<Inner>,
    addr: std::net::IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut h = lock(&self.inner.handshakes);
        h.total -= 1;
        if let Some(n) = h.by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                h.by_addr.remove(&self.addr);
            }
        }
    }
}

impl Inner {
    fn handshake_slot(self: &Arc<Self>, addr: std::net::IpAddr) -> Option<HandshakeSlot> {
        let mut h = lock(&self.handshakes);
        let mine = h.by_addr.get(&addr).copied().unwrap_or(0);
        if h.total >= MAX_HANDSHAKES || mine >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        h.total += 1;
        *h.by_addr.entry(addr).or_insert(0) += 1;
        Some(HandshakeSlot {
            inner: self.clone(),
            addr,
        })
    }
}

/// Smallest and largest reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Default)]
struct PeerStats {
    out_connected: bool,
    out_since: Option<u64>,
    out_sessions: u64,
    in_connected: bool,
    in_since: Option<u64>,
    in_sessions: u64,
    last_message: Option<u64>,
    entries_sent: u64,
    entries_received: u64,
    ignored: u64,
    acked: u64,
    teach_out: Option<(u64, u64)>,
    teach_in: Option<(u64, u64)>,
    taught_us: bool,
    teaches_sent: u64,
    digest: Option<[u8; 32]>,
    refusals: u64,
    in_error: Option<String>,
    out_error: Option<String>,
}

struct Peer {
    name: String,
    address: SocketAddr,
    /// Entries queued for it: wake its sender.
    wake: Notify,
    /// It connected to us: dial it now instead of waiting out the backoff.
    redial: Notify,
    /// Generation of its current inbound session (a newer one replaces an older).
    inbound_gen: AtomicU64,
    bytes_sent: Arc<AtomicU64>,
    bytes_received: Arc<AtomicU64>,
    stats: Mutex<PeerStats>,
}

struct Inner {
    cfg: ClusterConfig,
    tls: Tls,
    store: Mutex<Store>,
    /// Held from merging a batch until its `Sink::apply` returns: applies reach the
    /// table in the order the store took them.
    apply: Mutex<()>,
    sink: Arc<dyn Sink>,
    peers: Vec<Peer>,
    services: Mutex<([u8; 32], u32)>,
    started: u64,
    synced: watch::Sender<bool>,
    synced_after: Mutex<Option<u64>>,
    refused_handshakes: AtomicU64,
    last_refusal: Mutex<Option<String>>,
    handshakes: Mutex<Handshakes>,
    stop: CancellationToken,
}

/// The handle of a running replication. Dropping it stops every task.
pub struct Cluster {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// Validates the configuration, loads the credentials, binds the listener and starts
    /// the tasks on the current tokio runtime.
    pub async fn start(
        cfg: ClusterConfig,
        services: &[ServiceDef],
        sink: Arc<dyn Sink>,
    ) -> Result<Cluster> {
        cfg.validate()?;
        let tls = Tls::load(&cfg.ca, &cfg.cert, &cfg.key)?;
        Self::start_with_tls(cfg, tls, services, sink).await
    }

    /// As [`Cluster::start`], with TLS configurations already built.
    pub async fn start_with_tls(
        cfg: ClusterConfig,
        tls: Tls,
        services: &[ServiceDef],
        sink: Arc<dyn Sink>,
    ) -> Result<Cluster> {
        cfg.validate()?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cluster.listen: cannot listen on {}", cfg.listen))?;
        let local_addr = listener.local_addr()?;
        let mut store = Store::new(
            cfg.max_entries,
            cfg.peers.len(),
            cfg.queue,
            cfg.conflict_window.as_millis() as u64,
        );
        store.set_services(services);
        let peers = cfg
            .peers
            .iter()
            .map(|p| Peer {
                name: p.name.clone(),
                address: p.address,
                wake: Notify::new(),
                redial: Notify::new(),
                inbound_gen: AtomicU64::new(0),
                bytes_sent: Arc::new(AtomicU64::new(0)),
                bytes_received: Arc::new(AtomicU64::new(0)),
                stats: Mutex::new(PeerStats::default()),
            })
            .collect();
        let (synced, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            tls,
            store: Mutex::new(store),
            apply: Mutex::new(()),
            sink,
            peers,
            services: Mutex::new((digest(services), services.len() as u32)),
            started: mono_ms(),
            synced,
            synced_after: Mutex::new(None),
            refused_handshakes: AtomicU64::new(0),
            last_refusal: Mutex::new(None),
            handshakes: Mutex::new(Handshakes::default()),
            stop: CancellationToken::new(),
            cfg,
        });
        let mut tasks = vec![tokio::spawn(accept_loop(inner.clone(), listener))];
        for p in 0..inner.peers.len() {
            tasks.push(tokio::spawn(dial_loop(inner.clone(), p)));
        }
        tasks.push(tokio::spawn(maintain(inner.clone())));
        inner.update_synced();
        log::info!(
            "cluster: node {} listening on {local_addr} for {} peer(s)",
            inner.cfg.node,
            inner.peers.len()
        );
        Ok(Cluster {
            inner,
            local_addr,
            tasks,
        })
    }

    /// Makes room in the store for `entries` (the sum of the node's stick-table sizes),
    /// so that it never rehashes while it fills (see `Store::reserve`).
    pub fn reserve(&self, entries: usize) {
        lock(&self.inner.store).reserve(entries);
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the service definitions (on reload); peers are told the new digest.
    pub fn set_services(&self, services: &[ServiceDef]) {
        lock(&self.inner.store).set_services(services);
        *lock(&self.inner.services) = (digest(services), services.len() as u32);
        for p in &self.inner.peers {
            p.wake.notify_one();
        }
    }

    /// Takes what the data path did: events (sent at once) and scan results (refreshes
    /// at most once per refresh interval, and repairs). Returns entries the agent must
    /// write again because its table fell behind the store.
    pub fn observe(&self, observed: &[Observed]) -> Vec<Applied> {
        if observed.is_empty() {
            return Vec::new();
        }
        let now = mono_ms();
        let wall = wall_ms();
        let rewrites = {
            let mut st = lock(&self.inner.store);
            observed
                .iter()
                .filter_map(|o| st.observe(now, wall, o))
                .collect()
        };
        for p in &self.inner.peers {
            p.wake.notify_one();
        }
        rewrites
    }

    /// Whether this node is synced (see docs/CLUSTER.md).
    pub fn synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Watches the sync state (false until synced, then true for good).
    pub fn subscribe_synced(&self) -> watch::Receiver<bool> {
        self.inner.synced.subscribe()
    }

    /// The status for `stickylb peers`.
    pub fn status(&self) -> ClusterStatus {
        self.inner.status()
    }

    /// Runs `f` on the store (tests and table views).
    pub fn with_store<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&lock(&self.inner.store))
    }

    /// Stops every task and waits for them (the listener is closed when this returns).
    pub async fn shutdown(mut self) {
        self.inner.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.inner.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Inner {
    fn hello(&self) -> Message {
        let (digest, services) = *lock(&self.services);
        Message::Hello(Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            node: self.cfg.node.clone(),
            services,
            digest,
        })
    }

    fn refused(&self, what: String) {
        log::warn!("cluster: {what}");
        self.refused_handshakes.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_refusal) = Some(what);
    }

    /// A session with peer `p` ended by an error (`inbound`: its connection to us).
    fn peer_error(&self, p: usize, inbound: bool, what: String) {
        log::warn!("cluster: peer {}: {what}", self.peers[p].name);
        let mut st = lock(&self.peers[p].stats);
        st.refusals += 1;
        if inbound {
            st.in_error = Some(what);
        } else {
            st.out_error = Some(what);
        }
    }

    /// The sync rule: every configured peer has taught us, or is not connected to us
    /// and `sync_timeout` has passed since start. Once synced, stays synced.
    fn waiting_for(&self, now: u64) -> Vec<String> {
        let elapsed = now.saturating_sub(self.started);
        let timeout = self.cfg.sync_timeout.as_millis() as u64;
        let mut waiting = Vec::new();
        for p in &self.peers {
            let st = lock(&p.stats);
            if st.taught_us {
                continue;
            }
            if st.in_connected {
                waiting.push(match st.teach_in {
                    Some((got, total)) => format!("{}: teaching ({got} of {total})", p.name),
                    None => format!("{}: connected, teach not started", p.name),
                });
            } else if elapsed < timeout {
                waiting.push(format!(
                    "{}: not connected to us (waited {} of {})",
                    p.name,
                    dur::format(Duration::from_millis(elapsed / 1000 * 1000)),
                    dur::format(self.cfg.sync_timeout)
                ));
            }
        }
        waiting
    }

    fn update_synced(&self) {
        if *self.synced.borrow() {
            return;
        }
        let now = mono_ms();
        if self.waiting_for(now).is_empty() {
            *lock(&self.synced_after) = Some(now.saturating_sub(self.started));
            self.synced.send_replace(true);
            log::info!(
                "cluster: node {} synced after {} ms",
                self.cfg.node,
                now.saturating_sub(self.started)
            );
        }
    }

    fn status(&self) -> ClusterStatus {
        let now = mono_ms();
        let (entries, counters, queues) = {
            let st = lock(&self.store);
            let queues: Vec<_> = (0..self.peers.len())
                .map(|p| (st.queue_state(p, now), st.overflows(p)))
                .collect();
            (st.len() as u64, st.counters, queues)
        };
        let (digest_now, _) = *lock(&self.services);
        let synced = *self.synced.borrow();
        let peers = self
            .peers
            .iter()
            .zip(queues)
            .map(|(p, ((queued, lag), overflows))| {
                let st = lock(&p.stats);
                let ago = |t: Option<u64>| t.map(|t| now.saturating_sub(t));
                PeerStatus {
                    name: p.name.clone(),
                    address: p.address.to_string(),
                    state: match (st.out_connected, st.in_connected) {
                        (true, true) => "up",
                        (false, false) => "down",
                        _ => "half",
                    },
                    outbound: SessionStatus {
                        connected: st.out_connected,
                        since_ms: ago(st.out_since),
                        sessions: st.out_sessions,
                        last_error: st.out_error.clone(),
                    },
                    inbound: SessionStatus {
                        connected: st.in_connected,
                        since_ms: ago(st.in_since),
                        sessions: st.in_sessions,
                        last_error: st.in_error.clone(),
                    },
                    last_message_ms_ago: ago(st.last_message),
                    entries_sent: st.entries_sent,
                    entries_received: st.entries_received,
                    ignored_unknown: st.ignored,
                    bytes_sent: p.bytes_sent.load(Ordering::Relaxed),
                    bytes_received: p.bytes_received.load(Ordering::Relaxed),
                    queued: queued as u64,
                    lag_ms: lag,
                    acked: st.acked,
                    teach_out: st.teach_out,
                    teach_in: st.teach_in,
                    taught_us: st.taught_us,
                    teaches_sent: st.teaches_sent,
                    resyncs: overflows,
                    services_differ: st.digest.is_some_and(|d| d != digest_now),
                    services_digest: st.digest.as_ref().map(short_digest),
                    refusals: st.refusals,
                }
            })
            .collect();
        ClusterStatus {
            node: self.cfg.node.clone(),
            listen: self.cfg.listen.to_string(),
            synced,
            synced_after_ms: *lock(&self.synced_after),
            waiting_for: if synced {
                Vec::new()
            } else {
                self.waiting_for(now)
            },
            entries,
            services_digest: short_digest(&digest_now),
            counters,
            refused_handshakes: self.refused_handshakes.load(Ordering::Relaxed),
            last_refusal: lock(&self.last_refusal).clone(),
            peers,
        }
    }
}

/// A TCP stream that counts the bytes it carries (TLS included) into a peer's counters.
struct Counted {
    tcp: TcpStream,
    rx: Arc<AtomicU64>,
    tx: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.rx.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.tx.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Reads one message within `limit`.
async fn next_within<R>(
    reader: &mut FramedRead<R, Codec>,
    limit: Duration,
    what: &str,
) -> Result<Message, WireError>
where
    R: AsyncRead + Unpin,
{
    match tokio::time::timeout(limit, reader.next()).await {
        Err(_) => Err(WireError::Io(format!(
            "nothing received for {} ({what})",
            dur::format(limit)
        ))),
        Ok(None) => Err(WireError::Io(format!("connection closed ({what})"))),
        Ok(Some(r)) => r,
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((tcp, remote)) => match inner.handshake_slot(remote.ip()) {
                    Some(slot) => {
                        tokio::spawn(inbound(inner.clone(), tcp, remote, slot));
                    }
                    None => {
                        drop(tcp);
                        inner.refused(format!(
                            "{remote}: closed at once: too many connections in their handshake \
                             (at most {MAX_HANDSHAKES_PER_ADDRESS} from one address, \
                             {MAX_HANDSHAKES} in all)"
                        ));
                    }
                },
                Err(e) => {
                    log::warn!("cluster: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// One inbound session, from the TLS handshake to its end.
async fn inbound(inner: Arc<Inner>, tcp: TcpStream, remote: SocketAddr, slot: HandshakeSlot) {
    let _ = tcp.set_nodelay(true);
    let limit = inner.cfg.peer_timeout;
    // Until the peer is known, its bytes are counted nowhere.
    let counted = Counted {
        tcp,
        rx: Arc::new(AtomicU64::new(0)),
        tx: Arc::new(AtomicU64::new(0)),
    };
    let (rx, tx) = (counted.rx.clone(), counted.tx.clone());
    let acceptor = TlsAcceptor::from(inner.tls.server.clone());
    let tls = tokio::select! {
        _ = inner.stop.cancelled() => return,
        r = tokio::time::timeout(limit, acceptor.accept(counted)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return inner.refused(format!("{remote}: TLS handshake refused: {e}")),
            Err(_) => return inner.refused(format!("{remote}: no TLS handshake within {}", dur::format(limit))),
        },
    };
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned());
    let (r, w) = tokio::io::split(tls);
    let max = inner.cfg.max_frame;
    let mut reader = FramedRead::new(r, Codec::new(max));
    let mut writer = FramedWrite::new(w, Codec::new(max));
    let hello = match next_within(&mut reader, limit, "waiting for the hello").await {
        Ok(Message::Hello(h)) => h,
        Ok(other) => {
            let _ = writer
                .send(Message::Refuse {
                    reason: "the first message must be a hello".into(),
                })
                .await;
            return inner.refused(format!(
                "{remote}: first message was not a hello: {other:?}"
            ));
        }
        Err(e) => {
            let _ = writer
                .send(Message::Refuse {
                    reason: e.to_string(),
                })
                .await;
            return inner.refused(format!("{remote}: {e}"));
        }
    };
    if let Err(e) = check_hello(&hello) {
        let _ = writer
            .send(Message::Refuse {
                reason: e.to_string(),
            })
            .await;
        return match inner.cfg.peer_index(&hello.node) {
            Some(p) => inner.peer_error(p, true, format!("from {remote}: {e}")),
            None => inner.refused(format!("{remote}: {e}")),
        };
    }
    let Some(p) = inner.cfg.peer_index(&hello.node) else {
        let reason = format!(
            "node {:?} is not a peer of {} (its peers: {})",
            hello.node,
            inner.cfg.node,
            inner
                .peers
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writer
            .send(Message::Refuse {
                reason: reason.clone(),
            })
            .await;
        return inner.refused(format!("{remote}: {reason}"));
    };
    if !cert.as_ref().is_some_and(|c| cert_names(c, &hello.node)) {
        let reason = format!(
            "the client certificate does not name {:?} (a DNS subject alternative name is needed)",
            hello.node
        );
        let _ = writer
            .send(Message::Refuse {
                reason: reason.clone(),
            })
            .await;
        return inner.refused(format!("{remote}: {reason}"));
    }
    let peer = &inner.peers[p];
    peer.bytes_received
        .fetch_add(rx.load(Ordering::Relaxed), Ordering::Relaxed);
    peer.bytes_sent
        .fetch_add(tx.load(Ordering::Relaxed), Ordering::Relaxed);
    if writer.send(inner.hello()).await.is_err() {
        return;
    }
    let gen = peer.inbound_gen.fetch_add(1, Ordering::SeqCst) + 1;
    {
        let mut st = lock(&peer.stats);
        st.in_connected = true;
        st.in_since = Some(mono_ms());
        st.in_sessions += 1;
        st.last_message = Some(mono_ms());
        st.digest = Some(hello.digest);
        st.teach_in = None;
    }
    // Authenticated: the handshake slot is free again.
    drop(slot);
    peer.redial.notify_one();
    log::info!("cluster: peer {} connected from {remote}", peer.name);
    let result = receive(&inner, p, gen, &mut reader, &mut writer, &rx, &tx).await;
    if peer.inbound_gen.load(Ordering::SeqCst) == gen {
        let mut st = lock(&peer.stats);
        st.in_connected = false;
        st.in_since = Some(mono_ms());
        st.teach_in = None;
    }
    match result {
        Ok(()) => log::info!("cluster: peer {}: inbound session ended", peer.name),
        Err(e) => inner.peer_error(p, true, format!("inbound session from {remote}: {e}")),
    }
}

/// The receiving loop of an inbound session.
async fn receive<R, W>(
    inner: &Inner,
    p: usize,
    gen: u64,
    reader: &mut FramedRead<R, Codec>,
    writer: &mut FramedWrite<W, Codec>,
    rx: &AtomicU64,
    tx: &AtomicU64,
) -> Result<(), WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let peer = &inner.peers[p];
    let mut state = InboundState::default();
    let mut last_rx = tokio::time::Instant::now();
    let mut ack = tokio::time::interval(inner.cfg.heartbeat);
    ack.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut rx_seen, mut tx_seen) = (rx.load(Ordering::Relaxed), tx.load(Ordering::Relaxed));
    let flush_bytes = |rx_seen: &mut u64, tx_seen: &mut u64| {
        let (r, t) = (rx.load(Ordering::Relaxed), tx.load(Ordering::Relaxed));
        peer.bytes_received
            .fetch_add(r - *rx_seen, Ordering::Relaxed);
        peer.bytes_sent.fetch_add(t - *tx_seen, Ordering::Relaxed);
        (*rx_seen, *tx_seen) = (r, t);
    };
    loop {
        if peer.inbound_gen.load(Ordering::SeqCst) != gen {
            return Ok(()); // replaced by a newer session
        }
        let msg = tokio::select! {
            _ = inner.stop.cancelled() => return Ok(()),
            _ = ack.tick() => {
                flush_bytes(&mut rx_seen, &mut tx_seen);
                writer.send(Message::Ack { received: state.received }).await?;
                continue;
            }
            m = tokio::time::timeout_at(last_rx + inner.cfg.peer_timeout, reader.next()) => match m {
                Err(_) => return Err(WireError::Io(format!(
                    "nothing received for {} (inbound session)",
                    dur::format(inner.cfg.peer_timeout)
                ))),
                // Closed between frames: the peer ended the session (a restart, a stop).
                Ok(None) => return Ok(()),
                Ok(Some(m)) => m?,
            },
        };
        last_rx = tokio::time::Instant::now();
        let now = mono_ms();
        flush_bytes(&mut rx_seen, &mut tx_seen);
        lock(&peer.stats).last_message = Some(now);
        match state.handle(msg)? {
            Inbound::Entries(entries) => {
                let n = entries.len() as u64;
                let mut ignored = 0;
                {
                    let _order = lock(&inner.apply);
                    let applies: Vec<Applied> = {
                        let mut st = lock(&inner.store);
                        entries
                            .iter()
                            .filter_map(|e| match st.merge_remote(now, p, e) {
                                Merge::Apply(a) => Some(a),
                                Merge::Ignored(_) => {
                                    ignored += 1;
                                    None
                                }
                                Merge::Unchanged => None,
                            })
                            .collect()
                    };
                    if !applies.is_empty() {
                        inner.sink.apply(&applies);
                    }
                }
                // A losing value may have been answered: wake our sender to that peer.
                peer.wake.notify_one();
                let mut st = lock(&peer.stats);
                st.entries_received += n;
                st.ignored += ignored;
                st.teach_in = state.teach;
            }
            Inbound::TeachBegin(total) => {
                lock(&peer.stats).teach_in = Some((0, total));
            }
            Inbound::TeachEnd { received } => {
                {
                    let mut st = lock(&peer.stats);
                    st.teach_in = None;
                    st.taught_us = true;
                }
                log::info!("cluster: peer {} taught us {received} entries", peer.name);
                inner.update_synced();
            }
            Inbound::Services(_, digest) => lock(&peer.stats).digest = Some(digest),
            Inbound::Refused(reason) => {
                return Err(WireError::Protocol(format!(
                    "the peer refused us: {reason}"
                )))
            }
            Inbound::Heartbeat(_) | Inbound::Nothing => {}
        }
    }
}

async fn dial_loop(inner: Arc<Inner>, p: usize) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let established = tokio::select! {
            _ = inner.stop.cancelled() => return,
            r = outbound(&inner, p) => r,
        };
        {
            let mut st = lock(&inner.peers[p].stats);
            if st.out_connected {
                st.out_connected = false;
                st.out_since = Some(mono_ms());
            }
            st.teach_out = None;
        }
        lock(&inner.store).deactivate_peer(p);
        match established {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(e) => {
                let mut st = lock(&inner.peers[p].stats);
                if st.out_error.as_deref() != Some(e.as_str()) {
                    log::info!("cluster: peer {}: {e}", inner.peers[p].name);
                }
                st.out_error = Some(e);
            }
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
            _ = inner.peers[p].redial.notified() => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One outbound session. `Ok` once it was established and then ended; `Err` with what
/// failed otherwise (or what ended it).
async fn outbound(inner: &Inner, p: usize) -> Result<(), String> {
    let peer = &inner.peers[p];
    let limit = inner.cfg.peer_timeout;
    let tcp = tokio::time::timeout(limit, TcpStream::connect(peer.address))
        .await
        .map_err(|_| {
            format!(
                "connecting to {}: no answer within {}",
                peer.address,
                dur::format(limit)
            )
        })?
        .map_err(|e| format!("connecting to {}: {e}", peer.address))?;
    let _ = tcp.set_nodelay(true);
    let counted = Counted {
        tcp,
        rx: peer.bytes_received.clone(),
        tx: peer.bytes_sent.clone(),
    };
    let name = server_name(&peer.name).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        limit,
        TlsConnector::from(inner.tls.client.clone()).connect(name, counted),
    )
    .await
    .map_err(|_| {
        format!(
            "TLS with {}: no handshake within {}",
            peer.address,
            dur::format(limit)
        )
    })?
    .map_err(|e| format!("TLS with {}: {e}", peer.address))?;
    let (r, w) = tokio::io::split(tls);
    let max = inner.cfg.max_frame;
    let mut reader = FramedRead::new(r, Codec::new(max));
    let mut writer = FramedWrite::new(w, Codec::new(max));
    writer
        .send(inner.hello())
        .await
        .map_err(|e| format!("sending the hello: {e}"))?;
    let hello = match next_within(&mut reader, limit, "waiting for the peer's hello").await {
        Ok(Message::Hello(h)) => h,
        Ok(Message::Refuse { reason }) => {
            let e = format!("refused by the peer: {reason}");
            lock(&peer.stats).refusals += 1;
            return Err(e);
        }
        Ok(other) => return Err(format!("the peer answered {other:?} instead of a hello")),
        Err(e) => return Err(format!("the peer's hello: {e}")),
    };
    if let Err(e) = check_hello(&hello) {
        lock(&peer.stats).refusals += 1;
        return Err(format!("the peer's hello: {e}"));
    }
    if hello.node != peer.name {
        lock(&peer.stats).refusals += 1;
        return Err(format!(
            "the peer at {} says it is {:?}, configured as {:?}",
            peer.address, hello.node, peer.name
        ));
    }
    lock(&inner.store).activate_peer(p);
    {
        let mut st = lock(&peer.stats);
        st.out_connected = true;
        st.out_since = Some(mono_ms());
        st.out_sessions += 1;
        st.digest = Some(hello.digest);
        st.last_message = Some(mono_ms());
    }
    log::info!(
        "cluster: connected to peer {} at {}",
        peer.name,
        peer.address
    );
    let r = tokio::select! {
        r = send_loop(inner, p, &mut writer) => r,
        r = ack_loop(inner, p, &mut reader) => r,
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) => {
            inner.peer_error(p, false, format!("outbound session: {e}"));
            Ok(())
        }
    }
}

/// Reads the receiver's acknowledgements (and notices when it goes silent).
async fn ack_loop<R: AsyncRead + Unpin>(
    inner: &Inner,
    p: usize,
    reader: &mut FramedRead<R, Codec>,
) -> Result<(), WireError> {
    let peer = &inner.peers[p];
    loop {
        let m = tokio::select! {
            _ = inner.stop.cancelled() => return Ok(()),
            m = tokio::time::timeout(inner.cfg.peer_timeout, reader.next()) => match m {
                Err(_) => return Err(WireError::Io(format!(
                    "nothing received for {} (outbound session)",
                    dur::format(inner.cfg.peer_timeout)
                ))),
                Ok(None) => return Ok(()),
                Ok(Some(m)) => m?,
            },
        };
        lock(&peer.stats).last_message = Some(mono_ms());
        match m {
            Message::Ack { received } => lock(&peer.stats).acked = received,
            Message::Services { digest, .. } => lock(&peer.stats).digest = Some(digest),
            Message::Refuse { reason } => {
                return Err(WireError::Protocol(format!(
                    "the peer refused us: {reason}"
                )))
            }
            other => {
                return Err(WireError::Protocol(format!(
                    "unexpected {} on the sending side",
                    kind(&other)
                )))
            }
        }
    }
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Hello(_) => "hello",
        Message::Refuse { .. } => "refusal",
        Message::Services { .. } => "services",
        Message::DefineService { .. } => "service definition",
        Message::DefineBackend { .. } => "backend definition",
        Message::TeachBegin { .. } => "teach begin",
        Message::Teach { .. } => "teach entries",
        Message::TeachEnd { .. } => "teach end",
        Message::Entries { .. } => "entries",
        Message::Heartbeat { .. } => "heartbeat",
        Message::Ack { .. } => "acknowledgement",
    }
}

/// A teach in progress.
struct Teaching {
    cursor: usize,
    sent: u64,
    total: u64,
}

/// Pushes this node's table to peer `p`: a teach first, then the queue.
async fn send_loop<W: AsyncWrite + Unpin>(
    inner: &Inner,
    p: usize,
    writer: &mut FramedWrite<W, Codec>,
) -> Result<(), WireError> {
    let peer = &inner.peers[p];
    let mut dict = OutboundDictionary::default();
    let mut teaching: Option<Teaching> = None;
    let mut start_teach = true;
    let mut digest_sent = lock(&inner.services).0;
    let mut msgs = Vec::new();
    let mut last_send = mono_ms();
    loop {
        let now = mono_ms();
        let mut entries = 0u64;
        let mut teach_entries = 0u64;
        let mut end_teach = None;
        {
            let mut st = lock(&inner.store);
            let drained = st.drain(p, BATCH, now);
            if drained.resync {
                start_teach = true;
            }
            if start_teach {
                start_teach = false;
                let total = st.len() as u64;
                teaching = Some(Teaching {
                    cursor: 0,
                    sent: 0,
                    total,
                });
                msgs.push(Message::TeachBegin { total });
                let mut s = lock(&peer.stats);
                s.teaches_sent += 1;
                s.teach_out = Some((0, total));
            }
            entries += drained.entries.len() as u64;
            dict.encode(&drained.entries, false, now, &mut msgs);
            if let Some(t) = &mut teaching {
                let mut chunk = Vec::new();
                let more = st.teach_chunk(&mut t.cursor, BATCH, now, &mut chunk);
                t.sent += chunk.len() as u64;
                teach_entries = chunk.len() as u64;
                dict.encode(&chunk, true, now, &mut msgs);
                if !more {
                    end_teach = Some(t.sent);
                }
            }
        }
        let digest_now = lock(&inner.services).0;
        if digest_now != digest_sent {
            let (digest, services) = *lock(&inner.services);
            msgs.push(Message::Services { services, digest });
            digest_sent = digest_now;
        }
        if let Some(sent) = end_teach {
            msgs.push(Message::TeachEnd { sent });
        }
        if msgs.is_empty() {
            // Nothing to send: wait for the store, or send a heartbeat.
            let idle = inner
                .cfg
                .heartbeat
                .saturating_sub(Duration::from_millis(now.saturating_sub(last_send)));
            tokio::select! {
                _ = inner.stop.cancelled() => return Ok(()),
                _ = peer.wake.notified() => continue,
                _ = tokio::time::sleep(idle) => {
                    let queued = lock(&inner.store).queue_state(p, mono_ms()).0 as u64;
                    writer.send(Message::Heartbeat { queued }).await?;
                    last_send = mono_ms();
                    continue;
                }
            }
        }
        for m in msgs.drain(..) {
            writer.feed(m).await?;
        }
        writer.flush().await?;
        last_send = mono_ms();
        let mut s = lock(&peer.stats);
        s.entries_sent += entries + teach_entries;
        if let Some(t) = &teaching {
            s.teach_out = Some((t.sent, t.total));
        }
        if end_teach.is_some() {
            s.teach_out = None;
            teaching = None;
            log::info!(
                "cluster: taught peer {} {} entries",
                peer.name,
                end_teach.unwrap_or(0)
            );
        }
    }
}

async fn maintain(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // Expiry walks the store a step per tick (see `Store::expire_step`).
    let mut expire_cursor = 0usize;
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        inner.update_synced();
        lock(&inner.store).expire_step(mono_ms(), &mut expire_cursor, crate::store::EXPIRE_STEP);
    }
}
