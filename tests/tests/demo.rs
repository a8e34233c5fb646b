//! `stickylb-demo` (what `cargo xtask demo` runs) end to end: it must exit 0 and its
//! summary must say that clients stuck, failover moved only the dead backend's clients,
//! nobody flapped back and an agent restart moved nobody.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use stickylb_tests::agent::stickylb_bin;
use stickylb_tests::netns::list_netns;

/// `key=value` pairs of the `SUMMARY` lines (later lines win on duplicate keys).
fn summary(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("SUMMARY "))
        .flat_map(str::split_whitespace)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn demo_runs_and_its_summary_shows_every_property() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_stickylb-demo"))
        .args(["--clients", "30"])
        .env("STICKYLB_BIN", stickylb_bin().unwrap())
        .output()
        .expect("run stickylb-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(out.status.success(), "demo failed ({}):\n{all}", out.status);

    let s = summary(&stdout);
    let get = |k: &str| {
        s.get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {k}= in the summary:\n{all}"))
    };
    assert_eq!(get("result"), "ok", "{all}");
    assert_eq!(get("clients"), "30", "{all}");
    assert_eq!(get("stayed_on_one_backend"), "30", "{all}");
    assert_eq!(get("table_entries"), "30", "{all}");
    assert_eq!(get("moved_only_dead_backend_clients"), "yes", "{all}");
    assert_eq!(get("collateral_moves"), "0", "{all}");
    assert_ne!(get("victims"), "0", "{all}");
    let failover: u64 = get("failover_ms").parse().expect("failover_ms is a number");
    assert!(failover < 10_000, "{all}");
    assert_eq!(get("flapped_back"), "0", "{all}");
    assert_eq!(get("other_moves_after_recovery"), "0", "{all}");
    assert_ne!(get("new_clients_on_recovered_backend"), "0", "{all}");
    // Restart: `moved=` of the agent_restart line.
    assert_eq!(get("moved"), "0", "{all}");
    assert_eq!(get("moved_while_down"), "0", "{all}");
    assert_eq!(get("served_while_down"), get("clients_checked"), "{all}");
    // The progress lines are there too.
    for needle in [
        "30 of 30 clients stayed on one backend",
        "stickylb table show web",
        "of 30 entries",
        "flapped back",
        "adopted pinned state",
        "cleaned up",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?}:\n{all}");
    }
    // It removed its namespaces (named slb<its pid>-…).
    let prefix = format!("slb{}-", out_pid(&stdout));
    let left: Vec<String> = list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}\n{all}");
    // How long it took is printed, not asserted: a busy CI machine is slower.
    eprintln!("demo took {:?}", started.elapsed());
}

/// The demo's pid, read from the namespace names it printed (`slb<pid>-<n>-cli`).
fn out_pid(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("slb")?.strip_suffix("-cli:"))
        .and_then(|rest| rest.split('-').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no client namespace name in:\n{stdout}"))
}
