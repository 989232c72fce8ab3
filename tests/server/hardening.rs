//! Bad input and resource limits: malformed calls, unsafe sockets, bad config, stream and descriptor exhaustion.

use super::support::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use writ_agent::node_client;
use writ_agent::node_client::Evidence;
use writ_ca::KeyType;
use writ_ca::PrivateKey;
use writ_proto::v1 as pb;
use writ_testkit::*;
use writ_tls::SharedBundle;

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_and_malformed_calls_are_refused() {
    let s = TestServer::start(ServerOpts::default());
    let mut c = anon_client(&s).await;
    // mTLS methods without a client certificate.
    let err = c
        .sync_entries(pb::SyncEntriesRequest { after_revision: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Unknown attestor, and a CSR that is garbage (nothing consumed).
    let t = s.cli_json(&["token", "generate"]);
    let token = t["token"].as_str().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::AttestRequest {
        step: Some(pb::attest_request::Step::Params(pb::AttestParams {
            attestor: "tpm".into(),
            payload: vec![],
            csr: vec![],
        })),
    })
    .await
    .unwrap();
    let mut st = c
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.message().await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::AttestRequest {
        step: Some(pb::attest_request::Step::Params(pb::AttestParams {
            attestor: "join_token".into(),
            payload: token.as_bytes().to_vec(),
            csr: vec![0x30, 0x03, 1, 2, 3],
        })),
    })
    .await
    .unwrap();
    let mut st = c
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.message().await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // The token was not consumed by the bad request.
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    node_client::attest(&mut c, &td(), Evidence::JoinToken(token), &key)
        .await
        .unwrap();
}

#[test]
fn admin_socket_is_private_and_unsafe_places_are_refused() {
    let s = TestServer::start(ServerOpts::default());
    let dir_mode = std::fs::metadata(s.socket().parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let sock_mode = std::fs::symlink_metadata(s.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(sock_mode, 0o600);

    // A second server on the same socket refuses to start.
    let dir = tempfile::tempdir().unwrap();
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(
            &s.dir.path().join("data").display().to_string(),
            &dir.path().join("data").display().to_string(),
        )
        .replace(
            &format!("127.0.0.1:{}", s.port),
            &format!("127.0.0.1:{}", writ_testkit::free_port()),
        );
    let p = dir.path().join("s.toml");
    std::fs::write(&p, cfg).unwrap();
    let r = writ_testkit::cli(&["server", "run", "--config", p.to_str().unwrap()], &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("in use"), "{}", r.stderr);

    // A world-writable socket directory is refused.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = format!(
        "trust_domain = \"example.org\"\nlisten = \"127.0.0.1:{}\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\n[node_attestor.join_token]\n",
        writ_testkit::free_port(),
        open.join("admin.sock").display(),
        dir.path().join("data2").display()
    );
    std::fs::write(&p, cfg).unwrap();
    let r = writ_testkit::cli(&["server", "run", "--config", p.to_str().unwrap()], &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("writable"), "{}", r.stderr);
}

#[test]
fn bad_config_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.toml");
    for (cfg, key) in [
        ("trust_domain = \"Bad\"\nlisten = \"127.0.0.1:1\"\nadmin_socket = \"/x/a.sock\"\ndata_dir = \"/x\"\n[node_attestor.join_token]\n", "trust_domain"),
        ("trust_domain = \"td\"\nlisten = \"nowhere\"\nadmin_socket = \"/x/a.sock\"\ndata_dir = \"/x\"\n[node_attestor.join_token]\n", "listen"),
        ("trust_domain = \"td\"\nlisten = \"127.0.0.1:1\"\nadmin_socket = \"/x/a.sock\"\ndata_dir = \"/x\"\ncolour = 1\n[node_attestor.join_token]\n", "colour"),
        ("trust_domain = \"td\"\nlisten = \"127.0.0.1:1\"\nadmin_socket = \"/x/a.sock\"\ndata_dir = \"/x\"\n[ca]\nttl = \"forever\"\n[node_attestor.join_token]\n", "ca.ttl"),
    ] {
        std::fs::write(&p, cfg).unwrap();
        let r = writ_testkit::cli(&["server", "run", "--config", p.to_str().unwrap()], &[]);
        assert_eq!(r.code, 1, "{cfg}");
        assert!(r.stderr.contains(key), "{key}: {}", r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    }
}

/// Item 11: the agent-facing listener had no cap on concurrent HTTP/2 streams (5,000 streams on
/// one connection were served). A client that ignores nothing but opens 2,000 Attest streams
/// that send nothing gets the server's limit in its SETTINGS and the streams over it refused.
#[tokio::test(flavor = "multi_thread")]
async fn one_connection_cannot_open_unbounded_streams() {
    use tokio::io::AsyncWriteExt;
    // The flood opens Attest streams; the attestation rate limit is not what is tested here.
    let s = TestServer::start(ServerOpts {
        extra: "attestation_rate_per_ip = 100000".into(),
        ..ServerOpts::default()
    });
    let verifier = writ_tls::SpiffeServerVerifier::new(
        SharedBundle::new(vec![s.bundle()]),
        writ_tls::exact_id(writ_core::server_id(&td())),
    );
    let tls = tokio_rustls::TlsConnector::from(Arc::new(
        writ_tls::client_config(verifier, None).unwrap(),
    ));
    let tcp = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("writ-server").unwrap();
    let conn = tls.connect(name, tcp).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(conn);
    wr.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    wr.write_all(&frame(4, 0, 0, &[])).await.unwrap();
    // Settle the settings both ways before opening streams (limits apply once acknowledged).
    let mut max_streams = None;
    let mut acked = false;
    let mut got_settings = false;
    while !(acked && got_settings) {
        let (kind, flags, _, p) =
            tokio::time::timeout(Duration::from_secs(10), read_frame(&mut rd))
                .await
                .unwrap()
                .unwrap();
        if kind == 4 && flags & 1 == 1 {
            acked = true;
        } else if kind == 4 {
            for s in p.chunks(6) {
                if s[..2] == [0, 3] {
                    max_streams = Some(u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
                }
            }
            got_settings = true;
            wr.write_all(&frame(4, 1, 0, &[])).await.unwrap();
        }
    }
    let max = max_streams.expect("the server announces SETTINGS_MAX_CONCURRENT_STREAMS");
    assert!(
        max <= 1024,
        "a cap of {max} streams per connection is too high"
    );

    let mut headers = vec![0x83, 0x87]; // :method POST, :scheme https
    hpack_literal(&mut headers, ":path", "/writ.v1.Node/Attest");
    hpack_literal(&mut headers, ":authority", "writ-server");
    hpack_literal(&mut headers, "content-type", "application/grpc");
    hpack_literal(&mut headers, "te", "trailers");
    let opened = 2000u32;
    let mut burst = Vec::new();
    for i in 0..opened {
        // END_HEADERS, not END_STREAM: each stream stays open and sends nothing.
        burst.extend(frame(1, 0x4, 2 * i + 1, &headers));
    }
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&burst).await;
        wr
    });
    let mut refused = 0u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while refused < opened - max {
        let Ok(Some((kind, _, _, p))) =
            tokio::time::timeout_at(deadline, read_frame(&mut rd)).await
        else {
            break;
        };
        match kind {
            // RST_STREAM with REFUSED_STREAM.
            3 if p == [0, 0, 0, 7] => refused += 1,
            // GOAWAY also ends the excess.
            7 => {
                refused = opened;
            }
            _ => {}
        }
    }
    drop(writer);
    assert!(
        refused >= opened - max,
        "only {refused} of {opened} streams were refused with a cap of {max}"
    );
    // The server still serves normal clients.
    let (_k, _svid) = join_node(&s).await;
}

