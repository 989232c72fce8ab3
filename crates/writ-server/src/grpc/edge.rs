//! The tower layer in front of both services: what every call goes through before and after its
//! method, instead of a wrapper in each method.
//!
//! - **Metrics**: every call that ends refused is counted once by its status code, whether the
//!   status comes in the response headers (an immediate error) or in the trailers (a stream that
//!   ends with an error).
//! - **Authentication** (Node service): every method but `Attest` needs the agent's current
//!   SVID. The layer reads the client certificate once into a [`PeerSvid`], authenticates it
//!   ([`ServerState::authenticate`]) and passes the [`Caller`] to the method in the request's
//!   extensions; a refused call never reaches the method.
//! - **Rate limit** (Node service): `Attest` calls per source address ([`RateLimiter`]).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Frame;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap};
use tonic::codegen::{BoxFuture, Bytes};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tower::{Layer, Service};
use writ_proto::v1::node_server::SERVICE_NAME as NODE_SERVICE;

use crate::auth::{Caller, PeerSvid};
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::state::ServerState;

/// What the Node service's calls must pass before their method runs.
struct NodeGate {
    state: Arc<ServerState>,
    attest_rate: RateLimiter,
}

/// The edge layer; [`Edge::node`] for the agent-facing service, [`Edge::admin`] for operators.
#[derive(Clone)]
pub(crate) struct Edge {
    metrics: Arc<Metrics>,
    gate: Option<Arc<NodeGate>>,
}

impl Edge {
    /// For `writ.v1.Node`: metrics, authentication, attestation rate limit.
    pub(crate) fn node(state: &Arc<ServerState>) -> Self {
        Edge {
            metrics: state.metrics.clone(),
            gate: Some(Arc::new(NodeGate {
                attest_rate: RateLimiter::new(state.cfg.attestation_rate_per_ip),
                state: state.clone(),
            })),
        }
    }

    /// For `writ.v1.Admin` (the socket is private; operators are not authenticated per call):
    /// metrics only.
    pub(crate) fn admin(state: &Arc<ServerState>) -> Self {
        Edge {
            metrics: state.metrics.clone(),
            gate: None,
        }
    }
}

impl NodeGate {
    /// Lets the call through (with the [`Caller`] added, for authenticated methods) or says why
    /// not.
    fn admit(&self, req: &mut http::Request<Body>) -> Result<(), Status> {
        let tls = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .cloned();
        let method = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(NODE_SERVICE))
            .unwrap_or_default();
        if method == "/Attest" {
            let ip = tls.as_ref().and_then(|t| t.get_ref().remote_addr());
            if let Some(ip) = ip {
                if !self.attest_rate.allow(ip.ip()) {
                    self.state
                        .metrics
                        .attest_rate_limited
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(Status::resource_exhausted(
                        "too many attestation attempts from this address",
                    ));
                }
            }
            return Ok(());
        }
        let certs = tls.as_ref().and_then(|t| t.peer_certs());
        let peer = PeerSvid::from_chain(certs.as_deref().map(Vec::as_slice))?;
        let caller = self.state.authenticate(&peer)?;
        req.extensions_mut().insert(caller);
        Ok(())
    }
}

/// The authenticated agent of a Node call (put there by the edge layer). Fails closed if the
/// layer is missing.
pub(crate) fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("call was not authenticated"))
}

impl<S> Layer<S> for Edge {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            inner,
            edge: self.clone(),
        }
    }
}

/// A service behind [`Edge`].
#[derive(Clone)]
pub(crate) struct EdgeService<S> {
    inner: S,
    edge: Edge,
}

impl<S> Service<http::Request<Body>> for EdgeService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone is not ready; the ready one serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let edge = self.edge.clone();
        Box::pin(async move {
            if let Some(gate) = &edge.gate {
                if let Err(s) = gate.admit(&mut req) {
                    edge.metrics.count_code(s.code());
                    return Ok(s.into_http());
                }
            }
            let resp = inner.call(req).await?;
            if let Some(code) = status_code(resp.headers()) {
                // Trailers-only response: the call ended at once.
                edge.metrics.count_code(code);
                return Ok(resp);
            }
            let metrics = edge.metrics.clone();
            Ok(resp.map(|body| Body::new(CountTrailers { body, metrics })))
        })
    }
}

fn status_code(h: &HeaderMap) -> Option<tonic::Code> {
    h.get("grpc-status")
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

/// A response body that counts the status in its trailers (streams, and unary calls that
/// answered with a message) when it passes.
struct CountTrailers {
    body: Body,
    metrics: Arc<Metrics>,
}

impl http_body::Body for CountTrailers {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(code) = f.trailers_ref().and_then(status_code) {
                self.metrics.count_code(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
