//! PEM (RFC 7468) in and out. Parsing is rustls-pki-types'; writing is these few lines,
//! so rcgen's `pem` feature (and two more crates) are not needed.

use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};

use crate::error::CaError;

/// `der` as a PEM block with `label` (`CERTIFICATE`, `PRIVATE KEY`, ...).
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    format!(
        "-----BEGIN {label}-----\n{}-----END {label}-----\n",
        base64_lines(der)
    )
}

/// Base64 in 64-character lines, each ending in a newline.
fn base64_lines(der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            text.push(if i <= chunk.len() {
                TABLE[((n >> (18 - 6 * i)) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    let mut out = String::with_capacity(text.len() + text.len() / 64 + 1);
    for line in text.chunks(64) {
        // Every byte is from TABLE or '=': ASCII.
        out.extend(line.iter().map(|b| char::from(*b)));
        out.push('\n');
    }
    out
}

pub(crate) fn cert(der: &[u8]) -> String {
    encode("CERTIFICATE", der)
}

pub(crate) fn key(key: &KeyPair) -> String {
    encode("PRIVATE KEY", &key.serialize_der())
}

pub(crate) fn parse_cert(
    pem: &str,
    what: &'static str,
) -> Result<CertificateDer<'static>, CaError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| CaError::BadPem {
        what,
        detail: e.to_string(),
    })
}

pub(crate) fn parse_key(pem: &str, what: &'static str) -> Result<KeyPair, CaError> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| CaError::BadPem {
        what,
        detail: e.to_string(),
    })?;
    KeyPair::try_from(&der).map_err(|e| CaError::Parse {
        what,
        detail: e.to_string(),
    })
}

pub(crate) fn parse_csr(pem: &str) -> Result<CertificateSigningRequestDer<'static>, CaError> {
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|e| CaError::BadPem {
        what: "the certificate signing request",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_through_the_rustls_parser() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 300] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let back = CertificateDer::from_pem_slice(cert(&der).as_bytes()).unwrap();
            assert_eq!(back.as_ref(), der.as_slice(), "len {len}");
        }
    }
}
