//! A Kafka-faithful broker model: real TCP listeners on loopback that speak
//! ApiVersions, Metadata, InitProducerId and Produce (decoded and encoded
//! with the `kafka-protocol` crate), keep every appended record, and apply
//! Apache Kafka's own idempotent-producer rules, so that a test can judge
//! exactly-once from the log itself rather than from a consumer's view.
//!
//! The rules are Kafka 3.9's, read in apache/kafka (tag `3.9.0-rc3`):
//! - `storage/.../log/ProducerStateEntry.java`: per partition and producer
//!   id, the epoch and the metadata of the last `NUM_BATCHES_TO_RETAIN` = 5
//!   batches; a batch of a new epoch clears them (`maybeUpdateProducerEpoch`).
//!   `findDuplicateBatch` matches a retained batch of the same epoch with
//!   exactly the same first and last sequence.
//! - `storage/.../log/ProducerAppendInfo.java`, `checkProducerEpoch` and
//!   `checkSequence`: a lower epoch is INVALID_PRODUCER_EPOCH; a new epoch
//!   needs sequence 0 (else OUT_OF_ORDER_SEQUENCE_NUMBER) unless the broker
//!   has no state for the producer, which since 2.5 (KIP-360) accepts any
//!   sequence; the same epoch needs last + 1 (`inSequence`, which also lets
//!   `i32::MAX` be followed by 0).
//! - `core/.../log/UnifiedLog.scala`, `analyzeAndValidateProducerState` and
//!   `append`: the duplicate check comes first, and a duplicate
//!   (`maybeDuplicate`) is not appended: the answer is success carrying the
//!   ORIGINAL batch's offsets (`appendInfo.setFirstOffset(duplicate.firstOffset)`).
//!   `LogValidator` runs before it, so an invalid record beats a duplicate.
//! - Before 2.5, a producer the broker had no state for (never seen, or
//!   expired by `producer.id.expiration.ms`/retention) and a first sequence
//!   other than 0 got UNKNOWN_PRODUCER_ID (2.4's `ProducerStateManager.scala`,
//!   `checkSequence`): [`KafkaModel::set_legacy`].
//! - `clients/.../record/DefaultRecordBatch.java` `incrementSequence`: the
//!   last sequence of a batch wraps from `i32::MAX` to 0.
//! - `clients/.../requests/ProduceRequest.java` `validateRecords`: from v3,
//!   exactly one v2 record batch per partition, else INVALID_RECORD.
//! - `LogValidator`: inner record offsets must run 0, 1, 2...; a refused
//!   record fails its whole batch with INVALID_RECORD and `record_errors`.
//! - `TransactionCoordinator.handleInitProducerId`: with no transactional
//!   id, a new producer id with epoch 0, whatever the request carried.
//! - `KafkaApis.handleProduceRequest`: with acks = 0 there is no answer, and
//!   an error closes the connection instead.
//!
//! Simplifications (what is NOT modelled): replication (a partition is its
//! leader's log; moving the leader moves the log), transactions (a
//! transactional or control batch is refused with INVALID_TXN_STATE, and
//! InitProducerId with a transactional id with
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED), gzip and snappy batches
//! (UNSUPPORTED_COMPRESSION_TYPE), message formats v0/v1, SASL, timestamps
//! (kept as sent, not checked), duplicate header names (the decoder keeps
//! one per name), topic ids (nil), the `current_leader` hint of v10+
//! NOT_LEADER answers. Throttling: Kafka before KIP-219 (Produce v3-v5,
//! InitProducerId v0) delays throttled answers itself; the model always
//! answers at once with `throttle_time_ms` set. Auto-creation answers the
//! Metadata request that creates a topic with LEADER_NOT_AVAILABLE and no
//! partitions (as Kafka 3.9 does while creation is in progress); the next
//! request sees the topic.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, BrokerId, InitProducerIdRequest,
    InitProducerIdResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    ProducerId, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{BatchDecodeInfo, Compression, Record, RecordBatchDecoder};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Kafka error codes the model answers with.
pub mod code {
    pub const NONE: i16 = 0;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_TXN_STATE: i16 = 48;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const INVALID_RECORD: i16 = 87;

