//! `ferry run`: open the outbox, bind the listeners, tell systemd we are
//! ready, forward until SIGTERM/SIGINT, then stop in order: listeners
//! first, then the forwarder, then the outbox writer after its last commit.

use crate::config::Config;
use crate::exit::{EXIT_FAILURE, EXIT_OK};
use crate::forward::{self, Forwarder};
use crate::ingest::{self, Context};
use crate::stats::Stats;
use crate::{memory, notify, outbox, shutdown};
use log::{error, info, warn};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often events older than `outbox.max_age` are looked for.
const AGE_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// How often `relaxed` durability syncs the write-ahead log (when anything
/// was committed): what a power cut can lose.
const RELAXED_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How long tasks may take to stop after the signal.
const STOP_GRACE: Duration = Duration::from_secs(8);

/// Why the daemon could not start (each is logged and ends `ferry run`
/// with exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot watch {signal}: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    #[error(transparent)]
    Listeners(#[from] ingest::BindError),
    #[error("cannot create data directory {}: {source}", dir.display())]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open lock file {}: {source}", path.display())]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another ferry is already running on data directory {} ({}: {source}); stop it first",
        dir.display(),
        path.display()
    )]
    Locked {
        dir: PathBuf,
        path: PathBuf,
        source: nix::Error,
    },
}

/// `source`: the config file given with `-c` (reloads read it again).
pub fn run(config: Config, source: Option<PathBuf>) -> i32 {
    let _lock = match lock_data_dir(&config) {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return EXIT_FAILURE;
        }
    };
    memory::fixed_thresholds();
    // Said before any listener takes an event: it changes how each is stamped.
    if crate::clock::declared_synchronized() {
        info!(
            "{}=1: the wall clock is taken as synchronised whatever the kernel says; events are not marked as recorded before synchronisation",
            crate::clock::CLOCK_SYNCHRONIZED_ENV
        );
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get().min(2))
        .unwrap_or(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("ferry-net")
        .on_thread_park(memory::on_worker_park)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    match runtime.block_on(serve(config, source)) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            error!("{e}");
            EXIT_FAILURE
        }
    }
}

async fn serve(config: Config, source: Option<PathBuf>) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let watch = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| StartError::Signal {
            signal: name,
            source,
        })
    };
    let mut sighup = watch(SignalKind::hangup(), "SIGHUP")?;
    let mut sigterm = watch(SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = watch(SignalKind::interrupt(), "SIGINT")?;

    let stats = Arc::new(Stats::default());
    let options = outbox::Options {
        node_id: config.node_id.clone(),
        record_loss: config.kafka.loss_topic.is_some(),
        priorities: crate::forward::route::Router::new(&config.routes).priorities(),
        run_shapes: Default::default(),
    };
    let (outbox, writer) =
        outbox::start(&config.outbox, config.outbox_path(), stats.clone(), options)?;
    let bound = ingest::bind_all(&config.listeners, &config.data_dir).await?;
    let (trigger, shutdown) = shutdown::channel();
    let ctx = Arc::new(Context {
        outbox: outbox.clone(),
        clock: crate::clock::SystemClock::default(),
        stats: stats.clone(),
        max_event_bytes: config.ingest.max_event_bytes as usize,
        node_id: config.node_id.clone(),
    });
    ingest::spawn_all(bound, ctx.clone(), &shutdown)?;
    let mut mqtt_links = crate::mqtt::Links::start(&config.mqtt, &config.retry, ctx, &shutdown);
    start_metrics(&config, &stats, &outbox, &shutdown).await;
    let settings = forward::Settings {
        node_id: &config.node_id,
        kafka: &config.kafka,
        retry: &config.retry,
        breaker: &config.breaker,
        routes: &config.routes,
        durability: config.outbox.durability,
        heartbeat_topic: config.heartbeat.topic.as_deref(),
    };
    let (reload_tx, reload_rx) = tokio::sync::watch::channel(None);
    tokio::spawn(
        Forwarder::new(settings, outbox.clone(), stats.clone(), reload_rx).run(shutdown.clone()),
    );
    tokio::spawn(evict_aged(outbox.clone(), shutdown.clone()));
    tokio::spawn(crate::heartbeat::run(
        config.heartbeat.clone(),
        crate::heartbeat::Sources {
            node_id: config.node_id.clone(),
            stats: stats.clone(),
            outbox: outbox.clone(),
            data_dir: config.data_dir.clone(),
            listeners: config
                .listeners
                .iter()
                .map(|l| l.describe(&config.data_dir))
                .chain(
                    config
                        .mqtt
                        .iter()
                        .map(|m| ("mqtt".to_string(), m.broker.clone())),
                )
                .collect(),
        },
        shutdown.clone(),
    ));
    if config.outbox.durability == crate::config::Durability::Relaxed {
        tokio::spawn(sync_relaxed(outbox.clone(), shutdown.clone()));
    }

    info!(
        "ferry {} ready: node {}, outbox {}, brokers {}",
        env!("CARGO_PKG_VERSION"),
        config.node_id,
        config.outbox_path().display(),
        config.kafka.brokers.join(",")
    );
    if let Err(e) = notify::notify("READY=1\nSTATUS=forwarding") {
        warn!("cannot notify systemd: {e}");
    }
    // Spawned only now: its first STATUS= must not reach systemd before READY=1.
    tokio::spawn(supervise(outbox.clone(), stats.clone(), shutdown.clone()));

    let mut running = config;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break }
            _ = sighup.recv() => reload(source.as_deref(), &mut running, &reload_tx, &outbox, &mut mqtt_links).await,
        }
    }
    drop(outbox);
    drop(mqtt_links);
    let _ = notify::notify("STOPPING=1");
    trigger.fire();
    drop(shutdown);
    if tokio::time::timeout(STOP_GRACE, trigger.wait_for_tasks())
        .await
        .is_err()
    {
        warn!("some tasks did not stop within {STOP_GRACE:?}; what was acknowledged is committed");
        return Ok(());
    }
    // Every outbox handle is gone now: the writer commits what is queued and ends.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    info!("stopped");
    Ok(())
}

