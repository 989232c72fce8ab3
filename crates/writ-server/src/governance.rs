//! Governance of entries at creation: ownership, purpose and end fixed when an entry is made
//! (`[governance]`), and break-glass, the one way around those rules, which is short-lived and
//! loud.
//!
//! Rules (applied by the registry to every created or updated entry):
//! - `require_owner` / `require_purpose`: the field must be non-empty;
//! - `max_entry_lifetime`: an entry without `expires_at` gets `now + max`; a later one is
//!   refused;
//! - break-glass entries skip the owner and purpose rules, must carry a reason, and end at most
//!   `break_glass_max_lifetime` from now (an entry without `expires_at` gets exactly that).

use serde::Deserialize;
use writ_core::config::{invalid, ConfigError};
use writ_core::Entry;

/// `[governance]` as written in the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGovernance {
    #[serde(default)]
    require_owner: bool,
    #[serde(default)]
    require_purpose: bool,
    #[serde(default)]
    max_entry_lifetime: Option<String>,
    #[serde(default)]
    break_glass_max_lifetime: Option<String>,
}

/// Validated governance settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Governance {
    /// Entries must name an owner.
    pub require_owner: bool,
    /// Entries must state a purpose.
    pub require_purpose: bool,
    /// Longest entry lifetime (seconds), if capped.
    pub max_entry_lifetime: Option<i64>,
    /// Longest break-glass entry lifetime (seconds; default one hour).
    pub break_glass_max_lifetime: i64,
}

impl Default for Governance {
    fn default() -> Self {
        Governance {
            require_owner: false,
            require_purpose: false,
            max_entry_lifetime: None,
            break_glass_max_lifetime: 3600,
        }
    }
}

fn secs(key: &str, v: &str) -> Result<i64, ConfigError> {
    let d = writ_core::parse_duration(v).map_err(|e| invalid(key, e))?;
    let s = d.as_secs() as i64;
    if s <= 0 {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(s)
}

impl RawGovernance {
    /// Validates the table.
    pub(crate) fn validate(self) -> Result<Governance, ConfigError> {
        Ok(Governance {
            require_owner: self.require_owner,
            require_purpose: self.require_purpose,
            max_entry_lifetime: self
                .max_entry_lifetime
                .map(|v| secs("governance.max_entry_lifetime", &v))
                .transpose()?,
            break_glass_max_lifetime: self
                .break_glass_max_lifetime
                .map(|v| secs("governance.break_glass_max_lifetime", &v))
                .transpose()?
                .unwrap_or(3600),
        })
    }
}

/// Why governance refused an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GovernanceError {
    /// No owner although one is required.
    #[error("owner is required ([governance] require_owner); pass --owner")]
    NoOwner,
    /// No purpose although one is required.
    #[error("purpose is required ([governance] require_purpose); pass --purpose")]
    NoPurpose,
    /// Ends too late.
    #[error("expires_at is {over} s past the longest {what} lifetime of {max} s")]
    TooLong {
        /// `entry` or `break-glass entry`.
        what: &'static str,
        /// Seconds over.
        over: i64,
        /// The cap.
        max: i64,
    },
    /// Break-glass without a reason.
    #[error("a break-glass entry needs a reason (--reason)")]
    NoReason,
    /// A reason without break-glass.
    #[error("break_glass_reason is only for break-glass entries")]
    ReasonWithoutBreakGlass,
    /// Already expired.
    #[error("expires_at is in the past")]
    Expired,
}

impl Governance {
    /// Applies the rules to `e` at `now`, filling in `expires_at` where a cap applies.
    pub(crate) fn apply(&self, e: &mut Entry, now: i64) -> Result<(), GovernanceError> {
        if let Some(t) = e.expires_at {
            if t <= now {
                return Err(GovernanceError::Expired);
            }
        }
        if e.break_glass {
            if e.break_glass_reason.trim().is_empty() {
                return Err(GovernanceError::NoReason);
            }
            return cap(e, now, self.break_glass_max_lifetime, "break-glass entry");
        }
        if !e.break_glass_reason.is_empty() {
            return Err(GovernanceError::ReasonWithoutBreakGlass);
        }
        if self.require_owner && e.owner.trim().is_empty() {
            return Err(GovernanceError::NoOwner);
        }
        if self.require_purpose && e.purpose.trim().is_empty() {
            return Err(GovernanceError::NoPurpose);
        }
        match self.max_entry_lifetime {
            Some(max) => cap(e, now, max, "entry"),
            None => Ok(()),
        }
    }
}

fn cap(e: &mut Entry, now: i64, max: i64, what: &'static str) -> Result<(), GovernanceError> {
    match e.expires_at {
        None => {
            e.expires_at = Some(now + max);
            Ok(())
        }
        Some(t) if t > now + max => Err(GovernanceError::TooLong {
            what,
            over: t - now - max,
            max,
        }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use writ_core::{Selector, SpiffeId};

    fn e() -> Entry {
        Entry::new(
            SpiffeId::parse("spiffe://td/w").unwrap(),
            SpiffeId::parse("spiffe://td/n").unwrap(),
            vec![Selector::parse("unix:uid:1").unwrap()],
        )
    }

    #[test]
    fn rules() {
        let g = Governance {
            require_owner: true,
            require_purpose: true,
            max_entry_lifetime: Some(100),
            break_glass_max_lifetime: 10,
        };
        assert_eq!(g.apply(&mut e(), 0), Err(GovernanceError::NoOwner));
        let mut x = Entry {
            owner: "o".into(),
            ..e()
        };
        assert_eq!(g.apply(&mut x, 0), Err(GovernanceError::NoPurpose));
        x.purpose = "p".into();
        g.apply(&mut x, 1000).unwrap();
        assert_eq!(x.expires_at, Some(1100));
        x.expires_at = Some(1200);
        assert!(matches!(
            g.apply(&mut x, 1000),
            Err(GovernanceError::TooLong { .. })
        ));
        let mut bg = Entry {
            break_glass: true,
            ..e()
        };
        assert_eq!(g.apply(&mut bg, 0), Err(GovernanceError::NoReason));
        bg.break_glass_reason = "pager 123".into();
        g.apply(&mut bg, 0).unwrap();
        assert_eq!(bg.expires_at, Some(10));
        let mut stray = Entry {
            break_glass_reason: "x".into(),
            owner: "o".into(),
            purpose: "p".into(),
            ..e()
        };
        assert_eq!(
            g.apply(&mut stray, 0),
            Err(GovernanceError::ReasonWithoutBreakGlass)
        );
    }
}
