//! Private keys and the key managers that hold them.
//!
//! Keys are generated with ring and kept as PKCS#8 DER. The [`DiskKeyManager`] writes each key to
//! `<dir>/<id>.key` (PEM) with mode 0600 through a temporary file, fsync and rename, so a crash
//! leaves either the old key or the new one, never a torn file. The [`MemoryKeyManager`] keeps
//! keys in memory (agents' workload keys, tests).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING,
};

use crate::error::CaError;

/// The key types writ makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// NIST P-256 with SHA-256 (the default).
    EcP256,
    /// NIST P-384 with SHA-384.
    EcP384,
}

impl KeyType {
    /// Parses the config names `ec-p256` and `ec-p384`.
    pub fn parse(s: &str) -> Result<Self, CaError> {
        match s {
            "ec-p256" => Ok(KeyType::EcP256),
            "ec-p384" => Ok(KeyType::EcP384),
            _ => Err(CaError::UnknownKeyType(s.to_owned())),
        }
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
        }
    }

    pub(crate) fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    pub(crate) fn ring_asn1(self) -> &'static ring::signature::EcdsaSigningAlgorithm {
        match self {
            KeyType::EcP256 => &ECDSA_P256_SHA256_ASN1_SIGNING,
            KeyType::EcP384 => &ECDSA_P384_SHA384_ASN1_SIGNING,
        }
    }

    pub(crate) fn ring_fixed(self) -> &'static ring::signature::EcdsaSigningAlgorithm {
        match self {
            KeyType::EcP256 => &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            KeyType::EcP384 => &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        }
    }

    /// The JWS `alg` for this key type.
    pub fn jws_alg(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ES256",
            KeyType::EcP384 => "ES384",
        }
    }
}

/// PKCS#8 v1 of a P-256 key as ring writes it, up to the private scalar: SEQUENCE { 0,
/// { id-ecPublicKey, prime256v1 }, OCTET STRING { ECPrivateKey { 1, OCTET STRING (32) ...
const P256_PKCS8_PREFIX: &[u8] = &[
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02,
    0x01, 0x01, 0x04, 0x20,
];
/// ... then `[1] BIT STRING` of the 65-byte public point.
const P256_PKCS8_MIDDLE: &[u8] = &[0xa1, 0x44, 0x03, 0x42, 0x00];

/// A private key: its type and PKCS#8 DER. The DER is never logged (Debug hides it).
#[derive(Clone)]
pub struct PrivateKey {
    key_type: KeyType,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({})", self.key_type.name())
    }
}

