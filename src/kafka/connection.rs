//! One TCP (or TLS) connection to one broker: connect with a deadline,
//! learn the broker's API versions, authenticate (SASL), then carry
//! requests pipelined by correlation id. A reader task hands each answer
//! to whoever waits for it; when the connection breaks, everyone waiting is
//! told at once and the connection is dead for good (the cluster opens a
//! new one). No retries in here: whether and when to try again is the
//! forwarder's call (its backoff and breaker).

use super::errors::{Class, Failure, UNSUPPORTED_VERSION};
use super::sasl::{Exchange, SaslCredentials};
use super::throttle::client_holds_off;
use super::uplink::Uplink;
use super::wire::{self, Request};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiVersionsRequest, ProduceRequest, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What every connection needs to know (the `[kafka]` section's part).
#[derive(Clone)]
pub struct ConnectionConfig {
    pub client_id: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub sasl: Option<SaslCredentials>,
    /// The pipe all connections share: byte counts and the optional cap.
    pub uplink: Arc<Uplink>,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
type BoxStream = Box<dyn Stream>;

type Answer = Result<Bytes, Failure>;

#[derive(Default)]
struct State {
    pending: HashMap<i32, oneshot::Sender<Answer>>,
    /// Why the connection is dead, once it is.
    closed: Option<Failure>,
    /// The broker throttled us: send nothing more before this.
    throttled_until: Option<Instant>,
}

struct Writer {
    half: WriteHalf<BoxStream>,
    buf: BytesMut,
    next_id: i32,
}

/// A live connection to one broker. Cheap to share (`Arc`); requests from
/// many tasks are pipelined on it in the order they are sent.
pub struct Connection {
    addr: String,
    client_id: StrBytes,
    request_timeout: Duration,
    uplink: Arc<Uplink>,
    writer: tokio::sync::Mutex<Writer>,
    state: Arc<Mutex<State>>,
    /// API key → the version range the broker speaks.
    versions: HashMap<i16, VersionRange>,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// An answer on its way.
pub struct Pending<R: Request> {
    rx: oneshot::Receiver<Answer>,
    version: i16,
    state: Arc<Mutex<State>>,
    addr: String,
    timeout: Duration,
    _request: std::marker::PhantomData<fn() -> R>,
}

impl<R: Request> Pending<R> {
    /// The version the request was sent as.
    pub fn version(&self) -> i16 {
        self.version
    }

    /// Wait for the answer (at most the request timeout; a timeout kills
    /// the connection, so no late answer can be mistaken for another).
    pub async fn wait(self) -> Result<R::Response, Failure> {
        match tokio::time::timeout(self.timeout, self.rx).await {
            Ok(Ok(Ok(frame))) => wire::decode_response::<R>(frame, self.version).map_err(|e| {
                Failure::new(
                    Class::Transient,
                    "INVALID_RESPONSE",
                    format!("{}: {e}", self.addr),
                )
            }),
            Ok(Ok(Err(f))) => Err(f),
            Ok(Err(_)) => Err(closed_failure(&self.state, &self.addr)),
            Err(_) => {
                let f = Failure::new(
                    Class::Transient,
                    "REQUEST_TIMEOUT",
                    format!(
                        "no answer from broker {} within {:?} (kafka.request_timeout); the connection is closed and the request will be sent again",
                        self.addr, self.timeout
                    ),
                );
                fail_all(&self.state, f.clone());
                Err(f)
            }
        }
    }
}

/// Write `head` and then each of `rest`, in as few system calls as the
/// stream allows (vectored writes: no part is copied to join them).
async fn write_all_parts<W: AsyncWrite + Unpin>(
    out: &mut W,
    head: &[u8],
    rest: &[&[u8]],
) -> std::io::Result<()> {
    const MAX_PARTS: usize = 4;
    let mut parts = [&[][..]; MAX_PARTS];
    let mut count = 0;
    for part in std::iter::once(head).chain(rest.iter().copied()) {
        if part.is_empty() {
            continue;
        }
        if count == MAX_PARTS {
            return Err(std::io::Error::other("a request in more than four parts"));
        }
        parts[count] = part;
        count += 1;
    }
    let mut first = 0;
    while first < count {
        let slices = [
            IoSlice::new(parts[first]),
            IoSlice::new(parts.get(first + 1).copied().unwrap_or_default()),
            IoSlice::new(parts.get(first + 2).copied().unwrap_or_default()),
            IoSlice::new(parts.get(first + 3).copied().unwrap_or_default()),
        ];
        let mut n = out.write_vectored(&slices[..count - first]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while first < count && n >= parts[first].len() {
            n -= parts[first].len();
            first += 1;
        }
        if first < count {
            parts[first] = &parts[first][n..];
        }
    }
    Ok(())
}

fn closed_failure(state: &Mutex<State>, addr: &str) -> Failure {
    state
        .lock()
        .ok()
        .and_then(|s| s.closed.clone())
        .unwrap_or_else(|| Failure::transient(format!("connection to broker {addr} closed")))
}

/// Mark the connection dead and tell everyone waiting.
fn fail_all(state: &Mutex<State>, why: Failure) {
    let Ok(mut s) = state.lock() else { return };
    if s.closed.is_none() {
        s.closed = Some(why.clone());
    }
    for (_, tx) in s.pending.drain() {
        let _ = tx.send(Err(why.clone()));
    }
}

impl Connection {
    /// Connect to `addr` (`host:port`), learn its API versions and
    /// authenticate. One attempt, bounded by the connect timeout (and the
    /// request timeout for each request of the set-up).
    pub async fn connect(addr: &str, config: &ConnectionConfig) -> Result<Connection, Failure> {
        let stream = open(addr, config).await?;
        let (read, write) = tokio::io::split(stream);
        let state = Arc::new(Mutex::new(State::default()));
        let reader = tokio::spawn(read_answers(read, state.clone(), addr.to_string()));
        let mut conn = Connection {
            addr: addr.to_string(),
            client_id: StrBytes::from_string(config.client_id.clone()),
            request_timeout: config.request_timeout,
            uplink: config.uplink.clone(),
            writer: tokio::sync::Mutex::new(Writer {
                half: write,
                buf: BytesMut::with_capacity(256),
                next_id: 1,
            }),
            state,
            versions: HashMap::new(),
            reader,
        };
        conn.versions = conn.api_versions().await?;
        if let Some(creds) = &config.sasl {
            conn.authenticate(creds).await?;
        }
        Ok(conn)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The highest version of `R` both sides speak, if any.
    pub fn version<R: Request>(&self) -> Option<i16> {
        let ours = R::VERSIONS;
        let theirs = self.versions.get(&R::KEY)?;
        let both = ours.intersect(theirs);
        (!both.is_empty()).then_some(both.max)
    }

    /// Whether the broker speaks `version` of `R`.
    pub fn speaks<R: Request>(&self, version: i16) -> bool {
        self.versions
            .get(&R::KEY)
            .is_some_and(|v| v.min <= version && version <= v.max)
    }

    /// True once the connection broke (a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.state.lock().map_or(true, |s| s.closed.is_some())
    }

    /// A throttled answer to request `api_key` sent as `version`: hold
    /// off only where the client is to (see [`client_holds_off`]).
    pub fn throttled(&self, api_key: i16, version: i16, ms: i32) {
        if client_holds_off(api_key, version) {
            self.throttle(ms);
        }
    }

    /// The broker asked us to hold off (`throttle_time_ms`): the next
    /// request on this connection waits until then. Requests already on the
    /// wire are not sent again.
    pub fn throttle(&self, ms: i32) {
        if ms <= 0 {
            return;
        }
        let until = Instant::now() + Duration::from_millis(ms as u64);
        if let Ok(mut s) = self.state.lock() {
            s.throttled_until = Some(s.throttled_until.map_or(until, |t| t.max(until)));
        }
    }

    /// Send `body` as version `version`; the answer comes by [`Pending::wait`].
    /// Waits first if the broker throttled this connection.
    pub async fn send<R: Request>(&self, body: &R, version: i16) -> Result<Pending<R>, Failure> {
        self.send_frame(
            version,
            |buf, id| wire::encode_request(buf, version, id, &self.client_id, body),
            &[],
        )
        .await
    }

    /// Send a Produce request for one partition whose record batch is
    /// `records` (one part after the other; `body` names the partition,
    /// its records `None`): the request's head is encoded here and the
    /// batch goes to the socket from the caller's buffers in the same
    /// (vectored) write, not copied.
    pub async fn send_produce(
        &self,
        body: &ProduceRequest,
        version: i16,
        records: (&[u8], &[u8]),
    ) -> Result<Pending<ProduceRequest>, Failure> {
        let len = records.0.len() + records.1.len();
        self.send_frame(
            version,
            |buf, id| wire::encode_produce_head(buf, version, id, &self.client_id, body, len),
            &[records.0, records.1, wire::produce_tail(version)],
        )
        .await
    }

    /// Send one request: `encode` writes the frame (all of it, or its
    /// head) for the correlation id it is given; `rest` follows it on the
    /// wire. Waits first if the broker throttled this connection.
    async fn send_frame<R: Request>(
        &self,
        version: i16,
        encode: impl FnOnce(&mut BytesMut, i32) -> Result<(), wire::WireError>,
        rest: &[&[u8]],
    ) -> Result<Pending<R>, Failure> {
        loop {
            let until = self.state.lock().ok().and_then(|s| s.throttled_until);
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => break,
            }
        }
        let mut w = self.writer.lock().await;
        let id = w.next_id;
        w.next_id = w.next_id.wrapping_add(1).max(1);
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self
                .state
                .lock()
                .map_err(|_| Failure::transient("connection state poisoned".into()))?;
            if let Some(f) = &s.closed {
                return Err(f.clone());
            }
            s.pending.insert(id, tx);
        }
        let Writer { half, buf, .. } = &mut *w;
        buf.clear();
        if let Err(e) = encode(buf, id) {
            if let Ok(mut s) = self.state.lock() {
                s.pending.remove(&id);
            }
            return Err(Failure::new(Class::ConfigCluster, "ENCODE", e.0));
        }
        let len = buf.len() + rest.iter().map(|r| r.len()).sum::<usize>();
        // Under a bandwidth cap the request waits its turn here, holding
        // this connection's later requests behind it (they keep order).
        self.uplink.admit(len).await;
        let written =
            tokio::time::timeout(self.request_timeout, write_all_parts(half, buf, rest)).await;
        let failure = match written {
            Ok(Ok(())) => {
                self.uplink.sent(len);
                None
            }
            Ok(Err(e)) => Some(format!("cannot send to broker {}: {e}", self.addr)),
            Err(_) => Some(format!(
                "cannot send to broker {} within {:?} (kafka.request_timeout)",
                self.addr, self.request_timeout
            )),
        };
        if buf.capacity() > 1024 * 1024 {
            *buf = BytesMut::with_capacity(256);
        }
        if let Some(message) = failure {
            let f = Failure::transient(message);
            fail_all(&self.state, f.clone());
            return Err(f);
        }
        Ok(Pending {
            rx,
            version,
            state: self.state.clone(),
            addr: self.addr.clone(),
            timeout: self.request_timeout,
            _request: std::marker::PhantomData,
        })
    }

    /// Send and wait.
    pub async fn request<R: Request>(
        &self,
        body: &R,
        version: i16,
    ) -> Result<R::Response, Failure> {
        self.send(body, version).await?.wait().await
    }

    /// SASL on this fresh connection (KIP-152: SaslHandshake v1, then
    /// SaslAuthenticate requests carrying the exchange).
    async fn authenticate(&self, creds: &SaslCredentials) -> Result<(), Failure> {
        let mech = creds.mechanism.name();
        let addr = self.addr();
        let refused = |why: String| {
            Failure::new(
                Class::ConfigCluster,
                "SASL_AUTHENTICATION_FAILED",
                format!(
                    "SASL {mech} authentication as {} at broker {addr} failed ({why}): check kafka.sasl.mechanism, kafka.sasl.username and the password file",
                    creds.username
                ),
            )
        };
        // Some brokers close the connection instead of answering.
        let closed = |f: Failure| {
            if f.class != Class::Transient || f.name == "REQUEST_TIMEOUT" {
                f
            } else {
                refused(format!("{}; it may not offer {mech}", f.message))
            }
        };
        let hs_version = self.version::<SaslHandshakeRequest>().unwrap_or(0).min(1);
        let Some(auth_version) = self.version::<SaslAuthenticateRequest>() else {
            return Err(refused(
                "the broker takes no SASL authentication requests; is [kafka.sasl] needed here?"
                    .into(),
            ));
        };
        let handshake =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mech));
        let answer = self.request(&handshake, hs_version).await.map_err(closed)?;
        if answer.error_code != 0 {
            let offered: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(Failure::new(
                Class::ConfigCluster,
                "UNSUPPORTED_SASL_MECHANISM",
                format!(
                    "broker {addr} does not offer SASL {mech} (it offers {}): check kafka.sasl.mechanism",
                    if offered.is_empty() {
                        "none".to_string()
                    } else {
                        offered.join(", ")
                    }
                ),
            ));
        }
        let mut exchange = Exchange::start(creds)
            .map_err(|e| Failure::new(Class::ConfigCluster, "SASL_CONFIG", e.to_string()))?;
        let mut received: Option<bytes::Bytes> = None;
        loop {
            let (send, finished) = exchange
                .step(received.as_deref())
                .map_err(|e| refused(e.to_string()))?;
            if let Some(message) = send {
                let request = SaslAuthenticateRequest::default().with_auth_bytes(message.into());
                let answer = self.request(&request, auth_version).await.map_err(closed)?;
                if answer.error_code != 0 {
                    let why = answer
                        .error_message
                        .as_ref()
                        .map_or_else(|| "refused".to_string(), |m| m.as_str().to_string());
                    return Err(refused(why));
                }
                received = Some(answer.auth_bytes);
            }
            if finished {
                return Ok(());
            }
        }
    }

    async fn api_versions(&self) -> Result<HashMap<i16, VersionRange>, Failure> {
        // v2 is the newest non-flexible version: every broker since 2.0
        // answers it, and an older one says UNSUPPORTED_VERSION, then v0.
        let mut answer = self.request(&ApiVersionsRequest::default(), 2).await?;
        if answer.error_code == UNSUPPORTED_VERSION {
            answer = self.request(&ApiVersionsRequest::default(), 0).await?;
        }
        if answer.error_code != 0 {
            return Err(Failure::from_code(
                answer.error_code,
                &format!("API versions of broker {}", self.addr),
                None,
            ));
        }
        Ok(answer
            .api_keys
            .iter()
            .map(|k| {
                (
                    k.api_key,
                    VersionRange {
                        min: k.min_version,
                        max: k.max_version,
                    },
                )
            })
            .collect())
    }
}

