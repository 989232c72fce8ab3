//! Bundle parsing (SPIFFE bundle JSON, or PEM when the input starts with `-----`) never panics,
//! and parse and serialize agree: whatever parses writes back out (`to_json` must not fail: a
//! stored bundle that cannot be written takes down every agent's bundle stream), and the output
//! parses to the same bundle and writes the same text again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ_core::Bundle;
use writ_fuzz::td;

fn round_trip(b: &Bundle) {
    let json = b.to_json().expect("a parsed bundle must serialize");
    let again = Bundle::from_json(td(), json.as_bytes()).expect("serialized bundle must parse");
    assert_eq!(&again, b);
    assert_eq!(again.to_json().expect("serializes again"), json);
    let jwks = b.jwt_jwks_json().expect("JWT part serializes");
    let jwt_only = Bundle::from_json(td(), jwks.as_bytes()).expect("JWT part parses");
    assert_eq!(jwt_only.jwt_authorities, b.jwt_authorities);
    assert!(jwt_only.x509_authorities.is_empty());
}

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"-----") {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(b) = Bundle::from_x509_pem(td(), text) {
            assert!(!b.x509_authorities.is_empty());
            round_trip(&b);
            assert_eq!(Bundle::from_x509_pem(td(), &b.x509_pem()).ok(), Some(b));
        }
    } else if let Ok(b) = Bundle::from_json(td(), data) {
        round_trip(&b);
    }
});
