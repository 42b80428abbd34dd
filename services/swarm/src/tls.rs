//! TLS between a swarm service and the swarm servers.
//!
//! Managers' certificates name `swarm-manager` (as swarmkit's do) whatever address a
//! node dials, so clients verify the chain against the swarm's CA and that name. A
//! joining node has no CA yet: it trusts the one whose SHA-256 digest its join token
//! carries, taken from the chain the manager presents (Docker's join does the same
//! with the root CA it fetches).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;
use std::sync::Arc;

/// The name every manager's certificate carries.
pub const MANAGER_NAME: &str = "swarm-manager";
/// The name every worker's certificate carries.
pub const WORKER_NAME: &str = "swarm-worker";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies a manager's chain against one CA and the name `swarm-manager`.
#[derive(Debug)]
struct ManagerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ManagerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(MANAGER_NAME).expect("valid name");
        self.inner.verify_server_cert(end_entity, intermediates, &name, ocsp, now)
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn verifier_for(ca_der: CertificateDer<'static>) -> Result<ManagerVerifier, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der).map_err(|e| format!("bad CA: {e}"))?;
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("verifier: {e}"))?;
    Ok(ManagerVerifier { inner })
}

/// Client TLS trusting `ca_pem` for managers named `swarm-manager`, presenting
/// `client` (cert chain PEM, key PEM) when given.
pub fn client_config(ca_pem: &str, client: Option<(&str, &str)>) -> Result<rustls::ClientConfig, String> {
    let ca = pem_certs(ca_pem)?.into_iter().next().ok_or("no CA certificate")?;
    let v = verifier_for(ca)?;
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(v));
    match client {
        Some((cert, key)) => {
            let chain = pem_certs(cert)?;
            let key = rustls_pemfile::private_key(&mut key.as_bytes()).map_err(|e| e.to_string())?.ok_or("no private key")?;
            b.with_client_auth_cert(chain, key).map_err(|e| e.to_string())
        }
        None => Ok(b.with_no_client_auth()),
    }
}

/// What a joining node learns from the handshake's TLS: the CA the token names.
#[derive(Debug, Default)]
pub struct Pinned {
    pub ca_der: std::sync::Mutex<Option<Vec<u8>>>,
}

/// Trusts the CA in the presented chain whose DER digest is `digest`, then verifies
/// the chain against it.
#[derive(Debug)]
struct PinnedVerifier {
    digest: [u8; 32],
    seen: Arc<Pinned>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha2::Sha256::digest(c.as_ref()).as_slice() == self.digest)
            .ok_or_else(|| rustls::Error::General("the manager's CA does not match the join token".into()))?;
        let v = verifier_for(ca.clone().into_owned()).map_err(rustls::Error::General)?;
        let others: Vec<CertificateDer<'_>> = intermediates.iter().filter(|c| c.as_ref() != ca.as_ref()).cloned().collect();
        let ok = v.verify_server_cert(end_entity, &others, server_name, ocsp, now)?;
        *self.seen.ca_der.lock().unwrap() = Some(ca.as_ref().to_vec());
        Ok(ok)
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &provider().signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &provider().signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Client TLS for the join handshake: trusts the CA whose digest the token carries.
pub fn join_config(digest: [u8; 32]) -> Result<(rustls::ClientConfig, Arc<Pinned>), String> {
    let seen = Arc::new(Pinned::default());
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier { digest, seen: seen.clone() }))
        .with_no_client_auth();
    Ok((cfg, seen))
}

/// A connection for one exchange with a swarm server at `addr` (host:port) over TLS:
/// no reconnection, no other servers from the cluster's gossip, 5 s to connect.
pub async fn connect_once(addr: &str, user: &str, password: &str, tls: rustls::ClientConfig, inbox_prefix: Option<String>) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut opts = async_nats::ConnectOptions::new()
        .user_and_password(user.into(), password.into())
        .tls_client_config(tls)
        .require_tls(true)
        .ignore_discovered_servers()
        .connection_timeout(std::time::Duration::from_secs(5))
        .max_reconnects(Some(0));
    if let Some(p) = inbox_prefix {
        opts = opts.custom_inbox_prefix(p);
    }
    opts.connect(format!("tls://{addr}")).await
}

pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
}

/// SHA-256 of the first certificate's DER (the digest join tokens carry).
pub fn ca_digest(ca_pem: &str) -> Result<[u8; 32], String> {
    let c = pem_certs(ca_pem)?.into_iter().next().ok_or("no CA certificate")?;
    Ok(sha2::Sha256::digest(c.as_ref()).into())
}
