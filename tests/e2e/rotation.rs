//! SVIDs keep verifying across CA rotations.

use super::support::*;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;
use writ_testkit::*;

/// CA lifetime 30 s, SVID lifetime 5 s: a workload fetching every 2 s across two CA rotations
/// always gets an SVID that verifies against the bundle it is given (checked with rustls-webpki
/// and, when installed, `openssl verify`).
#[test]
fn svids_verify_across_two_ca_rotations() {
    let s = TestServer::start(ServerOpts {
        ca_ttl: "30s".into(),
        ..Default::default()
    });
    let a = TestAgent::start(&s, "a");
    s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/rot",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        &format!("unix:uid:{}", my_uid()),
        "--x509-ttl",
        "5s",
    ]);
    let first_bundle = s.bundle();
    let start = Instant::now();
    let mut issuers = HashSet::new();
    let mut fetches = 0;
    let has_openssl = Command::new("openssl").arg("version").output().is_ok();
    let dir = a.dir.path().join("rot");
    // Fetch whenever the Workload API stream announces new SVIDs (every ~2.5 s with a 5 s TTL),
    // instead of on a fixed timer.
    let mut watch = Command::new(writ_bin())
        .args(["svid", "watch", "--output", "json"])
        .env("SPIFFE_ENDPOINT_SOCKET", a.endpoint())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, updates) = std::sync::mpsc::channel();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Two activations happen by ~40 s after start (activate at 5/6 of each CA's life).
    while start.elapsed() < Duration::from_secs(48) {
        updates
            .recv_timeout(Duration::from_secs(20))
            .expect("the SVID stream delivers an update within 20 s");
        let r = a.cli(&["svid", "fetch", "--out-dir", dir.to_str().unwrap()]);
        assert_eq!(
            r.code,
            0,
            "fetch at {:?}: {}\nagent log:\n{}",
            start.elapsed(),
            r.stderr,
            a.log()
        );
        let chain = writ_core::pem::decode_label(
            &std::fs::read_to_string(dir.join("svid.pem")).unwrap(),
            "CERTIFICATE",
        )
        .unwrap();
        let roots = writ_core::pem::decode_label(
            &std::fs::read_to_string(dir.join("bundle.pem")).unwrap(),
            "CERTIFICATE",
        )
        .unwrap();
        writ_testkit::webpki_verify(&chain, &roots).unwrap_or_else(|e| {
            panic!(
                "SVID does not verify against its bundle at {:?}: {e}",
                start.elapsed()
            )
        });
        if has_openssl {
            let o = Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(dir.join("bundle.pem"))
                .arg(dir.join("svid.pem"))
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&o.stdout)
            );
        }
        issuers.insert(issuer_of(&chain[0]));
        fetches += 1;
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        issuers.len() >= 3,
        "expected SVIDs from 3 CAs (two rotations), saw {} in {fetches} fetches",
        issuers.len()
    );
    let now_bundle = s.bundle();
    assert!(now_bundle.sequence > first_bundle.sequence);
    assert!(
        !now_bundle
            .x509_authorities
            .iter()
            .any(|c| first_bundle.x509_authorities.contains(c)),
        "the first CA expired and left the bundle"
    );
}
