//! Part 6: replication through the agents' real maps (issue 12, phase 2). Two data paths
//! loaded in this process (each in its own lab namespace, stick-table events on), each
//! with the agent's own replication (`lb_agent::agent::replication::Replication`: the
//! events ring read through `AsyncFd`, `lb-cluster` over mutual TLS on loopback, the
//! sink writing the peer's stick table).
//!
//! * **Lag**: new clients sent through node A's XDP program (`BPF_PROG_TEST_RUN`, one
//!   SYN per client at a steady rate); the lag of a client is from the moment its packet
//!   went through A's program (which inserted the entry and emitted the event) to the
//!   moment B's sink has written the entry into B's stick table. p50/p99/max at 1 000
//!   and 50 000 new clients/s; bytes A sent per client.
//! * **Resync**: A's map holds `resync_entries` entries (written directly, then A's scan
//!   puts them into its store); node C starts empty: the time from C's start until C's
//!   map holds them all, and the bytes C received.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsFd as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{IterableMap as _, MapData};
use aya::programs::TestRun as _;
use lb_agent::{
    agent::replication::{Handles, Replication},
    loader::LoadOptions,
};
use lb_cluster::{ClientKey, ClusterConfig, PeerConfig};
use lb_common::{addr_from_ip, StickKey, StickValue};
use lb_model::config::Config;
use serde::Serialize;
use stickylb_tests::{
    lab::Lab,
    packets::{Pkt, L4},
};

use crate::replication::{config, free_port, percentile, Pki};

#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub rates: Vec<u64>,
    pub seconds: f64,
    pub resync_entries: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct MapLag {
    pub rate: u64,
    pub clients: u64,
    /// Clients whose entry reached B's map.
    pub arrived: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub bytes_per_client: f64,
    /// Events the data path could not emit (ring full).
    pub events_lost: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MapResync {
    pub entries: usize,
    /// From C's start (its data path loaded, its replication started) until its map
    /// holds every entry.
    pub seconds: f64,
    /// Of which loading C's data path (namespace, object, programs verified) and
    /// starting its replication, before the first byte of the teach.
    pub start_s: f64,
    pub bytes: u64,
    pub bytes_per_entry: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentsReport {
    pub options: Options,
    pub lag: Vec<MapLag>,
    pub resync: MapResync,
    pub elapsed_s: f64,
}

const SERVICE: &str = "[[service]]\nname = \"web\"\nlisten = \"198.18.100.100:80\"\n\
    scheduler = \"maglev\"\nstick_table = { size = 4000000, expire = \"30m\" }\n\
    [[service.backend]]\naddress = \"198.18.1.2:8080\"\n\
    [[service.backend]]\naddress = \"198.18.1.3:8080\"\n\
    [[service.backend]]\naddress = \"198.18.1.4:8080\"\n";

/// Client `n` (10.0.0.0/8).
fn client(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff))
}

/// A lab data path with events on and its replication.
struct Node {
    lab: Lab,
    repl: Arc<Replication>,
}

async fn node(cfg: ClusterConfig, config: &Config, capacity: u32) -> Result<Node> {
    let mut lab = Lab::with_options(&LoadOptions {
        stick_table_size: capacity,
        stick_events: true,
        stick_event_slots: Some(1 << 17),
        ..Default::default()
    })?;
    lab.configure(&config.specs())?;
    let ring = lb_agent::event_ring::EventRing::take(&mut lab.ebpf)?;
    let lost = lab
        .ebpf
        .take_map(lb_common::MAP_STICK_EVENTS_LOST)
        .context("STICK_EVENTS_LOST")?
        .try_into()?;
    let stick = MapData::from_fd(lab.dp.stick.map().fd().as_fd().try_clone_to_owned()?)?;
    let handles = Handles {
        stick,
        ring,
        lost,
        writer: lb_agent::loader::stick_writer(&lab.ebpf),
    };
    let repl = Replication::start(cfg, config, &lab.ids, handles, capacity as usize).await?;
    Ok(Node { lab, repl })
}

fn peer_bytes(r: &Replication, sent: bool) -> u64 {
    r.cluster
        .status()
        .peers
        .iter()
        .map(|p| if sent { p.bytes_sent } else { p.bytes_received })
        .sum()
}

async fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > limit {
            bail!("part 6: {what} not reached after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

pub fn run(opts: &Options) -> Result<AgentsReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: &Options) -> Result<AgentsReport> {
    let started = Instant::now();
    let services = lb_model::config::parse(SERVICE, "bench")?;
    let pki = Pki::new()?;
    let (pa, pb, pc) = (free_port()?, free_port()?, free_port()?);
    let at = |p: u16| SocketAddr::new(IpAddr::from([127, 0, 0, 1]), p);
    let mut cfg_a = config(&pki, "lb1", at(pa), "lb2", at(pb));
    cfg_a.peers.push(PeerConfig {
        name: "lb3".into(),
        address: at(pc),
    });
    let cfg_b = config(&pki, "lb2", at(pb), "lb1", at(pa));
    let cfg_c = config(&pki, "lb3", at(pc), "lb1", at(pa));
    let capacity = (opts.resync_entries as u32 + 400_000).max(1 << 20);
    let mut a = node(cfg_a, &services, capacity).await?;
    let b = node(cfg_b, &services, capacity).await?;
    wait("B taught by A", Duration::from_secs(60), || {
        b.repl.cluster.status().peers.iter().all(|p| p.taught_us)
    })
    .await?;

    // Lag: B's sink records when each client's entry is in B's map.
    type Arrivals = Arc<Mutex<HashMap<ClientKey, Instant>>>;
    let arrived: Arrivals = Arc::new(Mutex::new(HashMap::with_capacity(1 << 20)));
    {
        let arrived = arrived.clone();
        b.repl.set_probe(Box::new(move |batch| {
            let now = Instant::now();
            let mut m = arrived.lock().unwrap_or_else(|e| e.into_inner());
            for e in batch {
                m.entry(e.client).or_insert(now);
            }
        }));
    }
    let vip: IpAddr = "198.18.100.100".parse()?;
    let mut next = 0u32;
    let mut lag = Vec::new();
    for &rate in &opts.rates {
        let n = (rate as f64 * opts.seconds) as u32;
        let pkts: Vec<(u32, Vec<u8>)> = (next..next + n)
            .map(|i| {
                let src = IpAddr::V4(client(i + 1));
                (i, Pkt::new(L4::Tcp, src, 40000, vip, 80).bytes())
            })
            .collect();
        next += n;
        let bytes_before = peer_bytes(&a.repl, true);
        // Clients recorded so far (every client of this rate is new): the wait below
        // compares counts, so that it holds the probe's lock only for an instant.
        let arrived_before = arrived.lock().unwrap_or_else(|e| e.into_inner()).len();
        let lost_before = a.repl.events_lost();
        // Sent from a blocking thread (the program runs in A's namespace), paced per ms.
        let sent: Vec<(ClientKey, Instant)> = {
            let lab = &mut a.lab;
            tokio::task::block_in_place(|| -> Result<Vec<(ClientKey, Instant)>> {
                let prog: &aya::programs::Xdp = lb_agent::loader::program(&mut lab.ebpf)?;
                lab.ns.enter(|| {
                    let mut out = Vec::with_capacity(pkts.len());
                    let t0 = Instant::now();
                    // Paced per millisecond (a sleep between batches, not a spin: the
                    // reader and the sessions need the CPUs too).
                    let per_ms = (rate / 1000).max(1) as usize;
                    for (b, chunk) in pkts.chunks(per_ms).enumerate() {
                        let due = Duration::from_secs_f64(b as f64 * per_ms as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(t0.elapsed()) {
                            std::thread::sleep(wait);
                        }
                        for (i, p) in chunk {
                            let mut buf = vec![0u8; p.len() + 256];
                            // The entry is inserted during the run: its lag starts here.
                            let at = Instant::now();
                            prog.test_run(aya::programs::TestRunOptions {
                                data_in: Some(p),
                                data_out: Some(&mut buf),
                                ..Default::default()
                            })?;
                            out.push((ClientKey::host(IpAddr::V4(client(i + 1))), at));
                        }
                    }
                    Ok(out)
                })
            })?
        };
        let want = sent.len();
        let _ = wait(
            "B's map holds every new client",
            Duration::from_secs(30),
            || arrived.lock().unwrap_or_else(|e| e.into_inner()).len() >= arrived_before + want,
        )
        .await;
        let m = arrived.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut lags: Vec<f64> = sent
            .iter()
            .filter_map(|(c, t)| {
                m.get(c)
                    .map(|at| at.saturating_duration_since(*t).as_secs_f64() * 1e3)
            })
            .collect();
        lags.sort_by(f64::total_cmp);
        lag.push(MapLag {
            rate,
            clients: n as u64,
            arrived: lags.len() as u64,
            p50_ms: percentile(&lags, 0.5),
            p99_ms: percentile(&lags, 0.99),
            max_ms: lags.last().copied().unwrap_or(f64::NAN),
            bytes_per_client: (peer_bytes(&a.repl, true) - bytes_before) as f64 / (n as f64), // C is not started yet: only B's link carries traffic
            events_lost: a.repl.events_lost() - lost_before,
        });
    }
    drop(b);

    // Resync: fill A's map directly up to `resync_entries`, scan it into A's store, start C.
    let have = next as usize;
    let sid = a.lab.ids.service_id("web").context("service id")?;
    let bid = a
        .lab
        .ids
        .backend_id("web", "198.18.1.2:8080".parse()?)
        .context("backend id")?;
    let now_ns = lb_cluster::clock::mono_ns();
    for i in have..opts.resync_entries {
        let k = StickKey {
            service_id: sid,
            client: addr_from_ip(IpAddr::V4(client(i as u32 + 1))).0,
        };
        let v = StickValue {
            backend_id: bid,
            _pad: 0,
            last_seen_ns: now_ns,
        };
        a.lab.dp.stick.insert(&k, &v, 0)?;
    }
    {
        let repl = a.repl.clone();
        let entries = a.lab.dp.stick_entries();
        tokio::task::block_in_place(|| {
            let mut scan = repl.scan();
            for (k, v) in &entries {
                scan.entry(k, v);
            }
        });
    }
    let in_store = a.repl.cluster.status().entries as usize;
    let t = Instant::now();
    let c = node(cfg_c, &services, capacity).await?;
    let start_s = t.elapsed().as_secs_f64();
    wait("C holds A's table", Duration::from_secs(300), || {
        c.repl.written() as usize >= in_store && c.repl.cluster.synced()
    })
    .await?;
    let seconds = t.elapsed().as_secs_f64();
    let bytes = peer_bytes(&c.repl, false);
    Ok(AgentsReport {
        options: opts.clone(),
        lag,
        resync: MapResync {
            entries: in_store,
            seconds,
            start_s,
            bytes,
            bytes_per_entry: bytes as f64 / in_store.max(1) as f64,
        },
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

impl AgentsReport {
    pub fn text(&self) -> String {
        let mut out = String::from("\npart 6, replication through the agents' maps (events ring → TLS → peer's stick table)\n");
        for l in &self.lag {
            out.push_str(&format!(
                "  {:>6} new clients/s: {} of {} arrived; lag p50 {:.2} ms p99 {:.2} ms max {:.2} ms; {:.1} B/client; events lost {}\n",
                l.rate, l.arrived, l.clients, l.p50_ms, l.p99_ms, l.max_ms, l.bytes_per_client, l.events_lost
            ));
        }
        out.push_str(&format!(
            "  resync of {} entries into an empty node's map: {:.2} s ({:.2} s of it loading the node), {} bytes ({:.1} B/entry)\n",
            self.resync.entries,
            self.resync.seconds,
            self.resync.start_s,
            self.resync.bytes,
            self.resync.bytes_per_entry
        ));
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from("\n### Replication through the agents' maps (part 6)\n\n| figure | measured |\n|---|---:|\n");
        for l in &self.lag {
            out.push_str(&format!(
                "| lag at {} new clients/s (A's program → B's map), p50 / p99 / max | {:.2} / {:.2} / {:.2} ms ({} of {} arrived) |\n| bytes per new client at {} /s | {:.1} B |\n",
                l.rate, l.p50_ms, l.p99_ms, l.max_ms, l.arrived, l.clients, l.rate, l.bytes_per_client
            ));
        }
        out.push_str(&format!(
            "| resync of {} entries into an empty node's map (of it, loading the node) | {:.2} s ({:.2} s), {:.1} B/entry |\n",
            self.resync.entries, self.resync.seconds, self.resync.start_s, self.resync.bytes_per_entry
        ));
        out
    }
}
