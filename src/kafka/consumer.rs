//! Reading a topic from its start to its end, all `ferry fleet` needs of a
//! consumer: ListOffsets v1 for each partition's first and end offsets,
//! then Fetch v4 from the first until the end. No consumer group, no
//! offsets committed, nothing kept: every run reads the topic again (a
//! compacted heartbeat topic holds about one record per gateway).

use super::cluster::Cluster;
use super::errors::{Class, Failure};
use super::record_read::{ReadRecord, read_batches};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

const LIST_OFFSETS_VERSION: i16 = 1;
const FETCH_VERSION: i16 = 4;
/// Bytes asked for per fetch, and the most one batch may decompress to.
const FETCH_BYTES: i32 = 1024 * 1024;
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// ListOffsets' "timestamps" for the first and the end offset.
const EARLIEST: i64 = -2;
const LATEST: i64 = -1;

/// A topic read from its start to its end.
#[derive(Debug, Default)]
pub struct TopicRead {
    /// Per partition, in offset order.
    pub records: Vec<ReadRecord>,
    /// Batches in a codec ferry does not read (gzip, snappy).
    pub skipped_batches: usize,
}

/// Read every record of `topic` now in the log.
pub async fn read_topic(cluster: &mut Cluster, topic: &str) -> Result<TopicRead, Failure> {
    cluster.refresh(&[topic.to_string()]).await?;
    let Some(partitions) = cluster.partition_count(topic).filter(|n| *n > 0) else {
        return Err(Failure::new(
            Class::ConfigTopic,
            "UNKNOWN_TOPIC_OR_PARTITION",
            format!("topic {topic} does not exist (or ferry may not describe it)"),
        ));
    };
    let mut out = TopicRead::default();
    for partition in 0..partitions {
        let conn = cluster.leader(topic, partition).await?;
        if !conn.speaks::<ListOffsetsRequest>(LIST_OFFSETS_VERSION)
            || !conn.speaks::<FetchRequest>(FETCH_VERSION)
        {
            return Err(Failure::new(
                Class::ConfigCluster,
                "UNSUPPORTED_VERSION",
                format!(
                    "broker {} does not speak ListOffsets v{LIST_OFFSETS_VERSION} and Fetch v{FETCH_VERSION} (Kafka 0.11 and later do)",
                    conn.addr()
                ),
            ));
        }
        let first = list_offset(&conn, topic, partition, EARLIEST).await?;
        let end = list_offset(&conn, topic, partition, LATEST).await?;
        let mut at = first;
        while at < end {
            let request = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(0)
                .with_min_bytes(1)
                .with_max_bytes(FETCH_BYTES)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_partitions(vec![
                            FetchPartition::default()
                                .with_partition(partition)
                                .with_fetch_offset(at)
                                .with_partition_max_bytes(FETCH_BYTES),
                        ]),
                ]);
            let answer = conn.request(&request, FETCH_VERSION).await?;
            let data = answer
                .responses
                .first()
                .and_then(|t| t.partitions.first())
                .ok_or_else(|| {
                    Failure::transient(format!("fetch of {topic}/{partition}: an empty answer"))
                })?;
            if data.error_code != 0 {
                return Err(Failure::from_code(
                    data.error_code,
                    &format!("fetch of {topic}/{partition} at offset {at}"),
                    None,
                ));
            }
            let bytes = data.records.clone().unwrap_or_default();
            let read = read_batches(&bytes, MAX_BATCH_BYTES).map_err(|e| {
                Failure::new(
                    Class::PermanentRecord,
                    "CORRUPT_MESSAGE",
                    format!("{topic}/{partition} at offset {at}: {e}"),
                )
            })?;
            out.skipped_batches += read.skipped_batches;
            out.records.extend(
                read.records
                    .into_iter()
                    .filter(|r| r.offset >= at && r.offset < end),
            );
            match read.next_offset {
                Some(next) if next > at => at = next,
                // Nothing whole came back below the end (a batch larger
                // than asked for, from a broker before KIP-74): stop
                // rather than ask for the same again.
                _ => break,
            }
        }
    }
    Ok(out)
}

async fn list_offset(
    conn: &super::connection::Connection,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<i64, Failure> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(timestamp),
                ]),
        ]);
    let answer = conn.request(&request, LIST_OFFSETS_VERSION).await?;
    let p = answer
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or_else(|| {
            Failure::transient(format!("offsets of {topic}/{partition}: an empty answer"))
        })?;
    if p.error_code != 0 {
        return Err(Failure::from_code(
            p.error_code,
            &format!("offsets of {topic}/{partition}"),
            None,
        ));
    }
    Ok(p.offset)
}
