//! Node attestation: join tokens, x509pop, and what attestation may and may not prove.

use super::support::*;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use std::time::Duration;
use tonic::Code;
use writ_agent::node_client;
use writ_agent::node_client::Evidence;
use writ_ca::KeyType;
use writ_ca::PrivateKey;
use writ_proto::v1 as pb;
use writ_server::internal::fingerprint;
use writ_testkit::*;

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

/// Item 1: x509pop `ca:fingerprint` selectors came from every certificate the agent sent after
/// its leaf, and from any root whose subject matched the last certificate's issuer name, even
/// though the path builder never verified those certificates. A node of cluster A appends
/// cluster B's (public) intermediate and a self-made certificate naming B's root as issuer:
/// it must get neither of B's fingerprints, nor the SVIDs of workloads under B's node aliases,
/// and must still get A's.
#[test]
fn x509pop_selectors_come_only_from_the_verified_chain() {
    let root_a = Ca::root("cluster A root");
    let int_a = root_a.intermediate("cluster A intermediate");
    let root_b = Ca::root("cluster B root");
    let int_b = root_b.intermediate("cluster B intermediate");
    // Issued by a key of our own under B's root name: never verifies, but names B's root.
    let forged = {
        let own = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "forged");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.signed_by(
            &KeyPair::generate().unwrap(),
            &Issuer::from_params(&root_b.params, &own),
        )
        .unwrap()
        .der()
        .to_vec()
    };
    let pki = tempfile::tempdir().unwrap();
    let bundle = pki.path().join("node-ca.pem");
    std::fs::write(&bundle, pem_chain(&[&root_a.der, &root_b.der])).unwrap();
    let node_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let leaf = int_a.node("node-a1", &node_key);
    std::fs::write(
        pki.path().join("node.pem"),
        pem_chain(&[&leaf, &int_a.der, &int_b.der, &forged]),
    )
    .unwrap();
    std::fs::write(pki.path().join("node.key"), node_key.to_pem()).unwrap();

    let s = TestServer::start(ServerOpts {
        x509pop_bundle: Some(bundle),
        ..Default::default()
    });
    let uid = format!("unix:uid:{}", my_uid());
    let alias = |name: &str, ca: &[u8], workload: &str| {
        let sel = format!("x509pop:ca:fingerprint:{}", fingerprint(ca));
        let alias = format!("spiffe://example.org/cluster/{name}");
        s.cli_json(&[
            "entry",
            "create",
            "--node",
            "--spiffe-id",
            &alias,
            "--selector",
            &sel,
        ]);
        s.cli_json(&[
            "entry",
            "create",
            "--spiffe-id",
            workload,
            "--parent-id",
            &alias,
            "--selector",
            &uid,
        ]);
        sel
    };
    let a_root = alias(
        "a-root",
        &root_a.der,
        "spiffe://example.org/a/root-workload",
    );
    let a_int = alias("a-int", &int_a.der, "spiffe://example.org/a/int-workload");
    let b_root = alias(
        "b-root",
        &root_b.der,
        "spiffe://example.org/b/root-workload",
    );
    let b_int = alias("b-int", &int_b.der, "spiffe://example.org/b/int-workload");

    let a = TestAgent::start_with_attestor(
        &s,
        &format!(
            "[node_attestor.x509pop]\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.path().join("node.pem").display(),
            pki.path().join("node.key").display()
        ),
    );
    let node = eventually("x509pop node listed", Duration::from_secs(30), || {
        s.cli_json(&["node", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["attestor"] == "x509pop")
            .cloned()
    });
    let sels = selectors_of(&node);
    assert!(
        !sels.contains(&b_root),
        "B's root was never verified: {sels:?}"
    );
    assert!(
        !sels.contains(&b_int),
        "B's intermediate was never verified: {sels:?}"
    );
    assert!(
        !sels.contains(&format!("x509pop:ca:fingerprint:{}", fingerprint(&forged))),
        "{sels:?}"
    );
    assert!(
        sels.contains(&a_root),
        "A's root is in the verified path: {sels:?}"
    );
    assert!(
        sels.contains(&a_int),
        "A's intermediate is in the verified path: {sels:?}"
    );

    // The agent serves A's workloads (both signed in the same batches as B's would be) and
    // nothing of B's.
    let served = eventually("A's workloads served", Duration::from_secs(30), || {
        served_ids(&a).filter(|ids| {
            ids.contains("spiffe://example.org/a/root-workload")
                && ids.contains("spiffe://example.org/a/int-workload")
        })
    });
    assert!(
        served
            .iter()
            .all(|id| !id.starts_with("spiffe://example.org/b/")),
        "{served:?}"
    );
    let h = a.health().unwrap();
    assert_eq!(h.entries, 2, "the agent holds only A's two entries: {h:?}");
}

/// Item 11: an `Attest` stream that never sends its first message stayed open forever. The
/// server now ends it with DeadlineExceeded after a few seconds.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_attest_stream_is_closed() {
    let s = TestServer::start(ServerOpts::default());
    let mut c = anon_client(&s).await;
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::AttestRequest>(1);
    let mut st = c
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = tokio::time::timeout(Duration::from_secs(60), st.message())
        .await
        .expect("the server must end an Attest stream that sends nothing");
    assert_eq!(r.unwrap_err().code(), Code::DeadlineExceeded);
}
