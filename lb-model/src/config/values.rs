//! The value types of the config schema (and of control requests, which use the same
//! ones): each reads itself from what the operator wrote ([`FromRaw`]), refusing with the
//! value and what is accepted, and writes itself back the way it reads (`Serialize`,
//! `Display`).

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use lb_common::{maglev, RING_REGION};
use serde::{Serialize, Serializer};

use crate::{
    duration,
    plan::MAX_WEIGHT,
    spec::Prefix,
    vocab::{FromRaw, Raw},
};

pub(crate) const NAME_HELP: &str =
    "a non-empty string of letters, digits, '-', '_', '.' and ':', e.g. \"web\"";
pub(crate) const LISTEN_HELP: &str = "\"IPv4:PORT\" or \"[IPv6]:PORT\", e.g. \"10.0.0.100:80\" or \
                                      \"[2001:db8::100]:443\"; port 0 = every port";
pub(crate) const ADDRESS_HELP: &str = "\"IP:PORT\", \"[IPv6]:PORT\", or an address without port \
                                       (\"192.168.1.2\", \"[2001:db8::2]\", \"2001:db8::2\") for the service port";
pub(crate) const SIZE_HELP: &str =
    "use a whole number, optionally followed by k (×1000) or m (×1000000), \
                                    e.g. 200000 or \"200k\"";

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

/// A duration: a whole number of seconds, or a string in the [`duration`] grammar.
fn period(raw: &Raw) -> Result<Duration, String> {
    match raw {
        Raw::Int(n) if *n >= 0 => Ok(Duration::from_secs(u64::try_from(*n).unwrap_or(u64::MAX))),
        Raw::Str(s) => duration::parse(s),
        other => Err(other.refuse(duration::HELP)),
    }
}

/// An integer of `raw` in `range`, or the refusal with `accepted`.
fn int_in(
    raw: &Raw,
    range: std::ops::RangeInclusive<i128>,
    accepted: &str,
) -> Result<i128, String> {
    match raw.as_int() {
        Some(n) if range.contains(&n) => Ok(n),
        _ => Err(raw.refuse(accepted)),
    }
}

macro_rules! display_serialize {
    ($ty:ty, |$v:ident| $display:expr, |$s:ident, $ser:ident| $body:expr) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let $v = self;
                write!(f, "{}", $display)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, $ser: S) -> Result<S::Ok, S::Error> {
                let $s = self;
                $body
            }
        }
    };
}

/// A service name: letters, digits, `-`, `_`, `.`, `:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name(pub String);

impl FromRaw for Name {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        };
        match raw {
            Raw::Str(s) if ok(s) => Ok(Name(s.clone())),
            other => Err(other.refuse(NAME_HELP)),
        }
    }
}
display_serialize!(Name, |v| v.0, |s, ser| ser.serialize_str(&s.0));

/// A VIP and port (`listen`): a specific address, port 0 = every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub SocketAddr);

impl FromRaw for Listen {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        raw.as_str()
            .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            .filter(|a| !a.ip().is_unspecified())
            .map(Listen)
            .ok_or_else(|| raw.refuse(LISTEN_HELP))
    }
}
display_serialize!(Listen, |v| v.0, |s, ser| ser.collect_str(&s.0));

/// A backend address; written without port, port 0 (= the service port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendAddr(pub SocketAddr);

impl BackendAddr {
    fn parse(s: &str) -> Option<SocketAddr> {
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
}

impl FromRaw for BackendAddr {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        raw.as_str()
            .and_then(BackendAddr::parse)
            .map(BackendAddr)
            .ok_or_else(|| raw.refuse(ADDRESS_HELP))
    }
}
display_serialize!(
    BackendAddr,
    |v| match (v.0.port(), v.0.ip()) {
        (0, IpAddr::V4(ip)) => ip.to_string(),
        (0, IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => v.0.to_string(),
    },
    |s, ser| ser.collect_str(s)
);

/// A backend weight, 0..=256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weight(pub u32);

impl Weight {
    pub fn accepted() -> String {
        format!("0..={MAX_WEIGHT} (0 = no new clients)")
    }
}

impl FromRaw for Weight {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        int_in(raw, 0..=i128::from(MAX_WEIGHT), &Weight::accepted()).map(|n| Weight(n as u32))
    }
}
display_serialize!(Weight, |v| v.0, |s, ser| ser.serialize_u32(s.0));

/// Entries of a stick table, 1..=u32::MAX; a number or a `k`/`m` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSize(pub u32);

