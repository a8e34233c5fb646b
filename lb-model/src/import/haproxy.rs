//! `stickylb import haproxy FILE`: an HAProxy configuration (`haproxy.cfg`) to a stickylb
//! configuration.
//!
//! What translates (the rest is reported line by line, see [`super`]):
//! - `frontend` + `backend` (linked by `default_backend` or an unconditional
//!   `use_backend`), and `listen`: one `[[service]]` per `bind` address. Binds on every
//!   address (`bind *:80`, `bind :::443`) need the VIP from `--vip`.
//! - `defaults` (named ones and `from` too): `mode`, `balance`, check options,
//!   `default-server`, `timeout check`/`connect`, `default_backend`.
//! - `balance roundrobin` → `scheduler = "roundrobin"`; `balance source` → `"maglev"`:
//!   both pick by the client address alone, so a client that lost its entry lands on the
//!   same backend again, and Maglev moves the fewest clients when backends change (what
//!   `hash-type consistent` is for). Everything else → `"roundrobin"`, with a warning
//!   unless it only changes the spread of new clients (`static-rr`, `random`).
//! - `stick-table type ip|ipv6 size N expire T` + `stick on src` → `stick_table`
//!   (HAProxy's `k`/`m`/`g` are ×1024, written out exactly); `src,ipmask(N[,M])` →
//!   `stick_on = "src/N"` (`/M` for IPv6 services).
//! - `server NAME ADDR[:PORT] check inter rise fall weight disabled check-ssl verify`,
//!   `default-server`; `option httpchk [METH] URI` / `http-check send meth uri`,
//!   `http-check expect status N` → `health`. stickylb has one health setting per service:
//!   the first checked server's is used (differences are warnings).
//! - `backup`: stickylb has no backup servers. A backup server is emitted with
//!   `weight = 0`: health-checked and listed, it takes no new clients, so it is used only
//!   when an operator gives it a weight (`stickylb backend weight SVC ADDR 1`).
//! - `disabled` → `state = "maint"`.
//!
//! The file is tokenised as HAProxy does: words split on blanks, `#` comments, `"…"` and
//! `'…'` quoting, backslash escapes (`\ `, `\#`, `\r`, `\n`, ...). Environment variables
//! (`"${VIP}"`) are not expanded (reported where they make an address unusable).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use super::{
    backend_address, drop_shared_nat_backends, endpoint, enforce_limits, sanitise_name,
    unique_names, valid_check_path, BackendOut, Diagnostics, FileOut, HealthOut, Import, Options,
    Place, ServiceOut, StickTableOut,
};

/// HAProxy's defaults, as documented.
const DEFAULT_INTER: Duration = Duration::from_secs(2);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;
/// stickylb's defaults for a service HAProxy had no stick table for.
const DEFAULT_SIZE: u64 = 200_000;
const DEFAULT_EXPIRE: &str = "30m";
/// stickylb's shortest check interval.
const MIN_INTER: Duration = Duration::from_millis(100);

/// Imports an HAProxy configuration.
pub fn import(text: &str, opts: &Options) -> Import {
    let mut p = Parser {
        opts,
        d: Diagnostics::default(),
        defaults: BTreeMap::new(),
        current_defaults: Common::default(),
        proxies: Vec::new(),
        verify_none_default: false,
    };
    p.parse(text);
    let mut file = p.build();
    unique_names(&mut file.service);
    Import {
        file,
        diagnostics: p.d.into_sorted(),
        source_kind: "HAProxy configuration",
    }
}

/// One line, split into words.
#[derive(Clone, Debug)]
struct Line {
    no: usize,
    words: Vec<String>,
}

impl Line {
    /// The line as written (words joined), shortened for messages.
    fn text(&self) -> String {
        shorten(&self.words.join(" "))
    }
}

/// A line for a message: control characters escaped (`\r\n` of an old httpchk), at most
/// 72 characters.
fn shorten(s: &str) -> String {
    const MAX: usize = 72;
    let s = &s
        .replace('\r', "\\r")
        .replace('\n', "\\n")
        .replace('\t', "\\t");
    if s.chars().count() <= MAX {
        return s.to_string();
    }
    let mut t: String = s.chars().take(MAX - 3).collect();
    t.push_str("...");
    t
}

