//! The audit journal in the store: appends chained and signed atomically, scans by
//! correlation ID, a reopened store continues the chain, and acknowledged appends survive
//! SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use writ_audit::{verify, Actor, Checkpoint, NewRecord, VerifyingKey};
use writ_store::{AuditBatch, AuditQuery, PgSettings, PgStore, SledStore, Store};
use writ_testkit::{PgCluster, PG_PASSWORD};

const CHILD_ENV: &str = "WRIT_AUDIT_CHILD_DIR";
/// The audit key of a test directory, made on first use so the crashing child and the parent
/// share it.
/// Opens a datastore with sled directly, as soon as the store just dropped has let go of it
/// (sled's flusher thread can hold the directory lock a moment after the drop).
fn open_raw(dir: &std::path::Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(e) if Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }
}

fn key_in(dir: &std::path::Path) -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let path = dir.join("audit-key.pk8");
    let pkcs8 = match std::fs::read(&path) {
        Ok(b) => b,
        Err(_) => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            std::fs::write(&path, doc.as_ref()).unwrap();
            doc.as_ref().to_vec()
        }
    };
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng).unwrap()
}

fn signer(k: &EcdsaKeyPair) -> impl Fn(u64, &str, i64) -> Result<Checkpoint, String> + Sync + '_ {
    move |seq, hash, t| {
        Checkpoint::sign(seq, hash, t, "audit-test", |m| {
            k.sign(&SystemRandom::new(), m)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "sign failed".to_owned())
        })
        .map_err(|e| e.to_string())
    }
}

fn issued(n: u64) -> NewRecord {
    NewRecord::new("x509.issued", Actor::agent("spiffe://td/writ/agent/a"))
        .spiffe_id(format!("spiffe://td/w/{}", n % 3))
        .serial(format!("{n:06x}"))
        .entry(format!("e{}", n % 5))
}

fn verify_store(s: &dyn Store, k: &EcdsaKeyPair) -> Result<u64, String> {
    let mut recs = Vec::new();
    s.audit_scan(AuditQuery::All, 0, &mut |r| {
        recs.push(r);
        true
    })
    .unwrap();
    let cps = s.audit_checkpoints().unwrap();
    let vk = VerifyingKey {
        kid: "audit-test".into(),
        point: k.public_key().as_ref().to_vec(),
    };
    verify(recs, &cps, &[vk], false)
        .map(|r| r.records)
        .map_err(|e| e.to_string())
}

#[test]
fn appends_chain_sign_and_query() {
    let d = tempfile::tempdir().unwrap();
    let kd = tempfile::tempdir().unwrap();
    let k = key_in(kd.path());
    {
        let s = SledStore::open(d.path()).unwrap();
        assert_eq!(s.audit_head().unwrap().0, 0);
        let sign = signer(&k);
        for b in 0..5u64 {
            let recs = s
                .append_audit(
                    AuditBatch {
                        records: (b * 10..b * 10 + 10).map(issued).collect(),
                        now_ms: 1_000 + b as i64,
                    },
                    &sign,
                )
                .unwrap();
            assert_eq!(recs.last().unwrap().seq, b * 10 + 10);
        }
        assert_eq!(verify_store(&s, &k), Ok(50));
        let mut by_serial = Vec::new();
        s.audit_scan(AuditQuery::Serial("000011"), 0, &mut |r| {
            by_serial.push(r.unwrap().seq);
            true
        })
        .unwrap();
        assert_eq!(by_serial, vec![18]);
        let mut by_id = Vec::new();
        s.audit_scan(AuditQuery::SpiffeId("spiffe://td/w/1"), 20, &mut |r| {
            by_id.push(r.unwrap().seq);
            true
        })
        .unwrap();
        assert_eq!(by_id, vec![23, 26, 29, 32, 35, 38, 41, 44, 47, 50]);
        // A prefix of another value is not a match.
        let mut none = 0;
        s.audit_scan(AuditQuery::Entry("e"), 0, &mut |_| {
            none += 1;
            true
        })
        .unwrap();
        assert_eq!(none, 0);
    }
    // Reopened, the chain continues.
    let s = SledStore::open(d.path()).unwrap();
    let sign = signer(&k);
    s.append_audit(
        AuditBatch {
            records: vec![issued(99)],
            now_ms: 9,
        },
        &sign,
    )
    .unwrap();
    assert_eq!(verify_store(&s, &k), Ok(51));
}

