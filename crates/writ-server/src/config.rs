//! The server's TOML config (contract.md). Unknown keys are refused, and every error names the
//! key it is about, so an operator sees one clear line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use writ_ca::KeyType;
use writ_core::TrustDomain;

pub use writ_core::config::ConfigError;
use writ_core::config::{invalid, parse_error};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: String,
    listen: String,
    admin_socket: PathBuf,
    data_dir: PathBuf,
    #[serde(default = "default_x509_ttl")]
    default_x509_svid_ttl: String,
    #[serde(default = "default_jwt_ttl")]
    default_jwt_svid_ttl: String,
    #[serde(default = "default_agent_ttl")]
    agent_svid_ttl: String,
    #[serde(default)]
    jwt_issuer: Option<String>,
    #[serde(default = "default_attest_rate")]
    attestation_rate_per_ip: u32,
    #[serde(default)]
    ca: RawCa,
    #[serde(default)]
    node_attestor: RawNodeAttestors,
    #[serde(default)]
    metrics: Option<RawMetrics>,
}

fn default_x509_ttl() -> String {
    "1h".into()
}
fn default_jwt_ttl() -> String {
    "5m".into()
}
fn default_attest_rate() -> u32 {
    20
}
fn default_agent_ttl() -> String {
    "1h".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    #[serde(default = "default_key_type")]
    key_type: String,
    #[serde(default = "default_ca_ttl")]
    ttl: String,
    #[serde(default)]
    upstream: Option<RawUpstream>,
}

impl Default for RawCa {
    fn default() -> Self {
        RawCa {
            key_type: default_key_type(),
            ttl: default_ca_ttl(),
            upstream: None,
        }
    }
}

