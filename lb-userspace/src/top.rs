//! `stickylb top`: a live view of every service and backend, polled over the control socket.
//!
//! Every refresh sends `stats` and shows, per service and per backend, health, state, weight
//! and rates: packets/s, bytes/s, new clients/s, re-picks/s, drops/s and packets passed to
//! the kernel instead of forwarded (no neighbour entry yet, TTL expiring). A rate is the
//! difference of a counter between two polls divided by the time between them; it shows `-`
//! on the first poll and when a counter went backwards (the service or backend was
//! re-created).
//!
//! "Pinned" is the number of stick-table entries, i.e. clients currently stuck to a service
//! or backend. The `stats` answer only has the whole table's fill, so `top` asks the agent
//! with `table.show {service[, backend], limit: 0}`, which counts without sending rows but
//! walks the whole stick table once per call. To keep a refresh cheap for the agent, the
//! counts are taken only while the walks stay within [`PINNED_BUDGET`] entry reads per refresh:
//! per backend and per service when that fits, per service only when that fits, otherwise not
//! at all (the footer says which). An empty table costs nothing.
//!
//! On a terminal this is a full-screen view (q, Esc or Ctrl-C quits; arrows/PgUp/PgDn
//! scroll). When stdout is not a terminal, or with `--once`, `--iterations` or `--json`, it
//! prints one plain-text table (or one JSON line) per interval instead, every one with rates.

