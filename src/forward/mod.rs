//! Forwarding to Kafka: reads the outbox a window of blocks at a time, the
//! priority each window comes from chosen by [`schedule`] and the blocks
//! of a priority in sequence order, routes and partitions each event, plans each
//! partition's events into record batches numbered by the idempotent
//! producer (the plan is stored before anything is sent, see [`plan`]),
//! produces them with up to five requests in flight per partition (which
//! keeps per-key order), and deletes the blocks only after Kafka has
//! acknowledged (or ferry dead-lettered) every event in them.
//!
//! Two windows are in flight at once, so the cores stay busy while the
//! last batches of one window are on the wire: a lane (one partition's
//! events of a window) starts producing only when the same partition's
//! lane of the window before has finished. When anything fails, the
//! windows in flight are brought to a stop and retried one after another.
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

mod aside;
pub mod config;
pub mod deferral;
pub mod flight;
pub mod lane;
pub mod parking;
pub mod plan;
pub mod probe;
mod recovery;
pub mod route;
pub mod schedule;
pub mod security;
mod side;
pub mod streams;

use crate::backoff::RetryConfig;
use crate::backoff::{Backoff, seed_from_environment};
use crate::breaker::BreakerConfig;
use crate::breaker::{Breaker, State};
use crate::kafka::cluster::Cluster;
use crate::kafka::errors::{Class, Failure};
use crate::kafka::partitioner::{Sticky, partition_for_key};
use crate::kafka::producer;
use crate::kafka::record_batch::Codec;
use crate::kafka::uplink::Uplink;
use crate::log_limit::LogLimiter;
use crate::outbox::config::Durability;
use crate::outbox::dead_letter::NewDeadLetter;
use crate::outbox::plan::{PlanSave, SavedWindow};
use crate::outbox::run::{KEYLESS, node_hash};
use crate::outbox::{Block, Outbox, ReadLimits};
use crate::pattern::PRIORITY_LEVELS;
use crate::shutdown::Shutdown;
use crate::stats::{Stats, now_ms};
use aside::only_deferred;
use config::{Compression, KafkaConfig};
use deferral::Deferral;
use flight::{Confirmed, Flight, Predecessor, Slots, Ticket};
use lane::{LaneJob, LaneOutcome, WriterPool};
use log::{debug, error, info, warn};
use parking::{ParkedTopics, Parking};
use plan::{Item, Lane, whole_stored_run};
use route::RouteConfig;
use route::Router;
use schedule::Schedule;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use streams::{Idempotence, Streams};
use tokio::sync::watch;
use tokio::task::JoinSet;

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

pub use lane::{FERRY_ID_HEADER, TS_CORRECTED_HEADER, TS_UNSYNCED_HEADER};

fn abandon(lane: &mut Lane, blocks: &[Block], sources: &mut HashSet<String>) {
    lane.abandoned = true;
    for item in &lane.items[lane.done()..] {
        sources.insert(blocks[item.block as usize].topic.clone());
    }
}

/// A window read from the outbox, with its delivery progress.
struct Window {
    /// The cursor it was read after (to read it again if it never started).
    after: i64,
    blocks: Arc<Vec<Block>>,
    /// Its events' bytes, decompressed (a run's as stored, unless
    /// `runs_whole` is off): what it holds of the memory budget
    /// (`kafka.max_in_flight_bytes`).
    raw_bytes: usize,
    /// Its stored runs that fit go whole, as stored (`outbox::run`); off
    /// on a distant link, where they are decoded and cut into batches as
    /// large as the limits allow: a partition takes five batches per
    /// round trip, and a run holds only one commit's events of its
    /// partition (about 100 at full speed), so there the round trip, not
    /// the CPU, bounds the rate.
    runs_whole: bool,
    /// Planned on its first attempt.
    lanes: Option<Vec<Lane>>,
    /// Its plan is in the outbox (removed with its blocks).
    saved: bool,
    dead: Vec<NewDeadLetter>,
    first_attempt_ms: i64,
    /// The cluster id its plan's producer ids belong to (`None`: not
    /// planned yet, or stored by a ferry that did not record it).
    cluster: Option<String>,
    /// Said once: it was first sent longer ago than a broker keeps an
    /// idle producer's state (see [`PRODUCER_STATE_EXPIRY`]).
    expiry_said: bool,
}

impl Window {
    fn new(after: i64, blocks: Vec<Block>, runs_whole: bool) -> Self {
        Self {
            after,
            raw_bytes: blocks
                .iter()
                .map(|b| b.held_bytes_decoded(!runs_whole))
                .sum(),
            runs_whole,
            blocks: Arc::new(blocks),
            lanes: None,
            saved: false,
            dead: Vec::new(),
            first_attempt_ms: now_ms(),
            cluster: None,
            expiry_said: false,
        }
    }

    /// The cursor after this window.
    fn last(&self) -> i64 {
        self.blocks.last().map_or(self.after, |b| b.seq_first)
    }

    /// Its id in the outbox's plans: its first block.
    fn id(&self) -> i64 {
        self.blocks.first().map_or(self.after, |b| b.seq_first)
    }

    /// A window rebuilt from its stored plan's `blocks` (not empty), as
    /// stored: its cluster and when it was first stored (lanes apart).
    fn from_stored(blocks: Vec<Block>, stored: &SavedWindow) -> Self {
        // (Its batches were cut when it was planned: a run cut whole
        // then goes as stored again.)
        let mut window = Window::new(blocks[0].seq_first - 1, blocks, true);
        window.saved = true;
        window.cluster = stored.cluster.clone();
        if stored.saved_ms > 0 {
            window.first_attempt_ms = stored.saved_ms;
        }
        window
    }

