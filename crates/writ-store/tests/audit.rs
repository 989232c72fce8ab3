//! The audit journal in the store: appends chained and signed atomically, scans by
//! correlation ID, a reopened store continues the chain, and acknowledged appends survive
//! SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use writ_audit::{verify, Actor, Chain, Checkpoint, NewRecord, VerifyingKey};
use writ_store::journal::frame::{self, Kind};
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

fn first_segment(d: &std::path::Path) -> std::path::PathBuf {
    d.join("journal/seg-00000000000000000001.log")
}

fn count(s: &dyn Store, q: AuditQuery<'_>, after: u64) -> Vec<u64> {
    let mut out = Vec::new();
    s.audit_scan(q, after, &mut |r| {
        out.push(r.unwrap().seq);
        true
    })
    .unwrap();
    out
}

#[test]
fn an_append_cut_short_is_invisible_kept_aside_and_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let kd = tempfile::tempdir().unwrap();
    let k = key_in(kd.path());
    let head = {
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
        s.audit_head().unwrap()
    };
    // What a crash inside an append leaves: a whole record frame (record 4, serial ffff) and
    // part of the next, no checkpoint.
    let mut chain = Chain::resume(head.0, head.1);
    let stray = chain.append(issued(7).serial("ffff"), 2);
    let mut tail = Vec::new();
    frame::encode(
        &mut tail,
        Kind::Record,
        &serde_json::to_vec(&stray).unwrap(),
    )
    .unwrap();
    let mut part = Vec::new();
    frame::encode(
        &mut part,
        Kind::Record,
        &serde_json::to_vec(&stray).unwrap(),
    )
    .unwrap();
    tail.extend_from_slice(&part[..40]);
    let seg = first_segment(d.path());
    let before = std::fs::read(&seg).unwrap();
    let mut b = before.clone();
    b.extend_from_slice(&tail);
    std::fs::write(&seg, b).unwrap();

    let s = SledStore::open(d.path()).unwrap();
    assert_eq!(
        verify_store(&s, &k),
        Ok(3),
        "the stray record is not part of the journal"
    );
    assert!(count(&s, AuditQuery::Serial("ffff"), 0).is_empty());
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        before,
        "the segment ends at its checkpoint"
    );
    // The cut-off bytes are kept, not deleted.
    let aside: Vec<_> = std::fs::read_dir(d.path().join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".log.tail-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), tail);
    // The next append takes number 4 and the stray one is nowhere.
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
    assert!(count(&s, AuditQuery::Serial("ffff"), 0).is_empty());
}

#[test]
fn damage_followed_by_intact_records_is_refused_not_cut_off() {
    let d = tempfile::tempdir().unwrap();
    let kd = tempfile::tempdir().unwrap();
    let k = key_in(kd.path());
    {
        let s = SledStore::open(d.path()).unwrap();
        let sign = signer(&k);
        for b in 0..3 {
            s.append_audit(
                AuditBatch {
                    records: (b * 2..b * 2 + 2).map(issued).collect(),
                    now_ms: 1,
                },
                &sign,
            )
            .unwrap();
        }
    }
    // Record 3's frame header broken: what follows cannot be walked to, but it is there.
    let seg = first_segment(d.path());
    let mut b = std::fs::read(&seg).unwrap();
    let mut at = 0;
    let mut records = 0;
    loop {
        let (h, _) = frame::decode(&b[at..]).unwrap();
        if h.kind == Kind::Record {
            records += 1;
            if records == 3 {
                break;
            }
        }
        at += h.frame_len() as usize;
    }
    b[at] ^= 0xff;
    std::fs::write(&seg, &b).unwrap();
    let e = SledStore::open(d.path()).err().unwrap().to_string();
    assert!(
        e.contains("seg-00000000000000000001.log is damaged at byte")
            && e.contains("not an append cut short"),
        "{e}"
    );
    assert_eq!(std::fs::read(&seg).unwrap(), b, "nothing was cut");
}

