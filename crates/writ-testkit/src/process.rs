//! The binary under test and measurements of running processes (memory, CPU time).

use std::path::PathBuf;

/// The `writ` binary under test: `WRIT_BIN` when set, else `writ` next to the running
/// executable or one directory up (test binaries live in `target/<profile>/deps/`, the bench
/// in `target/<profile>/`).
pub fn writ_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WRIT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe.parent().expect("executable directory");
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join("writ");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "the writ binary is not next to {} nor one level up: build it (cargo build) or set WRIT_BIN",
        exe.display()
    )
}

/// Resident memory of a process, in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of a process, in clock ticks (0 when it cannot be read).
pub fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = &stat[stat.rfind(')')? + 1..];
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// This process's effective uid (what the unix attestor reports for it).
pub fn my_uid() -> u32 {
    writ_agent::internal::own_ids().unwrap().0
}
