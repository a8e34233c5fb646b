//! `stickylb import`: turns an HAProxy configuration, `ipvsadm-save -n` output or
//! keepalived `virtual_server` blocks into a stickylb configuration file, and says what
//! did not translate.
//!
//! This module owns what the three importers share: the output model ([`FileOut`] and
//! the structs below it, which mirror the configuration file format of docs/CONFIG.md
//! key for key and are written with serde through the `toml` crate), the diagnostics
//! ([`Diagnostic`]: a line of the input, a level and why), and the [`Features`] of the
//! running build that decide how a construct stickylb does not support *yet* is written.
//! The importers themselves are [`haproxy`] and [`ipvs`] (which also reads keepalived).
//!
//! Pure: no I/O, no kernel, no aya or tokio (part of the model crate, fuzzed as it is).
//! The file formats are parsed by hand because no maintained Rust
//! library reads HAProxy's or keepalived's configuration language or ipvsadm's rules
//! format; each is small and line (or brace) oriented.
//!
//! Nothing is dropped silently: every line of the input that does not become part of the
//! output, or becomes it with a different meaning, gets a [`Diagnostic`]:
//! - [`Level::Note`]: not translated, and it does not change which backend a client
//!   reaches or whether it is served (logging, process settings, HTTP error pages, ...);
//! - [`Level::Warning`]: translated approximately, or not at all, and the result serves
//!   clients differently from the original (L7 rules, cookies, leastconn, backup servers,
//!   connection limits, ...);
//! - [`Level::Error`]: the produced file will not load in this build, or a part of the
//!   input could not be read at all.

pub mod haproxy;
pub mod ipvs;

use std::{fmt, net::IpAddr};

use serde::Serialize;

/// A whole stickylb configuration file, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileOut {
    pub service: Vec<ServiceOut>,
}

/// One `[[service]]` section (docs/CONFIG.md). Every value is written explicitly, so the
/// file says what it does without the reader knowing the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceOut {
    pub name: String,
    pub listen: String,
    pub protocol: &'static str,
    pub scheduler: &'static str,
    pub forwarding: &'static str,
    /// `"src/N"`: stickiness by the client's network prefix. Only written when the build
    /// supports it ([`Features::stick_prefix`]); otherwise [`Import::to_toml`] writes it as
    /// a commented-out line (see [`ServiceOut::pending`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stick_on: Option<String>,
    /// Only with `forwarding = "gue"`: the backends' GUE port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encap: Option<EncapOut>,
    pub stick_table: StickTableOut,
    pub health: HealthOut,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backend: Vec<BackendOut>,
    /// Where it came from, written as a comment above the section.
    #[serde(skip)]
    pub origin: String,
    /// Lines this build does not accept yet, written commented out under the section's
    /// scalar keys (e.g. `stick_on = "src/24"`).
    #[serde(skip)]
    pub pending: Vec<String>,
}

/// `encap = { ... }` of an L3 DSR service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EncapOut {
    pub gue_port: u16,
}

/// `stick_table = { ... }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StickTableOut {
    pub size: u64,
    /// A duration (`"30m"`) or `"never"`.
    pub expire: String,
}

/// `health = { ... }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HealthOut {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// Only with `kind = "https"`: `false` = do not verify the backend's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
}

impl HealthOut {
    /// `kind = "none"`: no check, always healthy.
    pub fn none() -> Self {
        HealthOut {
            kind: "none",
            ..HealthOut::default()
        }
    }
}

/// One `[[service.backend]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendOut {
    pub address: String,
    pub weight: u32,
    /// Written only when not `"ready"`.
    #[serde(skip_serializing_if = "is_ready")]
    pub state: &'static str,
}

fn is_ready(s: &&'static str) -> bool {
    *s == "ready"
}

/// How bad a diagnostic is (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Note,
    Warning,
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Note => "note",
            Level::Warning => "warning",
            Level::Error => "error",
        })
    }
}

