//! WIT-SVIDs and Workload Proof Tokens: what the checker accepts, and each way it refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use writ_ca::jwt::JwtSigner;
use writ_ca::wit::{
    check_wpt, key_from_private_jwk, make_wpt, private_jwk, validate_wit, ReplayCache, WitError,
};
use writ_ca::{KeyType, PrivateKey};
use writ_core::{PublicJwk, SpiffeId, TrustDomain};

const NOW: i64 = 1_800_000_000;

struct Fixture {
    signer: JwtSigner,
    key: PrivateKey,
    wit: String,
}

fn fixture() -> Fixture {
    let ca = PrivateKey::generate(KeyType::EcP256).unwrap();
    let signer = JwtSigner::new("k1".into(), &ca, None).unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let cnf = PublicJwk::from_ec_point(&key.public_point().unwrap()).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/agent/task/1").unwrap();
    let (wit, exp, jti) = signer.sign_wit(&id, &cnf, 600, NOW).unwrap();
    assert_eq!((exp, jti.len()), (NOW + 600, 32));
    Fixture { signer, key, wit }
}

fn keys(f: &Fixture) -> impl Fn(&TrustDomain, &str) -> Option<PublicJwk> + '_ {
    move |td, kid| {
        (td.as_str() == "example.org" && kid == f.signer.kid())
            .then(|| f.signer.public_jwk().clone())
    }
}

#[test]
fn a_wit_and_its_proof_verify_once() {
    let f = fixture();
    let v = validate_wit(&f.wit, NOW, keys(&f)).unwrap();
    assert_eq!(v.spiffe_id.as_str(), "spiffe://example.org/agent/task/1");
    assert!(!v.claims.contains_key("aud"));
    let wpt = make_wpt(&f.wit, &f.key, "https://tool.example/api", 60, NOW).unwrap();
    let mut cache = ReplayCache::new(10);
    let ok = check_wpt(
        &f.wit,
        &wpt,
        "https://tool.example/api",
        NOW,
        keys(&f),
        &mut cache,
    )
    .unwrap();
    assert_eq!(ok.wit.spiffe_id, v.spiffe_id);
    // The same proof again is a replay.
    let e = check_wpt(
        &f.wit,
        &wpt,
        "https://tool.example/api",
        NOW,
        keys(&f),
        &mut cache,
    )
    .unwrap_err();
    assert!(matches!(e, WitError::Replay(_)), "{e}");
}

#[test]
fn proofs_are_refused_for_each_broken_rule() {
    let f = fixture();
    let aud = "https://tool.example/api";
    let mut cache = ReplayCache::new(100);
    let mut check = |wit: &str, wpt: &str, now: i64| {
        check_wpt(wit, wpt, aud, now, keys(&f), &mut cache).unwrap_err()
    };
    // Another audience.
    let wpt = make_wpt(&f.wit, &f.key, "https://other.example", 60, NOW).unwrap();
    assert!(matches!(
        check(&f.wit, &wpt, NOW),
        WitError::WrongAudience(_)
    ));
    // Expired.
    let wpt = make_wpt(&f.wit, &f.key, aud, 10, NOW).unwrap();
    assert!(matches!(
        check(&f.wit, &wpt, NOW + 100),
        WitError::Jwt { .. }
    ));
    // Signed by a key that is not the WIT's.
    let other = PrivateKey::generate(KeyType::EcP256).unwrap();
    let wpt = make_wpt(&f.wit, &other, aud, 60, NOW).unwrap();
    let e = check(&f.wit, &wpt, NOW);
    assert!(e.to_string().contains("signature"), "{e}");
    // Made for another WIT of the same key (wth).
    let cnf = PublicJwk::from_ec_point(&f.key.public_point().unwrap()).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/agent/task/1").unwrap();
    let (wit2, _, _) = f.signer.sign_wit(&id, &cnf, 600, NOW).unwrap();
    let wpt = make_wpt(&wit2, &f.key, aud, 60, NOW).unwrap();
    assert!(matches!(check(&f.wit, &wpt, NOW), WitError::WrongWth));
    // A WIT from a key outside the bundle.
    let rogue = JwtSigner::new(
        "k1".into(),
        &PrivateKey::generate(KeyType::EcP256).unwrap(),
        None,
    )
    .unwrap();
    let (forged, _, _) = rogue.sign_wit(&id, &cnf, 600, NOW).unwrap();
    let wpt = make_wpt(&forged, &f.key, aud, 60, NOW).unwrap();
    assert!(check(&forged, &wpt, NOW).to_string().contains("signature"));
    // A JWT-SVID is not a WIT-SVID (typ), and a WPT is not one either.
    let (jwt, _) = f.signer.sign(&id, &[aud.to_owned()], 60, NOW).unwrap();
    assert!(matches!(
        validate_wit(&jwt, NOW, keys(&f)),
        Err(WitError::Typ { .. })
    ));
    let wpt = make_wpt(&f.wit, &f.key, aud, 60, NOW).unwrap();
    assert!(matches!(
        validate_wit(&wpt, NOW, keys(&f)),
        Err(WitError::Typ { .. })
    ));
    // WPTs are short: the maker refuses more than 5 minutes.
    assert!(make_wpt(&f.wit, &f.key, aud, 3600, NOW).is_err());
}

