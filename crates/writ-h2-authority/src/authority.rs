//! [`AuthorityFix`]: the shim as an I/O wrapper around one accepted connection.
//!
//! Reads go through the [`crate::shim`] state machine; writes go straight to the connection.
//! Bytes are read from the connection only once everything the shim produced has been handed
//! to h2, so what the wrapper holds stays bounded (see [`crate::shim`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use crate::shim::Shim;

/// A connection whose incoming HTTP/2 header blocks get an `:authority` h2 accepts.
///
/// Generic over the connection; `UnixStream` is the default because that is where grpc-core
/// clients send a socket path as `:authority`. It implements tonic's `Connected` by asking
/// the connection, so a `UnixStream`'s peer address and credentials reach the service.
pub struct AuthorityFix<IO = UnixStream> {
    inner: IO,
    shim: Shim,
}

impl<IO> std::fmt::Debug for AuthorityFix<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("requests_seen", &self.shim.requests_seen())
            .field("rewritten", &self.shim.rewritten())
            .finish_non_exhaustive()
    }
}

impl<IO> AuthorityFix<IO> {
    /// Wraps an accepted connection.
    pub fn new(inner: IO) -> Self {
        AuthorityFix {
            inner,
            shim: Shim::new(),
        }
    }

    /// How many request header blocks have come in (counted while the shim follows the
    /// connection; once it has stopped, any later byte counts as activity, so at least 1).
    pub fn requests_seen(&self) -> u64 {
        self.shim.requests_seen()
    }

    /// How many header blocks had their `:authority` rewritten.
    pub fn rewritten(&self) -> u64 {
        self.shim.rewritten()
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            let ready = this.shim.output();
            if !ready.is_empty() {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                this.shim.consume(n);
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if got.is_empty() {
                        // EOF: hand over whatever is left, then report EOF.
                        this.shim.finish();
                        if this.shim.output().is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    this.shim.push(got);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
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

impl<IO: Connected> Connected for AuthorityFix<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::shim::{
        FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY, FRAME_CONTINUATION,
        FRAME_HEADERS, PREFACE,
    };

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Writes `input` into one end, closes it, and reads the wrapped other end to EOF in
    /// pieces of at most `piece` bytes.
    async fn through<IO>(mut client: IO, server: IO, input: Vec<u8>, piece: usize) -> Vec<u8>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let writer = tokio::spawn(async move {
            client.write_all(&input).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let mut fix = AuthorityFix::new(server);
        let mut out = Vec::new();
        let mut buf = vec![0u8; piece];
        loop {
            let n = fix.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn rewrites_a_split_padded_block_and_keeps_everything_else() {
        // :method POST, :scheme http, :path (literal), :authority (literal, incremental).
        let mut block = vec![0x83, 0x86, 0x04, 0x05];
        block.extend_from_slice(b"/x/Yz");
        block.extend_from_slice(&[0x41, 17]);
        block.extend_from_slice(b"%2Ftmp%2Fapi.sock");
        // Split over HEADERS (with padding and priority) + CONTINUATION, inside the authority.
        let (b1, b2) = block.split_at(14);
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
        let (a, b) = UnixStream::pair().unwrap();
        let out = through(a, b, input.clone(), 64 * 1024).await;
        assert!(out.len() < input.len());
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let rest = &out[PREFACE.len()..];
        assert_eq!(&rest[..settings.len()], settings.as_slice());
        // HEADERS: priority kept, padding dropped, the same 14 bytes of block before the cut
        // (the cut falls inside the value, so it stays inside the new, shorter value).
        let hf = &rest[settings.len()..];
        assert_eq!(hf[3], FRAME_HEADERS);
        assert_eq!(hf[4], FLAG_PRIORITY);
        assert_eq!(&hf[..3], &[0, 0, 19]);
        assert_eq!(&hf[9..14], &[0, 0, 0, 0, 16]);
        let mut got = hf[14..28].to_vec();
        let cf = &hf[28..];
        assert_eq!((cf[3], cf[4]), (FRAME_CONTINUATION, FLAG_END_HEADERS));
        let clen = usize::from(cf[2]);
        got.extend_from_slice(&cf[9..9 + clen]);
        let decoded = fluke_hpack::Decoder::new().decode(&got).unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), b"/x/Yz".to_vec()),
            (b":authority".to_vec(), vec![b'a'; 17]),
        ];
        assert_eq!(decoded, want);
        assert_eq!(&cf[9 + clen..], data.as_slice());
    }

    #[tokio::test]
    async fn blocks_with_nothing_to_rewrite_pass_byte_for_byte_over_any_stream() {
        // RFC 7541 C.4.1 then C.4.2: Huffman strings, a valid authority, and a second block
        // that refers to the first block's `:authority` through the dynamic table; padded.
        let b1 = hex::decode("828684418cf1e3c2e5f23a6ba0ab90f4ff").unwrap();
        let b2 = hex::decode("828684be5886a8eb10649cbf").unwrap();
        let mut padded = vec![2u8];
        padded.extend_from_slice(&b2);
        padded.extend_from_slice(&[0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &b1));
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED,
            3,
            &padded,
        ));
        // A small duplex buffer and tiny reads: the shim sees and hands out partial frames.
        let (a, b) = tokio::io::duplex(7);
        assert_eq!(through(a, b, input.clone(), 5).await, input);
    }

    #[tokio::test]
    async fn non_http2_bytes_pass_through_untouched() {
        let input = b"GET / HTTP/1.1\r\n\r\n\x00\x01garbage".to_vec();
        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(through(a, b, input.clone(), 1024).await, input);
        // A header block that does not decode is passed on as is.
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff],
        ));
        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(through(a, b, input.clone(), 1024).await, input);
    }

    #[tokio::test]
    async fn connect_info_is_the_unix_streams() {
        let (a, b) = UnixStream::pair().unwrap();
        let fix = AuthorityFix::new(b);
        let info = fix.connect_info();
        let cred = info.peer_cred.unwrap();
        assert_eq!(cred.uid(), a.peer_cred().unwrap().uid());
        assert_eq!(cred.pid(), Some(std::process::id() as i32));
    }
}
