//! The control socket's client: one request, one response (docs/CONTROL.md). The typed
//! [`request`] is for tools that build requests (`top`, the bench); the CLI sends the
//! operator's words as given with [`request_value`], so that the agent is the one place
//! that reads and refuses them, and a CLI user and a `socat` user get the same refusals.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use lb_model::control::{encode_line, Request, Response};

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent not reachable at {path}: {source} (is `stickylb run` running? see --socket)")]
    Unreachable {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the agent at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the agent sent an unreadable response: {0}")]
    BadResponse(String),
}

/// Sends one request and waits for its response.
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    exchange(socket, encode_line(req), timeout)
}

/// Sends one request given as its JSON object (`{"cmd":…, …}`) and waits for its response.
pub fn request_value(
    socket: &Path,
    req: &serde_json::Value,
    timeout: Duration,
) -> Result<Response, ClientError> {
    exchange(socket, req.to_string(), timeout)
}

fn exchange(socket: &Path, mut line: String, timeout: Duration) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Unreachable {
        path: path.clone(),
        source,
    })?;
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    line.push('\n');
    // The agent may answer and close before reading (a refused peer): a failed write
    // still leaves its answer to read.
    let written = (&stream).write_all(line.as_bytes());
    let mut reader = BufReader::new(&stream);
    let mut resp = String::new();
    let read = reader.read_line(&mut resp);
    if resp.is_empty() {
        written.map_err(io)?;
        read.map_err(io)?;
    }
    serde_json::from_str(&resp).map_err(|e| ClientError::BadResponse(format!("{e}: {resp:?}")))
}
