//! Kafka answer frames as the test proxies rewrite them (`proxy`,
//! `latency`): decoded and encoded by `kafka-protocol`, and Metadata's
//! brokers pointed at the proxy.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::{MetadataResponse, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

/// Decode a response frame (correlation id first) as `R`.
pub fn decode<R: Decodable + HeaderVersion>(body: Vec<u8>, version: i16) -> (ResponseHeader, R) {
    let mut buf = Bytes::from(body);
    let hv = R::header_version(version);
    let header = ResponseHeader::decode(&mut buf, hv).expect("answer header");
    let resp = R::decode(&mut buf, version).expect("answer body");
    (header, resp)
}

/// Encode `resp` behind `header` as a response frame of `version`.
pub fn encode<R: Encodable + HeaderVersion>(
    header: &ResponseHeader,
    resp: &R,
    version: i16,
) -> Vec<u8> {
    let mut out = BytesMut::new();
    header
        .encode(&mut out, R::header_version(version))
        .expect("encode header");
    resp.encode(&mut out, version).expect("encode answer");
    out.to_vec()
}

/// A Metadata answer (any version) with each broker changed by `point`
/// (to name the proxy in front of it).
pub fn rewrite_brokers(
    body: Vec<u8>,
    version: i16,
    mut point: impl FnMut(&mut MetadataResponseBroker),
) -> Vec<u8> {
    let (header, mut answer) = decode::<MetadataResponse>(body, version);
    for b in &mut answer.brokers {
        point(b);
    }
    encode(&header, &answer, version)
}