/// Splits a line into words as HAProxy does. Errors on an unterminated quote.
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    let escape = |c: char| match c {
        'r' => '\r',
        'n' => '\n',
        't' => '\t',
        other => other,
    };
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some('"') if c == '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(escape(n));
                }
            }
            Some(_) => cur.push(c),
            None => match c {
                '#' => break,
                '"' | '\'' => {
                    quote = Some(c);
                    in_word = true;
                }
                '\\' => {
                    in_word = true;
                    if let Some(n) = chars.next() {
                        cur.push(escape(n));
                    }
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                c => {
                    cur.push(c);
                    in_word = true;
                }
            },
        }
    }
    if quote.is_some() {
        return Err("unterminated quote: close it or escape it with a backslash".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// A time as HAProxy writes it: a number with `us`, `ms`, `s`, `m`, `h` or `d`; no unit
/// means milliseconds.
fn parse_time(s: &str) -> Option<Duration> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let ms = match &s[digits..] {
        "us" => return Some(Duration::from_micros(n)),
        "" | "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// A size as HAProxy writes it: a number with `k`, `m` or `g` (×1024).
fn parse_size(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let mult: u64 = match &s[digits..] {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Defaults,
    Frontend,
    Backend,
    Listen,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Defaults => "defaults",
            Kind::Frontend => "frontend",
            Kind::Backend => "backend",
            Kind::Listen => "listen",
        }
    }
    fn has_frontend(self) -> bool {
        matches!(self, Kind::Frontend | Kind::Listen)
    }
    fn has_backend(self) -> bool {
        matches!(self, Kind::Backend | Kind::Listen)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Balance {
    RoundRobin,
    Source,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum CheckType {
    /// `option httpchk`: method and path.
    Http { method: String, path: String },
    /// A check stickylb performs as a TCP connect (`tcp-check`, `ssl-hello-chk`,
    /// protocol checks: reported where they are set).
    Tcp,
}

/// What `defaults` sections pass on to proxies (and proxies override).
#[derive(Clone, Debug, Default)]
struct Common {
    /// Line of the `defaults` section these values come from (0: none).
    defaults_line: usize,
    balance: Option<Balance>,
    check: Option<(CheckType, usize)>,
    /// `http-check expect status N`, and its line.
    expect: Option<(u16, usize)>,
    timeout_check: Option<Duration>,
    timeout_connect: Option<Duration>,
    default_server: ServerParams,
    default_backend: Option<(String, usize)>,
}

/// Server parameters that change the output (the others are only reported).
#[derive(Clone, Debug, Default)]
struct ServerParams {
    check: Option<bool>,
    check_ssl: Option<bool>,
    ssl: Option<bool>,
    inter: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
    weight: Option<u32>,
    backup: Option<bool>,
    disabled: Option<bool>,
    verify_none: Option<bool>,
    /// `port N` (checks on another port), and its line.
    check_port: Option<(u16, usize)>,
}

impl ServerParams {
    fn merge(&mut self, o: &ServerParams) {
        macro_rules! take {
            ($($f:ident),*) => { $( if o.$f.is_some() { self.$f = o.$f; } )* };
        }
        take!(
            check,
            check_ssl,
            ssl,
            inter,
            rise,
            fall,
            weight,
            backup,
            disabled,
            verify_none,
            check_port
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    /// No port: the port the client connected to (the service port).
    Same,
    Fixed(u16),
    /// `:+N` / `:-N`: the client's port plus N.
    Offset(i32),
}

#[derive(Clone, Debug)]
struct Server {
    name: String,
    line: usize,
    ip: IpAddr,
    port: Port,
    /// Effective parameters: `default-server` lines before it, then its own.
    params: ServerParams,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BindAddr {
    Ip(IpAddr, u16),
    /// Every address: IPv4 only (`*`, `0.0.0.0`, empty) or IPv6 (`::`, with IPv4 too
    /// unless `v6only`).
    Any {
        v6: bool,
        port: u16,
    },
}

#[derive(Clone, Debug)]
struct Bind {
    line: usize,
    addrs: Vec<BindAddr>,
    v6only: bool,
}

#[derive(Clone, Debug)]
struct Table {
    line: usize,
    size: u64,
    expire: Option<Duration>,
    /// `type ip` (IPv4 only) rather than `ipv6`.
    ipv4_only: bool,
}

#[derive(Clone, Debug)]
struct Stick {
    line: usize,
    mask4: Option<u8>,
    mask6: Option<u8>,
    table: Option<String>,
}

#[derive(Clone, Debug)]
struct UseBackend {
    name: String,
    conditional: bool,
    line: usize,
}

#[derive(Clone, Debug)]
struct Proxy {
    kind: Kind,
    name: String,
    line: usize,
    common: Common,
    /// `default_backend` set in this section (not inherited).
    own_default_backend: bool,
    binds: Vec<Bind>,
    use_backends: Vec<UseBackend>,
    servers: Vec<Server>,
    table: Option<Table>,
    stick: Option<Stick>,
    disabled: bool,
    /// Serves HAProxy's statistics page.
    stats: bool,
}

struct Parser<'a> {
    opts: &'a Options,
    d: Diagnostics,
    /// Named `defaults` sections.
    defaults: BTreeMap<String, Common>,
    /// The last `defaults` section, which proxies without `from` use.
    current_defaults: Common,
    proxies: Vec<Proxy>,
    /// `global` `ssl-server-verify none`.
    verify_none_default: bool,
}

/// Section keywords of HAProxy that are not proxies, and why they do not translate.
const OTHER_SECTIONS: &[(&str, &str)] = &[
    ("peers", "stick-table replication between HAProxy processes: stickylb keeps its table across restarts and reloads by itself; replication between balancers is not set up by an import"),
    ("resolvers", "DNS resolution of server names: stickylb balances to addresses"),
    ("userlist", "users for HTTP authentication: stickylb does not parse HTTP"),
    ("mailers", "e-mail alerts: stickylb logs state changes and exports metrics"),
    ("cache", "an HTTP cache: stickylb does not parse HTTP"),
    ("program", "programs started by HAProxy's master process"),
    ("http-errors", "HAProxy's own error pages: stickylb never answers clients itself"),
    ("ring", "HAProxy's log buffers: stickylb logs to stderr (the journal)"),
    ("log-forward", "syslog forwarding: not a balancer function"),
    ("fcgi-app", "FastCGI applications: stickylb does not parse HTTP"),
    ("crt-store", "TLS certificates: stickylb does not terminate TLS"),
    ("traces", "HAProxy's internal traces"),
    ("acme", "ACME certificate management: stickylb does not terminate TLS"),
];

impl Parser<'_> {
    fn parse(&mut self, text: &str) {
        enum Section {
            None,
            Global,
            Proxy(Box<Proxy>),
            Other,
        }
        let mut section = Section::None;
        for (i, raw) in text.lines().enumerate() {
            let no = i + 1;
            let words = match split_words(raw) {
                Ok(w) => w,
                Err(e) => {
                    self.d.error(
                        no,
                        shorten(raw.trim()),
                        format!("cannot be read: {e}; the line is ignored"),
                    );
                    continue;
                }
            };
            if words.is_empty() {
                continue;
            }
            let line = Line { no, words };
            let kw = line.words[0].as_str();
            if kw.starts_with('.') {
                self.d.warn(no, line.text(), "conditional blocks (.if/.else/.endif, .diag, ...) are not evaluated: every line inside is imported as if the condition held");
                continue;
            }
            let new_kind = match kw {
                "global" => Some(None),
                "defaults" => Some(Some(Kind::Defaults)),
                "frontend" => Some(Some(Kind::Frontend)),
                "backend" => Some(Some(Kind::Backend)),
                "listen" => Some(Some(Kind::Listen)),
                _ => None,
            };
            if let Some(kind) = new_kind {
                if let Section::Proxy(p) = std::mem::replace(&mut section, Section::None) {
                    self.finish(*p);
                }
                section = match kind {
                    None => Section::Global,
                    Some(kind) => Section::Proxy(Box::new(self.start_proxy(kind, &line))),
                };
                continue;
            }
            if let Some((_, why)) = OTHER_SECTIONS.iter().find(|(k, _)| *k == kw) {
                if let Section::Proxy(p) = std::mem::replace(&mut section, Section::None) {
                    self.finish(*p);
                }
                self.d.note(
                    no,
                    line.text(),
                    format!("{why}; the section is not imported"),
                );
                section = Section::Other;
                continue;
            }
            match &mut section {
                Section::None => self.d.warn(
                    no,
                    line.text(),
                    "outside any section (HAProxy refuses it): not imported",
                ),
                Section::Global => self.global_line(&line),
                Section::Proxy(p) => self.proxy_line(p, &line),
                Section::Other => {}
            }
        }
        if let Section::Proxy(p) = section {
            self.finish(*p);
        }
    }

    fn start_proxy(&mut self, kind: Kind, line: &Line) -> Proxy {
        let w = &line.words;
        let mut name = String::new();
        let mut from: Option<&str> = None;
        let mut rest = &w[1..];
        if let Some(first) = rest.first() {
            if first != "from" {
                name = first.clone();
                rest = &rest[1..];
            }
        }
        if rest.first().map(String::as_str) == Some("from") {
            from = rest.get(1).map(String::as_str);
            rest = rest.get(2..).unwrap_or(&[]);
        }
        let common = match from {
            Some(f) => match self.defaults.get(f) {
                Some(c) => c.clone(),
                None => {
                    self.d.warn(
                        line.no,
                        line.text(),
                        format!("no defaults section named {f:?} before this line: the section uses none"),
                    );
                    Common::default()
                }
            },
            None if kind == Kind::Defaults => Common::default(),
            None => self.current_defaults.clone(),
        };
        let mut common = common;
        if kind == Kind::Defaults {
            common.defaults_line = line.no;
        }
        if name.is_empty() && kind != Kind::Defaults {
            self.d.error(
                line.no,
                line.text(),
                format!(
                    "a {} section needs a name (HAProxy refuses it): named \"{}\"",
                    kind.name(),
                    kind.name()
                ),
            );
            name = kind.name().to_string();
        }
        let mut p = Proxy {
            kind,
            name,
            line: line.no,
            common,
            own_default_backend: false,
            binds: Vec::new(),
            use_backends: Vec::new(),
            servers: Vec::new(),
            table: None,
            stick: None,
            disabled: false,
            stats: false,
        };
        // `listen NAME ADDR:PORT` (the old syntax): a bind in the header.
        if kind == Kind::Listen && !rest.is_empty() {
            let mut words = vec!["bind".to_string()];
            words.extend(rest.iter().cloned());
            self.bind(&mut p, &Line { no: line.no, words });
        } else if !rest.is_empty() {
            self.d.warn(
                line.no,
                line.text(),
                format!(
                    "unexpected words after the section name: {}",
                    rest.join(" ")
                ),
            );
        }
        p
    }

    fn finish(&mut self, p: Proxy) {
        if p.kind == Kind::Defaults {
            if !p.name.is_empty() {
                self.defaults.insert(p.name.clone(), p.common.clone());
            }
            self.current_defaults = p.common;
        } else {
            self.proxies.push(p);
        }
    }

    fn global_line(&mut self, l: &Line) {
        let kw = l.words[0].as_str();
        let text = l.text();
        if kw == "ssl-server-verify" {
            self.verify_none_default = l.words.get(1).map(String::as_str) == Some("none");
            self.d.note(
                l.no,
                text,
                "used as the default of `verify` for https health checks",
            );
            return;
        }
        let why = if kw.starts_with("lua-") {
            self.d.warn(l.no, text, "Lua code is not run: the actions, services and fetches it defines are not available (their uses are reported on their own lines)");
            return;
        } else if matches!(kw, "log" | "log-send-hostname" | "log-tag" | "log-tag-pid") {
            "logging: stickylb logs to stderr (the journal under systemd; RUST_LOG sets the level)"
        } else if kw == "stats" {
            "HAProxy's runtime API: stickylb's control socket (`--socket`, default /run/stickylb/stickylb.sock) has the equivalent commands (docs/CONTROL.md)"
        } else if matches!(
            kw,
            "chroot"
                | "user"
                | "group"
                | "uid"
                | "gid"
                | "daemon"
                | "master-worker"
                | "pidfile"
                | "nbproc"
                | "nbthread"
                | "cpu-map"
                | "ulimit-n"
                | "node"
                | "description"
                | "setenv"
                | "presetenv"
                | "resetenv"
                | "unsetenv"
                | "localpeer"
                | "hard-stop-after"
                | "expose-experimental-directives"
                | "insecure-fork-wanted"
                | "set-dumpable"
                | "strict-limits"
                | "thread-groups"
                | "numa-cpu-mapping"
                | "grace"
                | "close-spread-time"
                | "mworker-max-reloads"
                | "external-check"
                | "busy-polling"
                | "noepoll"
                | "nopoll"
                | "nosplice"
                | "noreuseport"
                | "profiling.tasks"
                | "profiling.memory"
                | "quiet"
                | "zero-warning"
        ) {
            "process setting: the stickylb agent runs under systemd (dist/stickylb.service sandboxes it)"
        } else if kw.starts_with("max") || kw == "spread-checks" || kw == "fd-hard-limit" {
            "limit or tuning of HAProxy's own connections: stickylb forwards packets and opens no connections except its health checks"
        } else if kw.starts_with("ssl-")
            || matches!(
                kw,
                "ca-base" | "crt-base" | "key-base" | "issuers-chain-path"
            )
        {
            "TLS setting: stickylb does not terminate TLS"
        } else if kw.starts_with("tune.") {
            "HAProxy tuning: no equivalent"
        } else if kw.starts_with("server-state") {
            "HAProxy's saved server states: stickylb saves its own runtime changes (--state-dir)"
        } else if kw == "h1-case-adjust" || kw.starts_with("h1-") || kw.starts_with("h2-") {
            "HTTP setting: stickylb does not parse HTTP"
        } else {
            "process setting with no stickylb equivalent"
        };
        self.d.note(l.no, text, format!("not imported: {why}"));
    }

    fn proxy_line(&mut self, p: &mut Proxy, l: &Line) {
        let text = l.text();
        let mut w: &[String] = &l.words;
        let mut negated = false;
        if matches!(w[0].as_str(), "no" | "default") && w.len() > 1 {
            negated = w[0] == "no";
            w = &w[1..];
        }
        let kw = w[0].as_str();
        let no = l.no;
        let here = p.kind;
        let need = |ok: bool, d: &mut Diagnostics, sections: &str| {
            if !ok {
                d.warn(no, text.clone(), format!("not allowed in a {} section (HAProxy accepts it only in {sections}): not imported", here.name()));
            }
            ok
        };
        match kw {
            "mode" => match w.get(1).map(String::as_str) {
                Some("tcp") => {}
                Some("http") => self.d.note(no, text, "stickylb forwards TCP at layer 4 and does not parse HTTP: every connection of a client reaches its backend, which with `stick on src` is where HAProxy sent each of its requests too"),
                Some(m) => self.d.warn(no, text, format!("mode {m} is not balanced by stickylb (it balances TCP and UDP at layer 4): imported as a TCP service")),
                None => self.d.warn(no, text, "mode without a value: tcp is used"),
            },
            "balance" => self.balance(p, l, &w[1..]),
            "hash-type" | "hash-balance-factor" => self.d.note(no, text, "the hash function of `balance source` and others: stickylb's Maglev is a consistent hash whatever it says"),
            "bind" => {
                if need(here.has_frontend(), &mut self.d, "frontend and listen sections") {
                    self.bind(p, l);
                }
            }
            "server" => {
                if need(here.has_backend(), &mut self.d, "backend and listen sections") {
                    self.server(p, l);
                }
            }
            "default-server" => {
                let params = self.server_params(&w[1..], no);
                p.common.default_server.merge(&params);
            }
            "server-template" => self.d.warn(no, text, "servers from DNS service discovery are not imported: list the servers' addresses with `server` lines (or add them with `stickylb backend add`)"),
            "stick-table" => {
                if need(here != Kind::Defaults, &mut self.d, "frontend, backend and listen sections") {
                    self.stick_table(p, l, &w[1..]);
                }
            }
            "stick" => {
                if need(here.has_backend(), &mut self.d, "backend and listen sections") {
                    self.stick(p, l, &w[1..]);
                }
            }
            "default_backend" => {
                if need(here != Kind::Backend, &mut self.d, "defaults, frontend and listen sections") {
                    match w.get(1) {
                        Some(b) => {
                            p.common.default_backend = Some((b.clone(), no));
                            p.own_default_backend = here != Kind::Defaults;
                        }
                        None => self.d.warn(no, text, "default_backend without a backend name: ignored"),
                    }
                }
            }
            "use_backend" => {
                if need(here.has_frontend(), &mut self.d, "frontend and listen sections") {
                    let conditional = w.len() > 2;
                    match w.get(1) {
                        Some(b) if b.contains('%') => self.d.warn(no, text, "a backend chosen by a log-format expression cannot be imported: only `default_backend` is used"),
                        Some(b) => p.use_backends.push(UseBackend { name: b.clone(), conditional, line: no }),
                        None => self.d.warn(no, text, "use_backend without a backend name: ignored"),
                    }
                }
            }
            "option" => self.option(p, l, negated, &w[1..]),
            "http-check" => self.http_check(p, l, &w[1..]),
            "tcp-check" => self.d.warn(no, text, "tcp-check rules (send/expect) are not imported: stickylb's TCP check only connects"),
            "external-check" => self.d.warn(no, text, "external check commands are not run: stickylb checks with TCP or HTTP"),
            "timeout" | "contimeout" | "clitimeout" | "srvtimeout" => {
                let (what, value) = if kw == "timeout" {
                    (w.get(1).map(String::as_str).unwrap_or(""), w.get(2))
                } else {
                    (kw, w.get(1))
                };
                let t = value.and_then(|v| parse_time(v));
                match what {
                    "check" => match t {
                        Some(t) => p.common.timeout_check = Some(t),
                        None => self.d.warn(no, text, "not a time (e.g. 5s): ignored"),
                    },
                    "connect" | "contimeout" => {
                        match t {
                            Some(t) => p.common.timeout_connect = Some(t),
                            None => self.d.warn(no, text.clone(), "not a time (e.g. 5s): ignored"),
                        }
                        self.d.note(no, text, "stickylb opens no connections to servers except its health checks: used only for the check timeout (with `timeout check`)");
                    }
                    _ => self.d.note(no, text, "connection timeout: stickylb forwards packets and does not terminate connections (the stick table's expire is what ends a client's stickiness)"),
                }
            }
            "disabled" => p.disabled = true,
            "enabled" => {}
            "stats" => {
                p.stats = true;
                self.d.note(no, text, "HAProxy's statistics page: stickylb exports Prometheus metrics (`stickylb run --metrics`) and has `stickylb stats` and `stickylb top`");
            }
            "monitor-uri" | "monitor" => self.d.warn(no, text, "HAProxy answered this monitoring request itself: stickylb forwards it to a backend like any other traffic"),
            "description" | "id" | "guid" => {}
            "log" | "log-format" | "log-format-sd" | "error-log-format" | "log-tag" | "capture" | "declare" | "log-steps" => self.d.note(no, text, "logging: stickylb logs state changes, not connections (`stickylb run --debug` logs the data path's decisions)"),
            "acl" => self.d.note(no, text, "an ACL only matters through the rules using it, which are reported on their own lines"),
            "http-request" | "http-response" | "http-after-response" => {
                if w.iter().any(|x| x == "prometheus-exporter") {
                    self.d.note(no, text, "HAProxy's Prometheus exporter: stickylb exports its own metrics (`stickylb run --metrics`)");
                } else {
                    self.d.warn(no, text, "HTTP rules are not imported: stickylb does not parse HTTP (no header changes, redirects, denies or routing)");
                }
            }
            "tcp-request" | "tcp-response" => self.d.warn(no, text, "TCP rules (accept/reject, tracking, content inspection) are not imported: stickylb forwards every client of the service; filter clients with nftables"),
            "redirect" | "reqadd" | "reqrep" | "reqdel" | "reqdeny" | "reqallow" | "reqpass" | "reqtarpit" | "rspadd" | "rsprep" | "rspdel" | "rspdeny" | "block" => self.d.warn(no, text, "HTTP rules are not imported: stickylb does not parse HTTP"),
            "errorfile" | "errorfiles" | "http-error" | "errorloc" | "errorloc302" | "errorloc303" => self.d.note(no, text, "HAProxy's own error pages: stickylb never answers clients itself"),
            "cookie" | "appsession" | "dynamic-cookie-key" => self.d.warn(no, text, "cookie persistence is not imported: stickylb sticks clients by source address instead (clients behind one NAT address share a backend; one browser moving between addresses does not keep it)"),
            "persist" | "force-persist" | "ignore-persist" | "use-server" => self.d.warn(no, text, "persistence rules by condition are not imported: stickylb pins every client by source address"),
            "maxconn" | "fullconn" | "rate-limit" | "backlog" | "max-keep-alive-queue" | "max-session-srv-conns" => self.d.warn(no, text, "connection limits and queues are not imported: stickylb forwards packets and does not count, queue or refuse connections"),
            "retries" | "grace" => self.d.note(no, text, "stickylb opens no connections to servers: a client whose connection fails retries itself (and a client whose backend is down is re-picked at once)"),
            "compression" | "filter" | "http-reuse" | "unique-id-format" | "unique-id-header" | "http-send-name-header" | "email-alert" | "load-server-state-from-file" | "server-state-file-name" | "bind-process" | "process" | "thread" => self.d.note(no, text, "HAProxy feature with no stickylb equivalent (it does not change which backend a client reaches)"),
            "source" | "usesrc" | "dispatch" | "transparent" => self.d.warn(no, text, "source address and dispatch settings are not imported: with forwarding = \"nat\" the backends see the client's own address"),
            _ => self.d.warn(no, text, format!("`{kw}` is not imported: no stickylb equivalent")),
        }
    }

    fn balance(&mut self, p: &mut Proxy, l: &Line, args: &[String]) {
        let text = l.text();
        let alg = args.first().map(String::as_str).unwrap_or("");
        let base = alg.split('(').next().unwrap_or(alg);
        let b = match base {
            "roundrobin" => Balance::RoundRobin,
            "static-rr" => {
                self.d.note(l.no, text, "scheduler = \"roundrobin\": weighted round-robin over new clients, as static-rr");
                Balance::RoundRobin
            }
            "source" => {
                self.d.note(l.no, text, "scheduler = \"maglev\": consistent hashing of the client address, so a client without an entry (evicted, or on another balancer) lands where the hash of its address says, as with HAProxy's source hashing; Maglev moves the fewest clients when a backend is added or removed");
                Balance::Source
            }
            "random" => {
                self.d.note(l.no, text, "scheduler = \"roundrobin\": new clients by weighted round-robin instead of at random (the same spread over time)");
                Balance::RoundRobin
            }
            "leastconn" | "first" => {
                self.d.warn(l.no, text, "stickylb does not count connections: scheduler = \"roundrobin\" (weighted) is used for new clients");
                Balance::RoundRobin
            }
            "uri" | "url_param" | "hdr" | "rdp-cookie" | "hash" | "url32" | "url32+src" => {
                self.d.warn(l.no, text, "hashing of HTTP or protocol data is not possible at layer 4: scheduler = \"roundrobin\" is used for new clients, and each client stays on its backend");
                Balance::RoundRobin
            }
            _ => {
                self.d.warn(
                    l.no,
                    text,
                    "unknown algorithm: scheduler = \"roundrobin\" is used",
                );
                Balance::RoundRobin
            }
        };
        p.common.balance = Some(b);
    }

    fn option(&mut self, p: &mut Proxy, l: &Line, negated: bool, w: &[String]) {
        let text = l.text();
        let no = l.no;
        let opt = w.first().map(String::as_str).unwrap_or("");
        match opt {
            "httpchk" => {
                if negated {
                    p.common.check = None;
                    return;
                }
                // option httpchk | httpchk URI | httpchk METH URI [VERSION [headers]]
                let (method, path, version) = match &w[1..] {
                    [] => ("OPTIONS".to_string(), "/".to_string(), None),
                    [uri] => ("OPTIONS".to_string(), uri.clone(), None),
                    [m, uri, rest @ ..] => (m.clone(), uri.clone(), Some(rest.join(" "))),
                };
                self.http_request_parts(p, l, &method, &path, version.as_deref(), &[]);
            }
            "ssl-hello-chk" => {
                p.common.check = Some((CheckType::Tcp, no));
                self.d.warn(no, text, "the TLS hello check is not imported: stickylb checks these servers with a TCP connect");
            }
            "tcp-check" => p.common.check = Some((CheckType::Tcp, no)),
            "mysql-check" | "pgsql-check" | "redis-check" | "smtpchk" | "ldap-check" | "spop-check" | "external-check" => {
                p.common.check = Some((CheckType::Tcp, no));
                self.d.warn(no, text, "protocol-specific checks are not imported: stickylb checks these servers with a TCP connect");
            }
            "redispatch" if !negated => self.d.note(no, text, "stickylb always re-picks a client whose backend is down, on its next packet (what redispatch does)"),
            "redispatch" => self.d.warn(no, text, "stickylb always re-picks a client whose backend is down; it cannot keep clients on a down server"),
            "httplog" | "tcplog" | "httpslog" | "dontlognull" | "log-health-checks" | "log-separate-errors" | "logasap" | "dontlog-normal" => self.d.note(no, text, "logging: stickylb logs state changes, not connections"),
            "forwardfor" | "originalto" => self.d.note(no, text, "no header is added (stickylb does not parse HTTP); with forwarding = \"nat\" the backends see the client's own address as the connection's source"),
            "allbackups" => self.d.warn(no, text, "stickylb has no backup servers (they are imported with weight 0)"),
            "persist" => self.d.warn(no, text, "stickylb never keeps a client on a down backend: it is re-picked"),
            "prefer-last-server" => self.d.note(no, text, "every client stays on its backend anyway"),
            "transparent" | "http_proxy" => self.d.warn(no, text, "not imported: no stickylb equivalent"),
            _ => self.d.note(no, text, "connection or HTTP handling of HAProxy's own: stickylb forwards packets and does not terminate connections"),
        }
    }

    /// The request of an HTTP check: method, path, version (with headers, the old
    /// `HTTP/1.1\r\nHost:\ x` form) and `hdr` headers of `http-check send`.
    fn http_request_parts(
        &mut self,
        p: &mut Proxy,
        l: &Line,
        method: &str,
        path: &str,
        version: Option<&str>,
        headers: &[String],
    ) {
        let text = l.text();
        let mut path = path.to_string();
        if !valid_check_path(&path) {
            self.d.warn(
                l.no,
                text.clone(),
                format!("the check path {path:?} is not a path starting with '/': \"/\" is used"),
            );
            path = "/".into();
        }
        if !method.eq_ignore_ascii_case("GET") {
            self.d.note(l.no, text.clone(), format!("stickylb's HTTP check sends GET, not {method}; the status rules are the same (2xx/3xx, or `expect_status`)"));
        }
        if version.is_some_and(|v| v.contains('\r') || v.contains('\n')) || !headers.is_empty() {
            self.d.warn(l.no, text, "request headers of the check are not sent: stickylb sends `Host: ADDRESS:PORT` of the backend (a server choosing its answer by Host may answer differently)");
        }
        p.common.check = Some((
            CheckType::Http {
                method: method.to_string(),
                path,
            },
            l.no,
        ));
    }

    fn http_check(&mut self, p: &mut Proxy, l: &Line, w: &[String]) {
        let text = l.text();
        let no = l.no;
        match w.first().map(String::as_str) {
            Some("send") => {
                let mut method = "GET".to_string();
                let mut uri = "/".to_string();
                let mut version = None;
                let mut headers = Vec::new();
                let mut i = 1;
                while i < w.len() {
                    let value = w.get(i + 1).cloned().unwrap_or_default();
                    match w[i].as_str() {
                        "meth" => method = value,
                        "uri" => uri = value,
                        "ver" => version = Some(value),
                        "hdr" => {
                            headers.push(format!("{value}: {}", w.get(i + 2).cloned().unwrap_or_default()));
                            i += 1;
                        }
                        "uri-lf" | "body" | "body-lf" | "comment" => {
                            self.d.warn(no, text.clone(), format!("`{}` of the check request is not sent", w[i]));
                        }
                        other => self.d.warn(no, text.clone(), format!("unknown `http-check send` argument {other:?}: ignored")),
                    }
                    i += 2;
                }
                self.http_request_parts(p, l, &method, &uri, version.as_deref(), &headers);
            }
            Some("expect") => {
                let mut args: Vec<&str> = w[1..].iter().map(String::as_str).collect();
                // Leading options: min-recv N, comment S, ok-status S, ... (pairs).
                while let Some(a) = args.first() {
                    if matches!(*a, "min-recv" | "comment" | "ok-status" | "error-status" | "tout-status" | "on-success" | "on-error" | "status-code") {
                        self.d.note(no, text.clone(), format!("`{a}` of the check is not imported"));
                        args.drain(..2.min(args.len()));
                    } else {
                        break;
                    }
                }
                match args.as_slice() {
                    ["status", code] if code.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c)) => {
                        if p.common.expect.is_some() {
                            self.d.warn(no, text, "only one expected status per service: the first `http-check expect` is used");
                        } else {
                            p.common.expect = Some((code.parse().unwrap_or(200), no));
                        }
                    }
                    ["status", code] => self.d.warn(no, text, format!("{code:?} is not one status code: the check accepts any 2xx or 3xx (give one code, e.g. 200, to require it)")),
                    _ => self.d.warn(no, text, "only `http-check expect status N` is imported: the check accepts any 2xx or 3xx"),
                }
            }
            Some("disable-on-404") => self.d.warn(no, text, "stickylb does not drain a server answering 404: a 404 is a failed check (a down backend's clients are re-picked)"),
            Some("send-state") => self.d.note(no, text, "the check request carries no state header"),
            Some("connect") => self.d.warn(no, text, "check connection settings are not imported: stickylb checks the backend's own address and port"),
            Some("comment") => {}
            _ => self.d.warn(no, text, "not imported: only `http-check send` and `http-check expect status N` translate"),
        }
    }

    fn bind(&mut self, p: &mut Proxy, l: &Line) {
        let text = l.text();
        let no = l.no;
        let Some(list) = l.words.get(1) else {
            self.d.warn(no, text, "bind without an address: ignored");
            return;
        };
        let mut bind = Bind {
            line: no,
            addrs: Vec::new(),
            v6only: false,
        };
        for a in list.split(',') {
            match parse_bind_addr(a) {
                Ok(b) => bind.addrs.push(b),
                Err(why) => self
                    .d
                    .warn(no, text.clone(), format!("{a:?}: {why}; not imported")),
            }
        }
        const VALUED: &[&str] = &[
            "alpn",
            "backlog",
            "ca-file",
            "ca-ignore-err",
            "ca-sign-file",
            "ca-sign-pass",
            "ciphers",
            "ciphersuites",
            "crl-file",
            "crt",
            "crt-ignore-err",
            "crt-list",
            "curves",
            "ecdhe",
            "gid",
            "group",
            "id",
            "interface",
            "level",
            "maxconn",
            "mode",
            "mss",
            "name",
            "namespace",
            "nice",
            "npn",
            "process",
            "proto",
            "severity-output",
            "sigalgs",
            "client-sigalgs",
            "ssl-max-ver",
            "ssl-min-ver",
            "tcp-ut",
            "thread",
            "tls-ticket-keys",
            "uid",
            "user",
            "verify",
            "shards",
            "label",
            "quic-cc-algo",
            "default-crt",
            "guid-prefix",
            "idle-ping",
            "nbconn",
        ];
        const TLS: &[&str] = &[
            "alpn",
            "ca-file",
            "ca-ignore-err",
            "ca-sign-file",
            "ca-sign-pass",
            "ciphers",
            "ciphersuites",
            "crl-file",
            "crt",
            "crt-ignore-err",
            "crt-list",
            "curves",
            "ecdhe",
            "npn",
            "sigalgs",
            "client-sigalgs",
            "ssl-max-ver",
            "ssl-min-ver",
            "tls-ticket-keys",
            "verify",
            "default-crt",
            "allow-0rtt",
            "force-sslv3",
            "force-tlsv10",
            "force-tlsv11",
            "force-tlsv12",
            "force-tlsv13",
            "no-sslv3",
            "no-tlsv10",
            "no-tlsv11",
            "no-tlsv12",
            "no-tlsv13",
            "no-tls-tickets",
            "no-ca-names",
            "prefer-client-ciphers",
            "strict-sni",
            "generate-certificates",
            "ssl",
            "no-alpn",
        ];
        let mut i = 2;
        let mut tls = Vec::new();
        while i < l.words.len() {
            let kw = l.words[i].as_str();
            let valued = VALUED.contains(&kw);
            if TLS.contains(&kw) {
                tls.push(kw);
            } else {
                match kw {
                    "v6only" => bind.v6only = true,
                    "v4v6" => {}
                    "accept-proxy" | "accept-netscaler-cip" => self.d.warn(no, text.clone(), format!("`{kw}`: HAProxy read a PROXY header from the clients; stickylb forwards it to the backends unchanged, so they must accept it themselves")),
                    "maxconn" | "backlog" => self.d.warn(no, text.clone(), format!("`{kw}`: stickylb does not limit connections")),
                    "interface" => self.d.note(no, text.clone(), "stickylb attaches to the interfaces given with `stickylb run --iface`"),
                    "namespace" => self.d.warn(no, text.clone(), "stickylb serves the network namespace it runs in"),
                    "transparent" | "freebind" | "name" | "id" | "process" | "thread" | "nice" | "tfo" | "defer-accept" | "mss" | "level" | "mode" | "user" | "group" | "uid" | "gid" | "expose-fd" | "severity-output" | "tcp-ut" | "shards" | "label" | "quic-cc-algo" | "quic-force-retry" | "idle-ping" | "nbconn" | "guid-prefix" => {}
                    _ => self.d.warn(no, text.clone(), format!("unknown bind setting `{kw}`: ignored")),
                }
            }
            i += if valued { 2 } else { 1 };
        }
        if !tls.is_empty() {
            if tls.contains(&"ssl") {
                self.d.warn(no, text.clone(), "TLS termination (`ssl`, certificates and TLS settings) is not imported: stickylb forwards the clients' TLS bytes unchanged, so the backends must accept TLS on their port (with their own certificates)");
            } else {
                self.d.note(
                    no,
                    text.clone(),
                    format!("TLS settings without `ssl` ({}): not used", tls.join(", ")),
                );
            }
        }
        if !bind.addrs.is_empty() {
            p.binds.push(bind);
        }
    }

    fn server(&mut self, p: &mut Proxy, l: &Line) {
        let text = l.text();
        let no = l.no;
        let (Some(name), Some(addr)) = (l.words.get(1), l.words.get(2)) else {
            self.d
                .warn(no, text, "server needs a name and an address: not imported");
            return;
        };
        let own = self.server_params(&l.words[3..], no);
        let mut params = p.common.default_server.clone();
        params.merge(&own);
        match parse_server_addr(addr) {
            Ok((ip, port)) => p.servers.push(Server {
                name: name.clone(),
                line: no,
                ip,
                port,
                params,
            }),
            Err(why) => self.d.warn(
                no,
                text,
                format!("{addr:?}: {why}; the server is not imported"),
            ),
        }
    }

    /// Parameters of a `server` or `default-server` line.
    fn server_params(&mut self, w: &[String], no: usize) -> ServerParams {
        const VALUED: &[&str] = &[
            "addr",
            "agent-addr",
            "agent-inter",
            "agent-port",
            "agent-send",
            "alpn",
            "ca-file",
            "check-alpn",
            "check-proto",
            "check-sni",
            "ciphers",
            "ciphersuites",
            "cookie",
            "crl-file",
            "crt",
            "curves",
            "downinter",
            "error-limit",
            "fall",
            "fastinter",
            "hash-key",
            "id",
            "init-addr",
            "inter",
            "log-proto",
            "max-reuse",
            "maxconn",
            "maxqueue",
            "minconn",
            "namespace",
            "npn",
            "observe",
            "on-error",
            "on-marked-down",
            "on-marked-up",
            "pool-conn-name",
            "pool-low-conn",
            "pool-max-conn",
            "pool-purge-delay",
            "port",
            "proto",
            "proxy-v2-options",
            "redir",
            "resolve-net",
            "resolve-opts",
            "resolve-prefer",
            "resolvers",
            "rise",
            "set-proxy-v2-tlv-fmt",
            "shard",
            "sigalgs",
            "client-sigalgs",
            "slowstart",
            "sni",
            "socks4",
            "ssl-max-ver",
            "ssl-min-ver",
            "tcp-ut",
            "track",
            "verify",
            "verifyhost",
            "weight",
            "ws",
            "guid",
            "log-bufsize",
            "idle-ping",
            "source",
        ];
        let mut sp = ServerParams::default();
        let text = format!("server ... {}", w.join(" "));
        let text = shorten(&text);
        let mut tls_notes = Vec::new();
        let mut i = 0;
        while i < w.len() {
            let kw = w[i].as_str();
            let value = w.get(i + 1).map(String::as_str).unwrap_or("");
            let what = if VALUED.contains(&kw) {
                format!("{kw} {value}")
            } else {
                kw.to_string()
            };
            match kw {
                "check" => sp.check = Some(true),
                "no-check" => sp.check = Some(false),
                "check-ssl" => sp.check_ssl = Some(true),
                "no-check-ssl" => sp.check_ssl = Some(false),
                "ssl" => {
                    sp.ssl = Some(true);
                    self.d.warn(no, what, "HAProxy spoke TLS to this server; stickylb forwards the client's bytes unchanged, so the server receives whatever the client sends (TLS only if the client speaks TLS)");
                }
                "no-ssl" => sp.ssl = Some(false),
                "inter" => match parse_time(value) {
                    Some(t) if !t.is_zero() => sp.inter = Some(t),
                    _ => self.d.warn(no, what, "not a time (e.g. 2s): the default 2s is used"),
                },
                "rise" | "fall" => match value.parse::<u32>() {
                    Ok(n) if n >= 1 => {
                        if kw == "rise" {
                            sp.rise = Some(n)
                        } else {
                            sp.fall = Some(n)
                        }
                    }
                    _ => self.d.warn(no, what, "not a count of at least 1: the default is used"),
                },
                "weight" => match value.parse::<u32>() {
                    Ok(n) if n <= 256 => sp.weight = Some(n),
                    _ => self.d.warn(no, what, "not a weight 0..=256: weight 1 is used"),
                },
                "backup" => {
                    sp.backup = Some(true);
                    self.d.warn(no, what, "stickylb has no backup servers: imported with weight = 0 (health-checked and listed, no new clients); if every other backend fails, its clients are dropped until it is given a weight (`stickylb backend weight SERVICE ADDRESS 1`)");
                }
                "no-backup" => sp.backup = Some(false),
                "disabled" => sp.disabled = Some(true),
                "enabled" => sp.disabled = Some(false),
                "verify" => sp.verify_none = Some(value == "none"),
                "fastinter" | "downinter" => self.d.note(no, what, "stickylb checks at one interval (`inter`)"),
                "port" => match value.parse::<u16>() {
                    Ok(p) if p != 0 => sp.check_port = Some((p, no)),
                    _ => self.d.warn(no, what, "not a port: ignored"),
                },
                "addr" => self.d.warn(no, what, "checks go to another address in HAProxy; stickylb checks the backend's own address and port"),
                "maxconn" | "maxqueue" | "minconn" => self.d.warn(no, what, "stickylb does not limit or queue connections"),
                "slowstart" => self.d.warn(no, what, "no slow start: a backend coming up takes its full share of new clients at once"),
                "cookie" => self.d.warn(no, what, "cookie persistence is not imported: clients stick by source address"),
                "track" => self.d.warn(no, what, "stickylb checks every backend itself; it cannot follow another server's state"),
                "agent-check" | "agent-addr" | "agent-inter" | "agent-port" | "agent-send" => self.d.warn(no, what, "agent checks are not imported: stickylb uses its TCP or HTTP check"),
                "observe" | "on-error" | "error-limit" => self.d.warn(no, what, "passive health (from live traffic) is not imported: stickylb checks actively only"),
                "on-marked-down" | "on-marked-up" => self.d.note(no, what, "stickylb re-picks the clients of a backend that goes down on their next packet, and never moves clients back"),
                "send-proxy" | "send-proxy-v2" | "send-proxy-v2-ssl" | "send-proxy-v2-ssl-cn" | "check-send-proxy" => self.d.warn(no, what, "no PROXY header is sent: with forwarding = \"nat\" the server sees the client's own address, so it must stop expecting the header"),
                "non-stick" => self.d.warn(no, what, "stickylb pins the clients of every backend"),
                "redir" | "socks4" | "namespace" | "source" => self.d.warn(no, what, "not imported: no stickylb equivalent"),
                "resolvers" | "resolve-net" | "resolve-opts" | "resolve-prefer" | "init-addr" => self.d.note(no, what, "DNS settings: the address is used as written"),
                "id" | "guid" | "hash-key" | "shard" | "proto" | "ws" | "tfo" | "pool-conn-name" | "pool-low-conn" | "pool-max-conn" | "pool-purge-delay" | "max-reuse" | "tcp-ut" | "log-proto" | "log-bufsize" | "check-proto" | "idle-ping" | "no-agent-check" | "no-send-proxy" | "no-send-proxy-v2" | "no-send-proxy-v2-ssl" | "no-send-proxy-v2-ssl-cn" | "stick" | "check-via-socks4" | "proxy-v2-options" | "set-proxy-v2-tlv-fmt" => self.d.note(no, what, "HAProxy connection setting: stickylb opens no connections to servers"),
                "ca-file" | "crt" | "sni" | "check-sni" | "verifyhost" | "no-verifyhost" | "ciphers" | "ciphersuites" | "alpn" | "check-alpn" | "npn" | "curves" | "sigalgs" | "client-sigalgs" | "crl-file" | "ssl-min-ver" | "ssl-max-ver" | "allow-0rtt" | "no-ssl-reuse" | "ssl-reuse" | "no-tls-tickets" | "tls-tickets" | "force-sslv3" | "force-tlsv10" | "force-tlsv11" | "force-tlsv12" | "force-tlsv13" | "no-sslv3" | "no-tlsv10" | "no-tlsv11" | "no-tlsv12" | "no-tlsv13" => tls_notes.push(kw),
                _ => self.d.warn(no, what, "unknown server setting: ignored"),
            }
            i += if VALUED.contains(&kw) { 2 } else { 1 };
        }
        if !tls_notes.is_empty() {
            self.d.note(no, text, format!("TLS settings towards the server ({}): not imported (an https check verifies with the system's trust store, or not at all with `verify none`)", tls_notes.join(", ")));
        }
        sp
    }

    fn stick_table(&mut self, p: &mut Proxy, l: &Line, w: &[String]) {
        let text = l.text();
        let no = l.no;
        let mut t = Table {
            line: no,
            size: DEFAULT_SIZE,
            expire: None,
            ipv4_only: false,
        };
        let mut key_ok = true;
        let mut i = 0;
        while i < w.len() {
            let value = w.get(i + 1).map(String::as_str).unwrap_or("");
            match w[i].as_str() {
                "type" => {
                    match value {
                        "ip" => t.ipv4_only = true,
                        "ipv6" => {}
                        other => {
                            key_ok = false;
                            self.d.warn(no, text.clone(), format!("a table keyed by {other} (not by client address) does not translate: stickylb sticks clients by address"));
                        }
                    }
                    // `type string len 32`, `type binary len 16`
                    if w.get(i + 2).map(String::as_str) == Some("len") {
                        i += 2;
                    }
                }
                "size" => match parse_size(value) {
                    Some(n) if n > 0 => t.size = n,
                    _ => self.d.warn(no, text.clone(), format!("size {value:?} is not a size (e.g. 200k): {DEFAULT_SIZE} is used")),
                },
                "expire" => match parse_time(value) {
                    Some(d) => t.expire = Some(d),
                    None => self.d.warn(no, text.clone(), format!("expire {value:?} is not a time (e.g. 30m): {DEFAULT_EXPIRE} is used")),
                },
                "nopurge" => {
                    self.d.warn(no, text.clone(), "`nopurge`: a full HAProxy table refuses new entries; stickylb's evicts the least recently seen clients");
                    i += 1;
                    continue;
                }
                "peers" => self.d.note(no, text.clone(), "replication to HAProxy peers: stickylb keeps its table across restarts by itself"),
                "store" => self.d.note(no, text.clone(), "stored counters (rates, gpc, ...) are not imported; the rules using them are reported on their own lines"),
                "srvkey" | "write-to" => self.d.note(no, text.clone(), format!("`{}`: no stickylb equivalent", w[i])),
                "recv-only" => {
                    i += 1;
                    continue;
                }
                other => self.d.warn(no, text.clone(), format!("unknown stick-table setting {other:?}: ignored")),
            }
            i += 2;
        }
        if key_ok {
            if t.size > u64::from(u32::MAX) {
                self.d.warn(
                    no,
                    text,
                    format!(
                        "size {} is above stickylb's limit: {} is used",
                        t.size,
                        u32::MAX
                    ),
                );
                t.size = u64::from(u32::MAX);
            }
            p.table = Some(t);
        }
    }

    fn stick(&mut self, p: &mut Proxy, l: &Line, w: &[String]) {
        let text = l.text();
        let no = l.no;
        let verb = w.first().map(String::as_str).unwrap_or("");
        let pattern = w.get(1).map(String::as_str).unwrap_or("");
        if !matches!(verb, "on" | "match" | "store-request" | "store-response") {
            self.d
                .warn(no, text, "unknown stick rule: use `stick on src`");
            return;
        }
        let mut table = None;
        let mut conditional = false;
        let mut i = 2;
        while i < w.len() {
            match w[i].as_str() {
                "table" => {
                    table = w.get(i + 1).cloned();
                    i += 2;
                }
                "if" | "unless" => {
                    conditional = true;
                    break;
                }
                _ => i += 1,
            }
        }
        if verb == "store-response" {
            self.d.warn(no, text, "stickiness on response data (e.g. a cookie the server sets) does not translate: clients stick by source address");
            return;
        }
        let (base, conv) = pattern.split_once(',').unwrap_or((pattern, ""));
        if base != "src" {
            self.d.warn(no, text, format!("stickiness on {pattern:?} (not the client address) does not translate: stickylb sticks clients by source address"));
            return;
        }
        let mut mask4 = None;
        let mut mask6 = None;
        if !conv.is_empty() {
            match parse_ipmask(conv) {
                Some((m4, m6)) => {
                    mask4 = Some(m4);
                    mask6 = m6;
                }
                None => {
                    self.d.warn(no, text, format!("converter {conv:?} does not translate (only `ipmask(N[,M])` does): clients stick by their full address"));
                    return;
                }
            }
        }
        if p.stick.is_some() {
            self.d.note(
                no,
                text,
                "one stick rule per service: the first `stick ... src` rule is used",
            );
            return;
        }
        if conditional {
            self.d.warn(
                no,
                text.clone(),
                "the rule's condition is not evaluated: every client sticks",
            );
        }
        if verb != "on" {
            self.d.note(no, text, "stick match/store-request on src together act as `stick on src`, which is what stickylb does");
        }
        p.stick = Some(Stick {
            line: no,
            mask4,
            mask6,
            table,
        });
    }
}

/// `ipmask(24)`, `ipmask(24,64)`, `ipmask(255.255.255.0)`.
fn parse_ipmask(conv: &str) -> Option<(u8, Option<u8>)> {
    let inner = conv.strip_prefix("ipmask(")?.strip_suffix(')')?;
    let (a, b) = match inner.split_once(',') {
        Some((a, b)) => (a.trim(), Some(b.trim())),
        None => (inner.trim(), None),
    };
    let m4 = match a.parse::<u8>() {
        Ok(n) if n <= 32 => n,
        Ok(_) => return None,
        Err(_) => {
            let m: Ipv4Addr = a.parse().ok()?;
            let bits = u32::from(m);
            let n = bits.leading_ones();
            if bits.checked_shl(n).unwrap_or(0) != 0 {
                return None;
            }
            n as u8
        }
    };
    let m6 = match b {
        Some(b) => match b.parse::<u8>() {
            Ok(n) if n <= 128 => Some(n),
            _ => return None,
        },
        None => None,
    };
    Some((m4, m6))
}

/// Strips an address-family prefix (`ipv4@`, `tcp6@`, ...); errors on socket kinds that
/// are not IP/TCP.
fn strip_family(a: &str) -> Result<&str, String> {
    if let Some((prefix, rest)) = a.split_once('@') {
        return match prefix {
            "ipv4" | "ipv6" | "tcp" | "tcp4" | "tcp6" => Ok(rest),
            "quic4" | "quic6" | "udp" | "udp4" | "udp6" => Err(
                "QUIC/UDP listeners are terminated by HAProxy (HTTP/3): not a TCP service".into(),
            ),
            _ => Err(format!(
                "a {prefix}@ socket is not an IP address stickylb can balance"
            )),
        };
    }
    if a.starts_with('/') {
        return Err("a UNIX socket is not an IP address stickylb can balance".into());
    }
    Ok(a)
}

/// `HOST:PORT` with HAProxy's rule: in IPv6 without brackets the last colon separates the
/// port.
fn split_host_port(a: &str) -> (&str, Option<&str>) {
    if let Some(rest) = a.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':'));
        }
    }
    match a.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (a, None),
    }
}

