//! HTTPS health checks (`kind = "https"`, HAProxy's `check-ssl`) against real TLS servers
//! (tokio-rustls) in a network namespace, with certificates made here by rcgen: one signed
//! by a test CA the checks are told to trust (`ca`), an expired one signed by the same CA,
//! a self-signed one and one issued to another name. Each is checked with verification on
//! (the default) and off (`verify = false`). The `Host` header and the server name (SNI)
//! the checks send are recorded by the servers.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use lb_agent::health::{HealthChecker, Target, TargetKey, Transition};
use lb_model::spec::{HealthConfig, HealthKind, HttpCheck, TlsCheck};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use stickylb_tests::Netns;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc::{unbounded_channel, UnboundedReceiver},
};

/// The server's address in the namespace (on its loopback).
const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The name the "valid" certificates are issued to.
const NAME: &str = "api.example.test";

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Result<Ca> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "stickylb test CA");
    let cert = p.self_signed(&key)?;
    Ok(Ca { cert, key })
}

/// A server certificate for `names` (and the server's IP), signed by `ca` or, without
/// one, by itself; `expired` makes it valid in 2020 only.
fn leaf(
    ca: Option<&Ca>,
    names: &[&str],
    expired: bool,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    p.subject_alt_names.push(SanType::IpAddress(SERVER_IP));
    p.distinguished_name.push(DnType::CommonName, names[0]);
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 12, 31);
    }
    let cert = match ca {
        Some(ca) => p.signed_by(&key, &ca.cert, &ca.key)?,
        None => p.self_signed(&key)?,
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![cert.der().clone()], key))
}

/// What a server saw of the last check: the request head and the SNI.
#[derive(Default)]
struct Seen {
    request: String,
    sni: Option<String>,
}

/// A TLS server answering every request with 200; returns its address.
async fn serve(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    seen: Arc<Mutex<Seen>>,
) -> Result<SocketAddr> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(SocketAddr::new(SERVER_IP, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                // A failed handshake (the check refused the certificate) ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_string);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                *seen.lock().unwrap() = Seen {
                    request: String::from_utf8_lossy(&buf).into_owned(),
                    sni,
                };
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok(addr)
}

fn https(ca: &Path, verify: bool, host: Option<&str>) -> HealthConfig {
    HealthConfig {
        kind: HealthKind::Https(
            HttpCheck {
                path: "/healthz".into(),
                expect_status: None,
                host: host.map(String::from),
            },
            TlsCheck {
                verify,
                ca: verify.then(|| ca.to_path_buf()),
                sni: None,
            },
        ),
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        rise: 1,
        fall: 1,
    }
}

