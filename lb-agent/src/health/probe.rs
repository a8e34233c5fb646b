//! One health check of one backend: a TCP connect, an HTTP/1.1 `GET` on hyper, or the same
//! over TLS on rustls (tokio-rustls), all within the check's timeout.
//!
//! - `tcp`: healthy when the connection is established.
//! - `http` / `https`: `GET path` with `Host` (the configured one, else the checked
//!   `IP:PORT`), `User-Agent: stickylb-health` and `Connection: close`; healthy on 2xx/3xx,
//!   or exactly on `expect_status`. Only the status line is waited for; the connection is
//!   then dropped.
//!
//! Connections are closed with a reset (zero linger), as HAProxy does, so that thousands of
//! checks per second leave no `TIME_WAIT` sockets behind.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Empty;
use hyper::{body::Bytes, header, Request, Uri};
use hyper_util::rt::TokioIo;
use lb_model::{
    duration,
    spec::{HealthConfig, HealthKind, HttpCheck},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    time::Instant,
};

/// Result of one check.
pub struct Outcome {
    pub ok: bool,
    pub reason: String,
    pub latency: Option<Duration>,
}

impl Outcome {
    fn fail(reason: String) -> Self {
        Self {
            ok: false,
            reason,
            latency: None,
        }
    }
}

/// Runs one check of `addr`; `tls` is the client configuration of an `https` check (or
/// why there is none).
pub async fn check(
    addr: SocketAddr,
    config: &HealthConfig,
    tls: Option<&Result<Arc<rustls::ClientConfig>, String>>,
) -> Outcome {
    let timeout = config.timeout;
    match &config.kind {
        HealthKind::None => Outcome {
            ok: true,
            reason: "no check".to_string(),
            latency: None,
        },
        HealthKind::Tcp => tcp_check(addr, timeout).await,
        HealthKind::Http(http) => {
            let started = Instant::now();
            let stream = match connect(addr, timeout).await {
                Ok(s) => s,
                Err(reason) => return Outcome::fail(reason),
            };
            http_exchange(stream, addr, http, started, timeout).await
        }
        HealthKind::Https(http, settings) => {
            let config = match tls {
                Some(Ok(c)) => c.clone(),
                Some(Err(e)) => return Outcome::fail(e.clone()),
                None => return Outcome::fail("TLS setup missing".to_string()),
            };
            let started = Instant::now();
            let stream = match connect(addr, timeout).await {
                Ok(s) => s,
                Err(reason) => return Outcome::fail(reason),
            };
            let name = super::tls::server_name(settings, http, addr.ip());
            let connector = tokio_rustls::TlsConnector::from(config);
            let stream =
                match tokio::time::timeout_at(started + timeout, connector.connect(name, stream))
                    .await
                {
                    Err(_) => {
                        return Outcome::fail(format!(
                            "TLS handshake timed out after {}",
                            duration::format(timeout)
                        ))
                    }
                    Ok(Err(e)) => return Outcome::fail(format!("TLS handshake failed: {e}")),
                    Ok(Ok(s)) => s,
                };
            http_exchange(stream, addr, http, started, timeout).await
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(format!(
            "connect timed out after {}",
            duration::format(timeout)
        )),
        Ok(Err(e)) => Err(format!("connect failed: {e}")),
        Ok(Ok(stream)) => {
            // Close with a reset: no TIME_WAIT left behind by frequent checks.
            let _ = stream.set_zero_linger();
            Ok(stream)
        }
    }
}

async fn tcp_check(addr: SocketAddr, timeout: Duration) -> Outcome {
    let started = Instant::now();
    match connect(addr, timeout).await {
        Ok(_stream) => {
            let latency = started.elapsed();
            Outcome {
                ok: true,
                reason: format!("connected in {latency:.1?}"),
                latency: Some(latency),
            }
        }
        Err(reason) => Outcome::fail(reason),
    }
}

/// `GET` on an established connection, within `timeout` from `started`.
async fn http_exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    addr: SocketAddr,
    http: &HttpCheck,
    started: Instant,
    timeout: Duration,
) -> Outcome {
    let uri: Uri = match http.path.parse() {
        Ok(u) => u,
        Err(e) => return Outcome::fail(format!("invalid HTTP check path {:?}: {e}", http.path)),
    };
    let host = http.host.clone().unwrap_or_else(|| addr.to_string());
    let request = Request::get(uri)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "stickylb-health")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new());
    let request = match request {
        Ok(r) => r,
        Err(e) => return Outcome::fail(format!("invalid HTTP check request: {e}")),
    };
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        let send = sender.send_request(request);
        tokio::pin!(conn, send);
        let status = |r: Result<hyper::Response<_>, hyper::Error>| {
            r.map(|r| r.status().as_u16())
                .map_err(|e| format!("HTTP request failed: {e}"))
        };
        // The connection is driven here (not spawned): it goes when the status arrives. A
        // connection that ends (`Connection: close`) has handed its response over first.
        tokio::select! {
            biased;
            response = &mut send => status(response),
            done = &mut conn => match done {
                Ok(()) => status(send.await),
                Err(e) => Err(format!("HTTP request failed: {e}")),
            },
        }
    };
    match tokio::time::timeout_at(started + timeout, exchange).await {
        Err(_) => Outcome::fail(format!(
            "HTTP response timed out after {}",
            duration::format(timeout)
        )),
        Ok(Err(reason)) => Outcome::fail(reason),
        Ok(Ok(code)) => {
            let latency = started.elapsed();
            let ok = match http.expect_status {
                Some(expected) => code == expected,
                None => (200..400).contains(&code),
            };
            let reason = match http.expect_status {
                Some(expected) if !ok => format!("HTTP status {code}, expected {expected}"),
                _ => format!("HTTP status {code} in {latency:.1?}"),
            };
            Outcome {
                ok,
                reason,
                latency: Some(latency),
            }
        }
    }
}
