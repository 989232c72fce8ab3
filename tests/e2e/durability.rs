//! kill -9 of the server during writes loses nothing acknowledged.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;
use writ_testkit::*;

#[test]
fn server_kill9_during_writes_loses_nothing_acknowledged() {
    let mut s = TestServer::start(ServerOpts::default());
    let sock = s.socket();
    let writer = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..400 {
            let o = Command::new(writ_bin())
                .args([
                    "entry",
                    "create",
                    "--spiffe-id",
                    &format!("spiffe://example.org/k/{i}"),
                    "--parent-id",
                    "spiffe://example.org/n",
                    "--selector",
                    &format!("unix:uid:{i}"),
                    "--output",
                    "json",
                ])
                .env("WRIT_SERVER_SOCKET", &sock)
                .output()
                .unwrap();
            if o.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                acked.push(v["id"].as_str().unwrap().to_owned());
            } else if !acked.is_empty() {
                break;
            }
        }
        acked
    });
    // Kill the server while the writer is busy.
    eventually("some writes acknowledged", Duration::from_secs(60), || {
        (s.cli_json(&["entry", "list"]).as_array().unwrap().len() >= 20).then_some(())
    });
    s.kill9();
    let acked = writer.join().unwrap();
    assert!(!acked.is_empty());
    s.spawn();
    let listed = s.cli_json(&["entry", "list"]);
    let have: HashSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for id in &acked {
        assert!(
            have.contains(id.as_str()),
            "acknowledged entry {id} lost after kill -9"
        );
    }
}
