//! OIDC discovery (`[oidc]`): a relying party that knows only the issuer URL (PyJWT's
//! PyJWKClient, as clouds are configured) validates a JWT-SVID; a JWT key prepared for rotation
//! is published before it signs; the endpoint answers only GETs of its two paths, with cache
//! headers.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;
use writ_testkit::*;

use super::support::*;

fn get(addr: &str, request: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_owned(), body.to_owned())
}

fn kids(addr: &str) -> Vec<String> {
    let (_, body) = get(addr, "GET /keys HTTP/1.1\r\nhost: x\r\n\r\n");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn header_kid(token: &str) -> String {
    use base64::Engine;
    let h = token.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

#[test]
fn a_relying_party_knowing_only_the_issuer_validates_jwt_svids() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let issuer = format!("http://{addr}");
    let s = TestServer::start(ServerOpts {
        extra: format!("[oidc]\nlisten = \"{addr}\"\nissuer = \"{issuer}/\"\n"),
        ..ServerOpts::default()
    });
    let a = TestAgent::start(&s, "a");
    web_entry(&s);
    let token = eventually("a JWT-SVID", Duration::from_secs(30), || {
        let r = a.cli(&["jwt", "fetch", "--audience", "cloud"]);
        (r.code == 0).then(|| r.stdout.trim().to_owned())
    });

    // The endpoint: discovery names the issuer (no trailing slash) and the keys; both carry
    // cache headers; other paths and methods are refused.
    let (head, body) = get(
        &addr,
        "GET /.well-known/openid-configuration HTTP/1.1\r\nhost: x\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("cache-control: public, max-age="), "{head}");
    assert!(head.contains("etag: "), "{head}");
    let conf: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(conf["issuer"], issuer.as_str());
    assert_eq!(conf["jwks_uri"], format!("{issuer}/keys"));
    let (_, keys) = get(&addr, "GET /keys HTTP/1.1\r\nhost: x\r\n\r\n");
    let keys: Value = serde_json::from_str(&keys).unwrap();
    for k in keys["keys"].as_array().unwrap() {
        assert_eq!(k["use"], "sig", "{k}");
        assert!(k["alg"].is_string() && k["kid"].is_string(), "{k}");
    }
    assert!(get(&addr, "GET /other HTTP/1.1\r\n\r\n")
        .0
        .starts_with("HTTP/1.1 404"));
    assert!(get(&addr, "POST /keys HTTP/1.1\r\n\r\n")
        .0
        .starts_with("HTTP/1.1 405"));
    assert!(kids(&addr).contains(&header_kid(&token)));

    // An independent relying party, given only the issuer URL.
    let py = std::env::var("WRIT_PY_JOSE").unwrap_or_else(|_| "python3".into());
    let has_pyjwt = std::process::Command::new(&py)
        .args(["-c", "import jwt, cryptography"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_pyjwt {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/interop/oidc_check.py"
        );
        let o = std::process::Command::new(&py)
            .args([script, &issuer, &token, "cloud"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "spiffe://example.org/web"
        );
    } else {
        eprintln!("PyJWT is not installed (.ci/run installs it): skipping the OIDC client check");
    }

    // Rotation: a prepared key is published before it signs; after activation new tokens
    // use it, and it was already there for verifiers that cached the keys.
    s.cli_json(&["authority", "jwt", "prepare"]);
    let show = s.cli_json(&["authority", "jwt", "show"]);
    let prepared = show["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == "prepared")
        .unwrap()["public_id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(
        "the prepared key is published",
        Duration::from_secs(30),
        || kids(&addr).contains(&prepared).then_some(()),
    );
    s.cli_json(&["authority", "jwt", "activate"]);
    let new = eventually(
        "a token signed by the new key",
        Duration::from_secs(30),
        || {
            let r = a.cli(&["jwt", "fetch", "--audience", "cloud-2"]);
            (r.code == 0)
                .then(|| r.stdout.trim().to_owned())
                .filter(|t| header_kid(t) == prepared)
        },
    );
    assert!(kids(&addr).contains(&header_kid(&new)));
}
