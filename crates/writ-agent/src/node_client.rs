//! The agent side of `writ.v1.Node`: a TLS channel that authenticates the server by its SPIFFE ID
//! (`spiffe://<td>/writ/server`) against the trust bundle, presents the agent SVID when it has
//! one, and the attestation exchange.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use writ_ca::PrivateKey;
use writ_core::{server_id, Bundle, SpiffeId, TrustDomain};
use writ_proto::v1 as pb;
use writ_proto::v1::node_client::NodeClient;
use writ_tls::rustls::pki_types::ServerName;
use writ_tls::{exact_id, SharedBundle, SpiffeServerVerifier, SvidResolver};

pub use crate::node_attest::Evidence;
use crate::node_attest::NodeAttestorClient;

/// Node API client failures.
#[derive(Debug, thiserror::Error)]
pub enum NodeClientError {
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] writ_tls::TlsError),
    /// Connecting.
    #[error("cannot connect to server `{addr}`: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        source: tonic::transport::Error,
    },
    /// The server refused.
    #[error("server refused: {0}")]
    Status(#[from] tonic::Status),
    /// Key or CSR problem.
    #[error(transparent)]
    Ca(#[from] writ_ca::CaError),
    /// The node attestor could not produce its evidence or answer.
    #[error("node attestation: {0}")]
    Evidence(String),
    /// The server's answer does not make sense.
    #[error("unexpected answer from server: {0}")]
    Protocol(String),
}

/// A connected Node API client.
pub type Node = NodeClient<Channel>;

/// Opens a channel to the server at `addr` (`host:port`), verifying it is
/// `spiffe://<td>/writ/server` under `bundle`, and presenting `svid` if given.
pub async fn connect(
    addr: &str,
    td: &TrustDomain,
    bundle: SharedBundle,
    svid: Option<Arc<SvidResolver>>,
) -> Result<Node, NodeClientError> {
    let verifier = SpiffeServerVerifier::new(bundle, exact_id(server_id(td)));
    let tls = TlsConnector::from(Arc::new(writ_tls::client_config(verifier, svid)?));
    let target = addr.to_owned();
    let channel = Endpoint::from_static("http://writ-server")
        .connect_timeout(std::time::Duration::from_secs(10))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_with_connector(tower::service_fn(move |_| {
            let tls = tls.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                // The name is not checked (the verifier checks the SPIFFE ID); rustls needs one.
                let name = ServerName::try_from("writ-server")
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let s = tls.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await
        .map_err(|source| NodeClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    Ok(NodeClient::new(channel)
        .max_decoding_message_size(writ_max_message())
        .max_encoding_message_size(writ_max_message()))
}

fn writ_max_message() -> usize {
    4 * 1024 * 1024
}

/// The result of attestation or renewal.
#[derive(Debug, Clone)]
pub struct AgentSvid {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Certificate chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// Expiry (unix seconds).
    pub expires_at: i64,
    /// The trust bundle the server sent.
    pub bundle: Bundle,
}

/// Converts the server's `AgentSvid` message.
pub fn agent_svid(p: pb::AgentSvid, td: &TrustDomain) -> Result<AgentSvid, NodeClientError> {
    let spiffe_id =
        SpiffeId::parse(&p.spiffe_id).map_err(|e| NodeClientError::Protocol(e.to_string()))?;
    let b = p
        .bundle
        .ok_or_else(|| NodeClientError::Protocol("no bundle".into()))?;
    let bundle = Bundle::from_json(td.clone(), &b.spiffe_bundle_json)
        .map_err(|e| NodeClientError::Protocol(format!("bundle: {e}")))?;
    if p.cert_chain.is_empty() {
        return Err(NodeClientError::Protocol("empty certificate chain".into()));
    }
    Ok(AgentSvid {
        spiffe_id,
        chain: p.cert_chain,
        expires_at: p.expires_at,
        bundle,
    })
}

/// Attests with `attestor`'s evidence, asking for an SVID for `agent_key`.
pub async fn attest(
    client: &mut Node,
    td: &TrustDomain,
    attestor: impl NodeAttestorClient,
    agent_key: &PrivateKey,
) -> Result<AgentSvid, NodeClientError> {
    let payload = attestor
        .payload()
        .map_err(|e| NodeClientError::Evidence(e.to_string()))?;
    let (tx, rx) = mpsc::channel(2);
    tx.send(pb::AttestRequest {
        step: Some(pb::attest_request::Step::Params(pb::AttestParams {
            attestor: attestor.name().to_owned(),
            payload,
            csr: agent_key.csr_der()?,
        })),
    })
    .await
    .map_err(|_| NodeClientError::Protocol("request stream closed".into()))?;
    let mut inbound = client.attest(ReceiverStream::new(rx)).await?.into_inner();
    loop {
        let msg = inbound
            .message()
            .await?
            .ok_or_else(|| NodeClientError::Protocol("attestation ended without an SVID".into()))?;
        match msg.step {
            Some(pb::attest_response::Step::Challenge(challenge)) => {
                let sig = attestor
                    .answer(&challenge)
                    .map_err(|e| NodeClientError::Evidence(e.to_string()))?;
                tx.send(pb::AttestRequest {
                    step: Some(pb::attest_request::Step::ChallengeResponse(sig)),
                })
                .await
                .map_err(|_| NodeClientError::Protocol("request stream closed".into()))?;
            }
            Some(pb::attest_response::Step::Svid(s)) => return agent_svid(s, td),
            None => {
                return Err(NodeClientError::Protocol(
                    "empty attestation message".into(),
                ))
            }
        }
    }
}
