//! The shim's output, decoded by an independent HPACK decoder (fluke-hpack) in connection
//! order: every field is what the client sent, except `:authority` values that h2 refuses,
//! which are replaced by as many `a`s (and now parse); no block grows; representations (never
//! indexed above all) are kept; and whatever the shim cannot follow is forwarded verbatim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::VecDeque;

use common::*;
use writ_h2_authority::hpack::{encode_int, encode_string, Decoder, Repr};
use writ_h2_authority::internal::{run, Conn};
use writ_h2_authority::{MAX_BLOCK, MAX_FRAME};

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

const PATH: &[u8] = b"/SpiffeWorkloadAPI/FetchX509SVID";
const FORMS: [&[u8]; 2] = [b"%2Frun%2Fwrit%2Fapi.sock", b"/run/writ/api.sock"];

fn refused(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_err()
}

/// Each block decoded in order by one fluke-hpack decoder (its table lives across blocks).
fn fluke_all(blocks: &[Block]) -> Vec<Fields> {
    let mut d = fluke_hpack::Decoder::new();
    blocks.iter().map(|b| d.decode(&b.block).unwrap()).collect()
}

/// Each block's representations, decoded in order by our decoder.
fn reprs_all(blocks: &[Block]) -> Vec<Vec<Repr>> {
    let mut d = Decoder::default();
    blocks
        .iter()
        .map(|b| {
            d.decode(&b.block)
                .unwrap()
                .into_iter()
                .map(|f| f.repr)
                .collect()
        })
        .collect()
}

/// What h2 should see for what the client sent.
fn expected(sent: &[Fields]) -> Vec<Fields> {
    sent.iter()
        .map(|fields| {
            fields
                .iter()
                .map(|(n, v)| {
                    if n == b":authority" && !v.is_empty() && refused(v) {
                        (n.clone(), vec![b'a'; v.len()])
                    } else {
                        (n.clone(), v.clone())
                    }
                })
                .collect()
        })
        .collect()
}

/// Runs `input` through the shim (in one piece and byte by byte) and checks the output
/// against the input with an independent decoder. Returns the input and output blocks.
fn check(input: &[u8]) -> (Vec<Block>, Vec<Block>, u64) {
    let whole = run(input, input.len());
    assert_eq!(
        run(input, 1),
        whole,
        "the output depends on how reads split"
    );
    let (ins, outs) = (blocks(input), blocks(&whole.output));
    assert_eq!(ins.len(), outs.len());
    let (sent, got) = (fluke_all(&ins), fluke_all(&outs));
    assert_eq!(got, expected(&sent));
    for fields in &got {
        for (n, v) in fields {
            if n == b":authority" && !v.is_empty() {
                assert!(!refused(v), "{}", String::from_utf8_lossy(v));
            }
        }
    }
    assert_eq!(reprs_all(&outs), reprs_all(&ins));
    for (i, o) in ins.iter().zip(&outs) {
        assert!(o.block.len() <= i.block.len());
        assert!(o.wire_len <= i.wire_len);
        assert_eq!(o.frame_lens.len(), i.frame_lens.len());
        assert_eq!(o.stream, i.stream);
        assert_eq!(o.priority, i.priority);
        assert_eq!(
            o.flags & (END_STREAM | PRIORITY),
            i.flags & (END_STREAM | PRIORITY)
        );
    }
    (ins, outs, whole.rewritten)
}

