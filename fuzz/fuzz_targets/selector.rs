//! Selector parsing: what parses prints back to the exact input, rebuilds from its parts, and
//! survives the JSON form the store and the APIs use.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ_core::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sel) = Selector::parse(s) else { return };
    assert_eq!(sel.to_string(), s);
    assert_eq!(format!("{}:{}", sel.kind(), sel.value()), s);
    assert!(!sel.kind().contains(':'));
    assert_eq!(Selector::new(sel.kind(), sel.value()).as_ref(), Ok(&sel));
    assert_eq!(s.parse::<Selector>().as_ref(), Ok(&sel));
    let json = serde_json::to_string(&sel).expect("selector serializes");
    assert_eq!(
        serde_json::from_str::<Selector>(&json).expect("its JSON parses"),
        sel
    );
    assert!(writ_core::selector::is_subset(&[sel.clone()], &[sel]));
});
