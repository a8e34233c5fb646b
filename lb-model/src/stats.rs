//! The one stats schema: what the `stats` and `backend.list` answers carry, what the
//! metrics endpoint exposes and what `stickylb top` reads. The agent fills it, serde writes
//! it as JSON, the metrics module encodes it for Prometheus and `top` reads it back: a
//! counter or a field added here (or a counter added in `lb-common`) reaches all three.
//!
//! Data-path counters are the `lb-common` counter sets ([`ServiceStats`], [`BackendStats`]),
//! written flat into their row (`"packets": 5, "drop_no_backend": 0, …`) by [`Counters`]
//! from their one definition. What the agent knows besides (weights, health, pinned
//! clients, the stick-table fill) are the named fields below, each described once in
//! [`GAUGES`] for the metrics endpoint.

use std::fmt;

use lb_common::{BackendStats, CounterSet, ServiceStats};
use serde::{
    de::{MapAccess, Visitor},
    ser::SerializeMap,
    Deserialize, Deserializer, Serialize, Serializer,
};

use crate::spec::{AdminState, BackendState, Forwarding, Protocol, Scheduler};
use serde_json::Value;

/// The `status` answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub instance: String,
    pub pid: u32,
    pub uptime_s: u64,
    /// The config file.
    pub config: String,
    pub interfaces: Vec<Interface>,
    /// The instance's pin directory.
    pub pins: String,
    pub services: usize,
    pub backends: usize,
    pub stick_table: StickFill,
    /// Control-command changes since the config file was loaded.
    pub control_changes: u64,
    pub reloads: u64,
    /// Largest delay seen between a health check's due time and its start.
    pub health_max_lag_ms: u64,
    /// The next hops the agent keeps resolved (absent before they are first looked at).
    #[serde(default)]
    pub neighbours: Option<Neighbours>,
    /// Problems with this setup that stop traffic, each with its fix.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Each VIP announced or why not (with `[announce]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<crate::announce::AnnounceStatus>,
}

/// An interface the agent attaches to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    /// How: `native`, `skb`, `adopted`, or `gone` / `attach failed`.
    pub xdp: String,
}

/// A row of the `service.list` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceListRow {
    pub name: String,
    pub id: Option<u32>,
    pub listen: String,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub forwarding: Forwarding,
    /// Stick-table entry lifetime; `None` = never.
    pub expire_s: Option<f64>,
    pub backends: usize,
    pub packets: u64,
    pub new_clients: u64,
}

/// The `stats` answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub services: Vec<ServiceRow>,
    pub stick_table: StickFill,
    /// As in [`Status::neighbours`].
    #[serde(default)]
    pub neighbours: Option<Neighbours>,
    /// As in [`Status::warnings`].
    #[serde(default)]
    pub warnings: Vec<String>,
    /// VIP announcement (with `[announce]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<crate::announce::AnnounceStatus>,
    /// `[cluster]`'s figures, on a node that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterFigures>,
}

/// The next hops the agent keeps resolved with managed neighbour entries, and the data
/// path's reports of unresolved ones.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Neighbours {
    /// Next hops kept managed now.
    pub managed: u64,
    /// Of which reported by the data path (not backends or gateways).
    pub reported: u64,
    /// Reports read from the data path.
    pub reports: u64,
    /// Entries written (created, converted to managed, or re-created after a deletion).
    pub writes: u64,
    /// Entries written again after something deleted them (`ip neigh flush`) or the
    /// kernel re-created them as ordinary entries.
    pub rewritten_after_delete: u64,
    /// Reported next hops whose entries were deleted again (no longer needed).
    pub aged_out: u64,
    /// Reports of new next hops beyond the managed limit, left to the kernel.
    pub over_limit: u64,
    /// Netlink requests that failed, and the last error.
    pub errors: u64,
    pub last_error: Option<String>,
    /// Resolutions timed from the data path's first miss to a usable entry, and their
    /// times in ms.
    pub resolved: u64,
    pub resolve_ms_last: f64,
    pub resolve_ms_max: f64,
    pub resolve_ms_avg: f64,
}

