//! MQTT ingest against a real Mosquitto (Debian's, started per test with
//! its own config and persistence), the real `ferry` binary, and the
//! Kafka-faithful broker model as the Kafka side: every message Mosquitto
//! acknowledged to a publisher must reach Kafka exactly once, in
//! per-publisher order, through kills, broker restarts and refusals.

mod common;

use common::kafka_model::KafkaModel;
use common::mosquitto::{Mosquitto, MqttProxy, Publisher};
use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `[[mqtt]]` for one link on `broker`: `sensors/+/data` → `topic`, key
/// = the second level.
fn link(name: &str, broker: &str, topic: &str, extra: &str) -> String {
    format!(
        "[[mqtt]]\nname = \"{name}\"\nbroker = \"{broker}\"\n{extra}\n\
         [[mqtt.subscribe]]\nfilter = \"sensors/+/data\"\ntopic = \"{topic}\"\nkey = \"{{2}}\"\n"
    )
}

fn wait_connected(f: &Ferry, links: usize) {
    f.wait_status(Duration::from_secs(20), "MQTT links connected", |s| {
        s.mqtt.len() == links && s.mqtt.iter().all(|l| l.connected)
    });
}

/// Publishers `p0..pN` on `sensors/p<i>/data`, values `p<i>|<n>`, as fast
/// as the broker takes them, each with up to 50 in flight.
struct Publishers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Publishers {
    fn start(address: &str, n: usize, pause: Duration) -> Publishers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..n)
            .map(|i| {
                let (stop, acked, address) = (stop.clone(), acked.clone(), address.to_string());
                std::thread::spawn(move || {
                    // A publisher whose connection broke goes on after the
                    // last value it sent (never sending one twice).
                    let mut next = 0u64;
                    while !stop.load(Relaxed) {
                        let Ok(mut p) = Publisher::connect(&address, &format!("pub{i}"), None)
                        else {
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        };
                        let mine = Mutex::new(Vec::new());
                        let values = (next..).map(|n| {
                            if !pause.is_zero() {
                                std::thread::sleep(pause);
                            }
                            format!("p{i}|{n}")
                        });
                        next +=
                            p.publish_all(&format!("sensors/p{i}/data"), values, 50, &stop, &mine);
                        let mine = mine.into_inner().unwrap();
                        if !stop.load(Relaxed) {
                            eprintln!(
                                "publisher {i}: connection lost after {} acknowledged",
                                mine.len()
                            );
                        }
                        acked.lock().unwrap().extend(mine);
                    }
                })
            })
            .collect();
        Publishers {
            stop,
            acked,
            threads,
        }
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Wait until every acknowledged value is in `topic`, then check each is
/// there exactly once and in per-publisher order; returns the count.
fn check_exactly_once(model: &KafkaModel, topic: &str, acked: &[String], f: &Ferry) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = model.records(topic);
        let values = by_value(&got);
        let missing = acked.iter().filter(|v| !values.contains_key(*v)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} messages Mosquitto acknowledged never reached Kafka\n{}",
            acked.len(),
            f.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let got = model.records(topic);
    let twice: Vec<(String, usize)> = by_value(&got).into_iter().filter(|(_, n)| *n > 1).collect();
    let example: Vec<(String, i32, i64, Option<Vec<u8>>)> = twice
        .iter()
        .take(2)
        .flat_map(|(v, _)| {
            got.iter()
                .filter(|g| g.value_str() == *v)
                .map(|g| {
                    (
                        g.ferry_id(),
                        g.partition,
                        g.offset,
                        g.header("mqtt-topic").map(<[u8]>::to_vec),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        twice.is_empty(),
        "{} messages stored twice, e.g. {:?}; copies {example:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    // Per publisher (one key, one partition): offsets follow publish order.
    let mut last: HashMap<(String, i32), u64> = HashMap::new();
    let mut sorted = got.clone();
    sorted.sort_by_key(|g| (g.partition, g.offset));
    for g in &sorted {
        let v = g.value_str();
        let (publisher, n) = v.split_once('|').unwrap();
        let n: u64 = n.parse().unwrap();
        assert_eq!(g.key.as_deref(), Some(publisher.as_bytes()));
        if let Some(prev) = last.insert((publisher.to_string(), g.partition), n) {
            assert!(prev < n, "order broken for {publisher}: {prev} then {n}");
        }
    }
    got.len()
}

#[test]
fn topics_keys_and_headers_over_mqtt_5_and_3_1_1() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("mosquitto"), "");
    let model = KafkaModel::start(1);
    model.create_topic("zigbee.devices", 3);
    model.create_topic("tasmota.SENSOR", 1);
    let config = format!(
        "[[mqtt]]\nname = \"zigbee\"\nbroker = \"{b}\"\n\
         [[mqtt.subscribe]]\nfilter = \"zigbee2mqtt/+\"\ntopic = \"zigbee.devices\"\nkey = \"{{2}}\"\n\
         [[mqtt]]\nname = \"tasmota\"\nbroker = \"{b}\"\nprotocol = \"3.1.1\"\n\
         [[mqtt.subscribe]]\nfilter = \"tele/+/SENSOR\"\ntopic = \"tasmota.{{3}}\"\n",
        b = broker.address()
    );
    // A retained state at QoS 0, there before ferry subscribes.
    let st = std::process::Command::new("mosquitto_pub")
        .args(["-p", &broker.port.to_string(), "-q", "0", "-r"])
        .args(["-t", "tele/plug2/SENSOR", "-m", "retained-state"])
        .status()
        .unwrap();
    assert!(st.success());
    let mut f = Ferry::new(tmp.path(), &model.bootstrap(), &config);
    f.start();
    wait_connected(&f, 2);
    let log = f.log_text();
    assert!(
        log.contains("MQTT link zigbee: connected") && log.contains("(MQTT 5, session new)"),
        "{log}"
    );
    assert!(log.contains("(MQTT 3.1.1, session new)"), "{log}");
    let st = std::process::Command::new("mosquitto_pub")
        .args(["-p", &broker.port.to_string(), "-V", "5", "-q", "1"])
        .args(["-t", "zigbee2mqtt/kitchen", "-m", "{\"temperature\":21.5}"])
        .args(["-D", "publish", "user-property", "room", "kitchen"])
        .status()
        .unwrap();
    assert!(st.success());
    let mut p = Publisher::connect(&broker.address(), "plug", None).unwrap();
    let binary: Vec<u8> = (0..=255u8).collect();
    p.publish("tele/plug1/SENSOR", &binary).unwrap();
    f.wait_status(Duration::from_secs(20), "three stored", |s| s.stored >= 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (model.records("zigbee.devices").is_empty() || model.records("tasmota.SENSOR").len() < 2)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let z = model.records("zigbee.devices");
    assert_eq!(z.len(), 1, "{}", f.log_text());
    assert_eq!(z[0].value, b"{\"temperature\":21.5}");
    assert_eq!(z[0].key.as_deref(), Some(&b"kitchen"[..]));
    assert_eq!(z[0].header("mqtt-topic"), Some(&b"zigbee2mqtt/kitchen"[..]));
    assert_eq!(
        z[0].header("room"),
        Some(&b"kitchen"[..]),
        "MQTT 5 user property"
    );
    assert!(z[0].header("ferry-id").is_some());
    let t = model.records("tasmota.SENSOR");
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].value, b"retained-state");
    assert_eq!(t[0].header("mqtt-retained"), Some(&b"1"[..]));
    assert_eq!(t[1].value, binary, "the payload byte for byte");
    assert_eq!(t[1].key.as_deref(), Some(&b"tele/plug1/SENSOR"[..]));
    assert_eq!(t[1].header("mqtt-retained"), None);
    let s = f.status();
    let by_name: HashMap<&str, _> = s.mqtt.iter().map(|l| (l.name.as_str(), l)).collect();
    assert_eq!(
        (by_name["zigbee"].received, by_name["zigbee"].acknowledged),
        (1, 1)
    );
    // QoS 0 is stored and has nothing to acknowledge.
    assert_eq!(
        (by_name["tasmota"].received, by_name["tasmota"].acknowledged),
        (2, 1)
    );
    let json = f.cli(&["status", "--json"], None).1;
    assert!(json.contains("\"mqtt\""), "{json}");
    let text = f.cli(&["status"], None).1;
    assert!(
        text.contains("mqtt zigbee: connected to") && text.contains("received 1, acknowledged 1"),
        "{text}"
    );
}

#[test]
fn a_redelivery_after_a_lost_puback_is_recognised_not_stored_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("mosquitto"), "");
    let proxy = MqttProxy::start(broker.address());
    let model = KafkaModel::start(1);
    model.create_topic("sensors", 2);
    let mut f = Ferry::new(
        tmp.path(),
        &model.bootstrap(),
        &link(
            "local",
            &proxy.address(),
            "sensors",
            "receive_maximum = 20\n[retry]\nmax = \"1s\"",
        ),
    );
    f.start();
    wait_connected(&f, 1);
    // From now on ferry's PUBACKs (and PINGREQs) never reach Mosquitto.
    proxy.swallow.store(true, Relaxed);
    let mut p = Publisher::connect(&broker.address(), "pub", None).unwrap();
    let values: Vec<String> = (0..50).map(|n| format!("p0|{n}")).collect();
    for v in &values {
        p.publish("sensors/p0/data", v.as_bytes()).unwrap();
    }
    // Mosquitto lets 20 wait for ferry's acknowledgement (max_inflight_messages).
    f.wait_status(Duration::from_secs(20), "20 stored", |s| s.stored >= 20);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.status().stored, 20);
    proxy.swallow.store(false, Relaxed);
    proxy.cut();
    // Mosquitto redelivers the 20 (DUP) on the resumed session, then the rest.
    f.wait_status(Duration::from_secs(30), "all 50 handled", |s| {
        s.mqtt[0].acknowledged >= 50 + 20 - 20 && s.stored >= 50
    });
    let n = check_exactly_once(&model, "sensors", &values, &f);
    assert_eq!(n, 50);
    let s = f.status();
    assert_eq!(s.mqtt[0].redeliveries, 20, "{:?}", s.mqtt);
    assert_eq!(s.stored, 50);
    assert!(f.log_text().contains("session resumed"), "{}", f.log_text());
    // Every mark was confirmed by a PINGRESP and removed: none outlive
    // the messages they guard.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(f.terminate().0, Some(0));
    let db = rusqlite::Connection::open(tmp.path().join("data/outbox.db")).unwrap();
    let left: i64 = db
        .query_row("SELECT count(*) FROM mqtt_marks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "redelivery marks left behind");
}

