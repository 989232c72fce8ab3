//! JWT-SVID signing and validation per spiffe-requirements.md section 3.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use writ_ca::jwt::{validate, JwtError, LEEWAY_SECS};
use writ_ca::{JwtSigner, KeyType, PrivateKey};
use writ_core::{Bundle, JwtAuthority, SpiffeId, TrustDomain};

const NOW: i64 = 1_800_000_000;

fn setup(kt: KeyType) -> (JwtSigner, Bundle, PrivateKey) {
    let key = PrivateKey::generate(kt).unwrap();
    let s = JwtSigner::new("kid-1".into(), &key, Some("https://issuer.example".into())).unwrap();
    let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
    b.jwt_authorities = vec![JwtAuthority {
        key_id: "kid-1".into(),
        public_key: s.public_jwk().clone(),
    }];
    (s, b, key)
}

fn id() -> SpiffeId {
    SpiffeId::parse("spiffe://example.org/web").unwrap()
}

fn parts(token: &str) -> (Value, Value) {
    let p: Vec<&str> = token.split('.').collect();
    let d = |s: &str| serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap();
    (d(p[0]), d(p[1]))
}

/// Re-signs arbitrary header and claims with `key` (for building bad tokens).
fn forge(key: &PrivateKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let kp = key.ring_fixed_key_pair().unwrap();
    let sig = kp
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

#[test]
fn signs_and_validates() {
    for (kt, alg) in [(KeyType::EcP256, "ES256"), (KeyType::EcP384, "ES384")] {
        let (s, b, _) = setup(kt);
        let (token, exp) = s
            .sign(&id(), &["db".into(), "cache".into()], 300, NOW)
            .unwrap();
        assert_eq!(exp, NOW + 300);
        let (h, c) = parts(&token);
        assert_eq!(h, json!({"alg": alg, "kid": "kid-1", "typ": "JWT"}));
        assert_eq!(c["sub"], "spiffe://example.org/web");
        assert_eq!(c["aud"], json!(["db", "cache"]));
        assert_eq!(c["exp"], NOW + 300);
        assert_eq!(c["iat"], NOW);
        assert_eq!(c["iss"], "https://issuer.example");
        let v = validate(&token, "cache", NOW + 1, |_| Some(b.clone())).unwrap();
        assert_eq!(v.spiffe_id, id());
        assert_eq!(v.claims["sub"], "spiffe://example.org/web");
        // Single audience is a string.
        let (t1, _) = s.sign(&id(), &["db".into()], 300, NOW).unwrap();
        assert_eq!(parts(&t1).1["aud"], "db");
        validate(&t1, "db", NOW, |_| Some(b.clone())).unwrap();
    }
}

#[test]
fn refuses_bad_tokens() {
    let (s, b, key) = setup(KeyType::EcP256);
    let bf = |_: &TrustDomain| Some(b.clone());
    let (token, _) = s.sign(&id(), &["db".into()], 300, NOW).unwrap();
    let (h, c) = parts(&token);

    assert_eq!(
        validate(&token, "other", NOW, bf),
        Err(JwtError::WrongAudience("other".into()))
    );
    assert_eq!(
        validate(&token, "db", NOW + 300 + LEEWAY_SECS, bf),
        Err(JwtError::Expired(NOW + 300))
    );
    assert!(matches!(
        validate(&token, "db", NOW, |_| None),
        Err(JwtError::NoBundle(_))
    ));

    // Tampered claims: signature fails.
    let p: Vec<&str> = token.split('.').collect();
    let mut c2 = c.clone();
    c2["sub"] = "spiffe://example.org/admin".into();
    let tampered = format!(
        "{}.{}.{}",
        p[0],
        URL_SAFE_NO_PAD.encode(c2.to_string()),
        p[2]
    );
    assert_eq!(
        validate(&tampered, "db", NOW, bf),
        Err(JwtError::BadSignature)
    );

    // alg none and HS256, even unsigned.
    for alg in ["none", "HS256", "HS512", "EdDSA"] {
        let mut h2 = h.clone();
        h2["alg"] = alg.into();
        let t = format!("{}.{}.", URL_SAFE_NO_PAD.encode(h2.to_string()), p[1]);
        assert_eq!(
            validate(&t, "db", NOW, bf),
            Err(JwtError::BadAlgorithm(alg.into()))
        );
    }
    // Missing exp (validly signed).
    let mut c3 = c.clone();
    c3.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        validate(&forge(&key, &h, &c3), "db", NOW, bf),
        Err(JwtError::MissingExp)
    );
    // Missing or empty aud.
    let mut c4 = c.clone();
    c4.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        validate(&forge(&key, &h, &c4), "db", NOW, bf),
        Err(JwtError::MissingAudience)
    );
    c4["aud"] = json!([]);
    assert_eq!(
        validate(&forge(&key, &h, &c4), "db", NOW, bf),
        Err(JwtError::MissingAudience)
    );
    // Unknown kid, missing kid, extra header field.
    let mut h5 = h.clone();
    h5["kid"] = "nope".into();
    assert_eq!(
        validate(&forge(&key, &h5, &c), "db", NOW, bf),
        Err(JwtError::UnknownKid("nope".into()))
    );
    h5.as_object_mut().unwrap().remove("kid");
    assert_eq!(
        validate(&forge(&key, &h5, &c), "db", NOW, bf),
        Err(JwtError::MissingKid)
    );
    let mut h6 = h.clone();
    h6["jku"] = "https://evil".into();
    assert_eq!(
        validate(&forge(&key, &h6, &c), "db", NOW, bf),
        Err(JwtError::BadHeader("jku".into()))
    );
    // Bad subject.
    let mut c7 = c.clone();
    c7["sub"] = "spiffe://example.org/a/../b".into();
    assert_eq!(
        validate(&forge(&key, &h, &c7), "db", NOW, bf),
        Err(JwtError::BadSubject)
    );
    // nbf in the future.
    let mut c8 = c.clone();
    c8["nbf"] = (NOW + 100).into();
    assert_eq!(
        validate(&forge(&key, &h, &c8), "db", NOW, bf),
        Err(JwtError::NotYetValid(NOW + 100))
    );
    // Algorithm / key mismatch.
    let mut h9 = h.clone();
    h9["alg"] = "ES384".into();
    assert!(matches!(
        validate(&forge(&key, &h9, &c), "db", NOW, bf),
        Err(JwtError::KeyMismatch(..))
    ));
    // Structural garbage.
    for t in ["", "a", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"] {
        assert!(validate(t, "db", NOW, bf).is_err(), "{t}");
    }
    assert_eq!(
        validate(&"a".repeat(20_000), "db", NOW, bf),
        Err(JwtError::TooLarge)
    );
    // Signing refuses empty audiences and zero TTL.
    assert!(s.sign(&id(), &[], 300, NOW).is_err());
    assert!(s.sign(&id(), &["a".into()], 0, NOW).is_err());
}

