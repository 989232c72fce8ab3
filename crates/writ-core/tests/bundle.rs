//! Bundle JSON round trips with certificates made in code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

use rcgen::{
    BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384,
};
use serde_json::Value;
use writ_core::{Bundle, BundleError, JwtAuthority, PublicJwk, TrustDomain};

fn ca_cert(alg: &'static rcgen::SignatureAlgorithm) -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (p.self_signed(&key).unwrap().der().to_vec(), key)
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn sample() -> Bundle {
    let (c1, _) = ca_cert(&PKCS_ECDSA_P256_SHA256);
    let (c2, _) = ca_cert(&PKCS_ECDSA_P384_SHA384);
    let jk = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut b = Bundle::new(td());
    b.x509_authorities = vec![c1, c2];
    b.jwt_authorities = vec![JwtAuthority {
        key_id: "kid-1".into(),
        public_key: PublicJwk::from_ec_point(jk.public_key_raw()).unwrap(),
    }];
    b.sequence = 7;
    b.refresh_hint = Some(300);
    b
}

#[test]
fn json_round_trip() {
    let b = sample();
    let json = b.to_json().unwrap();
    let back = Bundle::from_json(td(), json.as_bytes()).unwrap();
    assert_eq!(back, b);

    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["spiffe_sequence"], 7);
    assert_eq!(v["spiffe_refresh_hint"], 300);
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    for k in &keys[..2] {
        assert_eq!(k["use"], "x509-svid");
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["x5c"].as_array().unwrap().len(), 1);
        assert!(k.get("kid").is_none(), "x509-svid keys carry no kid");
    }
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[1]["crv"], "P-384");
    assert_eq!(keys[2]["use"], "jwt-svid");
    assert_eq!(keys[2]["kid"], "kid-1");
}

#[test]
fn jwks_only_has_jwt_keys() {
    let v: Value = serde_json::from_str(&sample().jwt_jwks_json().unwrap()).unwrap();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["use"], "jwt-svid");
}

#[test]
fn pem_round_trip() {
    let b = sample();
    let pem = b.x509_pem();
    let back = Bundle::from_x509_pem(td(), &pem).unwrap();
    assert_eq!(back.x509_authorities, b.x509_authorities);
    assert_eq!(
        b.x509_der_concat().len(),
        b.x509_authorities.iter().map(Vec::len).sum::<usize>()
    );
}

#[test]
fn unknown_use_and_kty_are_ignored() {
    let doc = r#"{"keys":[{"use":"wit-svid","kty":"OKP"},{"kty":"EC"},{"use":"jwt-svid","kty":"oct","kid":"k"}],"spiffe_sequence":1}"#;
    let b = Bundle::from_json(td(), doc.as_bytes()).unwrap();
    assert!(b.x509_authorities.is_empty() && b.jwt_authorities.is_empty());
}

#[test]
fn malformed_bundles_are_refused() {
    let (c, _) = ca_cert(&PKCS_ECDSA_P256_SHA256);
    let c64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &c);
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "Json"),
        ("[]".into(), "Json"),
        (r#"{"nokeys":[]}"#.into(), "Json"),
        (r#"{"keys":[],"spiffe_sequence":-1}"#.into(), "Json"),
        (
            r#"{"keys":[{"use":"x509-svid","kty":"EC"}]}"#.into(),
            "X5cCount",
        ),
        (
            format!(r#"{{"keys":[{{"use":"x509-svid","kty":"EC","x5c":["{c64}","{c64}"]}}]}}"#),
            "X5cCount",
        ),
        (
            r#"{"keys":[{"use":"x509-svid","kty":"EC","x5c":["AAAA"]}]}"#.into(),
            "BadCertificate",
        ),
        (
            r#"{"keys":[{"use":"x509-svid","kty":"EC","x5c":["!!"]}]}"#.into(),
            "BadKey",
        ),
        (
            r#"{"keys":[{"use":"jwt-svid","kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#.into(),
            "MissingKid",
        ),
        (
            r#"{"keys":[{"use":"jwt-svid","kid":"a","kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#
                .into(),
            "BadKey",
        ),
        (
            r#"{"keys":[{"use":"jwt-svid","kid":"a","kty":"EC","crv":"P-999","x":"AA","y":"AA"}]}"#
                .into(),
            "BadKey",
        ),
        (
            r#"{"keys":[{"use":"jwt-svid","kid":"a"}]}"#.into(),
            "BadKey",
        ),
        (r#"{"keys":[5]}"#.into(), "BadKey"),
    ];
    for (doc, kind) in cases {
        let err = Bundle::from_json(td(), doc.as_bytes()).expect_err(&doc);
        assert!(
            format!("{err:?}").starts_with(kind),
            "{doc}: expected {kind}, got {err:?}"
        );
        assert!(!err.to_string().is_empty());
    }
    // Parameters that contradict the certificate are refused.
    let (other, _) = ca_cert(&PKCS_ECDSA_P256_SHA256);
    let mut b = Bundle::new(td());
    b.x509_authorities = vec![c];
    let mut v: Value = serde_json::from_str(&b.to_json().unwrap()).unwrap();
    let mut o = Bundle::new(td());
    o.x509_authorities = vec![other];
    let ov: Value = serde_json::from_str(&o.to_json().unwrap()).unwrap();
    v["keys"][0]["x"] = ov["keys"][0]["x"].clone();
    let err = Bundle::from_json(td(), v.to_string().as_bytes()).unwrap_err();
    assert!(matches!(err, BundleError::BadKey { .. }), "{err:?}");
    // Duplicate kid.
    let jk = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let a = JwtAuthority {
        key_id: "k".into(),
        public_key: PublicJwk::from_ec_point(jk.public_key_raw()).unwrap(),
    };
    let mut d = Bundle::new(td());
    d.jwt_authorities = vec![a.clone(), a];
    let err = Bundle::from_json(td(), d.to_json().unwrap().as_bytes()).unwrap_err();
    assert!(matches!(err, BundleError::DuplicateKid(_)));
    // PEM garbage.
    assert!(Bundle::from_x509_pem(td(), "garbage").is_err());
    assert!(Bundle::from_x509_pem(
        td(),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    .is_err());
}
