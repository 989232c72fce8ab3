//! The properties of the `authority_shim` fuzz target (fuzz/fuzz_targets/authority_shim.rs),
//! checked on its seeds and on deterministic mutations of them, so that a plain `cargo test`
//! covers them without cargo-fuzz.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{Rng, PREFACE};
use writ_h2_authority::internal::run;

/// The fuzz target's body; returns how many blocks were rewritten.
fn properties(data: &[u8]) -> u64 {
    let Some((&first, rest)) = data.split_first() else {
        return 0;
    };
    let mut input = Vec::new();
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
    whole.rewritten
}

#[test]
fn seeds_and_their_mutations_keep_the_fuzz_properties() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/authority_shim");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "seeds missing in {}", dir.display());
    let mut rng = Rng(0x1234_5678);
    let mut rewritten = 0;
    for seed in &seeds {
        rewritten += u64::from(properties(seed) > 0);
        for _ in 0..400 {
            let mut m = seed.clone();
            for _ in 0..1 + rng.below(4) {
                match rng.below(3) {
                    0 => {
                        let i = rng.below(m.len());
                        m[i] ^= 1 << rng.below(8);
                    }
                    1 => {
                        let i = rng.below(m.len());
                        m[i] = rng.next() as u8;
                    }
                    _ => {
                        let i = rng.below(m.len() + 1);
                        m.truncate(i.max(1));
                    }
                }
            }
            rewritten += u64::from(properties(&m) > 0);
        }
    }
    assert!(rewritten > 100, "{rewritten}");
}
