//! Announcing the VIPs through the node's routing daemon (`[announce]`, issue 13).
//!
//! The agent assigns each announceable VIP as a host address on the announce interface
//! and removes it when the VIP stops being announceable; the routing daemon (BIRD's
//! `protocol direct`, FRR's `redistribute connected`) exports the connected route into
//! BGP. Why this coupling rather than driving the daemon (`birdc`, vtysh, a gRPC API):
//! the kernel is the one state both sides read, so it survives either side's restart with
//! no resynchronisation: a SIGKILLed agent leaves its addresses, so the route stays
//! announced and the data path (pinned) keeps forwarding; a restarted BIRD re-reads the
//! interfaces and announces what is assigned; a restarted agent adopts its addresses
//! (marked with `IFA_PROTO`, see [`addresses`]). It needs no credentials to the daemon
//! and works the same with BIRD and FRR.
//!
//! - [`Announce`]: the state shared with the control socket (drain, undrain, status) and
//!   the metrics; [`Announcer`]: one step of the loop (read the rule's inputs, change the
//!   addresses, log what changed), run every [`TICK`] by [`run`].
//! - The rule, the drain meter and the status rows are pure: `lb_model::announce`.
//! - [`daemon`]: BIRD's control socket, read for status only.
//!
//! Draining (`stickylb node drain`, SIGTERM): every VIP is withdrawn, the data path keeps
//! forwarding whatever still arrives (connections the router still hashes here), and a
//! VIP is reported `drained` once no packet arrived for it for a second. A drain asked by
//! command is kept across agent restarts (a file in the state directory) until
//! `stickylb node undrain`; the drain of SIGTERM is not (a restarted agent announces).

pub mod addresses;
pub mod daemon;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_model::{
    announce::{self as model, AnnounceConfig, AnnounceStatus, DaemonStatus, Traffic, VipRow, Why},
    clock::monotonic_ns,
    sync::lock,
};
use tokio::sync::{watch, Notify};

pub use self::addresses::{Addresses, Netlink};

/// How often the rule is evaluated (and the packet rates sampled).
pub const TICK: Duration = Duration::from_millis(200);
/// How often the daemon's socket is read.
const DAEMON_EVERY: Duration = Duration::from_secs(1);

/// One VIP and what the rule needs to know about it.
#[derive(Clone, Debug, PartialEq)]
pub struct VipInput {
    pub vip: IpAddr,
    pub services: Vec<String>,
    /// At least one of its services has a backend that takes traffic.
    pub any_healthy: bool,
    /// Its services' packet counters, summed.
    pub packets: u64,
}

/// What one step reads from the agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    pub config: AnnounceConfig,
    pub vips: Vec<VipInput>,
}

#[derive(Debug)]
struct Vip {
    services: Vec<String>,
    assigned: bool,
    why: Option<Why>,
    changed: Instant,
    withdrawn_ms: Option<u64>,
    traffic: Traffic,
}

#[derive(Debug, Default)]
struct State {
    config: Option<AnnounceConfig>,
    draining: bool,
    synced: bool,
    vips: BTreeMap<IpAddr, Vip>,
    daemon: DaemonStatus,
    /// Announce-interface problem already logged (not logged again each tick).
    iface_missing_logged: bool,
}

/// The announcer's state shared with the control socket and metrics.
#[derive(Debug)]
pub struct Announce {
    state: Mutex<State>,
    /// Wakes the loop at once (a drain, an undrain).
    pub wake: Notify,
    /// Where a drain asked by command is kept across restarts.
    drain_file: PathBuf,
}

fn now_ms() -> u64 {
    monotonic_ns() / 1_000_000
}

impl Announce {
    /// `state_dir`: the agent's state directory (holds the `draining` mark).
    pub fn new(state_dir: &std::path::Path) -> Self {
        let drain_file = state_dir.join("draining");
        let draining = drain_file.exists();
        if draining {
            log::warn!(
                "this node was drained by `stickylb node drain` ({} exists): its VIPs stay \
                 withdrawn until `stickylb node undrain`",
                drain_file.display()
            );
        }
        Self {
            state: Mutex::new(State {
                draining,
                ..Default::default()
            }),
            wake: Notify::new(),
            drain_file,
        }
    }

