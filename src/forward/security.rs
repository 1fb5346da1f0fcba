//! TLS (rustls, CA file, optional client certificate) and SASL (PLAIN,
//! SCRAM-SHA-256/512) for the Kafka connection. Secrets come from files
//! and never appear in logs, `check-config` or `ferry status`: errors name
//! the file, not its contents.

use super::config::{SaslConfig, SaslMechanism, TlsConfig};
use crate::kafka::sasl::{Mechanism, SaslCredentials};
use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The connection settings `[kafka]` describes, TLS and SASL read from
/// their files now, with `uplink` counting the bytes.
pub fn connection_config(
    kafka: &super::config::KafkaConfig,
    uplink: Arc<crate::kafka::uplink::Uplink>,
) -> Result<crate::kafka::connection::ConnectionConfig, crate::kafka::errors::Failure> {
    use crate::kafka::errors::{Class, Failure};
    let tls = match &kafka.tls {
        Some(t) => Some(
            tls_config(t)
                .map_err(|e| Failure::new(Class::ConfigCluster, "TLS_CONFIG", e.to_string()))?,
        ),
        None => None,
    };
    let sasl = match &kafka.sasl {
        Some(s) => Some(
            sasl_credentials(s)
                .map_err(|e| Failure::new(Class::ConfigCluster, "SASL_CONFIG", e.to_string()))?,
        ),
        None => None,
    };
    Ok(crate::kafka::connection::ConnectionConfig {
        client_id: kafka.client_id.clone(),
        connect_timeout: kafka.connect_timeout,
        request_timeout: kafka.request_timeout,
        tls,
        sasl,
        uplink,
    })
}

/// What reading the TLS files or a password file can fail on; each names
/// the file and the config key that points at it, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read CA file {} ({section}.ca_file): {source}", path.display())]
    ReadCa {
        path: PathBuf,
        section: String,
        source: pem::Error,
    },
    #[error("CA file {} ({section}.ca_file) holds a bad certificate: {source}", path.display())]
    BadCa {
        path: PathBuf,
        section: String,
        source: pem::Error,
    },
    #[error("CA file {} ({section}.ca_file): certificate refused: {source}", path.display())]
    RefusedCa {
        path: PathBuf,
        section: String,
        source: rustls::Error,
    },
    #[error("CA file {} ({section}.ca_file) holds no PEM certificate", path.display())]
    NoCa { path: PathBuf, section: String },
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
    #[error("cannot read client certificate {} ({section}.cert_file): {source}", path.display())]
    ClientCert {
        path: PathBuf,
        section: String,
        source: pem::Error,
    },
    #[error("cannot read client key {} ({section}.key_file): {source}", path.display())]
    ClientKey {
        path: PathBuf,
        section: String,
        source: pem::Error,
    },
    #[error("client certificate and key do not fit together: {0}")]
    CertKeyMismatch(rustls::Error),
    #[error("{section}.cert_file and {section}.key_file go together: set both or neither")]
    HalfPair { section: String },
    /// `label` is "SASL " or empty; `key` the config key naming the file.
    #[error("cannot read the {label}password file {} ({key}): {source}", path.display())]
    ReadPassword {
        label: &'static str,
        path: PathBuf,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("the {label}password file {} ({key}) is empty", path.display())]
    EmptyPassword {
        label: &'static str,
        path: PathBuf,
        key: &'static str,
    },
}

/// Build the rustls client configuration from `[kafka.tls]`.
pub fn tls_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, SecurityError> {
    tls_config_in(tls, "kafka.tls")
}

/// Build a rustls client configuration from a TLS section; errors name
/// `section` (`kafka.tls`, `mqtt.tls`).
pub fn tls_config_in(
    tls: &TlsConfig,
    section: &str,
) -> Result<Arc<rustls::ClientConfig>, SecurityError> {
    let mut roots = RootCertStore::empty();
    let ca = || (tls.ca_file.clone(), section.to_string());
    let certs = CertificateDer::pem_file_iter(&tls.ca_file).map_err(|source| {
        let (path, section) = ca();
        SecurityError::ReadCa {
            path,
            section,
            source,
        }
    })?;
    let mut added = 0;
    for cert in certs {
        let cert = cert.map_err(|source| {
            let (path, section) = ca();
            SecurityError::BadCa {
                path,
                section,
                source,
            }
        })?;
        roots.add(cert).map_err(|source| {
            let (path, section) = ca();
            SecurityError::RefusedCa {
                path,
                section,
                source,
            }
        })?;
        added += 1;
    }
    if added == 0 {
        let (path, section) = ca();
        return Err(SecurityError::NoCa { path, section });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SecurityError::Setup)?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|source| SecurityError::ClientCert {
                    path: cert.clone(),
                    section: section.to_string(),
                    source,
                })?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|source| SecurityError::ClientKey {
                    path: key.clone(),
                    section: section.to_string(),
                    source,
                })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(SecurityError::CertKeyMismatch)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(SecurityError::HalfPair {
                section: section.to_string(),
            });
        }
    };
    Ok(Arc::new(config))
}

/// A password file's text; `label` and `key` name it in errors.
pub fn read_password_file(
    path: &Path,
    label: &'static str,
    key: &'static str,
) -> Result<String, SecurityError> {
    std::fs::read_to_string(path).map_err(|source| SecurityError::ReadPassword {
        label,
        path: path.to_path_buf(),
        key,
        source,
    })
}

/// The SASL credentials of `[kafka.sasl]`, reading the password file.
pub fn sasl_credentials(sasl: &SaslConfig) -> Result<SaslCredentials, SecurityError> {
    let (label, key) = ("SASL ", "kafka.sasl.password_file");
    let password = read_password_file(&sasl.password_file, label, key)?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(SecurityError::EmptyPassword {
            label,
            path: sasl.password_file.clone(),
            key,
        });
    }
    Ok(SaslCredentials {
        mechanism: match sasl.mechanism {
            SaslMechanism::Plain => Mechanism::Plain,
            SaslMechanism::ScramSha256 => Mechanism::ScramSha256,
            SaslMechanism::ScramSha512 => Mechanism::ScramSha512,
        },
        username: sasl.username.clone(),
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn missing_ca_file_names_the_key() {
        let e = tls_config(&TlsConfig {
            ca_file: PathBuf::from("/nonexistent/ca.pem"),
            cert_file: None,
            key_file: None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("kafka.tls.ca_file"),
            "{e}"
        );
    }

    #[test]
    fn password_comes_from_the_file_and_is_never_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let cfg = SaslConfig {
            mechanism: SaslMechanism::ScramSha512,
            username: "gw".into(),
            password_file: file.clone(),
        };
        let c = sasl_credentials(&cfg).unwrap();
        assert_eq!(
            (c.mechanism, c.password.as_str()),
            (Mechanism::ScramSha512, "s3cret")
        );
        std::fs::write(&file, "").unwrap();
        let e = sasl_credentials(&cfg).unwrap_err().to_string();
        assert!(e.contains("is empty") && !e.contains("s3cret"), "{e}");
    }
}