#[test]
fn authority_forms_through_the_dynamic_table_match_an_independent_decoder() {
    for form in FORMS {
        for huffman in [false, true] {
            // Block 1: the authority goes into the dynamic table; so does a metadata field.
            // Table after it: 62 = workload.spiffe.io, 63 = :authority.
            let mut b1 = vec![0x83, 0x86];
            literal(&mut b1, WITHOUT, 4, b"", PATH, huffman);
            literal(&mut b1, INCREMENTAL, 1, b"", form, huffman);
            literal(
                &mut b1,
                INCREMENTAL,
                0,
                b"workload.spiffe.io",
                b"true",
                huffman,
            );
            literal(&mut b1, NEVER, 23, b"", b"Bearer secret", huffman);
            literal(&mut b1, WITHOUT, 0, b"te", b"trailers", huffman);
            // Block 2: both referred to by dynamic index; the secret stays never indexed.
            let mut b2 = vec![0x83, 0x86];
            literal(&mut b2, WITHOUT, 4, b"", PATH, huffman);
            indexed(&mut b2, 63);
            indexed(&mut b2, 62);
            literal(&mut b2, NEVER, 23, b"", b"Bearer secret", huffman);
            // Block 3: the authority by index again, then a literal whose name is the dynamic
            // entry's (index 63) with the other form, inserted (now 62; the first is 64).
            let other = FORMS[usize::from(form == FORMS[0])];
            let mut b3 = vec![0x83, 0x86];
            literal(&mut b3, WITHOUT, 4, b"", PATH, huffman);
            indexed(&mut b3, 63);
            literal(&mut b3, INCREMENTAL, 63, b"", other, !huffman);
            indexed(&mut b3, 62);
            indexed(&mut b3, 64);
            let mut input = PREFACE.to_vec();
            input.extend(frame(0x4, 0, 0, &[]));
            input.extend(header_frames(1, &b1, MAX_FRAME));
            input.extend(header_frames(3, &b2, MAX_FRAME));
            input.extend(header_frames(5, &b3, MAX_FRAME));
            let (ins, outs, rewritten) = check(&input);
            // Blocks 1 and 3 carry literals to rewrite; block 2 only indexes, so it is
            // forwarded as it came.
            assert_eq!(rewritten, 2);
            assert_eq!(outs[1], ins[1]);
            assert!(outs[0].block.len() < ins[0].block.len());
        }
    }
}

#[test]
fn eviction_and_size_updates_stay_in_step() {
    let mut input = PREFACE.to_vec();
    let mut stream = 1;
    let mut next = |input: &mut Vec<u8>, block: &[u8]| {
        input.extend(header_frames(stream, block, MAX_FRAME));
        stream += 2;
    };
    // The raw authority goes in, then entries of about 1 KB push it towards the end of the
    // table and out; every block refers to the oldest entries still present.
    let mut b = vec![0x83];
    literal(&mut b, INCREMENTAL, 1, b"", FORMS[1], false);
    next(&mut input, &b);
    for i in 0..5u8 {
        let mut b = vec![0x83];
        let value = vec![b'v' + i % 3; 1000 - usize::from(i)];
        literal(&mut b, INCREMENTAL, 0, b"x-big", &value, i % 2 == 0);
        // The oldest entry: the authority while it lasts (4 entries of ~1 KB fit in 4096).
        let entries = (usize::from(i) + 2).min(4);
        indexed(&mut b, 61 + entries);
        literal(&mut b, INCREMENTAL, 1, b"", FORMS[0], true);
        next(&mut input, &b);
    }
    // Shrink the table to 100 bytes (evicts all but the newest small entry), then grow back.
    let mut b = Vec::new();
    encode_int(&mut b, 0x20, 5, 100);
    indexed(&mut b, 62);
    literal(&mut b, INCREMENTAL, 1, b"", b"/x", false);
    indexed(&mut b, 62);
    next(&mut input, &b);
    let mut b = Vec::new();
    encode_int(&mut b, 0x20, 5, 4096);
    indexed(&mut b, 62);
    next(&mut input, &b);
    let (_, _, rewritten) = check(&input);
    assert_eq!(rewritten, 7);
}

