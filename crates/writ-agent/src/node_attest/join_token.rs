//! The `join_token` node attestor, agent side: the evidence is the token itself (single use,
//! from `token = "..."` or `writ agent run --join-token`).

use serde::Deserialize;
use writ_core::config::ConfigError;

use super::{NodeAttestError, NodeAttestorClient};
use crate::plugin::settings;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    token: Option<String>,
}

struct JoinToken {
    token: Option<String>,
}

pub(super) fn build(table: &toml::Table) -> Result<Box<dyn NodeAttestorClient>, ConfigError> {
    let s: Settings = settings("node_attestor.join_token", table)?;
    Ok(Box::new(JoinToken { token: s.token }))
}

impl NodeAttestorClient for JoinToken {
    fn name(&self) -> &'static str {
        "join_token"
    }

    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        self.token
            .as_ref()
            .map(|t| t.as_bytes().to_vec())
            .ok_or_else(|| {
                NodeAttestError::Missing(
                    "no join token: pass --join-token or set node_attestor.join_token.token".into(),
                )
            })
    }

    fn set_join_token(&mut self, token: String) -> Result<(), String> {
        self.token = Some(token);
        Ok(())
    }
}
