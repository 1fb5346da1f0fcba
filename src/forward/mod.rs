//! Forwarding to Kafka: reads the outbox in sequence order a window of
//! blocks at a time, routes and partitions each event, produces one LZ4
//! record batch stream per partition (one request in flight per partition,
//! which keeps per-key order), and deletes the blocks only after Kafka has
//! acknowledged (or ferry dead-lettered) every event in them.
//!
//! Two windows are in flight at once, so the cores stay busy while the
//! last batches of one window are on the wire: a lane (one partition's
//! events of a window) starts producing only when the same partition's
//! lane of the window before has finished. When anything fails, the
//! windows in flight are brought to a stop and retried one after another.
//!
//! Failures are classified (see [`errors`]): transient ones are retried
//! after a jittered backoff and counted by the circuit breaker, which stops
//! all attempts while open; a record Kafka refuses for good is isolated by
//! halving its batch and dead-lettered; a topic that is missing or not
//! authorised is parked (its blocks skipped) so other topics go on.

pub mod errors;
mod nodelay;
pub mod partitioner;
pub mod route;
pub mod security;

use crate::backoff::{Backoff, seed_from_environment};
use crate::breaker::{Breaker, State};
use crate::config::{Compression, Config, KafkaConfig, RetryConfig};
use crate::log_limit::LogLimiter;
use crate::outbox::dead_letter::NewDeadLetter;
use crate::outbox::{Block, Outbox};
use crate::shutdown::Shutdown;
use crate::stats::{Stats, now_ms};
use errors::{Class, Failure, classify};
use log::{debug, error, info, warn};
use partitioner::{Sticky, partition_for_key};
use route::Router;
use rskafka::BackoffConfig;
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// How much of the outbox one delivery window takes on: with two in flight,
/// 1 MiB windows drain as fast as larger ones here (measured with the
/// benchmark) and keep the decoded events and their records small.
const WINDOW_EVENTS: usize = 12_500;
const WINDOW_RAW_BYTES: usize = 1024 * 1024;
/// Delivery windows in flight at once (see the module comment).
const WINDOWS_IN_FLIGHT: usize = 2;
/// Per-record overhead counted against `max_batch_bytes`.
const RECORD_OVERHEAD: usize = 64;
/// rskafka retries internally; bound it so ferry's backoff and breaker decide.
const CLIENT_RETRY_DEADLINE: Duration = Duration::from_secs(1);
/// Bound on finding a partition leader (rskafka nests its retries).
const LEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// A produce request that has not completed by then is treated as failed.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long in-flight requests may finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// After this many failed rounds in a row, reconnect from the bootstrap list.
const RECONNECT_AFTER_FAILURES: u32 = 3;
/// Configuration problems are logged at most this often (per topic).
const LOUD_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Parked topics are retried after a growing delay from this...
const PARK_INITIAL: Duration = Duration::from_secs(10);
/// ...to this.
const PARK_MAX: Duration = Duration::from_secs(600);

/// The loop shows it is alive at least this often while it waits.
const HEARTBEAT: Duration = Duration::from_secs(1);

pub const FERRY_ID_HEADER: &str = "ferry-id";
/// On events recorded before the clock was synchronised, whose timestamp
/// ferry recomputed: the original timestamp (ms).
pub const TS_CORRECTED_HEADER: &str = "ferry-ts-corrected";
/// On events recorded with an unsynchronised clock that could not be
/// corrected (clock still unsynchronised, or recorded in an earlier boot).
pub const TS_UNSYNCED_HEADER: &str = "ferry-ts-unsynced";

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
    /// How many of `items` are finished (acknowledged or dead-lettered).
    done: usize,
    /// The topic got parked: give up on this lane for this window.
    abandoned: bool,
}

impl Lane {
    /// Nothing left to try in this window: all done, or abandoned.
    fn settled(&self) -> bool {
        self.abandoned || self.done == self.items.len()
    }

    /// Give up on this lane for this window; add the source topics of its
    /// unfinished events to `sources` (their blocks are held back).
    fn abandon(&mut self, blocks: &[Block], sources: &mut HashSet<String>) {
        self.abandoned = true;
        for item in &self.items[self.done..] {
            sources.insert(blocks[item.block as usize].topic.clone());
        }
    }
}

/// A window read from the outbox, with its delivery progress.
struct Window {
    /// The cursor it was read after (to read it again if it never started).
    after: i64,
    blocks: Arc<Vec<Block>>,
    /// Planned on its first attempt.
    lanes: Option<Vec<Lane>>,
    dead: Vec<NewDeadLetter>,
    first_attempt_ms: i64,
}

impl Window {
    fn new(after: i64, blocks: Vec<Block>) -> Self {
        Self {
            after,
            blocks: Arc::new(blocks),
            lanes: None,
            dead: Vec::new(),
            first_attempt_ms: now_ms(),
        }
    }

    /// The cursor after this window.
    fn last(&self) -> i64 {
        self.blocks.last().map_or(self.after, |b| b.seq_first)
    }
}

/// A window whose lane jobs are running.
struct Running {
    window: Window,
    tasks: JoinSet<(usize, LaneOutcome)>,
}

/// The last lane started for each destination partition: the next lane of
/// that partition waits for it, which keeps one request in flight per
/// partition (and so per-key order) across windows. The value is whether
/// that lane finished all its events.
type Chain = HashMap<(String, i32), oneshot::Receiver<bool>>;

/// A destination topic that cannot be produced to until an operator acts.
#[derive(Debug)]
struct Parked {
    until: Instant,
    backoff: Backoff,
    /// Source topics whose blocks are held back while this one is parked.
    sources: HashSet<String>,
    reason: String,
}

