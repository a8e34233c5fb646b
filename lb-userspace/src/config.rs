//! The configuration file: TOML `[[service]]` sections with `[[service.backend]]` entries,
//! turned into [`ServiceSpec`]s plus what the agent needs besides (stick-table size, health
//! checks, operator-set backend states).
//!
//! Every error names the file, the line and column, the field (`service[0].backend[1].weight`)
//! and what is accepted. The planner's checks ([`crate::plan::Ids::plan`], which starts with
//! [`crate::plan::validate`]) run at the end of [`parse`] and are reported at the line of the
//! service or backend concerned.
//! The format is described in `docs/CONFIG.md`.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{maglev, MAX_BACKENDS, MAX_SERVICES, RING_REGION};
use toml_edit::{ImDocument, Item, TableLike, Value};

use crate::{
    plan::{self, PlanError, MAX_WEIGHT},
    spec::{
        AdminState, BackendSpec, EncapSpec, Forwarding, HealthConfig, HealthKind, InsertOn,
        OuterSource, Prefix, Protocol, Scheduler, ServiceSpec,
    },
};

/// Default number of stick-table entries of a service.
pub const DEFAULT_STICK_TABLE_SIZE: u32 = lb_common::DEFAULT_STICK_TABLE_SIZE;
/// Default stick-table entry lifetime after the client was last seen.
pub const DEFAULT_EXPIRE: Duration = Duration::from_secs(30 * 60);
/// Default health check interval (HAProxy `inter`).
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Default health check timeout; never more than the interval.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest accepted health check interval.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);

/// A whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub services: Vec<ServiceConfig>,
}

/// One `[[service]]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// What the data path needs. The backends' `state` is
    /// `AdminState::effective(admin, true)`: the state before any health verdict.
    pub spec: ServiceSpec,
    /// Stick-table entries reserved for this service.
    pub stick_table_size: u32,
    pub health: HealthConfig,
    /// Same order as `spec.backends`.
    pub backends: Vec<BackendConfig>,
}

/// One `[[service.backend]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// Port 0 (written as an address without port) = the service port, or for a service
    /// listening on every port, the client's destination port (as in [`BackendSpec`]).
    pub addr: SocketAddr,
    pub weight: u32,
    pub admin: AdminState,
}

/// Why a configuration cannot be used. Every variant names the file; all but `Read` name the
/// line, and `Syntax` / `Field` the column too.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the configuration: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not TOML.
    #[error("{origin}:{line}:{column}: not valid TOML: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A key or value the configuration format does not accept (unknown key, missing key,
    /// wrong type, value out of range, ...).
    #[error("{origin}:{line}:{column}: field `{field}`: {message}")]
    Field {
        origin: String,
        line: usize,
        column: usize,
        /// Path of the field, e.g. `service[0].backend[1].weight` (indices from 0).
        field: String,
        message: String,
    },
    /// A definition refused by the planner ([`crate::plan`]), at the line of the service (or
    /// backend, or `maglev_size`) it concerns.
    #[error("{origin}:{line}: service {service:?}: {}", plan_message(.service, .error))]
    Plan {
        origin: String,
        line: usize,
        service: String,
        /// Boxed: the other variants are much smaller.
        error: Box<PlanError>,
    },
}

impl ConfigError {
    /// The line the error is about (1-based), if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, .. }
            | ConfigError::Field { line, .. }
            | ConfigError::Plan { line, .. } => Some(*line),
        }
    }

    /// The field path the error is about, for [`ConfigError::Field`].
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A [`PlanError`]'s message without the leading `service "x"` already given by the prefix.
fn plan_message(service: &str, error: &PlanError) -> String {
    let msg = error.to_string();
    let quoted = format!("service {service:?}");
    match msg.strip_prefix(&quoted) {
        Some(rest) if rest.starts_with(": ") => rest[2..].to_string(),
        Some(rest) if rest.starts_with(' ') => rest[1..].to_string(),
        _ => msg,
    }
}

impl Config {
    /// The service specs, in file order, ready for [`crate::plan::Ids::plan`].
    pub fn specs(&self) -> Vec<ServiceSpec> {
        self.services.iter().map(|s| s.spec.clone()).collect()
    }

    /// The configuration as TOML that [`parse`] reads back to an equal `Config` (every value
    /// written explicitly; durations are written in whole milliseconds or larger units).
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.services.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let spec = &s.spec;
            let _ = writeln!(out, "[[service]]");
            let _ = writeln!(out, "name = {}", quote(&spec.name));
            let _ = writeln!(out, "listen = {}", quote(&spec.vip.to_string()));
            let _ = writeln!(out, "protocol = {}", quote(protocol_name(spec.protocol)));
            let _ = writeln!(out, "scheduler = {}", quote(scheduler_name(spec.scheduler)));
            let _ = writeln!(
                out,
                "forwarding = {}",
                quote(forwarding_name(spec.forwarding))
            );
            if let (Scheduler::Maglev, Some(size)) = (spec.scheduler, spec.maglev_size) {
                let _ = writeln!(out, "maglev_size = {size}");
            }
            if spec.forwarding.is_encap() {
                let _ = write!(out, "encap = {{ ");
                if spec.forwarding == Forwarding::Gue {
                    let _ = write!(out, "gue_port = {}, ", spec.encap.gue_port);
                }
                match spec.encap.source {
                    OuterSource::Fib => {
                        let _ = writeln!(out, "source = \"fib\" }}");
                    }
                    OuterSource::ClientHash { v4, v6 } => {
                        let _ = write!(out, "source = \"client-hash\"");
                        if let Some(p) = v4 {
                            let _ = write!(out, ", source_prefix_v4 = {}", quote(&p.to_string()));
                        }
                        if let Some(p) = v6 {
                            let _ = write!(out, ", source_prefix_v6 = {}", quote(&p.to_string()));
                        }
                        let _ = writeln!(out, " }}");
                    }
                }
            }
            let expire = spec
                .expire
                .map_or_else(|| "never".to_string(), format_duration);
            let insert_on = match spec.insert_on {
                InsertOn::Any => "any",
                InsertOn::Syn => "syn",
            };
            let _ = writeln!(
                out,
                "stick_table = {{ size = {}, expire = {}, insert_on = {}, insert_cap = {} }}",
                s.stick_table_size,
                quote(&expire),
                quote(insert_on),
                spec.insert_cap
            );
            let h = &s.health;
            let kind = match &h.kind {
                HealthKind::None => "none",
                HealthKind::Tcp => "tcp",
                HealthKind::Http { .. } => "http",
            };
            let _ = write!(
                out,
                "health = {{ kind = {}, interval = {}, timeout = {}, rise = {}, fall = {}",
                quote(kind),
                quote(&format_duration(h.interval)),
                quote(&format_duration(h.timeout)),
                h.rise,
                h.fall
            );
            if let HealthKind::Http {
                path,
                expect_status,
            } = &h.kind
            {
                let _ = write!(out, ", path = {}", quote(path));
                if let Some(status) = expect_status {
                    let _ = write!(out, ", expect_status = {status}");
                }
            }
            out.push_str(" }\n");
            for b in &s.backends {
                let addr = if b.addr.port() == 0 {
                    match b.addr.ip() {
                        IpAddr::V4(ip) => ip.to_string(),
                        IpAddr::V6(ip) => format!("[{ip}]"),
                    }
                } else {
                    b.addr.to_string()
                };
                let _ = writeln!(out, "\n[[service.backend]]");
                let _ = writeln!(out, "address = {}", quote(&addr));
                let _ = writeln!(out, "weight = {}", b.weight);
                let _ = writeln!(out, "state = {}", quote(admin_name(b.admin)));
            }
        }
        out
    }
}