#[test]
fn kill_9_twenty_times_under_qos_1_load_loses_and_doubles_nothing() {
    kill_9_twenty_times("fsync");
}

#[test]
fn kill_9_twenty_times_under_qos_1_load_relaxed() {
    kill_9_twenty_times("relaxed");
}

/// Three publishers at QoS 1, ferry killed 20 times at seeded moments
/// (`FERRY_SEED`); every message Mosquitto acknowledged reaches Kafka once.
fn kill_9_twenty_times(durability: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("mosquitto"), "");
    let model = KafkaModel::start(1);
    model.create_topic("sensors", 3);
    let mut f = Ferry::new(
        tmp.path(),
        &model.bootstrap(),
        &format!(
            "[outbox]\ndurability = \"{durability}\"\n\n{}",
            link(
                "local",
                &broker.address(),
                "sensors",
                "[retry]\nmax = \"500ms\""
            )
        ),
    );
    f.start();
    wait_connected(&f, 1);
    // About 10,000 messages a second in all: below what ferry stores, so
    // the queue each restart builds in Mosquitto drains again.
    let publishers = Publishers::start(&broker.address(), 3, Duration::from_micros(250));
    let mut rng = Rng::new(
        std::env::var("FERRY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7),
    );
    let mut redeliveries = 0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(200 + rng.below(500)));
        if let Ok(s) = ferry::client::query_status(&f.socket()) {
            redeliveries += s.mqtt.first().map_or(0, |l| l.redeliveries);
        }
        f.kill9();
        f.start();
    }
    std::thread::sleep(Duration::from_millis(500));
    let acked = publishers.stop();
    assert!(acked.len() > 1000, "only {} published", acked.len());
    broker.assert_nothing_dropped();
    let n = check_exactly_once(&model, "sensors", &acked, &f);
    redeliveries += f.status().mqtt[0].redeliveries;
    eprintln!(
        "{durability}: {} messages acknowledged by Mosquitto, {n} in Kafka, {redeliveries} redeliveries recognised over 20 kills",
        acked.len()
    );
    // Marks left by the kills went once the resumed sessions showed them
    // stale, the rest with the clean stop: none outlive their messages.
    assert_eq!(f.terminate().0, Some(0));
    let db = rusqlite::Connection::open(tmp.path().join("data/outbox.db")).unwrap();
    let left: i64 = db
        .query_row("SELECT count(*) FROM mqtt_marks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "redelivery marks left behind");
}

