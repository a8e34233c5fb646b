//! The control protocol between `stickylb` subcommands and the running agent: JSON lines
//! over a Unix socket (documented in docs/CONTROL.md). One request per line, one response
//! per line: `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}`.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{self, BackendConfig, Config, ConfigError, ServiceConfig},
    plan,
    spec::AdminState,
};

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/stickylb/stickylb.sock";
/// Longest request line accepted (bytes).
pub const MAX_REQUEST: usize = 1 << 20;

/// A backend as given to `service.add` / `backend.add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendDef {
    pub address: String,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default = "ready")]
    pub state: String,
}

fn one() -> u32 {
    1
}
fn ready() -> String {
    "ready".into()
}

/// A service as given to `service.add`; the same fields and defaults as a `[[service]]`
/// of the config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    pub name: String,
    pub listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(default)]
    pub backends: Vec<BackendDef>,
}

/// Every request the agent understands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", deny_unknown_fields)]
pub enum Request {
    #[serde(rename = "status")]
    Status,
    /// Re-read the config file. A file without services, while services run, is refused
    /// unless `allow_empty` (a truncated or half-written file must not remove them all).
    #[serde(rename = "reload")]
    Reload {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_empty: bool,
    },
    #[serde(rename = "stats")]
    Stats,
    #[serde(rename = "service.list")]
    ServiceList,
    #[serde(rename = "service.add")]
    ServiceAdd { service: ServiceDef },
    #[serde(rename = "service.remove")]
    ServiceRemove { name: String },
    #[serde(rename = "backend.list")]
    BackendList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    #[serde(rename = "backend.add")]
    BackendAdd {
        service: String,
        backend: BackendDef,
    },
    #[serde(rename = "backend.remove")]
    BackendRemove { service: String, address: String },
    #[serde(rename = "backend.weight")]
    BackendWeight {
        service: String,
        address: String,
        weight: u32,
    },
    #[serde(rename = "backend.state")]
    BackendState {
        service: String,
        address: String,
        state: String,
    },
    #[serde(rename = "table.show")]
    TableShow {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    #[serde(rename = "table.lookup")]
    TableLookup { service: String, client: String },
    #[serde(rename = "table.clear")]
    TableClear {
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<String>,
    },
    #[serde(rename = "table.pin")]
    TablePin {
        service: String,
        client: String,
        backend: String,
    },
}

/// The names of all commands, for error messages.
pub const COMMANDS: &str = "status, reload, stats, service.list, service.add, service.remove, backend.list, backend.add, backend.remove, backend.weight, backend.state, table.show, table.lookup, table.clear, table.pin";

/// A response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Self {
            ok: true,
            result: Some(result),
            error: None,
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }
}

