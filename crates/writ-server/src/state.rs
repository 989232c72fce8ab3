//! The server's shared state and the operations both APIs use: entry writes (store, then index,
//! then broadcast, in revision order), bundle publication, minting, and agent authentication.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::{broadcast, watch};
use tonic::Status;
use writ_ca::{CaManager, MintedSvid, PrivateKey};
use writ_core::{server_id, AttestedNode, Bundle, Entry, SpiffeId};
use writ_store::{Change, ChangeKind, Store, StoreError};
use writ_tls::{SharedBundle, SvidResolver};

use crate::attest::Attestors;
use crate::config::ServerConfig;
use crate::index::EntryIndex;
use crate::metrics::Metrics;

/// Something sync streams must react to.
#[derive(Debug, Clone)]
pub enum Event {
    /// An entry change committed at `revision`.
    Entry(Arc<Change>),
    /// A node was evicted or banned: its streams end.
    NodeGone(SpiffeId),
    /// The server is stopping: streams end with Unavailable.
    Shutdown,
}

/// The own bundle and the federated ones.
#[derive(Debug, Clone)]
pub struct BundleSet {
    /// The server's trust domain bundle.
    pub own: Bundle,
    /// Federated bundles.
    pub federated: Vec<Bundle>,
}

/// Token bucket per peer IP for attestation.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Everything the server's APIs share.
pub struct ServerState {
    /// Validated config.
    pub cfg: ServerConfig,
    /// Datastore.
    pub store: Arc<dyn Store>,
    /// The CA and its rotation journal.
    pub ca: RwLock<CaManager>,
    /// In-memory entry index.
    pub index: RwLock<EntryIndex>,
    /// Serialises entry writes so index updates and broadcasts follow revision order.
    pub write_lock: tokio::sync::Mutex<()>,
    /// Entry changes and node removals, for sync streams.
    pub events: broadcast::Sender<Event>,
    /// Current bundles, for bundle watchers.
    pub bundles: watch::Sender<BundleSet>,
    /// Bundles the TLS verifier trusts (own + federated).
    pub trust: SharedBundle,
    /// The server's own TLS certificate (its SVID), swapped on rotation.
    pub server_tls: Arc<SvidResolver>,
    /// Expiry of the current server SVID.
    pub server_svid_expiry: Mutex<(i64, i64)>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Enabled node attestors.
    pub attestors: Attestors,
    rate: Mutex<HashMap<IpAddr, Bucket>>,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState").finish_non_exhaustive()
    }
}

/// Maps store errors to statuses.
pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        StoreError::TokenInvalid | StoreError::TokenExpired => {
            Status::permission_denied(e.to_string())
        }
        other => {
            tracing::error!(error = %other, "datastore failure");
            Status::internal(other.to_string())
        }
    }
}

fn lock_poison<T>(p: std::sync::PoisonError<T>) -> T {
    p.into_inner()
}