fn env_hint(a: &str) -> &'static str {
    if a.contains('$') {
        " (environment variables are not expanded: write the value)"
    } else {
        ""
    }
}

fn parse_bind_addr(a: &str) -> Result<BindAddr, String> {
    let a = strip_family(a)?;
    let (host, port) = split_host_port(a);
    let port = port.ok_or_else(|| format!("a bind address needs a port{}", env_hint(a)))?;
    if port.contains('-') {
        return Err("port ranges do not translate: stickylb services have one port (or port 0 = every port of the VIP)".into());
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port{}", env_hint(a)))?;
    match host {
        "" | "*" | "0.0.0.0" => Ok(BindAddr::Any { v6: false, port }),
        "::" => Ok(BindAddr::Any { v6: true, port }),
        h => match h.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => Ok(BindAddr::Any {
                v6: ip.is_ipv6(),
                port,
            }),
            Ok(ip) => Ok(BindAddr::Ip(ip, port)),
            Err(_) => Err(format!(
                "{h:?} is not an IP address: stickylb needs the VIP's address{}",
                env_hint(h)
            )),
        },
    }
}

fn parse_server_addr(a: &str) -> Result<(IpAddr, Port), String> {
    let a = strip_family(a)?;
    let (host, port) = split_host_port(a);
    let port = match port {
        None | Some("") => Port::Same,
        Some(p) if p.starts_with('+') || p.starts_with('-') => Port::Offset(
            p.parse::<i32>()
                .map_err(|_| format!("{p:?} is not a port offset"))?,
        ),
        Some(p) => Port::Fixed(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{p:?} is not a port{}", env_hint(p)))?,
        ),
    };
    match host.parse::<IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => Ok((ip, port)),
        Ok(_) => Err("an unspecified address (0.0.0.0, ::) is not a server".into()),
        Err(_) => Err(format!(
            "{host:?} is not an IP address: stickylb balances to addresses; resolve the name and write the address{}",
            env_hint(host)
        )),
    }
}

