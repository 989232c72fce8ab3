//! The HPACK (RFC 7541) decoder behind the `:authority` shim.
//!
//! The shim forwards every header representation verbatim except the value of an `:authority`
//! that h2 would refuse, so it needs, per representation, what it decodes to, how it is
//! represented, its byte span in the block and where its value string starts ([`Field`]). A
//! decoder of our own rather than a crate for that, and because the shim runs on every new
//! connection and the HPACK crates on crates.io rebuild their Huffman tables for each string
//! (about 20 µs a string, 0.2 ms a gRPC request); h2's fast decoder is private. Here the
//! Huffman code is built once from the code lengths of RFC 7541 Appendix B (the code is
//! canonical, so lengths suffice), for decoding and for [`huffman_encode`].
//!
//! Invariants: every length and index read from the wire is bounds-checked, integers are capped,
//! the decoded header list is capped at [`MAX_LIST`], every reported span lies inside the block
//! (spans are in order and do not overlap), and nothing here panics on any input. After an
//! error the decoder's table no longer follows the peer's: the shim stops rewriting the
//! connection and h2 sees the original bytes.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::OnceLock;

/// Why a header block could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends in the middle of a field.
    #[error("header block ends in the middle of a field")]
    Truncated,
    /// An integer needs more than four continuation bytes.
    #[error("integer too large")]
    IntegerOverflow,
    /// Index 0, or past the end of the static and dynamic tables.
    #[error("table index {0} out of range")]
    BadIndex(usize),
    /// EOS inside a string, or bad padding.
    #[error("invalid Huffman string")]
    BadHuffman,
    /// A table size update above 4096, or after the block's first field.
    #[error("dynamic table size update above the allowed maximum, or after a field")]
    BadSizeUpdate,
    /// The decoded list exceeds [`MAX_LIST`].
    #[error("decoded header list larger than {MAX_LIST} bytes")]
    TooLarge,
}

/// The largest decoded header list accepted (names, values and 32 bytes a field, as RFC 7540
/// counts them). A Workload API request is a few hundred bytes.
pub const MAX_LIST: usize = 256 * 1024;

/// SETTINGS_HEADER_TABLE_SIZE's default; the Workload API server never raises it.
const TABLE_SIZE: usize = 4096;

/// How a field is represented (RFC 7541 6.1 and 6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    /// A reference to a table entry (6.1).
    Indexed,
    /// A literal added to the dynamic table (6.2.1).
    Incremental,
    /// A literal that leaves the table alone (6.2.2).
    WithoutIndexing,
    /// A sensitive literal that intermediaries must keep a literal (6.2.3).
    NeverIndexed,
}

/// One decoded header field and where its representation lies in the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The name, as sent (lower case for HTTP/2).
    pub name: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// How it was represented.
    pub repr: Repr,
    /// The representation's bytes in the block.
    pub span: Range<usize>,
    /// For a literal, where its value string (length prefix first) starts; the value string
    /// runs to the end of `span`. `None` for an indexed field.
    pub value_at: Option<usize>,
}

impl Field {
    /// Sent as "never indexed": must stay a never-indexed literal if forwarded.
    pub fn is_sensitive(&self) -> bool {
        self.repr == Repr::NeverIndexed
    }
}

/// A decoder following one connection's encoder (its dynamic table lives across blocks).
#[derive(Debug)]
pub struct Decoder {
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: TABLE_SIZE,
        }
    }
}

