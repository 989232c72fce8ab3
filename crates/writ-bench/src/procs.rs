//! Sections that need separate processes (to measure their memory): the real `writ` binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use writ_agent::node_client::Node;
use writ_proto::v1 as pb;
use writ_store::Store;

use writ_testkit::{free_port, rss_kib, writ_bin};

use crate::sections::{entry, percentile, sim_agent, td};
use crate::{Row, Sizes};

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
fn populate(dir: &Path, total: usize, measured: usize, sim: usize) {
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
async fn measured_sync(srv: &ServerProc, runs: usize, expect: usize) -> f64 {
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

pub async fn scale(sz: &Sizes) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut sync_ms = Vec::new();
    for total in [sz.scale_total, sz.small_total] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let t = Instant::now();
        populate(dir.path(), total, sz.measured, sz.sim_agents);
        eprintln!(
            "  populated {total} entries in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let (srv, startup) = spawn_server(dir.path()).await;
        let rss_idle = rss_kib(srv.proc.0.id());
        let ms = measured_sync(&srv, 15, sz.measured).await;
        sync_ms.push(ms);
        if total == sz.scale_total {
            rows.push(Row::new(
                "scale",
                format!("server start-up with {total} entries (spawn to first admin answer, s)"),
                format!("{:.2}", startup.as_secs_f64()),
            ));
            rows.push(Row::new(
                "scale",
                format!("server RSS with {total} entries, idle (MiB)"),
                format!("{:.1}", rss_idle as f64 / 1024.0),
            ));
            // Many agents at once: attest, connect, complete their snapshot, stay connected.
            let bundle = own_bundle(&srv.admin).await;
            let mut tokens = Vec::new();
            for i in 0..sz.sim_agents {
                tokens.push(token(&srv.admin, &format!("sim-{i}")).await);
            }
            let start = Instant::now();
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
            let mut tasks = Vec::new();
            for tok in tokens {
                let (addr, bundle, sem) = (srv.addr.clone(), bundle.clone(), sem.clone());
                tasks.push(tokio::spawn(async move {
                    let permit = sem.acquire_owned().await.unwrap();
                    let c = sim_agent(&addr, &bundle, &tok).await;
                    let held = synced(c).await;
                    drop(permit);
                    held
                }));
            }
            let mut held = Vec::new();
            for t in tasks {
                held.push(t.await.unwrap());
            }
            let all = start.elapsed().as_secs_f64();
            let rss_agents = rss_kib(srv.proc.0.id());
            rows.push(Row::new(
                "scale",
                format!(
                    "{} agents attest + connect + initial sync (~{} entries each), all done (s)",
                    sz.sim_agents,
                    (total - sz.measured) / sz.sim_agents.max(1)
                ),
                format!("{all:.2}"),
            ));
            rows.push(
                Row::new(
                    "scale",
                    format!(
                        "server RSS with {total} entries and {} agents connected (MiB)",
                        sz.sim_agents
                    ),
                    format!("{:.1}", rss_agents as f64 / 1024.0),
                )
                .vs(
                    format!("{:.1} idle", rss_idle as f64 / 1024.0),
                    rss_agents as f64 / rss_idle.max(1) as f64,
                ),
            );
            drop(held);
        }
        drop(srv);
    }
    rows.push(
        Row::new(
            "scale",
            format!(
                "initial sync of {} authorised entries with {} in total (ms, median of 15)",
                sz.measured, sz.scale_total
            ),
            format!("{:.1}", sync_ms[0]),
        )
        .vs(
            format!("{:.1} with {} in total", sync_ms[1], sz.small_total),
            sync_ms[0] / sync_ms[1],
        )
        .target("~1.0 (cost follows authorised entries)"),
    );

    // Agent memory per cached SVID: a real agent process before and after `agent_svids` entries.
    let dir = tempfile::tempdir().unwrap();
    let (srv, _) = spawn_server(dir.path()).await;
    let (agent, admin) = spawn_agent(dir.path(), &srv, "rss").await;
    let rss0 = rss_kib(agent.0.id());
    create_bulk(&srv.admin, "rss", sz.agent_svids, 0, 999_999).await;
    wait_agent_svids(&admin, sz.agent_svids as u64).await;
    let rss1 = rss_kib(agent.0.id());
    let per = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / sz.agent_svids as f64;
    rows.push(
        Row::new(
            "scale",
            format!("agent RSS with {} cached SVIDs (MiB)", sz.agent_svids),
            format!("{:.1}", rss1 as f64 / 1024.0),
        )
        .vs(
            format!("{:.1} with none", rss0 as f64 / 1024.0),
            rss1 as f64 / rss0.max(1) as f64,
        ),
    );
    rows.push(Row::new(
        "scale",
        "agent memory per cached SVID (bytes)",
        format!("{per:.0}"),
    ));
    drop(agent);
    drop(srv);
    rows
}

async fn spawn_agent(dir: &Path, srv: &ServerProc, alias: &str) -> (Proc, PathBuf) {
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
    let child = Command::new(writ_bin())
        .args(["agent", "run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(ad.join("agent.log")).unwrap())
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
    (Proc(child), admin)
}

async fn agent_health(admin: &Path) -> Option<pb::AgentHealthResponse> {
    let ch = writ_server::client::unix_channel(admin).await.ok()?;
    writ_proto::v1::agent_admin_client::AgentAdminClient::new(ch)
        .health(pb::AgentHealthRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

async fn create_bulk(admin: &Path, alias: &str, n: usize, ttl: u64, uid: u32) {
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

async fn wait_agent_svids(admin: &Path, n: u64) {
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

fn metric(port: u16, name: &str) -> f64 {
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

pub async fn storm(sz: &Sizes) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let (srv, _) = spawn_server(dir.path()).await;
    let metrics_port: u16 = srv.addr.rsplit(':').next().unwrap().parse::<u16>().unwrap() + 1;
    let (agent, admin) = spawn_agent(dir.path(), &srv, "storm").await;
    let t0 = Instant::now();
    create_bulk(&srv.admin, "storm", sz.storm, sz.storm_ttl, 999_998).await;
    wait_agent_svids(&admin, sz.storm as u64).await;
    let first_signing = t0.elapsed().as_secs_f64();
    let base = metric(metrics_port, "writ_x509_svids_signed_total");
    // Watch through the rotation window (half life, minus up to a tenth of the lifetime of jitter)
    // and a little past it; sample the signing counter and the agent's coverage.
    let until = Instant::now() + Duration::from_secs_f64(sz.storm_ttl as f64 * 0.8);
    let mut samples = Vec::new();
    let mut worst_without = 0u64;
    let mut min_margin = i64::MAX;
    while Instant::now() < until {
        let c = metric(metrics_port, "writ_x509_svids_signed_total");
        if let Some(h) = agent_health(&admin).await {
            worst_without = worst_without.max(h.entries_without_svid);
            if h.earliest_svid_expiry > 0 {
                min_margin = min_margin.min(h.earliest_svid_expiry - writ_core::now_unix());
            }
        }
        samples.push((Instant::now(), c));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Per-second signing rates over the window.
    let mut per_sec = Vec::new();
    let mut i = 0;
    while i < samples.len() {
        let (t, c) = samples[i];
        let j = samples[i..]
            .iter()
            .position(|(u, _)| u.duration_since(t) >= Duration::from_secs(1))
            .map(|k| i + k);
        let Some(j) = j else { break };
        let rate = (samples[j].1 - c) / samples[j].0.duration_since(t).as_secs_f64();
        per_sec.push(rate);
        i = j;
    }
    let total_rotated = samples.last().map(|s| s.1).unwrap_or(base) - base;
    let active: Vec<f64> = per_sec.iter().copied().filter(|r| *r > 0.0).collect();
    let window = active.len();
    let peak = active.iter().copied().fold(0.0, f64::max);
    let median = percentile(&mut active.clone(), 50.0);
    drop(agent);
    drop(srv);
    let _ = td();
    vec![
        Row::new(
            "storm",
            format!(
                "{} SVIDs issued together (TTL {} s): initial signing (s)",
                sz.storm, sz.storm_ttl
            ),
            format!("{first_signing:.2}"),
        ),
        Row::new(
            "storm",
            "rotations signed in the window",
            format!("{total_rotated:.0}"),
        )
        .target(format!("{}", sz.storm)),
        Row::new(
            "storm",
            "signing rate during rotation: peak / median of active seconds (SVIDs/s)",
            format!("{peak:.0} / {median:.0}"),
        )
        .vs(
            format!("{window} active seconds"),
            if median > 0.0 {
                peak / median
            } else {
                f64::NAN
            },
        ),
        Row::new(
            "storm",
            "servable entries without a valid SVID at any sample (worst)",
            format!("{worst_without}"),
        )
        .target("0"),
        Row::new(
            "storm",
            "smallest remaining lifetime of any cached SVID at any sample (s)",
            format!("{min_margin}"),
        )
        .target("> 0"),
    ]
}
