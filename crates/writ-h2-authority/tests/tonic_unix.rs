//! End to end: a real tonic server on a Unix socket behind [`AuthorityFix`], and a hand-built
//! HTTP/2 client on a raw socket that sends what grpc-core and grpc-js clients send.
//!
//! On ONE connection the client sends (a) a request whose header block is too large for h2
//! (about 26.5 KB Huffman-coded, about 43 KB decoded; h2 under tonic accepts 16 KiB) and whose
//! percent-encoded `:authority` goes into the HPACK dynamic table, then (b) a normal request that
//! refers to that `:authority` by dynamic-table index. (a) must be refused on its own (431 or
//! RST_STREAM), (b) must be answered, and the connection must stay up (no GOAWAY).
//!
//! The old shim re-encoded every field as a plain literal: (a) grew to about 43 KB, h2 closed
//! the whole connection with GOAWAY(COMPRESSION_ERROR) and (b) was lost. Without any shim, (b)
//! is reset because of its `:authority`.
//!
//! Only `AuthorityFix::new(UnixStream)` and its `Connected` impl are used, so this test also
//! runs against the old shim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tonic::body::Body;
use writ_h2_authority::AuthorityFix;

/// A gRPC service that answers every call with an empty OK.
#[derive(Clone)]
struct Ok200;

impl tonic::server::NamedService for Ok200 {
    const NAME: &'static str = "test.Ok";
}

impl tonic::codegen::Service<http::Request<Body>> for Ok200 {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        let mut res = http::Response::new(Body::empty());
        res.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        res.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("0"));
        std::future::ready(Ok(res))
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block as HEADERS + CONTINUATION frames of at most `max` bytes.
fn header_frames(stream: u32, block: &[u8], end_stream: bool, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunks = block.chunks(max).peekable();
    let mut first = true;
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        let mut flags = if last { END_HEADERS } else { 0 };
        if first && end_stream {
            flags |= END_STREAM;
        }
        let kind = if first { HEADERS } else { CONTINUATION };
        out.extend(frame(kind, flags, stream, c));
        first = false;
    }
    out
}

/// An HPACK string literal without Huffman coding (7-bit prefix length, RFC 7541 5.1).
fn plain(out: &mut Vec<u8>, s: &[u8]) {
    int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

fn int(out: &mut Vec<u8>, first: u8, prefix: u8, mut n: usize) {
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

/// A Huffman-coded string over the ten symbols whose codes are 5 bits: `0 1 2 a c e i o s t`
/// have the codes 0..=9 (RFC 7541 Appendix B). Enough for the test's large values.
fn huffman5(out: &mut Vec<u8>, s: &[u8]) {
    const SYMBOLS: &[u8] = b"012aceiost";
    let (mut acc, mut bits, mut body) = (0u32, 0u32, Vec::new());
    for c in s {
        let code = SYMBOLS.iter().position(|x| x == c).unwrap() as u32;
        acc = (acc << 5) | code;
        bits += 5;
        while bits >= 8 {
            bits -= 8;
            body.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        body.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
    }
    int(out, 0x80, 7, body.len());
    out.extend(body);
}

/// Request (a): a grpc-js-like block that inserts the percent-encoded socket path as
/// `:authority` into the dynamic table (index 62), then 40 metadata fields of 1040 bytes:
/// Huffman-coded, about 26.5 KB; plain, about 42 KB. Decoded, about 43 KB either way: over
/// h2's 16 KiB, under the 64 KiB at which h2 closes the connection whatever the framing.
fn oversized_block(huffman: bool) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
    b.push(0x04); // :path, indexed name, without indexing
    plain(&mut b, b"/test.Ok/Call");
    b.push(0x41); // :authority, indexed name, with incremental indexing
    plain(&mut b, b"%2Frun%2Fwrit%2Fapi.sock");
    let mut x = 0x2545_f491_u32;
    for i in 0..40 {
        b.push(0x00); // new name, without indexing
        plain(&mut b, format!("x-meta-{i:02}").as_bytes());
        let value: Vec<u8> = (0..1040)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                b"012aceiost"[(x % 10) as usize]
            })
            .collect();
        if huffman {
            huffman5(&mut b, &value);
        } else {
            plain(&mut b, &value);
        }
    }
    b
}

/// Request (b): a normal gRPC request whose `:authority` is the dynamic-table entry (a) added.
fn normal_block() -> Vec<u8> {
    let mut b = vec![0x83, 0x86, 0x04];
    plain(&mut b, b"/test.Ok/Call");
    b.push(0xbe); // index 62: (a)'s :authority
    b.push(0x0f);
    b.push(0x10); // content-type (static 31), without indexing
    plain(&mut b, b"application/grpc");
    b.push(0x00);
    plain(&mut b, b"te");
    plain(&mut b, b"trailers");
    b
}

