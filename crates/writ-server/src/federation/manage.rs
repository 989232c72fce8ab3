//! The relationships in force: those of the config file (fixed) and those made at run time
//! through the admin API (stored, restarted with the server). One fetch loop runs per
//! relationship; it reads its relationship before every fetch, so an update applies at the
//! next fetch and a deletion ends it.
//!
//! Run-time relationships use the `https_spiffe` profile; their first bundle (the partner's,
//! handed over out of band) is stored as the federated bundle when the relationship is made.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use writ_core::{Bundle, SpiffeId, TrustDomain};

use super::{Relationship, RemoteProfile};
use crate::state::ServerState;

/// Where a relationship comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The config file (not changeable at run time).
    Config,
    /// The admin API.
    Api,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }
}

/// Why a relationship change was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FederationError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// Create of an existing one.
    #[error("a relationship with `{0}` exists (use update)")]
    Exists(String),
    /// Update or delete of a missing one.
    #[error("no relationship with `{0}`")]
    NotFound(String),
    /// A config-file relationship.
    #[error("the relationship with `{0}` is in the config file; change it there")]
    FromConfig(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] writ_store::StoreError),
    /// The bootstrap bundle was refused.
    #[error(transparent)]
    Bundle(#[from] crate::bundles::BundleError),
}

/// A run-time relationship as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    trust_domain: String,
    url: String,
    endpoint_spiffe_id: String,
}

/// The relationships in force.
#[derive(Debug, Default)]
pub(crate) struct Federations {
    map: tokio::sync::Mutex<BTreeMap<TrustDomain, (Relationship, Source)>>,
}

impl Federations {
    /// The relationship with `td`, if any.
    pub(crate) async fn get(&self, td: &TrustDomain) -> Option<Relationship> {
        self.map.lock().await.get(td).map(|(r, _)| r.clone())
    }

    /// All, by trust domain.
    pub(crate) async fn list(&self) -> Vec<(Relationship, Source)> {
        self.map.lock().await.values().cloned().collect()
    }
}

fn stored(map: &BTreeMap<TrustDomain, (Relationship, Source)>) -> Vec<Stored> {
    map.values()
        .filter(|(_, s)| *s == Source::Api)
        .filter_map(|(r, _)| match &r.profile {
            RemoteProfile::HttpsSpiffe {
                endpoint_spiffe_id, ..
            } => Some(Stored {
                trust_domain: r.trust_domain.to_string(),
                url: r.url.clone(),
                endpoint_spiffe_id: endpoint_spiffe_id.to_string(),
            }),
            RemoteProfile::HttpsWeb { .. } => None,
        })
        .collect()
}

/// A run-time relationship from its parts, checked as the config's are.
pub(crate) fn relationship(
    own: &TrustDomain,
    td: &str,
    url: &str,
    endpoint_spiffe_id: &str,
) -> Result<Relationship, FederationError> {
    let bad = |e: String| FederationError::Invalid(e);
    let td = TrustDomain::new(td).map_err(|e| bad(format!("trust_domain: {e}")))?;
    if &td == own {
        return Err(bad(format!("`{td}` is this server's own trust domain")));
    }
    if !url.starts_with("https://") || url.len() > 2048 {
        return Err(bad(format!(
            "bundle_endpoint_url `{url}` is not an https:// URL"
        )));
    }
    super::fetch::split_url(url).map_err(bad)?;
    let id =
        SpiffeId::parse(endpoint_spiffe_id).map_err(|e| bad(format!("endpoint_spiffe_id: {e}")))?;
    if id.trust_domain() != td {
        return Err(bad(format!("endpoint_spiffe_id `{id}` is not in `{td}`")));
    }
    Ok(Relationship {
        trust_domain: td,
        url: url.to_owned(),
        profile: RemoteProfile::HttpsSpiffe {
            endpoint_spiffe_id: id,
            trust_domain_bundle: None,
        },
    })
}

