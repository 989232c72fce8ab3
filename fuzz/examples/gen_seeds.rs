//! Writes the seed corpora in `fuzz/seeds/<target>/`: small valid inputs made by writ's own
//! code (and by the `openssl` command where another producer matters), so fuzzing starts past
//! the JSON, base64, DER and signature layers.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds   # from the repository root
//! ```
//!
//! Existing seed files are replaced; the fixture keys in `src/lib.rs` keep JWT and x509pop seeds
//! valid for the targets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
};
use rustls_pki_types::CertificateDer;
use serde_json::json;
use writ_ca::x509::build_ca_cert;
use writ_ca::{KeyType, PrivateKey};
use writ_core::{Bundle, JwtAuthority, PublicJwk};
use writ_fuzz::{jwt_signer, node_ca, node_ca_params, node_key, td, NOW};

struct Seeds {
    root: PathBuf,
}

impl Seeds {
    fn put(&self, target: &str, name: &str, data: impl AsRef<[u8]>) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }

    /// A seed behind a one-byte mode prefix.
    fn put_mode(&self, target: &str, name: &str, mode: u8, data: impl AsRef<[u8]>) {
        let mut v = vec![mode];
        v.extend_from_slice(data.as_ref());
        self.put(target, name, v);
    }
}

/// Runs `openssl` in `dir`; false when it is missing or fails (those seeds are then skipped).
fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn openssl_ca(dir: &Path, genpkey: &[&str]) -> Option<Vec<u8>> {
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey);
    args.extend_from_slice(&["-out", "k.pem"]);
    (openssl(dir, &args)
        && openssl(
            dir,
            &[
                "req", "-x509", "-new", "-key", "k.pem", "-subj", "/CN=ca", "-days", "30",
                "-outform", "DER", "-out", "c.der",
            ],
        ))
    .then(|| std::fs::read(dir.join("c.der")).unwrap())
}