#[derive(Debug, Default)]
struct Seen {
    status: std::collections::HashMap<u32, String>,
    reset: std::collections::HashMap<u32, u32>,
    goaway: Option<u32>,
    ping_ack: bool,
}

async fn read_frame(c: &mut UnixStream) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    c.read_exact(&mut h).await?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let mut p = vec![0u8; len];
    c.read_exact(&mut p).await?;
    let stream = u32::from_be_bytes([h[5] & 0x7f, h[6], h[7], h[8]]);
    Ok((h[3], h[4], stream, p))
}

/// Sends (a) in frames of at most `max` bytes and (b), then reads the server's frames until
/// both streams have an answer and our PING is acknowledged, the server sends GOAWAY, or the
/// connection ends.
async fn run_client(mut c: UnixStream, big: &[u8], max: usize) -> Seen {
    let mut input = PREFACE.to_vec();
    input.extend(frame(SETTINGS, 0, 0, &[]));
    input.extend(header_frames(1, big, true, max));
    input.extend(header_frames(3, &normal_block(), true, 16_384));
    // Write errors are not fatal here: the server may already have closed the connection,
    // which the frames read below show.
    let _ = c.write_all(&input).await;

    let mut hpack = fluke_hpack::Decoder::new();
    let mut seen = Seen::default();
    let mut block: Vec<u8> = Vec::new();
    let mut pinged = false;
    while let Ok((kind, flags, stream, payload)) = read_frame(&mut c).await {
        match kind {
            SETTINGS if flags & ACK == 0 => {
                let _ = c.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
            }
            HEADERS | CONTINUATION => {
                block.extend_from_slice(&payload);
                if flags & END_HEADERS != 0 {
                    let fields = hpack.decode(&block).unwrap();
                    block.clear();
                    for (n, v) in fields {
                        if n == b":status" {
                            seen.status.insert(stream, String::from_utf8(v).unwrap());
                        }
                    }
                }
            }
            RST_STREAM => {
                let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                seen.reset.insert(stream, code);
            }
            GOAWAY => {
                seen.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                break;
            }
            PING if flags & ACK != 0 => {
                seen.ping_ack = true;
                break;
            }
            _ => {}
        }
        let answered = |s: u32| seen.status.contains_key(&s) || seen.reset.contains_key(&s);
        if !pinged && answered(1) && answered(3) {
            // Both streams are settled: check that the connection itself is still alive.
            let _ = c.write_all(&frame(PING, 0, 0, b"12345678")).await;
            pinged = true;
        }
    }
    seen
}

/// Serves [`Ok200`] behind the shim on a fresh socket, runs the client with (a) = `big` in
/// frames of at most `max` bytes, and checks the outcome.
async fn refused_alone_and_next_answered(big: Vec<u8>, max: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let incoming = UnixListenerStream::new(listener).map(|s| s.map(AuthorityFix::new));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Ok200)
            .serve_with_incoming(incoming),
    );

    let c = UnixStream::connect(&path).await.unwrap();
    // A guard against a hang, not a timing assertion.
    let seen = tokio::time::timeout(Duration::from_secs(60), run_client(c, &big, max))
        .await
        .expect("the server answered");
    server.abort();

    assert_eq!(
        seen.goaway, None,
        "the server closed the whole connection: {seen:?}"
    );
    assert!(seen.ping_ack, "the connection did not stay up: {seen:?}");
    // (a) refused on its own: 431, or a stream reset.
    assert!(
        seen.status.get(&1).map(String::as_str) == Some("431") || seen.reset.contains_key(&1),
        "the oversized request was not refused per stream: {seen:?}"
    );
    // (b) answered, its dynamic-table `:authority` accepted.
    assert_eq!(
        seen.status.get(&3).map(String::as_str),
        Some("200"),
        "the normal request was not answered: {seen:?}"
    );
    assert!(!seen.reset.contains_key(&3), "{seen:?}");
}

/// (a) Huffman-coded, about 26.5 KB, in 16 KiB frames (as grpc-js sends it).
#[tokio::test]
async fn oversized_request_is_refused_per_stream_and_the_next_one_is_answered() {
    let big = oversized_block(true);
    assert!((26_000..27_000).contains(&big.len()), "{}", big.len());
    refused_alone_and_next_answered(big, 16_384).await;
}

/// (a) plain, about 42 KB, in 10 KB frames. h2 tolerates an oversized block's CONTINUATION
/// frames only while the undecoded rest plus the frame stay under its 16 KiB list limit, so a
/// shim that re-framed this block into 16 KiB frames would get the connection closed even
/// though the client's own frames are fine.
#[tokio::test]
async fn oversized_request_in_small_frames_is_refused_per_stream_too() {
    let big = oversized_block(false);
    assert!((41_000..43_000).contains(&big.len()), "{}", big.len());
    refused_alone_and_next_answered(big, 10_000).await;
}
