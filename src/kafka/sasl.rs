//! SASL authentication on a fresh connection (KIP-152: SaslHandshake v1,
//! then SaslAuthenticate requests): PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512,
//! the exchanges themselves done by `rsasl`. The password never appears in
//! an error or a log line.

use super::connection::Connection;
use super::errors::{Class, Failure};
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use rsasl::prelude::{Mechname, SASLClient, SASLConfig};
use std::io::Cursor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Who ferry is to the broker. `Debug` leaves the password out.
#[derive(Clone)]
pub struct SaslCredentials {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"(redacted)")
            .finish()
    }
}

fn config_failure(name: &str, message: String) -> Failure {
    Failure::new(Class::ConfigCluster, name, message)
}

pub async fn authenticate(conn: &Connection, creds: &SaslCredentials) -> Result<(), Failure> {
    let mech = creds.mechanism.name();
    let addr = conn.addr();
    let hs_version = conn.version::<SaslHandshakeRequest>().unwrap_or(0).min(1);
    let auth_version = conn.version::<SaslAuthenticateRequest>().ok_or_else(|| {
        config_failure(
            "UNSUPPORTED_SASL_MECHANISM",
            format!("broker {addr} does not take SASL authentication requests; is [kafka.sasl] needed here?"),
        )
    })?;
    let handshake = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mech));
    let closed = |f: Failure| {
        if f.class != Class::Transient || f.name == "REQUEST_TIMEOUT" {
            return f;
        }
        // Some brokers close the connection instead of answering.
        config_failure(
            "SASL_AUTHENTICATION_FAILED",
            format!(
                "broker {addr} ended SASL {mech} authentication as {} ({}): it may not offer {mech}, or refused the credentials; check kafka.sasl.mechanism, kafka.sasl.username and the password file",
                creds.username, f.message
            ),
        )
    };
    let answer = conn.request(&handshake, hs_version).await.map_err(closed)?;
    if answer.error_code != 0 {
        let offered: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
        return Err(config_failure(
            "UNSUPPORTED_SASL_MECHANISM",
            format!(
                "broker {addr} does not offer SASL {mech} (it offers {}): check kafka.sasl.mechanism",
                if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(", ")
                }
            ),
        ));
    }
    let setup = |e: &dyn std::fmt::Display| {
        config_failure("SASL_CONFIG", format!("SASL {mech} set-up failed: {e}"))
    };
    let config = SASLConfig::with_credentials(None, creds.username.clone(), creds.password.clone())
        .map_err(|e| setup(&e))?;
    let client = SASLClient::new(config);
    let name = Mechname::parse(mech.as_bytes()).map_err(|e| setup(&e))?;
    let mut session = client.start_suggested(&[name]).map_err(|e| setup(&e))?;
    let mut received: Option<Vec<u8>> = None;
    loop {
        let mut out = Cursor::new(Vec::new());
        let state = session.step(received.as_deref(), &mut out).map_err(|e| {
            config_failure(
                "SASL_AUTHENTICATION_FAILED",
                format!(
                    "SASL {mech} authentication as {} at broker {addr} failed: {e}; check kafka.sasl.username and the password file",
                    creds.username
                ),
            )
        })?;
        if state.has_sent_message() {
            let request =
                SaslAuthenticateRequest::default().with_auth_bytes(out.into_inner().into());
            let answer = conn.request(&request, auth_version).await.map_err(closed)?;
            if answer.error_code != 0 {
                let why = answer
                    .error_message
                    .as_ref()
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_default();
                return Err(config_failure(
                    "SASL_AUTHENTICATION_FAILED",
                    format!(
                        "SASL {mech} authentication as {} at broker {addr} failed ({why}): check kafka.sasl.username and the password file",
                        creds.username
                    ),
                ));
            }
            received = Some(answer.auth_bytes.to_vec());
        }
        if state.is_finished() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let c = SaslCredentials {
            mechanism: Mechanism::ScramSha512,
            username: "gw".into(),
            password: "s3cret".into(),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("gw") && !shown.contains("s3cret"), "{shown}");
    }
}
