//! The SPIFFE Workload API (spiffe-requirements.md sections 4 and 5), served on a Unix socket.
//!
//! Every request must carry `workload.spiffe.io: true` exactly once (else InvalidArgument). The
//! caller is identified from `SO_PEERCRED` and attested by the workload attestors; its identities
//! are the cached entries whose selectors are all among the caller's. Streams send the full state
//! at once, then a new full message whenever the answer changes (SVID rotation, entry change,
//! bundle change); a stream whose caller loses every identity ends with PermissionDenied.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prost_types::{value::Kind, ListValue, Struct, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use writ_core::{Entry, Selector, SpiffeId};
use writ_proto::workload as wl;
use writ_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;

use crate::agent::AgentState;
use crate::attestor::{Caller, WorkloadAttestor};

/// How long a new stream waits for the first SVID of a freshly matched entry.
pub const FIRST_SVID_WAIT: Duration = Duration::from_secs(30);

/// The Workload API service.
pub struct WorkloadApi {
    state: Arc<AgentState>,
    attestors: Vec<Arc<dyn WorkloadAttestor>>,
}

impl std::fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadApi")
    }
}

impl WorkloadApi {
    /// A service over the agent state with these attestors.
    pub fn new(state: Arc<AgentState>, attestors: Vec<Arc<dyn WorkloadAttestor>>) -> Self {
        WorkloadApi { state, attestors }
    }

    /// Header check and caller attestation, in that order.
    async fn caller<T>(&self, req: &Request<T>) -> Result<Vec<Selector>, Status> {
        check_header(req.metadata())?;
        let cred = req
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .ok_or_else(|| Status::permission_denied("caller credentials are not available"))?;
        let caller = Caller {
            pid: cred.pid().unwrap_or(0),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        let attestors = self.attestors.clone();
        // /proc reads and binary hashing block: keep them off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for a in &attestors {
                out.extend(
                    a.attest(&caller)
                        .map_err(|e| Status::permission_denied(e.to_string()))?,
                );
            }
            Ok(out)
        })
        .await
        .map_err(|_| Status::internal("workload attestation task failed"))?
    }

    fn matching(&self, selectors: &[Selector]) -> Vec<Entry> {
        let c = self.state.cache.read().unwrap_or_else(|p| p.into_inner());
        c.matching(selectors, writ_core::now_unix())
            .into_iter()
            .cloned()
            .collect()
    }
}

/// The `workload.spiffe.io` rule: exactly one value, exactly `true`.
pub fn check_header(md: &tonic::metadata::MetadataMap) -> Result<(), Status> {
    let vals: Vec<_> = md.get_all(writ_proto::WORKLOAD_HEADER).iter().collect();
    match vals.as_slice() {
        [v] if v.as_bytes() == b"true" => Ok(()),
        [] => Err(Status::invalid_argument(
            "security header missing from request (workload.spiffe.io: true)",
        )),
        _ => Err(Status::invalid_argument(
            "security header must be exactly one `workload.spiffe.io: true`",
        )),
    }
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

/// What a caller gets from FetchX509SVID, or why not.
enum X509Answer {
    Ready(wl::X509svidResponse),
    /// Entries match but no SVID is signed yet.
    Pending,
    None,
}

fn x509_answer(state: &AgentState, selectors: &[Selector]) -> X509Answer {
    let c = state.cache.read().unwrap_or_else(|p| p.into_inner());
    let now = writ_core::now_unix();
    let entries = c.matching(selectors, now);
    if entries.is_empty() {
        return X509Answer::None;
    }
    let own = c.own_bundle.x509_der_concat();
    let mut svids = Vec::new();
    let mut hints = std::collections::HashSet::new();
    let mut federated = HashMap::new();
    for e in &entries {
        let Some(s) = c.svids.get(&e.id) else {
            continue;
        };
        if s.expires_at <= now {
            continue;
        }
        // Hints must be unique: the first (default-ordered) SVID with a hint keeps it.
        if !e.hint.is_empty() && !hints.insert(e.hint.clone()) {
            continue;
        }
        svids.push(wl::X509svid {
            spiffe_id: s.spiffe_id.to_string(),
            x509_svid: s.chain.concat(),
            x509_svid_key: s.key_pkcs8.clone(),
            bundle: own.clone(),
            hint: e.hint.clone(),
        });
        for td in &e.federates_with {
            if let Some(b) = c.bundle_for(td.as_str()) {
                federated.insert(td.id_string(), b.x509_der_concat());
            }
        }
    }
    if svids.is_empty() {
        return X509Answer::Pending;
    }
    X509Answer::Ready(wl::X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles: federated,
    })
}

