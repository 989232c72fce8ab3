//! Workload attestation: who is calling the Workload API, from the kernel.
//!
//! The caller's PID, UID and GID come from `SO_PEERCRED` on the Unix socket. The [`UnixAttestor`]
//! turns them into `unix:*` selectors from `/proc/<pid>`, guarding against PID reuse: it reads the
//! process start time before and after gathering selectors and fails closed if the start time
//! changed, if the process started after attestation began (the PID was recycled before we looked),
//! if its effective UID differs from the socket credentials, or if the PID is not visible at all
//! (a caller in another PID namespace shows up as PID 0).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;

use ring::digest::{Context, SHA256};
use writ_core::Selector;

/// The caller as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Process ID (0 or negative when not visible).
    pub pid: i32,
    /// Effective user ID at connect time.
    pub uid: u32,
    /// Effective group ID at connect time.
    pub gid: u32,
}

/// Why a caller could not be attested. All of these fail closed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadAttestError {
    /// No PID (other PID namespace, or the kernel did not say).
    #[error("caller's process is not visible to the agent (pid {0})")]
    NotVisible(i32),
    /// The process went away or its PID now names another process.
    #[error("caller's process {0} exited or its pid was reused during attestation")]
    Gone(i32),
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

/// A workload attestor: selectors for a caller.
pub trait WorkloadAttestor: Send + Sync {
    /// The selector type it produces (`unix`).
    fn name(&self) -> &'static str;
    /// Selectors describing `caller`.
    fn attest(&self, caller: &Caller) -> Result<Vec<Selector>, WorkloadAttestError>;
}

/// Key of the binary hash cache: a file is re-hashed when any of these change.
type FileKey = (u64, u64, i64, i64, u64);

/// The `unix` attestor.
pub struct UnixAttestor {
    proc_root: PathBuf,
    etc_root: PathBuf,
    max_hash_bytes: u64,
    hashes: Mutex<HashMap<FileKey, String>>,
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
    pub fn new(max_hash_bytes: u64) -> Self {
        UnixAttestor {
            proc_root: PathBuf::from("/proc"),
            etc_root: PathBuf::from("/etc"),
            max_hash_bytes,
            hashes: Mutex::new(HashMap::new()),
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

    fn hash_exe(&self, pid: i32) -> Option<String> {
        let path = self.proc_root.join(pid.to_string()).join("exe");
        let mut f = std::fs::File::open(&path).ok()?;
        let m = f.metadata().ok()?;
        if m.len() > self.max_hash_bytes {
            tracing::debug!(
                pid,
                size = m.len(),
                "binary too large to hash; no unix:sha256 selector"
            );
            return None;
        }
        let key = (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len());
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
        let h = hex_lower(ctx.finish().as_ref());
        let mut cache = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(key, h.clone());
        Some(h)
    }

    fn name_of(&self, file: &str, id: u32) -> Option<String> {
        let text = std::fs::read_to_string(self.etc_root.join(file)).ok()?;
        text.lines().find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let _pw = f.next()?;
            let v: u32 = f.next()?.parse().ok()?;
            (v == id).then(|| name.to_owned())
        })
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Field 22 (starttime) of `/proc/<pid>/stat`. The command name (field 2) may contain spaces
/// and `)`, so fields are counted from the last `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After ")" come fields 3.. ; starttime is field 22, i.e. index 19 here.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// This process's effective UID and GID, as the unix attestor would report them.
pub fn own_ids() -> Option<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let ((_, euid), (_, egid), _) = parse_status(&status)?;
    Some((euid, egid))
}

/// `(real, effective)` IDs.
type RealEff = (u32, u32);

/// `(real, effective)` of the `Uid:`/`Gid:` line and the `Groups:` list of `/proc/<pid>/status`.
fn parse_status(status: &str) -> Option<(RealEff, RealEff, Vec<u32>)> {
    let mut uid = None;
    let mut gid = None;
    let mut groups = Vec::new();
    for l in status.lines() {
        let ids = |rest: &str| -> Option<(u32, u32)> {
            let mut it = rest.split_whitespace().map(|v| v.parse::<u32>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        };
        if let Some(r) = l.strip_prefix("Uid:") {
            uid = ids(r);
        } else if let Some(r) = l.strip_prefix("Gid:") {
            gid = ids(r);
        } else if let Some(r) = l.strip_prefix("Groups:") {
            groups = r
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect();
        }
    }
    Some((uid?, gid?, groups))
}

impl WorkloadAttestor for UnixAttestor {
    fn name(&self) -> &'static str {
        "unix"
    }

    fn attest(&self, c: &Caller) -> Result<Vec<Selector>, WorkloadAttestError> {
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
        if let Some(n) = self.name_of("passwd", c.uid) {
            push("user", n);
        }
        if let Some(n) = self.name_of("group", c.gid) {
            push("group", n);
        }
        for g in &groups {
            push("supplementary_gid", g.to_string());
        }
        if let Ok(p) = std::fs::read_link(dir.join("exe")) {
            push("path", p.to_string_lossy().into_owned());
        }
        if let Some(h) = self.hash_exe(pid) {
            push("sha256", h);
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
        let sels = a.attest(&me).unwrap();
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
        assert_eq!(a.attest(&me).unwrap(), sels);
        // Lying about the uid fails closed.
        let liar = Caller {
            uid: euid + 1,
            ..me
        };
        assert!(matches!(
            a.attest(&liar),
            Err(WorkloadAttestError::UidMismatch { .. })
        ));
        // Invisible and dead PIDs fail closed.
        assert!(matches!(
            a.attest(&Caller { pid: 0, ..me }),
            Err(WorkloadAttestError::NotVisible(0))
        ));
        assert!(matches!(
            a.attest(&Caller {
                pid: i32::MAX,
                ..me
            }),
            Err(WorkloadAttestError::Gone(_))
        ));
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
        let sels = a.attest(&me).unwrap();
        assert!(!sels.iter().any(|s| s.value().starts_with("sha256:")));
    }

    const DEFAULT: u64 = crate::config::DEFAULT_MAX_HASH_BYTES;
}