/// A grpc-js-like request: about 26.5 KB of Huffman-coded metadata, the percent-encoded path
/// as authority. The old shim re-encoded it as plain literals (about 43 KB, which made h2 close
/// the connection); now it shrinks by a few bytes and keeps the client's frames.
#[test]
fn a_large_grpc_js_like_block_does_not_grow() {
    let mut rng = Rng(0x2545_f491);
    let mut b = vec![0x83, 0x86];
    literal(&mut b, WITHOUT, 4, b"", PATH, true);
    literal(&mut b, INCREMENTAL, 1, b"", FORMS[0], true);
    literal(&mut b, WITHOUT, 0, b"te", b"trailers", true);
    literal(&mut b, WITHOUT, 31, b"", b"application/grpc", true);
    literal(&mut b, WITHOUT, 58, b"", b"grpc-node-js/1.12.6", true);
    for i in 0..40 {
        let value: Vec<u8> = (0..870)
            .map(|_| rng.pick(b"abcdefghijklmnopqrstuvwxyz0123456789"))
            .collect();
        let name = format!("x-meta-{i:02}");
        literal(&mut b, WITHOUT, 0, name.as_bytes(), &value, true);
    }
    // What the old shim sent instead: every field a plain literal, `:authority: localhost`.
    let mut old = Vec::new();
    for f in Decoder::default().decode(&b).unwrap() {
        let value = if f.name == b":authority" {
            &b"localhost"[..]
        } else {
            &f.value
        };
        literal(&mut old, WITHOUT, 0, &f.name, value, false);
    }
    let mut input = PREFACE.to_vec();
    input.extend(header_frames(1, &b, MAX_FRAME));
    let (ins, outs, rewritten) = check(&input);
    assert_eq!(rewritten, 1);
    eprintln!(
        "grpc-js-like block: {} bytes in, {} bytes out ({} frames); the old shim: {} bytes",
        ins[0].block.len(),
        outs[0].block.len(),
        outs[0].frame_lens.len(),
        old.len()
    );
    // Only the authority shrank, in the first frame; the frames are the client's.
    let shrink = ins[0].block.len() - outs[0].block.len();
    assert!((1..16).contains(&shrink), "{shrink}");
    assert_eq!(outs[0].frame_lens[0], ins[0].frame_lens[0] - shrink);
    assert_eq!(outs[0].frame_lens[1..], ins[0].frame_lens[1..]);
}

#[test]
fn a_block_over_the_cap_is_forwarded_verbatim_and_the_shim_stops() {
    let rewritable = |stream: u32| {
        let mut b = vec![0x83];
        literal(&mut b, WITHOUT, 1, b"", FORMS[0], false);
        header_frames(stream, &b, MAX_FRAME)
    };
    let mut big = vec![0x83];
    literal(&mut big, WITHOUT, 1, b"", FORMS[1], false);
    while big.len() <= MAX_BLOCK {
        literal(&mut big, WITHOUT, 0, b"x-pad", &[b'p'; 1000], false);
    }
    let first = rewritable(1);
    let mut input = PREFACE.to_vec();
    input.extend(&first);
    let rest_at = input.len();
    input.extend(header_frames(3, &big, MAX_FRAME));
    input.extend(rewritable(5));
    let out = run(&input, 1000);
    assert_eq!(out.rewritten, 1);
    // The first block was rewritten; the big one and everything after came through verbatim.
    assert!(out.output.len() < input.len());
    let cut = input.len() - rest_at;
    assert_eq!(&out.output[out.output.len() - cut..], &input[rest_at..]);
}

#[test]
fn undecodable_blocks_and_too_large_lists_are_forwarded_verbatim_and_the_shim_stops() {
    let mut after = vec![0x83];
    literal(&mut after, WITHOUT, 1, b"", FORMS[0], true);
    // A dynamic index that does not exist; a truncated literal; a decoded list over 256 KiB
    // (a 4000-byte entry referred to 70 times).
    let mut too_large = vec![0x40, 0x01, b'x'];
    encode_string(&mut too_large, &[b'v'; 4000], false);
    too_large.extend(std::iter::repeat_n(0xbe, 70));
    for bad in [vec![0x83, 0xff, 0x7f], vec![0x00, 0x05, b'a'], too_large] {
        let mut input = PREFACE.to_vec();
        input.extend(header_frames(1, &bad, MAX_FRAME));
        input.extend(header_frames(3, &after, MAX_FRAME));
        let out = run(&input, 64);
        assert_eq!(out.output, input);
        assert_eq!(out.rewritten, 0);
    }
}