/// Item 7: with its file descriptors used up, both accept loops spun a core and `/metrics` died
/// for good. With the server's descriptor limit lowered and idle connections holding every
/// descriptor, the server must not spin, and `/metrics` must answer again once they close.
#[test]
fn descriptor_exhaustion_neither_spins_nor_kills_metrics() {
    let s = TestServer::start(ServerOpts {
        metrics: true,
        ..Default::default()
    });
    let pid = s.pid();
    let limit = open_fds(pid) + 24;
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(st.success(), "prlimit failed");
    assert!(http_get_raw(s.metrics_port, "/metrics").is_some_and(|r| r.contains("200 OK")));

    // Idle connections to both listeners until the server has no descriptor left.
    let mut held = Vec::new();
    for _ in 0..60 {
        for port in [s.port, s.metrics_port] {
            if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                held.push(c);
            }
        }
    }
    eventually("descriptors exhausted", Duration::from_secs(30), || {
        (open_fds(pid) >= limit).then_some(())
    });
    // Measure the server's CPU time over a window while it cannot accept: a spinning accept
    // loop burns a whole core; a backing-off one almost nothing.
    let ticks_per_sec = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(100);
    let before = cpu_ticks(pid);
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let used = (cpu_ticks(pid) - before) as f64 / ticks_per_sec as f64;
    let window = t0.elapsed().as_secs_f64();
    eprintln!("server CPU while exhausted: {used:.2}s over {window:.2}s");
    assert!(
        used < window * 0.25,
        "the server burned {used:.2}s of CPU in {window:.2}s with no descriptor left"
    );

    drop(held);
    eventually("/metrics answers again", Duration::from_secs(60), || {
        http_get_raw(s.metrics_port, "/metrics").filter(|r| r.contains("writ_entries"))
    });
    assert_eq!(s.cli(&["server", "healthcheck"]).code, 0);
}
