//! The importer's corpus: `tests/import/<kind>-<name>/input` is an HAProxy configuration,
//! `ipvsadm-save -n` output or keepalived.conf in the shapes found in tutorials,
//! distribution defaults and the projects' documentation; `expected.toml` and
//! `expected.stderr` are what `stickylb import` prints for it (with the whole
//! configuration format, [`Features::ALL`]); `args` holds extra arguments (`--vip A`).
//!
//! For every case:
//! - the output and the diagnostics equal the golden files
//!   (`STICKYLB_UPDATE_GOLDEN=1` rewrites them; review the diff);
//! - what this build's importer prints ([`Features::of_this_build`]) loads in this build's
//!   configuration parser, unless an error diagnostic says why not (IPVS tunnel mode before
//!   `forwarding = "ipip"` exists);
//! - every line of the input is accounted for: named by a diagnostic, or part of a
//!   section that an imported service came from (nothing is dropped silently);
//! - HAProxy inputs are valid for the real HAProxy (`haproxy -c -f input`, Debian's
//!   package, installed by `cargo xtask setup`), unless `haproxy-c-skip` says why not.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use lb_model::{
    config,
    import::{self, Features, Import, Level, Options},
};

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("input").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "corpus too small: {cases:?}");
    cases
}

fn options(case: &Path, features: Features) -> Options {
    let args = std::fs::read_to_string(case.join("args")).unwrap_or_default();
    let words: Vec<&str> = args.split_whitespace().collect();
    let mut vips = Vec::new();
    for pair in words.chunks(2) {
        match pair {
            ["--vip", ip] => vips.push(ip.parse::<IpAddr>().expect("args: --vip IP")),
            other => panic!("{}: unknown args {other:?}", case.display()),
        }
    }
    Options { features, vips }
}

fn run(case: &Path, features: Features) -> Import {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(case.join("input")).unwrap();
    let opts = options(case, features);
    if name.starts_with("haproxy-") {
        import::haproxy::import(&text, &opts)
    } else if name.starts_with("ipvs-") {
        import::ipvs::import(&text, &opts)
    } else if name.starts_with("keepalived-") {
        import::ipvs::import_keepalived(&text, &opts)
    } else {
        panic!("{name}: a case name starts with haproxy-, ipvs- or keepalived-")
    }
}

fn render_diagnostics(result: &Import) -> String {
    result
        .diagnostics
        .iter()
        .map(|d| d.render("input") + "\n")
        .collect()
}

