//! `ferry check-config --connect`: reach every configured broker with the
//! configured TLS and SASL, ask for the metadata of the topics the config
//! names, and say per broker and per topic what works and, where not, what
//! to check. Nothing is produced and no topic is created.

use super::config::KafkaConfig;
use super::security;
use crate::kafka::cluster::Cluster;
use crate::kafka::connection::{Connection, ConnectionConfig};
use crate::kafka::errors::Failure;
use crate::kafka::uplink::Uplink;
use std::sync::Arc;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `broker 10.0.0.5:9092`, `topic telemetry`, `TLS`...
    pub subject: String,
    pub ok: bool,
    /// What was found, and when not ok what to check.
    pub detail: String,
}

impl Finding {
    pub fn ok(subject: String, detail: String) -> Self {
        Self {
            subject,
            ok: true,
            detail,
        }
    }

    pub fn bad(subject: String, detail: String) -> Self {
        Self {
            subject,
            ok: false,
            detail,
        }
    }
}

/// What to check for a topic Kafka answered `name` about.
fn topic_hint(name: &str) -> &'static str {
    match name {
        "UNKNOWN_TOPIC_OR_PARTITION" => {
            "the topic does not exist: create it, or let the broker create it (auto.create.topics.enable on the broker, kafka.allow_auto_create_topics in ferry)"
        }
        "TOPIC_AUTHORIZATION_FAILED" => {
            "not authorised: grant the SASL user WRITE and DESCRIBE on the topic"
        }
        "INVALID_TOPIC_EXCEPTION" => "not a valid topic name for Kafka",
        "LEADER_NOT_AVAILABLE" => "no leader yet: the topic is being created or a broker is down",
        _ => "see the broker's logs",
    }
}

/// Check the brokers and `topics` as `kafka` says to reach them.
pub async fn check_connect(kafka: &KafkaConfig, topics: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    let tls = match &kafka.tls {
        Some(t) => match security::tls_config(t) {
            Ok(c) => {
                out.push(Finding::ok(
                    "TLS".into(),
                    format!("CA {} loaded", t.ca_file.display()),
                ));
                Some(c)
            }
            Err(e) => {
                out.push(Finding::bad("TLS".into(), e.to_string()));
                return out;
            }
        },
        None => None,
    };
    let sasl = match &kafka.sasl {
        Some(s) => match security::sasl_credentials(s) {
            Ok(c) => Some(c),
            Err(e) => {
                out.push(Finding::bad("SASL".into(), e.to_string()));
                return out;
            }
        },
        None => None,
    };
    let config = ConnectionConfig {
        client_id: kafka.client_id.clone(),
        connect_timeout: kafka.connect_timeout,
        request_timeout: kafka.request_timeout,
        tls,
        sasl,
        uplink: Arc::new(Uplink::new(0)),
    };
    let how = match (&kafka.tls, &kafka.sasl) {
        (None, None) => "plaintext".to_string(),
        (Some(_), None) => "TLS".to_string(),
        (None, Some(s)) => format!("SASL {:?} as {}", s.mechanism, s.username),
        (Some(_), Some(s)) => format!("TLS, SASL {:?} as {}", s.mechanism, s.username),
    };
    let mut reachable = Vec::new();
    for broker in &kafka.brokers {
        let subject = format!("broker {broker}");
        match Connection::connect(broker, &config).await {
            Ok(conn) => {
                let produce = crate::kafka::producer::produce_version(
                    &conn,
                    crate::kafka::record_batch::Codec::None,
                );
                match produce {
                    Ok(v) => {
                        out.push(Finding::ok(
                            subject,
                            format!("connected ({how}), Produce v{v}"),
                        ));
                        reachable.push(broker.clone());
                    }
                    Err(f) => out.push(Finding::bad(subject, f.message)),
                }
            }
            Err(f) => out.push(Finding::bad(subject, failure_text(&f))),
        }
    }
    if reachable.is_empty() || topics.is_empty() {
        return out;
    }
    // Never create a topic while checking.
    let mut cluster = Cluster::new(reachable, config, false);
    if let Err(f) = cluster.refresh(topics).await {
        out.push(Finding::bad("metadata".into(), failure_text(&f)));
        return out;
    }
    for topic in topics {
        let subject = format!("topic {topic}");
        match cluster.topic(topic) {
            Some(t) if t.error == 0 => {
                let led = t.leaders.iter().filter(|&&l| l >= 0).count();
                let n = t.leaders.len();
                if led == n {
                    out.push(Finding::ok(
                        subject,
                        format!("{n} partitions, each with a leader"),
                    ));
                } else {
                    out.push(Finding::bad(
                        subject,
                        format!("{led} of {n} partitions have a leader: a broker is down or the topic is being moved"),
                    ));
                }
            }
            Some(t) => {
                let f = Failure::from_code(t.error, &subject, None);
                out.push(Finding::bad(
                    subject,
                    format!("{} [{}]: {}", f.message, f.name, topic_hint(&f.name)),
                ));
            }
            None => out.push(Finding::bad(
                subject,
                "the broker did not answer about it".into(),
            )),
        }
    }
    out
}

fn failure_text(f: &Failure) -> String {
    format!("{} [{}]", f.message, f.name)
}