/// SIGHUP (`systemctl reload ferry`): read the config again. A config
/// that does not load is refused with its file/line/key error and the
/// running one stays. Routes (and their priorities), batching,
/// compression, the bandwidth cap, side topics, brokers, TLS/SASL,
/// timeouts, retry and breaker settings apply at once (to the next
/// window and the next connection); MQTT links are added, changed (after
/// what they have in flight is stored and acknowledged) and removed; the
/// node id, data directory, outbox,
/// ingest limits, listeners and metrics need a restart, which the log says.
/// Environment overrides keep the values ferry started with.
async fn reload(
    source: Option<&Path>,
    running: &mut Config,
    forwarder: &tokio::sync::watch::Sender<Option<Arc<forward::Reload>>>,
    outbox: &outbox::Outbox,
    mqtt_links: &mut crate::mqtt::Links,
) {
    let _ = notify::notify("RELOADING=1");
    match Config::load(source) {
        Err(e) => error!("reload refused, the running config stays: {e}"),
        Ok(new) => {
            let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
                format!("{a:?}") == format!("{b:?}")
            };
            let mut restart = Vec::new();
            if new.node_id != running.node_id {
                restart.push("node_id");
            }
            if new.data_dir != running.data_dir {
                restart.push("data_dir");
            }
            if !same(&new.outbox, &running.outbox) {
                restart.push("[outbox]");
            }
            if !same(&new.ingest, &running.ingest) {
                restart.push("[ingest]");
            }
            if !same(&new.listeners, &running.listeners) {
                restart.push("[[listener]]");
            }
            if !same(&new.metrics, &running.metrics) {
                restart.push("[metrics]");
            }
            if new.heartbeat != running.heartbeat {
                restart.push("[heartbeat]");
            }
            if !restart.is_empty() {
                warn!(
                    "reload: {} changed; that needs a restart (systemctl restart ferry), until then the running values stay",
                    restart.join(", ")
                );
            }
            outbox
                .set_priorities(forward::route::Router::new(&new.routes).priorities())
                .await;
            forwarder.send_replace(Some(Arc::new(forward::Reload {
                kafka: new.kafka.clone(),
                retry: new.retry.clone(),
                breaker: new.breaker.clone(),
                routes: new.routes.clone(),
            })));
            running.kafka = new.kafka;
            running.retry = new.retry;
            running.breaker = new.breaker;
            running.routes = new.routes;
            mqtt_links.reload(&new.mqtt);
            running.mqtt = new.mqtt;
            info!(
                "config reloaded from {}",
                source.map_or("built-in defaults".into(), |p| p.display().to_string())
            );
        }
    }
    let _ = notify::notify("READY=1");
}

