//! The agent's TOML config (contract.md). Unknown keys are refused and errors name the key.
//!
//! `server_address` is one `"host:port"` or a list of them (servers of one trust domain that
//! the agent fails over among, see `failover`); either way it is validated here, so
//! the session loop never meets an address it cannot even try.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use writ_core::TrustDomain;

pub use writ_core::config::ConfigError;
use writ_core::config::{invalid, parse_error};

pub use crate::node_attest::NodeAttestorConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    trust_domain: String,
    /// A string or an array of strings: checked by [`server_addresses`].
    server_address: toml::Value,
    socket_path: PathBuf,
    admin_socket: PathBuf,
    data_dir: PathBuf,
    #[serde(default)]
    trust_bundle_path: Option<PathBuf>,
    #[serde(default)]
    node_attestor: toml::Table,
    #[serde(default)]
    workload_attestor: toml::Table,
    #[serde(default)]
    workload_api: RawWorkloadApi,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkloadApi {
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    max_connections_per_uid: Option<usize>,
    #[serde(default)]
    first_request_timeout: Option<String>,
}

/// Validated agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// The first of `server_addresses` (for callers that know one server).
    pub server_address: String,
    /// Servers as `host:port`, in the configured order: at least one, each once.
    pub server_addresses: Vec<String>,
    /// Workload API socket.
    pub socket_path: PathBuf,
    /// Agent admin socket (private).
    pub admin_socket: PathBuf,
    /// Persisted identity and bundle.
    pub data_dir: PathBuf,
    /// Bootstrap trust bundle (PEM), used until the agent has a bundle of its own.
    pub trust_bundle_path: Option<PathBuf>,
    /// The node attestor plugin and its table (`[node_attestor.<name>]`).
    pub node_attestor: NodeAttestorConfig,
    /// Workload attestor plugin tables (`[workload_attestor.<name>]`), validated.
    pub workload_attestors: toml::Table,
    /// Workload API connection limits (`[workload_api]`).
    pub workload_limits: crate::conn::Limits,
}

pub use crate::workload_attest::DEFAULT_MAX_HASH_BYTES;

impl AgentConfig {
    /// Uses `token` as the join token (`writ agent run --join-token`); an error when the
    /// config uses another node attestor.
    pub fn set_join_token(&mut self, token: String) -> Result<(), String> {
        if self.node_attestor.name != "join_token" {
            return Err(format!(
                "--join-token given but the config uses the {} node attestor",
                self.node_attestor.name
            ));
        }
        self.node_attestor
            .table
            .insert("token".into(), toml::Value::String(token));
        Ok(())
    }

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
        let server_addresses = server_addresses(raw.server_address)?;
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
        let node_attestor = NodeAttestorConfig::from_tables(raw.node_attestor)?;
        // Built once here so that a bad table is refused at start (and by `--check`).
        crate::workload_attest::build(&raw.workload_attestor)?;
        let defaults = crate::conn::Limits::default();
        let wa = raw.workload_api;
        let positive = |key: &'static str, v: Option<usize>, d: usize| match v {
            Some(0) => Err(invalid(key, "must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(d),
        };
        let workload_limits = crate::conn::Limits {
            max_connections: positive(
                "workload_api.max_connections",
                wa.max_connections,
                defaults.max_connections,
            )?,
            max_connections_per_uid: positive(
                "workload_api.max_connections_per_uid",
                wa.max_connections_per_uid,
                defaults.max_connections_per_uid,
            )?,
            first_request_timeout: match wa.first_request_timeout {
                None => defaults.first_request_timeout,
                Some(t) => writ_core::duration::parse_duration(&t)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        invalid(
                            "workload_api.first_request_timeout",
                            format!("`{t}` is not a positive duration (30s, 5m, 1h)"),
                        )
                    })?,
            },
        };
        Ok(AgentConfig {
            trust_domain,
            // `server_addresses` is never empty (checked above).
            server_address: server_addresses.first().cloned().unwrap_or_default(),
            server_addresses,
            socket_path: raw.socket_path,
            admin_socket: raw.admin_socket,
            data_dir: raw.data_dir,
            trust_bundle_path: raw.trust_bundle_path,
            node_attestor,
            workload_attestors: raw.workload_attestor,
            workload_limits,
        })
    }
}