/// One thing the importer has to say about a line of the input.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// 1-based line of the input (0: the input as a whole).
    pub line: usize,
    pub level: Level,
    /// What it is about, as written (e.g. `balance leastconn`).
    pub what: String,
    /// Why it does not translate, and what was emitted instead.
    pub why: String,
}

impl Diagnostic {
    /// `ORIGIN:LINE: LEVEL: WHAT: WHY`, as compilers print them.
    pub fn render(&self, origin: &str) -> String {
        let place = if self.line == 0 {
            origin.to_string()
        } else {
            format!("{origin}:{}", self.line)
        };
        if self.what.is_empty() {
            format!("{place}: {}: {}", self.level, self.why)
        } else {
            format!("{place}: {}: `{}`: {}", self.level, self.what, self.why)
        }
    }
}

/// Collects diagnostics; the same line never gets the same message twice (a `defaults`
/// line is reported once, not once per proxy using it).
#[derive(Clone, Debug, Default)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(
        &mut self,
        line: usize,
        level: Level,
        what: impl Into<String>,
        why: impl Into<String>,
    ) {
        let d = Diagnostic {
            line,
            level,
            what: what.into(),
            why: why.into(),
        };
        if !self.0.contains(&d) {
            self.0.push(d);
        }
    }

    pub fn note(&mut self, line: usize, what: impl Into<String>, why: impl Into<String>) {
        self.push(line, Level::Note, what, why);
    }

    pub fn warn(&mut self, line: usize, what: impl Into<String>, why: impl Into<String>) {
        self.push(line, Level::Warning, what, why);
    }

    pub fn error(&mut self, line: usize, what: impl Into<String>, why: impl Into<String>) {
        self.push(line, Level::Error, what, why);
    }

    /// In line order (stable within a line).
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.0.sort_by_key(|d| d.line);
        self.0
    }
}

/// What the running build's configuration parser accepts beyond the baseline format, so
/// the importer writes a construct natively when it can and otherwise falls back (with a
/// warning), or marks it as not loadable yet (with an error). Probed from the parser
/// itself ([`Features::of_this_build`]), so the importer follows the build without edits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// `health.kind = "https"` (with `verify`).
    pub https_health: bool,
    /// `forwarding = "ipip"` (the tunnel mode).
    pub ipip: bool,
    /// `forwarding = "gue"` with `encap.gue_port`.
    pub gue: bool,
    /// `stick_on = "src/N"`.
    pub stick_prefix: bool,
}

impl Features {
    /// The whole format as designed: what the golden files are written with.
    pub const ALL: Features = Features {
        https_health: true,
        ipip: true,
        gue: true,
        stick_prefix: true,
    };
    /// Only the baseline format.
    pub const NONE: Features = Features {
        https_health: false,
        ipip: false,
        gue: false,
        stick_prefix: false,
    };

    /// Asks this build's configuration parser which of the constructs it accepts.
    pub fn of_this_build() -> Features {
        Features {
            https_health: probe("", ", kind = \"https\", path = \"/\", verify = false"),
            ipip: probe("forwarding = \"ipip\"\n", ""),
            gue: probe("forwarding = \"gue\"\nencap = { gue_port = 6080 }\n", ""),
            stick_prefix: probe("stick_on = \"src/24\"\n", ""),
        }
    }
}

/// Whether a one-service configuration with `service` keys and `health` keys added loads.
fn probe(service: &str, health: &str) -> bool {
    let text = format!(
        "[[service]]\nname = \"probe\"\nlisten = \"192.0.2.1:443\"\n{service}\
         health = {{ interval = \"2s\"{health} }}\n\
         [[service.backend]]\naddress = \"192.0.2.2\"\n"
    );
    crate::config::parse(&text, "probe").is_ok()
}

/// What an importer was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub features: Features,
    /// VIPs for HAProxy binds on every address (`bind *:80`, `bind :::443`): stickylb
    /// balances a specific address, which the HAProxy file does not say.
    pub vips: Vec<IpAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            features: Features::ALL,
            vips: Vec::new(),
        }
    }
}