/// Reads and parses a configuration file; errors name `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses a configuration; `origin` (usually the file name) starts every error message.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let cx = Ctx { origin, text };
    let doc = ImDocument::parse(text).map_err(|e| {
        let (line, column) = cx.line_col(e.span().map_or(0, |s| s.start));
        let mut message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        // The line as written, and what TOML expects when the parser does not say.
        let written = text.split('\n').nth(line - 1).unwrap_or("").trim_end();
        let mut shown: String = written.chars().take(80).collect();
        if shown.len() < written.len() {
            shown.push_str("...");
        }
        let _ = write!(message, ", in `{shown}`");
        if message.contains("duplicate key") {
            message.push_str("; give each key once per table");
        } else if !message.contains("expected") {
            message.push_str(
                "; expected TOML such as `[[service]]` or `key = \"string\"` \
                 (docs/CONFIG.md)",
            );
        }
        ConfigError::Syntax {
            origin: origin.to_string(),
            line,
            column,
            message,
        }
    })?;
    let root = Tbl {
        table: doc.as_table(),
        at: 0,
        path: String::new(),
    };
    root.check_keys(&cx, &["service"])?;
    let mut services = Vec::new();
    let mut places = Vec::new();
    if let Some(list) = root.get("service") {
        for t in list.tables(&cx, "[[service]] sections, one per service")? {
            let (service, place) = parse_service(&cx, &t)?;
            services.push(service);
            places.push(place);
        }
    }
    let config = Config { services };
    // A full plan rather than only `plan::validate`: some checks (two nat services sharing a
    // backend) are made while the map entries are computed.
    if let Err(error) = plan::Ids::default().plan(&config.specs()) {
        return Err(cx.plan_error(&config, &places, error));
    }
    Ok(config)
}

/// Parses a duration: a whole number followed by `ms`, `s`, `m`, `h` or `d` (`300ms`, `2s`,
/// `30m`, `1h`, `1d`), or a plain whole number of seconds (`30`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not accepted: {DURATION_HELP}");
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let (unit_ms, unit_s) = match &t[digits..] {
        "ms" => (true, 0),
        "" | "s" => (false, 1),
        "m" => (false, 60),
        "h" => (false, 3600),
        "d" => (false, 86_400),
        _ => return Err(bad()),
    };
    if unit_ms {
        return Ok(Duration::from_millis(n));
    }
    n.checked_mul(unit_s)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long: {DURATION_HELP}"))
}

/// Parses a count: a whole number, optionally followed by `k` (×1000) or `m` (×1 000 000),
/// e.g. `200000`, `200k`, `1m`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not accepted: {SIZE_HELP}");
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let mult = match &t[digits..] {
        "" => 1,
        "k" | "K" => 1_000,
        "m" | "M" => 1_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

const DURATION_HELP: &str = "use a duration such as \"300ms\", \"2s\", \"30m\", \"1h\" or \"1d\" \
                             (units ms, s, m, h, d), or a whole number of seconds";
const SIZE_HELP: &str = "use a whole number, optionally followed by k (×1000) or m (×1000000), \
                         e.g. 200000 or \"200k\"";
const NAME_HELP: &str =
    "a non-empty string of letters, digits, '-', '_', '.' and ':', e.g. \"web\"";
const LISTEN_HELP: &str = "\"IPv4:PORT\" or \"[IPv6]:PORT\", e.g. \"10.0.0.100:80\" or \
                           \"[2001:db8::100]:443\"; port 0 = every port";
const ADDRESS_HELP: &str = "\"IP:PORT\", \"[IPv6]:PORT\", or an address without port \
                            (\"192.168.1.2\", \"[2001:db8::2]\", \"2001:db8::2\") for the service port";

const SERVICE_KEYS: &[&str] = &[
    "name",
    "listen",
    "protocol",
    "scheduler",
    "forwarding",
    "maglev_size",
    "encap",
    "stick_table",
    "health",
    "backend",
];
const ENCAP_KEYS: &[&str] = &["gue_port", "source", "source_prefix_v4", "source_prefix_v6"];
const STICK_KEYS: &[&str] = &["size", "expire", "insert_on", "insert_cap"];
const HEALTH_KEYS: &[&str] = &[
    "kind",
    "interval",
    "timeout",
    "rise",
    "fall",
    "path",
    "expect_status",
];
const BACKEND_KEYS: &[&str] = &["address", "weight", "state"];

/// Names people coming from HAProxy or other balancers may try, and the key they mean.
const ALIASES: &[(&str, &str)] = &[
    ("vip", "listen"),
    ("bind", "listen"),
    ("balance", "scheduler"),
    ("algorithm", "scheduler"),
    ("mode", "forwarding"),
    ("server", "backend"),
    ("servers", "backend"),
    ("backends", "backend"),
    ("stick-table", "stick_table"),
    ("check", "health"),
    ("addr", "address"),
    ("inter", "interval"),
    ("type", "kind"),
];

/// Where a service and its parts start (byte offsets), to place plan errors.
struct Place {
    at: usize,
    maglev_size: Option<usize>,
    backends: Vec<usize>,
}

struct Ctx<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    fn field_error(&self, at: usize, field: &str, message: String) -> ConfigError {
        let (line, column) = self.line_col(at);
        ConfigError::Field {
            origin: self.origin.to_string(),
            line,
            column,
            field: field.to_string(),
            message,
        }
    }

    fn plan_error(&self, config: &Config, places: &[Place], error: PlanError) -> ConfigError {
        let services = &config.services;
        let by_name = |name: &str| services.iter().position(|s| s.spec.name == name);
        let backend_of = |svc: Option<usize>, addr: SocketAddr, nth: usize| {
            svc.and_then(|i| {
                services[i]
                    .backends
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.addr == addr)
                    .nth(nth)
                    .map(|(j, _)| j)
            })
        };
        // (service index, backend index)
        let (svc, backend): (Option<usize>, Option<usize>) = match &error {
            PlanError::EmptyName => (services.iter().position(|s| s.spec.name.is_empty()), None),
            PlanError::DuplicateName(name) => (
                services
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| &s.spec.name == name)
                    .nth(1)
                    .map(|(i, _)| i),
                None,
            ),
            PlanError::DuplicateVip { second, .. } => (by_name(second), None),
            PlanError::TooManyServices(_) => (Some(MAX_SERVICES as usize), None),
            PlanError::TooManyBackends(_) => {
                let mut left = MAX_BACKENDS as usize;
                let mut found = (None, None);
                for (i, s) in services.iter().enumerate() {
                    if left < s.backends.len() {
                        found = (Some(i), Some(left));
                        break;
                    }
                    left -= s.backends.len();
                }
                found
            }
            PlanError::DuplicateBackend { service, backend } => {
                let i = by_name(service);
                (i, backend_of(i, *backend, 1))
            }
            PlanError::FamilyMismatch {
                service, backend, ..
            }
            | PlanError::BadWeight {
                service, backend, ..
            }
            | PlanError::PortOnAllPortsService { service, backend } => {
                let i = by_name(service);
                (i, backend_of(i, *backend, 0))
            }
            PlanError::BadMaglevSize { service, .. }
            | PlanError::BadGuePort { service }
            | PlanError::BadSourcePrefix { service, .. } => (by_name(service), None),
            PlanError::AmbiguousReply {
                backend, second, ..
            } => {
                let i = by_name(second);
                let j = i.and_then(|i| {
                    let s = &services[i];
                    s.backends.iter().position(|b| {
                        let port = if b.addr.port() == 0 {
                            s.spec.vip.port()
                        } else {
                            b.addr.port()
                        };
                        b.addr.ip() == backend.ip() && port == backend.port()
                    })
                });
                (i, j)
            }
        };
        let svc = svc.filter(|&i| i < services.len());
        let at = match (svc, backend, &error) {
            (Some(i), _, PlanError::BadMaglevSize { .. }) => {
                places[i].maglev_size.unwrap_or(places[i].at)
            }
            (Some(i), Some(j), _) => places[i].backends.get(j).copied().unwrap_or(places[i].at),
            (Some(i), None, _) => places[i].at,
            (None, _, _) => 0,
        };
        ConfigError::Plan {
            origin: self.origin.to_string(),
            line: self.line_col(at).0,
            service: svc
                .map(|i| services[i].spec.name.clone())
                .unwrap_or_default(),
            error: Box::new(error),
        }
    }
}

