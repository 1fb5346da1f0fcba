//! SD-card wear: what ferry writes to its file system per event, and how
//! often it syncs, at the steady rates a real gateway sees (1,000 and
//! 10,000 events/s), under `fsync` and `relaxed`. One command:
//!
//!     cargo run --release --example wear [-- --seconds 20 --rates 1000,10000]
//!
//! Each case runs the release ferry twice, against librdkafka's mock
//! broker on loopback, fed by a paced frames client:
//! - on the power-cut simulator (tests/common/powercut.rs, FUSE), which
//!   counts the bytes written to each file and every `fsync`/`fdatasync`
//!   and directory `fsync`: what the file system is asked to write;
//! - on the host's ext4, where the kernel's `/proc/<pid>/io` `write_bytes`
//!   counts what the process sent towards the block device (page-cache
//!   write-back included, the file system's own journal not).
//!
//! Neither sees the card's own write amplification (its flash pages and
//! erase blocks are larger than SQLite's 4 KiB pages): multiply by the
//! card's factor for its wear.

#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("the wear benchmark runs on the x86_64 development host (librdkafka's mock broker)");
}

#[cfg(target_arch = "x86_64")]
fn main() {
    wear::main()
}

// The simulator's cuts are not used here, only its counters.
#[cfg(target_arch = "x86_64")]
#[path = "../../tests/common/powercut.rs"]
#[allow(dead_code)]
mod powercut;

#[cfg(target_arch = "x86_64")]
mod wear {
    use super::powercut::{Counters, CutFs};
    use ferry::backoff::SplitMix64;
    use ferry::ingest::frame::{self, Reply};
    use rdkafka::mocking::MockCluster;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    const TOPIC: &str = "wear";
    const KEYS: u64 = 24;
    /// Paced in slices of this length.
    const SLICE: Duration = Duration::from_millis(10);

    struct Args {
        seconds: u64,
        rates: Vec<u64>,
        /// The forwarder's `linger_ms` (ferry's default when absent).
        linger_ms: Option<u64>,
    }

    fn args() -> Args {
        let mut a = Args {
            seconds: 20,
            rates: vec![1_000, 10_000],
            linger_ms: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().unwrap_or_default();
            match flag.as_str() {
                "--seconds" => a.seconds = value.parse().expect("--seconds N"),
                "--rates" => {
                    a.rates = value
                        .split(',')
                        .map(|r| r.parse().expect("--rates N,N"))
                        .collect()
                }
                "--linger-ms" => a.linger_ms = Some(value.parse().expect("--linger-ms N")),
                other => {
                    panic!("unknown argument {other}; use --seconds N --rates N,N --linger-ms N")
                }
            }
        }
        a
    }

    /// A seeded telemetry event: (key, value), about 140 bytes together.
    fn event(rng: &mut SplitMix64, n: u64) -> (String, String) {
        let sensor = n % KEYS;
        let key = format!("sensor-{sensor:02}");
        let value = format!(
            "{{\"seq\":{n},\"ts\":{},\"temp_c\":{:.2},\"humidity\":{:.1},\"vbat\":{:.3},\"rssi\":-{},\"status\":\"ok\",\"fw\":\"2.4.1\",\"site\":\"plant-7\"}}",
            1_760_000_000_000u64 + n * 10,
            15.0 + (rng.next_u64() % 2000) as f64 / 100.0,
            30.0 + (rng.next_u64() % 600) as f64 / 10.0,
            3.0 + (rng.next_u64() % 1200) as f64 / 1000.0,
            40 + rng.next_u64() % 60
        );
        (key, value)
    }

    struct Ferry {
        child: Child,
        socket: PathBuf,
    }

