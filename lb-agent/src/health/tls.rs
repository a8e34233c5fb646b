//! TLS client settings of `https` checks, on rustls (HAProxy `check-ssl`): one
//! `ClientConfig` per distinct [`TlsCheck`], built when a target starts and shared by every
//! target with the same settings.
//!
//! - `verify = true` (the default): the backend's certificate must chain to a trusted CA
//!   (the `ca` file, or the system's trust store), be valid now, and name the server name
//!   (`sni`, else the `host` name, else the backend's IP address, matched against the
//!   certificate's IP SANs).
//! - `verify = false`: any certificate is taken (HAProxy `verify none`); the handshake's
//!   own signatures are still checked, so the session is encrypted to whoever answered.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use lb_model::{
    spec::{HttpCheck, TlsCheck},
    sync::lock,
};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{self, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(crypto::ring::default_provider())
}

/// The CAs a verifying check trusts: the `ca` file, or the system's store.
fn roots(tls: &TlsCheck) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("health.ca {}: cannot read it: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("health.ca {}: not PEM certificates: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "health.ca {}: no CA certificate in it: give a PEM file with \
                     -----BEGIN CERTIFICATE----- blocks",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no CA certificates in the system's trust store (install ca-certificates), \
                     and no health.ca given: give health.ca, or verify = false"
                        .to_string(),
                );
            }
        }
    }
    Ok(roots)
}

/// A client configuration for `tls`.
pub fn client_config(tls: &TlsCheck) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = if tls.verify {
        builder
            .with_root_certificates(roots(tls)?)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Checks that the TLS settings of every `https` check of `config` can be set up (their CA
/// files read): a configuration that names an unreadable CA file is refused before it
/// replaces the running one.
pub fn check_config(config: &lb_model::config::Config) -> Result<(), String> {
    for s in &config.services {
        if let lb_model::spec::HealthKind::Https(_, tls) = &s.health.kind {
            client_config(tls).map_err(|e| format!("service {:?}: {e}", s.spec.name))?;
        }
    }
    Ok(())
}

/// The name sent (SNI) and verified: `sni`, else the `host` header's name, else the
/// backend's IP address.
pub fn server_name(tls: &TlsCheck, http: &HttpCheck, ip: IpAddr) -> ServerName<'static> {
    let host_name = http.host.as_deref().map(|h| {
        // `name:port` or `[v6]:port` → the name.
        match h.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => h.rsplit_once(':').map_or(h, |(name, _)| name),
        }
    });
    tls.sni
        .as_deref()
        .or(host_name)
        .and_then(|n| ServerName::try_from(n.to_string()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
}

/// Client configurations by settings, shared by the targets that use them.
#[derive(Default)]
pub struct Configs {
    built: Mutex<HashMap<TlsCheck, Result<Arc<ClientConfig>, String>>>,
}

impl Configs {
    /// The configuration for `tls` (built once), or why it cannot be built.
    pub fn get(&self, tls: &TlsCheck) -> Result<Arc<ClientConfig>, String> {
        let mut built = lock(&self.built);
        built
            .entry(tls.clone())
            .or_insert_with(|| client_config(tls))
            .clone()
    }

    /// Forgets the configurations of settings no longer in use (a CA file is read again
    /// when a target with it starts anew).
    pub fn keep_only(&self, used: &[&TlsCheck]) {
        let mut built = lock(&self.built);
        built.retain(|k, _| used.contains(&k));
    }
}

/// `verify = false`: any certificate, but a handshake signed by its key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_comes_from_sni_then_host_then_the_address() {
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let http = |host: Option<&str>| HttpCheck {
            host: host.map(String::from),
            ..HttpCheck::default()
        };
        let tls = |sni: Option<&str>| TlsCheck {
            sni: sni.map(String::from),
            ..TlsCheck::default()
        };
        let name = |t, h| format!("{:?}", server_name(&t, &h, ip));
        assert!(name(tls(Some("a.example")), http(Some("b.example"))).contains("a.example"));
        assert!(name(tls(None), http(Some("b.example:8443"))).contains("b.example"));
        assert!(name(tls(None), http(None)).contains("IpAddress"));
        assert!(name(tls(None), http(Some("[2001:db8::1]:443"))).contains("IpAddress"));
    }

    #[test]
    fn a_missing_ca_file_is_refused_with_its_path() {
        let e = client_config(&TlsCheck {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsCheck::default()
        })
        .unwrap_err();
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("cannot read"),
            "{e}"
        );
        assert!(client_config(&TlsCheck {
            verify: false,
            ..TlsCheck::default()
        })
        .is_ok());
        // A configuration naming such a file is refused before it runs, naming the service.
        let c = lb_model::config::parse(
            "[[service]]\nname = \"api\"\nlisten = \"10.0.0.1:443\"\n\
             health = { kind = \"https\", ca = \"/nonexistent/ca.pem\" }\n",
            "lb.toml",
        )
        .unwrap();
        let e = check_config(&c).unwrap_err();
        assert!(
            e.starts_with("service \"api\": health.ca /nonexistent/ca.pem"),
            "{e}"
        );
    }
}
