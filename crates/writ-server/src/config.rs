//! The server's TOML config (contract.md). Unknown keys are refused, and every error names the
//! key it is about, so an operator sees one clear line.
//!
//! Plugins (`[node_attestor.<name>]`, `[store.<name>]`, `[key_manager.<name>]`,
//! `[upstream_authority.<name>]`) are kept as their tables: each plugin reads its own (see
//! [`crate::plugin`]); here they are only checked against their catalogs. `[ca.upstream]`, the
//! older spelling of `[upstream_authority.disk]`, keeps working.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use writ_ca::KeyType;
use writ_core::TrustDomain;

pub use crate::plugin::PluginConfig;
pub use writ_core::config::ConfigError;
use writ_core::config::{invalid, parse_error};

use crate::plugin::{at_most_one, configured, find};
use crate::{attest, plugins};

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
    node_attestor: toml::Table,
    #[serde(default)]
    store: toml::Table,
    #[serde(default)]
    key_manager: toml::Table,
    #[serde(default)]
    upstream_authority: toml::Table,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default = "default_max_agent_connections")]
    max_agent_connections: usize,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    governance: Option<crate::governance::RawGovernance>,
    #[serde(default)]
    policy: Option<RawPolicy>,
    #[serde(default)]
    oidc: Option<crate::oidc::RawOidc>,
    #[serde(default)]
    federation: crate::federation::RawFederation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    files: Vec<PathBuf>,
    #[serde(default)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default = "yes")]
    enabled: bool,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit { enabled: true }
    }
}

fn yes() -> bool {
    true
}

