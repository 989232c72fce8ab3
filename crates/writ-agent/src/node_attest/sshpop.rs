//! The `sshpop` node attestor, agent side: the evidence is the node's SSH host certificate; the
//! answer to the server's nonce is a signature with the host key over
//! [`writ_proto::SSHPOP_CONTEXT`] and the nonce. Both files are read at each attestation, so a
//! renewed host certificate is picked up without a restart. The host key must be an
//! unencrypted Ed25519 or ECDSA key (RSA host keys are refused with a clear error).

use std::path::PathBuf;

use serde::Deserialize;
use writ_ca::ssh::{Certificate, PrivateKey};
use writ_core::config::ConfigError;

use super::{NodeAttestError, NodeAttestorClient};
use crate::plugin::settings;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    host_key_path: PathBuf,
    host_cert_path: PathBuf,
}

struct SshPop {
    key: PathBuf,
    cert: PathBuf,
}

pub(super) fn build(table: &toml::Table) -> Result<Box<dyn NodeAttestorClient>, ConfigError> {
    let s: Settings = settings("node_attestor.sshpop", table)?;
    Ok(Box::new(SshPop {
        key: s.host_key_path,
        cert: s.host_cert_path,
    }))
}

fn file_err(path: &std::path::Path, reason: impl std::fmt::Display) -> NodeAttestError {
    NodeAttestError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl NodeAttestorClient for SshPop {
    fn name(&self) -> &'static str {
        "sshpop"
    }

    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        let text = std::fs::read_to_string(&self.cert).map_err(|e| file_err(&self.cert, e))?;
        Certificate::from_openssh(&text).map_err(|e| file_err(&self.cert, e))
    }

    fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        let text = std::fs::read_to_string(&self.key).map_err(|e| file_err(&self.key, e))?;
        let key = PrivateKey::from_openssh(&text).map_err(|e| file_err(&self.key, e))?;
        let mut msg = writ_proto::SSHPOP_CONTEXT.to_vec();
        msg.extend_from_slice(challenge);
        key.sign(&msg)
            .map_err(|e| NodeAttestError::Challenge(e.to_string()))
    }
}
