//! Authority rotation on demand, server side: the operator's action on the CA journal
//! (`writ-ca`'s `authority` operations), then what depends on the active and published
//! authorities: the bundle, the CRL (signed by the active CA), the tainted keys agents act on,
//! and the journal record.

use std::sync::Arc;

use writ_audit::{kinds, Actor, NewRecord};
use writ_ca::{AuthorityInfo, AuthorityKind, CaError};

use crate::background::persist_journal;
use crate::state::{unpoison, ServerState};

/// What an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthorityAction {
    Show,
    Prepare,
    Activate,
    Taint,
    Revoke,
}

impl AuthorityAction {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "show" => Self::Show,
            "prepare" => Self::Prepare,
            "activate" => Self::Activate,
            "taint" => Self::Taint,
            "revoke" => Self::Revoke,
            _ => return None,
        })
    }
}

/// Tainted authorities as published to agents: X.509 subject key identifiers, JWT kids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tainted {
    /// Subject key identifiers (hex) of tainted X.509 CAs.
    pub x509: Vec<String>,
    /// kids of tainted JWT keys.
    pub jwt: Vec<String>,
}

impl ServerState {
    /// Runs `action` on the authorities of `kind`; returns all of them afterwards and the one
    /// changed.
    pub(crate) async fn authority_action(
        &self,
        kind: AuthorityKind,
        action: AuthorityAction,
        key_id: &str,
        actor: Actor,
    ) -> Result<(Vec<AuthorityInfo>, Option<AuthorityInfo>), CaError> {
        let changed = {
            let mut ca = self.ca.write().unwrap_or_else(unpoison);
            let store = self.store.clone();
            let mut persist = |j: &writ_ca::CaJournal| persist_journal(store.as_ref(), j);
            match action {
                AuthorityAction::Show => None,
                AuthorityAction::Prepare => {
                    Some(ca.prepare_now(kind, writ_core::now_unix(), &mut persist)?)
                }
                AuthorityAction::Activate => Some(ca.activate_now(kind, &mut persist)?),
                AuthorityAction::Taint => Some(ca.taint(kind, key_id, &mut persist)?),
                AuthorityAction::Revoke => Some(ca.revoke_authority(kind, key_id, &mut persist)?),
            }
        };
        if let Some(c) = &changed {
            if let Err(e) = self.refresh_own_bundle() {
                tracing::error!(error = %e, "could not publish the bundle after an authority change");
            }
            self.publish_tainted();
            if let Err(e) = self.refresh_revocations().await {
                tracing::error!(error = %e, "could not re-sign the CRL after an authority change");
            }
            let record_kind = match action {
                AuthorityAction::Prepare => kinds::AUTHORITY_PREPARED,
                AuthorityAction::Activate => kinds::AUTHORITY_ACTIVATED,
                AuthorityAction::Taint => kinds::AUTHORITY_TAINTED,
                _ => kinds::AUTHORITY_REVOKED,
            };
            tracing::warn!(kind = ?kind, key_id = %c.key_id, action = ?action, "authority changed by an operator");
            self.audit
                .note(vec![NewRecord::new(record_kind, actor)
                    .detail(
                        "authority",
                        if kind == AuthorityKind::X509 {
                            "x509"
                        } else {
                            "jwt"
                        },
                    )
                    .detail("key_id", c.key_id.clone())
                    .detail("public_id", c.public_id.clone())])
                .await;
        }
        let all = self.ca.read().unwrap_or_else(unpoison).authorities(kind);
        Ok((all, changed))
    }

    /// Publishes the tainted authorities of the journal to bundle watchers (agents).
    pub(crate) fn publish_tainted(&self) {
        let (x509, jwt) = self.ca.read().unwrap_or_else(unpoison).tainted();
        let t = Arc::new(Tainted { x509, jwt });
        self.bundles.send_if_modified(|b| {
            if b.tainted == t {
                return false;
            }
            b.tainted = t;
            true
        });
    }
}
