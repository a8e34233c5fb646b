//! `stickylb`: the agent (`run`) and the control commands that talk to it.
//!
//! A control command sends the operator's words as they were typed (a JSON object, see
//! `lb_agent::control::client`): the agent reads and refuses them, as it would a request
//! from any other client. Exit codes: [`lb_agent::exit`].

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use lb_agent::{
    agent::{self, AgentOptions, XdpMode},
    control::{self, ClientError},
    exit,
    metrics::DEFAULT_METRICS,
    pins::{self, PinLayout, DEFAULT_BPFFS},
};
use lb_model::{control::DEFAULT_SOCKET, plan::MAX_WEIGHT};
use serde_json::{json, Map, Value};

#[derive(Parser)]
#[command(
    name = "stickylb",
    version,
    about = "Sticky XDP layer-4 load balancer: every client (by source IP) stays on one backend",
    long_about = "stickylb balances TCP and UDP services in the kernel with XDP and pins every client, by source IP, to one backend (like HAProxy's `stick on src`).\n\n`stickylb run` is the agent; the other subcommands talk to a running agent over its control socket.\n\n`stickylb check` validates a configuration file and `stickylb import` translates an HAProxy, ipvsadm or keepalived one; neither needs an agent.\n\nExit codes: 0 ok, 1 refused by the agent (or a refused file), 2 usage, 3 agent not reachable."
)]
struct Cli {
    /// Control socket of the agent.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET, env = "STICKYLB_SOCKET")]
    socket: PathBuf,
    /// Print the agent's answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load and attach the data path, apply the config, health-check backends,
    /// serve the control socket and metrics.
    Run(RunArgs),
    /// Remove the program from every interface and delete the instance's pinned state.
    Detach(PinArgs),
    /// Show the agent's state: interfaces, pins, services, stick-table fill.
    Status,
    /// Re-read the config file and apply the difference (as SIGHUP does).
    Reload {
        /// Accept a file without services although services are running: remove them all.
        /// Without it such a reload is refused (a truncated file is a mistake more often
        /// than an intent).
        #[arg(long)]
        allow_empty: bool,
    },
    /// The cluster (`[cluster]`): whether this node is synced, and every peer's state,
    /// last message, entries sent and received, lag, resync progress, refusals.
    Peers,
    /// Counters per service and backend.
    Stats {
        /// Repeat every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// List, add or remove services.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// List, add, remove backends; change weight or state.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Show, look up, clear or pin stick-table entries.
    #[command(subcommand)]
    Table(TableCmd),
    /// Drain this node (withdraw every announced VIP, keep forwarding what still arrives)
    /// or undrain it (`[announce]`).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Live view of services and backends: health, state, rates, pinned clients, stick-table fill.
    Top(lb_agent::top::TopArgs),
    /// On a backend of an `ipip` / `gue` service: attach (or with --detach remove) the
    /// program that strips the tunnel header and passes the client's packet up.
    Decap(lb_agent::decap::DecapArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(lb_agent::extras::CompletionsArgs),
    /// Print the manual page (roff), or write one page per command with --dir.
    Man(lb_agent::extras::ManArgs),
    /// Validate a configuration file without an agent or the kernel (like `haproxy -c`) and
    /// print what it would run; exit 1 if it is refused.
    Check(lb_agent::offline::CheckArgs),
    /// Translate an HAProxy, ipvsadm or keepalived configuration into a stickylb one
    /// (stdout); what does not translate is listed on stderr with its line.
    Import(lb_agent::offline::ImportArgs),
}

#[derive(Args, Clone)]
struct PinArgs {
    /// bpffs mount point for pinned maps and links (mounted in the host mount namespace if
    /// missing, so pins survive `ip netns exec`).
    #[arg(long, default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Instance name: one pin directory and state directory per instance.
    #[arg(long, default_value = "default")]
    instance: String,
    /// Where runtime changes are persisted (default /var/lib/stickylb/<instance>).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Config file (TOML, see docs/CONFIG.md).
    #[arg(long)]
    config: PathBuf,
    /// Interface to attach to (repeat for each interface traffic arrives on).
    #[arg(long = "iface", value_name = "IF")]
    ifaces: Vec<String>,
    /// XDP mode: auto = native where it works as-is, skb otherwise (veth: skb).
    #[arg(long, value_enum, default_value = "auto")]
    xdp_mode: XdpMode,
    /// Prometheus metrics address; "off" disables.
    #[arg(long, default_value = DEFAULT_METRICS)]
    metrics: String,
    /// Remove the program and pinned state when the agent exits (default: keep forwarding).
    #[arg(long)]
    detach_on_exit: bool,
    /// Log the data path's decisions (new clients, re-picks, drops) at debug level; costs
    /// nothing when off.
    #[arg(long)]
    debug: bool,
    #[command(flatten)]
    pins: PinArgs,
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// List services with their counters.
    List,
    /// Add a service (same fields and defaults as the config file).
    Add {
        name: String,
        /// VIP:PORT ([v6]:PORT; port 0 = every port).
        #[arg(long)]
        listen: String,
        /// tcp | udp
        #[arg(long)]
        protocol: Option<String>,
        /// roundrobin | maglev
        #[arg(long)]
        scheduler: Option<String>,
        /// nat | dsr | ipip | gue (encap options: config file only)
        #[arg(long)]
        forwarding: Option<String>,
        /// What clients stick by: src (the address) | src/N (its network, e.g. src/24).
        #[arg(long)]
        stick_on: Option<String>,
        /// Stick-table expiry, e.g. 30m, or "never".
        #[arg(long)]
        expire: Option<String>,
        /// Health check kind: tcp | http | none.
        #[arg(long)]
        health: Option<String>,
        /// Backend ADDR:PORT (repeatable).
        #[arg(long = "backend")]
        backends: Vec<String>,
    },
    /// Remove a service (its clients' entries expire with it).
    Remove { name: String },
}

#[derive(Subcommand)]
enum BackendCmd {
    /// List backends with health, state, weight and counters.
    List { service: Option<String> },
    /// Add a backend to a service.
    Add {
        service: String,
        address: String,
        /// 0..=256 (0 = no new clients).
        #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = weight_arg)]
        weight: u32,
        /// ready | drain | maint
        #[arg(long, default_value = "ready")]
        state: String,
    },
    /// Remove a backend (its clients are re-picked on their next packet).
    Remove { service: String, address: String },
    /// Set the weight (0..=256; 0 = no new clients, pinned clients stay).
    Weight {
        service: String,
        address: String,
        #[arg(allow_negative_numbers = true, value_parser = weight_arg)]
        weight: u32,
    },
    /// Set the admin state: ready | drain (keep clients, no new ones) | maint (nobody).
    State {
        service: String,
        address: String,
        state: String,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Withdraw every VIP from the routing daemon; the data path keeps forwarding what
    /// still arrives; `status` says when each VIP has drained. Kept across agent restarts.
    Drain,
    /// Announce the VIPs again (where the node is synced and has healthy backends).
    Undrain,
}

#[derive(Subcommand)]
enum TableCmd {
    /// Stick-table entries: client (a network with stick_on = "src/N"), backend, idle time.
    Show {
        service: Option<String>,
        /// Only entries pinned to this backend (ADDR:PORT).
        #[arg(long)]
        backend: Option<String>,
        /// Show at most N entries (default 100).
        #[arg(long, value_parser = limit_arg)]
        limit: Option<usize>,
    },
    /// One client's entry (its network's, with stick_on = "src/N") and what its next
    /// packet will do.
    Lookup {
        service: String,
        /// An address, or a network of the service's prefix (10.1.2.0/24).
        client: String,
    },
    /// Remove entries: all of a service, one client's (or network's), or a backend's.
    Clear {
        service: String,
        /// An address (with stick_on = "src/N": its network) or a network (10.1.2.0/24).
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        backend: Option<String>,
    },
    /// Pin a client (with stick_on = "src/N": its network) to a backend.
    Pin {
        service: String,
        /// An address or a network of the service's prefix.
        client: String,
        backend: String,
    },
}

/// A weight as the CLI reads it: any whole number; the agent refuses one above
/// [`MAX_WEIGHT`] with its own reason.
fn weight_arg(s: &str) -> Result<u32, String> {
    s.trim().parse().map_err(|_| {
        format!("not a weight: use a whole number 0..={MAX_WEIGHT} (0 = no new clients)")
    })
}

/// `--limit`: a number of entries.
fn limit_arg(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| "not a number of entries: use a whole number, e.g. 100".to_string())
}

fn state_dir(p: &PinArgs) -> PathBuf {
    p.state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/stickylb").join(&p.instance))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return exit::code(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let req = match cli.command {
        Command::Run(args) => {
            let metrics = if args.metrics == "off" {
                None
            } else {
                match args.metrics.parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        eprintln!("error: --metrics {:?} is not accepted: give ADDR:PORT (e.g. {DEFAULT_METRICS}) or off", args.metrics);
                        return exit::code(exit::USAGE);
                    }
                }
            };
            let opts = AgentOptions {
                config: args.config,
                ifaces: args.ifaces,
                xdp_mode: args.xdp_mode,
                socket: cli.socket,
                metrics,
                state_dir: state_dir(&args.pins),
                bpffs: args.pins.bpffs,
                instance: args.pins.instance,
                detach_on_exit: args.detach_on_exit,
                debug: args.debug,
            };
            return match agent::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Detach(p) => {
            if let Err(e) = pins::check_instance_name(&p.instance) {
                eprintln!("error: {e:#}");
                return exit::code(exit::USAGE);
            }
            let layout = PinLayout::new(&p.bpffs, &p.instance);
            return match agent::attach::detach_all(&layout) {
                Ok(ifaces) => {
                    lb_agent::persist::StateDir::new(state_dir(&p)).clear();
                    println!(
                        "detached from {} interface(s){}; pinned state removed",
                        ifaces.len(),
                        if ifaces.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", ifaces.join(", "))
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Top(args) => return lb_agent::top::run(&cli.socket, cli.json, &args),
        Command::Decap(args) => return lb_agent::decap::run(&args, cli.json),
        Command::Completions(args) => {
            return lb_agent::extras::completions(<Cli as clap::CommandFactory>::command(), &args)
        }
        Command::Man(args) => {
            return lb_agent::extras::man(<Cli as clap::CommandFactory>::command(), &args)
        }
        Command::Check(args) => return file_outcome(lb_agent::offline::check(&args, cli.json)),
        Command::Import(args) => return file_outcome(lb_agent::offline::import(&args)),
        Command::Status => cmd("status", []),
        Command::Peers => cmd("peers", []),
        Command::Reload { allow_empty } => cmd(
            "reload",
            [("allow_empty", allow_empty.then_some(Value::Bool(true)))],
        ),
        Command::Stats { watch } => {
            let req = cmd("stats", []);
            if watch {
                loop {
                    let code = send(&cli.socket, &req, cli.json);
                    if code != ExitCode::SUCCESS {
                        return code;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    if !cli.json {
                        println!();
                    }
                }
            }
            req
        }
        Command::Service(ServiceCmd::List) => cmd("service.list", []),
        Command::Service(ServiceCmd::Add {
            name,
            listen,
            protocol,
            scheduler,
            forwarding,
            stick_on,
            expire,
            health,
            backends,
        }) => {
            let service = object([
                ("name", Some(name.into())),
                ("listen", Some(listen.into())),
                ("protocol", protocol.map(Value::from)),
                ("scheduler", scheduler.map(Value::from)),
                ("forwarding", forwarding.map(Value::from)),
                ("stick_on", stick_on.map(Value::from)),
                ("expire", expire.map(Value::from)),
                ("health", health.map(Value::from)),
                (
                    "backends",
                    (!backends.is_empty()).then(|| {
                        backends
                            .into_iter()
                            .map(|address| json!({ "address": address }))
                            .collect()
                    }),
                ),
            ]);
            cmd("service.add", [("service", Some(service))])
        }
        Command::Service(ServiceCmd::Remove { name }) => {
            cmd("service.remove", [("name", Some(name.into()))])
        }
        Command::Backend(BackendCmd::List { service }) => {
            cmd("backend.list", [("service", service.map(Value::from))])
        }
        Command::Backend(BackendCmd::Add {
            service,
            address,
            weight,
            state,
        }) => cmd(
            "backend.add",
            [
                ("service", Some(service.into())),
                (
                    "backend",
                    Some(json!({ "address": address, "weight": weight, "state": state })),
                ),
            ],
        ),
        Command::Backend(BackendCmd::Remove { service, address }) => cmd(
            "backend.remove",
            [
                ("service", Some(service.into())),
                ("address", Some(address.into())),
            ],
        ),
        Command::Backend(BackendCmd::Weight {
            service,
            address,
            weight,
        }) => cmd(
            "backend.weight",
            [
                ("service", Some(service.into())),
                ("address", Some(address.into())),
                ("weight", Some(weight.into())),
            ],
        ),
        Command::Backend(BackendCmd::State {
            service,
            address,
            state,
        }) => cmd(
            "backend.state",
            [
                ("service", Some(service.into())),
                ("address", Some(address.into())),
                ("state", Some(state.into())),
            ],
        ),
        Command::Table(TableCmd::Show {
            service,
            backend,
            limit,
        }) => cmd(
            "table.show",
            [
                ("service", service.map(Value::from)),
                ("backend", backend.map(Value::from)),
                ("limit", limit.map(Value::from)),
            ],
        ),
        Command::Table(TableCmd::Lookup { service, client }) => cmd(
            "table.lookup",
            [
                ("service", Some(service.into())),
                ("client", Some(client.into())),
            ],
        ),
        Command::Table(TableCmd::Clear {
            service,
            client,
            backend,
        }) => cmd(
            "table.clear",
            [
                ("service", Some(service.into())),
                ("client", client.map(Value::from)),
                ("backend", backend.map(Value::from)),
            ],
        ),
        Command::Node(NodeCmd::Drain) => cmd("node.drain", []),
        Command::Node(NodeCmd::Undrain) => cmd("node.undrain", []),
        Command::Table(TableCmd::Pin {
            service,
            client,
            backend,
        }) => cmd(
            "table.pin",
            [
                ("service", Some(service.into())),
                ("client", Some(client.into())),
                ("backend", Some(backend.into())),
            ],
        ),
    };
    send(&cli.socket, &req, cli.json)
}

/// A JSON object of the given fields (those that are `None` left out).
fn object<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    let map: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect();
    Value::Object(map)
}

/// A request: `{"cmd":name, …fields}`.
fn cmd<const N: usize>(name: &str, fields: [(&str, Option<Value>); N]) -> Value {
    let mut v = object(fields);
    if let Value::Object(m) = &mut v {
        m.insert("cmd".into(), name.into());
    }
    v
}

/// `check` and `import`: 0, or 1 for a refused file.
fn file_outcome(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        exit::code(exit::REFUSED)
    }
}

/// Sends a request, prints the answer, maps the outcome to an exit code.
fn send(socket: &std::path::Path, req: &Value, json: bool) -> ExitCode {
    match control::request_value(socket, req, Duration::from_secs(30)) {
        Err(e @ ClientError::Unreachable { .. }) => {
            eprintln!("error: {e}");
            exit::code(exit::UNREACHABLE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::code(exit::UNREACHABLE)
        }
        Ok(resp) if !resp.ok => {
            if json {
                println!("{}", serde_json::to_string(&resp).unwrap_or_default());
            } else {
                eprintln!("refused: {}", resp.error.unwrap_or_default());
            }
            exit::code(exit::REFUSED)
        }
        Ok(resp) => {
            let result = resp.result.unwrap_or(Value::Null);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).unwrap_or_default()
                );
            } else {
                print_human(req["cmd"].as_str().unwrap_or(""), &result);
            }
            ExitCode::SUCCESS
        }
    }
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    }
}

