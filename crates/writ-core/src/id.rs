//! SPIFFE IDs and trust domains (spiffe-requirements.md section 1).
//!
//! Both types are "parse, don't validate": the only way to get one is through a parser that enforces
//! every rule of the SPIFFE ID standard, so code that holds a [`SpiffeId`] never re-checks it. Input
//! is rejected, never normalised: normalising paths was the root of CVE-2021-27099 elsewhere.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest SPIFFE ID accepted, in bytes.
pub const MAX_ID_LEN: usize = 2048;
/// Longest trust domain name accepted, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The input was empty.
    #[error("spiffe id is empty")]
    Empty,
    /// The input does not start with `spiffe://` (scheme is case-sensitive).
    #[error("`{0}` does not start with `spiffe://`")]
    WrongScheme(String),
    /// `spiffe://` followed by nothing or by `/`.
    #[error("`{0}` has an empty trust domain")]
    EmptyTrustDomain(String),
    /// A character outside `a-z 0-9 . - _` in the trust domain (this covers ports, userinfo,
    /// upper case, IPv6 literals and percent-encoding).
    #[error("trust domain of `{input}` has invalid character `{ch}` (allowed: a-z 0-9 . - _)")]
    BadTrustDomainChar {
        /// The whole input.
        input: String,
        /// The offending character.
        ch: char,
    },
    /// More than 255 bytes of trust domain.
    #[error("trust domain of `{0}` is longer than 255 bytes")]
    TrustDomainTooLong(String),
    /// A character outside `a-zA-Z0-9 . - _` in a path segment (this covers `?`, `#` and `%`).
    #[error("path of `{input}` has invalid character `{ch}` (allowed: a-z A-Z 0-9 . - _)")]
    BadPathChar {
        /// The whole input.
        input: String,
        /// The offending character.
        ch: char,
    },
    /// `//` in the path, or a trailing `/`.
    #[error("path of `{0}` has an empty segment (`//` or a trailing `/`)")]
    EmptySegment(String),
    /// A `.` or `..` segment.
    #[error("path of `{0}` has a `.` or `..` segment")]
    DotSegment(String),
    /// Longer than [`MAX_ID_LEN`].
    #[error("spiffe id is longer than 2048 bytes ({0} bytes)")]
    TooLong(usize),
    /// A workload ID was needed but the ID has no path.
    #[error("`{0}` has no path; a workload or agent id needs one")]
    NoPath(String),
    /// A path given on its own does not start with `/`.
    #[error("path `{0}` must start with `/`")]
    RelativePath(String),
    /// A trust-domain-only ID was needed but the ID has a path.
    #[error("`{0}` has a path; a trust domain id has none")]
    HasPath(String),
}

/// A SPIFFE trust domain name, such as `example.org`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a trust domain ID
    /// (`spiffe://example.org`).
    pub fn new(s: &str) -> Result<Self, IdError> {
        if let Some(rest) = s.strip_prefix(SCHEME) {
            let id = SpiffeId::parse(s)?;
            if !id.path().is_empty() {
                return Err(IdError::HasPath(s.to_owned()));
            }
            debug_assert_eq!(rest, id.trust_domain().as_str());
            return Ok(id.trust_domain());
        }
        if s.is_empty() {
            return Err(IdError::EmptyTrustDomain(s.to_owned()));
        }
        if s.contains("://") {
            return Err(IdError::WrongScheme(s.to_owned()));
        }
        check_trust_domain(s, s)?;
        Ok(TrustDomain(s.to_owned()))
    }

    /// The name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<name>` (the key used in Workload API bundle maps).
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }

    /// Builds a workload ID in this trust domain from a path such as `/ns/prod/web`.
    pub fn id(&self, path: &str) -> Result<SpiffeId, IdError> {
        if !path.is_empty() && !path.starts_with('/') {
            return Err(IdError::RelativePath(path.to_owned()));
        }
        SpiffeId::parse(&format!("{SCHEME}{}{path}", self.0))
    }
}

fn check_trust_domain(input: &str, td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::EmptyTrustDomain(input.to_owned()));
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong(input.to_owned()));
    }
    if let Some(ch) = td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(IdError::BadTrustDomainChar {
            input: input.to_owned(),
            ch,
        });
    }
    Ok(())
}

fn check_path(input: &str, path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` always starts with '/', so the first split item is the empty string before it.
    for segment in path.split('/').skip(1) {
        if segment.is_empty() {
            return Err(IdError::EmptySegment(input.to_owned()));
        }
        if segment == "." || segment == ".." {
            return Err(IdError::DotSegment(input.to_owned()));
        }
        if let Some(ch) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(IdError::BadPathChar {
                input: input.to_owned(),
                ch,
            });
        }
    }
    Ok(())
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<TrustDomain> for String {
    fn from(td: TrustDomain) -> String {
        td.0
    }
}

/// A SPIFFE ID: `spiffe://<trust domain>[/<path>]`, canonical by construction.
///
/// The text is shared (`Arc<str>`): a clone costs a reference count, not a copy, so the many
/// places that hold the same ID (an entry's parent, the SVID cached for it, index keys) can
/// share one allocation. Equality, ordering and hashing are those of the text.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct SpiffeId {
    id: Arc<str>,
    /// Byte offset where the path starts (== id.len() when there is no path). IDs are at most
    /// `MAX_ID_LEN` bytes, so this fits.
    path_start: u32,
}

