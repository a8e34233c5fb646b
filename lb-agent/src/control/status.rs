//! `stickylb status` as text: the `status` answer (`lb_model::stats::Status`) as a few
//! labelled lines, the warnings first-class at the end, like `ipvsadm`/`haproxy -vv`
//! summaries. `--json` prints the answer itself.

use std::fmt::Write as _;

use lb_model::stats::Status;
use serde_json::Value;

fn duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The text of a `status` answer; an answer this version cannot read is printed as JSON.
pub fn status_text(v: &Value) -> String {
    let Ok(st) = serde_json::from_value::<Status>(v.clone()) else {
        return format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default());
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "instance {} (pid {}), up {}",
        st.instance,
        st.pid,
        duration(st.uptime_s)
    );
    let _ = writeln!(out, "config      {}", st.config);
    let ifaces: Vec<String> = st
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.xdp))
        .collect();
    let _ = writeln!(out, "interfaces  {}", ifaces.join(", "));
    let _ = writeln!(out, "pins        {}", st.pins);
    let fill = &st.stick_table;
    let pct = if fill.capacity == 0 {
        0.0
    } else {
        fill.entries as f64 * 100.0 / fill.capacity as f64
    };
    let _ = writeln!(
        out,
        "services    {}, backends {}, stick table {} of {} ({pct:.1} %, counted {:.1}s ago)",
        st.services,
        st.backends,
        fill.entries,
        fill.capacity,
        fill.census_age_ms as f64 / 1e3
    );
    let _ = writeln!(
        out,
        "changes     {} by control commands, {} reloads; health-check lag max {} ms",
        st.control_changes, st.reloads, st.health_max_lag_ms
    );
    if let Some(n) = &st.neighbours {
        let _ = writeln!(
            out,
            "neighbours  {} managed ({} reported by the data path), {} resolved (last {:.1} ms, max {:.1} ms), {} errors{}",
            n.managed,
            n.reported,
            n.resolved,
            n.resolve_ms_last,
            n.resolve_ms_max,
            n.errors,
            n.last_error
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default()
        );
    }
    if let Some(a) = &st.announce {
        let node = match (a.draining, a.drained) {
            (true, true) => "drained",
            (true, false) => "draining",
            _ if a.synced => "serving",
            _ => "not synced",
        };
        let _ = writeln!(
            out,
            "announce    on {}, node {node}, routing daemon {}",
            a.interface, a.daemon.state
        );
        for vip in &a.vips {
            let state = if vip.announced {
                "announced".to_string()
            } else {
                format!(
                    "not announced ({})",
                    vip.why.map(|w| w.to_string()).unwrap_or_else(|| "-".into())
                )
            };
            let _ = writeln!(
                out,
                "  {:<40} {state}, {:.0} packets/s, services {}",
                vip.vip.to_string(),
                vip.packets_per_s,
                vip.services.join(", ")
            );
        }
    }
    if st.warnings.is_empty() {
        out.push_str("warnings    none\n");
    } else {
        for w in &st.warnings {
            let _ = writeln!(out, "WARNING     {w}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_answer_reads_as_lines_and_warnings_stand_out() {
        let st = Status {
            instance: "default".into(),
            pid: 42,
            uptime_s: 3725,
            config: "/etc/stickylb/stickylb.toml".into(),
            interfaces: vec![lb_model::stats::Interface {
                name: "eth0".into(),
                xdp: "native".into(),
            }],
            pins: "/sys/fs/bpf/stickylb/default".into(),
            services: 2,
            backends: 6,
            stick_table: lb_model::stats::StickFill {
                entries: 50,
                capacity: 200,
                census_age_ms: 500,
            },
            control_changes: 1,
            reloads: 3,
            health_max_lag_ms: 4,
            neighbours: None,
            warnings: vec!["the VIP 10.0.0.1 is on lo: do this".into()],
            announce: None,
        };
        let text = status_text(&serde_json::to_value(&st).unwrap());
        assert!(
            text.starts_with("instance default (pid 42), up 1h02m\n"),
            "{text}"
        );
        assert!(text.contains("interfaces  eth0 (native)"), "{text}");
        assert!(text.contains("stick table 50 of 200 (25.0 %"), "{text}");
        assert!(
            text.contains("WARNING     the VIP 10.0.0.1 is on lo"),
            "{text}"
        );
        assert!(!text.contains('{'), "no JSON: {text}");
        // Something this version cannot read is shown as it came.
        let odd = serde_json::json!({"instance": 1});
        assert!(status_text(&odd).contains("\"instance\": 1"));
    }
}
