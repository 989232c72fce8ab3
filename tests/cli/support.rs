//! Helpers shared by the modules of this suite.
#![allow(dead_code)]

use std::path::Path;
use std::path::PathBuf;
use writ_testkit::*;

/// Every command path, for the generated CLI reference.
pub(crate) const COMMANDS: &[&[&str]] = &[
    &[],
    &["server", "run"],
    &["server", "healthcheck"],
    &["agent", "run"],
    &["agent", "healthcheck"],
    &["dev"],
    &["token", "generate"],
    &["entry", "create"],
    &["entry", "show"],
    &["entry", "list"],
    &["entry", "update"],
    &["entry", "delete"],
    &["node", "list"],
    &["node", "show"],
    &["node", "evict"],
    &["node", "ban"],
    &["bundle", "show"],
    &["bundle", "list"],
    &["bundle", "set"],
    &["bundle", "delete"],
    &["x509", "mint"],
    &["x509", "revoke"],
    &["jwt", "mint"],
    &["jwt", "revoke"],
    &["jwt", "fetch"],
    &["jwt", "validate"],
    &["svid", "fetch"],
    &["svid", "watch"],
    &["policy", "validate"],
    &["policy", "check"],
    &["policy", "show"],
    &["policy", "schema"],
    &["authority", "x509"],
    &["authority", "jwt"],
    &["audit", "list"],
    &["audit", "show"],
    &["audit", "trace"],
    &["audit", "verify"],
    &["audit", "export"],
    &["federation", "create"],
    &["federation", "update"],
    &["federation", "list"],
    &["federation", "show"],
    &["federation", "delete"],
    &["wit", "fetch"],
    &["wit", "bundle"],
    &["wit", "proof"],
    &["wit", "validate"],
    &["task", "start"],
    &["task", "end"],
    &["task", "list"],
    &["task", "show"],
    &["helper"],
];

/// The subcommand names in the `Commands:` section of a help text.
pub(crate) fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

pub(crate) fn generated_cli_reference() -> String {
    let mut doc = String::from(
        "# CLI reference\n\nGenerated from `writ --help` of every command; `tests/cli/reference.rs` fails when this file and\nthe binary disagree. Regenerate with `WRIT_UPDATE_DOCS=1 cargo test --test cli`.\n",
    );
    for path in COMMANDS {
        let mut args: Vec<&str> = path.to_vec();
        args.push("--help");
        let r = cli(&args, &[]).ok();
        let title = if path.is_empty() {
            "writ".to_owned()
        } else {
            format!("writ {}", path.join(" "))
        };
        doc += &format!("\n## `{title}`\n\n```text\n{}\n```\n", r.stdout.trim_end());
    }
    doc
}

pub(crate) fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}
