//! `cargo xtask bench [--quick]`: sets up, builds `stickylb-bench` (crate `bench/`) in
//! release with the pinned toolchain, and runs it. Needs root: the benchmark creates a
//! network namespace and loads XDP programs.
//!
//! The benchmark prints a table and writes `target/bench/latest.{json,md,svg}`; see
//! `docs/BENCHMARKS.md`. It is not part of `cargo xtask test` and never fails a test run.

use anyhow::Result;
use clap::Args;

use crate::{cargo, setup};

/// Arguments of `cargo xtask bench`.
#[derive(Args, Debug, Default)]
pub struct BenchArgs {
    /// Short run (under 3 minutes): 100 000 packets per case, median of 3, stick tables
    /// of 1k and 100k entries only.
    #[arg(long)]
    pub quick: bool,
}

pub fn run_with(args: &BenchArgs) -> Result<()> {
    setup::require_root("the benchmark creates a network namespace and loads XDP programs")?;
    setup::run()?;
    cargo::run(&mut cargo::pinned([
        "build",
        "--release",
        "--package",
        "stickylb-bench",
    ]))?;
    let mut cmd = cargo::pinned([
        "run",
        "--quiet",
        "--release",
        "--package",
        "stickylb-bench",
        "--",
    ]);
    if args.quick {
        cmd.arg("--quick");
    }
    cargo::run(&mut cmd)
}
