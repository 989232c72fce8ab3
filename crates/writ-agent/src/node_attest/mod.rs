//! Node attestation, agent side: the [`NodeAttestorClient`] trait and the catalog of plugins.
//!
//! A plugin turns its `[node_attestor.<name>]` config table into a client that produces the
//! evidence sent first and answers the server's challenge, if the server sends one. Adding a
//! node attestor is one module here and one line in [`CATALOG`] (the server side has its own
//! catalog in `writ-server`).

mod join_token;
mod sshpop;
mod x509pop;

use writ_core::config::{invalid, ConfigError};

/// Why evidence could not be produced or a challenge answered.
#[derive(Debug, thiserror::Error)]
pub enum NodeAttestError {
    /// Evidence that should be configured is not (no join token, say).
    #[error("{0}")]
    Missing(String),
    /// A file of the plugin's config cannot be read or parsed.
    #[error("cannot read `{path}`: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The server sent a challenge this attestor does not expect or cannot answer.
    #[error("cannot answer the server's challenge: {0}")]
    Challenge(String),
}

/// The agent side of a node attestor.
pub trait NodeAttestorClient: Send + Sync {
    /// The attestor's name (the server must have the same one enabled).
    fn name(&self) -> &'static str;
    /// The evidence sent first (read afresh for every attestation: files may have rotated).
    fn payload(&self) -> Result<Vec<u8>, NodeAttestError>;
    /// The answer to the server's challenge.
    fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        let _ = challenge;
        Err(NodeAttestError::Challenge(format!(
            "the {} attestor expects no challenge",
            self.name()
        )))
    }
    /// Sets the join token given on the command line; attestors other than `join_token`
    /// refuse it.
    fn set_join_token(&mut self, _token: String) -> Result<(), String> {
        Err(format!(
            "--join-token given but the config uses the {} node attestor",
            self.name()
        ))
    }
}

/// A reference to an attestor is an attestor (so callers can pass `&*arc` or a value).
impl<T: NodeAttestorClient + ?Sized> NodeAttestorClient for &T {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        (**self).payload()
    }
    fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        (**self).answer(challenge)
    }
}

/// Evidence held in memory rather than read from configured files (tests, benchmarks and
/// programs that embed the node client).
#[derive(Clone, Copy)]
pub enum Evidence<'a> {
    /// A join token.
    JoinToken(&'a str),
    /// An x509pop node certificate chain (DER, leaf first) and its key.
    X509Pop {
        /// Chain, leaf first.
        chain: &'a [Vec<u8>],
        /// The node key.
        key: &'a writ_ca::PrivateKey,
    },
}

impl NodeAttestorClient for Evidence<'_> {
    fn name(&self) -> &'static str {
        match self {
            Evidence::JoinToken(_) => "join_token",
            Evidence::X509Pop { .. } => "x509pop",
        }
    }

    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        Ok(match self {
            Evidence::JoinToken(t) => t.as_bytes().to_vec(),
            Evidence::X509Pop { chain, .. } => chain.concat(),
        })
    }

    fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        match self {
            Evidence::JoinToken(_) => Err(NodeAttestError::Challenge(
                "the join_token attestor expects no challenge".into(),
            )),
            Evidence::X509Pop { key, .. } => x509pop::sign_challenge(key, challenge),
        }
    }
}

/// Builds a plugin from its config table.
type Build = fn(&toml::Table) -> Result<Box<dyn NodeAttestorClient>, ConfigError>;

/// Every node attestor the agent knows, by name.
const CATALOG: &[(&str, Build)] = &[
    ("join_token", join_token::build),
    ("x509pop", x509pop::build),
    ("sshpop", sshpop::build),
];

/// The configured node attestor: exactly one `[node_attestor.<name>]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeAttestorConfig {
    /// Plugin name.
    pub name: String,
    /// Its table.
    pub table: toml::Table,
}

impl NodeAttestorConfig {
    /// Picks the one configured attestor out of the `[node_attestor]` table.
    pub(crate) fn from_tables(tables: toml::Table) -> Result<Self, ConfigError> {
        let mut it = tables.into_iter();
        let (name, table) = match (it.next(), it.next()) {
            (Some(one), None) => one,
            (None, _) => {
                return Err(invalid(
                    "node_attestor",
                    format!("configure one of {}", names("[node_attestor.", "]")),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "node_attestor",
                    "configure exactly one node attestor, not several",
                ))
            }
        };
        let table = match table {
            toml::Value::Table(t) => t,
            _ => return Err(invalid(format!("node_attestor.{name}"), "must be a table")),
        };
        let c = NodeAttestorConfig { name, table };
        // Validate now, so `--check` and start-up catch a bad table.
        c.build()?;
        Ok(c)
    }

    /// Builds the plugin.
    pub fn build(&self) -> Result<Box<dyn NodeAttestorClient>, ConfigError> {
        let (_, build) = CATALOG
            .iter()
            .find(|(n, _)| *n == self.name)
            .ok_or_else(|| {
                invalid(
                    format!("node_attestor.{}", self.name),
                    format!("unknown node attestor; known: {}", names("", "")),
                )
            })?;
        build(&self.table)
    }
}

fn names(pre: &str, post: &str) -> String {
    CATALOG
        .iter()
        .map(|(n, _)| format!("{pre}{n}{post}"))
        .collect::<Vec<_>>()
        .join(", ")
}
