//! Framing of Kafka requests and responses: a 4-byte big-endian size, then
//! the header and the message. The messages themselves are the
//! `kafka-protocol` crate's, generated from Kafka's own schemas; this
//! module only puts them in frames and takes them out again, checking that
//! a frame is complete and sane before anything parses it.

use super::answers::{Answer, Reader};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, FetchRequest, FetchResponse, InitProducerIdRequest,
    InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Encodable, HeaderVersion, Message, StrBytes};
use std::fmt;

/// The largest response ferry accepts. Produce and Metadata answers are
/// small; anything near this is not Kafka talking (a TLS record read as
/// plaintext, an HTTP server on the port).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// API keys ferry speaks.
pub mod api {
    pub const PRODUCE: i16 = 0;
    pub const FETCH: i16 = 1;
    pub const LIST_OFFSETS: i16 = 2;
    pub const METADATA: i16 = 3;
    pub const SASL_HANDSHAKE: i16 = 17;
    pub const API_VERSIONS: i16 = 18;
    pub const INIT_PRODUCER_ID: i16 = 22;
    pub const SASL_AUTHENTICATE: i16 = 36;
}

/// A request ferry sends, with its API key and the answer it gets.
pub trait Request: Encodable + HeaderVersion + Message {
    const KEY: i16;
    type Response: Answer + HeaderVersion;
}

macro_rules! request {
    ($req:ty, $resp:ty, $key:expr) => {
        impl Request for $req {
            const KEY: i16 = $key;
            type Response = $resp;
        }
    };
}

request!(ProduceRequest, ProduceResponse, api::PRODUCE);
request!(FetchRequest, FetchResponse, api::FETCH);
request!(ListOffsetsRequest, ListOffsetsResponse, api::LIST_OFFSETS);
request!(MetadataRequest, MetadataResponse, api::METADATA);
request!(ApiVersionsRequest, ApiVersionsResponse, api::API_VERSIONS);
request!(
    InitProducerIdRequest,
    InitProducerIdResponse,
    api::INIT_PRODUCER_ID
);
request!(
    SaslHandshakeRequest,
    SaslHandshakeResponse,
    api::SASL_HANDSHAKE
);
request!(
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    api::SASL_AUTHENTICATE
);

/// Bytes that are not the Kafka message they should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

/// Append one request frame (size, header, body) to `out`.
pub fn encode_request<R: Request>(
    out: &mut BytesMut,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
    body: &R,
) -> Result<(), WireError> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()));
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    header
        .encode(out, R::header_version(version))
        .and_then(|()| body.encode(out, version))
        .map_err(|e| WireError(format!("cannot encode request (api {}): {e}", R::KEY)))?;
    let size = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// The end of a Produce request's frame after its one partition's records
/// (see [`encode_produce_head`]): from v9 the partition's, the topic's and
/// the request's empty tagged fields; nothing before.
pub fn produce_tail(version: i16) -> &'static [u8] {
    if version >= 9 { &[0, 0, 0] } else { &[] }
}

/// Append the frame of a Produce request up to its one partition's
/// records, for a batch of `records_len` bytes that the caller writes
/// next, from its own buffer, followed by [`produce_tail`]: the batch is
/// not copied into the request (it is the bulk of it). `body` names one
/// topic and one partition whose records are `None`; the crate encodes it,
/// and the null records at its end become the batch's length.
pub fn encode_produce_head(
    out: &mut BytesMut,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
    body: &ProduceRequest,
    records_len: usize,
) -> Result<(), WireError> {
    let one_null_partition = body.topic_data.len() == 1
        && body.topic_data[0].partition_data.len() == 1
        && body.topic_data[0].partition_data[0].records.is_none()
        && body.unknown_tagged_fields.is_empty()
        && body.topic_data[0].unknown_tagged_fields.is_empty()
        && body.topic_data[0].partition_data[0]
            .unknown_tagged_fields
            .is_empty();
    if !one_null_partition {
        return Err(WireError(
            "a Produce request sent in parts names one partition without records".into(),
        ));
    }
    let start = out.len();
    encode_request(out, version, correlation_id, client_id, body)?;
    // Null records: INT32 -1 before v9, UNSIGNED_VARINT 0 from v9 (then
    // the tail's three empty tagged fields).
    let null: &[u8] = if version >= 9 {
        &[0, 0, 0, 0]
    } else {
        &[0xff; 4]
    };
    if !out.ends_with(null) {
        return Err(WireError(format!(
            "a Produce v{version} request does not end with its null records"
        )));
    }
    out.truncate(out.len() - null.len());
    let len = i32::try_from(records_len).map_err(|_| {
        WireError(format!(
            "a record batch of {records_len} bytes is too large"
        ))
    })?;
    if version >= 9 {
        // COMPACT_BYTES: the length plus one, as an unsigned varint.
        let mut n = len as u32 + 1;
        while n >= 0x80 {
            out.extend_from_slice(&[(n as u8 & 0x7f) | 0x80]);
            n >>= 7;
        }
        out.extend_from_slice(&[n as u8]);
    } else {
        out.extend_from_slice(&len.to_be_bytes());
    }
    let size = out.len() - start - 4 + records_len + produce_tail(version).len();
    let size = u32::try_from(size)
        .map_err(|_| WireError(format!("a Produce request of {size} bytes is too large")))?;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// The size of the frame at the front of `buf`, once its size prefix is
/// there; an error if the size cannot be a Kafka response.
pub fn frame_size(prefix: [u8; 4]) -> Result<usize, WireError> {
    let size = u32::from_be_bytes(prefix) as usize;
    if !(4..=MAX_RESPONSE_BYTES).contains(&size) {
        let hint = if prefix[0] == 0x15 || prefix[0] == 0x16 {
            " (it looks like TLS: does this listener need [kafka.tls]?)"
        } else if &prefix == b"HTTP" {
            " (it looks like HTTP: is this the broker's Kafka port?)"
        } else {
            ""
        };
        return Err(WireError(format!(
            "the broker sent a frame of {size} bytes, which is not a Kafka response{hint}"
        )));
    }
    Ok(size)
}

/// The correlation id at the front of a response frame (without its size).
pub fn correlation_id(frame: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(frame.get(..4)?.try_into().ok()?))
}

