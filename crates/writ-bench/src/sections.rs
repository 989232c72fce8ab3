//! In-process sections: a real server and real agents (library-started) over real sockets.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use writ_agent::node_client::{self, Evidence, Node};
use writ_ca::{KeyType, PrivateKey};
use writ_core::{Entry, Selector, SpiffeId, TrustDomain};
use writ_proto::v1 as pb;
use writ_proto::workload as wl;
use writ_server::RunningServer;
use writ_tls::{SharedBundle, SvidResolver};

use crate::{Row, Sizes};

pub fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

pub fn my_uid() -> u32 {
    writ_agent::internal::own_ids().unwrap().0
}

pub fn entry(spiffe: &str, parent: &str, selector: &str, ttl: u64) -> Entry {
    Entry {
        x509_svid_ttl: ttl,
        owner: "bench".into(),
        purpose: "benchmark".into(),
        ..Entry::new(
            SpiffeId::parse(spiffe).unwrap(),
            SpiffeId::parse(parent).unwrap(),
            vec![Selector::parse(selector).unwrap()],
        )
    }
}

pub async fn start_server(dir: &Path) -> RunningServer {
    let cfg = writ_server::ServerConfig::parse(&format!(
        "trust_domain = \"example.org\"\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\nattestation_rate_per_ip = 100000\n[ca]\nttl = \"24h\"\n[node_attestor.join_token]\n",
        dir.join("server/run/admin.sock").display(),
        dir.join("server/data").display()
    ))
    .unwrap();
    writ_server::start(cfg).await.unwrap()
}

/// An in-process agent attested with a token whose alias is `spiffe://example.org/node/<alias>`.
pub async fn start_agent(
    server: &RunningServer,
    dir: &Path,
    alias: &str,
) -> writ_agent::RunningAgent {
    let t = server
        .state
        .create_join_token(Some(td().id(&format!("/node/{alias}")).unwrap()), 600)
        .unwrap();
    let d = dir.join(format!("agent-{alias}"));
    let cfg = writ_agent::AgentConfig::parse(&format!(
        "trust_domain = \"example.org\"\nserver_address = \"{}\"\nsocket_path = \"{}\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\n[node_attestor.join_token]\ntoken = \"{}\"\n[workload_attestor.unix]\n",
        server.listen_addr,
        d.join("public/api.sock").display(),
        d.join("private/admin.sock").display(),
        d.join("data").display(),
        t.token
    ))
    .unwrap();
    let own = server.state.bundles.borrow().own.clone();
    writ_agent::start(cfg, Some(own)).await.unwrap()
}

/// A lightweight in-process agent: attests with a token for `alias` and opens an mTLS client.
pub async fn sim_agent(addr: &str, bundle: &writ_core::Bundle, token: &str) -> Node {
    let mut anon = node_client::connect(addr, &td(), SharedBundle::new(vec![bundle.clone()]), None)
        .await
        .unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let svid = node_client::attest(&mut anon, &td(), Evidence::JoinToken(token), &key)
        .await
        .unwrap();
    let r = SvidResolver::new(&svid.chain, key.pkcs8_der()).unwrap();
    node_client::connect(
        addr,
        &td(),
        SharedBundle::new(vec![bundle.clone()]),
        Some(r),
    )
    .await
    .unwrap()
}