#[test]
fn large_frames_and_long_blocks_are_not_held_back() {
    // A frame over 16 KiB is handed on at once, header and all, not buffered whole.
    let mut conn = Conn::default();
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(&[0xff, 0xff, 0xff, 0x01, 0x04, 0, 0, 0, 1]);
    input.extend_from_slice(&[0u8; 100]);
    assert_eq!(conn.push(&input), input);
    assert_eq!(conn.push(b"more"), b"more");
    assert!(conn.requests_seen() >= 1);
    // A header block kept open with empty CONTINUATION frames is held back only up to the cap.
    let mut conn = Conn::default();
    let mut held = conn.push(PREFACE);
    held.extend(conn.push(&frame(HEADERS, 0, 1, &[0x83])));
    let mut sent = PREFACE.len() + 10;
    while held.len() < sent {
        assert!(sent < PREFACE.len() + MAX_BLOCK + 9 + 9);
        held.extend(conn.push(&frame(CONTINUATION, 0, 1, &[])));
        sent += 9;
    }
    assert_eq!(conn.requests_seen(), 1);
}

#[test]
fn requests_seen_counts_complete_blocks() {
    let mut conn = Conn::default();
    let mut b = vec![0x83];
    literal(&mut b, WITHOUT, 1, b"", FORMS[0], false);
    let frames = header_frames(1, &b, 3);
    let _ = conn.push(PREFACE);
    let _ = conn.push(&frames[..frames.len() - 1]);
    assert_eq!(conn.requests_seen(), 0);
    let _ = conn.push(&frames[frames.len() - 1..]);
    assert_eq!(conn.requests_seen(), 1);
}

/// A model of the client's dynamic table: each entry's (name length, value length).
#[derive(Default)]
struct Table {
    entries: VecDeque<(usize, usize)>,
    size: usize,
    max: usize,
}

impl Table {
    fn insert(&mut self, name: usize, value: usize) {
        let size = name + value + 32;
        while self.size + size > self.max {
            let Some((n, v)) = self.entries.pop_back() else {
                break;
            };
            self.size -= n + v + 32;
        }
        if size <= self.max {
            self.entries.push_front((name, value));
            self.size += size;
        }
    }
}

