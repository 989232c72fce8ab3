//! The `:authority` shim's HPACK decoder (it reads bytes from any local process) never panics,
//! keeps its decoded list under the cap, and reports spans that lie in order inside the block.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ_h2_authority::hpack::{huffman_decode, huffman_encode, Decoder, Repr, MAX_LIST};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = huffman_decode(data) {
        assert_eq!(huffman_decode(&huffman_encode(&s)), Ok(s));
    }
    // Split the input into several blocks on one connection, so the dynamic table carries over.
    let mut d = Decoder::default();
    for block in data.split(|b| *b == 0xa5) {
        let Ok(fields) = d.decode(block) else { break };
        let size: usize = fields
            .iter()
            .map(|f| f.name.len() + f.value.len() + 32)
            .sum();
        assert!(size <= MAX_LIST);
        let mut at = 0;
        for f in &fields {
            assert!(at <= f.span.start && f.span.start < f.span.end && f.span.end <= block.len());
            match f.value_at {
                None => assert_eq!(f.repr, Repr::Indexed),
                Some(v) => assert!(f.span.start < v && v < f.span.end),
            }
            at = f.span.end;
        }
    }
});
