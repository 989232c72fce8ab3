//! Resource limits against local callers: connections, frames, descriptors, JWT audiences, admin directories.

use super::support::*;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;
use tonic::Code;
use writ_proto::workload as wl;
use writ_testkit::*;

/// Item 5: the `:authority` shim buffered whole frames of up to 16 MiB before h2 applied its
/// limits; 32 connections took the agent from 14 to 527 MiB.
#[test]
fn huge_frames_are_not_buffered_by_the_authority_shim() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let pid = agent_pid(&a);
    let before = rss_kib(pid);
    let mut conns = Vec::new();
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..32 {
        let mut c = UnixStream::connect(a.socket()).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(PREFACE).unwrap();
        // A HEADERS frame that claims 16 MiB - 1 bytes, then 4 MiB of it.
        c.write_all(&[0xff, 0xff, 0xff, 0x01, 0x04, 0, 0, 0, 1])
            .unwrap();
        let mut sent = 0;
        while sent < 4 * 1024 * 1024 {
            if c.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        conns.push(c);
    }
    let after = rss_kib(pid);
    for c in &mut conns {
        assert!(
            closed_by_peer(c, Duration::from_secs(10)),
            "the agent kept a connection that sent an oversized frame"
        );
    }
    // 32 x 4 MiB were sent; the agent must not have kept them (allow 32 MiB of noise).
    assert!(
        after < before + 32 * 1024,
        "agent RSS grew from {before} KiB to {after} KiB"
    );
}

/// Issue 11, item 6: the `:authority` shim capped a pending header block by its fragment bytes
/// only, so empty CONTINUATION frames (9 bytes each, no fragment) were all held back: one local
/// connection could grow the agent without bound. Now the cap counts the frames' bytes, and
/// past it the shim hands everything to h2, which ends the connection.
#[test]
fn empty_continuation_frames_are_not_buffered_by_the_authority_shim() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let pid = agent_pid(&a);
    let before = rss_kib(pid);
    let mut c = UnixStream::connect(a.socket()).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(PREFACE).unwrap();
    // HEADERS on stream 1 without END_HEADERS, then 48 MiB of empty CONTINUATION frames.
    c.write_all(&[0, 0, 1, 0x01, 0x00, 0, 0, 0, 1, 0x83])
        .unwrap();
    let chunk = [0u8, 0, 0, 0x09, 0, 0, 0, 0, 1].repeat(7282);
    let mut sent = 0;
    while sent < 48 * 1024 * 1024 {
        if c.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    // Measured while the connection may still be open: held frames would still be held.
    let after = rss_kib(pid);
    assert!(
        closed_by_peer(&mut c, Duration::from_secs(15)),
        "the agent kept a connection flooding CONTINUATION frames"
    );
    assert!(
        after < before + 16 * 1024,
        "agent RSS grew from {before} KiB to {after} KiB after {sent} bytes of frames"
    );
}

/// Items 5 and 7: no cap on Workload API connections and no deadline for an idle one; a local
/// user could take every descriptor of the agent. (Default limits: 512 per UID, 10 s.)
#[test]
fn connections_are_capped_per_uid_and_idle_ones_time_out() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    create_entry_with(&s, "spiffe://example.org/w", &[uid_selector()]);
    eventually("served", Duration::from_secs(30), || {
        (a.cli(&["svid", "fetch"]).code == 0).then_some(())
    });
    let mut held: Vec<UnixStream> = (0..512)
        .map(|_| UnixStream::connect(a.socket()).unwrap())
        .collect();
    // One more is closed at once.
    let mut over = UnixStream::connect(a.socket()).unwrap();
    assert!(
        closed_by_peer(&mut over, Duration::from_secs(5)),
        "a 513th connection of one uid was kept"
    );
    let refused = a.cli(&["svid", "fetch", "--timeout", "3s"]);
    assert_ne!(refused.code, 0);
    // The idle ones are closed once their first-request deadline passes...
    for c in &mut held {
        assert!(
            closed_by_peer(c, Duration::from_secs(20)),
            "an idle connection outlived its first-request deadline"
        );
    }
    held.clear();
    // ...and the caller is served again.
    eventually("served again", Duration::from_secs(10), || {
        (a.cli(&["svid", "fetch"]).code == 0).then_some(())
    });
}

/// The `[workload_api]` limits are read from the config.
#[test]
fn connection_limits_come_from_the_config() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start_with(
        &s,
        "a",
        "[workload_api]\nmax_connections_per_uid = 4\nfirst_request_timeout = \"1s\"\n",
        &[],
    );
    let mut held: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(a.socket()).unwrap())
        .collect();
    let mut over = UnixStream::connect(a.socket()).unwrap();
    assert!(closed_by_peer(&mut over, Duration::from_secs(5)));
    for c in &mut held {
        assert!(closed_by_peer(c, Duration::from_secs(10)));
    }
}

