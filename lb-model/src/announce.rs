//! Announcing VIPs to the network (issue 13): the `[announce]` section, the rule that
//! decides whether a VIP is announced, the traffic meter that says when a withdrawn VIP
//! has drained, the parser of BIRD's `show protocols` answer, and the `status` rows.
//!
//! The agent never speaks BGP. It assigns each announceable VIP as a host address
//! (/32, /128) on an interface (`lo` by default, a `dummy` interface in real deployments);
//! the node's routing daemon (BIRD 2 `protocol direct`, FRR `redistribute connected`)
//! exports it. This module holds the pure part of that; the addresses themselves are
//! changed by `lb-agent/src/announce` through rtnetlink.
//!
//! The rule, per VIP (several services may share one VIP on different ports): announced
//! when (a) the node is synced with its cluster peers (always, without `[cluster]`),
//! (b) the node is not draining, and (c) at least one of the VIP's announced services has
//! a backend that takes traffic (healthy and not in maintenance). Withdrawn when any of the
//! three stops holding. A VIP shared by two services stays announced while either works:
//! withdrawing it would take the working service down with the broken one on every node
//! at once (give services distinct VIPs to announce them independently).

use std::{collections::VecDeque, fmt, net::IpAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize, Serializer};

use crate::{
    config::{
        errors::{Invalid, Path},
        values::{Name, Period},
        ServiceConfig,
    },
    duration,
    vocab::{FromRaw, Raw, Shown},
};

/// Default interface the VIPs are assigned on.
pub const DEFAULT_INTERFACE: &str = "lo";
/// Default longest wait, on SIGTERM, for traffic to move away after withdrawing.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest accepted `drain_timeout`.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// A withdrawn VIP is drained once no packet arrived for it for this long.
pub const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// The `IFA_PROTO` value marking the addresses the agent assigned (`ip addr` shows
/// `proto 83`): the agent removes only addresses with this mark, never an operator's.
pub const ADDRESS_PROTO: u8 = 83; // 'S'

/// An interface name as the kernel accepts it: 1 to 15 bytes, no '/', ':' nor spaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfName(pub String);

impl FromRaw for IfName {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        match raw {
            Raw::Str(s)
                if !s.is_empty()
                    && s.len() <= 15
                    && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':') =>
            {
                Ok(IfName(s.clone()))
            }
            other => Err(other.refuse(
                "an interface name of 1 to 15 characters without '/', ':' or spaces, e.g. \"lo\" or \"vips\"",
            )),
        }
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl Serialize for IfName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The absolute path of a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketPath(pub PathBuf);

impl FromRaw for SocketPath {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        match raw {
            // sun_path holds 108 bytes with the terminating NUL.
            Raw::Str(s) if s.starts_with('/') && !s.contains('\0') && s.len() < 108 => {
                Ok(SocketPath(PathBuf::from(s)))
            }
            other => Err(other.refuse(
                "the absolute path of the routing daemon's control socket (under 108 bytes), e.g. \"/run/bird/bird.ctl\"",
            )),
        }
    }
}

impl fmt::Display for SocketPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}
impl Serialize for SocketPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.display())
    }
}

crate::from_raw!(IfName, SocketPath);

/// The `[announce]` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table, e.g. [announce] with interface = \"lo\", drain_timeout = \"30s\""
)]
pub struct AnnounceDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<IfName>,
    /// Services whose VIPs are announced (default: every service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<Name>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Shown<Period>>,
    /// BIRD's control socket, read for `status` only (daemon running, BGP sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_socket: Option<SocketPath>,
}

/// What `[announce]` configures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceConfig {
    pub interface: String,
    /// `None`: every service.
    pub services: Option<Vec<String>>,
    pub drain_timeout: Duration,
    pub daemon_socket: Option<PathBuf>,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        Self {
            interface: DEFAULT_INTERFACE.into(),
            services: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            daemon_socket: None,
        }
    }
}

