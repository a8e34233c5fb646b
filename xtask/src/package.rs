//! `cargo xtask package [--check]`: the Debian package `target/debian/stickylb_<v>_<arch>.deb`.
//!
//! Built with the Debian tools themselves (`dpkg-deb`, `dpkg-shlibdeps`, `gzip -9n`,
//! `strip`), not cargo-deb: they are already on every Debian machine (dpkg, dpkg-dev from
//! build-essential), cost no build time, and leave nothing to guess about the result.
//! The package holds:
//!
//! | path | what |
//! |---|---|
//! | `/usr/sbin/stickylb` | the release binary, stripped |
//! | `/lib/systemd/system/stickylb.service` | `dist/stickylb.service` (not enabled on install) |
//! | `/etc/stickylb/stickylb.toml` | conffile: `dist/stickylb.toml`, no services until edited |
//! | `/etc/default/stickylb` | conffile: `dist/stickylb.default`, the `--iface` options |
//! | `/usr/share/man/man8/stickylb*.8.gz` | `stickylb man --section 8 --dir` (the binary is in sbin) |
//! | `/usr/share/bash-completion/completions/stickylb`, zsh, fish | `stickylb completions` |
//! | `/usr/share/doc/stickylb/` | copyright, changelog, README and docs, examples |
//! | `/usr/share/stickylb/grafana/stickylb.json` | the Grafana dashboard |
//!
//! `Depends` comes from `dpkg-shlibdeps` on the binary. The service is not enabled or
//! started on install (the interfaces and services must be configured first), so the
//! package has no maintainer scripts.
//!
//! `--check` then verifies the result: control fields, the list of contents with modes
//! and owners, the conffiles, `lintian` (no error or warning may remain; see
//! docs/OPERATIONS.md for the tags that are explained rather than fixed), an unpacked copy
//! (`dpkg -x` into a scratch root) whose binary answers `--version` and validates the
//! packaged configurations, and `systemd-analyze verify` of the unit (with the unpacked
//! binary standing in for /usr/sbin/stickylb).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::cargo::{self, workspace_root};

/// `cargo xtask package`.
#[derive(clap::Args, Debug, Default)]
pub struct PackageArgs {
    /// After building, check the package: contents, lintian, an unpacked copy runs.
    #[arg(long)]
    pub check: bool,
}

const NAME: &str = "stickylb";
/// Debian revision of the package.
const REVISION: &str = "1";
/// Default maintainer (DEBFULLNAME / DEBEMAIL override it, as for dch).
const MAINTAINER: &str = "stickylb developers <stickylb-dev@lists.example.org>";

const DESCRIPTION: &str = "sticky XDP layer-4 load balancer
 stickylb balances TCP and UDP services in the Linux kernel with XDP and pins
 every client, by source IP address, to one backend, like HAProxy's
 \"stick on src\" or IPVS persistence, without a proxy in the path.
 .
 Clients stay on their backend across agent restarts and reloads (the stick
 table is pinned in the kernel), and are re-picked only when their backend
 fails. It offers weighted round-robin and Maglev scheduling, NAT and
 direct server return, TCP and HTTP health checks, a control socket,
 Prometheus metrics, and importers for HAProxy, ipvsadm and keepalived
 configurations.";

/// The docs shipped in /usr/share/doc/stickylb (compressed, as policy asks above 4 kB).
const DOCS: &[&str] = &[
    "README.md",
    "docs/CONFIG.md",
    "docs/CONTROL.md",
    "docs/OPERATIONS.md",
    "docs/SECURITY.md",
];

