//! Forwarding to Kafka: reads the outbox in sequence order a window of
//! blocks at a time, routes and partitions each event, produces one LZ4
//! record batch stream per partition (one request in flight per partition,
//! which keeps per-key order), and deletes the blocks only after Kafka has
//! acknowledged every event in them. A failure is retried after a jittered,
//! growing delay, resuming each partition where it stopped.

pub mod partitioner;
pub mod route;

use crate::backoff::{Backoff, seed_from_environment};
use crate::config::{Compression, Config, KafkaConfig};
use crate::log_limit::LogLimiter;
use crate::outbox::{Block, Outbox};
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use log::{debug, info};
use partitioner::{Sticky, partition_for_key};
use route::Router;
use rskafka::BackoffConfig;
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::task::JoinSet;

/// How much of the outbox one delivery round takes on.
const WINDOW_EVENTS: usize = 50_000;
const WINDOW_RAW_BYTES: usize = 4 * 1024 * 1024;
/// Per-record overhead counted against `max_batch_bytes`.
const RECORD_OVERHEAD: usize = 64;
/// rskafka retries internally; bound it so ferry's own backoff decides.
const CLIENT_RETRY_DEADLINE: Duration = Duration::from_secs(5);
/// A produce request that has not completed by then is treated as failed.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests may finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// After this many failed rounds in a row, reconnect from the bootstrap list.
const RECONNECT_AFTER_FAILURES: u32 = 3;

/// One event's place in the window.
#[derive(Debug, Clone, Copy)]
struct Item {
    block: u32,
    offset: u32,
    seq: i64,
}

/// Events of one window bound for one partition, in order.
#[derive(Debug)]
struct Lane {
    topic: String,
    partition: i32,
    items: Vec<Item>,
    /// How many of `items` Kafka has acknowledged.
    done: usize,
}

pub struct Forwarder {
    config: KafkaConfig,
    compression: rskafka::client::partition::Compression,
    node_id: Arc<str>,
    outbox: Outbox,
    stats: Arc<Stats>,
    router: Router,
    backoff: Backoff,
    client: Option<Arc<Client>>,
    partitions: HashMap<String, i32>,
    partition_clients: HashMap<(String, i32), Arc<PartitionClient>>,
    sticky: Sticky,
    failures: u32,
    log: LogLimiter,
}

impl Forwarder {
    pub fn new(config: &Config, outbox: Outbox, stats: Arc<Stats>) -> Self {
        let seed = seed_from_environment(&config.node_id);
        Self {
            config: config.kafka.clone(),
            compression: match config.kafka.compression {
                Compression::Lz4 => rskafka::client::partition::Compression::Lz4,
                Compression::None => rskafka::client::partition::Compression::NoCompression,
            },
            node_id: Arc::from(config.node_id.as_str()),
            outbox,
            stats,
            router: Router::new(&config.routes),
            backoff: Backoff::new(&config.retry, seed),
            client: None,
            partitions: HashMap::new(),
            partition_clients: HashMap::new(),
            sticky: Sticky::seeded(seed as u32),
            failures: 0,
            log: LogLimiter::new(Duration::from_secs(10)),
        }
    }

    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut cursor = 0i64;
        loop {
            let blocks = tokio::select! {
                r = self.outbox.read(cursor, WINDOW_EVENTS, WINDOW_RAW_BYTES) => r,
                _ = shutdown.recv() => break,
            };
            let blocks = match blocks {
                Ok(b) => b,
                Err(e) => {
                    self.log
                        .error(&format!("cannot read the outbox: {e}; retrying"));
                    if !self.pause(&mut shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            let Some(last) = blocks.last().map(|b| b.seq_first) else {
                tokio::select! {
                    _ = self.outbox.committed.notified() => {}
                    _ = shutdown.recv() => break,
                }
                // Let a burst gather into fuller batches.
                if self.config.linger_ms > 0 {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(self.config.linger_ms)) => {}
                        _ = shutdown.recv() => break,
                    }
                }
                continue;
            };
            let ids: Vec<i64> = blocks.iter().map(|b| b.seq_first).collect();
            match self.deliver(Arc::new(blocks), &mut shutdown).await {
                Delivery::Done => {}
                Delivery::Reread => continue,
                Delivery::Shutdown => break,
            }
            if let Err(e) = self.outbox.delete(ids).await {
                // Delivered but still stored: they will be sent again after a
                // restart, which `ferry-id` lets consumers drop.
                self.log.error(&format!(
                    "cannot delete delivered events from the outbox: {e}"
                ));
            }
            cursor = last;
        }
        info!("forwarder stopped");
    }