/// Resolve, connect and (if configured) do the TLS handshake.
async fn open(addr: &str, config: &ConnectionConfig) -> Result<BoxStream, Failure> {
    let deadline = config.connect_timeout;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let resolved = match tokio::time::timeout(deadline, tokio::net::lookup_host(addr)).await {
        Ok(Ok(a)) => a.collect::<Vec<_>>(),
        Ok(Err(e)) => {
            return Err(Failure::new(
                Class::Transient,
                "DNS",
                format!(
                    "cannot resolve broker address {addr}: {e}; check kafka.brokers (FERRY_BROKERS) and the gateway's DNS"
                ),
            ));
        }
        Err(_) => {
            return Err(Failure::new(
                Class::Transient,
                "DNS",
                format!(
                    "resolving broker address {addr} took over {deadline:?}; check the gateway's DNS"
                ),
            ));
        }
    };
    let started = Instant::now();
    let mut last = None;
    let mut tcp = None;
    for sa in resolved {
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, TcpStream::connect(sa)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Some(Failure::new(
                    Class::Transient,
                    "CONNECTION_REFUSED",
                    format!(
                        "broker {addr} refused the connection: is Kafka running there, and is this its listener port? (kafka.brokers)"
                    ),
                ));
            }
            Ok(Err(e)) => {
                last = Some(Failure::new(
                    Class::Transient,
                    "CONNECT",
                    format!("cannot connect to broker {addr}: {e}; check the uplink and routes"),
                ));
            }
            Err(_) => {
                last = Some(Failure::new(
                    Class::Transient,
                    "CONNECT_TIMEOUT",
                    format!(
                        "no answer from broker {addr} within {deadline:?} (kafka.connect_timeout): check the uplink, routes and firewalls"
                    ),
                ));
                break;
            }
        }
    }
    let Some(tcp) = tcp else {
        return Err(last.unwrap_or_else(|| {
            Failure::new(
                Class::Transient,
                "DNS",
                format!("broker address {addr} resolves to nothing; check kafka.brokers"),
            )
        }));
    };
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &config.tls else {
        return Ok(Box::new(tcp));
    };
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
        Failure::new(
            Class::ConfigCluster,
            "TLS_CONFIG",
            format!("broker host {host} is not a valid TLS server name: {e}"),
        )
    })?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let left = deadline.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(e)) => Err(tls_failure(addr, &e)),
        Err(_) => Err(Failure::new(
            Class::Transient,
            "TLS_HANDSHAKE",
            format!(
                "TLS handshake with broker {addr} did not finish within {deadline:?} (kafka.connect_timeout); is this a TLS listener?"
            ),
        )),
    }
}

