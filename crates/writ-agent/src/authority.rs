//! Interoperability shim for gRPC clients that send a Unix socket path as `:authority`.
//!
//! grpc-core based clients (py-spiffe, grpc-java, grpc-swift, ...) connected to a Unix socket put
//! the (percent-encoded) socket path in the HTTP/2 `:authority` pseudo-header. The h2 server
//! under tonic refuses such a value as malformed and resets the stream, so those SPIFFE clients
//! could not talk to the Workload API (SPIRE, in Go, accepts them). The authority means nothing
//! on a Unix socket, so this wrapper rewrites it to `localhost` before h2 sees it:
//!
//! - it sits on the read side of each accepted connection and passes the connection preface and
//!   every frame through unchanged, except header blocks (HEADERS + CONTINUATION frames);
//! - a header block is decoded with an HPACK decoder that follows the client's encoder, its
//!   `:authority` is replaced, and it is re-encoded with literals that never touch the dynamic
//!   table, so the server's HPACK decoder state stays empty and consistent;
//! - anything it cannot parse is passed through untouched and rewriting stops for that
//!   connection: h2 then reports the problem exactly as it would have without the shim.
//!
//! Writes go straight to the socket. The wrapper keeps the socket's peer credentials for
//! workload attestation.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame we emit (the HTTP/2 default SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME: usize = 16_384;
/// Header blocks larger than this are passed through (and rewriting stops).
const MAX_BLOCK: usize = 1024 * 1024;

/// A header block being collected across HEADERS and CONTINUATION frames.
struct Pending {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    raw: Vec<u8>,
}

/// A Unix stream whose incoming HTTP/2 header blocks get a valid `:authority`.
pub struct AuthorityFix {
    inner: UnixStream,
    raw: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    preface_done: bool,
    active: bool,
    pending: Option<Pending>,
    decoder: crate::hpack::Decoder,
}

impl std::fmt::Debug for AuthorityFix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("active", &self.active)
            .finish()
    }
}

impl AuthorityFix {
    /// Wraps an accepted connection.
    pub fn new(inner: UnixStream) -> Self {
        AuthorityFix {
            inner,
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            preface_done: false,
            active: true,
            pending: None,
            decoder: crate::hpack::Decoder::default(),
        }
    }

    /// Stops rewriting: everything buffered and everything after is passed through as is.
    fn give_up(&mut self) {
        self.active = false;
        if let Some(p) = self.pending.take() {
            self.out.extend_from_slice(&p.raw);
        }
        self.out.append(&mut self.raw);
    }

