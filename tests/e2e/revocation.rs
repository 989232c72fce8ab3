//! Revocation through the real processes: `writ x509 revoke` makes the agent drop the SVID and
//! serve a new one, the CRL it serves lists the serial and is accepted and applied by
//! independent verifiers (`openssl crl -verify`, `openssl verify -crl_check`, rustls-webpki
//! with the CRL); `writ jwt revoke` makes `ValidateJWTSVID` refuse the token; deleting an entry
//! revokes its outstanding SVIDs; bad input changes nothing.

use std::time::Duration;

use super::support::*;
use writ_testkit::*;

#[test]
fn a_revoked_svid_is_dropped_and_refused_by_independent_verifiers() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let entry = web_entry(&s);
    let old = eventually("the workload is served", Duration::from_secs(30), || {
        served(&a)
    });
    let old_serial = old["serial"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("old.pem"),
        old["cert_pem"].as_str().unwrap(),
    )
    .unwrap();

    // Bad input first: nothing changes.
    let r = s.cli(&["x509", "revoke", "--serial", &old_serial, "--reason", " "]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("reason"), "{}", r.stderr);
    let r = s.cli(&["x509", "revoke", "--serial", "0badc0de", "--reason", "test"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("no X509-SVID serial `0badc0de` was issued"),
        "{}",
        r.stderr
    );
    assert_eq!(served(&a).unwrap()["serial"], old_serial.as_str());

    let r = s.cli_json(&[
        "x509",
        "revoke",
        "--serial",
        &old_serial,
        "--reason",
        "key_compromise",
    ]);
    assert_eq!(r["revoked"][0]["id"], old_serial.as_str(), "{r}");
    assert_eq!(r["revoked"][0]["spiffe_id"], "spiffe://example.org/web");
    let again = s.cli(&["x509", "revoke", "--serial", &old_serial, "--reason", "x"]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("already revoked"), "{}", again.stderr);

    // The agent drops it and serves a new SVID, with a CRL listing the old serial.
    let new = eventually(
        "a new SVID replaces the revoked one",
        Duration::from_secs(30),
        || served(&a).filter(|s| s["serial"] != old_serial.as_str()),
    );
    eventually("the CRL is written", Duration::from_secs(30), || {
        a.cli(&["svid", "fetch", "--out-dir", dir.path().to_str().unwrap()])
            .ok();
        dir.path().join("crl.pem").exists().then_some(())
    });
    let crl_pem = std::fs::read_to_string(dir.path().join("crl.pem")).unwrap();
    // openssl: the CRL is signed by the CA in the bundle and lists the serial.
    let (ok, text) = openssl(
        &[
            "crl",
            "-in",
            "crl.pem",
            "-CAfile",
            "bundle.pem",
            "-noout",
            "-text",
        ],
        dir.path(),
    );
    assert!(ok, "{text}");
    assert!(text.to_lowercase().contains("verify ok"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains(&old_serial),
        "serial {old_serial} not in: {text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    let (ok, text) = openssl(
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "bundle.pem",
            "-CRLfile",
            "crl.pem",
            "old.pem",
        ],
        dir.path(),
    );
    assert!(
        !ok && text.contains("revoked"),
        "revoked SVID accepted: {text}"
    );
    let (ok, text) = openssl(
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "bundle.pem",
            "-CRLfile",
            "crl.pem",
            "svid.pem",
        ],
        dir.path(),
    );
    assert!(ok, "new SVID refused: {text}");

    // rustls-webpki with the CRL: the revoked SVID is refused, the new one accepted.
    let roots = pem_ders(&std::fs::read_to_string(dir.path().join("bundle.pem")).unwrap());
    let crls = pem_ders(&crl_pem);
    let old_chain = pem_ders(old["cert_pem"].as_str().unwrap());
    let new_chain = pem_ders(new["cert_pem"].as_str().unwrap());
    let e = webpki_verify_with_crls(&old_chain, &roots, &crls).unwrap_err();
    assert!(e.contains("Revoked"), "{e}");
    webpki_verify_with_crls(&new_chain, &roots, &crls).unwrap();
    webpki_verify(&old_chain, &roots).expect("without the CRL the chain itself is fine");

    // The operator's view and the journal.
    let b = s.cli_json(&["bundle", "show", "--crl"]);
    assert!(b["crl_pem"].as_str().unwrap().contains("BEGIN X509 CRL"));
    assert_eq!(b["revoked_x509"][0]["id"], old_serial.as_str());
    let t = s.cli_json(&["audit", "trace", &old_serial]);
    let kinds: Vec<&str> = t
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .filter(|k| *k != "svid.delivered")
        .collect();
    assert_eq!(
        kinds,
        ["entry.created", "x509.issued", "svid.revoked"],
        "{t}"
    );

    // Deleting the entry revokes what it still has outstanding.
    let new_serial = new["serial"].as_str().unwrap().to_owned();
    s.cli(&["entry", "delete", &entry]).ok();
    let b = s.cli_json(&["bundle", "show", "--crl"]);
    let ids: Vec<&str> = b["revoked_x509"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&new_serial.as_str()), "{b}");
    eventually(
        "the workload loses its identity",
        Duration::from_secs(30),
        || served(&a).is_none().then_some(()),
    );
}

