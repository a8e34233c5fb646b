//! Stick-table replication between stickylb nodes (no aya, no kernel: this crate is the
//! network side; the agent connects it to its maps).
//!
//! A cluster of balancers behind ECMP must agree on each client's backend, or a client
//! whose connections land on different nodes, or whose node is lost, moves. Every node
//! pushes the entries its data path decides to every peer over mutual TLS, a peer that
//! (re)connects first receives the whole table ("teach", as HAProxy's peers do), and
//! competing values of one entry are decided by a rule every node evaluates the same way.
//!
//! - [`identity`]: services, backends and clients by what they are, never by node-local
//!   ids.
//! - [`catalog`]: what this node serves ([`ServiceDef`]) and its digest.
//! - [`store`]: the replicated table, the rule between two values, the per-peer queues
//!   (pure, host-tested).
//! - [`wire`]: frames and messages (postcard in length-delimited frames) and the
//!   receiving state machine (what the fuzz target drives).
//! - `tls`: mutual TLS with a cluster CA on rustls.
//! - [`config`]: the `[cluster]` section and its validation.
//! - `node`: the running replication (`Cluster`) and what the agent plugs in (`Sink`);
//!   with `tls`, behind the default `runtime` feature (the fuzz target builds without).
//! - [`status`]: what `stickylb peers` shows.
//! - [`clock`]: the monotonic (data-path) and wall clocks.
//!
//! The agent's side, in short: give `Cluster::start` the `[cluster]` config, the
//! service definitions and a `Sink` that writes entries into the stick table; feed
//! `Cluster::observe` with the data path's events and a periodic scan of the table
//! (writing back what it returns); read `Cluster::status` and
//! `Cluster::subscribe_synced`. docs/CLUSTER.md has the whole design.

pub mod catalog;
pub mod clock;
pub mod config;
pub mod identity;
#[cfg(feature = "runtime")]
pub mod node;
pub mod status;
pub mod store;
#[cfg(feature = "runtime")]
pub mod tls;
pub mod wire;

pub use catalog::{BackendDef, ServiceDef};
pub use config::{ClusterConfig, PeerConfig};
pub use identity::{BackendKey, ClientKey, Proto, ServiceKey};
#[cfg(feature = "runtime")]
pub use node::{Cluster, Sink};
pub use status::{ClusterStatus, PeerStatus};
pub use store::{Applied, Observed, ObservedKind};
