//! The producer side of the protocol: the idempotent producer's identity
//! (InitProducerId) and Produce requests for one partition's record batch,
//! answered with what the broker said of that partition. A throttled
//! answer is a success: the connection holds the next request back for
//! `throttle_time_ms` (from the versions where the client is to, see
//! `throttle`; to older ones the broker already held the answer).

use super::connection::{Connection, Pending};
use super::errors::{Class, Failure};
use super::record_batch::{Codec, ZSTD_MIN_PRODUCE_VERSION};
use super::wire::Request as _;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{InitProducerIdRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

/// Produce versions ferry asks with: from v3 (record batches), up to v12
/// (v13 names topics by id).
const PRODUCE_MAX: i16 = 12;

/// The idempotent producer's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    pub producer_id: i64,
    pub epoch: i16,
}

/// A new producer id from the broker; `None` if the broker cannot give one
/// (no InitProducerId, or idempotent writes not authorised): then ferry
/// produces without idempotence (at-least-once).
pub async fn init_producer_id(conn: &Connection) -> Result<Option<ProducerIdentity>, Failure> {
    let Some(version) = conn.version::<InitProducerIdRequest>() else {
        return Ok(None);
    };
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(i32::MAX);
    let answer = conn.request(&request, version).await?;
    conn.throttled(InitProducerIdRequest::KEY, version, answer.throttle_time_ms);
    match answer.error_code {
        0 => Ok(Some(ProducerIdentity {
            producer_id: answer.producer_id.0,
            epoch: answer.producer_epoch,
        })),
        // CLUSTER_AUTHORIZATION_FAILED: no IdempotentWrite permission.
        31 => Ok(None),
        code => Err(Failure::from_code(
            code,
            &format!("asking broker {} for a producer id", conn.addr()),
            None,
        )),
    }
}

/// What the broker said of one partition's batch.
#[derive(Debug, Clone, Default)]
pub struct PartitionAnswer {
    pub error_code: i16,
    pub base_offset: i64,
    pub error_message: Option<String>,
    /// Index in the batch and message of each record the broker refused.
    pub record_errors: Vec<(i32, Option<String>)>,
    pub throttle_ms: i32,
}

/// The Produce version to use on `conn` for batches compressed by `codec`.
pub fn produce_version(conn: &Connection, codec: Codec) -> Result<i16, Failure> {
    let version = conn
        .version::<ProduceRequest>()
        .map(|v| v.min(PRODUCE_MAX))
        .ok_or_else(|| {
            Failure::new(
                Class::ConfigCluster,
                "UNSUPPORTED_VERSION",
                format!(
                    "broker {} speaks no Produce version with record batches (Kafka 0.11 or newer is needed)",
                    conn.addr()
                ),
            )
        })?;
    if matches!(codec, Codec::Zstd(_)) && version < ZSTD_MIN_PRODUCE_VERSION {
        return Err(Failure::new(
            Class::ConfigCluster,
            "UNSUPPORTED_COMPRESSION_TYPE",
            format!(
                "broker {} speaks Produce up to v{version}, and zstd batches need v{ZSTD_MIN_PRODUCE_VERSION} (Kafka 2.1 or newer): set kafka.compression = \"lz4\"",
                conn.addr()
            ),
        ));
    }
    Ok(version)
}

/// Send one record batch for `topic`/`partition` (acks = all, as
/// idempotence requires). The batch, in one or two parts (see
/// `BatchEncoder::finish_parts`), goes to the socket from where it is
/// (see [`Connection::send_produce`]).
pub async fn send_batch(
    conn: &Connection,
    version: i16,
    topic: &TopicName,
    partition: i32,
    batch: (&[u8], &[u8]),
    timeout_ms: i32,
) -> Result<Pending<ProduceRequest>, Failure> {
    let request = ProduceRequest::default()
        .with_transactional_id(None)
        .with_acks(-1)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic.clone())
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(None),
                ]),
        ]);
    conn.send_produce(&request, version, batch).await
}

/// Wait for the answer to [`send_batch`]; a throttled answer holds the
/// connection's next request back.
pub async fn answer(
    conn: &Connection,
    pending: Pending<ProduceRequest>,
    topic: &TopicName,
    partition: i32,
) -> Result<PartitionAnswer, Failure> {
    let version = pending.version();
    let response = pending.wait().await?;
    conn.throttled(ProduceRequest::KEY, version, response.throttle_time_ms);
    let found = response
        .responses
        .iter()
        .filter(|t| t.name == *topic)
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == partition);
    let Some(p) = found else {
        return Err(Failure::transient(format!(
            "broker {} answered a produce to {}/{partition} without that partition",
            conn.addr(),
            topic.0.as_str()
        )));
    };
    Ok(PartitionAnswer {
        error_code: p.error_code,
        base_offset: p.base_offset,
        error_message: p.error_message.as_ref().map(|m| m.as_str().to_string()),
        record_errors: p
            .record_errors
            .iter()
            .map(|e| {
                (
                    e.batch_index,
                    e.batch_index_error_message
                        .as_ref()
                        .map(|m| m.as_str().to_string()),
                )
            })
            .collect(),
        throttle_ms: response.throttle_time_ms,
    })
}

/// A topic name for requests.
pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}
