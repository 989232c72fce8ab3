//! The error type shared by the server's and the agent's config files: every problem names the
//! file or the key, in one line.

/// A config problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config `{path}`: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type or an unknown key.
    #[error("config `{path}`: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value that parses but is not acceptable.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The key (dotted for keys of tables: `node_attestor.x509pop`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// An [`ConfigError::Invalid`] for `key`.
pub fn invalid(key: impl Into<String>, message: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.to_string(),
    }
}

/// A parse error with the line the parser pointed at (`span` is a byte range of `text`).
pub fn parse_error(text: &str, message: &str, span: Option<std::ops::Range<usize>>) -> ConfigError {
    let line = span
        .map(|r| {
            format!(
                " (line {})",
                text[..r.start.min(text.len())].lines().count().max(1)
            )
        })
        .unwrap_or_default();
    ConfigError::Parse {
        path: String::new(),
        message: format!("{message}{line}"),
    }
}

/// Reads `path` and runs `parse` on its text, putting the path into parse errors.
pub fn load<T>(
    path: &std::path::Path,
    parse: impl FnOnce(&str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        ConfigError::Parse { message, .. } => ConfigError::Parse {
            path: path.display().to_string(),
            message,
        },
        other => other,
    })
}
