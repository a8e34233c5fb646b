//! `stickylb import ipvs FILE|-` (the rules `ipvsadm-save -n` prints, or an
//! `/etc/ipvsadm.rules` file of ipvsadm commands) and `stickylb import keepalived FILE`
//! (the `virtual_server` blocks of keepalived.conf) to a stickylb configuration.
//!
//! What translates (the rest is reported line by line, see [`super`]):
//! - `-A -t|-u VIP:PORT` (and `virtual_server VIP PORT` with `protocol TCP|UDP`): one
//!   service, named `tcp-VIP-PORT`.
//! - `-s rr|wrr` (`lb_algo`) → `roundrobin`; `sh` (source hash) and `mh` (Maglev
//!   hashing) → `maglev`: both pick by client address alone. Schedulers that count
//!   connections (`lc`, `wlc`, IPVS's default, `sed`, `nq`, `lblc`, `lblcr`, `fo`,
//!   `ovf`, `dh`) → `roundrobin` with a warning.
//! - `-p TIMEOUT` (`persistence_timeout`) → `stick_table.expire`; without it IPVS
//!   balances each connection on its own, which stickylb does not do (a warning).
//!   `-M MASK` (`persistence_granularity`) → `stick_on = "src/N"`.
//! - `-a … -r RIP:PORT -g|-m|-i -w W` (`real_server`, `lb_kind DR|NAT|TUN`, `weight`):
//!   backends; `-g` → `forwarding = "dsr"`, `-m` → `"nat"`, `-i` → `"ipip"` (the tunnel
//!   mode; `--tun-type gue --tun-port P` → `"gue"` with `encap = { gue_port = P }`;
//!   keepalived `lb_kind TUN [type gue port P]` likewise). Tunnels may carry one family in
//!   the other, so servers of the other address family stay in such services. stickylb forwards one way per service: the first server's decides. IPVS
//!   weights go up to 65535, stickylb's to 256: larger ones are scaled down in
//!   proportion. Weight 0 (quiesced) stays 0: no new clients, pinned ones stay.
//! - keepalived checkers: `TCP_CHECK` → `kind = "tcp"`, `HTTP_GET` → `"http"`,
//!   `SSL_GET` → `"https"` (`url { path; status_code }`); `delay_loop` → `interval`,
//!   `connect_timeout` → `timeout`; keepalived takes a server out after the first
//!   failure plus `retry` retries (default 1) → `fall = retry + 1`, and back in after one
//!   success → `rise = 1`. ipvsadm rules carry no checks: `kind = "none"`, as IPVS alone
//!   does not check.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use super::{
    backend_address, drop_shared_nat_backends, endpoint, enforce_limits, unique_names,
    valid_check_path, BackendOut, Diagnostics, EncapOut, FileOut, HealthOut, Import, Options,
    Place, ServiceOut, StickTableOut,
};

/// stickylb's stick-table size for an imported service (IPVS's templates are unbounded).
const DEFAULT_SIZE: u64 = 200_000;
/// ipvsadm's `-p` without a value.
const DEFAULT_PERSISTENCE: u64 = 300;
const MAX_WEIGHT: u32 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fwd {
    Dsr,
    Nat,
    Ipip,
    /// GUE to this UDP port.
    Gue(u16),
}

impl Fwd {
    fn name(self) -> &'static str {
        match self {
            Fwd::Dsr => "dsr",
            Fwd::Nat => "nat",
            Fwd::Ipip => "ipip",
            Fwd::Gue(_) => "gue",
        }
    }
}

/// The GUE port ipvsadm and keepalived use when none is given (and stickylb's default).
const DEFAULT_GUE_PORT: u16 = 6080;

/// The tunnel of `-i --tun-type T --tun-port P` / `lb_kind TUN type T port P`.
fn tunnel(
    d: &mut Diagnostics,
    no: usize,
    line: &str,
    kind: Option<&str>,
    port: Option<u16>,
) -> Fwd {
    match kind {
        None | Some("ipip") => Fwd::Ipip,
        Some("gue") => Fwd::Gue(port.unwrap_or(DEFAULT_GUE_PORT)),
        Some(other) => {
            d.warn(no, line, format!("{other} tunnels are not made by stickylb (IPIP and GUE are): forwarding = \"ipip\" is written, so the backends must decapsulate IPIP (`stickylb decap`) instead"));
            Fwd::Ipip
        }
    }
}

/// A virtual service being built.
#[derive(Clone, Debug)]
struct Vs {
    line: usize,
    proto: Proto,
    ip: IpAddr,
    port: u16,
    scheduler: &'static str,
    persistence: Option<u64>,
    /// Prefix length of `-M` / `persistence_granularity`, when shorter than the address.
    mask: Option<u8>,
    mask_line: usize,
    /// Forwarding given for the whole service (keepalived `lb_kind`).
    fwd: Option<Fwd>,
    health: HealthOut,
    servers: Vec<Rs>,
}

#[derive(Clone, Debug)]
struct Rs {
    line: usize,
    ip: IpAddr,
    port: Option<u16>,
    fwd: Option<Fwd>,
    weight: u32,
}

