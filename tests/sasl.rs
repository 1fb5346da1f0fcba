//! SASL against a real SASL-speaking broker (tansu 0.6, users in its sqlite
//! store): SCRAM-SHA-256 and SCRAM-SHA-512 with good and bad passwords,
//! and PLAIN, which this tansu build does not offer (it closes the
//! connection: ferry says what to check).

mod common;

use common::Ferry;
use common::tansu::Tansu;
use std::time::Duration;

fn ferry_with(
    dir: &std::path::Path,
    broker: &Tansu,
    mechanism: &str,
    user: &str,
    password: &str,
) -> Ferry {
    let pw = dir.join("password");
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    Ferry::new(
        dir,
        &broker.bootstrap(),
        &format!(
            "[kafka]\nlinger_ms = 2\n[kafka.sasl]\nmechanism = \"{mechanism}\"\nusername = \"{user}\"\npassword_file = \"{}\"",
            pw.display()
        ),
    )
}

#[test]
fn scram_256_and_512_authenticate_and_a_wrong_password_opens_the_breaker_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Tansu::start(&dir.path().join("tansu"));
    broker.create_topic("secure", 1);
    broker.add_user_and_require_auth(&[
        ("alice", "alice-secret", "scram256"),
        ("bob", "bob-secret", "scram512"),
    ]);
    for (n, (mech, user, pw)) in [
        ("SCRAM-SHA-256", "alice", "alice-secret"),
        ("SCRAM-SHA-512", "bob", "bob-secret"),
    ]
    .into_iter()
    .enumerate()
    {
        let d = dir.path().join(format!("good{n}"));
        std::fs::create_dir_all(&d).unwrap();
        let mut f = ferry_with(&d, &broker, mech, user, pw);
        f.start();
        let value = format!("via {mech}");
        assert_eq!(f.cli(&["send", "-t", "secure", &value], None).0, 0);
        f.wait_status(Duration::from_secs(30), "delivered", |s| {
            s.backlog_events == 0
        });
        let got = broker.records("secure");
        assert!(
            got.iter().any(|g| g.value_str() == value),
            "{mech}: not in Kafka"
        );
        assert!(!f.log_text().contains(pw), "password in the log");
        f.terminate();
    }

    let d = dir.path().join("bad");
    std::fs::create_dir_all(&d).unwrap();
    let mut f = ferry_with(&d, &broker, "SCRAM-SHA-512", "bob", "not-bobs-password");
    f.start();
    assert_eq!(f.cli(&["send", "-t", "secure", "never"], None).0, 0);
    f.wait_status(Duration::from_secs(30), "breaker open", |s| {
        s.forward.breaker == "open"
    });
    std::thread::sleep(Duration::from_secs(3));
    let s = f.status();
    assert_eq!(s.backlog_events, 1, "the event is kept");
    assert_eq!(
        s.forward.last_error_class.as_deref(),
        Some("configuration (cluster)")
    );
    let log = f.log_text();
    assert!(
        log.contains("SASL") && log.contains("password file"),
        "{log}"
    );
    assert!(
        !log.contains("not-bobs-password"),
        "password in the log:\n{log}"
    );
    let loud = log
        .lines()
        .filter(|l| l.contains("SASL_AUTHENTICATION_FAILED"))
        .count();
    assert!(loud <= 2, "{loud} loud lines in a few seconds:\n{log}");
}

#[test]
fn a_mechanism_the_broker_does_not_offer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Tansu::start(&dir.path().join("tansu"));
    broker.create_topic("secure", 1);
    broker.add_user_and_require_auth(&[("carol", "carol-secret", "scram256")]);
    let mut f = ferry_with(dir.path(), &broker, "PLAIN", "carol", "carol-secret");
    f.start();
    assert_eq!(f.cli(&["send", "-t", "secure", "x"], None).0, 0);
    f.wait_status(Duration::from_secs(30), "breaker open", |s| {
        s.forward.breaker == "open"
    });
    let log = f.log_text();
    assert!(
        log.contains("SASL PLAIN") && log.contains("kafka.sasl.mechanism"),
        "{log}"
    );
}
