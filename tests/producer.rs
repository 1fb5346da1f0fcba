//! The producer layers on their own (connection, cluster, producer), over
//! real sockets against librdkafka's mock cluster.

mod common;

use common::cluster;
use ferry::kafka::cluster::Cluster;
use ferry::kafka::connection::ConnectionConfig;
use std::time::Duration;

fn config() -> ConnectionConfig {
    ConnectionConfig {
        client_id: "ferry-test".into(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        tls: None,
        sasl: None,
        uplink: std::sync::Arc::new(ferry::kafka::uplink::Uplink::new(0)),
    }
}

#[tokio::test]
async fn metadata_creates_a_named_topic_only_when_allowed() {
    let c = cluster(1, &[("present", 2)]);
    let bootstrap = vec![c.bootstrap_servers()];
    let mut strict = Cluster::new(bootstrap.clone(), config(), false);
    strict.refresh(&["absent".to_string()]).await.unwrap();
    assert_eq!(strict.partition_count("absent"), None);
    assert_eq!(strict.topic("absent").map(|t| t.error), Some(3));
    strict.refresh(&["present".to_string()]).await.unwrap();
    assert_eq!(strict.partition_count("present"), Some(2));

    let mut creating = Cluster::new(bootstrap, config(), true);
    creating.refresh(&["fresh".to_string()]).await.unwrap();
    assert!(creating.partition_count("fresh").is_some());
    let leader = creating.leader("fresh", 0).await.unwrap();
    assert!(!leader.is_closed());
}

use common::proxy::Proxy;
use common::{Ferry, Reader, by_value, check_delivery};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::Instant;

/// A broker enforcing a quota: every Produce answer carries
/// `throttle_time_ms = 300` (the records ARE appended, as Kafka does since
/// KIP-219). ferry waits instead of sending again: every event arrives
/// once, in order, and no record crosses the wire twice.
#[test]
fn throttled_broker_gets_every_event_exactly_once_in_order() {
    let topics = [("quota", 1)];
    let c = cluster(1, &topics);
    let proxy = Proxy::start(&c.bootstrap_servers());
    proxy.set_throttle_ms(300);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &proxy.bootstrap,
        "[kafka]\nlinger_ms = 2\ncompression = \"none\"\nmax_batch_events = 500",
    );
    f.start();
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    let values: Vec<String> = (0..3000).map(|i| format!("k|{i}")).collect();
    let lines = values.join("\n") + "\n";
    assert_eq!(
        f.cli(&["send", "-t", "quota", "-k", "k"], Some(lines.as_bytes()))
            .0,
        0
    );
    f.wait_status(Duration::from_secs(60), "all delivered", |s| {
        s.backlog_events == 0
    });
    let got = reader.collect_values(&values, Duration::from_secs(30));
    assert_eq!(check_delivery(&values, &got), 0);
    assert_eq!(got.len(), 3000, "records in Kafka");
    let (requests, records) = proxy.produce_requests();
    assert_eq!(
        records, 3000,
        "records that crossed the wire ({requests} requests)"
    );
    let s = f.status();
    assert!(
        s.throttled_s >= 0.3,
        "throttled time not counted: {}",
        s.throttled_s
    );
    let (_, out, _) = f.cli(&["status"], None);
    assert!(out.contains("throttled"), "{out}");
}

/// On a broker that creates topics (Kafka's default; the mock too), the
/// first event to a topic nobody created arrives at once.
#[test]
fn first_event_to_a_new_topic_arrives_within_a_second_and_a_half() {
    let c = cluster(1, &[("warm", 1)]);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &c.bootstrap_servers(), "");
    f.start();
    // Connected and idle first.
    assert_eq!(f.cli(&["send", "-t", "warm", "x"], None).0, 0);
    f.wait_status(Duration::from_secs(20), "warm delivered", |s| s.sent == 1);
    let started = Instant::now();
    assert_eq!(
        f.cli(&["send", "-t", "brand-new", "-k", "k", "hello"], None)
            .0,
        0
    );
    f.wait_status(Duration::from_secs(20), "new topic delivered", |s| {
        s.sent == 2
    });
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let got = Reader::start(&c.bootstrap_servers(), &[("brand-new", 4)])
        .collect(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value_str(), "hello");
}

