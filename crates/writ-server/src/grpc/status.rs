//! The one mapping from the flows' typed errors to gRPC statuses, for both services.
//!
//! Rules: what the caller got wrong is InvalidArgument, what it may not do is PermissionDenied
//! (Unauthenticated when it presented no usable SVID), missing records are NotFound; the
//! server's own failures are Internal and are logged here with their whole `source()` chain,
//! since the caller only sees the top message.

use tonic::Status;
use writ_ca::CaError;
use writ_store::StoreError;

use crate::agent_svid::RenewError;
use crate::attest::flow::FlowError;
use crate::attest::AttestError;
use crate::auth::AuthError;
use crate::bundles::BundleError;
use crate::registry::RegistryError;
use crate::revoke::RevokeError;
use crate::signing::{is_bad_request, SignError};
use crate::state::StreamEnd;
use crate::tasks::TaskError;

/// An Internal status for a server failure, logged with its causes.
fn internal(what: &str, e: &dyn std::error::Error) -> Status {
    let mut chain = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        cur = s.source();
    }
    tracing::error!(error = %chain, "{what} failure");
    Status::internal(e.to_string())
}

pub(crate) fn store(e: StoreError) -> Status {
    match e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        StoreError::TokenInvalid | StoreError::TokenExpired => {
            Status::permission_denied(e.to_string())
        }
        other => internal("datastore", &other),
    }
}

fn ca(e: CaError) -> Status {
    if is_bad_request(&e) {
        Status::invalid_argument(e.to_string())
    } else {
        internal("CA", &e)
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(_)
            | RegistryError::OwnParent(_)
            | RegistryError::Governance(_) => Status::invalid_argument(e.to_string()),
            RegistryError::EntryNotFound(_) | RegistryError::NodeNotFound(_) => {
                Status::not_found(e.to_string())
            }
            RegistryError::Store(s) => store(s),
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::NoCertificate | AuthError::NotAnSvid(_) => {
                Status::unauthenticated(e.to_string())
            }
            AuthError::Store(s) => store(s),
            _ => Status::permission_denied(e.to_string()),
        }
    }
}

impl From<SignError> for Status {
    fn from(e: SignError) -> Self {
        match e {
            SignError::BatchTooLarge(_) | SignError::BadAudience => {
                Status::invalid_argument(e.to_string())
            }
            SignError::NotAuthorised { .. }
            | SignError::Withdrawn { .. }
            | SignError::NodeGone(_) => Status::permission_denied(e.to_string()),
            SignError::Ca(c) => ca(c),
            SignError::ShuttingDown => Status::unavailable(e.to_string()),
            SignError::Task(_) => internal("signing", &e),
            SignError::Store(s) => store(s),
            // The journal is down: refuse rather than hand out an unrecorded SVID; the caller
            // retries (Unavailable), as it does for a datastore that is down.
            SignError::Denied(_) => Status::permission_denied(e.to_string()),
            SignError::Audit(_) => {
                tracing::error!(error = %e, "SVID withheld: audit journal unavailable");
                Status::unavailable(e.to_string())
            }
        }
    }
}

impl From<RenewError> for Status {
    fn from(e: RenewError) -> Self {
        match e {
            RenewError::Refused(a) => a.into(),
            RenewError::Sign(s) => s.into(),
            RenewError::Store(s) => store(s),
        }
    }
}

impl From<BundleError> for Status {
    fn from(e: BundleError) -> Self {
        match e {
            BundleError::Store(s) => store(s),
            _ => Status::invalid_argument(e.to_string()),
        }
    }
}

impl From<AttestError> for Status {
    fn from(e: AttestError) -> Self {
        match e {
            AttestError::Malformed(_) => Status::invalid_argument(e.to_string()),
            AttestError::Refused(_) => Status::permission_denied(e.to_string()),
            AttestError::Internal(_) => internal("attestation", &e),
        }
    }
}

impl From<FlowError> for Status {
    fn from(e: FlowError) -> Self {
        use FlowError as F;
        match e {
            F::NoData | F::NoAnswer => Status::deadline_exceeded(e.to_string()),
            F::ClosedBeforeData
            | F::NoParams
            | F::NotEnabled(_)
            | F::Csr(_)
            | F::ClosedBeforeAnswer
            | F::NotAnAnswer => Status::invalid_argument(e.to_string()),
            F::Banned(_) | F::AlreadyAttested(_) => Status::permission_denied(e.to_string()),
            F::Attestor(a) => a.into(),
            F::Stream(s) => s,
            F::Gone => Status::cancelled(e.to_string()),
            F::Sign(s) => s.into(),
            F::Store(s) => store(s),
        }
    }
}

impl From<RevokeError> for Status {
    fn from(e: RevokeError) -> Self {
        use RevokeError as R;
        match e {
            R::BadReason | R::BadTarget | R::TooMany(_) => Status::invalid_argument(e.to_string()),
            R::NoJournal => Status::failed_precondition(e.to_string()),
            R::Unknown { .. } | R::NothingOutstanding(_) => Status::not_found(e.to_string()),
            R::Expired { .. } => Status::failed_precondition(e.to_string()),
            R::AlreadyRevoked { .. } => Status::already_exists(e.to_string()),
            R::Store(s) => store(s),
            R::Audit(_) => Status::unavailable(e.to_string()),
            R::Ca(_) | R::Corrupt(_) => internal("revocation", &e),
        }
    }
}

impl From<crate::deliveries::ReportError> for Status {
    fn from(e: crate::deliveries::ReportError) -> Self {
        match e {
            crate::deliveries::ReportError::TooMany(_) => Status::invalid_argument(e.to_string()),
            crate::deliveries::ReportError::Audit(_) => Status::unavailable(e.to_string()),
        }
    }
}

impl From<StreamEnd> for Status {
    fn from(e: StreamEnd) -> Self {
        match e {
            StreamEnd::NodeGone => Status::permission_denied(e.to_string()),
            StreamEnd::Shutdown | StreamEnd::Behind(_) => Status::unavailable(e.to_string()),
            StreamEnd::AgentGone => Status::cancelled(e.to_string()),
        }
    }
}

impl From<TaskError> for Status {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::Invalid(_) => Status::invalid_argument(e.to_string()),
            TaskError::NoDelegation(_) => Status::permission_denied(e.to_string()),
            TaskError::TooMany { .. } | TaskError::Paused(_) => {
                Status::resource_exhausted(e.to_string())
            }
            TaskError::NotFound(_) => Status::not_found(e.to_string()),
            TaskError::NotActive { .. } | TaskError::NoJournal => {
                Status::failed_precondition(e.to_string())
            }
            TaskError::Sign(s) => s.into(),
            TaskError::Revoke(r) => r.into(),
        }
    }
}

impl From<crate::federation::manage::FederationError> for Status {
    fn from(e: crate::federation::manage::FederationError) -> Self {
        use crate::federation::manage::FederationError as F;
        match e {
            F::Invalid(_) => Status::invalid_argument(e.to_string()),
            F::Exists(_) => Status::already_exists(e.to_string()),
            F::NotFound(_) => Status::not_found(e.to_string()),
            F::FromConfig(_) => Status::failed_precondition(e.to_string()),
            F::Store(s) => store(s),
            F::Bundle(b) => b.into(),
        }
    }
}