/// A table of the document with where it starts and its field path.
struct Tbl<'a> {
    table: &'a dyn TableLike,
    at: usize,
    path: String,
}

/// A value of the document with where it is and its field path.
struct Node<'a> {
    item: &'a Item,
    at: usize,
    path: String,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Tbl<'a> {
    /// Refuses the first key (in file order) that is not in `known`.
    fn check_keys(&self, cx: &Ctx, known: &[&str]) -> Result<(), ConfigError> {
        for (key, item) in self.table.iter() {
            if item.is_none() || known.contains(&key) {
                continue;
            }
            let at = self
                .table
                .key(key)
                .and_then(|k| k.span())
                .or_else(|| item.span())
                .map_or(self.at, |s| s.start);
            let hint = match suggest(key, known) {
                Some(k) => format!(": did you mean `{k}`?"),
                None => String::new(),
            };
            let accepted = known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(cx.field_error(
                at,
                &join(&self.path, key),
                format!("unknown key{hint} (accepted here: {accepted})"),
            ));
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<Node<'a>> {
        let (k, item) = self.table.get_key_value(key)?;
        if item.is_none() {
            return None;
        }
        let at = item
            .span()
            .or_else(|| k.span())
            .map_or(self.at, |s| s.start);
        Some(Node {
            item,
            at,
            path: join(&self.path, key),
        })
    }

    /// The value of a required key; a missing key is reported at the table's start.
    fn require(&self, cx: &Ctx, key: &str, example: &str) -> Result<Node<'a>, ConfigError> {
        self.get(key).ok_or_else(|| {
            cx.field_error(
                self.at,
                &join(&self.path, key),
                format!("is required but missing: add e.g. {example}"),
            )
        })
    }
}

impl<'a> Node<'a> {
    fn error(&self, cx: &Ctx, message: String) -> ConfigError {
        cx.field_error(self.at, &self.path, message)
    }

    /// "X is not accepted: use ACCEPTED".
    fn reject(&self, cx: &Ctx, accepted: &str) -> ConfigError {
        self.error(
            cx,
            format!("{} is not accepted: use {accepted}", self.shown()),
        )
    }

    /// The value as the user wrote it (roughly), for messages.
    fn shown(&self) -> String {
        match self.item {
            Item::None => "nothing".to_string(),
            Item::Table(_) => "a table".to_string(),
            Item::ArrayOfTables(_) => "an array of tables".to_string(),
            Item::Value(v) => match v {
                Value::String(s) => format!("{:?}", s.value()),
                Value::Integer(n) => n.value().to_string(),
                Value::Float(f) => f.value().to_string(),
                Value::Boolean(b) => b.value().to_string(),
                Value::Datetime(d) => format!("the date/time {}", d.value()),
                Value::Array(_) => "an array".to_string(),
                Value::InlineTable(_) => "a table".to_string(),
            },
        }
    }