impl Parked {
    /// Still holding blocks back. An inactive entry only remembers the
    /// backoff, so a topic that fails again is parked for longer.
    fn is_active(&self) -> bool {
        !self.sources.is_empty()
    }
}

/// The forwarder's view for `ferry status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ForwardState {
    pub breaker: String,
    pub breaker_transitions: u64,
    /// Seconds until the breaker lets the next attempt through, when open.
    pub next_attempt_in_s: Option<f64>,
    pub last_error_class: Option<String>,
    pub parked_topics: Vec<String>,
}

pub struct Forwarder {
    config: KafkaConfig,
    retry: RetryConfig,
    compression: rskafka::client::partition::Compression,
    node_id: Arc<str>,
    outbox: Outbox,
    stats: Arc<Stats>,
    router: Router,
    backoff: Backoff,
    breaker: Breaker,
    seed: u64,
    client: Option<Arc<Client>>,
    partitions: HashMap<String, i32>,
    partition_clients: HashMap<(String, i32), Arc<PartitionClient>>,
    sticky: Sticky,
    failures: u32,
    parked: HashMap<String, Parked>,
    log: LogLimiter,
    loud: HashMap<String, LogLimiter>,
    clock: crate::clock::SystemClock,
    /// When ferry's sockets were last given `TCP_NODELAY` (see [`nodelay`]);
    /// `None` after a new connection may have been opened.
    sockets_tuned: Option<Instant>,
}

/// What one window's delivery came to.
enum Delivery {
    /// Finished: these blocks can go (the others are held for parked topics).
    Done,
    /// Not started; read the window again.
    Reread,
    Shutdown,
}

impl Forwarder {
    pub fn new(config: &Config, outbox: Outbox, stats: Arc<Stats>) -> Self {
        let seed = seed_from_environment(&config.node_id);
        Self {
            config: config.kafka.clone(),
            retry: config.retry.clone(),
            compression: match config.kafka.compression {
                Compression::Lz4 => rskafka::client::partition::Compression::Lz4,
                Compression::None => rskafka::client::partition::Compression::NoCompression,
            },
            node_id: Arc::from(config.node_id.as_str()),
            outbox,
            stats,
            router: Router::new(&config.routes),
            backoff: Backoff::new(&config.retry, seed),
            breaker: Breaker::new(config.breaker.clone(), seed.rotate_left(17)),
            seed,
            client: None,
            partitions: HashMap::new(),
            partition_clients: HashMap::new(),
            sticky: Sticky::seeded(seed as u32),
            failures: 0,
            parked: HashMap::new(),
            log: LogLimiter::new(Duration::from_secs(10)),
            loud: HashMap::new(),
            clock: crate::clock::SystemClock::default(),
            sockets_tuned: None,
        }
    }