    /// Starts draining; `persist`: kept across restarts (asked by command).
    pub fn drain(&self, persist: bool) -> Result<(), String> {
        if persist {
            if let Some(dir) = self.drain_file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::write(&self.drain_file, b"drained by stickylb node drain\n").map_err(|e| {
                format!(
                    "cannot record the drain in {}: {e}",
                    self.drain_file.display()
                )
            })?;
        }
        let mut st = lock(&self.state);
        if !st.draining {
            log::info!("draining: withdrawing every VIP; the data path keeps forwarding what still arrives");
        }
        st.draining = true;
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Stops draining.
    pub fn undrain(&self) -> Result<(), String> {
        match std::fs::remove_file(&self.drain_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot remove the drain mark {}: {e}",
                    self.drain_file.display()
                ))
            }
        }
        let mut st = lock(&self.state);
        if st.draining {
            log::info!("undrained: VIPs are announced again where the rule allows");
        }
        st.draining = false;
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Draining, and no VIP assigned nor receiving traffic (also true with nothing to
    /// announce).
    pub fn drained(&self) -> bool {
        let st = lock(&self.state);
        let now = now_ms();
        st.draining
            && st.vips.values().all(|v| {
                !v.assigned
                    && v.withdrawn_ms
                        .is_none_or(|w| model::drained(&v.traffic, w, now))
            })
    }

    /// The `announce` part of `status`; `None` without `[announce]`.
    pub fn status(&self) -> Option<AnnounceStatus> {
        let st = lock(&self.state);
        let cfg = st.config.as_ref()?;
        let now = now_ms();
        let problem = st.daemon.problem();
        let vips: Vec<VipRow> = st
            .vips
            .iter()
            .map(|(ip, v)| VipRow {
                vip: *ip,
                services: v.services.clone(),
                assigned: v.assigned,
                announced: v.assigned && problem.is_none(),
                why: if v.assigned { problem } else { v.why },
                since_ms: v.changed.elapsed().as_millis() as u64,
                packets_per_s: v.traffic.rate(),
                drained: !v.assigned
                    && v.withdrawn_ms
                        .is_some_and(|w| model::drained(&v.traffic, w, now)),
            })
            .collect();
        Some(AnnounceStatus {
            interface: cfg.interface.clone(),
            synced: st.synced,
            draining: st.draining,
            drained: st.draining && vips.iter().all(|v| !v.assigned && v.drained),
            daemon: st.daemon.clone(),
            vips,
        })
    }

    fn set_daemon(&self, d: DaemonStatus) {
        let mut st = lock(&self.state);
        if let Some((level, line)) = daemon::change_line(&st.daemon, &d) {
            log::log!(level, "{line}");
        }
        st.daemon = d;
    }
}

/// One step of the loop, with the addresses it changes.
pub struct Announcer<A: Addresses> {
    pub addrs: A,
}