impl FromRaw for TableSize {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        let size = match raw {
            Raw::Int(n) => u64::try_from(*n).ok(),
            Raw::Str(s) => Some(parse_size(s)?),
            _ => None,
        };
        match size.and_then(|s| u32::try_from(s).ok()) {
            Some(size) if size > 0 => Ok(TableSize(size)),
            _ => Err(raw.refuse(&format!(
                "a number of entries from 1 to {}, e.g. 200000 or \"200k\" (k = ×1000, m = ×1000000)",
                u32::MAX
            ))),
        }
    }
}
display_serialize!(TableSize, |v| v.0, |s, ser| ser.serialize_u32(s.0));

/// New stick entries per second per CPU, 0 = no cap; a number or a `k`/`m` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsertCap(pub u32);

impl FromRaw for InsertCap {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        let cap = match raw {
            Raw::Int(n) => u64::try_from(*n).ok(),
            Raw::Str(s) => parse_size(s).ok(),
            _ => None,
        };
        cap.and_then(|c| u32::try_from(c).ok())
            .map(InsertCap)
            .ok_or_else(|| {
                raw.refuse(&format!(
                    "new entries per second per CPU, 0 (no cap) to {}, e.g. 125000 or \"125k\"",
                    u32::MAX
                ))
            })
    }
}
display_serialize!(InsertCap, |v| v.0, |s, ser| ser.serialize_u32(s.0));

/// A stick-table entry lifetime: a duration, or `"never"` / 0 (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expire(pub Option<Duration>);

impl FromRaw for Expire {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        if raw.as_str().is_some_and(|s| s.trim() == "never") {
            return Ok(Expire(None));
        }
        period(raw)
            .map(|d| Expire(Some(d).filter(|d| !d.is_zero())))
            .map_err(|_| {
                raw.refuse(&format!(
                    "\"never\" (or 0) for entries that never expire, or {}",
                    duration::HELP
                ))
            })
    }
}
display_serialize!(
    Expire,
    |v| v.0.map_or_else(|| "never".to_string(), duration::format),
    |s, ser| ser.collect_str(s)
);

/// A duration (health `timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period(pub Duration);

impl FromRaw for Period {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        period(raw).map(Period)
    }
}
display_serialize!(Period, |v| duration::format(v.0), |s, ser| ser
    .collect_str(s));

/// Shortest accepted health check interval.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);

/// A health check interval: a duration of at least [`MIN_HEALTH_INTERVAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval(pub Duration);

impl FromRaw for Interval {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        let d = period(raw)?;
        if d < MIN_HEALTH_INTERVAL {
            return Err(raw.refuse(&format!(
                "an interval of at least {}",
                duration::format(MIN_HEALTH_INTERVAL)
            )));
        }
        Ok(Interval(d))
    }
}
display_serialize!(Interval, |v| duration::format(v.0), |s, ser| ser
    .collect_str(s));

/// A count of consecutive checks (`rise`, `fall`), at least 1; `DEFAULT` for the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count<const DEFAULT: u32>(pub u32);

impl<const DEFAULT: u32> FromRaw for Count<DEFAULT> {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        int_in(
            raw,
            1..=i128::from(u32::MAX),
            &format!("a count of consecutive checks, at least 1 (default {DEFAULT})"),
        )
        .map(|n| Count(n as u32))
    }
}

impl<'de, const DEFAULT: u32> serde::Deserialize<'de> for Count<DEFAULT> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::vocab::deserialize(d)
    }
}

impl<const DEFAULT: u32> fmt::Display for Count<DEFAULT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<const DEFAULT: u32> Serialize for Count<DEFAULT> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_u32(self.0)
    }
}

/// A Maglev table size: a prime from 2 to [`RING_REGION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevSize(pub u32);

impl FromRaw for MaglevSize {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        let accepted = format!("a prime number from 2 to {RING_REGION} (default {RING_REGION})");
        let n = int_in(raw, 2..=i128::from(RING_REGION), &accepted)? as u32;
        if !maglev::is_prime(n) {
            return Err(raw.refuse(&accepted));
        }
        Ok(MaglevSize(n))
    }
}
display_serialize!(MaglevSize, |v| v.0, |s, ser| ser.serialize_u32(s.0));

/// An HTTP request path: starts with `/`, printable ASCII without spaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpPath(pub String);

impl FromRaw for HttpPath {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        match raw {
            Raw::Str(p) if p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic()) => {
                Ok(HttpPath(p.clone()))
            }
            other => Err(other.refuse(
                "a request path starting with '/', without spaces or control characters, e.g. \"/healthz\"",
            )),
        }
    }
}
display_serialize!(HttpPath, |v| v.0, |s, ser| ser.serialize_str(&s.0));

/// An HTTP status code, 100..=599.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusCode(pub u16);

impl FromRaw for StatusCode {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        int_in(
            raw,
            100..=599,
            "an HTTP status code 100..=599 (without it, any 2xx or 3xx is healthy)",
        )
        .map(|n| StatusCode(n as u16))
    }
}
display_serialize!(StatusCode, |v| v.0, |s, ser| ser.serialize_u16(s.0));

