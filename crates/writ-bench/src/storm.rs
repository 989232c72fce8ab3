//! `storm`: `storm` SVIDs made at once over `storm_agents` real agent processes, all with one
//! short TTL, so they come back for rotation together: the server's signing rate through the
//! initial signing and the rotation window (peak and median of active seconds), and at every
//! sample, over every agent, whether any servable entry is without a valid SVID.

use std::time::{Duration, Instant};

use crate::procs::{agent_health, create_bulk, metric, spawn_agent, spawn_server, AgentProc};
use crate::sections::percentile;
use crate::{Row, Sizes};

/// The health of every agent at one instant: entries without a valid SVID (summed) and the
/// smallest remaining lifetime of any cached SVID.
async fn sample(agents: &[AgentProc]) -> (u64, i64) {
    let all = futures_util::future::join_all(agents.iter().map(|a| agent_health(&a.admin))).await;
    let now = writ_core::now_unix();
    let mut without = 0;
    let mut margin = i64::MAX;
    for h in all.into_iter().flatten() {
        without += h.entries_without_svid;
        if h.earliest_svid_expiry > 0 {
            margin = margin.min(h.earliest_svid_expiry - now);
        }
    }
    (without, margin)
}

pub async fn storm(sz: &Sizes) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let (srv, _) = spawn_server(dir.path()).await;
    let metrics_port: u16 = srv.addr.rsplit(':').next().unwrap().parse::<u16>().unwrap() + 1;
    let names: Vec<String> = (0..sz.storm_agents).map(|i| format!("storm-{i}")).collect();
    let agents =
        futures_util::future::join_all(names.iter().map(|n| spawn_agent(dir.path(), &srv, n)))
            .await;
    let per_agent = sz.storm / sz.storm_agents;
    let total = per_agent * sz.storm_agents;
    let base = metric(metrics_port, "writ_x509_svids_signed_total");
    let t0 = Instant::now();
    for n in &names {
        create_bulk(&srv.admin, n, per_agent, sz.storm_ttl, 900_000).await;
    }
    // Sample from the first entry made to past the rotation window: the signing counter every
    // 250 ms; every agent's coverage once all first SVIDs are out (before that, entries without
    // one are expected: they are being signed for the first time).
    let mut samples = vec![(t0, base)];
    let mut first_signing = None;
    let mut worst_without = 0u64;
    let mut min_margin = i64::MAX;
    let mut coverage_samples = 0;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let c = metric(metrics_port, "writ_x509_svids_signed_total");
        let now = Instant::now();
        samples.push((now, c));
        match first_signing {
            None => {
                if c - base >= total as f64 {
                    first_signing = Some(t0.elapsed());
                }
            }
            Some(done) => {
                let (without, margin) = sample(&agents).await;
                worst_without = worst_without.max(without);
                min_margin = min_margin.min(margin);
                coverage_samples += 1;
                // Every first SVID is due by its issue + TTL/2 (minus jitter), so the first
                // rotation of all of them lands by `done` + TTL/2; stop a little after, well
                // before the earliest second rotation (t0 + 0.8 TTL) as long as the first
                // signing took under a quarter of the TTL.
                if now.duration_since(t0)
                    > done + Duration::from_secs_f64(sz.storm_ttl as f64 * 0.55)
                {
                    break;
                }
            }
        }
        assert!(now < deadline, "storm did not finish");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first_signing = first_signing.unwrap().as_secs_f64();
    // Per-second signing rates over the whole run.
    let mut per_sec = Vec::new();
    let mut i = 0;
    while i < samples.len() {
        let (t, c) = samples[i];
        let Some(j) = samples[i..]
            .iter()
            .position(|(u, _)| u.duration_since(t) >= Duration::from_secs(1))
            .map(|k| i + k)
        else {
            break;
        };
        per_sec.push((samples[j].1 - c) / samples[j].0.duration_since(t).as_secs_f64());
        i = j;
    }
    let signed = samples.last().map(|s| s.1).unwrap_or(base) - base;
    let rotated = signed - total as f64;
    let active: Vec<f64> = per_sec.iter().copied().filter(|r| *r > 0.0).collect();
    let peak = active.iter().copied().fold(0.0, f64::max);
    let median = percentile(&mut active.clone(), 50.0);
    drop(agents);
    drop(srv);
    vec![
        Row::new(
            "storm",
            format!(
                "{total} SVIDs over {} agents made together (TTL {} s): all first SVIDs signed (s)",
                sz.storm_agents, sz.storm_ttl
            ),
            format!("{first_signing:.2}"),
        ),
        Row::new(
            "storm",
            "rotations signed in the window (first SVIDs signed + TTL/2)",
            format!("{rotated:.0}"),
        )
            .target(format!("{total}")),
        Row::new(
            "storm",
            "signing rate, initial + rotation: peak / median of active seconds (SVIDs/s)",
            format!("{peak:.0} / {median:.0}"),
        )
        .vs(
            format!("{} active seconds", active.len()),
            if median > 0.0 { peak / median } else { f64::NAN },
        ),
        Row::new(
            "storm",
            format!(
                "servable entries without a valid SVID, worst of {coverage_samples} samples over all agents"
            ),
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
