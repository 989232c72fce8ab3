//! OpenSSH keys and certificates, as far as `sshpop` node attestation needs them: host
//! certificates (PROTOCOL.certkeys) parsed and their CA signature verified, public keys in
//! `authorized_keys` form, and unencrypted OpenSSH private keys (PROTOCOL.key) for signing a
//! challenge. Cryptography is `ring`'s.
//!
//! Supported: Ed25519 and ECDSA P-256/P-384 host keys; Ed25519, ECDSA P-256/P-384 and RSA
//! (`rsa-sha2-256`/`rsa-sha2-512`, 2048-8192 bits) CA keys. RSA host keys are refused with a
//! clear error (ring cannot sign with a key given as OpenSSH's `n, e, d, iqmp, p, q`).
//!
//! Invariants: every length read from the wire is checked against what is left and capped
//! (no allocation larger than the input, no panic on any input); a certificate is accepted
//! only when its signature verifies with its own signature key over its own body.

use base64::Engine;
use ring::digest::{digest, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, RsaPublicKeyComponents, UnparsedPublicKey,
};

/// Largest certificate or key accepted (bytes of wire format).
pub const MAX_BLOB: usize = 16 * 1024;
/// Most principals accepted in a certificate.
pub const MAX_PRINCIPALS: usize = 256;

/// Certificate type of a host certificate.
pub const HOST_CERT: u32 = 2;

/// Why SSH data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// The data ends early, a length is impossible, or it is too large.
    #[error("malformed SSH data: {0}")]
    Malformed(&'static str),
    /// A key or certificate type writ does not support.
    #[error("unsupported SSH key type `{0}`")]
    Unsupported(String),
    /// The private key file is encrypted.
    #[error(
        "the SSH private key is encrypted (cipher `{0}`); give the agent an unencrypted host key"
    )]
    Encrypted(String),
    /// A signature does not verify.
    #[error("SSH signature does not verify")]
    BadSignature,
    /// Signing failed.
    #[error("cannot sign with the SSH key: {0}")]
    Sign(&'static str),
}

/// Reads SSH wire format (RFC 4251 5): `uint32`, `uint64`, `string`.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, SshError> {
        let (h, t) = self
            .buf
            .split_first_chunk::<4>()
            .ok_or(SshError::Malformed("truncated uint32"))?;
        self.buf = t;
        Ok(u32::from_be_bytes(*h))
    }

    fn u64(&mut self) -> Result<u64, SshError> {
        let (h, t) = self
            .buf
            .split_first_chunk::<8>()
            .ok_or(SshError::Malformed("truncated uint64"))?;
        self.buf = t;
        Ok(u64::from_be_bytes(*h))
    }

    fn string(&mut self) -> Result<&'a [u8], SshError> {
        let n = self.u32()? as usize;
        if n > self.buf.len() {
            return Err(SshError::Malformed("string longer than the data"));
        }
        let (s, t) = self.buf.split_at(n);
        self.buf = t;
        Ok(s)
    }

    fn text(&mut self) -> Result<&'a str, SshError> {
        std::str::from_utf8(self.string()?).map_err(|_| SshError::Malformed("text is not UTF-8"))
    }

    /// An `mpint`, without its sign/leading zero bytes.
    fn mpint(&mut self) -> Result<&'a [u8], SshError> {
        let s = self.string()?;
        if s.first().is_some_and(|b| b & 0x80 != 0) {
            return Err(SshError::Malformed("negative mpint"));
        }
        let zeros = s.iter().take_while(|b| **b == 0).count();
        Ok(&s[zeros..])
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// A public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// `ssh-ed25519`: 32 bytes.
    Ed25519(Vec<u8>),
    /// `ecdsa-sha2-nistp256` / `nistp384`: the curve name and the uncompressed point.
    Ecdsa {
        /// `nistp256` or `nistp384`.
        curve: String,
        /// Uncompressed point.
        point: Vec<u8>,
    },
    /// `ssh-rsa`: exponent and modulus (big-endian, no leading zeros).
    Rsa {
        /// Public exponent.
        e: Vec<u8>,
        /// Modulus.
        n: Vec<u8>,
    },
}