#[test]
fn ferry_started_before_mosquitto_and_mosquitto_restarted_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let model = KafkaModel::start(1);
    model.create_topic("sensors", 3);
    let metrics = free_port();
    let mut f = Ferry::new(
        tmp.path(),
        &model.bootstrap(),
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n{}",
            link(
                "local",
                &format!("127.0.0.1:{port}"),
                "sensors",
                "[retry]\nmax = \"500ms\"",
            )
        ),
    );
    // Nothing listens yet: ferry runs, buffers nothing, says why.
    f.start();
    f.wait_status(Duration::from_secs(10), "link down, with its error", |s| {
        s.mqtt.len() == 1
            && !s.mqtt[0].connected
            && s.mqtt[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("cannot connect"))
    });
    let (code, body) = http_get(metrics, "/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("MQTT link local (127.0.0.1:"), "{body}");
    assert!(
        http_get(metrics, "/metrics")
            .1
            .contains("ferry_mqtt_connected{link=\"local\"} 0")
    );
    let mut broker = Mosquitto::start_on(&tmp.path().join("mosquitto"), port, "");
    wait_connected(&f, 1);
    let (code, body) = http_get(metrics, "/health");
    assert_eq!(code, 200, "{body}");
    assert!(
        http_get(metrics, "/metrics")
            .1
            .contains("ferry_mqtt_connected{link=\"local\"} 1")
    );
    let publishers = Publishers::start(&broker.address(), 3, Duration::from_micros(250));
    std::thread::sleep(Duration::from_millis(1500));
    broker.restart();
    std::thread::sleep(Duration::from_millis(1500));
    broker.restart();
    wait_connected(&f, 1);
    std::thread::sleep(Duration::from_millis(1000));
    let acked = publishers.stop();
    broker.assert_nothing_dropped();
    assert!(acked.len() > 1000, "only {} published", acked.len());
    check_exactly_once(&model, "sensors", &acked, &f);
    let log = f.log_text();
    assert_eq!(
        log.matches("connection lost").count(),
        2,
        "one line per loss\n{log}"
    );
    assert!(f.status().mqtt[0].connects >= 3);
}

/// Mosquitto under `dir`, anonymous clients refused, with users `ferry`
/// ("right-password") and `sensor` ("sensor-password").
fn broker_with_logins(dir: &std::path::Path) -> Mosquitto {
    std::fs::create_dir_all(dir).unwrap();
    let passwd = dir.join("passwd");
    Mosquitto::add_user(&passwd, "ferry", "right-password");
    Mosquitto::add_user(&passwd, "sensor", "sensor-password");
    Mosquitto::start(
        dir,
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwd.display()
        ),
    )
}

