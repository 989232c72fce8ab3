//! Writing SVID files for programs that only read files: atomic (temp file + rename), key 0600.

use std::path::Path;

use crate::CliError;

/// Writes `svid.pem` (chain), `svid.key` (0600), `bundle.pem`, `federated/<td>.pem` and, when
/// the source sent one, `crl.pem` (the CA's revocation list, for `-crl_check`-style checks).
/// The key is written before the certificate so a reader never pairs a new cert with an old key
/// for long; each file is replaced atomically.
pub(crate) fn write_svid_files(
    dir: &Path,
    cert_pem: &str,
    key_pem: &str,
    bundle_pem: &str,
    federated: &[(String, String)],
    crls: &[Vec<u8>],
) -> Result<(), CliError> {
    let fail = |what: &Path, e: std::io::Error| {
        CliError::Failed(format!("cannot write `{}`: {e}", what.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    let w = |name: &str, data: &str, mode: u32| {
        let p = dir.join(name);
        writ_ca::keys::write_atomic(&p, data.as_bytes(), mode).map_err(|e| fail(&p, e))
    };
    w("svid.key", key_pem, 0o600)?;
    w("svid.pem", cert_pem, 0o644)?;
    w("bundle.pem", bundle_pem, 0o644)?;
    if !crls.is_empty() {
        let pem = writ_core::pem::encode_many("X509 CRL", crls.iter().map(Vec::as_slice));
        w("crl.pem", &pem, 0o644)?;
    }
    if !federated.is_empty() {
        let fdir = dir.join("federated");
        std::fs::create_dir_all(&fdir).map_err(|e| fail(&fdir, e))?;
        for (td, pem) in federated {
            let p = fdir.join(format!("{td}.pem"));
            writ_ca::keys::write_atomic(&p, pem.as_bytes(), 0o644).map_err(|e| fail(&p, e))?;
        }
    }
    Ok(())
}
