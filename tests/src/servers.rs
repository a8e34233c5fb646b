//! Tiny TCP servers and clients that run inside test namespaces.
//!
//! This module owns the traffic endpoints of end-to-end tests:
//! * [`NameServer`]: a guard for a server that listens on `0.0.0.0:port` and
//!   `[::]:port` (IPv6-only) inside a namespace, answers every connection
//!   with its name and a newline and closes it, and records how many
//!   connections it served and from which peer addresses. Its thread stops
//!   when the guard is dropped.
//! * [`tcp_fetch`] / [`tcp_fetch_all`]: connect from a chosen local source
//!   address inside a namespace and read the answer until EOF.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::Netns;

/// How often the accept loop looks at its stop flag.
const POLL_INTERVAL_MS: i32 = 20;

#[derive(Default)]
struct Stats {
    connections: Arc<AtomicU64>,
    peers: Mutex<HashMap<IpAddr, u64>>,
}

/// A TCP server in a namespace that answers `name\n` to every connection.
/// Dropping it stops its thread and closes its listeners.
pub struct NameServer {
    name: String,
    port: u16,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for NameServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameServer")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("connections", &self.connections())
            .finish()
    }
}

fn listener(addr: SocketAddr) -> Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

impl NameServer {
    /// Starts a server in `ns` on TCP `port` (v4 and v6). With `port` 0 the
    /// kernel picks a port for IPv4 and IPv6 uses the same one.
    pub fn spawn(ns: &Netns, port: u16, name: &str) -> Result<NameServer> {
        let (v4, v6) = ns
            .enter(|| {
                let v4 = listener(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))?;
                let port = v4
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| anyhow!("listener has no inet address"))?
                    .port();
                let v6 = listener(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))?;
                Ok((v4, v6))
            })
            .with_context(|| format!("NameServer {name:?} on port {port} in {}", ns.name()))?;
        let port = v4
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .unwrap_or(port);

        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let answer = format!("{name}\n").into_bytes();
        let thread = {
            let stats = stats.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("namesrv-{name}"))
                .spawn(move || serve(&[v4, v6], &answer, &stats, &stop))
                .context("spawn NameServer thread")?
        };
        log::debug!(
            "NameServer {name} listening on port {port} in {}",
            ns.name()
        );
        Ok(NameServer {
            name: name.to_owned(),
            port,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TCP port it listens on (v4 and v6).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Number of connections served so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// The shared connection counter itself.
    pub fn connection_counter(&self) -> Arc<AtomicU64> {
        self.stats.connections.clone()
    }

    /// Set of peer (client source) addresses seen so far.
    pub fn peers(&self) -> HashSet<IpAddr> {
        self.stats.peers.lock().unwrap().keys().copied().collect()
    }

    /// Connections served per peer address.
    pub fn peer_counts(&self) -> HashMap<IpAddr, u64> {
        self.stats.peers.lock().unwrap().clone()
    }

    /// Forgets all counts and peers seen so far.
    pub fn reset(&self) {
        let mut peers = self.stats.peers.lock().unwrap();
        peers.clear();
        self.stats.connections.store(0, Ordering::SeqCst);
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listeners: &[Socket], answer: &[u8], stats: &Stats, stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::SeqCst) {
        for p in &mut fds {
            p.revents = 0;
        }
        // SAFETY: fds points to fds.len() valid pollfd structs.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                POLL_INTERVAL_MS,
            )
        };
        if n <= 0 {
            continue;
        }
        for (p, l) in fds.iter().zip(listeners) {
            if p.revents == 0 {
                continue;
            }
            // Drain every pending connection of this listener.
            loop {
                match l.accept() {
                    Ok((conn, peer)) => handle(conn, peer, answer, stats),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("accept failed: {e}");
                        break;
                    }
                }
            }
        }
    }
}

