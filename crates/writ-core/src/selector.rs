//! Selectors: `type:value` facts about a node or a workload (`unix:uid:1000`, `x509pop:subject:cn:web`).
//!
//! The type is everything before the first `:`; the value is the rest and may itself contain `:`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest selector value accepted, in bytes.
pub const MAX_SELECTOR_VALUE_LEN: usize = 1024;

/// Why a string is not a selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// No `:` between type and value.
    #[error("selector `{0}` is not of the form type:value")]
    MissingColon(String),
    /// The type part is empty or uses characters other than `a-z 0-9 _ -`.
    #[error("selector type `{0}` is invalid (allowed: a-z 0-9 _ -, not empty)")]
    BadType(String),
    /// The value is empty.
    #[error("selector `{0}` has an empty value")]
    EmptyValue(String),
    /// The value holds a control character.
    #[error("selector value of `{0}` contains a control character")]
    ControlChar(String),
    /// The value is too long.
    #[error("selector value is longer than 1024 bytes ({0} bytes)")]
    TooLong(usize),
}

/// A validated selector.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "SelectorParts")]
pub struct Selector {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

#[derive(Deserialize)]
struct SelectorParts {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

impl TryFrom<SelectorParts> for Selector {
    type Error = SelectorError;
    fn try_from(p: SelectorParts) -> Result<Self, Self::Error> {
        Selector::new(&p.kind, &p.value)
    }
}

impl Selector {
    /// Builds a selector from its two parts.
    pub fn new(kind: &str, value: &str) -> Result<Self, SelectorError> {
        if kind.is_empty()
            || !kind
                .chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        {
            return Err(SelectorError::BadType(kind.to_owned()));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(format!("{kind}:")));
        }
        if value.len() > MAX_SELECTOR_VALUE_LEN {
            return Err(SelectorError::TooLong(value.len()));
        }
        if value.chars().any(char::is_control) {
            return Err(SelectorError::ControlChar(format!("{kind}:{value}")));
        }
        Ok(Selector {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }

    /// Parses `type:value`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| SelectorError::MissingColon(s.to_owned()))?;
        Self::new(kind, value)
    }

    /// The type, e.g. `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The value, e.g. `uid:1000`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selector({}:{})", self.kind, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Whether every selector of `required` is in `have` (how entries match callers).
pub fn is_subset(required: &[Selector], have: &[Selector]) -> bool {
    required.iter().all(|r| have.contains(r))
}

#[cfg(test)]
#[allow(clippy::cloned_ref_to_slice_refs)]
mod tests {
    use super::*;

    #[test]
    fn value_may_contain_colons() {
        let s = Selector::parse("x509pop:subject:cn:web:1").unwrap();
        assert_eq!(s.kind(), "x509pop");
        assert_eq!(s.value(), "subject:cn:web:1");
        assert_eq!(s.to_string(), "x509pop:subject:cn:web:1");
    }

    #[test]
    fn rejects_bad_selectors() {
        assert!(matches!(
            Selector::parse("unix"),
            Err(SelectorError::MissingColon(_))
        ));
        assert!(matches!(
            Selector::parse(":x"),
            Err(SelectorError::BadType(_))
        ));
        assert!(matches!(
            Selector::parse("Unix:x"),
            Err(SelectorError::BadType(_))
        ));
        assert!(matches!(
            Selector::parse("unix:"),
            Err(SelectorError::EmptyValue(_))
        ));
        assert!(matches!(
            Selector::parse("unix:a\nb"),
            Err(SelectorError::ControlChar(_))
        ));
        let long = format!("unix:{}", "a".repeat(1025));
        assert!(matches!(
            Selector::parse(&long),
            Err(SelectorError::TooLong(1025))
        ));
    }

    #[test]
    fn json_shape() {
        let s = Selector::parse("unix:uid:1000").unwrap();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"type":"unix","value":"uid:1000"}"#);
        assert_eq!(serde_json::from_str::<Selector>(&j).unwrap(), s);
        assert!(serde_json::from_str::<Selector>(r#"{"type":"","value":"x"}"#).is_err());
    }

    #[test]
    fn subset_matching() {
        let a = Selector::parse("unix:uid:1").unwrap();
        let b = Selector::parse("unix:gid:2").unwrap();
        assert!(is_subset(&[a.clone()], &[a.clone(), b.clone()]));
        assert!(!is_subset(&[a.clone(), b.clone()], &[a]));
    }
}
