//! The `:authority` shim (it reads what any local process sends to a tonic server on a Unix
//! socket) never panics; never makes a connection's bytes longer; forwards a connection with
//! nothing to rewrite byte for byte (and changes the bytes when it rewrites); gives the same
//! output however reads split the bytes; and leaves nothing for a second pass to rewrite.
//!
//! Input: the first byte sets the read size (and, with its top bit, leaves out the HTTP/2
//! preface that is otherwise put in front, so the fuzzer spends its time on frames).
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ_h2_authority::internal::run;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::with_capacity(PREFACE.len() + rest.len());
    if first & 0x80 == 0 {
        input.extend_from_slice(PREFACE);
    }
    input.extend_from_slice(rest);

    let whole = run(&input, input.len());
    assert!(whole.output.len() <= input.len());
    if whole.rewritten == 0 {
        assert_eq!(whole.output, input);
    } else {
        assert_ne!(whole.output, input);
    }
    assert_eq!(run(&input, usize::from(first & 0x7f) + 1), whole);
    let again = run(&whole.output, whole.output.len());
    assert_eq!(again.rewritten, 0);
    assert_eq!(again.output, whole.output);
});