impl Decoder {
    /// Decodes one complete header block.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut r = Reader { buf: block, pos: 0 };
        let mut fields: Vec<Field> = Vec::new();
        let mut list_size = 0usize;
        while let Some(first) = r.peek() {
            let start = r.pos;
            let field = if first & 0x80 != 0 {
                let i = r.int(7)?;
                let (n, v) = self.get(i)?;
                Field {
                    name: n.to_vec(),
                    value: v.to_vec(),
                    repr: Repr::Indexed,
                    span: start..r.pos,
                    value_at: None,
                }
            } else if first & 0xc0 == 0x40 {
                self.literal(&mut r, 6, Repr::Incremental)?
            } else if first & 0xe0 == 0x20 {
                // Size updates are only allowed before the block's first field.
                let size = r.int(5)?;
                if !fields.is_empty() || size > TABLE_SIZE {
                    return Err(HpackError::BadSizeUpdate);
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else if first & 0x10 != 0 {
                self.literal(&mut r, 4, Repr::NeverIndexed)?
            } else {
                self.literal(&mut r, 4, Repr::WithoutIndexing)?
            };
            list_size += field.name.len() + field.value.len() + 32;
            if list_size > MAX_LIST {
                return Err(HpackError::TooLarge);
            }
            if field.repr == Repr::Incremental {
                self.insert(field.name.clone(), field.value.clone());
            }
            fields.push(field);
        }
        Ok(fields)
    }

    fn literal(&self, r: &mut Reader<'_>, prefix: u8, repr: Repr) -> Result<Field, HpackError> {
        let start = r.pos;
        let i = r.int(prefix)?;
        let name = if i == 0 {
            r.string()?
        } else {
            self.get(i)?.0.to_vec()
        };
        let value_at = r.pos;
        let value = r.string()?;
        Ok(Field {
            name,
            value,
            repr,
            span: start..r.pos,
            value_at: Some(value_at),
        })
    }

    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if index == 0 {
            return Err(HpackError::BadIndex(0));
        }
        if let Some(&(n, v)) = STATIC_TABLE.get(index - 1) {
            return Ok((n.as_bytes(), v.as_bytes()));
        }
        self.table
            .get(index - 1 - STATIC_TABLE.len())
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .ok_or(HpackError::BadIndex(index))
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + 32;
        if size > self.max_size {
            // RFC 7541 4.4: an entry larger than the table empties it and is not added.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((name, value));
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn byte(&mut self) -> Result<u8, HpackError> {
        let b = self.peek().ok_or(HpackError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// An integer with an N-bit prefix (RFC 7541 5.1), capped well below usize overflow.
    fn int(&mut self, prefix: u8) -> Result<usize, HpackError> {
        let max = (1usize << prefix) - 1;
        let mut value = usize::from(self.byte()?) & max;
        if value < max {
            return Ok(value);
        }
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if shift > 21 {
                return Err(HpackError::IntegerOverflow);
            }
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
    }

    /// A string literal (RFC 7541 5.2), Huffman-decoded if so flagged.
    fn string(&mut self) -> Result<Vec<u8>, HpackError> {
        let huffman = self.peek().ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = self.int(7)?;
        let end = self.pos.checked_add(len).ok_or(HpackError::Truncated)?;
        let raw = self.buf.get(self.pos..end).ok_or(HpackError::Truncated)?;
        self.pos = end;
        if huffman {
            huffman_decode(raw)
        } else {
            Ok(raw.to_vec())
        }
    }
}

/// Appends an integer with an N-bit prefix (RFC 7541 5.1); `first` holds the bits above the
/// prefix.
pub fn encode_int(out: &mut Vec<u8>, first: u8, prefix: u8, mut n: usize) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// Appends a string literal (RFC 7541 5.2), Huffman-coded or not.
pub fn encode_string(out: &mut Vec<u8>, s: &[u8], huffman: bool) {
    if huffman {
        let coded = huffman_encode(s);
        encode_int(out, 0x80, 7, coded.len());
        out.extend_from_slice(&coded);
    } else {
        encode_int(out, 0x00, 7, s.len());
        out.extend_from_slice(s);
    }
}

/// Huffman-codes `s` (RFC 7541 5.2), padding the last byte with the most significant bits of
/// EOS (ones).
pub fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let t = canonical();
    let (mut acc, mut bits) = (0u64, 0usize);
    let mut out = Vec::with_capacity(s.len());
    for &b in s {
        let (code, len) = t.codes[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        bits += usize::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        // Keep only the bits not yet written (at most 7), so `acc` never overflows.
        acc &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
    }
    out
}

/// Code lengths of the HPACK Huffman code for symbols 0..=255 and EOS (256), RFC 7541
/// Appendix B. The code is canonical: codes are assigned in order of (length, symbol).
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];
const EOS: u16 = 256;
const MAX_CODE: usize = 30;

/// Canonical code tables: for each length, the first code, how many codes, and where their
/// symbols start in `symbols` (sorted by length, then symbol); and each symbol's (code, length).
struct Canonical {
    first: [u32; MAX_CODE + 1],
    count: [u32; MAX_CODE + 1],
    start: [usize; MAX_CODE + 1],
    symbols: [u16; 257],
    codes: [(u32, u8); 257],
}

fn canonical() -> &'static Canonical {
    static TABLES: OnceLock<Canonical> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut order: Vec<u16> = (0..=EOS).collect();
        order.sort_by_key(|&s| (CODE_LENGTHS[usize::from(s)], s));
        let mut c = Canonical {
            first: [0; MAX_CODE + 1],
            count: [0; MAX_CODE + 1],
            start: [0; MAX_CODE + 1],
            symbols: [0; 257],
            codes: [(0, 0); 257],
        };
        let mut code = 0u32;
        let mut prev = 0usize;
        for (n, &s) in order.iter().enumerate() {
            let len = usize::from(CODE_LENGTHS[usize::from(s)]);
            if n > 0 {
                code = (code + 1) << (len - prev);
            }
            prev = len;
            if c.count[len] == 0 {
                c.first[len] = code;
                c.start[len] = n;
            }
            c.count[len] += 1;
            c.symbols[n] = s;
            c.codes[usize::from(s)] = (code, CODE_LENGTHS[usize::from(s)]);
        }
        c
    })
}

