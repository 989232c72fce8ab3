//! CSR parsing and verification never panic on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = writ_ca::x509::csr_public_key(data);
});
