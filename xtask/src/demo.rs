//! `cargo xtask demo`: the end-to-end demo. Placeholder until it lands; it already sets
//! up and builds so the entry point behaves like the final one up to the demo itself.

use anyhow::Result;

use crate::{cargo, setup};

/// Issue the demo lands with.
const ISSUE: &str = "N";

pub fn run() -> Result<()> {
    setup::run()?;
    cargo::build(false)?;
    eprintln!("not implemented yet: lands with issue {ISSUE}");
    std::process::exit(1);
}
