//! A distant uplink for the benchmark: a TCP proxy in front of one broker
//! that holds every Kafka frame for half the round trip in each direction
//! (kernel netem is not available here). Frames are pipelined, as on a real
//! link: each is held for the delay after it arrived, not after the frame
//! before it left, so several requests can be on the wire at once. Metadata
//! answers are rewritten to name the proxy, so every connection a client
//! opens after bootstrap passes through it too.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const METADATA: i16 = 3;

pub struct LatencyProxy {
    /// `host:port` for the clients' bootstrap list.
    pub bootstrap: String,
}

/// Requests on their way, by correlation id: (api key, version).
type Pending = Arc<Mutex<HashMap<i32, (i16, i16)>>>;

impl LatencyProxy {
    /// A proxy in front of `upstream` (one broker, `host:port`) adding
    /// `rtt` to every round trip.
    pub fn start(upstream: &str, rtt: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the latency proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(broker) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = broker.set_nodelay(true);
                let pending = Pending::default();
                let half = rtt / 2;
                let (c_in, b_out) = (client.try_clone().unwrap(), broker.try_clone().unwrap());
                let p = pending.clone();
                std::thread::spawn(move || {
                    carry(c_in, b_out, half, |frame| {
                        if frame.len() >= 8 {
                            let key = i16::from_be_bytes([frame[0], frame[1]]);
                            let version = i16::from_be_bytes([frame[2], frame[3]]);
                            let corr = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                            p.lock().unwrap().insert(corr, (key, version));
                        }
                        frame
                    })
                });
                std::thread::spawn(move || {
                    carry(broker, client, half, |frame| {
                        if frame.len() < 4 {
                            return frame;
                        }
                        let corr = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                        match pending.lock().unwrap().remove(&corr) {
                            Some((METADATA, version)) => rewrite_metadata(frame, version, port),
                            _ => frame,
                        }
                    })
                });
            }
        });
        Self {
            bootstrap: format!("127.0.0.1:{port}"),
        }
    }
}

/// Read frames from `from`, pass each through `edit`, and write it to `to`
/// `delay` after it was read (a writer thread holds the queue).
fn carry(
    mut from: TcpStream,
    to: TcpStream,
    delay: Duration,
    mut edit: impl FnMut(Vec<u8>) -> Vec<u8>,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut out = to.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for (due, frame) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let len = (frame.len() as i32).to_be_bytes();
            if out
                .write_all(&len)
                .and_then(|_| out.write_all(&frame))
                .is_err()
            {
                break;
            }
        }
        let _ = out.shutdown(Shutdown::Both);
    });
    loop {
        let mut len = [0u8; 4];
        if from.read_exact(&mut len).is_err() {
            break;
        }
        let n = i32::from_be_bytes(len);
        if !(0..=256 << 20).contains(&n) {
            break;
        }
        let mut frame = vec![0u8; n as usize];
        if from.read_exact(&mut frame).is_err() {
            break;
        }
        let due = Instant::now() + delay;
        if tx.send((due, edit(frame))).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// A Metadata answer naming this proxy as every broker (one broker behind
/// it).
fn rewrite_metadata(frame: Vec<u8>, version: i16, port: u16) -> Vec<u8> {
    super::answers::rewrite_brokers(frame, version, |b| {
        b.host = "127.0.0.1".to_string().into();
        b.port = port as i32;
    })
}
