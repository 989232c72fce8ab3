//! The real `writ` processes the benchmark sections start (to measure their memory and to
//! kill them): a server, agents, and the helpers that drive and watch them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use writ_agent::node_client::Node;
use writ_proto::v1 as pb;
use writ_store::Store;

use writ_testkit::{free_port, writ_bin};

use crate::sections::{entry, percentile, sim_agent};

pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) struct ServerProc {
    pub(crate) proc: Proc,
    pub(crate) addr: String,
    pub(crate) admin: PathBuf,
}

impl ServerProc {
    /// Stops the server the way an operator would (SIGTERM) and waits for it to exit, so its
    /// datastore is closed cleanly (a SIGKILL leaves sled a log to replay at the next start).
    pub(crate) fn stop(mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.proc.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.proc.0.wait();
    }
}

fn server_config(dir: &Path, port: u16) -> PathBuf {
    let cfg = dir.join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "trust_domain = \"example.org\"\nlisten = \"127.0.0.1:{port}\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\nattestation_rate_per_ip = 100000\n[ca]\nttl = \"24h\"\n[node_attestor.join_token]\n[metrics]\nlisten = \"127.0.0.1:{}\"\n",
            dir.join("run/admin.sock").display(),
            dir.join("data").display(),
            port + 1
        ),
    )
    .unwrap();
    cfg
}