/// Runs `f` on `threads` threads for `secs` and returns total calls per second.
fn rate_threads(threads: usize, secs: f64, f: impl Fn() + Sync) -> f64 {
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while start.elapsed().as_secs_f64() < secs {
                    f();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

pub async fn issuance(sz: &Sizes) -> Vec<Row> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let now = writ_core::now_unix();

    // Baselines: raw rcgen+ring leaf signing and rcgen's own CSR path (parse, verify, sign).
    let ca_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let (ca_der, _) = writ_ca::x509::build_ca_cert(&td(), &ca_key, 86_400, now, None).unwrap();
    let issuer =
        Issuer::from_ca_cert_der(&ca_der.as_slice().into(), ca_key.rcgen_key_pair().unwrap())
            .unwrap();
    let subject = KeyPair::generate().unwrap();
    let leaf = || {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "writ");
        p.subject_alt_names = vec![SanType::URI("spiffe://example.org/w".try_into().unwrap())];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        std::hint::black_box(p.signed_by(&subject, &issuer).unwrap());
    };
    let csr = CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&subject)
        .unwrap();
    let csr_der = csr.der().clone();
    let raw_leaf = rate_threads(cores, sz.secs, leaf);
    let raw_csr = rate_threads(cores, sz.secs, || {
        let p = rcgen::CertificateSigningRequestParams::from_der(&csr_der).unwrap();
        std::hint::black_box(p.signed_by(&issuer).unwrap());
    });
    // Raw ring P-256 signature verification, the proof-of-possession check every CSR needs.
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let kp = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let msg = [7u8; 300];
    let sig = kp.sign(&rng, &msg).unwrap();
    let pk = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        ring::signature::KeyPair::public_key(&kp).as_ref().to_vec(),
    );
    let raw_verify = rate_threads(cores, sz.secs, || {
        pk.verify(&msg, sig.as_ref()).unwrap();
    });
    // No server that checks each CSR's signature can beat one verification plus one leaf
    // signature per SVID on the same cores.
    let ceiling = 1.0 / (1.0 / raw_leaf + 1.0 / raw_verify);

    // Clients: attested agents, each with one entry; batches of CSRs over mTLS.
    let bundle = server.state.bundles.borrow().own.clone();
    let addr = server.listen_addr.to_string();
    let mut clients = Vec::new();
    for i in 0..sz.clients {
        let alias = format!("iss-{i}");
        let t = server
            .state
            .create_join_token(Some(td().id(&format!("/node/{alias}")).unwrap()), 600)
            .unwrap();
        let c = sim_agent(&addr, &bundle, &t.token).await;
        let e = server
            .state
            .create_entry(entry(
                &format!("spiffe://example.org/iss/{i}"),
                &format!("spiffe://example.org/node/{alias}"),
                "unix:uid:1",
                0,
            ))
            .await
            .unwrap();
        let reqs: Vec<pb::SignX509Request> = (0..sz.batch)
            .map(|_| pb::SignX509Request {
                entry_id: e.id.clone(),
                csr: PrivateKey::generate(KeyType::EcP256)
                    .unwrap()
                    .csr_der()
                    .unwrap(),
            })
            .collect();
        clients.push((c, reqs, e.id));
    }
    let x509_rate = batch_sign_rate(
        clients
            .iter()
            .map(|(c, r, _)| (c.clone(), r.clone()))
            .collect(),
        sz.secs,
    )
    .await;

    // JWT-SVIDs.
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let signer = writ_ca::JwtSigner::new("k".into(), &key, None).unwrap();
    let sub = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let aud = vec!["db".to_owned()];
    let raw_jwt = rate_threads(cores, sz.secs, || {
        std::hint::black_box(signer.sign(&sub, &aud, 300, now).unwrap());
    });
    let small = (clients[0].0.clone(), clients[0].2.clone());
    let targets: Vec<(Node, String)> = clients.into_iter().map(|(c, _, eid)| (c, eid)).collect();
    let jwt_rate = mint_rate(targets.clone(), 4, sz.secs).await;
    // The batched path an agent uses for concurrent cache misses: same clients, one caller
    // each, batches of 64 distinct requests.
    let jwt_batch_rate = batch_mint_rate(targets, 64, sz.secs).await;

    // Authorisation per call follows the entry asked about, not how many the agent holds: one
    // agent with `agent_svids` entries against one with a single entry, same callers.
    let t = server
        .state
        .create_join_token(Some(td().id("/node/iss-big").unwrap()), 600)
        .unwrap();
    let big = sim_agent(&addr, &bundle, &t.token).await;
    let created = server
        .state
        .create_entries(
            (0..sz.agent_svids)
                .map(|i| {
                    entry(
                        &format!("spiffe://example.org/big/{i}"),
                        "spiffe://example.org/node/iss-big",
                        "unix:uid:1",
                        0,
                    )
                })
                .collect(),
        )
        .await
        .unwrap();
    let big_eid = created.last().unwrap().id.clone();
    let one_rate = mint_rate(vec![small], 8, sz.secs).await;
    let big_rate = mint_rate(vec![(big, big_eid)], 8, sz.secs).await;
    server.shutdown(Duration::from_secs(2)).await.unwrap();
    vec![
        Row::new(
            "issuance",
            format!(
                "X509-SVIDs/s via BatchSignX509 over mTLS ({} clients, batches of {})",
                sz.clients, sz.batch
            ),
            format!("{x509_rate:.0}"),
        )
        .vs(
            format!("{raw_leaf:.0} raw rcgen+ring leaf signs/s ({cores} threads)"),
            x509_rate / raw_leaf,
        )
        .target(">= 0.50"),
        Row::new(
            "issuance",
            "same, against the ceiling for a CA that verifies every CSR",
            format!("{x509_rate:.0}"),
        )
        .vs(
            format!("{ceiling:.0} = 1 / (1/leaf signs + 1/{raw_verify:.0} raw P-256 verifies/s)"),
            x509_rate / ceiling,
        ),
        Row::new(
            "issuance",
            "same, against rcgen's own CSR path (parse + verify + sign)",
            format!("{x509_rate:.0}"),
        )
        .vs(
            format!("{raw_csr:.0} raw rcgen CSR signs/s ({cores} threads)"),
            x509_rate / raw_csr,
        ),
        Row::new(
            "issuance",
            format!(
                "JWT-SVIDs/s via MintJwt over mTLS ({} callers)",
                sz.clients * 4
            ),
            format!("{jwt_rate:.0}"),
        )
        .vs(
            format!("{raw_jwt:.0} raw ES256 JWT signs/s ({cores} threads)"),
            jwt_rate / raw_jwt,
        ),
        Row::new(
            "issuance",
            format!(
                "JWT-SVIDs/s via BatchMintJwt over mTLS ({} callers, batches of 64)",
                sz.clients
            ),
            format!("{jwt_batch_rate:.0}"),
        )
        .vs(
            format!("{raw_jwt:.0} raw ES256 JWT signs/s ({cores} threads)"),
            jwt_batch_rate / raw_jwt,
        )
        .target(">= 0.50"),
        Row::new(
            "issuance",
            format!(
                "JWT-SVIDs/s for an agent holding {} entries (8 callers)",
                sz.agent_svids
            ),
            format!("{big_rate:.0}"),
        )
        .vs(
            format!("{one_rate:.0} for an agent holding 1"),
            big_rate / one_rate,
        )
        .target("~1.0"),
    ]
}

