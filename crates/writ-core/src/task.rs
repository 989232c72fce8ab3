//! Task identities: a short-lived identity a workload starts for one task of its own
//! (`<its SPIFFE ID>/task/<task-id>`, or under a running task for a sub-task).
//!
//! Everything about a task is fixed when it starts: owner (the identity that started it),
//! purpose, audiences, end. A task only ever narrows what its parent holds. It ends when its
//! owner ends it, when its TTL runs out, or when the owner loses the identity it started it
//! with; an ended task's credentials are revoked.

use serde::{Deserialize, Serialize};

use crate::id::SpiffeId;

/// Length of a task ID: 128 random bits, lowercase hex.
pub const TASK_ID_LEN: usize = 32;
/// Longest task purpose accepted.
pub const MAX_PURPOSE_LEN: usize = 1024;
/// Deepest chain of sub-tasks (a task of a task of ...).
pub const MAX_TASK_DEPTH: usize = 4;

/// Whether `s` has the shape of a task ID.
pub fn is_task_id(s: &str) -> bool {
    s.len() == TASK_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One task, as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// 128 random bits, lowercase hex.
    pub id: String,
    /// `<owner>/task/<id>`.
    pub spiffe_id: SpiffeId,
    /// The identity that started it (the entry's SPIFFE ID, or the parent task's).
    pub owner: SpiffeId,
    /// The entry whose delegation allowed it.
    pub entry_id: String,
    /// The task it is a sub-task of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task_id: Option<String>,
    /// The agent it was started through.
    pub agent: SpiffeId,
    /// Why it exists (required).
    pub purpose: String,
    /// JWT-SVID audiences it may hold.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; nothing it holds outlives this.
    pub expires_at: i64,
    /// When it was ended (unix seconds), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
    /// Why it was ended.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub end_reason: String,
    /// Everything issued under it has been revoked (set once its end's revocation completed;
    /// an ended task without it is revoked again by the server's sweeper).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Running.
    Active,
    /// Ended by its owner or because its owner lost its identity.
    Ended,
    /// Its TTL ran out.
    Expired,
}

impl TaskState {
    /// `active`, `ended`, `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Active => "active",
            TaskState::Ended => "ended",
            TaskState::Expired => "expired",
        }
    }
}

impl Task {
    /// The state at `now`.
    pub fn state(&self, now: i64) -> TaskState {
        if self.ended_at.is_some() {
            TaskState::Ended
        } else if self.expires_at <= now {
            TaskState::Expired
        } else {
            TaskState::Active
        }
    }

    /// How many tasks deep this one is (1 for a task started by an entry's workload).
    pub fn depth(&self) -> usize {
        self.spiffe_id.path().matches("/task/").count()
    }
}

/// Checks a task purpose: required, at most [`MAX_PURPOSE_LEN`] bytes, no control characters.
pub fn check_purpose(p: &str) -> Result<(), String> {
    if p.trim().is_empty() {
        return Err("purpose is required: say what the task is for".into());
    }
    if p.len() > MAX_PURPOSE_LEN || p.chars().any(char::is_control) {
        return Err(format!(
            "purpose is longer than {MAX_PURPOSE_LEN} bytes or has control characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_purposes() {
        assert!(is_task_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_task_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_task_id("../../etc"));
        assert!(check_purpose("summarise ticket 42").is_ok());
        assert!(check_purpose("  ").is_err());
        assert!(check_purpose("a\nb").is_err());
    }

    #[test]
    fn delegation_parses_and_refuses() {
        let d = crate::Delegation::parse("max_ttl=10m,max_active=5,audiences=a|b").unwrap();
        assert_eq!((d.max_ttl, d.max_active), (600, 5));
        assert_eq!(d.audiences, vec!["a".to_owned(), "b".to_owned()]);
        for bad in [
            "",
            "max_active=3",
            "max_ttl=0s",
            "max_ttl=2d",
            "max_ttl=1m,x=1",
            "max_ttl=1m,max_active=0",
        ] {
            assert!(crate::Delegation::parse(bad).is_err(), "{bad}");
        }
    }
}