    /// Give new broker connections `TCP_NODELAY`: right after ferry opened
    /// one, and at most once a second otherwise (rskafka reconnects on its
    /// own after a broken connection).
    fn tune_sockets(&mut self) {
        let due = self
            .sockets_tuned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            let n = nodelay::apply_to_own_sockets();
            if n > 0 {
                debug!("TCP_NODELAY set on {n} connection(s)");
            }
            self.sockets_tuned = Some(Instant::now());
        }
    }

    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut cursor = 0i64;
        // Memory handed back since the last window was launched.
        let mut released = true;
        let mut running: VecDeque<Running> = VecDeque::new();
        let mut chain: Chain = HashMap::new();
        self.publish_state(None);
        loop {
            self.stats.beat_forward();
            if running.is_empty() {
                chain.clear();
                if !self.wait_for_breaker(&mut shutdown).await {
                    break;
                }
                if self.unpark_expired() {
                    // Their blocks were skipped: read from the start again.
                    cursor = 0;
                }
            }
            self.deliver_side_records().await;
            // A half-open breaker lets one window through as its probe. A
            // parked topic due for a retry lets the windows in flight finish
            // first; then the outbox is read from the start (above).
            let room = running.is_empty()
                || (running.len() < WINDOWS_IN_FLIGHT
                    && self.breaker.state(Instant::now()) == State::Closed);
            let mut window = None;
            if room && !self.unpark_due() {
                let skip = self.parked_sources();
                let blocks = tokio::select! {
                    r = self.outbox.read(cursor, WINDOW_EVENTS, WINDOW_RAW_BYTES, skip) => r,
                    _ = shutdown.recv() => break,
                };
                match blocks {
                    Ok(blocks) if !blocks.is_empty() => window = Some(Window::new(cursor, blocks)),
                    Ok(_) => {}
                    Err(e) => {
                        self.log
                            .error(&format!("cannot read the outbox: {e}; retrying"));
                        if running.is_empty() {
                            if !self.pause(&mut shutdown).await {
                                break;
                            }
                            continue;
                        }
                    }
                }
            }
            if let Some(mut window) = window {
                self.breaker.try_acquire(Instant::now());
                match self.launch(&mut window, Some(&mut chain)).await {
                    Ok(tasks) => {
                        cursor = window.last();
                        released = false;
                        running.push_back(Running { window, tasks });
                        continue;
                    }
                    // Not started: it is read again after the recovery.
                    Err(f) => match self.recover(None, &mut running, f, &mut shutdown).await {
                        Some(Some(reread)) => {
                            cursor = reread;
                            continue;
                        }
                        Some(None) => continue,
                        None => break,
                    },
                }
            }
            let Some(Running { mut window, tasks }) = running.pop_front() else {
                if !self.idle(&mut shutdown, &mut released).await {
                    break;
                }
                continue;
            };
            let Some(result) = self
                .collect_until_shutdown(&mut window, tasks, &mut shutdown)
                .await
            else {
                break;
            };
            match result {
                Ok(()) => self.complete(window).await,
                Err(f) => match self
                    .recover(Some(window), &mut running, f, &mut shutdown)
                    .await
                {
                    Some(Some(reread)) => cursor = reread,
                    Some(None) => {}
                    None => break,
                },
            }
        }
        // Windows still in flight at shutdown: requests on the wire may finish.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            for mut r in running {
                while r.tasks.join_next().await.is_some() {}
            }
        })
        .await;
        info!("forwarder stopped");
    }

    /// `collect`, unless shutdown comes first (see [`until_shutdown`]).
    async fn collect_until_shutdown(
        &mut self,
        window: &mut Window,
        tasks: JoinSet<(usize, LaneOutcome)>,
        shutdown: &mut Shutdown,
    ) -> Option<Result<(), Failure>> {
        until_shutdown(self.collect(window, tasks), shutdown).await
    }

    /// Something failed with windows in flight: count the failure once, let
    /// every running lane come to a stop (lanes behind a failed one give up
    /// at once), then deliver the windows one after another — `collected`, the
    /// window already collected whose failure this is, first — retrying with
    /// backoff. `None` on shutdown; `Some(Some(cursor))` when the outbox must
    /// be read again from `cursor`.
    async fn recover(
        &mut self,
        collected: Option<Window>,
        running: &mut VecDeque<Running>,
        failure: Failure,
        shutdown: &mut Shutdown,
    ) -> Option<Option<i64>> {
        self.on_failure(&failure);
        let mut windows: Vec<Window> = collected.into_iter().collect();
        for Running { mut window, tasks } in running.drain(..) {
            // Their own failures are retried below; what they finished counts.
            let _ = self
                .collect_until_shutdown(&mut window, tasks, shutdown)
                .await?;
            windows.push(window);
        }
        if windows.is_empty() && !self.pause(shutdown).await {
            return None;
        }
        let mut failed = true;
        for window in windows {
            let after = window.after;
            match self.deliver(window, shutdown, failed).await {
                Delivery::Done => failed = false,
                // It and the windows after it are read again.
                Delivery::Reread => return Some(Some(after)),
                Delivery::Shutdown => return None,
            }
        }
        Some(None)
    }

    /// Nothing to send: wait for new events, a parked topic's retry time, or
    /// shutdown; then linger so a burst fills batches. After a quiet second
    /// the outbox is asked to release memory (once, `released`). False on
    /// shutdown.
    async fn idle(&mut self, shutdown: &mut Shutdown, released: &mut bool) -> bool {
        let next_unpark = self
            .parked
            .values()
            .filter(|p| p.is_active())
            .map(|p| p.until)
            .min();
        let until_unpark = next_unpark
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        let wake = Instant::now() + until_unpark;
        // Wake every second to show the loop is alive (systemd watchdog).
        loop {
            self.stats.beat_forward();
            let nap = wake
                .saturating_duration_since(Instant::now())
                .min(HEARTBEAT);
            if nap.is_zero() {
                break;
            }
            tokio::select! {
                _ = self.outbox.committed.notified() => break,
                _ = tokio::time::sleep(nap) => {}
                _ = shutdown.recv() => return false,
            }
            // A quiet heartbeat: an idle gateway keeps a small footprint.
            // Not at every catch-up with a busy producer, where the buffers
            // would be needed again at once.
            if !*released {
                crate::memory::request_release();
                self.outbox.release_memory().await;
                *released = true;
            }
        }
        if self.config.linger_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(self.config.linger_ms)) => {}
                _ = shutdown.recv() => return false,
            }
        }
        true
    }

    /// While the breaker is open, wait (no attempts at all). False on shutdown.
    async fn wait_for_breaker(&mut self, shutdown: &mut Shutdown) -> bool {
        while let Some(until) = self.breaker.open_until() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            self.publish_state(None);
            self.stats.beat_forward();
            tokio::select! {
                _ = tokio::time::sleep((until - now).min(HEARTBEAT)) => {}
                _ = shutdown.recv() => return false,
            }
        }
        true
    }

    /// Sleep the next backoff delay; false if shutdown came first.
    async fn pause(&mut self, shutdown: &mut Shutdown) -> bool {
        let until = Instant::now() + self.backoff.next_delay();
        loop {
            self.stats.beat_forward();
            let nap = until
                .saturating_duration_since(Instant::now())
                .min(HEARTBEAT);
            if nap.is_zero() {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = shutdown.recv() => return false,
            }
        }
    }

    /// Deliver every event of `window` not held back for a parked topic,
    /// retrying until done. `failed`: the last attempt failed (already
    /// counted), so wait out the backoff first.
    async fn deliver(
        &mut self,
        mut window: Window,
        shutdown: &mut Shutdown,
        mut failed: bool,
    ) -> Delivery {
        loop {
            if failed {
                if !self.pause(shutdown).await {
                    return Delivery::Shutdown;
                }
                match window.lanes.as_mut() {
                    Some(lanes) => self.forget_dropped(&window.blocks, lanes).await,
                    // Nothing sent yet: read the window afresh, which
                    // also leaves out what was dropped or parked meanwhile.
                    None => return Delivery::Reread,
                }
            }
            if shutdown.is_shutdown() || !self.wait_for_breaker(shutdown).await {
                return Delivery::Shutdown;
            }
            // Half-open lets one probe at a time (one window at a time here).
            self.breaker.try_acquire(Instant::now());
            let Some(result) = until_shutdown(self.attempt(&mut window), shutdown).await else {
                return Delivery::Shutdown;
            };
            match result {
                Ok(()) => {
                    self.complete(window).await;
                    return Delivery::Done;
                }
                Err(f) => {
                    self.on_failure(&f);
                    failed = true;
                }
            }
        }
    }

    /// Every event of `window` is acknowledged, dead-lettered or held for a
    /// parked topic: remove its blocks (but the held ones) and store its
    /// dead letters.
    async fn complete(&mut self, mut window: Window) {
        debug!(
            "window of {} blocks delivered {} ms after its first attempt",
            window.blocks.len(),
            now_ms() - window.first_attempt_ms
        );
        self.on_success();
        let held = self.held_blocks(&window.blocks, window.lanes.as_deref().unwrap_or(&[]));
        let finished: Vec<i64> = window
            .blocks
            .iter()
            .map(|b| b.seq_first)
            .filter(|s| !held.contains(s))
            .collect();
        if let Err(e) = self
            .outbox
            .finish(finished, std::mem::take(&mut window.dead))
            .await
        {
            // Delivered but still stored: they will be sent again
            // after a restart, which `ferry-id` lets consumers drop.
            self.log.error(&format!(
                "cannot remove delivered events from the outbox: {e}"
            ));
        }
    }

    fn on_success(&mut self) {
        if self.failures > 0 {
            info!("uplink to Kafka is working again");
        }
        self.failures = 0;
        self.backoff.reset();
        self.breaker.on_success();
        self.stats.uplink_up.store(true, Relaxed);
        self.publish_state(None);
    }

    fn on_failure(&mut self, f: &Failure) {
        self.failures += 1;
        self.stats.produce_errors.fetch_add(1, Relaxed);
        self.stats.retries.fetch_add(1, Relaxed);
        self.stats.uplink_up.store(false, Relaxed);
        let before = self.breaker.state(Instant::now());
        self.breaker
            .on_failure(Instant::now(), f.class == Class::ConfigCluster);
        let after = self.breaker.state(Instant::now());
        let message = format!(
            "{} [{}: {}] (attempt {}; events stay in the outbox)",
            f.message,
            f.class.as_str(),
            f.name,
            self.failures
        );
        if f.class == Class::ConfigCluster {
            self.loud(
                "cluster",
                &format!("{message}: fix the broker or credentials; ferry keeps storing events"),
            );
        } else {
            self.log.warn(&message);
        }
        if before != after && after == State::Open {
            let secs = self
                .breaker
                .open_until()
                .map(|u| u.saturating_duration_since(Instant::now()).as_secs_f64())
                .unwrap_or(0.0);
            warn!("circuit breaker open: no produce attempts for {secs:.1} s");
        }
        if self.failures >= RECONNECT_AFTER_FAILURES {
            self.client = None;
            self.partition_clients.clear();
            self.partitions.clear();
        }
        self.publish_state(Some(f));
    }

    /// At most one line a minute per subject, at error level.
    fn loud(&mut self, subject: &str, message: &str) {
        self.loud
            .entry(subject.to_string())
            .or_insert_with(|| LogLimiter::new(LOUD_LOG_INTERVAL))
            .error(message);
    }

    fn publish_state(&self, failure: Option<&Failure>) {
        let now = Instant::now();
        let state = ForwardState {
            breaker: self.breaker.state(now).as_str().to_string(),
            breaker_transitions: self.breaker.transitions,
            next_attempt_in_s: self
                .breaker
                .open_until()
                .map(|u| u.saturating_duration_since(now).as_secs_f64()),
            last_error_class: failure.map(|f| f.class.as_str().to_string()),
            parked_topics: self
                .parked
                .iter()
                .filter(|(_, p)| p.is_active())
                .map(|(t, _)| t.clone())
                .collect(),
        };
        self.stats
            .breaker_state
            .store(self.breaker.state(now).gauge() as u64, Relaxed);
        if let Some(f) = failure {
            self.stats.set_last_error(Some(f.message.clone()));
        }
        if let Ok(mut slot) = self.stats.forward.lock() {
            // Keep the last error's class until a newer failure replaces it.
            let class = state
                .last_error_class
                .clone()
                .or_else(|| slot.last_error_class.clone());
            *slot = ForwardState {
                last_error_class: class,
                ..state
            };
        }
    }

    /// Park `topic` (a destination): its source blocks are skipped until a
    /// growing, jittered delay has passed.
    fn park(&mut self, topic: &str, sources: impl IntoIterator<Item = String>, f: &Failure) {
        let now = Instant::now();
        let retry = RetryConfig {
            initial: PARK_INITIAL,
            max: PARK_MAX.max(self.retry.max),
            multiplier: 2.0,
        };
        let seed = self.seed ^ crc32fast::hash(topic.as_bytes()) as u64;
        let p = self
            .parked
            .entry(topic.to_string())
            .or_insert_with(|| Parked {
                until: now,
                backoff: Backoff::new(&retry, seed),
                sources: HashSet::new(),
                reason: String::new(),
            });
        let delay = p.backoff.next_delay();
        p.until = now + delay;
        p.sources.extend(sources);
        p.reason = f.message.clone();
        let msg = format!(
            "topic {topic}: {} [{}: {}]; its events are kept and retried in {:.0} s, other topics go on",
            f.message,
            f.class.as_str(),
            f.name,
            delay.as_secs_f64()
        );
        self.loud(topic, &msg);
        self.publish_state(Some(f));
    }

    /// Source topics whose blocks are held back for parked destinations.
    fn parked_sources(&self) -> Vec<String> {
        self.parked
            .values()
            .flat_map(|p| p.sources.iter().cloned())
            .collect()
    }

    /// A parked topic is due for its retry.
    fn unpark_due(&self) -> bool {
        let now = Instant::now();
        self.parked
            .values()
            .any(|p| p.is_active() && p.until <= now)
    }

    /// Lift parks whose time has come; true if any was lifted.
    fn unpark_expired(&mut self) -> bool {
        let now = Instant::now();
        let expired: Vec<String> = self
            .parked
            .iter()
            .filter(|(_, p)| p.until <= now && p.is_active())
            .map(|(t, _)| t.clone())
            .collect();
        for t in &expired {
            // Keep the backoff (it grows if the topic fails again); free the sources.
            if let Some(p) = self.parked.get_mut(t) {
                debug!("topic {t}: retrying after park ({})", p.reason);
                p.sources.clear();
            }
        }
        !expired.is_empty()
    }

    /// Blocks of this window that must stay: a lane of theirs was abandoned.
    fn held_blocks(&self, blocks: &[Block], lanes: &[Lane]) -> HashSet<i64> {
        let mut held = HashSet::new();
        for lane in lanes.iter().filter(|l| l.abandoned) {
            for item in &lane.items[lane.done..] {
                held.insert(blocks[item.block as usize].seq_first);
            }
        }
        held
    }

    /// While we waited, the outbox may have dropped some of this window's
    /// blocks by policy (size or age cap). Those drops are counted and
    /// announced; do not send them anyway.
    async fn forget_dropped(&mut self, blocks: &[Block], lanes: &mut [Lane]) {
        let keep = self.still_stored(blocks).await;
        if keep.iter().all(|k| *k) {
            return;
        }
        for lane in lanes.iter_mut() {
            let done = lane.done;
            let mut i = 0;
            lane.items.retain(|item| {
                i += 1;
                i <= done || keep[item.block as usize]
            });
        }
    }

    /// For each block of the window: is it still in the outbox? (If the
    /// outbox cannot tell, assume so: sending twice beats losing.)
    async fn still_stored(&self, blocks: &[Block]) -> Vec<bool> {
        let ids: Vec<i64> = blocks.iter().map(|b| b.seq_first).collect();
        match self.outbox.present(ids).await {
            Ok(present) => blocks
                .iter()
                .map(|b| present.binary_search(&b.seq_first).is_ok())
                .collect(),
            Err(_) => vec![true; blocks.len()],
        }
    }

    /// One delivery attempt of what is left of `window`.
    async fn attempt(&mut self, window: &mut Window) -> Result<(), Failure> {
        let tasks = self.launch(window, None).await?;
        self.collect(window, tasks).await
    }

    /// Plan `window` (on its first attempt) and start a job for each lane
    /// with events left. With a `chain`, each job first waits for the
    /// previous lane of its partition (see [`Chain`]).
    async fn launch(
        &mut self,
        window: &mut Window,
        mut chain: Option<&mut Chain>,
    ) -> Result<JoinSet<(usize, LaneOutcome)>, Failure> {
        let client = self.ensure_client().await?;
        let blocks = &window.blocks;
        // Also for a planned window: a reconnect forgets the partition counts.
        self.ensure_topics(&client, blocks).await?;
        if window.lanes.is_none() {
            // Connecting may have taken a while: leave out blocks the outbox
            // dropped by policy meanwhile (they are counted and announced).
            let keep = self.still_stored(blocks).await;
            window.lanes = Some(self.plan(blocks, &keep));
        }
        let lanes = window.lanes.as_mut().expect("planned above");
        // Lanes whose topic got parked since the window was read.
        self.hold_parked(blocks, lanes);
        // Lanes whose topic is missing from the cluster.
        let missing: Vec<usize> = (0..lanes.len())
            .filter(|&i| !lanes[i].abandoned && !self.partitions.contains_key(&lanes[i].topic))
            .collect();
        for i in missing {
            let topic = lanes[i].topic.clone();
            let f = Failure {
                class: Class::ConfigTopic,
                name: "UNKNOWN_TOPIC_OR_PARTITION".into(),
                message: format!(
                    "topic {topic} does not exist on the Kafka cluster (ferry does not create topics)"
                ),
            };
            self.abandon_topic(blocks, lanes, &topic, &f);
        }
        let mut set = JoinSet::new();
        for (i, lane) in lanes.iter().enumerate() {
            if lane.settled() {
                continue;
            }
            self.stats.beat_forward();
            let pc = self
                .partition_client(&client, &lane.topic, lane.partition)
                .await?;
            let (after, finished) = match chain.as_deref_mut() {
                Some(chain) => {
                    let (tx, rx) = oneshot::channel();
                    let after = chain.insert((lane.topic.clone(), lane.partition), rx);
                    (after, Some(tx))
                }
                None => (None, None),
            };
            let job = LaneJob {
                client: pc,
                blocks: blocks.clone(),
                items: lane.items[lane.done..].to_vec(),
                node_id: self.node_id.clone(),
                compression: self.compression,
                max_events: self.config.max_batch_events as usize,
                max_bytes: self.config.max_batch_bytes as usize,
                stats: self.stats.clone(),
                first_attempt_ms: window.first_attempt_ms,
                clock: self.clock.clone(),
                after,
                finished,
            };
            // The records of a produce request are allocated and freed
            // together: bumped from the arena while the lane is polled.
            set.spawn(crate::arena::scoped(async move {
                let out = job.run().await;
                (i, out)
            }));
        }
        self.tune_sockets();
        Ok(set)
    }

    /// Wait for the lane jobs of `window` and record what they achieved.
    async fn collect(
        &mut self,
        window: &mut Window,
        mut set: JoinSet<(usize, LaneOutcome)>,
    ) -> Result<(), Failure> {
        let blocks = &window.blocks;
        let Some(lanes) = window.lanes.as_mut() else {
            return Ok(());
        };
        let dead = &mut window.dead;
        let mut first_error: Option<Failure> = None;
        let mut parked: Vec<(String, Failure)> = Vec::new();
        // Dropping `set` (when shutdown cancels this attempt) aborts the tasks.
        while let Some(next) = set.join_next().await {
            match next {
                Ok((i, out)) => {
                    let lane = &mut lanes[i];
                    lane.done += out.done;
                    dead.extend(out.dead);
                    match out.failure {
                        None => {}
                        Some(f) if f.class == Class::ConfigTopic => {
                            parked.push((lane.topic.clone(), f));
                        }
                        // The lane before it failed; if that one's topic
                        // got parked, this lane is held below with it.
                        Some(f) if out.gave_up => {
                            first_error.get_or_insert(f);
                        }
                        Some(f) => {
                            // Look the leader up afresh next time.
                            self.partition_clients
                                .remove(&(lane.topic.clone(), lane.partition));
                            first_error.get_or_insert(f);
                        }
                    }
                }
                Err(e) => {
                    first_error
                        .get_or_insert(Failure::transient(format!("produce task failed: {e}")));
                }
            }
        }
        for (topic, f) in parked {
            self.abandon_topic(blocks, lanes, &topic, &f);
        }
        self.hold_parked(blocks, lanes);
        // A once-parked topic that now delivers is forgiven: its backoff resets.
        for lane in lanes
            .iter()
            .filter(|l| !l.abandoned && l.done == l.items.len())
        {
            if self.parked.get(&lane.topic).is_some_and(|p| !p.is_active()) {
                info!("topic {}: delivering again", lane.topic);
                self.parked.remove(&lane.topic);
            }
        }
        if lanes.iter().all(Lane::settled) {
            return Ok(());
        }
        Err(first_error.unwrap_or_else(|| {
            Failure::transient("a produce job stopped before its events were sent".into())
        }))
    }

    /// Abandon, in this window, the unfinished lanes of topics that are
    /// parked now (without parking them again): their blocks are held.
    fn hold_parked(&mut self, blocks: &[Block], lanes: &mut [Lane]) {
        for lane in lanes.iter_mut().filter(|l| !l.settled()) {
            if let Some(p) = self.parked.get_mut(&lane.topic).filter(|p| p.is_active()) {
                lane.abandon(blocks, &mut p.sources);
            }
        }
    }

    /// Park `topic` and abandon its lanes in this window.
    fn abandon_topic(&mut self, blocks: &[Block], lanes: &mut [Lane], topic: &str, f: &Failure) {
        let mut sources = HashSet::new();
        for lane in lanes.iter_mut().filter(|l| l.topic == topic) {
            lane.abandon(blocks, &mut sources);
        }
        self.park(topic, sources, f);
    }

    async fn ensure_client(&mut self) -> Result<Arc<Client>, Failure> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let brokers = self.config.brokers.join(",");
        let mut builder = ClientBuilder::new(self.config.brokers.clone())
            .client_id(self.config.client_id.as_str())
            .backoff_config(rskafka_backoff());
        if let Some(tls) = &self.config.tls {
            // Checked at start-up; a file changed since then is a config error now.
            let tls = security::tls_config(tls).map_err(|e| Failure {
                class: Class::ConfigCluster,
                name: "TLS_CONFIG".into(),
                message: e,
            })?;
            builder = builder.tls_config(tls);
        }
        if let Some(sasl) = &self.config.sasl {
            let sasl = security::sasl_config(sasl).map_err(|e| Failure {
                class: Class::ConfigCluster,
                name: "SASL_CONFIG".into(),
                message: e,
            })?;
            builder = builder.sasl_config(sasl);
        }
        let build = builder.build();
        let client = match tokio::time::timeout(CLIENT_RETRY_DEADLINE * 3, build).await {
            Ok(Ok(c)) => Arc::new(c),
            Ok(Err(e)) => {
                let (class, name) = classify(&e);
                return Err(Failure {
                    class,
                    name,
                    message: format!("cannot reach Kafka at {brokers}: {e}"),
                });
            }
            Err(_) => {
                return Err(Failure::transient(format!(
                    "cannot reach Kafka at {brokers}: no answer within {:?}",
                    CLIENT_RETRY_DEADLINE * 3
                )));
            }
        };
        info!("connected to Kafka at {brokers}");
        self.client = Some(client.clone());
        self.sockets_tuned = None;
        self.tune_sockets();
        Ok(client)
    }

    /// Make sure the partition count of every destination topic is known
    /// (refreshing metadata once if one is not); topics still unknown after
    /// that are handled per lane.
    async fn ensure_topics(&mut self, client: &Client, blocks: &[Block]) -> Result<(), Failure> {
        let mut missing = false;
        for block in blocks {
            self.router.for_each_destination(&block.topic, |t| {
                missing |= !self.partitions.contains_key(t);
            });
        }
        if missing {
            self.refresh_metadata(client).await?;
        }
        Ok(())
    }

    async fn refresh_metadata(&mut self, client: &Client) -> Result<(), Failure> {
        let topics = bounded(
            "cannot read topic metadata from Kafka",
            client.list_topics(),
        )
        .await?;
        self.partitions = topics
            .into_iter()
            .filter(|t| !t.partitions.is_empty())
            .map(|t| (t.name, t.partitions.len() as i32))
            .collect();
        Ok(())
    }

    /// Assign every event of the window to its destination partitions.
    fn plan(&mut self, blocks: &[Block], keep: &[bool]) -> Vec<Lane> {
        let mut index: HashMap<(&str, i32), usize> = HashMap::new();
        let mut sticky: HashMap<&str, i32> = HashMap::new();
        let mut lanes: Vec<Lane> = Vec::new();
        for (b, block) in blocks.iter().enumerate() {
            if !keep[b] {
                continue;
            }
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
                            abandoned: false,
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
        let lookup = client.partition_client(topic, partition, UnknownTopicHandling::Error);
        let pc = bounded(
            &format!("cannot reach the leader of {topic}/{partition}"),
            lookup,
        )
        .await?;
        let pc = Arc::new(pc);
        self.partition_clients.insert(key, pc.clone());
        // Finding the leader may have opened a connection to it.
        self.sockets_tuned = None;
        Ok(pc)
    }

    /// Best effort, once per loop: loss markers to the loss topic and dead
    /// letters to the DLQ topic. What fails stays queued for next time.
    async fn deliver_side_records(&mut self) {
        if self.breaker.state(Instant::now()) != State::Closed || self.client.is_none() {
            return;
        }
        if let Some(topic) = self.config.loss_topic.clone() {
            if self.stats.loss_markers_pending.load(Relaxed) > 0 {
                if let Ok(markers) = self.outbox.loss_pending().await {
                    let ids: Vec<i64> = markers.iter().map(|m| m.0).collect();
                    let records = markers
                        .into_iter()
                        .map(|(_, body)| Record {
                            key: Some(self.node_id.as_bytes().to_vec()),
                            value: Some(body.into_bytes()),
                            headers: BTreeMap::new(),
                            timestamp: chrono::DateTime::from_timestamp_millis(now_ms())
                                .unwrap_or_default(),
                        })
                        .collect::<Vec<_>>();
                    if records.is_empty() {
                        self.stats.loss_markers_pending.store(0, Relaxed);
                    } else if self
                        .produce_side(&topic, self.node_id.to_string().as_bytes(), records)
                        .await
                    {
                        self.outbox.loss_delivered(ids).await;
                    }
                }
            }
        }
        if let Some(topic) = self.config.dead_letter_topic.clone() {
            if self.stats.dead_letters_unsent.load(Relaxed) > 0 {
                let Ok(pending) = self.outbox.dlq_pending().await else {
                    return;
                };
                if pending.is_empty() {
                    self.stats.dead_letters_unsent.store(0, Relaxed);
                    return;
                }
                let ids: Vec<i64> = pending.iter().map(|p| p.0).collect();
                let mut records = Vec::with_capacity(pending.len());
                for (_, bytes, reason, destination, at_ms) in &pending {
                    let Ok((event, _)) = crate::event::Event::decode_from(bytes) else {
                        continue;
                    };
                    let mut r = to_record(&event, &self.node_id, 0, &self.clock.read());
                    r.headers.remove(FERRY_ID_HEADER);
                    r.headers
                        .insert("dlq-reason".into(), reason.clone().into_bytes());
                    r.headers
                        .insert("dlq-timestamp".into(), at_ms.to_string().into_bytes());
                    r.headers
                        .insert("original-topic".into(), destination.clone().into_bytes());
                    records.push(r);
                }
                if self
                    .produce_side(&topic, self.node_id.to_string().as_bytes(), records)
                    .await
                {
                    let n = ids.len() as u64;
                    self.outbox.dlq_sent(ids).await;
                    let _ = self
                        .stats
                        .dead_letters_unsent
                        .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
                }
            }
        }
    }

    async fn produce_side(&mut self, topic: &str, key: &[u8], records: Vec<Record>) -> bool {
        let Some(client) = self.client.clone() else {
            return false;
        };
        if !self.partitions.contains_key(topic) && self.refresh_metadata(&client).await.is_err() {
            return false;
        }
        let Some(&n) = self.partitions.get(topic) else {
            self.loud(
                topic,
                &format!("topic {topic} (side topic for loss markers/dead letters) does not exist; create it"),
            );
            return false;
        };
        let partition = partition_for_key(key, n);
        let Ok(pc) = self.partition_client(&client, topic, partition).await else {
            return false;
        };
        match tokio::time::timeout(PRODUCE_TIMEOUT, pc.produce(records, self.compression)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                self.log
                    .warn(&format!("produce to {topic} failed: {e}; will retry"));
                false
            }
            Err(_) => false,
        }
    }
}