use std::{
    collections::HashMap,
    io::{self, IsTerminal, Write},
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::Value;

use crate::control::{self, ClientError, Request};

/// Exit code when the agent refused a request.
const EXIT_REFUSED: u8 = 1;
/// Exit code when the agent is not reachable.
const EXIT_UNREACHABLE: u8 = 3;
/// Most stick-table entries the agent may read per refresh to count pinned clients.
pub const PINNED_BUDGET: u64 = 100_000;
/// Timeout of one control request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `stickylb top`.
#[derive(clap::Args, Clone, Debug)]
pub struct TopArgs {
    /// Time between refreshes, e.g. 1s, 500ms, 2 (seconds; at least 100ms).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Print one plain-text snapshot (rates over one interval) and exit.
    #[arg(long, conflicts_with = "iterations")]
    pub once: bool,
    /// Print N plain-text snapshots, one per interval, then exit.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
}

/// Parses `1s`, `500ms`, `1.5` (seconds).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an interval: give e.g. 1s, 500ms or 2"))?;
    let secs = v * scale;
    if !secs.is_finite() || secs < 0.1 || secs > 3600.0 {
        return Err(format!(
            "interval {s:?} is out of range: give 100ms to 3600s"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// One line of the view: a service (`backend` is `None`) or one of its backends.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub service: String,
    pub backend: Option<String>,
    /// Backend: up | down | none (no health check). Service: empty.
    pub health: String,
    /// Backend: effective state up | drain | down. Service: "N/M up".
    pub state: String,
    pub weight: Option<u64>,
    pub packets_per_s: Option<f64>,
    pub bytes_per_s: Option<f64>,
    pub new_clients_per_s: Option<f64>,
    /// Stick-table entries (clients) pinned here, when counted.
    pub pinned: Option<u64>,
    /// Service only: clients re-picked (entry expired or backend down) per second.
    pub repicks_per_s: Option<f64>,
    /// Service only: packets dropped (no backend, no route) per second.
    pub drops_per_s: Option<f64>,
    /// Service only: packets handed to the kernel instead of forwarded (no neighbour entry
    /// yet, TTL expiring) per second.
    pub passed_per_s: Option<f64>,
    /// Backend only: latency of the last successful health check.
    pub check_latency_us: Option<u64>,
}

/// A snapshot ready to draw.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct View {
    pub rows: Vec<Row>,
    pub stick_entries: Option<u64>,
    pub stick_capacity: Option<u64>,
    /// What "pinned" was counted for: backend | service | none.
    pub pinned_scope: String,
    /// Seconds the rates are computed over (0 when there is no previous poll).
    pub interval_s: f64,
}

fn sum(v: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter().map(|k| v.get(*k).and_then(Value::as_u64)).sum()
}

fn rate(cur: &Value, prev: Option<&Value>, keys: &[&str], secs: f64) -> Option<f64> {
    let c = sum(cur, keys)?;
    let p = sum(prev?, keys)?;
    if c < p || secs <= 0.0 {
        return None;
    }
    Some((c - p) as f64 / secs)
}

fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("-").to_string()
}

/// Builds the view from the current `stats` answer (optionally annotated with `pinned`
/// counts by [`poll`]) and the previous one, `elapsed` apart. Pure.
pub fn view(prev: Option<&Value>, cur: &Value, elapsed: Duration) -> View {
    let secs = elapsed.as_secs_f64();
    let prev_services: HashMap<&str, &Value> = prev
        .and_then(|p| p["services"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["name"].as_str()?, s)))
        .collect();
    let mut rows = Vec::new();
    for svc in cur["services"].as_array().into_iter().flatten() {
        let name = text(svc, "name");
        let psvc = prev_services.get(name.as_str()).copied();
        let backends = svc["backends"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let up = backends.iter().filter(|b| b["state"] == "up").count();
        rows.push(Row {
            service: name.clone(),
            backend: None,
            health: String::new(),
            state: format!("{up}/{} up", backends.len()),
            weight: None,
            packets_per_s: rate(svc, psvc, &["packets"], secs),
            bytes_per_s: rate(svc, psvc, &["bytes"], secs),
            new_clients_per_s: rate(svc, psvc, &["new_clients"], secs),
            pinned: svc["pinned"].as_u64(),
            repicks_per_s: rate(svc, psvc, &["repick_expired", "repick_down"], secs),
            drops_per_s: rate(
                svc,
                psvc,
                &["drop_no_backend", "drop_no_route", "drop_no_neigh"],
                secs,
            ),
            passed_per_s: rate(svc, psvc, &["fib_miss", "pass_ttl"], secs),
            check_latency_us: None,
        });
        let prev_backends: HashMap<&str, &Value> = psvc
            .and_then(|p| p["backends"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|b| Some((b["address"].as_str()?, b)))
            .collect();
        for b in backends {
            let addr = text(b, "address");
            let pb = prev_backends.get(addr.as_str()).copied();
            rows.push(Row {
                service: name.clone(),
                backend: Some(addr),
                health: text(b, "health"),
                state: text(b, "state"),
                weight: b["weight"].as_u64(),
                packets_per_s: rate(b, pb, &["packets"], secs),
                bytes_per_s: rate(b, pb, &["bytes"], secs),
                new_clients_per_s: rate(b, pb, &["new_clients"], secs),
                pinned: b["pinned"].as_u64(),
                repicks_per_s: None,
                drops_per_s: None,
                passed_per_s: None,
                check_latency_us: b["check"]["last_latency_us"].as_u64(),
            });
        }
    }
    View {
        rows,
        stick_entries: cur["stick_table"]["entries"].as_u64(),
        stick_capacity: cur["stick_table"]["capacity"].as_u64(),
        pinned_scope: cur["pinned_scope"].as_str().unwrap_or("none").to_string(),
        interval_s: if prev.is_some() { secs } else { 0.0 },
    }
}

/// A rate in a short form: 0.5, 12, 3.4k, 1.2M, 5.0G.
pub fn human(x: Option<f64>) -> String {
    let Some(x) = x else { return "-".into() };
    if x < 10.0 {
        format!("{x:.1}")
    } else if x < 1e3 {
        format!("{x:.0}")
    } else if x < 1e6 {
        format!("{:.1}k", x / 1e3)
    } else if x < 1e9 {
        format!("{:.1}M", x / 1e6)
    } else {
        format!("{:.1}G", x / 1e9)
    }
}

fn opt<T: ToString>(x: Option<T>) -> String {
    x.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn latency(us: Option<u64>) -> String {
    match us {
        None => String::new(),
        Some(us) if us < 1000 => format!("{us}us"),
        Some(us) => format!("{:.1}ms", us as f64 / 1000.0),
    }
}

/// Column headers, shared by the text and the terminal view.
pub const HEADERS: [&str; 12] = [
    "SERVICE / BACKEND",
    "HEALTH",
    "STATE",
    "WEIGHT",
    "PKTS/S",
    "BYTES/S",
    "NEW/S",
    "PINNED",
    "REPICK/S",
    "DROPS/S",
    "PASS/S",
    "CHECK",
];

/// The cells of one row, in [`HEADERS`] order.
pub fn cells(r: &Row) -> [String; 12] {
    let service_only = |x: Option<f64>| {
        if r.backend.is_none() {
            human(x)
        } else {
            String::new()
        }
    };
    [
        match &r.backend {
            None => r.service.clone(),
            Some(b) => format!("  {b}"),
        },
        r.health.clone(),
        r.state.clone(),
        r.weight.map(|w| w.to_string()).unwrap_or_default(),
        human(r.packets_per_s),
        human(r.bytes_per_s),
        human(r.new_clients_per_s),
        opt(r.pinned),
        service_only(r.repicks_per_s),
        service_only(r.drops_per_s),
        service_only(r.passed_per_s),
        latency(r.check_latency_us),
    ]
}

/// The summary line: stick-table fill and what the numbers mean.
pub fn summary(v: &View) -> String {
    let fill = match (v.stick_entries, v.stick_capacity) {
        (Some(e), Some(c)) if c > 0 => {
            format!("{e} / {c} ({:.1}%)", e as f64 * 100.0 / c as f64)
        }
        (e, c) => format!("{} / {}", opt(e), opt(c)),
    };
    let pinned = match v.pinned_scope.as_str() {
        "backend" => "pinned: per backend",
        "service" => "pinned: per service (table too large to count per backend)",
        _ => "pinned: not counted (table too large)",
    };
    let rates = if v.interval_s > 0.0 {
        format!("rates over {:.1}s", v.interval_s)
    } else {
        "rates: waiting for a second poll".into()
    };
    format!("stick table {fill}   {pinned}   {rates}")
}

/// The plain-text rendering of a view (used when stdout is not a terminal).
pub fn render_text(v: &View) -> String {
    let all: Vec<[String; 12]> = v.rows.iter().map(cells).collect();
    let mut widths = HEADERS.map(str::len);
    for c in &all {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |c: &[String; 12]| {
        let mut s = String::new();
        for (i, (cell, w)) in c.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            // Names and states left-aligned, numbers right-aligned.
            if i <= 2 {
                s.push_str(&format!("{cell:<w$}"));
            } else {
                s.push_str(&format!("{cell:>w$}"));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = summary(v);
    out.push('\n');
    out.push_str(&line(&HEADERS.map(String::from)));
    out.push('\n');
    for c in &all {
        out.push_str(&line(c));
        out.push('\n');
    }
    if v.rows.is_empty() {
        out.push_str("(no services)\n");
    }
    out
}

/// Why a poll failed.
#[derive(Debug)]
pub enum PollError {
    Client(ClientError),
    Refused(String),
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollError::Client(e) => write!(f, "{e}"),
            PollError::Refused(e) => write!(f, "refused: {e}"),
        }
    }
}

impl PollError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            PollError::Client(_) => EXIT_UNREACHABLE,
            PollError::Refused(_) => EXIT_REFUSED,
        })
    }
}

