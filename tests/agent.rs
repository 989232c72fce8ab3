//! End-to-end tests of `writ agent run` with a real server: the Workload API as the `spiffe`
//! crate (an independent client) sees it, the Workload API rules of spiffe-requirements.md
//! section 4, stream updates on entry changes and rotation, restarts, and a server outage.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

mod common;

use std::time::Duration;

use common::{eventually, my_uid, ServerOpts, TestAgent, TestServer};
use tonic::Code;
use writ_proto::workload as wl;
use writ_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

fn create_entry(s: &TestServer, id: &str, parent: &str, extra: &[&str]) -> String {
    let uid = format!("unix:uid:{}", my_uid());
    let mut args = vec![
        "entry",
        "create",
        "--spiffe-id",
        id,
        "--parent-id",
        parent,
        "--selector",
        &uid,
    ];
    args.extend_from_slice(extra);
    s.cli_json(&args)["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_crate_fetches_and_validates() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    create_entry(
        &s,
        "spiffe://example.org/web",
        "spiffe://example.org/node/a",
        &["--hint", "web"],
    );
    let client = spiffe::WorkloadApiClient::connect_to(a.endpoint())
        .await
        .unwrap();
    // The entry reaches the agent and is signed: poll with a deadline.
    let svid = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match client.fetch_x509_svid().await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("no SVID: {e}"),
            }
        }
    };
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/web");
    assert_eq!(svid.hint(), Some("web"));
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle = bundles.get(&td).expect("own trust domain bundle");
    let roots: Vec<Vec<u8>> = bundle
        .authorities()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let chain: Vec<Vec<u8>> = svid
        .cert_chain()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    common::webpki_verify(&chain, &roots)
        .expect("SVID verifies against the bundle the Workload API gave");
    // Same roots as the server publishes.
    assert_eq!(roots, s.bundle().x509_authorities);

    // JWT-SVIDs: fetched, validated by the agent, and by writ-ca against the JWT bundle the
    // Workload API serves.
    let token = client.fetch_jwt_token(["db"], None).await.unwrap();
    let validated = client.validate_jwt_token("db", &token).await.unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example.org/web"
    );
    assert!(client.validate_jwt_token("other", &token).await.is_err());
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(jwt_bundles.get(&td).is_some());
    let own = s.bundle();
    assert!(
        writ_ca::jwt::validate(&token, "db", writ_core::now_unix(), |_| Some(own.clone())).is_ok()
    );
    // A second fetch for the same audience is served from the agent's cache (same token).
    assert_eq!(client.fetch_jwt_token(["db"], None).await.unwrap(), token);

    // The CLI does the same and writes files openssl accepts.
    let out = a.dir.path().join("certs");
    a.cli(&["svid", "fetch", "--out-dir", out.to_str().unwrap()])
        .ok();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join("svid.key"))
            .unwrap()
            .permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok()
    {
        let o = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(out.join("bundle.pem"))
            .arg(out.join("svid.pem"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let t = a
        .cli(&["jwt", "fetch", "--audience", "svc"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let v = a
        .cli(&[
            "jwt",
            "validate",
            "--audience",
            "svc",
            &t,
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(v["spiffe_id"], "spiffe://example.org/web");
    assert_eq!(v["claims"]["aud"], "svc");
    let bad = a.cli(&["jwt", "validate", "--audience", "nope", &t]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("audience"), "{}", bad.stderr);
}

async fn raw(a: &TestAgent) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(
        writ_server::client::unix_channel(&a.socket())
            .await
            .unwrap(),
    )
}

fn with_header<T>(msg: T, values: &[&'static str]) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    for v in values {
        r.metadata_mut().append(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static(v),
        );
    }
    r
}

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
    // WIT methods are optional and not implemented.
    let err = c
        .fetch_witsvid(with_header(
            wl::WitsvidRequest {
                spiffe_id: String::new(),
            },
            &["true"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    let err = c
        .fetch_wit_bundles(with_header(wl::WitBundlesRequest {}, &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
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
    common::webpki_verify(&chain, &roots)
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

async fn next(
    st: &mut tonic::Streaming<wl::X509svidResponse>,
) -> Result<Option<wl::X509svidResponse>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(20), st.message())
        .await
        .expect("stream update in time")
}

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
    common::webpki_verify(
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

#[test]
fn agent_restart_keeps_identity_and_survives_server_outage() {
    let mut s = TestServer::start(ServerOpts::default());
    let mut a = TestAgent::start(&s, "a");
    create_entry(
        &s,
        "spiffe://example.org/web",
        "spiffe://example.org/node/a",
        &[],
    );
    eventually("svid served", Duration::from_secs(30), || {
        (a.cli(&["svid", "fetch"]).code == 0).then_some(())
    });
    let nodes = s.cli_json(&["node", "list"]);
    let agent_id = nodes[0]["spiffe_id"].as_str().unwrap().to_owned();
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(a.dir.path().join("data/agent_svid.key"))
            .unwrap()
            .permissions(),
    ) & 0o777;
    assert_eq!(key_mode, 0o600);

    // kill -9 and restart: same identity, no new attestation (the token is used up anyway).
    a.kill9();
    a.spawn();
    let nodes = s.cli_json(&["node", "list"]);
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["spiffe_id"], agent_id.as_str());
    eventually("svid served after restart", Duration::from_secs(30), || {
        (a.cli(&["svid", "fetch"]).code == 0).then_some(())
    });

    // Server down: the agent keeps serving what it has.
    s.kill9();
    let r = a.cli(&["svid", "fetch", "--output", "json"]).ok().json();
    assert_eq!(r["svids"][0]["spiffe_id"], "spiffe://example.org/web");
    // Server back (same port and data): the agent reconnects and sees new entries.
    s.spawn();
    create_entry(
        &s,
        "spiffe://example.org/later",
        "spiffe://example.org/node/a",
        &["--hint", "later"],
    );
    eventually(
        "agent resumed and picked up the new entry",
        Duration::from_secs(60),
        || {
            let r = a.cli(&["svid", "fetch", "--output", "json"]);
            (r.code == 0 && r.json()["svids"].as_array().map(|v| v.len()) == Some(2)).then_some(())
        },
    );
}

/// Child process for the mTLS test: takes its identity from the Workload API (the `spiffe` crate),
/// serves one mTLS connection with rustls, and answers with the client's SPIFFE ID.
#[tokio::test(flavor = "multi_thread")]
async fn mtls_server_child() {
    let Ok(port_file) = std::env::var("WRIT_MTLS_CHILD") else {
        return;
    };
    let client = spiffe::WorkloadApiClient::connect_env().await.unwrap();
    let ctx = client.fetch_x509_context().await.unwrap();
    let me = ctx
        .svids()
        .iter()
        .find(|s| s.hint() == Some("server"))
        .unwrap();
    let chain: Vec<Vec<u8>> = me
        .cert_chain()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let roots: Vec<Vec<u8>> = ctx
        .bundle_set()
        .get(&td)
        .unwrap()
        .authorities()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let mut bundle = writ_core::Bundle::new(writ_core::TrustDomain::new("example.org").unwrap());
    bundle.x509_authorities = roots;
    let resolver = writ_tls::SvidResolver::new(&chain, me.private_key().as_ref()).unwrap();
    let verifier = writ_tls::SpiffeClientVerifier::new(
        writ_tls::SharedBundle::new(vec![bundle]),
        writ_tls::exact_id(writ_core::SpiffeId::parse("spiffe://example.org/client").unwrap()),
        false,
    );
    let cfg = writ_tls::server_config(resolver, verifier).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    std::fs::write(&port_file, l.local_addr().unwrap().port().to_string()).unwrap();
    let (tcp, _) = l.accept().await.unwrap();
    let mut tls = acceptor.accept(tcp).await.unwrap();
    let peer = tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec();
    let peer_id = writ_ca::svid::check_leaf(&peer).unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    tls.write_all(format!("pong {peer_id}\n").as_bytes())
        .await
        .unwrap();
    tls.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_between_two_processes_with_issued_svids() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    create_entry(
        &s,
        "spiffe://example.org/server",
        "spiffe://example.org/node/a",
        &["--hint", "server"],
    );
    create_entry(
        &s,
        "spiffe://example.org/client",
        "spiffe://example.org/node/a",
        &["--hint", "client"],
    );
    eventually("both svids", Duration::from_secs(30), || {
        let r = a.cli(&["svid", "fetch", "--output", "json"]);
        (r.code == 0 && r.json()["svids"].as_array().map(|v| v.len()) == Some(2)).then_some(())
    });
    let port_file = a.dir.path().join("mtls.port");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "mtls_server_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WRIT_MTLS_CHILD", &port_file)
        .env("SPIFFE_ENDPOINT_SOCKET", a.endpoint())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let port: u16 = eventually("child listening", Duration::from_secs(30), || {
        std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
    });
    // This process is the client, with its own SVID from the Workload API.
    let client = spiffe::WorkloadApiClient::connect_to(a.endpoint())
        .await
        .unwrap();
    let ctx = client.fetch_x509_context().await.unwrap();
    let me = ctx
        .svids()
        .iter()
        .find(|s| s.hint() == Some("client"))
        .unwrap();
    let chain: Vec<Vec<u8>> = me
        .cert_chain()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let resolver = writ_tls::SvidResolver::new(&chain, me.private_key().as_ref()).unwrap();
    let verifier = writ_tls::SpiffeServerVerifier::new(
        writ_tls::SharedBundle::new(vec![s.bundle()]),
        writ_tls::exact_id(writ_core::SpiffeId::parse("spiffe://example.org/server").unwrap()),
    );
    let mut cfg = writ_tls::client_config(verifier, Some(resolver)).unwrap();
    cfg.alpn_protocols.clear();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut tls = connector
        .connect(
            rustls_pki_types::ServerName::try_from("ignored").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"ping").await.unwrap();
    let mut reply = String::new();
    tls.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply.trim(), "pong spiffe://example.org/client");
    assert!(child.wait().unwrap().success());
}

#[test]
fn helper_keeps_files_fresh_and_runs_the_reload_command() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    create_entry(
        &s,
        "spiffe://example.org/files",
        "spiffe://example.org/node/a",
        &["--x509-ttl", "4s"],
    );
    let out = a.dir.path().join("helper-out");
    let marker = a.dir.path().join("reloads");
    let cfg = a.dir.path().join("helper.toml");
    std::fs::write(
        &cfg,
        format!(
            "socket = \"{}\"\nout_dir = \"{}\"\ncmd = \"echo reload >> {}\"\n",
            a.endpoint(),
            out.display(),
            marker.display()
        ),
    )
    .unwrap();
    let mut helper = std::process::Command::new(common::writ_bin())
        .args(["helper", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Two reloads: the first SVID, then its rotation (4 s TTL, rotated at about half life).
    let serials = std::cell::RefCell::new(std::collections::HashSet::new());
    eventually(
        "helper wrote files and reloaded twice",
        Duration::from_secs(30),
        || {
            if let Ok(pem) = std::fs::read_to_string(out.join("svid.pem")) {
                if let Ok(certs) = writ_core::pem::decode_label(&pem, "CERTIFICATE") {
                    serials.borrow_mut().insert(certs[0].clone());
                }
            }
            let reloads = std::fs::read_to_string(&marker)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            (reloads >= 2 && serials.borrow().len() >= 2).then_some(())
        },
    );
    let _ = helper.kill();
    let _ = helper.wait();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join("svid.key"))
            .unwrap()
            .permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);
    assert!(out.join("bundle.pem").exists());
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

/// py-spiffe (the Python SPIFFE library, on grpc-core) against the agent. grpc-core sends the
/// socket path as `:authority`, which the agent's shim rewrites (see writ-agent's `authority`).
/// `.ci/run` installs py-spiffe into a virtualenv and points `WRIT_PY_SPIFFE` at its python.
#[test]
fn py_spiffe_fetches_and_validates() {
    let py = std::env::var("WRIT_PY_SPIFFE").unwrap_or_else(|_| "python3".into());
    let available = std::process::Command::new(&py)
        .args(["-c", "import spiffe, cryptography"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        eprintln!(
            "py-spiffe is not installed (.ci/run installs it): skipping the Python interop check"
        );
        return;
    }
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    create_entry(
        &s,
        "spiffe://example.org/py",
        "spiffe://example.org/node/a",
        &[],
    );
    eventually("svid served", Duration::from_secs(30), || {
        (a.cli(&["svid", "fetch"]).code == 0).then_some(())
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/interop/py_spiffe_check.py");
    let o = std::process::Command::new(&py)
        .arg(script)
        .arg(a.endpoint())
        .arg("spiffe://example.org/py")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "py-spiffe check failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");
}
