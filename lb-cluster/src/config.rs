//! The `[cluster]` section of the configuration: this node's name, where it listens for
//! peers, the peers, the credentials, and the limits. A serde struct
//! (`deny_unknown_fields`) for the config schema to mount, with [`ClusterConfig::validate`]
//! naming the bad value and what is accepted.
//!
//! ```toml
//! [cluster]
//! node = "lb1"                       # this node; must be a DNS name in its certificate
//! listen = "10.0.0.1:7946"
//! peers = [
//!   { name = "lb2", address = "10.0.0.2:7946" },
//!   { name = "lb3", address = "10.0.0.3:7946" },
//! ]
//! ca = "/etc/stickylb/cluster/ca.pem"     # the cluster CA: peers' certificates chain to it
//! cert = "/etc/stickylb/cluster/lb1.pem"  # this node's certificate (chain), SAN DNS:lb1
//! key = "/etc/stickylb/cluster/lb1.key"
//! # limits (defaults shown)
//! heartbeat = "1s"
//! peer_timeout = "5s"
//! sync_timeout = "10s"
//! queue = 262144
//! max_frame = 1048576
//! max_entries = 4000000
//! conflict_window = "1s"
//! ```
//!
//! Durations use the configuration's one grammar (`lb_common::duration`): a whole number
//! and `ms`, `s`, `m`, `h` or `d`, or a whole number of seconds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::store::MAX_PEERS;

/// The `[cluster]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name: unique in the cluster, a DNS name that its certificate carries
    /// as a subject alternative name.
    pub node: String,
    /// Address to accept peers on.
    pub listen: SocketAddr,
    /// The other nodes.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// PEM file of the cluster CA that every node's certificate chains to.
    pub ca: PathBuf,
    /// PEM file of this node's certificate (and any intermediates).
    pub cert: PathBuf,
    /// PEM file of this node's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Send a heartbeat after this long without sending anything.
    #[serde(default = "d_heartbeat", with = "dur")]
    pub heartbeat: Duration,
    /// End a session after this long without hearing from the peer.
    #[serde(default = "d_peer_timeout", with = "dur")]
    pub peer_timeout: Duration,
    /// A peer that has not connected this long after start is not waited for (see
    /// `synced` in docs/CLUSTER.md).
    #[serde(default = "d_sync_timeout", with = "dur")]
    pub sync_timeout: Duration,
    /// Entries queued per peer before it is resynced by a full teach instead.
    #[serde(default = "d_queue")]
    pub queue: usize,
    /// Largest frame accepted from a peer, in bytes.
    #[serde(default = "d_max_frame")]
    pub max_frame: usize,
    /// Most entries the replicated store holds (the sum of the stick-table sizes is a
    /// good value); beyond it the stalest are evicted.
    #[serde(default = "d_max_entries")]
    pub max_entries: usize,
    /// Two picks of one client with different backends this close in time are counted
    /// as a conflict.
    #[serde(default = "d_conflict_window", with = "dur")]
    pub conflict_window: Duration,
}

/// One peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its node name (the DNS name in its certificate).
    pub name: String,
    /// Where it listens for peers.
    pub address: SocketAddr,
}

fn d_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn d_peer_timeout() -> Duration {
    Duration::from_secs(5)
}
fn d_sync_timeout() -> Duration {
    Duration::from_secs(10)
}
fn d_queue() -> usize {
    262_144
}
fn d_max_frame() -> usize {
    1 << 20
}
fn d_max_entries() -> usize {
    4_000_000
}
fn d_conflict_window() -> Duration {
    Duration::from_secs(1)
}

/// A refused `[cluster]` value: the field, the value, and what is accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cluster.{field} = {value}: {accepted}")]
pub struct ConfigError {
    pub field: String,
    pub value: String,
    pub accepted: String,
}

fn err(field: &str, value: impl std::fmt::Display, accepted: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        value: value.to_string(),
        accepted: accepted.into(),
    }
}