    /// Kafka's name for `code` (for assertion messages).
    pub fn name(code: i16) -> &'static str {
        match code {
            NONE => "NONE",
            CORRUPT_MESSAGE => "CORRUPT_MESSAGE",
            UNKNOWN_TOPIC_OR_PARTITION => "UNKNOWN_TOPIC_OR_PARTITION",
            LEADER_NOT_AVAILABLE => "LEADER_NOT_AVAILABLE",
            NOT_LEADER_OR_FOLLOWER => "NOT_LEADER_OR_FOLLOWER",
            INVALID_TOPIC_EXCEPTION => "INVALID_TOPIC_EXCEPTION",
            INVALID_REQUIRED_ACKS => "INVALID_REQUIRED_ACKS",
            CLUSTER_AUTHORIZATION_FAILED => "CLUSTER_AUTHORIZATION_FAILED",
            UNSUPPORTED_VERSION => "UNSUPPORTED_VERSION",
            OUT_OF_ORDER_SEQUENCE_NUMBER => "OUT_OF_ORDER_SEQUENCE_NUMBER",
            INVALID_PRODUCER_EPOCH => "INVALID_PRODUCER_EPOCH",
            INVALID_TXN_STATE => "INVALID_TXN_STATE",
            TRANSACTIONAL_ID_AUTHORIZATION_FAILED => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
            UNKNOWN_PRODUCER_ID => "UNKNOWN_PRODUCER_ID",
            UNSUPPORTED_COMPRESSION_TYPE => "UNSUPPORTED_COMPRESSION_TYPE",
            INVALID_RECORD => "INVALID_RECORD",
            _ => "(other)",
        }
    }
}

// ---------------------------------------------------------------------
// The idempotent-producer rules (pure).
// ---------------------------------------------------------------------

/// `ProducerStateEntry.NUM_BATCHES_TO_RETAIN`.
pub const BATCHES_TO_RETAIN: usize = 5;

/// What Kafka keeps of an appended batch (`BatchMetadata`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// One producer's state on one partition (`ProducerStateEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first; at most [`BATCHES_TO_RETAIN`].
    pub batches: VecDeque<BatchMeta>,
}

impl ProducerEntry {
    /// The last appended sequence (-1, Kafka's NO_SEQUENCE, if none).
    pub fn last_seq(&self) -> i32 {
        self.batches.back().map_or(-1, |b| b.last_seq)
    }
}

/// The producer fields of an incoming record batch's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// `DefaultRecordBatch.lastSequence`: first + count - 1, wrapping.
    pub fn last_seq(&self) -> i32 {
        increment_sequence(self.first_seq, (self.record_count - 1).max(0))
    }
}

/// `DefaultRecordBatch.incrementSequence`: past `i32::MAX` comes 0.
pub fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

/// `ProducerAppendInfo.inSequence`.
pub fn in_sequence(last_seq: i32, next_seq: i32) -> bool {
    i64::from(next_seq) == i64::from(last_seq) + 1 || (next_seq == 0 && last_seq == i32::MAX)
}

/// What the broker does with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it at the log end (and update the producer's entry).
    Append,
    /// Already in the log: append nothing, answer NONE with the original
    /// batch's base offset.
    Duplicate { base_offset: i64 },
    /// Refuse it with this error code; nothing is appended.
    Reject(i16),
}

/// Kafka's checks of one batch against its producer's entry on the
/// partition (`None`: no state, never seen or expired). `legacy`: the
/// rules before 2.5 (KIP-360).
pub fn check(entry: Option<&ProducerEntry>, batch: &BatchHeader, legacy: bool) -> Verdict {
    if batch.producer_id < 0 {
        // `RecordBatch.hasProducerId` is false: not idempotent, no checks.
        return Verdict::Append;
    }
    let Some(entry) = entry else {
        if legacy && batch.first_seq != 0 {
            return Verdict::Reject(code::UNKNOWN_PRODUCER_ID);
        }
        return Verdict::Append;
    };
    // UnifiedLog.analyzeAndValidateProducerState: findDuplicateBatch first
    // (same epoch, exactly the same sequence range).
    if batch.epoch == entry.epoch {
        let last_seq = batch.last_seq();
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == batch.first_seq && b.last_seq == last_seq)
        {
            return Verdict::Duplicate {
                base_offset: b.first_offset,
            };
        }
    }
    // ProducerAppendInfo.checkProducerEpoch, then checkSequence.
    if batch.epoch < entry.epoch {
        return Verdict::Reject(code::INVALID_PRODUCER_EPOCH);
    }
    if batch.epoch > entry.epoch {
        return if batch.first_seq == 0 {
            Verdict::Append
        } else {
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER)
        };
    }
    if entry.batches.is_empty() || in_sequence(entry.last_seq(), batch.first_seq) {
        Verdict::Append
    } else {
        Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER)
    }
}

/// The entry after appending `batch` at `first_offset`
/// (`ProducerStateEntry.addBatch`): a new epoch starts afresh; only the
/// last [`BATCHES_TO_RETAIN`] batches are kept.
pub fn after_append(
    entry: Option<ProducerEntry>,
    batch: &BatchHeader,
    first_offset: i64,
) -> ProducerEntry {
    let mut entry = entry.unwrap_or(ProducerEntry {
        epoch: batch.epoch,
        batches: VecDeque::new(),
    });
    if entry.epoch != batch.epoch {
        entry.epoch = batch.epoch;
        entry.batches.clear();
    }
    if entry.batches.len() == BATCHES_TO_RETAIN {
        entry.batches.pop_front();
    }
    entry.batches.push_back(BatchMeta {
        first_seq: batch.first_seq,
        last_seq: batch.last_seq(),
        first_offset,
        last_offset: first_offset + i64::from(batch.record_count.max(1)) - 1,
    });
    entry
}

