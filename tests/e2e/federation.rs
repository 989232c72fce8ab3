//! Federation between two writ deployments (two trust domains, each a server and an agent),
//! over `https_spiffe` bundle endpoints: each fetches the other's bundle, workloads that
//! federate get it from the Workload API, and a workload in one domain and one in the other
//! complete an mTLS handshake (rustls, in the mTLS example) with only what the Workload API gave
//! them. A CA prepared in one domain reaches the other before it signs; an endpoint that goes
//! down, or one that presents another identity, leaves the last good bundle in place.

use std::process::{Command, Stdio};
use std::time::Duration;

use writ_testkit::*;

use super::support::*;

fn federated(
    td: &str,
    port: u16,
    remote_port: u16,
    remote_td: &str,
    bootstrap: &str,
    id: &str,
) -> ServerOpts {
    ServerOpts {
        trust_domain: td.into(),
        extra: format!(
            "[federation.bundle_endpoint]\nlisten = \"127.0.0.1:{port}\"\n\
             [[federation.relationships]]\ntrust_domain = \"{remote_td}\"\n\
             bundle_endpoint_url = \"https://127.0.0.1:{remote_port}/\"\nprofile = \"https_spiffe\"\n\
             endpoint_spiffe_id = \"{id}\"\ntrust_domain_bundle = \"{bootstrap}\"\n"
        ),
        // A short CA life makes a short refresh hint (ttl / 12 = 15 s), so the other side
        // polls often enough for the test.
        ca_ttl: "3m".into(),
        ..ServerOpts::default()
    }
}

/// The X.509 authorities (PEM) of `td` the workload behind `a` holds, via `svid fetch`.
fn federated_pem(a: &TestAgent, td: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let r = a.cli(&["svid", "fetch", "--out-dir", dir.path().to_str().unwrap()]);
    if r.code != 0 {
        return None;
    }
    std::fs::read_to_string(dir.path().join(format!("federated/{td}.pem"))).ok()
}

#[test]
fn two_trust_domains_federate_and_their_workloads_do_mtls() {
    let work = tempfile::tempdir().unwrap();
    let (a_boot, b_boot) = (work.path().join("a.json"), work.path().join("b.json"));
    let (pa, pb) = (free_port(), free_port());
    let sa = TestServer::start(federated(
        "example.org",
        pa,
        pb,
        "other.org",
        b_boot.to_str().unwrap(),
        "spiffe://other.org/writ/server",
    ));
    let mut sb = TestServer::start(federated(
        "other.org",
        pb,
        pa,
        "example.org",
        a_boot.to_str().unwrap(),
        "spiffe://example.org/writ/server",
    ));
    // Each side is bootstrapped with the other's bundle (as an operator would hand it over).
    std::fs::write(&a_boot, sa.bundle().to_json().unwrap()).unwrap();
    std::fs::write(&b_boot, sb.bundle().to_json().unwrap()).unwrap();
    let aa = TestAgent::start(&sa, "a");
    let ab = TestAgent::start(&sb, "b");
    let uid = format!("unix:uid:{}", my_uid());
    for (s, id, parent, fed) in [
        (
            &sa,
            "spiffe://example.org/client",
            "spiffe://example.org/node/a",
            "other.org",
        ),
        (
            &sb,
            "spiffe://other.org/server",
            "spiffe://other.org/node/b",
            "example.org",
        ),
    ] {
        s.cli_json(&[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--parent-id",
            parent,
            "--selector",
            &uid,
            "--federates-with",
            fed,
        ]);
    }
    // Each workload gets the other domain's bundle from its own Workload API.
    let b_in_a = eventually(
        "example.org's workload has other.org's bundle",
        Duration::from_secs(60),
        || federated_pem(&aa, "other.org"),
    );
    eventually(
        "other.org's workload has example.org's bundle",
        Duration::from_secs(60),
        || federated_pem(&ab, "example.org"),
    );
    assert_eq!(
        b_in_a,
        sb.bundle().x509_pem(),
        "exactly other.org's authorities"
    );
    let recs = sa.cli_json(&["audit", "list", "--kind", "bundle.updated"]);
    assert!(
        !recs.as_array().unwrap().is_empty(),
        "bundle changes are journalled"
    );

    // mTLS across the trust domains with only what the Workload API gave each side.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _server = Kill(
        Command::new(demo())
            .args([
                "server",
                "--listen",
                &addr,
                "--allow",
                "spiffe://example.org/client",
            ])
            .env("SPIFFE_ENDPOINT_SOCKET", ab.endpoint())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("demo server listening", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).ok()
    });
    let o = Command::new(demo())
        .args([
            "client",
            "--connect",
            &addr,
            "--expect",
            "spiffe://other.org/server",
        ])
        .env("SPIFFE_ENDPOINT_SOCKET", aa.endpoint())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("hello spiffe://example.org/client"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // A CA prepared in other.org is in example.org's copy before it signs anything.
    let before = sb.bundle().x509_authorities;
    sb.cli_json(&["authority", "x509", "prepare"]);
    let new: Vec<Vec<u8>> = sb
        .bundle()
        .x509_authorities
        .into_iter()
        .filter(|c| !before.contains(c))
        .collect();
    assert_eq!(new.len(), 1, "one CA prepared");
    let new_pem = writ_core::pem::encode("CERTIFICATE", &new[0]);
    let has_new =
        |a: &TestAgent| federated_pem(a, "other.org").is_some_and(|p| p.contains(&new_pem));
    eventually(
        "the prepared CA reaches example.org",
        Duration::from_secs(90),
        || has_new(&aa).then_some(()),
    );

    // other.org's endpoint goes down: example.org keeps the last good bundle.
    sb.kill9();
    let failures = |s: &TestServer| s.log().matches("federated bundle not fetched").count();
    let before = failures(&sa);
    eventually("example.org notices", Duration::from_secs(60), || {
        (failures(&sa) > before).then_some(())
    });
    assert!(has_new(&aa), "last good bundle kept");
    let _ = sb.terminate();

    // An endpoint presenting another identity (example.org's own SVID, on other.org's port)
    // is refused at the handshake, and the last good bundle stays.
    let impostor = TestServer::start(ServerOpts {
        extra: format!("[federation.bundle_endpoint]\nlisten = \"127.0.0.1:{pb}\"\n"),
        ..ServerOpts::default()
    });
    let handshakes = |s: &TestServer| s.log().matches("TLS with 127.0.0.1").count();
    let before = handshakes(&sa);
    eventually("the impostor is refused", Duration::from_secs(120), || {
        (handshakes(&sa) > before).then_some(())
    });
    assert!(has_new(&aa), "last good bundle kept");
    drop(impostor);
}