/// Decodes a Huffman-coded string (RFC 7541 5.2): EOS inside the string, padding longer than
/// 7 bits, or padding that is not all ones are errors.
pub fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, HpackError> {
    let t = canonical();
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let (mut code, mut len, mut ones) = (0u32, 0usize, true);
    for &byte in raw {
        for shift in (0..8).rev() {
            let bit = u32::from(byte >> shift) & 1;
            code = (code << 1) | bit;
            len += 1;
            ones &= bit == 1;
            if len > MAX_CODE {
                return Err(HpackError::BadHuffman);
            }
            let offset = code.wrapping_sub(t.first[len]);
            if offset < t.count[len] {
                let sym = t.symbols[t.start[len] + offset as usize];
                let Ok(b) = u8::try_from(sym) else {
                    return Err(HpackError::BadHuffman);
                };
                out.push(b);
                (code, len, ones) = (0, 0, true);
            }
        }
    }
    if len > 7 || !ones {
        return Err(HpackError::BadHuffman);
    }
    Ok(out)
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn rfc_7541_appendix_c_huffman_strings() {
        for (hexed, text) in [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
        ] {
            assert_eq!(huffman_decode(&unhex(hexed)).unwrap(), text.as_bytes());
            assert_eq!(huffman_encode(text.as_bytes()), unhex(hexed));
        }
        // 'a' is 00011, the shortest code: eight of them fill five bytes exactly, one more
        // takes a byte padded with ones.
        assert_eq!(huffman_encode(b"aaaaaaaa"), [0x18, 0xc6, 0x31, 0x8c, 0x63]);
        assert_eq!(huffman_encode(b"a"), [0x1f]);
        for n in 0..100 {
            let s = vec![b'a'; n];
            assert_eq!(huffman_encode(&s).len(), (5 * n).div_ceil(8));
            assert_eq!(huffman_decode(&huffman_encode(&s)).unwrap(), s);
        }
    }

    #[test]
    fn every_symbol_agrees_with_an_independent_decoder() {
        let all: Vec<u8> = (0..=255).collect();
        let enc = huffman_encode(&all);
        assert_eq!(huffman_decode(&enc).unwrap(), all);
        let mut other = fluke_hpack::huffman::HuffmanDecoder::new();
        assert_eq!(other.decode(&enc).unwrap(), all);
        for b in 0..=255u8 {
            let enc = huffman_encode(&[b, b'a', b]);
            assert_eq!(other.decode(&enc).unwrap(), [b, b'a', b]);
        }
    }

    #[test]
    fn bad_huffman_is_refused() {
        // EOS (30 ones) inside the string.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(HpackError::BadHuffman)
        );
        // Padding that is not all ones: "0" is 00000 then 000 padding.
        assert_eq!(huffman_decode(&[0x00]), Err(HpackError::BadHuffman));
        // Padding of 8 bits or more.
        let mut s = huffman_encode(b"a");
        s.push(0xff);
        assert_eq!(huffman_decode(&s), Err(HpackError::BadHuffman));
    }

    #[test]
    fn static_table_matches_an_independent_decoder() {
        for i in 1..=61u8 {
            let ours = Decoder::default().decode(&[0x80 | i]).unwrap();
            let theirs = fluke_hpack::Decoder::new().decode(&[0x80 | i]).unwrap();
            assert_eq!(ours[0].name, theirs[0].0, "index {i}");
            assert_eq!(ours[0].value, theirs[0].1, "index {i}");
        }
    }

    #[test]
    fn rfc_7541_c4_requests_with_huffman_and_the_dynamic_table() {
        let mut d = Decoder::default();
        let f = |fs: Vec<Field>| -> Vec<(String, String)> {
            fs.into_iter()
                .map(|f| {
                    (
                        String::from_utf8(f.name).unwrap(),
                        String::from_utf8(f.value).unwrap(),
                    )
                })
                .collect()
        };
        let s = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let first = d
            .decode(&unhex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
            .unwrap();
        assert_eq!(
            f(first),
            s(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.size, 57);
        let second = d.decode(&unhex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(
            f(second),
            s(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        let third = d
            .decode(&unhex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ))
            .unwrap();
        assert_eq!(
            f(third),
            s(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.size, 164);
    }

    #[test]
    fn literals_round_trip_with_multi_byte_lengths_and_spans() {
        let mut out = Vec::new();
        encode_string(&mut out, &[b'a'; 300], false);
        assert_eq!(&out[..3], &[127, 173, 1]);
        assert_eq!(out.len(), 303);
        // x-long: new name, without indexing. authorization (static 23): never indexed, its
        // value Huffman-coded. Then :method POST, indexed.
        let mut block = vec![0x00];
        encode_string(&mut block, b"x-long", false);
        let value1 = block.len();
        encode_string(&mut block, &[b'a'; 300], false);
        let second = block.len();
        encode_int(&mut block, 0x10, 4, 23);
        let value2 = block.len();
        encode_string(&mut block, b"secret", true);
        let third = block.len();
        block.push(0x83);
        let fields = Decoder::default().decode(&block).unwrap();
        assert_eq!(fields[0].value, [b'a'; 300]);
        assert_eq!(fields[1].name, b"authorization");
        assert_eq!(fields[1].value, b"secret");
        assert_eq!(
            fields
                .iter()
                .map(|f| (f.repr, f.span.clone(), f.value_at))
                .collect::<Vec<_>>(),
            [
                (Repr::WithoutIndexing, 0..second, Some(value1)),
                (Repr::NeverIndexed, second..third, Some(value2)),
                (Repr::Indexed, third..block.len(), None),
            ]
        );
        assert!(!fields[0].is_sensitive() && fields[1].is_sensitive());
    }

    #[test]
    fn integers_round_trip_at_prefix_boundaries() {
        for prefix in [4u8, 5, 6, 7] {
            for n in [
                0,
                1,
                14,
                15,
                16,
                30,
                31,
                62,
                63,
                126,
                127,
                128,
                255,
                16_383,
                1 << 20,
            ] {
                let mut out = Vec::new();
                encode_int(&mut out, 0, prefix, n);
                let mut r = Reader { buf: &out, pos: 0 };
                assert_eq!(r.int(prefix), Ok(n), "prefix {prefix}, n {n}");
                assert_eq!(r.pos, out.len());
            }
        }
    }

    #[test]
    fn eviction_and_size_updates() {
        let mut d = Decoder::default();
        // Size update to 0 empties the table; then an insert is dropped at once.
        d.decode(&unhex("4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"))
            .unwrap();
        assert_eq!(d.table.len(), 1);
        d.decode(&[0x20]).unwrap();
        assert_eq!((d.table.len(), d.size), (0, 0));
        assert_eq!(d.decode(&[0xbe]), Err(HpackError::BadIndex(62)));
        // Above the settings maximum, or after a field: refused.
        assert_eq!(
            d.decode(&[0x3f, 0xe2, 0x1f]),
            Err(HpackError::BadSizeUpdate)
        );
        assert_eq!(d.decode(&[0x82, 0x20]), Err(HpackError::BadSizeUpdate));
    }

    #[test]
    fn hostile_blocks_are_errors_not_panics() {
        let mut d = Decoder::default();
        assert_eq!(d.decode(&[0x80]), Err(HpackError::BadIndex(0)));
        assert_eq!(
            d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(HpackError::IntegerOverflow)
        );
        assert_eq!(d.decode(&[0x00, 0x05, b'a']), Err(HpackError::Truncated));
        assert_eq!(d.decode(&[0x00, 0x7f]), Err(HpackError::Truncated));
        // A 4000-byte entry referenced many times: the decoded list is capped.
        let mut block = vec![0x40, 0x01, b'x'];
        encode_string(&mut block, &[b'v'; 4000], false);
        block.extend(std::iter::repeat_n(0xbe, 100));
        assert_eq!(d.decode(&block), Err(HpackError::TooLarge));
        // Random bytes never panic.
        let mut x = 0x9e37_79b9_u32;
        for _ in 0..2000 {
            let block: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = Decoder::default().decode(&block);
            let _ = huffman_decode(&block);
        }
    }
}
