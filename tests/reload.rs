//! Reload (SIGHUP, what `systemctl reload ferry` sends), with the real
//! binary against the mock cluster: a bad config is refused and the
//! running one stays; a good one changes routes at once and says what
//! needs a restart; events flowing across reloads all arrive.

mod common;

use common::{Ferry, FrameClient, Load, Reader, check_delivery, cluster};
use std::time::Duration;

fn write_config(f: &Ferry, brokers: &str, extra: &str) {
    let text = format!(
        "node_id = \"test-node\"\ndata_dir = \"{}\"\n{extra}\n[kafka]\nbrokers = [\"{brokers}\"]\nlinger_ms = 2\n",
        f.dir.join("data").display()
    );
    std::fs::write(&f.config, text).unwrap();
}

/// Send the values to topic `in` over the socket, all acknowledged (not
/// through `ferry send`, which reads the config file being rewritten).
fn send(f: &Ferry, values: &[String]) {
    let mut client = FrameClient::connect(&f.socket()).unwrap();
    for v in values {
        client.send_event("in", None, &[], v.as_bytes()).unwrap();
    }
    let (acked, errors) = client.answers_for(values.len() as u32).unwrap();
    assert_eq!(
        (acked as usize, errors.len()),
        (values.len(), 0),
        "{errors:?}"
    );
}

#[test]
fn sighup_reloads_routes_refuses_a_bad_config_and_loses_nothing() {
    let topics = [("first", 1), ("second", 1), ("keyed", 2)];
    let c = cluster(1, &topics);
    let brokers = c.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &brokers, "");
    let route_to = |t: &str| format!("[[route]]\npattern = \"in\"\nto = [\"{t}\"]\n");
    write_config(&f, &brokers, &route_to("first"));
    f.start();
    let reader = Reader::start(&brokers, &topics);
    // A steady keyed load on another topic runs across every reload.
    let load = Load::start(f.socket(), "keyed", 8, 20, Duration::from_millis(5));

    let before: Vec<String> = (0..100).map(|i| format!("before|{i}")).collect();
    send(&f, &before);

    // A config with an unknown key: refused with file, line and key; ferry
    // runs on with the old routes.
    write_config(
        &f,
        &brokers,
        &(route_to("second") + "[outbox]\nmax_byte = \"1GiB\"\n"),
    );
    f.hangup();
    f.wait_log("reload refused", 1, Duration::from_secs(10));
    let log = f.log_text();
    assert!(
        log.contains("line") && log.contains("outbox.max_byte"),
        "{log}"
    );
    assert!(f.is_running(), "ferry died on SIGHUP:\n{log}");
    let during: Vec<String> = (0..100).map(|i| format!("during|{i}")).collect();
    send(&f, &during);
    // Routes apply when an event is planned, not when it is stored: let
    // these go out under the running routes before the next reload.
    let stored_so_far = 200 + load.acked_so_far() as u64;
    f.wait_status(Duration::from_secs(30), "during sent", |s| {
        s.sent >= stored_so_far
    });

    // A good config: the route moves at once; a changed outbox cap is
    // named as needing a restart.
    write_config(
        &f,
        &brokers,
        &(route_to("second") + "[outbox]\nmax_bytes = \"2GiB\"\n"),
    );
    f.hangup();
    f.wait_log("config reloaded", 1, Duration::from_secs(10));
    assert!(
        f.log_text()
            .contains("[outbox] changed; that needs a restart")
    );
    let after: Vec<String> = (0..100).map(|i| format!("after|{i}")).collect();
    send(&f, &after);
    std::thread::sleep(Duration::from_millis(500));
    let acked = load.stop();
    assert!(f.is_running());

    let expected = before.len() + during.len() + after.len() + acked.len();
    let got = reader.collect(expected, Duration::from_secs(30));
    let in_topic = |t: &str, prefix: &str| {
        got.iter()
            .filter(|g| g.topic == t && g.value_str().starts_with(prefix))
            .count()
    };
    assert_eq!(in_topic("first", "before"), 100);
    assert_eq!(
        in_topic("first", "during"),
        100,
        "the refused config changed routes"
    );
    assert_eq!(
        in_topic("second", "after"),
        100,
        "the reloaded route did not apply"
    );
    let keyed: Vec<common::Got> = got.into_iter().filter(|g| g.topic == "keyed").collect();
    assert_eq!(check_delivery(&acked, &keyed), 0, "duplicates");
    let (code, _) = f.terminate();
    assert_eq!(code, Some(0));
}
