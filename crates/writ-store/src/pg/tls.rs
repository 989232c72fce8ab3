//! TLS to PostgreSQL with rustls (ring), for `[store.postgres] ca_file`: the server's
//! certificate must chain to those roots and name the host the URL connects to (libpq's
//! `sslmode=verify-full`). Without `ca_file` connections are plain (a Unix socket or a private
//! network); a URL asking for `sslmode=require` without `ca_file` is refused, since nothing
//! could verify the server.
//!
//! Channel binding is not offered (SCRAM without `-PLUS`); the certificate check is what binds
//! the session to the server.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, NoTlsStream, TlsConnect, TlsStream};
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls, Socket};

use crate::StoreError;

/// How connections are made.
#[derive(Clone)]
pub(crate) enum Tls {
    /// Plain TCP or Unix socket.
    Off,
    /// TLS verified against the configured roots.
    On(Arc<rustls::ClientConfig>),
}

impl Tls {
    /// From the PEM roots of `ca_file` (None: plain).
    pub(crate) fn from_pem(pem: Option<&str>) -> Result<Self, StoreError> {
        let Some(pem) = pem else {
            return Ok(Tls::Off);
        };
        let bad = |m: String| StoreError::Open {
            path: "[store.postgres] ca_file".into(),
            source: m.into(),
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
            let c = c.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
            roots
                .add(c)
                .map_err(|e| bad(format!("unusable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("holds no certificate".into()));
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Tls::On(Arc::new(cfg)))
    }

    /// Connects with `cfg`.
    pub(crate) async fn connect(
        &self,
        cfg: &Config,
    ) -> Result<(Client, PgConnection), tokio_postgres::Error> {
        Ok(match self {
            Tls::Off => {
                let (c, conn) = cfg.connect(NoTls).await?;
                (c, PgConnection::Plain(Box::new(conn)))
            }
            Tls::On(tls) => {
                let (c, conn) = cfg.connect(MakeRustls(tls.clone())).await?;
                (c, PgConnection::Tls(Box::new(conn)))
            }
        })
    }
}

/// A connection's driving half, plain or TLS.
pub(crate) enum PgConnection {
    // Boxed: the two differ in size (a TLS session holds ~1 KB more state).
    Plain(Box<Connection<Socket, NoTlsStream>>),
    Tls(Box<Connection<Socket, RustlsStream>>),
}

impl PgConnection {
    /// The next asynchronous message (notifications), driving the connection meanwhile.
    pub(crate) fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>> {
        match self {
            PgConnection::Plain(c) => c.poll_message(cx),
            PgConnection::Tls(c) => c.poll_message(cx),
        }
    }
}

impl Future for PgConnection {
    type Output = Result<(), tokio_postgres::Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            PgConnection::Plain(c) => Pin::new(c.as_mut()).poll(cx),
            PgConnection::Tls(c) => Pin::new(c.as_mut()).poll(cx),
        }
    }
}

#[derive(Clone)]
struct MakeRustls(Arc<rustls::ClientConfig>);

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            cfg: self.0.clone(),
            name,
        })
    }
}

struct RustlsConnect {
    cfg: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.cfg)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(s))
        })
    }
}

/// A TLS session to PostgreSQL.
pub(crate) struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