/// Every producer's entry on one partition.
#[derive(Debug, Clone, Default)]
pub struct ProducerStates {
    pub entries: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    /// Judge `batch` for a log whose end offset is `log_end`; on
    /// [`Verdict::Append`] the producer's entry records it at `log_end`.
    pub fn apply(&mut self, batch: &BatchHeader, log_end: i64, legacy: bool) -> Verdict {
        let verdict = check(self.entries.get(&batch.producer_id), batch, legacy);
        if verdict == Verdict::Append && batch.producer_id >= 0 {
            let old = self.entries.remove(&batch.producer_id);
            self.entries
                .insert(batch.producer_id, after_append(old, batch, log_end));
        }
        verdict
    }

    pub fn entry(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.entries.get(&producer_id)
    }
}

// ---------------------------------------------------------------------
// The broker.
// ---------------------------------------------------------------------

/// A record in a partition's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub producer_id: i64,
    pub epoch: i16,
    /// -1 for a record without producer id.
    pub sequence: i32,
}

/// What the brokers did, counted.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Produce requests handled (any outcome).
    pub produce_requests: u64,
    pub appended_batches: u64,
    pub appended_records: u64,
    /// Batches answered as duplicates (not appended).
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unknown_producer: u64,
    pub invalid_epoch: u64,
    pub invalid_record: u64,
    pub not_leader: u64,
    pub unknown_topic: u64,
    pub init_producer_id_calls: u64,
    /// Producer ids handed out, in order.
    pub producer_ids: Vec<i64>,
    pub metadata_requests: u64,
    /// Connections accepted (including those refused while down).
    pub connections: u64,
    /// Connections closed by `cut_after_append`.
    pub cuts: u64,
}

struct Partition {
    /// The broker that leads it (kept while offline, for the replica list).
    leader: i32,
    offline: bool,
    leader_epoch: i32,
    log: Vec<Stored>,
    producers: ProducerStates,
}

struct State {
    brokers: usize,
    topics: BTreeMap<String, Vec<Partition>>,
    cluster_id: String,
    auto_create: Option<i32>,
    legacy: bool,
    init_disabled: bool,
    next_producer_id: i64,
    throttle_ms: i32,
    refuse: Option<Vec<u8>>,
    cuts_left: u32,
    answer_delay: Duration,
    /// Produce requests wait, unprocessed, while set (a stalled broker).
    hold_produce: bool,
    /// Held requests are dropped unprocessed and their connections closed.
    discard_held: bool,
    held: u64,
    down: bool,
    counters: Counters,
    answers: Vec<(String, i32, i16)>,
    live: HashMap<u64, TcpStream>,
    next_connection: u64,
}

impl State {
    fn new_topic(&mut self, name: &str, partitions: i32) {
        let brokers = self.brokers.max(1);
        let parts = (0..partitions.max(0) as usize)
            .map(|i| Partition {
                leader: (i % brokers) as i32,
                offline: false,
                leader_epoch: 0,
                log: Vec::new(),
                producers: ProducerStates::default(),
            })
            .collect();
        self.topics.insert(name.to_string(), parts);
    }

    fn partition_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Partition> {
        let i = usize::try_from(partition).ok()?;
        self.topics.get_mut(topic)?.get_mut(i)
    }

