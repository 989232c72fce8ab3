//! The signing flow: X509-SVIDs from CSRs (in batches, on a bounded queue of blocking threads),
//! X509-SVIDs for keys made here, JWT-SVIDs.
//!
//! A batch is authorised as a whole (one entry the agent may not have refuses all), signed
//! without the index lock, then re-checked (see [`crate::authorise`]) before the response is
//! produced. A response never exceeds [`MAX_RESPONSE_BYTES`]: what does not fit is answered
//! "ask again" unsigned.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Semaphore;
use writ_ca::{CaError, MintedSvid, PrivateKey};
use writ_core::{AttestedNode, Entry, SpiffeId};
use writ_proto::v1 as pb;
use writ_store::StoreError;

use crate::state::{unpoison, ServerState};

/// Why something was not signed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignError {
    /// Too many CSRs in one batch.
    #[error("batch of {0} requests is over the limit of {MAX_BATCH}")]
    BatchTooLarge(usize),
    /// The agent may not have an SVID for this entry.
    #[error("agent `{agent}` is not authorised for entry `{entry}`")]
    NotAuthorised {
        /// The agent.
        agent: SpiffeId,
        /// The entry ID asked for.
        entry: String,
    },
    /// The entry was deleted, changed or withdrawn while its JWT-SVID was minted.
    #[error("entry `{entry}` was deleted, changed or withdrawn from agent `{agent}` while it was minted")]
    Withdrawn {
        /// The entry ID.
        entry: String,
        /// The agent.
        agent: SpiffeId,
    },
    /// The agent was evicted or banned while its request was signed.
    #[error("agent `{0}` was evicted or banned while its request was signed")]
    NodeGone(SpiffeId),
    /// A JWT-SVID audience list that is empty, too long, or holds an empty or oversized value.
    #[error("audience must hold 1 to {MAX_AUDIENCES} non-empty values of at most 1024 bytes")]
    BadAudience,
    /// The CA refused the request (see [`is_bad_request`]) or failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The signing queue is closed.
    #[error("server is shutting down")]
    ShuttingDown,
    /// A signing thread failed.
    #[error("signing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The set in force denies it.
    #[error(transparent)]
    Denied(#[from] crate::policy::Denied),
    /// The issue records could not be made durable: nothing is handed out unrecorded.
    #[error("not issued: {0}")]
    Audit(#[from] crate::audit::AuditError),
}

/// Most audiences one JWT-SVID may name. Every value is journalled with the token, so the
/// list bounds what one caller can make the journal write (a journal record must stay far
/// below the frame limit, or a whole group of other callers' records would be refused).
pub(crate) const MAX_AUDIENCES: usize = 64;

/// Whether a JWT-SVID audience list is acceptable.
fn audience_ok(audience: &[String]) -> bool {
    !audience.is_empty()
        && audience.len() <= MAX_AUDIENCES
        && audience.iter().all(|a| !a.is_empty() && a.len() <= 1024)
}

/// Whether a CA error is the requester's fault (a bad CSR, key, ID, TTL or DNS name) rather
/// than the server's.
pub(crate) fn is_bad_request(e: &CaError) -> bool {
    matches!(
        e,
        CaError::BadCsr(_)
            | CaError::CsrSignature
            | CaError::CaKeyReuse
            | CaError::BadPublicKey(_)
            | CaError::BadSpiffeId { .. }
            | CaError::ZeroTtl
            | CaError::BadDnsName(_)
    )
}

/// Most CSRs in one batch.
pub(crate) const MAX_BATCH: usize = 1000;
/// Most encoded bytes of one BatchSignX509 response (well under the 4 MiB message limit).
/// Entries may carry 64 DNS names, so 1,000 SVIDs can be ~17 MB: requests past this budget are
/// answered with an error and not signed, and the agent asks for them again in its next batch.
pub(crate) const MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024;

/// CSRs in the smallest chunk handed to a signing thread (a CSR costs ~0.1 ms).
const MIN_CHUNK: usize = 8;
/// Signing chunks allowed to run at once, per core. One per core leaves cores idle while
/// finished batches are on the wire (measured: 0.68x of rcgen's CSR path against 0.87x with
/// four); the bound keeps a flood of batches from starting hundreds of threads.
const QUEUE_DEPTH: usize = 4;

impl ServerState {
    /// Signs an X509-SVID from a CSR.
    pub(crate) fn mint_from_csr(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        ttl: i64,
        dns: &[String],
    ) -> Result<MintedSvid, SignError> {
        let ca = self.ca.read().unwrap_or_else(unpoison).x509_authority();
        let svid = ca.mint_from_csr(csr, id, ttl, dns, writ_core::now_unix())?;
        self.metrics.x509_signed.fetch_add(1, Ordering::Relaxed);
        Ok(svid)
    }

    /// Signs an X509-SVID for a key made here (operator `x509 mint`).
    pub(crate) fn mint_with_new_key(
        &self,
        id: &SpiffeId,
        ttl: i64,
        dns: &[String],
    ) -> Result<(MintedSvid, PrivateKey), SignError> {
        let key = PrivateKey::generate(writ_ca::KeyType::EcP256)?;
        let spki = key.public_key_spki()?;
        let ca = self.ca.read().unwrap_or_else(unpoison).x509_authority();
        let svid = ca.mint(&writ_ca::SvidRequest {
            spiffe_id: id,
            public_key_spki: &spki,
            ttl_secs: ttl,
            dns_names: dns,
            now: writ_core::now_unix(),
        })?;
        self.metrics.x509_signed.fetch_add(1, Ordering::Relaxed);
        Ok((svid, key))
    }

    /// Signs a JWT-SVID.
    pub(crate) fn mint_jwt(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: i64,
    ) -> Result<MintedJwt, SignError> {
        if !audience_ok(audience) {
            return Err(SignError::BadAudience);
        }
        let signer = self.ca.read().unwrap_or_else(unpoison).jwt_signer();
        let (token, exp, jti) = signer.sign_with_jti(id, audience, ttl, writ_core::now_unix())?;
        let out = MintedJwt { token, exp, jti };
        self.metrics.jwt_signed.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }
    /// Mints a JWT-SVID of entry `entry_id` for `node` (see [`ServerState::mint_token_for`]).
    pub(crate) fn mint_jwt_for(
        &self,
        node: &AttestedNode,
        entry_id: &str,
        audience: &[String],
    ) -> Result<(MintedJwt, Arc<Entry>), SignError> {
        // Before policy too: its denial record would carry the list.
        if !audience_ok(audience) {
            return Err(SignError::BadAudience);
        }
        self.mint_token_for(
            node,
            entry_id,
            writ_policy::Action::MintJwt,
            audience,
            |e, ttl| self.mint_jwt(&e.spiffe_id, audience, ttl),
        )
    }

    /// A token (JWT-SVID, WIT-SVID) of entry `entry_id` for `node`, made by `mint` with the
    /// entry's JWT lifetime: the entry must be authorised for the agent before minting,
    /// permitted by policy (`action`), and still authorised, unchanged, after (as for
    /// X509-SVIDs: nothing for an entry deleted or withdrawn while it was minted).
    pub(crate) fn mint_token_for<T>(
        &self,
        node: &AttestedNode,
        entry_id: &str,
        action: writ_policy::Action,
        audience: &[String],
        mint: impl FnOnce(&Entry, i64) -> Result<T, SignError>,
    ) -> Result<(T, Arc<Entry>), SignError> {
        let entry = self
            .authorized_for(node, &[entry_id])?
            .pop()
            .ok_or_else(|| SignError::NotAuthorised {
                agent: node.spiffe_id.clone(),
                entry: entry_id.to_owned(),
            })?;
        let ttl = if entry.jwt_svid_ttl > 0 {
            entry.jwt_svid_ttl as i64
        } else {
            self.cfg.default_jwt_svid_ttl
        };
        let req = writ_policy::MintRequest {
            action,
            principal: crate::policy::workload(&entry, node),
            spiffe_id: entry.spiffe_id.to_string(),
            ttl,
            audiences: audience.to_vec(),
            now: writ_core::now_unix(),
            purpose: String::new(),
        };
        if let Err(d) = self.decide(&req, &entry.id) {
            let rec =
                self.denial_record(writ_audit::Actor::agent(node.spiffe_id.as_str()), &req, &d);
            return Err(SignError::Denied(d.with_record(rec)));
        }
        let out = mint(&entry, ttl)?;
        if !self
            .still_authorised(node, std::slice::from_ref(&entry))?
            .iter()
            .all(|ok| *ok)
        {
            return Err(SignError::Withdrawn {
                entry: entry.id.clone(),
                agent: node.spiffe_id.clone(),
            });
        }
        Ok((out, entry))
    }
}

/// A signed JWT-SVID.
#[derive(Debug, Clone)]
pub(crate) struct MintedJwt {
    /// The compact JWS.
    pub(crate) token: String,
    /// `exp` (unix seconds).
    pub(crate) exp: i64,
    /// `jti`.
    pub(crate) jti: String,
}

/// A generous estimate of a signed result's encoded size for `e`: the leaf (fixed fields, the
/// SPIFFE ID and DNS names in the SAN) plus the CA chain sent with it.
fn estimated_result_len(e: &Entry, chain_bytes: usize) -> usize {
    1024 + chain_bytes
        + 2 * e.spiffe_id.as_str().len()
        + e.id.len()
        + e.dns_names.iter().map(|d| d.len() + 8).sum::<usize>()
}

/// The result for a request left unsigned because the response is full.
fn not_signed(entry_id: String) -> pb::SignX509Result {
    pb::SignX509Result {
        entry_id,
        cert_chain: Vec::new(),
        expires_at: 0,
        error: format!(
            "not signed in this batch: the response would exceed {MAX_RESPONSE_BYTES} bytes; ask again"
        ),
    }
}

/// The signing queue. CSR verification and signing are pure CPU, so they run on blocking
/// threads (never on the async workers that carry sync streams and handshakes), at most
/// [`QUEUE_DEPTH`] chunks per core at a time, in arrival order (tokio's semaphore is fair); one
/// agent's batch is split over the cores.
#[derive(Debug, Clone)]
pub(crate) struct SigningQueue {
    state: Arc<ServerState>,
    permits: Arc<Semaphore>,
    cores: usize,
}

impl SigningQueue {
    /// A queue sized for this machine's cores.
    pub(crate) fn new(state: Arc<ServerState>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        SigningQueue {
            state,
            permits: Arc::new(Semaphore::new(cores * QUEUE_DEPTH)),
            cores,
        }
    }

    /// Signs a batch for an authenticated agent: authorise every entry (refusing the whole batch
    /// if one is not authorised), sign on the queue, then re-check against the index as it is
    /// when the response is produced; a node banned or evicted meanwhile gets nothing.
    pub(crate) async fn sign_batch(
        &self,
        node: &AttestedNode,
        requests: Vec<pb::SignX509Request>,
    ) -> Result<pb::BatchSignX509Response, SignError> {
        if requests.len() > MAX_BATCH {
            return Err(SignError::BatchTooLarge(requests.len()));
        }
        let entries = self.authorise_batch(node, &requests)?;
        self.sign_authorised(node, requests, entries).await
    }

    /// The entries of `requests` (in order) if `node` may have SVIDs for every one of them;
    /// otherwise PermissionDenied for the whole batch, so nothing is signed.
    pub(crate) fn authorise_batch(
        &self,
        node: &AttestedNode,
        requests: &[pb::SignX509Request],
    ) -> Result<Vec<Arc<Entry>>, SignError> {
        let wanted: Vec<&str> = requests.iter().map(|r| r.entry_id.as_str()).collect();
        self.state
            .authorized_for(node, &wanted)
            .inspect_err(|e| tracing::warn!(error = %e, "unauthorised signing request"))
    }

    /// Signs `requests`, authorised as `entries` by [`SigningQueue::authorise_batch`], on the
    /// queue, then withdraws what is no longer authorised now.
    pub(crate) async fn sign_authorised(
        &self,
        node: &AttestedNode,
        requests: Vec<pb::SignX509Request>,
        entries: Vec<Arc<Entry>>,
    ) -> Result<pb::BatchSignX509Response, SignError> {
        let st = &self.state;
        // Sign only what fits in one response; the rest is answered "ask again" unsigned.
        let chain_bytes = {
            let ca = st.ca.read().unwrap_or_else(unpoison).x509_authority();
            ca.cert_der().len() + ca.upstream_chain().iter().map(Vec::len).sum::<usize>()
        };
        let mut budget = MAX_RESPONSE_BYTES;
        let mut fit = 0;
        for e in &entries {
            let est = estimated_result_len(e, chain_bytes);
            if fit > 0 && est > budget {
                break;
            }
            budget = budget.saturating_sub(est);
            fit += 1;
        }
        let mut requests = requests;
        let deferred: Vec<pb::SignX509Request> = requests.split_off(fit);
        let jobs: Vec<(pb::SignX509Request, Arc<Entry>)> =
            requests.into_iter().zip(entries.iter().cloned()).collect();
        let per = jobs.len().div_ceil(self.cores).max(MIN_CHUNK);
        let mut chunks = Vec::new();
        let mut jobs = jobs.into_iter();
        loop {
            let chunk: Vec<_> = jobs.by_ref().take(per).collect();
            if chunk.is_empty() {
                break;
            }
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| SignError::ShuttingDown)?;
            let st = self.state.clone();
            let node = node.clone();
            chunks.push(tokio::task::spawn_blocking(move || {
                let _permit = permit;
                chunk
                    .into_iter()
                    .map(|(r, e)| sign_one(&st, &node, r, &e))
                    .collect::<Vec<_>>()
            }));
        }
        let mut results = Vec::new();
        let mut serials = Vec::new();
        let mut denials = Vec::new();
        for c in chunks {
            for (r, serial, denied) in c.await? {
                results.push(r);
                serials.push(serial);
                denials.extend(denied);
            }
        }
        results.extend(deferred.into_iter().map(|r| not_signed(r.entry_id)));
        // Backstop for the estimate: never answer over the limit.
        let mut used = 0;
        for r in &mut results {
            used += crate::paging::field_len(r);
            if used > MAX_RESPONSE_BYTES && r.error.is_empty() {
                *r = not_signed(std::mem::take(&mut r.entry_id));
            }
        }
        st.withdraw_unauthorised(node, &entries, &mut results)?;
        // Issued means recorded: the records are durable before the response leaves.
        let issued = results
            .iter()
            .zip(&serials)
            .zip(&entries)
            .filter(|((r, _), _)| !r.cert_chain.is_empty())
            .flat_map(|((r, serial), e)| {
                let actor = writ_audit::Actor::agent(node.spiffe_id.as_str());
                let mut recs = vec![crate::audit::events::x509_issued(
                    actor.clone(),
                    e,
                    serial,
                    r.expires_at,
                )];
                if e.break_glass {
                    st.metrics.break_glass.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(entry = %e.id, spiffe_id = %e.spiffe_id, serial, "BREAK-GLASS SVID issued");
                    recs.push(crate::audit::events::break_glass_used(
                        actor,
                        e,
                        Some(serial),
                        None,
                    ));
                }
                recs
            })
            .chain(denials)
            .collect();
        st.audit.record(issued).await?;
        Ok(pb::BatchSignX509Response { results })
    }
}

