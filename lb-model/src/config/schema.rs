//! The configuration file's schema as serde types, `deny_unknown_fields` throughout: what a
//! `[[service]]`, its `stick_table`, `health` and `[[service.backend]]` sections may hold.
//! The same types serve control requests (`backend.add` takes a [`BackendDoc`];
//! `service.add` fills a [`ServiceDoc`]), so a value is read and refused the same way
//! wherever it comes from.
//!
//! [`ServiceDoc::check`] makes the checks that involve several fields (a `maglev_size`
//! without `scheduler = "maglev"`, a timeout longer than the interval, a DSR backend on
//! another port, ...) and builds the model's [`ServiceConfig`]; [`ServiceDoc::from_config`]
//! is its inverse, for writing a configuration back (`to_toml`, the runtime state).
//!
//! A new key is a field here (with its value type in [`super::values`]), a line in
//! [`ServiceDoc::check`] and in [`ServiceDoc::from_config`], and a row in docs/CONFIG.md.

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

use super::{
    errors::{Invalid, Path},
    values::{
        BackendAddr, CaFile, Count, Expire, FamilyPrefix, Flag, GuePort, Host, HttpPath, InsertCap,
        Interval, Listen, MaglevSize, Name, Period, ServerName, SourceKind, StatusCode,
        StickOnValue, TableSize, Weight,
    },
    BackendConfig, ServiceConfig, DEFAULT_HEALTH_TIMEOUT, DEFAULT_STICK_TABLE_SIZE,
};
use crate::{
    duration,
    spec::{
        AdminState, BackendSpec, CheckKind, EncapSpec, Forwarding, HealthConfig, HealthKind,
        HttpCheck, InsertOn, OuterSource, Protocol, Scheduler, ServiceSpec, StickOn, TlsCheck,
    },
    vocab::Shown,
};

/// A whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileDoc {
    #[serde(default, skip_serializing_if = "Sections::is_empty")]
    pub service: Sections<ServiceDoc>,
    /// `[announce]`: VIPs announced through the node's routing daemon (issue 13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<crate::announce::AnnounceDoc>,
    /// `[cluster]`: replication of the stick table to peers (docs/CLUSTER.md); checked by
    /// [`lb_cluster::ClusterConfig::validate`] in [`super::parse`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<lb_cluster::ClusterConfig>,
}

/// One `[[service]]` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct ServiceDoc {
    pub name: Name,
    pub listen: Listen,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<Scheduler>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<Forwarding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev_size: Option<Shown<MaglevSize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stick_on: Option<Shown<StickOnValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap: Option<EncapDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stick_table: Option<StickTableDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthDoc>,
    #[serde(default, skip_serializing_if = "Sections::is_empty")]
    pub backend: Sections<BackendDoc>,
}

/// A service's `encap` table (`forwarding = "ipip"` / `"gue"`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table, e.g. encap = { gue_port = 6080, source = \"fib\" }"
)]
pub struct EncapDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gue_port: Option<Shown<GuePort>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Shown<SourceKind>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_prefix_v4: Option<Shown<FamilyPrefix<true>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_prefix_v6: Option<Shown<FamilyPrefix<false>>>,
}

/// A service's `stick_table` table.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table, e.g. stick_table = { size = \"200k\", expire = \"30m\" }"
)]
pub struct StickTableDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<TableSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire: Option<Expire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insert_on: Option<Shown<InsertOn>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insert_cap: Option<InsertCap>,
}

/// A service's `health` table.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table, e.g. health = { kind = \"tcp\", interval = \"2s\", rise = 2, fall = 3 }"
)]
pub struct HealthDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CheckKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Interval>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Shown<Period>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<Count<2>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<Count<3>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Shown<HttpPath>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<Shown<StatusCode>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Shown<Host>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Shown<Flag>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<Shown<CaFile>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<Shown<ServerName>>,
}

