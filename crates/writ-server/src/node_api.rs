//! The agent-facing `writ.v1.Node` service (served over TLS).
//!
//! `Attest` needs no client certificate; every other method authenticates the caller with
//! [`ServerState::authenticate`] and checks each requested entry against the caller's authorised
//! set, computed from the entry index on the server, never trusted from the agent.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use writ_core::{AttestedNode, Entry, SpiffeId};
use writ_proto::v1 as pb;
use writ_proto::v1::node_server::Node;

use crate::attest::{AttestError, Step};
use crate::index::EntryIndex;
use crate::state::{store_status, Event, ServerState};
use writ_proto::convert::{bundle_to_pb, entry_to_pb};

/// Entries per snapshot page (each entry is a few hundred bytes, so a page stays far below
/// gRPC's 4 MB message limit whatever the entry count).
pub const PAGE_SIZE: usize = 500;
/// Most CSRs in one batch.
pub const MAX_BATCH: usize = 1000;
/// How long an agent has to answer an attestation challenge.
pub const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(30);

/// CSRs in the smallest chunk handed to a signing thread (a CSR costs ~0.1 ms).
const MIN_CHUNK: usize = 8;
/// Signing chunks allowed to run at once, per core. One per core leaves cores idle while
/// finished batches are on the wire (measured: 0.68x of rcgen's CSR path against 0.87x with
/// four); the bound keeps a flood of batches from starting hundreds of threads.
const QUEUE_DEPTH: usize = 4;

/// The Node service.
#[derive(Debug, Clone)]
pub struct NodeApi {
    state: Arc<ServerState>,
    /// The signing queue. CSR verification and signing are pure CPU, so they run on blocking
    /// threads (never on the async workers that carry sync streams and handshakes), at most
    /// [`QUEUE_DEPTH`] chunks per core at a time, in arrival order (tokio's semaphore is fair);
    /// one agent's batch is split over the cores.
    signers: Arc<Semaphore>,
    cores: usize,
}

impl NodeApi {
    /// Wraps the shared state.
    pub fn new(state: Arc<ServerState>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        NodeApi {
            state,
            signers: Arc::new(Semaphore::new(cores * QUEUE_DEPTH)),
            cores,
        }
    }

    fn peer_ip<T>(req: &Request<T>) -> Option<IpAddr> {
        req.extensions()
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .and_then(|i| i.get_ref().remote_addr())
            .map(|a| a.ip())
    }

    fn agent_svid(
        &self,
        id: &SpiffeId,
        svid: &writ_ca::MintedSvid,
    ) -> Result<pb::AgentSvid, Status> {
        let own = self.state.bundles.borrow().own.clone();
        Ok(pb::AgentSvid {
            spiffe_id: id.to_string(),
            cert_chain: svid.chain.clone(),
            expires_at: svid.not_after,
            bundle: Some(bundle_to_pb(&own)?),
        })
    }