fn ask(socket: &Path, req: &Request) -> Result<Value, PollError> {
    let resp = control::request(socket, req, REQUEST_TIMEOUT).map_err(PollError::Client)?;
    if !resp.ok {
        return Err(PollError::Refused(resp.error.unwrap_or_default()));
    }
    Ok(resp.result.unwrap_or(Value::Null))
}

/// Which pinned counts fit the budget: "backend", "service" or "none".
pub fn pinned_scope(entries: u64, services: u64, backends: u64) -> &'static str {
    if entries == 0 || entries.saturating_mul(services + backends) <= PINNED_BUDGET {
        "backend"
    } else if entries.saturating_mul(services) <= PINNED_BUDGET {
        "service"
    } else {
        "none"
    }
}

fn count(socket: &Path, service: &str, backend: Option<&str>) -> Result<Option<u64>, PollError> {
    let req = Request::TableShow {
        service: Some(service.to_string()),
        backend: backend.map(str::to_string),
        limit: Some(0),
    };
    match ask(socket, &req) {
        Ok(v) => Ok(v["total"].as_u64()),
        // Removed between the two requests: no count.
        Err(PollError::Refused(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sends `stats` and adds `pinned` counts (within the budget) to its services and backends,
/// and `pinned_scope` to the top level.
pub fn poll(socket: &Path) -> Result<Value, PollError> {
    let mut stats = ask(socket, &Request::Stats)?;
    let entries = stats["stick_table"]["entries"].as_u64().unwrap_or(0);
    let Some(services) = stats["services"].as_array_mut() else {
        return Ok(stats);
    };
    let nsvc = services.len() as u64;
    let nback: u64 = services
        .iter()
        .map(|s| s["backends"].as_array().map_or(0, |b| b.len() as u64))
        .sum();
    let scope = pinned_scope(entries, nsvc, nback);
    for svc in services.iter_mut() {
        let name = text(svc, "name");
        if scope == "none" {
            break;
        }
        let n = if entries == 0 {
            Some(0)
        } else {
            count(socket, &name, None)?
        };
        svc["pinned"] = n.into();
        if scope != "backend" {
            continue;
        }
        for b in svc["backends"].as_array_mut().into_iter().flatten() {
            let n = if entries == 0 {
                Some(0)
            } else {
                count(socket, &name, Some(&text(b, "address")))?
            };
            b["pinned"] = n.into();
        }
    }
    stats["pinned_scope"] = scope.into();
    Ok(stats)
}

/// Runs `stickylb top`.
pub fn run(socket: &Path, json: bool, args: &TopArgs) -> ExitCode {
    let plain = json || args.once || args.iterations.is_some() || !io::stdout().is_terminal();
    if plain {
        let n = if args.once { Some(1) } else { args.iterations };
        return run_plain(socket, json, args.interval, n);
    }
    let first = match poll(socket) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return e.exit_code();
        }
    };
    match run_tui(socket, args.interval, first) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: terminal: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_plain(socket: &Path, json: bool, interval: Duration, n: Option<u64>) -> ExitCode {
    let mut prev = match poll(socket) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return e.exit_code();
        }
    };
    let mut at = Instant::now();
    let mut printed = 0u64;
    loop {
        std::thread::sleep(interval.saturating_sub(at.elapsed()));
        let cur = match poll(socket) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                return e.exit_code();
            }
        };
        let now = Instant::now();
        let v = view(Some(&prev), &cur, now - at);
        let out = if json {
            format!("{}\n", serde_json::to_string(&v).unwrap_or_default())
        } else if printed > 0 {
            format!("\n{}", render_text(&v))
        } else {
            render_text(&v)
        };
        let mut stdout = io::stdout().lock();
        if stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The reader went away (e.g. `| head`).
            return ExitCode::SUCCESS;
        }
        printed += 1;
        if n.is_some_and(|n| printed >= n) {
            return ExitCode::SUCCESS;
        }
        prev = cur;
        at = now;
    }
}