impl AnnounceDoc {
    /// Checks the section against the services (paths relative to `announce`).
    pub fn check(&self, services: &[ServiceConfig]) -> Result<AnnounceConfig, Invalid> {
        let mut c = AnnounceConfig::default();
        if let Some(i) = &self.interface {
            c.interface = i.0.clone();
        }
        if let Some(t) = &self.drain_timeout {
            if t.value.0 > MAX_DRAIN_TIMEOUT {
                return Err(Invalid {
                    path: Path::of(&["drain_timeout"]),
                    message: format!(
                        "{} is not accepted: use a duration of at most {} (0 = exit as soon as \
                         the VIPs are withdrawn)",
                        t.shown,
                        duration::format(MAX_DRAIN_TIMEOUT)
                    ),
                });
            }
            c.drain_timeout = t.value.0;
        }
        if let Some(names) = &self.services {
            let known: Vec<&str> = services.iter().map(|s| s.spec.name.as_str()).collect();
            let mut picked = Vec::new();
            for (k, n) in names.iter().enumerate() {
                if !known.contains(&n.0.as_str()) {
                    return Err(Invalid {
                        path: Path::of(&["services"]).index(k),
                        message: format!(
                            "\"{}\" is not a service of this file: use the name of a \
                             [[service]] ({})",
                            n.0,
                            if known.is_empty() {
                                "there are none".to_string()
                            } else {
                                crate::vocab::excerpt(&known.join(", "), 120)
                            }
                        ),
                    });
                }
                if picked.contains(&n.0) {
                    return Err(Invalid {
                        path: Path::of(&["services"]).index(k),
                        message: format!("\"{}\" is listed twice: name each service once", n.0),
                    });
                }
                picked.push(n.0.clone());
            }
            c.services = Some(picked);
        }
        c.daemon_socket = self.daemon_socket.as_ref().map(|p| p.0.clone());
        Ok(c)
    }

    /// The section that gives `c`, every value written out.
    pub fn from_config(c: &AnnounceConfig) -> Self {
        Self {
            interface: Some(IfName(c.interface.clone())),
            services: c
                .services
                .as_ref()
                .map(|v| v.iter().map(|n| Name(n.clone())).collect()),
            drain_timeout: Some(Shown::new(Period(c.drain_timeout))),
            daemon_socket: c.daemon_socket.clone().map(SocketPath),
        }
    }
}

impl AnnounceConfig {
    /// Whether service `name` is announced.
    pub fn selects(&self, name: &str) -> bool {
        self.services
            .as_ref()
            .is_none_or(|v| v.iter().any(|n| n == name))
    }
}

/// Why a VIP is not announced, or is announced but not reaching the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    /// The node has not yet received its peers' tables.
    NotSynced,
    /// The node is draining (`stickylb node drain`, or SIGTERM).
    Draining,
    /// None of the VIP's services has a backend that takes traffic.
    NoHealthyBackend,
    /// The address could not be assigned (see the log).
    AddressFailed,
    /// The address is assigned but the routing daemon's control socket does not answer.
    DaemonNotRunning,
    /// The daemon runs but none of its BGP sessions is established.
    SessionDown,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::NotSynced => "not synced with the cluster peers",
            Why::Draining => "draining",
            Why::NoHealthyBackend => "no healthy backend",
            Why::AddressFailed => "the address could not be assigned",
            Why::DaemonNotRunning => "the routing daemon is not running",
            Why::SessionDown => "no BGP session established",
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a VIP's address should be assigned: `Ok` or the first reason it should not
/// (draining first: an operator's intent; then sync; then health).
pub fn decide(synced: bool, draining: bool, any_healthy: bool) -> Result<(), Why> {
    if draining {
        Err(Why::Draining)
    } else if !synced {
        Err(Why::NotSynced)
    } else if !any_healthy {
        Err(Why::NoHealthyBackend)
    } else {
        Ok(())
    }
}

