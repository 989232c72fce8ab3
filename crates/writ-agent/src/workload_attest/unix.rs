//! The `unix` workload attestor: `unix:*` selectors from `SO_PEERCRED` and `/proc/<pid>`.
//!
//! Selectors: `uid`, `gid`, `user`, `group` (names from the system's user database, NSS
//! included), `supplementary_gid`, `path` (the executable, as the process's mount namespace
//! sees it) and `sha256` (of the executable, only while an entry uses it).
//!
//! PID reuse: the process start time is read before and after the selectors are gathered and
//! must not change, the process must have started before attestation began, and its effective
//! UID must equal the socket's; otherwise it fails closed. A caller in another PID namespace
//! (PID 0) fails closed. Binary hashes are bounded (`max_hash_bytes`), cached by
//! (dev, inode, size, mtime, ctime), and computed one at a time per caller UID.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ring::digest::{Context, SHA256};
use serde::Deserialize;
use writ_core::config::ConfigError;
use writ_core::Selector;

use super::proc::{parse_start_ticks, parse_status};
use super::{Caller, KindFilter, WorkloadAttestError, WorkloadAttestor};
use crate::plugin::settings;

/// Default bound on binaries hashed for `unix:sha256` (256 MiB).
pub const DEFAULT_MAX_HASH_BYTES: u64 = 256 * 1024 * 1024;

/// `[workload_attestor.unix]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Largest binary hashed for `unix:sha256`.
    #[serde(default)]
    max_hash_bytes: Option<u64>,
}

pub(super) fn build(table: &toml::Table) -> Result<Arc<dyn WorkloadAttestor>, ConfigError> {
    let s: Settings = settings("workload_attestor.unix", table)?;
    Ok(Arc::new(UnixAttestor::new(
        s.max_hash_bytes.unwrap_or(DEFAULT_MAX_HASH_BYTES),
    )))
}

/// Key of the binary hash cache: a file is re-hashed when any of these change. The change time
/// is in it because the file's owner can rewrite a binary in place and restore its mtime with
/// `utimensat`; nobody can set the ctime, which the kernel moves on every write.
type FileKey = (u64, u64, u64, (i64, i64), (i64, i64));

/// The `unix` attestor.
pub(super) struct UnixAttestor {
    proc_root: PathBuf,
    max_hash_bytes: u64,
    hashes: Mutex<HashMap<FileKey, String>>,
    /// One hash at a time per caller UID: a user who keeps touching a huge binary and opening
    /// connections spends at most one core of the agent, and only on its own callers.
    hashing: Mutex<HashMap<u32, Arc<Mutex<()>>>>,
}

impl std::fmt::Debug for UnixAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnixAttestor")
            .field("max_hash_bytes", &self.max_hash_bytes)
            .finish()
    }
}

/// Clock ticks per second used by `/proc/<pid>/stat` (USER_HZ, 100 on every Linux ABI writ runs on).
const USER_HZ: u64 = 100;

impl UnixAttestor {
    /// An attestor reading the real `/proc` and `/etc`, hashing binaries up to `max_hash_bytes`.
    pub(super) fn new(max_hash_bytes: u64) -> Self {
        UnixAttestor {
            proc_root: PathBuf::from("/proc"),
            max_hash_bytes,
            hashes: Mutex::new(HashMap::new()),
            hashing: Mutex::new(HashMap::new()),
        }
    }

    fn proc_err(pid: i32, e: impl std::fmt::Display) -> WorkloadAttestError {
        WorkloadAttestError::Proc {
            pid,
            reason: e.to_string(),
        }
    }

