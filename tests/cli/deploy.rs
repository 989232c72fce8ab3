//! deploy/: example configs load, manifests parse, systemd units are hardened.

use super::support::*;
use writ_testkit::*;

#[test]
fn example_configs_load() {
    for (kind, file) in [
        ("server", "config/server.toml"),
        ("agent", "config/agent.toml"),
    ] {
        let p = deploy().join(file);
        let r = cli(
            &[kind, "run", "--config", p.to_str().unwrap(), "--check"],
            &[],
        );
        assert_eq!(r.code, 0, "{file}: {}", r.stderr);
        assert!(r.stdout.contains("is valid"));
    }
    let helper: toml::Value =
        toml::from_str(&std::fs::read_to_string(deploy().join("config/helper.toml")).unwrap())
            .unwrap();
    assert!(helper.get("out_dir").is_some());
    // --check refuses a bad config with one line naming the key.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(deploy().join("config/server.toml"))
            .unwrap()
            .replace("ec-p256", "rsa-1024"),
    )
    .unwrap();
    let r = cli(
        &[
            "server",
            "run",
            "--config",
            bad.to_str().unwrap(),
            "--check",
        ],
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("ca.key_type"), "{}", r.stderr);
}

#[test]
fn kubernetes_manifests_parse_and_embed_valid_configs() {
    let dir = tempfile::tempdir().unwrap();
    let mut kinds = Vec::new();
    // The manifests, and the HA variant (three servers on PostgreSQL) in `ha/`.
    let mut files = Vec::new();
    for d in [deploy().join("kubernetes"), deploy().join("kubernetes/ha")] {
        for f in std::fs::read_dir(d).unwrap() {
            let path = f.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    assert!(files.iter().any(|p| p.ends_with("ha/server.yaml")));
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = yaml_rust2::YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for d in docs {
            let kind = d["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: document without kind", path.display()))
                .to_owned();
            assert!(
                d["apiVersion"].as_str().is_some(),
                "{}: {kind} without apiVersion",
                path.display()
            );
            assert!(
                d["metadata"]["name"].as_str().is_some(),
                "{}: {kind} without a name",
                path.display()
            );
            if kind == "ConfigMap" {
                for (k, v) in d["data"].as_hash().into_iter().flatten() {
                    let key = k.as_str().unwrap();
                    let which = match key {
                        "server.toml" => "server",
                        "agent.toml" => "agent",
                        _ => continue,
                    };
                    let p = dir.path().join(key);
                    std::fs::write(&p, v.as_str().unwrap()).unwrap();
                    let r = cli(
                        &[which, "run", "--config", p.to_str().unwrap(), "--check"],
                        &[],
                    );
                    assert_eq!(r.code, 0, "{} {key}: {}", path.display(), r.stderr);
                }
            }
            kinds.push(kind);
        }
    }
    for k in [
        "Namespace",
        "StatefulSet",
        "DaemonSet",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} among {kinds:?}");
    }
}

#[test]
fn systemd_units_are_hardened_and_check_their_config() {
    for (unit, cmd) in [
        ("writ-server.service", "server run"),
        ("writ-agent.service", "agent run"),
    ] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(unit)).unwrap();
        for section in ["[Unit]", "[Service]", "[Install]"] {
            assert!(text.contains(section), "{unit}: no {section}");
        }
        let exec = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert!(
            exec.contains(cmd) && exec.contains("--config"),
            "{unit}: {exec}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("ExecStartPre=") && l.contains("--check")),
            "{unit}"
        );
        for hardening in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "RuntimeDirectory=",
            "StateDirectory=",
        ] {
            assert!(text.contains(hardening), "{unit}: no {hardening}");
        }
    }
    let server = std::fs::read_to_string(deploy().join("systemd/writ-server.service")).unwrap();
    assert!(server.contains("DynamicUser=yes"));
    // Admin sockets live in 0700 directories: systemd gives every RuntimeDirectory the one
    // RuntimeDirectoryMode, so a 0755 unit must not list the private directory (issue 10, #14).
    assert!(server.contains("RuntimeDirectoryMode=0700"));
    let agent = std::fs::read_to_string(deploy().join("systemd/writ-agent.service")).unwrap();
    let runtime = agent
        .lines()
        .find(|l| l.starts_with("RuntimeDirectory="))
        .unwrap();
    assert!(!runtime.contains("private"), "{runtime}");
    // Descriptor exhaustion: both units raise the limit (issue 10, #7).
    for unit in [&server, &agent] {
        assert!(unit.lines().any(|l| l.starts_with("LimitNOFILE=")));
    }
    let dockerfile = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    assert!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count()
            >= 2,
        "multi-stage build"
    );
    assert!(
        dockerfile.contains("USER "),
        "the image does not run as root by default"
    );
}