/// The arguments of each command, for error messages: `(cmd, accepted)`.
const USAGE: &[(&str, &str)] = &[
    ("status", r#"{"cmd":"status"}"#),
    (
        "reload",
        r#"{"cmd":"reload"} or {"cmd":"reload","allow_empty":true}"#,
    ),
    ("stats", r#"{"cmd":"stats"}"#),
    ("service.list", r#"{"cmd":"service.list"}"#),
    (
        "service.add",
        r#"{"cmd":"service.add","service":{"name":"web","listen":"10.0.0.100:80"}} (optional in "service": "protocol", "scheduler", "forwarding", "expire", "health", "backends":[{"address":"192.168.1.2:80","weight":1,"state":"ready"}])"#,
    ),
    ("service.remove", r#"{"cmd":"service.remove","name":"web"}"#),
    (
        "backend.list",
        r#"{"cmd":"backend.list"} or {"cmd":"backend.list","service":"web"}"#,
    ),
    (
        "backend.add",
        r#"{"cmd":"backend.add","service":"web","backend":{"address":"192.168.1.2:80"}} (optional in "backend": "weight" 0..=256, "state" "ready", "drain" or "maint")"#,
    ),
    (
        "backend.remove",
        r#"{"cmd":"backend.remove","service":"web","address":"192.168.1.2:80"}"#,
    ),
    (
        "backend.weight",
        r#"{"cmd":"backend.weight","service":"web","address":"192.168.1.2:80","weight":N} with N in 0..=256"#,
    ),
    (
        "backend.state",
        r#"{"cmd":"backend.state","service":"web","address":"192.168.1.2:80","state":S} with S one of "ready", "drain", "maint""#,
    ),
    (
        "table.show",
        r#"{"cmd":"table.show"} (optional: "service":"web", "backend":"192.168.1.2:80" with "service", "limit":N)"#,
    ),
    (
        "table.lookup",
        r#"{"cmd":"table.lookup","service":"web","client":"10.0.0.1"}"#,
    ),
    (
        "table.clear",
        r#"{"cmd":"table.clear","service":"web"} (optional: "client":"10.0.0.1" or "backend":"192.168.1.2:80")"#,
    ),
    (
        "table.pin",
        r#"{"cmd":"table.pin","service":"web","client":"10.0.0.1","backend":"192.168.1.2:80"}"#,
    ),
];

/// What a command accepts, e.g. `{"cmd":"backend.remove","service":"web","address":...}`.
pub fn usage(cmd: &str) -> Option<&'static str> {
    USAGE.iter().find(|(c, _)| *c == cmd).map(|(_, u)| *u)
}

/// At most `max` characters of `s`, quoted, for messages about input of any size.
pub fn excerpt(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{:?}...", &s[..end]),
        None => format!("{s:?}"),
    }
}

/// The refusal of a request line of `len` bytes, more than [`MAX_REQUEST`].
pub fn too_long(len: usize) -> String {
    format!("request of {len} bytes refused: accepted are lines of at most {MAX_REQUEST} bytes")
}

/// Decodes one request line as received (without its `\n`): `Ok(None)` for a blank line,
/// otherwise the request, or the refusal to answer with (see [`Response::err`]). The
/// agent's control server hands every line to this.
pub fn decode_line(line: &[u8]) -> Result<Option<Request>, String> {
    if line.len() > MAX_REQUEST {
        return Err(too_long(line.len()));
    }
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "request is not UTF-8 (byte {} is not valid): send one JSON object per line, \
             e.g. {{\"cmd\":\"status\"}}",
            e.valid_up_to()
        )
    })?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    parse_request(text).map(Some)
}