#[test]
fn a_wrong_password_is_reported_clearly_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = broker_with_logins(&tmp.path().join("mosquitto"));
    let model = KafkaModel::start(1);
    model.create_topic("sensors", 1);
    let secret = tmp.path().join("mqtt.pass");
    std::fs::write(&secret, "right-password\n").unwrap();
    let mut f = Ferry::new(
        tmp.path(),
        &model.bootstrap(),
        &link(
            "local",
            &broker.address(),
            "sensors",
            &format!(
                "username = \"ferry\"\npassword_file = \"{}\"\n[retry]\nmax = \"500ms\"",
                secret.display()
            ),
        ),
    );
    f.start();
    // The session (and its subscription) exists at the broker.
    wait_connected(&f, 1);
    assert_eq!(f.terminate().0, Some(0));
    std::fs::write(&secret, "wrong-secret-123\n").unwrap();
    f.start();
    f.wait_status(Duration::from_secs(10), "login refused", |s| {
        s.mqtt[0]
            .last_error
            .as_deref()
            // Mosquitto says "not authorized" (0x87) to MQTT 5 clients.
            .is_some_and(|e| e.contains("refused the connection: not authorized"))
    });
    let log = f.log_text();
    assert!(
        log.contains("mqtt.password_file") && log.contains("mqtt.username (`ferry`)"),
        "{log}"
    );
    assert!(!log.contains("wrong-secret-123") && !log.contains("right-password"));
    let status = f.cli(&["status", "--json"], None).1;
    assert!(!status.contains("wrong-secret-123"));
    // Published meanwhile: the broker keeps them in ferry's session.
    let mut p =
        Publisher::connect(&broker.address(), "s", Some(("sensor", "sensor-password"))).unwrap();
    let values: Vec<String> = (0..10).map(|n| format!("p0|{n}")).collect();
    for v in &values {
        p.publish("sensors/p0/data", v.as_bytes()).unwrap();
    }
    std::fs::write(&secret, "right-password\n").unwrap();
    // A refused login is retried no sooner than 10 s later.
    f.wait_status(Duration::from_secs(30), "connected again", |s| {
        s.mqtt[0].connected
    });
    check_exactly_once(&model, "sensors", &values, &f);
    assert!(!f.log_text().contains("right-password"));
}

