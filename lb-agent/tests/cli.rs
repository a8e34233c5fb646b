//! The file commands of the `stickylb` binary, which need no agent or kernel:
//! `stickylb check FILE` (valid and refused configurations, exit codes 0/1, `--quiet`,
//! `--json`) and `stickylb import` (exit codes, `--check`, stdin, and that what it prints
//! is accepted by `stickylb check`).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stickylb")
}

/// Runs `stickylb ARGS` with `stdin`; exit code, stdout, stderr.
fn stickylb(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stickylb");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch file, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, text: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("stickylb-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Scratch(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn check_accepts_the_example_and_says_what_it_would_run() {
    let example = repo("examples/stickylb.toml");
    let (code, out, err) = stickylb(&["check", example.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    for want in [
        "the configuration is valid: 3 service(s), 8 backend(s), stick table of 1400000 entries",
        "service \"web\": 10.0.0.100:80 tcp, scheduler roundrobin, forwarding nat",
        "stick table: 200000 entries, expire 30m after the client was last seen, entries added on TCP SYN only, at most 125000 new entries per second per CPU",
        "health: http GET /healthz (expect 200) every 2s, timeout 1s, rise 2, fall 3",
        "backend 192.168.1.2:8080: weight 2, ready",
        "backend 192.168.1.4:8080: weight 1, drain",
        "service \"api6\": [2001:db8::443]:443 tcp, scheduler maglev (65537 slots), forwarding dsr",
        "backend 2001:db8:1::10 (the service port): weight 1, ready",
        "stick on: src/64 (the clients of each /64 network share one entry and one backend)",
        "stick on: src (each client address has its entry)",
        "backend 2001:db8:1::12 (the service port): weight 1, maint",
        "service \"web-l3\": 10.0.0.101:80 tcp, scheduler roundrobin, forwarding gue (GUE port 7000, outer source the balancer's address (fib))",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    // --quiet: nothing on success; --json: the same facts as JSON.
    let (code, out, _) = stickylb(&["check", "--quiet", example.to_str().unwrap()], "");
    assert_eq!((code, out.as_str()), (0, ""));
    let (code, out, _) = stickylb(&["check", "--json", example.to_str().unwrap()], "");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["stick_table_size"], 1_400_000);
    assert_eq!(v["services"][2]["forwarding"], "gue");
    assert_eq!(v["services"][0]["health"]["kind"], "http");
    assert_eq!(v["services"][1]["backends"][2]["state"], "maint");
    assert_eq!(v["services"][1]["stick_on"], "src/64");
    assert_eq!(v["services"][0]["stick_on"], "src");
}

#[test]
fn check_refuses_bad_configurations_with_the_line_and_exit_1() {
    for (text, want) in [
        (
            "[[service]]\nname = \"w\"\nlisten = \"10.0.0.1:80\"\n[[service.backend]]\naddress = \"10.0.0.2\"\nweight = 300\n",
            "f.toml:6:10: field `service[0].backend[0].weight`: 300 is not accepted",
        ),
        (
            "[[service]]\nname = \"w\"\nlisten = \"10.0.0.1:80\"\nschedular = \"maglev\"\n",
            "did you mean `scheduler`?",
        ),
        (
            "[[service]]\nname = \"a\"\nlisten = \"10.0.0.1:80\"\n[[service]]\nname = \"b\"\nlisten = \"10.0.0.1:80\"\n",
            "both listen on 10.0.0.1:80",
        ),
        ("[[service]\n", "not valid TOML"),
    ] {
        let f = Scratch::new("f.toml", text);
        let (code, out, err) = stickylb(&["check", f.path()], "");
        assert_eq!(code, 1, "{text}: {out}{err}");
        assert!(err.contains(want), "{text}: missing {want:?} in {err}");
        assert!(err.contains("the configuration is refused"), "{err}");
        let (code, out, _) = stickylb(&["check", "--json", f.path()], "");
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().contains(want));
    }
    let (code, _, err) = stickylb(&["check", "/nonexistent/stickylb.toml"], "");
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn check_warns_about_services_that_serve_nobody() {
    let f = Scratch::new(
        "w.toml",
        "[[service]]\nname = \"empty\"\nlisten = \"10.0.0.1:80\"\n\
         [[service]]\nname = \"idle\"\nlisten = \"10.0.0.1:81\"\n\
         [[service.backend]]\naddress = \"10.0.0.2\"\nweight = 0\n",
    );
    let (code, out, _) = stickylb(&["check", f.path()], "");
    assert_eq!(code, 0);
    assert!(
        out.contains("warning: service \"empty\" has no backends"),
        "{out}"
    );
    assert!(
        out.contains("warning: service \"idle\" has no backend that takes new clients"),
        "{out}"
    );
}

#[test]
fn check_shows_what_is_announced_and_refuses_a_bad_announce_section() {
    let base = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.1:80\"\n\
                [[service.backend]]\naddress = \"10.0.0.2\"\n";
    let f = Scratch::new(
        "a.toml",
        &format!(
            "{base}[announce]\ninterface = \"vips\"\ndaemon_socket = \"/run/bird/bird.ctl\"\n"
        ),
    );
    let (code, out, err) = stickylb(&["check", f.path()], "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("announce: 1 VIP(s) on vips (10.0.0.1), drain_timeout 30s, daemon socket /run/bird/bird.ctl"),
        "{out}"
    );
    let (_, out, _) = stickylb(&["check", "--json", f.path()], "");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["announce"]["vips"][0]["services"][0], "web", "{v}");
    let f = Scratch::new(
        "b.toml",
        &format!("{base}[announce]\nservices = [\"api\"]\n"),
    );
    let (code, _, err) = stickylb(&["check", f.path()], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("b.toml:7:")
            && err.contains("field `announce.services[0]`: \"api\" is not a service of this file"),
        "{err}"
    );
}

const FAITHFUL: &str = "defaults\n    mode tcp\n    timeout connect 5s\n\
    frontend f\n    bind 192.0.2.1:80\n    default_backend b\n\
    backend b\n    stick-table type ip size 100k expire 30m\n    stick on src\n\
    server s1 10.0.0.1:80 check\n    server s2 10.0.0.2:80 check\n";

#[test]
fn import_prints_what_check_accepts() {
    let input = repo("lb-agent/tests/import/haproxy-tutorial-http/input");
    let (code, out, err) = stickylb(
        &[
            "import",
            "haproxy",
            input.to_str().unwrap(),
            "--vip",
            "203.0.113.10",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(":27: warning: `http-request set-header"),
        "{err}"
    );
    assert!(
        err.contains("stickylb import: 1 service(s); 0 error(s), 2 warning(s)"),
        "{err}"
    );
    let f = Scratch::new("imported.toml", &out);
    let (code, out, err) = stickylb(&["check", f.path()], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("service \"www-http\": 203.0.113.10:80 tcp"),
        "{out}"
    );
}

#[test]
fn import_check_passes_only_a_faithful_translation() {
    let faithful = Scratch::new("faithful.cfg", FAITHFUL);
    let (code, out, err) = stickylb(&["import", "haproxy", "--check", faithful.path()], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "", "--check prints no configuration");
    assert!(err.contains("serves clients as the original does"), "{err}");
    // Without --check the same file prints its configuration.
    let (code, out, _) = stickylb(&["import", "haproxy", faithful.path()], "");
    assert_eq!(code, 0);
    assert!(
        out.contains("stick_table") && out.contains("10.0.0.2:80"),
        "{out}"
    );

    let lossy = Scratch::new(
        "lossy.cfg",
        &FAITHFUL.replace("stick on src\n", "stick on src\n    balance leastconn\n"),
    );
    let (code, _, err) = stickylb(&["import", "haproxy", "--check", lossy.path()], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("warning: `balance leastconn`"), "{err}");
    // Without --check a lossy translation still succeeds (warnings on stderr).
    let (code, _, _) = stickylb(&["import", "haproxy", lossy.path()], "");
    assert_eq!(code, 0);

    let (code, _, err) = stickylb(&["import", "haproxy", "/nonexistent.cfg"], "");
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
    // A frontend pointing at a backend that does not exist: an error, exit 1.
    let broken = Scratch::new(
        "broken.cfg",
        &FAITHFUL.replace("default_backend b", "default_backend nope"),
    );
    let (code, _, err) = stickylb(&["import", "haproxy", broken.path()], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("error: `backend nope`"), "{err}");
}

#[test]
fn import_ipvs_reads_stdin() {
    let rules = "-A -t 10.0.0.100:80 -s rr -p 300\n-a -t 10.0.0.100:80 -r 192.168.1.2:80 -m -w 1\n";
    let (code, out, err) = stickylb(&["import", "ipvs", "-"], rules);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"10.0.0.100:80\""), "{out}");
    assert!(out.contains("expire = \"5m\""), "{out}");
    assert!(err.contains("<stdin>"), "{err}");
    // A keepalived file given to `import ipvs` says which importer to use.
    let (code, _, err) = stickylb(
        &["import", "ipvs", "-"],
        "virtual_server 10.0.0.1 80 {\n}\n",
    );
    assert_eq!(code, 1);
    assert!(err.contains("stickylb import keepalived"), "{err}");
}