/// Item 7: with descriptors exhausted, the accept loop spun a core. It backs off now, and
/// serves again once connections close.
#[test]
fn descriptor_exhaustion_does_not_spin_and_recovers() {
    let s = TestServer::start(ServerOpts::default());
    // 96 descriptors, fewer than the per-uid cap (512): the agent runs out of descriptors.
    let a = TestAgent::start_with(&s, "a", "", &["prlimit", "--nofile=96:96"]);
    create_entry_with(&s, "spiffe://example.org/w", &[uid_selector()]);
    eventually("served", Duration::from_secs(30), || {
        (a.cli(&["svid", "fetch"]).code == 0).then_some(())
    });
    let pid = agent_pid(&a);
    let mut held = Vec::new();
    for _ in 0..200 {
        match UnixStream::connect(a.socket()) {
            Ok(c) => held.push(c),
            Err(_) => break,
        }
    }
    // Let the agent hit EMFILE on the backlog, then measure its CPU over two seconds.
    std::thread::sleep(Duration::from_millis(500));
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - t0;
    // A spinning accept loop burns ~200 ticks (a whole core) in 2 s.
    assert!(
        used < 60,
        "agent used {used} ticks in 2 s with descriptors exhausted"
    );
    held.clear();
    eventually("served after the flood", Duration::from_secs(15), || {
        (a.cli(&["svid", "fetch"]).code == 0).then_some(())
    });
}

/// Item 6: audiences were unbounded (keys of up to ~64 KiB) and every new list cost a server
/// signature and a cache entry forever: 3,000 lists took the agent to 425 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_audiences_are_bounded_and_new_lists_rate_limited() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    create_entry_with(&s, "spiffe://example.org/w", &[uid_selector()]);
    eventually("served", Duration::from_secs(30), || {
        (a.cli(&["svid", "fetch"]).code == 0).then_some(())
    });
    let mut c = writ_client::workload::connect(Some(&a.endpoint()))
        .await
        .unwrap();
    let fetch = |aud: Vec<String>| wl::JwtsvidRequest {
        audience: aud,
        spiffe_id: String::new(),
    };
    let many: Vec<String> = (0..17).map(|i| format!("aud{i}")).collect();
    let e = c.fetch_jwtsvid(fetch(many)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .fetch_jwtsvid(fetch(vec!["x".repeat(60 * 1024)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let pid = agent_pid(&a);
    let before = rss_kib(pid);
    let mut limited = 0;
    for i in 0..1000 {
        let aud = vec![format!("{i}-{}", "a".repeat(500)); 1];
        match c.fetch_jwtsvid(fetch(aud)).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::ResourceExhausted => limited += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(
        limited > 0,
        "1,000 new audience lists in a burst were all signed"
    );
    let after = rss_kib(pid);
    assert!(
        after < before + 64 * 1024,
        "agent RSS {before} -> {after} KiB"
    );
    // A known list is still served from the cache.
    c.fetch_jwtsvid(fetch(vec!["0-".to_owned() + &"a".repeat(500)]))
        .await
        .unwrap();
}

/// Item 12: the JWT cache was keyed by entry ID and kept across a change of the entry's SPIFFE
/// ID: a token with the old `sub` was served after a rename.
#[test]
fn renamed_entry_gets_a_token_with_the_new_subject() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let id = create_entry_with(&s, "spiffe://example.org/old", &[uid_selector()]);
    let fetch = || {
        let r = a.cli(&["jwt", "fetch", "--audience", "x", "--output", "json"]);
        (r.code == 0).then(|| r.json())
    };
    let first = eventually("jwt", Duration::from_secs(30), fetch);
    assert_eq!(
        jwt_sub(first["svids"][0]["token"].as_str().unwrap()),
        "spiffe://example.org/old"
    );
    s.cli_json(&[
        "entry",
        "update",
        &id,
        "--spiffe-id",
        "spiffe://example.org/new",
    ]);
    let renamed = eventually(
        "renamed entry reaches the agent",
        Duration::from_secs(30),
        || fetch().filter(|v| v["svids"][0]["spiffe_id"] == "spiffe://example.org/new"),
    );
    assert_eq!(
        jwt_sub(renamed["svids"][0]["token"].as_str().unwrap()),
        "spiffe://example.org/new"
    );
}

/// Item 14: admin socket directories were accepted at 0755.
#[test]
fn agent_refuses_a_wide_admin_directory() {
    let s = TestServer::start(ServerOpts::default());
    let mut a = TestAgent::start(&s, "a");
    a.kill9();
    let private = a.dir.path().join("private");
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (code, err) = run_with_deadline(
        Command::new(writ_bin())
            .args(["agent", "run", "--config"])
            .arg(&a.config),
    );
    assert_eq!(
        code,
        Some(1),
        "the agent started with a 0755 admin directory"
    );
    assert!(err.contains("0700"), "{err}");
}
