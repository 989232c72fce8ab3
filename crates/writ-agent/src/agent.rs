//! The agent's run loop: attest (or resume a persisted identity), open an mTLS session with the
//! server, and inside it keep entries in sync (push stream), keep an X509-SVID for each servable
//! entry (batch signing, rotation at half life with jitter), follow bundle changes, and renew the
//! agent SVID. When the server is unreachable the cache keeps serving; the loop reconnects with
//! exponential backoff and jitter. Eviction leads to re-attestation (x509pop) or, for join
//! tokens that cannot be reused, to waiting for an operator.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{watch, Notify};
use tonic::Code;
use writ_ca::{KeyType, PrivateKey};
use writ_core::{Bundle, Entry, TrustDomain};
use writ_proto::v1 as pb;
use writ_tls::{SharedBundle, SvidResolver};

use crate::cache::{Cache, CachedSvid};
use crate::config::{AgentConfig, NodeAttestation};
use crate::node_client::{self, AgentSvid, Evidence, Node, NodeClientError};
use crate::persist::{self, Identity};

/// Most CSRs per signing request.
pub const SIGN_BATCH: usize = 500;
/// Signing batches an agent keeps in flight at once.
pub const SIGN_IN_FLIGHT: usize = 2;

/// Agent failures that stop it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Config problem found at start.
    #[error("{0}")]
    Config(String),
    /// Persisted data problem.
    #[error(transparent)]
    Persist(#[from] persist::PersistError),
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] writ_tls::TlsError),
    /// Key generation.
    #[error(transparent)]
    Ca(#[from] writ_ca::CaError),
    /// Socket setup.
    #[error("{0}")]
    Socket(String),
}

/// JWT cache key: entry ID and sorted, de-duplicated audiences.
pub type JwtKey = (String, Vec<String>);
/// A cached JWT-SVID: token, issued at, expires at.
pub type CachedJwt = (String, i64, i64);

/// Shared agent state (the Workload API reads it, the session loop writes it).
pub struct AgentState {
    /// Validated config.
    pub cfg: AgentConfig,
    /// The workload cache.
    pub cache: RwLock<Cache>,
    /// Bumped on every change that can alter a Workload API answer.
    pub generation: watch::Sender<u64>,
    /// The agent's identity, once attested.
    pub identity: RwLock<Option<Identity>>,
    /// The current session's client (for JWT minting), when connected.
    pub client: Mutex<Option<Node>>,
    /// Whether a session is up.
    pub connected: AtomicBool,
    /// JWT-SVIDs by (entry ID, sorted audiences).
    pub jwt_cache: Mutex<HashMap<JwtKey, CachedJwt>>,
    /// Bundles the server's certificate is checked against.
    pub trust: SharedBundle,
    resolver: RwLock<Option<Arc<SvidResolver>>>,
    store: persist::Store,
    sign_now: Notify,
    rng: SystemRandom,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState").finish_non_exhaustive()
    }
}

/// How a session ended.
enum SessionEnd {
    /// Reconnect at once (e.g. after renewing the agent SVID).
    Reconnect,
    /// The server no longer knows us: forget the identity.
    Evicted(String),
    /// Transient failure: back off.
    Failed(String),
}

fn status_end(s: tonic::Status) -> SessionEnd {
    match s.code() {
        Code::PermissionDenied | Code::Unauthenticated => {
            SessionEnd::Evicted(s.message().to_owned())
        }
        _ => SessionEnd::Failed(format!("{}: {}", s.code(), s.message())),
    }
}