/// A cluster node's replication as the metrics show it (from `lb_cluster::ClusterStatus`
/// and the agent's own counts).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterFigures {
    pub synced: bool,
    pub entries: u64,
    pub conflicts: u64,
    pub superseded: u64,
    pub rejected: u64,
    pub unknown_service: u64,
    pub unknown_backend: u64,
    pub local_picks: u64,
    pub local_repairs: u64,
    pub refreshes: u64,
    pub rewrites: u64,
    pub adopted: u64,
    pub refused_handshakes: u64,
    /// Events read from the data path's ring.
    pub events_read: u64,
    /// Events the data path dropped (ring full), summed over CPUs.
    pub events_lost: u64,
    /// Entries from peers written into the stick table.
    pub entries_written: u64,
    pub peers: Vec<PeerFigures>,
}

/// One peer's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerFigures {
    pub name: String,
    /// `up` (both directions), `half`, `down`.
    pub state: String,
    pub entries_sent: u64,
    pub entries_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub queued: u64,
    pub lag_ms: u64,
    pub resyncs: u64,
    pub refusals: u64,
    pub ignored_unknown: u64,
    pub services_differ: bool,
}

impl ClusterFigures {
    /// From the replication's status and the agent's counts.
    pub fn new(
        st: &lb_cluster::ClusterStatus,
        events_read: u64,
        events_lost: u64,
        entries_written: u64,
    ) -> ClusterFigures {
        let c = &st.counters;
        ClusterFigures {
            synced: st.synced,
            entries: st.entries,
            conflicts: c.conflicts,
            superseded: c.superseded,
            rejected: c.rejected,
            unknown_service: c.unknown_service,
            unknown_backend: c.unknown_backend,
            local_picks: c.local_picks,
            local_repairs: c.local_repairs,
            refreshes: c.refreshes,
            rewrites: c.rewrites,
            adopted: c.adopted,
            refused_handshakes: st.refused_handshakes,
            events_read,
            events_lost,
            entries_written,
            peers: st
                .peers
                .iter()
                .map(|p| PeerFigures {
                    name: p.name.clone(),
                    state: p.state.to_string(),
                    entries_sent: p.entries_sent,
                    entries_received: p.entries_received,
                    bytes_sent: p.bytes_sent,
                    bytes_received: p.bytes_received,
                    queued: p.queued,
                    lag_ms: p.lag_ms,
                    resyncs: p.resyncs,
                    refusals: p.refusals,
                    ignored_unknown: p.ignored_unknown,
                    services_differ: p.services_differ,
                })
                .collect(),
        }
    }

    /// The node's values: (gauge, value).
    pub fn gauges(&self) -> Vec<(Gauge, f64)> {
        vec![
            (CLUSTER_SYNCED, f64::from(u8::from(self.synced))),
            (CLUSTER_ENTRIES, self.entries as f64),
            (CLUSTER_CONFLICTS, self.conflicts as f64),
            (CLUSTER_SUPERSEDED, self.superseded as f64),
            (CLUSTER_REJECTED, self.rejected as f64),
            (CLUSTER_UNKNOWN_SERVICE, self.unknown_service as f64),
            (CLUSTER_UNKNOWN_BACKEND, self.unknown_backend as f64),
            (CLUSTER_LOCAL_PICKS, self.local_picks as f64),
            (CLUSTER_REPAIRS, self.local_repairs as f64),
            (CLUSTER_REFRESHES, self.refreshes as f64),
            (CLUSTER_REFUSED_HANDSHAKES, self.refused_handshakes as f64),
            (CLUSTER_EVENTS, self.events_read as f64),
            (CLUSTER_EVENTS_LOST, self.events_lost as f64),
            (CLUSTER_WRITTEN, self.entries_written as f64),
        ]
    }
}

impl PeerFigures {
    /// The peer's values: (gauge, value).
    pub fn gauges(&self) -> Vec<(Gauge, f64)> {
        vec![
            (PEER_UP, f64::from(u8::from(self.state == "up"))),
            (PEER_SENT, self.entries_sent as f64),
            (PEER_RECEIVED, self.entries_received as f64),
            (PEER_BYTES_SENT, self.bytes_sent as f64),
            (PEER_BYTES_RECEIVED, self.bytes_received as f64),
            (PEER_QUEUED, self.queued as f64),
            (PEER_LAG, self.lag_ms as f64 / 1e3),
            (PEER_RESYNCS, self.resyncs as f64),
            (PEER_REFUSALS, self.refusals as f64),
            (PEER_IGNORED, self.ignored_unknown as f64),
            (
                PEER_SERVICES_DIFFER,
                f64::from(u8::from(self.services_differ)),
            ),
        ]
    }
}

