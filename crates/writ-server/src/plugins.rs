//! The catalogs of the server's plug points other than node attestors (those are in `attest/`):
//! datastores (`[store.<name>]`), key managers (`[key_manager.<name>]`) and upstream authorities
//! (`[upstream_authority.<name>]`). Adding one is an implementation of the trait (`Store`,
//! `KeyManager`, `UpstreamAuthority`), its settings type and one line in its catalog here.
//!
//! Built in: `sled` (the default datastore, in `<data_dir>/datastore`), `disk` keys (the
//! default, in `<data_dir>/keys`), the `disk` upstream authority (`cert`, `key`, optional
//! `bundle`). `postgres` is reserved by contract.md and refused until it is built.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use writ_ca::{DiskKeyManager, DiskUpstreamAuthority, KeyManager, UpstreamAuthority};
use writ_core::config::{invalid, ConfigError};
use writ_store::{PgSettings, PgStore, SledStore, Store};

use crate::config::ServerConfig;
use crate::plugin::{check, find, settings, Plugin};
use crate::run::ServerError;

/// Builds a datastore.
pub(crate) type BuildStore = fn(&ServerConfig, &toml::Table) -> Result<Arc<dyn Store>, ServerError>;
/// Builds a key manager.
pub(crate) type BuildKeys =
    fn(&ServerConfig, &toml::Table) -> Result<Arc<dyn KeyManager>, ServerError>;
/// Builds an upstream authority.
pub(crate) type BuildUpstream =
    fn(&ServerConfig, &toml::Table) -> Result<Arc<dyn UpstreamAuthority>, ServerError>;

/// Datastores.
pub(crate) const STORES: &[Plugin<BuildStore>] = &[
    Plugin {
        name: "sled",
        check: check::<NoSettings>,
        build: sled,
    },
    Plugin {
        name: "postgres",
        check: check_postgres,
        build: postgres,
    },
];

/// Key managers.
pub(crate) const KEY_MANAGERS: &[Plugin<BuildKeys>] = &[Plugin {
    name: "disk",
    check: check::<NoSettings>,
    build: disk_keys,
}];

/// Upstream authorities.
pub(crate) const UPSTREAM_AUTHORITIES: &[Plugin<BuildUpstream>] = &[Plugin {
    name: "disk",
    check: check::<DiskUpstreamSettings>,
    build: disk_upstream,
}];

/// A plugin without settings (an empty table; any key is refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

fn sled(cfg: &ServerConfig, _: &toml::Table) -> Result<Arc<dyn Store>, ServerError> {
    Ok(Arc::new(SledStore::open(cfg.data_dir.join("datastore"))?))
}

/// `[store.postgres]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresSettings {
    /// `postgres://user@host:port/dbname?...` (or the key=value form). A password in it works
    /// but lands in the config file: prefer `password_file`.
    url: String,
    /// A file holding the password (one line).
    #[serde(default)]
    password_file: Option<PathBuf>,
    /// PEM CA certificates the database's TLS certificate must chain to; set, connections
    /// use TLS and verify the server (name and chain); unset, they are plain.
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

fn check_postgres(key: &str, table: &toml::Table) -> Result<(), ConfigError> {
    let s: PostgresSettings = settings(key, table)?;
    if s.url.trim().is_empty() {
        return Err(invalid(format!("{key}.url"), "is empty"));
    }
    Ok(())
}

/// This server's name among those sharing a database: made once, kept in `data_dir`.
fn instance_name(cfg: &ServerConfig) -> Result<String, ServerError> {
    let path = cfg.data_dir.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::Io {
                what: format!("cannot read `{}`", path.display()),
                source,
            })
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    std::fs::write(&path, format!("{id}\n")).map_err(|source| ServerError::Io {
        what: format!("cannot write `{}`", path.display()),
        source,
    })?;
    Ok(id)
}

fn postgres(cfg: &ServerConfig, table: &toml::Table) -> Result<Arc<dyn Store>, ServerError> {
    let s: PostgresSettings = settings("store.postgres", table)?;
    let password = match &s.password_file {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                invalid(
                    "store.postgres.password_file",
                    format!("cannot read `{}`: {e}", p.display()),
                )
            })?;
            let pw = text.trim_end_matches(['\n', '\r']).to_owned();
            if pw.is_empty() || pw.contains('\n') {
                return Err(invalid(
                    "store.postgres.password_file",
                    format!("`{}` must hold the password on one line", p.display()),
                )
                .into());
            }
            Some(pw)
        }
    };
    let ca_pem = match &s.ca_file {
        None => None,
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
            invalid(
                "store.postgres.ca_file",
                format!("cannot read `{}`: {e}", p.display()),
            )
        })?),
    };
    Ok(Arc::new(PgStore::open(PgSettings {
        url: s.url,
        password,
        instance: instance_name(cfg)?,
        ca_pem,
    })?))
}

fn disk_keys(cfg: &ServerConfig, _: &toml::Table) -> Result<Arc<dyn KeyManager>, ServerError> {
    Ok(Arc::new(DiskKeyManager::open(cfg.data_dir.join("keys"))?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskUpstreamSettings {
    /// The upstream CA certificate, then optionally the chain above it (PEM).
    cert: PathBuf,
    /// Its key (PKCS#8 PEM).
    key: PathBuf,
    /// Roots to publish (default: the last certificate of `cert`).
    #[serde(default)]
    bundle: Option<PathBuf>,
}

fn disk_upstream(
    _: &ServerConfig,
    table: &toml::Table,
) -> Result<Arc<dyn UpstreamAuthority>, ServerError> {
    let s: DiskUpstreamSettings = settings("upstream_authority.disk", table)?;
    Ok(Arc::new(DiskUpstreamAuthority::load(
        &s.cert,
        &s.key,
        s.bundle.as_deref(),
    )?))
}

/// The configured datastore.
pub(crate) fn store(cfg: &ServerConfig) -> Result<Arc<dyn Store>, ServerError> {
    let c = &cfg.store;
    (find("store", STORES, c)?.build)(cfg, &c.table)
}

/// The configured key manager.
pub(crate) fn key_manager(cfg: &ServerConfig) -> Result<Arc<dyn KeyManager>, ServerError> {
    let c = &cfg.key_manager;
    (find("key_manager", KEY_MANAGERS, c)?.build)(cfg, &c.table)
}

/// The configured upstream authority, if any.
pub(crate) fn upstream_authority(
    cfg: &ServerConfig,
) -> Result<Option<Arc<dyn UpstreamAuthority>>, ServerError> {
    cfg.upstream_authority
        .as_ref()
        .map(|c| (find("upstream_authority", UPSTREAM_AUTHORITIES, c)?.build)(cfg, &c.table))
        .transpose()
}