    /// Start time (clock ticks since boot) from `/proc/<pid>/stat`.
    fn start_ticks(&self, pid: i32) -> Result<u64, WorkloadAttestError> {
        let stat = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("stat"))
            .map_err(|_| WorkloadAttestError::Gone(pid))?;
        parse_start_ticks(&stat).ok_or_else(|| Self::proc_err(pid, "malformed stat"))
    }

    fn uptime_secs(&self) -> Result<f64, WorkloadAttestError> {
        let s = std::fs::read_to_string(self.proc_root.join("uptime"))
            .map_err(|e| Self::proc_err(0, e))?;
        s.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Self::proc_err(0, "malformed uptime"))
    }

    fn hash_exe(&self, pid: i32, uid: u32) -> Option<String> {
        let path = self.proc_root.join(pid.to_string()).join("exe");
        let mut f = std::fs::File::open(&path).ok()?;
        let turn = self
            .hashing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(uid)
            .or_default()
            .clone();
        let _turn = turn.lock().unwrap_or_else(|p| p.into_inner());
        let m = f.metadata().ok()?;
        if m.len() > self.max_hash_bytes {
            tracing::debug!(
                pid,
                size = m.len(),
                "binary too large to hash; no unix:sha256 selector"
            );
            return None;
        }
        let key = (
            m.dev(),
            m.ino(),
            m.len(),
            (m.mtime(), m.mtime_nsec()),
            (m.ctime(), m.ctime_nsec()),
        );
        if let Some(h) = self
            .hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Some(h.clone());
        }
        let mut ctx = Context::new(&SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > self.max_hash_bytes {
                return None;
            }
            ctx.update(&buf[..n]);
        }
        let h = hex::encode(ctx.finish().as_ref());
        let mut cache = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(key, h.clone());
        Some(h)
    }

    /// User and group names from the system's user database (NSS: files, LDAP, sssd, ...);
    /// reading `/etc/passwd` by hand missed every user that is not in it.
    fn user_name(uid: u32) -> Option<String> {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    }

    fn group_name(gid: u32) -> Option<String> {
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name)
    }
}

