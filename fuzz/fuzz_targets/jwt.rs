//! JWT-SVID validation never panics on arbitrary input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ_core::{Bundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = writ_ca::jwt::validate(s, "aud", 0, |td: &TrustDomain| Some(Bundle::new(td.clone())));
});
