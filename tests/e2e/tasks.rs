//! Task identities through the real processes: a workload asks its agent (over the Workload
//! API socket, `writ task ...`) for an identity for one task; the server refuses what is wider
//! than allowed, policy decides, the journal holds the whole lifecycle, and ending the task
//! revokes what it holds for every independent verifier (`ValidateJWTSVID`, `openssl verify
//! -crl_check`, rustls-webpki with the CRL).

use std::time::{Duration, Instant};

use serde_json::Value;
use writ_testkit::*;

use super::support::*;

/// Starts a task as this process (through agent `a`); the JSON on success, else the run.
fn start(a: &TestAgent, extra: &[&str]) -> Result<Value, Run> {
    let mut args = vec!["task", "start", "--output", "json"];
    args.extend_from_slice(extra);
    let r = a.cli(&args);
    if r.code == 0 {
        Ok(r.json())
    } else {
        Err(r)
    }
}

fn refused(r: Result<Value, Run>, code: &str, text: &str) {
    let r = r.expect_err("the task should have been refused");
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(code) && r.stderr.contains(text),
        "wanted {code} / `{text}`, got: {}",
        r.stderr
    );
}

/// Entry `web` for this process, allowed to delegate.
fn delegating_web(s: &TestServer, a: &TestAgent, delegate: &str) -> String {
    let id = web_entry(s);
    s.cli(&["entry", "update", &id, "--delegate", delegate])
        .ok();
    eventually("the workload is served", Duration::from_secs(30), || {
        served(a)
    });
    id
}