impl<A: Addresses> Announcer<A> {
    /// Evaluates the rule with `inputs` (none: no `[announce]`) and `synced`, and makes
    /// the interface hold exactly the VIPs to announce (of those the agent marks).
    pub async fn step(&mut self, shared: &Announce, inputs: Option<Inputs>, synced: bool) {
        let now = now_ms();
        let (draining, iface_logged, prev_iface) = {
            let mut st = lock(&shared.state);
            st.synced = synced;
            (
                st.draining,
                st.iface_missing_logged,
                st.config.as_ref().map(|c| c.interface.clone()),
            )
        };
        // An interface no longer used (reload changed it, or removed [announce]): its
        // marked addresses go.
        let iface = inputs.as_ref().map(|i| i.config.interface.clone());
        if let Some(old) = prev_iface.filter(|o| Some(o) != iface.as_ref()) {
            let idx = self.addrs.ifindex(&old);
            if idx != 0 {
                for ip in self.addrs.list(idx).await.unwrap_or_default() {
                    match self.addrs.del(idx, ip).await {
                        Ok(()) => {
                            log::info!("withdrew VIP {ip} from {old} (no longer announced there)")
                        }
                        Err(e) => log::warn!("{e:#}"),
                    }
                }
            }
        }
        let Some(inputs) = inputs else {
            let mut st = lock(&shared.state);
            st.config = None;
            st.vips.clear();
            return;
        };
        let name = &inputs.config.interface;
        let idx = self.addrs.ifindex(name);
        let current = if idx == 0 {
            if !iface_logged {
                log::error!(
                    "announce interface {name} does not exist: no VIP is announced (create it, \
                     e.g. `ip link add {name} type dummy && ip link set {name} up`, or set \
                     [announce] interface); the data path keeps forwarding"
                );
            }
            lock(&shared.state).iface_missing_logged = true;
            None
        } else {
            if iface_logged {
                log::info!("announce interface {name} is there (ifindex {idx})");
                lock(&shared.state).iface_missing_logged = false;
            }
            match self.addrs.list(idx).await {
                Ok(v) => Some(v),
                Err(e) => {
                    log::warn!("{e:#}");
                    None
                }
            }
        };
        let mut outcome: Vec<(IpAddr, bool, Option<Why>)> = Vec::new();
        for v in &inputs.vips {
            let wanted = model::decide(synced, draining, v.any_healthy);
            let have = current.as_ref().is_some_and(|c| c.contains(&v.vip));
            let (assigned, why) = match (&current, wanted, have) {
                (None, w, _) => (false, Some(w.err().unwrap_or(Why::AddressFailed))),
                (Some(_), Ok(()), true) => (true, None),
                (Some(_), Ok(()), false) => match self.addrs.add(idx, v.vip).await {
                    Ok(()) => (true, None),
                    Err(e) => {
                        log::error!("cannot announce VIP {}: {e:#}", v.vip);
                        (false, Some(Why::AddressFailed))
                    }
                },
                (Some(_), Err(why), true) => match self.addrs.del(idx, v.vip).await {
                    Ok(()) => (false, Some(why)),
                    Err(e) => {
                        log::error!("cannot withdraw VIP {} ({why}): {e:#}", v.vip);
                        (true, Some(why))
                    }
                },
                (Some(_), Err(why), false) => (false, Some(why)),
            };
            outcome.push((v.vip, assigned, why));
        }
        // Marked addresses of VIPs no longer configured.
        if let Some(cur) = &current {
            for ip in cur
                .iter()
                .filter(|ip| !inputs.vips.iter().any(|v| v.vip == **ip))
            {
                match self.addrs.del(idx, *ip).await {
                    Ok(()) => {
                        log::info!("withdrew VIP {ip}: no announced service uses it any more")
                    }
                    Err(e) => log::warn!("{e:#}"),
                }
            }
        }
        let mut st = lock(&shared.state);
        st.config = Some(inputs.config.clone());
        let mut vips = std::mem::take(&mut st.vips);
        let mut next = BTreeMap::new();
        for (v, (ip, assigned, why)) in inputs.vips.iter().zip(outcome) {
            let mut e = vips.remove(&ip).unwrap_or_else(|| Vip {
                services: Vec::new(),
                // A new VIP: "changed" from not assigned, logged below when assigned.
                assigned: false,
                why: None,
                changed: Instant::now(),
                withdrawn_ms: Some(now),
                traffic: Traffic::default(),
            });
            e.services = v.services.clone();
            e.traffic.observe(now, v.packets);
            if e.assigned != assigned {
                e.changed = Instant::now();
                if assigned {
                    e.withdrawn_ms = None;
                    log::info!(
                        "announcing VIP {ip} on {name} (services {})",
                        v.services.join(", ")
                    );
                } else {
                    e.withdrawn_ms = Some(now);
                    log::info!(
                        "withdrew VIP {ip} (services {}): {}",
                        v.services.join(", "),
                        why.map_or("", Why::as_str)
                    );
                }
            } else if !assigned && e.why != why {
                if let Some(w) = why {
                    log::info!("VIP {ip} not announced: {w}");
                }
            }
            e.assigned = assigned;
            e.why = why;
            next.insert(ip, e);
        }
        st.vips = next;
    }
}

/// Reads the rule's inputs from the agent (none without `[announce]`).
pub type InputsFn = Box<dyn Fn() -> Option<Inputs> + Send + Sync>;

/// Runs the loop: every [`TICK`], on `synced` changing, or when woken; and the daemon's
/// socket every [`DAEMON_EVERY`]. Ends with the runtime.
pub async fn run<A: Addresses + Send + 'static>(
    shared: std::sync::Arc<Announce>,
    mut announcer: Announcer<A>,
    inputs: std::sync::Arc<InputsFn>,
    mut synced: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_daemon: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.wake.notified() => {}
            r = synced.changed() => {
                if r.is_err() {
                    // The sender went (the cluster ended): keep its last value.
                    tokio::time::sleep(TICK).await;
                }
            }
        }
        let f = inputs.clone();
        let got = tokio::task::spawn_blocking(move || f())
            .await
            .ok()
            .flatten();
        let socket = got.as_ref().and_then(|i| i.config.daemon_socket.clone());
        let is_synced = *synced.borrow();
        announcer.step(&shared, got, is_synced).await;
        match socket {
            Some(s) if last_daemon.is_none_or(|t| t.elapsed() >= DAEMON_EVERY) => {
                last_daemon = Some(Instant::now());
                shared.set_daemon(daemon::probe(&s).await);
            }
            Some(_) => {}
            None => {
                let mut st = lock(&shared.state);
                st.daemon = DaemonStatus {
                    socket: None,
                    state: DaemonStatus::NOT_WATCHED.into(),
                    ..Default::default()
                };
            }
        }
    }
}