/// A `Host` header value: printable ASCII without spaces, at most 255 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host(pub String);

impl FromRaw for Host {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        match raw {
            Raw::Str(h) if !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_graphic()) => {
                Ok(Host(h.clone()))
            }
            other => Err(other.refuse(
                "a Host header value without spaces or control characters, e.g. \"www.example.com\" \
                 or \"www.example.com:8443\"",
            )),
        }
    }
}
display_serialize!(Host, |v| v.0, |s, ser| ser.serialize_str(&s.0));

/// A TLS server name (SNI): a DNS name, or an IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerName(pub String);

impl ServerName {
    /// Whether `s` is a DNS name (labels of letters, digits, `-`, `_`, dot-separated).
    pub fn is_dns_name(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            && s.parse::<IpAddr>().is_err()
    }
}

impl FromRaw for ServerName {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        match raw {
            Raw::Str(s) if ServerName::is_dns_name(s) || s.parse::<IpAddr>().is_ok() => {
                Ok(ServerName(s.clone()))
            }
            other => Err(other.refuse(
                "a DNS name the certificate is issued to, e.g. \"backend-1.example.com\", or an IP address",
            )),
        }
    }
}
display_serialize!(ServerName, |v| v.0, |s, ser| ser.serialize_str(&s.0));

/// A CA file: an absolute path to PEM certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFile(pub PathBuf);

impl FromRaw for CaFile {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        match raw {
            Raw::Str(s) if s.starts_with('/') && !s.contains('\0') => Ok(CaFile(PathBuf::from(s))),
            other => Err(other.refuse(
                "the absolute path of a PEM file of CA certificates, e.g. \"/etc/stickylb/backend-ca.pem\"",
            )),
        }
    }
}
display_serialize!(CaFile, |v| v.0.display(), |s, ser| ser
    .collect_str(&s.0.display()));

/// A yes/no setting: `true` or `false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flag(pub bool);

impl FromRaw for Flag {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        match raw {
            Raw::Bool(b) => Ok(Flag(*b)),
            other => Err(other.refuse("true or false")),
        }
    }
}
display_serialize!(Flag, |v| v.0, |s, ser| ser.serialize_bool(s.0));

/// A GUE destination port, 1..=65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuePort(pub u16);

impl FromRaw for GuePort {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        int_in(
            raw,
            1..=65535,
            &format!(
                "a UDP port from 1 to 65535 (default {})",
                lb_common::DEFAULT_GUE_PORT
            ),
        )
        .map(|n| GuePort(n as u16))
    }
}
display_serialize!(GuePort, |v| v.0, |s, ser| ser.serialize_u16(s.0));

crate::named! {
    /// Where the outer source address of encapsulated packets comes from
    /// (`encap.source`).
    pub enum SourceKind {
        /// The balancer's egress address towards the backend, as the FIB gives it.
        Fib = "fib",
        /// The client's hash inside a prefix per family.
        ClientHash = "client-hash",
    }
}

/// An address prefix of one family (`encap.source_prefix_v4` / `_v6`): network address,
/// length at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyPrefix<const V4: bool>(pub Prefix);

impl<const V4: bool> FromRaw for FamilyPrefix<V4> {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        let (family, example) = if V4 {
            ("IPv4", "172.16.0.0/16")
        } else {
            ("IPv6", "fd00:5::/64")
        };
        let accepted = format!("an {family} prefix such as {example:?}");
        let Raw::Str(text) = raw else {
            return Err(raw.refuse(&accepted));
        };
        let p: Prefix = text
            .parse()
            .map_err(|m: String| format!("{m}; use {accepted}"))?;
        if p.addr.is_ipv4() != V4 || p.len == 0 {
            return Err(raw.refuse(&format!("{accepted}, at least /1")));
        }
        Ok(FamilyPrefix(p))
    }
}

impl<'de, const V4: bool> serde::Deserialize<'de> for FamilyPrefix<V4> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::vocab::deserialize(d)
    }
}

impl<const V4: bool> fmt::Display for FamilyPrefix<V4> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<const V4: bool> Serialize for FamilyPrefix<V4> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(&self.0)
    }
}

pub(crate) const STICK_ON_HELP: &str = "\"src\" (the client's address), \"src/N\" (its \
    network: N of the VIP's family, 1..=32 for IPv4, 1..=128 for IPv6, e.g. \"src/24\" or \
    \"src/64\") or HAProxy's \"src,ipmask(N[,M])\" (N for IPv4, M for IPv6)";

