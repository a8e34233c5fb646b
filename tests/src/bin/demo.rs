//! `stickylb-demo`: the end-to-end demo behind `cargo xtask demo` (needs root).
//!
//! Builds a client namespace with many source addresses, a balancer namespace and three
//! HTTP backends that answer with their name; runs the real `stickylb run` on the
//! balancer; drives real HTTP requests from every client and shows that clients stay on
//! their backend, through a backend failure and recovery and an agent restart. Ends
//! with `SUMMARY` lines and exits 0 only if every check held. Everything it creates is
//! removed at the end, also on failure or Ctrl-C, unless `--keep` is given.
//!
//! `stickylb` is looked up as `$STICKYLB_BIN`, else next to this executable.

#[path = "../demo/http.rs"]
mod http;
#[path = "../demo/scenario.rs"]
mod scenario;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};

/// Set by SIGINT / SIGTERM; the scenario checks it between steps and stops.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The error the scenario stops with once [`INTERRUPTED`] is set.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Fails with [`Interrupted`] once a SIGINT or SIGTERM arrived.
pub fn checkpoint() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!(Interrupted);
    }
    Ok(())
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_interrupts() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// From now on SIGINT is ignored, also by the children started afterwards (cleanup).
pub fn ignore_interrupts() {
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scheduler {
    Roundrobin,
    Maglev,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Forwarding {
    Nat,
    Dsr,
}

#[derive(Parser, Debug)]
#[command(
    name = "stickylb-demo",
    about = "End-to-end demo of stickylb in network namespaces (needs root)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Number of client source addresses that take part from the start.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=scenario::MAX_CLIENTS as i64))]
    clients: u16,
    /// Scheduler of the demo service.
    #[arg(long, value_enum, default_value_t = Scheduler::Roundrobin)]
    scheduler: Scheduler,
    /// Forwarding mode of the demo service.
    #[arg(long, value_enum, default_value_t = Forwarding::Nat)]
    forwarding: Forwarding,
    /// Rounds of requests from every client at the start.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    rounds: u16,
    /// Leave the topology, the agent and the backends running, and print how to explore
    /// and remove them.
    #[arg(long)]
    keep: bool,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Serve HTTP in the current namespace, answering every request with NAME (used for
    /// the backends `--keep` leaves running).
    #[command(hide = true)]
    ServeHttp {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = scenario::PORT)]
        port: u16,
    },
}

fn value_name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::ServeHttp { name, port }) = &cli.command {
        return match http::HttpNameServer::spawn_here(*port, name) {
            Ok(_server) => loop {
                std::thread::park();
            },
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("error: the demo must run as root (it creates network namespaces and loads XDP programs)");
        return ExitCode::FAILURE;
    }
    if std::env::var_os("STICKYLB_BIN").is_none() {
        // target/<profile>/stickylb-demo → target/<profile>/stickylb
        if let Some(bin) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("stickylb")))
            .filter(|b| b.exists())
        {
            // Still single-threaded here.
            std::env::set_var("STICKYLB_BIN", bin);
        }
    }
    catch_interrupts();
    let opts = scenario::Opts {
        clients: cli.clients.into(),
        scheduler: value_name(&cli.scheduler),
        forwarding: value_name(&cli.forwarding),
        rounds: cli.rounds.into(),
        keep: cli.keep,
    };
    println!(
        "stickylb demo: {} clients, {} backends, scheduler {}, forwarding {}{}",
        opts.clients,
        scenario::BACKENDS,
        opts.scheduler,
        opts.forwarding,
        if opts.keep { ", --keep" } else { "" }
    );
    let started = Instant::now();
    match scenario::run(&opts) {
        Ok(report) => {
            println!();
            for line in report.summary() {
                println!("{line}");
            }
            if let Some(kept) = &report.kept {
                println!();
                print!("{}", kept.instructions());
            }
            println!();
            if report.failures.is_empty() {
                println!(
                    "demo OK in {:.1} s: every check held",
                    started.elapsed().as_secs_f64()
                );
                ExitCode::SUCCESS
            } else {
                println!(
                    "demo FAILED: {} check(s) did not hold:",
                    report.failures.len()
                );
                for f in &report.failures {
                    println!("  - {f}");
                }
                ExitCode::FAILURE
            }
        }
        Err(e) if INTERRUPTED.load(Ordering::SeqCst) => {
            if e.downcast_ref::<Interrupted>().is_some() {
                println!("demo interrupted; everything it created was removed");
            } else {
                println!("demo interrupted ({e:#}); everything it created was removed");
            }
            ExitCode::from(130)
        }
        Err(e) => {
            println!("demo FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
