//! Results: medians, derived figures (net of the wrapper, ratio to the MAC-swap
//! baseline), goals, and the three outputs (terminal table, JSON + Markdown, SVG chart).

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    control_plane::ControlReport,
    netpath::NetpathReport,
    replication::ReplicationReport,
    wrapper::{ProgSize, Sample, Vary},
    Config,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    Baseline,
    /// One operation of the hit path on its own (no wrapper).
    Component,
    Stickylb,
    Scale,
}

#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub key: String,
    pub label: String,
    pub group: Group,
    /// Run behind the packet-resetting wrapper.
    pub wrapped: bool,
    /// The client address the wrapper varies per packet, if any.
    pub vary: Option<Vary>,
    /// XDP action every run returned.
    pub action: String,
    pub packet_bytes: usize,
    /// Stick-table capacity of the instance, where it matters.
    pub table_entries: Option<u32>,
    /// Median of `runs_ns`: ns per packet as the kernel measured it.
    pub ns_per_packet: f64,
    /// Per run: the kernel's `duration` (whole ns per packet).
    pub runs_ns: Vec<u32>,
    /// Per run: wall-clock time of the syscall / packets, including its set-up (which
    /// swaps the XDP dispatcher twice). Diagnostic only.
    pub runs_wall_ns: Vec<f64>,
    /// `ns_per_packet` minus the matching empty case (wrapper + XDP_PASS with the same
    /// client variation; XDP_PASS for runs without the wrapper).
    pub net_ns: Option<f64>,
    /// `ns_per_packet` divided by wrapper + MAC swap (same variation).
    pub vs_macswap: Option<f64>,
}

impl CaseResult {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: &str,
        label: &str,
        group: Group,
        wrapped: bool,
        vary: Option<Vary>,
        action: u32,
        packet_bytes: usize,
        samples: Vec<Sample>,
    ) -> CaseResult {
        let runs_ns: Vec<u32> = samples.iter().map(|s| s.kernel_ns).collect();
        let runs_wall_ns: Vec<f64> = samples.iter().map(|s| s.wall_ns).collect();
        let kernel: Vec<f64> = runs_ns.iter().map(|&n| f64::from(n)).collect();
        CaseResult {
            key: key.to_string(),
            label: label.to_string(),
            group,
            wrapped,
            vary,
            action: action_name(action).to_string(),
            packet_bytes,
            table_entries: None,
            ns_per_packet: median(&kernel),
            runs_ns,
            runs_wall_ns,
            net_ns: None,
            vs_macswap: None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ScaleResult {
    /// Live entries in the stick table.
    pub entries: u32,
    /// `max_entries` as the kernel reports it.
    pub max_entries: u32,
    /// Clients looked up in rotation (all have entries).
    pub rotating_clients: u32,
    /// Seconds to insert `entries` from userspace, one `bpf(BPF_MAP_UPDATE_ELEM)` each.
    pub fill_s: f64,
    /// Kernel accounting of the map (`memlock:` in fdinfo).
    pub memlock_bytes: u64,
    /// `memlock_bytes / max_entries` (the LRU hash is preallocated).
    pub bytes_per_entry: f64,
    pub case: CaseResult,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub nproc: usize,
    pub kernel: String,
    pub mem_total_kib: u64,
    pub bpf_jit_enable: String,
    /// CPU the benchmark ran on.
    pub cpu: usize,
    /// `/proc/loadavg` when the run started (other work on the machine adds noise).
    pub loadavg: String,
    pub date: String,
}

impl Machine {
    pub fn detect(cpu: usize) -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let mem_total_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            cpu_model,
            // SAFETY: sysconf has no preconditions.
            nproc: usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) })
                .unwrap_or(0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            mem_total_kib,
            bpf_jit_enable: read("/proc/sys/net/core/bpf_jit_enable").trim().to_string(),
            cpu,
            loadavg: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            date,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: f64,
    pub limit: f64,
    pub met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub config: Config,
    pub elapsed_s: f64,
    pub cases: Vec<CaseResult>,
    pub scale: Vec<ScaleResult>,
    pub programs: Vec<ProgSize>,
    pub goals: Vec<Goal>,
    /// Part 3, when run.
    pub netpath: Option<NetpathReport>,
    /// Part 4, when run.
    pub control: Option<ControlReport>,
    /// Part 5, when run.
    pub replication: Option<ReplicationReport>,
    /// Part 6.
    pub agents: Option<crate::cluster_agents::AgentsReport>,
}