    /// Its plan as stored: the lanes with events left, and `cluster`.
    fn saved_form(&self, lanes: &[Lane], cluster: Option<String>) -> SavedWindow {
        SavedWindow {
            id: self.id(),
            blocks: self.blocks.iter().map(|b| b.seq_first).collect(),
            plan: plan::encode(lanes),
            cluster,
            saved_ms: self.first_attempt_ms,
        }
    }
}

/// A window whose lane jobs are running.
struct Running {
    window: Window,
    tasks: JoinSet<(usize, LaneOutcome)>,
    launched: Instant,
    /// Its lanes still running.
    left: Arc<AtomicUsize>,
}

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

/// Raw bytes per window under a cap of `cap` bytes per second (0: none).
fn window_raw_bytes(cap: u64) -> usize {
    match cap {
        0 => WINDOW_RAW_BYTES,
        cap => ((cap / 2) as usize).clamp(16 * 1024, WINDOW_RAW_BYTES),
    }
}

/// The smallest window worth reading while others are in flight.
const MIN_WINDOW_RAW_BYTES: usize = 64 * 1024;

/// The raw bytes the next window may hold: `wanted`, within what the
/// memory budget `budget` leaves beside the `in_flight` bytes of the
/// windows running; `None` (wait for one to finish) when that is under a
/// useful window. With none running a window always goes.
fn window_allowance(
    wanted: usize,
    in_flight: usize,
    budget: usize,
    any_running: bool,
) -> Option<usize> {
    if !any_running {
        return Some(wanted.min(budget));
    }
    let left = budget.saturating_sub(in_flight);
    (left >= wanted.min(MIN_WINDOW_RAW_BYTES)).then_some(wanted.min(left))
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

    /// Move the uplink's byte counts and cap waits into the stats (and so
    /// into the outbox with the next finished window).
    fn account_uplink(&self) {
        let sent = self.uplink.take_sent();
        if sent > 0
            && let Ok(mut u) = self.stats.uplink.lock()
        {
            u.add(sent, now_ms());
        }
        self.stats.uplink_held_ms.fetch_add(
            self.uplink.take_held_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
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

    /// The memory the windows in flight hold, for status and metrics.
    fn note_in_flight(&self, running: &VecDeque<Running>) {
        let bytes: usize = running.iter().map(|r| r.window.raw_bytes).sum();
        self.stats.in_flight_bytes.store(bytes as u64, Relaxed);
        self.stats
            .in_flight_peak_bytes
            .fetch_max(bytes as u64, Relaxed);
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

    /// At shutdown: let a running window's lanes finish for a moment, and
    /// if that delivered all of it, record it.
    async fn settle_at_shutdown(&mut self, r: Running) {
        let Running {
            mut window, tasks, ..
        } = r;
        let collected =
            tokio::time::timeout(SHUTDOWN_GRACE, self.collect(&mut window, tasks)).await;
        if matches!(collected, Ok(Ok(()))) {
            self.complete(window).await;
        }
    }

    /// A window cut short by shutdown: record it if everything in it was
    /// delivered anyway.
    async fn complete_if_settled(&mut self, window: Window) {
        if window
            .lanes
            .as_ref()
            .is_some_and(|lanes| lanes.iter().all(Lane::settled))
        {
            self.complete(window).await;
        }
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

    /// Something failed with windows in flight: count the failure once
    /// (a refused record is not a failure of the uplink), let every running
    /// lane come to a stop (lanes behind a failed one give up at once), then
    /// deliver the windows one after another in the order they were
    /// launched — `collected`, the oldest, whose failure this is, first;
    /// `newest`, one that failed to launch, last — retrying with backoff.
    /// `None` on shutdown; `Some(Some(cursor))` when the outbox must be
    /// read again from `cursor`.
    async fn recover(
        &mut self,
        collected: Option<Window>,
        newest: Option<Window>,
        running: &mut VecDeque<Running>,
        failure: Failure,
        shutdown: &mut Shutdown,
    ) -> Option<Option<i64>> {
        let counted = failure.class != Class::PermanentRecord;
        if counted {
            self.on_failure(&failure);
        }
        let mut windows: Vec<Window> = collected.into_iter().collect();
        for Running {
            mut window, tasks, ..
        } in running.drain(..)
        {
            // Their own failures are retried below; what they finished counts.
            let _ = self
                .collect_until_shutdown(&mut window, tasks, shutdown)
                .await?;
            windows.push(window);
        }
        windows.extend(newest);
        if windows.is_empty() && counted && !self.pause(shutdown).await {
            return None;
        }
        let mut failed = counted;
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
        let next_unpark = match (self.parked.next_due(), self.deferral.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
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
                self.writers.release();
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
                if window.lanes.is_none() && !window.saved {
                    // Nothing sent yet: read the window afresh, which
                    // also leaves out what was dropped or parked meanwhile.
                    return Delivery::Reread;
                }
            }
            if shutdown.is_shutdown() || !self.wait_for_breaker(shutdown).await {
                return Delivery::Shutdown;
            }
            // Half-open lets one probe at a time (one window at a time here).
            self.breaker.try_acquire(Instant::now());
            let Some(result) = until_shutdown(self.attempt(&mut window), shutdown).await else {
                self.complete_if_settled(window).await;
                return Delivery::Shutdown;
            };
            match result {
                Ok(()) => {
                    self.complete(window).await;
                    return Delivery::Done;
                }
                // Only lanes of partitions without a leader are left: they
                // wait aside, the rest goes on.
                Err(f) if only_deferred(&window) => match self.put_aside(window).await {
                    Ok(()) => return Delivery::Done,
                    Err(back) => {
                        window = *back;
                        self.on_failure(&f);
                        failed = true;
                    }
                },
                // A refused record is dead-lettered and its lane sent
                // again at once: not a failure of the uplink.
                Err(f) if f.class == Class::PermanentRecord => failed = false,
                Err(f) => {
                    self.on_failure(&f);
                    failed = true;
                }
            }
        }
    }

    /// Every event of `window` is acknowledged, dead-lettered or held for a
    /// parked topic: remove its blocks (but the held ones) and its plan, and
    /// store its dead letters.
    async fn complete(&mut self, mut window: Window) {
        debug!(
            "window of {} blocks delivered {} ms after its first attempt",
            window.blocks.len(),
            now_ms() - window.first_attempt_ms
        );
        self.on_success();
        self.account_uplink();
        let held = self.held_blocks(&window.blocks, window.lanes.as_deref().unwrap_or(&[]));
        let finished: Vec<i64> = window
            .blocks
            .iter()
            .map(|b| b.seq_first)
            .filter(|s| !held.contains(s))
            .collect();
        let plans = if window.saved {
            vec![window.id()]
        } else {
            Vec::new()
        };
        if let Err(e) = self
            .outbox
            .finish(finished, std::mem::take(&mut window.dead), plans)
            .await
        {
            // Delivered but still stored: they go again after a restart,
            // with their stored plan, and the broker drops them.
            self.log.error(&format!(
                "cannot remove delivered events from the outbox: {e}"
            ));
        }
    }

    /// Producer ids and sequences belong to one cluster (KIP-98: the
    /// broker keeps producer state per cluster). When the brokers now name
    /// another cluster id than the streams were numbered for (a reload to
    /// other brokers, a cluster rebuilt, a data dir moved), the streams
    /// start afresh with ids of this cluster, and planned lanes are cut and
    /// numbered again: their events go at least once, and ferry says so.
    fn bind_cluster(&mut self, window: &mut Window) {
        let Some(current) = self
            .cluster
            .as_ref()
            .and_then(|c| c.cluster_id())
            .map(str::to_string)
        else {
            return;
        };
        if let Some(old) = self
            .streams_cluster
            .as_deref()
            .filter(|old| *old != current)
        {
            warn!(
                "the brokers now belong to Kafka cluster {current}, not {old}: ferry takes new producer ids there; events planned for {old} and not yet acknowledged are sent again at least once"
            );
            self.streams.reset();
            self.at_least_once = Some(format!("events planned for cluster {old}"));
            self.publish_state(None);
        }
        self.streams_cluster = Some(current.clone());
        match window.cluster.as_deref() {
            Some(planned) if planned != current => {
                if let Some(lanes) = window.lanes.as_mut() {
                    for lane in lanes.iter_mut().filter(|l| !l.settled()) {
                        lane.replan = true;
                    }
                }
                warn!(
                    "a delivery window planned for Kafka cluster {planned} goes to cluster {current} under new producer ids: its events are sent at least once"
                );
                self.at_least_once = Some(format!("events planned for cluster {planned}"));
                self.publish_state(None);
            }
            _ => {}
        }
        window.cluster = Some(current);
    }

    fn on_success(&mut self) {
        if self.failures > 0 {
            info!("uplink to Kafka is working again");
            self.side.uplink_back();
        }
        self.failures = 0;
        self.backoff.reset();
        self.breaker.on_success();
        self.stats.set_uplink_up(true);
        self.publish_state(None);
    }

    fn on_failure(&mut self, f: &Failure) {
        if f.name == LOCAL_STORAGE {
            // The outbox, not the uplink, failed: no breaker trip, no
            // reconnect; the backoff alone spaces the retries.
            self.stats.retries.fetch_add(1, Relaxed);
            self.log.error(&format!("{} (retrying)", f.message));
            self.publish_state(Some(f));
            return;
        }
        self.failures += 1;
        self.stats.produce_errors.fetch_add(1, Relaxed);
        self.stats.retries.fetch_add(1, Relaxed);
        self.stats.set_uplink_up(false);
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
            if let Some(c) = self.cluster.as_mut() {
                c.reset();
            }
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
            parked_topics: self.parked.names(),
            waiting_for_leader: self.deferral.summary(),
            side_records: self.side.problem.clone(),
            delivery: match self.streams.idempotence {
                Idempotence::On(_) => match &self.at_least_once {
                    Some(why) => format!("exactly-once; at-least-once this run for {why}"),
                    None => "exactly-once".into(),
                },
                Idempotence::Off => "at-least-once".into(),
                Idempotence::Unknown => "not connected yet".into(),
            },
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
    /// growing, jittered delay has passed; a topic Kafka does not know yet
    /// is first retried on a short schedule (it may be being created).
    fn park(&mut self, topic: &str, sources: impl IntoIterator<Item = String>, f: &Failure) {
        let missing = f.name == "UNKNOWN_TOPIC_OR_PARTITION" || f.name == "LEADER_NOT_AVAILABLE";
        let Parking { delay, short } =
            self.parked
                .park(topic, sources, missing, &f.message, Instant::now());
        if short {
            let msg = format!(
                "topic {topic}: {} [{}]; its events are kept and retried shortly (in {} ms), other topics go on",
                f.message,
                f.name,
                delay.as_millis()
            );
            self.loud
                .entry(topic.to_string())
                .or_insert_with(|| LogLimiter::new(LOUD_LOG_INTERVAL))
                .warn(&msg);
            self.publish_state(Some(f));
            return;
        }
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
        self.parked.held_sources()
    }

    /// A parked topic is due for its retry.
    fn unpark_due(&self) -> bool {
        self.parked.due(Instant::now())
    }

    /// Lift parks whose time has come; true if any was lifted.
    fn unpark_expired(&mut self) -> bool {
        let lifted = self.parked.lift_due(Instant::now());
        for (t, reason) in &lifted {
            debug!("topic {t}: retrying after park ({reason})");
            // Ask Kafka about it afresh.
            if let Some(c) = self.cluster.as_mut() {
                c.forget_topic(t);
            }
        }
        !lifted.is_empty()
    }

    /// Blocks of this window that must stay: a lane of theirs was abandoned.
    fn held_blocks(&self, blocks: &[Block], lanes: &[Lane]) -> HashSet<i64> {
        let mut held = HashSet::new();
        for lane in lanes.iter().filter(|l| l.abandoned) {
            for item in &lane.items[lane.done()..] {
                held.insert(blocks[item.block as usize].seq_first);
            }
        }
        held
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

    /// Say so when `window` is resent after longer than a broker keeps an
    /// idle producer's state: if its batches reached the broker before,
    /// they may be written again (at least once).
    fn note_expiry(&mut self, window: &mut Window) {
        let age_ms = now_ms().saturating_sub(window.first_attempt_ms);
        if window.expiry_said || age_ms < PRODUCER_STATE_EXPIRY.as_millis() as i64 {
            return;
        }
        let resent = window.lanes.as_ref().is_some_and(|lanes| {
            lanes
                .iter()
                .any(|l| !l.settled() && l.sent_before > l.acked)
        });
        if !resent {
            return;
        }
        window.expiry_said = true;
        let hours = age_ms / 3_600_000;
        warn!(
            "a delivery window first sent {hours} h ago is sent again: longer than Kafka keeps an idle producer's state (producer.id.expiration.ms, 24 h by default), so batches the broker had may be written again (at least once; consumers can drop them by the ferry-id header)"
        );
        self.at_least_once = Some(format!(
            "a window resent after {hours} h (producer state may have expired)"
        ));
        self.publish_state(None);
    }

    /// One delivery attempt of what is left of `window`.
    async fn attempt(&mut self, window: &mut Window) -> Result<(), Failure> {
        self.note_expiry(window);
        let (tasks, _) = self.launch(window, None).await?;
        self.collect(window, tasks).await
    }

    /// How long the broker may take to replicate a produce (`timeout_ms`):
    /// the request timeout.
    fn produce_timeout_ms(&self) -> i32 {
        self.config
            .request_timeout
            .as_millis()
            .min(i32::MAX as u128) as i32
    }

    /// The cluster, set up on first use (TLS and SASL files are read then:
    /// a file changed since start-up is a configuration error now).
    fn cluster(&mut self) -> Result<&mut Cluster, Failure> {
        if self.cluster.is_none() {
            let config = security::connection_config(&self.config, self.uplink.clone())?;
            self.cluster = Some(Cluster::new(
                self.config.brokers.clone(),
                config,
                self.config.allow_auto_create_topics,
            ));
        }
        Ok(self.cluster.as_mut().expect("set above"))
    }

    /// Make sure every destination topic of `blocks` has been asked about
    /// (one Metadata request naming those not known yet).
    async fn ensure_topics(&mut self, blocks: &[Block]) -> Result<(), Failure> {
        let mut wanted: Vec<String> = Vec::new();
        self.cluster()?;
        {
            let cluster = self.cluster.as_ref().expect("set up above");
            for block in blocks {
                self.router.for_each_destination(&block.topic, |t| {
                    if cluster.partition_count(t).is_none() && !wanted.iter().any(|w| w == t) {
                        wanted.push(t.to_string());
                    }
                });
            }
        }
        let cluster = self.cluster()?;
        // Also when all are known: it opens the connection (and learns the
        // brokers) before anything is produced.
        if !wanted.is_empty() {
            cluster.refresh(&wanted).await?;
        } else {
            cluster.any_connection().await?;
        }
        Ok(())
    }

    /// A producer id from the broker, if any stream needs one now.
    async fn ensure_producer_ids(&mut self, lanes: &[Lane]) -> Result<(), Failure> {
        let needed = lanes
            .iter()
            .filter(|l| !l.settled())
            .any(|l| self.streams.needs_producer_id(&l.topic, l.partition));
        if !needed {
            return Ok(());
        }
        let conn = self.cluster()?.any_connection().await?;
        let id = producer::init_producer_id(&conn).await?;
        let first = self.streams.idempotence == Idempotence::Unknown;
        match id {
            Some(p) if first => info!(
                "Kafka gave ferry producer id {} (epoch {}): exactly-once delivery (idempotent producer)",
                p.producer_id, p.epoch
            ),
            Some(p) => info!(
                "new producer id {} for streams that start afresh",
                p.producer_id
            ),
            None => warn!(
                "broker {} gives no idempotent producer id (no InitProducerId, or IdempotentWrite not authorised): delivery is at-least-once; consumers can drop duplicates by the ferry-id header",
                conn.addr()
            ),
        }
        self.streams.producer_id_received(id);
        self.publish_state(None);
        Ok(())
    }

    /// Plan `window` (on its first attempt), cut and number the lanes that
    /// need it (storing the plan before anything is sent), and start a job
    /// for each lane with events left. With a `chain`, each job first waits
    /// for the previous lane of its partition (see [`Chain`]).
    async fn launch(
        &mut self,
        window: &mut Window,
        mut chain: Option<&mut Chain>,
    ) -> Result<(JoinSet<(usize, LaneOutcome)>, Arc<AtomicUsize>), Failure> {
        let blocks = window.blocks.clone();
        self.ensure_topics(&blocks).await?;
        self.bind_cluster(window);
        if window.lanes.is_none() {
            // Connecting may have taken a while: leave out blocks the outbox
            // dropped by policy meanwhile (they are counted and announced).
            let keep = self.still_stored(&blocks).await;
            let (lanes, undecodable) = self.plan(&blocks, &keep);
            if !undecodable.is_empty() {
                // Stored by this ferry and checksummed, so a bug: said
                // loudly, counted as quarantined, the rest goes on.
                error!(
                    "{} stored runs do not decode and cannot be sent (first: {}); quarantined",
                    undecodable.len(),
                    undecodable[0].2
                );
                self.outbox
                    .quarantine(undecodable)
                    .await
                    .map_err(|e| Failure::new(Class::Transient, LOCAL_STORAGE, e.to_string()))?;
            }
            window.lanes = Some(lanes);
        }
        let mut lanes = window.lanes.take().expect("planned above");
        for lane in &mut lanes {
            lane.deferred = false;
        }
        // Lanes whose topic got parked since the window was read.
        self.hold_parked(&blocks, &mut lanes);
        // Lanes whose topic Kafka does not know (yet).
        let missing: Vec<usize> = (0..lanes.len())
            .filter(|&i| {
                !lanes[i].abandoned
                    && self
                        .cluster
                        .as_ref()
                        .is_none_or(|c| c.partition_count(&lanes[i].topic).is_none())
            })
            .collect();
        for i in missing {
            let topic = lanes[i].topic.clone();
            let code = self
                .cluster
                .as_ref()
                .and_then(|c| c.topic(&topic))
                .map_or(3, |t| if t.error == 0 { 5 } else { t.error });
            let hint = if self.config.allow_auto_create_topics {
                "not known to Kafka yet (the broker may be creating it, or does not create topics: create it)"
            } else {
                "does not exist on the Kafka cluster (kafka.allow_auto_create_topics = false: create it)"
            };
            let f = Failure::from_code(code, &format!("topic {topic} {hint}"), None);
            self.abandon_topic(&blocks, &mut lanes, &topic, &f);
        }
        let result = self.cut_and_save(window, &mut lanes).await;
        window.lanes = Some(lanes);
        result?;
        // Every leader first: once a job is started, its outcome is needed.
        let mut leaders = Vec::new();
        let unsettled: Vec<(usize, String, i32)> = window
            .lanes
            .as_ref()
            .expect("set above")
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.settled())
            .map(|(i, l)| (i, l.topic.clone(), l.partition))
            .collect();
        // A partition without a leader holds up only its own lanes (when
        // the window's plan is stored: it can be put aside, see
        // [`deferral`]); so do partitions with lanes put aside already.
        let may_defer = window.saved;
        for (i, topic, partition) in unsettled {
            self.stats.beat_forward();
            if may_defer && self.deferral.waits(&topic, partition, Instant::now()) {
                Self::defer_lane(window, i);
                continue;
            }
            let cluster = self.cluster()?;
            let conn = match cluster.leader(&topic, partition).await {
                Ok(c) => c,
                Err(f) if may_defer && f.name == NO_LEADER => {
                    let delay = self.deferral.no_leader(&topic, partition, Instant::now());
                    self.loud(
                        &format!("leader:{topic}/{partition}"),
                        &format!(
                            "{}: its events wait (looked for again in {} ms); other partitions and topics go on",
                            f.message,
                            delay.as_millis()
                        ),
                    );
                    Self::defer_lane(window, i);
                    continue;
                }
                Err(f) => {
                    cluster.forget_topic(&topic);
                    return Err(f);
                }
            };
            let version = producer::produce_version(&conn, self.codec)?;
            leaders.push((i, conn, version));
        }
        let lanes = window.lanes.as_ref().expect("set above");
        let mut set = JoinSet::new();
        let left = Arc::new(AtomicUsize::new(0));
        let timeout_ms = self.produce_timeout_ms();
        for (i, conn, version) in leaders {
            let lane = &lanes[i];
            let producer_id = lane.producer.map(|p| p.producer_id);
            let (after, hand_over) = match chain.as_deref_mut() {
                Some(chain) => {
                    let (tx, rx) = flight::hand_over();
                    let after =
                        chain.insert((lane.topic.clone(), lane.partition), (rx, producer_id));
                    (after, Some(tx))
                }
                None => (None, None),
            };
            // A lane that follows one of the same producer id in its
            // partition starts sending only once that one has sent all
            // its batches, the first of them answered: the broker holds
            // the producer's state by then. Otherwise the first batch goes
            // alone, unless the partition acknowledged one of this
            // producer id lately.
            let follows_same_producer = after
                .as_ref()
                .is_some_and(|(_, id)| producer_id.is_some() && *id == producer_id);
            let probe = !follows_same_producer
                && lane.producer.is_some_and(|p| {
                    !self.confirmed.recently(
                        &lane.topic,
                        lane.partition,
                        p.producer_id,
                        Instant::now(),
                    )
                });
            let after = after.map(|(p, _)| p);
            let done = lane.done();
            let job = LaneJob {
                conn,
                version,
                topic: lane.topic.clone(),
                partition: lane.partition,
                blocks: blocks.clone(),
                items: lane.items[done..].to_vec(),
                batches: lane.batches[lane.acked..]
                    .iter()
                    .map(|b| plan::Batch {
                        start: b.start - done as u32,
                        ..*b
                    })
                    .collect(),
                sent_before: lane.sent_before.saturating_sub(lane.acked),
                producer: lane.producer,
                codec: self.codec,
                node_id: self.node_id.clone(),
                partitions: self
                    .cluster
                    .as_ref()
                    .and_then(|c| c.partition_count(&lane.topic))
                    .unwrap_or(0),
                node_hash: self.node_hash,
                stats: self.stats.clone(),
                clock: self.clock.clone(),
                timeout_ms,
                writers: self.writers.clone(),
                after,
                hand_over,
                slots: self.slots.of(&lane.topic, lane.partition),
                ticket: Ticket::new(&self.flight, &left),
                probe,
            };
            set.spawn(async move {
                let out = job.run().await;
                (i, out)
            });
        }
        Ok((set, left))
    }

    /// Cut the lanes that need it into numbered batches and, if anything
    /// changed, store the window's plan (and the streams it advanced)
    /// before any of it is sent.
    async fn cut_and_save(
        &mut self,
        window: &mut Window,
        lanes: &mut [Lane],
    ) -> Result<(), Failure> {
        self.ensure_producer_ids(lanes).await?;
        let max_events = self.config.max_batch_events as usize;
        let max_bytes = self.config.max_batch_bytes as usize;
        let blocks = window.blocks.clone();
        let mut advanced: Vec<(String, i32)> = Vec::new();
        for lane in lanes.iter_mut().filter(|l| !l.settled()) {
            let generation = self.streams.generation_of(&lane.topic, lane.partition);
            if !lane.replan && generation == Some(lane.generation) {
                continue;
            }
            let partitions = self
                .cluster
                .as_ref()
                .and_then(|c| c.partition_count(&lane.topic))
                .unwrap_or(0);
            let (codec, node) = (self.codec, self.node_hash);
            let stream = self.streams.get(&lane.topic, lane.partition);
            let size = |item: &Item| {
                blocks[item.block as usize]
                    .event_at(item.offset as usize)
                    .map_or(0, |e| e.payload_len())
                    + RECORD_OVERHEAD
            };
            let destination = (partitions, lane.partition);
            let runs_whole = window.runs_whole;
            let whole_run = |items: &[Item]| {
                whole_stored_run(&blocks, items, destination, codec, node).filter(|_| runs_whole)
            };
            let mut next = stream.next_sequence;
            lane.cut(
                (max_events, max_bytes),
                size,
                whole_run,
                stream.producer,
                stream.generation,
                &mut next,
            );
            stream.next_sequence = next;
            advanced.push((lane.topic.clone(), lane.partition));
        }
        if advanced.is_empty() && window.saved {
            return Ok(());
        }
        let Some(producer) = self.producer_meta() else {
            // Nothing to keep without idempotence: a resend is a duplicate anyway.
            return Ok(());
        };
        let save = PlanSave {
            window: window.saved_form(lanes, self.streams_cluster.clone()),
            streams: self.streams.stored(advanced),
            producer,
        };
        self.outbox.save_plan(save).await.map_err(|e| {
            Failure::new(
                Class::Transient,
                LOCAL_STORAGE,
                format!("cannot store the delivery plan before sending: {e}"),
            )
        })?;
        window.saved = true;
        Ok(())
    }

    /// Wait for the lane jobs of `window` and record what they achieved.
    async fn collect(
        &mut self,
        window: &mut Window,
        mut set: JoinSet<(usize, LaneOutcome)>,
    ) -> Result<(), Failure> {
        let blocks = window.blocks.clone();
        let Some(lanes) = window.lanes.as_mut() else {
            return Ok(());
        };
        let mut first_error: Option<Failure> = None;
        let mut refused: Option<Failure> = None;
        let mut parked: Vec<(String, Failure)> = Vec::new();
        // Dropping `set` (when shutdown cancels this attempt) aborts the tasks.
        while let Some(next) = set.join_next().await {
            let (i, out) = match next {
                Ok(r) => r,
                Err(e) => {
                    first_error
                        .get_or_insert(Failure::transient(format!("produce task failed: {e}")));
                    continue;
                }
            };
            let lane = &mut lanes[i];
            let done = lane.done();
            let acked_before = lane.acked;
            // Events of batches the broker wrote after an earlier one failed.
            let written: HashSet<i64> = out
                .written_out_of_turn
                .iter()
                .filter_map(|&r| lane.batches.get(acked_before + r))
                .flat_map(|b| &lane.items[b.start as usize..(b.start + b.len) as usize])
                .map(|item| item.seq)
                .collect();
            if let Some(p) = lane.producer.filter(|_| out.acked > 0) {
                self.confirmed.acknowledged(
                    &lane.topic,
                    lane.partition,
                    p.producer_id,
                    Instant::now(),
                );
            }
            lane.acked += out.acked;
            lane.sent_before = lane.sent_before.max(acked_before + out.sent);
            if !out.refused.is_empty() || out.halve {
                let f = out.failure.clone().unwrap_or_else(|| {
                    Failure::new(Class::PermanentRecord, "OTHER", "refused".into())
                });
                if out.halve {
                    let len = lane.batches.get(lane.acked).map_or(1, |b| b.len as usize);
                    lane.batch_limit = (len / 2).max(1);
                } else {
                    let now = now_ms();
                    let mut gone: Vec<usize> = Vec::new();
                    for (rel, reason) in &out.refused {
                        let idx = done + rel;
                        let Some(item) = lane.items.get(idx).copied() else {
                            continue;
                        };
                        let block = &blocks[item.block as usize];
                        let event = block.event_bytes(item.offset as usize).unwrap_or_default();
                        error!(
                            "event {}:{} (topic {}) refused by Kafka for good: {} ({reason}); moved to dead letters (`ferry dlq list`)",
                            self.node_id, item.seq, lane.topic, f.name
                        );
                        window.dead.push(NewDeadLetter {
                            seq: item.seq,
                            destination: lane.topic.clone(),
                            event: event.to_vec(),
                            reason: reason.clone(),
                            error_name: f.name.clone(),
                            attempts: 1,
                            first_attempt_ms: window.first_attempt_ms,
                            last_attempt_ms: now,
                        });
                        gone.push(idx);
                    }
                    // `gone` counts from the lane's start; drop the finished
                    // items first, then the refused ones.
                    let shift = lane.done();
                    lane.compact();
                    let mut k = shift;
                    lane.items.retain(|_| {
                        let keep = !gone.contains(&k);
                        k += 1;
                        keep
                    });
                    lane.batch_limit = usize::MAX;
                }
                // The batch and all after it in this partition were never
                // written: the stream starts afresh, the lane is cut again.
                lane.replan = true;
                self.streams.start_afresh(&lane.topic, lane.partition);
                if !written.is_empty() {
                    lane.drop_written(&written);
                }
                refused.get_or_insert(f);
                continue;
            }
            if !written.is_empty() {
                // A hole in the partition's sequence: what follows it goes
                // under a new epoch, without what was written already.
                lane.drop_written(&written);
                self.streams.start_afresh(&lane.topic, lane.partition);
            }
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
                    if f.class == Class::ProducerState {
                        lane.replan = true;
                        // Fenced (a newer epoch of ferry's producer id is
                        // known there): a new id. Otherwise the next epoch.
                        let fenced =
                            f.name == "INVALID_PRODUCER_EPOCH" || f.name == "PRODUCER_FENCED";
                        // Rare (each needs a broker error) and worth a line each.
                        warn!(
                            "{} [{}]: the broker no longer accepts ferry's producer state for this partition; it starts afresh under {}, and batches in flight then may arrive twice",
                            f.message,
                            f.name,
                            if fenced {
                                "a new producer id"
                            } else {
                                "the next epoch of its producer id"
                            }
                        );
                        if fenced {
                            self.streams.start_with_new_id(&lane.topic, lane.partition);
                        } else {
                            self.streams.start_afresh(&lane.topic, lane.partition);
                        }
                    }
                    // Look the leader up afresh next time.
                    if let Some(c) = self.cluster.as_mut() {
                        c.forget_topic(&lane.topic);
                    }
                    first_error.get_or_insert(f);
                }
            }
        }
        for (topic, f) in parked {
            self.abandon_topic(&blocks, lanes, &topic, &f);
        }
        self.hold_parked(&blocks, lanes);
        // A once-parked topic that now delivers is forgiven: its backoff resets.
        for lane in lanes.iter().filter(|l| !l.abandoned && l.settled()) {
            if self.parked.forgive(&lane.topic) {
                info!("topic {}: delivering again", lane.topic);
            }
        }
        if lanes.iter().all(Lane::settled) {
            return Ok(());
        }
        Err(first_error.or(refused).unwrap_or_else(|| {
            Failure::transient("a produce job stopped before its events were sent".into())
        }))
    }

    /// Abandon, in this window, the unfinished lanes of topics that are
    /// parked now (without parking them again): their blocks are held.
    fn hold_parked(&mut self, blocks: &[Block], lanes: &mut [Lane]) {
        for lane in lanes.iter_mut().filter(|l| !l.settled()) {
            if self.parked.is_parked(&lane.topic) {
                let mut sources = HashSet::new();
                abandon(lane, blocks, &mut sources);
                self.parked.hold(&lane.topic, sources);
                // Its numbered batches will not go as planned.
                if !lane.batches.is_empty() {
                    self.streams.start_afresh(&lane.topic, lane.partition);
                }
            }
        }
    }

    /// Park `topic` and abandon its lanes in this window.
    fn abandon_topic(&mut self, blocks: &[Block], lanes: &mut [Lane], topic: &str, f: &Failure) {
        let mut sources = HashSet::new();
        for lane in lanes
            .iter_mut()
            .filter(|l| l.topic == topic && !l.settled())
        {
            abandon(lane, blocks, &mut sources);
            if !lane.batches.is_empty() {
                self.streams.start_afresh(&lane.topic, lane.partition);
            }
        }
        self.park(topic, sources, f);
    }

    /// Assign every event of the window to its destination partitions. A
    /// stored run that fits every destination as stored goes whole to its
    /// partition without being decoded; one that does not is decoded and
    /// planned event by event (see `outbox::run`). Also tells the outbox
    /// each source topic's partition count, so that it cuts runs to fit.
    /// Returns the lanes and the runs that do not decode (to quarantine).
    fn plan(&mut self, blocks: &[Block], keep: &[bool]) -> (Vec<Lane>, Vec<(i64, u32, String)>) {
        /// A destination topic of this window: its partition count (and
        /// whether the cluster knows it), the partition its keyless events
        /// stick to (chosen on first use) and the lane of each partition
        /// (`u32::MAX`: none yet).
        struct Destination<'a> {
            topic: &'a str,
            partitions: i32,
            known: bool,
            sticky: Option<i32>,
            lanes: Vec<u32>,
        }
        let mut destinations: Vec<Destination> = Vec::new();
        let mut by_topic: HashMap<&str, usize> = HashMap::new();
        // The source topic last routed and its destinations: routes (glob
        // patterns) and partition counts are looked up when the source
        // topic changes, not for every block (a block holds one topic).
        let mut source: Option<&str> = None;
        let mut routed: Vec<usize> = Vec::new();
        let mut lanes: Vec<Lane> = Vec::new();
        let mut undecodable = Vec::new();
        let cluster = self.cluster.as_ref();
        // A lane's share of the window, with room for keys that crowd a
        // partition: reserved once, not grown event by event.
        let events: usize = blocks.iter().map(|b| b.count as usize).sum();
        let max_events = self.config.max_batch_events as usize;
        let max_bytes = self.config.max_batch_bytes as usize;
        for (b, block) in blocks.iter().enumerate() {
            if !keep[b] {
                continue;
            }
            let topic = block.topic.as_str();
            if source != Some(topic) {
                routed.clear();
                self.router.for_each_destination(topic, |to| {
                    let d = *by_topic.entry(to).or_insert_with(|| {
                        let known = cluster.and_then(|c| c.partition_count(to));
                        let partitions = known.unwrap_or(1).max(1);
                        destinations.push(Destination {
                            topic: to,
                            partitions,
                            known: known.is_some(),
                            sticky: None,
                            lanes: vec![u32::MAX; partitions as usize],
                        });
                        destinations.len() - 1
                    });
                    routed.push(d);
                });
                // Runs are cut for one partition count: the destinations'
                // when they all have the same, known one.
                let first = routed.first().map(|&d| &destinations[d]);
                let one_count = first.filter(|f| {
                    routed.iter().all(|&d| {
                        destinations[d].known && destinations[d].partitions == f.partitions
                    })
                });
                self.outbox
                    .run_shapes
                    .set_partitions(topic, one_count.map(|f| f.partitions));
                source = Some(topic);
            }
            let mut place = |dest: &mut Destination, partition: i32, item: Item| {
                // (Every choice is below the count; kept in range
                // regardless, as an event left out would be lost.)
                let partition = partition.rem_euclid(dest.partitions);
                let slot = &mut dest.lanes[partition as usize];
                if *slot == u32::MAX {
                    let mut lane = Lane::new(dest.topic.to_string(), partition);
                    let share = 2 * events / dest.partitions as usize;
                    lane.items.reserve(share.max(16).min(events));
                    lanes.push(lane);
                    *slot = (lanes.len() - 1) as u32;
                }
                lanes[*slot as usize].items.push(item);
            };
            if let Some(run) = &block.run {
                let h = &run.header;
                let as_stored = routed.iter().all(|&d| {
                    let dest = &destinations[d];
                    let partition = if h.partitions == KEYLESS {
                        0
                    } else {
                        h.partition
                    };
                    h.fits(dest.partitions, partition, self.codec, self.node_hash)
                        && block.count as usize <= max_events
                        && run.raw_bytes <= max_bytes
                });
                if as_stored {
                    for &d in &routed {
                        let dest = &mut destinations[d];
                        let partition = if h.partitions == KEYLESS {
                            *dest
                                .sticky
                                .get_or_insert_with(|| self.sticky.next_batch(dest.partitions))
                        } else {
                            h.partition
                        };
                        for (seq, offset) in block.places() {
                            let item = Item {
                                block: b as u32,
                                offset: offset as u32,
                                seq,
                            };
                            place(dest, partition, item);
                        }
                    }
                    continue;
                }
                if let Some(Err(why)) = block.decoded_run() {
                    undecodable.push((block.seq_first, block.count, why.to_string()));
                    continue;
                }
            }
            for (seq, offset, event) in block.events() {
                let item = Item {
                    block: b as u32,
                    offset: offset as u32,
                    seq,
                };
                for &d in &routed {
                    let dest = &mut destinations[d];
                    let partition = match event.key {
                        Some(k) => partition_for_key(k, dest.partitions),
                        None => *dest
                            .sticky
                            .get_or_insert_with(|| self.sticky.next_batch(dest.partitions)),
                    };
                    place(dest, partition, item);
                }
            }
        }
        debug!(
            "window of {} blocks planned onto {} partitions",
            blocks.len(),
            lanes.len()
        );
        (lanes, undecodable)
    }
}

/// `work`, unless shutdown comes first: then requests already on the wire
/// may finish for a moment (what does not is sent again after a restart,
/// with its stored plan) and the answer is `None`.
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn the_first_window_always_goes_within_the_budget() {
        assert_eq!(window_allowance(3 * MIB, 0, 8 * MIB, false), Some(3 * MIB));
        // A budget below one window: the window shrinks to it.
        assert_eq!(window_allowance(3 * MIB, 0, MIB, false), Some(MIB));
    }

    #[test]
    fn windows_in_flight_share_the_budget_and_the_last_one_is_cut_to_fit() {
        let budget = 8 * MIB;
        assert_eq!(
            window_allowance(3 * MIB, 3 * MIB, budget, true),
            Some(3 * MIB)
        );
        assert_eq!(
            window_allowance(3 * MIB, 6 * MIB, budget, true),
            Some(2 * MIB)
        );
        // What is left is under a useful window: wait for one to finish.
        let almost = budget - MIN_WINDOW_RAW_BYTES + 1;
        assert_eq!(window_allowance(3 * MIB, almost, budget, true), None);
        assert_eq!(window_allowance(3 * MIB, budget + MIB, budget, true), None);
    }

    #[test]
    fn small_windows_under_a_bandwidth_cap_use_what_is_left() {
        let small = 16 * 1024;
        assert_eq!(window_allowance(small, MIB - small, MIB, true), Some(small));
        assert_eq!(window_allowance(small, MIB - small + 1, MIB, true), None);
    }
}
