//! What this node serves, as replication needs it: each service by identity with its
//! expiry (how long an entry lives, and so how often a refresh must reach the peers) and
//! its backends by identity, plus the digest that tells two nodes whether they agree.
//!
//! The agent hands the crate a [`ServiceDef`] per service at start and on every reload.
//! Nodes are meant to share their service definitions (each has its own config file, as
//! with HAProxy); [`digest`] is exchanged in the hello so that a peer whose services
//! differ is reported, and entries naming a service or backend this node does not have
//! are ignored and counted (`unknown_service`, `unknown_backend`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::{BackendKey, ServiceKey};

/// One service as replication sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDef {
    pub key: ServiceKey,
    /// Stick-table expiry since last seen; `None` = entries never expire.
    pub expire: Option<Duration>,
    /// How an unpinned client is picked, as the agent spells it (for example
    /// `"maglev 65537"` or `"roundrobin"`): part of the digest, since nodes that pick
    /// differently disagree on every client replication has not reached yet.
    pub scheduler: String,
    pub backends: Vec<BackendDef>,
}

/// One backend of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendDef {
    pub key: BackendKey,
    pub weight: u32,
}

impl ServiceDef {
    /// How stale a replicated last-seen may get before this node sends a refresh: a
    /// quarter of the expiry (at least 100 ms), so an entry active on one node never
    /// expires on its peers; `None` for entries that never expire (no refresh needed).
    pub fn refresh_interval(&self) -> Option<Duration> {
        self.expire.map(|e| (e / 4).max(Duration::from_millis(100)))
    }
}

/// SHA-256 over the canonical form of the definitions: sorted by service, backends
/// sorted, encoded with postcard. Equal on two nodes exactly when they define the same
/// services with the same backends, weights, expiry and scheduler, whatever the order.
pub fn digest(defs: &[ServiceDef]) -> [u8; 32] {
    let mut sorted: Vec<ServiceDef> = defs.to_vec();
    for d in &mut sorted {
        d.backends
            .sort_by(|a, b| a.key.cmp(&b.key).then(a.weight.cmp(&b.weight)));
    }
    sorted.sort_by_key(|d| d.key);
    let bytes = postcard::to_stdvec(&sorted).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The first 6 bytes of a digest in hex, for status and logs.
pub fn short_digest(d: &[u8; 32]) -> String {
    d[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Proto;

    fn def(port: u16, backends: &[(&str, u32)]) -> ServiceDef {
        ServiceDef {
            key: ServiceKey {
                vip: "10.0.0.100".parse().unwrap(),
                port,
                proto: Proto::Tcp,
            },
            expire: Some(Duration::from_secs(1800)),
            scheduler: "maglev 65537".into(),
            backends: backends
                .iter()
                .map(|(a, w)| BackendDef {
                    key: BackendKey {
                        addr: a.parse().unwrap(),
                        port: 8080,
                    },
                    weight: *w,
                })
                .collect(),
        }
    }

    #[test]
    fn digest_ignores_order_and_sees_changes() {
        let a = vec![def(80, &[("10.0.1.2", 1), ("10.0.1.3", 1)]), def(443, &[])];
        let b = vec![def(443, &[]), def(80, &[("10.0.1.3", 1), ("10.0.1.2", 1)])];
        assert_eq!(digest(&a), digest(&b));
        let c = vec![def(80, &[("10.0.1.2", 2), ("10.0.1.3", 1)]), def(443, &[])];
        assert_ne!(digest(&a), digest(&c), "a weight differs");
        let mut d = a.clone();
        d[0].scheduler = "roundrobin".into();
        assert_ne!(digest(&a), digest(&d), "the scheduler differs");
        assert_eq!(short_digest(&digest(&a)).len(), 12);
    }

    #[test]
    fn refresh_is_a_quarter_of_expiry() {
        let mut d = def(80, &[]);
        assert_eq!(d.refresh_interval(), Some(Duration::from_secs(450)));
        d.expire = Some(Duration::from_millis(200));
        assert_eq!(d.refresh_interval(), Some(Duration::from_millis(100)));
        d.expire = None;
        assert_eq!(d.refresh_interval(), None);
    }
}
