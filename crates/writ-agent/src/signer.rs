//! The signer: keeps one X509-SVID per *servable* entry (entries whose parent is not another
//! entry of the set; nested entries are for downstream agents). Keys are P-256, made here and
//! never sent anywhere but to the workload; CSRs go to the server in batches of up to
//! [`SIGN_BATCH`], with [`SIGN_IN_FLIGHT`] batches in flight so the agent makes the next batch's
//! keys (on a blocking thread) while the server signs the previous one.
//!
//! Rotation: an SVID is due at half its lifetime minus a random share of up to a tenth of it,
//! so SVIDs issued together come back spread over a window instead of at one instant.
//! Invariant: a signed SVID is kept only if its entry is still the revision that was asked for.

use std::sync::Arc;
use std::time::Duration;

use writ_ca::{KeyType, PrivateKey};
use writ_core::Entry;
use writ_proto::v1 as pb;

use crate::cache::{leaf_serial, CachedSvid, NewSvid};
use crate::failover::ServerGone;
use crate::node_client::Node;
use crate::state::AgentState;

/// Most CSRs per signing request.
pub(crate) const SIGN_BATCH: usize = 500;
/// Signing batches an agent keeps in flight at once.
pub(crate) const SIGN_IN_FLIGHT: usize = 2;

/// Most estimated bytes of SVIDs asked for in one batch: entries can carry 64 DNS names, so
/// 500 SVIDs could exceed the 4 MiB message limit (the server signs only what fits in its
/// response and answers the rest "ask again"; asking for less avoids that round trip).
pub(crate) const SIGN_BATCH_BYTES: usize = 1024 * 1024;