/// `server_address`: one `"host:port"` or a non-empty array of them, none twice.
fn server_addresses(v: toml::Value) -> Result<Vec<String>, ConfigError> {
    const KEY: &str = "server_address";
    let list = match v {
        toml::Value::String(s) => vec![s],
        toml::Value::Array(items) if items.is_empty() => {
            return Err(invalid(
                KEY,
                "the list is empty; give at least one \"host:port\"",
            ))
        }
        toml::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                toml::Value::String(s) => Ok(s),
                other => Err(invalid(
                    KEY,
                    format!(
                        "entry {} is not a \"host:port\" string (found {})",
                        i + 1,
                        other.type_str()
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(invalid(
                KEY,
                format!(
                    "must be a \"host:port\" string or an array of them (found {})",
                    other.type_str()
                ),
            ))
        }
    };
    for (i, a) in list.iter().enumerate() {
        if let Err(why) = check_host_port(a) {
            return Err(invalid(KEY, format!("`{a}` is not host:port: {why}")));
        }
        if list[..i].contains(a) {
            return Err(invalid(KEY, format!("`{a}` is listed twice")));
        }
    }
    Ok(list)
}

/// A `host:port` the resolver can take: a non-empty host (a name, an IPv4 address or a
/// bracketed IPv6 address) and a port from 1 to 65535, with nothing else around them.
fn check_host_port(a: &str) -> Result<(), &'static str> {
    let (host, port) = a.rsplit_once(':').ok_or("no `:port`")?;
    if host.is_empty() {
        return Err("no host");
    }
    if port.is_empty()
        || !port.bytes().all(|b| b.is_ascii_digit())
        || port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err("the port must be a number from 1 to 65535");
    }
    if host.contains(['/', '@', '?', '#'])
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("give the host and port alone, without a scheme or path");
    }
    if host.starts_with('[') != host.ends_with(']') {
        return Err("unbalanced brackets around the IPv6 address");
    }
    Ok(())
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
        assert_eq!(c.node_attestor.name, "join_token");
        assert!(c.node_attestor.table.is_empty());
    }

    #[test]
    fn server_address_is_a_string_or_a_list() {
        let one = AgentConfig::parse(GOOD).unwrap();
        assert_eq!(one.server_address, "127.0.0.1:8081");
        assert_eq!(one.server_addresses, ["127.0.0.1:8081"]);
        let list = AgentConfig::parse(&GOOD.replace(
            "\"127.0.0.1:8081\"",
            "[\"writ-1.example.org:8081\", \"10.0.0.2:8081\", \"[fd00::3]:8081\"]",
        ))
        .unwrap();
        assert_eq!(
            list.server_addresses,
            ["writ-1.example.org:8081", "10.0.0.2:8081", "[fd00::3]:8081"]
        );
        assert_eq!(list.server_address, "writ-1.example.org:8081");
        // A list of one is the same as the string.
        let single =
            AgentConfig::parse(&GOOD.replace("\"127.0.0.1:8081\"", "[\"127.0.0.1:8081\"]"))
                .unwrap();
        assert_eq!(single.server_addresses, one.server_addresses);
    }

    #[test]
    fn bad_server_address_lists_name_the_key() {
        for (bad, says) in [
            ("[]", "empty"),
            (
                "[\"127.0.0.1:8081\", 8082]",
                "entry 2 is not a \"host:port\" string (found integer)",
            ),
            (
                "[\"127.0.0.1:8081\", \"nowhere\"]",
                "`nowhere` is not host:port",
            ),
            (
                "[\"a:1\", [\"b:2\"]]",
                "entry 2 is not a \"host:port\" string (found array)",
            ),
            ("[\"a:1\", \"a:1\"]", "listed twice"),
            ("8081", "(found integer)"),
            ("{ host = \"a\" }", "(found table)"),
            ("\"\"", "is not host:port"),
            ("\":8081\"", "no host"),
            ("\"host:\"", "port"),
            ("\"host:0\"", "port"),
            ("\"host:65536\"", "port"),
            ("\"host:+81\"", "port"),
            ("\"https://host:8081\"", "without a scheme"),
            ("\"[::1:8081\"", "brackets"),
        ] {
            let err = AgentConfig::parse(&GOOD.replace("\"127.0.0.1:8081\"", bad))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("server_address") && err.contains(says),
                "{bad}: {err} should name server_address and say {says}"
            );
        }
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
            (
                "[node_attestor.join_token]",
                "[node_attestor.bogus]",
                "node_attestor.bogus",
            ),
            (
                "[node_attestor.join_token]",
                "[node_attestor.x509pop]\ncert = \"/c.pem\"",
                "node_attestor.x509pop",
            ),
            (
                "[workload_attestor.unix]",
                "[workload_attestor.unix]\nmax_hash_bytes = \"big\"",
                "workload_attestor.unix",
            ),
            (
                "[workload_attestor.unix]",
                "[workload_attestor.docker]",
                "workload_attestor.docker",
            ),
        ] {
            let err = AgentConfig::parse(&GOOD.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }
}
