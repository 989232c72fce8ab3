//! End-to-end tests of `writ server run` through the real binary: the operator CLI over the
//! admin socket, and an agent client (writ-agent's node client) over real TLS.
//! Issued SVIDs are checked with rustls-webpki against the bundle `writ bundle show` prints.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, ServerOpts, TestServer};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tonic::Code;
use writ_agent::node_client::{self, AgentSvid, Evidence, Node};
use writ_ca::{KeyType, PrivateKey};
use writ_core::{Bundle, TrustDomain};
use writ_proto::v1 as pb;
use writ_tls::{SharedBundle, SvidResolver};

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn verify_with_webpki(chain: &[Vec<u8>], bundle: &Bundle) {
    common::webpki_verify(chain, &bundle.x509_authorities)
        .expect("SVID verifies against the bundle");
}

fn uri_san(der: &[u8]) -> String {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(der).unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap();
    match &san.value.general_names[0] {
        GeneralName::URI(u) => u.to_string(),
        other => panic!("{other:?}"),
    }
}

async fn anon_client(s: &TestServer) -> Node {
    node_client::connect(&s.addr(), &td(), SharedBundle::new(vec![s.bundle()]), None)
        .await
        .unwrap()
}

/// An attested test agent: its key, SVID and an mTLS client.
struct Agent {
    key: PrivateKey,
    svid: AgentSvid,
    client: Node,
}

