//! The policy engine on its own: the shipped schema, loading and refusing policy files, and
//! every rule of `examples/policies/` exercised by an allowed and a denied request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use writ_policy::{Action, MintRequest, PolicyBundle, PolicyError, Principal};

/// 2026-11-25 (a Wednesday) 03:00 UTC and 12:00 UTC.
const NIGHT: i64 = 1_795_575_600;
const NOON: i64 = NIGHT + 9 * 3600;

fn examples() -> PolicyBundle {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
    let files = writ_policy::policy_files(&[], Some(&dir)).unwrap();
    assert_eq!(files.len(), 2);
    PolicyBundle::load(&files).unwrap()
}

fn workload(owner: &str, attestor: &str) -> Principal {
    Principal::Workload {
        entry_id: "e1".into(),
        spiffe_id: "spiffe://example.org/web".into(),
        parent_id: "spiffe://example.org/node/a".into(),
        selectors: vec!["unix:uid:1000".into()],
        owner: owner.into(),
        purpose: "shop".into(),
        expires_at: None,
        break_glass: false,
        break_glass_reason: String::new(),
        node_id: "spiffe://example.org/writ/agent/x509pop/abc".into(),
        node_attestor: attestor.into(),
        node_selectors: vec![],
    }
}

fn req(action: Action, p: Principal, id: &str, ttl: i64, aud: &[&str], now: i64) -> MintRequest {
    MintRequest {
        action,
        principal: p,
        spiffe_id: id.into(),
        ttl,
        audiences: aud.iter().map(|a| a.to_string()).collect(),
        now,
        purpose: String::new(),
    }
}

#[test]
fn the_shipped_schema_parses_and_the_examples_validate() {
    let _ = writ_policy::schema::schema();
    let b = examples();
    assert!(b.ids().contains(&"guardrail-prod-strong-nodes".to_owned()));
    assert_eq!(b.hash().len(), 64);
}

#[test]
fn requests_as_writ_builds_them_conform_to_the_schema() {
    // `decide` skips request-time validation; this is what makes that safe.
    for p in [workload("team", "x509pop"), Principal::Operator { uid: 7 }] {
        for a in [
            Action::MintX509,
            Action::MintJwt,
            Action::MintWit,
            Action::StartTask,
        ] {
            req(a, p.clone(), "spiffe://example.org/a/b", 60, &["x"], NOON)
                .check_against_schema()
                .unwrap();
        }
    }
}