#[test]
fn the_replay_cache_is_bounded_and_refuses_when_full() {
    let mut c = ReplayCache::new(2);
    c.check_and_insert("a", NOW + 60, NOW).unwrap();
    c.check_and_insert("b", NOW + 60, NOW).unwrap();
    assert!(matches!(
        c.check_and_insert("c", NOW + 60, NOW),
        Err(WitError::CacheFull)
    ));
    // Expired jtis make room.
    c.check_and_insert("c", NOW + 200, NOW + 120).unwrap();
    assert_eq!(c.len(), 1);
}

/// One holder minting proofs as fast as it can fills only its own share of the checker's
/// replay cache: another identity's proofs are still accepted. (Before the per-holder share,
/// one workload filling the shared cache made `ValidateWIT` refuse every caller until the
/// proofs expired.)
#[test]
fn one_holder_cannot_fill_the_replay_cache_for_everyone() {
    let mut c = ReplayCache::new(100);
    for i in 0..10 {
        c.check_and_insert_for(
            "spiffe://example.org/greedy",
            &format!("g{i}"),
            NOW + 60,
            NOW,
        )
        .unwrap();
    }
    assert!(matches!(
        c.check_and_insert_for("spiffe://example.org/greedy", "g10", NOW + 60, NOW),
        Err(WitError::CacheFull)
    ));
    for i in 0..50 {
        c.check_and_insert_for(
            &format!("spiffe://example.org/w{i}"),
            &format!("o{i}"),
            NOW + 60,
            NOW,
        )
        .unwrap();
    }
    // Its tasks count against it: ten tasks cannot take ten shares.
    assert_eq!(
        writ_ca::wit::holder_of("spiffe://example.org/greedy/task/1/task/2"),
        "spiffe://example.org/greedy"
    );
    // Its entries expire and it may prove again.
    c.check_and_insert_for("spiffe://example.org/greedy", "g11", NOW + 200, NOW + 120)
        .unwrap();
}

#[test]
fn the_private_jwk_round_trips() {
    let f = fixture();
    let jwk = private_jwk(&f.key).unwrap();
    let v: serde_json::Value = serde_json::from_str(&jwk).unwrap();
    assert_eq!(
        (v["kty"].as_str(), v["crv"].as_str(), v["alg"].as_str()),
        (Some("EC"), Some("P-256"), Some("ES256"))
    );
    let back = key_from_private_jwk(&jwk).unwrap();
    assert_eq!(back.public_point().unwrap(), f.key.public_point().unwrap());
    assert!(key_from_private_jwk("{\"crv\":\"P-256\"}").is_err());
}
