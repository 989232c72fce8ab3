//! OpenSSH certificates and keys made by the real `ssh-keygen`, parsed and checked by
//! `writ_ca::ssh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use writ_ca::ssh::{Certificate, PrivateKey, PublicKey, SshError, HOST_CERT};

fn keygen(dir: &Path, args: &[&str]) {
    let o = Command::new("ssh-keygen")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn have_keygen() -> bool {
    Command::new("ssh-keygen").arg("-?").output().is_ok()
}

/// A CA of `ca_type` and a host key of `host_type` certified for `principals`.
fn make(
    dir: &Path,
    ca_type: &str,
    host_type: &str,
    principals: &str,
    extra: &[&str],
) -> (String, String, String) {
    keygen(
        dir,
        &["-q", "-t", ca_type, "-N", "", "-f", "ca", "-C", "ca"],
    );
    keygen(
        dir,
        &["-q", "-t", host_type, "-N", "", "-f", "host", "-C", "host"],
    );
    let mut args = vec!["-q", "-s", "ca", "-I", "node-1", "-h", "-n", principals];
    args.extend_from_slice(extra);
    args.push("host.pub");
    keygen(dir, &args);
    (
        std::fs::read_to_string(dir.join("ca.pub")).unwrap(),
        std::fs::read_to_string(dir.join("host-cert.pub")).unwrap(),
        std::fs::read_to_string(dir.join("host")).unwrap(),
    )
}

#[test]
fn host_certificates_of_every_supported_type_verify() {
    if !have_keygen() {
        eprintln!("ssh-keygen not installed; .ci/run installs it");
        return;
    }
    for (ca, host) in [
        ("ed25519", "ed25519"),
        ("ecdsa", "ecdsa"),
        ("rsa", "ed25519"),
        ("ed25519", "ecdsa"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let (ca_pub, cert_text, key_text) =
            make(d.path(), ca, host, "node-1.example.org,rack-7", &[]);
        let blob = Certificate::from_openssh(&cert_text).unwrap();
        let c = Certificate::parse_and_verify(&blob).unwrap();
        assert_eq!(c.cert_type, HOST_CERT);
        assert_eq!(c.key_id, "node-1");
        assert_eq!(c.principals, vec!["node-1.example.org", "rack-7"]);
        assert_eq!(
            c.signature_key,
            PublicKey::from_openssh(&ca_pub).unwrap(),
            "{ca}"
        );
        // The host key signs, and the certificate's key verifies it.
        let k = PrivateKey::from_openssh(&key_text).unwrap();
        assert_eq!(k.public(), &c.key);
        let sig = k.sign(b"challenge").unwrap();
        c.key.verify_raw(b"challenge", &sig).unwrap();
        assert_eq!(
            c.key.verify_raw(b"other", &sig),
            Err(SshError::BadSignature)
        );
    }
}

#[test]
fn tampered_truncated_and_user_certificates() {
    if !have_keygen() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (_, cert_text, _) = make(d.path(), "ed25519", "ed25519", "n1", &[]);
    let blob = Certificate::from_openssh(&cert_text).unwrap();
    // Any flipped byte of the body breaks the signature (or the parse).
    for i in (0..blob.len()).step_by(7) {
        let mut b = blob.clone();
        b[i] ^= 0x01;
        assert!(Certificate::parse_and_verify(&b).is_err(), "flip at {i}");
    }
    // Every truncation is an error, never a panic.
    for n in 0..blob.len() {
        assert!(Certificate::parse_and_verify(&blob[..n]).is_err());
    }
    // A user certificate parses, with its type.
    keygen(d.path(), &["-q", "-t", "ed25519", "-N", "", "-f", "user"]);
    keygen(
        d.path(),
        &["-q", "-s", "ca", "-I", "alice", "-n", "alice", "user.pub"],
    );
    let ub = Certificate::from_openssh(
        &std::fs::read_to_string(d.path().join("user-cert.pub")).unwrap(),
    )
    .unwrap();
    assert_eq!(Certificate::parse_and_verify(&ub).unwrap().cert_type, 1);
}

#[test]
fn validity_and_critical_options_are_reported() {
    if !have_keygen() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (_, cert_text, _) = make(
        d.path(),
        "ed25519",
        "ed25519",
        "n1",
        &["-V", "20200101:20200102"],
    );
    let c = Certificate::parse_and_verify(&Certificate::from_openssh(&cert_text).unwrap()).unwrap();
    assert!(c.valid_before < 1_600_000_000 && c.valid_after < c.valid_before);
}

#[test]
fn encrypted_and_rsa_host_keys_are_refused_clearly() {
    if !have_keygen() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    keygen(
        d.path(),
        &["-q", "-t", "ed25519", "-N", "secret", "-f", "enc"],
    );
    let e = PrivateKey::from_openssh(&std::fs::read_to_string(d.path().join("enc")).unwrap())
        .unwrap_err();
    assert!(matches!(e, SshError::Encrypted(_)), "{e}");
    keygen(d.path(), &["-q", "-t", "rsa", "-N", "", "-f", "rsa"]);
    let e = PrivateKey::from_openssh(&std::fs::read_to_string(d.path().join("rsa")).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("ssh-rsa"), "{e}");
    assert!(PrivateKey::from_openssh("garbage").is_err());
}
