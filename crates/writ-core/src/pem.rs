//! Minimal PEM encoding and decoding (RFC 7468), enough for certificates, keys and CSRs.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Why PEM text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// No `-----BEGIN <label>-----` block of the wanted label.
    #[error("no PEM block with label `{0}` found")]
    NoBlock(String),
    /// A BEGIN without a matching END.
    #[error("PEM block `{0}` has no matching END line")]
    Unterminated(String),
    /// The body is not base64.
    #[error("PEM block `{0}` is not valid base64")]
    BadBase64(String),
}

/// Encodes `der` as one PEM block.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so any chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Encodes several DER items as concatenated PEM blocks of one label.
pub fn encode_many<'a>(label: &str, ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    ders.into_iter().map(|d| encode(label, d)).collect()
}

/// Decodes every block in `text`, returning `(label, der)` pairs in order.
pub fn decode_all(text: &str) -> Result<Vec<(String, Vec<u8>)>, PemError> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut closed = false;
        for l in lines.by_ref() {
            let l = l.trim();
            if l == end {
                closed = true;
                break;
            }
            body.push_str(l);
        }
        if !closed {
            return Err(PemError::Unterminated(label.to_owned()));
        }
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| PemError::BadBase64(label.to_owned()))?;
        out.push((label.to_owned(), der));
    }
    Ok(out)
}

/// Decodes every block labelled `label`; at least one must be present.
pub fn decode_label(text: &str, label: &str) -> Result<Vec<Vec<u8>>, PemError> {
    let v: Vec<Vec<u8>> = decode_all(text)?
        .into_iter()
        .filter(|(l, _)| l == label)
        .map(|(_, d)| d)
        .collect();
    if v.is_empty() {
        return Err(PemError::NoBlock(label.to_owned()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data: Vec<u8> = (0..=255u8).collect();
        let pem = encode_many("CERTIFICATE", [&data[..], &data[..10]]);
        assert_eq!(pem.lines().filter(|l| l.len() > 64).count(), 0);
        let back = decode_label(&pem, "CERTIFICATE").unwrap();
        assert_eq!(back, vec![data.clone(), data[..10].to_vec()]);
    }

    #[test]
    fn errors() {
        assert_eq!(
            decode_label("hello", "CERTIFICATE"),
            Err(PemError::NoBlock("CERTIFICATE".into()))
        );
        assert!(matches!(
            decode_all("-----BEGIN X-----\nAAAA\n"),
            Err(PemError::Unterminated(_))
        ));
        assert!(matches!(
            decode_all("-----BEGIN X-----\n!!!!\n-----END X-----\n"),
            Err(PemError::BadBase64(_))
        ));
    }
}