impl WorkloadAttestor for UnixAttestor {
    fn name(&self) -> &'static str {
        "unix"
    }

    fn attest(
        &self,
        c: &Caller,
        wanted: &dyn KindFilter,
    ) -> Result<Vec<Selector>, WorkloadAttestError> {
        if c.pid <= 0 {
            return Err(WorkloadAttestError::NotVisible(c.pid));
        }
        let pid = c.pid;
        let began = self.uptime_secs()?;
        let t0 = self.start_ticks(pid)?;
        // A process that started after we began cannot be the one that connected: the PID was
        // reused. (Allow one tick of rounding.)
        if (t0 as f64) / (USER_HZ as f64) > began + 1.0 / USER_HZ as f64 {
            return Err(WorkloadAttestError::Gone(pid));
        }
        let dir = self.proc_root.join(pid.to_string());
        let status = std::fs::read_to_string(dir.join("status"))
            .map_err(|_| WorkloadAttestError::Gone(pid))?;
        let ((_ruid, euid), _gid, groups) =
            parse_status(&status).ok_or_else(|| Self::proc_err(pid, "malformed status"))?;
        if euid != c.uid {
            return Err(WorkloadAttestError::UidMismatch {
                pid,
                proc_uid: euid,
                sock_uid: c.uid,
            });
        }
        let mut out = Vec::new();
        let mut push = |k: &str, v: String| {
            if let Ok(s) = Selector::new("unix", &format!("{k}:{v}")) {
                out.push(s);
            }
        };
        push("uid", c.uid.to_string());
        push("gid", c.gid.to_string());
        if let Some(n) = Self::user_name(c.uid) {
            push("user", n);
        }
        if let Some(n) = Self::group_name(c.gid) {
            push("group", n);
        }
        for g in &groups {
            push("supplementary_gid", g.to_string());
        }
        if let Ok(p) = std::fs::read_link(dir.join("exe")) {
            push("path", p.to_string_lossy().into_owned());
        }
        if wanted.wants("unix:sha256") {
            if let Some(h) = self.hash_exe(pid, c.uid) {
                push("sha256", h);
            }
        }
        // Same process still there? If the PID now names another process, fail closed.
        if self.start_ticks(pid)? != t0 {
            return Err(WorkloadAttestError::Gone(pid));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AllKinds, ProcessMark};
    use super::*;

    #[test]
    fn stat_parsing_survives_hostile_names() {
        let rest = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 20 21";
        for comm in ["cat", "a b", "x) S 1 2 (y", "))", "(("] {
            let stat = format!("123 ({comm}) {rest}");
            assert_eq!(parse_start_ticks(&stat), Some(4242), "{comm}");
        }
        assert_eq!(parse_start_ticks("garbage"), None);
        assert_eq!(parse_start_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn attests_this_process() {
        let a = UnixAttestor::new(DEFAULT);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let ((_, euid), (_, egid), _) = parse_status(&status).unwrap();
        let me = Caller {
            pid: std::process::id() as i32,
            uid: euid,
            gid: egid,
        };
        let sels = a.attest(&me, &AllKinds).unwrap();
        let strs: Vec<String> = sels.iter().map(|s| s.to_string()).collect();
        assert!(strs.contains(&format!("unix:uid:{euid}")), "{strs:?}");
        assert!(
            strs.iter().any(|s| s.starts_with("unix:path:/")),
            "{strs:?}"
        );
        assert!(
            strs.iter()
                .any(|s| s.starts_with("unix:sha256:") && s.len() == "unix:sha256:".len() + 64),
            "{strs:?}"
        );
        // Second call hits the hash cache and gives the same answer.
        assert_eq!(a.attest(&me, &AllKinds).unwrap(), sels);
        // Lying about the uid fails closed.
        let liar = Caller {
            uid: euid + 1,
            ..me
        };
        assert!(matches!(
            a.attest(&liar, &AllKinds),
            Err(WorkloadAttestError::UidMismatch { .. })
        ));
        // Invisible and dead PIDs fail closed.
        assert!(matches!(
            a.attest(&Caller { pid: 0, ..me }, &AllKinds),
            Err(WorkloadAttestError::NotVisible(0))
        ));
        assert!(matches!(
            a.attest(
                &Caller {
                    pid: i32::MAX,
                    ..me
                },
                &AllKinds
            ),
            Err(WorkloadAttestError::Gone(_))
        ));
    }

    struct NoHash;
    impl KindFilter for NoHash {
        fn wants(&self, kind: &str) -> bool {
            kind != "unix:sha256"
        }
    }

    /// Item 10 of issue 10: touching a huge binary before each request cost 240 ms of agent CPU
    /// per request. Nothing is hashed while no entry uses `unix:sha256`.
    #[test]
    fn binaries_are_hashed_only_when_an_entry_uses_the_hash() {
        let a = UnixAttestor::new(DEFAULT);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let ((_, euid), (_, egid), _) = parse_status(&status).unwrap();
        let me = Caller {
            pid: std::process::id() as i32,
            uid: euid,
            gid: egid,
        };
        let sels = a.attest(&me, &NoHash).unwrap();
        assert!(!sels.iter().any(|s| s.value().starts_with("sha256:")));
        assert!(a.hashes.lock().unwrap().is_empty(), "hashed anyway");
    }

    #[test]
    fn process_mark_of_this_process_is_stable() {
        let pid = std::process::id() as i32;
        let m = ProcessMark::read(pid).unwrap();
        assert_eq!(ProcessMark::read(pid).unwrap(), m);
        assert!(matches!(
            ProcessMark::read(0),
            Err(WorkloadAttestError::NotVisible(0))
        ));
        assert!(ProcessMark::read(i32::MAX).is_err());
    }

    #[test]
    fn huge_binaries_are_not_hashed() {
        let a = UnixAttestor::new(16);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let ((_, euid), (_, egid), _) = parse_status(&status).unwrap();
        let me = Caller {
            pid: std::process::id() as i32,
            uid: euid,
            gid: egid,
        };
        let sels = a.attest(&me, &AllKinds).unwrap();
        assert!(!sels.iter().any(|s| s.value().starts_with("sha256:")));
    }

    const DEFAULT: u64 = DEFAULT_MAX_HASH_BYTES;
}
