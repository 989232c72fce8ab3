//! The agent's JWT-SVID cache, and the bounds on what a workload may ask for.
//!
//! Invariants:
//! - A token is served from the cache only for the same entry, the same SPIFFE ID and the same
//!   (sorted, de-duplicated) audiences, while more than half of its lifetime remains. Any change
//!   to an entry drops its tokens, so a renamed entry never serves a token with the old `sub`.
//! - The cache is bounded in entries and in bytes; when full, the least recently used tenth is
//!   dropped in one pass (amortised, so an insert does not scan the cache each time).
//! - Audience lists are bounded in count and bytes before anything is cached or signed
//!   ([`check_audiences`]), and cache misses (each a server signature) are rate-limited per caller
//!   UID ([`MintLimiter`]): a local user cannot grow the agent's memory or spend the server's
//!   CPU without bound by inventing audiences.

use std::collections::HashMap;
use std::time::Instant;

use writ_core::SpiffeId;

/// Most audiences in one JWT-SVID request.
pub(crate) const MAX_AUDIENCES: usize = 16;
/// Longest single audience, in bytes.
pub(crate) const MAX_AUDIENCE_BYTES: usize = 512;
/// Most bytes of audiences in one request.
pub(crate) const MAX_AUDIENCES_TOTAL_BYTES: usize = 2048;
/// Most tokens cached.
pub(crate) const MAX_ENTRIES: usize = 8192;
/// Most bytes cached (tokens, audiences and keys).
pub(crate) const MAX_BYTES: usize = 16 * 1024 * 1024;
/// Cache misses allowed per caller UID and second, sustained.
pub(crate) const MINTS_PER_SEC: f64 = 50.0;
/// Cache misses a caller UID may burst.
pub(crate) const MINT_BURST: f64 = 200.0;

/// Why an audience list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AudienceError {
    /// No audience, or an empty one.
    #[error("audience must be specified")]
    Missing,
    /// Too many audiences.
    #[error("too many audiences: {0} (at most {MAX_AUDIENCES})")]
    TooMany(usize),
    /// One audience is too long.
    #[error("audience of {0} bytes is too long (at most {MAX_AUDIENCE_BYTES})")]
    TooLong(usize),
    /// All audiences together are too long.
    #[error("audiences total {0} bytes (at most {MAX_AUDIENCES_TOTAL_BYTES})")]
    TooLarge(usize),
}

/// Checks a request's audiences and returns them sorted and de-duplicated.
pub(crate) fn check_audiences(aud: &[String]) -> Result<Vec<String>, AudienceError> {
    if aud.is_empty() || aud.iter().any(|a| a.is_empty()) {
        return Err(AudienceError::Missing);
    }
    if aud.len() > MAX_AUDIENCES {
        return Err(AudienceError::TooMany(aud.len()));
    }
    if let Some(a) = aud.iter().find(|a| a.len() > MAX_AUDIENCE_BYTES) {
        return Err(AudienceError::TooLong(a.len()));
    }
    let total: usize = aud.iter().map(String::len).sum();
    if total > MAX_AUDIENCES_TOTAL_BYTES {
        return Err(AudienceError::TooLarge(total));
    }
    let mut v = aud.to_vec();
    v.sort();
    v.dedup();
    Ok(v)
}

/// What a cached token is filed under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// The entry it was minted for.
    pub entry_id: String,
    /// The entry's SPIFFE ID when it was minted.
    pub spiffe_id: SpiffeId,
    /// Sorted, de-duplicated audiences.
    pub audiences: Vec<String>,
}

impl Key {
    fn bytes(&self) -> usize {
        self.entry_id.len()
            + self.spiffe_id.as_str().len()
            + self.audiences.iter().map(|a| a.len() + 24).sum::<usize>()
            + 96
    }
}

#[derive(Debug)]
struct Cached {
    token: String,
    issued_at: i64,
    expires_at: i64,
    used: u64,
    bytes: usize,
}

/// JWT-SVIDs by entry, SPIFFE ID and audiences, bounded, least recently used out first.
#[derive(Debug, Default)]
pub(crate) struct JwtCache {
    map: HashMap<Key, Cached>,
    bytes: usize,
    tick: u64,
}

impl JwtCache {
    /// A cached token still in the first half of its life.
    pub(crate) fn get(&mut self, key: &Key, now: i64) -> Option<String> {
        self.tick += 1;
        let c = self.map.get_mut(key)?;
        if now < c.issued_at + (c.expires_at - c.issued_at) / 2 {
            c.used = self.tick;
            Some(c.token.clone())
        } else {
            None
        }
    }

    /// Caches a freshly minted token.
    pub(crate) fn insert(
        &mut self,
        key: Key,
        token: String,
        issued_at: i64,
        expires_at: i64,
        now: i64,
    ) {
        self.tick += 1;
        let bytes = key.bytes() + token.len();
        if let Some(old) = self.map.remove(&key) {
            self.bytes -= old.bytes;
        }
        if self.map.len() >= MAX_ENTRIES || self.bytes + bytes > MAX_BYTES {
            self.evict(now);
        }
        self.bytes += bytes;
        self.map.insert(
            key,
            Cached {
                token,
                issued_at,
                expires_at,
                used: self.tick,
                bytes,
            },
        );
    }

