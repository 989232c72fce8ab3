//! Cross-process suites: CA rotation under load, eviction and ban of an x509pop agent, many
//! entries over several agents, and kill -9 of the server in the middle of writes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{eventually, my_uid, writ_bin, ServerOpts, TestAgent, TestServer};
use writ_proto::v1 as pb;

fn issuer_of(der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::*;
    let (_, c) = X509Certificate::from_der(der).unwrap();
    c.issuer().as_raw().to_vec()
}

/// CA lifetime 30 s, SVID lifetime 5 s: a workload fetching every 2 s across two CA rotations
/// always gets an SVID that verifies against the bundle it is given (checked with rustls-webpki
/// and, when installed, `openssl verify`).
#[test]
fn svids_verify_across_two_ca_rotations() {
    let s = TestServer::start(ServerOpts {
        ca_ttl: "30s".into(),
        ..Default::default()
    });
    let a = TestAgent::start(&s, "a");
    s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/rot",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        &format!("unix:uid:{}", my_uid()),
        "--x509-ttl",
        "5s",
    ]);
    let first_bundle = s.bundle();
    let start = Instant::now();
    let mut issuers = HashSet::new();
    let mut fetches = 0;
    let has_openssl = Command::new("openssl").arg("version").output().is_ok();
    let dir = a.dir.path().join("rot");
    // Fetch whenever the Workload API stream announces new SVIDs (every ~2.5 s with a 5 s TTL),
    // instead of on a fixed timer.
    let mut watch = Command::new(writ_bin())
        .args(["svid", "watch", "--output", "json"])
        .env("SPIFFE_ENDPOINT_SOCKET", a.endpoint())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, updates) = std::sync::mpsc::channel();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Two activations happen by ~40 s after start (activate at 5/6 of each CA's life).
    while start.elapsed() < Duration::from_secs(48) {
        updates
            .recv_timeout(Duration::from_secs(20))
            .expect("the SVID stream delivers an update within 20 s");
        let r = a.cli(&["svid", "fetch", "--out-dir", dir.to_str().unwrap()]);
        assert_eq!(
            r.code,
            0,
            "fetch at {:?}: {}\nagent log:\n{}",
            start.elapsed(),
            r.stderr,
            a.log()
        );
        let chain = writ_core::pem::decode_label(
            &std::fs::read_to_string(dir.join("svid.pem")).unwrap(),
            "CERTIFICATE",
        )
        .unwrap();
        let roots = writ_core::pem::decode_label(
            &std::fs::read_to_string(dir.join("bundle.pem")).unwrap(),
            "CERTIFICATE",
        )
        .unwrap();
        common::webpki_verify(&chain, &roots).unwrap_or_else(|e| {
            panic!(
                "SVID does not verify against its bundle at {:?}: {e}",
                start.elapsed()
            )
        });
        if has_openssl {
            let o = Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(dir.join("bundle.pem"))
                .arg(dir.join("svid.pem"))
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&o.stdout)
            );
        }
        issuers.insert(issuer_of(&chain[0]));
        fetches += 1;
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        issuers.len() >= 3,
        "expected SVIDs from 3 CAs (two rotations), saw {} in {fetches} fetches",
        issuers.len()
    );
    let now_bundle = s.bundle();
    assert!(now_bundle.sequence > first_bundle.sequence);
    assert!(
        !now_bundle
            .x509_authorities
            .iter()
            .any(|c| first_bundle.x509_authorities.contains(c)),
        "the first CA expired and left the bundle"
    );
}

struct NodePki {
    dir: tempfile::TempDir,
}

impl NodePki {
    /// A node CA and one node certificate + key, as PEM files.
    fn new() -> Self {
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

#[test]
fn x509pop_agent_reattests_after_eviction_and_ban_sticks() {
    let pki = NodePki::new();
    let s = TestServer::start(ServerOpts {
        x509pop_bundle: Some(pki.dir.path().join("ca.pem")),
        ..Default::default()
    });
    let mut a = TestAgent::start(&s, "unused");
    // Switch the agent to x509pop (a fresh data dir, so it attests with the node certificate).
    a.kill9();
    let cfg = std::fs::read_to_string(&a.config).unwrap();
    let cfg = cfg
        .split("[node_attestor.join_token]")
        .next()
        .unwrap()
        .replace("/data\"", "/data-x509\"")
        + &format!(
            "[node_attestor.x509pop]\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.dir.path().join("node.pem").display(),
            pki.dir.path().join("node.key").display()
        );
    std::fs::write(&a.config, cfg).unwrap();
    a.spawn();
    let node_id = eventually("x509pop node listed", Duration::from_secs(30), || {
        let n = s.cli_json(&["node", "list"]);
        n.as_array()
            .unwrap()
            .iter()
            .find(|x| x["attestor"] == "x509pop")
            .map(|x| x["spiffe_id"].as_str().unwrap().to_owned())
    });
    s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        &node_id,
        "--selector",
        &format!("unix:uid:{}", my_uid()),
    ]);
    eventually("svid served", Duration::from_secs(30), || {
        (a.cli(&["svid", "fetch"]).code == 0).then_some(())
    });