/// Median over rounds of `f(a[i], b[i])`; `None` if the run counts differ.
fn paired(a: &[u32], b: &[u32], f: impl Fn(f64, f64) -> f64) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let v: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f(f64::from(x), f64::from(y)))
        .collect();
    Some(median(&v))
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn action_name(a: u32) -> &'static str {
    match a {
        0 => "ABORTED",
        1 => "DROP",
        2 => "PASS",
        3 => "TX",
        4 => "REDIRECT",
        _ => "?",
    }
}

/// 1024 → "1k", 100000 → "100k", 10000000 → "10M".
pub fn count(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else if n == 1024 {
        "1k (1 024)".into()
    } else {
        n.to_string()
    }
}

impl Report {
    pub fn new(
        machine: Machine,
        config: Config,
        cases: Vec<CaseResult>,
        scale: Vec<ScaleResult>,
        programs: Vec<ProgSize>,
    ) -> Report {
        Report {
            machine,
            config,
            elapsed_s: 0.0,
            cases,
            scale,
            programs,
            goals: Vec::new(),
            netpath: None,
            control: None,
            replication: None,
            agents: None,
        }
    }

    fn ns(&self, key: &str) -> Option<f64> {
        self.case(key).map(|c| c.ns_per_packet)
    }

    fn case(&self, key: &str) -> Option<&CaseResult> {
        self.cases
            .iter()
            .chain(self.scale.iter().map(|s| &s.case))
            .find(|c| c.key == key)
    }

