//! Test harness for replication between real nodes on loopback: a test PKI made with
//! rcgen, a stick table in memory (the [`Sink`]), nodes started on free ports, and a
//! TCP proxy that can cut, pause or slow one direction of the links between two nodes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lb_cluster::{
    clock::mono_ms, Applied, BackendDef, BackendKey, ClientKey, Cluster, ClusterConfig, Observed,
    ObservedKind, PeerConfig, Proto, ServiceDef, ServiceKey, Sink,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A cluster CA and the certificates it signs, as PEM files in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// Paths of one node's credentials.
#[derive(Clone, Debug)]
pub struct Creds {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(cn: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = p.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `names` (DNS SANs), valid now unless `expired`.
    pub fn issue(&self, file: &str, names: &[&str], expired: bool) -> Creds {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Creds {
            ca: self.ca_path(),
            cert: cert_path,
            key: key_path,
        }
    }
}

/// The stick table of a test node: what the cluster applied.
#[derive(Default)]
pub struct MemSink {
    pub table: Mutex<HashMap<(ServiceKey, ClientKey), Applied>>,
    pub applied: AtomicU64,
    /// When each client was first applied (for lag measurements).
    pub first_seen: Mutex<HashMap<ClientKey, Instant>>,
}

impl Sink for MemSink {
    fn apply(&self, entries: &[Applied]) {
        let now = Instant::now();
        let mut t = self.table.lock().unwrap();
        let mut f = self.first_seen.lock().unwrap();
        for e in entries {
            t.insert((e.service, e.client), *e);
            f.entry(e.client).or_insert(now);
        }
        self.applied
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
    }
}

impl MemSink {
    pub fn backend_of(&self, s: &ServiceKey, c: &ClientKey) -> Option<BackendKey> {
        self.table.lock().unwrap().get(&(*s, *c)).map(|a| a.backend)
    }
    pub fn len(&self) -> usize {
        self.table.lock().unwrap().len()
    }
}

pub fn svc(port: u16) -> ServiceKey {
    ServiceKey {
        vip: "198.18.100.100".parse().unwrap(),
        port,
        proto: Proto::Tcp,
    }
}

pub fn be(n: u8) -> BackendKey {
    BackendKey {
        addr: format!("198.18.1.{n}").parse().unwrap(),
        port: 8080,
    }
}

/// Client `n` (up to 2^24): 10.x.y.z.
pub fn client(n: u32) -> ClientKey {
    let [_, a, b, c] = n.to_be_bytes();
    ClientKey::host(std::net::IpAddr::from([10, a, b, c]))
}

/// Service on port 80 with backends 2, 3, 4 (and `extra` more from 5), expiry 30 min.
pub fn services(extra: u8) -> Vec<ServiceDef> {
    vec![
        ServiceDef {
            key: svc(80),
            expire: Some(Duration::from_secs(1800)),
            scheduler: "roundrobin".into(),
            backends: (2..5 + extra)
                .map(|n| BackendDef {
                    key: be(n),
                    weight: 1,
                })
                .collect(),
        },
        ServiceDef {
            key: svc(443),
            expire: Some(Duration::from_secs(1800)),
            scheduler: "maglev 65537".into(),
            backends: (2..5)
                .map(|n| BackendDef {
                    key: be(n),
                    weight: 1,
                })
                .collect(),
        },
    ]
}

/// A pick of `backend` for `client` of `service`, seen now.
pub fn pick(service: ServiceKey, c: u32, backend: u8) -> Observed {
    Observed {
        service,
        client: client(c),
        backend: be(backend),
        last_seen_ms: mono_ms(),
        kind: ObservedKind::Picked,
    }
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a node needs to start.
#[derive(Clone)]
pub struct Spec {
    pub name: String,
    pub listen: SocketAddr,
    pub creds: Creds,
    pub peers: Vec<PeerConfig>,
    pub sync_timeout: Duration,
    pub queue: usize,
}

impl Spec {
    pub fn config(&self) -> ClusterConfig {
        ClusterConfig {
            node: self.name.clone(),
            listen: self.listen,
            peers: self.peers.clone(),
            ca: self.creds.ca.clone(),
            cert: self.creds.cert.clone(),
            key: self.creds.key.clone(),
            heartbeat: Duration::from_millis(200),
            peer_timeout: Duration::from_secs(3),
            sync_timeout: self.sync_timeout,
            queue: self.queue,
            max_frame: 1 << 20,
            max_entries: 4_000_000,
            conflict_window: Duration::from_secs(1),
        }
    }
}

/// A running node.
pub struct Node {
    pub spec: Spec,
    pub cluster: Cluster,
    pub sink: Arc<MemSink>,
}

impl Node {
    pub async fn start(spec: Spec, defs: &[ServiceDef]) -> Node {
        let sink = Arc::new(MemSink::default());
        let cluster = Cluster::start(spec.config(), defs, sink.clone())
            .await
            .unwrap_or_else(|e| panic!("starting {}: {e:#}", spec.name));
        Node {
            spec,
            cluster,
            sink,
        }
    }

    /// What the data path does on a pick: writes its map, then the event reaches the
    /// cluster (whose answer, values to write again, goes to the map too).
    pub fn picks(&self, picks: &[Observed]) {
        {
            let mut t = self.sink.table.lock().unwrap();
            for o in picks {
                t.insert(
                    (o.service, o.client),
                    Applied {
                        service: o.service,
                        client: o.client,
                        backend: o.backend,
                        last_seen_ms: o.last_seen_ms,
                    },
                );
            }
        }
        let rewrites = self.cluster.observe(picks);
        self.sink.apply(&rewrites);
    }

    /// The backend this node's store holds for a client.
    pub fn backend(&self, s: &ServiceKey, c: u32) -> Option<BackendKey> {
        self.cluster
            .with_store(|st| st.get(s, &client(c)).map(|e| e.backend))
    }

    pub fn entries(&self) -> usize {
        self.cluster.with_store(|s| s.len())
    }

    pub fn peer(&self, name: &str) -> lb_cluster::PeerStatus {
        self.cluster
            .status()
            .peers
            .into_iter()
            .find(|p| p.name == name)
            .unwrap()
    }
}

/// Names `lb1`..`lbN`, listen addresses and credentials for a full mesh of `n` nodes;
/// `via(i, j)` may replace the address node i uses to reach node j (a proxy).
pub fn mesh(pki: &Pki, n: usize) -> Vec<Spec> {
    let listens: Vec<SocketAddr> = (0..n)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    (0..n)
        .map(|i| Spec {
            name: format!("lb{}", i + 1),
            listen: listens[i],
            creds: pki.issue(&format!("lb{}", i + 1), &[&format!("lb{}", i + 1)], false),
            peers: (0..n)
                .filter(|&j| j != i)
                .map(|j| PeerConfig {
                    name: format!("lb{}", j + 1),
                    address: listens[j],
                })
                .collect(),
            sync_timeout: Duration::from_secs(2),
            queue: 262_144,
        })
        .collect()
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Generous: CI machines are busy; nothing asserts on time.
pub const LIMIT: Duration = Duration::from_secs(180);

/// State of a proxy direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Open,
    /// Stop reading (the sender's buffers fill and its writes block).
    Paused,
    /// Close every connection and refuse new ones.
    Cut,
}

/// A TCP proxy in front of one node's listener, used by one other node: it can pause the
/// dialer → listener direction, or cut everything.
pub struct Proxy {
    pub addr: SocketAddr,
    state: watch::Sender<Flow>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, rx) = watch::channel(Flow::Open);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if *rx.borrow() == Flow::Cut {
                    drop(inbound);
                    continue;
                }
                let rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::select! {
                        _ = pump(ir, ow, rx.clone(), true) => {}
                        _ = pump(or, iw, rx.clone(), false) => {}
                    }
                });
            }
        });
        Proxy { addr, state, task }
    }

    pub fn set(&self, f: Flow) {
        self.state.send_replace(f);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction; `forward` is dialer → listener (the one `Paused` stops).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<Flow>,
    forward: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let s = *state.borrow_and_update();
        match s {
            Flow::Cut => return,
            Flow::Paused if forward => {
                if state.changed().await.is_err() {
                    return;
                }
                continue;
            }
            _ => {}
        }
        tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
            },
            r = state.changed() => if r.is_err() { return },
        }
    }
}