/// The VIPs of `services` that `cfg` announces, each with its services (file order).
pub fn vips<'a>(
    cfg: &AnnounceConfig,
    services: &'a [ServiceConfig],
) -> Vec<(IpAddr, Vec<&'a ServiceConfig>)> {
    let mut out: Vec<(IpAddr, Vec<&ServiceConfig>)> = Vec::new();
    for s in services.iter().filter(|s| cfg.selects(&s.spec.name)) {
        let ip = s.spec.vip.ip();
        match out.iter_mut().find(|(v, _)| *v == ip) {
            Some((_, v)) => v.push(s),
            None => out.push((ip, vec![s])),
        }
    }
    out
}

/// Packets seen for one VIP over time: the rate, and how long it has been quiet.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    /// (ms, packets counter) samples of the last [`Traffic::WINDOW_MS`] and one before.
    samples: VecDeque<(u64, u64)>,
    /// When the counter last grew (ms), or when the meter started.
    last_growth_ms: Option<u64>,
}

impl Traffic {
    /// The rate is measured over this window.
    pub const WINDOW_MS: u64 = 1000;

    /// Records the VIP's packet counter at `now_ms`.
    pub fn observe(&mut self, now_ms: u64, packets: u64) {
        match self.samples.back() {
            Some(&(_, p)) if packets != p => self.last_growth_ms = Some(now_ms),
            None => self.last_growth_ms = Some(now_ms),
            _ => {}
        }
        self.samples.push_back((now_ms, packets));
        while self.samples.len() > 2 && now_ms.saturating_sub(self.samples[1].0) >= Self::WINDOW_MS
        {
            self.samples.pop_front();
        }
    }

    /// Packets per second over the last window (0 with fewer than two samples).
    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, p0)), Some(&(t1, p1))) if t1 > t0 => {
                p1.saturating_sub(p0) as f64 * 1000.0 / (t1 - t0) as f64
            }
            _ => 0.0,
        }
    }

    /// How long no packet arrived (ms) as of `now_ms`.
    pub fn quiet_ms(&self, now_ms: u64) -> u64 {
        self.last_growth_ms.map_or(0, |t| now_ms.saturating_sub(t))
    }
}

/// Whether a VIP withdrawn at `withdrawn_ms` has drained by `now_ms`: no packet for
/// [`DRAIN_QUIET`], counted from the withdrawal at the earliest.
pub fn drained(traffic: &Traffic, withdrawn_ms: u64, now_ms: u64) -> bool {
    let quiet = DRAIN_QUIET.as_millis() as u64;
    now_ms.saturating_sub(withdrawn_ms) >= quiet && traffic.quiet_ms(now_ms) >= quiet
}

/// One protocol of BIRD's `show protocols`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonProtocol {
    pub name: String,
    /// `BGP`, `BFD`, `Direct`, ...
    pub proto: String,
    /// `up`, `start`, `down`, ...
    pub state: String,
    /// For BGP: `Established`, `Active`, `Connect`, ... (may be empty).
    pub info: String,
}

impl DaemonProtocol {
    pub fn is_bgp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("bgp")
    }
    pub fn established(&self) -> bool {
        self.is_bgp() && self.info.starts_with("Established")
    }
}