#[test]
fn sealed_segments_answer_every_query_and_a_lost_index_is_rebuilt() {
    let d = tempfile::tempdir().unwrap();
    let kd = tempfile::tempdir().unwrap();
    let k = key_in(kd.path());
    let check = |s: &SledStore| {
        assert_eq!(verify_store(s, &k), Ok(300));
        assert_eq!(count(s, AuditQuery::Serial("00007b"), 0), vec![124]);
        let by_id = count(s, AuditQuery::SpiffeId("spiffe://td/w/1"), 0);
        assert_eq!(by_id.len(), 100);
        assert!(by_id.iter().all(|n| (n - 1) % 3 == 1));
        let after = count(s, AuditQuery::Entry("e2"), 150);
        assert_eq!(
            after,
            (151..=300).filter(|n| (n - 1) % 5 == 2).collect::<Vec<_>>()
        );
        assert_eq!(
            count(s, AuditQuery::All, 287),
            (288..=300).collect::<Vec<_>>()
        );
        assert!(count(s, AuditQuery::Task("none"), 0).is_empty());
    };
    {
        // ~4 KiB segments: a few appends each.
        let s = SledStore::open_with(d.path(), 4096).unwrap();
        let sign = signer(&k);
        for b in 0..30u64 {
            s.append_audit(
                AuditBatch {
                    records: (b * 10..b * 10 + 10).map(issued).collect(),
                    now_ms: 1_000 + b as i64,
                },
                &sign,
            )
            .unwrap();
        }
        check(&s);
    }
    let files = |ext: &str| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(d.path().join("journal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        v.sort();
        v
    };
    let idx = files("idx");
    assert!(idx.len() >= 10, "{} sealed segments", idx.len());
    assert_eq!(files("log").len(), idx.len() + 1);
    // A crash while sealing (index missing) and a damaged index: both rebuilt from the log.
    std::fs::remove_file(&idx[2]).unwrap();
    let mut b = std::fs::read(&idx[5]).unwrap();
    b[50] ^= 1;
    std::fs::write(&idx[5], b).unwrap();
    let s = SledStore::open_with(d.path(), 4096).unwrap();
    check(&s);
    assert_eq!(files("idx").len(), idx.len());
}

/// Appends from many threads at once (each builds and writes its group while others wait for
/// the disk, and segments seal under them): one chain, every record once, every query right.
#[test]
fn concurrent_appends_stay_one_chain_across_sealing() {
    let d = tempfile::tempdir().unwrap();
    let kd = tempfile::tempdir().unwrap();
    let k = key_in(kd.path());
    let s = SledStore::open_with(d.path(), 8192).unwrap();
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let (s, k) = (&s, &k);
            scope.spawn(move || {
                let sign = signer(k);
                for b in 0..25u64 {
                    let first = (t * 25 + b) * 3;
                    let recs = s
                        .append_audit(
                            AuditBatch {
                                records: (first..first + 3).map(issued).collect(),
                                now_ms: 1_000,
                            },
                            &sign,
                        )
                        .unwrap();
                    // Acknowledged means readable.
                    let serial = recs[0].serial.clone().unwrap();
                    assert_eq!(count(s, AuditQuery::Serial(&serial), 0), vec![recs[0].seq]);
                }
            });
        }
    });
    assert_eq!(verify_store(&s, &k), Ok(600));
    let mut serials = std::collections::BTreeSet::new();
    s.audit_scan(AuditQuery::All, 0, &mut |r| {
        serials.insert(r.unwrap().serial.unwrap());
        true
    })
    .unwrap();
    assert_eq!(serials.len(), 600, "every record once");
    assert_eq!(count(&s, AuditQuery::Entry("e3"), 0).len(), 120);
    drop(s);
    let s = SledStore::open_with(d.path(), 8192).unwrap();
    assert_eq!(verify_store(&s, &k), Ok(600));
}

#[test]
fn a_journal_kept_in_sled_by_earlier_versions_moves_into_segments() {
    let d = tempfile::tempdir().unwrap();
    let kd = tempfile::tempdir().unwrap();
    let k = key_in(kd.path());
    // Written the way earlier versions did: record JSON by number in `audit`, a checkpoint per
    // append in `audit_cp`, index keys in `audit_idx`, the head in `meta`.
    {
        let db = open_raw(d.path());
        let (recs, cps, idx, meta) = (
            db.open_tree("audit").unwrap(),
            db.open_tree("audit_cp").unwrap(),
            db.open_tree("audit_idx").unwrap(),
            db.open_tree("meta").unwrap(),
        );
        let sign = signer(&k);
        let mut chain = Chain::default();
        for b in 0..5u64 {
            for n in b * 5..b * 5 + 5 {
                let r = chain.append(issued(n), 1_000 + b as i64);
                recs.insert(r.seq.to_be_bytes(), serde_json::to_vec(&r).unwrap())
                    .unwrap();
                let mut key = format!("n{}\0", r.serial.clone().unwrap()).into_bytes();
                key.extend_from_slice(&r.seq.to_be_bytes());
                idx.insert(key, &[][..]).unwrap();
            }
            let cp = sign(chain.seq, &chain.hash, 1_000 + b as i64).unwrap();
            cps.insert(cp.seq.to_be_bytes(), serde_json::to_vec(&cp).unwrap())
                .unwrap();
        }
        // A checkpoint the old version wrote before a crash cut its append short (its head
        // still names 25): not part of the journal, not copied.
        let stray = sign(30, &chain.hash, 9).unwrap();
        cps.insert(30u64.to_be_bytes(), serde_json::to_vec(&stray).unwrap())
            .unwrap();
        meta.insert(
            b"audit_head",
            serde_json::to_vec(&serde_json::json!({"seq": chain.seq, "hash": chain.hash})).unwrap(),
        )
        .unwrap();
        db.flush().unwrap();
    }
    // An earlier move a crash interrupted before its rename is redone from scratch.
    std::fs::create_dir(d.path().join("journal.migrating")).unwrap();
    std::fs::write(
        d.path()
            .join("journal.migrating/seg-00000000000000000001.log"),
        b"junk",
    )
    .unwrap();
    {
        let s = SledStore::open(d.path()).unwrap();
        assert_eq!(verify_store(&s, &k), Ok(25));
        assert_eq!(s.audit_checkpoints().unwrap().len(), 5);
        assert_eq!(count(&s, AuditQuery::Serial("00000c"), 0), vec![13]);
        let sign = signer(&k);
        s.append_audit(
            AuditBatch {
                records: vec![issued(99)],
                now_ms: 9,
            },
            &sign,
        )
        .unwrap();
        assert_eq!(verify_store(&s, &k), Ok(26));
    }
    assert!(!d.path().join("journal.migrating").exists());
    // The old trees stay as they were (a copy to fall back on), untouched by the new append.
    let db = open_raw(d.path());
    assert_eq!(db.open_tree("audit").unwrap().len(), 25);
    drop(db);
    // Opened again, nothing moves twice.
    let s = SledStore::open(d.path()).unwrap();
    assert_eq!(verify_store(&s, &k), Ok(26));
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
