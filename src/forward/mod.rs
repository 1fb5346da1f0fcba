//! Forwarding to Kafka: reads the outbox a window of blocks at a time, the
//! priority each window comes from chosen by [`schedule`] and the blocks
//! of a priority in sequence order, routes and partitions each event, plans each
//! partition's events into record batches numbered by the idempotent
//! producer (the plan is stored before anything is sent, see [`plan`]),
//! produces them with up to five requests in flight per partition (which
//! keeps per-key order), and deletes the blocks only after Kafka has
//! acknowledged (or ferry dead-lettered) every event in them.
//!
//! Two windows are in flight at once (up to six on a distant link), so the
//! cores stay busy while the last batches of one window are on the wire: a
//! lane (one partition's events of a window) starts producing once the same
//! partition's lane of the window before has sent its batches, and its
//! first answered when that was a new producer's probe (see [`flight`]).
//! When anything fails, the windows in flight are brought to a stop and
//! retried one after another.
//! After a crash the stored plans are delivered first, with the same
//! producer ids and sequences, so the broker drops what it already has.
//!
//! Failures are classified (see [`crate::kafka::errors`]): transient ones
//! are retried after a jittered backoff and counted by the circuit breaker,
//! which stops all attempts while open; a record Kafka refuses for good is
//! dead-lettered (named by the broker, or found by halving its batch); a
//! topic that is missing or not authorised is parked (its blocks skipped)
//! so other topics go on; a partition without a leader holds up only its
//! own lanes, and windows left with only those are put aside (see
//! [`deferral`]). A stored producer id only replays the windows stored
//! with it; new events go under an id obtained in this run, bound to the
//! cluster id the brokers name.
//!
//! ```text
//! mod.rs     the forwarder, its settings and reload; the main loop:
//!            reading windows, the memory budget, the distant-link switch
//! window     a window and its share of the memory budget
//! recovery   after a crash: stored plans and producer state
//! delivery   a window's attempts, waits (breaker, backoff, idle),
//!            recovery after a failure, completion, shutdown grace
//! launch     cluster, topics, producer ids; batches cut, plan stored,
//!            one task per lane
//! planner    a window's events routed and partitioned into lanes
//! outcomes   lane outcomes collected: acks, dead letters, leaders lost
//!            (a lane's state changes through its own methods: Lane::apply
//!            in lane_outcome for an outcome, the rest in plan)
//! aside      windows waiting only for a partition's leader
//! parked     topics parked on a configuration failure
//! status     counters, breaker and backoff, the state `ferry status` shows
//! side       the DLQ, loss and heartbeat records
//! lane       one lane's attempt: batches produced, answers taken in order
//!   record_writer  stored events into Kafka records and batches
//!   lane_outcome   what an attempt achieved; Lane::apply
//! plan, flight, streams, deferral, parking, schedule, route:
//!            the pure parts these use (each says its own job)
//! probe      `ferry check-config --connect`: what works and what to fix
//! security   TLS and SASL read from their files (typed errors)
//! config     the [kafka] section and its checks
//! ```

mod aside;
pub mod config;
pub mod deferral;
mod delivery;
pub mod flight;
pub mod lane;
pub mod lane_outcome;
mod launch;
mod outcomes;
mod parked;
pub mod parking;
pub mod plan;
mod planner;
pub mod probe;
pub mod record_writer;
mod recovery;
pub mod route;
pub mod schedule;
pub mod security;
mod side;
mod status;
pub mod streams;
mod window;