impl PublicKey {
    /// The key type name.
    pub fn algorithm(&self) -> String {
        match self {
            PublicKey::Ed25519(_) => "ssh-ed25519".into(),
            PublicKey::Ecdsa { curve, .. } => format!("ecdsa-sha2-{curve}"),
            PublicKey::Rsa { .. } => "ssh-rsa".into(),
        }
    }

    /// The public key blob (what `authorized_keys` base64-encodes).
    pub fn blob(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_string(&mut out, self.algorithm().as_bytes());
        match self {
            PublicKey::Ed25519(k) => put_string(&mut out, k),
            PublicKey::Ecdsa { curve, point } => {
                put_string(&mut out, curve.as_bytes());
                put_string(&mut out, point);
            }
            PublicKey::Rsa { e, n } => {
                for v in [e, n] {
                    let mut m = Vec::with_capacity(v.len() + 1);
                    if v.first().is_some_and(|b| b & 0x80 != 0) {
                        m.push(0);
                    }
                    m.extend_from_slice(v);
                    put_string(&mut out, &m);
                }
            }
        }
        out
    }

    /// SHA-256 of the blob, hex (as writ names keys in selectors and agent IDs).
    pub fn fingerprint(&self) -> String {
        hex::encode(digest(&SHA256, &self.blob()).as_ref())
    }

    /// Parses a public key blob.
    pub fn from_blob(blob: &[u8]) -> Result<Self, SshError> {
        let mut r = Reader { buf: blob };
        let alg = r.text()?.to_owned();
        let k = Self::read_fields(&alg, &mut r)?;
        if !r.buf.is_empty() {
            return Err(SshError::Malformed("trailing bytes after the public key"));
        }
        Ok(k)
    }

    /// Parses `authorized_keys` form: `<type> <base64> [comment]`.
    pub fn from_openssh(line: &str) -> Result<Self, SshError> {
        let mut f = line.split_whitespace();
        let _alg = f.next().ok_or(SshError::Malformed("empty key line"))?;
        let b64 = f
            .next()
            .ok_or(SshError::Malformed("no key after the type"))?;
        if b64.len() > MAX_BLOB * 2 {
            return Err(SshError::Malformed("key too large"));
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SshError::Malformed("key is not base64"))?;
        Self::from_blob(&blob)
    }

    fn read_fields(alg: &str, r: &mut Reader<'_>) -> Result<Self, SshError> {
        match alg {
            "ssh-ed25519" => {
                let k = r.string()?;
                if k.len() != 32 {
                    return Err(SshError::Malformed("Ed25519 key is not 32 bytes"));
                }
                Ok(PublicKey::Ed25519(k.to_vec()))
            }
            "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" => {
                let curve = r.text()?.to_owned();
                if alg.strip_prefix("ecdsa-sha2-") != Some(curve.as_str()) {
                    return Err(SshError::Malformed(
                        "ECDSA curve does not match the key type",
                    ));
                }
                let point = r.string()?.to_vec();
                let want = if curve == "nistp256" { 65 } else { 97 };
                if point.len() != want || point[0] != 4 {
                    return Err(SshError::Malformed("ECDSA point is not uncompressed"));
                }
                Ok(PublicKey::Ecdsa { curve, point })
            }
            "ssh-rsa" => {
                let e = r.mpint()?.to_vec();
                let n = r.mpint()?.to_vec();
                Ok(PublicKey::Rsa { e, n })
            }
            other => Err(SshError::Unsupported(other.to_owned())),
        }
    }

