//! stickylb's model: what the agent works with, without the kernel, the runtime or the
//! network. Everything here is pure (std, serde) and tested on the host; the agent
//! (`lb-agent`) and the cargo-fuzz targets (`fuzz/`) use it as it is.
//!
//! - [`spec`]: services and backends as the data path will see them, with the enums of
//!   the model and their one name each ([`vocab`]).
//! - [`plan`]: pure translation of specs into map entries (ids, selection tables,
//!   reply-NAT entries), with validation.
//! - [`config`]: the configuration file: the serde schema, parsing with spans and field
//!   paths, the checks that involve several fields, and the errors.
//! - [`control`]: the control protocol (requests, responses, usage) and the checks of a
//!   request against the configuration, changes made on a copy.
//! - [`import`]: HAProxy, ipvsadm and keepalived configurations translated into this
//!   model (`stickylb import`), what does not translate reported with its line.
//! - [`stats`]: the one stats schema of `stats` answers, the metrics endpoint and `top`.
//! - [`announce`]: the `[announce]` section, when a VIP is announced to the routing
//!   daemon, the drain meter, BIRD's `show protocols`, the `status` rows.
//! - [`duration`], [`clock`], [`sync`]: the one duration grammar, the clocks, the lock
//!   helper; defined in `lb-common` (behind `std`) so that `lb-cluster`, which this crate
//!   depends on, shares them too, and re-exported here.

pub mod announce;
pub mod cluster;
pub mod config;
pub mod control;
pub mod import;
pub mod plan;
pub mod spec;
pub mod stats;
pub mod vocab;

pub use lb_common::{clock, duration, sync};

#[cfg(test)]
mod refusals_tests;
