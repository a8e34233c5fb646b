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
//! or backend, from the agent's last census of the table (counted in the background, so a
//! refresh costs the agent nothing more than the counters; the summary says how old it is).
//!
//! Everything shown comes from the typed `stats` answer (`lb_model::stats`): the rate
//! columns add up the counters their definitions in `lb-common` assign to them, so a new
//! counter shows where its definition says.
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

use lb_common::{counters::Column, CounterSet};
use lb_model::{control::Request, duration, stats::Stats};
use serde::Serialize;

use crate::{
    control::{self, ClientError},
    exit,
};
/// Timeout of one control request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `stickylb top`.
#[derive(clap::Args, Clone, Debug)]
pub struct TopArgs {
    /// Time between refreshes, e.g. 1s, 500ms, 2 (seconds); 100ms to 1h.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Print one plain-text snapshot (rates over one interval) and exit.
    #[arg(long, conflicts_with = "iterations")]
    pub once: bool,
    /// Print N plain-text snapshots, one per interval, then exit.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
}

/// An interval between refreshes: a duration (`1s`, `500ms`, `2`) from 100ms to 1h.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = duration::parse(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!(
            "interval {s:?} is out of range: give 100ms to 3600s"
        ));
    }
    Ok(d)
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
    /// How old the pinned counts are (the agent's last census), in ms.
    pub census_age_ms: u64,
    /// Seconds the rates are computed over (0 when there is no previous poll).
    pub interval_s: f64,
}

/// The rate of `column` between two polls `secs` apart; `None` without a previous poll or
/// when the counters went backwards (the service or backend was re-created).
fn rate<T: CounterSet>(cur: &T, prev: Option<&T>, column: Column, secs: f64) -> Option<f64> {
    let (c, p) = (cur.column(column), prev?.column(column));
    if c < p || secs <= 0.0 {
        return None;
    }
    Some((c - p) as f64 / secs)
}

/// Builds the view from the current `stats` answer and the previous one, `elapsed` apart.
/// Pure.
pub fn view(prev: Option<&Stats>, cur: &Stats, elapsed: Duration) -> View {
    let secs = elapsed.as_secs_f64();
    let prev_services: HashMap<&str, &lb_model::stats::ServiceRow> = prev
        .into_iter()
        .flat_map(|p| &p.services)
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut rows = Vec::new();
    for svc in &cur.services {
        let psvc = prev_services.get(svc.name.as_str()).copied();
        let (up, all) = svc.up();
        let c = &svc.counters.0;
        let p = psvc.map(|p| &p.counters.0);
        rows.push(Row {
            service: svc.name.clone(),
            backend: None,
            health: String::new(),
            state: format!("{up}/{all} up"),
            weight: None,
            packets_per_s: rate(c, p, Column::Packets, secs),
            bytes_per_s: rate(c, p, Column::Bytes, secs),
            new_clients_per_s: rate(c, p, Column::NewClients, secs),
            pinned: svc.pinned,
            repicks_per_s: rate(c, p, Column::Repicks, secs),
            drops_per_s: rate(c, p, Column::Drops, secs),
            passed_per_s: rate(c, p, Column::Passed, secs),
            check_latency_us: None,
        });
        let prev_backends: HashMap<&str, &lb_model::stats::BackendRow> = psvc
            .into_iter()
            .flat_map(|p| &p.backends)
            .map(|b| (b.address.as_str(), b))
            .collect();
        for b in &svc.backends {
            let c = &b.counters.0;
            let p = prev_backends.get(b.address.as_str()).map(|p| &p.counters.0);
            rows.push(Row {
                service: svc.name.clone(),
                backend: Some(b.address.clone()),
                health: b.health.to_string(),
                state: b.state.to_string(),
                weight: Some(u64::from(b.weight)),
                packets_per_s: rate(c, p, Column::Packets, secs),
                bytes_per_s: rate(c, p, Column::Bytes, secs),
                new_clients_per_s: rate(c, p, Column::NewClients, secs),
                pinned: b.pinned,
                repicks_per_s: None,
                drops_per_s: None,
                passed_per_s: None,
                check_latency_us: b.check.as_ref().and_then(|c| c.last_latency_us),
            });
        }
    }
    View {
        rows,
        stick_entries: Some(cur.stick_table.entries),
        stick_capacity: Some(cur.stick_table.capacity),
        census_age_ms: cur.stick_table.census_age_ms,
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
    let pinned = format!(
        "pinned: counted {:.1}s ago",
        v.census_age_ms as f64 / 1000.0
    );
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
            PollError::Client(_) => exit::UNREACHABLE,
            PollError::Refused(_) => exit::REFUSED,
        })
    }
}

