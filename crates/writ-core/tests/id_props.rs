//! Property tests for SPIFFE ID parsing: valid IDs round-trip unchanged; any string either parses
//! to itself or is refused (never normalised); parsing never panics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

use proptest::prelude::*;
use writ_core::{Selector, SpiffeId};

fn td() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,40}"
}

fn segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,20}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
}

proptest! {
    #[test]
    fn valid_ids_round_trip(td in td(), segs in proptest::collection::vec(segment(), 0..6)) {
        let s = format!("spiffe://{td}{}", segs.iter().map(|x| format!("/{x}")).collect::<String>());
        let id = SpiffeId::parse(&s).unwrap();
        prop_assert_eq!(id.as_str(), s.as_str());
        prop_assert_eq!(id.trust_domain_str(), td.as_str());
        let reparsed = SpiffeId::parse(&id.to_string()).unwrap();
        prop_assert_eq!(reparsed, id);
    }

    #[test]
    fn arbitrary_input_never_normalised(s in "\\PC{0,60}") {
        if let Ok(id) = SpiffeId::parse(&s) {
            prop_assert_eq!(id.as_str(), s.as_str());
        }
    }

    #[test]
    fn near_miss_input(td in td(), tail in "[a-zA-Z0-9./%?#@:~_-]{0,30}") {
        let s = format!("spiffe://{td}{tail}");
        match SpiffeId::parse(&s) {
            Ok(id) => {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert!(!id.path().contains("//"));
                prop_assert!(!id.path().ends_with('/'));
                prop_assert!(id.path().split('/').all(|seg| seg != "." && seg != ".."));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn selectors_round_trip(kind in "[a-z0-9_-]{1,10}", value in "[ -~]{1,40}") {
        let s = Selector::parse(&format!("{kind}:{value}")).unwrap();
        prop_assert_eq!(s.kind(), kind.as_str());
        prop_assert_eq!(s.value(), value.as_str());
    }
}
