//! `cargo xtask bench`: the benchmark. Placeholder until it lands; it already sets up
//! and builds so the entry point behaves like the final one up to the benchmark itself.

use anyhow::Result;

use crate::{cargo, setup};

/// Issue the benchmark lands with.
const ISSUE: &str = "N";

pub fn run() -> Result<()> {
    setup::run()?;
    cargo::build(true)?;
    eprintln!("not implemented yet: lands with issue {ISSUE}");
    std::process::exit(1);
}