/// The result of an import: the configuration and what the importer has to say.
#[derive(Clone, Debug, Default)]
pub struct Import {
    pub file: FileOut,
    pub diagnostics: Vec<Diagnostic>,
    /// What was imported (e.g. `HAProxy configuration`), for the header comment.
    pub source_kind: &'static str,
}

impl Import {
    /// Number of diagnostics at `level`.
    pub fn count(&self, level: Level) -> usize {
        self.diagnostics.iter().filter(|d| d.level == level).count()
    }

    /// The configuration file: a header comment, then each service serialised on its own
    /// (so a comment saying where it came from can precede it).
    pub fn to_toml(&self, origin: &str) -> String {
        let mut out = format!(
            "# stickylb configuration imported by `stickylb import` from the {} {origin}\n\
             # (errors: {}, warnings: {}, notes: {}; see the importer's messages). \
             Reference: docs/CONFIG.md\n",
            self.source_kind,
            self.count(Level::Error),
            self.count(Level::Warning),
            self.count(Level::Note),
        );
        if self.file.service.is_empty() {
            out.push_str("# Nothing to balance was found: no services.\n");
        }
        for s in &self.file.service {
            out.push('\n');
            for line in s.origin.lines() {
                out.push_str("# ");
                out.push_str(line);
                out.push('\n');
            }
            let one = FileOut {
                service: vec![s.clone()],
            };
            let mut text = toml::to_string(&one).unwrap_or_else(|e| {
                // The model holds only strings, integers and booleans: cannot happen.
                format!("# cannot serialise service {:?}: {e}\n", s.name)
            });
            if !s.pending.is_empty() {
                // After the scalar keys, before the first sub-table.
                let at = text.find("\n[").map_or(text.len(), |i| i + 1);
                let mut block = String::new();
                for p in &s.pending {
                    block.push_str("# ");
                    block.push_str(p);
                    block.push('\n');
                }
                text.insert_str(at, &block);
            }
            out.push_str(&text);
        }
        out
    }
}

/// Whether a health-check path is accepted (docs/CONFIG.md): starts with `/`, no spaces
/// or control characters.
pub fn valid_check_path(path: &str) -> bool {
    path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether a name is accepted as a service name (docs/CONFIG.md).
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// A service name made of `name` with characters the format does not accept replaced.
pub fn sanitise_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "service".into()
    } else {
        s
    }
}

/// Makes every service name unique by appending `-2`, `-3`, ... to later duplicates.
pub fn unique_names(services: &mut [ServiceOut]) {
    let mut seen: Vec<String> = Vec::new();
    for s in services.iter_mut() {
        let base = s.name.clone();
        let mut n = 2;
        while seen.contains(&s.name) {
            s.name = format!("{base}-{n}");
            n += 1;
        }
        seen.push(s.name.clone());
    }
}

/// Where a backend came from: its line in the input, its address and its port (none: the
/// service port).
pub type Place = (usize, IpAddr, Option<u16>);