/// Imports `ipvsadm-save -n` output.
pub fn import(text: &str, opts: &Options) -> Import {
    let mut d = Diagnostics::default();
    let mut services: Vec<Vs> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let words: &[&str] = if words[0] == "ipvsadm" {
            &words[1..]
        } else {
            &words
        };
        if words.is_empty() {
            continue;
        }
        if line.contains('{') || line.starts_with("virtual_server") {
            d.error(
                no,
                line,
                "this looks like keepalived.conf: use `stickylb import keepalived FILE`",
            );
            continue;
        }
        match words[0] {
            "-A" | "--add-service" | "-E" | "--edit-service" => {
                if let Some(vs) = service_rule(&mut d, no, line, &words[1..]) {
                    if let Some(old) = services.iter_mut().find(|s| s.proto == vs.proto && s.ip == vs.ip && s.port == vs.port) {
                        if words[0] == "-A" || words[0] == "--add-service" {
                            d.warn(no, line, "the service was added before (ipvsadm refuses it): its settings are replaced");
                        }
                        let servers = std::mem::take(&mut old.servers);
                        *old = Vs { servers, ..vs };
                    } else {
                        services.push(vs);
                    }
                }
            }
            "-a" | "--add-server" | "-e" | "--edit-server" => server_rule(&mut d, no, line, &words[1..], &mut services),
            "-C" | "--clear" => d.note(no, line, "clears IPVS's table first: a stickylb configuration always starts empty"),
            "-D" | "--delete-service" | "-d" | "--delete-server" => d.warn(no, line, "deletions are not replayed: the service or server stays in the imported configuration; remove it by hand"),
            "--set" => d.note(no, line, "IPVS connection timeouts: stickylb tracks clients, not connections (the stick table's expire is what ends a client's stickiness)"),
            "--start-daemon" | "--stop-daemon" => d.note(no, line, "IPVS connection synchronisation: stickylb keeps its table across restarts by itself"),
            _ => d.warn(no, line, "not an ipvsadm rule (`-A ...` or `-a ...`): ignored"),
        }
    }
    finish(d, services, opts, "ipvsadm rules", "ipvsadm rule", "server")
}

/// `-t|-u|-f|--sctp-service VIP:PORT -s SCHED -p [T] -M MASK ...` of `-A`.
fn service_rule(d: &mut Diagnostics, no: usize, line: &str, w: &[&str]) -> Option<Vs> {
    let mut vs = Vs {
        line: no,
        proto: Proto::Tcp,
        ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port: 0,
        scheduler: "roundrobin",
        persistence: None,
        mask: None,
        mask_line: no,
        fwd: None,
        health: HealthOut::none(),
        servers: Vec::new(),
    };
    let mut addr = None;
    let mut sched = "wlc".to_string();
    let mut mask: Option<&str> = None;
    let mut i = 0;
    while i < w.len() {
        let value = w.get(i + 1).copied();
        match w[i] {
            "-t" | "--tcp-service" => {
                addr = value;
                vs.proto = Proto::Tcp;
                i += 1;
            }
            "-u" | "--udp-service" => {
                addr = value;
                vs.proto = Proto::Udp;
                i += 1;
            }
            "-f" | "--fwmark-service" => {
                d.warn(no, line, "firewall-mark services (traffic selected by an nftables/iptables mark) do not translate: stickylb services are a VIP, a port and a protocol; not imported");
                return None;
            }
            "--sctp-service" => {
                d.warn(no, line, "SCTP services are not balanced by stickylb (TCP and UDP only): not imported");
                return None;
            }
            "-s" | "--scheduler" => {
                sched = value.unwrap_or("wlc").to_string();
                i += 1;
            }
            "-p" | "--persistent" => match value.and_then(|v| v.parse::<u64>().ok()) {
                Some(t) => {
                    vs.persistence = Some(t);
                    i += 1;
                }
                None => vs.persistence = Some(DEFAULT_PERSISTENCE),
            },
            "-M" | "--netmask" => {
                mask = value;
                i += 1;
            }
            "-b" | "--sched-flags" => {
                d.note(no, line, format!("scheduler flags {:?}: not imported (stickylb hashes the client address only)", value.unwrap_or("")));
                i += 1;
            }
            "pe" | "--pe" => {
                d.warn(no, line, format!("persistence engine {:?} (e.g. SIP Call-ID) does not translate: clients stick by address", value.unwrap_or("")));
                i += 1;
            }
            "-o" | "--ops" | "ops" => d.warn(no, line, "one-packet scheduling (every UDP datagram scheduled on its own) does not translate: stickylb pins every client"),
            other => d.warn(no, line, format!("unknown option {other:?}: ignored")),
        }
        i += 1;
    }
    let Some(addr) = addr else {
        d.warn(no, line, "no -t or -u VIP:PORT: not imported");
        return None;
    };
    match parse_addr_port(addr) {
        Ok((ip, _)) if ip.is_unspecified() => {
            d.warn(
                no,
                line,
                format!("{addr:?}: a VIP must be a specific address; not imported"),
            );
            return None;
        }
        Ok((ip, Some(port))) => {
            vs.ip = ip;
            vs.port = port;
        }
        Ok(_) => {
            d.warn(no, line, format!("{addr:?} has no port: not imported"));
            return None;
        }
        Err(why) => {
            d.warn(no, line, format!("{addr:?}: {why}; not imported"));
            return None;
        }
    }
    vs.scheduler = scheduler(d, no, line, &sched);
    if let Some(m) = mask {
        match parse_mask(m, vs.ip.is_ipv4()) {
            Some(n) => vs.mask = Some(n).filter(|n| *n < if vs.ip.is_ipv4() { 32 } else { 128 }),
            None => d.warn(
                no,
                line,
                format!("-M {m:?} is not a netmask: clients stick by their full address"),
            ),
        }
        if vs.persistence.is_none() {
            d.note(no, line, "-M without -p has no effect in IPVS either");
            vs.mask = None;
        }
    }
    Some(vs)
}