/// Whether `name` is a DNS name that a certificate can carry and rustls can check: 1 to
/// 253 characters, dot-separated labels of 1 to 63 letters, digits and hyphens, not
/// starting or ending with a hyphen, and not all digits (so not an IP address).
pub fn is_node_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    });
    labels_ok && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

const NAME_HELP: &str = "a DNS name (letters, digits, '-' and '.'; labels of 1 to 63 \
characters not starting or ending with '-'), as in the node's certificate";

impl ClusterConfig {
    /// Checks every value; the first bad one is named with what is accepted.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_node_name(&self.node) {
            return Err(err("node", format!("{:?}", self.node), NAME_HELP));
        }
        if self.peers.len() > MAX_PEERS {
            return Err(err(
                "peers",
                format!("{} peers", self.peers.len()),
                format!("at most {MAX_PEERS} peers"),
            ));
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let f = format!("peers[{i}].name");
            if !is_node_name(&p.name) {
                return Err(err(&f, format!("{:?}", p.name), NAME_HELP));
            }
            if p.name == self.node {
                return Err(err(
                    &f,
                    format!("{:?}", p.name),
                    "a name other than this node's own (`node`)",
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(err(&f, format!("{:?}", p.name), "each peer's name once"));
            }
            let f = format!("peers[{i}].address");
            if p.address.port() == 0 || p.address.ip().is_unspecified() {
                return Err(err(
                    &f,
                    p.address,
                    "an address and port a peer listens on (not 0.0.0.0, ::, or port 0)",
                ));
            }
            if p.address == self.listen {
                return Err(err(
                    &f,
                    p.address,
                    "an address other than this node's `listen`",
                ));
            }
            if !addrs.insert(p.address) {
                return Err(err(&f, p.address, "each peer's address once"));
            }
        }
        if self.listen.port() == 0 {
            return Err(err(
                "listen",
                self.listen,
                "an address with a port other than 0",
            ));
        }
        for (field, path) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if path.as_os_str().is_empty() {
                return Err(err(field, "\"\"", "the path of a PEM file"));
            }
        }
        let ms = |d: Duration| d.as_millis();
        if !(100..=60_000).contains(&ms(self.heartbeat)) {
            return Err(err(
                "heartbeat",
                dur::format(self.heartbeat),
                "a duration from 100ms to 60s",
            ));
        }
        if self.peer_timeout < self.heartbeat * 2 || self.peer_timeout > Duration::from_secs(600) {
            return Err(err(
                "peer_timeout",
                dur::format(self.peer_timeout),
                format!(
                    "a duration of at least twice the heartbeat ({}) and at most 10m",
                    dur::format(self.heartbeat * 2)
                ),
            ));
        }
        if self.sync_timeout > Duration::from_secs(3600) {
            return Err(err(
                "sync_timeout",
                dur::format(self.sync_timeout),
                "a duration from 0s to 1h",
            ));
        }
        if !(1024..=16_777_216).contains(&self.queue) {
            return Err(err("queue", self.queue, "1024 to 16777216 entries"));
        }
        if !(262_144..=67_108_864).contains(&self.max_frame) {
            return Err(err(
                "max_frame",
                self.max_frame,
                "262144 (256 KiB) to 67108864 (64 MiB) bytes",
            ));
        }
        if !(1..=100_000_000).contains(&self.max_entries) {
            return Err(err(
                "max_entries",
                self.max_entries,
                "1 to 100000000 entries",
            ));
        }
        if self.conflict_window > Duration::from_secs(3600) {
            return Err(err(
                "conflict_window",
                dur::format(self.conflict_window),
                "a duration from 0s to 1h",
            ));
        }
        Ok(())
    }

    /// Index of the peer named `name`.
    pub fn peer_index(&self, name: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.name == name)
    }
}

/// (De)serialises a `Duration` as the configuration's duration text: the project's one
/// duration grammar and formatter (`lb_common::duration`).
pub mod dur {
    use super::*;

    pub use lb_common::duration::{format, parse};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
node = "lb1"
listen = "10.0.0.1:7946"
peers = [
  { name = "lb2", address = "10.0.0.2:7946" },
  { name = "lb3", address = "10.0.0.3:7946" },
]
ca = "/etc/stickylb/cluster/ca.pem"
cert = "/etc/stickylb/cluster/lb1.pem"
key = "/etc/stickylb/cluster/lb1.key"
"#;