/// Cuts `due` into signing batches of at most [`SIGN_BATCH`] entries and about
/// [`SIGN_BATCH_BYTES`] of expected response (a batch always takes at least one entry).
fn sign_batches(due: &[Arc<Entry>]) -> Vec<&[Arc<Entry>]> {
    let est = |e: &Arc<Entry>| {
        2048 + e.spiffe_id.as_str().len() + e.dns_names.iter().map(|d| d.len() + 8).sum::<usize>()
    };
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in due.iter().enumerate() {
        let n = est(e);
        if i > start && (i - start >= SIGN_BATCH || bytes + n > SIGN_BATCH_BYTES) {
            out.push(&due[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < due.len() {
        out.push(&due[start..]);
    }
    out
}

impl AgentState {
    /// Keeps an SVID for every servable entry: signs what is missing, stale or due for rotation.
    /// A batch that finds the server gone is reported to `gone` (the session then fails over).
    pub(crate) async fn signer(self: Arc<Self>, client: Node, gone: ServerGone) {
        loop {
            let now = writ_core::now_unix();
            let (due, next_wake) = {
                let c = self.view.read();
                // The cache's own entries, shared: a deep copy of every due entry lived as
                // long as the signing pass, among the SVIDs it made, and left the heap
                // fragmented (~0.3 KiB of RSS an SVID at 10,000, heaptrack + `writ-bench agent`).
                let mut due: Vec<Arc<Entry>> = Vec::new();
                let mut next = i64::MAX;
                for e in c.servable_shared(now) {
                    match c.svids.get(e.id.as_str()) {
                        Some(s) if s.entry_revision == e.revision && now < s.rotate_at => {
                            next = next.min(s.rotate_at)
                        }
                        _ => due.push(e.clone()),
                    }
                }
                (due, next)
            };
            // Up to SIGN_IN_FLIGHT batches at once, so the next batch's keys are made while the
            // server signs the previous one instead of each side waiting for the other.
            let mut in_flight = tokio::task::JoinSet::new();
            let mut failed = false;
            for batch in sign_batches(&due) {
                if in_flight.len() >= SIGN_IN_FLIGHT {
                    failed |= Self::batch_failed(in_flight.join_next().await, &gone);
                }
                if failed {
                    break;
                }
                let (this, mut c, batch) = (self.clone(), client.clone(), batch.to_vec());
                in_flight.spawn(async move { this.sign_batch(&mut c, &batch).await });
            }
            while let Some(r) = in_flight.join_next().await {
                failed |= Self::batch_failed(Some(r), &gone);
            }
            if failed {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if !due.is_empty() {
                continue;
            }
            let wait = (next_wake - writ_core::now_unix()).clamp(0, 3600) as u64;
            tokio::select! {
                _ = self.sign_now.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
            }
        }
    }

    /// Logs a failed signing batch; true if it failed.
    fn batch_failed(
        r: Option<Result<Result<(), tonic::Status>, tokio::task::JoinError>>,
        gone: &ServerGone,
    ) -> bool {
        match r {
            Some(Ok(Err(s))) => {
                gone.check("BatchSignX509", &s);
                tracing::warn!(error = %s.message(), code = ?s.code(), "signing failed; will retry");
                true
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "signing task failed; will retry");
                true
            }
            _ => false,
        }
    }

    async fn sign_batch(
        &self,
        client: &mut Node,
        batch: &[Arc<Entry>],
    ) -> Result<(), tonic::Status> {
        // Key generation and CSR signing are CPU work (~40 us each): off the async workers.
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        let (keys, requests) = tokio::task::spawn_blocking(move || {
            let mut keys = Vec::with_capacity(ids.len());
            let mut requests = Vec::with_capacity(ids.len());
            for entry_id in ids {
                let k = PrivateKey::generate(KeyType::EcP256)
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                let csr = k
                    .csr_der()
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                requests.push(pb::SignX509Request { entry_id, csr });
                keys.push(k);
            }
            Ok::<_, tonic::Status>((keys, requests))
        })
        .await
        .map_err(|e| tonic::Status::internal(format!("key generation failed: {e}")))??;
        let resp = client
            .batch_sign_x509(pb::BatchSignX509Request { requests })
            .await?
            .into_inner();
        let now = writ_core::now_unix();
        let added = self.view.update(|c| {
            let mut added = 0;
            for ((e, k), r) in batch.iter().zip(keys).zip(resp.results) {
                if !r.error.is_empty() || r.entry_id != e.id || r.cert_chain.is_empty() {
                    tracing::warn!(entry = %e.id, error = %r.error, "server did not sign");
                    continue;
                }
                // Only keep it if the entry is still the one we asked for.
                if c.entry(&e.id).map(|x| x.revision) != Some(e.revision) {
                    continue;
                }
                let mut chain = r.cert_chain;
                // Packed into one fresh allocation below (`CachedSvid::new`): the decoded leaf
                // sits among the response's short-lived buffers, and the cache keeps it for hours.
                let leaf = chain.remove(0);
                let serial = leaf_serial(&leaf);
                let issuer_key_id = writ_ca::authority::authority_key_id(&leaf);
                // Revoked while it was being signed: never served.
                if c.revoked_serials.contains(&serial) {
                    continue;
                }
                let issuer = c.issuer(chain, issuer_key_id);
                let life = (r.expires_at - now).max(1);
                let jitter = self.random_below((life / 10).max(0) as u64) as i64;
                c.svids.insert(
                    e.id.as_str().into(),
                    Box::new(CachedSvid::new(NewSvid {
                        entry_revision: e.revision,
                        spiffe_id: e.spiffe_id.clone(),
                        leaf: &leaf,
                        key_pkcs8: k.pkcs8_der(),
                        serial: &serial,
                        issuer,
                        issued_at: now,
                        expires_at: r.expires_at,
                        rotate_at: now + life / 2 - jitter,
                    })),
                );
                added += 1;
            }
            (added, added > 0)
        });
        if added > 0 {
            tracing::debug!(signed = added, "workload SVIDs updated");
        }
        Ok(())
    }
}
