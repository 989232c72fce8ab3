//! A policy bundle: the policy files in force, parsed and validated as one unit.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use cedar_policy::{PolicyId, PolicySet, ValidationMode, Validator};
use miette::Diagnostic;

use crate::schema::schema;

/// Largest policy file accepted.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most policies in a bundle.
pub const MAX_POLICIES: usize = 10_000;

/// Why a set of policy files was refused (the set in force, if any, stays).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file cannot be read, or is too large.
    #[error("policy file `{path}`: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A file does not parse.
    #[error("policy file `{path}` does not parse:\n{errors}")]
    Parse {
        /// The file.
        path: String,
        /// Cedar's errors, one per line, with line numbers.
        errors: String,
    },
    /// Policies do not validate against the schema.
    #[error("policies do not validate against the writ schema:\n{errors}")]
    Invalid {
        /// Each error: file, line, policy id and Cedar's message.
        errors: String,
    },
    /// Two policies share an id.
    #[error("policy id `{0}` is used twice")]
    DuplicateId(String),
    /// Too many policies.
    #[error("{0} policies is over the limit of {MAX_POLICIES}")]
    TooMany(usize),
    /// No file given.
    #[error("no policy files (set [policy] files or dir)")]
    Empty,
}

/// Where each policy came from.
#[derive(Debug, Clone)]
struct Origin {
    id: String,
    file: String,
    text_index: usize,
}

/// Validated policies and where they came from.
#[derive(Debug, Clone)]
pub struct PolicyBundle {
    pub(crate) set: PolicySet,
    files: Vec<PathBuf>,
    hash: String,
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The files of `[policy]`: those listed, then `*.cedar` in `dir` in name order.
pub fn policy_files(files: &[PathBuf], dir: Option<&Path>) -> Result<Vec<PathBuf>, PolicyError> {
    let mut out = files.to_vec();
    if let Some(d) = dir {
        let rd = std::fs::read_dir(d).map_err(|e| PolicyError::File {
            path: d.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut found: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
            .collect();
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

impl PolicyBundle {
    /// Reads, parses and validates `files` (in order).
    pub fn load(files: &[PathBuf]) -> Result<Self, PolicyError> {
        let mut sources = Vec::new();
        for path in files {
            let meta = std::fs::metadata(path).map_err(|e| PolicyError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            if meta.len() > MAX_FILE_BYTES {
                return Err(PolicyError::File {
                    path: path.display().to_string(),
                    reason: format!("{} bytes is over the limit of {MAX_FILE_BYTES}", meta.len()),
                });
            }
            let text = std::fs::read_to_string(path).map_err(|e| PolicyError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            sources.push((path.display().to_string(), text));
        }
        let mut b = Self::from_sources(&sources)?;
        b.files = files.to_vec();
        Ok(b)
    }

    /// Parses and validates `(name, text)` sources.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Self, PolicyError> {
        if sources.is_empty() {
            return Err(PolicyError::Empty);
        }
        let mut set = PolicySet::new();
        let mut origins: Vec<Origin> = Vec::new();
        for (i, (name, text)) in sources.iter().enumerate() {
            let parsed: PolicySet =
                text.parse()
                    .map_err(|e: cedar_policy::ParseErrors| PolicyError::Parse {
                        path: name.clone(),
                        errors: diagnostics(&e, text),
                    })?;
            let short = Path::new(name)
                .file_name()
                .map_or_else(|| name.clone(), |f| f.to_string_lossy().into_owned());
            let mut policies: Vec<_> = parsed.policies().collect();
            // Cedar numbers policies in source order (policy0, policy1, ...).
            policies.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse::<usize>()
                    .unwrap_or(usize::MAX)
            });
            for (n, p) in policies.into_iter().enumerate() {
                let id = p
                    .annotation("id")
                    .map_or_else(|| format!("{short}#{n}"), str::to_owned);
                if origins.iter().any(|o| o.id == id) {
                    return Err(PolicyError::DuplicateId(id));
                }
                let renamed = p.new_id(PolicyId::new(&id));
                set.add(renamed)
                    .map_err(|_| PolicyError::DuplicateId(id.clone()))?;
                origins.push(Origin {
                    id,
                    file: name.clone(),
                    text_index: i,
                });
            }
            if origins.len() > MAX_POLICIES {
                return Err(PolicyError::TooMany(origins.len()));
            }
        }
        let result = Validator::new(schema().clone()).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            let mut errors = String::new();
            for e in result.validation_errors() {
                let pid = e.policy_id().to_string();
                let origin = origins.iter().find(|o| o.id == pid);
                let (file, line) = match origin {
                    Some(o) => {
                        let text = &sources[o.text_index].1;
                        let line = e
                            .labels()
                            .and_then(|mut l| l.next())
                            .map(|l| line_of(text, l.offset()));
                        (o.file.clone(), line)
                    }
                    None => ("?".to_owned(), None),
                };
                let _ = match line {
                    Some(l) => writeln!(errors, "  {file}:{l}: policy `{pid}`: {e}"),
                    None => writeln!(errors, "  {file}: policy `{pid}`: {e}"),
                };
            }
            return Err(PolicyError::Invalid { errors });
        }
        let mut canonical = String::new();
        for (name, text) in sources {
            let _ = write!(canonical, "{name}\n{text}\n");
        }
        let hash = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ));
        Ok(PolicyBundle {
            set,
            files: Vec::new(),
            hash,
        })
    }

    /// SHA-256 of the files' names and contents (what `writ policy show` prints).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The files, in load order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.set.policies().count()
    }

    /// Whether the bundle holds no policy (everything is denied then).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Policy ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.set.policies().map(|p| p.id().to_string()).collect();
        v.sort();
        v
    }
}

/// Parse errors with their line numbers, one per line.
fn diagnostics(e: &cedar_policy::ParseErrors, text: &str) -> String {
    let mut out = String::new();
    for err in e.iter() {
        let line = err
            .labels()
            .and_then(|mut l| l.next())
            .map(|l| line_of(text, l.offset()));
        let _ = match line {
            Some(l) => writeln!(out, "  line {l}: {err}"),
            None => writeln!(out, "  {err}"),
        };
    }
    out
}