/// Name what went wrong in a TLS handshake and what to check.
fn tls_failure(addr: &str, e: &std::io::Error) -> Failure {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => Failure::new(
            Class::ConfigCluster,
            "TLS_CERTIFICATE",
            format!(
                "the TLS certificate of broker {addr} is not trusted ({c:?}): check kafka.tls.ca_file and that the broker's certificate names this host"
            ),
        ),
        Some(rustls::Error::InvalidMessage(_))
        | Some(rustls::Error::InappropriateMessage { .. }) => Failure::new(
            Class::ConfigCluster,
            "TLS_MISMATCH",
            format!(
                "broker {addr} does not speak TLS ({e}): it looks like a plaintext listener; remove [kafka.tls] or use the broker's TLS port"
            ),
        ),
        Some(other) => Failure::new(
            Class::ConfigCluster,
            "TLS_HANDSHAKE",
            format!("TLS handshake with broker {addr} failed: {other}; check [kafka.tls]"),
        ),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => Failure::new(
            Class::Transient,
            "TLS_HANDSHAKE",
            format!(
                "broker {addr} closed the connection during the TLS handshake: is this its TLS listener? (kafka.brokers, [kafka.tls])"
            ),
        ),
        None => Failure::new(
            Class::Transient,
            "TLS_HANDSHAKE",
            format!("TLS handshake with broker {addr} failed: {e}"),
        ),
    }
}