/// Starts `writ server run` and returns it with its start-up time (spawn to first admin answer).
pub(crate) async fn spawn_server(dir: &Path) -> (ServerProc, Duration) {
    let port = loop {
        let p = free_port();
        if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let cfg = server_config(dir, port);
    let t = Instant::now();
    let child = Command::new(writ_bin())
        .args(["server", "run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let admin = dir.join("run/admin.sock");
    loop {
        if let Ok(mut c) = writ_server::client::admin_client(&admin).await {
            if c.get_bundle(pb::GetBundleRequest {}).await.is_ok() {
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (
        ServerProc {
            proc: Proc(child),
            addr: format!("127.0.0.1:{port}"),
            admin,
        },
        t.elapsed(),
    )
}

pub(crate) async fn own_bundle(admin: &Path) -> writ_core::Bundle {
    let mut c = writ_server::client::admin_client(admin).await.unwrap();
    let b = c
        .get_bundle(pb::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    writ_proto::convert::bundle_from_pb(&b).unwrap()
}

pub(crate) async fn token(admin: &Path, alias: &str) -> String {
    let mut c = writ_server::client::admin_client(admin).await.unwrap();
    c.create_join_token(pb::CreateJoinTokenRequest {
        spiffe_id: format!("spiffe://example.org/node/{alias}"),
        ttl_secs: 3600,
    })
    .await
    .unwrap()
    .into_inner()
    .token
}

/// Writes `measured` entries for alias `measured` and the rest spread over `sim` aliases, with
/// the store's bulk path, before the server starts.
pub(crate) fn populate(dir: &Path, total: usize, measured: usize, sim: usize) {
    let store = writ_store::SledStore::open(dir.join("data/datastore")).unwrap();
    let mut batch = Vec::new();
    let flush = |b: &mut Vec<writ_core::Entry>| {
        if !b.is_empty() {
            store.create_entries(std::mem::take(b)).unwrap();
        }
    };
    for i in 0..total {
        let parent = if i < measured {
            "measured".to_owned()
        } else {
            format!("sim-{}", i % sim.max(1))
        };
        batch.push(entry(
            &format!("spiffe://example.org/w/{i}"),
            &format!("spiffe://example.org/node/{parent}"),
            &format!("unix:uid:{}", 100_000 + i),
            0,
        ));
        if batch.len() == 5000 {
            flush(&mut batch);
        }
    }
    flush(&mut batch);
}

/// Times the initial sync of the `measured` agent: from the call to the last snapshot page.
pub(crate) async fn measured_sync(srv: &ServerProc, runs: usize, expect: usize) -> f64 {
    let bundle = own_bundle(&srv.admin).await;
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = token(&srv.admin, "measured").await;
        let mut c = sim_agent(&srv.addr, &bundle, &t).await;
        let start = Instant::now();
        let mut st = c
            .sync_entries(pb::SyncEntriesRequest { after_revision: 0 })
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        loop {
            let m = st.message().await.unwrap().unwrap();
            if let Some(pb::sync_entries_response::Event::Snapshot(p)) = m.event {
                n += p.entries.len();
                if p.last {
                    break;
                }
            }
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(n, expect, "the measured agent got exactly its entries");
    }
    percentile(&mut times, 50.0)
}

/// A sim agent's sync stream, opened and read up to the end of its first snapshot; returned
/// with the client so both stay open.
pub(crate) async fn synced(mut c: Node) -> (Node, tonic::Streaming<pb::SyncEntriesResponse>) {
    let mut st = c
        .sync_entries(pb::SyncEntriesRequest { after_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    loop {
        let m = st.message().await.unwrap().unwrap();
        if let Some(pb::sync_entries_response::Event::Snapshot(p)) = m.event {
            if p.last {
                break;
            }
        }
    }
    (c, st)
}

/// A started agent process: its admin socket and, to restart it, its config.
pub(crate) struct AgentProc {
    pub(crate) proc: Proc,
    pub(crate) admin: PathBuf,
    pub(crate) config: PathBuf,
}

impl AgentProc {
    /// The Workload API endpoint.
    pub(crate) fn endpoint(&self) -> String {
        let dir = self.config.parent().unwrap();
        format!("unix://{}", dir.join("public/api.sock").display())
    }
}

/// Writes an agent's config (a fresh join token for `alias`) and starts it.
pub(crate) async fn spawn_agent(dir: &Path, srv: &ServerProc, alias: &str) -> AgentProc {
    let t = token(&srv.admin, alias).await;
    let bundle = own_bundle(&srv.admin).await;
    let ad = dir.join(format!("agent-{alias}"));
    std::fs::create_dir_all(&ad).unwrap();
    std::fs::write(ad.join("bootstrap.pem"), bundle.x509_pem()).unwrap();
    let cfg = ad.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "trust_domain = \"example.org\"\nserver_address = \"{}\"\nsocket_path = \"{}\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\ntrust_bundle_path = \"{}\"\n[node_attestor.join_token]\ntoken = \"{t}\"\n",
            srv.addr,
            ad.join("public/api.sock").display(),
            ad.join("private/admin.sock").display(),
            ad.join("data").display(),
            ad.join("bootstrap.pem").display()
        ),
    )
    .unwrap();
    start_agent(&cfg).await
}

/// Starts `writ agent run` with an existing config (a restart resumes from its data dir) and
/// waits until it is connected to its server.
pub(crate) async fn start_agent(cfg: &Path) -> AgentProc {
    let ad = cfg.parent().unwrap();
    let child = Command::new(writ_bin())
        .args(["agent", "run", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(ad.join("agent.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let admin = ad.join("private/admin.sock");
    let start = Instant::now();
    loop {
        if let Some(h) = agent_health(&admin).await {
            if !h.agent_id.is_empty() && h.connected {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "agent did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    AgentProc {
        proc: Proc(child),
        admin,
        config: cfg.to_owned(),
    }
}

pub(crate) async fn agent_health(admin: &Path) -> Option<pb::AgentHealthResponse> {
    let ch = writ_server::client::unix_channel(admin).await.ok()?;
    writ_proto::v1::agent_admin_client::AgentAdminClient::new(ch)
        .health(pb::AgentHealthRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

pub(crate) async fn create_bulk(admin: &Path, alias: &str, n: usize, ttl: u64, uid: u32) {
    let mut c = writ_server::client::admin_client(admin).await.unwrap();
    let all: Vec<pb::Entry> = (0..n)
        .map(|i| {
            writ_proto::convert::entry_to_pb(&entry(
                &format!("spiffe://example.org/{alias}/{i}"),
                &format!("spiffe://example.org/node/{alias}"),
                &format!("unix:uid:{uid}"),
                ttl,
            ))
        })
        .collect();
    for chunk in all.chunks(5000) {
        c.batch_create_entries(pb::BatchCreateEntriesRequest {
            entries: chunk.to_vec(),
        })
        .await
        .unwrap();
    }
}

pub(crate) async fn wait_agent_svids(admin: &Path, n: u64) {
    let start = Instant::now();
    loop {
        if let Some(h) = agent_health(admin).await {
            if h.svids >= n && h.entries_without_svid == 0 {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "agent did not get {n} SVIDs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn metric(port: u16, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return f64::NAN;
    };
    let _ = write!(c, "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}
