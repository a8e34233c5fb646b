//! `cargo xtask bench [--quick] [--parts 1,2,3,4,5,6]`: sets up, builds `stickylb-bench`
//! (crate `bench/`) and the `stickylb` agent (which parts 3 and 4 run) in release with the
//! pinned toolchain, and runs the benchmark. Needs root: it creates network namespaces,
//! loads XDP programs, and installs HAProxy (Debian package) for part 3 if missing.
//!
//! The benchmark prints a table and writes `target/bench/latest.{json,md,svg}` and
//! `latest-netpath.svg`; see `docs/BENCHMARKS.md`. It is not part of `cargo xtask test`
//! and never fails a test run.

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
    /// Parts to run, comma-separated: 1 per-packet cost, 2 stick-table scale, 3 network
    /// path, 4 control plane, 5 cluster replication (crate level), 6 replication through
    /// the agents' maps (default: all).
    #[arg(long)]
    pub parts: Option<String>,
}

pub fn run_with(args: &BenchArgs) -> Result<()> {
    setup::require_root("the benchmark creates a network namespace and loads XDP programs")?;
    setup::run()?;
    cargo::run(&mut cargo::pinned([
        "build",
        "--release",
        "--package",
        "stickylb-bench",
        "--package",
        "lb-agent",
        "--bins",
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
    if let Some(parts) = &args.parts {
        cmd.args(["--parts", parts]);
    }
    cargo::run(&mut cmd)
}