/// One `[[service.backend]]` entry (also the `backend` of a `backend.add` request).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct BackendDoc {
    pub address: Shown<BackendAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Weight>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AdminState>,
}

impl BackendDoc {
    /// A backend given through the API.
    pub fn new(addr: SocketAddr, weight: u32, state: AdminState) -> Self {
        Self {
            address: Shown::new(BackendAddr(addr)),
            weight: Some(Weight(weight)),
            state: Some(state),
        }
    }
}

/// What a list of sections is called in a refusal.
pub trait Section {
    const EXPECTING: &'static str;
}

impl Section for ServiceDoc {
    const EXPECTING: &'static str = "[[service]] sections, one per service";
}

impl Section for BackendDoc {
    const EXPECTING: &'static str = "[[service.backend]] sections, one per backend";
}

/// `[[x]]` sections (or `x = [{ ... }, ...]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Sections<T>(pub Vec<T>);

impl<T> Default for Sections<T> {
    fn default() -> Self {
        Sections(Vec::new())
    }
}

impl<T> Sections<T> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: Serialize> Serialize for Sections<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de> + Section> Deserialize<'de> for Sections<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Section> serde::de::Visitor<'de> for V<T> {
            type Value = Sections<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(t) = seq.next_element()? {
                    v.push(t);
                }
                Ok(Sections(v))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// Refusal of a field only used with another setting: "X is only used with USED (NOW):
/// remove it or set SET".
fn only_with(shown: &str, used: &str, now: &str, set: &str) -> String {
    format!("{shown} is only used with {used} ({now}): remove it or set {set}")
}

impl ServiceDoc {
    /// The checks that involve several fields, and the service they define. `name_of`
    /// renders a path (relative to this service) the way the caller names fields, for
    /// messages that mention another field.
    pub fn check(&self, name_of: &dyn Fn(&Path) -> String) -> Result<ServiceConfig, Invalid> {
        let at = |keys: &[&str], message: String| Invalid {
            path: Path::of(keys),
            message,
        };
        let vip = self.listen.0;
        let mut spec = ServiceSpec::new(&self.name.0, vip);
        spec.protocol = self.protocol.unwrap_or(spec.protocol);
        spec.scheduler = self.scheduler.unwrap_or(spec.scheduler);
        spec.forwarding = self.forwarding.unwrap_or(spec.forwarding);
        if let Some(size) = &self.maglev_size {
            if spec.scheduler != Scheduler::Maglev {
                return Err(at(
                    &["maglev_size"],
                    only_with(
                        &size.shown,
                        "scheduler = \"maglev\"",
                        &format!("scheduler is \"{}\"", spec.scheduler),
                        "scheduler = \"maglev\"",
                    ),
                ));
            }
            spec.maglev_size = Some(size.value.0);
        }

        if let Some(on) = &self.stick_on {
            spec.stick_on = stick_on(on, vip).map_err(|m| at(&["stick_on"], m))?;
        }

        if let Some(e) = &self.encap {
            spec.encap = e.check(spec.forwarding)?;
        }

        let mut stick_table_size = DEFAULT_STICK_TABLE_SIZE;
        if let Some(st) = &self.stick_table {
            if let Some(size) = st.size {
                stick_table_size = size.0;
            }
            if let Some(on) = &st.insert_on {
                if on.value == InsertOn::Syn && spec.protocol != Protocol::Tcp {
                    return Err(at(
                        &["stick_table", "insert_on"],
                        "insert_on = \"syn\" needs protocol = \"tcp\" (UDP has no SYN): \
                         use \"any\" for a UDP service"
                            .to_string(),
                    ));
                }
                spec.insert_on = on.value;
            }
            if let Some(cap) = st.insert_cap {
                spec.insert_cap = cap.0;
            }
            if let Some(expire) = st.expire {
                spec.expire = expire.0;
            }
        }

        let health = match &self.health {
            Some(h) => h.check()?,
            None => HealthConfig::default(),
        };

        let mut backends: Vec<BackendConfig> = Vec::new();
        let mut targets: Vec<(SocketAddr, usize)> = Vec::new();
        for (j, b) in self.backend.0.iter().enumerate() {
            let addr = b.address.value.0;
            let shown = &b.address.shown;
            let here = Path::of(&["backend"]).index(j).key("address");
            // `10.0.0.2` and `10.0.0.2:80` on a port-80 service are the same backend.
            let port = match addr.port() {
                0 => vip.port(),
                p => p,
            };
            if spec.forwarding.is_dsr() && vip.port() != 0 && port != vip.port() {
                return Err(Invalid {
                    path: here,
                    message: format!(
                        "{shown} has port {port}, but with forwarding = \"{}\" packets reach the \
                         backend unchanged, on the service port {}: omit the port or use {}",
                        spec.forwarding,
                        vip.port(),
                        vip.port()
                    ),
                });
            }
            let target = SocketAddr::new(addr.ip(), port);
            if let Some((_, first)) = targets.iter().find(|(t, _)| *t == target) {
                return Err(Invalid {
                    path: here,
                    message: format!(
                        "{shown} is the same backend as `{}` ({target}): use each backend once \
                         per service",
                        name_of(&Path::of(&["backend"]).index(*first))
                    ),
                });
            }
            targets.push((target, j));
            backends.push(BackendConfig {
                addr,
                weight: b.weight.map_or(1, |w| w.0),
                admin: b.state.unwrap_or(AdminState::Ready),
            });
        }
        spec.backends = backends
            .iter()
            .map(|b| BackendSpec {
                addr: b.addr,
                weight: b.weight,
                state: b.admin.effective(true),
            })
            .collect();
        Ok(ServiceConfig {
            spec,
            stick_table_size,
            health,
            backends,
        })
    }

