//! The task identities example (examples/agent-tasks): an orchestrator runs jobs under their
//! own task identities against a tool service; the tool accepts each credential while the task
//! runs and refuses it once the task ended; the journal holds each task's whole lifecycle.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use writ_testkit::*;

use super::support::*;

#[test]
fn orchestrator_jobs_run_under_task_identities_the_tool_refuses_them_after() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let port = free_port();
    let (addr, aud) = (
        format!("127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}/tool"),
    );
    let entry = web_entry(&s);
    s.cli(&[
        "entry",
        "update",
        &entry,
        "--delegate",
        &format!("max_ttl=5m,max_active=10,audiences={aud}"),
    ])
    .ok();
    eventually("the workload is served", Duration::from_secs(30), || {
        served(&a)
    });
    let bin = env!("CARGO_BIN_EXE_writ-agent-tasks-demo");
    let _tool = Kill(
        Command::new(bin)
            .args(["tool", "--listen", &addr, "--audience", &aud])
            .env("SPIFFE_ENDPOINT_SOCKET", a.endpoint())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("the tool listens", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).ok()
    });
    let out = eventually("the orchestrator runs", Duration::from_secs(60), || {
        let o = Command::new(bin)
            .args([
                "orchestrator",
                "--tool",
                &addr,
                "--audience",
                &aud,
                "--jobs",
                "4",
            ])
            .env("SPIFFE_ENDPOINT_SOCKET", a.endpoint())
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| String::from_utf8(o.stdout).unwrap())
    });
    let jobs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(jobs.len(), 4, "{out}");
    for j in &jobs {
        let sid = j["spiffe_id"].as_str().unwrap();
        assert!(sid.starts_with("spiffe://example.org/web/task/"), "{j}");
        assert_eq!(
            j["before"]["status"], 200,
            "accepted while the task runs: {j}"
        );
        assert_eq!(
            j["before"]["body"], sid,
            "the tool saw the task identity: {j}"
        );
        assert_eq!(
            j["after"]["status"], 401,
            "refused after the task ended: {j}"
        );
        assert!(
            j["after"]["body"].as_str().unwrap().contains("revoked"),
            "{j}"
        );
    }
    assert_eq!(jobs[0]["credential"], "jwt");
    assert_eq!(jobs[1]["credential"], "wit");

    // One lifecycle per task in the journal: start, issue, delivery, use, revocation, end.
    for j in &jobs {
        let sid = j["spiffe_id"].as_str().unwrap();
        let issued = if j["credential"] == "jwt" {
            "jwt.issued"
        } else {
            "wit.issued"
        };
        let kinds = eventually(
            "the agent's reports arrive",
            Duration::from_secs(30),
            || {
                let t = s.cli_json(&["audit", "trace", sid]);
                let k: Vec<String> = t
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["kind"].as_str().unwrap().to_owned())
                    .collect();
                k.iter().any(|x| x == "jwt.validated").then_some(k)
            },
        );
        for want in [
            "task.started",
            issued,
            "svid.delivered",
            "jwt.validated",
            "svid.revoked",
            "task.ended",
        ] {
            assert!(
                kinds.iter().any(|k| k == want),
                "{want} missing for {sid}: {kinds:?}"
            );
        }
    }
}
