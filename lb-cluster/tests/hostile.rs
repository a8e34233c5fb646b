//! Peers are untrusted until authenticated, and a peer's bytes are untrusted always:
//! wrong credentials are refused in the handshake and counted; garbage, oversized and
//! truncated frames, undefined dictionary indexes, other versions and protocol
//! violations end that session and are counted; the node keeps running and keeps
//! replicating with its good peers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use lb_cluster::tls::{server_name, Tls};
use lb_cluster::wire::{Codec, Hello, Message, WireEntry, MAGIC, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::FramedWrite;

async fn pair(pki: &Pki) -> (Node, Spec) {
    let specs = mesh(pki, 2);
    let a = Node::start(specs[0].clone(), &services(0)).await;
    (a, specs[1].clone())
}

/// After all the abuse, lb1 still works: a real lb2 replicates with it.
async fn still_replicates(a: &Node, spec_b: Spec) {
    let b = Node::start(spec_b, &services(0)).await;
    a.cluster.observe(&[pick(svc(80), 77, 3)]);
    wait_for("lb2 replicates with lb1", LIMIT, || {
        b.backend(&svc(80), 77) == Some(be(3))
    })
    .await;
    b.cluster.observe(&[pick(svc(80), 78, 4)]);
    wait_for("lb1 replicates with lb2", LIMIT, || {
        a.backend(&svc(80), 78) == Some(be(4))
    })
    .await;
}

fn hello(node: &str, version: u16) -> Message {
    Message::Hello(Hello {
        magic: MAGIC,
        version,
        node: node.into(),
        services: 2,
        digest: [0; 32],
    })
}

/// A TLS connection to `addr` with `creds`, as node `sni` expects.
async fn tls_to(
    addr: std::net::SocketAddr,
    creds: &Creds,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tls = Tls::load(&creds.ca, &creds.cert, &creds.key).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(tls.client)
        .connect(server_name("lb1").unwrap(), tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_and_counted() {
    let pki = Pki::new("cluster CA");
    let (a, spec_b) = pair(&pki).await;
    let other = Pki::new("another CA");
    let mut refused = 0;

    // A node with a certificate from another CA.
    let mut foreign = spec_b.clone();
    foreign.creds = other.issue("lb2", &["lb2"], false);
    foreign.creds.ca = spec_b.creds.ca.clone(); // it trusts our CA; we do not trust its
    let f = Node::start(foreign, &services(0)).await;
    refused += 1;
    wait_for("foreign certificate refused", LIMIT, || {
        a.cluster.status().refused_handshakes >= refused
    })
    .await;
    assert!(a
        .cluster
        .status()
        .last_refusal
        .unwrap()
        .contains("TLS handshake refused"));
    wait_for("the foreign node sees the TLS failure", LIMIT, || {
        f.peer("lb1").outbound.last_error.is_some() && f.peer("lb1").outbound.sessions == 0
    })
    .await;
    f.cluster.shutdown().await;

    // Our CA, but the certificate names lb9 while the hello says lb2.
    let liar = pki.issue("liar", &["lb9"], false);
    let mut s = tls_to(a.spec.listen, &liar).await.unwrap();
    let mut w = FramedWrite::new(&mut s, Codec::new(1 << 20));
    w.send(hello("lb2", PROTOCOL_VERSION)).await.unwrap();
    refused += 1;
    wait_for("a certificate naming another node refused", LIMIT, || {
        a.cluster.status().refused_handshakes >= refused
    })
    .await;
    assert!(
        a.cluster
            .status()
            .last_refusal
            .unwrap()
            .contains("does not name \"lb2\""),
        "{:?}",
        a.cluster.status().last_refusal
    );

    // Our CA, expired.
    let expired = pki.issue("expired", &["lb2"], true);
    let r = tls_to(a.spec.listen, &expired).await;
    // TLS 1.3: the client may only learn of the refusal on its first read.
    if let Ok(mut s) = r {
        let _ = s.write_all(b"x").await;
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf).await;
    }
    refused += 1;
    wait_for("an expired certificate refused", LIMIT, || {
        a.cluster.status().refused_handshakes >= refused
    })
    .await;
    assert!(a
        .cluster
        .status()
        .last_refusal
        .unwrap()
        .to_lowercase()
        .contains("expired"));

    // No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&spec_b.creds.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    use rustls::pki_types::pem::PemObject as _;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(a.spec.listen).await.unwrap();
    if let Ok(mut s) = TlsConnector::from(Arc::new(cfg))
        .connect(server_name("lb1").unwrap(), tcp)
        .await
    {
        let _ = s.write_all(b"x").await;
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf).await;
    }
    refused += 1;
    wait_for("no client certificate refused", LIMIT, || {
        a.cluster.status().refused_handshakes >= refused
    })
    .await;

    // Not TLS at all.
    let mut tcp = TcpStream::connect(a.spec.listen).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: lb1\r\n\r\n")
        .await
        .unwrap();
    refused += 1;
    wait_for("plain text refused", LIMIT, || {
        a.cluster.status().refused_handshakes >= refused
    })
    .await;

    assert_eq!(a.entries(), 0, "nothing from any of them got in");
    still_replicates(&a, spec_b).await;
}

/// Each abuse in turn, from an authenticated lb2 that then misbehaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_end_the_session_and_are_counted() {
    let pki = Pki::new("cluster CA");
    let (a, spec_b) = pair(&pki).await;
    let creds = spec_b.creds.clone();

    let entry = WireEntry {
        service: 0,
        client: client(1),
        backend: 0,
        age_ms: 0,
        stamp: 1,
    };
    let hello_frame = {
        let mut b = bytes::BytesMut::new();
        tokio_util::codec::Encoder::encode(
            &mut Codec::new(1 << 20),
            hello("lb2", PROTOCOL_VERSION),
            &mut b,
        )
        .unwrap();
        b.to_vec()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            [&[0, 0, 0, 8][..], &[0xff; 8]].concat(),
            "malformed",
        ),
        ("oversized", vec![0x7f, 0xff, 0xff, 0xff], "over the limit"),
        (
            "truncated",
            [&[0, 0, 0, 100][..], &[1; 10]].concat(),
            "ended inside a frame",
        ),
        (
            "trailing bytes",
            {
                let body = lb_cluster::wire::encode_message(&Message::Heartbeat { queued: 0 });
                let mut f = ((body.len() + 2) as u32).to_be_bytes().to_vec();
                f.extend(body);
                f.extend([0, 0]);
                f
            },
            "trailing",
        ),
        (
            "undefined index",
            frame(&Message::Entries {
                entries: vec![entry],
            }),
            "not defined",
        ),
        (
            "teach entries without a teach",
            frame(&Message::Teach { entries: vec![] }),
            "without a teach",
        ),
        ("a second hello", hello_frame.clone(), "second hello"),
        (
            "bad client prefix",
            [
                frame(&Message::DefineService {
                    index: 0,
                    key: svc(80),
                }),
                frame(&Message::DefineBackend {
                    index: 0,
                    key: be(2),
                }),
                frame(&Message::Entries {
                    entries: vec![WireEntry {
                        client: lb_cluster::ClientKey {
                            addr: "10.0.0.1".parse().unwrap(),
                            prefix: 8,
                        },
                        ..entry
                    }],
                }),
            ]
            .concat(),
            "bits past its prefix",
        ),
    ];
    let mut expected = 0;
    for (what, bytes, needle) in cases {
        let mut s = tls_to(a.spec.listen, &creds).await.unwrap();
        s.write_all(&hello_frame).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        s.flush().await.unwrap();
        if what == "truncated" {
            s.shutdown().await.unwrap();
        }
        expected += 1;
        wait_for(what, LIMIT, || a.peer("lb2").refusals >= expected).await;
        let err = a.peer("lb2").inbound.last_error.unwrap_or_default();
        assert!(err.contains(needle), "{what}: {err}");
        // The session is closed: reading ends.
        let mut buf = vec![0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{what}: session not closed");
    }

    // Another protocol version: refused with a reason naming both versions.
    let mut s = tls_to(a.spec.listen, &creds).await.unwrap();
    let mut w = FramedWrite::new(&mut s, Codec::new(1 << 20));
    w.send(hello("lb2", PROTOCOL_VERSION + 1)).await.unwrap();
    expected += 1;
    wait_for("another version refused", LIMIT, || {
        a.peer("lb2").refusals >= expected
    })
    .await;
    assert!(a
        .peer("lb2")
        .inbound
        .last_error
        .unwrap()
        .contains("protocol version 2"));

    // Silence after the hello: the session times out.
    let mut s = tls_to(a.spec.listen, &creds).await.unwrap();
    s.write_all(&hello_frame).await.unwrap();
    expected += 1;
    wait_for("a silent peer times out", LIMIT, || {
        a.peer("lb2").refusals >= expected
    })
    .await;
    assert!(a
        .peer("lb2")
        .inbound
        .last_error
        .unwrap()
        .contains("nothing received"));

    assert_eq!(a.entries(), 0);
    still_replicates(&a, spec_b).await;
}

/// A flood of connections that never finish their handshake holds a bounded number of
/// slots (8 per address): the rest are closed at once and counted; once they are gone, a
/// real peer gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_bounded() {
    let pki = Pki::new("cluster CA");
    let (a, spec_b) = pair(&pki).await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(a.spec.listen).await.unwrap());
    }
    wait_for("the surplus closed at once and counted", LIMIT, || {
        a.cluster.status().refused_handshakes >= 32
    })
    .await;
    assert!(a
        .cluster
        .status()
        .last_refusal
        .unwrap()
        .contains("too many connections in their handshake"));
    drop(idle);
    still_replicates(&a, spec_b).await;
}

fn frame(m: &Message) -> Vec<u8> {
    let body = lb_cluster::wire::encode_message(m);
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend(body);
    f
}