/// A metadata or leader lookup, bounded by `LEADER_TIMEOUT` (rskafka nests
/// its retries) and classified. An unknown topic here is a stale cache, not
/// an operator's problem: transient.
async fn bounded<T>(
    what: &str,
    lookup: impl std::future::Future<Output = Result<T, rskafka::client::error::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(LEADER_TIMEOUT, lookup).await {
        Err(_) => Err(Failure::transient(format!(
            "{what}: no answer within {LEADER_TIMEOUT:?}"
        ))),
        Ok(Err(e)) => {
            let (class, name) = classify(&e);
            Err(Failure {
                class: if class == Class::ConfigTopic {
                    Class::Transient
                } else {
                    class
                },
                name,
                message: format!("{what}: {e}"),
            })
        }
        Ok(Ok(v)) => Ok(v),
    }
}

/// `work`, unless shutdown comes first: then requests already on the wire
/// may finish for a moment (what does not is sent again after a restart:
/// duplicates, not loss) and the answer is `None`.
async fn until_shutdown<T>(
    work: impl std::future::Future<Output = T>,
    shutdown: &mut Shutdown,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => Some(r),
        _ = shutdown.recv() => {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, work).await;
            None
        }
    }
}

fn rskafka_backoff() -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(CLIENT_RETRY_DEADLINE),
    }
}

