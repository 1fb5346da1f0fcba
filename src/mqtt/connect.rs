//! Reaching an MQTT broker: TCP, TLS (rustls, as for Kafka), CONNECT with
//! the stable client id and its CONNACK, falling back from MQTT 5 to 3.1.1
//! where the broker does not speak 5; and `check-config --connect`'s check
//! of each link.

use super::codec::{self, Check, Incoming};
use super::config::{MqttConfig, Protocol};
use super::encode;
use crate::forward::probe::Finding;
use crate::forward::security::{SecurityError, read_password_file};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A connection, plain or TLS.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub(super) type Stream = Box<dyn Io>;

/// Why connecting failed.
pub(super) struct ConnectError {
    pub message: String,
    /// The broker refused the login: no retry helps until the operator acts.
    pub auth: bool,
}

/// A connection that the broker accepted.
pub(super) struct Connected {
    pub stream: Stream,
    pub session_present: bool,
    /// Bytes that came behind the CONNACK (a resumed session's messages may).
    pub early: Vec<u8>,
    /// MQTT 5: the keep-alive the broker wants instead of ferry's.
    pub server_keep_alive: Option<u16>,
}

/// TCP (and TLS), CONNECT and its CONNACK. `level` is the protocol level
/// to try; under `protocol = "auto"` it falls to 3.1.1 when the broker
/// refuses 5, and stays there only once a 3.1.1 CONNACK came back (a
/// broker that merely closed the connection is tried with 5 again next time).
pub(super) async fn connect(
    c: &MqttConfig,
    client_id: &str,
    level: &mut u8,
    clean_start: bool,
) -> Result<Connected, ConnectError> {
    let tried = *level;
    let mut closed_on_5 = false;
    let r = connect_at(c, client_id, level, clean_start, &mut closed_on_5).await;
    if r.is_err() && closed_on_5 {
        *level = tried;
    }
    r
}

async fn connect_at(
    c: &MqttConfig,
    client_id: &str,
    level: &mut u8,
    clean_start: bool,
    closed_on_5: &mut bool,
) -> Result<Connected, ConnectError> {
    loop {
        let fail = |message: String| ConnectError {
            message,
            auth: false,
        };
        let name = &c.name;
        let timeout = c.connect_timeout;
        let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&c.broker))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(fail(format!(
                    "MQTT link {name}: cannot connect to {}: {e}",
                    c.broker
                )));
            }
            Err(_) => {
                return Err(fail(format!(
                    "MQTT link {name}: no connection to {} within {timeout:?} (mqtt.connect_timeout)",
                    c.broker
                )));
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut stream: Stream = match &c.tls {
            None => Box::new(tcp),
            Some(t) => {
                let tls = crate::forward::security::tls_config_in(t, "mqtt.tls")
                    .map_err(|e| fail(format!("MQTT link {name}: {e}")))?;
                let host = c.tls_server_name.as_deref().unwrap_or(c.host()).to_string();
                let server = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                    fail(format!(
                        "MQTT link {name}: `{host}` is no TLS server name ({e}); set mqtt.tls_server_name"
                    ))
                })?;
                let connector = tokio_rustls::TlsConnector::from(tls);
                match tokio::time::timeout(timeout, connector.connect(server, tcp)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        return Err(fail(format!(
                            "MQTT link {name}: TLS with {} failed: {e}",
                            c.broker
                        )));
                    }
                    Err(_) => {
                        return Err(fail(format!(
                            "MQTT link {name}: TLS with {} did not finish within {timeout:?}",
                            c.broker
                        )));
                    }
                }
            }
        };
        let password = match &c.password_file {
            None => None,
            Some(file) => {
                Some(read_password(file).map_err(|e| fail(format!("MQTT link {name}: {e}")))?)
            }
        };
        let mut out = Vec::with_capacity(128);
        encode::Connect {
            level: *level,
            client_id,
            clean_start,
            keep_alive_s: c.keep_alive.as_secs().min(u16::MAX as u64) as u16,
            username: c.username.as_deref(),
            password: password.as_deref(),
            // A clean session (the connection check) leaves nothing behind.
            session_expiry_s: if clean_start {
                0
            } else {
                c.session_expiry.as_secs().min(u32::MAX as u64) as u32
            },
            receive_maximum: c.receive_maximum,
        }
        .encode_into(&mut out);
        let answer = tokio::time::timeout(timeout, async {
            stream.write_all(&out).await?;
            let mut buf = Vec::with_capacity(256);
            loop {
                if let Ok(Check::Complete { body_start, total }) = codec::check(&buf) {
                    return Ok::<_, std::io::Error>(Some((buf, body_start, total)));
                }
                if buf.len() > 64 * 1024 || stream.read_buf(&mut buf).await? == 0 {
                    return Ok(None);
                }
            }
        })
        .await;
        let (mut buf, body_start, total) = match answer {
            Ok(Ok(Some(a))) => a,
            Ok(Ok(None)) => {
                if *level >= codec::LEVEL_5 && c.protocol == Protocol::Auto {
                    // Some 3.1.1 brokers just close on a level they do not know.
                    *level = codec::LEVEL_3_1_1;
                    *closed_on_5 = true;
                    continue;
                }
                return Err(fail(format!(
                    "MQTT link {name}: {} closed the connection before answering CONNECT",
                    c.broker
                )));
            }
            Ok(Err(e)) => {
                return Err(fail(format!(
                    "MQTT link {name}: connecting to {} failed: {e}",
                    c.broker
                )));
            }
            Err(_) => {
                return Err(fail(format!(
                    "MQTT link {name}: {} did not answer CONNECT within {timeout:?}",
                    c.broker
                )));
            }
        };
        match codec::decode(&buf[..total], body_start, *level) {
            Ok(Incoming::ConnAck {
                session_present,
                code: 0,
                server_keep_alive,
                ..
            }) => {
                buf.drain(..total);
                return Ok(Connected {
                    stream,
                    session_present,
                    early: buf,
                    server_keep_alive,
                });
            }
            Ok(Incoming::ConnAck { code, reason, .. }) => {
                if *level >= codec::LEVEL_5
                    && c.protocol == Protocol::Auto
                    && (code == 0x84 || code == 0x01)
                {
                    *level = codec::LEVEL_3_1_1;
                    continue;
                }
                let meaning = encode::connack_meaning(*level, code);
                let auth = encode::is_auth_refusal(*level, code);
                let hint = if auth {
                    format!(
                        "; check mqtt.username (`{}`) and mqtt.password_file ({}) against the broker's users and ACL",
                        c.username.as_deref().unwrap_or(""),
                        c.password_file
                            .as_ref()
                            .map_or("not set".into(), |p| p.display().to_string())
                    )
                } else {
                    String::new()
                };
                return Err(ConnectError {
                    message: format!(
                        "MQTT link {name}: {} refused the connection: {meaning} (code 0x{code:02x}{}){hint}",
                        c.broker,
                        reason.map(|r| format!(", \"{r}\"")).unwrap_or_default()
                    ),
                    auth,
                });
            }
            Ok(other) => {
                return Err(fail(format!(
                    "MQTT link {name}: {} answered CONNECT with {other:?}, not CONNACK",
                    c.broker
                )));
            }
            Err(e) => {
                return Err(fail(format!(
                    "MQTT link {name}: {} sent a malformed CONNACK: {e}",
                    c.broker
                )));
            }
        }
    }
}

