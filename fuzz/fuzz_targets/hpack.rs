//! The Workload API shim's HPACK decoder (it reads bytes from any local process) never panics,
//! keeps its decoded list under the cap, and a block of plain literals it produces decodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ_agent::hpack::{encode_literal, huffman_decode, Decoder, MAX_LIST};

fuzz_target!(|data: &[u8]| {
    let _ = huffman_decode(data);
    // Split the input into several blocks on one connection, so the dynamic table carries over.
    let mut d = Decoder::default();
    for block in data.split(|b| *b == 0xa5) {
        let Ok(fields) = d.decode(block) else { break };
        let size: usize = fields.iter().map(|f| f.name.len() + f.value.len() + 32).sum();
        assert!(size <= MAX_LIST);
        // Re-encoded as literals without indexing (as the shim does), it decodes to the same.
        let mut again = Vec::new();
        for f in &fields {
            encode_literal(&mut again, &f.name, &f.value, f.sensitive);
        }
        let back = Decoder::default().decode(&again).unwrap();
        assert_eq!(back.len(), fields.len());
        for (a, b) in back.iter().zip(&fields) {
            assert_eq!((&a.name, &a.value), (&b.name, &b.value));
        }
    }
});