fn scheduler(d: &mut Diagnostics, no: usize, line: &str, sched: &str) -> &'static str {
    match sched {
        "rr" | "wrr" => "roundrobin",
        "sh" | "mh" => {
            d.note(no, line, format!("{sched} → scheduler = \"maglev\": consistent hashing of the client address, so a client without an entry lands where the hash of its address says, and the fewest clients move when a backend is added or removed"));
            "maglev"
        }
        "lc" | "wlc" | "sed" | "nq" | "lblc" | "lblcr" | "fo" | "ovf" | "dh" | "twos" => {
            d.warn(no, line, format!("scheduler {sched}: stickylb does not count connections; new clients are spread by weighted round-robin (scheduler = \"roundrobin\")"));
            "roundrobin"
        }
        other => {
            d.warn(
                no,
                line,
                format!("unknown scheduler {other:?}: scheduler = \"roundrobin\" is used"),
            );
            "roundrobin"
        }
    }
}

/// `-a -t VIP:PORT -r RIP[:PORT] -g|-m|-i -w W`.
fn server_rule(d: &mut Diagnostics, no: usize, line: &str, w: &[&str], services: &mut [Vs]) {
    let mut vip = None;
    let mut proto = Proto::Tcp;
    let mut rip = None;
    let mut fwd = None;
    let mut weight: u32 = 1;
    let mut tun_type: Option<&str> = None;
    let mut tun_port: Option<u16> = None;
    let mut i = 0;
    while i < w.len() {
        let value = w.get(i + 1).copied();
        match w[i] {
            "-t" | "--tcp-service" => {
                vip = value;
                proto = Proto::Tcp;
                i += 1;
            }
            "-u" | "--udp-service" => {
                vip = value;
                proto = Proto::Udp;
                i += 1;
            }
            "-f" | "--fwmark-service" | "--sctp-service" => {
                d.note(
                    no,
                    line,
                    "a server of a service that is not imported (see its -A line)",
                );
                return;
            }
            "-r" | "--real-server" => {
                rip = value;
                i += 1;
            }
            "-g" | "--gatewaying" => fwd = Some(Fwd::Dsr),
            "-m" | "--masquerading" => fwd = Some(Fwd::Nat),
            "-i" | "--ipip" => fwd = Some(Fwd::Ipip),
            "-w" | "--weight" => {
                match value.and_then(|v| v.parse::<u32>().ok()) {
                    Some(n) => weight = n,
                    None => d.warn(
                        no,
                        line,
                        format!("-w {:?} is not a weight: 1 is used", value.unwrap_or("")),
                    ),
                }
                i += 1;
            }
            "-x" | "--u-threshold" | "-y" | "--l-threshold" => {
                d.warn(
                    no,
                    line,
                    "connection thresholds are not imported: stickylb does not count connections",
                );
                i += 1;
            }
            "--tun-type" => {
                tun_type = value;
                i += 1;
            }
            "--tun-port" => {
                match value
                    .and_then(|v| v.parse::<u16>().ok())
                    .filter(|p| *p != 0)
                {
                    Some(p) => tun_port = Some(p),
                    None => d.warn(
                        no,
                        line,
                        format!(
                            "--tun-port {:?} is not a port: {DEFAULT_GUE_PORT} is used",
                            value.unwrap_or("")
                        ),
                    ),
                }
                i += 1;
            }
            "--tun-nocsum" | "--tun-csum" | "--tun-remcsum" => {
                d.note(no, line, "GUE checksum options: not used by IPIP")
            }
            other => d.warn(no, line, format!("unknown option {other:?}: ignored")),
        }
        i += 1;
    }
    if fwd == Some(Fwd::Ipip) {
        fwd = Some(tunnel(d, no, line, tun_type, tun_port));
    }
    let (Some(vip), Some(rip)) = (vip, rip) else {
        d.warn(
            no,
            line,
            "a server rule needs -t|-u VIP:PORT and -r RIP[:PORT]: not imported",
        );
        return;
    };
    let Ok((vip_ip, Some(vip_port))) = parse_addr_port(vip) else {
        d.warn(no, line, format!("{vip:?} is not VIP:PORT: not imported"));
        return;
    };
    let Some(vs) = services
        .iter_mut()
        .find(|s| s.proto == proto && s.ip == vip_ip && s.port == vip_port)
    else {
        d.warn(
            no,
            line,
            format!(
                "no service {} {vip} was added before (ipvsadm refuses this): not imported",
                proto.name()
            ),
        );
        return;
    };
    match parse_addr_port(rip) {
        Ok((ip, port)) => vs.servers.push(Rs {
            line: no,
            ip,
            port,
            fwd,
            weight,
        }),
        Err(why) => d.warn(no, line, format!("{rip:?}: {why}; not imported")),
    }
}

/// `IP:PORT`, `[IPv6]:PORT`, `IP` (no port).
fn parse_addr_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unbalanced '['")?;
        (h, after.strip_prefix(':'))
    } else if s.matches(':').count() == 1 {
        let (h, p) = s.split_once(':').unwrap_or((s, ""));
        (h, Some(p))
    } else {
        (s, None)
    };
    let ip: IpAddr = host.parse().map_err(|_| {
        format!("{host:?} is not an IP address (run `ipvsadm-save -n` for numeric output)")
    })?;
    if ip.is_unspecified() {
        return Err("an unspecified address (0.0.0.0, ::) is neither a VIP nor a server".into());
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| {
            format!("{p:?} is not a port number (run `ipvsadm-save -n` for numeric output)")
        })?),
    };
    Ok((ip, port))
}

/// A netmask as a prefix length: dotted (`255.255.255.0`) or a length (`24`, `64`).
fn parse_mask(s: &str, v4: bool) -> Option<u8> {
    if let Ok(n) = s.parse::<u8>() {
        return (n <= if v4 { 32 } else { 128 }).then_some(n);
    }
    let m: Ipv4Addr = s.parse().ok()?;
    let bits = u32::from(m);
    let n = bits.leading_ones();
    (bits.checked_shl(n).unwrap_or(0) == 0 && v4).then_some(n as u8)
}