impl Parser<'_> {
    /// Turns the parsed proxies into services.
    fn build(&mut self) -> FileOut {
        let mut services: Vec<ServiceOut> = Vec::new();
        // Line, address and port of each service's backends, to check them across services.
        let mut backend_lines: Vec<Vec<Place>> = Vec::new();
        let mut used_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let proxies = self.proxies.clone();
        let find = |name: &str| {
            proxies
                .iter()
                .find(|p| p.kind.has_backend() && p.name == name)
        };
        for fe in proxies.iter().filter(|p| p.kind.has_frontend()) {
            let fe_text = format!("{} {}", fe.kind.name(), fe.name);
            if fe.disabled {
                self.d
                    .note(fe.line, fe_text, "disabled in HAProxy: not imported");
                continue;
            }
            // Which backend: the first unconditional use_backend, else default_backend
            // (this section's own; a listen with servers is its own backend).
            for u in fe.use_backends.iter().filter(|u| u.conditional) {
                self.d.warn(u.line, format!("use_backend {} if/unless ...", u.name), "routing by condition does not translate (stickylb does not inspect traffic): clients of this service all go to the default backend");
            }
            let target = fe
                .use_backends
                .iter()
                .find(|u| !u.conditional)
                .map(|u| (u.name.clone(), u.line))
                .or_else(|| {
                    fe.common
                        .default_backend
                        .clone()
                        .filter(|_| fe.own_default_backend)
                })
                .or_else(|| {
                    (fe.kind == Kind::Listen && !fe.servers.is_empty())
                        .then(|| (fe.name.clone(), fe.line))
                })
                .or_else(|| fe.common.default_backend.clone())
                .or_else(|| (fe.kind == Kind::Listen).then(|| (fe.name.clone(), fe.line)));
            let Some((be_name, be_ref_line)) = target else {
                if fe.stats {
                    self.d.note(
                        fe.line,
                        fe_text,
                        "serves only HAProxy's statistics page: not a balanced service",
                    );
                } else {
                    self.d.warn(fe.line, fe_text, "no default_backend (and no unconditional use_backend): nothing to balance, not imported");
                }
                continue;
            };
            let be = if be_name == fe.name && fe.kind == Kind::Listen {
                Some(fe)
            } else {
                find(&be_name)
            };
            let Some(be) = be else {
                self.d.error(be_ref_line, format!("backend {be_name}"), format!("no backend or listen section named {be_name:?} (HAProxy refuses this): {fe_text} is not imported"));
                continue;
            };
            if be.servers.is_empty() && fe.stats && be.name == fe.name {
                self.d.note(
                    fe.line,
                    fe_text,
                    "serves only HAProxy's statistics page: not a balanced service",
                );
                continue;
            }
            if be.disabled {
                self.d.warn(
                    be.line,
                    format!("backend {}", be.name),
                    format!("disabled in HAProxy: {fe_text} is not imported"),
                );
                continue;
            }
            if fe.binds.is_empty() {
                self.d.warn(
                    fe.line,
                    fe_text,
                    "no bind address: nothing to balance, not imported",
                );
                continue;
            }
            // Every VIP:port of the frontend.
            let mut vips: Vec<(IpAddr, u16, usize)> = Vec::new();
            for b in &fe.binds {
                for a in &b.addrs {
                    match *a {
                        BindAddr::Ip(ip, port) => vips.push((ip, port, b.line)),
                        BindAddr::Any { v6, port } => {
                            let chosen: Vec<IpAddr> = self
                                .opts
                                .vips
                                .iter()
                                .copied()
                                .filter(|ip| {
                                    if v6 {
                                        ip.is_ipv6() || !b.v6only
                                    } else {
                                        ip.is_ipv4()
                                    }
                                })
                                .collect();
                            if chosen.is_empty() {
                                let family = if v6 { "IPv6 (and IPv4)" } else { "IPv4" };
                                self.d.warn(b.line, format!("bind {}:{port}", if v6 { "::" } else { "*" }), format!("binds every {family} address, but stickylb balances one VIP: give it with `--vip ADDRESS` (repeat for more); not imported"));
                            }
                            for ip in chosen {
                                vips.push((ip, port, b.line));
                            }
                        }
                    }
                }
            }
            let ports_distinct = {
                let mut ports: Vec<u16> = vips.iter().map(|v| v.1).collect();
                ports.sort_unstable();
                ports.dedup();
                ports.len() == vips.len()
            };
            let ips_distinct = {
                let mut ips: Vec<IpAddr> = vips.iter().map(|v| v.0).collect();
                ips.sort_unstable();
                ips.dedup();
                ips.len() == vips.len()
            };
            for &(ip, port, bind_line) in &vips {
                let listen = endpoint(ip, port);
                if let Some(other) = services.iter().find(|s| s.listen == listen) {
                    self.d.warn(bind_line, format!("bind {listen}"), format!("{listen} is already service {:?}: a VIP and port belong to one service; not imported again", other.name));
                    continue;
                }
                let base = sanitise_name(&fe.name);
                let name = if vips.len() == 1 {
                    base
                } else if ports_distinct {
                    format!("{base}-{port}")
                } else if ips_distinct {
                    format!("{base}-{}", sanitise_name(&ip.to_string()))
                } else {
                    format!("{base}-{}-{port}", sanitise_name(&ip.to_string()))
                };
                let (svc, lines) = self.service(fe, be, name, ip, port, bind_line, &proxies);
                used_by
                    .entry(be.name.clone())
                    .or_default()
                    .push(svc.name.clone());
                services.push(svc);
                backend_lines.push(lines);
            }
        }
        // Backends no service uses.
        for be in proxies.iter().filter(|p| p.kind == Kind::Backend) {
            if !used_by.contains_key(&be.name) {
                self.d.note(
                    be.line,
                    format!("backend {}", be.name),
                    "used by no imported frontend (or only by conditional rules): not imported",
                );
            }
        }
        // A backend behind several services: HAProxy shares its stick table between them.
        for (be, svcs) in &used_by {
            if svcs.len() > 1 {
                let be_p = proxies
                    .iter()
                    .find(|p| p.kind.has_backend() && &p.name == be);
                if let Some(be_p) = be_p.filter(|p| p.stick.is_some()) {
                    self.d.warn(be_p.line, format!("{} {be}", be_p.kind.name()), format!(
                        "used by services {}: HAProxy keeps one stick table for them (a client gets the same server through each), stickylb pins a client per service (it may get a different backend through each)",
                        svcs.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
        drop_shared_nat_backends(&mut services, &mut backend_lines, &mut self.d, "server");
        enforce_limits(&mut services, &mut self.d);
        if !services.is_empty() {
            self.d.note(0, "", "HAProxy connected to the servers from its own address; stickylb's forwarding = \"nat\" forwards the clients' packets, so the servers see each client's own address and must route their replies back through the balancer (docs/OPERATIONS.md)");
        }
        FileOut { service: services }
    }

    /// One service: frontend `fe` (bind `ip:port`) balanced over backend `be`.
    #[allow(clippy::too_many_arguments)]
    fn service(
        &mut self,
        fe: &Proxy,
        be: &Proxy,
        name: String,
        ip: IpAddr,
        port: u16,
        bind_line: usize,
        proxies: &[Proxy],
    ) -> (ServiceOut, Vec<Place>) {
        let f = self.opts.features;
        let origin = if std::ptr::eq(fe, be) {
            format!(
                "listen {:?} (line {}), bind at line {bind_line}",
                fe.name, fe.line
            )
        } else {
            format!(
                "frontend {:?} (line {}), bind at line {bind_line}, backend {:?} (line {})",
                fe.name, fe.line, be.name, be.line
            )
        };
        let mut origin = origin;
        let mut defaults: Vec<usize> = [fe.common.defaults_line, be.common.defaults_line]
            .into_iter()
            .filter(|l| *l > 0)
            .collect();
        defaults.dedup();
        if !defaults.is_empty() {
            let lines: Vec<String> = defaults.iter().map(|l| l.to_string()).collect();
            origin.push_str(&format!(", defaults at line {}", lines.join(" and ")));
        }
        let be_text = format!("{} {}", be.kind.name(), be.name);
        let scheduler = match be.common.balance {
            Some(Balance::Source) => "maglev",
            _ => "roundrobin",
        };
        // Stickiness.
        let mut pending = Vec::new();
        let mut stick_on = None;
        let table = match &be.stick {
            Some(s) => match &s.table {
                Some(t) => match proxies.iter().find(|p| &p.name == t && p.table.is_some()) {
                    Some(p) => p.table.clone(),
                    None => {
                        self.d.warn(s.line, format!("stick ... table {t}"), format!("no section named {t:?} holds a stick-table: stickylb's default table (size {DEFAULT_SIZE}, expire {DEFAULT_EXPIRE}) is used"));
                        None
                    }
                },
                None => {
                    if be.table.is_none() {
                        self.d.warn(s.line, "stick on src", format!("{be_text} has no stick-table (HAProxy refuses this): stickylb's default table (size {DEFAULT_SIZE}, expire {DEFAULT_EXPIRE}) is used"));
                    }
                    be.table.clone()
                }
            },
            None => {
                if be.common.balance == Some(Balance::Source) {
                    self.d.note(be.line, be_text.clone(), format!("no stick table in HAProxy (clients kept their server by source hashing): stickylb adds one (size {DEFAULT_SIZE}, expire {DEFAULT_EXPIRE}), so a client also keeps its backend when the set of backends changes"));
                } else {
                    self.d.warn(be.line, be_text.clone(), format!("no `stick on src`: HAProxy balanced every connection on its own; stickylb pins every client to one backend (size {DEFAULT_SIZE}, expire {DEFAULT_EXPIRE})"));
                }
                None
            }
        };
        if let Some(s) = &be.stick {
            let mask = if ip.is_ipv4() { s.mask4 } else { s.mask6 };
            let full = if ip.is_ipv4() { 32 } else { 128 };
            if ip.is_ipv6() && s.mask4.is_some() && s.mask6.is_none() {
                self.d.warn(s.line, "ipmask", format!("service {name:?} is IPv6 and the rule gives no IPv6 mask (`ipmask(N,M)`): HAProxy did not stick IPv6 clients, stickylb sticks them by full address"));
            }
            if let Some(m) = mask.filter(|m| *m < full) {
                let value = format!("src/{m}");
                if f.stick_prefix {
                    stick_on = Some(value);
                } else {
                    self.d.warn(s.line, format!("ipmask({m})"), format!("this build of stickylb cannot stick by network prefix yet: `stick_on = \"{value}\"` is written commented out in service {name:?}; until it is enabled, clients stick by their full address"));
                    pending.push(format!("stick_on = \"{value}\"   # TODO: not supported by this build yet (from line {})", s.line));
                }
            }
        }
        if let Some(t) = &table {
            if t.ipv4_only && ip.is_ipv6() {
                self.d.note(t.line, "stick-table type ip", format!("service {name:?} is IPv6: HAProxy's `type ip` table does not hold IPv6 clients, stickylb sticks them"));
            }
        }
        let stick_table = StickTableOut {
            size: table.as_ref().map_or(DEFAULT_SIZE, |t| t.size),
            expire: match &table {
                None => DEFAULT_EXPIRE.into(),
                Some(Table { expire: None, .. }) => "never".into(),
                Some(Table {
                    expire: Some(d),
                    line,
                    ..
                }) => {
                    let ms = Duration::from_millis(d.as_millis().max(1) as u64);
                    if ms != *d {
                        self.d
                            .note(*line, "expire", "below a millisecond: rounded to 1ms");
                    }
                    crate::duration::format(ms)
                }
            },
        };

        // Backends.
        let mut backends = Vec::new();
        let mut lines = Vec::new();
        let mut emitted: Vec<&Server> = Vec::new();
        for s in &be.servers {
            let what = format!("server {}", s.name);
            if s.ip.is_ipv4() != ip.is_ipv4() {
                self.d.warn(s.line, what, format!("{} is not of the VIP's address family ({ip}): stickylb forwards packets, so a service's backends share its family; not imported into service {name:?}", s.ip));
                continue;
            }
            let bport = match s.port {
                Port::Same => None,
                Port::Fixed(p) => Some(p),
                Port::Offset(n) => match u16::try_from(i32::from(port).saturating_add(n)) {
                    Ok(p) if p != 0 => Some(p),
                    _ => {
                        self.d.warn(
                            s.line,
                            what,
                            format!("port {port}{n:+} is not a port: not imported"),
                        );
                        continue;
                    }
                },
            };
            let sp = &s.params;
            if let Some((cp, line)) = sp.check_port {
                if cp != bport.unwrap_or(port) {
                    self.d.warn(line, format!("port {cp}"), format!("HAProxy checks server {} on port {cp}; stickylb checks the backend's own port ({} in service {name:?})", s.name, bport.unwrap_or(port)));
                }
            }
            let weight = if sp.backup == Some(true) {
                0
            } else {
                sp.weight.unwrap_or(1)
            };
            let state = if sp.disabled == Some(true) {
                "maint"
            } else {
                "ready"
            };
            backends.push(BackendOut {
                address: backend_address(s.ip, bport),
                weight,
                state,
            });
            lines.push((s.line, s.ip, bport));
            emitted.push(s);
        }
        if be.servers.is_empty() {
            self.d.warn(be.line, be_text.clone(), format!("no servers: service {name:?} is imported without backends (it drops its traffic until backends are added)"));
        }

        let health = self.health(be, &emitted, &name);
        (
            ServiceOut {
                name,
                listen: endpoint(ip, port),
                protocol: "tcp",
                scheduler,
                forwarding: "nat",
                stick_on,
                encap: None,
                stick_table,
                health,
                backend: backends,
                origin,
                pending,
            },
            lines,
        )
    }

    /// One health setting for a service from its servers' `check` settings.
    fn health(&mut self, be: &Proxy, servers: &[&Server], svc: &str) -> HealthOut {
        let f = self.opts.features;
        let checked: Vec<&&Server> = servers
            .iter()
            .filter(|s| s.params.check == Some(true))
            .collect();
        if let Some((_, line)) = be.common.expect {
            if !matches!(be.common.check, Some((CheckType::Http { .. }, _))) {
                self.d.note(
                    line,
                    "http-check expect",
                    "ignored without `option httpchk`, as HAProxy does",
                );
            }
        }
        let Some(first) = checked.first() else {
            return HealthOut::none();
        };
        for s in servers.iter().filter(|s| s.params.check != Some(true)) {
            self.d.warn(s.line, format!("server {}", s.name), format!("HAProxy does not check this server (it always counts as up); stickylb checks every backend of service {svc:?} alike, like server {}", first.name));
        }
        let fp = &first.params;
        let inter = fp.inter.unwrap_or(DEFAULT_INTER);
        let rise = fp.rise.unwrap_or(DEFAULT_RISE);
        let fall = fp.fall.unwrap_or(DEFAULT_FALL);
        let tls = |s: &Server| s.params.check_ssl == Some(true) || s.params.ssl == Some(true);
        for s in &checked[1..] {
            let sp = &s.params;
            if sp.inter.unwrap_or(DEFAULT_INTER) != inter
                || sp.rise.unwrap_or(DEFAULT_RISE) != rise
                || sp.fall.unwrap_or(DEFAULT_FALL) != fall
                || tls(s) != tls(first)
            {
                self.d.warn(s.line, format!("server {}", s.name), format!("its check settings differ from server {}'s: stickylb checks every backend of a service alike, with server {}'s settings", first.name, first.name));
            }
        }
        let mut interval = inter;
        if interval < MIN_INTER {
            self.d.warn(
                first.line,
                format!("inter {}", crate::duration::format(inter)),
                "stickylb checks at most every 100ms: interval = \"100ms\"",
            );
            interval = MIN_INTER;
        }
        // HAProxy: without `timeout check` the whole check may take `inter`; with it,
        // min(timeout connect, inter) to connect plus `timeout check` to answer.
        let timeout = match be.common.timeout_check {
            Some(tc) => (be
                .common
                .timeout_connect
                .unwrap_or(inter)
                .min(inter)
                .saturating_add(tc))
            .min(interval),
            None => interval,
        }
        .max(Duration::from_millis(1));
        let mut h = HealthOut {
            kind: "tcp",
            interval: Some(crate::duration::format(interval)),
            timeout: Some(crate::duration::format(Duration::from_millis(
                timeout.as_millis() as u64,
            ))),
            rise: Some(rise),
            fall: Some(fall),
            ..HealthOut::default()
        };
        let verify = fp
            .verify_none
            .map_or(!self.verify_none_default, |none| !none);
        match &be.common.check {
            Some((CheckType::Http { path, .. }, line)) => {
                if tls(first) && !f.https_health {
                    self.d.warn(*line, "check-ssl", format!("this build of stickylb has no https health check yet: service {svc:?} is checked with a TCP connect (kind = \"tcp\") until it has"));
                } else {
                    h.kind = if tls(first) { "https" } else { "http" };
                    h.path = Some(path.clone());
                    h.expect_status = be.common.expect.map(|(c, _)| c);
                    if tls(first) {
                        h.verify = Some(verify);
                    }
                }
            }
            _ if tls(first) => {
                self.d.warn(first.line, format!("server {} check-ssl", first.name), "the TLS handshake of the check is not imported: stickylb checks with a TCP connect (an https check also needs `option httpchk`)");
            }
            _ => {}
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_as_haproxy_does() {
        assert_eq!(
            split_words("  server s1 10.0.0.1:80 check # comment").unwrap(),
            ["server", "s1", "10.0.0.1:80", "check"]
        );
        assert_eq!(
            split_words(r#"option httpchk GET /x HTTP/1.1\r\nHost:\ www"#).unwrap(),
            ["option", "httpchk", "GET", "/x", "HTTP/1.1\r\nHost: www"]
        );
        assert_eq!(
            split_words(r#"acl a hdr(x) "a b" 'c#d' e\#f"#).unwrap(),
            ["acl", "a", "hdr(x)", "a b", "c#d", "e#f"]
        );
        assert!(split_words("bind \"x").is_err());
    }

    #[test]
    fn times_and_sizes_use_haproxy_units() {
        assert_eq!(parse_time("5000"), Some(Duration::from_millis(5000)));
        assert_eq!(parse_time("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_time("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_time("100us"), Some(Duration::from_micros(100)));
        assert_eq!(parse_time("2x"), None);
        assert_eq!(parse_size("200k"), Some(204_800));
        assert_eq!(parse_size("1m"), Some(1_048_576));
        assert_eq!(parse_size("1000"), Some(1000));
    }

    #[test]
    fn addresses_follow_haproxy_rules() {
        assert_eq!(
            parse_bind_addr("10.0.0.1:80"),
            Ok(BindAddr::Ip("10.0.0.1".parse().unwrap(), 80))
        );
        assert_eq!(
            parse_bind_addr("*:80"),
            Ok(BindAddr::Any {
                v6: false,
                port: 80
            })
        );
        assert_eq!(
            parse_bind_addr(":80"),
            Ok(BindAddr::Any {
                v6: false,
                port: 80
            })
        );
        assert_eq!(
            parse_bind_addr(":::443"),
            Ok(BindAddr::Any {
                v6: true,
                port: 443
            })
        );
        assert_eq!(
            parse_bind_addr("[2001:db8::1]:80"),
            Ok(BindAddr::Ip("2001:db8::1".parse().unwrap(), 80))
        );
        assert_eq!(
            parse_bind_addr("ipv6@2001:db8::1:80"),
            Ok(BindAddr::Ip("2001:db8::1".parse().unwrap(), 80))
        );
        assert!(parse_bind_addr("10.0.0.1:8000-8010").is_err());
        assert!(parse_bind_addr("/run/x.sock").is_err());
        assert!(parse_bind_addr("${VIP}:80")
            .unwrap_err()
            .contains("environment"));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse_server_addr("10.0.0.2:8080"),
            Ok((ip("10.0.0.2"), Port::Fixed(8080)))
        );
        assert_eq!(
            parse_server_addr("10.0.0.2"),
            Ok((ip("10.0.0.2"), Port::Same))
        );
        assert_eq!(
            parse_server_addr("10.0.0.2:+1"),
            Ok((ip("10.0.0.2"), Port::Offset(1)))
        );
        assert_eq!(
            parse_server_addr("[2001:db8::2]"),
            Ok((ip("2001:db8::2"), Port::Same))
        );
        assert_eq!(
            parse_server_addr("2001:db8::2:80"),
            Ok((ip("2001:db8::2"), Port::Fixed(80)))
        );
        assert!(parse_server_addr("web1.example.com:80").is_err());
    }

    #[test]
    fn ipmask_forms() {
        assert_eq!(parse_ipmask("ipmask(24)"), Some((24, None)));
        assert_eq!(parse_ipmask("ipmask(24,64)"), Some((24, Some(64))));
        assert_eq!(parse_ipmask("ipmask(255.255.255.0)"), Some((24, None)));
        assert_eq!(parse_ipmask("ipmask(255.0.255.0)"), None);
        assert_eq!(parse_ipmask("lower"), None);
    }
}
