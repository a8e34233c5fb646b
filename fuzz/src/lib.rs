//! The agent's input parsers, compiled from lb-userspace's own source files so that the
//! fuzz build needs neither the eBPF object nor the agent's runtime (aya, tokio, the TUI):
//! an instrumented build of those takes minutes; of these modules, seconds.
//!
//! These files may use only each other, `lb_common`, serde, serde_json, thiserror,
//! toml_edit and toml; `cargo xtask test` builds this crate, so a new dependency shows up
//! there.

#[path = "../../lb-userspace/src/config.rs"]
pub mod config;
#[path = "../../lb-userspace/src/control.rs"]
pub mod control;
#[path = "../../lb-userspace/src/import/mod.rs"]
pub mod import;
#[path = "../../lb-userspace/src/plan.rs"]
pub mod plan;
#[path = "../../lb-userspace/src/spec.rs"]
pub mod spec;
