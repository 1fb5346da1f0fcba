//! ferry's benchmark, side by side with librdkafka (`kcat -P -z lz4`), on a
//! librdkafka mock broker on loopback. One command:
//!
//!     cargo run --release --example bench [-- --runs 3 --events 1000000]
//!
//! It builds ferry (release, and a `count-allocs` build for allocation
//! counts), generates a fixed, seeded data set of gateway telemetry, runs
//! every measurement `--runs` times and writes the medians to BENCHMARKS.md.
//! Completion is read from the broker's end offsets, never by consuming
//! (the mock keeps only 5 MiB per partition).

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("the benchmark runs on the x86_64 development host (librdkafka's mock broker)");
}

#[cfg(target_arch = "x86_64")]
fn main() {
    bench::main()
}

#[cfg(target_arch = "x86_64")]
#[path = "../../tests/common/answers.rs"]
mod answers;

#[cfg(target_arch = "x86_64")]
#[path = "../../tests/common/latency.rs"]
mod latency;

#[cfg(target_arch = "x86_64")]
mod bench {
    use ferry::backoff::SplitMix64;
    use ferry::ingest::frame;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixDatagram, UnixStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    const TOPIC_FERRY: &str = "bench-ferry";
    const TOPIC_KCAT: &str = "bench-kcat";
    const PARTITIONS: i32 = 16;
    const KEYS: u64 = 24;
    /// Retry settings that keep the forwarder still during ingest only.
    const QUIET_FORWARDER: &str = "[retry]\ninitial = \"60s\"\nmax = \"60s\"\nmultiplier = 1.0\n";

    struct Args {
        runs: usize,
        events: usize,
        out: PathBuf,
        /// Only this part (`e2e`, `kcat`, `drain`, `rtt`, `tcp`, `instr` or
        /// `codecs`),
        /// printed, no report.
        only: Option<String>,
        /// The round trip of the distant uplink (`rtt` part).
        rtt: Duration,
    }

    fn args() -> Args {
        let mut a = Args {
            runs: 3,
            events: 1_000_000,
            out: PathBuf::from("BENCHMARKS.md"),
            only: None,
            rtt: Duration::from_millis(200),
        };
        let v: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < v.len() {
            let next = v.get(i + 1).cloned().unwrap_or_default();
            match v[i].as_str() {
                "--runs" => a.runs = next.parse().expect("--runs N"),
                "--events" => a.events = next.parse().expect("--events N"),
                "--out" => a.out = PathBuf::from(next),
                "--only" => a.only = Some(next),
                "--rtt-ms" => a.rtt = Duration::from_millis(next.parse().expect("--rtt-ms N")),
                other => panic!(
                    "unknown argument {other}; use --runs N --events N --out FILE --rtt-ms N --only e2e|kcat|drain|rtt|tcp|instr|codecs"
                ),
            }
            i += 2;
        }
        a
    }

    /// The data set: `(key, JSON value)`, ~190-byte readings from 24 sensors.
    fn dataset(n: usize) -> Vec<(String, String)> {
        let mut rng = SplitMix64(0xfe77_2026);
        let mut seq = vec![0u64; KEYS as usize];
        (0..n)
        .map(|i| {
            let s = (rng.next_u64() % KEYS) as usize;
            seq[s] += 1;
            let ts = 1_764_000_000_000u64 + i as u64 * 7;
            let key = format!("gw-07/sensor-{s:02}");
            let value = format!(
                "{{\"sensor\":\"{key}\",\"seq\":{},\"ts\":{ts},\"rx_ts\":{},\"temp_c\":{:.2},\"rh_pct\":{:.1},\"hpa\":{:.1},\"batt_v\":{:.3},\"rssi\":{},\"status\":\"ok\"}}",
                seq[s],
                ts + 3 + rng.next_u64() % 40,
                18.0 + rng.next_f64() * 9.0,
                35.0 + rng.next_f64() * 30.0,
                990.0 + rng.next_f64() * 40.0,
                3.3 + rng.next_f64() * 0.9,
                -(40 + (rng.next_u64() % 50) as i64),
            );
            (key, value)
        })
        .collect()
    }

    fn build_ferry() -> (PathBuf, PathBuf) {
        let run = |extra: &[&str], dir: &str| {
            let st = Command::new(env!("CARGO"))
                .args(["build", "--release", "--bin", "ferry", "--target-dir", dir])
                .args(extra)
                .status()
                .expect("cargo build");
            assert!(st.success(), "building ferry failed");
        };
        run(&[], "target");
        run(&["--features", "count-allocs"], "target/bench-allocs");
        // BENCH_FERRY_BIN: another build in place of the release one (an
        // unstripped build for `cg_annotate`, or an earlier version).
        let bin = std::env::var_os("BENCH_FERRY_BIN")
            .map_or_else(|| PathBuf::from("target/release/ferry"), PathBuf::from);
        (bin, PathBuf::from("target/bench-allocs/release/ferry"))
    }

    struct Ferry {
        child: Child,
        dir: PathBuf,
    }

