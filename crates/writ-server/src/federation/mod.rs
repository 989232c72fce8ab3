//! Federation: trust across trust domains without merging them (spiffe-requirements.md
//! section 7).
//!
//! - [`endpoint`]: the bundle endpoint, serving this trust domain's SPIFFE bundle over HTTPS
//!   (`https_spiffe`: the server's own SVID; `https_web`: a configured certificate).
//! - [`fetch`]: each relationship's fetcher, polling the remote endpoint at its refresh hint.
//!
//! Config (`[federation]`): `bundle_endpoint = { listen, profile, cert_file, key_file }` and
//! `[[federation.relationships]]` with `trust_domain`, `bundle_endpoint_url`, `profile`,
//! `endpoint_spiffe_id` (https_spiffe), `trust_domain_bundle` (https_spiffe bootstrap: SPIFFE
//! bundle JSON or PEM) or `ca_file` (https_web roots).
//!
//! Invariants: a remote bundle only ever replaces the bundle of its own trust domain; a fetch
//! that fails or returns anything unusable keeps the last good bundle; every change is
//! journalled (`bundle.updated`).

pub(crate) mod endpoint;
pub(crate) mod fetch;
pub(crate) mod manage;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use writ_core::config::{invalid, ConfigError};
use writ_core::{SpiffeId, TrustDomain};

/// `[federation]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFederation {
    #[serde(default)]
    bundle_endpoint: Option<RawEndpoint>,
    #[serde(default)]
    relationships: Vec<RawRelationship>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    listen: String,
    #[serde(default = "default_profile")]
    profile: String,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
}

fn default_profile() -> String {
    "https_spiffe".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelationship {
    trust_domain: String,
    bundle_endpoint_url: String,
    #[serde(default = "default_profile")]
    profile: String,
    #[serde(default)]
    endpoint_spiffe_id: Option<String>,
    #[serde(default)]
    trust_domain_bundle: Option<PathBuf>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

/// How the bundle endpoint authenticates itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointProfile {
    /// The server's own X509-SVID (`spiffe://<td>/writ/server`).
    HttpsSpiffe,
    /// A Web PKI certificate and key (PEM files).
    HttpsWeb {
        /// Certificate chain, leaf first.
        cert_file: PathBuf,
        /// PKCS#8 key.
        key_file: PathBuf,
    },
}

/// `[federation.bundle_endpoint]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpoint {
    /// Where it is served.
    pub listen: SocketAddr,
    /// How it authenticates.
    pub profile: EndpointProfile,
}

/// How a remote endpoint is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteProfile {
    /// Its certificate is an X509-SVID of `endpoint_spiffe_id` under the remote trust
    /// domain's bundle (bootstrapped from `trust_domain_bundle`, then the last one fetched).
    HttpsSpiffe {
        /// The endpoint's SPIFFE ID.
        endpoint_spiffe_id: SpiffeId,
        /// First bundle (SPIFFE bundle JSON or PEM), used until one has been fetched.
        trust_domain_bundle: Option<PathBuf>,
    },
    /// Web PKI under the CA certificates in `ca_file` (PEM).
    HttpsWeb {
        /// Roots.
        ca_file: PathBuf,
    },
}

/// One `[[federation.relationships]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relationship {
    /// The remote trust domain.
    pub trust_domain: TrustDomain,
    /// `https://host:port/path`.
    pub url: String,
    /// How the endpoint is authenticated.
    pub profile: RemoteProfile,
}

/// `[federation]` validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Federation {
    /// The bundle endpoint, if served.
    pub bundle_endpoint: Option<BundleEndpoint>,
    /// Remote trust domains to fetch.
    pub relationships: Vec<Relationship>,
}