/// The first transition of each of `services` (events of others are kept for later).
async fn transitions(
    rx: &mut UnboundedReceiver<Transition>,
    services: &[String],
) -> Result<std::collections::BTreeMap<String, Transition>> {
    let mut got = std::collections::BTreeMap::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while services.iter().any(|s| !got.contains_key(s)) {
            let t = rx.recv().await.context("checker gone")?;
            got.entry(t.key.service.clone()).or_insert(t);
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .with_context(|| format!("transitions seen: {:?}", got.keys().collect::<Vec<_>>()))??;
    Ok(got)
}

#[test]
fn https_checks_verify_certificates_unless_told_not_to() {
    let ns = Netns::new("tls").unwrap();
    let dir = std::env::temp_dir().join(format!("stickylb-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ca().unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let result = ns.enter(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut servers = Vec::new();
            for (what, cert) in [
                ("valid", leaf(Some(&ca), &[NAME], false)?),
                ("expired", leaf(Some(&ca), &[NAME], true)?),
                ("self-signed", leaf(None, &[NAME], false)?),
                (
                    "other-name",
                    leaf(Some(&ca), &["other.example.test"], false)?,
                ),
            ] {
                let seen = Arc::new(Mutex::new(Seen::default()));
                let addr = serve(cert.0, cert.1, seen.clone()).await?;
                servers.push((what, addr, seen));
            }
            // (server, verify, Host, should be healthy, the reason a refusal must give)
            let cases: &[(&str, bool, Option<&str>, bool, &str)] = &[
                ("valid", true, Some(NAME), true, ""),
                ("valid", true, None, true, ""),
                ("valid", false, Some(NAME), true, ""),
                ("expired", true, Some(NAME), false, "certificate expired"),
                ("expired", false, Some(NAME), true, ""),
                ("self-signed", true, Some(NAME), false, "issuer"),
                ("self-signed", false, Some(NAME), true, ""),
                ("other-name", true, Some(NAME), false, "not valid for name"),
                ("other-name", false, Some(NAME), true, ""),
            ];
            let (tx, mut rx) = unbounded_channel();
            let checker = HealthChecker::new(tx);
            let mut targets = Vec::new();
            for (i, (server, verify, host, _, _)) in cases.iter().enumerate() {
                let addr = servers.iter().find(|s| s.0 == *server).unwrap().1;
                targets.push(Target {
                    key: TargetKey {
                        service: format!("case{i}"),
                        backend: addr,
                    },
                    check_addr: addr,
                    config: https(&ca_file, *verify, *host),
                });
            }
            // Each target starts in the state it must leave: the first check decides.
            checker.set_targets(targets, &|k| {
                let i: usize = k.service[4..].parse().unwrap();
                !cases[i].3
            });
            let names: Vec<String> = (0..cases.len()).map(|i| format!("case{i}")).collect();
            let got = transitions(&mut rx, &names).await?;
            for (i, (server, verify, host, healthy, reason)) in cases.iter().enumerate() {
                let what = format!("{server} certificate, verify = {verify}, host {host:?}");
                let t = &got[&names[i]];
                assert_eq!(t.up, *healthy, "{what}: {t:?}");
                assert!(
                    t.reason.to_lowercase().contains(&reason.to_lowercase()),
                    "{what}: {}",
                    t.reason
                );
                eprintln!("{what}: {}", t.reason);
                if !healthy {
                    assert!(
                        t.reason.contains("TLS handshake failed"),
                        "{what}: {}",
                        t.reason
                    );
                }
            }
            // What the servers saw: HTTP/1.1, the Host header, and the SNI it implies.
            let request = servers[0].2.lock().unwrap().request.clone();
            assert!(
                request.starts_with("GET /healthz HTTP/1.1\r\n"),
                "{request}"
            );
            assert!(
                request.contains("User-Agent: stickylb-health\r\n"),
                "{request}"
            );
            drop(checker);
            // A check with the Host header, on its own: the server sees that header and
            // that server name.
            let (tx, mut rx) = unbounded_channel();
            let checker = HealthChecker::new(tx);
            let addr = servers[0].1;
            for (service, host) in [("named", Some(NAME)), ("by-address", None)] {
                *servers[0].2.lock().unwrap() = Seen::default();
                checker.set_targets(
                    vec![Target {
                        key: TargetKey {
                            service: service.into(),
                            backend: addr,
                        },
                        check_addr: addr,
                        config: https(&ca_file, true, host),
                    }],
                    &|_| false,
                );
                let got = transitions(&mut rx, &[service.to_string()]).await?;
                let t = &got[service];
                assert!(t.up, "{t:?}");
                let (request, sni) = {
                    let seen = servers[0].2.lock().unwrap();
                    (seen.request.clone(), seen.sni.clone())
                };
                match host {
                    Some(h) => {
                        assert!(request.contains(&format!("\r\nHost: {h}\r\n")), "{request}");
                        assert_eq!(sni.as_deref(), Some(h));
                    }
                    None => {
                        // No name: Host is the checked address, no SNI, the IP SAN verified.
                        assert!(
                            request.contains(&format!("\r\nHost: {addr}\r\n")),
                            "{request}"
                        );
                        assert_eq!(sni, None);
                    }
                }
            }
            Ok(())
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap();
}