/// What a lane job achieved.
struct LaneOutcome {
    /// Items finished: acknowledged or dead-lettered, from the front.
    done: usize,
    dead: Vec<NewDeadLetter>,
    failure: Option<Failure>,
    /// The lane before it (same partition) did not finish: nothing tried.
    gave_up: bool,
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
    first_attempt_ms: i64,
    clock: crate::clock::SystemClock,
    /// Start only once the previous lane of this partition has finished.
    after: Option<oneshot::Receiver<bool>>,
    /// Tell the next lane of this partition whether this one finished.
    finished: Option<oneshot::Sender<bool>>,
}

impl LaneJob {
    async fn run(mut self) -> LaneOutcome {
        let finished = self.finished.take();
        let ready = match self.after.take() {
            Some(after) => after.await == Ok(true),
            None => true,
        };
        let out = match ready {
            false => LaneOutcome {
                done: 0,
                dead: Vec::new(),
                failure: Some(Failure::transient(format!(
                    "{}/{}: an earlier batch of this partition was not delivered",
                    self.client.topic(),
                    self.client.partition()
                ))),
                gave_up: true,
            },
            true => self.produce_all().await,
        };
        if let Some(finished) = finished {
            let _ = finished.send(out.failure.is_none());
        }
        out
    }

    async fn produce_all(self) -> LaneOutcome {
        let mut out = LaneOutcome {
            done: 0,
            dead: Vec::new(),
            failure: None,
            gave_up: false,
        };
        let topic = self.client.topic().to_string();
        let partition = self.client.partition();
        // Shrinks when Kafka refuses a batch for good, to find the record.
        let mut limit = self.max_events;
        // Produce calls that included the item at `out.done` and failed.
        let mut tries_of_front = 0u32;
        while out.done < self.items.len() {
            let clock = self.clock.read();
            let mut records = Vec::with_capacity(limit.min(self.items.len() - out.done));
            let mut bytes = 0usize;
            for item in &self.items[out.done..] {
                let Some(event) = self.blocks[item.block as usize].event_at(item.offset as usize)
                else {
                    continue;
                };
                let size = event.payload_len() + RECORD_OVERHEAD;
                if !records.is_empty() && (records.len() >= limit || bytes + size > self.max_bytes)
                {
                    break;
                }
                bytes += size;
                records.push(to_record(&event, &self.node_id, item.seq, &clock));
            }
            let n = records.len();
            let started = Instant::now();
            let result = tokio::time::timeout(
                PRODUCE_TIMEOUT,
                self.client.produce(records, self.compression),
            )
            .await;
            self.stats.produce_latency.observe(started.elapsed());
            let (class, name, message) = match result {
                Ok(Ok(_offsets)) => {
                    out.done += n;
                    self.stats.sent.fetch_add(n as u64, Relaxed);
                    self.stats.beat_forward();
                    limit = self.max_events;
                    tries_of_front = 0;
                    continue;
                }
                Ok(Err(e)) => {
                    let (class, name) = classify(&e);
                    (
                        class,
                        name,
                        format!("produce to {topic}/{partition} failed: {e}"),
                    )
                }
                Err(_) => (
                    Class::Transient,
                    "TIMEOUT".to_string(),
                    format!(
                        "produce to {topic}/{partition} got no answer within {PRODUCE_TIMEOUT:?}"
                    ),
                ),
            };
            tries_of_front += 1;
            if class != Class::PermanentRecord {
                out.failure = Some(Failure {
                    class,
                    name,
                    message,
                });
                return out;
            }
            if n > 1 {
                // Which record is it? Halve until the batch holds one.
                limit = (n / 2).max(1);
                continue;
            }
            let item = self.items[out.done];
            let block = &self.blocks[item.block as usize];
            let event = block.event_bytes(item.offset as usize).unwrap_or_default();
            error!(
                "event {}:{} (topic {}) refused by Kafka for good: {name}; moved to dead letters (`ferry dlq list`)",
                self.node_id, item.seq, topic
            );
            out.dead.push(NewDeadLetter {
                seq: item.seq,
                destination: topic.clone(),
                event: event.to_vec(),
                reason: message,
                error_name: name,
                attempts: tries_of_front,
                first_attempt_ms: self.first_attempt_ms,
                last_attempt_ms: now_ms(),
            });
            self.stats.dead_letters_unsent.fetch_add(1, Relaxed);
            out.done += 1;
            limit = self.max_events;
            tries_of_front = 0;
        }
        out
    }
}