#[test]
fn an_append_cut_short_before_its_head_is_invisible_and_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let kd = tempfile::tempdir().unwrap();
    let k = key_in(kd.path());
    {
        let s = SledStore::open(d.path()).unwrap();
        let sign = signer(&k);
        s.append_audit(
            AuditBatch {
                records: (0..3).map(issued).collect(),
                now_ms: 1,
            },
            &sign,
        )
        .unwrap();
    }
    // What a crash between the record batch and the head leaves: a record (and its index key)
    // past the head. Written with sled directly, as the interrupted append would have.
    {
        let db = open_raw(d.path());
        let stray = db
            .open_tree("audit")
            .unwrap()
            .get(3u64.to_be_bytes())
            .unwrap()
            .unwrap();
        let mut rec: serde_json::Value = serde_json::from_slice(&stray).unwrap();
        rec["seq"] = 4.into();
        rec["serial"] = "ffff".into();
        db.open_tree("audit")
            .unwrap()
            .insert(4u64.to_be_bytes(), serde_json::to_vec(&rec).unwrap())
            .unwrap();
        let mut key = b"nffff\0".to_vec();
        key.extend_from_slice(&4u64.to_be_bytes());
        db.open_tree("audit_idx")
            .unwrap()
            .insert(key, &[][..])
            .unwrap();
        db.flush().unwrap();
    }
    let s = SledStore::open(d.path()).unwrap();
    assert_eq!(
        verify_store(&s, &k),
        Ok(3),
        "the stray record is not part of the journal"
    );
    let mut hits = 0;
    s.audit_scan(AuditQuery::Serial("ffff"), 0, &mut |_| {
        hits += 1;
        true
    })
    .unwrap();
    assert_eq!(hits, 0);
    // The next append takes number 4 and the stale index key does not point at it.
    let sign = signer(&k);
    s.append_audit(
        AuditBatch {
            records: vec![issued(7)],
            now_ms: 2,
        },
        &sign,
    )
    .unwrap();
    assert_eq!(verify_store(&s, &k), Ok(4));
    s.audit_scan(AuditQuery::Serial("ffff"), 0, &mut |_| {
        hits += 1;
        true
    })
    .unwrap();
    assert_eq!(hits, 0);
}

/// The writer for the SIGKILL test. Does nothing unless started by the test below.
#[test]
fn audit_crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let s = SledStore::open(std::path::Path::new(&dir).join("db")).unwrap();
    let k = key_in(std::path::Path::new(&dir));
    let sign = signer(&k);
    for n in s.audit_head().unwrap().0.. {
        let recs = s
            .append_audit(
                AuditBatch {
                    records: vec![issued(n), issued(n + 1_000_000)],
                    now_ms: n as i64,
                },
                &sign,
            )
            .unwrap();
        println!("ack {}", recs.last().unwrap().seq);
    }
}

#[test]
fn acknowledged_appends_survive_sigkill_and_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let k = key_in(dir.path());
    for _round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "audit_crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = 0u64;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked < 200 && Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(seq) = line.strip_prefix("ack ") {
                acked = seq.parse().unwrap();
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let s = SledStore::open(dir.path().join("db")).unwrap();
        let head = s.audit_head().unwrap().0;
        assert!(
            head >= acked,
            "acknowledged up to {acked}, journal ends at {head}"
        );
        assert!(verify_store(&s, &k).is_ok(), "{:?}", verify_store(&s, &k));
    }
}

/// Two servers on one PostgreSQL database append at the same time (8 threads each, separate
/// connections and processes' worth of pools): the database serialises the appends, so the
/// chain stays linear, every record is there once, and the journal verifies; the same queries
/// work as on sled.
#[test]
fn postgres_appends_from_two_servers_stay_one_chain() {
    let pg = PgCluster::start();
    let kd = tempfile::tempdir().unwrap();
    let k = key_in(kd.path());
    let open = |name: &str| {
        PgStore::open(PgSettings {
            url: pg.url(),
            password: Some(PG_PASSWORD.into()),
            instance: name.into(),
            ca_pem: None,
        })
        .unwrap()
    };
    let (a, b) = (open("a"), open("b"));
    std::thread::scope(|scope| {
        for (i, s) in [&a, &b].into_iter().cycle().take(16).enumerate() {
            let k = &k;
            scope.spawn(move || {
                let sign = signer(k);
                for n in 0..10u64 {
                    let first = (i as u64 * 10 + n) * 3;
                    s.append_audit(
                        AuditBatch {
                            records: (first..first + 3).map(issued).collect(),
                            now_ms: 1_000,
                        },
                        &sign,
                    )
                    .unwrap();
                }
            });
        }
    });
    assert_eq!(verify_store(&a, &k), Ok(480));
    assert_eq!(b.audit_head().unwrap().0, 480);
    let mut serials = std::collections::BTreeSet::new();
    b.audit_scan(AuditQuery::All, 0, &mut |r| {
        serials.insert(r.unwrap().serial.unwrap());
        true
    })
    .unwrap();
    assert_eq!(serials.len(), 480, "every record once");
    let mut by_serial = Vec::new();
    b.audit_scan(AuditQuery::Serial("000011"), 0, &mut |r| {
        by_serial.push(r.unwrap().serial.unwrap());
        true
    })
    .unwrap();
    assert_eq!(by_serial, vec!["000011".to_owned()]);
    // Editing a record in the database is caught by the verifier.
    pg.psql(
        "UPDATE writ_audit SET body = replace(body, '000011', '0000ff') WHERE serial = '000011'",
    );
    assert!(verify_store(&a, &k).is_err());
}
