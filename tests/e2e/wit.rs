//! WIT-SVIDs and Workload Proof Tokens through the real processes, checked by an independent
//! JOSE implementation (PyJWT): FetchWITSVID and FetchWITBundles on the Workload API, proofs
//! made by writ and checked by PyJWT, proofs made by PyJWT and checked by the agent
//! (`ValidateWIT`), replays refused, and a task's WIT-SVID refused once the task ended.

use std::time::Duration;

use serde_json::Value;
use writ_testkit::*;

use super::support::*;

/// PyJWT's python (`.ci/run` installs it and sets `WRIT_PY_JOSE`), if available.
fn pyjwt() -> Option<String> {
    let py = std::env::var("WRIT_PY_JOSE").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&py)
        .args(["-c", "import jwt, cryptography"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("PyJWT is not installed (.ci/run installs it): skipping the JOSE interop checks");
    }
    ok.then_some(py)
}

fn jose(py: &str, args: &[&str]) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/interop/jose_check.py"
    );
    let o = std::process::Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "jose_check.py {}: {}",
        args[0],
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

/// `writ wit validate` through agent `a`.
fn validate(a: &TestAgent, audience: &str, wit: &str, wpt: &str) -> Run {
    a.cli(&[
        "wit",
        "validate",
        "--audience",
        audience,
        "--wit",
        wit,
        "--wpt",
        wpt,
    ])
}

fn claims(token: &str, part: usize) -> Value {
    use base64::Engine;
    let p = token.split('.').nth(part).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn wit_svids_and_proofs_interoperate_with_an_independent_jose_library() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    web_entry(&s);
    let w = eventually("a WIT-SVID is served", Duration::from_secs(30), || {
        let r = a.cli(&["wit", "fetch", "--output", "json"]);
        (r.code == 0).then(|| r.json())
    });
    assert_eq!(w["spiffe_id"], "spiffe://example.org/web");
    let wit = w["wit_svid"].as_str().unwrap().to_owned();
    let key = w["wit_svid_key"].as_str().unwrap().to_owned();
    let (h, c) = (claims(&wit, 0), claims(&wit, 1));
    assert_eq!(h["typ"], "wit+jwt", "{h}");
    assert!(h["kid"].is_string(), "{h}");
    assert!(c.get("aud").is_none(), "{c}");
    assert_eq!(c["cnf"]["jwk"]["crv"], "P-256", "{c}");
    let k: Value = serde_json::from_str(&key).unwrap();
    assert_eq!(
        k["x"], c["cnf"]["jwk"]["x"],
        "the key returned is the one bound"
    );
    assert!(k["d"].is_string());
    let bundles = a.cli(&["wit", "bundle"]).ok().json();
    let jwks = &bundles["spiffe://example.org"];
    assert_eq!(jwks["keys"][0]["use"], "wit-svid", "{bundles}");

    let aud = "https://tool.example/api";
    let p = a
        .cli(&["wit", "proof", "--audience", aud, "--output", "json"])
        .ok()
        .json();
    let wpt = p["wpt"].as_str().unwrap().to_owned();
    assert_eq!(p["wit_svid"], wit.as_str());
    assert_eq!(claims(&wpt, 0)["typ"], "wpt+jwt");

    if let Some(py) = pyjwt() {
        // writ's proof, checked by PyJWT.
        let sub = jose(&py, &["verify", &wit, &wpt, &jwks.to_string(), aud]);
        assert_eq!(sub, "spiffe://example.org/web");
        // PyJWT's proof (with the key FetchWITSVID returned), checked by the agent.
        let py_wpt = jose(&py, &["prove", &wit, &key, aud]);
        let v = validate(&a, aud, &wit, &py_wpt);
        assert_eq!(v.code, 0, "{v:?}");
    }

    let v = a.cli(&[
        "wit",
        "validate",
        "--audience",
        aud,
        "--wit",
        &wit,
        "--wpt",
        &wpt,
        "--output",
        "json",
    ]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(v.json()["spiffe_id"], "spiffe://example.org/web");
    // The same proof again is a replay; a proof for another audience is refused.
    let again = validate(&a, aud, &wit, &wpt);
    assert!(
        again.code != 0 && again.stderr.contains("replay"),
        "{again:?}"
    );
    let other = validate(&a, "https://other", &wit, &wpt);
    assert!(other.code != 0 && other.stderr.contains("aud"), "{other:?}");
    // A JWT-SVID is not a WIT-SVID.
    let jwt = a
        .cli(&["jwt", "fetch", "--audience", aud])
        .ok()
        .stdout
        .trim()
        .to_owned();
    let bad = validate(&a, aud, &jwt, &wpt);
    assert!(bad.code != 0 && bad.stderr.contains("typ"), "{bad:?}");

    // Issued and delivered are in the journal.
    let trace = eventually(
        "the WIT delivery is journalled",
        Duration::from_secs(30),
        || {
            let t = s.cli_json(&["audit", "list", "--jti", c["jti"].as_str().unwrap()]);
            let k: Vec<String> = t
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["kind"].as_str().unwrap().to_owned())
                .collect();
            (k.contains(&"wit.issued".to_owned()) && k.contains(&"svid.delivered".to_owned()))
                .then_some(k)
        },
    );
    assert!(trace.contains(&"wit.issued".to_owned()), "{trace:?}");
}

#[test]
fn a_task_wit_svid_is_refused_by_the_proof_checker_once_the_task_ended() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let entry = web_entry(&s);
    s.cli(&["entry", "update", &entry, "--delegate", "max_ttl=10m"])
        .ok();
    let t = eventually("a task starts", Duration::from_secs(30), || {
        let r = a.cli(&[
            "task",
            "start",
            "--purpose",
            "call the tool",
            "--want",
            "wit",
            "--output",
            "json",
        ]);
        (r.code == 0).then(|| r.json())
    });
    let wit = t["wit_svid"].as_str().unwrap().to_owned();
    let key = t["wit_svid_key"].as_str().unwrap().to_owned();
    assert_eq!(claims(&wit, 1)["sub"], t["spiffe_id"]);
    // The key never goes on a command line: the proof maker reads files.
    let dir = tempfile::tempdir().unwrap();
    let (wit_file, key_file) = (dir.path().join("wit"), dir.path().join("wit.jwk"));
    std::fs::write(&wit_file, &wit).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let (wit_file, key_file) = (wit_file.to_str().unwrap(), key_file.to_str().unwrap());
    let aud = "https://tool.example/api";
    let proof = |a: &TestAgent| {
        a.cli(&[
            "wit",
            "proof",
            "--audience",
            aud,
            "--wit-file",
            wit_file,
            "--key-file",
            key_file,
            "--output",
            "json",
        ])
        .ok()
        .json()["wpt"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let wpt = proof(&a);
    validate(&a, aud, &wit, &wpt).ok();
    a.cli(&["task", "end", t["task_id"].as_str().unwrap()]).ok();
    eventually(
        "the ended task's WIT-SVID is refused",
        Duration::from_secs(30),
        || {
            let v = validate(&a, aud, &wit, &proof(&a));
            (v.code != 0 && v.stderr.contains("revoked")).then_some(())
        },
    );
}
