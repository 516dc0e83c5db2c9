//! Mesh mTLS for httpcore's sync connections in Rust (issue 25): rustls on the
//! `ring` provider, behind httpcore's network-stream interface.
//!
//! `TlsClientConfig` is one workload certificate + key + mesh roots + ALPN
//! (built once per credentials, like the ssl contexts). `TlsStream.connect`
//! takes a connected socket from httpcore's own backend, makes the handshake
//! and is then the stream httpcore reads and writes: no Python between
//! httpcore and the socket. The chain is verified against the mesh roots with
//! no name check (mesh peers are named by SPIFFE ID, which the library checks
//! on `getpeercert(True)`, exactly as on the ssl path). Session resumption is
//! off: every connection verifies the server's certificate, as Python's does.
//!
//! The Python socket keeps the file descriptor (so the deadline watchdog can
//! still shut it down, and closing is Python's); this side only borrows it.

mod blocking;
mod stream;

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, Resumption};
use rustls::crypto::{
    ring, verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::identity::EcKey;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TlsClientConfig>()?;
    m.add_class::<stream::TlsStream>()?;
    Ok(())
}

// -- the server check: mesh roots, no name --------------------------------------

#[derive(Debug)]
struct MeshRoots {
    roots: RootCertStore,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for MeshRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The client side of mesh mTLS for one set of credentials and ALPN list.
#[pyclass(frozen, module = "proxyless_mesh_native")]
pub struct TlsClientConfig {
    pub(super) config: Arc<ClientConfig>,
}

#[pymethods]
impl TlsClientConfig {
    /// `chain`: DER certificates, leaf first; `roots`: DER mesh roots; `key`:
    /// the workload's EcKey; `alpn`: protocols in preference order.
    /// ValueError if a certificate or the key cannot be used.
    #[new]
    fn new(
        chain: Vec<Vec<u8>>,
        roots: Vec<Vec<u8>>,
        key: PyRef<'_, EcKey>,
        alpn: Vec<String>,
    ) -> PyResult<Self> {
        // `ring`, not aws-lc-rs: no cmake or C toolchain in the build. Its
        // deprecation is about post-quantum key exchange, which the mesh's
        // OpenSSL servers do not offer here either.
        #[allow(deprecated)]
        let provider = Arc::new(ring::default_provider());
        let mut store = RootCertStore::empty();
        for der in roots {
            store
                .add(CertificateDer::from(der))
                .map_err(|e| PyValueError::new_err(format!("mesh root: {e}")))?;
        }
        let verifier = MeshRoots {
            roots: store,
            algorithms: provider.signature_verification_algorithms,
        };
        let pkcs8 = key
            .pkcs8_der()
            .map_err(|e| PyValueError::new_err(format!("workload key: {e}")))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec()));
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| PyValueError::new_err(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(chain, key)
            .map_err(|e| PyValueError::new_err(format!("workload certificate: {e}")))?;
        config.alpn_protocols = alpn.into_iter().map(String::into_bytes).collect();
        config.resumption = Resumption::disabled();
        Ok(TlsClientConfig {
            config: Arc::new(config),
        })
    }
}