/// Two nat services cannot share a backend address, port and protocol (the planner
/// refuses it: replies could not be told apart). The later service is imported without
/// it, with a warning at the backend's line. `places[i]` lists service `i`'s backends.
pub fn drop_shared_nat_backends(
    services: &mut [ServiceOut],
    places: &mut [Vec<Place>],
    d: &mut Diagnostics,
    what: &str,
) {
    let mut seen: std::collections::BTreeMap<(IpAddr, u16, &'static str), String> =
        std::collections::BTreeMap::new();
    for (svc, places) in services.iter_mut().zip(places.iter_mut()) {
        if svc.forwarding != "nat" {
            continue;
        }
        let port = svc
            .listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(0);
        let mut keep = Vec::new();
        let mut keep_places = Vec::new();
        for (b, place) in svc.backend.drain(..).zip(places.drain(..)) {
            let (line, ip, bport) = place;
            let key = (ip, bport.unwrap_or(port), svc.protocol);
            match seen.get(&key) {
                Some(first) => d.warn(
                    line,
                    format!("{what} {}", b.address),
                    format!(
                        "{} ({}) also serves service {first:?}: two nat services cannot share a \
                         backend address and port in stickylb (their replies could not be told \
                         apart), so service {:?} is imported without it; give the backends \
                         distinct ports per service, or use dsr",
                        endpoint(key.0, key.1),
                        key.2,
                        svc.name
                    ),
                ),
                None => {
                    seen.insert(key, svc.name.clone());
                    keep.push(b);
                    keep_places.push(place);
                }
            }
        }
        svc.backend = keep;
        *places = keep_places;
    }
}

/// The planner's limits: services beyond [`lb_common::MAX_SERVICES`] and backends beyond
/// [`lb_common::MAX_BACKENDS`] (in all) are not imported, with an error.
pub fn enforce_limits(services: &mut Vec<ServiceOut>, d: &mut Diagnostics) {
    let max_services = lb_common::MAX_SERVICES as usize;
    if services.len() > max_services {
        let dropped: Vec<String> = services[max_services..]
            .iter()
            .map(|s| s.name.clone())
            .collect();
        d.error(
            0,
            "",
            format!(
                "stickylb balances at most {max_services} services: the last {} ({}) are not imported",
                dropped.len(),
                shorten_list(&dropped)
            ),
        );
        services.truncate(max_services);
    }
    let max_backends = lb_common::MAX_BACKENDS as usize;
    let mut total = 0;
    for s in services.iter_mut() {
        if total + s.backend.len() > max_backends {
            let keep = max_backends - total;
            d.error(
                0,
                "",
                format!(
                    "stickylb balances at most {max_backends} backends in all: service {:?} is imported with {keep} of its {}",
                    s.name,
                    s.backend.len()
                ),
            );
            s.backend.truncate(keep);
        }
        total += s.backend.len();
    }
}

fn shorten_list(names: &[String]) -> String {
    if names.len() <= 5 {
        names.join(", ")
    } else {
        format!("{}, ... {}", names[..4].join(", "), names[names.len() - 1])
    }
}

/// `"IP:PORT"` as `listen` writes it (`[v6]:port`).
pub fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// A backend address: with a port, or without (the service port).
pub fn backend_address(ip: IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (ip, Some(p)) => endpoint(ip, p),
        (IpAddr::V4(v4), None) => v4.to_string(),
        (IpAddr::V6(v6), None) => format!("[{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_use_the_largest_exact_unit() {
        for (ms, want) in [
            (1_800_000, "30m"),
            (1500, "1500ms"),
            (2000, "2s"),
            (3_600_000, "1h"),
            (86_400_000, "1d"),
            (90_000, "90s"),
            (5_400_000, "90m"),
        ] {
            assert_eq!(crate::duration::format(Duration::from_millis(ms)), want);
        }
    }

    #[test]
    fn names_are_made_unique_and_valid() {
        assert_eq!(sanitise_name("web front/1"), "web_front_1");
        assert!(valid_service_name(&sanitise_name("a b")));
        let mk = |n: &str| ServiceOut {
            name: n.into(),
            listen: "192.0.2.1:80".into(),
            protocol: "tcp",
            scheduler: "roundrobin",
            forwarding: "nat",
            stick_on: None,
            encap: None,
            stick_table: StickTableOut {
                size: 1,
                expire: "30m".into(),
            },
            health: HealthOut::none(),
            backend: vec![],
            origin: String::new(),
            pending: vec![],
        };
        let mut v = vec![mk("a"), mk("a"), mk("a")];
        unique_names(&mut v);
        let names: Vec<_> = v.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "a-2", "a-3"]);
    }

    /// The probe's baseline loads, so a `false` means the construct is missing rather than
    /// the probe being broken; and a construct that does not exist is not found.
    #[test]
    fn the_probe_is_sound() {
        assert!(probe("", ""));
        assert!(probe("scheduler = \"maglev\"\n", ", kind = \"tcp\""));
        assert!(!probe("forwarding = \"carrier-pigeon\"\n", ""));
        let _ = Features::of_this_build();
    }
}
