//! writ-mtls-demo: two services that take their identity from the SPIFFE Workload API,
//! authorise each other by SPIFFE ID, and pick up rotated SVIDs without a restart.
//!
//! ```sh
//! writ-mtls-demo server --listen 127.0.0.1:8443 --allow spiffe://example.org/client --hint server
//! writ-mtls-demo client --connect 127.0.0.1:8443 --expect spiffe://example.org/server --hint client
//! ```
//! Both read `SPIFFE_ENDPOINT_SOCKET` (or `--socket`). The server answers any HTTP request with
//! the caller's SPIFFE ID, so `curl` and `openssl s_client` with files written by
//! `writ svid fetch --out-dir` work against it too.

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use writ_core::{Bundle, SpiffeId, TrustDomain};
use writ_proto::workload as wl;
use writ_tls::{exact_id, SharedBundle, SpiffeClientVerifier, SpiffeServerVerifier, SvidResolver};

#[derive(Parser)]
#[command(
    name = "writ-mtls-demo",
    about = "mTLS between services using SPIFFE identities from the Workload API"
)]
struct Cli {
    /// Workload API address (default: SPIFFE_ENDPOINT_SOCKET).
    #[arg(long, global = true)]
    socket: Option<String>,
    /// Use the SVID with this hint (default: the first, i.e. the default SVID).
    #[arg(long, global = true)]
    hint: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve mTLS; only clients with the allowed SPIFFE ID get in.
    Server {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        allow: String,
    },
    /// Call the server; only a server with the expected SPIFFE ID is trusted.
    Client {
        #[arg(long)]
        connect: String,
        #[arg(long)]
        expect: String,
        /// Number of requests (one new connection each).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Seconds between requests.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
}

/// The current SVID and bundles, kept in step with the Workload API stream.
struct Identity {
    resolver: Arc<SvidResolver>,
    bundles: SharedBundle,
}

fn bundle_from_der(td_id: &str, der: &[u8]) -> Result<Bundle, String> {
    let td = TrustDomain::new(td_id).map_err(|e| e.to_string())?;
    let mut b = Bundle::new(td);
    b.x509_authorities = writ_core::bundle::split_der_certs(der, 64).map_err(|e| e.to_string())?;
    Ok(b)
}

fn pick<'a>(r: &'a wl::X509svidResponse, hint: Option<&str>) -> Result<&'a wl::X509svid, String> {
    match hint {
        Some(h) => r
            .svids
            .iter()
            .find(|s| s.hint == h)
            .ok_or_else(|| format!("no SVID with hint `{h}`")),
        None => r.svids.first().ok_or_else(|| "no SVID".to_owned()),
    }
}

/// A chain, its PKCS#8 key, and the bundles to trust.
type Material = (Vec<Vec<u8>>, Vec<u8>, Vec<Bundle>);

fn apply(r: &wl::X509svidResponse, hint: Option<&str>) -> Result<Material, String> {
    let s = pick(r, hint)?;
    let chain = writ_core::bundle::split_der_certs(&s.x509_svid, 16).map_err(|e| e.to_string())?;
    let id = SpiffeId::parse(&s.spiffe_id).map_err(|e| e.to_string())?;
    let mut bundles = vec![bundle_from_der(&id.trust_domain().id_string(), &s.bundle)?];
    for (td, der) in &r.federated_bundles {
        bundles.push(bundle_from_der(td, der)?);
    }
    Ok((chain, s.x509_svid_key.clone(), bundles))
}

/// Fetches the first answer, then keeps the identity updated in the background.
async fn identity(socket: Option<String>, hint: Option<String>) -> Result<Arc<Identity>, String> {
    let mut c = writ_client::workload::connect(socket.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let mut st = c
        .fetch_x509svid(wl::X509svidRequest {})
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let first = st
        .message()
        .await
        .map_err(|s| s.message().to_owned())?
        .ok_or("stream closed")?;
    let (chain, key, bundles) = apply(&first, hint.as_deref())?;
    let ident = Arc::new(Identity {
        resolver: SvidResolver::new(&chain, &key).map_err(|e| e.to_string())?,
        bundles: SharedBundle::new(bundles),
    });
    let i2 = ident.clone();
    tokio::spawn(async move {
        // Every new message is a rotation or a bundle change: swap them in; the next handshake
        // uses them, nothing restarts.
        while let Ok(Some(r)) = st.message().await {
            match apply(&r, hint.as_deref()) {
                Ok((chain, key, bundles)) => {
                    if let Err(e) = i2.resolver.update(&chain, &key) {
                        eprintln!("cannot use new SVID: {e}");
                    }
                    i2.bundles.set(bundles);
                    eprintln!("picked up a new SVID");
                }
                Err(e) => eprintln!("ignoring update: {e}"),
            }
        }
        eprintln!("Workload API stream ended");
    });
    Ok(ident)
}

fn serial(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der)
        .map(|(_, c)| c.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default()
}

async fn server(ident: Arc<Identity>, listen: &str, allow: SpiffeId) -> Result<(), String> {
    let verifier = SpiffeClientVerifier::new(ident.bundles.clone(), exact_id(allow), false);
    let mut cfg =
        writ_tls::server_config(ident.resolver.clone(), verifier).map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "listening on {}",
        l.local_addr().map_err(|e| e.to_string())?
    );
    loop {
        let (tcp, peer) = l.accept().await.map_err(|e| e.to_string())?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{peer}: refused: {e}");
                    return;
                }
            };
            let peer_id = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| writ_ca::svid::check_leaf(c.as_ref()).ok())
                .map(|i| i.to_string())
                .unwrap_or_default();
            let mut buf = vec![0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
            let body = format!("hello {peer_id}\n");
            let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = tls.write_all(resp.as_bytes()).await;
            let _ = tls.shutdown().await;
        });
    }
}

async fn client(
    ident: Arc<Identity>,
    addr: &str,
    expect: SpiffeId,
    count: u32,
    interval: f64,
) -> Result<(), String> {
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs_f64(interval)).await;
        }
        let verifier = SpiffeServerVerifier::new(ident.bundles.clone(), exact_id(expect.clone()));
        let mut cfg = writ_tls::client_config(verifier, Some(ident.resolver.clone()))
            .map_err(|e| e.to_string())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name =
            rustls_pki_types::ServerName::try_from("writ-mtls-demo").map_err(|e| e.to_string())?;
        let mut tls = conn
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let server_serial = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| serial(c.as_ref()))
            .unwrap_or_default();
        tls.write_all(b"GET / HTTP/1.1\r\nhost: demo\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut resp = String::new();
        tls.read_to_string(&mut resp)
            .await
            .map_err(|e| e.to_string())?;
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        println!("{body} (server SVID serial {server_serial})");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = async {
        let ident = identity(cli.socket.clone(), cli.hint.clone()).await?;
        match cli.cmd {
            Cmd::Server { listen, allow } => {
                server(
                    ident,
                    &listen,
                    SpiffeId::parse(&allow).map_err(|e| e.to_string())?,
                )
                .await
            }
            Cmd::Client {
                connect,
                expect,
                count,
                interval,
            } => {
                client(
                    ident,
                    &connect,
                    SpiffeId::parse(&expect).map_err(|e| e.to_string())?,
                    count,
                    interval,
                )
                .await
            }
        }
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("writ-mtls-demo: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
