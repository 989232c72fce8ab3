//! The audit journal through the real processes: every issuance path (agent batch, agent JWT,
//! operator `x509 mint` / `jwt mint`) leaves exactly one issue record, `writ audit trace`
//! follows one credential, acknowledged records survive `kill -9`, and `writ audit verify`
//! names the first bad record when the datastore is edited behind the server's back (the
//! journal's segment file rewritten with valid checksums, as an attacker with the data
//! directory would).

use std::path::Path;
use std::time::Duration;

use super::support::*;
use serde_json::Value;
use writ_store::journal::frame::{self, Kind};
use writ_testkit::*;

/// The serial of the first certificate in a PEM chain, lowercase hex (parsed by x509-parser).
fn serial_of_pem(pem_text: &str) -> String {
    use x509_parser::prelude::*;
    let (_, p) = parse_x509_pem(pem_text.as_bytes()).unwrap();
    let (_, c) = X509Certificate::from_der(&p.contents).unwrap();
    c.raw_serial().iter().map(|b| format!("{b:02x}")).collect()
}

fn records(s: &TestServer, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["audit", "list"];
    a.extend_from_slice(args);
    s.cli_json(&a).as_array().unwrap().clone()
}

#[test]
fn every_issuance_path_is_journalled_once_and_survives_kill_9() {
    let mut s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let uid = format!("unix:uid:{}", my_uid());
    let entry = s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        &uid,
        "--owner",
        "team-web",
    ])["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Agent batch signing, delivered through the Workload API.
    let served = eventually("the workload is served", Duration::from_secs(30), || {
        let r = a.cli(&["svid", "fetch", "--output", "json"]);
        (r.code == 0).then(|| r.json()["svids"][0].clone())
    });
    let agent_serial = served["serial"].as_str().unwrap().to_owned();
    assert_eq!(
        agent_serial,
        serial_of_pem(served["cert_pem"].as_str().unwrap())
    );
    // Agent JWT minting.
    let r = a
        .cli(&["jwt", "fetch", "--audience", "db", "--output", "json"])
        .ok();
    let agent_jwt = r.json()["svids"][0]["token"].as_str().unwrap().to_owned();
    let agent_jti = jti_of(&agent_jwt);
    // Operator minting.
    let minted = s.cli_json(&["x509", "mint", "--spiffe-id", "spiffe://example.org/batch"]);
    let op_serial = serial_of_pem(minted["cert_pem"].as_str().unwrap());
    let minted = s.cli_json(&[
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/batch",
        "--audience",
        "api",
    ]);
    let op_jti = jti_of(minted["token"].as_str().unwrap());

    let check = |s: &TestServer| {
        let r = records(s, &["--serial", &agent_serial, "--kind", "x509.issued"]);
        assert_eq!(
            r.len(),
            1,
            "one issue record for the agent-issued serial: {r:?}"
        );
        assert_eq!(r[0]["kind"], "x509.issued");
        assert_eq!(r[0]["spiffe_id"], "spiffe://example.org/web");
        assert_eq!(r[0]["entry_id"], entry.as_str());
        assert_eq!(r[0]["actor"]["type"], "agent");

        let r = records(s, &["--jti", &agent_jti, "--kind", "jwt.issued"]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0]["kind"], "jwt.issued");
        assert_eq!(r[0]["details"]["audience"], serde_json::json!(["db"]));
        assert_eq!(r[0]["entry_id"], entry.as_str());

        let r = records(s, &["--serial", &op_serial]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0]["actor"]["type"], "operator");
        assert_eq!(r[0]["actor"]["uid"], my_uid());
        let r = records(s, &["--jti", &op_jti]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0]["spiffe_id"], "spiffe://example.org/batch");

        // Every x509.issued record names a distinct serial: nothing is journalled twice.
        let all = records(s, &["--kind", "x509.issued", "--limit", "0"]);
        let mut serials: Vec<&str> = all.iter().map(|r| r["serial"].as_str().unwrap()).collect();
        let n = serials.len();
        serials.sort();
        serials.dedup();
        assert_eq!(serials.len(), n, "a serial journalled twice: {all:?}");

        // The credential's lifecycle: its entry's creation, then its issue.
        let t = s
            .cli(&["audit", "trace", &agent_serial, "--output", "json"])
            .ok()
            .json();
        let kinds: Vec<&str> = t
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["kind"].as_str().unwrap())
            .filter(|k| *k != "svid.delivered")
            .collect();
        assert_eq!(kinds, ["entry.created", "x509.issued"], "{t}");
        assert_eq!(t[0]["details"]["entry"]["owner"], "team-web");

        let v = s.cli(&["audit", "verify", "--output", "json"]).ok().json();
        assert_eq!(v["ok"], true, "{v}");
        assert!(v["records"].as_u64().unwrap() >= 6, "{v}");
    };
    check(&s);
    // The CA's first authorities are journalled, and an entry's expiry is, once.
    let auth = records(&s, &["--kind", "authority.activated"]);
    let kinds: Vec<&str> = auth
        .iter()
        .map(|r| r["details"]["authority"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["x509", "jwt"], "{auth:?}");
    let soon = time::OffsetDateTime::from_unix_timestamp(writ_core::now_unix() + 2)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let short = s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/short",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        "unix:uid:1",
        "--expires-at",
        &soon,
    ])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let expired = eventually("the expiry is journalled", Duration::from_secs(30), || {
        let r = records(&s, &["--entry", &short, "--kind", "entry.expired"]);
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(expired.len(), 1, "{expired:?}");
    // Delivery records: every process that received the agent's SVID is named once per
    // serial; the one JWT fetch and the one validation are recorded once each.
    a.cli(&["jwt", "validate", "--audience", "db", &agent_jwt])
        .ok();
    eventually(
        "deliveries reach the journal",
        Duration::from_secs(30),
        || {
            let v = records(&s, &["--jti", &agent_jti, "--kind", "jwt.validated"]);
            (!v.is_empty()).then_some(())
        },
    );
    let got = records(&s, &["--serial", &agent_serial, "--kind", "svid.delivered"]);
    assert!(!got.is_empty(), "no delivery record for {agent_serial}");
    let mut pids: Vec<i64> = got
        .iter()
        .map(|r| r["actor"]["pid"].as_i64().unwrap())
        .collect();
    let n = pids.len();
    pids.sort();
    pids.dedup();
    assert_eq!(
        pids.len(),
        n,
        "a process recorded twice for one serial: {got:?}"
    );
    for r in &got {
        assert_eq!(r["actor"]["type"], "workload");
        assert_eq!(r["actor"]["uid"], my_uid());
        assert!(r["actor"]["exe"].as_str().unwrap().ends_with("writ"), "{r}");
        assert_eq!(r["spiffe_id"], "spiffe://example.org/web");
        assert_eq!(r["entry_id"], entry.as_str());
    }
    let jd = records(&s, &["--jti", &agent_jti, "--kind", "svid.delivered"]);
    assert_eq!(jd.len(), 1, "{jd:?}");
    let jv = records(&s, &["--jti", &agent_jti, "--kind", "jwt.validated"]);
    assert_eq!(jv.len(), 1, "{jv:?}");
    assert_eq!(jv[0]["details"]["audience"], serde_json::json!(["db"]));
    // Nodes are journalled too.
    let nodes = records(&s, &["--kind", "node.attested"]);
    assert_eq!(nodes.len(), 1, "{nodes:?}");

    // What was acknowledged survives kill -9.
    s.kill9();
    s.spawn();
    check(&s);
    std::thread::sleep(Duration::from_secs(6));
    let again = records(&s, &["--entry", &short, "--kind", "entry.expired"]);
    assert_eq!(
        again.len(),
        1,
        "journalled again after a restart: {again:?}"
    );
    // Export is JSON lines, one record each, in order.
    let export = s.cli(&["audit", "export"]).ok().stdout;
    let seqs: Vec<u64> = export
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    drop(a);
}

/// Copies a directory tree (the stopped server's datastore).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn audit_verify_names_the_first_bad_record_after_tampering() {
    let mut s = TestServer::start(ServerOpts::default());
    for i in 0..6 {
        s.cli_json(&[
            "entry",
            "create",
            "--spiffe-id",
            &format!("spiffe://example.org/w{i}"),
            "--parent-id",
            "spiffe://example.org/node/a",
            "--selector",
            "unix:uid:1",
        ]);
    }
    // Record 1 names the audit key, 2 and 3 the CA's first authorities; 4..=9 are the entries.
    let v = s.cli(&["audit", "verify", "--output", "json"]).ok().json();
    assert_eq!(v["records"], 9, "{v}");
    assert_eq!(s.terminate(), Some(0));
    let store = s.dir.path().join("data/datastore");
    let clean = s.dir.path().join("datastore.clean");
    copy_dir(&store, &clean);

    // The journal's segment, edited as an attacker with the data directory would: frames
    // re-encoded with valid checksums (which anyone can compute), so only the hash chain and
    // the signed checkpoints can tell.
    type Tamper = fn(&mut Vec<(Kind, Vec<u8>)>);
    fn nth_record(f: &[(Kind, Vec<u8>)], n: usize) -> usize {
        f.iter()
            .enumerate()
            .filter(|(_, (k, _))| *k == Kind::Record)
            .nth(n - 1)
            .unwrap()
            .0
    }
    let cases: [(&str, Tamper, &str); 4] = [
        (
            "edit a field",
            |f| {
                let i = nth_record(f, 4);
                let mut r: Value = serde_json::from_slice(&f[i].1).unwrap();
                r["spiffe_id"] = "spiffe://example.org/someone-else".into();
                f[i].1 = serde_json::to_vec(&r).unwrap();
            },
            "record 4 was edited",
        ),
        (
            "delete a record",
            |f| {
                let i = nth_record(f, 5);
                f.remove(i);
            },
            "record 5 cannot be read: it holds record 6",
        ),
        (
            "swap two records",
            |f| {
                let (a, b) = (nth_record(f, 3), nth_record(f, 6));
                f.swap(a, b);
            },
            "record 3 cannot be read: it holds record 6: records were swapped or moved",
        ),
        (
            "drop the tail",
            |f| {
                // The records, not their checkpoints: those are what tell.
                let (a, b) = (nth_record(f, 8), nth_record(f, 9));
                f.remove(b);
                f.remove(a);
            },
            "the journal ends at record 7 but a signed checkpoint covers up to record 9",
        ),
    ];
    let segment = store.join("journal/seg-00000000000000000001.log");
    let read_frames = |path: &Path| {
        let b = std::fs::read(path).unwrap();
        let mut out = Vec::new();
        let mut p = 0;
        while p < b.len() {
            let (h, payload) = frame::decode(&b[p..]).unwrap();
            out.push((h.kind, payload.to_vec()));
            p += h.frame_len() as usize;
        }
        out
    };
    for (what, tamper, expected) in cases {
        std::fs::remove_dir_all(&store).unwrap();
        copy_dir(&clean, &store);
        let mut f = read_frames(&segment);
        tamper(&mut f);
        let mut b = Vec::new();
        for (k, payload) in &f {
            frame::encode(&mut b, *k, payload).unwrap();
        }
        std::fs::write(&segment, b).unwrap();
        s.spawn();
        let r = s.cli(&["audit", "verify"]);
        assert_eq!(r.code, 1, "{what}: verify must fail: {r:?}");
        assert!(
            r.stderr.contains(expected),
            "{what}: expected `{expected}` in: {}",
            r.stderr
        );
        assert_eq!(s.terminate(), Some(0));
    }
    // An edit that does not bother with the checksum: the frame stays in place, unreadable,
    // and verify names it (the server does not cut the journal short around it).
    std::fs::remove_dir_all(&store).unwrap();
    copy_dir(&clean, &store);
    let mut b = std::fs::read(&segment).unwrap();
    let at = {
        let f = read_frames(&segment);
        let i = nth_record(&f, 4);
        f[..i]
            .iter()
            .map(|(_, p)| frame::HEADER + p.len())
            .sum::<usize>()
            + frame::HEADER
            + 20
    };
    b[at] ^= 0x01;
    std::fs::write(&segment, b).unwrap();
    s.spawn();
    let r = s.cli(&["audit", "verify"]);
    assert_eq!(r.code, 1, "unfixed checksum: verify must fail: {r:?}");
    assert!(
        r.stderr
            .contains("record 4 cannot be read: its frame is damaged"),
        "{}",
        r.stderr
    );
    assert_eq!(s.terminate(), Some(0));
    // The untouched copy still verifies.
    std::fs::remove_dir_all(&store).unwrap();
    copy_dir(&clean, &store);
    s.spawn();
    s.cli(&["audit", "verify"]).ok();
}

