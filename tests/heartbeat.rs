//! The fleet heartbeat against the Kafka model (tests/common/kafka_model.rs):
//! records reach the heartbeat topic keyed by node id with the documented
//! schema (read by Python's `json`, another implementation); an outage
//! leaves one waiting heartbeat, not one per interval, and the first after
//! the uplink returns reports the outage.
#![cfg(target_arch = "x86_64")]

mod common;

use common::kafka_model::KafkaModel;
use common::*;
use std::time::{Duration, Instant};

const HEARTBEAT: &str = "[heartbeat]\ntopic = \"ferry-heartbeat\"\ninterval = \"1s\"\n";

/// The documented fields (README, "Watching a fleet"), as paths.
const FIELDS: &[&str] = &[
    "schema",
    "node_id",
    "version",
    "boot_id",
    "time_ms",
    "interval_s",
    "uptime_s",
    "clock.synchronized",
    "clock.repaired_events",
    "backlog.events",
    "backlog.bytes",
    "backlog.oldest_age_s",
    "backlog.by_priority",
    "uplink.up",
    "uplink.bytes_today",
    "uplink.outage",
    "uplink.last_outage",
    "breaker.state",
    "breaker.last_error_class",
    "breaker.last_error",
    "delivery",
    "since_start.received",
    "since_start.stored",
    "since_start.sent",
    "since_start.rejected",
    "all_time.dropped_by_policy",
    "all_time.quarantined",
    "all_time.dead_letters",
    "all_time.uplink_bytes",
    "disk_free_bytes",
    "process.rss_bytes",
    "process.cpu_s",
    "ingest",
];

