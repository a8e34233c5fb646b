//! The commands that work on files only, without an agent or the kernel:
//! `stickylb import haproxy|ipvs|keepalived FILE` (the translation itself is the pure
//! [`crate::import`]) and `stickylb check FILE` (like `haproxy -c -f` and `nginx -t`).
//!
//! Both return whether they succeeded; `main` maps that to the CLI's exit codes (0, or 1
//! for a refused file).
//!
//! `import` prints the configuration on stdout and its diagnostics on stderr, then checks
//! that the printed configuration loads in this build's parser (so what it prints can be
//! used as is). It fails when the input cannot be read, when a diagnostic is an error, or
//! when the result does not load. With `--check` it prints only the diagnostics and fails
//! also on warnings: it succeeds only when the translation serves clients as the
//! original does.

use std::{
    io::Read as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde_json::json;

use lb_model::{
    config::{self, Config},
    import::{self, Features, Import, Level, Options},
    spec::{AdminState, Forwarding, HealthKind, InsertOn, Scheduler, StickOn},
};

/// `stickylb import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub from: ImportFrom,
}

/// What to import from.
#[derive(clap::Subcommand, Debug)]
pub enum ImportFrom {
    /// An HAProxy configuration (haproxy.cfg): frontends, backends and listen sections
    /// become services; what does not translate is listed on stderr with its line.
    Haproxy {
        /// The HAProxy configuration file ("-" reads stdin).
        file: PathBuf,
        /// VIP for binds on every address (`bind *:80`, `bind :::443`); repeat for an IPv4
        /// and an IPv6 VIP.
        #[arg(long = "vip", value_name = "ADDRESS")]
        vips: Vec<IpAddr>,
        #[command(flatten)]
        common: ImportCommon,
    },
    /// `ipvsadm-save -n` output (or an ipvsadm rules file): one service per `-A` rule.
    Ipvs {
        /// The rules file ("-" reads stdin, e.g. `ipvsadm-save -n | stickylb import ipvs -`).
        file: PathBuf,
        #[command(flatten)]
        common: ImportCommon,
    },
    /// The `virtual_server` blocks of a keepalived configuration (keepalived.conf).
    Keepalived {
        /// The keepalived configuration file ("-" reads stdin).
        file: PathBuf,
        #[command(flatten)]
        common: ImportCommon,
    },
}

/// Options of every importer.
#[derive(clap::Args, Debug)]
pub struct ImportCommon {
    /// Only report what does not translate (no configuration on stdout); exit 0 only when
    /// nothing changes how clients are served (notes only).
    #[arg(long)]
    pub check: bool,
}

/// `stickylb check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The configuration file to validate.
    #[arg(default_value = "/etc/stickylb/stickylb.toml")]
    pub file: PathBuf,
    /// Print nothing when the file is valid (errors still go to stderr).
    #[arg(short, long)]
    pub quiet: bool,
}

fn read_input(file: &Path) -> Result<(String, String), String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("error: reading stdin: {e}"))?;
        return Ok((text, "<stdin>".into()));
    }
    let bytes =
        std::fs::read(file).map_err(|e| format!("error: {}: cannot read: {e}", file.display()))?;
    Ok((
        String::from_utf8_lossy(&bytes).into_owned(),
        file.display().to_string(),
    ))
}

/// `stickylb import ...`: true on success.
pub fn import(args: &ImportArgs) -> bool {
    let (file, check, vips) = match &args.from {
        ImportFrom::Haproxy { file, vips, common } => (file, common.check, vips.clone()),
        ImportFrom::Ipvs { file, common } | ImportFrom::Keepalived { file, common } => {
            (file, common.check, Vec::new())
        }
    };
    let (text, origin) = match read_input(file) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return false;
        }
    };
    let opts = Options {
        features: Features::of_this_build(),
        vips,
    };
    let result = match &args.from {
        ImportFrom::Haproxy { .. } => import::haproxy::import(&text, &opts),
        ImportFrom::Ipvs { .. } => import::ipvs::import(&text, &opts),
        ImportFrom::Keepalived { .. } => import::ipvs::import_keepalived(&text, &opts),
    };
    report(&result, &origin, check)
}

/// Prints the diagnostics (and, without `check`, the configuration); true on success.
pub fn report(result: &Import, origin: &str, check: bool) -> bool {
    for d in &result.diagnostics {
        eprintln!("{}", d.render(origin));
    }
    let toml = result.to_toml(origin);
    let loads = config::parse(&toml, "the imported configuration");
    if let Err(e) = &loads {
        eprintln!("error: the imported configuration does not load in this build of stickylb: {e}");
    }
    let (errors, warnings, notes) = (
        result.count(Level::Error),
        result.count(Level::Warning),
        result.count(Level::Note),
    );
    eprintln!(
        "stickylb import: {} service(s); {errors} error(s), {warnings} warning(s), {notes} note(s){}",
        result.file.service.len(),
        if check {
            if errors + warnings == 0 && loads.is_ok() {
                ": the translation serves clients as the original does"
            } else {
                ": the translation differs from the original (see above)"
            }
        } else {
            ""
        }
    );
    if !check {
        print!("{toml}");
    }
    let ok = errors == 0 && loads.is_ok();
    if check {
        ok && warnings == 0
    } else {
        ok
    }
}

