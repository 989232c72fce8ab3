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
use writ_store::{SledStore, Store};

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
        check: postgres_not_built,
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

const NOT_BUILT: &str = "the postgres datastore is not built yet; use [store.sled] (the default)";

fn postgres_not_built(key: &str, _: &toml::Table) -> Result<(), ConfigError> {
    Err(invalid(key, NOT_BUILT))
}

fn postgres(_: &ServerConfig, _: &toml::Table) -> Result<Arc<dyn Store>, ServerError> {
    Err(invalid("store.postgres", NOT_BUILT).into())
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