/// The reader task: frames in, each to the request waiting for it.
async fn read_answers(mut read: ReadHalf<BoxStream>, state: Arc<Mutex<State>>, addr: String) {
    let why = loop {
        let mut prefix = [0u8; 4];
        if let Err(e) = read.read_exact(&mut prefix).await {
            break Failure::transient(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!("broker {addr} closed the connection")
            } else {
                format!("connection to broker {addr} broke: {e}")
            });
        }
        let size = match wire::frame_size(prefix) {
            Ok(s) => s,
            Err(e) => {
                break Failure::new(
                    Class::ConfigCluster,
                    "NOT_KAFKA",
                    format!("broker {addr}: {e}"),
                );
            }
        };
        let mut frame = BytesMut::zeroed(size);
        if let Err(e) = read.read_exact(&mut frame).await {
            break Failure::transient(format!("connection to broker {addr} broke mid-answer: {e}"));
        }
        let frame = frame.freeze();
        let Some(id) = wire::correlation_id(&frame) else {
            break Failure::transient(format!(
                "broker {addr} sent an answer without a correlation id"
            ));
        };
        let waiting = state.lock().ok().and_then(|mut s| s.pending.remove(&id));
        match waiting {
            Some(tx) => {
                let _ = tx.send(Ok(frame));
            }
            None => {
                log::debug!("broker {addr}: answer to correlation id {id}, which nobody awaits")
            }
        }
    };
    fail_all(&state, why);
}

#[cfg(test)]
mod tests;