/// `stickylb check FILE`: true when the file is valid.
pub fn check(args: &CheckArgs, json: bool) -> bool {
    let cfg = match config::load(&args.file) {
        Ok(c) => c,
        Err(e) => {
            if json {
                println!("{}", json!({ "ok": false, "error": e.to_string() }));
            } else {
                eprintln!("{e}");
                eprintln!("{}: the configuration is refused", args.file.display());
            }
            return false;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary_json(&cfg)).unwrap_or_default()
        );
    } else if !args.quiet {
        print!("{}", summary_text(&args.file, &cfg));
    }
    true
}

/// The outer header of an L3 DSR service, for the summary.
fn encap_text(sp: &lb_model::spec::ServiceSpec) -> String {
    if !sp.forwarding.is_encap() {
        return String::new();
    }
    let source = match &sp.encap.source {
        lb_model::spec::OuterSource::Fib => "the balancer's address (fib)".to_string(),
        lb_model::spec::OuterSource::ClientHash { v4, v6 } => format!(
            "a client hash in {}",
            [v4.map(|p| p.to_string()), v6.map(|p| p.to_string())]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" / ")
        ),
    };
    if sp.forwarding == Forwarding::Gue {
        format!(" (GUE port {}, outer source {source})", sp.encap.gue_port)
    } else {
        format!(" (outer source {source})")
    }
}

fn expire(e: Option<std::time::Duration>) -> String {
    e.map_or_else(|| "never".into(), lb_model::duration::format)
}

fn health_text(h: &lb_model::spec::HealthConfig) -> String {
    let kind = match &h.kind {
        HealthKind::None => return "none (backends always count as healthy)".into(),
        HealthKind::Tcp => "tcp connect".to_string(),
        HealthKind::Http(c) | HealthKind::Https(c, _) => {
            let kind = h.kind.kind();
            match c.expect_status {
                Some(s) => format!("{kind} GET {} (expect {s})", c.path),
                None => format!("{kind} GET {} (expect 2xx/3xx)", c.path),
            }
        }
    };
    format!(
        "{kind} every {}, timeout {}, rise {}, fall {}",
        lb_model::duration::format(h.interval),
        lb_model::duration::format(h.timeout),
        h.rise,
        h.fall
    )
}

/// Warnings about a valid configuration that probably does not do what is meant.
fn advice(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if cfg.services.is_empty() {
        out.push("no services: nothing is balanced".to_string());
    }
    if cfg.cluster.is_some() {
        for s in &cfg.services {
            if s.spec.scheduler == lb_model::spec::Scheduler::RoundRobin {
                out.push(format!(
                    "service {:?}: round robin in a cluster: nodes may pin a new client differently until replication decides (counted as conflicts); use scheduler = \"maglev\" (docs/CLUSTER.md)",
                    s.spec.name
                ));
            }
        }
    }
    for s in &cfg.services {
        let name = &s.spec.name;
        if s.backends.is_empty() {
            out.push(format!(
                "service {name:?} has no backends: its traffic is dropped"
            ));
        } else if !s
            .backends
            .iter()
            .any(|b| b.weight > 0 && b.admin == AdminState::Ready)
        {
            out.push(format!("service {name:?} has no backend that takes new clients (every one has weight 0 or is drained or in maintenance): new clients are dropped"));
        }
    }
    out
}

