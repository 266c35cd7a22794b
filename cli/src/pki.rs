//! The certificate authority and serving certificate of `strata up`.
//!
//! kubectl only sends a bearer token over TLS (clientcmd drops credentials for `http://` servers),
//! so the API is served over HTTPS with a CA that `strata up` creates once per data dir and puts
//! into the kubeconfig. The CA key stays in `<data-dir>/pki/`; the serving certificate is issued
//! anew at every start, for loopback and the address being listened on.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;

/// What the API server needs to serve TLS, and what clients need to trust it.
pub struct ServingIdentity {
    /// The CA certificate, PEM, for the kubeconfig's `certificate-authority-data`.
    pub ca_pem: String,
    /// The serving certificate, DER.
    pub cert_der: Vec<u8>,
    /// The serving certificate's private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "strata-ca");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Loads the data dir's CA (creating it on first start) and issues a serving certificate valid
/// for `localhost`, 127.0.0.1, ::1 and `listen_ip`.
pub fn serving_identity(data_dir: &Path, listen_ip: IpAddr) -> Result<ServingIdentity, Error> {
    let dir = data_dir.join("pki");
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (ca_pem, ca_key) = match (
        std::fs::read_to_string(&ca_cert),
        std::fs::read_to_string(&ca_key),
    ) {
        (Ok(cert), Ok(key)) => (cert, KeyPair::from_pem(&key).map_err(Error::Pki)?),
        _ => {
            let key = KeyPair::generate().map_err(Error::Pki)?;
            let cert = ca_params().self_signed(&key).map_err(Error::Pki)?;
            crate::kubeconfig::write_private(&ca_key, &key.serialize_pem())?;
            crate::kubeconfig::write_private(&ca_cert, &cert.pem())?;
            (cert.pem(), key)
        }
    };
    // An issuer is its name and key: re-creating the CA's parameters with the stored key signs
    // certificates that chain to the stored CA certificate.
    let issuer = Issuer::new(ca_params(), &ca_key);

    let mut sans = vec![
        SanType::DnsName("localhost".try_into().map_err(Error::Pki)?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
    ];
    if !listen_ip.is_unspecified() && !listen_ip.is_loopback() {
        sans.push(SanType::IpAddress(listen_ip));
    }
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "strata-apiserver");
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().map_err(Error::Pki)?;
    let cert = params.signed_by(&key, &issuer).map_err(Error::Pki)?;
    Ok(ServingIdentity {
        ca_pem,
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_survives_a_restart_and_serving_certificates_are_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let first = serving_identity(dir.path(), loopback).unwrap();
        let second = serving_identity(dir.path(), loopback).unwrap();
        assert!(first.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_ne!(first.cert_der, second.cert_der);
    }
}