/// The protocol level to try first.
pub(super) fn initial_level(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::V311 => codec::LEVEL_3_1_1,
        Protocol::Auto | Protocol::V5 => codec::LEVEL_5,
    }
}

/// The password: the file's first line.
pub fn read_password(file: &std::path::Path) -> Result<Vec<u8>, SecurityError> {
    let (label, key) = ("", "mqtt.password_file");
    let text = read_password_file(file, label, key)?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(SecurityError::EmptyPassword {
            label,
            path: file.to_path_buf(),
            key,
        });
    }
    Ok(line.as_bytes().to_vec())
}

/// `ferry check-config --connect` for one link: log in with a throw-away
/// session (client id `<client id>-check`, clean start, so the daemon's
/// session is neither taken over nor changed), subscribe to each filter to
/// see the broker's ACL allow it, and leave.
pub async fn check(config: &MqttConfig, node_id: &str) -> Vec<Finding> {
    let subject = format!("MQTT {} ({})", config.name, config.broker);
    let client_id = format!("{}-check", config.client_id_for(node_id));
    let mut level = initial_level(config.protocol);
    let Connected {
        mut stream,
        early: mut buf,
        ..
    } = match connect(config, &client_id, &mut level, true).await {
        Ok(c) => c,
        Err(e) => return vec![Finding::bad(subject, e.message)],
    };
    let version = if level >= codec::LEVEL_5 {
        "5"
    } else {
        "3.1.1"
    };
    let mut out = Vec::new();
    let filters: Vec<(&str, u8)> = config
        .subscriptions
        .iter()
        .map(|s| (s.filter.as_str(), s.qos))
        .collect();
    encode::encode_subscribe(&mut out, level, 1, &filters);
    let answer = tokio::time::timeout(config.connect_timeout, async {
        stream.write_all(&out).await?;
        loop {
            let mut pos = 0;
            while let Ok(Check::Complete { body_start, total }) = codec::check(&buf[pos..]) {
                let packet = &buf[pos..pos + total];
                pos += total;
                if let Ok(Incoming::SubAck {
                    packet_id: 1,
                    codes,
                }) = codec::decode(packet, body_start, level)
                {
                    return Ok::<_, std::io::Error>(Some(codes.to_vec()));
                }
            }
            buf.drain(..pos);
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(None);
            }
        }
    })
    .await;
    out.clear();
    encode::encode_disconnect(&mut out);
    let _ = stream.write_all(&out).await;
    let mut findings = vec![Finding::ok(
        subject.clone(),
        format!(
            "logged in (MQTT {version}{})",
            config
                .username
                .as_deref()
                .map(|u| format!(", user {u}"))
                .unwrap_or_default()
        ),
    )];
    match answer {
        Ok(Ok(Some(codes))) => {
            for (i, (filter, _)) in filters.iter().enumerate() {
                let subject = format!("MQTT {} filter {filter}", config.name);
                match codes.get(i) {
                    Some(c) if *c < 0x80 => {
                        findings.push(Finding::ok(subject, format!("subscribed at QoS {c}")))
                    }
                    Some(c) => findings.push(Finding::bad(
                        subject,
                        format!(
                            "refused (code 0x{c:02x}): allow ferry's user to read it in the broker's ACL"
                        ),
                    )),
                    None => findings.push(Finding::bad(subject, "no answer in SUBACK".into())),
                }
            }
        }
        Ok(Ok(None)) | Ok(Err(_)) => findings.push(Finding::bad(
            subject,
            "the broker closed the connection when ferry subscribed: check its ACL".into(),
        )),
        Err(_) => findings.push(Finding::bad(
            subject,
            format!(
                "no SUBACK within {:?} (mqtt.connect_timeout)",
                config.connect_timeout
            ),
        )),
    }
    findings
}
