//! Error classes. Every failure of a delivery attempt is one of three kinds,
//! and the class decides what ferry does about it:
//! - transient: retry after a jittered backoff (the breaker counts them);
//! - permanent for the record: dead-letter it, the rest of the batch goes on;
//! - configuration: nothing will change until an operator acts: open the
//!   breaker (cluster-wide) or park the topic, back off long, log loudly.

use rskafka::client::error::{Error as ClientError, ProtocolError};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Transient,
    PermanentRecord,
    /// Configuration that concerns one topic (authorization, missing topic).
    ConfigTopic,
    /// Configuration of the whole cluster connection (authentication).
    ConfigCluster,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Transient => "transient",
            Class::PermanentRecord => "permanent",
            Class::ConfigTopic => "configuration (topic)",
            Class::ConfigCluster => "configuration (cluster)",
        }
    }
}

/// Kafka error code → class. The one table; unknown codes are transient
/// (retried with backoff, never dropped).
pub const TABLE: &[(i16, &str, Class)] = &[
    (-1, "UNKNOWN_SERVER_ERROR", Class::Transient),
    (2, "CORRUPT_MESSAGE", Class::PermanentRecord),
    (3, "UNKNOWN_TOPIC_OR_PARTITION", Class::ConfigTopic),
    (5, "LEADER_NOT_AVAILABLE", Class::Transient),
    (6, "NOT_LEADER_OR_FOLLOWER", Class::Transient),
    (7, "REQUEST_TIMED_OUT", Class::Transient),
    (8, "BROKER_NOT_AVAILABLE", Class::Transient),
    (9, "REPLICA_NOT_AVAILABLE", Class::Transient),
    (10, "MESSAGE_TOO_LARGE", Class::PermanentRecord),
    (13, "NETWORK_EXCEPTION", Class::Transient),
    (14, "COORDINATOR_LOAD_IN_PROGRESS", Class::Transient),
    (15, "COORDINATOR_NOT_AVAILABLE", Class::Transient),
    (17, "INVALID_TOPIC_EXCEPTION", Class::PermanentRecord),
    (18, "RECORD_LIST_TOO_LARGE", Class::PermanentRecord),
    (19, "NOT_ENOUGH_REPLICAS", Class::Transient),
    (20, "NOT_ENOUGH_REPLICAS_AFTER_APPEND", Class::Transient),
    (21, "INVALID_REQUIRED_ACKS", Class::ConfigCluster),
    (29, "TOPIC_AUTHORIZATION_FAILED", Class::ConfigTopic),
    (31, "CLUSTER_AUTHORIZATION_FAILED", Class::ConfigCluster),
    (32, "INVALID_TIMESTAMP", Class::PermanentRecord),
    (33, "UNSUPPORTED_SASL_MECHANISM", Class::ConfigCluster),
    (34, "ILLEGAL_SASL_STATE", Class::ConfigCluster),
    (35, "UNSUPPORTED_VERSION", Class::ConfigCluster),
    (56, "KAFKA_STORAGE_ERROR", Class::Transient),
    (58, "SASL_AUTHENTICATION_FAILED", Class::ConfigCluster),
    (87, "INVALID_RECORD", Class::PermanentRecord),
    (89, "THROTTLING_QUOTA_EXCEEDED", Class::Transient),
];

/// A classified failure: what class, the Kafka error name, and a message
/// that says what happened and where.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: Class,
    pub name: String,
    pub message: String,
}

impl Failure {
    pub fn transient(message: String) -> Self {
        Self {
            class: Class::Transient,
            name: "NETWORK".into(),
            message,
        }
    }
}

fn by_protocol_error(e: &ProtocolError) -> (Class, &'static str) {
    TABLE
        .iter()
        .find(|(code, _, _)| ProtocolError::new(*code).as_ref() == Some(e))
        .map(|(_, name, class)| (*class, *name))
        .unwrap_or((Class::Transient, "OTHER"))
}

/// Classify an rskafka error (looking through its retry wrapper).
pub fn classify(e: &ClientError) -> (Class, String) {
    match e {
        ClientError::ServerError { protocol_error, .. } => {
            let (class, name) = by_protocol_error(protocol_error);
            (class, name.to_string())
        }
        ClientError::RetryFailed(rskafka::BackoffError::DeadlineExceded { source, .. }) => {
            match source.downcast_ref::<ClientError>() {
                Some(inner) => classify(inner),
                None => (Class::Transient, "RETRIES_EXHAUSTED".into()),
            }
        }
        ClientError::Connection(c) => classify_connection(&c.to_string()),
        ClientError::Request(_) => (Class::Transient, "REQUEST".into()),
        ClientError::Timeout => (Class::Transient, "TIMEOUT".into()),
        ClientError::InvalidResponse(_) => (Class::Transient, "INVALID_RESPONSE".into()),
        _ => (Class::Transient, "OTHER".into()),
    }
}

/// Connection failures are transient, except those no retry can fix: an
/// untrusted or invalid broker certificate, and failed SASL authentication.
fn classify_connection(text: &str) -> (Class, String) {
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate") {
        (Class::ConfigCluster, "TLS_CERTIFICATE".into())
    } else if lower.contains("sasl") {
        (Class::ConfigCluster, "SASL_AUTHENTICATION_FAILED".into())
    } else {
        (Class::Transient, "CONNECTION".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row: rskafka knows the code, and a server error with it gets
    /// the row's class and name.
    #[test]
    fn every_row_classifies_as_listed() {
        for (code, name, class) in TABLE {
            let pe = ProtocolError::new(*code)
                .unwrap_or_else(|| panic!("rskafka does not know code {code} ({name})"));
            let e = ClientError::ServerError {
                protocol_error: pe,
                error_message: None,
                request: rskafka::client::error::RequestContext::Topic("t".into()),
                response: None,
                is_virtual: false,
            };
            assert_eq!(classify(&e), (*class, name.to_string()), "code {code}");
        }
    }

    #[test]
    fn unknown_codes_are_transient() {
        let pe = ProtocolError::new(44).unwrap(); // DUPLICATE_SEQUENCE_NUMBER
        assert_eq!(by_protocol_error(&pe).0, Class::Transient);
    }

    #[test]
    fn connection_failures() {
        assert_eq!(
            classify_connection("IO Error: connection refused").0,
            Class::Transient
        );
        assert_eq!(
            classify_connection("invalid peer certificate: UnknownIssuer").0,
            Class::ConfigCluster
        );
        assert_eq!(
            classify_connection("Sasl handshake failed: auth").0,
            Class::ConfigCluster
        );
    }

    #[test]
    fn table_has_no_duplicate_codes() {
        let mut codes: Vec<i16> = TABLE.iter().map(|r| r.0).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
    }
}
