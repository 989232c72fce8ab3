//! Independent clients: the `spiffe` crate, py-spiffe, and mTLS between two processes.

use super::support::*;
use std::time::Duration;
use writ_testkit::*;

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
    writ_testkit::webpki_verify(&chain, &roots)
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
            "interop::mtls_server_child",
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