/// Parses a request line, with an error that says what is accepted.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        format!(
            "request {} is not valid JSON ({e}): send one JSON object per line, \
             e.g. {{\"cmd\":\"status\"}}",
            excerpt(line.trim(), 60)
        )
    })?;
    let cmd = match value.get("cmd") {
        Some(serde_json::Value::String(c)) => c.clone(),
        Some(other) => {
            let json = other.to_string();
            let shown = match json.char_indices().nth(60) {
                Some((end, _)) => format!("{}...", &json[..end]),
                None => json,
            };
            return Err(format!(
                "\"cmd\" is {shown}, not a string: accepted commands are {COMMANDS}"
            ));
        }
        None if value.is_object() => {
            return Err(format!(
                "request has no \"cmd\": accepted commands are {COMMANDS}, \
                 e.g. {{\"cmd\":\"status\"}}"
            ))
        }
        None => {
            return Err(format!(
                "request {} is not a JSON object: send e.g. {{\"cmd\":\"status\"}} \
                 (accepted commands are {COMMANDS})",
                excerpt(&value.to_string(), 60)
            ))
        }
    };
    let Some(usage) = usage(&cmd) else {
        return Err(format!(
            "unknown command {}: accepted commands are {COMMANDS}",
            excerpt(&cmd, 60)
        ));
    };
    // serde does not refuse unknown fields of an internally tagged unit variant: the
    // commands without arguments check it here.
    if let Some(extra) = value
        .as_object()
        .filter(|_| ARGUMENTLESS.contains(&cmd.as_str()))
        .and_then(|o| o.keys().find(|k| *k != "cmd"))
    {
        return Err(format!(
            "bad arguments for {cmd}: unknown field {}, {cmd} takes none; accepted: {usage}",
            excerpt(extra, 60)
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| format!("bad arguments for {cmd}: {e}; accepted: {usage}"))
}

/// The commands without arguments.
const ARGUMENTLESS: &[&str] = &["status", "stats", "service.list"];

/// A configuration change asked for by a request, made on a copy of the configuration.
#[derive(Clone, Debug)]
pub struct Edit {
    /// The whole configuration with the change made; it plans cleanly.
    pub config: Config,
    /// The request's answer (`result`).
    pub result: serde_json::Value,
    /// What changed, for the agent's log (`service web added`).
    pub log: String,
}

/// The part of handling a request that needs no data path: checks the request's arguments
/// against `config` (services and backends exist, addresses and values are accepted) and,
/// for a request that changes the configuration, makes the change on a copy that is then
/// planned ([`plan::Ids::plan`], as the agent will). `Ok(None)`: nothing to change, the
/// request only reads (the agent answers it from the maps). The agent runs this first for
/// every request; the fuzz target `control` runs it too.
pub fn check(config: &Config, req: &Request) -> Result<Option<Edit>, String> {
    use serde_json::json;
    let edit = |next: Config, result: serde_json::Value, log: String| {
        plan::Ids::default()
            .plan(&next.specs())
            .map_err(|e| e.to_string())?;
        Ok(Some(Edit {
            config: next,
            result,
            log,
        }))
    };
    match req {
        Request::Status | Request::Reload { .. } | Request::Stats | Request::ServiceList => {
            Ok(None)
        }
        Request::ServiceAdd { service } => {
            let sc = service_from_def(service)?;
            let name = sc.spec.name.clone();
            if config.services.iter().any(|s| s.spec.name == name) {
                return Err(format!(
                    "service {name:?} exists already: give a name not in use ({}), or remove \
                     it first, or change its backends with the backend commands",
                    service_names(config)
                ));
            }
            let mut next = config.clone();
            next.services.push(sc);
            edit(
                next,
                json!({ "added": name }),
                format!("service {name} added"),
            )
        }
        Request::ServiceRemove { name } => {
            find_service(config, name)?;
            let mut next = config.clone();
            next.services.retain(|s| s.spec.name != *name);
            edit(
                next,
                json!({ "removed": name }),
                format!("service {name} removed"),
            )
        }
        Request::BackendList { service } => {
            if let Some(s) = service {
                find_service(config, s)?;
            }
            Ok(None)
        }
        Request::BackendAdd { service, backend } => {
            let s = find_service(config, service)?;
            let bc = backend_from_def(backend, s)?;
            let addr = bc.addr;
            if s.backends.iter().any(|b| b.addr == addr) {
                return Err(format!(
                    "service {service:?} already has backend {addr}: add another address, or \
                     change this one with backend.weight / backend.state"
                ));
            }
            let mut next = config.clone();
            let s = service_mut(&mut next, service);
            s.spec.backends.push(crate::spec::BackendSpec {
                addr,
                weight: bc.weight,
                state: bc.admin.effective(true),
            });
            s.backends.push(bc);
            edit(
                next,
                json!({ "added": addr.to_string(), "service": service }),
                format!("backend {addr} added to {service}"),
            )
        }
        Request::BackendRemove { service, address } => {
            let addr = find_backend(find_service(config, service)?, address)?;
            let mut next = config.clone();
            let s = service_mut(&mut next, service);
            s.backends.retain(|b| b.addr != addr);
            s.spec.backends.retain(|b| b.addr != addr);
            edit(
                next,
                json!({ "removed": addr.to_string(), "service": service }),
                format!("backend {addr} removed from {service} (its clients are re-picked)"),
            )
        }
        Request::BackendWeight {
            service,
            address,
            weight,
        } => {
            let addr = find_backend(find_service(config, service)?, address)?;
            if *weight > plan::MAX_WEIGHT {
                return Err(format!(
                    "weight {weight} is not accepted: use 0..={} (0 = no new clients)",
                    plan::MAX_WEIGHT
                ));
            }
            let mut next = config.clone();
            let s = service_mut(&mut next, service);
            for b in s.backends.iter_mut().filter(|b| b.addr == addr) {
                b.weight = *weight;
            }
            for b in s.spec.backends.iter_mut().filter(|b| b.addr == addr) {
                b.weight = *weight;
            }
            edit(
                next,
                json!({ "service": service, "address": addr.to_string(), "weight": weight }),
                format!("backend {addr} of {service}: weight {weight}"),
            )
        }
        Request::BackendState {
            service,
            address,
            state,
        } => {
            let addr = find_backend(find_service(config, service)?, address)?;
            let admin = parse_admin(state)?;
            let mut next = config.clone();
            let s = service_mut(&mut next, service);
            for b in s.backends.iter_mut().filter(|b| b.addr == addr) {
                b.admin = admin;
            }
            for b in s.spec.backends.iter_mut().filter(|b| b.addr == addr) {
                b.state = admin.effective(true);
            }
            let name = admin_name(admin);
            edit(
                next,
                json!({ "service": service, "address": addr.to_string(), "state": name }),
                format!("backend {addr} of {service}: state {name}"),
            )
        }
        Request::TableShow {
            service, backend, ..
        } => {
            match (service, backend) {
                (Some(s), Some(b)) => {
                    find_backend(find_service(config, s)?, b)?;
                }
                (Some(s), None) => {
                    find_service(config, s)?;
                }
                (None, Some(b)) => return Err(backend_needs_service(b)),
                (None, None) => {}
            }
            Ok(None)
        }
        Request::TableLookup { service, client } => {
            parse_client(find_service(config, service)?, client)?;
            Ok(None)
        }
        Request::TableClear {
            service,
            client,
            backend,
        } => {
            let s = find_service(config, service)?;
            match (client, backend) {
                (Some(c), Some(b)) => return Err(client_and_backend(c, b)),
                (Some(c), None) => {
                    parse_client(s, c)?;
                }
                (None, Some(b)) => {
                    find_backend(s, b)?;
                }
                (None, None) => {}
            }
            Ok(None)
        }
        Request::TablePin {
            service,
            client,
            backend,
        } => {
            let s = find_service(config, service)?;
            parse_client(s, client)?;
            find_backend(s, backend)?;
            Ok(None)
        }
    }
}

/// `table.show` with a `backend` but no `service`.
pub fn backend_needs_service(backend: &str) -> String {
    format!(
        "\"backend\" {} needs a \"service\" (CLI: table show SERVICE --backend ADDR:PORT): \
         accepted: {}",
        excerpt(backend, 60),
        usage("table.show").unwrap_or_default()
    )
}

/// `table.clear` with both a `client` and a `backend`.
pub fn client_and_backend(client: &str, backend: &str) -> String {
    format!(
        "\"client\" {} and \"backend\" {} given together: accepted is one of them \
         (--client IP or --backend ADDR:PORT), or neither to clear the whole service",
        excerpt(client, 60),
        excerpt(backend, 60)
    )
}

fn service_names(config: &Config) -> String {
    if config.services.is_empty() {
        return "there are none".into();
    }
    let names: Vec<String> = config
        .services
        .iter()
        .map(|s| format!("{:?}", s.spec.name))
        .collect();
    format!("services: {}", names.join(", "))
}

fn service_mut<'c>(config: &'c mut Config, name: &str) -> &'c mut ServiceConfig {
    config
        .services
        .iter_mut()
        .find(|s| s.spec.name == name)
        .expect("checked by find_service")
}