/// Sends `stats` and reads the answer.
pub fn poll(socket: &Path) -> Result<Stats, PollError> {
    let resp =
        control::request(socket, &Request::Stats {}, REQUEST_TIMEOUT).map_err(PollError::Client)?;
    if !resp.ok {
        return Err(PollError::Refused(resp.error.unwrap_or_default()));
    }
    serde_json::from_value(resp.result.unwrap_or_default())
        .map_err(|e| PollError::Client(ClientError::BadResponse(format!("stats: {e}"))))
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

fn run_tui(socket: &Path, interval: Duration, first: Stats) -> io::Result<()> {
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

    fn stats(packets: u64, bpackets: u64, new: u64, drops: u64) -> Stats {
        let check = json!({"up": true, "consecutive_ok": 2, "consecutive_fail": 0,
            "last_latency_us": 350, "last_error": null, "checks": 2, "failures": 0,
            "transitions": 0, "last_change_unix_ms": 0});
        serde_json::from_value(json!({
            "services": [{
                "name": "web", "packets": packets, "bytes": packets * 100, "new_clients": new,
                "repick_expired": 1, "repick_down": 0, "drop_no_backend": drops, "drop_no_route": 0,
                "drop_no_neigh": 0, "fib_miss": drops * 2, "pass_ttl": 0, "reply_packets": 0, "reply_bytes": 0,
                "pinned": 7,
                "backends": [
                    {"service": "web", "address": "10.0.0.2:80", "weight": 2, "admin": "ready", "flaps": 0,
                     "health": "up", "state": "up", "packets": bpackets, "bytes": bpackets * 100,
                     "new_clients": new, "pinned": 5,
                     "check": check},
                    {"service": "web", "address": "10.0.0.3:80", "weight": 1, "admin": "drain", "flaps": 1,
                     "health": "down", "state": "down", "packets": 0, "bytes": 0,
                     "new_clients": 0, "check": null},
                ],
            }],
            "stick_table": {"entries": 7, "capacity": 1000, "census_age_ms": 1500},
        }))
        .unwrap()
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
        assert!(t.contains("pinned: counted 1.5s ago"), "{t}");
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

    /// One definition drives the columns: every counter that its definition puts in a
    /// column moves that column's rate, and only that one.
    #[test]
    fn every_counter_lands_in_the_column_its_definition_names() {
        let prev = stats(0, 0, 0, 0);
        for c in lb_common::ServiceStats::COUNTERS {
            let mut cur = prev.clone();
            assert!(cur.services[0].counters.0.set(c.key, 1_000_000));
            let v = view(Some(&prev), &cur, Duration::from_secs(1));
            let r = &v.rows[0];
            let moved: Vec<Column> = [
                (Column::Packets, r.packets_per_s),
                (Column::Bytes, r.bytes_per_s),
                (Column::NewClients, r.new_clients_per_s),
                (Column::Repicks, r.repicks_per_s),
                (Column::Drops, r.drops_per_s),
                (Column::Passed, r.passed_per_s),
            ]
            .into_iter()
            .filter(|(_, rate)| rate.is_some_and(|x| x > 0.0))
            .map(|(col, _)| col)
            .collect();
            let want: Vec<Column> = Some(c.column)
                .filter(|c| *c != Column::None)
                .into_iter()
                .collect();
            assert_eq!(moved, want, "{}", c.key);
        }
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
        prev.services[0].backends.truncate(1);
        let v = view(Some(&prev), &cur, Duration::from_secs(1));
        assert_eq!(v.rows[2].packets_per_s, None);
        assert_eq!(v.rows[1].packets_per_s, Some(1000.0));
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
