//! The `x509pop` node attestor, agent side: the evidence is the node certificate chain (DER,
//! leaf first); the answer to the server's nonce is a signature with the node key over
//! [`writ_proto::X509POP_CONTEXT`] and the nonce. Both files are read at each attestation, so a
//! rotated node certificate is picked up without a restart.

use std::path::PathBuf;

use serde::Deserialize;
use writ_ca::PrivateKey;
use writ_core::config::ConfigError;

use super::{NodeAttestError, NodeAttestorClient};
use crate::plugin::settings;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    cert: PathBuf,
    key: PathBuf,
}

struct X509Pop {
    cert: PathBuf,
    key: PathBuf,
}

pub(super) fn build(table: &toml::Table) -> Result<Box<dyn NodeAttestorClient>, ConfigError> {
    let s: Settings = settings("node_attestor.x509pop", table)?;
    Ok(Box::new(X509Pop {
        cert: s.cert,
        key: s.key,
    }))
}

fn file_err(path: &std::path::Path, reason: impl std::fmt::Display) -> NodeAttestError {
    NodeAttestError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl NodeAttestorClient for X509Pop {
    fn name(&self) -> &'static str {
        "x509pop"
    }

    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        let text = std::fs::read_to_string(&self.cert).map_err(|e| file_err(&self.cert, e))?;
        let chain = writ_core::pem::decode_label(&text, "CERTIFICATE")
            .map_err(|e| file_err(&self.cert, e))?;
        Ok(chain.concat())
    }

    fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        let text = std::fs::read_to_string(&self.key).map_err(|e| file_err(&self.key, e))?;
        let key = PrivateKey::from_pem(&text).map_err(|e| file_err(&self.key, e))?;
        sign_challenge(&key, challenge)
    }
}

/// The x509pop answer: the node key's signature over the context string and the nonce.
pub(super) fn sign_challenge(key: &PrivateKey, nonce: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
    let mut msg = writ_proto::X509POP_CONTEXT.to_vec();
    msg.extend_from_slice(nonce);
    key.sign_asn1(&msg)
        .map_err(|e| NodeAttestError::Challenge(e.to_string()))
}
