//! Helpers shared by the modules of this suite.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;
use writ_proto::workload as wl;
use writ_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use writ_testkit::*;

pub(crate) fn create_entry(s: &TestServer, id: &str, parent: &str, extra: &[&str]) -> String {
    let uid = format!("unix:uid:{}", my_uid());
    let mut args = vec![
        "entry",
        "create",
        "--spiffe-id",
        id,
        "--parent-id",
        parent,
        "--selector",
        &uid,
    ];
    args.extend_from_slice(extra);
    s.cli_json(&args)["id"].as_str().unwrap().to_owned()
}

pub(crate) fn create_entry_with(s: &TestServer, id: &str, selectors: &[String]) -> String {
    let mut args = vec![
        "entry".to_owned(),
        "create".into(),
        "--spiffe-id".into(),
        id.into(),
        "--parent-id".into(),
        "spiffe://example.org/node/a".into(),
    ];
    for sel in selectors {
        args.push("--selector".into());
        args.push(sel.clone());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    s.cli_json(&refs)["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn raw(a: &TestAgent) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(
        writ_server::client::unix_channel(&a.socket())
            .await
            .unwrap(),
    )
}

pub(crate) fn with_header<T>(msg: T, values: &[&'static str]) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    for v in values {
        r.metadata_mut().append(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static(v),
        );
    }
    r
}

pub(crate) async fn next(
    st: &mut tonic::Streaming<wl::X509svidResponse>,
) -> Result<Option<wl::X509svidResponse>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(20), st.message())
        .await
        .expect("stream update in time")
}

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Runs a command that should exit by itself; kills it after 20 s (exit code `None`).
pub(crate) fn run_with_deadline(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

pub(crate) fn uid_selector() -> String {
    format!("unix:uid:{}", my_uid())
}

/// Pid of the agent process.
pub(crate) fn agent_pid(a: &TestAgent) -> u32 {
    a.child.as_ref().unwrap().id()
}

/// Whether the peer closed `s` (EOF or reset) within `within`.
pub(crate) fn closed_by_peer(s: &mut UnixStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

pub(crate) const EXEC_ATTACK: &str = r#"
import os, socket, sys, time, select
agent_sock, relay_path, trusted, do_exec = sys.argv[1:5]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(agent_sock)
pid = os.fork()
if pid > 0:
    # The connecting process: after connecting, become the trusted binary (or just wait).
    time.sleep(0.3)
    if do_exec == "1":
        os.execv(trusted, [trusted, "120"])
    time.sleep(120)
    sys.exit(0)
# The child keeps the inherited connection and relays a local socket onto it, so that an
# ordinary gRPC client (`writ svid fetch`) speaks over the connection the parent opened.
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(relay_path)
l.listen(1)
print("ready", flush=True)
c, _ = l.accept()
ends = {c: s, s: c}
while True:
    r, _, _ = select.select([c, s], [], [], 30)
    if not r:
        break
    done = False
    for x in r:
        data = x.recv(65536)
        if not data:
            done = True
            break
        ends[x].sendall(data)
    if done:
        break
"#;

/// Runs the exec attack: returns the `writ svid fetch` result through the inherited connection.
pub(crate) fn exec_attack(a: &TestAgent, trusted: &Path, exec: bool) -> writ_testkit::Run {
    let dir = tempfile::tempdir_in(a.dir.path()).unwrap();
    let script = dir.path().join("attack.py");
    std::fs::write(&script, EXEC_ATTACK).unwrap();
    let relay = dir.path().join("relay.sock");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(a.socket())
        .arg(&relay)
        .arg(trusted)
        .arg(if exec { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"ready\n");
    let parent = child.id();
    if exec {
        // Wait until the connecting PID really runs the trusted binary.
        eventually("parent exec'd", Duration::from_secs(10), || {
            (std::fs::read_link(format!("/proc/{parent}/exe")).ok()? == trusted).then_some(())
        });
    }
    let r = writ_testkit::cli(
        &[
            "svid",
            "fetch",
            "--output",
            "json",
            "--socket",
            &format!("unix://{}", relay.display()),
        ],
        &[],
    );
    let _ = child.kill();
    let _ = child.wait();
    r
}

pub(crate) fn jwt_sub(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["sub"].as_str().unwrap().to_owned()
}
