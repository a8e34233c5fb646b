//! The two clocks of replication, under the names this crate uses; both are
//! `lb_common::clock`'s, the project's one set of clocks.
//!
//! - [`mono_ms`] / [`mono_ns`]: `CLOCK_MONOTONIC_COARSE`, the data path's clock. Last-seen
//!   times are kept in it, so a last-seen read from the stick table and one computed here
//!   compare directly. It is node-local: on the wire only ages (now − last seen) travel.
//! - [`wall_ms`]: `CLOCK_REALTIME` in milliseconds, for pick stamps (see
//!   `store::Stamp`). Stamps only have to be comparable, not exact: a skewed clock makes
//!   a node win or lose ties, never makes nodes disagree on the winner.

pub use lb_common::clock::{monotonic_ms as mono_ms, monotonic_ns as mono_ns, unix_ms as wall_ms};
