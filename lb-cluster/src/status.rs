//! What `stickylb peers` (and `--json`, and the metrics) show: the node's sync state and
//! each peer's sessions and counters, as serde structs.

use serde::Serialize;

use crate::store::StoreCounters;

/// The whole cluster as this node sees it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub node: String,
    pub listen: String,
    /// Whether this node holds a complete teach from every peer it waits for (see
    /// docs/CLUSTER.md): once true, stays true.
    pub synced: bool,
    /// Milliseconds from start to synced.
    pub synced_after_ms: Option<u64>,
    /// While not synced: what it waits for, one line per peer.
    pub waiting_for: Vec<String>,
    /// Entries in the replicated store.
    pub entries: u64,
    /// Short digest of this node's service definitions.
    pub services_digest: String,
    pub counters: StoreCounters,
    /// Connections refused before a peer was identified (TLS handshake failed: no
    /// certificate, another CA, expired; or no hello).
    pub refused_handshakes: u64,
    pub last_refusal: Option<String>,
    pub peers: Vec<PeerStatus>,
}

/// One peer.
#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: String,
    /// `up` (both directions), `half` (one), `down`.
    pub state: &'static str,
    /// Our connection to it (we send our table over it).
    pub outbound: SessionStatus,
    /// Its connection to us (it sends its table over it).
    pub inbound: SessionStatus,
    /// Milliseconds since anything arrived from it on either connection.
    pub last_message_ms_ago: Option<u64>,
    pub entries_sent: u64,
    pub entries_received: u64,
    /// Entries from it naming a service or backend this node does not have.
    pub ignored_unknown: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Entries waiting to be sent to it.
    pub queued: u64,
    /// How long the oldest of them has waited (ms).
    pub lag_ms: u64,
    /// Entries it acknowledged on our connection.
    pub acked: u64,
    /// The teach we are sending it: (sent, total).
    pub teach_out: Option<(u64, u64)>,
    /// The teach it is sending us: (received, total).
    pub teach_in: Option<(u64, u64)>,
    /// It completed a teach to us since we started.
    pub taught_us: bool,
    /// Full teaches we sent it (the first on each connection, then one per overflow).
    pub teaches_sent: u64,
    /// Times its queue overflowed and it was resynced.
    pub resyncs: u64,
    /// Its service definitions differ from ours (by digest).
    pub services_differ: bool,
    pub services_digest: Option<String>,
    /// Sessions with it ended by an error (protocol, version, name, timeout).
    pub refusals: u64,
}

/// One direction's connection.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SessionStatus {
    pub connected: bool,
    /// Milliseconds since it was established (or lost).
    pub since_ms: Option<u64>,
    pub sessions: u64,
    /// What last failed or ended it (connecting, TLS, hello, protocol, timeout).
    pub last_error: Option<String>,
}
