//! Parsing `/proc/<pid>/stat` and `/proc/<pid>/status`, the kernel's word on a process.
//!
//! Invariant: a process name may hold spaces and `)`, so `stat` fields are counted from the
//! last `)`; anything malformed parses to `None`, never a panic.

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
pub(crate) type RealEff = (u32, u32);

/// `(real, effective)` of the `Uid:`/`Gid:` line and the `Groups:` list of `/proc/<pid>/status`.
pub(crate) fn parse_status(status: &str) -> Option<(RealEff, RealEff, Vec<u32>)> {
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
