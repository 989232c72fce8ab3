//! Several servers on one PostgreSQL (issue 15), against a private cluster started by the test:
//! an entry created on server A reaches a workload whose agent is on server B; both servers'
//! authorities are in the one bundle; the shared audit journal verifies on either; an agent
//! given both servers fails over when its server is killed with SIGKILL, keeps serving its
//! SVIDs meanwhile, and picks up entries created afterwards on the survivor. Bad database
//! settings fail with one clear line.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use writ_testkit::*;

use crate::support::served;

/// `[store.postgres]` for `pg`, with the password in a file under `dir`.
fn pg_store(pg: &PgCluster, dir: &Path) -> String {
    format!(
        "[store.postgres]\nurl = \"{}\"\npassword_file = \"{}\"\n",
        pg.url(),
        pg.password_file(dir).display()
    )
}

fn server_on(store: &str) -> TestServer {
    TestServer::start(ServerOpts {
        extra: store.to_owned(),
        ..ServerOpts::default()
    })
}

fn create(s: &TestServer, spiffe: &str, parent: &str) -> String {
    let uid = format!("unix:uid:{}", my_uid());
    s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        spiffe,
        "--parent-id",
        parent,
        "--selector",
        &uid,
    ])["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The SPIFFE IDs the agent serves this process.
fn ids(a: &TestAgent) -> Vec<String> {
    let r = a.cli(&["svid", "fetch", "--output", "json"]);
    if r.code != 0 {
        return vec![];
    }
    let mut v: Vec<String> = r.json()["svids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spiffe_id"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn two_servers_on_postgres_share_entries_bundle_journal_and_fail_over() {
    let pg = PgCluster::start();
    let secrets = tempfile::tempdir().unwrap();
    let store = pg_store(&pg, secrets.path());
    let a = server_on(&store);
    let b = server_on(&store);

    // The bundle is the union of both servers' CAs, as either server publishes it.
    eventually("both CAs in A's bundle", Duration::from_secs(20), || {
        (a.bundle().x509_authorities.len() == 2).then_some(())
    });
    let bundle_a = a.bundle();
    eventually(
        "B publishes the same bundle",
        Duration::from_secs(20),
        || (b.bundle().same_content(&bundle_a)).then_some(()),
    );

    // A join token made on A attests an agent on B (tokens are shared, single use).
    let agent_b = TestAgent::start(&b, "on-b");
    // Entry created on A -> the workload of the agent on B gets it.
    create(
        &a,
        "spiffe://example.org/ha/one",
        "spiffe://example.org/node/on-b",
    );
    eventually(
        "entry made on A served by B's agent",
        Duration::from_secs(20),
        || {
            ids(&agent_b)
                .contains(&"spiffe://example.org/ha/one".to_owned())
                .then_some(())
        },
    );
    // Its chain verifies against the published bundle with an independent verifier.
    let svid = served(&agent_b).unwrap();
    let chain = crate::support::pem_ders(svid["cert_pem"].as_str().unwrap());
    webpki_verify(&chain, &bundle_a.x509_authorities).unwrap();

    // Deleting on B removes it from the workload; the log propagates both ways.
    let id2 = create(
        &b,
        "spiffe://example.org/ha/two",
        "spiffe://example.org/node/on-b",
    );
    eventually("second entry served", Duration::from_secs(20), || {
        ids(&agent_b)
            .contains(&"spiffe://example.org/ha/two".to_owned())
            .then_some(())
    });
    a.cli(&["entry", "delete", &id2]).ok();
    eventually(
        "entry deleted on A leaves B's agent",
        Duration::from_secs(20),
        || (!ids(&agent_b).contains(&"spiffe://example.org/ha/two".to_owned())).then_some(()),
    );

    // An agent with both servers, attested through A's token; find which one it is on.
    let ha = TestAgent::start_ha(&a, &[a.addr(), b.addr()], "ha");
    create(
        &a,
        "spiffe://example.org/ha/three",
        "spiffe://example.org/node/ha",
    );
    eventually("HA agent serves its entry", Duration::from_secs(20), || {
        ids(&ha)
            .contains(&"spiffe://example.org/ha/three".to_owned())
            .then_some(())
    });
    let on_b = ha
        .log()
        .lines()
        .rev()
        .find(|l| l.contains("connected to server"))
        .is_some_and(|l| l.contains(&b.addr()));
    let (mut victim, survivor) = if on_b { (b, a) } else { (a, b) };
    victim.kill9();
    // Its SVID stays served while it moves; then the survivor's new entry reaches it.
    assert!(ids(&ha).contains(&"spiffe://example.org/ha/three".to_owned()));
    create(
        &survivor,
        "spiffe://example.org/ha/four",
        "spiffe://example.org/node/ha",
    );
    eventually("failed over and synced", Duration::from_secs(30), || {
        let v = ids(&ha);
        assert!(
            v.contains(&"spiffe://example.org/ha/three".to_owned()),
            "the cached SVID must stay served during failover"
        );
        v.contains(&"spiffe://example.org/ha/four".to_owned())
            .then_some(())
    });
    assert!(ha.log().contains("failing over"), "{}", ha.log());

    // The shared journal (records from both servers, checkpoints under two keys) verifies.
    let r = survivor.cli(&["audit", "verify"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    victim.spawn();
    let r = victim.cli(&["audit", "verify"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

/// A node banned on one server is refused by the other, and its streams there end.
#[test]
fn a_ban_on_one_server_holds_on_the_other() {
    let pg = PgCluster::start();
    let secrets = tempfile::tempdir().unwrap();
    let store = pg_store(&pg, secrets.path());
    let a = server_on(&store);
    let b = server_on(&store);
    let agent = TestAgent::start(&b, "banned");
    create(
        &a,
        "spiffe://example.org/ha/b",
        "spiffe://example.org/node/banned",
    );
    eventually("served", Duration::from_secs(20), || {
        (!ids(&agent).is_empty()).then_some(())
    });
    let nodes = b.cli_json(&["node", "list"]);
    let node_id = nodes[0]["spiffe_id"].as_str().unwrap().to_owned();
    a.cli(&["node", "ban", &node_id]).ok();
    eventually(
        "B refuses the banned agent",
        Duration::from_secs(20),
        || agent.log().contains("banned").then_some(()),
    );
}

/// Runs `writ server run` in `dir` with `store` until it exits (for configs that must fail):
/// its exit code and stderr.
fn run_failing(dir: &Path, store: &str) -> (Option<i32>, String) {
    let cfg = dir.join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "trust_domain = \"example.org\"\nlisten = \"127.0.0.1:{}\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\n[node_attestor.join_token]\n{store}",
            free_port(),
            dir.join("run/admin.sock").display(),
            dir.join("data").display(),
        ),
    )
    .unwrap();
    let o = Command::new(writ_bin())
        .args(["server", "run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Wrong password, unreachable database, a newer schema: one clear line, exit 1.
#[test]
fn bad_database_settings_fail_clearly() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let run = |store: &str| run_failing(dir.path(), store);
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-it\n").unwrap();
    let (code, err) = run(&format!(
        "[store.postgres]\nurl = \"{}\"\npassword_file = \"{}\"\n",
        pg.url(),
        wrong.display()
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let (code, err) = run(&format!(
        "[store.postgres]\nurl = \"postgres://writ@127.0.0.1:{}/writ\"\n",
        free_port()
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot open") || err.contains("connect"),
        "{err}"
    );

    let (code, err) = run("[store.postgres]\nurl = \"mysql://nope\"\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("url"), "{err}");

    // A database a newer writ migrated is refused, and left as it was.
    let store = pg_store(&pg, dir.path());
    let first = server_on(&store);
    drop(first);
    pg.psql("UPDATE writ_schema SET version = 99");
    let (code, err) = run(&store);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("schema version 99"), "{err}");
    assert_eq!(pg.psql("SELECT version FROM writ_schema"), "99");
}

/// The database restarted under the servers: agents keep their SVIDs, writes fail with an error
/// naming the database, and once it is back both servers reconnect and catch up: an entry made
/// on A afterwards reaches the agent on B.
#[test]
fn servers_ride_out_a_database_restart() {
    let pg = PgCluster::start();
    let secrets = tempfile::tempdir().unwrap();
    let store = pg_store(&pg, secrets.path());
    let a = server_on(&store);
    let b = server_on(&store);
    let agent = TestAgent::start(&b, "dbdown");
    create(
        &a,
        "spiffe://example.org/db/before",
        "spiffe://example.org/node/dbdown",
    );
    eventually("served before", Duration::from_secs(20), || {
        (!ids(&agent).is_empty()).then_some(())
    });

    pg.stop();
    let uid = format!("unix:uid:{}", my_uid());
    let r = a.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/db/during",
        "--parent-id",
        "spiffe://example.org/node/dbdown",
        "--selector",
        &uid,
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("PostgreSQL") || r.stderr.contains("datastore"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    // The workload keeps its identity while the database is away.
    assert!(ids(&agent).contains(&"spiffe://example.org/db/before".to_owned()));

    pg.start_again();
    eventually("writes work again", Duration::from_secs(30), || {
        (a.cli(&[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/db/after",
            "--parent-id",
            "spiffe://example.org/node/dbdown",
            "--selector",
            &uid,
        ])
        .code
            == 0)
            .then_some(())
    });
    eventually(
        "B caught up after the restart",
        Duration::from_secs(30),
        || {
            ids(&agent)
                .contains(&"spiffe://example.org/db/after".to_owned())
                .then_some(())
        },
    );
    assert!(ids(&agent).contains(&"spiffe://example.org/db/before".to_owned()));
}

/// kill -9 of a server while it acknowledges entry creates: every create it acknowledged is on
/// the other server afterwards, and the shared journal still verifies.
#[test]
fn acknowledged_writes_survive_kill9_of_a_server() {
    let pg = PgCluster::start();
    let secrets = tempfile::tempdir().unwrap();
    let store = pg_store(&pg, secrets.path());
    let mut a = server_on(&store);
    let b = server_on(&store);
    let socket = a.socket();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let uid = format!("unix:uid:{}", my_uid());
            let mut acked = Vec::new();
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let o = Command::new(writ_bin())
                    .args([
                        "entry",
                        "create",
                        "--output",
                        "json",
                        "--spiffe-id",
                        &format!("spiffe://example.org/load/{i}"),
                        "--parent-id",
                        "spiffe://example.org/node/x",
                        "--selector",
                        &uid,
                    ])
                    .env("WRIT_SERVER_SOCKET", &socket)
                    .output()
                    .unwrap();
                if o.status.success() {
                    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                    acked.push(v["id"].as_str().unwrap().to_owned());
                }
            }
            acked
        });
        eventually("some writes acknowledged", Duration::from_secs(30), || {
            (a.cli(&["entry", "list", "--output", "json"]).stdout.len() > 2000).then_some(())
        });
        a.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap()
    });
    assert!(!acked.is_empty());
    for id in &acked {
        let r = b.cli(&["entry", "show", id]);
        assert_eq!(r.code, 0, "acknowledged entry {id} lost: {}", r.stderr);
    }
    let r = b.cli(&["audit", "verify"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

/// Servers configured with different CA TTLs publish different refresh hints: they must not
/// rewrite the shared bundle back and forth (each rewrite is a new sequence pushed to every
/// agent). After both are up, the bundle's sequence stays put.
#[test]
fn servers_with_different_settings_do_not_fight_over_the_bundle() {
    let pg = PgCluster::start();
    let secrets = tempfile::tempdir().unwrap();
    let store = pg_store(&pg, secrets.path());
    let a = server_on(&store);
    let b = TestServer::start(ServerOpts {
        extra: store.clone(),
        ca_ttl: "2h".into(),
        ..ServerOpts::default()
    });
    eventually("both CAs published", Duration::from_secs(20), || {
        (a.bundle().x509_authorities.len() == 2 && b.bundle().x509_authorities.len() == 2)
            .then_some(())
    });
    let seq = |s: &TestServer| -> u64 {
        let j = s.cli(&["bundle", "show", "--format", "jwks"]).ok().json();
        j["spiffe_sequence"].as_u64().unwrap()
    };
    let before = seq(&a);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(seq(&a), before, "the bundle kept being rewritten");
    assert_eq!(seq(&b), before);
}

/// A ban made while another server's notification connection is down (the notice is lost)
/// still ends the agent's streams there: after reconnecting, the server re-reads every
/// streaming node's record.
#[test]
fn a_ban_missed_by_the_listener_still_ends_streams() {
    let pg = PgCluster::start();
    let secrets = tempfile::tempdir().unwrap();
    let store = pg_store(&pg, secrets.path());
    let a = server_on(&store);
    let b = server_on(&store);
    let agent = TestAgent::start(&b, "missed");
    create(
        &a,
        "spiffe://example.org/ha/m",
        "spiffe://example.org/node/missed",
    );
    eventually("served", Duration::from_secs(20), || {
        (!ids(&agent).is_empty()).then_some(())
    });
    let node_id = b.cli_json(&["node", "list"])[0]["spiffe_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Cut every listening connection, then ban at once (before they are back).
    pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN writ'");
    a.cli(&["node", "ban", &node_id]).ok();
    eventually(
        "B ended the banned agent's streams",
        Duration::from_secs(30),
        || agent.log().contains("banned").then_some(()),
    );
}

/// `ca_file` makes every connection TLS, verified against it: the servers' sessions show up as
/// TLS in `pg_stat_ssl`; a CA that did not sign the database's certificate fails the start with
/// one line naming the certificate problem; `sslmode=require` without `ca_file` is refused.
#[test]
fn tls_to_the_database_is_verified() {
    let pg = PgCluster::start_tls();
    let secrets = tempfile::tempdir().unwrap();
    let store = format!(
        "{}ca_file = \"{}\"\n",
        pg_store(&pg, secrets.path()),
        pg.ca_file().display()
    );
    let a = server_on(&store);
    create(
        &a,
        "spiffe://example.org/tls/one",
        "spiffe://example.org/node/x",
    );
    assert_eq!(
        pg.psql(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'writ-server'"
        ),
        "t"
    );
    drop(a);

    // Another CA: refused, one line, no panic.
    let other = PgCluster::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let write = |store: &str| run_failing(dir.path(), store);
    let (code, err) = write(&format!(
        "{}ca_file = \"{}\"\n",
        pg_store(&pg, secrets.path()),
        other.ca_file().display()
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, err) = write(&format!(
        "[store.postgres]\nurl = \"{}?sslmode=require\"\npassword_file = \"{}\"\n",
        pg.url(),
        pg.password_file(secrets.path()).display()
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("ca_file"), "{err}");
}