    /// Keeps only the tokens `keep` approves (entries that still exist with the same ID).
    pub(crate) fn retain(&mut self, keep: impl Fn(&Key) -> bool) {
        let bytes = &mut self.bytes;
        self.map.retain(|k, c| {
            let k = keep(k);
            if !k {
                *bytes -= c.bytes;
            }
            k
        });
    }

    /// Expired tokens go first; if that is not enough, the least recently used tenth.
    fn evict(&mut self, now: i64) {
        self.retain_cached(|c| c.expires_at > now);
        if self.map.len() < MAX_ENTRIES * 9 / 10 && self.bytes < MAX_BYTES * 9 / 10 {
            return;
        }
        let mut ticks: Vec<u64> = self.map.values().map(|c| c.used).collect();
        if ticks.is_empty() {
            return;
        }
        let cut = ticks.len() / 10;
        let (_, &mut threshold, _) = ticks.select_nth_unstable(cut);
        self.retain_cached(|c| c.used > threshold);
    }

    fn retain_cached(&mut self, keep: impl Fn(&Cached) -> bool) {
        let bytes = &mut self.bytes;
        self.map.retain(|_, c| {
            let k = keep(c);
            if !k {
                *bytes -= c.bytes;
            }
            k
        });
    }

    /// Tokens cached.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes accounted to cached tokens.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A token bucket per caller UID for JWT-SVID cache misses.
#[derive(Debug, Default)]
pub(crate) struct MintLimiter {
    buckets: HashMap<u32, (f64, Instant)>,
}

impl MintLimiter {
    /// Takes one token for `uid`; false when the caller is over its rate.
    pub(crate) fn allow(&mut self, uid: u32) -> bool {
        let now = Instant::now();
        if self.buckets.len() > 4096 {
            // Full buckets carry no state worth keeping.
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + at.elapsed().as_secs_f64() * MINTS_PER_SEC < MINT_BURST
            });
        }
        let (tokens, at) = self.buckets.entry(uid).or_insert((MINT_BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * MINTS_PER_SEC).min(MINT_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(entry: &str, id: &str, aud: &str) -> Key {
        Key {
            entry_id: entry.into(),
            spiffe_id: SpiffeId::parse(id).unwrap(),
            audiences: vec![aud.into()],
        }
    }

    #[test]
    fn audiences_are_bounded() {
        assert_eq!(check_audiences(&[]), Err(AudienceError::Missing));
        assert_eq!(check_audiences(&["".into()]), Err(AudienceError::Missing));
        let many: Vec<String> = (0..17).map(|i| format!("a{i}")).collect();
        assert_eq!(check_audiences(&many), Err(AudienceError::TooMany(17)));
        assert_eq!(
            check_audiences(&["x".repeat(513)]),
            Err(AudienceError::TooLong(513))
        );
        let big: Vec<String> = (0..5).map(|_| "y".repeat(500)).collect();
        assert_eq!(check_audiences(&big), Err(AudienceError::TooLarge(2500)));
        assert_eq!(
            check_audiences(&["b".into(), "a".into(), "b".into()]).unwrap(),
            vec!["a".to_owned(), "b".to_owned()]
        );
    }

    #[test]
    fn renamed_entry_misses_and_changes_forget() {
        let mut c = JwtCache::default();
        c.insert(key("e1", "spiffe://td/old", "a"), "t1".into(), 0, 100, 0);
        assert_eq!(
            c.get(&key("e1", "spiffe://td/old", "a"), 10).as_deref(),
            Some("t1")
        );
        assert_eq!(c.get(&key("e1", "spiffe://td/new", "a"), 10), None);
        // Past half its life it is not served.
        assert_eq!(c.get(&key("e1", "spiffe://td/old", "a"), 60), None);
        c.retain(|k| k.entry_id != "e1");
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn stays_bounded_and_keeps_recent_tokens() {
        let mut c = JwtCache::default();
        let hot = key("hot", "spiffe://td/hot", "a");
        c.insert(hot.clone(), "hot".into(), 0, 1000, 0);
        for i in 0..(MAX_ENTRIES * 3) {
            c.insert(
                key(&format!("e{i}"), "spiffe://td/w", &format!("aud{i}")),
                "t".repeat(900),
                0,
                1000,
                0,
            );
            if i % 100 == 0 {
                assert!(
                    c.get(&hot, 1).is_some(),
                    "recently used token evicted at {i}"
                );
            }
            assert!(c.len() <= MAX_ENTRIES && c.bytes() <= MAX_BYTES);
        }
        // Byte bound: large tokens.
        let mut c = JwtCache::default();
        for i in 0..2000 {
            c.insert(
                key(&format!("e{i}"), "spiffe://td/w", "a"),
                "t".repeat(64 * 1024),
                0,
                1000,
                0,
            );
            assert!(c.bytes() <= MAX_BYTES, "{} bytes", c.bytes());
        }
    }

    #[test]
    fn limiter_allows_a_burst_then_throttles() {
        let mut l = MintLimiter::default();
        let allowed = (0..1000).filter(|_| l.allow(7)).count();
        assert!((200..=260).contains(&allowed), "{allowed}");
        assert!(l.allow(8), "other uids have their own bucket");
    }
}
