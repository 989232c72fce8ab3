//! Authentication of agents on every mTLS call.
//!
//! The TLS handshake already verified the client certificate chain against the trust bundle.
//! The edge layer (`grpc::edge`) reads the peer's leaf once per call into a [`PeerSvid`] and
//! hands it to [`ServerState::authenticate`]: the leaf must name a known, unbanned node and be
//! that node's current SVID, or the previous one until the agent first uses the current one
//! (which then clears the previous). The result, a [`Caller`], travels with the request.

use writ_ca::svid::{parse_leaf, LeafSvid, SvidError};
use writ_core::{AttestedNode, SpiffeId};
use writ_store::{NodeUpdate, StoreError};

use crate::state::ServerState;

/// Why a caller is not authenticated (or, for renewal, may not renew).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// No client certificate.
    #[error("this method needs the agent's SVID as client certificate")]
    NoCertificate,
    /// The client certificate is not an X509-SVID.
    #[error(transparent)]
    NotAnSvid(#[from] SvidError),
    /// No such node (never attested, or evicted).
    #[error("agent `{0}` is not attested (unknown or evicted)")]
    Unknown(SpiffeId),
    /// The node is banned.
    #[error("agent `{0}` is banned")]
    Banned(SpiffeId),
    /// The SVID is neither the node's current nor its previous one.
    #[error("agent `{0}` presented an SVID that is no longer current")]
    NotCurrent(SpiffeId),
    /// The node was evicted while the call was checked.
    #[error("agent `{0}` was evicted")]
    Evicted(SpiffeId),
    /// The node was banned or renewed while the call was checked.
    #[error("agent `{0}` was banned or renewed meanwhile")]
    ChangedMeanwhile(SpiffeId),
    /// Renewal with the previous SVID.
    #[error("agent `{0}` can renew only with its current SVID")]
    RenewWithPrevious(SpiffeId),
    /// The node record vanished during renewal.
    #[error("agent record vanished during renewal")]
    Vanished,
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The client certificate of a call, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct PeerSvid(LeafSvid);

impl PeerSvid {
    /// Parses the leaf of the peer's chain (`None`: no client certificate).
    pub(crate) fn from_chain<C: AsRef<[u8]>>(chain: Option<&[C]>) -> Result<Self, AuthError> {
        let leaf = chain
            .and_then(|c| c.first())
            .ok_or(AuthError::NoCertificate)?;
        Ok(PeerSvid(parse_leaf(leaf.as_ref())?))
    }
}

/// An authenticated agent: its node record and the serial of the SVID it presented.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The node record as read (or updated) during authentication.
    pub(crate) node: AttestedNode,
    /// The serial (hex) of the SVID presented.
    pub(crate) serial: String,
}

impl ServerState {
    /// Authenticates the agent presenting `peer` (see the module docs).
    pub(crate) fn authenticate(&self, peer: &PeerSvid) -> Result<Caller, AuthError> {
        let id = &peer.0.spiffe_id;
        let serial = &peer.0.serial_hex;
        let node = self
            .store
            .get_node(id)?
            .ok_or_else(|| AuthError::Unknown(id.clone()))?;
        if node.banned {
            return Err(AuthError::Banned(id.clone()));
        }
        if serial.is_empty() || (*serial != node.cert_serial && *serial != node.prev_cert_serial) {
            return Err(AuthError::NotCurrent(id.clone()));
        }
        if *serial == node.cert_serial && !node.prev_cert_serial.is_empty() {
            // The agent uses its renewed SVID: from now on the previous one is refused. Only
            // if the record still names this serial (a racing renewal or ban wins).
            let node = self
                .store
                .update_node(id, &mut |cur| match cur {
                    Some(n) if n.cert_serial == *serial && !n.prev_cert_serial.is_empty() => {
                        NodeUpdate::Put(AttestedNode {
                            prev_cert_serial: String::new(),
                            ..n.clone()
                        })
                    }
                    _ => NodeUpdate::Keep,
                })?
                .ok_or_else(|| AuthError::Evicted(id.clone()))?;
            if node.banned || node.cert_serial != *serial {
                return Err(AuthError::ChangedMeanwhile(id.clone()));
            }
            return Ok(Caller {
                node,
                serial: serial.clone(),
            });
        }
        Ok(Caller {
            node,
            serial: serial.clone(),
        })
    }
}