/// Metrics observe; they never stop ferry from forwarding: a bind failure
/// is logged loudly and ferry runs on without them.
async fn start_metrics(
    config: &Config,
    stats: &Arc<Stats>,
    outbox: &outbox::Outbox,
    shutdown: &shutdown::Shutdown,
) {
    let m = &config.metrics;
    if !m.listen.is_empty() {
        match tokio::net::TcpListener::bind(&m.listen).await {
            Ok(l) => {
                info!("metrics: http://{}/metrics and /health", m.listen);
                tokio::spawn(crate::metrics::serve(
                    l,
                    stats.clone(),
                    outbox.clone(),
                    config.node_id.clone(),
                    m.health_includes_kafka,
                    shutdown.clone(),
                ));
            }
            Err(e) => error!(
                "cannot serve metrics on {} (metrics.listen): {e}; running without /metrics and /health",
                m.listen
            ),
        }
    }
    if !m.textfile.is_empty() {
        tokio::spawn(crate::metrics::write_textfile(
            m.textfile.clone().into(),
            stats.clone(),
            config.node_id.clone(),
            shutdown.clone(),
        ));
    }
}

/// How often `STATUS=` is refreshed when there is no watchdog.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Keep systemd informed: `STATUS=` with uplink, breaker and backlog, and
/// `WATCHDOG=1` only while the outbox writer answers and the forwarder loop
/// is alive, so a wedged loop gets ferry restarted.
async fn supervise(outbox: outbox::Outbox, stats: Arc<Stats>, mut shutdown: shutdown::Shutdown) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = notify::watchdog_interval();
    let every = watchdog.unwrap_or(STATUS_INTERVAL);
    let mut wedged_logged = false;
    loop {
        let writer_ok = outbox.ping(every.min(Duration::from_secs(2))).await;
        let wedged = stats.forward_wedged_for();
        let forward_ok = wedged.is_none();
        if watchdog.is_some() {
            if writer_ok && forward_ok {
                let _ = notify::notify("WATCHDOG=1");
                wedged_logged = false;
            } else if !wedged_logged {
                warn!(
                    "not feeding the systemd watchdog: outbox writer {}, forwarder {}",
                    if writer_ok {
                        "answering"
                    } else {
                        "NOT answering"
                    },
                    if forward_ok {
                        "alive".to_string()
                    } else {
                        format!("silent for {} s", wedged.unwrap_or(0) / 1000)
                    }
                );
                wedged_logged = true;
            }
        }
        let _ = notify::notify(&status_line(&stats));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.recv() => return,
        }
    }
}

fn status_line(stats: &Stats) -> String {
    let s = stats.snapshot("", crate::stats::now_ms());
    format!(
        "STATUS=uplink {}, breaker {}, backlog {} events ({:.1} MiB){}",
        if s.uplink_up { "up" } else { "down" },
        // Empty until the forwarder first says (right after start).
        if s.forward.breaker.is_empty() {
            "closed"
        } else {
            &s.forward.breaker
        },
        s.backlog_events,
        s.backlog_bytes as f64 / 1048576.0,
        s.oldest_age_s
            .map(|a| format!(", oldest {a:.0} s"))
            .unwrap_or_default()
    )
}

async fn evict_aged(outbox: outbox::Outbox, mut shutdown: shutdown::Shutdown) {
    loop {
        outbox.evict_aged().await;
        tokio::select! {
            _ = tokio::time::sleep(AGE_CHECK_INTERVAL) => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// Under `relaxed` durability, what was committed reaches the disk within
/// about [`RELAXED_SYNC_INTERVAL`].
async fn sync_relaxed(outbox: outbox::Outbox, mut shutdown: shutdown::Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RELAXED_SYNC_INTERVAL) => outbox.sync_log().await,
            _ = shutdown.recv() => return,
        }
    }
}

/// One daemon per data directory: two would send every event twice.
fn lock_data_dir(config: &Config) -> Result<nix::fcntl::Flock<std::fs::File>, StartError> {
    let dir = &config.data_dir;
    crate::dirsync::create_dir_all(dir).map_err(|source| StartError::DataDir {
        dir: dir.clone(),
        source,
    })?;
    let path = dir.join("ferry.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::LockFile {
            path: path.clone(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, source)| StartError::Locked {
            dir: dir.clone(),
            path,
            source,
        },
    )
}
