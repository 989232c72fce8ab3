//! Peers side by side (issue 17): an independent certificate-issuing server on loopback, sent
//! the same P-256 CSRs writ signs, with the same client concurrency, in the same run.
//!
//! cfssl (Debian `golang-cfssl`: `apt-get install golang-cfssl`) runs as `cfssl serve` with a
//! P-256 CA; each client keeps one HTTP/1.1 connection and POSTs one CSR per request to
//! `/api/v1/cfssl/sign` (its API signs one certificate per call). writ runs as a real
//! `writ server run` process; each client is an attested agent connection sending
//! `BatchSignX509` batches, as agents do. Both verify each CSR's signature. Reported:
//! certificates per second and the server's CPU time per certificate (user + system, from
//! `/proc/<pid>/stat`). Without cfssl the section says so and prints no number.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use writ_ca::{KeyType, PrivateKey};
use writ_proto::v1 as pb;
use writ_testkit::{cpu_ticks, free_port};

use crate::procs::{own_bundle, spawn_server, token, Proc};
use crate::sections::{batch_sign_rate, entry, my_uid, sim_agent, td};
use crate::{Row, Sizes};

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
const TICKS: f64 = 100.0;

fn cfssl() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("cfssl"))
        .find(|p| p.is_file())
}

fn csr_pem() -> String {
    let k = PrivateKey::generate(KeyType::EcP256).unwrap();
    writ_core::pem::encode("CERTIFICATE REQUEST", &k.csr_der().unwrap())
}

/// Certificates per second from cfssl at `addr`, `clients` keep-alive connections.
async fn cfssl_rate(addr: &str, clients: usize, secs: f64, csrs: Arc<Vec<String>>) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (addr, done, csrs) = (addr.to_owned(), done.clone(), csrs.clone());
        tasks.push(tokio::spawn(async move {
            let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut s = BufReader::new(s);
            let mut i = c;
            while start.elapsed().as_secs_f64() < secs {
                let body = serde_json::json!({ "certificate_request": csrs[i % csrs.len()] }).to_string();
                i += clients;
                let req = format!(
                    "POST /api/v1/cfssl/sign HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.get_mut().write_all(req.as_bytes()).await.unwrap();
                let mut len = 0usize;
                let mut status = String::new();
                s.read_line(&mut status).await.unwrap();
                loop {
                    let mut line = String::new();
                    s.read_line(&mut line).await.unwrap();
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut resp = vec![0u8; len];
                s.read_exact(&mut resp).await.unwrap();
                assert!(status.contains(" 200 "), "cfssl: {status}");
                let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
                assert_eq!(v["success"], true, "cfssl refused: {v}");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

pub async fn peers(sz: &Sizes) -> Vec<Row> {
    let Some(cfssl) = cfssl() else {
        eprintln!("cfssl is not installed (apt-get install golang-cfssl): peers section skipped");
        return vec![Row::new(
            "peers",
            "cfssl serve (not installed here: apt-get install golang-cfssl)",
            "-",
        )];
    };
    let dir = tempfile::tempdir().unwrap();
    let clients = sz.clients;

    // writ: a real server process, agents sending batches.
    let wdir = dir.path().join("writ");
    std::fs::create_dir_all(&wdir).unwrap();
    let (srv, _) = spawn_server(&wdir).await;
    let mut admin = writ_server::client::admin_client(&srv.admin).await.unwrap();
    let e = admin
        .create_entry(writ_proto::convert::entry_to_pb(&entry(
            "spiffe://example.org/peer",
            "spiffe://example.org/node/peer",
            &format!("unix:uid:{}", my_uid()),
            3600,
        )))
        .await
        .unwrap()
        .into_inner();
    let bundle = own_bundle(&srv.admin).await;
    let mut agents = Vec::new();
    for _ in 0..clients {
        let t = token(&srv.admin, "peer").await;
        let node = sim_agent(&srv.addr, &bundle, &t).await;
        let reqs: Vec<pb::SignX509Request> = (0..sz.batch)
            .map(|_| {
                let k = PrivateKey::generate(KeyType::EcP256).unwrap();
                pb::SignX509Request {
                    entry_id: e.id.clone(),
                    csr: k.csr_der().unwrap(),
                }
            })
            .collect();
        agents.push((node, reqs));
    }
    let pid = srv.proc.0.id();
    let c0 = cpu_ticks(pid);
    let t0 = Instant::now();
    let writ_rate = batch_sign_rate(agents, sz.secs).await;
    let writ_certs = writ_rate * t0.elapsed().as_secs_f64();
    let writ_cpu_us = (cpu_ticks(pid) - c0) as f64 / TICKS * 1e6 / writ_certs.max(1.0);
    drop(srv);

    // cfssl with a P-256 CA of its own.
    let ca_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let (ca, _) =
        writ_ca::x509::build_ca_cert(&td(), &ca_key, 86_400, writ_core::now_unix(), None).unwrap();
    let cdir = dir.path().join("cfssl");
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::write(
        cdir.join("ca.pem"),
        writ_core::pem::encode("CERTIFICATE", &ca),
    )
    .unwrap();
    std::fs::write(cdir.join("ca.key"), ca_key.to_pem()).unwrap();
    let port = free_port();
    let child = Command::new(cfssl)
        .args([
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-loglevel",
            "2",
        ])
        .arg("-ca")
        .arg(cdir.join("ca.pem"))
        .arg("-ca-key")
        .arg(cdir.join("ca.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cf = Proc(child);
    let addr = format!("127.0.0.1:{port}");
    let t = Instant::now();
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "cfssl did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let csrs = Arc::new(
        (0..clients * sz.batch.max(1))
            .map(|_| csr_pem())
            .collect::<Vec<_>>(),
    );
    let pid = cf.0.id();
    let c0 = cpu_ticks(pid);
    let t0 = Instant::now();
    let cf_rate = cfssl_rate(&addr, clients, sz.secs, csrs).await;
    let cf_certs = cf_rate * t0.elapsed().as_secs_f64();
    let cf_cpu_us = (cpu_ticks(pid) - c0) as f64 / TICKS * 1e6 / cf_certs.max(1.0);
    drop(cf);
    vec![
        Row::new(
            "peers",
            format!(
                "certificates/s, {clients} clients: writ BatchSignX509 (batches of {})",
                sz.batch
            ),
            format!("{writ_rate:.0}"),
        )
        .vs(
            format!("{cf_rate:.0} cfssl serve /api/v1/cfssl/sign (one CSR per request)"),
            writ_rate / cf_rate,
        ),
        Row::new(
            "peers",
            "server CPU time per certificate (us, user + system)",
            format!("{writ_cpu_us:.0}"),
        )
        .vs(format!("{cf_cpu_us:.0} cfssl"), writ_cpu_us / cf_cpu_us),
    ]
}