    async fn do_attest(
        &self,
        mut inbound: Streaming<pb::AttestRequest>,
        tx: &mpsc::Sender<Result<pb::AttestResponse, Status>>,
    ) -> Result<(), Status> {
        let st = &self.state;
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("attestation stream closed before any data"))?;
        let Some(pb::attest_request::Step::Params(params)) = first.step else {
            return Err(Status::invalid_argument(
                "first attestation message must carry params",
            ));
        };
        let attestor = st.attestors.get(&params.attestor).ok_or_else(|| {
            Status::invalid_argument(format!(
                "node attestor `{}` is not enabled on this server",
                params.attestor
            ))
        })?;
        // Check the CSR before anything is consumed (a join token is single use).
        writ_ca::x509::csr_public_key(&params.csr)
            .map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
        let now = writ_core::now_unix();
        let attested = match attestor
            .start(&params.payload, now)
            .map_err(attest_status)?
        {
            Step::Done(a) => a,
            Step::Challenge { challenge, pending } => {
                tx.send(Ok(pb::AttestResponse {
                    step: Some(pb::attest_response::Step::Challenge(challenge)),
                }))
                .await
                .map_err(|_| Status::cancelled("agent went away"))?;
                let msg = tokio::time::timeout(CHALLENGE_TIMEOUT, inbound.message())
                    .await
                    .map_err(|_| {
                        Status::deadline_exceeded("no answer to the attestation challenge")
                    })??
                    .ok_or_else(|| {
                        Status::invalid_argument(
                            "attestation stream closed before the challenge answer",
                        )
                    })?;
                let Some(pb::attest_request::Step::ChallengeResponse(resp)) = msg.step else {
                    return Err(Status::invalid_argument("expected a challenge response"));
                };
                pending.verify(&resp).map_err(attest_status)?
            }
        };
        let existing = st
            .store
            .get_node(&attested.agent_id)
            .map_err(store_status)?;
        if let Some(n) = &existing {
            if n.banned {
                return Err(Status::permission_denied(format!(
                    "agent `{}` is banned",
                    n.spiffe_id
                )));
            }
            if !attested.can_reattest {
                return Err(Status::permission_denied(format!(
                    "agent `{}` is already attested and this attestor cannot re-attest",
                    n.spiffe_id
                )));
            }
        }
        let svid = st.mint_from_csr(&params.csr, &attested.agent_id, st.cfg.agent_svid_ttl, &[])?;
        let node = AttestedNode {
            spiffe_id: attested.agent_id.clone(),
            attestor: attestor.name().to_owned(),
            selectors: attested.selectors,
            cert_serial: svid.serial_hex.clone(),
            cert_not_after: svid.not_after,
            prev_cert_serial: String::new(),
            aliases: attested.aliases,
            banned: false,
            created_at: existing.map(|n| n.created_at).unwrap_or(now),
            revision: 0,
        };
        st.store.put_node(node).map_err(store_status)?;
        tracing::info!(agent = %attested.agent_id, attestor = attestor.name(), "agent attested");
        tx.send(Ok(pb::AttestResponse {
            step: Some(pb::attest_response::Step::Svid(
                self.agent_svid(&attested.agent_id, &svid)?,
            )),
        }))
        .await
        .map_err(|_| Status::cancelled("agent went away"))?;
        Ok(())
    }
}

