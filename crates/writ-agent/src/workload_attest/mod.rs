//! Workload attestation: who is calling the Workload API, from the kernel.
//!
//! The caller's PID, UID and GID come from `SO_PEERCRED` on the Unix socket ([`Caller`]). Each
//! [`WorkloadAttestor`] plugin turns them into selectors; the catalog ([`build`]) makes the
//! plugins configured as `[workload_attestor.<name>]` tables. [`ProcessMark`] is what the
//! Workload API binds a connection's attestation to: the PID's start time, the inode of its
//! executable and its effective UID. A process that exec'd another binary, or a PID that now
//! names another process, no longer has the mark it connected with. Everything fails closed.

mod proc;
mod unix;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use writ_core::config::{invalid, ConfigError};
use writ_core::Selector;

pub use proc::{own_ids, parse_start_ticks};
pub use unix::DEFAULT_MAX_HASH_BYTES;

use proc::parse_status;

/// The caller as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    /// Process ID (0 or negative when not visible).
    pub pid: i32,
    /// Effective user ID at connect time.
    pub uid: u32,
    /// Effective group ID at connect time.
    pub gid: u32,
}

/// Why a caller could not be attested. All of these fail closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkloadAttestError {
    /// No PID (other PID namespace, or the kernel did not say).
    #[error("caller's process is not visible to the agent (pid {0})")]
    NotVisible(i32),
    /// The process went away or its PID now names another process.
    #[error("caller's process {0} exited or its pid was reused during attestation")]
    Gone(i32),
    /// The process exec'd another binary, or its PID now names another process, since it
    /// connected (or while it was being attested).
    #[error(
        "caller's process {0} has exec'd, exited or been replaced since it connected; reconnect"
    )]
    Changed(i32),
    /// `/proc` disagrees with the socket credentials.
    #[error("caller's process {pid} runs as uid {proc_uid}, but connected as uid {sock_uid}")]
    UidMismatch {
        /// The PID.
        pid: i32,
        /// UID in /proc.
        proc_uid: u32,
        /// UID from SO_PEERCRED.
        sock_uid: u32,
    },
    /// `/proc` could not be read or parsed.
    #[error("cannot read /proc for process {pid}: {reason}")]
    Proc {
        /// The PID.
        pid: i32,
        /// Why.
        reason: String,
    },
}

/// Which selector kinds (`unix:sha256`, ...) some entry on this agent uses: attestors skip
/// expensive selectors nobody asks for (hashing a binary costs up to seconds of CPU).
pub(crate) trait KindFilter {
    /// Whether an entry uses selectors of `kind` (`type:first-part`, e.g. `unix:sha256`).
    fn wants(&self, kind: &str) -> bool;
}

/// Every kind is wanted (tests).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct AllKinds;

#[cfg(test)]
impl KindFilter for AllKinds {
    fn wants(&self, _kind: &str) -> bool {
        true
    }
}

/// A workload attestor: selectors for a caller.
pub(crate) trait WorkloadAttestor: Send + Sync {
    /// The selector type it produces (`unix`).
    fn name(&self) -> &'static str;
    /// Selectors describing `caller`; kinds that `wanted` does not want may be left out.
    fn attest(
        &self,
        caller: &Caller,
        wanted: &dyn KindFilter,
    ) -> Result<Vec<Selector>, WorkloadAttestError>;
}

/// What a process is, beyond its PID: checked on every request of a connection, so a connection
/// is refused once the process that opened it has exec'd another binary, exited, or had its PID
/// reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessMark {
    /// Start time in clock ticks since boot (changes when the PID is reused).
    pub start_ticks: u64,
    /// Device and inode of `/proc/<pid>/exe` (changes on exec of another binary).
    pub exe: (u64, u64),
    /// Effective UID (changes on exec of a set-user-ID binary or `setuid`).
    pub euid: u32,
}

impl ProcessMark {
    /// Reads the mark of `pid` from `/proc`.
    pub(crate) fn read(pid: i32) -> Result<Self, WorkloadAttestError> {
        Self::read_in(std::path::Path::new("/proc"), pid)
    }

    fn read_in(proc_root: &std::path::Path, pid: i32) -> Result<Self, WorkloadAttestError> {
        if pid <= 0 {
            return Err(WorkloadAttestError::NotVisible(pid));
        }
        let dir = proc_root.join(pid.to_string());
        let stat = std::fs::read_to_string(dir.join("stat"))
            .map_err(|_| WorkloadAttestError::Gone(pid))?;
        let start_ticks = parse_start_ticks(&stat).ok_or_else(|| WorkloadAttestError::Proc {
            pid,
            reason: "malformed stat".into(),
        })?;
        let exe = std::fs::metadata(dir.join("exe")).map_err(|e| WorkloadAttestError::Proc {
            pid,
            reason: format!("cannot stat its executable: {e}"),
        })?;
        let status = std::fs::read_to_string(dir.join("status"))
            .map_err(|_| WorkloadAttestError::Gone(pid))?;
        let ((_, euid), _, _) = parse_status(&status).ok_or_else(|| WorkloadAttestError::Proc {
            pid,
            reason: "malformed status".into(),
        })?;
        Ok(ProcessMark {
            start_ticks,
            exe: (exe.dev(), exe.ino()),
            euid,
        })
    }
}

/// Builds a plugin from its config table.
type Build = fn(&toml::Table) -> Result<Arc<dyn WorkloadAttestor>, ConfigError>;

/// Every workload attestor the agent knows, by name.
const CATALOG: &[(&str, Build)] = &[("unix", unix::build)];

/// Builds the configured workload attestors (`unix` with its defaults when none is configured).
pub(crate) fn build(tables: &toml::Table) -> Result<Vec<Arc<dyn WorkloadAttestor>>, ConfigError> {
    if tables.is_empty() {
        return Ok(vec![unix::build(&toml::Table::new())?]);
    }
    let mut out = Vec::new();
    for (name, table) in tables {
        let key = format!("workload_attestor.{name}");
        let table = table
            .as_table()
            .ok_or_else(|| invalid(key.clone(), "must be a table"))?;
        let (_, build) = CATALOG.iter().find(|(n, _)| n == name).ok_or_else(|| {
            let known: Vec<&str> = CATALOG.iter().map(|(n, _)| *n).collect();
            invalid(
                key.clone(),
                format!("unknown workload attestor; known: {}", known.join(", ")),
            )
        })?;
        out.push(build(table)?);
    }
    Ok(out)
}
