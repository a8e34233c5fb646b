//! The cluster behind a real routing daemon (issue 13): the [`ClusterNet`] layout with
//! BIRD 2 on the router (eBGP from every node, ECMP by `merge paths on`, BFD) and on every
//! node (exporting the VIPs the agent assigns on `lo`, `protocol direct`), a stickylb
//! agent per node in DSR mode with `[announce]`, and name servers on the backends.
//!
//! - [`Bird`]: one BIRD process in a namespace with its own config file and control
//!   socket (`bird -f -c FILE -s SOCKET`), ended by its pid on drop.
//! - [`BgpCluster`]: the whole lab and the steps the tests and `demo --cluster` take: a
//!   node killed (silenced at the router, its agent and BIRD SIGKILLed, its links
//!   deleted), drained, added; BIRD killed and restarted; BFD on or off.
//! - [`Load`]: clients connecting continuously in the background, each request recorded,
//!   and what a client saw around a failure ([`Load::outage`]).

use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{
    agent::Agent,
    cluster_net::{
        ClusterNet, ClusterOpts, Node, Pki, NODE_LAN_IF, NODE_ROUTER_IF, PEER_PORT, VIP_V4, VIP_V6,
    },
    netns::Netns,
    servers::{connect_from, tcp_fetch_all},
    NameServer,
};

