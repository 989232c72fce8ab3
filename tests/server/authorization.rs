//! What an agent may get: its authorised set, renewal, bans and evictions.

use super::support::*;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use writ_agent::node_client;
use writ_proto::v1 as pb;
use writ_testkit::*;

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
    // Batched JWT-SVIDs: each request decided on its own (B's entry refused, an empty
    // audience refused, A's minted and valid), every issued token journalled; an oversized
    // batch is refused whole.
    let resp = a
        .client
        .batch_mint_jwt(pb::BatchMintJwtRequest {
            requests: vec![
                pb::MintJwtRequest {
                    entry_id: mine_id.to_owned(),
                    audience: vec!["db".into()],
                },
                pb::MintJwtRequest {
                    entry_id: theirs_id.to_owned(),
                    audience: vec!["db".into()],
                },
                pb::MintJwtRequest {
                    entry_id: mine_id.to_owned(),
                    audience: vec![],
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = resp.results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        vec![
            0,
            Code::PermissionDenied as i32,
            Code::InvalidArgument as i32
        ]
    );
    assert!(resp.results[1].token.is_empty() && resp.results[2].token.is_empty());
    let claims =
        writ_ca::jwt::validate(&resp.results[0].token, "db", writ_core::now_unix(), |_| {
            Some(s.bundle())
        })
        .unwrap();
    let jti = claims.claims["jti"].as_str().unwrap().to_owned();
    let trace = s.cli_json(&["audit", "trace", &jti]);
    assert!(
        trace.to_string().contains("jwt.issued"),
        "batched token not journalled: {trace}"
    );
    let err = a
        .client
        .batch_mint_jwt(pb::BatchMintJwtRequest {
            requests: vec![
                pb::MintJwtRequest {
                    entry_id: mine_id.to_owned(),
                    audience: vec!["db".into()],
                };
                257
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A rogue node's 3 MiB of audiences (every one is journalled with the token): refused
    // before policy and the journal, in a batch alongside another agent's request as well;
    // the journal takes what comes next and still verifies.
    let huge: Vec<String> = (0..3000).map(|i| format!("{i:01000}")).collect();
    let err = a
        .client
        .mint_jwt(pb::MintJwtRequest {
            entry_id: mine_id.to_owned(),
            audience: huge.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("1 to 64"), "{}", err.message());
    let resp = a
        .client
        .batch_mint_jwt(pb::BatchMintJwtRequest {
            requests: vec![
                pb::MintJwtRequest {
                    entry_id: mine_id.to_owned(),
                    audience: huge[..1500].to_vec(),
                },
                pb::MintJwtRequest {
                    entry_id: mine_id.to_owned(),
                    audience: vec!["db".into()],
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = resp.results.iter().map(|r| r.code).collect();
    assert_eq!(codes, vec![Code::InvalidArgument as i32, 0]);
    let v = s.cli(&["audit", "verify", "--output", "json"]).ok().json();
    assert!(v["records"].as_u64().unwrap() > 0, "{v}");
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

/// Items 4 and 15 (race): renewal read the node record, minted, and wrote the whole record back
/// with no lock, so a ban or an eviction that landed in between was undone. 32 renewals in
/// flight race a ban (10 trials) and an eviction (20 trials); the ban and the eviction must
/// always stick.
#[tokio::test(flavor = "multi_thread")]
async fn renewals_cannot_undo_a_ban_or_an_eviction() {
    let s = TestServer::start(ServerOpts::default());
    let mut admin = writ_server::client::admin_client(&s.socket())
        .await
        .unwrap();
    for trial in 0..30 {
        let ban = trial < 10;
        let (key, svid) = join_node(&s).await;
        let client = mtls_client(&s, &key, &svid).await;
        let csr = key.csr_der().unwrap();
        let renewals: Vec<_> = (0..32)
            .map(|_| {
                let mut c = client.clone();
                let csr = csr.clone();
                tokio::spawn(async move { c.renew_agent(pb::RenewAgentRequest { csr }).await })
            })
            .collect();
        let req = pb::NodeRequest {
            spiffe_id: svid.spiffe_id.to_string(),
        };
        if ban {
            admin.ban_node(req).await.unwrap();
        } else {
            admin.evict_node(req).await.unwrap();
        }
        for r in renewals {
            let _ = r.await.unwrap();
        }
        let shown = s.cli(&["node", "show", svid.spiffe_id.as_str(), "--output", "json"]);
        if ban {
            assert_eq!(shown.code, 0, "trial {trial}: {shown:?}");
            assert_eq!(
                shown.json()["banned"],
                true,
                "trial {trial}: the ban was lost"
            );
        } else {
            assert_eq!(
                shown.code, 1,
                "trial {trial}: the evicted node came back: {}",
                shown.stdout
            );
        }
        // Whatever a racing renewal returned, the node cannot call any more.
        let err = client
            .clone()
            .sync_entries(pb::SyncEntriesRequest { after_revision: 0 })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "trial {trial}");
    }
}

/// Item 15: renewal recorded the presented serial as "previous", so a stolen older agent SVID
/// could keep renewing and lock the current one out. Only the current SVID may renew; the
/// previous one is accepted for calls only until the agent first uses the new one.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_agent_svid_cannot_renew_or_lock_out_the_current_one() {
    let s = TestServer::start(ServerOpts::default());
    let (key, svid1) = join_node(&s).await;
    let mut old = mtls_client(&s, &key, &svid1).await;
    let renewed = old
        .renew_agent(pb::RenewAgentRequest {
            csr: key.csr_der().unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let svid2 = node_client::agent_svid(renewed.svid.unwrap(), &td()).unwrap();

    // The thief holds svid1 (now the previous SVID): renewing with it is refused...
    let err = old
        .renew_agent(pb::RenewAgentRequest {
            csr: key.csr_der().unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let node = s.cli_json(&["node", "show", svid1.spiffe_id.as_str()]);
    assert_eq!(node["cert_serial"], serial_of(&svid2.chain[0]));

    // ...the current SVID keeps working, and once it is used the previous one is refused.
    let mut cur = mtls_client(&s, &key, &svid2).await;
    cur.sync_entries(pb::SyncEntriesRequest { after_revision: 0 })
        .await
        .unwrap();
    let err = old
        .sync_entries(pb::SyncEntriesRequest { after_revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // And the current one renews.
    cur.renew_agent(pb::RenewAgentRequest {
        csr: key.csr_der().unwrap(),
    })
    .await
    .unwrap();
}