/// Verifies one CSR and signs its X509-SVID; a refusal is reported in the result, not as an error
/// for the whole batch.
fn sign_one(
    st: &ServerState,
    node: &AttestedNode,
    r: pb::SignX509Request,
    e: &Entry,
) -> (pb::SignX509Result, String, Option<writ_audit::NewRecord>) {
    let ttl = st.x509_ttl(e);
    let req = writ_policy::MintRequest {
        action: writ_policy::Action::MintX509,
        principal: crate::policy::workload(e, node),
        spiffe_id: e.spiffe_id.to_string(),
        ttl,
        audiences: Vec::new(),
        now: writ_core::now_unix(),
        purpose: String::new(),
    };
    if let Err(d) = st.decide(&req, &e.id) {
        let rec = st.denial_record(writ_audit::Actor::agent(node.spiffe_id.as_str()), &req, &d);
        return (
            pb::SignX509Result {
                entry_id: r.entry_id,
                cert_chain: Vec::new(),
                expires_at: 0,
                error: d.to_string(),
            },
            String::new(),
            Some(rec),
        );
    }
    match st.mint_from_csr(&r.csr, &e.spiffe_id, ttl, &e.dns_names) {
        Ok(svid) => (
            pb::SignX509Result {
                entry_id: r.entry_id,
                cert_chain: svid.chain,
                expires_at: svid.not_after,
                error: String::new(),
            },
            svid.serial_hex,
            None,
        ),
        Err(e) => {
            // Counted like a refused call: a bad CSR is bad input, whatever else the batch holds.
            if matches!(&e, SignError::Ca(c) if is_bad_request(c)) {
                st.metrics.count_code(tonic::Code::InvalidArgument);
            } else {
                tracing::error!(error = %e, entry = %r.entry_id, "signing failed");
            }
            (
                pb::SignX509Result {
                    entry_id: r.entry_id,
                    cert_chain: Vec::new(),
                    expires_at: 0,
                    error: e.to_string(),
                },
                String::new(),
                None,
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use super::*;
    use writ_core::{Selector, TrustDomain};

    /// A real server (store, CA, index) in a temporary directory.
    pub(crate) async fn server(dir: &std::path::Path) -> crate::RunningServer {
        let cfg = crate::ServerConfig::parse(&format!(
            "trust_domain = \"example.org\"\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\n[node_attestor.join_token]\n",
            dir.join("run/admin.sock").display(),
            dir.join("data").display(),
        ))
        .unwrap();
        crate::start(cfg).await.unwrap()
    }

    fn agent(st: &ServerState) -> AttestedNode {
        let id = TrustDomain::new("example.org")
            .unwrap()
            .id("/writ/agent/join_token/test")
            .unwrap();
        let n = AttestedNode {
            spiffe_id: id,
            attestor: "join_token".into(),
            selectors: Vec::new(),
            cert_serial: "01".into(),
            cert_not_after: i64::MAX,
            prev_cert_serial: String::new(),
            aliases: Vec::new(),
            banned: false,
            created_at: 0,
            revision: 0,
        };
        st.store.put_node(n.clone()).unwrap();
        n
    }

    fn request(entry_id: &str) -> pb::SignX509Request {
        let k = writ_ca::PrivateKey::generate(writ_ca::KeyType::EcP256).unwrap();
        pb::SignX509Request {
            entry_id: entry_id.to_owned(),
            csr: k.csr_der().unwrap(),
        }
    }

    /// Item 16 of issue 10: authorisation was checked under the index lock, but signing ran
    /// after it was released, so an entry deleted (or changed) between the two was still
    /// issued. The interleaving is forced here: the batch is authorised, then the operator
    /// deletes one entry and updates another (both acknowledged), then the batch is signed. The
    /// response must not carry an SVID for either; the untouched entry is still issued. Before
    /// the fix the response carried all three SVIDs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_deleted_or_changed_while_a_batch_is_signed_are_not_issued() {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path()).await;
        let st = srv.state.clone();
        let node = agent(&st);
        let mk = |p: &str| {
            Entry::new(
                st.cfg.trust_domain.id(p).unwrap(),
                node.spiffe_id.clone(),
                vec![Selector::parse("unix:uid:1").unwrap()],
            )
        };
        let created = st
            .create_entries(vec![mk("/kept"), mk("/deleted"), mk("/changed")])
            .await
            .unwrap();
        let queue = SigningQueue::new(st.clone());
        let reqs: Vec<_> = created.iter().map(|e| request(&e.id)).collect();
        let authorised = queue.authorise_batch(&node, &reqs).unwrap();

        st.delete_entry(&created[1].id).await.unwrap();
        let mut changed = created[2].clone();
        changed.dns_names = vec!["moved.example.org".into()];
        st.update_entry(changed).await.unwrap();

        let resp = queue
            .sign_authorised(&node, reqs, authorised)
            .await
            .unwrap();
        let r = &resp.results;
        assert!(
            r[0].error.is_empty() && !r[0].cert_chain.is_empty(),
            "{:?}",
            r[0].error
        );
        for (i, what) in [(1, "deleted"), (2, "changed")] {
            assert!(
                r[i].cert_chain.is_empty(),
                "an SVID for the {what} entry was issued"
            );
            assert!(r[i].error.contains(&created[i].id), "{}", r[i].error);
        }

        // A node banned while its batch is signed gets nothing at all.
        let reqs = vec![request(&created[0].id)];
        let authorised = queue.authorise_batch(&node, &reqs).unwrap();
        st.ban_node(&node.spiffe_id).unwrap();
        let err = queue
            .sign_authorised(&node, reqs, authorised)
            .await
            .unwrap_err();
        assert!(matches!(err, SignError::NodeGone(_)), "{err}");
        srv.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}
