//! Workload identity without the `cryptography` package (issue 25): the
//! workload's P-256 key, its PKCS#10 CSR and the certificate facts the
//! library reads. The secret stays inside `EcKey`; it leaves only as the
//! PKCS#8 PEM the caller asks for (the process's own TLS stack, grpcio's
//! 0600 files, the 0600 certificate cache), as on the cryptography path.

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use p256::SecretKey;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rand_core::OsRng;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
// 1.2.840.113549.1.9.14 (PKCS#9 extensionRequest)
const OID_EXTENSION_REQUEST: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e,
];
// 2.5.29.17 (subjectAltName)
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];
const SAN_OID_ARCS: &str = "2.5.29.17";
// AlgorithmIdentifier { 1.2.840.10045.4.3.2 ecdsa-with-SHA256 } (no parameters)
const ECDSA_WITH_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

/// One DER TLV (definite length, short or long form).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn value_error(what: &str, err: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{what}: {err}"))
}

/// An ECDSA P-256 private key. No repr, no pickling: the secret is read
/// only through `private_key_pem`.
#[pyclass(frozen, module = "proxyless_mesh_native")]
pub struct EcKey {
    secret: SecretKey,
}

impl EcKey {
    /// The key as PKCS#8 DER for the native TLS client (tls.rs): it stays in
    /// Rust, in memory that is zeroed when dropped.
    pub(crate) fn pkcs8_der(&self) -> Result<p256::pkcs8::SecretDocument, p256::pkcs8::Error> {
        self.secret.to_pkcs8_der()
    }

    fn sign_der(&self, data: &[u8]) -> Vec<u8> {
        let signature: Signature = SigningKey::from(&self.secret).sign(data);
        signature.to_der().as_bytes().to_vec()
    }
}

#[pymethods]
impl EcKey {
    /// A new key from the operating system's random source.
    #[staticmethod]
    fn generate() -> Self {
        EcKey {
            secret: SecretKey::random(&mut OsRng),
        }
    }

    /// The key from its PKCS#8 PEM (the certificate cache); ValueError if it
    /// is not an unencrypted P-256 key.
    #[staticmethod]
    fn from_pkcs8_pem(pem: &str) -> PyResult<Self> {
        let secret =
            SecretKey::from_pkcs8_pem(pem).map_err(|e| value_error("not a P-256 PKCS#8 key", e))?;
        Ok(EcKey { secret })
    }

    /// ECDSA with SHA-256 over `data`, DER-encoded (RFC 6979 nonces).
    fn sign<'py>(&self, py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.sign_der(data))
    }

    /// The public key as DER SubjectPublicKeyInfo (what a certificate carries).
    fn public_key_der<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let doc = self
            .secret
            .public_key()
            .to_public_key_der()
            .map_err(|e| value_error("public key", e))?;
        Ok(PyBytes::new(py, doc.as_bytes()))
    }

    /// The key as unencrypted PKCS#8 PEM, for the TLS stack and the 0600 files.
    fn private_key_pem<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let pem = self
            .secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| value_error("private key", e))?;
        Ok(PyBytes::new(py, pem.as_bytes()))
    }

    /// A DER PKCS#10 CSR: empty subject, one critical subjectAltName holding
    /// `uri` only (the SVID convention), signed with ECDSA-SHA256.
    /// A non-ASCII `uri` is ValueError (an IA5String holds ASCII only).
    fn csr_der<'py>(&self, py: Python<'py>, uri: &str) -> PyResult<Bound<'py, PyBytes>> {
        if !uri.is_ascii() {
            return Err(PyValueError::new_err(format!(
                "the URI is not ASCII: {uri:?}"
            )));
        }
        let spki = self
            .secret
            .public_key()
            .to_public_key_der()
            .map_err(|e| value_error("public key", e))?;
        let names = tlv(SEQUENCE, &tlv(0x86, uri.as_bytes())); // [6] IA5String
        let mut extension = OID_SUBJECT_ALT_NAME.to_vec();
        extension.extend_from_slice(&[0x01, 0x01, 0xff]); // critical TRUE
        extension.extend(tlv(0x04, &names));
        let extensions = tlv(SEQUENCE, &tlv(SEQUENCE, &extension));
        let mut attribute = OID_EXTENSION_REQUEST.to_vec();
        attribute.extend(tlv(SET, &extensions));
        let mut info = vec![0x02, 0x01, 0x00, SEQUENCE, 0x00]; // version 0, empty subject
        info.extend_from_slice(spki.as_bytes());
        info.extend(tlv(0xa0, &tlv(SEQUENCE, &attribute))); // [0] attributes
        let info = tlv(SEQUENCE, &info);
        let mut bits = vec![0x00];
        bits.extend(self.sign_der(&info));
        let mut request = info;
        request.extend_from_slice(ECDSA_WITH_SHA256);
        request.extend(tlv(0x03, &bits));
        Ok(PyBytes::new(py, &tlv(SEQUENCE, &request)))
    }
}

type CertificateFacts = (i64, i64, Vec<String>, Py<PyBytes>);

/// DER certificate -> (notBefore, notAfter as POSIX seconds, the URI SANs in
/// order, SubjectPublicKeyInfo DER). ValueError if it is not a certificate.
#[pyfunction]
pub fn read_certificate(py: Python<'_>, der: &[u8]) -> PyResult<CertificateFacts> {
    let cert = Certificate::from_der(der).map_err(|e| value_error("not a DER certificate", e))?;
    let tbs = &cert.tbs_certificate;
    let seconds = |t: &x509_cert::time::Time| t.to_unix_duration().as_secs() as i64;
    let mut uris = Vec::new();
    for ext in tbs.extensions.iter().flatten() {
        if ext.extn_id.to_string() != SAN_OID_ARCS {
            continue;
        }
        let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
            .map_err(|e| value_error("unreadable subjectAltName", e))?;
        for name in san.0 {
            if let GeneralName::UniformResourceIdentifier(uri) = name {
                uris.push(uri.as_str().to_owned());
            }
        }
    }
    let spki = tbs
        .subject_public_key_info
        .to_der()
        .map_err(|e| value_error("public key", e))?;
    Ok((
        seconds(&tbs.validity.not_before),
        seconds(&tbs.validity.not_after),
        uris,
        PyBytes::new(py, &spki).unbind(),
    ))
}
