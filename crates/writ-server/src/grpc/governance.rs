//! The governance methods of the Admin service: the audit journal (list, verify), revocation
//! (X509-SVIDs, JWT-SVIDs, the CRL) and policy (show, check). `admin.rs` delegates to these so
//! each file keeps one concern.

use tonic::{Request, Response, Status};
use writ_proto::convert::parse_id;
use writ_proto::v1 as pb;
use writ_store::AuditQuery;

use super::admin::{operator, AdminApi};
use crate::revoke::{RevokeError, Target};

/// Most audit records in one page.
pub(crate) const MAX_AUDIT_PAGE: u32 = 10_000;

impl AdminApi {
    pub(super) async fn governance_list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let r = req.into_inner();
        let selectors = [&r.spiffe_id, &r.serial, &r.jti, &r.entry_id];
        if selectors.iter().filter(|s| !s.is_empty()).count() > 1 {
            return Err(Status::invalid_argument(
                "select audit records by at most one of spiffe_id, serial, jti, entry_id",
            ));
        }
        if r.limit > MAX_AUDIT_PAGE {
            return Err(Status::invalid_argument(format!(
                "limit {} is over the maximum of {MAX_AUDIT_PAGE}",
                r.limit
            )));
        }
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        let since = (r.since_ms > 0).then(|| writ_audit::rfc3339_ms(r.since_ms));
        let state = self.state.clone();
        let records = tokio::task::spawn_blocking(move || {
            let query = if !r.spiffe_id.is_empty() {
                AuditQuery::SpiffeId(&r.spiffe_id)
            } else if !r.serial.is_empty() {
                AuditQuery::Serial(&r.serial)
            } else if !r.jti.is_empty() {
                AuditQuery::Jti(&r.jti)
            } else if !r.entry_id.is_empty() {
                AuditQuery::Entry(&r.entry_id)
            } else {
                AuditQuery::All
            };
            let keep = |rec: &writ_audit::Record| {
                (r.kinds.is_empty() || r.kinds.contains(&rec.kind))
                    && since
                        .as_ref()
                        .is_none_or(|t| rec.time.as_str() >= t.as_str())
            };
            state.audit.scan(query, r.after_seq, limit, &keep)
        })
        .await
        .map_err(|e| Status::internal(format!("audit scan failed: {e}")))?
        .map_err(|e| Status::internal(e.to_string()))?;
        let next_after_seq = if records.len() == limit {
            records.last().map_or(0, |r| r.seq)
        } else {
            0
        };
        let records = records
            .iter()
            .map(|r| serde_json::to_string(r).map_err(|e| Status::internal(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListAuditResponse {
            records,
            next_after_seq,
        }))
    }

