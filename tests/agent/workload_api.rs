//! The Workload API rules (spiffe-requirements.md section 4) and bad input.

use super::support::*;
use std::io::Read;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use tonic::Code;
use writ_proto::workload as wl;
use writ_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use writ_testkit::*;

#[tokio::test(flavor = "multi_thread")]
async fn workload_api_rules_and_bad_input() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let mut c = raw(&a).await;
    // No identity yet: PermissionDenied.
    let err = c
        .fetch_x509svid(with_header(wl::X509svidRequest {}, &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    create_entry(
        &s,
        "spiffe://example.org/web",
        "spiffe://example.org/node/a",
        &[],
    );
    eventually("svid served", Duration::from_secs(30), || {
        (a.cli(&["svid", "fetch"]).code == 0).then_some(())
    });

    // The header rule, on every method.
    for hv in [
        &[][..],
        &["True"][..],
        &["false"][..],
        &[""][..],
        &["true", "true"][..],
    ] {
        let err = c
            .fetch_x509svid(with_header(wl::X509svidRequest {}, hv))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{hv:?}");
        let err = c
            .fetch_jwtsvid(with_header(
                wl::JwtsvidRequest {
                    audience: vec!["a".into()],
                    spiffe_id: String::new(),
                },
                hv,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{hv:?}");
        let err = c
            .validate_jwtsvid(with_header(
                wl::ValidateJwtsvidRequest {
                    audience: "a".into(),
                    svid: "x".into(),
                },
                hv,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{hv:?}");
        let err = c
            .fetch_x509_bundles(with_header(wl::X509BundlesRequest {}, hv))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{hv:?}");
        let err = c
            .fetch_jwt_bundles(with_header(wl::JwtBundlesRequest {}, hv))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{hv:?}");
    }
    // WIT methods follow the same header rule, and check their arguments.
    for hv in [&[][..], &["false"], &["true", "true"]] {
        let err = c
            .fetch_witsvid(with_header(
                wl::WitsvidRequest {
                    spiffe_id: String::new(),
                },
                hv,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{hv:?}");
        let err = c
            .fetch_wit_bundles(with_header(wl::WitBundlesRequest {}, hv))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{hv:?}");
    }
    let err = c
        .fetch_witsvid(with_header(
            wl::WitsvidRequest {
                spiffe_id: "not-an-id".into(),
            },
            &["true"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // JWT arguments.
    let err = c
        .fetch_jwtsvid(with_header(
            wl::JwtsvidRequest {
                audience: vec![],
                spiffe_id: String::new(),
            },
            &["true"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .fetch_jwtsvid(with_header(
            wl::JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: "spiffe://example.org/../x".into(),
            },
            &["true"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .fetch_jwtsvid(with_header(
            wl::JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: "spiffe://example.org/db".into(),
            },
            &["true"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let ok = c
        .fetch_jwtsvid(with_header(
            wl::JwtsvidRequest {
                audience: vec!["a".into(), "b".into()],
                spiffe_id: "spiffe://example.org/web".into(),
            },
            &["true"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.svids.len(), 1);
    for (aud, svid) in [("", "x"), ("a", "")] {
        let err = c
            .validate_jwtsvid(with_header(
                wl::ValidateJwtsvidRequest {
                    audience: aud.into(),
                    svid: svid.into(),
                },
                &["true"],
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    let err = c
        .validate_jwtsvid(with_header(
            wl::ValidateJwtsvidRequest {
                audience: "a".into(),
                svid: "not.a.jwt".into(),
            },
            &["true"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // The X.509 answer follows the encodings of the standard.
    let mut st = c
        .fetch_x509svid(with_header(wl::X509svidRequest {}, &["true"]))
        .await
        .unwrap()
        .into_inner();
    let r = st.message().await.unwrap().unwrap();
    let svid = &r.svids[0];
    assert_eq!(svid.spiffe_id, "spiffe://example.org/web");
    let chain = writ_core::bundle::split_der_certs(&svid.x509_svid, 8).unwrap();
    let roots = writ_core::bundle::split_der_certs(&svid.bundle, 8).unwrap();
    writ_testkit::webpki_verify(&chain, &roots)
        .expect("SVID verifies against the bundle the Workload API gave");
    assert!(
        writ_ca::PrivateKey::from_pkcs8_der(&svid.x509_svid_key).is_ok(),
        "key is PKCS#8 DER"
    );
    let b = c
        .fetch_x509_bundles(with_header(wl::X509BundlesRequest {}, &["true"]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(b.bundles.contains_key("spiffe://example.org"));
    let jb = c
        .fetch_jwt_bundles(with_header(wl::JwtBundlesRequest {}, &["true"]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let jwks: serde_json::Value =
        serde_json::from_slice(&jb.bundles["spiffe://example.org"]).unwrap();
    assert!(jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["use"] == "jwt-svid" && k["kid"].is_string()));
    drop(st);

    // Garbage on the socket and clients that vanish mid-stream do not hurt anyone else.
    {
        use std::io::Write;
        let mut g = std::os::unix::net::UnixStream::connect(a.socket()).unwrap();
        let _ = g.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\x01\x02garbage");
    }
    for _ in 0..20 {
        let mut c2 = raw(&a).await;
        let mut st = c2
            .fetch_x509svid(with_header(wl::X509svidRequest {}, &["true"]))
            .await
            .unwrap()
            .into_inner();
        let _ = st.message().await;
        drop(st);
    }
    // Many concurrent streams, all answered, then the agent still serves.
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let sock = a.socket();
        tasks.push(tokio::spawn(async move {
            let ch = writ_server::client::unix_channel(&sock).await.unwrap();
            let mut c = SpiffeWorkloadApiClient::new(ch);
            let mut st = c
                .fetch_x509svid(with_header(wl::X509svidRequest {}, &["true"]))
                .await
                .unwrap()
                .into_inner();
            let m = st.message().await.unwrap().unwrap();
            (m.svids.len(), st)
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        let (n, st) = t.await.unwrap();
        assert_eq!(n, 1);
        held.push(st);
    }
    a.cli(&["svid", "fetch"]).ok();
    drop(held);
}

/// A workload command never hangs: with the server frozen (SIGSTOP) the agent cannot mint, and
/// `writ jwt fetch` used to wait forever.
#[test]
fn workload_commands_time_out_with_a_reason() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    create_entry_with(&s, "spiffe://example.org/w", &[uid_selector()]);
    eventually("served", Duration::from_secs(30), || {
        (a.cli(&["svid", "fetch"]).code == 0).then_some(())
    });
    let server_pid = s.child.as_ref().unwrap().id().to_string();
    Command::new("kill")
        .args(["-STOP", &server_pid])
        .status()
        .unwrap();
    let mut child = Command::new(writ_bin())
        .args([
            "jwt",
            "fetch",
            "--audience",
            "never-cached",
            "--timeout",
            "2s",
        ])
        .env("SPIFFE_ENDPOINT_SOCKET", a.endpoint())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually("jwt fetch gives up", Duration::from_secs(30), || {
        child.try_wait().unwrap()
    });
    Command::new("kill")
        .args(["-CONT", &server_pid])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("within 2s"), "{err}");
}
