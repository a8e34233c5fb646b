//! The demo's HTTP endpoints: a tiny server that answers every request with its name,
//! and a client that sends real `GET /` requests from chosen source addresses.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use stickylb_tests::Netns;

/// How often the accept loop looks at its stop flag.
const POLL_MS: i32 = 20;
/// Longest request head the server reads.
const MAX_REQUEST: usize = 8192;
/// Concurrent client connections during a round.
const WORKERS: usize = 8;

/// An HTTP server answering `200 OK` with body `<name>\n` to any request, on
/// `0.0.0.0:port` and `[::]:port`. Dropping it closes the listeners (new
/// connections are refused from then on).
pub struct HttpNameServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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

fn listeners(port: u16) -> Result<Vec<Socket>> {
    Ok(vec![
        listener(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))?,
        listener(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))?,
    ])
}

impl HttpNameServer {
    /// Starts a server listening in namespace `ns`.
    pub fn spawn(ns: &Netns, port: u16, name: &str) -> Result<HttpNameServer> {
        let socks = ns
            .enter(|| listeners(port))
            .with_context(|| format!("HTTP server {name} on port {port} in {}", ns.name()))?;
        Self::serve(socks, name)
    }

    /// Starts a server listening in the current namespace.
    pub fn spawn_here(port: u16, name: &str) -> Result<HttpNameServer> {
        Self::serve(listeners(port)?, name)
    }

    fn serve(socks: Vec<Socket>, name: &str) -> Result<HttpNameServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let response: Arc<[u8]> = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}\n",
            name.len() + 1
        )
        .into_bytes()
        .into();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("http-{name}"))
                .spawn(move || accept_loop(&socks, &response, &stop))
                .context("spawn HTTP server thread")?
        };
        Ok(HttpNameServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HttpNameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(socks: &[Socket], response: &Arc<[u8]>, stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: fds points to fds.len() valid pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        if n <= 0 {
            continue;
        }
        for (p, s) in fds.iter_mut().zip(socks) {
            if std::mem::take(&mut p.revents) == 0 {
                continue;
            }
            loop {
                match s.accept() {
                    Ok((conn, _)) => {
                        let response = response.clone();
                        // One short-lived thread per connection: a slow client never
                        // holds up the others (or the balancer's health checks).
                        let _ = std::thread::Builder::new()
                            .name("http-conn".into())
                            .spawn(move || answer(conn, &response));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
    }
}

fn answer(conn: Socket, response: &[u8]) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let mut stream = TcpStream::from(conn);
    // Read the request head (until the empty line), so that closing does not reset.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.write_all(response);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// One `GET /` from source address `src` (port chosen by the kernel) to `dst`, in the
/// calling thread's namespace. Returns the body, trimmed: the backend's name.
pub fn http_get_here(src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<String> {
    let mut stream = stickylb_tests::servers::connect_from(src, dst, timeout)?;
    let host = match dst {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    stream
        .write_all(
            format!("GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: stickylb-demo\r\n\r\n")
                .as_bytes(),
        )
        .context("send request")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).context("read response")?;
    parse_response(&raw)
}

/// The trimmed body of a `200` response.
fn parse_response(raw: &[u8]) -> Result<String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed response {text:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    anyhow::ensure!(code == "200", "status {status:?}");
    Ok(body.trim().to_owned())
}

/// One request from every source in `srcs` to `dst`, a few at a time, from namespace
/// `ns`. Returns one answer per source, in order; `Err` holds why it failed. Stops
/// early (remaining sources fail with "interrupted") once `stop` is set.
pub fn round(
    ns: &Netns,
    srcs: &[IpAddr],
    dst: SocketAddr,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<Vec<Result<String, String>>> {
    let results: Mutex<Vec<Result<String, String>>> =
        Mutex::new(vec![Err("interrupted".into()); srcs.len()]);
    let next = AtomicUsize::new(0);
    ns.enter(|| {
        // Threads spawned here inherit the namespace of this (entered) thread.
        std::thread::scope(|s| {
            for _ in 0..WORKERS.min(srcs.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= srcs.len() || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let r = http_get_here(srcs[i], dst, timeout).map_err(|e| format!("{e:#}"));
                    results.lock().unwrap()[i] = r;
                });
            }
        });
        Ok(())
    })?;
    Ok(results.into_inner().unwrap())
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn parses_the_body_of_a_200() {
        let r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbackend-2\n");
        assert_eq!(r.unwrap(), "backend-2");
        assert!(parse_response(b"HTTP/1.0 503 Nope\r\n\r\nx").is_err());
        assert!(parse_response(b"garbage").is_err());
    }
}
