//! The `streams` section (issue 17, item 5): the Workload API of a real agent process with
//! N workloads connected and streaming (FetchX509SVID, held open), 10,000 in the full run:
//!
//! - first-response latency (new connection + attestation + first FetchX509SVID answer), p50
//!   and p99, next to a bare tonic unary call over a new Unix connection in the same state;
//! - the agent's RSS with them connected, next to its RSS before (so the per-connection cost).
//!
//! The agent is a process (its RSS is its own); the bench raises its open-file limit for
//! itself and the agent (each connection is a descriptor on both sides).

use std::path::Path;
use std::time::Duration;

use writ_testkit::{rss_kib, ServerOpts, TestAgent, TestServer};

use crate::sections::{bare_call, bare_server, fetch_call, my_uid, open_x509_stream, percentile};
use crate::{Row, Sizes};

const SECTION: &str = "streams";

/// Raises this process's soft open-file limit to its hard limit (children inherit it).
fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    let soft = want.min(hard);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft),
            maximum: cur.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(0)
}

async fn measure(endpoint: &str, bare: &Path, n: usize) -> (f64, f64, f64, f64) {
    let (mut f, mut b) = (Vec::new(), Vec::new());
    for _ in 0..n {
        f.push(fetch_call(endpoint).await);
        b.push(bare_call(bare).await);
    }
    (
        percentile(&mut f.clone(), 50.0),
        percentile(&mut f, 99.0),
        percentile(&mut b.clone(), 50.0),
        percentile(&mut b, 99.0),
    )
}

pub async fn streams(sz: &Sizes) -> Vec<Row> {
    let n = sz.streams;
    let limit = raise_nofile(2 * n as u64 + 4096);
    let server = tokio::task::spawn_blocking(|| TestServer::start(ServerOpts::default()))
        .await
        .unwrap();
    let extra = format!(
        "[workload_api]\nmax_connections = {}\nmax_connections_per_uid = {}\n",
        n + 1024,
        n + 1024
    );
    let server = std::sync::Arc::new(server);
    let s2 = server.clone();
    let agent = tokio::task::spawn_blocking(move || {
        let a = TestAgent::start_with(&s2, "streams", &extra, &[]);
        s2.cli(&[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/streams",
            "--parent-id",
            "spiffe://example.org/node/streams",
            "--selector",
            &format!("unix:uid:{}", my_uid()),
        ])
        .ok();
        a
    })
    .await
    .unwrap();
    let endpoint = agent.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let bare = bare_server(dir.path());
    // The first SVID, then warm-up.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while agent.cli(&["svid", "fetch"]).code != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no SVID: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = agent.child.as_ref().unwrap().id();
    let iters = (sz.lat_iters / 2).max(10);
    measure(&endpoint, &bare, 5).await;
    let (f50, f99, b50, b99) = measure(&endpoint, &bare, iters).await;
    let rss_before = rss_kib(pid);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let (c, st, _) = open_x509_stream(&endpoint).await;
        held.push((c, st));
    }
    let rss_held = rss_kib(pid);
    let (g50, g99, c50, c99) = measure(&endpoint, &bare, iters).await;
    let per_conn = (rss_held.saturating_sub(rss_before)) as f64 / n as f64;
    drop(held);
    drop(agent);
    vec![
        Row::new(
            SECTION,
            format!("FetchX509SVID first response, new connection, p50 / p99 with {n} streaming workloads connected (ms, {iters} samples)"),
            format!("{g50:.2} / {g99:.2}"),
        )
        .vs(format!("bare tonic unary in the same state {c50:.2} / {c99:.2}"), g99 / c99)
        .target("<= 3x"),
        Row::new(
            SECTION,
            "same with none connected (ms)",
            format!("{f50:.2} / {f99:.2}"),
        )
        .vs(format!("bare tonic unary {b50:.2} / {b99:.2}"), f99 / b99),
        Row::new(
            SECTION,
            format!("agent RSS with {n} streaming workloads connected (MiB; open-file limit {limit})"),
            format!("{:.1}", rss_held as f64 / 1024.0),
        )
        .vs(
            format!("{:.1} before; {per_conn:.1} KiB per connection", rss_before as f64 / 1024.0),
            rss_held as f64 / rss_before.max(1) as f64,
        ),
    ]
}