    fn cut_live(&mut self) {
        for (_, s) in self.live.drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    ports: Vec<u16>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A cluster of `n` model brokers on loopback; see the module doc.
/// Dropping it stops the listeners and closes every connection.
pub struct KafkaModel {
    shared: Arc<Shared>,
}

impl KafkaModel {
    /// `brokers` brokers (node ids 0..brokers), each on its own port.
    pub fn start(brokers: usize) -> Self {
        let brokers = brokers.max(1);
        let listeners: Vec<TcpListener> = (0..brokers)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a model broker"))
            .collect();
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().expect("listener address").port())
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                brokers,
                topics: BTreeMap::new(),
                cluster_id: "model-cluster".to_string(),
                auto_create: None,
                legacy: false,
                init_disabled: false,
                next_producer_id: 1000,
                throttle_ms: 0,
                refuse: None,
                cuts_left: 0,
                answer_delay: Duration::ZERO,
                hold_produce: false,
                discard_held: false,
                held: 0,
                down: false,
                counters: Counters::default(),
                answers: Vec::new(),
                live: HashMap::new(),
                next_connection: 0,
            }),
            stop: AtomicBool::new(false),
            ports,
        });
        for (id, listener) in listeners.into_iter().enumerate() {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("model-broker-{id}"))
                .spawn(move || accept_loop(shared, id as i32, listener))
                .expect("spawn a model broker");
        }
        Self { shared }
    }

    /// `127.0.0.1:p0,127.0.0.1:p1,...` for ferry's `brokers`.
    pub fn bootstrap(&self) -> String {
        self.shared
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port of broker `broker`.
    pub fn port(&self, broker: usize) -> u16 {
        self.shared.ports[broker]
    }

    /// Create (or re-create, empty) `name`; partition i is led by broker
    /// i % brokers.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.shared.lock().new_topic(name, partitions);
    }

    /// Let Metadata requests that allow it create unknown topics with this
    /// many partitions (`None`, the default: UNKNOWN_TOPIC_OR_PARTITION).
    pub fn set_auto_create(&self, partitions: Option<i32>) {
        self.shared.lock().auto_create = partitions;
    }

    /// The cluster id Metadata names (default "model-cluster").
    pub fn set_cluster_id(&self, id: &str) {
        self.shared.lock().cluster_id = id.to_string();
    }

    /// Pre-2.5 rules: a producer with no state and a first sequence other
    /// than 0 gets UNKNOWN_PRODUCER_ID (2.5+: accepted).
    pub fn set_legacy(&self, legacy: bool) {
        self.shared.lock().legacy = legacy;
    }

    /// Answer InitProducerId with CLUSTER_AUTHORIZATION_FAILED (no
    /// IdempotentWrite permission: the producer goes at-least-once).
    pub fn set_init_producer_id_disabled(&self, disabled: bool) {
        self.shared.lock().init_disabled = disabled;
    }

    /// Forget every producer's state on every partition (as
    /// `producer.id.expiration.ms` does to idle producers).
    pub fn expire_producers(&self) {
        for parts in self.shared.lock().topics.values_mut() {
            for p in parts {
                p.producers.entries.clear();
            }
        }
    }

    /// Forget `producer_id`'s state on every partition.
    pub fn expire_producer(&self, producer_id: i64) {
        for parts in self.shared.lock().topics.values_mut() {
            for p in parts {
                p.producers.entries.remove(&producer_id);
            }
        }
    }

    /// Make `broker` the leader of `topic`/`partition` (its log and producer
    /// state go with it: a clean, fully replicated election).
    pub fn move_leader(&self, topic: &str, partition: i32, broker: i32) {
        let mut st = self.shared.lock();
        let p = st
            .partition_mut(topic, partition)
            .unwrap_or_else(|| panic!("no partition {topic}/{partition}"));
        p.leader = broker;
        p.leader_epoch += 1;
    }

    /// Take `topic`/`partition` offline (no leader: Metadata says
    /// LEADER_NOT_AVAILABLE, Produce NOT_LEADER_OR_FOLLOWER) or back.
    pub fn set_offline(&self, topic: &str, partition: i32, offline: bool) {
        let mut st = self.shared.lock();
        let p = st
            .partition_mut(topic, partition)
            .unwrap_or_else(|| panic!("no partition {topic}/{partition}"));
        if p.offline != offline {
            p.offline = offline;
            p.leader_epoch += 1;
        }
    }

    /// Stamp `throttle_time_ms` on Produce answers (records are appended).
    pub fn set_throttle_ms(&self, ms: i32) {
        self.shared.lock().throttle_ms = ms;
    }

    /// Refuse (INVALID_RECORD, naming the record in `record_errors`, nothing
    /// of the batch appended) every batch holding a record with this value.
    pub fn refuse_value(&self, value: Option<Vec<u8>>) {
        self.shared.lock().refuse = value;
    }

    /// The next `n` Produce requests are handled (appended by the rules),
    /// then their connection is closed before the answer is written.
    pub fn cut_after_append(&self, n: u32) {
        self.shared.lock().cuts_left = n;
    }

    /// Hold Produce requests as they arrive, neither appended nor answered
    /// (a stalled broker), until `hold_produce(false)` processes them or
    /// [`KafkaModel::discard_held`] drops them.
    pub fn hold_produce(&self, hold: bool) {
        self.shared.lock().hold_produce = hold;
    }

    /// Produce requests held right now.
    pub fn held(&self) -> u64 {
        self.shared.lock().held
    }

    /// Drop the held Produce requests unprocessed (nothing appended) and
    /// close their connections, as a broker that never got to them before
    /// the client went away; then stop holding.
    pub fn discard_held(&self) {
        self.shared.lock().discard_held = true;
        while self.held() > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut s = self.shared.lock();
        s.discard_held = false;
        s.hold_produce = false;
    }

    /// Write each answer this long after handling its request.
    pub fn set_answer_delay(&self, delay: Duration) {
        self.shared.lock().answer_delay = delay;
    }

    /// Close every live connection.
    pub fn drop_connections(&self) {
        self.shared.lock().cut_live();
    }

    /// Down: accept and close at once every new connection, and cut the
    /// live ones. Up again with `false`.
    pub fn set_down(&self, down: bool) {
        let mut st = self.shared.lock();
        st.down = down;
        if down {
            st.cut_live();
        }
    }

    /// Every record of `topic`, by partition then offset, as the harness's
    /// [`super::Got`] (a null value reads as empty).
    pub fn records(&self, topic: &str) -> Vec<super::Got> {
        let st = self.shared.lock();
        let Some(parts) = st.topics.get(topic) else {
            return Vec::new();
        };
        parts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                p.log.iter().map(move |r| super::Got {
                    topic: topic.to_string(),
                    partition: i as i32,
                    offset: r.offset,
                    key: r.key.clone(),
                    value: r.value.clone().unwrap_or_default(),
                    headers: r.headers.clone(),
                })
            })
            .collect()
    }

    /// The log of `topic`/`partition` with the producer fields.
    pub fn log(&self, topic: &str, partition: i32) -> Vec<Stored> {
        self.shared
            .lock()
            .partition_mut(topic, partition)
            .map(|p| p.log.clone())
            .unwrap_or_default()
    }

    /// `producer_id`'s state on `topic`/`partition`, if the broker has any.
    pub fn producer_entry(
        &self,
        topic: &str,
        partition: i32,
        producer_id: i64,
    ) -> Option<ProducerEntry> {
        self.shared
            .lock()
            .partition_mut(topic, partition)
            .and_then(|p| p.producers.entry(producer_id).cloned())
    }

    /// Every partition answer to Produce so far, in order: (topic,
    /// partition, error code). Duplicates are answered NONE (see
    /// [`Counters::duplicates`]).
    pub fn produce_answers(&self) -> Vec<(String, i32, i16)> {
        self.shared.lock().answers.clone()
    }

    pub fn counters(&self) -> Counters {
        self.shared.lock().counters.clone()
    }
}

