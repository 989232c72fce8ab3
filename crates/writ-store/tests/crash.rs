//! Durability under SIGKILL: a child process creates entries and prints `ack <id>` after each
//! acknowledged write; the parent kills it with SIGKILL mid-stream, reopens the store and checks
//! that every acknowledged entry is there.
//!
//! The child is this same test binary re-executed with `WRIT_CRASH_CHILD_DIR` set, running only
//! the `crash_child` test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use writ_core::{Entry, Selector, SpiffeId};
use writ_store::{SledStore, Store};

const CHILD_ENV: &str = "WRIT_CRASH_CHILD_DIR";

fn entry(n: u64) -> Entry {
    Entry::new(
        SpiffeId::parse(&format!("spiffe://td/w/{n}")).unwrap(),
        SpiffeId::parse("spiffe://td/writ/agent/x").unwrap(),
        vec![Selector::parse(&format!("unix:uid:{n}")).unwrap()],
    )
}

/// The writer. Does nothing unless started by `acknowledged_writes_survive_sigkill`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let s = SledStore::open(&dir).unwrap();
    // Continue numbering after the previous round so IDs stay unique.
    for n in s.revision().unwrap().. {
        let e = s.create_entry(entry(n)).unwrap();
        println!("ack {} {}", e.id, e.revision);
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.len() < 150 && Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(rest) = line.strip_prefix("ack ") {
                let (id, rev) = rest.split_once(' ').unwrap();
                acked.push((id.to_owned(), rev.parse::<u64>().unwrap()));
            }
        }
        // SIGKILL: no destructors, no flush on exit.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            acked.len() >= 150,
            "round {round}: child acknowledged only {}",
            acked.len()
        );

        let s = SledStore::open(dir.path()).unwrap();
        for (id, rev) in &acked {
            let e = s
                .get_entry(id)
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acked entry {id} lost"));
            assert_eq!(e.revision, *rev);
        }
        let last = acked.last().unwrap().1;
        assert!(s.revision().unwrap() >= last);
        // The log has every acknowledged revision.
        let log = s.changes_since(0, usize::MAX).unwrap();
        assert!(log.len() as u64 >= last);
    }
}