fn attest_status(e: AttestError) -> Status {
    match e {
        AttestError::Malformed(_) => Status::invalid_argument(e.to_string()),
        AttestError::Refused(_) => Status::permission_denied(e.to_string()),
        AttestError::Internal(_) => Status::internal(e.to_string()),
    }
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Node for NodeApi {
    type AttestStream = Stream<pb::AttestResponse>;

    async fn attest(
        &self,
        req: Request<Streaming<pb::AttestRequest>>,
    ) -> Result<Response<Self::AttestStream>, Status> {
        if let Some(ip) = Self::peer_ip(&req) {
            if !self.state.attest_allowed(ip) {
                self.state
                    .metrics
                    .attest_rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Status::resource_exhausted(
                    "too many attestation attempts from this address",
                ));
            }
        }
        let (tx, rx) = mpsc::channel(2);
        let api = self.clone();
        let inbound = req.into_inner();
        tokio::spawn(async move {
            match api.do_attest(inbound, &tx).await {
                Ok(()) => {
                    api.state.metrics.attest_ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(s) => {
                    api.state
                        .metrics
                        .attest_failed
                        .fetch_add(1, Ordering::Relaxed);
                    api.state.metrics.count_status(&s);
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
        let st = &self.state;
        let mut node = st.authenticate(&req)?;
        let presented = {
            use x509_parser::prelude::FromDer;
            let certs = req.peer_certs().unwrap_or_default();
            let leaf = certs
                .first()
                .map(|c| c.as_ref().to_vec())
                .unwrap_or_default();
            x509_parser::prelude::X509Certificate::from_der(&leaf)
                .map(|(_, c)| hex::encode(c.raw_serial()))
                .unwrap_or_default()
        };
        let svid = st
            .mint_from_csr(
                &req.get_ref().csr,
                &node.spiffe_id,
                st.cfg.agent_svid_ttl,
                &[],
            )
            .inspect_err(|s| st.metrics.count_status(s))?;
        // The SVID the agent used for this call stays valid until it uses the new one.
        node.prev_cert_serial = presented;
        node.cert_serial = svid.serial_hex.clone();
        node.cert_not_after = svid.not_after;
        st.store.put_node(node.clone()).map_err(store_status)?;
        tracing::debug!(agent = %node.spiffe_id, "agent SVID renewed");
        Ok(Response::new(pb::RenewAgentResponse {
            svid: Some(self.agent_svid(&node.spiffe_id, &svid)?),
        }))
    }

    type SyncEntriesStream = Stream<pb::SyncEntriesResponse>;

    async fn sync_entries(
        &self,
        req: Request<pb::SyncEntriesRequest>,
    ) -> Result<Response<Self::SyncEntriesStream>, Status> {
        let node = self.state.authenticate(&req)?;
        let after = req.get_ref().after_revision;
        // Subscribe before taking the snapshot so no change can fall in between.
        let events = self.state.events.subscribe();
        let (tx, rx) = mpsc::channel(8);
        let st = self.state.clone();
        tokio::spawn(async move {
            st.metrics.sync_streams.fetch_add(1, Ordering::Relaxed);
            let r = sync_loop(&st, node, after, events, &tx).await;
            st.metrics.sync_streams.fetch_sub(1, Ordering::Relaxed);
            if let Err(s) = r {
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn batch_sign_x509(
        &self,
        req: Request<pb::BatchSignX509Request>,
    ) -> Result<Response<pb::BatchSignX509Response>, Status> {
        let st = &self.state;
        let node = st.authenticate(&req)?;
        let reqs = &req.get_ref().requests;
        if reqs.len() > MAX_BATCH {
            let s = Status::invalid_argument(format!(
                "batch of {} requests is over the limit of {MAX_BATCH}",
                reqs.len()
            ));
            st.metrics.count_status(&s);
            return Err(s);
        }
        // Refuse the whole batch if any entry is not authorised: nothing is signed.
        let wanted: Vec<&str> = reqs.iter().map(|r| r.entry_id.as_str()).collect();
        let entries = st.authorized_for(&node, &wanted).map_err(|bad| {
            let s = Status::permission_denied(format!(
                "agent `{}` is not authorised for entry `{bad}`",
                node.spiffe_id
            ));
            st.metrics.count_status(&s);
            tracing::warn!(agent = %node.spiffe_id, entry = %bad, "unauthorised signing request");
            s
        })?;
        let jobs: Vec<(pb::SignX509Request, Arc<Entry>)> =
            req.into_inner().requests.into_iter().zip(entries).collect();
        let per = jobs.len().div_ceil(self.cores).max(MIN_CHUNK);
        let mut chunks = Vec::new();
        let mut jobs = jobs.into_iter();
        loop {
            let chunk: Vec<_> = jobs.by_ref().take(per).collect();
            if chunk.is_empty() {
                break;
            }
            let permit = self
                .signers
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Status::unavailable("server is shutting down"))?;
            let st = self.state.clone();
            chunks.push(tokio::task::spawn_blocking(move || {
                let _permit = permit;
                chunk
                    .into_iter()
                    .map(|(r, e)| sign_one(&st, r, &e))
                    .collect::<Vec<_>>()
            }));
        }
        let mut results = Vec::new();
        for c in chunks {
            results.extend(
                c.await
                    .map_err(|e| Status::internal(format!("signing task failed: {e}")))?,
            );
        }
        Ok(Response::new(pb::BatchSignX509Response { results }))
    }

    async fn mint_jwt(
        &self,
        req: Request<pb::MintJwtRequest>,
    ) -> Result<Response<pb::MintJwtResponse>, Status> {
        let st = &self.state;
        let node = st.authenticate(&req)?;
        let r = req.get_ref();
        let entry = st
            .authorized_for(&node, &[r.entry_id.as_str()])
            .ok()
            .and_then(|mut v| v.pop())
            .ok_or_else(|| {
                let s = Status::permission_denied(format!(
                    "agent `{}` is not authorised for entry `{}`",
                    node.spiffe_id, r.entry_id
                ));
                st.metrics.count_status(&s);
                s
            })?;
        let ttl = if entry.jwt_svid_ttl > 0 {
            entry.jwt_svid_ttl as i64
        } else {
            st.cfg.default_jwt_svid_ttl
        };
        let (token, expires_at) = st
            .mint_jwt(&entry.spiffe_id, &r.audience, ttl)
            .inspect_err(|s| st.metrics.count_status(s))?;
        Ok(Response::new(pb::MintJwtResponse { token, expires_at }))
    }

    type WatchBundlesStream = Stream<pb::WatchBundlesResponse>;

    async fn watch_bundles(
        &self,
        req: Request<pb::WatchBundlesRequest>,
    ) -> Result<Response<Self::WatchBundlesStream>, Status> {
        let node = self.state.authenticate(&req)?;
        let mut rx_b = self.state.bundles.subscribe();
        let mut events = self.state.events.subscribe();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                let msg = {
                    let b = rx_b.borrow_and_update();
                    let own = bundle_to_pb(&b.own);
                    let fed: Result<Vec<_>, _> = b.federated.iter().map(bundle_to_pb).collect();
                    match (own, fed) {
                        (Ok(own), Ok(federated)) => Ok(pb::WatchBundlesResponse {
                            own: Some(own),
                            federated,
                        }),
                        (Err(e), _) | (_, Err(e)) => Err(e),
                    }
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        r = rx_b.changed() => { if r.is_err() { return; } break; }
                        ev = events.recv() => match ev {
                            Ok(Event::NodeGone(id)) if id == node.spiffe_id => {
                                let _ = tx.send(Err(Status::permission_denied("agent was evicted or banned"))).await;
                                return;
                            }
                            Ok(Event::Shutdown) => {
                                let _ = tx.send(Err(Status::unavailable("server is shutting down"))).await;
                                return;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                            _ => {}
                        },
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Snapshot in pages, then a diff of the authorised set on every relevant change.
async fn sync_loop(
    st: &Arc<ServerState>,
    node: AttestedNode,
    after: u64,
    mut events: broadcast::Receiver<Event>,
    tx: &mpsc::Sender<Result<pb::SyncEntriesResponse, Status>>,
) -> Result<(), Status> {
    let send = |msg| async move {
        tx.send(Ok(msg))
            .await
            .map_err(|_| Status::cancelled("agent went away"))
    };
    let (revision, identities, set) = st.authorized(&node);
    let mut watch_ids = watched_ids(&identities, &set);
    if after != 0 && after <= revision && nothing_changed_for(st, &watch_ids, &set, after, revision)
    {
        // Nothing that concerns this agent changed since its copy: it keeps what it has.
        send(pb::SyncEntriesResponse {
            event: Some(pb::sync_entries_response::Event::Snapshot(
                pb::SnapshotPage {
                    entries: Vec::new(),
                    last: true,
                    revision,
                    unchanged: true,
                },
            )),
        })
        .await?;
    } else {
        let mut pages = set.chunks(PAGE_SIZE).peekable();
        if pages.peek().is_none() {
            send(snapshot_page(&[], true, revision)).await?;
        }
        while let Some(page) = pages.next() {
            let last = pages.peek().is_none();
            send(snapshot_page(page, last, revision)).await?;
        }
    }
    let mut current: HashMap<String, u64> =
        set.iter().map(|e| (e.id.clone(), e.revision)).collect();
    let mut next_expiry = next_expiry(&set);
    loop {
        let sleep = tokio::time::sleep(Duration::from_secs(
            next_expiry
                .map(|t| (t - writ_core::now_unix()).clamp(0, 3600) as u64)
                .unwrap_or(3600),
        ));
        let recompute_at;
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(Event::Entry(c)) => {
                    if c.revision <= revision
                        || !EntryIndex::touches(&c.entry, &watch_ids, &current)
                    {
                        continue;
                    }
                    recompute_at = c.revision;
                }
                Ok(Event::NodeGone(id)) if id == node.spiffe_id => {
                    return Err(Status::permission_denied("agent was evicted or banned"));
                }
                Ok(Event::NodeGone(_)) => continue,
                Ok(Event::Shutdown) => return Err(Status::unavailable("server is shutting down")),
                // Missed events: recompute from the index, which is always current.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    recompute_at = st.index.read().unwrap_or_else(|p| p.into_inner()).revision();
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = sleep => {
                recompute_at = st.index.read().unwrap_or_else(|p| p.into_inner()).revision();
            }
            _ = tx.closed() => return Ok(()),
        }
        // A burst of changes (a bulk create commits thousands) is folded into one recomputation:
        // whatever is already queued is covered by the set computed next, so computing it per
        // change would cost O(changes x set) for nothing.
        loop {
            match events.try_recv() {
                Ok(Event::NodeGone(id)) if id == node.spiffe_id => {
                    return Err(Status::permission_denied("agent was evicted or banned"));
                }
                Ok(Event::Shutdown) => return Err(Status::unavailable("server is shutting down")),
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        // The set is exactly the index as of `as_of`, which is at least `recompute_at`.
        let (as_of, identities, set) = st.authorized(&node);
        let recompute_at = recompute_at.max(as_of);
        let mut upserts = Vec::new();
        let mut next: HashMap<String, u64> = HashMap::with_capacity(set.len());
        for e in &set {
            if current.get(&e.id) != Some(&e.revision) {
                upserts.push(entry_to_pb(e));
            }
            next.insert(e.id.clone(), e.revision);
        }
        let removed_ids: Vec<String> = current
            .keys()
            .filter(|k| !next.contains_key(*k))
            .cloned()
            .collect();
        current = next;
        watch_ids = watched_ids(&identities, &set);
        next_expiry = self::next_expiry(&set);
        if upserts.is_empty() && removed_ids.is_empty() {
            continue;
        }
        send(pb::SyncEntriesResponse {
            event: Some(pb::sync_entries_response::Event::Change(pb::EntryChange {
                revision: recompute_at,
                upserts,
                removed_ids,
            })),
        })
        .await?;
    }
}

/// Most log records read to decide whether a resuming agent's copy is still current.
pub const MAX_RESUME_SCAN: usize = 10_000;

/// Whether no change in the revision log between `after` (exclusive) and `revision` (inclusive)
/// could have altered what an agent holds (`watch`: its identities and its entries' SPIFFE IDs).
/// A change matters when its entry (new or previous version) is one of the agent's entries, is parented to one of its identities or entries, or
/// is a node alias. Cost: proportional to the changes since `after`, never to all entries. When
/// the log no longer reaches back to `after` (compacted) or is too long, the answer is no and the
/// agent gets a snapshot.
fn nothing_changed_for(
    st: &ServerState,
    watch: &HashSet<SpiffeId>,
    set: &[Arc<Entry>],
    after: u64,
    revision: u64,
) -> bool {
    if after == revision {
        return true;
    }
    let Ok(changes) = st.store.changes_since(after, MAX_RESUME_SCAN) else {
        return false;
    };
    let covers = changes.first().is_some_and(|c| c.revision == after + 1)
        && changes.last().is_some_and(|c| c.revision >= revision);
    if !covers {
        return false;
    }
    let current: HashMap<String, u64> = set.iter().map(|e| (e.id.clone(), e.revision)).collect();
    !changes.iter().filter(|c| c.revision <= revision).any(|c| {
        EntryIndex::touches(&c.entry, watch, &current)
            || c.previous
                .as_ref()
                .is_some_and(|p| EntryIndex::touches(p, watch, &current))
    })
}

/// Verifies one CSR and signs its X509-SVID; a refusal is reported in the result, not as an error
/// for the whole batch.
fn sign_one(st: &ServerState, r: pb::SignX509Request, e: &Entry) -> pb::SignX509Result {
    let ttl = if e.x509_svid_ttl > 0 {
        e.x509_svid_ttl as i64
    } else {
        st.cfg.default_x509_svid_ttl
    };
    match st.mint_from_csr(&r.csr, &e.spiffe_id, ttl, &e.dns_names) {
        Ok(svid) => pb::SignX509Result {
            entry_id: r.entry_id,
            cert_chain: svid.chain,
            expires_at: svid.not_after,
            error: String::new(),
        },
        Err(s) => {
            st.metrics.count_status(&s);
            pb::SignX509Result {
                entry_id: r.entry_id,
                cert_chain: Vec::new(),
                expires_at: 0,
                error: s.message().to_owned(),
            }
        }
    }
}

fn snapshot_page(entries: &[Arc<Entry>], last: bool, revision: u64) -> pb::SyncEntriesResponse {
    pb::SyncEntriesResponse {
        event: Some(pb::sync_entries_response::Event::Snapshot(
            pb::SnapshotPage {
                entries: entries.iter().map(|e| entry_to_pb(e)).collect(),
                last,
                revision,
                unchanged: false,
            },
        )),
    }
}

/// IDs whose children matter to this agent: its identities and its entries' SPIFFE IDs.
fn watched_ids(identities: &[SpiffeId], set: &[Arc<Entry>]) -> HashSet<SpiffeId> {
    identities
        .iter()
        .cloned()
        .chain(set.iter().map(|e| e.spiffe_id.clone()))
        .collect()
}

fn next_expiry(set: &[Arc<Entry>]) -> Option<i64> {
    set.iter().filter_map(|e| e.expires_at).min()
}