fn default_key_type() -> String {
    "ec-p256".into()
}
fn default_ca_ttl() -> String {
    "24h".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    bundle: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeAttestors {
    #[serde(default)]
    join_token: Option<RawJoinToken>,
    #[serde(default)]
    x509pop: Option<RawX509Pop>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJoinToken {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawX509Pop {
    ca_bundle: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

/// The upstream ("disk") authority files.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Upstream CA certificate (and chain).
    pub cert: PathBuf,
    /// Upstream CA key (PKCS#8 PEM).
    pub key: PathBuf,
    /// Roots to publish (default: the last certificate of `cert`).
    pub bundle: Option<PathBuf>,
}

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// Agent-facing gRPC (TLS) address.
    pub listen: SocketAddr,
    /// Operator API socket.
    pub admin_socket: PathBuf,
    /// Datastore and keys.
    pub data_dir: PathBuf,
    /// Default X509-SVID lifetime (seconds).
    pub default_x509_svid_ttl: i64,
    /// Default JWT-SVID lifetime (seconds).
    pub default_jwt_svid_ttl: i64,
    /// Agent SVID lifetime (seconds).
    pub agent_svid_ttl: i64,
    /// `iss` claim of JWT-SVIDs.
    pub jwt_issuer: Option<String>,
    /// Attestations per second allowed from one IP address (burst: five times as many).
    pub attestation_rate_per_ip: u32,
    /// CA key type.
    pub ca_key_type: KeyType,
    /// CA lifetime (seconds).
    pub ca_ttl: i64,
    /// Upstream authority, if any.
    pub upstream: Option<UpstreamConfig>,
    /// join_token attestor enabled.
    pub join_token: bool,
    /// x509pop attestor: the CA bundle node certificates must chain to.
    pub x509pop_ca_bundle: Option<PathBuf>,
    /// Metrics and health endpoint address.
    pub metrics_listen: Option<SocketAddr>,
}

fn secs(key: &'static str, v: &str) -> Result<i64, ConfigError> {
    let d = writ_core::parse_duration(v).map_err(|e| invalid(key, e))?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d.as_secs() as i64)
}

impl ServerConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        writ_core::config::load(path, Self::parse)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| parse_error(text, e.message(), e.span()))?;
        let trust_domain =
            TrustDomain::new(&raw.trust_domain).map_err(|e| invalid("trust_domain", e))?;
        let listen = raw.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("`{}` is not an IP:port address", raw.listen),
            )
        })?;
        if raw.admin_socket.as_os_str().is_empty() || !raw.admin_socket.is_absolute() {
            return Err(invalid("admin_socket", "must be an absolute path"));
        }
        if raw.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let ca_key_type =
            KeyType::parse(&raw.ca.key_type).map_err(|e| invalid("ca.key_type", e))?;
        let ca_ttl = secs("ca.ttl", &raw.ca.ttl)?;
        let default_x509_svid_ttl = secs("default_x509_svid_ttl", &raw.default_x509_svid_ttl)?;
        let default_jwt_svid_ttl = secs("default_jwt_svid_ttl", &raw.default_jwt_svid_ttl)?;
        let agent_svid_ttl = secs("agent_svid_ttl", &raw.agent_svid_ttl)?;
        // Short CA lifetimes are for tests and demos of rotation; production wants hours or days.
        if ca_ttl < 10 {
            return Err(invalid("ca.ttl", "must be at least 10s"));
        }
        if raw.attestation_rate_per_ip == 0 {
            return Err(invalid("attestation_rate_per_ip", "must be at least 1"));
        }
        let metrics_listen = match raw.metrics {
            Some(m) => Some(m.listen.parse().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("`{}` is not an IP:port address", m.listen),
                )
            })?),
            None => None,
        };
        let join_token = raw.node_attestor.join_token.is_some();
        let x509pop_ca_bundle = raw.node_attestor.x509pop.map(|x| x.ca_bundle);
        if !join_token && x509pop_ca_bundle.is_none() {
            return Err(invalid(
                "node_attestor",
                "enable at least one of [node_attestor.join_token] and [node_attestor.x509pop]",
            ));
        }
        Ok(ServerConfig {
            trust_domain,
            listen,
            admin_socket: raw.admin_socket,
            data_dir: raw.data_dir,
            default_x509_svid_ttl,
            default_jwt_svid_ttl,
            agent_svid_ttl,
            jwt_issuer: raw.jwt_issuer,
            attestation_rate_per_ip: raw.attestation_rate_per_ip,
            ca_key_type,
            ca_ttl,
            upstream: raw.ca.upstream.map(|u| UpstreamConfig {
                cert: u.cert,
                key: u.key,
                bundle: u.bundle,
            }),
            join_token,
            x509pop_ca_bundle,
            metrics_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
trust_domain = "example.org"
listen = "127.0.0.1:8081"
admin_socket = "/run/writ/server/admin.sock"
data_dir = "/var/lib/writ/server"
default_x509_svid_ttl = "1h"
default_jwt_svid_ttl = "5m"
[ca]
key_type = "ec-p256"
ttl = "24h"
[node_attestor.join_token]
[node_attestor.x509pop]
ca_bundle = "/etc/writ/node-ca.pem"
"#;

    #[test]
    fn contract_example_parses() {
        let c = ServerConfig::parse(GOOD).unwrap();
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert_eq!(c.default_x509_svid_ttl, 3600);
        assert_eq!(c.ca_ttl, 86_400);
        assert!(c.join_token);
        assert!(c.x509pop_ca_bundle.is_some());
    }

    #[test]
    fn bad_values_name_the_key() {
        for (from, to, key) in [
            ("\"example.org\"", "\"Example.org\"", "trust_domain"),
            ("\"127.0.0.1:8081\"", "\"localhost\"", "listen"),
            ("ttl = \"24h\"", "ttl = \"24\"", "ca.ttl"),
            ("\"ec-p256\"", "\"rsa\"", "ca.key_type"),
            (
                "default_jwt_svid_ttl = \"5m\"",
                "default_jwt_svid_ttl = \"0s\"",
                "default_jwt_svid_ttl",
            ),
            (
                "\"/run/writ/server/admin.sock\"",
                "\"admin.sock\"",
                "admin_socket",
            ),
        ] {
            let text = GOOD.replace(from, to);
            let err = ServerConfig::parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
        let err = ServerConfig::parse(&format!("{GOOD}\nbogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = ServerConfig::parse("trust_domain = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