fn run_tui(socket: &Path, interval: Duration, first: Value) -> io::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

    let mut terminal = ratatui::try_init()?;
    let mut cur = (first, Instant::now());
    let mut shown = view(None, &cur.0, Duration::ZERO);
    let mut error: Option<String> = None;
    let mut scroll = 0usize;
    let mut page = 10usize;
    let mut next_poll = Instant::now() + interval;
    let result = (|| -> io::Result<()> {
        loop {
            terminal.draw(|f| {
                page = draw(f, &shown, error.as_deref(), socket, interval, &mut scroll)
            })?;
            let now = Instant::now();
            if now >= next_poll {
                next_poll = now + interval;
                match poll(socket) {
                    Ok(v) => {
                        let at = Instant::now();
                        shown = view(Some(&cur.0), &v, at - cur.1);
                        cur = (v, at);
                        error = None;
                    }
                    Err(e) => error = Some(format!("retrying: {e}")),
                }
                continue;
            }
            if !event::poll(next_poll - now)? {
                continue;
            }
            let Event::Key(k) = event::read()? else {
                continue; // resize and others: redraw
            };
            if k.kind != KeyEventKind::Press {
                continue;
            }
            match k.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                KeyCode::Up | KeyCode::Char('k') => scroll = scroll.saturating_sub(1),
                KeyCode::Down | KeyCode::Char('j') => scroll += 1,
                KeyCode::PageUp => scroll = scroll.saturating_sub(page),
                KeyCode::PageDown | KeyCode::Char(' ') => scroll += page,
                KeyCode::Home | KeyCode::Char('g') => scroll = 0,
                KeyCode::End | KeyCode::Char('G') => scroll = usize::MAX,
                _ => {}
            }
        }
    })();
    ratatui::restore();
    result
}

/// Columns to show in `avail` cells: all of them when they fit (2 cells between columns),
/// otherwise the least important ones are left out (check latency, passed, re-picks,
/// weight, health), in that order.
pub fn fit_columns(widths: &[u16; 12], avail: u16) -> Vec<usize> {
    let mut cols: Vec<usize> = (0..widths.len()).collect();
    let need =
        |cols: &[usize]| -> u32 { cols.iter().map(|&i| u32::from(widths[i]) + 2).sum::<u32>() - 2 };
    for drop in [11, 10, 8, 3, 1] {
        if need(&cols) <= u32::from(avail) {
            break;
        }
        cols.retain(|&i| i != drop);
    }
    cols
}

