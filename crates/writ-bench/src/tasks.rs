//! Task identity benchmarks (issue 14), over the agent's socket as a workload sees them: task
//! start latency (policy + mint + journal) next to a `FetchJWTSVID` cache miss, tasks started
//! per second through one agent, and the time from `EndTask` returning to `ValidateJWTSVID`
//! refusing the task's token, next to `writ jwt revoke` measured the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use writ_proto::task as tk;
use writ_proto::v1 as pb;
use writ_proto::workload as wl;

use crate::sections::{entry, my_uid, percentile, start_agent, start_server, wait_svids};
use crate::{Row, Sizes};

fn start_req() -> tk::StartTaskRequest {
    tk::StartTaskRequest {
        purpose: "bench".into(),
        ttl: 300,
        audiences: vec!["tool".into()],
        want: vec!["jwt".into()],
        ..Default::default()
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Polls ValidateJWTSVID until it refuses `token`; returns when it does.
async fn until_refused(wc: &mut writ_client::workload::WorkloadClient, token: &str) {
    loop {
        let r = wc
            .validate_jwtsvid(wl::ValidateJwtsvidRequest {
                audience: "tool".into(),
                svid: token.to_owned(),
            })
            .await;
        if r.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

pub async fn tasks(sz: &Sizes) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let agent = start_agent(&server, dir.path(), "tasks").await;
    let mut e = entry(
        "spiffe://example.org/orchestrator",
        "spiffe://example.org/node/tasks",
        &format!("unix:uid:{}", my_uid()),
        3600,
    );
    e.delegate = Some(Box::new(writ_core::Delegation {
        max_ttl: 600,
        max_active: 100_000,
        audiences: vec!["tool".into()],
    }));
    server.state.create_entry(e).await.unwrap();
    wait_svids(&agent, 1).await;
    let endpoint = format!("unix:{}", agent.state.cfg.socket_path.display());
    let mut tc = writ_client::workload::connect_tasks(Some(&endpoint))
        .await
        .unwrap();
    let mut wc = writ_client::workload::connect(Some(&endpoint))
        .await
        .unwrap();
    // The agent sees the delegation once the entry has synced (it has, with the SVID), but
    // the first call also warms the connection.
    tc.start_task(start_req()).await.unwrap();

    // Latency. The baseline is a FetchJWTSVID cache miss (a fresh audience each call): the
    // agent allows a burst of 200 misses per uid, so both sides take that many samples.
    let n = sz.lat_iters.clamp(10, 190);
    let mut start = Vec::with_capacity(n);
    let mut miss = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        tc.start_task(start_req()).await.unwrap();
        start.push(ms(t));
        let t = Instant::now();
        wc.fetch_jwtsvid(wl::JwtsvidRequest {
            audience: vec![format!("bench-{i}")],
            spiffe_id: String::new(),
        })
        .await
        .unwrap();
        miss.push(ms(t));
    }
    let (s50, s99) = (percentile(&mut start, 50.0), percentile(&mut start, 99.0));
    let (m50, m99) = (percentile(&mut miss, 50.0), percentile(&mut miss, 99.0));

    // Throughput: `clients` connections starting tasks for `secs`, and one for the baseline.
    let rate = |clients: usize| {
        let endpoint = endpoint.clone();
        async move {
            let count = Arc::new(AtomicU64::new(0));
            let t0 = Instant::now();
            let mut hs = Vec::new();
            for _ in 0..clients {
                let (endpoint, count) = (endpoint.clone(), count.clone());
                let secs = sz.secs;
                hs.push(tokio::spawn(async move {
                    let mut c = writ_client::workload::connect_tasks(Some(&endpoint))
                        .await
                        .unwrap();
                    while t0.elapsed().as_secs_f64() < secs {
                        c.start_task(start_req()).await.unwrap();
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for h in hs {
                h.await.unwrap();
            }
            count.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
        }
    };
    let one = rate(1).await;
    let clients = sz.clients * 4;
    let many = rate(clients).await;

    // Task end to effect, next to an operator's `writ jwt revoke` of a workload JWT-SVID.
    let mut admin = writ_server::client::admin_client(&server.state.cfg.admin_socket)
        .await
        .unwrap();
    let (mut end, mut revoke) = (Vec::new(), Vec::new());
    for i in 0..sz.trials {
        let r = tc.start_task(start_req()).await.unwrap().into_inner();
        let (id, token) = (r.task.unwrap().id, r.jwt_svid);
        let t = Instant::now();
        tc.end_task(tk::EndTaskRequest {
            task_id: id,
            reason: String::new(),
        })
        .await
        .unwrap();
        until_refused(&mut wc, &token).await;
        end.push(ms(t));
        let token = wc
            .fetch_jwtsvid(wl::JwtsvidRequest {
                audience: vec!["tool".into(), format!("rev-{i}")],
                spiffe_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .svids
            .remove(0)
            .svid;
        let jti = writ_ca::jwt::validate(&token, "tool", writ_core::now_unix(), |_| {
            Some(server.state.bundles.borrow().own.clone())
        })
        .unwrap()
        .claims["jti"]
            .as_str()
            .unwrap()
            .to_owned();
        let t = Instant::now();
        admin
            .revoke_jwt(pb::RevokeJwtRequest {
                jti,
                reason: "bench".into(),
            })
            .await
            .unwrap();
        until_refused(&mut wc, &token).await;
        revoke.push(ms(t));
        // Stay inside the agent's burst of JWT-SVID cache misses.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    let (e50, e99) = (percentile(&mut end, 50.0), percentile(&mut end, 99.0));
    let (r50, r99) = (percentile(&mut revoke, 50.0), percentile(&mut revoke, 99.0));
    agent.shutdown(Duration::from_secs(2)).await;
    server.shutdown(Duration::from_secs(2)).await.unwrap();
    vec![
        Row::new(
            "tasks",
            format!("StartTask p50 / p99 over the agent socket, JWT-SVID, policy + mint + journal ({n} calls, ms)"),
            format!("{s50:.2} / {s99:.2}"),
        )
        .vs(format!("{m50:.2} / {m99:.2} FetchJWTSVID cache miss"), s50 / m50)
        .target("<= 2x"),
        Row::new(
            "tasks",
            format!("tasks started per second through one agent ({clients} clients)"),
            format!("{many:.0}"),
        )
        .vs(format!("{one:.0} with 1 client"), many / one)
        .target(">= 1000/s"),
        Row::new(
            "tasks",
            format!("EndTask returns -> ValidateJWTSVID refuses the task's token, p50 / p99 ({} trials, ms)", sz.trials),
            format!("{e50:.1} / {e99:.1}"),
        )
        .vs(format!("{r50:.1} / {r99:.1} for writ jwt revoke of a workload JWT-SVID"), e99 / r99)
        .target("p99 < 100 ms"),
    ]
}