impl Drop for KafkaModel {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.lock().cut_live();
        // Wake each accept loop so it sees `stop`.
        for p in &self.shared.ports {
            let _ = TcpStream::connect(("127.0.0.1", *p));
        }
    }
}

fn accept_loop(shared: Arc<Shared>, broker: i32, listener: TcpListener) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else { continue };
        let id = {
            let mut st = shared.lock();
            st.counters.connections += 1;
            if st.down {
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
            let Ok(handle) = stream.try_clone() else {
                continue;
            };
            st.next_connection += 1;
            let id = st.next_connection;
            st.live.insert(id, handle);
            id
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("model-broker-{broker}-conn-{id}"))
            .spawn(move || serve(shared, broker, stream, id));
        if let Err(e) = spawned {
            eprintln!("kafka model broker {broker}: cannot spawn a connection thread: {e}");
        }
    }
}

/// What to do after a request.
enum Outcome {
    Answer(Vec<u8>),
    /// acks = 0: nothing to write.
    Silent,
    /// Close the connection without answering.
    Close,
}

/// Kafka's `socket.request.max.bytes` default.
const MAX_REQUEST_BYTES: usize = 100 * 1024 * 1024;

fn read_frame(s: &mut TcpStream) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).is_err() {
        return Ok(None); // closed
    }
    let n = i32::from_be_bytes(len);
    if n < 8 || n as usize > MAX_REQUEST_BYTES {
        return Err(format!("a request frame of {n} bytes"));
    }
    let mut body = vec![0u8; n as usize];
    s.read_exact(&mut body)
        .map_err(|e| format!("a truncated request frame: {e}"))?;
    Ok(Some(body))
}

/// One connection: requests are read, handled and answered in order.
fn serve(shared: Arc<Shared>, broker: i32, mut stream: TcpStream, id: u64) {
    loop {
        let frame = match read_frame(&mut stream) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(why) => {
                eprintln!("kafka model broker {broker}: {why}; closing the connection");
                break;
            }
        };
        // A Produce request (api key 0) waits while produce is held.
        if frame.len() >= 2 && frame[..2] == [0, 0] && shared.lock().hold_produce {
            shared.lock().held += 1;
            let discarded = loop {
                std::thread::sleep(Duration::from_millis(5));
                let s = shared.lock();
                if s.discard_held {
                    break true;
                }
                if !s.hold_produce {
                    break false;
                }
            };
            shared.lock().held -= 1;
            if discarded {
                break;
            }
        }
        match handle(&shared, broker, frame) {
            Ok(Outcome::Answer(bytes)) => {
                let delay = shared.lock().answer_delay;
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                if stream.write_all(&bytes).is_err() {
                    break;
                }
            }
            Ok(Outcome::Silent) => {}
            Ok(Outcome::Close) => break,
            Err(why) => {
                eprintln!("kafka model broker {broker}: {why}; closing the connection");
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    shared.lock().live.remove(&id);
}

/// (api key, min version, max version): Kafka 3.9's ranges for the APIs
/// modelled, from v3 for Produce (record batches).
const APIS: [(i16, i16, i16); 4] = [(0, 3, 11), (3, 0, 12), (18, 0, 4), (22, 0, 5)];

fn supported(key: i16, version: i16) -> bool {
    APIS.iter()
        .any(|&(k, min, max)| k == key && (min..=max).contains(&version))
}

fn decode_request<R: Decodable + HeaderVersion>(
    buf: &mut Bytes,
    version: i16,
) -> Result<(RequestHeader, R), String> {
    let header = RequestHeader::decode(buf, R::header_version(version))
        .map_err(|e| format!("bad request header: {e}"))?;
    let body = R::decode(buf, version).map_err(|e| {
        format!(
            "bad request (api {} v{version}): {e}",
            header.request_api_key
        )
    })?;
    Ok((header, body))
}

/// A response frame: size, header (correlation id), body.
fn encode_response<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    response: &R,
    version: i16,
) -> Result<Vec<u8>, String> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[0; 4]);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, R::header_version(version))
        .and_then(|()| response.encode(&mut out, version))
        .map_err(|e| format!("cannot encode a response (v{version}): {e}"))?;
    let size = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Ok(out.to_vec())
}