    /// Fills in net costs, ratios and goals. Runs are interleaved (run i of every case
    /// belongs to round i), so differences and ratios are taken within each round and
    /// the median over rounds is reported: a burst of other load hits both sides.
    pub fn finish(&mut self) {
        let runs = |key: &str| self.case(key).map(|c| c.runs_ns.clone());
        let pass_direct = runs("pass_direct");
        let pass = runs("pass");
        let pass_vary = runs("pass_vary");
        let macswap = runs("macswap");
        let macswap_vary = runs("macswap_vary");
        let derive = |c: &mut CaseResult| {
            let (empty, mac) = match (c.wrapped, c.vary.is_some()) {
                (false, _) => (&pass_direct, &None),
                (true, false) => (&pass, &macswap),
                (true, true) => (&pass_vary, &macswap_vary),
            };
            c.net_ns = empty
                .as_ref()
                .and_then(|e| paired(&c.runs_ns, e, |a, b| a - b));
            c.vs_macswap = mac
                .as_ref()
                .and_then(|m| paired(&c.runs_ns, m, |a, b| a / b));
        };
        self.cases.iter_mut().for_each(derive);
        self.scale.iter_mut().for_each(|s| derive(&mut s.case));

        let ratio = |key: &str, cases: &[CaseResult]| {
            cases
                .iter()
                .find(|c| c.key == key)
                .and_then(|c| c.vs_macswap)
        };
        let mut goals = Vec::new();
        for (key, what, limit) in [
            ("hit_v4", "IPv4 NAT hit ≤ 2× wrapper + MAC swap", 2.0),
            ("hit_v6", "IPv6 NAT hit ≤ 2× wrapper + MAC swap", 2.0),
            ("hit_dsr", "IPv4 DSR hit ≤ 2× wrapper + MAC swap", 2.0),
            (
                "new_v4_rr",
                "new client (round-robin) ≤ 4× wrapper + MAC swap",
                4.0,
            ),
            (
                "new_v4_maglev",
                "new client (Maglev) ≤ 4× wrapper + MAC swap",
                4.0,
            ),
            (
                "other_v4",
                "non-service traffic ≤ 1.5× wrapper + MAC swap",
                1.5,
            ),
        ] {
            if let Some(r) = ratio(key, &self.cases) {
                goals.push(Goal {
                    goal: what.to_string(),
                    measured: r,
                    limit,
                    met: r <= limit,
                });
            }
        }
        let small = self.scale.iter().find(|s| s.entries <= 1024);
        let big = self
            .scale
            .iter()
            .filter(|s| s.entries <= 1_000_000)
            .max_by_key(|s| s.entries);
        if let (Some(a), Some(b)) = (small, big) {
            if b.entries > a.entries {
                let what = format!(
                    "hit cost {} → {} entries ≤ 1.5×",
                    count(u64::from(a.entries)),
                    count(u64::from(b.entries))
                );
                if let Some(raw) = paired(&b.case.runs_ns, &a.case.runs_ns, |x, y| x / y) {
                    goals.push(Goal {
                        goal: format!("{what} (wrapper included)"),
                        measured: raw,
                        limit: 1.5,
                        met: raw <= 1.5,
                    });
                }
                let empty = self.case("pass_vary").map(|c| c.runs_ns.clone());
                let net = |c: &CaseResult| {
                    empty.as_ref().map(|e| {
                        c.runs_ns
                            .iter()
                            .zip(e)
                            .map(|(&x, &p)| f64::from(x) - f64::from(p))
                            .collect::<Vec<f64>>()
                    })
                };
                if let (Some(na), Some(nb)) = (net(&a.case), net(&b.case)) {
                    let ratios: Vec<f64> = nb.iter().zip(&na).map(|(x, y)| x / y).collect();
                    if !ratios.is_empty() {
                        let net = median(&ratios);
                        goals.push(Goal {
                            goal: format!("{what} (net of the wrapper)"),
                            measured: net,
                            limit: 1.5,
                            met: net <= 1.5,
                        });
                    }
                }
            }
        }
        if let Some(np) = &self.netpath {
            for key in ["slb_nat", "slb_dsr"] {
                let (Some(a), Some(b)) = (
                    np.pps.iter().find(|p| p.key == key),
                    np.pps.iter().find(|p| p.key == "nft"),
                ) else {
                    continue;
                };
                let r: Vec<f64> = a
                    .runs_delivered_pps
                    .iter()
                    .zip(&b.runs_delivered_pps)
                    .map(|(x, y)| x / y)
                    .collect();
                let r = median(&r);
                goals.push(Goal {
                    goal: format!("{} ≥ 3× nftables DNAT (packets/s)", a.label),
                    measured: r,
                    limit: 3.0,
                    met: r >= 3.0,
                });
            }
        }
        if let (Some(with), Some(without)) = (self.ns("new_v4_rr_events"), self.ns("new_v4_rr")) {
            let extra = (with / without - 1.0) * 100.0;
            goals.push(Goal {
                goal: "stick-table events on the new-client path (% added)".into(),
                measured: extra,
                limit: 10.0,
                met: extra <= 10.0,
            });
        }
        if let Some(r) = &self.replication {
            if let Some(l) = r.lag.iter().find(|l| l.rate == 50_000) {
                goals.push(Goal {
                    goal: "replication lag p99 at 50 000 new clients/s (ms)".into(),
                    measured: l.p99_ms,
                    limit: 10.0,
                    met: l.p99_ms <= 10.0,
                });
            }
            let per_entry = r
                .lag
                .iter()
                .map(|l| l.bytes_per_client)
                .chain([r.refresh.bytes_per_client, r.resync.bytes_per_entry])
                .fold(0.0, f64::max);
            goals.push(Goal {
                goal: "replication bytes per entry on the wire (worst case)".into(),
                measured: per_entry,
                limit: 64.0,
                met: per_entry <= 64.0,
            });
            if r.resync.entries >= 1_000_000 {
                goals.push(Goal {
                    goal: "resync of 1M entries (s)".into(),
                    measured: r.resync.seconds,
                    limit: 3.0,
                    met: r.resync.seconds <= 3.0,
                });
            }
        }
        self.goals = goals;
    }

    pub fn print(&self) {
        println!();
        print!("{}", self.text_table());
    }

