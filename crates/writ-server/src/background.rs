//! The server's background loops: CA rotation steps (and the bundle they change), the server's
//! own SVID at half life, pruning of expired join tokens, and re-signing the CRL.
//!
//! Invariant: a CA journal is durable before any authority it introduces signs (the persist
//! hook runs inside the rotation step, under the CA write lock).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use writ_ca::{CaJournal, CaManager, PrivateKey, SvidRequest};
use writ_core::server_id;
use writ_store::Store;

use crate::config::ServerConfig;
use crate::run::ServerError;
use crate::state::{unpoison, ServerState};

/// A chain, its key, and its validity window.
pub(crate) type ServerSvid = (Vec<Vec<u8>>, PrivateKey, (i64, i64));

/// Mints the server's own SVID (`spiffe://<td>/writ/server`) for a key made here.
pub(crate) fn mint_server_svid(
    ca: &CaManager,
    cfg: &ServerConfig,
) -> Result<ServerSvid, ServerError> {
    let key = PrivateKey::generate(writ_ca::KeyType::EcP256)?;
    let now = writ_core::now_unix();
    let svid = ca.x509_authority().mint(&SvidRequest {
        spiffe_id: &server_id(&cfg.trust_domain),
        public_key_spki: &key.public_key_spki()?,
        ttl_secs: cfg.agent_svid_ttl,
        dns_names: &[],
        now,
    })?;
    Ok((svid.chain, key, (now, svid.not_after)))
}

/// Writes the CA journal to the store (flushed before it returns).
pub(crate) fn persist_journal(store: &dyn Store, j: &CaJournal) -> Result<(), writ_ca::CaError> {
    let bytes = serde_json::to_vec(j).map_err(|e| writ_ca::CaError::Persist(e.to_string()))?;
    store
        .put_ca_journal(&bytes)
        .map_err(|e| writ_ca::CaError::Persist(e.to_string()))
}

/// Runs CA rotation steps when they are due and republishes the bundle. The journal is
/// persisted inside the step, before a new authority can sign (see `CaManager::tick`); the
/// write lock is held meanwhile, so no signer can pick up an authority that is not durable.
pub(crate) async fn ca_loop(state: Arc<ServerState>) {
    loop {
        let next = state.ca.read().unwrap_or_else(unpoison).next_event();
        let wait = (next - writ_core::now_unix()).clamp(1, 30);
        tokio::time::sleep(Duration::from_secs(wait as u64)).await;
        let (changed, records) = {
            let mut ca = state.ca.write().unwrap_or_else(unpoison);
            let before = ca.journal().clone();
            let store = state.store.clone();
            match ca.tick(writ_core::now_unix(), &mut |j| {
                persist_journal(store.as_ref(), j)
            }) {
                Ok(true) => (
                    true,
                    crate::audit::events::authority_changes(&before, ca.journal()),
                ),
                Ok(false) => (false, Vec::new()),
                Err(e) => {
                    tracing::error!(error = %e, "CA rotation step failed; will retry");
                    (false, Vec::new())
                }
            }
        };
        state.audit.note(records).await;
        if changed {
            state.metrics.ca_rotations.fetch_add(1, Ordering::Relaxed);
            // The CRL is signed by the active CA: a new one signs it from now on.
            if let Err(e) = state.refresh_revocations().await {
                tracing::error!(error = %e, "could not re-sign the CRL after rotation");
            }
            if let Err(e) = state.refresh_own_bundle() {
                tracing::error!(error = %e, "cannot publish bundle");
            }
            tracing::info!("CA journal advanced; bundle republished");
        }
    }
}

/// Renews the server's own SVID at half of its lifetime (and when the signing CA changed).
pub(crate) async fn server_svid_loop(state: Arc<ServerState>) {
    loop {
        let (start, end) = *state.server_svid_window.lock().unwrap_or_else(unpoison);
        let half = start + (end - start) / 2;
        let wait = (half - writ_core::now_unix()).clamp(1, 30);
        tokio::time::sleep(Duration::from_secs(wait as u64)).await;
        if writ_core::now_unix() < half {
            continue;
        }
        let minted = {
            let ca = state.ca.read().unwrap_or_else(unpoison);
            mint_server_svid(&ca, &state.cfg)
        };
        match minted {
            Ok((chain, key, window)) => match state.server_tls.update(&chain, key.pkcs8_der()) {
                Ok(()) => {
                    *state.server_svid_window.lock().unwrap_or_else(unpoison) = window;
                    state.metrics.x509_signed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(expires_at = window.1, "server SVID rotated");
                }
                Err(e) => tracing::error!(error = %e, "cannot install new server SVID"),
            },
            Err(e) => tracing::error!(error = %e, "cannot mint server SVID"),
        }
    }
}

/// Removes expired join tokens every five minutes.
pub(crate) async fn token_prune_loop(state: Arc<ServerState>) {
    loop {
        tokio::time::sleep(Duration::from_secs(300)).await;
        match state.store.prune_join_tokens(writ_core::now_unix()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "expired join tokens removed"),
            Err(e) => tracing::warn!(error = %e, "cannot prune join tokens"),
        }
    }
}

/// Re-signs the CRL at half its lifetime (and drops revocations of expired credentials), so
/// relying parties never hold a CRL past its `nextUpdate`.
pub(crate) async fn crl_loop(state: Arc<ServerState>) {
    loop {
        tokio::time::sleep(Duration::from_secs(
            (crate::revoke::CRL_LIFETIME / 2) as u64,
        ))
        .await;
        if let Err(e) = state.refresh_revocations().await {
            tracing::error!(error = %e, "could not re-sign the CRL; will retry");
        }
    }
}

/// Journals each entry's expiry once (`entry.expired`): expired entries stop being served by
/// the index's rule; this records when. Entries already journalled (before a restart too) are
/// not recorded again.
pub(crate) async fn expiry_loop(state: Arc<ServerState>) {
    let mut done: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let expired = state
            .index
            .read()
            .unwrap_or_else(unpoison)
            .expired(writ_core::now_unix());
        let mut records = Vec::new();
        for e in expired {
            if done.contains(&e.id) {
                continue;
            }
            let kind = writ_audit::kinds::ENTRY_EXPIRED;
            let seen = state
                .audit
                .scan(writ_store::AuditQuery::Entry(&e.id), 0, 1, &|r| {
                    r.kind == kind
                })
                .map(|r| !r.is_empty())
                .unwrap_or(false);
            if !seen {
                records.push(
                    writ_audit::NewRecord::new(kind, writ_audit::Actor::server())
                        .spiffe_id(&e.spiffe_id)
                        .entry(e.id.clone())
                        .detail("expires_at", e.expires_at.unwrap_or_default()),
                );
            }
            done.insert(e.id.clone());
        }
        if !records.is_empty() {
            tracing::info!(count = records.len(), "entries expired");
            state.audit.note(records).await;
        }
        // Forget deleted entries so the set does not grow without bound.
        {
            let idx = state.index.read().unwrap_or_else(unpoison);
            done.retain(|id| idx.contains(id));
        }
        tokio::time::sleep(Duration::from_secs(EXPIRY_CHECK_SECS)).await;
    }
}

/// How often expired entries are looked for.
const EXPIRY_CHECK_SECS: u64 = 5;
