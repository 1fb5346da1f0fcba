//! Metrics and health over HTTP (`[metrics] listen`, default
//! 127.0.0.1:9464): `GET /metrics` in the Prometheus text format (names
//! `ferry_*`), `GET /health` (200 when the outbox writer answers and the
//! forwarder loop is alive, 503 otherwise, with a JSON reason); and,
//! optionally, the same metrics written atomically to a node_exporter
//! textfile. Observing, never steering.

use crate::bad_setting::BadSetting;
use crate::clock::now_ms;
use crate::outbox::Outbox;
use crate::shutdown::Shutdown;
use crate::stats::{LATENCY_BUCKETS, Stats};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use log::{info, warn};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// The `[metrics]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// HTTP address for /metrics and /health; empty disables.
    pub listen: String,
    /// node_exporter textfile to write (atomically) every 15 s; empty: none.
    pub textfile: String,
    /// `/health` also fails while Kafka is unreachable (the uplink is down),
    /// with the last error as the reason. Off: a gateway with a flaky
    /// uplink is healthy while it buffers.
    pub health_includes_kafka: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            textfile: String::new(),
            health_includes_kafka: false,
        }
    }
}

const TEXTFILE_INTERVAL: Duration = Duration::from_secs(15);

/// The Prometheus text exposition of `stats`.
pub fn render(stats: &Stats, node_id: &str) -> String {
    let s = stats.snapshot(node_id, now_ms());
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "ferry_events_received_total",
        "counter",
        "Events that reached a listener.",
        s.received as f64,
    );
    metric(
        "ferry_events_stored_total",
        "counter",
        "Events committed to the outbox (acknowledged).",
        s.stored as f64,
    );
    metric(
        "ferry_events_rejected_total",
        "counter",
        "Events refused at the door (bad frame, too large, bad topic, outbox full).",
        s.rejected as f64,
    );
    metric(
        "ferry_records_sent_total",
        "counter",
        "Records acknowledged by Kafka.",
        s.sent as f64,
    );
    metric(
        "ferry_events_dropped_total",
        "counter",
        "Events dropped by the size or age cap (all time).",
        s.dropped_events as f64,
    );
    metric(
        "ferry_dropped_bytes_total",
        "counter",
        "Bytes dropped by the size or age cap (all time).",
        s.dropped_bytes as f64,
    );
    metric(
        "ferry_dead_letters_total",
        "counter",
        "Events dead-lettered (all time).",
        s.dead_letters as f64,
    );
    metric(
        "ferry_quarantined_events_total",
        "counter",
        "Events in corrupt blocks moved to quarantine (all time).",
        s.quarantined as f64,
    );
    metric(
        "ferry_produce_errors_total",
        "counter",
        "Failed delivery attempts.",
        s.produce_errors as f64,
    );
    metric(
        "ferry_throttle_seconds_total",
        "counter",
        "Time the brokers asked ferry to hold off (produce quotas, throttle_time_ms).",
        s.throttled_s,
    );
    metric(
        "ferry_uplink_bytes_total",
        "counter",
        "Bytes written to the brokers (Kafka frames, after compression, before TLS), all time.",
        s.uplink_bytes_total as f64,
    );
    metric(
        "ferry_uplink_bytes_today",
        "gauge",
        "Bytes written to the brokers on the current UTC day.",
        s.uplink_bytes_today as f64,
    );
    metric(
        "ferry_uplink_held_seconds_total",
        "counter",
        "Time requests waited for the bandwidth cap (kafka.max_bytes_per_second).",
        s.uplink_held_s,
    );
    metric(
        "ferry_in_flight_bytes",
        "gauge",
        "Events held by the delivery windows in flight as read from the outbox: decompressed, or stored runs as stored (bounded by kafka.max_in_flight_bytes).",
        s.in_flight_bytes as f64,
    );
    metric(
        "ferry_in_flight_peak_bytes",
        "gauge",
        "The most the delivery windows in flight held since ferry started.",
        s.in_flight_peak_bytes as f64,
    );
    metric(
        "ferry_stored_run_batches_total",
        "counter",
        "Record batches sent as stored runs (compressed once, when stored).",
        s.stored_run_batches as f64,
    );
    metric(
        "ferry_stored_run_events_total",
        "counter",
        "Events sent in record batches from stored runs.",
        s.stored_run_events as f64,
    );
    metric(
        "ferry_retries_total",
        "counter",
        "Delivery attempts retried after a failure.",
        s.retries as f64,
    );
    metric(
        "ferry_backlog_events",
        "gauge",
        "Events waiting in the outbox.",
        s.backlog_events as f64,
    );
    metric(
        "ferry_backlog_bytes",
        "gauge",
        "Bytes (stored, compressed) waiting in the outbox.",
        s.backlog_bytes as f64,
    );
    metric(
        "ferry_backlog_oldest_age_seconds",
        "gauge",
        "Age of the oldest event in the outbox (0 when empty).",
        s.oldest_age_s.unwrap_or(0.0),
    );
    metric(
        "ferry_uplink_up",
        "gauge",
        "1 when the last delivery attempt succeeded.",
        if s.uplink_up { 1.0 } else { 0.0 },
    );
    metric(
        "ferry_breaker_state",
        "gauge",
        "Circuit breaker: 0 closed, 1 half-open, 2 open.",
        stats.breaker_state.load(Relaxed) as f64,
    );
    metric(
        "ferry_breaker_transitions_total",
        "counter",
        "Circuit breaker state changes.",
        s.forward.breaker_transitions as f64,
    );
    metric(
        "ferry_parked_topics",
        "gauge",
        "Topics parked for configuration errors.",
        s.forward.parked_topics.len() as f64,
    );
    let h = &stats.produce_latency;
    let (buckets, count_all, sum_us) = h.read();
    let _ = writeln!(
        out,
        "# HELP ferry_produce_latency_seconds Produce request latency.\n# TYPE ferry_produce_latency_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += buckets[i];
        let _ = writeln!(
            out,
            "ferry_produce_latency_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let count = count_all;
    let _ = writeln!(
        out,
        "ferry_produce_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "ferry_produce_latency_seconds_sum {}",
        sum_us as f64 / 1e6
    );
    let _ = writeln!(out, "ferry_produce_latency_seconds_count {count}");
    render_mqtt(&s.mqtt, &mut out);
    out
}

/// One series per MQTT link, labelled `link`.
fn render_mqtt(links: &[crate::stats::MqttLinkSnapshot], out: &mut String) {
    if links.is_empty() {
        return;
    }
    type Field = fn(&crate::stats::MqttLinkSnapshot) -> f64;
    let series: [(&str, &str, &str, Field); 5] = [
        (
            "ferry_mqtt_connected",
            "gauge",
            "1 while the MQTT link is connected.",
            |l| l.connected as u8 as f64,
        ),
        (
            "ferry_mqtt_received_total",
            "counter",
            "PUBLISH packets received from the MQTT broker.",
            |l| l.received as f64,
        ),
        (
            "ferry_mqtt_acknowledged_total",
            "counter",
            "PUBACKs sent (after the outbox commit).",
            |l| l.acknowledged as f64,
        ),
        (
            "ferry_mqtt_redeliveries_total",
            "counter",
            "Redeliveries of messages already stored, recognised and not stored again.",
            |l| l.redeliveries as f64,
        ),
        (
            "ferry_mqtt_rejected_total",
            "counter",
            "MQTT messages refused (too large, no valid Kafka topic).",
            |l| l.rejected as f64,
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in links {
            let _ = writeln!(out, "{name}{{link=\"{}\"}} {}", l.name, value(l));
        }
    }
}

/// Healthy when the outbox writer answers and the forwarder loop is alive
/// (and, with `include_kafka`, the uplink is up).
pub async fn health(stats: &Stats, outbox: &Outbox, include_kafka: bool) -> (bool, String) {
    let writer_ok = outbox.ping(Duration::from_secs(2)).await;
    let wedged = stats.forward_wedged_for();
    let forward_ok = wedged.is_none();
    let uplink_up = stats.uplink_up.load(Relaxed);
    let kafka_ok = !include_kafka || uplink_up;
    let mqtt = stats
        .mqtt
        .lock()
        .map(|links| links.iter().map(|l| l.snapshot()).collect::<Vec<_>>())
        .unwrap_or_default();
    let mqtt_down: Vec<String> = mqtt
        .iter()
        .filter(|l| !l.connected)
        .map(|l| {
            format!(
                "MQTT link {} ({}) is not connected: {}",
                l.name,
                l.broker,
                l.last_error.as_deref().unwrap_or("not reached yet")
            )
        })
        .collect();
    // A local broker that ferry cannot reach means sensors' data waits
    // (or is lost) outside ferry: unhealthy.
    let ok = writer_ok && forward_ok && kafka_ok && mqtt_down.is_empty();
    let mut why = Vec::new();
    if !writer_ok {
        why.push("the outbox writer does not answer (storage stuck?)".to_string());
    }
    if !forward_ok {
        why.push(format!(
            "the forwarder loop has been silent for {} s",
            wedged.unwrap_or(0) / 1000
        ));
    }
    if !kafka_ok {
        let last = stats
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "no broker reached yet".into());
        why.push(format!("Kafka is unreachable: {last}"));
    }
    why.extend(mqtt_down);
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unhealthy" },
        "outbox_writable": writer_ok,
        "forwarder_alive": forward_ok,
        "uplink_up": uplink_up,
        "kafka_checked": include_kafka,
        "mqtt": mqtt.iter().map(|l| serde_json::json!({"link": l.name, "connected": l.connected})).collect::<Vec<_>>(),
        "why": why,
    });
    (ok, body.to_string())
}