use crate::backoff::RetryConfig;
use crate::backoff::{Backoff, seed_from_environment};
use crate::breaker::BreakerConfig;
use crate::breaker::{Breaker, State};
use crate::kafka::cluster::Cluster;
use crate::kafka::partitioner::Sticky;
use crate::kafka::record_batch::Codec;
use crate::kafka::uplink::Uplink;
use crate::log_limit::LogLimiter;
use crate::outbox::config::Durability;
use crate::outbox::run::node_hash;
use crate::outbox::{Outbox, ReadLimits};
use crate::pattern::PRIORITY_LEVELS;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use config::{Compression, KafkaConfig};
use deferral::Deferral;
use delivery::Delivery;
use flight::{Confirmed, Flight, Predecessor, Slots};
use log::info;
use parking::ParkedTopics;
use record_writer::WriterPool;
use route::RouteConfig;
use route::Router;
use schedule::Schedule;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use streams::Streams;
use tokio::sync::watch;
use window::{Running, Window, window_allowance, window_raw_bytes};

/// How much of the outbox one delivery window takes on: with two in flight,
/// 1 MiB windows drain as fast as larger ones here (measured with the
/// benchmark) and keep the decoded events and their records small.
const WINDOW_EVENTS: usize = 12_500;
const WINDOW_RAW_BYTES: usize = 1024 * 1024;
/// Delivery windows in flight at once (see the module comment).
const WINDOWS_IN_FLIGHT: usize = 2;
/// On a distant uplink, up to this many: one more than a partition has
/// request slots, as a window holds about one batch per partition.
const MAX_WINDOWS_IN_FLIGHT: usize = flight::SLOTS_PER_PARTITION + 1;
/// A window whose requests are all on the wire and still unanswered after
/// this long is on a distant (or slow) link: another window may go.
/// Loopback and LAN answers come within a few milliseconds.
const LONG_LINK: Duration = Duration::from_millis(40);
/// Windows read for a distant link are this many times larger: a
/// partition's five slots then carry batches large enough to fill a long
/// round trip. Memory in flight grows with it (about 3 MiB of decoded
/// events per window); only a distant link pays that. Under a bandwidth
/// cap none of this applies: the cap bounds the rate anyway, and more or
/// larger windows in flight would make a higher priority wait longer.
const LONG_LINK_WINDOW_SCALE: usize = 3;
/// Per-record overhead counted against `max_batch_bytes`.
const RECORD_OVERHEAD: usize = 64;
/// How long in-flight requests may finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// After this many failed rounds in a row, reconnect from the bootstrap list.
const RECONNECT_AFTER_FAILURES: u32 = 3;
/// Configuration problems are logged at most this often (per topic).
const LOUD_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How long a broker keeps the state of an idle producer: Kafka's
/// `producer.id.expiration.ms`, 24 h by default since Kafka 3.4 (before,
/// the transactional id expiry, 7 days). A batch resent after longer may
/// be written again: the broker no longer knows it had it.
const PRODUCER_STATE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// The name of the failure of a partition without a leader.
const NO_LEADER: &str = "LEADER_NOT_AVAILABLE";

/// The name of a failure of ferry's own storage (not of the uplink).
const LOCAL_STORAGE: &str = "OUTBOX";

/// The loop shows it is alive at least this often while it waits.
const HEARTBEAT: Duration = Duration::from_secs(1);

pub use record_writer::{TS_CORRECTED_HEADER, TS_UNSYNCED_HEADER};

/// The last lane started for each destination partition: the next lane of
/// that partition follows it (see [`flight`]), which keeps order per
/// partition across windows.
/// With it, the producer id its batches carry.
type Chain = HashMap<(String, i32), (Predecessor, Option<i64>)>;

pub use crate::stats::ForwardState;

/// What the forwarder needs from the config: its own `[kafka]` section
/// and the sections that steer delivery.
pub struct Settings<'a> {
    pub node_id: &'a str,
    pub kafka: &'a KafkaConfig,
    pub retry: &'a RetryConfig,
    pub breaker: &'a BreakerConfig,
    pub routes: &'a [RouteConfig],
    /// The outbox's durability (plans are stored as durably as events).
    pub durability: Durability,
    /// Where heartbeats go (`[heartbeat] topic`), if anywhere.
    pub heartbeat_topic: Option<&'a str>,
}

