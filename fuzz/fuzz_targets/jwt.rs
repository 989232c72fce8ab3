//! JWT-SVID validation against a bundle holding a real key (`writ_fuzz::jwt_key`).
//!
//! First byte even: the rest is a token, validated as given (seeds are valid tokens signed with
//! the fixture key, so mutations start past the signature check). First byte odd: the rest is
//! `header JSON \0 claims JSON`, which the target signs with the fixture key before validating,
//! so the claim checks (`exp`, `nbf`, `iat`, `aud`, `sub`, header rules) see arbitrary input
//! behind a good signature. Whatever validates must satisfy the rules as written here,
//! independently of the validator: ES256 with the fixture `kid`, `sub` in the trust domain,
//! numeric `exp`/`nbf`/`iat` within the leeway, and `aud` made only of non-empty strings, one of
//! them the audience.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use writ_ca::jwt::{peek_subject, validate, LEEWAY_SECS};
use writ_core::TrustDomain;
use writ_fuzz::{jwt_bundle, jwt_key, NOW, TD};

const AUD: &str = "aud";

fn object(part: &str) -> Map<String, Value> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .expect("validated part is base64url");
    match serde_json::from_slice(&bytes).expect("validated part is JSON") {
        Value::Object(m) => m,
        other => panic!("validated part is not an object: {other}"),
    }
}

fn check_accepted(token: &str) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header = object(parts[0]);
    let claims = object(parts[1]);
    assert_eq!(header.get("alg").and_then(Value::as_str), Some("ES256"));
    assert_eq!(
        header.get("kid").and_then(Value::as_str),
        Some(writ_fuzz::JWT_KID)
    );
    assert!(header
        .keys()
        .all(|k| matches!(k.as_str(), "alg" | "kid" | "typ")));
    let sub = claims.get("sub").and_then(Value::as_str).expect("sub");
    assert!(sub.starts_with(&format!("spiffe://{TD}")));
    let time = |k: &str| {
        claims
            .get(k)
            .map(|v| v.as_f64().expect("numeric time claim").floor())
    };
    let exp = time("exp").expect("exp");
    assert!(
        exp > (NOW - LEEWAY_SECS) as f64,
        "expired token accepted: {exp}"
    );
    if let Some(nbf) = time("nbf") {
        assert!(nbf <= (NOW + LEEWAY_SECS) as f64, "nbf {nbf} accepted");
    }
    if let Some(iat) = time("iat") {
        assert!(iat <= (NOW + LEEWAY_SECS) as f64, "iat {iat} accepted");
    }
    let auds: Vec<&Value> = match claims.get("aud").expect("aud") {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    assert!(!auds.is_empty());
    assert!(auds
        .iter()
        .all(|a| a.as_str().is_some_and(|s| !s.is_empty())));
    assert!(auds.iter().any(|a| a.as_str() == Some(AUD)));
}

fn run(token: &str) {
    let bundle_for = |td: &TrustDomain| (td.as_str() == TD).then(|| jwt_bundle().clone());
    if let Ok(v) = validate(token, AUD, NOW, bundle_for) {
        check_accepted(token);
        assert_eq!(peek_subject(token).ok(), Some(v.spiffe_id.clone()));
        assert_eq!(v.spiffe_id.trust_domain_str(), TD);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            run(token);
        }
        return;
    }
    let (header, claims) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = jwt_key().ring_fixed_key_pair().expect("fixture key");
    let sig = key
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .expect("signing");
    run(&format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())));
});