impl PrivateKey {
    /// Generates a new key with ring.
    pub fn generate(key_type: KeyType) -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(key_type.ring_asn1(), &rng)
            .map_err(|_| CaError::Signing)?;
        Ok(PrivateKey {
            key_type,
            pkcs8: doc.as_ref().to_vec(),
        })
    }

    /// Reads PKCS#8 DER, working out the curve.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        for kt in [KeyType::EcP256, KeyType::EcP384] {
            if EcdsaKeyPair::from_pkcs8(kt.ring_asn1(), der, &rng).is_ok() {
                return Ok(PrivateKey {
                    key_type: kt,
                    pkcs8: der.to_vec(),
                });
            }
        }
        Err(CaError::BadPrivateKey("ring rejected the key".into()))
    }

    /// Reads a PEM `PRIVATE KEY` block (PKCS#8).
    pub fn from_pem(text: &str) -> Result<Self, CaError> {
        let ders = writ_core::pem::decode_label(text, "PRIVATE KEY")
            .map_err(|e| CaError::BadPrivateKey(e.to_string()))?;
        Self::from_pkcs8_der(&ders[0])
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// PKCS#8 PEM.
    pub fn to_pem(&self) -> String {
        writ_core::pem::encode("PRIVATE KEY", &self.pkcs8)
    }

    /// An rcgen key pair for certificate signing.
    pub fn rcgen_key_pair(&self) -> Result<rcgen::KeyPair, CaError> {
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(self.pkcs8.as_slice());
        Ok(rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &der,
            self.key_type.rcgen_alg(),
        )?)
    }

    /// A ring key pair producing fixed-width (JWS) signatures.
    pub fn ring_fixed_key_pair(&self) -> Result<EcdsaKeyPair, CaError> {
        EcdsaKeyPair::from_pkcs8(
            self.key_type.ring_fixed(),
            &self.pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| CaError::BadPrivateKey(e.to_string()))
    }

    /// Signs `msg` with ECDSA (ASN.1 DER signature, the hash of the key's curve).
    pub fn sign_asn1(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        let rng = SystemRandom::new();
        let kp = EcdsaKeyPair::from_pkcs8(self.key_type.ring_asn1(), &self.pkcs8, &rng)
            .map_err(|e| CaError::BadPrivateKey(e.to_string()))?;
        Ok(kp
            .sign(&rng, msg)
            .map_err(|_| CaError::Signing)?
            .as_ref()
            .to_vec())
    }

    /// A PKCS#10 CSR for this key (no names: the server decides the identity).
    pub fn csr_der(&self) -> Result<Vec<u8>, CaError> {
        let kp = self.rcgen_key_pair()?;
        let csr = rcgen::CertificateParams::default().serialize_request(&kp)?;
        Ok(csr.der().to_vec())
    }

    /// The uncompressed public point.
    pub fn public_point(&self) -> Result<Vec<u8>, CaError> {
        Ok(self.ring_fixed_key_pair()?.public_key().as_ref().to_vec())
    }

    /// The private scalar `d` of a P-256 key in the PKCS#8 form ring makes (for a private
    /// JWK). Other forms are refused rather than guessed at.
    pub fn ec_scalar(&self) -> Result<Vec<u8>, CaError> {
        let p = &self.pkcs8;
        if self.key_type != KeyType::EcP256
            || p.len() != P256_PKCS8_PREFIX.len() + 32 + P256_PKCS8_MIDDLE.len() + 65
            || !p.starts_with(P256_PKCS8_PREFIX)
        {
            return Err(CaError::BadPrivateKey(
                "only P-256 keys made by writ can be exported as a JWK".into(),
            ));
        }
        Ok(p[P256_PKCS8_PREFIX.len()..P256_PKCS8_PREFIX.len() + 32].to_vec())
    }

    /// A P-256 key from its private scalar `d` and uncompressed public point; ring checks that
    /// they belong together.
    pub fn from_ec_parts(key_type: KeyType, d: &[u8], point: &[u8]) -> Result<Self, CaError> {
        if key_type != KeyType::EcP256 || d.len() != 32 || point.len() != 65 {
            return Err(CaError::BadPrivateKey(
                "only P-256 keys (32-byte d, 65-byte point) are read from parts".into(),
            ));
        }
        let mut der = P256_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(d);
        der.extend_from_slice(P256_PKCS8_MIDDLE);
        der.extend_from_slice(point);
        Self::from_pkcs8_der(&der)
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn public_key_spki(&self) -> Result<Vec<u8>, CaError> {
        use rcgen::PublicKeyData;
        Ok(self.rcgen_key_pair()?.subject_public_key_info())
    }
}

/// Where private keys live. Implementations must be safe to share between threads.
pub trait KeyManager: Send + Sync {
    /// Generates a key under `id`, replacing any key of that ID, and returns it once it is durable.
    fn generate(&self, id: &str, key_type: KeyType) -> Result<PrivateKey, CaError>;
    /// Stores an existing key under `id` (e.g. one read from an operator's file).
    fn put(&self, id: &str, key: &PrivateKey) -> Result<(), CaError>;
    /// The key stored under `id`, if any.
    fn get(&self, id: &str) -> Result<Option<PrivateKey>, CaError>;
    /// Removes the key under `id` (absent keys are not an error).
    fn delete(&self, id: &str) -> Result<(), CaError>;
}

fn check_id(id: &str) -> Result<(), CaError> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(CaError::BadKeyId(id.to_owned()));
    }
    Ok(())
}

/// Keys in memory only.
#[derive(Default)]
pub struct MemoryKeyManager {
    keys: Mutex<HashMap<String, PrivateKey>>,
}

