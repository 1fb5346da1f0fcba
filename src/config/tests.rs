use super::*;
use std::time::Duration;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Some(Path::new("/etc/ferry/test.toml")), &[])
}

#[test]
fn defaults_need_nothing() {
    let c = parse("").unwrap();
    assert_eq!(c.kafka.brokers, vec!["127.0.0.1:9092"]);
    assert_eq!(c.data_dir, PathBuf::from("./ferry-data"));
    assert_eq!(
        c.control_socket(),
        Some(PathBuf::from("./ferry-data/ferry.sock"))
    );
    assert_eq!(c.outbox.when_full, WhenFull::DropOldest);
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = parse("node_id = \"a\"\n[outbox]\nmax_bytez = 5\n").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("/etc/ferry/test.toml, line 3"), "{text}");
    assert!(text.contains("outbox.max_bytez"), "{text}");
    assert!(text.contains("unknown field"), "{text}");
}

#[test]
fn bad_value_names_line_and_key() {
    let e = parse("[outbox]\n\nmax_bytes = \"12 parsecs\"\n").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("line 3"), "{text}");
    assert!(text.contains("outbox.max_bytes"), "{text}");
}

#[test]
fn semantic_error_names_line_and_key() {
    let e = parse("[ingest]\nmax_event_bytes = \"2MiB\"\n").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("line 2"), "{text}");
    assert!(text.contains("ingest.max_event_bytes"), "{text}");
}

#[test]
fn the_memory_budget_has_a_default_and_a_floor() {
    let c = parse("").unwrap();
    assert_eq!(c.kafka.max_in_flight_bytes, 8 * 1024 * 1024);
    let c = parse("[kafka]\nmax_in_flight_bytes = \"16MiB\"\n").unwrap();
    assert_eq!(c.kafka.max_in_flight_bytes, 16 * 1024 * 1024);
    let e = parse("[kafka]\nmax_in_flight_bytes = \"100KiB\"\n").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("line 2"), "{text}");
    assert!(text.contains("kafka.max_in_flight_bytes"), "{text}");
    assert!(text.contains("256 KiB"), "{text}");
}

#[test]
fn mqtt_entries_are_checked_and_errors_name_the_key() {
    let ok = "[[mqtt]]\nbroker = \"127.0.0.1:1883\"\n[[mqtt.subscribe]]\nfilter = \"z2m/+\"\ntopic = \"zigbee\"\nkey = \"{2}\"\n";
    let c = parse(ok).unwrap();
    assert_eq!(c.mqtt[0].client_id_for("gw1"), "ferry-gw1");
    assert_eq!(c.mqtt[0].subscriptions[0].qos, 1);
    assert!(c.named_topics().contains(&"zigbee".to_string()));
    for (bad, key, why) in [
        (
            ok.replace("z2m/+", "z2m/#/x"),
            "mqtt.subscribe.filter",
            "`#` must be the last level",
        ),
        (
            ok.replace("{2}", "{3}"),
            "mqtt.subscribe.key",
            "uses level {3}",
        ),
        (
            ok.replace("\"zigbee\"", "\"zig bee\""),
            "mqtt.subscribe.topic",
            "invalid topic name",
        ),
        (
            ok.replace("key = ", "qos = 2\nkey = "),
            "mqtt.subscribe.qos",
            "qos 2 is not offered",
        ),
        (
            ok.replace("127.0.0.1:1883", "localhost"),
            "mqtt.broker",
            "not host:port",
        ),
        (
            format!("{ok}{ok}"),
            "mqtt.name",
            "two [[mqtt]] entries are named `mqtt`",
        ),
        (
            ok.replace(
                "[[mqtt.subscribe]]",
                "password_file = \"/p\"\n[[mqtt.subscribe]]",
            ),
            "mqtt.username",
            "password_file is set but username is not",
        ),
    ] {
        let text = parse(&bad).unwrap_err().to_string();
        assert!(text.contains(key) && text.contains(why), "{bad}\n{text}");
    }
}

