//! `cargo xtask`: developer tasks for stickylb.
//!
//! This binary is compiled by whatever toolchain `cargo` resolves to on the machine (the
//! default one, possibly older than the pinned [`cargo::toolchain`]), so it must not depend
//! on aya or on any workspace crate. Everything that builds the project goes through
//! [`cargo::pinned`], which runs `rustup run <pinned> cargo ...`.

mod agent_fuzz;
mod bench;
mod cargo;
mod demo;
mod fuzz;
mod package;
mod setup;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for stickylb"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install whatever is missing: Debian packages, the pinned toolchain, bpf-linker.
    Setup,
    /// Set up, then build the whole workspace with the pinned toolchain.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, then run the tests of the default members (needs root).
    Test {
        /// Extra arguments for `cargo test`, after `--`
        /// (e.g. `cargo xtask test -- -p lb-common -- --nocapture`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Format the workspace with the pinned rustfmt.
    Fmt,
    /// Lint the workspace with the pinned clippy, warnings denied.
    Clippy,
    /// Run the end-to-end demo: clients stay on their backend through a backend failure,
    /// its recovery and an agent restart (needs root).
    Demo(demo::Args),
    /// Run the benchmark.
    Bench(bench::BenchArgs),
    /// Fuzz the data path for long (release build, 20M packets by default; needs root).
    Fuzz(fuzz::FuzzArgs),
    /// Build the Debian package target/debian/stickylb_<version>_<arch>.deb (release
    /// binary, systemd unit, configuration, man pages, completions); --check verifies it.
    Package(package::PackageArgs),
}

fn main() -> ExitCode {
    // Print the error chain on one line, without anyhow's backtrace (RUST_BACKTRACE may
    // be set for the tests).
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Setup => setup::run(),
        Command::Build { release } => {
            setup::run()?;
            cargo::build(release)
        }
        Command::Test { args } => {
            setup::require_root("the tests create network namespaces and load XDP programs")?;
            setup::run()?;
            cargo::test(&args)
        }
        Command::Fmt => cargo::fmt(),
        Command::Clippy => cargo::clippy(),
        Command::Demo(args) => demo::run_with(&args),
        Command::Bench(args) => bench::run_with(&args),
        Command::Fuzz(args) => fuzz::run_with(&args),
        Command::Package(args) => {
            setup::run()?;
            package::run_with(&args)
        }
    }
}
