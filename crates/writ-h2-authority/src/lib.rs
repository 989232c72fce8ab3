//! writ-h2-authority: lets grpc-core clients talk to a tonic server on a Unix socket.
//!
//! **Why.** grpc-core based clients (py-spiffe, grpc-java, grpc-swift, ...) connected to a Unix
//! socket put the socket path in the HTTP/2 `:authority` pseudo-header, percent-encoded
//! (`%2Frun%2Fwrit%2Fapi.sock`) or raw (`/run/writ/api.sock`). The h2 server under tonic parses
//! `:authority` with `http::uri::Authority`, which refuses both, and resets the stream as
//! malformed; the upstream fix (h2 pull request #487) is not merged. The authority means nothing
//! on a Unix socket, so [`AuthorityFix`] wraps the read side of each accepted connection and
//! makes such a value acceptable before h2 sees it. Nothing here is specific to SPIFFE.
//!
//! **How.** Each header block is decoded ([`hpack`]) to follow the client's HPACK encoder, and
//! forwarded verbatim unless it has an `:authority` literal that h2 would refuse. Such a value
//! of n bytes is replaced by n times `a`, Huffman-coded, in the same representation; every other
//! byte of the block is kept.
//!
//! **Invariants.**
//! - A block never grows, and a block with nothing to rewrite is forwarded byte for byte.
//! - HPACK state stays consistent: names and representations are untouched and a replaced value
//!   has the same length, so every dynamic-table entry has the same size on both sides, the
//!   two tables evict alike, and an index that refers to a replaced `:authority` resolves, on
//!   h2's side, to the replacement.
//! - The shim never fails a connection. What it cannot follow (a frame over 16 KiB, a block over
//!   64 KiB of frames, a block it cannot decode or whose decoded list is over 256 KiB, anything
//!   malformed) is forwarded as it came and the shim stops for that connection; h2 then
//!   answers as it would without the shim, for an oversized header list with a 431 or
//!   RST_STREAM on that stream alone. A rewritten block keeps the client's frame boundaries, so
//!   h2's limits on frames and partial fields see nothing larger than the client sent.
//! - Memory per connection is bounded (one pending block of at most 64 KiB, plus a frame).
//! - No panic on any input (fuzzed through [`internal`]).

mod authority;
pub mod hpack;
mod rewrite;
mod shim;

pub use authority::AuthorityFix;
pub use shim::{MAX_BLOCK, MAX_FRAME};

/// Entry points for fuzzing and tests only; not a stable API.
#[doc(hidden)]
pub mod internal {
    use crate::shim::Shim;

    /// The shim for one connection, fed by hand.
    #[derive(Debug)]
    pub struct Conn(Shim);

    impl Default for Conn {
        fn default() -> Self {
            Conn(Shim::new())
        }
    }

    impl Conn {
        /// Takes bytes from the client; returns what h2 can read now.
        pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
            self.0.push(bytes);
            self.take()
        }

        /// The client closed its side; returns the rest for h2.
        pub fn finish(&mut self) -> Vec<u8> {
            self.0.finish();
            self.take()
        }

        /// Header blocks whose `:authority` was rewritten.
        pub fn rewritten(&self) -> u64 {
            self.0.rewritten()
        }

        /// See `AuthorityFix::requests_seen`.
        pub fn requests_seen(&self) -> u64 {
            self.0.requests_seen()
        }

        fn take(&mut self) -> Vec<u8> {
            let out = self.0.output().to_vec();
            self.0.consume(out.len());
            out
        }
    }

    /// What the shim made of one connection's incoming bytes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Run {
        /// The bytes h2 would read.
        pub output: Vec<u8>,
        /// Header blocks whose `:authority` was rewritten.
        pub rewritten: u64,
    }

    /// Feeds `input` through a fresh shim in pieces of `chunk` bytes (at least 1), as reads
    /// from the connection would deliver it, then the end of the stream.
    pub fn run(input: &[u8], chunk: usize) -> Run {
        let mut conn = Conn::default();
        let mut output = Vec::with_capacity(input.len());
        for piece in input.chunks(chunk.max(1)) {
            output.extend(conn.push(piece));
        }
        output.extend(conn.finish());
        Run {
            output,
            rewritten: conn.rewritten(),
        }
    }

    /// Whether h2 would refuse this `:authority` value (the shim's test).
    pub fn refused(value: &[u8]) -> bool {
        crate::rewrite::refused(value)
    }
}
