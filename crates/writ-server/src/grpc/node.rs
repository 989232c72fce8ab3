//! The agent-facing `writ.v1.Node` service (served over TLS), behind the edge layer
//! ([`super::edge`]), which authenticates every method but `Attest` and rate-limits `Attest`.
//!
//! Methods translate messages and call the flows; entries asked for are checked against the
//! caller's authorised set, computed from the entry index on the server, never trusted from the
//! agent.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use writ_ca::MintedSvid;
use writ_core::SpiffeId;
use writ_core::{AttestedNode, Entry};
use writ_proto::convert::{bundle_to_pb, task_to_pb};
use writ_proto::v1 as pb;
use writ_proto::v1::node_server::Node;

use super::edge::caller;
use crate::bundles::BundleSet;
use crate::signing::{SignError, SigningQueue};
use crate::state::ServerState;

/// Most JWT-SVIDs one `BatchMintJwt` may ask for.
const MAX_JWT_BATCH: usize = 256;

/// The Node service.
#[derive(Debug, Clone)]
pub(crate) struct NodeApi {
    state: Arc<ServerState>,
    queue: SigningQueue,
}

impl NodeApi {
    /// Wraps the shared state.
    pub(crate) fn new(state: Arc<ServerState>) -> Self {
        NodeApi {
            queue: SigningQueue::new(state.clone()),
            state,
        }
    }

    /// A policy denial is journalled (`policy.denied`) before it is answered.
    async fn noting_denial<T>(&self, r: Result<T, SignError>) -> Result<T, Status> {
        match r {
            Err(SignError::Denied(d)) => {
                if let Some(rec) = d.1.clone() {
                    self.state.audit.note(vec![*rec]).await;
                }
                Err(SignError::Denied(d).into())
            }
            r => r.map_err(Status::from),
        }
    }

    /// A token's issue record and, for a break-glass entry, its use: counted, logged loudly,
    /// journalled.
    fn token_records(
        &self,
        node: &AttestedNode,
        entry: &Entry,
        issued: writ_audit::NewRecord,
        jti: &str,
    ) -> Vec<writ_audit::NewRecord> {
        let mut recs = vec![issued];
        if entry.break_glass {
            self.state
                .metrics
                .break_glass
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(entry = %entry.id, spiffe_id = %entry.spiffe_id, jti, "BREAK-GLASS token issued");
            recs.push(crate::audit::events::break_glass_used(
                writ_audit::Actor::agent(node.spiffe_id.as_str()),
                entry,
                None,
                Some(jti),
            ));
        }
        recs
    }

    /// Journals [`NodeApi::token_records`] durably, before the token is answered.
    async fn record_token(
        &self,
        node: &AttestedNode,
        entry: &Entry,
        issued: writ_audit::NewRecord,
        jti: &str,
    ) -> Result<(), Status> {
        let recs = self.token_records(node, entry, issued, jti);
        self.state
            .audit
            .record(recs)
            .await
            .map_err(|e| Status::from(SignError::from(e)))
    }

    /// The message carrying an agent's new SVID, with the current own bundle.
    fn agent_svid(&self, id: &SpiffeId, svid: MintedSvid) -> Result<pb::AgentSvid, Status> {
        let own = self.state.bundles.borrow().own.clone();
        Ok(pb::AgentSvid {
            spiffe_id: id.to_string(),
            cert_chain: svid.chain,
            expires_at: svid.not_after,
            bundle: Some(bundle_to_pb(&own)?),
        })
    }
}

