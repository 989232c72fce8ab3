//! writ-tls: transport security. rustls configuration for SPIFFE peers, with ring as the only
//! crypto provider, and Unix sockets placed safely ([`socket`]).
//!
//! - [`SvidResolver`]: serves the current X509-SVID as the TLS certificate (server or client
//!   side) and can be swapped at run time, so a rotated SVID is used by the next handshake
//!   without restarting anything.
//! - [`SharedBundle`]: the trust bundle a verifier checks against, also swappable (CA rotation).
//! - [`SpiffeClientVerifier`] (server side) and [`SpiffeServerVerifier`] (client side): verify the
//!   peer's chain against the bundle of the peer's trust domain with the SPIFFE leaf rules, then
//!   authorise the peer's SPIFFE ID with a caller-supplied rule. Host names play no part.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use writ_core::{Bundle, SpiffeId};

pub use rustls;

pub mod socket;

/// TLS setup failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The private key is unusable.
    #[error("private key is not usable for TLS: {0}")]
    Key(String),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// Roots or a verifier could not be set up.
    #[error("tls roots: {0}")]
    Roots(String),
}

/// The ring crypto provider, the only one writ uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A swappable certificate + key (the current SVID).
pub struct SvidResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for SvidResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SvidResolver")
    }
}

fn certified_key(chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let certs = chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

impl SvidResolver {
    /// A resolver serving `chain` (leaf first, DER) with the PKCS#8 key.
    pub fn new(chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(SvidResolver {
            current: RwLock::new(certified_key(chain, key_pkcs8)?),
        }))
    }

    /// Replaces the certificate; the next handshake uses the new one.
    pub fn update(&self, chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<(), TlsError> {
        let ck = certified_key(chain, key_pkcs8)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = ck;
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for SvidResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A swappable set of bundles (own trust domain first, plus federated ones).
#[derive(Clone, Default)]
pub struct SharedBundle {
    inner: Arc<RwLock<Arc<Vec<Bundle>>>>,
}

impl fmt::Debug for SharedBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedBundle")
    }
}

impl SharedBundle {
    /// A set holding `bundles`.
    pub fn new(bundles: Vec<Bundle>) -> Self {
        SharedBundle {
            inner: Arc::new(RwLock::new(Arc::new(bundles))),
        }
    }

    /// Replaces the set.
    pub fn set(&self, bundles: Vec<Bundle>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(bundles);
    }

    /// The current set.
    pub fn get(&self) -> Arc<Vec<Bundle>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Verifies an X509-SVID chain against the bundle of its own trust domain.
    pub fn verify(&self, chain: &[Vec<u8>], now: i64) -> Result<SpiffeId, rustls::Error> {
        let leaf = chain
            .first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        let id = writ_ca::svid::check_leaf(leaf).map_err(|e| bad_cert(e.to_string()))?;
        let bundles = self.get();
        let bundle = bundles
            .iter()
            .find(|b| id.is_member_of(&b.trust_domain))
            .ok_or_else(|| {
                bad_cert(format!(
                    "no bundle for trust domain `{}`",
                    id.trust_domain_str()
                ))
            })?;
        writ_ca::verify_x509_svid(chain, bundle, now).map_err(|e| bad_cert(e.to_string()))
    }
}

fn bad_cert(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(VerifyError(msg)),
    )))
}

#[derive(Debug)]
struct VerifyError(String);

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VerifyError {}

/// Which peer SPIFFE IDs are acceptable.
pub type Authorizer = Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>;

/// Accepts any SPIFFE ID (authorisation happens later, per request).
pub fn any_id() -> Authorizer {
    Arc::new(|_| true)
}

/// Accepts exactly `id`.
pub fn exact_id(id: SpiffeId) -> Authorizer {
    Arc::new(move |peer| *peer == id)
}

fn to_vecs(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Vec<Vec<u8>> {
    std::iter::once(end_entity)
        .chain(intermediates)
        .map(|c| c.as_ref().to_vec())
        .collect()
}

fn algs() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// The handshake-signature half of both verifiers: ring's algorithms, nothing SPIFFE-specific.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// Server-side verifier of client X509-SVIDs.
pub struct SpiffeClientVerifier {
    bundle: SharedBundle,
    authorize: Authorizer,
    optional: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpiffeClientVerifier")
    }
}

impl SpiffeClientVerifier {
    /// Verifies client SVIDs against `bundle`; with `optional`, clients may also present none
    /// (the server then refuses per request whatever needs an identity).
    pub fn new(bundle: SharedBundle, authorize: Authorizer, optional: bool) -> Arc<Self> {
        Arc::new(SpiffeClientVerifier {
            bundle,
            authorize,
            optional,
            algs: algs(),
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        !self.optional
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = self
            .bundle
            .verify(&to_vecs(end_entity, intermediates), now.as_secs() as i64)?;
        if !(self.authorize)(&id) {
            return Err(bad_cert(format!("peer `{id}` is not authorised")));
        }
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Client-side verifier of server X509-SVIDs (the server name in the handshake is ignored).
pub struct SpiffeServerVerifier {
    bundle: SharedBundle,
    authorize: Authorizer,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpiffeServerVerifier")
    }
}

impl SpiffeServerVerifier {
    /// Verifies server SVIDs against `bundle` and accepts IDs for which `authorize` is true.
    pub fn new(bundle: SharedBundle, authorize: Authorizer) -> Arc<Self> {
        Arc::new(SpiffeServerVerifier {
            bundle,
            authorize,
            algs: algs(),
        })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = self
            .bundle
            .verify(&to_vecs(end_entity, intermediates), now.as_secs() as i64)?;
        if !(self.authorize)(&id) {
            return Err(bad_cert(format!(
                "server `{id}` is not the expected identity"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// A server config presenting `resolver`'s SVID and checking clients with `verifier`.
/// ALPN is `h2` (gRPC).
pub fn server_config(
    resolver: Arc<SvidResolver>,
    verifier: Arc<SpiffeClientVerifier>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(c)
}

/// A client config checking the server with `verifier` and presenting `client` when given.
/// ALPN is `h2` (gRPC).
pub fn client_config(
    verifier: Arc<SpiffeServerVerifier>,
    client: Option<Arc<SvidResolver>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut c = match client {
        Some(r) => b.with_client_cert_resolver(r),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    Ok(c)
}

/// An HTTPS (HTTP/1.1) server config presenting what `resolver` holds, without client
/// authentication: the federation bundle endpoint.
pub fn https_server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// An HTTPS (HTTP/1.1) client config checking the server with `verifier`, presenting nothing.
pub fn https_client_config(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// A Web PKI verifier (`https_web`) trusting `roots` (DER CA certificates).
pub fn web_verifier(
    roots: &[Vec<u8>],
) -> Result<Arc<dyn rustls::client::danger::ServerCertVerifier>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(rustls_pki_types::CertificateDer::from(r.clone()))
            .map_err(|e| TlsError::Roots(format!("bad root certificate: {e}")))?;
    }
    let v =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
            .build()
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    Ok(v)
}
