//! Federated bundles through the real server: what cannot be served is refused at parse time
//! (issue 10: attacks on writ's core parsers, replayed against the real processes).
//!
//! A federated bundle that parsed but could not be written back out (an Ed25519 CA, as `kty`
//! `OKP`, or any key type the bundle writer did not know) was stored by the admin API's
//! SetFederatedBundle; from then on every serialization of the federated set failed:
//! ListFederatedBundles, and the WatchBundles stream of every agent, which ended its session,
//! reconnected and failed again. Now Ed25519 CAs are published as RFC 8037 `OKP` keys and keys
//! that cannot be published are refused at parse time, before anything is stored.

use base64::engine::general_purpose::STANDARD;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use tonic::Code;
use writ_proto::workload as wl;
use writ_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use writ_testkit::*;

/// A self-signed CA made by the `openssl` command with `genpkey -algorithm <alg>`; returns the
/// certificate DER and the raw public key (the end of the SPKI).
fn openssl_ca(dir: &Path, alg: &str) -> (Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "openssl {args:?} failed (.ci/run installs openssl)");
    };
    let k = format!("{alg}.key");
    let c = format!("{alg}.der");
    let p = format!("{alg}.pub");
    run(&["genpkey", "-algorithm", alg, "-out", &k]);
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &k,
        "-subj",
        &format!("/CN={alg} CA"),
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-outform",
        "DER",
        "-out",
        &c,
    ]);
    run(&["pkey", "-in", &k, "-pubout", "-outform", "DER", "-out", &p]);
    (
        std::fs::read(dir.join(c)).unwrap(),
        std::fs::read(dir.join(p)).unwrap(),
    )
}

/// An RFC 8037 JWK Set holding one `x509-svid` OKP key for the certificate.
fn okp_bundle(cert: &[u8], spki: &[u8], crv: &str, x_len: usize) -> String {
    json!({"keys": [{
        "use": "x509-svid", "kty": "OKP", "crv": crv,
        "x": URL_SAFE_NO_PAD.encode(&spki[spki.len() - x_len..]),
        "x5c": [STANDARD.encode(cert)],
    }], "spiffe_sequence": 1})
    .to_string()
}

async fn workload_client(a: &TestAgent) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    SpiffeWorkloadApiClient::new(
        writ_server::client::unix_channel(&a.socket())
            .await
            .unwrap(),
    )
}

/// The X.509 bundles the agent's Workload API gives this process, by trust domain ID.
async fn x509_bundles(a: &TestAgent) -> Option<std::collections::HashMap<String, Vec<u8>>> {
    let mut c = workload_client(a).await;
    let mut r = tonic::Request::new(wl::X509BundlesRequest {});
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut st = c.fetch_x509_bundles(r).await.ok()?.into_inner();
    st.message().await.ok().flatten().map(|m| m.bundles)
}