/// Decode a response frame (without its size) to `R`'s answer.
pub fn decode_response<R: Request>(frame: Bytes, version: i16) -> Result<R::Response, WireError> {
    let mut r = Reader::new(frame);
    r.header(R::Response::header_version(version))
        .and_then(|_| R::Response::read(&mut r, version))
        .map_err(|e| {
            WireError(format!(
                "cannot decode the broker's answer (api {} v{version}): {e}",
                R::KEY
            ))
        })
        .inspect(|_| {
            if r.remaining() > 0 {
                log::debug!(
                    "{} bytes left after the answer to api {} v{version}",
                    r.remaining(),
                    R::KEY
                );
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frame_carries_size_header_and_body() {
        let mut out = BytesMut::new();
        let client = StrBytes::from_static_str("ferry");
        encode_request(&mut out, 2, 7, &client, &ApiVersionsRequest::default()).unwrap();
        // size | api key 18 | version 2 | correlation 7 | client id "ferry"
        let expected: &[u8] = &[
            0, 0, 0, 15, 0, 18, 0, 2, 0, 0, 0, 7, 0, 5, b'f', b'e', b'r', b'r', b'y',
        ];
        assert_eq!(&out[..], expected);
    }

    #[test]
    fn response_is_decoded_after_its_correlation_id() {
        let mut body = BytesMut::new();
        body.extend_from_slice(&9i32.to_be_bytes());
        let answer = ApiVersionsResponse::default().with_throttle_time_ms(5);
        answer.encode(&mut body, 2).unwrap();
        let frame = body.freeze();
        assert_eq!(correlation_id(&frame), Some(9));
        let got = decode_response::<ApiVersionsRequest>(frame, 2).unwrap();
        assert_eq!(got.throttle_time_ms, 5);
    }

    fn produce(records: Option<Bytes>) -> ProduceRequest {
        use kafka_protocol::messages::TopicName;
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("telemetry")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(7)
                            .with_records(records),
                    ]),
            ])
    }

    #[test]
    fn a_produce_request_in_parts_is_the_request_the_crate_encodes() {
        let client = StrBytes::from_static_str("ferry");
        // Lengths on both sides of each varint width (127/128, 16383/16384).
        for len in [0usize, 1, 126, 127, 128, 16_382, 16_383, 16_384, 70_000] {
            let records = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
            for version in 3..=12 {
                let mut whole = BytesMut::new();
                encode_request(
                    &mut whole,
                    version,
                    5,
                    &client,
                    &produce(Some(records.clone())),
                )
                .unwrap();
                let mut parts = BytesMut::new();
                encode_produce_head(&mut parts, version, 5, &client, &produce(None), len).unwrap();
                parts.extend_from_slice(&records);
                parts.extend_from_slice(produce_tail(version));
                assert_eq!(parts, whole, "v{version}, {len} bytes of records");
            }
        }
    }

    #[test]
    fn a_produce_request_in_parts_must_name_one_partition_without_records() {
        let client = StrBytes::from_static_str("ferry");
        let mut out = BytesMut::new();
        let with_records = produce(Some(Bytes::from_static(b"x")));
        assert!(encode_produce_head(&mut out, 9, 1, &client, &with_records, 1).is_err());
        let mut two = produce(None);
        two.topic_data.push(two.topic_data[0].clone());
        assert!(encode_produce_head(&mut out, 9, 1, &client, &two, 1).is_err());
    }

    #[test]
    fn absurd_sizes_are_refused_with_a_hint() {
        assert!(frame_size([0, 0, 0, 12]).is_ok());
        let tls = frame_size([0x15, 0x03, 0x03, 0x00]).unwrap_err();
        assert!(tls.0.contains("TLS"), "{tls}");
        let http = frame_size(*b"HTTP").unwrap_err();
        assert!(http.0.contains("HTTP"), "{http}");
        assert!(frame_size([0, 0, 0, 1]).is_err());
    }
}
