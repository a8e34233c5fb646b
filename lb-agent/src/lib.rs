//! stickylb's agent and CLI: loading and attaching the XDP program, turning the model's
//! configuration into map contents, health checks, the control socket, metrics and `top`.
//! The model itself (services, config schema, plan, control protocol, stats schema) is the
//! pure crate `lb-model`.
//!
//! - [`agent`]: `stickylb run`: state, the control requests' answers, attaching, the
//!   neighbours the data path needs, the run loop.
//! - [`announce`]: VIPs assigned for the routing daemon to announce, draining.
//! - [`loader`], [`pins`]: the embedded program, its maps pinned in bpffs, attaching.
//! - [`dataplane`]: writes a plan into the maps and reads counters / stick entries.
//! - [`bpf_batch`]: the raw `bpf(2)` batch and test-run commands aya does not offer.
//! - [`decap`]: `stickylb decap`, the backends' side of L3 DSR (`ipip`, `gue`).
//! - [`event_ring`]: the data path's stick-table events, read through `mmap`.
//! - [`health`]: active health checks (TCP, HTTP on hyper, HTTPS on rustls).
//! - [`control`]: the control socket's client.
//! - [`metrics`]: the Prometheus endpoint.
//! - [`top`]: `stickylb top`.
//! - [`persist`]: runtime changes saved across restarts.
//! - [`offline`]: `stickylb check` and `stickylb import` (no agent, no kernel).
//! - [`exit`], [`extras`]: the CLI's exit codes, completions and manual pages.

pub mod agent;
pub mod announce;
pub mod bpf_batch;
pub mod control;
pub mod dataplane;
pub mod decap;
pub mod event_ring;
pub mod exit;
pub mod extras;
pub mod health;
pub mod loader;
pub mod metrics;
pub mod offline;
pub mod persist;
pub mod pins;
pub mod top;
