//! What a broker (or anything on its port) sends back: the frame size
//! check and every answer decoder ferry uses (`kafka::answers`), at every
//! version it reads. No input may panic or ask for more memory than the
//! frame could hold. Whatever reads is checked against kafka-protocol's
//! encoder: written out again and read back, it is the same answer.
#![no_main]

use bytes::{Bytes, BytesMut};
use ferry::kafka::answers::{Answer, Reader};
use ferry::kafka::wire;
use kafka_protocol::messages::{
    ApiVersionsResponse, FetchResponse, InitProducerIdResponse, ListOffsetsResponse,
    MetadataResponse, ProduceResponse, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Encodable, HeaderVersion};
use libfuzzer_sys::fuzz_target;

fn each_version<A: Answer + Encodable + HeaderVersion + PartialEq + std::fmt::Debug>(
    frame: &Bytes,
) {
    let (min, max) = A::VERSIONS;
    for v in min..=max {
        let mut r = Reader::new(frame.clone());
        if r.header(A::header_version(v)).is_err() {
            continue;
        }
        let Ok(answer) = A::read(&mut r, v) else {
            continue;
        };
        let mut again = BytesMut::new();
        answer
            .encode(&mut again, v)
            .unwrap_or_else(|e| panic!("v{v}: read an answer kafka-protocol cannot write: {e}"));
        let back = A::read(&mut Reader::new(again.freeze()), v)
            .unwrap_or_else(|e| panic!("v{v}: cannot read back what was written: {e}"));
        assert_eq!(back, answer, "v{v}");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let _ = wire::frame_size([data[0], data[1], data[2], data[3]]);
    let _ = wire::correlation_id(&data[4..]);
    let frame = Bytes::copy_from_slice(&data[5..]);
    match data[4] % 8 {
        0 => each_version::<ProduceResponse>(&frame),
        1 => each_version::<MetadataResponse>(&frame),
        2 => each_version::<ApiVersionsResponse>(&frame),
        3 => each_version::<InitProducerIdResponse>(&frame),
        4 => each_version::<SaslHandshakeResponse>(&frame),
        5 => each_version::<ListOffsetsResponse>(&frame),
        6 => each_version::<FetchResponse>(&frame),
        _ => each_version::<SaslAuthenticateResponse>(&frame),
    }
});
