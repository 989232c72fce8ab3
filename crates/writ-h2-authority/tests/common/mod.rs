//! Building and taking apart HTTP/2 header frames and HPACK blocks by hand, for the tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::panic)]

use writ_h2_authority::hpack::{encode_int, encode_string};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 0x1;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

/// Literal representations: the bits above the prefix, and the prefix (RFC 7541 6.2).
pub const INCREMENTAL: (u8, u8) = (0x40, 6);
pub const WITHOUT: (u8, u8) = (0x00, 4);
pub const NEVER: (u8, u8) = (0x10, 4);

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block as HEADERS + CONTINUATION frames of at most `max` bytes, END_STREAM set.
pub fn header_frames(stream: u32, block: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let chunks: Vec<&[u8]> = if block.is_empty() {
        vec![block]
    } else {
        block.chunks(max).collect()
    };
    for (i, c) in chunks.iter().enumerate() {
        let mut flags = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        if i == 0 {
            flags |= END_STREAM;
        }
        out.extend(frame(
            if i == 0 { HEADERS } else { CONTINUATION },
            flags,
            stream,
            c,
        ));
    }
    out
}

/// An indexed field (RFC 7541 6.1).
pub fn indexed(out: &mut Vec<u8>, index: usize) {
    encode_int(out, 0x80, 7, index);
}

/// A literal field: `repr` is one of [`INCREMENTAL`], [`WITHOUT`], [`NEVER`]; the name is a
/// table index, or new if `name_index` is 0.
pub fn literal(
    out: &mut Vec<u8>,
    repr: (u8, u8),
    name_index: usize,
    name: &[u8],
    value: &[u8],
    huffman: bool,
) {
    encode_int(out, repr.0, repr.1, name_index);
    if name_index == 0 {
        encode_string(out, name, huffman);
    }
    encode_string(out, value, huffman);
}

/// One header block found in a connection's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub stream: u32,
    pub flags: u8,
    /// Priority fields of the HEADERS frame, if any.
    pub priority: Option<Vec<u8>>,
    /// The block, without padding.
    pub block: Vec<u8>,
    /// Its frames' bytes, headers included.
    pub wire_len: usize,
    /// Its frames' payload lengths.
    pub frame_lens: Vec<usize>,
}

/// The header blocks of a client connection's bytes (preface first), in order. Panics on
/// anything the tests do not send.
pub fn blocks(conn: &[u8]) -> Vec<Block> {
    assert_eq!(&conn[..PREFACE.len()], PREFACE);
    let mut rest = &conn[PREFACE.len()..];
    let mut out: Vec<Block> = Vec::new();
    let mut open = false;
    while !rest.is_empty() {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5] & 0x7f, rest[6], rest[7], rest[8]]);
        let mut p = &rest[9..9 + len];
        match kind {
            HEADERS => {
                assert!(!open);
                let mut pad = 0;
                if flags & PADDED != 0 {
                    pad = usize::from(p[0]);
                    p = &p[1..];
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    priority = Some(p[..5].to_vec());
                    p = &p[5..];
                }
                out.push(Block {
                    stream,
                    flags,
                    priority,
                    block: p[..p.len() - pad].to_vec(),
                    wire_len: 9 + len,
                    frame_lens: vec![len],
                });
                open = flags & END_HEADERS == 0;
            }
            CONTINUATION => {
                assert!(open);
                let b = out.last_mut().unwrap();
                assert_eq!(b.stream, stream);
                b.block.extend_from_slice(p);
                b.wire_len += 9 + len;
                b.frame_lens.push(len);
                open = flags & END_HEADERS == 0;
            }
            _ => assert!(!open),
        }
        rest = &rest[9 + len..];
    }
    out
}

/// A small deterministic generator (xorshift32).
pub struct Rng(pub u32);

impl Rng {
    pub fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.next() as usize % n
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}