/// Draws one frame; returns the number of table rows visible (a page).
fn draw(
    f: &mut ratatui::Frame,
    v: &View,
    error: Option<&str>,
    socket: &Path,
    interval: Duration,
    scroll: &mut usize,
) -> usize {
    use ratatui::{
        layout::{Constraint, Layout},
        style::{Color, Modifier, Style},
        text::{Line, Span},
        widgets::{Block, Cell, Paragraph, Row as TRow, Table},
    };

    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let status = match error {
        Some(e) => Line::from(Span::styled(
            e.to_string(),
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        )),
        None => Line::from(summary(v)),
    };
    let title = Line::from(vec![
        Span::styled(
            "stickylb top",
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!(
            "  {}  every {:.1}s",
            socket.display(),
            interval.as_secs_f64()
        )),
    ]);
    f.render_widget(Paragraph::new(vec![title, status]), head);

    // Body: bordered table, header row plus as many rows as fit.
    let visible = body.height.saturating_sub(3) as usize;
    let max_scroll = v.rows.len().saturating_sub(visible);
    *scroll = (*scroll).min(max_scroll);
    let colour = |s: &str| match s {
        "up" => Style::default().fg(Color::Green),
        "drain" => Style::default().fg(Color::Yellow),
        "down" => Style::default().fg(Color::Red),
        _ => Style::default(),
    };
    let all: Vec<[String; 12]> = v.rows.iter().map(cells).collect();
    let mut widths = HEADERS.map(|h| h.len() as u16);
    for c in &all {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count() as u16);
        }
    }
    let columns = fit_columns(&widths, body.width.saturating_sub(2));
    let rows = v
        .rows
        .iter()
        .zip(&all)
        .skip(*scroll)
        .take(visible)
        .map(|(r, c)| {
            let base = if r.backend.is_none() {
                Style::default().add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            TRow::new(columns.iter().map(|&i| {
                let text = c[i].as_str();
                let style = match i {
                    1 | 2 => base.patch(colour(text)),
                    _ => base,
                };
                let cell = if i >= 3 {
                    Line::from(text).right_aligned()
                } else {
                    Line::from(text)
                };
                Cell::from(cell).style(style)
            }))
        });
    let header = TRow::new(columns.iter().map(|&i| {
        let l = if i >= 3 {
            Line::from(HEADERS[i]).right_aligned()
        } else {
            Line::from(HEADERS[i])
        };
        Cell::from(l)
    }))
    .style(
        Style::default()
            .add_modifier(Modifier::BOLD)
            .add_modifier(Modifier::REVERSED),
    );
    let title = if v.rows.len() > visible {
        format!(
            " rows {}-{} of {} ",
            *scroll + 1,
            (*scroll + visible).min(v.rows.len()),
            v.rows.len()
        )
    } else if v.rows.is_empty() {
        " no services ".into()
    } else {
        String::new()
    };
    let table = Table::new(rows, columns.iter().map(|&i| Constraint::Length(widths[i])))
        .header(header)
        .column_spacing(2)
        .block(Block::bordered().title(title));
    f.render_widget(table, body);

    f.render_widget(
        Paragraph::new(Line::from(Span::styled(
            "q/Esc quit   ↑↓ PgUp PgDn scroll   rates = counter deltas between polls   pinned = stick-table entries",
            Style::default().fg(Color::DarkGray),
        ))),
        foot,
    );
    visible.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stats(packets: u64, bpackets: u64, new: u64, drops: u64) -> Value {
        json!({
            "services": [{
                "name": "web", "packets": packets, "bytes": packets * 100, "new_clients": new,
                "repick_expired": 1, "repick_down": 0, "drop_no_backend": drops, "drop_no_route": 0,
                "drop_no_neigh": 0, "fib_miss": drops * 2, "pass_ttl": 0, "reply_packets": 0, "reply_bytes": 0,
                "pinned": 7,
                "backends": [
                    {"service": "web", "address": "10.0.0.2:80", "weight": 2, "admin": "ready",
                     "health": "up", "state": "up", "packets": bpackets, "bytes": bpackets * 100,
                     "new_clients": new, "pinned": 5,
                     "check": {"up": true, "last_latency_us": 350}},
                    {"service": "web", "address": "10.0.0.3:80", "weight": 1, "admin": "drain",
                     "health": "down", "state": "down", "packets": 0, "bytes": 0,
                     "new_clients": 0, "check": null},
                ],
            }],
            "stick_table": {"entries": 7, "capacity": 1000},
            "pinned_scope": "backend",
        })
    }

    #[test]
    fn rates_are_deltas_over_elapsed_and_text_shows_them() {
        let prev = stats(1000, 600, 10, 0);
        let cur = stats(3000, 1600, 14, 4);
        let v = view(Some(&prev), &cur, Duration::from_secs(2));
        assert_eq!(v.rows.len(), 3);
        let svc = &v.rows[0];
        assert_eq!(svc.backend, None);
        assert_eq!(svc.state, "1/2 up");
        assert_eq!(svc.packets_per_s, Some(1000.0));
        assert_eq!(svc.bytes_per_s, Some(100_000.0));
        assert_eq!(svc.new_clients_per_s, Some(2.0));
        assert_eq!(svc.repicks_per_s, Some(0.0));
        assert_eq!(svc.drops_per_s, Some(2.0));
        assert_eq!(svc.passed_per_s, Some(4.0));
        assert_eq!(svc.pinned, Some(7));
        let b = &v.rows[1];
        assert_eq!(b.backend.as_deref(), Some("10.0.0.2:80"));
        assert_eq!((b.health.as_str(), b.state.as_str()), ("up", "up"));
        assert_eq!(b.weight, Some(2));
        assert_eq!(b.packets_per_s, Some(500.0));
        assert_eq!(b.pinned, Some(5));
        assert_eq!(b.check_latency_us, Some(350));
        assert_eq!(v.rows[2].pinned, None);
        assert_eq!((v.stick_entries, v.stick_capacity), (Some(7), Some(1000)));

        let t = render_text(&v);
        assert!(t.starts_with("stick table 7 / 1000 (0.7%)"), "{t}");
        assert!(t.contains("rates over 2.0s"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("SERVICE / BACKEND"), "{t}");
        let svc_line: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            svc_line,
            ["web", "1/2", "up", "1.0k", "100.0k", "2.0", "7", "0.0", "2.0", "4.0"],
            "{t}"
        );
        let b_line: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            b_line,
            [
                "10.0.0.2:80",
                "up",
                "up",
                "2",
                "500",
                "50.0k",
                "2.0",
                "5",
                "350us"
            ],
            "{t}"
        );
        assert!(
            lines[4].contains("10.0.0.3:80") && lines[4].contains("down"),
            "{t}"
        );
    }

    #[test]
    fn first_poll_and_counter_resets_show_no_rate() {
        let cur = stats(3000, 1600, 14, 4);
        let v = view(None, &cur, Duration::ZERO);
        assert!(v.rows.iter().all(|r| r.packets_per_s.is_none()));
        assert!(render_text(&v).contains("waiting for a second poll"));
        // Counters went backwards (service re-created): no rate rather than a huge one.
        let v = view(
            Some(&stats(5000, 2000, 20, 9)),
            &cur,
            Duration::from_secs(1),
        );
        assert_eq!(v.rows[0].packets_per_s, None);
        assert_eq!(v.rows[0].drops_per_s, None);
        // A backend that is new since the previous poll has no rate either.
        let mut prev = stats(1000, 600, 10, 0);
        prev["services"][0]["backends"]
            .as_array_mut()
            .unwrap()
            .truncate(1);
        let v = view(Some(&prev), &cur, Duration::from_secs(1));
        assert_eq!(v.rows[2].packets_per_s, None);
        assert_eq!(v.rows[1].packets_per_s, Some(1000.0));
    }

    #[test]
    fn pinned_counts_stay_within_budget() {
        assert_eq!(pinned_scope(0, 50, 5000), "backend");
        assert_eq!(pinned_scope(1000, 2, 10), "backend");
        assert_eq!(pinned_scope(20_000, 2, 10), "service");
        assert_eq!(pinned_scope(1_000_000, 2, 10), "none");
    }

    #[test]
    fn narrow_terminals_lose_the_least_important_columns() {
        let widths = HEADERS.map(|h| h.len() as u16);
        let all = (0..12).collect::<Vec<_>>();
        assert_eq!(fit_columns(&widths, 200), all);
        let cols = fit_columns(&widths, 100);
        assert!(!cols.contains(&11) && cols.contains(&7), "{cols:?}");
        assert_eq!(fit_columns(&widths, 10), [0, 2, 4, 5, 6, 7, 9]);
    }

    #[test]
    fn intervals_parse() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("10ms").is_err());
        assert!(parse_interval("fast").is_err());
        assert_eq!(human(Some(1_234_567.0)), "1.2M");
        assert_eq!(human(None), "-");
    }
}