#[tokio::test(flavor = "multi_thread")]
async fn ed25519_federated_bundle_is_served_and_unpublishable_ones_are_refused() {
    let s = TestServer::start(ServerOpts::default());
    let a = TestAgent::start(&s, "a");
    let tmp = tempfile::tempdir().unwrap();
    let (ed_cert, ed_spki) = openssl_ca(tmp.path(), "ed25519");
    let (ed448_cert, ed448_spki) = openssl_ca(tmp.path(), "ed448");

    // A workload of this process that federates with the three trust domains used below.
    s.cli_json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/fed",
        "--parent-id",
        "spiffe://example.org/node/a",
        "--selector",
        &format!("unix:uid:{}", my_uid()),
        "--federates-with",
        "other.org",
        "--federates-with",
        "bad.org",
        "--federates-with",
        "third.org",
    ]);

    // The attack, raw through the admin API (the CLI checks locally first): a bundle with a CA
    // key that cannot be published (Ed448). Refused, and nothing is stored.
    let mut admin = writ_server::client::admin_client(&s.socket())
        .await
        .unwrap();
    let err = admin
        .set_federated_bundle(writ_proto::v1::Bundle {
            trust_domain: "bad.org".into(),
            spiffe_bundle_json: okp_bundle(&ed448_cert, &ed448_spki, "Ed448", 57).into_bytes(),
        })
        .await
        .expect_err("an Ed448 CA bundle must be refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("Ed448"), "{}", err.message());
    // The same certificate dressed up as an Ed25519 key: refused, naming the real algorithm.
    let lie = json!({"keys": [{
        "use": "x509-svid", "kty": "OKP", "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode([7u8; 32]), "x5c": [STANDARD.encode(&ed448_cert)],
    }]});
    let err = admin
        .set_federated_bundle(writ_proto::v1::Bundle {
            trust_domain: "bad.org".into(),
            spiffe_bundle_json: lie.to_string().into_bytes(),
        })
        .await
        .expect_err("a CA key that cannot be published must be refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("1.3.101.113"), "{}", err.message());
    // Through the CLI too, as PEM: a clear error, exit code 2, nothing stored.
    let pem448 = tmp.path().join("ed448.pem");
    std::fs::write(&pem448, writ_core::pem::encode("CERTIFICATE", &ed448_cert)).unwrap();
    let r = s.cli(&[
        "bundle",
        "set",
        "--trust-domain",
        "bad.org",
        "--file",
        pem448.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("cannot be published"), "{}", r.stderr);
    let list = s.cli_json(&["bundle", "list"]);
    assert_eq!(list, json!([]), "nothing stored: {list}");

    // An Ed25519 CA written as RFC 8037 does: stored, listed and served as OKP.
    let ed_file = tmp.path().join("ed25519.json");
    std::fs::write(&ed_file, okp_bundle(&ed_cert, &ed_spki, "Ed25519", 32)).unwrap();
    s.cli(&[
        "bundle",
        "set",
        "--trust-domain",
        "other.org",
        "--file",
        ed_file.to_str().unwrap(),
    ])
    .ok();
    // And the same, raw, through the admin API.
    admin
        .set_federated_bundle(writ_proto::v1::Bundle {
            trust_domain: "other.org".into(),
            spiffe_bundle_json: okp_bundle(&ed_cert, &ed_spki, "Ed25519", 32).into_bytes(),
        })
        .await
        .unwrap();
    let list = s.cli_json(&["bundle", "list"]);
    let keys = &list[0]["bundle"]["keys"];
    assert_eq!(list[0]["trust_domain"], "other.org", "{list}");
    assert_eq!(keys[0]["kty"], "OKP", "{list}");
    assert_eq!(keys[0]["crv"], "Ed25519", "{list}");
    assert_eq!(keys[0]["x5c"][0], STANDARD.encode(&ed_cert), "{list}");

    // The agent's bundle stream keeps working: it delivers the Ed25519 CA, and a bundle set
    // after it (an EC CA for third.org) reaches the workload too.
    let third = tmp.path().join("third.pem");
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let third_der = p.self_signed(&ec).unwrap().der().to_vec();
    std::fs::write(&third, writ_core::pem::encode("CERTIFICATE", &third_der)).unwrap();
    s.cli(&[
        "bundle",
        "set",
        "--trust-domain",
        "third.org",
        "--file",
        third.to_str().unwrap(),
    ])
    .ok();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let bundles = loop {
        if let Some(b) = x509_bundles(&a).await {
            if b.contains_key("spiffe://other.org") && b.contains_key("spiffe://third.org") {
                break b;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never served both federated bundles; agent log:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(bundles["spiffe://other.org"], ed_cert);
    assert_eq!(bundles["spiffe://third.org"], third_der);
    assert!(!bundles.contains_key("spiffe://bad.org"));
    // The agent's session with the server never failed on a bundle.
    let log = a.log();
    assert!(
        !log.contains("unsupported public key"),
        "agent saw a bundle error:\n{log}"
    );
    let v: Value = s.cli_json(&["bundle", "list"]);
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
}