fn handle(shared: &Shared, broker: i32, frame: Vec<u8>) -> Result<Outcome, String> {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let mut buf = Bytes::from(frame);
    if key == 18 && !supported(key, version) {
        // An ApiVersions request newer than the broker: the answer is v0
        // with UNSUPPORTED_VERSION and the versions it does speak.
        let header = RequestHeader::decode(&mut buf, ApiVersionsRequest::header_version(version))
            .map_err(|e| format!("bad ApiVersions header: {e}"))?;
        let answer = api_versions_answer().with_error_code(code::UNSUPPORTED_VERSION);
        return encode_response(header.correlation_id, &answer, 0).map(Outcome::Answer);
    }
    if !supported(key, version) {
        return Err(format!("api {key} v{version} is not modelled"));
    }
    match key {
        0 => {
            let (h, req) = decode_request::<ProduceRequest>(&mut buf, version)?;
            produce(shared, broker, h.correlation_id, &req, version)
        }
        3 => {
            let (h, req) = decode_request::<MetadataRequest>(&mut buf, version)?;
            let answer = metadata(shared, &req, version);
            encode_response(h.correlation_id, &answer, version).map(Outcome::Answer)
        }
        18 => {
            let (h, _req) = decode_request::<ApiVersionsRequest>(&mut buf, version)?;
            encode_response(h.correlation_id, &api_versions_answer(), version).map(Outcome::Answer)
        }
        22 => {
            let (h, req) = decode_request::<InitProducerIdRequest>(&mut buf, version)?;
            let answer = init_producer_id(shared, &req);
            encode_response(h.correlation_id, &answer, version).map(Outcome::Answer)
        }
        _ => Err(format!("api {key} is not modelled")),
    }
}

fn api_versions_answer() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(
        APIS.iter()
            .map(|&(k, min, max)| {
                ApiVersion::default()
                    .with_api_key(k)
                    .with_min_version(min)
                    .with_max_version(max)
            })
            .collect(),
    )
}

/// Kafka's legal topic names (`Topic.validate`).
fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn metadata(shared: &Shared, req: &MetadataRequest, version: i16) -> MetadataResponse {
    let mut st = shared.lock();
    st.counters.metadata_requests += 1;
    // v0: an empty list means all topics; v1+: null means all.
    let wanted: Option<Vec<Option<String>>> = match &req.topics {
        None => None,
        Some(list) if list.is_empty() && version == 0 => None,
        Some(list) => Some(
            list.iter()
                .map(|t| t.name.as_ref().map(|n| n.0.as_str().to_string()))
                .collect(),
        ),
    };
    let names: Vec<Option<String>> =
        wanted.unwrap_or_else(|| st.topics.keys().cloned().map(Some).collect());
    let mut topics = Vec::new();
    for name in names {
        let Some(name) = name else {
            // By topic id (v10+): the model has no topic ids.
            topics.push(
                MetadataResponseTopic::default()
                    .with_error_code(100) // UNKNOWN_TOPIC_ID
                    .with_name(None),
            );
            continue;
        };
        let topic = MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(name.clone()))));
        if !st.topics.contains_key(&name) {
            let error = match st.auto_create {
                Some(_) if req.allow_auto_topic_creation && !valid_topic_name(&name) => {
                    code::INVALID_TOPIC_EXCEPTION
                }
                Some(n) if req.allow_auto_topic_creation => {
                    st.new_topic(&name, n);
                    code::LEADER_NOT_AVAILABLE
                }
                _ => code::UNKNOWN_TOPIC_OR_PARTITION,
            };
            topics.push(topic.with_error_code(error));
            continue;
        }
        let partitions = st.topics[&name]
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let replica = vec![BrokerId(p.leader)];
                let part = MetadataResponsePartition::default()
                    .with_partition_index(i as i32)
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(replica.clone());
                if p.offline {
                    part.with_error_code(code::LEADER_NOT_AVAILABLE)
                        .with_leader_id(BrokerId(-1))
                        .with_offline_replicas(replica)
                } else {
                    part.with_leader_id(BrokerId(p.leader))
                        .with_isr_nodes(replica)
                }
            })
            .collect();
        topics.push(topic.with_partitions(partitions));
    }
    let brokers = shared
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(i as i32))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(i32::from(*port))
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(st.cluster_id.clone())))
        .with_controller_id(BrokerId(0))
        .with_topics(topics)
}

