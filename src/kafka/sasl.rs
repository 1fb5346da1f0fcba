//! SASL mechanisms and credentials (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512),
//! and one exchange's steps, done by `rsasl`; the connection carries them
//! to the broker. The password never appears in an error or a log line.

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

/// Why a SASL exchange could not go on.
#[derive(Debug, thiserror::Error)]
pub enum SaslError {
    /// rsasl refused the mechanism or the credentials before anything was
    /// sent (its set-up errors are of several types; their text is kept).
    #[error("SASL {mechanism} set-up failed: {message}")]
    Setup {
        mechanism: &'static str,
        message: String,
    },
    /// The broker's answer did not fit the mechanism.
    #[error(transparent)]
    Step(#[from] rsasl::prelude::SessionError),
}

/// One SASL exchange on ferry's side, done by `rsasl`: the messages to
/// send, given what the broker answered. The connection carries them
/// (SaslAuthenticate requests).
pub struct Exchange {
    session: rsasl::prelude::Session,
}

impl Exchange {
    pub fn start(creds: &SaslCredentials) -> Result<Exchange, SaslError> {
        let mech = creds.mechanism.name();
        let setup = |e: &dyn std::fmt::Display| SaslError::Setup {
            mechanism: mech,
            message: e.to_string(),
        };
        let config =
            SASLConfig::with_credentials(None, creds.username.clone(), creds.password.clone())
                .map_err(|e| setup(&e))?;
        let name = Mechname::parse(mech.as_bytes()).map_err(|e| setup(&e))?;
        let session = SASLClient::new(config)
            .start_suggested(&[name])
            .map_err(|e| setup(&e))?;
        Ok(Exchange { session })
    }

    /// The next message to send (if any) given the broker's last answer
    /// (`None` at the start), and whether the exchange is finished.
    pub fn step(&mut self, received: Option<&[u8]>) -> Result<(Option<Vec<u8>>, bool), SaslError> {
        let mut out = Cursor::new(Vec::new());
        let state = self.session.step(received, &mut out)?;
        let send = state.has_sent_message().then(|| out.into_inner());
        Ok((send, state.is_finished()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_sends_its_one_message_and_is_done() {
        let c = SaslCredentials {
            mechanism: Mechanism::Plain,
            username: "gw".into(),
            password: "pw".into(),
        };
        let mut x = Exchange::start(&c).unwrap();
        let (send, _) = x.step(None).unwrap();
        assert_eq!(send.as_deref(), Some(&b"\0gw\0pw"[..]));
    }

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
