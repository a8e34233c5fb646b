//! End-to-end test harness for stickylb.
//!
//! Builds throw-away networks out of Linux network namespaces and veth pairs
//! (needs root), and provides traffic endpoints running inside them:
//! * [`netns`]: the [`Netns`] guard (create, run commands, sysctls, enter);
//! * [`topology`]: client / balancer / N backends wired together ([`Topology`]);
//! * [`servers`]: [`NameServer`] and [`tcp_fetch`];
//! * [`cluster_net`]: clients, an ECMP router, N balancer nodes and backends on one LAN
//!   ([`cluster_net::ClusterNet`]), for the cluster tests.
//!
//! Every namespace is named `slb<pid>-<counter>-<tag>` and deleted by a guard's
//! `Drop`, so tests can run in parallel, re-run, and panic safely.

pub mod agent;
pub mod bgp;
pub mod cluster_net;
pub mod fuzz;
pub mod lab;
pub mod netns;
pub mod packets;
pub mod servers;
pub mod topology;

pub use netns::Netns;
pub use servers::{tcp_fetch, tcp_fetch_all, NameServer};
pub use topology::{Backend, Topology, TopologyOpts, VipPlacement, VIP_V4, VIP_V6};
