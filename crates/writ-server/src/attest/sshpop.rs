//! The `sshpop` attestor: proof of possession of an SSH host key certified by a configured SSH
//! certificate authority.
//!
//! Payload: the host certificate (OpenSSH wire format, what `ssh-keygen -s ... -h` writes,
//! base64-decoded). The server checks that it is a host certificate, signed by one of the
//! configured CA keys, valid now, with at least one principal and no critical option it does
//! not know; then sends a fresh 32-byte nonce; the agent signs [`writ_proto::SSHPOP_CONTEXT`]
//! followed by the nonce with the host key; the server verifies with the certified key.
//!
//! Agent ID: `sshpop/<sha256 of the host key blob, hex>`. Selectors: `principal:<p>` for each
//! principal and `ca:fingerprint:<sha256 of the CA key blob, hex>`.

use std::path::PathBuf;
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use writ_ca::ssh::{Certificate, PublicKey, SshError, HOST_CERT};
use writ_core::config::{invalid, ConfigError};
use writ_core::{Selector, TrustDomain};

use super::{agent_id, AttestError, Attested, Build, Challenge, Ctx, NodeAttestor, Step};
use crate::plugin::{check, settings, Plugin};

/// `[node_attestor.sshpop]`: CA public keys inline and/or in a file (`authorized_keys` form).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    cert_authorities: Vec<String>,
    #[serde(default)]
    cert_authorities_path: Option<PathBuf>,
}

/// The catalog entry.
pub(super) const PLUGIN: Plugin<Build> = Plugin {
    name: "sshpop",
    check: check::<Settings>,
    build,
};

fn build(ctx: &Ctx, table: &toml::Table) -> Result<Arc<dyn NodeAttestor>, ConfigError> {
    const KEY: &str = "node_attestor.sshpop";
    let s: Settings = settings(KEY, table)?;
    let mut lines = s.cert_authorities;
    if let Some(p) = &s.cert_authorities_path {
        let text = std::fs::read_to_string(p)
            .map_err(|e| invalid(KEY, format!("cannot read `{}`: {e}", p.display())))?;
        lines.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let cas = lines
        .iter()
        .map(|l| PublicKey::from_openssh(l).map_err(|e| invalid(KEY, format!("CA key `{l}`: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if cas.is_empty() {
        return Err(invalid(
            KEY,
            "no certificate authority: set cert_authorities or cert_authorities_path",
        ));
    }
    Ok(Arc::new(SshPopAttestor {
        td: ctx.trust_domain.clone(),
        cas,
    }))
}

/// Why sshpop evidence was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SshPopError {
    /// Not a certificate writ can read.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// A user certificate, not a host certificate.
    #[error("certificate type {0} is not a host certificate")]
    NotHost(u32),
    /// Signed by a CA that is not configured.
    #[error("certificate is signed by CA `{0}`, which is not a configured sshpop CA")]
    UnknownCa(String),
    /// Outside its validity.
    #[error("certificate is not valid now (valid from {after} to {before})")]
    Expired {
        /// Valid after.
        after: u64,
        /// Valid before.
        before: u64,
    },
    /// No principals.
    #[error("certificate has no principals")]
    NoPrincipals,
    /// A critical option writ does not enforce.
    #[error("certificate has critical option `{0}`, which sshpop does not support")]
    CriticalOption(String),
    /// The challenge answer does not verify.
    #[error("challenge signature does not verify with the host key")]
    Signature,
    /// The agent ID it makes is not valid.
    #[error("agent id: {0}")]
    AgentId(#[from] writ_core::IdError),
    /// No randomness for the nonce.
    #[error("random number generator failed")]
    Random,
}

impl From<SshPopError> for AttestError {
    fn from(e: SshPopError) -> Self {
        use SshPopError as E;
        match e {
            E::Ssh(SshError::Malformed(_)) | E::AgentId(_) => AttestError::Malformed(e.into()),
            E::Random => AttestError::Internal(e.into()),
            _ => AttestError::Refused(e.into()),
        }
    }
}

/// Attests agents by SSH host certificate and proof of possession of the host key.
pub(crate) struct SshPopAttestor {
    td: TrustDomain,
    cas: Vec<PublicKey>,
}

impl NodeAttestor for SshPopAttestor {
    fn name(&self) -> &'static str {
        "sshpop"
    }

    fn start(&self, payload: &[u8], now: i64) -> Result<Step, AttestError> {
        let cert = Certificate::parse_and_verify(payload).map_err(SshPopError::from)?;
        if cert.cert_type != HOST_CERT {
            return Err(SshPopError::NotHost(cert.cert_type).into());
        }
        if !self.cas.contains(&cert.signature_key) {
            return Err(SshPopError::UnknownCa(cert.signature_key.fingerprint()).into());
        }
        let now = u64::try_from(now).unwrap_or(0);
        if now < cert.valid_after || now >= cert.valid_before {
            return Err(SshPopError::Expired {
                after: cert.valid_after,
                before: cert.valid_before,
            }
            .into());
        }
        if let Some(o) = cert.critical_options.first() {
            return Err(SshPopError::CriticalOption(o.clone()).into());
        }
        if cert.principals.is_empty() {
            return Err(SshPopError::NoPrincipals.into());
        }
        let mut selectors: Vec<Selector> = cert
            .principals
            .iter()
            .filter_map(|p| Selector::new("sshpop", &format!("principal:{p}")).ok())
            .collect();
        if let Ok(s) = Selector::new(
            "sshpop",
            &format!("ca:fingerprint:{}", cert.signature_key.fingerprint()),
        ) {
            selectors.push(s);
        }
        let mut nonce = vec![0u8; writ_proto::X509POP_NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SshPopError::Random)?;
        let attested = Attested {
            agent_id: agent_id(&self.td, "sshpop", &cert.key.fingerprint())
                .map_err(SshPopError::from)?,
            selectors,
            aliases: Vec::new(),
            can_reattest: true,
        };
        Ok(Step::Challenge {
            challenge: nonce.clone(),
            pending: Box::new(SshChallenge {
                nonce,
                key: cert.key,
                attested,
            }),
        })
    }
}

struct SshChallenge {
    nonce: Vec<u8>,
    key: PublicKey,
    attested: Attested,
}

impl Challenge for SshChallenge {
    fn verify(self: Box<Self>, response: &[u8]) -> Result<Attested, AttestError> {
        let mut msg = writ_proto::SSHPOP_CONTEXT.to_vec();
        msg.extend_from_slice(&self.nonce);
        self.key
            .verify_raw(&msg, response)
            .map_err(|_| SshPopError::Signature)?;
        Ok(self.attested)
    }
}