fn heartbeats(model: &KafkaModel) -> Vec<serde_json::Value> {
    model
        .records("ferry-heartbeat")
        .iter()
        .map(|g| {
            assert_eq!(g.key.as_deref(), Some(&b"test-node"[..]), "key = node id");
            serde_json::from_slice(&g.value).expect("a heartbeat is JSON")
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn heartbeats_carry_the_documented_schema_read_by_another_json_parser() {
    let model = KafkaModel::start(1);
    model.create_topic("ferry-heartbeat", 1);
    model.create_topic("data", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &model.bootstrap(), HEARTBEAT);
    f.start();
    send_keyed(&f.socket(), "data", "k", 3, 30);
    wait_for("three heartbeats", Duration::from_secs(20), || {
        model.records("ferry-heartbeat").len() >= 3
    });
    let got = model.records("ferry-heartbeat");
    let last = got.last().unwrap().value.clone();
    // Python's json, and every documented field present.
    let check = format!(
        "import json, sys\n\
         d = json.load(sys.stdin)\n\
         assert d['schema'] == 'ferry-heartbeat/1', d['schema']\n\
         for path in {fields:?}:\n\
         \x20   v = d\n\
         \x20   for k in path.split('.'):\n\
         \x20       assert k in v, 'missing ' + path\n\
         \x20       v = v[k]\n\
         assert d['node_id'] == 'test-node'\n\
         assert d['since_start']['received'] == 30, d['since_start']\n\
         assert d['uplink']['up'] is True\n\
         assert d['ingest'][0]['type'] == 'unix'\n\
         print('ok')\n",
        fields = FIELDS
    );
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(&check);
    let (code, out, err) = run_cmd(cmd, Some(&last));
    assert_eq!(
        (code, out.trim()),
        (0, "ok"),
        "{err}\n{}",
        String::from_utf8_lossy(&last)
    );
    // Once per interval, not more; and what one costs on the uplink (no
    // data flows meanwhile).
    let n = got.len();
    let bytes_before = f.status().uplink_bytes_total;
    std::thread::sleep(Duration::from_millis(3_000));
    let later = model.records("ferry-heartbeat").len();
    assert!(
        (n + 1..=n + 5).contains(&later),
        "{n} then {later} in 3 s at 1 s intervals"
    );
    let per_beat = (f.status().uplink_bytes_total - bytes_before) / (later - n) as u64;
    eprintln!(
        "a heartbeat: {} B of JSON, {per_beat} B on the uplink (Produce request included)",
        last.len()
    );
    assert!(per_beat < 2_048, "{per_beat} B per heartbeat");
}

#[test]
fn an_outage_leaves_one_waiting_heartbeat_which_reports_it() {
    let model = KafkaModel::start(1);
    model.create_topic("ferry-heartbeat", 1);
    model.create_topic("data", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &model.bootstrap(),
        &format!(
            "{HEARTBEAT}[retry]\nmax = \"500ms\"\n[breaker]\nopen_initial = \"500ms\"\nopen_max = \"1s\"\n"
        ),
    );
    f.start();
    send_keyed(&f.socket(), "data", "a", 2, 10);
    wait_for("a first heartbeat", Duration::from_secs(20), || {
        !model.records("ferry-heartbeat").is_empty()
    });
    model.set_down(true);
    let down_at = Instant::now();
    // Events arrive meanwhile; the forwarder finds the uplink down.
    let mut sent = 0;
    while down_at.elapsed() < Duration::from_secs(8) {
        send_keyed(&f.socket(), "data", "b", 2, 20);
        sent += 20;
        std::thread::sleep(Duration::from_millis(500));
    }
    // The backlog by priority adds up (what heartbeats carry).
    let s = f.status();
    let by: u64 = s.backlog_by_priority.iter().map(|(_, n)| n).sum();
    assert!(s.backlog_events > 0 && by == s.backlog_events, "{s:?}");
    let before_return = heartbeats(&model).len();
    model.set_down(false);
    f.wait_status(Duration::from_secs(30), "backlog delivered", |s| {
        s.backlog_events == 0
    });
    // Give a per-interval flood, if there were one, the time to show.
    std::thread::sleep(Duration::from_millis(1_500));
    let all = heartbeats(&model);
    let after: Vec<&serde_json::Value> = all[before_return..].iter().collect();
    // Built during the outage and still waiting: one (it was replaced at
    // each interval); then the one made when the uplink came back, then
    // one per interval.
    let during = after
        .iter()
        .filter(|h| !h["uplink"]["outage"].is_null())
        .count();
    assert!(
        during <= 1,
        "{during} heartbeats from the outage were sent: {after:?}"
    );
    let first_back = after
        .iter()
        .find(|h| !h["uplink"]["last_outage"].is_null())
        .unwrap_or_else(|| {
            panic!(
                "no heartbeat reports the outage: {after:?}\n{}",
                f.log_text()
            )
        });
    let outage = &first_back["uplink"]["last_outage"];
    let down_s = outage["down_s"].as_f64().unwrap();
    assert!((5.0..30.0).contains(&down_s), "down {down_s} s: {outage}");
    let added = outage["backlog_events_added"].as_i64().unwrap();
    assert!(
        added >= sent as i64 / 2,
        "backlog added {added} of {sent} sent: {outage}"
    );
    assert!(
        after.len() <= 2 + 4,
        "{} heartbeats after an 8 s outage and about 3 s up: {after:?}",
        after.len()
    );
}

/// `ferry fleet --json` with `f`'s config.
fn fleet(f: &Ferry) -> serde_json::Value {
    let (code, out, err) = f.cli(&["fleet", "--json"], None);
    assert_eq!(code, 0, "ferry fleet failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("fleet JSON: {e}: {out}"))
}

fn gateway<'a>(fleet: &'a serde_json::Value, node: &str) -> &'a serde_json::Value {
    fleet["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["node_id"] == node)
        .unwrap_or_else(|| panic!("{node} not in {fleet}"))
}

#[test]
fn ferry_fleet_shows_each_gateway_with_its_state_on_the_mock_cluster() {
    let cluster = cluster(1, &[("ferry-heartbeat", 1), ("data", 2)]);
    let bootstrap = cluster.bootstrap_servers();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let metrics_off = "[metrics]\nlisten = \"\"\n";
    // A healthy gateway.
    let mut ok = Ferry::new(
        dirs[0].path(),
        &bootstrap,
        &format!("{HEARTBEAT}{metrics_off}"),
    );
    ok.env.push(("FERRY_NODE_ID".into(), "gw-ok".into()));
    ok.start();
    // One whose uplink is cut for a while, through a proxy.
    let proxy = proxy::Proxy::start(&bootstrap);
    let mut cut = Ferry::new(
        dirs[1].path(),
        &proxy.bootstrap,
        &format!(
            "{HEARTBEAT}{metrics_off}[retry]\nmax = \"500ms\"\n[breaker]\nopen_initial = \"500ms\"\nopen_max = \"1s\"\n"
        ),
    );
    cut.env.push(("FERRY_NODE_ID".into(), "gw-cut".into()));
    cut.start();
    // One with a full outbox: its events go to a topic that does not
    // exist (auto-creation off), so they stay and the size cap drops them.
    let mut full = Ferry::new(
        dirs[2].path(),
        &bootstrap,
        &format!(
            "{HEARTBEAT}{metrics_off}[outbox]\nmax_bytes = \"64KiB\"\n[kafka]\nallow_auto_create_topics = false\nlinger_ms = 2\n"
        ),
    );
    full.env.push(("FERRY_NODE_ID".into(), "gw-full".into()));
    full.start();
    send_keyed(&ok.socket(), "data", "o", 2, 10);
    send_keyed(&cut.socket(), "data", "c", 2, 10);
    std::thread::sleep(Duration::from_secs(2));
    proxy.set_down(true);
    for _ in 0..4 {
        send_keyed(&cut.socket(), "data", "c", 2, 10);
        std::thread::sleep(Duration::from_secs(1));
    }
    proxy.set_down(false);
    // The full one fills up and drops, interval after interval.
    for round in 0..4 {
        let mut c = FrameClient::connect(&full.socket()).unwrap();
        let mut rng = Rng::new(round);
        for i in 0..100 {
            let pad: String = (0..128).map(|_| format!("{:016x}", rng.next())).collect();
            let v = format!("{round}-{i}-{pad}");
            c.send_event("nowhere", Some(b"k"), &[], v.as_bytes())
                .unwrap();
        }
        let _ = c.answers_for(100);
        std::thread::sleep(Duration::from_millis(1_200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let view = fleet(&ok);
    // Healthy, or only the clock unsynchronised (as on a VM whose kernel
    // says so: then all three say it).
    let healthy = |h: &serde_json::Value| h == "ok" || h == "clock_unsynchronised";
    assert!(healthy(&gateway(&view, "gw-ok")["health"]), "{view}");
    assert_eq!(gateway(&view, "gw-full")["health"], "dropping", "{view}");
    let cut_view = gateway(&view, "gw-cut");
    assert!(healthy(&cut_view["health"]), "{view}");
    assert!(
        cut_view["detail"]
            .as_str()
            .unwrap()
            .contains("the uplink was down"),
        "{view}"
    );
    assert_eq!(view["summary"]["gateways"], 3);
    let ok_count = view["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["health"] == "ok")
        .count();
    assert_eq!(view["summary"]["healthy"], ok_count, "{view}");
    // The worst first.
    assert_eq!(view["gateways"][0]["node_id"], "gw-full", "{view}");
    // The text form: one line per gateway and the summary.
    let (code, text, _) = ok.cli(&["fleet"], None);
    assert_eq!(code, 0);
    eprintln!("ferry fleet:\n{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with(&format!("3 gateways, {ok_count} healthy")),
        "{text}"
    );
}

#[test]
fn ferry_fleet_reads_heartbeats_from_tansu() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::tansu::Tansu::start(&dir.path().join("tansu"));
    broker.create_topic("ferry-heartbeat", 1);
    std::fs::create_dir_all(dir.path().join("gw")).unwrap();
    let mut f = Ferry::new(
        &dir.path().join("gw"),
        &broker.bootstrap(),
        &format!("{HEARTBEAT}[metrics]\nlisten = \"\"\n"),
    );
    f.start();
    f.wait_status(Duration::from_secs(30), "the uplink up", |s| s.uplink_up);
    std::thread::sleep(Duration::from_secs(3));
    // Garbage on the topic is counted and skipped.
    let (code, _, err) = f.cli(&["send", "-t", "ferry-heartbeat", "not a heartbeat"], None);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_secs(2));
    let view = fleet(&f);
    let h = &gateway(&view, "test-node")["health"];
    assert!(h == "ok" || h == "clock_unsynchronised", "{view}");
    assert_eq!(view["summary"]["skipped_records"], 1, "{view}");
}