/// The broker refuses one record of a batch, naming it in `record_errors`
/// (v8+): only that record is dead-lettered, found without halving; the
/// rest arrive once.
#[test]
fn a_record_named_in_record_errors_is_dead_lettered_alone() {
    let topics = [("mixed", 1), ("dlq", 1)];
    let c = cluster(1, &topics);
    let proxy = Proxy::start(&c.bootstrap_servers());
    proxy.refuse_value(b"k|BAD");
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &proxy.bootstrap,
        "[kafka]\nlinger_ms = 50\ncompression = \"none\"\ndead_letter_topic = \"dlq\"",
    );
    f.start();
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    let mut values: Vec<String> = (0..20).map(|i| format!("k|{i}")).collect();
    values.insert(7, "k|BAD".into());
    let lines = values.join("\n") + "\n";
    assert_eq!(
        f.cli(&["send", "-t", "mixed", "-k", "k"], Some(lines.as_bytes()))
            .0,
        0
    );
    f.wait_status(Duration::from_secs(30), "settled", |s| {
        s.backlog_events == 0 && s.dead_letters == 1
    });
    let good: Vec<String> = values.iter().filter(|v| *v != "k|BAD").cloned().collect();
    let got = reader.collect_values(&good, Duration::from_secs(20));
    assert_eq!(check_delivery(&good, &got), 0);
    let counts = by_value(&got);
    assert_eq!(counts.get("k|BAD"), None);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    // The DLQ topic refuses the dead letter too (same value): it is
    // marked so and not sent there again, however long ferry runs.
    f.wait_status(Duration::from_secs(20), "dead letter settled", |_| {
        f.log_text()
            .contains("refused by the DLQ topic dlq for good")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        proxy.refused(),
        2,
        "one refusal of the batch (the broker named the record, no halving), one of the dead letter"
    );
    let (_, out, _) = f.cli(&["dlq", "list"], None);
    assert!(
        out.contains("refused by the test proxy") && out.contains("INVALID_RECORD"),
        "{out}"
    );
}

/// Producer headers arrive exactly as sent: duplicate names and order
/// kept, then ferry's own.
#[test]
fn duplicate_header_names_arrive_as_sent() {
    let topics = [("hdr", 1)];
    let c = cluster(1, &topics);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &c.bootstrap_servers(), "");
    f.start();
    let args = [
        "send", "-t", "hdr", "-H", "a=1", "-H", "b=2", "-H", "a=3", "v",
    ];
    assert_eq!(f.cli(&args, None).0, 0);
    let got = Reader::start(&c.bootstrap_servers(), &topics).collect(1, Duration::from_secs(20));
    let h: Vec<(String, String)> = got[0]
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let sent: Vec<(String, String)> = [("a", "1"), ("b", "2"), ("a", "3")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(&h[..3], &sent[..], "{h:?}");
    assert_eq!(h.last().unwrap().0, "ferry-id");
}