/// The `peers` answer: the replication's whole status (`lb_cluster::ClusterStatus` in its
/// serde form, see docs/CLUSTER.md) and the agent's side of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    /// Whether the configuration has `[cluster]`.
    pub clustered: bool,
    /// Whether the node is synced (always, without `[cluster]`).
    pub synced: bool,
    pub events_read: u64,
    pub events_lost: u64,
    pub entries_written: u64,
    pub scans: u64,
    pub scan_interval_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

/// How full the stick table is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickFill {
    /// Entries at the last count (the agent counts in the background; see `census_age_ms`).
    pub entries: u64,
    /// Entries the table holds at most.
    pub capacity: u64,
    /// How old the count is, in ms (0 for a table counted on demand).
    #[serde(default)]
    pub census_age_ms: u64,
}

/// One service and its backends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    #[serde(flatten)]
    pub counters: Counters<ServiceStats>,
    /// Clients (stick-table entries) pinned to the service at the last count.
    #[serde(default)]
    pub pinned: Option<u64>,
    pub backends: Vec<BackendRow>,
}

crate::named! {
    /// What the health checks say of a backend.
    pub enum Health {
        Up = "up",
        Down = "down",
        /// Not checked (`health.kind = "none"`).
        None = "none",
    }
}

/// One backend of a service (also a row of the `backend.list` answer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendRow {
    pub service: String,
    /// `ADDR:PORT` as configured (port 0: the service port).
    pub address: String,
    /// Backend id in the data path, once planned.
    pub id: Option<u32>,
    pub weight: u32,
    pub admin: AdminState,
    pub health: Health,
    /// What the data path does with it: admin state and health together.
    pub state: BackendState,
    /// Health changes of state (up↔down) since the agent started: a rising count on a
    /// backend that is up now is a flapping backend.
    pub flaps: u64,
    /// The last health checks, when checked.
    pub check: Option<CheckStatus>,
    #[serde(flatten)]
    pub counters: Counters<BackendStats>,
    /// Clients pinned to the backend at the last count.
    #[serde(default)]
    pub pinned: Option<u64>,
}

/// State and counters of one health-checked backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStatus {
    pub up: bool,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    /// Latency of the last check, when it got a response.
    pub last_latency_us: Option<u64>,
    /// Reason of the last check when it failed; cleared by a successful check.
    pub last_error: Option<String>,
    /// Checks run.
    pub checks: u64,
    /// Failed checks.
    pub failures: u64,
    /// Changes of state.
    pub transitions: u64,
    /// When the state last changed (or when the target was added).
    pub last_change_unix_ms: u64,
}

/// A counter set written flat into its row, one key per counter (from its definition in
/// `lb-common`); keys it does not know are ignored when read (an older `top` reading a
/// newer agent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters<T>(pub T);

impl<T: CounterSet> Serialize for Counters<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(T::COUNTERS.len()))?;
        let mut result = Ok(());
        self.0.for_each(&mut |c, v| {
            if result.is_ok() {
                result = map.serialize_entry(c.key, &v);
            }
        });
        result?;
        map.end()
    }
}

impl<'de, T: CounterSet> Deserialize<'de> for Counters<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: CounterSet> Visitor<'de> for V<T> {
            type Value = Counters<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("counters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut c = T::default();
                while let Some(key) = map.next_key::<String>()? {
                    match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::Number(n) if n.as_u64().is_some() => {
                            c.set(&key, n.as_u64().unwrap_or(0));
                        }
                        _ => {}
                    }
                }
                Ok(Counters(c))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// What a gauge (a value that goes up and down) of the metrics endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    /// A counter of the agent's own (`_total`), not a gauge.
    pub counter: bool,
}

