//! The operator `writ.v1.Admin` service, served only on the private admin Unix socket.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use writ_core::{Bundle, TrustDomain};
use writ_proto::v1 as pb;
use writ_proto::v1::admin_server::Admin;

use crate::state::{store_status, ServerState};
use writ_proto::convert::{
    bundle_from_pb, bundle_to_pb, entry_from_pb, entry_to_pb, node_to_pb, parse_id,
    selector_from_pb,
};

/// Longest join token lifetime.
pub const MAX_TOKEN_TTL: i64 = 30 * 86_400;
/// Most entries in one batch create.
pub const MAX_BATCH_ENTRIES: usize = 10_000;
/// Longest SVID lifetime the admin API mints directly.
pub const MAX_MINT_TTL: i64 = 30 * 86_400;

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    state: Arc<ServerState>,
}

impl AdminApi {
    /// Wraps the shared state.
    pub fn new(state: Arc<ServerState>) -> Self {
        AdminApi { state }
    }

    fn counted<T>(&self, r: Result<T, Status>) -> Result<T, Status> {
        if let Err(s) = &r {
            self.state.metrics.count_status(s);
        }
        r
    }
}

fn ttl_or(v: i64, default: i64, max: i64, what: &str) -> Result<i64, Status> {
    match v {
        0 => Ok(default),
        v if v < 0 => Err(Status::invalid_argument(format!(
            "{what} ttl must be positive"
        ))),
        v if v > max => Err(Status::invalid_argument(format!(
            "{what} ttl is over the limit of {max} seconds"
        ))),
        v => Ok(v),
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        self.counted(
            async {
                let r = req.get_ref();
                let ttl = ttl_or(r.ttl_secs, 600, MAX_TOKEN_TTL, "token")?;
                let alias = if r.spiffe_id.is_empty() {
                    None
                } else {
                    let id = parse_id("spiffe_id", &r.spiffe_id)?;
                    if !id.is_member_of(&self.state.cfg.trust_domain) || id.path().is_empty() {
                        return Err(Status::invalid_argument(format!(
                            "spiffe_id `{id}` must be in trust domain `{}` and have a path",
                            self.state.cfg.trust_domain
                        )));
                    }
                    Some(id)
                };
                let t = self.state.create_join_token(alias, ttl)?;
                Ok(Response::new(pb::CreateJoinTokenResponse {
                    token: t.token,
                    spiffe_id: t.spiffe_id.map(|a| a.to_string()).unwrap_or_default(),
                    expires_at: t.expires_at,
                }))
            }
            .await,
        )
    }

    async fn create_entry(&self, req: Request<pb::Entry>) -> Result<Response<pb::Entry>, Status> {
        self.counted(
            async {
                let e = entry_from_pb(req.get_ref())?;
                let e = self.state.create_entry(e).await?;
                Ok(Response::new(entry_to_pb(&e)))
            }
            .await,
        )
    }

    async fn batch_create_entries(
        &self,
        req: Request<pb::BatchCreateEntriesRequest>,
    ) -> Result<Response<pb::BatchCreateEntriesResponse>, Status> {
        self.counted(
            async {
                let r = req.into_inner();
                if r.entries.is_empty() || r.entries.len() > MAX_BATCH_ENTRIES {
                    return Err(Status::invalid_argument(format!(
                        "a batch holds 1 to {MAX_BATCH_ENTRIES} entries, not {}",
                        r.entries.len()
                    )));
                }
                let entries = r
                    .entries
                    .iter()
                    .map(entry_from_pb)
                    .collect::<Result<Vec<_>, _>>()?;
                let created = self.state.create_entries(entries).await?;
                Ok(Response::new(pb::BatchCreateEntriesResponse {
                    entries: created.iter().map(entry_to_pb).collect(),
                }))
            }
            .await,
        )
    }

    async fn update_entry(&self, req: Request<pb::Entry>) -> Result<Response<pb::Entry>, Status> {
        self.counted(
            async {
                let e = entry_from_pb(req.get_ref())?;
                if e.id.is_empty() {
                    return Err(Status::invalid_argument("id is required"));
                }
                let e = self.state.update_entry(e).await?;
                Ok(Response::new(entry_to_pb(&e)))
            }
            .await,
        )
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let id = &req.get_ref().id;
        let e = self
            .state
            .store
            .get_entry(id)
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("entry `{id}` not found")))?;
        Ok(Response::new(entry_to_pb(&e)))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        self.counted(
            async {
                let r = req.get_ref();
                let st = &self.state.store;
                let spiffe = (!r.spiffe_id.is_empty())
                    .then(|| parse_id("spiffe_id", &r.spiffe_id))
                    .transpose()?;
                let parent = (!r.parent_id.is_empty())
                    .then(|| parse_id("parent_id", &r.parent_id))
                    .transpose()?;
                let sel = r.selector.as_ref().map(selector_from_pb).transpose()?;
                // Start from the most selective index, then filter by the other criteria.
                let mut entries = match (&spiffe, &parent, &sel) {
                    (Some(id), _, _) => st.entries_by_spiffe_id(id),
                    (None, Some(p), _) => st.entries_by_parent(p),
                    (None, None, Some(s)) => st.entries_by_selector(s),
                    (None, None, None) => st.list_entries(),
                }
                .map_err(store_status)?;
                entries.retain(|e| {
                    spiffe.as_ref().is_none_or(|i| &e.spiffe_id == i)
                        && parent.as_ref().is_none_or(|p| &e.parent_id == p)
                        && sel.as_ref().is_none_or(|s| e.selectors.contains(s))
                });
                entries.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id).then(a.id.cmp(&b.id)));
                Ok(Response::new(pb::ListEntriesResponse {
                    entries: entries.iter().map(entry_to_pb).collect(),
                }))
            }
            .await,
        )
    }

    async fn delete_entries(
        &self,
        req: Request<pb::DeleteEntriesRequest>,
    ) -> Result<Response<pb::DeleteEntriesResponse>, Status> {
        self.counted(
            async {
                let ids = &req.get_ref().ids;
                if ids.is_empty() {
                    return Err(Status::invalid_argument("ids is empty"));
                }
                // Check every ID first so a typo deletes nothing.
                for id in ids {
                    if self
                        .state
                        .store
                        .get_entry(id)
                        .map_err(store_status)?
                        .is_none()
                    {
                        return Err(Status::not_found(format!("entry `{id}` not found")));
                    }
                }
                let mut deleted = Vec::new();
                for id in ids {
                    deleted.push(self.state.delete_entry(id).await?.id);
                }
                Ok(Response::new(pb::DeleteEntriesResponse { deleted }))
            }
            .await,
        )
    }

    async fn list_nodes(
        &self,
        _req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self.state.store.list_nodes().map_err(store_status)?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.iter().map(node_to_pb).collect(),
        }))
    }

    async fn get_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::AttestedNode>, Status> {
        self.counted(
            async {
                let id = parse_id("spiffe_id", &req.get_ref().spiffe_id)?;
                let n = self
                    .state
                    .store
                    .get_node(&id)
                    .map_err(store_status)?
                    .ok_or_else(|| Status::not_found(format!("node `{id}` not found")))?;
                Ok(Response::new(node_to_pb(&n)))
            }
            .await,
        )
    }

    async fn evict_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::AttestedNode>, Status> {
        self.counted(
            async {
                let id = parse_id("spiffe_id", &req.get_ref().spiffe_id)?;
                Ok(Response::new(node_to_pb(&self.state.evict_node(&id)?)))
            }
            .await,
        )
    }

    async fn ban_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::AttestedNode>, Status> {
        self.counted(
            async {
                let id = parse_id("spiffe_id", &req.get_ref().spiffe_id)?;
                Ok(Response::new(node_to_pb(&self.state.ban_node(&id)?)))
            }
            .await,
        )
    }

    async fn get_bundle(
        &self,
        _req: Request<pb::GetBundleRequest>,
    ) -> Result<Response<pb::Bundle>, Status> {
        let own = self.state.bundles.borrow().own.clone();
        Ok(Response::new(bundle_to_pb(&own)?))
    }

    async fn list_federated_bundles(
        &self,
        _req: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        let fed = self.state.bundles.borrow().federated.clone();
        Ok(Response::new(pb::ListFederatedBundlesResponse {
            bundles: fed.iter().map(bundle_to_pb).collect::<Result<_, _>>()?,
        }))
    }

    async fn set_federated_bundle(
        &self,
        req: Request<pb::Bundle>,
    ) -> Result<Response<pb::Bundle>, Status> {
        self.counted(
            async {
                let mut b: Bundle = bundle_from_pb(req.get_ref())?;
                if b.trust_domain == self.state.cfg.trust_domain {
                    return Err(Status::invalid_argument(
                        "cannot set the server's own trust domain as a federated bundle",
                    ));
                }
                if b.x509_authorities.is_empty() && b.jwt_authorities.is_empty() {
                    return Err(Status::invalid_argument("bundle has no authorities"));
                }
                if let Some(old) = self
                    .state
                    .store
                    .get_bundle(&b.trust_domain)
                    .map_err(store_status)?
                {
                    if b.sequence <= old.sequence && !b.same_content(&old) {
                        b.sequence = old.sequence + 1;
                    }
                }
                self.state.store.put_bundle(&b).map_err(store_status)?;
                self.state.reload_federated()?;
                tracing::info!(trust_domain = %b.trust_domain, "federated bundle set");
                Ok(Response::new(bundle_to_pb(&b)?))
            }
            .await,
        )
    }

    async fn delete_federated_bundle(
        &self,
        req: Request<pb::DeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::DeleteFederatedBundleResponse>, Status> {
        self.counted(
            async {
                let td = TrustDomain::new(&req.get_ref().trust_domain)
                    .map_err(|e| Status::invalid_argument(format!("trust_domain: {e}")))?;
                if td == self.state.cfg.trust_domain {
                    return Err(Status::invalid_argument(
                        "cannot delete the server's own bundle",
                    ));
                }
                self.state.store.delete_bundle(&td).map_err(store_status)?;
                self.state.reload_federated()?;
                Ok(Response::new(pb::DeleteFederatedBundleResponse {}))
            }
            .await,
        )
    }

    async fn mint_x509(
        &self,
        req: Request<pb::MintX509Request>,
    ) -> Result<Response<pb::MintX509Response>, Status> {
        self.counted(
            async {
                let r = req.get_ref();
                let id = parse_id("spiffe_id", &r.spiffe_id)?;
                let ttl = ttl_or(
                    r.ttl_secs,
                    self.state.cfg.default_x509_svid_ttl,
                    MAX_MINT_TTL,
                    "x509",
                )?;
                let (svid, key) = self.state.mint_with_new_key(&id, ttl, &r.dns_names)?;
                let own = self.state.bundles.borrow().own.clone();
                tracing::info!(spiffe_id = %id, "x509-svid minted by operator");
                Ok(Response::new(pb::MintX509Response {
                    cert_chain: svid.chain,
                    private_key_pkcs8: key.pkcs8_der().to_vec(),
                    bundle: own.x509_authorities,
                    expires_at: svid.not_after,
                }))
            }
            .await,
        )
    }

    async fn mint_jwt(
        &self,
        req: Request<pb::AdminMintJwtRequest>,
    ) -> Result<Response<pb::AdminMintJwtResponse>, Status> {
        self.counted(
            async {
                let r = req.get_ref();
                let id = parse_id("spiffe_id", &r.spiffe_id)?;
                if !id.is_member_of(&self.state.cfg.trust_domain) || id.path().is_empty() {
                    return Err(Status::invalid_argument(format!(
                        "spiffe_id `{id}` must be in the server's trust domain and have a path"
                    )));
                }
                let ttl = ttl_or(
                    r.ttl_secs,
                    self.state.cfg.default_jwt_svid_ttl,
                    MAX_MINT_TTL,
                    "jwt",
                )?;
                let (token, expires_at) = self.state.mint_jwt(&id, &r.audience, ttl)?;
                tracing::info!(spiffe_id = %id, "jwt-svid minted by operator");
                Ok(Response::new(pb::AdminMintJwtResponse {
                    token,
                    expires_at,
                }))
            }
            .await,
        )
    }
}
