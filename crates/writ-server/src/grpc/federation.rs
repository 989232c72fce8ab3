//! The federation methods of the Admin service: relationships made, changed, listed and
//! deleted at run time (`writ federation ...`); see [`crate::federation::manage`].

use tonic::{Request, Response, Status};
use writ_core::{Bundle, TrustDomain};
use writ_proto::v1 as pb;

use super::admin::{operator, AdminApi};
use crate::audit::events;
use crate::federation::manage::{relationship, Source};
use crate::federation::{Relationship, RemoteProfile};

fn to_pb(r: &Relationship, source: Source, sequence: u64) -> pb::FederationRelationship {
    let (profile, id) = match &r.profile {
        RemoteProfile::HttpsSpiffe {
            endpoint_spiffe_id, ..
        } => ("https_spiffe", endpoint_spiffe_id.to_string()),
        RemoteProfile::HttpsWeb { .. } => ("https_web", String::new()),
    };
    pb::FederationRelationship {
        trust_domain: r.trust_domain.to_string(),
        bundle_endpoint_url: r.url.clone(),
        profile: profile.into(),
        endpoint_spiffe_id: id,
        source: source.as_str().into(),
        bundle_sequence: sequence,
    }
}

impl AdminApi {
    fn sequence_of(&self, td: &TrustDomain) -> u64 {
        self.state
            .store
            .get_bundle(td)
            .ok()
            .flatten()
            .map_or(0, |b| b.sequence)
    }

    pub(super) async fn federation_set(
        &self,
        req: Request<pb::SetFederationRequest>,
    ) -> Result<Response<pb::FederationRelationship>, Status> {
        let r = req.get_ref();
        let p = r
            .relationship
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("relationship is required"))?;
        if !p.profile.is_empty() && p.profile != "https_spiffe" {
            return Err(Status::invalid_argument(format!(
                "profile `{}`: run-time relationships use https_spiffe (https_web ones go in the config file)",
                p.profile
            )));
        }
        let rel = relationship(
            &self.state.cfg.trust_domain,
            &p.trust_domain,
            &p.bundle_endpoint_url,
            &p.endpoint_spiffe_id,
        )?;
        let bootstrap = if r.trust_domain_bundle.is_empty() {
            None
        } else {
            let td = rel.trust_domain.clone();
            let b = Bundle::from_json(td.clone(), &r.trust_domain_bundle).or_else(|_| {
                Bundle::from_x509_pem(td, &String::from_utf8_lossy(&r.trust_domain_bundle))
            });
            Some(b.map_err(|e| Status::invalid_argument(format!("trust_domain_bundle: {e}")))?)
        };
        let rel = self.state.set_federation(rel, r.create, bootstrap).await?;
        let method = if r.create {
            "CreateFederation"
        } else {
            "UpdateFederation"
        };
        let rec = events::admin_action(operator(&req), method)
            .detail("trust_domain", rel.trust_domain.to_string())
            .detail("bundle_endpoint_url", rel.url.clone());
        self.state.audit.note(vec![rec]).await;
        let seq = self.sequence_of(&rel.trust_domain);
        Ok(Response::new(to_pb(&rel, Source::Api, seq)))
    }

    pub(super) async fn federation_list(
        &self,
        _req: Request<pb::ListFederationsRequest>,
    ) -> Result<Response<pb::ListFederationsResponse>, Status> {
        let relationships = self
            .state
            .federations
            .list()
            .await
            .iter()
            .map(|(r, s)| to_pb(r, *s, self.sequence_of(&r.trust_domain)))
            .collect();
        Ok(Response::new(pb::ListFederationsResponse { relationships }))
    }

    pub(super) async fn federation_delete(
        &self,
        req: Request<pb::DeleteFederationRequest>,
    ) -> Result<Response<pb::DeleteFederationResponse>, Status> {
        let td = TrustDomain::new(&req.get_ref().trust_domain)
            .map_err(|e| Status::invalid_argument(format!("trust_domain: {e}")))?;
        self.state.delete_federation(&td).await?;
        let rec = events::admin_action(operator(&req), "DeleteFederation")
            .detail("trust_domain", td.to_string());
        self.state.audit.note(vec![rec]).await;
        Ok(Response::new(pb::DeleteFederationResponse {}))
    }
}
