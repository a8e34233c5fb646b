//! Prometheus text exposition on `--metrics` (default 127.0.0.1:9478), read-only: any
//! request gets the current counters; nothing can be changed through it.

use std::fmt::Write as _;

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::agent::{with_agent, SharedAgent};

/// Default metrics address (loopback only unless told otherwise).
pub const DEFAULT_METRICS: &str = "127.0.0.1:9478";

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the agent's stats as Prometheus text.
pub fn render(stats: &Value) -> String {
    let mut out = String::new();
    let n = |v: &Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let svc_counters = [
        (
            "packets",
            "stickylb_service_packets_total",
            "Client packets forwarded to a backend.",
        ),
        (
            "bytes",
            "stickylb_service_bytes_total",
            "Client bytes forwarded to a backend.",
        ),
        (
            "new_clients",
            "stickylb_service_new_clients_total",
            "Clients without an entry that got a first pick.",
        ),
        (
            "reply_packets",
            "stickylb_service_reply_packets_total",
            "NAT replies rewritten to the VIP.",
        ),
        (
            "fib_miss",
            "stickylb_service_fib_miss_total",
            "NAT packets to a backend handed to the kernel because the FIB had no neighbour yet (the kernel resolves it) or no fast path.",
        ),
        (
            "neigh_queued",
            "stickylb_service_neigh_queued_total",
            "Packets whose next hop was not resolved yet, sent through the kernel's neighbour queue (delayed, not lost).",
        ),
        (
            "neigh_report_lost",
            "stickylb_service_neigh_report_lost_total",
            "Unresolved next hops the data path could not report (report ring full).",
        ),
        (
            "icmp_to_backend",
            "stickylb_service_icmp_to_backend_total",
            "ICMP errors about a client's flow steered to its backend.",
        ),
        (
            "icmp_unmatched",
            "stickylb_service_icmp_unmatched_total",
            "ICMP errors about the service with no live client entry, passed to the kernel.",
        ),
        (
            "frag_forwarded",
            "stickylb_service_fragments_forwarded_total",
            "IPv4 fragments forwarded (first ones with the flow, later ones by the client's entry).",
        ),
        (
            "frag_unmatched",
            "stickylb_service_fragments_unmatched_total",
            "Later IPv4 fragments without a single live client entry, passed to the kernel.",
        ),
        (
            "unpinned_not_syn",
            "stickylb_service_unpinned_not_syn_total",
            "New clients served by source hash without an entry: TCP packet other than a SYN under insert_on = \"syn\".",
        ),
        (
            "unpinned_over_cap",
            "stickylb_service_unpinned_over_cap_total",
            "New clients served by source hash without an entry: the per-CPU insert_cap for the second was used up.",
        ),
        (
            "too_big_answered",
            "stickylb_service_too_big_answered_total",
            "Encapsulating services: client packets over the egress MTU once encapsulated, answered with ICMP fragmentation needed / packet too big.",
        ),
        (
            "drop_too_big",
            "stickylb_service_drop_too_big_total",
            "Encapsulating services: packets over the egress MTU once encapsulated that could not be answered (IPv4 without DF, fragments, ICMP errors), dropped.",
        ),
    ];
    let services = stats
        .get("services")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    for (key, name, help) in svc_counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in &services {
            let _ = writeln!(
                out,
                "{name}{{service=\"{}\"}} {}",
                esc(s["name"].as_str().unwrap_or("")),
                n(s, key)
            );
        }
    }
    let _ = writeln!(out, "# HELP stickylb_service_repicks_total Clients re-picked, by reason.\n# TYPE stickylb_service_repicks_total counter");
    for s in &services {
        for (reason, key) in [
            ("expired", "repick_expired"),
            ("backend_down", "repick_down"),
        ] {
            let _ = writeln!(
                out,
                "stickylb_service_repicks_total{{service=\"{}\",reason=\"{reason}\"}} {}",
                esc(s["name"].as_str().unwrap_or("")),
                n(s, key)
            );
        }
    }
    let _ = writeln!(out, "# HELP stickylb_service_drops_total Packets dropped or passed, by reason.\n# TYPE stickylb_service_drops_total counter");
    for s in &services {
        for (reason, key) in [
            ("no_backend", "drop_no_backend"),
            ("no_route", "drop_no_route"),
            ("no_neighbour", "drop_no_neigh"),
            ("ttl_passed", "pass_ttl"),
        ] {
            let _ = writeln!(
                out,
                "stickylb_service_drops_total{{service=\"{}\",reason=\"{reason}\"}} {}",
                esc(s["name"].as_str().unwrap_or("")),
                n(s, key)
            );
        }
    }
    let backend_metrics = [
        (
            "packets",
            "stickylb_backend_packets_total",
            "counter",
            "Packets forwarded to the backend.",
        ),
        (
            "bytes",
            "stickylb_backend_bytes_total",
            "counter",
            "Bytes forwarded to the backend.",
        ),
        (
            "new_clients",
            "stickylb_backend_new_clients_total",
            "counter",
            "Clients picked for the backend.",
        ),
        (
            "weight",
            "stickylb_backend_weight",
            "gauge",
            "Configured weight.",
        ),
        (
            "flaps",
            "stickylb_backend_flaps_total",
            "counter",
            "Health changes of state (up to down or down to up) since the agent started.",
        ),
    ];
    for (key, name, kind, help) in backend_metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in &services {
            for b in s["backends"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{}\",backend=\"{}\"}} {}",
                    esc(s["name"].as_str().unwrap_or("")),
                    esc(b["address"].as_str().unwrap_or("")),
                    n(b, key)
                );
            }
        }
    }
    let _ = writeln!(out, "# HELP stickylb_backend_up 1 when the backend takes traffic (health and admin state).\n# TYPE stickylb_backend_up gauge");
    let _ = writeln!(out, "# HELP stickylb_backend_check_latency_seconds Latency of the last successful health check.\n# TYPE stickylb_backend_check_latency_seconds gauge");
    for s in &services {
        for b in s["backends"].as_array().into_iter().flatten() {
            let labels = format!(
                "service=\"{}\",backend=\"{}\",state=\"{}\",health=\"{}\"",
                esc(s["name"].as_str().unwrap_or("")),
                esc(b["address"].as_str().unwrap_or("")),
                b["admin"].as_str().unwrap_or(""),
                b["health"].as_str().unwrap_or("")
            );
            let up = matches!(b["state"].as_str(), Some("up") | Some("drain")) as u8;
            let _ = writeln!(out, "stickylb_backend_up{{{labels}}} {up}");
            if let Some(us) = b["check"].get("last_latency_us").and_then(|v| v.as_u64()) {
                let _ = writeln!(
                    out,
                    "stickylb_backend_check_latency_seconds{{service=\"{}\",backend=\"{}\"}} {}",
                    esc(s["name"].as_str().unwrap_or("")),
                    esc(b["address"].as_str().unwrap_or("")),
                    us as f64 / 1e6
                );
            }
        }
    }
    let st = &stats["stick_table"];
    let _ = writeln!(out, "# HELP stickylb_stick_table_entries Entries in the stick table.\n# TYPE stickylb_stick_table_entries gauge\nstickylb_stick_table_entries {}", n(st, "entries"));
    let _ = writeln!(out, "# HELP stickylb_stick_table_capacity Capacity of the stick table.\n# TYPE stickylb_stick_table_capacity gauge\nstickylb_stick_table_capacity {}", n(st, "capacity"));
    let nb = &stats["neighbours"];
    if nb.is_object() {
        let _ = writeln!(out, "# HELP stickylb_neighbours_managed Next hops the agent keeps resolved (managed neighbour entries).\n# TYPE stickylb_neighbours_managed gauge\nstickylb_neighbours_managed {}", n(nb, "managed"));
        let _ = writeln!(out, "# HELP stickylb_neighbour_reports_total Unresolved next hops reported by the data path.\n# TYPE stickylb_neighbour_reports_total counter\nstickylb_neighbour_reports_total {}", n(nb, "reports"));
        let _ = writeln!(out, "# HELP stickylb_neighbour_resolved_total Reported next hops that became usable.\n# TYPE stickylb_neighbour_resolved_total counter\nstickylb_neighbour_resolved_total {}", n(nb, "resolved"));
        let _ = writeln!(out, "# HELP stickylb_neighbour_resolve_seconds_max Longest time from the data path's first miss to a usable neighbour entry.\n# TYPE stickylb_neighbour_resolve_seconds_max gauge\nstickylb_neighbour_resolve_seconds_max {}", nb["resolve_ms_max"].as_f64().unwrap_or(0.0) / 1000.0);
        let _ = writeln!(out, "# HELP stickylb_setup_warnings Problems with this setup that stop traffic (see `stickylb status`).\n# TYPE stickylb_setup_warnings gauge\nstickylb_setup_warnings {}", stats["warnings"].as_array().map(|w| w.len()).unwrap_or(0));
    }
    out
}

