//! stickylb userspace: loading and attaching the XDP program, turning service
//! definitions into map contents, and reading counters and the stick table back.
//!
//! - [`spec`]: services and backends as an operator describes them.
//! - [`plan`]: pure translation of specs into map entries (ids, selection tables,
//!   reply-NAT entries), with validation.
//! - [`loader`]: loads the embedded program, attaches it to interfaces.
//! - [`dataplane`]: writes a plan into the maps and reads counters / stick entries.

pub mod agent;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod decap;
pub mod extras;
pub mod health;
pub mod import;
pub mod loader;
pub mod metrics;
pub mod neigh;
pub mod offline;
pub mod persist;
pub mod pins;
pub mod plan;
pub mod spec;
pub mod top;