    /// The section that defines `s`, every value written out.
    pub fn from_config(s: &ServiceConfig) -> Self {
        let spec = &s.spec;
        let h = &s.health;
        let http = h.kind.http();
        let tls = match &h.kind {
            HealthKind::Https(_, t) => Some(t),
            _ => None,
        };
        Self {
            name: Name(spec.name.clone()),
            listen: Listen(spec.vip),
            protocol: Some(spec.protocol),
            scheduler: Some(spec.scheduler),
            forwarding: Some(spec.forwarding),
            maglev_size: match (spec.scheduler, spec.maglev_size) {
                (Scheduler::Maglev, Some(n)) => Some(Shown::new(MaglevSize(n))),
                _ => None,
            },
            stick_on: Some(Shown::new(match spec.stick_on {
                StickOn::Src => StickOnValue::Src,
                StickOn::Network(n) => StickOnValue::Prefix(n),
            })),
            encap: spec
                .forwarding
                .is_encap()
                .then(|| EncapDoc::from_spec(spec)),
            stick_table: Some(StickTableDoc {
                size: Some(TableSize(s.stick_table_size)),
                expire: Some(Expire(spec.expire)),
                insert_on: Some(Shown::new(spec.insert_on)),
                insert_cap: Some(InsertCap(spec.insert_cap)),
            }),
            health: Some(HealthDoc {
                kind: Some(h.kind.kind()),
                interval: Some(Interval(h.interval)),
                timeout: Some(Shown::new(Period(h.timeout))),
                rise: Some(Count(h.rise)),
                fall: Some(Count(h.fall)),
                path: http.map(|c| Shown::new(HttpPath(c.path.clone()))),
                expect_status: http
                    .and_then(|c| c.expect_status)
                    .map(|c| Shown::new(StatusCode(c))),
                host: http
                    .and_then(|c| c.host.clone())
                    .map(|c| Shown::new(Host(c))),
                verify: tls.map(|t| Shown::new(Flag(t.verify))),
                ca: tls
                    .and_then(|t| t.ca.clone())
                    .map(|c| Shown::new(CaFile(c))),
                sni: tls
                    .and_then(|t| t.sni.clone())
                    .map(|c| Shown::new(ServerName(c))),
            }),
            backend: Sections(
                s.backends
                    .iter()
                    .map(|b| BackendDoc::new(b.addr, b.weight, b.admin))
                    .collect(),
            ),
        }
    }
}

/// `stick_on` for a service on `vip`: the prefix taken from the VIP's family and checked
/// against it; a full-length prefix is the full address.
fn stick_on(on: &Shown<StickOnValue>, vip: SocketAddr) -> Result<StickOn, String> {
    let (family, max, example) = if vip.is_ipv4() {
        ("IPv4", 32, "src/24")
    } else {
        ("IPv6", 128, "src/64")
    };
    let len = match on.value {
        StickOnValue::Src => return Ok(StickOn::Src),
        StickOnValue::Prefix(n) => n,
        StickOnValue::IpMask(n, _) if vip.is_ipv4() => n,
        StickOnValue::IpMask(_, Some(m)) => m,
        StickOnValue::IpMask(n, None) => {
            return Err(format!(
                "{} gives only an IPv4 mask, but the service listens on {vip} (IPv6): use \
                 \"src/N\" with N from 1 to 128, e.g. \"src/64\", or \"src,ipmask({n},64)\"",
                on.shown
            ))
        }
    };
    if len > max {
        return Err(format!(
            "{} is longer than an {family} address, and the service listens on {vip}: use \
             \"src/N\" with N from 1 to {max} (the VIP's family), e.g. \"{example}\", or \"src\"",
            on.shown
        ));
    }
    Ok(if len == max {
        StickOn::Src
    } else {
        StickOn::Network(len)
    })
}

impl EncapDoc {
    /// The encapsulation settings of a service forwarding with `forwarding`.
    fn check(&self, forwarding: Forwarding) -> Result<EncapSpec, Invalid> {
        let at = |keys: &[&str], message: String| Invalid {
            path: Path::of(keys),
            message,
        };
        if !forwarding.is_encap() {
            return Err(at(
                &["encap"],
                format!(
                    "encap is only used with forwarding = \"ipip\" or \"gue\" (forwarding is \
                     \"{forwarding}\"): remove it or change forwarding"
                ),
            ));
        }
        let mut e = EncapSpec::default();
        if let Some(p) = &self.gue_port {
            if forwarding != Forwarding::Gue {
                return Err(at(
                    &["encap", "gue_port"],
                    format!(
                        "gue_port = {} is only used with forwarding = \"gue\": remove it",
                        p.shown
                    ),
                ));
            }
            e.gue_port = p.value.0;
        }
        let client_hash = self
            .source
            .as_ref()
            .is_some_and(|s| s.value == SourceKind::ClientHash);
        for (key, shown) in [
            (
                "source_prefix_v4",
                self.source_prefix_v4.as_ref().map(|p| &p.shown),
            ),
            (
                "source_prefix_v6",
                self.source_prefix_v6.as_ref().map(|p| &p.shown),
            ),
        ] {
            if let (Some(shown), false) = (shown, client_hash) {
                return Err(at(
                    &["encap", key],
                    format!(
                        "{key} = {shown} is only used with source = \"client-hash\": remove it \
                         or set source"
                    ),
                ));
            }
        }
        if client_hash {
            let v4 = self.source_prefix_v4.as_ref().map(|p| p.value.0);
            let v6 = self.source_prefix_v6.as_ref().map(|p| p.value.0);
            if v4.is_none() && v6.is_none() {
                return Err(at(
                    &["encap"],
                    "source = \"client-hash\" needs the prefix to hash into: add \
                     source_prefix_v4 (e.g. \"172.16.0.0/16\") and/or source_prefix_v6 \
                     (e.g. \"fd00:5::/64\")"
                        .to_string(),
                ));
            }
            e.source = OuterSource::ClientHash { v4, v6 };
        }
        Ok(e)
    }