    /// Sleep the next backoff delay; false if shutdown came first.
    async fn pause(&mut self, shutdown: &mut Shutdown) -> bool {
        let delay = self.backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.recv() => false,
        }
    }

    /// Deliver every event of `blocks`.
    async fn deliver(&mut self, blocks: Arc<Vec<Block>>, shutdown: &mut Shutdown) -> Delivery {
        let mut lanes: Option<Vec<Lane>> = None;
        loop {
            if shutdown.is_shutdown() {
                return Delivery::Shutdown;
            }
            let result = {
                let attempt = self.attempt(&blocks, &mut lanes);
                tokio::pin!(attempt);
                tokio::select! {
                    r = &mut attempt => r,
                    _ = shutdown.recv() => {
                        // Let requests already on the wire finish briefly; what
                        // does not is sent again after restart (duplicates, not loss).
                        let _ = tokio::time::timeout(SHUTDOWN_GRACE, attempt).await;
                        return Delivery::Shutdown;
                    }
                }
            };
            match result {
                Ok(()) => {
                    if self.failures > 0 {
                        info!("uplink to Kafka is working again");
                    }
                    self.failures = 0;
                    self.backoff.reset();
                    self.stats.uplink_up.store(true, Relaxed);
                    return Delivery::Done;
                }
                Err(Failure::Error(e)) => {
                    self.failures += 1;
                    self.stats.produce_errors.fetch_add(1, Relaxed);
                    self.stats.uplink_up.store(false, Relaxed);
                    self.stats.set_last_error(Some(e.clone()));
                    self.log.warn(&format!(
                        "{e} (attempt {}; events stay in the outbox and are retried)",
                        self.failures
                    ));
                    if self.failures >= RECONNECT_AFTER_FAILURES {
                        self.client = None;
                        self.partition_clients.clear();
                        self.partitions.clear();
                    }
                    if !self.pause(shutdown).await {
                        return Delivery::Shutdown;
                    }
                    match lanes.as_mut() {
                        Some(lanes) => self.forget_dropped(&blocks, lanes).await,
                        // Nothing sent yet: read the window afresh, which
                        // also leaves out what was dropped meanwhile.
                        None => return Delivery::Reread,
                    }
                }
            }
        }
    }

    /// While we waited, the outbox may have dropped some of this window's
    /// blocks by policy (size or age cap). Those drops are counted and
    /// announced; do not send them anyway.
    async fn forget_dropped(&mut self, blocks: &[Block], lanes: &mut [Lane]) {
        let ids: Vec<i64> = blocks.iter().map(|b| b.seq_first).collect();
        let Ok(present) = self.outbox.present(ids).await else {
            return;
        };
        if present.len() == blocks.len() {
            return;
        }
        let keep: Vec<bool> = blocks
            .iter()
            .map(|b| present.binary_search(&b.seq_first).is_ok())
            .collect();
        for lane in lanes.iter_mut() {
            let done = lane.done;
            let mut i = 0;
            lane.items.retain(|item| {
                i += 1;
                i <= done || keep[item.block as usize]
            });
        }
    }

    async fn attempt(
        &mut self,
        blocks: &Arc<Vec<Block>>,
        lanes: &mut Option<Vec<Lane>>,
    ) -> Result<(), Failure> {
        let client = self.ensure_client().await?;
        if lanes.is_none() {
            self.ensure_topics(&client, blocks).await?;
            *lanes = Some(self.plan(blocks));
        }
        let lanes = lanes.as_mut().expect("planned above");
        let mut set = JoinSet::new();
        for (i, lane) in lanes.iter().enumerate() {
            if lane.done == lane.items.len() {
                continue;
            }
            let pc = self
                .partition_client(&client, &lane.topic, lane.partition)
                .await?;
            let job = LaneJob {
                client: pc,
                blocks: blocks.clone(),
                items: lane.items[lane.done..].to_vec(),
                node_id: self.node_id.clone(),
                compression: self.compression,
                max_events: self.config.max_batch_events as usize,
                max_bytes: self.config.max_batch_bytes as usize,
                stats: self.stats.clone(),
            };
            set.spawn(async move {
                let (done, r) = job.run().await;
                (i, done, r)
            });
        }
        let mut first_error = None;
        // Dropping `set` (when shutdown cancels this attempt) aborts the tasks.
        while let Some(next) = set.join_next().await {
            match next {
                Ok((i, done, result)) => {
                    let lane = &mut lanes[i];
                    lane.done += done;
                    if let Err(e) = result {
                        // Look the leader up afresh next time.
                        self.partition_clients
                            .remove(&(lane.topic.clone(), lane.partition));
                        first_error.get_or_insert(e);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(format!("produce task failed: {e}"));
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(Failure::Error(e)),
        }
    }

    async fn ensure_client(&mut self) -> Result<Arc<Client>, Failure> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let brokers = self.config.brokers.join(",");
        let build = ClientBuilder::new(self.config.brokers.clone())
            .client_id(self.config.client_id.as_str())
            .backoff_config(BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
                deadline: Some(CLIENT_RETRY_DEADLINE),
            })
            .build();
        let client = match tokio::time::timeout(CLIENT_RETRY_DEADLINE * 2, build).await {
            Ok(Ok(c)) => Arc::new(c),
            Ok(Err(e)) => {
                return Err(Failure::Error(format!(
                    "cannot reach Kafka at {brokers}: {e}"
                )));
            }
            Err(_) => {
                return Err(Failure::Error(format!(
                    "cannot reach Kafka at {brokers}: no answer within {:?}",
                    CLIENT_RETRY_DEADLINE * 2
                )));
            }
        };
        info!("connected to Kafka at {brokers}");
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Make sure the partition count of every destination topic is known.
    async fn ensure_topics(&mut self, client: &Client, blocks: &[Block]) -> Result<(), Failure> {
        let mut missing: Option<String> = None;
        for block in blocks {
            for (_, _, e) in block.events() {
                self.router.for_each_destination(e.topic, |t| {
                    if missing.is_none() && !self.partitions.contains_key(t) {
                        missing = Some(t.to_string());
                    }
                });
                if missing.is_some() {
                    break;
                }
            }
        }
        let Some(first_missing) = missing else {
            return Ok(());
        };
        let topics = client
            .list_topics()
            .await
            .map_err(|e| Failure::Error(format!("cannot read topic metadata from Kafka: {e}")))?;
        self.partitions = topics
            .into_iter()
            .filter(|t| !t.partitions.is_empty())
            .map(|t| (t.name, t.partitions.len() as i32))
            .collect();
        if !self.partitions.contains_key(&first_missing) {
            return Err(Failure::Error(format!(
                "topic {first_missing} does not exist on the Kafka cluster; create it (ferry does not auto-create topics)"
            )));
        }
        // Another topic of this window may still be missing: check all.
        Box::pin(self.ensure_topics(client, blocks)).await
    }

    /// Assign every event of the window to its destination partitions.
    fn plan(&mut self, blocks: &[Block]) -> Vec<Lane> {
        let mut index: HashMap<(&str, i32), usize> = HashMap::new();
        let mut sticky: HashMap<&str, i32> = HashMap::new();
        let mut lanes: Vec<Lane> = Vec::new();
        for (b, block) in blocks.iter().enumerate() {
            for (seq, offset, event) in block.events() {
                let item = Item {
                    block: b as u32,
                    offset: offset as u32,
                    seq,
                };
                self.router.for_each_destination(event.topic, |topic| {
                    let n = self.partitions.get(topic).copied().unwrap_or(1);
                    let partition = match event.key {
                        Some(k) => partition_for_key(k, n),
                        None => *sticky
                            .entry(topic)
                            .or_insert_with(|| self.sticky.next_batch(n)),
                    };
                    let lane = *index.entry((topic, partition)).or_insert_with(|| {
                        lanes.push(Lane {
                            topic: topic.to_string(),
                            partition,
                            items: Vec::new(),
                            done: 0,
                        });
                        lanes.len() - 1
                    });
                    lanes[lane].items.push(item);
                });
            }
        }
        debug!(
            "window of {} blocks planned onto {} partitions",
            blocks.len(),
            lanes.len()
        );
        lanes
    }

    async fn partition_client(
        &mut self,
        client: &Client,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, Failure> {
        let key = (topic.to_string(), partition);
        if let Some(pc) = self.partition_clients.get(&key) {
            return Ok(pc.clone());
        }
        let pc = client
            .partition_client(topic, partition, UnknownTopicHandling::Error)
            .await
            .map_err(|e| {
                Failure::Error(format!(
                    "cannot reach the leader of {topic}/{partition}: {e}"
                ))
            })?;
        let pc = Arc::new(pc);
        self.partition_clients.insert(key, pc.clone());
        Ok(pc)
    }
}

enum Delivery {
    Done,
    /// Not started; read the window again.
    Reread,
    Shutdown,
}

enum Failure {
    Error(String),
}

/// Produces one lane's remaining events, batch by batch, in order.
struct LaneJob {
    client: Arc<PartitionClient>,
    blocks: Arc<Vec<Block>>,
    items: Vec<Item>,
    node_id: Arc<str>,
    compression: rskafka::client::partition::Compression,
    max_events: usize,
    max_bytes: usize,
    stats: Arc<Stats>,
}

impl LaneJob {
    /// How many items were acknowledged, and the error that stopped it.
    async fn run(self) -> (usize, Result<(), String>) {
        let mut done = 0;
        while done < self.items.len() {
            let mut records = Vec::with_capacity(self.max_events.min(self.items.len() - done));
            let mut bytes = 0usize;
            for item in &self.items[done..] {
                let Some(event) = self.blocks[item.block as usize].event_at(item.offset as usize)
                else {
                    continue;
                };
                let size = event.payload_len() + RECORD_OVERHEAD;
                if !records.is_empty()
                    && (records.len() >= self.max_events || bytes + size > self.max_bytes)
                {
                    break;
                }
                bytes += size;
                records.push(to_record(&event, &self.node_id, item.seq));
            }
            let n = records.len();
            let topic = self.client.topic().to_string();
            let partition = self.client.partition();
            match tokio::time::timeout(
                PRODUCE_TIMEOUT,
                self.client.produce(records, self.compression),
            )
            .await
            {
                Ok(Ok(_offsets)) => {
                    done += n;
                    self.stats.sent.fetch_add(n as u64, Relaxed);
                }
                Ok(Err(e)) => {
                    return (
                        done,
                        Err(format!("produce to {topic}/{partition} failed: {e}")),
                    );
                }
                Err(_) => {
                    return (
                        done,
                        Err(format!(
                            "produce to {topic}/{partition} got no answer within {PRODUCE_TIMEOUT:?}"
                        )),
                    );
                }
            }
        }
        (done, Ok(()))
    }
}

/// Build the Kafka record: producer headers kept, `ferry-id` added. The
/// owned copies are what rskafka's `Record` type requires.
fn to_record(event: &crate::event::Event<'_>, node_id: &str, seq: i64) -> Record {
    let mut headers = BTreeMap::new();
    for (name, value) in event.header_iter() {
        headers.insert(name.to_string(), value.to_vec());
    }
    let mut id = Vec::with_capacity(node_id.len() + 21);
    id.extend_from_slice(node_id.as_bytes());
    let _ = write!(id, ":{seq}");
    headers.insert(FERRY_ID_HEADER.to_string(), id);
    Record {
        key: event.key.map(<[u8]>::to_vec),
        value: Some(event.value.to_vec()),
        headers,
        timestamp: chrono::DateTime::from_timestamp_millis(event.timestamp_ms).unwrap_or_default(),
    }
}

pub const FERRY_ID_HEADER: &str = "ferry-id";