/// Parses BIRD's reply to `show protocols` on its control socket: lines of a 4-digit code
/// and `-` (more follows) or ` ` (last line), continuation lines starting with a space;
/// `2002` is the header, `1002` the table, `0000` the end. Unknown lines are skipped; an
/// error code (8xxx, 9xxx) is returned as the error.
pub fn parse_bird_protocols(reply: &str) -> Result<Vec<DaemonProtocol>, String> {
    let mut out = Vec::new();
    let mut in_table = false;
    for line in reply.lines() {
        let (code, rest) = match line.as_bytes() {
            [a, b, c, d, sep, ..]
                if [a, b, c, d].iter().all(|x| x.is_ascii_digit())
                    && (*sep == b'-' || *sep == b' ') =>
            {
                (&line[..4], &line[5..])
            }
            [b' ', ..] => ("", &line[1..]),
            _ => continue,
        };
        if code.starts_with('8') || code.starts_with('9') {
            return Err(format!("BIRD answered {code}: {}", rest.trim()));
        }
        match code {
            "1002" => in_table = true,
            "" if in_table => {}
            _ => {
                in_table = false;
                continue;
            }
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        // Name Proto Table State Since [Info...]; Since may be "2024-01-01 10:00:00".
        let info = f.get(5..).map(|r| r.join(" ")).unwrap_or_default();
        // A date-and-time "Since" ("2026-12-01 23:55:29") puts its time first in `info`.
        let is_time = |t: &str| {
            t.contains(':')
                && t.chars()
                    .all(|c| c.is_ascii_digit() || c == ':' || c == '.')
        };
        let info = match info.split_once(' ') {
            Some((t, rest)) if is_time(t) => rest.to_string(),
            None if is_time(&info) => String::new(),
            _ => info,
        };
        out.push(DaemonProtocol {
            name: f[0].to_string(),
            proto: f[1].to_string(),
            state: f[3].to_string(),
            info,
        });
    }
    Ok(out)
}

/// The routing daemon as the agent last saw it on its control socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The socket watched (`daemon_socket`), or none: not watched.
    pub socket: Option<String>,
    /// `running`, `not running`, or `not watched`.
    pub state: String,
    /// Why it is not running (the connection error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its BGP sessions and their state.
    #[serde(default)]
    pub sessions: Vec<DaemonProtocol>,
}

impl DaemonStatus {
    pub const RUNNING: &'static str = "running";
    pub const NOT_RUNNING: &'static str = "not running";
    pub const NOT_WATCHED: &'static str = "not watched";

    /// What keeps an assigned VIP from reaching the network, as far as the daemon shows.
    pub fn problem(&self) -> Option<Why> {
        match self.state.as_str() {
            Self::NOT_RUNNING => Some(Why::DaemonNotRunning),
            Self::RUNNING if !self.sessions.iter().any(DaemonProtocol::established) => {
                Some(Why::SessionDown)
            }
            _ => None,
        }
    }
}

/// One VIP in `status` (and the metrics).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipRow {
    pub vip: IpAddr,
    pub services: Vec<String>,
    /// The address is on the interface (the daemon exports it).
    pub assigned: bool,
    /// Assigned, and the daemon (when watched) runs with a BGP session up.
    pub announced: bool,
    /// Why it is not announced (or not reaching the network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<Why>,
    /// Since the last change of `assigned`, in ms.
    pub since_ms: u64,
    /// Packets per second for the VIP's services, over the last second.
    pub packets_per_s: f64,
    /// Withdrawn and no packet for a second since: the traffic has moved away.
    pub drained: bool,
}

