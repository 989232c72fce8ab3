//! Rewriting one decoded header block: only the values of the `:authority` literals that h2
//! would refuse change, and each shrinks or keeps its size.
//!
//! A refused value of n bytes becomes n times `a`, Huffman-coded (5 bits a symbol, the
//! shortest code of RFC 7541 Appendix B), in the same representation (same type bits, same name
//! index or name literal). Invariants:
//! - every other byte of the block is kept, in order;
//! - the decoded value has the same length, so a dynamic-table entry it creates has the same
//!   size on h2's side as on the client's: both tables evict the same entries, every index
//!   means the same slot, and an index that refers to a rewritten entry gives h2 the `a`s;
//! - the coded value is never longer than the original (any code is at least 5 bits a symbol,
//!   and the length prefix grows with the length), so the block never grows;
//! - [`Rewritten::map_offsets`] carries the client's frame boundaries over to the new block
//!   so that h2 sees no frame longer, and no partly received field larger, than the client sent.
//!
//! An empty `:authority` is refused by h2 too but cannot be made valid at the same length; it is
//! left alone and h2 resets that stream as it would without the shim.

use crate::hpack::{encode_string, Field};

/// One rewritten value string: at `start` (offset in the original block), `old_len` bytes
/// became `new_len` bytes; `shrink_before` is how much the block shrank before it.
#[derive(Debug, Clone, Copy)]
struct Edit {
    start: usize,
    old_len: usize,
    new_len: usize,
    shrink_before: usize,
}

/// A header block with its refused `:authority` values replaced.
#[derive(Debug)]
pub(crate) struct Rewritten {
    /// The new block; never longer than the original.
    pub(crate) block: Vec<u8>,
    edits: Vec<Edit>,
}

/// Whether h2 would refuse this `:authority` value: it parses it with
/// `http::uri::Authority` and resets the stream if that fails.
pub(crate) fn refused(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_err()
}

/// Rewrites `block`, whose decoded `fields` are given; `None` if nothing needs rewriting (the
/// block is then forwarded as it came).
pub(crate) fn rewrite(block: &[u8], fields: &[Field]) -> Option<Rewritten> {
    let mut out = Vec::new();
    let mut edits = Vec::new();
    let mut copied = 0usize;
    let mut shrink = 0usize;
    for f in fields {
        // Indexed fields (no `value_at`) pass as they are: one that refers to an entry we
        // rewrote already gives h2 the replacement.
        let Some(at) = f.value_at else { continue };
        if f.name != b":authority" || f.value.is_empty() || !refused(&f.value) {
            continue;
        }
        let end = f.span.end;
        // The decoder guarantees copied <= at <= end <= block.len(); checked all the same.
        let before = block.get(copied..at)?;
        out.extend_from_slice(before);
        let mark = out.len();
        encode_string(&mut out, &vec![b'a'; f.value.len()], true);
        let (old_len, new_len) = (end - at, out.len() - mark);
        if new_len > old_len {
            // Cannot happen (see the module doc); forwarding the block untouched is safe.
            return None;
        }
        edits.push(Edit {
            start: at,
            old_len,
            new_len,
            shrink_before: shrink,
        });
        shrink += old_len - new_len;
        copied = end;
    }
    if edits.is_empty() {
        return None;
    }
    out.extend_from_slice(block.get(copied..)?);
    Some(Rewritten { block: out, edits })
}

impl Rewritten {
    /// Maps ascending offsets of the original block (the client's frame boundaries) to offsets
    /// of the new block. Outside rewritten values an offset moves back by what was cut before
    /// it; inside one it stays inside the new value (short of its end), so a field that was
    /// incomplete at a boundary still is, with no more bytes received. The mapping never
    /// decreases and never moves two offsets further apart. Linear in offsets plus edits.
    pub(crate) fn map_offsets(&self, offsets: &[usize]) -> Vec<usize> {
        let mut out = Vec::with_capacity(offsets.len());
        let mut e = 0usize;
        for &p in offsets {
            while e < self.edits.len() && p >= self.edits[e].start + self.edits[e].old_len {
                e += 1;
            }
            // Edits before `e` end at or before `p`.
            let shrink = match e.checked_sub(1).map(|i| self.edits[i]) {
                Some(d) => d.shrink_before + d.old_len - d.new_len,
                None => 0,
            };
            let mapped = match self.edits.get(e) {
                Some(d) if p > d.start => {
                    d.start - d.shrink_before + (p - d.start).min(d.new_len.saturating_sub(1))
                }
                _ => p.saturating_sub(shrink),
            };
            out.push(mapped);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::{encode_int, Decoder};

    #[test]
    fn what_h2_refuses() {
        for bad in [
            &b"%2Frun%2Fwrit%2Fapi.sock"[..],
            // grpcio 1.85 (py-spiffe) on `unix:///run/writ/api.sock`: no leading slash.
            b"run%2Fwrit%2Fapi.sock",
            b"/run/writ/api.sock",
            b"",
            b"a b",
            b"unix:/tmp/x",
        ] {
            assert!(refused(bad), "{}", String::from_utf8_lossy(bad));
        }
        for good in [&b"localhost"[..], b"localhost:50051", b"[::1]:1", b"aaaa"] {
            assert!(!refused(good), "{}", String::from_utf8_lossy(good));
        }
    }

    /// Every offset of a block with two rewritten values, one plain and one Huffman-coded.
    #[test]
    fn offsets_map_monotonically_and_never_spread() {
        let mut block = vec![0x82];
        block.push(0x41);
        encode_string(&mut block, &[b'/'; 200], false);
        block.push(0x84);
        block.push(0x01);
        encode_string(&mut block, b"%2Fa%2Fb.sock", true);
        block.push(0x86);
        let fields = Decoder::default().decode(&block).unwrap();
        let rw = rewrite(&block, &fields).unwrap();
        assert!(rw.block.len() < block.len());
        let offsets: Vec<usize> = (0..=block.len()).collect();
        let mapped = rw.map_offsets(&offsets);
        assert_eq!(mapped[0], 0);
        assert_eq!(mapped[block.len()], rw.block.len());
        for w in mapped.windows(2) {
            assert!(w[0] <= w[1] && w[1] - w[0] <= 1, "{w:?}");
        }
        // Field ends map to field ends.
        for f in &fields {
            let s = mapped[f.span.start];
            let e = mapped[f.span.end];
            let again = Decoder::default().decode(&rw.block[..e]).unwrap();
            assert_eq!(again.last().unwrap().span.end, e);
            assert!(s < e);
        }
        // Inside a rewritten value the mapped offset stays short of the value's end.
        let auth = &fields[1];
        let at = auth.value_at.unwrap();
        for p in at + 1..auth.span.end {
            assert!(mapped[p] < mapped[auth.span.end], "{p}");
        }
    }

    #[test]
    fn nothing_to_rewrite_gives_none() {
        let mut block = vec![0x41];
        encode_string(&mut block, b"localhost", true);
        block.push(0x01);
        encode_string(&mut block, b"", false);
        encode_int(&mut block, 0x00, 4, 0);
        encode_string(&mut block, b"x-authority", false);
        encode_string(&mut block, b"%2F", false);
        let fields = Decoder::default().decode(&block).unwrap();
        assert_eq!(fields.len(), 3);
        assert!(rewrite(&block, &fields).is_none());
    }
}