impl ServerState {
    /// Starts the fetch loops of the config's relationships and the stored ones.
    pub(crate) async fn start_federations(self: &Arc<Self>) -> Result<(), FederationError> {
        let mut map = self.federations.map.lock().await;
        for r in &self.cfg.federation.relationships {
            map.insert(r.trust_domain.clone(), (r.clone(), Source::Config));
        }
        if let Some(bytes) = self.store.get_federations()? {
            let list: Vec<Stored> = serde_json::from_slice(&bytes)
                .map_err(|e| FederationError::Invalid(format!("stored relationships: {e}")))?;
            for s in list {
                let r = relationship(
                    &self.cfg.trust_domain,
                    &s.trust_domain,
                    &s.url,
                    &s.endpoint_spiffe_id,
                )?;
                // The config file wins over a stored relationship of the same trust domain.
                map.entry(r.trust_domain.clone())
                    .or_insert((r, Source::Api));
            }
        }
        for td in map.keys() {
            tokio::spawn(super::fetch::run(self.clone(), td.clone()));
        }
        Ok(())
    }

    /// Creates (`create`) or updates a run-time relationship; a `bootstrap` bundle of the
    /// partner is stored at once (required to create one whose bundle is not known yet).
    pub(crate) async fn set_federation(
        self: &Arc<Self>,
        rel: Relationship,
        create: bool,
        bootstrap: Option<Bundle>,
    ) -> Result<Relationship, FederationError> {
        let td = rel.trust_domain.clone();
        let mut map = self.federations.map.lock().await;
        match (map.get(&td), create) {
            (Some((_, Source::Config)), _) => {
                return Err(FederationError::FromConfig(td.to_string()))
            }
            (Some(_), true) => return Err(FederationError::Exists(td.to_string())),
            (None, false) => return Err(FederationError::NotFound(td.to_string())),
            _ => {}
        }
        if let Some(b) = bootstrap {
            if b.trust_domain != td {
                return Err(FederationError::Invalid(format!(
                    "the bundle is for `{}`, not `{td}`",
                    b.trust_domain
                )));
            }
            self.set_federated_bundle(b)?;
        } else if create && self.store.get_bundle(&td)?.is_none() {
            return Err(FederationError::Invalid(format!(
                "no bundle of `{td}` is known: give its first bundle (--trust-domain-bundle) to authenticate its endpoint"
            )));
        }
        let mut next = map.clone();
        next.insert(td.clone(), (rel.clone(), Source::Api));
        let bytes = serde_json::to_vec(&stored(&next))
            .map_err(|e| FederationError::Invalid(e.to_string()))?;
        self.store.put_federations(&bytes)?;
        let fresh = !map.contains_key(&td);
        *map = next;
        drop(map);
        if fresh {
            tokio::spawn(super::fetch::run(self.clone(), td));
        } else {
            // An update is tried at once (the loop applies it at its next fetch too).
            let (st, r) = (self.clone(), rel.clone());
            tokio::spawn(async move {
                if let Err(e) = super::fetch::fetch_once(&st, &r).await {
                    tracing::warn!(trust_domain = %r.trust_domain, error = %e, "federated bundle not fetched after the update; keeping the last good one");
                }
            });
        }
        Ok(rel)
    }

    /// Deletes a run-time relationship (its fetch loop ends; the bundle stays until deleted
    /// with `writ bundle delete`).
    pub(crate) async fn delete_federation(&self, td: &TrustDomain) -> Result<(), FederationError> {
        let mut map = self.federations.map.lock().await;
        match map.get(td) {
            None => return Err(FederationError::NotFound(td.to_string())),
            Some((_, Source::Config)) => return Err(FederationError::FromConfig(td.to_string())),
            Some(_) => {}
        }
        let mut next = map.clone();
        next.remove(td);
        let bytes = serde_json::to_vec(&stored(&next))
            .map_err(|e| FederationError::Invalid(e.to_string()))?;
        self.store.put_federations(&bytes)?;
        *map = next;
        Ok(())
    }
}
