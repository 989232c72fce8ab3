//! The sshpop payload (an OpenSSH host certificate, pre-authentication input from any network
//! peer) and the host key file parser: no panic; a certificate that parses re-verifies the same
//! way, and its key's fingerprint is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ_ca::ssh::{Certificate, PrivateKey};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Certificate::parse_and_verify(data) {
        let again = Certificate::parse_and_verify(data).expect("parses twice");
        assert_eq!(c, again);
        assert_eq!(c.key.fingerprint(), again.key.fingerprint());
        assert_eq!(
            c.key,
            writ_ca::ssh::PublicKey::from_blob(&c.key.blob()).expect("blob")
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = PrivateKey::from_openssh(text);
        let _ = writ_ca::ssh::PublicKey::from_openssh(text);
    }
});
