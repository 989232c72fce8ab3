//! Restarts, server outages and the helper that keeps files fresh.

use super::support::*;
use std::process::Command;
use std::time::Duration;
use writ_testkit::*;

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
    let mut helper = std::process::Command::new(writ_testkit::writ_bin())
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

/// Item 20: `writ helper` signalled whatever PID it was given: 0 hit its own process group,
/// 4294967295 became -1 (every process the user may signal).
#[test]
fn helper_refuses_pids_that_are_not_one_process() {
    let d = tempfile::tempdir().unwrap();
    for pid in ["0", "4294967295", "2147483648"] {
        let cfg = d.path().join("helper.toml");
        std::fs::write(
            &cfg,
            format!(
                "socket = \"unix:///nonexistent/api.sock\"\nout_dir = \"{}\"\nsignal = \"HUP\"\npid = {pid}\n",
                d.path().join("out").display()
            ),
        )
        .unwrap();
        let (code, err) = run_with_deadline(
            Command::new(writ_bin())
                .args(["helper", "--config"])
                .arg(&cfg),
        );
        assert_eq!(code, Some(1), "helper accepted pid {pid}");
        assert!(err.contains("`pid`"), "pid {pid}: {err}");
    }
}
