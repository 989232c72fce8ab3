//! Fetching a federated trust domain's bundle from its bundle endpoint, at the refresh hint the
//! bundle gives, with exponential back-off and jitter on failure.
//!
//! A fetch is one HTTPS `GET` (HTTP/1.1, no redirects followed, at most [`MAX_BODY`] bytes,
//! [`TIMEOUT`] in all) authenticated per the relationship's profile, and a strict parse of
//! the SPIFFE bundle JSON for that trust domain. Anything else (another identity, a redirect,
//! garbage, a bundle without X.509 authorities) is an error: the last good bundle stays, the
//! failure is logged and counted (`writ_federation_fetch_failures_total`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::SecureRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use writ_audit::{Actor, NewRecord};
use writ_core::Bundle;

use super::{Relationship, RemoteProfile};
use crate::state::ServerState;

/// Most bytes of a response (head and body).
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// One fetch, connection to last byte.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Refresh interval when the bundle gives no hint.
const DEFAULT_REFRESH: u64 = 300;

/// `https://host[:port][/path]` -> (host, port, path).
pub(crate) fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("`{url}` is not an https:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.contains(['\r', '\n', ' ']) {
        return Err(format!("`{url}` has no usable host"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| format!("`{url}`: port `{p}` is not a number"))?,
        ),
        _ => (authority, 443),
    };
    Ok((host.to_owned(), port, path.to_owned()))
}

