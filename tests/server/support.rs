//! Helpers shared by the modules of this suite.
#![allow(dead_code)]

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::SanType;
use std::collections::HashSet;
use std::io::Read;
use std::io::Write;
use std::time::Duration;
use tonic::Code;
use writ_agent::node_client;
use writ_agent::node_client::AgentSvid;
use writ_agent::node_client::Evidence;
use writ_agent::node_client::Node;
use writ_ca::KeyType;
use writ_ca::PrivateKey;
use writ_core::Bundle;
use writ_core::Entry;
use writ_core::Selector;
use writ_core::SpiffeId;
use writ_core::TrustDomain;
use writ_proto::v1 as pb;
use writ_testkit::*;
use writ_tls::SharedBundle;
use writ_tls::SvidResolver;

pub(crate) fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

pub(crate) fn verify_with_webpki(chain: &[Vec<u8>], bundle: &Bundle) {
    writ_testkit::webpki_verify(chain, &bundle.x509_authorities)
        .expect("SVID verifies against the bundle");
}

pub(crate) fn uri_san(der: &[u8]) -> String {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(der).unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap();
    match &san.value.general_names[0] {
        GeneralName::URI(u) => u.to_string(),
        other => panic!("{other:?}"),
    }
}

pub(crate) async fn anon_client(s: &TestServer) -> Node {
    node_client::connect(&s.addr(), &td(), SharedBundle::new(vec![s.bundle()]), None)
        .await
        .unwrap()
}

/// An attested test agent: its key, SVID and an mTLS client.
pub(crate) struct Agent {
    pub(crate) key: PrivateKey,
    pub(crate) svid: AgentSvid,
    pub(crate) client: Node,
}

pub(crate) async fn mtls_client(s: &TestServer, key: &PrivateKey, svid: &AgentSvid) -> Node {
    let resolver = SvidResolver::new(&svid.chain, key.pkcs8_der()).unwrap();
    node_client::connect(
        &s.addr(),
        &td(),
        SharedBundle::new(vec![s.bundle()]),
        Some(resolver),
    )
    .await
    .unwrap()
}

pub(crate) async fn join(s: &TestServer, alias: Option<&str>) -> Agent {
    let mut args = vec!["token", "generate"];
    if let Some(a) = alias {
        args.extend(["--spiffe-id", a]);
    }
    let token = s.cli_json(&args)["token"].as_str().unwrap().to_owned();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let mut c = anon_client(s).await;
    let svid = node_client::attest(&mut c, &td(), Evidence::JoinToken(&token), &key)
        .await
        .unwrap();
    let client = mtls_client(s, &key, &svid).await;
    Agent { key, svid, client }
}

/// Attests a join-token agent from the test: its key and SVID.
pub(crate) async fn join_node(s: &TestServer) -> (PrivateKey, AgentSvid) {
    let token = s.cli_json(&["token", "generate"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let mut c = anon_client(s).await;
    let svid = node_client::attest(&mut c, &td(), Evidence::JoinToken(&token), &key)
        .await
        .unwrap();
    (key, svid)
}

pub(crate) fn code_of(e: node_client::NodeClientError) -> Code {
    match e {
        node_client::NodeClientError::Status(s) => s.code(),
        other => panic!("expected a status, got {other}"),
    }
}

pub(crate) struct NodePki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: (KeyPair, CertificateParams, Vec<u8>),
}

impl NodePki {
    pub(crate) fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "node ca");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let der = p.self_signed(&key).unwrap().der().to_vec();
        NodePki {
            dir: tempfile::tempdir().unwrap(),
            ca: (key, p, der),
        }
    }

    pub(crate) fn bundle_path(&self) -> std::path::PathBuf {
        let p = self.dir.path().join("node-ca.pem");
        std::fs::write(&p, writ_core::pem::encode("CERTIFICATE", &self.ca.2)).unwrap();
        p
    }

    pub(crate) fn node(&self, cn: &str) -> (Vec<u8>, PrivateKey) {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = vec![SanType::DnsName(
            format!("{cn}.example").try_into().unwrap(),
        )];
        let issuer = Issuer::from_params(&self.ca.1, &self.ca.0);
        let cert = p
            .signed_by(&key.rcgen_key_pair().unwrap(), &issuer)
            .unwrap();
        (cert.der().to_vec(), key)
    }
}

pub(crate) fn sign_req(entry_id: &str) -> (pb::SignX509Request, PrivateKey) {
    let k = PrivateKey::generate(KeyType::EcP256).unwrap();
    (
        pb::SignX509Request {
            entry_id: entry_id.to_owned(),
            csr: k.csr_der().unwrap(),
        },
        k,
    )
}