/// The sections a reload (SIGHUP) may change while ferry runs.
#[derive(Debug, Clone)]
pub struct Reload {
    pub kafka: KafkaConfig,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub routes: Vec<RouteConfig>,
}

pub struct Forwarder {
    config: KafkaConfig,
    /// Where the heartbeat waiting in the outbox goes (a side record).
    heartbeat_topic: Option<String>,
    durability: Durability,
    codec: Codec,
    /// The node id's hash, as stored runs record it (`outbox::run`).
    node_hash: u32,
    node_id: Arc<str>,
    outbox: Outbox,
    stats: Arc<Stats>,
    router: Router,
    backoff: Backoff,
    breaker: Breaker,
    cluster: Option<Cluster>,
    streams: Streams,
    sticky: Sticky,
    failures: u32,
    parked: ParkedTopics,
    log: LogLimiter,
    loud: HashMap<String, LogLimiter>,
    clock: crate::clock::SystemClock,
    writers: WriterPool,
    /// Bytes on the wire, and the bandwidth cap, shared by all connections.
    uplink: Arc<Uplink>,
    /// Raw bytes per delivery window: smaller under a bandwidth cap, so a
    /// window takes about half a second of the cap and a higher-priority
    /// window never waits long for a slot.
    window_raw_bytes: usize,
    /// Configs reloaded while running (SIGHUP).
    reloads: watch::Receiver<Option<Arc<Reload>>>,
    /// Each partition's request slots, shared by its lanes of all windows.
    slots: Slots,
    /// What the main loop watches of the lanes in flight.
    flight: Arc<Flight>,
    /// The cluster id the producer ids in `streams` came from (see
    /// [`Forwarder::bind_cluster`]).
    streams_cluster: Option<String>,
    /// Why some deliveries of this run were at least once (in `ferry
    /// status` until ferry restarts).
    at_least_once: Option<String>,
    /// When each partition last acknowledged a batch: a lane of a
    /// partition without a recent one sends its first batch alone.
    confirmed: Confirmed,
    /// Loss markers and dead letters to their topics: their own backoff.
    side: side::SideRetry,
    /// Partitions without a leader, and the windows put aside for them.
    deferral: Deferral,
}

/// Tell the outbox's writer the codec and batch limits runs are cut for.
fn publish_run_limits(outbox: &Outbox, kafka: &KafkaConfig) {
    outbox.run_shapes.set_limits(
        codec_of(kafka),
        kafka.max_batch_events as usize,
        kafka.max_batch_bytes as usize,
    );
}

/// The record-batch codec `kafka` asks for.
fn codec_of(kafka: &KafkaConfig) -> Codec {
    match kafka.compression {
        Compression::Lz4 => Codec::Lz4,
        Compression::Zstd => Codec::Zstd(kafka.zstd_level),
        Compression::None => Codec::None,
    }
}

impl Forwarder {
    pub fn new(
        config: Settings<'_>,
        outbox: Outbox,
        stats: Arc<Stats>,
        reloads: watch::Receiver<Option<Arc<Reload>>>,
    ) -> Self {
        let seed = seed_from_environment(config.node_id);
        let cap = config.kafka.max_bytes_per_second;
        publish_run_limits(&outbox, config.kafka);
        stats
            .uplink_cap
            .store(cap, std::sync::atomic::Ordering::Relaxed);
        Self {
            config: config.kafka.clone(),
            heartbeat_topic: config.heartbeat_topic.map(str::to_string),
            durability: config.durability,
            codec: codec_of(config.kafka),
            node_id: Arc::from(config.node_id),
            node_hash: node_hash(config.node_id),
            outbox,
            stats,
            router: Router::new(config.routes),
            backoff: Backoff::new(config.retry, seed),
            breaker: Breaker::new(config.breaker.clone(), seed.rotate_left(17)),
            cluster: None,
            streams: Streams::default(),
            sticky: Sticky::seeded(seed as u32),
            failures: 0,
            parked: ParkedTopics::new(seed, config.retry.max),
            log: LogLimiter::new(Duration::from_secs(10)),
            loud: HashMap::new(),
            clock: crate::clock::SystemClock::default(),
            writers: WriterPool::default(),
            uplink: Arc::new(Uplink::new(cap)),
            window_raw_bytes: window_raw_bytes(cap),
            reloads,
            slots: Slots::default(),
            flight: Arc::new(Flight::default()),
            streams_cluster: None,
            at_least_once: None,
            confirmed: Confirmed::default(),
            side: side::SideRetry::new(config.retry, seed.rotate_left(29)),
            deferral: Deferral::new(seed.rotate_left(41)),
        }
    }

