//! One issuance as a Cedar request, and its decision.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Request, RestrictedExpression,
};
use serde::{Deserialize, Serialize};

use crate::bundle::PolicyBundle;

/// What is being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// An X509-SVID.
    MintX509,
    /// A JWT-SVID.
    MintJwt,
    /// A WIT-SVID.
    MintWit,
    /// A task identity.
    StartTask,
}

impl Action {
    /// The Cedar action id.
    pub fn name(self) -> &'static str {
        match self {
            Action::MintX509 => "mint_x509",
            Action::MintJwt => "mint_jwt",
            Action::MintWit => "mint_wit",
            Action::StartTask => "start_task",
        }
    }
}

/// Who asks. (Built once per request and moved, never stored in bulk: boxing the workload's
/// facts would only add an allocation.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Principal {
    /// A workload, through its agent: the entry that matched it and the agent's node.
    Workload {
        /// Entry ID.
        entry_id: String,
        /// Entry SPIFFE ID.
        spiffe_id: String,
        /// Entry parent ID.
        parent_id: String,
        /// Entry selectors (`type:value`).
        selectors: Vec<String>,
        /// Entry owner.
        owner: String,
        /// Entry purpose.
        purpose: String,
        /// Entry `expires_at` (unix seconds), if any.
        expires_at: Option<i64>,
        /// Created under break-glass.
        break_glass: bool,
        /// Its reason.
        break_glass_reason: String,
        /// The agent's SPIFFE ID.
        node_id: String,
        /// The agent's node attestor.
        node_attestor: String,
        /// The agent's node selectors.
        node_selectors: Vec<String>,
    },
    /// An operator on the admin socket.
    Operator {
        /// User ID.
        uid: u32,
    },
}

/// The facts of one issuance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintRequest {
    /// What.
    pub action: Action,
    /// Who.
    pub principal: Principal,
    /// The SPIFFE ID asked for.
    pub spiffe_id: String,
    /// Lifetime asked for (seconds).
    pub ttl: i64,
    /// JWT audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Now (unix seconds).
    pub now: i64,
    /// The task's purpose (`start_task`; empty for other actions).
    #[serde(default)]
    pub purpose: String,
}

/// The answer, with its reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// The policies that decided it (permits for an allow, forbids, if any, for a deny).
    pub policies: Vec<String>,
    /// Errors evaluating policies (each makes that policy not apply; with no permit left the
    /// request is denied).
    pub errors: Vec<String>,
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    let t = EntityTypeName::from_str(ty).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

fn set(v: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(v.iter().map(|x| s(x)))
}

