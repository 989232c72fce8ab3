//! The operator `writ.v1.Admin` service, served only on the private admin Unix socket.
//!
//! Methods check the shape of requests (IDs, TTL ranges, batch sizes, IDs reserved for writ
//! itself), translate messages and call the flows; refusals are counted by the edge layer.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use writ_core::TrustDomain;
use writ_proto::convert::{
    bundle_from_pb, bundle_to_pb, entry_from_pb, entry_to_pb, node_to_pb, parse_id,
    selector_from_pb,
};
use writ_proto::v1 as pb;
use writ_proto::v1::admin_server::Admin;

use super::status;
use crate::registry::EntryQuery;
use crate::state::ServerState;

/// Longest join token lifetime.
pub(crate) const MAX_TOKEN_TTL: i64 = 30 * 86_400;
/// Most entries in one batch create.
pub(crate) const MAX_BATCH_ENTRIES: usize = 10_000;
/// Longest SVID lifetime the admin API mints directly.
pub(crate) const MAX_MINT_TTL: i64 = 30 * 86_400;

/// The Admin service.
#[derive(Debug, Clone)]
pub(crate) struct AdminApi {
    state: Arc<ServerState>,
}

impl AdminApi {
    /// Wraps the shared state.
    pub(crate) fn new(state: Arc<ServerState>) -> Self {
        AdminApi { state }
    }
}

/// Refuses IDs reserved for writ's own identities (server, agents): operators may not mint
/// them, register entries for them or alias join tokens to them.
fn refuse_reserved(what: &str, id: &writ_core::SpiffeId) -> Result<(), Status> {
    if writ_core::is_reserved_id(id) {
        return Err(Status::invalid_argument(format!(
            "{what} `{id}` is reserved for writ's own identities (the server and agents, paths under `/writ`)"
        )));
    }
    Ok(())
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
            refuse_reserved("join token alias", &id)?;
            Some(id)
        };
        let t = self.state.create_join_token(alias, ttl)?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: t.token,
            spiffe_id: t.spiffe_id.map(|a| a.to_string()).unwrap_or_default(),
            expires_at: t.expires_at,
        }))
    }

    async fn create_entry(&self, req: Request<pb::Entry>) -> Result<Response<pb::Entry>, Status> {
        let e = entry_from_pb(req.get_ref())?;
        let e = self.state.create_entry(e).await?;
        Ok(Response::new(entry_to_pb(&e)))
    }

    async fn batch_create_entries(
        &self,
        req: Request<pb::BatchCreateEntriesRequest>,
    ) -> Result<Response<pb::BatchCreateEntriesResponse>, Status> {
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

    async fn update_entry(&self, req: Request<pb::Entry>) -> Result<Response<pb::Entry>, Status> {
        let e = entry_from_pb(req.get_ref())?;
        if e.id.is_empty() {
            return Err(Status::invalid_argument("id is required"));
        }
        let e = self.state.update_entry(e).await?;
        Ok(Response::new(entry_to_pb(&e)))
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let e = self.state.get_entry(&req.get_ref().id)?;
        Ok(Response::new(entry_to_pb(&e)))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let r = req.get_ref();
        let q = EntryQuery {
            spiffe_id: (!r.spiffe_id.is_empty())
                .then(|| parse_id("spiffe_id", &r.spiffe_id))
                .transpose()?,
            parent_id: (!r.parent_id.is_empty())
                .then(|| parse_id("parent_id", &r.parent_id))
                .transpose()?,
            selector: r.selector.as_ref().map(selector_from_pb).transpose()?,
        };
        let (entries, next_page_token) =
            self.state
                .list_entries(&q, &r.page_token, r.page_size as usize)?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries,
            next_page_token,
        }))
    }

    async fn delete_entries(
        &self,
        req: Request<pb::DeleteEntriesRequest>,
    ) -> Result<Response<pb::DeleteEntriesResponse>, Status> {
        let ids = &req.get_ref().ids;
        if ids.is_empty() {
            return Err(Status::invalid_argument("ids is empty"));
        }
        let deleted = self.state.delete_entries(ids).await?;
        Ok(Response::new(pb::DeleteEntriesResponse { deleted }))
    }

    async fn list_nodes(
        &self,
        _req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self.state.store.list_nodes().map_err(status::store)?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.iter().map(node_to_pb).collect(),
        }))
    }

    async fn get_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::AttestedNode>, Status> {
        let id = parse_id("spiffe_id", &req.get_ref().spiffe_id)?;
        Ok(Response::new(node_to_pb(&self.state.get_node(&id)?)))
    }

    async fn evict_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::AttestedNode>, Status> {
        let id = parse_id("spiffe_id", &req.get_ref().spiffe_id)?;
        Ok(Response::new(node_to_pb(&self.state.evict_node(&id)?)))
    }

    async fn ban_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::AttestedNode>, Status> {
        let id = parse_id("spiffe_id", &req.get_ref().spiffe_id)?;
        Ok(Response::new(node_to_pb(&self.state.ban_node(&id)?)))
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
        let b = self
            .state
            .set_federated_bundle(bundle_from_pb(req.get_ref())?)?;
        Ok(Response::new(bundle_to_pb(&b)?))
    }

    async fn delete_federated_bundle(
        &self,
        req: Request<pb::DeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::DeleteFederatedBundleResponse>, Status> {
        let td = TrustDomain::new(&req.get_ref().trust_domain)
            .map_err(|e| Status::invalid_argument(format!("trust_domain: {e}")))?;
        self.state.delete_federated_bundle(&td)?;
        Ok(Response::new(pb::DeleteFederatedBundleResponse {}))
    }

    async fn mint_x509(
        &self,
        req: Request<pb::MintX509Request>,
    ) -> Result<Response<pb::MintX509Response>, Status> {
        let r = req.get_ref();
        let id = parse_id("spiffe_id", &r.spiffe_id)?;
        refuse_reserved("spiffe_id", &id)?;
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

    async fn mint_jwt(
        &self,
        req: Request<pb::AdminMintJwtRequest>,
    ) -> Result<Response<pb::AdminMintJwtResponse>, Status> {
        let r = req.get_ref();
        let id = parse_id("spiffe_id", &r.spiffe_id)?;
        if !id.is_member_of(&self.state.cfg.trust_domain) || id.path().is_empty() {
            return Err(Status::invalid_argument(format!(
                "spiffe_id `{id}` must be in the server's trust domain and have a path"
            )));
        }
        refuse_reserved("spiffe_id", &id)?;
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
}