impl MemoryKeyManager {
    /// An empty manager.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, PrivateKey>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KeyManager for MemoryKeyManager {
    fn generate(&self, id: &str, key_type: KeyType) -> Result<PrivateKey, CaError> {
        check_id(id)?;
        let k = PrivateKey::generate(key_type)?;
        self.map().insert(id.to_owned(), k.clone());
        Ok(k)
    }

    fn put(&self, id: &str, key: &PrivateKey) -> Result<(), CaError> {
        check_id(id)?;
        self.map().insert(id.to_owned(), key.clone());
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<PrivateKey>, CaError> {
        check_id(id)?;
        Ok(self.map().get(id).cloned())
    }

    fn delete(&self, id: &str) -> Result<(), CaError> {
        check_id(id)?;
        self.map().remove(id);
        Ok(())
    }
}

/// Keys as 0600 PEM files in a 0700 directory.
pub struct DiskKeyManager {
    dir: PathBuf,
}

impl DiskKeyManager {
    /// Opens (creating if needed) the key directory and forces it to mode 0700.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CaError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(&dir, e))?;
        Ok(DiskKeyManager { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }
}

fn io_err(path: &Path, source: std::io::Error) -> CaError {
    CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `data` to `path` atomically with the given mode: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use ring::rand::SecureRandom;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // An unpredictable name, created exclusively (O_CREAT|O_EXCL, which also refuses a symlink
    // in its place): someone who can write to the directory cannot pre-create or plant a link
    // at the temporary path and have the key written through it.
    let mut rnd = [0u8; 12];
    SystemRandom::new()
        .fill(&mut rnd)
        .map_err(|_| std::io::Error::other("random number generator failed"))?;
    let tmp = dir.join(format!(".{name}.tmp.{}", hex::encode(rnd)));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    let result = (|| {
        // The mode given to open() is filtered by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl KeyManager for DiskKeyManager {
    fn generate(&self, id: &str, key_type: KeyType) -> Result<PrivateKey, CaError> {
        check_id(id)?;
        let k = PrivateKey::generate(key_type)?;
        self.put(id, &k)?;
        Ok(k)
    }

    fn put(&self, id: &str, key: &PrivateKey) -> Result<(), CaError> {
        check_id(id)?;
        let path = self.path(id);
        write_atomic(&path, key.to_pem().as_bytes(), 0o600).map_err(|e| io_err(&path, e))
    }

    fn get(&self, id: &str) -> Result<Option<PrivateKey>, CaError> {
        check_id(id)?;
        let path = self.path(id);
        match fs::read_to_string(&path) {
            Ok(text) => PrivateKey::from_pem(&text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn delete(&self, id: &str) -> Result<(), CaError> {
        check_id(id)?;
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_keys_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let km = DiskKeyManager::open(dir.path().join("keys")).unwrap();
        let k = km.generate("x509-ca-1", KeyType::EcP384).unwrap();
        let path = dir.path().join("keys/x509-ca-1.key");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(dir.path().join("keys"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let back = km.get("x509-ca-1").unwrap().unwrap();
        assert_eq!(back.pkcs8_der(), k.pkcs8_der());
        assert_eq!(back.key_type(), KeyType::EcP384);
        assert!(km.get("nope").unwrap().is_none());
        km.delete("x509-ca-1").unwrap();
        assert!(km.get("x509-ca-1").unwrap().is_none());
        // No temp files are left behind.
        assert_eq!(fs::read_dir(dir.path().join("keys")).unwrap().count(), 0);
    }

    #[test]
    fn key_ids_cannot_escape_the_directory() {
        let km = MemoryKeyManager::new();
        for id in ["../x", "a/b", "", "a.key"] {
            assert!(matches!(
                km.generate(id, KeyType::EcP256),
                Err(CaError::BadKeyId(_))
            ));
        }
    }

    #[test]
    fn garbage_keys_are_refused() {
        assert!(PrivateKey::from_pkcs8_der(b"garbage").is_err());
        assert!(PrivateKey::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
        assert!(KeyType::parse("rsa-2048").is_err());
    }
}
