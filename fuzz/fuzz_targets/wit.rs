//! WIT-SVID + Workload Proof Token checking (what `ValidateWIT` runs on tokens from any local
//! process), with real keys: the WIT is signed by the fixture JWT key and bound to the fixture
//! node key, which signs the proof.
//!
//! First byte even: the rest is `wit \n wpt`, checked as given. First byte odd: the rest is
//! `header JSON \0 claims JSON` of a proof (`$WTH` in the claims becomes the WIT's hash), which
//! the target signs with the bound key, so the proof's claim checks see arbitrary input behind
//! a good signature. Whatever is accepted must
//! satisfy the rules as written here: `typ` `wpt+jwt`, `aud` the audience, `exp` within
//! `MAX_WPT_TTL`, a `jti` of 22+ characters, `wth` the WIT's hash; and a `jti` is accepted once.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use writ_ca::wit::{check_wpt, wit_hash, ReplayCache, MAX_WPT_TTL};
use writ_core::{PublicJwk, SpiffeId};
use writ_fuzz::{jwt_signer, node_key, NOW};

const AUD: &str = "https://tool.example";

fn wit() -> String {
    let cnf = PublicJwk::from_ec_point(&node_key().public_point().unwrap()).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/agent/task/1").unwrap();
    jwt_signer().sign_wit(&id, &cnf, 600, NOW).unwrap().0
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = node_key()
        .ring_fixed_key_pair()
        .unwrap()
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let w = wit();
    let (wit, wpt) = if mode % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        let (a, b) = text.split_once('\n').unwrap_or((&text, ""));
        (a.to_owned(), b.to_owned())
    } else {
        let Some(cut) = rest.iter().position(|b| *b == 0) else {
            return;
        };
        // `$WTH` in the claims stands for the WIT's hash, so seeds reach the later checks.
        let claims = String::from_utf8_lossy(&rest[cut + 1..]).replace("$WTH", &wit_hash(&w));
        (w.clone(), sign(&rest[..cut], claims.as_bytes()))
    };
    let keys = |_: &writ_core::TrustDomain, kid: &str| {
        (kid == writ_fuzz::JWT_KID).then(|| jwt_signer().public_jwk().clone())
    };
    let mut cache = ReplayCache::new(16);
    if check_wpt(&wit, &wpt, AUD, NOW, keys, &mut cache).is_ok() {
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(wpt.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"].as_str(), Some(AUD));
        let exp = claims["exp"].as_f64().unwrap() as i64;
        assert!(exp <= NOW + MAX_WPT_TTL && exp > NOW - 60);
        assert!(claims["jti"].as_str().unwrap().len() >= 22);
        assert_eq!(claims["wth"].as_str(), Some(wit_hash(&wit).as_str()));
        assert!(
            check_wpt(&wit, &wpt, AUD, NOW, keys, &mut cache).is_err(),
            "replay accepted"
        );
    }
});