/// What `stickylb check` prints: what the agent would run.
pub fn summary_text(file: &Path, cfg: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let backends: usize = cfg.services.iter().map(|s| s.backends.len()).sum();
    let table: u64 = cfg
        .services
        .iter()
        .map(|s| u64::from(s.stick_table_size))
        .sum();
    let _ = writeln!(
        out,
        "{}: the configuration is valid: {} service(s), {backends} backend(s), stick table of {table} entries (the sum of the services' sizes)",
        file.display(),
        cfg.services.len()
    );
    for s in &cfg.services {
        let sp = &s.spec;
        let _ = writeln!(
            out,
            "service {:?}: {} {}, scheduler {}{}, forwarding {}{}",
            sp.name,
            sp.vip,
            sp.protocol.name(),
            sp.scheduler.name(),
            match (sp.scheduler, sp.maglev_size) {
                (Scheduler::Maglev, Some(n)) => format!(" ({n} slots)"),
                (Scheduler::Maglev, None) => format!(" ({} slots)", lb_common::DEFAULT_MAGLEV_SIZE),
                _ => String::new(),
            },
            sp.forwarding.name(),
            encap_text(sp)
        );
        let _ = writeln!(
            out,
            "  stick on: {}",
            match sp.stick_on {
                StickOn::Src => "src (each client address has its entry)".to_string(),
                StickOn::Network(n) => format!(
                    "src/{n} (the clients of each /{n} network share one entry and one backend)"
                ),
            }
        );
        let _ = writeln!(
            out,
            "  stick table: {} entries, expire {} after the client was last seen, entries added on {}, at most {} new entries per second per CPU",
            s.stick_table_size,
            expire(sp.expire),
            match sp.insert_on {
                InsertOn::Any => "any packet",
                InsertOn::Syn => "TCP SYN only",
            },
            if sp.insert_cap == 0 {
                "unlimited".to_string()
            } else {
                sp.insert_cap.to_string()
            }
        );
        let _ = writeln!(out, "  health: {}", health_text(&s.health));
        for b in &s.backends {
            let addr = if b.addr.port() == 0 {
                format!("{} (the service port)", b.addr.ip())
            } else {
                b.addr.to_string()
            };
            let _ = writeln!(
                out,
                "  backend {addr}: weight {}, {}",
                b.weight,
                b.admin.name()
            );
        }
    }
    if let Some(a) = &cfg.announce {
        let vips = lb_model::announce::vips(a, &cfg.services);
        let _ = writeln!(
            out,
            "announce: {} VIP(s) on {} ({}), drain_timeout {}{}",
            vips.len(),
            a.interface,
            vips.iter()
                .map(|(v, _)| v.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            lb_model::duration::format(a.drain_timeout),
            a.daemon_socket
                .as_ref()
                .map_or_else(String::new, |p| format!(", daemon socket {}", p.display()))
        );
    }
    if let Some(c) = &cfg.cluster {
        let _ = writeln!(
            out,
            "cluster: node {} listening on {} for {} peer(s){}; credentials ca {}, cert {}, key {} (read when the agent starts)",
            c.node,
            c.listen,
            c.peers.len(),
            if c.peers.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    c.peers
                        .iter()
                        .map(|p| format!("{} at {}", p.name, p.address))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            c.ca.display(),
            c.cert.display(),
            c.key.display()
        );
    }
    for a in advice(cfg) {
        let _ = writeln!(out, "warning: {a}");
    }
    out
}

/// `stickylb check --json`.
pub fn summary_json(cfg: &Config) -> serde_json::Value {
    let services: Vec<_> = cfg
        .services
        .iter()
        .map(|s| {
            let sp = &s.spec;
            let (kind, path, expect) = match &s.health.kind {
                HealthKind::None => ("none", None, None),
                HealthKind::Tcp => ("tcp", None, None),
                HealthKind::Http(c) | HealthKind::Https(c, _) => {
                    (s.health.kind.kind().name(), Some(c.path.clone()), c.expect_status)
                }
            };
            json!({
                "name": sp.name,
                "listen": sp.vip.to_string(),
                "protocol": sp.protocol.name(),
                "scheduler": sp.scheduler.name(),
                "forwarding": sp.forwarding.name(),
                "stick_on": sp.stick_on.to_string(),
                "encap": sp.forwarding.is_encap().then(|| encap_text(sp).trim().trim_matches(['(', ')']).to_string()),
                "stick_table": {
                    "size": s.stick_table_size,
                    "expire": expire(sp.expire),
                    "insert_on": match sp.insert_on { InsertOn::Any => "any", InsertOn::Syn => "syn" },
                    "insert_cap": sp.insert_cap,
                },
                "health": {
                    "kind": kind,
                    "path": path,
                    "expect_status": expect,
                    "interval": lb_model::duration::format(s.health.interval),
                    "timeout": lb_model::duration::format(s.health.timeout),
                    "rise": s.health.rise,
                    "fall": s.health.fall,
                },
                "backends": s.backends.iter().map(|b| json!({
                    "address": b.addr.to_string(),
                    "weight": b.weight,
                    "state": b.admin.name(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "ok": true,
        "services": services,
        "stick_table_size": cfg.services.iter().map(|s| u64::from(s.stick_table_size)).sum::<u64>(),
        "cluster": cfg.cluster,
        "announce": cfg.announce.as_ref().map(|a| json!({
            "interface": a.interface,
            "vips": lb_model::announce::vips(a, &cfg.services)
                .iter()
                .map(|(v, s)| json!({ "vip": v.to_string(), "services": s.iter().map(|x| x.spec.name.clone()).collect::<Vec<_>>() }))
                .collect::<Vec<_>>(),
            "drain_timeout": lb_model::duration::format(a.drain_timeout),
            "daemon_socket": a.daemon_socket.as_ref().map(|p| p.display().to_string()),
        })),
        "warnings": advice(cfg),
    })
}
