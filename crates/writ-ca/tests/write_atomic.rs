//! `write_atomic` (SVID files, keys) against a hostile directory (issue 10, item 19).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

/// The temporary file used to be `.<name>.tmp.<pid>`, opened without O_EXCL: anyone who could
/// write to the directory planted a symlink there and had the key written through it.
#[test]
fn a_symlink_at_the_old_temporary_name_is_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::symlink(
        &victim,
        out.join(format!(".svid.key.tmp.{}", std::process::id())),
    )
    .unwrap();
    writ_ca::keys::write_atomic(&out.join("svid.key"), b"KEY", 0o600).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::read(out.join("svid.key")).unwrap(), b"KEY");
    let mode = std::fs::metadata(out.join("svid.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A symlink in place of the file itself is replaced, not written through.
    std::os::unix::fs::symlink(&victim, out.join("svid.pem")).unwrap();
    writ_ca::keys::write_atomic(&out.join("svid.pem"), b"CERT", 0o644).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!std::fs::symlink_metadata(out.join("svid.pem"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Nothing is left behind.
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert_eq!(left.len(), 1, "{left:?}"); // the planted link only
}