#[test]
fn delivery_records_survive_a_server_outage_and_kill_9_of_the_agent() {
    let mut s = TestServer::start(ServerOpts::default());
    let mut a = TestAgent::start(&s, "a");
    let uid = format!("unix:uid:{}", my_uid());
    s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        &uid,
    ]);
    let serial = eventually("the workload is served", Duration::from_secs(30), || {
        let r = a.cli(&["svid", "fetch", "--output", "json"]);
        (r.code == 0).then(|| r.json()["svids"][0]["serial"].as_str().unwrap().to_owned())
    });
    eventually(
        "the first deliveries are journalled",
        Duration::from_secs(30),
        || (a.health()?.deliveries_pending == 0).then_some(()),
    );
    let before = records(&s, &["--serial", &serial, "--kind", "svid.delivered"]).len();

    // Server down: the agent keeps serving from its cache and keeps the records on disk.
    s.kill9();
    for _ in 0..3 {
        a.cli(&["svid", "fetch"]).ok();
    }
    eventually(
        "three records wait on the agent",
        Duration::from_secs(30),
        || (a.health()?.deliveries_pending == 3).then_some(()),
    );
    // The agent dies too; its records are in data_dir.
    a.kill9();
    s.spawn();
    a.spawn();
    let after = eventually(
        "the waiting records arrive",
        Duration::from_secs(60),
        || {
            let n = records(&s, &["--serial", &serial, "--kind", "svid.delivered"]).len();
            (n >= before + 3).then_some(n)
        },
    );
    assert_eq!(after, before + 3, "records lost or duplicated");
    s.cli(&["audit", "verify"]).ok();
}
