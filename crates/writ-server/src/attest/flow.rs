//! The attestation exchange on one `Attest` stream: params (attestor, evidence, CSR), the
//! attestor's verdict (possibly after one challenge round), then the node record and the agent
//! SVID.
//!
//! Invariants: each step has [`ATTEST_STEP_TIMEOUT`]; the CSR is checked before any evidence is
//! consumed (a join token is single use); the node record is written in one compare-and-swap,
//! so a ban (or another attestation of a node that cannot re-attest) that landed since the check
//! wins.

use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use writ_ca::MintedSvid;
use writ_core::{AttestedNode, SpiffeId};
use writ_proto::v1 as pb;
use writ_store::{NodeUpdate, StoreError};

use super::{AttestError, Step};
use crate::signing::SignError;
use crate::state::ServerState;

/// How long an agent has to send its first attestation message, and then to answer the
/// challenge. An Attest stream holds a task and a stream slot; without these bounds a client
/// that opens streams and sends nothing kept them forever.
pub(crate) const ATTEST_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an attestation exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FlowError {
    /// Nothing arrived in time.
    #[error("no attestation data within {}s", ATTEST_STEP_TIMEOUT.as_secs())]
    NoData,
    /// No challenge answer in time.
    #[error("no answer to the attestation challenge")]
    NoAnswer,
    /// The agent closed its side first.
    #[error("attestation stream closed before any data")]
    ClosedBeforeData,
    /// The first message is not params.
    #[error("first attestation message must carry params")]
    NoParams,
    /// The attestor named is not configured.
    #[error("node attestor `{0}` is not enabled on this server")]
    NotEnabled(String),
    /// The CSR is not usable.
    #[error("csr: {0}")]
    Csr(#[source] writ_ca::CaError),
    /// The agent closed its side before answering.
    #[error("attestation stream closed before the challenge answer")]
    ClosedBeforeAnswer,
    /// The second message is not an answer.
    #[error("expected a challenge response")]
    NotAnAnswer,
    /// The attestor refused or failed.
    #[error(transparent)]
    Attestor(#[from] AttestError),
    /// The node is banned.
    #[error("agent `{0}` is banned")]
    Banned(SpiffeId),
    /// The node exists and its attestor cannot attest it again (join tokens are single use).
    #[error("agent `{0}` is already attested and this attestor cannot re-attest")]
    AlreadyAttested(SpiffeId),
    /// The agent's stream failed.
    #[error(transparent)]
    Stream(#[from] Status),
    /// The agent stopped listening.
    #[error("agent went away")]
    Gone,
    /// The agent SVID was not signed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs one attestation exchange (a challenge, if any, is sent on `tx`); returns the agent's ID
/// and its SVID, recorded in the node record.
pub(crate) async fn attest(
    st: &ServerState,
    mut inbound: Streaming<pb::AttestRequest>,
    tx: &mpsc::Sender<Result<pb::AttestResponse, Status>>,
) -> Result<(SpiffeId, MintedSvid), FlowError> {
    let first = tokio::time::timeout(ATTEST_STEP_TIMEOUT, inbound.message())
        .await
        .map_err(|_| FlowError::NoData)??
        .ok_or(FlowError::ClosedBeforeData)?;
    let Some(pb::attest_request::Step::Params(params)) = first.step else {
        return Err(FlowError::NoParams);
    };
    let attestor = st
        .attestors
        .get(&params.attestor)
        .ok_or_else(|| FlowError::NotEnabled(params.attestor.clone()))?;
    // Check the CSR before anything is consumed (a join token is single use).
    writ_ca::x509::csr_public_key(&params.csr).map_err(FlowError::Csr)?;
    let now = writ_core::now_unix();
    let attested = match attestor.start(&params.payload, now)? {
        Step::Done(a) => a,
        Step::Challenge { challenge, pending } => {
            tx.send(Ok(pb::AttestResponse {
                step: Some(pb::attest_response::Step::Challenge(challenge)),
            }))
            .await
            .map_err(|_| FlowError::Gone)?;
            let msg = tokio::time::timeout(ATTEST_STEP_TIMEOUT, inbound.message())
                .await
                .map_err(|_| FlowError::NoAnswer)??
                .ok_or(FlowError::ClosedBeforeAnswer)?;
            let Some(pb::attest_request::Step::ChallengeResponse(resp)) = msg.step else {
                return Err(FlowError::NotAnAnswer);
            };
            pending.verify(&resp)?
        }
    };
    if let Some(n) = st.store.get_node(&attested.agent_id)? {
        if n.banned {
            return Err(FlowError::Banned(n.spiffe_id));
        }
        if !attested.can_reattest {
            return Err(FlowError::AlreadyAttested(n.spiffe_id));
        }
    }
    let svid = st.mint_from_csr(&params.csr, &attested.agent_id, st.cfg.agent_svid_ttl, &[])?;
    // Record the node in one atomic read-modify-write: a ban (or another attestation of a node
    // that cannot re-attest) that landed since the check above wins.
    let mut refusal = None;
    let mut stored = None;
    let can_reattest = attested.can_reattest;
    st.store.update_node(&attested.agent_id, &mut |cur| {
        refusal = None;
        stored = None;
        match cur {
            Some(n) if n.banned => {
                refusal = Some(FlowError::Banned(n.spiffe_id.clone()));
                NodeUpdate::Keep
            }
            Some(n) if !can_reattest => {
                refusal = Some(FlowError::AlreadyAttested(n.spiffe_id.clone()));
                NodeUpdate::Keep
            }
            _ => {
                let n = AttestedNode {
                    spiffe_id: attested.agent_id.clone(),
                    attestor: attestor.name().to_owned(),
                    selectors: attested.selectors.clone(),
                    cert_serial: svid.serial_hex.clone(),
                    cert_not_after: svid.not_after,
                    prev_cert_serial: String::new(),
                    aliases: attested.aliases.clone(),
                    banned: false,
                    created_at: cur.map_or(now, |n| n.created_at),
                    revision: 0,
                };
                stored = Some(n.clone());
                NodeUpdate::Put(n)
            }
        }
    })?;
    if let Some(r) = refusal {
        return Err(r);
    }
    if let Some(n) = &stored {
        st.audit
            .record(vec![crate::audit::events::node_attested(n)])
            .await
            .map_err(SignError::from)?;
    }
    tracing::info!(agent = %attested.agent_id, attestor = attestor.name(), "agent attested");
    Ok((attested.agent_id, svid))
}
