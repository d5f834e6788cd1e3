//! Client TLS to Cassandra (`PUI_CASSANDRA_TLS*`), the same policy as the Python engine's
//! `ssl` context: the server's chain is always verified, against the given CA file or else the
//! system's CAs; its name against the address connected to unless the address check is off;
//! a client certificate when one is given.
//!
//! The driver names each node by its IP address, so a certificate must carry that IP (as for
//! cassandra-driver with the nodes it learns from the ring), or the address check be off.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls::{Error, SignatureScheme};

/// Where the certificates are; files are PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates that sign the nodes' certificates; None: the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and its unencrypted key, for nodes that require one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Check that each node's certificate names the address connected to.
    pub check_hostname: bool,
}

/// A settings mistake, named by the file it is about (`which`: "ca", "cert" or "key").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    pub which: &'static str,
    pub detail: String,
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} file: {}", self.which, self.detail)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn bad(which: &'static str, detail: impl ToString) -> TlsFileError {
    TlsFileError {
        which,
        detail: detail.to_string(),
    }
}

fn roots(files: &TlsFiles) -> Result<RootCertStore, TlsFileError> {
    let mut store = RootCertStore::empty();
    match &files.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad("ca", e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("ca", e))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad("ca", "no CA certificate in it"));
            }
        }
        None => {
            // Unreadable entries of the system store are skipped, as OpenSSL does.
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
        }
    }
    Ok(store)
}

/// The client configuration the driver connects with.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsFileError> {
    let provider = provider();
    let roots = Arc::new(roots(files)?);
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| bad("ca", e))?;
    let verifier: Arc<dyn ServerCertVerifier> = if files.check_hostname {
        webpki
    } else {
        Arc::new(ChainOnly(webpki))
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("ca", e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad("cert", e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("cert", e))?;
            if chain.is_empty() {
                return Err(bad("cert", "no certificate in it"));
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", e))?;
            // Refused here: a key that is not the certificate's, or a certificate rustls does
            // not take (X.509 v1).
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("cert", e))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(bad("cert", "the certificate and its key go together")),
    };
    Ok(Arc::new(config))
}

/// The standard verification, except that a certificate valid in every other respect but
/// issued for other names than the address is accepted (`PUI_CASSANDRA_TLS_CHECK_HOSTNAME`
/// false). The name is checked last, so its error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

fn name_mismatch(err: &Error) -> bool {
    matches!(
        err,
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(e) if name_mismatch(&e) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Whether a connection failure's text is a TLS failure (a certificate that does not verify,
/// an alert from the node, a handshake cut short): waiting does not fix those.
pub fn is_tls_failure(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "certificate",
        "alert",
        "handshake",
        "tls",
        "corrupt message",
        "close_notify",
    ]
    .iter()
    .any(|word| lower.contains(word))
}

/// The driver's own words for the last failed connection, without the pool's preamble: the
/// TLS alert or certificate problem is at the end of a long line.
pub fn last_cause(text: &str) -> &str {
    text.rsplit_once("failed with: ")
        .map_or(text, |(_, cause)| cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `text` in the temporary folder, for one test (removed by the test).
    fn temp_file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("pui-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_system_store_is_used_without_a_ca_file() {
        let files = TlsFiles {
            check_hostname: true,
            ..TlsFiles::default()
        };
        assert!(client_config(&files).is_ok());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_as_the_ca_file() {
        let empty = temp_file("empty-ca.pem", "not a certificate\n");
        let files = TlsFiles {
            ca_file: Some(empty.clone()),
            ..TlsFiles::default()
        };
        let refused = client_config(&files).unwrap_err();
        std::fs::remove_file(empty).unwrap();
        assert_eq!(refused.which, "ca");
        let missing = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        assert_eq!(client_config(&missing).unwrap_err().which, "ca");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let files = TlsFiles {
            cert_file: Some("/nonexistent/client.pem".into()),
            ..TlsFiles::default()
        };
        assert_eq!(client_config(&files).unwrap_err().which, "cert");
        let files = TlsFiles {
            cert_file: Some("/nonexistent/client.pem".into()),
            key_file: Some("/nonexistent/client.key".into()),
            ..TlsFiles::default()
        };
        assert_eq!(client_config(&files).unwrap_err().which, "cert");
    }

    #[test]
    fn only_name_errors_are_forgiven_without_the_address_check() {
        let invalid = |e| Error::InvalidCertificate(e);
        assert!(name_mismatch(&invalid(CertificateError::NotValidForName)));
        assert!(!name_mismatch(&invalid(CertificateError::UnknownIssuer)));
        assert!(!name_mismatch(&invalid(CertificateError::Expired)));
    }

    #[test]
    fn tls_failures_are_told_from_unreachable_nodes() {
        assert!(is_tls_failure("invalid peer certificate: UnknownIssuer"));
        assert!(is_tls_failure("received fatal alert: CertificateRequired"));
        assert!(!is_tls_failure("Connection refused (os error 111)"));
        assert!(!is_tls_failure("timed out"));
    }

    #[test]
    fn the_last_cause_is_kept() {
        let text = "Control connection pool error: The pool is broken; Last connection failed \
                    with: received fatal alert: CertificateRequired";
        assert_eq!(
            last_cause(text),
            "received fatal alert: CertificateRequired"
        );
        assert_eq!(last_cause("timed out"), "timed out");
    }
}
