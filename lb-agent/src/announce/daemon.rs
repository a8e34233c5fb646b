//! Watching the routing daemon, for `status` only: BIRD's control socket (`daemon_socket`)
//! is asked `show protocols` about once a second, and the answer says whether the daemon
//! runs and which BGP sessions are established. Nothing the agent assigns depends on it:
//! a VIP is assigned (and the data path forwards) whether BIRD answers or not, and a BIRD
//! started again re-reads the interfaces and announces what is assigned.
//!
//! BIRD's socket protocol is line-based text (a 4-digit code per line; the same that
//! `birdc` speaks); the parse is [`lb_model::announce::parse_bird_protocols`]. No crate
//! speaks it, and it is three lines: hence by hand.

use std::{path::Path, time::Duration};

use lb_model::announce::{parse_bird_protocols, DaemonProtocol, DaemonStatus};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
    time::timeout,
};

/// Longest wait for BIRD's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(800);

/// Reads one reply: lines until one whose code is followed by a space (the last).
async fn reply(reader: &mut BufReader<UnixStream>) -> Result<String, String> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err("the socket closed before the answer ended".into());
        }
        let last = line.len() >= 5
            && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && line.as_bytes()[4] == b' ';
        text.push_str(&line);
        if last {
            return Ok(text);
        }
        if text.len() > 1 << 20 {
            return Err("answer longer than 1 MiB".into());
        }
    }
}

async fn ask(socket: &Path) -> Result<Vec<DaemonProtocol>, String> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let mut reader = BufReader::new(stream);
    let hello = reply(&mut reader).await?;
    if !hello.starts_with("0001") {
        return Err(format!(
            "{} is not BIRD's control socket (it greeted {:?})",
            socket.display(),
            lb_model::vocab::excerpt(hello.trim(), 60)
        ));
    }
    reader
        .get_mut()
        .write_all(b"show protocols\n")
        .await
        .map_err(|e| format!("sending the question: {e}"))?;
    let answer = reply(&mut reader).await?;
    parse_bird_protocols(&answer)
}

/// The daemon's state as its socket shows it now.
pub async fn probe(socket: &Path) -> DaemonStatus {
    let shown = Some(socket.display().to_string());
    match timeout(ANSWER_TIMEOUT, ask(socket)).await {
        Ok(Ok(protocols)) => DaemonStatus {
            socket: shown,
            state: DaemonStatus::RUNNING.into(),
            error: None,
            sessions: protocols.into_iter().filter(|p| p.is_bgp()).collect(),
        },
        Ok(Err(e)) => DaemonStatus {
            socket: shown,
            state: DaemonStatus::NOT_RUNNING.into(),
            error: Some(e),
            sessions: Vec::new(),
        },
        Err(_) => DaemonStatus {
            socket: shown,
            state: DaemonStatus::NOT_RUNNING.into(),
            error: Some(format!("no answer within {ANSWER_TIMEOUT:?}")),
            sessions: Vec::new(),
        },
    }
}

/// The one line logged when the daemon's state changes (`None`: nothing worth saying).
pub fn change_line(before: &DaemonStatus, now: &DaemonStatus) -> Option<(log::Level, String)> {
    let sessions = |d: &DaemonStatus| {
        d.sessions
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s.name,
                    if s.info.is_empty() { &s.state } else { &s.info }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let socket = now.socket.as_deref().unwrap_or("?");
    match (before.state.as_str(), now.state.as_str()) {
        (a, DaemonStatus::NOT_RUNNING) if a != DaemonStatus::NOT_RUNNING => Some((
            log::Level::Error,
            format!(
                "routing daemon not running ({}): the VIPs assigned here are not announced \
                 through it; the data path keeps forwarding whatever still arrives, and the \
                 daemon announces them again once it is back",
                now.error.as_deref().unwrap_or(socket)
            ),
        )),
        (DaemonStatus::NOT_RUNNING, DaemonStatus::RUNNING) => Some((
            log::Level::Info,
            format!(
                "routing daemon is back on {socket}; BGP sessions: {}",
                sessions(now)
            ),
        )),
        (_, DaemonStatus::RUNNING) if sessions(before) != sessions(now) => Some((
            if now.problem().is_some() {
                log::Level::Warn
            } else {
                log::Level::Info
            },
            format!("routing daemon BGP sessions: {}", sessions(now)),
        )),
        _ => None,
    }
}
