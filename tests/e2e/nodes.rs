//! Several agents and node lifecycle: re-attestation after eviction, bans that stick.

use super::support::*;
use std::time::Duration;
use writ_proto::v1 as pb;
use writ_testkit::*;

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