/// Build the Kafka record: producer headers kept, `ferry-id` added. The
/// owned copies are what rskafka's `Record` type requires.
fn to_record(
    event: &crate::event::Event<'_>,
    node_id: &str,
    seq: i64,
    clock: &crate::clock::Reading,
) -> Record {
    let mut headers = BTreeMap::new();
    for (name, value) in event.header_iter() {
        headers.insert(name.to_string(), value.to_vec());
    }
    let timestamp_ms = match crate::clock::correct(event.timestamp_ms, event.clock, clock) {
        crate::clock::Timestamp::AsRecorded(ts) => ts,
        crate::clock::Timestamp::Corrected {
            corrected,
            original,
        } => {
            headers.insert(
                TS_CORRECTED_HEADER.to_string(),
                original.to_string().into_bytes(),
            );
            corrected
        }
        crate::clock::Timestamp::Unsynced(ts) => {
            headers.insert(TS_UNSYNCED_HEADER.to_string(), b"1".to_vec());
            ts
        }
    };
    let mut id = Vec::with_capacity(node_id.len() + 21);
    id.extend_from_slice(node_id.as_bytes());
    let _ = write!(id, ":{seq}");
    headers.insert(FERRY_ID_HEADER.to_string(), id);
    Record {
        key: event.key.map(<[u8]>::to_vec),
        value: Some(event.value.to_vec()),
        headers,
        timestamp: chrono::DateTime::from_timestamp_millis(timestamp_ms).unwrap_or_default(),
    }
}
