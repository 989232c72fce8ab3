//! The SPIFFE Workload API (spiffe-requirements.md sections 4 and 5), served on a Unix socket.
//!
//! Every request must carry `workload.spiffe.io: true` exactly once (else InvalidArgument). The
//! caller is identified from `SO_PEERCRED` and attested by the workload attestors; its identities
//! are the cached entries whose selectors are all among the caller's. Streams send the full state
//! at once, then a new full message whenever the answer changes (SVID rotation, entry change,
//! bundle change); a stream whose caller loses every identity ends with PermissionDenied.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use writ_core::{Entry, Selector, SpiffeId};
use writ_proto::workload as wl;
use writ_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;

use crate::cache::leaf_serial;
use crate::conn::{ConnIdentity, WorkloadConnInfo};
use crate::deliveries::{now_ms, Delivery};
use crate::jwt_cache::check_audiences;
use crate::view::WorkloadView;

mod answers;
mod stream;
mod tasks;

pub(crate) use tasks::TasksApi;

use answers::{bundles_for, to_struct, x509_answer, BundleKind, X509Answer};
use stream::{spawn_stream, Stream};

/// An attested caller of one request.
struct Caller {
    selectors: Vec<Selector>,
    uid: u32,
    identity: Arc<ConnIdentity>,
}

/// A delivery record for `caller` (its executable read now from `/proc`).
fn delivery(
    caller: &crate::workload_attest::Caller,
    kind: &str,
    serial: String,
    jti: String,
    spiffe_id: &str,
    audience: Vec<String>,
) -> Delivery {
    let exe = std::fs::read_link(format!("/proc/{}/exe", caller.pid))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Delivery {
        kind: kind.to_owned(),
        serial,
        jti,
        spiffe_id: spiffe_id.to_owned(),
        pid: caller.pid,
        uid: caller.uid,
        exe,
        audience,
        at_ms: now_ms(),
    }
}

/// The `jti` claim of a compact JWT minted by our server (None if absent or unreadable).
fn jti_of(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("jti")?.as_str().map(str::to_owned)
}

/// How long a new stream waits for the first SVID of a freshly matched entry.
pub(crate) const FIRST_SVID_WAIT: Duration = Duration::from_secs(30);

/// The Workload API service.
pub(crate) struct WorkloadApi {
    view: Arc<WorkloadView>,
}

impl std::fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadApi")
    }
}

impl WorkloadApi {
    /// A service over the agent state. Callers are attested by the connection layer
    /// ([`crate::conn`]), which binds the result to each connection.
    pub(crate) fn new(view: Arc<WorkloadView>) -> Self {
        WorkloadApi { view }
    }

    /// See [`caller`].
    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        caller(req).await
    }

    fn matching(&self, selectors: &[Selector]) -> Vec<Entry> {
        let c = self.view.read();
        c.matching(selectors, writ_core::now_unix())
            .into_iter()
            .cloned()
            .collect()
    }
}

/// Header check, then the caller's connection and its bound selectors (after checking that
/// the connecting process is still the one that was attested).
async fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    {
        check_header(req.metadata())?;
        let identity = req
            .extensions()
            .get::<WorkloadConnInfo>()
            .map(|i| i.identity.clone())
            .ok_or_else(|| Status::permission_denied("caller credentials are not available"))?;
        let selectors = identity
            .selectors()
            .await
            .map_err(Status::permission_denied)?;
        Ok(Caller {
            selectors,
            uid: identity.caller.uid,
            identity,
        })
    }
}

