//! The `sshpop` node attestor end to end, with keys and certificates made by the real
//! `ssh-keygen`: a node with a host certificate from the configured CA attests, gets the
//! SPIFFE ID and selectors of its host key and principals, and its workloads are served
//! through a node alias entry on a principal; a certificate from another CA is refused.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use writ_testkit::*;

fn keygen(dir: &Path, args: &[&str]) {
    let o = Command::new("ssh-keygen")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("ssh-keygen (.ci/run installs openssh-client)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A CA, and a host key certified by it for `principals`, in `dir`.
fn node_keys(dir: &Path, principals: &str) {
    keygen(dir, &["-q", "-t", "ed25519", "-N", "", "-f", "ca"]);
    keygen(dir, &["-q", "-t", "ed25519", "-N", "", "-f", "host"]);
    keygen(
        dir,
        &[
            "-q", "-s", "ca", "-I", "node", "-h", "-n", principals, "host.pub",
        ],
    );
}

fn attestor(dir: &Path) -> String {
    format!(
        "[node_attestor.sshpop]\nhost_key_path = \"{}\"\nhost_cert_path = \"{}\"\n",
        dir.join("host").display(),
        dir.join("host-cert.pub").display()
    )
}

#[test]
fn a_certified_host_key_attests_and_its_workloads_are_served() {
    let keys = tempfile::tempdir().unwrap();
    node_keys(keys.path(), "node-1.example.org,rack-7");
    let s = TestServer::start(ServerOpts {
        extra: format!(
            "[node_attestor.sshpop]\ncert_authorities_path = \"{}\"\n",
            keys.path().join("ca.pub").display()
        ),
        ..ServerOpts::default()
    });
    // The node alias and a workload under it, before the agent exists.
    s.cli_json(&[
        "entry",
        "create",
        "--node",
        "--spiffe-id",
        "spiffe://example.org/rack-7",
        "--selector",
        "sshpop:principal:rack-7",
    ]);
    s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/rack-7/web",
        "--parent-id",
        "spiffe://example.org/rack-7",
        "--selector",
        &format!("unix:uid:{}", my_uid()),
    ]);
    let a = TestAgent::start_with_attestor(&s, &attestor(keys.path()));

    // Agent ID from the host key, selectors from the principals and the CA.
    let fp = |file: &str| {
        let line = std::fs::read_to_string(keys.path().join(file)).unwrap();
        writ_ca::ssh::PublicKey::from_openssh(&line)
            .unwrap()
            .fingerprint()
    };
    let nodes = s.cli_json(&["node", "list"]);
    let node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| {
            n["spiffe_id"]
                .as_str()
                .unwrap()
                .contains("/writ/agent/sshpop/")
        })
        .expect("an sshpop node");
    assert_eq!(
        node["spiffe_id"],
        format!("spiffe://example.org/writ/agent/sshpop/{}", fp("host.pub"))
    );
    let sels: Vec<String> = node["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            format!(
                "{}:{}",
                v["type"].as_str().unwrap(),
                v["value"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "sshpop:principal:node-1.example.org".to_owned(),
        "sshpop:principal:rack-7".to_owned(),
        format!("sshpop:ca:fingerprint:{}", fp("ca.pub")),
    ] {
        assert!(sels.contains(&want), "{want} not in {sels:?}");
    }
    let got = eventually("workload served", Duration::from_secs(30), || {
        let r = a.cli(&["svid", "fetch", "--output", "json"]);
        (r.code == 0).then(|| r.json())
    });
    assert_eq!(
        got["svids"][0]["spiffe_id"],
        "spiffe://example.org/rack-7/web"
    );
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let trusted = tempfile::tempdir().unwrap();
    node_keys(trusted.path(), "n1");
    let other = tempfile::tempdir().unwrap();
    node_keys(other.path(), "n1");
    let s = TestServer::start(ServerOpts {
        extra: format!(
            "[node_attestor.sshpop]\ncert_authorities = [\"{}\"]\n",
            std::fs::read_to_string(trusted.path().join("ca.pub"))
                .unwrap()
                .trim()
        ),
        ..ServerOpts::default()
    });
    let d = tempfile::tempdir().unwrap();
    let bundle = d.path().join("bootstrap.pem");
    std::fs::write(&bundle, s.bundle().x509_pem()).unwrap();
    let config = d.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"example.org\"\nserver_address = \"{}\"\nsocket_path = \"{}\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\ntrust_bundle_path = \"{}\"\n{}",
            s.addr(),
            d.path().join("public/api.sock").display(),
            d.path().join("private/admin.sock").display(),
            d.path().join("data").display(),
            bundle.display(),
            attestor(other.path()),
        ),
    )
    .unwrap();
    let log = d.path().join("agent.log");
    let mut child = Command::new(writ_bin())
        .args(["agent", "run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let seen = eventually("the refusal is logged", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("not a configured sshpop CA").then_some(text)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(!seen.contains("attested"), "{seen}");
    let nodes = s.cli_json(&["node", "list"]);
    assert!(nodes.as_array().unwrap().is_empty(), "{nodes}");
}