    /// Moves whatever complete units are in `raw` to `out`, rewriting header blocks.
    fn process(&mut self) {
        if !self.active {
            self.out.append(&mut self.raw);
            return;
        }
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
            if self.raw.len() < 9 + len {
                return;
            }
            let frame: Vec<u8> = self.raw.drain(..9 + len).collect();
            let (kind, flags) = (frame[3], frame[4]);
            let stream_id = u32::from_be_bytes([frame[5] & 0x7f, frame[6], frame[7], frame[8]]);
            let payload = &frame[9..];
            match kind {
                FRAME_HEADERS if self.pending.is_none() => {
                    let mut p = payload;
                    let mut pad = 0usize;
                    if flags & FLAG_PADDED != 0 {
                        let Some((&n, rest)) = p.split_first() else {
                            return self.give_up_with(frame);
                        };
                        pad = usize::from(n);
                        p = rest;
                    }
                    let mut priority = None;
                    if flags & FLAG_PRIORITY != 0 {
                        if p.len() < 5 {
                            return self.give_up_with(frame);
                        }
                        let mut pr = [0u8; 5];
                        pr.copy_from_slice(&p[..5]);
                        priority = Some(pr);
                        p = &p[5..];
                    }
                    if pad > p.len() {
                        return self.give_up_with(frame);
                    }
                    let block = p[..p.len() - pad].to_vec();
                    self.pending = Some(Pending {
                        stream_id,
                        end_stream: flags & FLAG_END_STREAM != 0,
                        priority,
                        block,
                        raw: frame.clone(),
                    });
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish_block();
                    }
                }
                FRAME_CONTINUATION
                    if self
                        .pending
                        .as_ref()
                        .is_some_and(|p| p.stream_id == stream_id) =>
                {
                    if let Some(p) = self.pending.as_mut() {
                        p.block.extend_from_slice(payload);
                        p.raw.extend_from_slice(&frame);
                        if p.block.len() > MAX_BLOCK {
                            return self.give_up();
                        }
                    }
                    if flags & FLAG_END_HEADERS != 0 {
                        self.finish_block();
                    }
                }
                // Anything else while a header block is open is a protocol error: let h2 say so.
                _ if self.pending.is_some() => return self.give_up_with(frame),
                _ => self.out.extend_from_slice(&frame),
            }
        }
    }

    fn give_up_with(&mut self, frame: Vec<u8>) {
        if let Some(p) = self.pending.take() {
            self.out.extend_from_slice(&p.raw);
        }
        self.out.extend_from_slice(&frame);
        self.give_up();
    }

    fn finish_block(&mut self) {
        let Some(p) = self.pending.take() else { return };
        let headers = match self.decoder.decode(&p.block) {
            Ok(h) => h,
            Err(_) => {
                // The decoder's table is now unknown: pass this block and everything after.
                self.out.extend_from_slice(&p.raw);
                return self.give_up();
            }
        };
        let mut block = Vec::with_capacity(p.block.len() + 16);
        for f in &headers {
            let value: &[u8] = if f.name == b":authority" {
                b"localhost"
            } else {
                &f.value
            };
            crate::hpack::encode_literal(&mut block, &f.name, value, f.sensitive);
        }
        let mut first = Vec::new();
        if let Some(pr) = p.priority {
            first.extend_from_slice(&pr);
        }
        let room = MAX_FRAME - first.len();
        let (head, mut rest) = block.split_at(block.len().min(room));
        first.extend_from_slice(head);
        let mut flags = if p.end_stream { FLAG_END_STREAM } else { 0 };
        if p.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        self.push_frame(FRAME_HEADERS, flags, p.stream_id, &first);
        while !rest.is_empty() {
            let (chunk, r) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = r;
            let f = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
            self.push_frame(FRAME_CONTINUATION, f, p.stream_id, chunk);
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

impl AsyncRead for AuthorityFix {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if got.is_empty() {
                        // EOF: hand over whatever is left, then report EOF.
                        this.give_up();
                        if this.out.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    this.raw.extend_from_slice(got);
                    this.process();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for AuthorityFix {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for AuthorityFix {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        UdsConnectInfo {
            peer_addr: self.inner.peer_addr().ok().map(Arc::new),
            peer_cred: self.inner.peer_cred().ok(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    async fn through(input: Vec<u8>) -> Vec<u8> {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut fix = AuthorityFix::new(b);
        a.write_all(&input).await.unwrap();
        a.shutdown().await.unwrap();
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn rewrites_the_authority_and_keeps_everything_else() {
        let mut enc = fluke_hpack::Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", b"%2Ftmp%2Fapi.sock"),
            (b"workload.spiffe.io", b"true"),
        ];
        let block = enc.encode(headers.clone());
        // Split the block over HEADERS (with padding and priority) + CONTINUATION.
        let (b1, b2) = block.split_at(10);
        let mut h = vec![3u8];
        h.extend_from_slice(&[0, 0, 0, 0, 16]);
        h.extend_from_slice(b1);
        h.extend_from_slice(&[0, 0, 0]);
        let settings = frame(0x4, 0, 0, &[]);
        let data = frame(0x0, FLAG_END_STREAM, 1, b"\x00\x00\x00\x00\x00");
        let mut input = PREFACE.to_vec();
        input.extend(&settings);
        input.extend(frame(FRAME_HEADERS, FLAG_PADDED | FLAG_PRIORITY, 1, &h));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, b2));
        input.extend(&data);
        let out = through(input).await;
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let rest = &out[PREFACE.len()..];
        assert_eq!(&rest[..settings.len()], settings.as_slice());
        let hf = &rest[settings.len()..];
        let len = (usize::from(hf[0]) << 16) | (usize::from(hf[1]) << 8) | usize::from(hf[2]);
        assert_eq!(hf[3], FRAME_HEADERS);
        assert_eq!(hf[4], FLAG_PRIORITY | FLAG_END_HEADERS);
        let payload = &hf[9..9 + len];
        assert_eq!(&payload[..5], &[0, 0, 0, 0, 16]);
        let decoded: Vec<(Vec<u8>, Vec<u8>)> = crate::hpack::Decoder::default()
            .decode(&payload[5..])
            .unwrap()
            .into_iter()
            .map(|f| (f.name, f.value))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_vec(),
                    if *n == b":authority" {
                        b"localhost".to_vec()
                    } else {
                        v.to_vec()
                    },
                )
            })
            .collect();
        assert_eq!(decoded, want);
        assert_eq!(&hf[9 + len..], data.as_slice());
    }

    #[tokio::test]
    async fn huffman_coded_authority_and_dynamic_table_across_blocks() {
        // RFC 7541 C.4.1 then C.4.2: Huffman strings, and a second block that refers to the
        // first block's `:authority` through the dynamic table (index 62).
        let b1 = hex::decode("828684418cf1e3c2e5f23a6ba0ab90f4ff").unwrap();
        let b2 = hex::decode("828684be5886a8eb10649cbf").unwrap();
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &b1));
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 3, &b2));
        let out = through(input).await;
        let mut rest = &out[PREFACE.len()..];
        // The server side decodes our output with a fresh decoder: it never indexes anything.
        let mut server = crate::hpack::Decoder::default();
        for stream in [1u32, 3] {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            assert_eq!(rest[3], FRAME_HEADERS);
            assert_eq!(
                u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]),
                stream
            );
            let fields = server.decode(&rest[9..9 + len]).unwrap();
            let authority: Vec<_> = fields.iter().filter(|f| f.name == b":authority").collect();
            assert_eq!(authority.len(), 1);
            assert_eq!(authority[0].value, b"localhost");
            assert_eq!(fields.len(), if stream == 1 { 4 } else { 5 });
            rest = &rest[9 + len..];
        }
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn non_http2_bytes_pass_through_untouched() {
        let input = b"GET / HTTP/1.1\r\n\r\n\x00\x01garbage".to_vec();
        assert_eq!(through(input.clone()).await, input);
        // A header block that does not decode is passed on as is.
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff],
        ));
        assert_eq!(through(input.clone()).await, input);
    }
}
