//! The configuration file: TOML `[[service]]` sections with `[[service.backend]]` entries,
//! turned into [`ServiceSpec`]s plus what the agent needs besides (stick-table size, health
//! checks, operator-set backend states).
//!
//! - [`schema`]: the serde types of the file (`deny_unknown_fields`), shared with control
//!   requests, and the checks that involve several fields.
//! - [`values`]: the value types, each reading and refusing its own values.
//! - [`errors`]: [`ConfigError`], field paths, and serde's messages reworded.
//!
//! [`parse`] reads the text with `toml_edit` (spans) through `serde_path_to_error` (field
//! paths); every error names the file, the line and column, the field
//! (`service[0].backend[1].weight`), the value and what is accepted. The planner's checks
//! ([`crate::plan::Ids::plan`], which starts with [`crate::plan::validate`]) run at the end
//! and are reported at the line of the service or backend concerned.
//! The format is described in `docs/CONFIG.md`.

pub mod errors;
pub mod schema;
pub mod values;

use std::{net::SocketAddr, path::Path as FsPath, time::Duration};

use lb_common::{MAX_BACKENDS, MAX_SERVICES};
use toml_edit::{ImDocument, Item};

pub use self::errors::ConfigError;
use self::{
    errors::{line_col, reword, Path, Seg},
    schema::{FileDoc, Sections, ServiceDoc},
};
use crate::{
    plan::{self, PlanError},
    spec::{AdminState, HealthConfig, ServiceSpec},
};

/// Default number of stick-table entries of a service.
pub const DEFAULT_STICK_TABLE_SIZE: u32 = lb_common::DEFAULT_STICK_TABLE_SIZE;
/// Default stick-table entry lifetime after the client was last seen.
pub const DEFAULT_EXPIRE: Duration = Duration::from_secs(30 * 60);
/// Default health check timeout; never more than the interval.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// A whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub services: Vec<ServiceConfig>,
    /// `[announce]`, when present.
    pub announce: Option<crate::announce::AnnounceConfig>,
    /// `[cluster]`; `None`: a single node (no events, no listener).
    pub cluster: Option<lb_cluster::ClusterConfig>,
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
    /// listening on every port, the client's destination port (as in
    /// [`crate::spec::BackendSpec`]).
    pub addr: SocketAddr,
    pub weight: u32,
    pub admin: AdminState,
}

impl Config {
    /// The service specs, in file order, ready for [`crate::plan::Ids::plan`].
    pub fn specs(&self) -> Vec<ServiceSpec> {
        self.services.iter().map(|s| s.spec.clone()).collect()
    }

    /// The configuration as TOML that [`parse`] reads back to an equal `Config` (every value
    /// written explicitly; durations in whole milliseconds or larger units).
    pub fn to_toml(&self) -> String {
        let doc = FileDoc {
            service: Sections(self.services.iter().map(ServiceDoc::from_config).collect()),
            announce: self
                .announce
                .as_ref()
                .map(crate::announce::AnnounceDoc::from_config),
            cluster: self.cluster.clone(),
        };
        toml::to_string(&doc).expect("the schema serialises to TOML")
    }
}

