//! Independent PKI checks (rustls-webpki, not writ's own validator).

/// Verifies an X509-SVID chain (leaf first) against CA roots with rustls-webpki, an
/// implementation independent of writ's own validator.
pub fn webpki_verify(chain: &[Vec<u8>], roots: &[Vec<u8>]) -> Result<(), String> {
    webpki_verify_with_crls(chain, roots, &[])
}

/// [`webpki_verify`] that also checks the end-entity certificate against `crls` (DER), as a
/// rustls verifier configured with those CRLs does.
pub fn webpki_verify_with_crls(
    chain: &[Vec<u8>],
    roots: &[Vec<u8>],
    crls: &[Vec<u8>],
) -> Result<(), String> {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let parsed: Vec<webpki::CertRevocationList<'_>> = crls
        .iter()
        .map(|c| {
            webpki::BorrowedCertRevocationList::from_der(c)
                .map(webpki::CertRevocationList::from)
                .map_err(|e| format!("CRL does not parse: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let refs: Vec<&webpki::CertRevocationList<'_>> = parsed.iter().collect();
    let revocation = if refs.is_empty() {
        None
    } else {
        Some(
            webpki::RevocationOptionsBuilder::new(&refs)
                .map_err(|e| format!("{e:?}"))?
                .with_depth(webpki::RevocationCheckDepth::EndEntity)
                .build(),
        )
    };
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
        revocation,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}
