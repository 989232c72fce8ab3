//! The agent's TOML config (contract.md). Unknown keys are refused and errors name the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use writ_core::TrustDomain;

pub use writ_core::config::ConfigError;
use writ_core::config::{invalid, parse_error};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    trust_domain: String,
    server_address: String,
    socket_path: PathBuf,
    admin_socket: PathBuf,
    data_dir: PathBuf,
    #[serde(default)]
    trust_bundle_path: Option<PathBuf>,
    #[serde(default)]
    node_attestor: RawNodeAttestor,
    #[serde(default)]
    workload_attestor: RawWorkloadAttestor,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeAttestor {
    #[serde(default)]
    join_token: Option<RawJoinToken>,
    #[serde(default)]
    x509pop: Option<RawX509Pop>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJoinToken {
    #[serde(default)]
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawX509Pop {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkloadAttestor {
    #[serde(default)]
    unix: Option<RawUnix>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnix {
    /// Largest binary hashed for `unix:sha256`.
    #[serde(default)]
    max_hash_bytes: Option<u64>,
}

/// How the agent attests its node.
#[derive(Debug, Clone)]
pub enum NodeAttestation {
    /// A join token (from config or `--join-token`).
    JoinToken(Option<String>),
    /// x509 proof of possession with these files.
    X509Pop {
        /// Node certificate chain (PEM).
        cert: PathBuf,
        /// Node key (PKCS#8 PEM).
        key: PathBuf,
    },
}

/// Validated agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// Server `host:port`.
    pub server_address: String,
    /// Workload API socket.
    pub socket_path: PathBuf,
    /// Agent admin socket (private).
    pub admin_socket: PathBuf,
    /// Persisted identity and bundle.
    pub data_dir: PathBuf,
    /// Bootstrap trust bundle (PEM), used until the agent has a bundle of its own.
    pub trust_bundle_path: Option<PathBuf>,
    /// Node attestation method.
    pub node_attestation: NodeAttestation,
    /// Unix workload attestor: largest binary hashed for `unix:sha256`.
    pub unix_max_hash_bytes: u64,
}

/// Default bound on binaries hashed for `unix:sha256` (256 MiB).
pub const DEFAULT_MAX_HASH_BYTES: u64 = 256 * 1024 * 1024;

impl AgentConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        writ_core::config::load(path, Self::parse)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: Raw =
            toml::from_str(text).map_err(|e| parse_error(text, e.message(), e.span()))?;
        let trust_domain =
            TrustDomain::new(&raw.trust_domain).map_err(|e| invalid("trust_domain", e))?;
        if raw.server_address.is_empty() || !raw.server_address.contains(':') {
            return Err(invalid(
                "server_address",
                format!("`{}` is not host:port", raw.server_address),
            ));
        }
        for (key, p) in [
            ("socket_path", &raw.socket_path),
            ("admin_socket", &raw.admin_socket),
        ] {
            if !p.is_absolute() {
                return Err(invalid(key, "must be an absolute path"));
            }
        }
        if raw.socket_path.parent() == raw.admin_socket.parent() {
            return Err(invalid(
                "admin_socket",
                "must not be in the same directory as the Workload API socket",
            ));
        }
        let node_attestation = match (raw.node_attestor.join_token, raw.node_attestor.x509pop) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "node_attestor",
                    "configure either join_token or x509pop, not both",
                ))
            }
            (Some(j), None) => NodeAttestation::JoinToken(j.token),
            (None, Some(x)) => NodeAttestation::X509Pop {
                cert: x.cert,
                key: x.key,
            },
            (None, None) => {
                return Err(invalid(
                    "node_attestor",
                    "configure [node_attestor.join_token] or [node_attestor.x509pop]",
                ))
            }
        };
        let unix = raw.workload_attestor.unix.unwrap_or_default();
        Ok(AgentConfig {
            trust_domain,
            server_address: raw.server_address,
            socket_path: raw.socket_path,
            admin_socket: raw.admin_socket,
            data_dir: raw.data_dir,
            trust_bundle_path: raw.trust_bundle_path,
            node_attestation,
            unix_max_hash_bytes: unix.max_hash_bytes.unwrap_or(DEFAULT_MAX_HASH_BYTES),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
trust_domain = "example.org"
server_address = "127.0.0.1:8081"
socket_path = "/run/writ/agent/public/api.sock"
admin_socket = "/run/writ/agent/private/admin.sock"
data_dir = "/var/lib/writ/agent"
trust_bundle_path = "/etc/writ/bootstrap.pem"
[node_attestor.join_token]
[workload_attestor.unix]
"#;

    #[test]
    fn contract_example_parses() {
        let c = AgentConfig::parse(GOOD).unwrap();
        assert!(matches!(
            c.node_attestation,
            NodeAttestation::JoinToken(None)
        ));
        assert_eq!(c.unix_max_hash_bytes, DEFAULT_MAX_HASH_BYTES);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (from, to, key) in [
            ("\"example.org\"", "\"EXAMPLE\"", "trust_domain"),
            ("\"127.0.0.1:8081\"", "\"nowhere\"", "server_address"),
            (
                "\"/run/writ/agent/public/api.sock\"",
                "\"api.sock\"",
                "socket_path",
            ),
            (
                "/run/writ/agent/private/admin.sock",
                "/run/writ/agent/public/admin.sock",
                "admin_socket",
            ),
            ("[node_attestor.join_token]", "", "node_attestor"),
        ] {
            let err = AgentConfig::parse(&GOOD.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }
}