    /// Verifies an SSH signature blob (`string format, string signature`) over `msg`.
    pub fn verify_ssh_signature(&self, msg: &[u8], sig_blob: &[u8]) -> Result<(), SshError> {
        let mut r = Reader { buf: sig_blob };
        let format = r.text()?;
        let sig = r.string()?;
        let ok = match (self, format) {
            (PublicKey::Ed25519(k), "ssh-ed25519") => {
                UnparsedPublicKey::new(&signature::ED25519, k).verify(msg, sig)
            }
            (PublicKey::Ecdsa { curve, point }, f) if f == format!("ecdsa-sha2-{curve}") => {
                // r and s as mpints; ring wants them fixed-width, concatenated.
                let mut rs = Reader { buf: sig };
                let (sr, ss) = (rs.mpint()?, rs.mpint()?);
                let (width, alg) = if curve == "nistp256" {
                    (32, &signature::ECDSA_P256_SHA256_FIXED)
                } else {
                    (48, &signature::ECDSA_P384_SHA384_FIXED)
                };
                if sr.len() > width || ss.len() > width {
                    return Err(SshError::BadSignature);
                }
                let mut fixed = vec![0u8; 2 * width];
                fixed[width - sr.len()..width].copy_from_slice(sr);
                fixed[2 * width - ss.len()..].copy_from_slice(ss);
                UnparsedPublicKey::new(alg, point).verify(msg, &fixed)
            }
            (PublicKey::Rsa { e, n }, "rsa-sha2-256" | "rsa-sha2-512") => {
                let params = if format == "rsa-sha2-256" {
                    &signature::RSA_PKCS1_2048_8192_SHA256
                } else {
                    &signature::RSA_PKCS1_2048_8192_SHA512
                };
                RsaPublicKeyComponents { n, e }.verify(params, msg, sig)
            }
            _ => return Err(SshError::Unsupported(format.to_owned())),
        };
        ok.map_err(|_| SshError::BadSignature)
    }

    /// Verifies a signature made by [`PrivateKey::sign`] (raw Ed25519, ECDSA ASN.1 DER).
    pub fn verify_raw(&self, msg: &[u8], sig: &[u8]) -> Result<(), SshError> {
        let ok = match self {
            PublicKey::Ed25519(k) => {
                UnparsedPublicKey::new(&signature::ED25519, k).verify(msg, sig)
            }
            PublicKey::Ecdsa { curve, point } => {
                let alg = if curve == "nistp256" {
                    &signature::ECDSA_P256_SHA256_ASN1
                } else {
                    &signature::ECDSA_P384_SHA384_ASN1
                };
                UnparsedPublicKey::new(alg, point).verify(msg, sig)
            }
            PublicKey::Rsa { .. } => return Err(SshError::Unsupported("ssh-rsa host key".into())),
        };
        ok.map_err(|_| SshError::BadSignature)
    }
}

/// A parsed OpenSSH certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The certified key.
    pub key: PublicKey,
    /// Serial number.
    pub serial: u64,
    /// 1 user, 2 host.
    pub cert_type: u32,
    /// Key ID.
    pub key_id: String,
    /// Valid principals.
    pub principals: Vec<String>,
    /// Valid from (unix seconds).
    pub valid_after: u64,
    /// Valid until (unix seconds, exclusive).
    pub valid_before: u64,
    /// Critical option names.
    pub critical_options: Vec<String>,
    /// The CA key that signed it.
    pub signature_key: PublicKey,
}

impl Certificate {
    /// Parses a certificate blob and verifies its signature with its own signature key.
    /// (Whether that key is trusted is the caller's business.)
    pub fn parse_and_verify(blob: &[u8]) -> Result<Self, SshError> {
        if blob.len() > MAX_BLOB {
            return Err(SshError::Malformed("certificate too large"));
        }
        let mut r = Reader { buf: blob };
        let alg = r.text()?;
        let key_alg = alg
            .strip_suffix("-cert-v01@openssh.com")
            .ok_or_else(|| SshError::Unsupported(alg.to_owned()))?
            .to_owned();
        let _nonce = r.string()?;
        let key = PublicKey::read_fields(&key_alg, &mut r)?;
        let serial = r.u64()?;
        let cert_type = r.u32()?;
        let key_id = r.text()?.to_owned();
        let mut principals = Vec::new();
        let mut pr = Reader { buf: r.string()? };
        while !pr.buf.is_empty() {
            if principals.len() >= MAX_PRINCIPALS {
                return Err(SshError::Malformed("too many principals"));
            }
            principals.push(pr.text()?.to_owned());
        }
        let valid_after = r.u64()?;
        let valid_before = r.u64()?;
        let mut critical_options = Vec::new();
        let mut cr = Reader { buf: r.string()? };
        while !cr.buf.is_empty() {
            critical_options.push(cr.text()?.to_owned());
            let _data = cr.string()?;
        }
        let _extensions = r.string()?;
        let _reserved = r.string()?;
        let signature_key = PublicKey::from_blob(r.string()?)?;
        // The signature covers everything up to and including the signature key.
        let signed = &blob[..blob.len() - r.buf.len()];
        let sig = r.string()?;
        if !r.buf.is_empty() {
            return Err(SshError::Malformed("trailing bytes after the certificate"));
        }
        signature_key.verify_ssh_signature(signed, sig)?;
        Ok(Certificate {
            key,
            serial,
            cert_type,
            key_id,
            principals,
            valid_after,
            valid_before,
            critical_options,
            signature_key,
        })
    }