/// Reads and parses a configuration file; errors name `path`.
pub fn load(path: &FsPath) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses a configuration; `origin` (usually the file name) starts every error message.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let de = toml_edit::de::Deserializer::parse(text).map_err(|e| syntax(text, origin, &e))?;
    let doc: FileDoc = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = Path::from_serde(e.path());
        let inner = e.into_inner();
        let (path, message) = reword(&path, inner.message());
        field(
            text,
            origin,
            inner.span().map_or(0, |s| s.start),
            &path,
            message,
        )
    })?;
    let mut services = Vec::with_capacity(doc.service.0.len());
    for (i, s) in doc.service.0.iter().enumerate() {
        let prefix = Path::of(&["service"]).index(i);
        let name_of = |p: &Path| prefix.join(p).to_string();
        let service = s.check(&name_of).map_err(|invalid| {
            let path = prefix.join(&invalid.path);
            field(text, origin, offset_of(text, &path), &path, invalid.message)
        })?;
        services.push(service);
    }
    let announce = match &doc.announce {
        Some(a) => Some(a.check(&services).map_err(|invalid| {
            let path = Path::of(&["announce"]).join(&invalid.path);
            field(text, origin, offset_of(text, &path), &path, invalid.message)
        })?),
        None => None,
    };
    if let Some(cluster) = &doc.cluster {
        check_cluster(cluster, &services).map_err(|(path, message)| {
            field(text, origin, offset_of(text, &path), &path, message)
        })?;
    }
    let config = Config {
        services,
        cluster: doc.cluster,
        announce,
    };
    // A full plan rather than only `plan::validate`: some checks (two nat services sharing a
    // backend) are made while the map entries are computed.
    if let Err(error) = plan::Ids::default().plan(&config.specs()) {
        return Err(plan_error(text, origin, &config, error));
    }
    Ok(config)
}

/// `[cluster]`'s own checks ([`lb_cluster::ClusterConfig::validate`]), and what a cluster
/// asks of the services: `forwarding = "nat"` is refused beside `[cluster]` (replies would
/// have to come back through a node; stickylb supports DSR in a cluster, see
/// docs/CLUSTER.md). Returns the field's path and the message.
fn check_cluster(
    cluster: &lb_cluster::ClusterConfig,
    services: &[ServiceConfig],
) -> Result<(), (Path, String)> {
    if let Err(e) = cluster.validate() {
        let mut path = Path::of(&["cluster"]);
        for part in e.field.split('.') {
            match part.split_once('[') {
                Some((key, rest)) => {
                    path = path.key(key);
                    if let Ok(i) = rest.trim_end_matches(']').parse() {
                        path = path.index(i);
                    }
                }
                None => path = path.key(part),
            }
        }
        return Err((path, format!("{}: {}", e.value, e.accepted)));
    }
    if let Some(i) = services
        .iter()
        .position(|s| s.spec.forwarding == crate::spec::Forwarding::Nat)
    {
        return Err((
            Path::of(&["service"]).index(i).key("forwarding"),
            format!(
                "\"nat\" (service {:?}) cannot be used with [cluster]: a NAT reply must come back \
                 through a node, and stickylb supports DSR in a cluster; use forwarding = \"dsr\", \
                 \"ipip\" or \"gue\" (docs/CLUSTER.md), or remove [cluster]",
                s_name(&services[i])
            ),
        ));
    }
    Ok(())
}

fn s_name(s: &ServiceConfig) -> &str {
    &s.spec.name
}

fn field(text: &str, origin: &str, offset: usize, path: &Path, message: String) -> ConfigError {
    let (line, column) = line_col(text, offset);
    ConfigError::Field {
        origin: origin.to_string(),
        line,
        column,
        field: path.to_string(),
        message,
    }
}

/// A TOML syntax error, with the line as written and what TOML expects.
fn syntax(text: &str, origin: &str, e: &toml_edit::de::Error) -> ConfigError {
    let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
    let mut message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let written = text.split('\n').nth(line - 1).unwrap_or("").trim_end();
    let mut shown: String = written.chars().take(80).collect();
    if shown.len() < written.len() {
        shown.push_str("...");
    }
    message.push_str(&format!(", in `{shown}`"));
    if message.contains("duplicate key") {
        message.push_str("; give each key once per table");
    } else if !message.contains("expected") {
        message.push_str(
            "; expected TOML such as `[[service]]` or `key = \"string\"` (docs/CONFIG.md)",
        );
    }
    ConfigError::Syntax {
        origin: origin.to_string(),
        line,
        column,
        message,
    }
}

