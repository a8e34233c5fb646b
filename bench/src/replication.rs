//! Part 5: stick-table replication between two nodes (`lb-cluster`), at the crate level:
//! two `Cluster`s in this process on loopback, real TCP and mutual TLS (certificates made
//! here with rcgen), the receiving node's table an in-memory map. Phase 2 of the cluster
//! work measures the same with the agents' BPF maps at both ends.
//!
//! * **Lag**: new clients picked on node A at a steady rate (the agent hands the cluster
//!   its data path's events in batches: here one batch per millisecond), for a few
//!   seconds; the lag of a client is from the moment A was told to the moment B's table
//!   was given the entry. p50, p99 and max, at 1 000 and 50 000 new clients/s.
//! * **Bytes per new client**: bytes A sent B on the wire (TCP payload: TLS records,
//!   frames, definitions, heartbeats, all included) during a lag run, per client.
//! * **Bytes per refreshed client**: clients known to both, then A's scan finds them all
//!   active after a refresh interval: the bytes of that round of refreshes per client.
//! * **Resync**: A holds 1 000 000 entries; B starts empty. The time from B's start to B
//!   being synced (taught everything), and the bytes B received meanwhile.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use lb_cluster::{
    clock::mono_ms, Applied, BackendDef, BackendKey, ClientKey, Cluster, ClusterConfig, Observed,
    ObservedKind, PeerConfig, Proto, ServiceDef, ServiceKey, Sink,
};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// New clients per second of each lag run.
    pub rates: Vec<u64>,
    /// Seconds each lag run lasts.
    pub seconds: f64,
    /// Entries of the resync run.
    pub resync_entries: usize,
    /// Clients of the refresh run.
    pub refresh_clients: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Lag {
    pub rate: u64,
    pub clients: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Bytes A sent B during the run, per new client.
    pub bytes_per_client: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Resync {
    pub entries: usize,
    /// From B's start to B synced.
    pub seconds: f64,
    /// Bytes B received from A meanwhile.
    pub bytes: u64,
    pub bytes_per_entry: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Refresh {
    pub clients: usize,
    pub bytes_per_client: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReplicationReport {
    pub options: Options,
    pub lag: Vec<Lag>,
    pub refresh: Refresh,
    pub resync: Resync,
    pub elapsed_s: f64,
}

/// B's table: when each client first arrived. Sized up front: a real node's table is a
/// BPF map that never resizes, and a resize here would show up as replication lag.
struct Recorder {
    seen: Mutex<HashMap<ClientKey, Instant>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            seen: Mutex::new(HashMap::with_capacity(2_000_000)),
        }
    }
}

impl Sink for Recorder {
    fn apply(&self, entries: &[Applied]) {
        let now = Instant::now();
        let mut s = self.seen.lock().unwrap();
        for e in entries {
            s.entry(e.client).or_insert(now);
        }
    }
}

impl Recorder {
    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

const PORT: u16 = 80;

fn service(expire: Duration) -> ServiceDef {
    ServiceDef {
        key: ServiceKey {
            vip: "198.18.100.100".parse().unwrap(),
            port: PORT,
            proto: Proto::Tcp,
        },
        expire: Some(expire),
        scheduler: "maglev 65537".into(),
        backends: (2..=11u8)
            .map(|n| BackendDef {
                key: backend(n),
                weight: 1,
            })
            .collect(),
    }
}

fn backend(n: u8) -> BackendKey {
    BackendKey {
        addr: IpAddr::from([198, 18, 1, n]),
        port: 8080,
    }
}

fn client(n: u32) -> ClientKey {
    ClientKey::host(IpAddr::from(n.to_be_bytes()))
}

fn pick(svc: &ServiceDef, n: u32, kind: ObservedKind) -> Observed {
    Observed {
        service: svc.key,
        client: client(n),
        backend: backend(2 + (n % 10) as u8),
        last_seen_ms: mono_ms(),
        kind,
    }
}

/// A CA and two node certificates in a temporary directory.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Result<Pki> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::tempdir()?;
        let ca_key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "bench CA");
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = p.self_signed(&ca_key)?;
        std::fs::write(dir.path().join("ca.pem"), ca.pem())?;
        for name in ["lb1", "lb2", "lb3"] {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(vec![name.to_string()])?;
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &ca, &ca_key)?;
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem())?;
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem())?;
        }
        Ok(Pki { dir })
    }
    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn config(
    pki: &Pki,
    me: &str,
    listen: SocketAddr,
    peer: &str,
    at: SocketAddr,
) -> ClusterConfig {
    ClusterConfig {
        node: me.into(),
        listen,
        peers: vec![PeerConfig {
            name: peer.into(),
            address: at,
        }],
        ca: pki.path("ca.pem"),
        cert: pki.path(&format!("{me}.pem")),
        key: pki.path(&format!("{me}.key")),
        heartbeat: Duration::from_secs(1),
        peer_timeout: Duration::from_secs(10),
        sync_timeout: Duration::from_secs(30),
        queue: 1 << 20,
        max_frame: 1 << 20,
        max_entries: 4_000_000,
        conflict_window: Duration::from_secs(1),
    }
}

async fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > limit {
            bail!("replication bench: {what} not reached after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn run(opts: &Options) -> Result<ReplicationReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: &Options) -> Result<ReplicationReport> {
    let started = Instant::now();
    let pki = Pki::new()?;
    let a_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let b_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let svc = service(Duration::from_secs(1800));
    // Expiry 4 s: refresh interval 1 s.
    let short = {
        let mut s = service(Duration::from_secs(4));
        s.key.port = PORT + 1;
        s
    };
    let defs = vec![svc.clone(), short.clone()];
    let a_sink = Arc::new(Recorder::default());
    let a = Cluster::start(config(&pki, "lb1", a_addr, "lb2", b_addr), &defs, a_sink)
        .await
        .context("starting node lb1")?;
    let b_sink = Arc::new(Recorder::default());
    let b = Cluster::start(
        config(&pki, "lb2", b_addr, "lb1", a_addr),
        &defs,
        b_sink.clone(),
    )
    .await
    .context("starting node lb2")?;
    wait("both synced", Duration::from_secs(60), || {
        a.synced() && b.synced()
    })
    .await?;
    let sent_to_b = |a: &Cluster| a.status().peers.first().map_or(0, |p| p.bytes_sent);

    // Lag at each rate.
    let mut lag = Vec::new();
    let mut next = 1u32 << 24;
    for &rate in &opts.rates {
        let total = (rate as f64 * opts.seconds) as u64;
        let first = next;
        next += total as u32 + 1;
        let bytes0 = sent_to_b(&a);
        let mut told: Vec<Instant> = Vec::with_capacity(total as usize);
        let t0 = Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while sent < total {
            tick.tick().await;
            let due = ((t0.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
            if due > sent {
                let batch: Vec<Observed> = (sent..due)
                    .map(|k| pick(&svc, first + k as u32, ObservedKind::Picked))
                    .collect();
                let now = Instant::now();
                a.observe(&batch);
                told.extend(std::iter::repeat_n(now, batch.len()));
                sent = due;
            }
        }
        let recorder = b_sink.clone();
        wait("every entry at the peer", Duration::from_secs(120), || {
            let s = recorder.seen.lock().unwrap();
            (0..total)
                .step_by((total / 16).max(1) as usize)
                .all(|k| s.contains_key(&client(first + k as u32)))
                && s.contains_key(&client(first + total as u32 - 1))
        })
        .await?;
        // Every client: the peer's first sight minus the moment A was told.
        let mut lags: Vec<f64> = {
            let s = b_sink.seen.lock().unwrap();
            (0..total)
                .filter_map(|k| {
                    s.get(&client(first + k as u32)).map(|&seen| {
                        seen.saturating_duration_since(told[k as usize])
                            .as_secs_f64()
                            * 1e3
                    })
                })
                .collect()
        };
        if (lags.len() as u64) < total {
            bail!("{} of {total} clients reached the peer", lags.len());
        }
        lags.sort_by(f64::total_cmp);
        let bytes = sent_to_b(&a) - bytes0;
        let l = Lag {
            rate,
            clients: total,
            p50_ms: percentile(&lags, 0.5),
            p99_ms: percentile(&lags, 0.99),
            max_ms: *lags.last().unwrap(),
            bytes_per_client: bytes as f64 / total as f64,
        };
        println!(
            "replication lag at {rate} new clients/s ({total} clients): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.1} B per new client on the wire",
            l.p50_ms, l.p99_ms, l.max_ms, l.bytes_per_client
        );
        lag.push(l);
    }

    // Refreshes: clients of the short-expiry service (refresh interval 1 s).
    let n = opts.refresh_clients as u32;
    let first = next;
    next += n + 1;
    let batch: Vec<Observed> = (0..n)
        .map(|k| pick(&short, first + k, ObservedKind::Picked))
        .collect();
    a.observe(&batch);
    let recorder = b_sink.clone();
    wait(
        "refresh clients at the peer",
        Duration::from_secs(60),
        || {
            recorder
                .seen
                .lock()
                .unwrap()
                .contains_key(&client(first + n - 1))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let received0 = b.status().peers[0].entries_received;
    let bytes0 = sent_to_b(&a);
    let scan: Vec<Observed> = (0..n)
        .map(|k| pick(&short, first + k, ObservedKind::Scanned))
        .collect();
    a.observe(&scan);
    wait("the refreshes at the peer", Duration::from_secs(60), || {
        b.status().peers[0].entries_received >= received0 + u64::from(n)
    })
    .await?;
    let refresh = Refresh {
        clients: n as usize,
        bytes_per_client: (sent_to_b(&a) - bytes0) as f64 / f64::from(n),
    };
    println!(
        "refresh of {n} clients: {:.1} B per refreshed client on the wire",
        refresh.bytes_per_client
    );

    // Resync: A gets the entries; B restarts empty.
    b.shutdown().await;
    let m = opts.resync_entries as u32;
    let first = next;
    for chunk in (0..m).collect::<Vec<_>>().chunks(65_536) {
        let batch: Vec<Observed> = chunk
            .iter()
            .map(|&k| pick(&svc, first + k, ObservedKind::Picked))
            .collect();
        a.observe(&batch);
    }
    let have = a.with_store(|s| s.len());
    let b_sink = Arc::new(Recorder::default());
    let t0 = Instant::now();
    let b = Cluster::start(
        config(&pki, "lb2", b_addr, "lb1", a_addr),
        &defs,
        b_sink.clone(),
    )
    .await
    .context("restarting node lb2")?;
    wait(
        "lb2 synced after its restart",
        Duration::from_secs(300),
        || b.synced(),
    )
    .await?;
    let seconds = t0.elapsed().as_secs_f64();
    let bytes = b.status().peers[0].bytes_received;
    let got = b_sink.len();
    if got < have {
        bail!("lb2 synced with {got} of {have} entries");
    }
    let resync = Resync {
        entries: have,
        seconds,
        bytes,
        bytes_per_entry: bytes as f64 / have as f64,
    };
    println!(
        "resync of {have} entries: synced {seconds:.2} s after start, {bytes} bytes ({:.1} B per entry)",
        resync.bytes_per_entry
    );
    b.shutdown().await;
    a.shutdown().await;
    Ok(ReplicationReport {
        options: opts.clone(),
        lag,
        refresh,
        resync,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

impl ReplicationReport {
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{:<22} {:>9} {:>9} {:>9} {:>9} {:>12}",
            "replication, new/s", "clients", "p50 ms", "p99 ms", "max ms", "B/new client"
        );
        for l in &self.lag {
            let _ = writeln!(
                out,
                "{:<22} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>12.1}",
                l.rate, l.clients, l.p50_ms, l.p99_ms, l.max_ms, l.bytes_per_client
            );
        }
        let _ = writeln!(
            out,
            "refresh: {:.1} B per refreshed client ({} clients); resync of {} entries: {:.2} s, {} bytes ({:.1} B/entry)",
            self.refresh.bytes_per_client,
            self.refresh.clients,
            self.resync.entries,
            self.resync.seconds,
            self.resync.bytes,
            self.resync.bytes_per_entry
        );
        out
    }

    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n### Replication (crate level)\n\nTwo `lb-cluster` nodes in one process on loopback, TCP \
             and mutual TLS 1.3; node A told of new clients in one batch per millisecond, node B's \
             table in memory (phase 2 measures it with the BPF maps). Bytes are TCP payload A sent \
             B (TLS, frames, definitions and heartbeats included). Took {:.0} s.\n",
            self.elapsed_s
        );
        let _ = writeln!(
            out,
            "| new clients/s | clients | lag p50 | lag p99 | lag max | bytes per new client |\n|---:|---:|---:|---:|---:|---:|"
        );
        for l in &self.lag {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} B |",
                l.rate, l.clients, l.p50_ms, l.p99_ms, l.max_ms, l.bytes_per_client
            );
        }
        let _ = writeln!(
            out,
            "\n| refresh | resync of | resync time (start to synced) | resync bytes | per entry |\n|---:|---:|---:|---:|---:|\n\
             | {:.1} B per refreshed client | {} entries | {:.2} s | {} | {:.1} B |",
            self.refresh.bytes_per_client,
            self.resync.entries,
            self.resync.seconds,
            self.resync.bytes,
            self.resync.bytes_per_entry
        );
        out
    }
}