/// The service named `name`, or an error listing the services.
pub fn find_service<'c>(config: &'c Config, name: &str) -> Result<&'c ServiceConfig, String> {
    config
        .services
        .iter()
        .find(|s| s.spec.name == name)
        .ok_or_else(|| {
            format!(
                "no service named {}: accepted are the configured services ({})",
                excerpt(name, 60),
                service_names(config)
            )
        })
}

/// A backend of `service` by `ADDR:PORT` as listed by `backend.list`, `ADDR` when the
/// service has one backend with that address, or `ADDR:PORT` with the service port for
/// a backend configured without port.
pub fn find_backend(service: &ServiceConfig, address: &str) -> Result<SocketAddr, String> {
    let list = || {
        if service.backends.is_empty() {
            return "it has none".to_string();
        }
        let all: Vec<String> = service
            .backends
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        format!("backends: {}", all.join(", "))
    };
    let name = &service.spec.name;
    let shown = excerpt(address, 60);
    let trimmed = address.trim();
    if let Ok(sa) = trimmed.parse::<SocketAddr>() {
        if let Some(b) = service.backends.iter().find(|b| b.addr == sa) {
            return Ok(b.addr);
        }
        // A backend without port serves on the service port.
        let vip_port = service.spec.vip.port();
        if sa.port() == vip_port && vip_port != 0 {
            let portless = SocketAddr::new(sa.ip(), 0);
            if let Some(b) = service.backends.iter().find(|b| b.addr == portless) {
                return Ok(b.addr);
            }
        }
    } else if let Ok(ip) = trimmed.parse::<IpAddr>().or_else(|e| {
        match trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().map(IpAddr::V6),
            None => Err(e),
        }
    }) {
        let found: Vec<_> = service
            .backends
            .iter()
            .filter(|b| b.addr.ip() == ip)
            .collect();
        match found.as_slice() {
            [one] => return Ok(one.addr),
            [] => {}
            several => {
                let ports: Vec<String> = several.iter().map(|b| b.addr.to_string()).collect();
                return Err(format!(
                    "{shown} matches {} backends of service {name:?}: give ADDR:PORT, one of {}",
                    several.len(),
                    ports.join(", ")
                ));
            }
        }
    } else {
        return Err(format!(
            "{shown} is not a backend address: use ADDR:PORT (or ADDR) as listed by \
             backend list, e.g. \"192.168.1.2:80\" ({})",
            list()
        ));
    }
    Err(format!(
        "service {name:?} has no backend {shown}: accepted are its {}",
        list()
    ))
}