/// The metrics the agent exposes besides the data-path counters, each with its one name
/// and help text; [`BackendRow::gauges`] and [`StickFill::gauges`] give their values.
pub const GAUGES: &[Gauge] = &[
    BACKEND_WEIGHT,
    BACKEND_FLAPS,
    BACKEND_UP,
    BACKEND_CHECK_LATENCY,
    BACKEND_PINNED,
    SERVICE_PINNED,
    STICK_ENTRIES,
    STICK_CAPACITY,
    NEIGHBOURS_MANAGED,
    NEIGHBOUR_REPORTS,
    NEIGHBOUR_RESOLVED,
    NEIGHBOUR_RESOLVE_MAX,
    SETUP_WARNINGS,
    VIP_ANNOUNCED,
    VIP_ASSIGNED,
    VIP_PACKETS_RATE,
    NODE_DRAINING,
    DAEMON_UP,
    BGP_SESSIONS_UP,
    CLUSTER_SYNCED,
    CLUSTER_ENTRIES,
    CLUSTER_CONFLICTS,
    CLUSTER_SUPERSEDED,
    CLUSTER_REJECTED,
    CLUSTER_UNKNOWN_SERVICE,
    CLUSTER_UNKNOWN_BACKEND,
    CLUSTER_LOCAL_PICKS,
    CLUSTER_REPAIRS,
    CLUSTER_REFRESHES,
    CLUSTER_REFUSED_HANDSHAKES,
    CLUSTER_EVENTS,
    CLUSTER_EVENTS_LOST,
    CLUSTER_WRITTEN,
    PEER_UP,
    PEER_SENT,
    PEER_RECEIVED,
    PEER_BYTES_SENT,
    PEER_BYTES_RECEIVED,
    PEER_QUEUED,
    PEER_LAG,
    PEER_RESYNCS,
    PEER_REFUSALS,
    PEER_IGNORED,
    PEER_SERVICES_DIFFER,
];

macro_rules! gauge {
    ($id:ident, $name:literal, $counter:literal, $help:literal) => {
        pub const $id: Gauge = Gauge {
            name: $name,
            help: $help,
            counter: $counter,
        };
    };
}

gauge!(
    CLUSTER_SYNCED,
    "stickylb_cluster_synced",
    false,
    "1 once this node holds the cluster's table (every peer taught it, or was waited for)."
);
gauge!(
    CLUSTER_ENTRIES,
    "stickylb_cluster_store_entries",
    false,
    "Entries in the replicated store."
);
gauge!(
    CLUSTER_CONFLICTS,
    "stickylb_cluster_conflicts",
    true,
    "Two nodes pinned one client to different backends within the conflict window (resolved)."
);
gauge!(
    CLUSTER_SUPERSEDED,
    "stickylb_cluster_superseded",
    true,
    "Peers' later decisions that replaced an older one here (re-picks elsewhere)."
);
gauge!(
    CLUSTER_REJECTED,
    "stickylb_cluster_rejected",
    true,
    "Peers' values that lost to this node's (answered with ours)."
);
gauge!(
    CLUSTER_UNKNOWN_SERVICE,
    "stickylb_cluster_unknown_service",
    true,
    "Entries from peers naming a service this node does not have (ignored)."
);
gauge!(
    CLUSTER_UNKNOWN_BACKEND,
    "stickylb_cluster_unknown_backend",
    true,
    "Entries from peers naming a backend this node's service does not have (ignored)."
);
gauge!(
    CLUSTER_LOCAL_PICKS,
    "stickylb_cluster_local_picks",
    true,
    "This node's new entries and re-picks sent to the peers."
);
gauge!(
    CLUSTER_REPAIRS,
    "stickylb_cluster_repairs",
    true,
    "Entries the scan found that no event announced (lost events, restarts)."
);
gauge!(
    CLUSTER_REFRESHES,
    "stickylb_cluster_refreshes",
    true,
    "Last-seen refreshes sent (at most once per expire/4 per entry)."
);
gauge!(
    CLUSTER_REFUSED_HANDSHAKES,
    "stickylb_cluster_refused_handshakes",
    true,
    "Connections refused before a peer was known (credentials, not TLS, unknown name)."
);
gauge!(
    CLUSTER_EVENTS,
    "stickylb_cluster_events",
    true,
    "Stick-table events read from the data path's ring."
);
gauge!(
    CLUSTER_EVENTS_LOST,
    "stickylb_cluster_events_lost",
    true,
    "Stick-table events the data path dropped because the ring was full (the scan repairs them)."
);
gauge!(
    CLUSTER_WRITTEN,
    "stickylb_cluster_entries_written",
    true,
    "Entries from peers written into the stick table."
);
gauge!(
    PEER_UP,
    "stickylb_cluster_peer_up",
    false,
    "1 when both connections with the peer are up."
);
gauge!(
    PEER_SENT,
    "stickylb_cluster_peer_entries_sent",
    true,
    "Entries sent to the peer."
);
gauge!(
    PEER_RECEIVED,
    "stickylb_cluster_peer_entries_received",
    true,
    "Entries received from the peer."
);
gauge!(
    PEER_BYTES_SENT,
    "stickylb_cluster_peer_sent_bytes",
    true,
    "Bytes sent to the peer (TLS records)."
);
gauge!(
    PEER_BYTES_RECEIVED,
    "stickylb_cluster_peer_received_bytes",
    true,
    "Bytes received from the peer (TLS records)."
);
gauge!(
    PEER_QUEUED,
    "stickylb_cluster_peer_queued",
    false,
    "Entries queued for the peer."
);
gauge!(
    PEER_LAG,
    "stickylb_cluster_peer_lag_seconds",
    false,
    "Age of the oldest entry queued for the peer."
);
gauge!(
    PEER_RESYNCS,
    "stickylb_cluster_peer_resyncs",
    true,
    "Full teaches after the peer's queue overflowed."
);
gauge!(
    PEER_REFUSALS,
    "stickylb_cluster_peer_refusals",
    true,
    "Sessions of the peer ended for breaking the protocol."
);
gauge!(
    PEER_IGNORED,
    "stickylb_cluster_peer_ignored_unknown",
    true,
    "Entries from the peer for services or backends this node does not have."
);
gauge!(
    PEER_SERVICES_DIFFER,
    "stickylb_cluster_peer_services_differ",
    false,
    "1 when the peer's service definitions differ from this node's."
);