impl MintRequest {
    /// The Cedar request and entities.
    fn build(&self) -> Result<(Request, Entities), String> {
        let (td, path) = self
            .spiffe_id
            .strip_prefix("spiffe://")
            .map(|r| r.split_once('/').map_or((r, ""), |(a, b)| (a, b)))
            .ok_or_else(|| format!("`{}` is not a SPIFFE ID", self.spiffe_id))?;
        let resource = uid("Writ::Identity", &self.spiffe_id)?;
        let mut entities = vec![Entity::new(
            resource.clone(),
            HashMap::from([
                ("spiffe_id".to_owned(), s(&self.spiffe_id)),
                ("trust_domain".to_owned(), s(td)),
                ("path".to_owned(), s(&format!("/{path}"))),
            ]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?];
        let (principal, origin) = match &self.principal {
            Principal::Operator { uid: u } => {
                let p = uid("Writ::Operator", &u.to_string())?;
                entities.push(
                    Entity::new(
                        p.clone(),
                        HashMap::from([(
                            "uid".to_owned(),
                            RestrictedExpression::new_long(i64::from(*u)),
                        )]),
                        HashSet::new(),
                    )
                    .map_err(|e| e.to_string())?,
                );
                (p, "operator".to_owned())
            }
            Principal::Workload {
                entry_id,
                spiffe_id,
                parent_id,
                selectors,
                owner,
                purpose,
                expires_at,
                break_glass,
                break_glass_reason,
                node_id,
                node_attestor,
                node_selectors,
            } => {
                let node = uid("Writ::Node", node_id)?;
                entities.push(
                    Entity::new(
                        node.clone(),
                        HashMap::from([
                            ("spiffe_id".to_owned(), s(node_id)),
                            ("attestor".to_owned(), s(node_attestor)),
                            ("selectors".to_owned(), set(node_selectors)),
                        ]),
                        HashSet::new(),
                    )
                    .map_err(|e| e.to_string())?,
                );
                let p = uid("Writ::Workload", entry_id)?;
                entities.push(
                    Entity::new(
                        p.clone(),
                        HashMap::from([
                            (
                                "node".to_owned(),
                                RestrictedExpression::new_entity_uid(node.clone()),
                            ),
                            ("entry_id".to_owned(), s(entry_id)),
                            ("spiffe_id".to_owned(), s(spiffe_id)),
                            ("parent_id".to_owned(), s(parent_id)),
                            ("selectors".to_owned(), set(selectors)),
                            ("owner".to_owned(), s(owner)),
                            ("purpose".to_owned(), s(purpose)),
                            (
                                "has_expiry".to_owned(),
                                RestrictedExpression::new_bool(expires_at.is_some()),
                            ),
                            (
                                "expires_at".to_owned(),
                                RestrictedExpression::new_long(expires_at.unwrap_or(0)),
                            ),
                            (
                                "break_glass".to_owned(),
                                RestrictedExpression::new_bool(*break_glass),
                            ),
                            ("break_glass_reason".to_owned(), s(break_glass_reason)),
                        ]),
                        HashSet::from([node]),
                    )
                    .map_err(|e| e.to_string())?,
                );
                (p, node_id.clone())
            }
        };
        let hour = self.now.rem_euclid(86_400) / 3600;
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        let weekday = (self.now.div_euclid(86_400) + 3).rem_euclid(7);
        let context = Context::from_pairs([
            ("ttl".to_owned(), RestrictedExpression::new_long(self.ttl)),
            ("audiences".to_owned(), set(&self.audiences)),
            ("now".to_owned(), RestrictedExpression::new_long(self.now)),
            ("hour".to_owned(), RestrictedExpression::new_long(hour)),
            (
                "weekday".to_owned(),
                RestrictedExpression::new_long(weekday),
            ),
            ("origin".to_owned(), s(&origin)),
            ("purpose".to_owned(), s(&self.purpose)),
        ])
        .map_err(|e| e.to_string())?;
        let action = uid("Writ::Action", self.action.name())?;
        // No request-time schema validation: writ builds these entities and this context from
        // its own typed data, always in the schema's shape (the crate's tests validate the
        // same construction against the schema), and policies were validated strictly when
        // loaded. Validating each request again cost ~10 us of a ~23 us decision.
        let request =
            Request::new(principal, action, resource, context, None).map_err(|e| e.to_string())?;
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        Ok((request, entities))
    }

    /// The request's entities and request validated against the schema (what `decide` skips
    /// for speed); `Err` names what does not conform.
    pub fn check_against_schema(&self) -> Result<(), String> {
        let (request, entities) = self.build()?;
        let schema = crate::schema::schema();
        Request::new(
            request.principal().cloned().ok_or("no principal")?,
            request.action().cloned().ok_or("no action")?,
            request.resource().cloned().ok_or("no resource")?,
            request.context().cloned().ok_or("no context")?,
            Some(schema),
        )
        .map_err(|e| e.to_string())?;
        Entities::from_entities(entities, Some(schema)).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Decides this request under `bundle`. A request that cannot be built (a malformed ID) is
    /// denied with the reason as an error.
    pub fn decide(&self, bundle: &PolicyBundle) -> Decision {
        let (request, entities) = match self.build() {
            Ok(x) => x,
            Err(e) => {
                return Decision {
                    allowed: false,
                    policies: Vec::new(),
                    errors: vec![e],
                }
            }
        };
        let r = Authorizer::new().is_authorized(&request, &bundle.set, &entities);
        let mut policies: Vec<String> = r.diagnostics().reason().map(|p| p.to_string()).collect();
        policies.sort();
        Decision {
            allowed: r.decision() == CedarDecision::Allow,
            policies,
            errors: r.diagnostics().errors().map(|e| e.to_string()).collect(),
        }
    }
}