    fn str(&self, cx: &Ctx, accepted: &str) -> Result<&'a str, ConfigError> {
        self.item.as_str().ok_or_else(|| self.reject(cx, accepted))
    }

    fn int_in(
        &self,
        cx: &Ctx,
        range: RangeInclusive<i64>,
        accepted: &str,
    ) -> Result<i64, ConfigError> {
        match self.item.as_integer() {
            Some(n) if range.contains(&n) => Ok(n),
            _ => Err(self.reject(cx, accepted)),
        }
    }

    fn choice<T: Copy>(&self, cx: &Ctx, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let accepted = one_of(&names);
        let s = self.str(cx, &accepted)?;
        choices
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| self.reject(cx, &accepted))
    }

    fn duration(&self, cx: &Ctx) -> Result<Duration, ConfigError> {
        match self.item {
            Item::Value(Value::Integer(n)) if *n.value() >= 0 => {
                Ok(Duration::from_secs(*n.value() as u64))
            }
            Item::Value(Value::String(s)) => {
                parse_duration(s.value()).map_err(|m| self.error(cx, m))
            }
            _ => Err(self.reject(cx, DURATION_HELP.trim_start_matches("use "))),
        }
    }

    fn table(&self, cx: &Ctx, accepted: &str) -> Result<Tbl<'a>, ConfigError> {
        let table = self
            .item
            .as_table_like()
            .ok_or_else(|| self.reject(cx, accepted))?;
        Ok(Tbl {
            table,
            at: self.at,
            path: self.path.clone(),
        })
    }

    /// An array of tables (`[[x]]` sections or `x = [{ ... }, { ... }]`).
    fn tables(&self, cx: &Ctx, accepted: &str) -> Result<Vec<Tbl<'a>>, ConfigError> {
        let path = |i: usize| format!("{}[{i}]", self.path);
        match self.item {
            Item::ArrayOfTables(a) => Ok(a
                .iter()
                .enumerate()
                .map(|(i, t)| Tbl {
                    table: t as &dyn TableLike,
                    at: t.span().map_or(self.at, |s| s.start),
                    path: path(i),
                })
                .collect()),
            Item::Value(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let at = v.span().map_or(self.at, |s| s.start);
                    match v.as_inline_table() {
                        Some(t) => Ok(Tbl {
                            table: t as &dyn TableLike,
                            at,
                            path: path(i),
                        }),
                        None => {
                            let item = Item::Value(v.clone());
                            let shown = Node {
                                item: &item,
                                at,
                                path: path(i),
                            }
                            .shown();
                            Err(cx.field_error(
                                at,
                                &path(i),
                                format!("{shown} is not accepted: use a table"),
                            ))
                        }
                    }
                })
                .collect(),
            _ => Err(self.reject(cx, accepted)),
        }
    }
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The known key closest to an unknown one, if any is close.
fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = key.to_ascii_lowercase();
    if let Some(&(_, to)) = ALIASES.iter().find(|(from, _)| *from == lower) {
        if let Some(k) = known.iter().find(|k| **k == to) {
            return Some(k);
        }
    }
    let normalised = lower.replace('-', "_");
    known
        .iter()
        .map(|k| (edit_distance(&normalised, k), *k))
        .filter(|(d, _)| *d <= 2.max(key.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `encap = { gue_port = 6080, source = "fib" | "client-hash", source_prefix_v4 = …,
/// source_prefix_v6 = … }` of an `ipip` / `gue` service.
fn parse_encap(cx: &Ctx, n: &Node, forwarding: Forwarding) -> Result<EncapSpec, ConfigError> {
    if !forwarding.is_encap() {
        return Err(n.error(
            cx,
            format!(
                "encap is only used with forwarding = \"ipip\" or \"gue\" (forwarding is {:?}): \
                 remove it or change forwarding",
                forwarding_name(forwarding)
            ),
        ));
    }
    let t = n.table(
        cx,
        "a table, e.g. encap = { gue_port = 6080, source = \"fib\" }",
    )?;
    t.check_keys(cx, ENCAP_KEYS)?;
    let mut e = EncapSpec::default();
    if let Some(p) = t.get("gue_port") {
        if forwarding != Forwarding::Gue {
            return Err(p.error(
                cx,
                format!(
                    "gue_port = {} is only used with forwarding = \"gue\": remove it",
                    p.shown()
                ),
            ));
        }
        e.gue_port = p.int_in(cx, 1..=65535, "a UDP port from 1 to 65535 (default 6080)")? as u16;
    }
    let client_hash = match t.get("source") {
        Some(s) => s.choice(cx, &[("fib", false), ("client-hash", true)])?,
        None => false,
    };
    let prefix = |key: &str, v4: bool| -> Result<Option<Prefix>, ConfigError> {
        let Some(p) = t.get(key) else {
            return Ok(None);
        };
        let family = if v4 { "IPv4" } else { "IPv6" };
        let example = if v4 { "172.16.0.0/16" } else { "fd00:5::/64" };
        if !client_hash {
            return Err(p.error(
                cx,
                format!(
                    "{key} = {} is only used with source = \"client-hash\": remove it or set source",
                    p.shown()
                ),
            ));
        }
        let accepted = format!("an {family} prefix such as {example:?}");
        let text = p.str(cx, &accepted)?;
        let parsed: Prefix = text
            .parse()
            .map_err(|m: String| p.error(cx, format!("{m}; use {accepted}")))?;
        if parsed.addr.is_ipv4() != v4 || parsed.len == 0 {
            return Err(p.reject(cx, &format!("{accepted}, at least /1")));
        }
        Ok(Some(parsed))
    };
    let v4 = prefix("source_prefix_v4", true)?;
    let v6 = prefix("source_prefix_v6", false)?;
    if client_hash {
        if v4.is_none() && v6.is_none() {
            return Err(n.error(
                cx,
                "source = \"client-hash\" needs the prefix to hash into: add source_prefix_v4 \
                 (e.g. \"172.16.0.0/16\") and/or source_prefix_v6 (e.g. \"fd00:5::/64\")"
                    .to_string(),
            ));
        }
        e.source = OuterSource::ClientHash { v4, v6 };
    }
    Ok(e)
}

fn parse_service(cx: &Ctx, t: &Tbl) -> Result<(ServiceConfig, Place), ConfigError> {
    t.check_keys(cx, SERVICE_KEYS)?;

    let name_node = t.require(cx, "name", "name = \"web\"")?;
    let name = name_node.str(cx, NAME_HELP)?;
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !name_ok {
        return Err(name_node.reject(cx, NAME_HELP));
    }

    let listen = t.require(cx, "listen", "listen = \"10.0.0.100:80\"")?;
    let vip =
        parse_listen(listen.str(cx, LISTEN_HELP)?).ok_or_else(|| listen.reject(cx, LISTEN_HELP))?;

    let mut spec = ServiceSpec::new(name, vip);
    if let Some(n) = t.get("protocol") {
        spec.protocol = n.choice(cx, &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)])?;
    }
    if let Some(n) = t.get("scheduler") {
        spec.scheduler = n.choice(
            cx,
            &[
                ("roundrobin", Scheduler::RoundRobin),
                ("maglev", Scheduler::Maglev),
            ],
        )?;
    }
    if let Some(n) = t.get("forwarding") {
        spec.forwarding = n.choice(
            cx,
            &[
                ("nat", Forwarding::Nat),
                ("dsr", Forwarding::Dsr),
                ("ipip", Forwarding::Ipip),
                ("gue", Forwarding::Gue),
            ],
        )?;
    }
    if let Some(n) = t.get("encap") {
        spec.encap = parse_encap(cx, &n, spec.forwarding)?;
    }
    let mut place = Place {
        at: t.at,
        maglev_size: None,
        backends: Vec::new(),
    };
    if let Some(n) = t.get("maglev_size") {
        if spec.scheduler != Scheduler::Maglev {
            return Err(n.error(
                cx,
                format!(
                    "{} is only used with scheduler = \"maglev\" (scheduler is {:?}): remove it \
                     or set scheduler = \"maglev\"",
                    n.shown(),
                    scheduler_name(spec.scheduler)
                ),
            ));
        }
        let accepted = format!("a prime number from 2 to {RING_REGION} (default {RING_REGION})");
        let size = n.int_in(cx, 2..=i64::from(RING_REGION), &accepted)? as u32;
        if !maglev::is_prime(size) {
            return Err(n.reject(cx, &accepted));
        }
        spec.maglev_size = Some(size);
        place.maglev_size = Some(n.at);
    }

    let mut stick_table_size = DEFAULT_STICK_TABLE_SIZE;
    if let Some(n) = t.get("stick_table") {
        let st = n.table(
            cx,
            "a table, e.g. stick_table = { size = \"200k\", expire = \"30m\" }",
        )?;
        st.check_keys(cx, STICK_KEYS)?;
        if let Some(n) = st.get("size") {
            stick_table_size = parse_table_size(cx, &n)?;
        }
        if let Some(n) = st.get("insert_on") {
            spec.insert_on = n.choice(cx, &[("any", InsertOn::Any), ("syn", InsertOn::Syn)])?;
            if spec.insert_on == InsertOn::Syn && spec.protocol != Protocol::Tcp {
                return Err(n.error(
                    cx,
                    "insert_on = \"syn\" needs protocol = \"tcp\" (UDP has no SYN): \
                     use \"any\" for a UDP service"
                        .to_string(),
                ));
            }
        }
        if let Some(n) = st.get("insert_cap") {
            spec.insert_cap = parse_insert_cap(cx, &n)?;
        }
        if let Some(n) = st.get("expire") {
            spec.expire = match n.item.as_str() {
                Some(s) if s.trim() == "never" => None,
                _ => {
                    let d = n.duration(cx).map_err(|_| {
                        n.reject(
                            cx,
                            &format!(
                                "\"never\" (or 0) for entries that never expire, or {}",
                                DURATION_HELP.trim_start_matches("use ")
                            ),
                        )
                    })?;
                    Some(d).filter(|d| !d.is_zero())
                }
            };
        }
    }

    let health = match t.get("health") {
        Some(n) => parse_health(cx, &n)?,
        None => HealthConfig::default(),
    };

    let mut backends = Vec::new();
    if let Some(n) = t.get("backend") {
        let mut targets: Vec<(SocketAddr, String)> = Vec::new();
        for b in n.tables(cx, "[[service.backend]] sections, one per backend")? {
            place.backends.push(b.at);
            let (backend, address) = parse_backend(cx, &b)?;
            // `10.0.0.2` and `10.0.0.2:80` on a port-80 service are the same backend.
            let port = match backend.addr.port() {
                0 => vip.port(),
                p => p,
            };
            if spec.forwarding.is_dsr() && vip.port() != 0 && port != vip.port() {
                return Err(address.error(
                    cx,
                    format!(
                        "{} has port {port}, but with forwarding = {:?} packets reach the backend \
                         unchanged, on the service port {}: omit the port or use {}",
                        address.shown(),
                        forwarding_name(spec.forwarding),
                        vip.port(),
                        vip.port()
                    ),
                ));
            }
            let target = SocketAddr::new(backend.addr.ip(), port);
            if let Some((_, first)) = targets.iter().find(|(t, _)| *t == target) {
                return Err(address.error(
                    cx,
                    format!(
                        "{} is the same backend as `{first}` ({target}): use each backend once \
                         per service",
                        address.shown()
                    ),
                ));
            }
            targets.push((target, b.path.clone()));
            backends.push(backend);
        }
    }
    spec.backends = backends
        .iter()
        .map(|b: &BackendConfig| BackendSpec {
            addr: b.addr,
            weight: b.weight,
            state: b.admin.effective(true),
        })
        .collect();
    Ok((
        ServiceConfig {
            spec,
            stick_table_size,
            health,
            backends,
        },
        place,
    ))
}

fn parse_table_size(cx: &Ctx, n: &Node) -> Result<u32, ConfigError> {
    let size = match n.item {
        Item::Value(Value::Integer(v)) => u64::try_from(*v.value()).ok(),
        Item::Value(Value::String(s)) => Some(parse_size(s.value()).map_err(|m| n.error(cx, m))?),
        _ => None,
    };
    match size.and_then(|s| u32::try_from(s).ok()) {
        Some(size) if size > 0 => Ok(size),
        _ => Err(n.reject(
            cx,
            &format!(
                "a number of entries from 1 to {}, e.g. 200000 or \"200k\" (k = ×1000, m = ×1000000)",
                u32::MAX
            ),
        )),
    }
}

fn parse_insert_cap(cx: &Ctx, n: &Node) -> Result<u32, ConfigError> {
    let cap = match n.item {
        Item::Value(Value::Integer(v)) => u64::try_from(*v.value()).ok(),
        Item::Value(Value::String(s)) => parse_size(s.value()).ok(),
        _ => None,
    };
    cap.and_then(|c| u32::try_from(c).ok()).ok_or_else(|| {
        n.reject(
            cx,
            &format!(
                "new entries per second per CPU, 0 (no cap) to {}, e.g. 125000 or \"125k\"",
                u32::MAX
            ),
        )
    })
}

