//! The local client side of the frames protocol: `ferry send` (streams
//! event frames over the unix socket and counts acks) and `ferry status`
//! (asks the daemon; falls back to reading the outbox when it is down).

use crate::config::Config;
use crate::event::{Event, validate_topic};
use crate::exit::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::ingest::frame::{self, ErrorCode, Reply};
use crate::outbox::dead_letter::{self, DeadLetter, Filter};
use crate::outbox::offline::{self, OfflineError};
use crate::stats::{Snapshot, now_ms};
use std::io::{BufRead, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub struct SendArgs {
    pub topic: String,
    pub key: Option<String>,
    pub headers: Vec<String>,
    pub timestamp: Option<i64>,
    pub value: Option<String>,
}

/// Show at most this many refusals; the rest are counted.
const MAX_REPORTED_REFUSALS: u64 = 10;

/// What talking to the daemon, or reading the outbox without it, can
/// fail on; each says where and, where it helps, what to check.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to ferry at {}: {source} (is `ferry run` running with the same config/FERRY_DATA_DIR?)",
        socket.display()
    )]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("writing to ferry failed: {0}")]
    Write(std::io::Error),
    #[error("reading from ferry failed: {0}")]
    Read(std::io::Error),
    #[error("reading stdin failed: {0}")]
    Stdin(std::io::Error),
    #[error("ferry sent a reply of {0} bytes; giving up")]
    ReplyTooLarge(usize),
    #[error("ferry closed the connection ({code:?}): {message}")]
    Closed { code: ErrorCode, message: String },
    #[error("ferry sent a reply this client does not understand")]
    NotUnderstood,
    #[error("ferry closed the connection without answering")]
    NoAnswer,
    #[error("ferry sent a status this client cannot read: {0}")]
    BadStatus(serde_json::Error),
    #[error("ferry did not answer the status request")]
    NotStatus,
    #[error("no unix frames listener configured")]
    NoControlSocket,
    #[error(transparent)]
    Offline(#[from] OfflineError),
    #[error("cannot read dead letters from {}: {source}", path.display())]
    DeadLetters {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

pub fn send(config: &Config, args: &SendArgs) -> i32 {
    if let Err(e) = validate_topic(&args.topic) {
        eprintln!("ferry send: -t: {e}");
        return EXIT_USAGE;
    }
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    for h in &args.headers {
        match h.split_once('=') {
            Some((name, value)) if !name.is_empty() => headers.push((name, value.as_bytes())),
            _ => {
                eprintln!("ferry send: -H {h:?}: a header is NAME=VALUE with a non-empty NAME");
                return EXIT_USAGE;
            }
        }
    }
    let Some(socket) = config.control_socket() else {
        eprintln!(
            "ferry send: no unix listener with format \"frames\" is configured; add one to the config"
        );
        return EXIT_USAGE;
    };
    let stream = match connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry send: {e}");
            return EXIT_FAILURE;
        }
    };
    let writer_stream = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "ferry send: cannot use the socket {}: {e}",
                socket.display()
            );
            return EXIT_FAILURE;
        }
    };
    let key = args.key.clone();
    let topic = args.topic.clone();
    let timestamp = args.timestamp;
    let single = args.value.clone();
    let owned_headers: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
    // Write on one thread and read acks on this one, so a long stdin stream
    // is pipelined instead of waiting for each commit.
    let writer = std::thread::spawn(move || -> Result<u64, ClientError> {
        let headers: Vec<(&str, &[u8])> = owned_headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let mut out = BufWriter::with_capacity(64 * 1024, writer_stream);
        let mut frame_buf = Vec::new();
        let mut count = 0u64;
        let mut put = |value: &[u8], out: &mut BufWriter<UnixStream>| -> Result<(), ClientError> {
            frame_buf.clear();
            frame::encode_event(
                &mut frame_buf,
                &topic,
                key.as_deref().map(str::as_bytes),
                &headers,
                value,
                timestamp,
            );
            out.write_all(&frame_buf).map_err(ClientError::Write)
        };
        match single {
            Some(v) => {
                put(v.as_bytes(), &mut out)?;
                count = 1;
            }
            None => {
                let stdin = std::io::stdin();
                let mut input = stdin.lock();
                let mut line = Vec::new();
                loop {
                    line.clear();
                    let n = input
                        .read_until(b'\n', &mut line)
                        .map_err(ClientError::Stdin)?;
                    if n == 0 {
                        break;
                    }
                    let value = line.strip_suffix(b"\n").unwrap_or(&line);
                    let value = value.strip_suffix(b"\r").unwrap_or(value);
                    put(value, &mut out)?;
                    count += 1;
                }
            }
        }
        out.flush().map_err(ClientError::Write)?;
        // Half-close: ferry sees the end and still answers what it read.
        let _ = out.get_ref().shutdown(std::net::Shutdown::Write);
        Ok(count)
    });

    let mut reader = std::io::BufReader::new(stream);
    let (mut acked, mut refused) = (0u64, 0u64);
    let mut body = Vec::new();
    let mut broken: Option<ClientError> = None;
    loop {
        match read_reply(&mut reader, &mut body) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                broken = Some(e);
                break;
            }
        }
        match Reply::decode(&body) {
            Some(Reply::Ack(n)) => acked += n as u64,
            Some(Reply::Error(n, code, msg)) => {
                if refused < MAX_REPORTED_REFUSALS {
                    eprintln!(
                        "ferry send: event {} refused ({code:?}): {msg}",
                        acked + refused + 1
                    );
                }
                refused += n as u64;
            }
            Some(Reply::Fatal(code, msg)) => {
                broken = Some(ClientError::Closed {
                    code,
                    message: msg.to_string(),
                });
                break;
            }
            Some(Reply::Status(_)) | None => {
                broken = Some(ClientError::NotUnderstood);
                break;
            }
        }
    }
    let sent = match writer.join() {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            eprintln!("ferry send: {e}");
            return EXIT_FAILURE;
        }
        Err(_) => {
            eprintln!("ferry send: the writer thread failed");
            return EXIT_FAILURE;
        }
    };
    if let Some(e) = broken {
        eprintln!("ferry send: {e}");
    }
    if acked == sent {
        return EXIT_OK;
    }
    let lost = sent - acked - refused.min(sent - acked);
    if refused > 0 {
        eprintln!("ferry send: {refused} of {sent} events refused");
    }
    if lost > 0 {
        eprintln!(
            "ferry send: the connection ended with {lost} of {sent} events unacknowledged; they may not be stored"
        );
    }
    EXIT_FAILURE
}

fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    })
}

/// Read one reply into `body`; Ok(false) on a clean end of stream.
fn read_reply(r: &mut impl Read, body: &mut Vec<u8>) -> Result<bool, ClientError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(false),
        Err(e) => return Err(ClientError::Read(e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > frame::HARD_MAX_FRAME {
        return Err(ClientError::ReplyTooLarge(len));
    }
    body.resize(len, 0);
    r.read_exact(body).map_err(ClientError::Read)?;
    Ok(true)
}

/// Ask the daemon for its status snapshot.
pub fn query_status(socket: &Path) -> Result<Snapshot, ClientError> {
    let mut s = connect(socket)?;
    let mut req = Vec::new();
    frame::encode_status_request(&mut req);
    s.write_all(&req).map_err(ClientError::Write)?;
    let mut body = Vec::new();
    if !read_reply(&mut s, &mut body)? {
        return Err(ClientError::NoAnswer);
    }
    match Reply::decode(&body) {
        Some(Reply::Status(json)) => serde_json::from_str(json).map_err(ClientError::BadStatus),
        _ => Err(ClientError::NotStatus),
    }
}

pub fn status(config: &Config, json: bool) -> i32 {
    let socket = config.control_socket();
    let live = match &socket {
        Some(s) => query_status(s),
        None => Err(ClientError::NoControlSocket),
    };
    let (snap, running) = match live {
        Ok(s) => (s, Ok(())),
        Err(e) => match offline_snapshot(config) {
            Ok(s) => (s, Err(e)),
            Err(e2) => {
                eprintln!(
                    "ferry status: daemon not reachable ({e}) and outbox not readable ({e2})"
                );
                return EXIT_FAILURE;
            }
        },
    };
    if json {
        let mut v = serde_json::to_value(&snap).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("running".into(), running.is_ok().into());
        }
        println!("{v}");
    } else {
        match &running {
            Ok(()) => println!("daemon:      running (node {})", snap.node_id),
            Err(e) => println!("daemon:      not running ({e})"),
        }
        if running.is_ok() {
            println!(
                "uplink:      {}",
                if snap.uplink_up { "up" } else { "down" }
            );
            let f = &snap.forward;
            match f.next_attempt_in_s {
                Some(s) => println!(
                    "breaker:     {} (next attempt in {s:.1} s; {} transitions)",
                    f.breaker, f.breaker_transitions
                ),
                None => println!(
                    "breaker:     {} ({} transitions)",
                    f.breaker, f.breaker_transitions
                ),
            }
            if let Some(e) = &snap.last_error {
                let class = f.last_error_class.as_deref().unwrap_or("-");
                println!("last error:  {e} [{class}]");
            }
            if !f.parked_topics.is_empty() {
                println!(
                    "parked:      {} (retried later; other topics go on)",
                    f.parked_topics.join(", ")
                );
            }
        }
        println!(
            "backlog:     {} events, {} bytes stored ({} raw), oldest {}",
            snap.backlog_events,
            snap.backlog_bytes,
            snap.backlog_raw_bytes,
            snap.oldest_age_s
                .map(|s| format!("{s:.1} s ago"))
                .unwrap_or_else(|| "-".into())
        );
        println!(
            "since start: received {}, stored {}, rejected {}, sent {}, failed attempts {}, throttled {:.1} s",
            snap.received,
            snap.stored,
            snap.rejected,
            snap.sent,
            snap.produce_errors,
            snap.throttled_s
        );
        let cap = match snap.max_bytes_per_second {
            0 => "no cap".to_string(),
            b => format!(
                "capped at {} B/s, held back {:.1} s since start",
                b, snap.uplink_held_s
            ),
        };
        println!(
            "uplink data: {} bytes today (UTC), {} in total; {cap}",
            snap.uplink_bytes_today, snap.uplink_bytes_total
        );
        println!(
            "in flight: {} KiB of events now, {} KiB at most since start (kafka.max_in_flight_bytes)",
            snap.in_flight_bytes / 1024,
            snap.in_flight_peak_bytes / 1024
        );
        if !snap.forward.waiting_for_leader.is_empty() {
            println!(
                "no leader:   {} (their events wait; other partitions go on)",
                snap.forward.waiting_for_leader.join(", ")
            );
        }
        if let Some(side) = &snap.forward.side_records {
            println!("side topics: {side}");
        }
        if !snap.forward.delivery.is_empty() {
            println!("delivery:    {}", snap.forward.delivery);
        }
        for l in &snap.mqtt {
            println!(
                "mqtt {}: {} {}; received {}, acknowledged {}, redeliveries recognised {}, rejected {}{}",
                l.name,
                if l.connected {
                    "connected to"
                } else {
                    "NOT connected to"
                },
                l.broker,
                l.received,
                l.acknowledged,
                l.redeliveries,
                l.rejected,
                l.last_error
                    .as_deref()
                    .filter(|_| !l.connected)
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
        }
        println!(
            "all time:    dropped {} events ({} bytes) by policy, quarantined {}, dead-lettered {}",
            snap.dropped_events, snap.dropped_bytes, snap.quarantined, snap.dead_letters
        );
        if let Ok(n) = stored_dead_letters(config) {
            println!("dead letters: {n} stored (`ferry dlq list`)");
        }
    }
    if running.is_ok() {
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}

/// Backlog read straight from the outbox counters (no scan) when the
/// daemon is not running.
fn offline_snapshot(config: &Config) -> Result<Snapshot, OfflineError> {
    let b = offline::read_backlog(&config.outbox_path())?;
    let c = b.counters;
    Ok(Snapshot {
        node_id: config.node_id.clone(),
        backlog_events: c.events,
        backlog_bytes: c.stored_bytes,
        backlog_raw_bytes: c.raw_bytes,
        dropped_events: c.dropped_events,
        dropped_bytes: c.dropped_bytes,
        quarantined: c.quarantined_events,
        dead_letters: c.dead_letters,
        oldest_age_s: b
            .oldest_created_ms
            .map(|o| (now_ms() - o).max(0) as f64 / 1000.0),
        ..Snapshot::default()
    })
}

fn stored_dead_letters(config: &Config) -> Result<i64, OfflineError> {
    let path = config.outbox_path();
    offline::count_dead_letters(&offline::open_for_edit(&path)?, &path)
}

fn dlq_select(
    config: &Config,
    topic: Option<String>,
    ids: Vec<i64>,
) -> Result<(rusqlite::Connection, Vec<DeadLetter>), ClientError> {
    let path = config.outbox_path();
    let conn = offline::open_for_edit(&path)?;
    let list = dead_letter::list(&conn, &Filter { topic, ids })
        .map_err(|source| ClientError::DeadLetters { path, source })?;
    Ok((conn, list))
}

pub fn dlq_list(config: &Config, topic: Option<String>, json: bool) -> i32 {
    let list = match dlq_select(config, topic, Vec::new()) {
        Ok((_, l)) => l,
        Err(e) => {
            eprintln!("ferry dlq list: {e}");
            return EXIT_FAILURE;
        }
    };
    if json {
        println!("{}", serde_json::to_string(&list).unwrap_or_default());
        return EXIT_OK;
    }
    if list.is_empty() {
        println!("no dead letters");
    }
    for d in &list {
        println!(
            "id {}  ferry-id {}:{}  topic {} -> {}  key {}  {} bytes  {} after {} attempt(s), last {}\n    reason: {}\n    value:  {}",
            d.id,
            config.node_id,
            d.seq,
            d.topic,
            d.destination,
            d.key.as_deref().unwrap_or("-"),
            d.value_bytes,
            d.error_name,
            d.attempts,
            d.last_attempt_ms,
            d.reason,
            d.value_preview
        );
    }
    EXIT_OK
}

pub fn dlq_replay(config: &Config, topic: Option<String>, ids: Vec<i64>) -> i32 {
    let (conn, list) = match dlq_select(config, topic, ids) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ferry dlq replay: {e}");
            return EXIT_FAILURE;
        }
    };
    if list.is_empty() {
        println!("no dead letters to replay");
        return EXIT_OK;
    }
    let Some(socket) = config.control_socket() else {
        eprintln!("ferry dlq replay: no unix frames listener configured");
        return EXIT_USAGE;
    };
    let mut stream = match connect(&socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry dlq replay: {e}");
            return EXIT_FAILURE;
        }
    };
    let mut replayed = Vec::new();
    let mut body = Vec::new();
    let mut frame_buf = Vec::new();
    for d in &list {
        let Ok((event, _)) = Event::decode_from(&d.event) else {
            eprintln!(
                "ferry dlq replay: dead letter {} cannot be decoded; left in place",
                d.id
            );
            continue;
        };
        let headers: Vec<(&str, &[u8])> = event.header_iter().collect();
        frame_buf.clear();
        frame::encode_event(
            &mut frame_buf,
            event.topic,
            event.key,
            &headers,
            event.value,
            Some(event.timestamp_ms),
        );
        if let Err(e) = stream.write_all(&frame_buf) {
            eprintln!("ferry dlq replay: writing to ferry failed: {e}");
            break;
        }
        match read_reply(&mut stream, &mut body).map(|_| Reply::decode(&body)) {
            Ok(Some(Reply::Ack(_))) => replayed.push(d.id),
            Ok(Some(Reply::Error(_, code, msg))) => {
                eprintln!(
                    "ferry dlq replay: dead letter {} refused ({code:?}): {msg}",
                    d.id
                )
            }
            other => {
                eprintln!("ferry dlq replay: no acknowledgement from ferry ({other:?}); stopping");
                break;
            }
        }
    }
    // Stored anew: only now forget the dead letters.
    match dead_letter::delete(&conn, &replayed) {
        Ok(n) => println!("replayed {n} of {} dead letters", list.len()),
        Err(e) => {
            eprintln!(
                "ferry dlq replay: replayed but could not remove dead letters (they may be replayed twice): {e}"
            );
            return EXIT_FAILURE;
        }
    }
    if replayed.len() == list.len() {
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}

