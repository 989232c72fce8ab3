//! OIDC discovery for JWT-SVIDs (`[oidc] listen, issuer`): `/.well-known/openid-configuration`
//! and `/keys` (the JWK Set of the trust domain's JWT keys, each with `kid`, `alg`, `use`),
//! which is how clouds, Vault and most identity providers accept JWT-SVIDs: they are given
//! only the issuer URL.
//!
//! Served as plain HTTP on its own listener (put TLS in front of it, as providers require
//! `https` issuers; `http://` issuers are for tests and private networks). JWT-SVIDs carry
//! `iss` = the issuer. Keys are read from the published bundle at each request, so a key
//! prepared for rotation is listed before it signs; `cache-control: max-age` is short
//! ([`MAX_AGE`]) against the preparation lead (half the key's life), and the `etag` changes
//! with the key set.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use writ_core::config::{invalid, ConfigError};
use writ_core::{Bundle, PublicJwk};

use crate::http::Reply;
use crate::state::ServerState;

/// Seconds verifiers may cache the discovery document and the keys.
pub(crate) const MAX_AGE: u64 = 60;

/// `[oidc]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOidc {
    listen: String,
    #[serde(default)]
    issuer: Option<String>,
}

/// `[oidc]` validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// Where discovery is served.
    pub listen: SocketAddr,
    /// The issuer URL (no trailing slash): discovery's `issuer`, JWT-SVIDs' `iss`.
    pub issuer: String,
}

fn check_issuer(key: &'static str, url: &str) -> Result<String, ConfigError> {
    let u = url.trim_end_matches('/');
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| invalid(key, format!("`{url}` is not an http(s) URL")))?;
    if rest.is_empty()
        || rest.contains(['?', '#', ' '])
        || rest.chars().any(char::is_control)
        || u.len() > 1024
    {
        return Err(invalid(
            key,
            format!("`{url}` must be a URL with a host and no query or fragment"),
        ));
    }
    Ok(u.to_owned())
}

impl RawOidc {
    /// Validates the table against the top-level `jwt_issuer` (they must agree when both are
    /// set); returns the config and the `iss` JWT-SVIDs will carry.
    pub(crate) fn validate(self, jwt_issuer: Option<&str>) -> Result<OidcConfig, ConfigError> {
        let listen = self.listen.parse().map_err(|_| {
            invalid(
                "oidc.listen",
                format!("`{}` is not an IP:port address", self.listen),
            )
        })?;
        let issuer = match (self.issuer, jwt_issuer) {
            (Some(i), Some(j)) if i.trim_end_matches('/') != j.trim_end_matches('/') => {
                return Err(invalid(
                    "oidc.issuer",
                    format!("`{i}` differs from jwt_issuer `{j}`: JWT-SVIDs would not validate"),
                ))
            }
            (Some(i), _) => check_issuer("oidc.issuer", &i)?,
            (None, Some(j)) => check_issuer("jwt_issuer", j)?,
            (None, None) => {
                return Err(invalid(
                    "oidc.issuer",
                    "set it (or jwt_issuer): verifiers match it against the tokens' iss",
                ))
            }
        };
        Ok(OidcConfig { listen, issuer })
    }
}

/// The discovery document.
pub(crate) fn discovery(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/keys"),
        "authorization_endpoint": "",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "ES384", "RS256"],
    })
}

fn alg(k: &PublicJwk) -> Option<&'static str> {
    match k {
        PublicJwk::Ec { crv, .. } if crv == "P-256" => Some("ES256"),
        PublicJwk::Ec { crv, .. } if crv == "P-384" => Some("ES384"),
        PublicJwk::Rsa { .. } => Some("RS256"),
        _ => None,
    }
}

/// The JWK Set of `bundle`'s JWT keys (`use` `sig`, with `kid` and `alg`).
pub(crate) fn jwks(bundle: &Bundle) -> Value {
    let keys: Vec<Value> = bundle
        .jwt_authorities
        .iter()
        .filter_map(|a| {
            let mut m = a.public_key.to_jwk_map();
            m.insert("kid".into(), a.key_id.clone().into());
            m.insert("alg".into(), alg(&a.public_key)?.into());
            m.insert("use".into(), "sig".into());
            Some(Value::Object(m))
        })
        .collect();
    json!({ "keys": keys })
}

fn reply(v: &Value) -> Reply {
    let body = v.to_string();
    let tag =
        hex::encode(&ring::digest::digest(&ring::digest::SHA256, body.as_bytes()).as_ref()[..8]);
    Reply {
        status: "200 OK",
        content_type: "application/json",
        headers: vec![
            format!("cache-control: public, max-age={MAX_AGE}"),
            format!("etag: \"{tag}\""),
        ],
        body,
    }
}

/// Serves discovery for `state` on `cfg.listen` until the task is dropped.
pub(crate) async fn serve(cfg: OidcConfig, state: Arc<ServerState>) -> std::io::Result<()> {
    let issuer = cfg.issuer.clone();
    let handler: crate::http::Handler = Arc::new(move |path: &str| match path {
        "/.well-known/openid-configuration" => reply(&discovery(&issuer)),
        "/keys" => reply(&jwks(&state.bundles.borrow().own)),
        _ => Reply::not_found(),
    });
    crate::http::serve(cfg.listen, "OIDC discovery", handler).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(listen: &str, issuer: Option<&str>) -> RawOidc {
        RawOidc {
            listen: listen.into(),
            issuer: issuer.map(str::to_owned),
        }
    }

    #[test]
    fn issuers_are_checked_and_must_agree() {
        let c = raw("127.0.0.1:8443", Some("https://oidc.example.org/"))
            .validate(None)
            .unwrap();
        assert_eq!(c.issuer, "https://oidc.example.org");
        assert!(raw("127.0.0.1:8443", None).validate(None).is_err());
        assert!(raw("x", Some("https://a")).validate(None).is_err());
        assert!(raw("127.0.0.1:1", Some("ftp://a")).validate(None).is_err());
        assert!(raw("127.0.0.1:1", Some("https://a/?x=1"))
            .validate(None)
            .is_err());
        let e = raw("127.0.0.1:1", Some("https://a"))
            .validate(Some("https://b"))
            .unwrap_err();
        assert!(e.to_string().contains("jwt_issuer"), "{e}");
        assert_eq!(
            raw("127.0.0.1:1", None)
                .validate(Some("https://b"))
                .unwrap()
                .issuer,
            "https://b"
        );
    }
}