    impl Ferry {
        fn start(bin: &Path, dir: &Path, brokers: &str, durability: &str, extra: &str) -> Self {
            Self::start_under(&[], bin, dir, brokers, durability, extra)
        }

        /// As [`Ferry::start`], run by `wrapper` (e.g. valgrind) when given.
        fn start_under(
            wrapper: &[&str],
            bin: &Path,
            dir: &Path,
            brokers: &str,
            durability: &str,
            extra: &str,
        ) -> Self {
            let config = dir.join("ferry.toml");
            // Extra `[kafka]` keys join the section written here (TOML
            // takes a table once).
            let (kafka_extra, extra) = match extra.strip_prefix("[kafka]\n") {
                Some(keys) => (keys, ""),
                None => ("", extra),
            };
            let list = brokers
                .split(',')
                .map(|b| format!("\"{b}\""))
                .collect::<Vec<_>>()
                .join(",");
            std::fs::write(
            &config,
            format!(
                "node_id = \"bench\"\ndata_dir = \"{}\"\n[kafka]\nbrokers = [{list}]\n{kafka_extra}[outbox]\ndurability = \"{durability}\"\nmax_bytes = \"4GiB\"\n{extra}",
                dir.join("data").display()
            ),
        )
        .unwrap();
            let notify_path = dir.join("notify.sock");
            let _ = std::fs::remove_file(&notify_path);
            let notify = UnixDatagram::bind(&notify_path).unwrap();
            notify
                .set_read_timeout(Some(Duration::from_secs(120)))
                .unwrap();
            let mut command = match wrapper.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(bin);
                    c
                }
                None => Command::new(bin),
            };
            let child = command
                .args(["run", "-c"])
                .arg(&config)
                .env("NOTIFY_SOCKET", &notify_path)
                // The host's kernel may never call its clock synchronised
                // (a VM): events would then be stamped unsynchronised and
                // never stored as record runs, which is not what a gateway
                // with a synchronised clock does.
                .env("FERRY_CLOCK_SYNCHRONIZED", "1")
                .env(
                    "FERRY_LOG",
                    std::env::var("BENCH_FERRY_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start ferry");
            let mut buf = [0u8; 256];
            notify.recv(&mut buf).expect("ferry READY");
            Self {
                child,
                dir: dir.to_path_buf(),
            }
        }

        fn socket(&self) -> PathBuf {
            self.dir.join("data/ferry.sock")
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        fn stop(mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.child.wait();
        }

        fn status(&self) -> ferry::stats::Snapshot {
            ferry::client::query_status(&self.socket()).expect("status")
        }
    }

    /// Events of the fixed run counted under cachegrind.
    const INSTR_EVENTS: usize = 100_000;

    /// The total instructions a cachegrind output file counted.
    fn cachegrind_total(file: &Path) -> f64 {
        let text = std::fs::read_to_string(file).expect("cachegrind output");
        text.lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("a summary line in the cachegrind output")
    }