    /// Parses `<type>-cert-v01@openssh.com <base64> [comment]` (a `-cert.pub` file).
    pub fn from_openssh(text: &str) -> Result<Vec<u8>, SshError> {
        let b64 = text
            .split_whitespace()
            .nth(1)
            .ok_or(SshError::Malformed("no certificate after the type"))?;
        if b64.len() > MAX_BLOB * 2 {
            return Err(SshError::Malformed("certificate too large"));
        }
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SshError::Malformed("certificate is not base64"))
    }
}

/// A host private key (unencrypted OpenSSH format).
pub struct PrivateKey {
    public: PublicKey,
    signer: Signer,
}

enum Signer {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey")
            .field("public", &self.public.algorithm())
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Parses an `-----BEGIN OPENSSH PRIVATE KEY-----` file.
    pub fn from_openssh(text: &str) -> Result<Self, SshError> {
        let body: String = text
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        if body.is_empty() || body.len() > MAX_BLOB * 2 {
            return Err(SshError::Malformed("not an OpenSSH private key"));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| SshError::Malformed("private key is not base64"))?;
        let rest = raw
            .strip_prefix(b"openssh-key-v1\0")
            .ok_or(SshError::Malformed("not an openssh-key-v1 private key"))?;
        let mut r = Reader { buf: rest };
        let cipher = r.text()?;
        let _kdf = r.text()?;
        let _kdf_options = r.string()?;
        if cipher != "none" {
            return Err(SshError::Encrypted(cipher.to_owned()));
        }
        if r.u32()? != 1 {
            return Err(SshError::Malformed("the file must hold exactly one key"));
        }
        let public = PublicKey::from_blob(r.string()?)?;
        let mut p = Reader { buf: r.string()? };
        if p.u32()? != p.u32()? {
            return Err(SshError::Malformed("private key check numbers differ"));
        }
        let alg = p.text()?;
        if alg != public.algorithm() {
            return Err(SshError::Malformed(
                "private key type differs from its public key",
            ));
        }
        let signer = match &public {
            PublicKey::Ed25519(pk) => {
                let _pk = p.string()?;
                let sk = p.string()?;
                if sk.len() != 64 {
                    return Err(SshError::Malformed("Ed25519 private key is not 64 bytes"));
                }
                Signer::Ed25519(
                    Ed25519KeyPair::from_seed_and_public_key(&sk[..32], pk)
                        .map_err(|_| SshError::Malformed("Ed25519 key pair does not match"))?,
                )
            }
            PublicKey::Ecdsa { curve, point } => {
                let _curve = p.text()?;
                let _q = p.string()?;
                let d = p.mpint()?;
                let (width, alg) = if curve == "nistp256" {
                    (32, &signature::ECDSA_P256_SHA256_ASN1_SIGNING)
                } else {
                    (48, &signature::ECDSA_P384_SHA384_ASN1_SIGNING)
                };
                if d.len() > width {
                    return Err(SshError::Malformed("ECDSA private scalar too long"));
                }
                let mut fixed = vec![0u8; width];
                fixed[width - d.len()..].copy_from_slice(d);
                Signer::Ecdsa(
                    EcdsaKeyPair::from_private_key_and_public_key(
                        alg,
                        &fixed,
                        point,
                        &SystemRandom::new(),
                    )
                    .map_err(|_| SshError::Malformed("ECDSA key pair does not match"))?,
                )
            }
            PublicKey::Rsa { .. } => {
                return Err(SshError::Unsupported(
                    "ssh-rsa host key (use an Ed25519 or ECDSA host key for sshpop)".into(),
                ))
            }
        };
        Ok(PrivateKey { public, signer })
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `msg`: raw Ed25519, or ECDSA ASN.1 DER.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SshError> {
        match &self.signer {
            Signer::Ed25519(k) => Ok(k.sign(msg).as_ref().to_vec()),
            Signer::Ecdsa(k) => k
                .sign(&SystemRandom::new(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| SshError::Sign("ECDSA signing failed")),
        }
    }
}
