//! Test harness: the real `ferry` binary on a temp dir, librdkafka's mock
//! cluster as the Kafka peer, a real rdkafka consumer to read back, and a
//! frames client built on ferry's own codec.
#![allow(dead_code)]

use ferry::ingest::frame::{self, Reply};
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// The ferry under test: this build's binary, or `FERRY_TEST_BIN` run
/// through `FERRY_TEST_RUNNER` (e.g. an aarch64 build under
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu`), so the same tests check the
/// ARM binaries against the mock broker on the host.
/// The ferry under test. Its wall clock is declared synchronised
/// (`FERRY_CLOCK_SYNCHRONIZED=1`): the tests run on machines whose kernel
/// may never say so (VMs, containers), and what ferry stores and sends
/// must not depend on that (events stamped unsynchronised carry a header
/// and are never stored as record runs). The unsynchronised path is
/// tested with a fake clock (`src/clock.rs`).
pub fn ferry_command() -> Command {
    let bin = std::env::var("FERRY_TEST_BIN").unwrap_or_else(|_| BIN.to_string());
    let mut cmd = match std::env::var("FERRY_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut parts = runner.split_whitespace();
            let mut cmd = Command::new(parts.next().unwrap());
            cmd.args(parts).arg(bin);
            cmd
        }
        _ => Command::new(bin),
    };
    cmd.env("FERRY_CLOCK_SYNCHRONIZED", "1");
    cmd
}

pub type Cluster = MockCluster<'static, DefaultProducerContext>;

/// A mock cluster with `brokers` brokers and the given topics.
pub fn cluster(brokers: i32, topics: &[(&str, i32)]) -> Cluster {
    let c = MockCluster::new(brokers).expect("mock cluster");
    for (t, p) in topics {
        c.create_topic(t, *p, 1).expect("create topic");
    }
    c
}

/// A running (or stopped) ferry daemon on its own data dir.
pub struct Ferry {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Extra environment for `ferry run`.
    pub env: Vec<(String, String)>,
    starts: u32,
    socket: PathBuf,
}

impl Ferry {
    /// Write `extra` TOML after a base config pointing at `brokers`.
    pub fn new(dir: &Path, brokers: &str, extra: &str) -> Self {
        Self::with_data_dir(dir, &dir.join("data"), brokers, extra)
    }

    /// As [`Ferry::new`], with the data directory at `data_dir` and, when
    /// that is not `<dir>/data`, the frames socket at `<dir>/ferry.sock`
    /// (outside a file system the test cuts).
    pub fn with_data_dir(dir: &Path, data_dir: &Path, brokers: &str, extra: &str) -> Self {
        let config = dir.join("ferry.toml");
        let text = format!(
            "node_id = \"test-node\"\ndata_dir = \"{}\"\n{extra}\n",
            data_dir.display()
        );
        let list = brokers
            .split(',')
            .map(|b| format!("\"{b}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text = if text.contains("[kafka]") {
            text.replace("[kafka]", &format!("[kafka]\nbrokers = [{list}]"))
        } else {
            format!("{text}\n[kafka]\nbrokers = [{list}]\nlinger_ms = 2\n")
        };
        let socket = if data_dir == dir.join("data") {
            data_dir.join("ferry.sock")
        } else {
            dir.join("ferry.sock")
        };
        let text = if data_dir == dir.join("data") {
            text
        } else {
            format!(
                "{text}\n[[listener]]\ntype = \"unix\"\nformat = \"frames\"\npath = \"{}\"\n",
                socket.display()
            )
        };
        std::fs::write(&config, text).unwrap();
        Self {
            dir: dir.to_path_buf(),
            config,
            child: None,
            log: dir.join("ferry.log"),
            env: Vec::new(),
            starts: 0,
            socket,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// Start `ferry run` and wait until it answers on its socket.
    pub fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = ferry_command()
            .args(["run", "-c"])
            .arg(&self.config)
            .env(
                "FERRY_LOG",
                std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if ferry::client::query_status(&self.socket()).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("ferry exited at start ({status}):\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ferry did not become ready:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn status(&self) -> ferry::stats::Snapshot {
        ferry::client::query_status(&self.socket()).expect("status")
    }

    /// The status, if ferry answers.
    pub fn try_status(&self) -> Option<ferry::stats::Snapshot> {
        ferry::client::query_status(&self.socket()).ok()
    }

    /// Wait until `pred(status)` holds; panics with the log after `timeout`.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&ferry::stats::Snapshot) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = ferry::client::query_status(&self.socket()) {
                if pred(&s) {
                    return;
                }
                if Instant::now() > deadline {
                    panic!(
                        "timed out waiting for {what}; status {s:?}\n{}",
                        self.log_text()
                    );
                }
            } else if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; no status\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send SIGHUP (what `systemctl reload ferry` does).
    pub fn hangup(&self) {
        let c = self.child.as_ref().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }

    /// Still running (not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Wait until the log holds `text` (the `n`th time); panic after `timeout`.
    pub fn wait_log(&self, text: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log_text().matches(text).count() < n {
            if Instant::now() > deadline {
                panic!("no {text:?} (x{n}) in the log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; returns the exit code and how long it took.
    pub fn terminate(&mut self) -> (Option<i32>, Duration) {
        let mut c = self.child.take().expect("running");
        let t = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = t + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return (s.code(), t.elapsed());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("ferry did not stop on SIGTERM\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run `ferry <args>` with this config; (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
        let mut cmd = ferry_command();
        cmd.args(args).arg("-c").arg(&self.config);
        run_cmd(cmd, stdin)
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn run_cmd(mut cmd: Command, stdin: Option<&[u8]>) -> (i32, String, String) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let input = stdin.map(<[u8]>::to_vec);
    let mut sin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        if let Some(i) = input {
            let _ = sin.write_all(&i);
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A frames client on ferry's unix socket.
pub struct FrameClient {
    stream: UnixStream,
    buf: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ack(u32),
    Error(u32, String),
    Fatal(String),
    Closed,
}

impl FrameClient {
    pub fn connect(socket: &Path) -> std::io::Result<Self> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// A second handle on the connection, to write from another thread
    /// while this one reads the answers.
    pub fn writer(&self) -> std::io::Result<UnixStream> {
        self.stream.try_clone()
    }

    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send_event(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        value: &[u8],
    ) -> std::io::Result<()> {
        self.buf.clear();
        frame::encode_event(&mut self.buf, topic, key, headers, value, None);
        self.stream.write_all(&self.buf)
    }

    /// Read the next reply.
    pub fn answer(&mut self) -> Answer {
        let mut len = [0u8; 4];
        if self.stream.read_exact(&mut len).is_err() {
            return Answer::Closed;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if self.stream.read_exact(&mut body).is_err() {
            return Answer::Closed;
        }
        match Reply::decode(&body) {
            Some(Reply::Ack(n)) => Answer::Ack(n),
            Some(Reply::Error(n, _, m)) => Answer::Error(n, m.to_string()),
            Some(Reply::Fatal(_, m)) => Answer::Fatal(m.to_string()),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Read replies until `n` frames are answered; (acked, errors).
    pub fn answers_for(&mut self, n: u32) -> Result<(u32, Vec<String>), String> {
        let (mut acked, mut errors) = (0u32, Vec::new());
        while acked + (errors.len() as u32) < n {
            match self.answer() {
                Answer::Ack(k) => acked += k,
                Answer::Error(k, m) => {
                    for _ in 0..k {
                        errors.push(m.clone());
                    }
                }
                Answer::Fatal(m) => return Err(format!("fatal: {m}")),
                Answer::Closed => return Err(format!("closed after {acked} acks")),
            }
        }
        Ok((acked, errors))
    }
}

/// A record as read back from Kafka.
#[derive(Debug, Clone)]
pub struct Got {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn ferry_id(&self) -> String {
        String::from_utf8(self.header("ferry-id").expect("ferry-id header").to_vec()).unwrap()
    }

    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// A real consumer reading `topics` from the beginning, in its own thread,
/// so it keeps up while ferry produces (the mock drops old data).
pub struct Reader {
    handle: Option<std::thread::JoinHandle<Vec<Got>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Every distinct value read so far, so a test can wait for the values
    /// it expects rather than for a record count that duplicates inflate.
    seen: std::sync::Arc<std::sync::Mutex<HashSet<Vec<u8>>>>,
}

impl Reader {
    pub fn start(bootstrap: &str, topics: &[(&str, i32)]) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "ferry-tests")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for (t, parts) in topics {
            for p in 0..*parts {
                tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
            }
        }
        consumer.assign(&tpl).expect("assign");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
        let (s, c, v) = (stop.clone(), count.clone(), seen.clone());
        let handle = std::thread::spawn(move || {
            let mut got = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(50)) {
                    Some(Ok(m)) => {
                        let headers = m
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|h| {
                                        (h.key.to_string(), h.value.unwrap_or_default().to_vec())
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        got.push(Got {
                            topic: m.topic().to_string(),
                            partition: m.partition(),
                            offset: m.offset(),
                            key: m.key().map(<[u8]>::to_vec),
                            value: m.payload().unwrap_or_default().to_vec(),
                            headers,
                        });
                        if let Some(last) = got.last() {
                            v.lock().unwrap().insert(last.value.clone());
                        }
                        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some(Err(e)) => eprintln!("consumer: {e}"),
                    None => {}
                }
            }
            got
        });
        Self {
            handle: Some(handle),
            stop,
            count,
            seen,
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Wait until at least `n` records arrived (or `timeout`), then a short
    /// quiet period to catch duplicates; return everything read.
    pub fn collect(mut self, n: usize, timeout: Duration) -> Vec<Got> {
        let deadline = Instant::now() + timeout;
        while self.count() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }

    /// Wait until every value in `expected` has been read (or `timeout`),
    /// then the same quiet period; return everything read. Where redelivery
    /// is possible (kills, injected faults), waiting for `expected.len()`
    /// records would stop early: duplicates count as records too.
    pub fn collect_values(self, expected: &[String], timeout: Duration) -> Vec<Got> {
        let deadline = Instant::now() + timeout;
        let mut waiting: Vec<&String> = expected.iter().collect();
        while !waiting.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let seen = self.seen.lock().unwrap();
            waiting.retain(|v| !seen.contains(v.as_bytes()));
        }
        self.collect(0, Duration::ZERO)
    }
}

/// Count by value: how many times each value arrived.
pub fn by_value(got: &[Got]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for g in got {
        *m.entry(g.value_str()).or_insert(0) += 1;
    }
    m
}

/// The compression codec (attributes & 7) of every record batch in the
/// first `max_bytes` of a partition, read with a raw Fetch v4 request: the
/// consumer API hides it, and the point is to see what is on the wire.
pub fn batch_codecs(broker: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(broker).expect("connect broker");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = Vec::new();
    req.extend_from_slice(&1i16.to_be_bytes()); // Fetch
    req.extend_from_slice(&4i16.to_be_bytes()); // v4
    req.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    req.extend_from_slice(&(5i16).to_be_bytes());
    req.extend_from_slice(b"tests");
    req.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
    req.extend_from_slice(&100i32.to_be_bytes()); // max wait
    req.extend_from_slice(&1i32.to_be_bytes()); // min bytes
    req.extend_from_slice(&(1i32 << 20).to_be_bytes()); // max bytes
    req.push(0); // isolation level
    req.extend_from_slice(&1i32.to_be_bytes()); // one topic
    req.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    req.extend_from_slice(topic.as_bytes());
    req.extend_from_slice(&1i32.to_be_bytes()); // one partition
    req.extend_from_slice(&partition.to_be_bytes());
    req.extend_from_slice(&0i64.to_be_bytes()); // fetch offset
    req.extend_from_slice(&(1i32 << 20).to_be_bytes());
    let mut framed = (req.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&req);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut resp = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut resp).unwrap();
    let mut r = Cursor(&resp[..]);
    r.skip(4 + 4); // correlation id, throttle
    assert_eq!(r.i32(), 1, "one topic");
    let tl = r.i16() as usize;
    r.skip(tl);
    assert_eq!(r.i32(), 1, "one partition");
    r.skip(4); // partition
    let err = r.i16();
    assert_eq!(err, 0, "fetch error code");
    r.skip(8 + 8); // high watermark, last stable offset
    let aborted = r.i32();
    if aborted > 0 {
        r.skip(aborted as usize * 16);
    }
    let records_len = r.i32();
    let mut records = &r.0[..records_len.max(0) as usize];
    let mut codecs = Vec::new();
    // Batch: base offset i64, length i32, then `length` bytes of which
    // leader epoch i32, magic i8, crc u32, attributes i16.
    while records.len() >= 12 {
        let batch_len = i32::from_be_bytes(records[8..12].try_into().unwrap()) as usize;
        if records.len() < 12 + batch_len {
            break; // a partial batch at the end of the fetch
        }
        let attrs = i16::from_be_bytes(records[21..23].try_into().unwrap());
        assert_eq!(records[16], 2, "record batch magic");
        codecs.push((attrs & 7) as u8);
        records = &records[12 + batch_len..];
    }
    codecs
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn skip(&mut self, n: usize) {
        self.0 = &self.0[n..];
    }
    fn i16(&mut self) -> i16 {
        let v = i16::from_be_bytes(self.0[..2].try_into().unwrap());
        self.skip(2);
        v
    }
    fn i32(&mut self) -> i32 {
        let v = i32::from_be_bytes(self.0[..4].try_into().unwrap());
        self.skip(4);
        v
    }
}

pub mod answers;
pub mod kafka_model;
pub mod latency;
pub mod mosquitto;
pub mod pki;
pub mod powercut;
pub mod proxy;
pub mod tansu;

/// Steady load from a frames client: batches of `batch` keyed events,
/// `pause` between batches; reconnects when ferry goes away. Records which
/// values were acknowledged. Values are `<key>|<n>` with `n` growing per key.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<(String, Instant)>>>,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Load {
    pub fn start(
        socket: PathBuf,
        topic: &'static str,
        keys: usize,
        batch: usize,
        pause: Duration,
    ) -> Self {
        Self::start_prefixed(socket, topic, "key", keys, batch, pause)
    }

    /// As [`Load::start`], with keys `<prefix>-<k>` (loads of several
    /// topics then never share a key).
    pub fn start_prefixed(
        socket: PathBuf,
        topic: &'static str,
        prefix: &'static str,
        keys: usize,
        batch: usize,
        pause: Duration,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked_n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, a) = (stop.clone(), acked_n.clone());
        let handle = std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut next = vec![0u64; keys];
            let mut k = 0usize;
            let mut client: Option<FrameClient> = None;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let c = match client.as_mut() {
                    Some(c) => c,
                    None => match FrameClient::connect(&socket) {
                        Ok(c) => client.insert(c),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    },
                };
                let mut values = Vec::with_capacity(batch);
                let mut ok = true;
                for _ in 0..batch {
                    let key = format!("{prefix}-{k}");
                    let v = format!("{key}|{}", next[k]);
                    next[k] += 1;
                    k = (k + 1) % keys;
                    if c.send_event(topic, Some(key.as_bytes()), &[], v.as_bytes())
                        .is_err()
                    {
                        ok = false;
                        break;
                    }
                    values.push(v);
                }
                match ok.then(|| c.answers_for(values.len() as u32)) {
                    Some(Ok((n, _))) if n as usize == values.len() => {
                        a.fetch_add(values.len(), std::sync::atomic::Ordering::Relaxed);
                        let at = Instant::now();
                        acked.extend(values.into_iter().map(|v| (v, at)));
                    }
                    _ => client = None,
                }
                std::thread::sleep(pause);
            }
            acked
        });
        Self {
            stop,
            handle: Some(handle),
            acked: acked_n,
        }
    }

    pub fn acked_so_far(&self) -> usize {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn stop(self) -> Vec<String> {
        self.stop_timed().into_iter().map(|(v, _)| v).collect()
    }

    /// The values acknowledged, each with when its acknowledgement came.
    pub fn stop_timed(mut self) -> Vec<(String, Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Every acknowledged value arrived; per key, after dropping duplicates by
/// `ferry-id`, values arrive in the order they were sent. Returns the
/// number of duplicate records.
/// Store a backlog of `events` keyed events (`keys` keys, each padded with
/// `key_pad` dashes so windows can fill by bytes) in the outbox under
/// `dir`, with no broker at all (so no breaker state carries over); the
/// values (`<key>|<n>`) in the order they were acknowledged.
pub fn store_backlog(
    dir: &Path,
    topic: &str,
    events: usize,
    keys: usize,
    key_pad: usize,
) -> Vec<String> {
    let mut filler = Ferry::new(dir, "127.0.0.1:1", "");
    filler.start();
    let mut client = FrameClient::connect(&filler.socket()).unwrap();
    let mut acked = Vec::new();
    // In chunks: a client that writes without reading its acks stalls.
    const CHUNK: usize = 2_000;
    for chunk in 0..events.div_ceil(CHUNK) {
        let range = chunk * CHUNK..((chunk + 1) * CHUNK).min(events);
        let n = range.len() as u32;
        for i in range {
            let key = format!("k{:02}{:->key_pad$}", i % keys, "");
            let value = format!("{key}|{i}");
            client
                .send_event(topic, Some(key.as_bytes()), &[], value.as_bytes())
                .unwrap();
            acked.push(value);
        }
        assert_eq!(client.answers_for(n), Ok((n, vec![])));
    }
    drop(client);
    assert_eq!(filler.terminate().0, Some(0));
    acked
}

pub fn check_delivery(acked: &[String], got: &[Got]) -> usize {
    let values = by_value(got);
    let missing: Vec<&String> = acked.iter().filter(|v| !values.contains_key(*v)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let mut sorted: Vec<&Got> = got.iter().collect();
    sorted.sort_by_key(|g| (g.topic.clone(), g.partition, g.offset));
    let mut seen = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut dups = 0;
    for g in sorted {
        if !seen.insert(g.ferry_id()) {
            dups += 1;
            continue;
        }
        let v = g.value_str();
        let (key, n) = v.split_once('|').expect("key|n");
        let n: u64 = n.parse().unwrap();
        if let Some(prev) = last.insert(key.to_string(), n) {
            assert!(prev < n, "per-key order broken for {key}: {prev} then {n}");
        }
    }
    dups
}

/// CPU seconds (user + system) used so far by process `pid`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// (status code, body) of `GET path` over plain HTTP/1.1.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (code, body)
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Send `n` keyed events to `topic` over ferry's socket, in acknowledged
/// groups of 100: values `<prefix>-<k>|<i>` over `keys` keys (so
/// `check_delivery` checks per-key order). Returns the acknowledged values.
pub fn send_keyed(socket: &Path, topic: &str, prefix: &str, keys: usize, n: usize) -> Vec<String> {
    let mut c = FrameClient::connect(socket).expect("connect to ferry");
    let mut acked = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let group: Vec<String> = (i..(i + 100).min(n))
            .map(|j| format!("{prefix}-{}|{}", j % keys, j / keys))
            .collect();
        for v in &group {
            let key = v.split_once('|').unwrap().0;
            c.send_event(topic, Some(key.as_bytes()), &[], v.as_bytes())
                .expect("send");
        }
        let (ok, errors) = c.answers_for(group.len() as u32).expect("answers");
        assert_eq!(ok as usize, group.len(), "refused: {errors:?}");
        i += group.len();
        acked.extend(group);
    }
    acked
}

/// Copy a stopped gateway's data dir (outbox and all) to `to`, as an SD
/// card image is copied to make more gateways; the socket is left behind.
pub fn clone_data_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The cloned-card fleet: gateway A (in `a_dir`) sends `first` events to
/// topic `fleet` and stops cleanly; its data dir is copied to B (`b_dir`,
/// node id `gw-b`); both run at once and send `each` events of their own.
/// Returns every acknowledged value, and the delivery mode each gateway's
/// status gave once both backlogs were empty.
pub fn cloned_fleet_run(
    a_dir: &Path,
    b_dir: &Path,
    bootstrap: &str,
    first: usize,
    each: usize,
) -> (Vec<String>, Vec<String>) {
    let mut a = Ferry::new(a_dir, bootstrap, "");
    a.env.push(("FERRY_NODE_ID".into(), "gw-a".into()));
    a.start();
    let mut acked = send_keyed(&a.socket(), "fleet", "first", 4, first);
    a.wait_status(Duration::from_secs(60), "A's first events delivered", |s| {
        s.backlog_events == 0
    });
    assert_eq!(a.terminate().0, Some(0));
    clone_data_dir(&a_dir.join("data"), &b_dir.join("data"));
    let mut b = Ferry::new(b_dir, bootstrap, "");
    b.env.push(("FERRY_NODE_ID".into(), "gw-b".into()));
    a.start();
    b.start();
    let (sa, sb) = (a.socket(), b.socket());
    let ta = std::thread::spawn(move || send_keyed(&sa, "fleet", "a", 4, each));
    let tb = std::thread::spawn(move || send_keyed(&sb, "fleet", "b", 4, each));
    acked.extend(ta.join().unwrap());
    acked.extend(tb.join().unwrap());
    let mut delivery = Vec::new();
    for g in [&a, &b] {
        g.wait_status(Duration::from_secs(60), "backlog delivered", |s| {
            s.backlog_events == 0
        });
        delivery.push(g.status().forward.delivery);
    }
    assert_eq!(a.terminate().0, Some(0));
    assert_eq!(b.terminate().0, Some(0));
    (acked, delivery)
}

/// A seeded pseudo-random sequence (ferry's SplitMix64): fault schedules
/// and power cuts replay exactly from their seed.
pub struct Rng(ferry::backoff::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(ferry::backoff::SplitMix64(seed))
    }

    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