pub const BACKEND_WEIGHT: Gauge = Gauge {
    name: "stickylb_backend_weight",
    help: "Configured weight.",
    counter: false,
};
pub const BACKEND_FLAPS: Gauge = Gauge {
    name: "stickylb_backend_flaps",
    help: "Health changes of state (up to down or down to up) since the agent started.",
    counter: true,
};
pub const BACKEND_UP: Gauge = Gauge {
    name: "stickylb_backend_up",
    help: "1 when the backend takes traffic (health and admin state).",
    counter: false,
};
pub const BACKEND_CHECK_LATENCY: Gauge = Gauge {
    name: "stickylb_backend_check_latency_seconds",
    help: "Latency of the last successful health check.",
    counter: false,
};
pub const BACKEND_PINNED: Gauge = Gauge {
    name: "stickylb_backend_pinned_clients",
    help: "Clients (stick-table entries) pinned to the backend at the last count.",
    counter: false,
};
pub const SERVICE_PINNED: Gauge = Gauge {
    name: "stickylb_service_pinned_clients",
    help: "Clients (stick-table entries) pinned to the service at the last count.",
    counter: false,
};
pub const STICK_ENTRIES: Gauge = Gauge {
    name: "stickylb_stick_table_entries",
    help: "Entries in the stick table.",
    counter: false,
};
pub const STICK_CAPACITY: Gauge = Gauge {
    name: "stickylb_stick_table_capacity",
    help: "Capacity of the stick table.",
    counter: false,
};

pub const NEIGHBOURS_MANAGED: Gauge = Gauge {
    name: "stickylb_neighbours_managed",
    help: "Next hops the agent keeps resolved (managed neighbour entries).",
    counter: false,
};
pub const NEIGHBOUR_REPORTS: Gauge = Gauge {
    name: "stickylb_neighbour_reports",
    help: "Unresolved next hops reported by the data path.",
    counter: true,
};
pub const NEIGHBOUR_RESOLVED: Gauge = Gauge {
    name: "stickylb_neighbour_resolved",
    help: "Reported next hops that became usable.",
    counter: true,
};
pub const NEIGHBOUR_RESOLVE_MAX: Gauge = Gauge {
    name: "stickylb_neighbour_resolve_seconds_max",
    help: "Longest time from the data path's first miss to a usable neighbour entry.",
    counter: false,
};
pub const SETUP_WARNINGS: Gauge = Gauge {
    name: "stickylb_setup_warnings",
    help: "Problems with this setup that stop traffic (see `stickylb status`).",
    counter: false,
};