/// Serve `/metrics` and `/health` on an already bound listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    stats: Arc<Stats>,
    outbox: Outbox,
    node_id: String,
    include_kafka: bool,
    mut shutdown: Shutdown,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.recv() => return,
        };
        let (stats, outbox, node_id) = (stats.clone(), outbox.clone(), node_id.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (stats, outbox, node_id) = (stats.clone(), outbox.clone(), node_id.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(
                        respond(req, &stats, &outbox, &node_id, include_kafka).await,
                    )
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    stats: &Stats,
    outbox: &Outbox,
    node_id: &str,
    include_kafka: bool,
) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, kind: &str, body: String| {
        Response::builder()
            .status(code)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if req.method() != hyper::Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(stats, node_id),
        ),
        "/health" => {
            let (ok, body) = health(stats, outbox, include_kafka).await;
            let code = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, "application/json", body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /health\n".into(),
        ),
    }
}

/// Write the metrics to `path` for node_exporter's textfile collector,
/// atomically (temp file + rename), every 15 s.
pub async fn write_textfile(
    path: PathBuf,
    stats: Arc<Stats>,
    node_id: String,
    mut shutdown: Shutdown,
) {
    info!("metrics textfile: {}", path.display());
    loop {
        let tmp = path.with_extension("prom.tmp");
        let text = render(&stats, &node_id);
        let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            warn!("cannot write metrics textfile {}: {e}", path.display());
        }
        tokio::select! {
            _ = tokio::time::sleep(TEXTFILE_INTERVAL) => {}
            _ = shutdown.recv() => return,
        }
    }
}

impl MetricsConfig {
    /// Semantic checks of `[metrics]`; the error names the key.
    pub fn check(&self) -> Result<(), BadSetting> {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(BadSetting::at(
                "metrics.listen".into(),
                format!(
                    "`{}` is not ip:port (for example \"127.0.0.1:9464\"; \"\" disables)",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}
