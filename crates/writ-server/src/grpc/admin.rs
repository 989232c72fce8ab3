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
use crate::audit::events;
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
    pub(super) state: Arc<ServerState>,
}

impl AdminApi {
    /// Wraps the shared state.
    pub(crate) fn new(state: Arc<ServerState>) -> Self {
        AdminApi { state }
    }

    /// The policy decision for an operator mint; a denial is journalled and refused.
    async fn operator_decision<T>(
        &self,
        req: &Request<T>,
        action: writ_policy::Action,
        id: &writ_core::SpiffeId,
        ttl: i64,
        audiences: &[String],
    ) -> Result<(), Status> {
        let actor = operator(req);
        let mint = writ_policy::MintRequest {
            action,
            principal: writ_policy::Principal::Operator {
                uid: actor.uid.unwrap_or(u32::MAX),
            },
            spiffe_id: id.to_string(),
            ttl,
            audiences: audiences.to_vec(),
            now: writ_core::now_unix(),
            purpose: String::new(),
        };
        let key = format!("operator:{}", actor.uid.unwrap_or(u32::MAX));
        if let Err(d) = self.state.decide(&mint, &key) {
            let rec = self.state.denial_record(actor, &mint, &d);
            self.state.audit.note(vec![rec]).await;
            return Err(crate::signing::SignError::Denied(d).into());
        }
        Ok(())
    }
}

