//! `stickylb-demo-cluster` (what `cargo xtask demo --cluster` runs) end to end: it must
//! exit 0 and its summary must say 0 clients moved through a node killed, drained and
//! added, with no failed request while draining and adding. Times are printed, never
//! asserted (the machine is shared).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use stickylb_tests::agent::stickylb_bin;

/// `key=value` pairs of one `SUMMARY <first word>` line.
fn line(out: &str, first: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("SUMMARY "))
        .filter(|l| l.split_whitespace().next() == Some(first))
        .flat_map(str::split_whitespace)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn cluster_demo_runs_and_nobody_moves() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_stickylb-demo-cluster"))
        .args(["--clients", "40", "--failover-runs", "1"])
        .env("STICKYLB_BIN", stickylb_bin().unwrap())
        .output()
        .expect("run stickylb-demo-cluster");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    println!("{stdout}");
    assert!(
        out.status.success(),
        "cluster demo failed ({}):\n{all}",
        out.status
    );
    assert!(stdout.contains("SUMMARY result=ok"), "{all}");
    let up = line(&stdout, "nodes=3");
    assert_eq!(up["nexthops"], "3", "{all}");
    assert_eq!(up["on_one_backend"], "40", "{all}");
    for step in ["kill", "drain", "add"] {
        let l = line(&stdout, step);
        assert_eq!(l["clients_moved"], "0", "{step}: {all}");
    }
    assert_eq!(line(&stdout, "drain")["failed"], "0", "{all}");
    assert_eq!(line(&stdout, "add")["failed"], "0", "{all}");
    assert_eq!(line(&stdout, "add")["synced"], "true", "{all}");
    assert_eq!(
        line(&stdout, "after_failovers")["clients_moved"],
        "0",
        "{all}"
    );
    let failovers = stdout
        .lines()
        .filter(|l| l.starts_with("SUMMARY failover "))
        .count();
    assert_eq!(failovers, 2, "BFD and hold timer: {all}");
    println!("cluster demo took {:.1} s", started.elapsed().as_secs_f64());
}