/// The broker forgets ferry's producer, or says its sequences or epoch are
/// wrong: ferry goes on under the next epoch (a new producer id when the
/// epoch is fenced) and loses nothing.
#[test]
fn producer_state_errors_take_a_new_producer_id_and_lose_nothing() {
    use RDKafkaRespErr::*;
    let topics = [("ps", 2)];
    let c = cluster(1, &topics);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &c.bootstrap_servers(), "");
    f.start();
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    let mut acked = Vec::new();
    for (round, e) in [
        RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID,
        RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
        RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH,
    ]
    .into_iter()
    .enumerate()
    {
        c.request_errors(RDKafkaApiKey::Produce, &[e]);
        let values: Vec<String> = (0..200).map(|i| format!("r{round}|{i}")).collect();
        let lines = values.join("\n") + "\n";
        let key = format!("r{round}");
        assert_eq!(
            f.cli(&["send", "-t", "ps", "-k", &key], Some(lines.as_bytes()))
                .0,
            0
        );
        acked.extend(values);
        f.wait_status(Duration::from_secs(30), "delivered", |s| {
            s.backlog_events == 0
        });
    }
    let got = reader.collect_values(&acked, Duration::from_secs(30));
    check_delivery(&acked, &got);
    let log = f.log_text();
    // A fenced epoch takes a new id; the others the next epoch of the id.
    assert_eq!(
        log.matches("for streams that start afresh").count(),
        1,
        "one new producer id, for INVALID_PRODUCER_EPOCH:\n{log}"
    );
    assert_eq!(
        log.matches("the next epoch of its producer id").count(),
        2,
        "the next epoch for UNKNOWN_PRODUCER_ID and OUT_OF_ORDER_SEQUENCE_NUMBER:\n{log}"
    );
    assert!(
        log.contains("UNKNOWN_PRODUCER_ID") && log.contains("INVALID_PRODUCER_EPOCH"),
        "{log}"
    );
}

/// Not a test: captures real answers from the mock broker and from tansu
/// as seeds for the `kafka_responses` fuzz target
/// (`cargo test --test producer -- --ignored capture_fuzz_seeds`).
#[test]
#[ignore]
fn capture_fuzz_seeds() {
    use ferry::kafka::record_batch::{BatchEncoder, Codec, ProducerFields};
    use ferry::kafka::wire;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    use std::io::{Read, Write};

    fn ask<R: wire::Request>(s: &mut std::net::TcpStream, r: &R, v: i16, kind: u8, name: &str) {
        let mut out = bytes::BytesMut::new();
        wire::encode_request(&mut out, v, 1, &StrBytes::from_static_str("seed"), r).unwrap();
        s.write_all(&out).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        // The target's input: size prefix, the selector, then the frame.
        let mut seed = len.to_vec();
        seed.push(kind);
        seed.extend_from_slice(&body);
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/kafka_responses");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), seed).unwrap();
    }
    let topic = || TopicName(StrBytes::from_static_str("seeds"));
    let mut enc = BatchEncoder::default();
    enc.push(1, Some(b"k"), b"v", std::iter::empty());
    let mut batch = Vec::new();
    enc.finish_into(Codec::None, ProducerFields::NONE, &mut batch);
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(topic())
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(bytes::Bytes::from(batch))),
                ]),
        ]);
    let metadata = MetadataRequest::default().with_topics(Some(vec![
        metadata_request::MetadataRequestTopic::default().with_name(Some(topic())),
    ]));
    let c = cluster(1, &[("seeds", 1)]);
    let dir = tempfile::tempdir().unwrap();
    let t = common::tansu::Tansu::start(dir.path());
    t.create_topic("seeds", 1);
    for (peer, addr) in [("mock", c.bootstrap_servers()), ("tansu", t.bootstrap())] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        ask(
            &mut s,
            &ApiVersionsRequest::default(),
            2,
            2,
            &format!("{peer}-api-versions"),
        );
        ask(&mut s, &metadata, 12, 1, &format!("{peer}-metadata-v12"));
        ask(&mut s, &metadata, 4, 1, &format!("{peer}-metadata-v4"));
        ask(
            &mut s,
            &InitProducerIdRequest::default().with_transactional_id(None),
            4,
            3,
            &format!("{peer}-init-producer-id"),
        );
        ask(&mut s, &produce, 9, 0, &format!("{peer}-produce-v9"));
        ask(&mut s, &produce, 7, 0, &format!("{peer}-produce-v7"));
        // The mock does not speak SASL (it closes the connection).
        if peer == "tansu" {
            ask(
                &mut s,
                &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
                1,
                4,
                &format!("{peer}-sasl-handshake"),
            );
        }
    }
}