fn default_max_agent_connections() -> usize {
    16_384
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
    /// The older spelling of `[upstream_authority.disk]`.
    #[serde(default)]
    upstream: Option<toml::Table>,
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
struct RawMetrics {
    listen: String,
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
    /// Enabled node attestors (`[node_attestor.<name>]`), at least one.
    pub node_attestors: Vec<PluginConfig>,
    /// The datastore (`[store.<name>]`, default `sled`).
    pub store: PluginConfig,
    /// Where CA keys live (`[key_manager.<name>]`, default `disk`).
    pub key_manager: PluginConfig,
    /// The authority above writ's CA, if any (`[upstream_authority.<name>]` or `[ca.upstream]`).
    pub upstream_authority: Option<PluginConfig>,
    /// Metrics and health endpoint address.
    pub metrics_listen: Option<SocketAddr>,
    /// Most agent-facing connections open at once (`max_agent_connections`, default 16384);
    /// past it new connections wait in the listen backlog. Keep it under the process's
    /// descriptor limit (`LimitNOFILE=` in the systemd unit).
    pub max_agent_connections: usize,
    /// `[audit] enabled`: keep the audit journal (default true; off only to measure its cost).
    pub audit_enabled: bool,
    /// `[governance]`: owner, purpose and lifetime rules for entries; break-glass limits.
    pub governance: crate::governance::Governance,
    /// `[policy]`: Cedar policy files decided at every mint (none: every match is issued).
    pub policy: Option<crate::policy::PolicySource>,
    /// `[oidc]`: OIDC discovery for JWT-SVIDs (its issuer is also `jwt_issuer`).
    pub oidc: Option<crate::oidc::OidcConfig>,
    /// `[federation]`: the bundle endpoint and the trust domains federated with.
    pub federation: crate::federation::Federation,
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
        if raw.max_agent_connections == 0 || raw.max_agent_connections > 1 << 20 {
            return Err(invalid(
                "max_agent_connections",
                "must be between 1 and 1048576",
            ));
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
        let node_attestors = configured("node_attestor", attest::CATALOG, raw.node_attestor)?;
        if node_attestors.is_empty() {
            return Err(invalid(
                "node_attestor",
                format!(
                    "enable at least one of {}",
                    attest::CATALOG
                        .iter()
                        .map(|p| format!("[node_attestor.{}]", p.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let store = at_most_one("store", plugins::STORES, raw.store, Some("sled"))?;
        let key_manager = at_most_one(
            "key_manager",
            plugins::KEY_MANAGERS,
            raw.key_manager,
            Some("disk"),
        )?;
        let mut upstream_authority = at_most_one(
            "upstream_authority",
            plugins::UPSTREAM_AUTHORITIES,
            raw.upstream_authority,
            None,
        )?;
        if let Some(table) = raw.ca.upstream {
            if upstream_authority.is_some() {
                return Err(invalid(
                    "ca.upstream",
                    "configure [ca.upstream] or [upstream_authority.<name>], not both",
                ));
            }
            let disk = PluginConfig {
                name: "disk".into(),
                table,
            };
            (find("upstream_authority", plugins::UPSTREAM_AUTHORITIES, &disk)?.check)(
                "ca.upstream",
                &disk.table,
            )?;
            upstream_authority = Some(disk);
        }
        let oidc = raw
            .oidc
            .map(|o| o.validate(raw.jwt_issuer.as_deref()))
            .transpose()?;
        let federation = raw.federation.validate(&trust_domain)?;
        Ok(ServerConfig {
            trust_domain,
            listen,
            admin_socket: raw.admin_socket,
            data_dir: raw.data_dir,
            default_x509_svid_ttl,
            default_jwt_svid_ttl,
            agent_svid_ttl,
            // The discovery issuer and the tokens' `iss` are one value.
            jwt_issuer: oidc.as_ref().map(|o| o.issuer.clone()).or(raw.jwt_issuer),
            attestation_rate_per_ip: raw.attestation_rate_per_ip,
            ca_key_type,
            ca_ttl,
            node_attestors,
            store: store.unwrap_or_else(|| PluginConfig {
                name: "sled".into(),
                table: toml::Table::new(),
            }),
            key_manager: key_manager.unwrap_or_else(|| PluginConfig {
                name: "disk".into(),
                table: toml::Table::new(),
            }),
            upstream_authority,
            metrics_listen,
            max_agent_connections: raw.max_agent_connections,
            audit_enabled: raw.audit.enabled,
            policy: match raw.policy {
                None => None,
                Some(p) if p.files.is_empty() && p.dir.is_none() => {
                    return Err(invalid(
                        "policy",
                        "set `files` or `dir` (or remove [policy])",
                    ))
                }
                Some(p) => Some(crate::policy::PolicySource {
                    files: p.files,
                    dir: p.dir,
                }),
            },
            governance: raw
                .governance
                .map(|g| g.validate())
                .transpose()?
                .unwrap_or_default(),
            oidc,
            federation,
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
        let names: Vec<&str> = c.node_attestors.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["join_token", "x509pop"]);
        assert_eq!(
            (c.store.name.as_str(), c.key_manager.name.as_str()),
            ("sled", "disk")
        );
        assert!(c.upstream_authority.is_none());
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

    #[test]
    fn plugins_read_their_own_tables_and_errors_name_them() {
        let base = GOOD.replace(
            "[node_attestor.x509pop]\nca_bundle = \"/etc/writ/node-ca.pem\"\n",
            "",
        );
        for (extra, key) in [
            (
                "[node_attestor.x509pop]\nca_bundel = \"/x\"\n",
                "node_attestor.x509pop",
            ),
            ("[node_attestor.bogus]\n", "node_attestor.bogus"),
            (
                "[store.postgres]\nurl = \"postgres://x\"\npasword_file = \"/p\"\n",
                "store.postgres",
            ),
            ("[store.sled]\npath = \"/x\"\n", "store.sled"),
            ("[key_manager.hsm]\n", "key_manager.hsm"),
            (
                "[upstream_authority.disk]\ncert = \"/c.pem\"\n",
                "upstream_authority.disk",
            ),
            (
                "[ca.upstream]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nbogus = 1\n",
                "ca.upstream",
            ),
        ] {
            let err = ServerConfig::parse(&format!("{base}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
        let err = ServerConfig::parse(&format!("{base}[store.postgres]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("store.postgres") && err.contains("url"),
            "{err}"
        );
        let err = ServerConfig::parse(&format!("{base}[store.postgres]\nurl = \" \"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.postgres.url"), "{err}");
        let err = ServerConfig::parse(&base.replace("[node_attestor.join_token]\n", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[node_attestor.x509pop]"), "{err}");
    }

    #[test]
    fn ca_upstream_is_the_disk_upstream_authority() {
        let disk = "cert = \"/c.pem\"\nkey = \"/k.pem\"\n";
        let legacy = format!("{GOOD}[ca.upstream]\n{disk}");
        let new = format!("{GOOD}[upstream_authority.disk]\n{disk}");
        let a = ServerConfig::parse(&legacy)
            .unwrap()
            .upstream_authority
            .unwrap();
        let b = ServerConfig::parse(&new)
            .unwrap()
            .upstream_authority
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.name, "disk");
        let both = format!("{legacy}[upstream_authority.disk]\n{disk}");
        let err = ServerConfig::parse(&both).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
    }
}