    fn text_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<50} {:>8} {:>7} {:>7} {:>9}",
            "case", "action", "ns/pkt", "net ns", "×MACswap"
        );
        let row = |out: &mut String, c: &CaseResult| {
            let _ = writeln!(
                out,
                "{:<50} {:>8} {:>7.0} {:>7} {:>9}",
                c.label,
                c.action,
                c.ns_per_packet,
                c.net_ns.map_or("-".into(), |n| format!("{n:.0}")),
                c.vs_macswap.map_or("-".into(), |r| format!("{r:.2}")),
            );
        };
        for c in &self.cases {
            row(&mut out, c);
        }
        for s in &self.scale {
            row(&mut out, &s.case);
        }
        let _ = writeln!(
            out,
            "\n{:<12} {:>10} {:>11} {:>8} {:>7} {:>12} {:>8} {:>7}",
            "entries",
            "max_entries",
            "rotation",
            "ns/pkt",
            "net ns",
            "memlock MiB",
            "B/entry",
            "fill s"
        );
        for s in &self.scale {
            let _ = writeln!(
                out,
                "{:<12} {:>10} {:>11} {:>8.0} {:>7} {:>12.1} {:>8.1} {:>7.1}",
                count(u64::from(s.entries)),
                s.max_entries,
                s.rotating_clients,
                s.case.ns_per_packet,
                s.case.net_ns.map_or("-".into(), |n| format!("{n:.0}")),
                s.memlock_bytes as f64 / (1024.0 * 1024.0),
                s.bytes_per_entry,
                s.fill_s,
            );
        }
        let _ = writeln!(
            out,
            "\n{:<16} {:>14} {:>12} {:>11}",
            "program", "verified insns", "xlated insns", "JIT bytes"
        );
        for p in &self.programs {
            let _ = writeln!(
                out,
                "{:<16} {:>14} {:>12} {:>11}",
                p.name,
                p.verified_insns.map_or("-".into(), |v| v.to_string()),
                p.xlated_insns.map_or("-".into(), |v| v.to_string()),
                p.jited_bytes
            );
        }
        if let Some(np) = &self.netpath {
            out.push_str(&np.text());
        }
        if let Some(cp) = &self.control {
            out.push_str(&cp.text());
        }
        if let Some(r) = &self.replication {
            out.push_str(&r.text());
        }
        if let Some(r) = &self.agents {
            out.push_str(&r.text());
        }
        let _ = writeln!(out);
        for g in &self.goals {
            let _ = writeln!(
                out,
                "goal {:<62} {:>5.2} ({} {:.1}) {}",
                g.goal,
                g.measured,
                if g.goal.contains('≥') { "≥" } else { "≤" },
                g.limit,
                if g.met { "met" } else { "NOT met" }
            );
        }
        out
    }

    /// The tables as Markdown, for `docs/BENCHMARKS.md`.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Measured {} on {} × {} ({} MiB), kernel {}, JIT {}; pinned to CPU {}. \
             Load average at the start: {}. {} runs × {} packets per case, median; {} run, \
             took {:.0} s.\n",
            m.date,
            m.nproc,
            m.cpu_model,
            m.mem_total_kib / 1024,
            m.kernel,
            if m.bpf_jit_enable == "1" {
                "on"
            } else {
                "off?"
            },
            m.cpu,
            m.loadavg,
            self.config.runs,
            self.config.repeat,
            if self.config.quick { "quick" } else { "full" },
            self.elapsed_s
        );
        let _ = writeln!(
            out,
            "| case | action | ns/packet | net ns | × wrapper + MAC swap |\n|---|---|---:|---:|---:|"
        );
        let row = |out: &mut String, c: &CaseResult| {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} |",
                c.label,
                c.action,
                c.ns_per_packet,
                c.net_ns.map_or("–".into(), |n| format!("{n:.0}")),
                c.vs_macswap.map_or("–".into(), |r| format!("{r:.2}")),
            );
        };
        for c in &self.cases {
            row(&mut out, c);
        }
        let _ = writeln!(
            out,
            "\n| live entries | max_entries | clients in rotation | ns/packet | net ns | memlock | bytes/entry | fill |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.scale {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {} | {:.1} MiB | {:.1} | {:.1} s |",
                count(u64::from(s.entries)),
                s.max_entries,
                s.rotating_clients,
                s.case.ns_per_packet,
                s.case.net_ns.map_or("–".into(), |n| format!("{n:.0}")),
                s.memlock_bytes as f64 / (1024.0 * 1024.0),
                s.bytes_per_entry,
                s.fill_s
            );
        }
        let _ = writeln!(
            out,
            "\n| program | verified insns | xlated insns | JIT bytes |\n|---|---:|---:|---:|"
        );
        for p in &self.programs {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                p.name,
                p.verified_insns.map_or("–".into(), |v| v.to_string()),
                p.xlated_insns.map_or("–".into(), |v| v.to_string()),
                p.jited_bytes
            );
        }
        if let Some(np) = &self.netpath {
            out.push_str(&np.markdown());
        }
        if let Some(cp) = &self.control {
            out.push_str(&cp.markdown());
        }
        if let Some(r) = &self.replication {
            out.push_str(&r.markdown());
        }
        if let Some(r) = &self.agents {
            out.push_str(&r.markdown());
        }
        let _ = writeln!(out, "\n| goal | measured | limit | |\n|---|---:|---:|---|");
        for g in &self.goals {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {}{:.1} | {} |",
                g.goal,
                g.measured,
                if g.goal.contains('≥') { "≥ " } else { "" },
                g.limit,
                if g.met { "met" } else { "**not met**" }
            );
        }
        out
    }

    /// Horizontal bars of ns/packet: the wrapper + XDP_PASS share in grey, the rest in
    /// the group's colour; dashed lines at 2× and 3× wrapper + MAC swap.
    pub fn svg(&self) -> String {
        let rows: Vec<&CaseResult> = self
            .cases
            .iter()
            .chain(self.scale.iter().map(|s| &s.case))
            .collect();
        let max = rows
            .iter()
            .map(|c| c.ns_per_packet)
            .chain(self.ns("macswap").map(|m| m * 3.0))
            .fold(1.0, f64::max);
        let (label_w, bar_w, row_h, top) = (330.0, 480.0, 22.0, 74.0);
        let width = label_w + bar_w + 90.0;
        let height = top + rows.len() as f64 * row_h + 40.0;
        let x = |ns: f64| label_w + ns / max * bar_w;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r##"<rect width="100%" height="100%" fill="#ffffff"/>
<text x="10" y="20" font-size="15" font-weight="bold">stickylb: ns per packet (BPF_PROG_TEST_RUN, median of {} × {})</text>
<text x="10" y="38" fill="#555">{} · {} CPUs · kernel {} · light grey: the wrapper + XDP_PASS share (packet reset)</text>
<text x="10" y="54" fill="#555">dark grey: baselines · green: one operation alone · blue: stickylb · orange: stickylb, stick-table scale</text>"##,
            self.config.runs,
            self.config.repeat,
            xml(&self.machine.cpu_model),
            self.machine.nproc,
            xml(&self.machine.kernel)
        );
        for (i, c) in rows.iter().enumerate() {
            let y = top + i as f64 * row_h;
            let colour = match c.group {
                Group::Baseline => "#7f8c8d",
                Group::Component => "#16a085",
                Group::Stickylb => "#2e86de",
                Group::Scale => "#e67e22",
            };
            let grey = if c.wrapped {
                c.net_ns.map_or(0.0, |n| (c.ns_per_packet - n).max(0.0))
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                label_w - 8.0,
                y + 14.0,
                xml(&c.label)
            );
            if grey > 0.0 {
                let _ = writeln!(
                    s,
                    r##"<rect x="{label_w}" y="{:.1}" width="{:.1}" height="16" fill="#d5d8dc"/>"##,
                    y + 2.0,
                    x(grey) - label_w
                );
            }
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="16" fill="{colour}"/>
<text x="{:.1}" y="{:.1}">{:.0} ns</text>"##,
                x(grey),
                y + 2.0,
                (x(c.ns_per_packet) - x(grey)).max(0.5),
                x(c.ns_per_packet) + 5.0,
                y + 14.0,
                c.ns_per_packet
            );
        }
        let bottom = top + rows.len() as f64 * row_h;
        if let Some(m) = self.ns("macswap") {
            // The 2× label left of its line, the 3× label right of its line.
            for (k, anchor, dx) in [(2.0, "end", -3.0), (3.0, "start", 3.0)] {
                let lx = x(m * k);
                let _ = writeln!(
                    s,
                    r##"<line x1="{lx:.1}" y1="{:.1}" x2="{lx:.1}" y2="{:.1}" stroke="#c0392b" stroke-dasharray="4 3"/>
<text x="{:.1}" y="{:.1}" fill="#c0392b" text-anchor="{anchor}">{k}× wrapper + MAC swap</text>"##,
                    top - 4.0,
                    bottom,
                    lx + dx,
                    bottom + 16.0
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        let mut files = vec![
            ("latest.json", json),
            ("latest.md", self.markdown()),
            ("latest.svg", self.svg()),
        ];
        if let Some(np) = &self.netpath {
            files.push(("latest-netpath.svg", np.svg(&self.machine)));
        }
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

pub fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