fn kinds(trace: &Value) -> Vec<String> {
    trace
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_task_is_narrow_its_lifecycle_is_journalled_and_its_end_revokes_it_everywhere() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let entry = web_entry(&s);
    eventually("the workload is served", Duration::from_secs(30), || {
        served(&a)
    });

    // Without delegation: refused.
    refused(
        start(&a, &["--purpose", "summarise ticket 42"]),
        "PermissionDenied",
        "--delegate",
    );
    // Bad delegation settings are refused by the CLI and change nothing.
    let r = s.cli(&["entry", "update", &entry, "--delegate", "max_ttl=2d"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("max_ttl"), "{}", r.stderr);

    s.cli(&[
        "entry",
        "update",
        &entry,
        "--delegate",
        "max_ttl=10m,max_active=3,audiences=tool|other",
    ])
    .ok();
    let shown = s.cli_json(&["entry", "show", &entry]);
    assert_eq!(shown["delegate"]["max_ttl"], 600, "{shown}");
    assert_eq!(shown["delegate"]["max_active"], 3, "{shown}");

    let task = eventually(
        "the agent sees the delegation",
        Duration::from_secs(30),
        || {
            start(
                &a,
                &[
                    "--purpose",
                    "summarise ticket 42",
                    "--ttl",
                    "5m",
                    "--audience",
                    "tool",
                    "--want",
                    "x509,jwt",
                ],
            )
            .ok()
        },
    );
    let tid = task["task_id"].as_str().unwrap().to_owned();
    let tsid = task["spiffe_id"].as_str().unwrap().to_owned();
    assert_eq!(tsid, format!("spiffe://example.org/web/task/{tid}"));
    assert_eq!(task["owner"], "spiffe://example.org/web");
    assert_eq!(task["purpose"], "summarise ticket 42");
    assert_eq!(task["audiences"], serde_json::json!(["tool"]));
    assert_eq!(task["state"], "active");
    let jwt = task["jwt_svid"].as_str().unwrap().to_owned();

    // Independent checks of what it got: the X509-SVID chains to the bundle (openssl and
    // rustls-webpki) and names the task; the JWT-SVID validates for its audience only.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("task.pem"),
        task["x509_svid_pem"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bundle.pem"),
        task["bundle_pem"].as_str().unwrap(),
    )
    .unwrap();
    let (ok, text) = openssl(&["verify", "-CAfile", "bundle.pem", "task.pem"], dir.path());
    assert!(ok, "{text}");
    let (_, text) = openssl(
        &[
            "x509",
            "-in",
            "task.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
        dir.path(),
    );
    assert!(text.contains(&format!("URI:{tsid}")), "{text}");
    let chain = pem_ders(task["x509_svid_pem"].as_str().unwrap());
    let roots = pem_ders(task["bundle_pem"].as_str().unwrap());
    webpki_verify(&chain, &roots).unwrap();
    let v = a.cli(&["jwt", "validate", "--audience", "tool", &jwt]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(v.stdout.contains(&tsid), "{}", v.stdout);
    assert_ne!(
        a.cli(&["jwt", "validate", "--audience", "other", &jwt])
            .code,
        0,
        "the token is for `tool` only"
    );

    // Wider than allowed: refused, and nothing starts.
    refused(
        start(&a, &["--purpose", "x", "--ttl", "11m"]),
        "InvalidArgument",
        "longer than",
    );
    refused(
        start(
            &a,
            &["--purpose", "x", "--audience", "evil", "--want", "jwt"],
        ),
        "InvalidArgument",
        "audience `evil`",
    );
    refused(
        start(&a, &["--purpose", " "]),
        "InvalidArgument",
        "purpose is required",
    );
    // A sub-task only narrows: not longer than its parent, not an audience the parent lacks.
    refused(
        start(&a, &["--purpose", "sub", "--parent", &tid, "--ttl", "6m"]),
        "InvalidArgument",
        "longer than",
    );
    refused(
        start(
            &a,
            &[
                "--purpose",
                "sub",
                "--parent",
                &tid,
                "--audience",
                "other",
                "--want",
                "jwt",
            ],
        ),
        "InvalidArgument",
        "audience `other`",
    );
    let sub = start(
        &a,
        &[
            "--purpose",
            "fetch one page",
            "--parent",
            &tid,
            "--ttl",
            "1m",
        ],
    )
    .unwrap();
    let sub_sid = sub["spiffe_id"].as_str().unwrap().to_owned();
    assert!(sub_sid.starts_with(&format!("{tsid}/task/")), "{sub_sid}");
    assert_eq!(sub["owner"], tsid.as_str());
    std::fs::write(
        dir.path().join("sub.pem"),
        sub["x509_svid_pem"].as_str().unwrap(),
    )
    .unwrap();
    // A path outside its parent is not something a caller can even ask for: the ID is made
    // by the server under the parent's. A task of another entry is not found.
    refused(
        start(
            &a,
            &[
                "--purpose",
                "x",
                "--parent",
                "0123456789abcdef0123456789abcdef",
            ],
        ),
        "NotFound",
        "no task",
    );
    // max_active = 3: the third runs, the fourth is refused.
    let third = start(&a, &["--purpose", "third", "--ttl", "1m"]).unwrap();
    refused(
        start(&a, &["--purpose", "fourth"]),
        "ResourceExhausted",
        "max_active 3",
    );
    let listed = a.cli(&["task", "list", "--output", "json"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");

    // End the task: it and its sub-task are revoked at once.
    let ended = a
        .cli(&[
            "task", "end", &tid, "--reason", "job done", "--output", "json",
        ])
        .ok()
        .json();
    assert_eq!(ended["state"], "ended", "{ended}");
    assert_eq!(
        ended["revoked"], 3,
        "x509 + jwt of the task, x509 of the sub-task: {ended}"
    );
    let again = a.cli(&["task", "end", &tid]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("is ended"), "{}", again.stderr);
    let shown = a
        .cli(&[
            "task",
            "show",
            sub["task_id"].as_str().unwrap(),
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(shown["state"], "ended", "{shown}");
    let third_shown = a
        .cli(&[
            "task",
            "show",
            third["task_id"].as_str().unwrap(),
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(
        third_shown["state"], "active",
        "other tasks are untouched: {third_shown}"
    );

    // ValidateJWTSVID refuses the ended task's token.
    eventually(
        "the agent refuses the token",
        Duration::from_secs(30),
        || {
            let v = a.cli(&["jwt", "validate", "--audience", "tool", &jwt]);
            (v.code != 0 && v.stderr.contains("revoked")).then_some(())
        },
    );
    // The CRL the Workload API serves lists both certificates; openssl and rustls-webpki
    // refuse them.
    eventually(
        "the CRL lists the task's certificates",
        Duration::from_secs(30),
        || {
            a.cli(&["svid", "fetch", "--out-dir", dir.path().to_str().unwrap()])
                .ok();
            let (ok, _) = openssl(
                &[
                    "verify",
                    "-crl_check",
                    "-CAfile",
                    "bundle.pem",
                    "-CRLfile",
                    "crl.pem",
                    "task.pem",
                ],
                dir.path(),
            );
            (!ok).then_some(())
        },
    );
    for cert in ["task.pem", "sub.pem"] {
        let (ok, text) = openssl(
            &[
                "verify",
                "-crl_check",
                "-CAfile",
                "bundle.pem",
                "-CRLfile",
                "crl.pem",
                cert,
            ],
            dir.path(),
        );
        assert!(!ok && text.contains("revoked"), "{cert}: {text}");
    }
    let crl = pem_ders(&std::fs::read_to_string(dir.path().join("crl.pem")).unwrap());
    let e = webpki_verify_with_crls(&chain, &roots, &crl).unwrap_err();
    assert!(e.contains("Revoked"), "{e}");

    // One lifecycle in the journal: started, issued, delivered, used, revoked, ended.
    let trace = eventually(
        "the delivery records arrive",
        Duration::from_secs(30),
        || {
            let t = s.cli_json(&["audit", "trace", &tsid]);
            let k = kinds(&t);
            (k.iter().any(|k| k == "svid.delivered") && k.iter().any(|k| k == "jwt.validated"))
                .then_some(t)
        },
    );
    let k = kinds(&trace);
    for want in [
        "task.started",
        "x509.issued",
        "jwt.issued",
        "svid.delivered",
        "jwt.validated",
        "svid.revoked",
        "task.ended",
    ] {
        assert!(k.iter().any(|x| x == want), "{want} missing from {k:?}");
    }
    let pos = |w: &str| k.iter().position(|x| x == w).unwrap();
    assert!(
        pos("task.started") < pos("x509.issued") && pos("svid.revoked") < pos("task.ended"),
        "{k:?}"
    );
    let started = &trace[pos("task.started")];
    assert_eq!(started["task_id"], tid.as_str());
    assert_eq!(started["details"]["purpose"], "summarise ticket 42");
    assert_eq!(started["details"]["owner"], "spiffe://example.org/web");
    s.cli(&["audit", "verify"]).ok();
}

#[test]
fn policy_decides_every_task_start_and_denials_are_journalled() {
    let pdir = tempfile::tempdir().unwrap();
    let policy = pdir.path().join("tasks.cedar");
    std::fs::write(
        &policy,
        r#"
@id("permit-mints")
permit (principal, action in [Writ::Action::"mint_x509", Writ::Action::"mint_jwt"], resource);

@id("short-tasks-with-a-ticket")
permit (principal is Writ::Workload, action == Writ::Action::"start_task", resource)
when { context.ttl <= 60 && context.purpose like "ticket *" };
"#,
    )
    .unwrap();
    let s = TestServer::start(ServerOpts {
        extra: format!("[policy]\nfiles = [\"{}\"]\n", policy.display()),
        ..ServerOpts::default()
    });
    let a = TestAgent::start(&s, "a");
    delegating_web(&s, &a, "max_ttl=10m");
    let denied = eventually(
        "the agent sees the delegation",
        Duration::from_secs(30),
        || match start(&a, &["--purpose", "ticket 7", "--ttl", "5m"]) {
            Err(r) if r.stderr.contains("PermissionDenied") => Some(r),
            _ => None,
        },
    );
    assert!(denied.stderr.contains("policy"), "{}", denied.stderr);
    refused(
        start(&a, &["--purpose", "no ticket", "--ttl", "30s"]),
        "PermissionDenied",
        "policy",
    );
    let ok = start(&a, &["--purpose", "ticket 7", "--ttl", "30s"]).unwrap();
    assert_eq!(ok["state"], "active");
    let recs = s.cli_json(&["audit", "list", "--kind", "policy.denied"]);
    let recs = recs.as_array().unwrap();
    assert_eq!(recs.len(), 2, "{recs:?}");
    for r in recs {
        assert!(
            r["spiffe_id"].as_str().unwrap().contains("/web/task/"),
            "{r}"
        );
        assert!(r["task_id"].is_string(), "{r}");
    }
}

#[test]
fn a_task_outlives_a_dead_server_but_not_its_parent_identity() {
    let mut s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let entry = delegating_web(&s, &a, "max_ttl=10m,audiences=tool");
    let task = eventually("a task starts", Duration::from_secs(30), || {
        start(&a, &["--purpose", "p", "--want", "jwt"]).ok()
    });
    let jwt = task["jwt_svid"].as_str().unwrap().to_owned();

    // Server down: the running task's token still validates (bundle on the agent), and a new
    // task fails with Unavailable instead of hanging.
    s.kill9();
    let t0 = Instant::now();
    refused(start(&a, &["--purpose", "p"]), "Unavailable", "");
    eprintln!(
        "StartTask with the server down failed in {:?}",
        t0.elapsed()
    );
    let v = a.cli(&["jwt", "validate", "--audience", "tool", &jwt]);
    assert_eq!(v.code, 0, "{v:?}");

    // Back up, the task is still running; deleting the entry that started it ends it and
    // revokes its token.
    s.spawn();
    eventually(
        "the workload is served again",
        Duration::from_secs(60),
        || served(&a),
    );
    s.cli(&["entry", "delete", &entry]).ok();
    eventually(
        "the task is ended with its parent identity",
        Duration::from_secs(30),
        || {
            let recs = s.cli_json(&["audit", "list", "--kind", "task.ended"]);
            recs.as_array()
                .unwrap()
                .iter()
                .any(|r| r["task_id"] == task["task_id"])
                .then_some(())
        },
    );
    eventually("the token is refused", Duration::from_secs(30), || {
        let v = a.cli(&["jwt", "validate", "--audience", "tool", &jwt]);
        (v.code != 0 && v.stderr.contains("revoked")).then_some(())
    });
}

#[test]
fn exec_runs_a_command_with_the_task_credentials_and_ends_the_task_when_it_exits() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    delegating_web(&s, &a, "max_ttl=10m,audiences=tool");
    let script = r#"test -s "$WRIT_TASK_JWT_FILE" && test -s "$WRIT_TASK_DIR/svid.pem" \
        && test "$(stat -c %a "$WRIT_TASK_DIR")" = 700 && test "$(stat -c %a "$WRIT_TASK_DIR/svid.key")" = 600 \
        && echo "$WRIT_TASK_ID $WRIT_TASK_SPIFFE_ID $WRIT_TASK_DIR"; exit 3"#;
    let r = eventually("the task runs the command", Duration::from_secs(30), || {
        let r = a.cli(&[
            "task",
            "start",
            "--purpose",
            "exec",
            "--want",
            "x509,jwt",
            "--exec",
            "sh",
            "-c",
            script,
        ]);
        (r.code == 3).then_some(r)
    });
    let out: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(out.len(), 3, "the command saw its credentials: {r:?}");
    let (id, sid, dir) = (out[0], out[1], out[2]);
    assert_eq!(sid, format!("spiffe://example.org/web/task/{id}"));
    assert!(
        !std::path::Path::new(dir).exists(),
        "the task directory is removed"
    );
    let shown = a.cli(&["task", "show", id, "--output", "json"]).ok().json();
    assert_eq!(shown["state"], "ended", "{shown}");
    assert!(
        shown["end_reason"].as_str().unwrap().contains("exited (3)"),
        "{shown}"
    );
}

/// Review findings M4 and M5: `--out-dir` used to `create_dir_all` then chmod whatever was
/// there (a symlink's target, another user's or a world-writable directory, whose owner could
/// then swap `bundle.pem`); and a `writ task start --exec` killed by SIGTERM left its task
/// running and its files behind. Now an unsafe directory is refused before any task starts,
/// and a signal goes to the command, after which the task is ended as usual.
#[test]
fn unsafe_out_dirs_are_refused_and_a_signalled_exec_still_ends_its_task() {
    use std::os::unix::fs::PermissionsExt;
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    delegating_web(&s, &a, "max_ttl=10m,audiences=tool");
    eventually("tasks start", Duration::from_secs(30), || {
        start(&a, &["--purpose", "warm up"]).ok()
    });
    let before = a.cli(&["task", "list", "--output", "json"]).ok().json();
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    for (bad, why) in [(&open, "writable by group or others"), (&link, "symlink")] {
        let r = a.cli(&[
            "task",
            "start",
            "--purpose",
            "p",
            "--out-dir",
            bad.to_str().unwrap(),
        ]);
        assert!(r.code != 0 && r.stderr.contains(why), "{r:?}");
    }
    let mode = std::fs::metadata(&open).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o777, "an existing directory is never chmod-ed");
    assert!(
        std::fs::read_dir(&open).unwrap().next().is_none(),
        "nothing written"
    );
    let after = a.cli(&["task", "list", "--output", "json"]).ok().json();
    assert_eq!(before, after, "no task was started for a refused directory");

    // SIGTERM to `writ task start --exec`: the command gets it, the task still ends.
    let mut child = std::process::Command::new(writ_bin())
        .args([
            "task",
            "start",
            "--purpose",
            "long job",
            "--exec",
            "sh",
            "-c",
        ])
        .arg("echo \"$WRIT_TASK_ID\"; exec sleep 30")
        .env("SPIFFE_ENDPOINT_SOCKET", a.endpoint())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let id = line.trim().to_owned();
    assert_eq!(id.len(), 32, "{line}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let shown = a
        .cli(&["task", "show", &id, "--output", "json"])
        .ok()
        .json();
    assert_eq!(shown["state"], "ended", "{shown}");
}