async fn mtls_client(s: &TestServer, key: &PrivateKey, svid: &AgentSvid) -> Node {
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

async fn join(s: &TestServer, alias: Option<&str>) -> Agent {
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

fn code_of(e: node_client::NodeClientError) -> Code {
    match e {
        node_client::NodeClientError::Status(s) => s.code(),
        other => panic!("expected a status, got {other}"),
    }
}

#[test]
fn entries_crud_and_bad_input() {
    let s = TestServer::start(ServerOpts::default());
    let e = s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        "unix:uid:1000",
        "--selector",
        "unix:gid:50",
        "--x509-ttl",
        "5m",
        "--dns",
        "web.example.org",
        "--hint",
        "web",
        "--owner",
        "team-web",
        "--purpose",
        "serves the shop",
        "--expires-at",
        "2099-01-01T00:00:00Z",
    ]);
    for k in [
        "id",
        "spiffe_id",
        "parent_id",
        "selectors",
        "x509_svid_ttl",
        "jwt_svid_ttl",
        "dns_names",
        "hint",
        "admin",
        "downstream",
        "federates_with",
        "expires_at",
        "owner",
        "purpose",
        "created_at",
        "revision",
    ] {
        assert!(e.get(k).is_some(), "entry object lacks {k}: {e}");
    }
    assert_eq!(e["x509_svid_ttl"], 300);
    assert_eq!(
        e["selectors"][1],
        serde_json::json!({"type": "unix", "value": "gid:50"})
    );
    assert_eq!(e["owner"], "team-web");
    assert_eq!(e["expires_at"], "2099-01-01T00:00:00Z");
    let id = e["id"].as_str().unwrap().to_owned();

    assert_eq!(
        s.cli_json(&["entry", "show", &id])["spiffe_id"],
        "spiffe://example.org/web"
    );
    assert_eq!(s.cli_json(&["entry", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(
        s.cli_json(&["entry", "list", "--selector", "unix:gid:50"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.cli_json(&["entry", "list", "--parent-id", "spiffe://example.org/other"])
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Bad input: exit 2 with the reason, nothing written.
    for args in [
        vec![
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://other.org/x",
            "--parent-id",
            "spiffe://example.org/p",
            "--selector",
            "a:b",
        ],
        vec![
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/x",
            "--parent-id",
            "spiffe://example.org/p",
        ],
        vec![
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/x",
            "--parent-id",
            "spiffe://example.org/p",
            "--selector",
            "a:b",
            "--dns",
            "bad_dns!",
        ],
        vec![
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/x",
            "--parent-id",
            "spiffe://example.org/p",
            "--selector",
            "a:b",
            "--expires-at",
            "tomorrow",
        ],
        vec![
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/x/",
            "--parent-id",
            "spiffe://example.org/p",
            "--selector",
            "a:b",
        ],
    ] {
        let r = s.cli(&args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty());
    }
    assert_eq!(
        s.cli_json(&["entry", "list"]).as_array().unwrap().len(),
        1,
        "bad input wrote nothing"
    );
    // The same entry twice is refused.
    let r = s.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        "unix:gid:50",
        "--selector",
        "unix:uid:1000",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);

    // Update replaces given fields only.
    let u = s.cli_json(&[
        "entry",
        "update",
        &id,
        "--selector",
        "unix:uid:2000",
        "--purpose",
        "new purpose",
    ]);
    assert_eq!(u["selectors"].as_array().unwrap().len(), 1);
    assert_eq!(u["owner"], "team-web");
    assert_eq!(u["purpose"], "new purpose");
    assert!(u["revision"].as_u64().unwrap() > e["revision"].as_u64().unwrap());

    // Delete; deleting again or an unknown ID fails and deletes nothing.
    assert_eq!(s.cli(&["entry", "delete", &id, "nope"]).code, 1);
    assert_eq!(s.cli_json(&["entry", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(
        s.cli_json(&["entry", "delete", &id])["deleted"][0],
        id.as_str()
    );
    assert_eq!(s.cli(&["entry", "show", &id]).code, 1);
}

#[test]
fn entries_survive_kill9() {
    let mut s = TestServer::start(ServerOpts::default());
    let mut ids = Vec::new();
    for i in 0..20 {
        let e = s.cli_json(&[
            "entry",
            "create",
            "--spiffe-id",
            &format!("spiffe://example.org/w{i}"),
            "--parent-id",
            "spiffe://example.org/n",
            "--selector",
            &format!("unix:uid:{i}"),
        ]);
        ids.push(e["id"].as_str().unwrap().to_owned());
    }
    let bundle_before = s.bundle();
    s.kill9();
    s.spawn();
    let listed = s.cli_json(&["entry", "list"]);
    let got: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for id in &ids {
        assert!(got.contains(&id.as_str()), "acknowledged entry {id} lost");
    }
    // The CA survives too: same bundle.
    assert_eq!(s.bundle().x509_authorities, bundle_before.x509_authorities);
    // SIGTERM stops cleanly with exit 0.
    assert_eq!(s.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn join_token_is_single_use_and_expires() {
    let s = TestServer::start(ServerOpts::default());
    let t = s.cli_json(&[
        "token",
        "generate",
        "--spiffe-id",
        "spiffe://example.org/node/a",
    ]);
    let token = t["token"].as_str().unwrap().to_owned();
    assert_eq!(t["spiffe_id"], "spiffe://example.org/node/a");
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let mut c = anon_client(&s).await;
    let svid = node_client::attest(&mut c, &td(), Evidence::JoinToken(&token), &key)
        .await
        .unwrap();
    assert_eq!(
        svid.spiffe_id.to_string(),
        format!("spiffe://example.org/writ/agent/join_token/{token}")
    );
    assert_eq!(uri_san(&svid.chain[0]), svid.spiffe_id.to_string());
    verify_with_webpki(&svid.chain, &s.bundle());

    // Second use refused.
    let err = node_client::attest(&mut c, &td(), Evidence::JoinToken(&token), &key)
        .await
        .unwrap_err();
    assert_eq!(code_of(err), Code::PermissionDenied);
    // Unknown and malformed tokens refused.
    let err = node_client::attest(
        &mut c,
        &td(),
        Evidence::JoinToken("00000000-0000-0000-0000-000000000000"),
        &key,
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(err), Code::PermissionDenied);
    let err = node_client::attest(&mut c, &td(), Evidence::JoinToken("garbage"), &key)
        .await
        .unwrap_err();
    assert_eq!(code_of(err), Code::InvalidArgument);

    // Expired token refused: wait (by polling the clock) until past its expiry.
    let t = s.cli_json(&["token", "generate", "--ttl", "1s"]);
    let exp = time::OffsetDateTime::parse(
        t["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    eventually("token expiry passes", Duration::from_secs(10), || {
        (writ_core::now_unix() > exp).then_some(())
    });
    let err = node_client::attest(
        &mut c,
        &td(),
        Evidence::JoinToken(t["token"].as_str().unwrap()),
        &key,
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(err), Code::PermissionDenied);

    // The node is listed with its attestor.
    let nodes = s.cli_json(&["node", "list"]);
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["attestor"], "join_token");
}

struct NodePki {
    dir: tempfile::TempDir,
    ca: (KeyPair, CertificateParams, Vec<u8>),
}

impl NodePki {
    fn new() -> Self {
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

    fn bundle_path(&self) -> std::path::PathBuf {
        let p = self.dir.path().join("node-ca.pem");
        std::fs::write(&p, writ_core::pem::encode("CERTIFICATE", &self.ca.2)).unwrap();
        p
    }

    fn node(&self, cn: &str) -> (Vec<u8>, PrivateKey) {
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

#[tokio::test(flavor = "multi_thread")]
async fn x509pop_attestation_and_refusals() {
    let pki = NodePki::new();
    let s = TestServer::start(ServerOpts {
        x509pop_bundle: Some(pki.bundle_path()),
        ..Default::default()
    });
    let (cert, node_key) = pki.node("node-1");
    let agent_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let mut c = anon_client(&s).await;
    let svid = node_client::attest(
        &mut c,
        &td(),
        Evidence::X509Pop {
            chain: &[cert.clone()],
            key: &node_key,
        },
        &agent_key,
    )
    .await
    .unwrap();
    assert!(svid.spiffe_id.path().starts_with("/writ/agent/x509pop/"));
    assert_eq!(
        svid.spiffe_id.path().len(),
        "/writ/agent/x509pop/".len() + 64
    );
    verify_with_webpki(&svid.chain, &s.bundle());
    let node = s.cli_json(&["node", "show", svid.spiffe_id.as_str()]);
    let sels: Vec<String> = node["selectors"]
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
        .collect();
    assert!(
        sels.contains(&"x509pop:subject:cn:node-1".to_owned()),
        "{sels:?}"
    );
    assert!(
        sels.contains(&"x509pop:san:dns:node-1.example".to_owned()),
        "{sels:?}"
    );
    assert!(
        sels.iter()
            .any(|s| s.starts_with("x509pop:ca:fingerprint:")),
        "{sels:?}"
    );

    // Possession of the wrong key: refused.
    let (_, other_key) = pki.node("node-2");
    let err = node_client::attest(
        &mut c,
        &td(),
        Evidence::X509Pop {
            chain: &[cert.clone()],
            key: &other_key,
        },
        &agent_key,
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(err), Code::PermissionDenied);
    // A certificate from another CA: refused.
    let stranger = NodePki::new();
    let (scert, skey) = stranger.node("node-1");
    let err = node_client::attest(
        &mut c,
        &td(),
        Evidence::X509Pop {
            chain: &[scert],
            key: &skey,
        },
        &agent_key,
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(err), Code::PermissionDenied);
    // Garbage chain: invalid argument.
    let err = node_client::attest(
        &mut c,
        &td(),
        Evidence::X509Pop {
            chain: &[vec![1, 2, 3]],
            key: &skey,
        },
        &agent_key,
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(err), Code::InvalidArgument);

    // Evicted nodes can re-attest with x509pop; banned ones cannot.
    s.cli(&["node", "evict", svid.spiffe_id.as_str()]).ok();
    let again = node_client::attest(
        &mut c,
        &td(),
        Evidence::X509Pop {
            chain: &[cert.clone()],
            key: &node_key,
        },
        &agent_key,
    )
    .await
    .unwrap();
    assert_eq!(again.spiffe_id, svid.spiffe_id);
    s.cli(&["node", "ban", svid.spiffe_id.as_str()]).ok();
    let err = node_client::attest(
        &mut c,
        &td(),
        Evidence::X509Pop {
            chain: &[cert],
            key: &node_key,
        },
        &agent_key,
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(err), Code::PermissionDenied);
}

fn sign_req(entry_id: &str) -> (pb::SignX509Request, PrivateKey) {
    let k = PrivateKey::generate(KeyType::EcP256).unwrap();
    (
        pb::SignX509Request {
            entry_id: entry_id.to_owned(),
            csr: k.csr_der().unwrap(),
        },
        k,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_only_get_what_they_are_authorised_for() {
    let s = TestServer::start(ServerOpts {
        metrics: true,
        ..Default::default()
    });
    let mut a = join(&s, Some("spiffe://example.org/node/a")).await;
    let mut b = join(&s, None).await;
    let mine = s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        "unix:uid:1000",
        "--dns",
        "web.internal",
    ]);
    let nested = s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web/worker",
        "--parent-id",
        "spiffe://example.org/web",
        "--selector",
        "unix:uid:1001",
    ]);
    let theirs = s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/db",
        "--parent-id",
        b.svid.spiffe_id.as_str(),
        "--selector",
        "unix:uid:1002",
    ]);
    let (mine_id, nested_id, theirs_id) = (
        mine["id"].as_str().unwrap(),
        nested["id"].as_str().unwrap(),
        theirs["id"].as_str().unwrap(),
    );

    // A can sign its own entry and the nested one; the SVID verifies and names the entry's ID.
    let (r1, _k1) = sign_req(mine_id);
    let (r2, _k2) = sign_req(nested_id);
    let resp = a
        .client
        .batch_sign_x509(pb::BatchSignX509Request {
            requests: vec![r1, r2],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results.len(), 2);
    for r in &resp.results {
        assert!(r.error.is_empty(), "{}", r.error);
        verify_with_webpki(&r.cert_chain, &s.bundle());
    }
    assert_eq!(
        uri_san(&resp.results[0].cert_chain[0]),
        "spiffe://example.org/web"
    );
    // A asking for B's entry: PermissionDenied, and nothing in the batch is signed.
    let (r3, _) = sign_req(theirs_id);
    let (r4, _) = sign_req(mine_id);
    let err = a
        .client
        .batch_sign_x509(pb::BatchSignX509Request {
            requests: vec![r4, r3],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = a
        .client
        .mint_jwt(pb::MintJwtRequest {
            entry_id: theirs_id.to_owned(),
            audience: vec!["x".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // JWT for its own entry works; empty audience is refused.
    let jwt = a
        .client
        .mint_jwt(pb::MintJwtRequest {
            entry_id: mine_id.to_owned(),
            audience: vec!["db".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        writ_ca::jwt::validate(&jwt.token, "db", writ_core::now_unix(), |_| Some(
            s.bundle()
        ))
        .is_ok()
    );
    let err = a
        .client
        .mint_jwt(pb::MintJwtRequest {
            entry_id: mine_id.to_owned(),
            audience: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A CSR with a bad signature: InvalidArgument in the per-item result.
    let (mut bad, _) = sign_req(mine_id);
    let n = bad.csr.len();
    bad.csr[n - 2] ^= 1;
    let resp = a
        .client
        .batch_sign_x509(pb::BatchSignX509Request {
            requests: vec![bad],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.results[0].error.is_empty());
    // A batch large enough to be split over signing threads: results come back in request
    // order, and one bad CSR in the middle fails alone.
    let mut reqs = Vec::new();
    for i in 0..40 {
        let (mut r, _) = sign_req(if i % 2 == 0 { mine_id } else { nested_id });
        if i == 17 {
            let n = r.csr.len();
            r.csr[n - 2] ^= 1;
        }
        reqs.push(r);
    }
    let want: Vec<String> = reqs.iter().map(|r| r.entry_id.clone()).collect();
    let resp = a
        .client
        .batch_sign_x509(pb::BatchSignX509Request { requests: reqs })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<String> = resp.results.iter().map(|r| r.entry_id.clone()).collect();
    assert_eq!(got, want);
    for (i, r) in resp.results.iter().enumerate() {
        if i == 17 {
            assert!(r.error.contains("signature"), "{}", r.error);
        } else {
            assert!(r.error.is_empty(), "{i}: {}", r.error);
            verify_with_webpki(&r.cert_chain, &s.bundle());
            let want = if i % 2 == 0 { "web" } else { "web/worker" };
            assert_eq!(
                uri_san(&r.cert_chain[0]),
                format!("spiffe://example.org/{want}")
            );
        }
    }

    // The sync stream: a snapshot of exactly A's entries, then pushed changes.
    let mut stream = a
        .client
        .sync_entries(pb::SyncEntriesRequest { after_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(pb::sync_entries_response::Event::Snapshot(page)) = first.event else {
        panic!("expected snapshot")
    };
    assert!(page.last);
    let mut got: Vec<String> = page.entries.iter().map(|e| e.id.clone()).collect();
    got.sort();
    let mut want = vec![mine_id.to_owned(), nested_id.to_owned()];
    want.sort();
    assert_eq!(got, want);
    let added = s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/cache",
        "--parent-id",
        a.svid.spiffe_id.as_str(),
        "--selector",
        "unix:uid:7",
    ]);
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::sync_entries_response::Event::Change(ch)) = ev.event else {
        panic!("expected change")
    };
    assert_eq!(ch.upserts.len(), 1);
    assert_eq!(ch.upserts[0].id, added["id"].as_str().unwrap());
    // An entry for B does not reach A; deleting A's entry removes it and its nested child.
    s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/db2",
        "--parent-id",
        b.svid.spiffe_id.as_str(),
        "--selector",
        "unix:uid:9",
    ]);
    s.cli_json(&["entry", "delete", mine_id]);
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::sync_entries_response::Event::Change(ch)) = ev.event else {
        panic!("expected change")
    };
    let mut removed = ch.removed_ids.clone();
    removed.sort();
    assert_eq!(
        removed, want,
        "the deleted entry and its nested child are removed; B's new entry never appears"
    );
    assert!(ch.upserts.is_empty());

    // Banned agents are refused on every call, and their stream ends.
    s.cli(&["node", "ban", a.svid.spiffe_id.as_str()]).ok();
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap();
    assert_eq!(ev.unwrap_err().code(), Code::PermissionDenied);
    let (r5, _) = sign_req(added["id"].as_str().unwrap());
    let err = a
        .client
        .batch_sign_x509(pb::BatchSignX509Request { requests: vec![r5] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = a
        .client
        .renew_agent(pb::RenewAgentRequest {
            csr: a.key.csr_der().unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // B renews its SVID; the old one keeps working until the new one is used.
    let renewed = b
        .client
        .renew_agent(pb::RenewAgentRequest {
            csr: b.key.csr_der().unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let new_svid = node_client::agent_svid(renewed.svid.unwrap(), &td()).unwrap();
    assert_eq!(new_svid.spiffe_id, b.svid.spiffe_id);
    b.client
        .sync_entries(pb::SyncEntriesRequest { after_revision: 0 })
        .await
        .unwrap();
    let mut b2 = mtls_client(&s, &b.key, &new_svid).await;
    b2.sync_entries(pb::SyncEntriesRequest { after_revision: 0 })
        .await
        .unwrap();

    // Refusals are counted in the metrics.
    let metrics = http_get(s.metrics_port, "/metrics");
    assert!(
        metrics.contains("writ_requests_refused_total{code=\"permission_denied\"}"),
        "{metrics}"
    );
    let denied: u64 = metrics
        .lines()
        .find(|l| l.starts_with("writ_requests_refused_total{code=\"permission_denied\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(denied >= 4, "{metrics}");
    assert!(http_get(s.metrics_port, "/ready").contains("200 OK"));
    assert!(http_get(s.metrics_port, "/live").contains("200 OK"));
    let _ = Arc::new(());
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_and_malformed_calls_are_refused() {
    let s = TestServer::start(ServerOpts::default());
    let mut c = anon_client(&s).await;
    // mTLS methods without a client certificate.
    let err = c
        .sync_entries(pb::SyncEntriesRequest { after_revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Unknown attestor, and a CSR that is garbage (nothing consumed).
    let t = s.cli_json(&["token", "generate"]);
    let token = t["token"].as_str().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::AttestRequest {
        step: Some(pb::attest_request::Step::Params(pb::AttestParams {
            attestor: "tpm".into(),
            payload: vec![],
            csr: vec![],
        })),
    })
    .await
    .unwrap();
    let mut st = c
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.message().await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::AttestRequest {
        step: Some(pb::attest_request::Step::Params(pb::AttestParams {
            attestor: "join_token".into(),
            payload: token.as_bytes().to_vec(),
            csr: vec![0x30, 0x03, 1, 2, 3],
        })),
    })
    .await
    .unwrap();
    let mut st = c
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.message().await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // The token was not consumed by the bad request.
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    node_client::attest(&mut c, &td(), Evidence::JoinToken(token), &key)
        .await
        .unwrap();
}

#[test]
fn admin_socket_is_private_and_unsafe_places_are_refused() {
    let s = TestServer::start(ServerOpts::default());
    let dir_mode = std::fs::metadata(s.socket().parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let sock_mode = std::fs::symlink_metadata(s.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(sock_mode, 0o600);

    // A second server on the same socket refuses to start.
    let dir = tempfile::tempdir().unwrap();
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(
            &s.dir.path().join("data").display().to_string(),
            &dir.path().join("data").display().to_string(),
        )
        .replace(
            &format!("127.0.0.1:{}", s.port),
            &format!("127.0.0.1:{}", common::free_port()),
        );
    let p = dir.path().join("s.toml");
    std::fs::write(&p, cfg).unwrap();
    let r = common::cli(&["server", "run", "--config", p.to_str().unwrap()], &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("in use"), "{}", r.stderr);

    // A world-writable socket directory is refused.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = format!(
        "trust_domain = \"example.org\"\nlisten = \"127.0.0.1:{}\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\n[node_attestor.join_token]\n",
        common::free_port(),
        open.join("admin.sock").display(),
        dir.path().join("data2").display()
    );
    std::fs::write(&p, cfg).unwrap();
    let r = common::cli(&["server", "run", "--config", p.to_str().unwrap()], &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("writable"), "{}", r.stderr);
}

#[test]
fn bad_config_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.toml");
    for (cfg, key) in [
        ("trust_domain = \"Bad\"\nlisten = \"127.0.0.1:1\"\nadmin_socket = \"/x/a.sock\"\ndata_dir = \"/x\"\n[node_attestor.join_token]\n", "trust_domain"),
        ("trust_domain = \"td\"\nlisten = \"nowhere\"\nadmin_socket = \"/x/a.sock\"\ndata_dir = \"/x\"\n[node_attestor.join_token]\n", "listen"),
        ("trust_domain = \"td\"\nlisten = \"127.0.0.1:1\"\nadmin_socket = \"/x/a.sock\"\ndata_dir = \"/x\"\ncolour = 1\n[node_attestor.join_token]\n", "colour"),
        ("trust_domain = \"td\"\nlisten = \"127.0.0.1:1\"\nadmin_socket = \"/x/a.sock\"\ndata_dir = \"/x\"\n[ca]\nttl = \"forever\"\n[node_attestor.join_token]\n", "ca.ttl"),
    ] {
        std::fs::write(&p, cfg).unwrap();
        let r = common::cli(&["server", "run", "--config", p.to_str().unwrap()], &[]);
        assert_eq!(r.code, 1, "{cfg}");
        assert!(r.stderr.contains(key), "{key}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    }
}

async fn first_page(c: &mut Node, after: u64) -> pb::SnapshotPage {
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

/// A reconnecting agent passes the revision it holds: if nothing since then concerns it (even if
/// other agents' entries changed), it keeps its copy; otherwise it gets a fresh snapshot,
/// including when one of its entries was moved to another agent.
#[tokio::test(flavor = "multi_thread")]
async fn sync_resumes_from_a_revision() {
    let s = TestServer::start(ServerOpts::default());
    let mut a = join(&s, Some("spiffe://example.org/node/a")).await;
    let b = join(&s, Some("spiffe://example.org/node/b")).await;
    let mine = s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/a1",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        "unix:uid:1",
    ]);
    let p = first_page(&mut a.client, 0).await;
    assert!(!p.unchanged && p.last);
    assert_eq!(p.entries.len(), 1);
    let r = p.revision;

    // Changes for B only: A resumes with its copy.
    s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/b1",
        "--parent-id",
        "spiffe://example.org/node/b",
        "--selector",
        "unix:uid:2",
    ]);
    let p = first_page(&mut a.client, r).await;
    assert!(p.unchanged, "nothing concerning A changed");
    assert!(p.revision > r);

    // An entry of A moved to B: A must not keep it.
    let id = mine["id"].as_str().unwrap();
    s.cli_json(&[
        "entry",
        "update",
        id,
        "--parent-id",
        "spiffe://example.org/node/b",
    ]);
    let p = first_page(&mut a.client, r).await;
    assert!(!p.unchanged);
    assert!(
        p.entries.is_empty(),
        "the moved entry is gone from A's snapshot"
    );
    let _ = b;
}
