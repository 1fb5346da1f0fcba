//! TLS to Kafka against a real TLS endpoint: stunnel in front of the mock
//! broker (through the proxy, which advertises stunnel's port so every
//! connection ferry makes is TLS). A trusted CA gets through; another CA's
//! certificate is refused. And SASL SCRAM over TLS: stunnel in front of
//! tansu, which requires authentication and advertises stunnel's port.
#![cfg(target_arch = "x86_64")]

mod common;

use common::pki::make_pki;
use common::proxy::Proxy;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

struct Stunnel(std::process::Child);

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stunnel(dir: &Path, accept: u16, connect: u16) -> Stunnel {
    let conf = dir.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\nsyslog = no\n[kafka]\naccept = 127.0.0.1:{accept}\nconnect = 127.0.0.1:{connect}\ncert = {}\nkey = {}\n",
            dir.join("good-server.pem").display(),
            dir.join("good-server.key").display()
        ),
    )
    .unwrap();
    let bin = if Path::new("/usr/bin/stunnel4").exists() {
        "stunnel4"
    } else {
        "stunnel"
    };
    // Owned by the guard at once, so it is reaped on every path.
    let tunnel = Stunnel(
        Command::new(bin)
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel (apt install stunnel4)"),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", accept)).is_ok() {
            return tunnel;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("stunnel did not start");
}

#[test]
fn tls_with_the_right_ca_delivers_and_an_untrusted_certificate_is_refused() {
    let topics = [("secure", 2)];
    let c = cluster(1, &topics);
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), "good");
    make_pki(pki.path(), "rogue");
    let tls_port = free_port();
    let proxy = Proxy::start_advertising(&c.bootstrap_servers(), Some(tls_port as i32));
    let _stunnel = stunnel(pki.path(), tls_port, proxy.port());
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    let tls_broker = format!("127.0.0.1:{tls_port}");

    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &tls_broker,
        &format!(
            "[kafka]\nlinger_ms = 2\n\n[kafka.tls]\nca_file = \"{}\"\n",
            pki.path().join("good-ca.pem").display()
        ),
    );
    f.start();
    let input: String = (0..100).map(|i| format!("k|{i}\n")).collect();
    assert_eq!(
        f.cli(&["send", "-t", "secure", "-k", "k"], Some(input.as_bytes()))
            .0,
        0
    );
    let got = reader.collect(100, Duration::from_secs(30));
    let acked: Vec<String> = (0..100).map(|i| format!("k|{i}")).collect();
    check_delivery(&acked, &got);
    let (_, out, _) = f.cli(&["check-config"], None);
    assert!(
        out.contains("[kafka.tls]") && out.contains("good-ca.pem"),
        "{out}"
    );

    // The same endpoint, but ferry trusts another CA: refused, kept, said.
    let dir2 = tempfile::tempdir().unwrap();
    let mut rogue = Ferry::new(
        dir2.path(),
        &tls_broker,
        &format!(
            "[kafka]\nlinger_ms = 2\n\n[kafka.tls]\nca_file = \"{}\"\n",
            pki.path().join("rogue-ca.pem").display()
        ),
    );
    rogue.start();
    assert_eq!(
        rogue
            .cli(&["send", "-t", "secure", "-k", "k", "k|x"], None)
            .0,
        0
    );
    rogue.wait_status(Duration::from_secs(30), "a refused handshake", |s| {
        s.produce_errors > 0
    });
    let s = rogue.status();
    assert_eq!(s.backlog_events, 1, "the event is kept: {s:?}");
    assert_eq!(s.sent, 0);
    let err = s.last_error.unwrap_or_default();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(
        s.forward.last_error_class.as_deref(),
        Some("configuration (cluster)"),
        "{:?}",
        s.forward
    );
}

#[test]
fn scram_over_tls_authenticates_and_delivers() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), "good");
    let tls_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut broker =
        common::tansu::Tansu::start_advertising(&dir.path().join("tansu"), Some(tls_port));
    broker.create_topic("secure", 1);
    broker.add_user_and_require_auth(&[("gw", "gw-secret", "scram512")]);
    let _stunnel = stunnel(pki.path(), tls_port, broker.port);
    std::fs::write(dir.path().join("password"), "gw-secret\n").unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &format!("127.0.0.1:{tls_port}"),
        &format!(
            "[kafka]\nlinger_ms = 2\n\n[kafka.tls]\nca_file = \"{}\"\n\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"gw\"\npassword_file = \"{}\"\n",
            pki.path().join("good-ca.pem").display(),
            dir.path().join("password").display()
        ),
    );
    f.start();
    assert_eq!(f.cli(&["send", "-t", "secure", "over TLS"], None).0, 0);
    f.wait_status(Duration::from_secs(30), "delivered", |s| {
        s.backlog_events == 0
    });
    let got = broker.records("secure");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value_str(), "over TLS");
    assert!(!f.log_text().contains("gw-secret"));
}