#[test]
fn corpus_matches_the_golden_files() {
    let update = std::env::var_os("STICKYLB_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in corpus() {
        let result = run(&case, Features::ALL);
        let toml = result.to_toml("input");
        let stderr = render_diagnostics(&result);
        for (file, got) in [("expected.toml", &toml), ("expected.stderr", &stderr)] {
            let path = case.join(file);
            if update {
                std::fs::write(&path, got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if &want != got {
                failures.push(format!(
                    "{}: differs from {file} (STICKYLB_UPDATE_GOLDEN=1 rewrites it):\n--- got ---\n{got}",
                    case.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn imported_configurations_load_in_this_build() {
    let features = Features::of_this_build();
    for case in corpus() {
        let result = run(&case, features);
        let toml = result.to_toml("input");
        let errors: Vec<_> = result
            .diagnostics
            .iter()
            .filter(|d| d.level == Level::Error)
            .collect();
        match config::parse(&toml, "imported") {
            Ok(cfg) => assert_eq!(
                cfg.services.len(),
                result.file.service.len(),
                "{}",
                case.display()
            ),
            Err(e) => {
                // Only a construct this build does not have yet may keep it from loading,
                // and an error diagnostic must have said so.
                assert!(
                    !features.ipip && e.to_string().contains("ipip"),
                    "{}: does not load: {e}\n{toml}",
                    case.display()
                );
                assert!(
                    errors.iter().any(|d| d.why.contains("this build")),
                    "{}: does not load ({e}) and no error says why",
                    case.display()
                );
            }
        }
        // With the whole format the output is the golden one; the fallbacks of this
        // build are visible as warnings, never silent.
        let full = run(&case, Features::ALL);
        if result.file != full.file {
            assert!(
                result
                    .diagnostics
                    .iter()
                    .any(|d| d.why.contains("this build")),
                "{}: this build's output differs from the full format's without a warning",
                case.display()
            );
        }
    }
}

/// Every line that is not blank, a comment or a brace is accounted for: a diagnostic
/// names it, or its section (the last line starting in column 0: an HAProxy section
/// header, an ipvsadm rule, a keepalived top-level block) is named by a diagnostic or
/// by the provenance comment of an imported service.
#[test]
fn nothing_is_dropped_silently() {
    for case in corpus() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let result = run(&case, Features::ALL);
        let text = std::fs::read_to_string(case.join("input")).unwrap();
        let flagged: std::collections::BTreeSet<usize> =
            result.diagnostics.iter().map(|d| d.line).collect();
        let mut imported = std::collections::BTreeSet::new();
        for s in &result.file.service {
            for w in s.origin.split(|c: char| !c.is_ascii_digit()) {
                if let Ok(n) = w.parse::<usize>() {
                    imported.insert(n);
                }
            }
        }
        let mut header = 0;
        for (i, raw) in text.lines().enumerate() {
            let no = i + 1;
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with('!') || t == "}" || t == "{" {
                continue;
            }
            if !raw.starts_with(' ') && !raw.starts_with('\t') {
                header = no;
                // An HAProxy section header is structure: its content must be covered.
                let first = t.split_whitespace().next().unwrap_or("");
                if name.starts_with("haproxy-")
                    && ["global", "defaults", "frontend", "backend", "listen"].contains(&first)
                {
                    continue;
                }
            }
            let covered = flagged.contains(&no)
                || imported.contains(&no)
                || flagged.contains(&header)
                || imported.contains(&header);
            assert!(
                covered,
                "{name}:{no}: `{t}` is neither part of an imported service nor reported"
            );
        }
    }
}

#[test]
fn haproxy_accepts_the_haproxy_inputs() {
    let haproxy = Command::new("haproxy").arg("-v").output();
    assert!(
        haproxy.as_ref().is_ok_and(|o| o.status.success()),
        "haproxy is not installed: `cargo xtask setup` installs Debian's haproxy package"
    );
    for case in corpus() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("haproxy-") || case.join("haproxy-c-skip").exists() {
            continue;
        }
        let out = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(case.join("input"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: haproxy -c refuses the input:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The fallbacks of a build without the newer constructs: nothing is written that would
/// not load, and each fallback is a warning (or, without a fallback, an error).
#[test]
fn fallbacks_without_the_newer_constructs() {
    let text = "defaults\n mode tcp\nfrontend f\n bind 192.0.2.1:443\n default_backend b\n\
                backend b\n option httpchk GET /h\n stick-table type ip size 1k expire 1m\n \
                stick on src,ipmask(24)\n server s1 10.0.0.1:443 check check-ssl verify none\n";
    let full = import::haproxy::import(text, &Options::default());
    let s = &full.file.service[0];
    assert_eq!(s.stick_on.as_deref(), Some("src/24"));
    assert_eq!(s.health.kind, "https");
    assert_eq!(s.health.verify, Some(false));
    let opts = Options {
        features: Features::NONE,
        vips: vec![],
    };
    let base = import::haproxy::import(text, &opts);
    let s = &base.file.service[0];
    assert_eq!(s.stick_on, None);
    assert_eq!(s.health.kind, "tcp");
    let toml = base.to_toml("x");
    assert!(
        toml.contains("# stick_on = \"src/24\""),
        "the prefix is kept as a comment:\n{toml}"
    );
    config::parse(&toml, "x").unwrap();
    let warned: Vec<_> = base
        .diagnostics
        .iter()
        .filter(|d| d.level == Level::Warning && d.why.contains("this build"))
        .collect();
    assert_eq!(warned.len(), 2, "{:?}", base.diagnostics);

    let ipvs = "-A -t 10.0.0.1:80 -s rr -p 60\n-a -t 10.0.0.1:80 -r 10.1.0.1:80 -i -w 1\n";
    let r = import::ipvs::import(ipvs, &opts);
    assert_eq!(r.file.service[0].forwarding, "ipip");
    assert!(r
        .diagnostics
        .iter()
        .any(|d| d.level == Level::Error && d.why.contains("ipip")));
}
