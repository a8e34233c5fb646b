//! The control socket's server: a Unix stream socket of mode 0600 whose peers must be
//! root or the agent's own user (`SO_PEERCRED`), JSON lines in and out (docs/CONTROL.md).
//! Request lines are bounded ([`MAX_REQUEST`]; an oversized one is skipped as it arrives,
//! never buffered), decoded by `lb_model::control::decode_line` and answered by the
//! agent's handler; a refusal never closes the connection.

use std::{os::unix::fs::PermissionsExt, sync::Arc};

use anyhow::{bail, Context as _, Result};
use lb_model::control::{self, Request, Response, MAX_REQUEST};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

/// What answers a request (the agent, under its lock).
pub type Handler = Arc<dyn Fn(Request) -> Result<Value, String> + Send + Sync>;

/// Checks the connecting process: root or the agent's own user only.
fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if cred.uid() == 0 || cred.uid() == me {
        Ok(())
    } else {
        Err(format!(
            "permission denied: uid {} may not control stickylb (root or uid {me} only)",
            cred.uid()
        ))
    }
}

/// One request line read from a control connection.
enum RequestLine {
    Line(Vec<u8>),
    /// Longer than [`MAX_REQUEST`]: its bytes were skipped up to its newline (never
    /// buffered); the length is kept for the answer.
    TooLong(usize),
}

/// Reads the next line (without its newline) of at most `max` bytes; `None` at the end.
/// An oversized line costs no memory: it is skipped as it arrives.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<RequestLine>> {
    let mut line = Vec::new();
    let mut total = 0usize;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(match total {
                0 => None,
                n if n > max => Some(RequestLine::TooLong(n)),
                _ => Some(RequestLine::Line(line)),
            });
        }
        let (len, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if total + len <= max {
            line.extend_from_slice(&buf[..len]);
        } else if !line.is_empty() {
            line = Vec::new();
        }
        total += len;
        r.consume(len + usize::from(found));
        if found {
            return Ok(Some(if total > max {
                RequestLine::TooLong(total)
            } else {
                RequestLine::Line(line)
            }));
        }
    }
}

async fn serve_client(handler: Handler, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    while let Ok(Some(request)) = read_request(&mut rd, MAX_REQUEST).await {
        let decoded = match request {
            RequestLine::TooLong(n) => Err(control::too_long(n)),
            RequestLine::Line(bytes) => control::decode_line(&bytes),
        };
        let resp = match decoded {
            Ok(None) => continue,
            Err(e) => Response::err(e),
            Ok(Some(req)) => {
                let handler = handler.clone();
                let r = tokio::task::spawn_blocking(move || handler(req)).await;
                match r {
                    Ok(Ok(v)) => Response::ok(v),
                    Ok(Err(e)) => Response::err(e),
                    Err(e) => Response::err(format!("internal error: {e}")),
                }
            }
        };
        let mut out = serde_json::to_string(&resp)
            .unwrap_or_else(|_| "{\"ok\":false,\"error\":\"encoding\"}".into());
        out.push('\n');
        if wr.write_all(out.as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Serves the control socket until the listener fails: every connection of an allowed
/// peer gets its own task; each request goes to `handler` on a blocking thread.
pub async fn serve(handler: Handler, listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if let Err(e) = peer_allowed(&stream) {
            log::warn!("control socket: {e}");
            let mut s = stream;
            let mut line = serde_json::to_string(&Response::err(e)).unwrap();
            line.push('\n');
            let _ = s.write_all(line.as_bytes()).await;
            continue;
        }
        tokio::spawn(serve_client(handler.clone(), stream));
    }
}

/// Binds the control socket at `path` (mode 0600), replacing a stale socket file; refuses
/// a socket another agent still serves.
pub fn bind(path: &std::path::Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another agent is serving {}: stop it first or pass a different --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, usize>> {
        // A tiny buffer, so that lines span many reads.
        let mut r = tokio::io::BufReader::with_capacity(3, input);
        let mut out = Vec::new();
        while let Some(l) = read_request(&mut r, max).await.unwrap() {
            out.push(match l {
                RequestLine::Line(b) => Ok(b),
                RequestLine::TooLong(n) => Err(n),
            });
        }
        out
    }

    #[tokio::test]
    async fn request_lines_are_bounded_and_oversized_ones_skipped() {
        assert_eq!(
            lines(b"ab\n\ncdef\nxyz", 4).await,
            vec![
                Ok(b"ab".to_vec()),
                Ok(vec![]),
                Ok(b"cdef".to_vec()),
                Ok(b"xyz".to_vec())
            ]
        );
        assert_eq!(
            lines(b"abcdefgh\nok\n0123456", 4).await,
            vec![Err(8), Ok(b"ok".to_vec()), Err(7)]
        );
        assert_eq!(lines(b"", 4).await, vec![]);
        assert_eq!(lines(b"\xff\xfe\n", 4).await, vec![Ok(vec![0xff, 0xfe])]);
    }
}