fn bundles_pb(b: &BundleSet) -> Result<pb::WatchBundlesResponse, Status> {
    Ok(pb::WatchBundlesResponse {
        own: Some(bundle_to_pb(&b.own)?),
        federated: b
            .federated
            .iter()
            .map(bundle_to_pb)
            .collect::<Result<_, _>>()?,
        crl: b.revocations.crl.clone(),
        tainted_x509: b.tainted.x509.clone(),
        tainted_jwt_kids: b.tainted.jwt.clone(),
        revoked_serials: b.revocations.serials.clone(),
        revoked_jwts: b
            .revocations
            .jwts
            .iter()
            .map(|(jti, exp)| pb::RevokedJwt {
                jti: jti.clone(),
                expires_at: *exp,
            })
            .collect(),
    })
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Node for NodeApi {
    type AttestStream = Stream<pb::AttestResponse>;

    async fn attest(
        &self,
        req: Request<Streaming<pb::AttestRequest>>,
    ) -> Result<Response<Self::AttestStream>, Status> {
        let (tx, rx) = mpsc::channel(2);
        let api = self.clone();
        let inbound = req.into_inner();
        tokio::spawn(async move {
            let st = &api.state;
            let done = match crate::attest::flow::attest(st, inbound, &tx).await {
                Ok((id, svid)) => match api.agent_svid(&id, svid) {
                    Ok(s) => tx
                        .send(Ok(pb::AttestResponse {
                            step: Some(pb::attest_response::Step::Svid(s)),
                        }))
                        .await
                        .map_err(|_| Status::cancelled("agent went away")),
                    Err(s) => Err(s),
                },
                Err(e) => Err(Status::from(e)),
            };
            match done {
                Ok(()) => {
                    st.metrics.attest_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(s) => {
                    st.metrics.attest_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %s.message(), "attestation failed");
                    let _ = tx.send(Err(s)).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn renew_agent(
        &self,
        req: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::RenewAgentResponse>, Status> {
        let who = caller(&req)?;
        let (node, svid) = self.state.renew_agent(&who, &req.get_ref().csr)?;
        self.state
            .audit
            .record(vec![crate::audit::events::node_renewed(&node)])
            .await
            .map_err(crate::signing::SignError::from)?;
        Ok(Response::new(pb::RenewAgentResponse {
            svid: Some(self.agent_svid(&node.spiffe_id, svid)?),
        }))
    }

    type SyncEntriesStream = Stream<pb::SyncEntriesResponse>;

    async fn sync_entries(
        &self,
        req: Request<pb::SyncEntriesRequest>,
    ) -> Result<Response<Self::SyncEntriesStream>, Status> {
        let node = caller(&req)?.node;
        let after = req.get_ref().after_revision;
        // Subscribe before taking the snapshot so no change can fall in between.
        let events = self.state.events.subscribe();
        let (tx, rx) = mpsc::channel(8);
        let st = self.state.clone();
        tokio::spawn(async move {
            st.metrics.sync_streams.fetch_add(1, Ordering::Relaxed);
            let r = crate::sync::sync_loop(&st, node, after, events, &tx).await;
            st.metrics.sync_streams.fetch_sub(1, Ordering::Relaxed);
            if let Err(end) = r {
                let _ = tx.send(Err(end.into())).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn batch_sign_x509(
        &self,
        req: Request<pb::BatchSignX509Request>,
    ) -> Result<Response<pb::BatchSignX509Response>, Status> {
        let node = caller(&req)?.node;
        let resp = self
            .queue
            .sign_batch(&node, req.into_inner().requests)
            .await?;
        Ok(Response::new(resp))
    }

    async fn mint_jwt(
        &self,
        req: Request<pb::MintJwtRequest>,
    ) -> Result<Response<pb::MintJwtResponse>, Status> {
        let node = caller(&req)?.node;
        let r = req.get_ref();
        let (jwt, entry) = self
            .noting_denial(self.state.mint_jwt_for(&node, &r.entry_id, &r.audience))
            .await?;
        let rec = crate::audit::events::jwt_issued(
            writ_audit::Actor::agent(node.spiffe_id.as_str()),
            entry.spiffe_id.as_str(),
            Some(&entry.id),
            &jwt.jti,
            &r.audience,
            jwt.exp,
        );
        self.record_token(&node, &entry, rec, &jwt.jti).await?;
        Ok(Response::new(pb::MintJwtResponse {
            token: jwt.token,
            expires_at: jwt.exp,
        }))
    }

    async fn batch_mint_jwt(
        &self,
        req: Request<pb::BatchMintJwtRequest>,
    ) -> Result<Response<pb::BatchMintJwtResponse>, Status> {
        let node = caller(&req)?.node;
        let requests = req.into_inner().requests;
        if requests.len() > MAX_JWT_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} requests in one BatchMintJwt; at most {MAX_JWT_BATCH}",
                requests.len()
            )));
        }
        let actor = || writ_audit::Actor::agent(node.spiffe_id.as_str());
        let mut results = Vec::with_capacity(requests.len());
        let mut records = Vec::new();
        for r in &requests {
            match self.state.mint_jwt_for(&node, &r.entry_id, &r.audience) {
                Ok((jwt, entry)) => {
                    let issued = crate::audit::events::jwt_issued(
                        actor(),
                        entry.spiffe_id.as_str(),
                        Some(&entry.id),
                        &jwt.jti,
                        &r.audience,
                        jwt.exp,
                    );
                    records.extend(self.token_records(&node, &entry, issued, &jwt.jti));
                    results.push(pb::MintJwtResult {
                        token: jwt.token,
                        expires_at: jwt.exp,
                        code: 0,
                        error: String::new(),
                    });
                }
                Err(e) => {
                    if let SignError::Denied(d) = &e {
                        if let Some(rec) = d.1.clone() {
                            records.push(*rec);
                        }
                    }
                    let status = Status::from(e);
                    results.push(pb::MintJwtResult {
                        token: String::new(),
                        expires_at: 0,
                        code: status.code() as i32,
                        error: status.message().to_owned(),
                    });
                }
            }
        }
        // One journal append for the batch, durable before any token leaves the server.
        self.state
            .audit
            .record(records)
            .await
            .map_err(|e| Status::from(SignError::from(e)))?;
        Ok(Response::new(pb::BatchMintJwtResponse { results }))
    }

    async fn mint_wit(
        &self,
        req: Request<pb::MintWitRequest>,
    ) -> Result<Response<pb::MintWitResponse>, Status> {
        let node = caller(&req)?.node;
        let r = req.get_ref();
        let (wit, entry) = self
            .noting_denial(self.state.mint_wit_for(&node, &r.entry_id, &r.public_key))
            .await?;
        let rec = crate::audit::events::wit_issued(
            writ_audit::Actor::agent(node.spiffe_id.as_str()),
            entry.spiffe_id.as_str(),
            &entry.id,
            &wit.jti,
            wit.exp,
        );
        self.record_token(&node, &entry, rec, &wit.jti).await?;
        Ok(Response::new(pb::MintWitResponse {
            token: wit.token,
            expires_at: wit.exp,
        }))
    }

    async fn report_deliveries(
        &self,
        req: Request<pb::ReportDeliveriesRequest>,
    ) -> Result<Response<pb::ReportDeliveriesResponse>, Status> {
        let node = caller(&req)?.node;
        let (recorded, refused) = self
            .state
            .record_deliveries(&node, req.into_inner().deliveries)
            .await?;
        Ok(Response::new(pb::ReportDeliveriesResponse {
            recorded,
            refused,
        }))
    }

    async fn start_task(
        &self,
        req: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::StartTaskResponse>, Status> {
        let node = caller(&req)?.node;
        let s = self.state.start_task(&node, req.into_inner()).await?;
        Ok(Response::new(pb::StartTaskResponse {
            task: Some(task_to_pb(&s.task, writ_core::now_unix())),
            cert_chain: s.svid.map(|v| v.chain).unwrap_or_default(),
            jwt: s.jwt.map(|j| j.token).unwrap_or_default(),
            wit: s.wit.map(|w| w.token).unwrap_or_default(),
        }))
    }

    async fn end_task(
        &self,
        req: Request<pb::EndTaskRequest>,
    ) -> Result<Response<pb::EndTaskResponse>, Status> {
        let node = caller(&req)?.node;
        let r = req.get_ref();
        let (task, revoked) = self
            .state
            .end_task(&node, &r.entry_id, &r.task_id, &r.reason)
            .await?;
        Ok(Response::new(pb::EndTaskResponse {
            task: Some(task_to_pb(&task, writ_core::now_unix())),
            revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
        }))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let node = caller(&req)?.node;
        let now = writ_core::now_unix();
        let tasks = self
            .state
            .list_tasks(&node, &req.get_ref().entry_ids)
            .await?
            .iter()
            .map(|t| task_to_pb(t, now))
            .collect();
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    type WatchBundlesStream = Stream<pb::WatchBundlesResponse>;

    async fn watch_bundles(
        &self,
        req: Request<pb::WatchBundlesRequest>,
    ) -> Result<Response<Self::WatchBundlesStream>, Status> {
        let node = caller(&req)?.node;
        let mut watch = self.state.watch_bundles(node.spiffe_id);
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    n = watch.next() => n,
                    _ = tx.closed() => return,
                };
                let msg = match next {
                    Ok(b) => bundles_pb(&b),
                    Err(end) => {
                        let _ = tx.send(Err(end.into())).await;
                        return;
                    }
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