/// Signed X509-SVIDs per second: each client sends its batch again as soon as it is answered,
/// for `secs`.
pub(crate) async fn batch_sign_rate(
    clients: Vec<(Node, Vec<pb::SignX509Request>)>,
    secs: f64,
) -> f64 {
    let signed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut c, reqs) in clients {
        let signed = signed.clone();
        tasks.push(tokio::spawn(async move {
            while start.elapsed().as_secs_f64() < secs {
                let r = c
                    .batch_sign_x509(pb::BatchSignX509Request {
                        requests: reqs.clone(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                signed.fetch_add(
                    r.results.iter().filter(|x| x.error.is_empty()).count() as u64,
                    Ordering::Relaxed,
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    signed.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// MintJwt calls per second from `callers` concurrent callers per (agent, entry).
pub(crate) async fn mint_rate(targets: Vec<(Node, String)>, callers: usize, secs: f64) -> f64 {
    let minted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, eid) in targets {
        for _ in 0..callers {
            let (mut c, minted, eid) = (c.clone(), minted.clone(), eid.clone());
            tasks.push(tokio::spawn(async move {
                while start.elapsed().as_secs_f64() < secs {
                    c.mint_jwt(pb::MintJwtRequest {
                        entry_id: eid.clone(),
                        audience: vec!["db".into()],
                    })
                    .await
                    .unwrap();
                    minted.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    minted.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// JWT-SVIDs minted per second through `BatchMintJwt`: one caller per target, each sending a
/// batch of `batch` requests (distinct audiences, as distinct cache misses are) again as soon
/// as it is answered, for `secs`.
pub(crate) async fn batch_mint_rate(targets: Vec<(Node, String)>, batch: usize, secs: f64) -> f64 {
    let minted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, eid) in targets {
        let (mut c, minted) = (c.clone(), minted.clone());
        let requests: Vec<pb::MintJwtRequest> = (0..batch)
            .map(|i| pb::MintJwtRequest {
                entry_id: eid.clone(),
                audience: vec![format!("aud-{i}")],
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            while start.elapsed().as_secs_f64() < secs {
                let r = c
                    .batch_mint_jwt(pb::BatchMintJwtRequest {
                        requests: requests.clone(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(r.results.iter().all(|x| x.code == 0));
                minted.fetch_add(r.results.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    minted.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Serves [`Bare`] on a Unix socket under `dir`; returns its path.
pub(crate) fn bare_server(dir: &Path) -> std::path::PathBuf {
    let bare_path = dir.join("bare/bare.sock");
    let l = writ_tls::socket::bind(&bare_path, writ_tls::socket::Access::Private).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(writ_proto::v1::agent_admin_server::AgentAdminServer::new(
                Bare,
            ))
            .serve_with_incoming(UnixListenerStream::new(l)),
    );
    bare_path
}

/// A service that does nothing: the bare tonic unary baseline.
struct Bare;

#[tonic::async_trait]
impl writ_proto::v1::agent_admin_server::AgentAdmin for Bare {
    async fn health(
        &self,
        _r: Request<pb::AgentHealthRequest>,
    ) -> Result<Response<pb::AgentHealthResponse>, Status> {
        Ok(Response::new(pb::AgentHealthResponse::default()))
    }
}

pub(crate) async fn bare_call(path: &Path) -> f64 {
    let t = Instant::now();
    let ch = writ_server::client::unix_channel(path).await.unwrap();
    writ_proto::v1::agent_admin_client::AgentAdminClient::new(ch)
        .health(pb::AgentHealthRequest {})
        .await
        .unwrap();
    t.elapsed().as_secs_f64() * 1000.0
}

/// A new Workload API connection with its FetchX509SVID stream, after the first answer.
pub(crate) async fn open_x509_stream(
    endpoint: &str,
) -> (
    writ_client::workload::WorkloadClient,
    tonic::Streaming<wl::X509svidResponse>,
    wl::X509svidResponse,
) {
    let mut c = writ_client::workload::connect(Some(endpoint))
        .await
        .unwrap();
    let mut st = c
        .fetch_x509svid(wl::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = st.message().await.unwrap().unwrap();
    (c, st, first)
}

pub(crate) async fn fetch_call(endpoint: &str) -> f64 {
    let t = Instant::now();
    let (_, _, m) = open_x509_stream(endpoint).await;
    assert!(!m.svids.is_empty());
    t.elapsed().as_secs_f64() * 1000.0
}

pub async fn wait_svids(agent: &writ_agent::RunningAgent, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut gen = agent.state.view.subscribe();
    loop {
        if agent.state.view.read().svids.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not get {n} SVIDs in time"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), gen.changed()).await;
    }
}

pub async fn latency(sz: &Sizes) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let agent = start_agent(&server, dir.path(), "lat").await;
    server
        .state
        .create_entry(entry(
            "spiffe://example.org/lat",
            "spiffe://example.org/node/lat",
            &format!("unix:uid:{}", my_uid()),
            0,
        ))
        .await
        .unwrap();
    wait_svids(&agent, 1).await;
    let endpoint = format!("unix://{}", agent.state.cfg.socket_path.display());
    let bare_path = bare_server(dir.path());
    // Warm up (binary hash cache, allocator).
    for _ in 0..5 {
        fetch_call(&endpoint).await;
        bare_call(&bare_path).await;
    }
    let measure = |n: usize| {
        let endpoint = endpoint.clone();
        let bare_path = bare_path.clone();
        async move {
            let (mut f, mut b) = (Vec::new(), Vec::new());
            for _ in 0..n {
                f.push(fetch_call(&endpoint).await);
                b.push(bare_call(&bare_path).await);
            }
            (
                percentile(&mut f.clone(), 50.0),
                percentile(&mut f, 99.0),
                percentile(&mut b.clone(), 50.0),
                percentile(&mut b, 99.0),
            )
        }
    };
    let (f50, f99, b50, b99) = measure(sz.lat_iters).await;
    // Now with many streaming workloads connected.
    let mut held = Vec::new();
    for _ in 0..sz.concurrent {
        let (c, st, _) = open_x509_stream(&endpoint).await;
        held.push((c, st));
    }
    let (g50, g99, c50, c99) = measure(sz.lat_iters).await;
    drop(held);
    // And with the agent holding many entries for other workloads: matching a caller must not
    // scan them all.
    let others: Vec<Entry> = (0..sz.agent_svids)
        .map(|i| {
            entry(
                &format!("spiffe://example.org/other/{i}"),
                "spiffe://example.org/node/lat",
                &format!("unix:uid:{}", 200_000 + i),
                0,
            )
        })
        .collect();
    server.state.create_entries(others).await.unwrap();
    wait_svids(&agent, sz.agent_svids + 1).await;
    let (h50, _, d50, _) = measure(sz.lat_iters / 2).await;
    agent.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await.unwrap();
    vec![
        Row::new(
            "latency",
            "FetchX509SVID first response, new connection, p50 (ms)",
            format!("{f50:.2}"),
        )
        .vs(
            format!("{b50:.2} bare tonic unary, new unix connection"),
            f50 / b50,
        )
        .target("<= 3x"),
        Row::new(
            "latency",
            "FetchX509SVID first response, new connection, p99 (ms)",
            format!("{f99:.2}"),
        )
        .vs(format!("{b99:.2} bare tonic unary"), f99 / b99)
        .target("<= 3x"),
        Row::new(
            "latency",
            format!(
                "same, p50 with {} streaming workloads connected (ms)",
                sz.concurrent
            ),
            format!("{g50:.2}"),
        )
        .vs(format!("{c50:.2} bare tonic unary"), g50 / c50)
        .target("<= 3x"),
        Row::new(
            "latency",
            format!(
                "same, p99 with {} streaming workloads connected (ms)",
                sz.concurrent
            ),
            format!("{g99:.2}"),
        )
        .vs(format!("{c99:.2} bare tonic unary"), g99 / c99)
        .target("<= 3x"),
        Row::new(
            "latency",
            format!(
                "same, p50 with the agent holding {} entries (ms)",
                sz.agent_svids + 1
            ),
            format!("{h50:.2}"),
        )
        .vs(format!("{d50:.2} bare tonic unary"), h50 / d50)
        .target("<= 3x"),
    ]
}

pub async fn propagation(sz: &Sizes) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let a = start_agent(&server, dir.path(), "prop-a").await;
    let b = start_agent(&server, dir.path(), "prop-b").await;
    let uid_sel = format!("unix:uid:{}", my_uid());
    let mut admin = writ_server::client::admin_client(&server.state.cfg.admin_socket)
        .await
        .unwrap();
    let create =
        |id: &str, parent: &str| writ_proto::convert::entry_to_pb(&entry(id, parent, &uid_sel, 0));
    admin
        .create_entry(create(
            "spiffe://example.org/prop/base",
            "spiffe://example.org/node/prop-a",
        ))
        .await
        .unwrap();
    wait_svids(&a, 1).await;
    let ep_a = format!("unix://{}", a.state.cfg.socket_path.display());
    let ep_b = format!("unix://{}", b.state.cfg.socket_path.display());
    let (_ca, mut s1, _) = open_x509_stream(&ep_a).await;
    let (mut create_ms, mut delete_ms) = (Vec::new(), Vec::new());
    for i in 0..sz.trials {
        // Create on A: time from the admin call returning to the stream carrying the new SVID.
        let id = format!("spiffe://example.org/prop/a{i}");
        let e = admin
            .create_entry(create(&id, "spiffe://example.org/node/prop-a"))
            .await
            .unwrap()
            .into_inner();
        tracing::debug!(trial = i, "bench: create returned");
        let t = Instant::now();
        loop {
            let m = s1.message().await.unwrap().unwrap();
            if m.svids.iter().any(|s| s.spiffe_id == id) {
                tracing::debug!(trial = i, "bench: stream delivered");
                break;
            }
        }
        create_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        // Delete on B, where it is the workload's only identity: time to PermissionDenied.
        let idb = format!("spiffe://example.org/prop/b{i}");
        let eb = admin
            .create_entry(create(&idb, "spiffe://example.org/node/prop-b"))
            .await
            .unwrap()
            .into_inner();
        let mut s2 = loop {
            let mut cb = writ_client::workload::connect(Some(&ep_b)).await.unwrap();
            if let Ok(r) = cb.fetch_x509svid(wl::X509svidRequest {}).await {
                let mut st = r.into_inner();
                if st.message().await.ok().flatten().is_some() {
                    break st;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        admin
            .delete_entries(pb::DeleteEntriesRequest { ids: vec![eb.id] })
            .await
            .unwrap();
        let t = Instant::now();
        loop {
            match s2.message().await {
                Ok(Some(_)) => continue,
                Err(s) if s.code() == tonic::Code::PermissionDenied => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        delete_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        admin
            .delete_entries(pb::DeleteEntriesRequest { ids: vec![e.id] })
            .await
            .unwrap();
    }
    drop(s1);
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await.unwrap();
    let (c50, c99) = (
        percentile(&mut create_ms.clone(), 50.0),
        percentile(&mut create_ms, 99.0),
    );
    let (d50, d99) = (
        percentile(&mut delete_ms.clone(), 50.0),
        percentile(&mut delete_ms, 99.0),
    );
    vec![
        Row::new(
            "propagation",
            format!(
                "entry create -> workload stream has the SVID, p50 / p99 over {} trials (ms)",
                sz.trials
            ),
            format!("{c50:.1} / {c99:.1}"),
        )
        .vs(
            "SPIRE: up to ~10000 (5 s cache reload + 5 s agent poll)",
            c99 / 10_000.0,
        )
        .target("p99 < 1000"),
        Row::new(
            "propagation",
            "entry delete -> workload stream PermissionDenied, p50 / p99 (ms)",
            format!("{d50:.1} / {d99:.1}"),
        )
        .vs("SPIRE: up to ~10000", d99 / 10_000.0)
        .target("p99 < 1000"),
    ]
}
