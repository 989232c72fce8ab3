//! SpiffeId parsing never panics; what parses re-serialises to the exact input, re-parses to the
//! same value, and keeps the canonical-form invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ_core::{Selector, SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(s) {
        assert_eq!(id.as_str(), s);
        assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
        assert!(!id.path().ends_with('/'));
        assert!(!id.path().contains("//"));
        assert!(id.path().split('/').all(|seg| seg != "." && seg != ".."));
        assert!(TrustDomain::new(id.trust_domain_str()).is_ok());
    }
    if let Ok(sel) = Selector::parse(s) {
        assert_eq!(sel.to_string(), s);
    }
});