/// A client address of `service` (its VIP's family).
pub fn parse_client(service: &ServiceConfig, client: &str) -> Result<IpAddr, String> {
    let family = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
    let vip = service.spec.vip;
    let ip: IpAddr = client.trim().parse().map_err(|_| {
        format!(
            "{} is not an IP address: give the client's {} address, e.g. {}",
            excerpt(client, 60),
            family(vip.is_ipv4()),
            if vip.is_ipv4() {
                "10.1.2.3"
            } else {
                "2001:db8::1"
            }
        )
    })?;
    if ip.is_ipv4() != vip.is_ipv4() {
        return Err(format!(
            "client {ip} is {} but service {:?} listens on {vip} ({}): give an {} client address",
            family(ip.is_ipv4()),
            service.spec.name,
            family(vip.is_ipv4()),
            family(vip.is_ipv4()),
        ));
    }
    Ok(ip)
}

/// An operator state: `ready`, `drain` or `maint`.
pub fn parse_admin(s: &str) -> Result<AdminState, String> {
    match s {
        "ready" => Ok(AdminState::Ready),
        "drain" => Ok(AdminState::Drain),
        "maint" => Ok(AdminState::Maint),
        other => Err(format!(
            "state {} is not accepted: use ready, drain or maint",
            excerpt(other, 60)
        )),
    }
}

/// The name of an operator state, as [`parse_admin`] reads it.
pub fn admin_name(a: AdminState) -> &'static str {
    match a {
        AdminState::Ready => "ready",
        AdminState::Drain => "drain",
        AdminState::Maint => "maint",
    }
}

/// A backend for `service` (`backend.add`), parsed by the config parser inside a copy of the
/// service's own listen address and forwarding mode (so family and port rules apply).
pub fn backend_from_def(b: &BackendDef, service: &ServiceConfig) -> Result<BackendConfig, String> {
    let svc = ServiceDef {
        name: service.spec.name.clone(),
        listen: service.spec.vip.to_string(),
        protocol: None,
        scheduler: None,
        forwarding: Some(format!("{:?}", service.spec.forwarding).to_lowercase()),
        expire: None,
        health: None,
        backends: vec![b.clone()],
    };
    let cfg = parse_defs(&svc, &[("service[0].backend[0]", "backend")])?;
    Ok(cfg.backends.into_iter().next().expect("one backend"))
}

