//! MQTT ingest benchmark: QoS 1 messages from a real Mosquitto into Kafka
//! through ferry, against the broker's own speed (`mosquitto_sub -q 1`
//! writing to a file) on the same broker. One command:
//!
//!     cargo run --release --example mqtt_bench [-- --runs 3 --messages 50000]
//!
//! Each run: the subscriber's persistent session exists, `--messages`
//! QoS 1 messages are published into it while it is away (so both drain
//! the same queue, and the publisher's speed is not measured), then the
//! subscriber starts; the time runs until it has them all: for
//! `mosquitto_sub`, written to its file; for ferry, acknowledged by Kafka
//! (librdkafka's mock cluster). Both speak MQTT 3.1.1, so the broker's
//! `max_inflight_messages` (100) bounds both alike. The queue stays under
//! 65,536 messages: Mosquitto's packet ids repeat beyond (README, MQTT).
//! Prints medians; BENCHMARKS.md's MQTT section is written by hand from them.

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
mod bench {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    const TOPIC: &str = "bench-mqtt";

    struct Args {
        runs: usize,
        messages: usize,
    }

    fn args() -> Args {
        let mut a = Args {
            runs: 3,
            messages: 50_000,
        };
        let mut it = std::env::args().skip(1);
        while let Some(k) = it.next() {
            let v = it.next().unwrap_or_default();
            match k.as_str() {
                "--runs" => a.runs = v.parse().expect("--runs N"),
                "--messages" => a.messages = v.parse().expect("--messages N"),
                other => panic!("unknown argument {other}; use --runs N --messages N"),
            }
        }
        assert!(
            a.messages < 60_000,
            "keep --messages under 60000 (Mosquitto's packet ids)"
        );
        a
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    struct Broker {
        port: u16,
        child: Child,
    }

    impl Broker {
        fn start(dir: &Path) -> Broker {
            let port = free_port();
            let conf = dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                     max_inflight_messages 100\nmax_queued_messages 60000\nuser root\n"
                ),
            )
            .unwrap();
            let child = Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto (apt install mosquitto mosquitto-clients)");
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                std::thread::sleep(Duration::from_millis(20));
            }
            Broker { port, child }
        }
    }

    impl Drop for Broker {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Publish `n` seeded JSON readings at QoS 1 over 8 topics; returns
    /// when the broker acknowledged them all (mosquitto_pub waits).
    fn publish(port: u16, n: usize) {
        let mut lines = String::with_capacity(n * 120);
        for i in 0..n {
            lines.push_str(&format!(
                "{{\"device\":\"sensor-{:02}\",\"seq\":{i},\"temperature\":{:.2},\"humidity\":{:.1},\"battery\":{}}}\n",
                i % 8,
                18.0 + (i % 97) as f64 / 10.0,
                40.0 + (i % 53) as f64 / 2.0,
                100 - i % 60
            ));
        }
        // One publisher per topic level would reorder nothing here: one
        // stream, keys from the payload's device are not needed.
        let mut child = Command::new("mosquitto_pub")
            .args([
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-t",
                "bench/readings",
                "-l",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }

    fn children_cpu_s() -> f64 {
        // SAFETY: getrusage only writes the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(u.ru_utime) + t(u.ru_stime)
    }

    fn proc_cpu_s(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(i) = stat.rfind(')') else { return 0.0 };
        let f: Vec<&str> = stat[i + 2..].split(' ').collect();
        (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / 100.0
    }

    fn peak_rss_kib(pid: u32) -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// mosquitto_sub's drain: (messages/s, CPU s per million).
    fn run_sub(port: u16, n: usize, dir: &Path) -> (f64, f64) {
        let out = dir.join("sub.out");
        let sub = |count: usize| {
            let mut c = Command::new("mosquitto_sub");
            c.args(["-p", &port.to_string(), "-q", "1", "-c", "-i", "bench-sub"])
                .args(["-t", "bench/#", "-C", &count.to_string()]);
            c
        };
        // Create the session, then leave.
        let mut first = sub(1)
            .args(["-W", "1"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let _ = first.kill();
        let _ = first.wait();
        publish(port, n);
        let cpu0 = children_cpu_s();
        let t = Instant::now();
        let file = std::fs::File::create(&out).unwrap();
        let st = sub(n).stdout(file).status().unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(st.success());
        let cpu = children_cpu_s() - cpu0;
        let lines = std::fs::read_to_string(&out).unwrap().lines().count();
        assert_eq!(lines, n, "mosquitto_sub got {lines} of {n}");
        (n as f64 / secs, cpu / n as f64 * 1e6)
    }

    fn ferry_bin() -> PathBuf {
        let st = Command::new("cargo")
            .args(["build", "--release", "--bin", "ferry"])
            .status()
            .unwrap();
        assert!(st.success());
        PathBuf::from("target/release/ferry")
    }

    fn status_sent(socket: &Path) -> Option<u64> {
        ferry::client::query_status(socket).ok().map(|s| s.sent)
    }

    /// ferry's drain into Kafka: (messages/s, CPU s per million, peak RSS MiB).
    fn run_ferry(
        bin: &Path,
        port: u16,
        n: usize,
        dir: &Path,
        bootstrap: &str,
        durability: &str,
    ) -> (f64, f64, f64) {
        let data = dir.join(format!("ferry-{durability}"));
        let _ = std::fs::remove_dir_all(&data);
        let config = dir.join(format!("ferry-{durability}.toml"));
        std::fs::write(
            &config,
            format!(
                "node_id = \"bench\"\ndata_dir = \"{}\"\n[outbox]\ndurability = \"{durability}\"\n\
                 [metrics]\nlisten = \"\"\n[kafka]\nbrokers = [\"{bootstrap}\"]\n\
                 [[mqtt]]\nbroker = \"127.0.0.1:{port}\"\nprotocol = \"3.1.1\"\n\
                 [[mqtt.subscribe]]\nfilter = \"bench/#\"\ntopic = \"{TOPIC}\"\n",
                data.display()
            ),
        )
        .unwrap();
        let socket = data.join("ferry.sock");
        let start = || {
            let c = Command::new(bin)
                .args(["run", "-c"])
                .arg(&config)
                .env("FERRY_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            while status_sent(&socket).is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            c
        };
        let stop = |mut c: Child| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        };
        // Create the session (and subscription), then leave.
        let first = start();
        std::thread::sleep(Duration::from_millis(500));
        stop(first);
        publish(port, n);
        let t = Instant::now();
        let c = start();
        let pid = c.id();
        let deadline = Instant::now() + Duration::from_secs(120);
        while status_sent(&socket).unwrap_or(0) < n as u64 {
            assert!(Instant::now() < deadline, "ferry did not deliver {n}");
            std::thread::sleep(Duration::from_millis(2));
        }
        let secs = t.elapsed().as_secs_f64();
        let cpu = proc_cpu_s(pid);
        let rss = peak_rss_kib(pid) / 1024.0;
        stop(c);
        (n as f64 / secs, cpu / n as f64 * 1e6, rss)
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }

    pub fn main() {
        let a = args();
        let bin = ferry_bin();
        let tmp = tempfile::tempdir().unwrap();
        let broker = Broker::start(tmp.path());
        let cluster: MockCluster<'static, DefaultProducerContext> =
            MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(TOPIC, 8, 1).expect("topic");
        let bootstrap = cluster.bootstrap_servers();
        let (mut sub, mut sub_cpu) = (Vec::new(), Vec::new());
        let mut ferry: [(Vec<f64>, Vec<f64>, Vec<f64>); 2] = Default::default();
        for run in 0..=a.runs {
            let s = run_sub(broker.port, a.messages, tmp.path());
            let r = run_ferry(
                &bin,
                broker.port,
                a.messages,
                tmp.path(),
                &bootstrap,
                "relaxed",
            );
            let f = run_ferry(
                &bin,
                broker.port,
                a.messages,
                tmp.path(),
                &bootstrap,
                "fsync",
            );
            eprintln!(
                "run {run}{}: mosquitto_sub {:.0}/s; ferry relaxed {:.0}/s, fsync {:.0}/s",
                if run == 0 {
                    " (warm-up, not counted)"
                } else {
                    ""
                },
                s.0,
                r.0,
                f.0
            );
            if run == 0 {
                continue;
            }
            sub.push(s.0);
            sub_cpu.push(s.1);
            for (i, x) in [r, f].into_iter().enumerate() {
                ferry[i].0.push(x.0);
                ferry[i].1.push(x.1);
                ferry[i].2.push(x.2);
            }
        }
        let sub_rate = median(sub);
        println!(
            "MQTT QoS 1, {} messages of ~110 B drained from a Mosquitto 2.0.11 session, medians of {} runs:",
            a.messages, a.runs
        );
        println!(
            "  mosquitto_sub -q 1 > file: {sub_rate:.0} msg/s, CPU {:.2} s per million",
            median(sub_cpu)
        );
        for (i, name) in ["relaxed", "fsync"].iter().enumerate() {
            let rate = median(ferry[i].0.clone());
            println!(
                "  ferry ({name}) into Kafka: {rate:.0} msg/s = {:.2}x mosquitto_sub, CPU {:.2} s per million, peak RSS {:.1} MiB",
                rate / sub_rate,
                median(ferry[i].1.clone()),
                median(ferry[i].2.clone())
            );
        }
    }
}