fn init_producer_id(shared: &Shared, req: &InitProducerIdRequest) -> InitProducerIdResponse {
    let mut st = shared.lock();
    st.counters.init_producer_id_calls += 1;
    let refused = |code| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if st.init_disabled {
        return refused(code::CLUSTER_AUTHORIZATION_FAILED);
    }
    if req
        .transactional_id
        .as_ref()
        .is_some_and(|t| !t.0.is_empty())
    {
        return refused(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }
    let id = st.next_producer_id;
    st.next_producer_id += 1;
    st.counters.producer_ids.push(id);
    InitProducerIdResponse::default()
        .with_producer_id(ProducerId(id))
        .with_producer_epoch(0)
}

/// One partition's answer.
struct PartAnswer {
    error: i16,
    base_offset: i64,
    message: Option<String>,
    /// (index in the batch, message)
    record_errors: Vec<(i32, String)>,
}

impl PartAnswer {
    fn error(error: i16, message: Option<String>) -> Self {
        Self {
            error,
            base_offset: -1,
            message,
            record_errors: Vec::new(),
        }
    }
}

fn produce(
    shared: &Shared,
    broker: i32,
    correlation_id: i32,
    req: &ProduceRequest,
    version: i16,
) -> Result<Outcome, String> {
    let mut st = shared.lock();
    st.counters.produce_requests += 1;
    let acks_valid = matches!(req.acks, -1..=1);
    let mut any_error = false;
    let mut topics = Vec::new();
    for t in &req.topic_data {
        let topic = t.name.0.as_str();
        let mut parts = Vec::new();
        for p in &t.partition_data {
            let a = if acks_valid {
                append(&mut st, broker, topic, p.index, p.records.as_ref())
            } else {
                PartAnswer::error(code::INVALID_REQUIRED_ACKS, None)
            };
            any_error |= a.error != code::NONE;
            st.answers.push((topic.to_string(), p.index, a.error));
            let mut r = PartitionProduceResponse::default()
                .with_index(p.index)
                .with_error_code(a.error)
                .with_base_offset(a.base_offset)
                .with_log_start_offset(if a.error == code::NONE { 0 } else { -1 });
            if version >= 8 {
                r = r
                    .with_error_message(a.message.map(StrBytes::from_string))
                    .with_record_errors(
                        a.record_errors
                            .into_iter()
                            .map(|(i, m)| {
                                BatchIndexAndErrorMessage::default()
                                    .with_batch_index(i)
                                    .with_batch_index_error_message(Some(StrBytes::from_string(m)))
                            })
                            .collect(),
                    );
            }
            parts.push(r);
        }
        topics.push(
            TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_partition_responses(parts),
        );
    }
    if st.cuts_left > 0 {
        st.cuts_left -= 1;
        st.counters.cuts += 1;
        return Ok(Outcome::Close);
    }
    if req.acks == 0 {
        // KafkaApis: no answer at all; an error closes the connection.
        return Ok(if any_error {
            Outcome::Close
        } else {
            Outcome::Silent
        });
    }
    let answer = ProduceResponse::default()
        .with_responses(topics)
        .with_throttle_time_ms(st.throttle_ms);
    drop(st);
    encode_response(correlation_id, &answer, version).map(Outcome::Answer)
}

/// Validate and append one partition's batch; counts what happened.
fn append(
    st: &mut State,
    broker: i32,
    topic: &str,
    partition: i32,
    records: Option<&Bytes>,
) -> PartAnswer {
    let legacy = st.legacy;
    let refuse = st.refuse.clone();
    let (answer, duplicate, appended) = match st.partition_mut(topic, partition) {
        None => (
            PartAnswer::error(code::UNKNOWN_TOPIC_OR_PARTITION, None),
            false,
            0,
        ),
        Some(p) if p.offline || p.leader != broker => (
            PartAnswer::error(code::NOT_LEADER_OR_FOLLOWER, None),
            false,
            0,
        ),
        Some(p) => append_to(p, records, refuse.as_deref(), legacy),
    };
    let c = &mut st.counters;
    if duplicate {
        c.duplicates += 1;
    }
    if appended > 0 {
        c.appended_batches += 1;
        c.appended_records += appended;
    }
    match answer.error {
        code::OUT_OF_ORDER_SEQUENCE_NUMBER => c.out_of_order += 1,
        code::UNKNOWN_PRODUCER_ID => c.unknown_producer += 1,
        code::INVALID_PRODUCER_EPOCH => c.invalid_epoch += 1,
        code::INVALID_RECORD => c.invalid_record += 1,
        code::NOT_LEADER_OR_FOLLOWER => c.not_leader += 1,
        code::UNKNOWN_TOPIC_OR_PARTITION => c.unknown_topic += 1,
        _ => {}
    }
    answer
}

/// (answer, was a duplicate, records appended)
fn append_to(
    p: &mut Partition,
    records: Option<&Bytes>,
    refuse: Option<&[u8]>,
    legacy: bool,
) -> (PartAnswer, bool, u64) {
    let (info, records) = match decode_batch(records) {
        Ok(b) => b,
        Err((error, why)) => return (PartAnswer::error(error, Some(why)), false, 0),
    };
    if info.transactional || info.control {
        let why = "transactions are not modelled".to_string();
        return (
            PartAnswer::error(code::INVALID_TXN_STATE, Some(why)),
            false,
            0,
        );
    }
    // LogValidator: contiguous inner offsets, then the refused value.
    for (i, r) in records.iter().enumerate() {
        let why = if r.offset - info.min_offset != i as i64 {
            Some(format!(
                "inner record {i} has offset delta {}",
                r.offset - info.min_offset
            ))
        } else if refuse.is_some() && r.value.as_deref() == refuse {
            Some("refused by the Kafka model".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            let mut a = PartAnswer::error(
                code::INVALID_RECORD,
                Some("One or more records have been rejected".to_string()),
            );
            a.record_errors.push((i as i32, why));
            return (a, false, 0);
        }
    }
    let header = BatchHeader {
        producer_id: info.producer_id,
        epoch: info.producer_epoch,
        first_seq: info.base_sequence,
        record_count: info.record_count,
    };
    let base = p.log.len() as i64;
    match p.producers.apply(&header, base, legacy) {
        Verdict::Append => {
            for (i, r) in records.into_iter().enumerate() {
                p.log.push(Stored {
                    offset: base + i as i64,
                    key: r.key.map(|k| k.to_vec()),
                    value: r.value.map(|v| v.to_vec()),
                    headers: r
                        .headers
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.map(|v| v.to_vec()).unwrap_or_default()))
                        .collect(),
                    producer_id: info.producer_id,
                    epoch: info.producer_epoch,
                    sequence: if info.producer_id >= 0 {
                        increment_sequence(info.base_sequence, i as i32)
                    } else {
                        -1
                    },
                });
            }
            let n = p.log.len() as u64 - base as u64;
            let mut a = PartAnswer::error(code::NONE, None);
            a.base_offset = base;
            (a, false, n)
        }
        Verdict::Duplicate { base_offset } => {
            let mut a = PartAnswer::error(code::NONE, None);
            a.base_offset = base_offset;
            (a, true, 0)
        }
        Verdict::Reject(error) => (PartAnswer::error(error, None), false, 0),
    }
}

