//! Independent PKI checks (rustls-webpki, not writ's own validator).

/// Verifies an X509-SVID chain (leaf first) against CA roots with rustls-webpki, an
/// implementation independent of writ's own validator.
pub fn webpki_verify(chain: &[Vec<u8>], roots: &[Vec<u8>]) -> Result<(), String> {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let anchors: Vec<_> = roots
        .iter()
        .filter_map(|r| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(r.as_slice()))
                .ok()
                .map(|a| a.to_owned())
        })
        .collect();
    let leaf = CertificateDer::from(chain[0].as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| e.to_string())?;
    let inter: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &inter,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}