#[test]
fn env_overrides_file() {
    let env = vec![
        ("FERRY_BROKERS".to_string(), "a:1, b:2".to_string()),
        ("FERRY_DATA_DIR".to_string(), "/var/lib/ferry".to_string()),
    ];
    let c = Config::from_toml("[kafka]\nbrokers=[\"x:9\"]\n", None, &env).unwrap();
    assert_eq!(c.kafka.brokers, vec!["a:1", "b:2"]);
    assert_eq!(c.outbox_path(), PathBuf::from("/var/lib/ferry/outbox.db"));
}

fn with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_toml(text, None, &env)
}

#[test]
fn every_key_can_be_set_from_the_environment() {
    let text = "[[listener]]\ntype = \"unix\"\npath = \"/run/a.sock\"\n";
    let c = with_env(
        text,
        &[
            ("FERRY_KAFKA__LINGER_MS", "25"),
            ("FERRY_KAFKA__COMPRESSION", "zstd"),
            ("FERRY_KAFKA__BROKERS", "a:1,b:2"),
            ("FERRY_KAFKA__ALLOW_AUTO_CREATE_TOPICS", "false"),
            ("FERRY_OUTBOX__MAX_AGE", "2d"),
            ("FERRY_OUTBOX__MAX_BYTES", "64MiB"),
            ("FERRY_RETRY__MULTIPLIER", "1.5"),
            ("FERRY_KAFKA__SASL__MECHANISM", "SCRAM-SHA-512"),
            ("FERRY_KAFKA__SASL__USERNAME", "gw-7"),
            ("FERRY_KAFKA__SASL__PASSWORD_FILE", "/etc/ferry/pw"),
            ("FERRY_LISTENER__0__PATH", "/run/b.sock"),
            ("FERRY_LOG", "debug"),
        ],
    )
    .unwrap();
    assert_eq!(c.kafka.linger_ms, 25);
    assert_eq!(c.kafka.compression, Compression::Zstd);
    assert_eq!(c.kafka.brokers, ["a:1", "b:2"]);
    assert!(!c.kafka.allow_auto_create_topics);
    assert_eq!(c.outbox.max_age, std::time::Duration::from_secs(2 * 86_400));
    assert_eq!(c.outbox.max_bytes, 64 << 20);
    assert_eq!(c.retry.multiplier, 1.5);
    let sasl = c.kafka.sasl.unwrap();
    assert_eq!(
        (sasl.mechanism, sasl.username.as_str()),
        (SaslMechanism::ScramSha512, "gw-7")
    );
    assert_eq!(
        c.listeners[0].path.as_deref(),
        Some(Path::new("/run/b.sock"))
    );
}

#[test]
fn a_bad_environment_override_names_the_variable() {
    let e = with_env("", &[("FERRY_KAFKA__LINGER_MS", "soon")]).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("FERRY_KAFKA__LINGER_MS"), "{e}");
    let e = with_env("", &[("FERRY_KAFKA__LINGERMS", "5")]).unwrap_err();
    assert!(e.to_string().contains("FERRY_KAFKA__LINGERMS"), "{e}");
    assert!(e.to_string().contains("unknown field"), "{e}");
    let e = with_env("", &[("FERRY_LISTENER__3__PATH", "/x")]).unwrap_err();
    assert!(e.to_string().contains("no entry 3"), "{e}");
    // Semantic checks run after the overrides, naming the key.
    let e = with_env("", &[("FERRY_KAFKA__ZSTD_LEVEL", "40")]).unwrap_err();
    assert!(e.to_string().contains("kafka.zstd_level"), "{e}");
}

#[test]
fn lines_listener_needs_topic() {
    let e = parse("[[listener]]\ntype = \"tcp\"\nformat = \"lines\"\n").unwrap_err();
    assert!(e.to_string().contains("listener.topic"), "{e}");
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("64MiB").unwrap(), 64 * 1024 * 1024);
    assert_eq!(parse_size("1000").unwrap(), 1000);
    assert!(parse_size("5 furlongs").is_err());
    assert_eq!(
        parse_duration("7d").unwrap(),
        Duration::from_secs(7 * 86400)
    );
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert!(parse_duration("1y").is_err());
}

#[test]
fn effective_config_round_trips() {
    let c = parse("[kafka]\nlinger_ms = 7\n").unwrap();
    let again = parse(&c.to_toml()).unwrap();
    assert_eq!(again.kafka.linger_ms, 7);
}