impl ServerState {
    /// Assembles the state (called by `run`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: ServerConfig,
        store: Arc<dyn Store>,
        ca: CaManager,
        index: EntryIndex,
        own: Bundle,
        federated: Vec<Bundle>,
        server_tls: Arc<SvidResolver>,
        server_svid_window: (i64, i64),
        attestors: Attestors,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        let mut trust_set = vec![own.clone()];
        trust_set.extend(federated.iter().cloned());
        let trust = SharedBundle::new(trust_set);
        let (bundles, _) = watch::channel(BundleSet { own, federated });
        metrics.entries.store(index.len() as i64, Ordering::Relaxed);
        Arc::new(ServerState {
            cfg,
            store,
            ca: RwLock::new(ca),
            index: RwLock::new(index),
            write_lock: tokio::sync::Mutex::new(()),
            events,
            bundles,
            trust,
            server_tls,
            server_svid_expiry: Mutex::new(server_svid_window),
            metrics,
            attestors,
            rate: Mutex::new(HashMap::new()),
        })
    }

    /// The server's SPIFFE ID.
    pub fn server_id(&self) -> SpiffeId {
        server_id(&self.cfg.trust_domain)
    }

    // === entries ===

    fn check_entry(&self, e: &Entry) -> Result<(), Status> {
        e.validate(&self.cfg.trust_domain)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        if e.parent_id == e.spiffe_id {
            return Err(Status::invalid_argument(format!(
                "entry `{}` cannot be its own parent",
                e.spiffe_id
            )));
        }
        Ok(())
    }

    fn publish(&self, change: Change) {
        {
            let mut idx = self.index.write().unwrap_or_else(lock_poison);
            idx.apply(&change);
            self.metrics
                .entries
                .store(idx.len() as i64, Ordering::Relaxed);
        }
        // No receivers is fine: nobody is syncing.
        let _ = self.events.send(Event::Entry(Arc::new(change)));
    }

    /// Validates and creates an entry.
    pub async fn create_entry(&self, mut e: Entry) -> Result<Entry, Status> {
        self.check_entry(&e)?;
        e.id = String::new();
        e.created_at = writ_core::now_unix();
        let _g = self.write_lock.lock().await;
        let created = self.store.create_entry(e).map_err(store_status)?;
        self.publish(Change {
            revision: created.revision,
            kind: ChangeKind::Created,
            entry: created.clone(),
            previous: None,
            at: created.created_at,
        });
        tracing::info!(entry = %created.id, spiffe_id = %created.spiffe_id, parent = %created.parent_id, owner = %created.owner, "entry created");
        Ok(created)
    }

    /// Validates and creates several entries, all or none.
    pub async fn create_entries(&self, entries: Vec<Entry>) -> Result<Vec<Entry>, Status> {
        let now = writ_core::now_unix();
        let mut batch = Vec::with_capacity(entries.len());
        for mut e in entries {
            self.check_entry(&e)?;
            e.id = String::new();
            e.created_at = now;
            batch.push(e);
        }
        let _g = self.write_lock.lock().await;
        let created = self.store.create_entries(batch).map_err(store_status)?;
        for e in &created {
            self.publish(Change {
                revision: e.revision,
                kind: ChangeKind::Created,
                entry: e.clone(),
                previous: None,
                at: now,
            });
        }
        tracing::info!(count = created.len(), "entries created in bulk");
        Ok(created)
    }

    /// Validates and replaces an entry.
    pub async fn update_entry(&self, e: Entry) -> Result<Entry, Status> {
        self.check_entry(&e)?;
        let _g = self.write_lock.lock().await;
        let updated = self.store.update_entry(e).map_err(store_status)?;
        self.publish(Change {
            revision: updated.revision,
            kind: ChangeKind::Updated,
            entry: updated.clone(),
            previous: None,
            at: writ_core::now_unix(),
        });
        tracing::info!(entry = %updated.id, spiffe_id = %updated.spiffe_id, "entry updated");
        Ok(updated)
    }

    /// Deletes an entry.
    pub async fn delete_entry(&self, id: &str) -> Result<Entry, Status> {
        let _g = self.write_lock.lock().await;
        let deleted = self.store.delete_entry(id).map_err(store_status)?;
        self.publish(Change {
            revision: deleted.revision,
            kind: ChangeKind::Deleted,
            entry: deleted.clone(),
            previous: None,
            at: writ_core::now_unix(),
        });
        tracing::info!(entry = %deleted.id, spiffe_id = %deleted.spiffe_id, "entry deleted");
        Ok(deleted)
    }

    // === nodes ===

    /// Evicts (deletes) a node and ends its streams.
    pub fn evict_node(&self, id: &SpiffeId) -> Result<AttestedNode, Status> {
        let n = self.store.delete_node(id).map_err(store_status)?;
        let _ = self.events.send(Event::NodeGone(id.clone()));
        tracing::info!(node = %id, "node evicted");
        Ok(n)
    }

    /// Bans a node and ends its streams.
    pub fn ban_node(&self, id: &SpiffeId) -> Result<AttestedNode, Status> {
        let mut n = self
            .store
            .get_node(id)
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("node `{id}` not found")))?;
        n.banned = true;
        let n = self.store.put_node(n).map_err(store_status)?;
        let _ = self.events.send(Event::NodeGone(id.clone()));
        tracing::info!(node = %id, "node banned");
        Ok(n)
    }

    /// Makes a single-use join token; `alias` becomes a second ID of the agent that uses it.
    pub fn create_join_token(
        &self,
        alias: Option<SpiffeId>,
        ttl: i64,
    ) -> Result<writ_core::JoinToken, Status> {
        let t = writ_core::JoinToken {
            token: uuid::Uuid::new_v4().to_string(),
            spiffe_id: alias,
            expires_at: writ_core::now_unix() + ttl,
        };
        self.store
            .create_join_token(t.clone())
            .map_err(store_status)?;
        tracing::info!(alias = ?t.spiffe_id.as_ref().map(|a| a.to_string()), "join token created");
        Ok(t)
    }

    // === bundles ===

    /// Recomputes the own bundle from the CA; stores it with a new sequence if it changed.
    pub fn refresh_own_bundle(&self) -> Result<(), Status> {
        let (roots, jwt, ttl) = {
            let ca = self.ca.read().unwrap_or_else(lock_poison);
            (ca.x509_roots(), ca.jwt_authorities(), self.cfg.ca_ttl)
        };
        let cur = self.bundles.borrow().own.clone();
        let mut next = Bundle::new(self.cfg.trust_domain.clone());
        next.x509_authorities = roots;
        next.jwt_authorities = jwt;
        // Relying parties should look again well within a CA's prepare-to-activate window.
        next.refresh_hint = Some((ttl / 12).clamp(5, 3600) as u64);
        if next.same_content(&cur) && next.refresh_hint == cur.refresh_hint {
            return Ok(());
        }
        next.sequence = cur.sequence + 1;
        self.store.put_bundle(&next).map_err(store_status)?;
        self.publish_bundles(Some(next), None);
        Ok(())
    }

    /// Replaces the published bundles (own and/or federated).
    pub fn publish_bundles(&self, own: Option<Bundle>, federated: Option<Vec<Bundle>>) {
        self.bundles.send_modify(|b| {
            if let Some(o) = own {
                b.own = o;
            }
            if let Some(f) = federated {
                b.federated = f;
            }
        });
        let b = self.bundles.borrow().clone();
        let mut all = vec![b.own];
        all.extend(b.federated);
        self.trust.set(all);
    }

    /// Reloads federated bundles from the store and publishes them.
    pub fn reload_federated(&self) -> Result<(), Status> {
        let td = &self.cfg.trust_domain;
        let fed: Vec<Bundle> = self
            .store
            .list_bundles()
            .map_err(store_status)?
            .into_iter()
            .filter(|b| &b.trust_domain != td)
            .collect();
        self.publish_bundles(None, Some(fed));
        Ok(())
    }

    // === minting ===

    /// Signs an X509-SVID from a CSR.
    pub fn mint_from_csr(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        ttl: i64,
        dns: &[String],
    ) -> Result<MintedSvid, Status> {
        let ca = self.ca.read().unwrap_or_else(lock_poison).x509_authority();
        let svid = ca
            .mint_from_csr(csr, id, ttl, dns, writ_core::now_unix())
            .map_err(ca_status)?;
        self.metrics.x509_signed.fetch_add(1, Ordering::Relaxed);
        Ok(svid)
    }

    /// Signs an X509-SVID for a key made here (operator `x509 mint`, the server's own SVID).
    pub fn mint_with_new_key(
        &self,
        id: &SpiffeId,
        ttl: i64,
        dns: &[String],
    ) -> Result<(MintedSvid, PrivateKey), Status> {
        let key = PrivateKey::generate(writ_ca::KeyType::EcP256).map_err(ca_status)?;
        let spki = key.public_key_spki().map_err(ca_status)?;
        let ca = self.ca.read().unwrap_or_else(lock_poison).x509_authority();
        let svid = ca
            .mint(&writ_ca::SvidRequest {
                spiffe_id: id,
                public_key_spki: &spki,
                ttl_secs: ttl,
                dns_names: dns,
                now: writ_core::now_unix(),
            })
            .map_err(ca_status)?;
        self.metrics.x509_signed.fetch_add(1, Ordering::Relaxed);
        Ok((svid, key))
    }

    /// Signs a JWT-SVID.
    pub fn mint_jwt(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: i64,
    ) -> Result<(String, i64), Status> {
        if audience.is_empty() || audience.iter().any(|a| a.is_empty() || a.len() > 1024) {
            return Err(Status::invalid_argument(
                "audience must hold one or more non-empty values",
            ));
        }
        let signer = self.ca.read().unwrap_or_else(lock_poison).jwt_signer();
        let out = signer
            .sign(id, audience, ttl, writ_core::now_unix())
            .map_err(ca_status)?;
        self.metrics.jwt_signed.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    // === agents ===

    /// Rate limit for attestation: true when `ip` may attest now.
    pub fn attest_allowed(&self, ip: IpAddr) -> bool {
        let mut m = self.rate.lock().unwrap_or_else(lock_poison);
        let now = Instant::now();
        if m.len() > 10_000 {
            // Forget idle peers so the map stays bounded.
            m.retain(|_, b| now.duration_since(b.at).as_secs() < 60);
        }
        let rate = f64::from(self.cfg.attestation_rate_per_ip);
        let burst = rate * 5.0;
        let b = m.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Authenticates the caller of an mTLS method: its SVID (already chain-verified in the
    /// handshake) must name a known, unbanned agent and be that agent's current SVID.
    pub fn authenticate<T>(&self, req: &tonic::Request<T>) -> Result<AttestedNode, Status> {
        let r = self.authenticate_inner(req);
        if let Err(s) = &r {
            self.metrics.count_status(s);
        }
        r
    }

    fn authenticate_inner<T>(&self, req: &tonic::Request<T>) -> Result<AttestedNode, Status> {
        let certs = req.peer_certs().filter(|c| !c.is_empty()).ok_or_else(|| {
            Status::unauthenticated("this method needs the agent's SVID as client certificate")
        })?;
        let leaf = certs[0].as_ref();
        let id =
            writ_ca::svid::check_leaf(leaf).map_err(|e| Status::unauthenticated(e.to_string()))?;
        let serial = {
            use x509_parser::prelude::FromDer;
            let (_, c) = x509_parser::prelude::X509Certificate::from_der(leaf)
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
            hex::encode(c.raw_serial())
        };
        let node = self
            .store
            .get_node(&id)
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "agent `{id}` is not attested (unknown or evicted)"
                ))
            })?;
        if node.banned {
            return Err(Status::permission_denied(format!("agent `{id}` is banned")));
        }
        if serial != node.cert_serial && serial != node.prev_cert_serial {
            return Err(Status::permission_denied(format!(
                "agent `{id}` presented an SVID that is no longer current"
            )));
        }
        Ok(node)
    }

    /// The entries `ids` if `node` may have SVIDs for every one of them (in request order), or
    /// the first one it may not. Cost follows the entries asked about, not the agent's set.
    pub fn authorized_for(
        &self,
        node: &AttestedNode,
        ids: &[&str],
    ) -> Result<Vec<Arc<Entry>>, String> {
        let now = writ_core::now_unix();
        let idx = self.index.read().unwrap_or_else(lock_poison);
        let identities = idx.identities(node, now);
        ids.iter()
            .map(|id| {
                idx.authorizes(&identities, id, now)
                    .ok_or_else(|| (*id).to_owned())
            })
            .collect()
    }

    /// Under one index lock: the index revision, `node`'s identities and the entries it may
    /// serve now.
    pub fn authorized(&self, node: &AttestedNode) -> (u64, Vec<SpiffeId>, Vec<Arc<Entry>>) {
        let now = writ_core::now_unix();
        let idx = self.index.read().unwrap_or_else(lock_poison);
        let ids = idx.identities(node, now);
        let set = idx.authorized(&ids, now);
        (idx.revision(), ids, set)
    }
}

/// Maps CA errors to statuses: bad requests are InvalidArgument, the rest Internal.
pub fn ca_status(e: writ_ca::CaError) -> Status {
    use writ_ca::CaError as E;
    match e {
        E::BadCsr(_)
        | E::CsrSignature
        | E::CaKeyReuse
        | E::BadPublicKey(_)
        | E::BadSpiffeId { .. }
        | E::ZeroTtl
        | E::BadDnsName(_) => Status::invalid_argument(e.to_string()),
        other => {
            tracing::error!(error = %other, "CA failure");
            Status::internal(other.to_string())
        }
    }
}