#[test]
fn oversized_and_unroutable_messages_are_acknowledged_counted_and_not_redelivered() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("mosquitto"), "");
    let model = KafkaModel::start(1);
    model.create_topic("room.ok", 1);
    let mut f = Ferry::new(
        tmp.path(),
        &model.bootstrap(),
        &format!(
            "[ingest]\nmax_event_bytes = 1000\n\n{}",
            link("local", &broker.address(), "room.{2}", "")
        ),
    );
    f.start();
    wait_connected(&f, 1);
    let mut p = Publisher::connect(&broker.address(), "s", None).unwrap();
    p.publish("sensors/ok/data", b"small").unwrap();
    // Larger than max_event_bytes: decoded whole, refused.
    p.publish("sensors/ok/data", &vec![b'x'; 5000]).unwrap();
    // Far larger: refused from its head while its bytes are skipped.
    p.publish("sensors/ok/data", &vec![b'y'; 300_000]).unwrap();
    // No valid Kafka topic from this MQTT topic.
    p.publish("sensors/bad level/data", b"x").unwrap();
    p.publish("sensors/ok/data", b"after").unwrap();
    f.wait_status(Duration::from_secs(20), "all five handled", |s| {
        s.mqtt[0].acknowledged >= 5
    });
    let s = f.status();
    assert_eq!(
        (s.mqtt[0].received, s.mqtt[0].rejected),
        (5, 3),
        "{:?}",
        s.mqtt
    );
    assert_eq!(s.stored, 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while model.records("room.ok").len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let values: Vec<String> = model
        .records("room.ok")
        .iter()
        .map(|g| g.value_str())
        .collect();
    assert_eq!(values, ["small", "after"]);
    let log = f.log_text();
    assert!(
        log.contains("larger than ingest.max_event_bytes (1000 bytes)"),
        "{log}"
    );
    // Acknowledged, so never redelivered: a restart receives nothing.
    assert_eq!(f.terminate().0, Some(0));
    f.start();
    wait_connected(&f, 1);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(f.status().mqtt[0].received, 0);
}

