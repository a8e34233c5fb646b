//! The metrics endpoint on `--metrics` (default 127.0.0.1:9478): OpenMetrics text encoded
//! by `prometheus-client`, served over HTTP/1.1 by `hyper`. Read-only: any request gets
//! the current metrics; nothing can be changed through it.
//!
//! What it shows is the stats schema (`lb_model::stats`): every data-path counter from its
//! one definition in `lb-common` (family, `reason` label, help), and the agent's own values
//! from [`lb_model::stats::GAUGES`]. A scrape reads the counters from the maps and the
//! stick table's fill from the last census; it never copies the stick table.

use std::{convert::Infallible, fmt, time::Duration};

use http_body_util::Full;
use hyper::{body::Bytes, header, server::conn::http1, service::service_fn, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use lb_common::{counters::Counter, CounterSet};
use lb_model::stats::{Gauge, Stats};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::net::TcpListener;

use lb_model::sync::lock;

use crate::agent::SharedAgent;

/// Default metrics address (loopback only unless told otherwise).
pub const DEFAULT_METRICS: &str = "127.0.0.1:9478";

/// The content type of OpenMetrics text.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One scrape's stats, encoded as metric families.
#[derive(Debug)]
struct Scrape(Stats);

type Labels = Vec<(&'static str, String)>;

/// The samples of one family: labels and value.
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
}

impl Family<'_> {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        if let [(labels, value)] = self.samples.as_slice() {
            if labels.is_empty() {
                return encode_value(self.kind, *value, family);
            }
        }
        for (labels, value) in &self.samples {
            encode_value(self.kind, *value, family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// One sample: a counter, or a gauge (whole numbers as integers: `200000`, not `200000.0`).
fn encode_value(kind: MetricType, value: f64, sample: MetricEncoder) -> fmt::Result {
    match kind {
        MetricType::Counter => ConstCounter::new(value as u64).encode(sample),
        _ if value.fract() == 0.0 && value.abs() < 9e15 => {
            ConstGauge::new(value as i64).encode(sample)
        }
        _ => ConstGauge::new(value).encode(sample),
    }
}

/// The families of a counter set: one per family name, in the order of the definitions,
/// with a sample per (labels, counter).
fn counter_families<'a, T: CounterSet + 'a>(
    rows: impl Iterator<Item = (Labels, &'a T)>,
) -> Vec<Family<'static>> {
    let mut families: Vec<Family<'static>> = Vec::new();
    let family_of = |families: &mut Vec<Family<'static>>, c: &'static Counter| -> usize {
        match families.iter().position(|f| f.name == c.family) {
            Some(i) => i,
            None => {
                families.push(Family {
                    name: c.family,
                    help: c.help,
                    kind: MetricType::Counter,
                    samples: Vec::new(),
                });
                families.len() - 1
            }
        }
    };
    for c in T::COUNTERS {
        family_of(&mut families, c);
    }
    for (labels, counters) in rows {
        counters.for_each(&mut |c, v| {
            let mut l = labels.clone();
            if let Some(reason) = c.reason {
                l.push(("reason", reason.to_string()));
            }
            let i = family_of(&mut families, c);
            families[i].samples.push((l, v as f64));
        });
    }
    families
}

/// The families of the agent's own values.
fn gauge_families(samples: Vec<(Gauge, Labels, f64)>) -> Vec<Family<'static>> {
    lb_model::stats::GAUGES
        .iter()
        .map(|g| Family {
            name: g.name,
            help: g.help,
            kind: if g.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            },
            samples: samples
                .iter()
                .filter(|(s, _, _)| s == g)
                .map(|(_, l, v)| (l.clone(), *v))
                .collect(),
        })
        .collect()
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = &self.0;
        let service = |name: &str| vec![("service", name.to_string())];
        let backend =
            |s: &str, b: &str| vec![("service", s.to_string()), ("backend", b.to_string())];
        let mut families = counter_families(
            stats
                .services
                .iter()
                .map(|s| (service(&s.name), &s.counters.0)),
        );
        families.extend(counter_families(stats.services.iter().flat_map(|s| {
            s.backends
                .iter()
                .map(move |b| (backend(&s.name, &b.address), &b.counters.0))
        })));
        let mut gauges = Vec::new();
        for s in &stats.services {
            for (g, v) in s.gauges() {
                gauges.push((g, service(&s.name), v));
            }
            for b in &s.backends {
                for (g, v) in b.gauges() {
                    let mut labels = backend(&s.name, &b.address);
                    if g == lb_model::stats::BACKEND_UP {
                        labels.push(("state", b.admin.to_string()));
                        labels.push(("health", b.health.to_string()));
                    }
                    gauges.push((g, labels, v));
                }
            }
        }
        // The agent-wide values: the stick table's fill, the neighbours, the warnings.
        for (g, v) in stats.gauges() {
            gauges.push((g, Vec::new(), v));
        }
        if let Some(a) = &stats.announce {
            gauges.extend(a.gauges());
        }
        if let Some(c) = &stats.cluster {
            for (g, v) in c.gauges() {
                gauges.push((g, Vec::new(), v));
            }
            for p in &c.peers {
                for (g, v) in p.gauges() {
                    let mut labels = vec![("peer", p.name.clone())];
                    if g == lb_model::stats::PEER_UP {
                        labels.push(("state", p.state.clone()));
                    }
                    gauges.push((g, labels, v));
                }
            }
        }
        families.extend(gauge_families(gauges));
        for f in &families {
            f.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// The metrics page of `stats`.
pub fn render(stats: Stats) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(stats)));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Serves the metrics page (any path, any method) until the listener fails.
pub async fn serve(agent: SharedAgent, listener: TcpListener) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let agent = agent.clone();
                async move {
                    let body = tokio::task::spawn_blocking(move || render(lock(&agent).stats()))
                        .await
                        .unwrap_or_default();
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header(header::CONTENT_TYPE, CONTENT_TYPE)
                            .body(Full::new(Bytes::from(body)))
                            .expect("a static response"),
                    )
                }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                log::debug!("metrics: connection from {peer}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use lb_common::ServiceStats;

    use super::*;

    #[test]
    fn default_address_is_loopback_only() {
        let addr: SocketAddr = DEFAULT_METRICS.parse().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
    }

    fn sample() -> Stats {
        let json = serde_json::json!({
            "services": [{ "name": "web", "packets": 5, "bytes": 500, "new_clients": 2, "repick_expired": 1,
                "drop_no_backend": 3, "reply_packets": 4, "pinned": 7,
                "backends": [{ "service": "web", "address": "10.0.0.2:80", "id": 0, "packets": 5, "bytes": 500,
                    "new_clients": 2, "weight": 1, "flaps": 4, "admin": "ready", "health": "up", "state": "up",
                    "pinned": 5,
                    "check": { "up": true, "consecutive_ok": 1, "consecutive_fail": 0, "last_latency_us": 1500,
                        "last_error": null, "checks": 1, "failures": 0, "transitions": 4, "last_change_unix_ms": 0 } }] }],
            "stick_table": { "entries": 2, "capacity": 200000 },
            "announce": { "interface": "lo", "synced": true, "draining": false, "drained": false,
                "daemon": { "socket": "/run/bird/bird.ctl", "state": "running",
                    "sessions": [{ "name": "uplink", "proto": "BGP", "state": "up", "info": "Established" }] },
                "vips": [{ "vip": "10.0.0.100", "services": ["web"], "assigned": true, "announced": true,
                    "since_ms": 5, "packets_per_s": 12.5, "drained": false },
                    { "vip": "10.0.0.101", "services": ["api"], "assigned": false, "announced": false,
                    "why": "no-healthy-backend", "since_ms": 5, "packets_per_s": 0.0, "drained": true }] },
        });
        let mut stats: Stats = serde_json::from_value(json).unwrap();
        stats.neighbours = Some(lb_model::stats::Neighbours {
            managed: 3,
            reports: 7,
            resolved: 2,
            resolve_ms_max: 1.5,
            ..Default::default()
        });
        stats.warnings = vec!["x".into()];
        stats
    }

    #[test]
    fn renders_the_cluster_per_node_and_per_peer() {
        let mut stats = sample();
        stats.cluster = Some(lb_model::stats::ClusterFigures {
            synced: true,
            conflicts: 3,
            events_lost: 2,
            peers: vec![lb_model::stats::PeerFigures {
                name: "lb2".into(),
                state: "up".into(),
                entries_sent: 10,
                lag_ms: 1500,
                ..Default::default()
            }],
            ..Default::default()
        });
        let text = render(stats);
        for want in [
            "stickylb_cluster_synced 1",
            "stickylb_cluster_conflicts_total 3",
            "stickylb_cluster_events_lost_total 2",
            "stickylb_cluster_peer_up{peer=\"lb2\",state=\"up\"} 1",
            "stickylb_cluster_peer_entries_sent_total{peer=\"lb2\"} 10",
            "stickylb_cluster_peer_lag_seconds{peer=\"lb2\"} 1.5",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(
            !render(sample()).contains("stickylb_cluster_"),
            "a single node shows none"
        );
    }

    #[test]
    fn renders_counters_with_labels() {
        let text = render(sample());
        for want in [
            "stickylb_service_packets_total{service=\"web\"} 5",
            "stickylb_service_drops_total{service=\"web\",reason=\"no_backend\"} 3",
            "stickylb_service_repicks_total{service=\"web\",reason=\"expired\"} 1",
            "stickylb_backend_new_clients_total{service=\"web\",backend=\"10.0.0.2:80\"} 2",
            "stickylb_backend_up{service=\"web\",backend=\"10.0.0.2:80\",state=\"ready\",health=\"up\"} 1",
            "stickylb_backend_check_latency_seconds{service=\"web\",backend=\"10.0.0.2:80\"} 0.0015",
            "stickylb_vip_announced{vip=\"10.0.0.100\",reason=\"\"} 1",
            "stickylb_vip_announced{vip=\"10.0.0.101\",reason=\"no-healthy-backend\"} 0",
            "stickylb_vip_packets_per_second{vip=\"10.0.0.100\"} 12.5",
            "stickylb_bgp_sessions_established 1",
            "stickylb_routing_daemon_up 1",
            "stickylb_node_draining 0",
            "stickylb_stick_table_capacity 200000",
            "stickylb_backend_flaps_total{service=\"web\",backend=\"10.0.0.2:80\"} 4",
            "stickylb_service_pinned_clients{service=\"web\"} 7",
            "stickylb_neighbours_managed 3",
            "stickylb_neighbour_reports_total 7",
            "stickylb_neighbour_resolve_seconds_max 0.0015",
            "stickylb_setup_warnings 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
    }

    /// One definition drives the page: every counter of the set has its family, its help
    /// and its sample, so a new counter in `lb-common` shows up without a change here.
    #[test]
    fn every_counter_is_exposed_from_its_definition() {
        // A cluster node with one peer, so that the cluster's gauges have samples too.
        let mut stats = sample();
        stats.cluster = Some(lb_model::stats::ClusterFigures {
            peers: vec![lb_model::stats::PeerFigures {
                name: "lb2".into(),
                state: "up".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let text = render(stats);
        for c in ServiceStats::COUNTERS {
            assert!(
                text.contains(&format!("# HELP {} {}", c.family, c.help)),
                "no help for {}\n{text}",
                c.family
            );
            let sample = match c.reason {
                Some(r) => format!("{}_total{{service=\"web\",reason=\"{r}\"}}", c.family),
                None => format!("{}_total{{service=\"web\"}}", c.family),
            };
            assert!(text.contains(&sample), "no sample {sample}\n{text}");
        }
        for g in lb_model::stats::GAUGES {
            assert!(
                text.contains(&format!("# HELP {} {}", g.name, g.help)),
                "{}",
                g.name
            );
        }
    }
}