fn spki(kp: &KeyPair) -> Vec<u8> {
    use rcgen::PublicKeyData;
    kp.subject_public_key_info()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let s = Seeds { root };
    let tmp = std::env::temp_dir().join(format!("writ-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();

    // spiffe_id and selector: plain strings.
    for (i, id) in [
        "spiffe://example.org/ns/prod/sa/web",
        "spiffe://example.org",
        "spiffe://a-b.c_d.example/x/y.z/_-~",
        "spiffe://example.org/writ/agent/x509pop/0123abcd",
    ]
    .iter()
    .enumerate()
    {
        s.put("spiffe_id", &format!("id{i}"), id);
    }
    for (i, sel) in [
        "unix:uid:1000",
        "unix:sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "x509pop:subject:cn:node-1",
        "x509pop:san:uri:spiffe://example.org/x",
        "k8s:ns:default",
    ]
    .iter()
    .enumerate()
    {
        s.put("selector", &format!("sel{i}"), sel);
    }

    // bundle_json: writ's own bundle shape, the JWT part, PEM, and CAs made by openssl.
    let ca_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let (ca256, _) = build_ca_cert(&td(), &ca_key, 86_400, NOW, None).unwrap();
    let ca_key384 = PrivateKey::generate(KeyType::EcP384).unwrap();
    let (ca384, _) = build_ca_cert(&td(), &ca_key384, 86_400, NOW, None).unwrap();
    let mut b = Bundle::new(td());
    b.x509_authorities = vec![ca256.clone()];
    b.jwt_authorities = vec![JwtAuthority {
        key_id: writ_fuzz::JWT_KID.into(),
        public_key: jwt_signer().public_jwk().clone(),
    }];
    b.sequence = 3;
    b.refresh_hint = Some(300);
    s.put("bundle_json", "own", b.to_json().unwrap());
    s.put("bundle_json", "jwks", b.jwt_jwks_json().unwrap());
    let mut b2 = Bundle::new(td());
    b2.x509_authorities = vec![ca384.clone()];
    b2.jwt_authorities = vec![JwtAuthority {
        key_id: "p384".into(),
        public_key: PublicJwk::from_ec_point(&ca_key384.public_point().unwrap()).unwrap(),
    }];
    s.put("bundle_json", "p384", b2.to_json().unwrap());
    s.put("bundle_json", "pem", b.x509_pem());
    for (name, args) in [
        ("ed25519", &["-algorithm", "ed25519"][..]),
        (
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
    ] {
        if let Some(c) = openssl_ca(&tmp, args) {
            let mut ob = Bundle::new(td());
            ob.x509_authorities = vec![c];
            s.put("bundle_json", name, ob.to_json().unwrap());
            s.put("bundle_json", &format!("{name}-pem"), ob.x509_pem());
        }
    }
    s.put(
        "bundle_json",
        "ignored",
        json!({"keys": [
            {"use": "wit-svid", "kty": "EC", "crv": "P-256"},
            {"use": "jwt-svid", "kid": "x", "kty": "oct", "k": "AAAA"},
        ], "spiffe_sequence": 1})
        .to_string(),
    );

    // csr: CSRs of every key type writ signs for, and one with names (which writ ignores).
    s.put(
        "csr",
        "p256",
        PrivateKey::generate(KeyType::EcP256)
            .unwrap()
            .csr_der()
            .unwrap(),
    );
    s.put(
        "csr",
        "p384",
        PrivateKey::generate(KeyType::EcP384)
            .unwrap()
            .csr_der()
            .unwrap(),
    );
    let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(vec!["node.example.org".into()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "workload");
    s.put(
        "csr",
        "names",
        p.serialize_request(&kp).unwrap().der().to_vec(),
    );
    if openssl(
        &tmp,
        &[
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "r.key", "-subj", "/CN=r",
            "-outform", "DER", "-out", "r.csr",
        ],
    ) {
        s.put("csr", "rsa", std::fs::read(tmp.join("r.csr")).unwrap());
    }

    // jwt: valid tokens (mode 0) and header/claims pairs the target signs (mode 1).
    let signer = jwt_signer();
    let sub = writ_core::SpiffeId::parse("spiffe://example.org/web").unwrap();
    let (t1, _) = signer.sign(&sub, &["aud".into()], 300, NOW).unwrap();
    let (t2, _) = signer
        .sign(&sub, &["db".into(), "aud".into()], 300, NOW - 100)
        .unwrap();
    s.put_mode("jwt", "token", 0, t1);
    s.put_mode("jwt", "token-2aud", 0, t2);
    let header = json!({"alg": "ES256", "kid": writ_fuzz::JWT_KID, "typ": "JWT"}).to_string();
    for (name, claims) in [
        (
            "claims",
            json!({"sub": "spiffe://example.org/web", "aud": "aud", "exp": NOW + 300, "iat": NOW}),
        ),
        (
            "claims-nbf",
            json!({"sub": "spiffe://example.org/w", "aud": ["x", "aud"], "exp": NOW + 60, "nbf": NOW - 5, "iss": "https://i"}),
        ),
        (
            "claims-frac",
            json!({"sub": "spiffe://example.org/w", "aud": ["aud"], "exp": (NOW as f64) + 0.5}),
        ),
    ] {
        let mut v = header.clone().into_bytes();
        v.push(0);
        v.extend_from_slice(claims.to_string().as_bytes());
        s.put_mode("jwt", name, 1, v);
    }

    // x509pop: chains for the fixture node key, direct and through an intermediate.
    let (ca_der, ca_kp) = node_ca();
    let ca_issuer =
        Issuer::from_ca_cert_der(&CertificateDer::from(ca_der.as_slice()), ca_kp).unwrap();
    let node_kp = KeyPair::from_pem(writ_fuzz::NODE_KEY_PEM).unwrap();
    assert_eq!(spki(&node_kp), node_key().public_key_spki().unwrap());
    let leaf = |cn: &str, sans: Vec<SanType>| {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = node_ca_params().not_before;
        p.not_after = node_ca_params().not_after;
        p.use_authority_key_identifier_extension = true;
        p
    };
    let direct = leaf("node-1", vec![])
        .signed_by(&node_kp, &ca_issuer)
        .unwrap()
        .der()
        .to_vec();
    s.put("x509pop", "direct", &direct);
    let named = leaf(
        "node-2",
        vec![
            SanType::DnsName("node-2.example.org".try_into().unwrap()),
            SanType::URI("spiffe://example.org/host/node-2".try_into().unwrap()),
        ],
    )
    .signed_by(&node_kp, &ca_issuer)
    .unwrap()
    .der()
    .to_vec();
    s.put("x509pop", "sans", &named);
    let inter_kp = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut ip = node_ca_params();
    ip.distinguished_name = DistinguishedName::new();
    ip.distinguished_name
        .push(DnType::CommonName, "node intermediate");
    ip.serial_number = None;
    ip.use_authority_key_identifier_extension = true;
    let inter = ip.signed_by(&inter_kp, &ca_issuer).unwrap();
    let inter_issuer = Issuer::from_ca_cert_der(inter.der(), &inter_kp).unwrap();
    let via = leaf("node-3", vec![])
        .signed_by(&node_kp, &inter_issuer)
        .unwrap()
        .der()
        .to_vec();
    s.put(
        "x509pop",
        "intermediate",
        [via, inter.der().to_vec()].concat(),
    );
    let other_kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let other = leaf("other", vec![])
        .signed_by(&other_kp, &ca_issuer)
        .unwrap()
        .der()
        .to_vec();
    s.put("x509pop", "other-key", other);

    // config: the example configs shipped in deploy/, and a server with every section.
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config");
    s.put_mode(
        "config",
        "server",
        0,
        std::fs::read(deploy.join("server.toml")).unwrap(),
    );
    s.put_mode(
        "config",
        "agent",
        1,
        std::fs::read(deploy.join("agent.toml")).unwrap(),
    );
    s.put_mode(
        "config",
        "server-upstream",
        0,
        "trust_domain = \"example.org\"\nlisten = \"[::1]:8081\"\nadmin_socket = \"/run/a.sock\"\n\
         data_dir = \"d\"\njwt_issuer = \"https://i\"\n[ca]\nkey_type = \"ec-p384\"\nttl = \"2d\"\n\
         [ca.upstream]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n[node_attestor.x509pop]\n\
         ca_bundle = \"/n.pem\"\n",
    );
    s.put_mode(
        "config",
        "agent-x509pop",
        1,
        "trust_domain = \"example.org\"\nserver_address = \"127.0.0.1:8081\"\n\
         socket_path = \"/run/w/public/api.sock\"\nadmin_socket = \"/run/w/private/a.sock\"\n\
         data_dir = \"/var/lib/w\"\n[node_attestor.x509pop]\ncert = \"/n.pem\"\nkey = \"/n.key\"\n\
         [workload_attestor.unix]\nmax_hash_bytes = 1048576\n",
    );

    // pem_key: keys writ writes, keys openssl writes, and a key after a certificate.
    s.put(
        "pem_key",
        "p256",
        PrivateKey::generate(KeyType::EcP256).unwrap().to_pem(),
    );
    s.put(
        "pem_key",
        "p384",
        PrivateKey::generate(KeyType::EcP384).unwrap().to_pem(),
    );
    s.put("pem_key", "openssl", writ_fuzz::JWT_KEY_PEM);
    s.put(
        "pem_key",
        "cert-then-key",
        format!(
            "{}{}",
            writ_core::pem::encode("CERTIFICATE", &ca256),
            ca_key.to_pem()
        ),
    );
    if openssl(
        &tmp,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.pem",
        ],
    ) {
        s.put(
            "pem_key",
            "sec1",
            std::fs::read(tmp.join("sec1.pem")).unwrap(),
        );
    }

    // proc_stat: this process's real stat line, and built lines around hostile names.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        s.put_mode("proc_stat", "self", 0, stat);
    }
    for (i, comm) in ["bash", "a) 1 2 (b", "x y z", ")))"].iter().enumerate() {
        let mut v = 123_456_789u64.to_le_bytes().to_vec();
        v.extend_from_slice(comm.as_bytes());
        s.put_mode("proc_stat", &format!("built{i}"), 1, v);
    }

    // hpack: the header blocks of a Workload API request, as the shim encodes literals, and the
    // RFC 7541 C.4.1 example (Huffman-coded, indexed fields).
    let mut block = Vec::new();
    for (n, v) in [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"workload.spiffe.io", b"true"),
    ] {
        // A literal without indexing, new name, no Huffman (RFC 7541 6.2.2).
        block.push(0x00);
        writ_h2_authority::hpack::encode_string(&mut block, n, false);
        writ_h2_authority::hpack::encode_string(&mut block, v, false);
    }
    s.put("hpack", "request", &block);
    s.put(
        "hpack",
        "rfc7541-c4",
        [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ],
    );

    check_seeds(&s.root);
    let _ = std::fs::remove_dir_all(&tmp);
    println!("seeds written to {}", s.root.display());
}

/// The seeds reach what they are for: every one of them passes the layer it is meant to get
/// past, so the fuzzer starts from there.
fn check_seeds(root: &Path) {
    let read = |t: &str, n: &str| std::fs::read(root.join(t).join(n)).unwrap();
    let text = |t: &str, n: &str| String::from_utf8(read(t, n)).unwrap();
    for n in ["own", "jwks", "p384", "ignored", "ed25519", "rsa"] {
        if root.join("bundle_json").join(n).exists() {
            writ_core::Bundle::from_json(td(), &read("bundle_json", n)).expect(n);
        }
    }
    for n in ["token", "token-2aud"] {
        let t = text("jwt", n);
        let b = writ_fuzz::jwt_bundle().clone();
        writ_ca::jwt::validate(&t[1..], "aud", NOW, |_| Some(b.clone())).expect(n);
    }
    for n in ["p256", "p384", "names"] {
        writ_ca::x509::csr_public_key(&read("csr", n)).expect(n);
    }
    let pop = writ_server::internal::X509PopProbe::new(td(), vec![node_ca().0.clone()]);
    for n in ["direct", "sans", "intermediate"] {
        let Ok(Some((challenge, pending))) = pop.start(&read("x509pop", n), NOW) else {
            panic!("x509pop seed {n} is not accepted");
        };
        let mut msg = writ_proto::X509POP_CONTEXT.to_vec();
        msg.extend_from_slice(&challenge);
        let answer = node_key().sign_asn1(&msg).unwrap();
        pending.verify(&answer).expect(n);
    }
    writ_server::ServerConfig::parse(&text("config", "server")[1..]).expect("server config");
    writ_server::ServerConfig::parse(&text("config", "server-upstream")[1..]).expect("upstream");
    writ_agent::AgentConfig::parse(&text("config", "agent")[1..]).expect("agent config");
    writ_agent::AgentConfig::parse(&text("config", "agent-x509pop")[1..]).expect("x509pop");
    for n in ["p256", "p384", "openssl", "cert-then-key"] {
        PrivateKey::from_pem(&text("pem_key", n)).expect(n);
    }
}
