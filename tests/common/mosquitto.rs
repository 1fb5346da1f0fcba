//! A real Mosquitto (Debian's) on a free loopback port with its own config
//! and persistence files in a temp dir, a small QoS 1 publisher that
//! records what the broker acknowledged, and a proxy that can swallow
//! what ferry sends the broker (so its PUBACKs never arrive).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    pub port: u16,
    pub dir: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Write a config (persistence on, `extra` appended) and start it.
    /// The queue per client stays below 65,536 messages: Mosquitto gives a
    /// message its packet id when it queues it (2.0.11 `subs.c`), so a
    /// longer queue repeats ids, and a PUBACK then removes the first
    /// in-flight message with that id (`db__message_delete_outgoing`), not
    /// necessarily the one acknowledged. `user root` keeps it from
    /// switching to the `mosquitto` user, which cannot write the temp dir.
    pub fn start(dir: &Path, extra: &str) -> Mosquitto {
        let port = super::free_port();
        Self::start_on(dir, port, extra)
    }

    /// As [`Mosquitto::start`], on a given port.
    pub fn start_on(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\n\
             persistence true\npersistence_location {}/\n\
             autosave_interval 1\n\
             max_inflight_messages 20\nmax_queued_messages 60000\n\
             user root\n\
             log_dest file {}/mosquitto.log\n{}\n",
            dir.display(),
            dir.display(),
            if extra.contains("allow_anonymous") {
                extra.to_string()
            } else {
                format!("allow_anonymous true\n{extra}")
            }
        );
        std::fs::write(&conf, text).unwrap();
        let mut m = Mosquitto {
            port,
            dir: dir.to_path_buf(),
            conf,
            child: None,
        };
        m.run();
        m
    }

    fn run(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt install mosquitto)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Panics if Mosquitto dropped messages for a client because its queue
    /// was full: those were accepted from the publisher and never offered
    /// to ferry, and the test would judge ferry by them.
    pub fn assert_nothing_dropped(&self) {
        let log = std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
        assert!(
            !log.contains("being dropped"),
            "Mosquitto's queue for ferry overflowed (max_queued_messages): the test published faster than it may\n{log}"
        );
    }

    /// SIGTERM (Mosquitto saves its sessions) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Add a user to a password file for `password_file` in the config.
    pub fn add_user(file: &Path, user: &str, password: &str) {
        let mut cmd = Command::new("mosquitto_passwd");
        if !file.exists() {
            cmd.arg("-c");
        }
        let st = cmd
            .arg("-b")
            .arg(file)
            .args([user, password])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Encode a 3.1.1 packet: first byte, body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len & 0x7f) as u8;
        len >>= 7;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn str_field(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Read one whole packet: (first byte, body).
fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    let mut len = 0usize;
    for i in 0..4 {
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        len |= ((b[0] & 0x7f) as usize) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((first[0], body))
}

/// A QoS 1 publisher (MQTT 3.1.1, clean session) that keeps up to
/// `window` messages in flight and records each one the broker acknowledged.
pub struct Publisher {
    stream: TcpStream,
}

impl Publisher {
    pub fn connect(
        address: &str,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> std::io::Result<Publisher> {
        let mut stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut body = Vec::new();
        str_field(&mut body, b"MQTT");
        body.push(4);
        body.push(0x02 | if login.is_some() { 0xc0 } else { 0 });
        body.extend_from_slice(&60u16.to_be_bytes());
        str_field(&mut body, client_id.as_bytes());
        if let Some((u, p)) = login {
            str_field(&mut body, u.as_bytes());
            str_field(&mut body, p.as_bytes());
        }
        stream.write_all(&packet(0x10, &body))?;
        let (first, body) = read_packet(&mut stream)?;
        if first != 0x20 || body.get(1) != Some(&0) {
            return Err(std::io::Error::other(format!("CONNACK refused: {body:?}")));
        }
        Ok(Publisher { stream })
    }

    /// Publish each of `values` on `topic` at QoS 1 with up to `window` in
    /// flight, each value once (a message whose PUBACK was lost with the
    /// connection is not sent again: that would be the publisher's own
    /// duplicate); records the values the broker acknowledged, in order,
    /// until `stop` is set or the connection fails. Returns how many were sent.
    pub fn publish_all(
        &mut self,
        topic: &str,
        values: impl Iterator<Item = String>,
        window: usize,
        stop: &AtomicBool,
        acked: &std::sync::Mutex<Vec<String>>,
    ) -> u64 {
        let mut sent = 0u64;
        let mut in_flight: std::collections::VecDeque<(u16, String)> = Default::default();
        let mut next_id: u16 = 1;
        let mut values = values.peekable();
        loop {
            while in_flight.len() < window && !stop.load(Relaxed) {
                let Some(v) = values.next() else { break };
                let mut body = Vec::new();
                str_field(&mut body, topic.as_bytes());
                body.extend_from_slice(&next_id.to_be_bytes());
                body.extend_from_slice(v.as_bytes());
                sent += 1;
                if self.stream.write_all(&packet(0x32, &body)).is_err() {
                    return sent;
                }
                in_flight.push_back((next_id, v));
                next_id = next_id.wrapping_add(1).max(1);
            }
            if in_flight.is_empty() {
                return sent;
            }
            match read_packet(&mut self.stream) {
                Ok((0x40, body)) => {
                    let id = u16::from_be_bytes([body[0], body[1]]);
                    // Mosquitto acknowledges in order.
                    if let Some(pos) = in_flight.iter().position(|(i, _)| *i == id) {
                        let (_, v) = in_flight.remove(pos).unwrap();
                        acked.lock().unwrap().push(v);
                    }
                }
                Ok(_) => {}
                Err(_) => return sent,
            }
        }
    }

    /// Publish one message at QoS 1 and wait for its PUBACK.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> std::io::Result<()> {
        let mut body = Vec::new();
        str_field(&mut body, topic.as_bytes());
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(payload);
        self.stream.write_all(&packet(0x32, &body))?;
        loop {
            let (first, _) = read_packet(&mut self.stream)?;
            if first == 0x40 {
                return Ok(());
            }
        }
    }
}

/// Between ferry and Mosquitto: passes everything, until `swallow` is set;
/// then what ferry sends is dropped (its PUBACKs never reach the broker).
/// `cut` closes every connection.
pub struct MqttProxy {
    pub port: u16,
    pub swallow: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
}

impl MqttProxy {
    pub fn start(upstream: String) -> MqttProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let swallow = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicUsize::new(0));
        let (sw, generation_) = (swallow.clone(), generation.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let my_gen = generation_.load(Relaxed);
                for (mut from, mut to, drop_it) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        Some(sw.clone()),
                    ),
                    (server, client, None),
                ] {
                    let generation = generation_.clone();
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            if generation.load(Relaxed) != my_gen {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                                Ok(n) => {
                                    if drop_it.as_ref().is_some_and(|s| s.load(Relaxed)) {
                                        continue;
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => {
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                            }
                        }
                    });
                }
            }
        });
        MqttProxy {
            port,
            swallow,
            generation,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Close every connection through the proxy.
    pub fn cut(&self) {
        self.generation.fetch_add(1, Relaxed);
    }
}
