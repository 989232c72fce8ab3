//! What the server's plugin catalogs share: a plugin's config table, its catalog entry, and
//! picking plugins out of the `[<kind>.<name>]` tables of the config.
//!
//! Every plugin reads its own table into its own settings type (unknown keys refused), and errors
//! name the table (`node_attestor.x509pop`). A table is checked when the config is parsed (so
//! `writ server run --check` catches it) and read again when the plugin is built at start, which
//! is also when files it names are read.

use serde::de::DeserializeOwned;
use writ_core::config::{invalid, ConfigError};

/// A configured plugin: its name and its table.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The plugin's name (`sled`, `disk`, `x509pop`, ...).
    pub name: String,
    /// Its table.
    pub table: toml::Table,
}

/// One plugin of a catalog: its name, the check of its table, and `B`, how it is built.
pub(crate) struct Plugin<B> {
    /// The name configs use.
    pub(crate) name: &'static str,
    /// Validates the table without reading files (at config parse).
    pub(crate) check: fn(&str, &toml::Table) -> Result<(), ConfigError>,
    /// Builds the plugin (at start).
    pub(crate) build: B,
}

/// Reads a plugin's `[<kind>.<name>]` table into its settings type; errors name the table.
pub(crate) fn settings<T: DeserializeOwned>(
    key: &str,
    table: &toml::Table,
) -> Result<T, ConfigError> {
    T::deserialize(toml::Value::Table(table.clone())).map_err(|e| invalid(key, e.message()))
}

/// A [`Plugin::check`] that deserializes the table into `T`.
pub(crate) fn check<T: DeserializeOwned>(
    key: &str,
    table: &toml::Table,
) -> Result<(), ConfigError> {
    settings::<T>(key, table).map(|_| ())
}

/// The plugin `c` names in `catalog`, if there is one.
pub(crate) fn find<'a, B>(
    kind: &str,
    catalog: &'a [Plugin<B>],
    c: &PluginConfig,
) -> Result<&'a Plugin<B>, ConfigError> {
    catalog.iter().find(|p| p.name == c.name).ok_or_else(|| {
        invalid(
            format!("{kind}.{}", c.name),
            format!("unknown {kind}; known: {}", names(catalog)),
        )
    })
}

fn names<B>(catalog: &[Plugin<B>]) -> String {
    catalog
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every `[<kind>.<name>]` table of `tables`, each known to `catalog` and checked.
pub(crate) fn configured<B>(
    kind: &str,
    catalog: &[Plugin<B>],
    tables: toml::Table,
) -> Result<Vec<PluginConfig>, ConfigError> {
    tables
        .into_iter()
        .map(|(name, v)| {
            let toml::Value::Table(table) = v else {
                return Err(invalid(format!("{kind}.{name}"), "must be a table"));
            };
            let c = PluginConfig { name, table };
            (find(kind, catalog, &c)?.check)(&format!("{kind}.{}", c.name), &c.table)?;
            Ok(c)
        })
        .collect()
}

/// At most one `[<kind>.<name>]` table (`default`, with an empty table, when there is none).
pub(crate) fn at_most_one<B>(
    kind: &str,
    catalog: &[Plugin<B>],
    tables: toml::Table,
    default: Option<&str>,
) -> Result<Option<PluginConfig>, ConfigError> {
    let mut all = configured(kind, catalog, tables)?;
    if all.len() > 1 {
        return Err(invalid(
            kind,
            format!("configure one {kind}, not several ({})", {
                let n: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
                n.join(", ")
            }),
        ));
    }
    Ok(all.pop().or_else(|| {
        default.map(|d| PluginConfig {
            name: d.to_owned(),
            table: toml::Table::new(),
        })
    }))
}