impl AgentState {
    /// Builds the state: persisted identity and bundle if present, else the bootstrap bundle.
    pub fn new(cfg: AgentConfig, bootstrap: Option<Bundle>) -> Result<Arc<Self>, AgentError> {
        let store = persist::Store::open(&cfg.data_dir)?;
        let td = cfg.trust_domain.clone();
        let bundle = match store.load_bundle(&td)? {
            Some(b) => b,
            None => match bootstrap {
                Some(b) => b,
                None => {
                    let path = cfg.trust_bundle_path.as_ref().ok_or_else(|| {
                        AgentError::Config(
                            "config key `trust_bundle_path`: needed for the first start (no bundle in data_dir yet)".into(),
                        )
                    })?;
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        AgentError::Config(format!(
                            "config key `trust_bundle_path`: cannot read `{}`: {e}",
                            path.display()
                        ))
                    })?;
                    Bundle::from_x509_pem(td.clone(), &text).map_err(|e| {
                        AgentError::Config(format!("config key `trust_bundle_path`: {e}"))
                    })?
                }
            },
        };
        let identity = store.load_identity(writ_core::now_unix())?;
        let resolver = match &identity {
            Some(id) => Some(SvidResolver::new(&id.chain, id.key.pkcs8_der())?),
            None => None,
        };
        if let Some(id) = &identity {
            tracing::info!(agent = %id.spiffe_id, "resuming persisted agent identity");
        }
        let (generation, _) = watch::channel(0);
        Ok(Arc::new(AgentState {
            trust: SharedBundle::new(vec![bundle.clone()]),
            cache: RwLock::new(Cache::new(bundle)),
            generation,
            identity: RwLock::new(identity),
            client: Mutex::new(None),
            connected: AtomicBool::new(false),
            jwt_cache: Mutex::new(HashMap::new()),
            resolver: RwLock::new(resolver),
            store,
            sign_now: Notify::new(),
            rng: SystemRandom::new(),
            cfg,
        }))
    }

    /// The trust domain.
    pub fn td(&self) -> &TrustDomain {
        &self.cfg.trust_domain
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn random_below(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut b = [0u8; 8];
        let _ = self.rng.fill(&mut b);
        u64::from_le_bytes(b) % n
    }

    fn set_identity(&self, svid: &AgentSvid, key: PrivateKey) -> Result<(), AgentError> {
        let (_, issued_at, expires_at) = persist::leaf_info(&svid.chain[0]).ok_or_else(|| {
            AgentError::Config("server sent an agent SVID that is not an X509-SVID".into())
        })?;
        let id = Identity {
            spiffe_id: svid.spiffe_id.clone(),
            chain: svid.chain.clone(),
            key,
            issued_at,
            expires_at,
        };
        self.store.save_identity(&id)?;
        let mut r = self.resolver.write().unwrap_or_else(|p| p.into_inner());
        match r.as_ref() {
            Some(res) => res.update(&id.chain, id.key.pkcs8_der())?,
            None => *r = Some(SvidResolver::new(&id.chain, id.key.pkcs8_der())?),
        }
        let changed_id = {
            let mut cur = self.identity.write().unwrap_or_else(|p| p.into_inner());
            let changed = cur.as_ref().map(|c| &c.spiffe_id) != Some(&id.spiffe_id);
            *cur = Some(id);
            changed
        };
        if changed_id {
            // A new identity may be authorised for other entries: never resume the old stream.
            self.cache.write().unwrap_or_else(|p| p.into_inner()).synced = false;
        }
        self.set_own_bundle(svid.bundle.clone());
        Ok(())
    }

    fn set_own_bundle(&self, b: Bundle) {
        let changed = {
            let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
            if c.own_bundle.same_content(&b) && c.own_bundle.sequence == b.sequence {
                false
            } else {
                c.own_bundle = b.clone();
                true
            }
        };
        if changed {
            if let Err(e) = self.store.save_bundle(&b) {
                tracing::warn!(error = %e, "cannot persist bundle");
            }
            self.refresh_trust();
            self.bump();
        }
    }

    fn refresh_trust(&self) {
        let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let mut all = vec![c.own_bundle.clone()];
        all.extend(c.federated.iter().cloned());
        self.trust.set(all);
    }

    async fn attest(&self) -> Result<(), String> {
        let mut client = node_client::connect(
            &self.cfg.server_address,
            self.td(),
            self.trust.clone(),
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
        let key = PrivateKey::generate(KeyType::EcP256).map_err(|e| e.to_string())?;
        let svid = match &self.cfg.node_attestation {
            NodeAttestation::JoinToken(Some(t)) => {
                node_client::attest(&mut client, self.td(), Evidence::JoinToken(t), &key).await
            }
            NodeAttestation::JoinToken(None) => {
                return Err(
                    "no join token: pass --join-token or set node_attestor.join_token.token".into(),
                )
            }
            NodeAttestation::X509Pop {
                cert,
                key: node_key,
            } => {
                let chain = std::fs::read_to_string(cert)
                    .map_err(|e| format!("cannot read x509pop cert `{}`: {e}", cert.display()))
                    .and_then(|t| {
                        writ_core::pem::decode_label(&t, "CERTIFICATE").map_err(|e| e.to_string())
                    })?;
                let nk = std::fs::read_to_string(node_key)
                    .map_err(|e| format!("cannot read x509pop key `{}`: {e}", node_key.display()))
                    .and_then(|t| PrivateKey::from_pem(&t).map_err(|e| e.to_string()))?;
                node_client::attest(
                    &mut client,
                    self.td(),
                    Evidence::X509Pop {
                        chain: &chain,
                        key: &nk,
                    },
                    &key,
                )
                .await
            }
        }
        .map_err(|e| e.to_string())?;
        tracing::info!(agent = %svid.spiffe_id, expires_at = svid.expires_at, "attested");
        self.set_identity(&svid, key).map_err(|e| e.to_string())
    }

    /// Runs forever: attest/resume, session, backoff.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            // An SVID that expired while the server was unreachable cannot open a session:
            // forget it and attest again.
            let expired = self
                .identity
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|i| i.expires_at <= writ_core::now_unix());
            if expired {
                tracing::warn!("agent SVID expired while disconnected; attesting again");
                self.store.clear_identity();
                *self.identity.write().unwrap_or_else(|p| p.into_inner()) = None;
            }
            let have_identity = self
                .identity
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            if !have_identity {
                if let Err(e) = self.attest().await {
                    tracing::warn!(error = %e, "attestation failed");
                    backoff = self.sleep_backoff(backoff).await;
                    continue;
                }
            }
            let end = self.clone().session(&mut backoff).await;
            self.connected.store(false, Ordering::Relaxed);
            *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
            match end {
                SessionEnd::Reconnect => continue,
                SessionEnd::Evicted(why) => {
                    tracing::warn!(reason = %why, "server refused the agent identity; attesting again");
                    self.store.clear_identity();
                    *self.identity.write().unwrap_or_else(|p| p.into_inner()) = None;
                    backoff = self.sleep_backoff(backoff).await;
                }
                SessionEnd::Failed(why) => {
                    tracing::warn!(reason = %why, "server session ended; serving from cache and reconnecting");
                    backoff = self.sleep_backoff(backoff).await;
                }
            }
        }
    }

    /// Sleeps a random time up to `backoff` ("full jitter") and returns the next backoff.
    async fn sleep_backoff(&self, backoff: Duration) -> Duration {
        let ms = backoff.as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(
            ms / 2 + self.random_below(ms / 2 + 1),
        ))
        .await;
        (backoff * 2).min(Duration::from_secs(30))
    }

    async fn session(self: Arc<Self>, backoff: &mut Duration) -> SessionEnd {
        let resolver = self
            .resolver
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(resolver) = resolver else {
            return SessionEnd::Evicted("no identity".into());
        };
        let client = match node_client::connect(
            &self.cfg.server_address,
            self.td(),
            self.trust.clone(),
            Some(resolver),
        )
        .await
        {
            Ok(c) => c,
            Err(NodeClientError::Status(s)) => return status_end(s),
            Err(e) => return SessionEnd::Failed(e.to_string()),
        };
        // Resume from our revision only when we hold a complete snapshot.
        let after = {
            let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
            if c.synced {
                c.revision
            } else {
                0
            }
        };
        let mut sync = match client
            .clone()
            .sync_entries(pb::SyncEntriesRequest {
                after_revision: after,
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return status_end(s),
        };
        let mut bundles = match client
            .clone()
            .watch_bundles(pb::WatchBundlesRequest {})
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return status_end(s),
        };
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        self.connected.store(true, Ordering::Relaxed);
        *backoff = Duration::from_millis(250);
        tracing::info!(server = %self.cfg.server_address, resume_after = after, "connected to server");

        let signer = tokio::spawn(self.clone().signer(client.clone()));
        let renew_at = {
            let id = self.identity.read().unwrap_or_else(|p| p.into_inner());
            id.as_ref()
                .map(|i| i.issued_at + (i.expires_at - i.issued_at) / 2)
                .unwrap_or(0)
        };
        let mut pending: Option<(u64, HashMap<String, Entry>)> = None;
        let end = loop {
            let renew_in = Duration::from_secs((renew_at - writ_core::now_unix()).max(0) as u64);
            tokio::select! {
                msg = sync.message() => match msg {
                    Ok(Some(m)) => self.apply_sync(m, &mut pending),
                    Ok(None) => break SessionEnd::Failed("server closed the sync stream".into()),
                    Err(s) => break status_end(s),
                },
                msg = bundles.message() => match msg {
                    Ok(Some(m)) => self.apply_bundles(m),
                    Ok(None) => break SessionEnd::Failed("server closed the bundle stream".into()),
                    Err(s) => break status_end(s),
                },
                _ = tokio::time::sleep(renew_in) => {
                    match self.renew(client.clone()).await {
                        Ok(()) => break SessionEnd::Reconnect,
                        Err(e) => break e,
                    }
                }
            }
        };
        signer.abort();
        end
    }

    async fn renew(&self, mut client: Node) -> Result<(), SessionEnd> {
        let key =
            PrivateKey::generate(KeyType::EcP256).map_err(|e| SessionEnd::Failed(e.to_string()))?;
        let csr = key
            .csr_der()
            .map_err(|e| SessionEnd::Failed(e.to_string()))?;
        let r = client
            .renew_agent(pb::RenewAgentRequest { csr })
            .await
            .map_err(status_end)?
            .into_inner();
        let svid = r
            .svid
            .ok_or_else(|| SessionEnd::Failed("empty renewal".into()))
            .and_then(|s| {
                node_client::agent_svid(s, self.td()).map_err(|e| SessionEnd::Failed(e.to_string()))
            })?;
        self.set_identity(&svid, key)
            .map_err(|e| SessionEnd::Failed(e.to_string()))?;
        tracing::info!(agent = %svid.spiffe_id, expires_at = svid.expires_at, "agent SVID renewed");
        Ok(())
    }

    fn apply_sync(
        &self,
        m: pb::SyncEntriesResponse,
        pending: &mut Option<(u64, HashMap<String, Entry>)>,
    ) {
        use pb::sync_entries_response::Event;
        let conv = |e: &pb::Entry| match writ_proto::convert::entry_from_pb(e) {
            Ok(e) => Some(e),
            Err(err) => {
                tracing::warn!(entry = %e.id, error = %err, "ignoring malformed entry from server");
                None
            }
        };
        match m.event {
            Some(Event::Snapshot(page)) => {
                if page.unchanged {
                    let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
                    c.revision = page.revision;
                    c.synced = true;
                    return;
                }
                let (_, map) = pending.get_or_insert_with(|| (page.revision, HashMap::new()));
                for e in page.entries.iter().filter_map(conv) {
                    map.insert(e.id.clone(), e);
                }
                if page.last {
                    let (_, map) = pending.take().unwrap_or_default();
                    let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
                    c.replace_entries(map);
                    c.revision = page.revision;
                    c.synced = true;
                    c.prune();
                    tracing::info!(
                        entries = c.entries().len(),
                        revision = c.revision,
                        "entry snapshot received"
                    );
                    drop(c);
                    self.bump();
                    self.sign_now.notify_one();
                }
            }
            Some(Event::Change(ch)) => {
                let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
                for e in ch.upserts.iter().filter_map(conv) {
                    c.upsert_entry(e);
                }
                for id in &ch.removed_ids {
                    c.remove_entry(id);
                }
                c.revision = c.revision.max(ch.revision);
                c.prune();
                tracing::debug!(
                    upserts = ch.upserts.len(),
                    removed = ch.removed_ids.len(),
                    revision = ch.revision,
                    "entries changed"
                );
                drop(c);
                self.jwt_cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|(id, _), _| !ch.removed_ids.contains(id));
                self.bump();
                self.sign_now.notify_one();
            }
            None => {}
        }
    }

    fn apply_bundles(&self, m: pb::WatchBundlesResponse) {
        if let Some(own) = m.own.as_ref() {
            match Bundle::from_json(self.td().clone(), &own.spiffe_bundle_json) {
                Ok(b) if b.trust_domain == *self.td() => self.set_own_bundle(b),
                Ok(_) => tracing::warn!("server sent a bundle for another trust domain as its own"),
                Err(e) => tracing::warn!(error = %e, "ignoring malformed bundle from server"),
            }
        }
        let mut fed = Vec::new();
        for b in &m.federated {
            match TrustDomain::new(&b.trust_domain)
                .map_err(|e| e.to_string())
                .and_then(|td| {
                    Bundle::from_json(td, &b.spiffe_bundle_json).map_err(|e| e.to_string())
                }) {
                Ok(b) => fed.push(b),
                Err(e) => tracing::warn!(error = %e, "ignoring malformed federated bundle"),
            }
        }
        let changed = {
            let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
            if c.federated != fed {
                c.federated = fed;
                true
            } else {
                false
            }
        };
        if changed {
            self.refresh_trust();
            self.bump();
        }
    }

    /// Keeps an SVID for every servable entry: signs what is missing, stale or due for rotation.
    async fn signer(self: Arc<Self>, client: Node) {
        loop {
            let now = writ_core::now_unix();
            let (due, next_wake) = {
                let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
                let mut due = Vec::new();
                let mut next = i64::MAX;
                for e in c.servable(now) {
                    match c.svids.get(&e.id) {
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
            for batch in due.chunks(SIGN_BATCH) {
                if in_flight.len() >= SIGN_IN_FLIGHT {
                    failed |= Self::batch_failed(in_flight.join_next().await);
                }
                if failed {
                    break;
                }
                let (this, mut c, batch) = (self.clone(), client.clone(), batch.to_vec());
                in_flight.spawn(async move { this.sign_batch(&mut c, &batch).await });
            }
            while let Some(r) = in_flight.join_next().await {
                failed |= Self::batch_failed(Some(r));
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
    fn batch_failed(r: Option<Result<Result<(), tonic::Status>, tokio::task::JoinError>>) -> bool {
        match r {
            Some(Ok(Err(s))) => {
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

    async fn sign_batch(&self, client: &mut Node, batch: &[Entry]) -> Result<(), tonic::Status> {
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
        let mut added = 0;
        {
            let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
            for ((e, k), r) in batch.iter().zip(keys).zip(resp.results) {
                if !r.error.is_empty() || r.entry_id != e.id || r.cert_chain.is_empty() {
                    tracing::warn!(entry = %e.id, error = %r.error, "server did not sign");
                    continue;
                }
                // Only keep it if the entry is still the one we asked for.
                if c.entries().get(&e.id).map(|x| x.revision) != Some(e.revision) {
                    continue;
                }
                let life = (r.expires_at - now).max(1);
                let jitter = self.random_below((life / 10).max(0) as u64) as i64;
                c.svids.insert(
                    e.id.clone(),
                    CachedSvid {
                        entry_revision: e.revision,
                        spiffe_id: e.spiffe_id.clone(),
                        chain: r.cert_chain,
                        key_pkcs8: k.pkcs8_der().to_vec(),
                        issued_at: now,
                        expires_at: r.expires_at,
                        rotate_at: now + life / 2 - jitter,
                    },
                );
                added += 1;
            }
        }
        if added > 0 {
            tracing::debug!(signed = added, "workload SVIDs updated");
            self.bump();
        }
        Ok(())
    }

    /// A JWT-SVID for `entry` and `audience`, from the cache while it has more than half its
    /// lifetime left, else freshly minted by the server.
    pub async fn jwt_for(
        &self,
        entry: &Entry,
        audience: &[String],
    ) -> Result<String, tonic::Status> {
        let mut aud = audience.to_vec();
        aud.sort();
        aud.dedup();
        let key = (entry.id.clone(), aud.clone());
        let now = writ_core::now_unix();
        if let Some((t, iat, exp)) = self
            .jwt_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if now < iat + (exp - iat) / 2 {
                return Ok(t.clone());
            }
        }
        let client = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut client = client
            .ok_or_else(|| tonic::Status::unavailable("agent is not connected to the server"))?;
        let r = client
            .mint_jwt(pb::MintJwtRequest {
                entry_id: entry.id.clone(),
                audience: aud,
            })
            .await
            .map_err(|s| match s.code() {
                Code::InvalidArgument => s,
                _ => tonic::Status::unavailable(format!("cannot mint JWT-SVID: {}", s.message())),
            })?
            .into_inner();
        let mut cache = self.jwt_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.retain(|_, (_, _, exp)| *exp > now);
        }
        cache.insert(key, (r.token.clone(), now, r.expires_at));
        Ok(r.token)
    }
}
