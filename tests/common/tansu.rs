//! tansu (crates.io, Apache-2.0), a Kafka-compatible broker in Rust, as a
//! second real peer: unlike librdkafka's mock cluster it checks the
//! idempotent producer's sequences (so a resent batch is dropped, not
//! written twice) and speaks SASL SCRAM. `.ci/run` builds it once and keeps
//! it in `~/.cache/ferry-ci`; `FERRY_TANSU` names another binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("FERRY_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = Path::new(&home).join(".cache/ferry-ci/tansu-0.6.0/bin/tansu");
    assert!(
        p.exists(),
        "tansu not found at {} (run .ci/run once, which builds it, or set FERRY_TANSU)",
        p.display()
    );
    p
}

/// A record's headers, in order.
type Headers = Vec<(String, Vec<u8>)>;
/// topition id, partition, offset, key, value.
type Row = (i64, i32, i64, Option<Vec<u8>>, Option<Vec<u8>>);

pub struct Tansu {
    dir: PathBuf,
    pub port: u16,
    /// The port Metadata names (a TLS terminator in front of the broker).
    advertised: u16,
    child: Option<Child>,
    authentication: bool,
}

impl Tansu {
    /// A broker on a free loopback port, its state (sqlite) under `dir`.
    pub fn start(dir: &Path) -> Self {
        Self::start_advertising(dir, None)
    }

    /// Like `start`, but Metadata names `advertise` as the broker's port,
    /// so every connection goes through what listens there.
    pub fn start_advertising(dir: &Path, advertise: Option<u16>) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = super::free_port();
        let mut t = Self {
            dir: dir.to_path_buf(),
            port,
            advertised: advertise.unwrap_or(port),
            child: None,
            authentication: false,
        };
        t.launch();
        t
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.current_dir(&self.dir)
            .args(["broker", "--listener-url", &self.url()])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{}", self.advertised),
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("tansu.log")).unwrap());
        if self.authentication {
            cmd.arg("--authentication");
        }
        self.child = Some(cmd.spawn().expect("start tansu"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, args: &[&str]) {
        let out = Command::new(binary())
            .current_dir(&self.dir)
            .args(args)
            .args(["--broker", &self.url()])
            .output()
            .expect("run tansu");
        assert!(
            out.status.success(),
            "tansu {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.cli(&[
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
        ]);
    }

    /// Add a SCRAM user (`scram256` or `scram512`), then restart the broker
    /// with authentication required (users live in its sqlite file).
    pub fn add_user_and_require_auth(&mut self, users: &[(&str, &str, &str)]) {
        for (name, password, mechanism) in users {
            self.cli(&["user", "create", name, password, "--mechanism", mechanism]);
        }
        self.stop();
        self.authentication = true;
        self.launch();
    }

    /// Every record the broker holds for `topic`, read from its own store
    /// (its sqlite log): what was written, each copy once, in offset order.
    /// (librdkafka 2.12's consumer fetches nothing from tansu 0.6 once a
    /// partition holds tens of thousands of records, and says nothing.)
    pub fn records(&self, topic: &str) -> Vec<super::Got> {
        let db = rusqlite::Connection::open_with_flags(
            self.dir.join("tansu.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut stmt = db
            .prepare(
                "SELECT tp.id, tp.partition, r.offset_id, r.k, r.v FROM record r \
                 JOIN topition tp ON tp.id = r.topition JOIN topic t ON t.id = tp.topic \
                 WHERE t.name = ?1 ORDER BY tp.partition, r.offset_id",
            )
            .unwrap();
        // One pass over the headers (the table has no index to look up by).
        let mut by_record: std::collections::HashMap<(i64, i64), Headers> =
            std::collections::HashMap::new();
        let mut hs = db
            .prepare("SELECT topition, offset_id, k, v FROM header ORDER BY rowid")
            .unwrap();
        let mut q = hs.query([]).unwrap();
        while let Some(r) = q.next().unwrap() {
            let k: Vec<u8> = r.get(2).unwrap();
            let v: Option<Vec<u8>> = r.get(3).unwrap();
            by_record
                .entry((r.get(0).unwrap(), r.get(1).unwrap()))
                .or_default()
                .push((
                    String::from_utf8_lossy(&k).into_owned(),
                    v.unwrap_or_default(),
                ));
        }
        let rows: Vec<Row> = stmt
            .query_map([topic], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.into_iter()
            .map(|(tp, partition, offset, key, value)| super::Got {
                topic: topic.to_string(),
                partition,
                offset,
                key,
                value: value.unwrap_or_default(),
                headers: by_record.remove(&(tp, offset)).unwrap_or_default(),
            })
            .collect()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}
