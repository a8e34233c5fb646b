//! The control protocol between `stickylb` subcommands and the running agent: JSON lines
//! over a Unix socket (documented in docs/CONTROL.md). One request per line, one response
//! per line: `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}`.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/stickylb/stickylb.sock";
/// Longest request line accepted (bytes).
pub const MAX_REQUEST: usize = 1 << 20;

/// A backend as given to `service.add` / `backend.add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendDef {
    pub address: String,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default = "ready")]
    pub state: String,
}

fn one() -> u32 {
    1
}
fn ready() -> String {
    "ready".into()
}

/// A service as given to `service.add`; the same fields and defaults as a `[[service]]`
/// of the config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub name: String,
    pub listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(default)]
    pub backends: Vec<BackendDef>,
}

/// Every request the agent understands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", deny_unknown_fields)]
pub enum Request {
    #[serde(rename = "status")]
    Status,
    #[serde(rename = "reload")]
    Reload,
    #[serde(rename = "stats")]
    Stats,
    #[serde(rename = "service.list")]
    ServiceList,
    #[serde(rename = "service.add")]
    ServiceAdd { service: ServiceDef },
    #[serde(rename = "service.remove")]
    ServiceRemove { name: String },
    #[serde(rename = "backend.list")]
    BackendList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    #[serde(rename = "backend.add")]
    BackendAdd {
        service: String,
        backend: BackendDef,
    },
    #[serde(rename = "backend.remove")]
    BackendRemove { service: String, address: String },
    #[serde(rename = "backend.weight")]
    BackendWeight {
        service: String,
        address: String,
        weight: u32,
    },
    #[serde(rename = "backend.state")]
    BackendState {
        service: String,
        address: String,
        state: String,
    },
    #[serde(rename = "table.show")]
    TableShow {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    #[serde(rename = "table.lookup")]
    TableLookup { service: String, client: String },
    #[serde(rename = "table.clear")]
    TableClear {
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<String>,
    },
    #[serde(rename = "table.pin")]
    TablePin {
        service: String,
        client: String,
        backend: String,
    },
}

/// The names of all commands, for error messages.
pub const COMMANDS: &str = "status, reload, stats, service.list, service.add, service.remove, backend.list, backend.add, backend.remove, backend.weight, backend.state, table.show, table.lookup, table.clear, table.pin";

/// A response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Self {
            ok: true,
            result: Some(result),
            error: None,
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }
}

/// Parses a request line, with an error that says what is accepted.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("request is not valid JSON ({e}): send one JSON object per line, e.g. {{\"cmd\":\"status\"}}"))?;
    let cmd = value
        .get("cmd")
        .and_then(|c| c.as_str())
        .map(str::to_string);
    match cmd {
        None => Err(format!(
            "request has no \"cmd\" string: accepted commands are {COMMANDS}"
        )),
        Some(cmd) if !COMMANDS.split(", ").any(|c| c == cmd) => Err(format!(
            "unknown command {cmd:?}: accepted commands are {COMMANDS}"
        )),
        Some(cmd) => {
            serde_json::from_value(value).map_err(|e| format!("bad arguments for {cmd}: {e}"))
        }
    }
}

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
    let mut line =
        serde_json::to_string(req).map_err(|e| ClientError::BadResponse(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_say_what_is_accepted() {
        let reqs = vec![
            Request::Status,
            Request::BackendState {
                service: "web".into(),
                address: "10.0.0.2:80".into(),
                state: "drain".into(),
            },
            Request::TableShow {
                service: Some("web".into()),
                backend: None,
                limit: Some(10),
            },
        ];
        for r in reqs {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(&line).unwrap(), r, "{line}");
        }
        assert!(parse_request(
            "{\"cmd\":\"backend.state\",\"service\":\"web\",\"address\":\"a\",\"state\":\"up\"}"
        )
        .is_ok());
        let e = parse_request("{\"cmd\":\"frobnicate\"}").unwrap_err();
        assert!(e.contains("accepted commands are status"), "{e}");
        let e = parse_request("not json").unwrap_err();
        assert!(e.contains("one JSON object per line"), "{e}");
        let e = parse_request("{\"cmd\":\"backend.weight\",\"service\":\"web\"}").unwrap_err();
        assert!(
            e.contains("bad arguments for backend.weight") && e.contains("address"),
            "{e}"
        );
        let e = parse_request(
            "{\"cmd\":\"backend.remove\",\"service\":\"a\",\"address\":\"b\",\"extra\":1}",
        )
        .unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