/// The `workload.spiffe.io` rule: exactly one value, exactly `true`.
pub(crate) fn check_header(md: &tonic::metadata::MetadataMap) -> Result<(), Status> {
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

pub(crate) fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Stream<wl::X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<wl::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let Caller {
            selectors,
            identity,
            ..
        } = self.caller(&req).await?;
        // The first answer is sent at once; a caller whose entries are matched but not yet
        // signed (an entry created a moment ago) waits a little for its SVID.
        let deadline = tokio::time::Instant::now() + FIRST_SVID_WAIT;
        let mut gen = self.view.subscribe();
        loop {
            gen.borrow_and_update();
            match x509_answer(&self.view, &selectors) {
                X509Answer::None => return Err(no_identity()),
                X509Answer::Ready(_) => break,
                X509Answer::Pending => {
                    if tokio::time::timeout_at(deadline, gen.changed())
                        .await
                        .is_err()
                    {
                        return Err(Status::unavailable(if self.view.is_connected() {
                            "identity is being issued; try again"
                        } else {
                            "no valid SVID for this workload: the agent cannot reach its \
                                 server to have one signed; try again"
                        }));
                    }
                }
            }
        }
        let sels = selectors.clone();
        // Each SVID is reported once per stream, when it is first handed over.
        let (log, caller) = (self.view.deliveries.clone(), identity.caller);
        let mut delivered = std::collections::HashSet::new();
        Ok(Response::new(spawn_stream(
            self.view.clone(),
            identity,
            move |st| match x509_answer(st, &sels) {
                X509Answer::None => None,
                X509Answer::Pending => Some(None),
                X509Answer::Ready(r) => Some(Some(r)),
            },
            move |r: &wl::X509svidResponse| {
                for s in &r.svids {
                    let serial = leaf_serial(&s.x509_svid);
                    if !serial.is_empty() && delivered.insert(serial.clone()) {
                        log.record(delivery(
                            &caller,
                            "svid.delivered",
                            serial,
                            String::new(),
                            &s.spiffe_id,
                            Vec::new(),
                        ));
                    }
                }
            },
        )))
    }

    type FetchX509BundlesStream = Stream<wl::X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        req: Request<wl::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let Caller {
            selectors,
            identity,
            ..
        } = self.caller(&req).await?;
        if bundles_for(&self.view, &selectors, BundleKind::X509).is_none() {
            return Err(no_identity());
        }
        Ok(Response::new(spawn_stream(
            self.view.clone(),
            identity,
            move |st| {
                bundles_for(st, &selectors, BundleKind::X509).map(|bundles| {
                    Some(wl::X509BundlesResponse {
                        crl: answers::crl(st),
                        bundles,
                    })
                })
            },
            |_: &wl::X509BundlesResponse| {},
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<wl::JwtsvidRequest>,
    ) -> Result<Response<wl::JwtsvidResponse>, Status> {
        let Caller {
            selectors,
            uid,
            identity,
        } = self.caller(&req).await?;
        let r = req.get_ref();
        let audience =
            check_audiences(&r.audience).map_err(|e| Status::invalid_argument(e.to_string()))?;
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
            let token = self.view.jwt.mint(e, audience.clone(), uid).await?;
            if let Some(jti) = jti_of(&token) {
                self.view.deliveries.record(delivery(
                    &identity.caller,
                    "svid.delivered",
                    String::new(),
                    jti,
                    e.spiffe_id.as_str(),
                    Vec::new(),
                ));
            }
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
        let Caller {
            selectors,
            identity,
            ..
        } = self.caller(&req).await?;
        if bundles_for(&self.view, &selectors, BundleKind::Jwt).is_none() {
            return Err(no_identity());
        }
        Ok(Response::new(spawn_stream(
            self.view.clone(),
            identity,
            move |st| {
                bundles_for(st, &selectors, BundleKind::Jwt)
                    .map(|bundles| Some(wl::JwtBundlesResponse { bundles }))
            },
            |_: &wl::JwtBundlesResponse| {},
        )))
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
            let c = self.view.read();
            writ_ca::jwt::validate(&r.svid, &r.audience, writ_core::now_unix(), |td| {
                c.bundle_for(td.as_str()).cloned()
            })
        }
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Valid by signature and claims, but revoked by the server until it expires.
        if let Some(jti) = v.claims.get("jti").and_then(|j| j.as_str()) {
            if self.view.read().revoked_jwts.contains_key(jti) {
                return Err(Status::invalid_argument(format!(
                    "JWT-SVID `{jti}` has been revoked"
                )));
            }
            // Validation is open to every local process (no attestation): the record names
            // the caller as the kernel reported it at connect time.
            if let Some(info) = req.extensions().get::<WorkloadConnInfo>() {
                self.view.deliveries.record(delivery(
                    &info.identity.caller,
                    "jwt.validated",
                    String::new(),
                    jti.to_owned(),
                    v.spiffe_id.as_str(),
                    vec![r.audience.clone()],
                ));
            }
        }
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
        let Caller {
            selectors,
            identity,
            ..
        } = self.caller(&req).await?;
        let wanted = match req.get_ref().spiffe_id.as_str() {
            "" => None,
            s => Some(
                SpiffeId::parse(s)
                    .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?,
            ),
        };
        let pick = move |view: &WorkloadView| -> Vec<Entry> {
            view.read()
                .matching(&selectors, writ_core::now_unix())
                .into_iter()
                .filter(|e| wanted.as_ref().is_none_or(|w| &e.spiffe_id == w))
                .cloned()
                .collect()
        };
        if pick(&self.view).is_empty() {
            return Err(no_identity());
        }
        let view = self.view.clone();
        let (log, caller) = (self.view.deliveries.clone(), identity.caller);
        let mut delivered = std::collections::HashSet::new();
        Ok(Response::new(spawn_stream(
            self.view.clone(),
            identity,
            move |_| {
                let entries = pick(&view);
                if entries.is_empty() {
                    return None;
                }
                let mut svids = Vec::new();
                let mut hints = std::collections::HashSet::new();
                for e in &entries {
                    let Some(w) = view.wit.want(&view, e) else {
                        continue;
                    };
                    if !e.hint.is_empty() && !hints.insert(e.hint.clone()) {
                        continue;
                    }
                    svids.push(wl::Witsvid {
                        spiffe_id: e.spiffe_id.to_string(),
                        wit_svid: w.token,
                        wit_svid_key: w.key_jwk,
                        hint: e.hint.clone(),
                    });
                }
                Some((!svids.is_empty()).then_some(wl::WitsvidResponse { svids }))
            },
            move |r: &wl::WitsvidResponse| {
                for s in &r.svids {
                    if let Some(jti) = jti_of(&s.wit_svid) {
                        if delivered.insert(jti.clone()) {
                            log.record(delivery(
                                &caller,
                                "svid.delivered",
                                String::new(),
                                jti,
                                &s.spiffe_id,
                                Vec::new(),
                            ));
                        }
                    }
                }
            },
        )))
    }

    type FetchWITBundlesStream = Stream<wl::WitBundlesResponse>;

    async fn fetch_wit_bundles(
        &self,
        req: Request<wl::WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        let Caller {
            selectors,
            identity,
            ..
        } = self.caller(&req).await?;
        if bundles_for(&self.view, &selectors, BundleKind::Wit).is_none() {
            return Err(no_identity());
        }
        Ok(Response::new(spawn_stream(
            self.view.clone(),
            identity,
            move |st| {
                bundles_for(st, &selectors, BundleKind::Wit).map(|b| {
                    Some(wl::WitBundlesResponse {
                        bundles: b
                            .into_iter()
                            .map(|(td, json)| (td, String::from_utf8_lossy(&json).into_owned()))
                            .collect(),
                    })
                })
            },
            |_: &wl::WitBundlesResponse| {},
        )))
    }
}