    /// Instructions per event, counted by `valgrind --tool=cachegrind`
    /// (this machine has no hardware counters): ferry's whole daemon, from
    /// exec to its stop, carrying the first [`INSTR_EVENTS`] events of the
    /// data set end to end (`relaxed`), and kcat producing the same events
    /// from exec to exit. Start-up is counted on both sides.
    fn instructions(
        bin: &Path,
        work: &Path,
        data: &[(String, String)],
        bootstrap: &str,
        consumer: &BaseConsumer,
    ) -> (f64, f64) {
        let n = data.len().min(INSTR_EVENTS);
        let data = &data[..n];
        // BENCH_CACHEGRIND_DIR: keep the output files there (for
        // `cg_annotate`) instead of in the work directory.
        let keep = std::env::var_os("BENCH_CACHEGRIND_DIR").map(PathBuf::from);
        let out_dir = keep.unwrap_or_else(|| work.to_path_buf());
        let out = |name: &str| out_dir.join(format!("cachegrind.{name}"));
        // BENCH_VALGRIND_TOOL=callgrind: the same run with callers, for
        // `callgrind_annotate --tree=caller`.
        let tool = std::env::var("BENCH_VALGRIND_TOOL").unwrap_or_else(|_| "cachegrind".into());
        let valgrind = |name: &str| {
            let mut args = vec![
                "valgrind".to_string(),
                format!("--tool={tool}"),
                "-q".to_string(),
                format!("--{tool}-out-file={}", out(name).display()),
            ];
            if tool == "cachegrind" {
                args.push("--cache-sim=no".to_string());
            }
            args
        };
        let frames = encode_frames(data, true);
        let dir = tempfile::tempdir_in(work).unwrap();
        let wrapper = valgrind("ferry");
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let f = Ferry::start_under(&wrapper, bin, dir.path(), bootstrap, "relaxed", "");
        let before = end_offsets(consumer, TOPIC_FERRY);
        send_frames(&f.socket(), &frames, n);
        wait_offsets(consumer, TOPIC_FERRY, before + n as i64);
        f.stop();
        let ferry = cachegrind_total(&out("ferry")) / n as f64;

        let file = work.join("instr-data.txt");
        {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
            for (k, v) in data {
                writeln!(w, "{k}|{v}").unwrap();
            }
        }
        let before = end_offsets(consumer, TOPIC_KCAT);
        let st = Command::new("valgrind")
            .args(&valgrind("kcat")[1..])
            .args([
                "kcat", "-P", "-b", bootstrap, "-t", TOPIC_KCAT, "-z", "lz4", "-K", "|", "-l",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("valgrind (apt install valgrind) and kcat");
        assert!(st.success(), "kcat under valgrind failed");
        wait_offsets(consumer, TOPIC_KCAT, before + n as i64);
        let kcat = cachegrind_total(&out("kcat")) / n as f64;
        (ferry, kcat)
    }

    /// Time from exec to READY=1 of a ferry on `dir` (broker unreachable).
    fn time_to_ready(bin: &Path, dir: &Path) -> Duration {
        let t = Instant::now();
        let f = Ferry::start(bin, dir, "127.0.0.1:1", "relaxed", "");
        let d = t.elapsed();
        f.stop();
        d
    }

    fn proc_field(pid: u32, file: &str, name: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn cpu_seconds(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
        let f: Vec<&str> = after.split(' ').collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (t(11) + t(12)) / 100.0
    }

    /// All frames of the data set, encoded once (with their keys, or
    /// without).
    fn encode_frames(data: &[(String, String)], keyed: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() * 240);
        for (k, v) in data {
            frame::encode_event(
                &mut out,
                TOPIC_FERRY,
                keyed.then_some(k.as_bytes()),
                &[],
                v.as_bytes(),
                None,
            );
        }
        out
    }

    /// The data set's values as `\n`-terminated lines (lines carry no key).
    fn encode_lines(data: &[(String, String)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() * 200);
        for (_, v) in data {
            out.extend_from_slice(v.as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// A free loopback port for a `tcp` listener.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// Listeners: the unix frames socket (status, frames) and a tcp lines
    /// listener on `port` for the bench topic.
    fn tcp_listener_config(dir: &Path, port: u16) -> String {
        format!(
            "[[listener]]\ntype = \"unix\"\nformat = \"frames\"\npath = \"{}\"\n\n[[listener]]\ntype = \"tcp\"\nformat = \"lines\"\naddress = \"127.0.0.1:{port}\"\ntopic = \"{TOPIC_FERRY}\"\n",
            dir.join("data/ferry.sock").display()
        )
    }

    /// Write `lines` to ferry's tcp listener; lines are not acknowledged.
    fn send_lines(port: u16, lines: &[u8]) {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect tcp");
        for chunk in lines.chunks(256 * 1024) {
            stream.write_all(chunk).expect("write lines");
        }
    }

    /// Stream `frames` (holding `n` events) into ferry; returns when all are acked.
    fn send_frames(socket: &Path, frames: &[u8], n: usize) {
        let stream = UnixStream::connect(socket).expect("connect ferry");
        let mut writer = stream.try_clone().unwrap();
        let frames = frames.to_vec();
        let w = std::thread::spawn(move || {
            for chunk in frames.chunks(256 * 1024) {
                writer.write_all(chunk).expect("write frames");
            }
        });
        let mut reader = std::io::BufReader::new(stream);
        let mut acked = 0usize;
        let mut body = Vec::new();
        while acked < n {
            let mut len = [0u8; 4];
            reader.read_exact(&mut len).expect("ack");
            body.resize(u32::from_be_bytes(len) as usize, 0);
            reader.read_exact(&mut body).expect("ack body");
            match frame::Reply::decode(&body) {
                Some(frame::Reply::Ack(k)) => acked += k as usize,
                other => panic!("unexpected reply {other:?}"),
            }
        }
        w.join().unwrap();
    }

    fn end_offsets(consumer: &BaseConsumer, topic: &str) -> i64 {
        (0..PARTITIONS)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(5))
                    .map(|(_, high)| high)
                    .unwrap_or(0)
            })
            .sum()
    }

    fn wait_offsets(consumer: &BaseConsumer, topic: &str, target: i64) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while end_offsets(consumer, topic) < target {
            assert!(Instant::now() < deadline, "broker never saw all events");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[derive(Default, Clone)]
    struct Run {
        e2e_relaxed: f64,
        e2e_fsync: f64,
        /// Over the distant uplink: ferry (relaxed) and kcat.
        rtt_ferry: f64,
        rtt_kcat: f64,
        rtt_peak_rss_kib: u64,
        /// kcat as an idempotent producer (as ferry is), same link.
        rtt_kcat_idempotent: f64,
        /// ferry over the same link with twice the default memory budget.
        rtt_ferry_double: f64,
        rtt_double_peak_rss_kib: u64,
        /// The most the windows in flight held (status), default budget.
        rtt_in_flight_peak: u64,
        /// Keyless events: lines over tcp, frames over the unix socket.
        tcp_lines: f64,
        keyless_frames: f64,
        kcat_rate: f64,
        ingest_rate: f64,
        drain_rate: f64,
        ferry_peak_rss_kib: u64,
        ferry_idle_rss_kib: u64,
        /// Of the idle RSS: anonymous memory (heap, stacks), the rest being
        /// mapped files (ferry's code, libc).
        ferry_idle_anon_kib: u64,
        kcat_peak_rss_kib: u64,
        ferry_cpu_per_m: f64,
        kcat_cpu_per_m: f64,
        /// Instructions per event under cachegrind, the fixed run.
        ferry_instructions: f64,
        kcat_instructions: f64,
        outbox_bytes_per_event: f64,
        device_bytes_per_event: f64,
        ready_ms: f64,
        allocs_ingest: f64,
        allocs_forward: f64,
    }

    fn kcat(
        data_file: &Path,
        bootstrap: &str,
        n: usize,
        consumer: &BaseConsumer,
    ) -> (f64, u64, f64) {
        kcat_with(data_file, bootstrap, n, consumer, &[])
    }

    /// kcat with extra librdkafka settings (`-X name=value`).
    fn kcat_with(
        data_file: &Path,
        bootstrap: &str,
        n: usize,
        consumer: &BaseConsumer,
        extra: &[&str],
    ) -> (f64, u64, f64) {
        let before = end_offsets(consumer, TOPIC_KCAT);
        let t = Instant::now();
        let child = Command::new("kcat")
            .args([
                "-P", "-b", bootstrap, "-t", TOPIC_KCAT, "-z", "lz4", "-K", "|", "-l",
            ])
            .args(extra.iter().flat_map(|x| ["-X", x]))
            .arg(data_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kcat (apt install kcat)");
        // Reaped by wait4 below, which also gives its peak RSS and CPU time.
        let pid = child.id() as libc::pid_t;
        std::mem::forget(child);
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child with valid pointers.
        unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        wait_offsets(consumer, TOPIC_KCAT, before + n as i64);
        let rate = n as f64 / t.elapsed().as_secs_f64();
        let cpu = usage.ru_utime.tv_sec as f64
            + usage.ru_utime.tv_usec as f64 / 1e6
            + usage.ru_stime.tv_sec as f64
            + usage.ru_stime.tv_usec as f64 / 1e6;
        (rate, usage.ru_maxrss as u64, cpu * 1e6 / n as f64)
    }

    /// Record batches of the data set under each codec ferry offers: bytes
    /// on the wire per event and encoder CPU per event (one core, records
    /// built and compressed as the forwarder does, with a `ferry-id`
    /// header). Batches of 780 events: a 12,500-event window over 16
    /// partitions.
    fn codecs(data: &[(String, String)]) {
        use ferry::kafka::record_batch::{BatchEncoder, Codec, ProducerFields};
        let codecs = [
            ("none", Codec::None),
            ("lz4", Codec::Lz4),
            ("zstd 1", Codec::Zstd(1)),
            ("zstd 3", Codec::Zstd(3)),
            ("zstd 6", Codec::Zstd(6)),
            ("zstd 9", Codec::Zstd(9)),
            ("zstd 19", Codec::Zstd(19)),
        ];
        let raw = data.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() as f64;
        println!("| codec | wire bytes per event | × raw | encode CPU ns per event |");
        println!("|---|---|---|---|");
        for (name, codec) in codecs {
            let mut enc = BatchEncoder::default();
            let mut out = Vec::new();
            let mut id = String::new();
            let (mut wire, mut best) = (0usize, f64::MAX);
            for _ in 0..3 {
                wire = 0;
                let t = Instant::now();
                for (i, chunk) in data.chunks(780).enumerate() {
                    for (j, (k, v)) in chunk.iter().enumerate() {
                        id.clear();
                        use std::fmt::Write as _;
                        let _ = write!(id, "gw-07:{}", i * 780 + j);
                        let headers = [("ferry-id".as_bytes(), id.as_bytes())];
                        let headers = headers.iter().map(|&(n, v)| (n, v));
                        enc.push(1_764_000_000_000, Some(k.as_bytes()), v.as_bytes(), headers);
                    }
                    enc.finish_into(codec, ProducerFields::NONE, &mut out);
                    wire += out.len();
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            let n = data.len() as f64;
            println!(
                "| {name} | {:.1} | {:.3} | {:.0} |",
                wire as f64 / n,
                wire as f64 / raw,
                best * 1e9 / n
            );
        }
    }

    pub fn main() {
        let a = args();
        if a.only.as_deref() == Some("codecs") {
            codecs(&dataset(a.events.min(200_000)));
            return;
        }
        let (bin, alloc_bin) = build_ferry();
        eprintln!("generating {} events", a.events);
        let data = dataset(a.events);
        let raw_per_event =
            data.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() as f64 / a.events as f64;
        let frames = encode_frames(&data, true);
        let keyless = encode_frames(&data, false);
        let lines = encode_lines(&data);
        let work = tempfile::tempdir().unwrap();
        let data_file = work.path().join("data.txt");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&data_file).unwrap());
            for (k, v) in &data {
                writeln!(f, "{k}|{v}").unwrap();
            }
        }

        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(TOPIC_FERRY, PARTITIONS, 1).unwrap();
        cluster.create_topic(TOPIC_KCAT, PARTITIONS, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "bench")
            .create()
            .unwrap();
        let n = a.events;
        let part = |name: &str| a.only.as_deref().is_none_or(|o| o == name);
        // One unmeasured pass of each producer first: the first records
        // into a fresh mock broker's partitions are slower to take,
        // whoever produces them (run 1 used to trail runs 2 and 3).
        if part("e2e") || part("kcat") {
            eprintln!("warm-up (not measured)");
            let dir = tempfile::tempdir_in(work.path()).unwrap();
            let f = Ferry::start(&bin, dir.path(), &bootstrap, "relaxed", "");
            let before = end_offsets(&consumer, TOPIC_FERRY);
            send_frames(&f.socket(), &frames, n);
            wait_offsets(&consumer, TOPIC_FERRY, before + n as i64);
            f.stop();
            kcat(&data_file, &bootstrap, n, &consumer);
        }
        let mut runs = Vec::new();
        for run in 0..a.runs {
            eprintln!("run {}/{}", run + 1, a.runs);
            let mut r = Run::default();

            // End to end, relaxed and fsync.
            for durability in ["relaxed", "fsync"].into_iter().filter(|_| part("e2e")) {
                let dir = tempfile::tempdir_in(work.path()).unwrap();
                let f = Ferry::start(&bin, dir.path(), &bootstrap, durability, "");
                let before = end_offsets(&consumer, TOPIC_FERRY);
                let (cpu0, io0) = (
                    cpu_seconds(f.pid()),
                    proc_field(f.pid(), "io", "write_bytes:"),
                );
                let t = Instant::now();
                send_frames(&f.socket(), &frames, n);
                wait_offsets(&consumer, TOPIC_FERRY, before + n as i64);
                let rate = n as f64 / t.elapsed().as_secs_f64();
                if durability == "relaxed" {
                    r.e2e_relaxed = rate;
                    r.ferry_cpu_per_m = (cpu_seconds(f.pid()) - cpu0) * 1e6 / n as f64;
                    r.device_bytes_per_event =
                        (proc_field(f.pid(), "io", "write_bytes:") - io0) as f64 / n as f64;
                    r.ferry_peak_rss_kib = proc_field(f.pid(), "status", "VmHWM:");
                    std::thread::sleep(Duration::from_secs(3));
                    r.ferry_idle_rss_kib = proc_field(f.pid(), "status", "VmRSS:");
                    r.ferry_idle_anon_kib = proc_field(f.pid(), "status", "RssAnon:");
                } else {
                    r.e2e_fsync = rate;
                }
                f.stop();
            }

            // librdkafka on the same broker and data.
            if part("kcat") {
                let (rate, rss, cpu) = kcat(&data_file, &bootstrap, n, &consumer);
                r.kcat_rate = rate;
                r.kcat_peak_rss_kib = rss;
                r.kcat_cpu_per_m = cpu;
            }
            // Over a distant uplink: the same runs through a proxy that
            // adds the round trip, ferry first, then kcat.
            if part("rtt") {
                let link = crate::latency::LatencyProxy::start(&bootstrap, a.rtt);
                let dir = tempfile::tempdir_in(work.path()).unwrap();
                let f = Ferry::start(&bin, dir.path(), &link.bootstrap, "relaxed", "");
                let before = end_offsets(&consumer, TOPIC_FERRY);
                let t = Instant::now();
                send_frames(&f.socket(), &frames, n);
                wait_offsets(&consumer, TOPIC_FERRY, before + n as i64);
                r.rtt_ferry = n as f64 / t.elapsed().as_secs_f64();
                r.rtt_peak_rss_kib = proc_field(f.pid(), "status", "VmHWM:");
                r.rtt_in_flight_peak = f.status().in_flight_peak_bytes;
                f.stop();
                let dir = tempfile::tempdir_in(work.path()).unwrap();
                let double = format!(
                    "[kafka]\nmax_in_flight_bytes = {}\n",
                    2 * ferry::forward::config::DEFAULT_MAX_IN_FLIGHT_BYTES
                );
                let f = Ferry::start(&bin, dir.path(), &link.bootstrap, "relaxed", &double);
                let before = end_offsets(&consumer, TOPIC_FERRY);
                let t = Instant::now();
                send_frames(&f.socket(), &frames, n);
                wait_offsets(&consumer, TOPIC_FERRY, before + n as i64);
                r.rtt_ferry_double = n as f64 / t.elapsed().as_secs_f64();
                r.rtt_double_peak_rss_kib = proc_field(f.pid(), "status", "VmHWM:");
                f.stop();
                r.rtt_kcat = kcat(&data_file, &link.bootstrap, n, &consumer).0;
                r.rtt_kcat_idempotent = kcat_with(
                    &data_file,
                    &link.bootstrap,
                    n,
                    &consumer,
                    &["enable.idempotence=true"],
                )
                .0;
                eprintln!(
                    "  over a {} ms round trip: ferry {:.0}/s (peak {} KiB, {} KiB in flight), with twice the budget {:.0}/s (peak {} KiB), kcat {:.0}/s, kcat idempotent {:.0}/s",
                    a.rtt.as_millis(),
                    r.rtt_ferry,
                    r.rtt_peak_rss_kib,
                    r.rtt_in_flight_peak / 1024,
                    r.rtt_ferry_double,
                    r.rtt_double_peak_rss_kib,
                    r.rtt_kcat,
                    r.rtt_kcat_idempotent
                );
            }

            // Lines over tcp against frames over the unix socket, the same
            // keyless events (lines carry no key).
            if part("tcp") {
                let dir = tempfile::tempdir_in(work.path()).unwrap();
                let port = free_port();
                let listeners = tcp_listener_config(dir.path(), port);
                let f = Ferry::start(&bin, dir.path(), &bootstrap, "relaxed", &listeners);
                let before = end_offsets(&consumer, TOPIC_FERRY);
                let t = Instant::now();
                send_lines(port, &lines);
                wait_offsets(&consumer, TOPIC_FERRY, before + n as i64);
                r.tcp_lines = n as f64 / t.elapsed().as_secs_f64();
                f.stop();
                let dir = tempfile::tempdir_in(work.path()).unwrap();
                let f = Ferry::start(&bin, dir.path(), &bootstrap, "relaxed", "");
                let before = end_offsets(&consumer, TOPIC_FERRY);
                let t = Instant::now();
                send_frames(&f.socket(), &keyless, n);
                wait_offsets(&consumer, TOPIC_FERRY, before + n as i64);
                r.keyless_frames = n as f64 / t.elapsed().as_secs_f64();
                f.stop();
                eprintln!(
                    "  keyless: lines over tcp {:.0}/s, frames over unix {:.0}/s",
                    r.tcp_lines, r.keyless_frames
                );
            }
            // Instructions per event, a fixed run under cachegrind.
            if part("instr") {
                let (ferry, kcat) = instructions(&bin, work.path(), &data, &bootstrap, &consumer);
                r.ferry_instructions = ferry;
                r.kcat_instructions = kcat;
                eprintln!(
                    "  instructions per event (cachegrind, {} events): ferry {ferry:.0}, kcat {kcat:.0}",
                    data.len().min(INSTR_EVENTS)
                );
            }
            if a.only
                .as_deref()
                .is_some_and(|o| o == "rtt" || o == "tcp" || o == "instr")
            {
                continue;
            }

            if !part("drain") {
                eprintln!(
                    "  e2e relaxed {:.0}/s, fsync {:.0}/s, peak {} KiB, idle {} KiB, cpu {:.2} s/M; kcat {:.0}/s",
                    r.e2e_relaxed,
                    r.e2e_fsync,
                    r.ferry_peak_rss_kib,
                    r.ferry_idle_rss_kib,
                    r.ferry_cpu_per_m,
                    r.kcat_rate
                );
                continue;
            }

            // Ingest only (no broker), then start-up with the backlog, then drain.
            let dir = tempfile::tempdir_in(work.path()).unwrap();
            // The forwarder's connection attempts to the unreachable broker
            // would be counted with the ingest path's allocations (the
            // counter is process-wide): after its first failed attempt it
            // waits at least 30 s, past the end of this phase.
            let f = Ferry::start(
                &alloc_bin,
                dir.path(),
                "127.0.0.1:1",
                "relaxed",
                QUIET_FORWARDER,
            );
            let a0 = f.status().allocations.unwrap_or(0);
            let t = Instant::now();
            send_frames(&f.socket(), &frames, n);
            r.ingest_rate = n as f64 / t.elapsed().as_secs_f64();
            // The status query itself allocates a little; it is counted in.
            r.allocs_ingest = (f.status().allocations.unwrap_or(0) - a0) as f64 / n as f64;
            f.stop();
            let db = dir.path().join("data/outbox.db");
            let at_rest = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0)
                + std::fs::metadata(db.with_extension("db-wal"))
                    .map(|m| m.len())
                    .unwrap_or(0);
            r.outbox_bytes_per_event = at_rest as f64 / n as f64;
            r.ready_ms = time_to_ready(&bin, dir.path()).as_secs_f64() * 1000.0;

            let before = end_offsets(&consumer, TOPIC_FERRY);
            let f = Ferry::start(&alloc_bin, dir.path(), &bootstrap, "relaxed", "");
            let a0 = f.status().allocations.unwrap_or(0);
            let t = Instant::now();
            wait_offsets(&consumer, TOPIC_FERRY, before + n as i64);
            r.drain_rate = n as f64 / t.elapsed().as_secs_f64();
            r.allocs_forward = (f.status().allocations.unwrap_or(0) - a0) as f64 / n as f64;
            let drain_peak_kib = proc_field(f.pid(), "status", "VmHWM:");
            f.stop();
            if a.only.is_some() {
                eprintln!(
                    "  ingest {:.0}/s ({:.4} allocs/ev), ready with the backlog in {:.1} ms, drain {:.0}/s ({:.2} allocs/ev, peak {} KiB)",
                    r.ingest_rate,
                    r.allocs_ingest,
                    r.ready_ms,
                    r.drain_rate,
                    r.allocs_forward,
                    drain_peak_kib
                );
                continue;
            }
            eprintln!(
                "  e2e relaxed {:.0}/s, fsync {:.0}/s, kcat {:.0}/s, ingest {:.0}/s, drain {:.0}/s",
                r.e2e_relaxed, r.e2e_fsync, r.kcat_rate, r.ingest_rate, r.drain_rate
            );
            runs.push(r);
        }
        if a.only.is_none() {
            write_report(&a, &runs, raw_per_event, &bin);
        }
    }

    fn median(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }

    fn machine() -> String {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mem = proc_field_self("MemTotal:") / 1024 / 1024;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        format!(
            "{cpu}, {cores} cores, {mem} GiB RAM, Linux {}",
            kernel.trim()
        )
    }

    fn proc_field_self(name: &str) -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn write_report(a: &Args, runs: &[Run], raw: f64, bin: &Path) {
        let m = |f: fn(&Run) -> f64| median(runs, f);
        let kcat = m(|r| r.kcat_rate);
        let mib = |kib: f64| kib / 1024.0;
        let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
        let date = Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        let rows = [
            (
                "end-to-end, `relaxed`",
                format!(
                    "{:.0} ev/s = {:.2}× librdkafka",
                    m(|r| r.e2e_relaxed),
                    m(|r| r.e2e_relaxed) / kcat
                ),
                "≥ 1.0×",
                verdict(m(|r| r.e2e_relaxed) / kcat >= 1.0),
            ),
            (
                "end-to-end, `fsync`",
                format!(
                    "{:.0} ev/s = {:.2}× librdkafka",
                    m(|r| r.e2e_fsync),
                    m(|r| r.e2e_fsync) / kcat
                ),
                "≥ 0.8×",
                verdict(m(|r| r.e2e_fsync) / kcat >= 0.8),
            ),
            (
                "librdkafka (`kcat -P -z lz4`), same broker and data",
                format!("{kcat:.0} ev/s"),
                "(peer)",
                "",
            ),
            (
                "end-to-end over a distant uplink (`relaxed`)",
                format!(
                    "{:.0} ev/s = {:.2}× librdkafka over the same ({:.0} ev/s); ferry's peak RSS {:.1} MiB",
                    m(|r| r.rtt_ferry),
                    m(|r| r.rtt_ferry) / m(|r| r.rtt_kcat),
                    m(|r| r.rtt_kcat),
                    mib(m(|r| r.rtt_peak_rss_kib as f64))
                ),
                "≥ 1.0×, within the default memory budget",
                verdict(m(|r| r.rtt_ferry) / m(|r| r.rtt_kcat) >= 1.0),
            ),
            (
                "the same, twice the default memory budget (`max_in_flight_bytes` 16 MiB); at the default the windows in flight held at most",
                format!(
                    "{:.0} ev/s = {:.2}× librdkafka, peak RSS {:.1} MiB; {:.1} MiB",
                    m(|r| r.rtt_ferry_double),
                    m(|r| r.rtt_ferry_double) / m(|r| r.rtt_kcat),
                    mib(m(|r| r.rtt_double_peak_rss_kib as f64)),
                    m(|r| r.rtt_in_flight_peak as f64) / 1048576.0
                ),
                "(context)",
                "",
            ),
            (
                "peak RSS over the distant uplink",
                format!("{:.1} MiB", mib(m(|r| r.rtt_peak_rss_kib as f64))),
                "≤ 16 MiB",
                verdict(mib(m(|r| r.rtt_peak_rss_kib as f64)) <= 16.0),
            ),
            (
                "the same, librdkafka as an idempotent producer (as ferry is; `-X enable.idempotence=true`)",
                format!(
                    "{:.0} ev/s; ferry = {:.2}× it",
                    m(|r| r.rtt_kcat_idempotent),
                    m(|r| r.rtt_ferry) / m(|r| r.rtt_kcat_idempotent)
                ),
                "(context)",
                "",
            ),
            (
                "keyless events: `lines` over a `tcp` listener / frames over the unix socket",
                format!(
                    "{:.0} / {:.0} ev/s = {:.2}×",
                    m(|r| r.tcp_lines),
                    m(|r| r.keyless_frames),
                    m(|r| r.tcp_lines) / m(|r| r.keyless_frames)
                ),
                "≥ 0.9×",
                verdict(m(|r| r.tcp_lines) / m(|r| r.keyless_frames) >= 0.9),
            ),
            (
                "ingest only (no broker), `relaxed`",
                format!("{:.0} ev/s", m(|r| r.ingest_rate)),
                "≥ 500 000 ev/s",
                verdict(m(|r| r.ingest_rate) >= 500_000.0),
            ),
            (
                "drain of the stored backlog",
                format!("{:.0} ev/s", m(|r| r.drain_rate)),
                "≥ 300 000 ev/s",
                verdict(m(|r| r.drain_rate) >= 300_000.0),
            ),
            (
                "peak RSS, ferry (kcat)",
                format!(
                    "{:.1} MiB ({:.1} MiB; ratio {:.2})",
                    mib(m(|r| r.ferry_peak_rss_kib as f64)),
                    mib(m(|r| r.kcat_peak_rss_kib as f64)),
                    m(|r| r.ferry_peak_rss_kib as f64) / m(|r| r.kcat_peak_rss_kib as f64)
                ),
                "≤ 12 MiB",
                verdict(mib(m(|r| r.ferry_peak_rss_kib as f64)) <= 12.0),
            ),
            (
                "idle RSS, ferry",
                format!(
                    "{:.1} MiB ({:.1} MiB of it anonymous, the rest mapped files: code and libraries)",
                    mib(m(|r| r.ferry_idle_rss_kib as f64)),
                    mib(m(|r| r.ferry_idle_anon_kib as f64))
                ),
                "≤ 4 MiB",
                verdict(mib(m(|r| r.ferry_idle_rss_kib as f64)) <= 4.0),
            ),
            (
                "CPU s per million events, ferry (kcat)",
                format!(
                    "{:.2} ({:.2})",
                    m(|r| r.ferry_cpu_per_m),
                    m(|r| r.kcat_cpu_per_m)
                ),
                "≤ kcat's",
                verdict(m(|r| r.ferry_cpu_per_m) <= m(|r| r.kcat_cpu_per_m)),
            ),
            (
                "instructions per event, ferry (kcat): a fixed 100 k-event run under `valgrind --tool=cachegrind`, start-up included",
                format!(
                    "{:.0} ({:.0}) = {:.2}× kcat's",
                    m(|r| r.ferry_instructions),
                    m(|r| r.kcat_instructions),
                    m(|r| r.ferry_instructions) / m(|r| r.kcat_instructions)
                ),
                "≤ kcat's",
                verdict(m(|r| r.ferry_instructions) <= m(|r| r.kcat_instructions)),
            ),
            (
                "outbox bytes at rest per event",
                format!(
                    "{:.1} B = {:.2}× raw ({raw:.0} B)",
                    m(|r| r.outbox_bytes_per_event),
                    m(|r| r.outbox_bytes_per_event) / raw
                ),
                "≤ 0.5× raw",
                verdict(m(|r| r.outbox_bytes_per_event) / raw <= 0.5),
            ),
            (
                "device bytes written per event (e2e, relaxed)",
                format!(
                    "{:.1} B = {:.2}× raw",
                    m(|r| r.device_bytes_per_event),
                    m(|r| r.device_bytes_per_event) / raw
                ),
                "≤ 0.5× raw",
                verdict(m(|r| r.device_bytes_per_event) / raw <= 0.5),
            ),
            (
                "start-up to READY, backlog stored",
                format!("{:.1} ms", m(|r| r.ready_ms)),
                "≤ 300 ms",
                verdict(m(|r| r.ready_ms) <= 300.0),
            ),
            (
                "heap allocations per event, ingest path",
                format!("{:.4}", m(|r| r.allocs_ingest)),
                "0",
                verdict(m(|r| r.allocs_ingest) < 0.001),
            ),
            (
                "heap allocations per event, forward path",
                format!("{:.3}", m(|r| r.allocs_forward)),
                "≤ 0.01",
                verdict(m(|r| r.allocs_forward) <= 0.01),
            ),
        ];
        let mut md = String::new();
        md.push_str("# ferry benchmarks\n\n");
        md.push_str(&format!(
        "- Date: {date}\n- Machine: {}\n- Command: `cargo run --release --example bench -- --runs {} --events {}`\n",
        machine(),
        a.runs,
        a.events
    ));
        md.push_str(&format!(
        "- Data: {} seeded JSON telemetry events, {raw:.0} B each on average (key + value), {KEYS} keys, topic of {PARTITIONS} partitions; broker: librdkafka mock cluster on loopback (1 broker). Figures are medians of {} runs, after one unmeasured warm-up pass each of ferry and kcat. ferry binary: {:.1} MiB.\n",
        a.events,
        runs.len(),
        size as f64 / 1048576.0
    ));
        md.push_str(&format!("- Distant uplink: a proxy in front of the broker holds every Kafka frame for half of a {} ms round trip in each direction (pipelined, Metadata rewritten so every connection passes through it), for ferry and kcat alike.\n", a.rtt.as_millis()));
        md.push_str("- End-to-end: from the first frame written to ferry's unix socket until the broker's end offsets account for every event; kcat: from exec until the same.\n");
        md.push_str("- Allocations: a `count-allocs` build of ferry; ingest includes per-batch work (buffers, channels), which is amortised over the events of a read, and runs with the forwarder held back by a 30–60 s retry delay so its connection attempts to the unreachable broker are not counted; forward counts everything from reading the stored blocks to the broker's answers (plans, record batches, requests, responses), divided by the events.\n\n");
        md.push_str("| figure | measured | target (performance issue) | |\n|---|---|---|---|\n");
        for (name, value, target, v) in rows {
            md.push_str(&format!("| {name} | {value} | {target} | {v} |\n"));
        }
        md.push('\n');
        // Keep the hand-written analysis that follows the figures.
        if let Ok(old) = std::fs::read_to_string(&a.out) {
            if let Some(i) = old.find("## Analysis") {
                md.push_str(&old[i..]);
            }
        }
        std::fs::write(&a.out, &md).expect("write BENCHMARKS.md");
        println!("{md}");
    }
}