impl RawFederation {
    /// Validates the table for trust domain `own`.
    pub(crate) fn validate(self, own: &TrustDomain) -> Result<Federation, ConfigError> {
        let bundle_endpoint = match self.bundle_endpoint {
            None => None,
            Some(e) => {
                let listen = e.listen.parse().map_err(|_| {
                    invalid(
                        "federation.bundle_endpoint.listen",
                        format!("`{}` is not an IP:port address", e.listen),
                    )
                })?;
                let profile = match (e.profile.as_str(), e.cert_file, e.key_file) {
                    ("https_spiffe", None, None) => EndpointProfile::HttpsSpiffe,
                    ("https_spiffe", _, _) => return Err(invalid(
                        "federation.bundle_endpoint",
                        "https_spiffe serves the server's own SVID: remove cert_file and key_file",
                    )),
                    ("https_web", Some(cert_file), Some(key_file)) => EndpointProfile::HttpsWeb {
                        cert_file,
                        key_file,
                    },
                    ("https_web", _, _) => {
                        return Err(invalid(
                            "federation.bundle_endpoint",
                            "https_web needs cert_file and key_file",
                        ))
                    }
                    (p, _, _) => {
                        return Err(invalid(
                            "federation.bundle_endpoint.profile",
                            format!("`{p}` is not https_spiffe or https_web"),
                        ))
                    }
                };
                Some(BundleEndpoint { listen, profile })
            }
        };
        let mut relationships = Vec::new();
        for r in self.relationships {
            let key = "federation.relationships";
            let td = TrustDomain::new(&r.trust_domain).map_err(|e| invalid(key, e))?;
            if &td == own {
                return Err(invalid(
                    key,
                    format!("`{td}` is this server's own trust domain"),
                ));
            }
            if relationships
                .iter()
                .any(|x: &Relationship| x.trust_domain == td)
            {
                return Err(invalid(key, format!("`{td}` is listed twice")));
            }
            if !r.bundle_endpoint_url.starts_with("https://") || r.bundle_endpoint_url.len() > 2048
            {
                return Err(invalid(
                    key,
                    format!(
                        "bundle_endpoint_url `{}` is not an https:// URL",
                        r.bundle_endpoint_url
                    ),
                ));
            }
            fetch::split_url(&r.bundle_endpoint_url).map_err(|e| invalid(key, e))?;
            let profile = match r.profile.as_str() {
                "https_spiffe" => {
                    let id = r.endpoint_spiffe_id.ok_or_else(|| {
                        invalid(
                            key,
                            format!("`{td}`: https_spiffe needs endpoint_spiffe_id"),
                        )
                    })?;
                    let id = SpiffeId::parse(&id).map_err(|e| invalid(key, e))?;
                    if id.trust_domain() != td {
                        return Err(invalid(
                            key,
                            format!("endpoint_spiffe_id `{id}` is not in `{td}`"),
                        ));
                    }
                    RemoteProfile::HttpsSpiffe {
                        endpoint_spiffe_id: id,
                        trust_domain_bundle: r.trust_domain_bundle,
                    }
                }
                "https_web" => RemoteProfile::HttpsWeb {
                    ca_file: r.ca_file.ok_or_else(|| {
                        invalid(
                            key,
                            format!(
                                "`{td}`: https_web needs ca_file (no system roots are bundled)"
                            ),
                        )
                    })?,
                },
                p => {
                    return Err(invalid(
                        key,
                        format!("profile `{p}` is not https_spiffe or https_web"),
                    ))
                }
            };
            relationships.push(Relationship {
                trust_domain: td,
                url: r.bundle_endpoint_url,
                profile,
            });
        }
        Ok(Federation {
            bundle_endpoint,
            relationships,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Federation, ConfigError> {
        let raw: RawFederation = toml::from_str(t).unwrap();
        raw.validate(&TrustDomain::new("example.org").unwrap())
    }

    #[test]
    fn relationships_and_endpoints_are_checked() {
        let ok = parse(
            "bundle_endpoint = { listen = \"127.0.0.1:8443\" }\n[[relationships]]\ntrust_domain = \"other.org\"\nbundle_endpoint_url = \"https://b.example:8443/\"\nendpoint_spiffe_id = \"spiffe://other.org/writ/server\"\n",
        )
        .unwrap();
        assert_eq!(ok.relationships.len(), 1);
        for (bad, why) in [
            ("bundle_endpoint = { listen = \"x\" }", "listen"),
            ("bundle_endpoint = { listen = \"127.0.0.1:1\", profile = \"ftp\" }", "profile"),
            ("bundle_endpoint = { listen = \"127.0.0.1:1\", profile = \"https_web\" }", "cert_file"),
            ("[[relationships]]\ntrust_domain = \"example.org\"\nbundle_endpoint_url = \"https://a/\"\nendpoint_spiffe_id = \"spiffe://example.org/x\"", "own trust domain"),
            ("[[relationships]]\ntrust_domain = \"other.org\"\nbundle_endpoint_url = \"http://a/\"\nendpoint_spiffe_id = \"spiffe://other.org/x\"", "https://"),
            ("[[relationships]]\ntrust_domain = \"other.org\"\nbundle_endpoint_url = \"https://a/\"", "endpoint_spiffe_id"),
            ("[[relationships]]\ntrust_domain = \"other.org\"\nbundle_endpoint_url = \"https://a/\"\nendpoint_spiffe_id = \"spiffe://third.org/x\"", "not in"),
            ("[[relationships]]\ntrust_domain = \"other.org\"\nbundle_endpoint_url = \"https://a/\"\nprofile = \"https_web\"", "ca_file"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(
            fetch::split_url("https://h:9/p?q").unwrap(),
            ("h".to_owned(), 9, "/p?q".to_owned())
        );
        assert_eq!(fetch::split_url("https://h").unwrap().1, 443);
        assert!(fetch::split_url("https://u@h/").is_err());
    }
}