pub fn run_with(args: &PackageArgs) -> Result<()> {
    let deb = build()?;
    if args.check {
        check(&deb)?;
    }
    println!("package: {}", deb.display());
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let line = cargo::display(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn architecture() -> Result<String> {
    Ok(output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string())
}

/// The version: the workspace's (xtask shares it), plus the Debian revision.
fn version() -> String {
    format!("{}-{REVISION}", env!("CARGO_PKG_VERSION"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `gzip -9n` (no name or time stamp: reproducible), as dh_compress does.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start gzip")?;
    child.stdin.take().unwrap().write_all(bytes)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "gzip failed");
    Ok(out.stdout)
}

/// Seconds since the epoch of the last commit (SOURCE_DATE_EPOCH wins), for the
/// changelog date: the same tree gives the same package.
fn source_date() -> Result<String> {
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(e) => e,
        Err(_) => output(
            Command::new("git")
                .args(["log", "-1", "--format=%ct"])
                .current_dir(workspace_root()),
        )
        .unwrap_or_else(|_| "0".into())
        .trim()
        .to_string(),
    };
    Ok(
        output(Command::new("date").args(["-u", "-R", "-d", &format!("@{epoch}")]))?
            .trim()
            .to_string(),
    )
}

fn maintainer() -> String {
    match (std::env::var("DEBFULLNAME"), std::env::var("DEBEMAIL")) {
        (Ok(n), Ok(e)) if !n.trim().is_empty() && !e.trim().is_empty() => {
            format!("{} <{}>", n.trim(), e.trim())
        }
        _ => MAINTAINER.to_string(),
    }
}

/// `FIRST-LAST` years of the git history (the source date's year without git).
fn copyright_years() -> String {
    let git = |args: &[&str]| {
        output(Command::new("git").args(args).current_dir(workspace_root()))
            .ok()
            .and_then(|o| o.lines().next().map(|l| l.trim().to_string()))
            .filter(|y| y.len() == 4)
    };
    let last = git(&["log", "-1", "--format=%cd", "--date=format:%Y"]);
    let first = git(&["log", "--reverse", "--format=%cd", "--date=format:%Y"]);
    match (first, last) {
        (Some(f), Some(l)) if f != l => format!("{f}-{l}"),
        (_, Some(l)) => l,
        _ => source_date()
            .ok()
            .and_then(|d| d.split_whitespace().nth(3).map(str::to_string))
            .unwrap_or_else(|| "1970".into()),
    }
}

fn copyright() -> String {
    let mit = "Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the \"Software\"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.";
    let years = copyright_years();
    let mit: String = mit
        .lines()
        .map(|l| {
            if l.is_empty() {
                " .\n".to_string()
            } else {
                format!(" {l}\n")
            }
        })
        .collect();
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: stickylb
Comment: The binary also contains the Rust crates it is built from (see Cargo.lock
 in the source tree), under their own licenses, all compatible with the below.

Files: *
Copyright: {years} the stickylb contributors
License: MIT or Apache-2.0

License: MIT
{mit}
License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the \"License\"); you may not
 use this file except in compliance with the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0 can
 be found in \"/usr/share/common-licenses/Apache-2.0\".
"
    )
}

/// Builds the release binary and the package; returns the `.deb`.
fn build() -> Result<PathBuf> {
    let root = workspace_root();
    cargo::run(&mut cargo::pinned([
        "build",
        "--release",
        "-p",
        "lb-agent",
        "--bin",
        NAME,
    ]))?;
    let target = target_dir();
    let bin = target.join("release").join(NAME);
    let arch = architecture()?;
    let version = version();
    let out_dir = target.join("debian");
    let stage = out_dir.join(format!("{NAME}_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(&stage)?;

    // The binary, stripped as dh_strip does.
    let sbin = stage.join("usr/sbin").join(NAME);
    write(
        &sbin,
        &fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?,
        0o755,
    )?;
    output(
        Command::new("strip")
            .args([
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
            ])
            .arg(&sbin),
    )?;

    // Man pages and completions, generated by the binary from its own CLI.
    let man_tmp = out_dir.join("man");
    if man_tmp.exists() {
        fs::remove_dir_all(&man_tmp)?;
    }
    output(
        Command::new(&bin)
            .arg("man")
            .arg("--section")
            .arg("8")
            .arg("--dir")
            .arg(&man_tmp),
    )?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man_tmp)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    ensure!(!pages.is_empty(), "stickylb man --dir wrote no pages");
    for page in pages {
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        write(
            &stage.join("usr/share/man/man8").join(format!("{name}.gz")),
            &gzip(&fs::read(&page)?)?,
            0o644,
        )?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/stickylb"),
        ("zsh", "usr/share/zsh/vendor-completions/_stickylb"),
        ("fish", "usr/share/fish/vendor_completions.d/stickylb.fish"),
    ] {
        let script = output(Command::new(&bin).args(["completions", shell]))?;
        write(&stage.join(path), script.as_bytes(), 0o644)?;
    }

    // Unit, conffiles, dashboard.
    let copy = |from: &str, to: &str, mode: u32| -> Result<()> {
        write(
            &stage.join(to),
            &fs::read(root.join(from)).with_context(|| format!("reading {from}"))?,
            mode,
        )
    };
    copy(
        "dist/stickylb.service",
        "lib/systemd/system/stickylb.service",
        0o644,
    )?;
    copy("dist/stickylb.toml", "etc/stickylb/stickylb.toml", 0o644)?;
    copy("dist/stickylb.default", "etc/default/stickylb", 0o644)?;
    copy(
        "dist/grafana/stickylb.json",
        "usr/share/stickylb/grafana/stickylb.json",
        0o644,
    )?;

    // Documentation.
    let doc = stage.join("usr/share/doc").join(NAME);
    write(&doc.join("copyright"), copyright().as_bytes(), 0o644)?;
    let changelog = format!(
        "{NAME} ({version}) unstable; urgency=medium\n\n  * Built from the stickylb source tree by `cargo xtask package`.\n\n -- {}  {}\n",
        maintainer(),
        source_date()?
    );
    write(
        &doc.join("changelog.Debian.gz"),
        &gzip(changelog.as_bytes())?,
        0o644,
    )?;
    for d in DOCS {
        let name = Path::new(d)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        write(
            &doc.join(format!("{name}.gz")),
            &gzip(&fs::read(root.join(d))?)?,
            0o644,
        )?;
    }
    copy(
        "examples/stickylb.toml",
        "usr/share/doc/stickylb/examples/stickylb.toml",
        0o644,
    )?;

    // Control files.
    let shlibs = shlibs_depends(&out_dir, &sbin)?;
    let installed_kb = output(
        Command::new("du")
            .args(["-sk", "--apparent-size"])
            .arg(&stage),
    )?
    .split_whitespace()
    .next()
    .unwrap_or("0")
    .to_string();
    let control = format!(
        "Package: {NAME}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {}\n\
         Installed-Size: {installed_kb}\nDepends: {shlibs}\nSuggests: prometheus\n\
         Section: net\nPriority: optional\nDescription: {DESCRIPTION}\n",
        maintainer()
    );
    let debian = stage.join("DEBIAN");
    write(&debian.join("control"), control.as_bytes(), 0o644)?;
    write(
        &debian.join("conffiles"),
        b"/etc/default/stickylb\n/etc/stickylb/stickylb.toml\n",
        0o644,
    )?;
    let mut files = Vec::new();
    collect_files(&stage, &stage, &mut files)?;
    files.retain(|f| !f.starts_with("DEBIAN/"));
    files.sort();
    let sums = output(Command::new("md5sum").args(&files).current_dir(&stage))?;
    write(&debian.join("md5sums"), sums.as_bytes(), 0o644)?;
    normalise_dirs(&stage)?;

    let deb = out_dir.join(format!("{NAME}_{version}_{arch}.deb"));
    let _ = fs::remove_file(&deb);
    output(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// `Depends` for the binary, from dpkg-shlibdeps (it wants a `debian/control` to read).
fn shlibs_depends(out_dir: &Path, bin: &Path) -> Result<String> {
    let dir = out_dir.join("shlibdeps");
    write(
        &dir.join("debian/control"),
        format!("Source: {NAME}\n\nPackage: {NAME}\nArchitecture: any\n").as_bytes(),
        0o644,
    )?;
    let out = output(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(format!("-e{}", bin.display()))
            .current_dir(&dir),
    )?;
    let deps = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?
        .trim()
        .to_string();
    ensure!(
        deps.contains("libc6"),
        "dpkg-shlibdeps found no libc6 dependency: {deps}"
    );
    Ok(deps)
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect_files(root, &p, out)?;
        } else {
            out.push(p.strip_prefix(root)?.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Directories 0755, whatever the umask.
fn normalise_dirs(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            normalise_dirs(&p)?;
        }
    }
    Ok(())
}

/// What the package must hold (path, mode as `dpkg-deb --contents` prints it).
const EXPECTED: &[(&str, &str)] = &[
    ("./usr/sbin/stickylb", "-rwxr-xr-x"),
    ("./lib/systemd/system/stickylb.service", "-rw-r--r--"),
    ("./etc/stickylb/stickylb.toml", "-rw-r--r--"),
    ("./etc/default/stickylb", "-rw-r--r--"),
    ("./usr/share/man/man8/stickylb.8.gz", "-rw-r--r--"),
    ("./usr/share/man/man8/stickylb-run.8.gz", "-rw-r--r--"),
    ("./usr/share/man/man8/stickylb-check.8.gz", "-rw-r--r--"),
    ("./usr/share/man/man8/stickylb-import.8.gz", "-rw-r--r--"),
    (
        "./usr/share/man/man8/stickylb-table-show.8.gz",
        "-rw-r--r--",
    ),
    (
        "./usr/share/bash-completion/completions/stickylb",
        "-rw-r--r--",
    ),
    ("./usr/share/zsh/vendor-completions/_stickylb", "-rw-r--r--"),
    (
        "./usr/share/fish/vendor_completions.d/stickylb.fish",
        "-rw-r--r--",
    ),
    ("./usr/share/doc/stickylb/copyright", "-rw-r--r--"),
    ("./usr/share/doc/stickylb/changelog.Debian.gz", "-rw-r--r--"),
    ("./usr/share/doc/stickylb/CONFIG.md.gz", "-rw-r--r--"),
    (
        "./usr/share/doc/stickylb/examples/stickylb.toml",
        "-rw-r--r--",
    ),
    ("./usr/share/stickylb/grafana/stickylb.json", "-rw-r--r--"),
];

/// Lintian tags that may remain, each explained in docs/OPERATIONS.md ("The Debian
/// package"). Any other error or warning fails the check.
const LINTIAN_EXPLAINED: &[&str] = &[
    // A package built outside the Debian archive: its first changelog entry closes no
    // Debian bug.
    "initial-upload-closes-no-bugs",
];

fn check(deb: &Path) -> Result<()> {
    println!("checking {}", deb.display());
    // Control fields.
    let info = output(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    for want in [
        format!("Package: {NAME}"),
        format!("Version: {}", version()),
        format!("Architecture: {}", architecture()?),
        "Depends: libc6".to_string(),
        "Section: net".to_string(),
    ] {
        ensure!(info.contains(&want), "control: no {want:?} in\n{info}");
    }
    let conffiles = output(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(deb)
            .arg("conffiles"),
    )?;
    ensure!(
        conffiles.lines().collect::<Vec<_>>()
            == ["/etc/default/stickylb", "/etc/stickylb/stickylb.toml"],
        "conffiles: {conffiles:?}"
    );
    // Contents: every expected file with its mode, owned by root; nothing outside the
    // directories a package may use.
    let contents = output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    println!("{contents}");
    for (path, mode) in EXPECTED {
        let line = contents
            .lines()
            .find(|l| l.split_whitespace().last() == Some(*path))
            .with_context(|| format!("the package has no {path}"))?;
        ensure!(line.starts_with(mode), "{path}: mode {line:?}, want {mode}");
        ensure!(
            line.contains("root/root"),
            "{path}: not owned by root: {line:?}"
        );
    }
    for line in contents.lines() {
        let path = line.split_whitespace().last().unwrap_or("");
        ensure!(
            ["./", "./etc/", "./lib/", "./usr/"]
                .iter()
                .any(|p| path.starts_with(p)),
            "unexpected path {path}"
        );
    }
    // Lintian.
    let lint = Command::new("lintian")
        .args(["--info", "--display-info", "--fail-on", "none"])
        .arg(deb)
        .output()
        .context("cannot run lintian (cargo xtask setup installs it)")?;
    let report = String::from_utf8_lossy(&lint.stdout).into_owned();
    println!("lintian:\n{report}");
    let bad: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .filter(|l| {
            !LINTIAN_EXPLAINED
                .iter()
                .any(|t| l.contains(&format!(": {t}")))
        })
        .collect();
    ensure!(
        bad.is_empty(),
        "lintian errors or warnings:\n{}",
        bad.join("\n")
    );

    // Unpacked into a scratch root: the binary runs and accepts the packaged files.
    let scratch = target_dir().join("debian").join("scratch-root");
    if scratch.exists() {
        fs::remove_dir_all(&scratch)?;
    }
    output(Command::new("dpkg").arg("-x").arg(deb).arg(&scratch))?;
    let bin = scratch.join("usr/sbin/stickylb");
    let v = output(Command::new(&bin).arg("--version"))?;
    ensure!(
        v.trim() == format!("stickylb {}", env!("CARGO_PKG_VERSION")),
        "installed binary --version: {v:?}"
    );
    println!("installed binary: {}", v.trim());
    for conf in [
        "etc/stickylb/stickylb.toml",
        "usr/share/doc/stickylb/examples/stickylb.toml",
    ] {
        output(Command::new(&bin).arg("check").arg(scratch.join(conf)))
            .with_context(|| format!("the packaged {conf} is refused"))?;
    }
    let unit = fs::read_to_string(scratch.join("lib/systemd/system/stickylb.service"))?;
    for exec in unit.lines().filter(|l| l.starts_with("Exec")) {
        let cmd = exec
            .split_once('=')
            .map_or("", |x| x.1)
            .trim_start_matches(['+', '-', '!', '@']);
        let prog = cmd.split_whitespace().next().unwrap_or("");
        if prog.starts_with("/usr/sbin/stickylb") {
            ensure!(
                scratch.join(prog.trim_start_matches('/')).exists(),
                "unit runs {prog}, which the package lacks"
            );
        }
    }
    ensure!(
        unit.contains("ExecStartPre=/usr/sbin/stickylb check"),
        "the unit does not check the configuration before starting"
    );
    ensure!(
        unit.contains("ExecReload=/usr/sbin/stickylb check"),
        "the unit does not check the configuration before reloading"
    );
    // systemd's own check of the unit, with the packaged binary standing in for
    // /usr/sbin/stickylb (it must exist and be executable); any complaint fails.
    let verify_dir = target_dir().join("debian").join("unit-verify");
    fs::create_dir_all(&verify_dir)?;
    let local = verify_dir.join("stickylb.service");
    fs::write(
        &local,
        unit.replace("/usr/sbin/stickylb", &bin.display().to_string()),
    )?;
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&local)
        .output()
        .context("cannot run systemd-analyze (package systemd)")?;
    let msg = String::from_utf8_lossy(&verify.stderr).trim().to_string();
    ensure!(
        verify.status.success() && msg.is_empty(),
        "systemd-analyze verify of the unit: {msg}"
    );
    fs::remove_dir_all(&verify_dir)?;
    for page in ["stickylb.8.gz", "stickylb-import.8.gz"] {
        output(
            Command::new("gzip")
                .arg("-t")
                .arg(scratch.join("usr/share/man/man8").join(page)),
        )?;
    }
    fs::remove_dir_all(&scratch)?;
    println!("package check: ok");
    Ok(())
}
