//! A fault-injecting TCP proxy in front of every broker of a mock cluster
//! (kernel netem is not available here). It rewrites the broker ports in
//! Metadata responses so that all of ferry's traffic, not just bootstrap,
//! goes through it; and it can refuse connections ("uplink down"), add
//! latency, and cut connections after a number of bytes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    down: AtomicBool,
    delay_ms: AtomicU64,
    /// Cut a connection once this many bytes crossed it (0 = never).
    cut_after: AtomicU64,
    connections: AtomicU64,
    cuts: AtomicU64,
    /// Upstream broker port -> our listening port.
    ports: Mutex<HashMap<i32, i32>>,
    live: Mutex<Vec<TcpStream>>,
}

pub struct Proxy {
    state: Arc<State>,
    /// `host:port,...` for ferry's `brokers`.
    pub bootstrap: String,
}

impl Proxy {
    /// One listener per broker in `upstream` ("127.0.0.1:p1,127.0.0.1:p2").
    pub fn start(upstream: &str) -> Self {
        Self::start_advertising(upstream, None)
    }

    /// Like `start`, but Metadata names `advertise` as the broker's port
    /// (one broker): for a TLS terminator in front of this proxy.
    pub fn start_advertising(upstream: &str, advertise: Option<i32>) -> Self {
        let state = Arc::new(State::default());
        let mut bootstrap = Vec::new();
        for target in upstream.split(',') {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port() as i32;
            let up_port: i32 = target.rsplit(':').next().unwrap().parse().unwrap();
            state
                .ports
                .lock()
                .unwrap()
                .insert(up_port, advertise.unwrap_or(port));
            bootstrap.push(format!("127.0.0.1:{port}"));
            let (state, target) = (state.clone(), target.to_string());
            std::thread::spawn(move || accept_loop(listener, target, state));
        }
        Self {
            state,
            bootstrap: bootstrap.join(","),
        }
    }

    /// Refuse (accept and close at once) every new connection, and cut the
    /// live ones: the uplink is down.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Relaxed);
        if down {
            for s in self.state.live.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    pub fn set_delay(&self, d: Duration) {
        self.state.delay_ms.store(d.as_millis() as u64, Relaxed);
    }

    pub fn set_cut_after(&self, bytes: u64) {
        self.state.cut_after.store(bytes, Relaxed);
    }

    /// Connection attempts seen so far (accepted or refused).
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Relaxed)
    }

    /// The first listening port (the broker's proxy).
    pub fn port(&self) -> u16 {
        self.bootstrap
            .split(',')
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn cuts(&self) -> u64 {
        self.state.cuts.load(Relaxed)
    }
}

fn accept_loop(listener: TcpListener, target: String, state: Arc<State>) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        state.connections.fetch_add(1, Relaxed);
        if state.down.load(Relaxed) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(upstream) = TcpStream::connect(&target) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        {
            let mut live = state.live.lock().unwrap();
            live.push(client.try_clone().unwrap());
            live.push(upstream.try_clone().unwrap());
        }
        let pending: Arc<Mutex<HashMap<i32, (i16, i16)>>> = Arc::default();
        let crossed = Arc::new(AtomicU64::new(0));
        let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        let (s1, p1, x1) = (state.clone(), pending.clone(), crossed.clone());
        std::thread::spawn(move || requests(client, upstream, p1, s1, x1));
        let s2 = state.clone();
        std::thread::spawn(move || responses(u2, c2, pending, s2, crossed));
    }
}

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let n = i32::from_be_bytes(len);
    if !(0..=64 << 20).contains(&n) {
        return None;
    }
    let mut body = vec![0u8; n as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

fn write_frame(s: &mut TcpStream, body: &[u8]) -> bool {
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    s.write_all(&out).is_ok()
}

fn over_budget(state: &State, crossed: &AtomicU64, n: usize) -> bool {
    let total = crossed.fetch_add(n as u64, Relaxed) + n as u64;
    let cut = state.cut_after.load(Relaxed);
    cut > 0 && total > cut
}

fn close(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

fn requests(
    mut client: TcpStream,
    mut upstream: TcpStream,
    pending: Arc<Mutex<HashMap<i32, (i16, i16)>>>,
    state: Arc<State>,
    crossed: Arc<AtomicU64>,
) {
    while let Some(body) = read_frame(&mut client) {
        if body.len() >= 8 {
            let key = i16::from_be_bytes([body[0], body[1]]);
            let version = i16::from_be_bytes([body[2], body[3]]);
            let corr = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            pending.lock().unwrap().insert(corr, (key, version));
        }
        if over_budget(&state, &crossed, body.len()) {
            state.cuts.fetch_add(1, Relaxed);
            break;
        }
        if !write_frame(&mut upstream, &body) {
            break;
        }
    }
    close(&client, &upstream);
}

fn responses(
    mut upstream: TcpStream,
    mut client: TcpStream,
    pending: Arc<Mutex<HashMap<i32, (i16, i16)>>>,
    state: Arc<State>,
    crossed: Arc<AtomicU64>,
) {
    while let Some(mut body) = read_frame(&mut upstream) {
        if body.len() >= 4 {
            let corr = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let req = pending.lock().unwrap().remove(&corr);
            if let Some((3, version)) = req {
                rewrite_metadata(&mut body, version, &state);
            }
        }
        let delay = state.delay_ms.load(Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if over_budget(&state, &crossed, body.len()) {
            state.cuts.fetch_add(1, Relaxed);
            break;
        }
        if !write_frame(&mut client, &body) {
            break;
        }
    }
    close(&client, &upstream);
}

/// Metadata v0–v4 (what rskafka speaks): replace each broker's port with
/// the proxy's. Host strings keep their length, so the frame size holds.
fn rewrite_metadata(body: &mut [u8], version: i16, state: &State) {
    assert!(
        version <= 8,
        "proxy only rewrites non-flexible Metadata, got v{version}"
    );
    let mut at = 4; // correlation id
    if version >= 3 {
        at += 4; // throttle time
    }
    let brokers = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
    at += 4;
    let ports = state.ports.lock().unwrap();
    for _ in 0..brokers {
        at += 4; // node id
        let host_len = i16::from_be_bytes(body[at..at + 2].try_into().unwrap()) as usize;
        at += 2 + host_len;
        let port = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        let mapped = *ports.get(&port).unwrap_or_else(|| {
            panic!("metadata names broker port {port} the proxy does not front")
        });
        body[at..at + 4].copy_from_slice(&mapped.to_be_bytes());
        at += 4;
        if version >= 1 {
            let rack = i16::from_be_bytes(body[at..at + 2].try_into().unwrap());
            at += 2 + rack.max(0) as usize;
        }
    }
}