fn parse_health(cx: &Ctx, n: &Node) -> Result<HealthConfig, ConfigError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        None,
        Tcp,
        Http,
    }
    let t = n.table(
        cx,
        "a table, e.g. health = { kind = \"tcp\", interval = \"2s\", rise = 2, fall = 3 }",
    )?;
    t.check_keys(cx, HEALTH_KEYS)?;
    let kind = match t.get("kind") {
        Some(n) => n.choice(
            cx,
            &[
                ("tcp", Kind::Tcp),
                ("http", Kind::Http),
                ("none", Kind::None),
            ],
        )?,
        None => Kind::Tcp,
    };

    let mut interval = DEFAULT_HEALTH_INTERVAL;
    if let Some(n) = t.get("interval") {
        interval = n.duration(cx)?;
        if interval < MIN_HEALTH_INTERVAL {
            return Err(n.reject(cx, "an interval of at least 100ms"));
        }
    }
    let mut timeout = DEFAULT_HEALTH_TIMEOUT.min(interval);
    if let Some(n) = t.get("timeout") {
        timeout = n.duration(cx)?;
        if timeout.is_zero() || timeout > interval {
            return Err(n.reject(
                cx,
                &format!(
                    "a timeout above 0 and at most the interval ({})",
                    format_duration(interval)
                ),
            ));
        }
    }
    let count = |key: &str, default: u32| -> Result<u32, ConfigError> {
        match t.get(key) {
            Some(n) => Ok(n.int_in(
                cx,
                1..=i64::from(u32::MAX),
                &format!("a count of consecutive checks, at least 1 (default {default})"),
            )? as u32),
            None => Ok(default),
        }
    };
    let rise = count("rise", 2)?;
    let fall = count("fall", 3)?;

    let http_only = |n: &Node| {
        n.error(
            cx,
            format!(
                "{} is only used with kind = \"http\" (kind is {}): remove it or set kind = \"http\"",
                n.shown(),
                match kind {
                    Kind::None => "\"none\"",
                    _ => "\"tcp\"",
                }
            ),
        )
    };
    let mut path = "/".to_string();
    if let Some(n) = t.get("path") {
        if kind != Kind::Http {
            return Err(http_only(&n));
        }
        const PATH_HELP: &str =
            "a request path starting with '/', without spaces or control characters, e.g. \"/healthz\"";
        let p = n.str(cx, PATH_HELP)?;
        if !p.starts_with('/') || !p.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(n.reject(cx, PATH_HELP));
        }
        path = p.to_string();
    }
    let mut expect_status = None;
    if let Some(n) = t.get("expect_status") {
        if kind != Kind::Http {
            return Err(http_only(&n));
        }
        expect_status = Some(n.int_in(
            cx,
            100..=599,
            "an HTTP status code 100..=599 (without it, any 2xx or 3xx is healthy)",
        )? as u16);
    }
    Ok(HealthConfig {
        kind: match kind {
            Kind::None => HealthKind::None,
            Kind::Tcp => HealthKind::Tcp,
            Kind::Http => HealthKind::Http {
                path,
                expect_status,
            },
        },
        interval,
        timeout,
        rise,
        fall,
    })
}

/// A backend and its `address` field (for errors about it).
fn parse_backend<'a>(cx: &Ctx, t: &Tbl<'a>) -> Result<(BackendConfig, Node<'a>), ConfigError> {
    t.check_keys(cx, BACKEND_KEYS)?;
    let address = t.require(cx, "address", "address = \"192.168.1.2:80\"")?;
    let addr = parse_backend_addr(address.str(cx, ADDRESS_HELP)?)
        .ok_or_else(|| address.reject(cx, ADDRESS_HELP))?;
    let weight = match t.get("weight") {
        Some(n) => n.int_in(
            cx,
            0..=i64::from(MAX_WEIGHT),
            &format!("0..={MAX_WEIGHT} (0 = no new clients)"),
        )? as u32,
        None => 1,
    };
    let admin = match t.get("state") {
        Some(n) => n.choice(
            cx,
            &[
                ("ready", AdminState::Ready),
                ("drain", AdminState::Drain),
                ("maint", AdminState::Maint),
            ],
        )?,
        None => AdminState::Ready,
    };
    Ok((
        BackendConfig {
            addr,
            weight,
            admin,
        },
        address,
    ))
}

/// `IPv4:PORT` or `[IPv6]:PORT`, a specific (not unspecified) address.
fn parse_listen(s: &str) -> Option<SocketAddr> {
    s.trim()
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| !a.ip().is_unspecified())
}

/// A backend address; without a port, port 0 (= the service port).
fn parse_backend_addr(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    let addr = if let Ok(a) = s.parse::<SocketAddr>() {
        a
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        SocketAddr::new(ip, 0)
    } else {
        let ip = s
            .strip_prefix('[')?
            .strip_suffix(']')?
            .parse::<Ipv6Addr>()
            .ok()?;
        SocketAddr::new(IpAddr::V6(ip), 0)
    };
    Some(addr).filter(|a| !a.ip().is_unspecified())
}

/// The largest unit that expresses `d` exactly (whole milliseconds at least; rounded up).
fn format_duration(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms == 0 {
        return "0s".to_string();
    }
    for (unit, name) in [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ] {
        if ms.is_multiple_of(unit) {
            return format!("{}{name}", ms / unit);
        }
    }
    format!("{ms}ms")
}

/// A TOML basic string (also used to build TOML from control-command arguments).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn scheduler_name(s: Scheduler) -> &'static str {
    match s {
        Scheduler::RoundRobin => "roundrobin",
        Scheduler::Maglev => "maglev",
    }
}

fn forwarding_name(f: Forwarding) -> &'static str {
    match f {
        Forwarding::Nat => "nat",
        Forwarding::Dsr => "dsr",
        Forwarding::Ipip => "ipip",
        Forwarding::Gue => "gue",
    }
}

