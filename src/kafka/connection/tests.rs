//! Unit tests of one broker connection against scripted peers.

use super::*;

fn config() -> ConnectionConfig {
    ConnectionConfig {
        client_id: "ferry-test".into(),
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
        tls: None,
        sasl: None,
        uplink: Arc::new(Uplink::new(0)),
    }
}

/// Takes at most `per_call` bytes per write, spread over the slices
/// as a socket with little buffer room would.
struct Trickle {
    got: Vec<u8>,
    per_call: usize,
    calls: usize,
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.per_call);
        self.got.extend_from_slice(&buf[..n]);
        self.calls += 1;
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut left = self.per_call;
        for b in bufs {
            let n = b.len().min(left);
            self.got.extend_from_slice(&b[..n]);
            left -= n;
        }
        self.calls += 1;
        std::task::Poll::Ready(Ok(self.per_call - left))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn parts_are_written_whole_and_in_order_however_the_stream_cuts_them() {
    let head: Vec<u8> = (0..10).collect();
    let batch: Vec<u8> = (10..200).collect();
    let tail = [200u8, 201, 202];
    for per_call in [1, 3, 9, 10, 11, 199, 203, 1000] {
        let mut out = Trickle {
            got: Vec::new(),
            per_call,
            calls: 0,
        };
        write_all_parts(&mut out, &head, &[&batch, &[], &tail])
            .await
            .unwrap();
        let want: Vec<u8> = (0..=202).collect();
        assert_eq!(out.got, want, "{per_call} bytes per call");
        assert_eq!(out.calls, 203usize.div_ceil(per_call), "{per_call}");
    }
}

#[tokio::test]
async fn refused_connection_says_what_to_check() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let f = Connection::connect(&format!("127.0.0.1:{port}"), &config())
        .await
        .err()
        .unwrap();
    assert_eq!(f.name, "CONNECTION_REFUSED");
    assert!(f.message.contains("kafka.brokers"), "{}", f.message);
}

#[tokio::test]
async fn unresolvable_host_is_a_dns_failure() {
    let f = Connection::connect("no-such-host.invalid:9092", &config())
        .await
        .err()
        .unwrap();
    assert_eq!(f.name, "DNS");
    assert!(f.message.contains("DNS"), "{}", f.message);
}

#[tokio::test]
async fn a_peer_that_never_answers_times_out() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    });
    let f = Connection::connect(&addr, &config()).await.err().unwrap();
    assert_eq!(f.name, "REQUEST_TIMEOUT");
    assert!(f.message.contains("kafka.request_timeout"), "{}", f.message);
    hold.abort();
}

#[tokio::test]
async fn a_tls_listener_read_as_plaintext_is_named() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).await;
        // A TLS alert record, as a TLS listener answers plaintext.
        let _ = s
            .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50])
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let f = Connection::connect(&addr, &config()).await.err().unwrap();
    assert_eq!(f.name, "NOT_KAFKA");
    assert!(f.message.contains("TLS"), "{}", f.message);
}