/// Every counter of a set as ` key value` pairs, named as in JSON, from its one definition.
fn counter_line<T: lb_common::CounterSet>(c: &T) -> String {
    let mut line = String::new();
    c.for_each(&mut |c, n| line.push_str(&format!(" {} {n}", c.key)));
    line
}

fn print_human(cmd: &str, v: &Value) {
    match cmd {
        "table.show" => {
            println!(
                "{:<40} {:<40} {:<24} {:>10}",
                "SERVICE", "CLIENT", "BACKEND", "IDLE"
            );
            for e in v["entries"].as_array().into_iter().flatten() {
                let idle = e["idle_ms"].as_u64().unwrap_or(0);
                println!(
                    "{:<40} {:<40} {:<24} {:>9.1}s",
                    s(e, "service"),
                    s(e, "client"),
                    s(e, "backend"),
                    idle as f64 / 1000.0
                );
            }
            println!("{} of {} entries", s(v, "shown"), s(v, "total"));
        }
        "backend.list" => {
            println!(
                "{:<12} {:<40} {:>6} {:<6} {:<6} {:<6} {:>10} {:>8}",
                "SERVICE", "BACKEND", "WEIGHT", "ADMIN", "HEALTH", "STATE", "PACKETS", "CLIENTS"
            );
            for b in v.as_array().into_iter().flatten() {
                println!(
                    "{:<12} {:<40} {:>6} {:<6} {:<6} {:<6} {:>10} {:>8}",
                    s(b, "service"),
                    s(b, "address"),
                    s(b, "weight"),
                    s(b, "admin"),
                    s(b, "health"),
                    s(b, "state"),
                    s(b, "packets"),
                    s(b, "new_clients")
                );
            }
        }
        "service.list" => {
            println!(
                "{:<12} {:<44} {:<5} {:<10} {:<4} {:>8} {:>10}",
                "SERVICE", "LISTEN", "PROTO", "SCHEDULER", "MODE", "BACKENDS", "PACKETS"
            );
            for x in v.as_array().into_iter().flatten() {
                println!(
                    "{:<12} {:<44} {:<5} {:<10} {:<4} {:>8} {:>10}",
                    s(x, "name"),
                    s(x, "listen"),
                    s(x, "protocol"),
                    s(x, "scheduler"),
                    s(x, "forwarding"),
                    s(x, "backends"),
                    s(x, "packets")
                );
            }
        }
        "peers" => print!("{}", lb_agent::control::peers_text(v)),
        "status" => print!("{}", lb_agent::control::status_text(v)),
        "stats" => {
            let Ok(stats) = serde_json::from_value::<lb_model::stats::Stats>(v.clone()) else {
                println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
                return;
            };
            for svc in &stats.services {
                println!("service {}:{}", svc.name, counter_line(&svc.counters.0));
                for b in &svc.backends {
                    println!(
                        "  {:<40} {:<6}{}",
                        b.address,
                        b.state.to_string(),
                        counter_line(&b.counters.0)
                    );
                }
            }
            println!(
                "stick table: {} / {}",
                stats.stick_table.entries, stats.stick_table.capacity
            );
            if let Some(n) = &stats.neighbours {
                println!(
                    "neighbours: {} managed ({} reported), {} reports, {} resolved (max {} ms)",
                    n.managed, n.reported, n.reports, n.resolved, n.resolve_ms_max
                );
            }
            for w in &stats.warnings {
                println!("warning: {w}");
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bad arguments: the message shows the value and what is accepted.
    #[test]
    fn usage_errors_name_the_value_and_what_is_accepted() {
        for (args, value, hint) in [
            (
                "backend weight web 10.0.0.2:80 abc",
                "'abc'",
                "use a whole number 0..=256",
            ),
            (
                "backend weight web 10.0.0.2:80 -1",
                "'-1'",
                "use a whole number 0..=256",
            ),
            (
                "backend add web 10.0.0.2:80 --weight 1.5",
                "'1.5'",
                "0..=256",
            ),
            ("table show --limit lots", "'lots'", "e.g. 100"),
            (
                "run --config x --xdp-mode fast",
                "'fast'",
                "possible values: auto, native, skb",
            ),
            ("frobnicate", "'frobnicate'", "Usage:"),
        ] {
            let argv = std::iter::once("stickylb").chain(args.split(' '));
            let err = match Cli::try_parse_from(argv) {
                Ok(_) => panic!("{args}: accepted"),
                Err(e) => e.render().to_string(),
            };
            assert!(err.contains(value), "{args}: {err}");
            assert!(err.contains(hint), "{args}: {err}");
        }
        // Weights above 256 are the agent's to refuse (exit 1 with its reason).
        assert!(Cli::try_parse_from(["stickylb", "backend", "weight", "web", "a", "300"]).is_ok());
    }
}
