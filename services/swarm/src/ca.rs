//! The swarm's certificate authority, made at `docker swarm init` (ECDSA P-256, CN
//! `swarm-ca`, 20 years, as swarmkit's), and the node certificates it signs at join:
//! CN = node ID, OU = `swarm-manager`/`swarm-worker`, O = cluster ID, SANs naming the
//! role (`swarm-manager` for managers, which clients verify) and the node's addresses.

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

/// A CA: certificate and key, PEM.
#[derive(Debug, Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A signed node certificate: the chain (node, then CA) and its key, PEM.
#[derive(Debug, Clone)]
pub struct NodeCert {
    pub chain_pem: String,
    pub key_pem: String,
}

fn err(e: rcgen::Error) -> String {
    format!("certificate: {e}")
}

fn ca_params() -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, DnValue::PrintableString("swarm-ca".try_into().map_err(err)?));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    // Fixed validity: the CA is rebuilt from its key to sign, and must stay the same name.
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2060, 1, 1);
    Ok(p)
}

impl Ca {
    pub fn generate() -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(err)?;
        let cert = ca_params()?.self_signed(&key).map_err(err)?;
        Ok(Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Sign a certificate for node `node_id` of `cluster_id`, valid for `addrs` (IPs).
    pub fn sign_node(&self, node_id: &str, cluster_id: &str, manager: bool, addrs: &[String]) -> Result<NodeCert, String> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(err)?;
        let ca_cert = ca_params()?.self_signed(&ca_key).map_err(err)?;
        let role = if manager { crate::tls::MANAGER_NAME } else { crate::tls::WORKER_NAME };
        let mut sans = vec![role.to_string(), node_id.to_string(), "127.0.0.1".to_string()];
        for a in addrs {
            if !a.is_empty() && !sans.contains(a) && a != "0.0.0.0" {
                sans.push(a.clone());
            }
        }
        let mut p = CertificateParams::new(sans).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationalUnitName, role);
        dn.push(DnType::OrganizationName, cluster_id);
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        // Docker's default NodeCertExpiry is 90 days and nodes renew; berth nodes get a
        // long-lived certificate (no renewal yet), see docs/swarm.md.
        p.not_after = now + time::Duration::days(3650);
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
        Ok(NodeCert { chain_pem: format!("{}{}", cert.pem(), self.cert_pem), key_pem: key.serialize_pem() })
    }

    /// `CertIssuerSubject` (base64 DER of the CA's subject) and `CertIssuerPublicKey`
    /// (base64 DER of its SubjectPublicKeyInfo), as `docker info` shows them.
    pub fn issuer_info(&self) -> Result<(String, String), String> {
        use base64::Engine;
        let key = KeyPair::from_pem(&self.key_pem).map_err(err)?;
        // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3, PrintableString "swarm-ca" } } }
        let subject: &[u8] = &[
            0x30, 0x13, 0x31, 0x11, 0x30, 0x0f, 0x06, 0x03, 0x55, 0x04, 0x03, 0x13, 0x08, b's', b'w', b'a', b'r', b'm', b'-', b'c', b'a',
        ];
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok((b64.encode(subject), b64.encode(key.public_key_der())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certs_chain_to_the_ca() {
        let ca = Ca::generate().unwrap();
        let n = ca.sign_node("node1", "cluster1", true, &["10.0.0.1".into()]).unwrap();
        assert_eq!(n.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        // A client trusting the CA accepts the manager's chain for `swarm-manager`.
        let cfg = crate::tls::client_config(&ca.cert_pem, Some((&n.chain_pem, &n.key_pem)));
        assert!(cfg.is_ok(), "{:?}", cfg.err());
        let (subj, pk) = ca.issuer_info().unwrap();
        assert_eq!(subj, "MBMxETAPBgNVBAMTCHN3YXJtLWNh"); // Docker's, for CN=swarm-ca
        assert!(!pk.is_empty());
    }
}