impl Stats {
    /// The values of the agent-wide gauges: the stick table's fill, and the neighbours
    /// and setup warnings once the neighbour keeper runs.
    pub fn gauges(&self) -> Vec<(Gauge, f64)> {
        let mut v = self.stick_table.gauges();
        if let Some(n) = &self.neighbours {
            v.extend([
                (NEIGHBOURS_MANAGED, n.managed as f64),
                (NEIGHBOUR_REPORTS, n.reports as f64),
                (NEIGHBOUR_RESOLVED, n.resolved as f64),
                (NEIGHBOUR_RESOLVE_MAX, n.resolve_ms_max / 1000.0),
                (SETUP_WARNINGS, self.warnings.len() as f64),
            ]);
        }
        v
    }
}

pub const VIP_ANNOUNCED: Gauge = Gauge {
    name: "stickylb_vip_announced",
    help: "1 when the VIP is assigned for the routing daemon and the daemon (when watched) has a BGP session up; the reason label says why not.",
    counter: false,
};
pub const VIP_ASSIGNED: Gauge = Gauge {
    name: "stickylb_vip_assigned",
    help: "1 when the VIP's address is on the announce interface.",
    counter: false,
};
pub const VIP_PACKETS_RATE: Gauge = Gauge {
    name: "stickylb_vip_packets_per_second",
    help: "Packets per second for the VIP's services over the last second (what a drain waits to fall to 0).",
    counter: false,
};
pub const NODE_DRAINING: Gauge = Gauge {
    name: "stickylb_node_draining",
    help: "1 while the node is draining (node drain, or SIGTERM).",
    counter: false,
};
pub const DAEMON_UP: Gauge = Gauge {
    name: "stickylb_routing_daemon_up",
    help: "1 when the routing daemon answers on its control socket (daemon_socket).",
    counter: false,
};
pub const BGP_SESSIONS_UP: Gauge = Gauge {
    name: "stickylb_bgp_sessions_established",
    help: "BGP sessions of the routing daemon in state Established.",
    counter: false,
};

/// Labels of one sample: `(name, value)`.
pub type Labels = Vec<(&'static str, String)>;

impl crate::announce::AnnounceStatus {
    /// The values of the announcement gauges, with their labels.
    pub fn gauges(&self) -> Vec<(Gauge, Labels, f64)> {
        let b = |x: bool| f64::from(u8::from(x));
        let mut v = vec![(NODE_DRAINING, Vec::new(), b(self.draining))];
        if self.daemon.socket.is_some() {
            let up = self.daemon.state == crate::announce::DaemonStatus::RUNNING;
            v.push((DAEMON_UP, Vec::new(), b(up)));
            let n = self
                .daemon
                .sessions
                .iter()
                .filter(|s| s.established())
                .count();
            v.push((BGP_SESSIONS_UP, Vec::new(), n as f64));
        }
        for r in &self.vips {
            let vip = vec![("vip", r.vip.to_string())];
            let mut why = vip.clone();
            why.push((
                "reason",
                r.why.map_or_else(String::new, |w| {
                    serde_json::to_value(w)
                        .ok()
                        .and_then(|x| x.as_str().map(str::to_owned))
                        .unwrap_or_default()
                }),
            ));
            v.push((VIP_ANNOUNCED, why, b(r.announced)));
            v.push((VIP_ASSIGNED, vip.clone(), b(r.assigned)));
            v.push((VIP_PACKETS_RATE, vip, r.packets_per_s));
        }
        v
    }
}

impl BackendRow {
    /// Whether the backend takes traffic (up, or draining its own clients).
    pub fn takes_traffic(&self) -> bool {
        matches!(self.state, BackendState::Up | BackendState::Drain)
    }

    /// The values of the backend's gauges (those it has now).
    pub fn gauges(&self) -> Vec<(Gauge, f64)> {
        let mut v = vec![
            (BACKEND_WEIGHT, f64::from(self.weight)),
            (BACKEND_FLAPS, self.flaps as f64),
            (BACKEND_UP, f64::from(u8::from(self.takes_traffic()))),
        ];
        if let Some(us) = self.check.as_ref().and_then(|c| c.last_latency_us) {
            v.push((BACKEND_CHECK_LATENCY, us as f64 / 1e6));
        }
        if let Some(n) = self.pinned {
            v.push((BACKEND_PINNED, n as f64));
        }
        v
    }
}

impl ServiceRow {
    /// The values of the service's gauges (those it has now).
    pub fn gauges(&self) -> Vec<(Gauge, f64)> {
        self.pinned
            .map(|n| (SERVICE_PINNED, n as f64))
            .into_iter()
            .collect()
    }

    /// Backends that take new clients now, of all.
    pub fn up(&self) -> (usize, usize) {
        let up = self
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Up)
            .count();
        (up, self.backends.len())
    }
}

