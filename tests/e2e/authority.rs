//! Authority rotation on demand through the real processes: prepare and activate a new CA,
//! taint the old one and watch the agent re-sign every SVID under the new key while the
//! workload stays served, then revoke the old one out of the bundle; the same for JWT keys.
//! Refusals (tainting the active authority, revoking an untainted one) change nothing.

use std::time::Duration;

use super::support::*;
use serde_json::Value;
use writ_testkit::*;

fn aki_of_pem(pem_text: &str) -> String {
    use x509_parser::prelude::*;
    let (_, p) = parse_x509_pem(pem_text.as_bytes()).unwrap();
    let (_, c) = X509Certificate::from_der(&p.contents).unwrap();
    for e in c.extensions() {
        if let ParsedExtension::AuthorityKeyIdentifier(a) = e.parsed_extension() {
            return a
                .key_identifier
                .as_ref()
                .unwrap()
                .0
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
        }
    }
    panic!("no AKI")
}

fn key_in(v: &Value, state: &str) -> (String, String) {
    let a = v["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == state)
        .unwrap_or_else(|| panic!("no {state} authority: {v}"));
    (
        a["key_id"].as_str().unwrap().to_owned(),
        a["public_id"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn taint_reissues_under_the_new_ca_and_revoke_removes_the_old_one() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
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
    let first = eventually("the workload is served", Duration::from_secs(30), || {
        served(&a)
    });
    let show = s.cli_json(&["authority", "x509", "show"]);
    let (k1, ski1) = key_in(&show, "active");
    assert_eq!(aki_of_pem(first["cert_pem"].as_str().unwrap()), ski1);

    // The active authority cannot be tainted; nothing changes.
    let r = s.cli(&["authority", "x509", "taint", &k1]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("only an old authority"), "{}", r.stderr);
    let r = s.cli(&["authority", "x509", "revoke", &k1]);
    assert!(r.stderr.contains("not tainted"), "{}", r.stderr);
    assert_eq!(s.bundle().x509_authorities.len(), 1);

    let p = s.cli_json(&["authority", "x509", "prepare"]);
    assert_eq!(p["changed"]["state"], "prepared", "{p}");
    assert_eq!(
        s.bundle().x509_authorities.len(),
        2,
        "prepared CA published at once"
    );
    let act = s.cli_json(&["authority", "x509", "activate"]);
    let (k2, ski2) = key_in(&act, "active");
    assert_ne!(k1, k2);

    // Taint the old CA: the agent re-signs under the new one; the workload stays served.
    s.cli_json(&["authority", "x509", "taint", &k1]);
    let resigned = eventually(
        "the SVID is re-signed by the new CA",
        Duration::from_secs(30),
        || {
            let v = served(&a).expect("the workload stays served through the taint");
            (aki_of_pem(v["cert_pem"].as_str().unwrap()) == ski2).then_some(v)
        },
    );
    assert_ne!(resigned["serial"], first["serial"]);

    // Revoke it: it leaves the bundle; what is served verifies against what is published.
    s.cli_json(&["authority", "x509", "revoke", &k1]);
    let b = s.bundle();
    assert_eq!(b.x509_authorities.len(), 1);
    let chain = writ_core::pem::decode_all(resigned["cert_pem"].as_str().unwrap())
        .unwrap()
        .into_iter()
        .map(|(_, d)| d)
        .collect::<Vec<_>>();
    webpki_verify(&chain, &b.x509_authorities).unwrap();
    let after = s.cli_json(&["authority", "x509", "show"]);
    assert_eq!(after["authorities"].as_array().unwrap().len(), 1, "{after}");
    let recs = s.cli_json(&["audit", "list", "--kind", "authority.tainted"]);
    assert_eq!(recs.as_array().unwrap().len(), 1);

    // JWT keys: same life cycle; a tainted key's tokens stop being handed out.
    let (j1, kid1) = key_in(&s.cli_json(&["authority", "jwt", "show"]), "active");
    s.cli_json(&["authority", "jwt", "prepare"]);
    s.cli_json(&["authority", "jwt", "activate"]);
    s.cli_json(&["authority", "jwt", "taint", &j1]);
    s.cli_json(&["authority", "jwt", "revoke", &j1]);
    let b = s.bundle();
    assert_eq!(b.jwt_authorities.len(), 1);
    assert!(b.jwt_authorities.iter().all(|k| k.key_id != kid1));
    let tok = eventually(
        "a JWT-SVID under the new key",
        Duration::from_secs(30),
        || {
            let r = a.cli(&["jwt", "fetch", "--audience", "db", "--output", "json"]);
            (r.code == 0).then(|| r.json()["svids"][0]["token"].as_str().unwrap().to_owned())
        },
    );
    a.cli(&["jwt", "validate", "--audience", "db", &tok]).ok();
}