/// A random client connection: blocks of random representations, authorities of every kind,
/// random framing, padding and priority, other frames in between, sometimes a broken block.
/// Returns the bytes and whether every block decodes.
fn random_connection(rng: &mut Rng) -> (Vec<u8>, bool) {
    const AUTHORITIES: [&[u8]; 8] = [
        b"%2Frun%2Fwrit%2Fapi.sock",
        b"/run/writ/api.sock",
        b"localhost",
        b"",
        b"a b",
        b"unix:/tmp/a.sock",
        b"x:1",
        &[b'/'; 300],
    ];
    // Static names used for literals: (index, name length).
    const NAMES: [(usize, usize); 5] = [(1, 10), (4, 5), (23, 13), (31, 12), (58, 10)];
    let mut table = Table {
        max: 4096,
        ..Table::default()
    };
    let mut input = PREFACE.to_vec();
    let mut decodable = true;
    for stream in (1..=2 * (1 + rng.below(6) as u32)).step_by(2) {
        let mut b = Vec::new();
        if rng.chance(5) {
            let max = rng.pick(&[0, 200, 1024, 4096]);
            encode_int(&mut b, 0x20, 5, max);
            table.max = max;
            while table.size > max {
                let Some((n, v)) = table.entries.pop_back() else {
                    break;
                };
                table.size -= n + v + 32;
            }
        }
        for _ in 0..1 + rng.below(12) {
            let dynamic = table.entries.len();
            match rng.below(10) {
                0 | 1 => indexed(&mut b, 1 + rng.below(61)),
                2 if dynamic > 0 => indexed(&mut b, 62 + rng.below(dynamic)),
                _ => {
                    let repr = rng.pick(&[INCREMENTAL, WITHOUT, NEVER]);
                    let huffman = rng.chance(50);
                    let (index, name, name_len) = match rng.below(4) {
                        0 | 1 => {
                            let (i, l) = rng.pick(&NAMES);
                            (i, &b""[..], l)
                        }
                        2 if dynamic > 0 => {
                            let k = rng.below(dynamic);
                            (62 + k, &b""[..], table.entries[k].0)
                        }
                        _ => {
                            let n: &[u8] = rng.pick(&[&b":authority"[..], b"x-a", b"te"]);
                            (0, n, n.len())
                        }
                    };
                    let value: &[u8] = if rng.chance(60) {
                        rng.pick(&AUTHORITIES)
                    } else {
                        rng.pick(&[&b"v"[..], b"trailers", &[b'q'; 200]])
                    };
                    literal(&mut b, repr, index, name, value, huffman);
                    if repr == INCREMENTAL {
                        table.insert(name_len, value.len());
                    }
                }
            }
        }
        if rng.chance(3) {
            // Broken: an index far past the table.
            b.extend_from_slice(&[0xff, 0xff, 0x7f]);
            decodable = false;
        }
        // Random framing: the block cut at random points, the first piece in HEADERS (with
        // optional padding and priority), the others in CONTINUATIONs.
        let mut cuts: Vec<usize> = (0..rng.below(4)).map(|_| rng.below(b.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut at = 0;
        for c in cuts {
            pieces.push(&b[at..c]);
            at = c;
        }
        pieces.push(&b[at..]);
        for (i, piece) in pieces.iter().enumerate() {
            let mut flags = if i + 1 == pieces.len() {
                END_HEADERS
            } else {
                0
            };
            if i > 0 {
                input.extend(frame(CONTINUATION, flags, stream, piece));
                continue;
            }
            let mut payload = Vec::new();
            if rng.chance(50) {
                flags |= END_STREAM;
            }
            let pad = if rng.chance(20) { rng.below(20) } else { 0 };
            if pad > 0 {
                flags |= PADDED;
                payload.push(pad as u8);
            }
            if rng.chance(20) {
                flags |= PRIORITY;
                payload.extend_from_slice(&[0, 0, 0, 0, 7]);
            }
            payload.extend_from_slice(piece);
            payload.extend(std::iter::repeat_n(0, pad));
            input.extend(frame(HEADERS, flags, stream, &payload));
        }
        if rng.chance(30) {
            input.extend(frame(rng.pick(&[0x0, 0x6, 0x8, 0x4]), 0, stream, &[0; 8]));
        }
    }
    (input, decodable)
}

#[test]
fn random_connections_keep_the_invariants() {
    let mut rng = Rng(0x9e37_79b9);
    let mut rewrote = 0;
    for _ in 0..300 {
        let (input, decodable) = random_connection(&mut rng);
        let out = run(&input, input.len());
        assert_eq!(run(&input, 1 + rng.below(40)), out);
        assert!(out.output.len() <= input.len());
        if out.rewritten == 0 {
            assert_eq!(out.output, input);
        }
        // Idempotent: what the shim let through needs no more rewriting.
        assert_eq!(run(&out.output, out.output.len()).output, out.output);
        if decodable {
            check(&input);
        }
        rewrote += out.rewritten;
    }
    assert!(rewrote > 60, "{rewrote}");
}