/// The service port.
pub const PORT: u16 = 8080;
/// The second VIP (`with_second`): one service whose only backend is the last one.
pub const VIP2_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 101);
/// The router's AS; node i is 65000 + i.
pub const ROUTER_AS: u32 = 65000;
const READY: Duration = Duration::from_secs(30);
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One BIRD process.
pub struct Bird {
    ns_name: String,
    pub conf: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Bird {
    /// Writes `conf` under `dir` as `<tag>.conf` and starts BIRD in `ns`.
    pub fn start(ns: &Netns, dir: &Path, tag: &str, conf: &str) -> Result<Bird> {
        let mut b = Bird {
            ns_name: ns.name().to_string(),
            conf: dir.join(format!("{tag}.conf")),
            socket: dir.join(format!("{tag}.ctl")),
            log: dir.join(format!("{tag}.log")),
            child: None,
        };
        std::fs::write(&b.conf, conf)?;
        b.spawn()?;
        Ok(b)
    }

    /// Starts (or starts again) the process and waits until its socket answers.
    pub fn spawn(&mut self) -> Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "bird", "-f", "-c"])
            .arg(&self.conf)
            .arg("-s")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting bird (apt-get install bird2; cargo xtask setup does)")?;
        self.child = Some(child);
        let deadline = Instant::now() + READY;
        loop {
            if self.birdc("show status").is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!(
                        "bird exited ({st}): {}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("bird's socket {} does not answer", self.socket.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `birdc -s SOCKET <cmd>`'s output.
    pub fn birdc(&self, cmd: &str) -> Result<String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(cmd.split_whitespace())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.contains("Unable to connect") {
            bail!(
                "birdc {cmd}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    }

    /// Rewrites the config and has BIRD read it again.
    pub fn reconfigure(&self, conf: &str) -> Result<()> {
        std::fs::write(&self.conf, conf)?;
        let out = self.birdc("configure")?;
        if !out.contains("Reconfigured") && !out.contains("Reconfiguration in progress") {
            bail!("birdc configure: {out}");
        }
        Ok(())
    }

    /// Ends the process with `sig` (by its pid) and reaps it.
    pub fn kill(&mut self, sig: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether BGP protocol `name` is established.
    pub fn established(&self, name: &str) -> bool {
        self.birdc(&format!("show protocols {name}"))
            .is_ok_and(|o| o.contains("Established"))
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill(libc::SIGKILL);
    }
}

/// How BGP detects a dead peer.
#[derive(Clone, Copy, Debug)]
pub struct Detection {
    /// BFD at 100 ms × 3 on both ends.
    pub bfd: bool,
    /// BGP hold time in seconds (keepalive a third of it); BIRD's minimum is 3.
    pub hold_s: u32,
}

impl Default for Detection {
    fn default() -> Self {
        Detection {
            bfd: true,
            hold_s: 3,
        }
    }
}

fn timers(d: Detection) -> String {
    format!(
        "hold time {}; keepalive time {}; connect retry time 1; error wait time 1, 3; \
         error forget time 10;{}",
        d.hold_s,
        (d.hold_s / 3).max(1),
        if d.bfd { " bfd on;" } else { "" }
    )
}

const BFD: &str = "min rx interval 100 ms; min tx interval 100 ms; multiplier 3;";

/// The router's BIRD config: one eBGP session per node, multipath into the kernel; with
/// `ipv6`, a second session per node over the link's IPv6 addresses and a second kernel
/// protocol for the IPv6 table.
pub fn router_conf(nodes: &[&Node], d: Detection, ipv6: bool) -> String {
    let mut c = String::from(
        "# The ECMP router: learns the VIPs from every node, installs one multipath route.\n\
         router id 198.18.0.1;\n\
         log stderr all;\n\
         protocol device { scan time 1; }\n\
         protocol kernel {\n  ipv4 { import none; export all; };\n  merge paths on;\n}\n",
    );
    if ipv6 {
        c.push_str("protocol kernel kernel6 {\n  ipv6 { import none; export all; };\n  merge paths on;\n}\n");
    }
    c.push_str(&format!(
        "protocol bfd {{\n  interface \"to-node*\" {{ {BFD} }};\n}}\n"
    ));
    for n in nodes {
        let asn = ROUTER_AS + n.index as u32;
        let t = timers(d);
        c.push_str(&format!(
            "protocol bgp node{i} {{\n  local {r} as {ROUTER_AS};\n  neighbor {v} as {asn};\n  \
             {t}\n  ipv4 {{ import all; export none; }};\n}}\n",
            i = n.index,
            r = n.router_v4,
            v = n.v4,
        ));
        if ipv6 {
            c.push_str(&format!(
                "protocol bgp node{i}v6 {{\n  local {r} as {ROUTER_AS};\n  neighbor {v} as {asn};\n  \
                 {t}\n  ipv6 {{ import all; export none; }};\n}}\n",
                i = n.index,
                r = n.router_v6,
                v = n.v6,
            ));
        }
    }
    c
}

/// A node's BIRD config: exports the host routes of `vips` found on `lo`, the IPv4 ones
/// over an IPv4 session, the IPv6 ones (if any) over an IPv6 session.
pub fn node_conf(n: &Node, vips: &[IpAddr], d: Detection) -> String {
    let v4: Vec<String> = vips
        .iter()
        .filter(|v| v.is_ipv4())
        .map(|v| format!("{v}/32"))
        .collect();
    let v6: Vec<String> = vips
        .iter()
        .filter(|v| v.is_ipv6())
        .map(|v| format!("{v}/128"))
        .collect();
    let asn = ROUTER_AS + n.index as u32;
    let t = timers(d);
    let mut c = format!(
        "# Node {i}: announces the VIPs stickylb assigns on lo.\n\
         router id {v};\n\
         log stderr all;\n\
         protocol device {{ scan time 1; }}\n\
         protocol direct vips {{\n  ipv4;\n  interface \"lo\";\n}}\n\
         protocol bfd {{\n  interface \"{NODE_ROUTER_IF}\" {{ {BFD} }};\n}}\n\
         protocol bgp uplink {{\n  local {v} as {asn};\n  neighbor {r} as {ROUTER_AS};\n  {t}\n  \
         ipv4 {{\n    import none;\n    export where source = RTS_DEVICE && net ~ [ {s} ];\n  }};\n}}\n",
        i = n.index,
        v = n.v4,
        r = n.router_v4,
        s = v4.join(", ")
    );
    if !v6.is_empty() {
        c.push_str(&format!(
            "protocol direct vips6 {{\n  ipv6;\n  interface \"lo\";\n}}\n\
             protocol bgp uplink6 {{\n  local {v} as {asn};\n  neighbor {r} as {ROUTER_AS};\n  {t}\n  \
             ipv6 {{\n    import none;\n    export where source = RTS_DEVICE && net ~ [ {s} ];\n  }};\n}}\n",
            v = n.v6,
            r = n.router_v6,
            s = v6.join(", ")
        ));
    }
    c
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabOpts {
    pub nodes: usize,
    pub backends: usize,
    pub clients: usize,
    pub detection: Detection,
    /// A second service on [`VIP2_V4`] whose only backend is the last backend.
    pub with_second: bool,
    /// Start the nodes' BIRD (false: the agents run without their daemon).
    pub node_birds: bool,
    /// `[cluster]` on every node with these members (node indexes, present or not) and
    /// this `sync_timeout`: a node announces only once synced.
    pub cluster: Option<(Vec<usize>, Duration)>,
    /// An IPv6 service on [`VIP_V6`] beside the IPv4 one (`web6`, the same backends by
    /// their IPv6 addresses), announced over IPv6 sessions.
    pub ipv6: bool,
}

impl Default for LabOpts {
    fn default() -> Self {
        LabOpts {
            nodes: 3,
            backends: 3,
            clients: 100,
            detection: Detection::default(),
            with_second: false,
            node_birds: true,
            cluster: None,
            ipv6: false,
        }
    }
}

/// A node's processes.
pub struct NodeRun {
    pub bird: Option<Bird>,
    pub agent: Option<Agent>,
    /// Links deleted ([`BgpCluster::kill_node`]).
    pub dead: bool,
}

/// The lab; dropping it ends every process and deletes every namespace.
pub struct BgpCluster {
    // Drop order: processes first, then the namespaces.
    pub runs: BTreeMap<usize, NodeRun>,
    pub router: Bird,
    pub servers: Vec<NameServer>,
    pub net: ClusterNet,
    pub opts: LabOpts,
    pub dir: PathBuf,
    pki: Option<Pki>,
}

impl Drop for BgpCluster {
    fn drop(&mut self) {
        self.runs.clear();
        if std::env::var_os("SLB_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl BgpCluster {
    /// Builds the network, starts BIRD on the router, and per node BIRD and the agent;
    /// waits until every node's BGP session is up (not until the VIPs are announced).
    pub fn start(opts: LabOpts) -> Result<BgpCluster> {
        let mut net = ClusterNet::build(ClusterOpts {
            nodes: opts.nodes,
            backends: opts.backends,
            clients: opts.clients,
            native_xdp: false,
        })?;
        net.clear_static_routes()?;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("slb-bgp-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        if opts.with_second {
            let last = net.backend(opts.backends);
            last.ns
                .ip(&["addr", "add", &format!("{VIP2_V4}/32"), "dev", "lo"])?;
        }
        let servers = net
            .backends()
            .iter()
            .map(|b| NameServer::spawn(&b.ns, PORT, &b.name))
            .collect::<Result<Vec<_>>>()?;
        let nodes: Vec<&Node> = net.nodes().iter().collect();
        let router = Bird::start(
            net.router(),
            &dir,
            "router",
            &router_conf(&nodes, opts.detection, opts.ipv6),
        )?;
        let pki = match opts.cluster {
            Some(_) => Some(Pki::new()?),
            None => None,
        };
        let mut lab = BgpCluster {
            runs: BTreeMap::new(),
            router,
            servers,
            net,
            opts,
            dir,
            pki,
        };
        for i in 1..=lab.opts.nodes {
            lab.start_node(i)?;
        }
        Ok(lab)
    }

    /// The VIPs announced.
    pub fn vips(&self) -> Vec<IpAddr> {
        let mut v = vec![IpAddr::V4(VIP_V4)];
        if self.opts.with_second {
            v.push(IpAddr::V4(VIP2_V4));
        }
        if self.opts.ipv6 {
            v.push(IpAddr::V6(VIP_V6));
        }
        v
    }

    /// The agents' config file.
    pub fn agent_config(&self, i: usize) -> Result<String> {
        let be: Vec<String> = self
            .net
            .backends()
            .iter()
            .map(|b| format!("[[service.backend]]\naddress = \"{}\"\n", b.v4))
            .collect();
        // Tolerant of a loaded machine: a check timing out once or twice moves nobody.
        let health = "health = { kind = \"tcp\", interval = \"300ms\", timeout = \"250ms\", rise = 2, fall = 3 }\n";
        let mut c = format!(
            "[[service]]\nname = \"web\"\nlisten = \"{VIP_V4}:{PORT}\"\nscheduler = \"maglev\"\n\
             forwarding = \"dsr\"\n{health}{}",
            be.join("")
        );
        if self.opts.ipv6 {
            let be6: Vec<String> = self
                .net
                .backends()
                .iter()
                .map(|b| format!("[[service.backend]]\naddress = \"{}\"\n", b.v6))
                .collect();
            c.push_str(&format!(
                "[[service]]\nname = \"web6\"\nlisten = \"[{VIP_V6}]:{PORT}\"\nscheduler = \"maglev\"\n\
                 forwarding = \"dsr\"\n{health}{}",
                be6.join("")
            ));
        }
        if self.opts.with_second {
            let last = self.net.backend(self.opts.backends);
            c.push_str(&format!(
                "[[service]]\nname = \"api\"\nlisten = \"{VIP2_V4}:{PORT}\"\nscheduler = \"maglev\"\n\
                 forwarding = \"dsr\"\n{health}[[service.backend]]\naddress = \"{}\"\n",
                last.v4
            ));
        }
        c.push_str(&format!(
            "[announce]\ninterface = \"lo\"\ndrain_timeout = \"10s\"\ndaemon_socket = \"{}\"\n",
            self.dir.join(format!("node{i}.ctl")).display()
        ));
        if let (Some((members, sync)), Some(pki)) = (&self.opts.cluster, &self.pki) {
            let me = self.net.node(i);
            let (cert, key) = pki.issue(&me.name)?;
            let peers: Vec<String> = members
                .iter()
                .filter(|&&k| k != i)
                .map(|&k| {
                    format!("{{ name = \"node{k}\", address = \"198.18.50.{k}:{PEER_PORT}\" }}")
                })
                .collect();
            c.push_str(&format!(
                "[cluster]\nnode = \"{}\"\nlisten = \"{}\"\npeers = [ {} ]\nca = \"{}\"\n\
                 cert = \"{}\"\nkey = \"{}\"\nheartbeat = \"500ms\"\npeer_timeout = \"3s\"\n\
                 sync_timeout = \"{}ms\"\n",
                me.name,
                me.peer_addr(),
                peers.join(", "),
                pki.ca_path().display(),
                cert.display(),
                key.display(),
                sync.as_millis()
            ));
        }
        Ok(c)
    }

    /// Starts node `i`'s BIRD (with `node_birds`) and agent.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let n = self.net.node(i);
        let bird = if self.opts.node_birds {
            Some(Bird::start(
                &n.ns,
                &self.dir,
                &format!("node{i}"),
                &node_conf(n, &self.vips(), self.opts.detection),
            )?)
        } else {
            std::fs::write(
                self.dir.join(format!("node{i}.conf")),
                node_conf(n, &self.vips(), self.opts.detection),
            )?;
            None
        };
        let agent = Agent::start(
            &n.ns,
            &[NODE_ROUTER_IF, NODE_LAN_IF],
            &self.agent_config(i)?,
            &["--metrics", "off"],
        )?;
        self.runs.insert(
            i,
            NodeRun {
                bird,
                agent: Some(agent),
                dead: false,
            },
        );
        Ok(())
    }

    /// Node `i`'s agent.
    pub fn agent(&self, i: usize) -> &Agent {
        self.runs[&i].agent.as_ref().expect("agent running")
    }

    pub fn run_mut(&mut self, i: usize) -> &mut NodeRun {
        self.runs.get_mut(&i).expect("node")
    }

    /// The router's nexthops for `vip` (its FIB, as BIRD installed it).
    pub fn fib(&self, vip: impl Into<IpAddr>) -> Result<Vec<IpAddr>> {
        let vip = vip.into();
        let (family, len) = if vip.is_ipv6() {
            ("-6", 128)
        } else {
            ("-4", 32)
        };
        let out = self
            .net
            .router()
            .ip(&[family, "route", "show", &format!("{vip}/{len}")])?;
        let mut hops: Vec<IpAddr> = out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect();
        hops.sort_unstable();
        Ok(hops)
    }

    /// Node addresses (their IPv4 nexthop) for indexes.
    pub fn hops_of(&self, nodes: &[usize]) -> Vec<IpAddr> {
        self.hops_for(VIP_V4.into(), nodes)
    }

    /// Node addresses of `vip`'s family (its nexthops) for indexes.
    fn hops_for(&self, vip: IpAddr, nodes: &[usize]) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = nodes
            .iter()
            .map(|&i| {
                let n = self.net.node(i);
                if vip.is_ipv6() {
                    IpAddr::V6(n.v6)
                } else {
                    IpAddr::V4(n.v4)
                }
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Waits until the router's FIB for `vip` is exactly `nodes`; returns how long it took.
    pub fn wait_fib(
        &self,
        vip: impl Into<IpAddr>,
        nodes: &[usize],
        timeout: Duration,
    ) -> Result<Duration> {
        let vip = vip.into();
        let want = self.hops_for(vip, nodes);
        let started = Instant::now();
        loop {
            let got = self.fib(vip)?;
            if got == want {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!(
                    "router FIB for {vip}: {got:?}, expected {want:?} after {timeout:?}\nrouter BIRD:\n{}",
                    self.router.birdc("show protocols").unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The node silent towards the router, as a node that lost power looks (its
    /// router link stays up: only BFD or the hold timer can tell).
    pub fn isolate(&self, i: usize) -> Result<()> {
        let ifn = &self.net.node(i).router_if;
        let t = format!("iso{i}");
        let script = format!(
            "add table inet {t}\n\
             add chain inet {t} in {{ type filter hook input priority -300; }}\n\
             add chain inet {t} fw {{ type filter hook forward priority -300; }}\n\
             add chain inet {t} out {{ type filter hook output priority -300; }}\n\
             add rule inet {t} in iifname \"{ifn}\" drop\n\
             add rule inet {t} fw iifname \"{ifn}\" drop\n\
             add rule inet {t} fw oifname \"{ifn}\" drop\n\
             add rule inet {t} out oifname \"{ifn}\" drop\n"
        );
        let path = self.dir.join(format!("iso{i}.nft"));
        std::fs::write(&path, script)?;
        self.net
            .router()
            .exec(&["nft", "-f", &path.display().to_string()])?;
        Ok(())
    }

    /// Undoes [`BgpCluster::isolate`].
    pub fn heal(&self, i: usize) -> Result<()> {
        self.net
            .router()
            .exec(&["nft", "delete", "table", "inet", &format!("iso{i}")])?;
        Ok(())
    }

    /// Node `i` dies: silenced at the router first (the instant returned), then its
    /// agent and BIRD SIGKILLed and its links deleted.
    pub fn kill_node(&mut self, i: usize) -> Result<Instant> {
        self.isolate(i)?;
        let t0 = Instant::now();
        let run = self.run_mut(i);
        if let Some(b) = run.bird.as_mut() {
            b.kill(libc::SIGKILL);
        }
        if let Some(a) = run.agent.as_mut() {
            let _ = a.signal(libc::SIGKILL);
        }
        run.dead = true;
        Ok(t0)
    }

    /// After [`BgpCluster::kill_node`] and the route converged: the node's links go,
    /// and so does the isolation (its router interface is gone with them).
    pub fn bury_node(&mut self, i: usize) -> Result<()> {
        let n = self.net.node(i);
        n.ns.ip(&["link", "del", NODE_ROUTER_IF])?;
        n.ns.ip(&["link", "del", NODE_LAN_IF])?;
        self.heal(i)?;
        Ok(())
    }

    /// A new node (next index) with BIRD and agent, known to the router's BIRD.
    pub fn add_node(&mut self) -> Result<usize> {
        let i = self.net.add_node()?;
        self.opts.nodes = self.opts.nodes.max(i);
        let nodes: Vec<&Node> = self
            .net
            .nodes()
            .iter()
            .filter(|n| !self.runs.get(&n.index).is_some_and(|r| r.dead))
            .collect();
        self.router
            .reconfigure(&router_conf(&nodes, self.opts.detection, self.opts.ipv6))?;
        self.start_node(i)?;
        Ok(i)
    }

    /// Switches BFD on or off everywhere (`birdc configure`; sessions restart).
    pub fn set_detection(&mut self, d: Detection) -> Result<()> {
        self.opts.detection = d;
        let live: Vec<usize> = self
            .runs
            .iter()
            .filter(|(_, r)| !r.dead)
            .map(|(i, _)| *i)
            .collect();
        let nodes: Vec<&Node> = live.iter().map(|&i| self.net.node(i)).collect();
        self.router
            .reconfigure(&router_conf(&nodes, d, self.opts.ipv6))?;
        for &i in &live {
            let conf = node_conf(self.net.node(i), &self.vips(), d);
            if let Some(b) = self.runs[&i].bird.as_ref() {
                b.reconfigure(&conf)?;
            }
        }
        Ok(())
    }

    /// `stickylb status` of node `i`'s agent, its `announce` part.
    pub fn announce_status(&self, i: usize) -> Result<Value> {
        Ok(self.agent(i).ok(&["status"])?["announce"].clone())
    }

    /// One connection per `(client, round)` from every client in `clients`; the backend
    /// that answered (or the error) per client.
    pub fn fetch(
        &self,
        vip: impl Into<IpAddr>,
        clients: &[IpAddr],
        rounds: usize,
    ) -> Result<BTreeMap<IpAddr, Vec<Result<String, String>>>> {
        let dst = SocketAddr::new(vip.into(), PORT);
        let pairs: Vec<(IpAddr, SocketAddr)> = (0..rounds)
            .flat_map(|_| clients.iter().map(move |&c| (c, dst)))
            .collect();
        let mut out: BTreeMap<IpAddr, Vec<Result<String, String>>> = BTreeMap::new();
        for ((c, _), r) in pairs.iter().zip(tcp_fetch_all(
            self.net.client(),
            &pairs,
            Duration::from_secs(10),
        )?) {
            out.entry(*c)
                .or_default()
                .push(r.map_err(|e| format!("{e:#}")));
        }
        Ok(out)
    }

    /// The client addresses, as `IpAddr`.
    pub fn clients(&self) -> Vec<IpAddr> {
        self.net
            .client_v4s()
            .iter()
            .map(|&a| IpAddr::from(a))
            .collect()
    }

    /// The clients' IPv6 addresses.
    pub fn clients_v6(&self) -> Vec<IpAddr> {
        self.net
            .client_v6s()
            .iter()
            .map(|&a| IpAddr::from(a))
            .collect()
    }

    /// Per-node packets of service `name` (from each live agent's stats).
    pub fn node_packets(&self, name: &str) -> BTreeMap<usize, u64> {
        self.runs
            .iter()
            .filter_map(|(i, r)| {
                let s = r.agent.as_ref()?.ok(&["stats"]).ok()?;
                let p = s["services"]
                    .as_array()?
                    .iter()
                    .find(|x| x["name"] == name)?["packets"]
                    .as_u64()?;
                Some((*i, p))
            })
            .collect()
    }
}

/// Every client's one backend: the clients that got two, or failed.
pub fn one_backend_each(
    got: &BTreeMap<IpAddr, Vec<Result<String, String>>>,
) -> Result<BTreeMap<IpAddr, String>> {
    let mut out = BTreeMap::new();
    for (c, rs) in got {
        let mut names: Vec<&String> = Vec::new();
        for r in rs {
            match r {
                Ok(n) => {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                Err(e) => bail!("client {c}: {e}"),
            }
        }
        match names.as_slice() {
            [one] => {
                out.insert(*c, (*one).clone());
            }
            more => bail!("client {c} reached {more:?}"),
        }
    }
    Ok(out)
}

/// Clients whose backend differs between two maps.
pub fn moved(a: &BTreeMap<IpAddr, String>, b: &BTreeMap<IpAddr, String>) -> Vec<IpAddr> {
    a.iter()
        .filter(|(c, n)| b.get(c).is_some_and(|m| m != *n))
        .map(|(c, _)| *c)
        .collect()
}

/// One request of the background load.
#[derive(Clone, Debug)]
pub struct Sample {
    pub client: IpAddr,
    pub start: Instant,
    pub took: Duration,
    pub answer: Result<String, String>,
}

/// Clients connecting continuously (`threads` at a time, each one fresh connection after
/// another, cycling over the client addresses).
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// A request slower than this stalled (a lost SYN waits for TCP's 1 s retransmission).
pub const STALL: Duration = Duration::from_millis(300);

impl Load {
    pub fn start(ns: &Netns, clients: &[IpAddr], vip: Ipv4Addr, threads: usize) -> Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let dst = SocketAddr::new(vip.into(), PORT);
        let mut handles = Vec::new();
        for t in 0..threads {
            let file = File::open(ns.path())?;
            let mine: Vec<IpAddr> = clients.iter().copied().skip(t).step_by(threads).collect();
            let (stop, samples) = (stop.clone(), samples.clone());
            handles.push(std::thread::spawn(move || {
                // SAFETY: setns on a valid fd, this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return;
                }
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) && !mine.is_empty() {
                    let client = mine[k % mine.len()];
                    k += 1;
                    let start = Instant::now();
                    let answer = fetch(client, dst).map_err(|e| format!("{e:#}"));
                    samples.lock().unwrap().push(Sample {
                        client,
                        start,
                        took: start.elapsed(),
                        answer,
                    });
                    std::thread::sleep(Duration::from_millis(5));
                }
            }));
        }
        Ok(Load {
            stop,
            samples,
            threads: handles,
        })
    }

    /// Stops and returns every sample.
    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

fn fetch(src: IpAddr, dst: SocketAddr) -> Result<String> {
    use std::io::Read as _;
    let mut s = connect_from(src, dst, Duration::from_secs(8))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf.trim().to_owned())
}

/// What clients saw around an event at `t0`.
#[derive(Clone, Debug, Default)]
pub struct Outage {
    /// Requests started after `t0`.
    pub requests: usize,
    pub failed: usize,
    /// Slower than [`STALL`].
    pub stalled: usize,
    /// From `t0` to the end of the last stalled or failed request that started around
    /// it (0: nobody noticed).
    pub outage: Duration,
    /// Answers per backend by client: clients with more than one backend.
    pub two_backends: usize,
}

/// The clients' view of samples since `t0 - STALL`.
pub fn outage(samples: &[Sample], t0: Instant) -> Outage {
    let from = t0.checked_sub(Duration::from_secs(2)).unwrap_or(t0);
    let mut o = Outage::default();
    let mut per: BTreeMap<IpAddr, Vec<&String>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.start >= from) {
        if s.start >= t0 {
            o.requests += 1;
        }
        let bad = s.answer.is_err() || s.took > STALL;
        if s.answer.is_err() {
            o.failed += 1;
        } else if s.took > STALL {
            o.stalled += 1;
        }
        if bad {
            let end = s.start + s.took;
            if end > t0 {
                o.outage = o.outage.max(end - t0);
            }
        }
        if let Ok(n) = &s.answer {
            let v = per.entry(s.client).or_default();
            if !v.contains(&n) {
                v.push(n);
            }
        }
    }
    o.two_backends = per.values().filter(|v| v.len() > 1).count();
    o
}

/// Median and maximum of durations.
pub fn median_max(v: &[Duration]) -> (Duration, Duration) {
    let mut s = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    (s[s.len() / 2], *s.last().unwrap())
}
