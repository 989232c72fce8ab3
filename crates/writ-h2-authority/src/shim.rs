//! The shim's state machine for one connection's incoming bytes, without I/O.
//!
//! It passes the connection preface and every frame through unchanged, except header blocks
//! (HEADERS + CONTINUATION frames) that contain an `:authority` literal h2 would refuse; those
//! are rewritten ([`crate::rewrite`]) and re-framed on the client's own frame boundaries.
//!
//! Invariants:
//! - A header block with nothing to rewrite is forwarded byte for byte, frames and padding
//!   included. A rewritten block keeps its stream, END_STREAM, PRIORITY and number of frames,
//!   drops padding, and no frame grows: the output is never longer than the input.
//! - Anything the shim cannot follow turns it off for the rest of the connection, with
//!   everything buffered and everything after forwarded as it came: input that is not HTTP/2, a
//!   frame longer than [`MAX_FRAME`] (handed to h2 at once, never buffered whole; h2 refuses it),
//!   a header block whose frames exceed [`MAX_BLOCK`], a malformed frame, a frame interleaved
//!   with a header block, a block our decoder refuses or whose decoded list exceeds its cap.
//!   This is safe at any point: every block before was rewritten without changing the size of
//!   a dynamic-table entry, so h2's HPACK decoder is in step with the client's encoder, and h2
//!   then answers exactly as it would without the shim (an oversized list: 431 or RST_STREAM on
//!   that stream only).
//! - The shim never fails the connection itself. Memory: a pending header block is at most
//!   [`MAX_BLOCK`] plus one frame; incoming bytes are parsed as they come.

use crate::hpack::Decoder;
use crate::rewrite::rewrite;

/// The HTTP/2 client connection preface.
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(crate) const FRAME_HEADERS: u8 = 0x1;
pub(crate) const FRAME_CONTINUATION: u8 = 0x9;
pub(crate) const FLAG_END_STREAM: u8 = 0x1;
pub(crate) const FLAG_END_HEADERS: u8 = 0x4;
pub(crate) const FLAG_PADDED: u8 = 0x8;
pub(crate) const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame followed: SETTINGS_MAX_FRAME_SIZE's default, which h2 under tonic keeps
/// unless the server raises it. A larger frame turns the shim off.
pub const MAX_FRAME: usize = 16_384;
/// The most bytes of header-block frames buffered (headers, padding and all). A larger block
/// turns the shim off. h2 refuses a decoded header list over 16 KiB by default anyway, and a
/// compressed block is never much smaller than its decoded list, so no block h2 would accept is
/// cut off.
pub const MAX_BLOCK: usize = 64 * 1024;

/// A header block being collected across HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct Pending {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    /// The header block fragments, without padding and priority.
    block: Vec<u8>,
    /// Where each frame's fragment ends in `block`, in order.
    bounds: Vec<usize>,
    /// The frames as received.
    raw: Vec<u8>,
}

/// One connection's incoming side.
#[derive(Debug)]
pub(crate) struct Shim {
    /// Received, not yet parsed.
    raw: Vec<u8>,
    /// Ready for h2; `out_pos` bytes of it are already handed over.
    out: Vec<u8>,
    out_pos: usize,
    preface_done: bool,
    active: bool,
    pending: Option<Pending>,
    decoder: Decoder,
    requests: u64,
    rewritten: u64,
}

impl Shim {
    pub(crate) fn new() -> Self {
        Shim {
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            preface_done: false,
            active: true,
            pending: None,
            decoder: Decoder::default(),
            requests: 0,
            rewritten: 0,
        }
    }

