//! The audit checkpoint key: an ES256 (P-256) key kept by the key manager under the ID `audit`,
//! made on first start. Its `kid` is `audit-` and the first 16 hex digits of the SHA-256 of its
//! public point, so a key is recognisable in exported checkpoints.

use ring::digest::{digest, SHA256};
use writ_audit::{Checkpoint, VerifyingKey};
use writ_ca::{KeyManager, KeyType, PrivateKey};

use super::AuditError;

/// The key manager ID of the audit key.
const KEY_ID: &str = "audit";

/// The audit key with its public half.
pub(crate) struct AuditKey {
    key: PrivateKey,
    kid: String,
    point: Vec<u8>,
}

impl AuditKey {
    /// The stored key, or a new one (then `true`).
    pub(crate) fn load_or_make(keys: &dyn KeyManager) -> Result<(Self, bool), AuditError> {
        let err = |e: writ_ca::CaError| AuditError::Key(e.to_string());
        let (key, made) = match keys.get(KEY_ID).map_err(err)? {
            Some(k) if k.key_type() == KeyType::EcP256 => (k, false),
            Some(k) => {
                return Err(AuditError::Key(format!(
                    "the key manager's `{KEY_ID}` key is {}, not ec-p256",
                    k.key_type().name()
                )))
            }
            None => (keys.generate(KEY_ID, KeyType::EcP256).map_err(err)?, true),
        };
        let point = key.public_point().map_err(err)?;
        let kid = format!(
            "audit-{}",
            &hex::encode(digest(&SHA256, &point).as_ref())[..16]
        );
        Ok((AuditKey { key, kid, point }, made))
    }

    /// The key's ID in checkpoints.
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, for verification.
    pub(crate) fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            kid: self.kid.clone(),
            point: self.point.clone(),
        }
    }

    /// Signs the head `(seq, hash)` of the journal at `time_ms`.
    pub(crate) fn checkpoint(
        &self,
        seq: u64,
        hash: &str,
        time_ms: i64,
    ) -> Result<Checkpoint, String> {
        Checkpoint::sign(seq, hash, time_ms, &self.kid, |m| {
            self.key.sign_asn1(m).map_err(|e| e.to_string())
        })
        .map_err(|e| e.to_string())
    }
}
