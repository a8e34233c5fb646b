//! `stickylb peers` as text: the `peers` answer (`lb_model::stats::Peers`, whose `status`
//! is lb-cluster's `ClusterStatus` in its serde form) as a summary line per node and a row
//! per peer. `--json` prints the answer itself.

use std::fmt::Write as _;

use serde_json::Value;

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn progress(v: &Value) -> String {
    match v
        .as_array()
        .map(|a| (a[0].as_u64(), a.get(1).and_then(Value::as_u64)))
    {
        Some((Some(done), Some(total))) => format!("{done}/{total}"),
        _ => "-".into(),
    }
}

/// The text of a `peers` answer.
pub fn peers_text(v: &Value) -> String {
    let mut out = String::new();
    if !v["clustered"].as_bool().unwrap_or(false) {
        out.push_str("not clustered (no [cluster] in the configuration): this node is synced\n");
        return out;
    }
    let st = &v["status"];
    let synced = if st["synced"].as_bool().unwrap_or(false) {
        match st["synced_after_ms"].as_u64() {
            Some(ms) => format!("synced ({:.1}s after start)", ms as f64 / 1e3),
            None => "synced".into(),
        }
    } else {
        let waiting: Vec<&str> = st["waiting_for"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        format!("NOT synced, waiting for: {}", waiting.join("; "))
    };
    let c = &st["counters"];
    let _ = writeln!(
        out,
        "node {} on {}: {synced}; services digest {}",
        st["node"].as_str().unwrap_or("?"),
        st["listen"].as_str().unwrap_or("?"),
        st["services_digest"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        out,
        "store {} entries; picks {} repairs {} refreshes {}; adopted {} superseded {} conflicts {} rejected {}; unknown service {} backend {}",
        n(st, "entries"),
        n(c, "local_picks"),
        n(c, "local_repairs"),
        n(c, "refreshes"),
        n(c, "adopted"),
        n(c, "superseded"),
        n(c, "conflicts"),
        n(c, "rejected"),
        n(c, "unknown_service"),
        n(c, "unknown_backend"),
    );
    let _ = writeln!(
        out,
        "data path: events read {} lost {}; entries written from peers {}; scans {} every {:.1}s; refused handshakes {}{}",
        n(v, "events_read"),
        n(v, "events_lost"),
        n(v, "entries_written"),
        n(v, "scans"),
        n(v, "scan_interval_ms") as f64 / 1e3,
        n(st, "refused_handshakes"),
        st["last_refusal"]
            .as_str()
            .map(|r| format!(" (last: {r})"))
            .unwrap_or_default(),
    );
    let _ = writeln!(
        out,
        "{:<16} {:<22} {:<5} {:>9} {:>10} {:>10} {:>7} {:>7} {:>11} {:>11} {:>7} {:>8} SERVICES",
        "PEER",
        "ADDRESS",
        "STATE",
        "LAST MSG",
        "SENT",
        "RECEIVED",
        "QUEUED",
        "LAG",
        "TEACH IN",
        "TEACH OUT",
        "RESYNCS",
        "REFUSALS"
    );
    for p in st["peers"].as_array().into_iter().flatten() {
        let last = p["last_message_ms_ago"]
            .as_u64()
            .map(|ms| format!("{:.1}s", ms as f64 / 1e3))
            .unwrap_or_else(|| "never".into());
        let teach_in = if p["teach_in"].is_null() {
            if p["taught_us"].as_bool().unwrap_or(false) {
                "done".into()
            } else {
                "-".into()
            }
        } else {
            progress(&p["teach_in"])
        };
        let _ = writeln!(
            out,
            "{:<16} {:<22} {:<5} {:>9} {:>10} {:>10} {:>7} {:>5}ms {:>11} {:>11} {:>7} {:>8} {}",
            p["name"].as_str().unwrap_or("?"),
            p["address"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            last,
            n(p, "entries_sent"),
            n(p, "entries_received"),
            n(p, "queued"),
            n(p, "lag_ms"),
            teach_in,
            progress(&p["teach_out"]),
            n(p, "resyncs"),
            n(p, "refusals"),
            if p["services_differ"].as_bool().unwrap_or(false) {
                "DIFFER"
            } else {
                "same"
            },
        );
        for dir in ["outbound", "inbound"] {
            if let Some(e) = p[dir]["last_error"].as_str() {
                let _ = writeln!(out, "  {dir} last error: {e}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_and_its_peers() {
        let v = json!({
            "clustered": true, "synced": false, "events_read": 5, "events_lost": 1,
            "entries_written": 3, "scans": 2, "scan_interval_ms": 1000,
            "status": {
                "node": "lb1", "listen": "10.0.0.1:7946", "synced": false,
                "waiting_for": ["lb2: teaching (400 of 1000)"], "entries": 9,
                "services_digest": "abcd", "counters": {"conflicts": 2},
                "refused_handshakes": 1, "last_refusal": "no certificate",
                "peers": [{"name": "lb2", "address": "10.0.0.2:7946", "state": "half",
                    "outbound": {"connected": true, "sessions": 1, "last_error": null},
                    "inbound": {"connected": false, "sessions": 0, "last_error": "timed out"},
                    "last_message_ms_ago": 300, "entries_sent": 10, "entries_received": 400,
                    "queued": 0, "lag_ms": 0, "teach_in": [400, 1000], "teach_out": null,
                    "taught_us": false, "resyncs": 0, "services_differ": true, "refusals": 0}]
            }
        });
        let t = peers_text(&v);
        for want in [
            "NOT synced, waiting for: lb2: teaching (400 of 1000)",
            "conflicts 2",
            "events read 5 lost 1",
            "last: no certificate",
            "400/1000",
            "DIFFER",
            "inbound last error: timed out",
        ] {
            assert!(t.contains(want), "{want:?} missing from\n{t}");
        }
        assert!(peers_text(&json!({"clustered": false})).contains("not clustered"));
    }
}
