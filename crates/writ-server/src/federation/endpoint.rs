//! The bundle endpoint: `GET` any path returns this trust domain's SPIFFE bundle (JSON, with
//! `spiffe_sequence` and `spiffe_refresh_hint`), read from the published bundle at each
//! request, so authorities prepared for rotation are served before they sign.

use std::sync::Arc;

use crate::http::Reply;
use crate::state::ServerState;

use super::{BundleEndpoint, EndpointProfile};

/// Serves the endpoint until the task is dropped.
pub(crate) async fn serve(cfg: BundleEndpoint, state: Arc<ServerState>) -> std::io::Result<()> {
    let io = |e: String| std::io::Error::other(e);
    let resolver: Arc<dyn writ_tls::rustls::server::ResolvesServerCert> = match &cfg.profile {
        // The server's own SVID, rotated with it.
        EndpointProfile::HttpsSpiffe => state.server_tls.clone(),
        EndpointProfile::HttpsWeb {
            cert_file,
            key_file,
        } => {
            let certs = std::fs::read_to_string(cert_file)
                .map_err(|e| io(format!("{}: {e}", cert_file.display())))?;
            let chain: Vec<Vec<u8>> = writ_core::pem::decode_label(&certs, "CERTIFICATE")
                .map_err(|e| io(format!("{}: {e}", cert_file.display())))?;
            let key = writ_ca::PrivateKey::from_pem(
                &std::fs::read_to_string(key_file)
                    .map_err(|e| io(format!("{}: {e}", key_file.display())))?,
            )
            .map_err(|e| io(format!("{}: {e}", key_file.display())))?;
            writ_tls::SvidResolver::new(&chain, key.pkcs8_der()).map_err(|e| io(e.to_string()))?
        }
    };
    let tls = writ_tls::https_server_config(resolver).map_err(|e| io(e.to_string()))?;
    let handler: crate::http::Handler =
        Arc::new(
            move |_path: &str| match state.bundles.borrow().own.to_json() {
                Ok(json) => Reply {
                    status: "200 OK",
                    content_type: "application/json",
                    headers: vec!["cache-control: no-cache".into()],
                    body: json,
                },
                Err(e) => Reply::new("500 Internal Server Error", "text/plain", format!("{e}\n")),
            },
        );
    crate::http::serve_tls(
        cfg.listen,
        "federation bundle",
        handler,
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
    )
    .await
}