    /// Take a reloaded config, if one came: routes, batching, compression,
    /// the cap, side topics, retry and breaker settings apply to the next
    /// window; changed brokers, TLS, SASL or timeouts to the next
    /// connection (the cluster is rebuilt; requests in flight finish on the
    /// old connections). Windows already planned go as planned.
    fn take_reload(&mut self) {
        if !self.reloads.has_changed().unwrap_or(false) {
            return;
        }
        let Some(new) = self.reloads.borrow_and_update().clone() else {
            return;
        };
        let old = &self.config;
        let k = &new.kafka;
        let reconnect = old.brokers != k.brokers
            || old.client_id != k.client_id
            || old.connect_timeout != k.connect_timeout
            || old.request_timeout != k.request_timeout
            || old.allow_auto_create_topics != k.allow_auto_create_topics
            || old.tls != k.tls
            || old.sasl != k.sasl;
        if reconnect {
            info!("reload: broker connection settings changed; new connections use them");
            self.cluster = None;
        }
        if old.max_bytes_per_second != k.max_bytes_per_second {
            self.uplink.set_cap(k.max_bytes_per_second);
            self.stats
                .uplink_cap
                .store(k.max_bytes_per_second, std::sync::atomic::Ordering::Relaxed);
        }
        self.window_raw_bytes = window_raw_bytes(k.max_bytes_per_second);
        self.codec = codec_of(k);
        publish_run_limits(&self.outbox, k);
        self.router = Router::new(&new.routes);
        self.backoff = Backoff::new(&new.retry, self.backoff_seed());
        self.breaker.reconfigure(new.breaker.clone());
        self.config = k.clone();
        info!("reload: routes, batching, compression, cap, retry and breaker settings applied");
    }

    fn backoff_seed(&self) -> u64 {
        seed_from_environment(&self.node_id) ^ self.stats.retries.load(Relaxed)
    }

