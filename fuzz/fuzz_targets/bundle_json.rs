//! Bundle JSON parsing never panics, and whatever parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ_core::{Bundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::new("example.org").unwrap();
    if let Ok(b) = Bundle::from_json(td.clone(), data) {
        let again = Bundle::from_json(td, b.to_json().unwrap().as_bytes()).unwrap();
        assert_eq!(again, b);
    }
});
