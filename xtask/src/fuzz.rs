//! `cargo xtask fuzz [--packets N] [--seed S] [--threads T]`: the long data-path
//! fuzz run. Sets up, then runs the `fuzz` test of `stickylb-tests` in release mode with
//! `STICKYLB_FUZZ_*` set (see `tests/src/fuzz.rs`). Needs root: the run creates network
//! namespaces and loads XDP programs. `cargo xtask test` runs the same test, shorter
//! (1 000 000 packets, debug build).

use anyhow::Result;
use clap::Args;

use crate::{cargo, setup};

/// Arguments of `cargo xtask fuzz`.
#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// Packets to run, split over the workers.
    #[arg(long, default_value_t = 20_000_000)]
    pub packets: u64,
    /// Seed (decimal or 0x-hex); default: a fixed seed mixed with the clock, printed.
    #[arg(long)]
    pub seed: Option<String>,
    /// Workers, each with its own lab; default: the CPUs, at most 4.
    #[arg(long)]
    pub threads: Option<u32>,
}

pub fn run_with(args: &FuzzArgs) -> Result<()> {
    setup::require_root("the fuzz run creates network namespaces and loads XDP programs")?;
    setup::run()?;
    let mut cmd = cargo::pinned([
        "test",
        "--release",
        "-p",
        "stickylb-tests",
        "--test",
        "fuzz",
        "--",
        "--nocapture",
    ]);
    cmd.env("STICKYLB_FUZZ_PACKETS", args.packets.to_string());
    if let Some(seed) = &args.seed {
        cmd.env("STICKYLB_FUZZ_SEED", seed);
    }
    if let Some(t) = args.threads {
        cmd.env("STICKYLB_FUZZ_THREADS", t.to_string());
    }
    cargo::run(&mut cmd)
}