    pub async fn run(mut self, mut shutdown: Shutdown) {
        // Where each priority's next window is read from, and which
        // priority goes next.
        let mut cursors = [0i64; PRIORITY_LEVELS];
        let mut schedule = Schedule::new(self.window_raw_bytes);
        // The window just read: its priority, the order tried, raw bytes.
        let mut read_from = (0u8, [0u8; PRIORITY_LEVELS], 0usize);
        // Memory handed back since the last window was launched.
        let mut released = true;
        let mut running: VecDeque<Running> = VecDeque::new();
        let mut chain: Chain = HashMap::new();
        // The windows in flight wait on a distant link: one more may go.
        let mut widen = false;
        // The last window to finish took longer than [`LONG_LINK`].
        let mut long_link = false;
        // Said once in the log: the link looks distant.
        let mut said_distant = false;
        self.publish_state(None);
        // Windows planned (and maybe sent) before a crash go first, as planned.
        let recovered = self.recover_plans().await;
        if !recovered.is_empty() {
            info!(
                "{} delivery window(s) planned before ferry stopped are sent again first, with the same producer ids and sequences",
                recovered.len()
            );
            for window in recovered {
                match self.deliver(window, &mut shutdown, false).await {
                    Delivery::Done | Delivery::Reread => {}
                    Delivery::Shutdown => {
                        info!("forwarder stopped");
                        return;
                    }
                }
            }
        }
        // A stored producer id only replays the windows stored with it: new
        // events go under a producer id obtained in this run. Two gateways
        // started from copies of one data dir (a cloned SD card) would
        // otherwise number different events with the same id and
        // sequences, and the broker would drop one gateway's as duplicates.
        // (Partitions with windows put aside go on under their stored id,
        // behind those windows.)
        let aside = self.deferral.partitions_aside();
        self.streams.reset_except(&aside);
        loop {
            self.stats.beat_forward();
            self.account_uplink();
            self.take_reload();
            self.note_in_flight(&running);
            if running.is_empty() {
                chain.clear();
                self.slots.trim();
                if !self.wait_for_breaker(&mut shutdown).await {
                    break;
                }
                if self.unpark_expired() {
                    // Their blocks were skipped: read from the start again.
                    cursors = [0; PRIORITY_LEVELS];
                }
                // Windows put aside for a partition without a leader, due
                // for another look (once the windows in flight are done,
                // so a partition's lanes keep their order).
                if self.deferral.due(Instant::now()) && !self.retry_put_aside(&mut shutdown).await {
                    break;
                }
            }
            self.deliver_side_records().await;
            // A half-open breaker lets one window through as its probe. A
            // parked topic due for a retry lets the windows in flight finish
            // first; then the outbox is read from the start (above).
            let limit = if widen {
                MAX_WINDOWS_IN_FLIGHT
            } else {
                WINDOWS_IN_FLIGHT
            };
            let distant = widen || long_link;
            let (events, raw) = if distant && self.config.max_bytes_per_second == 0 {
                (
                    WINDOW_EVENTS * LONG_LINK_WINDOW_SCALE,
                    WINDOW_RAW_BYTES * LONG_LINK_WINDOW_SCALE,
                )
            } else {
                (WINDOW_EVENTS, self.window_raw_bytes)
            };
            // What the memory budget leaves for another window.
            let allowance = window_allowance(
                raw,
                running.iter().map(|r| r.window.raw_bytes).sum(),
                self.config.max_in_flight_bytes as usize,
                !running.is_empty(),
            );
            let room = running.is_empty()
                || (running.len() < limit
                    && allowance.is_some()
                    && self.breaker.state(Instant::now()) == State::Closed);
            let mut window = None;
            if let (true, Some(raw)) = (room, allowance)
                && !self.unpark_due()
                && !self.deferral.due(Instant::now())
            {
                let skip = self.parked_sources();
                let skip_blocks = self.deferral.blocks();
                let order = schedule.order();
                // Beside windows in flight the budget is strict.
                let limits = ReadLimits {
                    max_events: events,
                    max_raw_bytes: raw,
                    strict_bytes: !running.is_empty(),
                    runs_decoded: distant,
                };
                let blocks = tokio::select! {
                    r = self.outbox.read_by_priority(cursors, order, limits, skip, skip_blocks) => r,
                    _ = shutdown.recv() => break,
                };
                match blocks {
                    Ok((priority, blocks)) if !blocks.is_empty() => {
                        let raw: usize = blocks.iter().map(|b| b.data.len()).sum();
                        read_from = (priority, order, raw);
                        window = Some(Window::new(cursors[priority as usize], blocks, !distant));
                    }
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
                    Ok((tasks, left)) => {
                        // Only a window that went counts against its
                        // priority's share (not one read while the uplink
                        // was down).
                        let (priority, order, raw) = read_from;
                        schedule.charge(&order, priority, raw);
                        cursors[priority as usize] = window.last();
                        released = false;
                        widen = false;
                        running.push_back(Running {
                            window,
                            tasks,
                            launched: Instant::now(),
                            left,
                        });
                        self.note_in_flight(&running);
                        continue;
                    }
                    // Not started: it is read again after the recovery
                    // (unless its plan was stored: then it goes as planned).
                    Err(f) => {
                        // Launched last: delivered after the windows in
                        // flight (a partition's sequences follow launch order).
                        let keep = window.saved.then_some(window);
                        match self
                            .recover(None, keep, &mut running, f, &mut shutdown)
                            .await
                        {
                            Some(Some(_)) => {
                                cursors = [0; PRIORITY_LEVELS];
                                continue;
                            }
                            Some(None) => continue,
                            None => break,
                        }
                    }
                }
            }
            // (Once widened, a window that was not launched means the
            // outbox had nothing more: then wait for the oldest. With the
            // memory budget spent, more windows could not go anyway.)
            if !widen
                && allowance.is_some()
                && self.link_is_long(&running, long_link, &mut shutdown).await
            {
                if !said_distant {
                    said_distant = true;
                    info!(
                        "the uplink is distant (answers take over {} ms): up to {MAX_WINDOWS_IN_FLIGHT} delivery windows of up to {} MiB in flight, {} KiB of events at most (kafka.max_in_flight_bytes)",
                        LONG_LINK.as_millis(),
                        WINDOW_RAW_BYTES * LONG_LINK_WINDOW_SCALE / (1024 * 1024),
                        self.config.max_in_flight_bytes / 1024
                    );
                }
                widen = true;
                continue;
            }
            let Some(Running {
                mut window,
                tasks,
                launched,
                ..
            }) = running.pop_front()
            else {
                if !self.idle(&mut shutdown, &mut released).await {
                    break;
                }
                continue;
            };
            let Some(result) = self
                .collect_until_shutdown(&mut window, tasks, &mut shutdown)
                .await
            else {
                // What was acknowledged during the grace period counts.
                self.complete_if_settled(window).await;
                break;
            };
            match result {
                Ok(()) => {
                    long_link = launched.elapsed() >= LONG_LINK;
                    self.complete(window).await
                }
                Err(f) => match self
                    .recover_or_put_aside(window, &mut running, f, &mut shutdown)
                    .await
                {
                    Some(Some(_)) => cursors = [0; PRIORITY_LEVELS],
                    Some(None) => {}
                    None => break,
                },
            }
        }
        // Windows still in flight at shutdown: requests on the wire may
        // finish; what Kafka acknowledged by then is recorded as delivered.
        let grace = async {
            for r in running {
                self.settle_at_shutdown(r).await;
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, grace).await;
        info!("forwarder stopped");
    }

    /// Before waiting for the oldest window in flight: whether the link
    /// shows it is distant — every lane in flight has sent all its batches
    /// and the oldest window is still unanswered after [`LONG_LINK`] — so
    /// that one more window may go. Returns `false` as soon as the oldest
    /// window has finished (or with no room for another, or at shutdown).
    /// `known`: the last window to finish already took longer than that.
    async fn link_is_long(
        &self,
        running: &VecDeque<Running>,
        known: bool,
        shutdown: &mut Shutdown,
    ) -> bool {
        let Some(oldest) = running.front() else {
            return false;
        };
        if running.len() >= MAX_WINDOWS_IN_FLIGHT
            || self.config.max_bytes_per_second > 0
            || self.breaker.state(Instant::now()) != State::Closed
        {
            return false;
        }
        let due = if known {
            oldest.launched
        } else {
            oldest.launched + LONG_LINK
        };
        loop {
            if oldest.left.load(Relaxed) == 0 || shutdown.is_shutdown() {
                return false;
            }
            let all_sent = self.flight.unsent() == 0;
            if all_sent && Instant::now() >= due {
                return true;
            }
            // Woken by any lane sending its last batch or ending, or when
            // the oldest window has waited long enough.
            tokio::select! {
                _ = self.flight.changed() => {}
                _ = tokio::time::sleep_until(due.into()), if all_sent => {}
                _ = shutdown.recv() => return false,
            }
        }
    }
}
