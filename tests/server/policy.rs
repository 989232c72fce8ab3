//! Policy-as-code through the real binary: allow and deny for each action (agent X509 fetch,
//! agent JWT fetch, operator mints), denials journalled with the deciding policy, a broken
//! reload keeps the set in force and says why, a stricter reload withdraws an identity from a
//! connected workload, and no `[policy]` keeps today's behaviour.

use std::path::Path;
use std::time::Duration;
use writ_testkit::*;

const ALLOW_OWNED: &str = r#"
@id("permit-owned")
permit (principal is Writ::Workload, action in [Writ::Action::"mint_x509", Writ::Action::"mint_jwt"], resource)
when { principal.owner != "" };

@id("permit-operators")
permit (principal is Writ::Operator, action, resource) when { context.ttl <= 3600 };

@id("forbid-secret-audience")
forbid (principal, action == Writ::Action::"mint_jwt", resource)
when { context.audiences.contains("secret") };
"#;

fn server_with_policy(dir: &Path, text: &str) -> TestServer {
    std::fs::write(dir.join("writ.cedar"), text).unwrap();
    TestServer::start(ServerOpts {
        extra: format!(
            "[policy]\nfiles = [\"{}\"]\n",
            dir.join("writ.cedar").display()
        ),
        ..ServerOpts::default()
    })
}

fn entry(s: &TestServer, id: &str, owner: &str) -> String {
    let uid = format!("unix:uid:{}", my_uid());
    let mut args = vec![
        "entry",
        "create",
        "--spiffe-id",
        id,
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        &uid,
    ];
    if !owner.is_empty() {
        args.extend_from_slice(&["--owner", owner]);
    }
    s.cli_json(&args)["id"].as_str().unwrap().to_owned()
}

fn served(a: &TestAgent) -> Vec<String> {
    let r = a.cli(&["svid", "fetch", "--output", "json", "--timeout", "2s"]);
    if r.code != 0 {
        return Vec::new();
    }
    let mut v: Vec<String> = r.json()["svids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spiffe_id"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn every_mint_is_decided_by_policy_and_reloads_take_effect() {
    let pdir = tempfile::tempdir().unwrap();
    let s = server_with_policy(pdir.path(), ALLOW_OWNED);
    let a = TestAgent::start(&s, "a");
    entry(&s, "spiffe://example.org/owned", "team-web");
    let unowned = entry(&s, "spiffe://example.org/unowned", "");

    // X.509: the owned identity is served, the unowned one never reaches the agent.
    eventually(
        "the owned identity is served",
        Duration::from_secs(30),
        || (served(&a) == ["spiffe://example.org/owned"]).then_some(()),
    );
    // JWT: allowed audience, and a forbidden one with the deciding policy named.
    a.cli(&["jwt", "fetch", "--audience", "db"]).ok();
    let r = a.cli(&["jwt", "fetch", "--audience", "secret"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("forbid-secret-audience"), "{}", r.stderr);
    // Operators: within the TTL cap, and over it.
    s.cli_json(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/op",
        "--ttl",
        "10m",
    ]);
    let r = s.cli(&[
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/op",
        "--audience",
        "x",
        "--ttl",
        "2h",
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no policy permits"), "{}", r.stderr);
    // Denials are journalled with the request.
    let denied = s.cli_json(&["audit", "list", "--kind", "policy.denied"]);
    let denied = denied.as_array().unwrap();
    assert!(
        denied
            .iter()
            .any(|d| d["details"]["policies"][0] == "forbid-secret-audience"),
        "{denied:?}"
    );
    assert!(
        denied.iter().any(|d| d["actor"]["type"] == "operator"),
        "{denied:?}"
    );

    // check and show.
    let c = s.cli_json(&[
        "policy",
        "check",
        "--request",
        &format!(r#"{{"action": "mint_x509", "spiffe_id": "spiffe://example.org/unowned", "entry_id": "{unowned}"}}"#),
    ]);
    assert_eq!(c["decision"], "deny", "{c}");
    let show = s.cli_json(&["policy", "show"]);
    assert_eq!(show["configured"], true);
    let hash = show["hash"].as_str().unwrap().to_owned();
    let r = s.cli(&["policy", "check", "--request", "{not json"]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = s.cli(&[
        "policy",
        "check",
        "--request",
        r#"{"spiffe_id": "spiffe://example.org/x"}"#,
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("action"), "{}", r.stderr);

    // A broken file: refused, the set in force stays (and keeps serving), the log says why.
    std::fs::write(
        pdir.path().join("writ.cedar"),
        "permit(principal, action resource);",
    )
    .unwrap();
    eventually(
        "the broken reload is refused and logged",
        Duration::from_secs(30),
        || s.log().contains("policy reload refused").then_some(()),
    );
    assert!(s.log().contains("writ.cedar"), "the error names the file");
    assert_eq!(s.cli_json(&["policy", "show"])["hash"], hash.as_str());
    assert_eq!(served(&a), ["spiffe://example.org/owned"]);

    // A stricter valid set: the connected workload loses the identity at once.
    std::fs::write(
        pdir.path().join("writ.cedar"),
        "@id(\"permit-operators\")\npermit (principal is Writ::Operator, action, resource);\n",
    )
    .unwrap();
    eventually(
        "the workload loses its identity",
        Duration::from_secs(30),
        || served(&a).is_empty().then_some(()),
    );
    let r = a.cli(&["svid", "fetch", "--timeout", "2s"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.to_lowercase().contains("permission") || r.stderr.contains("no identity"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_server_with_no_policy_issues_as_before_and_a_bad_set_refuses_to_start() {
    let s = TestServer::start(ServerOpts::default());
    assert_eq!(s.cli_json(&["policy", "show"])["configured"], false);
    let c = s.cli_json(&[
        "policy",
        "check",
        "--request",
        r#"{"action": "mint_jwt", "spiffe_id": "spiffe://example.org/x", "audiences": ["a"]}"#,
    ]);
    assert_eq!(c["decision"], "allow");

    // `writ policy validate` names file, line and policy; the server refuses to start.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.cedar");
    std::fs::write(&bad, "@id(\"typo\")\npermit (principal is Writ::Workload, action, resource)\nwhen { principal.ownr == \"x\" };\n").unwrap();
    let r = cli(&["policy", "validate", bad.to_str().unwrap()], &[]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("bad.cedar:3") && r.stderr.contains("typo"),
        "{}",
        r.stderr
    );
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let bad_cfg = dir.path().join("server.toml");
    let cfg = cfg.replacen(
        "[ca]",
        &format!("[policy]\nfiles = [\"{}\"]\n[ca]", bad.display()),
        1,
    );
    std::fs::write(&bad_cfg, cfg).unwrap();
    let r = cli(
        &[
            "server",
            "run",
            "--check",
            "--config",
            bad_cfg.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("bad.cedar:3"), "{}", r.stderr);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
    let files: Vec<String> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".cedar"))
        .collect();
    let mut args = vec!["policy", "validate"];
    args.extend(files.iter().map(String::as_str));
    cli(&args, &[]).ok();
    let schema = cli(&["policy", "schema"], &[]).ok().stdout;
    assert!(schema.contains("namespace Writ"));
}
