//! Signed checkpoints: the head of the journal (`seq`, `hash`) signed by the audit key.
//!
//! The signed message is [`CHECKPOINT_CONTEXT`], then `seq` (8 bytes, big-endian), the 32-byte
//! head hash and `time` (unix milliseconds, 8 bytes big-endian); the signature is ES256 (ECDSA
//! P-256 with SHA-256, ASN.1 DER), the key is named by `kid`.

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use serde::{Deserialize, Serialize};

/// Domain separation for checkpoint signatures.
pub const CHECKPOINT_CONTEXT: &[u8] = b"writ audit checkpoint v1\0";

/// A signed head of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last record covered.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
    /// When it was signed (unix milliseconds).
    pub time_ms: i64,
    /// The audit key that signed it.
    pub kid: String,
    /// ES256 signature, ASN.1 DER, hex.
    pub signature: String,
}

/// Why a checkpoint could not be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The head hash is not 32 bytes of hex.
    #[error("checkpoint hash `{0}` is not a SHA-256 in hex")]
    BadHash(String),
    /// The signer failed.
    #[error("cannot sign checkpoint: {0}")]
    Sign(String),
    /// Signed by a key the verifier does not know.
    #[error("checkpoint at seq {seq} is signed by unknown audit key `{kid}`")]
    UnknownKey {
        /// The checkpoint.
        seq: u64,
        /// Its key ID.
        kid: String,
    },
    /// The signature does not verify.
    #[error("checkpoint at seq {0} has a signature that does not verify")]
    BadSignature(u64),
}

/// A public audit key: its ID and uncompressed P-256 point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    /// Key ID.
    pub kid: String,
    /// Uncompressed point (65 bytes).
    pub point: Vec<u8>,
}

fn message(seq: u64, hash: &str, time_ms: i64) -> Result<Vec<u8>, CheckpointError> {
    let h = hex::decode(hash)
        .ok()
        .filter(|h| h.len() == 32)
        .ok_or_else(|| CheckpointError::BadHash(hash.to_owned()))?;
    let mut m = CHECKPOINT_CONTEXT.to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&h);
    m.extend_from_slice(&time_ms.to_be_bytes());
    Ok(m)
}

impl Checkpoint {
    /// Signs the head `(seq, hash)` with `sign` (ES256, DER) under key `kid`.
    pub fn sign(
        seq: u64,
        hash: &str,
        time_ms: i64,
        kid: &str,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
    ) -> Result<Self, CheckpointError> {
        let sig = sign(&message(seq, hash, time_ms)?).map_err(CheckpointError::Sign)?;
        Ok(Checkpoint {
            seq,
            hash: hash.to_owned(),
            time_ms,
            kid: kid.to_owned(),
            signature: hex::encode(sig),
        })
    }

    /// Checks the signature with the key named by `kid` among `keys`.
    pub fn verify(&self, keys: &[VerifyingKey]) -> Result<(), CheckpointError> {
        let key =
            keys.iter()
                .find(|k| k.kid == self.kid)
                .ok_or_else(|| CheckpointError::UnknownKey {
                    seq: self.seq,
                    kid: self.kid.clone(),
                })?;
        let sig =
            hex::decode(&self.signature).map_err(|_| CheckpointError::BadSignature(self.seq))?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key.point)
            .verify(&message(self.seq, &self.hash, self.time_ms)?, &sig)
            .map_err(|_| CheckpointError::BadSignature(self.seq))
    }
}