impl StickFill {
    pub fn gauges(&self) -> Vec<(Gauge, f64)> {
        vec![
            (STICK_ENTRIES, self.entries as f64),
            (STICK_CAPACITY, self.capacity as f64),
        ]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `stats` answer with one service and two backends.
    pub fn sample() -> Stats {
        let svc = ServiceStats {
            packets: 5,
            drop_no_backend: 3,
            repick_expired: 1,
            ..Default::default()
        };
        let b = BackendStats {
            packets: 5,
            new_clients: 2,
            ..Default::default()
        };
        Stats {
            services: vec![ServiceRow {
                name: "web".into(),
                counters: Counters(svc),
                pinned: Some(7),
                backends: vec![
                    BackendRow {
                        service: "web".into(),
                        address: "10.0.0.2:80".into(),
                        id: Some(0),
                        weight: 2,
                        admin: AdminState::Ready,
                        health: Health::Up,
                        state: BackendState::Up,
                        flaps: 4,
                        check: Some(CheckStatus {
                            up: true,
                            consecutive_ok: 3,
                            consecutive_fail: 0,
                            last_latency_us: Some(1500),
                            last_error: None,
                            checks: 3,
                            failures: 0,
                            transitions: 4,
                            last_change_unix_ms: 1,
                        }),
                        counters: Counters(b),
                        pinned: Some(5),
                    },
                    BackendRow {
                        service: "web".into(),
                        address: "10.0.0.3:80".into(),
                        id: Some(1),
                        weight: 1,
                        admin: AdminState::Drain,
                        health: Health::Down,
                        state: BackendState::Down,
                        flaps: 0,
                        check: None,
                        counters: Counters(BackendStats::default()),
                        pinned: None,
                    },
                ],
            }],
            stick_table: StickFill {
                entries: 7,
                capacity: 200_000,
                census_age_ms: 0,
            },
            neighbours: Some(Neighbours {
                managed: 3,
                reports: 7,
                resolved: 2,
                resolve_ms_max: 1.5,
                ..Default::default()
            }),
            warnings: vec!["IPv4 forwarding is off".into()],
            announce: None,
            cluster: None,
        }
    }

    #[test]
    fn json_has_every_counter_flat_and_reads_back() {
        let stats = sample();
        let v = serde_json::to_value(&stats).unwrap();
        let svc = &v["services"][0];
        for c in ServiceStats::COUNTERS {
            assert!(svc[c.key].is_u64(), "{} missing in {svc}", c.key);
        }
        assert_eq!(svc["packets"], 5);
        assert_eq!(svc["drop_no_backend"], 3);
        let b = &svc["backends"][0];
        for c in BackendStats::COUNTERS {
            assert!(b[c.key].is_u64(), "{} missing in {b}", c.key);
        }
        assert_eq!(b["admin"], "ready");
        assert_eq!(b["state"], "up");
        assert_eq!(b["check"]["last_latency_us"], 1500);
        assert_eq!(serde_json::from_value::<Stats>(v.clone()).unwrap(), stats);
        // A counter this build does not know (a newer agent) is ignored.
        let mut newer = v;
        newer["services"][0]["lost_something"] = 9.into();
        assert_eq!(serde_json::from_value::<Stats>(newer).unwrap(), stats);
    }

    #[test]
    fn every_gauge_is_described_once() {
        let mut names = std::collections::BTreeSet::new();
        for g in GAUGES {
            assert!(names.insert(g.name), "{} twice", g.name);
            assert!(g.help.ends_with('.'));
            assert!(!g.name.ends_with("_total"));
        }
        let s = sample();
        for (g, _) in s.services[0].backends[0]
            .gauges()
            .into_iter()
            .chain(s.services[0].gauges())
            .chain(s.gauges())
        {
            assert!(GAUGES.contains(&g), "{} not in GAUGES", g.name);
        }
    }
}