    /// The table that gives `spec`'s encapsulation settings, every value written out.
    fn from_spec(spec: &ServiceSpec) -> Self {
        let e = &spec.encap;
        let (source, v4, v6) = match e.source {
            OuterSource::Fib => (SourceKind::Fib, None, None),
            OuterSource::ClientHash { v4, v6 } => (SourceKind::ClientHash, v4, v6),
        };
        Self {
            gue_port: (spec.forwarding == Forwarding::Gue).then(|| Shown::new(GuePort(e.gue_port))),
            source: Some(Shown::new(source)),
            source_prefix_v4: v4.map(|p| Shown::new(FamilyPrefix(p))),
            source_prefix_v6: v6.map(|p| Shown::new(FamilyPrefix(p))),
        }
    }
}

impl HealthDoc {
    fn check(&self) -> Result<HealthConfig, Invalid> {
        let at = |key: &str, message: String| Invalid {
            path: Path::of(&["health", key]),
            message,
        };
        let kind = self.kind.unwrap_or(CheckKind::Tcp);
        let interval = self
            .interval
            .map_or(HealthConfig::default().interval, |i| i.0);
        let mut timeout = DEFAULT_HEALTH_TIMEOUT.min(interval);
        if let Some(t) = &self.timeout {
            if t.value.0.is_zero() || t.value.0 > interval {
                return Err(at(
                    "timeout",
                    format!(
                        "{} is not accepted: use a timeout above 0 and at most the interval ({})",
                        t.shown,
                        duration::format(interval)
                    ),
                ));
            }
            timeout = t.value.0;
        }
        let now = format!("kind is \"{kind}\"");
        let http_kinds = matches!(kind, CheckKind::Http | CheckKind::Https);
        for (key, shown) in [
            ("path", self.path.as_ref().map(|p| &p.shown)),
            (
                "expect_status",
                self.expect_status.as_ref().map(|p| &p.shown),
            ),
            ("host", self.host.as_ref().map(|p| &p.shown)),
        ] {
            if let (Some(shown), false) = (shown, http_kinds) {
                return Err(at(
                    key,
                    only_with(
                        shown,
                        "kind = \"http\" or \"https\"",
                        &now,
                        "kind = \"http\"",
                    ),
                ));
            }
        }
        for (key, shown) in [
            ("verify", self.verify.as_ref().map(|p| &p.shown)),
            ("ca", self.ca.as_ref().map(|p| &p.shown)),
            ("sni", self.sni.as_ref().map(|p| &p.shown)),
        ] {
            if let (Some(shown), false) = (shown, kind == CheckKind::Https) {
                return Err(at(
                    key,
                    only_with(shown, "kind = \"https\"", &now, "kind = \"https\""),
                ));
            }
        }
        let verify = self.verify.as_ref().is_none_or(|v| v.value.0);
        if let (Some(ca), false) = (&self.ca, verify) {
            return Err(at(
                "ca",
                only_with(
                    &ca.shown,
                    "verify = true",
                    "verify is false: nothing is verified",
                    "verify = true",
                ),
            ));
        }
        let http = HttpCheck {
            path: self
                .path
                .as_ref()
                .map_or_else(|| "/".to_string(), |p| p.value.0.clone()),
            expect_status: self.expect_status.as_ref().map(|s| s.value.0),
            host: self.host.as_ref().map(|h| h.value.0.clone()),
        };
        Ok(HealthConfig {
            kind: match kind {
                CheckKind::None => HealthKind::None,
                CheckKind::Tcp => HealthKind::Tcp,
                CheckKind::Http => HealthKind::Http(http),
                CheckKind::Https => HealthKind::Https(
                    http,
                    TlsCheck {
                        verify,
                        ca: self.ca.as_ref().map(|c| c.value.0.clone()),
                        sni: self.sni.as_ref().map(|s| s.value.0.clone()),
                    },
                ),
            },
            interval,
            timeout,
            rise: self.rise.map_or(2, |r| r.0),
            fall: self.fall.map_or(3, |f| f.0),
        })
    }
}
