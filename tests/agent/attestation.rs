//! Workload attestation against a hostile local user: exec after connect, rewritten binaries.

use super::support::*;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use writ_testkit::*;

/// Item 2: a process connected, forked, and exec'd a trusted binary in the connecting PID; the
/// child kept the inherited connection and, because `/proc/<pid>` was read per request, received
/// the trusted entry's SVID and private key. Attestation is now bound to the connection.
#[test]
fn exec_after_connect_does_not_hand_over_the_trusted_identity() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let trusted = a.dir.path().join("trusted-sleep");
    std::fs::copy("/bin/sleep", &trusted).unwrap();
    create_entry_with(
        &s,
        "spiffe://example.org/trusted",
        &[uid_selector(), format!("unix:path:{}", trusted.display())],
    );
    create_entry_with(&s, "spiffe://example.org/anyone", &[uid_selector()]);
    eventually("anyone served", Duration::from_secs(30), || {
        (a.cli(&["svid", "fetch"]).code == 0).then_some(())
    });

    // Control: without the exec, the relay works and carries the caller's own identity only.
    let ok = exec_attack(&a, &trusted, false).ok();
    let ids: Vec<String> = ok.json()["svids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spiffe_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["spiffe://example.org/anyone".to_owned()]);

    // The attack: refused, and certainly without the trusted identity.
    let r = exec_attack(&a, &trusted, true);
    assert!(
        !r.stdout.contains("spiffe://example.org/trusted"),
        "the exec'd connection got the trusted SVID: {}",
        r.stdout
    );
    assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("exec'd"), "{}", r.stderr);
}

/// Item 3: the `unix:sha256` cache was keyed by (dev, inode, mtime, size); the binary's owner
/// rewrote it in place, restored its mtime, and kept the trusted hash (and identity).
#[test]
fn binary_rewritten_in_place_with_old_mtime_is_hashed_again() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let bin = a.dir.path().join("workload");
    std::fs::copy(writ_bin(), &bin).unwrap();
    let digest = {
        let out = Command::new("sha256sum").arg(&bin).output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_owned()
    };
    create_entry_with(
        &s,
        "spiffe://example.org/hashed",
        &[uid_selector(), format!("unix:sha256:{digest}")],
    );
    let run = |bin: &Path| {
        let o = Command::new(bin)
            .args(["svid", "fetch", "--output", "json"])
            .env("SPIFFE_ENDPOINT_SOCKET", a.endpoint())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    eventually("hashed binary served", Duration::from_secs(60), || {
        (run(&bin).0 == Some(0)).then_some(())
    });

    // Rewrite one byte of a help text in place: same inode, same size, still runs; then put the
    // old modification time back.
    let mtime = std::fs::metadata(&bin).unwrap().modified().unwrap();
    let mut data = std::fs::read(&bin).unwrap();
    let needle = b"Fetches X509-SVIDs once";
    let at = data
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("help text in the binary");
    data[at] = b'f';
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&bin).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(at as u64)).unwrap();
        f.write_all(b"f").unwrap();
        f.sync_all().unwrap();
        f.set_modified(mtime).unwrap();
    }
    assert_eq!(std::fs::metadata(&bin).unwrap().modified().unwrap(), mtime);
    let (code, out) = run(&bin);
    assert_ne!(
        code,
        Some(0),
        "the rewritten binary kept the trusted identity: {out}"
    );
}
