//! `scale`: a real server process with 10,000, 100,000 and 1,000,000 entries (start-up, memory
//! per entry, the initial sync of one agent's 1,000 entries, entry create -> workload through a
//! real agent), 1,000 agents connecting at once, and a real agent's memory per cached SVID and
//! its restart with all of them.

use std::path::Path;
use std::time::{Duration, Instant};

use writ_proto::v1 as pb;
use writ_testkit::rss_kib;

use crate::procs::{
    create_bulk, measured_sync, own_bundle, populate, spawn_agent, spawn_server, start_agent,
    synced, token, wait_agent_svids, ServerProc,
};
use crate::sections::{entry, my_uid, open_x509_stream, percentile, sim_agent};
use crate::{Row, Sizes};

/// What one server run measured.
struct Run {
    total: usize,
    /// The first start after the bulk import (sled replays the import's log).
    first_start: Duration,
    /// A restart after a clean stop: what an operator's restart costs.
    startup: Duration,
    rss_kib: u64,
    sync_ms: f64,
    create_ms: (f64, f64),
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub async fn scale(sz: &Sizes) -> Vec<Row> {
    let mut rows = Vec::new();
    let small = server_run(sz, sz.small_total, false, &mut rows).await;
    let big = server_run(sz, sz.scale_total, true, &mut rows).await;
    let huge = server_run(sz, sz.huge_total, false, &mut rows).await;

    for r in [&big, &huge] {
        rows.push(Row::new(
            "scale",
            format!(
                "server first start after a bulk import of {} entries (s)",
                r.total
            ),
            format!("{:.2}", r.first_start.as_secs_f64()),
        ));
        let start = Row::new(
            "scale",
            format!(
                "server restart with {} entries (SIGTERM, spawn to first admin answer, s)",
                r.total
            ),
            format!("{:.2}", r.startup.as_secs_f64()),
        )
        .vs(
            format!("{:.2} with {}", small.startup.as_secs_f64(), small.total),
            r.startup.as_secs_f64() / small.startup.as_secs_f64(),
        );
        rows.push(if r.total == huge.total {
            start.target("< 5")
        } else {
            start
        });
    }
    for r in [&small, &big, &huge] {
        rows.push(Row::new(
            "scale",
            format!("server RSS with {} entries, idle (MiB)", r.total),
            mib(r.rss_kib),
        ));
    }
    // Memory per entry: the growth between two sizes over the entries added, so the fixed part
    // (binary, runtime, sled's bounded cache) does not count.
    for (lo, hi) in [(&small, &big), (&big, &huge)] {
        let per = (hi.rss_kib as f64 - lo.rss_kib as f64) * 1024.0 / (hi.total - lo.total) as f64;
        rows.push(
            Row::new(
                "scale",
                format!(
                    "server memory per entry, {} -> {} entries (bytes)",
                    lo.total, hi.total
                ),
                format!("{per:.0}"),
            )
            .vs("1,843 before this round (100k: 183.6 MiB)", per / 1843.0)
            .target("<= 1024"),
        );
    }
    for r in [&big, &huge] {
        rows.push(
            Row::new(
                "scale",
                format!(
                    "initial sync of {} authorised entries with {} in total (ms, median of 15)",
                    sz.measured, r.total
                ),
                format!("{:.1}", r.sync_ms),
            )
            .vs(
                format!("{:.1} with {} in total", small.sync_ms, small.total),
                r.sync_ms / small.sync_ms,
            )
            .target("~1.0 (cost follows authorised entries)"),
        );
    }
    rows.push(
        Row::new(
            "scale",
            format!(
                "entry create -> workload stream has the SVID (real agent), {} entries, p50 / p99 over {} (ms)",
                huge.total, sz.trials
            ),
            format!("{:.1} / {:.1}", huge.create_ms.0, huge.create_ms.1),
        )
        .vs(
            format!(
                "{:.1} / {:.1} with {}",
                small.create_ms.0, small.create_ms.1, small.total
            ),
            huge.create_ms.1 / small.create_ms.1,
        )
        .target("p99 < 100"),
    );
    rows.extend(agent_rows(sz).await);
    rows
}

/// One server process over `total` stored entries: start-up, idle RSS, the measured agent's
/// initial sync, create -> workload; with `agents`, also 1,000 sim agents at once.
async fn server_run(sz: &Sizes, total: usize, agents: bool, rows: &mut Vec<Row>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let t = Instant::now();
    populate(dir.path(), total, sz.measured, sz.sim_agents);
    eprintln!(
        "  populated {total} entries in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    // The kernel writing back the gigabytes just populated would otherwise land inside the
    // server's start-up.
    rustix::fs::sync();
    let (srv, first_start) = spawn_server(dir.path()).await;
    srv.stop();
    let (srv, startup) = spawn_server(dir.path()).await;
    let rss = rss_kib(srv.proc.0.id());
    let sync_ms = measured_sync(&srv, 15, sz.measured).await;
    if agents {
        rows.extend(many_agents(sz, &srv, total, rss).await);
    }
    let create_ms = create_to_workload(dir.path(), &srv, sz.trials).await;
    Run {
        total,
        first_start,
        startup,
        rss_kib: rss,
        sync_ms,
        create_ms,
    }
}

/// Many agents at once: attest, connect, complete their snapshot, stay connected.
async fn many_agents(sz: &Sizes, srv: &ServerProc, total: usize, rss_idle: u64) -> Vec<Row> {
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
    drop(held);
    vec![
        Row::new(
            "scale",
            format!(
                "{} agents attest + connect + initial sync (~{} entries each), all done (s)",
                sz.sim_agents,
                (total - sz.measured) / sz.sim_agents.max(1)
            ),
            format!("{all:.2}"),
        ),
        Row::new(
            "scale",
            format!(
                "server RSS with {total} entries and {} agents connected (MiB)",
                sz.sim_agents
            ),
            mib(rss_agents),
        )
        .vs(
            format!("{} idle", mib(rss_idle)),
            rss_agents as f64 / rss_idle.max(1) as f64,
        ),
    ]
}

/// A real agent process on this server; entries made through the admin API one at a time:
/// from the create call returning to the workload's stream carrying the new SVID (p50, p99).
async fn create_to_workload(dir: &Path, srv: &ServerProc, trials: usize) -> (f64, f64) {
    let agent = spawn_agent(dir, srv, "prop").await;
    let uid = format!("unix:uid:{}", my_uid());
    let parent = "spiffe://example.org/node/prop";
    let mut admin = writ_server::client::admin_client(&srv.admin).await.unwrap();
    let create = |id: &str| writ_proto::convert::entry_to_pb(&entry(id, parent, &uid, 0));
    admin
        .create_entry(create("spiffe://example.org/prop/base"))
        .await
        .unwrap();
    wait_agent_svids(&agent.admin, 1).await;
    let (_c, mut st, _) = open_x509_stream(&agent.endpoint()).await;
    let mut ms = Vec::new();
    for i in 0..trials {
        let id = format!("spiffe://example.org/prop/t{i}");
        let e = admin.create_entry(create(&id)).await.unwrap().into_inner();
        let t = Instant::now();
        loop {
            let m = st.message().await.unwrap().unwrap();
            if m.svids.iter().any(|s| s.spiffe_id == id) {
                break;
            }
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        admin
            .delete_entries(pb::DeleteEntriesRequest { ids: vec![e.id] })
            .await
            .unwrap();
    }
    (percentile(&mut ms.clone(), 50.0), percentile(&mut ms, 99.0))
}

/// A real agent: RSS before and after `agent_svids` entries (memory per cached SVID), then
/// killed (-9) and started again: time until every SVID is served again.
/// The agent rows: memory per cached SVID and a kill -9 restart with all of them.
pub async fn agent_rows(sz: &Sizes) -> Vec<Row> {
    let n = sz.agent_svids;
    let dir = tempfile::tempdir().unwrap();
    let (srv, _) = spawn_server(dir.path()).await;
    let agent = spawn_agent(dir.path(), &srv, "rss").await;
    let rss0 = rss_kib(agent.proc.0.id());
    create_bulk(&srv.admin, "rss", n, 0, 999_999).await;
    let t = Instant::now();
    wait_agent_svids(&agent.admin, n as u64).await;
    let first = t.elapsed().as_secs_f64();
    let rss1 = rss_kib(agent.proc.0.id());
    let per = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / n as f64;
    let config = agent.config.clone();
    // Proc's drop is SIGKILL: nothing is flushed or handed over.
    drop(agent);
    let t = Instant::now();
    let again = start_agent(&config).await;
    wait_agent_svids(&again.admin, n as u64).await;
    let restart = t.elapsed().as_secs_f64();
    drop(again);
    drop(srv);
    vec![
        Row::new(
            "scale",
            format!("agent RSS with {n} cached SVIDs (MiB)"),
            mib(rss1),
        )
        .vs(
            format!("{} with none", mib(rss0)),
            rss1 as f64 / rss0.max(1) as f64,
        ),
        Row::new(
            "scale",
            "agent memory per cached SVID (bytes)",
            format!("{per:.0}"),
        )
        .vs("3,462 before this round", per / 3462.0)
        .target("<= 2048"),
        Row::new(
            "scale",
            format!("agent restart (kill -9) with {n} SVIDs -> all served again (s)"),
            format!("{restart:.2}"),
        )
        .vs(
            format!("{first:.2} first start (entries made -> all signed)"),
            restart / first,
        ),
    ]
}
