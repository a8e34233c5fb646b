//! Fuzzing the agent's inputs with the cargo-fuzz targets in `fuzz/`: `config` (the config
//! parser), `control` (the control protocol: request decoding and the map-free checks
//! of every request), `cluster` (the peer protocol's frame decoder and receiving side) and
//! `import` (the HAProxy, ipvsadm and keepalived importers). `cargo xtask test` runs each
//! for a short time ([`agent_fuzz`]);
//! a long run is plain cargo-fuzz, from the workspace root, with the toolchain named in
//! the root `Cargo.toml` (`[workspace.metadata.stickylb] toolchain`):
//!
//! ```sh
//! RUSTC_BOOTSTRAP=1 rustup run <toolchain> cargo fuzz run control \
//!     fuzz/corpus/control fuzz/seeds/control -- -dict=fuzz/dict/control.dict \
//!     -max_total_time=3600 -jobs=2 -workers=2
//! ```
//!
//! New inputs go to `fuzz/corpus/<target>/` (not committed), crashes to
//! `fuzz/artifacts/<target>/`; `cargo fuzz run <target> <crash file>` replays one.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::cargo::{self, workspace_root};

/// The fuzz targets of `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &["config", "control", "cluster", "import"];

/// Seconds per target in `cargo xtask test` (`STICKYLB_FUZZ_SECONDS` overrides, 0 skips).
pub const TEST_SECONDS: u64 = 20;

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// `rustup run <pinned> cargo fuzz <args>` from the workspace root. cargo-fuzz needs
/// unstable flags (`-Zsanitizer`): `RUSTC_BOOTSTRAP` allows them on the pinned stable.
fn cargo_fuzz<I, S>(args: I) -> std::process::Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = cargo::pinned(["fuzz"]);
    cmd.args(args).env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// Builds the fuzz targets, then runs each for `seconds`; fails if one finds a crash (a
/// panic, a broken invariant, a sanitizer report) and says how to replay it.
pub fn agent_fuzz(seconds: u64) -> Result<()> {
    let started = Instant::now();
    cargo::run(&mut cargo_fuzz(["build"]))?;
    println!(
        "fuzz: targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    seed_from_docs()?;
    let mut failed = Vec::new();
    for target in TARGETS {
        if let Err(e) = run_target(target, seconds) {
            eprintln!("fuzz {target}: {e:#}");
            failed.push(*target);
        }
    }
    if !failed.is_empty() {
        bail!("fuzzing found a crash in: {}", failed.join(", "));
    }
    Ok(())
}

/// What libFuzzer reported at the end of a run.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    execs: u64,
    seconds: u64,
    corpus: Option<u64>,
}

/// Reads `Done 63237 runs in 31 second(s)` and the last `corp: 709/103Kb` of a log.
fn stats(log: &str) -> Stats {
    let mut s = Stats::default();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("Done ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [n, "runs", "in", secs, ..] = words.as_slice() {
                s.execs = n.parse().unwrap_or(0);
                s.seconds = secs.parse().unwrap_or(0);
            }
        }
        if let Some((_, rest)) = line.split_once(" corp: ") {
            s.corpus = rest.split('/').next().and_then(|n| n.parse().ok());
        }
    }
    s
}

fn run_target(target: &str, seconds: u64) -> Result<()> {
    let dir = fuzz_dir();
    let corpus = dir.join("corpus").join(target);
    let seeds = dir.join("seeds").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let log_path = dir.join("target").join(format!("{target}.log"));
    fs::create_dir_all(log_path.parent().unwrap())?;
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = cargo_fuzz(["run", target]);
    cmd.arg(&corpus).arg(&seeds).arg("--").args([
        format!(
            "-dict={}",
            dir.join("dict").join(format!("{target}.dict")).display()
        ),
        format!("-max_total_time={seconds}"),
        "-print_final_stats=1".into(),
    ]);
    println!("+ {} (log: {})", cargo::display(&cmd), log_path.display());
    let status = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .with_context(|| format!("cannot start `{}`", cargo::display(&cmd)))?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let s = stats(&text);
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
        bail!(
            "crash or failure ({status}); the input is in {}: replay it with \
             `RUSTC_BOOTSTRAP=1 rustup run {} cargo fuzz run {target} <file>`",
            dir.join("artifacts").join(target).display(),
            cargo::toolchain()
        );
    }
    println!(
        "fuzz {target}: {} execs in {} s ({}/s), corpus {} inputs, no crash",
        s.execs,
        s.seconds,
        s.execs / s.seconds.max(1),
        s.corpus.map_or("?".into(), |c| c.to_string())
    );
    Ok(())
}

/// Seeds the corpora with what the documentation shows: the example configuration, the
/// TOML blocks of docs/CONFIG.md and the JSON requests of docs/CONTROL.md (kept in step
/// with the docs, so not committed as files).
fn seed_from_docs() -> Result<()> {
    let root = workspace_root();
    let read = |p: &str| -> Result<String> {
        fs::read_to_string(root.join(p)).with_context(|| format!("reading {p}"))
    };
    let config = fuzz_dir().join("corpus").join("config");
    let control = fuzz_dir().join("corpus").join("control");
    fs::create_dir_all(&config)?;
    fs::create_dir_all(&control)?;
    write_seed(
        &config,
        "doc-example.toml",
        &read("examples/stickylb.toml")?,
    )?;
    for (i, block) in read("docs/CONFIG.md")?.split("```toml").skip(1).enumerate() {
        let block = block.split("```").next().unwrap_or("");
        write_seed(&config, &format!("doc-config-{i}.toml"), block)?;
    }
    let docs = read("docs/CONTROL.md")?;
    let requests: Vec<&str> = docs
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("{\"cmd\""))
        .collect();
    write_seed(&control, "doc-control.jsonl", &(requests.join("\n") + "\n"))?;
    // The importer's corpus: the first byte picks the importer (0 HAProxy, 1 ipvsadm,
    // 2 keepalived), as the target reads it.
    let import = fuzz_dir().join("corpus").join("import");
    fs::create_dir_all(&import)?;
    let cases = root.join("lb-agent/tests/import");
    for entry in fs::read_dir(&cases).with_context(|| format!("reading {}", cases.display()))? {
        let case = entry?.path();
        let name = case
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let which = if name.starts_with("haproxy-") {
            '\0'
        } else if name.starts_with("ipvs-") {
            '\u{1}'
        } else {
            '\u{2}'
        };
        if let Ok(text) = fs::read_to_string(case.join("input")) {
            write_seed(
                &import,
                &format!("corpus-{name}"),
                &format!("{which}{text}"),
            )?;
        }
    }
    Ok(())
}

fn write_seed(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    if fs::read_to_string(&path).ok().as_deref() != Some(text) {
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_lines() {
        let log = "#32768\tpulse  cov: 5544 ft: 17937 corp: 547/82Kb lim: 309 exec/s: 2048\n\
                   #63237\tDONE   cov: 5717 ft: 18824 corp: 709/103Kb lim: 309 exec/s: 2039\n\
                   Done 63237 runs in 31 second(s)\n";
        assert_eq!(
            stats(log),
            Stats {
                execs: 63237,
                seconds: 31,
                corpus: Some(709)
            }
        );
    }
}