/// Serves `GET /metrics` (any path) until the listener fails.
pub async fn serve(agent: SharedAgent, listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), sock.read(&mut buf)).await;
            let body = tokio::task::spawn_blocking(move || {
                with_agent(&agent, |a| render(&a.stats_json()))
            })
            .await
            .unwrap_or_default();
            let head = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn default_address_is_loopback_only() {
        let addr: std::net::SocketAddr = DEFAULT_METRICS.parse().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
    }

    #[test]
    fn renders_counters_with_labels() {
        let stats = json!({
            "services": [{ "name": "web", "packets": 5, "bytes": 500, "new_clients": 2, "repick_expired": 1, "repick_down": 0,
                "drop_no_backend": 3, "drop_no_route": 0, "fib_miss": 0, "pass_ttl": 0, "reply_packets": 4, "reply_bytes": 1,
                "backends": [{ "address": "10.0.0.2:80", "packets": 5, "bytes": 500, "new_clients": 2, "weight": 1, "flaps": 4,
                    "admin": "ready", "health": "up", "state": "up", "check": { "last_latency_us": 1500 } }] }],
            "stick_table": { "entries": 2, "capacity": 200000 },
            "neighbours": { "managed": 3, "reports": 7, "resolved": 2, "resolve_ms_max": 1.5 },
            "warnings": ["x"],
        });
        let text = render(&stats);
        for want in [
            "stickylb_service_packets_total{service=\"web\"} 5",
            "stickylb_service_drops_total{service=\"web\",reason=\"no_backend\"} 3",
            "stickylb_service_repicks_total{service=\"web\",reason=\"expired\"} 1",
            "stickylb_backend_new_clients_total{service=\"web\",backend=\"10.0.0.2:80\"} 2",
            "stickylb_backend_up{service=\"web\",backend=\"10.0.0.2:80\",state=\"ready\",health=\"up\"} 1",
            "stickylb_backend_check_latency_seconds{service=\"web\",backend=\"10.0.0.2:80\"} 0.0015",
            "stickylb_stick_table_capacity 200000",
            "stickylb_neighbours_managed 3",
            "stickylb_neighbour_resolve_seconds_max 0.0015",
            "stickylb_setup_warnings 1",
            "stickylb_backend_flaps_total{service=\"web\",backend=\"10.0.0.2:80\"} 4",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
    }
}