#[test]
fn a_full_outbox_under_reject_leaves_messages_with_the_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("mosquitto"), "");
    let model = KafkaModel::start(1);
    model.create_topic("sensors", 2);
    model.set_down(true);
    let mut f = Ferry::new(
        tmp.path(),
        &model.bootstrap(),
        &format!(
            "[outbox]\nmax_bytes = 20000\nwhen_full = \"reject\"\n\n{}",
            link(
                "local",
                &broker.address(),
                "sensors",
                "[retry]\nmax = \"2s\""
            )
        ),
    );
    f.start();
    wait_connected(&f, 1);
    let mut rng = Rng::new(3);
    let mut p = Publisher::connect(&broker.address(), "s", None).unwrap();
    let mut values = Vec::new();
    for n in 0..300 {
        // Incompressible filler, so the cap is reached.
        let filler: String = (0..200)
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect();
        let v = format!("p0|{n}|{filler}");
        p.publish("sensors/p0/data", v.as_bytes()).unwrap();
        values.push(v);
    }
    f.wait_status(Duration::from_secs(20), "the outbox refusing", |s| {
        s.mqtt[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("outbox full"))
    });
    let stored = f.status().stored;
    assert!(stored < 300, "{stored} stored under a 20 kB cap");
    // Each refused commit ends the connection; the next one waits for the
    // growing backoff (here up to retry.max = 2 s, about 1 s on average
    // once grown), not a fixed short pause: no reconnect loop (a reset
    // after each connection would make 40-80 in 4 s).
    std::thread::sleep(Duration::from_secs(3));
    let before = f.status().mqtt[0].connects;
    std::thread::sleep(Duration::from_secs(4));
    let during = f.status().mqtt[0].connects - before;
    eprintln!("{during} connections in 4 s while the outbox is full");
    assert!(
        during <= 10,
        "{during} connections in 4 s while the outbox is full"
    );
    // The uplink returns: the backlog drains and the rest comes from the broker.
    model.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = model.records("sensors");
        let seen = by_value(&got);
        if values.iter().all(|v| seen.contains_key(v)) {
            assert!(seen.values().all(|n| *n == 1), "a message stored twice");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all arrived\n{}",
            f.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.assert_nothing_dropped();
    let log = f.log_text();
    assert!(
        log.contains("not acknowledged, so the broker keeps them"),
        "{log}"
    );
}

#[test]
fn reload_changes_subscriptions_without_losing_what_is_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("mosquitto"), "");
    let model = KafkaModel::start(1);
    model.create_topic("ta", 1);
    model.create_topic("tb", 1);
    model.create_topic("sensors", 2);
    // sensors/+/data stays through the reload, under load; a/+ becomes b/+.
    let config = format!(
        "{}[[mqtt.subscribe]]\nfilter = \"a/+\"\ntopic = \"ta\"\n",
        link("local", &broker.address(), "sensors", "")
    );
    let mut f = Ferry::new(tmp.path(), &model.bootstrap(), &config);
    f.start();
    wait_connected(&f, 1);
    let publishers = Publishers::start(&broker.address(), 2, Duration::from_micros(500));
    let mut p = Publisher::connect(&broker.address(), "s", None).unwrap();
    // a1 may still be queued for ferry when the reload unsubscribes a/+:
    // it goes to ta all the same (the retired mapping).
    p.publish("a/x", b"a1").unwrap();
    f.wait_status(Duration::from_secs(10), "some load stored", |s| {
        s.stored >= 10
    });
    let text = std::fs::read_to_string(&f.config).unwrap();
    std::fs::write(
        &f.config,
        text.replace(
            "filter = \"a/+\"\ntopic = \"ta\"",
            "filter = \"b/+\"\ntopic = \"tb\"",
        ),
    )
    .unwrap();
    f.hangup();
    f.wait_log("new config applied", 1, Duration::from_secs(10));
    wait_connected(&f, 1);
    std::thread::sleep(Duration::from_millis(300));
    p.publish("a/y", b"a2").unwrap();
    p.publish("b/z", b"b1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while model.records("tb").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let acked = publishers.stop();
    let ta: Vec<String> = model.records("ta").iter().map(|g| g.value_str()).collect();
    let tb: Vec<String> = model.records("tb").iter().map(|g| g.value_str()).collect();
    assert_eq!(ta, ["a1"], "a/+ was unsubscribed");
    assert_eq!(tb, ["b1"]);
    // The load across the reload: every message once, in order.
    assert!(acked.len() > 100, "only {} published", acked.len());
    check_exactly_once(&model, "sensors", &acked, &f);
    assert!(f.is_running());
}