fn admin_name(a: AdminState) -> &'static str {
    match a {
        AdminState::Ready => "ready",
        AdminState::Drain => "drain",
        AdminState::Maint => "maint",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::BackendState;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The example of the issue.
    const ISSUE: &str = r#"[[service]]
name = "web"
listen = "10.0.0.100:80"      # VIP:port; [v6]:port for IPv6; port 0 = all ports
protocol = "tcp"              # tcp | udp
scheduler = "roundrobin"      # roundrobin | maglev
forwarding = "nat"            # nat | dsr
stick_table = { size = 200000, expire = "30m" }
health = { kind = "tcp", interval = "2s", timeout = "1s", rise = 2, fall = 3 }

[[service.backend]]
address = "192.168.1.2:80"
weight = 1                    # 0..=256; 0 = no new clients
state = "ready"               # ready | drain | maint
"#;

    /// Parses a configuration that must be refused; returns the error and its message.
    fn refused(text: &str) -> (ConfigError, String) {
        let err = parse(text, "lb.toml").expect_err("must be refused");
        let msg = err.to_string();
        (err, msg)
    }

    /// Checks that the error is at `line`, names `field` (when given) and says `says`.
    fn check(text: &str, line: usize, field: Option<&str>, says: &[&str]) {
        let (err, msg) = refused(text);
        assert!(
            msg.starts_with(&format!("lb.toml:{line}:")),
            "{msg:?} is not at line {line}"
        );
        assert_eq!(err.line(), Some(line), "{msg}");
        if let Some(field) = field {
            assert_eq!(err.field(), Some(field), "{msg}");
            assert!(msg.contains(&format!("field `{field}`")), "{msg}");
        }
        for s in says {
            assert!(msg.contains(s), "{msg:?} does not say {s:?}");
        }
    }

    #[test]
    fn the_issue_example_parses() {
        let c = parse(ISSUE, "lb.toml").unwrap();
        let mut spec = ServiceSpec::new("web", sa("10.0.0.100:80")).backend(sa("192.168.1.2:80"));
        spec.expire = Some(Duration::from_secs(1800));
        assert_eq!(
            c,
            Config {
                services: vec![ServiceConfig {
                    spec,
                    stick_table_size: 200_000,
                    health: HealthConfig {
                        kind: HealthKind::Tcp,
                        interval: Duration::from_secs(2),
                        timeout: Duration::from_secs(1),
                        rise: 2,
                        fall: 3,
                    },
                    backends: vec![BackendConfig {
                        addr: sa("192.168.1.2:80"),
                        weight: 1,
                        admin: AdminState::Ready,
                    }],
                }]
            }
        );
        assert_eq!(c.specs(), vec![c.services[0].spec.clone()]);
    }

    #[test]
    fn defaults_are_haproxy_like() {
        let c = parse(
            "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:443\"\n\
             [[service.backend]]\naddress = \"192.168.1.2\"\n",
            "lb.toml",
        )
        .unwrap();
        let s = &c.services[0];
        assert_eq!(s.spec.protocol, Protocol::Tcp);
        assert_eq!(s.spec.scheduler, Scheduler::RoundRobin);
        assert_eq!(s.spec.forwarding, Forwarding::Nat);
        assert_eq!(s.spec.expire, Some(Duration::from_secs(30 * 60)));
        assert_eq!(s.spec.maglev_size, None);
        assert_eq!(s.stick_table_size, 200_000);
        assert_eq!(s.health, HealthConfig::default());
        assert_eq!(
            s.backends,
            vec![BackendConfig {
                addr: sa("192.168.1.2:0"),
                weight: 1,
                admin: AdminState::Ready
            }],
            "no port = port 0 = the service port"
        );
        assert_eq!(s.spec.backends[0].state, BackendState::Up);

        // A short interval caps the default timeout; http defaults its path.
        let c = parse(
            "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n\
             health = { kind = \"http\", interval = \"500ms\" }\n",
            "lb.toml",
        )
        .unwrap();
        let h = &c.services[0].health;
        assert_eq!(
            h.kind,
            HealthKind::Http {
                path: "/".into(),
                expect_status: None
            }
        );
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_millis(500), Duration::from_millis(500))
        );
        // An empty file is an empty configuration.
        assert_eq!(
            parse("# nothing yet\n", "lb.toml").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn ipv6_dsr_maglev_and_every_option() {
        let text = r#"
[[service]]
name = "dns6"
listen = "[2001:db8::53]:0"
protocol = "udp"
scheduler = "maglev"
maglev_size = 251
forwarding = "dsr"
stick_table = { size = "1m", expire = "never" }

[service.health]
kind = "http"
path = "/healthz?full=1"
expect_status = 204
interval = 5
timeout = "1500ms"
rise = 1
fall = 1

[[service.backend]]
address = "[2001:db8:1::2]"
weight = 0
state = "drain"

[[service.backend]]
address = "2001:db8:1::3"
state = "maint"
"#;
        let c = parse(text, "lb.toml").unwrap();
        let s = &c.services[0];
        assert_eq!(s.spec.vip, sa("[2001:db8::53]:0"));
        assert_eq!(
            (s.spec.protocol, s.spec.scheduler, s.spec.forwarding),
            (Protocol::Udp, Scheduler::Maglev, Forwarding::Dsr)
        );
        assert_eq!(s.spec.maglev_size, Some(251));
        assert_eq!(s.spec.expire, None);
        assert_eq!(s.stick_table_size, 1_000_000);
        assert_eq!(
            s.health,
            HealthConfig {
                kind: HealthKind::Http {
                    path: "/healthz?full=1".into(),
                    expect_status: Some(204)
                },
                interval: Duration::from_secs(5),
                timeout: Duration::from_millis(1500),
                rise: 1,
                fall: 1,
            }
        );
        assert_eq!(
            s.backends,
            vec![
                BackendConfig {
                    addr: sa("[2001:db8:1::2]:0"),
                    weight: 0,
                    admin: AdminState::Drain
                },
                BackendConfig {
                    addr: sa("[2001:db8:1::3]:0"),
                    weight: 1,
                    admin: AdminState::Maint
                },
            ]
        );
        let states: Vec<BackendState> = s.spec.backends.iter().map(|b| b.state).collect();
        assert_eq!(states, vec![BackendState::Drain, BackendState::Down]);

        // Inline arrays of tables work as well as [[...]] sections; "0" expires never.
        let c = parse(
            "service = [{ name = \"a\", listen = \"[::1]:443\", stick_table = { expire = 0 }, \
             backend = [{ address = \"[::2]:8443\" }] }]\n",
            "lb.toml",
        )
        .unwrap();
        assert_eq!(c.services[0].backends[0].addr, sa("[::2]:8443"));
        assert_eq!(c.services[0].spec.expire, None);
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("300ms", Duration::from_millis(300)),
            ("2s", Duration::from_secs(2)),
            ("30m", Duration::from_secs(1800)),
            ("1h", Duration::from_secs(3600)),
            ("1d", Duration::from_secs(86_400)),
            ("45", Duration::from_secs(45)),
            ("0", Duration::ZERO),
            (" 2s ", Duration::from_secs(2)),
        ] {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
        for s in [
            "",
            "s",
            "2x",
            "1.5s",
            "-1s",
            "2 s",
            "1w",
            "2S",
            "99999999999999999999d",
            "1e3",
        ] {
            let err = parse_duration(s).unwrap_err();
            assert!(
                err.contains("\"300ms\", \"2s\", \"30m\", \"1h\" or \"1d\""),
                "{s}: {err}"
            );
        }
        for d in [
            Duration::from_millis(300),
            Duration::from_millis(1500),
            Duration::from_secs(90),
            Duration::from_secs(7200),
            Duration::from_secs(172_800),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(1800)), "30m");
    }

    #[test]
    fn sizes() {
        for (s, want) in [
            ("200000", 200_000),
            ("200k", 200_000),
            ("1m", 1_000_000),
            ("3M", 3_000_000),
            ("0", 0),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
        for s in [
            "",
            "k",
            "1g",
            "1.5k",
            "-1",
            "1 k",
            "1kb",
            "99999999999999999999",
        ] {
            let err = parse_size(s).unwrap_err();
            assert!(err.contains("k (×1000) or m (×1000000)"), "{s}: {err}");
        }
    }

    #[test]
    fn the_error_message_format() {
        let text = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n\n\
                    [[service.backend]]\naddress = \"192.168.1.2:80\"\n\n\
                    [[service.backend]]\naddress = \"192.168.1.3:80\"\nweight = 300\n";
        let (_, msg) = refused(text);
        assert_eq!(
            msg,
            "lb.toml:10:10: field `service[0].backend[1].weight`: 300 is not accepted: \
             use 0..=256 (0 = no new clients)"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_a_suggestion() {
        check(
            "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\nschedular = \"maglev\"\n",
            4,
            Some("service[0].schedular"),
            &["unknown key", "did you mean `scheduler`?", "`listen`"],
        );
        check(
            "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\nbalance = \"roundrobin\"\n",
            4,
            Some("service[0].balance"),
            &["did you mean `scheduler`?"],
        );
        check(
            "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n\
             health = { kind = \"tcp\", inter = \"2s\" }\n",
            4,
            Some("service[0].health.inter"),
            &["did you mean `interval`?"],
        );
        check(
            "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n\
             [[service.backend]]\naddress = \"192.168.1.2\"\nweigth = 2\n",
            6,
            Some("service[0].backend[0].weigth"),
            &["did you mean `weight`?"],
        );
        check(
            "[[services]]\nname = \"web\"\n",
            1,
            Some("services"),
            &["did you mean `service`?"],
        );
        check(
            "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\ncolour = \"blue\"\n",
            4,
            Some("service[0].colour"),
            &["unknown key (accepted here:"],
        );
    }

    #[test]
    fn bad_values_say_what_is_accepted() {
        let svc = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n";
        check(
            &format!("{svc}scheduler = \"leastconn\"\n"),
            4,
            Some("service[0].scheduler"),
            &["\"leastconn\" is not accepted: use \"roundrobin\" or \"maglev\""],
        );
        check(
            &format!("{svc}forwarding = \"tunnel\"\n"),
            4,
            Some("service[0].forwarding"),
            &["use \"nat\", \"dsr\", \"ipip\" or \"gue\""],
        );
        check(
            &format!("{svc}protocol = 6\n"),
            4,
            Some("service[0].protocol"),
            &["6 is not accepted: use \"tcp\" or \"udp\""],
        );
        check(
            &format!("{svc}health = {{ kind = \"icmp\" }}\n"),
            4,
            Some("service[0].health.kind"),
            &["use \"tcp\", \"http\" or \"none\""],
        );
        check(
            &format!("{svc}\n[[service.backend]]\naddress = \"192.168.1.2\"\nstate = \"up\"\n"),
            7,
            Some("service[0].backend[0].state"),
            &["use \"ready\", \"drain\" or \"maint\""],
        );
        check(
            &format!("{svc}stick_table = {{ expire = \"30 minutes\" }}\n"),
            4,
            Some("service[0].stick_table.expire"),
            &["\"30 minutes\" is not accepted", "\"never\"", "\"30m\""],
        );
        check(
            &format!("{svc}health = {{ interval = \"2x\" }}\n"),
            4,
            Some("service[0].health.interval"),
            &["\"2x\" is not accepted", "\"300ms\", \"2s\""],
        );
        check(
            &format!("{svc}stick_table = {{ size = \"200kb\" }}\n"),
            4,
            Some("service[0].stick_table.size"),
            &["\"200kb\" is not accepted", "k (×1000)"],
        );
        check(
            &format!("{svc}stick_table = {{ size = 0 }}\n"),
            4,
            Some("service[0].stick_table.size"),
            &["0 is not accepted: use a number of entries from 1 to 4294967295"],
        );
        check(
            "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100\"\n",
            3,
            Some("service[0].listen"),
            &[
                "\"10.0.0.100\" is not accepted",
                "\"10.0.0.100:80\"",
                "port 0 = every port",
            ],
        );
        check(
            "[[service]]\nname = \"web\"\nlisten = \"0.0.0.0:80\"\n",
            3,
            Some("service[0].listen"),
            &["is not accepted"],
        );
        check(
            &format!("{svc}[[service.backend]]\naddress = \"backend-1:80\"\n"),
            5,
            Some("service[0].backend[0].address"),
            &["\"backend-1:80\" is not accepted", "\"[IPv6]:PORT\""],
        );
        check(
            "[[service]]\nname = \"web server\"\nlisten = \"10.0.0.100:80\"\n",
            2,
            Some("service[0].name"),
            &["letters, digits"],
        );
        check(
            &format!("{svc}[[service.backend]]\naddress = \"192.168.1.2\"\nweight = -1\n"),
            6,
            Some("service[0].backend[0].weight"),
            &["-1 is not accepted: use 0..=256"],
        );
        check(
            "[service]\nname = \"web\"\n",
            1,
            Some("service"),
            &["a table is not accepted: use [[service]] sections"],
        );
        check(
            &format!("{svc}expire = 12:00:00\n"),
            4,
            Some("service[0].expire"),
            &["unknown key"],
        );
        check(
            &format!("{svc}stick_table = {{ expire = 00:30:00 }}\n"),
            4,
            Some("service[0].stick_table.expire"),
            &["the date/time 00:30:00 is not accepted"],
        );
    }

    #[test]
    fn missing_keys_are_reported_at_their_table() {
        check(
            "# web\n\n[[service]]\nname = \"web\"\n\n[[service.backend]]\naddress = \"192.168.1.2\"\n",
            3,
            Some("service[0].listen"),
            &["is required but missing", "listen = \"10.0.0.100:80\""],
        );
        check(
            "[[service]]\nlisten = \"10.0.0.100:80\"\n",
            1,
            Some("service[0].name"),
            &["is required but missing"],
        );
        check(
            "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n\n[[service.backend]]\nweight = 2\n",
            5,
            Some("service[0].backend[0].address"),
            &["is required but missing"],
        );
    }

    #[test]
    fn health_limits() {
        let svc = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n";
        check(
            &format!("{svc}health = {{ interval = \"50ms\" }}\n"),
            4,
            Some("service[0].health.interval"),
            &["\"50ms\" is not accepted: use an interval of at least 100ms"],
        );
        check(
            &format!("{svc}health = {{ interval = \"1s\", timeout = \"2s\" }}\n"),
            4,
            Some("service[0].health.timeout"),
            &["at most the interval (1s)"],
        );
        check(
            &format!("{svc}health = {{ timeout = 0 }}\n"),
            4,
            Some("service[0].health.timeout"),
            &["above 0"],
        );
        check(
            &format!("{svc}health = {{ rise = 0 }}\n"),
            4,
            Some("service[0].health.rise"),
            &["0 is not accepted", "at least 1"],
        );
        check(
            &format!("{svc}\n[service.health]\nfall = 0\n"),
            6,
            Some("service[0].health.fall"),
            &["at least 1"],
        );
        check(
            &format!("{svc}health = {{ path = \"/up\" }}\n"),
            4,
            Some("service[0].health.path"),
            &["only used with kind = \"http\""],
        );
        check(
            &format!("{svc}health = {{ kind = \"http\", expect_status = 700 }}\n"),
            4,
            Some("service[0].health.expect_status"),
            &["100..=599"],
        );
        check(
            &format!("{svc}health = {{ kind = \"http\", path = \"up\" }}\n"),
            4,
            Some("service[0].health.path"),
            &["starting with '/'"],
        );
    }

    #[test]
    fn churn_protections_parse_and_are_checked() {
        let svc = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n";
        let c = parse(
            &format!("{svc}stick_table = {{ insert_on = \"syn\", insert_cap = \"10k\" }}\n"),
            "lb.toml",
        )
        .unwrap();
        assert_eq!(c.services[0].spec.insert_on, InsertOn::Syn);
        assert_eq!(c.services[0].spec.insert_cap, 10_000);
        // Round trip through the rendered form.
        let again = parse(&c.to_toml(), "again.toml").unwrap();
        assert_eq!(again.services[0].spec, c.services[0].spec);
        // Defaults: any packet, Katran's 125k per CPU per second; 0 = no cap.
        let d = parse(svc, "lb.toml").unwrap();
        assert_eq!(d.services[0].spec.insert_on, InsertOn::Any);
        assert_eq!(d.services[0].spec.insert_cap, 125_000);
        let z = parse(&format!("{svc}stick_table.insert_cap = 0\n"), "lb.toml").unwrap();
        assert_eq!(z.services[0].spec.insert_cap, 0);

        check(
            &format!("{svc}stick_table.insert_on = \"ack\"\n"),
            4,
            Some("service[0].stick_table.insert_on"),
            &["\"ack\" is not accepted", "\"any\"", "\"syn\""],
        );
        check(
            &format!("{svc}protocol = \"udp\"\nstick_table.insert_on = \"syn\"\n"),
            5,
            Some("service[0].stick_table.insert_on"),
            &["needs protocol = \"tcp\"", "use \"any\""],
        );
        check(
            &format!("{svc}stick_table.insert_cap = -1\n"),
            4,
            Some("service[0].stick_table.insert_cap"),
            &["-1 is not accepted", "0 (no cap) to 4294967295"],
        );
    }

    #[test]
    fn maglev_size_is_checked() {
        let svc = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n";
        check(
            &format!("{svc}maglev_size = 251\n"),
            4,
            Some("service[0].maglev_size"),
            &["only used with scheduler = \"maglev\""],
        );
        check(
            &format!("{svc}scheduler = \"maglev\"\nmaglev_size = 65536\n"),
            5,
            Some("service[0].maglev_size"),
            &["65536 is not accepted: use a prime number from 2 to 65537"],
        );
        // Fewer slots than backends is the planner's check, reported at maglev_size.
        let (_, msg) = refused(&format!(
            "{svc}scheduler = \"maglev\"\nmaglev_size = 2\n\
             [[service.backend]]\naddress = \"192.168.1.2\"\n\
             [[service.backend]]\naddress = \"192.168.1.3\"\n\
             [[service.backend]]\naddress = \"192.168.1.4\"\n"
        ));
        assert!(
            msg.starts_with("lb.toml:5: service \"web\": maglev table size 2"),
            "{msg}"
        );
    }

    #[test]
    fn plan_errors_point_at_the_offending_service_or_backend() {
        // Duplicate VIP: the line of the second service.
        let text = "[[service]]\nname = \"a\"\nlisten = \"10.0.0.100:80\"\n\n\
                    [[service]]\nname = \"b\"\nlisten = \"10.0.0.100:80\"\n";
        let (err, msg) = refused(text);
        assert!(matches!(
            err,
            ConfigError::Plan { ref error, .. } if matches!(**error, PlanError::DuplicateVip { .. })
        ));
        assert_eq!(
            msg,
            "lb.toml:5: service \"b\": services \"a\" and \"b\" both listen on 10.0.0.100:80 tcp: \
             a VIP, port and protocol belong to one service"
        );
        // The same VIP with the other protocol is fine.
        assert!(parse(&format!("{text}protocol = \"udp\"\n"), "lb.toml").is_ok());

        // Duplicate name: the second.
        check(
            "[[service]]\nname = \"a\"\nlisten = \"10.0.0.1:80\"\n[[service]]\nname = \"a\"\nlisten = \"10.0.0.2:80\"\n",
            4,
            None,
            &["service \"a\": is defined twice"],
        );
        // Family mismatch: the backend's line, without repeating the service name.
        let text = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n\
                    [[service.backend]]\naddress = \"192.168.1.2\"\n\
                    [[service.backend]]\naddress = \"[2001:db8::2]:80\"\n";
        let (_, msg) = refused(text);
        assert!(
            msg.starts_with("lb.toml:6: service \"web\": backend [2001:db8::2]:80 is IPv6"),
            "{msg}"
        );
        // A port on an all-ports service.
        check(
            "[[service]]\nname = \"all\"\nlisten = \"10.0.0.100:0\"\n\n[[service.backend]]\naddress = \"192.168.1.2:80\"\n",
            5,
            None,
            &["service \"all\": listens on every port"],
        );
        // Two NAT services sharing a backend: the second one's backend.
        check(
            "[[service]]\nname = \"a\"\nlisten = \"10.0.0.1:80\"\n[[service.backend]]\naddress = \"192.168.1.2:8080\"\n\
             [[service]]\nname = \"b\"\nlisten = \"10.0.0.2:80\"\n[[service.backend]]\naddress = \"192.168.1.9\"\n\
             [[service.backend]]\naddress = \"192.168.1.2:8080\"\n",
            11,
            None,
            &["service \"b\": backend 192.168.1.2:8080 (tcp) serves both \"a\" and \"b\""],
        );
        // DSR cannot change the port.
        check(
            "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\nforwarding = \"dsr\"\n\
             [[service.backend]]\naddress = \"192.168.1.2:8080\"\n",
            6,
            Some("service[0].backend[0].address"),
            &["packets reach the backend unchanged, on the service port 80"],
        );
        // The same backend twice, once with the port implied.
        check(
            "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\nforwarding = \"dsr\"\n\
             [[service.backend]]\naddress = \"192.168.1.2\"\n\
             [[service.backend]]\naddress = \"192.168.1.2:80\"\n",
            8,
            Some("service[0].backend[1].address"),
            &["same backend as `service[0].backend[0]`"],
        );
    }

    #[test]
    fn syntax_and_read_errors_name_the_place() {
        let (err, msg) = refused("[[service]]\nname = \"web\nlisten = 1\n");
        assert!(matches!(err, ConfigError::Syntax { line: 2, .. }), "{msg}");
        assert!(msg.starts_with("lb.toml:2:"), "{msg}");
        let (err, _) = refused("[[service]]\nname = \"a\"\nname = \"b\"\n");
        assert!(matches!(err, ConfigError::Syntax { line: 3, .. }), "{err}");

        let path = Path::new("/nonexistent/stickylb.toml");
        let msg = load(path).unwrap_err().to_string();
        assert!(
            msg.starts_with("/nonexistent/stickylb.toml: cannot read"),
            "{msg}"
        );
    }

    #[test]
    fn columns_count_characters() {
        let (err, _) =
            refused("# héllo wörld\n[[service]]\nname = \"wéb\"\nlisten = \"10.0.0.100:80\"\n");
        match err {
            ConfigError::Field { line, column, .. } => assert_eq!((line, column), (3, 8)),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn to_toml_round_trips() {
        let text = r#"
[[service]]
name = "web"
listen = "10.0.0.100:80"
stick_table = { size = "300k", expire = "90s" }
health = { kind = "http", path = "/healthz", expect_status = 200, interval = "1500ms" }

[[service.backend]]
address = "192.168.1.2:8080"
weight = 256

[[service.backend]]
address = "192.168.1.3"
weight = 0
state = "drain"

[[service]]
name = "dns6"
listen = "[2001:db8::53]:0"
protocol = "udp"
scheduler = "maglev"
maglev_size = 251
forwarding = "dsr"
stick_table = { expire = "never" }
health = { kind = "none" }

[[service.backend]]
address = "2001:db8:1::2"
state = "maint"

[[service]]
name = "empty"
listen = "10.0.0.101:443"

[[service]]
name = "l3dsr"
listen = "10.0.0.102:443"
forwarding = "gue"
encap = { gue_port = 7000, source = "client-hash", source_prefix_v4 = "172.16.0.0/16", source_prefix_v6 = "fd00:5::/64" }

[[service.backend]]
address = "2001:db8:2::2"

[[service]]
name = "ipip"
listen = "10.0.0.103:443"
forwarding = "ipip"
"#;
        for text in [ISSUE, text] {
            let c = parse(text, "lb.toml").unwrap();
            let out = c.to_toml();
            assert_eq!(parse(&out, "out.toml").unwrap(), c, "{out}");
            assert_eq!(parse(&out, "out.toml").unwrap().to_toml(), out);
        }
        let c = parse(text, "lb.toml").unwrap();
        let l3 = &c.services[3].spec;
        assert_eq!((l3.forwarding, l3.encap.gue_port), (Forwarding::Gue, 7000));
        assert_eq!(
            l3.encap.source,
            OuterSource::ClientHash {
                v4: Some("172.16.0.0/16".parse().unwrap()),
                v6: Some("fd00:5::/64".parse().unwrap()),
            }
        );
        let ipip = &c.services[4].spec;
        assert_eq!(
            (ipip.forwarding, ipip.encap),
            (Forwarding::Ipip, EncapSpec::default())
        );
        // Names with characters TOML must escape survive (through the API, not the file).
        let mut c = parse(ISSUE, "lb.toml").unwrap();
        c.services[0].spec.name = "we\"b".into();
        assert!(c.to_toml().contains("name = \"we\\\"b\""));
    }

    #[test]
    fn the_shipped_example_and_docs_parse() {
        let example = include_str!("../../examples/stickylb.toml");
        let c = parse(example, "examples/stickylb.toml").unwrap();
        assert_eq!(c.services.len(), 3);
        let docs = include_str!("../../docs/CONFIG.md");
        let mut blocks = 0;
        for block in docs.split("```toml").skip(1) {
            let block = block.split("```").next().unwrap();
            if block.contains("[[service]]") {
                parse(block, "docs/CONFIG.md").unwrap_or_else(|e| panic!("{e}\n{block}"));
                blocks += 1;
            }
        }
        assert!(blocks >= 1);
    }
}
