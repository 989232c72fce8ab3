//! `[governance]` through the real server: owner, purpose and lifetime rules at creation, the
//! access-review filters of `entry list`, and break-glass (reason required, short lifetime,
//! journalled at creation and at every issuance, counted in `/metrics`).

use std::io::{Read, Write};
use std::time::Duration;
use writ_testkit::*;

const RULES: &str = "[governance]\nrequire_owner = true\nrequire_purpose = true\nmax_entry_lifetime = \"30d\"\nbreak_glass_max_lifetime = \"1h\"\n";

fn metrics(s: &TestServer) -> String {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.metrics_port)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn governance_rules_review_filters_and_break_glass() {
    let s = TestServer::start(ServerOpts {
        extra: RULES.into(),
        metrics: true,
        ..ServerOpts::default()
    });
    let uid = format!("unix:uid:{}", my_uid());
    let base = [
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        uid.as_str(),
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        s.cli(&a)
    };
    let r = with(&[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("owner is required"), "{}", r.stderr);
    let r = with(&["--owner", "team-web"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("purpose is required"), "{}", r.stderr);
    let r = with(&[
        "--owner",
        "team-web",
        "--purpose",
        "shop",
        "--expires-at",
        "2099-01-01T00:00:00Z",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("longest entry lifetime"), "{}", r.stderr);
    assert!(s
        .cli_json(&["entry", "list"])
        .as_array()
        .unwrap()
        .is_empty());

    // Within the rules: the end is fixed at creation.
    let before = writ_core::now_unix();
    let e = s.cli_json(&{
        let mut a = base.to_vec();
        a.extend_from_slice(&["--owner", "team-web", "--purpose", "shop"]);
        a
    });
    let exp = time_of(e["expires_at"].as_str().unwrap());
    assert!(
        (before + 30 * 86_400..=before + 30 * 86_400 + 60).contains(&exp),
        "{e}"
    );

    // Break-glass: a reason is required, the lifetime is capped, the rules are passed.
    let r = s.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/oncall",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        &uid,
        "--break-glass",
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    let bg = s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/oncall",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        &uid,
        "--selector",
        "unix:gid:0",
        "--break-glass",
        "--reason",
        "INC-42 database down",
    ]);
    assert_eq!(bg["break_glass"], true, "{bg}");
    let exp = time_of(bg["expires_at"].as_str().unwrap());
    assert!(exp <= writ_core::now_unix() + 3600, "{bg}");
    let bg_id = bg["id"].as_str().unwrap();

    // Access review.
    let ids = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["entry", "list"];
        a.extend_from_slice(args);
        s.cli_json(&a)
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&["--break-glass"]), [bg_id]);
    assert_eq!(ids(&["--no-owner"]), [bg_id]);
    assert_eq!(ids(&["--owner", "team-web"]), [e["id"].as_str().unwrap()]);
    assert_eq!(ids(&["--expiring", "2h"]), [bg_id]);
    assert_eq!(ids(&["--expiring", "31d"]).len(), 2);
    assert!(ids(&["--expired"]).is_empty());

    // Loud: journalled at creation and at every issuance, counted.
    let a = TestAgent::start(&s, "a");
    let served = eventually(
        "the agent signs both entries",
        Duration::from_secs(30),
        || {
            let r = a.cli(&["svid", "fetch", "--output", "json"]);
            (r.code == 0 && r.json()["svids"].as_array().unwrap().len() == 2).then(|| r.json())
        },
    );
    let bg_serial = served["svids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["spiffe_id"] == "spiffe://example.org/oncall")
        .unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    let uses = s.cli_json(&["audit", "list", "--kind", "break_glass.used"]);
    let uses = uses.as_array().unwrap();
    assert_eq!(uses.len(), 2, "creation and one issuance: {uses:?}");
    assert_eq!(uses[0]["details"]["reason"], "INC-42 database down");
    assert_eq!(uses[1]["serial"], bg_serial.as_str());
    let m = metrics(&s);
    assert!(m.contains("writ_break_glass_total 2"), "{m}");
    assert!(s.log().contains("BREAK-GLASS"), "no warning logged");
}

fn time_of(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp()
}