/// Waits, after a drain started, until every VIP is drained or `timeout`; says which.
pub async fn wait_drained(shared: &Announce, timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        if shared.drained() {
            log::info!(
                "drained in {} ms: no VIP announced, no traffic arriving",
                started.elapsed().as_millis()
            );
            return true;
        }
        if started.elapsed() >= timeout {
            let rates: Vec<String> = shared
                .status()
                .map(|s| {
                    s.vips
                        .iter()
                        .filter(|v| !v.drained)
                        .map(|v| format!("{} {:.0} packets/s", v.vip, v.packets_per_s))
                        .collect()
                })
                .unwrap_or_default();
            log::warn!(
                "drain_timeout ({}) reached with traffic still arriving ({}): exiting; the \
                 data path keeps forwarding it",
                lb_model::duration::format(timeout),
                rates.join(", ")
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Addresses in a set (interface 7 is "lo").
    #[derive(Default)]
    struct Fake {
        set: BTreeSet<IpAddr>,
        fail_add: bool,
    }

    impl Addresses for Fake {
        fn ifindex(&self, name: &str) -> u32 {
            if name == "lo" {
                7
            } else {
                0
            }
        }
        async fn list(&mut self, _: u32) -> anyhow::Result<Vec<IpAddr>> {
            Ok(self.set.iter().copied().collect())
        }
        async fn add(&mut self, _: u32, ip: IpAddr) -> anyhow::Result<()> {
            if self.fail_add {
                anyhow::bail!("no");
            }
            self.set.insert(ip);
            Ok(())
        }
        async fn del(&mut self, _: u32, ip: IpAddr) -> anyhow::Result<()> {
            self.set.remove(&ip);
            Ok(())
        }
    }

    fn inputs(healthy: bool) -> Option<Inputs> {
        Some(Inputs {
            config: AnnounceConfig::default(),
            vips: vec![
                VipInput {
                    vip: "10.0.0.100".parse().unwrap(),
                    services: vec!["web".into()],
                    any_healthy: healthy,
                    packets: 0,
                },
                VipInput {
                    vip: "fd00::100".parse().unwrap(),
                    services: vec!["web6".into()],
                    any_healthy: true,
                    packets: 0,
                },
            ],
        })
    }

    fn why(shared: &Announce, k: usize) -> (bool, Option<Why>) {
        let s = shared.status().unwrap();
        (s.vips[k].assigned, s.vips[k].why)
    }

    #[tokio::test]
    async fn an_unsynced_node_announces_nothing_until_its_watch_says_synced() {
        let dir = std::env::temp_dir().join(format!("slb-ann-{}", std::process::id()));
        let shared = Announce::new(&dir);
        let mut a = Announcer {
            addrs: Fake::default(),
        };
        let (tx, rx) = watch::channel(false);
        a.step(&shared, inputs(true), *rx.borrow()).await;
        assert!(a.addrs.set.is_empty());
        assert_eq!(why(&shared, 0), (false, Some(Why::NotSynced)));
        tx.send(true).unwrap();
        a.step(&shared, inputs(true), *rx.borrow()).await;
        assert_eq!(a.addrs.set.len(), 2);
        assert!(shared.status().unwrap().vips.iter().all(|v| v.announced));
        // One VIP loses its backends: only it goes.
        a.step(&shared, inputs(false), true).await;
        assert_eq!(why(&shared, 0), (false, Some(Why::NoHealthyBackend)));
        assert_eq!(why(&shared, 1), (true, None));
        // Sync lost (a resync): both go.
        a.step(&shared, inputs(true), false).await;
        assert!(a.addrs.set.is_empty());
        // Drain wins over everything, and is kept in the state directory.
        shared.drain(true).unwrap();
        a.step(&shared, inputs(true), true).await;
        assert!(a.addrs.set.is_empty());
        assert_eq!(why(&shared, 1), (false, Some(Why::Draining)));
        assert!(Announce::new(&dir).status().is_none(), "no config yet");
        assert!(
            lock(&Announce::new(&dir).state).draining,
            "drain survives a restart"
        );
        shared.undrain().unwrap();
        assert!(!lock(&Announce::new(&dir).state).draining);
        a.step(&shared, inputs(true), true).await;
        assert_eq!(a.addrs.set.len(), 2);
        // A VIP no longer configured is withdrawn; [announce] removed: all go.
        let mut one = inputs(true).unwrap();
        one.vips.pop();
        a.step(&shared, Some(one), true).await;
        assert_eq!(a.addrs.set.len(), 1);
        a.step(&shared, None, true).await;
        assert!(a.addrs.set.is_empty());
        assert!(shared.status().is_none());
        // An address that cannot be assigned is reported.
        a.addrs.fail_add = true;
        a.step(&shared, inputs(true), true).await;
        assert_eq!(why(&shared, 0), (false, Some(Why::AddressFailed)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
