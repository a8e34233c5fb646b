//! `stickylb completions SHELL` and `stickylb man`: shell completions and manual pages
//! generated from the CLI definition (so they never drift from it).

use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
};

pub use clap_complete::Shell;

/// Arguments of `stickylb completions`.
#[derive(clap::Args, Clone, Debug)]
pub struct CompletionsArgs {
    /// Shell to generate completions for.
    ///
    /// Install, e.g.: `stickylb completions bash > /etc/bash_completion.d/stickylb`,
    /// `stickylb completions zsh > "${fpath[1]}/_stickylb"`,
    /// `stickylb completions fish > ~/.config/fish/completions/stickylb.fish`.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Arguments of `stickylb man`.
#[derive(clap::Args, Clone, Debug)]
pub struct ManArgs {
    /// Write one page per command (stickylb.1, stickylb-table-show.1, …) into DIR instead of
    /// printing stickylb(1) to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Manual section of the pages: 1 (user commands) or 8 (system administration, as the
    /// Debian package installs them with the binary in /usr/sbin).
    #[arg(long, default_value = "1", value_parser = ["1", "8"])]
    pub section: String,
}

/// Writes one page per (sub)command into `dir`, in manual section `section` (what
/// `clap_mangen::generate_to` does for section 1).
fn generate_pages(cmd: clap::Command, dir: &std::path::Path, section: &str) -> io::Result<()> {
    fn each(cmd: clap::Command, dir: &std::path::Path, section: &str) -> io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            each(sub, dir, section)?;
        }
        clap_mangen::Man::new(cmd)
            .section(section)
            .generate_to(dir)?;
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    each(cmd, dir, section)
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes the top-level manual page (roff) to `out`.
pub fn write_man(cmd: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    clap_mangen::Man::new(cmd).render(out)
}

/// `stickylb completions SHELL`: prints the script to stdout.
pub fn completions(cmd: clap::Command, args: &CompletionsArgs) -> ExitCode {
    let mut buf = Vec::new();
    write_completions(cmd, args.shell, &mut buf);
    emit(&buf)
}

/// `stickylb man [--dir DIR]`: prints stickylb(1) to stdout, or writes every page to DIR.
pub fn man(cmd: clap::Command, args: &ManArgs) -> ExitCode {
    if let Some(dir) = &args.dir {
        return match std::fs::create_dir_all(dir)
            .and_then(|()| generate_pages(cmd, dir, &args.section))
        {
            Ok(()) => {
                println!("manual pages written to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: writing manual pages to {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    let mut buf = Vec::new();
    if let Err(e) = clap_mangen::Man::new(cmd)
        .section(args.section.as_str())
        .render(&mut buf)
    {
        eprintln!("error: rendering the manual page: {e}");
        return ExitCode::FAILURE;
    }
    emit(&buf)
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn emit(buf: &[u8]) -> ExitCode {
    let mut out = io::stdout().lock();
    match out.write_all(buf).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    /// A stand-in for the binary's CLI (which lives in main.rs), with the same shape.
    #[derive(Parser)]
    #[command(name = "stickylb", version, about = "Sticky XDP layer-4 load balancer")]
    struct Cli {
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        /// Show stick-table entries.
        #[command(subcommand)]
        Table(TableCmd),
        /// Manage backends.
        #[command(subcommand)]
        Backend(BackendCmd),
        Completions(CompletionsArgs),
        Man(ManArgs),
    }

    #[derive(Subcommand)]
    enum TableCmd {
        Show {
            #[arg(long)]
            limit: Option<usize>,
        },
    }

    #[derive(Subcommand)]
    enum BackendCmd {
        Weight { service: String, weight: u32 },
    }

    fn cmd() -> clap::Command {
        <Cli as clap::CommandFactory>::command()
    }

    #[test]
    fn bash_completion_knows_the_subcommands() {
        let mut buf = Vec::new();
        write_completions(cmd(), Shell::Bash, &mut buf);
        let s = String::from_utf8(buf).unwrap();
        assert!(s.contains("stickylb"), "{s}");
        assert!(s.contains("table") && s.contains("backend"), "{s}");
        assert!(s.contains("--socket") && s.contains("--limit"), "{s}");
        for shell in [Shell::Zsh, Shell::Fish] {
            let mut buf = Vec::new();
            write_completions(cmd(), shell, &mut buf);
            assert!(String::from_utf8(buf).unwrap().contains("backend"));
        }
    }

    #[test]
    fn man_page_is_roff() {
        let mut buf = Vec::new();
        write_man(cmd(), &mut buf).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert!(s.contains(".TH"), "{s}");
        assert!(s.contains("stickylb") && s.contains("table"), "{s}");
    }

    #[test]
    fn man_dir_writes_a_page_per_command() {
        let dir = std::env::temp_dir().join(format!("stickylb-man-test-{}", std::process::id()));
        let code = man(
            cmd(),
            &ManArgs {
                dir: Some(dir.clone()),
                section: "1".into(),
            },
        );
        assert_eq!(code, ExitCode::SUCCESS);
        for page in ["stickylb.1", "stickylb-table.1", "stickylb-table-show.1"] {
            let s = std::fs::read_to_string(dir.join(page)).unwrap();
            assert!(s.contains(".TH"), "{page}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        // Section 8: file names, titles and cross references.
        let code = man(
            cmd(),
            &ManArgs {
                dir: Some(dir.clone()),
                section: "8".into(),
            },
        );
        assert_eq!(code, ExitCode::SUCCESS);
        let top = std::fs::read_to_string(dir.join("stickylb.8")).unwrap();
        assert!(top.contains(".TH stickylb 8"), "{top}");
        assert!(top.contains("stickylb\\-table(8)"), "{top}");
        assert!(dir.join("stickylb-table-show.8").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