fn handle(conn: Socket, peer: SockAddr, answer: &[u8], stats: &Stats) {
    if let Some(peer) = peer.as_socket() {
        *stats.peers.lock().unwrap().entry(peer.ip()).or_default() += 1;
    }
    stats.connections.fetch_add(1, Ordering::SeqCst);
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let mut stream = TcpStream::from(conn);
    if let Err(e) = stream.write_all(answer) {
        log::warn!("write to {peer:?} failed: {e}");
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// A TCP connection from `src` (port chosen by the kernel at connect time) to `dst`, in
/// the calling thread's namespace, with read/write timeouts set to what is left of
/// `timeout`.
pub fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    // Pick the local port at connect time, with the full 4-tuple known, so
    // many fetches from one source do not exhaust ephemeral ports.
    let one: libc::c_int = 1;
    // SAFETY: valid fd and a pointer to a c_int of the given size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.bind(&SocketAddr::new(src, 0).into())
        .context("bind source")?;
    sock.connect_timeout(&dst.into(), timeout)
        .context("connect")?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    sock.set_read_timeout(Some(left))?;
    sock.set_write_timeout(Some(left))?;
    Ok(TcpStream::from(sock))
}

fn fetch_here(src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<String> {
    let mut stream = connect_from(src, dst, timeout)?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).context("read")?;
    Ok(buf.trim().to_owned())
}

/// Connects from `src` (port chosen by the kernel) to `dst` inside `ns`,
/// reads until EOF and returns the trimmed text. Errors name src, dst and
/// the namespace.
pub fn tcp_fetch(ns: &Netns, src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<String> {
    ns.enter(|| fetch_here(src, dst, timeout))
        .with_context(|| format!("tcp fetch {src} -> {dst} in {}", ns.name()))
}

/// Like [`tcp_fetch`] for many `(src, dst)` pairs, one after the other, but
/// entering the namespace only once. Returns one result per pair, in order.
pub fn tcp_fetch_all(
    ns: &Netns,
    pairs: &[(IpAddr, SocketAddr)],
    timeout: Duration,
) -> Result<Vec<Result<String>>> {
    ns.enter(|| {
        Ok(pairs
            .iter()
            .map(|&(src, dst)| {
                fetch_here(src, dst, timeout)
                    .with_context(|| format!("tcp fetch {src} -> {dst} in {}", ns.name()))
            })
            .collect())
    })
}

/// The answers of one round of fetches (client → backend that answered, `None` =
/// failed), failing the test if any client got no answer.
pub fn all_answered<K: Ord + Copy + std::fmt::Debug>(
    m: &std::collections::BTreeMap<K, Option<String>>,
) -> std::collections::BTreeMap<K, String> {
    m.iter()
        .map(|(c, b)| {
            (
                *c,
                b.clone()
                    .unwrap_or_else(|| panic!("client {c:?} got no answer: {m:?}")),
            )
        })
        .collect()
}

/// A UDP server in a namespace that answers every datagram with `name\n`, from the
/// address it was sent to (one socket per bind address: bind the VIP itself for DSR,
/// where the answer must come from it). Dropping it stops its thread.
pub struct UdpNameServer {
    port: u16,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpNameServer {
    /// Binds every address of `binds` (v6 ones IPv6-only) in `ns` and serves them.
    pub fn spawn(ns: &Netns, binds: &[SocketAddr], name: &str) -> Result<UdpNameServer> {
        let socks: Vec<std::net::UdpSocket> = ns
            .enter(|| {
                binds
                    .iter()
                    .map(|&a| {
                        let s =
                            Socket::new(Domain::for_address(a), Type::DGRAM, Some(Protocol::UDP))?;
                        if a.is_ipv6() {
                            s.set_only_v6(true)?;
                        }
                        s.set_reuse_address(true)?;
                        s.bind(&a.into()).with_context(|| format!("bind udp {a}"))?;
                        s.set_read_timeout(Some(Duration::from_millis(POLL_INTERVAL_MS as u64)))?;
                        Ok(std::net::UdpSocket::from(s))
                    })
                    .collect::<Result<_>>()
            })
            .with_context(|| format!("UdpNameServer {name:?} in {}", ns.name()))?;
        let port = binds.first().map(|a| a.port()).unwrap_or(0);
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let answer = format!("{name}\n").into_bytes();
        let thread = {
            let stats = stats.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("udpsrv-{name}"))
                .spawn(move || {
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::SeqCst) {
                        for s in &socks {
                            if let Ok((_, peer)) = s.recv_from(&mut buf) {
                                *stats.peers.lock().unwrap().entry(peer.ip()).or_default() += 1;
                                stats.connections.fetch_add(1, Ordering::SeqCst);
                                let _ = s.send_to(&answer, peer);
                            }
                        }
                    }
                })
                .context("spawn UdpNameServer thread")?
        };
        Ok(UdpNameServer {
            port,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Datagrams answered.
    pub fn queries(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Distinct peers seen.
    pub fn peers(&self) -> HashSet<IpAddr> {
        self.stats.peers.lock().unwrap().keys().copied().collect()
    }
}

impl Drop for UdpNameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends a datagram from `src` to `dst` and waits `wait` for the answer, up to `tries`
/// times (a first datagram may be lost while a next hop is resolved). Returns the trimmed
/// answer and how many datagrams it took.
pub fn udp_query(
    src: IpAddr,
    dst: SocketAddr,
    wait: Duration,
    tries: u32,
) -> Result<(String, u32)> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(src, 0)).context("bind udp source")?;
    s.connect(dst).context("connect udp")?;
    s.set_read_timeout(Some(wait))?;
    let mut buf = [0u8; 512];
    for n in 1..=tries {
        s.send(b"who?").context("send")?;
        match s.recv(&mut buf) {
            Ok(len) => return Ok((String::from_utf8_lossy(&buf[..len]).trim().to_owned(), n)),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e).context("recv"),
        }
    }
    bail!("udp {src} -> {dst}: no answer to {tries} datagrams")
}

/// One request of [`parallel_requests`].
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub udp: bool,
    pub src: IpAddr,
    pub dst: SocketAddr,
}

/// The outcome of one request: the answer, how long it took, and (UDP) datagrams sent.
#[derive(Debug)]
pub struct Outcome {
    pub answer: Result<String>,
    pub elapsed: Duration,
    pub tries: u32,
}

/// Runs every request in `ns` at once (one thread each, at most `parallel` at a time):
/// TCP fetches with `timeout`, UDP queries of up to `timeout / 1 s` datagrams a second
/// apart. Returns one outcome per request, in order.
pub fn parallel_requests(
    ns: &Netns,
    reqs: &[Request],
    timeout: Duration,
    parallel: usize,
) -> Result<Vec<Outcome>> {
    ns.enter(|| {
        let mut out: Vec<Option<Outcome>> = (0..reqs.len()).map(|_| None).collect();
        for (chunk, slots) in reqs
            .chunks(parallel.max(1))
            .zip(out.chunks_mut(parallel.max(1)))
        {
            std::thread::scope(|s| {
                for (r, slot) in chunk.iter().zip(slots.iter_mut()) {
                    s.spawn(move || {
                        let t = Instant::now();
                        let (answer, tries) = if r.udp {
                            let tries = timeout.as_secs().max(1) as u32;
                            match udp_query(r.src, r.dst, Duration::from_secs(1), tries) {
                                Ok((a, n)) => (Ok(a), n),
                                Err(e) => (Err(e), tries),
                            }
                        } else {
                            (fetch_here(r.src, r.dst, timeout), 1)
                        };
                        *slot = Some(Outcome {
                            answer: answer.with_context(|| {
                                format!(
                                    "{} {} -> {}",
                                    if r.udp { "udp" } else { "tcp" },
                                    r.src,
                                    r.dst
                                )
                            }),
                            elapsed: t.elapsed(),
                            tries,
                        });
                    });
                }
            });
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every request ran"))
            .collect())
    })
}