    fn example() -> ClusterConfig {
        toml::from_str(EXAMPLE).unwrap()
    }

    #[test]
    fn example_parses_with_defaults_and_round_trips() {
        let c = example();
        c.validate().unwrap();
        assert_eq!(c.heartbeat, Duration::from_secs(1));
        assert_eq!(c.peer_index("lb3"), Some(1));
        let text = toml::to_string(&c).unwrap();
        let back: ClusterConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_refused() {
        let e = toml::from_str::<ClusterConfig>(&format!("{EXAMPLE}\nbogus = 1\n")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = toml::from_str::<ClusterConfig>(&format!("{EXAMPLE}\nheartbeat = \"1 sec\"\n"))
            .unwrap_err();
        assert!(e.to_string().contains("\"300ms\""), "{e}");
    }

    #[test]
    fn refusals_name_the_value_and_what_is_accepted() {
        type Change = Box<dyn Fn(&mut ClusterConfig)>;
        let cases: Vec<(Change, &str, &str)> = vec![
            (
                Box::new(|c| c.node = "lb_1".into()),
                "cluster.node = \"lb_1\"",
                "DNS name",
            ),
            (
                Box::new(|c| c.node = "10.0.0.1".into()),
                "cluster.node",
                "DNS name",
            ),
            (
                Box::new(|c| c.peers[1].name = "lb2".into()),
                "cluster.peers[1].name = \"lb2\"",
                "once",
            ),
            (
                Box::new(|c| c.peers[0].name = "lb1".into()),
                "cluster.peers[0].name",
                "other than this node",
            ),
            (
                Box::new(|c| c.peers[0].address = "10.0.0.1:7946".parse().unwrap()),
                "cluster.peers[0].address = 10.0.0.1:7946",
                "listen",
            ),
            (
                Box::new(|c| c.peers[0].address = "0.0.0.0:7946".parse().unwrap()),
                "cluster.peers[0].address",
                "not 0.0.0.0",
            ),
            (
                Box::new(|c| c.heartbeat = Duration::from_millis(10)),
                "cluster.heartbeat = 10ms",
                "100ms to 60s",
            ),
            (
                Box::new(|c| c.peer_timeout = Duration::from_secs(1)),
                "cluster.peer_timeout = 1s",
                "twice the heartbeat (2s)",
            ),
            (Box::new(|c| c.queue = 10), "cluster.queue = 10", "1024 to"),
            (
                Box::new(|c| c.max_frame = 100),
                "cluster.max_frame = 100",
                "262144",
            ),
            (
                Box::new(|c| c.max_entries = 0),
                "cluster.max_entries = 0",
                "1 to",
            ),
            (
                Box::new(|c| c.listen = "10.0.0.1:0".parse().unwrap()),
                "cluster.listen",
                "port other than 0",
            ),
            (
                Box::new(|c| c.key = PathBuf::new()),
                "cluster.key",
                "PEM file",
            ),
        ];
        for (change, field, accepted) in cases {
            let mut c = example();
            change(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e} (wanted {field})");
            assert!(e.contains(accepted), "{e} (wanted {accepted})");
        }
    }

    #[test]
    fn names() {
        for ok in ["lb1", "lb-1.dc1.example", "a", "node-42"] {
            assert!(is_node_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-lb",
            "lb-",
            "lb_1",
            "lb..1",
            "1.2.3.4",
            "lb 1",
            &"a".repeat(64),
        ] {
            assert!(!is_node_name(bad), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(dur::parse("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(dur::parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(
            dur::parse("2"),
            Ok(Duration::from_secs(2)),
            "seconds, as elsewhere"
        );
        assert!(dur::parse("x1s").is_err());
        for d in [1, 999, 1000, 60_000, 90_000, 3_600_000] {
            let d = Duration::from_millis(d);
            assert_eq!(dur::parse(&dur::format(d)), Ok(d));
        }
    }
}