    // Evict: the agent is refused, attests again with its node certificate, keeps serving.
    let before = s.cli_json(&["node", "show", &node_id]);
    s.cli(&["node", "evict", &node_id]).ok();
    eventually("agent re-attested", Duration::from_secs(60), || {
        let r = s.cli(&["node", "show", &node_id, "--output", "json"]);
        (r.code == 0 && r.json()["cert_serial"] != before["cert_serial"]).then_some(())
    });
    s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/after-evict",
        "--parent-id",
        &node_id,
        "--selector",
        &format!("unix:uid:{}", my_uid()),
    ]);
    eventually(
        "new entry served after re-attestation",
        Duration::from_secs(30),
        || {
            let r = a.cli(&["svid", "fetch", "--output", "json"]);
            (r.code == 0 && r.json()["svids"].as_array().map(Vec::len) == Some(2)).then_some(())
        },
    );

    // Ban: the agent loses its session and cannot come back.
    s.cli(&["node", "ban", &node_id]).ok();
    let admin = a.dir.path().join("private/admin.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    eventually(
        "agent disconnected after ban",
        Duration::from_secs(60),
        || {
            let h = rt.block_on(async {
                let ch = writ_server::client::unix_channel(&admin).await.ok()?;
                writ_proto::v1::agent_admin_client::AgentAdminClient::new(ch)
                    .health(pb::AgentHealthRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            })?;
            (!h.connected).then_some(())
        },
    );
    assert_eq!(s.cli_json(&["node", "show", &node_id])["banned"], true);
    assert!(
        a.log().contains("banned"),
        "the agent says why: {}",
        a.log()
    );
}

#[test]
fn several_agents_hold_only_their_own_entries() {
    let s = TestServer::start(ServerOpts::default());
    let agents: Vec<TestAgent> = (0..3)
        .map(|i| TestAgent::start(&s, &format!("n{i}")))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let per = 1000;
    rt.block_on(async {
        let mut c = writ_server::client::admin_client(&s.socket())
            .await
            .unwrap();
        for i in 0..3 {
            let entries: Vec<pb::Entry> = (0..per)
                .map(|j| pb::Entry {
                    spiffe_id: format!("spiffe://example.org/n{i}/w{j}"),
                    parent_id: format!("spiffe://example.org/node/n{i}"),
                    selectors: vec![pb::Selector {
                        r#type: "unix".into(),
                        value: format!("uid:{}", 50_000 + j),
                    }],
                    ..Default::default()
                })
                .collect();
            c.batch_create_entries(pb::BatchCreateEntriesRequest { entries })
                .await
                .unwrap();
        }
    });
    assert_eq!(
        s.cli_json(&["entry", "list"]).as_array().unwrap().len(),
        3 * per
    );
    for a in &agents {
        let admin = a.dir.path().join("private/admin.sock");
        eventually(
            "agent holds exactly its entries, all signed",
            Duration::from_secs(120),
            || {
                let h = rt.block_on(async {
                    let ch = writ_server::client::unix_channel(&admin).await.ok()?;
                    writ_proto::v1::agent_admin_client::AgentAdminClient::new(ch)
                        .health(pb::AgentHealthRequest {})
                        .await
                        .ok()
                        .map(|r| r.into_inner())
                })?;
                assert!(
                    h.entries <= per as u64,
                    "agent holds {} entries, more than its {per}",
                    h.entries
                );
                (h.entries == per as u64 && h.svids == per as u64 && h.entries_without_svid == 0)
                    .then_some(())
            },
        );
    }
}

#[test]
fn server_kill9_during_writes_loses_nothing_acknowledged() {
    let mut s = TestServer::start(ServerOpts::default());
    let sock = s.socket();
    let writer = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..400 {
            let o = Command::new(writ_bin())
                .args([
                    "entry",
                    "create",
                    "--spiffe-id",
                    &format!("spiffe://example.org/k/{i}"),
                    "--parent-id",
                    "spiffe://example.org/n",
                    "--selector",
                    &format!("unix:uid:{i}"),
                    "--output",
                    "json",
                ])
                .env("WRIT_SERVER_SOCKET", &sock)
                .output()
                .unwrap();
            if o.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                acked.push(v["id"].as_str().unwrap().to_owned());
            } else if !acked.is_empty() {
                break;
            }
        }
        acked
    });
    // Kill the server while the writer is busy.
    eventually("some writes acknowledged", Duration::from_secs(60), || {
        (s.cli_json(&["entry", "list"]).as_array().unwrap().len() >= 20).then_some(())
    });
    s.kill9();
    let acked = writer.join().unwrap();
    assert!(!acked.is_empty());
    s.spawn();
    let listed = s.cli_json(&["entry", "list"]);
    let have: HashSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for id in &acked {
        assert!(
            have.contains(id.as_str()),
            "acknowledged entry {id} lost after kill -9"
        );
    }
}