pub fn dlq_purge(config: &Config, topic: Option<String>, ids: Vec<i64>, all: bool) -> i32 {
    if topic.is_none() && ids.is_empty() && !all {
        eprintln!(
            "ferry dlq purge: name --topic or --id, or give --all to delete every dead letter"
        );
        return EXIT_USAGE;
    }
    let (conn, list) = match dlq_select(config, topic, ids) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ferry dlq purge: {e}");
            return EXIT_FAILURE;
        }
    };
    let ids: Vec<i64> = list.iter().map(|d| d.id).collect();
    match dead_letter::delete(&conn, &ids) {
        Ok(n) => {
            println!("purged {n} dead letters");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("ferry dlq purge: {e}");
            EXIT_FAILURE
        }
    }
}

/// `ferry check-config --connect`: the Kafka brokers and the config's
/// topics, and each MQTT link (login, subscriptions), one line each; exit 1
/// if anything does not work.
pub fn check_connect(config: &Config) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cannot start the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    let topics = config.named_topics();
    let findings = runtime.block_on(async {
        let mut findings = crate::forward::probe::check_connect(&config.kafka, &topics).await;
        for link in &config.mqtt {
            findings.extend(crate::mqtt::connect::check(link, &config.node_id).await);
        }
        findings
    });
    println!();
    println!("# connection check");
    for f in &findings {
        let mark = if f.ok { "ok  " } else { "FAIL" };
        println!("# {mark} {}: {}", f.subject, f.detail);
    }
    if topics.is_empty() {
        println!("# (the config names no topics: producers name them in their frames)");
    }
    if findings.iter().all(|f| f.ok) {
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}
