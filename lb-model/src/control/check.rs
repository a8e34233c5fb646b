//! The part of handling a control request that needs no data path: a request's arguments
//! checked against the configuration (services and backends exist, addresses and values
//! are accepted), and a change made on a copy of the configuration that is then planned
//! as the agent will plan it. The agent runs [`check`] first for every request; the fuzz
//! target `control` runs it too.

use std::net::{IpAddr, SocketAddr};

use serde_json::json;

use super::protocol::{usage, Request, ServiceDef};
use crate::{
    config::{
        errors::{Invalid, Path},
        schema::{Sections, ServiceDoc},
        Config, ServiceConfig,
    },
    plan,
    spec::{family_name, BackendSpec, Prefix, StickOn},
    vocab::excerpt,
};

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
        Request::Status {}
        | Request::Reload { .. }
        | Request::Stats {}
        | Request::Peers {}
        | Request::ServiceList {}
        | Request::NodeDrain {}
        | Request::NodeUndrain {} => Ok(None),
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
            s.spec.backends.push(BackendSpec {
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
            let weight = weight.0;
            let mut next = config.clone();
            let s = service_mut(&mut next, service);
            for b in s.backends.iter_mut().filter(|b| b.addr == addr) {
                b.weight = weight;
            }
            for b in s.spec.backends.iter_mut().filter(|b| b.addr == addr) {
                b.weight = weight;
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
            let admin = *state;
            let mut next = config.clone();
            let s = service_mut(&mut next, service);
            for b in s.backends.iter_mut().filter(|b| b.addr == addr) {
                b.admin = admin;
            }
            for b in s.spec.backends.iter_mut().filter(|b| b.addr == addr) {
                b.state = admin.effective(true);
            }
            let name = admin.name();
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
            client_entry(find_service(config, service)?, client)?;
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
                    client_entry(s, c)?;
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
            client_entry(s, client)?;
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
    let vip = service.spec.vip;
    let ip: IpAddr = client.trim().parse().map_err(|_| {
        format!(
            "{} is not an IP address: give the client's {} address, e.g. {}",
            excerpt(client, 60),
            family_name(vip.ip()),
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
            family_name(ip),
            service.spec.name,
            family_name(vip.ip()),
            family_name(vip.ip()),
        ));
    }
    Ok(ip)
}

/// The stick-table entry a `client` argument names in `service`: the network its
/// clients share ([`StickOn::network`]: a host, /32 or /128, for `stick_on = "src"`).
/// Accepted: an address of the VIP's family (its network is meant), or the network
/// itself as `ADDR/LEN` with the service's length and no host bits.
pub fn client_entry(service: &ServiceConfig, client: &str) -> Result<Prefix, String> {
    let on = service.spec.stick_on;
    let t = client.trim();
    let Some((a, l)) = t.split_once('/') else {
        return Ok(on.network(parse_client(service, t)?));
    };
    let ip = parse_client(service, a)?;
    let want = on.network(ip).len;
    let accepted = || match on {
        StickOn::Src => format!(
            "service {:?} sticks by the full address (stick_on = \"src\"): give an address, \
             e.g. {ip}",
            service.spec.name
        ),
        StickOn::Network(n) => format!(
            "service {:?} sticks by /{n} networks (stick_on = \"src/{n}\"): give an address \
             (its /{n} is meant) or a /{n} network, e.g. {}",
            service.spec.name,
            on.network(ip)
        ),
    };
    // The length first (a network of another length is the likelier mistake), then the
    // host bits.
    if let Some(len) = l.trim().parse::<u8>().ok().filter(|n| *n != want) {
        return Err(format!(
            "{} is a /{len} network: {}",
            excerpt(client, 60),
            accepted()
        ));
    }
    t.parse::<Prefix>()
        .map_err(|e| format!("{e}; {}", accepted()))
}

/// A backend for `service` (`backend.add`), checked as a `[[service.backend]]` of that
/// service (its address family, forwarding mode and port rules apply).
fn backend_from_def(
    b: &crate::config::schema::BackendDoc,
    service: &ServiceConfig,
) -> Result<crate::config::BackendConfig, String> {
    let mut doc = ServiceDoc::from_config(service);
    doc.backend = Sections(vec![b.clone()]);
    let name = |p: &Path| match p.0.split_first() {
        Some((_, rest)) if !rest.is_empty() => {
            // backend[0].x → backend.x
            Path::of(&["backend"])
                .join(&Path(rest[1..].to_vec()))
                .to_string()
        }
        _ => "backend".to_string(),
    };
    let sc = doc.check(&name).map_err(|e| refusal(&name(&e.path), e))?;
    Ok(sc.backends.into_iter().next().expect("one backend"))
}

/// A service (`service.add`), checked as a `[[service]]` of the config file.
fn service_from_def(d: &ServiceDef) -> Result<ServiceConfig, String> {
    d.to_doc()
        .check(&ServiceDef::field_name)
        .map_err(|e| refusal(&ServiceDef::field_name(&e.path), e))
}

fn refusal(field: &str, e: Invalid) -> String {
    format!("field `{field}`: {}", e.message)
}
