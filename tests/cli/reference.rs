//! The command tree, usage errors and docs/cli.md kept in sync with `--help`.

use super::support::*;
use writ_testkit::*;

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

#[test]
fn every_command_is_in_the_reference() {
    for top in subcommands(&cli(&["--help"], &[]).ok().stdout) {
        let subs = subcommands(&cli(&[&top, "--help"], &[]).ok().stdout);
        if subs.is_empty() {
            assert!(
                COMMANDS.iter().any(|c| c == &[top.as_str()]),
                "`writ {top}` is missing from COMMANDS (tests/cli/support.rs)"
            );
        }
        for sub in subs {
            assert!(
                COMMANDS.iter().any(|c| c == &[top.as_str(), sub.as_str()]),
                "`writ {top} {sub}` is missing from COMMANDS (tests/cli/support.rs)"
            );
        }
    }
}

#[test]
fn cli_reference_is_in_sync() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
    let want = generated_cli_reference();
    if std::env::var_os("WRIT_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/cli.md is out of date: run WRIT_UPDATE_DOCS=1 cargo test --test cli"
    );
}
