//! The quick start of docs/quickstart.md, run as written.

use std::io::BufRead;
use std::io::BufReader;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use writ_testkit::*;

#[test]
fn writ_dev_quick_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(writ_bin())
        .arg("dev")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("dev.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let endpoint = eventually(
        "writ dev prints the export line",
        Duration::from_secs(120),
        || {
            while let Ok(l) = rx.try_recv() {
                printed.push(l);
            }
            printed.iter().find_map(|l| {
                l.trim()
                    .strip_prefix("export SPIFFE_ENDPOINT_SOCKET=")
                    .map(str::to_owned)
            })
        },
    );
    eventually("ready line", Duration::from_secs(30), || {
        while let Ok(l) = rx.try_recv() {
            printed.push(l);
        }
        printed
            .iter()
            .any(|l| l.contains("Press Ctrl-C"))
            .then_some(())
    });
    // The default socket lives under ./.writ-dev of the invoking directory, never directly in /tmp.
    let expected = format!(
        "unix://{}/.writ-dev/agent/public/api.sock",
        std::fs::canonicalize(dir.path()).unwrap().display()
    );
    assert_eq!(endpoint, expected);

    // The next command it suggests.
    let certs = dir.path().join("certs");
    let out = Command::new(writ_bin())
        .args(["svid", "fetch", "--out-dir", certs.to_str().unwrap()])
        .env("SPIFFE_ENDPOINT_SOCKET", &endpoint)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("spiffe://example.org/user/"), "{text}");
    if Command::new("openssl").arg("version").output().is_ok() {
        let v = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(certs.join("bundle.pem"))
            .arg(certs.join("svid.pem"))
            .output()
            .unwrap();
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    }

    // Ctrl-C stops it cleanly.
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = eventually("writ dev exits", Duration::from_secs(30), || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "exit status {status}");

    // Running it again resumes (same directory, same identity, no new attestation needed).
    let mut again = Command::new(writ_bin())
        .arg("dev")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(again.stdout.take().unwrap()).lines();
    let mut ready = false;
    for l in lines.by_ref() {
        if l.unwrap().contains("Press Ctrl-C") {
            ready = true;
            break;
        }
    }
    assert!(ready);
    let out = Command::new(writ_bin())
        .args(["svid", "fetch"])
        .env("SPIFFE_ENDPOINT_SOCKET", &endpoint)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Command::new("kill")
        .args(["-TERM", &again.id().to_string()])
        .status()
        .unwrap();
    let status = eventually("writ dev exits", Duration::from_secs(30), || {
        again.try_wait().unwrap()
    });
    assert!(status.success());
}
