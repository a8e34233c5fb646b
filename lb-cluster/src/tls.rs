//! Mutual TLS between peers, on rustls (TLS 1.3 only, the `ring` provider).
//!
//! Why TLS rather than Noise (`snow`): operators already run a PKI for their servers and
//! know how to issue, rotate and revoke certificates with it; a cluster CA plus one
//! certificate per node is the whole setup, and adding a node needs no change on the
//! others (with Noise, every node would have to list every peer's static key). rustls is
//! the project's TLS library, already used for HTTPS health checks.
//!
//! Who is who:
//! - Every node's certificate chains to the cluster CA (`ca`) and names the node as a
//!   DNS subject alternative name.
//! - The dialer checks the listener's certificate against the CA and the peer's
//!   configured name (rustls' standard server verification).
//! - The listener requires a client certificate chaining to the CA, and then checks
//!   that it names the node the hello claims to be, and that this node is a configured
//!   peer. So a node can only speak for itself, and a certificate from another CA, an
//!   expired one, or none at all is refused during the handshake and counted.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context as _, Result};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The TLS configurations of one node.
#[derive(Clone)]
pub struct Tls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cluster.{what}: cannot read {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "cluster.{what}: {} is not a PEM certificate file",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(anyhow!(
            "cluster.{what}: {} holds no certificate (a PEM file with a \
             \"BEGIN CERTIFICATE\" block is expected)",
            path.display()
        ));
    }
    Ok(certs)
}

impl Tls {
    /// Loads the CA, this node's certificate chain and key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Tls> {
        let ca_certs = read_certs(ca, "ca")?;
        let chain = read_certs(cert, "cert")?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            anyhow!(
                "cluster.key: cannot read a private key (PKCS#8, PKCS#1 or SEC1 PEM) from {}: {e}",
                key.display()
            )
        })?;
        Self::from_der(ca_certs, chain, key)
    }

    /// Builds the configurations from certificates and a key already in memory.
    pub fn from_der(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Tls> {
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots
                .add(c)
                .map_err(|e| anyhow!("cluster.ca: not a usable CA certificate: {e}"))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| anyhow!("cluster.ca: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with the ring provider")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| anyhow!("cluster.cert / cluster.key: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with the ring provider")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| anyhow!("cluster.cert / cluster.key: {e}"))?;
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// The server name a dialer checks the peer's certificate against.
pub fn server_name(peer: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(peer.to_string())
        .map_err(|_| anyhow!("peer name {peer:?} is not a DNS name a certificate can carry"))
}

/// Whether the (already CA-verified) end-entity certificate names `node`.
pub fn cert_names(cert: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}