/// Issue 10 item 22: `aud` members of other types, non-numeric or future times, clock skew.
#[test]
fn claims_are_read_strictly_with_a_small_leeway() {
    let (s, b, key) = setup(KeyType::EcP256);
    let bf = |_: &TrustDomain| Some(b.clone());
    let (token, _) = s.sign(&id(), &["db".into()], 300, NOW).unwrap();
    let (h, c) = parts(&token);
    let with = |claim: &str, v: Value| {
        let mut c2 = c.clone();
        c2[claim] = v;
        forge(&key, &h, &c2)
    };

    // An `aud` member that is not a string refuses the whole token, even when a string member
    // matches (the old code skipped it and accepted "db").
    for aud in [
        json!(["db", 5]),
        json!(["db", null]),
        json!(["db", {"x": 1}]),
        json!(["db", ["db"]]),
        json!(["db", ""]),
    ] {
        assert!(
            matches!(
                validate(&with("aud", aud.clone()), "db", NOW, bf),
                Err(JwtError::BadAudience(_))
            ),
            "{aud}"
        );
    }
    for aud in [json!({"db": true}), json!(5), json!(true), json!("")] {
        assert!(
            matches!(
                validate(&with("aud", aud.clone()), "db", NOW, bf),
                Err(JwtError::BadAudience(_))
            ),
            "{aud}"
        );
    }
    assert_eq!(
        validate(&with("aud", json!(["x", 5])), "db", NOW, bf),
        Err(JwtError::BadAudience("5".into()))
    );
    validate(&with("aud", json!(["x", "db"])), "db", NOW, bf).unwrap();

    // Time claims that are not numbers.
    for claim in ["exp", "nbf", "iat"] {
        for v in [json!("1800000100"), json!(null), json!([1]), json!({})] {
            assert_eq!(
                validate(&with(claim, v.clone()), "db", NOW, bf),
                Err(JwtError::BadTimeClaim {
                    claim,
                    value: v.to_string()
                }),
                "{claim} = {v}"
            );
        }
    }
    // Fractional NumericDates are allowed.
    validate(&with("exp", json!(NOW as f64 + 0.5)), "db", NOW, bf).unwrap();

    // `iat` in the future: within the leeway accepted, beyond it refused.
    validate(&with("iat", json!(NOW + LEEWAY_SECS)), "db", NOW, bf).unwrap();
    assert_eq!(
        validate(&with("iat", json!(NOW + LEEWAY_SECS + 1)), "db", NOW, bf),
        Err(JwtError::IssuedInFuture(NOW + LEEWAY_SECS + 1))
    );
    assert_eq!(
        validate(&with("iat", json!(NOW + 86_400 * 365)), "db", NOW, bf),
        Err(JwtError::IssuedInFuture(NOW + 86_400 * 365))
    );

    // Leeway on `exp` and `nbf`: a little skew is tolerated, no more.
    let exp = NOW + 300;
    validate(&token, "db", exp, bf).unwrap();
    validate(&token, "db", exp + LEEWAY_SECS - 1, bf).unwrap();
    assert_eq!(
        validate(&token, "db", exp + LEEWAY_SECS, bf),
        Err(JwtError::Expired(exp))
    );
    validate(&with("nbf", json!(NOW + LEEWAY_SECS)), "db", NOW, bf).unwrap();
    assert_eq!(
        validate(&with("nbf", json!(NOW + LEEWAY_SECS + 1)), "db", NOW, bf),
        Err(JwtError::NotYetValid(NOW + LEEWAY_SECS + 1))
    );
    // Huge values saturate instead of wrapping.
    assert_eq!(
        validate(&with("nbf", json!(1e300)), "db", NOW, bf),
        Err(JwtError::NotYetValid(i64::MAX))
    );
    assert_eq!(
        validate(&with("exp", json!(-1e300)), "db", NOW, bf),
        Err(JwtError::Expired(i64::MIN))
    );
}