    impl Ferry {
        fn start(
            bin: &Path,
            dir: &Path,
            data_dir: &Path,
            bootstrap: &str,
            durability: &str,
            linger_ms: Option<u64>,
        ) -> Self {
            let linger = linger_ms.map_or(String::new(), |ms| format!("linger_ms = {ms}\n"));
            let socket = dir.join("ferry.sock");
            let config = dir.join("ferry.toml");
            std::fs::write(
                &config,
                format!(
                    "node_id = \"wear\"\ndata_dir = \"{}\"\n[kafka]\nbrokers = [\"{bootstrap}\"]\n{linger}\
                     [outbox]\ndurability = \"{durability}\"\n[metrics]\nlisten = \"\"\n\
                     [[listener]]\ntype = \"unix\"\nformat = \"frames\"\npath = \"{}\"\n",
                    data_dir.display(),
                    socket.display()
                ),
            )
            .expect("write the config");
            let child = Command::new(bin)
                .args(["run", "-c"])
                .arg(&config)
                .env("FERRY_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start ferry");
            let deadline = Instant::now() + Duration::from_secs(30);
            while ferry::client::query_status(&socket).is_err() {
                assert!(Instant::now() < deadline, "ferry did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            Self { child, socket }
        }

        fn write_bytes(&self) -> u64 {
            std::fs::read_to_string(format!("/proc/{}/io", self.child.id()))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        }

        fn stop(mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.child.wait();
        }
    }

    /// Sends `rate` events/s for `duration`, one batch per [`SLICE`], each
    /// batch's acknowledgements awaited. Returns (events, raw bytes).
    fn paced(
        stream: &mut UnixStream,
        rng: &mut SplitMix64,
        next: &mut u64,
        rate: u64,
        duration: Duration,
    ) -> (u64, u64) {
        let per_slice = (rate as f64 * SLICE.as_secs_f64()).round() as u64;
        let start = Instant::now();
        let (mut events, mut raw) = (0u64, 0u64);
        let mut buf = Vec::new();
        let mut slice = 0u32;
        while start.elapsed() < duration {
            buf.clear();
            for _ in 0..per_slice {
                let (k, v) = event(rng, *next);
                *next += 1;
                raw += (k.len() + v.len()) as u64;
                frame::encode_event(&mut buf, TOPIC, Some(k.as_bytes()), &[], v.as_bytes(), None);
            }
            stream.write_all(&buf).expect("send to ferry");
            let mut acked = 0u64;
            while acked < per_slice {
                let mut len = [0u8; 4];
                stream.read_exact(&mut len).expect("ferry's answer");
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                stream.read_exact(&mut body).expect("ferry's answer");
                match Reply::decode(&body) {
                    Some(Reply::Ack(n)) => acked += u64::from(n),
                    other => panic!("ferry refused events: {other:?}"),
                }
            }
            events += per_slice;
            slice += 1;
            let due = start + SLICE * slice;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        (events, raw)
    }

    struct Case {
        rate: u64,
        durability: &'static str,
        achieved: f64,
        raw_per_event: f64,
        fs: Counters,
        fs_events: u64,
        seconds: f64,
        ext4_bytes_per_event: f64,
    }

    /// One rate and durability: warm-up, then `seconds` measured, on the
    /// simulator and on ext4.
    fn run_case(
        a: &Args,
        bin: &Path,
        bootstrap: &str,
        rate: u64,
        durability: &'static str,
    ) -> Case {
        let seconds = a.seconds;
        let measure = Duration::from_secs(seconds);
        let warm_up = Duration::from_secs(2);
        let mut rng = SplitMix64(0x5d_ca4d);
        let mut next = 0u64;

        // On the simulator: what the file system is asked to do.
        let tmp = tempfile::tempdir().expect("temp dir");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        let fs = CutFs::mount(&mnt);
        let f = Ferry::start(
            bin,
            tmp.path(),
            &mnt.join("data"),
            bootstrap,
            durability,
            a.linger_ms,
        );
        let mut stream = UnixStream::connect(&f.socket).expect("connect");
        paced(&mut stream, &mut rng, &mut next, rate, warm_up);
        let before = fs.counters();
        let t = Instant::now();
        let (fs_events, raw) = paced(&mut stream, &mut rng, &mut next, rate, measure);
        let secs = t.elapsed().as_secs_f64();
        let counted = fs.counters().since(&before);
        drop(stream);
        f.stop();
        drop(fs);

        // On ext4: what reaches the block layer.
        let tmp = tempfile::tempdir().expect("temp dir");
        let f = Ferry::start(
            bin,
            tmp.path(),
            &tmp.path().join("data"),
            bootstrap,
            durability,
            a.linger_ms,
        );
        let mut stream = UnixStream::connect(&f.socket).expect("connect");
        paced(&mut stream, &mut rng, &mut next, rate, warm_up);
        let io0 = f.write_bytes();
        let (ext4_events, _) = paced(&mut stream, &mut rng, &mut next, rate, measure);
        let ext4 = f.write_bytes() - io0;
        drop(stream);
        f.stop();

        Case {
            rate,
            durability,
            achieved: fs_events as f64 / secs,
            raw_per_event: raw as f64 / fs_events as f64,
            fs: counted,
            fs_events,
            seconds: secs,
            ext4_bytes_per_event: ext4 as f64 / ext4_events as f64,
        }
    }

    pub fn main() {
        let a = args();
        let st = Command::new(env!("CARGO"))
            .args(["build", "--release", "--bin", "ferry"])
            .status()
            .expect("cargo build");
        assert!(st.success(), "cannot build ferry");
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/ferry");
        let cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext> =
            MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(TOPIC, 4, 1).expect("create topic");
        let bootstrap = cluster.bootstrap_servers();
        let mut cases = Vec::new();
        for &rate in &a.rates {
            for durability in ["fsync", "relaxed"] {
                let c = run_case(&a, &bin, &bootstrap, rate, durability);
                eprintln!(
                    "{rate} ev/s {durability}: {:.0} ev/s achieved, {:?}",
                    c.achieved, c.fs
                );
                cases.push(c);
            }
        }
        println!(
            "| rate, durability | achieved | file-system bytes per event (WAL + db + shm + other) | × raw | file syncs/s | dir syncs/s | ext4 bytes per event (block layer) | per day at this rate (ext4) |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for c in &cases {
            let per = |b: u64| b as f64 / c.fs_events as f64;
            let total = per(c.fs.bytes());
            println!(
                "| {} ev/s, `{}` | {:.0} ev/s | {:.0} B ({:.0} + {:.0} + {:.0} + {:.0}) | {:.2}× | {:.1} | {:.2} | {:.0} B = {:.2}× raw | {:.1} GiB |",
                c.rate,
                c.durability,
                c.achieved,
                total,
                per(c.fs.wal_bytes),
                per(c.fs.db_bytes),
                per(c.fs.shm_bytes),
                per(c.fs.other_bytes),
                total / c.raw_per_event,
                c.fs.file_syncs as f64 / c.seconds,
                c.fs.dir_syncs as f64 / c.seconds,
                c.ext4_bytes_per_event,
                c.ext4_bytes_per_event / c.raw_per_event,
                c.ext4_bytes_per_event * c.rate as f64 * 86_400.0 / (1u64 << 30) as f64,
            );
        }
        println!(
            "raw event (key + value): {:.0} B; {} s measured per case after 2 s of warm-up; linger_ms {}",
            cases.first().map_or(0.0, |c| c.raw_per_event),
            a.seconds,
            a.linger_ms
                .map_or("default".to_string(), |ms| ms.to_string())
        );
    }
}