    pub(super) async fn governance_verify_audit(
        &self,
        _req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let state = self.state.clone();
        let outcome = tokio::task::spawn_blocking(move || state.audit.verify())
            .await
            .map_err(|e| Status::internal(format!("audit verify failed: {e}")))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(match outcome {
            Ok(rep) => pb::VerifyAuditResponse {
                error: String::new(),
                records: rep.records,
                checkpoints: rep.checkpoints,
                head_hash: rep.head_hash,
                keys: rep.keys,
            },
            Err(e) => pb::VerifyAuditResponse {
                error: e.to_string(),
                ..Default::default()
            },
        }))
    }

    pub(super) async fn governance_revoke_x509(
        &self,
        req: Request<pb::RevokeX509Request>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let r = req.get_ref();
        let target = match (
            r.serial.is_empty(),
            r.spiffe_id.is_empty(),
            r.entry_id.is_empty(),
        ) {
            (false, true, true) => Target::Serial(r.serial.clone()),
            (true, false, true) => {
                let id = parse_id("spiffe_id", &r.spiffe_id)?;
                Target::SpiffeId(id.to_string())
            }
            (true, true, false) => Target::Entry(r.entry_id.clone()),
            _ => return Err(RevokeError::BadTarget.into()),
        };
        let revoked = self
            .state
            .revoke_x509(target, &r.reason, operator(&req))
            .await?;
        Ok(Response::new(pb::RevokeResponse {
            revoked: revoked.iter().map(|(id, r)| revoked_pb(id, r)).collect(),
        }))
    }

    pub(super) async fn governance_revoke_jwt(
        &self,
        req: Request<pb::RevokeJwtRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let r = req.get_ref();
        if r.jti.is_empty() || r.jti.len() > 256 {
            return Err(Status::invalid_argument("jti must be 1 to 256 bytes"));
        }
        let (id, rev) = self
            .state
            .revoke_jwt(&r.jti, &r.reason, operator(&req))
            .await?;
        Ok(Response::new(pb::RevokeResponse {
            revoked: vec![revoked_pb(&id, &rev)],
        }))
    }

    pub(super) async fn governance_get_crl(
        &self,
        _req: Request<pb::GetCrlRequest>,
    ) -> Result<Response<pb::GetCrlResponse>, Status> {
        let (list, published) = self.state.revocation_snapshot().await;
        Ok(Response::new(pb::GetCrlResponse {
            crl: published.crl.clone(),
            revoked_x509: list.x509.iter().map(|(id, r)| revoked_pb(id, r)).collect(),
            revoked_jwt: list.jwt.iter().map(|(id, r)| revoked_pb(id, r)).collect(),
        }))
    }

    pub(super) async fn governance_show_policy(
        &self,
        _req: Request<pb::ShowPolicyRequest>,
    ) -> Result<Response<pb::ShowPolicyResponse>, Status> {
        Ok(Response::new(match self.state.policy.current() {
            None => pb::ShowPolicyResponse::default(),
            Some(cur) => pb::ShowPolicyResponse {
                configured: true,
                files: cur
                    .bundle
                    .files()
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect(),
                hash: cur.bundle.hash().to_owned(),
                loaded_at: cur.loaded_at,
                policy_ids: cur.bundle.ids(),
            },
        }))
    }

    pub(super) async fn governance_check_policy(
        &self,
        req: Request<pb::CheckPolicyRequest>,
    ) -> Result<Response<pb::CheckPolicyResponse>, Status> {
        let uid = operator(&req).uid.unwrap_or(u32::MAX);
        let mint = self
            .state
            .check_request(&req.get_ref().request_json, uid)
            .map_err(Status::invalid_argument)?;
        let request_json = serde_json::to_string(&mint).unwrap_or_default();
        Ok(Response::new(match self.state.policy.current() {
            None => pb::CheckPolicyResponse {
                configured: false,
                allowed: true,
                request_json,
                ..Default::default()
            },
            Some(cur) => {
                let d = mint.decide(&cur.bundle);
                pb::CheckPolicyResponse {
                    configured: true,
                    allowed: d.allowed,
                    policies: d.policies,
                    errors: d.errors,
                    request_json,
                }
            }
        }))
    }

    pub(super) async fn governance_authority(
        &self,
        req: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::AuthorityResponse>, Status> {
        let r = req.get_ref();
        let kind = match r.kind.as_str() {
            "x509" => writ_ca::AuthorityKind::X509,
            "jwt" => writ_ca::AuthorityKind::Jwt,
            k => {
                return Err(Status::invalid_argument(format!(
                    "kind `{k}` is not x509 or jwt"
                )))
            }
        };
        let action = crate::authority::AuthorityAction::parse(&r.action).ok_or_else(|| {
            Status::invalid_argument(format!(
                "action `{}` is not show, prepare, activate, taint or revoke",
                r.action
            ))
        })?;
        let needs_key = matches!(
            action,
            crate::authority::AuthorityAction::Taint | crate::authority::AuthorityAction::Revoke
        );
        if needs_key && r.key_id.is_empty() {
            return Err(Status::invalid_argument(
                "key_id is required to taint or revoke",
            ));
        }
        let (all, changed) = self
            .state
            .authority_action(kind, action, &r.key_id, operator(&req))
            .await
            .map_err(|e| match e {
                writ_ca::CaError::Authority(m) => Status::failed_precondition(m),
                other => Status::internal(other.to_string()),
            })?;
        Ok(Response::new(pb::AuthorityResponse {
            authorities: all.iter().map(authority_pb).collect(),
            changed: changed.as_ref().map(authority_pb),
        }))
    }
}

fn revoked_pb(id: &str, r: &crate::revoke::Revoked) -> pb::RevokedCredential {
    pb::RevokedCredential {
        id: id.to_owned(),
        spiffe_id: r.spiffe_id.clone(),
        expires_at: r.expires_at,
        revoked_at: r.revoked_at,
        reason: r.reason.clone(),
    }
}

fn authority_pb(a: &writ_ca::AuthorityInfo) -> pb::AuthorityInfo {
    pb::AuthorityInfo {
        kind: match a.kind {
            writ_ca::AuthorityKind::X509 => "x509".into(),
            writ_ca::AuthorityKind::Jwt => "jwt".into(),
        },
        key_id: a.key_id.clone(),
        state: match a.state {
            writ_ca::SlotState::Prepared => "prepared".into(),
            writ_ca::SlotState::Active => "active".into(),
            writ_ca::SlotState::Old => "old".into(),
        },
        tainted: a.tainted,
        public_id: a.public_id.clone(),
        not_before: a.not_before,
        not_after: a.not_after,
    }
}
