//! CSR parsing and verification (an agent's or a workload's CSR reaches the CA) never panic, and
//! a CSR that passes is minted into an X509-SVID for exactly its key, which writ's own SVID
//! verifier accepts against the CA's bundle.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use writ_ca::x509::build_ca_cert;
use writ_ca::{verify_x509_svid, KeyType, PrivateKey, X509Authority};
use writ_core::{Bundle, SpiffeId};
use writ_fuzz::{td, NOW};

fn ca() -> &'static (X509Authority, Bundle) {
    static CA: OnceLock<(X509Authority, Bundle)> = OnceLock::new();
    CA.get_or_init(|| {
        let key = PrivateKey::generate(KeyType::EcP256).expect("key");
        let (der, chain) = build_ca_cert(&td(), &key, 86_400, NOW, None).expect("CA");
        let mut bundle = Bundle::new(td());
        bundle.x509_authorities = vec![der.clone()];
        (
            X509Authority::new(td(), der, &key, chain).expect("authority"),
            bundle,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(spki) = writ_ca::x509::csr_public_key(data) else {
        return;
    };
    let (ca, bundle) = ca();
    let id = SpiffeId::parse("spiffe://example.org/fuzz").expect("id");
    let Ok(svid) = ca.mint_from_csr(data, &id, 60, &[], NOW) else {
        return;
    };
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, leaf) = X509Certificate::from_der(&svid.cert_der).expect("minted leaf parses");
    let (_, want) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).expect("CSR SPKI");
    assert_eq!(
        leaf.public_key().algorithm.algorithm,
        want.algorithm.algorithm
    );
    assert_eq!(
        leaf.public_key().subject_public_key.data,
        want.subject_public_key.data
    );
    assert_eq!(
        verify_x509_svid(&svid.chain, bundle, NOW).expect("minted SVID verifies"),
        id
    );
});