/// `stick_on` as written: what a client sticks by. Its family checks need the VIP, so
/// [`super::schema::ServiceDoc::check`] turns it into [`crate::spec::StickOn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StickOnValue {
    /// `"src"`.
    Src,
    /// `"src/N"`, N of the VIP's family.
    Prefix(u8),
    /// `"src,ipmask(N)"` / `"src,ipmask(N,M)"`: N for an IPv4 VIP, M for an IPv6 one.
    IpMask(u8, Option<u8>),
}

impl FromRaw for StickOnValue {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        let bad = || raw.refuse(STICK_ON_HELP);
        let Some(text) = raw.as_str() else {
            return Err(bad());
        };
        let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let len = |s: &str, max: u8| s.parse::<u8>().ok().filter(|n| (1..=max).contains(n));
        if t == "src" {
            return Ok(StickOnValue::Src);
        }
        if let Some(n) = t.strip_prefix("src/") {
            return len(n, 128).map(StickOnValue::Prefix).ok_or_else(bad);
        }
        let masks = t
            .strip_prefix("src,ipmask(")
            .and_then(|m| m.strip_suffix(')'))
            .ok_or_else(bad)?;
        match masks.split_once(',') {
            None => len(masks, 32).map(|n| StickOnValue::IpMask(n, None)),
            Some((n, m)) => len(n, 32)
                .zip(len(m, 128))
                .map(|(n, m)| StickOnValue::IpMask(n, Some(m))),
        }
        .ok_or_else(bad)
    }
}
display_serialize!(
    StickOnValue,
    |v| match v {
        StickOnValue::Src => "src".to_string(),
        StickOnValue::Prefix(n) => format!("src/{n}"),
        StickOnValue::IpMask(n, None) => format!("src,ipmask({n})"),
        StickOnValue::IpMask(n, Some(m)) => format!("src,ipmask({n},{m})"),
    },
    |s, ser| ser.collect_str(s)
);

crate::from_raw!(
    StickOnValue,
    GuePort,
    Name,
    Listen,
    BackendAddr,
    Weight,
    TableSize,
    InsertCap,
    Expire,
    Period,
    Interval,
    MaglevSize,
    HttpPath,
    StatusCode,
    Host,
    ServerName,
    CaFile,
    Flag,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stick_on_forms() {
        let read = |s: &str| StickOnValue::from_raw(&Raw::Str(s.into()));
        assert_eq!(read("src"), Ok(StickOnValue::Src));
        assert_eq!(read("src/24"), Ok(StickOnValue::Prefix(24)));
        assert_eq!(read("src/128"), Ok(StickOnValue::Prefix(128)));
        assert_eq!(read("src,ipmask(24)"), Ok(StickOnValue::IpMask(24, None)));
        assert_eq!(
            read("src, ipmask(24, 64)"),
            Ok(StickOnValue::IpMask(24, Some(64)))
        );
        for bad in [
            "src/0",
            "src/129",
            "src/",
            "dst",
            "src/24/8",
            "src,ipmask(33)",
            "src,ipmask(24,0)",
            "src,ipmask(24",
            "",
        ] {
            let e = read(bad).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("src/N"),
                "{bad}: {e}"
            );
        }
        let e = StickOnValue::from_raw(&Raw::Int(24)).unwrap_err();
        assert!(e.contains("24") && e.contains("src/N"), "{e}");
        for v in ["src", "src/24", "src,ipmask(24)", "src,ipmask(24,64)"] {
            assert_eq!(read(v).unwrap().to_string(), v);
        }
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
    fn values_write_what_they_read() {
        fn again<T: FromRaw + fmt::Display + PartialEq + fmt::Debug + Serialize>(raw: Raw) {
            let v = T::from_raw(&raw).unwrap();
            let json = serde_json::to_value(&v).unwrap();
            let back = T::from_raw(&crate::vocab::raw(json).unwrap()).unwrap();
            assert_eq!(back, v);
        }
        again::<BackendAddr>(Raw::Str("2001:db8::2".into()));
        again::<BackendAddr>(Raw::Str("10.0.0.2:80".into()));
        again::<Expire>(Raw::Str("never".into()));
        again::<Expire>(Raw::Int(90));
        again::<Interval>(Raw::Str("1500ms".into()));
        again::<CaFile>(Raw::Str("/etc/ca.pem".into()));
        assert_eq!(
            BackendAddr::from_raw(&Raw::Str("[2001:db8::2]".into()))
                .unwrap()
                .to_string(),
            "[2001:db8::2]"
        );
        assert!(ServerName::is_dns_name("backend-1.example.com"));
        assert!(!ServerName::is_dns_name("10.0.0.1"));
        assert!(!ServerName::is_dns_name("a..b"));
        assert!(Host::from_raw(&Raw::Str("a b".into())).is_err());
    }
}