/// Where `path` is written in `text` (byte offset): the value, or the nearest enclosing
/// table that has a place (a dotted-key table has none). Only asked on refusals, so the
/// text is parsed again here rather than kept.
fn offset_of(text: &str, path: &Path) -> usize {
    let Ok(doc) = ImDocument::parse(text) else {
        return 0;
    };
    let mut item: &Item = doc.as_item();
    let mut at = 0;
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => item.get(k.as_str()),
            Seg::Index(i) => item.get(*i),
        };
        let Some(next) = next else { break };
        item = next;
        if let Some(span) = item.span() {
            at = span.start;
        }
    }
    at
}

/// A plan refusal, at the line of the service (or backend, or `maglev_size`) it concerns.
fn plan_error(text: &str, origin: &str, config: &Config, error: PlanError) -> ConfigError {
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
    let path = match (svc, backend, &error) {
        (Some(i), _, PlanError::BadMaglevSize { .. }) => {
            Path::of(&["service"]).index(i).key("maglev_size")
        }
        (Some(i), Some(j), _) => Path::of(&["service"]).index(i).key("backend").index(j),
        (Some(i), None, _) => Path::of(&["service"]).index(i),
        (None, _, _) => Path::default(),
    };
    ConfigError::Plan {
        origin: origin.to_string(),
        line: line_col(text, offset_of(text, &path)).0,
        service: svc
            .map(|i| services[i].spec.name.clone())
            .unwrap_or_default(),
        error: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::spec::{
        BackendState, EncapSpec, Forwarding, HealthKind, HttpCheck, InsertOn, OuterSource,
        Protocol, Scheduler, StickOn, TlsCheck,
    };

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
                }],
                announce: None,
                cluster: None,
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
        assert_eq!(h.kind, HealthKind::Http(HttpCheck::default()));
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
                kind: HealthKind::Http(HttpCheck {
                    path: "/healthz?full=1".into(),
                    expect_status: Some(204),
                    host: None,
                }),
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
            &["use \"tcp\", \"http\", \"https\" or \"none\""],
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
    fn https_checks_parse_and_their_options_are_checked() {
        let svc = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:443\"\n";
        let c = parse(
            &format!(
                "{svc}health = {{ kind = \"https\", path = \"/up\", host = \"api.example.com\", \
                 ca = \"/etc/ca.pem\", sni = \"backend.example.com\" }}\n"
            ),
            "lb.toml",
        )
        .unwrap();
        assert_eq!(
            c.services[0].health.kind,
            HealthKind::Https(
                HttpCheck {
                    path: "/up".into(),
                    expect_status: None,
                    host: Some("api.example.com".into()),
                },
                TlsCheck {
                    verify: true,
                    ca: Some("/etc/ca.pem".into()),
                    sni: Some("backend.example.com".into()),
                }
            )
        );
        let again = parse(&c.to_toml(), "again.toml").unwrap();
        assert_eq!(again, c, "{}", c.to_toml());
        // Without verification; the Host header on plain HTTP.
        let c = parse(
            &format!("{svc}health.kind = \"https\"\nhealth.verify = false\n"),
            "lb.toml",
        )
        .unwrap();
        assert!(
            matches!(&c.services[0].health.kind, HealthKind::Https(_, t) if !t.verify && t.ca.is_none())
        );
        let c = parse(
            &format!("{svc}health = {{ kind = \"http\", host = \"www.example.com:8080\" }}\n"),
            "lb.toml",
        )
        .unwrap();
        assert_eq!(
            c.services[0].health.kind.http().unwrap().host.as_deref(),
            Some("www.example.com:8080")
        );

        check(
            &format!("{svc}health = {{ kind = \"http\", verify = false }}\n"),
            4,
            Some("service[0].health.verify"),
            &["false is only used with kind = \"https\" (kind is \"http\")"],
        );
        check(
            &format!("{svc}health = {{ kind = \"https\", ca = \"ca.pem\" }}\n"),
            4,
            Some("service[0].health.ca"),
            &["\"ca.pem\" is not accepted", "absolute path"],
        );
        check(
            &format!("{svc}health = {{ kind = \"https\", verify = false, ca = \"/ca.pem\" }}\n"),
            4,
            Some("service[0].health.ca"),
            &["only used with verify = true"],
        );
        check(
            &format!("{svc}[service.health]\nkind = \"https\"\nverify = \"no\"\n"),
            6,
            Some("service[0].health.verify"),
            &["\"no\" is not accepted: use true or false"],
        );
        check(
            &format!("{svc}health = {{ kind = \"tcp\", host = \"x\" }}\n"),
            4,
            Some("service[0].health.host"),
            &["only used with kind = \"http\" or \"https\""],
        );
        check(
            &format!("{svc}health = {{ kind = \"https\", sni = \"not a name\" }}\n"),
            4,
            Some("service[0].health.sni"),
            &["\"not a name\" is not accepted", "DNS name"],
        );
    }

    /// Where a refusal points: the value's line and column, in every TOML form a table may
    /// take (inline, section, dotted keys, inline arrays), and the field's full path.
    #[test]
    fn refusals_point_at_the_value_in_every_form() {
        let svc = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n";
        for (text, line, column, field) in [
            (format!("{svc}health = {{ rise = 0 }}\n"), 4, 19, "service[0].health.rise"),
            (format!("{svc}[service.health]\nrise = 0\n"), 5, 8, "service[0].health.rise"),
            (format!("{svc}health.rise = 0\n"), 4, 15, "service[0].health.rise"),
            (
                format!("{svc}backend = [{{ address = \"a\" }}]\n"),
                4,
                24,
                "service[0].backend[0].address",
            ),
            (
                format!("{svc}[[service.backend]]\naddress = \"10.0.0.2\"\n[[service.backend]]\naddress = \"x\"\n"),
                7,
                11,
                "service[0].backend[1].address",
            ),
            // A check across fields points at the field it refuses.
            (format!("{svc}health.interval = \"1s\"\nhealth.timeout = \"5s\"\n"), 5, 18, "service[0].health.timeout"),
        ] {
            match parse(&text, "lb.toml").unwrap_err() {
                ConfigError::Field {
                    line: l,
                    column: c,
                    field: f,
                    ..
                } => assert_eq!((l, c, f.as_str()), (line, column, field), "{text}"),
                other => panic!("{text}: {other}"),
            }
        }
    }

    #[test]
    fn stick_on_takes_the_vips_family_and_round_trips() {
        let v4 = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n";
        let v6 = "[[service]]\nname = \"web\"\nlisten = \"[2001:db8::100]:80\"\n";
        for (svc, on, want) in [
            (v4, "src", StickOn::Src),
            (v4, "src/24", StickOn::Network(24)),
            (v4, "src/32", StickOn::Src),
            (v4, "src,ipmask(16)", StickOn::Network(16)),
            (v4, "src,ipmask(24,64)", StickOn::Network(24)),
            (v6, "src/64", StickOn::Network(64)),
            (v6, "src/128", StickOn::Src),
            (v6, "src/24", StickOn::Network(24)),
            (v6, "src,ipmask(24,48)", StickOn::Network(48)),
        ] {
            let c = parse(&format!("{svc}stick_on = \"{on}\"\n"), "lb.toml")
                .unwrap_or_else(|e| panic!("{on}: {e}"));
            assert_eq!(c.services[0].spec.stick_on, want, "{on}");
            let again = parse(&c.to_toml(), "again.toml").unwrap();
            assert_eq!(again.services[0].spec, c.services[0].spec, "{on}");
            let plan = crate::plan::Ids::default().plan(&c.specs()).unwrap();
            assert_eq!(plan.services[0].info.stick_prefix, want.prefix(), "{on}");
        }
        assert_eq!(
            parse(v4, "lb.toml").unwrap().services[0].spec.stick_on,
            StickOn::Src
        );
        check(
            &format!("{v4}stick_on = \"src/48\"\n"),
            4,
            Some("service[0].stick_on"),
            &["\"src/48\"", "IPv4", "from 1 to 32", "10.0.0.100:80"],
        );
        check(
            &format!("{v6}stick_on = \"src,ipmask(24)\"\n"),
            4,
            Some("service[0].stick_on"),
            &["only an IPv4 mask", "\"src,ipmask(24,64)\""],
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
        c.services[0].spec.name = "we\"b\\".into();
        let t: toml::Table = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(t["service"][0]["name"].as_str(), Some("we\"b\\"));
    }

    #[test]
    fn the_shipped_example_and_docs_parse() {
        let example = include_str!("../../../examples/stickylb.toml");
        let c = parse(example, "examples/stickylb.toml").unwrap();
        assert_eq!(c.services.len(), 3);
        let docs = include_str!("../../../docs/CONFIG.md");
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

#[cfg(test)]
mod cluster_tests {
    //! `[cluster]` mounted in the file: read, written back, refused by field.
    use super::*;

    const SERVICE: &str = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n\
        forwarding = \"dsr\"\nscheduler = \"maglev\"\n\
        [[service.backend]]\naddress = \"192.168.1.2:80\"\n";

    fn cluster(extra: &str) -> String {
        format!(
            "{SERVICE}\n[cluster]\nnode = \"lb1\"\nlisten = \"10.0.0.1:7946\"\n\
             peers = [ {{ name = \"lb2\", address = \"10.0.0.2:7946\" }} ]\n\
             ca = \"/etc/stickylb/ca.pem\"\ncert = \"/etc/stickylb/lb1.pem\"\n\
             key = \"/etc/stickylb/lb1.key\"\n{extra}"
        )
    }

    #[test]
    fn absent_is_a_single_node() {
        assert_eq!(parse(SERVICE, "lb.toml").unwrap().cluster, None);
    }

    #[test]
    fn read_and_written_back() {
        let c = parse(&cluster("peer_timeout = \"7s\"\n"), "lb.toml").unwrap();
        let k = c.cluster.as_ref().expect("mounted");
        assert_eq!(k.node, "lb1");
        assert_eq!(k.peers.len(), 1);
        assert_eq!(k.peer_timeout, Duration::from_secs(7));
        assert_eq!(k.heartbeat, Duration::from_secs(1), "defaults apply");
        let again = parse(&c.to_toml(), "runtime.toml").unwrap();
        assert_eq!(again, c, "to_toml keeps [cluster]:\n{}", c.to_toml());
    }

    #[test]
    fn refusals_name_the_cluster_field() {
        for (extra, field_name, says) in [
            (
                "peer_timeout = \"1s\"\n",
                "cluster.peer_timeout",
                "at least twice the heartbeat",
            ),
            ("queue = 5\n", "cluster.queue", "1024 to 16777216"),
            (
                "heartbeat = \"soon\"\n",
                "cluster.heartbeat",
                "is not accepted: use a duration such as",
            ),
            ("colour = 1\n", "cluster", "colour"),
        ] {
            let e = parse(&cluster(extra), "lb.toml").expect_err(extra);
            let msg = e.to_string();
            assert!(
                e.field().is_some_and(|f| f.starts_with(field_name)),
                "{extra:?}: {msg}"
            );
            assert!(msg.contains(says), "{extra:?}: {msg}");
        }
        let bad_peer = cluster("").replace("name = \"lb2\"", "name = \"lb1\"");
        let e = parse(&bad_peer, "lb.toml").unwrap_err();
        assert_eq!(e.field(), Some("cluster.peers[0].name"), "{e}");
        assert!(e.to_string().contains("other than this node's own"), "{e}");
    }

    #[test]
    fn nat_is_refused_in_a_cluster_naming_both() {
        let text = cluster("").replace("forwarding = \"dsr\"\n", "");
        let e = parse(&text, "lb.toml").unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.field(), Some("service[0].forwarding"), "{msg}");
        for s in ["\"nat\"", "[cluster]", "\"dsr\"", "\"ipip\"", "\"gue\""] {
            assert!(msg.contains(s), "{msg} does not say {s}");
        }
    }
}
