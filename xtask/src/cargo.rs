//! Running cargo with the pinned toolchain (`rustup run <toolchain> cargo ...`, the
//! toolchain named in the root Cargo.toml's `[workspace.metadata.stickylb]`) from the
//! workspace root, with the outer toolchain's environment stripped.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// The toolchain the project is built, tested and linted with (aya needs rustc >= 1.98):
/// `toolchain` of `[workspace.metadata.stickylb]` in the root Cargo.toml.
pub fn toolchain() -> &'static str {
    const MANIFEST: &str = include_str!("../../Cargo.toml");
    pinned_toolchain(MANIFEST).expect("the root Cargo.toml names the toolchain")
}

/// The `toolchain = "…"` of the `[workspace.metadata.stickylb]` table of a manifest.
fn pinned_toolchain(manifest: &str) -> Option<&str> {
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[workspace.metadata.stickylb]";
        } else if let (true, Some(rest)) = (inside, line.strip_prefix("toolchain")) {
            return rest
                .trim()
                .strip_prefix('=')?
                .trim()
                .strip_prefix('"')?
                .split('"')
                .next();
        }
    }
    None
}

/// Variables set by the outer `cargo`/rustup that would pin the child to the outer
/// toolchain. `CARGO_TARGET_DIR` is deliberately kept.
const OUTER_TOOLCHAIN_VARS: &[&str] = &[
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO",
    "RUSTUP_TOOLCHAIN",
];

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// `rustup run <TOOLCHAIN> cargo <args>`, run from the workspace root with a clean
/// toolchain environment.
pub fn pinned<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain(), "cargo"])
        .args(args)
        .current_dir(workspace_root());
    for var in OUTER_TOOLCHAIN_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// Prints the command line, runs it, and fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        match status.code() {
            Some(code) => bail!("`{line}` failed with exit status {code}"),
            None => bail!("`{line}` was killed ({status})"),
        }
    }
    Ok(())
}

/// The command line as a shell-like string, for logs and error messages.
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// `cargo build --workspace [--release]`.
pub fn build(release: bool) -> Result<()> {
    let mut args = vec!["build", "--workspace"];
    if release {
        args.push("--release");
    }
    run(&mut pinned(args))
}

/// `cargo test --no-fail-fast <extra>` for the default members only: `lb-ebpf` is a
/// non-default member that must not be host-tested, so no `--workspace`. Then, without
/// `extra`, a short run of each fuzz target of the agent's inputs
/// ([`crate::agent_fuzz::agent_fuzz`], `STICKYLB_FUZZ_SECONDS` per target, 0 skips),
/// and `cargo xtask package --check` ([`crate::package`]).
pub fn test(extra: &[String]) -> Result<()> {
    // The agent and demo binaries the end-to-end tests run: `cargo test` builds a
    // package's binaries only for that package's own integration tests.
    run(&mut pinned([
        "build",
        "--bins",
        "-p",
        "lb-agent",
        "-p",
        "stickylb-tests",
    ]))?;
    let tests = run(pinned(["test", "--no-fail-fast"]).args(extra));
    let seconds = match std::env::var("STICKYLB_FUZZ_SECONDS") {
        Ok(s) => s.trim().parse().with_context(|| {
            format!("STICKYLB_FUZZ_SECONDS={s:?}: give a whole number of seconds (0 skips fuzzing)")
        })?,
        Err(_) => crate::agent_fuzz::TEST_SECONDS,
    };
    let fuzz = if !extra.is_empty() || seconds == 0 {
        println!("fuzz: skipped (extra test arguments, or STICKYLB_FUZZ_SECONDS=0)");
        Ok(())
    } else {
        crate::agent_fuzz::agent_fuzz(seconds)
    };
    // The Debian package, built and checked (release build, lintian, unpacked copy).
    let package = if extra.is_empty() {
        crate::package::run_with(&crate::package::PackageArgs { check: true })
    } else {
        println!("package check: skipped (extra test arguments)");
        Ok(())
    };
    tests.and(fuzz).and(package)
}

/// `cargo fmt --all`.
pub fn fmt() -> Result<()> {
    run(&mut pinned(["fmt", "--all"]))
}

/// `cargo clippy --workspace --all-targets -- -D warnings`.
pub fn clippy() -> Result<()> {
    run(&mut pinned([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

#[cfg(test)]
mod toolchain_tests {
    use super::*;

    #[test]
    fn the_toolchain_is_read_from_the_workspace_manifest() {
        assert!(toolchain().starts_with("1."), "{}", toolchain());
        let m =
            "[package]\ntoolchain = \"no\"\n[workspace.metadata.stickylb]\ntoolchain = \"1.2.3\"\n";
        assert_eq!(pinned_toolchain(m), Some("1.2.3"));
        assert_eq!(pinned_toolchain("[x]\ntoolchain = \"1\"\n"), None);
    }
}
