//! A fault-injecting TCP proxy in front of every broker of a mock cluster
//! (kernel netem is not available here). It rewrites the broker ports in
//! Metadata responses so that all of ferry's traffic, not just bootstrap,
//! goes through it; and it can refuse connections ("uplink down"), add
//! latency, cut connections after a number of bytes, stamp a
//! `throttle_time_ms` on every Produce response (a broker enforcing a
//! quota: the records are appended, the client is asked to wait), and
//! refuse a batch holding a given value as Kafka refuses an invalid record
//! (INVALID_RECORD naming it in `record_errors`; the batch is not written).
#![allow(dead_code)]

use super::answers::{decode, encode, rewrite_brokers};
use bytes::Bytes;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    /// Stamped on every Produce response (0 = leave as is).
    throttle_ms: AtomicI32,
    /// Produce requests seen, and the records in them.
    produce_requests: AtomicU64,
    produce_records: AtomicU64,
    /// Each Produce request in the order it arrived: per topic, records.
    produce_log: Mutex<Vec<(String, u64)>>,
    /// Bytes of requests (frames with their size) sent on to the brokers.
    bytes_up: AtomicU64,
    /// A batch holding a record with this value is refused (not forwarded).
    refuse_value: Mutex<Option<Vec<u8>>>,
    refused: AtomicU64,
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

    /// Stamp `throttle_time_ms = ms` on every Produce response.
    pub fn set_throttle_ms(&self, ms: i32) {
        self.state.throttle_ms.store(ms, Relaxed);
    }

    /// Every Produce request so far, in arrival order: (topic, records).
    pub fn produce_log(&self) -> Vec<(String, u64)> {
        self.state.produce_log.lock().unwrap().clone()
    }

    /// Request bytes passed on to the brokers so far.
    pub fn bytes_up(&self) -> u64 {
        self.state.bytes_up.load(Relaxed)
    }

    /// Produce requests that crossed the proxy, and the records in them.
    pub fn produce_requests(&self) -> (u64, u64) {
        (
            self.state.produce_requests.load(Relaxed),
            self.state.produce_records.load(Relaxed),
        )
    }

    /// Refuse (INVALID_RECORD, naming the record) every batch with a record
    /// whose value is `value`; needs uncompressed batches to look inside.
    pub fn refuse_value(&self, value: &[u8]) {
        *self.state.refuse_value.lock().unwrap() = Some(value.to_vec());
    }

    /// Batches refused so far.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Relaxed)
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
        let to_client = Arc::new(Mutex::new(client.try_clone().unwrap()));
        let (s1, p1, x1, w1) = (
            state.clone(),
            pending.clone(),
            crossed.clone(),
            to_client.clone(),
        );
        std::thread::spawn(move || requests(client, upstream, p1, s1, x1, w1));
        let s2 = state.clone();
        std::thread::spawn(move || responses(u2, c2, pending, s2, crossed, to_client));
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
    to_client: Arc<Mutex<TcpStream>>,
) {
    while let Some(body) = read_frame(&mut client) {
        if body.len() >= 8 {
            let key = i16::from_be_bytes([body[0], body[1]]);
            let version = i16::from_be_bytes([body[2], body[3]]);
            let corr = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            if key == 0 {
                if let Some(answer) = inspect_produce(&body, version, corr, &state) {
                    // Refused here: the broker never sees the batch.
                    if !write_frame(&mut to_client.lock().unwrap(), &answer) {
                        break;
                    }
                    continue;
                }
            }
            pending.lock().unwrap().insert(corr, (key, version));
        }
        state.bytes_up.fetch_add(body.len() as u64 + 4, Relaxed);
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
    client: TcpStream,
    pending: Arc<Mutex<HashMap<i32, (i16, i16)>>>,
    state: Arc<State>,
    crossed: Arc<AtomicU64>,
    to_client: Arc<Mutex<TcpStream>>,
) {
    while let Some(mut body) = read_frame(&mut upstream) {
        if body.len() >= 4 {
            let corr = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let req = pending.lock().unwrap().remove(&corr);
            match req {
                Some((3, version)) => body = rewrite_metadata(body, version, &state),
                Some((0, version)) if state.throttle_ms.load(Relaxed) > 0 => {
                    body = stamp_throttle(body, version, state.throttle_ms.load(Relaxed));
                }
                _ => {}
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
        if !write_frame(&mut to_client.lock().unwrap(), &body) {
            break;
        }
    }
    close(&client, &upstream);
}

/// Metadata (any version): replace each broker's port with the proxy's.
fn rewrite_metadata(body: Vec<u8>, version: i16, state: &State) -> Vec<u8> {
    let ports = state.ports.lock().unwrap();
    rewrite_brokers(body, version, |b| {
        b.port = *ports.get(&b.port).unwrap_or_else(|| {
            panic!(
                "metadata names broker port {} the proxy does not front",
                b.port
            )
        });
    })
}

/// A quota-enforcing broker's answer: appended, but "wait this long".
fn stamp_throttle(body: Vec<u8>, version: i16, ms: i32) -> Vec<u8> {
    let (header, mut resp) = decode::<ProduceResponse>(body, version);
    resp.throttle_time_ms = ms;
    encode(&header, &resp, version)
}

/// The records in a run of v2 record batches, from their headers (so
/// compressed batches count too): `recordCount` ends the 61-byte header.
fn batch_record_counts(mut batches: &[u8]) -> u64 {
    let mut n = 0;
    while batches.len() >= 61 {
        let len = i32::from_be_bytes(batches[8..12].try_into().unwrap()) as usize;
        n += i32::from_be_bytes(batches[57..61].try_into().unwrap()) as u64;
        batches = &batches[(12 + len).min(batches.len())..];
    }
    n
}

/// Count a Produce request's records; if one holds the refused value,
/// the answer that refuses its batch (INVALID_RECORD with record_errors).
fn inspect_produce(body: &[u8], version: i16, corr: i32, state: &State) -> Option<Vec<u8>> {
    let mut buf = Bytes::copy_from_slice(body);
    let hv = ProduceRequest::header_version(version);
    RequestHeader::decode(&mut buf, hv).ok()?;
    let req = ProduceRequest::decode(&mut buf, version).ok()?;
    state.produce_requests.fetch_add(1, Relaxed);
    let refuse = state.refuse_value.lock().unwrap().clone();
    let mut answer: Option<ProduceResponse> = None;
    for topic in &req.topic_data {
        for part in &topic.partition_data {
            let Some(records) = &part.records else {
                continue;
            };
            state
                .produce_log
                .lock()
                .unwrap()
                .push((topic.name.to_string(), batch_record_counts(records)));
            let mut records = records.clone();
            let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records);
            let Ok(sets) = sets else { continue };
            let mut index = 0i32;
            for set in sets {
                for r in set.records {
                    state.produce_records.fetch_add(1, Relaxed);
                    if refuse.is_some() && r.value.as_deref() == refuse.as_deref() {
                        let p = PartitionProduceResponse::default()
                            .with_index(part.index)
                            .with_error_code(87)
                            .with_base_offset(-1)
                            .with_error_message(Some(StrBytes::from_static_str(
                                "one or more records have been rejected",
                            )))
                            .with_record_errors(vec![
                                BatchIndexAndErrorMessage::default()
                                    .with_batch_index(index)
                                    .with_batch_index_error_message(Some(
                                        StrBytes::from_static_str("refused by the test proxy"),
                                    )),
                            ]);
                        let t = TopicProduceResponse::default()
                            .with_name(topic.name.clone())
                            .with_partition_responses(vec![p]);
                        answer = Some(ProduceResponse::default().with_responses(vec![t]));
                    }
                    index += 1;
                }
            }
        }
    }
    let answer = answer?;
    state.refused.fetch_add(1, Relaxed);
    let header = ResponseHeader::default().with_correlation_id(corr);
    Some(encode(&header, &answer, version))
}
