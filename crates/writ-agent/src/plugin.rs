//! What every plugin catalog of the agent shares: reading a plugin's own config table.

use writ_core::config::{invalid, ConfigError};

/// Reads a plugin's `[<kind>.<name>]` table into its settings type; errors name the table.
pub(crate) fn settings<T: serde::de::DeserializeOwned>(
    key: &str,
    table: &toml::Table,
) -> Result<T, ConfigError> {
    T::deserialize(toml::Value::Table(table.clone())).map_err(|e| invalid(key, e.message()))
}