/// A service (`service.add`), parsed by the config parser.
pub fn service_from_def(d: &ServiceDef) -> Result<ServiceConfig, String> {
    parse_defs(
        d,
        &[
            ("service[0].backend[", "service.backends["),
            ("service[0].stick_table.expire", "service.expire"),
            ("service[0].health.kind", "service.health"),
            ("service[0]", "service"),
        ],
    )
}

/// Parses a control-command definition through the config parser, so every default and
/// check is the config file's. Errors name the request's fields: `fields` maps the config
/// file's paths to them.
fn parse_defs(d: &ServiceDef, fields: &[(&str, &str)]) -> Result<ServiceConfig, String> {
    let q = config::quote;
    let mut t = format!(
        "[[service]]\nname = {}\nlisten = {}\n",
        q(&d.name),
        q(&d.listen)
    );
    for (k, v) in [
        ("protocol", &d.protocol),
        ("scheduler", &d.scheduler),
        ("forwarding", &d.forwarding),
    ] {
        if let Some(v) = v {
            t.push_str(&format!("{k} = {}\n", q(v)));
        }
    }
    if let Some(e) = &d.expire {
        t.push_str(&format!("stick_table = {{ expire = {} }}\n", q(e)));
    }
    if let Some(h) = &d.health {
        t.push_str(&format!("health = {{ kind = {} }}\n", q(h)));
    }
    for b in &d.backends {
        t.push_str(&format!(
            "[[service.backend]]\naddress = {}\nweight = {}\nstate = {}\n",
            q(&b.address),
            b.weight,
            q(&b.state)
        ));
    }
    let rename = |s: &str| {
        fields
            .iter()
            .fold(s.to_string(), |s, (from, to)| s.replace(from, to))
    };
    match config::parse(&t, "request") {
        Ok(mut c) => Ok(c.services.remove(0)),
        Err(ConfigError::Field { field, message, .. }) => {
            Err(format!("field `{}`: {}", rename(&field), rename(&message)))
        }
        Err(ConfigError::Plan { error, .. }) => Err(rename(&error.to_string())),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent not reachable at {path}: {source} (is `stickylb run` running? see --socket)")]
    Unreachable {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the agent at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the agent sent an unreadable response: {0}")]
    BadResponse(String),
}

/// Sends one request and waits for its response.
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Unreachable {
        path: path.clone(),
        source,
    })?;
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line =
        serde_json::to_string(req).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    line.push('\n');
    // The agent may answer and close before reading (a refused peer): a failed write
    // still leaves its answer to read.
    let written = (&stream).write_all(line.as_bytes());
    let mut reader = BufReader::new(&stream);
    let mut resp = String::new();
    let read = reader.read_line(&mut resp);
    if resp.is_empty() {
        written.map_err(io)?;
        read.map_err(io)?;
    }
    serde_json::from_str(&resp).map_err(|e| ClientError::BadResponse(format!("{e}: {resp:?}")))
}

#[cfg(test)]
#[path = "refusals_tests.rs"]
mod refusals;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_say_what_is_accepted() {
        let reqs = vec![
            Request::Status,
            Request::BackendState {
                service: "web".into(),
                address: "10.0.0.2:80".into(),
                state: "drain".into(),
            },
            Request::TableShow {
                service: Some("web".into()),
                backend: None,
                limit: Some(10),
            },
        ];
        for r in reqs {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(&line).unwrap(), r, "{line}");
        }
        assert!(parse_request(
            "{\"cmd\":\"backend.state\",\"service\":\"web\",\"address\":\"a\",\"state\":\"up\"}"
        )
        .is_ok());
        let e = parse_request("{\"cmd\":\"frobnicate\"}").unwrap_err();
        assert!(e.contains("accepted commands are status"), "{e}");
        let e = parse_request("not json").unwrap_err();
        assert!(e.contains("one JSON object per line"), "{e}");
        let e = parse_request("{\"cmd\":\"backend.weight\",\"service\":\"web\"}").unwrap_err();
        assert!(
            e.contains("bad arguments for backend.weight") && e.contains("address"),
            "{e}"
        );
        let e = parse_request(
            "{\"cmd\":\"backend.remove\",\"service\":\"a\",\"address\":\"b\",\"extra\":1}",
        )
        .unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
