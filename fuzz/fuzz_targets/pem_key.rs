//! PEM private-key loading (`PrivateKey::from_pem`, used for the CA key files and the upstream
//! authority key) and the PEM layer under it. What decodes re-encodes and decodes to the same
//! blocks; a key that loads writes back to PEM that loads to the same key, has a public key,
//! signs a CSR whose signature writ's own CSR check accepts, and can be used by a JWT signer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ_ca::PrivateKey;
use writ_core::pem;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(blocks) = pem::decode_all(text) {
        let again: String = blocks.iter().map(|(l, d)| pem::encode(l, d)).collect();
        assert_eq!(pem::decode_all(&again).as_ref(), Ok(&blocks), "{again}");
    }
    let Ok(key) = PrivateKey::from_pem(text) else {
        return;
    };
    let back = PrivateKey::from_pem(&key.to_pem()).expect("written PEM loads");
    assert_eq!(back.pkcs8_der(), key.pkcs8_der());
    assert_eq!(back.key_type(), key.key_type());
    let spki = key.public_key_spki().expect("public key of a loaded key");
    let csr = key.csr_der().expect("CSR from a loaded key");
    assert_eq!(
        writ_ca::x509::csr_public_key(&csr).expect("own CSR verifies"),
        spki
    );
    writ_ca::JwtSigner::new("k".into(), &key, None).expect("loaded key can sign JWTs");
});
