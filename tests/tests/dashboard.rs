//! The Grafana dashboard (`dist/grafana/stickylb.json`) queries only metrics a running
//! agent exports: every metric name in every panel's PromQL expression (and in the
//! template variables' queries) is found, with at least one sample, in the `/metrics`
//! scrape of an agent started in a namespace topology with health-checked backends and
//! some traffic. Also checks the dashboard's structure (unique panel ids, layout, data
//! source variable, functions it uses).

use std::{collections::BTreeSet, net::SocketAddr, path::Path, time::Duration};

use serde_json::Value;
use stickylb_tests::{agent::Agent, tcp_fetch_all, NameServer, Topology, TopologyOpts};

const PORT: u16 = 80;
const BPORT: u16 = 8080;
const METRICS: &str = "127.0.0.1:9478";

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/grafana/stickylb.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        for q in p["panels"].as_array().into_iter().flatten() {
            out.push(q);
        }
    }
    out
}

/// Removes `open`..`close` spans (not nested), e.g. label matchers and ranges.
fn strip(s: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in s.chars() {
        if c == open {
            depth += 1;
        } else if c == close && depth > 0 {
            depth -= 1;
        } else if depth == 0 {
            out.push(c);
        }
    }
    out
}

const FUNCTIONS: &[&str] = &[
    "sum",
    "rate",
    "increase",
    "count",
    "max",
    "min",
    "avg",
    "label_values",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset"];

/// The metric names a PromQL expression reads; panics on a function this test does not
/// know (so a new one is looked at). Strings, label matchers, ranges and grouping label
/// lists are removed first; what remains is functions (followed by `(`), keywords,
/// numbers, and metric names.
fn metric_names(expr: &str, functions: &mut BTreeSet<String>) -> BTreeSet<String> {
    let no_strings = {
        let mut out = String::new();
        let mut quoted = false;
        for c in expr.chars() {
            if c == '"' {
                quoted = !quoted;
            } else if !quoted {
                out.push(c);
            }
        }
        out
    };
    let s = strip(&strip(&no_strings, '{', '}'), '[', ']');
    let chars: Vec<char> = s.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':' | '$'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let called = chars.get(j) == Some(&'(');
            if word.starts_with('$') {
                continue;
            }
            if GROUPING.contains(&word.as_str()) {
                // `by (a, b)`: skip the label list.
                skip_group = true;
                continue;
            }
            if KEYWORDS.contains(&word.as_str()) {
                continue;
            }
            // Aggregations may put their grouping first: `sum by (x) (...)`.
            if called || FUNCTIONS.contains(&word.as_str()) {
                assert!(
                    FUNCTIONS.contains(&word.as_str()),
                    "{expr}: unknown function {word}"
                );
                functions.insert(word);
                continue;
            }
            names.insert(word);
            continue;
        }
        if c == '(' && skip_group {
            // The grouping label list.
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_group = false;
        }
        i += 1;
    }
    names
}

#[test]
fn promql_metric_names_are_found() {
    let mut f = BTreeSet::new();
    let names = metric_names(
        r#"8 * sum by (service, backend) (rate(stickylb_a_total{instance=~"$instance",service="x"}[$__rate_interval])) / sum(stickylb_b{x="y"}) and on(instance) stickylb_c"#,
        &mut f,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["stickylb_a_total", "stickylb_b", "stickylb_c"]
    );
    assert_eq!(f.into_iter().collect::<Vec<_>>(), ["rate", "sum"]);
}

#[test]
fn the_dashboard_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "stickylb");
    let mut ids = BTreeSet::new();
    let mut exprs = 0;
    for p in panels(&d) {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
        let g = &p["gridPos"];
        assert!(
            g["w"].as_u64().unwrap() <= 24
                && g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(
            p["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{} has no description",
            p["title"]
        );
        for t in p["targets"].as_array().expect("targets") {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
            exprs += 1;
        }
    }
    assert!(exprs >= 20, "{exprs} expressions");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "instance", "service"]);
}

/// Every expression of the dashboard, with the panel title.
fn expressions(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap_or("").to_string(),
                t["expr"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

/// Metric names with at least one sample in a Prometheus text exposition.
fn exported(response: &str) -> BTreeSet<String> {
    let body = response.split_once("\r\n\r\n").map_or(response, |(_, b)| b);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn scrape(topo: &Topology) -> String {
    topo.lb()
        .enter(|| {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(METRICS)?;
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            c.read_to_string(&mut out)?;
            Ok(out)
        })
        .unwrap()
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let d = dashboard();
    let mut functions = BTreeSet::new();
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (title, expr) in expressions(&d) {
        for m in metric_names(&expr, &mut functions) {
            // `label_values(metric, label)`: the label is not a metric.
            if expr.starts_with("label_values(") && !m.starts_with("stickylb_") {
                continue;
            }
            // A single node exports no cluster metrics: tests/tests/cluster.rs checks
            // those against a clustered agent.
            if m.starts_with("stickylb_cluster_") {
                continue;
            }
            wanted.push((title.clone(), m));
        }
    }
    assert!(wanted.len() >= 20, "{wanted:?}");

    let topo = Topology::build(TopologyOpts {
        backends: 3,
        clients: 4,
        ..Default::default()
    })
    .unwrap();
    let _servers: Vec<NameServer> = topo
        .backends()
        .iter()
        .map(|b| NameServer::spawn(&b.ns, BPORT, &b.name).unwrap())
        .collect();
    let mut config = format!(
        "[[service]]\nname = \"web\"\nlisten = \"{}:{PORT}\"\n\
         health = {{ kind = \"tcp\", interval = \"300ms\", timeout = \"200ms\" }}\n",
        topo.vip_v4()
    );
    for b in topo.backends() {
        config.push_str(&format!(
            "[[service.backend]]\naddress = \"{}:{BPORT}\"\n",
            b.v4
        ));
    }
    let mut ifaces = vec![topo.lb_client_if()];
    ifaces.extend(topo.lb_backend_ifs());
    let agent = Agent::start(topo.lb(), &ifaces, &config, &["--metrics", METRICS]).unwrap();
    // A first check that times out on a loaded machine takes a backend down and re-picks
    // its clients mid-connection (a reset): fetch once the verdicts have settled.
    agent.wait_checks_settled().unwrap();
    let vip = SocketAddr::new(topo.vip_v4().into(), PORT);
    let pairs: Vec<_> = topo
        .client_v4s()
        .iter()
        .map(|c| ((*c).into(), vip))
        .collect();
    for r in tcp_fetch_all(topo.client(), &pairs, Duration::from_secs(3)).unwrap() {
        r.unwrap();
    }
    // Checks run every 300 ms: wait (generously) until every backend has a latency.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let body = loop {
        let body = scrape(&topo);
        let latencies = body
            .lines()
            .filter(|l| l.starts_with("stickylb_backend_check_latency_seconds{"))
            .count();
        if latencies == 3 || std::time::Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let have = exported(&body);
    let missing: Vec<_> = wanted.iter().filter(|(_, m)| !have.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the agent does not export: {missing:?}\nexported: {have:?}"
    );
    eprintln!(
        "{} metric names queried by the dashboard, all exported; functions used: {functions:?}",
        wanted.iter().map(|w| &w.1).collect::<BTreeSet<_>>().len()
    );
}
