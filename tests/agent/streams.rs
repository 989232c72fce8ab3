//! Streams follow entry changes, rotation and expiry.

use super::support::*;
use std::time::Duration;
use tonic::Code;
use writ_proto::workload as wl;
use writ_testkit::*;

#[tokio::test(flavor = "multi_thread")]
async fn streams_follow_entry_changes_and_rotation() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let first = create_entry(
        &s,
        "spiffe://example.org/one",
        "spiffe://example.org/node/a",
        &["--x509-ttl", "6s"],
    );
    let mut c = raw(&a).await;
    let mut st = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match c
                .fetch_x509svid(with_header(wl::X509svidRequest {}, &["true"]))
                .await
            {
                Ok(r) => break r.into_inner(),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    let m = next(&mut st).await.unwrap().unwrap();
    assert_eq!(m.svids.len(), 1);
    let serial = |m: &wl::X509svidResponse, i: usize| {
        let chain = writ_core::bundle::split_der_certs(&m.svids[i].x509_svid, 8).unwrap();
        use x509_parser::prelude::*;
        let (_, c) = X509Certificate::from_der(&chain[0]).unwrap();
        c.raw_serial().to_vec()
    };
    // Rotation at about half of the 6 s lifetime: a new full message with a new SVID.
    let s0 = serial(&m, 0);
    let m2 = next(&mut st).await.unwrap().unwrap();
    assert_eq!(m2.svids.len(), 1);
    assert_ne!(serial(&m2, 0), s0, "rotated SVID has a new serial");
    let roots = writ_core::bundle::split_der_certs(&m2.svids[0].bundle, 8).unwrap();
    writ_testkit::webpki_verify(
        &writ_core::bundle::split_der_certs(&m2.svids[0].x509_svid, 8).unwrap(),
        &roots,
    )
    .expect("rotated SVID verifies");

    // A second entry for the same workload: the stream gets both.
    let second = create_entry(
        &s,
        "spiffe://example.org/two",
        "spiffe://example.org/node/a",
        &[],
    );
    let m3 = loop {
        let m = next(&mut st).await.unwrap().unwrap();
        if m.svids.len() == 2 {
            break m;
        }
    };
    let ids: Vec<&str> = m3.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        ["spiffe://example.org/one", "spiffe://example.org/two"],
        "stable default order"
    );
    // Deleting both: the stream says PermissionDenied.
    s.cli(&["entry", "delete", &first, &second]).ok();
    let end = loop {
        match next(&mut st).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(end.code(), Code::PermissionDenied);
    let r = a.cli(&["svid", "fetch"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
}

/// An identity minted for one task: an entry with `expires_at` is served until then, and the
/// workload's stream says PermissionDenied once it has passed (pushed by the server's expiry
/// wake-up, not by a poll).
#[tokio::test(flavor = "multi_thread")]
async fn expiring_entries_stop_being_served() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let expires = writ_core::now_unix() + 4;
    let at = time::OffsetDateTime::from_unix_timestamp(expires)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    create_entry(
        &s,
        "spiffe://example.org/task/42",
        "spiffe://example.org/node/a",
        &[
            "--expires-at",
            &at,
            "--owner",
            "agent-runner",
            "--purpose",
            "one task",
        ],
    );
    let mut c = raw(&a).await;
    let mut st = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match c
                .fetch_x509svid(with_header(wl::X509svidRequest {}, &["true"]))
                .await
            {
                Ok(r) => break r.into_inner(),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    let first = st.message().await.unwrap().unwrap();
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/task/42");
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(20), st.message())
            .await
            .expect("stream ends in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(end.code(), Code::PermissionDenied);
    assert!(writ_core::now_unix() >= expires);
}
