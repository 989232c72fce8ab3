//! The mTLS example (examples/mtls): rotation without restart, openssl interop.

use super::support::*;
use std::io::Write;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use writ_testkit::*;

#[test]
fn mtls_demo_rotation_and_openssl_interop() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let uid = format!("unix:uid:{}", my_uid());
    for (id, hint, ttl) in [
        ("spiffe://example.org/server", "server", "6s"),
        ("spiffe://example.org/client", "client", "10m"),
    ] {
        s.cli_json(&[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--parent-id",
            "spiffe://example.org/node/a",
            "--selector",
            &uid,
            "--hint",
            hint,
            "--x509-ttl",
            ttl,
        ]);
    }
    eventually("both SVIDs", Duration::from_secs(30), || {
        let r = a.cli(&["svid", "fetch", "--output", "json"]);
        (r.code == 0 && r.json()["svids"].as_array().map(Vec::len) == Some(2)).then_some(())
    });
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _server = Kill(
        Command::new(demo())
            .args([
                "server",
                "--listen",
                &addr,
                "--allow",
                "spiffe://example.org/client",
                "--hint",
                "server",
            ])
            .env("SPIFFE_ENDPOINT_SOCKET", a.endpoint())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("demo server listening", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).ok()
    });
    let call = |hint: &str| {
        Command::new(demo())
            .args([
                "client",
                "--connect",
                &addr,
                "--expect",
                "spiffe://example.org/server",
                "--hint",
                hint,
            ])
            .env("SPIFFE_ENDPOINT_SOCKET", a.endpoint())
            .output()
            .unwrap()
    };
    let o = call("client");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        first.contains("hello spiffe://example.org/client"),
        "{first}"
    );
    let serial = |out: &str| {
        out.rsplit("serial ")
            .next()
            .unwrap()
            .trim_end_matches([')', '\n'])
            .to_owned()
    };
    // A client with another identity is refused by the server.
    let o = call("server");
    assert!(!o.status.success());
    // The server's SVID rotates (6 s TTL) and new handshakes use the new one, no restart.
    let s0 = serial(&first);
    eventually(
        "server presents a rotated SVID",
        Duration::from_secs(30),
        || {
            let o = call("client");
            let out = String::from_utf8_lossy(&o.stdout).to_string();
            (o.status.success() && serial(&out) != s0).then_some(())
        },
    );

    // openssl s_client with the files `writ svid fetch --out-dir` writes for the client identity.
    if Command::new("openssl").arg("version").output().is_err() {
        return;
    }
    let dir = a.dir.path().join("files");
    a.cli(&["svid", "fetch", "--out-dir", dir.to_str().unwrap()])
        .ok();
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr,
            "-quiet",
            "-verify_return_error",
        ])
        .arg("-cert")
        .arg(dir.join("svid.pem"))
        .arg("-key")
        .arg(dir.join("svid.key"))
        .arg("-CAfile")
        .arg(dir.join("bundle.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("hello spiffe://example.org/client"),
        "stdout: {out}\nstderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