/// `writ federation create|list|show|update|delete`: a relationship made at run time is
/// fetched at once, survives a restart, refuses bad input and duplicates; deleting it stops
/// the fetching but keeps the bundle.
#[test]
fn relationships_are_managed_at_run_time() {
    let work = tempfile::tempdir().unwrap();
    let pb_port = free_port();
    let sb = TestServer::start(ServerOpts {
        trust_domain: "other.org".into(),
        extra: format!("[federation.bundle_endpoint]\nlisten = \"127.0.0.1:{pb_port}\"\n"),
        ..ServerOpts::default()
    });
    let mut sa = TestServer::start(ServerOpts::default());
    let boot = work.path().join("other.json");
    std::fs::write(&boot, sb.bundle().to_json().unwrap()).unwrap();
    let url = format!("https://127.0.0.1:{pb_port}/");
    let create = |sa: &TestServer, extra: &[&str]| {
        let mut args = vec![
            "federation",
            "create",
            "--trust-domain",
            "other.org",
            "--bundle-endpoint-url",
            &url,
            "--endpoint-spiffe-id",
            "spiffe://other.org/writ/server",
        ];
        args.extend_from_slice(extra);
        sa.cli(&args)
    };
    // Without a first bundle there is nothing to authenticate the endpoint with.
    let r = create(&sa, &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--trust-domain-bundle"), "{}", r.stderr);
    let r = sa.cli(&[
        "federation",
        "create",
        "--trust-domain",
        "other.org",
        "--bundle-endpoint-url",
        "http://x/",
        "--endpoint-spiffe-id",
        "spiffe://other.org/writ/server",
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    create(&sa, &["--trust-domain-bundle", boot.to_str().unwrap()]).ok();
    let again = create(&sa, &["--trust-domain-bundle", boot.to_str().unwrap()]);
    assert!(
        again.code != 0 && again.stderr.contains("exists"),
        "{again:?}"
    );
    let shown = sa.cli_json(&["federation", "show", "other.org"]);
    assert_eq!(shown["source"], "api", "{shown}");
    assert!(shown["bundle_sequence"].as_u64().unwrap() > 0, "{shown}");
    // It survives a restart, and keeps fetching: a CA prepared there arrives here.
    sa.kill9();
    sa.spawn();
    let list = sa.cli_json(&["federation", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let before = sa.cli(&["bundle", "list", "--output", "json"]).ok().stdout;
    sb.cli_json(&["authority", "x509", "prepare"]);
    // The remote refresh hint is 5 min here: an update fetches at once.
    sa.cli(&[
        "federation",
        "update",
        "--trust-domain",
        "other.org",
        "--bundle-endpoint-url",
        &url,
        "--endpoint-spiffe-id",
        "spiffe://other.org/writ/server",
    ])
    .ok();
    eventually(
        "the prepared CA is fetched",
        Duration::from_secs(60),
        || {
            let now = sa.cli(&["bundle", "list", "--output", "json"]).ok().stdout;
            (now != before).then_some(())
        },
    );
    sa.cli(&["federation", "delete", "other.org"]).ok();
    assert!(sa
        .cli_json(&["federation", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    let gone = sa.cli(&["federation", "delete", "other.org"]);
    assert!(
        gone.code != 0 && gone.stderr.contains("no relationship"),
        "{gone:?}"
    );
    let kept = sa.cli(&["bundle", "list", "--output", "json"]).ok().stdout;
    assert!(kept.contains("other.org"), "the bundle stays: {kept}");
}
