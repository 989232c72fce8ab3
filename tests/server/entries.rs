//! Entries through the operator CLI: create, update, delete, bad input, durability.

use super::support::*;
use std::collections::HashSet;
use std::time::Duration;
use writ_core::Selector;
use writ_core::SpiffeId;
use writ_testkit::*;

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

/// Item 17: reserved IDs were not protected from operators: `writ x509 mint` issued the
/// server's own ID, entries under `/writ/agent/...` and token aliases equal to another agent's
/// ID were accepted. Each is refused with InvalidArgument (exit 2) naming the ID.
#[tokio::test(flavor = "multi_thread")]
async fn reserved_ids_are_refused_to_operators() {
    let s = TestServer::start(ServerOpts::default());
    let (_, agent) = join_node(&s).await;
    let agent_id = agent.spiffe_id.to_string();
    let server = "spiffe://example.org/writ/server";
    let under = "spiffe://example.org/writ/agent/join_token/00000000-0000-0000-0000-000000000000";
    let refused = |args: &[&str], id: &str| {
        let r = s.cli(args);
        assert_eq!(r.code, 2, "{args:?} was not refused: {r:?}");
        assert!(
            r.stderr.contains(id),
            "{args:?}: the refusal names `{id}`: {}",
            r.stderr
        );
    };
    for id in [
        server,
        agent_id.as_str(),
        under,
        "spiffe://example.org/writ/other",
    ] {
        refused(&["x509", "mint", "--spiffe-id", id], id);
        refused(&["jwt", "mint", "--spiffe-id", id, "--audience", "x"], id);
        refused(
            &[
                "entry",
                "create",
                "--spiffe-id",
                id,
                "--parent-id",
                "spiffe://example.org/node/a",
                "--selector",
                "unix:uid:1",
            ],
            id,
        );
        refused(&["token", "generate", "--spiffe-id", id], id);
    }
    // Updating an entry to a reserved ID is refused too.
    let e = s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        &agent_id,
        "--selector",
        "unix:uid:1",
    ]);
    refused(
        &[
            "entry",
            "update",
            e["id"].as_str().unwrap(),
            "--spiffe-id",
            agent_id.as_str(),
        ],
        &agent_id,
    );
    // Agent IDs stay usable as parents (above), and ordinary IDs as usual.
    s.cli_json(&["x509", "mint", "--spiffe-id", "spiffe://example.org/ops"]);
    s.cli_json(&[
        "token",
        "generate",
        "--spiffe-id",
        "spiffe://example.org/node/ok",
    ]);
    let nodes = s.cli_json(&["node", "list"]);
    assert_eq!(nodes.as_array().unwrap().len(), 1);
}

/// Item 8: a page of 500 valid entries could exceed the 4 MiB gRPC message limit, so an agent
/// holding them could not sync (it reconnected five times a second and its workloads lost their
/// identities) and `writ entry list` failed. Snapshots, pushed changes, signing batches and the
/// admin list now all stay under the limit.
#[tokio::test(flavor = "multi_thread")]
async fn entries_near_the_limits_sync_and_list() {
    let s = TestServer::start(ServerOpts::default());
    let alias = SpiffeId::parse("spiffe://example.org/node/big").unwrap();
    // The snapshot: 520 big entries and one the test process matches, before the agent starts.
    create_big(&s, 0..520, &alias).await;
    let mut probe = big_entry(10_000, &alias);
    probe.spiffe_id = SpiffeId::parse("spiffe://example.org/probe").unwrap();
    probe.selectors = vec![Selector::parse(&format!("unix:uid:{}", my_uid())).unwrap()];
    let mut admin = writ_server::client::admin_client(&s.socket())
        .await
        .unwrap();
    admin
        .create_entry(writ_proto::convert::entry_to_pb(&probe))
        .await
        .unwrap();
    let a = TestAgent::start(&s, "big");
    let want = 521;
    let h = eventually(
        "the agent holds every entry",
        Duration::from_secs(120),
        || {
            a.health()
                .filter(|h| h.entries == want && h.entries_without_svid == 0)
        },
    );
    assert_eq!(h.svids, want);
    eventually("the workload is served", Duration::from_secs(30), || {
        served_ids(&a).filter(|ids| ids.contains("spiffe://example.org/probe"))
    });

    // One pushed change that brings 300 big entries at once: they are nested under an ID the
    // agent gets only when the last entry is created.
    let team = SpiffeId::parse("spiffe://example.org/team").unwrap();
    create_big(&s, 520..820, &team).await;
    s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        team.as_str(),
        "--parent-id",
        alias.as_str(),
        "--selector",
        "unix:uid:4242",
    ]);
    let want = 822;
    eventually(
        "the agent holds the new entries",
        Duration::from_secs(120),
        || {
            a.health()
                .filter(|h| h.entries == want && h.entries_without_svid == 0)
        },
    );

    // The CLI lists them all (paged underneath), as one JSON array.
    let listed = s.cli_json(&["entry", "list"]);
    let ids: HashSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), want as usize);
    let filtered = s.cli_json(&["entry", "list", "--parent-id", team.as_str()]);
    assert_eq!(filtered.as_array().unwrap().len(), 300);
}