/// The operator calling: the admin socket's peer UID (the socket is private to the server's
/// user and root, so this names who ran the command, as far as the kernel knows).
pub(super) fn operator<T>(req: &Request<T>) -> writ_audit::Actor {
    let uid = req
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid());
    match uid {
        Some(uid) => writ_audit::Actor::operator(uid),
        None => writ_audit::Actor {
            kind: "operator".into(),
            ..writ_audit::Actor::server()
        },
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
        let mut rec = events::admin_action(operator(&req), "CreateJoinToken");
        if let Some(a) = &t.spiffe_id {
            rec = rec.spiffe_id(a);
        }
        self.state
            .audit
            .note(vec![rec.detail("expires_at", t.expires_at)])
            .await;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: t.token,
            spiffe_id: t.spiffe_id.map(|a| a.to_string()).unwrap_or_default(),
            expires_at: t.expires_at,
        }))
    }

    async fn create_entry(&self, req: Request<pb::Entry>) -> Result<Response<pb::Entry>, Status> {
        let e = entry_from_pb(req.get_ref())?;
        let e = self.state.create_entry(e).await?;
        let mut recs = vec![events::entry_created(operator(&req), &e)];
        if e.break_glass {
            recs.push(events::break_glass_used(operator(&req), &e, None, None));
        }
        self.state.audit.note(recs).await;
        Ok(Response::new(entry_to_pb(&e)))
    }

    async fn batch_create_entries(
        &self,
        req: Request<pb::BatchCreateEntriesRequest>,
    ) -> Result<Response<pb::BatchCreateEntriesResponse>, Status> {
        let actor = operator(&req);
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
        self.state
            .audit
            .note(
                created
                    .iter()
                    .flat_map(|e| {
                        let mut r = vec![events::entry_created(actor.clone(), e)];
                        if e.break_glass {
                            r.push(events::break_glass_used(actor.clone(), e, None, None));
                        }
                        r
                    })
                    .collect(),
            )
            .await;
        Ok(Response::new(pb::BatchCreateEntriesResponse {
            entries: created.iter().map(entry_to_pb).collect(),
        }))
    }

    async fn update_entry(&self, req: Request<pb::Entry>) -> Result<Response<pb::Entry>, Status> {
        let e = entry_from_pb(req.get_ref())?;
        if e.id.is_empty() {
            return Err(Status::invalid_argument("id is required"));
        }
        let old = self.state.get_entry(&e.id).ok();
        let e = self.state.update_entry(e).await?;
        if let Some(old) = old {
            self.state
                .audit
                .note(vec![events::entry_updated(operator(&req), &old, &e)])
                .await;
        }
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
        let before: Vec<_> = ids
            .iter()
            .filter_map(|id| self.state.get_entry(id).ok())
            .collect();
        let deleted = self.state.delete_entries(ids).await?;
        let gone: Vec<_> = before
            .iter()
            .filter(|e| self.state.get_entry(&e.id).is_err())
            .collect();
        self.state
            .audit
            .note(
                gone.iter()
                    .map(|e| events::entry_deleted(operator(&req), e))
                    .collect(),
            )
            .await;
        // A deleted entry's outstanding SVIDs stop working now, not at their expiry.
        if self.state.cfg.audit_enabled {
            for e in gone {
                let t = crate::revoke::Target::Entry(e.id.clone());
                match self
                    .state
                    .revoke_x509(t, "cessation_of_operation (entry deleted)", operator(&req))
                    .await
                {
                    Ok(_) | Err(crate::revoke::RevokeError::NothingOutstanding(_)) => {}
                    Err(err) => {
                        tracing::error!(entry = %e.id, error = %err, "could not revoke the deleted entry's SVIDs")
                    }
                }
            }
        }
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
        let n = self.state.evict_node(&id)?;
        self.state
            .audit
            .note(vec![events::node_removed(operator(&req), &n, false)])
            .await;
        Ok(Response::new(node_to_pb(&n)))
    }

    async fn ban_node(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::AttestedNode>, Status> {
        let id = parse_id("spiffe_id", &req.get_ref().spiffe_id)?;
        // What the node may serve, taken before the ban: its outstanding SVIDs are revoked.
        let held = self
            .state
            .get_node(&id)
            .map(|n| self.state.authorized(&n).2)
            .unwrap_or_default();
        let n = self.state.ban_node(&id)?;
        if self.state.cfg.audit_enabled {
            for e in held {
                let t = crate::revoke::Target::EntryOfAgent {
                    entry: e.id.clone(),
                    agent: id.to_string(),
                };
                match self
                    .state
                    .revoke_x509(t, "privilege_withdrawn (node banned)", operator(&req))
                    .await
                {
                    Ok(_) | Err(crate::revoke::RevokeError::NothingOutstanding(_)) => {}
                    Err(err) => {
                        tracing::error!(node = %id, error = %err, "could not revoke the banned node's SVIDs")
                    }
                }
            }
        }
        self.state
            .audit
            .note(vec![events::node_removed(operator(&req), &n, true)])
            .await;
        Ok(Response::new(node_to_pb(&n)))
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
        let rec = events::admin_action(operator(&req), "SetFederatedBundle")
            .detail("trust_domain", b.trust_domain.to_string());
        self.state.audit.note(vec![rec]).await;
        Ok(Response::new(bundle_to_pb(&b)?))
    }

    async fn delete_federated_bundle(
        &self,
        req: Request<pb::DeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::DeleteFederatedBundleResponse>, Status> {
        let td = TrustDomain::new(&req.get_ref().trust_domain)
            .map_err(|e| Status::invalid_argument(format!("trust_domain: {e}")))?;
        self.state.delete_federated_bundle(&td)?;
        let rec = events::admin_action(operator(&req), "DeleteFederatedBundle")
            .detail("trust_domain", td.to_string());
        self.state.audit.note(vec![rec]).await;
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
        self.operator_decision(&req, writ_policy::Action::MintX509, &id, ttl, &[])
            .await?;
        let (svid, key) = self.state.mint_with_new_key(&id, ttl, &r.dns_names)?;
        let rec = events::x509_minted(
            operator(&req),
            id.as_str(),
            &svid.serial_hex,
            svid.not_after,
        );
        self.state
            .audit
            .record(vec![rec])
            .await
            .map_err(crate::signing::SignError::from)?;
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
        self.operator_decision(&req, writ_policy::Action::MintJwt, &id, ttl, &r.audience)
            .await?;
        let jwt = self.state.mint_jwt(&id, &r.audience, ttl)?;
        let rec = events::jwt_issued(
            operator(&req),
            id.as_str(),
            None,
            &jwt.jti,
            &r.audience,
            jwt.exp,
        );
        self.state
            .audit
            .record(vec![rec])
            .await
            .map_err(crate::signing::SignError::from)?;
        tracing::info!(spiffe_id = %id, "jwt-svid minted by operator");
        Ok(Response::new(pb::AdminMintJwtResponse {
            token: jwt.token,
            expires_at: jwt.exp,
        }))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.governance_list_audit(req).await
    }

    async fn verify_audit(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        self.governance_verify_audit(req).await
    }

    async fn revoke_x509(
        &self,
        req: Request<pb::RevokeX509Request>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        self.governance_revoke_x509(req).await
    }

    async fn revoke_jwt(
        &self,
        req: Request<pb::RevokeJwtRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        self.governance_revoke_jwt(req).await
    }

    async fn get_crl(
        &self,
        req: Request<pb::GetCrlRequest>,
    ) -> Result<Response<pb::GetCrlResponse>, Status> {
        self.governance_get_crl(req).await
    }

    async fn set_federation(
        &self,
        req: Request<pb::SetFederationRequest>,
    ) -> Result<Response<pb::FederationRelationship>, Status> {
        self.federation_set(req).await
    }

    async fn list_federations(
        &self,
        req: Request<pb::ListFederationsRequest>,
    ) -> Result<Response<pb::ListFederationsResponse>, Status> {
        self.federation_list(req).await
    }

    async fn delete_federation(
        &self,
        req: Request<pb::DeleteFederationRequest>,
    ) -> Result<Response<pb::DeleteFederationResponse>, Status> {
        self.federation_delete(req).await
    }

    async fn show_policy(
        &self,
        req: Request<pb::ShowPolicyRequest>,
    ) -> Result<Response<pb::ShowPolicyResponse>, Status> {
        self.governance_show_policy(req).await
    }

    async fn authority(
        &self,
        req: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::AuthorityResponse>, Status> {
        self.governance_authority(req).await
    }

    async fn check_policy(
        &self,
        req: Request<pb::CheckPolicyRequest>,
    ) -> Result<Response<pb::CheckPolicyResponse>, Status> {
        self.governance_check_policy(req).await
    }
}