impl SpiffeId {
    /// Parses a SPIFFE ID, rejecting (never normalising) anything the standard forbids.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(s.len()));
        }
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdError::WrongScheme(s.to_owned()))?;
        let td_end = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_end);
        check_trust_domain(s, td)?;
        check_path(s, path)?;
        Ok(SpiffeId {
            id: Arc::from(s),
            // s.len() <= MAX_ID_LEN was checked above.
            path_start: (SCHEME.len() + td_end) as u32,
        })
    }

    /// Parses an ID that must have a path (workloads, agents).
    pub fn parse_workload(s: &str) -> Result<Self, IdError> {
        let id = Self::parse(s)?;
        if id.path().is_empty() {
            return Err(IdError::NoPath(s.to_owned()));
        }
        Ok(id)
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The trust domain part, borrowed.
    pub fn trust_domain_str(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start as usize]
    }

    /// The path, `""` or starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[self.path_start as usize..]
    }

    /// Whether `self` belongs to trust domain `td`.
    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_str() == td.as_str()
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Parsed straight from the input's text when the decoder can lend it (JSON without
/// escapes): no intermediate `String` per ID, which showed in loading a million entries.
impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SpiffeId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SPIFFE ID")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<SpiffeId, E> {
                SpiffeId::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/ns/prod/web",
            "spiffe://a_b-c.d/A.b-C_d/...x/..a/.b",
            "spiffe://td/UPPER/Case",
        ] {
            let id = SpiffeId::parse(s).unwrap();
            assert_eq!(id.as_str(), s);
            assert_eq!(id.to_string(), s);
        }
        let id = SpiffeId::parse("spiffe://example.org/ns/prod").unwrap();
        assert_eq!(id.trust_domain_str(), "example.org");
        assert_eq!(id.path(), "/ns/prod");
        assert_eq!(SpiffeId::parse("spiffe://example.org").unwrap().path(), "");
    }

    /// Every reject vector listed in spiffe-requirements.md section 1, plus a few more.
    #[test]
    fn rejects_every_listed_vector() {
        let vectors = [
            ("spiffe://td/a/../b", "DotSegment"),
            ("spiffe://td/a/./b", "DotSegment"),
            ("spiffe://td/..", "DotSegment"),
            ("spiffe://td/a//b", "EmptySegment"),
            ("spiffe://td/a/", "EmptySegment"),
            ("spiffe://td/", "EmptySegment"),
            ("spiffe://td/%41", "BadPathChar"),
            ("spiffe://u@td/x", "BadTrustDomainChar"),
            ("spiffe://td:1/x", "BadTrustDomainChar"),
            ("spiffe://td/x?q", "BadPathChar"),
            ("spiffe://td/x#f", "BadPathChar"),
            ("spiffe://td?q", "BadTrustDomainChar"),
            ("spiffe:///x", "EmptyTrustDomain"),
            ("spiffe://", "EmptyTrustDomain"),
            ("http://td/x", "WrongScheme"),
            ("spiffe://td/a~", "BadPathChar"),
            ("spiffe://[::1]/x", "BadTrustDomainChar"),
            ("SPIFFE://td/x", "WrongScheme"),
            ("spiffe://TD/x", "BadTrustDomainChar"),
            ("spiffe://td%41/x", "BadTrustDomainChar"),
            ("spiffe:td/x", "WrongScheme"),
            ("", "Empty"),
            ("spiffe://td/caf\u{e9}", "BadPathChar"),
            ("spiffe://td/a b", "BadPathChar"),
        ];
        for (input, kind) in vectors {
            let err = SpiffeId::parse(input).expect_err(input);
            let dbg = format!("{err:?}");
            assert!(dbg.starts_with(kind), "{input}: expected {kind}, got {dbg}");
            // The message names the problem; for non-empty input it quotes the input.
            if !input.is_empty() {
                assert!(err.to_string().contains(input), "{input}: {err}");
            }
        }
    }

    #[test]
    fn length_limits() {
        let td = "a".repeat(255);
        assert!(SpiffeId::parse(&format!("spiffe://{td}/x")).is_ok());
        let td = "a".repeat(256);
        assert!(matches!(
            SpiffeId::parse(&format!("spiffe://{td}/x")),
            Err(IdError::TrustDomainTooLong(_))
        ));
        let ok = format!("spiffe://td{}/bb", "/a".repeat(1017));
        assert_eq!(ok.len(), 2048);
        assert!(SpiffeId::parse(&ok).is_ok());
        let long = format!("{ok}b");
        assert_eq!(SpiffeId::parse(&long), Err(IdError::TooLong(2049)));
    }

    #[test]
    fn trust_domain_parsing() {
        assert_eq!(
            TrustDomain::new("example.org").unwrap().as_str(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org").unwrap().as_str(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("example.org").unwrap().id_string(),
            "spiffe://example.org"
        );
        assert!(matches!(
            TrustDomain::new("spiffe://example.org/x"),
            Err(IdError::HasPath(_))
        ));
        assert!(TrustDomain::new("Example.org").is_err());
        assert!(TrustDomain::new("").is_err());
        assert!(TrustDomain::new("http://x").is_err());
        assert!(TrustDomain::new("td:443").is_err());
    }

    #[test]
    fn workload_ids_need_a_path() {
        assert!(matches!(
            SpiffeId::parse_workload("spiffe://example.org"),
            Err(IdError::NoPath(_))
        ));
        let td = TrustDomain::new("example.org").unwrap();
        let id = td.id("/web").unwrap();
        assert!(id.is_member_of(&td));
        assert!(td.id("web").is_err());
    }

    #[test]
    fn serde_rejects_invalid() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://td/x\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"spiffe://td/x\"");
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/../x\"").is_err());
        assert!(serde_json::from_str::<TrustDomain>("\"TD\"").is_err());
    }
}