/// Kafka's LZ4 codec is the LZ4 frame format.
fn decompress(buf: &Bytes, compression: Compression) -> std::io::Result<Bytes> {
    match compression {
        Compression::None => Ok(buf.clone()),
        Compression::Lz4 => {
            let mut out = Vec::new();
            lz4_flex::frame::FrameDecoder::new(&buf[..]).read_to_end(&mut out)?;
            Ok(Bytes::from(out))
        }
        Compression::Zstd => zstd::stream::decode_all(&buf[..]).map(Bytes::from),
        other => Err(std::io::Error::other(format!("{other:?} is not modelled"))),
    }
}

/// The one v2 batch of a partition's records: its header and records.
fn decode_batch(records: Option<&Bytes>) -> Result<(BatchDecodeInfo, Vec<Record>), (i16, String)> {
    let one_batch = || {
        (
            code::INVALID_RECORD,
            "Produce requests with version 3 or later must contain exactly one record batch per partition"
                .to_string(),
        )
    };
    let Some(bytes) = records.filter(|b| !b.is_empty()) else {
        return Err(one_batch());
    };
    if bytes.len() > 16 && bytes[16] != 2 {
        return Err((
            code::INVALID_RECORD,
            format!("record batch magic {} (only v2 is modelled)", bytes[16]),
        ));
    }
    let infos = RecordBatchDecoder::decode_batch_info(&mut bytes.clone())
        .map_err(|e| (code::CORRUPT_MESSAGE, e.to_string()))?;
    let [info] = <[BatchDecodeInfo; 1]>::try_from(infos).map_err(|_| one_batch())?;
    if matches!(info.compression, Compression::Gzip | Compression::Snappy) {
        return Err((
            code::UNSUPPORTED_COMPRESSION_TYPE,
            format!("{:?} batches are not modelled", info.compression),
        ));
    }
    let set = RecordBatchDecoder::decode_with_custom_compression(
        &mut bytes.clone(),
        Some(|buf: &mut Bytes, c: Compression| Ok(decompress(buf, c)?)),
    )
    .map_err(|e| (code::CORRUPT_MESSAGE, e.to_string()))?;
    Ok((info, set.records))
}
