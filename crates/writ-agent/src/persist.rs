//! The agent's identity on disk: `agent_svid.pem` (chain), `agent_svid.key` (0600) and
//! `bundle.json` (the trust domain bundle) in `data_dir`, each written atomically. A restarted
//! agent resumes from them without attesting again, as long as the SVID has not expired.

use std::path::{Path, PathBuf};

use writ_ca::PrivateKey;
use writ_core::{Bundle, SpiffeId, TrustDomain};

/// The agent's own SVID and key.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// Agent SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// Private key.
    pub key: PrivateKey,
    /// NotBefore of the leaf (unix seconds).
    pub issued_at: i64,
    /// NotAfter of the leaf (unix seconds).
    pub expires_at: i64,
}

/// Persistence failures.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Filesystem failure.
    #[error("agent data `{path}`: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file does not decode.
    #[error("agent data `{path}` is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The files of one agent's data directory.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

fn corrupt(p: &Path, reason: impl ToString) -> PersistError {
    PersistError::Corrupt {
        path: p.display().to_string(),
        reason: reason.to_string(),
    }
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> PersistError + '_ {
    move |source| PersistError::Io {
        path: p.display().to_string(),
        source,
    }
}

/// Reads the validity window and SPIFFE ID of a leaf.
pub(crate) fn leaf_info(der: &[u8]) -> Option<(SpiffeId, i64, i64)> {
    let l = writ_ca::svid::parse_leaf(der).ok()?;
    Some((l.spiffe_id, l.not_before, l.not_after))
}

impl Store {
    /// Opens (creating, mode 0700) the data directory.
    pub(crate) fn open(dir: &Path) -> Result<Self, PersistError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        Ok(Store {
            dir: dir.to_owned(),
        })
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Saves the identity (key first, 0600).
    pub(crate) fn save_identity(&self, id: &Identity) -> Result<(), PersistError> {
        let k = self.p("agent_svid.key");
        writ_ca::keys::write_atomic(&k, id.key.to_pem().as_bytes(), 0o600).map_err(io(&k))?;
        let c = self.p("agent_svid.pem");
        let pem = writ_core::pem::encode_many("CERTIFICATE", id.chain.iter().map(Vec::as_slice));
        writ_ca::keys::write_atomic(&c, pem.as_bytes(), 0o600).map_err(io(&c))
    }

    /// Loads the identity, if one is stored and has not expired at `now`.
    pub(crate) fn load_identity(&self, now: i64) -> Result<Option<Identity>, PersistError> {
        let (c, k) = (self.p("agent_svid.pem"), self.p("agent_svid.key"));
        let (Ok(cert), Ok(key)) = (std::fs::read_to_string(&c), std::fs::read_to_string(&k)) else {
            return Ok(None);
        };
        let chain =
            writ_core::pem::decode_label(&cert, "CERTIFICATE").map_err(|e| corrupt(&c, e))?;
        let key = PrivateKey::from_pem(&key).map_err(|e| corrupt(&k, e))?;
        let (spiffe_id, issued_at, expires_at) =
            leaf_info(&chain[0]).ok_or_else(|| corrupt(&c, "not an X509-SVID"))?;
        if expires_at <= now {
            tracing::info!(agent = %spiffe_id, "persisted agent SVID has expired; attesting again");
            return Ok(None);
        }
        Ok(Some(Identity {
            spiffe_id,
            chain,
            key,
            issued_at,
            expires_at,
        }))
    }

    /// Forgets the identity (after eviction).
    pub(crate) fn clear_identity(&self) {
        let _ = std::fs::remove_file(self.p("agent_svid.pem"));
        let _ = std::fs::remove_file(self.p("agent_svid.key"));
    }

    /// Saves the trust domain bundle.
    pub(crate) fn save_bundle(&self, b: &Bundle) -> Result<(), PersistError> {
        let p = self.p("bundle.json");
        let json = b.to_json().map_err(|e| corrupt(&p, e))?;
        writ_ca::keys::write_atomic(&p, json.as_bytes(), 0o600).map_err(io(&p))
    }

    /// Loads the trust domain bundle, if stored.
    pub(crate) fn load_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>, PersistError> {
        let p = self.p("bundle.json");
        match std::fs::read(&p) {
            Ok(b) => Bundle::from_json(td.clone(), &b)
                .map(Some)
                .map_err(|e| corrupt(&p, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }
}
