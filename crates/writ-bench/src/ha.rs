//! The `ha` section: several servers on one PostgreSQL (issue 15), against a private cluster
//! the bench starts (`writ_testkit::PgCluster`; Debian's `postgresql` package), each figure
//! next to its baseline from the same run:
//!
//! - entry writes/s through the admin API on PostgreSQL, next to sled;
//! - server start with N entries in PostgreSQL, next to sled with the same entries;
//! - propagation: entry created on server A -> the workload stream of an agent on server B,
//!   next to the same with the entry created on B itself;
//! - agent failover after kill -9 of its server (real processes): time until an entry created
//!   on the survivor is served, next to the same without a failover;
//! - 1,000 (sim) agents attested and syncing over three servers, then the database's
//!   statements per second (pg_stat_statements) with them idle, next to no agents.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use writ_server::RunningServer;
use writ_store::{PgSettings, PgStore, SledStore, Store};
use writ_testkit::{PgCluster, TestAgent, TestServer, PG_PASSWORD};

use crate::sections::{entry, my_uid, percentile, sim_agent, start_agent, td, wait_svids};
use crate::{Row, Sizes};

const SECTION: &str = "ha";

/// `[store.postgres]` for `pg` (password file in `dir`).
fn pg_table(pg: &PgCluster, dir: &Path) -> String {
    format!(
        "[store.postgres]\nurl = \"{}\"\npassword_file = \"{}\"\n",
        pg.url(),
        pg.password_file(dir).display()
    )
}

/// An in-process server in `dir` with `store` (empty: sled).
async fn server(dir: &Path, store: &str) -> RunningServer {
    let cfg = writ_server::ServerConfig::parse(&format!(
        "trust_domain = \"example.org\"\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\nattestation_rate_per_ip = 100000\n[ca]\nttl = \"24h\"\n[node_attestor.join_token]\n{store}",
        dir.join("run/admin.sock").display(),
        dir.join("data").display()
    ))
    .unwrap();
    writ_server::start(cfg).await.unwrap()
}

