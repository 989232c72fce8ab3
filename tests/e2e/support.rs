//! Helpers shared by the modules of this suite.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

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

/// The `jti` claim of a compact JWT (decoded here, not by writ).
pub(crate) fn jti_of(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["jti"].as_str().expect("JWT-SVIDs carry a jti").to_owned()
}

/// The first SVID the agent serves this process, as `writ svid fetch --output json` prints it.
pub(crate) fn served(a: &writ_testkit::TestAgent) -> Option<serde_json::Value> {
    let r = a.cli(&["svid", "fetch", "--output", "json"]);
    (r.code == 0).then(|| r.json()["svids"][0].clone())
}

/// `spiffe://example.org/web` for this process's uid under node alias `a`; its entry ID.
pub(crate) fn web_entry(s: &writ_testkit::TestServer) -> String {
    let uid = format!("unix:uid:{}", writ_testkit::my_uid());
    s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        &uid,
    ])["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Runs `openssl` in `dir`: success, and stdout + stderr.
pub(crate) fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The DER blocks of a PEM text.
pub(crate) fn pem_ders(text: &str) -> Vec<Vec<u8>> {
    writ_core::pem::decode_all(text)
        .unwrap()
        .into_iter()
        .map(|(_, d)| d)
        .collect()
}