async fn get(
    url: &str,
    verifier: Arc<dyn writ_tls::rustls::client::danger::ServerCertVerifier>,
) -> Result<Vec<u8>, String> {
    let (host, port, path) = split_url(url)?;
    let cfg = writ_tls::https_client_config(verifier).map_err(|e| e.to_string())?;
    let name = writ_tls::rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("`{host}`: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\naccept: application/json\r\nconnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    (&mut tls)
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    if buf.len() > MAX_BODY {
        return Err(format!("the answer is over {MAX_BODY} bytes"));
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no HTTP head")?;
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(if status.starts_with('3') {
            format!("HTTP {status}: redirects are not followed")
        } else {
            format!("HTTP {status}")
        });
    }
    if head.contains("transfer-encoding: chunked") {
        return Err("chunked answers are not supported".into());
    }
    Ok(buf[split + 4..].to_vec())
}

/// The bundle that authenticates an `https_spiffe` endpoint: the last one fetched (or set),
/// else the bootstrap file.
fn trust_for(state: &ServerState, rel: &Relationship) -> Result<Bundle, String> {
    if let Some(b) = state
        .store
        .get_bundle(&rel.trust_domain)
        .map_err(|e| e.to_string())?
    {
        return Ok(b);
    }
    let RemoteProfile::HttpsSpiffe {
        trust_domain_bundle: Some(f),
        ..
    } = &rel.profile
    else {
        return Err(format!(
            "no bundle of `{}` to authenticate its endpoint with: set trust_domain_bundle (or writ bundle set)",
            rel.trust_domain
        ));
    };
    let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
    Bundle::from_json(rel.trust_domain.clone(), &bytes)
        .or_else(|_| {
            Bundle::from_x509_pem(rel.trust_domain.clone(), &String::from_utf8_lossy(&bytes))
        })
        .map_err(|e| format!("{}: {e}", f.display()))
}

/// One fetch; the new bundle if it changed.
pub(crate) async fn fetch_once(
    state: &ServerState,
    rel: &Relationship,
) -> Result<Option<Bundle>, String> {
    let verifier: Arc<dyn writ_tls::rustls::client::danger::ServerCertVerifier> = match &rel.profile
    {
        RemoteProfile::HttpsSpiffe {
            endpoint_spiffe_id, ..
        } => writ_tls::SpiffeServerVerifier::new(
            writ_tls::SharedBundle::new(vec![trust_for(state, rel)?]),
            writ_tls::exact_id(endpoint_spiffe_id.clone()),
        ),
        RemoteProfile::HttpsWeb { ca_file } => {
            let pem = std::fs::read_to_string(ca_file)
                .map_err(|e| format!("{}: {e}", ca_file.display()))?;
            let roots = writ_core::pem::decode_label(&pem, "CERTIFICATE")
                .map_err(|e| format!("{}: {e}", ca_file.display()))?;
            writ_tls::web_verifier(&roots).map_err(|e| e.to_string())?
        }
    };
    let body = tokio::time::timeout(TIMEOUT, get(&rel.url, verifier))
        .await
        .map_err(|_| format!("no answer within {}s", TIMEOUT.as_secs()))??;
    let b = Bundle::from_json(rel.trust_domain.clone(), &body)
        .map_err(|e| format!("the bundle does not parse: {e}"))?;
    if b.x509_authorities.is_empty() {
        return Err("the bundle has no X.509 authorities".into());
    }
    let old = state
        .store
        .get_bundle(&rel.trust_domain)
        .map_err(|e| e.to_string())?;
    if old
        .as_ref()
        .is_some_and(|o| o.same_content(&b) && o.sequence == b.sequence)
    {
        return Ok(None);
    }
    let stored = state
        .set_federated_bundle(b)
        .map_err(|e| format!("cannot store the bundle: {e}"))?;
    state
        .audit
        .note(vec![NewRecord::new(
            writ_audit::kinds::BUNDLE_UPDATED,
            Actor::server(),
        )
        .detail("trust_domain", rel.trust_domain.to_string())
        .detail("sequence", stored.sequence)
        .detail("source", rel.url.clone())
        .detail("x509_authorities", stored.x509_authorities.len() as u64)
        .detail("jwt_authorities", stored.jwt_authorities.len() as u64)])
        .await;
    tracing::info!(trust_domain = %rel.trust_domain, sequence = stored.sequence, "federated bundle updated");
    Ok(Some(stored))
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    // 80% to 120%.
    d.mul_f64(0.8 + f64::from(b[0]) / 255.0 * 0.4)
}

/// Keeps the bundle of `td`'s relationship fresh while the relationship exists (it is read
/// again before every fetch, so an update applies at the next one and a deletion ends the
/// loop) and the server runs.
pub(crate) async fn run(state: Arc<ServerState>, td: writ_core::TrustDomain) {
    let mut failures = 0u32;
    let mut events = state.events.subscribe();
    loop {
        let Some(rel) = state.federations.get(&td).await else {
            return;
        };
        let wait = match fetch_once(&state, &rel).await {
            Ok(_) => {
                failures = 0;
                let hint = state
                    .store
                    .get_bundle(&rel.trust_domain)
                    .ok()
                    .flatten()
                    .and_then(|b| b.refresh_hint)
                    .unwrap_or(DEFAULT_REFRESH)
                    .clamp(1, 3600);
                Duration::from_secs(hint)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                state
                    .metrics
                    .federation_fetch_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(trust_domain = %rel.trust_domain, url = %rel.url, error = %e, "federated bundle not fetched; keeping the last good one");
                Duration::from_secs(1u64 << failures.min(8)).min(Duration::from_secs(300))
            }
        };
        let sleep = tokio::time::sleep(jitter(wait));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                ev = events.recv() => match ev {
                    Ok(crate::state::Event::Shutdown)
                    | Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    _ => {}
                },
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use writ_core::TrustDomain;

    /// A one-answer-per-connection HTTPS server whose answer the test sets.
    async fn endpoint(resolver: Arc<writ_tls::SvidResolver>, answer: Arc<Mutex<Vec<u8>>>) -> u16 {
        let tls = writ_tls::https_server_config(resolver).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (sock, _) = l.accept().await.unwrap();
                let (acceptor, answer) = (acceptor.clone(), answer.clone());
                tokio::spawn(async move {
                    if let Ok(mut s) = acceptor.accept(sock).await {
                        let mut buf = [0u8; 2048];
                        let _ = s.read(&mut buf).await;
                        let a = answer.lock().unwrap().clone();
                        let _ = s.write_all(&a).await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        port
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Garbage, redirects, oversized answers, a bundle without X.509 authorities or for a
    /// trust domain's keys in the wrong shape: each is refused and the last good bundle stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_remote_endpoint_that_misbehaves_leaves_the_last_good_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::ServerConfig::parse(&format!(
            "trust_domain = \"example.org\"\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\n[node_attestor.join_token]\n",
            dir.path().join("run/admin.sock").display(),
            dir.path().join("data").display(),
        ))
        .unwrap();
        let srv = crate::start(cfg).await.unwrap();
        let st = srv.state.clone();
        // The endpoint's Web PKI certificate: issued (with a DNS name) by our own CA, whose
        // certificate is the relationship's root.
        let id = st.cfg.trust_domain.id("/endpoint").unwrap();
        let (svid, key) = st
            .mint_with_new_key(&id, 600, &["localhost".to_owned()])
            .unwrap();
        let resolver = writ_tls::SvidResolver::new(&svid.chain, key.pkcs8_der()).unwrap();
        let answer = Arc::new(Mutex::new(Vec::new()));
        let port = endpoint(resolver, answer.clone()).await;
        let roots = dir.path().join("roots.pem");
        std::fs::write(&roots, st.bundles.borrow().own.x509_pem()).unwrap();
        let other = TrustDomain::new("other.org").unwrap();
        let rel = Relationship {
            trust_domain: other.clone(),
            url: format!("https://localhost:{port}/bundle"),
            profile: RemoteProfile::HttpsWeb { ca_file: roots },
        };
        let mut good = Bundle::new(other.clone());
        good.x509_authorities = st.bundles.borrow().own.x509_authorities.clone();
        good.sequence = 7;
        let good_json = good.to_json().unwrap();

        *answer.lock().unwrap() = ok(&good_json);
        let got = fetch_once(&st, &rel).await.unwrap().unwrap();
        assert_eq!(got.trust_domain, other);
        assert_eq!(fetch_once(&st, &rel).await.unwrap(), None, "unchanged");

        let mut no_x509 = Bundle::new(other.clone());
        no_x509.sequence = 8;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (ok("not json"), "does not parse"),
            (
                ok("{\"keys\": [{\"use\": \"x509-svid\"}]}"),
                "does not parse",
            ),
            (ok(&no_x509.to_json().unwrap()), "no X.509 authorities"),
            (
                b"HTTP/1.1 302 Found\r\nlocation: https://evil/\r\ncontent-length: 0\r\n\r\n"
                    .to_vec(),
                "redirects are not followed",
            ),
            (b"HTTP/1.1 500 Oops\r\n\r\n".to_vec(), "HTTP 500"),
            (ok(&"x".repeat(MAX_BODY + 10)), "over"),
            (b"garbage without a head".to_vec(), "no HTTP head"),
        ];
        for (a, want) in cases {
            *answer.lock().unwrap() = a;
            let e = fetch_once(&st, &rel).await.unwrap_err();
            assert!(e.contains(want), "wanted `{want}`, got `{e}`");
            let kept = st.store.get_bundle(&other).unwrap().unwrap();
            assert_eq!(kept.sequence, 7, "the last good bundle stays");
        }
        // A relationship may not overwrite the own trust domain's bundle (it is refused by
        // config validation; the store path refuses too).
        let mut own = good.clone();
        own.trust_domain = st.cfg.trust_domain.clone();
        assert!(st.set_federated_bundle(own).is_err());

        // The https_web endpoint itself: a configured certificate, the own bundle served.
        let cert = dir.path().join("endpoint.pem");
        let keyf = dir.path().join("endpoint.key");
        std::fs::write(
            &cert,
            writ_core::pem::encode_many("CERTIFICATE", svid.chain.iter().map(Vec::as_slice)),
        )
        .unwrap();
        std::fs::write(&keyf, key.to_pem()).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        tokio::spawn(crate::federation::endpoint::serve(
            crate::federation::BundleEndpoint {
                listen: format!("127.0.0.1:{port}").parse().unwrap(),
                profile: crate::federation::EndpointProfile::HttpsWeb {
                    cert_file: cert,
                    key_file: keyf,
                },
            },
            st.clone(),
        ));
        let roots =
            writ_core::pem::decode_label(&st.bundles.borrow().own.x509_pem(), "CERTIFICATE")
                .unwrap();
        let url = format!("https://localhost:{port}/");
        let mut body = Err(String::new());
        for _ in 0..50 {
            body = get(&url, writ_tls::web_verifier(&roots).unwrap()).await;
            if body.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let served = Bundle::from_json(st.cfg.trust_domain.clone(), &body.unwrap()).unwrap();
        assert!(served.same_content(&st.bundles.borrow().own));
        srv.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}
