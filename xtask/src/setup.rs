//! `cargo xtask setup`: makes sure everything the project needs is installed, installing
//! only what is missing. Idempotent and quick when all is present; prints one line per
//! item (`ok` or `installing ...`).
//!
//! Items, in dependency order: Debian packages (apt), the pinned rustup toolchain and
//! its components, `bpf-linker` 0.13 built against LLVM 22 (needs `llvm-22-dev`
//! and `libzstd-dev` from the first step), and `cargo-fuzz` 0.13 (the fuzz targets of the
//! agent's inputs, run by `cargo xtask test`).

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use crate::cargo::{self, toolchain};

/// Debian packages needed to build, run and test the project.
const APT_PACKAGES: &[&str] = &[
    "build-essential",
    "pkg-config",
    "llvm-22-dev",
    "libzstd-dev",
    "iproute2",
    "ethtool",
    "nftables",
    "curl",
    // The importer's tests compare with the real HAProxy (`haproxy -c`, side by side in
    // namespaces); `cargo xtask package --check` needs the Debian packaging tools.
    "haproxy",
    "dpkg-dev",
    "lintian",
    "systemd",
    // The cluster's routing daemon (issue 13): BIRD 2 on every node and on the test
    // router (`tests/tests/announce.rs`, `cargo xtask demo --cluster`).
    "bird2",
];

/// Components of the pinned toolchain.
const COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];

/// bpf-linker release series, and the LLVM it is built against.
const BPF_LINKER_SERIES: &str = "0.13";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

pub fn run() -> Result<()> {
    apt_packages()?;
    install_toolchain()?;
    components()?;
    bpf_linker()?;
    cargo_fuzz()?;
    Ok(())
}

/// Fails with a clear message unless running as root; `why` says what needs it.
pub fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root: {why} (try `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

fn ok(item: &str) {
    println!("{item:<24} ok");
}

fn installing(item: &str) {
    println!("{item:<24} installing ...");
}

/// Runs a command for its stdout; `None` if it cannot be started or fails.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_packages() -> Result<()> {
    // One dpkg-query for all packages; it exits non-zero if any is unknown, but still
    // prints the ones it knows, so read stdout regardless of the status.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(APT_PACKAGES)
        .stderr(Stdio::null())
        .output()
        .context("cannot run dpkg-query (is this a Debian-based system?)")?;
    let status = String::from_utf8_lossy(&out.stdout);
    let installed = |pkg: &str| {
        status.lines().any(|line| {
            line.split_once(' ')
                .is_some_and(|(name, st)| name == pkg && st.ends_with(" installed"))
        })
    };
    let mut missing = Vec::new();
    for pkg in APT_PACKAGES {
        if installed(pkg) {
            ok(pkg);
        } else {
            installing(pkg);
            missing.push(*pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    require_root(&format!(
        "apt-get must install {} (or install them yourself: `sudo apt-get install -y {}`)",
        missing.join(", "),
        missing.join(" ")
    ))?;
    cargo::run(apt().arg("update"))?;
    cargo::run(apt().args(["install", "-y"]).args(&missing))
        .context("apt-get install failed (llvm-22-dev comes from apt.llvm.org; is it configured?)")
}

fn apt() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn require_rustup() -> Result<()> {
    if output(Command::new("rustup").arg("--version")).is_none() {
        bail!("rustup not found: install it from https://rustup.rs and make sure it is on PATH");
    }
    Ok(())
}

fn install_toolchain() -> Result<()> {
    let pinned = toolchain();
    require_rustup()?;
    let list = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed")?;
    // Lines look like `1.98.0-x86_64-unknown-linux-gnu (default)`.
    let prefix = format!("{pinned}-");
    let present = list.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or("");
        name == pinned || name.starts_with(&prefix)
    });
    let item = format!("toolchain {pinned}");
    if present {
        ok(&item);
        return Ok(());
    }
    installing(&item);
    cargo::run(Command::new("rustup").args([
        "toolchain",
        "install",
        pinned,
        "--profile",
        "minimal",
        "--component",
        &COMPONENTS.join(","),
    ]))
}

fn components() -> Result<()> {
    let list = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain(),
        "--installed",
    ]))
    .context("`rustup component list` failed")?;
    // Lines are `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    let installed = |c: &str| {
        list.lines()
            .map(str::trim)
            .any(|line| line == c || line.strip_prefix(c).is_some_and(|r| r.starts_with('-')))
    };
    let mut missing = Vec::new();
    for c in COMPONENTS {
        if installed(c) {
            ok(c);
        } else {
            installing(c);
            missing.push(*c);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    cargo::run(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", toolchain()])
            .args(&missing),
    )
}

/// The installed bpf-linker version (`bpf-linker 0.13.0` -> `0.13.0`), if any.
fn bpf_linker_version() -> Option<String> {
    let out = output(Command::new("bpf-linker").arg("--version"))?;
    out.split_whitespace().nth(1).map(str::to_owned)
}

fn bpf_linker() -> Result<()> {
    let series = format!("{BPF_LINKER_SERIES}.");
    let version = bpf_linker_version();
    if version.as_deref().is_some_and(|v| v.starts_with(&series)) {
        ok("bpf-linker");
        return Ok(());
    }
    match &version {
        Some(v) => println!("{:<24} installing ... (found {v})", "bpf-linker"),
        None => installing("bpf-linker"),
    }
    let mut cmd = cargo::pinned([
        "install",
        "bpf-linker",
        "--version",
        &format!("^{BPF_LINKER_SERIES}"),
        "--no-default-features",
        "--features",
        BPF_LINKER_LLVM_FEATURE,
        "--force",
    ]);
    cmd.env("LLVM_PREFIX", LLVM_PREFIX);
    cargo::run(&mut cmd)?;
    match bpf_linker_version() {
        Some(v) if v.starts_with(&series) => Ok(()),
        Some(v) => bail!("bpf-linker {v} is first on PATH, but {BPF_LINKER_SERIES}.x is needed"),
        None => bail!(
            "bpf-linker was installed but is not on PATH: add $CARGO_HOME/bin (~/.cargo/bin) to PATH"
        ),
    }
}

/// cargo-fuzz series installed when `cargo fuzz` is missing.
const CARGO_FUZZ_SERIES: &str = "0.13";

fn cargo_fuzz() -> Result<()> {
    // Any working cargo-fuzz will do; only a missing one is installed.
    if let Some(v) = output(Command::new("cargo").args(["fuzz", "--version"])) {
        println!("{:<24} ok ({})", "cargo-fuzz", v.trim());
        return Ok(());
    }
    installing("cargo-fuzz");
    cargo::run(&mut cargo::pinned([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        &format!("^{CARGO_FUZZ_SERIES}"),
    ]))?;
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        bail!(
            "cargo-fuzz was installed but `cargo fuzz` does not run: add $CARGO_HOME/bin (~/.cargo/bin) to PATH"
        );
    }
    Ok(())
}