#[test]
fn check_config_connect_logs_in_to_each_mqtt_broker_and_subscribes() {
    let tmp = tempfile::tempdir().unwrap();
    // Mosquitto (2.0.11, acl_file) grants any subscription and applies its
    // ACL when it delivers, so the check can show a login and a granted
    // filter, not a read the ACL will deny.
    let broker = broker_with_logins(&tmp.path().join("mosquitto"));
    let model = KafkaModel::start(1);
    model.create_topic("sensors", 1);
    model.create_topic("secrets", 1);
    let secret = tmp.path().join("mqtt.pass");
    std::fs::write(&secret, "right-password\n").unwrap();
    let config = format!(
        "{}[[mqtt.subscribe]]\nfilter = \"secret/#\"\ntopic = \"secrets\"\n",
        link(
            "local",
            &broker.address(),
            "sensors",
            &format!(
                "username = \"ferry\"\npassword_file = \"{}\"",
                secret.display()
            ),
        )
    );
    let f = Ferry::new(tmp.path(), &model.bootstrap(), &config);
    let (code, out, err) = f.cli(&["check-config", "--connect"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("# ok   MQTT local (") && out.contains("logged in (MQTT 5, user ferry)"),
        "{out}"
    );
    assert!(
        out.contains("# ok   MQTT local filter sensors/+/data: subscribed at QoS 1"),
        "{out}"
    );
    assert!(
        out.contains("# ok   MQTT local filter secret/#: subscribed at QoS 1"),
        "{out}"
    );
    std::fs::write(&secret, "wrong-secret-123\n").unwrap();
    let (code, out, _) = f.cli(&["check-config", "--connect"], None);
    assert_eq!(code, 1);
    assert!(
        out.contains("# FAIL MQTT local (") && out.contains("mqtt.password_file"),
        "{out}"
    );
    assert!(!out.contains("wrong-secret-123"));
}

#[test]
fn tls_to_mosquitto_with_the_configured_ca_and_refused_with_another() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path();
    common::pki::make_pki(pki, "good");
    common::pki::make_pki(pki, "other");
    // TLS for ferry; a plain listener beside it for the publisher.
    let plain = free_port();
    let broker = Mosquitto::start(
        &tmp.path().join("mosquitto"),
        &format!(
            "certfile {}\nkeyfile {}\nlistener {plain} 127.0.0.1\n",
            pki.join("good-server.pem").display(),
            pki.join("good-server.key").display()
        ),
    );
    let model = KafkaModel::start(1);
    model.create_topic("sensors", 1);
    let tls = |ca: &str| {
        link(
            "local",
            &broker.address(),
            "sensors",
            &format!("[mqtt.tls]\nca_file = \"{}\"", pki.join(ca).display()),
        )
    };
    // Another CA: refused, and said so.
    let bad = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(bad.path(), &model.bootstrap(), &tls("other-ca.pem"));
    f.start();
    f.wait_status(Duration::from_secs(10), "TLS refused", |s| {
        s.mqtt[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("TLS with") && e.contains("failed"))
    });
    drop(f);
    let mut f = Ferry::new(tmp.path(), &model.bootstrap(), &tls("good-ca.pem"));
    f.start();
    wait_connected(&f, 1);
    let mut p = Publisher::connect(&format!("127.0.0.1:{plain}"), "s", None).unwrap();
    let values: Vec<String> = (0..20).map(|n| format!("p0|{n}")).collect();
    for v in &values {
        p.publish("sensors/p0/data", v.as_bytes()).unwrap();
    }
    check_exactly_once(&model, "sensors", &values, &f);
}