/// Turns the collected services into the output, shared by both formats.
/// `kind` names the input for the header comment, `origin` a service's source (`ipvsadm
/// rule`, `virtual_server`), `what` a server (`ipvsadm rule`, `real_server`).
fn finish(
    mut d: Diagnostics,
    services: Vec<Vs>,
    opts: &Options,
    kind: &'static str,
    origin: &str,
    what: &str,
) -> Import {
    let f = opts.features;
    let mut out = Vec::new();
    let mut places: Vec<Vec<Place>> = Vec::new();
    let mut seen: Vec<(Proto, IpAddr, u16, usize)> = Vec::new();
    for vs in services {
        let name = format!("{}-{}-{}", vs.proto.name(), vs.ip, vs.port);
        let vs_text = format!("{} {}", vs.proto.name(), endpoint(vs.ip, vs.port));
        if let Some(first) = seen
            .iter()
            .find(|(p, ip, port, _)| (*p, *ip, *port) == (vs.proto, vs.ip, vs.port))
        {
            d.warn(vs.line, vs_text, format!("defined before, at line {}: a VIP, port and protocol belong to one service; not imported again", first.3));
            continue;
        }
        seen.push((vs.proto, vs.ip, vs.port, vs.line));
        if vs.port == 0 {
            d.note(vs.line, vs_text.clone(), "port 0: one service for every port of the VIP, as IPVS's port-less persistent service");
        }
        let expire = match vs.persistence {
            Some(0) => "never".to_string(),
            Some(t) => crate::duration::format(Duration::from_secs(t)),
            None => {
                d.warn(vs.line, vs_text.clone(), "not persistent (no -p / persistence_timeout): IPVS balanced every connection on its own; stickylb pins every client to one backend, here for 5m of silence (IPVS's -p default)");
                crate::duration::format(Duration::from_secs(DEFAULT_PERSISTENCE))
            }
        };
        let mut pending = Vec::new();
        let mut stick_on = None;
        if let Some(m) = vs.mask {
            let value = format!("src/{m}");
            if f.stick_prefix {
                stick_on = Some(value);
            } else {
                d.warn(vs.mask_line, format!("persistence mask /{m}"), format!("this build of stickylb cannot stick by network prefix yet: `stick_on = \"{value}\"` is written commented out in service {name:?}; until it is enabled, clients stick by their full address"));
                pending.push(format!("stick_on = \"{value}\"   # TODO: not supported by this build yet (from line {})", vs.mask_line));
            }
        }
        // One forwarding per service: the service's own (keepalived), else the first
        // server's, else IPVS's default (-g).
        let fwd = vs
            .fwd
            .or_else(|| vs.servers.iter().find_map(|s| s.fwd))
            .unwrap_or(Fwd::Dsr);
        for s in &vs.servers {
            if s.fwd.is_some_and(|x| x != fwd) {
                d.warn(s.line, format!("{} {}", what, s.ip), format!("stickylb forwards one way per service: this server's {} is imported as the service's {}", s.fwd.map_or("", Fwd::name), fwd.name()));
            }
        }
        if (fwd == Fwd::Ipip && !f.ipip) || (matches!(fwd, Fwd::Gue(_)) && !f.gue) {
            d.error(vs.line, vs_text.clone(), format!("tunnel mode: written as forwarding = \"{}\", but this build of stickylb does not support it yet: the configuration will not load until it does (or change service {name:?} to \"dsr\" if its backends share the balancer's L2 segment)", fwd.name()));
        }
        let encap_fwd = matches!(fwd, Fwd::Ipip | Fwd::Gue(_));
        let mut health = vs.health.clone();
        if health.kind == "https" && !f.https_health {
            d.warn(vs.line, vs_text.clone(), format!("SSL_GET: this build of stickylb has no https health check yet: service {name:?} is checked with a TCP connect (kind = \"tcp\") until it has"));
            health = HealthOut {
                kind: "tcp",
                path: None,
                expect_status: None,
                verify: None,
                ..health
            };
        }
        let max_w = vs.servers.iter().map(|s| s.weight).max().unwrap_or(0);
        if max_w > MAX_WEIGHT {
            d.warn(vs.line, vs_text.clone(), format!("weights up to {max_w}: stickylb's go up to {MAX_WEIGHT}, so they are scaled by {MAX_WEIGHT}/{max_w} (rounded, at least 1 for a non-zero weight)"));
        }
        let mut backends = Vec::new();
        let mut here: Vec<Place> = Vec::new();
        for s in &vs.servers {
            // Tunnels carry one family in the other (4-in-6, 6-in-4); NAT and L2 DSR cannot.
            if s.ip.is_ipv4() != vs.ip.is_ipv4() && !encap_fwd {
                d.warn(
                    s.line,
                    format!("{what} {}", s.ip),
                    format!("not of the VIP's address family ({}): not imported", vs.ip),
                );
                continue;
            }
            let mut port = s.port;
            if vs.port == 0 {
                if port.is_some_and(|p| p != 0) {
                    d.warn(s.line, format!("{what} {}", s.ip), format!("port {} is ignored: a service on every port forwards to the port the client connected to", port.unwrap_or(0)));
                }
                port = None;
            } else if fwd != Fwd::Nat {
                if port.is_some_and(|p| p != vs.port) {
                    d.warn(s.line, format!("{what} {}", s.ip), format!("port {} is ignored: with {} forwarding the packet reaches the server on the service port {}, as in IPVS", port.unwrap_or(0), fwd.name(), vs.port));
                }
                port = None;
            } else if port == Some(vs.port) {
                port = None;
            }
            let weight = if max_w > MAX_WEIGHT && s.weight > 0 {
                ((u64::from(s.weight) * u64::from(MAX_WEIGHT) + u64::from(max_w) / 2)
                    / u64::from(max_w))
                .max(1) as u32
            } else {
                s.weight
            };
            let address = backend_address(s.ip, port);
            if backends.iter().any(|b: &BackendOut| b.address == address) {
                d.warn(
                    s.line,
                    format!("{what} {}", s.ip),
                    "listed twice: imported once",
                );
                continue;
            }
            backends.push(BackendOut {
                address,
                weight,
                state: "ready",
            });
            here.push((s.line, s.ip, port.filter(|p| *p != 0)));
        }
        if backends.is_empty() {
            d.warn(vs.line, vs_text.clone(), "no servers: the service is imported without backends (it drops its traffic until backends are added)");
        }
        out.push(ServiceOut {
            name,
            listen: endpoint(vs.ip, vs.port),
            protocol: vs.proto.name(),
            scheduler: vs.scheduler,
            forwarding: fwd.name(),
            encap: match fwd {
                Fwd::Gue(port) => Some(EncapOut { gue_port: port }),
                _ => None,
            },
            stick_on,
            stick_table: StickTableOut {
                size: DEFAULT_SIZE,
                expire,
            },
            health,
            backend: backends,
            origin: if vs.servers.is_empty() {
                format!("{origin} at line {}", vs.line)
            } else {
                format!(
                    "{origin} at line {}, {} {}",
                    vs.line,
                    if vs.servers.len() == 1 {
                        "server at line"
                    } else {
                        "servers at lines"
                    },
                    vs.servers
                        .iter()
                        .map(|s| s.line.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            pending,
        });
        places.push(here);
    }
    if out.iter().any(|s| s.health.kind == "none") && kind == "ipvsadm rules" {
        d.note(0, "", "ipvsadm rules carry no health checks (keepalived or another tool did them): the services are imported with health kind = \"none\"; add a check (docs/CONFIG.md) to have stickylb take failed backends out");
    }
    drop_shared_nat_backends(&mut out, &mut places, &mut d, what);
    enforce_limits(&mut out, &mut d);
    unique_names(&mut out);
    Import {
        file: FileOut { service: out },
        diagnostics: d.into_sorted(),
        source_kind: kind,
    }
}

// ----------------------------------------------------------------------------------
// keepalived.conf

/// One `keyword args... [{ children }]` of keepalived's configuration.
#[derive(Clone, Debug)]
struct Node {
    line: usize,
    words: Vec<String>,
    children: Option<Vec<Node>>,
}

impl Node {
    fn text(&self) -> String {
        let t = self.words.join(" ");
        if self.children.is_some() {
            format!("{t} {{ ... }}")
        } else {
            t
        }
    }
}

/// Tokens with their lines: words, `{` and `}`; `#` and `!` start comments.
fn tokens(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split(['#', '!']).next().unwrap_or("");
        let mut cur = String::new();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '"' => quoted = !quoted,
                '{' | '}' if !quoted => {
                    if !cur.is_empty() {
                        out.push((i + 1, std::mem::take(&mut cur)));
                    }
                    out.push((i + 1, c.to_string()));
                }
                c if c.is_whitespace() && !quoted => {
                    if !cur.is_empty() {
                        out.push((i + 1, std::mem::take(&mut cur)));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            out.push((i + 1, cur));
        }
        out.push((i + 1, "\n".into()));
    }
    out
}

/// Parses a block's statements until its closing brace (or the end).
fn nodes(
    toks: &[(usize, String)],
    pos: &mut usize,
    d: &mut Diagnostics,
    depth: usize,
) -> Vec<Node> {
    let mut out = Vec::new();
    let mut cur: Option<Node> = None;
    while *pos < toks.len() {
        let (line, t) = &toks[*pos];
        *pos += 1;
        match t.as_str() {
            "\n" => {
                if let Some(n) = cur.take() {
                    out.push(n);
                }
            }
            "{" => {
                let children = nodes(toks, pos, d, depth + 1);
                let mut n = cur.take().unwrap_or(Node {
                    line: *line,
                    words: Vec::new(),
                    children: None,
                });
                n.children = Some(children);
                out.push(n);
            }
            "}" => {
                if let Some(n) = cur.take() {
                    out.push(n);
                }
                if depth == 0 {
                    d.warn(
                        *line,
                        "}",
                        "a closing brace without an opening one: ignored",
                    );
                    continue;
                }
                return out;
            }
            w => match &mut cur {
                Some(n) => n.words.push(w.to_string()),
                None => {
                    cur = Some(Node {
                        line: *line,
                        words: vec![w.to_string()],
                        children: None,
                    })
                }
            },
        }
    }
    if let Some(n) = cur.take() {
        out.push(n);
    }
    if depth > 0 {
        let line = toks.last().map_or(0, |t| t.0);
        d.error(line, "", "the file ends inside a block (a closing brace is missing): the last block may be incomplete");
    }
    out
}

/// Imports the `virtual_server` blocks of a keepalived configuration.
pub fn import_keepalived(text: &str, opts: &Options) -> Import {
    let mut d = Diagnostics::default();
    let toks = tokens(text);
    let mut pos = 0;
    let top = nodes(&toks, &mut pos, &mut d, 0);
    let mut services = Vec::new();
    for n in &top {
        let kw = n.words.first().map(String::as_str).unwrap_or("");
        match kw {
            "virtual_server" => {
                if let Some(vs) = virtual_server(&mut d, n) {
                    services.push(vs);
                }
            }
            "virtual_server_group" => d.warn(n.line, n.text(), "virtual server groups are not imported: write one virtual_server per VIP and port"),
            "vrrp_instance" | "vrrp_sync_group" | "vrrp_script" | "vrrp_track_process" => d.note(n.line, n.text(), "VRRP moves the VIP between balancers: stickylb does not hold or announce VIPs; keep keepalived's VRRP (without its virtual_server blocks) or route the VIP to the balancers"),
            "global_defs" | "static_ipaddress" | "static_routes" | "static_rules" | "linkbeat_interfaces" => d.note(n.line, n.text(), "keepalived's own settings: not imported"),
            "include" => d.warn(n.line, n.text(), "included files are not read: import each one too"),
            _ => d.warn(n.line, n.text(), "not imported: no stickylb equivalent"),
        }
    }
    finish(
        d,
        services,
        opts,
        "keepalived configuration",
        "virtual_server",
        "real_server",
    )
}

fn virtual_server(d: &mut Diagnostics, n: &Node) -> Option<Vs> {
    let text = n.text();
    let (ip, port) = match n.words.as_slice() {
        [_, kind, ..] if kind == "fwmark" || kind == "group" => {
            d.warn(n.line, text, "firewall-mark and group virtual servers do not translate: stickylb services are a VIP, a port and a protocol; not imported");
            return None;
        }
        [_, ip, port, ..] => match (ip.parse::<IpAddr>(), port.parse::<u16>()) {
            (Ok(ip), Ok(port)) if !ip.is_unspecified() => (ip, port),
            _ => {
                d.warn(
                    n.line,
                    text,
                    "expected `virtual_server IP PORT`: not imported",
                );
                return None;
            }
        },
        _ => {
            d.warn(
                n.line,
                text,
                "expected `virtual_server IP PORT`: not imported",
            );
            return None;
        }
    };
    let mut vs = Vs {
        line: n.line,
        proto: Proto::Tcp,
        ip,
        port,
        scheduler: "roundrobin",
        persistence: None,
        mask: None,
        mask_line: n.line,
        fwd: Some(Fwd::Nat),
        health: HealthOut::none(),
        servers: Vec::new(),
    };
    let mut delay_loop = Duration::from_secs(60);
    let mut sched = "wlc".to_string();
    let mut sched_line = n.line;
    let mut real: Vec<&Node> = Vec::new();
    for c in n.children.iter().flatten() {
        let kw = c.words.first().map(String::as_str).unwrap_or("");
        let v = c.words.get(1).map(String::as_str).unwrap_or("");
        match kw {
            "delay_loop" => match v.parse::<u64>() {
                Ok(s) if s > 0 => delay_loop = Duration::from_secs(s),
                _ => d.warn(c.line, c.text(), "not a number of seconds: 60 is used"),
            },
            "lb_algo" | "lvs_sched" => {
                sched = v.to_string();
                sched_line = c.line;
            }
            "lb_kind" | "lvs_method" => {
                vs.fwd = match v.to_ascii_uppercase().as_str() {
                    "NAT" => Some(Fwd::Nat),
                    "DR" => Some(Fwd::Dsr),
                    "TUN" => {
                        // `lvs_method TUN [type ipip|gue|gre] [port N] [csum...]`
                        let w: Vec<&str> = c.words.iter().map(String::as_str).collect();
                        let after = |k: &str| {
                            w.iter()
                                .position(|x| *x == k)
                                .and_then(|i| w.get(i + 1).copied())
                        };
                        let port = after("port")
                            .and_then(|p| p.parse::<u16>().ok())
                            .filter(|p| *p != 0);
                        Some(tunnel(d, c.line, &c.text(), after("type"), port))
                    }
                    _ => {
                        d.warn(c.line, c.text(), "unknown forwarding method: NAT is used");
                        Some(Fwd::Nat)
                    }
                }
            }
            "persistence_timeout" => match v.parse::<u64>() {
                Ok(t) => vs.persistence = Some(t),
                Err(_) => d.warn(c.line, c.text(), "not a number of seconds: ignored"),
            },
            "persistence_granularity" => {
                match parse_mask(v, ip.is_ipv4()) {
                    Some(m) => {
                        vs.mask = Some(m).filter(|m| *m < if ip.is_ipv4() { 32 } else { 128 })
                    }
                    None => d.warn(
                        c.line,
                        c.text(),
                        "not a netmask: clients stick by their full address",
                    ),
                }
                vs.mask_line = c.line;
            }
            "protocol" => {
                match v.to_ascii_uppercase().as_str() {
                    "TCP" => vs.proto = Proto::Tcp,
                    "UDP" => vs.proto = Proto::Udp,
                    _ => {
                        d.warn(c.line, c.text(), "stickylb balances TCP and UDP only: the virtual server is not imported");
                        return None;
                    }
                }
            }
            "real_server" => real.push(c),
            "sorry_server" | "sorry_server_inhibit" => d.warn(
                c.line,
                c.text(),
                "stickylb has no sorry server: when every backend is down, clients get no answer",
            ),
            "ha_suspend" | "alpha" | "omega" | "quorum" | "quorum_up" | "quorum_down"
            | "hysteresis" | "virtualhost" | "retry" | "delay_before_retry" | "connect_timeout"
            | "warmup" | "inhibit_on_failure" => {
                d.note(c.line, c.text(), "not imported: no stickylb equivalent")
            }
            "ops" => d.warn(
                c.line,
                c.text(),
                "one-packet scheduling does not translate: stickylb pins every client",
            ),
            _ => d.warn(c.line, c.text(), "not imported: no stickylb equivalent"),
        }
    }
    vs.scheduler = scheduler(d, sched_line, &format!("lb_algo {sched}"), &sched);
    // The check of the first real server with one decides the service's (stickylb checks
    // every backend of a service alike).
    let mut health: Option<(HealthOut, usize)> = None;
    for r in real {
        let text = r.text();
        let (ip, port) = match r.words.as_slice() {
            [_, ip, port, ..] => match (ip.parse::<IpAddr>(), port.parse::<u16>()) {
                (Ok(ip), Ok(p)) if !ip.is_unspecified() => (ip, Some(p).filter(|p| *p != 0)),
                _ => {
                    d.warn(r.line, text, "expected `real_server IP PORT`: not imported");
                    continue;
                }
            },
            [_, ip] => match ip.parse::<IpAddr>() {
                Ok(ip) if !ip.is_unspecified() => (ip, None),
                _ => {
                    d.warn(r.line, text, "expected `real_server IP PORT`: not imported");
                    continue;
                }
            },
            _ => {
                d.warn(r.line, text, "expected `real_server IP PORT`: not imported");
                continue;
            }
        };
        let mut weight = 1;
        let mut check: Option<HealthOut> = None;
        for c in r.children.iter().flatten() {
            let kw = c.words.first().map(String::as_str).unwrap_or("");
            match kw {
                "weight" => match c.words.get(1).and_then(|w| w.parse::<u32>().ok()) {
                    Some(w) => weight = w,
                    None => d.warn(c.line, c.text(), "not a weight: 1 is used"),
                },
                "TCP_CHECK" | "HTTP_GET" | "SSL_GET" => {
                    if check.is_some() {
                        d.warn(c.line, c.text(), "one check per backend: the first is used");
                        continue;
                    }
                    check = Some(checker(d, c, kw, delay_loop, port.unwrap_or(vs.port)));
                }
                "MISC_CHECK" | "SMTP_CHECK" | "DNS_CHECK" | "BFD_CHECK" | "FILE_CHECK" | "PING_CHECK" | "UDP_CHECK" => {
                    d.warn(c.line, c.text(), "this checker is not imported: stickylb checks with TCP, HTTP or HTTPS");
                }
                "inhibit_on_failure" => d.note(c.line, c.text(), "a failed backend stays listed in stickylb anyway (down, receiving nobody)"),
                "notify_up" | "notify_down" => d.note(c.line, c.text(), "notification scripts are not run: stickylb logs state changes and exports stickylb_backend_up"),
                "uthreshold" | "lthreshold" => d.warn(c.line, c.text(), "connection thresholds are not imported: stickylb does not count connections"),
                _ => d.warn(c.line, c.text(), "not imported: no stickylb equivalent"),
            }
        }
        match (&health, check) {
            (None, Some(h)) => health = Some((h, r.line)),
            (Some((h, first)), Some(c)) if *h != c => d.warn(r.line, text.clone(), format!("its check differs from the real_server's at line {first}: stickylb checks every backend of a service alike, with that one")),
            (Some((_, first)), None) => d.warn(r.line, text.clone(), format!("has no check, but the real_server's at line {first} has: stickylb checks every backend of a service alike")),
            _ => {}
        }
        vs.servers.push(Rs {
            line: r.line,
            ip,
            port,
            fwd: None,
            weight,
        });
    }
    if let Some((h, _)) = health {
        vs.health = h;
    }
    Some(vs)
}

/// `TCP_CHECK { ... }`, `HTTP_GET { url { path; status_code } ... }`, `SSL_GET`.
fn checker(
    d: &mut Diagnostics,
    c: &Node,
    kind: &str,
    delay_loop: Duration,
    port: u16,
) -> HealthOut {
    let mut interval = delay_loop;
    let mut timeout = Duration::from_secs(5);
    let mut retry: u32 = 1;
    let mut path = None;
    let mut status = None;
    for k in c.children.iter().flatten() {
        let kw = k.words.first().map(String::as_str).unwrap_or("");
        let v = k.words.get(1).map(String::as_str).unwrap_or("");
        match kw {
            "connect_timeout" => match v.parse::<u64>() {
                Ok(s) if s > 0 => timeout = Duration::from_secs(s),
                _ => d.warn(k.line, k.text(), "not a number of seconds: 5 is used"),
            },
            "retry" | "nb_get_retry" => match v.parse::<u32>() {
                Ok(n) => retry = n,
                Err(_) => d.warn(k.line, k.text(), "not a count: 1 is used"),
            },
            "delay_loop" => match v.parse::<u64>() {
                Ok(s) if s > 0 => interval = Duration::from_secs(s),
                _ => d.warn(
                    k.line,
                    k.text(),
                    "not a number of seconds: the virtual server's delay_loop is used",
                ),
            },
            "delay_before_retry" => {
                d.note(k.line, k.text(), "stickylb retries at the check interval")
            }
            "url" => {
                if path.is_some() {
                    d.warn(k.line, k.text(), "one URL per check: the first is used");
                    continue;
                }
                for u in k.children.iter().flatten() {
                    let ukw = u.words.first().map(String::as_str).unwrap_or("");
                    let uv = u.words.get(1).cloned().unwrap_or_default();
                    match ukw {
                        "path" if valid_check_path(&uv) => path = Some(uv),
                        "path" => d.warn(u.line, u.text(), "not a path starting with '/' without spaces or control characters: \"/\" is used"),
                        "status_code" => match uv.parse::<u16>() {
                            Ok(s) if (100..=599).contains(&s) => status = Some(s),
                            _ => d.warn(
                                u.line,
                                u.text(),
                                "only one status code translates: any 2xx or 3xx is healthy",
                            ),
                        },
                        "digest" | "regex" | "regex_no_match" | "regex_options" => d.warn(
                            u.line,
                            u.text(),
                            "the response body is not checked by stickylb: only the status",
                        ),
                        _ => d.warn(u.line, u.text(), "not imported"),
                    }
                }
            }
            "connect_port" if v.parse::<u16>() == Ok(port) => {}
            "connect_port" | "connect_ip" | "bindto" | "bind_port" => d.warn(
                k.line,
                k.text(),
                format!("stickylb checks the backend's own address and port ({port})"),
            ),
            "virtualhost" | "sni_name" => d.warn(
                k.line,
                k.text(),
                "the check sends `Host: ADDRESS:PORT` of the backend",
            ),
            "fwmark" | "warmup" | "alpha" => d.note(k.line, k.text(), "not imported"),
            _ => d.warn(k.line, k.text(), "not imported: no stickylb equivalent"),
        }
    }
    let timeout = timeout.min(interval);
    let mut h = HealthOut {
        kind: "tcp",
        interval: Some(crate::duration::format(interval)),
        timeout: Some(crate::duration::format(timeout)),
        rise: Some(1),
        fall: Some(retry.saturating_add(1)),
        ..HealthOut::default()
    };
    if kind != "TCP_CHECK" {
        h.kind = if kind == "SSL_GET" { "https" } else { "http" };
        h.path = Some(path.unwrap_or_else(|| "/".into()));
        h.expect_status = status;
        if kind == "SSL_GET" {
            // keepalived's SSL_GET does not verify the certificate unless told to.
            h.verify = Some(false);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::Features;

    #[test]
    fn masks_and_addresses() {
        assert_eq!(parse_mask("255.255.255.0", true), Some(24));
        assert_eq!(parse_mask("64", false), Some(64));
        assert_eq!(parse_mask("255.0.255.0", true), None);
        assert_eq!(
            parse_addr_port("10.0.0.1:80").unwrap(),
            ("10.0.0.1".parse().unwrap(), Some(80))
        );
        assert_eq!(
            parse_addr_port("[2001:db8::1]:443").unwrap(),
            ("2001:db8::1".parse().unwrap(), Some(443))
        );
        assert!(parse_addr_port("web.example:http").is_err());
        assert!(parse_addr_port("0.0.0.0:80").is_err());
    }

    /// What the planner would refuse is not written: a second service on one VIP, port
    /// and protocol; a backend two nat services share. A port-less persistent service
    /// becomes a service on every port.
    #[test]
    fn output_respects_the_planners_rules() {
        let opts = Options::default();
        let r = import(
            "-A -t 10.0.0.1:0 -s rr -p 60\n-a -t 10.0.0.1:0 -r 10.1.0.1:8080 -m -w 1\n\
             -A -t 10.0.0.2:80 -s rr -p 60\n-a -t 10.0.0.2:80 -r 10.1.0.2:8080 -m -w 1\n\
             -A -t 10.0.0.3:80 -s rr -p 60\n-a -t 10.0.0.3:80 -r 10.1.0.2:8080 -m -w 1\n",
            &opts,
        );
        let s = &r.file.service;
        assert_eq!(s[0].listen, "10.0.0.1:0");
        assert_eq!(
            s[0].backend[0].address, "10.1.0.1",
            "no port on an every-port service"
        );
        assert_eq!(s[1].backend.len(), 1);
        assert!(
            s[2].backend.is_empty(),
            "a shared nat backend is dropped from the later service"
        );
        assert!(r
            .diagnostics
            .iter()
            .any(|d| d.line == 6 && d.why.contains("also serves service")));
        crate::config::parse(&r.to_toml("x"), "x").unwrap();
        let k = import_keepalived(
            "virtual_server 10.0.0.1 80 {\n real_server 10.1.0.1 80 {\n }\n}\n\
             virtual_server 10.0.0.1 80 {\n real_server 10.1.0.2 80 {\n }\n}\n",
            &opts,
        );
        assert_eq!(k.file.service.len(), 1);
        assert!(k
            .diagnostics
            .iter()
            .any(|d| d.line == 5 && d.why.contains("defined before")));
        crate::config::parse(&k.to_toml("x"), "x").unwrap();
    }

    /// IPVS and keepalived tunnels: IPIP, and GUE with its port; a tunnel carries the
    /// other family too.
    #[test]
    fn tunnels() {
        let opts = Options::default();
        let r = import(
            "-A -t 10.0.0.1:80 -s rr -p 60\n\
             -a -t 10.0.0.1:80 -r 10.1.0.1:80 -i -w 1 --tun-type gue --tun-port 7000\n\
             -a -t 10.0.0.1:80 -r [2001:db8::5]:80 -i -w 1 --tun-type gue --tun-port 7000\n",
            &opts,
        );
        let s = &r.file.service[0];
        assert_eq!(s.forwarding, "gue");
        assert_eq!(s.encap, Some(EncapOut { gue_port: 7000 }));
        assert_eq!(s.backend.len(), 2, "the IPv6 server stays (6-in-4 is fine)");
        if Features::of_this_build().gue {
            let cfg = crate::config::parse(&r.to_toml("x"), "x").unwrap();
            assert_eq!(cfg.services[0].spec.encap.gue_port, 7000);
        }
        let k = import_keepalived(
            "virtual_server 10.0.0.1 80 {\n lb_kind TUN type gue port 6081\n \
             real_server 10.1.0.1 80 {\n }\n}\n\
             virtual_server 10.0.0.1 81 {\n lb_kind TUN\n real_server 10.1.0.1 81 {\n }\n}\n",
            &opts,
        );
        assert_eq!(k.file.service[0].forwarding, "gue");
        assert_eq!(k.file.service[0].encap, Some(EncapOut { gue_port: 6081 }));
        assert_eq!(k.file.service[1].forwarding, "ipip");
        assert_eq!(k.file.service[1].encap, None);
    }
}
