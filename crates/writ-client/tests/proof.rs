//! The proof helpers end to end in one process: a credential makes proofs, a checker loaded
//! with a FetchWITBundles-style JWK Set accepts each once and refuses the rest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use writ_ca::jwt::JwtSigner;
use writ_ca::{KeyType, PrivateKey};
use writ_client::proof::{ProofChecker, WitCredential};
use writ_core::{Bundle, JwtAuthority, PublicJwk, SpiffeId, TrustDomain};

#[test]
fn a_credential_proves_and_the_checker_accepts_once() {
    let ca = PrivateKey::generate(KeyType::EcP256).unwrap();
    let signer = JwtSigner::new("k1".into(), &ca, None).unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let cnf = PublicJwk::from_ec_point(&key.public_point().unwrap()).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/orchestrator/task/1").unwrap();
    let now = writ_core::now_unix();
    let (wit, _, _) = signer.sign_wit(&id, &cnf, 600, now).unwrap();
    let cred = WitCredential::new(wit.clone(), &writ_ca::wit::private_jwk(&key).unwrap()).unwrap();

    let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
    b.jwt_authorities.push(JwtAuthority {
        key_id: "k1".into(),
        public_key: signer.public_jwk().clone(),
    });
    let mut checker = ProofChecker::new("https://tool.example", 1000);
    assert_eq!(
        checker
            .set_bundle("spiffe://example.org", &b.wit_jwks_json().unwrap())
            .unwrap(),
        1
    );
    // A JWT-SVID key set (use jwt-svid) gives the checker nothing.
    let mut strict = ProofChecker::new("https://tool.example", 10);
    assert_eq!(
        strict
            .set_bundle("example.org", &b.jwt_jwks_json().unwrap())
            .unwrap(),
        0
    );

    let p = cred.proof("https://tool.example", 30).unwrap();
    assert_eq!(checker.check(&wit, &p).unwrap().wit.spiffe_id, id);
    assert!(checker.check(&wit, &p).is_err(), "replay");
    assert!(strict
        .check(&wit, &cred.proof("https://tool.example", 30).unwrap())
        .is_err());
    let other = cred.proof("https://other.example", 30).unwrap();
    assert!(checker.check(&wit, &other).is_err(), "audience");
}