    /// Takes bytes received from the client.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.active {
            self.raw.extend_from_slice(bytes);
            self.process();
        } else {
            self.out.extend_from_slice(bytes);
        }
    }

    /// The client closed its side: everything held back goes to h2 as it is.
    pub(crate) fn finish(&mut self) {
        self.give_up();
    }

    /// Bytes ready for h2.
    pub(crate) fn output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// Marks `n` bytes of [`Shim::output`] as handed over.
    pub(crate) fn consume(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Complete request header blocks seen (while rewriting is on; once the shim is off, any
    /// later byte counts as activity, so at least 1).
    pub(crate) fn requests_seen(&self) -> u64 {
        if self.active {
            self.requests
        } else {
            self.requests.max(1)
        }
    }

    /// Header blocks rewritten so far.
    pub(crate) fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Turns the shim off: everything buffered and everything after is passed through as is.
    fn give_up(&mut self) {
        self.active = false;
        if let Some(p) = self.pending.take() {
            self.out.extend_from_slice(&p.raw);
        }
        self.out.append(&mut self.raw);
    }

    /// Gives up with `frame` (already taken out of `raw`) forwarded after the pending block.
    fn give_up_with(&mut self, frame: &[u8]) {
        if let Some(p) = self.pending.take() {
            self.out.extend_from_slice(&p.raw);
        }
        self.out.extend_from_slice(frame);
        self.give_up();
    }

    /// Moves whatever complete units are in `raw` to `out`, rewriting header blocks.
    fn process(&mut self) {
        if !self.preface_done {
            let n = self.raw.len().min(PREFACE.len());
            if self.raw[..n] != PREFACE[..n] {
                return self.give_up();
            }
            if self.raw.len() < PREFACE.len() {
                return;
            }
            self.out.extend(self.raw.drain(..PREFACE.len()));
            self.preface_done = true;
        }
        while self.active && self.raw.len() >= 9 {
            let len = (usize::from(self.raw[0]) << 16)
                | (usize::from(self.raw[1]) << 8)
                | usize::from(self.raw[2]);
            if len > MAX_FRAME {
                // h2 refuses it (FRAME_SIZE_ERROR): hand it over now rather than buffer up to
                // 16 MiB first.
                return self.give_up();
            }
            if self.raw.len() < 9 + len {
                return;
            }
            let frame: Vec<u8> = self.raw.drain(..9 + len).collect();
            self.frame(&frame);
        }
    }

    fn frame(&mut self, frame: &[u8]) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = u32::from_be_bytes([frame[5] & 0x7f, frame[6], frame[7], frame[8]]);
        let payload = &frame[9..];
        let open_on = self.pending.as_ref().map(|p| p.stream_id);
        match kind {
            FRAME_HEADERS if open_on.is_none() => {
                let Some((priority, fragment)) = headers_payload(flags, payload) else {
                    // Malformed: h2 says so.
                    return self.give_up_with(frame);
                };
                self.pending = Some(Pending {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    block: fragment.to_vec(),
                    bounds: vec![fragment.len()],
                    raw: frame.to_vec(),
                });
                if flags & FLAG_END_HEADERS != 0 {
                    self.finish_block();
                }
            }
            FRAME_CONTINUATION if open_on == Some(stream_id) => {
                let Some(p) = self.pending.as_mut() else {
                    return;
                };
                p.block.extend_from_slice(payload);
                p.bounds.push(p.block.len());
                p.raw.extend_from_slice(frame);
                if p.raw.len() > MAX_BLOCK {
                    return self.give_up();
                }
                if flags & FLAG_END_HEADERS != 0 {
                    self.finish_block();
                }
            }
            // Anything else while a header block is open is a protocol error: let h2 say so.
            _ if open_on.is_some() => self.give_up_with(frame),
            _ => self.out.extend_from_slice(frame),
        }
    }

    fn finish_block(&mut self) {
        let Some(p) = self.pending.take() else { return };
        self.requests += 1;
        let fields = match self.decoder.decode(&p.block) {
            Ok(f) => f,
            Err(_) => {
                // Our table no longer follows the client's: forward this and everything after.
                self.out.extend_from_slice(&p.raw);
                return self.give_up();
            }
        };
        let Some(rw) = rewrite(&p.block, &fields) else {
            self.out.extend_from_slice(&p.raw);
            return;
        };
        self.rewritten += 1;
        let ends = rw.map_offsets(&p.bounds);
        let last = ends.len().saturating_sub(1);
        let mut start = 0usize;
        for (i, &end) in ends.iter().enumerate() {
            let chunk = rw.block.get(start..end).unwrap_or_default();
            start = end;
            let mut flags = if i == last { FLAG_END_HEADERS } else { 0 };
            if i == 0 {
                if p.end_stream {
                    flags |= FLAG_END_STREAM;
                }
                let mut payload = Vec::with_capacity(5 + chunk.len());
                if let Some(pr) = p.priority {
                    flags |= FLAG_PRIORITY;
                    payload.extend_from_slice(&pr);
                }
                payload.extend_from_slice(chunk);
                self.push_frame(FRAME_HEADERS, flags, p.stream_id, &payload);
            } else {
                self.push_frame(FRAME_CONTINUATION, flags, p.stream_id, chunk);
            }
        }
    }

    fn push_frame(&mut self, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
        let len = payload.len();
        self.out
            .extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
        self.out.extend_from_slice(&stream_id.to_be_bytes());
        self.out.extend_from_slice(payload);
    }
}

/// Splits a HEADERS payload into its priority fields and its header block fragment, without
/// padding; `None` if malformed.
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        pad = usize::from(n);
        p = rest;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let (pr, rest) = p.split_first_chunk::<5>()?;
        priority = Some(*pr);
        p = rest;
    }
    let end = p.len().checked_sub(pad)?;
    Some((priority, &p[..end]))
}