pub(crate) fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

pub(crate) fn http_get_raw(port: u16, path: &str) -> Option<String> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(c, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    Some(s)
}

pub(crate) async fn first_page(c: &mut Node, after: u64) -> pb::SnapshotPage {
    let mut st = c
        .sync_entries(pb::SyncEntriesRequest {
            after_revision: after,
        })
        .await
        .unwrap()
        .into_inner();
    match st.message().await.unwrap().unwrap().event {
        Some(pb::sync_entries_response::Event::Snapshot(p)) => p,
        other => panic!("expected a snapshot page, got {other:?}"),
    }
}

pub(crate) fn serial_of(der: &[u8]) -> String {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(der).unwrap();
    c.raw_serial().iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn selectors_of(node: &serde_json::Value) -> Vec<String> {
    node["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            format!(
                "{}:{}",
                x["type"].as_str().unwrap(),
                x["value"].as_str().unwrap()
            )
        })
        .collect()
}

pub(crate) fn served_ids(a: &TestAgent) -> Option<HashSet<String>> {
    let r = a.cli(&["svid", "fetch", "--output", "json"]);
    (r.code == 0).then(|| {
        r.json()["svids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["spiffe_id"].as_str().unwrap().to_owned())
            .collect()
    })
}

/// A CA made with rcgen: its key, parameters (for issuing) and DER.
pub(crate) struct Ca {
    pub(crate) key: KeyPair,
    pub(crate) params: CertificateParams,
    pub(crate) der: Vec<u8>,
}

impl Ca {
    pub(crate) fn root(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Ca { key, params, der }
    }

    pub(crate) fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let der = params
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .unwrap()
            .der()
            .to_vec();
        Ca { key, params, der }
    }

    /// A node certificate for `node_key`.
    pub(crate) fn node(&self, cn: &str, node_key: &PrivateKey) -> Vec<u8> {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.signed_by(
            &node_key.rcgen_key_pair().unwrap(),
            &Issuer::from_params(&self.params, &self.key),
        )
        .unwrap()
        .der()
        .to_vec()
    }
}

pub(crate) fn pem_chain(certs: &[&[u8]]) -> String {
    certs
        .iter()
        .map(|c| writ_core::pem::encode("CERTIFICATE", c))
        .collect()
}

/// Entries near the validation limits: 64 DNS names of ~250 bytes and 12 selectors of ~1000
/// bytes, about 26 KB each, so 500 of them are far over gRPC's 4 MiB message limit.
pub(crate) fn big_entry(i: usize, parent: &SpiffeId) -> Entry {
    let label = |c: char| std::iter::repeat_n(c, 60).collect::<String>();
    let dns = (0..64)
        .map(|d| {
            format!(
                "e{i}-{d}.{}.{}.{}.example",
                label('a'),
                label('b'),
                label('c')
            )
        })
        .collect();
    let selectors = (0..12)
        .map(|k| Selector::new("docker", &format!("label:{i}-{k}:{}", "v".repeat(990))).unwrap())
        .collect();
    Entry {
        dns_names: dns,
        ..Entry::new(
            SpiffeId::parse(&format!("spiffe://example.org/big/{i}/{}", "p".repeat(400))).unwrap(),
            parent.clone(),
            selectors,
        )
    }
}

pub(crate) async fn create_big(s: &TestServer, range: std::ops::Range<usize>, parent: &SpiffeId) {
    let mut admin = writ_server::client::admin_client(&s.socket())
        .await
        .unwrap();
    let all: Vec<usize> = range.collect();
    // 100 entries (2.6 MB) per call keeps each request under the 4 MiB limit.
    for chunk in all.chunks(100) {
        admin
            .batch_create_entries(pb::BatchCreateEntriesRequest {
                entries: chunk
                    .iter()
                    .map(|i| writ_proto::convert::entry_to_pb(&big_entry(*i, parent)))
                    .collect(),
            })
            .await
            .unwrap();
    }
}

/// A raw HTTP/2 frame: type, flags, stream and payload.
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal (never through the dynamic table) for short strings.
pub(crate) fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// Reads one frame: (type, flags, stream, payload).
pub(crate) async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Option<(u8, u8, u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 9];
    r.read_exact(&mut h).await.ok()?;
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    let mut p = vec![0u8; len];
    r.read_exact(&mut p).await.ok()?;
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    Some((h[3], h[4], stream, p))
}

pub(crate) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