#[test]
fn every_example_rule_allows_and_denies() {
    let b = examples();
    let web = "spiffe://example.org/web";
    let decide = |r: MintRequest| r.decide(&b);

    // permit-owned-workloads
    let d = decide(req(
        Action::MintX509,
        workload("team-web", "x509pop"),
        web,
        3600,
        &[],
        NOON,
    ));
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policies, ["permit-owned-workloads"]);
    let d = decide(req(
        Action::MintX509,
        workload("", "x509pop"),
        web,
        3600,
        &[],
        NOON,
    ));
    assert!(
        !d.allowed && d.policies.is_empty(),
        "no owner, no permit: {d:?}"
    );

    // permit-operators-short
    let op = Principal::Operator { uid: 0 };
    assert!(decide(req(Action::MintJwt, op.clone(), web, 600, &["a"], NOON)).allowed);
    assert!(!decide(req(Action::MintJwt, op, web, 7200, &["a"], NOON)).allowed);

    // forbid-expired-entries
    let mut p = workload("team-web", "x509pop");
    if let Principal::Workload { expires_at, .. } = &mut p {
        *expires_at = Some(NOON - 1);
    }
    let d = decide(req(Action::MintX509, p, web, 60, &[], NOON));
    assert!(!d.allowed);
    assert_eq!(d.policies, ["forbid-expired-entries"]);

    // cap-ttl-team-batch
    let batch = "spiffe://example.org/batch/job";
    assert!(
        decide(req(
            Action::MintX509,
            workload("team-batch", "x509pop"),
            batch,
            900,
            &[],
            NOON
        ))
        .allowed
    );
    let d = decide(req(
        Action::MintX509,
        workload("team-batch", "x509pop"),
        batch,
        901,
        &[],
        NOON,
    ));
    assert_eq!(
        (d.allowed, d.policies),
        (false, vec!["cap-ttl-team-batch".to_owned()])
    );

    // jwt-audiences-payments
    let pay = "spiffe://example.org/payments/api";
    assert!(
        decide(req(
            Action::MintJwt,
            workload("team-pay", "x509pop"),
            pay,
            300,
            &["ledger"],
            NOON
        ))
        .allowed
    );
    let d = decide(req(
        Action::MintJwt,
        workload("team-pay", "x509pop"),
        pay,
        300,
        &["ledger", "crm"],
        NOON,
    ));
    assert_eq!(d.policies, ["jwt-audiences-payments"]);
    assert!(!d.allowed);

    // break-glass-out-of-hours
    let mut bg = workload("", "x509pop");
    if let Principal::Workload {
        break_glass,
        break_glass_reason,
        owner,
        ..
    } = &mut bg
    {
        *break_glass = true;
        *break_glass_reason = "INC-1".into();
        *owner = "oncall".into();
    }
    assert!(decide(req(Action::MintX509, bg.clone(), web, 60, &[], NIGHT)).allowed);
    let d = decide(req(Action::MintX509, bg, web, 60, &[], NOON));
    assert_eq!(d.policies, ["break-glass-out-of-hours"]);

    // guardrail-prod-strong-nodes: a forbid that the permit cannot override.
    let prod = "spiffe://example.org/prod/db";
    assert!(
        decide(req(
            Action::MintX509,
            workload("team-db", "x509pop"),
            prod,
            60,
            &[],
            NOON
        ))
        .allowed
    );
    let d = decide(req(
        Action::MintX509,
        workload("team-db", "join_token"),
        prod,
        60,
        &[],
        NOON,
    ));
    assert_eq!(
        (d.allowed, d.policies),
        (false, vec!["guardrail-prod-strong-nodes".to_owned()])
    );

    // guardrail-own-trust-domain
    let d = decide(req(
        Action::MintX509,
        workload("team-web", "x509pop"),
        "spiffe://other.org/web",
        60,
        &[],
        NOON,
    ));
    assert_eq!(d.policies, ["guardrail-own-trust-domain"]);

    // permit-short-tasks-with-purpose
    let task = "spiffe://example.org/web/task/0123456789abcdef0123456789abcdef";
    let start = |owner: &str, ttl: i64, purpose: &str| {
        let mut r = req(
            Action::StartTask,
            workload(owner, "x509pop"),
            task,
            ttl,
            &[],
            NOON,
        );
        r.purpose = purpose.into();
        decide(r)
    };
    let d = start("team-web", 600, "summarise ticket 42");
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policies, ["permit-short-tasks-with-purpose"]);
    for (owner, ttl, purpose) in [
        ("team-web", 3600, "long"),
        ("", 60, "no owner"),
        ("team-web", 60, ""),
    ] {
        let d = start(owner, ttl, purpose);
        assert!(
            !d.allowed && d.policies.is_empty(),
            "{owner} {ttl} {purpose}: {d:?}"
        );
    }
}

#[test]
fn bad_files_are_refused_naming_file_line_and_policy() {
    let e = PolicyBundle::from_sources(&[(
        "bad.cedar".into(),
        "permit(principal, action, resource);\n\npermit(principal action, resource);\n".into(),
    )])
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, PolicyError::Parse { .. }), "{msg}");
    assert!(msg.contains("bad.cedar") && msg.contains("line 3"), "{msg}");

    let e = PolicyBundle::from_sources(&[(
        "typo.cedar".into(),
        "// first\n@id(\"uses-unknown\")\npermit(principal is Writ::Workload, action, resource)\nwhen { principal.ownr == \"x\" };\n".into(),
    )])
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, PolicyError::Invalid { .. }), "{msg}");
    assert!(
        msg.contains("typo.cedar:4") && msg.contains("uses-unknown"),
        "{msg}"
    );

    let e = PolicyBundle::from_sources(&[(
        "dup.cedar".into(),
        "@id(\"a\")\npermit(principal, action, resource);\n@id(\"a\")\nforbid(principal, action, resource);\n".into(),
    )])
    .unwrap_err();
    assert!(matches!(e, PolicyError::DuplicateId(_)), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.cedar");
    std::fs::write(&big, vec![b' '; (writ_policy::MAX_FILE_BYTES + 1) as usize]).unwrap();
    let e = PolicyBundle::load(&[big]).unwrap_err();
    assert!(e.to_string().contains("over the limit"), "{e}");
    assert!(matches!(
        PolicyBundle::from_sources(&[]),
        Err(PolicyError::Empty)
    ));
}
