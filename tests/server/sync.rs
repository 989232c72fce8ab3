//! The entry sync stream: resume from a revision, withdrawn entries.

use super::support::*;
use std::time::Duration;
use writ_ca::KeyType;
use writ_ca::PrivateKey;
use writ_testkit::*;

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

/// Item 13: turning a node alias entry into a plain entry triggered no resync, so the agent
/// kept serving the SVIDs of the entries under the alias. It must drop them and keep the rest.
#[test]
fn alias_turned_plain_entry_withdraws_what_was_under_it() {
    let ca = Ca::root("node ca");
    let pki = tempfile::tempdir().unwrap();
    std::fs::write(pki.path().join("ca.pem"), pem_chain(&[&ca.der])).unwrap();
    let node_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    std::fs::write(
        pki.path().join("node.pem"),
        pem_chain(&[&ca.node("node-1", &node_key)]),
    )
    .unwrap();
    std::fs::write(pki.path().join("node.key"), node_key.to_pem()).unwrap();
    let s = TestServer::start(ServerOpts {
        x509pop_bundle: Some(pki.path().join("ca.pem")),
        ..Default::default()
    });
    let a = TestAgent::start_with_attestor(
        &s,
        &format!(
            "[node_attestor.x509pop]\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.path().join("node.pem").display(),
            pki.path().join("node.key").display()
        ),
    );
    let node_id = eventually("x509pop node listed", Duration::from_secs(30), || {
        s.cli_json(&["node", "list"])[0]["spiffe_id"]
            .as_str()
            .map(str::to_owned)
    });
    let uid = format!("unix:uid:{}", my_uid());
    let alias = s.cli_json(&[
        "entry",
        "create",
        "--node",
        "--spiffe-id",
        "spiffe://example.org/cluster/a",
        "--selector",
        "x509pop:subject:cn:node-1",
    ]);
    for (id, parent) in [
        (
            "spiffe://example.org/under-alias",
            "spiffe://example.org/cluster/a",
        ),
        ("spiffe://example.org/direct", node_id.as_str()),
    ] {
        s.cli_json(&[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--parent-id",
            parent,
            "--selector",
            &uid,
        ]);
    }
    eventually("both served", Duration::from_secs(30), || {
        served_ids(&a).filter(|ids| ids.len() == 2)
    });

    // The alias becomes a plain workload entry of some other agent.
    s.cli_json(&[
        "entry",
        "update",
        alias["id"].as_str().unwrap(),
        "--parent-id",
        "spiffe://example.org/node/elsewhere",
        "--selector",
        "unix:uid:4242",
    ]);
    let served = eventually(
        "the entry under the former alias is withdrawn",
        Duration::from_secs(30),
        || served_ids(&a).filter(|ids| ids.len() == 1),
    );
    assert!(served.contains("spiffe://example.org/direct"), "{served:?}");
    let h = a.health().unwrap();
    assert_eq!(h.entries, 1, "{h:?}");
    assert_eq!(h.svids, 1, "the withdrawn SVID is dropped: {h:?}");
}
