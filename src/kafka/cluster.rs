//! The cluster as ferry sees it: the bootstrap list, the brokers and topic
//! leaders that Metadata names, and one connection per broker. Metadata
//! requests name the topics ferry needs (and may let the broker create
//! them, as the Java producer's do), so a new topic flows at once on a
//! broker that auto-creates. Each call makes at most one attempt per
//! address: retrying is the forwarder's decision.

use super::connection::{Connection, ConnectionConfig};
use super::errors::{Class, Failure};
use super::wire::Request as _;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use std::collections::HashMap;
use std::sync::Arc;

/// What ferry knows of one topic.
#[derive(Debug, Clone, Default)]
pub struct Topic {
    /// The topic's error in the last Metadata answer (0: none).
    pub error: i16,
    /// Leader broker id per partition (-1: none right now).
    pub leaders: Vec<i32>,
}

/// The Metadata versions ferry asks with (v4+ carries the auto-create flag).
const METADATA_MAX: i16 = 12;

pub struct Cluster {
    config: ConnectionConfig,
    bootstrap: Vec<String>,
    allow_auto_create: bool,
    /// Broker id → `host:port`, as Metadata last named them.
    brokers: HashMap<i32, String>,
    connections: HashMap<i32, Arc<Connection>>,
    /// The connection Metadata and InitProducerId go over.
    any: Option<Arc<Connection>>,
    /// Rotates which bootstrap address is tried first.
    next_bootstrap: usize,
    topics: HashMap<String, Topic>,
    /// The cluster id the last Metadata answer named (brokers before
    /// Kafka 0.10.1 name none). Producer ids belong to one cluster.
    cluster_id: Option<String>,
}

impl Cluster {
    pub fn new(bootstrap: Vec<String>, config: ConnectionConfig, allow_auto_create: bool) -> Self {
        Self {
            config,
            bootstrap,
            allow_auto_create,
            brokers: HashMap::new(),
            connections: HashMap::new(),
            any: None,
            next_bootstrap: 0,
            topics: HashMap::new(),
            cluster_id: None,
        }
    }

    /// The id of the cluster the brokers belong to, once Metadata named it.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Forget every connection and all metadata (after repeated failures).
    pub fn reset(&mut self) {
        self.connections.clear();
        self.any = None;
        self.topics.clear();
    }

    /// Forget what is known of `topic`, so the next refresh asks again
    /// (after NOT_LEADER_OR_FOLLOWER and the like).
    pub fn forget_topic(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    /// A live connection to some broker: the last one used, a known broker,
    /// or the bootstrap list, each address tried once.
    pub async fn any_connection(&mut self) -> Result<Arc<Connection>, Failure> {
        if let Some(c) = self.any.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        if let Some(c) = self.connections.values().find(|c| !c.is_closed()) {
            self.any = Some(c.clone());
            return Ok(c.clone());
        }
        let mut failure: Option<Failure> = None;
        let n = self.bootstrap.len();
        for i in 0..n {
            let addr = self.bootstrap[(self.next_bootstrap + i) % n].clone();
            match Connection::connect(&addr, &self.config).await {
                Ok(c) => {
                    self.next_bootstrap = (self.next_bootstrap + i) % n;
                    let c = Arc::new(c);
                    self.any = Some(c.clone());
                    return Ok(c);
                }
                Err(f) => {
                    // A configuration problem says more than a timeout.
                    if failure
                        .as_ref()
                        .is_none_or(|old| old.class == Class::Transient)
                    {
                        failure = Some(f);
                    }
                }
            }
        }
        self.next_bootstrap = (self.next_bootstrap + 1) % n.max(1);
        Err(failure.unwrap_or_else(|| {
            Failure::new(
                Class::ConfigCluster,
                "NO_BROKERS",
                "kafka.brokers is empty".into(),
            )
        }))
    }

    /// Ask for the metadata of `topics` (and the brokers).
    pub async fn refresh(&mut self, topics: &[String]) -> Result<(), Failure> {
        let conn = self.any_connection().await?;
        let version = conn
            .version::<MetadataRequest>()
            .map(|v| v.min(METADATA_MAX))
            .ok_or_else(|| {
                Failure::new(
                    Class::ConfigCluster,
                    "UNSUPPORTED_VERSION",
                    format!(
                        "broker {} speaks no Metadata version ferry knows",
                        conn.addr()
                    ),
                )
            })?;
        let mut request = MetadataRequest::default().with_topics(Some(
            topics
                .iter()
                .map(|t| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                })
                .collect(),
        ));
        if version >= 4 {
            request = request.with_allow_auto_topic_creation(self.allow_auto_create);
        }
        let answer = match conn.request(&request, version).await {
            Ok(a) => a,
            Err(f) => {
                self.any = None;
                return Err(f);
            }
        };
        conn.throttled(MetadataRequest::KEY, version, answer.throttle_time_ms);
        if let Some(id) = answer.cluster_id.as_ref().filter(|id| !id.is_empty()) {
            self.cluster_id = Some(id.as_str().to_string());
        }
        for b in &answer.brokers {
            let addr = format!("{}:{}", b.host.as_str(), b.port);
            let id = b.node_id.0;
            if self.brokers.get(&id) != Some(&addr) {
                self.connections.remove(&id);
                self.brokers.insert(id, addr);
            }
        }
        for t in &answer.topics {
            let Some(name) = &t.name else { continue };
            let mut leaders = vec![-1; t.partitions.len()];
            for p in &t.partitions {
                if let Some(slot) = usize::try_from(p.partition_index)
                    .ok()
                    .and_then(|i| leaders.get_mut(i))
                {
                    *slot = if p.error_code == 0 { p.leader_id.0 } else { -1 };
                }
            }
            self.topics.insert(
                name.0.as_str().to_string(),
                Topic {
                    error: t.error_code,
                    leaders,
                },
            );
        }
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    /// Partitions of `topic`, when it is known and usable.
    pub fn partition_count(&self, topic: &str) -> Option<i32> {
        self.topics
            .get(topic)
            .filter(|t| t.error == 0 && !t.leaders.is_empty())
            .map(|t| t.leaders.len() as i32)
    }

    /// The connection to the leader of `topic`/`partition`.
    pub async fn leader(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<Connection>, Failure> {
        let leader = self
            .topics
            .get(topic)
            .and_then(|t| t.leaders.get(partition as usize).copied())
            .unwrap_or(-1);
        // (What is known of the topic stays: its other partitions may have
        // leaders. The caller forgets it to ask again.)
        if leader < 0 {
            return Err(Failure::new(
                Class::Transient,
                "LEADER_NOT_AVAILABLE",
                format!("{topic}/{partition} has no leader right now"),
            ));
        }
        if let Some(c) = self.connections.get(&leader).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let Some(addr) = self.brokers.get(&leader).cloned() else {
            self.topics.remove(topic);
            return Err(Failure::transient(format!(
                "leader {leader} of {topic}/{partition} is not among the brokers Kafka named"
            )));
        };
        let c = Arc::new(Connection::connect(&addr, &self.config).await?);
        self.connections.insert(leader, c.clone());
        Ok(c)
    }
}