/// Bundles for a caller: own plus those its entries federate with; `None` without identity.
fn bundles_for(
    state: &AgentState,
    selectors: &[Selector],
    jwt: bool,
) -> Option<HashMap<String, Vec<u8>>> {
    let c = state.cache.read().unwrap_or_else(|p| p.into_inner());
    let entries = c.matching(selectors, writ_core::now_unix());
    if entries.is_empty() {
        return None;
    }
    let enc = |b: &writ_core::Bundle| {
        if jwt {
            b.jwt_jwks_json()
                .map(String::into_bytes)
                .unwrap_or_default()
        } else {
            b.x509_der_concat()
        }
    };
    let mut m = HashMap::new();
    m.insert(c.own_bundle.trust_domain.id_string(), enc(&c.own_bundle));
    for e in &entries {
        for td in &e.federates_with {
            if let Some(b) = c.bundle_for(td.as_str()) {
                m.insert(td.id_string(), enc(b));
            }
        }
    }
    Some(m)
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

/// Runs a stream: computes `answer` now and after every generation change, sends it when it
/// differs from the last one, ends with PermissionDenied when `answer` says the caller has no
/// identity any more.
fn spawn_stream<T, F>(state: Arc<AgentState>, mut answer: F) -> Stream<T>
where
    T: PartialEq + Clone + Send + 'static,
    F: FnMut(&AgentState) -> Option<Option<T>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let mut gen = state.generation.subscribe();
    tokio::spawn(async move {
        let mut last: Option<T> = None;
        loop {
            gen.borrow_and_update();
            match answer(&state) {
                // No identity: end the stream.
                None => {
                    let _ = tx.send(Err(no_identity())).await;
                    return;
                }
                Some(Some(msg)) if last.as_ref() != Some(&msg) => {
                    if tx.send(Ok(msg.clone())).await.is_err() {
                        return;
                    }
                    last = Some(msg);
                }
                // Unchanged, or not ready yet.
                Some(_) => {}
            }
            tokio::select! {
                r = gen.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Stream<wl::X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<wl::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let selectors = self.caller(&req).await?;
        // The first answer is sent at once; a caller whose entries are matched but not yet
        // signed (an entry created a moment ago) waits a little for its SVID.
        let deadline = tokio::time::Instant::now() + FIRST_SVID_WAIT;
        let mut gen = self.state.generation.subscribe();
        loop {
            gen.borrow_and_update();
            match x509_answer(&self.state, &selectors) {
                X509Answer::None => return Err(no_identity()),
                X509Answer::Ready(_) => break,
                X509Answer::Pending => {
                    if tokio::time::timeout_at(deadline, gen.changed())
                        .await
                        .is_err()
                    {
                        return Err(Status::unavailable("identity is being issued; try again"));
                    }
                }
            }
        }
        let sels = selectors.clone();
        Ok(Response::new(spawn_stream(
            self.state.clone(),
            move |st| match x509_answer(st, &sels) {
                X509Answer::None => None,
                X509Answer::Pending => Some(None),
                X509Answer::Ready(r) => Some(Some(r)),
            },
        )))
    }

    type FetchX509BundlesStream = Stream<wl::X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        req: Request<wl::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let selectors = self.caller(&req).await?;
        if bundles_for(&self.state, &selectors, false).is_none() {
            return Err(no_identity());
        }
        Ok(Response::new(spawn_stream(self.state.clone(), move |st| {
            bundles_for(st, &selectors, false).map(|bundles| {
                Some(wl::X509BundlesResponse {
                    crl: Vec::new(),
                    bundles,
                })
            })
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<wl::JwtsvidRequest>,
    ) -> Result<Response<wl::JwtsvidResponse>, Status> {
        let selectors = self.caller(&req).await?;
        let r = req.get_ref();
        if r.audience.is_empty() || r.audience.iter().any(|a| a.is_empty()) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let wanted = if r.spiffe_id.is_empty() {
            None
        } else {
            Some(
                SpiffeId::parse(&r.spiffe_id)
                    .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?,
            )
        };
        let entries: Vec<Entry> = self
            .matching(&selectors)
            .into_iter()
            .filter(|e| wanted.as_ref().is_none_or(|w| &e.spiffe_id == w))
            .collect();
        if entries.is_empty() {
            return Err(match wanted {
                Some(w) => {
                    Status::permission_denied(format!("no identity `{w}` issued to this workload"))
                }
                None => no_identity(),
            });
        }
        let mut svids = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for e in &entries {
            // One token per identity, even if several entries grant it.
            if !seen.insert(e.spiffe_id.clone()) {
                continue;
            }
            let token = self.state.jwt_for(e, &r.audience).await?;
            svids.push(wl::Jwtsvid {
                spiffe_id: e.spiffe_id.to_string(),
                svid: token,
                hint: e.hint.clone(),
            });
        }
        Ok(Response::new(wl::JwtsvidResponse { svids }))
    }

    type FetchJWTBundlesStream = Stream<wl::JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        req: Request<wl::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let selectors = self.caller(&req).await?;
        if bundles_for(&self.state, &selectors, true).is_none() {
            return Err(no_identity());
        }
        Ok(Response::new(spawn_stream(self.state.clone(), move |st| {
            bundles_for(st, &selectors, true)
                .map(|bundles| Some(wl::JwtBundlesResponse { bundles }))
        })))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<wl::ValidateJwtsvidRequest>,
    ) -> Result<Response<wl::ValidateJwtsvidResponse>, Status> {
        check_header(req.metadata())?;
        let r = req.get_ref();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let v = {
            let c = self.state.cache.read().unwrap_or_else(|p| p.into_inner());
            writ_ca::jwt::validate(&r.svid, &r.audience, writ_core::now_unix(), |td| {
                c.bundle_for(td.as_str()).cloned()
            })
        }
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(wl::ValidateJwtsvidResponse {
            spiffe_id: v.spiffe_id.to_string(),
            claims: Some(to_struct(&v.claims)),
        }))
    }

    type FetchWITSVIDStream = Stream<wl::WitsvidResponse>;

    async fn fetch_witsvid(
        &self,
        req: Request<wl::WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        check_header(req.metadata())?;
        Err(Status::unimplemented("WIT-SVIDs are not supported"))
    }

    type FetchWITBundlesStream = Stream<wl::WitBundlesResponse>;

    async fn fetch_wit_bundles(
        &self,
        req: Request<wl::WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        check_header(req.metadata())?;
        Err(Status::unimplemented("WIT-SVIDs are not supported"))
    }
}

/// JSON object -> protobuf Struct.
pub fn to_struct(m: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), to_value(v)))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn to_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}
