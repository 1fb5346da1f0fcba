//! TLS (rustls, CA file, optional client certificate) and SASL (PLAIN,
//! SCRAM-SHA-256/512) for the Kafka connection. Secrets come from files
//! and never appear in logs, `check-config` or `ferry status`: errors name
//! the file, not its contents.

use super::config::{SaslConfig, SaslMechanism, TlsConfig};
use crate::kafka::sasl::{Mechanism, SaslCredentials};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// The connection settings `[kafka]` describes, TLS and SASL read from
/// their files now, with `uplink` counting the bytes.
pub fn connection_config(
    kafka: &super::config::KafkaConfig,
    uplink: Arc<crate::kafka::uplink::Uplink>,
) -> Result<crate::kafka::connection::ConnectionConfig, crate::kafka::errors::Failure> {
    use crate::kafka::errors::{Class, Failure};
    let tls = match &kafka.tls {
        Some(t) => {
            Some(tls_config(t).map_err(|e| Failure::new(Class::ConfigCluster, "TLS_CONFIG", e))?)
        }
        None => None,
    };
    let sasl = match &kafka.sasl {
        Some(s) => Some(
            sasl_credentials(s)
                .map_err(|e| Failure::new(Class::ConfigCluster, "SASL_CONFIG", e))?,
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

/// Build the rustls client configuration from `[kafka.tls]`.
pub fn tls_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    tls_config_in(tls, "kafka.tls")
}

/// Build a rustls client configuration from a TLS section; errors name
/// `section` (`kafka.tls`, `mqtt.tls`).
pub fn tls_config_in(tls: &TlsConfig, section: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&tls.ca_file).map_err(|e| {
        format!(
            "cannot read CA file {} ({section}.ca_file): {e}",
            tls.ca_file.display()
        )
    })?;
    let mut added = 0;
    for cert in certs {
        let cert = cert.map_err(|e| {
            format!(
                "CA file {} ({section}.ca_file) holds a bad certificate: {e}",
                tls.ca_file.display()
            )
        })?;
        roots.add(cert).map_err(|e| {
            format!(
                "CA file {} ({section}.ca_file): certificate refused: {e}",
                tls.ca_file.display()
            )
        })?;
        added += 1;
    }
    if added == 0 {
        return Err(format!(
            "CA file {} ({section}.ca_file) holds no PEM certificate",
            tls.ca_file.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    format!(
                        "cannot read client certificate {} ({section}.cert_file): {e}",
                        cert.display()
                    )
                })?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!(
                    "cannot read client key {} ({section}.key_file): {e}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key do not fit together: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(format!(
                "{section}.cert_file and {section}.key_file go together: set both or neither"
            ));
        }
    };
    Ok(Arc::new(config))
}

/// The SASL credentials of `[kafka.sasl]`, reading the password file.
pub fn sasl_credentials(sasl: &SaslConfig) -> Result<SaslCredentials, String> {
    let password = std::fs::read_to_string(&sasl.password_file).map_err(|e| {
        format!(
            "cannot read the SASL password file {} (kafka.sasl.password_file): {e}",
            sasl.password_file.display()
        )
    })?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(format!(
            "the SASL password file {} (kafka.sasl.password_file) is empty",
            sasl.password_file.display()
        ));
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
        .unwrap_err();
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
        let e = sasl_credentials(&cfg).unwrap_err();
        assert!(e.contains("is empty") && !e.contains("s3cret"), "{e}");
    }
}