/// Admin-API entry creates per second, `clients` at once, for `secs`.
async fn write_rate(s: &RunningServer, clients: usize, secs: f64, tag: &str) -> f64 {
    let n = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let sel = format!("unix:uid:{}", my_uid());
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut admin = writ_server::client::admin_client(&s.state.cfg.admin_socket)
            .await
            .unwrap();
        let (n, sel, tag) = (n.clone(), sel.clone(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < until {
                let e = entry(
                    &format!("spiffe://example.org/w/{tag}/{c}/{i}"),
                    "spiffe://example.org/node/writes",
                    &sel,
                    0,
                );
                admin
                    .create_entry(writ_proto::convert::entry_to_pb(&e))
                    .await
                    .unwrap();
                n.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n.load(Ordering::Relaxed) as f64 / secs
}

/// Puts `total` entries (1,000 under one agent alias, the rest under others) into `store`.
fn populate(store: &dyn Store, total: usize) {
    let sel = format!("unix:uid:{}", my_uid());
    let mut i = 0;
    while i < total {
        let batch: Vec<_> = (i..(i + 10_000).min(total))
            .map(|k| {
                entry(
                    &format!("spiffe://example.org/pop/{k}"),
                    &format!("spiffe://example.org/node/n{}", k % 1000),
                    &sel,
                    0,
                )
            })
            .collect();
        i += batch.len();
        store.create_entries(batch).unwrap();
    }
}

/// ms from `create` returning to the agent's workload stream carrying the new SVID.
async fn propagation(
    create_on: &RunningServer,
    endpoint: &str,
    parent: &str,
    trials: usize,
    tag: &str,
) -> Vec<f64> {
    let sel = format!("unix:uid:{}", my_uid());
    let mut admin = writ_server::client::admin_client(&create_on.state.cfg.admin_socket)
        .await
        .unwrap();
    let mut wc = writ_client::workload::connect(Some(endpoint))
        .await
        .unwrap();
    let mut st = wc
        .fetch_x509svid(writ_proto::workload::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    for i in 0..trials {
        let id = format!("spiffe://example.org/prop/{tag}/{i}");
        admin
            .create_entry(writ_proto::convert::entry_to_pb(&entry(
                &id, parent, &sel, 0,
            )))
            .await
            .unwrap();
        let t = Instant::now();
        loop {
            let m = st.message().await.unwrap().unwrap();
            if m.svids.iter().any(|s| s.spiffe_id == id) {
                break;
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out
}

fn p50_p99(v: &mut [f64]) -> (f64, f64) {
    (percentile(v, 50.0), percentile(v, 99.0))
}

/// Statements clients ran so far (pg_stat_statements), without the benchmark's own reads.
fn db_statements(pg: &PgCluster) -> f64 {
    pg.psql(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements \
         WHERE query NOT LIKE '%pg_stat_statements%'",
    )
    .parse()
    .unwrap()
}

/// The servers' statements per second over a quiet window (2 x `secs`, at least 2 s), after
/// a settling pause. Counted by pg_stat_statements, so autovacuum (busy after the bulk
/// inserts above) and the benchmark's own reads are not in it.
async fn quiet(pg: &PgCluster, sz: &Sizes) -> f64 {
    tokio::time::sleep(Duration::from_secs_f64(sz.secs.max(1.0))).await;
    let x0 = db_statements(pg);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(sz.secs.max(1.0) * 2.0)).await;
    (db_statements(pg) - x0) / t.elapsed().as_secs_f64()
}

/// kill -9 of the agent's server, then time until an entry created on the survivor is served
/// (polled through `writ svid fetch`, as an operator would see it); the baseline is the same
/// create-to-served time with no failover.
fn failover(pg: &PgCluster, trials: usize) -> (Vec<f64>, Vec<f64>) {
    let secrets = tempfile::tempdir().unwrap();
    let store = pg_table(pg, secrets.path());
    let opts = writ_testkit::ServerOpts {
        extra: store,
        ..Default::default()
    };
    let mut servers = [TestServer::start(opts.clone()), TestServer::start(opts)];
    let addrs = [servers[0].addr(), servers[1].addr()];
    let agent = TestAgent::start_ha(&servers[0], &addrs, "failover");
    let uid = format!("unix:uid:{}", my_uid());
    let served = |id: &str| {
        let r = agent.cli(&["svid", "fetch", "--output", "json"]);
        r.code == 0 && r.stdout.contains(id)
    };
    let create = |s: &TestServer, id: &str| {
        s.cli(&[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--parent-id",
            "spiffe://example.org/node/failover",
            "--selector",
            &uid,
        ])
        .ok();
    };
    let wait = |id: &str, t: Instant| -> f64 {
        let deadline = t + Duration::from_secs(60);
        while !served(id) {
            assert!(
                Instant::now() < deadline,
                "{id} never served: {}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        t.elapsed().as_secs_f64() * 1000.0
    };
    let (mut fail, mut base) = (Vec::new(), Vec::new());
    for i in 0..trials {
        // Which server the agent is on now: the last "connected to server" line.
        let log = agent.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("connected to server"))
            .unwrap_or("");
        let on = usize::from(line.contains(&addrs[1]));
        let id = format!("spiffe://example.org/base/{i}");
        let t = Instant::now();
        create(&servers[on], &id);
        base.push(wait(&id, t));
        let t = Instant::now();
        servers[on].kill9();
        let id = format!("spiffe://example.org/failover/{i}");
        create(&servers[1 - on], &id);
        fail.push(wait(&id, t));
        servers[on].spawn();
    }
    (fail, base)
}

pub async fn ha(sz: &Sizes) -> Vec<Row> {
    let mut rows = Vec::new();
    let pg = PgCluster::start();
    pg.psql("CREATE EXTENSION pg_stat_statements");
    let dir = tempfile::tempdir().unwrap();
    let store = pg_table(&pg, dir.path());

    // Writes: sled and PostgreSQL, same clients and duration.
    let (w_sled, w_pg) = {
        let s = server(&dir.path().join("w-sled"), "").await;
        let sled = write_rate(&s, sz.clients, sz.secs, "s").await;
        s.shutdown(Duration::from_secs(1)).await.unwrap();
        let p = server(&dir.path().join("w-pg"), &store).await;
        let pgr = write_rate(&p, sz.clients, sz.secs, "p").await;
        p.shutdown(Duration::from_secs(1)).await.unwrap();
        (sled, pgr)
    };
    rows.push(
        Row::new(
            SECTION,
            format!(
                "entry creates/s, admin API, {} clients, PostgreSQL",
                sz.clients
            ),
            format!("{w_pg:.0}"),
        )
        .vs(format!("sled {w_sled:.0}"), w_pg / w_sled),
    );

    // Start with N entries.
    let n = sz.scale_total;
    let pg_store = PgStore::open(PgSettings {
        url: pg.url(),
        password: Some(PG_PASSWORD.into()),
        instance: "bench-populate".into(),
        ca_pem: None,
    })
    .unwrap();
    populate(&pg_store, n);
    drop(pg_store);
    let sled_dir = dir.path().join("start-sled");
    {
        let s = SledStore::open(sled_dir.join("data/datastore")).unwrap();
        populate(&s, n);
    }
    let t = Instant::now();
    let s = server(&sled_dir, "").await;
    let start_sled = t.elapsed().as_secs_f64();
    s.shutdown(Duration::from_secs(1)).await.unwrap();
    let t = Instant::now();
    let a = server(&dir.path().join("a"), &store).await;
    let start_pg = t.elapsed().as_secs_f64();
    rows.push(
        Row::new(
            SECTION,
            format!("server start with {n} entries in PostgreSQL (s)"),
            format!("{start_pg:.2}"),
        )
        .vs(format!("sled {start_sled:.2}"), start_pg / start_sled),
    );

    // Propagation A -> B, next to B -> B.
    let b = server(&dir.path().join("b"), &store).await;
    let agent = start_agent(&b, dir.path(), "prop").await;
    let sel = format!("unix:uid:{}", my_uid());
    writ_server::client::admin_client(&b.state.cfg.admin_socket)
        .await
        .unwrap()
        .create_entry(writ_proto::convert::entry_to_pb(&entry(
            "spiffe://example.org/prop/base",
            "spiffe://example.org/node/prop",
            &sel,
            0,
        )))
        .await
        .unwrap();
    wait_svids(&agent, 1).await;
    let ep = format!("unix://{}", agent.state.cfg.socket_path.display());
    let parent = "spiffe://example.org/node/prop";
    let (x50, x99) = p50_p99(&mut propagation(&a, &ep, parent, sz.trials, "ab").await);
    let (s50, s99) = p50_p99(&mut propagation(&b, &ep, parent, sz.trials, "bb").await);
    rows.push(
        Row::new(
            SECTION,
            format!(
                "entry create on server A -> workload of an agent on server B, p50 / p99 over {} trials (ms)",
                sz.trials
            ),
            format!("{x50:.1} / {x99:.1}"),
        )
        .vs(format!("created on B itself {s50:.1} / {s99:.1}; SPIRE ~10000"), x99 / s99)
        .target("p99 < 100"),
    );
    agent.shutdown(Duration::from_secs(1)).await;

    // 1,000 agents over three servers, then the database's load with them idle.
    let c = server(&dir.path().join("c"), &store).await;
    let servers = [&a, &b, &c];
    let idle_none = quiet(&pg, sz).await;
    let bundle = a.state.bundles.borrow().own.clone();
    let t = Instant::now();
    let mut streams = Vec::new();
    for i in 0..sz.sim_agents {
        let s = servers[i % 3];
        let tok = s
            .state
            .create_join_token(Some(td().id(&format!("/node/n{}", i % 1000)).unwrap()), 600)
            .unwrap();
        let node = sim_agent(&s.listen_addr.to_string(), &bundle, &tok.token).await;
        streams.push(crate::procs::synced(node).await);
    }
    let attach = t.elapsed().as_secs_f64();
    // Attestation leaves a tail of writes (journal records, node records as agents' first
    // calls clear the previous serial): let it settle before measuring the steady state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_agents = quiet(&pg, sz).await;
    rows.push(Row::new(
        SECTION,
        format!(
            "{} agents attested + first sync over three servers on PostgreSQL (s)",
            sz.sim_agents
        ),
        format!("{attach:.1}"),
    ));
    rows.push(
        Row::new(
            SECTION,
            format!(
                "database statements/s from three servers, steady state with {} idle agents connected",
                sz.sim_agents
            ),
            format!("{idle_agents:.1}"),
        )
        .vs(format!("no agents {idle_none:.1}"), {
            if idle_none > 0.0 {
                idle_agents / idle_none
            } else {
                0.0
            }
        })
        .target("near zero (SPIRE: authorization queries per agent sync)"),
    );
    drop(streams);
    for s in [a, b, c] {
        s.shutdown(Duration::from_secs(1)).await.unwrap();
    }

    // Failover, real processes (kill -9 needs a process).
    let trials = if sz.trials >= 100 { 5 } else { 1 };
    let (mut f, mut base) = tokio::task::spawn_blocking(move || {
        let r = failover(&pg, trials);
        drop(pg);
        r
    })
    .await
    .unwrap();
    let (f50, _) = p50_p99(&mut f);
    let (b50, _) = p50_p99(&mut base);
    let fmax = f.iter().cloned().fold(0.0, f64::max);
    rows.push(
        Row::new(
            SECTION,
            format!(
                "agent failover: kill -9 of its server -> entry made on the survivor served, p50 / max over {trials} (ms)"
            ),
            format!("{f50:.0} / {fmax:.0}"),
        )
        .vs(format!("same without failover {b50:.0}"), f50 / b50),
    );
    rows
}
