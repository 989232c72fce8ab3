//! Helpers shared by the modules of this suite.
#![allow(dead_code)]

pub(crate) fn issuer_of(der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(der).unwrap();
    c.issuer().as_raw().to_vec()
}

pub(crate) struct NodePki {
    pub(crate) dir: tempfile::TempDir,
}

impl NodePki {
    /// A node CA and one node certificate + key, as PEM files.
    pub(crate) fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "node ca");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let node_key = writ_ca::PrivateKey::generate(writ_ca::KeyType::EcP256).unwrap();
        let mut np = CertificateParams::default();
        np.distinguished_name.push(DnType::CommonName, "node-1");
        let issuer = Issuer::from_params(&p, &ca_key);
        let cert = np
            .signed_by(&node_key.rcgen_key_pair().unwrap(), &issuer)
            .unwrap();
        std::fs::write(dir.path().join("node.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("node.key"), node_key.to_pem()).unwrap();
        NodePki { dir }
    }
}

pub(crate) fn demo() -> &'static str {
    env!("CARGO_BIN_EXE_writ-mtls-demo")
}

pub(crate) struct Kill(pub(crate) std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
