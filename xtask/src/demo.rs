//! `cargo xtask demo`: sets up, builds the workspace with the pinned toolchain, then runs
//! the demo, the `stickylb-demo` binary of the tests crate (`tests/src/bin/demo.rs`), with
//! `STICKYLB_BIN` pointing at the `stickylb` just built.
//!
//! `--cluster` runs `stickylb-demo-cluster` (`tests/src/bin/demo_cluster.rs`) instead: the
//! ECMP cluster behind BIRD 2 (issue 13).
//!
//! The demo itself prints its progress and a `SUMMARY` block, cleans up after itself
//! (also on Ctrl-C) and exits non-zero unless every check held.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{cargo, setup};

/// Most `--clients` (the demo's own limit: 200 topology addresses, some kept for later).
const MAX_CLIENTS: i64 = 180;

/// Options of `cargo xtask demo`, forwarded to `stickylb-demo` (which has the defaults).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Number of client source addresses [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=MAX_CLIENTS))]
    pub clients: Option<u16>,
    /// Scheduler of the demo service [default: roundrobin].
    #[arg(long, value_parser = ["roundrobin", "maglev"])]
    pub scheduler: Option<String>,
    /// Forwarding mode of the demo service [default: nat].
    #[arg(long, value_parser = ["nat", "dsr"])]
    pub forwarding: Option<String>,
    /// Leave the topology, agent and backends running and print how to explore them.
    #[arg(long)]
    pub keep: bool,
    /// The cluster demo instead: an ECMP router and three nodes running BIRD 2 and
    /// stickylb (announce, drain, replication); a node killed, one drained, one added,
    /// failover figures with BFD and with the hold timer (`stickylb-demo-cluster`).
    #[arg(long, conflicts_with_all = ["scheduler", "forwarding", "keep"])]
    pub cluster: bool,
    /// More arguments for `stickylb-demo`, after `--` (see `stickylb-demo --help`).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

impl Args {
    /// The command line of `stickylb-demo`.
    fn demo_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(n) = self.clients {
            v.extend(["--clients".to_owned(), n.to_string()]);
        }
        if let Some(s) = &self.scheduler {
            v.extend(["--scheduler".to_owned(), s.clone()]);
        }
        if let Some(f) = &self.forwarding {
            v.extend(["--forwarding".to_owned(), f.clone()]);
        }
        if self.keep {
            v.push("--keep".to_owned());
        }
        v.extend(self.extra.iter().cloned());
        v
    }
}

/// Sets up, builds, runs the demo with `args`.
pub fn run_with(args: &Args) -> Result<()> {
    setup::require_root("the demo creates network namespaces and loads XDP programs")?;
    setup::run()?;
    // Only what the demo runs: the agent and the demo binary.
    cargo::run(&mut cargo::pinned([
        "build",
        "-p",
        "lb-agent",
        "-p",
        "stickylb-tests",
        "--bins",
    ]))?;
    let bin_dir = target_dir().join("debug");
    let demo = bin_dir.join(if args.cluster {
        "stickylb-demo-cluster"
    } else {
        "stickylb-demo"
    });
    if !demo.exists() {
        bail!("{} was not built", demo.display());
    }
    let mut cmd = Command::new(&demo);
    cmd.args(args.demo_args())
        .env("STICKYLB_BIN", bin_dir.join("stickylb"));
    let line = cargo::display(&cmd);
    println!("+ {line}");
    // Ctrl-C reaches the demo too (same process group): let it clean up and report
    // instead of returning to the shell under it. A handler, unlike SIG_IGN, is reset
    // to the default in the child on exec.
    catch_sigint();
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(130) => bail!("the demo was interrupted"),
        Some(code) => bail!("the demo failed (exit status {code})"),
        None => bail!("the demo was killed ({status})"),
    }
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR` (relative to the workspace
/// root, where the pinned cargo runs) or `<workspace>/target`.
fn target_dir() -> PathBuf {
    let root = cargo::workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

extern "C" fn on_sigint(_: libc::c_int) {}

fn catch_sigint() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler does nothing, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Args;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn demo_args(argv: &[&str]) -> Vec<String> {
        let argv = std::iter::once("demo").chain(argv.iter().copied());
        Cli::try_parse_from(argv).unwrap().args.demo_args()
    }

    #[test]
    fn options_are_forwarded_and_only_when_given() {
        assert!(demo_args(&[]).is_empty());
        assert_eq!(
            demo_args(&[
                "--clients",
                "20",
                "--forwarding",
                "dsr",
                "--scheduler",
                "maglev",
                "--keep"
            ]),
            [
                "--clients",
                "20",
                "--scheduler",
                "maglev",
                "--forwarding",
                "dsr",
                "--keep"
            ]
        );
        assert_eq!(demo_args(&["--", "--rounds", "3"]), ["--rounds", "3"]);
        assert_eq!(
            demo_args(&["--cluster", "--clients", "50"]),
            ["--clients", "50"]
        );
    }

    #[test]
    fn bad_values_are_refused_before_building() {
        for bad in [
            &["--clients", "0"][..],
            &["--clients", "500"],
            &["--scheduler", "leastconn"],
            &["--forwarding", "tunnel"],
            &["--cluster", "--keep"],
        ] {
            let argv = std::iter::once("demo").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
