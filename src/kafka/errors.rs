//! Error classes. Every failure of a delivery attempt is one of these kinds,
//! and the class decides what ferry does about it:
//! - transient: retry after a jittered backoff (the breaker counts them);
//! - permanent for the record: dead-letter it, the rest of the batch goes on;
//! - configuration: nothing will change until an operator acts: open the
//!   breaker (cluster-wide) or park the topic, back off long, log loudly;
//! - producer state: the broker no longer knows ferry's idempotent producer
//!   (or its sequences): get a new producer id, then retry.

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
    /// The idempotent producer's identity or sequences are out of step with
    /// the broker: re-initialise the producer id and retry.
    ProducerState,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Transient => "transient",
            Class::PermanentRecord => "permanent",
            Class::ConfigTopic => "configuration (topic)",
            Class::ConfigCluster => "configuration (cluster)",
            Class::ProducerState => "producer state",
        }
    }
}

/// DUPLICATE_SEQUENCE_NUMBER: the broker already has this batch. Not an
/// error for ferry: the batch is delivered.
pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
/// OUT_OF_ORDER_SEQUENCE_NUMBER (see the producer for when it means
/// "already delivered").
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
/// UNSUPPORTED_VERSION.
pub const UNSUPPORTED_VERSION: i16 = 35;

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
    (43, "UNSUPPORTED_FOR_MESSAGE_FORMAT", Class::ConfigTopic),
    (44, "POLICY_VIOLATION", Class::PermanentRecord),
    (45, "OUT_OF_ORDER_SEQUENCE_NUMBER", Class::ProducerState),
    (47, "INVALID_PRODUCER_EPOCH", Class::ProducerState),
    (
        53,
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        Class::ConfigCluster,
    ),
    (56, "KAFKA_STORAGE_ERROR", Class::Transient),
    (58, "SASL_AUTHENTICATION_FAILED", Class::ConfigCluster),
    (59, "UNKNOWN_PRODUCER_ID", Class::ProducerState),
    (74, "FENCED_LEADER_EPOCH", Class::Transient),
    (75, "UNKNOWN_LEADER_EPOCH", Class::Transient),
    (87, "INVALID_RECORD", Class::PermanentRecord),
    (89, "THROTTLING_QUOTA_EXCEEDED", Class::Transient),
    (90, "PRODUCER_FENCED", Class::ProducerState),
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

    pub fn new(class: Class, name: &str, message: String) -> Self {
        Self {
            class,
            name: name.to_string(),
            message,
        }
    }

    /// A Kafka error code, classified by [`TABLE`]; `context` says where.
    pub fn from_code(code: i16, context: &str, broker_message: Option<&str>) -> Self {
        let (class, name) = classify_code(code);
        let detail = broker_message
            .filter(|m| !m.is_empty())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        Self {
            class,
            name: name.to_string(),
            message: format!("{context}: Kafka answered {name} (code {code}){detail}"),
        }
    }
}

/// The class and name of a Kafka error code.
pub fn classify_code(code: i16) -> (Class, &'static str) {
    TABLE
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, name, class)| (*class, *name))
        .unwrap_or((Class::Transient, "OTHER"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row: the code's name is Kafka's own (as the codec crate knows
    /// it), and a failure from the code gets the row's class and name.
    #[test]
    fn every_row_classifies_as_listed() {
        for (code, name, class) in TABLE {
            let f = Failure::from_code(*code, "produce to t/0", Some("why"));
            assert_eq!((f.class, f.name.as_str()), (*class, *name), "code {code}");
            assert!(
                f.message.contains("t/0") && f.message.contains(name) && f.message.contains("why"),
                "{}",
                f.message
            );
            let known = kafka_protocol::ResponseError::try_from_code(*code);
            let crate_name = format!("{known:?}");
            let words: String = name.split('_').map(|w| w.to_ascii_lowercase()).collect();
            assert!(
                crate_name
                    .to_ascii_lowercase()
                    .replace("_", "")
                    .contains(&words)
                    || *code == -1
                    || *code == 6,
                "code {code}: {name} vs the codec's {crate_name}"
            );
        }
    }

    #[test]
    fn unknown_codes_are_transient() {
        assert_eq!(classify_code(999), (Class::Transient, "OTHER"));
        assert_eq!(Failure::from_code(999, "x", None).class, Class::Transient);
    }

    #[test]
    fn table_has_no_duplicate_codes() {
        let mut codes: Vec<i16> = TABLE.iter().map(|r| r.0).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
    }
}
