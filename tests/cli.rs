//! The `writ` binary's command tree and argument validation, without a server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::cli;

#[test]
fn help_lists_the_contract_command_tree() {
    let r = cli(&["--help"], &[]).ok();
    for c in [
        "server", "agent", "dev", "token", "entry", "node", "bundle", "x509", "jwt", "svid",
        "helper",
    ] {
        assert!(r.stdout.contains(c), "missing {c} in help:\n{}", r.stdout);
    }
    let r = cli(&["entry", "--help"], &[]).ok();
    for c in ["create", "show", "list", "update", "delete"] {
        assert!(r.stdout.contains(c));
    }
}

#[test]
fn bad_values_are_usage_errors_naming_the_problem() {
    let sock = std::path::Path::new("/nonexistent/admin.sock");
    for (args, needle) in [
        (
            vec![
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://td/a/../b",
                "--parent-id",
                "spiffe://td/p",
                "--selector",
                "unix:uid:1",
            ],
            "`.` or `..`",
        ),
        (
            vec![
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://td/a",
                "--parent-id",
                "spiffe://td/p",
                "--selector",
                "unix",
            ],
            "type:value",
        ),
        (
            vec![
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://td/a",
                "--parent-id",
                "spiffe://td/p",
                "--selector",
                "unix:uid:1",
                "--x509-ttl",
                "0s",
            ],
            "greater than zero",
        ),
        (
            vec![
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://td/a",
                "--parent-id",
                "spiffe://td/p",
                "--selector",
                "unix:uid:1",
                "--jwt-ttl",
                "5x",
            ],
            "not a duration",
        ),
        (
            vec!["token", "generate", "--spiffe-id", "SPIFFE://td/x"],
            "spiffe://",
        ),
        (vec!["bundle", "delete", "TD"], "invalid character"),
        (vec!["node", "ban", "not-an-id"], "spiffe://"),
    ] {
        let r = cli(&args, &[("WRIT_SERVER_SOCKET", sock)]);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(needle),
            "{args:?}: stderr {} lacks {needle}",
            r.stderr
        );
    }
}

#[test]
fn unreachable_server_is_an_operation_failure() {
    let sock = std::path::Path::new("/nonexistent/admin.sock");
    let r = cli(&["entry", "list"], &[("WRIT_SERVER_SOCKET", sock)]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("admin socket"), "{}", r.stderr);
    assert_eq!(
        r.stderr.lines().count(),
        1,
        "one line, no backtrace: {}",
        r.stderr
    );
}