#[test]
fn a_revoked_jwt_is_refused_by_validate_until_it_expires() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    web_entry(&s);
    eventually("the workload is served", Duration::from_secs(30), || {
        served(&a)
    });
    let fetch = || {
        let r = a
            .cli(&["jwt", "fetch", "--audience", "db", "--output", "json"])
            .ok();
        r.json()["svids"][0]["token"].as_str().unwrap().to_owned()
    };
    let token = fetch();
    let jti = jti_of(&token);
    a.cli(&["jwt", "validate", "--audience", "db", &token]).ok();

    let r = s.cli(&["jwt", "revoke", "--jti", "nope", "--reason", "leaked"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no JWT-SVID jti `nope`"), "{}", r.stderr);
    let r = s.cli_json(&[
        "jwt",
        "revoke",
        "--jti",
        &jti,
        "--reason",
        "leaked in a log",
    ]);
    assert_eq!(r["revoked"][0]["id"], jti.as_str(), "{r}");

    let refused = eventually(
        "validate refuses the token",
        Duration::from_secs(30),
        || {
            let r = a.cli(&["jwt", "validate", "--audience", "db", &token]);
            (r.code != 0).then_some(r)
        },
    );
    assert!(refused.stderr.contains("revoked"), "{}", refused.stderr);
    // The agent does not hand the revoked token out again.
    let next = fetch();
    assert_ne!(jti_of(&next), jti);
    a.cli(&["jwt", "validate", "--audience", "db", &next]).ok();
}

#[test]
fn banning_a_node_revokes_what_it_was_issued_and_nothing_else() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let b = TestAgent::start(&s, "b");
    let uid = format!("unix:uid:{}", my_uid());
    // One entry served through both nodes (an alias both hold), one through each.
    for (id, parent) in [
        ("spiffe://example.org/web", "spiffe://example.org/node/a"),
        ("spiffe://example.org/db", "spiffe://example.org/node/b"),
    ] {
        s.cli_json(&[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--parent-id",
            parent,
            "--selector",
            &uid,
        ]);
    }
    let sa = eventually("a serves", Duration::from_secs(30), || served(&a));
    let sb = eventually("b serves", Duration::from_secs(30), || served(&b));
    let agent_a = a.health().unwrap().agent_id;
    s.cli_json(&["node", "ban", &agent_a]);
    let crl = s.cli_json(&["bundle", "show", "--crl"]);
    let ids: Vec<&str> = crl["revoked_x509"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&sa["serial"].as_str().unwrap()), "{crl}");
    assert!(!ids.contains(&sb["serial"].as_str().unwrap()), "{crl}");
    assert!(
        crl["revoked_x509"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("node banned"),
        "{crl}"
    );
}