/// The `announce` part of `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    pub interface: String,
    pub synced: bool,
    pub draining: bool,
    /// Draining and every VIP drained.
    pub drained: bool,
    pub daemon: DaemonStatus,
    pub vips: Vec<VipRow>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_names_the_first_reason() {
        assert_eq!(decide(true, false, true), Ok(()));
        assert_eq!(decide(false, false, true), Err(Why::NotSynced));
        assert_eq!(decide(true, false, false), Err(Why::NoHealthyBackend));
        assert_eq!(decide(false, true, false), Err(Why::Draining));
    }

    #[test]
    fn traffic_rate_and_quiet() {
        let mut t = Traffic::default();
        t.observe(0, 0);
        t.observe(500, 100);
        t.observe(1000, 200);
        assert!((t.rate() - 200.0).abs() < 1e-9, "{}", t.rate());
        assert!(!drained(&t, 900, 1500));
        t.observe(1500, 200);
        t.observe(2000, 200);
        t.observe(2600, 200);
        assert_eq!(t.rate(), 0.0);
        assert_eq!(t.quiet_ms(2600), 1600);
        assert!(drained(&t, 1000, 2600));
        // Withdrawn just now: not drained yet even if quiet.
        assert!(!drained(&t, 2500, 2600));
    }

    #[test]
    fn bird_protocols_are_read_from_the_socket_reply() {
        let reply = "2002-Name       Proto      Table      State  Since         Info\n\
                     1002-device1    Device     ---        up     23:55:26.277  \n \
                     vips       Direct     ---        up     23:55:26.277  \n \
                     bfd1       BFD        ---        up     23:55:26.277  \n \
                     uplink     BGP        ---        up     23:55:29.006  Established   \n \
                     backup     BGP        ---        start  2026-12-01 23:55:29  Active        Socket: Connection refused\n\
                     0000 \n";
        let p = parse_bird_protocols(reply).unwrap();
        assert_eq!(p.len(), 5, "{p:?}");
        assert_eq!(p[3].name, "uplink");
        assert!(p[3].established());
        assert_eq!(p[4].state, "start");
        assert!(p[4].info.starts_with("Active"), "{:?}", p[4]);
        assert!(!p[4].established());
        let e = parse_bird_protocols("9001 syntax error\n").unwrap_err();
        assert!(e.contains("9001"), "{e}");
        let st = DaemonStatus {
            state: DaemonStatus::RUNNING.into(),
            sessions: p.into_iter().filter(DaemonProtocol::is_bgp).collect(),
            ..Default::default()
        };
        assert_eq!(st.problem(), None);
    }

    #[test]
    fn the_section_parses_round_trips_and_refusals_name_the_field() {
        let base = "[[service]]\nname = \"web\"\nlisten = \"10.0.0.100:80\"\n\
                    [[service.backend]]\naddress = \"192.168.1.2\"\n\
                    [[service]]\nname = \"dns\"\nlisten = \"10.0.0.100:53\"\nprotocol = \"udp\"\n\
                    [[service]]\nname = \"api\"\nlisten = \"10.0.0.101:80\"\n";
        let c = crate::config::parse(
            &format!(
                "{base}[announce]\ninterface = \"vips\"\nservices = [\"web\", \"api\"]\n\
                 drain_timeout = \"5s\"\ndaemon_socket = \"/run/bird/bird.ctl\"\n"
            ),
            "lb.toml",
        )
        .unwrap();
        let a = c.announce.clone().unwrap();
        assert_eq!(a.interface, "vips");
        assert_eq!(a.drain_timeout, Duration::from_secs(5));
        assert_eq!(a.services, Some(vec!["web".into(), "api".into()]));
        let v = vips(&a, &c.services);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].1.len(), 1, "dns is not selected");
        let back = crate::config::parse(&c.to_toml(), "rt.toml").unwrap();
        assert_eq!(back, c);
        // Defaults: every service, on lo.
        let c = crate::config::parse(&format!("{base}[announce]\n"), "lb.toml").unwrap();
        let a = c.announce.clone().unwrap();
        assert_eq!(a, AnnounceConfig::default());
        assert_eq!(
            vips(&a, &c.services)[0].1.len(),
            2,
            "web and dns share a VIP"
        );
        for (extra, field, says) in [
            (
                "services = [\"nope\"]",
                "announce.services[0]",
                "not a service of this file",
            ),
            (
                "services = [\"web\", \"web\"]",
                "announce.services[1]",
                "listed twice",
            ),
            (
                "interface = \"a/b\"",
                "announce.interface",
                "interface name",
            ),
            (
                "interface = \"abcdefghijklmnopq\"",
                "announce.interface",
                "1 to 15",
            ),
            (
                "drain_timeout = \"2h\"",
                "announce.drain_timeout",
                "at most 1h",
            ),
            ("drain_timeout = \"soon\"", "announce.drain_timeout", "soon"),
            (
                "daemon_socket = \"bird.ctl\"",
                "announce.daemon_socket",
                "absolute path",
            ),
            ("color = 1", "announce.color", "unknown key"),
        ] {
            let e = crate::config::parse(&format!("{base}[announce]\n{extra}\n"), "lb.toml")
                .unwrap_err();
            assert_eq!(e.field(), Some(field), "{extra}: {e}");
            assert!(e.to_string().contains(says), "{extra}: {e}");
        }
    }
}
